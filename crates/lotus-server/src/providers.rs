//! `/api/v1/providers`: what is configured and answers, a test call, what it all cost.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use lotus_providers::ledger::CostReport;
use lotus_providers::setup::{ProviderTest, ProvidersReport, Setup};
use lotus_providers::{ErrorKind, ProviderError};
use serde::Deserialize;
use std::sync::Arc;

use crate::error::ErrorBody;
use crate::{ApiError, ApiState};

fn setup(st: &ApiState) -> Result<&Arc<Setup>, ApiError> {
    st.providers
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("this server has no providers set up"))
}

impl From<ProviderError> for ApiError {
    fn from(e: ProviderError) -> Self {
        let (status, code) = match e.kind {
            ErrorKind::NotConfigured => (StatusCode::BAD_REQUEST, "not_configured"),
            ErrorKind::Budget => (StatusCode::PAYMENT_REQUIRED, "budget"),
            _ => (StatusCode::BAD_GATEWAY, "provider"),
        };
        Self::new(status, code, e.to_string())
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
pub(crate) struct ListParams {
    /// Ask each configured provider whether it answers (up to 5 s).
    check: Option<bool>,
}

/// Every provider, configured or not, and the default chain.
#[utoipa::path(get, path = "/api/v1/providers", tag = "providers", params(ListParams),
    responses((status = 200, body = ProvidersReport)))]
pub(crate) async fn list(
    State(st): State<ApiState>,
    Query(p): Query<ListParams>,
) -> Result<Json<ProvidersReport>, ApiError> {
    let setup = setup(&st)?;
    let check = p.check.unwrap_or(false).then_some(Duration::from_secs(5));
    Ok(Json(setup.report(check).await))
}

/// Asks a provider (or a model, by name or alias) to say OK.
#[utoipa::path(post, path = "/api/v1/providers/{name}/test", tag = "providers",
    params(("name" = String, Path, description = "a provider, or a model name or alias")),
    responses((status = 200, body = ProviderTest),
        (status = 400, description = "not configured", body = ErrorBody),
        (status = 502, description = "the provider failed", body = ErrorBody)))]
pub(crate) async fn test(
    State(st): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<ProviderTest>, ApiError> {
    Ok(Json(setup(&st)?.test(&name, "api").await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub(crate) struct CostParams {
    /// Days back, today included (default 30, at most 366).
    days: Option<u32>,
}

/// What the providers cost, by day, provider, model and module; spent today and this month.
#[utoipa::path(get, path = "/api/v1/providers/costs", tag = "providers", params(CostParams),
    responses((status = 200, body = CostReport)))]
pub(crate) async fn costs(
    State(st): State<ApiState>,
    Query(p): Query<CostParams>,
) -> Result<Json<CostReport>, ApiError> {
    let ledger = setup(&st)?
        .router
        .ledger()
        .ok_or_else(|| ApiError::unavailable("this server keeps no cost ledger"))?
        .clone();
    let days = p.days.unwrap_or(30).clamp(1, 366);
    tokio::task::spawn_blocking(move || ledger.report(days))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map(Json)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", e))
}
