//! The reasoning loop in a real nucleus, driven by a scripted provider: multi-step tool use, a
//! failing tool, a repeated call, the step and token limits, parallel calls, the text protocol.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use lotus_bus::SqliteLog;
use lotus_core::{Event, Manifest, Overflow, Pattern, json};
use lotus_nucleus::{
    Context, ModuleDef, ModuleError, NativeHost, NativeModule, Nucleus, NucleusBuilder,
    NucleusSettings, Origin, StateStore,
};
use lotus_providers::{
    Catalog, ChatRequest, Provider, Reply, Role, Router, RouterConfig, Scripted,
};
use serde_json::Value;

static WEATHER_CALLS: AtomicU32 = AtomicU32::new(0);
static WIPED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Tools for the model to use.
#[derive(Default)]
struct Toolbox;

#[lotus_nucleus::module]
impl Toolbox {
    /// The weather in a city.
    #[tool("weather")]
    async fn weather(&mut self, city: String) -> Result<Value, ModuleError> {
        WEATHER_CALLS.fetch_add(1, Ordering::SeqCst);
        Ok(json!({"city": city, "temp_c": 21}))
    }

    /// Wipes the disk (marked dangerous in the toolbox's manifest).
    #[tool("wipe")]
    async fn wipe(&mut self, disk: String) -> Result<Value, ModuleError> {
        WIPED.lock().expect("wiped").push(disk.clone());
        Ok(json!({"wiped": disk}))
    }

    /// Reads a sensor that is offline.
    #[tool("sensor")]
    async fn sensor(&mut self) -> Result<Value, ModuleError> {
        Err(ModuleError::msg("the sensor is offline"))
    }

    /// Waits, then says when it started and ended (µs since an arbitrary origin).
    #[tool("wait")]
    async fn wait(&mut self, _cx: &Context, ms: u64) -> Result<Value, ModuleError> {
        let origin = *ORIGIN;
        let start = origin.elapsed().as_micros() as u64;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(json!({"start": start, "end": origin.elapsed().as_micros() as u64}))
    }
}

/// What the stand-in memory was told: turns by session, memories remembered.
static TURNS: std::sync::Mutex<Vec<(String, String, String)>> = std::sync::Mutex::new(Vec::new());
static REMEMBERED: std::sync::Mutex<Vec<Value>> = std::sync::Mutex::new(Vec::new());

/// A stand-in for the memory module: it keeps the turns it is told and what it is asked to
/// remember (the real module has its own tests; here the reasoning side is under test).
#[derive(Default)]
struct FakeMemory;

#[lotus_nucleus::module]
impl FakeMemory {
    /// Nothing is recalled.
    #[tool("recall")]
    async fn recall(
        &mut self,
        query: String,
        user: Option<String>,
        k: Option<usize>,
    ) -> Result<Value, ModuleError> {
        let _ = (query, user, k);
        Ok(json!([]))
    }

    /// The user's profile.
    #[tool("profile")]
    async fn profile(&mut self, user: Option<String>) -> Result<Value, ModuleError> {
        let _ = user;
        Ok(json!({"name": "Ada", "timezone": "Europe/Lisbon"}))
    }

    /// A session's turns.
    #[tool("history")]
    async fn history(
        &mut self,
        session: Option<String>,
        user: Option<String>,
        limit: Option<usize>,
    ) -> Result<Value, ModuleError> {
        let _ = (user, limit);
        let turns = TURNS.lock().expect("turns");
        Ok(Value::Array(
            turns
                .iter()
                .filter(|(s, _, _)| Some(s) == session.as_ref())
                .map(|(_, role, text)| json!({"role": role, "text": text}))
                .collect(),
        ))
    }

    /// Keeps a turn.
    #[tool("observe")]
    async fn observe(
        &mut self,
        session: String,
        role: String,
        text: String,
        user: Option<String>,
        meta: Option<Value>,
    ) -> Result<Value, ModuleError> {
        let _ = (user, meta);
        TURNS.lock().expect("turns").push((session, role, text));
        Ok(json!({}))
    }

    /// Keeps a memory.
    #[tool("remember")]
    #[allow(clippy::too_many_arguments)]
    async fn remember(
        &mut self,
        text: String,
        kind: Option<String>,
        user: Option<String>,
        subject: Option<String>,
        attribute: Option<String>,
        importance: Option<f32>,
        source: Option<String>,
        metadata: Option<Value>,
    ) -> Result<Value, ModuleError> {
        let m = json!({"text": text, "kind": kind, "user": user, "subject": subject, "attribute": attribute, "importance": importance, "source": source, "metadata": metadata});
        REMEMBERED.lock().expect("remembered").push(m.clone());
        Ok(json!({"memory": {"id": format!("m{}", REMEMBERED.lock().expect("remembered").len())}}))
    }
}

static ORIGIN: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

fn def(yaml: &str) -> ModuleDef {
    ModuleDef {
        manifest: Arc::new(Manifest::parse(yaml, Path::new("test.yaml")).expect("test manifest")),
        origin: Origin::Builtin,
    }
}

struct Run {
    nucleus: Nucleus,
    script: Arc<Scripted>,
    _dir: tempfile::TempDir,
}

/// A nucleus with the reasoning module, two toolboxes and a scripted model whose catalog entry
/// says it has native tools (`openai:gpt-4o-mini`, served by the script), or not (`local:…`).
async fn nucleus(provider: &str, replies: Vec<Reply>, settings: Value) -> Run {
    let script = Arc::new(Scripted::new(provider, replies));
    let model = if provider == "local" {
        "local:smollm2"
    } else {
        "openai:gpt-4o-mini"
    };
    let (nucleus, dir) = nucleus_with(vec![script.clone()], model, settings, false).await;
    Run {
        nucleus,
        script,
        _dir: dir,
    }
}

/// The same nucleus over any providers, answering as `model` unless told otherwise.
async fn nucleus_with(
    providers: Vec<Arc<dyn Provider>>,
    model: &str,
    settings: Value,
    memory: bool,
) -> (Nucleus, tempfile::TempDir) {
    let mut router = Router::new(
        Catalog::builtin(),
        RouterConfig {
            chain: vec![model.into()],
            retries: 0,
            ..RouterConfig::default()
        },
        None,
    );
    for p in providers {
        router = router.with_provider(p);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let host = NativeHost::new()
        .with(lotus_reasoning::native())
        .expect("manifest")
        .with_entry(
            "toolbox",
            NativeModule {
                manifest: "name: unused\nversion: 0.0.0\ntype: core\n",
                factory: || Box::new(Toolbox),
            },
        )
        .with_entry(
            "fake-memory",
            NativeModule {
                manifest: "name: unused\nversion: 0.0.0\ntype: core\n",
                factory: || Box::new(FakeMemory),
            },
        );
    let mut ns = NucleusSettings {
        tool_timeout: Duration::from_secs(5),
        ..NucleusSettings::default()
    };
    ns.modules.insert("reasoning".into(), settings);
    let mut builder = NucleusBuilder::new(ns);
    if memory {
        builder = builder.module(def(
            "name: memory\nversion: 0.1.0\ntype: core\nentry: fake-memory\n",
        ));
    }
    let nucleus = builder
        .log(Arc::new(
            SqliteLog::open(&dir.path().join("streams.db")).expect("log"),
        ))
        .state(StateStore::open(&dir.path().join("state.db")).expect("state"))
        .host(host)
        .router(Arc::new(router))
        .module(def(
            "name: toolbox\nversion: 0.1.0\ntype: capability\nentry: toolbox\ndangerous: [wipe]\n",
        ))
        .module(def(
            "name: other\nversion: 0.1.0\ntype: capability\nentry: toolbox\n",
        ))
        .build()
        .expect("nucleus");
    nucleus.start().await;
    (nucleus, dir)
}

/// What a task published: its deltas joined, its steps, its response.
struct Told {
    deltas: String,
    steps: Vec<Value>,
    approvals: Vec<Value>,
    response: Value,
}

impl Told {
    fn steps_of(&self, kind: &str) -> Vec<&Value> {
        self.steps.iter().filter(|s| s["kind"] == kind).collect()
    }
}

async fn ask(n: &Nucleus, task: Value) -> Told {
    ask_approving(n, task, None).await
}

/// Runs a task; `approve` answers its approval requests (`None`: leaves them unanswered).
/// Like [`ask`], answering each approval request as `answer` says: published by its source,
/// approving or denying.
async fn ask_approving(n: &Nucleus, task: Value, answer: Option<(&str, bool)>) -> Told {
    let sub = n.bus().subscribe(
        "test",
        [
            "action.response",
            "action.response.delta",
            "cognition.step",
            "cognition.approval_request",
        ]
        .iter()
        .map(|p| Pattern::new(p).expect("pattern"))
        .collect(),
        4096,
        Overflow::Block,
    );
    let (ev, _) = n
        .publish("test", "cognition.task_request", task)
        .await
        .expect("publish");
    let mut told = Told {
        deltas: String::new(),
        steps: Vec::new(),
        approvals: Vec::new(),
        response: Value::Null,
    };
    loop {
        let e: Arc<Event> = tokio::time::timeout(Duration::from_secs(20), sub.recv())
            .await
            .expect("an answer in time")
            .expect("subscription open");
        if e.correlation_id != Some(ev.id) {
            continue;
        }
        match e.topic.as_str() {
            "action.response.delta" => told
                .deltas
                .push_str(e.payload["delta"].as_str().expect("delta")),
            "cognition.step" => told.steps.push(e.payload.clone()),
            "cognition.approval_request" => {
                told.approvals.push(e.payload.clone());
                if let Some((source, yes)) = answer {
                    n.publish(
                        source,
                        "cognition.approval_response",
                        json!({"id": e.payload["id"], "approve": yes, "reason": "not today"}),
                    )
                    .await
                    .expect("answer");
                }
            }
            _ => {
                told.response = e.payload.clone();
                return told;
            }
        }
    }
}

fn last_user_or_tool(req: &ChatRequest) -> String {
    req.messages
        .iter()
        .rev()
        .find(|m| m.role == Role::Tool || m.role == Role::User)
        .map(|m| m.text())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_tool_is_called_and_its_result_answers_the_question() {
    let run = nucleus(
        "openai",
        vec![
            Reply::text("Let me look.").and_call("toolbox__weather", json!({"city": "Lisbon"})),
            Reply::text("It is 21 °C in Lisbon."),
        ],
        json!({}),
    )
    .await;
    let told = ask(
        &run.nucleus,
        json!({"text": "How warm is it in Lisbon?", "session": "s1"}),
    )
    .await;
    let r = &told.response;
    assert_eq!(r["text"], "It is 21 °C in Lisbon.", "{r}");
    assert_eq!(r["stopped"], "answer");
    assert_eq!(r["steps"], 2);
    assert_eq!(r["tool_calls"], 1);
    assert_eq!(r["models"], json!(["openai:gpt-4o-mini"]));
    assert_eq!(r["session"], "s1");
    assert!(r["cost_usd"].as_f64().expect("cost") > 0.0, "priced: {r}");
    assert!(
        told.deltas.ends_with("It is 21 °C in Lisbon."),
        "{}",
        told.deltas
    );
    assert_eq!(told.steps_of("thought")[0]["text"], "Let me look.");
    assert_eq!(told.steps_of("tool_call")[0]["tool"], "toolbox.weather");
    let obs = told.steps_of("observation");
    assert_eq!(obs[0]["ok"], true);
    assert_eq!(obs[0]["result"]["temp_c"], 21);

    let requests = run.script.requests();
    assert_eq!(requests.len(), 2);
    // The tools are offered under provider-safe names, in a stable order, without the hidden
    // ones and without the module's own.
    let names: Vec<&str> = requests[0].tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "other__sensor",
            "other__wait",
            "other__weather",
            "other__wipe",
            "toolbox__sensor",
            "toolbox__wait",
            "toolbox__weather",
            "toolbox__wipe"
        ]
    );
    assert_eq!(requests[0].messages[0].role, Role::System);
    assert!(requests[0].messages[0].text().contains("ASH"));
    assert!(last_user_or_tool(&requests[1]).contains("\"temp_c\":21"));
}

#[tokio::test]
async fn a_dangerous_tool_waits_for_approval_and_is_denied_when_no_one_answers() {
    let run = nucleus(
        "openai",
        vec![
            Reply::call("toolbox__wipe", json!({"disk": "sda"})),
            Reply::text("I did not wipe it: nobody approved."),
        ],
        json!({"approval_timeout": "300ms"}),
    )
    .await;
    let t = Instant::now();
    let told = ask_approving(
        &run.nucleus,
        json!({"text": "Wipe sda.", "session": "a1"}),
        None,
    )
    .await;
    assert!(t.elapsed() >= Duration::from_millis(300), "it waited");
    let r = &told.response;
    assert_eq!(r["stopped"], "answer", "{r}");
    assert_eq!(told.approvals.len(), 1);
    let asked = &told.approvals[0];
    assert_eq!(asked["tool"], "toolbox.wipe");
    assert_eq!(asked["arguments"], json!({"disk": "sda"}));
    assert_eq!(asked["session"], "a1");
    let decided = told.steps_of("approval");
    assert_eq!(decided[0]["approved"], false);
    assert_eq!(decided[0]["id"], asked["id"]);
    let obs = told.steps_of("observation");
    assert_eq!(obs[0]["ok"], false);
    assert!(
        obs[0]["result"]["error"]
            .as_str()
            .expect("why")
            .contains("no one approved"),
        "{obs:?}"
    );
    assert!(
        !WIPED.lock().expect("wiped").contains(&"sda".to_owned()),
        "never run"
    );
    // The waiting is not counted as the engine's own time.
    assert!(
        r["approval_us"].as_u64().expect("approval_us") >= 300_000,
        "{r}"
    );
    assert!(
        r["overhead_us"].as_u64().expect("overhead_us") < 300_000,
        "{r}"
    );
    // Once decided, nothing waits.
    let pending = run
        .nucleus
        .call_tool("reasoning.approvals", json!({}))
        .await
        .expect("list");
    assert_eq!(pending, json!([]));
}

#[tokio::test]
async fn an_approved_call_runs_and_a_denied_one_tells_the_model_why() {
    let run = nucleus(
        "openai",
        vec![
            Reply::call("toolbox__wipe", json!({"disk": "sdb"})),
            Reply::text("Wiped sdb."),
            Reply::call("toolbox__wipe", json!({"disk": "sdc"})),
            Reply::text("Not wiped."),
        ],
        json!({}),
    )
    .await;
    let told = ask_approving(
        &run.nucleus,
        json!({"text": "Wipe sdb."}),
        Some(("cli", true)),
    )
    .await;
    assert_eq!(told.response["text"], "Wiped sdb.");
    assert_eq!(told.steps_of("approval")[0]["approved"], true);
    assert_eq!(
        told.steps_of("observation")[0]["result"],
        json!({"wiped": "sdb"})
    );

    let told = ask_approving(
        &run.nucleus,
        json!({"text": "Wipe sdc."}),
        Some(("cli", false)),
    )
    .await;
    assert_eq!(told.response["text"], "Not wiped.");
    let obs = &told.steps_of("observation")[0];
    assert_eq!(obs["ok"], false);
    let why = obs["result"]["error"].as_str().expect("why");
    assert!(
        why.contains("did not approve") && why.contains("not today"),
        "{why}"
    );
    assert!(last_user_or_tool(&run.script.requests()[3]).contains("not today"));
    // The same tool of a module that does not call it dangerous runs without asking.
    assert!(
        run.nucleus
            .tools()
            .iter()
            .any(|t| t.name == "other.wipe" && !t.dangerous)
    );
    assert!(
        run.nucleus
            .tools()
            .iter()
            .any(|t| t.name == "toolbox.wipe" && t.dangerous)
    );
}

#[tokio::test]
async fn settings_choose_which_tools_wait_and_approvals_answer_through_the_tool() {
    // `approve` adds a tool; `trust` lets a dangerous one run without asking.
    let run = nucleus(
        "openai",
        vec![
            Reply::call("other__weather", json!({"city": "Bern"}))
                .and_call("toolbox__wipe", json!({"disk": "sdd"})),
            Reply::text("Done."),
        ],
        json!({"approve": ["other.weather"], "trust": ["toolbox.wipe"]}),
    )
    .await;
    let n = run.nucleus.clone();
    // A person answers through `reasoning.approve` (what `lotus approve` calls).
    let answering = tokio::spawn(async move {
        loop {
            let pending = n
                .call_tool("reasoning.approvals", json!({}))
                .await
                .expect("list");
            if let Some(p) = pending.as_array().and_then(|a| a.first()) {
                assert_eq!(p["tool"], "other.weather");
                let r = n
                    .call_tool("reasoning.approve", json!({"id": p["id"], "approve": true}))
                    .await
                    .expect("approve");
                assert_eq!(r["approved"], true);
                let again = n
                    .call_tool("reasoning.approve", json!({"id": p["id"], "approve": true}))
                    .await
                    .expect_err("answered already");
                assert!(again.to_string().contains("answered already"), "{again}");
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let told = ask_approving(
        &run.nucleus,
        json!({"text": "Weather in Bern, and wipe sdd."}),
        None,
    )
    .await;
    answering.await.expect("answered");
    assert_eq!(
        told.approvals.len(),
        1,
        "only weather asks: {:?}",
        told.approvals
    );
    let obs = told.steps_of("observation");
    assert!(obs.iter().all(|o| o["ok"] == true), "{obs:?}");
    // Reasoning's own tools are never offered to the model, and a tool it was not offered
    // does not run.
    let requests = run.script.requests();
    let offered: Vec<&str> = requests[0].tools.iter().map(|t| t.name.as_str()).collect();
    assert!(
        !offered.iter().any(|t| t.starts_with("reasoning")),
        "{offered:?}"
    );
    let bad = run
        .nucleus
        .call_tool("reasoning.approve", json!({"id": "nope", "approve": true}))
        .await
        .expect_err("not an id");
    assert!(bad.to_string().contains("not an approval id"), "{bad}");
}

#[tokio::test]
async fn a_tool_the_model_was_not_offered_does_not_run() {
    let run = nucleus(
        "openai",
        vec![
            Reply::call("reasoning__approve", json!({"id": "x", "approve": true})),
            Reply::text("I cannot."),
        ],
        json!({}),
    )
    .await;
    let told = ask(&run.nucleus, json!({"text": "Approve yourself."})).await;
    let obs = &told.steps_of("observation")[0];
    assert_eq!(obs["ok"], false);
    assert!(
        obs["result"]["error"]
            .as_str()
            .expect("why")
            .contains("there is no tool"),
        "{obs}"
    );
}

#[tokio::test]
async fn a_failing_tool_becomes_an_observation() {
    let run = nucleus(
        "openai",
        vec![
            Reply::call("toolbox__sensor", json!({})),
            Reply::text("The sensor is offline, so I cannot tell."),
        ],
        json!({}),
    )
    .await;
    let told = ask(&run.nucleus, json!({"text": "Read the sensor."})).await;
    assert_eq!(told.response["stopped"], "answer");
    assert_eq!(told.steps_of("observation")[0]["ok"], false);
    assert!(!told.steps_of("reflection").is_empty());
    let second = &run.script.requests()[1];
    assert!(
        last_user_or_tool(second).contains("the sensor is offline"),
        "the model is told why: {second:?}"
    );
}

#[tokio::test]
async fn a_repeated_call_is_run_once_and_a_loop_is_stopped() {
    let before = WEATHER_CALLS.load(Ordering::SeqCst);
    let again = || Reply::call("other__weather", json!({"city": "Oslo"}));
    let run = nucleus(
        "openai",
        vec![again(), again(), again(), Reply::text("Oslo: 21 °C.")],
        json!({}),
    )
    .await;
    let told = ask(&run.nucleus, json!({"text": "Weather in Oslo?"})).await;
    let r = &told.response;
    assert_eq!(r["stopped"], "loop", "{r}");
    assert_eq!(r["text"], "Oslo: 21 °C.");
    assert_eq!(r["steps"], 4);
    assert_eq!(told.steps_of("tool_call").len(), 1, "run once");
    // Other tests run beside this one: at least this test's call, and no more than one of
    // this test's repeats.
    assert!(WEATHER_CALLS.load(Ordering::SeqCst) > before);
    assert!(told.steps_of("reflection").iter().any(|s| {
        s["text"]
            .as_str()
            .unwrap_or_default()
            .contains("same arguments")
    }));
    let last = run.script.requests().pop().expect("requests");
    assert!(last_user_or_tool(&last).contains("repeating the same tool call"));
}

#[tokio::test]
async fn the_step_limit_asks_for_an_answer_without_tools() {
    let run = nucleus(
        "openai",
        vec![
            Reply::call("toolbox__weather", json!({"city": "Rome"})),
            Reply::call("toolbox__weather", json!({"city": "Paris"})),
            Reply::text("Rome and Paris are both 21 °C."),
        ],
        json!({}),
    )
    .await;
    let told = ask(
        &run.nucleus,
        json!({"text": "Compare Rome, Paris and Madrid.", "max_steps": 2}),
    )
    .await;
    let r = &told.response;
    assert_eq!(r["stopped"], "step_limit", "{r}");
    assert_eq!(r["steps"], 3);
    assert_eq!(r["text"], "Rome and Paris are both 21 °C.");
    let last = run.script.requests().pop().expect("requests");
    assert!(last_user_or_tool(&last).contains("used all 2 steps"));
}

#[tokio::test]
async fn the_token_budget_stops_the_task() {
    let run = nucleus(
        "openai",
        vec![
            Reply::call("toolbox__weather", json!({"city": "Rome"})).with_usage(90_000, 100),
            Reply::call("toolbox__weather", json!({"city": "Bern"})).with_usage(90_000, 100),
            Reply::text("never reached"),
        ],
        json!({"max_tokens": 150_000}),
    )
    .await;
    let told = ask(&run.nucleus, json!({"text": "Weather everywhere."})).await;
    let r = &told.response;
    assert_eq!(r["stopped"], "budget", "{r}");
    assert_eq!(r["steps"], 2);
    assert!(r["error"].as_str().expect("why").contains("budget"));
    assert_eq!(
        run.script.remaining(),
        1,
        "no call after the budget is spent"
    );
}

#[tokio::test]
async fn independent_calls_run_at_once() {
    let run = nucleus(
        "openai",
        vec![
            Reply::call("toolbox__wait", json!({"ms": 400}))
                .and_call("other__wait", json!({"ms": 400})),
            Reply::text("Both waited."),
        ],
        json!({}),
    )
    .await;
    let told = ask(&run.nucleus, json!({"text": "Wait twice."})).await;
    assert_eq!(told.response["tool_calls"], 2);
    let obs = told.steps_of("observation");
    let (a, b) = (&obs[0]["result"], &obs[1]["result"]);
    let (a0, a1, b0, b1) = (
        a["start"].as_u64().expect("start"),
        a["end"].as_u64().expect("end"),
        b["start"].as_u64().expect("start"),
        b["end"].as_u64().expect("end"),
    );
    assert!(a0 < b1 && b0 < a1, "the two waits overlap: {a} {b}");
}

#[tokio::test]
async fn a_model_without_tool_calling_uses_the_text_protocol() {
    let run = nucleus(
        "local",
        vec![
            Reply::text(
                "Thought: I need the weather.\nAction: weather\nAction Input: {'city': 'Lisbon'}",
            ),
            Reply::text("Action: other.weather\nAction Input: {\"city\": \"Lisbon\""),
            Reply::text("Final Answer: It is 21 °C in Lisbon."),
        ],
        json!({}),
    )
    .await;
    let told = ask(&run.nucleus, json!({"text": "How warm is Lisbon?"})).await;
    let r = &told.response;
    // `weather` names two tools (toolbox's and other's): the model is asked to repair that.
    assert_eq!(r["text"], "It is 21 °C in Lisbon.", "{r}");
    assert_eq!(
        told.deltas, "It is 21 °C in Lisbon.",
        "only the answer streams"
    );
    let requests = run.script.requests();
    assert!(
        requests[0].tools.is_empty(),
        "tools are in the prompt, not the request"
    );
    assert!(requests[0].messages[0].text().contains("Action Input:"));
    assert!(
        last_user_or_tool(&requests[1]).contains("could be any of other.weather, toolbox.weather")
    );
    let call = &told.steps_of("tool_call")[0];
    assert_eq!(call["tool"], "other.weather");
    assert_eq!(call["arguments"], json!({"city": "Lisbon"}));
}

#[tokio::test]
async fn a_bad_task_and_a_missing_model_are_answered_with_a_reason() {
    let run = nucleus("openai", vec![], json!({})).await;
    let told = ask(&run.nucleus, json!({"txt": "typo"})).await;
    assert_eq!(told.response["stopped"], "error");
    assert!(
        told.response["error"]
            .as_str()
            .expect("why")
            .contains("unknown field `txt`")
    );
    let told = ask(
        &run.nucleus,
        json!({"text": "hi", "model": "anthropic:claude-sonnet-4"}),
    )
    .await;
    assert!(
        told.response["error"]
            .as_str()
            .expect("why")
            .contains("cannot be used"),
        "{}",
        told.response
    );
}

fn fixture(name: &str, tool: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../lotus-providers/tests/fixtures")
            .join(name),
    )
    .expect("fixture")
    .replace("get_weather", tool)
}

/// A server at `path` that streams `first` (a tool call), then `then` (the answer) once a
/// request holds `result_marker` (the tool's result).
async fn two_turns(
    path: &str,
    result_marker: &str,
    first: String,
    then: String,
) -> wiremock::MockServer {
    use wiremock::matchers::{body_string_contains, method};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let sse = |body: String| {
        ResponseTemplate::new(200).set_body_raw(body.into_bytes(), "text/event-stream")
    };
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(wiremock::matchers::path(path))
        .and(body_string_contains(result_marker))
        .respond_with(sse(then))
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(wiremock::matchers::path(path))
        .respond_with(sse(first))
        .mount(&server)
        .await;
    server
}

/// The JSON bodies a server received, in order.
async fn bodies(server: &wiremock::MockServer) -> Vec<Value> {
    server
        .received_requests()
        .await
        .expect("recorded")
        .iter()
        .map(|r| serde_json::from_slice(&r.body).expect("json body"))
        .collect()
}

/// Against a real HTTP server speaking OpenAI's wire format: the tool call streamed in
/// fragments, the result sent back under the call's id, the final answer streamed.
#[tokio::test]
async fn end_to_end_over_the_openai_wire() {
    let server = two_turns(
        "/v1/chat/completions",
        "\"role\":\"tool\"",
        fixture("openai-tool.sse", "toolbox__weather"),
        fixture("openai-text.sse", ""),
    )
    .await;
    let http = lotus_providers::http_client().expect("http");
    let openai = lotus_providers::openai::OpenAi::new(
        "openai",
        &format!("{}/v1", server.uri()),
        Some(lotus_providers::Secret::new("sk-test")),
        http,
    );
    let (n, _dir) = nucleus_with(
        vec![Arc::new(openai)],
        "openai:gpt-4o-mini",
        json!({}),
        false,
    )
    .await;
    let told = ask(&n, json!({"text": "What is the weather in Paris?"})).await;
    let r = &told.response;
    assert_eq!(r["text"], "The capital of France is Paris.", "{r}");
    assert_eq!(r["tool_calls"], 1);
    assert_eq!(told.deltas, "The capital of France is Paris.");
    let call = told.steps_of("tool_call")[0];
    assert_eq!(call["tool"], "toolbox.weather");
    assert_eq!(call["arguments"], json!({"city": "Paris"}));
    assert!(r["usage"]["input_tokens"].as_u64().expect("usage") >= 61);

    let bodies = bodies(&server).await;
    assert_eq!(bodies.len(), 2);
    assert_eq!(
        bodies[0]["tools"][6]["function"]["name"],
        "toolbox__weather"
    );
    let messages = bodies[1]["messages"].as_array().expect("messages");
    let result = messages.last().expect("tool result");
    assert_eq!(result["role"], "tool");
    assert_eq!(result["tool_call_id"], "call_F9ZaqPWo69u0urxAhVt8meDW");
    assert!(
        result["content"]
            .as_str()
            .expect("content")
            .contains("\"temp_c\":21")
    );
}

/// The same over Anthropic's Messages API: the tool_use block, its tool_result, and the tools
/// declared again on the call that carries them.
#[tokio::test]
async fn end_to_end_over_the_anthropic_wire() {
    let server = two_turns(
        "/v1/messages",
        "tool_result",
        fixture("anthropic-tool.sse", "other__weather"),
        fixture("anthropic-text.sse", ""),
    )
    .await;
    let http = lotus_providers::http_client().expect("http");
    let anthropic = lotus_providers::anthropic::Anthropic::new(
        &format!("{}/v1", server.uri()),
        Some(lotus_providers::Secret::new("sk-ant-test")),
        http,
    );
    let (n, _dir) = nucleus_with(
        vec![Arc::new(anthropic)],
        "anthropic:claude-sonnet-4",
        json!({}),
        false,
    )
    .await;
    let told = ask(&n, json!({"text": "What is the weather in Paris?"})).await;
    let r = &told.response;
    assert_eq!(r["text"], "The capital of France is Paris.", "{r}");
    assert_eq!(r["models"], json!(["anthropic:claude-sonnet-4"]));
    assert_eq!(told.steps_of("tool_call")[0]["tool"], "other.weather");
    assert!(r["cost_usd"].as_f64().expect("cost") > 0.0);

    let bodies = bodies(&server).await;
    assert_eq!(bodies.len(), 2);
    assert!(bodies[1]["tools"].as_array().is_some_and(|t| t.len() == 8));
    let text = bodies[1]["messages"].to_string();
    assert!(
        text.contains("toolu_01T1x1fJ34qAmk2tNTrN7Up6") && text.contains("temp_c"),
        "{text}"
    );
}

/// Three scripted providers: `openai` answers the configured chain (the cheap tier),
/// `anthropic` is the strong tier (`smart`), `gemini` the third worker (`cheap`).
async fn tiers(
    openai: Vec<Reply>,
    anthropic: Vec<Reply>,
    gemini: Vec<Reply>,
) -> (Nucleus, [Arc<Scripted>; 3], tempfile::TempDir) {
    let scripts = [
        Arc::new(Scripted::new("openai", openai)),
        Arc::new(Scripted::new("anthropic", anthropic)),
        Arc::new(Scripted::new("gemini", gemini)),
    ];
    let providers: Vec<Arc<dyn Provider>> = scripts
        .iter()
        .map(|s| s.clone() as Arc<dyn Provider>)
        .collect();
    let (n, dir) = nucleus_with(providers, "openai:gpt-4o-mini", json!({}), false).await;
    (n, scripts, dir)
}

#[tokio::test]
async fn a_simple_request_goes_to_the_cheap_tier() {
    let (n, [openai, anthropic, _], _dir) =
        tiers(vec![Reply::text("It is noon.")], vec![], vec![]).await;
    let told = ask(&n, json!({"text": "What time is it?"})).await;
    let r = &told.response;
    assert_eq!(r["text"], "It is noon.", "{r}");
    assert_eq!(r["models"], json!(["openai:gpt-4o-mini"]));
    assert_eq!(r["delegation"]["complexity"], "simple");
    assert_eq!(r["delegation"]["tier"], "cheap");
    assert_eq!(told.steps_of("analysis")[0]["model"], "openai:gpt-4o-mini");
    assert_eq!(anthropic.requests().len(), 0);
    assert_eq!(openai.requests().len(), 1);
    // A task that names its model is not delegated.
    openai.push([Reply::text("Noon again.")]);
    let told = ask(
        &n,
        json!({"text": "Compare noon and midnight.", "model": "openai:gpt-4o-mini"}),
    )
    .await;
    assert_eq!(told.response["text"], "Noon again.");
    assert!(
        told.response.get("delegation").is_none(),
        "{}",
        told.response
    );
    assert_eq!(anthropic.requests().len(), 0);
}

#[tokio::test]
async fn a_complex_request_is_split_answered_in_parallel_by_several_providers_and_synthesized() {
    let slow = Duration::from_millis(300);
    let (n, [openai, anthropic, gemini], _dir) = tiers(
        // Part 2 (worker `fast`): a tool call, then its answer.
        vec![
            Reply::call("toolbox__weather", json!({"city": "Lisbon"})).after(slow),
            Reply::text("Lisbon is 21 °C.").with_usage(50, 10),
        ],
        // The plan, part 1 (worker `smart`), then the synthesis.
        vec![
            Reply::text("{\"subtasks\": [\"Compare Rust and Go for CLIs\", \"Weather in Lisbon\", \"Name one editor\"]}"),
            Reply::text("Rust: smaller binaries; Go: faster builds.").after(slow),
            Reply::text("Rust suits small CLIs, Go builds faster; Lisbon is 21 °C; try Helix."),
        ],
        // Part 3 (worker `cheap`).
        vec![Reply::text("Helix.").after(slow).with_usage(20, 2)],
    )
    .await;
    let t = Instant::now();
    let told = ask(
        &n,
        json!({"text": "Compare Rust and Go for CLIs, tell me the weather in Lisbon, and name one editor."}),
    )
    .await;
    let took = t.elapsed();
    let r = &told.response;
    assert_eq!(r["stopped"], "answer", "{r}");
    assert_eq!(
        r["text"],
        "Rust suits small CLIs, Go builds faster; Lisbon is 21 °C; try Helix."
    );
    // Only the synthesis streams.
    assert_eq!(told.deltas, r["text"].as_str().expect("text"));
    // The parts ran side by side: three slow replies take about one wait, not three.
    assert!(took < Duration::from_millis(800), "{took:?}");
    let d = &r["delegation"];
    assert_eq!(d["complexity"], "complex");
    assert_eq!(d["tier"], "strong");
    assert_eq!(d["plan"], "split");
    let parts = d["subtasks"].as_array().expect("subtasks");
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[0]["models"], json!(["anthropic:claude-sonnet-4"]));
    assert_eq!(parts[1]["models"], json!(["openai:gpt-4o-mini"]));
    assert_eq!(parts[2]["models"], json!(["gemini:gemini-2.0-flash"]));
    assert_eq!(parts[1]["steps"], 2, "the part used its tool: {}", parts[1]);
    assert_eq!(parts[2]["usage"]["input_tokens"], 20);
    let models = r["models"].as_array().expect("models");
    assert_eq!(models.len(), 3, "{models:?}");
    // The totals add every run up: plan, three parts (one with two calls), synthesis.
    assert_eq!(r["steps"], 6);
    assert_eq!(r["tool_calls"], 1);
    let part_cost: f64 = parts
        .iter()
        .map(|p| p["cost_usd"].as_f64().expect("cost"))
        .sum();
    assert!(
        r["cost_usd"].as_f64().expect("cost") > part_cost,
        "the plan and synthesis cost too"
    );
    assert!(r["usage"]["input_tokens"].as_u64().expect("tokens") >= 70);
    // The steps say which part they belong to.
    assert_eq!(
        told.steps_of("plan")[0]["subtasks"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    assert_eq!(told.steps_of("subtask").len(), 3);
    assert!(told.steps_of("tool_call").iter().all(|s| s["subtask"] == 2));
    // The synthesis is given every part's answer; each worker only its part.
    let synth = anthropic.requests().pop().expect("synthesis");
    let last = last_user_or_tool(&synth);
    assert!(
        last.contains("Lisbon is 21 °C.")
            && last.contains("Helix.")
            && last.contains("faster builds"),
        "{last}"
    );
    assert!(last_user_or_tool(&gemini.requests()[0]).ends_with("Name one editor"));
    assert!(
        openai.requests()[0]
            .tools
            .iter()
            .any(|t| t.name == "toolbox__weather")
    );
}

#[tokio::test]
async fn a_complex_request_that_is_one_task_goes_to_the_strong_tier() {
    let (n, [openai, anthropic, _], _dir) = tiers(
        vec![],
        vec![
            Reply::text("```json\n{\"subtasks\": []}\n```"),
            Reply::text("Here is the design."),
        ],
        vec![],
    )
    .await;
    let told = ask(&n, json!({"text": "Design a cache for my blog."})).await;
    let r = &told.response;
    assert_eq!(r["text"], "Here is the design.", "{r}");
    assert_eq!(r["delegation"]["plan"], "one task");
    assert_eq!(r["models"], json!(["anthropic:claude-sonnet-4"]));
    assert_eq!(r["steps"], 2);
    assert_eq!(openai.requests().len(), 0);
    // The strong model answers with the tools.
    assert!(!anthropic.requests()[1].tools.is_empty());
}

fn remembered_for(session: &str) -> Vec<Value> {
    REMEMBERED
        .lock()
        .expect("remembered")
        .iter()
        .filter(|m| m["metadata"]["session"] == session)
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_finished_conversation_is_summarized_into_memory() {
    let script = Arc::new(Scripted::new(
        "openai",
        vec![
            Reply::text("Helix is a modal editor."),
            Reply::text("Yes, it is fast."),
            Reply::text("The user asked about Helix; ASH said it is a fast modal editor."),
        ],
    ));
    let (n, _dir) = nucleus_with(vec![script.clone()], "openai:gpt-4o-mini", json!({}), true).await;
    ask(&n, json!({"text": "What is Helix?", "session": "ep1"})).await;
    // Too short yet: nothing is summarized.
    let early = n
        .call_tool("reasoning.end_episode", json!({"session": "ep1"}))
        .await
        .expect("end");
    assert_eq!(early["summarized"], false, "{early}");
    ask(&n, json!({"text": "Is it fast?", "session": "ep1"})).await;
    let done = n
        .call_tool("reasoning.end_episode", json!({"session": "ep1"}))
        .await
        .expect("end");
    assert_eq!(done["summarized"], true, "{done}");
    assert!(
        done["episode"]["summary"]
            .as_str()
            .expect("summary")
            .contains("fast modal editor")
    );
    assert_eq!(done["episode"]["turns"], 4);
    let kept = remembered_for("ep1");
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0]["kind"], "summary");
    assert_eq!(kept[0]["subject"], "conversation ep1");
    assert_eq!(kept[0]["attribute"], "summary");
    assert_eq!(kept[0]["user"], "me");
    assert!(
        kept[0]["text"]
            .as_str()
            .expect("text")
            .starts_with("Conversation of ")
    );
    // The model was shown the whole conversation.
    let asked = last_user_or_tool(&script.requests()[2]);
    assert!(
        asked.contains("user: What is Helix?") && asked.contains("assistant: Yes, it is fast."),
        "{asked}"
    );
    assert!(script.requests()[2].tools.is_empty());
    // The user's profile is in the (stable) system prompt.
    let system = script.requests()[0].messages[0].text();
    assert!(
        system.contains("About the user: name: Ada; timezone: Europe/Lisbon."),
        "{system}"
    );
}

#[tokio::test]
async fn an_idle_session_is_summarized_even_when_no_model_can_write_it() {
    let script = Arc::new(Scripted::new(
        "openai",
        vec![Reply::text("Noted."), Reply::error("the provider is down")],
    ));
    let (n, _dir) = nucleus_with(
        vec![script.clone()],
        "openai:gpt-4o-mini",
        json!({"episode_min_turns": 2, "episode_idle": "50ms", "every": {"episodes": "100ms"}}),
        true,
    )
    .await;
    let sub = n.bus().subscribe(
        "test",
        vec![Pattern::new("cognition.episode").expect("pattern")],
        16,
        Overflow::Block,
    );
    ask(&n, json!({"text": "My bike is blue.", "session": "ep2"})).await;
    let ev = loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), sub.recv())
            .await
            .expect("an episode in time")
            .expect("open");
        if ev.payload["session"] == "ep2" {
            break ev;
        }
    };
    assert_eq!(ev.payload["model"], "none");
    let kept = remembered_for("ep2");
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(
        kept[0]["text"]
            .as_str()
            .expect("text")
            .contains("The user said: My bike is blue."),
        "{kept:?}"
    );
}

/// Only a person answers an approval (through the API or the CLI): an answer another module
/// publishes is ignored, the call is denied when its time runs out, and nothing is left waiting.
#[tokio::test]
async fn an_approval_published_by_a_module_is_ignored() {
    let run = nucleus(
        "openai",
        vec![
            Reply::call("toolbox__wipe", json!({"disk": "sde"})),
            Reply::text("Not wiped."),
        ],
        json!({"approval_timeout": "300ms"}),
    )
    .await;
    let told = ask_approving(
        &run.nucleus,
        json!({"text": "Wipe sde."}),
        Some(("toolbox", true)),
    )
    .await;
    assert_eq!(told.approvals.len(), 1);
    assert_eq!(told.steps_of("approval")[0]["approved"], false);
    let obs = &told.steps_of("observation")[0];
    assert_eq!(obs["ok"], false);
    assert!(
        obs["result"]["error"]
            .as_str()
            .expect("why")
            .contains("no one approved"),
        "{obs}"
    );
    let waiting = run
        .nucleus
        .call_tool("reasoning.approvals", json!({}))
        .await
        .expect("approvals");
    assert_eq!(waiting, json!([]));
}
