//! The API end to end against a real `lotus up`: every endpoint with and without the token and
//! with bad bodies, chat and the OpenAI API with a scripted provider (also through the official
//! `openai` Python package), and the dashboard in a real Chromium.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use super::{Up, install_test_model, openai_wanting_key, python_has, run};

/// `lotus up` in `home` with `env`, started off the async runtime.
async fn up_with(home: tempfile::TempDir, env: Vec<(String, String)>) -> Up {
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Up::start_in(home, &env)
    })
    .await
    .expect("join")
}

/// Stops `up` (it must exit 0) and starts a nucleus on the same home.
async fn restart(mut up: Up) -> Up {
    let home = tokio::task::spawn_blocking(move || {
        let (code, err) = up.stop();
        assert_eq!(code, 0, "{err}");
        std::mem::replace(&mut up.home, tempfile::tempdir().expect("tempdir"))
    })
    .await
    .expect("join");
    up_with(home, vec![]).await
}

/// An HTTP client of one nucleus, with its token.
struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    fn of(up: &Up) -> Self {
        Self {
            base: up.url(""),
            token: up.token(),
            http: reqwest::Client::new(),
        }
    }

    async fn send(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let mut req = self
            .http
            .request(
                method.parse().expect("method"),
                format!("{}{path}", self.base),
            )
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_owned());
        }
        let resp = req.send().await.expect("send");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send("GET", path, None).await
    }

    async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        self.send("POST", path, Some(body)).await
    }

    /// POSTs and reads the whole answer as Server-Sent Events: `(event name, data)`.
    async fn events(&self, path: &str, body: &str) -> Vec<(String, String)> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 200);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .expect("ascii")
                .starts_with("text/event-stream")
        );
        let text = resp.text().await.expect("body");
        text.split("\n\n")
            .filter(|f| !f.trim().is_empty())
            .map(|frame| {
                let mut name = String::from("message");
                let mut data = String::new();
                for line in frame.lines() {
                    if let Some(n) = line.strip_prefix("event:") {
                        name = n.trim().to_owned();
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.trim_start());
                    }
                }
                (name, data)
            })
            .collect()
    }
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("(no error code)")
}

/// The key the scripted OpenAI stand-in wants.
const KEY: &str = "sk-test-api-000";

/// An OpenAI stand-in that answers every chat "The capital of France is Paris." (streamed, with
/// usage) and lists no models.
async fn scripted_openai() -> wiremock::MockServer {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, ResponseTemplate};
    let openai = openai_wanting_key(KEY).await;
    Mock::given(method("GET"))
        .and(path("/v1/models"))
        .respond_with(ResponseTemplate::new(200).set_body_string(r#"{"object":"list","data":[]}"#))
        .mount(&openai)
        .await;
    openai
}

/// The environment of a `lotus up` whose only provider is `openai`.
fn scripted_env(openai: &wiremock::MockServer) -> Vec<(String, String)> {
    [
        ("OPENAI_API_KEY", KEY),
        ("OPENAI_BASE_URL", &format!("{}/v1", openai.uri())),
        // The local models stay (memory embeds with them); the chain is the stand-in alone.
        ("LOTUS_PROVIDERS__DEFAULT", "[\"openai:gpt-4o-mini\"]"),
        ("LOTUS_PROVIDERS__RETRIES", "0"),
        ("ANTHROPIC_API_KEY", ""),
        ("GEMINI_API_KEY", ""),
        ("GOOGLE_API_KEY", ""),
        ("OPENROUTER_API_KEY", ""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_endpoint_but_health_needs_the_token() {
    let up = up_with(tempfile::tempdir().expect("tempdir"), vec![]).await;
    let api = Api::of(&up);
    let http = reqwest::Client::new();

    let r = http
        .get(up.url("/api/v1/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(r.status(), 200);
    let r = http
        .get(up.url("/api/openapi.json"))
        .send()
        .await
        .expect("openapi");
    assert_eq!(r.status(), 401);

    let (status, doc) = api.get("/api/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 29, "{:?}", paths.keys());
    let mut checked = 0;
    for (path, ops) in paths {
        let concrete = path
            .replace("{name}", "echo")
            .replace("{stream}", "action_log");
        for method in ops.as_object().expect("operations").keys() {
            let open = path == "/api/v1/health";
            for token in [None, Some("wrong-token")] {
                let mut req = http.request(
                    method.to_uppercase().parse().expect("method"),
                    up.url(&concrete),
                );
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                let r = req.send().await.expect("send");
                let status = r.status().as_u16();
                if open {
                    assert_eq!(status, 200, "{method} {path}");
                    continue;
                }
                assert_eq!(status, 401, "{method} {path} without the right token");
                let v: Value = r.json().await.expect("json error");
                assert_eq!(code(&v), "unauthorized", "{method} {path}: {v}");
                checked += 1;
            }
            // Each operation names its responses and says it needs the bearer token (but health).
            let op = &ops[method];
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{path}"
            );
            if !open {
                assert_ne!(op["security"], json!([{}]), "{method} {path}");
            }
        }
    }
    assert!(checked >= 56, "{checked}");
    assert!(doc["components"]["schemas"]["ModuleInfo"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test(flavor = "multi_thread")]
async fn modules_are_switched_reloaded_rolled_back_and_show_their_logs() {
    let up = up_with(tempfile::tempdir().expect("tempdir"), vec![]).await;
    let api = Api::of(&up);

    let (status, mods) = api.get("/api/v1/modules").await;
    assert_eq!(status, 200);
    assert!(
        mods.as_array()
            .expect("array")
            .iter()
            .any(|m| m["name"] == "echo" && m["state"] == "running")
    );
    let (status, v) = api.get("/api/v1/modules/nope").await;
    assert_eq!((status, code(&v)), (404, "not_found"));

    let (status, v) = api.post("/api/v1/modules/echo/reload", "").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["to_version"], "0.1.0");

    // Off: its tool is gone; it stays off across a restart.
    let (status, v) = api.post("/api/v1/modules/echo/disable", "").await;
    assert_eq!((status, &v["state"]), (200, &json!("disabled")), "{v}");
    let (status, v) = api
        .post("/api/v1/tools/echo.echo/call", r#"{"text":"hi"}"#)
        .await;
    assert_eq!((status, code(&v)), (503, "unavailable"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("message")
            .contains("disabled")
    );
    let (status, v) = api.post("/api/v1/modules/nope/disable", "").await;
    assert_eq!((status, code(&v)), (404, "not_found"));

    let up = restart(up).await;
    let api = Api::of(&up);
    let (_, v) = api.get("/api/v1/modules/echo").await;
    assert_eq!(v["state"], "disabled", "still off after a restart: {v}");
    let (status, v) = api.post("/api/v1/modules/echo/enable", "").await;
    assert_eq!((status, &v["state"]), (200, &json!("running")), "{v}");
    let (status, v) = api
        .post("/api/v1/tools/echo.echo/call", r#"{"text":"back"}"#)
        .await;
    assert_eq!((status, &v["result"]["text"]), (200, &json!("back")));
    let (code_, out, err) = run(up.path(), &["module", "disable", "echo"]);
    assert_eq!(code_, 0, "{err}");
    assert!(out.contains("echo is disabled"), "{out}");
    let (code_, out, err) = run(up.path(), &["module", "enable", "echo"]);
    assert_eq!(code_, 0, "{err}");
    assert!(out.contains("echo is running"), "{out}");

    // The logs hold what the nucleus said about it.
    let (status, logs) = api.get("/api/v1/modules/echo/logs?limit=50").await;
    assert_eq!(status, 200);
    let messages: Vec<&str> = logs
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|l| l["message"].as_str())
        .collect();
    assert!(messages.contains(&"enabled"), "{messages:?}");
    assert!(messages.contains(&"disabled"), "{messages:?}");
    assert!(logs[0]["time"].is_string() && logs[0]["level"].is_string());
    let (status, v) = api.get("/api/v1/modules/echo/logs?limit=1").await;
    assert_eq!((status, v.as_array().map(Vec::len)), (200, Some(1)));
    let (status, v) = api.get("/api/v1/modules/echo/logs?limit=many").await;
    assert_eq!((status, code(&v)), (400, "bad_request"), "{v}");
    let (status, v) = api.get("/api/v1/modules/nope/logs").await;
    assert_eq!((status, code(&v)), (404, "not_found"));

    // A built-in module has no versions to go back to; bad bodies are named.
    let (status, v) = api.post("/api/v1/modules/echo/rollback", "").await;
    assert_eq!((status, code(&v)), (404, "not_found"), "{v}");
    let (status, v) = api
        .post("/api/v1/modules/echo/rollback", r#"{"to": 5}"#)
        .await;
    assert_eq!((status, code(&v)), (400, "invalid_json"), "{v}");
    let (status, v) = api
        .post("/api/v1/modules/echo/rollback", r#"{"two": "1"}"#)
        .await;
    assert_eq!((status, code(&v)), (400, "invalid_json"), "{v}");

    let (status, v) = api.post("/api/v1/modules/echo/load", "").await;
    assert_eq!((status, code(&v)), (409, "already_loaded"), "{v}");
    let (status, v) = api.post("/api/v1/modules/echo/remove", "").await;
    assert_eq!((status, &v["removed"]), (200, &json!("echo")));
    let (status, v) = api.post("/api/v1/modules/echo/load", "").await;
    assert_eq!(
        (status, code(&v)),
        (409, "refused"),
        "a built-in has no folder: {v}"
    );
    let (status, v) = api.send("DELETE", "/api/v1/modules/heartbeat", None).await;
    assert_eq!((status, code(&v)), (405, "method_not_allowed"));
}

/// A WebSocket request to the live event stream, with `protocols` and `origin`.
fn ws_request(
    up: &Up,
    query: &str,
    protocols: Option<&str>,
    origin: Option<&str>,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("ws://{}/api/v1/events/ws{query}", up.addr);
    let mut req = url.into_client_request().expect("request");
    if let Some(p) = protocols {
        req.headers_mut()
            .insert("sec-websocket-protocol", p.parse().expect("header"));
    }
    if let Some(o) = origin {
        req.headers_mut()
            .insert("origin", o.parse().expect("header"));
    }
    req
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text message of `ws` as JSON (within 10 s).
async fn recv_json(ws: &mut Socket) -> Value {
    use futures_util::StreamExt;
    loop {
        let m = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("open")
            .expect("message");
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
            return serde_json::from_str(&t).expect("json");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn live_events_over_a_websocket_follow_the_filter() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let up = up_with(tempfile::tempdir().expect("tempdir"), vec![]).await;
    let api = Api::of(&up);
    let token = up.token();

    // The browser's way: the token as a subprotocol; the server answers `lotus.v1`.
    let (mut ws, resp) = tokio_tungstenite::connect_async(ws_request(
        &up,
        "?pattern=test.*",
        Some(&format!("lotus.v1, bearer.{token}")),
        Some(&up.url("")),
    ))
    .await
    .expect("connect");
    assert_eq!(resp.headers()["sec-websocket-protocol"], "lotus.v1");
    let first = recv_json(&mut ws).await;
    assert_eq!(first, json!({"type": "subscribed", "patterns": ["test.*"]}));
    let (status, _) = api
        .post("/api/v1/events", r#"{"topic":"other.x","payload":1}"#)
        .await;
    assert_eq!(status, 202);
    let (status, _) = api
        .post("/api/v1/events", r#"{"topic":"test.ws","payload":{"n":2}}"#)
        .await;
    assert_eq!(status, 202);
    let ev = recv_json(&mut ws).await;
    assert_eq!(ev["type"], "event");
    assert_eq!(
        (
            &ev["event"]["topic"],
            &ev["event"]["payload"],
            &ev["event"]["source"]
        ),
        (&json!("test.ws"), &json!({"n": 2}), &json!("api")),
        "the filter kept other.x out"
    );

    // The filter changes on the same socket; a bad one is refused and the old one stays.
    ws.send(Message::Text(r#"{"pattern":"a..b"}"#.into()))
        .await
        .expect("send");
    let err = recv_json(&mut ws).await;
    assert_eq!(
        (&err["type"], &err["error"]["code"]),
        (&json!("error"), &json!("invalid_pattern")),
        "{err}"
    );
    ws.send(Message::Text("not json".into()))
        .await
        .expect("send");
    ws.send(Message::Text(r#"{"pattern":"other.>"}"#.into()))
        .await
        .expect("send");
    let seen = [recv_json(&mut ws).await, recv_json(&mut ws).await];
    assert_eq!(seen[0]["error"]["code"], "invalid_json", "{seen:?}");
    assert_eq!(
        seen[1],
        json!({"type": "subscribed", "patterns": ["other.>"]})
    );
    api.post("/api/v1/events", r#"{"topic":"other.y","payload":3}"#)
        .await;
    let v = recv_json(&mut ws).await;
    assert_eq!(v["event"]["topic"], "other.y", "{v}");
    ws.close(None).await.expect("close");

    // No token, a wrong one, another site's page, a bad pattern: refused before the upgrade.
    for (query, protocols, origin, status) in [
        ("", None, None, 401),
        ("", Some("lotus.v1, bearer.wrong".to_owned()), None, 401),
        (
            "",
            Some(format!("lotus.v1, bearer.{token}")),
            Some("http://evil.example"),
            403,
        ),
        (
            "?pattern=a..b",
            Some(format!("lotus.v1, bearer.{token}")),
            None,
            400,
        ),
    ] {
        let e =
            tokio_tungstenite::connect_async(ws_request(&up, query, protocols.as_deref(), origin))
                .await
                .expect_err("refused");
        match e {
            tokio_tungstenite::tungstenite::Error::Http(r) => {
                assert_eq!(
                    r.status().as_u16(),
                    status,
                    "{query} {protocols:?} {origin:?}"
                );
            }
            other => panic!("expected an HTTP refusal, got {other}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_is_remembered_recalled_and_forgotten_over_the_api() {
    let home = tempfile::tempdir().expect("tempdir");
    if !tokio::task::block_in_place(|| install_test_model(home.path(), "minilm")) {
        return;
    }
    let up = up_with(home, vec![]).await;
    let api = Api::of(&up);

    let (status, v) = api
        .post(
            "/api/v1/memory/remember",
            r#"{"text": "my favourite editor is Helix"}"#,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let id = v["memory"]["id"].as_str().expect("id").to_owned();
    api.post(
        "/api/v1/memory/remember",
        r#"{"text": "I drink green tea every morning"}"#,
    )
    .await;
    let (status, hits) = api
        .get("/api/v1/memory/recall?query=which%20editor%20do%20I%20like&k=5")
        .await;
    assert_eq!(status, 200, "{hits}");
    assert_eq!(
        hits[0]["memory"]["text"], "my favourite editor is Helix",
        "{hits}"
    );
    let (status, stats) = api.get("/api/v1/memory/stats").await;
    assert_eq!((status, &stats["memories"]), (200, &json!(2)), "{stats}");

    let (status, v) = api
        .post("/api/v1/memory/forget", &json!({"ids": [id]}).to_string())
        .await;
    assert_eq!(status, 200, "{v}");
    let (_, hits) = api.get("/api/v1/memory/recall?query=editor").await;
    assert!(
        hits.as_array()
            .expect("array")
            .iter()
            .all(|h| h["memory"]["text"] != "my favourite editor is Helix"),
        "{hits}"
    );

    // Bad input is named; nothing stored is touched.
    for (path, body, expect) in [
        ("/api/v1/memory/remember", "{", "invalid_json"),
        (
            "/api/v1/memory/remember",
            r#"{"txt": "x"}"#,
            "invalid_arguments",
        ),
        (
            "/api/v1/memory/forget",
            r#"{"ids": ["not-a-uuid"]}"#,
            "invalid_arguments",
        ),
    ] {
        let (status, v) = api.post(path, body).await;
        assert_eq!((status, code(&v)), (400, expect), "{path} {body}: {v}");
    }
    let (status, v) = api.get("/api/v1/memory/recall").await;
    assert_eq!((status, code(&v)), (400, "bad_request"), "{v}");
    let (status, v) = api.get("/api/v1/memory/recall?query=%20").await;
    assert_eq!((status, code(&v)), (400, "invalid_arguments"), "{v}");
    let (_, stats) = api.get("/api/v1/memory/stats").await;
    assert_eq!(stats["memories"], 1, "{stats}");
}

/// The server-sent events of a chat: the deltas joined, the step kinds, the final response.
fn told(events: &[(String, String)]) -> (String, Vec<String>, Value) {
    let mut text = String::new();
    let mut steps = Vec::new();
    let mut done = Value::Null;
    for (name, data) in events {
        let v: Value = serde_json::from_str(data).expect("json data");
        match name.as_str() {
            "delta" => text.push_str(v["delta"].as_str().expect("delta")),
            "step" => steps.push(v["kind"].as_str().expect("kind").to_owned()),
            "done" => done = v,
            other => panic!("unexpected `{other}`: {data}"),
        }
    }
    (text, steps, done)
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_providers_metrics_and_the_openai_api_answer_with_a_scripted_provider() {
    let openai = scripted_openai().await;
    let home = tempfile::tempdir().expect("tempdir");
    // With the embedding model, memory works as it does for a user (skipped outside CI without it).
    tokio::task::block_in_place(|| install_test_model(home.path(), "minilm"));
    let up = up_with(home, scripted_env(&openai)).await;
    let api = Api::of(&up);

    // Chat, streamed: the steps unfold, the answer comes in pieces, then the response.
    let events = api
        .events(
            "/api/v1/chat",
            r#"{"text": "What is the capital of France?"}"#,
        )
        .await;
    let (text, steps, done) = told(&events);
    assert_eq!(text, "The capital of France is Paris.");
    assert!(
        steps.contains(&"context".to_owned()) && steps.contains(&"model".to_owned()),
        "{steps:?}"
    );
    assert_eq!(done["stopped"], "answer", "{done}");
    assert_eq!(done["usage"]["input_tokens"], 14, "{done}");
    assert_eq!(events.last().map(|e| e.0.as_str()), Some("done"));
    let (status, v) = api
        .post(
            "/api/v1/chat?stream=false",
            r#"{"text": "Again?", "session": "s1"}"#,
        )
        .await;
    assert_eq!(
        (status, &v["text"]),
        (200, &json!("The capital of France is Paris.")),
        "{v}"
    );
    for (body, expect) in [
        ("{", "invalid_json"),
        (r#"{"txt": "x"}"#, "invalid_json"),
        (r#"{"text": "  "}"#, "invalid_arguments"),
        (r#"{"text": "x", "max_steps": -1}"#, "invalid_json"),
    ] {
        let (status, v) = api.post("/api/v1/chat", body).await;
        assert_eq!((status, code(&v)), (400, expect), "{body}: {v}");
    }

    // The CLI asks through the same endpoint.
    let (c, out, err) = run(up.path(), &["ask", "What is the capital of France?"]);
    assert_eq!(c, 0, "{err}");
    assert_eq!(out.trim(), "The capital of France is Paris.");

    // Providers: configured and reachable, a test call, the costs it all ran up.
    let (status, v) = api.get("/api/v1/providers?check=true").await;
    assert_eq!(status, 200);
    let row = v["providers"]
        .as_array()
        .expect("providers")
        .iter()
        .find(|p| p["name"] == "openai")
        .cloned()
        .expect("openai");
    assert_eq!(
        (&row["configured"], &row["reachable"]),
        (&json!(true), &json!(true)),
        "{row}"
    );
    assert_eq!(v["default_chain"], json!(["openai:gpt-4o-mini"]));
    let (status, v) = api.post("/api/v1/providers/openai/test", "").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (&v["model"], &v["text"]),
        (
            &json!("openai:gpt-4o-mini"),
            &json!("The capital of France is Paris.")
        )
    );
    let (status, v) = api.post("/api/v1/providers/anthropic/test", "").await;
    assert_eq!((status, code(&v)), (400, "not_configured"), "{v}");
    let (status, v) = api.post("/api/v1/providers/gpt-4o/test", "").await;
    assert_eq!(
        (status, code(&v)),
        (400, "not_configured"),
        "a model name needs its provider: {v}"
    );
    let (status, costs) = api.get("/api/v1/providers/costs?days=7").await;
    assert_eq!(status, 200);
    let calls: u64 = costs["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["provider"] == "openai")
        .map(|r| r["calls"].as_u64().expect("calls"))
        .sum();
    assert!(calls >= 4, "{costs}");
    assert!(costs["today_usd"].as_f64().expect("today") > 0.0, "{costs}");
    let (status, v) = api.get("/api/v1/providers/costs?days=soon").await;
    assert_eq!((status, code(&v)), (400, "bad_request"));

    // The OpenAI API, answered by ASH.
    let (status, models) = api.get("/v1/models").await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = models["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["ash", "openai:gpt-4o-mini"]);
    let conversation = json!([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "What is the capital of France?"},
    ]);
    let (status, v) = api
        .post(
            "/v1/chat/completions",
            &json!({"model": "ash", "messages": conversation}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "The capital of France is Paris."
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["total_tokens"], 22, "{v}");
    // What the scripted provider was sent: the caller's conversation and instructions.
    let sent: Vec<Value> = openai
        .received_requests()
        .await
        .expect("recorded")
        .iter()
        .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
        .collect();
    let last = sent.last().expect("a request");
    let msgs = last["messages"].as_array().expect("messages");
    assert!(
        msgs[0]["content"]
            .as_str()
            .expect("system")
            .contains("Be brief."),
        "{last}"
    );
    assert_eq!(msgs[1]["content"], "Hi", "{last}");
    assert_eq!(msgs[2]["content"], "Hello!", "{last}");

    let chunks = api
        .events(
            "/v1/chat/completions",
            &json!({"model": "ash", "messages": conversation, "stream": true,
                "stream_options": {"include_usage": true}})
            .to_string(),
        )
        .await;
    assert_eq!(chunks.last().map(|c| c.1.as_str()), Some("[DONE]"));
    let chunks: Vec<Value> = chunks[..chunks.len() - 1]
        .iter()
        .map(|c| serde_json::from_str(&c.1).expect("chunk"))
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, "The capital of France is Paris.");
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop", "{finish}");
    let usage = chunks.last().expect("usage chunk");
    assert_eq!(
        (&usage["choices"], &usage["usage"]["total_tokens"]),
        (&json!([]), &json!(22))
    );
    for (body, expect) in [
        (json!({"model": "ash", "messages": []}), "invalid_arguments"),
        (
            json!({"model": "ash", "messages": [{"role": "assistant", "content": "x"}]}),
            "invalid_arguments",
        ),
        (
            json!({"model": "ash", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}),
            "unsupported",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}]}),
            "invalid_json",
        ),
    ] {
        let (status, v) = api.post("/v1/chat/completions", &body.to_string()).await;
        assert_eq!((status, code(&v)), (400, expect), "{body}: {v}");
    }

    // Models the catalog does not know, and formats ASH does not answer in, are refused first.
    let (status, v) = api.get("/v1/models/ash").await;
    assert_eq!((status, &v["id"]), (200, &json!("ash")));
    let (status, v) = api.get("/v1/models/openai:gpt-4o-mini").await;
    assert_eq!((status, &v["owned_by"]), (200, &json!("openai")), "{v}");
    let (status, v) = api.get("/v1/models/gpt-4o").await;
    assert_eq!((status, code(&v)), (404, "model_not_found"), "{v}");
    let (status, v) = api
        .post(
            "/v1/chat/completions",
            &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}).to_string(),
        )
        .await;
    assert_eq!((status, code(&v)), (404, "model_not_found"), "{v}");
    let (status, v) = api
        .post(
            "/v1/chat/completions",
            &json!({"model": "ash", "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "json_object"}})
            .to_string(),
        )
        .await;
    assert_eq!((status, code(&v)), (400, "unsupported"), "{v}");

    // The official Python client.
    if python_has("openai") {
        let out = Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/openai_client.py"))
            .env("LOTUS_URL", up.url(""))
            .env("LOTUS_TOKEN", up.token())
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "the openai package failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Metrics: the modules, the bus, the requests just made.
    let r = reqwest::Client::new()
        .get(up.url("/metrics"))
        .bearer_auth(up.token())
        .send()
        .await
        .expect("metrics");
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("application/openmetrics-text")
    );
    let text = r.text().await.expect("text");
    for needle in [
        "lotus_module_events_handled_total{module=\"reasoning\"}",
        "lotus_module_state{module=\"echo\",state=\"running\"} 1",
        "lotus_bus_published_total",
        "lotus_http_requests_total{method=\"POST\",route=\"/api/v1/chat\",status=\"200\"}",
        "lotus_http_request_duration_seconds_bucket",
        "lotus_provider_spent_today_usd",
        "# EOF",
    ] {
        assert!(text.contains(needle), "no {needle} in\n{text}");
    }
    let handled = text
        .lines()
        .find(|l| l.starts_with("lotus_module_events_handled_total{module=\"reasoning\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .expect("a value");
    assert!(handled >= 4.0, "{handled}");

    // Without a reasoning module, a chat is refused at once (the recorders still take tasks).
    let (status, _) = api.post("/api/v1/modules/reasoning/disable", "").await;
    assert_eq!(status, 200);
    let t0 = std::time::Instant::now();
    let (status, v) = api.post("/api/v1/chat", r#"{"text": "hello?"}"#).await;
    assert_eq!((status, code(&v)), (503, "unavailable"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("message")
            .contains("reasoning")
    );
    let (status, v) = api
        .post(
            "/v1/chat/completions",
            &json!({"model": "ash", "messages": [{"role": "user", "content": "x"}]}).to_string(),
        )
        .await;
    assert_eq!((status, code(&v)), (503, "unavailable"), "{v}");
    assert!(t0.elapsed() < std::time::Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_is_guarded_cors_limited_and_serves_the_dashboard() {
    // Another machine may reach the API only with a token made on purpose.
    let home = tempfile::tempdir().expect("tempdir");
    let (c, _, err) = run(home.path(), &["up", "--listen", "0.0.0.0:0"]);
    assert_eq!(c, 2, "{err}");
    assert!(err.contains("lotus token --new"), "{err}");
    assert!(!home.path().join("token").exists());
    let (c, first, err) = run(home.path(), &["token"]);
    assert_eq!(c, 0, "{err}");
    assert_eq!(first.trim().len(), 64);
    let (_, again, _) = run(home.path(), &["token"]);
    assert_eq!(first, again);
    let (c, new, err) = run(home.path(), &["token", "--new"]);
    assert_eq!(c, 0, "{err}");
    assert_ne!(new, first);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(home.path().join("token"))
            .expect("token")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let short = super::lotus(home.path())
        .args(["token"])
        .env("LOTUS_API_TOKEN", "short")
        .output()
        .expect("run");
    assert_eq!(short.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 32"));
    let odd = super::lotus(home.path())
        .args(["token"])
        .env("LOTUS_API_TOKEN", "a/b+c=d e".repeat(5))
        .output()
        .expect("run");
    assert_eq!(odd.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&odd.stderr).contains("letters, digits"));

    // Limits and origins from lotus.toml; a bad origin is named.
    std::fs::write(
        home.path().join("lotus.toml"),
        "[api]\ncors_origins = [\"http://localhost:3000/\"]\n",
    )
    .expect("config");
    let (c, _, err) = run(home.path(), &["up", "--listen", "127.0.0.1:0"]);
    assert_eq!(c, 2, "{err}");
    assert!(
        err.contains("`http://localhost:3000/` is not an origin"),
        "{err}"
    );
    std::fs::write(
        home.path().join("lotus.toml"),
        "[api]\ncors_origins = [\"http://LocalHost:3000\"]\nmax_body = 4096\n",
    )
    .expect("config");
    let up = up_with(home, vec![]).await;
    let api = Api::of(&up);
    let http = reqwest::Client::new();

    let (status, v) = api
        .post(
            "/api/v1/tools/echo.echo/call",
            &json!({"text": "x".repeat(5000)}).to_string(),
        )
        .await;
    assert_eq!((status, code(&v)), (413, "payload_too_large"), "{v}");
    let (status, _) = api
        .post(
            "/api/v1/tools/echo.echo/call",
            &json!({"text": "x".repeat(3000)}).to_string(),
        )
        .await;
    assert_eq!(status, 200);

    let pre = http
        .request(reqwest::Method::OPTIONS, up.url("/api/v1/modules"))
        .header("origin", "http://localhost:3000")
        .header("access-control-request-method", "GET")
        .header(
            "access-control-request-headers",
            "authorization, x-stainless-os",
        )
        .send()
        .await
        .expect("preflight");
    assert_eq!(
        pre.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    assert!(
        pre.headers()["access-control-allow-headers"]
            .to_str()
            .expect("ascii")
            .contains("x-stainless-os")
    );
    let r = http
        .get(up.url("/api/v1/modules"))
        .header("origin", "http://localhost:3000")
        .bearer_auth(up.token())
        .send()
        .await
        .expect("cors get");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    let r = http
        .post(up.url("/api/v1/events"))
        .header("origin", "http://evil.example")
        .bearer_auth(up.token())
        .body(r#"{"topic":"a.b"}"#)
        .send()
        .await
        .expect("evil");
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    assert_eq!(code(&r.json().await.expect("json")), "origin_not_allowed");

    // The dashboard: served from the binary, without the token, under a strict policy.
    let page = http.get(up.url("/")).send().await.expect("page");
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    let html = page.text().await.expect("html");
    assert!(html.contains("/assets/app.js"), "{html}");
    let js = http.get(up.url("/assets/app.js")).send().await.expect("js");
    assert_eq!(js.status(), 200);
    assert!(
        js.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/javascript")
    );
    let icon = http.get(up.url("/favicon.svg")).send().await.expect("icon");
    assert_eq!(icon.headers()["content-type"], "image/svg+xml");
    let r = http
        .get(up.url("/assets/nope.js"))
        .send()
        .await
        .expect("missing");
    assert_eq!(r.status(), 404);
    assert_eq!(code(&r.json().await.expect("json")), "not_found");
    let r = http
        .get(up.url("/assets/..%2Ftoken"))
        .send()
        .await
        .expect("traversal");
    assert_eq!(r.status(), 404);

    let (c, out, err) = run(up.path(), &["dashboard"]);
    assert_eq!(c, 0, "{err}");
    assert_eq!(out.trim(), format!("{}/#token={}", up.url(""), up.token()));
}

/// Whether a headless Chromium can be driven here: Debian's `chromium`, Node.js and the
/// `playwright-core` package in tests/browser (required in CI; elsewhere the test skips).
fn browser_ready(dir: &Path) -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let missing = if !Path::new(&chromium).exists() {
        Some(format!("{chromium} (apt-get install chromium)"))
    } else if !node {
        Some("node (apt-get install nodejs)".into())
    } else if !dir.join("node_modules/playwright-core").exists() {
        Some("playwright-core (npm ci --prefix tests/browser)".into())
    } else {
        None
    };
    match missing {
        None => Some(chromium),
        Some(m) => {
            assert!(std::env::var_os("CI").is_none(), "CI needs {m}");
            eprintln!("skipping the browser test: no {m}");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_works_in_chromium() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser");
    let Some(chromium) = browser_ready(&dir) else {
        return;
    };
    let openai = scripted_openai().await;
    // Asked to forget, the model calls the dangerous memory.forget once (it waits for approval).
    {
        use wiremock::matchers::{body_string_contains, method, path};
        use wiremock::{Mock, ResponseTemplate};
        Mock::given(method("POST"))
            .and(path("/v1/chat/completions"))
            .and(body_string_contains("Forget what I drink"))
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("content-type", "text/event-stream")
                    .set_body_string(
                        super::fixture("openai-tool.sse")
                            .replace("get_weather", "memory__forget")
                            .replace("\"city\"", "\"subject\""),
                    ),
            )
            .up_to_n_times(1)
            .with_priority(1)
            .mount(&openai)
            .await;
    }
    let home = tempfile::tempdir().expect("tempdir");
    if !tokio::task::block_in_place(|| install_test_model(home.path(), "minilm")) {
        return;
    }
    let up = up_with(home, scripted_env(&openai)).await;
    let shots = std::env::var("LOTUS_ARTIFACTS").map_or_else(
        |_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/artifacts/screenshots"),
        |d| Path::new(&d).join("screenshots"),
    );
    let mut node = Command::new("node");
    node.arg(dir.join("dashboard.mjs"))
        .env("LOTUS_URL", up.url(""))
        .env("LOTUS_TOKEN", up.token())
        .env("LOTUS_SCREENSHOTS", &shots)
        .env("LOTUS_CHAT_PROMPT", "What is the capital of France?")
        .env("LOTUS_CHAT_EXPECT", "Paris")
        .env("LOTUS_APPROVAL_PROMPT", "Forget what I drink.")
        .env("CHROMIUM", chromium);
    let out = tokio::task::spawn_blocking(move || node.output().expect("node"))
        .await
        .expect("join");
    let said = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the browser test failed:\n{said}");
    for page in [
        "chat",
        "approval",
        "modules",
        "events",
        "memory",
        "providers",
        "health",
    ] {
        assert!(
            shots.join(format!("{page}.png")).exists(),
            "no screenshot of {page}:\n{said}"
        );
    }
    eprintln!("{said}\nscreenshots in {}", shots.display());
}
