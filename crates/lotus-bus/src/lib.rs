//! # lotus-bus
//!
//! The event bus of LOTUS (DESIGN.md §3): the [`Bus`] trait, the in-process backend
//! [`LocalBus`] (a topic trie with per-subscriber bounded [`Queue`]s and an explicit overflow
//! policy), request/reply by correlation id, and the [`DurableLog`] of the four durable streams
//! with its embedded SQLite backend [`SqliteLog`].

pub mod bridge;
pub mod log;
pub mod queue;
pub mod router;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lotus_core::{Event, Overflow, Pattern, Topic};

pub use bridge::{Bridge, NodeStatus, Reporter, Scope, Watched};
pub use log::{DurableLog, LogError, SqliteLog, StoredEvent, StreamCount, StreamName, StreamQuery};
pub use queue::{Pushed, Queue};
pub use router::{BusStats, Delivery, LocalBus, SubscriberInfo, Subscription, WeakBus};

/// A bus failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// A request found nobody subscribed to its topic. Retryable: a responder may appear.
    #[error("no subscriber answers requests on `{topic}`")]
    NoResponders {
        /// The request topic.
        topic: Topic,
    },
    /// A request got no reply before its deadline. Retryable.
    #[error("no reply on `{topic}` within {}", humantime_ms(*after))]
    Timeout {
        /// The request topic.
        topic: Topic,
        /// How long it waited.
        after: Duration,
    },
    /// Another request with the same correlation id is still waiting. Not retryable as is.
    #[error("a request with correlation id {correlation_id} is already waiting for its reply")]
    DuplicateRequest {
        /// The id in use.
        correlation_id: uuid::Uuid,
    },
    /// The backend is gone (shut down or disconnected for good). Not retryable.
    #[error("the bus is closed")]
    Closed,
}

fn humantime_ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

impl BusError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, BusError::Closed | BusError::DuplicateRequest { .. })
    }
}

/// An event bus backend.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes to every matching subscriber, waiting for room in full block-policy queues.
    async fn publish(&self, ev: Arc<Event>) -> Result<Delivery, BusError>;
    /// Subscribes with a bounded queue and an overflow policy.
    fn subscribe(
        &self,
        name: &str,
        patterns: Vec<Pattern>,
        capacity: usize,
        policy: Overflow,
    ) -> Subscription;
    /// Publishes a request and waits for the event that carries its correlation id.
    async fn request(&self, ev: Event, timeout: Duration) -> Result<Arc<Event>, BusError>;
    /// Bus-wide counters.
    fn stats(&self) -> BusStats;
    /// Every subscription with its queue figures.
    fn subscribers(&self) -> Vec<SubscriberInfo>;
}
