//! The native module API: the [`Module`] trait that `#[lotus::module]` implements, and its errors.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use lotus_core::{Event, Pattern};
use serde_json::Value;

use crate::context::Context;

/// A boxed, sendable future: what [`Module`] methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Result of a module hook or handler.
pub type ModuleResult<T = ()> = Result<T, ModuleError>;

/// An error returned by a module's code. Any `std::error::Error` converts into it with `?`.
pub struct ModuleError {
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
    fatal: bool,
    invalid: bool,
}

impl ModuleError {
    /// An error with just a message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            source: None,
            fatal: false,
            invalid: false,
        }
    }

    /// An error in what the caller asked (an empty text, a number out of range): a tool
    /// returning it fails with `invalid_arguments`, and the CLI exits with 2.
    pub fn invalid(message: impl fmt::Display) -> Self {
        Self {
            invalid: true,
            ..Self::msg(message)
        }
    }

    /// Whether the caller's input was at fault.
    pub fn is_invalid(&self) -> bool {
        self.invalid
    }

    /// An error after which the instance cannot go on (a WebAssembly trap, a broken invariant):
    /// the supervisor treats it as a crash and restarts the module.
    pub fn fatal(message: impl fmt::Display) -> Self {
        Self {
            fatal: true,
            ..Self::msg(message)
        }
    }

    /// Whether this error is a crash.
    pub fn is_fatal(&self) -> bool {
        self.fatal
    }

    /// The message, with the chain of causes.
    pub fn message(&self) -> String {
        let mut out = self.message.clone();
        if let Some(source) = self.source.as_deref() {
            for c in lotus_core::causes(source) {
                out.push_str(": ");
                out.push_str(&c.to_string());
            }
        }
        out
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for ModuleError {
    fn from(e: E) -> Self {
        Self {
            message: e.to_string(),
            source: Some(Box::new(e)),
            fatal: false,
            invalid: false,
        }
    }
}

impl fmt::Display for ModuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl fmt::Debug for ModuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModuleError({:?})", self.message())
    }
}

/// Why a tool call did not produce a result.
#[derive(Debug, Clone, PartialEq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum ToolError {
    /// No such tool is registered.
    #[error("no tool named `{tool}`; `lotus tool list` shows the available tools")]
    NotFound {
        /// The requested name.
        tool: String,
    },
    /// The caller's manifest does not grant this tool.
    #[error(
        "module `{caller}` may not call `{tool}`: add it to `permissions.tools` in its manifest"
    )]
    PermissionDenied {
        /// Who called.
        caller: String,
        /// What it called.
        tool: String,
    },
    /// The arguments do not fit the tool's schema.
    #[error("bad arguments for `{tool}`: {reason}")]
    InvalidArguments {
        /// The tool.
        tool: String,
        /// What is wrong.
        reason: String,
    },
    /// No result within the deadline. Retryable.
    #[error("`{tool}` did not answer within {} ms", after.as_millis())]
    Timeout {
        /// The tool.
        tool: String,
        /// The deadline.
        #[serde(with = "humantime_serde_ms")]
        after: Duration,
    },
    /// The tool ran and returned an error.
    #[error("`{tool}` failed: {message}")]
    Failed {
        /// The tool.
        tool: String,
        /// Its error.
        message: String,
    },
    /// The module crashed while running the tool (it is being restarted). Retryable.
    #[error("`{tool}` crashed: {message}; the module is being restarted")]
    Crashed {
        /// The tool.
        tool: String,
        /// The panic message.
        message: String,
    },
    /// The module serving the tool is not running. Retryable unless it failed for good.
    #[error("`{tool}` is unavailable: module `{module}` is {state}")]
    Unavailable {
        /// The tool.
        tool: String,
        /// Its module.
        module: String,
        /// The module's state.
        state: String,
    },
}

mod humantime_serde_ms {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u128(d.as_millis())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        <u64 as serde::Deserialize>::deserialize(d).map(Duration::from_millis)
    }
}

impl ToolError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ToolError::Timeout { .. } | ToolError::Crashed { .. } | ToolError::Unavailable { .. }
        )
    }

    /// The same error naming the tool `qualified` (`module.tool`) instead of its local name.
    pub fn qualified(mut self, qualified: &str) -> Self {
        match &mut self {
            ToolError::NotFound { tool }
            | ToolError::PermissionDenied { tool, .. }
            | ToolError::InvalidArguments { tool, .. }
            | ToolError::Timeout { tool, .. }
            | ToolError::Failed { tool, .. }
            | ToolError::Crashed { tool, .. }
            | ToolError::Unavailable { tool, .. } => *tool = qualified.to_owned(),
        }
        self
    }

    /// A stable machine-readable code (`not_found`, `permission_denied`, …).
    pub fn code(&self) -> &'static str {
        match self {
            ToolError::NotFound { .. } => "not_found",
            ToolError::PermissionDenied { .. } => "permission_denied",
            ToolError::InvalidArguments { .. } => "invalid_arguments",
            ToolError::Timeout { .. } => "timeout",
            ToolError::Failed { .. } => "failed",
            ToolError::Crashed { .. } => "crashed",
            ToolError::Unavailable { .. } => "unavailable",
        }
    }
}

/// An `#[on_event]` handler.
#[derive(Debug, Clone)]
pub struct HandlerDecl {
    /// The handler function's name.
    pub name: &'static str,
    /// The pattern it handles.
    pub pattern: Pattern,
}

/// A `#[tool]`, by its local name (the registry qualifies it as `module.tool`).
#[derive(Debug, Clone)]
pub struct ToolDecl {
    /// Local name.
    pub name: String,
    /// From the function's doc comment.
    pub description: String,
    /// JSON Schema of the arguments object.
    pub input_schema: Value,
}

/// A `#[periodic]` job.
#[derive(Debug, Clone)]
pub struct PeriodicDecl {
    /// The job's name (the function's name).
    pub name: &'static str,
    /// Default period; `[modules.NAME.every] JOB = "…"` in lotus.toml overrides it.
    pub every: Duration,
}

/// What a module handles and offers; generated by `#[lotus::module]`.
#[derive(Debug, Clone, Default)]
pub struct ModuleDescription {
    /// Event handlers, in declaration order.
    pub handlers: Vec<HandlerDecl>,
    /// Tools.
    pub tools: Vec<ToolDecl>,
    /// Periodic jobs.
    pub periodic: Vec<PeriodicDecl>,
}

/// A running module instance. Implemented by `#[lotus::module]`; every hook defaults to nothing.
///
/// The nucleus calls these one at a time from the module's own actor task, so `&mut self` needs
/// no locks.
pub trait Module: Send + 'static {
    /// Handlers, tools and periodic jobs of this module.
    fn describe(&self) -> ModuleDescription {
        ModuleDescription::default()
    }

    /// Called once per instance before anything else; an error or panic is a crash.
    fn initialize<'a>(&'a mut self, cx: &'a Context) -> BoxFuture<'a, ModuleResult> {
        let _ = cx;
        Box::pin(async { Ok(()) })
    }

    /// Identity of the code this instance runs (a WebAssembly component's hash), so that a
    /// restart after a crash runs the same code. `None` for code compiled into the binary.
    fn code_id(&self) -> Option<String> {
        None
    }

    /// Handles `ev` with handler number `handler` of [`ModuleDescription::handlers`].
    fn on_event<'a>(
        &'a mut self,
        cx: &'a Context,
        handler: usize,
        ev: Arc<Event>,
    ) -> BoxFuture<'a, ModuleResult> {
        let _ = (cx, handler, ev);
        Box::pin(async { Ok(()) })
    }

    /// Runs the tool with local name `tool`.
    fn call_tool<'a>(
        &'a mut self,
        cx: &'a Context,
        tool: &'a str,
        args: Value,
    ) -> BoxFuture<'a, Result<Value, ToolError>> {
        let _ = (cx, args);
        Box::pin(async move {
            Err(ToolError::NotFound {
                tool: tool.to_owned(),
            })
        })
    }

    /// Runs periodic job number `job` of [`ModuleDescription::periodic`].
    fn tick<'a>(&'a mut self, cx: &'a Context, job: usize) -> BoxFuture<'a, ModuleResult> {
        let _ = (cx, job);
        Box::pin(async { Ok(()) })
    }

    /// Called once when the module stops (not after a crash).
    fn shutdown<'a>(&'a mut self, cx: &'a Context) -> BoxFuture<'a, ModuleResult> {
        let _ = cx;
        Box::pin(async { Ok(()) })
    }
}
