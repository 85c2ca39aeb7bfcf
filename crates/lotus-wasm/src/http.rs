//! Outbound HTTP for modules granted `permissions.hosts`.
//!
//! Every hop is authorized by the nucleus before a connection is made: the first URL and each
//! redirect target (redirects are followed here, not by the client, so none slips past the
//! check). Bodies are read in chunks and capped; the whole exchange is bounded by the time the
//! module's call has left.

use std::time::Duration;

use lotus_nucleus::Context;
use reqwest::{Method, Url};

/// Largest response body handed to a module.
pub const MAX_BODY: usize = 16 << 20;
/// Most redirects followed for one request.
const MAX_REDIRECTS: usize = 5;

/// A request, version-independent.
pub struct Request {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A response, version-independent.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The client modules share: no automatic redirects, no proxies from the environment.
pub fn client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!("lotus-module/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Checks `url` against the module's grants (auditing a refusal).
async fn authorize(cx: &Context, url: &Url) -> Result<(), String> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "`{url}`: only http:// and https:// URLs can be fetched"
        ));
    }
    let host = match url.host() {
        Some(url::Host::Domain(d)) => d.to_owned(),
        Some(url::Host::Ipv4(a)) => a.to_string(),
        Some(url::Host::Ipv6(a)) => a.to_string(),
        None => return Err(format!("`{url}` names no host")),
    };
    let port = url
        .port_or_known_default()
        .ok_or_else(|| format!("`{url}` names no port"))?;
    cx.authorize_host(&host, port).await
}

/// Sends `req` for the module of `cx`, within `budget`.
pub async fn fetch(
    client: &reqwest::Client,
    cx: &Context,
    req: Request,
    budget: Duration,
) -> Result<Response, String> {
    if budget.is_zero() {
        return Err("the call has no time left for a request".into());
    }
    match tokio::time::timeout(budget, exchange(client, cx, req)).await {
        Ok(out) => out,
        Err(_) => Err(format!(
            "no complete response within {} ms (the call's time limit or the request's timeout)",
            budget.as_millis()
        )),
    }
}

async fn exchange(
    client: &reqwest::Client,
    cx: &Context,
    req: Request,
) -> Result<Response, String> {
    let mut method = Method::from_bytes(req.method.as_bytes())
        .map_err(|_| format!("`{}` is not an HTTP method", req.method))?;
    let mut url = Url::parse(&req.url).map_err(|e| format!("`{}` is not a URL: {e}", req.url))?;
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in &req.headers {
        let n = reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("`{name}` is not a header name"))?;
        let v = reqwest::header::HeaderValue::from_str(value)
            .map_err(|_| format!("the value of header `{name}` is not valid"))?;
        headers.append(n, v);
    }
    let mut body = Some(req.body);
    for _ in 0..=MAX_REDIRECTS {
        authorize(cx, &url).await?;
        let mut builder = client
            .request(method.clone(), url.clone())
            .headers(headers.clone());
        if let Some(b) = body.as_ref().filter(|b| !b.is_empty()) {
            builder = builder.body(b.clone());
        }
        let mut resp = builder.send().await.map_err(|e| describe(&url, &e))?;
        let status = resp.status();
        if status.is_redirection()
            && let Some(location) = resp.headers().get(reqwest::header::LOCATION)
        {
            let location = location
                .to_str()
                .map_err(|_| format!("{url} redirected to an unreadable location"))?;
            url = url
                .join(location)
                .map_err(|e| format!("{url} redirected to `{location}`, not a URL: {e}"))?;
            // 303, and 301/302 after a POST, turn into a GET without a body (as browsers do).
            if status == reqwest::StatusCode::SEE_OTHER
                || (matches!(status.as_u16(), 301 | 302) && method == Method::POST)
            {
                method = Method::GET;
                body = None;
            }
            continue;
        }
        let headers = resp
            .headers()
            .iter()
            .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let mut data = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| describe(&url, &e))? {
            if data.len() + chunk.len() > MAX_BODY {
                return Err(format!(
                    "the response of {url} is larger than {} MiB",
                    MAX_BODY >> 20
                ));
            }
            data.extend_from_slice(&chunk);
        }
        return Ok(Response {
            status: status.as_u16(),
            headers,
            body: data,
        });
    }
    Err(format!(
        "more than {MAX_REDIRECTS} redirects, last to {url}"
    ))
}

fn describe(url: &Url, e: &reqwest::Error) -> String {
    format!("request to {url} failed: {}", lotus_core::error_chain(e))
}
