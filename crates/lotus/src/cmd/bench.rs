//! `lotus bench bus` and `lotus bench up`: figures, not pass/fail.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use hdrhistogram::Histogram;
use lotus_bus::LocalBus;
use lotus_core::{Event, Overflow, Pattern, Topic};
use serde_json::{Value, json};

use crate::cli::{BenchBusArgs, BenchCmd, BenchProvidersArgs, BenchReloadArgs};

pub async fn run(home: &crate::home::Home, cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Bus(args) => bus(args).await,
        BenchCmd::Up(f) => up(f.json).await,
        BenchCmd::Reload(a) => reload(a).await,
        BenchCmd::Providers(a) => providers(a).await,
        BenchCmd::Reasoning(a) => super::bench_reasoning::run(home, a).await,
        BenchCmd::Local(f) => local(home, f.json).await,
        BenchCmd::Vectors(a) => super::bench_vectors::run(a).await,
        BenchCmd::Memory(a) => super::bench_vectors::memory(home, a).await,
    }
}

fn p(s: &str) -> Pattern {
    Pattern::new(s).expect("benchmark patterns are valid")
}

fn t(s: &str) -> Topic {
    Topic::new(s).expect("benchmark topics are valid")
}

pub(super) fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub(super) fn us(h: &Histogram<u64>, q: f64) -> f64 {
    (h.value_at_quantile(q) as f64 / 1000.0 * 100.0).round() / 100.0
}

/// Subscriptions that do not match the benchmark topic, so routing walks a populated trie.
fn distractors(bus: &LocalBus) -> Vec<lotus_bus::Subscription> {
    let mut keep = Vec::new();
    for i in 0..32 {
        keep.push(bus.subscribe(
            "noise",
            vec![
                p(&format!("other.{i}.x")),
                p(&format!("other.*.y{i}")),
                p(&format!("bench.load.n{i}")),
            ],
            16,
            Overflow::DropOldest,
        ));
    }
    keep.push(bus.subscribe(
        "noise",
        vec![p("system.>"), p("perception.*")],
        16,
        Overflow::DropOldest,
    ));
    keep
}

/// Publishes `n` events from this thread to `fanout` async subscribers on another thread.
/// Returns (deliveries per second, publishes per second).
fn throughput(fanout: usize, n: u64) -> Result<(f64, f64)> {
    let bus = LocalBus::new();
    let _noise = distractors(&bus);
    // Half exact, half wildcard subscriptions, all matching `bench.load.data`.
    let wild = [
        "bench.*.data",
        "bench.>",
        "bench.load.*",
        "*.load.data",
        "*.*.data",
        ">",
    ];
    let subs: Vec<_> = (0..fanout)
        .map(|i| {
            let pat = if fanout == 1 {
                "bench.*.data".to_owned()
            } else if i % 2 == 0 {
                "bench.load.data".to_owned()
            } else {
                wild[(i / 2) % wild.len()].to_owned()
            };
            bus.subscribe(
                &format!("consumer{i}"),
                vec![p(&pat)],
                65_536,
                Overflow::Block,
            )
        })
        .collect();
    let consumers = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let tasks: Vec<_> = subs
                .into_iter()
                .map(|s| {
                    tokio::spawn(async move {
                        let mut got = 0u64;
                        while got < n {
                            if s.recv().await.is_none() {
                                break;
                            }
                            got += 1;
                        }
                        got
                    })
                })
                .collect();
            let mut total = 0;
            for t in tasks {
                total += t.await.unwrap_or(0);
            }
            Ok::<u64, std::io::Error>(total)
        })
    });
    let topic = t("bench.load.data");
    // A module publishes under its name, as its context holds it.
    let source = lotus_core::event::SmolStr::new("bench");
    let start = Instant::now();
    for _ in 0..n {
        bus.publish_blocking(Arc::new(Event::new(
            topic.clone(),
            source.clone(),
            Value::Null,
        )));
    }
    let delivered = consumers
        .join()
        .map_err(|_| anyhow!("consumer thread panicked"))??;
    let secs = start.elapsed().as_secs_f64();
    if delivered != n * fanout as u64 {
        return Err(anyhow!(
            "lost events: delivered {delivered} of {}",
            n * fanout as u64
        ));
    }
    Ok((delivered as f64 / secs, n as f64 / secs))
}

/// 1→1 with publisher and subscriber as tasks on one thread, as they often are in the nucleus
/// (tokio runs a woken task on the waker's worker): routing without the cross-core handoff.
fn throughput_same_thread(n: u64) -> Result<f64> {
    let bus = LocalBus::new();
    let _noise = distractors(&bus);
    let sub = bus.subscribe("consumer", vec![p("bench.*.data")], 65_536, Overflow::Block);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let got = rt.block_on(async move {
        let consumer = tokio::spawn(async move {
            let mut got = 0u64;
            while got < n && sub.recv().await.is_some() {
                got += 1;
            }
            got
        });
        let topic = t("bench.load.data");
        let source = lotus_core::event::SmolStr::new("bench");
        let start = Instant::now();
        for _ in 0..n {
            bus.publish(Arc::new(Event::new(
                topic.clone(),
                source.clone(),
                Value::Null,
            )))
            .await;
        }
        let got = consumer.await.unwrap_or(0);
        (got, start.elapsed())
    });
    if got.0 != n {
        return Err(anyhow!("lost events: delivered {} of {n}", got.0));
    }
    Ok(n as f64 / got.1.as_secs_f64())
}

/// Gap between latency samples: longer than an async consumer's spin, so it really parks.
const SAMPLE_GAP: Duration = Duration::from_micros(50);

/// One-way publish→handler latency with the handler on another thread, events `SAMPLE_GAP`
/// apart; `spin` selects a spin-then-park handler thread (true) or an async task on a
/// current-thread runtime that parks between events (false).
fn latency(samples: u64, spin: bool) -> Result<Histogram<u64>> {
    let bus = LocalBus::new();
    let _noise = distractors(&bus);
    let sub = bus.subscribe("handler", vec![p("bench.*.ping")], 1024, Overflow::Block);
    let base = Instant::now();
    let acked = Arc::new(AtomicU64::new(0));
    let warmup = (samples / 10).max(100);
    let total = samples + warmup;
    let ack = acked.clone();
    let handler = std::thread::spawn(move || -> Result<Histogram<u64>> {
        let mut h = Histogram::<u64>::new(3)?;
        let mut record = |ev: &Event, i: u64| {
            let now = base.elapsed().as_nanos() as u64;
            let sent = ev.payload.as_u64().unwrap_or(now);
            if i >= warmup {
                let _ = h.record(now.saturating_sub(sent).max(1));
            }
            ack.fetch_add(1, Ordering::Release);
        };
        if spin {
            for i in 0..total {
                let ev = sub
                    .recv_blocking(Duration::from_millis(5), Some(Duration::from_secs(10)))
                    .ok_or_else(|| anyhow!("handler starved"))?;
                record(&ev, i);
            }
        } else {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                for i in 0..total {
                    let Some(ev) = sub.recv().await else { break };
                    record(&ev, i);
                }
            });
        }
        Ok(h)
    });
    let topic = t("bench.lat.ping");
    let source = lotus_core::event::SmolStr::new("bench");
    for i in 0..total {
        let gap = Instant::now() + SAMPLE_GAP;
        while Instant::now() < gap {
            std::hint::spin_loop();
        }
        let sent = base.elapsed().as_nanos() as u64;
        bus.publish_blocking(Arc::new(Event::new(
            topic.clone(),
            source.clone(),
            json!(sent),
        )));
        let deadline = Instant::now() + Duration::from_secs(10);
        while acked.load(Ordering::Acquire) <= i {
            std::hint::spin_loop();
            if Instant::now() > deadline {
                return Err(anyhow!("no acknowledgement from the handler"));
            }
        }
    }
    handler
        .join()
        .map_err(|_| anyhow!("handler thread panicked"))?
}

async fn redis(url: &str, n: u64, samples: u64) -> Result<(f64, Histogram<u64>)> {
    use futures_util::StreamExt;
    use redis::AsyncCommands;

    let client = redis::Client::open(url).with_context(|| format!("invalid Redis URL `{url}`"))?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("cannot reach Redis at {url}"))?;
    let mut pubsub = client.get_async_pubsub().await?;
    let channel = format!("lotus-bench-{}", std::process::id());
    pubsub.subscribe(&channel).await?;
    let mut messages = pubsub.into_on_message();
    let topic = t("bench.lat.ping");
    // Latency: one event at a time, serialized as a Redis-backed bus must.
    let base = Instant::now();
    let mut h = Histogram::<u64>::new(3)?;
    let warmup = (samples / 10).max(100);
    for i in 0..samples + warmup {
        let sent = base.elapsed().as_nanos() as u64;
        let body = serde_json::to_vec(&Event::new(topic.clone(), "bench", json!(sent)))?;
        let _: i64 = conn.publish(&channel, body).await?;
        let msg = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .map_err(|_| anyhow!("Redis did not deliver within 5 s"))?
            .ok_or_else(|| anyhow!("Redis closed the subscription"))?;
        let ev: Event = serde_json::from_slice(msg.get_payload_bytes())?;
        let now = base.elapsed().as_nanos() as u64;
        if i >= warmup {
            let _ = h.record(
                now.saturating_sub(ev.payload.as_u64().unwrap_or(now))
                    .max(1),
            );
        }
    }
    // Throughput: pipelined publishes, one subscriber that decodes every event.
    let receiver = tokio::spawn(async move {
        let mut got = 0u64;
        while got < n {
            let Some(msg) = messages.next().await else {
                break;
            };
            if serde_json::from_slice::<Event>(msg.get_payload_bytes()).is_ok() {
                got += 1;
            }
        }
        got
    });
    let start = Instant::now();
    let topic = t("bench.load.data");
    let mut sent = 0u64;
    while sent < n {
        let batch = (n - sent).min(512);
        let mut pipe = redis::pipe();
        for _ in 0..batch {
            let body = serde_json::to_vec(&Event::new(topic.clone(), "bench", Value::Null))?;
            pipe.cmd("PUBLISH").arg(&channel).arg(body).ignore();
        }
        let () = pipe.query_async(&mut conn).await?;
        sent += batch;
    }
    let got = tokio::time::timeout(Duration::from_secs(120), receiver)
        .await
        .map_err(|_| anyhow!("Redis throughput run did not finish"))??;
    let secs = start.elapsed().as_secs_f64();
    Ok((got as f64 / secs, h))
}

async fn bus(a: BenchBusArgs) -> Result<()> {
    if a.backend == "redis" {
        return super::bench_bus_redis::run(&a.url, a.events, a.samples, a.json).await;
    }
    let (events, samples) = (a.events.max(1000), a.samples.max(1000));
    if !a.json {
        eprintln!(
            "measuring the in-process bus ({events} events per run, {samples} latency samples)…"
        );
    }
    let (one, one_pub) = tokio::task::spawn_blocking(move || throughput(1, events)).await??;
    let same = tokio::task::spawn_blocking(move || throughput_same_thread(events)).await??;
    let fan_n = (events / 4).max(1000);
    let (fan, fan_pub) = tokio::task::spawn_blocking(move || throughput(16, fan_n)).await??;
    let spin = tokio::task::spawn_blocking(move || latency(samples, true)).await??;
    let asynch =
        tokio::task::spawn_blocking(move || latency((samples / 10).max(1000), false)).await??;
    let mut out = json!({
        "backend": "in-process",
        "events_per_sec": one.round(),
        "publishes_per_sec": one_pub.round(),
        "same_thread_events_per_sec": same.round(),
        "fanout16_events_per_sec": fan.round(),
        "fanout16_publishes_per_sec": fan_pub.round(),
        "p50_us": us(&spin, 0.5),
        "p99_us": us(&spin, 0.99),
        "p999_us": us(&spin, 0.999),
        "async_p50_us": us(&asynch, 0.5),
        "async_p99_us": us(&asynch, 0.99),
        "events": events,
        "samples": samples,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "load_avg": load_avg(),
    });
    if let Some(url) = &a.compare {
        if !a.json {
            eprintln!("measuring Redis pub/sub at {url}…");
        }
        let r_n = events.min(200_000);
        let r_samples = samples.min(20_000);
        let (r_eps, r_h) = redis(url, r_n, r_samples).await?;
        let obj = out.as_object_mut().ok_or_else(|| anyhow!("bench output"))?;
        obj.insert("redis_events_per_sec".into(), json!(r_eps.round()));
        obj.insert("redis_p50_us".into(), json!(us(&r_h, 0.5)));
        obj.insert("redis_p99_us".into(), json!(us(&r_h, 0.99)));
        obj.insert(
            "latency_ratio_p50".into(),
            json!(((us(&r_h, 0.5) / us(&spin, 0.5).max(0.01)) * 10.0).round() / 10.0),
        );
        obj.insert(
            "latency_ratio_p99".into(),
            json!(((us(&r_h, 0.99) / us(&spin, 0.99).max(0.01)) * 10.0).round() / 10.0),
        );
        obj.insert(
            "throughput_ratio".into(),
            json!(((one / r_eps.max(1.0)) * 10.0).round() / 10.0),
        );
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let f = |k: &str| out.get(k).cloned().unwrap_or(Value::Null);
        println!(
            "in-process bus ({} cores, load {})",
            f("cores"),
            f("load_avg").as_str().unwrap_or("")
        );
        println!(
            "  1→1   routed events/s      {:>14}  (publisher and subscriber on two threads)",
            f("events_per_sec")
        );
        println!(
            "  1→1   routed events/s      {:>14}  (both tasks on one thread)",
            f("same_thread_events_per_sec")
        );
        println!(
            "  1→16  routed events/s      {:>14}  ({} publishes/s)",
            f("fanout16_events_per_sec"),
            f("fanout16_publishes_per_sec")
        );
        println!(
            "  publish→handler latency    p50 {} µs  p99 {} µs  p99.9 {} µs  (spin-then-park handler thread)",
            f("p50_us"),
            f("p99_us"),
            f("p999_us")
        );
        println!(
            "  publish→async task         p50 {} µs  p99 {} µs  (tokio task, thread parked between events)",
            f("async_p50_us"),
            f("async_p99_us")
        );
        if a.compare.is_some() {
            println!("redis pub/sub (events serialized as JSON, as a Redis-backed bus must)");
            println!(
                "  routed events/s            {:>14}   (in-process is {}× faster)",
                f("redis_events_per_sec"),
                f("throughput_ratio")
            );
            println!(
                "  publish→subscriber latency p50 {} µs  p99 {} µs   (in-process is {}× / {}× lower)",
                f("redis_p50_us"),
                f("redis_p99_us"),
                f("latency_ratio_p50"),
                f("latency_ratio_p99")
            );
        }
    }
    Ok(())
}

pub(super) fn rss_kb(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

async fn up(json_out: bool) -> Result<()> {
    let exe = std::env::current_exe()?;
    let http = reqwest::Client::new();
    let mut starts = Vec::new();
    let mut stops = Vec::new();
    let mut rss = 0;
    let mut peak = 0;
    let runs = 5;
    for run in 0..runs {
        let dir = std::env::temp_dir().join(format!("lotus-bench-up-{}-{run}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let t0 = Instant::now();
        let mut child = std::process::Command::new(&exe)
            .arg("--home")
            .arg(&dir)
            .args(["up", "--listen", "127.0.0.1:0"])
            .env("LOTUS_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("cannot start `lotus up`")?;
        let run_file = dir.join("run/nucleus.json");
        let healthy = loop {
            if t0.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                return Err(anyhow!("`lotus up` did not become healthy within 20 s"));
            }
            if let Ok(text) = std::fs::read(&run_file)
                && let Ok(info) = serde_json::from_slice::<crate::home::RunInfo>(&text)
                && let Ok(r) = http
                    .get(format!("http://{}/api/v1/health", info.listen))
                    .send()
                    .await
                && let Ok(h) = r.json::<lotus_server::Health>().await
                && h.status == "ok"
            {
                break t0.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        starts.push(healthy.as_secs_f64() * 1000.0);
        if run == 0 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            rss = rss_kb(child.id(), "VmRSS:").unwrap_or(0);
            peak = rss_kb(child.id(), "VmHWM:").unwrap_or(0);
        }
        let t1 = Instant::now();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let status = child.wait()?;
        stops.push(t1.elapsed().as_secs_f64() * 1000.0);
        if !status.success() {
            return Err(anyhow!("`lotus up` exited with {status} after SIGTERM"));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    starts.sort_by(f64::total_cmp);
    stops.sort_by(f64::total_cmp);
    let out = json!({
        "start_to_healthy_ms_median": (starts[runs / 2] * 10.0).round() / 10.0,
        "start_to_healthy_ms_max": (starts[runs - 1] * 10.0).round() / 10.0,
        "idle_rss_mb": (rss as f64 / 1024.0 * 10.0).round() / 10.0,
        "peak_rss_mb": (peak as f64 / 1024.0 * 10.0).round() / 10.0,
        "stop_ms_median": (stops[runs / 2] * 10.0).round() / 10.0,
        "runs": runs,
        "load_avg": load_avg(),
    });
    if json_out {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "lotus up on a fresh home ({runs} runs, load {})",
            load_avg()
        );
        println!(
            "  start → healthy   median {} ms, max {} ms",
            out["start_to_healthy_ms_median"], out["start_to_healthy_ms_max"]
        );
        println!(
            "  idle RSS          {} MB (peak {} MB), built-in modules running",
            out["idle_rss_mb"], out["peak_rss_mb"]
        );
        println!("  SIGTERM → exit 0  median {} ms", out["stop_ms_median"]);
    }
    Ok(())
}

#[cfg(not(feature = "wasm"))]
async fn reload(_: BenchReloadArgs) -> Result<()> {
    Err(anyhow!("this lotus was built without wasm support"))
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}

#[cfg(feature = "wasm")]
async fn reload(a: BenchReloadArgs) -> Result<()> {
    use lotus_nucleus::{
        ModuleDef, ModuleHost, NucleusBuilder, NucleusSettings, Origin, StateStore,
    };
    use lotus_wasm::WasmHost;

    let component = a.component.unwrap_or_else(|| {
        std::path::PathBuf::from("modules/target/wasm32-wasip2/release/echo_wasm.wasm")
    });
    if !component.is_file() {
        return Err(crate::exit::bad_input(format!(
            "no component at {}; build the examples with `cargo build --release --target wasm32-wasip2 --manifest-path modules/Cargo.toml` or pass --component FILE",
            component.display()
        )));
    }
    let home = std::env::temp_dir().join(format!("lotus-bench-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    let folder = home.join("modules/wecho");
    std::fs::create_dir_all(&folder)?;
    std::fs::copy(&component, folder.join("module.wasm"))?;
    std::fs::write(
        folder.join("manifest.yaml"),
        "name: wecho\nversion: 0.1.0\ntype: capability\nruntime: wasm\nentry: module.wasm\nsubscriptions: [wecho.request]\npublications: [wecho.reply]\n",
    )?;

    // Cold compile, no cache.
    let cold = WasmHost::new(None).map_err(|e| anyhow!("{e}"))?;
    let t = Instant::now();
    cold.load(&folder.join("module.wasm"))
        .map_err(|e| anyhow!("{e}"))?;
    let compile = t.elapsed();

    // Instantiate (compiled code cached): fresh store, instance, `describe`.
    let manifest = lotus_core::Manifest::load(&folder).map_err(|e| anyhow!("{e}"))?;
    let def = ModuleDef {
        manifest: Arc::new(manifest),
        origin: Origin::Folder(folder.clone()),
    };
    let host = WasmHost::new(Some(home.join("cache/wasm"))).map_err(|e| anyhow!("{e}"))?;
    let mut inst_times = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let m = host
            .instantiate(&def, None)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        inst_times.push(t.elapsed());
        drop(m);
    }
    inst_times.sort();

    // Memory per instance: many loaded at once.
    let before = rss_kb(std::process::id(), "VmRSS:").unwrap_or(0);
    let mut kept = Vec::with_capacity(a.instances);
    for _ in 0..a.instances {
        kept.push(
            host.instantiate(&def, None)
                .await
                .map_err(|e| anyhow!("{e}"))?,
        );
    }
    let after = rss_kb(std::process::id(), "VmRSS:").unwrap_or(0);
    let per_instance_kb = after.saturating_sub(before) as f64 / a.instances.max(1) as f64;
    drop(kept);

    // A nucleus with the module: live swaps, then handler throughput wasm vs native.
    let nucleus = NucleusBuilder::new(NucleusSettings::default())
        .log(Arc::new(lotus_bus::SqliteLog::open(
            &home.join("data/streams.db"),
        )?))
        .state(StateStore::open(&home.join("data/state.db"))?)
        .host(lotus::builtin::native_host().map_err(|e| anyhow!("{e}"))?)
        .host(host)
        .modules_dir(home.join("modules"))
        .build()?;
    nucleus.start().await;
    let mut swaps = Vec::new();
    for _ in 0..a.reloads.max(1) {
        swaps.push(nucleus.reload("wecho").await?.swap_us);
    }
    swaps.sort_unstable();
    let rate = |module: &'static str, topic: &'static str| {
        let nucleus = nucleus.clone();
        async move {
            let n = 20_000u64;
            let base = nucleus.module(module).map_or(0, |m| m.events_handled);
            let t = Instant::now();
            for i in 0..n {
                nucleus.publish("bench", topic, json!({"i": i})).await?;
            }
            while nucleus.module(module).map_or(0, |m| m.events_handled) < base + n {
                if t.elapsed() > Duration::from_secs(120) {
                    return Err(anyhow!("{module} did not handle {n} events in 120 s"));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok::<f64, anyhow::Error>(n as f64 / t.elapsed().as_secs_f64())
        }
    };
    let wasm_eps = rate("wecho", "wecho.request").await?;
    let native_eps = rate("echo", "echo.request").await?;
    nucleus.shutdown().await?;
    let _ = std::fs::remove_dir_all(&home);

    let pct = |v: &[u64], q: f64| v[((v.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    let out = json!({
        "component": component.display().to_string(),
        "component_kb": std::fs::metadata(&component).map(|m| m.len() / 1024).unwrap_or(0),
        "compile_ms": millis(compile),
        "instantiate_us": (inst_times[inst_times.len() / 2].as_secs_f64() * 1e6).round(),
        "swap_p50_ms": pct(&swaps, 0.5),
        "swap_p99_ms": pct(&swaps, 0.99),
        "reloads": swaps.len(),
        "wasm_handler_events_per_sec": wasm_eps.round(),
        "native_handler_events_per_sec": native_eps.round(),
        "wasm_vs_native": ((wasm_eps / native_eps.max(1.0)) * 100.0).round() / 100.0,
        "instances": a.instances,
        "rss_per_instance_kb": per_instance_kb.round(),
        "load_avg": load_avg(),
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "wasm module {} ({} KiB), load {}",
            out["component"].as_str().unwrap_or(""),
            out["component_kb"],
            load_avg()
        );
        println!("  compile (cold, no cache)   {} ms", out["compile_ms"]);
        println!("  instantiate (cached code)  {} µs", out["instantiate_us"]);
        println!(
            "  live swap                  p50 {} ms, p99 {} ms over {} reloads",
            out["swap_p50_ms"], out["swap_p99_ms"], out["reloads"]
        );
        println!(
            "  handler events/s           wasm {} vs native {} ({}×)",
            out["wasm_handler_events_per_sec"],
            out["native_handler_events_per_sec"],
            out["wasm_vs_native"]
        );
        println!(
            "  memory                     {} KiB per instance with {} loaded",
            out["rss_per_instance_kb"], out["instances"]
        );
    }
    Ok(())
}

/// Router overhead: the same streamed completion from a local server, straight through the
/// OpenAI wire client and through the router (name resolution, budget check, first-event
/// timeout, metering, ledger write). The difference is what the router adds.
async fn providers(args: BenchProvidersArgs) -> Result<()> {
    use lotus_providers::openai::OpenAi;
    use lotus_providers::router::ChatCall;
    use lotus_providers::{
        Catalog, ChatRequest, Ledger, Message, Provider, Router, RouterConfig, Secret,
    };

    const BODY: &str = include_str!("../../../lotus-providers/tests/fixtures/openai-text.sse");
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|| async {
            (
                [(axum::http::header::CONTENT_TYPE, "text/event-stream")],
                BODY,
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}/v1", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let http = lotus_providers::http_client().map_err(|e| anyhow!("{e}"))?;
    let provider = Arc::new(OpenAi::new(
        "openai",
        &base,
        Some(Secret::new("sk-bench")),
        http,
    ));
    let dir = tempfile_dir()?;
    let ledger = Arc::new(Ledger::open(&dir.join("ledger.db")).map_err(|e| anyhow!(e))?);
    let router = Arc::new(
        Router::new(
            Catalog::builtin(),
            RouterConfig {
                chain: vec!["fast".into()],
                daily_usd: Some(1e9),
                ..RouterConfig::default()
            },
            Some(ledger),
        )
        .with_provider(provider.clone()),
    );
    let request = ChatRequest {
        model: "gpt-4o-mini".into(),
        messages: vec![Message::user("What is the capital of France?")],
        ..ChatRequest::default()
    };
    let direct = || async {
        let s = provider
            .chat(request.clone())
            .await
            .map_err(|e| anyhow!("{e}"))?;
        lotus_providers::collect("openai", s)
            .await
            .map_err(|e| anyhow!("{e}"))
    };
    let routed = || async {
        let call = ChatCall {
            module: "bench".into(),
            chain: Vec::new(),
            request: request.clone(),
        };
        router
            .complete(call)
            .await
            .map(|(_, r)| r)
            .map_err(|e| anyhow!("{e}"))
    };
    let mut hd = Histogram::<u64>::new(3)?;
    let mut hr = Histogram::<u64>::new(3)?;
    for _ in 0..200 {
        direct().await?;
        routed().await?;
    }
    // Interleaved, so both see the same machine.
    for _ in 0..args.calls {
        let t = Instant::now();
        direct().await?;
        hd.record(t.elapsed().as_nanos() as u64)?;
        let t = Instant::now();
        routed().await?;
        hr.record(t.elapsed().as_nanos() as u64)?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let out = json!({
        "calls": args.calls,
        "direct_p50_us": us(&hd, 0.5),
        "routed_p50_us": us(&hr, 0.5),
        "direct_mean_us": (hd.mean() / 10.0).round() / 100.0,
        "routed_mean_us": (hr.mean() / 10.0).round() / 100.0,
        "overhead_p50_us": ((us(&hr, 0.5) - us(&hd, 0.5)) * 100.0).round() / 100.0,
        "overhead_mean_us": ((hr.mean() - hd.mean()) / 10.0).round() / 100.0,
        "load_avg": load_avg(),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "router overhead per call: p50 {} µs, mean {} µs (direct p50 {} µs, routed p50 {} µs, {} calls; load {})",
            out["overhead_p50_us"],
            out["overhead_mean_us"],
            out["direct_p50_us"],
            out["routed_p50_us"],
            args.calls,
            out["load_avg"]
        );
    }
    Ok(())
}

/// A fresh private folder under the system's temporary directory.
pub(super) fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("lotus-bench-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Local model speed on this machine's CPU, with the models of `$LOTUS_HOME/models`.
#[cfg(feature = "local")]
async fn local(home: &crate::home::Home, as_json: bool) -> Result<()> {
    use lotus_providers::{ChatEvent, ChatRequest, Message};

    let models = home.models();
    for name in [lotus_local::CHAT_MODEL, lotus_local::EMBED_MODEL] {
        if !lotus_local::ready(&models, name) {
            return Err(anyhow!(
                "`{name}` is not installed: run `lotus model pull {name}` first"
            ));
        }
    }
    let out = tokio::task::spawn_blocking(move || -> Result<Value> {
        let path = lotus_local::store::dir(&models, lotus_local::CHAT_MODEL)
            .join("SmolLM2-135M-Instruct.Q8_0.gguf");
        let t = Instant::now();
        let mut chat = lotus_local::chat::Chat::load(&path).map_err(|e| anyhow!(e))?;
        let load_ms = t.elapsed().as_secs_f64() * 1e3;
        let req = ChatRequest {
            model: lotus_local::CHAT_MODEL.into(),
            messages: vec![Message::user(
                "Write a long story about a robot who learns to paint.",
            )],
            max_tokens: Some(128),
            temperature: Some(0.0),
            ..ChatRequest::default()
        };
        let mut runs = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            let mut first = None;
            let mut usage = None;
            chat.generate(&req, &mut |ev| {
                match ev {
                    ChatEvent::Text { .. } if first.is_none() => first = Some(t.elapsed()),
                    ChatEvent::Finished { usage: u, .. } => usage = u,
                    _ => {}
                }
                true
            })
            .map_err(|e| anyhow!(e))?;
            let total = t.elapsed();
            let u = usage.unwrap_or_default();
            let first = first.unwrap_or(total);
            let decode_tps =
                (u.output_tokens.saturating_sub(1)) as f64 / (total - first).as_secs_f64();
            let prefill_tps = u.input_tokens as f64 / first.as_secs_f64();
            runs.push((decode_tps, prefill_tps, u.input_tokens, u.output_tokens));
        }
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (decode_tps, prefill_tps, prompt, generated) = runs[runs.len() / 2];
        let embedder = lotus_local::embed::Embedder::load(&lotus_local::store::dir(
            &models,
            lotus_local::EMBED_MODEL,
        ))
        .map_err(|e| anyhow!(e))?;
        let sentences: Vec<String> = (0..200)
            .map(|i| {
                format!("Sentence number {i} is about cats, markets and the weather in Paris.")
            })
            .collect();
        let t = Instant::now();
        for s in &sentences {
            embedder.embed(s).map_err(|e| anyhow!(e))?;
        }
        let embed_per_sec = sentences.len() as f64 / t.elapsed().as_secs_f64();
        Ok(json!({
            "chat_model": "smollm2 (Q8_0)",
            "load_ms": (load_ms * 10.0).round() / 10.0,
            "prompt_tokens": prompt,
            "generated_tokens": generated,
            "prefill_tokens_per_sec": (prefill_tps * 10.0).round() / 10.0,
            "decode_tokens_per_sec": (decode_tps * 10.0).round() / 10.0,
            "minilm_embeddings_per_sec": (embed_per_sec * 10.0).round() / 10.0,
            "threads": std::env::var("CANDLE_NUM_THREADS").unwrap_or_else(|_| "default".into()),
            "avx2": cfg!(target_feature = "avx2"),
            "load_avg": load_avg(),
        }))
    })
    .await??;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "smollm2: decode {} tok/s, prefill {} tok/s; minilm: {} embeddings/s (threads {}, avx2 {}, load {})",
            out["decode_tokens_per_sec"],
            out["prefill_tokens_per_sec"],
            out["minilm_embeddings_per_sec"],
            out["threads"],
            out["avx2"],
            out["load_avg"]
        );
    }
    Ok(())
}

#[cfg(not(feature = "local"))]
async fn local(_: &crate::home::Home, _: bool) -> Result<()> {
    Err(anyhow!(
        "this lotus was built without local models (feature `local`)"
    ))
}
