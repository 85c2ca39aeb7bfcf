//! `lotus up`: the nucleus in the foreground.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use lotus_bus::LocalBus;
use lotus_bus_redis::RedisBridge;
use lotus_nucleus::{ModuleState, Nucleus, NucleusBuilder, StateStore};

use crate::exit::ExitCode;

use crate::cli::UpArgs;
use crate::config::Config;
use crate::home::{Home, RunInfo};

async fn terminated() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub async fn run(home: Home, config: Config, args: UpArgs) -> Result<()> {
    let t0 = Instant::now();
    home.ensure()?;
    let module_logs = Arc::new(lotus_server::ModuleLogs::default());
    let _log_guard = crate::logging::init_up(&config.log, &home, &module_logs)?;
    let api_settings = config.api.settings().map_err(crate::exit::bad_input)?;
    let listen = args.listen.unwrap_or(config.api.listen);
    // Reachable from other machines only with a token made on purpose beforehand.
    if !listen.ip().is_loopback() && !home.has_token()? {
        return Err(crate::exit::bad_input(format!(
            "{listen} is reachable from other machines, and this home has no API token yet: make one with `lotus token --new` (or set {} to 32+ random characters), then start again",
            crate::home::TOKEN_VAR
        )));
    }
    let _lock = home.lock()?;
    let token = home.ensure_token()?;

    let state = StateStore::open(&home.state_db()).context("cannot open the module state store")?;
    let host = lotus::builtin::native_host()
        .map_err(|e| anyhow!("a built-in manifest is invalid: {e}"))?;
    // Modules with a `providers` block reach the LLMs through this router.
    let providers = super::provider::router(&home, &config).await?;
    let config = config.with_home(&home);
    let bus = LocalBus::new();
    let bridge = match config.bus.backend {
        crate::config::BusBackend::Memory => None,
        crate::config::BusBackend::Redis => {
            let b = RedisBridge::connect(config.bus.redis(), &bus)
                .await
                .map_err(|e| anyhow!("{e}"))?;
            tracing::info!(node = %b.node_id(), url = %lotus_bus_redis::redact(&config.bus.url), "joined the redis bus");
            Some(b)
        }
    };
    let log = super::durable_log(&home, &config).await?;
    let providers = Arc::new(providers);
    let builder = NucleusBuilder::new(config.nucleus_settings())
        .bus(bus)
        .router(providers.router.clone())
        .log(log)
        .state(state)
        .host(host)
        .host(lotus_mcp::McpHost::new())
        .modules_dir(home.modules());
    #[cfg(feature = "wasm")]
    let builder = builder.host(
        lotus_wasm::WasmHost::new(Some(home.wasm_cache()))
            .map_err(|e| anyhow!("cannot start the wasm host: {e}"))?,
    );
    let nucleus = builder.build()?;

    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        anyhow!("cannot listen on {listen}: {e}; pick another address with --listen or `[api] listen` in lotus.toml")
    })?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the API is reachable from other machines; every endpoint but /api/v1/health requires the token");
    }

    // The API comes up first: clients can watch modules start (health says `starting`).
    let ready = Arc::new(AtomicBool::new(false));
    let admin = Arc::new(HomeAdmin {
        home: home.clone(),
        config: config.clone(),
        nucleus: nucleus.clone(),
    });
    let state = lotus_server::ApiState::new(nucleus.clone(), &token)
        .starting(t0, ready.clone())
        .with_logs(module_logs)
        .with_providers(providers)
        .with_admin(admin)
        .with_settings(api_settings);
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(lotus_server::serve(listener, state, async {
        let _ = api_stopped.await;
    }));
    home.write_run_info(&RunInfo {
        pid: std::process::id(),
        listen: addr,
    })?;

    // Listen for SIGINT/SIGTERM from here on: a signal during start still stops cleanly.
    let stop = terminated();
    tokio::pin!(stop);
    let report = tokio::select! {
        report = nucleus.start() => report,
        () = &mut stop => {
            tracing::info!("stopping before start completed");
            server.abort();
            let result = nucleus.shutdown().await;
            if let Some(b) = &bridge {
                b.close(Duration::from_secs(5)).await;
            }
            home.clear_run_info();
            return result.context("the durable streams could not be flushed");
        }
    };
    ready.store(true, Ordering::Release);
    // Installed modules with `hotload: true` reload when their folder changes.
    let _hotload = super::watch::hotload(nucleus.clone(), home.modules())
        .map_err(|e| tracing::warn!(error = %e, "hot reload of module folders is off"))
        .ok();
    let _dev = match &args.dev {
        Some(path) => Some(super::watch::dev(nucleus.clone(), home.clone(), path.clone()).await?),
        None => None,
    };
    tracing::info!(
        api = %format!("http://{addr}"),
        started = report.started.len(),
        failed = report.failed.len(),
        ms = t0.elapsed().as_millis() as u64,
        "lotus is up"
    );
    for (name, why) in &report.failed {
        tracing::error!(module = %name, "not running: {why}");
    }
    eprintln!(
        "lotus {} is up in {} ms: dashboard and API http://{addr} (`lotus dashboard` prints a sign-in link; token in {}){}; modules: {}. Ctrl-C stops it.",
        env!("CARGO_PKG_VERSION"),
        t0.elapsed().as_millis(),
        if std::env::var_os(crate::home::TOKEN_VAR).is_some() {
            format!("${}", crate::home::TOKEN_VAR)
        } else {
            home.token_file().display().to_string()
        },
        bridge.as_ref().map_or_else(String::new, |b| format!(
            "; node `{}` on the redis bus {}",
            b.node_id(),
            lotus_bus_redis::redact(&config.bus.url)
        )),
        if report.started.is_empty() {
            "none".to_owned()
        } else {
            report.started.join(", ")
        },
    );

    stop.await;
    tracing::info!("stopping");
    let _ = stop_api.send(());
    // Live event streams keep connections open; give requests a moment, then cut them.
    let abort = server.abort_handle();
    if tokio::time::timeout(Duration::from_secs(2), server)
        .await
        .is_err()
    {
        abort.abort();
        tracing::debug!("API connections cut after 2 s");
    }
    let result = nucleus.shutdown().await;
    // What the modules handled is acknowledged; what they did not is left to the other
    // nodes (or to this one's next start).
    if let Some(b) = &bridge {
        b.close(Duration::from_secs(5)).await;
    }
    home.clear_run_info();
    result.context("the durable streams could not be flushed")?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// What the API asks of the home: rolling a module back in its store, then onto the nucleus.
struct HomeAdmin {
    home: Home,
    config: Config,
    nucleus: Nucleus,
}

#[async_trait::async_trait]
impl lotus_server::Admin for HomeAdmin {
    async fn rollback(
        &self,
        name: &str,
        to: Option<&str>,
    ) -> Result<lotus_server::Rollback, lotus_server::ApiError> {
        use axum::http::StatusCode;
        let (version, hash) = super::install::roll_back(&self.home, &self.config, name, to)
            .await
            .map_err(|e| {
                let (status, code) = match e.downcast_ref::<crate::exit::CliError>().map(|c| c.code)
                {
                    Some(ExitCode::NotFound) => (StatusCode::NOT_FOUND, "not_found"),
                    Some(ExitCode::BadInput) => (StatusCode::BAD_REQUEST, "invalid_arguments"),
                    _ => (StatusCode::INTERNAL_SERVER_ERROR, "rollback_failed"),
                };
                lotus_server::ApiError::new(status, code, format!("{e:#}"))
            })?;
        // A running module is swapped live; one that is not is loaded.
        let running = self
            .nucleus
            .module(name)
            .is_some_and(|m| m.state == ModuleState::Running);
        let reload = if running {
            Some(self.nucleus.reload(name).await?)
        } else {
            self.nucleus.load(name).await?;
            None
        };
        Ok(lotus_server::Rollback {
            module: name.to_owned(),
            version,
            hash,
            reload,
        })
    }
}
