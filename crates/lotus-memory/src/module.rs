//! The `memory` core module: the manager behind the tools `memory.remember`, `memory.recall`,
//! `memory.forget`, `memory.observe`, `memory.history`, `memory.stats`, `memory.export`,
//! `memory.import`, `memory.reindex`, the
//! `memory.store` event, and periodic consolidation.
//!
//! Settings (`[modules.memory]`): `data_dir` (set by `lotus up` to `$LOTUS_HOME/data/memory`),
//! `default_user` (`me`), `embed` (`local:minilm`), `quantization` (`f32`, `f16`, `i8`), and
//! the backends: `working`, `short_term` (`redis://…`), `vectors` (ChromaDB's `http://…`),
//! `knowledge` (`postgres://…`), `prefix` — each `embedded` when unset.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use lotus_nucleus::{Context, Event, ModuleError};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::backends::Backends;
use crate::embedded::{IndexConfig, Quantization};
use crate::manager::{Embedder, ManagerConfig, MemoryManager, NewTurn};
use crate::tiers::{MemoryError, Result};
use crate::types::{ForgetFilter, Kind, Memory, NewMemory, RecallQuery};

/// The default user when a call names none.
pub const DEFAULT_USER: &str = "me";
/// The default embedding model.
pub const DEFAULT_EMBED: &str = "local:minilm";

/// Embeddings through the module's [`Context`]: the router, the ledger, the permission check.
pub struct ContextEmbedder {
    cx: Context,
    model: String,
}

impl ContextEmbedder {
    /// Embeds with `model` on behalf of the module of `cx`.
    pub fn new(cx: Context, model: impl Into<String>) -> Self {
        Self {
            cx,
            model: model.into(),
        }
    }
}

#[async_trait]
impl Embedder for ContextEmbedder {
    fn model(&self) -> &str {
        &self.model
    }

    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>> {
        let e = self
            .cx
            .embed_with(&self.model, texts)
            .await
            .map_err(|e| MemoryError::Embed(e.to_string()))?;
        Ok(e.vectors)
    }
}

/// The memory module.
#[derive(Default)]
pub struct MemoryModule {
    manager: Option<Arc<MemoryManager>>,
    default_user: String,
}

impl MemoryModule {
    fn manager(&self) -> Result<&Arc<MemoryManager>, ModuleError> {
        self.manager
            .as_ref()
            .ok_or_else(|| ModuleError::msg("the memory module is not initialized"))
    }

    fn user(&self, user: Option<String>) -> String {
        user.filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| self.default_user.clone())
    }
}

/// A memory error as a module error: bad input stays the caller's fault.
fn me(e: MemoryError) -> ModuleError {
    match e {
        MemoryError::BadInput(m) => ModuleError::invalid(m),
        other => other.into(),
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Value, ModuleError> {
    serde_json::to_value(v).map_err(ModuleError::from)
}

#[lotus_nucleus::module]
impl MemoryModule {
    async fn initialize(&mut self, cx: &Context) -> Result<(), ModuleError> {
        let dir: PathBuf = cx
            .setting::<String>("data_dir")
            .map(PathBuf::from)
            .ok_or_else(|| {
                ModuleError::msg(
                    "the memory module needs a folder: set `data_dir` in [modules.memory] of lotus.toml",
                )
            })?;
        let quantization = match cx.setting::<Value>("quantization") {
            None => Quantization::F32,
            Some(v) => serde_json::from_value(v.clone()).map_err(|_| {
                ModuleError::msg(format!(
                    "[modules.memory] quantization = {v}: use \"f32\", \"f16\" or \"i8\""
                ))
            })?,
        };
        let rerank = match cx.setting::<Value>("rerank") {
            None => IndexConfig::default().rerank,
            Some(v) => v.as_u64().and_then(|n| usize::try_from(n).ok()).ok_or_else(|| {
                ModuleError::msg(format!(
                    "[modules.memory] rerank = {v}: use a whole number of candidates (0 turns re-ranking off)"
                ))
            })?,
        };
        let model = cx
            .setting::<String>("embed")
            .unwrap_or_else(|| DEFAULT_EMBED.to_owned());
        self.default_user = cx
            .setting::<String>("default_user")
            .unwrap_or_else(|| DEFAULT_USER.to_owned());
        let backends = Backends::from_settings(cx.settings()).map_err(me)?;
        let tiers = crate::backends::open(
            &dir,
            &backends,
            IndexConfig {
                quantization,
                rerank,
                ..IndexConfig::default()
            },
        )
        .await
        .map_err(me)?;
        self.manager = Some(Arc::new(MemoryManager::new(
            tiers,
            Arc::new(ContextEmbedder::new(cx.clone(), model)),
            ManagerConfig::default(),
        )));
        Ok(())
    }

    /// Remembers a text. A fact about the same subject and attribute as a current one ("my
    /// favourite editor is now Zed") supersedes it; the same text twice is stored once.
    #[tool("remember")]
    #[allow(clippy::too_many_arguments)]
    async fn remember(
        &mut self,
        text: String,
        user: Option<String>,
        kind: Option<Kind>,
        importance: Option<f32>,
        subject: Option<String>,
        attribute: Option<String>,
        metadata: Option<BTreeMap<String, Value>>,
        source: Option<String>,
    ) -> Result<Value, ModuleError> {
        let r = self
            .manager()?
            .remember(NewMemory {
                user: self.user(user),
                text,
                kind: kind.unwrap_or_default(),
                importance,
                subject,
                attribute,
                source: source.or_else(|| Some("api".into())),
                metadata: metadata.unwrap_or_default(),
            })
            .await
            .map_err(me)?;
        to_json(&r)
    }

    /// The memories that best answer a query (keyword and vector matches fused, weighted by
    /// importance and recency), with the earlier values of facts as history.
    #[tool("recall")]
    async fn recall(
        &mut self,
        query: String,
        user: Option<String>,
        k: Option<usize>,
        kinds: Option<Vec<Kind>>,
        metadata: Option<BTreeMap<String, Value>>,
        include_superseded: Option<bool>,
    ) -> Result<Value, ModuleError> {
        let mut q = RecallQuery::new(self.user(user), query);
        if let Some(k) = k {
            q.k = k;
        }
        q.kinds = kinds.unwrap_or_default();
        q.metadata = metadata.unwrap_or_default();
        q.include_superseded = include_superseded.unwrap_or(false);
        let hits = self.manager()?.recall(&q).await.map_err(me)?;
        to_json(&hits)
    }

    /// Forgets memories by id (with the earlier values of facts), by kind, subject or
    /// attribute, or all of a user's — in every tier.
    #[tool("forget")]
    async fn forget(
        &mut self,
        user: Option<String>,
        ids: Option<Vec<String>>,
        kind: Option<Kind>,
        subject: Option<String>,
        attribute: Option<String>,
        all: Option<bool>,
    ) -> Result<Value, ModuleError> {
        let ids = ids
            .unwrap_or_default()
            .iter()
            .map(|i| {
                Uuid::parse_str(i)
                    .map_err(|_| ModuleError::invalid(format!("`{i}` is not a memory id (a UUID)")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let f = self
            .manager()?
            .forget(&ForgetFilter {
                user: self.user(user),
                ids,
                kind,
                subject,
                attribute,
                all: all.unwrap_or(false),
            })
            .await
            .map_err(me)?;
        to_json(&f)
    }

    /// Counts per tier and the backends in use.
    #[tool("stats")]
    async fn stats(&mut self) -> Result<Value, ModuleError> {
        to_json(&self.manager()?.stats().await.map_err(me)?)
    }

    /// Every memory of a user (or of everyone with `all_users`), oldest first.
    #[tool("export")]
    async fn export(
        &mut self,
        user: Option<String>,
        all_users: Option<bool>,
    ) -> Result<Value, ModuleError> {
        let user = (!all_users.unwrap_or(false)).then(|| self.user(user));
        to_json(&self.manager()?.export(user.as_deref()).await.map_err(me)?)
    }

    /// Stores exported memories as they were; returns how many were new.
    #[tool("import")]
    async fn import(&mut self, memories: Vec<Value>) -> Result<Value, ModuleError> {
        let parsed = memories
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                serde_json::from_value::<Memory>(v)
                    .map_err(|e| ModuleError::invalid(format!("memory {}: {e}", i + 1)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let added = self.manager()?.import(parsed).await.map_err(me)?;
        Ok(json!({ "added": added }))
    }

    /// Rebuilds the vector index from the stored memories (after a change of embedding model,
    /// or over an index an earlier version wrote); returns how many were embedded.
    #[tool("reindex")]
    async fn reindex(&mut self) -> Result<Value, ModuleError> {
        let n = self.manager()?.reindex().await.map_err(me)?;
        Ok(json!({ "embedded": n }))
    }

    /// Records a turn of a conversation (working memory and the conversation history); a
    /// user's turn that asks to remember something or states a fact is remembered at once.
    #[tool("observe")]
    async fn observe(
        &mut self,
        text: String,
        user: Option<String>,
        session: Option<String>,
        role: Option<String>,
        meta: Option<Value>,
    ) -> Result<Value, ModuleError> {
        let r = self
            .manager()?
            .observe(NewTurn {
                user: self.user(user),
                session: session.unwrap_or_default(),
                role: role.unwrap_or_default(),
                text,
                meta: meta.unwrap_or(Value::Null),
            })
            .await
            .map_err(me)?;
        to_json(&r)
    }

    /// The user's profile: what is known of them as keys and values (name, timezone, …).
    #[tool("profile")]
    async fn profile(&mut self, user: Option<String>) -> Result<Value, ModuleError> {
        let p = self
            .manager()?
            .profile(&self.user(user))
            .await
            .map_err(me)?;
        to_json(&p)
    }

    /// Records one thing about the user in their profile (`key`: e.g. `name`, `timezone`,
    /// `language`); a `value` of null, or none, removes it.
    #[tool("profile_set")]
    async fn profile_set(
        &mut self,
        key: String,
        value: Option<Value>,
        user: Option<String>,
    ) -> Result<Value, ModuleError> {
        let user = self.user(user);
        let m = self.manager()?;
        m.profile_set(&user, &key, &value.unwrap_or(Value::Null))
            .await
            .map_err(me)?;
        to_json(&m.profile(&user).await.map_err(me)?)
    }

    /// The conversation history of a user (of one session when given): the newest `limit`
    /// turns (20 unless told), oldest first.
    #[tool("history")]
    async fn history(
        &mut self,
        user: Option<String>,
        session: Option<String>,
        limit: Option<usize>,
    ) -> Result<Value, ModuleError> {
        let turns = self
            .manager()?
            .history(&self.user(user), session.as_deref(), limit.unwrap_or(20))
            .await
            .map_err(me)?;
        to_json(&turns)
    }

    /// `memory.store` events: the payload is what `memory.remember` takes.
    #[on_event("memory.store")]
    async fn store(&mut self, cx: &Context, ev: &Event) -> Result<(), ModuleError> {
        let mut new: NewMemory = serde_json::from_value(ev.payload.clone())
            .map_err(|e| ModuleError::msg(format!("memory.store from {}: {e}", ev.source)))?;
        if new.user.trim().is_empty() {
            new.user = self.default_user.clone();
        }
        if new.source.is_none() {
            new.source = Some(ev.source.to_string());
        }
        let r = self.manager()?.remember(new).await?;
        cx.publish(
            "memory.stored",
            json!({
                "id": r.memory.id,
                "user": r.memory.user,
                "duplicate": r.duplicate,
                "superseded": r.superseded.iter().map(|m| m.id).collect::<Vec<_>>(),
            }),
        )
        .await?;
        Ok(())
    }

    /// Moves expired working memory to the stream, trims the stream, checkpoints the index.
    #[periodic(every = "1m")]
    async fn consolidate(&mut self, cx: &Context) -> Result<(), ModuleError> {
        let c = self.manager()?.consolidate().await?;
        if c.moved + c.facts + c.trimmed > 0 {
            cx.info(format!(
                "consolidated: {} interactions to the stream, {} facts learned, {} old records trimmed",
                c.moved, c.facts, c.trimmed
            ));
        }
        Ok(())
    }

    async fn shutdown(&mut self) -> Result<(), ModuleError> {
        if let Some(m) = &self.manager {
            m.flush().await?;
        }
        Ok(())
    }
}
