//! `lotus model pull|list`: the local models.

use anyhow::Result;
#[cfg(feature = "local")]
use serde_json::json;

use crate::cli::ModelCmd;
use crate::exit::{CliError, ExitCode};
use crate::home::Home;

/// Runs a `lotus model` command.
pub async fn run(home: &Home, cmd: ModelCmd) -> Result<()> {
    #[cfg(feature = "local")]
    {
        match cmd {
            ModelCmd::Pull { name, file } => pull(home, &name, file.as_deref()).await,
            ModelCmd::List(f) => list(home, f.json),
        }
    }
    #[cfg(not(feature = "local"))]
    {
        let _ = (home, cmd);
        Err(CliError::new(
            ExitCode::Failure,
            "this lotus was built without local models (feature `local`)",
        )
        .into())
    }
}

/// Pulls `name` into the home's model store, printing progress on stderr.
#[cfg(feature = "local")]
pub async fn pull(home: &Home, name: &str, file: Option<&std::path::Path>) -> Result<()> {
    lotus_local::store::spec(name).map_err(|e| CliError::new(ExitCode::BadInput, e))?;
    if let Some(f) = file
        && !f.is_file()
    {
        return Err(
            CliError::new(ExitCode::BadInput, format!("{} is not a file", f.display())).into(),
        );
    }
    let (models, name, file) = (home.models(), name.to_owned(), file.map(ToOwned::to_owned));
    let t0 = std::time::Instant::now();
    let dir = tokio::task::spawn_blocking(move || {
        lotus_local::pull(&models, &name, file.as_deref(), &|s| eprintln!("{s}"))
    })
    .await?
    .map_err(|e| CliError::new(ExitCode::Failure, e))?;
    eprintln!(
        "installed in {} ({:.1} s)",
        dir.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(feature = "local")]
fn list(home: &Home, as_json: bool) -> Result<()> {
    let models = home.models();
    let rows: Vec<_> = lotus_local::store::MODELS
        .iter()
        .map(|m| {
            let dir = lotus_local::store::dir(&models, m.name);
            let bytes: u64 = std::fs::read_dir(&dir)
                .map(|rd| {
                    rd.filter_map(Result::ok)
                        .filter_map(|e| e.metadata().ok())
                        .map(|md| md.len())
                        .sum()
                })
                .unwrap_or(0);
            json!({
                "name": m.name,
                "installed": lotus_local::ready(&models, m.name),
                "description": m.description,
                "package": format!("{}=={}", m.package, m.version),
                "path": dir,
                "size_mb": (bytes as f64 / 1e6 * 10.0).round() / 10.0,
            })
        })
        .collect();
    if as_json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<9} {:<10} {:>8}  {:<28} DESCRIPTION",
        "NAME", "INSTALLED", "SIZE", "PACKAGE"
    );
    for r in &rows {
        println!(
            "{:<9} {:<10} {:>8}  {:<28} {}",
            r["name"].as_str().unwrap_or_default(),
            if r["installed"] == true { "yes" } else { "no" },
            if r["installed"] == true {
                format!("{} MB", r["size_mb"])
            } else {
                "-".into()
            },
            r["package"].as_str().unwrap_or_default(),
            r["description"].as_str().unwrap_or_default()
        );
    }
    println!(
        "\nstore: {} (pull with `lotus model pull NAME`)",
        models.display()
    );
    Ok(())
}
