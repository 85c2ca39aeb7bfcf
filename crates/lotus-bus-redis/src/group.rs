//! Durable delivery: one consumer-group reader per module subscription, and the acknowledger.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use lotus_bus::{Pushed, Watched};
use lotus_core::Event;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamClaimReply, StreamId, StreamReadReply};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::link::{Backoff, connect};
use crate::{Pending, Shared, envelope};

/// Entries read at once.
const COUNT: usize = 256;
/// How long one blocking read waits for new entries.
const BLOCK_MS: u64 = 1000;

fn mark_key(prefix: &str, group: &str, id: Uuid) -> String {
    format!("{prefix}:x:{group}:{id}")
}

fn retryable(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_timeout()
}

struct Reader {
    sh: Arc<Shared>,
    sub: Watched,
    group: Arc<str>,
    /// The streams this subscription reads.
    keys: Vec<Arc<str>>,
    window_s: u64,
}

/// Reads the subscription's consumer group on every durable stream its patterns overlap, for
/// as long as the subscription lives, reconnecting with backoff.
pub(crate) async fn reader(sh: Arc<Shared>, sub: Watched, starting: Starting) {
    let keys: Vec<Arc<str>> = (0..sh.cfg.durable.len())
        .filter(|i| sub.patterns.iter().any(|p| sh.cfg.durable[*i].overlaps(p)))
        .map(|i| Arc::from(sh.stream_key(i)))
        .collect();
    let window_s = sh.cfg.window.as_secs().max(1);
    let r = Reader {
        group: sub.name.clone(),
        sh,
        sub,
        keys,
        window_s,
    };
    let mut backoff = Backoff::new();
    let mut from_start = false;
    // Counted down once, when the groups first exist (or the reader ends before).
    let mut starting = Some(starting);
    while !r.sh.stopped() {
        let mut conn = match connect(&r.sh.client).await {
            Ok(c) => c,
            Err(e) => {
                r.sh.error("group connection", &e);
                if !backoff.wait(&r.sh).await {
                    return;
                }
                continue;
            }
        };
        match r
            .session(&mut conn, from_start, &mut backoff, &mut starting)
            .await
        {
            Ok(Stop::Closed) => return,
            Ok(Stop::NoGroup) => from_start = true,
            Err(e) => {
                r.sh.error(&format!("group `{}`", r.group), &e);
                if !retryable(&e) && e.code() != Some("NOGROUP") {
                    tracing::error!(group = %r.group, error = %e, "redis bus: consumer group failed");
                }
                if e.code() == Some("NOGROUP") {
                    from_start = true;
                }
            }
        }
        if !backoff.wait(&r.sh).await {
            return;
        }
    }
}

/// A group reader that has not yet created its groups (see `RedisBridge::ready`).
pub(crate) struct Starting(Arc<Shared>);

impl Starting {
    pub(crate) fn new(sh: Arc<Shared>) -> Self {
        sh.starting.fetch_add(1, Ordering::AcqRel);
        Self(sh)
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        self.0.starting.fetch_sub(1, Ordering::AcqRel);
    }
}

enum Stop {
    /// The subscription is gone.
    Closed,
    /// A stream or group vanished (Redis restarted empty): create them again, from the start.
    NoGroup,
}

impl Reader {
    /// One connection's worth of reading: create the groups, take this node's own pending
    /// entries first (delivered before and never acknowledged), then new ones, claiming now
    /// and then what dead nodes left.
    async fn session(
        &self,
        conn: &mut MultiplexedConnection,
        from_start: bool,
        backoff: &mut Backoff,
        starting: &mut Option<Starting>,
    ) -> redis::RedisResult<Stop> {
        for key in &self.keys {
            let r: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&**key)
                .arg(&*self.group)
                .arg(if from_start { "0" } else { "$" })
                .arg("MKSTREAM")
                .query_async(conn)
                .await;
            match r {
                Ok(()) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e),
            }
        }
        starting.take();
        for key in &self.keys {
            let mut after = "0".to_owned();
            loop {
                let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(&*self.group)
                    .arg(&self.sh.cfg.node)
                    .arg("COUNT")
                    .arg(COUNT)
                    .arg("STREAMS")
                    .arg(&**key)
                    .arg(&after)
                    .query_async(conn)
                    .await?;
                let entries: Vec<StreamId> = reply
                    .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
                    .unwrap_or_default();
                let Some(last) = entries.last() else { break };
                after = last.id.clone();
                let batch = entries.into_iter().map(|e| (key.clone(), e)).collect();
                if self.process(conn, batch, true).await? {
                    return Ok(Stop::Closed);
                }
            }
        }
        backoff.reset();
        let mut last_claim = Instant::now();
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg(&*self.group)
            .arg(&self.sh.cfg.node)
            .arg("COUNT")
            .arg(COUNT)
            .arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("STREAMS");
        for key in &self.keys {
            read.arg(&**key);
        }
        for _ in &self.keys {
            read.arg(">");
        }
        loop {
            if self.sh.stopped() || self.sub.queue.is_closed() {
                return Ok(Stop::Closed);
            }
            if last_claim.elapsed() >= self.sh.cfg.node_ttl {
                last_claim = Instant::now();
                if self.claim(conn).await? {
                    return Ok(Stop::Closed);
                }
            }
            let reply: Option<StreamReadReply> = match read.query_async(conn).await {
                Ok(r) => r,
                Err(e) if e.code() == Some("NOGROUP") => return Ok(Stop::NoGroup),
                Err(e) => return Err(e),
            };
            let batch: Vec<(Arc<str>, StreamId)> = reply
                .map(|r| {
                    r.keys
                        .into_iter()
                        .flat_map(|k| {
                            let key = self
                                .keys
                                .iter()
                                .find(|x| ***x == *k.key)
                                .cloned()
                                .unwrap_or_else(|| Arc::from(k.key.as_str()));
                            k.ids.into_iter().map(move |e| (key.clone(), e))
                        })
                        .collect()
                })
                .unwrap_or_default();
            if !batch.is_empty() && self.process(conn, batch, false).await? {
                return Ok(Stop::Closed);
            }
        }
    }

    /// Takes over the entries pending on consumers whose node is gone. Returns whether the
    /// subscription closed meanwhile.
    async fn claim(&self, conn: &mut MultiplexedConnection) -> redis::RedisResult<bool> {
        let alive: Vec<String> = self
            .sh
            .nodes
            .read()
            .iter()
            .map(|n| n.node.clone())
            .collect();
        for key in &self.keys {
            let summary: redis::Value = redis::cmd("XPENDING")
                .arg(&**key)
                .arg(&*self.group)
                .query_async(conn)
                .await?;
            let consumers: Vec<(String, String)> = match summary {
                redis::Value::Array(parts) if parts.len() == 4 => {
                    redis::from_redis_value_ref(&parts[3]).unwrap_or_default()
                }
                _ => Vec::new(),
            };
            for (consumer, _) in consumers {
                if consumer == self.sh.cfg.node || alive.contains(&consumer) {
                    continue;
                }
                loop {
                    let ids: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
                        .arg(&**key)
                        .arg(&*self.group)
                        .arg("-")
                        .arg("+")
                        .arg(COUNT)
                        .arg(&consumer)
                        .query_async(conn)
                        .await?;
                    if ids.is_empty() {
                        let _: redis::RedisResult<()> = redis::cmd("XGROUP")
                            .arg("DELCONSUMER")
                            .arg(&**key)
                            .arg(&*self.group)
                            .arg(&consumer)
                            .query_async(conn)
                            .await;
                        break;
                    }
                    let mut cmd = redis::cmd("XCLAIM");
                    cmd.arg(&**key)
                        .arg(&*self.group)
                        .arg(&self.sh.cfg.node)
                        .arg(0);
                    for (id, ..) in &ids {
                        cmd.arg(id);
                    }
                    let claimed: StreamClaimReply = cmd.query_async(conn).await?;
                    // Entries trimmed away meanwhile come back empty or not at all: let go of
                    // them so the loop ends.
                    let got: Vec<&str> = claimed.ids.iter().map(|e| e.id.as_str()).collect();
                    let lost: Vec<&str> = ids
                        .iter()
                        .map(|(id, ..)| id.as_str())
                        .filter(|id| !got.contains(id))
                        .collect();
                    if !lost.is_empty() {
                        let _: () = redis::cmd("XACK")
                            .arg(&**key)
                            .arg(&*self.group)
                            .arg(&lost)
                            .query_async(conn)
                            .await?;
                    }
                    self.sh
                        .stats
                        .claimed
                        .fetch_add(claimed.ids.len() as u64, Ordering::Relaxed);
                    tracing::info!(group = %self.group, from = %consumer, entries = claimed.ids.len(), "redis bus: claimed entries left by a node that is gone");
                    let batch = claimed.ids.into_iter().map(|e| (key.clone(), e)).collect();
                    if self.process(conn, batch, true).await? {
                        return Ok(true);
                    }
                }
            }
        }
        Ok(false)
    }

    /// Delivers what is new to this group, in order, and acknowledges what is not to be
    /// delivered. Returns whether the subscription closed.
    async fn process(
        &self,
        conn: &mut MultiplexedConnection,
        batch: Vec<(Arc<str>, StreamId)>,
        redelivered: bool,
    ) -> redis::RedisResult<bool> {
        let sh = &self.sh;
        let prefix = sh.prefix();
        // (stream, entry) acknowledged without delivery.
        let mut skip: Vec<(Arc<str>, String)> = Vec::new();
        let mut candidates: Vec<(Arc<str>, String, Event)> = Vec::new();
        for (key, entry) in batch {
            let ev = entry
                .map
                .get("ev")
                .and_then(|v| redis::from_redis_value_ref::<Vec<u8>>(v).ok())
                .and_then(|b| envelope::decode(&b).map(|(_, _, ev)| ev));
            let Some(ev) = ev else {
                // Trimmed away while pending, or not ours to read.
                skip.push((key, entry.id));
                continue;
            };
            if !self.sub.patterns.iter().any(|p| p.matches(&ev.topic)) {
                skip.push((key, entry.id));
                continue;
            }
            match sh.pending.lock().get(&(self.sub.id, ev.id)) {
                // Delivered here already and not yet acknowledged.
                Some(p) if p.entry == entry.id => continue,
                Some(_) => {
                    sh.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    skip.push((key, entry.id));
                    continue;
                }
                None => {}
            }
            candidates.push((key, entry.id, ev));
        }
        // Mark each event id as taken by this node; a mark already there says who has it.
        let mut deliver = Vec::new();
        if !candidates.is_empty() {
            let mut pipe = redis::pipe();
            for (_, _, ev) in &candidates {
                pipe.cmd("SET")
                    .arg(mark_key(prefix, &self.group, ev.id))
                    .arg(&sh.cfg.node)
                    .arg("NX")
                    .arg("EX")
                    .arg(self.window_s);
            }
            let set: Vec<Option<String>> = pipe.query_async(conn).await?;
            let mut taken = Vec::new();
            for (c, ok) in candidates.into_iter().zip(set) {
                if ok.is_some() {
                    deliver.push(c);
                } else {
                    taken.push(c);
                }
            }
            if !taken.is_empty() {
                let mut pipe = redis::pipe();
                for (_, _, ev) in &taken {
                    pipe.cmd("GET").arg(mark_key(prefix, &self.group, ev.id));
                }
                let holders: Vec<Option<String>> = pipe.query_async(conn).await?;
                let alive: Vec<String> = sh
                    .nodes
                    .read()
                    .iter()
                    .filter(|n| !n.local)
                    .map(|n| n.node.clone())
                    .collect();
                let mut takeover = redis::pipe();
                for (c, holder) in taken.into_iter().zip(holders) {
                    match holder.as_deref() {
                        Some("done") => {
                            sh.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                            skip.push((c.0, c.1));
                        }
                        // Another node has this event (another copy of it) in hand.
                        Some(n) if n != sh.cfg.node && alive.iter().any(|a| a == n) => {
                            sh.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                            skip.push((c.0, c.1));
                        }
                        // Taken by this node before it restarted, by a node that is gone, or
                        // the mark expired: it was never handled to the end.
                        _ => {
                            takeover
                                .cmd("SET")
                                .arg(mark_key(prefix, &self.group, c.2.id))
                                .arg(&sh.cfg.node)
                                .arg("EX")
                                .arg(self.window_s)
                                .ignore();
                            deliver.push(c);
                        }
                    }
                }
                takeover.query_async::<()>(conn).await?;
            }
        }
        if !skip.is_empty() {
            let mut pipe = redis::pipe();
            for (key, id) in &skip {
                pipe.cmd("XACK")
                    .arg(&**key)
                    .arg(&*self.group)
                    .arg(id)
                    .ignore();
            }
            pipe.query_async::<()>(conn).await?;
        }
        // Stream order is kept: entries are delivered in the order read.
        deliver.sort_by_key(|c| entry_order(&c.1));
        for (key, entry, ev) in deliver {
            let id = ev.id;
            sh.pending.lock().insert(
                (self.sub.id, id),
                Pending {
                    stream: key,
                    entry,
                    group: self.group.clone(),
                    acking: false,
                },
            );
            sh.stats.delivered.fetch_add(1, Ordering::Relaxed);
            if redelivered {
                sh.stats.redelivered.fetch_add(1, Ordering::Relaxed);
            }
            if self.sub.queue.push_wait(Arc::new(ev)).await == Pushed::Closed {
                sh.pending.lock().remove(&(self.sub.id, id));
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// `MS-SEQ` as a pair, to order entries of several streams read together.
fn entry_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// Acknowledges handled entries in batches: the event id is marked `done` (so a copy or a
/// redelivery is skipped within the window) and the entry leaves the pending list, in one
/// pipeline, the mark first.
pub(crate) async fn acker(sh: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<(u64, Uuid)>) {
    let mut conn: Option<MultiplexedConnection> = None;
    let mut backoff = Backoff::new();
    let mut batch: Vec<(u64, Uuid)> = Vec::new();
    let window_s = sh.cfg.window.as_secs().max(1);
    loop {
        if batch.is_empty() {
            match rx.recv().await {
                Some(a) => batch.push(a),
                None => return,
            }
            while batch.len() < 512 {
                match rx.try_recv() {
                    Ok(a) => batch.push(a),
                    Err(_) => break,
                }
            }
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match connect(&sh.client).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    sh.error("acknowledger connection", &e);
                    if !backoff.wait(&sh).await {
                        return;
                    }
                    continue;
                }
            },
        };
        let items: Vec<((u64, Uuid), Pending)> = {
            let pending = sh.pending.lock();
            batch
                .iter()
                .filter_map(|k| pending.get(k).map(|p| (*k, p.clone())))
                .collect()
        };
        let mut pipe = redis::pipe();
        for ((_, id), p) in &items {
            pipe.cmd("SET")
                .arg(mark_key(sh.prefix(), &p.group, *id))
                .arg("done")
                .arg("EX")
                .arg(window_s)
                .ignore();
            pipe.cmd("XACK")
                .arg(&*p.stream)
                .arg(&*p.group)
                .arg(&p.entry)
                .ignore();
        }
        match pipe.query_async::<()>(c).await {
            Ok(()) => {
                backoff.reset();
                let mut pending = sh.pending.lock();
                for (k, _) in &items {
                    pending.remove(k);
                }
                sh.stats
                    .acked
                    .fetch_add(items.len() as u64, Ordering::Relaxed);
                batch.clear();
            }
            Err(e) => {
                sh.error("acknowledger", &e);
                conn = None;
                if !retryable(&e) {
                    // Not going to work again: the entries stay pending and are redelivered
                    // to this node after its next restart (and skipped, being marked done).
                    batch.clear();
                }
                if !backoff.wait(&sh).await {
                    return;
                }
            }
        }
    }
}
