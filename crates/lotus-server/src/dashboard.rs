//! The dashboard: static files built into the binary (plain HTML, CSS and JavaScript: building
//! LOTUS needs no Node toolchain). They hold no data, so they are served without the token; the
//! page asks for it and sends it with every API call.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::{ApiError, ApiState};

#[derive(rust_embed::RustEmbed)]
#[folder = "dashboard/"]
struct Assets;

/// Only the page's own files and the API: no inline script or style, no other site.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or_default() {
        "html" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "json" => "application/json",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

fn file(name: &str) -> Response {
    let Some(f) = Assets::get(name) else {
        return ApiError::not_found(format!("no dashboard file `{name}`")).into_response();
    };
    let mut resp = (StatusCode::OK, f.data.into_owned()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(name)),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    // The files change with the binary: revalidate by content hash.
    let etag = format!(
        "\"{}\"",
        f.metadata
            .sha256_hash()
            .iter()
            .take(12)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// `/`, `/assets/NAME`, `/favicon.svg`.
pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(|| async { file("index.html") }))
        .route("/favicon.svg", get(|| async { file("favicon.svg") }))
        .route(
            "/assets/{name}",
            get(|Path(name): Path<String>| async move { file(&name) }),
        )
}
