//! Two nuclei on the real Redis: 10,000 durable events while every Redis connection is cut
//! again and again (`CLIENT KILL`) and the node running the module is shut down and started
//! again mid-run. Each event is handled once, in the order published.
//!
//! A test binary of its own: `CLIENT KILL` cuts every client of the Redis it runs against.

mod common;

use std::time::{Duration, Instant};

use common::Node;
use lotus_bus::Bridge;
use lotus_bus_redis::testing::{cut_repeatedly, drop_namespace, namespace, redis_url};
use lotus_core::{Event, json};
use lotus_nucleus::{ModuleError, ModuleState};
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

async fn node(url: &str, ns: &str, name: &str, labels: &[&str]) -> Node {
    common::node(url, ns, name, labels, "seq.>", COUNTER, || {
        Box::new(Counter)
    })
    .await
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
    let chaos = cut_repeatedly(url.clone(), 6, Duration::from_millis(200));

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
