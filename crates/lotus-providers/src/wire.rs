//! What every wire format shares: the HTTP exchange (errors classified, keys redacted), SSE and
//! NDJSON framing, and turning a format's decoder into a [`ChatStream`].

use std::collections::VecDeque;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::{Stream, StreamExt};

use crate::error::{ErrorKind, ProviderError, parse_retry_after};
use serde_json::{Map, Value};

use crate::types::{ChatEvent, ChatRequest, Embeddings, Message, Role};
use crate::{ChatStream, Secret};

/// One HTTP API: its base URL, the client, and the headers every request carries — the key
/// among them, which is scrubbed from every error built from a response.
pub struct Endpoint {
    provider: String,
    base: String,
    http: reqwest::Client,
    key: Option<(&'static str, &'static str, Secret)>,
    headers: Vec<(String, String)>,
}

impl Endpoint {
    /// `base` (trailing `/` dropped) for `provider`, without a key.
    pub fn new(provider: &str, base: &str, http: reqwest::Client) -> Self {
        Self {
            provider: provider.to_owned(),
            base: base.trim_end_matches('/').to_owned(),
            http,
            key: None,
            headers: Vec::new(),
        }
    }

    /// Sends `key` in header `name`, after `prefix` (`"Bearer "` for `authorization`).
    pub fn with_key(
        mut self,
        name: &'static str,
        prefix: &'static str,
        key: Option<Secret>,
    ) -> Self {
        self.key = key.map(|k| (name, prefix, k));
        self
    }

    /// Adds a header sent with every request.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The provider's name.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some((name, prefix, k)) = &self.key {
            req = req.header(*name, format!("{prefix}{}", k.expose()));
        }
        for (n, v) in &self.headers {
            req = req.header(n, v);
        }
        req
    }

    /// A GET of `path` (below the base URL).
    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::GET, path)
    }

    /// A POST of `body` as JSON to `path`.
    pub fn post(&self, path: &str, body: &serde_json::Value) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::POST, path).json(body)
    }

    fn secrets(&self) -> Vec<&Secret> {
        self.key.iter().map(|(_, _, k)| k).collect()
    }

    /// Sends `req`: the response, or the classified error (see [`send`]).
    pub async fn send(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ProviderError> {
        send(&self.provider, req, &self.secrets()).await
    }

    /// Sends `req` and parses its JSON answer.
    pub async fn json(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<serde_json::Value, ProviderError> {
        self.send(req)
            .await?
            .json()
            .await
            .map_err(|e| transport(&self.provider, &e, &self.secrets()))
    }

    /// Whether the API answers an authenticated GET of `path`.
    pub async fn check(&self, path: &str) -> Result<(), ProviderError> {
        self.send(self.get(path)).await.map(|_| ())
    }
}

/// The system messages' text, joined, for formats that take it apart from the conversation.
pub fn system_text(messages: &[Message]) -> Option<String> {
    let parts: Vec<String> = messages
        .iter()
        .filter(|m| m.role == Role::System)
        .map(Message::text)
        .collect();
    (!parts.is_empty()).then(|| parts.join("\n\n"))
}

/// Turns of `(role, pieces)` as `{"role": …, content_key: [pieces]}`, consecutive turns of one
/// role merged (for formats that want user and model turns to alternate).
pub fn merge_turns(
    turns: impl Iterator<Item = (&'static str, Vec<Value>)>,
    content_key: &str,
) -> Vec<Value> {
    let mut merged: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (role, pieces) in turns {
        match merged.last_mut() {
            Some((last, p)) if *last == role => p.extend(pieces),
            _ => merged.push((role, pieces)),
        }
    }
    merged
        .into_iter()
        .map(|(role, pieces)| {
            let mut turn = Map::new();
            turn.insert("role".into(), Value::from(role));
            turn.insert(content_key.into(), Value::Array(pieces));
            Value::Object(turn)
        })
        .collect()
}

/// The sampling settings of `req` under the format's own key names (temperature, top-p, most
/// tokens, stop sequences); `None` leaves one out.
pub fn sampling(req: &ChatRequest, keys: [Option<&str>; 4]) -> Map<String, Value> {
    let mut m = Map::new();
    let values = [
        req.temperature.map(|t| serde_json::json!(t)),
        req.top_p.map(|p| serde_json::json!(p)),
        req.max_tokens.map(|n| serde_json::json!(n)),
        (!req.stop.is_empty()).then(|| serde_json::json!(req.stop)),
    ];
    for (key, value) in keys.into_iter().zip(values) {
        if let (Some(k), Some(v)) = (key, value) {
            m.insert(k.to_owned(), v);
        }
    }
    m
}

/// A JSON array of numbers as an embedding.
pub fn floats(v: &Value) -> Option<Vec<f32>> {
    v.as_array()?
        .iter()
        .map(|x| x.as_f64().map(|f| f as f32))
        .collect()
}

/// Embeddings from parsed `vectors` (`None`: the answer held something else), checked against
/// the number of inputs.
pub fn embeddings(
    provider: &str,
    vectors: Option<Vec<Vec<f32>>>,
    expected: usize,
    input_tokens: u64,
) -> Result<Embeddings, ProviderError> {
    let bad = |why: String| {
        ProviderError::new(provider, ErrorKind::Protocol, format!("embeddings: {why}"))
    };
    let vectors =
        vectors.ok_or_else(|| bad("the answer holds no list of numeric vectors".into()))?;
    if vectors.len() != expected {
        return Err(bad(format!(
            "{} vectors for {expected} inputs",
            vectors.len()
        )));
    }
    Ok(Embeddings {
        vectors,
        input_tokens,
    })
}

/// Sends `req` and returns the response if its status is a success; otherwise the error, with
/// the provider's message and any `Retry-After`, and every secret in `redact` blotted out.
pub async fn send(
    provider: &str,
    req: reqwest::RequestBuilder,
    redact: &[&Secret],
) -> Result<reqwest::Response, ProviderError> {
    let resp = req
        .send()
        .await
        .map_err(|e| transport(provider, &e, redact))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    // OpenAI's `retry-after-ms` is the finer one; then the standard header.
    let retry_after = header("retry-after-ms")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
        .map(|ms| Duration::from_secs_f64(ms.min(3_600_000.0) / 1000.0))
        .or_else(|| header("retry-after").as_deref().and_then(parse_retry_after));
    let body = resp.text().await.unwrap_or_default();
    // Gemini says how long to wait in the body (`RetryInfo.retryDelay`, e.g. "45s").
    let retry_after = retry_after.or_else(|| retry_delay_in_body(&body));
    let mut e = ProviderError::from_status(provider, status.as_u16(), retry_after, &body);
    e.message = scrub(&e.message, redact);
    Err(e)
}

fn retry_delay_in_body(body: &str) -> Option<Duration> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v.pointer("/error/details")?
        .as_array()?
        .iter()
        .find_map(|d| {
            d.get("retryDelay")?
                .as_str()?
                .strip_suffix('s')?
                .parse::<f64>()
                .ok()
        })
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(3600.0)))
}

/// A transport failure (connect, timeout, broken body) as an error.
pub fn transport(provider: &str, e: &reqwest::Error, redact: &[&Secret]) -> ProviderError {
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_decode() {
        ErrorKind::Protocol
    } else {
        ErrorKind::Network
    };
    ProviderError::new(provider, kind, scrub(&lotus_core::error_chain(e), redact))
}

/// `text` with every secret's value replaced by `[redacted]`.
pub fn scrub(text: &str, redact: &[&Secret]) -> String {
    let mut out = text.to_owned();
    for s in redact {
        if !s.expose().is_empty() {
            out = out.replace(s.expose(), "[redacted]");
        }
    }
    out
}

/// A frame of a streamed response: an SSE event (name, data) or one NDJSON line (name empty).
pub struct Frame {
    /// The SSE `event:` name (`message` when absent); empty for NDJSON.
    pub event: String,
    /// The SSE `data:` (lines joined) or the NDJSON line.
    pub data: String,
}

/// The SSE events of a response body.
pub fn sse(
    provider: &str,
    resp: reqwest::Response,
) -> impl Stream<Item = Result<Frame, ProviderError>> + Send + use<> {
    let provider = provider.to_owned();
    resp.bytes_stream().eventsource().map(move |e| match e {
        Ok(ev) => Ok(Frame {
            event: ev.event,
            data: ev.data,
        }),
        Err(e) => Err(ProviderError::new(
            &provider,
            ErrorKind::Protocol,
            format!("the event stream broke: {e}"),
        )),
    })
}

/// The non-empty lines of a newline-delimited JSON body.
pub fn ndjson(
    provider: &str,
    resp: reqwest::Response,
) -> impl Stream<Item = Result<Frame, ProviderError>> + Send + use<> {
    let provider = provider.to_owned();
    let bytes = resp.bytes_stream();
    futures_util::stream::unfold(
        (bytes, Vec::<u8>::new(), false),
        move |(mut bytes, mut buf, mut ended)| {
            let provider = provider.clone();
            async move {
                loop {
                    if let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=nl).collect();
                        let text = String::from_utf8_lossy(&line).trim().to_owned();
                        if text.is_empty() {
                            continue;
                        }
                        let frame = Frame {
                            event: String::new(),
                            data: text,
                        };
                        return Some((Ok(frame), (bytes, buf, ended)));
                    }
                    if ended {
                        let rest = String::from_utf8_lossy(&buf).trim().to_owned();
                        buf.clear();
                        if rest.is_empty() {
                            return None;
                        }
                        let frame = Frame {
                            event: String::new(),
                            data: rest,
                        };
                        return Some((Ok(frame), (bytes, buf, ended)));
                    }
                    match bytes.next().await {
                        Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                        Some(Err(e)) => {
                            let err = transport(&provider, &e, &[]);
                            return Some((Err(err), (bytes, buf, true)));
                        }
                        None => ended = true,
                    }
                }
            }
        },
    )
}

/// A wire format's stream decoder: frames in, neutral events out.
pub trait Decoder: Send + 'static {
    /// Decodes one frame (possibly into nothing, possibly into several events).
    fn frame(&mut self, frame: Frame) -> Result<Vec<ChatEvent>, String>;
    /// Whether the final event has been produced (later frames are ignored).
    fn finished(&self) -> bool;
    /// The frames ended before [`finished`](Self::finished): the last events if the format
    /// allows ending so (e.g. a finish reason was seen but no end marker), else why not.
    fn end(&mut self) -> Result<Vec<ChatEvent>, String> {
        Err("the stream ended before the answer was complete".into())
    }
}

/// Runs `decoder` over `frames`: a [`ChatStream`] that ends after `Finished`, or with an error if
/// the frames end first or do not decode.
pub fn decode<S, D>(provider: &str, frames: S, decoder: D) -> ChatStream
where
    S: Stream<Item = Result<Frame, ProviderError>> + Send + 'static,
    D: Decoder,
{
    let provider = provider.to_owned();
    let state = (
        Box::pin(frames),
        decoder,
        VecDeque::<ChatEvent>::new(),
        false,
    );
    Box::pin(futures_util::stream::unfold(
        state,
        move |(mut frames, mut decoder, mut pending, mut done)| {
            let provider = provider.clone();
            async move {
                loop {
                    if let Some(ev) = pending.pop_front() {
                        return Some((Ok(ev), (frames, decoder, pending, done)));
                    }
                    if done {
                        return None;
                    }
                    if decoder.finished() {
                        done = true;
                        continue;
                    }
                    match frames.next().await {
                        Some(Ok(frame)) => match decoder.frame(frame) {
                            Ok(events) => pending.extend(events),
                            Err(msg) => {
                                let e = ProviderError::new(&provider, ErrorKind::Protocol, msg);
                                return Some((Err(e), (frames, decoder, pending, true)));
                            }
                        },
                        Some(Err(e)) => return Some((Err(e), (frames, decoder, pending, true))),
                        None => match decoder.end() {
                            Ok(events) => {
                                pending.extend(events);
                                done = true;
                            }
                            Err(msg) => {
                                let e = ProviderError::new(&provider, ErrorKind::Protocol, msg);
                                return Some((Err(e), (frames, decoder, pending, true)));
                            }
                        },
                    }
                }
            }
        },
    ))
}

/// Parses a frame's data as JSON, naming the provider's format on failure.
pub fn json(data: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(data).map_err(|e| {
        let shown: String = data.chars().take(120).collect();
        format!("a stream frame is not JSON ({e}): {shown}")
    })
}
