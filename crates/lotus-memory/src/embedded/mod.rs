//! The embedded backends: what runs on one laptop with nothing installed.

pub mod knowledge;
pub mod short;
pub mod vectors;
pub mod working;

use std::path::Path;
use std::sync::Arc;

pub use knowledge::SqliteKnowledge;
pub use short::SqliteShortTerm;
pub use vectors::{EmbeddedVectors, IndexConfig, Quantization};
pub use working::InProcessWorking;

use crate::manager::Tiers;
use crate::tiers::Result;

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
