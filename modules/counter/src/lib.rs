//! `counter`: a count kept in the host's state store, so it survives reloads and restarts.

use lotus_module_sdk::{Context, ModuleError, json};

#[derive(Default)]
pub struct Counter;

async fn count(cx: &Context) -> Result<u64, ModuleError> {
    Ok(cx
        .state_get("count")
        .await?
        .and_then(|v| v.as_u64())
        .unwrap_or(0))
}

#[lotus_module_sdk::module]
impl Counter {
    /// Adds one and returns the count.
    #[tool("increment")]
    async fn increment(&mut self, cx: &Context) -> Result<u64, ModuleError> {
        let n = count(cx).await? + 1;
        cx.state_set("count", &json!(n)).await?;
        Ok(n)
    }

    /// The current count.
    #[tool("get")]
    async fn get(&mut self, cx: &Context) -> Result<u64, ModuleError> {
        count(cx).await
    }

    /// Publishes the count every minute.
    #[periodic(every = "1m")]
    async fn announce(&mut self, cx: &Context) -> Result<(), ModuleError> {
        cx.publish("counter.value", json!(count(cx).await?)).await?;
        Ok(())
    }
}
