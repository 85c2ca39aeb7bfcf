//! # lotus-providers
//!
//! Every LLM behind one interface. A [`Provider`] streams a chat completion as neutral
//! [`ChatEvent`]s (text deltas, tool-call deltas, then the stop reason and usage) and computes
//! embeddings; the wire formats of OpenAI (and every OpenAI-compatible server, OpenRouter
//! included), Anthropic, Gemini and Ollama are thin clients over reqwest. The [`Router`] resolves
//! `provider:model` names and aliases from a catalog kept as data, walks a fallback chain with
//! retries (backoff, jitter, `Retry-After`), cools down a provider that keeps failing, enforces
//! daily and monthly budgets, and writes every attempt to a cost [`Ledger`].

pub mod anthropic;
pub mod catalog;
mod error;
pub mod gemini;
pub mod keystore;
pub mod ledger;
pub mod ollama;
pub mod openai;
pub mod router;
pub mod scripted;
pub mod setup;
mod types;
mod wire;

use std::fmt;
use std::pin::Pin;

use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};

pub use catalog::{Catalog, ModelInfo, ModelRef};
pub use error::{ErrorKind, ProviderError, parse_retry_after};
pub use keystore::{KeyStore, KeyStoreError};
pub use ledger::{CostRow, Ledger};
pub use router::{Attempt, ChatCall, DEFAULT_CHAIN, Routed, Router, RouterConfig};
pub use scripted::{Reply, Scripted};
pub use types::{
    ChatEvent, ChatRequest, ChatResponse, Embeddings, Message, Part, Role, StopReason, ToolCall,
    ToolSpec, Usage,
};

/// A streamed completion.
pub type ChatStream = Pin<Box<dyn Stream<Item = Result<ChatEvent, ProviderError>> + Send>>;

/// One LLM provider.
pub trait Provider: Send + Sync {
    /// Its name, the `provider` of `provider:model` (`openai`, `anthropic`, …).
    fn name(&self) -> &str;

    /// Starts a streamed chat completion.
    fn chat(&self, req: ChatRequest) -> BoxFuture<'_, Result<ChatStream, ProviderError>>;

    /// Embeds `inputs` with `model`.
    fn embed<'a>(
        &'a self,
        model: &'a str,
        inputs: Vec<String>,
    ) -> BoxFuture<'a, Result<Embeddings, ProviderError>> {
        let _ = (model, inputs);
        Box::pin(async move {
            Err(ProviderError::new(
                self.name(),
                ErrorKind::NotConfigured,
                "this provider has no embeddings",
            ))
        })
    }

    /// Checks that the provider answers (a cheap authenticated request, e.g. listing models).
    fn check(&self) -> BoxFuture<'_, Result<(), ProviderError>>;
}

/// A secret (an API key): never shown by `Debug`, and scrubbed from provider error messages.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Tool calls put together from their streamed parts: each call's id and name, and its
/// arguments' JSON text joined from the fragments.
#[derive(Debug, Default)]
pub struct CallParts(Vec<(String, String, String)>);

impl CallParts {
    fn at(&mut self, index: usize) -> &mut (String, String, String) {
        if self.0.len() <= index {
            self.0.resize(index + 1, Default::default());
        }
        &mut self.0[index]
    }

    /// Takes a [`ChatEvent::ToolCallStart`] or [`ChatEvent::ToolCallDelta`]; `false` for any
    /// other event.
    pub fn take(&mut self, ev: &ChatEvent) -> bool {
        match ev {
            ChatEvent::ToolCallStart { index, id, name } => {
                let c = self.at(*index);
                c.0.clone_from(id);
                c.1.clone_from(name);
                true
            }
            ChatEvent::ToolCallDelta { index, arguments } => {
                self.at(*index).2.push_str(arguments);
                true
            }
            _ => false,
        }
    }

    /// Whether any call began.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|(_, name, _)| name.is_empty())
    }

    /// The calls, in order: (id, name, arguments' JSON text).
    pub fn into_parts(self) -> impl Iterator<Item = (String, String, String)> {
        self.0.into_iter().filter(|(_, name, _)| !name.is_empty())
    }
}

/// Reads a whole stream into a [`ChatResponse`]: text joined, tool calls assembled from their
/// deltas with their arguments parsed.
pub async fn collect(
    provider: &str,
    mut stream: ChatStream,
) -> Result<ChatResponse, ProviderError> {
    let mut text = String::new();
    let mut calls = CallParts::default();
    while let Some(ev) = stream.next().await {
        let ev = ev?;
        if calls.take(&ev) {
            continue;
        }
        match ev {
            ChatEvent::Text { delta } => text.push_str(&delta),
            ChatEvent::ToolCallStart { .. } | ChatEvent::ToolCallDelta { .. } => {}
            ChatEvent::Finished { stop_reason, usage } => {
                let tool_calls = calls
                    .into_parts()
                    .map(|(id, name, args)| {
                        let arguments = if args.trim().is_empty() {
                            serde_json::json!({})
                        } else {
                            serde_json::from_str(&args).map_err(|e| {
                                ProviderError::new(
                                    provider,
                                    ErrorKind::Protocol,
                                    format!("the arguments of tool call `{name}` are not JSON ({e}): {args}"),
                                )
                            })?
                        };
                        Ok(ToolCall { id, name, arguments })
                    })
                    .collect::<Result<_, ProviderError>>()?;
                return Ok(ChatResponse {
                    text,
                    tool_calls,
                    stop_reason,
                    usage: usage.unwrap_or_default(),
                });
            }
        }
    }
    Err(ProviderError::new(
        provider,
        ErrorKind::Protocol,
        "the stream ended before the answer was complete",
    ))
}

/// The HTTP client providers share: rustls, no proxy from the environment unless asked, a connect
/// timeout (the router bounds whole requests).
pub fn http_client() -> Result<reqwest::Client, ProviderError> {
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .user_agent(concat!("lotus/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ProviderError::new("http", ErrorKind::NotConfigured, e.to_string()))
}
