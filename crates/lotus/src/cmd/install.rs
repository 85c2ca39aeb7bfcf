//! `lotus module install|remove|history|rollback`: every installed version is kept,
//! content-addressed, under `$LOTUS_HOME/modules/.store/NAME/HASH`; the active version is the
//! folder `$LOTUS_HOME/modules/NAME`; each change is recorded in the module registry (L4); a
//! running nucleus picks changes up without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use lotus_core::{Manifest, Runtime};
use lotus_memory::{Knowledge, ModuleRecord};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::client::Client;
use crate::config::Config;
use crate::exit::{CliError, ExitCode, bad_input};
use crate::home::Home;

/// Marks the active folder with the hash of the stored version it came from.
const HASH_FILE: &str = ".lotus-version";

/// The legacy history of a module (before the registry moved to L4), imported on first use.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LegacyEntry {
    at: String,
    action: String,
    version: String,
    hash: String,
}

/// An entry as `lotus module history --json` shows it.
#[derive(Debug, Serialize)]
struct Shown<'a> {
    at: String,
    action: &'a str,
    version: &'a str,
    hash: &'a str,
    runtime: &'a str,
}

fn store(home: &Home, name: &str) -> PathBuf {
    home.modules().join(".store").join(name)
}

fn rfc3339(at_us: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_micros(u64::try_from(at_us).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The module registry (L4 `module_registry`): every install, rollback and removal of every
/// module, wherever the memory's knowledge tier lives (SQLite, or PostgreSQL shared by nuclei).
struct Registry {
    knowledge: Arc<dyn Knowledge>,
}

impl Registry {
    async fn open(home: &Home, config: &Config) -> Result<Self> {
        Ok(Self {
            knowledge: super::knowledge(home, config).await?,
        })
    }

    /// Moves a history file written before the registry was in L4 into it (once: the file is
    /// renamed `history.jsonl.imported`).
    async fn import_legacy(&self, home: &Home, name: &str) -> Result<()> {
        let file = store(home, name).join("history.jsonl");
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        // Every line is read before any is imported, so a damaged file imports nothing.
        let entries = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                serde_json::from_str::<LegacyEntry>(line).with_context(|| {
                    format!(
                        "{} is damaged at `{line}`: fix or remove the line",
                        file.display()
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        for e in entries {
            let at_us = humantime::parse_rfc3339(&e.at)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
            self.knowledge
                .registry_append(&ModuleRecord {
                    name: name.to_owned(),
                    action: e.action,
                    version: e.version,
                    hash: e.hash,
                    runtime: String::new(),
                    at_us,
                })
                .await?;
        }
        std::fs::rename(&file, file.with_extension("jsonl.imported"))?;
        Ok(())
    }

    async fn history(&self, home: &Home, name: &str) -> Result<Vec<ModuleRecord>> {
        self.import_legacy(home, name).await?;
        Ok(self.knowledge.registry(Some(name)).await?)
    }

    /// Records `action` on module `name`, whose manifest is `m` (none when it cannot be read).
    async fn record(
        &self,
        home: &Home,
        name: &str,
        m: Option<&Manifest>,
        action: &str,
        hash: &str,
    ) -> Result<()> {
        self.import_legacy(home, name).await?;
        self.knowledge
            .registry_append(&ModuleRecord {
                name: name.to_owned(),
                action: action.into(),
                version: m.map(|m| m.version.to_string()).unwrap_or_default(),
                hash: hash.into(),
                runtime: m.map(|m| m.runtime.to_string()).unwrap_or_default(),
                at_us: lotus_memory::now_us(),
            })
            .await?;
        Ok(())
    }
}

fn active_hash(home: &Home, name: &str) -> Option<String> {
    std::fs::read_to_string(home.modules().join(name).join(HASH_FILE))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Makes stored version `hash` the active folder, replacing the previous one in two renames.
fn activate(home: &Home, name: &str, hash: &str) -> Result<()> {
    let from = store(home, name).join(hash);
    let active = home.modules().join(name);
    let fresh = home
        .modules()
        .join(format!(".{name}.new-{}", std::process::id()));
    let old = home
        .modules()
        .join(format!(".{name}.old-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&fresh);
    std::fs::create_dir_all(&fresh)?;
    for entry in std::fs::read_dir(&from)
        .with_context(|| format!("version {hash} of `{name}` is not in the store"))?
    {
        let entry = entry?;
        std::fs::copy(entry.path(), fresh.join(entry.file_name()))?;
    }
    std::fs::write(fresh.join(HASH_FILE), hash)?;
    if active.exists() {
        std::fs::rename(&active, &old)?;
    }
    std::fs::rename(&fresh, &active)?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// Tells a running nucleus, if any, to load or reload `name`. Returns what it said.
async fn notify(home: &Home, config: &Config, name: &str) -> Result<Option<String>> {
    let Ok(client) = Client::new(home, config) else {
        return Ok(None);
    };
    // A running module is swapped live; a new or failed one is (re)loaded.
    let loaded = client
        .get::<lotus_nucleus::ModuleInfo>(&format!("/api/v1/modules/{name}"), &[])
        .await
        .is_ok_and(|m| m.state == lotus_nucleus::ModuleState::Running);
    let said = if loaded {
        let r: lotus_nucleus::ReloadReport = client
            .post(&format!("/api/v1/modules/{name}/reload"), &Value::Null)
            .await?;
        format!(
            "reloaded live ({} → {}, mailbox paused {} µs)",
            r.from_version, r.to_version, r.swap_us
        )
    } else {
        let m: lotus_nucleus::ModuleInfo = client
            .post(&format!("/api/v1/modules/{name}/load"), &Value::Null)
            .await?;
        format!("loaded by the running nucleus: {}", m.state)
    };
    Ok(Some(said))
}

pub async fn install(home: &Home, path: &Path) -> Result<()> {
    let folder = if path.is_dir() {
        path.to_owned()
    } else {
        path.parent().map(Path::to_owned).unwrap_or_default()
    };
    // Everything is checked before anything is copied.
    let m = super::module::validate(home, &folder)?;
    let manifest_text = std::fs::read(folder.join("manifest.yaml"))?;
    let mut files: Vec<(String, Vec<u8>)> = vec![("manifest.yaml".into(), manifest_text)];
    if m.runtime == Runtime::Wasm {
        let entry = m.entry.clone().unwrap_or_default();
        if entry.contains('/') || entry.contains("..") {
            return Err(bad_input(format!(
                "`entry: {entry}` must be a file next to the manifest"
            )));
        }
        let bytes = std::fs::read(folder.join(&entry)).map_err(|e| {
            bad_input(format!(
                "cannot read the component {entry}: {e}; build the module first"
            ))
        })?;
        files.push((entry, bytes));
    }
    let mut h = Sha256::new();
    for (n, b) in &files {
        h.update(n.as_bytes());
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    }
    // The first 8 bytes, as 16 hex digits.
    let hash = format!("{:x}", h.finalize())[..16].to_owned();
    let name = m.name.to_string();
    home.ensure()?;
    let config = Config::load(home.root()).map_err(bad_input)?;
    let registry = Registry::open(home, &config).await?;
    let dest = store(home, &name).join(&hash);
    if !dest.exists() {
        let tmp = store(home, &name).join(format!(".{hash}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        for (n, b) in &files {
            std::fs::write(tmp.join(n), b)?;
        }
        std::fs::rename(&tmp, &dest)?;
    }
    if active_hash(home, &name).as_deref() == Some(hash.as_str()) {
        println!(
            "`{name}` {} ({hash}) is already the installed version",
            m.version
        );
        return Ok(());
    }
    activate(home, &name, &hash)?;
    registry
        .record(home, &name, Some(&m), "install", &hash)
        .await?;
    println!(
        "installed `{name}` {} ({hash}) in {}",
        m.version,
        home.modules().join(&name).display()
    );
    match notify(home, &config, &name).await? {
        Some(said) => println!("{said}"),
        None => println!("it starts with the next `lotus up`"),
    }
    Ok(())
}

pub async fn remove(home: &Home, name: &str) -> Result<()> {
    let active = home.modules().join(name);
    if !active.exists() {
        return Err(CliError::new(
            ExitCode::NotFound,
            format!(
                "module `{name}` is not installed in {}",
                home.modules().display()
            ),
        )
        .into());
    }
    let config = Config::load(home.root()).map_err(bad_input)?;
    let registry = Registry::open(home, &config).await?;
    if let Ok(client) = Client::new(home, &config)
        && client
            .get::<Value>(&format!("/api/v1/modules/{name}"), &[])
            .await
            .is_ok()
    {
        client
            .post::<Value>(&format!("/api/v1/modules/{name}/remove"), &Value::Null)
            .await?;
        println!("stopped `{name}` in the running nucleus");
    }
    let manifest = Manifest::load(&active).ok();
    let hash = active_hash(home, name).unwrap_or_default();
    std::fs::remove_dir_all(&active)?;
    registry
        .record(home, name, manifest.as_ref(), "remove", &hash)
        .await?;
    println!("removed `{name}` (its versions stay in the store: `lotus module history {name}`)");
    Ok(())
}

pub async fn history(home: &Home, name: &str, json: bool) -> Result<()> {
    let config = Config::load(home.root()).map_err(bad_input)?;
    let entries = Registry::open(home, &config)
        .await?
        .history(home, name)
        .await?;
    if entries.is_empty() {
        return Err(CliError::new(
            ExitCode::NotFound,
            format!("no installed versions of `{name}`"),
        )
        .into());
    }
    if json {
        let shown: Vec<Shown<'_>> = entries
            .iter()
            .map(|e| Shown {
                at: rfc3339(e.at_us),
                action: &e.action,
                version: &e.version,
                hash: &e.hash,
                runtime: &e.runtime,
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&shown)?);
        return Ok(());
    }
    let active = active_hash(home, name);
    println!(
        "{:<22} {:<9} {:<10} {:<16}",
        "WHEN", "ACTION", "VERSION", "HASH"
    );
    for e in &entries {
        println!(
            "{:<22} {:<9} {:<10} {:<16}",
            rfc3339(e.at_us),
            e.action,
            e.version,
            e.hash
        );
    }
    match active {
        Some(h) => println!("active: {h}"),
        None => println!("active: none (removed)"),
    }
    Ok(())
}

pub async fn rollback(home: &Home, name: &str, to: Option<&str>) -> Result<()> {
    let config = Config::load(home.root()).map_err(bad_input)?;
    let (version, hash) = roll_back(home, &config, name, to).await?;
    println!("rolled `{name}` back to {version} ({hash})");
    if let Some(said) = notify(home, &config, name).await? {
        println!("{said}");
    }
    Ok(())
}

/// Makes version `to` (default: the one before the active one) of `name` active in the module
/// store and records it: its version and hash. The running nucleus is not told.
pub(crate) async fn roll_back(
    home: &Home,
    config: &Config,
    name: &str,
    to: Option<&str>,
) -> Result<(String, String)> {
    let registry = Registry::open(home, config).await?;
    let entries = registry.history(home, name).await?;
    let current = active_hash(home, name);
    let target = match to {
        Some(v) => entries
            .iter()
            .rev()
            .find(|e| e.version == v && e.action != "remove"),
        None => entries
            .iter()
            .rev()
            .filter(|e| e.action != "remove")
            .find(|e| Some(&e.hash) != current.as_ref()),
    }
    .cloned()
    .ok_or_else(|| {
        CliError::new(
            ExitCode::NotFound,
            match to {
                Some(v) => format!(
                    "no installed version {v} of `{name}`; `lotus module history {name}` lists them"
                ),
                None => format!("no earlier version of `{name}` to roll back to"),
            },
        )
    })?;
    activate(home, name, &target.hash)?;
    let m = Manifest::load(&home.modules().join(name)).with_context(|| {
        format!(
            "version {} of `{name}` in the store is damaged",
            target.hash
        )
    })?;
    registry
        .record(home, name, Some(&m), "rollback", &target.hash)
        .await?;
    Ok((target.version, target.hash))
}
