//! # lotus-bus-redis
//!
//! The event bus of several nuclei on one Redis (DESIGN.md §3). Each nucleus keeps its
//! in-process [`LocalBus`]; a [`RedisBridge`] connects it to the others:
//!
//! - **Fan-out** over pub/sub: an event published on a node goes to channel `NS:e:TOPIC`; each
//!   node `PSUBSCRIBE`s the globs of its subscribers' patterns and routes what arrives through
//!   its own topic trie, so matching is exactly the NATS-style matching of one process.
//! - **Durable topics** (`[bus] durable`) go to a Redis Stream per durable pattern (`NS:d:PATTERN`,
//!   trimmed by `MAXLEN` and by age with `MINID`). Every module reads them through its own
//!   consumer group, so a module hosted on several nodes handles each event once. Entries are
//!   acknowledged after the module handled them; entries left pending by a node that stopped
//!   reporting are claimed by another node hosting the same module.
//! - **Exactly-once handling** within a window: before an entry is delivered its event id is
//!   marked `NS:x:GROUP:ID` (`SET NX`), and marked `done` with its acknowledgement. A second copy
//!   (a publish retried after a cut connection) or a redelivery of something handled is skipped.
//! - **Requests** cross nodes with their correlation id and deadline: a node that delivers a
//!   remote request sends the reply straight to the requester's channel `NS:n:NODE`.
//! - **Nodes** report themselves every second (`NS:node:ID`, expiring): their labels, modules,
//!   tools and subscriptions. A node missing for longer than `node_ttl` is dead.
//! - **The four durable streams** can live on Redis too ([`RedisLog`]).
//! - **Faults**: every connection reconnects with backoff; local events keep flowing meanwhile;
//!   durable events published while Redis is away wait in memory, in order, and are written
//!   when it is back.

mod group;
mod link;
mod log;
mod nodes;
#[cfg(feature = "test-support")]
pub mod testing;
mod writer;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lotus_bus::{Bridge, LocalBus, NodeStatus, Reporter, Scope, Watched, WeakBus};
use lotus_core::{Event, Pattern, Topic};
use parking_lot::{Mutex, RwLock};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use uuid::Uuid;

pub use link::redact;
pub use log::RedisLog;
pub use nodes::{default_node_id, hostname};

/// How a nucleus joins a Redis bus.
#[derive(Clone)]
pub struct RedisBusConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Prefix of every key and channel, so several LOTUS installations can share one Redis.
    pub namespace: String,
    /// This node's id: unique among the nuclei on the bus, stable across restarts (it names
    /// this node's consumer in every group).
    pub node: String,
    /// This node's labels, matched by modules' `placement`.
    pub labels: Vec<String>,
    /// Topics whose events are kept in streams and handled once per module.
    pub durable: Vec<Pattern>,
    /// Entries kept per durable stream (approximate `MAXLEN`).
    pub max_len: usize,
    /// Age after which durable entries are trimmed (`MINID`).
    pub retention: Duration,
    /// How long a handled event id is remembered, to skip copies and redeliveries.
    pub window: Duration,
    /// How often a node reports itself.
    pub heartbeat: Duration,
    /// A node that has not reported for this long is dead: its pending entries are claimed.
    pub node_ttl: Duration,
}

impl std::fmt::Debug for RedisBusConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBusConfig")
            .field("url", &redact(&self.url))
            .field("namespace", &self.namespace)
            .field("node", &self.node)
            .field("labels", &self.labels)
            .field("durable", &self.durable)
            .field("max_len", &self.max_len)
            .field("retention", &self.retention)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl RedisBusConfig {
    /// The defaults for `url` and `node`.
    pub fn new(url: impl Into<String>, node: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            namespace: "lotus".into(),
            node: node.into(),
            labels: Vec::new(),
            durable: Vec::new(),
            max_len: 100_000,
            retention: Duration::from_secs(48 * 3600),
            window: Duration::from_secs(600),
            heartbeat: Duration::from_secs(1),
            node_ttl: Duration::from_secs(5),
        }
    }
}

/// A failure to join the bus.
#[derive(Debug, thiserror::Error)]
pub enum RedisBusError {
    /// The URL does not parse.
    #[error("bus url `{url}` is not a Redis URL ({reason}); expected redis://host:port")]
    BadUrl {
        /// The URL, password hidden.
        url: String,
        /// Why.
        reason: String,
    },
    /// Redis did not answer.
    #[error(
        "cannot reach Redis at {url}: {reason}; start it, fix `[bus] url`, or set `[bus] backend = \"memory\"`"
    )]
    Unreachable {
        /// The URL, password hidden.
        url: String,
        /// Why.
        reason: String,
    },
    /// The node id is not a single topic token.
    #[error(
        "node id `{0}` is not usable: use letters, digits, `_` and `-` only (set `[bus] node`)"
    )]
    BadNode(String),
    /// Another live nucleus uses this node id.
    #[error(
        "node id `{node}` is already used by a running nucleus ({holder}); give this one another `[bus] node`"
    )]
    NodeTaken {
        /// The id.
        node: String,
        /// Who holds it.
        holder: String,
    },
    /// The bus already has a bridge.
    #[error("this bus is already connected to another bus backend")]
    AlreadyBridged,
}

/// Whether Redis at `url` answers a `PING` within `limit`.
pub async fn ping(url: &str, limit: Duration) -> Result<(), RedisBusError> {
    let unreachable = |reason: String| RedisBusError::Unreachable {
        url: redact(url),
        reason,
    };
    let client = redis::Client::open(url).map_err(|e| RedisBusError::BadUrl {
        url: redact(url),
        reason: e.to_string(),
    })?;
    let answer = async {
        let mut conn = link::connect(&client).await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(limit, answer).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Err(_) => Err(unreachable(format!(
            "no answer within {} ms",
            limit.as_millis()
        ))),
    }
}

/// Counters of the bridge.
#[derive(Default)]
pub(crate) struct Counters {
    pub published: AtomicU64,
    pub durable_published: AtomicU64,
    pub received: AtomicU64,
    pub delivered: AtomicU64,
    pub redelivered: AtomicU64,
    pub duplicates: AtomicU64,
    pub acked: AtomicU64,
    pub claimed: AtomicU64,
    pub reconnects: AtomicU64,
    pub dropped_offline: AtomicU64,
    pub backlog: AtomicUsize,
}

/// What the writer sends.
pub(crate) enum Out {
    /// An event published here; `Some(i)` if durable (stream `i` of the config's `durable`).
    Event(Arc<Event>, Option<usize>),
    /// A reply for the requester on `node`.
    Reply(String, Arc<Event>),
    /// Answered once everything before it is written.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// A durable event delivered to a local subscriber and not yet acknowledged.
#[derive(Clone)]
pub(crate) struct Pending {
    pub stream: Arc<str>,
    pub entry: Arc<str>,
    pub group: Arc<str>,
    pub acking: bool,
}

/// A stream entry (of one group) with events delivered here: acknowledged when the last of
/// them is handled.
pub(crate) type EntryKey = (Arc<str>, Arc<str>, Arc<str>);

/// State shared by the bridge's tasks.
pub(crate) struct Shared {
    pub cfg: RedisBusConfig,
    pub client: redis::Client,
    pub bus: WeakBus,
    pub instance: Uuid,
    pub started: std::time::SystemTime,
    pub out: mpsc::UnboundedSender<Out>,
    pub acks: mpsc::UnboundedSender<(u64, Uuid)>,
    /// Subscriptions on this bus, by id.
    pub subs: Mutex<HashMap<u64, Watched>>,
    /// Tells the pub/sub task to bring its globs up to date.
    pub globs_changed: Notify,
    /// Consumer-group readers, by subscription id.
    pub readers: Mutex<HashMap<u64, JoinHandle<()>>>,
    /// Durable events delivered here and not yet acknowledged, by (subscription, event id).
    pub pending: Mutex<HashMap<(u64, Uuid), Pending>>,
    /// Events of each (stream, group, entry) delivered here and not yet acknowledged.
    pub open: Mutex<HashMap<EntryKey, usize>>,
    /// Other nodes' subscription patterns, from their reports.
    pub remote_patterns: RwLock<Vec<Pattern>>,
    /// Requests from other nodes delivered here: correlation id → (requester, deadline).
    pub requests: Mutex<HashMap<Uuid, (String, Instant)>>,
    pub nodes: RwLock<Vec<NodeStatus>>,
    pub reporter: Mutex<Option<Reporter>>,
    /// Consumer-group figures from the last heartbeat.
    pub lag: RwLock<Value>,
    pub pubsub_up: AtomicBool,
    pub writer_up: AtomicBool,
    pub last_error: Mutex<Option<String>>,
    pub stats: Counters,
    pub closing: AtomicBool,
    pub stop: Notify,
    /// Group readers that have not yet created their groups.
    pub starting: AtomicUsize,
    /// Subscription changes asked for, and those the pub/sub task has put in place.
    pub globs_asked: AtomicU64,
    pub globs_done: AtomicU64,
}

impl Shared {
    pub(crate) fn prefix(&self) -> &str {
        &self.cfg.namespace
    }

    /// The stream of durable pattern `i`.
    pub(crate) fn stream_key(&self, i: usize) -> String {
        format!("{}:d:{}", self.prefix(), self.cfg.durable[i])
    }

    /// The first durable pattern matching `topic`.
    pub(crate) fn durable_index(&self, topic: &Topic) -> Option<usize> {
        self.cfg.durable.iter().position(|p| p.matches(topic))
    }

    pub(crate) fn error(&self, what: &str, e: &redis::RedisError) {
        let msg = format!("{what}: {e}");
        let mut last = self.last_error.lock();
        if last.as_deref() != Some(msg.as_str()) {
            tracing::warn!(node = %self.cfg.node, "redis bus: {msg}");
        }
        *last = Some(msg);
    }

    /// Notes a request from `node`, so its reply goes straight back; forgets expired ones.
    pub(crate) fn remember_request(&self, cid: Uuid, node: &str, deadline: std::time::SystemTime) {
        let left = deadline
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        let now = Instant::now();
        let mut requests = self.requests.lock();
        if requests.len() >= 1024 {
            requests.retain(|_, (_, d)| *d > now);
        }
        requests.insert(cid, (node.to_owned(), now + left));
    }

    pub(crate) fn stopped(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }
}

/// The Redis link of one nucleus's bus. See the crate documentation.
pub struct RedisBridge {
    shared: Arc<Shared>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// How many times joining is tried again after the connection was cut (100, 200, 400 ms apart).
const JOIN_RETRIES: u32 = 3;

impl RedisBridge {
    /// Connects `bus` to the Redis bus: checks that Redis answers and that no live nucleus
    /// uses this node id, then starts the link's tasks and sets itself as the bus's bridge.
    pub async fn connect(
        cfg: RedisBusConfig,
        bus: &LocalBus,
    ) -> Result<Arc<RedisBridge>, RedisBusError> {
        if Topic::new(&cfg.node).map_or(true, |t| t.tokens().count() != 1) {
            return Err(RedisBusError::BadNode(cfg.node.clone()));
        }
        let client = redis::Client::open(cfg.url.as_str()).map_err(|e| RedisBusError::BadUrl {
            url: redact(&cfg.url),
            reason: e.to_string(),
        })?;
        let instance = Uuid::now_v7();
        // A connection cut while joining (Redis restarting, a client kill) is tried again a
        // few times; a node id another node holds is not.
        let mut attempt = 0;
        let unreachable = |e: redis::RedisError| RedisBusError::Unreachable {
            url: redact(&cfg.url),
            reason: e.to_string(),
        };
        let mut conn = loop {
            // Refused or timed out: Redis is not there, say so at once.
            let mut conn = match link::connect(&client).await {
                Ok(c) => c,
                Err(e) if e.is_connection_dropped() && attempt < JOIN_RETRIES => {
                    attempt += 1;
                    tracing::debug!(attempt, error = %e, "joining the redis bus again");
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                    continue;
                }
                Err(e) => return Err(unreachable(e)),
            };
            match nodes::claim_id(&mut conn, &cfg, instance).await {
                Ok(()) => break conn,
                // Connected, then cut: try again.
                Err(RedisBusError::Unreachable { reason, .. }) if attempt < JOIN_RETRIES => {
                    attempt += 1;
                    tracing::debug!(attempt, %reason, "joining the redis bus again");
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let (out, out_rx) = mpsc::unbounded_channel();
        let (acks, acks_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            cfg,
            client,
            bus: bus.downgrade(),
            instance,
            started: std::time::SystemTime::now(),
            out,
            acks,
            subs: Mutex::new(HashMap::new()),
            globs_changed: Notify::new(),
            readers: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            open: Mutex::new(HashMap::new()),
            remote_patterns: RwLock::new(Vec::new()),
            requests: Mutex::new(HashMap::new()),
            nodes: RwLock::new(Vec::new()),
            reporter: Mutex::new(None),
            lag: RwLock::new(json!([])),
            pubsub_up: AtomicBool::new(false),
            writer_up: AtomicBool::new(true),
            last_error: Mutex::new(None),
            stats: Counters::default(),
            closing: AtomicBool::new(false),
            stop: Notify::new(),
            starting: AtomicUsize::new(0),
            globs_asked: AtomicU64::new(0),
            globs_done: AtomicU64::new(0),
        });
        nodes::beat(&shared, &mut conn).await;
        let bridge = Arc::new(RedisBridge {
            shared: shared.clone(),
            tasks: Mutex::new(vec![
                tokio::spawn(writer::run(shared.clone(), out_rx, conn)),
                tokio::spawn(link::pubsub(shared.clone())),
                tokio::spawn(group::acker(shared.clone(), acks_rx)),
                tokio::spawn(nodes::heartbeat(shared.clone())),
            ]),
        });
        bus.set_bridge(bridge.clone())
            .map_err(|_| RedisBusError::AlreadyBridged)?;
        // Wait (briefly) for the subscriptions to be in place, so that what is published right
        // after `connect` returns reaches this node's subscribers.
        bridge.ready(Duration::from_secs(2)).await;
        Ok(bridge)
    }

    /// Waits (up to `limit`) until every subscription made so far receives what is published
    /// from now on: its globs are subscribed and its consumer groups exist. Returns whether
    /// that happened in time.
    pub async fn ready(&self, limit: Duration) -> bool {
        let sh = &self.shared;
        let deadline = Instant::now() + limit;
        let asked = sh.globs_asked.load(Ordering::Acquire);
        loop {
            let done = sh.pubsub_up.load(Ordering::Acquire)
                && sh.globs_done.load(Ordering::Acquire) >= asked
                && sh.starting.load(Ordering::Acquire) == 0;
            if done {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.shared.cfg.node
    }

    /// Waits until everything published here so far is written to Redis (or `limit` passes).
    pub async fn flush(&self, limit: Duration) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.shared.out.send(Out::Flush(tx)).is_err() {
            return false;
        }
        tokio::time::timeout(limit, rx)
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Leaves the bus: writes what is still queued and the acknowledgements of what was
    /// handled (up to `limit`), stops reading, and removes this node's report so that the
    /// others claim at once what it left unhandled.
    pub async fn close(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        self.flush(limit).await;
        // Acknowledgements still queued.
        while Instant::now() < deadline && self.shared.pending.lock().values().any(|p| p.acking) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.stop_tasks();
        if let Ok(mut conn) = link::connect(&self.shared.client).await {
            nodes::leave(&self.shared, &mut conn).await;
        }
    }

    /// Ends every task of the link.
    fn stop_tasks(&self) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.stop.notify_waiters();
        for (_, r) in self.shared.readers.lock().drain() {
            r.abort();
        }
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }
}

impl Drop for RedisBridge {
    fn drop(&mut self) {
        self.stop_tasks();
    }
}

impl Bridge for RedisBridge {
    fn node(&self) -> &str {
        &self.shared.cfg.node
    }

    fn outbound(&self, ev: &Arc<Event>) -> bool {
        let sh = &self.shared;
        if let Some(cid) = ev.correlation_id
            && cid != ev.id
        {
            // A reply to a request from another node goes straight back to it. (Expired
            // requests are forgotten as new ones are noted.)
            let requests = sh.requests.lock();
            if let Some((node, deadline)) = requests.get(&cid)
                && *deadline > Instant::now()
            {
                let _ = sh.out.send(Out::Reply(node.clone(), ev.clone()));
            }
        }
        let durable = sh.durable_index(&ev.topic);
        if durable.is_none() && !sh.writer_up.load(Ordering::Acquire) {
            // Fan-out is fire and forget: nobody else can hear it now.
            sh.stats.dropped_offline.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        sh.stats.backlog.fetch_add(1, Ordering::Relaxed);
        let _ = sh.out.send(Out::Event(ev.clone(), durable));
        durable.is_some()
    }

    fn watch(&self, sub: Watched) {
        let sh = &self.shared;
        let id = sub.id;
        let group = sub.scope == Scope::Group
            && sub
                .patterns
                .iter()
                .any(|p| sh.cfg.durable.iter().any(|d| d.overlaps(p)));
        let mut same = false;
        if sub.scope != Scope::Node {
            let old = sh.subs.lock().insert(id, sub.clone());
            same = old.is_some_and(|o| o.patterns == sub.patterns);
            if !same {
                sh.globs_asked.fetch_add(1, Ordering::AcqRel);
                sh.globs_changed.notify_one();
            }
        }
        // A reload keeps its patterns: its reader goes on as it is.
        if same && sh.readers.lock().contains_key(&id) {
            return;
        }
        let old = sh.readers.lock().remove(&id);
        if let Some(old) = old {
            old.abort();
        }
        if group {
            let starting = group::Starting::new(sh.clone());
            let task = tokio::spawn(group::reader(sh.clone(), sub, starting));
            sh.readers.lock().insert(id, task);
        }
    }

    fn unwatch(&self, id: u64) {
        let sh = &self.shared;
        if sh.subs.lock().remove(&id).is_some() {
            sh.globs_changed.notify_one();
        }
        if let Some(r) = sh.readers.lock().remove(&id) {
            r.abort();
        }
    }

    fn release(&self, id: u64) {
        let sh = &self.shared;
        // Entries it did not handle stay pending in Redis; whoever reads the group next
        // (this node again, or another after this one is gone) gets them.
        let mut dropped: Vec<EntryKey> = Vec::new();
        sh.pending.lock().retain(|(sub, _), p| {
            let keep = *sub != id || p.acking;
            if !keep {
                dropped.push((p.stream.clone(), p.group.clone(), p.entry.clone()));
            }
            keep
        });
        // Such an entry is not acknowledged by this reader: the events of it that were
        // handled are marked done and skipped when it comes back.
        let mut open = sh.open.lock();
        for k in dropped {
            open.remove(&k);
        }
    }

    fn handled(&self, id: u64, ev: &Event) {
        let sh = &self.shared;
        let known = match sh.pending.lock().get_mut(&(id, ev.id)) {
            Some(p) if !p.acking => {
                p.acking = true;
                true
            }
            _ => false,
        };
        if known {
            let _ = sh.acks.send((id, ev.id));
        }
    }

    fn remote_subscriber(&self, topic: &Topic) -> bool {
        self.shared
            .remote_patterns
            .read()
            .iter()
            .any(|p| p.matches(topic))
    }

    fn nodes(&self) -> Vec<NodeStatus> {
        self.shared.nodes.read().clone()
    }

    fn set_reporter(&self, reporter: Reporter) {
        *self.shared.reporter.lock() = Some(reporter);
    }

    fn health(&self) -> Value {
        let sh = &self.shared;
        let s = &sh.stats;
        let up = sh.pubsub_up.load(Ordering::Acquire) && sh.writer_up.load(Ordering::Acquire);
        json!({
            "backend": "redis",
            "url": redact(&sh.cfg.url),
            "namespace": sh.cfg.namespace,
            "node": sh.cfg.node,
            "labels": sh.cfg.labels,
            "link": if up { "up" } else { "down" },
            "durable": sh.cfg.durable.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            "nodes": sh.nodes.read().iter().map(|n| json!({"node": n.node, "local": n.local, "age_ms": n.age_ms})).collect::<Vec<_>>(),
            "groups": sh.lag.read().clone(),
            "backlog": s.backlog.load(Ordering::Relaxed),
            "in_flight": sh.pending.lock().len(),
            "published": s.published.load(Ordering::Relaxed),
            "durable_published": s.durable_published.load(Ordering::Relaxed),
            "received": s.received.load(Ordering::Relaxed),
            "delivered_durable": s.delivered.load(Ordering::Relaxed),
            "redelivered": s.redelivered.load(Ordering::Relaxed),
            "duplicates_skipped": s.duplicates.load(Ordering::Relaxed),
            "acked": s.acked.load(Ordering::Relaxed),
            "claimed": s.claimed.load(Ordering::Relaxed),
            "reconnects": s.reconnects.load(Ordering::Relaxed),
            "dropped_offline": s.dropped_offline.load(Ordering::Relaxed),
            "last_error": sh.last_error.lock().clone(),
        })
    }
}

/// How events travel on Redis: `NODE\nKIND\n` then one event as JSON per line, KIND being `e`
/// (fan-out), `d` (durable) or `r` (a reply for one node). Under load the writer puts a run of
/// events on one topic in one message (one `PUBLISH`, one stream entry).
pub(crate) mod envelope {
    use lotus_core::Event;

    /// A message's header.
    pub fn start(node: &str, kind: u8) -> Vec<u8> {
        let mut out = Vec::with_capacity(node.len() + 256);
        out.extend_from_slice(node.as_bytes());
        out.push(b'\n');
        out.push(kind);
        out.push(b'\n');
        out
    }

    /// Appends one event (compact JSON holds no raw newline).
    pub fn push(out: &mut Vec<u8>, ev: &Event) {
        // Serializing an `Event` cannot fail (string keys, finite numbers from JSON).
        let _ = serde_json::to_writer(&mut *out, ev);
        out.push(b'\n');
    }

    /// A message of one event.
    pub fn encode(node: &str, kind: u8, ev: &Event) -> Vec<u8> {
        let mut out = start(node, kind);
        push(&mut out, ev);
        out
    }

    /// The sender, the kind and the events; `None` if the message is not one of ours.
    pub fn decode(bytes: &[u8]) -> Option<(&str, u8, Vec<Event>)> {
        let nl = bytes.iter().position(|b| *b == b'\n')?;
        let node = std::str::from_utf8(&bytes[..nl]).ok()?;
        let rest = &bytes[nl + 1..];
        if rest.len() < 2 || rest[1] != b'\n' {
            return None;
        }
        let mut events = Vec::new();
        for line in rest[2..].split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            events.push(serde_json::from_slice(line).ok()?);
        }
        Some((node, rest[0], events))
    }
}
