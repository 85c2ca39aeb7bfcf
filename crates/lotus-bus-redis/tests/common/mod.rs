//! Nodes on the real Redis for the tests (`LOTUS_TEST_REDIS`, default 127.0.0.1:6379).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use lotus_bus::{LocalBus, Scope, Subscription};
use lotus_bus_redis::{RedisBridge, RedisBusConfig};
use lotus_core::{Overflow, Pattern};

#[allow(unused_imports)]
pub use lotus_bus_redis::testing::{drop_namespace, namespace, redis_url as redis};

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
