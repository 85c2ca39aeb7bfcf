//! A bounded, multi-producer single-consumer event queue with an explicit overflow policy.
//!
//! Built on a lock-free ring ([`crossbeam_queue::ArrayQueue`]) and `event-listener` for wake-ups,
//! so a push or pop is a few atomics and a waiting side costs nothing while the other side is busy.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use crossbeam_utils::CachePadded;
use event_listener::{Event as Signal, EventListener, Listener};
use lotus_core::{Event, Overflow};

/// Polls of an empty ring before an async consumer parks (~1 µs).
const POP_SPINS: u32 = 64;

/// The queue behind one subscription.
pub struct Queue {
    ring: ArrayQueue<Arc<Event>>,
    // Read on every push; written once. Kept away from the counters below, which the two sides
    // write on every event, so producer and consumer do not fight over one cache line.
    policy: Overflow,
    closed: AtomicBool,
    items: Signal,
    space: Signal,
    delivered: CachePadded<AtomicU64>,
    dropped: CachePadded<AtomicU64>,
}

/// Outcome of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued.
    Queued,
    /// Queued, and the oldest event was dropped to make room.
    DroppedOldest,
    /// The subscriber is gone; the event was discarded.
    Closed,
}

impl Queue {
    /// A queue of `capacity` events (at least 1).
    pub fn new(capacity: usize, policy: Overflow) -> Self {
        Self {
            ring: ArrayQueue::new(capacity.max(1)),
            policy,
            items: Signal::new(),
            space: Signal::new(),
            closed: AtomicBool::new(false),
            delivered: CachePadded::new(AtomicU64::new(0)),
            dropped: CachePadded::new(AtomicU64::new(0)),
        }
    }

    /// Pushes without ever waiting: `Err(ev)` when full under [`Overflow::Block`].
    pub fn try_push(&self, ev: Arc<Event>) -> Result<Pushed, Arc<Event>> {
        if self.closed.load(Ordering::Acquire) {
            return Ok(Pushed::Closed);
        }
        let out = match self.policy {
            Overflow::Block => {
                self.ring.push(ev)?;
                Pushed::Queued
            }
            Overflow::DropOldest => match self.ring.force_push(ev) {
                None => Pushed::Queued,
                Some(_) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    Pushed::DroppedOldest
                }
            },
        };
        self.items.notify(1);
        Ok(out)
    }

    /// Pushes, or hands the event back with a listener for room already registered. The push is
    /// retried after registering, so a pop between the two cannot be missed.
    fn push_or_listen(&self, ev: Arc<Event>) -> Result<Pushed, (Arc<Event>, EventListener)> {
        let ev = match self.try_push(ev) {
            Ok(p) => return Ok(p),
            Err(back) => back,
        };
        let listener = self.space.listen();
        self.try_push(ev).map_err(|back| (back, listener))
    }

    /// Pushes, waiting asynchronously for room under [`Overflow::Block`].
    pub async fn push(&self, mut ev: Arc<Event>) -> Pushed {
        loop {
            match self.push_or_listen(ev) {
                Ok(p) => return p,
                Err((back, listener)) => {
                    ev = back;
                    listener.await;
                }
            }
        }
    }

    /// Pushes, waiting for room whatever the policy: for events that must not be dropped here
    /// because their source keeps them until they are handled (a durable consumer group).
    pub async fn push_wait(&self, ev: Arc<Event>) -> Pushed {
        let mut ev = ev;
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Pushed::Closed;
            }
            let listener = self.space.listen();
            match self.ring.push(ev) {
                Ok(()) => {
                    self.items.notify(1);
                    return Pushed::Queued;
                }
                Err(back) => ev = back,
            }
            if self.closed.load(Ordering::Acquire) {
                return Pushed::Closed;
            }
            listener.await;
        }
    }

    /// Pushes, blocking the thread for room under [`Overflow::Block`].
    pub fn push_blocking(&self, mut ev: Arc<Event>) -> Pushed {
        loop {
            match self.push_or_listen(ev) {
                Ok(p) => return p,
                Err((back, listener)) => {
                    ev = back;
                    listener.wait();
                }
            }
        }
    }

    /// Takes the oldest event if there is one.
    pub fn try_pop(&self) -> Option<Arc<Event>> {
        let ev = self.ring.pop()?;
        self.delivered.fetch_add(1, Ordering::Relaxed);
        // Without a waiting pusher this is one atomic load.
        self.space.notify(1);
        Some(ev)
    }

    /// Waits for the next event; `None` once the queue is closed and empty.
    ///
    /// Before parking, it polls the ring for about a microsecond: a consumer that keeps up with
    /// its producer would otherwise park after every event and make the producer pay a thread
    /// wake-up (a syscall) per publish. The spin is bounded, so an idle consumer costs nothing.
    pub async fn pop(&self) -> Option<Arc<Event>> {
        loop {
            for _ in 0..POP_SPINS {
                if let Some(ev) = self.try_pop() {
                    return Some(ev);
                }
                std::hint::spin_loop();
            }
            if self.closed.load(Ordering::Acquire) {
                return self.try_pop();
            }
            let listener = self.items.listen();
            if let Some(ev) = self.try_pop() {
                return Some(ev);
            }
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            listener.await;
        }
    }

    /// Blocks the thread for the next event, spinning for up to `spin` first (low-latency
    /// consumers on a dedicated thread); `None` once closed and empty, or after `timeout`.
    pub fn pop_blocking(&self, spin: Duration, timeout: Option<Duration>) -> Option<Arc<Event>> {
        let start = Instant::now();
        loop {
            if let Some(ev) = self.try_pop() {
                return Some(ev);
            }
            if self.closed.load(Ordering::Acquire) {
                return self.try_pop();
            }
            if start.elapsed() < spin {
                for _ in 0..32 {
                    std::hint::spin_loop();
                }
                continue;
            }
            let listener = self.items.listen();
            if let Some(ev) = self.try_pop() {
                return Some(ev);
            }
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            match timeout {
                None => listener.wait(),
                Some(t) => {
                    let left = t.saturating_sub(start.elapsed());
                    if left.is_zero() || listener.wait_timeout(left).is_none() {
                        return self.try_pop();
                    }
                }
            }
        }
    }

    /// Closes the queue: pushes are discarded, waiting sides wake up; queued events stay poppable.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.items.notify(usize::MAX);
        self.space.notify(usize::MAX);
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Events waiting.
    pub fn depth(&self) -> usize {
        self.ring.len()
    }

    /// Capacity.
    pub fn capacity(&self) -> usize {
        self.ring.capacity()
    }

    /// Events taken by the consumer so far.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Counts an event that was not queued because its publisher would not wait any longer.
    pub fn record_drop(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Events dropped so far (by the drop-oldest policy or a publisher's deadline).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The overflow policy.
    pub fn policy(&self) -> Overflow {
        self.policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lotus_core::Topic;

    fn ev(n: i64) -> Arc<Event> {
        Arc::new(Event::new(
            Topic::new("t").expect("topic"),
            "test",
            serde_json::json!(n),
        ))
    }

    #[test]
    fn drop_oldest_keeps_the_newest_and_counts() {
        let q = Queue::new(2, Overflow::DropOldest);
        for n in 0..5 {
            q.try_push(ev(n)).expect("never full");
        }
        assert_eq!(q.dropped(), 3);
        assert_eq!(
            q.try_pop().map(|e| e.payload.clone()),
            Some(serde_json::json!(3))
        );
        assert_eq!(
            q.try_pop().map(|e| e.payload.clone()),
            Some(serde_json::json!(4))
        );
    }

    #[test]
    fn block_refuses_when_full_without_losing() {
        let q = Queue::new(1, Overflow::Block);
        assert!(q.try_push(ev(1)).is_ok());
        assert!(q.try_push(ev(2)).is_err());
        assert_eq!(q.dropped(), 0);
    }

    #[tokio::test]
    async fn blocked_publisher_resumes_when_consumer_pops() {
        let q = Arc::new(Queue::new(1, Overflow::Block));
        q.push(ev(1)).await;
        let q2 = q.clone();
        let pusher = tokio::spawn(async move { q2.push(ev(2)).await });
        tokio::task::yield_now().await;
        assert_eq!(
            q.pop().await.map(|e| e.payload.clone()),
            Some(serde_json::json!(1))
        );
        assert_eq!(pusher.await.expect("join"), Pushed::Queued);
        assert_eq!(
            q.pop().await.map(|e| e.payload.clone()),
            Some(serde_json::json!(2))
        );
    }
}
