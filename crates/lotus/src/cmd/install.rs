//! `lotus module install|remove|history|rollback`: every installed version is kept,
//! content-addressed, under `$LOTUS_HOME/modules/.store/NAME/HASH`; the active version is the
//! folder `$LOTUS_HOME/modules/NAME`; a running nucleus picks changes up without a restart.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use lotus_core::{Manifest, Runtime};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::client::Client;
use crate::config::Config;
use crate::exit::{CliError, ExitCode, bad_input};
use crate::home::Home;

/// Marks the active folder with the hash of the stored version it came from.
const HASH_FILE: &str = ".lotus-version";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    at: String,
    action: String,
    version: String,
    hash: String,
}

fn store(home: &Home, name: &str) -> PathBuf {
    home.modules().join(".store").join(name)
}

fn history_file(home: &Home, name: &str) -> PathBuf {
    store(home, name).join("history.jsonl")
}

fn read_history(home: &Home, name: &str) -> Result<Vec<Entry>> {
    let text = match std::fs::read_to_string(history_file(home, name)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).context("the module history is damaged"))
        .collect()
}

fn record(home: &Home, name: &str, action: &str, version: &str, hash: &str) -> Result<()> {
    use std::io::Write;
    let entry = Entry {
        at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        action: action.into(),
        version: version.into(),
        hash: hash.into(),
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(history_file(home, name))?;
    writeln!(f, "{}", serde_json::to_string(&entry)?)?;
    Ok(())
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
async fn notify(home: &Home, name: &str) -> Result<Option<String>> {
    let config = Config::load(home.root()).map_err(bad_input)?;
    let Ok(client) = Client::new(home, &config) else {
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
    record(home, &name, "install", &m.version.to_string(), &hash)?;
    println!(
        "installed `{name}` {} ({hash}) in {}",
        m.version,
        home.modules().join(&name).display()
    );
    match notify(home, &name).await? {
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
    let version = Manifest::load(&active)
        .map(|m| m.version.to_string())
        .unwrap_or_default();
    let hash = active_hash(home, name).unwrap_or_default();
    std::fs::remove_dir_all(&active)?;
    if store(home, name).exists() {
        record(home, name, "remove", &version, &hash)?;
    }
    println!("removed `{name}` (its versions stay in the store: `lotus module history {name}`)");
    Ok(())
}

pub fn history(home: &Home, name: &str, json: bool) -> Result<()> {
    let entries = read_history(home, name)?;
    if entries.is_empty() {
        return Err(CliError::new(
            ExitCode::NotFound,
            format!("no installed versions of `{name}`"),
        )
        .into());
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
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
            e.at, e.action, e.version, e.hash
        );
    }
    match active {
        Some(h) => println!("active: {h}"),
        None => println!("active: none (removed)"),
    }
    Ok(())
}

pub async fn rollback(home: &Home, name: &str, to: Option<&str>) -> Result<()> {
    let entries = read_history(home, name)?;
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
    record(home, name, "rollback", &target.version, &target.hash)?;
    println!(
        "rolled `{name}` back to {} ({})",
        target.version, target.hash
    );
    if let Some(said) = notify(home, name).await? {
        println!("{said}");
    }
    Ok(())
}
