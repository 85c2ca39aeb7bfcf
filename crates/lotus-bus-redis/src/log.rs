//! The four durable streams (DESIGN.md §3) on Redis Streams: one stream per name
//! (`NS:log:STREAM`), appended with `XADD`, trimmed by `MAXLEN` and by age (`MINID`). Every
//! node of a shared bus appends what was published on it, so the streams hold the whole
//! system's history once.
//!
//! A stored event's `seq` is its entry id `MS-N` as one number, `MS × 2^20 + N`: increasing
//! within a stream.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use lotus_bus::{DurableLog, LogError, StoredEvent, StreamCount, StreamName, StreamQuery};
use lotus_core::Event;
use redis::aio::MultiplexedConnection;
use redis::streams::StreamRangeReply;
use tokio::sync::{mpsc, oneshot};

use crate::link::{connect, redact};

/// Entries read per page of a query.
const PAGE: usize = 512;
/// How much later than its own time an event may have been written (Redis away meanwhile
/// delays it): time bounds of a query are widened by this much, then applied to event times.
const SLACK: Duration = Duration::from_secs(300);
/// Bits of the entry's sequence part in `seq`.
const SEQ_BITS: u32 = 20;

enum Cmd {
    Append(StreamName, Arc<Event>),
    Flush(oneshot::Sender<Result<(), String>>),
}

/// The durable streams on Redis.
pub struct RedisLog {
    url: String,
    prefix: String,
    conn: MultiplexedConnection,
    tx: mpsc::UnboundedSender<Cmd>,
}

fn remote(url: &str, e: impl std::fmt::Display) -> LogError {
    LogError::Remote {
        backend: format!("Redis at {}", redact(url)),
        reason: e.to_string(),
    }
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `MS-N` as one number.
fn seq_of(id: &str) -> Option<i64> {
    let (ms, n) = id.split_once('-')?;
    let (ms, n): (i64, i64) = (ms.parse().ok()?, n.parse().ok()?);
    Some((ms << SEQ_BITS) | n.min((1 << SEQ_BITS) - 1))
}

/// A number from [`seq_of`] as an entry id.
fn id_of(seq: i64) -> String {
    format!("{}-{}", seq >> SEQ_BITS, seq & ((1 << SEQ_BITS) - 1))
}

impl RedisLog {
    /// Connects; `max_len` entries are kept per stream (approximately), none older than
    /// `retention`.
    pub async fn connect(
        url: &str,
        namespace: &str,
        max_len: usize,
        retention: Duration,
    ) -> Result<Self, LogError> {
        let client = redis::Client::open(url).map_err(|e| remote(url, e))?;
        let conn = connect(&client).await.map_err(|e| remote(url, e))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let prefix = format!("{namespace}:log:");
        tokio::spawn(writer(
            client,
            conn.clone(),
            rx,
            prefix.clone(),
            max_len,
            retention,
        ));
        Ok(Self {
            url: url.to_owned(),
            prefix,
            conn,
            tx,
        })
    }

    fn key(&self, stream: StreamName) -> String {
        format!("{}{stream}", self.prefix)
    }
}

/// Writes appends in pipelined batches, in order; retries a batch across reconnects.
async fn writer(
    client: redis::Client,
    conn: MultiplexedConnection,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    prefix: String,
    max_len: usize,
    retention: Duration,
) {
    let mut conn = Some(conn);
    let mut batch: Vec<(StreamName, Arc<Event>)> = Vec::new();
    let mut flushes: Vec<oneshot::Sender<Result<(), String>>> = Vec::new();
    let mut unreported: Option<String> = None;
    let mut delay = Duration::from_millis(50);
    let mut last_trim = std::time::Instant::now();
    loop {
        if batch.is_empty() && flushes.is_empty() {
            match rx.recv().await {
                Some(Cmd::Append(s, e)) => batch.push((s, e)),
                Some(Cmd::Flush(f)) => flushes.push(f),
                None => return,
            }
        }
        while batch.len() < 4096 {
            match rx.try_recv() {
                Ok(Cmd::Append(s, e)) => batch.push((s, e)),
                Ok(Cmd::Flush(f)) => flushes.push(f),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match connect(&client).await {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "durable streams: Redis unreachable; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                        continue;
                    }
                },
            };
            let mut pipe = redis::pipe();
            for (stream, ev) in &batch {
                let body = serde_json::to_vec(&**ev).unwrap_or_default();
                pipe.cmd("XADD")
                    .arg(format!("{prefix}{stream}"))
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(max_len)
                    .arg("*")
                    .arg("ev")
                    .arg(body)
                    .ignore();
            }
            if last_trim.elapsed() > Duration::from_secs(60) {
                last_trim = std::time::Instant::now();
                let min = ms(SystemTime::now())
                    .saturating_sub(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX));
                for s in StreamName::ALL {
                    pipe.cmd("XTRIM")
                        .arg(format!("{prefix}{s}"))
                        .arg("MINID")
                        .arg("~")
                        .arg(min)
                        .ignore();
                }
            }
            match pipe.query_async::<()>(c).await {
                Ok(()) => {
                    delay = Duration::from_millis(50);
                    batch.clear();
                }
                Err(e) if !crate::link::permanent(&e) => {
                    // Sent again on a new connection.
                    tracing::warn!(error = %e, "durable streams: connection lost; retrying");
                    conn = None;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                    continue;
                }
                Err(e) => {
                    tracing::error!(events = batch.len(), error = %e, "durable streams: Redis refused events; they are lost");
                    unreported = Some(format!(
                        "{} event(s) could not be written: {e}",
                        batch.len()
                    ));
                    batch.clear();
                }
            }
        }
        if !flushes.is_empty() {
            let result = match unreported.take() {
                Some(e) => Err(e),
                None => Ok(()),
            };
            for f in flushes.drain(..) {
                let _ = f.send(result.clone());
            }
        }
    }
}

#[async_trait]
impl DurableLog for RedisLog {
    fn append(&self, stream: StreamName, ev: Arc<Event>) -> Result<(), LogError> {
        self.tx
            .send(Cmd::Append(stream, ev))
            .map_err(|_| LogError::Closed)
    }

    async fn flush(&self) -> Result<(), LogError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Cmd::Flush(done))
            .map_err(|_| LogError::Closed)?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(remote(&self.url, e)),
            Err(_) => Err(LogError::Closed),
        }
    }

    async fn query(&self, q: StreamQuery) -> Result<Vec<StoredEvent>, LogError> {
        let key = self.key(q.stream);
        let mut conn = self.conn.clone();
        // The bounds as entry ids; `(` makes one exclusive. Entry ids are the time an event
        // was written, a little after its own time: the range is widened by `SLACK` and the
        // events' times are compared exactly.
        let slack = u64::try_from(SLACK.as_millis()).unwrap_or(0);
        let mut low = match (q.since, q.after_seq) {
            (_, Some(after)) if !q.newest_first => format!("({}", id_of(after)),
            (Some(t), _) => format!("{}-0", ms(t).saturating_sub(slack)),
            _ => "-".to_owned(),
        };
        let mut high = match q.until {
            Some(t) => format!("({}-0", ms(t).saturating_add(slack)),
            None => "+".to_owned(),
        };
        if q.newest_first
            && let Some(after) = q.after_seq
        {
            // Newest first, paging backwards: entries before the one last seen.
            high = format!("({}", id_of(after));
        }
        let mut out = Vec::new();
        while out.len() < q.limit {
            let mut cmd = redis::cmd(if q.newest_first {
                "XREVRANGE"
            } else {
                "XRANGE"
            });
            if q.newest_first {
                cmd.arg(&key).arg(&high).arg(&low);
            } else {
                cmd.arg(&key).arg(&low).arg(&high);
            }
            cmd.arg("COUNT").arg(PAGE);
            let page: StreamRangeReply = cmd
                .query_async(&mut conn)
                .await
                .map_err(|e| remote(&self.url, e))?;
            let Some(last) = page.ids.last() else { break };
            let bound = format!("({}", last.id);
            let full = page.ids.len() == PAGE;
            for entry in page.ids {
                let Some(seq) = seq_of(&entry.id) else {
                    continue;
                };
                let ev: Event = match entry
                    .map
                    .get("ev")
                    .and_then(|v| redis::from_redis_value_ref::<Vec<u8>>(v).ok())
                    .and_then(|b| serde_json::from_slice(&b).ok())
                {
                    Some(ev) => ev,
                    None => {
                        return Err(LogError::Corrupt {
                            path: key.clone().into(),
                            seq,
                            reason: "the entry holds no event".into(),
                        });
                    }
                };
                if q.topic.as_ref().is_some_and(|p| !p.matches(&ev.topic))
                    || q.since.is_some_and(|t| ev.time < t)
                    || q.until.is_some_and(|t| ev.time >= t)
                {
                    continue;
                }
                out.push(StoredEvent {
                    seq,
                    stream: q.stream,
                    event: ev,
                });
                if out.len() == q.limit {
                    break;
                }
            }
            if !full {
                break;
            }
            if q.newest_first {
                high = bound;
            } else {
                low = bound;
            }
        }
        Ok(out)
    }

    async fn counts(&self) -> Result<Vec<StreamCount>, LogError> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for s in StreamName::ALL {
            pipe.cmd("XLEN").arg(self.key(s));
        }
        let lens: Vec<u64> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| remote(&self.url, e))?;
        Ok(StreamName::ALL
            .into_iter()
            .zip(lens)
            .map(|(stream, events)| StreamCount { stream, events })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::{id_of, seq_of};

    #[test]
    fn entry_ids_and_seqs_round_trip_in_order() {
        let a = seq_of("1732400000000-0").expect("id");
        let b = seq_of("1732400000000-7").expect("id");
        let c = seq_of("1732400000001-0").expect("id");
        assert!(a < b && b < c);
        assert_eq!(id_of(b), "1732400000000-7");
        assert_eq!(seq_of("nonsense"), None);
    }
}
