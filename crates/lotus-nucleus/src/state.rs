//! Per-module key-value state, persisted in SQLite so it survives restarts and reloads.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

/// A state-store failure.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The database failed.
    #[error("state database {path}: {source}")]
    Db {
        /// The file.
        path: PathBuf,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// A stored value is not JSON.
    #[error("state of module `{module}`, key `{key}`: stored value is not JSON: {reason}")]
    Corrupt {
        /// The module.
        module: String,
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The blocking task was lost.
    #[error("the state store is shutting down")]
    Closed,
}

/// Key-value state of all modules, one namespace per module.
#[derive(Clone)]
pub struct StateStore {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

impl StateStore {
    /// Opens (creating) the store at `path`; `:memory:` keeps it in memory.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let db = |source| StateError::Db {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path).map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS module_state (
                 module TEXT NOT NULL,
                 key TEXT NOT NULL,
                 value TEXT NOT NULL,
                 updated_us INTEGER NOT NULL,
                 PRIMARY KEY (module, key)
             );",
        )
        .map_err(db)?;
        Ok(Self {
            path: path.to_owned(),
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &Path) -> Result<T, StateError> + Send + 'static,
    ) -> Result<T, StateError> {
        let conn = self.conn.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || f(&conn.lock(), &path))
            .await
            .map_err(|_| StateError::Closed)?
    }

    /// The value of `key` for `module`.
    pub async fn get(&self, module: &str, key: &str) -> Result<Option<Value>, StateError> {
        let (module, key) = (module.to_owned(), key.to_owned());
        self.blocking(move |conn, path| {
            let text: Option<String> = conn
                .query_row(
                    "SELECT value FROM module_state WHERE module = ?1 AND key = ?2",
                    params![module, key],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|source| StateError::Db {
                    path: path.to_owned(),
                    source,
                })?;
            text.map(|t| {
                serde_json::from_str(&t).map_err(|e| StateError::Corrupt {
                    module,
                    key,
                    reason: e.to_string(),
                })
            })
            .transpose()
        })
        .await
    }

    /// Sets `key` for `module` (durably, before returning).
    pub async fn set(&self, module: &str, key: &str, value: &Value) -> Result<(), StateError> {
        let (module, key, text) = (module.to_owned(), key.to_owned(), value.to_string());
        self.blocking(move |conn, path| {
            conn.execute(
                "INSERT INTO module_state (module, key, value, updated_us) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(module, key) DO UPDATE SET value = excluded.value, updated_us = excluded.updated_us",
                params![module, key, text, lotus_core::event::micros(std::time::SystemTime::now())],
            )
            .map(|_| ())
            .map_err(|source| StateError::Db {
                path: path.to_owned(),
                source,
            })
        })
        .await
    }

    /// Removes `key` for `module`; returns whether it existed.
    pub async fn delete(&self, module: &str, key: &str) -> Result<bool, StateError> {
        let (module, key) = (module.to_owned(), key.to_owned());
        self.blocking(move |conn, path| {
            conn.execute(
                "DELETE FROM module_state WHERE module = ?1 AND key = ?2",
                params![module, key],
            )
            .map(|n| n > 0)
            .map_err(|source| StateError::Db {
                path: path.to_owned(),
                source,
            })
        })
        .await
    }

    /// All keys of `module`.
    pub async fn keys(&self, module: &str) -> Result<Vec<String>, StateError> {
        let module = module.to_owned();
        self.blocking(move |conn, path| {
            let db = |source| StateError::Db {
                path: path.to_owned(),
                source,
            };
            let mut stmt = conn
                .prepare_cached("SELECT key FROM module_state WHERE module = ?1 ORDER BY key")
                .map_err(db)?;
            let rows = stmt.query_map([module], |r| r.get(0)).map_err(db)?;
            rows.collect::<Result<Vec<String>, _>>().map_err(db)
        })
        .await
    }
}
