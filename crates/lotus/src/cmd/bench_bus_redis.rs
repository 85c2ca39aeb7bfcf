//! `lotus bench bus --backend redis`: the Redis bus between two nodes, against raw PUBLISH and
//! XADD on the same server in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use lotus_bus::LocalBus;
use lotus_bus_redis::{RedisBridge, RedisBusConfig};
use lotus_core::{Event, Overflow, Pattern, Topic};
use serde_json::{Value, json};

use super::bench::{load_avg, us};

/// Commands per raw pipeline: deep enough that the server, not the round trip, sets the pace.
const PIPE: usize = 1024;

fn event(topic: &Topic, n: u64) -> Event {
    Event::new(
        topic.clone(),
        "bench",
        json!({"n": n, "text": "a typical small payload"}),
    )
}

/// Sends `cmd` `n` times, `PIPE` at a time (the pipelines are built before the clock starts
/// mattering: the raw side does no per-command work).
async fn pipelined(
    conn: &mut redis::aio::MultiplexedConnection,
    cmd: &redis::Cmd,
    n: u64,
) -> Result<()> {
    let build = |k: u64| {
        let mut pipe = redis::pipe();
        for _ in 0..k {
            pipe.add_command(cmd.clone()).ignore();
        }
        pipe
    };
    let full = build(PIPE as u64);
    let mut sent = 0u64;
    while sent + PIPE as u64 <= n {
        full.query_async::<()>(conn).await?;
        sent += PIPE as u64;
    }
    if sent < n {
        build(n - sent).query_async::<()>(conn).await?;
    }
    Ok(())
}

async fn node(url: &str, ns: &str, name: &str) -> Result<(LocalBus, Arc<RedisBridge>)> {
    let bus = LocalBus::new();
    let mut cfg = RedisBusConfig::new(url, name);
    cfg.namespace = ns.to_owned();
    cfg.durable = vec![Pattern::new("bench.durable.>")?];
    cfg.max_len = 1_000_000;
    let bridge = RedisBridge::connect(cfg, &bus)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    Ok((bus, bridge))
}

pub async fn run(url: &str, events: u64, samples: u64, json_out: bool) -> Result<()> {
    let n = events.clamp(1000, 500_000);
    let samples = samples.clamp(1000, 50_000);
    let ns = format!("lotus-bench-{}", uuid::Uuid::now_v7().simple());
    let client = redis::Client::open(url).map_err(|e| anyhow!("bad Redis URL `{url}`: {e}"))?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| anyhow!("cannot reach Redis at {url}: {e}"))?;
    if !json_out {
        eprintln!(
            "measuring the Redis bus at {url} ({n} events per run, {samples} latency samples)…"
        );
    }
    let (a, a_bridge) = node(url, &ns, "bench-a").await?;
    let (b, b_bridge) = node(url, &ns, "bench-b").await?;
    let topic = Topic::new("bench.fan.data")?;
    let sample = serde_json::to_vec(&event(&topic, 0))?;

    // Raw: an event serialized, PUBLISHed, received and decoded by a subscriber on another
    // connection, one at a time (the time is taken when the subscriber has it).
    let mut ps = client.get_async_pubsub().await?;
    let raw_channel = format!("{ns}:raw");
    ps.subscribe(&raw_channel).await?;
    let mut msgs = ps.into_on_message();
    let mut raw_h = Histogram::<u64>::new(3)?;
    for i in 0..samples + samples / 10 {
        let t0 = Instant::now();
        let body = serde_json::to_vec(&event(&topic, i))?;
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(&raw_channel).arg(body);
        let publish = cmd.query_async::<i64>(&mut conn);
        let receive = async {
            let m = tokio::time::timeout(Duration::from_secs(5), msgs.next()).await;
            (m, t0.elapsed())
        };
        let (sent, (m, took)) = tokio::join!(publish, receive);
        sent?;
        let m = m?.ok_or_else(|| anyhow!("raw subscription closed"))?;
        let _: Event = serde_json::from_slice(m.get_payload_bytes())?;
        if i >= samples / 10 {
            raw_h.record(took.as_nanos().max(1) as u64)?;
        }
    }
    // The bus: publish on a, handled by a subscriber on b, one at a time.
    let sub = b.subscribe(
        "bench",
        vec![Pattern::new("bench.fan.>")?],
        65_536,
        Overflow::Block,
    );
    if !b_bridge.ready(Duration::from_secs(5)).await {
        return Err(anyhow!("node b did not subscribe in time"));
    }
    let mut bus_h = Histogram::<u64>::new(3)?;
    for i in 0..samples + samples / 10 {
        let t0 = Instant::now();
        a.publish(Arc::new(event(&topic, i))).await;
        tokio::time::timeout(Duration::from_secs(5), sub.recv())
            .await?
            .ok_or_else(|| anyhow!("subscription closed"))?;
        if i >= samples / 10 {
            bus_h.record(t0.elapsed().as_nanos().max(1) as u64)?;
        }
    }

    // Raw PUBLISH throughput, pipelined, to a subscriber that decodes each event.
    let raw_rx = tokio::spawn(async move {
        let mut got = 0u64;
        while got < n {
            let Some(m) = msgs.next().await else { break };
            if serde_json::from_slice::<Event>(m.get_payload_bytes()).is_ok() {
                got += 1;
            }
        }
        got
    });
    let t0 = Instant::now();
    let mut publish = redis::cmd("PUBLISH");
    publish.arg(&raw_channel).arg(&sample);
    pipelined(&mut conn, &publish, n).await?;
    let got = tokio::time::timeout(Duration::from_secs(120), raw_rx).await??;
    let raw_pub = got as f64 / t0.elapsed().as_secs_f64();

    // The bus: n events published on a as fast as it takes them, all received on b.
    let t0 = Instant::now();
    let pub_task = {
        let a = a.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            for i in 0..n {
                a.publish(Arc::new(event(&topic, i))).await;
            }
        })
    };
    let mut got = 0u64;
    while got < n {
        match tokio::time::timeout(Duration::from_secs(10), sub.recv()).await {
            Ok(Some(_)) => got += 1,
            _ => break,
        }
    }
    pub_task.await?;
    let bus_pub = got as f64 / t0.elapsed().as_secs_f64();

    // Raw XADD throughput, pipelined.
    let raw_stream = format!("{ns}:raw-stream");
    let t0 = Instant::now();
    let mut xadd = redis::cmd("XADD");
    xadd.arg(&raw_stream)
        .arg("MAXLEN")
        .arg("~")
        .arg(1_000_000)
        .arg("*")
        .arg("ev")
        .arg(&sample);
    pipelined(&mut conn, &xadd, n).await?;
    let raw_xadd = n as f64 / t0.elapsed().as_secs_f64();
    // The bus: n durable events published on a, until all are in the stream.
    let durable = Topic::new("bench.durable.data")?;
    let t0 = Instant::now();
    for i in 0..n {
        a.publish(Arc::new(event(&durable, i))).await;
    }
    if !a_bridge.flush(Duration::from_secs(120)).await {
        return Err(anyhow!("the durable events were not written within 120 s"));
    }
    let bus_xadd = n as f64 / t0.elapsed().as_secs_f64();

    // Leave nothing behind.
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{ns}:*"))
        .query_async(&mut conn)
        .await?;
    keys.push(raw_stream);
    let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await?;
    a_bridge.close(Duration::from_secs(2)).await;
    b_bridge.close(Duration::from_secs(2)).await;

    let r2 = |x: f64| (x * 100.0).round() / 100.0;
    let out = json!({
        "backend": "redis",
        "url": lotus_bus_redis::redact(url),
        "events": n,
        "samples": samples,
        "publish_events_per_sec": bus_pub.round(),
        "raw_publish_events_per_sec": raw_pub.round(),
        "publish_ratio": r2(bus_pub / raw_pub.max(1.0)),
        "durable_events_per_sec": bus_xadd.round(),
        "raw_xadd_per_sec": raw_xadd.round(),
        "durable_ratio": r2(bus_xadd / raw_xadd.max(1.0)),
        "p50_us": us(&bus_h, 0.5),
        "p99_us": us(&bus_h, 0.99),
        "raw_p50_us": us(&raw_h, 0.5),
        "raw_p99_us": us(&raw_h, 0.99),
        "overhead_p50_us": r2(us(&bus_h, 0.5) - us(&raw_h, 0.5)),
        "overhead_p99_us": r2(us(&bus_h, 0.99) - us(&raw_h, 0.99)),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "load_avg": load_avg(),
    });
    if json_out {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let f = |k: &str| out.get(k).cloned().unwrap_or(Value::Null);
        println!(
            "redis bus, two nodes ({} cores, load {})",
            f("cores"),
            f("load_avg").as_str().unwrap_or("")
        );
        println!(
            "  fan-out   events/s {:>10}   raw pipelined PUBLISH {:>10}   ratio {}",
            f("publish_events_per_sec"),
            f("raw_publish_events_per_sec"),
            f("publish_ratio")
        );
        println!(
            "  durable   events/s {:>10}   raw pipelined XADD    {:>10}   ratio {}",
            f("durable_events_per_sec"),
            f("raw_xadd_per_sec"),
            f("durable_ratio")
        );
        println!(
            "  latency   p50 {} µs p99 {} µs   raw PUBLISH round trip p50 {} µs p99 {} µs   overhead p50 {} µs",
            f("p50_us"),
            f("p99_us"),
            f("raw_p50_us"),
            f("raw_p99_us"),
            f("overhead_p50_us")
        );
    }
    Ok(())
}
