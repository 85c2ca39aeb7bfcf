//! The in-process bus and the embedded durable streams.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lotus_bus::{BusError, DurableLog, LocalBus, SqliteLog, StreamName, StreamQuery};
use lotus_core::{Event, Overflow, Pattern, Topic, json};
use proptest::prelude::*;

fn p(s: &str) -> Pattern {
    Pattern::new(s).expect("pattern")
}
fn t(s: &str) -> Topic {
    Topic::new(s).expect("topic")
}
fn ev(topic: &str, n: i64) -> Arc<Event> {
    Arc::new(Event::new(t(topic), "test", json!(n)))
}

#[tokio::test]
async fn exact_and_wildcard_subscribers_each_get_one_copy() {
    let bus = LocalBus::new();
    let exact = bus.subscribe("exact", vec![p("a.b")], 16, Overflow::Block);
    let star = bus.subscribe("star", vec![p("a.*")], 16, Overflow::Block);
    let rest = bus.subscribe("rest", vec![p("a.>"), p("a.b")], 16, Overflow::Block);
    let other = bus.subscribe("other", vec![p("b.>")], 16, Overflow::Block);

    let d = bus.publish(ev("a.b", 1)).await;
    assert_eq!(d.matched, 3);
    assert_eq!(bus.publish(ev("a.b.c", 2)).await.matched, 1);

    assert_eq!(exact.try_recv().map(|e| e.payload.clone()), Some(json!(1)));
    assert_eq!(star.try_recv().map(|e| e.payload.clone()), Some(json!(1)));
    assert_eq!(rest.try_recv().map(|e| e.payload.clone()), Some(json!(1)));
    assert_eq!(rest.try_recv().map(|e| e.payload.clone()), Some(json!(2)));
    assert!(
        rest.try_recv().is_none(),
        "overlapping patterns deliver once"
    );
    assert!(other.try_recv().is_none());
}

#[tokio::test]
async fn dropping_a_subscription_unsubscribes_it() {
    let bus = LocalBus::new();
    let sub = bus.subscribe("s", vec![p("x")], 4, Overflow::Block);
    assert_eq!(bus.publish(ev("x", 1)).await.matched, 1);
    drop(sub);
    assert_eq!(bus.publish(ev("x", 2)).await.matched, 0);
    assert_eq!(bus.stats().subscribers, 0);
}

#[tokio::test]
async fn drop_oldest_subscriber_never_blocks_and_counts_drops() {
    let bus = LocalBus::new();
    let slow = bus.subscribe("slow", vec![p("x")], 4, Overflow::DropOldest);
    for n in 0..10 {
        bus.publish(ev("x", n)).await;
    }
    assert_eq!(slow.queue().dropped(), 6);
    assert_eq!(bus.stats().dropped, 6);
    let got: Vec<_> = std::iter::from_fn(|| slow.try_recv())
        .map(|e| e.payload.clone())
        .collect();
    assert_eq!(got, vec![json!(6), json!(7), json!(8), json!(9)]);
}

#[tokio::test]
async fn block_policy_applies_back_pressure_without_loss() {
    let bus = LocalBus::new();
    let sub = bus.subscribe("s", vec![p("x")], 2, Overflow::Block);
    let b = bus.clone();
    let producer = tokio::spawn(async move {
        for n in 0..100 {
            b.publish(ev("x", n)).await;
        }
    });
    let mut got = vec![];
    while got.len() < 100 {
        got.push(sub.recv().await.expect("event").payload.clone());
    }
    producer.await.expect("producer");
    assert_eq!(got, (0..100).map(|n| json!(n)).collect::<Vec<_>>());
    assert_eq!(sub.queue().dropped(), 0);
}

#[tokio::test]
async fn request_reply_by_correlation_id() {
    let bus = LocalBus::new();
    let server = bus.subscribe("server", vec![p("math.double")], 16, Overflow::Block);
    let b = bus.clone();
    tokio::spawn(async move {
        while let Some(req) = server.recv().await {
            assert!(req.deadline.is_some(), "requests carry their deadline");
            let n = req.payload.as_i64().unwrap_or(0);
            let reply = LocalBus::reply_to(&req, t("math.double.reply"), "server", json!(n * 2));
            b.publish(Arc::new(reply)).await;
        }
    });
    let req = Event::new(t("math.double"), "client", json!(21));
    let reply = bus
        .request(req, Duration::from_secs(2))
        .await
        .expect("reply");
    assert_eq!(reply.payload, json!(42));
}

#[tokio::test]
async fn request_errors_are_clear() {
    let bus = LocalBus::new();
    let err = bus
        .request(
            Event::new(t("nobody.home"), "c", json!(null)),
            Duration::from_millis(50),
        )
        .await
        .expect_err("no responders");
    assert!(matches!(err, BusError::NoResponders { .. }), "{err}");

    let _silent = bus.subscribe("silent", vec![p("slow.op")], 4, Overflow::Block);
    let err = bus
        .request(
            Event::new(t("slow.op"), "c", json!(null)),
            Duration::from_millis(50),
        )
        .await
        .expect_err("timeout");
    assert!(matches!(err, BusError::Timeout { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains("slow.op"));
}

#[test]
fn blocking_receiver_on_another_thread_gets_everything_in_order() {
    let bus = LocalBus::new();
    let sub = bus.subscribe("t", vec![p("x.*")], 64, Overflow::Block);
    let consumer = std::thread::spawn(move || {
        let mut n = 0;
        while let Some(e) =
            sub.recv_blocking(Duration::from_micros(50), Some(Duration::from_secs(5)))
        {
            assert_eq!(e.payload, json!(n));
            n += 1;
            if n == 10_000 {
                break;
            }
        }
        n
    });
    for n in 0..10_000 {
        bus.publish_blocking(ev("x.y", n));
    }
    assert_eq!(consumer.join().expect("consumer"), 10_000);
}

// Property: the trie delivers an event to exactly the subscriptions with a matching pattern.
fn pattern_text() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::sample::select(&["a", "b", "*"][..]), 0..3),
        any::<bool>(),
    )
        .prop_filter_map("non-empty", |(mut toks, rest)| {
            if rest {
                toks.push(">");
            }
            (!toks.is_empty()).then(|| toks.join("."))
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn router_delivers_to_exactly_the_matching_subscribers(
        subs in prop::collection::vec(prop::collection::vec(pattern_text(), 1..3), 1..6),
        topics in prop::collection::vec(prop::collection::vec(prop::sample::select(&["a", "b", "c"][..]), 1..4), 1..10),
    ) {
        let bus = LocalBus::new();
        let live: Vec<_> = subs
            .iter()
            .enumerate()
            .map(|(i, pats)| bus.subscribe(&i.to_string(), pats.iter().map(|s| p(s)).collect(), 64, Overflow::Block))
            .collect();
        for toks in &topics {
            let topic = t(&toks.join("."));
            let d = bus.publish_blocking(Arc::new(Event::new(topic.clone(), "p", json!(null))));
            let expected: Vec<bool> = live.iter().map(|s| s.patterns().iter().any(|p| p.matches(&topic))).collect();
            prop_assert_eq!(d.matched, expected.iter().filter(|b| **b).count());
            for (s, want) in live.iter().zip(expected) {
                let got = s.try_recv();
                prop_assert_eq!(got.is_some(), want);
                prop_assert!(s.try_recv().is_none());
            }
        }
    }
}

#[tokio::test]
async fn streams_survive_a_restart_and_answer_time_and_topic_queries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("data/streams.db");
    let before = SystemTime::now();
    {
        let log = SqliteLog::open(&path).expect("open");
        for n in 0..50 {
            let topic = if n % 2 == 0 {
                "system.module_started"
            } else {
                "system.module_stopped"
            };
            log.append(StreamName::ModuleEvents, ev(topic, n))
                .expect("append");
        }
        log.append(StreamName::ActionLog, ev("system.permission_denied", 99))
            .expect("append");
        log.flush().await.expect("flush");
    }
    let middle = SystemTime::now();
    let log = SqliteLog::open(&path).expect("reopen");
    log.append(StreamName::ModuleEvents, ev("system.module_started", 100))
        .expect("append");
    log.flush().await.expect("flush");

    let all = log
        .query(StreamQuery::new(StreamName::ModuleEvents))
        .await
        .expect("query");
    assert_eq!(all.len(), 51);
    assert!(
        all.windows(2).all(|w| w[0].seq < w[1].seq),
        "oldest first, in append order"
    );
    assert_eq!(all[0].event.payload, json!(0));

    let mut q = StreamQuery::new(StreamName::ModuleEvents);
    q.topic = Some(p("system.module_started"));
    q.since = Some(before);
    q.until = Some(middle);
    let started = log.query(q).await.expect("query");
    assert_eq!(started.len(), 25);

    let mut q = StreamQuery::new(StreamName::ModuleEvents);
    q.since = Some(middle);
    assert_eq!(log.query(q).await.expect("query").len(), 1);

    let mut q = StreamQuery::new(StreamName::ModuleEvents);
    q.newest_first = true;
    q.limit = 1;
    assert_eq!(
        log.query(q).await.expect("query")[0].event.payload,
        json!(100)
    );

    let counts = log.counts().await.expect("counts");
    let action = counts
        .iter()
        .find(|c| c.stream == StreamName::ActionLog)
        .expect("row");
    assert_eq!(action.events, 1);
}

#[tokio::test]
async fn stored_events_cannot_be_rewritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("streams.db");
    let log = SqliteLog::open(&path).expect("open");
    log.append(StreamName::ActionLog, ev("a.b", 1))
        .expect("append");
    log.flush().await.expect("flush");
    let conn = rusqlite::Connection::open(&path).expect("raw open");
    let err = conn
        .execute("UPDATE stream_events SET payload = '2'", [])
        .expect_err("append-only");
    assert!(err.to_string().contains("append-only"));
}

#[test]
fn unknown_stream_names_are_explained() {
    let err = "chat".parse::<StreamName>().expect_err("unknown");
    assert!(err.to_string().contains("action_log"));
}

#[tokio::test]
async fn publish_within_gives_up_on_a_full_subscriber_and_counts_it() {
    let bus = LocalBus::new();
    let stuck = bus.subscribe("stuck", vec![p("x")], 1, Overflow::Block);
    let fine = bus.subscribe("fine", vec![p("x")], 16, Overflow::Block);
    bus.publish(ev("x", 1)).await;
    let started = std::time::Instant::now();
    let d = bus
        .publish_within(ev("x", 2), Duration::from_millis(50))
        .await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!((d.matched, d.timed_out), (1, 1));
    assert_eq!(stuck.queue().dropped(), 1);
    assert_eq!(fine.queue().depth(), 2, "the healthy subscriber got both");
}

#[tokio::test]
async fn a_correlation_id_in_use_is_refused() {
    let bus = LocalBus::new();
    let _silent = bus.subscribe("silent", vec![p("slow.op")], 4, Overflow::Block);
    let cid = uuid::Uuid::now_v7();
    let b = bus.clone();
    let first = tokio::spawn(async move {
        b.request(
            Event::new(t("slow.op"), "c", json!(1)).with_correlation(cid),
            Duration::from_millis(300),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = bus
        .request(
            Event::new(t("slow.op"), "c", json!(2)).with_correlation(cid),
            Duration::from_millis(50),
        )
        .await
        .expect_err("duplicate");
    assert!(matches!(err, BusError::DuplicateRequest { .. }), "{err}");
    // The first request's entry was not disturbed: it times out on its own schedule.
    assert!(matches!(
        first.await.expect("join"),
        Err(BusError::Timeout { .. })
    ));
}
