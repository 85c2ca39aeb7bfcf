//! Where a distributed backend plugs into the in-process bus.
//!
//! Every nucleus keeps its [`LocalBus`](crate::LocalBus): local subscribers are served by it at
//! in-process speed. A [`Bridge`] (the Redis backend, `lotus-bus-redis`) carries what is
//! published here to the other nuclei and hands what they publish to this bus. Without a bridge
//! every [`Scope`] behaves the same and nothing leaves the process.

use std::sync::Arc;

use lotus_core::{Event, Pattern, Topic};
use serde::Serialize;
use serde_json::Value;

use crate::queue::Queue;

/// Which events a subscription receives when the bus spans several nuclei.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Only events published on this node (the recorders of the durable log: each node records
    /// what it published, so a shared log holds every event once).
    Node,
    /// Every event from every node (observers: the API's event stream, the CLI).
    #[default]
    Cluster,
    /// Every event from every node, except that a durable topic's events come through the
    /// consumer group named after the subscriber: each is handled once by that name, however
    /// many nodes host it (modules). [`Subscription::done`](crate::Subscription::done) says
    /// when one is handled.
    Group,
}

/// A subscription as a bridge sees it.
#[derive(Clone)]
pub struct Watched {
    /// The subscription's id on this bus.
    pub id: u64,
    /// Who subscribed (a module name for [`Scope::Group`]: the consumer group's name).
    pub name: Arc<str>,
    /// Its patterns.
    pub patterns: Vec<Pattern>,
    /// Its scope.
    pub scope: Scope,
    /// Its queue, for events the bridge delivers to this subscriber only.
    pub queue: Arc<Queue>,
}

/// Another nucleus on the same bus, as last heard from.
#[derive(Clone, Debug, Serialize)]
pub struct NodeStatus {
    /// Its node id.
    pub node: String,
    /// Whether it is this node.
    pub local: bool,
    /// Its labels (for `placement`).
    pub labels: Vec<String>,
    /// Milliseconds since it last reported.
    pub age_ms: u64,
    /// What its nucleus reports (modules, tools), as set by [`Bridge::set_reporter`].
    pub info: Value,
}

/// A function the nucleus gives the bridge to describe what this node hosts.
pub type Reporter = Box<dyn Fn() -> Value + Send + Sync>;

/// The link from this node's bus to the other nodes.
pub trait Bridge: Send + Sync + 'static {
    /// This node's id.
    fn node(&self) -> &str;
    /// An event was published on this node. Returns whether its topic is durable: then
    /// [`Scope::Group`] subscribers get it through the bridge, not directly.
    fn outbound(&self, ev: &Arc<Event>) -> bool;
    /// A subscription was made or its patterns changed.
    fn watch(&self, sub: Watched);
    /// A subscription stopped receiving (what it holds may still be handled and
    /// [`handled`](Bridge::handled)).
    fn unwatch(&self, id: u64);
    /// A subscription is gone: what it was given and did not handle goes back, for it to be
    /// delivered again.
    fn release(&self, id: u64);
    /// A [`Scope::Group`] subscriber finished handling `ev`.
    fn handled(&self, id: u64, ev: &Event);
    /// Whether a subscriber on another node may answer a request on `topic`.
    fn remote_subscriber(&self, topic: &Topic) -> bool;
    /// The nodes on the bus, this one included.
    fn nodes(&self) -> Vec<NodeStatus>;
    /// Sets what this node reports about itself to the others.
    fn set_reporter(&self, reporter: Reporter);
    /// Backend, link state, lag and counters, for `lotus doctor` and the API.
    fn health(&self) -> Value;
}
