//! Durable delivery: one consumer-group reader per module subscription, and the acknowledger.

use std::collections::HashMap;
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
use crate::{EntryKey, Pending, Shared, envelope};

/// Entries read at once.
const COUNT: usize = 256;
/// How long one blocking read waits for new entries.
const BLOCK_MS: u64 = 1000;

fn mark_key(prefix: &str, group: &str, id: Uuid) -> String {
    format!("{prefix}:x:{group}:{id}")
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
        // `Ok`: the subscription ended.
        if let Err(e) = r
            .session(&mut conn, from_start, &mut backoff, &mut starting)
            .await
        {
            r.sh.error(&format!("group `{}`", r.group), &e);
        } else {
            return;
        }
        // Once its groups existed, a group found missing was lost by Redis (restarted empty,
        // `NOGROUP`): it is created again from the start of the stream, so that what was
        // written since (a publisher's backlog, say) is read.
        from_start = starting.is_none();
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
    ) -> redis::RedisResult<()> {
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
                    return Ok(());
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
                return Ok(());
            }
            if last_claim.elapsed() >= self.sh.cfg.node_ttl {
                last_claim = Instant::now();
                if self.claim(conn).await? {
                    return Ok(());
                }
            }
            let reply: Option<StreamReadReply> = read.query_async(conn).await?;
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
                return Ok(());
            }
        }
    }

    /// Takes over the entries pending on consumers whose node is gone. Returns whether the
    /// subscription closed meanwhile.
    async fn claim(&self, conn: &mut MultiplexedConnection) -> redis::RedisResult<bool> {
        let hosts = self.hosts();
        let idle_ms = u64::try_from(self.sh.cfg.node_ttl.as_millis()).unwrap_or(5000);
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
                // Left by a node that is gone, or that no longer runs this module.
                let keep = consumer == self.sh.cfg.node
                    || hosts.iter().any(|(n, runs)| *n == consumer && *runs);
                if keep {
                    continue;
                }
                loop {
                    let ids: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
                        .arg(&**key)
                        .arg(&*self.group)
                        .arg("IDLE")
                        .arg(idle_ms)
                        .arg("-")
                        .arg("+")
                        .arg(COUNT)
                        .arg(&consumer)
                        .query_async(conn)
                        .await?;
                    if ids.is_empty() {
                        if hosts.iter().any(|(n, _)| *n == consumer) {
                            // Still there: its entries may not be idle long enough yet.
                            break;
                        }
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
                        .arg(idle_ms);
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

    /// Marks each event id of `entries` as taken by this node, and drops from them the events
    /// a mark says are handled already or in hand on another node that runs this group.
    async fn mark(
        &self,
        conn: &mut MultiplexedConnection,
        entries: &mut [Wanted],
    ) -> redis::RedisResult<()> {
        let sh = &self.sh;
        let key = |id: Uuid| mark_key(sh.prefix(), &self.group, id);
        let ids: Vec<Uuid> = entries
            .iter()
            .flat_map(|e| e.2.iter().map(|ev| ev.id))
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("SET")
                .arg(key(*id))
                .arg(&sh.cfg.node)
                .arg("NX")
                .arg("EX")
                .arg(self.window_s);
        }
        let set: Vec<Option<String>> = pipe.query_async(conn).await?;
        let taken: Vec<Uuid> = ids
            .into_iter()
            .zip(set)
            .filter(|(_, ok)| ok.is_none())
            .map(|(id, _)| id)
            .collect();
        if taken.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for id in &taken {
            pipe.cmd("GET").arg(key(*id));
        }
        let holders: Vec<Option<String>> = pipe.query_async(conn).await?;
        let hosts = self.hosts();
        let mut dropped = std::collections::HashSet::new();
        let mut takeover = redis::pipe();
        for (id, holder) in taken.iter().zip(holders) {
            match holder.as_deref() {
                // Handled already, or another node that runs this group has it (another copy)
                // in hand.
                Some("done") => {
                    dropped.insert(*id);
                }
                Some(n) if n != sh.cfg.node && hosts.iter().any(|(h, runs)| h == n && *runs) => {
                    dropped.insert(*id);
                }
                // Taken by this node before it restarted, by a node that is gone or no longer
                // runs the module, or the mark expired: it was never handled to the end.
                _ => {
                    takeover
                        .cmd("SET")
                        .arg(key(*id))
                        .arg(&sh.cfg.node)
                        .arg("EX")
                        .arg(self.window_s)
                        .ignore();
                }
            }
        }
        takeover.query_async::<()>(conn).await?;
        sh.stats
            .duplicates
            .fetch_add(dropped.len() as u64, Ordering::Relaxed);
        for e in entries {
            e.2.retain(|ev| !dropped.contains(&ev.id));
        }
        Ok(())
    }

    /// The nodes reporting, and whether each runs this group now.
    fn hosts(&self) -> Vec<(String, bool)> {
        self.sh
            .nodes
            .read()
            .iter()
            .map(|n| {
                let runs = n.info["groups"]
                    .as_array()
                    .is_some_and(|gs| gs.iter().any(|g| g.as_str() == Some(&*self.group)));
                (n.node.clone(), runs)
            })
            .collect()
    }

    /// Delivers what is new to this group, in order, and acknowledges entries with nothing
    /// (left) to deliver. Returns whether the subscription closed.
    async fn process(
        &self,
        conn: &mut MultiplexedConnection,
        mut batch: Vec<(Arc<str>, StreamId)>,
        redelivered: bool,
    ) -> redis::RedisResult<bool> {
        let sh = &self.sh;
        // Stream order is kept: entries are delivered in the order of their ids.
        batch.sort_by_key(|(_, e)| entry_order(&e.id));
        // (stream, entry) acknowledged without delivery.
        let mut skip: Vec<(Arc<str>, Arc<str>)> = Vec::new();
        // (stream, entry, events of it this subscription wants and not in hand here, whether
        // another event of it is in hand here).
        let mut entries: Vec<Wanted> = Vec::new();
        // Event ids met in this batch: a second copy (a retried publish) is skipped.
        let mut met: std::collections::HashSet<Uuid> = std::collections::HashSet::new();
        for (key, entry) in batch {
            let id: Arc<str> = Arc::from(entry.id.as_str());
            let events = entry
                .map
                .get("ev")
                .and_then(|v| redis::from_redis_value_ref::<Vec<u8>>(v).ok())
                .and_then(|b| {
                    envelope::decode(&b).map(|(node, _, evs)| {
                        // A request from another node: its reply goes straight back.
                        for ev in &evs {
                            if let (Some(cid), Some(deadline)) = (ev.correlation_id, ev.deadline)
                                && node != sh.cfg.node
                            {
                                sh.remember_request(cid, node, deadline);
                            }
                        }
                        evs
                    })
                });
            let Some(events) = events else {
                // Trimmed away while pending, or not ours to read.
                skip.push((key, id));
                continue;
            };
            let mut wanted = Vec::new();
            let mut in_hand = false;
            for ev in events {
                if !self.sub.patterns.iter().any(|p| p.matches(&ev.topic)) {
                    continue;
                }
                match sh.pending.lock().get(&(self.sub.id, ev.id)) {
                    // Delivered here already from this entry and not yet acknowledged.
                    Some(p) if p.entry == id => in_hand = true,
                    // In hand from another copy of the event.
                    Some(_) => {
                        sh.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                    None if !met.insert(ev.id) => {
                        sh.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                    None => wanted.push(ev),
                }
            }
            if wanted.is_empty() {
                if !in_hand {
                    skip.push((key, id));
                }
                continue;
            }
            entries.push((key, id, wanted, in_hand));
        }
        self.mark(conn, &mut entries).await?;
        let mut deliver = Vec::new();
        for (key, id, events, in_hand) in entries {
            if !events.is_empty() {
                deliver.push((key, id, events));
            } else if !in_hand {
                // Acknowledged only when none of its events is still being handled here.
                skip.push((key, id));
            }
        }
        if !skip.is_empty() {
            let mut pipe = redis::pipe();
            for (key, id) in &skip {
                pipe.cmd("XACK")
                    .arg(&**key)
                    .arg(&*self.group)
                    .arg(&**id)
                    .ignore();
            }
            pipe.query_async::<()>(conn).await?;
        }
        for (key, entry, events) in deliver {
            *sh.open
                .lock()
                .entry((key.clone(), self.group.clone(), entry.clone()))
                .or_insert(0) += events.len();
            for ev in events {
                let id = ev.id;
                sh.pending.lock().insert(
                    (self.sub.id, id),
                    Pending {
                        stream: key.clone(),
                        entry: entry.clone(),
                        group: self.group.clone(),
                        acking: false,
                    },
                );
                // Until the event is in the queue, ending here (the reader stopped for a
                // reload) must not leave it looking in hand: the next reader delivers it.
                let guard = Undelivered {
                    sh,
                    key: (self.sub.id, id),
                    entry: (key.clone(), self.group.clone(), entry.clone()),
                };
                if self.sub.queue.push_wait(Arc::new(ev)).await == Pushed::Closed {
                    return Ok(true);
                }
                std::mem::forget(guard);
                sh.stats.delivered.fetch_add(1, Ordering::Relaxed);
                if redelivered {
                    sh.stats.redelivered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(false)
    }
}

/// A stream entry read: (stream, entry id, the events of it to deliver, whether another of
/// its events is in hand here).
type Wanted = (Arc<str>, Arc<str>, Vec<Event>, bool);

/// Takes back an event that was marked in hand but never reached the queue.
struct Undelivered<'a> {
    sh: &'a Shared,
    key: (u64, Uuid),
    entry: EntryKey,
}

impl Drop for Undelivered<'_> {
    fn drop(&mut self) {
        self.sh.pending.lock().remove(&self.key);
        // The entry is left for the next reader, which delivers what is not done.
        self.sh.open.lock().remove(&self.entry);
    }
}

/// `MS-SEQ` as a pair, to order entries of several streams read together.
fn entry_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// Acknowledges handled events in batches: each event id is marked `done` (so a copy or a
/// redelivery is skipped within the window), and an entry whose events are all handled leaves
/// the pending list, in one pipeline, the marks first.
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
            while batch.len() < 1024 {
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
        // Entries whose last open events are in this batch.
        let mut counts: HashMap<EntryKey, usize> = HashMap::new();
        for (_, p) in &items {
            *counts
                .entry((p.stream.clone(), p.group.clone(), p.entry.clone()))
                .or_insert(0) += 1;
        }
        let finished: Vec<EntryKey> = {
            let open = sh.open.lock();
            counts
                .iter()
                .filter(|(k, n)| open.get(*k).is_some_and(|o| o <= n))
                .map(|(k, _)| k.clone())
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
        }
        for (stream, group, entry) in &finished {
            pipe.cmd("XACK")
                .arg(&**stream)
                .arg(&**group)
                .arg(&**entry)
                .ignore();
        }
        let sent = if items.is_empty() {
            Ok(())
        } else {
            pipe.query_async::<()>(c).await
        };
        match sent {
            Ok(()) => {
                backoff.reset();
                {
                    let mut pending = sh.pending.lock();
                    for (k, _) in &items {
                        pending.remove(k);
                    }
                }
                {
                    let mut open = sh.open.lock();
                    for (k, n) in counts {
                        if let Some(o) = open.get_mut(&k) {
                            *o = o.saturating_sub(n);
                            if *o == 0 {
                                open.remove(&k);
                            }
                        }
                    }
                }
                sh.stats
                    .acked
                    .fetch_add(items.len() as u64, Ordering::Relaxed);
                batch.clear();
            }
            Err(e) => {
                sh.error("acknowledger", &e);
                conn = None;
                if crate::link::permanent(&e) {
                    // Not going to work again: the entries stay pending; after this node's
                    // next restart they are delivered again (at least once).
                    tracing::error!(error = %e, "redis bus: acknowledgements refused");
                    batch.clear();
                }
                if !backoff.wait(&sh).await {
                    return;
                }
            }
        }
    }
}
