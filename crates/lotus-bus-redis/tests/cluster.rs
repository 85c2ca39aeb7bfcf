//! Several nodes on one real Redis: fan-out, durable groups, requests, dead nodes.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{namespace, node, p, redis};
use lotus_bus::{Bridge, LocalBus, Scope};
use lotus_core::{Event, Overflow, Topic};
use serde_json::json;

fn ev(topic: &str, n: u64) -> Arc<Event> {
    Arc::new(Event::new(
        Topic::new(topic).expect("topic"),
        "test",
        json!({"n": n}),
    ))
}

async fn recv(sub: &lotus_bus::Subscription) -> Arc<Event> {
    tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .expect("an event within 10 s")
        .expect("subscription open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_reaches_other_nodes_with_exact_matching() {
    let Some(url) = redis().await else { return };
    let ns = namespace();
    let a = node(&url, &ns, "a", &[]).await;
    let b = node(&url, &ns, "b", &[]).await;
    let star = b
        .bus
        .subscribe("watch", vec![p("x.*.c")], 64, Overflow::Block);
    let rest = b.bus.subscribe("all", vec![p("x.>")], 64, Overflow::Block);
    let only_b =
        b.bus
            .subscribe_scoped("recorder", vec![p("x.>")], 64, Overflow::Block, Scope::Node);
    assert!(b.bridge.ready(Duration::from_secs(5)).await);
    // The glob `x.*.c` also matches `x.b.y.c`: the node must not deliver it to `x.*.c`.
    a.bus.publish(ev("x.b.y.c", 1)).await;
    a.bus.publish(ev("x.b.c", 2)).await;
    let got = recv(&star).await;
    assert_eq!(got.topic.as_str(), "x.b.c");
    assert_eq!(got.payload["n"], 2);
    // `x.>` gets both, once each, in order, though two of b's globs match `x.b.c`.
    assert_eq!(recv(&rest).await.payload["n"], 1);
    assert_eq!(recv(&rest).await.payload["n"], 2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rest.try_recv().is_none(), "no second copy");
    assert!(star.try_recv().is_none());
    // A node-scoped subscriber hears its own node only.
    assert!(only_b.try_recv().is_none());
    b.bus.publish(ev("x.local", 3)).await;
    assert_eq!(recv(&only_b).await.payload["n"], 3);
    // The publisher does not get its own event back from Redis.
    let mine = a.bus.subscribe("mine", vec![p("x.z")], 64, Overflow::Block);
    assert!(a.bridge.ready(Duration::from_secs(5)).await);
    a.bus.publish(ev("x.z", 4)).await;
    assert_eq!(recv(&mine).await.payload["n"], 4);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(mine.try_recv().is_none(), "an echo came back");
    a.bridge.close(Duration::from_secs(2)).await;
    b.bridge.close(Duration::from_secs(2)).await;
    common::drop_namespace(&url, &ns).await;
}

/// Takes events from a group subscription, records them per node and says each is handled.
fn worker(
    node: &'static str,
    sub: lotus_bus::Subscription,
    seen: Arc<parking_lot::Mutex<Vec<(&'static str, u64)>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(e) = sub.recv().await {
            seen.lock()
                .push((node, e.payload["n"].as_u64().unwrap_or(u64::MAX)));
            sub.done(&e);
        }
    })
}

async fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_event_is_handled_once_per_group_across_nodes() {
    let Some(url) = redis().await else { return };
    let ns = namespace();
    let durable = ["job.>"];
    let a = node(&url, &ns, "a", &durable).await;
    let b = node(&url, &ns, "b", &durable).await;
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let audit = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let wa = worker("a", a.group("worker", "job.>"), seen.clone());
    let wb = worker("b", b.group("worker", "job.>"), seen.clone());
    let au = worker("b", b.group("audit", "job.created"), audit.clone());
    let observer = b
        .bus
        .subscribe("observer", vec![p("job.>")], 4096, Overflow::Block);
    assert!(a.bridge.ready(Duration::from_secs(5)).await);
    assert!(b.bridge.ready(Duration::from_secs(5)).await);
    for n in 0..600 {
        let topic = if n % 2 == 0 {
            "job.created"
        } else {
            "job.done"
        };
        a.bus.publish(ev(topic, n)).await;
    }
    wait_for("600 handled", Duration::from_secs(20), || {
        seen.lock().len() >= 600
    })
    .await;
    wait_for("300 audited", Duration::from_secs(20), || {
        audit.lock().len() >= 300
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = seen.lock().clone();
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for (_, n) in &seen {
        *counts.entry(*n).or_default() += 1;
    }
    assert_eq!(counts.len(), 600, "every event handled");
    assert!(counts.values().all(|c| *c == 1), "none twice");
    // Each node handled its share in stream order.
    for who in ["a", "b"] {
        let mine: Vec<u64> = seen
            .iter()
            .filter(|(w, _)| *w == who)
            .map(|(_, n)| *n)
            .collect();
        assert!(mine.windows(2).all(|w| w[0] < w[1]), "{who} out of order");
    }
    // The `audit` group (only on b) gets every `job.created`, and nothing else.
    let audit: Vec<u64> = audit.lock().iter().map(|(_, n)| *n).collect();
    assert_eq!(audit, (0..600).step_by(2).collect::<Vec<_>>());
    // An observer on b sees every durable event too.
    let mut watched = 0;
    while observer.try_recv().is_some() {
        watched += 1;
    }
    assert_eq!(watched, 600);
    let h = b.bridge.health();
    assert_eq!(h["backend"], "redis");
    assert_eq!(h["link"], "up");
    wait_for("acks", Duration::from_secs(5), || {
        a.bridge.health()["in_flight"] == 0 && b.bridge.health()["in_flight"] == 0
    })
    .await;
    a.bridge.close(Duration::from_secs(2)).await;
    b.bridge.close(Duration::from_secs(2)).await;
    wa.abort();
    wb.abort();
    au.abort();
    common::drop_namespace(&url, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_answered_by_another_node() {
    let Some(url) = redis().await else { return };
    let ns = namespace();
    let a = node(&url, &ns, "a", &[]).await;
    let b = node(&url, &ns, "b", &[]).await;
    let service = b
        .bus
        .subscribe("echo", vec![p("svc.echo")], 64, Overflow::Block);
    assert!(b.bridge.ready(Duration::from_secs(5)).await);
    let bbus = b.bus.clone();
    let server = tokio::spawn(async move {
        while let Some(req) = service.recv().await {
            assert!(req.deadline.is_some(), "the deadline crosses nodes");
            let reply = LocalBus::reply_to(
                &req,
                Topic::new("svc.echo_reply").expect("topic"),
                "echo",
                json!({"echo": req.payload["say"]}),
            );
            bbus.publish(Arc::new(reply)).await;
        }
    });
    // a knows of b's subscription from its reports.
    wait_for("b's report", Duration::from_secs(5), || {
        a.bridge
            .remote_subscriber(&Topic::new("svc.echo").expect("topic"))
    })
    .await;
    for i in 0..20 {
        let req = Event::new(
            Topic::new("svc.echo").expect("topic"),
            "test",
            json!({"say": i}),
        );
        let reply = a
            .bus
            .request(req, Duration::from_secs(5))
            .await
            .expect("a reply from b");
        assert_eq!(reply.payload["echo"], i);
    }
    // Nobody anywhere answers this one.
    let lonely = Event::new(Topic::new("svc.nobody").expect("topic"), "test", json!({}));
    let err = a
        .bus
        .request(lonely, Duration::from_secs(1))
        .await
        .expect_err("no responder");
    assert!(
        matches!(err, lotus_bus::BusError::NoResponders { .. }),
        "{err}"
    );
    let nodes: Vec<String> = a.bridge.nodes().into_iter().map(|n| n.node).collect();
    assert_eq!(nodes, ["a", "b"]);
    server.abort();
    a.bridge.close(Duration::from_secs(2)).await;
    b.bridge.close(Duration::from_secs(2)).await;
    common::drop_namespace(&url, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_dead_node_left_pending_is_claimed_by_another() {
    let Some(url) = redis().await else { return };
    let ns = namespace();
    let durable = ["job.>"];
    let a = node(&url, &ns, "a", &durable).await;
    let b = node(&url, &ns, "b", &durable).await;
    // b takes events and never finishes them.
    let stuck = b.group("worker", "job.>");
    assert!(b.bridge.ready(Duration::from_secs(5)).await);
    for n in 0..50 {
        a.bus.publish(ev("job.x", n)).await;
    }
    wait_for("b to hold events", Duration::from_secs(10), || {
        stuck.queue().depth() == 50
    })
    .await;
    // b dies: no goodbye, its report simply expires.
    drop(b);
    drop(stuck);
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let wa = worker("a", a.group("worker", "job.>"), seen.clone());
    wait_for("a to claim b's 50", Duration::from_secs(20), || {
        seen.lock().len() >= 50
    })
    .await;
    let mut got: Vec<u64> = seen.lock().iter().map(|(_, n)| *n).collect();
    got.sort_unstable();
    assert_eq!(got, (0..50).collect::<Vec<_>>());
    // Entries claimed (an entry holds a run of events published together).
    assert!(a.bridge.health()["claimed"].as_u64() >= Some(1));
    a.bridge.close(Duration::from_secs(2)).await;
    wa.abort();
    common::drop_namespace(&url, &ns).await;
}

#[tokio::test]
async fn a_second_nucleus_cannot_take_a_live_node_id() {
    let Some(url) = redis().await else { return };
    let ns = namespace();
    let a = node(&url, &ns, "same", &[]).await;
    let bus = LocalBus::new();
    let err = lotus_bus_redis::RedisBridge::connect(common::config(&url, &ns, "same", &[]), &bus)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("already used"), "{err}");
    let err = lotus_bus_redis::RedisBridge::connect(common::config(&url, &ns, "a.b", &[]), &bus)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("not usable"), "{err}");
    let err = lotus_bus_redis::RedisBridge::connect(
        common::config("redis://127.0.0.1:1", &ns, "x", &[]),
        &bus,
    )
    .await
    .err()
    .expect("refused");
    assert!(err.to_string().contains("cannot reach Redis"), "{err}");
    a.bridge.close(Duration::from_secs(2)).await;
    // Gone: the id is free again.
    let again = node(&url, &ns, "same", &[]).await;
    again.bridge.close(Duration::from_secs(2)).await;
    common::drop_namespace(&url, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_live_node_stopped_handling_goes_to_a_node_that_runs_the_module() {
    let Some(url) = redis().await else { return };
    let ns = namespace();
    let durable = ["job.>"];
    let a = node(&url, &ns, "a", &durable).await;
    let b = node(&url, &ns, "b", &durable).await;
    // b's module takes 30 events, handles 10 and is stopped; b itself stays up.
    let sub = b.group("worker", "job.>");
    assert!(b.bridge.ready(Duration::from_secs(5)).await);
    for n in 0..30 {
        a.bus.publish(ev("job.x", n)).await;
    }
    wait_for("b to hold events", Duration::from_secs(10), || {
        sub.queue().depth() == 30
    })
    .await;
    for _ in 0..10 {
        let e = recv(&sub).await;
        sub.done(&e);
    }
    drop(sub);
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let wa = worker("a", a.group("worker", "job.>"), seen.clone());
    wait_for("a to take the other 20", Duration::from_secs(20), || {
        seen.lock().len() >= 20
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut got: Vec<u64> = seen.lock().iter().map(|(_, n)| *n).collect();
    got.sort_unstable();
    assert_eq!(
        got,
        (10..30).collect::<Vec<_>>(),
        "the unhandled ones, once"
    );
    a.bridge.close(Duration::from_secs(2)).await;
    b.bridge.close(Duration::from_secs(2)).await;
    wa.abort();
    common::drop_namespace(&url, &ns).await;
}
