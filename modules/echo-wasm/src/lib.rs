//! `echo-wasm`: the built-in echo as a WebAssembly module — a tool and an event handler, written
//! with the SDK exactly as the native one is written with `lotus::module`.

use lotus_module_sdk::{Context, Event, ModuleError};
use serde::Serialize;

#[derive(Default)]
pub struct EchoWasm;

/// The answer of `echo`.
#[derive(Serialize)]
pub struct Echoed {
    text: String,
}

#[lotus_module_sdk::module]
impl EchoWasm {
    async fn initialize(&mut self, cx: &Context) -> Result<(), ModuleError> {
        cx.log(lotus_module_sdk::Level::Debug, "echo-wasm ready");
        Ok(())
    }

    /// Returns the text it is given.
    #[tool("echo")]
    async fn echo(&mut self, text: String) -> Result<Echoed, ModuleError> {
        Ok(Echoed { text })
    }

    /// `wecho.request` → `wecho.reply` with the same payload.
    #[on_event("wecho.request")]
    async fn on_request(&mut self, cx: &Context, ev: &Event) -> Result<(), ModuleError> {
        cx.reply(ev, "wecho.reply", ev.payload.clone()).await?;
        Ok(())
    }
}
