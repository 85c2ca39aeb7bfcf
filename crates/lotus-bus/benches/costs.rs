//! Where a publish spends its time (run with `cargo bench -p lotus-bus --bench costs`).

use std::sync::Arc;
use std::time::Instant;

use lotus_bus::LocalBus;
use lotus_core::{Event, Overflow, Pattern, Topic};

fn per_op(label: &str, n: u64, f: impl FnMut(u64)) {
    let mut f = f;
    let t = Instant::now();
    for i in 0..n {
        f(i);
    }
    println!(
        "{label:<44} {:>8.1} ns/op",
        t.elapsed().as_nanos() as f64 / n as f64
    );
}

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn two_threads(label: &str, n: u64, spin_consumer: bool) {
    two_threads_with(label, n, spin_consumer, false);
}

fn two_threads_with(label: &str, n: u64, spin_consumer: bool, reuse: bool) {
    let bus = LocalBus::new();
    let sub = bus.subscribe(
        "s",
        vec![Pattern::new("bench.*.data").expect("p")],
        65_536,
        Overflow::Block,
    );
    let consumer = std::thread::spawn(move || {
        if spin_consumer {
            let mut got = 0;
            while got < n {
                if sub.try_recv().is_some() {
                    got += 1;
                }
            }
        } else {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("rt");
            rt.block_on(async {
                for _ in 0..n {
                    sub.recv().await;
                }
            });
        }
    });
    let topic = Topic::new("bench.load.data").expect("topic");
    let source = lotus_core::event::SmolStr::new("bench");
    let prebuilt = Arc::new(Event::new(
        topic.clone(),
        source.clone(),
        serde_json::Value::Null,
    ));
    let t = Instant::now();
    for _ in 0..n {
        let ev = if reuse {
            prebuilt.clone()
        } else {
            Arc::new(Event::new(
                topic.clone(),
                source.clone(),
                serde_json::Value::Null,
            ))
        };
        bus.publish_blocking(ev);
    }
    let produced = t.elapsed();
    consumer.join().expect("consumer");
    let all = t.elapsed();
    println!(
        "{label:<44} producer {:>6.1} ns/event, end to end {:>5.2} M events/s",
        produced.as_nanos() as f64 / n as f64,
        n as f64 / all.as_secs_f64() / 1e6
    );
}

fn main() {
    let n = 2_000_000;
    let topic = Topic::new("bench.load.data").expect("topic");
    per_op("SystemTime::now", n, |_| {
        std::hint::black_box(std::time::SystemTime::now());
    });
    per_op("uuid::Uuid::new_v7 (fast-rng)", n, |_| {
        std::hint::black_box(uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            1,
            2,
        )));
    });
    per_op("Event::new (uuid v7 + clock)", n, |_| {
        std::hint::black_box(Event::new(topic.clone(), "bench", serde_json::Value::Null));
    });
    per_op("Arc::new(Event::new)", n, |_| {
        std::hint::black_box(Arc::new(Event::new(
            topic.clone(),
            "bench",
            serde_json::Value::Null,
        )));
    });
    let ev = Arc::new(Event::new(topic.clone(), "bench", serde_json::Value::Null));
    let bus = LocalBus::new();
    per_op("publish, no subscriber", n, |_| {
        bus.publish_blocking(ev.clone());
    });
    let sub = bus.subscribe(
        "s",
        vec![Pattern::new("bench.*.data").expect("p")],
        1 << 20,
        Overflow::DropOldest,
    );
    per_op("publish to 1 drop-oldest subscriber (no reader)", n, |_| {
        bus.publish_blocking(ev.clone());
    });
    per_op("try_recv", n, |_| {
        std::hint::black_box(sub.try_recv());
    });
    two_threads("1→1, spinning consumer thread", n, true);
    two_threads("1→1, async consumer task", n, false);
    two_threads_with("1→1, async consumer, one prebuilt event", n, false, true);
}
