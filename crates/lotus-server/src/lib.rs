//! # lotus-server
//!
//! The API of a running nucleus and the web dashboard, on loopback by default.
//!
//! - `/api/v1/…`: modules, events (publish, live over WebSocket or Server-Sent Events, durable
//!   streams), tools, memory, providers, chat (streamed over SSE), the bus and health.
//! - `/v1/chat/completions` and `/v1/models`: the OpenAI API, answered by the reasoning module,
//!   so anything that speaks it can use ASH as its model.
//! - `/metrics`: Prometheus (OpenMetrics text).
//! - `/api/openapi.json`: the OpenAPI document, generated from the handlers and types here.
//! - `/`: the dashboard, served from the binary.
//!
//! Every endpoint but `GET /api/v1/health` (and the dashboard's static files, which hold no
//! data) needs `Authorization: Bearer TOKEN`; a browser's WebSocket sends the token as the
//! subprotocol `bearer.TOKEN`. Errors are JSON: `{"error": {"code": "…", "message": "…"}}` with
//! a stable `code`.

mod chat;
mod dashboard;
mod error;
mod events;
mod logs;
mod memory;
mod metrics;
mod modules;
mod openai;
mod providers;
mod security;
mod tools;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use lotus_nucleus::{ModuleState, Nucleus};
use lotus_providers::setup::Setup;
use serde::{Deserialize, Serialize};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::ApiError;
pub use events::{PublishRequest, PublishResponse};
pub use logs::{LogLine, ModuleLogs};
pub use modules::{Rollback, RollbackRequest};
use security::BearerScheme;
pub use tools::CallResponse;

/// What the binary does for the API that the nucleus cannot: rolling back an installed module
/// (the versions live in the home's module store).
#[async_trait::async_trait]
pub trait Admin: Send + Sync {
    /// Makes version `to` (default: the one before the active one) of module `name` active.
    async fn rollback(&self, name: &str, to: Option<&str>) -> Result<Rollback, ApiError>;
}

/// Settings of the API (`[api]` in `lotus.toml`).
#[derive(Clone, Debug)]
pub struct ApiSettings {
    /// The largest request body accepted, in bytes.
    pub max_body: usize,
    /// Origins (`scheme://host:port`) other than the API's own that browsers may call it from.
    pub cors_origins: Vec<String>,
    /// How long a chat may go without a word from the reasoning module.
    pub chat_timeout: Duration,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            max_body: 2 * 1024 * 1024,
            cors_origins: Vec::new(),
            chat_timeout: Duration::from_secs(600),
        }
    }
}

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
    /// Recent log lines of each module.
    pub logs: Arc<ModuleLogs>,
    /// The providers (list, test, costs), when the binary set them up.
    pub providers: Option<Arc<Setup>>,
    /// What the binary does for the API.
    pub admin: Option<Arc<dyn Admin>>,
    /// Limits and CORS.
    pub settings: Arc<ApiSettings>,
    metrics: Arc<metrics::Metrics>,
}

impl ApiState {
    /// The state for `nucleus` with `token`; the rest at defaults.
    pub fn new(nucleus: Nucleus, token: &str) -> Self {
        Self {
            nucleus,
            token: Arc::from(token),
            started: Instant::now(),
            ready: Arc::new(AtomicBool::new(true)),
            logs: Arc::new(ModuleLogs::default()),
            providers: None,
            admin: None,
            settings: Arc::new(ApiSettings::default()),
            metrics: Arc::new(metrics::Metrics::default()),
        }
    }

    /// Counts from `started`; health says `starting` until `ready` is set.
    #[must_use]
    pub fn starting(mut self, started: Instant, ready: Arc<AtomicBool>) -> Self {
        self.started = started;
        self.ready = ready;
        self
    }

    /// Module logs from this collector.
    #[must_use]
    pub fn with_logs(mut self, logs: Arc<ModuleLogs>) -> Self {
        self.logs = logs;
        self
    }

    /// The providers.
    #[must_use]
    pub fn with_providers(mut self, setup: Arc<Setup>) -> Self {
        self.providers = Some(setup);
        self
    }

    /// What the binary does for the API.
    #[must_use]
    pub fn with_admin(mut self, admin: Arc<dyn Admin>) -> Self {
        self.admin = Some(admin);
        self
    }

    /// Limits and CORS.
    #[must_use]
    pub fn with_settings(mut self, settings: ApiSettings) -> Self {
        self.settings = Arc::new(settings);
        self
    }
}

/// The health document.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// This node, when the bus spans several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// Liveness, version and module counts; the only endpoint without a token.
#[utoipa::path(get, path = "/api/v1/health", tag = "system", security(()),
    responses((status = 200, description = "Health", body = Health)))]
async fn health(State(st): State<ApiState>) -> Json<Health> {
    // This node's modules: another node's failures are its own health's business.
    let node = st.nucleus.bus().bridge().map(|b| b.node().to_owned());
    let mods = st.nucleus.modules();
    let count = |s: ModuleState| {
        mods.iter()
            .filter(|m| m.state == s && m.node == node)
            .count()
    };
    let (running, failed) = (count(ModuleState::Running), count(ModuleState::Failed));
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
        node,
    })
}

/// The OpenAPI document of this API.
#[utoipa::path(get, path = "/api/openapi.json", tag = "system",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
async fn openapi_json() -> Json<&'static utoipa::openapi::OpenApi> {
    static DOC: std::sync::OnceLock<utoipa::openapi::OpenApi> = std::sync::OnceLock::new();
    Json(DOC.get_or_init(openapi))
}

#[derive(OpenApi)]
#[openapi(
    info(title = "LOTUS API", description = "The API of a running LOTUS nucleus: modules, events, tools, memory, providers, chat, and an OpenAI-compatible endpoint answered by ASH."),
    modifiers(&BearerScheme),
    security(("bearer" = [])),
    tags(
        (name = "system", description = "Health, bus, metrics and this document"),
        (name = "modules", description = "Installed and built-in modules"),
        (name = "events", description = "The event bus and the durable streams"),
        (name = "tools", description = "The tool registry"),
        (name = "memory", description = "ASH's memory"),
        (name = "providers", description = "LLM providers and what they cost"),
        (name = "chat", description = "Talking to ASH"),
        (name = "openai", description = "The OpenAI API, answered by ASH"),
    )
)]
struct ApiDoc;

/// The API's routes and their OpenAPI document.
fn api() -> (axum::Router<ApiState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(modules::list))
        .routes(routes!(modules::get_one))
        .routes(routes!(modules::reload))
        .routes(routes!(modules::load))
        .routes(routes!(modules::remove))
        .routes(routes!(modules::enable))
        .routes(routes!(modules::disable))
        .routes(routes!(modules::rollback))
        .routes(routes!(modules::logs))
        .routes(routes!(tools::list))
        .routes(routes!(tools::call))
        .routes(routes!(events::publish))
        .routes(routes!(events::sse))
        .routes(routes!(events::ws))
        .routes(routes!(events::query_stream))
        .routes(routes!(events::bus))
        .routes(routes!(memory::recall))
        .routes(routes!(memory::remember))
        .routes(routes!(memory::forget))
        .routes(routes!(memory::stats))
        .routes(routes!(providers::list))
        .routes(routes!(providers::test))
        .routes(routes!(providers::costs))
        .routes(routes!(chat::chat))
        .routes(routes!(openai::models))
        .routes(routes!(openai::model))
        .routes(routes!(openai::completions))
        .routes(routes!(metrics::metrics))
        .split_for_parts()
}

/// The OpenAPI document (as served at `/api/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = api();
    let (_, extra) = OpenApiRouter::<ApiState>::new()
        .routes(routes!(health))
        .routes(routes!(openapi_json))
        .split_for_parts();
    doc.merge(extra);
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc
}

/// The router with every endpoint, the dashboard and the security layers.
pub fn router(state: ApiState) -> axum::Router {
    let (protected, _) = api();
    let protected = protected
        .route("/api/openapi.json", axum::routing::get(openapi_json))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            security::auth,
        ));
    let app = axum::Router::new()
        .route("/api/v1/health", axum::routing::get(health))
        .merge(protected)
        .merge(dashboard::routes())
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; /api/openapi.json lists them",
            )
        })
        .layer(DefaultBodyLimit::max(state.settings.max_body))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(axum::middleware::from_fn(error::json_errors))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            security::origin,
        ))
        .layer(axum::middleware::from_fn(security::headers));
    let app = match security::cors(&state.settings) {
        Some(cors) => app.layer(cors),
        None => app,
    };
    app.with_state(state)
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
