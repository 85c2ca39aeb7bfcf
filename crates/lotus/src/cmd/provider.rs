//! `lotus provider list|test|costs|chat`.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use anyhow::Result;
use futures_util::StreamExt;
use lotus_memory::ProviderRecord;
use lotus_providers::Secret;
use lotus_providers::keystore::KeyStore;
use lotus_providers::router::ChatCall;
use lotus_providers::setup::{self, Setup};
use lotus_providers::{ChatEvent, ChatRequest, ErrorKind, Ledger, Message, ProviderError};
use serde_json::json;

use crate::cli::ProviderCmd;
use crate::config::Config;
use crate::exit::{CliError, ExitCode, bad_input};
use crate::home::Home;

/// Builds the router from the configuration, the environment, `$LOTUS_HOME` and the providers'
/// configurations in L4 (`lotus provider set`): `lotus.toml` wins over those for settings, and
/// the environment, then `keys.enc`, over them for keys.
pub async fn router(home: &Home, cfg: &Config) -> Result<Setup> {
    std::fs::create_dir_all(home.data())?;
    let ledger =
        Ledger::open(&home.ledger_db()).map_err(|e| CliError::new(ExitCode::Failure, e))?;
    let env = |name: &str| std::env::var(name).ok();
    let records = stored_configs(home, cfg).await;
    let sealed = records.iter().any(|r| r.sealed_key.is_some());
    let store = super::key::unlock(home, sealed)?;
    let mut providers = cfg.providers.clone();
    let mut stored = BTreeMap::new();
    // (A store made in memory only to open sealed keys holds none.)
    for (name, key) in store.iter().flat_map(KeyStore::secrets) {
        let from = "the encrypted store";
        stored.insert(name, setup::StoredKey { key, from });
    }
    for r in &records {
        if let Some(e) = providers.endpoint_mut(&r.name) {
            let field = |k: &str| {
                r.settings
                    .get(k)
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            };
            e.base_url = e.base_url.take().or_else(|| field("base_url"));
            e.model = e.model.take().or_else(|| field("model"));
        }
        if let (Some(sealed), Some(store)) = (&r.sealed_key, &store)
            && !stored.contains_key(&r.name)
        {
            match store.unseal(&r.name, sealed) {
                Ok(key) => {
                    let from = "provider_configs";
                    stored.insert(r.name.clone(), setup::StoredKey { key, from });
                }
                Err(e) => eprintln!("note: {e}"),
            }
        }
    }
    setup::build(
        &providers,
        &env,
        &stored,
        Some(&home.catalog_file()),
        Some(Arc::new(ledger)),
        local(home, cfg),
    )
    .await
    .map_err(|e| CliError::new(ExitCode::BadInput, e).into())
}

/// The providers' configurations in L4; none, with a note, when L4 cannot be read (the
/// configuration in `lotus.toml` and the environment still work).
async fn stored_configs(home: &Home, cfg: &Config) -> Vec<ProviderRecord> {
    let read = async {
        match super::existing_knowledge(home, cfg).await? {
            Some(k) => anyhow::Ok(k.providers().await?),
            None => Ok(Vec::new()),
        }
    };
    match read.await {
        Ok(records) => records,
        Err(e) => {
            eprintln!("note: the stored provider configurations are not used: {e:#}");
            Vec::new()
        }
    }
}

/// `lotus provider set`.
async fn set(
    home: &Home,
    cfg: &Config,
    name: &str,
    base_url: Option<String>,
    model: Option<String>,
    key: bool,
) -> Result<()> {
    if !setup::ENDPOINTS.contains(&name) {
        return Err(bad_input(format!(
            "`{name}` is not a provider: use one of {}",
            setup::ENDPOINTS.join(", ")
        )));
    }
    if key && name == "ollama" {
        return Err(bad_input("ollama takes no API key: leave out --key"));
    }
    if base_url.is_none() && model.is_none() && !key {
        return Err(bad_input(format!(
            "nothing to store: give --base-url URL, --model MODEL and/or --key (e.g. `lotus provider set {name} --key`)"
        )));
    }
    if let Some(u) = &base_url
        && !(reqwest::Url::parse(u).is_ok()
            && (u.starts_with("http://") || u.starts_with("https://")))
    {
        return Err(bad_input(format!(
            "--base-url {u} is not an http:// or https:// URL"
        )));
    }
    if model.as_deref().is_some_and(|m| m.trim().is_empty()) {
        return Err(bad_input("--model is empty: name a model"));
    }
    let knowledge = super::knowledge(home, cfg).await?;
    let old = knowledge
        .providers()
        .await?
        .into_iter()
        .find(|r| r.name == name);
    let mut settings = old
        .as_ref()
        .map_or_else(|| json!({}), |r| r.settings.clone());
    if let Some(u) = base_url {
        settings["base_url"] = json!(u);
    }
    if let Some(m) = model {
        settings["model"] = json!(m);
    }
    let sealed_key = if key {
        let secret = super::key::read_key(name, &format!("lotus provider set {name} --key"))?;
        let store = super::key::open(home, true)?;
        if !KeyStore::exists(store.path()) {
            // The store seals with the passphrase; it is saved (empty) so the next command
            // opens it with the same one.
            store.save().map_err(super::key::store_error)?;
        }
        Some(
            store
                .seal(name, &Secret::new(&*secret))
                .map_err(super::key::store_error)?,
        )
    } else {
        old.as_ref().and_then(|r| r.sealed_key.clone())
    };
    let record = ProviderRecord {
        name: name.to_owned(),
        settings,
        sealed_key,
        updated_us: lotus_memory::now_us(),
    };
    knowledge.provider_put(&record).await?;
    let mut what: Vec<String> = record
        .settings
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k} = {v}"))
        .collect();
    if record.sealed_key.is_some() {
        what.push("the key (sealed)".into());
    }
    println!(
        "stored {name}'s configuration in provider_configs ({}): {}",
        knowledge.backend(),
        what.join(", ")
    );
    if let Some(e) = cfg.providers.endpoint(name) {
        for (set_here, field) in [
            (e.base_url.is_some(), "base_url"),
            (e.model.is_some(), "model"),
        ] {
            if set_here && record.settings.get(field).is_some() {
                println!("note: [providers.{name}] {field} in lotus.toml takes precedence");
            }
        }
    }
    if key && let Some(var) = super::key::env_override(name) {
        println!("note: ${var} is set and takes precedence over the stored key");
    }
    Ok(())
}

/// `lotus provider unset`.
async fn unset(home: &Home, cfg: &Config, name: &str) -> Result<()> {
    let knowledge = super::knowledge(home, cfg).await?;
    if !knowledge.provider_remove(name).await? {
        return Err(CliError::new(
            ExitCode::NotFound,
            format!("no stored configuration for `{name}` (`lotus provider set` stores one)"),
        )
        .into());
    }
    println!("removed {name}'s stored configuration");
    Ok(())
}

/// The local provider, last in the automatic chain.
#[cfg(feature = "local")]
fn local(home: &Home, cfg: &Config) -> Vec<setup::Extra> {
    if !cfg.providers.local.enabled {
        return Vec::new();
    }
    let models = home.models();
    let ready = lotus_local::ready(&models, lotus_local::CHAT_MODEL);
    vec![setup::Extra {
        provider: Arc::new(lotus_local::LocalProvider::new(&models)),
        status: setup::ProviderStatus {
            name: "local".into(),
            configured: ready,
            base_url: models.display().to_string(),
            source: if ready {
                "installed".into()
            } else {
                "not pulled: lotus model pull smollm2".into()
            },
            model: Some(lotus_local::CHAT_MODEL.into()),
        },
        chain: Some(format!("local:{}", lotus_local::CHAT_MODEL)),
    }]
}

#[cfg(not(feature = "local"))]
fn local(_: &Home, _: &Config) -> Vec<setup::Extra> {
    Vec::new()
}

/// With nothing else configured, the local model is fetched on first use (`auto_pull`).
pub(crate) async fn pull_local_if_alone(
    home: &Home,
    cfg: &Config,
    setup: &Setup,
    chain: &[String],
) -> Result<()> {
    #[cfg(feature = "local")]
    {
        let chain = setup.router.chain(chain).map_err(|e| failure(&e))?;
        let wants_local = chain.iter().any(|m| m.provider == "local");
        let others = chain.iter().any(|m| {
            m.provider != "local"
                && setup
                    .status
                    .iter()
                    .any(|s| s.name == m.provider && s.configured)
        });
        if wants_local
            && !others
            && cfg.providers.local.auto_pull
            && !lotus_local::ready(&home.models(), lotus_local::CHAT_MODEL)
        {
            eprintln!(
                "no provider is configured: fetching the local model once (lotus model pull smollm2)"
            );
            super::model::pull(home, lotus_local::CHAT_MODEL, None).await?;
        }
    }
    #[cfg(not(feature = "local"))]
    let _ = (home, cfg, setup, chain);
    Ok(())
}

fn failure(e: &ProviderError) -> anyhow::Error {
    let code = match e.kind {
        ErrorKind::NotConfigured => ExitCode::BadInput,
        _ => ExitCode::Failure,
    };
    CliError::new(code, e.to_string()).into()
}

/// Runs a `lotus provider` command.
pub async fn run(home: &Home, cfg: &Config, cmd: ProviderCmd) -> Result<()> {
    match cmd {
        ProviderCmd::List { json, offline } => list(home, cfg, json, offline).await,
        ProviderCmd::Test { name } => test(home, cfg, &name).await,
        ProviderCmd::Costs { days, json } => costs(home, days, json),
        ProviderCmd::Set {
            name,
            base_url,
            model,
            key,
        } => set(home, cfg, &name, base_url, model, key).await,
        ProviderCmd::Unset { name } => unset(home, cfg, &name).await,
        ProviderCmd::Chat {
            prompt,
            models,
            system,
            temperature,
            max_tokens,
            json,
        } => {
            let mut messages = Vec::new();
            if let Some(s) = system {
                messages.push(Message::system(s));
            }
            messages.push(Message::user(prompt));
            let request = ChatRequest {
                messages,
                temperature,
                max_tokens,
                ..ChatRequest::default()
            };
            chat(home, cfg, models, request, json).await
        }
    }
}

async fn list(home: &Home, cfg: &Config, json: bool, offline: bool) -> Result<()> {
    let setup = router(home, cfg).await?;
    let report = setup
        .report((!offline).then_some(Duration::from_secs(5)))
        .await;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{:<11} {:<11} {:<10} {:<28} {:<44} BASE URL",
        "PROVIDER", "CONFIGURED", "REACHABLE", "MODEL", "SOURCE"
    );
    for p in &report.providers {
        let s = &p.status;
        let reachable = match (p.reachable, p.latency_ms) {
            (None, _) => "-".to_owned(),
            (Some(true), Some(ms)) => format!("yes {ms:.0}ms"),
            (Some(true), None) => "yes".to_owned(),
            (Some(false), _) => "no".to_owned(),
        };
        println!(
            "{:<11} {:<11} {:<10} {:<28} {:<44} {}",
            s.name,
            if s.configured { "yes" } else { "no" },
            reachable,
            super::clip(s.model.as_deref().unwrap_or("-"), 28),
            super::clip(&s.source, 44),
            s.base_url
        );
        if let Some(e) = &p.error {
            println!("  └ {}", super::clip(e, 110));
        }
    }
    let chain = &report.default_chain;
    if chain.is_empty() {
        println!(
            "\ndefault chain: none — set OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY or OPENROUTER_API_KEY, or point OLLAMA_HOST at an Ollama server"
        );
    } else {
        let shown: Vec<String> = chain
            .iter()
            .map(|n| match setup.router.catalog().resolve(n) {
                Ok(m) if m.to_string() != *n => format!("{n} ({m})"),
                _ => n.clone(),
            })
            .collect();
        println!("\ndefault chain: {}", shown.join(" → "));
    }
    Ok(())
}

async fn test(home: &Home, cfg: &Config, name: &str) -> Result<()> {
    let setup = router(home, cfg).await?;
    let t = setup.test(name, "cli").await.map_err(|e| failure(&e))?;
    if let Some(ms) = t.reach_ms {
        println!(
            "reached {} in {ms:.0} ms",
            t.model.split(':').next().unwrap_or_default()
        );
    }
    println!(
        "{} answered in {:.0} ms: {:?} ({} in, {} out tokens)",
        t.model, t.latency_ms, t.text, t.usage.input_tokens, t.usage.output_tokens
    );
    Ok(())
}

fn costs(home: &Home, days: u32, json: bool) -> Result<()> {
    let ledger =
        Ledger::open(&home.ledger_db()).map_err(|e| CliError::new(ExitCode::Failure, e))?;
    let report = ledger
        .report(days)
        .map_err(|e| CliError::new(ExitCode::Failure, e))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let (rows, since_day) = (&report.rows, &report.since);
    if rows.is_empty() {
        println!("no provider calls since {since_day}");
    } else {
        println!(
            "{:<10} {:<10} {:<32} {:<12} {:>6} {:>6} {:>10} {:>10} {:>11}",
            "DAY", "PROVIDER", "MODEL", "MODULE", "CALLS", "FAILED", "IN TOK", "OUT TOK", "USD"
        );
        for r in rows {
            println!(
                "{:<10} {:<10} {:<32} {:<12} {:>6} {:>6} {:>10} {:>10} {:>11.6}",
                r.day,
                r.provider,
                super::clip(&r.model, 32),
                super::clip(&r.module, 12),
                r.calls,
                r.failures,
                r.input_tokens,
                r.output_tokens,
                r.cost_usd
            );
        }
        let total: f64 = rows.iter().map(|r| r.cost_usd).sum();
        println!("total since {since_day}: ${total:.6}");
    }
    println!(
        "spent today: ${:.6}; this month: ${:.6} (UTC)",
        report.today_usd, report.month_usd
    );
    Ok(())
}

async fn chat(
    home: &Home,
    cfg: &Config,
    models: Vec<String>,
    request: ChatRequest,
    json: bool,
) -> Result<()> {
    let setup = router(home, cfg).await?;
    pull_local_if_alone(home, cfg, &setup, &models).await?;
    let call = ChatCall {
        module: "cli".into(),
        chain: models,
        request,
    };
    let t0 = Instant::now();
    let routed = setup.router.chat(call).await.map_err(|e| failure(&e))?;
    for a in &routed.attempts {
        eprintln!("({} failed: {})", a.model, a.error.message);
    }
    let model = routed.model.clone();
    if json {
        let r = lotus_providers::collect(&model.provider, routed.stream)
            .await
            .map_err(|e| failure(&e))?;
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "model": model.to_string(),
                "text": r.text,
                "stop_reason": r.stop_reason,
                "usage": r.usage,
                "failed_attempts": routed.attempts.iter().map(|a| json!({"model": a.model, "error": a.error.message, "code": a.error.code()})).collect::<Vec<_>>(),
            }))?
        );
        return Ok(());
    }
    let mut stream = routed.stream;
    let mut out = std::io::stdout();
    let mut usage = None;
    while let Some(ev) = stream.next().await {
        match ev.map_err(|e| failure(&e))? {
            ChatEvent::Text { delta } => {
                out.write_all(delta.as_bytes())?;
                out.flush()?;
            }
            ChatEvent::Finished { usage: u, .. } => usage = u,
            ChatEvent::ToolCallStart { .. } | ChatEvent::ToolCallDelta { .. } => {}
        }
    }
    println!();
    let cost = usage
        .as_ref()
        .and_then(|u| setup.router.catalog().info(&model).map(|i| i.cost(u)));
    eprintln!(
        "({model}, {:.1} s{}{})",
        t0.elapsed().as_secs_f64(),
        usage.map_or(String::new(), |u| format!(
            ", {} in / {} out tokens",
            u.input_tokens, u.output_tokens
        )),
        cost.map_or(String::new(), |c| format!(", ${c:.6}"))
    );
    Ok(())
}
