//! L4 on SQLite: the memories with an FTS5 keyword index (Porter stemming, BM25) whose terms are
//! scoped by user, fact validity, user profiles, the conversation history, the module registry
//! and the providers' configurations. The schema is migrated by `PRAGMA user_version`.

use std::collections::BTreeMap;
use std::path::Path;

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension as _, Row, params, params_from_iter};
use serde_json::Value;
use uuid::Uuid;

use crate::keywords;
use crate::tiers::{Knowledge, MemoryError, ModuleRecord, ProviderRecord, Result, Turn};
use crate::types::{ForgetFilter, Memory};

const MIGRATIONS: &[&str] = &[
    // 1: memories, their keyword index, profiles.
    "CREATE TABLE memories (
         id TEXT PRIMARY KEY,
         user TEXT NOT NULL,
         kind TEXT NOT NULL,
         text TEXT NOT NULL,
         subject TEXT,
         attribute TEXT,
         value TEXT,
         importance REAL NOT NULL,
         created_us INTEGER NOT NULL,
         valid_from_us INTEGER NOT NULL,
         valid_to_us INTEGER,
         superseded_by TEXT,
         source TEXT NOT NULL,
         metadata TEXT NOT NULL
     );
     CREATE INDEX memories_user ON memories (user, created_us);
     CREATE INDEX memories_fact ON memories (user, subject, attribute);
     CREATE VIRTUAL TABLE memories_fts USING fts5 (
         text, content = 'memories', content_rowid = 'rowid', tokenize = 'porter unicode61'
     );
     CREATE TRIGGER memories_ai AFTER INSERT ON memories BEGIN
         INSERT INTO memories_fts (rowid, text) VALUES (new.rowid, new.text);
     END;
     CREATE TRIGGER memories_ad AFTER DELETE ON memories BEGIN
         INSERT INTO memories_fts (memories_fts, rowid, text) VALUES ('delete', old.rowid, old.text);
     END;
     CREATE TRIGGER memories_au AFTER UPDATE OF text ON memories BEGIN
         INSERT INTO memories_fts (memories_fts, rowid, text) VALUES ('delete', old.rowid, old.text);
         INSERT INTO memories_fts (rowid, text) VALUES (new.rowid, new.text);
     END;
     CREATE TABLE user_profile (
         user TEXT NOT NULL,
         key TEXT NOT NULL,
         value TEXT NOT NULL,
         updated_us INTEGER NOT NULL,
         PRIMARY KEY (user, key)
     );",
    // 2: keywords indexed per user (see `keywords::user_keys`), so a search scores only the
    // asking user's memories; filled from `memories` by `index_keywords`.
    "DROP TRIGGER memories_ai;
     DROP TRIGGER memories_ad;
     DROP TRIGGER memories_au;
     DROP TABLE memories_fts;
     CREATE VIRTUAL TABLE memories_keys USING fts5 (
         keys, content = '', contentless_delete = 1, tokenize = 'porter unicode61'
     );",
    // 3: the conversation history.
    "CREATE TABLE conversation_history (
         id TEXT PRIMARY KEY,
         user TEXT NOT NULL,
         session TEXT NOT NULL,
         role TEXT NOT NULL,
         text TEXT NOT NULL,
         at_us INTEGER NOT NULL,
         memory_id TEXT,
         meta TEXT NOT NULL
     );
     CREATE INDEX conversation_history_user ON conversation_history (user, at_us);
     CREATE INDEX conversation_history_session ON conversation_history (user, session, at_us);",
    // 4: the module registry and the providers' configurations.
    "CREATE TABLE module_registry (
         seq INTEGER PRIMARY KEY AUTOINCREMENT,
         name TEXT NOT NULL,
         action TEXT NOT NULL,
         version TEXT NOT NULL,
         hash TEXT NOT NULL,
         runtime TEXT NOT NULL,
         at_us INTEGER NOT NULL
     );
     CREATE INDEX module_registry_name ON module_registry (name, seq);
     CREATE TABLE provider_configs (
         name TEXT PRIMARY KEY,
         settings TEXT NOT NULL,
         sealed_key TEXT,
         updated_us INTEGER NOT NULL
     );",
    // 5: profile keys removed by an earlier version were kept as null values: drop them.
    "DELETE FROM user_profile WHERE value = 'null';",
];

/// The version whose migration creates `memories_keys`, which is then filled from `memories`.
const KEYS_VERSION: usize = 2;

/// A keyword search ranks every memory holding one of the query's rarer words, and of those
/// holding only words found in at least this many of the user's memories, the newest this many.
const KEYWORD_SCAN: i64 = 4000;

const COLUMNS: &str = "id, user, kind, text, subject, attribute, value, importance, created_us, \
                       valid_from_us, valid_to_us, superseded_by, source, metadata";

/// The persistent tier in a SQLite file.
pub struct SqliteKnowledge {
    conn: Mutex<Connection>,
}

fn err(e: impl std::fmt::Display) -> MemoryError {
    MemoryError::backend("knowledge", "sqlite", e)
}

impl SqliteKnowledge {
    /// Opens (creating and migrating) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = super::sqlite(path, "knowledge")?;
        migrate(&conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }
}

fn migrate(conn: &Connection) -> Result<()> {
    let version: usize = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(err)?;
    if version > MIGRATIONS.len() {
        return Err(err(format!(
            "the memory database is at schema version {version}, newer than this lotus knows ({}); use a newer lotus",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.unchecked_transaction().map_err(err)?;
        tx.execute_batch(sql).map_err(err)?;
        if i + 1 == KEYS_VERSION {
            index_keywords(&tx)?;
        }
        tx.pragma_update(None, "user_version", i + 1).map_err(err)?;
        tx.commit().map_err(err)?;
    }
    Ok(())
}

/// Indexes the keywords of every stored memory (after the migration that creates the index).
fn index_keywords(tx: &rusqlite::Transaction<'_>) -> Result<()> {
    let mut read = tx
        .prepare("SELECT rowid, user, text FROM memories")
        .map_err(err)?;
    let mut write = tx
        .prepare("INSERT INTO memories_keys (rowid, keys) VALUES (?, ?)")
        .map_err(err)?;
    let mut rows = read.query([]).map_err(err)?;
    while let Some(r) = rows.next().map_err(err)? {
        let (rowid, user, text): (i64, String, String) = (
            r.get(0).map_err(err)?,
            r.get(1).map_err(err)?,
            r.get(2).map_err(err)?,
        );
        write
            .execute(params![rowid, keywords::user_keys(&user, &text)])
            .map_err(err)?;
    }
    Ok(())
}

fn uuid(s: &str) -> rusqlite::Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

fn row(r: &Row<'_>) -> rusqlite::Result<Memory> {
    let kind: String = r.get(2)?;
    let superseded_by: Option<String> = r.get(11)?;
    let metadata: String = r.get(13)?;
    Ok(Memory {
        id: uuid(&r.get::<_, String>(0)?)?,
        user: r.get(1)?,
        kind: kind
            .parse()
            .map_err(|e: String| rusqlite::Error::ToSqlConversionFailure(e.into()))?,
        text: r.get(3)?,
        subject: r.get(4)?,
        attribute: r.get(5)?,
        value: r.get(6)?,
        importance: r.get::<_, f64>(7)? as f32,
        created_us: r.get(8)?,
        valid_from_us: r.get(9)?,
        valid_to_us: r.get(10)?,
        superseded_by: superseded_by.as_deref().map(uuid).transpose()?,
        source: r.get(12)?,
        metadata: serde_json::from_str(&metadata)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?,
    })
}

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

impl SqliteKnowledge {
    fn query(&self, sql: &str, args: Vec<rusqlite::types::Value>) -> Result<Vec<Memory>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(sql).map_err(err)?;
        let rows = stmt
            .query_map(params_from_iter(args), row)
            .map_err(err)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(err)?;
        Ok(rows)
    }
}

fn text(s: &str) -> rusqlite::types::Value {
    rusqlite::types::Value::Text(s.to_owned())
}

#[async_trait]
impl Knowledge for SqliteKnowledge {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn insert(&self, m: &Memory) -> Result<()> {
        let metadata = serde_json::to_string(&m.metadata).map_err(err)?;
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(err)?;
        tx.prepare_cached(&format!(
            "INSERT INTO memories ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .and_then(|mut s| {
            s.execute(params![
                m.id.to_string(),
                m.user,
                m.kind.as_str(),
                m.text,
                m.subject,
                m.attribute,
                m.value,
                f64::from(m.importance),
                m.created_us,
                m.valid_from_us,
                m.valid_to_us,
                m.superseded_by.map(|u| u.to_string()),
                m.source,
                metadata,
            ])
        })
        .map_err(err)?;
        tx.prepare_cached("INSERT INTO memories_keys (rowid, keys) VALUES (?, ?)")
            .and_then(|mut s| {
                s.execute(params![
                    tx.last_insert_rowid(),
                    keywords::user_keys(&m.user, &m.text)
                ])
            })
            .map_err(err)?;
        tx.commit().map_err(err)
    }

    async fn get_many(&self, ids: &[Uuid]) -> Result<Vec<Memory>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.query(
            &format!(
                "SELECT {COLUMNS} FROM memories WHERE id IN ({})",
                placeholders(ids.len())
            ),
            ids.iter().map(|i| text(&i.to_string())).collect(),
        )
    }

    async fn find_current_text(&self, user: &str, t: &str) -> Result<Option<Memory>> {
        Ok(self
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM memories WHERE user = ? AND text = ? AND valid_to_us IS NULL LIMIT 1"
                ),
                vec![text(user), text(t)],
            )?
            .pop())
    }

    async fn current_fact(
        &self,
        user: &str,
        subject: &str,
        attribute: &str,
    ) -> Result<Option<Memory>> {
        Ok(self
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM memories WHERE user = ? AND subject = ? AND attribute = ?
                     AND valid_to_us IS NULL ORDER BY valid_from_us DESC LIMIT 1"
                ),
                vec![text(user), text(subject), text(attribute)],
            )?
            .pop())
    }

    async fn fact_history(
        &self,
        user: &str,
        subject: &str,
        attribute: &str,
    ) -> Result<Vec<Memory>> {
        self.query(
            &format!(
                "SELECT {COLUMNS} FROM memories WHERE user = ? AND subject = ? AND attribute = ?
                 ORDER BY valid_from_us DESC, created_us DESC"
            ),
            vec![text(user), text(subject), text(attribute)],
        )
    }

    async fn supersede(&self, old: &Uuid, new: &Uuid, at_us: i64) -> Result<()> {
        self.conn
            .lock()
            .execute(
                "UPDATE memories SET valid_to_us = ?, superseded_by = ? WHERE id = ?",
                params![at_us, new.to_string(), old.to_string()],
            )
            .map_err(err)?;
        Ok(())
    }

    async fn keyword(
        &self,
        user: &str,
        query: &str,
        k: usize,
        include_superseded: bool,
    ) -> Result<Vec<(Uuid, f32)>> {
        let terms = keywords::fts_terms(user, query);
        if terms.is_empty() {
            return Ok(Vec::new());
        }
        let conn = self.conn.lock();
        // How many of the user's memories each word is in, counted up to the scan bound.
        let mut probe = conn
            .prepare_cached(
                "SELECT count(*) FROM (SELECT 1 FROM memories_keys WHERE memories_keys MATCH ?1 LIMIT ?2)",
            )
            .map_err(err)?;
        let (mut rare, mut common) = (Vec::new(), Vec::new());
        for t in terms {
            let n: i64 = probe
                .query_row(params![t, KEYWORD_SCAN], |r| r.get(0))
                .map_err(err)?;
            match n {
                0 => {}
                n if n < KEYWORD_SCAN => rare.push(t),
                _ => common.push(t),
            }
        }
        if rare.is_empty() && common.is_empty() {
            return Ok(Vec::new());
        }
        // Every match of a rare word is ranked; of the common words' matches, only the newest
        // KEYWORD_SCAN (from `floor` on). Older memories with common words only are left to the
        // vector search, so a search costs a bounded number of rows however large the store.
        let floor: i64 = if common.is_empty() {
            0
        } else {
            conn.prepare_cached(
                "SELECT rowid FROM memories_keys WHERE memories_keys MATCH ?1
                 ORDER BY rowid DESC LIMIT 1 OFFSET ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![common.join(" OR "), KEYWORD_SCAN - 1], |r| r.get(0))
            })
            .optional()
            .map_err(err)?
            .unwrap_or(0)
        };
        let all = rare
            .iter()
            .chain(&common)
            .cloned()
            .collect::<Vec<_>>()
            .join(" OR ");
        let limit = i64::try_from(k).unwrap_or(i64::MAX);
        // The keys are the user's own; comparing the user too makes a checksum collision
        // between two users harmless.
        let current = if include_superseded {
            ""
        } else {
            "AND m.valid_to_us IS NULL"
        };
        let rank = |expr: &str, range: &str, bound: i64| -> Result<Vec<(Uuid, f32)>> {
            conn.prepare_cached(&format!(
                "SELECT m.id, bm25(memories_keys) FROM memories_keys CROSS JOIN memories m
                 ON m.rowid = memories_keys.rowid
                 WHERE memories_keys MATCH ?1 AND memories_keys.rowid {range} ?4 AND m.user = ?2
                 {current} ORDER BY bm25(memories_keys) LIMIT ?3"
            ))
            .and_then(|mut stmt| {
                stmt.query_map(params![expr, user, limit, bound], |r| {
                    Ok((
                        uuid(&r.get::<_, String>(0)?)?,
                        -(r.get::<_, f64>(1)? as f32),
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(err)
        };
        let mut found = rank(&all, ">=", floor)?;
        if floor > 0 && !rare.is_empty() {
            found.extend(rank(&rare.join(" OR "), "<", floor)?);
            found.sort_by(|a, b| b.1.total_cmp(&a.1));
            found.truncate(k);
        }
        Ok(found)
    }

    async fn select(&self, f: &ForgetFilter) -> Result<Vec<Memory>> {
        let mut sql = format!("SELECT {COLUMNS} FROM memories WHERE user = ?");
        let mut args = vec![text(&f.user)];
        if !f.ids.is_empty() {
            sql += &format!(" AND id IN ({})", placeholders(f.ids.len()));
            args.extend(f.ids.iter().map(|i| text(&i.to_string())));
        }
        if let Some(k) = f.kind {
            sql += " AND kind = ?";
            args.push(text(k.as_str()));
        }
        if let Some(s) = &f.subject {
            sql += " AND subject = ?";
            args.push(text(s));
        }
        if let Some(a) = &f.attribute {
            sql += " AND attribute = ?";
            args.push(text(a));
        }
        sql += " ORDER BY created_us";
        self.query(&sql, args)
    }

    async fn list(&self, user: Option<&str>) -> Result<Vec<Memory>> {
        match user {
            Some(u) => self.query(
                &format!("SELECT {COLUMNS} FROM memories WHERE user = ? ORDER BY created_us"),
                vec![text(u)],
            ),
            None => self.query(
                &format!("SELECT {COLUMNS} FROM memories ORDER BY created_us"),
                vec![],
            ),
        }
    }

    async fn delete(&self, ids: &[Uuid]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(err)?;
        let mut n = 0;
        {
            let mut delete = tx
                .prepare_cached("DELETE FROM memories WHERE id = ? RETURNING rowid")
                .map_err(err)?;
            let mut unindex = tx
                .prepare_cached("DELETE FROM memories_keys WHERE rowid = ?")
                .map_err(err)?;
            for id in ids {
                let rowids = delete
                    .query_map([id.to_string()], |r| r.get::<_, i64>(0))
                    .map_err(err)?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(err)?;
                for rowid in rowids {
                    unindex.execute([rowid]).map_err(err)?;
                    n += 1;
                }
            }
        }
        tx.commit().map_err(err)?;
        Ok(n)
    }

    async fn counts(&self) -> Result<(u64, u64, u64)> {
        self.conn
            .lock()
            .query_row(
                "SELECT COUNT(*), COUNT(valid_to_us), COUNT(DISTINCT user) FROM memories",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(err)
    }

    async fn profile_set(&self, user: &str, key: &str, value: &Value) -> Result<()> {
        self.conn
            .lock()
            .execute(
                "INSERT INTO user_profile (user, key, value, updated_us) VALUES (?, ?, ?, ?)
                 ON CONFLICT (user, key) DO UPDATE SET value = excluded.value, updated_us = excluded.updated_us",
                params![user, key, value.to_string(), crate::types::now_us()],
            )
            .map_err(err)?;
        Ok(())
    }

    async fn profile(&self, user: &str) -> Result<BTreeMap<String, Value>> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare_cached("SELECT key, value FROM user_profile WHERE user = ? ORDER BY key")
            .map_err(err)?;
        let rows = stmt
            .query_map([user], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(err)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(err)?;
        rows.into_iter()
            .map(|(k, v)| Ok((k, serde_json::from_str(&v).map_err(err)?)))
            .collect()
    }

    async fn profile_remove(&self, user: &str, key: &str) -> Result<bool> {
        let n = self
            .conn
            .lock()
            .execute(
                "DELETE FROM user_profile WHERE user = ? AND key = ?",
                [user, key],
            )
            .map_err(err)?;
        Ok(n > 0)
    }

    async fn profile_clear(&self, user: &str) -> Result<u64> {
        let n = self
            .conn
            .lock()
            .execute("DELETE FROM user_profile WHERE user = ?", [user])
            .map_err(err)?;
        Ok(n as u64)
    }

    async fn history_append(&self, t: &Turn) -> Result<()> {
        self.conn
            .lock()
            .prepare_cached(
                "INSERT INTO conversation_history (id, user, session, role, text, at_us, memory_id, meta)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    t.id.to_string(),
                    t.user,
                    t.session,
                    t.role,
                    t.text,
                    t.at_us,
                    t.memory_id.map(|m| m.to_string()),
                    t.meta.to_string(),
                ])
            })
            .map_err(err)?;
        Ok(())
    }

    async fn history(&self, user: &str, session: Option<&str>, limit: usize) -> Result<Vec<Turn>> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, user, session, role, text, at_us, memory_id, meta FROM conversation_history
                 WHERE user = ?1 AND (?2 IS NULL OR session = ?2)
                 ORDER BY at_us DESC, id DESC LIMIT ?3",
            )
            .map_err(err)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut turns = stmt
            .query_map(params![user, session, limit], |r| {
                let meta: String = r.get(7)?;
                Ok(Turn {
                    id: uuid(&r.get::<_, String>(0)?)?,
                    user: r.get(1)?,
                    session: r.get(2)?,
                    role: r.get(3)?,
                    text: r.get(4)?,
                    at_us: r.get(5)?,
                    memory_id: r
                        .get::<_, Option<String>>(6)?
                        .map(|m| uuid(&m))
                        .transpose()?,
                    meta: serde_json::from_str(&meta)
                        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?,
                })
            })
            .map_err(err)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(err)?;
        turns.reverse();
        Ok(turns)
    }

    async fn history_forget(&self, user: &str, memory_ids: &[Uuid]) -> Result<u64> {
        if memory_ids.is_empty() {
            return Ok(0);
        }
        let mut args = vec![text(user)];
        args.extend(memory_ids.iter().map(|m| text(&m.to_string())));
        let n = self
            .conn
            .lock()
            .execute(
                &format!(
                    "DELETE FROM conversation_history WHERE user = ? AND memory_id IN ({})",
                    placeholders(memory_ids.len())
                ),
                params_from_iter(args),
            )
            .map_err(err)?;
        Ok(n as u64)
    }

    async fn history_clear(&self, user: &str) -> Result<u64> {
        let n = self
            .conn
            .lock()
            .execute("DELETE FROM conversation_history WHERE user = ?", [user])
            .map_err(err)?;
        Ok(n as u64)
    }

    async fn registry_append(&self, r: &ModuleRecord) -> Result<()> {
        self.conn
            .lock()
            .execute(
                "INSERT INTO module_registry (name, action, version, hash, runtime, at_us)
                 VALUES (?, ?, ?, ?, ?, ?)",
                params![r.name, r.action, r.version, r.hash, r.runtime, r.at_us],
            )
            .map_err(err)?;
        Ok(())
    }

    async fn registry(&self, name: Option<&str>) -> Result<Vec<ModuleRecord>> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT name, action, version, hash, runtime, at_us FROM module_registry
                 WHERE ?1 IS NULL OR name = ?1 ORDER BY seq",
            )
            .map_err(err)?;
        stmt.query_map([name], |r| {
            Ok(ModuleRecord {
                name: r.get(0)?,
                action: r.get(1)?,
                version: r.get(2)?,
                hash: r.get(3)?,
                runtime: r.get(4)?,
                at_us: r.get(5)?,
            })
        })
        .map_err(err)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(err)
    }

    async fn provider_put(&self, p: &ProviderRecord) -> Result<()> {
        self.conn
            .lock()
            .execute(
                "INSERT INTO provider_configs (name, settings, sealed_key, updated_us) VALUES (?, ?, ?, ?)
                 ON CONFLICT (name) DO UPDATE SET settings = excluded.settings,
                     sealed_key = excluded.sealed_key, updated_us = excluded.updated_us",
                params![p.name, p.settings.to_string(), p.sealed_key, p.updated_us],
            )
            .map_err(err)?;
        Ok(())
    }

    async fn providers(&self) -> Result<Vec<ProviderRecord>> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT name, settings, sealed_key, updated_us FROM provider_configs ORDER BY name",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(err)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(err)?;
        rows.into_iter()
            .map(|(name, settings, sealed_key, updated_us)| {
                let settings = serde_json::from_str(&settings).map_err(|e| {
                    err(format!(
                        "the stored settings of provider `{name}` are damaged: {e}"
                    ))
                })?;
                Ok(ProviderRecord {
                    name,
                    settings,
                    sealed_key,
                    updated_us,
                })
            })
            .collect()
    }

    async fn provider_remove(&self, name: &str) -> Result<bool> {
        let n = self
            .conn
            .lock()
            .execute("DELETE FROM provider_configs WHERE name = ?", [name])
            .map_err(err)?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database written before keywords were scoped by user is migrated: its memories are
    /// found by their owner's keyword search, and only by it.
    #[tokio::test]
    async fn a_first_version_database_is_reindexed_by_user() {
        let dir = std::env::temp_dir().join(format!("lotus-kn-migrate-{}", Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("the test store works");
        let path = dir.join("memory.db");
        let id = Uuid::now_v7();
        {
            let conn = Connection::open(&path).expect("the test store works");
            conn.execute_batch(MIGRATIONS[0])
                .expect("the test store works");
            conn.pragma_update(None, "user_version", 1)
                .expect("the test store works");
            conn.execute(
                &format!(
                    "INSERT INTO memories ({COLUMNS}) VALUES (?, 'ana', 'fact', 'my favourite editor is Helix',
                     NULL, NULL, NULL, 0.5, 1, 1, NULL, NULL, 'test', '{{}}')"
                ),
                [id.to_string()],
            )
            .expect("the test store works");
        }
        let k = SqliteKnowledge::open(&path).expect("the test store works");
        let found = k
            .keyword("ana", "which editor?", 10, false)
            .await
            .expect("the test store works");
        assert_eq!(found.iter().map(|f| f.0).collect::<Vec<_>>(), [id]);
        assert!(
            k.keyword("bo", "which editor?", 10, false)
                .await
                .expect("the test store works")
                .is_empty()
        );
        assert_eq!(k.delete(&[id]).await.expect("the test store works"), 1);
        assert!(
            k.keyword("ana", "which editor?", 10, false)
                .await
                .expect("the test store works")
                .is_empty()
        );
        let version: usize = k
            .conn
            .lock()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("the test store works");
        assert_eq!(version, MIGRATIONS.len());
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn memory(user: &str, text: &str) -> Memory {
        Memory {
            id: Uuid::now_v7(),
            user: user.into(),
            kind: crate::types::Kind::Episodic,
            text: text.into(),
            subject: None,
            attribute: None,
            value: None,
            importance: 0.5,
            created_us: 1,
            valid_from_us: 1,
            valid_to_us: None,
            superseded_by: None,
            source: "test".into(),
            metadata: BTreeMap::new(),
        }
    }

    /// With a word in more memories than a search ranks, a memory holding a rarer word of the
    /// query is still found however old it is; the newest of the common word's matches are
    /// ranked; another user's memories never count.
    #[tokio::test]
    async fn a_common_word_bounds_the_search_without_hiding_rare_ones() {
        let dir = std::env::temp_dir().join(format!("lotus-kn-bound-{}", Uuid::now_v7()));
        let k = SqliteKnowledge::open(&dir.join("memory.db")).expect("the test store works");
        let old_rare = memory("ana", "a meeting about the Zanzibar project");
        let old_common = memory("ana", "a short meeting");
        k.insert(&old_rare).await.expect("the test store works");
        k.insert(&old_common).await.expect("the test store works");
        for i in 0..KEYWORD_SCAN {
            k.insert(&memory(
                "ana",
                &format!("meeting number {i} ran long and then longer"),
            ))
            .await
            .expect("the test store works");
            if i % 8 == 0 {
                k.insert(&memory("bo", "a meeting about Zanzibar"))
                    .await
                    .expect("the test store works");
            }
        }
        let newest = memory("ana", "one more meeting ran long");
        k.insert(&newest).await.expect("the test store works");

        let found = k
            .keyword("ana", "the Zanzibar meeting", 10, false)
            .await
            .expect("the test store works");
        assert_eq!(
            found[0].0, old_rare.id,
            "the rare word ranks first: {found:?}"
        );
        assert!(found.iter().any(|f| f.0 == newest.id));
        assert!(found.iter().all(|f| f.0 != old_common.id));
        let mine: Vec<Uuid> = k
            .list(Some("ana"))
            .await
            .expect("the test store works")
            .iter()
            .map(|m| m.id)
            .collect();
        assert!(found.iter().all(|f| mine.contains(&f.0)));
        // Only common words: the newest matches.
        let found = k
            .keyword("ana", "meeting", 10, false)
            .await
            .expect("the test store works");
        assert_eq!(found.len(), 10);
        assert!(
            found
                .iter()
                .all(|f| f.0 != old_common.id && f.0 != old_rare.id)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
