//! # lotus-wasm
//!
//! The host of `runtime: wasm` modules: WebAssembly components built against the WIT world
//! `lotus:module@0.1.0` (`wit/lotus-module/0.1.0`), run by wasmtime.
//!
//! - **Sandboxed by construction**: a component gets WASI with nothing granted (no files, no
//!   network, no environment, no stdio) and the `lotus:module/host` interface, whose every call is
//!   checked against the module's manifest by the nucleus. A component that imports anything else
//!   is refused before it runs, with the import named.
//! - **Limits from the manifest**: linear memory is capped at `permissions.limits.memory_mb`; a
//!   call that runs longer than `call_timeout` traps (epoch interruption, checked every 10 ms, and
//!   the guest yields to other tasks at each check). A trap is a crash for the supervisor, never
//!   for the host.
//! - **Compiled once**: components are compiled ahead of time and cached by the SHA-256 of their
//!   bytes, in memory and on disk, so a restart or reload does not recompile.

#[cfg(feature = "testkit")]
pub mod testkit;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/lotus-module/0.1.0",
        world: "module",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bindings::exports::lotus::module::guest;
use bindings::lotus::module::{host, types};
use lotus_core::{Event, Pattern, Runtime};
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

/// The WIT package version this host serves.
pub const API_VERSION: &str = "0.1.0";

/// How often the engine's epoch advances: the granularity of CPU limits and of yielding.
const EPOCH_TICK: Duration = Duration::from_millis(10);

const HOST_IMPORT: &str = "lotus:module/host@0.1.0";
const TYPES_IMPORT: &str = "lotus:module/types@0.1.0";
const GUEST_EXPORT: &str = "lotus:module/guest@0.1.0";

/// Per-instance state the host functions see.
struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    /// The module's context for the call in progress (set before every call into the guest).
    cx: Option<Context>,
    /// When the call in progress started, and how long it may run.
    call: Option<(Instant, Duration)>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl HostState {
    fn cx(&self) -> wasmtime::Result<Context> {
        self.cx
            .clone()
            .ok_or_else(|| wasmtime::Error::msg("a host function was called outside a module call"))
    }
}

impl types::Host for HostState {}

impl host::Host for HostState {
    async fn publish(
        &mut self,
        topic: String,
        payload: String,
    ) -> wasmtime::Result<Result<(), String>> {
        let cx = self.cx()?;
        let value: Value = match serde_json::from_str(&payload) {
            Ok(v) => v,
            Err(e) => return Ok(Err(format!("the payload is not JSON: {e}"))),
        };
        Ok(cx
            .publish(&topic, value)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()))
    }

    async fn call_tool(
        &mut self,
        name: String,
        args: String,
    ) -> wasmtime::Result<Result<String, String>> {
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

    async fn state_get(&mut self, key: String) -> wasmtime::Result<Result<Option<String>, String>> {
        let cx = self.cx()?;
        Ok(cx
            .state_get(&key)
            .await
            .map(|v| v.map(|v| v.to_string()))
            .map_err(|e| e.to_string()))
    }

    async fn state_set(
        &mut self,
        key: String,
        value: String,
    ) -> wasmtime::Result<Result<(), String>> {
        let cx = self.cx()?;
        let value: Value = match serde_json::from_str(&value) {
            Ok(v) => v,
            Err(e) => return Ok(Err(format!("state values are JSON text: {e}"))),
        };
        Ok(cx.state_set(&key, &value).await.map_err(|e| e.to_string()))
    }

    async fn log(&mut self, level: types::LogLevel, message: String) -> wasmtime::Result<()> {
        let cx = self.cx()?;
        let level = match level {
            types::LogLevel::Trace => tracing::Level::TRACE,
            types::LogLevel::Debug => tracing::Level::DEBUG,
            types::LogLevel::Info => tracing::Level::INFO,
            types::LogLevel::Warn => tracing::Level::WARN,
            types::LogLevel::Error => tracing::Level::ERROR,
        };
        cx.log(level, message);
        Ok(())
    }

    async fn now_us(&mut self) -> wasmtime::Result<i64> {
        Ok(lotus_core::event::micros(std::time::SystemTime::now()))
    }
}

/// The wasm module host. Cheap to share; one per nucleus.
pub struct WasmHost {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    cache_dir: Option<PathBuf>,
    /// Compiled components by the hex SHA-256 of their bytes.
    compiled: Mutex<HashMap<String, Component>>,
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

impl WasmHost {
    /// A host that caches compiled components under `cache_dir` (memory only when `None`).
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Self, HostError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        let engine =
            Engine::new(&config).map_err(|e| host_err("cannot start the wasm engine", e))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| host_err("cannot link WASI", e))?;
        bindings::Module::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| host_err("cannot link the LOTUS host API", e))?;
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
            engine,
            linker: Arc::new(linker),
            cache_dir,
            compiled: Mutex::new(HashMap::new()),
            ticking,
        })
    }

    /// Compiles (or fetches from the cache) the component at `path` and checks that it speaks
    /// `lotus:module@0.1.0` and imports nothing else than WASI and the LOTUS host API.
    pub fn load(&self, path: &Path) -> Result<Component, HostError> {
        self.load_hashed(path).map(|(_, c)| c)
    }

    /// Like [`load`](Self::load), with the hex SHA-256 that identifies the code.
    fn load_hashed(&self, path: &Path) -> Result<(String, Component), HostError> {
        let bytes = std::fs::read(path)
            .map_err(|e| host_err(&format!("cannot read {}", path.display()), e))?;
        let hash: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if let Some(c) = self.compiled.lock().get(&hash) {
            return Ok((hash, c.clone()));
        }
        let component = self.compile(&bytes, &hash)?;
        self.check(&component, path)?;
        self.compiled.lock().insert(hash.clone(), component.clone());
        Ok((hash, component))
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

    fn check(&self, component: &Component, path: &Path) -> Result<(), HostError> {
        let ty = component.component_type();
        for (name, _) in ty.imports(&self.engine) {
            let allowed = name.starts_with("wasi:") || name == HOST_IMPORT || name == TYPES_IMPORT;
            if !allowed {
                return Err(HostError(format!(
                    "{} imports `{name}`, which no manifest permission grants; the host offers WASI (nothing granted) and `{HOST_IMPORT}`",
                    path.display()
                )));
            }
        }
        if !ty
            .exports(&self.engine)
            .any(|(name, _)| name == GUEST_EXPORT)
        {
            let found = ty
                .exports(&self.engine)
                .map(|(n, _)| n.to_owned())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(HostError(format!(
                "{} does not export `{GUEST_EXPORT}` (it exports: {}); build it against wit/lotus-module/{API_VERSION}",
                path.display(),
                if found.is_empty() {
                    "nothing".into()
                } else {
                    found
                }
            )));
        }
        Ok(())
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
        let pinned = same_code.and_then(|h| {
            self.compiled
                .lock()
                .get(h)
                .map(|c| (h.to_owned(), c.clone()))
        });
        let (code, component) = match pinned {
            Some(found) => found,
            None => self.load_hashed(&path)?,
        };
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
        let instance = bindings::Module::instantiate_async(&mut store, &component, &self.linker)
            .await
            .map_err(|e| host_err(&format!("cannot instantiate {}", path.display()), e))?;
        let mut module = WasmModule {
            store,
            instance,
            desc: ModuleDescription::default(),
            limit: limits.call_timeout,
            poisoned: false,
            code,
        };
        let desc = module
            .call(None, |g, s| {
                Box::pin(async move { g.lotus_module_guest().call_describe(s).await })
            })
            .await
            .map_err(|e| HostError(format!("`describe` failed: {e}")))?;
        module.desc = describe(def.name(), desc)?;
        Ok(Box::new(module))
    }
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

fn describe(module: &str, d: guest::Description) -> Result<ModuleDescription, HostError> {
    let handlers = d
        .handlers
        .into_iter()
        .map(|h| {
            let pattern = Pattern::new(&h.pattern)
                .map_err(|e| HostError(format!("module `{module}` handler `{}`: {e}", h.name)))?;
            Ok(HandlerDecl {
                name: intern(h.name),
                pattern,
            })
        })
        .collect::<Result<_, HostError>>()?;
    let tools = d
        .tools
        .into_iter()
        .map(|t| {
            let input_schema: Value = serde_json::from_str(&t.input_schema).map_err(|e| {
                HostError(format!(
                    "module `{module}` tool `{}`: the schema is not JSON: {e}",
                    t.name
                ))
            })?;
            Ok(ToolDecl {
                name: t.name,
                description: t.description,
                input_schema,
            })
        })
        .collect::<Result<_, HostError>>()?;
    let periodic = d
        .jobs
        .into_iter()
        .map(|j| {
            if j.every_ms == 0 {
                return Err(HostError(format!(
                    "module `{module}` job `{}`: `every-ms` must be above 0",
                    j.name
                )));
            }
            Ok(PeriodicDecl {
                name: intern(j.name),
                every: Duration::from_millis(j.every_ms),
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
    instance: bindings::Module,
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
        f: impl for<'s> FnOnce(&'s bindings::Module, &'s mut Store<HostState>) -> GuestCall<'s, T>,
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

fn event_of(ev: &Event) -> types::Event {
    types::Event {
        id: ev.id.to_string(),
        topic: ev.topic.to_string(),
        source: ev.source.to_string(),
        time_us: ev.time_micros(),
        payload: ev.payload.to_string(),
        correlation_id: ev.correlation_id.map(|c| c.to_string()),
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
                    Box::pin(
                        async move { g.lotus_module_guest().call_initialize(s, &settings).await },
                    )
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
        let wev = event_of(&ev);
        let index = u32::try_from(handler).unwrap_or(u32::MAX);
        Box::pin(async move {
            lifecycle(
                self.call(Some(cx), move |g, s| {
                    Box::pin(
                        async move { g.lotus_module_guest().call_on_event(s, index, &wev).await },
                    )
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
                    Box::pin(
                        async move { g.lotus_module_guest().call_call_tool(s, &name, &args).await },
                    )
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
                    Box::pin(async move { g.lotus_module_guest().call_tick(s, index).await })
                })
                .await,
            )
        })
    }

    fn shutdown<'a>(&'a mut self, cx: &'a Context) -> BoxFuture<'a, ModuleResult> {
        Box::pin(async move {
            lifecycle(
                self.call(Some(cx), |g, s| {
                    Box::pin(async move { g.lotus_module_guest().call_shutdown(s).await })
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
