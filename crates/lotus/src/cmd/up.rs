//! `lotus up`: the nucleus in the foreground.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use lotus_bus::LocalBus;
use lotus_bus_redis::RedisBridge;
use lotus_nucleus::{NucleusBuilder, StateStore};

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
    let _log_guard = crate::logging::init_up(&config.log, &home)?;
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
    let builder = NucleusBuilder::new(config.nucleus_settings())
        .bus(bus)
        .router(providers.router)
        .log(log)
        .state(state)
        .host(host)
        .modules_dir(home.modules());
    #[cfg(feature = "wasm")]
    let builder = builder.host(
        lotus_wasm::WasmHost::new(Some(home.wasm_cache()))
            .map_err(|e| anyhow!("cannot start the wasm host: {e}"))?,
    );
    let nucleus = builder.build()?;

    let listen = args.listen.unwrap_or(config.api.listen);
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        anyhow!("cannot listen on {listen}: {e}; pick another address with --listen or `[api] listen` in lotus.toml")
    })?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the control API is reachable from other machines; every endpoint but /api/v1/health requires the token");
    }

    // The API comes up first: clients can watch modules start (health says `starting`).
    let state = lotus_server::ApiState {
        nucleus: nucleus.clone(),
        token: Arc::from(token.as_str()),
        started: t0,
        ready: Arc::new(AtomicBool::new(false)),
    };
    let ready = state.ready.clone();
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
        "lotus {} is up in {} ms: API http://{addr} (token in {}){}; modules: {}. Ctrl-C stops it.",
        env!("CARGO_PKG_VERSION"),
        t0.elapsed().as_millis(),
        home.token_file().display(),
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
