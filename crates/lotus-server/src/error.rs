//! Errors as JSON with a stable code, also for what axum itself refuses (a body over the limit,
//! a query that does not parse, a method the path does not take).

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use lotus_nucleus::{NucleusError, ToolError};
use serde_json::json;

/// An API error: HTTP status, stable code, message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

/// The error document.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct ErrorBody {
    error: ErrorDetail,
}

/// What went wrong.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct ErrorDetail {
    /// Stable: `unauthorized`, `not_found`, `invalid_json`, `invalid_arguments`,
    /// `payload_too_large`, …
    code: String,
    /// What was wrong and what to do.
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

    /// 400 with `code`.
    pub(crate) fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404 `not_found`.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 503 `unavailable`.
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The JSON document.
    pub(crate) fn body(&self) -> serde_json::Value {
        json!({"error": {"code": self.code, "message": self.message}})
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
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

impl From<NucleusError> for ApiError {
    fn from(e: NucleusError) -> Self {
        let (status, code) = match &e {
            NucleusError::NoSuchModule(_) => (StatusCode::NOT_FOUND, "not_found"),
            NucleusError::NotRunning { .. } => (StatusCode::CONFLICT, "not_running"),
            NucleusError::AlreadyLoaded(_) => (StatusCode::CONFLICT, "already_loaded"),
            NucleusError::Refused { .. } => (StatusCode::CONFLICT, "refused"),
            NucleusError::Topic(_) | NucleusError::Reserved(_) => {
                (StatusCode::BAD_REQUEST, "invalid_topic")
            }
            NucleusError::ReloadFailed { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "reload_failed")
            }
            NucleusError::Log(_) | NucleusError::State(_) | NucleusError::Setup(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "storage")
            }
        };
        Self::new(status, code, e.to_string())
    }
}

/// A JSON body, or a clear error naming `what` was expected.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    body: &Bytes,
    what: &str,
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return serde_json::from_str("null").map_err(|e| {
            ApiError::bad("invalid_json", format!("{what}: the body is empty ({e})"))
        });
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad("invalid_json", format!("{what} is not valid: {e}")))
}

/// Turns the plain-text refusals of axum's extractors and routers into the JSON error document.
pub(crate) async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_text = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| ct.starts_with("text/plain"));
    if !is_text {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let (code, message) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => (
            "payload_too_large",
            "the request body is larger than the API accepts (`[api] max_body` in lotus.toml)"
                .to_owned(),
        ),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "this endpoint does not take that method; /api/openapi.json lists them".to_owned(),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported_media_type", text),
        StatusCode::NOT_FOUND => ("not_found", text),
        s if s.is_client_error() => ("bad_request", text),
        _ => ("internal", text),
    };
    let message = if message.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        message
    };
    let mut out = Response::from_parts(
        parts,
        Body::from(json!({"error": {"code": code, "message": message}}).to_string()),
    );
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    out.headers_mut().remove(header::CONTENT_LENGTH);
    out
}
