//! The router against real HTTP servers: fallback chains, retries honouring `Retry-After`,
//! cooldowns, timeouts, budgets, the ledger's arithmetic, and keys that never leak.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lotus_providers::ollama::Ollama;
use lotus_providers::openai::OpenAi;
use lotus_providers::router::ChatCall;
use lotus_providers::{
    Catalog, ChatRequest, ErrorKind, Ledger, Message, Provider, Router, RouterConfig, Secret,
    collect,
};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEY: &str = "sk-live-ROUTERKEY-9f8e7d6c5b4a";

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture")
}

fn ok_openai() -> ResponseTemplate {
    ResponseTemplate::new(200)
        .insert_header("content-type", "text/event-stream")
        .set_body_string(fixture("openai-text.sse"))
}

fn config(chain: &[&str]) -> RouterConfig {
    RouterConfig {
        chain: chain.iter().map(|s| (*s).to_owned()).collect(),
        retries: 1,
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(20),
        timeout: Duration::from_secs(5),
        ..RouterConfig::default()
    }
}

fn call() -> ChatCall {
    ChatCall {
        module: "cli".into(),
        chain: Vec::new(),
        request: ChatRequest {
            messages: vec![Message::user("What is the capital of France?")],
            ..ChatRequest::default()
        },
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    ledger: Arc<Ledger>,
    ledger_path: std::path::PathBuf,
}

impl Setup {
    /// A router over the built-in catalog writing to this ledger, with `providers`.
    fn router(&self, cfg: RouterConfig, providers: Vec<Arc<dyn Provider>>) -> Arc<Router> {
        Arc::new(providers.into_iter().fold(
            Router::new(Catalog::builtin(), cfg, Some(self.ledger.clone())),
            Router::with_provider,
        ))
    }
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger_path = dir.path().join("ledger.db");
    Setup {
        ledger: Arc::new(Ledger::open(&ledger_path).expect("ledger")),
        ledger_path,
        _dir: dir,
    }
}

fn openai_like(name: &str, server: &MockServer) -> Arc<dyn Provider> {
    Arc::new(OpenAi::new(
        name,
        &format!("{}/v1", server.uri()),
        Some(Secret::new(KEY)),
        lotus_providers::http_client().expect("http"),
    ))
}

#[tokio::test]
async fn a_chain_falls_back_across_two_failing_providers_to_a_third() {
    let s = setup();
    let (failing, refusing, answering) = (
        MockServer::start().await,
        MockServer::start().await,
        MockServer::start().await,
    );
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500).set_body_string("boom"))
        .expect(2) // the first try and one retry
        .mount(&failing)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(401).set_body_string(format!(
            r#"{{"error":{{"message":"Incorrect API key provided: {KEY}.","type":"invalid_request_error","code":"invalid_api_key"}}}}"#
        )))
        .expect(1) // not retried: another try would fail the same way
        .mount(&refusing)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/chat"))
        .respond_with(ResponseTemplate::new(200).set_body_string(fixture("ollama-text.ndjson")))
        .expect(1)
        .mount(&answering)
        .await;
    let ollama: Arc<dyn Provider> = Arc::new(Ollama::new(
        &answering.uri(),
        lotus_providers::http_client().expect("http"),
    ));
    let router = s.router(
        config(&[
            "openai:gpt-4o-mini",
            "openrouter:openai/gpt-4o-mini",
            "ollama:llama3.2",
        ]),
        vec![
            openai_like("openai", &failing),
            openai_like("openrouter", &refusing),
            ollama,
        ],
    );
    let routed = router.chat(call()).await.expect("the third answers");
    assert_eq!(routed.model.to_string(), "ollama:llama3.2");
    let failed: Vec<(String, &str)> = routed
        .attempts
        .iter()
        .map(|a| (a.model.clone(), a.error.code()))
        .collect();
    assert_eq!(
        failed,
        [
            ("openai:gpt-4o-mini".to_owned(), "server"),
            ("openai:gpt-4o-mini".to_owned(), "server"),
            ("openrouter:openai/gpt-4o-mini".to_owned(), "auth"),
        ]
    );
    for a in &routed.attempts {
        assert!(
            !a.error.to_string().contains(KEY),
            "a key leaked into an error: {}",
            a.error
        );
    }
    let r = collect("ollama", routed.stream).await.expect("answer");
    assert!(r.text.contains("Paris"));

    let rows = s.ledger.costs("1970-01-01").expect("costs");
    let calls: u64 = rows.iter().map(|r| r.calls).sum();
    let failures: u64 = rows.iter().map(|r| r.failures).sum();
    assert_eq!(
        (calls, failures),
        (4, 3),
        "every attempt is in the ledger: {rows:?}"
    );
    let ollama = rows
        .iter()
        .find(|r| r.provider == "ollama")
        .expect("ollama row");
    assert_eq!(
        (ollama.input_tokens, ollama.output_tokens, ollama.cost_usd),
        (14, 8, 0.0)
    );
}

#[tokio::test]
async fn retry_after_is_honoured_and_the_same_provider_then_answers() {
    let s = setup();
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "1")
                .set_body_string(r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ok_openai())
        .mount(&server)
        .await;
    let router = s.router(config(&["fast"]), vec![openai_like("openai", &server)]);
    let t0 = Instant::now();
    let (model, r) = router
        .complete(call())
        .await
        .expect("answers after waiting");
    assert!(
        t0.elapsed() >= Duration::from_secs(1),
        "waited only {:?}",
        t0.elapsed()
    );
    assert_eq!(model.to_string(), "openai:gpt-4o-mini");
    assert_eq!(r.text, "The capital of France is Paris.");

    // Priced from the catalog: 14 input × $0.15 + 8 output × $0.60 per million.
    let rows = s.ledger.costs("1970-01-01").expect("costs");
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].calls, rows[0].failures), (2, 1));
    let expected = (14.0 * 0.15 + 8.0 * 0.60) / 1e6;
    assert!((rows[0].cost_usd - expected).abs() < 1e-15, "{rows:?}");
    assert!((s.ledger.spent().expect("spent").0 - expected).abs() < 1e-15);
}

#[tokio::test]
async fn a_provider_that_keeps_failing_cools_down() {
    let s = setup();
    let (bad, good) = (MockServer::start().await, MockServer::start().await);
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503).set_body_string("overloaded"))
        .mount(&bad)
        .await;
    Mock::given(method("POST"))
        .respond_with(ok_openai())
        .mount(&good)
        .await;
    let mut cfg = config(&["openai:gpt-4o-mini", "openrouter:openai/gpt-4o-mini"]);
    cfg.retries = 0;
    cfg.cooldown_after = 2;
    let router = s.router(
        cfg,
        vec![
            openai_like("openai", &bad),
            openai_like("openrouter", &good),
        ],
    );
    for _ in 0..4 {
        let routed = router.chat(call()).await.expect("the second answers");
        assert_eq!(routed.model.provider, "openrouter");
        collect("openrouter", routed.stream).await.expect("answer");
    }
    assert_eq!(
        bad.received_requests().await.expect("recorded").len(),
        2,
        "after two failures in a row the provider is skipped"
    );
}

#[tokio::test]
async fn a_server_that_does_not_answer_in_time_is_a_timeout_and_falls_back() {
    let s = setup();
    let (slow, good) = (MockServer::start().await, MockServer::start().await);
    Mock::given(method("POST"))
        .respond_with(ok_openai().set_delay(Duration::from_secs(3)))
        .mount(&slow)
        .await;
    Mock::given(method("POST"))
        .respond_with(ok_openai())
        .mount(&good)
        .await;
    let mut cfg = config(&["openai:gpt-4o-mini", "openrouter:openai/gpt-4o-mini"]);
    cfg.timeout = Duration::from_millis(300);
    cfg.retries = 0;
    let router = s.router(
        cfg,
        vec![
            openai_like("openai", &slow),
            openai_like("openrouter", &good),
        ],
    );
    let t0 = Instant::now();
    let routed = router.chat(call()).await.expect("falls back");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(routed.attempts[0].error.kind, ErrorKind::Timeout);
    assert_eq!(routed.model.provider, "openrouter");
}

#[tokio::test]
async fn a_spent_budget_stops_calls_before_they_reach_a_provider() {
    let s = setup();
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ok_openai())
        .expect(1)
        .mount(&server)
        .await;
    let mut cfg = config(&["fast"]);
    cfg.daily_usd = Some(0.000_005); // less than one answer costs (6.9e-6)
    let router = s.router(cfg, vec![openai_like("openai", &server)]);
    router.complete(call()).await.expect("the first call fits");
    let e = router.chat(call()).await.err().expect("over budget");
    assert_eq!(e.kind, ErrorKind::Budget);
    assert!(
        e.message.contains("daily budget of $0.00")
            && e.message.contains("providers.budget.daily_usd"),
        "{e}"
    );
}

#[tokio::test]
async fn keys_never_reach_logs_errors_or_the_ledger() {
    use std::io::Write;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let logs = Buf::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let s = setup();
    let server = MockServer::start().await;
    // A server that echoes the key back in its error, as real ones do.
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(401).set_body_string(format!(
            r#"{{"error":{{"message":"Incorrect API key provided: {KEY}. You can find your API key at the dashboard.","code":"invalid_api_key"}}}}"#
        )))
        .mount(&server)
        .await;
    let router = s.router(config(&["fast"]), vec![openai_like("openai", &server)]);
    let e = router.chat(call()).await.err().expect("refused");
    let shown = format!("{e} {e:?}");
    assert!(
        shown.contains("Incorrect API key provided: [redacted]"),
        "{shown}"
    );
    assert!(!shown.contains(KEY), "{shown}");
    assert!(format!("{:?}", Secret::new(KEY)) == "Secret([redacted])");
    let logged = String::from_utf8(logs.0.lock().expect("lock").clone()).expect("utf8");
    assert!(
        logged.contains("provider attempt failed"),
        "the failure is logged: {logged}"
    );
    assert!(!logged.contains(KEY), "a key leaked into the log: {logged}");
    drop(router);
    let bytes = std::fs::read(&s.ledger_path).expect("ledger file");
    let wal = std::fs::read(s.ledger_path.with_extension("db-wal")).unwrap_or_default();
    for b in [bytes, wal] {
        assert!(
            !b.windows(KEY.len()).any(|w| w == KEY.as_bytes()),
            "a key reached the ledger"
        );
    }
}
