//! `lotus module list|info|validate|schema`.

use anyhow::Result;
use lotus_core::{Manifest, Runtime};
use lotus_nucleus::ModuleInfo;

use super::clip;
use crate::cli::ModuleCmd;
use crate::client::Client;
use crate::config::Config;
use crate::exit::bad_input;
use crate::home::Home;

pub async fn run(home: &Home, cmd: ModuleCmd) -> Result<()> {
    match cmd {
        ModuleCmd::List(f) => {
            let client = Client::new(home, &load(home)?)?;
            let mods: Vec<ModuleInfo> = client.get("/api/v1/modules", &[]).await?;
            if f.json {
                println!("{}", serde_json::to_string_pretty(&mods)?);
            } else {
                print_table(&mods);
            }
        }
        ModuleCmd::Info { name, json } => {
            let client = Client::new(home, &load(home)?)?;
            let m: ModuleInfo = client.get(&format!("/api/v1/modules/{name}"), &[]).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&m)?);
            } else {
                print_info(&m);
            }
        }
        ModuleCmd::Reload { name } => {
            let client = Client::new(home, &load(home)?)?;
            let r: lotus_nucleus::ReloadReport = client
                .post(
                    &format!("/api/v1/modules/{name}/reload"),
                    &serde_json::Value::Null,
                )
                .await?;
            println!(
                "reloaded {} {} → {}: mailbox paused {} µs, {} ms in all",
                r.module, r.from_version, r.to_version, r.swap_us, r.total_ms
            );
        }
        ModuleCmd::Enable { name } => switch(home, &name, "enable").await?,
        ModuleCmd::Disable { name } => switch(home, &name, "disable").await?,
        ModuleCmd::Validate { path } => {
            validate(home, &path)?;
        }
        ModuleCmd::New { name, dir } => super::scaffold::new(home, &name, dir.as_deref())?,
        ModuleCmd::Build { path } => super::scaffold::build(home, &path, false)?,
        ModuleCmd::Install { path } => super::install::install(home, &path).await?,
        ModuleCmd::Remove { name } => super::install::remove(home, &name).await?,
        ModuleCmd::History { name, json } => super::install::history(home, &name, json).await?,
        ModuleCmd::Rollback { name, to } => {
            super::install::rollback(home, &name, to.as_deref()).await?
        }
        ModuleCmd::Schema => println!(
            "{}",
            serde_json::to_string_pretty(&Manifest::json_schema())?
        ),
    }
    Ok(())
}

/// `enable` or `disable` a module of the running nucleus.
async fn switch(home: &Home, name: &str, verb: &str) -> Result<()> {
    let client = Client::new(home, &load(home)?)?;
    let m: ModuleInfo = client
        .post(
            &format!("/api/v1/modules/{name}/{verb}"),
            &serde_json::Value::Null,
        )
        .await?;
    match (&m.last_error, m.state) {
        (Some(e), lotus_nucleus::ModuleState::Failed) => {
            return Err(crate::exit::CliError::new(
                crate::exit::ExitCode::Failure,
                format!("{name} is enabled but failed to start: {e}"),
            )
            .into());
        }
        _ => println!("{name} is {} (and stays so across restarts)", m.state),
    }
    Ok(())
}

/// Whether `program` names a file, or one found on `PATH`.
fn on_path(program: &str) -> bool {
    if program.contains('/') {
        return std::path::Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn load(home: &Home) -> Result<Config> {
    Config::load(home.root()).map_err(bad_input)
}

/// Checks a module folder (or manifest) as install would; a component is compiled into the home's
/// cache, so the nucleus that loads it next does not compile it again.
pub(super) fn validate(home: &Home, path: &std::path::Path) -> Result<Manifest> {
    let m = Manifest::load(path).map_err(|e| bad_input(e.to_string()))?;
    let folder = if path.is_dir() {
        path.to_owned()
    } else {
        path.parent().map(|p| p.to_owned()).unwrap_or_default()
    };
    match m.runtime {
        Runtime::Native => {
            let entry = m.entry.clone().unwrap_or_else(|| m.name.to_string());
            let known: Vec<String> = lotus::builtin::manifests()
                .into_iter()
                .map(|b| b.entry.unwrap_or_else(|| b.name.to_string()))
                .collect();
            if !known.contains(&entry) {
                return Err(bad_input(format!(
                    "{}: key `entry`: no native module `{entry}` is compiled into this lotus (known: {})",
                    path.display(),
                    known.join(", ")
                )));
            }
        }
        Runtime::Wasm => {
            let file = folder.join(m.entry.as_deref().unwrap_or_default());
            if !file.exists() {
                eprintln!(
                    "warning: the component {} does not exist yet (build the module first)",
                    file.display()
                );
            } else {
                check_component(home, &file, &m)?;
            }
        }
        Runtime::Mcp => match m.mcp.as_ref().and_then(|s| s.command.as_deref()) {
            Some(program) => {
                if !on_path(program) {
                    eprintln!(
                        "warning: `{program}` is not on PATH here; the server will not start until it is installed"
                    );
                }
            }
            None => eprintln!(
                "note: this lotus runs stdio MCP servers (`mcp.command`); servers over streamable HTTP (`mcp.url`) are not supported yet"
            ),
        },
        Runtime::Process => {
            eprintln!(
                "note: this lotus cannot run `{}` modules yet; the manifest itself is valid",
                m.runtime
            );
        }
    }
    println!(
        "ok: {} — module `{}` {} ({}, {}), {} subscription(s), {} publication(s)",
        path.display(),
        m.name,
        m.version,
        m.runtime,
        serde_json::to_value(m.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        m.subscriptions.len(),
        m.publications.len()
    );
    Ok(m)
}

/// Compiles the component and checks its imports and exports against the API this lotus serves.
#[cfg(feature = "wasm")]
fn check_component(
    home: &Home,
    file: &std::path::Path,
    manifest: &lotus_core::Manifest,
) -> Result<()> {
    let host =
        lotus_wasm::WasmHost::new(Some(home.wasm_cache())).map_err(|e| anyhow::anyhow!("{e}"))?;
    let info = host
        .inspect(file, manifest)
        .map_err(|e| bad_input(e.to_string()))?;
    println!(
        "component: lotus:module@{}{}",
        info.api.as_str(),
        if info.uses_http {
            ", outbound HTTP (permissions.hosts)"
        } else {
            ""
        }
    );
    Ok(())
}

#[cfg(not(feature = "wasm"))]
fn check_component(_: &Home, _: &std::path::Path, _: &lotus_core::Manifest) -> Result<()> {
    eprintln!("note: this lotus was built without wasm support; the component was not checked");
    Ok(())
}

fn print_table(mods: &[ModuleInfo]) {
    // The NODE column appears when several nuclei share the bus.
    let nodes = mods.iter().any(|m| m.node.is_some());
    let mut head = vec!["NAME"];
    if nodes {
        head.push("NODE");
    }
    head.extend([
        "VERSION",
        "RUNTIME",
        "STATE",
        "RESTARTS",
        "QUEUE",
        "HANDLED",
        "LAST ERROR",
    ]);
    let rows: Vec<Vec<String>> = mods
        .iter()
        .map(|m| {
            let mut r = vec![m.name.clone()];
            if nodes {
                r.push(m.node.clone().unwrap_or_else(|| "-".into()));
            }
            r.extend([
                m.version.clone(),
                m.runtime.clone(),
                m.state.to_string(),
                m.restarts.to_string(),
                format!("{}/{}", m.queue_depth, m.queue_capacity),
                m.events_handled.to_string(),
                clip(m.last_error.as_deref().unwrap_or("-"), 70),
            ]);
            r
        })
        .collect();
    let w: Vec<usize> = head
        .iter()
        .enumerate()
        .map(|(i, h)| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[&str]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(&head);
    for r in &rows {
        line(&r.iter().map(String::as_str).collect::<Vec<_>>());
    }
}

fn print_info(m: &ModuleInfo) {
    println!("{} {} ({})", m.name, m.version, m.runtime);
    println!(
        "  state         {} since {}",
        m.state,
        humantime::format_rfc3339_seconds(m.since)
    );
    println!("  origin        {}", m.origin);
    println!(
        "  restarts      {} (crashes {}, handler errors {})",
        m.restarts, m.crashes, m.errors
    );
    println!("  last error    {}", m.last_error.as_deref().unwrap_or("-"));
    println!(
        "  mailbox       {}/{} queued, {} handled, {} dropped",
        m.queue_depth, m.queue_capacity, m.events_handled, m.events_dropped
    );
    println!(
        "  handles       {}",
        if m.subscriptions.is_empty() {
            "-".into()
        } else {
            m.subscriptions.join(", ")
        }
    );
    println!(
        "  tools         {}",
        if m.tools.is_empty() {
            "-".into()
        } else {
            m.tools.join(", ")
        }
    );
    println!(
        "  depends on    {}",
        if m.dependencies.is_empty() {
            "-".into()
        } else {
            m.dependencies.join(", ")
        }
    );
    for j in &m.jobs {
        println!(
            "  job {:<9} every {} ms: {} runs, {} missed",
            j.name, j.every_ms, j.runs, j.missed
        );
    }
}
