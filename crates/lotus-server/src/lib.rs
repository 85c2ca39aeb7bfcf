//! # lotus-server
//!
//! The control API of a running nucleus, on loopback by default:
//!
//! | method | path | auth | what |
//! |---|---|---|---|
//! | GET | `/api/v1/health` | no | liveness, version, module counts |
//! | GET | `/api/v1/modules` | yes | every module with state and counters |
//! | GET | `/api/v1/modules/{name}` | yes | one module |
//! | POST | `/api/v1/modules/{name}/reload` | yes | swap in the module's current code, live |
//! | POST | `/api/v1/modules/{name}/load` | yes | load and start a newly installed module folder |
//! | POST | `/api/v1/modules/{name}/remove` | yes | stop a module and forget it |
//! | GET | `/api/v1/tools` | yes | every tool with its argument schema |
//! | POST | `/api/v1/tools/{name}/call` | yes | call a tool; body: the JSON arguments |
//! | POST | `/api/v1/events` | yes | publish `{topic, payload}` |
//! | GET | `/api/v1/events/stream?pattern=P` | yes | live events as Server-Sent Events |
//! | GET | `/api/v1/streams/{stream}` | yes | durable stream query (`since`, `until`, `topic`, `after`, `limit`, `newest_first`) |
//! | GET | `/api/v1/bus` | yes | bus counters, subscriber queues, backend health (Redis: link, nodes, group lag) |
//!
//! Authentication is `Authorization: Bearer TOKEN`. Errors are JSON:
//! `{"error": {"code": "…", "message": "…"}}` with a stable `code`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use lotus_bus::{StreamName, StreamQuery};
use lotus_core::{Overflow, Pattern};
use lotus_nucleus::{ModuleState, Nucleus, NucleusError, ToolError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Shared state of the API.
#[derive(Clone)]
pub struct ApiState {
    /// The kernel.
    pub nucleus: Nucleus,
    /// The bearer token.
    pub token: Arc<str>,
    /// When the nucleus started.
    pub started: Instant,
    /// Set once every module has been started (health says `starting` before).
    pub ready: Arc<AtomicBool>,
}

/// An API error: HTTP status, stable code, message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
    }
}

impl From<ToolError> for ApiError {
    fn from(e: ToolError) -> Self {
        let status = match &e {
            ToolError::NotFound { .. } => StatusCode::NOT_FOUND,
            ToolError::PermissionDenied { .. } => StatusCode::FORBIDDEN,
            ToolError::InvalidArguments { .. } => StatusCode::BAD_REQUEST,
            ToolError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ToolError::Failed { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ToolError::Crashed { .. } | ToolError::Unavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        Self::new(status, e.code(), e.to_string())
    }
}

/// The health document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    /// `starting` while modules start, then `ok` when every enabled module runs, `degraded`
    /// otherwise.
    pub status: String,
    /// The `lotus` version.
    pub version: String,
    /// Milliseconds since start.
    pub uptime_ms: u64,
    /// Modules running.
    pub running: usize,
    /// Modules failed.
    pub failed: usize,
    /// The process id.
    pub pid: u32,
}

/// Body of `POST /api/v1/events`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// The topic.
    pub topic: String,
    /// The payload (default `null`).
    #[serde(default)]
    pub payload: Value,
}

/// Answer of `POST /api/v1/events`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishResponse {
    /// The event's id.
    pub id: String,
    /// Subscribers it reached.
    pub matched: usize,
    /// Subscribers whose mailbox stayed full past the deadline and missed it.
    #[serde(default)]
    pub timed_out: usize,
}

/// Answer of a tool call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallResponse {
    /// The tool's JSON result.
    pub result: Value,
}

/// The router with every endpoint.
pub fn router(state: ApiState) -> Router {
    let protected = Router::new()
        .route("/api/v1/modules", get(modules))
        .route("/api/v1/modules/{name}", get(module))
        .route("/api/v1/modules/{name}/reload", post(reload))
        .route("/api/v1/modules/{name}/load", post(load))
        .route("/api/v1/modules/{name}/remove", post(remove))
        .route("/api/v1/tools", get(tools))
        .route("/api/v1/tools/{name}/call", post(call_tool))
        .route("/api/v1/events", post(publish))
        .route("/api/v1/events/stream", get(stream))
        .route("/api/v1/streams/{stream}", get(query_stream))
        .route("/api/v1/bus", get(bus))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/api/v1/health", get(health))
        .merge(protected)
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; see /api/v1/health",
            )
        })
        .with_state(state)
}

async fn auth(
    State(st): State<ApiState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(t) if constant_time_eq::constant_time_eq(t.as_bytes(), st.token.as_bytes()) => {
            next.run(req).await
        }
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the bearer token is wrong; it is in $LOTUS_HOME/token",
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing `Authorization: Bearer TOKEN`; the token is in $LOTUS_HOME/token",
        )
        .into_response(),
    }
}

async fn health(State(st): State<ApiState>) -> Json<Health> {
    let mods = st.nucleus.modules();
    let running = mods
        .iter()
        .filter(|m| m.state == ModuleState::Running)
        .count();
    let failed = mods
        .iter()
        .filter(|m| m.state == ModuleState::Failed)
        .count();
    Json(Health {
        status: if !st.ready.load(Ordering::Acquire) {
            "starting"
        } else if failed == 0 {
            "ok"
        } else {
            "degraded"
        }
        .into(),
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_ms: u64::try_from(st.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        running,
        failed,
        pid: std::process::id(),
    })
}

async fn modules(State(st): State<ApiState>) -> impl IntoResponse {
    Json(st.nucleus.modules())
}

async fn module(
    State(st): State<ApiState>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    st.nucleus.module(&name).map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no module named `{name}`; `lotus module list` shows them"),
        )
    })
}

fn module_error(e: NucleusError) -> ApiError {
    let (status, code) = match &e {
        NucleusError::NoSuchModule(_) => (StatusCode::NOT_FOUND, "not_found"),
        NucleusError::NotRunning { .. } => (StatusCode::CONFLICT, "not_running"),
        NucleusError::AlreadyLoaded(_) => (StatusCode::CONFLICT, "already_loaded"),
        NucleusError::Refused { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "refused"),
        _ => (StatusCode::UNPROCESSABLE_ENTITY, "reload_failed"),
    };
    ApiError::new(status, code, e.to_string())
}

async fn reload(
    State(st): State<ApiState>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    st.nucleus
        .reload(&name)
        .await
        .map(Json)
        .map_err(module_error)
}

async fn load(
    State(st): State<ApiState>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    st.nucleus.load(&name).await.map(Json).map_err(module_error)
}

async fn remove(
    State(st): State<ApiState>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    st.nucleus
        .remove(&name)
        .await
        .map(|()| Json(json!({"removed": name})))
        .map_err(module_error)
}

async fn tools(State(st): State<ApiState>) -> impl IntoResponse {
    Json(st.nucleus.tools())
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes, what: &str) -> Result<T, ApiError> {
    if body.is_empty() {
        return serde_json::from_str("null").map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("{what}: the body is empty ({e})"),
            )
        });
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("{what} is not valid JSON: {e}"),
        )
    })
}

async fn call_tool(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<CallResponse>, ApiError> {
    let args: Value = parse_json(&body, "the tool arguments")?;
    let result = st.nucleus.call_tool(&name, args).await?;
    Ok(Json(CallResponse { result }))
}

async fn publish(State(st): State<ApiState>, body: Bytes) -> Result<impl IntoResponse, ApiError> {
    let req: PublishRequest = parse_json(&body, "the event (`{\"topic\": …, \"payload\": …}`)")?;
    let (ev, d) = st
        .nucleus
        .publish("api", &req.topic, req.payload)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_topic", e.to_string()))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(PublishResponse {
            id: ev.id.to_string(),
            matched: d.matched,
            timed_out: d.timed_out,
        }),
    ))
}

#[derive(Deserialize)]
struct StreamParams {
    #[serde(default)]
    pattern: Option<String>,
}

fn parse_pattern(p: &str) -> Result<Pattern, ApiError> {
    Pattern::new(p)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_pattern", e.to_string()))
}

async fn stream(
    State(st): State<ApiState>,
    Query(q): Query<StreamParams>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let patterns = q
        .pattern
        .as_deref()
        .unwrap_or(">")
        .split(',')
        .map(|p| parse_pattern(p.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    // Drop-oldest: a slow client never holds up the system; it is told what it missed.
    let sub = st
        .nucleus
        .bus()
        .subscribe("api:stream", patterns, 4096, Overflow::DropOldest);
    let as_sse = |ev: &lotus_core::Event| {
        SseEvent::default()
            .event("event")
            .data(serde_json::to_string(ev).unwrap_or_default())
    };
    // State: the subscription, drops already reported, and an event held back while a `lagged`
    // notice goes first.
    let stream = futures_util::stream::unfold(
        (sub, 0u64, None::<Arc<lotus_core::Event>>),
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

#[derive(Deserialize)]
struct QueryParams {
    since: Option<String>,
    until: Option<String>,
    topic: Option<String>,
    after: Option<i64>,
    limit: Option<usize>,
    newest_first: Option<bool>,
}

fn parse_time(s: &str, key: &str) -> Result<SystemTime, ApiError> {
    lotus_core::event::parse_time_or_ago(s).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_time",
            format!("`{key}={s}`: expected an RFC 3339 time or a duration ago such as `10m`"),
        )
    })
}

async fn query_stream(
    State(st): State<ApiState>,
    Path(stream): Path<String>,
    Query(p): Query<QueryParams>,
) -> Result<impl IntoResponse, ApiError> {
    let name: StreamName = stream.parse().map_err(|e: lotus_bus::LogError| {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
    })?;
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
    q.topic = p.topic.as_deref().map(parse_pattern).transpose()?;
    q.after_seq = p.after;
    q.limit = p.limit.unwrap_or(100).min(10_000);
    q.newest_first = p.newest_first.unwrap_or(false);
    let rows =
        st.nucleus.log().query(q).await.map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", e.to_string())
        })?;
    Ok(Json(rows))
}

async fn bus(State(st): State<ApiState>) -> impl IntoResponse {
    let b = st.nucleus.bus();
    let backend = b
        .bridge()
        .map_or_else(|| json!({"backend": "memory"}), |br| br.health());
    Json(json!({"stats": b.stats(), "subscribers": b.subscribers(), "backend": backend}))
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
