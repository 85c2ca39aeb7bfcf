//! # lotus-memory
//!
//! Memory in four tiers (DESIGN.md §6), each behind a trait with an embedded default:
//!
//! | tier | trait | embedded |
//! |---|---|---|
//! | L1 working | [`Working`] | in-process |
//! | L2 short-term | [`ShortTerm`] | SQLite table |
//! | L3 long-term vectors | [`Vectors`] | HNSW index on disk (usearch, write-ahead log) |
//! | L4 persistent knowledge | [`Knowledge`] | SQLite with FTS5 |
//!
//! The [`MemoryManager`] remembers (deduplicating, superseding facts about the same subject and
//! attribute), recalls (keyword and vector matches fused by reciprocal rank, weighted by
//! importance and recency, scoped to one user), forgets everywhere at once, consolidates working
//! memory into the stream, and exports and imports JSONL.

pub mod backends;
pub mod chroma;
pub mod embedded;
pub mod extract;
pub mod keywords;
pub mod manager;
pub mod module;
pub mod pg;
pub mod quality;
pub mod redis_tiers;
pub mod tiers;
pub mod types;

pub use manager::{
    Consolidated, Embedder, Forgotten, ManagerConfig, MemoryManager, NewTurn, Observed,
    RouterEmbedder, Tiers,
};
pub use module::MemoryModule;
pub use tiers::{
    Knowledge, MemoryError, ModuleRecord, ProviderRecord, Result, ShortTerm, StreamRecord, Turn,
    VectorFilter, VectorItem, Vectors, Working, WorkingItem,
};
pub use types::{
    ForgetFilter, Hit, Kind, Memory, NewMemory, RecallQuery, Remembered, Stats, now_us,
};
