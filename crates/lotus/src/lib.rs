//! # lotus
//!
//! LOTUS is a local-first AI operating system. This crate is the `lotus` binary and, as a
//! library, the facade module authors use:
//!
//! ```
//! use lotus::{Context, Event, ModuleError};
//!
//! #[derive(Default)]
//! pub struct Greeter;
//!
//! #[lotus::module]
//! impl Greeter {
//!     /// Says hello to someone.
//!     #[tool("greet")]
//!     async fn greet(&mut self, name: String) -> Result<String, ModuleError> {
//!         Ok(format!("hello, {name}"))
//!     }
//!
//!     #[on_event("greeter.ping")]
//!     async fn ping(&mut self, cx: &Context, ev: &Event) -> Result<(), ModuleError> {
//!         cx.reply(ev, "greeter.pong", ev.payload.clone()).await?;
//!         Ok(())
//!     }
//! }
//! ```
//!
//! See `docs/modules.md` for the whole authoring guide.

extern crate self as lotus;

pub mod builtin;

pub use lotus_core::{Event, Manifest, Pattern, Topic, Value, json};
pub use lotus_nucleus::{
    Context, LlmError, Module, ModuleError, ModuleResult, PublishError, ToolError, module,
    on_event, periodic, providers, tool,
};
