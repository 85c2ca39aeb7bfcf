//! Connections, backoff, and the pub/sub reader.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use lotus_bus::Scope;
use redis::aio::MultiplexedConnection;
use uuid::Uuid;

use crate::{Shared, envelope};

/// How long a remote event may wait for room in a full local queue before that subscriber
/// misses it (the same bound the nucleus gives its own events).
const INJECT_WAIT: Duration = Duration::from_millis(500);
/// Messages remembered to drop the second copy Redis sends when two of our globs match.
const SEEN: usize = 4096;

/// `url` with any password replaced by `***` (in the user part or a `password=` parameter).
pub fn redact(url: &str) -> String {
    let url = match url.split_once('?') {
        Some((base, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _))
                        if k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("pass") =>
                    {
                        format!("{k}=***")
                    }
                    _ => kv.to_owned(),
                })
                .collect();
            format!("{base}?{}", query.join("&"))
        }
        None => url.to_owned(),
    };
    let url = url.as_str();
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => format!("{}***{}", &url[..s + 3], &url[at..]),
            }
        }
        _ => url.to_owned(),
    }
}

/// Whether Redis refused a command for good (a wrong key type, a bad argument): sending it
/// again would fail again. Anything else (a cut connection, a timeout, a server that is
/// loading, read-only, out of memory for now) is worth retrying.
pub(crate) fn permanent(e: &redis::RedisError) -> bool {
    matches!(
        e.code(),
        Some("WRONGTYPE" | "ERR" | "NOSCRIPT" | "NOPERM" | "WRONGPASS")
    )
}

/// A multiplexed connection with bounded connect and response times.
pub(crate) async fn connect(client: &redis::Client) -> redis::RedisResult<MultiplexedConnection> {
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)));
    client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
}

/// Exponential backoff: 50 ms doubling to 2 s.
pub(crate) struct Backoff(u32);

impl Backoff {
    pub(crate) fn new() -> Self {
        Self(0)
    }

    pub(crate) fn reset(&mut self) {
        self.0 = 0;
    }

    /// Sleeps for the next delay; returns false when the bridge is closing.
    pub(crate) async fn wait(&mut self, sh: &Shared) -> bool {
        let delay = Duration::from_millis(50u64 << self.0.min(6)).min(Duration::from_secs(2));
        self.0 += 1;
        tokio::select! {
            _ = tokio::time::sleep(delay) => !sh.stopped(),
            _ = sh.stop.notified() => false,
        }
    }
}

/// The channel of events on `topic`.
pub(crate) fn event_channel(prefix: &str, topic: &str) -> String {
    format!("{prefix}:e:{topic}")
}

/// The channel of replies for `node`.
pub(crate) fn node_channel(prefix: &str, node: &str) -> String {
    format!("{prefix}:n:{node}")
}

/// The globs this node must be subscribed to now.
fn wanted(sh: &Shared) -> BTreeSet<String> {
    let prefix = format!("{}:e:", sh.prefix());
    sh.subs
        .lock()
        .values()
        .filter(|s| s.scope != Scope::Node)
        .flat_map(|s| s.patterns.iter().map(|p| p.to_glob(&prefix)))
        .collect()
}

/// Reads pub/sub for as long as the bridge lives, reconnecting with backoff.
pub(crate) async fn pubsub(sh: Arc<Shared>) {
    let mut backoff = Backoff::new();
    let mut seen: (HashSet<Uuid>, VecDeque<Uuid>) = (HashSet::new(), VecDeque::new());
    let direct = node_channel(sh.prefix(), &sh.cfg.node);
    let mut first = true;
    while !sh.stopped() {
        let connecting = tokio::time::timeout(
            sh.cfg.node_ttl.max(Duration::from_secs(2)),
            sh.client.get_async_pubsub(),
        );
        let ps = match connecting.await.unwrap_or_else(|_| {
            Err(redis::RedisError::from(std::io::Error::from(
                std::io::ErrorKind::TimedOut,
            )))
        }) {
            Ok(ps) => ps,
            Err(e) => {
                sh.error("pub/sub connection", &e);
                if !backoff.wait(&sh).await {
                    return;
                }
                continue;
            }
        };
        let (mut sink, mut stream) = ps.split();
        let mut current: BTreeSet<String> = BTreeSet::new();
        let setup = async {
            let seq = sh.globs_asked.load(Ordering::Acquire);
            sink.subscribe(&direct).await?;
            for g in wanted(&sh) {
                sink.psubscribe(&g).await?;
                current.insert(g);
            }
            sh.globs_done.store(seq, Ordering::Release);
            redis::RedisResult::Ok(())
        };
        if let Err(e) = setup.await {
            sh.error("pub/sub subscribe", &e);
            if !backoff.wait(&sh).await {
                return;
            }
            continue;
        }
        if !first {
            sh.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            tracing::info!(node = %sh.cfg.node, "redis bus: pub/sub reconnected");
        }
        first = false;
        backoff.reset();
        sh.pubsub_up.store(true, Ordering::Release);
        // A connection that went half-open (the peer vanished without a word) shows only when
        // something is asked of it: a `PING` every `node_ttl`, answered within `node_ttl`.
        let every = sh.cfg.node_ttl;
        let mut check = tokio::time::interval(every);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.tick().await;
        loop {
            tokio::select! {
                _ = check.tick() => {
                    match tokio::time::timeout(every, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            sh.error("pub/sub ping", &e);
                            break;
                        }
                        Err(_) => {
                            tracing::warn!(node = %sh.cfg.node, "redis bus: pub/sub connection silent; reconnecting");
                            break;
                        }
                    }
                }
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    receive(&sh, msg.get_payload_bytes(), &mut seen).await;
                }
                _ = sh.globs_changed.notified() => {
                    let seq = sh.globs_asked.load(Ordering::Acquire);
                    let want = wanted(&sh);
                    let mut failed = None;
                    for g in want.difference(&current) {
                        if let Err(e) = sink.psubscribe(g).await {
                            failed = Some(e);
                            break;
                        }
                    }
                    for g in current.difference(&want) {
                        if let Err(e) = sink.punsubscribe(g).await {
                            failed = Some(e);
                            break;
                        }
                    }
                    if let Some(e) = failed {
                        sh.error("pub/sub subscribe", &e);
                        break;
                    }
                    current = want;
                    sh.globs_done.store(seq, Ordering::Release);
                }
                _ = sh.stop.notified() => return,
            }
        }
        sh.pubsub_up.store(false, Ordering::Release);
        if !sh.stopped() {
            tracing::warn!(node = %sh.cfg.node, "redis bus: pub/sub connection lost; reconnecting");
        }
        if !backoff.wait(&sh).await {
            return;
        }
    }
}

async fn receive(sh: &Shared, bytes: &[u8], seen: &mut (HashSet<Uuid>, VecDeque<Uuid>)) {
    let Some((node, kind, events)) = envelope::decode(bytes) else {
        tracing::warn!(node = %sh.cfg.node, "redis bus: an undecodable message was ignored");
        return;
    };
    if node == sh.cfg.node {
        return;
    }
    let Some(bus) = sh.bus.upgrade() else { return };
    // Two of our globs can match one channel: Redis then sends the message twice. A message
    // is known by its first event.
    if kind != b'r'
        && let Some(first) = events.first()
    {
        if !seen.0.insert(first.id) {
            return;
        }
        seen.1.push_back(first.id);
        if seen.1.len() > SEEN
            && let Some(old) = seen.1.pop_front()
        {
            seen.0.remove(&old);
        }
    }
    for ev in events {
        deliver(sh, &bus, node, kind, Arc::new(ev)).await;
    }
}

async fn deliver(
    sh: &Shared,
    bus: &lotus_bus::LocalBus,
    node: &str,
    kind: u8,
    ev: Arc<lotus_core::Event>,
) {
    if kind == b'r' {
        bus.settle(&ev);
        return;
    }
    sh.stats.received.fetch_add(1, Ordering::Relaxed);
    if let (Some(cid), Some(deadline)) = (ev.correlation_id, ev.deadline) {
        sh.remember_request(cid, node, deadline);
    }
    bus.inject(ev, kind == b'd', INJECT_WAIT).await;
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://:secret@h:1"), "redis://:***@h:1");
        assert_eq!(redact("redis://secret@h"), "redis://***@h");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(
            redact("redis+unix:///run/redis.sock?db=1&pass=secret"),
            "redis+unix:///run/redis.sock?db=1&pass=***"
        );
    }
}
