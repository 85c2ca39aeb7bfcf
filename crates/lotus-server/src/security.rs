//! The bearer token, the origin check, CORS and the security headers.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::{ApiError, ApiSettings, ApiState};

/// The WebSocket subprotocol the API speaks; a browser sends the token beside it as
/// `bearer.TOKEN` (it cannot set headers on a WebSocket).
pub(crate) const WS_PROTOCOL: &str = "lotus.v1";

/// The token a request carries: `Authorization: Bearer T`, or the subprotocol `bearer.T` of a
/// WebSocket upgrade.
fn presented(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (scheme, token) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(token.trim());
    }
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix("bearer."))
}

/// Lets through only requests with the token.
pub(crate) async fn auth(State(st): State<ApiState>, req: Request, next: Next) -> Response {
    match presented(req.headers()) {
        Some(t) if constant_time_eq::constant_time_eq(t.as_bytes(), st.token.as_bytes()) => {
            next.run(req).await
        }
        Some(_) => ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the bearer token is wrong; it is in $LOTUS_HOME/token (`lotus dashboard` prints a sign-in link)",
        )
        .into_response(),
        None => ApiError::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing `Authorization: Bearer TOKEN`; the token is in $LOTUS_HOME/token",
        )
        .into_response(),
    }
}

/// Whether `origin` is the API's own (the `Host` the request was sent to) or one that
/// `[api] cors_origins` allows.
fn origin_allowed(origin: &str, headers: &HeaderMap, settings: &ApiSettings) -> bool {
    let own = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|host| {
            origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .is_some_and(|o| o.eq_ignore_ascii_case(host))
        });
    own || settings.cors_origins.iter().any(|o| o == origin)
}

/// Refuses requests a browser sends from another site's page (a cross-site WebSocket, a form
/// post), unless `[api] cors_origins` lists that site. Requests without `Origin` (curl, the
/// SDKs, same-origin GETs) pass.
pub(crate) async fn origin(State(st): State<ApiState>, req: Request, next: Next) -> Response {
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        if !origin_allowed(origin, req.headers(), &st.settings) {
            return ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "origin_not_allowed",
                format!(
                    "requests from pages of `{origin}` are refused; add it to `[api] cors_origins` in lotus.toml to allow them"
                ),
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// CORS for the origins `[api] cors_origins` lists (none by default: browsers then only
/// reach the API from its own pages).
pub(crate) fn cors(settings: &ApiSettings) -> Option<CorsLayer> {
    if settings.cors_origins.is_empty() {
        return None;
    }
    let origins: Vec<HeaderValue> = settings
        .cors_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            // The origins are fixed; their clients' own headers (an SDK's) may come along.
            .allow_headers(tower_http::cors::AllowHeaders::mirror_request())
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// Headers on every answer: no sniffing, no referrer, no framing, nothing cached.
pub(crate) async fn headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

/// The bearer scheme in the OpenAPI document.
pub(crate) struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The token in $LOTUS_HOME/token. A browser's WebSocket sends it as the subprotocol `bearer.TOKEN` beside `lotus.v1`.",
                    ))
                    .build(),
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_from_the_header_or_the_websocket_subprotocol() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(presented(&h), Some("abc"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  abc "),
        );
        assert_eq!(presented(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(presented(&h), None);
        let mut h = HeaderMap::new();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("lotus.v1, bearer.xyz"),
        );
        assert_eq!(presented(&h), Some("xyz"));
        assert_eq!(presented(&HeaderMap::new()), None);
    }

    #[test]
    fn only_the_own_origin_and_listed_ones_pass() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:7077"));
        let none = ApiSettings::default();
        assert!(origin_allowed("http://127.0.0.1:7077", &h, &none));
        assert!(!origin_allowed("http://evil.example", &h, &none));
        assert!(!origin_allowed("http://127.0.0.1:7078", &h, &none));
        let listed = ApiSettings {
            cors_origins: vec!["http://localhost:3000".into()],
            ..ApiSettings::default()
        };
        assert!(origin_allowed("http://localhost:3000", &h, &listed));
    }
}
