//! The nucleus: module manager, supervisor, scheduler, tool registry and permission checks.

use std::collections::{BTreeMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures_util::FutureExt;
use lotus_bus::{Delivery, DurableLog, LocalBus, Queue, Scope, StreamName, Subscription};
use lotus_core::{Event, Manifest, Overflow, Pattern, ToolSpec, Topic, TopicError, json};
use lotus_providers::Router;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::context::Context;
use crate::deps;
use crate::host::{ModuleDef, ModuleHost, Origin, discover};
use crate::module::{Module, ToolError};
use crate::state::StateStore;

/// Longest the nucleus waits for room in one full block-policy mailbox when it publishes its own
/// events; past that, that subscriber misses the event (counted in its drops). Keeps a stuck
/// module from stalling the kernel.
const SYSTEM_PUBLISH_WAIT: Duration = Duration::from_secs(1);

/// Longest an outside publish (the API, the CLI) waits for room in full block-policy mailboxes.
const EXTERNAL_PUBLISH_WAIT: Duration = Duration::from_secs(5);

/// Longest period accepted for a periodic job.
const MAX_PERIOD: Duration = Duration::from_secs(366 * 24 * 3600);

/// Capacity of each durable-stream recorder's queue.
const RECORDER_QUEUE: usize = 8192;

/// How the supervisor treats crashes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorPolicy {
    /// Crashes tolerated within `window`; one more marks the module `failed`.
    pub max_restarts: u32,
    /// The window in which crashes are counted.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Wait before the first restart; doubles with each crash in the window.
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// Longest wait before a restart.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
}

impl Default for SupervisorPolicy {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            window: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// Everything the nucleus needs to know from the configuration.
#[derive(Debug, Clone)]
pub struct NucleusSettings {
    /// This node's id, matched by modules' `placement` (empty: no id; only modules placed
    /// anywhere run).
    pub node: String,
    /// This node's labels, matched by modules' `placement`.
    pub labels: Vec<String>,
    /// Crash handling.
    pub supervisor: SupervisorPolicy,
    /// Deadline of a tool call, from the caller's side.
    pub tool_timeout: Duration,
    /// How long start waits for one module's `initialize` before starting the next.
    pub start_timeout: Duration,
    /// How long stop waits for one module to drain and shut down.
    pub stop_timeout: Duration,
    /// Which topics are recorded in which durable stream.
    pub streams: Vec<(StreamName, Vec<Pattern>)>,
    /// Per-module settings (`[modules.NAME]`): `enabled`, `every.JOB`, and the module's own keys.
    pub modules: BTreeMap<String, Value>,
}

impl Default for NucleusSettings {
    fn default() -> Self {
        Self {
            node: String::new(),
            labels: Vec::new(),
            supervisor: SupervisorPolicy::default(),
            tool_timeout: Duration::from_secs(30),
            start_timeout: Duration::from_secs(10),
            stop_timeout: Duration::from_secs(5),
            streams: default_stream_routes(),
            modules: BTreeMap::new(),
        }
    }
}

/// The default recording of topics into the four durable streams.
pub fn default_stream_routes() -> Vec<(StreamName, Vec<Pattern>)> {
    let pats = |xs: &[&str]| {
        xs.iter()
            .filter_map(|s| Pattern::new(s).ok())
            .collect::<Vec<_>>()
    };
    vec![
        (
            StreamName::ModuleEvents,
            pats(&[
                "system.module_started",
                "system.module_crashed",
                "system.module_restarted",
                "system.module_failed",
                "system.module_stopped",
                "system.module_reloaded",
                "system.module_reload_failed",
                "system.module_disabled",
            ]),
        ),
        (
            StreamName::ActionLog,
            // The audit trail: denials, tool calls, side effects, and crashes (a trap or a
            // timeout in a sandboxed module is a security event too).
            pats(&[
                "system.permission_denied",
                "system.tool_called",
                "system.module_crashed",
                "system.module_failed",
                "action.>",
                // Who approved or denied a dangerous call.
                "cognition.approval_request",
                "cognition.approval_response",
            ]),
        ),
        (
            StreamName::ConversationStream,
            pats(&[
                "cognition.task_request",
                "action.response",
                "cognition.episode",
                "conversation.>",
            ]),
        ),
        (StreamName::MemoryUpdates, pats(&["memory.>"])),
    ]
}

/// Life cycle state of a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ModuleState {
    /// Initializing for the first time.
    Starting,
    /// Handling events.
    Running,
    /// Waiting out a backoff or re-initializing after a crash.
    Restarting,
    /// Crashed too often, or cannot be loaded; not running.
    Failed,
    /// Draining and shutting down.
    Stopping,
    /// Stopped cleanly.
    Stopped,
    /// Turned off by its manifest or `lotus.toml`.
    Disabled,
    /// Its `placement` does not allow this node: it runs on a node that matches.
    Elsewhere,
}

impl std::fmt::Display for ModuleState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self).ok();
        f.write_str(s.as_ref().and_then(Value::as_str).unwrap_or("unknown"))
    }
}

/// A periodic job as reported.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobInfo {
    /// Job name.
    pub name: String,
    /// Period in milliseconds.
    pub every_ms: u64,
    /// Completed runs.
    pub runs: u64,
    /// Ticks skipped because the previous run was still going or the scheduler fell behind.
    pub missed: u64,
}

/// One module as reported by `lotus module list` and the API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModuleInfo {
    /// Name.
    pub name: String,
    /// Version (empty when the manifest is invalid).
    pub version: String,
    /// Runtime.
    pub runtime: String,
    /// Life cycle state.
    pub state: ModuleState,
    /// Successful restarts after crashes.
    pub restarts: u64,
    /// Crashes (panics, failed initializations) so far.
    pub crashes: u64,
    /// Handler errors (not crashes) so far.
    pub errors: u64,
    /// The last crash or error.
    pub last_error: Option<String>,
    /// Events waiting in the mailbox.
    pub queue_depth: usize,
    /// Mailbox capacity.
    pub queue_capacity: usize,
    /// Events handled.
    pub events_handled: u64,
    /// Events dropped by a drop-oldest mailbox.
    pub events_dropped: u64,
    /// Granted handler patterns.
    pub subscriptions: Vec<String>,
    /// Registered tools.
    pub tools: Vec<String>,
    /// Periodic jobs.
    pub jobs: Vec<JobInfo>,
    /// Dependencies.
    pub dependencies: Vec<String>,
    /// `builtin` or the folder.
    pub origin: String,
    /// When the module last changed state.
    #[serde(with = "lotus_core::event::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub since: SystemTime,
    /// The node whose nucleus runs it, when several nuclei share one bus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

struct JobStatus {
    name: String,
    every: Duration,
    runs: AtomicU64,
    missed: AtomicU64,
    in_flight: AtomicBool,
}

#[derive(Default)]
struct Wiring {
    /// Per handler: its name and its pattern, or `None` when the subscription was denied.
    handlers: Vec<(&'static str, Option<Pattern>)>,
    sub: Option<Subscription>,
    jobs: Vec<JoinHandle<()>>,
}

impl Drop for Wiring {
    fn drop(&mut self) {
        for j in &self.jobs {
            j.abort();
        }
    }
}

enum Control {
    Tool {
        tool: String,
        args: Value,
        reply: oneshot::Sender<Result<Value, ToolError>>,
    },
    Tick(usize),
    Stop(oneshot::Sender<()>),
    /// A reload: the new instance (already initialized) and its definition.
    Swap {
        instance: Box<dyn Module>,
        def: ModuleDef,
        done: oneshot::Sender<Duration>,
    },
}

pub(crate) struct Slot {
    name: String,
    /// Replaced when the module is reloaded with a new version.
    def: RwLock<ModuleDef>,
    settings: Arc<Value>,
    state: Mutex<(ModuleState, SystemTime)>,
    restarts: AtomicU64,
    crashes: AtomicU64,
    errors: AtomicU64,
    handled: AtomicU64,
    last_error: Mutex<Option<String>>,
    control: Mutex<Option<mpsc::UnboundedSender<Control>>>,
    task: Mutex<Option<JoinHandle<()>>>,
    queue: Mutex<Option<Arc<Queue>>>,
    jobs: Mutex<Vec<Arc<JobStatus>>>,
    tools: Mutex<Vec<String>>,
    handlers: Mutex<Vec<String>>,
}

impl Slot {
    fn new(def: ModuleDef, settings: Value) -> Self {
        // Manifest defaults, overlaid with `[modules.NAME]`.
        let mut merged = serde_json::Map::new();
        for (k, v) in &def.manifest.config.settings {
            merged.insert(k.clone(), v.clone());
        }
        if let Value::Object(o) = settings {
            merged.extend(o);
        }
        Self {
            name: def.name().to_owned(),
            def: RwLock::new(def),
            settings: Arc::new(Value::Object(merged)),
            state: Mutex::new((ModuleState::Stopped, SystemTime::now())),
            restarts: AtomicU64::new(0),
            crashes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            handled: AtomicU64::new(0),
            last_error: Mutex::new(None),
            control: Mutex::new(None),
            task: Mutex::new(None),
            queue: Mutex::new(None),
            jobs: Mutex::new(Vec::new()),
            tools: Mutex::new(Vec::new()),
            handlers: Mutex::new(Vec::new()),
        }
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn def(&self) -> ModuleDef {
        self.def.read().clone()
    }

    fn state(&self) -> ModuleState {
        self.state.lock().0
    }

    fn set_state(&self, s: ModuleState) {
        *self.state.lock() = (s, SystemTime::now());
    }

    fn set_error(&self, e: String) {
        *self.last_error.lock() = Some(e);
    }

    pub(crate) fn info(&self) -> ModuleInfo {
        let (state, since) = *self.state.lock();
        let queue = self.queue.lock().clone();
        let def = self.def();
        ModuleInfo {
            name: self.name().to_owned(),
            version: def.manifest.version.to_string(),
            runtime: def.manifest.runtime.to_string(),
            state,
            restarts: self.restarts.load(Ordering::Relaxed),
            crashes: self.crashes.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            last_error: self.last_error.lock().clone(),
            queue_depth: queue.as_ref().map_or(0, |q| q.depth()),
            queue_capacity: queue.as_ref().map_or(0, |q| q.capacity()),
            events_handled: self.handled.load(Ordering::Relaxed),
            events_dropped: queue.as_ref().map_or(0, |q| q.dropped()),
            subscriptions: self.handlers.lock().clone(),
            tools: self.tools.lock().clone(),
            jobs: self
                .jobs
                .lock()
                .iter()
                .map(|j| JobInfo {
                    name: j.name.clone(),
                    every_ms: u64::try_from(j.every.as_millis()).unwrap_or(u64::MAX),
                    runs: j.runs.load(Ordering::Relaxed),
                    missed: j.missed.load(Ordering::Relaxed),
                })
                .collect(),
            dependencies: def
                .manifest
                .dependencies
                .modules
                .iter()
                .map(|d| d.to_string())
                .collect(),
            origin: match &def.origin {
                Origin::Builtin => "builtin".into(),
                Origin::Folder(p) => p.display().to_string(),
            },
            since,
            node: None,
        }
    }
}

#[derive(Clone)]
pub(crate) struct ToolEntry {
    pub(crate) spec: ToolSpec,
    local: String,
}

/// A module folder whose manifest could not be used.
struct Broken {
    name: String,
    path: PathBuf,
    error: String,
}

pub(crate) struct Shared {
    pub(crate) bus: LocalBus,
    pub(crate) log: Arc<dyn DurableLog>,
    pub(crate) state: StateStore,
    pub(crate) settings: NucleusSettings,
    /// The LLM router modules reach through [`Context::chat`](crate::Context::chat).
    pub(crate) router: Option<Arc<Router>>,
    hosts: Vec<Arc<dyn ModuleHost>>,
    modules_dir: Option<PathBuf>,
    extra: Vec<ModuleDef>,
    pub(crate) slots: RwLock<BTreeMap<String, Arc<Slot>>>,
    broken: RwLock<Vec<Broken>>,
    pub(crate) tools: RwLock<BTreeMap<String, ToolEntry>>,
    order: Mutex<Vec<String>>,
    recorders: Mutex<Vec<(Arc<Queue>, JoinHandle<()>)>>,
    recorder_subs: Mutex<Vec<Subscription>>,
    /// Tool calls from other nodes (when the bus has a bridge).
    cluster: Mutex<Option<Subscription>>,
    /// Held while a module is switched on or off: one switch at a time, so two enables never
    /// start two actors and no saved switch is lost.
    switching: tokio::sync::Mutex<()>,
}

fn topic(s: &'static str) -> Topic {
    // Only called with literal, valid topics.
    Topic::new(s)
        .unwrap_or_else(|_| Topic::new("system.invalid").unwrap_or_else(|_| unreachable!()))
}

impl Shared {
    /// Whether a module placed by `placement` runs on this node.
    fn placed_here(&self, placement: &lotus_core::Placement) -> bool {
        placement.is_anywhere() || placement.allows(&self.settings.node, &self.settings.labels)
    }

    /// The host that runs `runtime`, if this build has one.
    fn host_for(&self, runtime: lotus_core::Runtime) -> Option<Arc<dyn ModuleHost>> {
        self.hosts.iter().find(|h| h.runtime() == runtime).cloned()
    }

    /// The loaded module `name`.
    fn slot(&self, name: &str) -> Result<Arc<Slot>, NucleusError> {
        self.slots
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| NucleusError::NoSuchModule(name.to_owned()))
    }

    async fn system(&self, name: &'static str, payload: Value) {
        let ev = Event::new(topic(name), "nucleus", payload);
        let d = self
            .bus
            .publish_within(Arc::new(ev), SYSTEM_PUBLISH_WAIT)
            .await;
        if d.timed_out > 0 {
            tracing::warn!(
                topic = name,
                subscribers = d.timed_out,
                "full mailboxes missed a nucleus event"
            );
        }
    }

    pub(crate) async fn deny(&self, module: &str, action: &str, target: &str, reason: &str) {
        tracing::warn!(module, action, target, reason, "permission denied");
        self.system(
            "system.permission_denied",
            json!({"module": module, "action": action, "target": target, "reason": reason}),
        )
        .await;
    }

    pub(crate) async fn call_tool(
        &self,
        caller: Option<(&str, &Manifest)>,
        tool: &str,
        args: Value,
    ) -> Result<Value, ToolError> {
        let label = caller.map_or("api", |c| c.0).to_owned();
        self.call_tool_as(caller, &label, tool, args).await
    }

    /// [`call_tool`](Self::call_tool), with `caller_name` in the audit trail (a caller on
    /// another node is named `CALLER@NODE`).
    pub(crate) async fn call_tool_as(
        &self,
        caller: Option<(&str, &Manifest)>,
        caller_name: &str,
        tool: &str,
        args: Value,
    ) -> Result<Value, ToolError> {
        let started = Instant::now();
        let result = self.call_tool_inner(caller, caller_name, tool, args).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.code(),
        };
        self.system(
            "system.tool_called",
            json!({
                "caller": caller_name,
                "tool": tool,
                "duration_us": u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                "outcome": outcome,
            }),
        )
        .await;
        result
    }

    async fn call_tool_inner(
        &self,
        caller: Option<(&str, &Manifest)>,
        caller_label: &str,
        tool: &str,
        args: Value,
    ) -> Result<Value, ToolError> {
        if let Some((name, manifest)) = caller
            && !manifest.may_call_tool(tool)
        {
            self.deny(name, "call_tool", tool, "not in `permissions.tools`")
                .await;
            return Err(ToolError::PermissionDenied {
                caller: name.to_owned(),
                tool: tool.to_owned(),
            });
        }
        let found = self.tools.read().get(tool).cloned();
        let Some(entry) = found else {
            // Its module may exist but not be running yet (or any more): say so.
            let module = tool.split('.').next().unwrap_or_default();
            let state = self.slots.read().get(module).map(|s| s.state());
            if state != Some(ModuleState::Running)
                && let Some(r) = self.call_remote(caller_label, tool, args).await
            {
                return r;
            }
            return Err(match state {
                Some(state) if state != ModuleState::Running => ToolError::Unavailable {
                    tool: tool.to_owned(),
                    module: module.to_owned(),
                    state: state.to_string(),
                },
                _ => ToolError::NotFound {
                    tool: tool.to_owned(),
                },
            });
        };
        if caller.is_some_and(|(name, _)| name == entry.spec.module) {
            return Err(ToolError::Failed {
                tool: tool.to_owned(),
                message: "a module cannot call its own tool through the registry (it would wait on itself); call the method directly".into(),
            });
        }
        let slot = self.slots.read().get(&entry.spec.module).cloned();
        let unavailable = |state: String| ToolError::Unavailable {
            tool: tool.to_owned(),
            module: entry.spec.module.clone(),
            state,
        };
        let Some(slot) = slot else {
            return Err(unavailable("gone".into()));
        };
        let state = slot.state();
        if !matches!(
            state,
            ModuleState::Running | ModuleState::Restarting | ModuleState::Starting
        ) {
            let why = slot.last_error.lock().clone();
            return Err(unavailable(match why {
                Some(e) if state == ModuleState::Failed => format!("failed ({e})"),
                _ => state.to_string(),
            }));
        }
        let tx = slot
            .control
            .lock()
            .clone()
            .ok_or_else(|| unavailable(state.to_string()))?;
        let (reply, rx) = oneshot::channel();
        tx.send(Control::Tool {
            tool: entry.local.clone(),
            args,
            reply,
        })
        .map_err(|_| unavailable(slot.state().to_string()))?;
        match tokio::time::timeout(self.settings.tool_timeout, rx).await {
            Ok(Ok(r)) => r.map_err(|e| e.qualified(tool)),
            Ok(Err(_)) => Err(unavailable(slot.state().to_string())),
            Err(_) => Err(ToolError::Timeout {
                tool: tool.to_owned(),
                after: self.settings.tool_timeout,
            }),
        }
    }
}

enum Outcome<T> {
    Done(T),
    Panicked(String),
    TimedOut,
}

/// Runs a module future with panic isolation and a time limit.
async fn guarded<T>(fut: impl std::future::Future<Output = T>, limit: Duration) -> Outcome<T> {
    match tokio::time::timeout(limit, AssertUnwindSafe(fut).catch_unwind()).await {
        Ok(Ok(v)) => Outcome::Done(v),
        Ok(Err(panic)) => Outcome::Panicked(
            panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".into()),
        ),
        Err(_) => Outcome::TimedOut,
    }
}

enum Served {
    Stop(oneshot::Sender<()>),
    Crash(String),
    Gone,
}

struct Actor {
    shared: Arc<Shared>,
    slot: Arc<Slot>,
    host: Arc<dyn ModuleHost>,
    cx: Context,
    rx: mpsc::UnboundedReceiver<Control>,
    deferred: VecDeque<Control>,
    crash_times: VecDeque<Instant>,
    wiring: Option<Wiring>,
    limit: Duration,
    /// [`Module::code_id`] of the running instance.
    code: Option<String>,
}

impl Actor {
    fn lifecycle(&self, extra: Value) -> Value {
        let mut v = json!({"module": self.slot.name(), "version": self.slot.def().manifest.version.to_string()});
        if let (Value::Object(a), Value::Object(b)) = (&mut v, extra) {
            a.extend(b);
        }
        v
    }

    /// Subscribes the handlers, registers the tools and schedules the jobs of `desc`. A
    /// subscription kept from a previous instance (`keep`) gets the new patterns in place, so its
    /// queued events carry over.
    async fn wire(&mut self, desc: crate::module::ModuleDescription, keep: Option<Subscription>) {
        let name = self.slot.name().to_owned();
        let manifest = self.slot.def().manifest;
        let mut wiring = Wiring::default();
        let mut allowed = Vec::new();
        for h in &desc.handlers {
            if manifest.may_subscribe(&h.pattern) {
                allowed.push(h.pattern.clone());
                wiring.handlers.push((h.name, Some(h.pattern.clone())));
            } else {
                self.shared
                    .deny(
                        &name,
                        "subscribe",
                        h.pattern.as_str(),
                        "not covered by `subscriptions`",
                    )
                    .await;
                wiring.handlers.push((h.name, None));
            }
        }
        *self.slot.handlers.lock() = allowed.iter().map(|p| p.to_string()).collect();
        if let Some(sub) = keep {
            sub.set_patterns(allowed);
            wiring.sub = Some(sub);
        } else if !allowed.is_empty() {
            let limits = &manifest.permissions.limits;
            // A module's durable events come through its consumer group when the bus spans
            // several nodes: each is handled once, by one of the nodes that host the module.
            let sub = self.shared.bus.subscribe_scoped(
                &name,
                allowed,
                limits.queue,
                limits.overflow,
                Scope::Group,
            );
            *self.slot.queue.lock() = Some(sub.queue().clone());
            wiring.sub = Some(sub);
        }
        {
            let mut tools = self.shared.tools.write();
            let mut mine = Vec::new();
            for d in &manifest.dangerous {
                if d != "*" && !desc.tools.iter().any(|t| t.name == d.as_str()) {
                    tracing::warn!(module = %name, tool = %d, "`dangerous` names a tool the module does not offer");
                }
            }
            for t in desc.tools {
                let qualified = format!("{name}.{}", t.name);
                if tools.get(&qualified).is_some_and(|e| e.spec.module != name) {
                    tracing::warn!(module = %name, tool = %qualified, "tool name already taken; skipped");
                    continue;
                }
                tools.insert(
                    qualified.clone(),
                    ToolEntry {
                        spec: ToolSpec {
                            name: qualified.clone(),
                            module: name.clone(),
                            description: t.description,
                            input_schema: t.input_schema,
                            dangerous: manifest.dangerous.iter().any(|d| d == "*" || *d == t.name),
                            node: None,
                        },
                        local: t.name,
                    },
                );
                mine.push(qualified);
            }
            *self.slot.tools.lock() = mine;
        }
        let overrides = self
            .slot
            .settings
            .get("every")
            .cloned()
            .unwrap_or(Value::Null);
        let mut jobs = Vec::new();
        for (i, j) in desc.periodic.iter().enumerate() {
            let every = overrides
                .get(j.name)
                .and_then(Value::as_str)
                .and_then(|s| match humantime::parse_duration(s) {
                    Ok(d) if !d.is_zero() => Some(d),
                    _ => {
                        tracing::warn!(module = %name, job = j.name, value = s, "ignoring invalid `every` override; expected e.g. \"5s\"");
                        None
                    }
                })
                .unwrap_or(j.every)
                .min(MAX_PERIOD);
            let status = Arc::new(JobStatus {
                name: j.name.to_owned(),
                every,
                runs: AtomicU64::new(0),
                missed: AtomicU64::new(0),
                in_flight: AtomicBool::new(false),
            });
            if let Some(tx) = self.slot.control.lock().clone() {
                wiring
                    .jobs
                    .push(tokio::spawn(schedule(status.clone(), i, tx)));
            }
            jobs.push(status);
        }
        *self.slot.jobs.lock() = jobs;
        self.wiring = Some(wiring);
    }

    fn unregister_tools(&self) {
        let mut tools = self.shared.tools.write();
        for t in self.slot.tools.lock().drain(..) {
            tools.remove(&t);
        }
    }

    fn unwire(&mut self) {
        self.unregister_tools();
        self.wiring = None;
    }

    /// Puts a new, initialized instance in place of the running one, between two messages: the
    /// events waiting in the mailbox are handled by the new instance, none twice, none lost.
    async fn swap(
        &mut self,
        inst: &mut Box<dyn Module>,
        new: Box<dyn Module>,
        def: ModuleDef,
    ) -> Duration {
        let started = Instant::now();
        // The old version may save what it must; its errors do not stop the swap.
        let stop_timeout = self.shared.settings.stop_timeout.min(MAX_PERIOD);
        if let Outcome::Done(Err(e)) = guarded(inst.shutdown(&self.cx), stop_timeout).await {
            tracing::warn!(module = %self.slot.name(), error = %e, "old version's shutdown failed during reload");
        }
        *inst = new;
        self.code = inst.code_id();
        self.limit = def.manifest.permissions.limits.call_timeout;
        self.cx = Context {
            manifest: def.manifest.clone(),
            ..self.cx.clone()
        };
        *self.slot.def.write() = def;
        let keep = self.wiring.as_mut().and_then(|w| w.sub.take());
        self.unregister_tools();
        self.wiring = None;
        let desc = inst.describe();
        self.wire(desc, keep).await;
        started.elapsed()
    }

    async fn next(&mut self) -> Option<Result<Control, Arc<Event>>> {
        if let Some(c) = self.deferred.pop_front() {
            return Some(Ok(c));
        }
        let sub = self.wiring.as_ref().and_then(|w| w.sub.as_ref());
        tokio::select! {
            biased;
            c = self.rx.recv() => c.map(Ok),
            ev = async { match sub { Some(s) => s.recv().await, None => std::future::pending().await } } => ev.map(Err),
        }
    }

    /// The handler at `i` if it handles `topic`: its name.
    fn handler_for(&self, i: usize, topic: &Topic) -> Option<&'static str> {
        match self.wiring.as_ref()?.handlers.get(i)? {
            (name, Some(pattern)) if pattern.matches(topic) => Some(name),
            _ => None,
        }
    }

    /// Runs the handlers matching `ev`; `Err` is a crash.
    async fn handle_event(
        &mut self,
        inst: &mut Box<dyn Module>,
        ev: Arc<Event>,
    ) -> Result<(), String> {
        let count = self.wiring.as_ref().map_or(0, |w| w.handlers.len());
        for i in 0..count {
            let Some(hname) = self.handler_for(i, &ev.topic) else {
                continue;
            };
            match guarded(inst.on_event(&self.cx, i, ev.clone()), self.limit).await {
                Outcome::Done(Ok(())) => {}
                Outcome::Done(Err(e)) if e.is_fatal() => {
                    return Err(format!(
                        "crashed in handler `{hname}` on `{}`: {e}",
                        ev.topic
                    ));
                }
                Outcome::Done(Err(e)) => {
                    self.error(format!("handler `{hname}` on `{}`: {e}", ev.topic))
                }
                Outcome::TimedOut => self.error(format!(
                    "handler `{hname}` on `{}` did not finish within {} ms",
                    ev.topic,
                    self.limit.as_millis()
                )),
                Outcome::Panicked(m) => {
                    self.slot.handled.fetch_add(1, Ordering::Relaxed);
                    return Err(format!(
                        "panicked in handler `{hname}` on `{}`: {m}",
                        ev.topic
                    ));
                }
            }
        }
        self.slot.handled.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// [`handle_event`](Self::handle_event), then says the event is done with: handled, or
    /// crashed on (it is not delivered again; a crash would repeat).
    async fn handle_and_ack(
        &mut self,
        inst: &mut Box<dyn Module>,
        ev: Arc<Event>,
    ) -> Result<(), String> {
        let handled = self.handle_event(inst, ev.clone()).await;
        if let Some(sub) = self.wiring.as_ref().and_then(|w| w.sub.as_ref()) {
            sub.done(&ev);
        }
        handled
    }

    fn error(&self, msg: String) {
        tracing::warn!(module = %self.slot.name(), error = %msg, "handler error");
        self.slot.errors.fetch_add(1, Ordering::Relaxed);
        self.slot.set_error(msg);
    }

    async fn serve(&mut self, inst: &mut Box<dyn Module>) -> Served {
        loop {
            let Some(msg) = self.next().await else {
                return Served::Gone;
            };
            match msg {
                Err(ev) => {
                    if let Err(reason) = self.handle_and_ack(inst, ev).await {
                        return Served::Crash(reason);
                    }
                }
                Ok(Control::Tool { reply, .. }) if reply.is_closed() => {
                    // The caller gave up (deadline passed while the module restarted): do not
                    // run a side effect nobody waits for.
                }
                Ok(Control::Tool { tool, args, reply }) => {
                    match guarded(inst.call_tool(&self.cx, &tool, args), self.limit).await {
                        Outcome::Done(Err(ToolError::Crashed { message, .. })) => {
                            let _ = reply.send(Err(ToolError::Crashed {
                                tool: format!("{}.{tool}", self.slot.name()),
                                message: message.clone(),
                            }));
                            return Served::Crash(format!("crashed in tool `{tool}`: {message}"));
                        }
                        Outcome::Done(r) => {
                            let _ = reply.send(r);
                        }
                        Outcome::TimedOut => {
                            let _ = reply.send(Err(ToolError::Timeout {
                                tool: format!("{}.{tool}", self.slot.name()),
                                after: self.limit,
                            }));
                        }
                        Outcome::Panicked(m) => {
                            let _ = reply.send(Err(ToolError::Crashed {
                                tool: format!("{}.{tool}", self.slot.name()),
                                message: m.clone(),
                            }));
                            return Served::Crash(format!("panicked in tool `{tool}`: {m}"));
                        }
                    }
                }
                Ok(Control::Tick(j)) => {
                    let job = self.slot.jobs.lock().get(j).cloned();
                    let out = guarded(inst.tick(&self.cx, j), self.limit).await;
                    let jname = job
                        .as_ref()
                        .map_or_else(|| "?".to_owned(), |j| j.name.clone());
                    if let Some(job) = &job {
                        job.runs.fetch_add(1, Ordering::Relaxed);
                        job.in_flight.store(false, Ordering::Release);
                    }
                    match out {
                        Outcome::Done(Ok(())) => {}
                        Outcome::Done(Err(e)) if e.is_fatal() => {
                            return Served::Crash(format!(
                                "crashed in periodic job `{jname}`: {e}"
                            ));
                        }
                        Outcome::Done(Err(e)) => self.error(format!("periodic job `{jname}`: {e}")),
                        Outcome::TimedOut => self.error(format!(
                            "periodic job `{jname}` did not finish within {} ms",
                            self.limit.as_millis()
                        )),
                        Outcome::Panicked(m) => {
                            return Served::Crash(format!(
                                "panicked in periodic job `{jname}`: {m}"
                            ));
                        }
                    }
                }
                Ok(Control::Stop(done)) => return Served::Stop(done),
                Ok(Control::Swap {
                    instance,
                    def,
                    done,
                }) => {
                    let took = self.swap(inst, instance, def).await;
                    let _ = done.send(took);
                }
            }
        }
    }

    /// Records a crash; returns whether to restart (false: failed, or stopped while waiting).
    async fn crashed(&mut self, reason: String) -> bool {
        let crashes = self.slot.crashes.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::error!(module = %self.slot.name(), error = %reason, crashes, "module crashed");
        self.slot.set_error(reason.clone());
        for job in self.slot.jobs.lock().iter() {
            job.in_flight.store(false, Ordering::Release);
        }
        self.shared
            .system(
                "system.module_crashed",
                self.lifecycle(json!({"error": reason, "crashes": crashes})),
            )
            .await;
        let policy = &self.shared.settings.supervisor;
        let now = Instant::now();
        self.crash_times.push_back(now);
        while self
            .crash_times
            .front()
            .is_some_and(|t| now.duration_since(*t) > policy.window)
        {
            self.crash_times.pop_front();
        }
        let in_window = self.crash_times.len();
        if in_window > policy.max_restarts as usize {
            self.fail(format!(
                "crashed {in_window} times within {}s; last: {reason}",
                policy.window.as_secs()
            ))
            .await;
            return false;
        }
        let exp = u32::try_from(in_window.saturating_sub(1))
            .unwrap_or(u32::MAX)
            .min(20);
        let backoff = policy
            .backoff_initial
            .saturating_mul(1 << exp)
            .min(policy.backoff_max);
        self.slot.set_state(ModuleState::Restarting);
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return true,
                msg = self.rx.recv() => match msg {
                    Some(Control::Stop(done)) => {
                        self.stopped().await;
                        let _ = done.send(());
                        return false;
                    }
                    Some(other) => self.deferred.push_back(other),
                    None => return false,
                }
            }
        }
    }

    async fn fail(&mut self, reason: String) {
        tracing::error!(module = %self.slot.name(), error = %reason, "module failed");
        self.slot.set_error(reason.clone());
        self.slot.set_state(ModuleState::Failed);
        self.unwire();
        self.reject_pending("failed");
        self.shared
            .system(
                "system.module_failed",
                self.lifecycle(json!({"error": reason})),
            )
            .await;
    }

    fn reject_pending(&mut self, state: &str) {
        self.rx.close();
        let mut pending: Vec<Control> = self.deferred.drain(..).collect();
        while let Ok(c) = self.rx.try_recv() {
            pending.push(c);
        }
        for c in pending {
            match c {
                Control::Tool { tool, reply, .. } => {
                    let _ = reply.send(Err(ToolError::Unavailable {
                        tool: format!("{}.{tool}", self.slot.name()),
                        module: self.slot.name().to_owned(),
                        state: state.to_owned(),
                    }));
                }
                Control::Stop(done) => {
                    let _ = done.send(());
                }
                // Dropping `done` tells the reloader the swap did not happen.
                Control::Tick(_) | Control::Swap { .. } => {}
            }
        }
    }

    async fn stopped(&mut self) {
        self.unwire();
        self.reject_pending("stopped");
        self.slot.set_state(ModuleState::Stopped);
        self.shared
            .system("system.module_stopped", self.lifecycle(json!({})))
            .await;
    }

    /// Graceful stop: no new events, drain what is queued (within the stop timeout), shut down.
    async fn stop(&mut self, inst: &mut Box<dyn Module>) {
        self.slot.set_state(ModuleState::Stopping);
        if let Some(sub) = self.wiring.as_ref().and_then(|w| w.sub.as_ref()) {
            sub.unsubscribe();
        }
        let stop_timeout = self.shared.settings.stop_timeout.min(MAX_PERIOD);
        let deadline = Instant::now() + stop_timeout;
        let normal_limit = self.limit;
        while let Some(left) = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        {
            // Each handler gets at most what is left of the stop budget.
            self.limit = normal_limit.min(left);
            let Some(ev) = self
                .wiring
                .as_ref()
                .and_then(|w| w.sub.as_ref())
                .and_then(|s| s.try_recv())
            else {
                break;
            };
            if self.handle_and_ack(inst, ev).await.is_err() {
                break;
            }
        }
        self.limit = normal_limit;
        match guarded(inst.shutdown(&self.cx), stop_timeout).await {
            Outcome::Done(Ok(())) => {}
            Outcome::Done(Err(e)) => self.error(format!("shutdown: {e}")),
            Outcome::TimedOut => self.error("shutdown did not finish in time".into()),
            Outcome::Panicked(m) => self.error(format!("panicked in shutdown: {m}")),
        }
        self.stopped().await;
    }

    async fn run(mut self, mut first: Option<oneshot::Sender<()>>) {
        let mut restarting = false;
        loop {
            let def = self.slot.def();
            // After a crash, the same code again: not whatever the module's files hold now.
            let same_code = if restarting { self.code.clone() } else { None };
            let mut inst = match self.host.instantiate(&def, same_code.as_deref()).await {
                Ok(i) => i,
                Err(e) => {
                    self.fail(format!("cannot load: {e}")).await;
                    break;
                }
            };
            self.code = inst.code_id();
            if self.wiring.is_none() {
                let desc = inst.describe();
                self.wire(desc, None).await;
            }
            if !restarting {
                self.slot.set_state(ModuleState::Starting);
            }
            let init = guarded(inst.initialize(&self.cx), self.limit).await;
            let crash = match init {
                Outcome::Done(Ok(())) => None,
                Outcome::Done(Err(e)) => Some(format!("initialize failed: {e}")),
                Outcome::Panicked(m) => Some(format!("panicked in initialize: {m}")),
                Outcome::TimedOut => Some(format!(
                    "initialize did not finish within {} ms",
                    self.limit.as_millis()
                )),
            };
            if let Some(reason) = crash {
                if let Some(f) = first.take() {
                    let _ = f.send(());
                }
                drop(inst);
                if !self.crashed(reason).await {
                    break;
                }
                restarting = true;
                continue;
            }
            self.slot.set_state(ModuleState::Running);
            if restarting {
                let n = self.slot.restarts.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::info!(module = %self.slot.name(), restarts = n, "module restarted");
                self.shared
                    .system(
                        "system.module_restarted",
                        self.lifecycle(json!({"restarts": n})),
                    )
                    .await;
            } else {
                tracing::info!(module = %self.slot.name(), "module started");
                self.shared
                    .system("system.module_started", self.lifecycle(json!({})))
                    .await;
            }
            if let Some(f) = first.take() {
                let _ = f.send(());
            }
            match self.serve(&mut inst).await {
                Served::Stop(done) => {
                    self.stop(&mut inst).await;
                    let _ = done.send(());
                    break;
                }
                Served::Gone => {
                    self.stopped().await;
                    break;
                }
                Served::Crash(reason) => {
                    drop(inst);
                    if !self.crashed(reason).await {
                        break;
                    }
                    restarting = true;
                }
            }
        }
    }
}

/// Ticks job `idx` of a module: never two runs of one job at once, missed ticks skipped and counted.
async fn schedule(job: Arc<JobStatus>, idx: usize, tx: mpsc::UnboundedSender<Control>) {
    let start = tokio::time::Instant::now() + job.every;
    let mut iv = tokio::time::interval_at(start, job.every);
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last: Option<tokio::time::Instant> = None;
    loop {
        let t = iv.tick().await;
        if let Some(prev) = last {
            let periods = t.duration_since(prev).as_nanos() / job.every.as_nanos().max(1);
            if periods > 1 {
                job.missed.fetch_add(
                    u64::try_from(periods - 1).unwrap_or(u64::MAX),
                    Ordering::Relaxed,
                );
            }
        }
        last = Some(t);
        if job.in_flight.swap(true, Ordering::AcqRel) {
            job.missed.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if tx.send(Control::Tick(idx)).is_err() {
            return;
        }
    }
}

/// Why the nucleus could not be built or asked to do something.
#[derive(Debug, thiserror::Error)]
pub enum NucleusError {
    /// The durable streams failed.
    #[error(transparent)]
    Log(#[from] lotus_bus::LogError),
    /// The state store failed.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// A topic was invalid.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// Outside publishers may not use the nucleus's own namespace.
    #[error("`{0}` is reserved: only the nucleus publishes on `system.*`")]
    Reserved(String),
    /// A builder input was missing.
    #[error("{0}")]
    Setup(String),
    /// No module has this name.
    #[error("no module named `{0}`; `lotus module list` shows them")]
    NoSuchModule(String),
    /// The module is not running, so it cannot be reloaded.
    #[error("module `{module}` is {state}, not running; only a running module can be reloaded")]
    NotRunning {
        /// The module.
        module: String,
        /// Its state.
        state: String,
    },
    /// A module of that name is already loaded.
    #[error("module `{0}` is already loaded; reload it instead")]
    AlreadyLoaded(String),
    /// The module cannot be loaded or removed as asked.
    #[error("module `{module}`: {reason}")]
    Refused {
        /// The module.
        module: String,
        /// Why.
        reason: String,
    },
    /// The new version could not be loaded; the old one keeps running.
    #[error("reloading `{module}` failed, the running version is unchanged: {reason}")]
    ReloadFailed {
        /// The module.
        module: String,
        /// Why.
        reason: String,
    },
}

/// What a reload did.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReloadReport {
    /// The module.
    pub module: String,
    /// Version before.
    pub from_version: String,
    /// Version after.
    pub to_version: String,
    /// Time the mailbox was paused for the swap, in microseconds.
    pub swap_us: u64,
    /// Time for the whole reload (load, compile, initialize, swap), in milliseconds.
    pub total_ms: u64,
}

/// Where the state store keeps the modules switched on or off (module, key).
const SWITCHES: (&str, &str) = ("nucleus", "switched");

/// Builds a nucleus from parts, like plugins: a bus, a durable log, a state store, module hosts.
pub struct NucleusBuilder {
    settings: NucleusSettings,
    bus: Option<LocalBus>,
    log: Option<Arc<dyn DurableLog>>,
    state: Option<StateStore>,
    hosts: Vec<Arc<dyn ModuleHost>>,
    modules_dir: Option<PathBuf>,
    extra: Vec<ModuleDef>,
    router: Option<Arc<Router>>,
}

impl NucleusBuilder {
    /// Starts from settings.
    pub fn new(settings: NucleusSettings) -> Self {
        Self {
            settings,
            bus: None,
            log: None,
            state: None,
            hosts: Vec::new(),
            modules_dir: None,
            extra: Vec::new(),
            router: None,
        }
    }

    /// Uses this bus (default: a new in-process bus).
    pub fn bus(mut self, bus: LocalBus) -> Self {
        self.bus = Some(bus);
        self
    }

    /// Uses this durable log (required).
    pub fn log(mut self, log: Arc<dyn DurableLog>) -> Self {
        self.log = Some(log);
        self
    }

    /// Uses this state store (required).
    pub fn state(mut self, state: StateStore) -> Self {
        self.state = Some(state);
        self
    }

    /// Adds a module host (one per runtime).
    pub fn host(mut self, host: impl ModuleHost) -> Self {
        self.hosts.push(Arc::new(host));
        self
    }

    /// The LLM router modules use through [`Context::chat`](crate::Context::chat) and
    /// [`Context::embed`](crate::Context::embed); without one, those calls fail with
    /// [`LlmError::Unavailable`](crate::LlmError::Unavailable).
    pub fn router(mut self, router: Arc<Router>) -> Self {
        self.router = Some(router);
        self
    }

    /// Discovers module folders under `dir` at start.
    pub fn modules_dir(mut self, dir: PathBuf) -> Self {
        self.modules_dir = Some(dir);
        self
    }

    /// Adds one module definition.
    pub fn module(mut self, def: ModuleDef) -> Self {
        self.extra.push(def);
        self
    }

    /// Builds the nucleus (nothing runs until [`Nucleus::start`]).
    pub fn build(self) -> Result<Nucleus, NucleusError> {
        Ok(Nucleus {
            shared: Arc::new(Shared {
                bus: self.bus.unwrap_or_default(),
                log: self
                    .log
                    .ok_or_else(|| NucleusError::Setup("a durable log is required".into()))?,
                state: self
                    .state
                    .ok_or_else(|| NucleusError::Setup("a state store is required".into()))?,
                settings: self.settings,
                router: self.router,
                hosts: self.hosts,
                modules_dir: self.modules_dir,
                extra: self.extra,
                slots: RwLock::new(BTreeMap::new()),
                broken: RwLock::new(Vec::new()),
                tools: RwLock::new(BTreeMap::new()),
                order: Mutex::new(Vec::new()),
                recorders: Mutex::new(Vec::new()),
                recorder_subs: Mutex::new(Vec::new()),
                cluster: Mutex::new(None),
                switching: tokio::sync::Mutex::new(()),
            }),
        })
    }
}

/// What [`Nucleus::start`] did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct StartReport {
    /// Modules started, in order.
    pub started: Vec<String>,
    /// Modules that could not start, with the reason.
    pub failed: Vec<(String, String)>,
}

/// The kernel. Cheap to clone.
#[derive(Clone)]
pub struct Nucleus {
    shared: Arc<Shared>,
}

impl Nucleus {
    /// Loads every module, resolves dependencies and starts them in order.
    pub async fn start(&self) -> StartReport {
        let sh = &self.shared;
        let mut report = StartReport::default();
        self.start_recorders();
        if sh.cluster.lock().is_none() {
            *sh.cluster.lock() = crate::cluster::join(sh);
        }

        let mut defs: BTreeMap<String, ModuleDef> = BTreeMap::new();
        let mut broken = Vec::new();
        let mut add = |def: ModuleDef, broken: &mut Vec<Broken>| {
            let name = def.name().to_owned();
            if let Some(existing) = defs.get(&name) {
                let path = match &def.origin {
                    Origin::Folder(p) => p.clone(),
                    Origin::Builtin => PathBuf::from("<builtin>"),
                };
                broken.push(Broken {
                    name: name.clone(),
                    error: format!(
                        "module `{name}` is defined twice ({} and {}); rename one",
                        match &existing.origin {
                            Origin::Builtin => "built in".to_owned(),
                            Origin::Folder(p) => p.display().to_string(),
                        },
                        path.display()
                    ),
                    path,
                });
            } else {
                defs.insert(name, def);
            }
        };
        for host in &sh.hosts {
            for d in host.builtins() {
                add(d, &mut broken);
            }
        }
        if let Some(dir) = &sh.modules_dir {
            let found = discover(dir);
            for d in found.modules {
                add(d, &mut broken);
            }
            for (path, e) in found.broken {
                broken.push(Broken {
                    name: path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    path,
                    error: e.to_string(),
                });
            }
        }
        for d in sh.extra.iter().cloned() {
            add(d, &mut broken);
        }
        for b in &broken {
            tracing::error!(module = %b.name, path = %b.path.display(), error = %b.error, "module not loaded");
            report.failed.push((b.name.clone(), b.error.clone()));
        }
        *sh.broken.write() = broken;

        // `enable`/`disable` from the API or the CLI outlast a restart and win over the files.
        let switched = self.switches().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read which modules were switched on or off; using lotus.toml");
            BTreeMap::new()
        });
        let mut enabled = Vec::new();
        {
            let mut slots = sh.slots.write();
            for (name, def) in defs {
                let settings = sh
                    .settings
                    .modules
                    .get(&name)
                    .cloned()
                    .unwrap_or(Value::Null);
                let on = switched.get(&name).copied().unwrap_or_else(|| {
                    def.manifest.config.enabled
                        && settings
                            .get("enabled")
                            .and_then(Value::as_bool)
                            .unwrap_or(true)
                });
                let placement = def.manifest.placement.clone();
                let slot = Arc::new(Slot::new(def, settings));
                if !on {
                    slot.set_state(ModuleState::Disabled);
                } else if !sh.placed_here(&placement) {
                    tracing::info!(module = %name, node = %sh.settings.node, %placement, "not started here: its placement names other nodes");
                    slot.set_state(ModuleState::Elsewhere);
                } else if sh.host_for(slot.def().manifest.runtime).is_none() {
                    let e = format!(
                        "no host for runtime `{}` in this build (available: {})",
                        slot.def().manifest.runtime,
                        sh.hosts
                            .iter()
                            .map(|h| h.runtime().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    slot.set_error(e.clone());
                    slot.set_state(ModuleState::Failed);
                    report.failed.push((name.clone(), e));
                } else {
                    enabled.push(slot.def().manifest);
                }
                slots.insert(name, slot);
            }
        }
        let resolution = deps::resolve(enabled.iter().map(|m| &**m));
        // Everything that will start shows `starting` until it runs (loading a wasm component
        // can take a moment), never `stopped`.
        for name in &resolution.order {
            if let Some(slot) = sh.slots.read().get(name) {
                slot.set_state(ModuleState::Starting);
            }
        }
        for (name, why) in &resolution.errors {
            tracing::error!(module = %name, error = %why, "module not started");
            if let Some(slot) = sh.slots.read().get(name) {
                slot.set_error(why.clone());
                slot.set_state(ModuleState::Failed);
            }
            report.failed.push((name.clone(), why.clone()));
        }
        for name in &resolution.order {
            if self.start_one(name).await {
                report.started.push(name.clone());
            } else {
                let why = self
                    .module(name)
                    .and_then(|m| m.last_error)
                    .unwrap_or_default();
                report.failed.push((name.clone(), why));
            }
        }
        *sh.order.lock() = resolution.order;
        report
    }

    /// Spawns a module's actor and waits (up to the start timeout) for its first initialization.
    async fn start_one(&self, name: &str) -> bool {
        let sh = &self.shared;
        let Some(slot) = sh.slots.read().get(name).cloned() else {
            return false;
        };
        let Some(host) = sh.host_for(slot.def().manifest.runtime) else {
            return false;
        };
        let (tx, rx) = mpsc::unbounded_channel();
        *slot.control.lock() = Some(tx);
        let cx = Context {
            shared: sh.clone(),
            name: lotus_core::event::SmolStr::new(name),
            manifest: slot.def().manifest,
            settings: slot.settings.clone(),
        };
        let actor = Actor {
            shared: sh.clone(),
            slot: slot.clone(),
            host,
            cx,
            rx,
            deferred: VecDeque::new(),
            crash_times: VecDeque::new(),
            wiring: None,
            limit: slot.def().manifest.permissions.limits.call_timeout,
            code: None,
        };
        let (first_tx, first_rx) = oneshot::channel();
        let span = tracing::info_span!("module", module = %name);
        *slot.task.lock() = Some(tokio::spawn(actor.run(Some(first_tx)).instrument(span)));
        let _ = tokio::time::timeout(sh.settings.start_timeout, first_rx).await;
        slot.state() == ModuleState::Running
    }

    fn start_recorders(&self) {
        let sh = &self.shared;
        let mut recorders = sh.recorders.lock();
        if !recorders.is_empty() {
            return;
        }
        let mut subs = sh.recorder_subs.lock();
        for (stream, patterns) in &sh.settings.streams {
            if patterns.is_empty() {
                continue;
            }
            // Block: nothing recorded is ever dropped; SQLite batches far faster than the bus
            // produces durable events, so the ring only absorbs bursts.
            // Each node records what was published on it: a log shared by several nodes then
            // holds every event once.
            let sub = sh.bus.subscribe_scoped(
                &format!("recorder:{stream}"),
                patterns.clone(),
                RECORDER_QUEUE,
                Overflow::Block,
                Scope::Node,
            );
            let queue = sub.queue().clone();
            let log = sh.log.clone();
            let stream = *stream;
            let q = queue.clone();
            let task = tokio::spawn(async move {
                while let Some(ev) = q.pop().await {
                    if let Err(e) = log.append(stream, ev) {
                        tracing::error!(%stream, error = %e, "cannot record event");
                    }
                }
            });
            recorders.push((queue, task));
            subs.push(sub);
        }
    }

    /// Asks a module's actor to stop (it drains its mailbox and runs `shutdown`), waits up to
    /// twice the stop timeout, then ends its task.
    async fn stop_slot(&self, slot: &Slot) {
        let tx = slot.control.lock().take();
        let task = slot.task.lock().take();
        if let Some(tx) = tx {
            let (done, wait) = oneshot::channel();
            if tx.send(Control::Stop(done)).is_ok() {
                let limit = self
                    .shared
                    .settings
                    .stop_timeout
                    .min(MAX_PERIOD)
                    .saturating_mul(2);
                if tokio::time::timeout(limit, wait).await.is_err() {
                    tracing::warn!(module = %slot.name(), "did not stop in time; aborted");
                    slot.set_state(ModuleState::Stopped);
                }
            }
        }
        if let Some(task) = task {
            task.abort();
        }
    }

    /// Stops every module in reverse start order, then flushes the durable streams.
    pub async fn shutdown(&self) -> Result<(), NucleusError> {
        let sh = &self.shared;
        sh.cluster.lock().take();
        let order: Vec<String> = sh.order.lock().clone();
        for name in order.iter().rev() {
            let Some(slot) = sh.slots.read().get(name).cloned() else {
                continue;
            };
            self.stop_slot(&slot).await;
        }
        // Let the recorders take everything published so far, then commit it.
        let subs: Vec<Subscription> = sh.recorder_subs.lock().drain(..).collect();
        for s in &subs {
            s.unsubscribe();
        }
        let recorders: Vec<_> = sh.recorders.lock().drain(..).collect();
        for (_, task) in recorders {
            let _ = task.await;
        }
        drop(subs);
        sh.log.flush().await?;
        Ok(())
    }

    /// Loads the module's current code and manifest (its folder is read again), initializes the
    /// new instance beside the running one, then swaps them between two events. If any step
    /// fails, the running version stays and `system.module_reload_failed` says why.
    pub async fn reload(&self, name: &str) -> Result<ReloadReport, NucleusError> {
        let sh = &self.shared;
        let started = Instant::now();
        let slot = sh.slot(name)?;
        let state = slot.state();
        if state != ModuleState::Running {
            return Err(NucleusError::NotRunning {
                module: name.to_owned(),
                state: state.to_string(),
            });
        }
        let old = slot.def();
        match self.prepare_reload(&slot, &old).await {
            Ok((instance, def)) => {
                let to_version = def.manifest.version.to_string();
                let (done, wait) = oneshot::channel();
                let sent = slot.control.lock().clone().is_some_and(|tx| {
                    tx.send(Control::Swap {
                        instance,
                        def,
                        done,
                    })
                    .is_ok()
                });
                let swapped = match sent {
                    true => tokio::time::timeout(
                        sh.settings.stop_timeout.min(MAX_PERIOD).saturating_mul(2),
                        wait,
                    )
                    .await
                    .ok()
                    .and_then(Result::ok),
                    false => None,
                };
                let Some(swap) = swapped else {
                    return Err(self
                        .reload_failed(
                            &old,
                            "the module stopped before it could take the new version".into(),
                        )
                        .await);
                };
                let report = ReloadReport {
                    module: name.to_owned(),
                    from_version: old.manifest.version.to_string(),
                    to_version,
                    swap_us: u64::try_from(swap.as_micros()).unwrap_or(u64::MAX),
                    total_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                };
                tracing::info!(module = name, from = %report.from_version, to = %report.to_version, swap_us = report.swap_us, "module reloaded");
                sh.system(
                    "system.module_reloaded",
                    serde_json::to_value(&report).unwrap_or_default(),
                )
                .await;
                Ok(report)
            }
            Err(reason) => Err(self.reload_failed(&old, reason).await),
        }
    }

    /// The new definition and an initialized instance of it, or why not.
    async fn prepare_reload(
        &self,
        slot: &Slot,
        old: &ModuleDef,
    ) -> Result<(Box<dyn Module>, ModuleDef), String> {
        let sh = &self.shared;
        let def = match &old.origin {
            Origin::Folder(dir) => {
                let m = Manifest::load(dir).map_err(|e| e.to_string())?;
                if m.name != old.manifest.name || m.runtime != old.manifest.runtime {
                    return Err(format!(
                        "the new manifest names `{}` ({}) but the running module is `{}` ({}); install it as a new module instead",
                        m.name, m.runtime, old.manifest.name, old.manifest.runtime
                    ));
                }
                ModuleDef {
                    manifest: Arc::new(m),
                    origin: old.origin.clone(),
                }
            }
            Origin::Builtin => old.clone(),
        };
        let host = sh
            .host_for(def.manifest.runtime)
            .ok_or_else(|| format!("no host for runtime `{}`", def.manifest.runtime))?;
        let mut instance = host
            .instantiate(&def, None)
            .await
            .map_err(|e| e.to_string())?;
        let cx = Context {
            shared: sh.clone(),
            name: lotus_core::event::SmolStr::new(slot.name()),
            manifest: def.manifest.clone(),
            settings: slot.settings.clone(),
        };
        match guarded(
            instance.initialize(&cx),
            def.manifest.permissions.limits.call_timeout,
        )
        .await
        {
            Outcome::Done(Ok(())) => Ok((instance, def)),
            Outcome::Done(Err(e)) => Err(format!("the new version's initialize failed: {e}")),
            Outcome::Panicked(m) => Err(format!("the new version panicked in initialize: {m}")),
            Outcome::TimedOut => Err("the new version's initialize did not finish in time".into()),
        }
    }

    /// Reports a reload that failed before the nucleus was asked (a failed build in `--dev`):
    /// publishes `system.module_reload_failed`; the running version is unchanged.
    pub async fn report_reload_failure(&self, module: &str, reason: &str) {
        tracing::warn!(
            module,
            error = reason,
            "new version not built; the running version is unchanged"
        );
        self.shared
            .system(
                "system.module_reload_failed",
                json!({"module": module, "error": reason}),
            )
            .await;
    }

    async fn reload_failed(&self, old: &ModuleDef, reason: String) -> NucleusError {
        let module = old.name().to_owned();
        tracing::warn!(module = %module, error = %reason, "reload failed; the running version is unchanged");
        self.shared
            .system(
                "system.module_reload_failed",
                json!({"module": module, "version": old.manifest.version.to_string(), "error": reason}),
            )
            .await;
        NucleusError::ReloadFailed { module, reason }
    }

    /// Loads and starts the module folder `NAME` under the modules folder, while the nucleus runs
    /// (also a module that is loaded but not running). Its dependencies must already be running.
    pub async fn load(&self, name: &str) -> Result<ModuleInfo, NucleusError> {
        let sh = &self.shared;
        let refused = |reason: String| NucleusError::Refused {
            module: name.to_owned(),
            reason,
        };
        // A module that is not running (failed, stopped, disabled) may be loaded again, e.g.
        // once the dependency it was missing runs; a running one is reloaded instead.
        if let Ok(slot) = sh.slot(name)
            && matches!(
                slot.state(),
                ModuleState::Starting
                    | ModuleState::Running
                    | ModuleState::Restarting
                    | ModuleState::Stopping
            )
        {
            return Err(NucleusError::AlreadyLoaded(name.to_owned()));
        }
        let dir = sh
            .modules_dir
            .as_ref()
            .ok_or_else(|| refused("this nucleus has no modules folder".into()))?
            .join(name);
        let manifest = Manifest::load(&dir).map_err(|e| refused(e.to_string()))?;
        if manifest.name.as_str() != name {
            return Err(refused(format!(
                "the folder holds module `{}`",
                manifest.name
            )));
        }
        if sh.host_for(manifest.runtime).is_none() {
            return Err(refused(format!(
                "no host for runtime `{}` in this build",
                manifest.runtime
            )));
        }
        if !sh.placed_here(&manifest.placement) {
            return Err(refused(format!(
                "its placement ({}) does not allow this node (`{}`, labels [{}])",
                manifest.placement,
                sh.settings.node,
                sh.settings.labels.join(", ")
            )));
        }
        self.resolvable(&manifest).map_err(refused)?;
        sh.broken.write().retain(|b| b.name != name);
        let settings = sh
            .settings
            .modules
            .get(name)
            .cloned()
            .unwrap_or(Value::Null);
        let slot = Arc::new(Slot::new(
            ModuleDef {
                manifest: Arc::new(manifest),
                origin: Origin::Folder(dir),
            },
            settings,
        ));
        slot.set_state(ModuleState::Starting);
        sh.slots.write().insert(name.to_owned(), slot);
        sh.order.lock().push(name.to_owned());
        self.start_one(name).await;
        self.module(name)
            .ok_or_else(|| NucleusError::NoSuchModule(name.to_owned()))
    }

    /// Stops a module (draining its mailbox) and forgets it. Refused while a running module
    /// depends on it.
    pub async fn remove(&self, name: &str) -> Result<(), NucleusError> {
        let sh = &self.shared;
        let slot = sh.slot(name)?;
        let dependents = self.dependents(name);
        if !dependents.is_empty() {
            return Err(NucleusError::Refused {
                module: name.to_owned(),
                reason: format!(
                    "{} depend(s) on it; remove them first",
                    dependents.join(", ")
                ),
            });
        }
        self.stop_slot(&slot).await;
        sh.slots.write().remove(name);
        sh.order.lock().retain(|n| n != name);
        Ok(())
    }

    /// The modules switched on or off with [`Nucleus::enable`] and [`Nucleus::disable`].
    async fn switches(&self) -> Result<BTreeMap<String, bool>, NucleusError> {
        match self.shared.state.get(SWITCHES.0, SWITCHES.1).await? {
            Some(v) => serde_json::from_value(v).map_err(|e| {
                NucleusError::Setup(format!(
                    "the saved module switches are damaged ({e}); `lotus module enable|disable` writes them again once the state entry nucleus/switched is deleted"
                ))
            }),
            None => Ok(BTreeMap::new()),
        }
    }

    /// Saves `name` as on or off (the caller holds `switching`). A list that cannot be read is
    /// never overwritten.
    async fn switch(&self, name: &str, on: bool) -> Result<(), NucleusError> {
        let mut all = self.switches().await?;
        all.insert(name.to_owned(), on);
        self.shared
            .state
            .set(
                SWITCHES.0,
                SWITCHES.1,
                &serde_json::to_value(all).unwrap_or_default(),
            )
            .await?;
        Ok(())
    }

    /// Whether `manifest` can start next to the modules running now (the same resolution as at
    /// start): why not, when it cannot.
    fn resolvable(&self, manifest: &Manifest) -> Result<(), String> {
        let running: Vec<Arc<Manifest>> = self
            .shared
            .slots
            .read()
            .values()
            .filter(|s| s.state() == ModuleState::Running)
            .map(|s| s.def().manifest)
            .collect();
        let resolution = deps::resolve(
            running
                .iter()
                .map(|m| &**m)
                .chain(std::iter::once(manifest)),
        );
        match resolution.errors.get(manifest.name.as_str()) {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }

    /// The running modules that depend on `name`.
    fn dependents(&self, name: &str) -> Vec<String> {
        self.shared
            .slots
            .read()
            .values()
            .filter(|s| s.name() != name && s.state() == ModuleState::Running)
            .filter(|s| {
                s.def()
                    .manifest
                    .dependencies
                    .modules
                    .iter()
                    .any(|d| d.name.as_str() == name)
            })
            .map(|s| s.name().to_owned())
            .collect()
    }

    /// Stops a module and keeps it off, also after a restart (until [`Nucleus::enable`]).
    /// Refused while a running module depends on it. A module that is already off stays off.
    pub async fn disable(&self, name: &str) -> Result<ModuleInfo, NucleusError> {
        let _one = self.shared.switching.lock().await;
        let slot = self.shared.slot(name)?;
        if slot.state() == ModuleState::Elsewhere {
            return Err(NucleusError::Refused {
                module: name.to_owned(),
                reason: "it runs on another node; disable it there".into(),
            });
        }
        let dependents = self.dependents(name);
        if !dependents.is_empty() {
            return Err(NucleusError::Refused {
                module: name.to_owned(),
                reason: format!(
                    "{} depend(s) on it; disable them first",
                    dependents.join(", ")
                ),
            });
        }
        self.switch(name, false).await?;
        self.stop_slot(&slot).await;
        slot.set_state(ModuleState::Disabled);
        tracing::info!(module = %name, "disabled");
        self.shared
            .system(
                "system.module_disabled",
                json!({"module": name, "version": slot.def().manifest.version.to_string()}),
            )
            .await;
        Ok(slot.info())
    }

    /// Starts a module that is off (disabled, stopped or failed) and keeps it on, also after a
    /// restart. Its dependencies must run. A module that runs already is left as it is.
    pub async fn enable(&self, name: &str) -> Result<ModuleInfo, NucleusError> {
        let sh = &self.shared;
        let _one = sh.switching.lock().await;
        let slot = sh.slot(name)?;
        let refused = |reason: String| NucleusError::Refused {
            module: name.to_owned(),
            reason,
        };
        match slot.state() {
            ModuleState::Starting
            | ModuleState::Running
            | ModuleState::Restarting
            | ModuleState::Stopping => {
                self.switch(name, true).await?;
                return Ok(slot.info());
            }
            ModuleState::Elsewhere => {
                return Err(refused(
                    "its placement does not allow this node; it runs on a node that matches".into(),
                ));
            }
            ModuleState::Failed | ModuleState::Stopped | ModuleState::Disabled => {}
        }
        let manifest = slot.def().manifest;
        if sh.host_for(manifest.runtime).is_none() {
            return Err(refused(format!(
                "no host for runtime `{}` in this build",
                manifest.runtime
            )));
        }
        self.resolvable(&manifest).map_err(refused)?;
        self.switch(name, true).await?;
        slot.set_state(ModuleState::Starting);
        {
            let mut order = sh.order.lock();
            if !order.iter().any(|n| n == name) {
                order.push(name.to_owned());
            }
        }
        self.start_one(name).await;
        tracing::info!(module = %name, state = %slot.state(), "enabled");
        Ok(slot.info())
    }

    /// Every module (including folders whose manifest is invalid), by name.
    pub fn modules(&self) -> Vec<ModuleInfo> {
        let mut out: Vec<ModuleInfo> = self
            .shared
            .slots
            .read()
            .values()
            .map(|s| s.info())
            .collect();
        if let Some(b) = self.shared.bus.bridge() {
            for m in &mut out {
                m.node = Some(b.node().to_owned());
            }
        }
        for b in self.shared.broken.read().iter() {
            out.push(ModuleInfo {
                name: b.name.clone(),
                version: String::new(),
                runtime: String::new(),
                state: ModuleState::Failed,
                restarts: 0,
                crashes: 0,
                errors: 0,
                last_error: Some(b.error.clone()),
                queue_depth: 0,
                queue_capacity: 0,
                events_handled: 0,
                events_dropped: 0,
                subscriptions: vec![],
                tools: vec![],
                jobs: vec![],
                dependencies: vec![],
                origin: b.path.display().to_string(),
                since: SystemTime::now(),
                node: self.shared.bus.bridge().map(|b| b.node().to_owned()),
            });
        }
        out.extend(self.shared.remote_modules());
        out.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.node.cmp(&b.node)));
        out
    }

    /// One module.
    pub fn module(&self, name: &str) -> Option<ModuleInfo> {
        if let Ok(slot) = self.shared.slot(name) {
            return Some(slot.info());
        }
        self.modules().into_iter().find(|m| m.name == name)
    }

    /// The manifest of a loaded module.
    pub fn manifest(&self, name: &str) -> Option<Arc<Manifest>> {
        self.shared.slots.read().get(name).map(|s| s.def().manifest)
    }

    /// Every registered tool, by name: this node's, then those only other nodes offer.
    pub fn tools(&self) -> Vec<ToolSpec> {
        self.shared.all_tools()
    }

    /// Calls a tool on behalf of an outside client (the API or the CLI), with the tool timeout.
    pub async fn call_tool(&self, tool: &str, args: Value) -> Result<Value, ToolError> {
        self.shared.call_tool(None, tool, args).await
    }

    /// Publishes on behalf of an outside client; `system.*` is refused.
    pub async fn publish(
        &self,
        source: &str,
        topic: &str,
        payload: Value,
    ) -> Result<(Event, Delivery), NucleusError> {
        let topic = Topic::new(topic)?;
        if topic.as_str() == "system" || topic.as_str().starts_with("system.") {
            return Err(NucleusError::Reserved(topic.to_string()));
        }
        let ev = Arc::new(Event::new(topic, source, payload));
        let d = self
            .shared
            .bus
            .publish_within(ev.clone(), EXTERNAL_PUBLISH_WAIT)
            .await;
        Ok(((*ev).clone(), d))
    }

    /// The bus.
    pub fn bus(&self) -> &LocalBus {
        &self.shared.bus
    }

    /// The durable streams.
    pub fn log(&self) -> &Arc<dyn DurableLog> {
        &self.shared.log
    }

    /// Module state.
    pub fn state(&self) -> &StateStore {
        &self.shared.state
    }

    /// The settings in force.
    pub fn settings(&self) -> &NucleusSettings {
        &self.shared.settings
    }
}
