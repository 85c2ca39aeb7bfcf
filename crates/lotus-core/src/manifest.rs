//! `manifest.yaml`: what a module is, what it needs, and what it is allowed to do.
//!
//! Parsing is strict: an unknown key, a wrong type, an invalid version or topic pattern is a
//! [`ManifestError`] naming the file, the line, the key and what was expected.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::topic::Pattern;

/// Largest mailbox a manifest may ask for (events).
pub const MAX_QUEUE: usize = 1 << 20;
/// Largest memory cap a manifest may ask for (MiB).
pub const MAX_MEMORY_MB: u32 = 16 * 1024;
/// Longest `call_timeout` a manifest may ask for.
pub const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Names the nucleus uses as event sources and callers; no module may take them.
pub const RESERVED_NAMES: [&str; 3] = ["nucleus", "api", "cli"];

/// A parsed, validated `manifest.yaml`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "LOTUS module manifest",
    description = "manifest.yaml of a LOTUS module"
)]
pub struct Manifest {
    /// Module name: lowercase letters, digits, `_` and `-`, starting with a letter (≤ 64).
    pub name: ModuleName,
    /// Semantic version of the module, e.g. `0.1.0`.
    pub version: SemVer,
    /// Which layer the module belongs to.
    #[serde(rename = "type")]
    pub kind: ModuleType,
    /// Start order and supervision priority; `critical` modules start first.
    #[serde(default)]
    pub priority: Priority,
    /// One line about what the module does.
    #[serde(default)]
    pub description: String,
    /// How the module's code runs.
    #[serde(default)]
    pub runtime: Runtime,
    /// What to load: the built-in module id for `native` (defaults to the name), the
    /// component file for `wasm`, relative to the manifest's folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
    /// Other modules, system programs and Python packages this module needs.
    #[serde(default)]
    pub dependencies: Dependencies,
    /// Topic patterns the module may receive. Its event handlers must stay inside them.
    #[serde(default)]
    pub subscriptions: Vec<Pattern>,
    /// Topic patterns the module may publish to.
    #[serde(default)]
    pub publications: Vec<Pattern>,
    /// LLM providers the module prefers (`provider:model` or an alias).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub providers: Option<Providers>,
    /// Free-form capability tags (e.g. `text-generation`).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Whether and how the module is loaded.
    #[serde(default)]
    pub config: ModuleConfig,
    /// What the module is allowed to use beyond its topics.
    #[serde(default)]
    pub permissions: Permissions,
    /// Tools of this module that ASH runs only after a human approves each call (their local
    /// names, e.g. `delete_file`, or `*` for every tool of the module).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dangerous: Vec<String>,
    /// Where the module may run when several nuclei share one bus (any node when absent).
    #[serde(default, skip_serializing_if = "Placement::is_anywhere")]
    pub placement: Placement,
    /// For `runtime: mcp`: the MCP server whose tools the module offers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp: Option<McpServer>,
}

/// The MCP server of a `runtime: mcp` module: a program spoken to over stdio (`command`), or a
/// server reached over streamable HTTP (`url`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct McpServer {
    /// stdio: the program to start (found on `PATH`), e.g. `npx` or `uvx`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// stdio: its arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// stdio: environment variables for it. A value `${NAME}` is taken from LOTUS's own
    /// environment when the server starts, so secrets stay out of the manifest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// stdio: its working directory, relative to the module's folder (default: the folder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Streamable HTTP: the server's endpoint, e.g. `https://example.org/mcp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Streamable HTTP: the environment variable that holds the bearer token for `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
}

/// Whether `s` is an environment variable name (`A-Z`, `a-z`, digits and `_`, not starting
/// with a digit).
fn is_env_name(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl McpServer {
    /// What is wrong with it: `(key, message)`.
    fn check(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, message: String| Err((format!("mcp.{key}"), message));
        match (&self.command, &self.url) {
            (Some(_), Some(_)) => {
                return Err((
                    "mcp".into(),
                    "give `command` (a server spoken to over stdio) or `url` (streamable HTTP), not both".into(),
                ));
            }
            (None, None) => {
                return Err((
                    "mcp".into(),
                    "needs `command` (a server spoken to over stdio, e.g. `npx`) or `url` (streamable HTTP)".into(),
                ));
            }
            (Some(c), None) => {
                if c.trim().is_empty() {
                    return bad("command", "must name a program, e.g. `npx`".into());
                }
                if self.token_env.is_some() {
                    return bad(
                        "token_env",
                        "is for `url` servers; give a stdio server its token in `env`".into(),
                    );
                }
            }
            (None, Some(u)) => {
                let rest = u
                    .strip_prefix("http://")
                    .or_else(|| u.strip_prefix("https://"));
                if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
                    return bad(
                        "url",
                        format!("`{u}` is not an http(s) URL, e.g. `https://example.org/mcp`"),
                    );
                }
                for (key, given) in [
                    ("args", !self.args.is_empty()),
                    ("env", !self.env.is_empty()),
                    ("cwd", self.cwd.is_some()),
                ] {
                    if given {
                        return bad(key, "is for `command` servers, not `url` ones".into());
                    }
                }
            }
        }
        if let Some(k) = self.env.keys().find(|k| !is_env_name(k)) {
            return bad(
                "env",
                format!("`{k}` is not an environment variable name (letters, digits, `_`)"),
            );
        }
        if let Some(t) = &self.token_env
            && !is_env_name(t)
        {
            return bad(
                "token_env",
                format!("`{t}` is not an environment variable name, e.g. `GITHUB_TOKEN`"),
            );
        }
        Ok(())
    }
}

/// The nodes a module may run on: a node must be one of `nodes` (if any are listed) and carry
/// every one of `labels` (its `[bus] labels`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// Node ids (`[bus] node`) the module may run on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// Labels the node must all have, e.g. `[gpu]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
}

impl Placement {
    /// Whether any node will do.
    pub fn is_anywhere(&self) -> bool {
        self.nodes.is_empty() && self.labels.is_empty()
    }

    /// Whether the node `node` with `labels` may run the module.
    pub fn allows(&self, node: &str, labels: &[String]) -> bool {
        (self.nodes.is_empty() || self.nodes.iter().any(|n| n == node))
            && self.labels.iter().all(|l| labels.contains(l))
    }
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if !self.nodes.is_empty() {
            parts.push(format!("nodes {}", self.nodes.join(", ")));
        }
        if !self.labels.is_empty() {
            parts.push(format!("labels {}", self.labels.join(", ")));
        }
        f.write_str(&parts.join("; "))
    }
}

/// Layer of a module (DESIGN.md §1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModuleType {
    /// Reasoning, memory, providers: the L2 core.
    Core,
    /// Voice, vision, files…: L3.
    Capability,
    /// MCP servers, browsers, IDEs: L4.
    Integration,
}

/// Start order: `critical` first, `low` last; stop order is the reverse.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Needed by almost everything.
    Critical,
    /// Start early.
    High,
    /// The default.
    #[default]
    Normal,
    /// Start last.
    Low,
}

/// How a module's code runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// Rust compiled into the `lotus` binary.
    #[default]
    Native,
    /// A WebAssembly component against `lotus:module`.
    Wasm,
    /// An MCP server whose tools become LOTUS tools.
    Mcp,
    /// An executable speaking MCP over stdio.
    Process,
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Runtime::Native => "native",
            Runtime::Wasm => "wasm",
            Runtime::Mcp => "mcp",
            Runtime::Process => "process",
        })
    }
}

/// What a module needs to run.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Dependencies {
    /// Modules that must be running first: `name` or `name@REQ` (e.g. `memory@^0.2`).
    #[serde(default)]
    pub modules: Vec<ModuleDep>,
    /// Programs that must be on `PATH` (checked by `lotus doctor`).
    #[serde(default)]
    pub system: Vec<String>,
    /// Python requirements (pip syntax), for `process` modules.
    #[serde(default)]
    pub python: Vec<String>,
}

/// A dependency on another module, optionally with a semver requirement.
#[derive(Clone, Debug, PartialEq)]
pub struct ModuleDep {
    /// The module's name.
    pub name: ModuleName,
    /// Versions that satisfy the dependency (any when absent).
    pub req: Option<semver::VersionReq>,
}

impl fmt::Display for ModuleDep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.req {
            Some(r) => write!(f, "{}@{r}", self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

impl Serialize for ModuleDep {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ModuleDep {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let (name, req) = match s.split_once('@') {
            Some((n, r)) => (n, Some(r)),
            None => (s.as_str(), None),
        };
        let name = ModuleName::new(name.trim()).map_err(serde::de::Error::custom)?;
        let req = req
            .map(|r| {
                semver::VersionReq::parse(r.trim()).map_err(|e| {
                    serde::de::Error::custom(format_args!(
                        "`{r}` is not a version requirement ({e}); expected e.g. `^0.2` or `>=1.0, <2`"
                    ))
                })
            })
            .transpose()?;
        Ok(Self { name, req })
    }
}

impl JsonSchema for ModuleDep {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ModuleDep".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "`name` or `name@REQ` where REQ is a semver requirement, e.g. `memory@^0.2`.",
            "pattern": "^[a-z][a-z0-9_-]{0,63}(@.+)?$",
        })
    }
}

/// Preferred LLM providers.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Providers {
    /// First choice, e.g. `openai:gpt-4o-mini`, an alias, or `default` (the configured chain).
    pub primary: String,
    /// Tried in order when the primary fails.
    #[serde(default)]
    pub fallback: Vec<String>,
    /// The model for embeddings (default: the `embed` alias).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embed: Option<String>,
}

/// Loading switches.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModuleConfig {
    /// Load the module at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Watch the installed module and reload it when it changes.
    #[serde(default)]
    pub hotload: bool,
    /// Run sandboxed where the runtime can (always true for `wasm`).
    #[serde(default = "yes")]
    pub sandbox: bool,
    /// The module's own default settings; `[modules.NAME]` in `lotus.toml` overrides them.
    #[serde(default)]
    pub settings: BTreeMap<String, serde_json::Value>,
}

impl Default for ModuleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            hotload: false,
            sandbox: true,
            settings: BTreeMap::new(),
        }
    }
}

fn yes() -> bool {
    true
}

/// Grants beyond topics (topics are granted by `subscriptions` and `publications`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Permissions {
    /// Tools of other modules this module may call, as patterns over `module.tool`.
    #[serde(default)]
    pub tools: Vec<Pattern>,
    /// Memory collections the module may read and write.
    #[serde(default)]
    pub memory: Vec<String>,
    /// File system paths the module may use.
    #[serde(default)]
    pub paths: PathGrants,
    /// Network hosts the module may reach: `api.example.com` (any port), `api.example.com:443`
    /// (that port only), `*.example.com` (its subdomains), `127.0.0.1:8080`, `[::1]:8080`.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub hosts: Vec<HostGrant>,
    /// Resource limits.
    #[serde(default)]
    pub limits: Limits,
}

/// Paths a module may read or write.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathGrants {
    /// Readable paths (and everything below them).
    #[serde(default)]
    pub read: Vec<PathBuf>,
    /// Writable paths (and everything below them); writable implies readable.
    #[serde(default)]
    pub write: Vec<PathBuf>,
}

/// What happens when a module's mailbox is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// The publisher waits for room (back-pressure). Nothing is lost.
    #[default]
    Block,
    /// The oldest queued event is dropped and counted. Publishers never wait.
    DropOldest,
}

/// Resource limits of one module.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Memory cap in MiB (enforced by sandboxed runtimes).
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u32,
    /// Longest a single handler, tool call or tick may run, e.g. `30s`.
    #[serde(default = "default_call_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub call_timeout: Duration,
    /// Capacity of the module's mailbox (events waiting to be handled).
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// What happens when the mailbox is full.
    #[serde(default)]
    pub overflow: Overflow,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_mb: default_memory_mb(),
            call_timeout: default_call_timeout(),
            queue: default_queue(),
            overflow: Overflow::default(),
        }
    }
}

fn default_memory_mb() -> u32 {
    64
}
fn default_call_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_queue() -> usize {
    1024
}

/// One entry of `permissions.hosts`: a host name or IP address, optionally `*.` in front (any
/// subdomain, not the domain itself) and `:port` behind (only that port).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct HostGrant {
    host: String,
    port: Option<u16>,
    subdomains: bool,
}

impl HostGrant {
    /// Parses `host`, `host:port`, `*.domain`, `[v6]` or `[v6]:port`.
    pub fn new(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            Err(format!(
                "`{s}` is not a host grant: {why} (e.g. `api.example.com`, `api.example.com:443`, `*.example.com`, `127.0.0.1:8080`)"
            ))
        };
        if s.contains("://") || s.contains('/') {
            return bad("write the host alone, without a scheme or path");
        }
        let (subdomains, rest) = match s.strip_prefix("*.") {
            Some(r) => (true, r),
            None => (false, s),
        };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let Some((addr, after)) = v6.split_once(']') else {
                return bad("an IPv6 address needs its closing `]`");
            };
            if addr.parse::<std::net::Ipv6Addr>().is_err() {
                return bad("not an IPv6 address inside `[…]`");
            }
            match after {
                "" => (addr.to_owned(), None),
                p => match p.strip_prefix(':').map(str::parse::<u16>) {
                    Some(Ok(n)) if n > 0 => (addr.to_owned(), Some(n)),
                    _ => return bad("the port must be a number from 1 to 65535"),
                },
            }
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => match p.parse::<u16>() {
                    Ok(n) if n > 0 => (h.to_ascii_lowercase(), Some(n)),
                    _ => return bad("the port must be a number from 1 to 65535"),
                },
                None => (rest.to_ascii_lowercase(), None),
            }
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if host.contains(':') {
            if subdomains {
                return bad("`*.` goes only in front of a domain name");
            }
        } else if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
            return bad("expected a domain name or an IP address");
        }
        Ok(Self {
            host,
            port,
            subdomains,
        })
    }

    /// Whether this grant lets a module reach `host` (a name or IP address, IPv6 without
    /// brackets) on `port`.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let host_ok = if self.subdomains {
            host.strip_suffix(self.host.as_str())
                .is_some_and(|head| head.ends_with('.') && head.len() > 1)
        } else {
            host == self.host
        };
        host_ok && self.port.is_none_or(|p| p == port)
    }
}

impl fmt::Display for HostGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.subdomains {
            f.write_str("*.")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        match self.port {
            Some(p) => write!(f, ":{p}"),
            None => Ok(()),
        }
    }
}

impl From<HostGrant> for String {
    fn from(g: HostGrant) -> Self {
        g.to_string()
    }
}

impl<'de> Deserialize<'de> for HostGrant {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HostGrant::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A validated module name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, JsonSchema)]
pub struct ModuleName(#[schemars(regex(pattern = r"^[a-z][a-z0-9_-]{0,63}$"))] String);

impl ModuleName {
    /// Validates a module name.
    pub fn new(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if ok && RESERVED_NAMES.contains(&s) {
            Err(format!(
                "`{s}` is reserved (the nucleus, the API and the CLI use it as a source); pick another name"
            ))
        } else if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!(
                "`{s}` is not a module name: expected lowercase letters, digits, `_` or `-`, starting with a letter, at most 64 characters (e.g. `weather`)"
            ))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ModuleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ModuleName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ModuleName::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A semantic version (`MAJOR.MINOR.PATCH`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct SemVer(pub semver::Version);

impl fmt::Display for SemVer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for SemVer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // YAML reads `1.0` as a float; take any scalar as text so the message is about semver.
        let v = serde_json::Value::deserialize(d)?;
        let s = match &v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        semver::Version::parse(&s).map(SemVer).map_err(|e| {
            serde::de::Error::custom(format_args!(
                "`{s}` is not a semantic version ({e}); expected MAJOR.MINOR.PATCH, e.g. `0.1.0`"
            ))
        })
    }
}

impl JsonSchema for SemVer {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SemVer".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A semantic version, MAJOR.MINOR.PATCH[-PRE][+BUILD].",
            "pattern": r"^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$",
        })
    }
}

/// A manifest that could not be read or is invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// The manifest file.
    pub file: PathBuf,
    /// 1-based line of the problem, when known.
    pub line: Option<usize>,
    /// 1-based column of the problem, when known.
    pub column: Option<usize>,
    /// Dotted path of the offending key (`permissions.limits.queue`), or empty for the document.
    pub key: String,
    /// What was wrong and what was expected.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": key `{}`: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ManifestError {}

/// Everything in the manifest that serde alone cannot check.
fn validate(m: &Manifest) -> Result<(), (String, String)> {
    match (&m.mcp, m.runtime) {
        (None, Runtime::Mcp) => {
            return Err((
                "mcp".into(),
                "a `mcp` module needs `mcp:` with `command` (a server spoken to over stdio, e.g. `npx`) or `url` (streamable HTTP)".into(),
            ));
        }
        (Some(s), Runtime::Mcp) => s.check()?,
        (Some(_), other) => {
            return Err((
                "mcp".into(),
                format!("only `runtime: mcp` modules take `mcp:` (this one is `{other}`)"),
            ));
        }
        (None, _) => {}
    }
    if m.runtime == Runtime::Wasm && m.entry.is_none() {
        return Err((
            "entry".into(),
            "a `wasm` module needs `entry`: the component file, e.g. `module.wasm`".into(),
        ));
    }
    if let Some(entry) = &m.entry
        && entry.trim().is_empty()
    {
        return Err(("entry".into(), "must not be empty".into()));
    }
    if !(1..=MAX_QUEUE).contains(&m.permissions.limits.queue) {
        return Err((
            "permissions.limits.queue".into(),
            format!("must be between 1 and {MAX_QUEUE} events"),
        ));
    }
    if !(1..=MAX_MEMORY_MB).contains(&m.permissions.limits.memory_mb) {
        return Err((
            "permissions.limits.memory_mb".into(),
            format!("must be between 1 and {MAX_MEMORY_MB} MiB"),
        ));
    }
    for t in &m.dangerous {
        let ok = t == "*"
            || (!t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
        if !ok {
            return Err((
                "dangerous".into(),
                format!(
                    "`{t}` is not a tool name: write the tool's local name (letters, digits, `_`, `-`; e.g. `delete_file`) or `*` for all"
                ),
            ));
        }
    }
    for (key, items) in [
        ("placement.nodes", &m.placement.nodes),
        ("placement.labels", &m.placement.labels),
    ] {
        if let Some(bad) = items.iter().find(|t| {
            t.is_empty()
                || !t
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        }) {
            return Err((
                key.into(),
                format!("`{bad}` is not a node id or label: use letters, digits, `_` and `-`"),
            ));
        }
    }
    if m.permissions.limits.call_timeout > MAX_CALL_TIMEOUT {
        return Err((
            "permissions.limits.call_timeout".into(),
            format!(
                "must be at most {} hours",
                MAX_CALL_TIMEOUT.as_secs() / 3600
            ),
        ));
    }
    if m.permissions.limits.call_timeout.is_zero() {
        return Err((
            "permissions.limits.call_timeout".into(),
            "must be longer than zero, e.g. `30s`".into(),
        ));
    }
    if m.dependencies.modules.iter().any(|d| d.name == m.name) {
        return Err((
            "dependencies.modules".into(),
            format!("module `{}` cannot depend on itself", m.name),
        ));
    }
    if let Some(p) = &m.providers
        && p.primary.trim().is_empty()
    {
        return Err((
            "providers.primary".into(),
            "must name a model, e.g. `openai:gpt-4o-mini`".into(),
        ));
    }
    Ok(())
}

/// `a.b[2].c` → `a.b.c`, the form yaml_serde uses in its messages.
fn strip_indices(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut depth = 0;
    for c in key.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// Line (1-based) where a dotted key is defined, found by indentation; best effort.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let mut depth_indent: Vec<usize> = Vec::new();
    let parts: Vec<&str> = key.split('.').collect();
    let mut want = 0;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        while depth_indent.last().is_some_and(|&d| indent <= d) {
            depth_indent.pop();
            want = depth_indent.len();
        }
        if want < parts.len()
            && trimmed
                .strip_prefix(parts[want])
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
        {
            depth_indent.push(indent);
            want += 1;
            if want == parts.len() {
                return Some(i + 1);
            }
        }
    }
    None
}

impl Manifest {
    /// Parses manifest text; `file` is only used in error messages.
    pub fn parse(text: &str, file: &Path) -> Result<Self, ManifestError> {
        let err = |line, column, key: String, message: String| ManifestError {
            file: file.to_owned(),
            line,
            column,
            key,
            message,
        };
        if text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            return Err(err(
                None,
                None,
                String::new(),
                "the manifest is empty; it needs at least `name`, `version` and `type`".into(),
            ));
        }
        let de = yaml_serde::Deserializer::from_str(text);
        let manifest: Manifest = match serde_path_to_error::deserialize(de) {
            Ok(m) => m,
            Err(e) => {
                let path = e.path().to_string();
                let mut key = if path == "." { String::new() } else { path };
                let inner = e.into_inner();
                let (mut line, mut column) = inner
                    .location()
                    .map_or((None, None), |l| (Some(l.line()), Some(l.column())));
                let mut message = inner.to_string();
                // yaml_serde adds its own path prefix and position; we print ours.
                if let Some(i) = message.find(" at line ") {
                    message.truncate(i);
                }
                let bare = strip_indices(&key);
                if let Some(rest) = message.strip_prefix(&format!("{bare}: ")) {
                    message = rest.to_owned();
                }
                if message.contains("unexpected end of stream") {
                    message.push_str(": a quote or bracket is not closed");
                }
                if let Some(field) = message
                    .strip_prefix("missing field `")
                    .and_then(|r| r.split('`').next())
                {
                    key = if key.is_empty() {
                        field.to_owned()
                    } else {
                        format!("{key}.{field}")
                    };
                    message = format!(
                        "this key is required but missing{}",
                        if key == field {
                            " (every manifest needs `name`, `version` and `type`)"
                        } else {
                            ""
                        }
                    );
                    // The position is that of the mapping that lacks the key.
                } else if !key.contains('[')
                    && let Some(l) = line_of_key(text, &key)
                    && line != Some(l)
                {
                    // The parser reported the enclosing mapping; point at the key itself.
                    line = Some(l);
                    column = None;
                }
                return Err(err(line, column, key, message));
            }
        };
        validate(&manifest).map_err(|(key, message)| {
            // A missing key has no line of its own: point at the key that requires it.
            let line = line_of_key(text, &key).or_else(|| line_of_key(text, "runtime"));
            err(line, None, key, message)
        })?;
        Ok(manifest)
    }

    /// Reads and parses a manifest file (or `manifest.yaml` inside a folder).
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let file = if path.is_dir() {
            path.join("manifest.yaml")
        } else {
            path.to_owned()
        };
        let text = std::fs::read_to_string(&file).map_err(|e| ManifestError {
            file: file.clone(),
            line: None,
            column: None,
            key: String::new(),
            message: format!("cannot read the manifest: {e}"),
        })?;
        Self::parse(&text, &file)
    }

    /// The JSON Schema of `manifest.yaml`, generated from these types.
    pub fn json_schema() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(Manifest)).unwrap_or_default()
    }

    /// Whether the manifest grants receiving events on `pattern` (some subscription covers it).
    pub fn may_subscribe(&self, pattern: &Pattern) -> bool {
        self.subscriptions.iter().any(|s| s.covers(pattern))
    }

    /// Whether the manifest grants publishing on `topic`.
    pub fn may_publish(&self, topic: &crate::Topic) -> bool {
        self.publications.iter().any(|p| p.matches(topic))
    }

    /// Whether `permissions.hosts` lets the module reach `host` on `port`.
    pub fn may_reach(&self, host: &str, port: u16) -> bool {
        self.permissions.hosts.iter().any(|g| g.allows(host, port))
    }

    /// Whether the manifest grants calling the tool `qualified` (`module.tool`).
    pub fn may_call_tool(&self, qualified: &str) -> bool {
        self.permissions
            .tools
            .iter()
            .any(|p| p.matches_str(qualified))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str =
        "name: echo\nversion: 0.1.0\ntype: capability\nsubscriptions: [\"echo.>\"]\n";

    #[test]
    fn minimal_manifest_parses_with_defaults() {
        let m = Manifest::parse(GOOD, Path::new("m.yaml")).expect("valid");
        assert_eq!(m.name.as_str(), "echo");
        assert_eq!(m.priority, Priority::Normal);
        assert_eq!(m.runtime, Runtime::Native);
        assert!(m.config.enabled);
        assert_eq!(m.permissions.limits.queue, 1024);
    }

    #[test]
    fn host_grants_match_exactly_what_they_say() {
        let g = |s: &str| HostGrant::new(s).expect(s);
        assert!(g("api.example.com").allows("API.example.com", 443));
        assert!(g("api.example.com").allows("api.example.com.", 80));
        assert!(!g("api.example.com").allows("evil-api.example.com", 443));
        assert!(!g("api.example.com").allows("api.example.com.evil.net", 443));
        assert!(g("api.example.com:443").allows("api.example.com", 443));
        assert!(!g("api.example.com:443").allows("api.example.com", 80));
        assert!(g("*.example.com").allows("a.b.example.com", 443));
        assert!(!g("*.example.com").allows("example.com", 443));
        assert!(!g("*.example.com").allows("badexample.com", 443));
        assert!(g("127.0.0.1:8080").allows("127.0.0.1", 8080));
        assert!(!g("127.0.0.1:8080").allows("127.0.0.1", 6379));
        assert!(g("[::1]:8080").allows("::1", 8080));
        assert_eq!(g("[::1]:8080").to_string(), "[::1]:8080");
        assert_eq!(g("*.Example.com").to_string(), "*.example.com");
        for bad in [
            "https://api.example.com",
            "api.example.com/v1",
            "host:0",
            "host:99999",
            "",
            "*.[::1]",
            "[::1",
            "bad_host.com",
            "-a.com",
        ] {
            assert!(HostGrant::new(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn semantic_errors_name_their_line() {
        let text = "name: w\nversion: 0.1.0\ntype: capability\nruntime: wasm\n";
        let e = Manifest::parse(text, Path::new("m.yaml")).expect_err("entry missing");
        assert_eq!(e.key, "entry");
        let text = "name: w\nversion: 0.1.0\ntype: core\npermissions:\n  limits:\n    queue: 0\n";
        let e = Manifest::parse(text, Path::new("m.yaml")).expect_err("queue 0");
        assert_eq!(e.key, "permissions.limits.queue");
        assert_eq!(e.line, Some(6));
    }
}
