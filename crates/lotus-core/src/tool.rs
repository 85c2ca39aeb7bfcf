//! Tool descriptions shared by the registry, the API and module authors.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A callable tool as listed by the registry: `module.tool`, what it does, its argument schema.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ToolSpec {
    /// Fully qualified name, `MODULE.TOOL` (e.g. `echo.echo`).
    pub name: String,
    /// The module that serves it.
    pub module: String,
    /// One-line description (from the doc comment of the tool function).
    #[serde(default)]
    pub description: String,
    /// JSON Schema of the arguments object.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub input_schema: Value,
    /// Whether ASH must have a human approve each call (the module's manifest lists it under
    /// `dangerous`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dangerous: bool,
    /// The node whose nucleus hosts it, when several nuclei share one bus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}
