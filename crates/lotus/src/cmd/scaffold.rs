//! `lotus module new` and `lotus module build`.
//!
//! New projects use the guest SDK (`lotus-module-sdk`) that this binary unpacks under
//! `$LOTUS_HOME/sdk/`; see `sdk.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result};
use lotus_core::{Manifest, ModuleName};

use crate::exit::{CliError, ExitCode, bad_input};
use crate::home::Home;

const CARGO_TOML: &str = include_str!("template/Cargo.toml.tmpl");
const LIB_RS: &str = include_str!("template/lib.rs.tmpl");
const MANIFEST: &str = include_str!("template/manifest.yaml.tmpl");

/// `weather-now` → `WeatherNow`: the module's type in the scaffolded code.
fn type_name(module: &str) -> String {
    let camel: String = module
        .split(['-', '_'])
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |c| {
                c.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect();
    if camel == "Self" {
        "SelfModule".into()
    } else {
        camel
    }
}

/// Creates a WebAssembly module project `NAME` in `dir` that builds as it is.
pub fn new(home: &Home, name: &str, dir: Option<&Path>) -> Result<()> {
    let module = ModuleName::new(name).map_err(bad_input)?;
    let root = dir.map_or_else(|| PathBuf::from(name), |d| d.join(name));
    if root.exists() {
        return Err(bad_input(format!(
            "{} already exists; pick another name or folder",
            root.display()
        )));
    }
    let sdk = super::sdk::ensure(home)?;
    let fill = |t: &str| {
        t.replace("__NAME__", module.as_str())
            .replace("__TYPE__", &type_name(module.as_str()))
            .replace("__SDK__", &sdk.display().to_string().replace('\\', "/"))
            .replace("__API__", super::sdk::API_VERSION)
    };
    std::fs::create_dir_all(root.join("src"))?;
    std::fs::write(root.join("Cargo.toml"), fill(CARGO_TOML))?;
    std::fs::write(root.join("src/lib.rs"), fill(LIB_RS))?;
    std::fs::write(root.join("manifest.yaml"), fill(MANIFEST))?;
    std::fs::write(root.join(".gitignore"), "target/\nmodule.wasm\n")?;
    println!(
        "created {} (a `{module}` module against lotus:module@{}, SDK in {})",
        root.display(),
        super::sdk::API_VERSION,
        sdk.display()
    );
    println!(
        "next: lotus module build {0} && lotus module install {0}",
        root.display()
    );
    Ok(())
}

/// Builds the project at `dir` for `wasm32-wasip2` and puts the component where the manifest's
/// `entry` says; then checks it as `lotus module validate` would. `quiet` captures cargo's output
/// and puts its first errors in the returned error (for builds in the background).
pub fn build(home: &Home, dir: &Path, quiet: bool) -> Result<()> {
    let manifest = Manifest::load(dir).map_err(|e| bad_input(e.to_string()))?;
    let entry = manifest
        .entry
        .clone()
        .ok_or_else(|| bad_input("the manifest has no `entry` (the component file)"))?;
    let cargo_toml = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&cargo_toml).with_context(|| {
        format!(
            "{} has no Cargo.toml: is it a module project (`lotus module new`)?",
            dir.display()
        )
    })?;
    let package: toml::Table =
        toml::from_str(&text).map_err(|e| bad_input(format!("{}: {e}", cargo_toml.display())))?;
    let crate_name = package
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .ok_or_else(|| bad_input(format!("{}: no [package] name", cargo_toml.display())))?
        .replace('-', "_");
    // Projects made by `lotus module new` use the SDK this lotus unpacks.
    super::sdk::ensure(home)?;
    // Cargo's own rule: a shared `CARGO_TARGET_DIR` when set, else the project's `target/`.
    let target_dir =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| dir.join("target"), PathBuf::from);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--release",
        "--target",
        "wasm32-wasip2",
        "--manifest-path",
    ])
    .arg(&cargo_toml)
    .arg("--target-dir")
    .arg(&target_dir);
    let (ok, detail) = if quiet {
        let out = cmd.output().context("cannot run cargo")?;
        let text = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("error"))
            .take(3)
            .collect();
        (out.status.success(), format!(": {}", errors.join("; ")))
    } else {
        (
            cmd.status().context("cannot run cargo")?.success(),
            " (see above)".to_owned(),
        )
    };
    if !ok {
        return Err(CliError::new(
            ExitCode::Failure,
            format!("the build failed{detail}; if the target is missing: `rustup target add wasm32-wasip2`"),
        )
        .into());
    }
    let built = target_dir
        .join("wasm32-wasip2/release")
        .join(format!("{crate_name}.wasm"));
    std::fs::copy(&built, dir.join(&entry))
        .with_context(|| format!("cannot copy {}", built.display()))?;
    super::module::validate(home, dir)?;
    let kib = std::fs::metadata(dir.join(&entry))
        .map(|m| m.len() / 1024)
        .unwrap_or(0);
    println!("built {} ({kib} KiB)", dir.join(&entry).display());
    Ok(())
}
