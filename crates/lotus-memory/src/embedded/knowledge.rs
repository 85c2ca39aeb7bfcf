//! L4 on SQLite: the memories with an FTS5 keyword index (Porter stemming, BM25), fact validity,
//! and user profiles. The schema is migrated by `PRAGMA user_version`.

use std::collections::BTreeMap;
use std::path::Path;

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{Connection, Row, params, params_from_iter};
use serde_json::Value;
use uuid::Uuid;

use crate::keywords;
use crate::tiers::{Knowledge, MemoryError, Result};
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
];

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
        tx.pragma_update(None, "user_version", i + 1).map_err(err)?;
        tx.commit().map_err(err)?;
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
        self.conn
            .lock()
            .prepare_cached(&format!(
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
        Ok(())
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
        let Some(expr) = keywords::fts_query(query) else {
            return Ok(Vec::new());
        };
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare_cached(if include_superseded {
                "SELECT m.id, bm25(memories_fts) FROM memories_fts JOIN memories m ON m.rowid = memories_fts.rowid
                 WHERE memories_fts MATCH ?1 AND m.user = ?2 ORDER BY bm25(memories_fts) LIMIT ?3"
            } else {
                "SELECT m.id, bm25(memories_fts) FROM memories_fts JOIN memories m ON m.rowid = memories_fts.rowid
                 WHERE memories_fts MATCH ?1 AND m.user = ?2 AND m.valid_to_us IS NULL
                 ORDER BY bm25(memories_fts) LIMIT ?3"
            })
            .map_err(err)?;
        let rows = stmt
            .query_map(
                params![expr, user, i64::try_from(k).unwrap_or(i64::MAX)],
                |r| {
                    Ok((
                        uuid(&r.get::<_, String>(0)?)?,
                        -(r.get::<_, f64>(1)? as f32),
                    ))
                },
            )
            .map_err(err)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(err)?;
        Ok(rows)
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
            let mut stmt = tx
                .prepare_cached("DELETE FROM memories WHERE id = ?")
                .map_err(err)?;
            for id in ids {
                n += stmt.execute([id.to_string()]).map_err(err)? as u64;
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

    async fn profile_clear(&self, user: &str) -> Result<u64> {
        let n = self
            .conn
            .lock()
            .execute("DELETE FROM user_profile WHERE user = ?", [user])
            .map_err(err)?;
        Ok(n as u64)
    }
}
