//! `/api/v1/events`: publish, the live stream (WebSocket or Server-Sent Events), the durable
//! streams, the bus.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use lotus_bus::{StreamName, StreamQuery, Subscription};
use lotus_core::{Event, Overflow, Pattern};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{ErrorBody, parse_json};
use crate::security::WS_PROTOCOL;
use crate::{ApiError, ApiState};

/// Body of `POST /api/v1/events`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// The topic.
    pub topic: String,
    /// The payload (default `null`).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub payload: Value,
}

/// Answer of `POST /api/v1/events`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PublishResponse {
    /// The event's id.
    pub id: String,
    /// Subscribers it reached.
    pub matched: usize,
    /// Subscribers whose mailbox stayed full past the deadline and missed it.
    #[serde(default)]
    pub timed_out: usize,
}

/// How many events a live stream holds for a slow client before it drops the oldest.
const LIVE_BUFFER: usize = 4096;

/// `a.*,b.>` as patterns, or a 400 naming the bad one.
pub(crate) fn parse_patterns(list: Option<&str>) -> Result<Vec<Pattern>, ApiError> {
    list.unwrap_or(">")
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            Pattern::new(p)
                .map_err(|e| ApiError::bad("invalid_pattern", format!("pattern `{p}`: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()
        .and_then(|v| {
            if v.is_empty() {
                Err(ApiError::bad(
                    "invalid_pattern",
                    "no pattern given; `>` is everything",
                ))
            } else {
                Ok(v)
            }
        })
}

/// A live view of the bus for an outside client: a slow client never holds up the system; it
/// is told what it missed.
fn observe(st: &ApiState, name: &str, patterns: Vec<Pattern>) -> Subscription {
    st.nucleus
        .bus()
        .subscribe(name, patterns, LIVE_BUFFER, Overflow::DropOldest)
}

/// Publishes an event (not on `system.*`, which is the nucleus's own).
#[utoipa::path(post, path = "/api/v1/events", tag = "events", request_body = PublishRequest,
    responses((status = 202, body = PublishResponse), (status = 400, body = ErrorBody)))]
pub(crate) async fn publish(State(st): State<ApiState>, body: Bytes) -> Result<Response, ApiError> {
    let req: PublishRequest = parse_json(&body, "the event (`{\"topic\": …, \"payload\": …}`)")?;
    let (ev, d) = st.nucleus.publish("api", &req.topic, req.payload).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(PublishResponse {
            id: ev.id.to_string(),
            matched: d.matched,
            timed_out: d.timed_out,
        }),
    )
        .into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
pub(crate) struct LiveParams {
    /// Topic patterns, comma-separated: `*` one token, `>` the rest (default `>`).
    pattern: Option<String>,
}

/// Live events as Server-Sent Events: `event` (the event as JSON) and `lagged`
/// (`{"dropped": N}` when the client fell behind).
#[utoipa::path(get, path = "/api/v1/events/stream", tag = "events", params(LiveParams),
    responses((status = 200, content_type = "text/event-stream", description = "events"),
        (status = 400, body = ErrorBody)))]
pub(crate) async fn sse(
    State(st): State<ApiState>,
    Query(q): Query<LiveParams>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let sub = observe(&st, "api:stream", parse_patterns(q.pattern.as_deref())?);
    let as_sse = |ev: &Event| {
        SseEvent::default()
            .event("event")
            .data(serde_json::to_string(ev).unwrap_or_default())
    };
    // State: the subscription, drops already reported, and an event held back while a `lagged`
    // notice goes first.
    let stream = futures_util::stream::unfold(
        (sub, 0u64, None::<Arc<Event>>),
        move |(sub, seen_dropped, held)| async move {
            if let Some(ev) = held {
                return Some((Ok(as_sse(&ev)), (sub, seen_dropped, None)));
            }
            let ev = sub.recv().await?;
            let dropped = sub.queue().dropped();
            if dropped > seen_dropped {
                let notice = SseEvent::default()
                    .event("lagged")
                    .data(json!({"dropped": dropped - seen_dropped}).to_string());
                Some((Ok(notice), (sub, dropped, Some(ev))))
            } else {
                Some((Ok(as_sse(&ev)), (sub, dropped, None)))
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Live events over a WebSocket (subprotocol `lotus.v1`). The server sends JSON messages
/// `{"type": "event", "event": …}`, `{"type": "lagged", "dropped": N}`,
/// `{"type": "subscribed", "patterns": […]}` and `{"type": "error", "error": …}`; the client may
/// send `{"pattern": "a.*,b.>"}` to change the filter.
#[utoipa::path(get, path = "/api/v1/events/ws", tag = "events", params(LiveParams),
    responses((status = 101, description = "switching to the WebSocket"),
        (status = 400, body = ErrorBody)))]
pub(crate) async fn ws(
    State(st): State<ApiState>,
    Query(q): Query<LiveParams>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let patterns = parse_patterns(q.pattern.as_deref())?;
    Ok(upgrade
        .protocols([WS_PROTOCOL])
        .on_upgrade(move |socket| ws_session(st, socket, patterns)))
}

fn text(v: &Value) -> Message {
    Message::Text(v.to_string().into())
}

fn subscribed(patterns: &[Pattern]) -> Message {
    let list: Vec<String> = patterns.iter().map(ToString::to_string).collect();
    text(&json!({"type": "subscribed", "patterns": list}))
}

async fn ws_session(st: ApiState, mut socket: WebSocket, patterns: Vec<Pattern>) {
    let mut sub = observe(&st, "api:ws", patterns.clone());
    let mut seen_dropped = 0;
    if socket.send(subscribed(&patterns)).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            ev = sub.recv() => {
                let Some(ev) = ev else { break };
                let dropped = sub.queue().dropped();
                if dropped > seen_dropped {
                    let notice = json!({"type": "lagged", "dropped": dropped - seen_dropped});
                    seen_dropped = dropped;
                    if socket.send(text(&notice)).await.is_err() {
                        break;
                    }
                }
                if socket.send(text(&json!({"type": "event", "event": &*ev}))).await.is_err() {
                    break;
                }
            }
            msg = socket.recv() => {
                let t = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                    Some(Ok(_)) => continue,
                };
                let asked = serde_json::from_str::<Value>(&t).ok().and_then(|v| v.get("pattern").and_then(Value::as_str).map(str::to_owned));
                let reply = match asked.as_deref().map(|p| parse_patterns(Some(p))) {
                    Some(Ok(patterns)) => {
                        sub = observe(&st, "api:ws", patterns.clone());
                        seen_dropped = 0;
                        subscribed(&patterns)
                    }
                    Some(Err(e)) => text(&json!({"type": "error", "error": e.body()["error"]})),
                    None => text(&json!({"type": "error", "error": {"code": "invalid_json", "message": "send {\"pattern\": \"a.*,b.>\"} to change the filter"}})),
                };
                if socket.send(reply).await.is_err() {
                    break;
                }
            }
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
pub(crate) struct QueryParams {
    /// From this time: RFC 3339 or a duration ago (`10m`).
    since: Option<String>,
    /// Until this time.
    until: Option<String>,
    /// Only topics matching this pattern.
    topic: Option<String>,
    /// Only entries after this sequence number.
    after: Option<i64>,
    /// At most this many (default 100, at most 10,000).
    limit: Option<usize>,
    /// Newest first.
    newest_first: Option<bool>,
}

fn parse_time(s: &str, key: &str) -> Result<SystemTime, ApiError> {
    lotus_core::event::parse_time_or_ago(s).ok_or_else(|| {
        ApiError::bad(
            "invalid_time",
            format!("`{key}={s}`: expected an RFC 3339 time or a duration ago such as `10m`"),
        )
    })
}

/// Queries a durable stream: `conversation_stream`, `action_log`, `module_events`,
/// `memory_updates`.
#[utoipa::path(get, path = "/api/v1/streams/{stream}", tag = "events",
    params(("stream" = String, Path, description = "The stream"), QueryParams),
    responses((status = 200, description = "entries", body = [Object]), (status = 404, body = ErrorBody)))]
pub(crate) async fn query_stream(
    State(st): State<ApiState>,
    Path(stream): Path<String>,
    Query(p): Query<QueryParams>,
) -> Result<Response, ApiError> {
    let name: StreamName = stream
        .parse()
        .map_err(|e: lotus_bus::LogError| ApiError::not_found(e.to_string()))?;
    let mut q = StreamQuery::new(name);
    q.since = p
        .since
        .as_deref()
        .map(|s| parse_time(s, "since"))
        .transpose()?;
    q.until = p
        .until
        .as_deref()
        .map(|s| parse_time(s, "until"))
        .transpose()?;
    q.topic = p
        .topic
        .as_deref()
        .map(|t| Pattern::new(t).map_err(|e| ApiError::bad("invalid_pattern", e.to_string())))
        .transpose()?;
    q.after_seq = p.after;
    q.limit = p.limit.unwrap_or(100).min(10_000);
    q.newest_first = p.newest_first.unwrap_or(false);
    let rows =
        st.nucleus.log().query(q).await.map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", e.to_string())
        })?;
    Ok(Json(rows).into_response())
}

/// Bus counters, subscriber queues, and the backend's health (Redis: link, nodes, group lag).
#[utoipa::path(get, path = "/api/v1/bus", tag = "system",
    responses((status = 200, description = "`{stats, subscribers, backend}`", body = Object)))]
pub(crate) async fn bus(State(st): State<ApiState>) -> Json<Value> {
    let b = st.nucleus.bus();
    let backend = b
        .bridge()
        .map_or_else(|| json!({"backend": "memory"}), |br| br.health());
    Json(json!({"stats": b.stats(), "subscribers": b.subscribers(), "backend": backend}))
}
