//! The router: names and aliases to providers, fallback chains, retries, cooldowns, timeouts,
//! budgets and the ledger.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use parking_lot::Mutex;

use crate::catalog::{Catalog, ModelRef};
use crate::error::{ErrorKind, ProviderError};
use crate::ledger::{Entry, Ledger};
use crate::types::{ChatEvent, ChatRequest, ChatResponse, Embeddings, Usage};
use crate::{ChatStream, Provider};

/// How the router behaves.
#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// The fallback chain used when a call names none: model names or aliases, in order.
    pub chain: Vec<String>,
    /// Retries of one provider on a retryable error (rate limit, server error, timeout, network).
    pub retries: u32,
    /// First backoff; doubled at each retry up to `backoff_max`, with jitter.
    pub backoff_initial: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
    /// Longest `Retry-After` honoured by waiting; a longer one moves on to the next model.
    pub max_wait: Duration,
    /// Longest wait for a response to start, and between two streamed events.
    pub timeout: Duration,
    /// Consecutive failures after which a provider is skipped for `cooldown`.
    pub cooldown_after: u32,
    /// How long a failing provider is skipped (unless every candidate is cooling down).
    pub cooldown: Duration,
    /// Daily budget in USD (UTC days); calls stop once it is spent.
    pub daily_usd: Option<f64>,
    /// Monthly budget in USD (UTC months).
    pub monthly_usd: Option<f64>,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            chain: Vec::new(),
            retries: 2,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(8),
            max_wait: Duration::from_secs(20),
            timeout: Duration::from_secs(60),
            cooldown_after: 3,
            cooldown: Duration::from_secs(60),
            daily_usd: None,
            monthly_usd: None,
        }
    }
}

/// The name that stands for the configured chain in a list of models.
pub const DEFAULT_CHAIN: &str = "default";

/// A chat call through the router.
#[derive(Clone, Debug, Default)]
pub struct ChatCall {
    /// Who asks (a module's name, `cli`, `api`): recorded in the ledger.
    pub module: String,
    /// Models to try in order (names or aliases); empty for the configured chain.
    pub chain: Vec<String>,
    /// The request; its `model` is set per attempt.
    pub request: ChatRequest,
}

/// An attempt that failed before a model answered.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// `provider:model`.
    pub model: String,
    /// Why it failed.
    pub error: ProviderError,
}

/// A started completion: which model answers, what failed before it, and the stream.
pub struct Routed {
    /// The model that answers.
    pub model: ModelRef,
    /// Attempts that failed first (other models, or retries of this one).
    pub attempts: Vec<Attempt>,
    /// The answer (its end is recorded in the ledger).
    pub stream: ChatStream,
}

#[derive(Default)]
struct Health {
    consecutive: u32,
    cooling_until: Option<Instant>,
}

/// Routes calls to providers.
pub struct Router {
    providers: HashMap<String, Arc<dyn Provider>>,
    catalog: Catalog,
    config: RouterConfig,
    ledger: Option<Arc<Ledger>>,
    health: Mutex<HashMap<String, Health>>,
}

fn jitter(d: Duration) -> Duration {
    // Equal jitter: half fixed, half random.
    let half = d / 2;
    let r = getrandom::u64().unwrap_or(0) % (half.as_micros() as u64 + 1);
    half + Duration::from_micros(r)
}

impl Router {
    /// A router over `catalog` with `config`, writing to `ledger` when given.
    pub fn new(catalog: Catalog, config: RouterConfig, ledger: Option<Arc<Ledger>>) -> Self {
        Self {
            providers: HashMap::new(),
            catalog,
            config,
            ledger,
            health: Mutex::new(HashMap::new()),
        }
    }

    /// Adds (or replaces) a provider, under its name.
    pub fn with_provider(mut self, p: Arc<dyn Provider>) -> Self {
        self.providers.insert(p.name().to_owned(), p);
        self
    }

    /// The configured providers, by name.
    pub fn providers(&self) -> impl Iterator<Item = &Arc<dyn Provider>> {
        self.providers.values()
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The configuration.
    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    /// The ledger, if any.
    pub fn ledger(&self) -> Option<&Arc<Ledger>> {
        self.ledger.as_ref()
    }

    fn cooling(&self, provider: &str) -> bool {
        self.health
            .lock()
            .get(provider)
            .and_then(|h| h.cooling_until)
            .is_some_and(|t| Instant::now() < t)
    }

    fn mark(&self, provider: &str, outcome: Result<(), &ProviderError>) {
        let mut health = self.health.lock();
        let h = health.entry(provider.to_owned()).or_default();
        match outcome {
            Ok(()) => *h = Health::default(),
            Err(e) if matches!(e.kind, ErrorKind::BadRequest | ErrorKind::Budget) => {}
            Err(e) => {
                h.consecutive += 1;
                if h.consecutive >= self.config.cooldown_after {
                    let d = self
                        .config
                        .cooldown
                        .max(e.retry_after().unwrap_or_default());
                    h.cooling_until = Some(Instant::now() + d);
                }
            }
        }
    }

    /// How long to wait before retry number `retry + 1` after `e`, or `None` when it is not
    /// worth retrying: not retryable, retries used up, or a `Retry-After` beyond `max_wait`
    /// (the next model is the better bet).
    fn retry_pause(&self, e: &ProviderError, retry: u32) -> Option<Duration> {
        let wait = e.retry_after();
        let worth = e.retryable()
            && retry < self.config.retries
            && wait.is_none_or(|w| w <= self.config.max_wait);
        worth.then(|| {
            let backoff = self
                .config
                .backoff_initial
                .saturating_mul(1 << retry.min(16))
                .min(self.config.backoff_max);
            jitter(backoff).max(wait.unwrap_or_default())
        })
    }

    /// Stops the call if a budget is spent.
    fn check_budget(&self) -> Result<(), ProviderError> {
        let Some(ledger) = &self.ledger else {
            return Ok(());
        };
        if self.config.daily_usd.is_none() && self.config.monthly_usd.is_none() {
            return Ok(());
        }
        // A ledger that cannot be read cannot vouch for a budget: stop rather than overspend.
        let (day, month) = ledger.spent().map_err(|e| {
            ProviderError::new(
                "router",
                ErrorKind::Budget,
                format!("{e}; budgets cannot be checked, so no call is made (is another program holding the ledger?)"),
            )
        })?;
        let over = |what: &str, limit: f64, spent: f64, when: &str| {
            ProviderError::new(
                "router",
                ErrorKind::Budget,
                format!(
                    "the {what} budget of ${limit:.2} is spent (${spent:.4} {when}); raise `providers.budget.{what}_usd` in lotus.toml or wait for the next {} (UTC)",
                    if what == "daily" { "day" } else { "month" }
                ),
            )
        };
        if let Some(limit) = self.config.daily_usd
            && day >= limit
        {
            return Err(over("daily", limit, day, "today"));
        }
        if let Some(limit) = self.config.monthly_usd
            && month >= limit
        {
            return Err(over("monthly", limit, month, "this month"));
        }
        Ok(())
    }

    fn record(&self, m: &ModelRef, module: &str, usage: Usage, outcome: &str, t0: Instant) {
        let Some(ledger) = &self.ledger else { return };
        let cost = self.catalog.info(m).map_or(0.0, |i| i.cost(&usage));
        let entry = Entry {
            provider: &m.provider,
            model: &m.model,
            module,
            usage,
            cost_usd: cost,
            outcome,
            latency: t0.elapsed(),
        };
        if let Err(e) = ledger.record(&entry) {
            tracing::warn!(error = %e, "the cost ledger missed a call");
        }
    }

    /// The models a call tries, resolved. Empty `names`, or the name `default`, stand for the
    /// configured chain.
    pub fn chain(&self, names: &[String]) -> Result<Vec<ModelRef>, ProviderError> {
        let names = if names.is_empty() {
            &self.config.chain
        } else {
            names
        };
        let mut out: Vec<ModelRef> = Vec::new();
        // `default` stands for the configured chain, wherever it appears.
        let expanded = names.iter().flat_map(|n| {
            if n == DEFAULT_CHAIN {
                self.config.chain.as_slice()
            } else {
                std::slice::from_ref(n)
            }
        });
        for n in expanded {
            let m = self.catalog.resolve(n)?;
            if !out.contains(&m) {
                out.push(m);
            }
        }
        if out.is_empty() {
            return Err(ProviderError::new(
                "router",
                ErrorKind::NotConfigured,
                "no model to use: set OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY or OPENROUTER_API_KEY, point OLLAMA_HOST at an Ollama server, or name a model with --model",
            ));
        }
        Ok(out)
    }

    /// Starts a streamed completion on the first model of the chain that answers.
    pub async fn chat(self: &Arc<Self>, call: ChatCall) -> Result<Routed, ProviderError> {
        let chain = self.chain(&call.chain)?;
        let all_cooling = chain.iter().all(|m| self.cooling(&m.provider));
        let mut attempts: Vec<Attempt> = Vec::new();
        for m in &chain {
            let fail = |error: ProviderError| Attempt {
                model: m.to_string(),
                error,
            };
            let Some(provider) = self.providers.get(&m.provider).cloned() else {
                attempts.push(fail(ProviderError::new(
                    &m.provider,
                    ErrorKind::NotConfigured,
                    format!(
                        "`{}` is not configured (no key or server found)",
                        m.provider
                    ),
                )));
                continue;
            };
            if !all_cooling && self.cooling(&m.provider) {
                attempts.push(fail(ProviderError::new(
                    &m.provider,
                    ErrorKind::Server { retry_after: None },
                    "skipped: cooling down after repeated failures",
                )));
                continue;
            }
            let mut retry = 0;
            loop {
                self.check_budget()?;
                let t0 = Instant::now();
                let mut req = call.request.clone();
                req.model = self.catalog.api_model(m);
                let started = tokio::time::timeout(self.config.timeout, async {
                    let mut s = provider.chat(req).await?;
                    match s.next().await {
                        Some(Ok(first)) => Ok((s, first)),
                        Some(Err(e)) => Err(e),
                        None => Err(ProviderError::new(
                            &m.provider,
                            ErrorKind::Protocol,
                            "the answer was empty",
                        )),
                    }
                })
                .await
                .unwrap_or_else(|_| {
                    Err(ProviderError::new(
                        &m.provider,
                        ErrorKind::Timeout,
                        format!(
                            "no answer within {} s (providers.timeout)",
                            self.config.timeout.as_secs_f32()
                        ),
                    ))
                });
                match started {
                    Ok((rest, first)) => {
                        self.mark(&m.provider, Ok(()));
                        let stream = self.metered(m.clone(), call.module.clone(), t0, first, rest);
                        return Ok(Routed {
                            model: m.clone(),
                            attempts,
                            stream,
                        });
                    }
                    Err(e) => {
                        self.record(m, &call.module, Usage::default(), e.code(), t0);
                        self.mark(&m.provider, Err(&e));
                        tracing::warn!(model = %m, error = %e, retry, "provider attempt failed");
                        let pause = self.retry_pause(&e, retry);
                        attempts.push(fail(e));
                        let Some(pause) = pause else { break };
                        tokio::time::sleep(pause).await;
                        retry += 1;
                    }
                }
            }
        }
        let summary: Vec<String> = attempts
            .iter()
            .map(|a| format!("{}: {}", a.model, a.error.message))
            .collect();
        let kind = attempts
            .last()
            .map_or(ErrorKind::NotConfigured, |a| a.error.kind.clone());
        Err(ProviderError::new(
            "router",
            kind,
            format!("no model answered — {}", summary.join("; ")),
        ))
    }

    /// Like [`chat`](Self::chat), collected into one response.
    pub async fn complete(
        self: &Arc<Self>,
        call: ChatCall,
    ) -> Result<(ModelRef, ChatResponse), ProviderError> {
        let routed = self.chat(call).await?;
        let provider = routed.model.provider.clone();
        let response = crate::collect(&provider, routed.stream).await?;
        Ok((routed.model, response))
    }

    /// Embeds `inputs` with `model` (a name or alias), with the same retries, budgets and ledger.
    pub async fn embed(
        self: &Arc<Self>,
        module: &str,
        model: &str,
        inputs: Vec<String>,
    ) -> Result<Embeddings, ProviderError> {
        let m = self.catalog.resolve(model)?;
        let provider = self.providers.get(&m.provider).cloned().ok_or_else(|| {
            ProviderError::new(
                &m.provider,
                ErrorKind::NotConfigured,
                format!(
                    "`{}` is not configured (no key or server found)",
                    m.provider
                ),
            )
        })?;
        let api_model = self.catalog.api_model(&m);
        let mut retry = 0;
        loop {
            self.check_budget()?;
            let t0 = Instant::now();
            let out = tokio::time::timeout(
                self.config.timeout,
                provider.embed(&api_model, inputs.clone()),
            )
            .await
            .unwrap_or_else(|_| {
                Err(ProviderError::new(
                    &m.provider,
                    ErrorKind::Timeout,
                    "no answer in time",
                ))
            });
            match out {
                Ok(e) => {
                    let usage = Usage {
                        input_tokens: e.input_tokens,
                        ..Usage::default()
                    };
                    self.record(&m, module, usage, "ok", t0);
                    self.mark(&m.provider, Ok(()));
                    return Ok(e);
                }
                Err(e) => {
                    self.record(&m, module, Usage::default(), e.code(), t0);
                    self.mark(&m.provider, Err(&e));
                    let Some(pause) = self.retry_pause(&e, retry) else {
                        return Err(e);
                    };
                    tokio::time::sleep(pause).await;
                    retry += 1;
                }
            }
        }
    }

    /// Wraps a started stream: yields `first` then the rest, each within the timeout, and records
    /// the attempt in the ledger when it ends (or is dropped).
    fn metered(
        self: &Arc<Self>,
        model: ModelRef,
        module: String,
        t0: Instant,
        first: ChatEvent,
        rest: ChatStream,
    ) -> ChatStream {
        struct Meter {
            router: Arc<Router>,
            model: ModelRef,
            module: String,
            t0: Instant,
            recorded: bool,
        }
        impl Meter {
            fn end(&mut self, usage: Usage, outcome: &str) {
                if !self.recorded {
                    self.recorded = true;
                    self.router
                        .record(&self.model, &self.module, usage, outcome, self.t0);
                }
            }
        }
        impl Drop for Meter {
            fn drop(&mut self) {
                self.end(Usage::default(), "cancelled");
            }
        }
        let meter = Meter {
            router: self.clone(),
            model,
            module,
            t0,
            recorded: false,
        };
        let timeout = self.config.timeout;
        Box::pin(futures_util::stream::unfold(
            (Some(first), rest, meter, false),
            move |(mut first, mut rest, mut meter, done)| async move {
                if done {
                    return None;
                }
                let next = match first.take() {
                    Some(ev) => Some(Ok(ev)),
                    None => match tokio::time::timeout(timeout, rest.next()).await {
                        Ok(n) => n,
                        Err(_) => Some(Err(ProviderError::new(
                            &meter.model.provider,
                            ErrorKind::Timeout,
                            format!("the stream stalled for {} s", timeout.as_secs_f32()),
                        ))),
                    },
                };
                match next {
                    Some(Ok(ev)) => {
                        let finished = if let ChatEvent::Finished { usage, .. } = &ev {
                            meter.end(usage.unwrap_or_default(), "ok");
                            true
                        } else {
                            false
                        };
                        Some((Ok(ev), (None, rest, meter, finished)))
                    }
                    Some(Err(e)) => {
                        meter.end(Usage::default(), e.code());
                        Some((Err(e), (None, rest, meter, true)))
                    }
                    None => None,
                }
            },
        ))
    }
}
