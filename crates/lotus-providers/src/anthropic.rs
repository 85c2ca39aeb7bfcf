//! Anthropic's Messages API.

use std::collections::HashMap;

use futures_util::future::BoxFuture;
use serde_json::{Value, json};

use crate::error::ProviderError;
use crate::types::{ChatEvent, ChatRequest, Part, Role, StopReason, Usage};
use crate::wire::{self, Decoder, Frame};
use crate::{ChatStream, Provider, Secret};

/// The API version header this client speaks.
pub const API_VERSION: &str = "2023-06-01";
/// `max_tokens` is required by the API; this is used when the request sets none.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// A client of the Messages API.
pub struct Anthropic {
    api: wire::Endpoint,
}

impl Anthropic {
    /// A client for `base_url` (e.g. `https://api.anthropic.com/v1`).
    pub fn new(base_url: &str, key: Option<Secret>, http: reqwest::Client) -> Self {
        Self {
            api: wire::Endpoint::new("anthropic", base_url, http)
                .with_key("x-api-key", "", key)
                .with_header("anthropic-version", API_VERSION),
        }
    }
}

/// The request body for `req` (streamed). System messages go to `system`; tool results become
/// `tool_result` blocks of a user turn; consecutive turns of one role are merged.
pub fn body(req: &ChatRequest) -> Value {
    let turns = req.messages.iter().filter_map(|m| match m.role {
        Role::System => None,
        Role::User => Some(("user", parts(&m.parts))),
        Role::Assistant => {
            let mut b = parts(&m.parts);
            b.extend(m.tool_calls.iter().map(
                |c| json!({"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}),
            ));
            Some(("assistant", b))
        }
        Role::Tool => Some((
            "user",
            vec![json!({
                "type": "tool_result",
                "tool_use_id": m.tool_call_id.clone().unwrap_or_default(),
                "content": m.text(),
            })],
        )),
    });
    let mut body = json!({
        "model": req.model,
        "max_tokens": req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        "messages": wire::merge_turns(turns, "content"),
        "stream": true,
    });
    if let Some(system) = wire::system_text(&req.messages) {
        body["system"] = json!(system);
    }
    if !req.tools.is_empty() {
        body["tools"] = req
            .tools
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.input_schema}))
            .collect();
    }
    if let Value::Object(o) = &mut body {
        o.extend(wire::sampling(
            req,
            [
                Some("temperature"),
                Some("top_p"),
                None,
                Some("stop_sequences"),
            ],
        ));
    }
    body
}

fn parts(parts: &[Part]) -> Vec<Value> {
    parts
        .iter()
        .map(|p| match p {
            Part::Text { text } => json!({"type": "text", "text": text}),
            Part::Image { media_type, data } => json!({
                "type": "image",
                "source": {"type": "base64", "media_type": media_type, "data": data},
            }),
        })
        .collect()
}

fn stop_reason(s: &str) -> StopReason {
    match s {
        "end_turn" | "stop_sequence" => StopReason::Stop,
        "max_tokens" | "model_context_window_exceeded" => StopReason::Length,
        "tool_use" => StopReason::ToolCalls,
        "refusal" => StopReason::ContentFilter,
        other => StopReason::Other(other.to_owned()),
    }
}

/// Decodes the `message_start` … `message_stop` event sequence.
#[derive(Default)]
pub struct StreamDecoder {
    usage: Usage,
    stop: Option<StopReason>,
    /// Content block index → tool call index.
    tools: HashMap<u64, usize>,
    done: bool,
}

impl Decoder for StreamDecoder {
    fn frame(&mut self, frame: Frame) -> Result<Vec<ChatEvent>, String> {
        if frame.data.trim().is_empty() {
            return Ok(Vec::new());
        }
        let v = wire::json(&frame.data)?;
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or(&frame.event);
        let n = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        let mut out = Vec::new();
        match kind {
            "message_start" => {
                let u = &v["message"]["usage"];
                let (cached, created) = (
                    n(u, "cache_read_input_tokens"),
                    n(u, "cache_creation_input_tokens"),
                );
                self.usage.input_tokens = n(u, "input_tokens") + cached + created;
                self.usage.cached_input_tokens = cached;
                self.usage.output_tokens = n(u, "output_tokens");
            }
            "content_block_start" => {
                let block = &v["content_block"];
                match block.get("type").and_then(Value::as_str) {
                    Some("tool_use") => {
                        let index = self.tools.len();
                        self.tools.insert(n(&v, "index"), index);
                        out.push(ChatEvent::ToolCallStart {
                            index,
                            id: block["id"].as_str().unwrap_or_default().to_owned(),
                            name: block["name"].as_str().unwrap_or_default().to_owned(),
                        });
                    }
                    Some("text") => {
                        if let Some(t) = block["text"].as_str().filter(|t| !t.is_empty()) {
                            out.push(ChatEvent::Text {
                                delta: t.to_owned(),
                            });
                        }
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let d = &v["delta"];
                match d.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        if let Some(t) = d["text"].as_str().filter(|t| !t.is_empty()) {
                            out.push(ChatEvent::Text {
                                delta: t.to_owned(),
                            });
                        }
                    }
                    Some("input_json_delta") => {
                        let index = *self
                            .tools
                            .get(&n(&v, "index"))
                            .ok_or("a tool input delta for a block that is not a tool call")?;
                        if let Some(p) = d["partial_json"].as_str().filter(|p| !p.is_empty()) {
                            out.push(ChatEvent::ToolCallDelta {
                                index,
                                arguments: p.to_owned(),
                            });
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(r) = v.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    self.stop = Some(stop_reason(r));
                }
                // Cumulative; newer versions may repeat the input side here too.
                let u = &v["usage"];
                if let Some(o) = u.get("output_tokens").and_then(Value::as_u64) {
                    self.usage.output_tokens = o;
                }
                if let Some(i) = u.get("input_tokens").and_then(Value::as_u64) {
                    let (cached, created) = (
                        n(u, "cache_read_input_tokens"),
                        n(u, "cache_creation_input_tokens"),
                    );
                    self.usage.input_tokens = i + cached + created;
                    self.usage.cached_input_tokens = cached;
                }
            }
            "message_stop" => {
                self.done = true;
                out.push(ChatEvent::Finished {
                    stop_reason: self.stop.take().unwrap_or(StopReason::Stop),
                    usage: Some(self.usage),
                });
            }
            "error" => {
                let e = &v["error"];
                return Err(format!(
                    "the server reported an error mid-stream: {} ({})",
                    e["message"].as_str().unwrap_or("no message"),
                    e["type"].as_str().unwrap_or("error")
                ));
            }
            _ => {} // ping, content_block_stop, and whatever comes later
        }
        Ok(out)
    }

    fn finished(&self) -> bool {
        self.done
    }
}

impl Provider for Anthropic {
    fn name(&self) -> &str {
        self.api.provider()
    }

    fn chat(&self, req: ChatRequest) -> BoxFuture<'_, Result<ChatStream, ProviderError>> {
        Box::pin(async move {
            let resp = self
                .api
                .send(self.api.post("/messages", &body(&req)))
                .await?;
            Ok(wire::decode(
                "anthropic",
                wire::sse("anthropic", resp),
                StreamDecoder::default(),
            ))
        })
    }

    fn check(&self) -> BoxFuture<'_, Result<(), ProviderError>> {
        Box::pin(self.api.check("/models"))
    }
}
