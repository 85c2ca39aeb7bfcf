//! `/api/v1/tools`: the registry and calls.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use lotus_core::ToolSpec;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ErrorBody, parse_json};
use crate::{ApiError, ApiState};

/// Answer of a tool call.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CallResponse {
    /// The tool's JSON result.
    #[schema(value_type = Object)]
    pub result: Value,
}

/// Every tool with its argument schema (also those other nodes serve).
#[utoipa::path(get, path = "/api/v1/tools", tag = "tools", responses((status = 200, body = [ToolSpec])))]
pub(crate) async fn list(State(st): State<ApiState>) -> Json<Vec<ToolSpec>> {
    Json(st.nucleus.tools())
}

/// Calls a tool with the body as its arguments, under the tool's time limit.
#[utoipa::path(post, path = "/api/v1/tools/{name}/call", tag = "tools",
    params(("name" = String, Path, description = "`module.tool`")),
    request_body(content = Object, description = "The arguments, as the tool's schema says"),
    responses((status = 200, body = CallResponse),
        (status = 400, description = "invalid JSON or arguments", body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, description = "the tool failed", body = ErrorBody),
        (status = 504, description = "timed out", body = ErrorBody)))]
pub(crate) async fn call(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<CallResponse>, ApiError> {
    let args: Value = parse_json(&body, "the tool arguments")?;
    let result = st.nucleus.call_tool(&name, args).await?;
    Ok(Json(CallResponse { result }))
}
