//! Logging: stderr for people, `$LOTUS_HOME/logs/lotus.log` for later.

use std::io::IsTerminal;

use anyhow::{Result, anyhow};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::prelude::*;

use crate::config::{LogConfig, LogFormat};
use crate::home::Home;

fn filter(level: &str) -> Result<EnvFilter> {
    // `LOTUS_LOG` (or `RUST_LOG`) wins over `[log] level`.
    let spec = std::env::var("LOTUS_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| level.to_owned());
    EnvFilter::try_new(&spec).map_err(|e| {
        anyhow!("invalid log level `{spec}`: {e}; use error, warn, info, debug or trace (e.g. `info,lotus_nucleus=debug`)")
    })
}

/// Logging for `lotus up`: stderr plus the daily log file. Keep the guard alive.
/// The modules' lines also go to `modules` (for the API's `/modules/{name}/logs`).
pub fn init_up(
    cfg: &LogConfig,
    home: &Home,
    modules: &std::sync::Arc<lotus_server::ModuleLogs>,
) -> Result<Option<WorkerGuard>> {
    let filter = filter(&cfg.level)?;
    let (file, guard) = if cfg.file {
        let (w, g) = tracing_appender::non_blocking(tracing_appender::rolling::daily(
            home.logs(),
            "lotus.log",
        ));
        (Some(w), Some(g))
    } else {
        (None, None)
    };
    // The modules' own lines are kept at info and above whatever the log level says, so the
    // dashboard shows them when stderr and the file are quieter.
    let registry = tracing_subscriber::registry().with(
        modules
            .layer()
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
    );
    match cfg.format {
        LogFormat::Text => {
            let stderr = tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_target(false);
            let file = file.map(|w| {
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(w.with_max_level(tracing::Level::TRACE))
            });
            registry
                .with(stderr.and_then(file).with_filter(filter))
                .try_init()
        }
        LogFormat::Json => {
            let stderr = tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::io::stderr);
            let file = file.map(|w| {
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(w.with_max_level(tracing::Level::TRACE))
            });
            registry
                .with(stderr.and_then(file).with_filter(filter))
                .try_init()
        }
    }
    .map_err(|e| anyhow!("cannot set up logging: {e}"))?;
    // Panics inside modules are caught and reported as crashes; log them once, with location.
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(panic = %info, "panic");
    }));
    Ok(guard)
}

/// Logging for the other commands: warnings and errors on stderr only.
pub fn init_cli() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter("warn").unwrap_or_else(|_| EnvFilter::new("warn")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
