//! The durable streams on Redis behave as the embedded ones: the same queries give the same
//! events.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{namespace, p, redis};
use lotus_bus::{DurableLog, SqliteLog, StreamName, StreamQuery};
use lotus_bus_redis::RedisLog;
use lotus_core::{Event, Topic};
use serde_json::json;

fn ev(topic: &str, n: u64) -> Arc<Event> {
    Arc::new(Event::new(
        Topic::new(topic).expect("topic"),
        "test",
        json!({"n": n}),
    ))
}

fn numbers(rows: &[lotus_bus::StoredEvent]) -> Vec<u64> {
    rows.iter()
        .map(|r| r.event.payload["n"].as_u64().expect("n"))
        .collect()
}

#[tokio::test]
async fn redis_streams_answer_queries_like_the_embedded_log() {
    let Some(url) = redis().await else { return };
    let ns = namespace();
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite: Arc<dyn DurableLog> =
        Arc::new(SqliteLog::open(&dir.path().join("streams.db")).expect("sqlite"));
    let redis: Arc<dyn DurableLog> = Arc::new(
        RedisLog::connect(&url, &ns, 100_000, Duration::from_secs(3600))
            .await
            .expect("redis log"),
    );
    let mut middle = SystemTime::now();
    for n in 0..1500u64 {
        let topic = if n % 3 == 0 {
            "action.tool"
        } else {
            "action.reply"
        };
        if n == 750 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            middle = SystemTime::now();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let e = ev(topic, n);
        for log in [&sqlite, &redis] {
            log.append(StreamName::ActionLog, e.clone())
                .expect("append");
        }
    }
    for log in [&sqlite, &redis] {
        log.append(StreamName::ModuleEvents, ev("system.module_started", 9999))
            .expect("append");
        log.flush().await.expect("flush");
    }
    let queries = {
        let q = |f: &dyn Fn(&mut StreamQuery)| {
            let mut q = StreamQuery::new(StreamName::ActionLog);
            q.limit = 5000;
            f(&mut q);
            q
        };
        vec![
            ("all", q(&|_| {})),
            (
                "newest 10",
                q(&|q| {
                    q.limit = 10;
                    q.newest_first = true;
                }),
            ),
            ("topic", q(&|q| q.topic = Some(p("action.tool")))),
            ("since", q(&|q| q.since = Some(middle))),
            ("until", q(&|q| q.until = Some(middle))),
            ("limit 600", q(&|q| q.limit = 600)),
        ]
    };
    for (what, query) in queries {
        let a = numbers(&sqlite.query(query.clone()).await.expect("sqlite query"));
        let b = numbers(&redis.query(query).await.expect("redis query"));
        assert_eq!(a, b, "{what}");
        assert!(!a.is_empty(), "{what}");
    }
    // Paging with after_seq walks the whole stream once, in order.
    let mut seen = Vec::new();
    let mut q = StreamQuery::new(StreamName::ActionLog);
    q.limit = 400;
    loop {
        let page = redis.query(q.clone()).await.expect("page");
        let Some(last) = page.last() else { break };
        q.after_seq = Some(last.seq);
        seen.extend(numbers(&page));
    }
    assert_eq!(seen, (0..1500).collect::<Vec<_>>());
    let counts = redis.counts().await.expect("counts");
    let get = |s: StreamName| counts.iter().find(|c| c.stream == s).map(|c| c.events);
    assert_eq!(get(StreamName::ActionLog), Some(1500));
    assert_eq!(get(StreamName::ModuleEvents), Some(1));
    assert_eq!(get(StreamName::MemoryUpdates), Some(0));
    common::drop_namespace(&url, &ns).await;
}
