//! Nodes on the real Redis for the tests (`LOTUS_TEST_REDIS`, default 127.0.0.1:6379).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use lotus_bus::{LocalBus, Scope, Subscription};
use lotus_bus_redis::{RedisBridge, RedisBusConfig};
use lotus_core::{Overflow, Pattern};
use uuid::Uuid;

/// The Redis to test against, or `None` (outside CI only) when there is none.
pub async fn redis() -> Option<String> {
    let url =
        std::env::var("LOTUS_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let up = async {
        let client = redis::Client::open(url.as_str())?;
        let mut c = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut c).await
    };
    match tokio::time::timeout(Duration::from_secs(3), up).await {
        Ok(Ok(_)) => Some(url),
        other => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI needs Redis at {url} (set LOTUS_TEST_REDIS): {other:?}"
            );
            eprintln!("skipping: no Redis at {url}");
            None
        }
    }
}

/// A namespace of its own for one test.
pub fn namespace() -> String {
    format!("lotus-test-{}", Uuid::now_v7().simple())
}

pub fn p(s: &str) -> Pattern {
    Pattern::new(s).expect("pattern")
}

pub struct Node {
    pub bus: LocalBus,
    pub bridge: Arc<RedisBridge>,
}

pub fn config(url: &str, ns: &str, node: &str, durable: &[&str]) -> RedisBusConfig {
    let mut cfg = RedisBusConfig::new(url, node);
    cfg.namespace = ns.to_owned();
    cfg.durable = durable.iter().map(|d| p(d)).collect();
    cfg.heartbeat = Duration::from_millis(200);
    cfg.node_ttl = Duration::from_secs(1);
    cfg
}

pub async fn node(url: &str, ns: &str, name: &str, durable: &[&str]) -> Node {
    let bus = LocalBus::new();
    let bridge = RedisBridge::connect(config(url, ns, name, durable), &bus)
        .await
        .expect("join the bus");
    Node { bus, bridge }
}

impl Node {
    pub fn group(&self, name: &str, pattern: &str) -> Subscription {
        self.bus
            .subscribe_scoped(name, vec![p(pattern)], 1024, Overflow::Block, Scope::Group)
    }

    /// Waits until every other node has seen this one's subscriptions.
    pub async fn settle(&self) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Removes every key of a test's namespace (streams, marks, reports).
pub async fn drop_namespace(url: &str, ns: &str) {
    let client = redis::Client::open(url).expect("url");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{ns}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut c)
            .await
            .expect("scan");
        if !keys.is_empty() {
            let _: () = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut c)
                .await
                .expect("unlink");
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
}
