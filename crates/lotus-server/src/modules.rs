//! `/api/v1/modules`: list, inspect, reload, load, remove, enable, disable, roll back, logs.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use lotus_nucleus::{ModuleInfo, ReloadReport};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{ErrorBody, parse_json};
use crate::{ApiError, ApiState, LogLine};

/// Body of `POST /api/v1/modules/{name}/rollback`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The version to go back to (default: the one installed before the active one).
    #[serde(default)]
    pub to: Option<String>,
}

/// What a rollback did.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rollback {
    /// The module.
    pub module: String,
    /// The version now active.
    pub version: String,
    /// Its content hash in the module store.
    pub hash: String,
    /// The live reload onto it, when the module was running.
    pub reload: Option<ReloadReport>,
}

fn no_module(name: &str) -> ApiError {
    ApiError::not_found(format!(
        "no module named `{name}`; GET /api/v1/modules lists them"
    ))
}

/// Every module with its state and counters (also those on other nodes).
#[utoipa::path(get, path = "/api/v1/modules", tag = "modules",
    responses((status = 200, body = [ModuleInfo]), (status = 401, body = ErrorBody)))]
pub(crate) async fn list(State(st): State<ApiState>) -> Json<Vec<ModuleInfo>> {
    Json(st.nucleus.modules())
}

/// One module.
#[utoipa::path(get, path = "/api/v1/modules/{name}", tag = "modules",
    params(("name" = String, Path, description = "The module")),
    responses((status = 200, body = ModuleInfo), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_one(
    State(st): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<ModuleInfo>, ApiError> {
    st.nucleus
        .module(&name)
        .map(Json)
        .ok_or_else(|| no_module(&name))
}

/// Swaps in the module's current code and manifest, live: no event lost or handled twice.
#[utoipa::path(post, path = "/api/v1/modules/{name}/reload", tag = "modules",
    params(("name" = String, Path, description = "The module")),
    responses((status = 200, body = ReloadReport), (status = 404, body = ErrorBody),
        (status = 409, description = "not running", body = ErrorBody),
        (status = 422, description = "the new version failed; the old one runs on", body = ErrorBody)))]
pub(crate) async fn reload(
    State(st): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<ReloadReport>, ApiError> {
    Ok(Json(st.nucleus.reload(&name).await?))
}

/// Loads and starts a module folder installed while the nucleus runs.
#[utoipa::path(post, path = "/api/v1/modules/{name}/load", tag = "modules",
    params(("name" = String, Path, description = "The module")),
    responses((status = 200, body = ModuleInfo), (status = 409, body = ErrorBody)))]
pub(crate) async fn load(
    State(st): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<ModuleInfo>, ApiError> {
    Ok(Json(st.nucleus.load(&name).await?))
}

/// Stops a module and forgets it (until the next start).
#[utoipa::path(post, path = "/api/v1/modules/{name}/remove", tag = "modules",
    params(("name" = String, Path, description = "The module")),
    responses((status = 200, description = "`{\"removed\": NAME}`"), (status = 409, body = ErrorBody)))]
pub(crate) async fn remove(
    State(st): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    st.nucleus.remove(&name).await?;
    Ok(Json(json!({"removed": name})))
}

/// Starts a module that is off and keeps it on across restarts.
#[utoipa::path(post, path = "/api/v1/modules/{name}/enable", tag = "modules",
    params(("name" = String, Path, description = "The module")),
    responses((status = 200, body = ModuleInfo), (status = 404, body = ErrorBody),
        (status = 409, description = "a dependency does not run, or it belongs to another node", body = ErrorBody)))]
pub(crate) async fn enable(
    State(st): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<ModuleInfo>, ApiError> {
    Ok(Json(st.nucleus.enable(&name).await?))
}

/// Stops a module and keeps it off across restarts.
#[utoipa::path(post, path = "/api/v1/modules/{name}/disable", tag = "modules",
    params(("name" = String, Path, description = "The module")),
    responses((status = 200, body = ModuleInfo), (status = 404, body = ErrorBody),
        (status = 409, description = "running modules depend on it", body = ErrorBody)))]
pub(crate) async fn disable(
    State(st): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<ModuleInfo>, ApiError> {
    Ok(Json(st.nucleus.disable(&name).await?))
}

/// Goes back to an earlier installed version (the one before by default), live.
#[utoipa::path(post, path = "/api/v1/modules/{name}/rollback", tag = "modules",
    params(("name" = String, Path, description = "The module")),
    request_body(content = RollbackRequest, description = "optional"),
    responses((status = 200, body = Rollback),
        (status = 404, description = "no such version", body = ErrorBody)))]
pub(crate) async fn rollback(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Rollback>, ApiError> {
    let req: Option<RollbackRequest> = parse_json(&body, "the rollback (`{\"to\"?: VERSION}`)")?;
    let admin = st.admin.as_ref().ok_or_else(|| {
        ApiError::unavailable("this server cannot roll modules back (no module store)")
    })?;
    let to = req.unwrap_or_default().to;
    Ok(Json(admin.rollback(&name, to.as_deref()).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub(crate) struct LogsParams {
    /// The newest lines to return (default 200, at most 500).
    limit: Option<usize>,
}

/// The module's newest log lines, oldest first.
#[utoipa::path(get, path = "/api/v1/modules/{name}/logs", tag = "modules",
    params(("name" = String, Path, description = "The module"), LogsParams),
    responses((status = 200, body = [LogLine]), (status = 404, body = ErrorBody)))]
pub(crate) async fn logs(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    Query(p): Query<LogsParams>,
) -> Result<Json<Vec<LogLine>>, ApiError> {
    if st.nucleus.module(&name).is_none() {
        return Err(no_module(&name));
    }
    Ok(Json(st.logs.recent(&name, p.limit.unwrap_or(200).min(500))))
}
