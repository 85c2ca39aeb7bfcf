//! Every wire format against a real HTTP server (wiremock) replaying the providers' own response
//! shapes: plain and streamed text, tool calls streamed in pieces, usage, errors, broken streams.
//! The normalized results must be the same whichever provider produced them.

use std::sync::Arc;
use std::time::Duration;

use lotus_providers::anthropic::Anthropic;
use lotus_providers::gemini::Gemini;
use lotus_providers::ollama::Ollama;
use lotus_providers::openai::OpenAi;
use lotus_providers::{
    ChatRequest, ChatResponse, ErrorKind, Message, Provider, ProviderError, Secret, StopReason,
    ToolCall, ToolSpec, Usage, collect,
};
use serde_json::json;
use wiremock::matchers::{body_partial_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEY: &str = "sk-test-0123456789abcdefSECRET";

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture")
}

fn sse(name: &str) -> ResponseTemplate {
    ResponseTemplate::new(200)
        .insert_header("content-type", "text/event-stream")
        .set_body_string(fixture(name))
}

fn http() -> reqwest::Client {
    lotus_providers::http_client().expect("client")
}

/// One provider of each wire format, pointed at `server`.
fn provider(kind: &str, server: &MockServer) -> Arc<dyn Provider> {
    let key = Some(Secret::new(KEY));
    let base = server.uri();
    match kind {
        "openai" => Arc::new(OpenAi::new("openai", &format!("{base}/v1"), key, http())),
        "openrouter" => Arc::new(
            OpenAi::new("openrouter", &format!("{base}/api/v1"), key, http())
                .with_header("X-Title", "LOTUS"),
        ),
        "anthropic" => Arc::new(Anthropic::new(&format!("{base}/v1"), key, http())),
        "gemini" => Arc::new(Gemini::new(&format!("{base}/v1beta"), key, http())),
        "ollama" => Arc::new(Ollama::new(&base, http())),
        other => panic!("no provider {other}"),
    }
}

/// Mounts `response` where `kind` posts its chat requests.
async fn mount_chat(kind: &str, server: &MockServer, response: ResponseTemplate) {
    let m = match kind {
        "openai" => Mock::given(method("POST"))
            .and(path("/v1/chat/completions"))
            .and(header("authorization", format!("Bearer {KEY}").as_str())),
        "openrouter" => Mock::given(method("POST"))
            .and(path("/api/v1/chat/completions"))
            .and(header("x-title", "LOTUS")),
        "anthropic" => Mock::given(method("POST"))
            .and(path("/v1/messages"))
            .and(header("x-api-key", KEY))
            .and(header("anthropic-version", "2023-06-01")),
        "gemini" => Mock::given(method("POST"))
            .and(path("/v1beta/models/m:streamGenerateContent"))
            .and(query_param("alt", "sse"))
            .and(header("x-goog-api-key", KEY)),
        "ollama" => Mock::given(method("POST")).and(path("/api/chat")),
        other => panic!("no provider {other}"),
    };
    m.respond_with(response).mount(server).await;
}

fn text_fixture(kind: &str) -> ResponseTemplate {
    match kind {
        "ollama" => ResponseTemplate::new(200)
            .insert_header("content-type", "application/x-ndjson")
            .set_body_string(fixture("ollama-text.ndjson")),
        k => sse(&format!("{k}-text.sse")),
    }
}

fn tool_fixture(kind: &str) -> ResponseTemplate {
    match kind {
        "ollama" => ResponseTemplate::new(200).set_body_string(fixture("ollama-tool.ndjson")),
        k => sse(&format!("{k}-tool.sse")),
    }
}

/// `req` sent to the `kind` provider at `server`, its stream collected.
async fn answer(
    kind: &str,
    server: &MockServer,
    req: ChatRequest,
) -> Result<ChatResponse, ProviderError> {
    collect(kind, provider(kind, server).chat(req).await?).await
}

fn question() -> ChatRequest {
    ChatRequest {
        model: "m".into(),
        messages: vec![
            Message::system("Answer in one sentence."),
            Message::user("What is the capital of France?"),
        ],
        temperature: Some(0.0),
        max_tokens: Some(64),
        ..ChatRequest::default()
    }
}

fn weather_tool() -> ToolSpec {
    ToolSpec {
        name: "get_weather".into(),
        description: "The weather in a city.".into(),
        input_schema: json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": ["string", "null"]}},
            "required": ["city"],
            "additionalProperties": false,
        }),
    }
}

#[tokio::test]
async fn streamed_text_is_the_same_from_every_provider() {
    for kind in ["openai", "openrouter", "anthropic", "gemini", "ollama"] {
        let server = MockServer::start().await;
        mount_chat(kind, &server, text_fixture(kind)).await;
        let r = answer(kind, &server, question())
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(r.text, "The capital of France is Paris.", "{kind}");
        assert_eq!(r.stop_reason, StopReason::Stop, "{kind}");
        assert_eq!(
            r.usage,
            Usage {
                input_tokens: 14,
                output_tokens: 8,
                cached_input_tokens: 0
            },
            "{kind}"
        );
        assert!(r.tool_calls.is_empty(), "{kind}");
    }
}

#[tokio::test]
async fn tool_calls_streamed_in_pieces_come_out_whole() {
    for kind in ["openai", "anthropic", "gemini", "ollama"] {
        let server = MockServer::start().await;
        mount_chat(kind, &server, tool_fixture(kind)).await;
        let mut req = question();
        req.tools = vec![weather_tool()];
        let r = answer(kind, &server, req)
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(r.stop_reason, StopReason::ToolCalls, "{kind}");
        assert_eq!(r.tool_calls.len(), 1, "{kind}");
        assert_eq!(
            (r.tool_calls[0].name.as_str(), &r.tool_calls[0].arguments),
            ("get_weather", &json!({"city": "Paris"})),
            "{kind}"
        );
        assert!(!r.tool_calls[0].id.is_empty(), "{kind}");
        assert_eq!(
            (r.usage.input_tokens, r.usage.output_tokens),
            (61, 16),
            "{kind}"
        );
    }
}

#[tokio::test]
async fn requests_carry_each_formats_shape() {
    let call = ToolCall {
        id: "call_1".into(),
        name: "get_weather".into(),
        arguments: json!({"city": "Paris"}),
    };
    let mut req = question();
    req.tools = vec![weather_tool()];
    req.messages
        .push(Message::assistant_calls("", vec![call.clone()]));
    req.messages
        .push(Message::tool_result(&call, r#"{"temp_c":21}"#));
    req.messages
        .push(Message::user("And in the picture?").with_image("image/png", "iVBORw0KGgo="));

    let expectations = [
        (
            "openai",
            json!({
                "model": "m", "stream": true, "stream_options": {"include_usage": true},
                "messages": [
                    {"role": "system", "content": "Answer in one sentence."},
                    {"role": "user", "content": "What is the capital of France?"},
                    {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\":21}"},
                    {"role": "user", "content": [{"type": "text", "text": "And in the picture?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
                ],
                "tools": [{"type": "function", "function": {"name": "get_weather"}}],
                "max_tokens": 64,
            }),
        ),
        (
            "anthropic",
            json!({
                "model": "m", "stream": true, "max_tokens": 64, "system": "Answer in one sentence.",
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]},
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "call_1", "content": "{\"temp_c\":21}"},
                        {"type": "text", "text": "And in the picture?"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                    ]},
                ],
                "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
            }),
        ),
        (
            "gemini",
            json!({
                "systemInstruction": {"parts": [{"text": "Answer in one sentence."}]},
                "contents": [
                    {"role": "user", "parts": [{"text": "What is the capital of France?"}]},
                    {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
                    {"role": "user", "parts": [
                        {"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}},
                        {"text": "And in the picture?"},
                        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                    ]},
                ],
                "tools": [{"functionDeclarations": [{"name": "get_weather", "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "nullable": true}},
                    "required": ["city"],
                }}]}],
                "generationConfig": {"temperature": 0.0, "maxOutputTokens": 64},
            }),
        ),
        (
            "ollama",
            json!({
                "model": "m", "stream": true,
                "messages": [
                    {"role": "system", "content": "Answer in one sentence."},
                    {"role": "user", "content": "What is the capital of France?"},
                    {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                    {"role": "tool", "content": "{\"temp_c\":21}", "tool_name": "get_weather"},
                    {"role": "user", "content": "And in the picture?", "images": ["iVBORw0KGgo="]},
                ],
                "options": {"temperature": 0.0, "num_predict": 64},
            }),
        ),
    ];
    for (kind, expected) in expectations {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(body_partial_json(&expected))
            .respond_with(text_fixture(kind))
            .expect(1)
            .mount(&server)
            .await;
        answer(kind, &server, req.clone())
            .await
            .unwrap_or_else(|e| panic!("{kind}: the request did not have the expected shape: {e}"));
        if kind == "gemini" {
            let body: serde_json::Value = server.received_requests().await.expect("recorded")[0]
                .body_json()
                .expect("json");
            let params = &body["tools"][0]["functionDeclarations"][0]["parameters"];
            assert!(
                params.get("additionalProperties").is_none() && params.get("$schema").is_none(),
                "{params}"
            );
        }
    }
}

#[tokio::test]
async fn http_errors_are_classified_with_the_providers_message() {
    let server = MockServer::start().await;
    let p = provider("openai", &server);
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "2")
                .set_body_string(r#"{"error":{"message":"Rate limit reached for gpt-4o-mini on tokens per min (TPM). Please try again in 108ms.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    let e = p.chat(question()).await.err().expect("429");
    assert_eq!(
        e.kind,
        ErrorKind::RateLimited {
            retry_after: Some(Duration::from_secs(2))
        }
    );
    assert!(
        e.retryable() && e.message.contains("Rate limit reached"),
        "{e}"
    );

    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).set_body_string(
            r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#,
        ))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    let e = p.chat(question()).await.err().expect("quota");
    assert!(
        !e.retryable(),
        "a spent quota does not come back by waiting: {e}"
    );

    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500).set_body_string("upstream exploded"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    let e = p.chat(question()).await.err().expect("500");
    assert_eq!((e.code(), e.status), ("server", Some(500)));

    let gemini_server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).set_body_string(
            r#"{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"45s"}]}}"#,
        ))
        .mount(&gemini_server)
        .await;
    let e = provider("gemini", &gemini_server)
        .chat(question())
        .await
        .err()
        .expect("429");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(45)));

    let ollama_server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(404)
                .set_body_string(r#"{"error":"model \"m\" not found, try pulling it first"}"#),
        )
        .mount(&ollama_server)
        .await;
    let e = provider("ollama", &ollama_server)
        .chat(question())
        .await
        .err()
        .expect("404");
    assert_eq!(e.code(), "bad_request");
    assert!(e.message.contains("try pulling it first"), "{e}");
}

#[tokio::test]
async fn broken_streams_are_protocol_errors_not_answers() {
    let server = MockServer::start().await;
    // Malformed JSON in the middle of an SSE stream.
    mount_chat(
        "openai",
        &server,
        ResponseTemplate::new(200).set_body_string(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\ndata: {not json\n\n",
        ),
    )
    .await;
    let e = answer("openai", &server, question())
        .await
        .expect_err("malformed");
    assert_eq!(e.kind, ErrorKind::Protocol);
    assert!(e.message.contains("not JSON"), "{e}");

    // A stream cut off before its end.
    let server = MockServer::start().await;
    let full = fixture("anthropic-text.sse");
    let cut = &full[..full.find("event: message_delta").expect("delta")];
    mount_chat(
        "anthropic",
        &server,
        ResponseTemplate::new(200).set_body_string(cut),
    )
    .await;
    let e = answer("anthropic", &server, question())
        .await
        .expect_err("cut");
    assert!(
        e.message.contains("ended before the answer was complete"),
        "{e}"
    );

    // An error event inside a 200 stream.
    let server = MockServer::start().await;
    mount_chat("anthropic", &server, sse("anthropic-overloaded.sse")).await;
    let e = answer("anthropic", &server, question())
        .await
        .expect_err("overloaded");
    assert!(e.message.contains("Overloaded"), "{e}");
}

#[tokio::test]
async fn embeddings_come_back_in_input_order() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/embeddings"))
        .and(body_partial_json(
            json!({"model": "text-embedding-3-small", "input": ["a", "b"]}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "object": "list",
            "data": [
                {"object": "embedding", "index": 1, "embedding": [0.0, 1.0]},
                {"object": "embedding", "index": 0, "embedding": [1.0, 0.0]},
            ],
            "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": 2, "total_tokens": 2},
        })))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/embed"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "model": "all-minilm",
            "embeddings": [[1.0, 0.0], [0.0, 1.0]],
            "total_duration": 14143917, "load_duration": 1019500, "prompt_eval_count": 2,
        })))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1beta/models/text-embedding-004:batchEmbedContents"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "embeddings": [{"values": [1.0, 0.0]}, {"values": [0.0, 1.0]}],
        })))
        .mount(&server)
        .await;
    for (kind, model) in [
        ("openai", "text-embedding-3-small"),
        ("ollama", "all-minilm"),
        ("gemini", "text-embedding-004"),
    ] {
        let e = provider(kind, &server)
            .embed(model, vec!["a".into(), "b".into()])
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(e.vectors, vec![vec![1.0, 0.0], vec![0.0, 1.0]], "{kind}");
    }
}
