//! The four tiers, one trait each (DESIGN.md §6). Every backend of a tier passes the same
//! conformance suite (`tests/conformance`).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::types::{ForgetFilter, Memory};

/// Why a tier failed.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// A backend failed (its name, what it said).
    #[error("{tier} ({backend}): {message}")]
    Backend {
        /// `working`, `short-term`, `vectors`, `knowledge`.
        tier: &'static str,
        /// `sqlite`, `redis`, …
        backend: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The caller asked for something impossible.
    #[error("{0}")]
    BadInput(String),
    /// Embedding failed.
    #[error("embedding failed: {0}")]
    Embed(String),
}

impl MemoryError {
    /// A backend failure.
    pub fn backend(tier: &'static str, backend: &'static str, e: impl std::fmt::Display) -> Self {
        Self::Backend {
            tier,
            backend,
            message: e.to_string(),
        }
    }
}

/// The result of a memory operation.
pub type Result<T, E = MemoryError> = std::result::Result<T, E>;

/// An item of working memory: one recent interaction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkingItem {
    /// Its id.
    pub id: Uuid,
    /// The memory it became, if any (so forgetting that memory forgets this too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_id: Option<Uuid>,
    /// `user`, `assistant`, `tool`, `event`.
    pub role: String,
    /// What was said or done.
    pub text: String,
    /// When (µs since the epoch).
    pub at_us: i64,
}

/// L1: recent interactions (the last [`RECENT_CAP`] per user) and short-lived keys
/// (`active_task`, `user_context`, `module_state:{name}`) with a TTL.
#[async_trait]
pub trait Working: Send + Sync {
    /// `in-process`, `redis`.
    fn backend(&self) -> &'static str;
    /// Adds an interaction; the oldest beyond [`RECENT_CAP`] is dropped.
    async fn push(&self, user: &str, item: &WorkingItem) -> Result<()>;
    /// The newest `n` interactions, newest first.
    async fn recent(&self, user: &str, n: usize) -> Result<Vec<WorkingItem>>;
    /// Sets `key` for `ttl`.
    async fn set(&self, user: &str, key: &str, value: &Value, ttl: Duration) -> Result<()>;
    /// The value of `key`, unless expired.
    async fn get(&self, user: &str, key: &str) -> Result<Option<Value>>;
    /// Removes and returns every interaction older than `before_us`, of every user (for
    /// consolidation into the short-term tier).
    async fn take_older(&self, before_us: i64) -> Result<Vec<(String, WorkingItem)>>;
    /// Removes the interactions that became one of `memory_ids`.
    async fn forget(&self, user: &str, memory_ids: &[Uuid]) -> Result<u64>;
    /// Removes everything of `user`.
    async fn clear_user(&self, user: &str) -> Result<u64>;
    /// Interactions held, all users.
    async fn count(&self) -> Result<u64>;
}

/// Most recent interactions kept per user.
pub const RECENT_CAP: usize = 100;

/// A record of the short-term stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamRecord {
    /// Its id.
    pub id: Uuid,
    /// Whose.
    pub user: String,
    /// The memory it is about, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_id: Option<Uuid>,
    /// `remember`, `supersede`, `interaction`.
    pub op: String,
    /// The text.
    pub text: String,
    /// When (µs since the epoch).
    pub at_us: i64,
}

/// L2: the short-term stream (24–48 h), per user, in order.
#[async_trait]
pub trait ShortTerm: Send + Sync {
    /// `sqlite`, `redis`.
    fn backend(&self) -> &'static str;
    /// Appends a record.
    async fn append(&self, rec: &StreamRecord) -> Result<()>;
    /// Records of `user` from `since_us` on, oldest first, at most `limit`.
    async fn range(&self, user: &str, since_us: i64, limit: usize) -> Result<Vec<StreamRecord>>;
    /// Removes the records about `memory_ids`.
    async fn forget(&self, user: &str, memory_ids: &[Uuid]) -> Result<u64>;
    /// Removes everything of `user`.
    async fn clear_user(&self, user: &str) -> Result<u64>;
    /// Removes records older than `before_us` (retention).
    async fn trim(&self, before_us: i64) -> Result<u64>;
    /// Records held, all users.
    async fn count(&self) -> Result<u64>;
}

/// A vector with its metadata (`user` always among it).
#[derive(Clone, Debug, PartialEq)]
pub struct VectorItem {
    /// The memory's id.
    pub id: Uuid,
    /// The embedding.
    pub vector: Vec<f32>,
    /// Filterable metadata: strings, numbers, booleans.
    pub meta: BTreeMap<String, Value>,
}

/// Checks a collection name: 1 to 64 lowercase letters, digits and `_`. Every backend takes the
/// same names.
pub fn check_collection(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(MemoryError::BadInput(format!(
            "`{name}` is not a collection name: use lowercase letters, digits and `_`"
        )));
    }
    Ok(())
}

/// Checks a batch for `collection`, whose vectors have `dims` dimensions: none empty, all of
/// that dimension, no NaN or infinity. Every backend checks the same way before it writes.
pub fn check_vectors(collection: &str, dims: usize, items: &[VectorItem]) -> Result<()> {
    if dims == 0 {
        return Err(MemoryError::BadInput("an empty vector".into()));
    }
    if let Some(bad) = items.iter().find(|i| i.vector.len() != dims) {
        return Err(MemoryError::BadInput(format!(
            "collection `{collection}` holds {dims}-dimensional vectors; {} has {} (a different embedding model? run `lotus memory reindex`)",
            bad.id,
            bad.vector.len()
        )));
    }
    if let Some(bad) = items
        .iter()
        .find(|i| i.vector.iter().any(|f| !f.is_finite()))
    {
        return Err(MemoryError::BadInput(format!(
            "the vector of {} has a NaN or infinite value",
            bad.id
        )));
    }
    Ok(())
}

/// An equality filter over vector metadata (every pair must match).
pub type VectorFilter = BTreeMap<String, Value>;

/// L3: long-term vectors, in named collections.
#[async_trait]
pub trait Vectors: Send + Sync {
    /// `embedded`, `chromadb`.
    fn backend(&self) -> &'static str;
    /// Adds or replaces items (all of one dimension per collection).
    async fn upsert(&self, collection: &str, items: &[VectorItem]) -> Result<()>;
    /// The `k` nearest items matching `filter`: ids with cosine similarity, best first.
    async fn query(
        &self,
        collection: &str,
        vector: &[f32],
        k: usize,
        filter: &VectorFilter,
    ) -> Result<Vec<(Uuid, f32)>>;
    /// Removes items by id; how many were there.
    async fn delete(&self, collection: &str, ids: &[Uuid]) -> Result<u64>;
    /// Removes every item matching `filter`; how many.
    async fn delete_where(&self, collection: &str, filter: &VectorFilter) -> Result<u64>;
    /// Items held.
    async fn count(&self, collection: &str) -> Result<u64>;
    /// Makes everything written so far durable in its compact form.
    async fn flush(&self) -> Result<()>;
    /// Drops the whole collection, whatever it holds (even an index this version cannot read).
    async fn reset(&self, collection: &str) -> Result<()>;
}

/// A turn of a conversation, kept in `conversation_history` (L4).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    /// Its id.
    pub id: Uuid,
    /// Whose conversation.
    pub user: String,
    /// The session (one `lotus chat`, one `lotus ask`).
    pub session: String,
    /// `user`, `assistant`, `tool`.
    pub role: String,
    /// What was said.
    pub text: String,
    /// When (µs since the epoch).
    pub at_us: i64,
    /// The memory the turn became, if any (so forgetting that memory forgets this turn too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_id: Option<Uuid>,
    /// Models, tokens, cost: whatever the writer wants kept (a JSON object).
    #[serde(default)]
    pub meta: Value,
}

/// An entry of `module_registry` (L4): a version of a module installed, rolled back to, or
/// removed. The entries of a module, oldest first, are its history; the last says what is
/// active.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleRecord {
    /// The module's name.
    pub name: String,
    /// `install`, `rollback`, `remove`.
    pub action: String,
    /// The version (from its manifest).
    pub version: String,
    /// The content hash of the stored version (`$LOTUS_HOME/modules/.store/NAME/HASH`).
    pub hash: String,
    /// `native`, `wasm`, … (empty when unknown).
    #[serde(default)]
    pub runtime: String,
    /// When (µs since the epoch).
    pub at_us: i64,
}

/// A provider's stored configuration (`provider_configs`, L4). Its key is kept only sealed
/// (see `lotus_providers::keystore`): this tier never sees it in clear.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProviderRecord {
    /// `openai`, `anthropic`, `gemini`, `openrouter`, `ollama`.
    pub name: String,
    /// Its settings (a JSON object: `base_url`, `model`).
    pub settings: Value,
    /// Its API key, sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_key: Option<String>,
    /// When it was last set (µs since the epoch).
    pub updated_us: i64,
}

/// L4: persistent knowledge — the memories themselves (the source of truth, with keyword
/// search and fact validity), user profiles, the conversation history, the module registry and
/// the providers' configurations.
#[async_trait]
pub trait Knowledge: Send + Sync {
    /// `sqlite`, `postgres`.
    fn backend(&self) -> &'static str;
    /// Stores a new memory.
    async fn insert(&self, m: &Memory) -> Result<()>;
    /// The memories with these ids that exist.
    async fn get_many(&self, ids: &[Uuid]) -> Result<Vec<Memory>>;
    /// The current memory of `user` whose text is exactly `text`, if any.
    async fn find_current_text(&self, user: &str, text: &str) -> Result<Option<Memory>>;
    /// The current fact of `user` about `subject`'s `attribute`, if any.
    async fn current_fact(
        &self,
        user: &str,
        subject: &str,
        attribute: &str,
    ) -> Result<Option<Memory>>;
    /// Every value the fact ever had, newest first.
    async fn fact_history(&self, user: &str, subject: &str, attribute: &str)
    -> Result<Vec<Memory>>;
    /// Marks `old` as superseded by `new` at `at_us`.
    async fn supersede(&self, old: &Uuid, new: &Uuid, at_us: i64) -> Result<()>;
    /// Keyword search over `user`'s memories: ids with a relevance score (higher is better).
    async fn keyword(
        &self,
        user: &str,
        query: &str,
        k: usize,
        include_superseded: bool,
    ) -> Result<Vec<(Uuid, f32)>>;
    /// The memories a [`ForgetFilter`] selects (ids, or kind/subject/attribute, or all).
    async fn select(&self, filter: &ForgetFilter) -> Result<Vec<Memory>>;
    /// Every memory, of one user or all, oldest first.
    async fn list(&self, user: Option<&str>) -> Result<Vec<Memory>>;
    /// Deletes memories by id; how many.
    async fn delete(&self, ids: &[Uuid]) -> Result<u64>;
    /// (memories, superseded, users).
    async fn counts(&self) -> Result<(u64, u64, u64)>;
    /// Sets a profile entry of `user`.
    async fn profile_set(&self, user: &str, key: &str, value: &Value) -> Result<()>;
    /// `user`'s profile.
    async fn profile(&self, user: &str) -> Result<BTreeMap<String, Value>>;
    /// Removes one key of `user`'s profile; whether it was there.
    async fn profile_remove(&self, user: &str, key: &str) -> Result<bool>;
    /// Removes `user`'s profile.
    async fn profile_clear(&self, user: &str) -> Result<u64>;
    /// Appends a turn to the conversation history.
    async fn history_append(&self, turn: &Turn) -> Result<()>;
    /// The newest `limit` turns of `user` (of one `session` when given), oldest first.
    async fn history(&self, user: &str, session: Option<&str>, limit: usize) -> Result<Vec<Turn>>;
    /// Removes `user`'s turns that became one of `memory_ids`; how many.
    async fn history_forget(&self, user: &str, memory_ids: &[Uuid]) -> Result<u64>;
    /// Removes `user`'s whole history; how many turns.
    async fn history_clear(&self, user: &str) -> Result<u64>;
    /// Appends an entry to the module registry.
    async fn registry_append(&self, record: &ModuleRecord) -> Result<()>;
    /// The registry's entries (of one module when `name` is given), oldest first.
    async fn registry(&self, name: Option<&str>) -> Result<Vec<ModuleRecord>>;
    /// Stores a provider's configuration, replacing the one of the same name.
    async fn provider_put(&self, record: &ProviderRecord) -> Result<()>;
    /// Every stored provider configuration, by name.
    async fn providers(&self) -> Result<Vec<ProviderRecord>>;
    /// Removes a provider's configuration; whether there was one.
    async fn provider_remove(&self, name: &str) -> Result<bool>;
}
