//! The embedded backends: what runs on one laptop with nothing installed.

#[allow(unsafe_code, reason = "SIMD intrinsics behind a CPU check")]
mod distance;
mod hnsw;
pub mod knowledge;
pub mod short;
pub mod vectors;
pub mod working;

use std::path::Path;
use std::sync::Arc;

pub use distance::dot;
pub use knowledge::SqliteKnowledge;
pub use short::SqliteShortTerm;
pub use vectors::{EmbeddedVectors, IndexConfig, Quantization};
pub use working::InProcessWorking;

use crate::manager::Tiers;
use crate::tiers::{MemoryError, Result};

/// Opens the SQLite database at `path` (creating its folder) the way every embedded tier uses
/// it: WAL, normal sync, a busy timeout, deleted content overwritten.
pub(crate) fn sqlite(path: &Path, tier: &'static str) -> Result<rusqlite::Connection> {
    let err = |e: &dyn std::fmt::Display| MemoryError::backend(tier, "sqlite", e);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
    }
    let conn = rusqlite::Connection::open(path).map_err(|e| err(&e))?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;
         PRAGMA secure_delete = ON;",
    )
    .map_err(|e| err(&e))?;
    Ok(conn)
}

/// The four embedded tiers under `dir`: `memory.db` (SQLite: knowledge and the stream) and
/// `vectors/` (the ANN index); working memory in the process.
pub fn open(dir: &Path, index: IndexConfig) -> Result<Tiers> {
    let db = dir.join("memory.db");
    Ok(Tiers {
        working: Arc::new(InProcessWorking::new()),
        short_term: Arc::new(SqliteShortTerm::open(&db)?),
        vectors: Arc::new(EmbeddedVectors::open(&dir.join("vectors"), index)?),
        knowledge: Arc::new(SqliteKnowledge::open(&db)?),
    })
}
