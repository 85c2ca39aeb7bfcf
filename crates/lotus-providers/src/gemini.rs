//! Google Gemini's `generateContent` API (`v1beta`).

use futures_util::future::BoxFuture;
use serde_json::{Map, Value, json};

use crate::error::ProviderError;
use crate::types::{ChatEvent, ChatRequest, Embeddings, Part, Role, StopReason, Usage};
use crate::wire::{self, Decoder, Frame};
use crate::{ChatStream, Provider, Secret};

/// A client of the Gemini API.
pub struct Gemini {
    api: wire::Endpoint,
}

impl Gemini {
    /// A client for `base_url` (e.g. `https://generativelanguage.googleapis.com/v1beta`).
    pub fn new(base_url: &str, key: Option<Secret>, http: reqwest::Client) -> Self {
        Self {
            api: wire::Endpoint::new("gemini", base_url, http).with_key("x-goog-api-key", "", key),
        }
    }
}

/// The request body for `req`.
pub fn body(req: &ChatRequest) -> Value {
    let turns = req.messages.iter().filter_map(|m| match m.role {
        Role::System => None,
        Role::User => Some(("user", parts(&m.parts))),
        Role::Assistant => {
            let mut p = parts(&m.parts);
            p.extend(
                m.tool_calls
                    .iter()
                    .map(|c| json!({"functionCall": {"name": c.name, "args": c.arguments}})),
            );
            Some(("model", p))
        }
        Role::Tool => {
            let text = m.text();
            let response = match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(o)) => Value::Object(o),
                Ok(other) => json!({ "result": other }),
                Err(_) => json!({ "result": text }),
            };
            Some((
                "user",
                vec![json!({"functionResponse": {
                    "name": m.tool_name.clone().unwrap_or_default(),
                    "response": response,
                }})],
            ))
        }
    });
    let mut body = json!({ "contents": wire::merge_turns(turns, "parts") });
    if let Some(system) = wire::system_text(&req.messages) {
        body["systemInstruction"] = json!({"parts": [{"text": system}]});
    }
    if !req.tools.is_empty() {
        body["tools"] = json!([{"functionDeclarations": req.tools.iter().map(|t| json!({
            "name": t.name,
            "description": t.description,
            "parameters": schema(&t.input_schema),
        })).collect::<Vec<_>>()}]);
    }
    let config = wire::sampling(
        req,
        [
            Some("temperature"),
            Some("topP"),
            Some("maxOutputTokens"),
            Some("stopSequences"),
        ],
    );
    if !config.is_empty() {
        body["generationConfig"] = Value::Object(config);
    }
    body
}

fn parts(parts: &[Part]) -> Vec<Value> {
    parts
        .iter()
        .map(|p| match p {
            Part::Text { text } => json!({"text": text}),
            Part::Image { media_type, data } => {
                json!({"inlineData": {"mimeType": media_type, "data": data}})
            }
        })
        .collect()
}

/// The subset of JSON Schema Gemini accepts: unknown keywords (`$schema`,
/// `additionalProperties`, …) are dropped, and `"type": ["string", "null"]` becomes
/// `"type": "string", "nullable": true`.
pub fn schema(s: &Value) -> Value {
    const KEEP: [&str; 16] = [
        "type",
        "format",
        "description",
        "nullable",
        "enum",
        "items",
        "properties",
        "required",
        "anyOf",
        "minimum",
        "maximum",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "pattern",
    ];
    let Value::Object(o) = s else {
        return s.clone();
    };
    let mut out = Map::new();
    for (k, v) in o {
        if !KEEP.contains(&k.as_str()) {
            continue;
        }
        let v = match k.as_str() {
            "properties" => Value::Object(
                v.as_object()
                    .map(|props| props.iter().map(|(n, p)| (n.clone(), schema(p))).collect())
                    .unwrap_or_default(),
            ),
            "items" => schema(v),
            "anyOf" => Value::Array(
                v.as_array()
                    .map(|a| a.iter().map(schema).collect())
                    .unwrap_or_default(),
            ),
            "type" => match v {
                Value::Array(types) => {
                    let real: Vec<&Value> = types.iter().filter(|t| *t != "null").collect();
                    if real.len() < types.len() {
                        out.insert("nullable".into(), json!(true));
                    }
                    real.first().map_or(json!("string"), |t| (*t).clone())
                }
                other => other.clone(),
            },
            _ => v.clone(),
        };
        out.insert(k.clone(), v);
    }
    Value::Object(out)
}

fn stop_reason(s: &str, called: bool) -> StopReason {
    match s {
        "STOP" if called => StopReason::ToolCalls,
        "STOP" => StopReason::Stop,
        "MAX_TOKENS" => StopReason::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            StopReason::ContentFilter
        }
        other => StopReason::Other(other.to_owned()),
    }
}

/// Decodes `streamGenerateContent?alt=sse` chunks; the stream has no end marker, the last chunk
/// carries `finishReason`.
#[derive(Default)]
pub struct StreamDecoder {
    calls: usize,
    stop: Option<String>,
    usage: Option<Usage>,
}

impl Decoder for StreamDecoder {
    fn frame(&mut self, frame: Frame) -> Result<Vec<ChatEvent>, String> {
        if frame.data.trim().is_empty() {
            return Ok(Vec::new());
        }
        let v = wire::json(&frame.data)?;
        if let Some(e) = v.get("error") {
            return Err(format!(
                "the server reported an error mid-stream: {}",
                e["message"].as_str().unwrap_or("no message")
            ));
        }
        if let Some(u) = v.get("usageMetadata") {
            let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
            self.usage = Some(Usage {
                input_tokens: n("promptTokenCount"),
                output_tokens: n("candidatesTokenCount") + n("thoughtsTokenCount"),
                cached_input_tokens: n("cachedContentTokenCount"),
            });
        }
        let mut out = Vec::new();
        if let Some(reason) = v
            .pointer("/promptFeedback/blockReason")
            .and_then(Value::as_str)
        {
            self.stop = Some(reason.to_owned());
        }
        let Some(cand) = v.pointer("/candidates/0") else {
            return Ok(out);
        };
        for part in cand
            .pointer("/content/parts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if part.get("thought").and_then(Value::as_bool) == Some(true) {
                continue;
            }
            if let Some(t) = part
                .get("text")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
            {
                out.push(ChatEvent::Text {
                    delta: t.to_owned(),
                });
            }
            if let Some(call) = part.get("functionCall") {
                let index = self.calls;
                self.calls += 1;
                out.push(ChatEvent::ToolCallStart {
                    index,
                    id: call
                        .get("id")
                        .and_then(Value::as_str)
                        .map_or_else(|| format!("call_{index}"), str::to_owned),
                    name: call["name"].as_str().unwrap_or_default().to_owned(),
                });
                out.push(ChatEvent::ToolCallDelta {
                    index,
                    arguments: call
                        .get("args")
                        .map_or_else(|| "{}".into(), Value::to_string),
                });
            }
        }
        if let Some(r) = cand.get("finishReason").and_then(Value::as_str) {
            self.stop = Some(r.to_owned());
        }
        Ok(out)
    }

    fn finished(&self) -> bool {
        false
    }

    fn end(&mut self) -> Result<Vec<ChatEvent>, String> {
        let reason = self
            .stop
            .take()
            .ok_or("the stream ended without a finish reason")?;
        Ok(vec![ChatEvent::Finished {
            stop_reason: stop_reason(&reason, self.calls > 0),
            usage: self.usage.take(),
        }])
    }
}

impl Provider for Gemini {
    fn name(&self) -> &str {
        self.api.provider()
    }

    fn chat(&self, req: ChatRequest) -> BoxFuture<'_, Result<ChatStream, ProviderError>> {
        Box::pin(async move {
            let path = format!("/models/{}:streamGenerateContent?alt=sse", req.model);
            let resp = self.api.send(self.api.post(&path, &body(&req))).await?;
            Ok(wire::decode(
                "gemini",
                wire::sse("gemini", resp),
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
            let body = json!({"requests": inputs.iter().map(|t| json!({
                "model": format!("models/{model}"),
                "content": {"parts": [{"text": t}]},
            })).collect::<Vec<_>>()});
            let path = format!("/models/{model}:batchEmbedContents");
            let v = self.api.json(self.api.post(&path, &body)).await?;
            let vectors = v
                .get("embeddings")
                .and_then(Value::as_array)
                .and_then(|all| all.iter().map(|e| wire::floats(e.get("values")?)).collect());
            wire::embeddings("gemini", vectors, inputs.len(), 0)
        })
    }

    fn check(&self) -> BoxFuture<'_, Result<(), ProviderError>> {
        Box::pin(self.api.check("/models"))
    }
}
