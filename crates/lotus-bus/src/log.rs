//! Durable streams: an append-only log of events per stream, queryable by time and topic.
//!
//! The embedded backend keeps them in SQLite (WAL) under `$LOTUS_HOME/data`. Appends never wait
//! on the disk: a writer thread batches them into transactions; [`DurableLog::flush`] waits until
//! everything appended before it is committed.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::SystemTime;

use async_trait::async_trait;
use lotus_core::event::{from_micros, micros};
use lotus_core::{Event, Pattern, Topic};
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The four durable streams of DESIGN.md §3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamName {
    /// Every turn of every conversation.
    ConversationStream,
    /// Every side effect and every denial: the audit trail.
    ActionLog,
    /// Module lifecycle: started, crashed, restarted, failed, stopped.
    ModuleEvents,
    /// Changes to memory.
    MemoryUpdates,
}

impl StreamName {
    /// All streams.
    pub const ALL: [StreamName; 4] = [
        StreamName::ConversationStream,
        StreamName::ActionLog,
        StreamName::ModuleEvents,
        StreamName::MemoryUpdates,
    ];

    /// The stream's name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamName::ConversationStream => "conversation_stream",
            StreamName::ActionLog => "action_log",
            StreamName::ModuleEvents => "module_events",
            StreamName::MemoryUpdates => "memory_updates",
        }
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StreamName {
    type Err = LogError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|n| n.as_str() == s)
            .ok_or_else(|| LogError::UnknownStream(s.to_owned()))
    }
}

/// A durable-log failure.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The database could not be opened or written.
    #[error("stream database {path}: {source}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// A stored row could not be decoded.
    #[error("stream database {path}: row {seq} is corrupt: {reason}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// The row.
        seq: i64,
        /// What is wrong with it.
        reason: String,
    },
    /// No such stream.
    #[error(
        "unknown stream `{0}`; the streams are conversation_stream, action_log, module_events, memory_updates"
    )]
    UnknownStream(String),
    /// The writer thread is gone (the log was closed).
    #[error("the stream writer has stopped; restart the nucleus")]
    Closed,
    /// A log on a server failed (unreachable, refused).
    #[error("durable streams on {backend}: {reason}")]
    Remote {
        /// Which server (`Redis at …`).
        backend: String,
        /// What went wrong.
        reason: String,
    },
}

impl LogError {
    /// Whether trying again may succeed (a busy or full disk may recover; a closed log won't).
    pub fn is_retryable(&self) -> bool {
        matches!(self, LogError::Db { .. } | LogError::Remote { .. })
    }
}

/// Which stored events to return.
#[derive(Debug, Clone)]
pub struct StreamQuery {
    /// The stream.
    pub stream: StreamName,
    /// Only events at or after this time.
    pub since: Option<SystemTime>,
    /// Only events before this time.
    pub until: Option<SystemTime>,
    /// Only events whose topic matches.
    pub topic: Option<Pattern>,
    /// Only events stored after this sequence number (for paging).
    pub after_seq: Option<i64>,
    /// At most this many.
    pub limit: usize,
    /// Newest first instead of oldest first.
    pub newest_first: bool,
}

impl StreamQuery {
    /// Everything in `stream`, oldest first, up to 1000 events.
    pub fn new(stream: StreamName) -> Self {
        Self {
            stream,
            since: None,
            until: None,
            topic: None,
            after_seq: None,
            limit: 1000,
            newest_first: false,
        }
    }
}

/// An event as stored, with its position in the log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredEvent {
    /// Position in the log (increasing across all streams).
    pub seq: i64,
    /// The stream it was appended to.
    pub stream: StreamName,
    /// The event.
    pub event: Event,
}

/// Count of events per stream.
#[derive(Debug, Clone, Serialize)]
pub struct StreamCount {
    /// The stream.
    pub stream: StreamName,
    /// Events stored.
    pub events: u64,
}

/// Append-only durable streams.
#[async_trait]
pub trait DurableLog: Send + Sync + 'static {
    /// Appends without waiting for the disk.
    fn append(&self, stream: StreamName, ev: Arc<Event>) -> Result<(), LogError>;
    /// Waits until everything appended so far is committed.
    async fn flush(&self) -> Result<(), LogError>;
    /// Reads stored events.
    async fn query(&self, q: StreamQuery) -> Result<Vec<StoredEvent>, LogError>;
    /// Events per stream.
    async fn counts(&self) -> Result<Vec<StreamCount>, LogError>;
}

enum Cmd {
    Append(StreamName, Arc<Event>),
    Flush(tokio::sync::oneshot::Sender<Result<(), String>>),
}

/// The embedded durable log: one SQLite file, a batching writer thread.
pub struct SqliteLog {
    path: PathBuf,
    tx: Mutex<Option<mpsc::Sender<Cmd>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    reader: Arc<Mutex<Connection>>,
}

const SCHEMA_VERSION: i64 = 1;

fn open_conn(path: &Path) -> Result<Connection, LogError> {
    let db = |source| LogError::Db {
        path: path.to_owned(),
        source,
    };
    let conn = Connection::open(path).map_err(db)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(db)?;
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
        .map_err(db)?;
    Ok(conn)
}

fn migrate(conn: &Connection, path: &Path) -> Result<(), LogError> {
    let db = |source| LogError::Db {
        path: path.to_owned(),
        source,
    };
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db)?;
    if version < 1 {
        conn.execute_batch(
            "BEGIN;
             CREATE TABLE IF NOT EXISTS stream_events (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 stream TEXT NOT NULL,
                 id TEXT NOT NULL,
                 topic TEXT NOT NULL,
                 source TEXT NOT NULL,
                 time_us INTEGER NOT NULL,
                 correlation_id TEXT,
                 payload TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS stream_events_by_time ON stream_events(stream, time_us);
             CREATE TRIGGER IF NOT EXISTS stream_events_append_only
                 BEFORE UPDATE ON stream_events
                 BEGIN SELECT RAISE(ABORT, 'durable streams are append-only'); END;
             PRAGMA user_version = 1;
             COMMIT;",
        )
        .map_err(db)?;
    }
    if version > SCHEMA_VERSION {
        return Err(LogError::Corrupt {
            path: path.to_owned(),
            seq: 0,
            reason: format!(
                "schema version {version} is newer than this lotus understands ({SCHEMA_VERSION}); upgrade lotus"
            ),
        });
    }
    Ok(())
}

fn write_batch(conn: &mut Connection, batch: &[(StreamName, Arc<Event>)]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO stream_events (stream, id, topic, source, time_us, correlation_id, payload)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for (stream, ev) in batch {
            stmt.execute(params![
                stream.as_str(),
                ev.id.to_string(),
                ev.topic.as_str(),
                &*ev.source,
                ev.time_micros(),
                ev.correlation_id.map(|c| c.to_string()),
                ev.payload.to_string(),
            ])?;
        }
    }
    tx.commit()
}

/// Attempts at writing one batch before its events are given up (a busy or full disk may recover).
const WRITE_ATTEMPTS: u32 = 5;

fn writer_loop(mut conn: Connection, rx: mpsc::Receiver<Cmd>, path: PathBuf) {
    let mut batch = Vec::with_capacity(1024);
    let mut flushes = Vec::new();
    // A write failure not yet reported: the next flush returns it, so nothing is lost silently.
    let mut unreported: Option<String> = None;
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                Cmd::Append(s, e) => batch.push((s, e)),
                Cmd::Flush(done) => flushes.push(done),
            }
            if batch.len() < 4096 {
                next = rx.try_recv().ok();
            }
        }
        let mut attempt = 0;
        while !batch.is_empty() {
            attempt += 1;
            match write_batch(&mut conn, &batch) {
                Ok(()) => break,
                Err(e) if attempt < WRITE_ATTEMPTS => {
                    tracing::warn!(path = %path.display(), events = batch.len(), attempt, error = %e, "durable write failed; retrying");
                    std::thread::sleep(std::time::Duration::from_millis(50 << attempt));
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), events = batch.len(), error = %e, "durable events lost after {WRITE_ATTEMPTS} attempts");
                    unreported = Some(format!(
                        "{} event(s) could not be written: {e}",
                        batch.len()
                    ));
                    break;
                }
            }
        }
        batch.clear();
        if !flushes.is_empty() {
            let result = match unreported.take() {
                Some(e) => Err(e),
                None => Ok(()),
            };
            for done in flushes.drain(..) {
                let _ = done.send(result.clone());
            }
        }
    }
}

impl SqliteLog {
    /// Opens (creating if needed) the log at `path`.
    pub fn open(path: &Path) -> Result<Self, LogError> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = open_conn(path)?;
        migrate(&conn, path)?;
        let reader = open_conn(path)?;
        let (tx, rx) = mpsc::channel();
        let p = path.to_owned();
        let writer = std::thread::Builder::new()
            .name("lotus-streams".into())
            .spawn(move || writer_loop(conn, rx, p))
            .map_err(|e| LogError::Corrupt {
                path: path.to_owned(),
                seq: 0,
                reason: format!("cannot start the writer thread: {e}"),
            })?;
        Ok(Self {
            path: path.to_owned(),
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            reader: Arc::new(Mutex::new(reader)),
        })
    }

    /// Flushes, stops the writer thread and waits for it.
    pub fn close(&self) {
        drop(self.tx.lock().take());
        if let Some(w) = self.writer.lock().take() {
            let _ = w.join();
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SqliteLog {
    fn drop(&mut self) {
        self.close();
    }
}

fn decode(path: &Path, row: &rusqlite::Row<'_>) -> Result<StoredEvent, LogError> {
    let db = |source| LogError::Db {
        path: path.to_owned(),
        source,
    };
    let seq: i64 = row.get(0).map_err(db)?;
    let corrupt = |reason: String| LogError::Corrupt {
        path: path.to_owned(),
        seq,
        reason,
    };
    let stream: String = row.get(1).map_err(db)?;
    let id: String = row.get(2).map_err(db)?;
    let topic: String = row.get(3).map_err(db)?;
    let source: String = row.get(4).map_err(db)?;
    let time_us: i64 = row.get(5).map_err(db)?;
    let cid: Option<String> = row.get(6).map_err(db)?;
    let payload: String = row.get(7).map_err(db)?;
    Ok(StoredEvent {
        seq,
        stream: stream.parse()?,
        event: Event {
            id: Uuid::parse_str(&id).map_err(|e| corrupt(e.to_string()))?,
            topic: Topic::new(&topic).map_err(|e| corrupt(e.to_string()))?,
            source: source.into(),
            time: from_micros(time_us),
            payload: serde_json::from_str(&payload).map_err(|e| corrupt(e.to_string()))?,
            correlation_id: cid
                .map(|c| Uuid::parse_str(&c))
                .transpose()
                .map_err(|e| corrupt(e.to_string()))?,
            deadline: None,
        },
    })
}

fn run_query(
    conn: &Connection,
    path: &Path,
    q: &StreamQuery,
) -> Result<Vec<StoredEvent>, LogError> {
    let db = |source| LogError::Db {
        path: path.to_owned(),
        source,
    };
    let order = if q.newest_first { "DESC" } else { "ASC" };
    let sql = format!(
        "SELECT seq, stream, id, topic, source, time_us, correlation_id, payload FROM stream_events
         WHERE stream = ?1 AND time_us >= ?2 AND time_us < ?3 AND seq > ?4
         ORDER BY seq {order}"
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(db)?;
    let mut rows = stmt
        .query(params![
            q.stream.as_str(),
            q.since.map_or(i64::MIN, micros),
            q.until.map_or(i64::MAX, micros),
            q.after_seq.unwrap_or(0),
        ])
        .map_err(db)?;
    let mut out = Vec::new();
    while out.len() < q.limit {
        let Some(row) = rows.next().map_err(db)? else {
            break;
        };
        if let Some(p) = &q.topic {
            let topic: String = row.get(3).map_err(db)?;
            if !p.matches_str(&topic) {
                continue;
            }
        }
        out.push(decode(path, row)?);
    }
    Ok(out)
}

#[async_trait]
impl DurableLog for SqliteLog {
    fn append(&self, stream: StreamName, ev: Arc<Event>) -> Result<(), LogError> {
        let tx = self.tx.lock();
        tx.as_ref()
            .ok_or(LogError::Closed)?
            .send(Cmd::Append(stream, ev))
            .map_err(|_| LogError::Closed)
    }

    async fn flush(&self) -> Result<(), LogError> {
        let (done, wait) = tokio::sync::oneshot::channel();
        {
            let tx = self.tx.lock();
            tx.as_ref()
                .ok_or(LogError::Closed)?
                .send(Cmd::Flush(done))
                .map_err(|_| LogError::Closed)?;
        }
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(LogError::Corrupt {
                path: self.path.clone(),
                seq: 0,
                reason: format!("a write failed: {reason}"),
            }),
            Err(_) => Err(LogError::Closed),
        }
    }

    async fn query(&self, q: StreamQuery) -> Result<Vec<StoredEvent>, LogError> {
        let reader = self.reader.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || run_query(&reader.lock(), &path, &q))
            .await
            .map_err(|_| LogError::Closed)?
    }

    async fn counts(&self) -> Result<Vec<StreamCount>, LogError> {
        let reader = self.reader.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock();
            StreamName::ALL
                .into_iter()
                .map(|stream| {
                    let n: Option<i64> = conn
                        .query_row(
                            "SELECT COUNT(*) FROM stream_events WHERE stream = ?1",
                            [stream.as_str()],
                            |r| r.get(0),
                        )
                        .optional()
                        .map_err(|source| LogError::Db {
                            path: path.clone(),
                            source,
                        })?;
                    Ok(StreamCount {
                        stream,
                        events: n.unwrap_or(0).max(0) as u64,
                    })
                })
                .collect()
        })
        .await
        .map_err(|_| LogError::Closed)?
    }
}
