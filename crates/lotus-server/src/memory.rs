//! `/api/v1/memory`: recall, remember, forget, stats — through the memory module's tools, so
//! they hold whatever backends the module runs on (and reach it on another node).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{ErrorBody, parse_json};
use crate::{ApiError, ApiState};

async fn memory(st: &ApiState, tool: &str, args: Value) -> Result<Json<Value>, ApiError> {
    Ok(Json(st.nucleus.call_tool(tool, args).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub(crate) struct RecallParams {
    /// What to look for.
    query: String,
    /// Hits at most (default 10).
    k: Option<usize>,
    /// Whose memories (default: the memory module's default user).
    user: Option<String>,
    /// Also superseded values of facts.
    include_superseded: Option<bool>,
}

/// The memories that best answer a query (keyword and vector matches fused).
#[utoipa::path(get, path = "/api/v1/memory/recall", tag = "memory", params(RecallParams),
    responses((status = 200, description = "hits, best first: `{memory, score, …}`", body = [Object]),
        (status = 400, body = ErrorBody), (status = 404, description = "no memory module", body = ErrorBody)))]
pub(crate) async fn recall(
    State(st): State<ApiState>,
    Query(p): Query<RecallParams>,
) -> Result<Json<Value>, ApiError> {
    if p.query.trim().is_empty() {
        return Err(ApiError::bad(
            "invalid_arguments",
            "say what to recall: `query=…`",
        ));
    }
    let mut args = json!({"query": p.query, "k": p.k.unwrap_or(10)});
    if let Some(u) = p.user {
        args["user"] = u.into();
    }
    if let Some(s) = p.include_superseded {
        args["include_superseded"] = s.into();
    }
    memory(&st, "memory.recall", args).await
}

/// Remembers a text (`{"text", "user"?, "kind"?, "importance"?, "subject"?, "attribute"?,
/// "metadata"?}`); a newer fact supersedes the older one.
#[utoipa::path(post, path = "/api/v1/memory/remember", tag = "memory",
    request_body(content = Object, description = "`{\"text\": …, \"user\"?: …}` and the other arguments of memory.remember"),
    responses((status = 200, description = "what was stored or superseded", body = Object),
        (status = 400, body = ErrorBody)))]
pub(crate) async fn remember(
    State(st): State<ApiState>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let args: Value = parse_json(&body, "the memory (`{\"text\": …}`)")?;
    memory(&st, "memory.remember", args).await
}

/// Forgets memories by id (`{"ids": […]}`), by kind, subject or attribute, or all of a user's
/// (`{"all": true}`), in every tier. It cannot be undone.
#[utoipa::path(post, path = "/api/v1/memory/forget", tag = "memory",
    request_body(content = Object, description = "`{\"ids\"?: […], \"user\"?, \"kind\"?, \"subject\"?, \"attribute\"?, \"all\"?}`"),
    responses((status = 200, description = "how many were forgotten", body = Object),
        (status = 400, body = ErrorBody)))]
pub(crate) async fn forget(
    State(st): State<ApiState>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let args: Value = parse_json(&body, "what to forget (`{\"ids\": [ID, …]}`)")?;
    memory(&st, "memory.forget", args).await
}

/// Counts per tier and the backends in use.
#[utoipa::path(get, path = "/api/v1/memory/stats", tag = "memory",
    responses((status = 200, body = Object)))]
pub(crate) async fn stats(State(st): State<ApiState>) -> Result<Json<Value>, ApiError> {
    memory(&st, "memory.stats", json!({})).await
}
