//! Choosing each tier's backend: embedded unless a server is named.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::chroma::ChromaVectors;
use crate::embedded::{
    EmbeddedVectors, InProcessWorking, IndexConfig, SqliteKnowledge, SqliteShortTerm,
};
use crate::manager::Tiers;
use crate::pg::PgKnowledge;
use crate::redis_tiers::{RedisShortTerm, RedisWorking};
use crate::tiers::{MemoryError, Result};

/// Where each tier lives: `embedded` (or unset), or a server's URL.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backends {
    /// L1: `embedded` or `redis://HOST:PORT`.
    #[serde(default)]
    pub working: Option<String>,
    /// L2: `embedded` or `redis://HOST:PORT`.
    #[serde(default)]
    pub short_term: Option<String>,
    /// L3: `embedded` or ChromaDB's `http://HOST:PORT`.
    #[serde(default)]
    pub vectors: Option<String>,
    /// L4: `embedded` or `postgres://USER@HOST:PORT/DB`.
    #[serde(default)]
    pub knowledge: Option<String>,
    /// Key and collection prefix on shared servers (default `lotus:mem:` / `lotus_`).
    #[serde(default)]
    pub prefix: Option<String>,
}

fn embedded(url: &Option<String>) -> bool {
    url.as_deref()
        .is_none_or(|u| u.is_empty() || u == "embedded")
}

fn unsupported(key: &str, url: &str, want: &str) -> MemoryError {
    MemoryError::BadInput(format!(
        "[modules.memory] {key} = \"{url}\": use \"embedded\" or {want}"
    ))
}

impl Backends {
    /// The backends named by the memory module's settings (`[modules.memory]`: `working`,
    /// `short_term`, `vectors`, `knowledge`, `prefix`); a setting that is not a string is an
    /// error naming it.
    pub fn from_settings(settings: &serde_json::Value) -> Result<Self> {
        let mut b = Self::default();
        for (key, slot) in [
            ("working", &mut b.working),
            ("short_term", &mut b.short_term),
            ("vectors", &mut b.vectors),
            ("knowledge", &mut b.knowledge),
            ("prefix", &mut b.prefix),
        ] {
            *slot = match settings.get(key) {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(v) => {
                    return Err(MemoryError::BadInput(format!(
                        "[modules.memory] {key} = {v}: use a string (\"embedded\" or a server's URL)"
                    )));
                }
            };
        }
        Ok(b)
    }

    /// The server L4 lives on, if not embedded (`memory.db`).
    pub fn knowledge_server(&self) -> Option<&str> {
        self.knowledge
            .as_deref()
            .filter(|_| !embedded(&self.knowledge))
    }
}

/// Opens L4 alone: `memory.db` under `dir`, or the PostgreSQL server named. For what keeps
/// records there besides the memories (the module registry, the providers' configurations).
pub async fn open_knowledge(dir: &Path, b: &Backends) -> Result<Arc<dyn crate::Knowledge>> {
    Ok(match b.knowledge_server() {
        None => Arc::new(SqliteKnowledge::open(&dir.join("memory.db"))?),
        Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
            Arc::new(PgKnowledge::connect(u).await?)
        }
        Some(u) => return Err(unsupported("knowledge", u, "postgres://USER@HOST:PORT/DB")),
    })
}

/// Opens the tiers: the embedded ones under `dir`, the others on their servers.
pub async fn open(dir: &Path, b: &Backends, index: IndexConfig) -> Result<Tiers> {
    let db = dir.join("memory.db");
    let prefix = b.prefix.clone().unwrap_or_else(|| "lotus:mem:".into());
    let working: Arc<dyn crate::Working> = match &b.working {
        w if embedded(w) => Arc::new(InProcessWorking::new()),
        Some(u) if u.starts_with("redis://") || u.starts_with("rediss://") => {
            Arc::new(RedisWorking::connect(u, &prefix).await?)
        }
        Some(u) => return Err(unsupported("working", u, "redis://HOST:PORT")),
        None => Arc::new(InProcessWorking::new()),
    };
    let short_term: Arc<dyn crate::ShortTerm> = match &b.short_term {
        s if embedded(s) => Arc::new(SqliteShortTerm::open(&db)?),
        Some(u) if u.starts_with("redis://") || u.starts_with("rediss://") => {
            Arc::new(RedisShortTerm::connect(u, &prefix).await?)
        }
        Some(u) => return Err(unsupported("short_term", u, "redis://HOST:PORT")),
        None => Arc::new(SqliteShortTerm::open(&db)?),
    };
    let vectors: Arc<dyn crate::Vectors> = match &b.vectors {
        v if embedded(v) => Arc::new(EmbeddedVectors::open(&dir.join("vectors"), index)?),
        Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
            let prefix = b
                .prefix
                .as_deref()
                .map_or_else(|| "lotus_".to_owned(), |p| p.replace(':', "_"));
            Arc::new(ChromaVectors::connect(u).await?.with_prefix(prefix))
        }
        Some(u) => return Err(unsupported("vectors", u, "ChromaDB's http://HOST:PORT")),
        None => Arc::new(EmbeddedVectors::open(&dir.join("vectors"), index)?),
    };
    let knowledge = open_knowledge(dir, b).await?;
    Ok(Tiers {
        working,
        short_term,
        vectors,
        knowledge,
    })
}
