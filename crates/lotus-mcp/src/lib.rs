//! # lotus-mcp
//!
//! The host of `runtime: mcp` modules: an MCP server named in the manifest's `mcp:` block is
//! started (stdio), the MCP handshake is made, and each of its tools becomes a LOTUS tool
//! `MODULE.TOOL` with its JSON Schema, called through the nucleus's registry like any other
//! (permissions, time limits and the audit trail apply unchanged). The server's stderr goes to
//! the module's log. Design and pitfalls: `docs/decisions/0004-mcp.md`.

use std::process::Stdio;
use std::time::Duration;

use lotus_core::{McpServer, Runtime};
use lotus_nucleus::{
    BoxFuture, Context, HostError, Module, ModuleDef, ModuleDescription, ModuleHost, Origin,
    ToolDecl, ToolError,
};
use process_wrap::tokio::{CommandWrap, ProcessGroup};
use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, ContentBlock, Implementation,
    ProtocolVersion,
};
use rmcp::service::RunningService;
use rmcp::transport::TokioChildProcess;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Value, json};

/// How long a server may take to start and answer the handshake (a first `npx` run fetches
/// its package).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The host of `runtime: mcp` modules.
#[derive(Default)]
pub struct McpHost;

impl McpHost {
    /// A host.
    pub fn new() -> Self {
        Self
    }
}

/// LOTUS as an MCP client: it names itself and speaks a protocol version with `initialize`.
#[derive(Clone)]
struct Client;

impl ClientHandler for Client {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("lotus", env!("CARGO_PKG_VERSION")),
        )
        .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
    }
}

/// `${NAME}` is taken from LOTUS's environment; anything else is literal.
fn env_value(module: &str, key: &str, value: &str) -> Result<String, HostError> {
    match value.strip_prefix("${").and_then(|v| v.strip_suffix('}')) {
        Some(var) => std::env::var(var).map_err(|_| {
            HostError(format!(
                "module `{module}`: `mcp.env.{key}` takes ${{{var}}} from the environment, and {var} is not set"
            ))
        }),
        None => Ok(value.to_owned()),
    }
}

/// The command that starts a stdio server, in its own process group (so stopping it stops
/// what it started too: `npx` runs `node` under a shell).
fn command(def: &ModuleDef, server: &McpServer, program: &str) -> Result<CommandWrap, HostError> {
    let module = def.name();
    let folder = match &def.origin {
        Origin::Folder(dir) => Some(dir.clone()),
        Origin::Builtin => None,
    };
    let mut env = Vec::new();
    for (k, v) in &server.env {
        env.push((k.clone(), env_value(module, k, v)?));
    }
    let cwd = match (&server.cwd, &folder) {
        (Some(c), Some(f)) => Some(f.join(c)),
        (Some(c), None) => Some(c.into()),
        (None, f) => f.clone(),
    };
    let mut cmd = CommandWrap::with_new(program, |c| {
        c.args(&server.args).envs(env.iter().map(|(k, v)| (k, v)));
        if let Some(dir) = &cwd {
            c.current_dir(dir);
        }
    });
    cmd.wrap(ProcessGroup::leader());
    Ok(cmd)
}

impl ModuleHost for McpHost {
    fn runtime(&self) -> Runtime {
        Runtime::Mcp
    }

    fn instantiate<'a>(
        &'a self,
        def: &'a ModuleDef,
        _same_code: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Box<dyn Module>, HostError>> {
        Box::pin(async move {
            let module = def.name().to_owned();
            let server = def.manifest.mcp.as_ref().ok_or_else(|| {
                HostError(format!(
                    "module `{module}` has no `mcp:` block naming its server"
                ))
            })?;
            let Some(program) = &server.command else {
                return Err(HostError(format!(
                    "module `{module}`: MCP servers over streamable HTTP (`mcp.url`) are not supported by this build yet; use a stdio server (`mcp.command`)"
                )));
            };
            let (transport, stderr) = TokioChildProcess::builder(command(def, server, program)?)
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| {
                    HostError(format!(
                        "module `{module}`: cannot start `{program}`: {e}; is it installed and on PATH?"
                    ))
                })?;
            // Its stderr is its log; a pipe nobody reads would stall it.
            if let Some(err) = stderr {
                let module = module.clone();
                tokio::spawn(async move {
                    use tokio::io::AsyncBufReadExt;
                    let mut lines = tokio::io::BufReader::new(err).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        tracing::info!(module = %module, "{line}");
                    }
                });
            }
            let service = tokio::time::timeout(START_TIMEOUT, Client.serve(transport))
                .await
                .map_err(|_| {
                    HostError(format!(
                        "module `{module}`: `{program}` did not answer the MCP handshake within {} s",
                        START_TIMEOUT.as_secs()
                    ))
                })?
                .map_err(|e| {
                    HostError(format!(
                        "module `{module}`: the MCP handshake with `{program}` failed: {e}"
                    ))
                })?;
            let tools = service.list_all_tools().await.map_err(|e| {
                HostError(format!("module `{module}`: listing its tools failed: {e}"))
            })?;
            let tools = tools
                .into_iter()
                .map(|t| ToolDecl {
                    name: t.name.to_string(),
                    description: t.description.as_deref().unwrap_or_default().to_owned(),
                    input_schema: Value::Object((*t.input_schema).clone()),
                })
                .collect();
            Ok(Box::new(McpModule { service, tools }) as Box<dyn Module>)
        })
    }
}

/// A running MCP server as a module.
struct McpModule {
    service: RunningService<RoleClient, Client>,
    tools: Vec<ToolDecl>,
}

/// A tool result as JSON: the text (all text parts joined), every part, the structured
/// content when the server sent it.
fn result_json(r: &rmcp::model::CallToolResult) -> (Value, String) {
    let mut text = String::new();
    let parts: Vec<Value> = r
        .content
        .iter()
        .map(|c| match c {
            ContentBlock::Text(t) => {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&t.text);
                json!({"type": "text", "text": t.text})
            }
            ContentBlock::Image(i) => {
                json!({"type": "image", "mime_type": i.mime_type, "data": i.data})
            }
            other => serde_json::to_value(other).unwrap_or(Value::Null),
        })
        .collect();
    let mut out = json!({"text": text, "content": parts});
    if let Some(s) = &r.structured_content {
        out["structured"] = s.clone();
    }
    (out, text)
}

impl Module for McpModule {
    fn describe(&self) -> ModuleDescription {
        ModuleDescription {
            tools: self.tools.clone(),
            ..ModuleDescription::default()
        }
    }

    fn call_tool<'a>(
        &'a mut self,
        cx: &'a Context,
        tool: &'a str,
        args: Value,
    ) -> BoxFuture<'a, Result<Value, ToolError>> {
        Box::pin(async move {
            let mut params = CallToolRequestParams::new(tool.to_owned());
            match args {
                Value::Object(o) => params = params.with_arguments(o),
                Value::Null => {}
                other => {
                    return Err(ToolError::InvalidArguments {
                        tool: tool.to_owned(),
                        reason: format!("expected a JSON object, got {other}"),
                    });
                }
            }
            let r = self
                .service
                .call_tool(params)
                .await
                .map_err(|e| ToolError::Failed {
                    tool: tool.to_owned(),
                    message: if self.service.is_transport_closed() {
                        format!(
                            "the MCP server of `{}` stopped ({e}); its last words are in `GET /api/v1/modules/{}/logs`",
                            cx.name(),
                            cx.name()
                        )
                    } else {
                        e.to_string()
                    },
                })?;
            let (out, text) = result_json(&r);
            if r.is_error == Some(true) {
                return Err(ToolError::Failed {
                    tool: tool.to_owned(),
                    message: if text.is_empty() {
                        out.to_string()
                    } else {
                        text
                    },
                });
            }
            Ok(out)
        })
    }
}
