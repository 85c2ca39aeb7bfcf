//! `[providers]` in `lotus.toml`, and building a [`Router`] from it and the environment: keys
//! from `OPENAI_API_KEY`, `ANTHROPIC_API_KEY`, `GEMINI_API_KEY` (or `GOOGLE_API_KEY`),
//! `OPENROUTER_API_KEY`; base URLs from the configuration or `OPENAI_BASE_URL` /
//! `ANTHROPIC_BASE_URL`; Ollama at `OLLAMA_HOST`. Keys missing from the environment are taken
//! from the encrypted key store ([`crate::keystore`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::anthropic::Anthropic;
use crate::catalog::Catalog;
use crate::gemini::Gemini;
use crate::ledger::Ledger;
use crate::ollama::{self, Ollama};
use crate::openai::OpenAi;
use crate::router::{Router, RouterConfig};
use crate::{ErrorKind, Provider, ProviderError, Secret};

/// `[providers]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvidersConfig {
    /// The fallback chain (model names or aliases, in order). Empty: chosen from what is
    /// available — providers with keys, then Ollama.
    pub default: Vec<String>,
    /// Extra aliases, e.g. `fast = "ollama:qwen2.5"`.
    pub aliases: BTreeMap<String, String>,
    /// Longest wait for an answer to start, and between streamed pieces.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Retries of one provider on a retryable error.
    pub retries: u32,
    /// How long a provider that failed repeatedly is skipped.
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
    /// Spending limits.
    pub budget: BudgetConfig,
    /// OpenAI (or any OpenAI-compatible server).
    pub openai: EndpointConfig,
    /// Anthropic.
    pub anthropic: EndpointConfig,
    /// Google Gemini.
    pub gemini: EndpointConfig,
    /// OpenRouter.
    pub openrouter: EndpointConfig,
    /// Ollama.
    pub ollama: EndpointConfig,
    /// The local CPU models.
    pub local: LocalConfig,
}

/// `[providers.local]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalConfig {
    /// Whether the local model ends the automatic chain.
    pub enabled: bool,
    /// Whether `lotus provider chat` pulls the local model on first use when nothing else is
    /// configured.
    pub auto_pull: bool,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            auto_pull: true,
        }
    }
}

/// `[providers.budget]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    /// USD per UTC day; calls stop once spent.
    pub daily_usd: Option<f64>,
    /// USD per UTC month.
    pub monthly_usd: Option<f64>,
}

/// `[providers.NAME]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EndpointConfig {
    /// The API's base URL (its default, or the `*_BASE_URL` variable, when unset).
    pub base_url: Option<String>,
    /// The model used for this provider in the automatic chain.
    pub model: Option<String>,
}

impl Default for ProvidersConfig {
    fn default() -> Self {
        let r = RouterConfig::default();
        Self {
            default: Vec::new(),
            aliases: BTreeMap::new(),
            timeout: r.timeout,
            retries: r.retries,
            cooldown: r.cooldown,
            budget: BudgetConfig::default(),
            openai: EndpointConfig::default(),
            anthropic: EndpointConfig::default(),
            gemini: EndpointConfig::default(),
            openrouter: EndpointConfig::default(),
            ollama: EndpointConfig::default(),
            local: LocalConfig::default(),
        }
    }
}

/// The providers with endpoint settings (`[providers.NAME]` with `base_url` and `model`).
pub const ENDPOINTS: [&str; 5] = ["openai", "anthropic", "gemini", "openrouter", "ollama"];

impl ProvidersConfig {
    /// The endpoint settings of provider `name` (one of [`ENDPOINTS`]).
    pub fn endpoint(&self, name: &str) -> Option<&EndpointConfig> {
        Some(match name {
            "openai" => &self.openai,
            "anthropic" => &self.anthropic,
            "gemini" => &self.gemini,
            "openrouter" => &self.openrouter,
            "ollama" => &self.ollama,
            _ => return None,
        })
    }

    /// The endpoint settings of provider `name`, to change.
    pub fn endpoint_mut(&mut self, name: &str) -> Option<&mut EndpointConfig> {
        Some(match name {
            "openai" => &mut self.openai,
            "anthropic" => &mut self.anthropic,
            "gemini" => &mut self.gemini,
            "openrouter" => &mut self.openrouter,
            "ollama" => &mut self.ollama,
            _ => return None,
        })
    }
}

/// What `lotus provider list` shows of one provider.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProviderStatus {
    /// `openai`, …
    pub name: String,
    /// Whether it is set up (a key, or a server address).
    pub configured: bool,
    /// Where it is reached.
    pub base_url: String,
    /// Where the setup came from, or what is missing.
    pub source: String,
    /// The model it contributes to the automatic chain.
    pub model: Option<String>,
}

/// A provider that is configured by an API key in the environment.
struct Keyed {
    name: &'static str,
    /// Variables that may hold the key, in order.
    key_vars: &'static [&'static str],
    /// The variable that may hold the base URL (as the official SDKs read it).
    base_var: Option<&'static str>,
    base_default: &'static str,
    model_default: &'static str,
    config: fn(&ProvidersConfig) -> &EndpointConfig,
    make: fn(&str, Secret, reqwest::Client) -> Arc<dyn Provider>,
}

const KEYED: [Keyed; 4] = [
    Keyed {
        name: "openai",
        key_vars: &["OPENAI_API_KEY"],
        base_var: Some("OPENAI_BASE_URL"),
        base_default: "https://api.openai.com/v1",
        model_default: "gpt-4o-mini",
        config: |c| &c.openai,
        make: |base, key, http| Arc::new(OpenAi::new("openai", base, Some(key), http)),
    },
    Keyed {
        name: "anthropic",
        key_vars: &["ANTHROPIC_API_KEY"],
        base_var: Some("ANTHROPIC_BASE_URL"),
        base_default: "https://api.anthropic.com/v1",
        model_default: "claude-sonnet-4",
        config: |c| &c.anthropic,
        make: |base, key, http| Arc::new(Anthropic::new(base, Some(key), http)),
    },
    Keyed {
        name: "gemini",
        key_vars: &["GEMINI_API_KEY", "GOOGLE_API_KEY"],
        base_var: None,
        base_default: "https://generativelanguage.googleapis.com/v1beta",
        model_default: "gemini-2.0-flash",
        config: |c| &c.gemini,
        make: |base, key, http| Arc::new(Gemini::new(base, Some(key), http)),
    },
    Keyed {
        name: "openrouter",
        key_vars: &["OPENROUTER_API_KEY"],
        base_var: None,
        base_default: "https://openrouter.ai/api/v1",
        model_default: "openai/gpt-4o-mini",
        config: |c| &c.openrouter,
        make: |base, key, http| {
            Arc::new(
                OpenAi::new("openrouter", base, Some(key), http)
                    .with_header("X-Title", "LOTUS")
                    .with_header("HTTP-Referer", "https://lotus.local"),
            )
        },
    },
];

/// A key LOTUS keeps (rather than the environment), and where it was kept.
#[derive(Clone, Debug)]
pub struct StoredKey {
    /// The key.
    pub key: Secret,
    /// `the encrypted store` (`keys.enc`), `provider_configs` (L4).
    pub from: &'static str,
}

/// The router and what was found.
pub struct Setup {
    /// The router.
    pub router: Arc<Router>,
    /// Every provider, configured or not.
    pub status: Vec<ProviderStatus>,
}

/// A provider supplied by the caller (the local models live in another crate).
pub struct Extra {
    /// The provider.
    pub provider: Arc<dyn Provider>,
    /// What `lotus provider list` shows of it.
    pub status: ProviderStatus,
    /// The model it adds at the end of the automatic chain, if any.
    pub chain: Option<String>,
}

/// Builds the router from `config`, the environment `env` (a lookup, so tests can pass their
/// own), the keys LOTUS keeps (`stored`, by provider name; the environment wins), the
/// catalog override file, the ledger, and providers supplied by the caller (added after the
/// others, last in the automatic chain).
pub async fn build(
    config: &ProvidersConfig,
    env: &dyn Fn(&str) -> Option<String>,
    stored: &BTreeMap<String, StoredKey>,
    catalog_file: Option<&Path>,
    ledger: Option<Arc<Ledger>>,
    extra: Vec<Extra>,
) -> Result<Setup, String> {
    let mut catalog = Catalog::builtin();
    if let Some(file) = catalog_file.filter(|f| f.exists()) {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        catalog.merge(&text, &file.display().to_string())?;
    }
    for (alias, target) in &config.aliases {
        catalog
            .alias(alias, target)
            .map_err(|e| format!("providers.aliases.{alias}: {e}"))?;
    }
    let http = crate::http_client().map_err(|e| e.to_string())?;
    let mut providers: Vec<Arc<dyn Provider>> = Vec::new();
    let mut status = Vec::new();
    let mut chain = Vec::new();
    for p in &KEYED {
        let endpoint = (p.config)(config);
        let base_url = endpoint
            .base_url
            .clone()
            .or_else(|| p.base_var.and_then(env))
            .unwrap_or_else(|| p.base_default.to_owned());
        let found = p
            .key_vars
            .iter()
            .find_map(|v| {
                env(v)
                    .filter(|k| !k.trim().is_empty())
                    .map(|k| (format!("key from ${v}"), Secret::new(k)))
            })
            .or_else(|| {
                stored
                    .get(p.name)
                    .map(|k| (format!("key from {}", k.from), k.key.clone()))
            });
        let (source, model) = match found {
            Some((source, key)) => {
                let model = endpoint
                    .model
                    .clone()
                    .unwrap_or_else(|| p.model_default.to_owned());
                providers.push((p.make)(&base_url, key, http.clone()));
                chain.push(format!("{}:{model}", p.name));
                (source, Some(model))
            }
            None => ("no key".to_owned(), None),
        };
        status.push(ProviderStatus {
            name: p.name.into(),
            configured: model.is_some(),
            base_url,
            source,
            model,
        });
    }

    // Ollama: configured in lotus.toml, or at $OLLAMA_HOST.
    let ollama_host = env("OLLAMA_HOST");
    let ollama_source = if config.ollama.base_url.is_some() {
        Some("providers.ollama.base_url".to_owned())
    } else {
        ollama_host.as_ref().map(|_| "$OLLAMA_HOST".to_owned())
    };
    let ollama_url = config
        .ollama
        .base_url
        .clone()
        .unwrap_or_else(|| ollama::base_url(ollama_host.as_deref()));
    let mut ollama_status = ProviderStatus {
        name: "ollama".into(),
        configured: ollama_source.is_some(),
        base_url: ollama_url.clone(),
        source: ollama_source
            .clone()
            .unwrap_or_else(|| "OLLAMA_HOST not set".into()),
        model: None,
    };
    if ollama_source.is_some() {
        let client = Arc::new(Ollama::new(&ollama_url, http.clone()));
        let model = match &config.ollama.model {
            Some(m) => Some(m.clone()),
            None => first_ollama_model(&http, &ollama_url).await,
        };
        if let Some(m) = &model {
            chain.push(format!("ollama:{m}"));
        }
        ollama_status.model = model;
        providers.push(client);
    }
    status.push(ollama_status);
    for e in extra {
        if let Some(m) = e.chain {
            chain.push(m);
        }
        status.push(e.status);
        providers.push(e.provider);
    }

    let router_config = RouterConfig {
        chain: if config.default.is_empty() {
            chain
        } else {
            config.default.clone()
        },
        retries: config.retries,
        timeout: config.timeout,
        cooldown: config.cooldown,
        daily_usd: config.budget.daily_usd,
        monthly_usd: config.budget.monthly_usd,
        ..RouterConfig::default()
    };
    let router = providers.into_iter().fold(
        Router::new(catalog, router_config, ledger),
        Router::with_provider,
    );
    Ok(Setup {
        router: Arc::new(router),
        status,
    })
}

/// The first model an Ollama server has, if it answers within a second.
async fn first_ollama_model(http: &reqwest::Client, base: &str) -> Option<String> {
    let resp = http
        .get(format!("{base}/api/tags"))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .ok()?;
    let v: serde_json::Value = resp.json().await.ok()?;
    v.get("models")?
        .as_array()?
        .first()?
        .get("name")?
        .as_str()
        .map(str::to_owned)
}

/// The names of the providers configured by an API key, which the key store may hold.
pub fn keyed_names() -> impl Iterator<Item = &'static str> {
    KEYED.iter().map(|p| p.name)
}

/// The environment variables that hold `provider`'s key, in the order they are read.
pub fn key_vars(provider: &str) -> &'static [&'static str] {
    KEYED
        .iter()
        .find(|p| p.name == provider)
        .map_or(&[], |p| p.key_vars)
}

/// One provider with whether it answered, as `lotus provider list --json` and
/// `GET /api/v1/providers` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProviderView {
    /// What was found.
    #[serde(flatten)]
    pub status: ProviderStatus,
    /// Whether it answered (absent when not checked).
    pub reachable: Option<bool>,
    /// Why it did not.
    pub error: Option<String>,
    /// How long the check took.
    pub latency_ms: Option<f64>,
}

/// Every provider and the default chain.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProvidersReport {
    /// Every provider, configured or not.
    pub providers: Vec<ProviderView>,
    /// The automatic fallback chain.
    pub default_chain: Vec<String>,
}

/// What a test call of one provider did.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProviderTest {
    /// The model that answered (`provider:model`).
    pub model: String,
    /// How long its server took to answer the reachability check, when it has one.
    pub reach_ms: Option<f64>,
    /// How long the answer took.
    pub latency_ms: f64,
    /// What it said (asked to say `OK`).
    pub text: String,
    /// Tokens used.
    pub usage: crate::Usage,
    /// What the call cost, when the model's price is known.
    pub cost_usd: Option<f64>,
}

impl Setup {
    /// Every provider; with `check`, each configured one is asked whether it answers (at most
    /// `limit` each, all at once).
    pub async fn report(&self, check: Option<Duration>) -> ProvidersReport {
        let mut reach = std::collections::HashMap::new();
        if let Some(limit) = check {
            let checks = self.router.providers().map(|p| {
                let p = p.clone();
                async move {
                    let t0 = std::time::Instant::now();
                    let verdict = match tokio::time::timeout(limit, p.check()).await {
                        Ok(Ok(())) => Ok(t0.elapsed()),
                        Ok(Err(e)) => Err(e.message),
                        Err(_) => Err(format!("no answer within {} s", limit.as_secs_f64())),
                    };
                    (p.name().to_owned(), verdict)
                }
            });
            reach.extend(futures_util::future::join_all(checks).await);
        }
        let providers = self
            .status
            .iter()
            .map(|s| {
                let r = reach.get(&s.name);
                ProviderView {
                    status: s.clone(),
                    reachable: r.map(Result::is_ok),
                    error: r.and_then(|r| r.as_ref().err().cloned()),
                    latency_ms: r
                        .and_then(|r| r.as_ref().ok())
                        .map(|d| d.as_secs_f64() * 1e3),
                }
            })
            .collect();
        ProvidersReport {
            providers,
            default_chain: self.router.config().chain.clone(),
        }
    }

    /// Asks `name` (a provider, which answers with its chain model, or a model name or alias)
    /// to say OK, on behalf of `module` (recorded in the ledger).
    pub async fn test(&self, name: &str, module: &str) -> Result<ProviderTest, ProviderError> {
        let not_configured = |m: String| ProviderError::new(name, ErrorKind::NotConfigured, m);
        let model = match self.status.iter().find(|s| s.name == name) {
            Some(s) if !s.configured => {
                return Err(not_configured(format!(
                    "`{name}` is not configured ({}); see `lotus provider list`",
                    s.source
                )));
            }
            Some(s) => match &s.model {
                Some(m) => format!("{name}:{m}"),
                None => {
                    return Err(not_configured(format!(
                        "`{name}` has no model to test with: set [providers.{name}] model"
                    )));
                }
            },
            None => name.to_owned(),
        };
        let m = self.router.catalog().resolve(&model)?;
        let mut reach_ms = None;
        if let Some(p) = self.router.providers().find(|p| p.name() == m.provider) {
            let t0 = std::time::Instant::now();
            p.check().await?;
            reach_ms = Some(t0.elapsed().as_secs_f64() * 1e3);
        }
        let call = crate::router::ChatCall {
            module: module.to_owned(),
            chain: vec![model],
            request: crate::ChatRequest {
                messages: vec![crate::Message::user("Reply with the single word OK.")],
                max_tokens: Some(16),
                temperature: Some(0.0),
                ..crate::ChatRequest::default()
            },
        };
        let t0 = std::time::Instant::now();
        let (m, r) = self.router.complete(call).await?;
        let cost_usd = self.router.catalog().info(&m).map(|i| i.cost(&r.usage));
        Ok(ProviderTest {
            model: m.to_string(),
            reach_ms,
            latency_ms: t0.elapsed().as_secs_f64() * 1e3,
            text: r.text.trim().to_owned(),
            usage: r.usage,
            cost_usd,
        })
    }
}
