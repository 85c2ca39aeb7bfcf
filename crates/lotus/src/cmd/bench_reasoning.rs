//! `lotus bench reasoning`: what the reasoning loop costs per step, apart from the model. A
//! local OpenAI-compatible server plays the model (a tool call per step, then an answer) and
//! times its own work; a nucleus with the reasoning module and a `bench.lookup` tool runs
//! multi-step tasks against it. Per step: (task time − the server's time) / model calls — so
//! the HTTP client, the stream parsing, the bus events, the tool call and the bookkeeping all
//! count as LOTUS's. With `--langgraph`, `bench/langgraph_react.py` runs the same task through
//! LangGraph's ReAct agent against the same server in the same run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use axum::body::Bytes;
use hdrhistogram::Histogram;
use lotus_core::{Event, Manifest, Overflow, Pattern};
use lotus_nucleus::{
    Context, ModuleDef, ModuleError, NativeHost, NativeModule, NucleusBuilder, NucleusSettings,
    Origin,
};
use serde_json::{Value, json};

use super::bench::{load_avg, tempfile_dir, us};
use crate::cli::BenchReasoningArgs;

/// What the mock server did: requests answered and the time it spent on them.
#[derive(Default)]
struct Served {
    requests: AtomicU64,
    nanos: AtomicU64,
}

/// One streamed chunk of an OpenAI chat completion.
fn chunk(delta: Value, finish: Option<&str>) -> String {
    let c = json!({
        "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": "bench-mock",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    });
    format!("data: {c}\n\n")
}

/// The model's answer to `body`: a call of the request's first tool while fewer than
/// `steps - 1` tool results are in the conversation, then a short answer. Streamed or whole,
/// as asked.
fn answer(body: &[u8], steps: usize) -> (bool, String) {
    let req: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let results = req["messages"]
        .as_array()
        .map_or(0, |m| m.iter().filter(|m| m["role"] == "tool").count());
    let tool = req["tools"][0]["function"]["name"]
        .as_str()
        .map(str::to_owned);
    let stream = req["stream"].as_bool().unwrap_or(false);
    let usage = json!({"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110});
    let call = tool.filter(|_| results + 1 < steps).map(|name| {
        (
            format!("call_{results}"),
            name,
            json!({"key": format!("k{results}")}).to_string(),
        )
    });
    if !stream {
        let message = match &call {
            Some((id, name, args)) => json!({"role": "assistant", "content": null,
                "tool_calls": [{"id": id, "type": "function", "function": {"name": name, "arguments": args}}]}),
            None => json!({"role": "assistant", "content": "All keys found."}),
        };
        let finish = if call.is_some() { "tool_calls" } else { "stop" };
        let r = json!({"id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "bench-mock",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage});
        return (false, r.to_string());
    }
    let mut out = String::new();
    match call {
        Some((id, name, args)) => {
            out.push_str(&chunk(
                json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
                None,
            ));
            out.push_str(&chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": args}}]}),
                None,
            ));
            out.push_str(&chunk(json!({}), Some("tool_calls")));
        }
        None => {
            for piece in ["All ", "keys ", "found."] {
                out.push_str(&chunk(json!({"content": piece}), None));
            }
            out.push_str(&chunk(json!({}), Some("stop")));
        }
    }
    let u = json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": "bench-mock", "choices": [], "usage": usage});
    out.push_str(&format!("data: {u}\n\ndata: [DONE]\n\n"));
    (true, out)
}

/// Starts the mock; its base URL (`…/v1`).
async fn mock(steps: usize, served: Arc<Served>) -> Result<String> {
    let stats = served.clone();
    let app = axum::Router::new()
        .route(
            "/v1/chat/completions",
            axum::routing::post(move |body: Bytes| {
                let served = served.clone();
                async move {
                    let t = Instant::now();
                    let (stream, text) = answer(&body, steps);
                    served.requests.fetch_add(1, Ordering::Relaxed);
                    served
                        .nanos
                        .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    let ty = if stream {
                        "text/event-stream"
                    } else {
                        "application/json"
                    };
                    ([(axum::http::header::CONTENT_TYPE, ty)], text)
                }
            }),
        )
        .route(
            "/stats",
            axum::routing::get(move || {
                let s = stats.clone();
                async move {
                    axum::Json(json!({
                        "requests": s.requests.load(Ordering::Relaxed),
                        "server_ns": s.nanos.load(Ordering::Relaxed),
                    }))
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}/v1", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(base)
}

/// The tool the bench's tasks call.
#[derive(Default)]
struct Lookup;

#[lotus::module]
impl Lookup {
    /// Looks a key up.
    #[tool("lookup")]
    async fn lookup(&mut self, _cx: &Context, key: String) -> Result<Value, ModuleError> {
        Ok(json!({"key": key, "value": key.len()}))
    }
}

/// A quantile of nanoseconds, in milliseconds to 0.1 µs.
fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    (h.value_at_quantile(q) as f64 / 100.0).round() / 10_000.0
}

/// Runs `lotus bench reasoning`.
pub async fn run(home: &crate::home::Home, args: BenchReasoningArgs) -> Result<()> {
    let steps = args.steps.max(1);
    let served = Arc::new(Served::default());
    let base = mock(steps, served.clone()).await?;
    let http = lotus_providers::http_client().map_err(|e| anyhow!("{e}"))?;
    let provider = Arc::new(lotus_providers::openai::OpenAi::new(
        "openai",
        &base,
        Some(lotus_providers::Secret::new("sk-bench")),
        http,
    ));
    let router = lotus_providers::Router::new(
        lotus_providers::Catalog::builtin(),
        lotus_providers::RouterConfig {
            chain: vec!["openai:bench-mock".into()],
            retries: 0,
            ..lotus_providers::RouterConfig::default()
        },
        None,
    )
    .with_provider(provider);
    let (nucleus, dir) = bench_nucleus(
        router,
        json!({"memory": false, "max_steps": steps + 1, "concurrency": 1}),
    )
    .await?;
    let sub = nucleus.bus().subscribe(
        "bench",
        vec![Pattern::new("action.response")?],
        1024,
        Overflow::Block,
    );
    let mut per_step = Histogram::<u64>::new(3)?;
    let mut engine = Histogram::<u64>::new(3)?;
    let mut task_hist = Histogram::<u64>::new(3)?;
    let started = Instant::now();
    let total = args.tasks + args.tasks / 10;
    for i in 0..total {
        let before = served.nanos.load(Ordering::Relaxed);
        let t = Instant::now();
        let (ev, _) = nucleus
            .publish(
                "bench",
                "cognition.task_request",
                json!({"text": "Look up the keys.", "session": format!("b{i}")}),
            )
            .await?;
        let r: Arc<Event> = loop {
            let e = tokio::time::timeout(Duration::from_secs(30), sub.recv())
                .await
                .map_err(|_| anyhow!("no answer within 30 s"))?
                .ok_or_else(|| anyhow!("the bus closed"))?;
            if e.correlation_id == Some(ev.id) {
                break e;
            }
        };
        let wall = t.elapsed().as_nanos() as u64;
        let p = &r.payload;
        if p["stopped"] != "answer" || p["steps"].as_u64() != Some(steps as u64) {
            return Err(anyhow!("the bench task did not run as scripted: {p}"));
        }
        if i < total - args.tasks {
            continue; // warm-up
        }
        let server = served.nanos.load(Ordering::Relaxed) - before;
        per_step.record(wall.saturating_sub(server) / steps as u64)?;
        engine.record(p["overhead_us"].as_u64().unwrap_or(0) * 1000 / steps as u64)?;
        task_hist.record(wall)?;
    }
    let elapsed = started.elapsed();
    drop(sub);
    nucleus.shutdown().await?;
    let _ = std::fs::remove_dir_all(&dir);
    let mut out = json!({
        "benchmark": "reasoning",
        "tasks": args.tasks,
        "steps_per_task": steps,
        "overhead_per_step_p50_us": us(&per_step, 0.5),
        "overhead_per_step_p99_us": us(&per_step, 0.99),
        "engine_overhead_per_step_p50_us": us(&engine, 0.5),
        "task_p50_ms": ms(&task_hist, 0.5),
        "tasks_per_s": (total as f64 / elapsed.as_secs_f64() * 10.0).round() / 10.0,
        "load": load_avg(),
    });
    if args.langgraph {
        let lg = langgraph(&base, args.tasks, steps, &served).await?;
        let p50 = lg["overhead_per_step_p50_us"].as_f64().unwrap_or(0.0);
        out["langgraph"] = lg;
        if out["overhead_per_step_p50_us"].as_f64().unwrap_or(0.0) > 0.0 {
            out["langgraph_ratio_p50"] = json!(
                (p50 / out["overhead_per_step_p50_us"].as_f64().unwrap_or(1.0) * 10.0).round()
                    / 10.0
            );
        }
    }
    if args.local > 0 {
        #[cfg(feature = "local")]
        {
            out["local"] = local_first_token(home, args.local).await?;
        }
        #[cfg(not(feature = "local"))]
        return Err(anyhow!("this lotus was built without the `local` feature"));
    }
    #[cfg(not(feature = "local"))]
    let _ = home;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        if let Some(l) = out.get("local") {
            println!(
                "local model through the loop: first token p50 {} ms, whole answer p50 {} ms ({} tasks; the first, which loads the model, {} ms)",
                l["first_token_p50_ms"], l["answer_p50_ms"], l["tasks"], l["first_task_ms"]
            );
        }
        println!(
            "reasoning overhead per step: p50 {} µs, p99 {} µs ({} tasks of {} steps, {} tasks/s; load {})",
            out["overhead_per_step_p50_us"],
            out["overhead_per_step_p99_us"],
            args.tasks,
            steps,
            out["tasks_per_s"],
            out["load"]
        );
        if let Some(r) = out.get("langgraph_ratio_p50") {
            println!(
                "LangGraph on the same server: p50 {} µs per step ({r}× LOTUS)",
                out["langgraph"]["overhead_per_step_p50_us"]
            );
        }
    }
    Ok(())
}

/// Runs `bench/langgraph_react.py` against the mock: its per-task wall times, less the server's
/// time over the same span, per model call.
async fn langgraph(base: &str, tasks: usize, steps: usize, served: &Served) -> Result<Value> {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/langgraph_react.py");
    let before = (
        served.requests.load(Ordering::Relaxed),
        served.nanos.load(Ordering::Relaxed),
    );
    let (path, base) = (script.clone(), base.to_owned());
    // The mock keeps serving on the runtime while the script runs on a blocking thread.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(&path)
            .args([base, tasks.to_string()])
            .output()
    })
    .await?
    .map_err(|e| anyhow!("cannot run python3 {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(anyhow!(
            "{} failed (install its packages: pip install -r bench/requirements-langgraph.txt): {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let r: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| anyhow!("{} printed no JSON: {e}", script.display()))?;
    let walls: Vec<u64> = r["task_ns"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let calls = served.requests.load(Ordering::Relaxed) - before.0;
    let server = served.nanos.load(Ordering::Relaxed) - before.1;
    let measured = r["measured"].as_u64().unwrap_or(walls.len() as u64).max(1);
    let warm = r["warmup"].as_u64().unwrap_or(0);
    // The server time is spread evenly over every task the script ran (warm-up included).
    let server_per_task = server / (measured + warm).max(1);
    let mut h = Histogram::<u64>::new(3)?;
    for w in &walls {
        h.record(w.saturating_sub(server_per_task) / steps as u64)?;
    }
    Ok(json!({
        "tasks": walls.len(),
        "model_calls": calls,
        "overhead_per_step_p50_us": us(&h, 0.5),
        "overhead_per_step_p99_us": us(&h, 0.99),
        "versions": r["versions"],
    }))
}

/// A nucleus with the reasoning module (settings `reasoning`) on `router` and the `bench.lookup`
/// tool, in a fresh folder (returned, for removal).
async fn bench_nucleus(
    router: lotus_providers::Router,
    reasoning: Value,
) -> Result<(lotus_nucleus::Nucleus, std::path::PathBuf)> {
    let dir = tempfile_dir()?;
    let host = NativeHost::new()
        .with(lotus::builtin::reasoning())
        .map_err(|e| anyhow!("{e}"))?
        .with_entry(
            "lookup",
            NativeModule {
                manifest: "name: unused\nversion: 0.0.0\ntype: core\n",
                factory: || Box::new(Lookup),
            },
        );
    let mut settings = NucleusSettings::default();
    settings.modules.insert("reasoning".into(), reasoning);
    let nucleus = NucleusBuilder::new(settings)
        .log(Arc::new(lotus_bus::SqliteLog::open(
            &dir.join("streams.db"),
        )?))
        .state(lotus_nucleus::StateStore::open(&dir.join("state.db"))?)
        .host(host)
        .router(Arc::new(router))
        .module(ModuleDef {
            manifest: Arc::new(Manifest::parse(
                "name: bench\nversion: 0.1.0\ntype: capability\nentry: lookup\n",
                std::path::Path::new("<bench>"),
            )?),
            origin: Origin::Builtin,
        })
        .build()?;
    nucleus.start().await;
    Ok((nucleus, dir))
}

/// Time to the first streamed token of an answer from the local model, through the whole
/// reasoning path (task event, context, router, model, delta event), and to the whole answer.
#[cfg(feature = "local")]
async fn local_first_token(home: &crate::home::Home, tasks: usize) -> Result<Value> {
    if !lotus_local::ready(&home.models(), lotus_local::CHAT_MODEL) {
        return Err(anyhow!(
            "the local chat model is not installed: run `lotus model pull smollm2` first"
        ));
    }
    let router = lotus_providers::Router::new(
        lotus_providers::Catalog::builtin(),
        lotus_providers::RouterConfig {
            chain: vec![format!("local:{}", lotus_local::CHAT_MODEL)],
            retries: 0,
            timeout: Duration::from_secs(300),
            ..lotus_providers::RouterConfig::default()
        },
        None,
    )
    .with_provider(Arc::new(lotus_local::LocalProvider::new(&home.models())));
    let (nucleus, dir) = bench_nucleus(router, json!({"memory": false})).await?;
    let sub = nucleus.bus().subscribe(
        "bench",
        vec![
            Pattern::new("action.response")?,
            Pattern::new("action.response.delta")?,
        ],
        4096,
        Overflow::Block,
    );
    let mut first = Histogram::<u64>::new(3)?;
    let mut whole = Histogram::<u64>::new(3)?;
    // The first task loads the model: measured apart.
    let mut load_ms = 0.0;
    for i in 0..=tasks {
        let t = Instant::now();
        let (ev, _) = nucleus
            .publish(
                "bench",
                "cognition.task_request",
                json!({"text": "What is the capital of France?", "tools": false, "session": format!("l{i}")}),
            )
            .await?;
        let mut ttft = None;
        loop {
            let e = tokio::time::timeout(Duration::from_secs(300), sub.recv())
                .await
                .map_err(|_| anyhow!("no answer within 300 s"))?
                .ok_or_else(|| anyhow!("the bus closed"))?;
            if e.correlation_id != Some(ev.id) {
                continue;
            }
            if e.topic.as_str() == "action.response.delta" {
                ttft.get_or_insert(t.elapsed());
                continue;
            }
            if e.payload["stopped"] != "answer" {
                return Err(anyhow!("the local model did not answer: {}", e.payload));
            }
            break;
        }
        let ttft = ttft.ok_or_else(|| anyhow!("the answer did not stream"))?;
        if i == 0 {
            load_ms = t.elapsed().as_secs_f64() * 1000.0;
            continue;
        }
        first.record(ttft.as_nanos() as u64)?;
        whole.record(t.elapsed().as_nanos() as u64)?;
    }
    drop(sub);
    nucleus.shutdown().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(json!({
        "model": format!("local:{}", lotus_local::CHAT_MODEL),
        "tasks": tasks,
        "first_task_ms": (load_ms * 10.0).round() / 10.0,
        "first_token_p50_ms": ms(&first, 0.5),
        "first_token_p99_ms": ms(&first, 0.99),
        "answer_p50_ms": ms(&whole, 0.5),
    }))
}
