//! # lotus-reasoning
//!
//! ASH's reasoning: the ReAct [engine] (model → tools → observations → reflection, until an
//! answer, the step limit, the budget or a loop stops it), the [text protocol](protocol) for
//! models without native tool calling, and the `reasoning` core [module] that answers
//! `cognition.task_request` events with context drawn from memory.

pub mod delegate;
pub mod engine;
pub mod module;
pub mod protocol;

pub use engine::{Host, Limits, Outcome, Stopped, Task};
pub use module::{ReasoningModule, Role, TaskRequest, Turn};

/// The module's manifest.
pub const MANIFEST: &str = include_str!("../manifest.yaml");

/// The module, for a native host.
pub fn native() -> lotus_nucleus::NativeModule {
    lotus_nucleus::NativeModule {
        manifest: MANIFEST,
        factory: || Box::<ReasoningModule>::default(),
    }
}
