use lotus_core::Event;
use lotus_nucleus::{Context, ModuleError};
use serde::Serialize;

/// Returns what it is given: the `echo.echo` tool, and `echo.request` → `echo.reply` on the bus.
#[derive(Default)]
pub struct Echo;

/// The answer of `echo.echo`.
#[derive(Debug, Serialize)]
pub struct Echoed {
    /// The text, unchanged.
    pub text: String,
}

#[lotus::module]
impl Echo {
    /// Returns the text it is given.
    #[tool("echo")]
    async fn echo(&mut self, text: String) -> Result<Echoed, ModuleError> {
        Ok(Echoed { text })
    }

    #[on_event("echo.request")]
    async fn on_request(&mut self, cx: &Context, ev: &Event) -> Result<(), ModuleError> {
        cx.reply(ev, "echo.reply", ev.payload.clone()).await?;
        Ok(())
    }
}
