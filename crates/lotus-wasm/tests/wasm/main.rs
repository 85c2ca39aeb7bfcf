//! WebAssembly modules compiled from `modules/` and run by a real nucleus: tools, handlers,
//! persisted state, the sandbox's limits and permissions, bad components.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lotus_bus::{SqliteLog, StreamName, StreamQuery, Subscription};
use lotus_core::{Event, Overflow, Pattern, json};
use lotus_nucleus::{
    ModuleError, ModuleState, NativeHost, NativeModule, Nucleus, NucleusBuilder, NucleusSettings,
    StateStore, SupervisorPolicy,
};
use lotus_wasm::WasmHost;
use serde_json::Value;

fn components() -> &'static Path {
    lotus_wasm::testkit::guest_components()
}

#[derive(Default)]
struct Echo;

#[lotus_nucleus::module]
impl Echo {
    /// Returns the text it is given.
    #[tool("echo")]
    async fn echo(&mut self, text: String) -> Result<Value, ModuleError> {
        Ok(json!({ "text": text }))
    }
}

struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Installs `component` as module folder `name` with the given manifest body.
    fn install(&self, name: &str, component: &str, manifest_tail: &str) {
        let folder = self.dir.path().join("modules").join(name);
        std::fs::create_dir_all(&folder).expect("mkdir");
        if !component.is_empty() {
            std::fs::copy(components().join(component), folder.join("module.wasm"))
                .expect("copy component");
        }
        let manifest = format!(
            "name: {name}\nversion: 0.1.0\ntype: capability\nruntime: wasm\nentry: module.wasm\n{manifest_tail}"
        );
        std::fs::write(folder.join("manifest.yaml"), manifest).expect("manifest");
    }

    fn kernel(&self) -> Nucleus {
        let d = self.dir.path();
        let native = NativeHost::new()
            .with(NativeModule {
                manifest: "name: echo\nversion: 0.1.0\ntype: capability\n",
                factory: || Box::new(Echo),
            })
            .expect("echo manifest");
        NucleusBuilder::new(NucleusSettings {
            supervisor: SupervisorPolicy {
                max_restarts: 5,
                window: Duration::from_secs(60),
                backoff_initial: Duration::from_millis(10),
                backoff_max: Duration::from_millis(50),
            },
            tool_timeout: Duration::from_secs(10),
            ..NucleusSettings::default()
        })
        .log(Arc::new(
            SqliteLog::open(&d.join("data/streams.db")).expect("log"),
        ))
        .state(StateStore::open(&d.join("data/state.db")).expect("state"))
        .host(native)
        .host(WasmHost::new(Some(d.join("cache/wasm"))).expect("wasm host"))
        .modules_dir(d.join("modules"))
        .build()
        .expect("nucleus")
    }
}

fn watch(n: &Nucleus, pattern: &str) -> Subscription {
    n.bus().subscribe(
        "test",
        vec![Pattern::new(pattern).expect("pattern")],
        1024,
        Overflow::DropOldest,
    )
}

async fn next(sub: &Subscription) -> Arc<Event> {
    tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .expect("an event within 10 s")
        .expect("open")
}

/// The native echo answers within `limit`, whatever the wasm modules are doing.
async fn echo_answers_within(n: &Nucleus, limit: Duration) {
    let t = Instant::now();
    let out = n
        .call_tool("echo.echo", json!({"text": "alive"}))
        .await
        .expect("echo");
    assert_eq!(out, json!({"text": "alive"}));
    assert!(t.elapsed() < limit, "echo waited {:?}", t.elapsed());
}

/// Waits until the (restarted) hostile module answers again, and checks that it answers right.
async fn assert_hostile_recovers(n: &Nucleus) {
    for _ in 0..200 {
        if let Ok(answer) = n.call_tool("hostile.ok", json!({})).await {
            assert_eq!(answer, json!("fine"));
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the hostile module did not come back within 2 s");
}

#[tokio::test]
async fn a_wasm_module_serves_tools_and_handles_events() {
    let home = Home::new();
    home.install(
        "wecho",
        "echo_wasm.wasm",
        "subscriptions: [wecho.request]\npublications: [wecho.reply]\n",
    );
    let n = home.kernel();
    let report = n.start().await;
    assert!(report.started.contains(&"wecho".to_owned()), "{report:?}");
    let info = n.module("wecho").expect("wecho");
    assert_eq!(
        (info.state, info.runtime.as_str()),
        (ModuleState::Running, "wasm")
    );

    let tool = n
        .tools()
        .into_iter()
        .find(|t| t.name == "wecho.echo")
        .expect("listed");
    assert_eq!(tool.input_schema["required"], json!(["text"]));
    assert_eq!(
        n.call_tool("wecho.echo", json!({"text": "hi"}))
            .await
            .expect("call"),
        json!({"text": "hi"})
    );
    let err = n
        .call_tool("wecho.echo", json!({"txt": "hi"}))
        .await
        .expect_err("bad args");
    assert_eq!(err.code(), "failed", "{err}");

    let replies = watch(&n, "wecho.reply");
    n.publish("test", "wecho.request", json!({"n": 7}))
        .await
        .expect("publish");
    assert_eq!(next(&replies).await.payload, json!({"n": 7}));
    n.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn wasm_state_survives_a_restart_and_compiled_code_is_cached() {
    let home = Home::new();
    home.install("counter", "counter.wasm", "publications: [counter.value]\n");
    {
        let n = home.kernel();
        n.start().await;
        assert_eq!(
            n.call_tool("counter.increment", json!({}))
                .await
                .expect("inc"),
            json!(1)
        );
        assert_eq!(
            n.call_tool("counter.increment", json!({}))
                .await
                .expect("inc"),
            json!(2)
        );
        n.shutdown().await.expect("shutdown");
    }
    let cached: Vec<_> = std::fs::read_dir(home.dir.path().join("cache/wasm"))
        .expect("cache folder")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        .collect();
    assert_eq!(
        cached.len(),
        1,
        "one compiled artifact, named by the component's hash"
    );
    let n = home.kernel();
    n.start().await;
    assert_eq!(
        n.call_tool("counter.get", json!({})).await.expect("get"),
        json!(2)
    );
    assert_eq!(
        n.call_tool("counter.increment", json!({}))
            .await
            .expect("inc"),
        json!(3)
    );
    n.shutdown().await.expect("shutdown");
}

/// The hostile module imports outbound HTTP, so it needs some host granted to load at all.
const HOSTILE: &str = "publications: [hostile.out]\npermissions:\n  hosts: [example.com]\n  limits:\n    call_timeout: 300ms\n    memory_mb: 16\n";

#[tokio::test]
async fn an_infinite_loop_is_stopped_and_others_keep_working() {
    let home = Home::new();
    home.install("hostile", "hostile.wasm", HOSTILE);
    let n = home.kernel();
    n.start().await;
    let n2 = n.clone();
    let started = Instant::now();
    let spin = tokio::spawn(async move { n2.call_tool("hostile.spin", json!({})).await });
    // While the guest spins, the rest of the system answers.
    tokio::time::sleep(Duration::from_millis(50)).await;
    echo_answers_within(&n, Duration::from_millis(250)).await;
    let err = spin.await.expect("join").expect_err("spin must be stopped");
    assert_eq!(err.code(), "crashed", "{err}");
    assert!(err.to_string().contains("limit"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // The supervisor replaced the instance.
    assert_hostile_recovers(&n).await;
    let info = n.module("hostile").expect("hostile");
    assert_eq!((info.crashes, info.restarts), (1, 1), "{info:?}");
    n.shutdown().await.expect("shutdown");
    let mut q = StreamQuery::new(StreamName::ActionLog);
    q.topic = Some(Pattern::new("system.module_crashed").expect("pattern"));
    let audited = n.log().query(q).await.expect("query");
    assert_eq!(audited.len(), 1, "the stopped loop is in the audit trail");
    assert!(
        audited[0].event.payload["error"]
            .as_str()
            .is_some_and(|e| e.contains("limit"))
    );
}

#[tokio::test]
async fn a_memory_bomb_hits_its_cap_and_is_restarted() {
    let home = Home::new();
    home.install("hostile", "hostile.wasm", HOSTILE);
    let n = home.kernel();
    n.start().await;
    let err = n
        .call_tool("hostile.bomb", json!({}))
        .await
        .expect_err("bomb");
    assert_eq!(err.code(), "crashed", "{err}");
    // The supervisor replaced the instance.
    assert_hostile_recovers(&n).await;
    n.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn ungranted_publishes_and_tool_calls_are_denied_and_audited() {
    let home = Home::new();
    home.install("hostile", "hostile.wasm", HOSTILE);
    let n = home.kernel();
    let denials = watch(&n, "system.permission_denied");
    n.start().await;
    let err = n
        .call_tool("hostile.leak", json!({}))
        .await
        .expect_err("leak");
    assert!(
        err.to_string().contains("may not publish on `secret.leak`"),
        "{err}"
    );
    let err = n
        .call_tool("hostile.steal", json!({}))
        .await
        .expect_err("steal");
    assert!(
        err.to_string().contains("may not call `echo.echo`"),
        "{err}"
    );
    let a = next(&denials).await;
    let b = next(&denials).await;
    assert_eq!(
        (a.payload["action"].as_str(), b.payload["action"].as_str()),
        (Some("publish"), Some("call_tool"))
    );
    assert_eq!(
        n.module("hostile").expect("hostile").crashes,
        0,
        "a denial is an error, not a crash"
    );
    n.shutdown().await.expect("shutdown");
    let mut q = StreamQuery::new(StreamName::ActionLog);
    q.topic = Some(Pattern::new("system.permission_denied").expect("pattern"));
    assert_eq!(n.log().query(q).await.expect("query").len(), 2);
}

#[tokio::test]
async fn bad_components_fail_with_a_clear_reason() {
    let home = Home::new();
    home.install("missing", "", "");
    let garbage = home.dir.path().join("modules/garbage");
    home.install("garbage", "", "");
    std::fs::write(garbage.join("module.wasm"), b"not wasm at all").expect("write");
    let n = home.kernel();
    n.start().await;
    let missing = n.module("missing").expect("listed");
    assert_eq!(missing.state, ModuleState::Failed);
    assert!(
        missing
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("cannot read")),
        "{missing:?}"
    );
    let garbage = n.module("garbage").expect("listed");
    assert_eq!(garbage.state, ModuleState::Failed);
    assert!(
        garbage
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("not a valid WebAssembly component")),
        "{garbage:?}"
    );
    assert_eq!(n.module("echo").expect("echo").state, ModuleState::Running);
    n.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn files_network_and_floods_are_contained() {
    let home = Home::new();
    home.install(
        "hostile",
        "hostile.wasm",
        "publications: [hostile.out]\npermissions:\n  hosts: [example.com]\n  limits:\n    call_timeout: 10s\n",
    );
    let n = home.kernel();
    n.start().await;

    let err = n
        .call_tool("hostile.read_file", json!({}))
        .await
        .expect_err("no file access");
    assert!(err.to_string().contains("read failed"), "{err}");
    let err = n
        .call_tool("hostile.connect", json!({}))
        .await
        .expect_err("no network");
    assert!(err.to_string().contains("connect failed"), "{err}");

    // A flood through a slow, drop-oldest watcher: the flood finishes, the watcher loses the
    // oldest events (counted), and the rest of the system keeps answering meanwhile.
    let watcher = n.bus().subscribe(
        "watcher",
        vec![Pattern::new("hostile.out").expect("pattern")],
        64,
        Overflow::DropOldest,
    );
    let n2 = n.clone();
    let flood = tokio::spawn(async move { n2.call_tool("hostile.flood", json!({})).await });
    echo_answers_within(&n, Duration::from_secs(1)).await;
    assert_eq!(flood.await.expect("join").expect("flood"), json!(20000));
    assert_eq!(
        watcher.queue().depth() as u64 + watcher.queue().dropped(),
        20_000
    );
    assert_eq!(n.module("hostile").expect("hostile").crashes, 0);
    n.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_wasm_module_reloads_live_and_a_broken_build_leaves_it_running() {
    let home = Home::new();
    home.install("counter", "counter.wasm", "publications: [counter.value]\n");
    let n = home.kernel();
    let failures = watch(&n, "system.module_reload_failed");
    n.start().await;
    assert_eq!(
        n.call_tool("counter.increment", json!({}))
            .await
            .expect("inc"),
        json!(1)
    );

    // A new version: the manifest says 0.2.0; state carries over through the host store.
    let folder = home.dir.path().join("modules/counter");
    let manifest = std::fs::read_to_string(folder.join("manifest.yaml")).expect("read");
    std::fs::write(
        folder.join("manifest.yaml"),
        manifest.replace("version: 0.1.0", "version: 0.2.0"),
    )
    .expect("write");
    let report = n.reload("counter").await.expect("reload");
    assert_eq!(
        (report.from_version.as_str(), report.to_version.as_str()),
        ("0.1.0", "0.2.0")
    );
    assert_eq!(n.module("counter").expect("counter").version, "0.2.0");
    assert_eq!(
        n.call_tool("counter.increment", json!({}))
            .await
            .expect("inc"),
        json!(2)
    );

    // A broken build: the running version stays, and the failure says why.
    std::fs::write(folder.join("module.wasm"), b"\0asm garbage").expect("write");
    let err = n.reload("counter").await.expect_err("broken");
    assert!(err.to_string().contains("unchanged"), "{err}");
    let f = next(&failures).await;
    assert_eq!(f.payload["module"], "counter");
    assert!(
        f.payload["error"]
            .as_str()
            .is_some_and(|e| e.contains("WebAssembly")),
        "{f:?}"
    );
    assert_eq!(n.module("counter").expect("counter").version, "0.2.0");
    assert_eq!(
        n.call_tool("counter.increment", json!({}))
            .await
            .expect("still running"),
        json!(3)
    );
    n.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasm_module_reloaded_under_load_handles_every_event_once() {
    let home = Home::new();
    // Each event makes the guest publish a reply (nobody listens): real host calls per event.
    home.install(
        "wecho",
        "echo_wasm.wasm",
        "subscriptions: [wecho.request]\npublications: [wecho.reply]\n",
    );
    let n = home.kernel();
    n.start().await;
    const SENT: u64 = 100_000;
    let bus = n.bus().clone();
    let publisher = std::thread::spawn(move || {
        let topic: lotus_core::Topic = "wecho.request".parse().expect("topic");
        for i in 0..SENT {
            bus.publish_blocking(Arc::new(Event::new(topic.clone(), "test", json!(i))));
        }
    });
    for _ in 0..20 {
        n.reload("wecho").await.expect("reload");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    publisher.join().expect("publisher");
    let deadline = Instant::now() + Duration::from_secs(120);
    while n.module("wecho").expect("wecho").events_handled < SENT && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let info = n.module("wecho").expect("wecho");
    assert_eq!(
        info.events_handled, SENT,
        "every event handled exactly once: {info:?}"
    );
    assert_eq!((info.events_dropped, info.crashes), (0, 0), "{info:?}");
    n.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_restart_after_a_crash_runs_the_same_code_whatever_the_file_holds_now() {
    let home = Home::new();
    home.install("hostile", "hostile.wasm", HOSTILE);
    let n = home.kernel();
    n.start().await;
    // The file changes on disk without a reload (an editor, a half-copied build)…
    std::fs::write(
        home.dir.path().join("modules/hostile/module.wasm"),
        b"half-written",
    )
    .expect("write");
    // …then the module crashes: the supervisor restarts the version that was running.
    let err = n
        .call_tool("hostile.spin", json!({}))
        .await
        .expect_err("spin");
    assert_eq!(err.code(), "crashed", "{err}");
    assert_hostile_recovers(&n).await;
    let info = n.module("hostile").expect("hostile");
    assert_eq!(
        (info.state, info.restarts),
        (ModuleState::Running, 1),
        "{info:?}"
    );
    n.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn components_built_against_the_old_api_run_next_to_new_ones() {
    let host = WasmHost::new(None).expect("host");
    let manifest = |name: &str| {
        lotus_core::Manifest::parse(
            &format!(
                "name: {name}\nversion: 0.1.0\ntype: capability\nruntime: wasm\nentry: m.wasm\n"
            ),
            Path::new("manifest.yaml"),
        )
        .expect("manifest")
    };
    let old = host
        .inspect(&components().join("legacy_echo.wasm"), &manifest("old"))
        .expect("0.1.0 is served");
    let new = host
        .inspect(&components().join("echo_wasm.wasm"), &manifest("new"))
        .expect("0.2.0 is served");
    assert_eq!((old.api.as_str(), new.api.as_str()), ("0.1.0", "0.2.0"));

    let home = Home::new();
    let grants = "subscriptions: [wecho.request]\npublications: [wecho.reply]\n";
    home.install("old", "legacy_echo.wasm", grants);
    home.install("new", "echo_wasm.wasm", grants);
    let n = home.kernel();
    n.start().await;
    for name in ["old", "new"] {
        assert_eq!(n.module(name).expect(name).state, ModuleState::Running);
        assert_eq!(
            n.call_tool(&format!("{name}.echo"), json!({"text": name}))
                .await
                .expect("echo"),
            json!({"text": name})
        );
    }
    // One request, two replies: the new module's carries the request's id as correlation.
    let replies = watch(&n, "wecho.reply");
    let (request, _) = n
        .publish("test", "wecho.request", json!({"n": 1}))
        .await
        .expect("publish");
    let (a, b) = (next(&replies).await, next(&replies).await);
    let from_new = if a.source == "new" { a } else { b };
    assert_eq!(from_new.correlation_id, Some(request.id));
    n.shutdown().await.expect("shutdown");
}

/// Calls the `fetch` module's `get` tool.
async fn fetch(n: &Nucleus, url: impl Into<String>) -> Result<Value, lotus_nucleus::ToolError> {
    n.call_tool("fetch.get", json!({ "url": url.into() })).await
}

#[tokio::test]
async fn outbound_http_reaches_granted_hosts_only_and_refusals_are_audited() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let granted = MockServer::start().await;
    let other = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/hello"))
        .respond_with(ResponseTemplate::new(200).set_body_string("hi there"))
        .mount(&granted)
        .await;
    Mock::given(method("GET"))
        .and(path("/away"))
        .respond_with(
            ResponseTemplate::new(302).insert_header("location", format!("{}/secret", other.uri())),
        )
        .mount(&granted)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string("secret"))
        .expect(0)
        .mount(&other)
        .await;

    let home = Home::new();
    let port = granted.address().port();
    home.install(
        "fetch",
        "fetch.wasm",
        &format!("permissions:\n  hosts: [\"127.0.0.1:{port}\"]\n"),
    );
    // The same component with no hosts granted is refused before it runs.
    home.install("nonet", "fetch.wasm", "");
    let n = home.kernel();
    let denials = watch(&n, "system.permission_denied");
    n.start().await;

    let nonet = n.module("nonet").expect("listed");
    assert_eq!(nonet.state, ModuleState::Failed);
    assert!(
        nonet
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("grants no hosts") && e.contains("permissions.hosts")),
        "{nonet:?}"
    );

    let page = fetch(&n, format!("{}/hello", granted.uri()))
        .await
        .expect("a granted host");
    assert_eq!(
        (page["status"].as_u64(), page["body"].as_str()),
        (Some(200), Some("hi there"))
    );

    let err = fetch(&n, format!("{}/secret", other.uri()))
        .await
        .expect_err("another port of the same host");
    assert!(
        err.to_string().contains("may not reach 127.0.0.1:"),
        "{err}"
    );
    let err = fetch(&n, format!("{}/away", granted.uri()))
        .await
        .expect_err("a redirect to an ungranted host");
    assert!(err.to_string().contains("permissions.hosts"), "{err}");
    let err = fetch(&n, "file:///etc/passwd").await.expect_err("not http");
    assert!(
        err.to_string().contains("only http:// and https://"),
        "{err}"
    );

    for _ in 0..2 {
        let d = next(&denials).await;
        assert_eq!(
            (d.payload["module"].as_str(), d.payload["action"].as_str()),
            (Some("fetch"), Some("connect"))
        );
        assert_eq!(
            d.payload["target"].as_str(),
            Some(format!("127.0.0.1:{}", other.address().port()).as_str())
        );
    }
    assert_eq!(n.module("fetch").expect("fetch").crashes, 0);
    n.shutdown().await.expect("shutdown");
    let mut q = StreamQuery::new(StreamName::ActionLog);
    q.topic = Some(Pattern::new("system.permission_denied").expect("pattern"));
    assert_eq!(n.log().query(q).await.expect("query").len(), 2);
}

#[tokio::test]
async fn a_hostile_module_cannot_reach_hosts_beyond_its_grant() {
    let home = Home::new();
    home.install("hostile", "hostile.wasm", HOSTILE);
    let n = home.kernel();
    n.start().await;
    for url in [
        "http://127.0.0.1:6379/",
        "http://example.com.evil.test/",
        "http://[::1]:5432/",
    ] {
        let err = n
            .call_tool("hostile.fetch", json!({ "url": url }))
            .await
            .expect_err(url);
        assert!(err.to_string().contains("may not reach"), "{url}: {err}");
    }
    echo_answers_within(&n, Duration::from_secs(1)).await;
    n.shutdown().await.expect("shutdown");
}
