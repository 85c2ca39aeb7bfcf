//! `lotus doctor`: what runs, what is configured, what is missing, with hints.

use std::time::Duration;

use anyhow::Result;
use lotus_bus::{DurableLog, SqliteLog};
use lotus_nucleus::{ModuleInfo, ModuleState, discover};
use lotus_server::Health;
use serde::Serialize;
use serde_json::Value;

use crate::client::Client;
use crate::config::Config;
use crate::exit::{CliError, ExitCode};
use crate::home::Home;

#[derive(Debug, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    Info,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
struct Check {
    check: String,
    status: Status,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<String>,
}

struct Report(Vec<Check>);

impl Report {
    fn add(&mut self, check: &str, status: Status, detail: impl Into<String>, hint: Option<&str>) {
        self.0.push(Check {
            check: check.into(),
            status,
            detail: detail.into(),
            hint: hint.map(str::to_owned),
        });
    }
}

fn lotus_wasm_version() -> String {
    #[cfg(feature = "wasm")]
    {
        lotus_wasm::API_VERSIONS.join(", ")
    }
    #[cfg(not(feature = "wasm"))]
    {
        "-".into()
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Lag of a consumer group above which `doctor` warns.
const LAG_WARN: i64 = 1000;

/// The running nucleus's bus: backend, link, nodes and the lag of each consumer group.
fn bus_line(r: &mut Report, b: &Value) {
    if b["backend"] != "redis" {
        r.add("bus", Status::Ok, "in-process (memory)", None);
        return;
    }
    let nodes: Vec<String> = b["nodes"]
        .as_array()
        .map(|ns| {
            ns.iter()
                .map(|n| {
                    format!(
                        "{} ({} ms ago)",
                        n["node"].as_str().unwrap_or("?"),
                        n["age_ms"]
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let up = b["link"] == "up";
    r.add(
        "bus",
        if up { Status::Ok } else { Status::Fail },
        format!(
            "redis at {}, node `{}`, link {}; nodes: {}; backlog {}, in flight {}, reconnects {}",
            b["url"].as_str().unwrap_or("?"),
            b["node"].as_str().unwrap_or("?"),
            b["link"].as_str().unwrap_or("?"),
            nodes.join(", "),
            b["backlog"],
            b["in_flight"],
            b["reconnects"],
        ),
        (!up).then_some("Redis is unreachable: local events still flow; durable events wait in memory until it is back"),
    );
    for g in b["groups"].as_array().into_iter().flatten() {
        let lag = g["lag"].as_i64().unwrap_or(0);
        let pending = g["pending"].as_i64().unwrap_or(0);
        r.add(
            "bus group",
            if lag > LAG_WARN {
                Status::Warn
            } else {
                Status::Ok
            },
            format!(
                "`{}` on `{}`: lag {lag}, pending {pending}, stream length {}",
                g["group"].as_str().unwrap_or("?"),
                g["stream"].as_str().unwrap_or("?"),
                g["length"],
            ),
            (lag > LAG_WARN).then_some("the module is behind: is it running on any node?"),
        );
    }
}

pub async fn run(home: &Home, json: bool) -> Result<()> {
    let mut r = Report(Vec::new());
    let root = home.root();
    if root.is_dir() {
        r.add("home", Status::Ok, root.display().to_string(), None);
    } else {
        r.add(
            "home",
            Status::Info,
            format!("{} does not exist yet", root.display()),
            Some("`lotus up` creates it"),
        );
    }

    let config = match Config::load(root) {
        Ok(c) => {
            let file = home.config_file();
            r.add(
                "config",
                Status::Ok,
                if file.exists() {
                    format!("{} is valid", file.display())
                } else {
                    "no lotus.toml: built-in defaults".into()
                },
                None,
            );
            Some(c)
        }
        Err(e) => {
            r.add(
                "config",
                Status::Fail,
                e,
                Some("fix the key it names; `lotus config show --defaults` lists every key"),
            );
            None
        }
    };

    let token = home.token_file();
    if token.exists() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&token)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0);
            if mode == 0o600 {
                r.add(
                    "token",
                    Status::Ok,
                    format!("{} (0600)", token.display()),
                    None,
                );
            } else {
                r.add(
                    "token",
                    Status::Warn,
                    format!("{} has mode {mode:o}", token.display()),
                    Some("chmod 600 it (or restart `lotus up`, which fixes it)"),
                );
            }
        }
        #[cfg(not(unix))]
        r.add("token", Status::Ok, token.display().to_string(), None);
    } else {
        r.add(
            "token",
            Status::Info,
            "no API token yet",
            Some("`lotus up` creates one"),
        );
    }

    // The bus (and with it the durable streams) on Redis.
    let redis_bus = config
        .as_ref()
        .filter(|c| c.bus.backend == crate::config::BusBackend::Redis);
    let streams = home.streams_db();
    if let Some(c) = redis_bus {
        // On the bus's Redis, shared by every node.
        let counts = async {
            super::durable_log(home, c)
                .await?
                .counts()
                .await
                .map_err(anyhow::Error::from)
        };
        match tokio::time::timeout(Duration::from_secs(3), counts).await {
            Ok(Ok(counts)) => {
                let text = counts
                    .iter()
                    .map(|c| format!("{} {}", c.stream, c.events))
                    .collect::<Vec<_>>()
                    .join(", ");
                r.add("streams", Status::Ok, format!("on Redis: {text}"), None);
            }
            Ok(Err(e)) => r.add("streams", Status::Fail, format!("{e:#}"), None),
            Err(_) => r.add(
                "streams",
                Status::Fail,
                "Redis did not answer within 3 s",
                None,
            ),
        }
    } else if streams.exists() {
        match SqliteLog::open(&streams) {
            Ok(log) => match log.counts().await {
                Ok(counts) => {
                    let text = counts
                        .iter()
                        .map(|c| format!("{} {}", c.stream, c.events))
                        .collect::<Vec<_>>()
                        .join(", ");
                    r.add("streams", Status::Ok, text, None);
                }
                Err(e) => r.add(
                    "streams",
                    Status::Fail,
                    e.to_string(),
                    Some("the database may be damaged; keep a copy before changing anything"),
                ),
            },
            Err(e) => r.add("streams", Status::Fail, e.to_string(), None),
        }
    } else {
        r.add(
            "streams",
            Status::Info,
            "no durable streams yet",
            Some("they appear once `lotus up` has run"),
        );
    }

    let found = discover(&home.modules());
    r.add(
        "module folders",
        if found.broken.is_empty() {
            Status::Ok
        } else {
            Status::Fail
        },
        format!(
            "{} valid, {} invalid in {}",
            found.modules.len(),
            found.broken.len(),
            home.modules().display()
        ),
        None,
    );
    for (path, e) in &found.broken {
        r.add(
            "manifest",
            Status::Fail,
            e.to_string(),
            Some(&format!(
                "check it with `lotus module validate {}`",
                path.display()
            )),
        );
    }
    let builtins: Vec<String> = lotus::builtin::manifests()
        .into_iter()
        .map(|m| m.name.to_string())
        .collect();
    r.add("built-in modules", Status::Ok, builtins.join(", "), None);
    for m in &found.modules {
        for prog in &m.manifest.dependencies.system {
            if !on_path(prog) {
                r.add(
                    "system dependency",
                    Status::Warn,
                    format!("module `{}` needs `{prog}`, not found on PATH", m.name()),
                    Some("install it with your package manager"),
                );
            }
        }
    }
    let runtimes = if cfg!(feature = "wasm") {
        format!(
            "native, wasm (lotus:module@{}); mcp and process modules are not in this build yet",
            lotus_wasm_version()
        )
    } else {
        "native (this build has no wasm support); mcp and process modules are not in this build yet"
            .into()
    };
    r.add("runtimes", Status::Info, runtimes, None);

    if let Some(config) = &config {
        match super::provider::router(home, config).await {
            Ok(setup) => {
                let configured: Vec<String> = setup
                    .status
                    .iter()
                    .filter(|s| s.configured)
                    .map(|s| format!("{} ({})", s.name, s.source))
                    .collect();
                let chain = setup.router.config().chain.join(" → ");
                let only_unpulled_local = configured.is_empty();
                r.add(
                    "providers",
                    if only_unpulled_local {
                        Status::Warn
                    } else {
                        Status::Ok
                    },
                    if only_unpulled_local {
                        format!("none ready; default chain: {chain}")
                    } else {
                        format!("{}; default chain: {chain}", configured.join(", "))
                    },
                    only_unpulled_local.then_some(
                        "set OPENAI_API_KEY (or ANTHROPIC_/GEMINI_/OPENROUTER_API_KEY), point OLLAMA_HOST at Ollama, or `lotus model pull smollm2`",
                    ),
                );
            }
            Err(e) => r.add(
                "providers",
                Status::Fail,
                format!("{e:#}"),
                Some("fix [providers] in lotus.toml (`lotus config show`)"),
            ),
        }
    }

    if let Some(config) = &config {
        match Client::new(home, config) {
            Ok(client) => match client.get::<Health>("/api/v1/health", &[]).await {
                Ok(h) => {
                    r.add(
                        "nucleus",
                        if h.failed == 0 {
                            Status::Ok
                        } else {
                            Status::Warn
                        },
                        format!(
                            "running (pid {}, up {} s): {} module(s) running, {} failed",
                            h.pid,
                            h.uptime_ms / 1000,
                            h.running,
                            h.failed
                        ),
                        None,
                    );
                    if let Ok(bus) = client.get::<Value>("/api/v1/bus", &[]).await {
                        bus_line(&mut r, &bus["backend"]);
                    }
                    if let Ok(mods) = client.get::<Vec<ModuleInfo>>("/api/v1/modules", &[]).await {
                        for m in mods.iter().filter(|m| m.state == ModuleState::Failed) {
                            r.add(
                                "module",
                                Status::Fail,
                                format!(
                                    "{} failed: {}",
                                    m.name,
                                    m.last_error.as_deref().unwrap_or("?")
                                ),
                                Some(&format!(
                                    "`lotus module info {}`; fix and restart `lotus up`",
                                    m.name
                                )),
                            );
                        }
                    }
                }
                Err(e) => r.add("nucleus", Status::Info, e.to_string(), None),
            },
            Err(e) => r.add("nucleus", Status::Info, e.to_string(), None),
        }
    }

    if let Some(c) = redis_bus {
        // The bus is configured on Redis: it must answer.
        match lotus_bus_redis::ping(&c.bus.url, Duration::from_secs(2)).await {
            Ok(()) => r.add(
                "redis",
                Status::Ok,
                format!(
                    "the bus's Redis answers at {} (node `{}`)",
                    lotus_bus_redis::redact(&c.bus.url),
                    c.bus.node_id()
                ),
                None,
            ),
            Err(e) => r.add("redis", Status::Fail, e.to_string(), None),
        }
    } else {
        let redis = tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect("127.0.0.1:6379"),
        )
        .await;
        match redis {
            Ok(Ok(_)) => r.add("redis", Status::Info, "reachable on 127.0.0.1:6379 (optional: `[bus] backend = \"redis\"` shares the bus with other nuclei)", None),
            _ => r.add("redis", Status::Info, "not reachable on 127.0.0.1:6379 (optional; LOTUS needs no Redis on one machine)", None),
        }
    }

    let failed = r.0.iter().any(|c| c.status == Status::Fail);
    if json {
        println!("{}", serde_json::to_string_pretty(&r.0)?);
    } else {
        for c in &r.0 {
            let mark = match c.status {
                Status::Ok => "✓",
                Status::Info => "·",
                Status::Warn => "!",
                Status::Fail => "✗",
            };
            println!("{mark} {:<18} {}", c.check, c.detail);
            if let Some(h) = &c.hint {
                println!("  {:<18} hint: {h}", "");
            }
        }
    }
    if failed {
        return Err(
            CliError::new(ExitCode::Failure, "doctor found problems (marked ✗ above)").into(),
        );
    }
    Ok(())
}
