//! OpenAI chat completions and embeddings — and every server that speaks them: OpenRouter,
//! vLLM, llama.cpp's server, LM Studio, Ollama's `/v1`, any `OPENAI_BASE_URL`.

use futures_util::future::BoxFuture;
use serde_json::{Value, json};

use crate::error::{ErrorKind, ProviderError};
use crate::types::{ChatEvent, ChatRequest, Embeddings, Message, Part, Role, StopReason, Usage};
use crate::wire::{self, Decoder, Frame};
use crate::{ChatStream, Provider, Secret};

/// An OpenAI-compatible endpoint.
pub struct OpenAi {
    name: String,
    base_url: String,
    key: Option<Secret>,
    headers: Vec<(String, String)>,
    http: reqwest::Client,
}

impl OpenAi {
    /// A client for `base_url` (e.g. `https://api.openai.com/v1`) named `name`.
    pub fn new(name: &str, base_url: &str, key: Option<Secret>, http: reqwest::Client) -> Self {
        Self {
            name: name.to_owned(),
            base_url: base_url.trim_end_matches('/').to_owned(),
            key,
            headers: Vec::new(),
            http,
        }
    }

    /// Adds a header sent with every request (OpenRouter's `X-Title`, …).
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.authorize(self.http.post(format!("{}{path}", self.base_url)))
    }

    fn authorize(&self, mut req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if let Some(k) = &self.key {
            req = req.bearer_auth(k.expose());
        }
        for (n, v) in &self.headers {
            req = req.header(n, v);
        }
        req
    }

    fn secrets(&self) -> Vec<&Secret> {
        self.key.iter().collect()
    }
}

/// The request body for `req` (streamed, with usage).
pub fn body(req: &ChatRequest) -> Value {
    let mut body = json!({
        "model": req.model,
        "messages": req.messages.iter().map(message).collect::<Vec<_>>(),
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if !req.tools.is_empty() {
        body["tools"] = req
            .tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.name, "description": t.description, "parameters": t.input_schema,
                }})
            })
            .collect();
    }
    if let Some(t) = req.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(p) = req.top_p {
        body["top_p"] = json!(p);
    }
    if let Some(m) = req.max_tokens {
        body["max_tokens"] = json!(m);
    }
    if !req.stop.is_empty() {
        body["stop"] = json!(req.stop);
    }
    body
}

fn message(m: &Message) -> Value {
    let role = match m.role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    };
    let has_image = m.parts.iter().any(|p| matches!(p, Part::Image { .. }));
    let content = if has_image {
        Value::Array(
            m.parts
                .iter()
                .map(|p| match p {
                    Part::Text { text } => json!({"type": "text", "text": text}),
                    Part::Image { media_type, data } => json!({
                        "type": "image_url",
                        "image_url": {"url": format!("data:{media_type};base64,{data}")},
                    }),
                })
                .collect(),
        )
    } else if m.role == Role::Assistant && m.parts.is_empty() && !m.tool_calls.is_empty() {
        Value::Null
    } else {
        Value::String(m.text())
    };
    let mut out = json!({"role": role, "content": content});
    if !m.tool_calls.is_empty() {
        out["tool_calls"] = m
            .tool_calls
            .iter()
            .map(|c| {
                json!({"id": c.id, "type": "function", "function": {
                    "name": c.name, "arguments": c.arguments.to_string(),
                }})
            })
            .collect();
    }
    if let Some(id) = &m.tool_call_id {
        out["tool_call_id"] = json!(id);
    }
    out
}

fn stop_reason(s: &str) -> StopReason {
    match s {
        "stop" => StopReason::Stop,
        "length" => StopReason::Length,
        "tool_calls" | "function_call" => StopReason::ToolCalls,
        "content_filter" => StopReason::ContentFilter,
        other => StopReason::Other(other.to_owned()),
    }
}

fn usage(u: &Value) -> Option<Usage> {
    let n = |k: &str| u.get(k).and_then(Value::as_u64);
    Some(Usage {
        input_tokens: n("prompt_tokens")?,
        output_tokens: n("completion_tokens").unwrap_or(0),
        cached_input_tokens: u
            .pointer("/prompt_tokens_details/cached_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    })
}

/// Decodes `data:` chunks of `chat.completion.chunk` objects up to `[DONE]`.
#[derive(Default)]
pub struct StreamDecoder {
    stop: Option<StopReason>,
    usage: Option<Usage>,
    /// The wire index's current call: (our index, its id).
    calls: std::collections::HashMap<u64, (usize, String)>,
    next: usize,
    done: bool,
}

impl StreamDecoder {
    fn finish(&mut self) -> Vec<ChatEvent> {
        self.done = true;
        vec![ChatEvent::Finished {
            stop_reason: self.stop.take().unwrap_or(StopReason::Stop),
            usage: self.usage.take(),
        }]
    }
}

impl Decoder for StreamDecoder {
    fn frame(&mut self, frame: Frame) -> Result<Vec<ChatEvent>, String> {
        let data = frame.data.trim();
        if data == "[DONE]" {
            return Ok(self.finish());
        }
        if data.is_empty() {
            return Ok(Vec::new());
        }
        let v = wire::json(data)?;
        if let Some(e) = v.get("error") {
            let msg = e
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(|| e.to_string(), str::to_owned);
            return Err(format!("the server reported an error mid-stream: {msg}"));
        }
        let mut out = Vec::new();
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            self.usage = usage(u).or(self.usage);
        }
        let Some(choice) = v.pointer("/choices/0") else {
            return Ok(out);
        };
        let delta = &choice["delta"];
        if let Some(text) = delta.get("content").and_then(Value::as_str)
            && !text.is_empty()
        {
            out.push(ChatEvent::Text {
                delta: text.to_owned(),
            });
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let wire = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            let f = &call["function"];
            let id = call
                .get("id")
                .and_then(Value::as_str)
                .filter(|id| !id.is_empty());
            // A call starts with its name; some servers reuse index 0 for parallel calls, each
            // with its own id.
            let is_new = match (self.calls.get(&wire), id) {
                (None, _) => true,
                (Some((_, known)), Some(id)) => known != id,
                (Some(_), None) => false,
            };
            if is_new {
                let Some(name) = f.get("name").and_then(Value::as_str) else {
                    return Err("a tool call fragment arrived before its call began".into());
                };
                let index = self.next;
                self.next += 1;
                let id = id.map_or_else(|| format!("call_{index}"), str::to_owned);
                self.calls.insert(wire, (index, id.clone()));
                out.push(ChatEvent::ToolCallStart {
                    index,
                    id,
                    name: name.to_owned(),
                });
            }
            let index = self.calls[&wire].0;
            if let Some(args) = f.get("arguments").and_then(Value::as_str)
                && !args.is_empty()
            {
                out.push(ChatEvent::ToolCallDelta {
                    index,
                    arguments: args.to_owned(),
                });
            }
        }
        if let Some(r) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop = Some(stop_reason(r));
        }
        Ok(out)
    }

    fn finished(&self) -> bool {
        self.done
    }

    fn end(&mut self) -> Result<Vec<ChatEvent>, String> {
        // Some compatible servers close the stream after the finish reason without `[DONE]`.
        if self.stop.is_some() {
            Ok(self.finish())
        } else {
            Err("the stream ended before the answer was complete".into())
        }
    }
}

impl Provider for OpenAi {
    fn name(&self) -> &str {
        &self.name
    }

    fn chat(&self, req: ChatRequest) -> BoxFuture<'_, Result<ChatStream, ProviderError>> {
        Box::pin(async move {
            let resp = wire::send(
                &self.name,
                self.post("/chat/completions").json(&body(&req)),
                &self.secrets(),
            )
            .await?;
            Ok(wire::decode(
                &self.name,
                wire::sse(&self.name, resp),
                StreamDecoder::default(),
            ))
        })
    }

    fn embed<'a>(
        &'a self,
        model: &'a str,
        inputs: Vec<String>,
    ) -> BoxFuture<'a, Result<Embeddings, ProviderError>> {
        Box::pin(async move {
            let body = json!({"model": model, "input": inputs, "encoding_format": "float"});
            let resp = wire::send(
                &self.name,
                self.post("/embeddings").json(&body),
                &self.secrets(),
            )
            .await?;
            let v: Value = resp
                .json()
                .await
                .map_err(|e| wire::transport(&self.name, &e, &self.secrets()))?;
            parse_embeddings(&self.name, &v, inputs.len())
        })
    }

    fn check(&self) -> BoxFuture<'_, Result<(), ProviderError>> {
        Box::pin(async move {
            let req = self.authorize(self.http.get(format!("{}/models", self.base_url)));
            wire::send(&self.name, req, &self.secrets())
                .await
                .map(|_| ())
        })
    }
}

/// `{"data":[{"index":0,"embedding":[…]}…],"usage":{"prompt_tokens":n}}` in input order.
pub fn parse_embeddings(
    provider: &str,
    v: &Value,
    expected: usize,
) -> Result<Embeddings, ProviderError> {
    let bad =
        |why: &str| ProviderError::new(provider, ErrorKind::Protocol, format!("embeddings: {why}"));
    let data = v
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no `data` array"))?;
    let mut vectors = vec![Vec::new(); data.len()];
    for (pos, item) in data.iter().enumerate() {
        let index = item
            .get("index")
            .and_then(Value::as_u64)
            .map_or(pos, |i| i as usize);
        let vector = item
            .get("embedding")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("an item has no `embedding`"))?
            .iter()
            .map(|x| x.as_f64().map(|f| f as f32))
            .collect::<Option<Vec<f32>>>()
            .ok_or_else(|| bad("an embedding holds something else than numbers"))?;
        *vectors
            .get_mut(index)
            .ok_or_else(|| bad("an index is out of range"))? = vector;
    }
    if vectors.len() != expected {
        return Err(bad(&format!(
            "{} vectors for {expected} inputs",
            vectors.len()
        )));
    }
    Ok(Embeddings {
        vectors,
        input_tokens: v
            .pointer("/usage/prompt_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    })
}
