//! `fetch`: outbound HTTP from a sandboxed module. It reaches only the hosts its manifest lists
//! under `permissions.hosts`; anything else is refused by the host and audited.

use lotus_module_sdk::{Context, ModuleError, Request};
use serde::Serialize;

#[derive(Default)]
pub struct Fetch;

/// What `get` answers.
#[derive(Serialize)]
pub struct Page {
    status: u16,
    content_type: Option<String>,
    body: String,
}

#[lotus_module_sdk::module]
impl Fetch {
    /// Fetches a URL with GET and returns its status, content type and body as text.
    #[tool("get")]
    async fn get(&mut self, cx: &Context, url: String) -> Result<Page, ModuleError> {
        let resp = cx.fetch(Request::get(url).header("accept", "*/*")).await?;
        let content_type = resp
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.clone());
        Ok(Page {
            status: resp.status,
            content_type,
            body: resp.text(),
        })
    }
}
