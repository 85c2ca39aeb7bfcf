//! The nucleus with real modules: tools, ACL, supervision, dependencies, scheduling, persistence.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use lotus_bus::{SqliteLog, StreamName, StreamQuery, Subscription};
use lotus_core::{Event, Manifest, Overflow, Pattern, json};
use lotus_nucleus::{
    Context, ModuleDef, ModuleError, ModuleState, NativeHost, NativeModule, Nucleus,
    NucleusBuilder, NucleusSettings, Origin, StateStore, SupervisorPolicy, ToolError,
};
use parking_lot::Mutex;
use serde_json::Value;

// ---------------------------------------------------------------- test modules

#[derive(Default)]
struct Echo;

#[lotus_nucleus::module]
impl Echo {
    /// Repeats the text back.
    #[tool("echo")]
    async fn echo(&mut self, text: String, times: Option<u32>) -> Result<Value, ModuleError> {
        Ok(json!({ "text": text.repeat(times.unwrap_or(1) as usize) }))
    }

    #[on_event("echo.request")]
    async fn on_request(&mut self, cx: &Context, ev: &Event) -> Result<(), ModuleError> {
        cx.publish("echo.reply", ev.payload.clone()).await?;
        Ok(())
    }
}

#[derive(Default)]
struct Crasher;

#[lotus_nucleus::module]
impl Crasher {
    #[on_event("crash.>")]
    async fn on(&mut self, cx: &Context, ev: Arc<Event>) -> Result<(), ModuleError> {
        if ev.topic.as_str() == "crash.now" {
            panic!("boom on purpose");
        }
        cx.publish("done.crash", ev.payload.clone()).await?;
        Ok(())
    }

    #[tool("fail")]
    async fn fail(&mut self) -> Result<Value, ModuleError> {
        Err(ModuleError::msg("the tool says no"))
    }

    #[tool("panic")]
    async fn panic_tool(&mut self) -> Result<Value, ModuleError> {
        panic!("tool panic on purpose")
    }
}

#[derive(Default)]
struct InitPanic;

#[lotus_nucleus::module]
impl InitPanic {
    async fn initialize(&mut self) -> Result<(), ModuleError> {
        panic!("cannot start");
    }
}

static TICK_RUNNING: AtomicBool = AtomicBool::new(false);
static TICK_OVERLAPS: AtomicU32 = AtomicU32::new(0);

#[derive(Default)]
struct Slow;

#[lotus_nucleus::module]
impl Slow {
    #[periodic(every = "20ms")]
    async fn work(&mut self) -> Result<(), ModuleError> {
        if TICK_RUNNING.swap(true, Ordering::SeqCst) {
            TICK_OVERLAPS.fetch_add(1, Ordering::SeqCst);
        }
        tokio::time::sleep(Duration::from_millis(70)).await;
        TICK_RUNNING.store(false, Ordering::SeqCst);
        Ok(())
    }
}

#[derive(Default)]
struct Ticker {
    n: u64,
}

#[lotus_nucleus::module]
impl Ticker {
    #[periodic(every = "10ms")]
    async fn beat(&mut self, cx: &Context) -> Result<(), ModuleError> {
        self.n += 1;
        if self.n == 3 {
            panic!("third tick panics");
        }
        cx.publish("tick.beat", json!(self.n)).await?;
        Ok(())
    }
}

#[derive(Default)]
struct Intruder;

#[lotus_nucleus::module]
impl Intruder {
    #[on_event("secret.>")]
    async fn snoop(&mut self, _ev: &Event) -> Result<(), ModuleError> {
        Ok(())
    }

    #[on_event("open.go")]
    async fn go(&mut self, cx: &Context, _ev: &Event) -> Result<(), ModuleError> {
        let publish = cx.publish("secret.leak", json!("x")).await;
        let tool = cx.call_tool("echo.echo", json!({"text": "hi"})).await;
        cx.publish(
            "open.result",
            json!({
                "publish_denied": publish.is_err(),
                "tool": tool.err().map(|e| e.code()),
            }),
        )
        .await?;
        Ok(())
    }
}

#[derive(Default)]
struct Caller;

#[lotus_nucleus::module]
impl Caller {
    #[tool("relay")]
    async fn relay(&mut self, cx: &Context, text: String) -> Result<Value, ToolError> {
        cx.call_tool("echo.echo", json!({ "text": text, "times": 2 }))
            .await
    }
}

static STOPS: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[derive(Default)]
struct Orderly;

#[lotus_nucleus::module]
impl Orderly {
    async fn shutdown(&mut self, cx: &Context) -> Result<(), ModuleError> {
        STOPS.lock().push(cx.name().to_owned());
        Ok(())
    }
}

#[derive(Default)]
struct Counter;

#[lotus_nucleus::module]
impl Counter {
    #[tool("bump")]
    async fn bump(&mut self, cx: &Context) -> Result<Value, ModuleError> {
        let n = cx
            .state_get("n")
            .await?
            .and_then(|v| v.as_u64())
            .unwrap_or(0)
            + 1;
        cx.state_set("n", &json!(n)).await?;
        Ok(json!(n))
    }
}

/// Asks the LLMs its manifest names.
#[derive(Default)]
struct Asker;

#[lotus_nucleus::module]
impl Asker {
    #[tool("ask")]
    async fn ask(&mut self, cx: &Context, prompt: String) -> Result<Value, ModuleError> {
        use lotus_nucleus::providers::{ChatRequest, Message};
        let (model, answer) = cx
            .complete(ChatRequest::new(vec![Message::user(prompt)]))
            .await?;
        Ok(json!({ "model": model.to_string(), "text": answer.text }))
    }

    #[tool("embed")]
    async fn embed(&mut self, cx: &Context, text: String) -> Result<Value, ModuleError> {
        let e = cx.embed(vec![text]).await?;
        Ok(json!(e.vectors[0].len()))
    }
}

// ---------------------------------------------------------------- test kernel

fn native(factory: fn() -> Box<dyn lotus_nucleus::Module>) -> NativeModule {
    NativeModule {
        manifest: "name: unused\nversion: 0.0.0\ntype: core\n",
        factory,
    }
}

fn host() -> NativeHost {
    NativeHost::new()
        .with_entry("echo", native(|| Box::new(Echo)))
        .with_entry("crasher", native(|| Box::new(Crasher)))
        .with_entry("init_panic", native(|| Box::new(InitPanic)))
        .with_entry("slow", native(|| Box::new(Slow)))
        .with_entry("ticker", native(|| Box::new(Ticker::default())))
        .with_entry("intruder", native(|| Box::new(Intruder)))
        .with_entry("caller", native(|| Box::new(Caller)))
        .with_entry("orderly", native(|| Box::new(Orderly)))
        .with_entry("counter", native(|| Box::new(Counter)))
        .with_entry("asker", native(|| Box::new(Asker)))
}

fn def(yaml: &str) -> ModuleDef {
    ModuleDef {
        manifest: Arc::new(Manifest::parse(yaml, Path::new("test.yaml")).expect("test manifest")),
        origin: Origin::Builtin,
    }
}

const ECHO: &str = "name: echo\nversion: 0.1.0\ntype: capability\nentry: echo\nsubscriptions: [echo.request]\npublications: [echo.reply]\n";

fn settings() -> NucleusSettings {
    NucleusSettings {
        supervisor: SupervisorPolicy {
            max_restarts: 3,
            window: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
        },
        tool_timeout: Duration::from_secs(5),
        ..NucleusSettings::default()
    }
}

fn kernel(dir: &Path, defs: &[&str]) -> Nucleus {
    let log = SqliteLog::open(&dir.join("streams.db")).expect("log");
    let state = StateStore::open(&dir.join("state.db")).expect("state");
    let mut b = NucleusBuilder::new(settings())
        .log(Arc::new(log))
        .state(state)
        .host(host());
    for d in defs {
        b = b.module(def(d));
    }
    b.build().expect("nucleus")
}

fn watch(n: &Nucleus, pattern: &str) -> Subscription {
    n.bus().subscribe(
        "test",
        vec![Pattern::new(pattern).expect("pattern")],
        4096,
        Overflow::DropOldest,
    )
}

async fn next(sub: &Subscription) -> Arc<Event> {
    tokio::time::timeout(Duration::from_secs(5), sub.recv())
        .await
        .expect("an event within 5 s")
        .expect("subscription open")
}

async fn wait_state(n: &Nucleus, name: &str, want: ModuleState) {
    for _ in 0..500 {
        if n.module(name).is_some_and(|m| m.state == want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{name} never became {want}: {:?}", n.module(name));
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn tools_are_listed_with_derived_schemas_and_callable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = kernel(dir.path(), &[ECHO]);
    let report = n.start().await;
    assert_eq!(report.started, ["echo"]);

    let tools = n.tools();
    let echo = tools
        .iter()
        .find(|t| t.name == "echo.echo")
        .expect("echo.echo listed");
    assert_eq!(echo.description, "Repeats the text back.");
    assert_eq!(echo.input_schema["properties"]["text"]["type"], "string");
    assert_eq!(echo.input_schema["required"], json!(["text"]));

    let out = n
        .call_tool("echo.echo", json!({"text": "hi", "times": 2}))
        .await
        .expect("call");
    assert_eq!(out, json!({"text": "hihi"}));

    let err = n
        .call_tool("echo.echo", json!({"txt": "hi"}))
        .await
        .expect_err("bad args");
    assert!(matches!(err, ToolError::InvalidArguments { .. }), "{err}");
    assert!(err.to_string().contains("txt"), "{err}");
    let err = n
        .call_tool("echo.echo", json!("hi"))
        .await
        .expect_err("not an object");
    assert!(err.to_string().contains("JSON object"), "{err}");
    let err = n
        .call_tool("echo.nope", json!({}))
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), "not_found");
    n.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn handlers_receive_and_publish_within_grants() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = kernel(dir.path(), &[ECHO]);
    n.start().await;
    let replies = watch(&n, "echo.reply");
    n.publish("test", "echo.request", json!({"x": 1}))
        .await
        .expect("publish");
    assert_eq!(next(&replies).await.payload, json!({"x": 1}));
    assert_eq!(n.module("echo").expect("echo").events_handled, 1);
    n.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn outside_publishers_cannot_use_the_system_namespace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = kernel(dir.path(), &[]);
    let err = n
        .publish("api", "system.heartbeat", json!(null))
        .await
        .expect_err("reserved");
    assert!(err.to_string().contains("reserved"), "{err}");
    let err = n
        .publish("api", "bad..topic", json!(null))
        .await
        .expect_err("invalid");
    assert!(err.to_string().contains("empty token"), "{err}");
}

#[tokio::test]
async fn acl_denies_publish_subscribe_and_tools_and_audits_each() {
    let dir = tempfile::tempdir().expect("tempdir");
    let intruder = "name: intruder\nversion: 0.1.0\ntype: capability\nentry: intruder\nsubscriptions: [open.go]\npublications: [open.result]\n";
    let n = kernel(dir.path(), &[ECHO, intruder]);
    let denials = watch(&n, "system.permission_denied");
    n.start().await;

    // `secret.>` handler is not covered by `subscriptions`.
    let d = next(&denials).await;
    assert_eq!(d.payload["module"], "intruder");
    assert_eq!(d.payload["action"], "subscribe");
    assert_eq!(d.payload["target"], "secret.>");
    let got = n
        .publish("test", "secret.plans", json!(1))
        .await
        .expect("publish")
        .1;
    assert_eq!(got.matched, 0, "the intruder must not receive secret.*");

    let results = watch(&n, "open.result");
    n.publish("test", "open.go", json!(null))
        .await
        .expect("publish");
    let r = next(&results).await;
    assert_eq!(
        r.payload,
        json!({"publish_denied": true, "tool": "permission_denied"})
    );
    let mut actions = vec![];
    for _ in 0..2 {
        let d = next(&denials).await;
        actions.push(d.payload["action"].as_str().unwrap_or_default().to_owned());
    }
    actions.sort();
    assert_eq!(actions, ["call_tool", "publish"]);

    n.shutdown().await.expect("shutdown");
    let mut q = StreamQuery::new(StreamName::ActionLog);
    q.topic = Some(Pattern::new("system.permission_denied").expect("pattern"));
    assert_eq!(
        n.log().query(q).await.expect("query").len(),
        3,
        "every denial is in action_log"
    );
}

#[tokio::test]
async fn granted_tool_calls_between_modules_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let caller = "name: caller\nversion: 0.1.0\ntype: capability\nentry: caller\npermissions:\n  tools: [\"echo.*\"]\n";
    let n = kernel(dir.path(), &[ECHO, caller]);
    n.start().await;
    let out = n
        .call_tool("caller.relay", json!({"text": "ab"}))
        .await
        .expect("relay");
    assert_eq!(out, json!({"text": "abab"}));
    n.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_crashing_module_restarts_while_others_keep_working() {
    let dir = tempfile::tempdir().expect("tempdir");
    let crasher = "name: crasher\nversion: 0.1.0\ntype: capability\nentry: crasher\nsubscriptions: [\"crash.>\"]\npublications: [done.crash]\n";
    let n = kernel(dir.path(), &[ECHO, crasher]);
    let restarted = watch(&n, "system.module_restarted");
    let done = watch(&n, "done.crash");
    let replies = watch(&n, "echo.reply");
    n.start().await;

    n.publish("test", "crash.now", json!(null))
        .await
        .expect("publish");
    // Published while the crasher is down: it waits in the mailbox, it is not lost.
    n.publish("test", "crash.later", json!("kept"))
        .await
        .expect("publish");
    // The other module is unaffected.
    n.publish("test", "echo.request", json!("still here"))
        .await
        .expect("publish");
    assert_eq!(next(&replies).await.payload, json!("still here"));
    assert_eq!(
        n.call_tool("echo.echo", json!({"text": "ok"}))
            .await
            .expect("echo"),
        json!({"text": "ok"})
    );

    let r = next(&restarted).await;
    assert_eq!(r.payload["module"], "crasher");
    assert_eq!(next(&done).await.payload, json!("kept"));
    let info = n.module("crasher").expect("crasher");
    assert_eq!(
        (info.state, info.restarts, info.crashes),
        (ModuleState::Running, 1, 1)
    );
    assert!(
        info.last_error
            .as_deref()
            .is_some_and(|e| e.contains("boom on purpose")),
        "{info:?}"
    );

    // A tool that errors is an error, not a crash; a tool that panics is a crash.
    let err = n
        .call_tool("crasher.fail", json!({}))
        .await
        .expect_err("fails");
    assert_eq!(err.code(), "failed");
    assert!(err.to_string().contains("the tool says no"));
    let err = n
        .call_tool("crasher.panic", json!({}))
        .await
        .expect_err("panics");
    assert_eq!(err.code(), "crashed");
    assert!(err.is_retryable());
    let r = next(&restarted).await;
    assert_eq!(r.payload["restarts"], 2);

    n.shutdown().await.expect("shutdown");
    let crashes = n
        .log()
        .query({
            let mut q = StreamQuery::new(StreamName::ModuleEvents);
            q.topic = Some(Pattern::new("system.module_crashed").expect("pattern"));
            q
        })
        .await
        .expect("query");
    assert_eq!(crashes.len(), 2, "crashes are recorded in module_events");
}

#[tokio::test]
async fn too_many_crashes_mark_a_module_failed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = "name: doomed\nversion: 0.1.0\ntype: capability\nentry: init_panic\n";
    let n = kernel(dir.path(), &[ECHO, bad]);
    let failed = watch(&n, "system.module_failed");
    let report = n.start().await;
    assert!(report.started.contains(&"echo".to_owned()));
    let f = next(&failed).await;
    assert_eq!(f.payload["module"], "doomed");
    assert!(
        f.payload["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot start")),
        "{f:?}"
    );
    let info = n.module("doomed").expect("doomed");
    assert_eq!(info.state, ModuleState::Failed);
    assert_eq!(info.crashes, 4, "max_restarts 3 → failed on the 4th crash");
    assert_eq!(n.module("echo").expect("echo").state, ModuleState::Running);
    n.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_panicking_periodic_job_is_a_supervised_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ticker = "name: ticker\nversion: 0.1.0\ntype: capability\nentry: ticker\npublications: [tick.beat]\n";
    let n = kernel(dir.path(), &[ticker]);
    let beats = watch(&n, "tick.beat");
    let restarted = watch(&n, "system.module_restarted");
    n.start().await;
    assert_eq!(next(&beats).await.payload, json!(1));
    assert_eq!(next(&beats).await.payload, json!(2));
    next(&restarted).await;
    // A fresh instance counts from zero again.
    assert_eq!(next(&beats).await.payload, json!(1));
    n.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn periodic_jobs_never_overlap_and_missed_ticks_are_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let slow = "name: slow\nversion: 0.1.0\ntype: capability\nentry: slow\n";
    let n = kernel(dir.path(), &[slow]);
    n.start().await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let info = n.module("slow").expect("slow");
    let job = &info.jobs[0];
    assert_eq!(TICK_OVERLAPS.load(Ordering::SeqCst), 0);
    assert!(job.runs >= 3, "{job:?}");
    assert!(
        job.missed >= job.runs,
        "a 70 ms job every 20 ms misses most ticks: {job:?}"
    );
    n.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn dependency_errors_name_the_chain_and_spare_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = "name: a\nversion: 0.1.0\ntype: core\nentry: orderly\ndependencies:\n  modules: [b]\n";
    let b =
        "name: b\nversion: 0.1.0\ntype: core\nentry: orderly\ndependencies:\n  modules: [ghost]\n";
    let x = "name: x\nversion: 0.1.0\ntype: core\nentry: orderly\ndependencies:\n  modules: [y]\n";
    let y = "name: y\nversion: 0.1.0\ntype: core\nentry: orderly\ndependencies:\n  modules: [x]\n";
    let n = kernel(dir.path(), &[ECHO, a, b, x, y]);
    let report = n.start().await;
    assert_eq!(report.started, ["echo"]);
    let a = n.module("a").expect("a");
    assert_eq!(a.state, ModuleState::Failed);
    assert_eq!(
        a.last_error.as_deref(),
        Some("a → b → ghost: module `ghost` is not installed or not enabled")
    );
    assert_eq!(
        n.module("x").and_then(|m| m.last_error).as_deref(),
        Some("dependency cycle: x → y → x")
    );
    n.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn modules_stop_in_reverse_start_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = |name: &str, prio: &str, deps: &str| {
        format!(
            "name: {name}\nversion: 0.1.0\ntype: core\nentry: orderly\npriority: {prio}\ndependencies:\n  modules: [{deps}]\n"
        )
    };
    let (base, mid, top, solo) = (
        m("base", "low", ""),
        m("mid", "normal", "base"),
        m("top", "critical", "mid"),
        m("solo", "critical", ""),
    );
    let n = kernel(dir.path(), &[&top, &base, &solo, &mid]);
    let report = n.start().await;
    assert_eq!(report.started, ["solo", "base", "mid", "top"]);
    n.shutdown().await.expect("shutdown");
    assert_eq!(*STOPS.lock(), ["top", "mid", "base", "solo"]);
    assert!(n.modules().iter().all(|m| m.state == ModuleState::Stopped));
}

#[tokio::test]
async fn state_and_streams_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let counter = "name: counter\nversion: 0.1.0\ntype: capability\nentry: counter\n";
    {
        let n = kernel(dir.path(), &[counter]);
        n.start().await;
        assert_eq!(
            n.call_tool("counter.bump", json!({})).await.expect("bump"),
            json!(1)
        );
        assert_eq!(
            n.call_tool("counter.bump", json!({})).await.expect("bump"),
            json!(2)
        );
        n.shutdown().await.expect("shutdown");
    }
    let n = kernel(dir.path(), &[counter]);
    n.start().await;
    assert_eq!(
        n.call_tool("counter.bump", json!({})).await.expect("bump"),
        json!(3)
    );
    n.shutdown().await.expect("shutdown");
    let events = n
        .log()
        .query(StreamQuery::new(StreamName::ModuleEvents))
        .await
        .expect("query");
    let topics: Vec<&str> = events.iter().map(|e| e.event.topic.as_str()).collect();
    assert_eq!(
        topics,
        [
            "system.module_started",
            "system.module_stopped",
            "system.module_started",
            "system.module_stopped"
        ]
    );
    let calls = n
        .log()
        .query(StreamQuery::new(StreamName::ActionLog))
        .await
        .expect("query");
    assert_eq!(calls.len(), 3, "every tool call is audited");
}

#[tokio::test]
async fn drop_oldest_mailbox_counts_what_it_drops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let slow_echo = "name: echo\nversion: 0.1.0\ntype: capability\nentry: echo\nsubscriptions: [echo.request]\npublications: [echo.reply]\npermissions:\n  limits:\n    queue: 2\n    overflow: drop_oldest\n";
    let n = kernel(dir.path(), &[slow_echo]);
    n.start().await;
    wait_state(&n, "echo", ModuleState::Running).await;
    // Publish from a plain thread faster than the actor can drain.
    let bus = n.bus().clone();
    std::thread::spawn(move || {
        for i in 0..2000 {
            bus.publish_blocking(Arc::new(Event::new(
                "echo.request".parse().expect("topic"),
                "t",
                json!(i),
            )));
        }
    })
    .join()
    .expect("publisher");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let info = n.module("echo").expect("echo");
    assert_eq!(info.events_handled + info.events_dropped, 2000, "{info:?}");
    n.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_module_with_an_unknown_entry_fails_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ghost = "name: ghost\nversion: 0.1.0\ntype: capability\nentry: nonexistent\n";
    let n = kernel(dir.path(), &[ghost]);
    n.start().await;
    let info = n.module("ghost").expect("ghost");
    assert_eq!(info.state, ModuleState::Failed);
    assert!(
        info.last_error
            .as_deref()
            .is_some_and(|e| e.contains("no native module `nonexistent`")),
        "{info:?}"
    );
}

#[tokio::test]
async fn broken_module_folders_are_reported_not_fatal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let modules = dir.path().join("modules");
    std::fs::create_dir_all(modules.join("good")).expect("mkdir");
    std::fs::create_dir_all(modules.join("bad")).expect("mkdir");
    std::fs::write(
        modules.join("good/manifest.yaml"),
        ECHO.replace("name: echo", "name: good"),
    )
    .expect("write");
    std::fs::write(
        modules.join("bad/manifest.yaml"),
        "name: bad\nversion: x\ntype: core\n",
    )
    .expect("write");
    let log = SqliteLog::open(&dir.path().join("streams.db")).expect("log");
    let n = NucleusBuilder::new(settings())
        .log(Arc::new(log))
        .state(StateStore::open(&dir.path().join("state.db")).expect("state"))
        .host(host())
        .modules_dir(modules)
        .build()
        .expect("nucleus");
    let report = n.start().await;
    assert_eq!(report.started, ["good"]);
    let bad = n.module("bad").expect("bad listed");
    assert_eq!(bad.state, ModuleState::Failed);
    assert!(
        bad.last_error
            .as_deref()
            .is_some_and(|e| e.contains("key `version`")),
        "{bad:?}"
    );
    n.shutdown().await.expect("shutdown");
}

#[derive(Default)]
struct Sleepy;

#[lotus_nucleus::module]
impl Sleepy {
    #[on_event("system.>")]
    async fn on_system(&mut self, _ev: &Event) -> Result<(), ModuleError> {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(())
    }
}

#[tokio::test]
async fn a_module_stuck_on_a_full_mailbox_never_stalls_the_kernel() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sleepy = "name: sleepy\nversion: 0.1.0\ntype: capability\nentry: sleepy\nsubscriptions: [\"system.>\"]\npermissions:\n  limits:\n    queue: 1\n    call_timeout: 1h\n";
    let log = SqliteLog::open(&dir.path().join("streams.db")).expect("log");
    let n = NucleusBuilder::new(settings())
        .log(Arc::new(log))
        .state(StateStore::open(&dir.path().join("state.db")).expect("state"))
        .host(host().with_entry("sleepy", native(|| Box::new(Sleepy))))
        .module(def(ECHO))
        .module(def(sleepy))
        .build()
        .expect("nucleus");
    n.start().await;
    // Every tool call publishes `system.tool_called`, which the stuck module cannot take.
    let started = std::time::Instant::now();
    for i in 0..5 {
        let out = n
            .call_tool("echo.echo", json!({"text": i.to_string()}))
            .await
            .expect("echo");
        assert_eq!(out["text"], i.to_string());
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(n.module("sleepy").expect("sleepy").events_dropped >= 3);
}

static TALLY: Mutex<Option<std::collections::HashSet<uuid::Uuid>>> = Mutex::new(None);
static TALLY_DUPES: AtomicU32 = AtomicU32::new(0);

#[derive(Default)]
struct Tally;

#[lotus_nucleus::module]
impl Tally {
    #[on_event("load.>")]
    async fn count(&mut self, ev: &Event) -> Result<(), ModuleError> {
        let mut seen = TALLY.lock();
        if !seen.get_or_insert_with(Default::default).insert(ev.id) {
            TALLY_DUPES.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_under_load_loses_nothing_and_handles_nothing_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tally = "name: tally\nversion: 0.1.0\ntype: capability\nentry: tally\nsubscriptions: [\"load.>\"]\n";
    let log = SqliteLog::open(&dir.path().join("streams.db")).expect("log");
    let n = NucleusBuilder::new(settings())
        .log(Arc::new(log))
        .state(StateStore::open(&dir.path().join("state.db")).expect("state"))
        .host(host().with_entry("tally", native(|| Box::new(Tally))))
        .module(def(tally))
        .build()
        .expect("nucleus");
    n.start().await;
    const SENT: usize = 100_000;
    let bus = n.bus().clone();
    let publisher = std::thread::spawn(move || {
        let topic: lotus_core::Topic = "load.test".parse().expect("topic");
        for i in 0..SENT {
            bus.publish_blocking(Arc::new(Event::new(topic.clone(), "test", json!(i))));
        }
    });
    let mut swaps = Vec::new();
    for _ in 0..20 {
        let report = n.reload("tally").await.expect("reload");
        swaps.push(report.swap_us);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    publisher.join().expect("publisher");
    for _ in 0..1000 {
        if TALLY.lock().as_ref().map_or(0, |s| s.len()) == SENT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        TALLY.lock().as_ref().map_or(0, |s| s.len()),
        SENT,
        "every event handled"
    );
    assert_eq!(
        TALLY_DUPES.load(Ordering::SeqCst),
        0,
        "no event handled twice"
    );
    let info = n.module("tally").expect("tally");
    assert_eq!(info.events_handled as usize, SENT);
    assert_eq!(info.events_dropped, 0);
    swaps.sort_unstable();
    eprintln!(
        "swap µs: p50 {} max {}",
        swaps[swaps.len() / 2],
        swaps[swaps.len() - 1]
    );
    n.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn reload_errors_are_clear() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = kernel(
        dir.path(),
        &[
            ECHO,
            "name: doomed\nversion: 0.1.0\ntype: capability\nentry: init_panic\n",
        ],
    );
    n.start().await;
    let err = n.reload("ghost").await.expect_err("unknown");
    assert!(err.to_string().contains("no module named `ghost`"), "{err}");
    wait_state(&n, "doomed", ModuleState::Failed).await;
    let err = n.reload("doomed").await.expect_err("not running");
    assert!(err.to_string().contains("not running"), "{err}");
    let report = n
        .reload("echo")
        .await
        .expect("a builtin reloads with a fresh instance");
    assert_eq!(
        (report.from_version.as_str(), report.to_version.as_str()),
        ("0.1.0", "0.1.0")
    );
    assert_eq!(
        n.call_tool("echo.echo", json!({"text": "after"}))
            .await
            .expect("echo"),
        json!({"text": "after"})
    );
    n.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn loading_a_module_at_run_time_checks_its_dependencies_like_start_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let modules = dir.path().join("modules");
    std::fs::create_dir_all(modules.join("needy")).expect("mkdir");
    std::fs::write(
        modules.join("needy/manifest.yaml"),
        "name: needy\nversion: 0.1.0\ntype: capability\nentry: echo\ndependencies:\n  modules: [\"ghost\"]\n",
    )
    .expect("write");
    let n = NucleusBuilder::new(settings())
        .log(Arc::new(
            SqliteLog::open(&dir.path().join("streams.db")).expect("log"),
        ))
        .state(StateStore::open(&dir.path().join("state.db")).expect("state"))
        .host(host())
        .module(def(ECHO))
        .modules_dir(modules.clone())
        .build()
        .expect("nucleus");
    n.start().await;
    assert_eq!(
        n.module("needy").expect("listed").state,
        ModuleState::Failed
    );
    // Loading again names the missing dependency the same way start did.
    let err = n.load("needy").await.expect_err("missing dependency");
    assert!(
        err.to_string()
            .contains("needy → ghost: module `ghost` is not installed or not enabled"),
        "{err}"
    );
    std::fs::write(
        modules.join("needy/manifest.yaml"),
        "name: needy\nversion: 0.1.0\ntype: capability\nentry: echo\ndependencies:\n  modules: [\"echo@^0.1\"]\n",
    )
    .expect("write");
    let info = n.load("needy").await.expect("echo runs, so needy loads");
    assert_eq!(info.state, ModuleState::Running);
    let err = n.remove("echo").await.expect_err("needy depends on echo");
    assert!(err.to_string().contains("needy"), "{err}");
    n.remove("needy").await.expect("remove needy");
    n.remove("echo").await.expect("then echo");
    n.shutdown().await.expect("shutdown");
}

/// A module's `providers` block is its fallback chain: the first model fails, the next answers,
/// and the ledger books both under the module. A module without the block is refused (audited).
#[tokio::test]
async fn modules_reach_llms_through_their_manifest_chain() {
    use lotus_nucleus::providers::{Catalog, Ledger, Provider, Router, RouterConfig, Secret};
    use lotus_nucleus::providers::{ollama::Ollama, openai::OpenAi};
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let fixture = |name: &str| {
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../lotus-providers/tests/fixtures")
                .join(name),
        )
        .expect("fixture")
    };
    let (failing, answering) = (MockServer::start().await, MockServer::start().await);
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503).set_body_string("overloaded"))
        .mount(&failing)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/chat"))
        .respond_with(ResponseTemplate::new(200).set_body_string(fixture("ollama-text.ndjson")))
        .mount(&answering)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/embed"))
        .respond_with(ResponseTemplate::new(200).set_body_string(
            r#"{"model":"nomic-embed-text","embeddings":[[0.1,0.2,0.3]],"prompt_eval_count":3}"#,
        ))
        .mount(&answering)
        .await;
    let http = lotus_nucleus::providers::http_client().expect("http");
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = Arc::new(Ledger::open(&dir.path().join("ledger.db")).expect("ledger"));
    let providers: Vec<Arc<dyn Provider>> = vec![
        Arc::new(OpenAi::new(
            "openai",
            &format!("{}/v1", failing.uri()),
            Some(Secret::new("sk-test")),
            http.clone(),
        )),
        Arc::new(Ollama::new(&answering.uri(), http)),
    ];
    let router = providers.into_iter().fold(
        Router::new(
            Catalog::builtin(),
            RouterConfig {
                chain: vec!["ollama:llama3.2".into()],
                retries: 0,
                ..RouterConfig::default()
            },
            Some(ledger.clone()),
        ),
        Router::with_provider,
    );

    let asker = "name: asker\nversion: 0.1.0\ntype: core\nentry: asker\nproviders:\n  primary: openai:gpt-4o-mini\n  fallback: [default]\n  embed: ollama:nomic-embed-text\n";
    let log = SqliteLog::open(&dir.path().join("streams.db")).expect("log");
    let state = StateStore::open(&dir.path().join("state.db")).expect("state");
    let n = NucleusBuilder::new(settings())
        .log(Arc::new(log))
        .state(state)
        .host(host())
        .router(Arc::new(router))
        .module(def(asker))
        .module(def(
            "name: mute\nversion: 0.1.0\ntype: core\nentry: asker\n",
        ))
        .build()
        .expect("nucleus");
    let denials = watch(&n, "system.permission_denied");
    n.start().await;

    let out = n
        .call_tool(
            "asker.ask",
            json!({"prompt": "What is the capital of France?"}),
        )
        .await
        .expect("ask");
    assert_eq!(out["model"], "ollama:llama3.2");
    assert!(
        out["text"].as_str().expect("text").contains("Paris"),
        "{out}"
    );
    assert_eq!(
        n.call_tool("asker.embed", json!({"text": "cat"}))
            .await
            .expect("embed"),
        json!(3)
    );

    let err = n
        .call_tool("mute.ask", json!({"prompt": "hi"}))
        .await
        .expect_err("no providers block");
    assert!(err.to_string().contains("add a `providers` block"), "{err}");
    let d = next(&denials).await;
    assert_eq!(
        (&d.payload["module"], &d.payload["action"]),
        (&json!("mute"), &json!("llm"))
    );
    n.shutdown().await.expect("shutdown");

    let db = rusqlite::Connection::open(dir.path().join("ledger.db")).expect("ledger");
    let mut rows: Vec<(String, String, String)> = db
        .prepare("SELECT provider, module, outcome FROM calls ORDER BY id")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect();
    rows.sort();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows.iter().all(|r| r.1 == "asker"), "{rows:?}");
    assert_eq!(
        rows.iter()
            .filter(|r| r.0 == "openai" && r.2 != "ok")
            .count(),
        1,
        "{rows:?}"
    );
    assert_eq!(
        rows.iter()
            .filter(|r| r.0 == "ollama" && r.2 == "ok")
            .count(),
        2,
        "{rows:?}"
    );
}

/// Switching a module off and on: its dependents hold it on, two enables at once start one
/// actor (each event handled once), and the choice outlasts a restart.
#[tokio::test]
async fn modules_switched_off_and_on_stay_so_and_start_once() {
    const NEEDS_ECHO: &str = "name: needy\nversion: 0.1.0\ntype: capability\nentry: counter\ndependencies:\n  modules: [\"echo\"]\n";
    let dir = tempfile::tempdir().expect("tempdir");
    let n = kernel(dir.path(), &[ECHO, NEEDS_ECHO]);
    n.start().await;
    let err = n.disable("echo").await.expect_err("needy depends on echo");
    assert!(err.to_string().contains("needy"), "{err}");
    let info = n.disable("needy").await.expect("disable needy");
    assert_eq!(info.state, ModuleState::Disabled);
    let info = n.disable("echo").await.expect("now echo");
    assert_eq!(info.state, ModuleState::Disabled);
    assert!(
        n.call_tool("echo.echo", json!({"text": "x"}))
            .await
            .is_err()
    );
    let err = n.enable("needy").await.expect_err("echo is off");
    assert!(err.to_string().contains("echo"), "{err}");

    // Two enables at once: one actor, so a request is answered once.
    let (a, b) = tokio::join!(n.enable("echo"), n.enable("echo"));
    assert_eq!(a.expect("enable").state, ModuleState::Running);
    assert_eq!(b.expect("enable").state, ModuleState::Running);
    let replies = watch(&n, "echo.reply");
    n.publish("test", "echo.request", json!({"n": 1}))
        .await
        .expect("publish");
    assert_eq!(next(&replies).await.payload, json!({"n": 1}));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), replies.recv())
            .await
            .is_err(),
        "a second actor answered too"
    );
    n.shutdown().await.expect("shutdown");

    // After a restart: echo on (switched on), needy off (switched off), whatever the manifests say.
    let n = kernel(dir.path(), &[ECHO, NEEDS_ECHO]);
    let report = n.start().await;
    assert_eq!(report.started, ["echo"]);
    assert_eq!(
        n.module("needy").expect("needy").state,
        ModuleState::Disabled
    );
    assert_eq!(
        n.enable("needy").await.expect("enable").state,
        ModuleState::Running
    );
    assert!(n.enable("ghost").await.is_err());
    n.shutdown().await.expect("shutdown");
}
