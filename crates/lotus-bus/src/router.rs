//! The in-process bus: a topic trie, a per-topic route cache, bounded subscriber queues and
//! request/reply by correlation id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use lotus_core::{Event, Overflow, Pattern, PatternToken, Topic};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::bridge::{Bridge, Scope, Watched};
use crate::queue::{Pushed, Queue};
use crate::{Bus, BusError};

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type Route = Arc<[Arc<SubEntry>]>;

/// Routes cached per topic before the cache is reset (bounds memory with many one-off topics).
const ROUTE_CACHE_LIMIT: usize = 8192;

/// One subscriber: its patterns and its queue.
pub struct SubEntry {
    id: u64,
    name: Arc<str>,
    /// Written only under the table's write lock (see [`Subscription::set_patterns`]).
    patterns: RwLock<Vec<Pattern>>,
    queue: Arc<Queue>,
    scope: Scope,
}

impl SubEntry {
    fn watched(&self) -> Watched {
        Watched {
            id: self.id,
            name: self.name.clone(),
            patterns: self.patterns.read().clone(),
            scope: self.scope,
            queue: self.queue.clone(),
        }
    }
}

impl SubEntry {
    /// Whether a `durable` event reaches this subscriber through the bridge (its consumer
    /// group) rather than directly.
    fn via_bridge(&self, durable: bool) -> bool {
        durable && self.scope == Scope::Group
    }
}

#[derive(Default)]
struct Node {
    literal: FastMap<Box<str>, Node>,
    star: Option<Box<Node>>,
    here: Vec<u64>,
    rest: Vec<u64>,
}

impl Node {
    fn insert(&mut self, tokens: &[PatternToken], id: u64) {
        match tokens.split_first() {
            None => self.here.push(id),
            Some((PatternToken::Rest, _)) => self.rest.push(id),
            Some((PatternToken::Star, tail)) => self
                .star
                .get_or_insert_with(Default::default)
                .insert(tail, id),
            Some((PatternToken::Literal(l), tail)) => {
                self.literal.entry(l.clone()).or_default().insert(tail, id)
            }
        }
    }

    /// Removes `id` under `tokens`; returns whether the node is now empty.
    fn remove(&mut self, tokens: &[PatternToken], id: u64) -> bool {
        match tokens.split_first() {
            None => self.here.retain(|&x| x != id),
            Some((PatternToken::Rest, _)) => self.rest.retain(|&x| x != id),
            Some((PatternToken::Star, tail)) => {
                if let Some(star) = &mut self.star
                    && star.remove(tail, id)
                {
                    self.star = None;
                }
            }
            Some((PatternToken::Literal(l), tail)) => {
                if let Some(child) = self.literal.get_mut(l)
                    && child.remove(tail, id)
                {
                    self.literal.remove(l);
                }
            }
        }
        self.here.is_empty()
            && self.rest.is_empty()
            && self.star.is_none()
            && self.literal.is_empty()
    }

    fn collect(&self, tokens: &[&str], out: &mut Vec<u64>) {
        let Some((first, tail)) = tokens.split_first() else {
            out.extend_from_slice(&self.here);
            return;
        };
        out.extend_from_slice(&self.rest);
        if let Some(child) = self.literal.get(*first) {
            child.collect(tail, out);
        }
        if let Some(star) = &self.star {
            star.collect(tail, out);
        }
    }
}

#[derive(Default)]
struct Table {
    root: Node,
    subs: FastMap<u64, Arc<SubEntry>>,
}

struct Pending {
    request_id: Uuid,
    reply: oneshot::Sender<Arc<Event>>,
}

struct Inner {
    table: RwLock<Table>,
    cache: RwLock<FastMap<Box<str>, Route>>,
    pending: Mutex<FastMap<Uuid, Pending>>,
    pending_count: AtomicUsize,
    next_id: AtomicU64,
    published: AtomicU64,
    deliveries: AtomicU64,
    dropped: AtomicU64,
    bridge: OnceLock<Arc<dyn Bridge>>,
}

/// The in-process event bus. Cheap to clone; all clones share one router.
#[derive(Clone)]
pub struct LocalBus {
    inner: Arc<Inner>,
}

/// What one publish did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Delivery {
    /// Subscribers whose patterns matched.
    pub matched: usize,
    /// Of those, how many had to drop their oldest event (drop-oldest policy).
    pub dropped_oldest: usize,
    /// Block-policy subscribers that stayed full past the publisher's deadline (not delivered).
    pub timed_out: usize,
}

/// Counters of the whole bus.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BusStats {
    /// Events published.
    pub published: u64,
    /// Event copies queued to subscribers.
    pub deliveries: u64,
    /// Events dropped by drop-oldest subscribers.
    pub dropped: u64,
    /// Live subscriptions.
    pub subscribers: usize,
}

/// One subscriber as seen from outside.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriberInfo {
    /// Who subscribed (a module name, `api`, …).
    pub name: String,
    /// Its patterns.
    pub patterns: Vec<String>,
    /// Events waiting.
    pub depth: usize,
    /// Queue capacity.
    pub capacity: usize,
    /// Events taken so far.
    pub delivered: u64,
    /// Events dropped so far.
    pub dropped: u64,
    /// Overflow policy.
    pub policy: Overflow,
}

impl Default for LocalBus {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                table: RwLock::new(Table::default()),
                cache: RwLock::new(FastMap::default()),
                pending: Mutex::new(FastMap::default()),
                pending_count: AtomicUsize::new(0),
                next_id: AtomicU64::new(1),
                published: AtomicU64::new(0),
                deliveries: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                bridge: OnceLock::new(),
            }),
        }
    }

    /// Connects this bus to other nodes. Set once; existing subscriptions are announced to
    /// the bridge. Fails (handing the bridge back) when one is already set.
    pub fn set_bridge(&self, bridge: Arc<dyn Bridge>) -> Result<(), Arc<dyn Bridge>> {
        self.inner.bridge.set(bridge.clone())?;
        let subs: Vec<Watched> = self
            .inner
            .table
            .read()
            .subs
            .values()
            .map(|s| s.watched())
            .collect();
        for w in subs {
            bridge.watch(w);
        }
        Ok(())
    }

    /// The bridge to other nodes, if any.
    pub fn bridge(&self) -> Option<&Arc<dyn Bridge>> {
        self.inner.bridge.get()
    }

    /// A handle that does not keep the bus alive (for a bridge, which the bus itself holds).
    pub fn downgrade(&self) -> WeakBus {
        WeakBus(Arc::downgrade(&self.inner))
    }

    /// Subscribes `name` to every topic matching any of `patterns`, with its own bounded queue.
    /// Each event is queued once per subscription even when several patterns match. The
    /// subscription sees events of every node ([`Scope::Cluster`]).
    pub fn subscribe(
        &self,
        name: &str,
        patterns: Vec<Pattern>,
        capacity: usize,
        policy: Overflow,
    ) -> Subscription {
        self.subscribe_scoped(name, patterns, capacity, policy, Scope::Cluster)
    }

    /// [`subscribe`](Self::subscribe) with the [`Scope`] it has when the bus spans nodes.
    pub fn subscribe_scoped(
        &self,
        name: &str,
        patterns: Vec<Pattern>,
        capacity: usize,
        policy: Overflow,
        scope: Scope,
    ) -> Subscription {
        // On a shared bus a group subscriber's queue holds durable events that must not be
        // dropped (they would stay pending in the group): it waits for room instead.
        let policy = if scope == Scope::Group && self.inner.bridge.get().is_some() {
            Overflow::Block
        } else {
            policy
        };
        let entry = Arc::new(SubEntry {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            name: Arc::from(name),
            patterns: RwLock::new(patterns),
            queue: Arc::new(Queue::new(capacity, policy)),
            scope,
        });
        {
            let mut table = self.inner.table.write();
            for p in entry.patterns.read().iter() {
                table.root.insert(p.tokens(), entry.id);
            }
            table.subs.insert(entry.id, entry.clone());
            self.inner.cache.write().clear();
        }
        if let Some(b) = self.inner.bridge.get() {
            b.watch(entry.watched());
        }
        Subscription {
            entry,
            bus: Arc::downgrade(&self.inner),
        }
    }

    fn route(&self, topic: &Topic) -> Route {
        if let Some(r) = self.inner.cache.read().get(topic.as_str()) {
            return r.clone();
        }
        // Computed and cached under the table's read lock, so a concurrent (un)subscribe,
        // which clears the cache under the write lock, cannot leave a stale route behind.
        let table = self.inner.table.read();
        let tokens: Vec<&str> = topic.tokens().collect();
        let mut ids = Vec::new();
        table.root.collect(&tokens, &mut ids);
        ids.sort_unstable();
        ids.dedup();
        let route: Route = ids
            .iter()
            .filter_map(|id| table.subs.get(id).cloned())
            .collect();
        let mut cache = self.inner.cache.write();
        if cache.len() >= ROUTE_CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(topic.as_str().into(), route.clone());
        route
    }

    fn settle_pending(&self, ev: &Arc<Event>) {
        if self.inner.pending_count.load(Ordering::Acquire) == 0 {
            return;
        }
        let Some(cid) = ev.correlation_id else { return };
        let mut pending = self.inner.pending.lock();
        if pending.get(&cid).is_some_and(|p| p.request_id != ev.id)
            && let Some(p) = pending.remove(&cid)
        {
            self.inner.pending_count.fetch_sub(1, Ordering::Release);
            let _ = p.reply.send(ev.clone());
        }
    }

    /// Settles a pending request the event answers, hands the event to the bridge, and finds
    /// its subscribers here. Returns whether the topic is durable.
    fn begin(&self, ev: &Arc<Event>) -> (Route, Delivery, bool) {
        self.settle_pending(ev);
        let durable = self.inner.bridge.get().is_some_and(|b| b.outbound(ev));
        let route = self.route(&ev.topic);
        let d = Delivery {
            matched: route.len(),
            ..Delivery::default()
        };
        (route, d, durable)
    }

    /// Delivers an event published on another node (called by the bridge): it settles a
    /// request waiting here and reaches the subscribers here that want other nodes' events,
    /// waiting at most `wait` in total for room in full queues.
    pub async fn inject(&self, ev: Arc<Event>, durable: bool, wait: Duration) -> Delivery {
        self.settle_pending(&ev);
        let route = self.route(&ev.topic);
        let mut d = Delivery::default();
        let deadline = tokio::time::Instant::now() + wait;
        for sub in route.iter() {
            if sub.scope == Scope::Node || sub.via_bridge(durable) {
                continue;
            }
            d.matched += 1;
            self.push_until(sub, ev.clone(), deadline, &mut d).await;
        }
        self.inner
            .deliveries
            .fetch_add(d.matched as u64, Ordering::Relaxed);
        d
    }

    /// Settles the request `ev` answers, if one waits here (a reply sent to this node only).
    pub fn settle(&self, ev: &Arc<Event>) {
        self.settle_pending(ev);
    }

    async fn push_until(
        &self,
        sub: &SubEntry,
        ev: Arc<Event>,
        deadline: tokio::time::Instant,
        d: &mut Delivery,
    ) {
        let pushed = match sub.queue.try_push(ev) {
            Ok(p) => p,
            Err(back) => match tokio::time::timeout_at(deadline, sub.queue.push(back)).await {
                Ok(p) => p,
                Err(_) => {
                    sub.queue.record_drop();
                    self.inner.dropped.fetch_add(1, Ordering::Relaxed);
                    d.timed_out += 1;
                    d.matched -= 1;
                    return;
                }
            },
        };
        self.count(d, pushed);
    }

    fn count(&self, d: &mut Delivery, pushed: Pushed) {
        match pushed {
            Pushed::Queued => {}
            Pushed::DroppedOldest => {
                d.dropped_oldest += 1;
                self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Pushed::Closed => d.matched -= 1,
        }
    }

    fn finish(&self, d: Delivery) -> Delivery {
        self.inner.published.fetch_add(1, Ordering::Relaxed);
        self.inner
            .deliveries
            .fetch_add(d.matched as u64, Ordering::Relaxed);
        d
    }

    /// Publishes, waiting for room in block-policy queues that are full.
    pub async fn publish(&self, ev: Arc<Event>) -> Delivery {
        let (route, mut d, durable) = self.begin(&ev);
        for sub in route.iter() {
            if sub.via_bridge(durable) {
                continue;
            }
            let pushed = match sub.queue.try_push(ev.clone()) {
                Ok(p) => p,
                Err(back) => sub.queue.push(back).await,
            };
            self.count(&mut d, pushed);
        }
        self.finish(d)
    }

    /// Publishes, waiting at most `wait` in total for room in full block-policy queues; a
    /// subscriber still full then misses this event (counted in its drops and in `timed_out`).
    ///
    /// The nucleus publishes its own events this way, so that one stuck module can never stall
    /// the kernel.
    pub async fn publish_within(&self, ev: Arc<Event>, wait: Duration) -> Delivery {
        let (route, mut d, durable) = self.begin(&ev);
        let deadline = tokio::time::Instant::now() + wait.min(Duration::from_secs(3600));
        for sub in route.iter() {
            if sub.via_bridge(durable) {
                continue;
            }
            self.push_until(sub, ev.clone(), deadline, &mut d).await;
        }
        self.finish(d)
    }

    /// Publishes from a plain thread, blocking it for room in full block-policy queues.
    pub fn publish_blocking(&self, ev: Arc<Event>) -> Delivery {
        let (route, mut d, durable) = self.begin(&ev);
        for sub in route.iter() {
            if sub.via_bridge(durable) {
                continue;
            }
            self.count(&mut d, sub.queue.push_blocking(ev.clone()));
        }
        self.finish(d)
    }

    /// Sends `ev` as a request and waits up to `timeout` for an event carrying its correlation id.
    pub async fn request(&self, mut ev: Event, timeout: Duration) -> Result<Arc<Event>, BusError> {
        let cid = *ev.correlation_id.get_or_insert(ev.id);
        ev.deadline = Some(SystemTime::now() + timeout);
        let topic = ev.topic.clone();
        let request_id = ev.id;
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.inner.pending.lock();
            if pending.contains_key(&cid) {
                return Err(BusError::DuplicateRequest {
                    correlation_id: cid,
                });
            }
            pending.insert(
                cid,
                Pending {
                    request_id,
                    reply: tx,
                },
            );
        }
        self.inner.pending_count.fetch_add(1, Ordering::Release);
        // Only our own entry: never one another request put there later.
        let forget = || {
            let mut pending = self.inner.pending.lock();
            if pending
                .get(&cid)
                .is_some_and(|p| p.request_id == request_id)
            {
                pending.remove(&cid);
                self.inner.pending_count.fetch_sub(1, Ordering::Release);
            }
        };
        let d = self.publish(Arc::new(ev)).await;
        if d.matched == 0
            && !self
                .inner
                .bridge
                .get()
                .is_some_and(|b| b.remote_subscriber(&topic))
        {
            forget();
            return Err(BusError::NoResponders { topic });
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            _ => {
                forget();
                Err(BusError::Timeout {
                    topic,
                    after: timeout,
                })
            }
        }
    }

    /// The reply to `request`: an event on `topic` carrying the request's correlation id.
    pub fn reply_to(
        request: &Event,
        topic: Topic,
        source: &str,
        payload: serde_json::Value,
    ) -> Event {
        Event::new(topic, source, payload)
            .with_correlation(request.correlation_id.unwrap_or(request.id))
    }

    /// Bus-wide counters.
    pub fn stats(&self) -> BusStats {
        BusStats {
            published: self.inner.published.load(Ordering::Relaxed),
            deliveries: self.inner.deliveries.load(Ordering::Relaxed),
            dropped: self.inner.dropped.load(Ordering::Relaxed),
            subscribers: self.inner.table.read().subs.len(),
        }
    }

    /// Every live subscription with its queue figures.
    pub fn subscribers(&self) -> Vec<SubscriberInfo> {
        let table = self.inner.table.read();
        let mut out: Vec<_> = table
            .subs
            .values()
            .map(|s| SubscriberInfo {
                name: s.name.to_string(),
                patterns: s.patterns.read().iter().map(|p| p.to_string()).collect(),
                depth: s.queue.depth(),
                capacity: s.queue.capacity(),
                delivered: s.queue.delivered(),
                dropped: s.queue.dropped(),
                policy: s.queue.policy(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

fn unsubscribe(inner: &Inner, entry: &SubEntry) {
    let removed = {
        let mut table = inner.table.write();
        for p in entry.patterns.read().iter() {
            table.root.remove(p.tokens(), entry.id);
        }
        let removed = table.subs.remove(&entry.id).is_some();
        inner.cache.write().clear();
        removed
    };
    if removed && let Some(b) = inner.bridge.get() {
        b.unwatch(entry.id);
    }
}

/// A bus handle that does not keep it alive; see [`LocalBus::downgrade`].
#[derive(Clone)]
pub struct WeakBus(Weak<Inner>);

impl WeakBus {
    /// The bus, while it exists.
    pub fn upgrade(&self) -> Option<LocalBus> {
        self.0.upgrade().map(|inner| LocalBus { inner })
    }
}

/// A live subscription. Dropping it unsubscribes and closes its queue.
pub struct Subscription {
    entry: Arc<SubEntry>,
    bus: Weak<Inner>,
}

impl Subscription {
    /// The next event; `None` once unsubscribed and drained.
    pub async fn recv(&self) -> Option<Arc<Event>> {
        self.entry.queue.pop().await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&self) -> Option<Arc<Event>> {
        self.entry.queue.try_pop()
    }

    /// Blocks the thread for the next event, spinning up to `spin` first.
    pub fn recv_blocking(&self, spin: Duration, timeout: Option<Duration>) -> Option<Arc<Event>> {
        self.entry.queue.pop_blocking(spin, timeout)
    }

    /// The queue behind this subscription (depth, counters, close).
    pub fn queue(&self) -> &Arc<Queue> {
        &self.entry.queue
    }

    /// The patterns subscribed to.
    pub fn patterns(&self) -> Vec<Pattern> {
        self.entry.patterns.read().clone()
    }

    /// Replaces the patterns in one step: no event published meanwhile is missed, and none
    /// is queued twice (the queue stays the same). Used when a module is reloaded.
    pub fn set_patterns(&self, patterns: Vec<Pattern>) {
        let Some(inner) = self.bus.upgrade() else {
            return;
        };
        let mut table = inner.table.write();
        if !table.subs.contains_key(&self.entry.id) {
            return;
        }
        {
            let mut current = self.entry.patterns.write();
            for p in current.iter() {
                table.root.remove(p.tokens(), self.entry.id);
            }
            for p in &patterns {
                table.root.insert(p.tokens(), self.entry.id);
            }
            *current = patterns;
            inner.cache.write().clear();
        }
        drop(table);
        if let Some(b) = inner.bridge.get() {
            b.watch(self.entry.watched());
        }
    }

    /// Says that `ev`, taken from this subscription, is handled. A durable event delivered
    /// through a consumer group is acknowledged then; otherwise this does nothing.
    pub fn done(&self, ev: &Event) {
        if self.entry.scope == Scope::Group
            && let Some(inner) = self.bus.upgrade()
            && let Some(b) = inner.bridge.get()
        {
            b.handled(self.entry.id, ev);
        }
    }

    /// This subscription's scope.
    pub fn scope(&self) -> Scope {
        self.entry.scope
    }

    /// Stops receiving new events; queued ones can still be taken.
    pub fn unsubscribe(&self) {
        if let Some(inner) = self.bus.upgrade() {
            unsubscribe(&inner, &self.entry);
        }
        self.entry.queue.close();
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.unsubscribe();
        if let Some(inner) = self.bus.upgrade()
            && let Some(b) = inner.bridge.get()
        {
            b.release(self.entry.id);
        }
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish(&self, ev: Arc<Event>) -> Result<Delivery, BusError> {
        Ok(LocalBus::publish(self, ev).await)
    }

    fn subscribe(
        &self,
        name: &str,
        patterns: Vec<Pattern>,
        capacity: usize,
        policy: Overflow,
    ) -> Subscription {
        LocalBus::subscribe(self, name, patterns, capacity, policy)
    }

    async fn request(&self, ev: Event, timeout: Duration) -> Result<Arc<Event>, BusError> {
        LocalBus::request(self, ev, timeout).await
    }

    fn stats(&self) -> BusStats {
        LocalBus::stats(self)
    }

    fn subscribers(&self) -> Vec<SubscriberInfo> {
        LocalBus::subscribers(self)
    }
}
