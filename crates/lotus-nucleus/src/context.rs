//! [`Context`]: what a module's code can do — publish, request, call tools, keep state, read its
//! settings. Every call is checked against the module's manifest.

use std::sync::Arc;
use std::time::Duration;

use lotus_bus::{BusError, Delivery};
use lotus_core::event::SmolStr;
use lotus_core::{Event, Manifest, Topic, TopicError};
use serde::de::DeserializeOwned;
use serde_json::Value;

use lotus_providers::{
    ChatCall, ChatRequest, ChatResponse, Embeddings, ModelRef, ProviderError, Routed, Router,
};

use crate::kernel::Shared;
use crate::module::ToolError;
use crate::state::StateError;

/// Why a publish or request from a module failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The topic is not valid.
    #[error(transparent)]
    BadTopic(#[from] TopicError),
    /// The manifest does not grant publishing on this topic.
    #[error(
        "module `{module}` may not publish on `{topic}`: add a matching pattern to `publications` in its manifest"
    )]
    Denied {
        /// The module.
        module: String,
        /// The topic.
        topic: String,
    },
    /// The bus failed.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// Why an LLM call from a module failed.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The manifest has no `providers` block.
    #[error(
        "module `{module}` may not use LLMs: add a `providers` block to its manifest (e.g. `providers: {{primary: default}}`)"
    )]
    Denied {
        /// The module.
        module: String,
    },
    /// This nucleus runs without providers.
    #[error(
        "this nucleus was built without LLM providers (NucleusBuilder::router); `lotus up` sets them up from [providers]"
    )]
    Unavailable,
    /// Every model of the chain failed, or a budget is spent.
    #[error(transparent)]
    Provider(#[from] ProviderError),
}

/// The handle a module's code uses to reach the nucleus. Cheap to clone.
#[derive(Clone)]
pub struct Context {
    pub(crate) shared: Arc<Shared>,
    pub(crate) name: SmolStr,
    pub(crate) manifest: Arc<Manifest>,
    pub(crate) settings: Arc<Value>,
}

impl Context {
    /// The module's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The module's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The module's settings: manifest `config.settings` overlaid with `[modules.NAME]`.
    pub fn settings(&self) -> &Value {
        &self.settings
    }

    /// One setting, deserialized; `None` when absent or of another type.
    pub fn setting<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.settings
            .get(key)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    async fn checked_topic(&self, topic: &str) -> Result<Topic, PublishError> {
        let topic = Topic::new(topic)?;
        if !self.manifest.may_publish(&topic) {
            self.shared
                .deny(
                    &self.name,
                    "publish",
                    topic.as_str(),
                    "not in `publications`",
                )
                .await;
            return Err(PublishError::Denied {
                module: self.name.to_string(),
                topic: topic.to_string(),
            });
        }
        Ok(topic)
    }

    /// Publishes `payload` on `topic`, if the manifest's `publications` allow it.
    pub async fn publish(&self, topic: &str, payload: Value) -> Result<Delivery, PublishError> {
        let topic = self.checked_topic(topic).await?;
        let ev = Event::new(topic, self.name.clone(), payload);
        Ok(self.shared.bus.publish(Arc::new(ev)).await)
    }

    /// Publishes a request and waits up to `timeout` for the reply.
    pub async fn request(
        &self,
        topic: &str,
        payload: Value,
        timeout: Duration,
    ) -> Result<Arc<Event>, PublishError> {
        let topic = self.checked_topic(topic).await?;
        let ev = Event::new(topic, self.name.clone(), payload);
        Ok(self.shared.bus.request(ev, timeout).await?)
    }

    /// Answers `request` on `topic` (the reply carries the request's correlation id).
    pub async fn reply(
        &self,
        request: &Event,
        topic: &str,
        payload: Value,
    ) -> Result<Delivery, PublishError> {
        self.reply_with(request.correlation_id.unwrap_or(request.id), topic, payload)
            .await
    }

    /// Publishes `payload` on `topic` carrying `correlation` (a request's correlation id), if the
    /// manifest's `publications` allow it: [`reply`](Self::reply) when only the id is at hand.
    pub async fn reply_with(
        &self,
        correlation: uuid::Uuid,
        topic: &str,
        payload: Value,
    ) -> Result<Delivery, PublishError> {
        let topic = self.checked_topic(topic).await?;
        let ev = Event::new(topic, self.name.clone(), payload).with_correlation(correlation);
        Ok(self.shared.bus.publish(Arc::new(ev)).await)
    }

    /// Calls another module's tool (`module.tool`), if `permissions.tools` grants it.
    pub async fn call_tool(&self, tool: &str, args: Value) -> Result<Value, ToolError> {
        self.shared
            .call_tool(Some((&self.name, &self.manifest)), tool, args)
            .await
    }

    /// Logs `message` at `level`, tagged with this module's name (also written to the log file).
    pub fn log(&self, level: tracing::Level, message: impl std::fmt::Display) {
        let module = self.name.as_str();
        match level {
            tracing::Level::ERROR => tracing::error!(module, "{message}"),
            tracing::Level::WARN => tracing::warn!(module, "{message}"),
            tracing::Level::INFO => tracing::info!(module, "{message}"),
            tracing::Level::DEBUG => tracing::debug!(module, "{message}"),
            tracing::Level::TRACE => tracing::trace!(module, "{message}"),
        }
    }

    /// Logs at info level.
    pub fn info(&self, message: impl std::fmt::Display) {
        self.log(tracing::Level::INFO, message);
    }

    /// Logs at warn level.
    pub fn warn(&self, message: impl std::fmt::Display) {
        self.log(tracing::Level::WARN, message);
    }

    /// Logs at error level.
    pub fn error(&self, message: impl std::fmt::Display) {
        self.log(tracing::Level::ERROR, message);
    }

    /// This module's persisted value for `key`.
    pub async fn state_get(&self, key: &str) -> Result<Option<Value>, StateError> {
        self.shared.state.get(&self.name, key).await
    }

    /// Persists `value` under `key` for this module (survives restarts and reloads).
    pub async fn state_set(&self, key: &str, value: &Value) -> Result<(), StateError> {
        self.shared.state.set(&self.name, key, value).await
    }

    /// Checks that `permissions.hosts` lets this module reach `host` on `port`; a refusal is
    /// published as `system.permission_denied` (and so lands in `action_log`). Sandboxed runtimes
    /// call this before every connection they make for the module.
    pub async fn authorize_host(&self, host: &str, port: u16) -> Result<(), String> {
        if self.manifest.may_reach(host, port) {
            return Ok(());
        }
        let target = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        self.shared
            .deny(&self.name, "connect", &target, "not in `permissions.hosts`")
            .await;
        Err(format!(
            "module `{}` may not reach {target}: add it to `permissions.hosts` in its manifest",
            self.name
        ))
    }

    /// The router and the module's `providers` block, or why the module may not use LLMs (a
    /// refusal is audited like any other).
    async fn llm(&self) -> Result<(&Arc<Router>, &lotus_core::manifest::Providers), LlmError> {
        let Some(providers) = &self.manifest.providers else {
            self.shared
                .deny(&self.name, "llm", "providers", "no `providers` block")
                .await;
            return Err(LlmError::Denied {
                module: self.name.to_string(),
            });
        };
        let router = self.shared.router.as_ref().ok_or(LlmError::Unavailable)?;
        Ok((router, providers))
    }

    /// Starts a streamed completion on the manifest's chain (`providers.primary`, then
    /// `providers.fallback`; `default` stands for the configured chain), with the router's
    /// retries, budgets and timeouts. The cost ledger records the call under this module.
    pub async fn chat(&self, request: ChatRequest) -> Result<Routed, LlmError> {
        self.chat_on(Vec::new(), request).await
    }

    /// Like [`chat`](Self::chat) on `chain` (model names or aliases, tried in order) instead of
    /// the manifest's, for a caller that picked its model (`lotus ask --model`); empty means the
    /// manifest's. The manifest must still have a `providers` block.
    pub async fn chat_on(
        &self,
        chain: Vec<String>,
        request: ChatRequest,
    ) -> Result<Routed, LlmError> {
        let (router, providers) = self.llm().await?;
        let chain = if chain.is_empty() {
            manifest_chain(providers)
        } else {
            chain
        };
        Ok(router
            .chat(ChatCall {
                module: self.name.to_string(),
                chain,
                request,
            })
            .await?)
    }

    /// The model that would answer first on `chain` (empty: the manifest's chain): the first
    /// of it whose provider is configured. `None` when none is, or LLMs are not available.
    pub fn first_model(&self, chain: &[String]) -> Option<ModelRef> {
        let router = self.shared.router.as_ref()?;
        let names: Vec<String> = if chain.is_empty() {
            manifest_chain(self.manifest.providers.as_ref()?)
        } else {
            chain.to_vec()
        };
        router
            .chain(&names)
            .ok()?
            .into_iter()
            .find(|m| router.providers().any(|p| p.name() == m.provider))
    }

    /// The router's model catalog (context windows, prices, capabilities), if LLMs are
    /// configured.
    pub fn catalog(&self) -> Option<&lotus_providers::Catalog> {
        self.shared.router.as_ref().map(|r| r.catalog())
    }

    /// The tools this module may call (`permissions.tools`), registered now, sorted by name
    /// (a stable order, so a prompt listing them stays the same between calls). Its own tools
    /// are left out: a module calls those directly.
    pub fn tools(&self) -> Vec<lotus_core::ToolSpec> {
        self.shared
            .all_tools()
            .into_iter()
            .filter(|t| t.module != *self.name && self.manifest.may_call_tool(&t.name))
            .collect()
    }

    /// Like [`chat`](Self::chat), collected into one response.
    pub async fn complete(
        &self,
        request: ChatRequest,
    ) -> Result<(ModelRef, ChatResponse), LlmError> {
        self.complete_on(Vec::new(), request).await
    }

    /// Like [`chat_on`](Self::chat_on), collected into one response.
    pub async fn complete_on(
        &self,
        chain: Vec<String>,
        request: ChatRequest,
    ) -> Result<(ModelRef, ChatResponse), LlmError> {
        let routed = self.chat_on(chain, request).await?;
        let provider = routed.model.provider.clone();
        let response = lotus_providers::collect(&provider, routed.stream).await?;
        Ok((routed.model, response))
    }

    /// Embeds `inputs` with the manifest's `providers.embed` model (default: the `embed` alias).
    pub async fn embed(&self, inputs: Vec<String>) -> Result<Embeddings, LlmError> {
        let model = self
            .manifest
            .providers
            .as_ref()
            .and_then(|p| p.embed.as_deref())
            .unwrap_or("embed");
        self.embed_with(model, inputs).await
    }

    /// Embeds `inputs` with `model` (a name or alias), for modules whose model is a setting.
    pub async fn embed_with(
        &self,
        model: &str,
        inputs: Vec<String>,
    ) -> Result<Embeddings, LlmError> {
        let (router, _) = self.llm().await?;
        Ok(router.embed(&self.name, model, inputs).await?)
    }

    /// Removes `key` from this module's state.
    pub async fn state_delete(&self, key: &str) -> Result<bool, StateError> {
        self.shared.state.delete(&self.name, key).await
    }
}

/// A manifest's models in order: `providers.primary`, then `providers.fallback`.
fn manifest_chain(p: &lotus_core::manifest::Providers) -> Vec<String> {
    std::iter::once(&p.primary)
        .chain(&p.fallback)
        .cloned()
        .collect()
}
