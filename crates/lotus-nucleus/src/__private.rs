//! Support code for `lotus-macros`; not a public API.

use std::time::Duration;

pub use schemars;
pub use serde;
pub use serde_json::Value;

use crate::module::{
    HandlerDecl, ModuleDescription, ModuleError, ModuleResult, PeriodicDecl, ToolDecl, ToolError,
};

/// What a handler may return: `()` or any `Result<T, E>` whose error converts into ModuleError.
pub trait IntoModuleResult {
    /// Converts.
    fn into_module_result(self) -> ModuleResult;
}

impl IntoModuleResult for () {
    fn into_module_result(self) -> ModuleResult {
        Ok(())
    }
}

impl<T, E: Into<ModuleError>> IntoModuleResult for Result<T, E> {
    fn into_module_result(self) -> ModuleResult {
        self.map(|_| ()).map_err(Into::into)
    }
}

/// Normalizes a handler's return value.
pub fn module_result<R: IntoModuleResult>(r: R) -> ModuleResult {
    r.into_module_result()
}

/// Builds a description; patterns were validated at compile time.
pub fn describe(
    handlers: &[(&'static str, &'static str)],
    tools: Vec<ToolDecl>,
    jobs: &[(&'static str, u64)],
) -> ModuleDescription {
    ModuleDescription {
        handlers: handlers
            .iter()
            .filter_map(|(name, pat)| {
                lotus_core::Pattern::new(pat)
                    .ok()
                    .map(|pattern| HandlerDecl { name, pattern })
            })
            .collect(),
        tools,
        periodic: jobs
            .iter()
            .map(|(name, ms)| PeriodicDecl {
                name,
                every: Duration::from_millis(*ms),
            })
            .collect(),
    }
}

/// JSON Schema of a tool's argument struct.
pub fn schema_of<T: schemars::JsonSchema>() -> Value {
    let mut v = serde_json::to_value(schemars::schema_for!(T)).unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        obj.remove("$schema");
        obj.remove("title");
    }
    v
}

/// Deserializes tool arguments; `null` counts as `{}`.
pub fn parse_args<T: serde::de::DeserializeOwned>(tool: &str, args: Value) -> Result<T, ToolError> {
    let args = if args.is_null() {
        Value::Object(Default::default())
    } else {
        args
    };
    if !args.is_object() {
        return Err(ToolError::InvalidArguments {
            tool: tool.to_owned(),
            reason: format!(
                "expected a JSON object of named arguments, got {}; {SCHEMA_HINT}",
                kind(&args)
            ),
        });
    }
    serde_json::from_value(args).map_err(|e| ToolError::InvalidArguments {
        tool: tool.to_owned(),
        reason: format!("{e}; {SCHEMA_HINT}"),
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Where a caller finds what a tool takes.
const SCHEMA_HINT: &str = "`lotus tool list --json` shows its schema";

/// Serializes a tool's result.
pub fn tool_result<T: serde::Serialize, E: Into<ModuleError>>(
    tool: &str,
    r: Result<T, E>,
) -> Result<Value, ToolError> {
    match r {
        Ok(v) => serde_json::to_value(v).map_err(|e| ToolError::Failed {
            tool: tool.to_owned(),
            message: format!("its result is not JSON: {e}"),
        }),
        Err(e) => {
            let e = e.into();
            Err(if e.is_invalid() {
                ToolError::InvalidArguments {
                    tool: tool.to_owned(),
                    reason: e.message(),
                }
            } else {
                ToolError::Failed {
                    tool: tool.to_owned(),
                    message: e.message(),
                }
            })
        }
    }
}
