//! `GET /metrics`: Prometheus (OpenMetrics text). The modules, the bus and the spending are
//! read when scraped; HTTP requests are counted as they are served.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::atomic::AtomicU64;

use lotus_nucleus::ModuleInfo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::{ApiError, ApiState};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Route {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Path {
    route: String,
}

/// What the API counts as it serves.
pub(crate) struct Metrics {
    requests: Family<Route, Counter>,
    latency: Family<Path, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_1, 4.0, 10))
            }),
        }
    }
}

/// Counts a request by method, route (the pattern, not the path: no ids in labels) and status.
pub(crate) async fn track(State(st): State<ApiState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    // Only the methods the API knows: a client inventing methods must not grow the labels.
    let method = match *req.method() {
        Method::GET | Method::POST | Method::DELETE | Method::OPTIONS | Method::HEAD => {
            req.method().to_string()
        }
        _ => "other".to_owned(),
    };
    let t0 = Instant::now();
    let resp = next.run(req).await;
    st.metrics
        .latency
        .get_or_create(&Path {
            route: route.clone(),
        })
        .observe(t0.elapsed().as_secs_f64());
    st.metrics
        .requests
        .get_or_create(&Route {
            method,
            route,
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModuleLabel {
    module: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    module: String,
    state: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;
/// A module counter: name, help, how to read it.
type ModuleCounter = (&'static str, &'static str, fn(&ModuleInfo) -> u64);
type FloatCounter = Counter<f64, AtomicU64>;

fn gauge(v: f64) -> FloatGauge {
    let g = FloatGauge::default();
    g.set(v);
    g
}

fn counter(v: f64) -> FloatCounter {
    let c = FloatCounter::default();
    c.inc_by(v);
    c
}

/// The registry of one scrape: what is true now, then the request counters.
fn snapshot(st: &ApiState) -> Registry {
    let mut r = Registry::with_prefix("lotus");
    r.register(
        "uptime_seconds",
        "Seconds since the nucleus started",
        gauge(st.started.elapsed().as_secs_f64()),
    );
    // This node's modules (another node exports its own).
    let node = st.nucleus.bus().bridge().map(|b| b.node().to_owned());
    let mods: Vec<ModuleInfo> = st
        .nucleus
        .modules()
        .into_iter()
        .filter(|m| m.node == node)
        .collect();
    let counters: [ModuleCounter; 5] = [
        ("module_events_handled", "Events a module handled", |m| {
            m.events_handled
        }),
        (
            "module_events_dropped",
            "Events a drop-oldest mailbox dropped",
            |m| m.events_dropped,
        ),
        ("module_restarts", "Restarts after crashes", |m| m.restarts),
        (
            "module_crashes",
            "Crashes (panics, traps, failed starts)",
            |m| m.crashes,
        ),
        ("module_errors", "Handler errors", |m| m.errors),
    ];
    for (name, help, value) in counters {
        let fam = Family::<ModuleLabel, FloatCounter>::default();
        for m in &mods {
            fam.get_or_create(&ModuleLabel {
                module: m.name.clone(),
            })
            .inc_by(value(m) as f64);
        }
        r.register(name, help, fam);
    }
    let depth = Family::<ModuleLabel, FloatGauge>::default();
    let states = Family::<StateLabel, FloatGauge>::default();
    for m in &mods {
        depth
            .get_or_create(&ModuleLabel {
                module: m.name.clone(),
            })
            .set(m.queue_depth as f64);
        states
            .get_or_create(&StateLabel {
                module: m.name.clone(),
                state: m.state.to_string(),
            })
            .set(1.0);
    }
    r.register(
        "module_queue_depth",
        "Events waiting in a module's mailbox",
        depth,
    );
    r.register("module_state", "1 for the state each module is in", states);

    let stats = serde_json::to_value(st.nucleus.bus().stats()).unwrap_or_default();
    if let Some(o) = stats.as_object() {
        for (k, v) in o {
            if let Some(n) = v.as_f64() {
                r.register(format!("bus_{k}"), format!("Bus counter `{k}`"), counter(n));
            }
        }
    }
    if let Some(ledger) = st.providers.as_ref().and_then(|p| p.router.ledger())
        && let Ok((today, month)) = ledger.spent()
    {
        r.register(
            "provider_spent_today_usd",
            "USD spent on providers today (UTC)",
            gauge(today),
        );
        r.register(
            "provider_spent_month_usd",
            "USD spent on providers this month (UTC)",
            gauge(month),
        );
    }
    r.register(
        "http_requests",
        "API requests by method, route and status",
        st.metrics.requests.clone(),
    );
    r.register(
        "http_request_duration_seconds",
        "API request latency by route",
        st.metrics.latency.clone(),
    );
    r
}

/// Prometheus metrics: modules (events, drops, restarts, crashes, errors, queue depth, state),
/// the bus's counters, spending, API requests.
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text")))]
pub(crate) async fn metrics(State(st): State<ApiState>) -> Result<Response, ApiError> {
    let registry = snapshot(&st);
    let mut out = String::new();
    encode(&mut out, &registry).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            e.to_string(),
        )
    })?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response())
}
