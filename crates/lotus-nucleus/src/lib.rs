//! # lotus-nucleus
//!
//! The kernel of LOTUS (DESIGN.md §4): it loads modules through one [`ModuleHost`] per runtime,
//! resolves their dependencies, runs each as an actor (one task, one mailbox, handlers one at a
//! time), restarts crashed ones with exponential backoff, runs their periodic jobs, registers and
//! calls their tools, and enforces their manifests: a module cannot publish, receive or call
//! outside what it was granted, and every denial is published as `system.permission_denied`.
//!
//! Module authors use [`Context`] and the macros re-exported here:
//!
//! ```ignore
//! #[lotus_nucleus::module]
//! impl Echo {
//!     /// Repeats the text.
//!     #[tool("echo")]
//!     async fn echo(&mut self, text: String) -> Result<serde_json::Value, ModuleError> { … }
//! }
//! ```

mod cluster;
pub mod context;
pub mod deps;
pub mod host;
pub mod kernel;
pub mod module;
pub mod state;

#[doc(hidden)]
pub mod __private;

pub use context::{Context, LlmError, PublishError};
pub use host::{HostError, ModuleDef, ModuleHost, NativeHost, NativeModule, Origin, discover};
pub use kernel::{
    JobInfo, ModuleInfo, ModuleState, Nucleus, NucleusBuilder, NucleusError, NucleusSettings,
    ReloadReport, StartReport, SupervisorPolicy, default_stream_routes,
};
pub use lotus_core::Event;
pub use lotus_macros::{module, on_event, periodic, tool};
pub use lotus_providers as providers;
pub use module::{
    BoxFuture, HandlerDecl, Module, ModuleDescription, ModuleError, ModuleResult, PeriodicDecl,
    ToolDecl, ToolError,
};
pub use state::{StateError, StateStore};
