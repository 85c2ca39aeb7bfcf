//! OpenAI chat completions and embeddings — and every server that speaks them: OpenRouter,
//! vLLM, llama.cpp's server, LM Studio, Ollama's `/v1`, any `OPENAI_BASE_URL`.

use futures_util::future::BoxFuture;
use serde_json::{Value, json};

use crate::error::ProviderError;
use crate::types::{
    ChatEvent, ChatRequest, Embeddings, Message, Part, Role, StopReason, ToolSpec, Usage,
};
use crate::wire::{self, Decoder, Frame};
use crate::{ChatStream, Provider, Secret};

/// An OpenAI-compatible endpoint.
pub struct OpenAi {
    api: wire::Endpoint,
}

impl OpenAi {
    /// A client for `base_url` (e.g. `https://api.openai.com/v1`) named `name`.
    pub fn new(name: &str, base_url: &str, key: Option<Secret>, http: reqwest::Client) -> Self {
        Self {
            api: wire::Endpoint::new(name, base_url, http).with_key(
                "authorization",
                "Bearer ",
                key,
            ),
        }
    }

    /// Adds a header sent with every request (OpenRouter's `X-Title`, …).
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.api = self.api.with_header(name, value);
        self
    }
}

/// The `tools` array of OpenAI's format (Ollama takes the same).
pub fn tools(specs: &[ToolSpec]) -> Value {
    specs
        .iter()
        .map(|t| {
            json!({"type": "function", "function": {
                "name": t.name, "description": t.description, "parameters": t.input_schema,
            }})
        })
        .collect()
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
        body["tools"] = tools(&req.tools);
    }
    if let Value::Object(o) = &mut body {
        o.extend(wire::sampling(
            req,
            [
                Some("temperature"),
                Some("top_p"),
                Some("max_tokens"),
                Some("stop"),
            ],
        ));
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
        self.api.provider()
    }

    fn chat(&self, req: ChatRequest) -> BoxFuture<'_, Result<ChatStream, ProviderError>> {
        Box::pin(async move {
            let resp = self
                .api
                .send(self.api.post("/chat/completions", &body(&req)))
                .await?;
            let name = self.api.provider();
            Ok(wire::decode(
                name,
                wire::sse(name, resp),
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
            let v = self.api.json(self.api.post("/embeddings", &body)).await?;
            parse_embeddings(self.api.provider(), &v, inputs.len())
        })
    }

    fn check(&self) -> BoxFuture<'_, Result<(), ProviderError>> {
        Box::pin(self.api.check("/models"))
    }
}

/// `{"data":[{"index":0,"embedding":[…]}…],"usage":{"prompt_tokens":n}}` in input order.
pub fn parse_embeddings(
    provider: &str,
    v: &Value,
    expected: usize,
) -> Result<Embeddings, ProviderError> {
    // Items carry their input's index; place each there.
    let vectors = v.get("data").and_then(Value::as_array).and_then(|data| {
        let mut vectors = vec![None; data.len()];
        for (pos, item) in data.iter().enumerate() {
            let index = item
                .get("index")
                .and_then(Value::as_u64)
                .map_or(pos, |i| i as usize);
            *vectors.get_mut(index)? = Some(wire::floats(item.get("embedding")?)?);
        }
        vectors.into_iter().collect::<Option<Vec<_>>>()
    });
    let tokens = v
        .pointer("/usage/prompt_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    wire::embeddings(provider, vectors, expected, tokens)
}
