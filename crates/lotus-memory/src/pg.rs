//! L4 on PostgreSQL: the memories with a generated `tsvector` (English stemming, GIN index,
//! `ts_rank_cd`), fact validity, and user profiles. Migrations run under an advisory lock, so
//! several nuclei can start against one database.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row};
use uuid::Uuid;

use crate::keywords;
use crate::tiers::{Knowledge, MemoryError, ModuleRecord, ProviderRecord, Result, Turn};
use crate::types::{ForgetFilter, Memory};

const MIGRATIONS: &[&str] = &[
    // 1: memories, their keyword index, profiles.
    r#"CREATE TABLE lotus_memories (
         id UUID PRIMARY KEY,
         "user" TEXT NOT NULL,
         kind TEXT NOT NULL,
         text TEXT NOT NULL,
         subject TEXT,
         attribute TEXT,
         value TEXT,
         importance REAL NOT NULL,
         created_us BIGINT NOT NULL,
         valid_from_us BIGINT NOT NULL,
         valid_to_us BIGINT,
         superseded_by UUID,
         source TEXT NOT NULL,
         metadata JSONB NOT NULL,
         tsv TSVECTOR GENERATED ALWAYS AS (to_tsvector('english', text)) STORED
     );
     CREATE INDEX lotus_memories_user ON lotus_memories ("user", created_us);
     CREATE INDEX lotus_memories_fact ON lotus_memories ("user", subject, attribute);
     CREATE INDEX lotus_memories_tsv ON lotus_memories USING GIN (tsv);
     CREATE TABLE lotus_user_profile (
         "user" TEXT NOT NULL,
         key TEXT NOT NULL,
         value JSONB NOT NULL,
         updated_us BIGINT NOT NULL,
         PRIMARY KEY ("user", key)
     );"#,
    // 2: the conversation history.
    r#"CREATE TABLE lotus_conversation_history (
         id UUID PRIMARY KEY,
         "user" TEXT NOT NULL,
         session TEXT NOT NULL,
         role TEXT NOT NULL,
         text TEXT NOT NULL,
         at_us BIGINT NOT NULL,
         memory_id UUID,
         meta JSONB NOT NULL
     );
     CREATE INDEX lotus_conversation_history_user ON lotus_conversation_history ("user", at_us);
     CREATE INDEX lotus_conversation_history_session
         ON lotus_conversation_history ("user", session, at_us);"#,
    // 3: the module registry and the providers' configurations.
    r#"CREATE TABLE lotus_module_registry (
         seq BIGSERIAL PRIMARY KEY,
         name TEXT NOT NULL,
         action TEXT NOT NULL,
         version TEXT NOT NULL,
         hash TEXT NOT NULL,
         runtime TEXT NOT NULL,
         at_us BIGINT NOT NULL
     );
     CREATE INDEX lotus_module_registry_name ON lotus_module_registry (name, seq);
     CREATE TABLE lotus_provider_configs (
         name TEXT PRIMARY KEY,
         settings JSONB NOT NULL,
         sealed_key TEXT,
         updated_us BIGINT NOT NULL
     );"#,
    // 4: profile keys removed by an earlier version were kept as null values: drop them.
    r#"DELETE FROM lotus_user_profile WHERE value = 'null'::jsonb;"#,
];

/// An arbitrary, fixed key for the migration lock.
const MIGRATION_LOCK: i64 = 0x4c4f_5455_534d_454d;

const COLUMNS: &str = r#"id, "user", kind, text, subject, attribute, value, importance, created_us,
                         valid_from_us, valid_to_us, superseded_by, source, metadata"#;

fn err(e: impl std::fmt::Display) -> MemoryError {
    MemoryError::backend("knowledge", "postgres", e)
}

/// The persistent tier in PostgreSQL.
pub struct PgKnowledge {
    client: Client,
}

impl PgKnowledge {
    /// Connects to `url` (`postgres://user@host:port/db`) and migrates the schema.
    pub async fn connect(url: &str) -> Result<Self> {
        let config: tokio_postgres::Config = url.parse().map_err(|e| {
            MemoryError::BadInput(format!(
                "`{url}` is not a PostgreSQL URL ({e}); use postgres://USER@HOST:PORT/DB"
            ))
        })?;
        let (client, conn) =
            tokio::time::timeout(std::time::Duration::from_secs(5), config.connect(NoTls))
                .await
                .map_err(|_| err(format!("{url} did not answer within 5 s")))?
                .map_err(|e| err(format!("cannot connect to {url}: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::warn!(error = %e, "the PostgreSQL connection of the memory closed");
            }
        });
        let me = Self { client };
        me.migrate().await?;
        Ok(me)
    }

    async fn migrate(&self) -> Result<()> {
        let c = &self.client;
        c.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(err)?;
        let result = async {
            c.batch_execute(
                "CREATE TABLE IF NOT EXISTS lotus_schema (component TEXT PRIMARY KEY, version INT NOT NULL)",
            )
            .await
            .map_err(err)?;
            let version: i32 = c
                .query_opt(
                    "SELECT version FROM lotus_schema WHERE component = 'memory'",
                    &[],
                )
                .await
                .map_err(err)?
                .map_or(0, |r| r.get(0));
            let known = MIGRATIONS.len();
            if usize::try_from(version).unwrap_or(0) > known {
                return Err(err(format!(
                    "the memory schema is at version {version}, newer than this lotus knows ({known}); use a newer lotus"
                )));
            }
            for (i, sql) in MIGRATIONS
                .iter()
                .enumerate()
                .skip(usize::try_from(version).unwrap_or(0))
            {
                let v = i32::try_from(i + 1).unwrap_or(i32::MAX);
                c.batch_execute(&format!(
                    "BEGIN; {sql};
                     INSERT INTO lotus_schema (component, version) VALUES ('memory', {v})
                     ON CONFLICT (component) DO UPDATE SET version = {v};
                     COMMIT;"
                ))
                .await
                .map_err(err)?;
            }
            Ok(())
        }
        .await;
        let _ = c
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await;
        result
    }

    async fn query(&self, sql: &str, args: &[&(dyn ToSql + Sync)]) -> Result<Vec<Memory>> {
        self.client
            .query(sql, args)
            .await
            .map_err(err)?
            .iter()
            .map(row)
            .collect()
    }
}

fn row(r: &Row) -> Result<Memory> {
    let kind: String = r.try_get(2).map_err(err)?;
    Ok(Memory {
        id: r.try_get(0).map_err(err)?,
        user: r.try_get(1).map_err(err)?,
        kind: kind.parse().map_err(err)?,
        text: r.try_get(3).map_err(err)?,
        subject: r.try_get(4).map_err(err)?,
        attribute: r.try_get(5).map_err(err)?,
        value: r.try_get(6).map_err(err)?,
        importance: r.try_get(7).map_err(err)?,
        created_us: r.try_get(8).map_err(err)?,
        valid_from_us: r.try_get(9).map_err(err)?,
        valid_to_us: r.try_get(10).map_err(err)?,
        superseded_by: r.try_get(11).map_err(err)?,
        source: r.try_get(12).map_err(err)?,
        metadata: serde_json::from_value(r.try_get::<_, Value>(13).map_err(err)?).map_err(err)?,
    })
}

#[async_trait]
impl Knowledge for PgKnowledge {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn insert(&self, m: &Memory) -> Result<()> {
        let metadata = serde_json::to_value(&m.metadata).map_err(err)?;
        self.client
            .execute(
                &format!(
                    "INSERT INTO lotus_memories ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
                ),
                &[
                    &m.id,
                    &m.user,
                    &m.kind.as_str(),
                    &m.text,
                    &m.subject,
                    &m.attribute,
                    &m.value,
                    &m.importance,
                    &m.created_us,
                    &m.valid_from_us,
                    &m.valid_to_us,
                    &m.superseded_by,
                    &m.source,
                    &metadata,
                ],
            )
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn get_many(&self, ids: &[Uuid]) -> Result<Vec<Memory>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.query(
            &format!("SELECT {COLUMNS} FROM lotus_memories WHERE id = ANY($1)"),
            &[&ids],
        )
        .await
    }

    async fn find_current_text(&self, user: &str, text: &str) -> Result<Option<Memory>> {
        Ok(self
            .query(
                &format!(
                    r#"SELECT {COLUMNS} FROM lotus_memories WHERE "user" = $1 AND text = $2 AND valid_to_us IS NULL LIMIT 1"#
                ),
                &[&user, &text],
            )
            .await?
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
                    r#"SELECT {COLUMNS} FROM lotus_memories WHERE "user" = $1 AND subject = $2 AND attribute = $3
                       AND valid_to_us IS NULL ORDER BY valid_from_us DESC LIMIT 1"#
                ),
                &[&user, &subject, &attribute],
            )
            .await?
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
                r#"SELECT {COLUMNS} FROM lotus_memories WHERE "user" = $1 AND subject = $2 AND attribute = $3
                   ORDER BY valid_from_us DESC, created_us DESC"#
            ),
            &[&user, &subject, &attribute],
        )
        .await
    }

    async fn supersede(&self, old: &Uuid, new: &Uuid, at_us: i64) -> Result<()> {
        self.client
            .execute(
                "UPDATE lotus_memories SET valid_to_us = $1, superseded_by = $2 WHERE id = $3",
                &[&at_us, new, old],
            )
            .await
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
        let mut words = keywords::words(query);
        words.sort();
        words.dedup();
        if words.is_empty() {
            return Ok(Vec::new());
        }
        // Words are letters and digits only: no tsquery syntax can get in.
        let expr = words.join(" | ");
        let k = i64::try_from(k).unwrap_or(i64::MAX);
        let current = if include_superseded {
            ""
        } else {
            "AND valid_to_us IS NULL"
        };
        let rows = self
            .client
            .query(
                &format!(
                    r#"SELECT id, ts_rank_cd(tsv, q) AS rank FROM lotus_memories, to_tsquery('english', $1) q
                       WHERE "user" = $2 AND tsv @@ q {current} ORDER BY rank DESC, created_us DESC LIMIT $3"#
                ),
                &[&expr, &user, &k],
            )
            .await
            .map_err(err)?;
        rows.iter()
            .map(|r| Ok((r.try_get(0).map_err(err)?, r.try_get(1).map_err(err)?)))
            .collect()
    }

    async fn select(&self, f: &ForgetFilter) -> Result<Vec<Memory>> {
        let kind = f.kind.map(|k| k.as_str().to_owned());
        self.query(
            &format!(
                r#"SELECT {COLUMNS} FROM lotus_memories WHERE "user" = $1
                   AND (cardinality($2::uuid[]) = 0 OR id = ANY($2))
                   AND ($3::text IS NULL OR kind = $3)
                   AND ($4::text IS NULL OR subject = $4)
                   AND ($5::text IS NULL OR attribute = $5)
                   ORDER BY created_us"#
            ),
            &[&f.user, &f.ids, &kind, &f.subject, &f.attribute],
        )
        .await
    }

    async fn list(&self, user: Option<&str>) -> Result<Vec<Memory>> {
        self.query(
            &format!(
                r#"SELECT {COLUMNS} FROM lotus_memories WHERE ($1::text IS NULL OR "user" = $1) ORDER BY created_us"#
            ),
            &[&user],
        )
        .await
    }

    async fn delete(&self, ids: &[Uuid]) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.client
            .execute("DELETE FROM lotus_memories WHERE id = ANY($1)", &[&ids])
            .await
            .map_err(err)
    }

    async fn counts(&self) -> Result<(u64, u64, u64)> {
        let r = self
            .client
            .query_one(
                r#"SELECT COUNT(*), COUNT(valid_to_us), COUNT(DISTINCT "user") FROM lotus_memories"#,
                &[],
            )
            .await
            .map_err(err)?;
        let n = |i: usize| -> Result<u64> {
            Ok(u64::try_from(r.try_get::<_, i64>(i).map_err(err)?).unwrap_or(0))
        };
        Ok((n(0)?, n(1)?, n(2)?))
    }

    async fn profile_set(&self, user: &str, key: &str, value: &Value) -> Result<()> {
        self.client
            .execute(
                r#"INSERT INTO lotus_user_profile ("user", key, value, updated_us) VALUES ($1, $2, $3, $4)
                   ON CONFLICT ("user", key) DO UPDATE SET value = excluded.value, updated_us = excluded.updated_us"#,
                &[&user, &key, value, &crate::types::now_us()],
            )
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn profile(&self, user: &str) -> Result<BTreeMap<String, Value>> {
        let rows = self
            .client
            .query(
                r#"SELECT key, value FROM lotus_user_profile WHERE "user" = $1 ORDER BY key"#,
                &[&user],
            )
            .await
            .map_err(err)?;
        rows.iter()
            .map(|r| Ok((r.try_get(0).map_err(err)?, r.try_get(1).map_err(err)?)))
            .collect()
    }

    async fn profile_remove(&self, user: &str, key: &str) -> Result<bool> {
        let n = self
            .client
            .execute(
                r#"DELETE FROM lotus_user_profile WHERE "user" = $1 AND key = $2"#,
                &[&user, &key],
            )
            .await
            .map_err(err)?;
        Ok(n > 0)
    }

    async fn profile_clear(&self, user: &str) -> Result<u64> {
        self.client
            .execute(
                r#"DELETE FROM lotus_user_profile WHERE "user" = $1"#,
                &[&user],
            )
            .await
            .map_err(err)
    }

    async fn history_append(&self, t: &Turn) -> Result<()> {
        self.client
            .execute(
                r#"INSERT INTO lotus_conversation_history
                   (id, "user", session, role, text, at_us, memory_id, meta)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"#,
                &[
                    &t.id,
                    &t.user,
                    &t.session,
                    &t.role,
                    &t.text,
                    &t.at_us,
                    &t.memory_id,
                    &t.meta,
                ],
            )
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn history(&self, user: &str, session: Option<&str>, limit: usize) -> Result<Vec<Turn>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .client
            .query(
                r#"SELECT id, "user", session, role, text, at_us, memory_id, meta
                   FROM lotus_conversation_history
                   WHERE "user" = $1 AND ($2::TEXT IS NULL OR session = $2)
                   ORDER BY at_us DESC, id DESC LIMIT $3"#,
                &[&user, &session, &limit],
            )
            .await
            .map_err(err)?;
        let mut turns = rows
            .iter()
            .map(|r| {
                Ok(Turn {
                    id: r.try_get(0).map_err(err)?,
                    user: r.try_get(1).map_err(err)?,
                    session: r.try_get(2).map_err(err)?,
                    role: r.try_get(3).map_err(err)?,
                    text: r.try_get(4).map_err(err)?,
                    at_us: r.try_get(5).map_err(err)?,
                    memory_id: r.try_get(6).map_err(err)?,
                    meta: r.try_get(7).map_err(err)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        turns.reverse();
        Ok(turns)
    }

    async fn history_forget(&self, user: &str, memory_ids: &[Uuid]) -> Result<u64> {
        self.client
            .execute(
                r#"DELETE FROM lotus_conversation_history WHERE "user" = $1 AND memory_id = ANY($2)"#,
                &[&user, &memory_ids],
            )
            .await
            .map_err(err)
    }

    async fn history_clear(&self, user: &str) -> Result<u64> {
        self.client
            .execute(
                r#"DELETE FROM lotus_conversation_history WHERE "user" = $1"#,
                &[&user],
            )
            .await
            .map_err(err)
    }

    async fn registry_append(&self, r: &ModuleRecord) -> Result<()> {
        self.client
            .execute(
                "INSERT INTO lotus_module_registry (name, action, version, hash, runtime, at_us)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &r.name, &r.action, &r.version, &r.hash, &r.runtime, &r.at_us,
                ],
            )
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn registry(&self, name: Option<&str>) -> Result<Vec<ModuleRecord>> {
        let rows = self
            .client
            .query(
                "SELECT name, action, version, hash, runtime, at_us FROM lotus_module_registry
                 WHERE $1::TEXT IS NULL OR name = $1 ORDER BY seq",
                &[&name],
            )
            .await
            .map_err(err)?;
        Ok(rows
            .iter()
            .map(|r| ModuleRecord {
                name: r.get(0),
                action: r.get(1),
                version: r.get(2),
                hash: r.get(3),
                runtime: r.get(4),
                at_us: r.get(5),
            })
            .collect())
    }

    async fn provider_put(&self, p: &ProviderRecord) -> Result<()> {
        self.client
            .execute(
                "INSERT INTO lotus_provider_configs (name, settings, sealed_key, updated_us)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO UPDATE SET settings = excluded.settings,
                     sealed_key = excluded.sealed_key, updated_us = excluded.updated_us",
                &[&p.name, &p.settings, &p.sealed_key, &p.updated_us],
            )
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn providers(&self) -> Result<Vec<ProviderRecord>> {
        let rows = self
            .client
            .query(
                "SELECT name, settings, sealed_key, updated_us FROM lotus_provider_configs ORDER BY name",
                &[],
            )
            .await
            .map_err(err)?;
        Ok(rows
            .iter()
            .map(|r| ProviderRecord {
                name: r.get(0),
                settings: r.get(1),
                sealed_key: r.get(2),
                updated_us: r.get(3),
            })
            .collect())
    }

    async fn provider_remove(&self, name: &str) -> Result<bool> {
        let n = self
            .client
            .execute(
                "DELETE FROM lotus_provider_configs WHERE name = $1",
                &[&name],
            )
            .await
            .map_err(err)?;
        Ok(n > 0)
    }
}
