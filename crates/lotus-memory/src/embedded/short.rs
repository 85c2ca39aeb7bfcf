//! L2 on SQLite: an append-only table per home, trimmed by retention.

use std::path::Path;

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{Connection, params};
use uuid::Uuid;

use crate::tiers::{MemoryError, Result, ShortTerm, StreamRecord};

fn err(e: impl std::fmt::Display) -> MemoryError {
    MemoryError::backend("short-term", "sqlite", e)
}

/// The short-term stream in a SQLite file.
pub struct SqliteShortTerm {
    conn: Mutex<Connection>,
}

impl SqliteShortTerm {
    /// Opens (creating) the stream table in the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = super::sqlite(path, "short-term")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS short_term (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 id TEXT NOT NULL,
                 user TEXT NOT NULL,
                 memory_id TEXT,
                 op TEXT NOT NULL,
                 text TEXT NOT NULL,
                 at_us INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS short_term_user ON short_term (user, at_us);
             CREATE INDEX IF NOT EXISTS short_term_memory ON short_term (memory_id);",
        )
        .map_err(err)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }
}

#[async_trait]
impl ShortTerm for SqliteShortTerm {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn append(&self, r: &StreamRecord) -> Result<()> {
        self.conn
            .lock()
            .prepare_cached(
                "INSERT INTO short_term (id, user, memory_id, op, text, at_us) VALUES (?, ?, ?, ?, ?, ?)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    r.id.to_string(),
                    r.user,
                    r.memory_id.map(|m| m.to_string()),
                    r.op,
                    r.text,
                    r.at_us
                ])
            })
            .map_err(err)?;
        Ok(())
    }

    async fn range(&self, user: &str, since_us: i64, limit: usize) -> Result<Vec<StreamRecord>> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, user, memory_id, op, text, at_us FROM short_term
                 WHERE user = ? AND at_us >= ? ORDER BY seq LIMIT ?",
            )
            .map_err(err)?;
        let parse = |s: String| {
            Uuid::parse_str(&s).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
        };
        let rows = stmt
            .query_map(
                params![user, since_us, i64::try_from(limit).unwrap_or(i64::MAX)],
                |r| {
                    Ok(StreamRecord {
                        id: parse(r.get(0)?)?,
                        user: r.get(1)?,
                        memory_id: r.get::<_, Option<String>>(2)?.map(parse).transpose()?,
                        op: r.get(3)?,
                        text: r.get(4)?,
                        at_us: r.get(5)?,
                    })
                },
            )
            .map_err(err)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(err)?;
        Ok(rows)
    }

    async fn forget(&self, user: &str, memory_ids: &[Uuid]) -> Result<u64> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(err)?;
        let mut n = 0;
        {
            let mut stmt = tx
                .prepare_cached("DELETE FROM short_term WHERE user = ? AND memory_id = ?")
                .map_err(err)?;
            for id in memory_ids {
                n += stmt.execute(params![user, id.to_string()]).map_err(err)? as u64;
            }
        }
        tx.commit().map_err(err)?;
        Ok(n)
    }

    async fn clear_user(&self, user: &str) -> Result<u64> {
        let n = self
            .conn
            .lock()
            .execute("DELETE FROM short_term WHERE user = ?", [user])
            .map_err(err)?;
        Ok(n as u64)
    }

    async fn trim(&self, before_us: i64) -> Result<u64> {
        let n = self
            .conn
            .lock()
            .execute("DELETE FROM short_term WHERE at_us < ?", [before_us])
            .map_err(err)?;
        Ok(n as u64)
    }

    async fn count(&self) -> Result<u64> {
        self.conn
            .lock()
            .query_row("SELECT COUNT(*) FROM short_term", [], |r| r.get(0))
            .map_err(err)
    }
}
