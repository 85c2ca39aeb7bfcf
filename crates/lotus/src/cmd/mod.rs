//! One function per command.

mod approve;
mod ask;
mod bench;
mod bench_bus_redis;
mod bench_reasoning;
mod bench_vectors;
mod chat;
mod dashboard;
mod doctor;
mod events;
mod install;
pub mod key;
mod memory;
mod model;
mod module;
mod provider;
mod scaffold;
mod sdk;
mod target;
mod tool;
mod up;
mod watch;

use anyhow::Context as _;
use anyhow::Result;

use crate::cli::{Cli, Command, ConfigCmd};
use crate::config::Config;
use crate::exit::{CliError, ExitCode};
use crate::home::Home;

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    let home = Home::resolve(cli.home)?;
    let load = || Config::load(home.root()).map_err(|e| CliError::new(ExitCode::BadInput, e));
    if !matches!(cli.command, Command::Up(_)) {
        crate::logging::init_cli();
    }
    match cli.command {
        Command::Ask(args) => ask::run(&home, &load()?, args).await,
        Command::Chat(args) => chat::run(&home, &load()?, args).await,
        Command::Approve(args) => approve::run(&home, &load()?, args).await,
        Command::Up(args) => up::run(home.clone(), load()?, args).await,
        Command::Module(c) => module::run(&home, c).await,
        Command::Tool(c) => tool::run(&home, &load()?, c).await,
        Command::Events(c) => events::run(&home, &load()?, c).await,
        Command::Model(c) => model::run(&home, c).await,
        Command::Key(c) => key::run(&home, c),
        Command::Memory(c) => memory::run(&home, &load()?, c).await,
        Command::Provider(c) => provider::run(&home, &load()?, c).await,
        Command::Doctor(f) => doctor::run(&home, f.json).await,
        Command::Dashboard(a) => dashboard::run(&home, &load()?, &a),
        Command::Token(a) => dashboard::token(&home, &a),
        Command::Bench(c) => bench::run(&home, c).await,
        Command::Config(ConfigCmd::Show { defaults }) => {
            if defaults {
                print!("{}", Config::default().to_toml());
            } else {
                let cfg = load()?;
                let file = home.config_file();
                println!(
                    "# LOTUS_HOME = {}\n# file: {} ({})\n# environment overrides: LOTUS_SECTION__KEY (e.g. LOTUS_API__LISTEN)\n",
                    home.root().display(),
                    file.display(),
                    if file.exists() {
                        "read"
                    } else {
                        "absent: defaults in force"
                    }
                );
                print!("{}", cfg.to_toml());
            }
            Ok(())
        }
    }
}

/// Shortens `s` to `n` characters with an ellipsis.
pub fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(n.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// The durable streams as configured: on the bus's Redis when the bus is there (every node
/// appends to the same streams), else `streams.db` in the home.
pub(crate) async fn durable_log(
    home: &Home,
    cfg: &Config,
) -> Result<std::sync::Arc<dyn lotus_bus::DurableLog>> {
    Ok(match cfg.bus.backend {
        crate::config::BusBackend::Redis => std::sync::Arc::new(
            lotus_bus_redis::RedisLog::connect(
                &cfg.bus.url,
                &cfg.bus.namespace,
                cfg.bus.max_len,
                cfg.bus.retention,
            )
            .await
            .context(
                "the durable streams live on the bus's Redis: start it, fix `[bus] url`, or set `[bus] backend = \"memory\"`",
            )?,
        ),
        crate::config::BusBackend::Memory => std::sync::Arc::new(
            lotus_bus::SqliteLog::open(&home.streams_db())
                .context("cannot open the durable streams")?,
        ),
    })
}

/// L4 (the persistent knowledge tier) as the memory module is configured: `memory.db` in its
/// folder, or its PostgreSQL server. The module registry and the providers' configurations live
/// there.
pub(crate) async fn knowledge(
    home: &Home,
    cfg: &Config,
) -> Result<std::sync::Arc<dyn lotus_memory::Knowledge>> {
    let (dir, backends) = memory_backends(home, cfg)?;
    open_knowledge(&dir, &backends).await
}

/// L4 when it may hold something: not when it is embedded and `memory.db` was never created
/// (a fresh home), so reading it creates nothing.
pub(crate) async fn existing_knowledge(
    home: &Home,
    cfg: &Config,
) -> Result<Option<std::sync::Arc<dyn lotus_memory::Knowledge>>> {
    let (dir, backends) = memory_backends(home, cfg)?;
    if backends.knowledge_server().is_none() && !dir.join("memory.db").exists() {
        return Ok(None);
    }
    Ok(Some(open_knowledge(&dir, &backends).await?))
}

/// The memory module's folder and backends, from `[modules.memory]`.
fn memory_backends(
    home: &Home,
    cfg: &Config,
) -> Result<(std::path::PathBuf, lotus_memory::backends::Backends)> {
    let settings = cfg
        .modules
        .get("memory")
        .unwrap_or(&serde_json::Value::Null);
    let dir = settings
        .get("data_dir")
        .and_then(|d| d.as_str())
        .map_or_else(|| home.memory(), std::path::PathBuf::from);
    let backends = lotus_memory::backends::Backends::from_settings(settings)
        .map_err(|e| CliError::new(ExitCode::BadInput, e.to_string()))?;
    Ok((dir, backends))
}

async fn open_knowledge(
    dir: &std::path::Path,
    backends: &lotus_memory::backends::Backends,
) -> Result<std::sync::Arc<dyn lotus_memory::Knowledge>> {
    lotus_memory::backends::open_knowledge(dir, backends)
        .await
        .map_err(|e| CliError::new(ExitCode::Failure, e.to_string()).into())
}
