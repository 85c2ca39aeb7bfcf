//! The `lotus` binary end to end: a real `lotus up` process, the CLI and the HTTP API against it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt;
use serde_json::{Value, json};

mod api;
mod cluster;
mod mcp;

fn lotus(home: &Path) -> Command {
    let mut c = Command::cargo_bin("lotus").expect("lotus binary");
    c.arg("--home")
        .arg(home)
        .env_remove("LOTUS_HOME")
        .env("LOTUS_LOG", "warn");
    c
}

fn run(home: &Path, args: &[&str]) -> (i32, String, String) {
    let out = lotus(home).args(args).output().expect("run lotus");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A `lotus up` on its own home and an ephemeral port; SIGTERM on drop.
struct Up {
    home: tempfile::TempDir,
    child: Option<Child>,
    addr: String,
}

impl Up {
    fn start() -> Self {
        Self::start_in(tempfile::tempdir().expect("tempdir"), &[])
    }

    fn start_in(home: tempfile::TempDir, env: &[(&str, &str)]) -> Self {
        let mut cmd = lotus(home.path());
        cmd.args(["up", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn lotus up");
        let run_file = home.path().join("run/nucleus.json");
        let t0 = Instant::now();
        let addr = loop {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "lotus up did not start"
            );
            if let Ok(text) = std::fs::read(&run_file)
                && let Ok(v) = serde_json::from_slice::<Value>(&text)
            {
                break v["listen"].as_str().expect("listen").to_owned();
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // The API answers first; wait until every module has been started.
        let http = reqwest::blocking::Client::new();
        loop {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "lotus up did not become ready"
            );
            let status = http
                .get(format!("http://{addr}/api/v1/health"))
                .send()
                .ok()
                .and_then(|r| r.json::<Value>().ok())
                .and_then(|v| v["status"].as_str().map(str::to_owned));
            if status.is_some_and(|s| s != "starting") {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }

        Self {
            home,
            child: Some(child),
            addr,
        }
    }

    fn path(&self) -> &Path {
        self.home.path()
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.path().join("token")).expect("token")
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// SIGTERM; returns the exit code and stderr.
    fn stop(&mut self) -> (i32, String) {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let t0 = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                let mut err = String::new();
                if let Some(mut s) = child.stderr.take() {
                    use std::io::Read;
                    let _ = s.read_to_string(&mut err);
                }
                return (status.code().unwrap_or(-1), err);
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "lotus up did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/manifests")
        .join(kind);
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .collect();
    v.sort();
    v
}

/// Lays out module folder `modules/NAME` under `home` with a built guest component and `manifest`.
fn wasm_folder(home: &Path, name: &str, component: &str, manifest: &str) -> PathBuf {
    let folder = home.join("modules").join(name);
    std::fs::create_dir_all(&folder).expect("mkdir");
    std::fs::copy(
        lotus_wasm::testkit::guest_components().join(component),
        folder.join("module.wasm"),
    )
    .expect("copy component");
    std::fs::write(folder.join("manifest.yaml"), manifest).expect("manifest");
    folder
}

#[test]
fn the_done_when_scenario() {
    let mut up = Up::start();
    let home = up.path().to_owned();

    let (code, out, err) = run(&home, &["module", "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let mods: Value = serde_json::from_str(&out).expect("json");
    for name in ["heartbeat", "echo"] {
        let m = mods
            .as_array()
            .expect("array")
            .iter()
            .find(|m| m["name"] == name)
            .expect(name);
        assert_eq!(m["state"], "running", "{m}");
    }

    let (code, out, err) = run(&home, &["module", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("NAME"), "{out}");
    assert!(
        out.contains("heartbeat") && out.contains("running"),
        "{out}"
    );

    let (code, out, err) = run(
        &home,
        &["events", "tail", "system.heartbeat", "--count", "1"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.contains("system.heartbeat") && out.contains("\"beat\""),
        "{out}"
    );

    let (code, out, err) = run(
        &home,
        &[
            "events",
            "tail",
            "system.heartbeat",
            "--count",
            "1",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let ev: Value = serde_json::from_str(out.trim()).expect("one JSON event");
    assert_eq!(ev["topic"], "system.heartbeat");

    let (code, out, err) = run(&home, &["tool", "call", "echo.echo", r#"{"text":"hi"}"#]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).expect("json"),
        json!({"text": "hi"})
    );

    let (code, out, _) = run(&home, &["tool", "list", "--json"]);
    assert_eq!(code, 0);
    let tools: Value = serde_json::from_str(&out).expect("json");
    let echo = tools
        .as_array()
        .expect("array")
        .iter()
        .find(|t| t["name"] == "echo.echo")
        .expect("echo.echo");
    assert_eq!(echo["input_schema"]["properties"]["text"]["type"], "string");

    let (code, err) = up.stop();
    assert_eq!(code, 0, "SIGTERM must exit 0: {err}");
    assert!(
        !home.join("run/nucleus.json").exists(),
        "run file removed on exit"
    );

    // The streams were flushed: the stop events are there.
    let (code, out, err) = run(&home, &["events", "query", "module_events", "--json"]);
    assert_eq!(code, 0, "{err}");
    let topics: Vec<String> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("json")["event"]["topic"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert_eq!(
        topics,
        [
            "system.module_started",
            "system.module_started",
            "system.module_started",
            "system.module_started",
            "system.module_stopped",
            "system.module_stopped",
            "system.module_stopped",
            "system.module_stopped"
        ]
    );
    // Reverse start order on stop: heartbeat (critical) started first, so it stops last.
    assert!(
        out.lines().nth(7).is_some_and(|l| l.contains("heartbeat")),
        "{out}"
    );
}

#[test]
fn commands_say_clearly_when_no_nucleus_runs() {
    let home = tempfile::tempdir().expect("tempdir");
    for args in [
        &["module", "list"][..],
        &["tool", "list"],
        &["tool", "call", "echo.echo", "{}"],
        &["events", "tail"],
    ] {
        let (code, _, err) = run(home.path(), args);
        assert_eq!(code, 3, "{args:?}: {err}");
        assert!(
            err.contains("no nucleus is running") && err.contains("lotus up"),
            "{err}"
        );
    }
}

#[test]
fn validate_names_the_key_of_every_broken_fixture() {
    let home = tempfile::tempdir().expect("tempdir");
    for file in fixtures("bad") {
        let text = std::fs::read_to_string(&file).expect("read");
        let key = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect-key:"))
            .expect("expect-key")
            .trim();
        let (code, _, err) = run(
            home.path(),
            &["module", "validate", file.to_str().expect("utf8")],
        );
        assert_eq!(code, 2, "{}: {err}", file.display());
        assert!(err.contains(&file.display().to_string()), "{err}");
        if !key.is_empty() {
            assert!(
                err.contains(&format!("`{key}`")),
                "{}: {err}",
                file.display()
            );
        }
    }
    let good = fixtures("good");
    let minimal = good
        .iter()
        .find(|f| f.ends_with("minimal.yaml"))
        .expect("minimal");
    // `tiny` is not compiled into this binary: the manifest is valid but its native entry is not.
    let (code, _, err) = run(
        home.path(),
        &["module", "validate", minimal.to_str().expect("utf8")],
    );
    assert_eq!(code, 2);
    assert!(err.contains("no native module `tiny`"), "{err}");
    let builtin = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/builtin/echo.yaml");
    let (code, out, err) = run(
        home.path(),
        &["module", "validate", builtin.to_str().expect("utf8")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ok:"), "{out}");
}

#[test]
fn bad_cli_input_is_a_clear_error() {
    let up = Up::start();
    let home = up.path();
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["tool", "call", "echo.echo", "{not json"],
            2,
            "not valid JSON",
        ),
        (
            &["tool", "call", "echo.echo", r#"{"txt":"x"}"#],
            2,
            "unknown field `txt`",
        ),
        (&["tool", "call", "echo.echo", "[1]"], 2, "JSON object"),
        (
            &["tool", "call", "nope.nothing"],
            4,
            "no tool named `nope.nothing`",
        ),
        (&["events", "publish", "system.x", "{}"], 2, "reserved"),
        (&["events", "publish", "a..b"], 2, "empty token"),
        (&["events", "publish", "a.b", "{oops"], 2, "not valid JSON"),
        (&["events", "tail", "a.>.b"], 2, "must be the last token"),
        (&["events", "query", "chat"], 2, "unknown stream"),
        (&["module", "info", "ghost"], 4, "no module named `ghost`"),
    ];
    for (args, code, needle) in cases {
        let (c, _, err) = run(home, args);
        assert_eq!(c, *code, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn api_requires_the_token_and_answers_json_errors() {
    let up = Up::start();
    let http = reqwest::blocking::Client::new();
    let health: Value = http
        .get(up.url("/api/v1/health"))
        .send()
        .expect("health")
        .json()
        .expect("json");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["running"], 4);

    let r = http.get(up.url("/api/v1/modules")).send().expect("send");
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().expect("json")["error"]["code"],
        "unauthorized"
    );
    let r = http
        .get(up.url("/api/v1/modules"))
        .bearer_auth("wrong")
        .send()
        .expect("send");
    assert_eq!(r.status(), 401);

    let token = up.token();
    let r = http
        .get(up.url("/api/v1/modules/echo"))
        .bearer_auth(&token)
        .send()
        .expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().expect("json")["name"], "echo");

    let call = |body: &str| {
        http.post(up.url("/api/v1/tools/echo.echo/call"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .expect("send")
    };
    let r = call(r#"{"text":"yo"}"#);
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().expect("json")["result"],
        json!({"text": "yo"})
    );
    let r = call("{broken");
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().expect("json")["error"]["code"],
        "invalid_json"
    );
    let r = call(r#"{"text": 5}"#);
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().expect("json")["error"]["code"],
        "invalid_arguments"
    );

    let r = http
        .post(up.url("/api/v1/events"))
        .bearer_auth(&token)
        .body(r#"{"topic":"echo.request","payload":{"n":1},"extra":true}"#)
        .send()
        .expect("send");
    assert_eq!(r.status(), 400, "unknown keys in the body are rejected");
    let r = http
        .post(up.url("/api/v1/events"))
        .bearer_auth(&token)
        .body(r#"{"topic":"echo.request","payload":{"n":1}}"#)
        .send()
        .expect("send");
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().expect("json")["matched"], 1);

    let r = http
        .get(up.url("/api/v1/events/stream?pattern=a..b"))
        .bearer_auth(&token)
        .send()
        .expect("send");
    assert_eq!(r.status(), 400);
    let r = http
        .get(up.url("/api/v1/streams/module_events?limit=1"))
        .bearer_auth(&token)
        .send()
        .expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().expect("json").as_array().map(Vec::len),
        Some(1)
    );
    let r = http
        .get(up.url("/api/v1/nothing"))
        .bearer_auth(&token)
        .send()
        .expect("send");
    assert_eq!(r.status(), 404);
}

#[test]
fn the_token_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let up = Up::start();
    let mode = std::fs::metadata(up.path().join("token"))
        .expect("token")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(up.token().trim().len(), 64);
}

#[test]
fn a_second_nucleus_on_the_same_home_is_refused() {
    let up = Up::start();
    let (code, _, err) = run(up.path(), &["up", "--listen", "127.0.0.1:0"]);
    assert_eq!(code, 1);
    assert!(err.contains("another nucleus is already running"), "{err}");
}

#[test]
fn config_is_layered_and_bad_config_is_named() {
    let home = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        home.path().join("lotus.toml"),
        "[tools]\ntimeout = \"5s\"\n[modules.heartbeat.every]\nbeat = \"100ms\"\n",
    )
    .expect("write");
    let out = lotus(home.path())
        .args(["config", "show"])
        .env("LOTUS_API__LISTEN", "127.0.0.1:9999")
        // Other LOTUS_* variables (a CI script's, a test's) are not configuration.
        .env("LOTUS_CI_CACHE", "/tmp/elsewhere")
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("timeout = \"5s\""), "{text}");
    assert!(text.contains("127.0.0.1:9999"), "{text}");
    assert!(text.contains("beat = \"100ms\""), "{text}");

    std::fs::write(home.path().join("lotus.toml"), "[tools]\ntimout = \"5s\"\n").expect("write");
    let (code, _, err) = run(home.path(), &["config", "show"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("timout") && err.contains("lotus.toml"),
        "{err}"
    );
    let (code, _, err) = run(home.path(), &["up"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn module_settings_from_lotus_toml_reach_the_module() {
    let home = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        home.path().join("lotus.toml"),
        "[modules.heartbeat.every]\nbeat = \"50ms\"\n",
    )
    .expect("write");
    let up = Up::start_in(home, &[]);
    let (code, out, err) = run(
        up.path(),
        &[
            "events",
            "tail",
            "system.heartbeat",
            "--count",
            "5",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 5);
    let (_, out, _) = run(up.path(), &["module", "info", "heartbeat", "--json"]);
    let info: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(info["jobs"][0]["every_ms"], 50);
}

#[test]
fn doctor_reports_and_fails_on_broken_module_folders() {
    let home = tempfile::tempdir().expect("tempdir");
    let (code, out, err) = run(home.path(), &["doctor"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("built-in modules") && out.contains("heartbeat"),
        "{out}"
    );
    let broken = home.path().join("modules/broken");
    std::fs::create_dir_all(&broken).expect("mkdir");
    std::fs::write(
        broken.join("manifest.yaml"),
        "name: broken\nversion: 1\ntype: core\n",
    )
    .expect("write");
    let (code, out, _) = run(home.path(), &["doctor", "--json"]);
    assert_eq!(code, 1);
    let checks: Value = serde_json::from_str(&out).expect("json");
    assert!(
        checks
            .as_array()
            .expect("array")
            .iter()
            .any(|c| c["status"] == "fail"
                && c["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("`version`"))),
        "{out}"
    );
}

#[test]
fn a_wasm_module_folder_runs_under_lotus_up() {
    let home = tempfile::tempdir().expect("tempdir");
    let folder = wasm_folder(
        home.path(),
        "wecho",
        "echo_wasm.wasm",
        "name: wecho\nversion: 0.1.0\ntype: capability\nruntime: wasm\nentry: module.wasm\nsubscriptions: [wecho.request]\npublications: [wecho.reply]\n",
    );
    let (code, out, err) = run(
        home.path(),
        &["module", "validate", folder.to_str().expect("utf8")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("(wasm, capability)"), "{out}");

    let up = Up::start_in(home, &[]);
    let (code, out, err) = run(up.path(), &["module", "info", "wecho", "--json"]);
    assert_eq!(code, 0, "{err}");
    let info: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        (info["state"].as_str(), info["runtime"].as_str()),
        (Some("running"), Some("wasm"))
    );
    let (code, out, err) = run(
        up.path(),
        &["tool", "call", "wecho.echo", r#"{"text":"from wasm"}"#],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).expect("json"),
        json!({"text": "from wasm"})
    );
    assert!(
        std::fs::read_dir(up.path().join("cache/wasm"))
            .expect("cache")
            .count()
            >= 1,
        "the compiled component is cached"
    );
    let (code, out, err) = run(up.path(), &["module", "reload", "wecho"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("reloaded wecho 0.1.0 → 0.1.0"), "{out}");
    let (code, _, err) = run(up.path(), &["module", "reload", "ghost"]);
    assert_eq!(code, 4, "{err}");
    let (code, out, _) = run(
        up.path(),
        &["tool", "call", "wecho.echo", r#"{"text":"again"}"#],
    );
    assert_eq!(code, 0);
    assert!(out.contains("again"));
}

#[test]
fn install_upgrade_rollback_and_remove_while_running() {
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        lotus_wasm::testkit::guest_components().join("counter.wasm"),
        src.path().join("module.wasm"),
    )
    .expect("copy component");
    let manifest = |v: &str| {
        format!(
            "name: counter\nversion: {v}\ntype: capability\nruntime: wasm\nentry: module.wasm\npublications: [counter.value]\n"
        )
    };
    std::fs::write(src.path().join("manifest.yaml"), manifest("0.1.0")).expect("manifest");
    let up = Up::start();
    let home = up.path();
    let srcp = src.path().to_str().expect("utf8");

    let (code, out, err) = run(home, &["module", "install", srcp]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("loaded by the running nucleus"), "{out}");
    let (code, out, _) = run(home, &["tool", "call", "counter.increment"]);
    assert_eq!((code, out.trim()), (0, "1"));

    std::fs::write(src.path().join("manifest.yaml"), manifest("0.2.0")).expect("manifest");
    let (code, out, err) = run(home, &["module", "install", srcp]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("reloaded live (0.1.0 → 0.2.0"), "{out}");
    let (_, out, _) = run(home, &["tool", "call", "counter.increment"]);
    assert_eq!(out.trim(), "2", "state survives the upgrade");

    let (code, out, _) = run(home, &["module", "history", "counter", "--json"]);
    assert_eq!(code, 0);
    let hist: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(hist.as_array().map(Vec::len), Some(2));

    let (code, out, err) = run(home, &["module", "rollback", "counter"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("back to 0.1.0") && out.contains("reloaded live (0.2.0 → 0.1.0"),
        "{out}"
    );
    let (_, out, _) = run(home, &["module", "info", "counter", "--json"]);
    assert_eq!(
        serde_json::from_str::<Value>(&out).expect("json")["version"],
        "0.1.0"
    );
    let (code, _, err) = run(home, &["module", "rollback", "counter", "--to", "9.9.9"]);
    assert_eq!(code, 4, "{err}");

    // A broken build is refused before anything is copied; the installed version keeps running.
    std::fs::write(src.path().join("module.wasm"), b"broken").expect("write");
    let (code, _, err) = run(home, &["module", "install", srcp]);
    assert_eq!(code, 2, "{err}");
    let (_, out, _) = run(home, &["tool", "call", "counter.get"]);
    assert_eq!(out.trim(), "2");

    let (code, _, err) = run(home, &["module", "remove", "counter"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, _) = run(home, &["module", "info", "counter"]);
    assert_eq!(code, 4, "removed from the running nucleus");
    assert!(!home.join("modules/counter").exists());
    assert!(
        home.join("modules/.store/counter").exists(),
        "versions are kept"
    );
    // The registry (L4) holds every change, in order.
    let (code, out, err) = run(home, &["module", "history", "counter", "--json"]);
    assert_eq!(code, 0, "{err}");
    let hist: Vec<Value> = serde_json::from_str(&out).expect("json");
    let seen: Vec<(&str, &str, &str)> = hist
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or_default(),
                e["version"].as_str().unwrap_or_default(),
                e["runtime"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("install", "0.1.0", "wasm"),
            ("install", "0.2.0", "wasm"),
            ("rollback", "0.1.0", "wasm"),
            ("remove", "0.1.0", "wasm"),
        ]
    );
    assert_eq!(
        hist[0]["hash"], hist[2]["hash"],
        "rolled back to the first build"
    );
}

/// A module history written before the registry moved to L4 is imported on first use, and
/// the registry goes on from there.
#[test]
fn a_legacy_module_history_is_imported_into_the_registry() {
    let home = tempfile::tempdir().expect("tempdir");
    let store = home.path().join("modules/.store/old");
    std::fs::create_dir_all(&store).expect("store");
    std::fs::write(
        store.join("history.jsonl"),
        concat!(
            r#"{"at":"2026-01-02T03:04:05Z","action":"install","version":"1.0.0","hash":"aaaa"}"#,
            "\n",
            r#"{"at":"2026-02-02T03:04:05Z","action":"remove","version":"1.0.0","hash":"aaaa"}"#,
            "\n"
        ),
    )
    .expect("history");
    for _ in 0..2 {
        let (code, out, err) = run(home.path(), &["module", "history", "old", "--json"]);
        assert_eq!(code, 0, "{err}");
        let hist: Vec<Value> = serde_json::from_str(&out).expect("json");
        assert_eq!(hist.len(), 2, "imported once: {out}");
        assert_eq!(hist[0]["at"], "2026-01-02T03:04:05Z");
        assert_eq!(hist[1]["action"], "remove");
    }
    assert!(!store.join("history.jsonl").exists());
    assert!(store.join("history.jsonl.imported").exists());
    let (code, _, err) = run(home.path(), &["module", "history", "ghost"]);
    assert_eq!(code, 4, "{err}");
}

#[test]
fn new_build_install_reaches_the_tool_of_a_fresh_module() {
    let up = Up::start();
    let work = tempfile::tempdir().expect("tempdir");
    let new_demo = [
        "module",
        "new",
        "demo",
        "--dir",
        work.path().to_str().expect("utf8"),
    ];
    let (code, out, err) = run(up.path(), &new_demo);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("lotus module build"), "{out}");
    let project = work.path().join("demo");
    let project = project.to_str().expect("utf8");
    let (code, out, err) = run(up.path(), &["module", "build", project]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("built"), "{out}");
    let (code, out, err) = run(up.path(), &["module", "install", project]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("loaded by the running nucleus: running"),
        "{out}"
    );
    let (code, out, err) = run(
        up.path(),
        &["tool", "call", "demo.hello", r#"{"name":"ash"}"#],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).expect("json"),
        json!({"greeting": "hello, ash"})
    );
    let (code, _, err) = run(up.path(), &new_demo);
    assert_eq!(code, 2, "an existing folder is not overwritten: {err}");
}

#[test]
fn a_hotload_module_reloads_when_its_folder_changes() {
    let home = tempfile::tempdir().expect("tempdir");
    let manifest = |v: &str| {
        format!(
            "name: wecho\nversion: {v}\ntype: capability\nruntime: wasm\nentry: module.wasm\nconfig:\n  hotload: true\n"
        )
    };
    wasm_folder(home.path(), "wecho", "echo_wasm.wasm", &manifest("0.1.0"));
    let up = Up::start_in(home, &[]);
    std::fs::write(
        up.path().join("modules/wecho/manifest.yaml"),
        manifest("0.1.1"),
    )
    .expect("edit");
    let t0 = Instant::now();
    loop {
        let (_, out, _) = run(up.path(), &["module", "info", "wecho", "--json"]);
        let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        if v["version"] == "0.1.1" {
            assert_eq!(v["state"], "running");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "not reloaded: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `lotus provider …` with keys and servers from the environment, against real HTTP servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_chat_streams_falls_back_and_records_costs() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    const KEY: &str = "sk-test-CLIKEY-000111222";
    let openai = MockServer::start().await;
    let ollama = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "text/event-stream")
                .set_body_string(fixture("openai-text.sse")),
        )
        .up_to_n_times(1)
        .mount(&openai)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/models"))
        .respond_with(ResponseTemplate::new(200).set_body_string(r#"{"object":"list","data":[]}"#))
        .mount(&openai)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/tags"))
        .respond_with(ResponseTemplate::new(200).set_body_string(
            r#"{"models":[{"name":"llama3.2:latest","model":"llama3.2:latest","size":2019393189}]}"#,
        ))
        .mount(&ollama)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/chat"))
        .respond_with(ResponseTemplate::new(200).set_body_string(fixture("ollama-text.ndjson")))
        .mount(&ollama)
        .await;

    let home = tempfile::tempdir().expect("tempdir");
    let (openai_url, ollama_url) = (format!("{}/v1", openai.uri()), ollama.uri());
    let home_path = home.path().to_owned();
    let cli = move |args: &[&str]| {
        let out = lotus_unconfigured(&home_path)
            .env("OPENAI_API_KEY", KEY)
            .env("OPENAI_BASE_URL", &openai_url)
            .env("OLLAMA_HOST", &ollama_url)
            .env("LOTUS_PROVIDERS__RETRIES", "0")
            .args(args)
            .output()
            .expect("run lotus");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let run = |args: &'static [&'static str]| {
        let cli = cli.clone();
        tokio::task::spawn_blocking(move || cli(args))
    };

    let (code, out, err) = run(&["provider", "list", "--json"]).await.expect("join");
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        v["default_chain"],
        json!([
            "openai:gpt-4o-mini",
            "ollama:llama3.2:latest",
            "local:smollm2"
        ])
    );
    let openai_row = &v["providers"][0];
    assert_eq!(
        (
            &openai_row["configured"],
            &openai_row["reachable"],
            &openai_row["source"]
        ),
        (
            &json!(true),
            &json!(true),
            &json!("key from $OPENAI_API_KEY")
        )
    );

    // The first model answers, streamed.
    let (code, out, err) = run(&["provider", "chat", "What is the capital of France?"])
        .await
        .expect("join");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "The capital of France is Paris.");
    assert!(err.contains("(openai:gpt-4o-mini"), "{err}");

    // The first model now fails: the chain's next one answers; the ledger has both.
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(
            ResponseTemplate::new(500)
                .set_body_string(r#"{"error":{"message":"upstream exploded"}}"#),
        )
        .mount(&openai)
        .await;
    let (code, out, err) = run(&["provider", "chat", "What is the capital of France?"])
        .await
        .expect("join");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Paris"), "{out}");
    assert!(
        err.contains("openai:gpt-4o-mini failed: HTTP 500: upstream exploded"),
        "{err}"
    );
    assert!(err.contains("(ollama:llama3.2:latest"), "{err}");

    let (code, out, err) = run(&["provider", "costs", "--json"]).await.expect("join");
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("json");
    let rows = v["rows"].as_array().expect("rows");
    let row = |p: &str| rows.iter().find(|r| r["provider"] == p).cloned().expect(p);
    assert_eq!(
        (&row("openai")["calls"], &row("openai")["failures"]),
        (&json!(2), &json!(1))
    );
    assert_eq!(
        (&row("ollama")["calls"], &row("ollama")["failures"]),
        (&json!(1), &json!(0))
    );
    assert!(row("openai")["cost_usd"].as_f64().expect("cost") > 0.0);
    for text in [out, err] {
        assert!(!text.contains(KEY));
    }

    let (code, _, err) = run(&["provider", "chat", "-m", "gpt-4o", "hi"])
        .await
        .expect("join");
    assert_eq!(code, 2, "a bad model name is bad input");
    assert!(err.contains("provider:model"), "{err}");
}

/// Whether pip can fetch the local models (required in CI; elsewhere a test skips without it).
/// A recorded provider response (`crates/lotus-providers/tests/fixtures`).
fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../lotus-providers/tests/fixtures")
            .join(name),
    )
    .expect("fixture")
}

/// Whether python3 can import `module` (required in CI; elsewhere the check is skipped).
fn python_has(module: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs the Python package `{module}`: pip install -r tests/python/requirements.txt"
        );
        eprintln!("skipping the {module} client: pip install -r tests/python/requirements.txt");
    }
    ok
}

fn pip_works() -> bool {
    let ok = Command::new("python3")
        .args(["-m", "pip", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs pip for the local model"
        );
        eprintln!("skipping: pip is not available");
    }
    ok
}

/// The provider settings a developer's environment may hold, so a test sees nothing configured.
const PROVIDER_VARS: [&str; 6] = [
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "OPENROUTER_API_KEY",
    "OLLAMA_HOST",
];

/// `lotus` on `home` with no provider configured.
fn lotus_unconfigured(home: &Path) -> Command {
    let mut c = lotus(home);
    for var in PROVIDER_VARS {
        c.env_remove(var);
    }
    c
}

/// The zero-configuration promise: no key, no server — `lotus provider chat` fetches the local
/// model once (pip, checksum, conversion) and answers.
#[test]
fn with_nothing_configured_the_local_model_is_pulled_and_answers() {
    if !pip_works() {
        return;
    }
    let home = tempfile::tempdir().expect("tempdir");
    let out = lotus_unconfigured(home.path())
        .args([
            "provider",
            "chat",
            "--max-tokens",
            "40",
            "What is the capital of France?",
        ])
        .output()
        .expect("run lotus");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("fetching the local model once"), "{stderr}");
    assert!(stdout.contains("Paris"), "{stdout}");
    assert!(stderr.contains("(local:smollm2"), "{stderr}");
    let (code, out, err) = run(home.path(), &["model", "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v[0]["name"], "smollm2");
    assert_eq!(v[0]["installed"], true);
}

/// Offline, with nothing configured: one `lotus ask` process is told a preference, a new one is
/// asked about it and answers from memory, with the real local models.
#[test]
fn ask_remembers_across_processes_with_the_local_model() {
    if !pip_works() {
        return;
    }
    let home = tempfile::tempdir().expect("tempdir");
    let ask = |args: &[&str]| {
        let out = lotus_unconfigured(home.path())
            .arg("ask")
            .args(args)
            .output()
            .expect("run lotus");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, err) = ask(&["Remember that my favourite editor is Helix."]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("remembered"), "{err}");
    let (code, out, err) = ask(&["--json", "What is my favourite editor?"]);
    assert_eq!(code, Some(0), "{err}");
    let r: Value = serde_json::from_str(&out).expect("json");
    assert!(r["text"].as_str().expect("text").contains("Helix"), "{r}");
    assert_eq!(r["models"], json!(["local:smollm2"]));
    assert!(r["memories"].as_u64().expect("memories") >= 1, "{r}");

    // `lotus chat` in the same home: a session, its commands, and a bad one that does not end it.
    let mut child = lotus_unconfigured(home.path())
        .arg("chat")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("chat");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(
                b"What is my favourite editor?\nWhich editor do I like?\n/bogus\n/cost\n/memory editor\n/history\n/exit\n",
            )
            .expect("write");
    }
    let out = child.wait_with_output().expect("chat ends");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("Helix"), "{stdout}");
    assert!(stdout.contains("2 tasks ·"), "{stdout}");
    // Leaving saved the conversation's summary to memory.
    assert!(stderr.contains("summary is in memory"), "{stderr}");
    assert!(
        stdout.contains("1. my favourite editor is Helix"),
        "{stdout}"
    );
    assert!(
        stdout.contains("user: What is my favourite editor?"),
        "{stdout}"
    );
    assert!(stderr.contains("unknown command /bogus"), "{stderr}");

    let (code, out, err) = run(
        home.path(),
        &[
            "memory",
            "recall",
            "--json",
            "--kind",
            "summary",
            "favourite editor",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let hits: Value = serde_json::from_str(&out).expect("json");
    let summary = &hits[0]["memory"];
    assert_eq!(summary["kind"], "summary", "{hits}");
    assert!(
        summary["text"]
            .as_str()
            .expect("text")
            .starts_with("Conversation of"),
        "{summary}"
    );
    assert_eq!(summary["metadata"]["turns"], 4, "{summary}");

    let (code, _, err) = ask(&["  "]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("say what to ask"), "{err}");
    let (code, _, err) = ask(&["-m", "anthropic:claude-sonnet-4", "hi"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("cannot be used"), "{err}");

    // Through a running nucleus: the task goes over its bus, the answer comes back on its event
    // stream.
    // Empty values count as unset (an empty OLLAMA_HOST would not: it is left as it is).
    let no_keys: Vec<(&str, &str)> = PROVIDER_VARS[..5].iter().map(|v| (*v, "")).collect();
    let mut up = Up::start_in(home, &no_keys);
    let (code, out, err) = run(
        up.home.path(),
        &["ask", "--json", "What is my favourite editor?"],
    );
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).expect("json");
    assert!(r["text"].as_str().expect("text").contains("Helix"), "{r}");
    let (code, err) = up.stop();
    assert_eq!(code, 0, "{err}");
}

/// An OpenAI stand-in that answers "The capital of France is Paris." (streamed) to a request
/// bearing `key`, and to no other.
async fn openai_wanting_key(key: &str) -> wiremock::MockServer {
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let openai = MockServer::start().await;
    let sse = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../lotus-providers/tests/fixtures/openai-text.sse"),
    )
    .expect("fixture");
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(header("authorization", format!("Bearer {key}").as_str()))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "text/event-stream")
                .set_body_string(sse),
        )
        .mount(&openai)
        .await;
    openai
}

/// Runs `lotus ARGS` on a blocking thread in `home`, with no provider configured but by `env`,
/// the local model off, `LOTUS_KEYS_PASSPHRASE` set to `pass` (or unset) and `stdin` piped in.
fn lotus_keyed(
    home: &Path,
    args: &[&str],
    pass: Option<&str>,
    stdin: Option<&str>,
    env: &[(&str, &str)],
) -> tokio::task::JoinHandle<(i32, String, String)> {
    use std::io::Write as _;
    let mut c = lotus_unconfigured(home);
    c.env_remove("LOTUS_KEYS_PASSPHRASE");
    if let Some(p) = pass {
        c.env("LOTUS_KEYS_PASSPHRASE", p);
    }
    c.envs(env.iter().copied())
        .env("LOTUS_PROVIDERS__LOCAL__ENABLED", "false")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let stdin = stdin.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let mut child = c.spawn().expect("spawn lotus");
        let mut input = child.stdin.take().expect("stdin");
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).expect("write stdin");
        }
        drop(input);
        let out = child.wait_with_output().expect("wait");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
}

/// Asserts that no file under `dir` holds `secret` in the clear.
fn assert_nowhere_in_clear(dir: &Path, secret: &str) {
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("dir") {
            let p = entry.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).expect("read");
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{} holds the secret in the clear",
                    p.display()
                );
            }
        }
    }
}

/// `lotus key`: a key stored encrypted reaches its provider; no file in the home holds it in
/// the clear; a wrong or missing passphrase is said plainly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_key_reaches_its_provider_and_no_plain_file() {
    const KEY: &str = "sk-proj-STORED-KEY-9f8e7d6c5b4a";
    let openai = openai_wanting_key(KEY).await;
    let home = tempfile::tempdir().expect("tempdir");
    let base = format!("{}/v1", openai.uri());
    let env = [("OPENAI_BASE_URL", base.as_str())];
    let run = |args: Vec<&str>, pass: Option<&str>, stdin: Option<String>| {
        lotus_keyed(home.path(), &args, pass, stdin.as_deref(), &env)
    };

    // Without a passphrase and no terminal to ask on, nothing is created.
    let (code, _, err) = run(vec!["key", "set", "openai"], None, Some(format!("{KEY}\n")))
        .await
        .expect("join");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("LOTUS_KEYS_PASSPHRASE"), "{err}");
    assert!(!home.path().join("keys.enc").exists());
    let (code, _, err) = run(vec!["key", "set", "opneai"], Some("pw"), Some(KEY.into()))
        .await
        .expect("join");
    assert_eq!(code, 2);
    assert!(
        err.contains("openai, anthropic, gemini, openrouter"),
        "{err}"
    );

    let (code, out, err) = run(
        vec!["key", "set", "openai"],
        Some("pw"),
        Some(format!("{KEY}\n")),
    )
    .await
    .expect("join");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("stored the key for openai"), "{out}");
    let (code, out, err) = run(vec!["key", "list", "--json"], Some("pw"), None)
        .await
        .expect("join");
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v[0]["name"], "openai");
    assert_eq!(v[0]["fingerprint"].as_str().expect("fingerprint").len(), 12);

    let (code, out, err) = run(vec!["provider", "list", "--json"], Some("pw"), None)
        .await
        .expect("join");
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["providers"][0]["source"], "key from the encrypted store");
    let (code, out, err) = run(
        vec!["provider", "chat", "Capital of France?"],
        Some("pw"),
        None,
    )
    .await
    .expect("join");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "The capital of France is Paris.");

    // Locked (no passphrase): the keys are not used, and the note says why.
    let (code, _, err) = run(vec!["provider", "chat", "hi"], None, None)
        .await
        .expect("join");
    assert_ne!(code, 0);
    assert!(
        err.contains("locked") && err.contains("LOTUS_KEYS_PASSPHRASE"),
        "{err}"
    );
    // A wrong passphrase is an error, and the store is unchanged.
    let before = std::fs::read(home.path().join("keys.enc")).expect("read");
    let (code, _, err) = run(vec!["provider", "list"], Some("nope"), None)
        .await
        .expect("join");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("wrong passphrase"), "{err}");
    assert_eq!(
        std::fs::read(home.path().join("keys.enc")).expect("read"),
        before
    );

    // No file anywhere in the home (ledger, logs, config) holds the key in the clear.
    assert_nowhere_in_clear(home.path(), KEY);

    let (code, _, err) = run(vec!["key", "passphrase"], Some("pw"), None)
        .await
        .expect("join");
    assert_eq!(code, 2, "a new passphrase is needed: {err}");
    assert!(err.contains("LOTUS_KEYS_NEW_PASSPHRASE"), "{err}");
    let (code, out, err) = run(vec!["key", "remove", "openai"], Some("pw"), None)
        .await
        .expect("join");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("removed"), "{out}");
    let (code, _, err) = run(vec!["key", "remove", "openai"], Some("pw"), None)
        .await
        .expect("join");
    assert_eq!(code, 4, "{err}");
}

/// Copies the test copy of a local model into `home` (so each test need not fetch it).
fn install_test_model(home: &Path, name: &str) -> bool {
    let Some(models) = lotus_local::testkit::models(&[name]) else {
        return false;
    };
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for e in std::fs::read_dir(from).expect("read_dir") {
            let e = e.expect("entry");
            let target = to.join(e.file_name());
            if e.path().is_dir() {
                copy(&e.path(), &target);
            } else {
                std::fs::copy(e.path(), &target).expect("copy");
            }
        }
    }
    copy(&models.join(name), &home.join("models").join(name));
    true
}

/// The memory issue's scenario from the command line: remembered, recalled first after a
/// restart, superseded through a running nucleus, forgotten everywhere.
#[test]
fn memory_remembers_supersedes_and_forgets_from_the_cli() {
    let home = tempfile::tempdir().expect("tempdir");
    if !install_test_model(home.path(), "minilm") {
        return;
    }
    let json = |out: &str| serde_json::from_str::<Value>(out).expect("json");
    for text in [
        "I drink green tea every morning",
        "my favourite editor is Helix",
        "the deploy key rotates every 90 days",
    ] {
        let (code, out, err) = run(home.path(), &["memory", "remember", text]);
        assert_eq!(code, 0, "{err}");
        assert!(out.starts_with("remembered "), "{out}");
    }
    // Each command is its own process: recall after a "restart".
    let (code, out, err) = run(
        home.path(),
        &["memory", "recall", "which editor do I like?", "--json"],
    );
    assert_eq!(code, 0, "{err}");
    let hits = json(&out);
    assert_eq!(hits[0]["memory"]["text"], "my favourite editor is Helix");

    // Through a running nucleus: the newer value supersedes the old one.
    let mut up = Up::start_in(home, &[]);
    let (code, out, err) = run(
        up.path(),
        &["memory", "remember", "my favourite editor is now Zed"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("supersedes: my favourite editor is Helix"),
        "{out}"
    );
    let (code, out, err) = run(up.path(), &["memory", "recall", "which editor do I like?"]);
    assert_eq!(code, 0, "{err}");
    let first = out.lines().next().unwrap_or_default();
    assert_eq!(first, "1. my favourite editor is now Zed", "{out}");
    assert!(
        out.contains("superseded: my favourite editor is Helix"),
        "{out}"
    );
    let (code, _, err) = run(up.path(), &["memory", "recall", "x", "-k", "0"]);
    assert_eq!(code, 2, "{err}");
    let (code, _) = up.stop();
    assert_eq!(code, 0);

    // Forgotten: no tier returns it, superseded values included.
    let (code, out, err) = run(
        up.path(),
        &[
            "memory",
            "forget",
            "--subject",
            "user",
            "--attribute",
            "favourite editor",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("forgot 2 memories"), "{out}");
    let (code, out, err) = run(
        up.path(),
        &[
            "memory",
            "recall",
            "which editor do I like?",
            "--all",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("editor is"), "{out}");
    let (code, out, err) = run(up.path(), &["memory", "export"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2);
    assert!(!out.contains("Helix") && !out.contains("Zed"), "{out}");
    let (code, out, _) = run(up.path(), &["memory", "stats", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(json(&out)["memories"], 2);

    // The profile: set, shown, a key removed, a bad key named.
    for (k, v) in [
        ("name", "Ada"),
        ("timezone", "Europe/Lisbon"),
        ("age", "36"),
    ] {
        let (code, _, err) = run(up.path(), &["memory", "profile", k, v]);
        assert_eq!(code, 0, "{err}");
    }
    let (code, _, err) = run(up.path(), &["memory", "profile", "age", "--unset"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(up.path(), &["memory", "profile", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        json(&out),
        json!({"name": "Ada", "timezone": "Europe/Lisbon"})
    );
    let (code, out, _) = run(up.path(), &["memory", "profile"]);
    assert_eq!(code, 0);
    assert!(out.contains("name      Ada"), "{out}");
    let (code, _, err) = run(up.path(), &["memory", "profile", "   ", "x"]);
    assert_ne!(code, 0);
    assert!(err.contains("not a profile key"), "{err}");
    let (code, _, err) = run(up.path(), &["memory", "profile", "name"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--unset"), "{err}");
    // A bare `null` does not quietly remove the key.
    let (code, _, err) = run(up.path(), &["memory", "profile", "name", "null"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--unset"), "{err}");
    let (_, out, _) = run(up.path(), &["memory", "profile"]);
    assert!(out.contains("name      Ada"), "{out}");
    // `--deny` needs the call it denies.
    let (code, _, err) = run(up.path(), &["approve", "--deny"]);
    assert_eq!(code, 2, "{err}");
}

/// A dangerous call waits for a human: `lotus ask` (no terminal) says how to answer, another
/// process lists the call with `lotus approve` and denies it; the tool never runs, the model
/// is told why, and what it would have forgotten is still remembered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dangerous_call_waits_for_lotus_approve() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    let home = tempfile::tempdir().expect("tempdir");
    if !install_test_model(home.path(), "minilm") {
        return;
    }
    let openai = MockServer::start().await;
    // First the model asks to forget everything about Paris, then it answers.
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "text/event-stream")
                .set_body_string(
                    fixture("openai-tool.sse")
                        .replace("get_weather", "memory__forget")
                        .replace("\"city\"", "\"subject\""),
                ),
        )
        .up_to_n_times(1)
        .mount(&openai)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "text/event-stream")
                .set_body_string(fixture("openai-text.sse")),
        )
        .mount(&openai)
        .await;
    let (code, _, err) = run(
        home.path(),
        &[
            "memory",
            "remember",
            "--subject",
            "paris",
            "I was born in Paris",
        ],
    );
    assert_eq!(code, 0, "{err}");

    let url = format!("{}/v1", openai.uri());
    let mut env: Vec<(&str, &str)> = PROVIDER_VARS[1..5].iter().map(|v| (*v, "")).collect();
    env.extend([
        ("OPENAI_API_KEY", "sk-test-approve-000"),
        ("OPENAI_BASE_URL", url.as_str()),
        ("LOTUS_PROVIDERS__RETRIES", "0"),
    ]);
    // Up waits with a blocking HTTP client: off the runtime's own threads.
    let mut up = tokio::task::block_in_place(|| Up::start_in(home, &env));
    let ask = lotus(up.path())
        .args(["ask", "Forget everything about Paris."])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ask");

    // Another terminal: the call waits, with its tool and arguments.
    let t0 = Instant::now();
    let waiting = loop {
        let (code, out, err) = run(up.path(), &["approve", "--json"]);
        assert_eq!(code, 0, "{err}");
        let v: Value = serde_json::from_str(&out).expect("json");
        if let Some(w) = v.as_array().and_then(|a| a.first()) {
            break w.clone();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no approval was asked"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(waiting["tool"], "memory.forget");
    assert_eq!(waiting["arguments"], json!({"subject": "Paris"}));
    let (code, _, err) = run(up.path(), &["approve", "not-an-id"]);
    assert_ne!(code, 0);
    assert!(err.contains("not an approval id"), "{err}");
    let id = waiting["id"].as_str().expect("id");
    let (code, out, err) = run(up.path(), &["approve", id, "--deny", "--reason", "keep it"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Denied: memory.forget"), "{out}");
    let (code, _, err) = run(up.path(), &["approve", id]);
    assert_ne!(code, 0, "answered once only");
    assert!(err.contains("answered already"), "{err}");

    let out = ask.wait_with_output().expect("ask ends");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("lotus approve {id}")), "{stderr}");
    assert!(
        stderr.contains("memory.forget not run") && stderr.contains("keep it"),
        "{stderr}"
    );
    assert!(stdout.contains("Paris"), "{stdout}");
    // The model was told why.
    let told = openai.received_requests().await.expect("requests");
    let last: Value = serde_json::from_slice(&told.last().expect("a request").body).expect("json");
    assert!(last.to_string().contains("keep it"), "{last}");
    // Nothing was forgotten.
    let (code, out, err) = run(up.path(), &["memory", "recall", "where was I born"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("I was born in Paris"), "{out}");
    let (code, err) = up.stop();
    assert_eq!(code, 0, "{err}");
}

/// `lotus provider set`: a provider's base URL, model and key kept in L4 (`provider_configs`),
/// the key sealed with the key store's passphrase, reach the provider; no file holds the key in
/// the clear; bad input is refused; a locked store is said plainly; `unset` removes it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_configuration_stored_in_l4_reaches_its_provider() {
    const KEY: &str = "sk-proj-L4-SEALED-KEY-0a1b2c3d4e";
    let openai = openai_wanting_key(KEY).await;
    let home = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str], pass: Option<&str>, stdin: Option<String>| {
        lotus_keyed(home.path(), args, pass, stdin.as_deref(), &[])
    };
    let openai_row = |out: &str| -> Value {
        let v: Value = serde_json::from_str(out).expect("json");
        v["providers"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == "openai").cloned())
            .expect("openai listed")
    };

    // Bad input is refused and stores nothing.
    for (args, want) in [
        (vec!["provider", "set", "opneai", "--key"], "not a provider"),
        (vec!["provider", "set", "ollama", "--key"], "no API key"),
        (vec!["provider", "set", "openai"], "nothing to store"),
        (
            vec!["provider", "set", "openai", "--base-url", "ftp://x"],
            "not an http",
        ),
    ] {
        let (code, _, err) = run(&args, Some("pw"), Some(format!("{KEY}\n")))
            .await
            .expect("join");
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }

    // Listing reads L4 only where there is one: a fresh home gets no database from it.
    let (code, _, err) = run(&["provider", "list", "--offline"], None, None)
        .await
        .expect("join");
    assert_eq!(code, 0, "{err}");
    assert!(!home.path().join("data/memory/memory.db").exists());

    let base = format!("{}/v1", openai.uri());
    let (code, out, err) = run(
        &[
            "provider",
            "set",
            "openai",
            "--base-url",
            &base,
            "--model",
            "gpt-4o-mini",
            "--key",
        ],
        Some("pw"),
        Some(format!("{KEY}\n")),
    )
    .await
    .expect("join");
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("model = \"gpt-4o-mini\"") && out.contains("the key (sealed)"),
        "{out}"
    );
    let (code, out, err) = run(
        &["provider", "list", "--json", "--offline"],
        Some("pw"),
        None,
    )
    .await
    .expect("join");
    assert_eq!(code, 0, "{err}");
    let row = openai_row(&out);
    assert_eq!(row["source"], "key from provider_configs", "{row}");
    assert_eq!(row["base_url"], base.as_str());
    assert_eq!(row["model"], "gpt-4o-mini");
    let (code, out, err) = run(
        &["provider", "chat", "Capital of France?"],
        Some("pw"),
        None,
    )
    .await
    .expect("join");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "The capital of France is Paris.");

    // No file of the home holds the key in the clear (the database, its log, the key store).
    assert!(home.path().join("data/memory/memory.db").exists());
    assert_nowhere_in_clear(home.path(), KEY);

    // Changing the model keeps the sealed key.
    let (code, _, err) = run(
        &["provider", "set", "openai", "--model", "gpt-4.1"],
        Some("pw"),
        None,
    )
    .await
    .expect("join");
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = run(
        &["provider", "list", "--json", "--offline"],
        Some("pw"),
        None,
    )
    .await
    .expect("join");
    let row = openai_row(&out);
    assert_eq!(
        (row["model"].as_str(), row["source"].as_str()),
        (Some("gpt-4.1"), Some("key from provider_configs"))
    );

    // Locked: the key is not used, and the note says how to unlock it.
    let (code, out, err) = run(&["provider", "list", "--json", "--offline"], None, None)
        .await
        .expect("join");
    assert_eq!(code, 0, "{err}");
    assert_eq!(openai_row(&out)["configured"], false);
    assert!(err.contains("LOTUS_KEYS_PASSPHRASE"), "{err}");

    let (code, _, err) = run(&["provider", "unset", "openai"], None, None)
        .await
        .expect("join");
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&["provider", "unset", "openai"], None, None)
        .await
        .expect("join");
    assert_eq!(code, 4, "{err}");
    let (_, out, _) = run(
        &["provider", "list", "--json", "--offline"],
        Some("pw"),
        None,
    )
    .await
    .expect("join");
    let row = openai_row(&out);
    assert_eq!(row["configured"], false, "{row}");
    assert_ne!(row["base_url"], base.as_str());
}
