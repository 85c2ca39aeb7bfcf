//! The writer: one task puts everything published on this node onto Redis, in order, in
//! pipelined batches (what arrives while a batch is on the wire goes in the next one).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use redis::aio::MultiplexedConnection;
use tokio::sync::mpsc;

use crate::link::{Backoff, connect, event_channel, node_channel};
use crate::{Out, Shared, envelope};

/// Most commands in one pipeline.
const BATCH: usize = 1024;

pub(crate) async fn run(
    sh: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Out>,
    conn: MultiplexedConnection,
) {
    let mut conn = Some(conn);
    let mut batch: Vec<Out> = Vec::with_capacity(BATCH);
    let mut backoff = Backoff::new();
    let prefix = sh.prefix().to_owned();
    let node = sh.cfg.node.clone();
    let keys: Vec<String> = (0..sh.cfg.durable.len())
        .map(|i| sh.stream_key(i))
        .collect();
    loop {
        if batch.is_empty() {
            match rx.recv().await {
                Some(o) => batch.push(o),
                None => return,
            }
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(o) => batch.push(o),
                    Err(_) => break,
                }
            }
        }
        let Some(c) = conn.as_mut() else {
            match connect(&sh.client).await {
                Ok(c) => {
                    conn = Some(c);
                    sh.writer_up.store(true, Ordering::Release);
                    sh.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(node = %node, "redis bus: writer reconnected");
                    backoff.reset();
                }
                Err(e) => {
                    sh.error("writer connection", &e);
                    // Fan-out cannot wait: drop it. Durable events wait, in order.
                    let fanout = batch
                        .iter()
                        .filter(|o| matches!(o, Out::Event(_, None)))
                        .count();
                    batch.retain(|o| !matches!(o, Out::Event(_, None) | Out::Reply(..)));
                    sh.stats.backlog.fetch_sub(fanout, Ordering::Relaxed);
                    sh.stats
                        .dropped_offline
                        .fetch_add(fanout as u64, Ordering::Relaxed);
                    if !backoff.wait(&sh).await {
                        return;
                    }
                }
            }
            continue;
        };
        let mut pipe = redis::pipe();
        let mut events = 0usize;
        let mut durable = 0u64;
        for o in &batch {
            match o {
                Out::Event(ev, d) => {
                    events += 1;
                    let kind = if d.is_some() { b'd' } else { b'e' };
                    let bytes = envelope::encode(&node, kind, ev);
                    if let Some(i) = d {
                        durable += 1;
                        pipe.cmd("XADD")
                            .arg(&keys[*i])
                            .arg("MAXLEN")
                            .arg("~")
                            .arg(sh.cfg.max_len)
                            .arg("*")
                            .arg("ev")
                            .arg(&bytes)
                            .ignore();
                    }
                    pipe.cmd("PUBLISH")
                        .arg(event_channel(&prefix, ev.topic.as_str()))
                        .arg(bytes)
                        .ignore();
                }
                Out::Reply(to, ev) => {
                    pipe.cmd("PUBLISH")
                        .arg(node_channel(&prefix, to))
                        .arg(envelope::encode(&node, b'r', ev))
                        .ignore();
                }
                Out::Flush(_) => {}
            }
        }
        match pipe.query_async::<()>(c).await {
            Ok(()) => {
                sh.stats
                    .published
                    .fetch_add(events as u64, Ordering::Relaxed);
                sh.stats
                    .durable_published
                    .fetch_add(durable, Ordering::Relaxed);
                sh.stats.backlog.fetch_sub(events, Ordering::Relaxed);
                for o in batch.drain(..) {
                    if let Out::Flush(done) = o {
                        let _ = done.send(());
                    }
                }
            }
            Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {
                // The batch is sent again, whole and in order, on a new connection. Entries
                // that did reach Redis are then there twice; consumers skip the copy by its
                // event id.
                sh.error("writer", &e);
                sh.writer_up.store(false, Ordering::Release);
                conn = None;
            }
            Err(e) => {
                // Redis refused the batch (wrong key type, out of memory…): retrying would
                // refuse it again.
                sh.error("writer (batch dropped)", &e);
                tracing::error!(node = %node, error = %e, events, "redis bus: Redis refused a batch of events; they are lost");
                sh.stats.backlog.fetch_sub(events, Ordering::Relaxed);
                for o in batch.drain(..) {
                    if let Out::Flush(done) = o {
                        let _ = done.send(());
                    }
                }
            }
        }
    }
}
