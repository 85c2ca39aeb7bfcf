//! Module hosts (one per runtime) and module discovery.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lotus_core::{Manifest, ManifestError, Runtime};

use crate::module::{BoxFuture, Module};

/// Where a module definition came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", content = "path", rename_all = "snake_case")]
pub enum Origin {
    /// Compiled into the binary.
    Builtin,
    /// A folder with a `manifest.yaml`.
    Folder(PathBuf),
}

/// A module to run: its manifest and where it lives.
#[derive(Debug, Clone)]
pub struct ModuleDef {
    /// The validated manifest.
    pub manifest: Arc<Manifest>,
    /// Where it came from.
    pub origin: Origin,
}

impl ModuleDef {
    /// The module's name.
    pub fn name(&self) -> &str {
        self.manifest.name.as_str()
    }
}

/// Why a host could not create an instance. Not retryable by restarting: the module fails.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct HostError(pub String);

/// Creates module instances of one runtime.
pub trait ModuleHost: Send + Sync + 'static {
    /// The runtime this host serves.
    fn runtime(&self) -> Runtime;
    /// A fresh instance of `def`. `same_code` is the [`Module::code_id`] of the instance being
    /// replaced after a crash: the host then runs exactly that code again, whatever the module's
    /// files hold now. `None` (start, load, reload) takes the module's current code.
    fn instantiate<'a>(
        &'a self,
        def: &'a ModuleDef,
        same_code: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Box<dyn Module>, HostError>>;
    /// Modules this host provides without a folder (compiled in).
    fn builtins(&self) -> Vec<ModuleDef> {
        Vec::new()
    }
}

/// A native module compiled into the binary.
#[derive(Clone)]
pub struct NativeModule {
    /// Its `manifest.yaml`, embedded.
    pub manifest: &'static str,
    /// Makes a fresh instance.
    pub factory: fn() -> Box<dyn Module>,
}

/// The host of `runtime: native` modules: a table of compiled-in factories by entry id.
#[derive(Default)]
pub struct NativeHost {
    entries: BTreeMap<String, NativeModule>,
    builtins: Vec<ModuleDef>,
}

impl NativeHost {
    /// An empty host.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a compiled-in module; it runs by default under its manifest's name, and folders may
    /// run it again with `entry: NAME`. An invalid embedded manifest is an error.
    pub fn with(mut self, module: NativeModule) -> Result<Self, ManifestError> {
        let manifest = Manifest::parse(module.manifest, Path::new("<builtin>"))?;
        let entry = manifest
            .entry
            .clone()
            .unwrap_or_else(|| manifest.name.to_string());
        self.builtins.push(ModuleDef {
            manifest: Arc::new(manifest),
            origin: Origin::Builtin,
        });
        self.entries.insert(entry, module);
        Ok(self)
    }

    /// Adds a factory without making it a default module (for folders and tests).
    pub fn with_entry(mut self, entry: &str, module: NativeModule) -> Self {
        self.entries.insert(entry.to_owned(), module);
        self
    }
}

impl ModuleHost for NativeHost {
    fn runtime(&self) -> Runtime {
        Runtime::Native
    }

    fn instantiate<'a>(
        &'a self,
        def: &'a ModuleDef,
        _same_code: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Box<dyn Module>, HostError>> {
        let entry = def
            .manifest
            .entry
            .clone()
            .unwrap_or_else(|| def.name().to_owned());
        let made = self
            .entries
            .get(&entry)
            .map(|m| (m.factory)())
            .ok_or_else(|| {
                HostError(format!(
                    "no native module `{entry}` is compiled into this binary (known: {})",
                    self.entries.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            });
        Box::pin(async move { made })
    }

    fn builtins(&self) -> Vec<ModuleDef> {
        self.builtins.clone()
    }
}

/// What was found under a modules folder.
#[derive(Debug, Default)]
pub struct Discovered {
    /// Valid module folders.
    pub modules: Vec<ModuleDef>,
    /// Folders whose manifest is missing or invalid.
    pub broken: Vec<(PathBuf, ManifestError)>,
}

/// Reads every `*/manifest.yaml` directly under `dir` (a missing `dir` is empty).
pub fn discover(dir: &Path) -> Discovered {
    let mut out = Discovered::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut folders: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    folders.sort();
    for folder in folders {
        let file = folder.join("manifest.yaml");
        if !file.exists() {
            continue;
        }
        match Manifest::load(&file) {
            Ok(m) => out.modules.push(ModuleDef {
                manifest: Arc::new(m),
                origin: Origin::Folder(folder),
            }),
            Err(e) => out.broken.push((folder, e)),
        }
    }
    out
}
