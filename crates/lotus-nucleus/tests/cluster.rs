//! Three nuclei on one real Redis bus: placement, events and tool calls across nodes, and a
//! durable task handled once though two nodes host its module.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Node;
use lotus_bus::SqliteLog;
use lotus_bus_redis::testing::{drop_namespace, namespace, redis_url};
use lotus_core::{Event, Manifest, Pattern, json};
use lotus_nucleus::{
    Context, ModuleDef, ModuleError, ModuleState, NativeHost, NativeModule, NucleusBuilder,
    NucleusSettings, Origin, StateStore,
};
use parking_lot::Mutex;
use serde_json::Value;

/// Every `job.run` handled, with the node that handled it.
static HANDLED: Mutex<Vec<(String, u64)>> = Mutex::new(Vec::new());

struct Gpu {
    node: String,
}

#[lotus_nucleus::module]
impl Gpu {
    /// Says which node it runs on.
    #[tool("whereami")]
    async fn whereami(&mut self) -> Result<Value, ModuleError> {
        Ok(json!({"node": self.node}))
    }

    #[on_event("job.run")]
    async fn run(&mut self, cx: &Context, ev: &Event) -> Result<(), ModuleError> {
        HANDLED.lock().push((
            self.node.clone(),
            ev.payload["n"].as_u64().unwrap_or(u64::MAX),
        ));
        cx.publish("job.done", json!({"n": ev.payload["n"], "node": self.node}))
            .await?;
        Ok(())
    }
}

const GPU: &str = "name: gpu\nversion: 0.1.0\ntype: capability\nentry: gpu\nsubscriptions: [job.run]\npublications: [job.done]\nplacement:\n  labels: [gpu]\n";

async fn node(url: &str, ns: &str, name: &'static str, labels: &[&str]) -> Node {
    let factory: fn() -> Box<dyn lotus_nucleus::Module> = match name {
        "a" => || Box::new(Gpu { node: "a".into() }),
        "b" => || Box::new(Gpu { node: "b".into() }),
        _ => || Box::new(Gpu { node: "c".into() }),
    };
    common::node(url, ns, name, labels, "job.run", GPU, factory).await
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(15), "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nuclei_place_modules_and_share_events_and_tools() {
    let Some(url) = redis_url().await else { return };
    let ns = namespace();
    let a = node(&url, &ns, "a", &[]).await;
    let b = node(&url, &ns, "b", &["gpu"]).await;
    let c = node(&url, &ns, "c", &["gpu", "big"]).await;

    // Placement: `gpu` runs on the nodes labelled gpu only.
    let state = |n: &Node| n.nucleus.module("gpu").map(|m| m.state);
    assert_eq!(state(&a), Some(ModuleState::Elsewhere));
    assert_eq!(state(&b), Some(ModuleState::Running));
    assert_eq!(state(&c), Some(ModuleState::Running));

    // a sees where it runs.
    wait_for("a sees b and c", || {
        let mods = a.nucleus.modules();
        ["b", "c"].iter().all(|n| {
            mods.iter().any(|m| {
                m.name == "gpu" && m.node.as_deref() == Some(*n) && m.state == ModuleState::Running
            })
        })
    })
    .await;
    let tools = a.nucleus.tools();
    let t = tools
        .iter()
        .find(|t| t.name == "gpu.whereami")
        .expect("listed on a");
    assert!(matches!(t.node.as_deref(), Some("b" | "c")));

    // A tool call from a crosses to a node that runs the module.
    let r = a
        .nucleus
        .call_tool("gpu.whereami", json!({}))
        .await
        .expect("called across nodes");
    assert!(matches!(r["node"].as_str(), Some("b" | "c")), "{r}");
    // b and c call their own.
    let r = b
        .nucleus
        .call_tool("gpu.whereami", json!({}))
        .await
        .expect("local");
    assert_eq!(r["node"], "b");

    // Durable events published on a: each handled once, by b or c.
    let done = a.nucleus.bus().subscribe(
        "watch",
        vec![Pattern::new("job.done").expect("pattern")],
        1024,
        lotus_core::Overflow::Block,
    );
    a.bridge.ready(Duration::from_secs(5)).await;
    for n in 0..200u64 {
        a.nucleus
            .publish("test", "job.run", json!({"n": n}))
            .await
            .expect("publish");
    }
    wait_for("200 jobs handled", || HANDLED.lock().len() >= 200).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let handled = HANDLED.lock().clone();
    let mut ns_: Vec<u64> = handled.iter().map(|(_, n)| *n).collect();
    ns_.sort_unstable();
    assert_eq!(ns_, (0..200).collect::<Vec<_>>(), "each job once");
    assert!(handled.iter().all(|(node, _)| node == "b" || node == "c"));
    // a's observer hears every `job.done`, published on b and c.
    wait_for("a hears 200 job.done", || done.queue().depth() >= 200).await;

    for n in [&a, &b, &c] {
        n.nucleus.shutdown().await.expect("shutdown");
        n.bridge.close(Duration::from_secs(2)).await;
    }
    drop_namespace(&url, &ns).await;
}

#[tokio::test]
async fn a_module_placed_elsewhere_is_not_loaded_here() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = NucleusSettings {
        node: "laptop".into(),
        ..NucleusSettings::default()
    };
    let n = NucleusBuilder::new(settings)
        .log(Arc::new(
            SqliteLog::open(&dir.path().join("streams.db")).expect("log"),
        ))
        .state(StateStore::open(&dir.path().join("state.db")).expect("state"))
        .host(NativeHost::new().with_entry(
            "gpu",
            NativeModule {
                manifest: "name: unused\nversion: 0.0.0\ntype: core\n",
                factory: || {
                    Box::new(Gpu {
                        node: "laptop".into(),
                    })
                },
            },
        ))
        .module(ModuleDef {
            manifest: Arc::new(Manifest::parse(GPU, Path::new("gpu.yaml")).expect("manifest")),
            origin: Origin::Builtin,
        })
        .build()
        .expect("nucleus");
    let report = n.start().await;
    assert!(report.started.is_empty());
    assert_eq!(
        n.module("gpu").map(|m| m.state),
        Some(ModuleState::Elsewhere)
    );
    // Without another node there is nowhere to send its tool calls.
    let err = n
        .call_tool("gpu.whereami", json!({}))
        .await
        .expect_err("not here");
    assert!(err.to_string().contains("elsewhere"), "{err}");
    n.shutdown().await.expect("shutdown");
}
