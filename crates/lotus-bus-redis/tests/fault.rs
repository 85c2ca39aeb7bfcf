//! 10,000 durable events while every Redis connection is cut again and again and a node is
//! stopped and restarted: each event handled exactly once per group, in stream order.
//!
//! A test binary of its own: `CLIENT KILL` cuts every client of the Redis it runs against.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Node, namespace, node, redis};
use lotus_bus::Bridge;
use lotus_bus_redis::testing::cut_repeatedly;
use lotus_core::{Event, Topic};
use parking_lot::Mutex;
use serde_json::json;

const EVENTS: u64 = 10_000;

type Log = Arc<Mutex<Vec<u64>>>;

/// Handles the group's events one by one until told to stop (between two events, as a module
/// stops).
fn worker(
    node: &Node,
    group: &str,
    log: Log,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let sub = node.group(group, "seq.>");
    tokio::spawn(async move {
        while !stop.load(Ordering::Acquire) {
            let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(20), sub.recv()).await
            else {
                continue;
            };
            log.lock().push(e.payload["n"].as_u64().expect("n"));
            sub.done(&e);
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_durable_events_survive_cut_connections_and_a_restart() {
    let Some(url) = redis().await else { return };
    let ns = namespace();
    let durable = ["seq.>"];
    let publisher = node(&url, &ns, "p", &durable).await;
    let mirror: Log = Arc::default();
    let counter: Log = Arc::default();
    let mirror_stop = Arc::new(AtomicBool::new(false));
    let mirror_task = worker(&publisher, "mirror", mirror.clone(), mirror_stop.clone());
    let mut w = node(&url, &ns, "w", &durable).await;
    let mut w_stop = Arc::new(AtomicBool::new(false));
    let mut w_task = worker(&w, "counter", counter.clone(), w_stop.clone());
    assert!(publisher.bridge.ready(Duration::from_secs(5)).await);
    assert!(w.bridge.ready(Duration::from_secs(5)).await);

    let started = Instant::now();
    let pbus = publisher.bus.clone();
    let publish = tokio::spawn(async move {
        for n in 0..EVENTS {
            let ev = Event::new(
                Topic::new("seq.tick").expect("topic"),
                "test",
                json!({"n": n}),
            );
            pbus.publish(Arc::new(ev)).await;
            // Bursts of ten: the writer puts each in a message or two, so the run spans a
            // thousand stream entries or more.
            if n % 10 == 9 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    let chaos = cut_repeatedly(url.clone(), 6, Duration::from_millis(180));

    // Stop the worker node a third of the way through, and start it again.
    let deadline = Instant::now() + Duration::from_secs(60);
    while counter.lock().len() < 3_000 {
        assert!(
            Instant::now() < deadline,
            "the worker stalled before the restart"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    w_stop.store(true, Ordering::Release);
    w_task.await.expect("worker stopped");
    w.bridge.close(Duration::from_secs(5)).await;
    drop(w);
    tokio::time::sleep(Duration::from_millis(300)).await;
    w = node(&url, &ns, "w", &durable).await;
    w_stop = Arc::new(AtomicBool::new(false));
    w_task = worker(&w, "counter", counter.clone(), w_stop.clone());

    publish.await.expect("published");
    let kills = chaos.await.expect("chaos");
    assert!(
        kills.iter().sum::<usize>() >= 6,
        "connections were cut: {kills:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    while counter.lock().len() < EVENTS as usize || mirror.lock().len() < EVENTS as usize {
        assert!(
            Instant::now() < deadline,
            "lost events: counter {} mirror {} of {EVENTS}; publisher {} worker {}",
            counter.lock().len(),
            mirror.lock().len(),
            publisher.bridge.health(),
            w.bridge.health()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Time for a late duplicate to show up, if one were coming.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all: Vec<u64> = (0..EVENTS).collect();
    assert!(
        *mirror.lock() == all,
        "mirror: not each event once, in order"
    );
    assert!(
        *counter.lock() == all,
        "counter: not each event once, in order"
    );
    let p = publisher.bridge.health();
    let ws = w.bridge.health();
    eprintln!(
        "10,000 events in {:?}; kills {kills:?}; publisher {p}; worker {ws}",
        started.elapsed()
    );
    w_stop.store(true, Ordering::Release);
    mirror_stop.store(true, Ordering::Release);
    let _ = w_task.await;
    let _ = mirror_task.await;
    w.bridge.close(Duration::from_secs(5)).await;
    publisher.bridge.close(Duration::from_secs(5)).await;
    common::drop_namespace(&url, &ns).await;
}
