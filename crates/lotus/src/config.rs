//! `lotus.toml`: every key with its default; `LOTUS_SECTION__KEY` environment variables override.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use lotus_bus::StreamName;
use lotus_core::Pattern;
use lotus_nucleus::{NucleusSettings, SupervisorPolicy};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The control API.
    pub api: ApiConfig,
    /// Logging.
    pub log: LogConfig,
    /// Start and stop timing.
    pub nucleus: NucleusConfig,
    /// Crash handling.
    pub supervisor: SupervisorPolicy,
    /// Tool calls.
    pub tools: ToolsConfig,
    /// Which topics each durable stream records.
    pub streams: StreamsConfig,
    /// The event bus: in-process, or shared with other nuclei on Redis.
    pub bus: BusConfig,
    /// LLM providers: fallback chain, aliases, timeouts, budgets, endpoints.
    pub providers: lotus_providers::setup::ProvidersConfig,
    /// Per-module settings: `[modules.NAME]` with `enabled`, `every.JOB` and the module's own keys.
    pub modules: BTreeMap<String, Value>,
}

/// `[api]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address of the API and the dashboard; loopback unless you mean it (another address
    /// needs an API token made beforehand: `lotus token --new`).
    pub listen: SocketAddr,
    /// The largest request body accepted, in bytes.
    pub max_body: usize,
    /// Origins (`scheme://host[:port]`) whose pages may call the API from a browser, besides
    /// the dashboard itself. None by default.
    pub cors_origins: Vec<String>,
    /// How long a chat may wait for a word from the reasoning module.
    #[serde(with = "humantime_serde")]
    pub chat_timeout: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        let s = lotus_server::ApiSettings::default();
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7077)),
            max_body: s.max_body,
            cors_origins: s.cors_origins,
            chat_timeout: s.chat_timeout,
        }
    }
}

impl ApiConfig {
    /// The server's settings, or what is wrong with them.
    pub fn settings(&self) -> Result<lotus_server::ApiSettings, String> {
        if self.max_body < 1024 {
            return Err(format!(
                "[api] max_body = {} is too small: use at least 1024 bytes",
                self.max_body
            ));
        }
        let mut origins = Vec::new();
        for o in &self.cors_origins {
            let parsed = url::Url::parse(o).ok().filter(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.path() == "/"
                    && !o.ends_with('/')
                    && u.query().is_none()
            });
            let Some(u) = parsed else {
                return Err(format!(
                    "[api] cors_origins: `{o}` is not an origin; write `scheme://host[:port]`, e.g. `http://localhost:3000` (no path, no `*`)"
                ));
            };
            // As browsers send it: lowercase host, no default port.
            origins.push(u.origin().ascii_serialization());
        }
        Ok(lotus_server::ApiSettings {
            max_body: self.max_body,
            cors_origins: origins,
            chat_timeout: self.chat_timeout,
        })
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug`, `trace`, or a full filter such as `info,lotus_nucleus=debug`.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
    /// Also write `$LOTUS_HOME/logs/lotus.log` (rotated daily).
    pub file: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
            file: true,
        }
    }
}

/// `[nucleus]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NucleusConfig {
    /// How long start waits for one module's `initialize` before going on.
    #[serde(with = "humantime_serde")]
    pub start_timeout: Duration,
    /// How long stop waits for one module to drain its mailbox and shut down.
    #[serde(with = "humantime_serde")]
    pub stop_timeout: Duration,
}

impl Default for NucleusConfig {
    fn default() -> Self {
        let d = NucleusSettings::default();
        Self {
            start_timeout: d.start_timeout,
            stop_timeout: d.stop_timeout,
        }
    }
}

/// `[tools]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToolsConfig {
    /// Deadline of a tool call from the caller's side.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for ToolsConfig {
    fn default() -> Self {
        Self {
            timeout: NucleusSettings::default().tool_timeout,
        }
    }
}

/// Which bus backend runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusBackend {
    /// In this process only (the default).
    #[default]
    Memory,
    /// Shared with other nuclei through Redis.
    Redis,
}

/// `[bus]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    /// `memory` or `redis`.
    pub backend: BusBackend,
    /// The Redis server (`redis://[user:password@]host:port[/db]`).
    pub url: String,
    /// This nucleus's node id on the shared bus (letters, digits, `_`, `-`); unique and stable.
    /// Empty: the host name.
    pub node: String,
    /// Labels of this node, matched by modules' `placement`.
    pub labels: Vec<String>,
    /// Key prefix on Redis, so several installations can share one server.
    pub namespace: String,
    /// Topics whose events are kept in Redis Streams and handled once per module, even when a
    /// module runs on several nodes or a node is down for a while.
    pub durable: Vec<Pattern>,
    /// Entries kept per durable stream (approximately).
    pub max_len: usize,
    /// Durable entries older than this are trimmed.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// How long a handled event id is remembered, so that a copy or a redelivery is skipped.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for BusConfig {
    fn default() -> Self {
        let d = lotus_bus_redis::RedisBusConfig::new("redis://127.0.0.1:6379", "");
        Self {
            backend: BusBackend::Memory,
            url: d.url,
            node: String::new(),
            labels: Vec::new(),
            namespace: d.namespace,
            // Work that must be done once, even across a restart: a task for ASH, and what
            // is to be remembered.
            durable: ["cognition.task_request", "memory.store"]
                .iter()
                .filter_map(|p| Pattern::new(p).ok())
                .collect(),
            max_len: d.max_len,
            retention: d.retention,
            window: d.window,
        }
    }
}

impl BusConfig {
    /// This node's id: `node`, or the host name made into one token.
    pub fn node_id(&self) -> String {
        if !self.node.is_empty() {
            return self.node.clone();
        }
        lotus_bus_redis::default_node_id()
    }

    /// The Redis backend's settings.
    pub fn redis(&self) -> lotus_bus_redis::RedisBusConfig {
        let mut c = lotus_bus_redis::RedisBusConfig::new(self.url.clone(), self.node_id());
        c.namespace = self.namespace.clone();
        c.labels = self.labels.clone();
        c.durable = self.durable.clone();
        c.max_len = self.max_len;
        c.retention = self.retention;
        c.window = self.window;
        c
    }
}

/// `[streams]`: topic patterns recorded in each durable stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsConfig {
    /// Conversation turns.
    pub conversation_stream: Vec<Pattern>,
    /// Side effects and denials.
    pub action_log: Vec<Pattern>,
    /// Module life cycle.
    pub module_events: Vec<Pattern>,
    /// Memory changes.
    pub memory_updates: Vec<Pattern>,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        let mut routes: BTreeMap<StreamName, Vec<Pattern>> =
            lotus_nucleus::default_stream_routes().into_iter().collect();
        let mut take = |s| routes.remove(&s).unwrap_or_default();
        Self {
            conversation_stream: take(StreamName::ConversationStream),
            action_log: take(StreamName::ActionLog),
            module_events: take(StreamName::ModuleEvents),
            memory_updates: take(StreamName::MemoryUpdates),
        }
    }
}

impl Config {
    /// Defaults, then `lotus.toml` in `home`, then `LOTUS_*` environment variables.
    pub fn load(home: &Path) -> Result<Self, String> {
        let file = home.join("lotus.toml");
        Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file(&file))
            .merge(
                Env::prefixed("LOTUS_")
                    .split("__")
                    // Only `LOTUS_SECTION__KEY`: other LOTUS_* variables (LOTUS_HOME, LOTUS_LOG,
                    // a CI script's own) are not configuration.
                    .filter(|k| k.as_str().contains("__") || k.as_str().contains('.')),
            )
            .extract::<Config>()
            .map_err(|e| {
                let e = e.to_string();
                format!("invalid configuration: {e}\n  (file: {}; environment: LOTUS_SECTION__KEY, e.g. LOTUS_API__LISTEN=127.0.0.1:7078)", file.display())
            })
    }

    /// The settings the nucleus runs with.
    pub fn nucleus_settings(&self) -> NucleusSettings {
        NucleusSettings {
            node: self.bus.node_id(),
            labels: self.bus.labels.clone(),
            supervisor: self.supervisor.clone(),
            tool_timeout: self.tools.timeout,
            start_timeout: self.nucleus.start_timeout,
            stop_timeout: self.nucleus.stop_timeout,
            streams: vec![
                (
                    StreamName::ConversationStream,
                    self.streams.conversation_stream.clone(),
                ),
                (StreamName::ActionLog, self.streams.action_log.clone()),
                (StreamName::ModuleEvents, self.streams.module_events.clone()),
                (
                    StreamName::MemoryUpdates,
                    self.streams.memory_updates.clone(),
                ),
            ],
            modules: self.modules.clone(),
        }
    }

    /// Fills in what depends on the home: the memory module's folder.
    pub fn with_home(mut self, home: &crate::home::Home) -> Self {
        let memory = self
            .modules
            .entry("memory".into())
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        if let Value::Object(m) = memory
            && !m.contains_key("data_dir")
        {
            m.insert(
                "data_dir".into(),
                Value::String(home.memory().display().to_string()),
            );
        }
        self
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}
