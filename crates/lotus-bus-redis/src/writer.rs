//! The writer: one task puts everything published on this node onto Redis, in order, in
//! pipelined batches (what arrives while a batch is on the wire goes in the next one).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use redis::aio::MultiplexedConnection;
use tokio::sync::mpsc;

use crate::link::{Backoff, connect, event_channel, node_channel};
use crate::{Out, Shared, envelope};

/// Most items taken for one pipeline.
const BATCH: usize = 1024;
/// Most events in one message.
const RUN: usize = 256;
/// A message stops growing past this size.
const RUN_BYTES: usize = 256 * 1024;

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
        let mut commands = 0usize;
        let mut events = 0usize;
        let mut durable = 0u64;
        let mut i = 0;
        while i < batch.len() {
            match &batch[i] {
                Out::Event(first, d) => {
                    // A run of events on one topic travels as one message.
                    let kind = if d.is_some() { b'd' } else { b'e' };
                    let mut bytes = envelope::start(&node, kind);
                    let mut j = i;
                    while j < batch.len() && j - i < RUN && bytes.len() < RUN_BYTES {
                        match &batch[j] {
                            Out::Event(ev, d2) if d2 == d && ev.topic == first.topic => {
                                envelope::push(&mut bytes, ev);
                                j += 1;
                            }
                            _ => break,
                        }
                    }
                    let run = j - i;
                    events += run;
                    // Modules read durable events from the stream; observers (the API's
                    // stream, the CLI) on every node hear them on pub/sub too.
                    if let Some(k) = d {
                        durable += run as u64;
                        pipe.cmd("XADD")
                            .arg(&keys[*k])
                            .arg("MAXLEN")
                            .arg("~")
                            .arg(sh.cfg.max_len)
                            .arg("*")
                            .arg("ev")
                            .arg(&bytes)
                            .ignore();
                        commands += 1;
                    }
                    pipe.cmd("PUBLISH")
                        .arg(event_channel(&prefix, first.topic.as_str()))
                        .arg(bytes)
                        .ignore();
                    commands += 1;
                    i = j;
                }
                Out::Reply(to, ev) => {
                    pipe.cmd("PUBLISH")
                        .arg(node_channel(&prefix, to))
                        .arg(envelope::encode(&node, b'r', ev))
                        .ignore();
                    commands += 1;
                    i += 1;
                }
                Out::Flush(_) => i += 1,
            }
        }
        let sent = if commands == 0 {
            Ok(())
        } else {
            pipe.query_async::<()>(c).await
        };
        match sent {
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
            Err(e) if !crate::link::permanent(&e) => {
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
