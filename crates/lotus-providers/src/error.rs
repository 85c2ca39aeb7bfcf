//! Provider errors: what went wrong, at which provider, and whether trying again may help.

use std::time::Duration;

/// What kind of failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The key is missing, wrong or lacks access (401/403).
    Auth,
    /// Too many requests (429); `retry_after` when the provider said how long to wait.
    RateLimited {
        /// How long the provider asked to wait.
        retry_after: Option<Duration>,
    },
    /// The provider is overloaded (503/529) or failed inside (5xx).
    Server {
        /// How long the provider asked to wait.
        retry_after: Option<Duration>,
    },
    /// No answer in time.
    Timeout,
    /// Could not connect, or the connection broke.
    Network,
    /// The request was refused as invalid (400/404/422): fixing the request is the only way.
    BadRequest,
    /// The answer could not be understood (malformed JSON or SSE, a stream cut short).
    Protocol,
    /// The provider is not set up (no key, no model file, unknown provider or model).
    NotConfigured,
    /// A budget would be exceeded.
    Budget,
}

/// A failure of a provider call.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{provider}: {message}")]
pub struct ProviderError {
    /// Which provider (`openai`, `anthropic`, …; `router` for routing failures).
    pub provider: String,
    /// What kind of failure.
    pub kind: ErrorKind,
    /// What happened and, where it helps, what to do.
    pub message: String,
    /// The HTTP status, when there was one.
    pub status: Option<u16>,
}

impl ProviderError {
    /// A new error.
    pub fn new(provider: &str, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            provider: provider.to_owned(),
            kind,
            message: message.into(),
            status: None,
        }
    }

    /// Whether the same request may succeed if tried again later.
    pub fn retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::RateLimited { .. }
                | ErrorKind::Server { .. }
                | ErrorKind::Timeout
                | ErrorKind::Network
        )
    }

    /// Whether another provider may succeed where this one failed (anything but a budget stop or
    /// a request no provider would take).
    pub fn may_fall_back(&self) -> bool {
        !matches!(self.kind, ErrorKind::Budget)
    }

    /// How long the provider asked to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.kind {
            ErrorKind::RateLimited { retry_after } | ErrorKind::Server { retry_after } => {
                retry_after
            }
            _ => None,
        }
    }

    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self.kind {
            ErrorKind::Auth => "auth",
            ErrorKind::RateLimited { .. } => "rate_limited",
            ErrorKind::Server { .. } => "server",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Network => "network",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Protocol => "protocol",
            ErrorKind::NotConfigured => "not_configured",
            ErrorKind::Budget => "budget",
        }
    }

    /// The error for an HTTP error status, with the provider's own message from `body` when it
    /// has one, and the wait from `Retry-After`.
    pub fn from_status(
        provider: &str,
        status: u16,
        retry_after: Option<Duration>,
        body: &str,
    ) -> Self {
        let detail = provider_message(body);
        // A spent quota is refused with 429 too, but waiting does not help.
        let quota =
            body.contains("insufficient_quota") || body.contains("credit_balance_exhausted");
        let kind = match status {
            401 | 403 => ErrorKind::Auth,
            402 => ErrorKind::Auth,
            429 if quota => ErrorKind::Auth,
            408 => ErrorKind::Timeout,
            429 => ErrorKind::RateLimited { retry_after },
            500..=599 => ErrorKind::Server { retry_after },
            _ => ErrorKind::BadRequest,
        };
        let hint = match kind {
            ErrorKind::Auth if quota || status == 402 => " (check the plan and billing)",
            ErrorKind::Auth => " (check the API key)",
            _ => "",
        };
        Self {
            status: Some(status),
            ..Self::new(provider, kind, format!("HTTP {status}: {detail}{hint}"))
        }
    }
}

/// The message inside a provider's error body (`{"error":{"message":…}}`, `{"error":"…"}`,
/// `{"message":…}`), else the body itself, shortened.
fn provider_message(body: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let found = parsed.as_ref().and_then(|v| {
        let e = v.get("error").unwrap_or(v);
        e.as_str()
            .map(str::to_owned)
            .or_else(|| e.get("message").and_then(|m| m.as_str()).map(str::to_owned))
    });
    let text = found.unwrap_or_else(|| body.trim().to_owned());
    if text.is_empty() {
        return "(no details)".into();
    }
    let mut short: String = text.chars().take(300).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    short
}

/// Parses a `Retry-After` header: seconds (`"2"`, `"1.5"`) or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(3600.0)));
    }
    let when = httpdate(v)?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form HTTP servers send.
fn httpdate(s: &str) -> Option<std::time::SystemTime> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)? as u64
        + 1;
    let (day, year): (u64, u64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<u64> = time
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, sec] = hms.as_slice() else {
        return None;
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, mo) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(days * 86_400 + h * 3600 + m * 60 + sec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(
            httpdate("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(std::time::UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[test]
    fn statuses_map_to_kinds_with_the_providers_message() {
        let e = ProviderError::from_status(
            "openai",
            429,
            Some(Duration::from_secs(3)),
            r#"{"error":{"message":"Rate limit reached","type":"requests"}}"#,
        );
        assert!(e.retryable());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(e.to_string(), "openai: HTTP 429: Rate limit reached");
        let e =
            ProviderError::from_status("ollama", 404, None, r#"{"error":"model 'x' not found"}"#);
        assert!(!e.retryable());
        assert_eq!(e.code(), "bad_request");
        assert!(e.message.contains("model 'x' not found"));
        let e = ProviderError::from_status("anthropic", 401, None, "");
        assert_eq!(e.kind, ErrorKind::Auth);
        assert!(e.message.contains("check the API key"));
    }
}
