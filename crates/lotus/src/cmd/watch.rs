//! Watching folders: installed modules with `hotload: true`, and a project under `lotus up --dev`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, anyhow};
use lotus_core::Manifest;
use lotus_nucleus::Nucleus;
use notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use tokio::sync::mpsc;

use crate::home::Home;

/// Keeps a watch alive while it is held.
pub type Watch = Debouncer<notify::RecommendedWatcher, RecommendedCache>;

const QUIET: Duration = Duration::from_millis(300);

fn watch(path: &Path) -> Result<(Watch, mpsc::UnboundedReceiver<Vec<PathBuf>>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut debouncer = new_debouncer(QUIET, None, move |res: DebounceEventResult| {
        if let Ok(events) = res {
            let paths: Vec<PathBuf> = events.into_iter().flat_map(|e| e.event.paths).collect();
            if !paths.is_empty() {
                let _ = tx.send(paths);
            }
        }
    })
    .map_err(|e| anyhow!("cannot watch {}: {e}", path.display()))?;
    debouncer
        .watch(path, RecursiveMode::Recursive)
        .map_err(|e| anyhow!("cannot watch {}: {e}", path.display()))?;
    Ok((debouncer, rx))
}

/// Reloads (or loads) installed modules whose folder changes and whose manifest says
/// `config.hotload: true`.
pub fn hotload(nucleus: Nucleus, modules: PathBuf) -> Result<Watch> {
    std::fs::create_dir_all(&modules)?;
    let (w, mut rx) = watch(&modules)?;
    tokio::spawn(async move {
        while let Some(mut paths) = rx.recv().await {
            while let Ok(more) = rx.try_recv() {
                paths.extend(more);
            }
            let names: BTreeSet<String> = paths
                .iter()
                .filter_map(|p| p.strip_prefix(&modules).ok())
                .filter_map(|rel| rel.components().next())
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect();
            for name in names {
                let dir = modules.join(&name);
                let Ok(m) = Manifest::load(&dir) else {
                    continue;
                };
                if !m.config.hotload {
                    continue;
                }
                let result = if nucleus.module(&name).is_some_and(|i| !i.version.is_empty()) {
                    nucleus
                        .reload(&name)
                        .await
                        .map(|r| format!("{} → {}", r.from_version, r.to_version))
                } else {
                    nucleus
                        .load(&name)
                        .await
                        .map(|i| format!("loaded {}", i.version))
                };
                match result {
                    Ok(what) => tracing::info!(module = %name, "hotload: {what}"),
                    Err(e) => tracing::warn!(module = %name, error = %e, "hotload failed"),
                }
            }
        }
    });
    Ok(w)
}

/// `lotus up --dev PATH`: builds and installs the project now, then again on every change to its
/// sources, WIT or manifest. A failed build leaves the running version in place and is reported
/// as `system.module_reload_failed`.
pub async fn dev(nucleus: Nucleus, home: Home, project: PathBuf) -> Result<Watch> {
    let project = project
        .canonicalize()
        .map_err(|e| anyhow!("--dev {}: {e}", project.display()))?;
    let name = Manifest::load(&project)
        .map_err(|e| crate::exit::bad_input(e.to_string()))?
        .name
        .to_string();
    let cycle = {
        let (nucleus, home, project, name) =
            (nucleus.clone(), home.clone(), project.clone(), name.clone());
        move || {
            let (nucleus, home, project, name) =
                (nucleus.clone(), home.clone(), project.clone(), name.clone());
            async move {
                let (h, p) = (home.clone(), project.clone());
                let built =
                    tokio::task::spawn_blocking(move || super::scaffold::build(&h, &p, true)).await;
                match built {
                    Ok(Ok(())) => {
                        if let Err(e) = super::install::install(&home, &project).await {
                            nucleus
                                .report_reload_failure(&name, &format!("{e:#}"))
                                .await;
                        }
                    }
                    Ok(Err(e)) => {
                        nucleus
                            .report_reload_failure(&name, &format!("{e:#}"))
                            .await
                    }
                    Err(e) => {
                        nucleus
                            .report_reload_failure(&name, &format!("the build did not run: {e}"))
                            .await
                    }
                }
            }
        }
    };
    cycle().await;
    let (w, mut rx) = watch(&project)?;
    let target = project.join("target");
    tokio::spawn(async move {
        while let Some(mut paths) = rx.recv().await {
            while let Ok(more) = rx.try_recv() {
                paths.extend(more);
            }
            // Our own outputs (the build folder, the copied component) are not edits.
            let edited = paths.iter().any(|p| {
                !p.starts_with(&target)
                    && p.extension().is_none_or(|x| x != "wasm")
                    && !p.ends_with("Cargo.lock")
            });
            if edited {
                tracing::info!(module = %name, "change detected; rebuilding");
                cycle().await;
                // Drop what the build itself touched.
                while rx.try_recv().is_ok() {}
            }
        }
    });
    Ok(w)
}
