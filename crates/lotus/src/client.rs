//! The CLI's client of the control API.

use std::time::Duration;

use anyhow::{Result, anyhow};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::Config;
use crate::exit::{CliError, ExitCode};
use crate::home::Home;

/// A connection to the running nucleus of one home.
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
    home: String,
}

impl Client {
    /// Finds the running nucleus from its run file and reads the token. The token is only ever
    /// sent to the address a live nucleus wrote: never to whatever else listens on a port.
    pub fn new(home: &Home, config: &Config) -> Result<Self> {
        let run = home.run_info().filter(|r| pid_alive(r.pid));
        let mut listen = run.as_ref().map_or(config.api.listen, |r| r.listen);
        // A nucleus on every address is reached here on loopback.
        if listen.ip().is_unspecified() {
            listen.set_ip(if listen.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        let not_running = || {
            CliError::new(
                ExitCode::NotRunning,
                format!(
                    "no nucleus is running for {} (nothing answers on http://{listen}); start one with `lotus up`",
                    home.root().display()
                ),
            )
        };
        if run.is_none() {
            return Err(not_running().into());
        }
        let token = home.read_token().map_err(|_| not_running())?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .build()?;
        Ok(Self {
            base: format!("http://{listen}"),
            token,
            http,
            home: home.root().display().to_string(),
        })
    }

    /// `http://ADDR` of the running nucleus.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn unreachable(&self, e: &reqwest::Error) -> anyhow::Error {
        if e.is_connect() || e.is_timeout() {
            CliError::new(
                ExitCode::NotRunning,
                format!(
                    "no nucleus is running for {} (nothing answers on {}); start one with `lotus up`",
                    self.home, self.base
                ),
            )
            .into()
        } else {
            anyhow!("request to {} failed: {e}", self.base)
        }
    }

    async fn decode<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T> {
        let body = resp.bytes().await?;
        serde_json::from_slice(&body)
            .map_err(|e| anyhow!("unexpected answer from the nucleus: {e}"))
    }

    /// The API's JSON error as a CLI error with a fitting exit code.
    async fn error_of(resp: reqwest::Response) -> anyhow::Error {
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        let code = v["error"]["code"].as_str().unwrap_or("error");
        let message = v["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("HTTP {status}"));
        let exit = match code {
            "invalid_json" | "invalid_arguments" | "invalid_topic" | "invalid_pattern"
            | "invalid_time" | "payload_too_large" | "not_configured" | "unsupported" => {
                ExitCode::BadInput
            }
            "not_found" => ExitCode::NotFound,
            _ => ExitCode::Failure,
        };
        CliError::new(exit, message).into()
    }

    /// Sends `req` with the token; the answer when it is a success, else the API's error.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(Self::error_of(resp).await)
        }
    }

    /// GET `path` (with query pairs).
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T> {
        let req = self.http.get(format!("{}{path}", self.base)).query(query);
        Self::decode(self.send(req).await?).await
    }

    /// POST a JSON body to `path`.
    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T> {
        Self::decode(self.open(path, body).await?).await
    }

    /// Calls tool `name` with `args` in the running nucleus; its result.
    pub async fn call_tool(&self, name: &str, args: &Value) -> Result<Value> {
        let r: lotus_server::CallResponse = self
            .post(&format!("/api/v1/tools/{name}/call"), args)
            .await?;
        Ok(r.result)
    }

    /// POSTs `body` to `path` and hands back the answer to read as it comes (a stream).
    pub async fn open(&self, path: &str, body: &Value) -> Result<reqwest::Response> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    /// Opens the live event stream (SSE) for `pattern`.
    pub async fn stream(&self, pattern: &str) -> Result<reqwest::Response> {
        let req = self
            .http
            .get(format!("{}/api/v1/events/stream", self.base))
            .query(&[("pattern", pattern)]);
        self.send(req).await
    }
}

/// Whether process `pid` exists (Linux: `/proc/PID`; elsewhere assumed alive).
fn pid_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}
