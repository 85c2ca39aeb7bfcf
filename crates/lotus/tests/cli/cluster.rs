//! Two `lotus up` processes on one Redis bus.

use std::time::{Duration, Instant};

use lotus_bus_redis::testing;
use serde_json::Value;

use super::{Up, run};

/// Runs one of the shared Redis test helpers from these blocking tests.
fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(f)
}

fn home_on_bus(url: &str, ns: &str, node: &str, extra: &str) -> tempfile::TempDir {
    let home = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        home.path().join("lotus.toml"),
        format!(
            "[bus]\nbackend = \"redis\"\nurl = \"{url}\"\nnode = \"{node}\"\nnamespace = \"{ns}\"\n{extra}"
        ),
    )
    .expect("lotus.toml");
    home
}

fn modules(up: &Up) -> Vec<Value> {
    let (code, out, err) = run(up.path(), &["module", "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).expect("module list json")
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(15), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_nuclei_share_one_redis_bus() {
    let Some(url) = block_on(testing::redis_url()) else {
        return;
    };
    let ns = testing::namespace();
    // Only b runs `echo`: what reaches it from a crossed the bus.
    let b = Up::start_in(home_on_bus(&url, &ns, "b", ""), &[]);
    let a = Up::start_in(
        home_on_bus(&url, &ns, "a", "[modules.echo]\nenabled = false\n"),
        &[],
    );

    // a lists its own modules and b's, each with its node.
    wait_until("a sees b's echo", || {
        modules(&a)
            .iter()
            .any(|m| m["name"] == "echo" && m["node"] == "b" && m["state"] == "running")
    });
    let list = run(a.path(), &["module", "list"]).1;
    assert!(list.contains("NODE"), "{list}");
    let echo_a = modules(&a)
        .into_iter()
        .find(|m| m["name"] == "echo" && m["node"] == "a")
        .expect("a's own echo");
    assert_eq!(echo_a["state"], "disabled");

    // A tool hosted on b, called through a.
    let (code, out, err) = run(
        a.path(),
        &["tool", "call", "echo.echo", r#"{"text":"across"}"#],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("across"), "{out}");
    let tools = run(a.path(), &["tool", "list"]).1;
    assert!(
        tools
            .lines()
            .any(|l| l.starts_with("echo.echo") && l.contains(" b ")),
        "{tools}"
    );
    // Bad arguments are refused by b's module and said by a as its own.
    let (code, _, err) = run(a.path(), &["tool", "call", "echo.echo", r#"{"txt":"x"}"#]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("echo.echo"), "{err}");

    // An event published on a reaches b's module.
    let handled = |up: &Up| {
        modules(up)
            .iter()
            .find(|m| m["name"] == "echo" && m["node"] == "b")
            .and_then(|m| m["events_handled"].as_u64())
            .unwrap_or(0)
    };
    let before = handled(&b);
    let (code, _, err) = run(
        a.path(),
        &["events", "publish", "echo.request", r#"{"text":"hello b"}"#],
    );
    assert_eq!(code, 0, "{err}");
    wait_until("b's echo handles a's event", || handled(&b) == before + 1);

    // The durable streams are shared: b reads the tool call a recorded, and its own record
    // of serving it for a's caller.
    let calls = |up: &Up| {
        let (code, out, err) = run(
            up.path(),
            &[
                "events",
                "query",
                "action_log",
                "--topic",
                "system.tool_called",
                "--json",
            ],
        );
        assert_eq!(code, 0, "{err}");
        out
    };
    wait_until("both records of the call", || {
        let out = calls(&b);
        out.contains(r#""caller":"api""#) && out.contains(r#""caller":"api@a""#)
    });

    // doctor on a shows the bus: backend, link, both nodes.
    let (_, out, _) = run(a.path(), &["doctor"]);
    assert!(out.contains("redis at"), "{out}");
    assert!(out.contains("link up"), "{out}");
    assert!(out.contains("node `a`") && out.contains("b ("), "{out}");
    assert!(out.contains("on Redis: conversation_stream"), "{out}");

    let mut a = a;
    let mut b = b;
    let (code, err) = a.stop();
    assert_eq!(code, 0, "{err}");
    // With a gone, b no longer lists it.
    wait_until("b forgets a", || {
        modules(&b).iter().all(|m| m["node"] != "a")
    });
    let (code, err) = b.stop();
    assert_eq!(code, 0, "{err}");
    block_on(testing::drop_namespace(&url, &ns));
}

#[test]
fn a_redis_bus_that_cannot_be_reached_stops_up_with_the_reason() {
    let home = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        home.path().join("lotus.toml"),
        "[bus]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:1\"\n",
    )
    .expect("lotus.toml");
    let (code, _, err) = run(home.path(), &["up", "--listen", "127.0.0.1:0"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("cannot reach Redis at redis://127.0.0.1:1"),
        "{err}"
    );
    assert!(err.contains("backend = \"memory\""), "{err}");
    let (code, _, err) = run(home.path(), &["doctor"]);
    assert_ne!(code, 0, "doctor fails on a configured bus it cannot reach");
    let _ = err;
}
