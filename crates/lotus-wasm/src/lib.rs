//! # lotus-wasm
//!
//! The host of `runtime: wasm` modules: WebAssembly components built against the WIT world
//! `lotus:module` (`wit/lotus-module/<version>`), run by wasmtime. Every released API version is
//! served side by side: a component built against 0.1.0 keeps running next to 0.2.0 ones.
//!
//! - **Sandboxed by construction**: a component gets WASI with nothing granted (no files, no
//!   network, no environment, no stdio) and the `lotus:module/host` interface, whose every call is
//!   checked against the module's manifest by the nucleus. A component that imports anything else
//!   is refused before it runs, with the import named. Outbound HTTP (`lotus:module/http`) is
//!   linked only for modules whose manifest lists `permissions.hosts`, and every request (and
//!   redirect) is checked against that list.
//! - **Limits from the manifest**: linear memory is capped at `permissions.limits.memory_mb`; a
//!   call that runs longer than `call_timeout` traps (epoch interruption, checked every 10 ms, and
//!   the guest yields to other tasks at each check). A trap is a crash for the supervisor, never
//!   for the host.
//! - **Compiled once**: components are compiled ahead of time and cached by the SHA-256 of their
//!   bytes, in memory and on disk, so a restart or reload does not recompile.

#[cfg(feature = "testkit")]
pub mod testkit;

/// `lotus:module@0.1.0`: the first API, still served.
mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../../wit/lotus-module/0.1.0",
        world: "module",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

/// `lotus:module@0.2.0`: adds `reply`, `state-delete` and outbound HTTP.
mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../../wit/lotus-module/0.2.0",
        world: "module",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

mod http;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lotus_core::{Event, Manifest, Pattern, Runtime};
use lotus_nucleus::host::Origin;
use lotus_nucleus::{
    BoxFuture, Context, HandlerDecl, HostError, Module, ModuleDef, ModuleDescription, ModuleError,
    ModuleResult, PeriodicDecl, ToolDecl, ToolError,
};
use parking_lot::Mutex;
use serde_json::Value;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// The newest WIT package version this host serves (what `lotus module new` builds against).
pub const API_VERSION: &str = "0.2.0";
/// Every WIT package version this host serves, oldest first.
pub const API_VERSIONS: [&str; 2] = ["0.1.0", "0.2.0"];

/// How often the engine's epoch advances: the granularity of CPU limits and of yielding.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The API version a component was built against, read from its imports and exports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiVersion {
    /// `lotus:module@0.1.0`.
    V0_1,
    /// `lotus:module@0.2.0`.
    V0_2,
}

impl ApiVersion {
    /// The version as text, e.g. `0.2.0`.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiVersion::V0_1 => "0.1.0",
            ApiVersion::V0_2 => "0.2.0",
        }
    }

    fn of_export(name: &str) -> Option<Self> {
        match name {
            "lotus:module/guest@0.1.0" => Some(ApiVersion::V0_1),
            "lotus:module/guest@0.2.0" => Some(ApiVersion::V0_2),
            _ => None,
        }
    }

    /// Whether the component may import `name` at this version (outbound HTTP is checked
    /// against the manifest separately).
    fn offers(self, name: &str) -> bool {
        let v = self.as_str();
        name.starts_with("wasi:")
            || name == format!("lotus:module/host@{v}")
            || name == format!("lotus:module/types@{v}")
            || (self == ApiVersion::V0_2 && name == HTTP_IMPORT)
    }
}

const HTTP_IMPORT: &str = "lotus:module/http@0.2.0";

/// What [`WasmHost::inspect`] learns of a component.
#[derive(Clone, Debug)]
pub struct ComponentInfo {
    /// The API version it was built against.
    pub api: ApiVersion,
    /// Whether it imports outbound HTTP.
    pub uses_http: bool,
    /// The hex SHA-256 of its bytes.
    pub hash: String,
}

/// Per-instance state the host functions see.
struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    /// The module's context for the call in progress (set before every call into the guest).
    cx: Option<Context>,
    /// When the call in progress started, and how long it may run.
    call: Option<(Instant, Duration)>,
    /// The shared HTTP client (only for modules granted hosts).
    http: Option<reqwest::Client>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A host call's outcome: the outer `Err` traps the guest, the inner one is its `result` error.
type HostResult<T> = wasmtime::Result<Result<T, String>>;

/// The host API, once for every version: each version's trait impl below forwards here.
impl HostState {
    fn cx(&self) -> wasmtime::Result<Context> {
        self.cx
            .clone()
            .ok_or_else(|| wasmtime::Error::msg("a host function was called outside a module call"))
    }

    /// How long the call in progress may still run.
    fn remaining(&self) -> Duration {
        self.call.map_or(Duration::ZERO, |(t0, limit)| {
            limit.saturating_sub(t0.elapsed())
        })
    }

    async fn api_publish(
        &mut self,
        topic: String,
        payload: String,
        correlation: Option<String>,
    ) -> HostResult<()> {
        let cx = self.cx()?;
        let value: Value = match serde_json::from_str(&payload) {
            Ok(v) => v,
            Err(e) => return Ok(Err(format!("the payload is not JSON: {e}"))),
        };
        let out = match correlation {
            None => cx.publish(&topic, value).await,
            Some(id) => match id.parse() {
                Ok(id) => cx.reply_with(id, &topic, value).await,
                Err(e) => return Ok(Err(format!("`{id}` is not a correlation id: {e}"))),
            },
        };
        Ok(out.map(|_| ()).map_err(|e| e.to_string()))
    }

    async fn api_call_tool(&mut self, name: String, args: String) -> HostResult<String> {
        let cx = self.cx()?;
        let args: Value = match serde_json::from_str(&args) {
            Ok(v) => v,
            Err(e) => return Ok(Err(format!("the arguments are not JSON: {e}"))),
        };
        Ok(cx
            .call_tool(&name, args)
            .await
            .map(|v| v.to_string())
            .map_err(|e| e.to_string()))
    }

    async fn api_state_get(&mut self, key: String) -> HostResult<Option<String>> {
        let cx = self.cx()?;
        Ok(cx
            .state_get(&key)
            .await
            .map(|v| v.map(|v| v.to_string()))
            .map_err(|e| e.to_string()))
    }

    async fn api_state_set(&mut self, key: String, value: String) -> HostResult<()> {
        let cx = self.cx()?;
        let value: Value = match serde_json::from_str(&value) {
            Ok(v) => v,
            Err(e) => return Ok(Err(format!("state values are JSON text: {e}"))),
        };
        Ok(cx.state_set(&key, &value).await.map_err(|e| e.to_string()))
    }

    async fn api_state_delete(&mut self, key: String) -> HostResult<bool> {
        let cx = self.cx()?;
        Ok(cx.state_delete(&key).await.map_err(|e| e.to_string()))
    }

    fn api_log(&mut self, level: tracing::Level, message: String) -> wasmtime::Result<()> {
        self.cx()?.log(level, message);
        Ok(())
    }
}

fn now_us() -> i64 {
    lotus_core::event::micros(std::time::SystemTime::now())
}

/// The version-specific glue: types and host traits that differ only by their module path.
macro_rules! serve_api_types {
    ($v:ident) => {
        impl $v::lotus::module::types::Host for HostState {}

        impl From<$v::lotus::module::types::LogLevel> for tracing::Level {
            fn from(l: $v::lotus::module::types::LogLevel) -> Self {
                use $v::lotus::module::types::LogLevel as L;
                match l {
                    L::Trace => tracing::Level::TRACE,
                    L::Debug => tracing::Level::DEBUG,
                    L::Info => tracing::Level::INFO,
                    L::Warn => tracing::Level::WARN,
                    L::Error => tracing::Level::ERROR,
                }
            }
        }
    };
}
serve_api_types!(v0_1);
serve_api_types!(v0_2);

/// The host functions every version has, forwarded to the one implementation above.
macro_rules! common_host_fns {
    ($v:ident) => {
        async fn publish(&mut self, topic: String, payload: String) -> HostResult<()> {
            self.api_publish(topic, payload, None).await
        }
        async fn call_tool(&mut self, name: String, args: String) -> HostResult<String> {
            self.api_call_tool(name, args).await
        }
        async fn state_get(&mut self, key: String) -> HostResult<Option<String>> {
            self.api_state_get(key).await
        }
        async fn state_set(&mut self, key: String, value: String) -> HostResult<()> {
            self.api_state_set(key, value).await
        }
        async fn log(
            &mut self,
            level: $v::lotus::module::types::LogLevel,
            message: String,
        ) -> wasmtime::Result<()> {
            self.api_log(level.into(), message)
        }
        async fn now_us(&mut self) -> wasmtime::Result<i64> {
            Ok(now_us())
        }
    };
}

impl v0_1::lotus::module::host::Host for HostState {
    common_host_fns!(v0_1);
}

impl v0_2::lotus::module::host::Host for HostState {
    common_host_fns!(v0_2);

    async fn reply(
        &mut self,
        correlation_id: String,
        topic: String,
        payload: String,
    ) -> HostResult<()> {
        self.api_publish(topic, payload, Some(correlation_id)).await
    }
    async fn state_delete(&mut self, key: String) -> HostResult<bool> {
        self.api_state_delete(key).await
    }
}

impl v0_2::lotus::module::http::Host for HostState {
    async fn fetch(
        &mut self,
        req: v0_2::lotus::module::http::Request,
    ) -> HostResult<v0_2::lotus::module::http::Response> {
        let cx = self.cx()?;
        let Some(client) = self.http.clone() else {
            return Ok(Err(format!(
                "module `{}` has no `permissions.hosts`: outbound HTTP is not granted",
                cx.name()
            )));
        };
        let budget = req.timeout_ms.map_or(self.remaining(), |ms| {
            self.remaining().min(Duration::from_millis(ms.into()))
        });
        let request = http::Request {
            method: req.method,
            url: req.url,
            headers: req.headers,
            body: req.body,
        };
        Ok(http::fetch(&client, &cx, request, budget).await.map(|r| {
            v0_2::lotus::module::http::Response {
                status: r.status,
                headers: r.headers,
                body: r.body,
            }
        }))
    }
}

/// The wasm module host. Cheap to share; one per nucleus.
pub struct WasmHost {
    engine: Engine,
    /// Every API version's host interfaces, without outbound HTTP.
    linker: Arc<Linker<HostState>>,
    /// The same, with outbound HTTP: for modules granted `permissions.hosts`.
    linker_net: Arc<Linker<HostState>>,
    http: reqwest::Client,
    cache_dir: Option<PathBuf>,
    /// Compiled components by the hex SHA-256 of their bytes.
    compiled: Mutex<HashMap<String, (Component, ComponentInfo)>>,
    ticking: Arc<AtomicBool>,
}

impl Drop for WasmHost {
    fn drop(&mut self) {
        self.ticking.store(false, Ordering::Release);
    }
}

fn host_err(what: &str, e: impl std::fmt::Display) -> HostError {
    HostError(format!("{what}: {e}"))
}

fn linker(engine: &Engine, net: bool) -> Result<Linker<HostState>, HostError> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(|e| host_err("cannot link WASI", e))?;
    let api = |e| host_err("cannot link the LOTUS host API", e);
    v0_1::lotus::module::types::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(api)?;
    v0_1::lotus::module::host::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(api)?;
    v0_2::lotus::module::types::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(api)?;
    v0_2::lotus::module::host::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(api)?;
    if net {
        v0_2::lotus::module::http::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(api)?;
    }
    Ok(linker)
}

impl WasmHost {
    /// A host that caches compiled components under `cache_dir` (memory only when `None`).
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Self, HostError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        let engine =
            Engine::new(&config).map_err(|e| host_err("cannot start the wasm engine", e))?;
        let ticking = Arc::new(AtomicBool::new(true));
        let (weak, flag) = (engine.weak(), ticking.clone());
        std::thread::Builder::new()
            .name("lotus-wasm-epoch".into())
            .spawn(move || {
                while flag.load(Ordering::Acquire) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => return,
                    }
                }
            })
            .map_err(|e| host_err("cannot start the epoch thread", e))?;
        if let Some(dir) = &cache_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| host_err(&format!("cannot create {}", dir.display()), e))?;
        }
        Ok(Self {
            linker: Arc::new(linker(&engine, false)?),
            linker_net: Arc::new(linker(&engine, true)?),
            http: http::client().map_err(|e| host_err("cannot build the HTTP client", e))?,
            engine,
            cache_dir,
            compiled: Mutex::new(HashMap::new()),
            ticking,
        })
    }

    /// Compiles (or fetches from the cache) the component at `path` and checks that it speaks a
    /// `lotus:module` version this host serves and imports nothing else than WASI and that
    /// version's LOTUS interfaces.
    pub fn load(&self, path: &Path) -> Result<Component, HostError> {
        self.load_hashed(path).map(|(c, _)| c)
    }

    /// Checks the component at `path` as [`load`](Self::load) does, and against `manifest`: a
    /// component that imports outbound HTTP needs `permissions.hosts`.
    pub fn inspect(&self, path: &Path, manifest: &Manifest) -> Result<ComponentInfo, HostError> {
        let (_, info) = self.load_hashed(path)?;
        Self::check_grants(&info, manifest, path)?;
        Ok(info)
    }

    fn check_grants(
        info: &ComponentInfo,
        manifest: &Manifest,
        path: &Path,
    ) -> Result<(), HostError> {
        if info.uses_http && manifest.permissions.hosts.is_empty() {
            return Err(HostError(format!(
                "{} imports `{HTTP_IMPORT}` (outbound HTTP), but the manifest of `{}` grants no hosts: list the hosts it may reach under `permissions.hosts`",
                path.display(),
                manifest.name
            )));
        }
        Ok(())
    }

    fn load_hashed(&self, path: &Path) -> Result<(Component, ComponentInfo), HostError> {
        let bytes = std::fs::read(path)
            .map_err(|e| host_err(&format!("cannot read {}", path.display()), e))?;
        let hash = format!("{:x}", Sha256::digest(&bytes));
        if let Some(found) = self.compiled.lock().get(&hash) {
            return Ok(found.clone());
        }
        let component = self.compile(&bytes, &hash)?;
        let info = self.check(&component, path, hash.clone())?;
        self.compiled
            .lock()
            .insert(hash, (component.clone(), info.clone()));
        Ok((component, info))
    }

    fn compile(&self, bytes: &[u8], hex: &str) -> Result<Component, HostError> {
        let cached = self
            .cache_dir
            .as_ref()
            .map(|d| d.join(format!("{hex}.cwasm")));
        if let Some(file) = &cached
            && let Ok(pre) = std::fs::read(file)
        {
            // SAFETY: the file is our own output of `precompile_component` for exactly these bytes
            // (named by their hash, in the private home folder); wasmtime also refuses artifacts
            // built by another engine configuration or version.
            #[expect(unsafe_code, reason = "loading our own precompiled artifact")]
            match unsafe { Component::deserialize(&self.engine, &pre) } {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "stale compiled component; recompiling")
                }
            }
        }
        let pre = self
            .engine
            .precompile_component(bytes)
            .map_err(|e| host_err("not a valid WebAssembly component", e))?;
        if let Some(file) = &cached {
            let tmp = file.with_extension("tmp");
            if std::fs::write(&tmp, &pre)
                .and_then(|()| std::fs::rename(&tmp, file))
                .is_err()
            {
                tracing::warn!(file = %file.display(), "cannot cache the compiled component");
            }
        }
        // SAFETY: `pre` was produced by this engine a moment ago.
        #[expect(unsafe_code, reason = "loading an artifact this engine just produced")]
        unsafe { Component::deserialize(&self.engine, &pre) }
            .map_err(|e| host_err("cannot load the compiled component", e))
    }

    fn check(
        &self,
        component: &Component,
        path: &Path,
        hash: String,
    ) -> Result<ComponentInfo, HostError> {
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_owned())
            .collect();
        let Some(api) = exports.iter().find_map(|n| ApiVersion::of_export(n)) else {
            let served = API_VERSIONS
                .map(|v| format!("`lotus:module/guest@{v}`"))
                .join(" or ");
            return Err(HostError(format!(
                "{} does not export {served} (it exports: {}); build it against wit/lotus-module/{API_VERSION}",
                path.display(),
                if exports.is_empty() {
                    "nothing".into()
                } else {
                    exports.join(", ")
                }
            )));
        };
        let mut uses_http = false;
        for (name, _) in ty.imports(&self.engine) {
            if !api.offers(name) {
                return Err(HostError(format!(
                    "{} imports `{name}`, which lotus:module@{} does not offer; the host offers WASI (nothing granted) and `lotus:module/host@{}`",
                    path.display(),
                    api.as_str(),
                    api.as_str()
                )));
            }
            uses_http |= name == HTTP_IMPORT;
        }
        Ok(ComponentInfo {
            api,
            uses_http,
            hash,
        })
    }

    fn component_path(def: &ModuleDef) -> Result<PathBuf, HostError> {
        let entry = def.manifest.entry.as_deref().ok_or_else(|| {
            HostError(format!(
                "module `{}` has no `entry` (the component file)",
                def.name()
            ))
        })?;
        match &def.origin {
            Origin::Folder(dir) => Ok(dir.join(entry)),
            Origin::Builtin => Ok(PathBuf::from(entry)),
        }
    }

    async fn instantiate_wasm(
        &self,
        def: &ModuleDef,
        same_code: Option<&str>,
    ) -> Result<Box<dyn Module>, HostError> {
        let path = Self::component_path(def)?;
        // A restart runs the code that was running; anything else reads the file now.
        let pinned = same_code.and_then(|h| self.compiled.lock().get(h).cloned());
        let (component, info) = match pinned {
            Some(found) => found,
            None => self.load_hashed(&path)?,
        };
        Self::check_grants(&info, &def.manifest, &path)?;
        let granted_net = !def.manifest.permissions.hosts.is_empty();
        let limits = &def.manifest.permissions.limits;
        let state = HostState {
            wasi: WasiCtxBuilder::new().build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory_mb as usize * 1024 * 1024)
                .trap_on_grow_failure(true)
                .build(),
            cx: None,
            call: None,
            http: granted_net.then(|| self.http.clone()),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        // Every tick: yield to the other tasks, and trap once the call has run past its limit.
        store.epoch_deadline_callback(|cx| match cx.data().call {
            Some((started, limit)) if started.elapsed() > limit => {
                Err(wasmtime::Error::msg(format!(
                    "the call ran longer than its limit of {} ms (call_timeout)",
                    limit.as_millis()
                )))
            }
            _ => Ok(UpdateDeadline::Yield(1)),
        });
        store.set_epoch_deadline(1);
        let linker = if granted_net {
            &self.linker_net
        } else {
            &self.linker
        };
        let cannot = |e| host_err(&format!("cannot instantiate {}", path.display()), e);
        let instance = match info.api {
            ApiVersion::V0_1 => Instance::V0_1(
                v0_1::Module::instantiate_async(&mut store, &component, linker)
                    .await
                    .map_err(cannot)?,
            ),
            ApiVersion::V0_2 => Instance::V0_2(
                v0_2::Module::instantiate_async(&mut store, &component, linker)
                    .await
                    .map_err(cannot)?,
            ),
        };
        let mut module = WasmModule {
            store,
            instance,
            desc: ModuleDescription::default(),
            limit: limits.call_timeout,
            poisoned: false,
            code: info.hash,
        };
        let desc = module
            .call(None, |g, s| {
                Box::pin(async move {
                    on_guest!(g, |m, v| {
                        let d = m.lotus_module_guest().call_describe(s).await?;
                        Ok(Description {
                            handlers: d
                                .handlers
                                .into_iter()
                                .map(|h| (h.name, h.pattern))
                                .collect(),
                            tools: d
                                .tools
                                .into_iter()
                                .map(|t| (t.name, t.description, t.input_schema))
                                .collect(),
                            jobs: d.jobs.into_iter().map(|j| (j.name, j.every_ms)).collect(),
                        })
                    })
                })
            })
            .await
            .map_err(|e| HostError(format!("`describe` failed: {e}")))?;
        module.desc = describe(def.name(), desc)?;
        Ok(Box::new(module))
    }
}

/// An instance of a component, by the API version it speaks.
enum Instance {
    V0_1(v0_1::Module),
    V0_2(v0_2::Module),
}

/// Runs `$body` with `$m` bound to the instance's bindings and `$v` to its version's module:
/// the body is written once and compiled for every version.
macro_rules! on_guest {
    ($inst:expr, |$m:ident, $v:ident| $body:expr) => {
        match $inst {
            Instance::V0_1($m) => {
                #[allow(unused_imports)]
                use v0_1 as $v;
                $body
            }
            Instance::V0_2($m) => {
                #[allow(unused_imports)]
                use v0_2 as $v;
                $body
            }
        }
    };
}
use on_guest;

/// A guest's description, version-independent: handlers (name, pattern), tools (name,
/// description, schema), jobs (name, period in ms).
struct Description {
    handlers: Vec<(String, String)>,
    tools: Vec<(String, String, String)>,
    jobs: Vec<(String, u64)>,
}

/// `&'static str` for a handler or job name: each distinct name is leaked once, however often
/// modules are instantiated.
fn intern(name: String) -> &'static str {
    static NAMES: Mutex<Option<std::collections::HashSet<&'static str>>> = Mutex::new(None);
    let mut names = NAMES.lock();
    let set = names.get_or_insert_with(Default::default);
    if let Some(known) = set.get(name.as_str()) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.into_boxed_str());
    set.insert(leaked);
    leaked
}

fn describe(module: &str, d: Description) -> Result<ModuleDescription, HostError> {
    let handlers = d
        .handlers
        .into_iter()
        .map(|(name, pattern)| {
            let pattern = Pattern::new(&pattern)
                .map_err(|e| HostError(format!("module `{module}` handler `{name}`: {e}")))?;
            Ok(HandlerDecl {
                name: intern(name),
                pattern,
            })
        })
        .collect::<Result<_, HostError>>()?;
    let tools = d
        .tools
        .into_iter()
        .map(|(name, description, schema)| {
            let input_schema: Value = serde_json::from_str(&schema).map_err(|e| {
                HostError(format!(
                    "module `{module}` tool `{name}`: the schema is not JSON: {e}"
                ))
            })?;
            Ok(ToolDecl {
                name,
                description,
                input_schema,
            })
        })
        .collect::<Result<_, HostError>>()?;
    let periodic = d
        .jobs
        .into_iter()
        .map(|(name, every_ms)| {
            if every_ms == 0 {
                return Err(HostError(format!(
                    "module `{module}` job `{name}`: `every-ms` must be above 0"
                )));
            }
            Ok(PeriodicDecl {
                name: intern(name),
                every: Duration::from_millis(every_ms),
            })
        })
        .collect::<Result<_, HostError>>()?;
    Ok(ModuleDescription {
        handlers,
        tools,
        periodic,
    })
}

/// One running instance of a wasm module.
struct WasmModule {
    store: Store<HostState>,
    instance: Instance,
    desc: ModuleDescription,
    limit: Duration,
    /// A call was cut off midway (its future dropped): the instance may be inconsistent.
    poisoned: bool,
    /// The hex SHA-256 of the component.
    code: String,
}

/// Marks the module poisoned unless the call it guards completes.
struct CallGuard<'a>(&'a mut bool);

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        *self.0 = true;
    }
}

type GuestCall<'s, T> = BoxFuture<'s, wasmtime::Result<T>>;

impl WasmModule {
    /// Calls into the guest with `cx` in reach of the host functions and the time limit armed.
    /// `Err` is a trap (or a poisoned instance): the caller turns it into a crash.
    async fn call<T>(
        &mut self,
        cx: Option<&Context>,
        f: impl for<'s> FnOnce(&'s Instance, &'s mut Store<HostState>) -> GuestCall<'s, T>,
    ) -> Result<T, String> {
        if self.poisoned {
            return Err("an earlier call was cut off; the instance must be replaced".into());
        }
        let limit = self.limit;
        {
            let data = self.store.data_mut();
            data.cx = cx.cloned();
            data.call = Some((Instant::now(), limit));
        }
        self.store.set_epoch_deadline(1);
        let guard = CallGuard(&mut self.poisoned);
        let out = f(&self.instance, &mut self.store).await;
        std::mem::forget(guard);
        let data = self.store.data_mut();
        data.cx = None;
        data.call = None;
        out.map_err(|e| format!("{e:#}"))
    }
}

fn lifecycle(r: Result<Result<(), String>, String>) -> ModuleResult {
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(msg)) => Err(ModuleError::msg(msg)),
        Err(trap) => Err(ModuleError::fatal(format!("trap: {trap}"))),
    }
}

impl Module for WasmModule {
    fn describe(&self) -> ModuleDescription {
        self.desc.clone()
    }

    fn code_id(&self) -> Option<String> {
        Some(self.code.clone())
    }

    fn initialize<'a>(&'a mut self, cx: &'a Context) -> BoxFuture<'a, ModuleResult> {
        let settings = cx.settings().to_string();
        Box::pin(async move {
            lifecycle(
                self.call(Some(cx), move |g, s| {
                    Box::pin(async move {
                        on_guest!(g, |m, v| m
                            .lotus_module_guest()
                            .call_initialize(s, &settings)
                            .await)
                    })
                })
                .await,
            )
        })
    }

    fn on_event<'a>(
        &'a mut self,
        cx: &'a Context,
        handler: usize,
        ev: Arc<Event>,
    ) -> BoxFuture<'a, ModuleResult> {
        let index = u32::try_from(handler).unwrap_or(u32::MAX);
        Box::pin(async move {
            lifecycle(
                self.call(Some(cx), move |g, s| {
                    Box::pin(async move {
                        on_guest!(g, |m, v| {
                            let wev = v::lotus::module::types::Event {
                                id: ev.id.to_string(),
                                topic: ev.topic.to_string(),
                                source: ev.source.to_string(),
                                time_us: ev.time_micros(),
                                payload: ev.payload.to_string(),
                                correlation_id: ev.correlation_id.map(|c| c.to_string()),
                            };
                            m.lotus_module_guest().call_on_event(s, index, &wev).await
                        })
                    })
                })
                .await,
            )
        })
    }

    fn call_tool<'a>(
        &'a mut self,
        cx: &'a Context,
        tool: &'a str,
        args: Value,
    ) -> BoxFuture<'a, Result<Value, ToolError>> {
        let args = args.to_string();
        Box::pin(async move {
            let name = tool.to_owned();
            let out = self
                .call(Some(cx), move |g, s| {
                    Box::pin(async move {
                        on_guest!(g, |m, v| m
                            .lotus_module_guest()
                            .call_call_tool(s, &name, &args)
                            .await)
                    })
                })
                .await;
            match out {
                Ok(Ok(text)) => serde_json::from_str(&text).map_err(|e| ToolError::Failed {
                    tool: tool.to_owned(),
                    message: format!("its result is not JSON: {e}"),
                }),
                Ok(Err(message)) => Err(ToolError::Failed {
                    tool: tool.to_owned(),
                    message,
                }),
                Err(trap) => Err(ToolError::Crashed {
                    tool: tool.to_owned(),
                    message: format!("trap: {trap}"),
                }),
            }
        })
    }

    fn tick<'a>(&'a mut self, cx: &'a Context, job: usize) -> BoxFuture<'a, ModuleResult> {
        let index = u32::try_from(job).unwrap_or(u32::MAX);
        Box::pin(async move {
            lifecycle(
                self.call(Some(cx), move |g, s| {
                    Box::pin(async move {
                        on_guest!(g, |m, v| m.lotus_module_guest().call_tick(s, index).await)
                    })
                })
                .await,
            )
        })
    }

    fn shutdown<'a>(&'a mut self, cx: &'a Context) -> BoxFuture<'a, ModuleResult> {
        Box::pin(async move {
            lifecycle(
                self.call(Some(cx), |g, s| {
                    Box::pin(async move {
                        on_guest!(g, |m, v| m.lotus_module_guest().call_shutdown(s).await)
                    })
                })
                .await,
            )
        })
    }
}

impl lotus_nucleus::ModuleHost for WasmHost {
    fn runtime(&self) -> Runtime {
        Runtime::Wasm
    }

    fn instantiate<'a>(
        &'a self,
        def: &'a ModuleDef,
        same_code: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Box<dyn Module>, HostError>> {
        Box::pin(self.instantiate_wasm(def, same_code))
    }
}
