//! Ollama's native API (`/api/chat`, `/api/embed`), streamed as NDJSON.

use futures_util::future::BoxFuture;
use serde_json::{Value, json};

use crate::error::ProviderError;
use crate::types::{ChatEvent, ChatRequest, Embeddings, Part, Role, StopReason, Usage};
use crate::wire::{self, Decoder, Frame};
use crate::{ChatStream, Provider};

/// Where Ollama listens when `OLLAMA_HOST` is not set.
pub const DEFAULT_HOST: &str = "http://127.0.0.1:11434";

/// The base URL for an `OLLAMA_HOST` value: `host`, `host:port` or a URL (`0.0.0.0` means this
/// machine).
pub fn base_url(ollama_host: Option<&str>) -> String {
    let Some(h) = ollama_host
        .map(|h| h.trim().trim_matches(['"', '\'']))
        .filter(|h| !h.is_empty())
    else {
        return DEFAULT_HOST.into();
    };
    // A URL is taken as it is; a bare host gets http:// and, without a port, Ollama's.
    let url = if h.contains("://") {
        h.to_owned()
    } else if h.contains(':') && !h.starts_with('[') || h.contains("]:") {
        format!("http://{h}")
    } else {
        format!("http://{h}:11434")
    };
    url.trim_end_matches('/')
        .replace("://0.0.0.0", "://127.0.0.1")
}

/// A client of an Ollama server.
pub struct Ollama {
    api: wire::Endpoint,
}

impl Ollama {
    /// A client for `base_url` (see [`base_url`]).
    pub fn new(base_url: &str, http: reqwest::Client) -> Self {
        Self {
            api: wire::Endpoint::new("ollama", base_url, http),
        }
    }
}

/// The request body for `req` (streamed).
pub fn body(req: &ChatRequest) -> Value {
    let messages: Vec<Value> = req
        .messages
        .iter()
        .map(|m| {
            let role = match m.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
                Role::Tool => "tool",
            };
            let mut out = json!({"role": role, "content": m.text()});
            let images: Vec<&str> = m
                .parts
                .iter()
                .filter_map(|p| match p {
                    Part::Image { data, .. } => Some(data.as_str()),
                    Part::Text { .. } => None,
                })
                .collect();
            if !images.is_empty() {
                out["images"] = json!(images);
            }
            if !m.tool_calls.is_empty() {
                out["tool_calls"] = m
                    .tool_calls
                    .iter()
                    .map(|c| json!({"function": {"name": c.name, "arguments": c.arguments}}))
                    .collect();
            }
            if let Some(name) = &m.tool_name {
                out["tool_name"] = json!(name);
            }
            out
        })
        .collect();
    let mut body = json!({"model": req.model, "messages": messages, "stream": true});
    if !req.tools.is_empty() {
        body["tools"] = crate::openai::tools(&req.tools);
    }
    let options = wire::sampling(
        req,
        [
            Some("temperature"),
            Some("top_p"),
            Some("num_predict"),
            Some("stop"),
        ],
    );
    if !options.is_empty() {
        body["options"] = Value::Object(options);
    }
    body
}

/// Decodes `/api/chat` NDJSON lines up to the one with `"done": true`.
#[derive(Default)]
pub struct StreamDecoder {
    calls: usize,
    done: bool,
}

impl Decoder for StreamDecoder {
    fn frame(&mut self, frame: Frame) -> Result<Vec<ChatEvent>, String> {
        let v = wire::json(&frame.data)?;
        if let Some(e) = v.get("error") {
            return Err(format!(
                "the server reported an error mid-stream: {}",
                e.as_str().map_or_else(|| e.to_string(), str::to_owned)
            ));
        }
        let mut out = Vec::new();
        let msg = &v["message"];
        if let Some(t) = msg
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            out.push(ChatEvent::Text {
                delta: t.to_owned(),
            });
        }
        for call in msg
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let index = self.calls;
            self.calls += 1;
            let f = &call["function"];
            out.push(ChatEvent::ToolCallStart {
                index,
                id: call
                    .get("id")
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("call_{index}"), str::to_owned),
                name: f["name"].as_str().unwrap_or_default().to_owned(),
            });
            let args = match f.get("arguments") {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => "{}".into(),
            };
            out.push(ChatEvent::ToolCallDelta {
                index,
                arguments: args,
            });
        }
        if v.get("done").and_then(Value::as_bool) == Some(true) {
            self.done = true;
            let stop_reason = match v.get("done_reason").and_then(Value::as_str) {
                None | Some("stop") if self.calls > 0 => StopReason::ToolCalls,
                None | Some("stop") => StopReason::Stop,
                Some("length") => StopReason::Length,
                Some(other) => StopReason::Other(other.to_owned()),
            };
            let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
            out.push(ChatEvent::Finished {
                stop_reason,
                usage: Some(Usage {
                    input_tokens: n("prompt_eval_count"),
                    output_tokens: n("eval_count"),
                    cached_input_tokens: 0,
                }),
            });
        }
        Ok(out)
    }

    fn finished(&self) -> bool {
        self.done
    }
}

impl Provider for Ollama {
    fn name(&self) -> &str {
        self.api.provider()
    }

    fn chat(&self, req: ChatRequest) -> BoxFuture<'_, Result<ChatStream, ProviderError>> {
        Box::pin(async move {
            let resp = self
                .api
                .send(self.api.post("/api/chat", &body(&req)))
                .await?;
            Ok(wire::decode(
                "ollama",
                wire::ndjson("ollama", resp),
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
            let body = json!({"model": model, "input": inputs});
            let v = self.api.json(self.api.post("/api/embed", &body)).await?;
            let vectors = v
                .get("embeddings")
                .and_then(Value::as_array)
                .and_then(|all| all.iter().map(wire::floats).collect());
            let tokens = v
                .get("prompt_eval_count")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            wire::embeddings("ollama", vectors, inputs.len(), tokens)
        })
    }

    fn check(&self) -> BoxFuture<'_, Result<(), ProviderError>> {
        Box::pin(self.api.check("/api/tags"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ollama_host_takes_every_form() {
        use super::base_url;
        assert_eq!(base_url(None), "http://127.0.0.1:11434");
        assert_eq!(base_url(Some("")), "http://127.0.0.1:11434");
        assert_eq!(base_url(Some("0.0.0.0")), "http://127.0.0.1:11434");
        assert_eq!(base_url(Some("gpu-box:8080")), "http://gpu-box:8080");
        assert_eq!(
            base_url(Some("https://ollama.example/")),
            "https://ollama.example"
        );
        assert_eq!(base_url(Some("[::1]")), "http://[::1]:11434");
        assert_eq!(
            base_url(Some("http://10.0.0.2:11434")),
            "http://10.0.0.2:11434"
        );
    }
}
