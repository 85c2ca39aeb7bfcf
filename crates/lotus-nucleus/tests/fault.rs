//! Two nuclei on the real Redis: 10,000 durable events while every Redis connection is cut
//! again and again (`CLIENT KILL`) and the node running the module is shut down and started
//! again mid-run. Each event is handled once, in the order published.
//!
//! A test binary of its own: `CLIENT KILL` cuts every client of the Redis it runs against.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lotus_bus::{Bridge, LocalBus, SqliteLog};
use lotus_bus_redis::testing::{drop_namespace, kill_clients, namespace, redis_url};
use lotus_bus_redis::{RedisBridge, RedisBusConfig};
use lotus_core::{Event, Manifest, Pattern, json};
use lotus_nucleus::{
    ModuleDef, ModuleError, ModuleState, NativeHost, NativeModule, Nucleus, NucleusBuilder,
    NucleusSettings, Origin, StateStore,
};
use parking_lot::Mutex;

const EVENTS: u64 = 10_000;

static HANDLED: Mutex<Vec<u64>> = Mutex::new(Vec::new());

#[derive(Default)]
struct Counter;

#[lotus_nucleus::module]
impl Counter {
    #[on_event("seq.tick")]
    async fn tick(&mut self, ev: &Event) -> Result<(), ModuleError> {
        HANDLED
            .lock()
            .push(ev.payload["n"].as_u64().unwrap_or(u64::MAX));
        Ok(())
    }
}

const COUNTER: &str = "name: counter\nversion: 0.1.0\ntype: capability\nentry: counter\nsubscriptions: [seq.tick]\nplacement:\n  labels: [worker]\n";

struct Node {
    nucleus: Nucleus,
    bridge: Arc<RedisBridge>,
    _dir: tempfile::TempDir,
}

async fn node(url: &str, ns: &str, name: &str, labels: &[&str]) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = LocalBus::new();
    let mut cfg = RedisBusConfig::new(url, name);
    cfg.namespace = ns.to_owned();
    cfg.labels = labels.iter().map(|l| l.to_string()).collect();
    cfg.durable = vec![Pattern::new("seq.>").expect("pattern")];
    cfg.heartbeat = Duration::from_millis(200);
    cfg.node_ttl = Duration::from_secs(1);
    let bridge = RedisBridge::connect(cfg, &bus).await.expect("join the bus");
    let nucleus = NucleusBuilder::new(NucleusSettings {
        node: name.to_owned(),
        labels: labels.iter().map(|l| l.to_string()).collect(),
        ..NucleusSettings::default()
    })
    .bus(bus)
    .log(Arc::new(
        SqliteLog::open(&dir.path().join("streams.db")).expect("log"),
    ))
    .state(StateStore::open(&dir.path().join("state.db")).expect("state"))
    .host(NativeHost::new().with_entry(
        "counter",
        NativeModule {
            manifest: "name: unused\nversion: 0.0.0\ntype: core\n",
            factory: || Box::new(Counter),
        },
    ))
    .module(ModuleDef {
        manifest: Arc::new(Manifest::parse(COUNTER, Path::new("counter.yaml")).expect("manifest")),
        origin: Origin::Builtin,
    })
    .build()
    .expect("nucleus");
    nucleus.start().await;
    assert!(bridge.ready(Duration::from_secs(5)).await);
    Node {
        nucleus,
        bridge,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_durable_events_reach_a_restarted_nucleus_once_each_in_order() {
    let Some(url) = redis_url().await else { return };
    let ns = namespace();
    let p = node(&url, &ns, "p", &[]).await;
    let mut w = node(&url, &ns, "w", &["worker"]).await;
    assert_eq!(
        p.nucleus.module("counter").map(|m| m.state),
        Some(ModuleState::Elsewhere)
    );
    assert_eq!(
        w.nucleus.module("counter").map(|m| m.state),
        Some(ModuleState::Running)
    );

    let publisher = p.nucleus.clone();
    let publish = tokio::spawn(async move {
        for n in 0..EVENTS {
            publisher
                .publish("test", "seq.tick", json!({"n": n}))
                .await
                .expect("publish");
            if n % 10 == 9 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    let chaos_url = url.clone();
    let chaos = tokio::spawn(async move {
        let mut kills = Vec::new();
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            kills.push(kill_clients(&chaos_url).await);
        }
        kills
    });

    // The worker node goes down a third of the way through, and comes back.
    let deadline = Instant::now() + Duration::from_secs(60);
    while HANDLED.lock().len() < 3_000 {
        assert!(
            Instant::now() < deadline,
            "the worker stalled before the restart"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    w.nucleus.shutdown().await.expect("shutdown");
    w.bridge.close(Duration::from_secs(5)).await;
    drop(w);
    tokio::time::sleep(Duration::from_millis(300)).await;
    w = node(&url, &ns, "w", &["worker"]).await;

    publish.await.expect("published");
    let kills = chaos.await.expect("chaos");
    assert!(
        kills.iter().sum::<usize>() >= 6,
        "connections were cut: {kills:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    while HANDLED.lock().len() < EVENTS as usize {
        assert!(
            Instant::now() < deadline,
            "lost events: {} of {EVENTS} handled; publisher {}; worker {}",
            HANDLED.lock().len(),
            p.bridge.health(),
            w.bridge.health()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let handled = HANDLED.lock().clone();
    assert!(
        handled == (0..EVENTS).collect::<Vec<_>>(),
        "not each event once, in order: {} handled, first wrong at {:?}",
        handled.len(),
        handled.iter().enumerate().find(|(i, n)| *i as u64 != **n)
    );
    eprintln!("kills {kills:?}; worker {}", w.bridge.health());
    for n in [&p, &w] {
        n.nucleus.shutdown().await.expect("shutdown");
        n.bridge.close(Duration::from_secs(2)).await;
    }
    drop_namespace(&url, &ns).await;
}
