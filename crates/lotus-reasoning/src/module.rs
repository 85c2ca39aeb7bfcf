//! The `reasoning` core module: it answers `cognition.task_request` events. For each task it
//! assembles the context (persona, what memory recalls for the message, the session's recent
//! turns, the tools it may offer), runs the [engine](crate::engine), and publishes
//! `action.response.delta` while the answer streams, `cognition.step` for each thought, call,
//! observation and reflection, and `action.response` at the end — all carrying the request's
//! correlation id. The user's message and the answer are recorded in memory
//! (`memory.observe`), which keeps what the user asked it to remember.
//!
//! Tasks run concurrently (up to `concurrency`), each in its own task, so a long one never
//! holds up the module's mailbox.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use lotus_core::{Event, Pattern};
use lotus_nucleus::{Context, ModuleError};
use lotus_providers::{ChatRequest, Message, ModelInfo, ModelRef, Routed, ToolCall, ToolSpec};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, oneshot};
use uuid::Uuid;

use crate::delegate::{self, Complex, Delegation};
use crate::engine::{self, Host, Limits, Outcome, Stopped, Task};

/// The persona when `[modules.reasoning] persona` does not set one.
pub const PERSONA: &str = "You are ASH, the assistant of LOTUS, running on the user's own \
machine. Answer directly and briefly. Use a tool only when it helps; never invent a tool's \
result.";

/// A task, as `cognition.task_request` carries it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    /// What the user said.
    pub text: String,
    /// Whose (the memory's default user when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The session, so its earlier turns are in context (a new one when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The model (a name or alias) to use instead of the module's chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Overrides the step limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u32>,
    /// `false`: no tools for this task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<bool>,
}

/// `[modules.reasoning]` settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
struct Settings {
    persona: String,
    default_user: String,
    /// `max_steps`, `max_tokens`, `max_cost_usd`, `tool_timeout`, `max_observation_bytes`.
    #[serde(flatten)]
    limits: Limits,
    /// Memories recalled per task, at most.
    memory_k: usize,
    /// Tokens of recalled memories, at most.
    memory_tokens: usize,
    /// Earlier turns of the session in context, at most.
    history_turns: usize,
    /// Tokens kept free for the answer.
    answer_tokens: usize,
    /// Tasks at once.
    concurrency: usize,
    /// Tools never offered to the model (patterns over `module.tool`).
    hide_tools: Vec<String>,
    /// Offer tools to models without native tool calling, through the text protocol.
    text_protocol_tools: bool,
    /// Use the memory module (recall, history, recording the turns).
    memory: bool,
    /// Tools that wait for a human besides those their manifests call dangerous (patterns over
    /// `module.tool`).
    approve: Vec<String>,
    /// Dangerous tools that run without asking (patterns over `module.tool`).
    trust: Vec<String>,
    /// How long a call waits for a human before it is denied.
    #[serde(with = "humantime_serde")]
    approval_timeout: Duration,
    /// Routing by tier, and splitting complex requests (`[modules.reasoning.delegation]`).
    delegation: Delegation,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            persona: PERSONA.to_owned(),
            default_user: "me".to_owned(),
            limits: Limits::default(),
            memory_k: 6,
            memory_tokens: 800,
            history_turns: 12,
            answer_tokens: 1024,
            concurrency: 4,
            hide_tools: [
                "memory.observe",
                "memory.history",
                "memory.export",
                "memory.import",
                "memory.reindex",
                "memory.stats",
            ]
            .map(String::from)
            .to_vec(),
            text_protocol_tools: true,
            memory: true,
            approve: Vec::new(),
            trust: Vec::new(),
            approval_timeout: Duration::from_secs(120),
            delegation: Delegation::default(),
        }
    }
}

/// The reasoning module.
#[derive(Default)]
pub struct ReasoningModule {
    settings: Option<Arc<Settings>>,
    patterns: Arc<Patterns>,
    running: Option<Arc<Semaphore>>,
    approvals: Arc<Approvals>,
}

/// The settings' tool patterns, parsed.
#[derive(Default)]
struct Patterns {
    hidden: Vec<Pattern>,
    approve: Vec<Pattern>,
    trust: Vec<Pattern>,
}

fn any_matches(patterns: &[Pattern], name: &str) -> bool {
    patterns.iter().any(|p| p.matches_str(name))
}

/// A call waiting for a human.
struct Pending {
    /// What `cognition.approval_request` said.
    request: Value,
    answer: oneshot::Sender<Result<(), String>>,
}

/// The calls waiting for a human, by approval id.
#[derive(Default)]
struct Approvals {
    pending: Mutex<HashMap<Uuid, Pending>>,
}

impl Approvals {
    /// Answers a waiting call; `Err` when there is none by that id.
    fn decide(
        &self,
        id: Uuid,
        approve: bool,
        reason: Option<&str>,
        by: &str,
    ) -> Result<Value, String> {
        let Some(p) = self.pending.lock().remove(&id) else {
            return Err(format!(
                "no call waits for approval `{id}`: it was answered already or its time ran out (`lotus approve` lists those waiting)"
            ));
        };
        let decision = if approve {
            Ok(())
        } else {
            Err(match reason.filter(|r| !r.trim().is_empty()) {
                Some(r) => format!("{by} did not approve this call: {r}"),
                None => format!("{by} did not approve this call"),
            })
        };
        let _ = p.answer.send(decision);
        Ok(json!({"id": id, "tool": p.request["tool"], "approved": approve}))
    }

    fn list(&self) -> Vec<Value> {
        let mut v: Vec<Value> = self
            .pending
            .lock()
            .values()
            .map(|p| p.request.clone())
            .collect();
        v.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        v
    }
}

/// Estimated tokens of a text (4 bytes a token: close for English with the common tokenizers,
/// and on the safe side for code).
pub fn tokens(text: &str) -> usize {
    text.len().div_ceil(4)
}

/// The [`Host`] of one task: the module's context, replying under the request's correlation id.
struct TaskHost {
    cx: Context,
    correlation: Uuid,
    session: String,
    user: String,
    approvals: Arc<Approvals>,
    approval_timeout: Duration,
}

impl TaskHost {
    async fn emit(&self, topic: &str, mut payload: Value) {
        payload["session"] = json!(self.session);
        if let Err(e) = self.cx.reply_with(self.correlation, topic, payload).await {
            self.cx.warn(format!("cannot publish {topic}: {e}"));
        }
    }
}

#[async_trait]
impl Host for TaskHost {
    fn info(&self, model: &ModelRef) -> Option<ModelInfo> {
        self.cx.catalog()?.info(model).cloned()
    }

    async fn chat(&self, chain: &[String], request: ChatRequest) -> Result<Routed, String> {
        self.cx
            .chat_on(chain.to_vec(), request)
            .await
            .map_err(|e| e.to_string())
    }

    async fn call_tool(&self, name: &str, args: Value) -> Result<Value, String> {
        self.cx
            .call_tool(name, args)
            .await
            .map_err(|e| e.to_string())
    }

    async fn delta(&self, step: u32, text: &str) {
        self.emit(
            "action.response.delta",
            json!({"step": step, "delta": text}),
        )
        .await;
    }

    async fn step(&self, record: Value) {
        self.emit("cognition.step", record).await;
    }

    async fn approve(&self, step: u32, call: &ToolCall) -> Result<(), String> {
        let id = Uuid::now_v7();
        let wait = self.approval_timeout;
        let request = json!({
            "id": id, "session": self.session, "user": self.user, "step": step,
            "tool": call.name, "arguments": call.arguments, "timeout_s": wait.as_secs(),
            "asked_at": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        });
        let (tx, rx) = oneshot::channel();
        self.approvals.pending.lock().insert(
            id,
            Pending {
                request: request.clone(),
                answer: tx,
            },
        );
        self.emit("cognition.approval_request", request).await;
        let decision = match tokio::time::timeout(wait, rx).await {
            Ok(Ok(d)) => d,
            Ok(Err(_)) => Err("the approval was dropped".to_owned()),
            Err(_) => {
                self.approvals.pending.lock().remove(&id);
                Err(format!(
                    "no one approved this call within {} s, so it was not run",
                    wait.as_secs()
                ))
            }
        };
        self.step(json!({
            "kind": "approval", "step": step, "id": id, "tool": call.name,
            "approved": decision.is_ok(), "reason": decision.as_ref().err(),
        }))
        .await;
        decision
    }
}

fn today() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .chars()
        .take(10)
        .collect()
}

/// Calls a memory tool, when memory is on; memory is optional (a nucleus without it still
/// answers), so a failure is logged and read as nothing.
async fn memory(cx: &Context, on: bool, tool: &str, args: Value) -> Option<Value> {
    if !on {
        return None;
    }
    match cx.call_tool(tool, args).await {
        Ok(v) => Some(v),
        Err(e) => {
            cx.warn(format!("{tool}: {e}"));
            None
        }
    }
}

/// What the context holds besides the conversation.
struct Assembled {
    messages: Vec<Message>,
    recalled: usize,
    history: usize,
}

/// What memory gave a task: recalled hits, the session's turns, what it just learned.
#[derive(Clone, Copy)]
struct Gathered<'a> {
    hits: &'a [Value],
    turns: &'a [Value],
    learned: Option<&'a str>,
}

/// Builds the messages: system (persona, date, recalled memories within `memory_tokens`),
/// the session's earlier turns (newest kept first, within the window), the user's message.
fn assemble(
    s: &Settings,
    window: usize,
    tools: &[ToolSpec],
    memory: &Gathered<'_>,
    text: &str,
) -> Result<Assembled, String> {
    let Gathered {
        hits,
        turns,
        learned,
    } = *memory;
    // The system prompt stays the same from one task to the next (persona, date), so provider
    // prompt caches hit; what changes (memories, what was just saved) rides with the message.
    let system = format!("{}\nToday is {} (UTC).", s.persona, today());
    let mut notes = String::new();
    let mut recalled = 0;
    let mut used = 0;
    for h in hits.iter().take(s.memory_k) {
        let Some(t) = h.pointer("/memory/text").and_then(Value::as_str) else {
            continue;
        };
        let line = format!("- {t}\n");
        if used + tokens(&line) > s.memory_tokens {
            break;
        }
        used += tokens(&line);
        notes.push_str(&line);
        recalled += 1;
    }
    // Labels small models follow better than none: the facts, then the message, then what was
    // just saved.
    let text = if recalled == 0 && learned.is_none() {
        text.to_owned()
    } else {
        let label = if text.trim_end().ends_with('?') {
            "Question"
        } else {
            "Message"
        };
        let mut m = String::new();
        if recalled > 0 {
            m.push_str(&format!("Facts about me:\n{notes}\n"));
        }
        m.push_str(&format!("{label}: {text}"));
        if let Some(l) = learned {
            m.push_str(&format!(
                "\n\n(Done: you saved \"{l}\" to memory. Say so in one short sentence.)"
            ));
        }
        m
    };
    let text = text.as_str();
    let fixed = tokens(&system)
        + tokens(text)
        + tools
            .iter()
            .map(|t| tokens(&t.description) + tokens(&t.input_schema.to_string()) + 8)
            .sum::<usize>()
        + s.answer_tokens;
    if fixed > window {
        return Err(format!(
            "the message is too long for the model: about {} tokens with the context, and the model takes {window}; shorten it or use a model with a larger context window (--model)",
            fixed
        ));
    }
    // Earlier turns, newest first, while they fit.
    let mut room = window - fixed;
    let mut kept: Vec<Message> = Vec::new();
    for t in turns.iter().rev() {
        let (Some(role), Some(body)) = (
            t.get("role").and_then(Value::as_str),
            t.get("text").and_then(Value::as_str),
        ) else {
            continue;
        };
        let cost = tokens(body) + 4;
        if cost > room {
            break;
        }
        room -= cost;
        kept.push(match role {
            "assistant" => Message::assistant(body),
            _ => Message::user(body),
        });
    }
    kept.reverse();
    let history = kept.len();
    let mut messages = vec![Message::system(system)];
    messages.extend(kept);
    messages.push(Message::user(text));
    Ok(Assembled {
        messages,
        recalled,
        history,
    })
}

async fn run_task(
    cx: Context,
    s: Arc<Settings>,
    patterns: Arc<Patterns>,
    approvals: Arc<Approvals>,
    ev: Event,
) {
    let correlation = ev.correlation_id.unwrap_or(ev.id);
    let req: TaskRequest = match serde_json::from_value(ev.payload.clone()) {
        Ok(r) => r,
        Err(e) => {
            let host = TaskHost {
                cx: cx.clone(),
                correlation,
                session: String::new(),
                user: String::new(),
                approvals,
                approval_timeout: s.approval_timeout,
            };
            host.emit(
                "action.response",
                json!({"text": "", "stopped": Stopped::Error, "error": format!("cognition.task_request from {}: {e}; send {{\"text\": …, \"user\"?, \"session\"?, \"model\"?}}", ev.source)}),
            )
            .await;
            return;
        }
    };
    let session = req
        .session
        .clone()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| Uuid::now_v7().to_string());
    let user = req
        .user
        .clone()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| s.default_user.clone());
    let host = TaskHost {
        cx: cx.clone(),
        correlation,
        session: session.clone(),
        user: user.clone(),
        approvals,
        approval_timeout: s.approval_timeout,
    };
    // A task that names no model goes by tier, when the cheap and strong tiers differ.
    let d = &s.delegation;
    let tiers = match (d.enabled && req.model.is_none(), req.text.trim().is_empty()) {
        (true, false) => match (cx.first_model(&d.cheap), cx.first_model(&d.strong)) {
            (Some(cheap), Some(strong)) if cheap != strong => Some(strong),
            _ => None,
        },
        _ => None,
    };
    let analysis = tiers.as_ref().map(|_| delegate::analyze(&req.text));
    let chain: Vec<String> = match &analysis {
        Some(a) if a.complex => d.strong.clone(),
        Some(_) => d.cheap.clone(),
        None => req.model.iter().cloned().collect(),
    };
    let host = &host;
    let fail = |e: String| async move {
        host.emit(
            "action.response",
            json!({"text": "", "stopped": Stopped::Error, "error": e}),
        )
        .await;
    };
    if req.text.trim().is_empty() {
        return fail("the task has no text: send {\"text\": \"…\"}".into()).await;
    }
    let Some(model) = cx.first_model(&chain) else {
        let why = match &req.model {
            Some(m) => format!(
                "the model `{m}` cannot be used: its provider is not configured or the name is unknown (`lotus provider list` shows what is)"
            ),
            None => "no model is configured: set an API key (`lotus key set openai`), pull the local model (`lotus model pull smollm2`), or name one with --model".into(),
        };
        return fail(why).await;
    };
    let info = host.info(&model);
    let native = engine::native_tools(&model, info.as_ref());
    let offer_tools = req.tools.unwrap_or(true) && (native || s.text_protocol_tools);
    // The module's own tools (approvals, episodes) are for people: `cx.tools()` leaves them
    // out, and the engine runs only what it offered.
    let offered: Vec<lotus_core::ToolSpec> = if offer_tools {
        cx.tools()
            .into_iter()
            .filter(|t| !any_matches(&patterns.hidden, &t.name))
            .collect()
    } else {
        Vec::new()
    };
    let guarded: Vec<String> = offered
        .iter()
        .filter(|t| {
            (t.dangerous || any_matches(&patterns.approve, &t.name))
                && !any_matches(&patterns.trust, &t.name)
        })
        .map(|t| t.name.clone())
        .collect();
    let tools: Vec<ToolSpec> = offered
        .into_iter()
        .map(|t| ToolSpec {
            name: t.name,
            description: t.description,
            input_schema: t.input_schema,
        })
        .collect();

    // Memory: what it recalls for the message, the session so far; then the message itself.
    let (hits, turns) = tokio::join!(
        memory(
            &cx,
            s.memory,
            "memory.recall",
            json!({"query": req.text, "user": user, "k": s.memory_k})
        ),
        memory(
            &cx,
            s.memory,
            "memory.history",
            json!({"user": user, "session": session, "limit": s.history_turns})
        ),
    );
    let hits = hits.and_then(|v| v.as_array().cloned()).unwrap_or_default();
    let turns = turns
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default();
    let observed = memory(
        &cx,
        s.memory,
        "memory.observe",
        json!({"user": user, "session": session, "role": "user", "text": req.text}),
    )
    .await;
    let window = info
        .as_ref()
        .map(|i| usize::try_from(i.context).unwrap_or(usize::MAX))
        .filter(|&c| c > 0)
        .unwrap_or(8192);
    let learned = observed.as_ref().and_then(|o| o.pointer("/learned/memory"));
    let gathered = Gathered {
        hits: &hits,
        turns: &turns,
        learned: learned.and_then(|m| m["text"].as_str()),
    };
    let assembled = match assemble(&s, window, &tools, &gathered, &req.text) {
        Ok(a) => a,
        Err(e) => return fail(e).await,
    };
    host.step(json!({
        "kind": "context", "step": 0, "model": model.to_string(),
        "native_tools": native, "tools": tools.len(),
        "memories": assembled.recalled, "history": assembled.history,
    }))
    .await;
    let limits = Limits {
        max_steps: req.max_steps.unwrap_or(s.limits.max_steps).max(1),
        ..s.limits.clone()
    };
    if let Some(a) = &analysis {
        host.step(json!({
            "kind": "analysis", "step": 0, "complex": a.complex, "reason": a.reason,
            "tier": if a.complex { "strong" } else { "cheap" }, "model": model.to_string(),
        }))
        .await;
    }
    let mut out: Outcome = match &analysis {
        Some(a) if a.complex => {
            let mut workers: Vec<ModelRef> = Vec::new();
            for w in &d.workers {
                if let Some(m) = cx.first_model(std::slice::from_ref(w))
                    && !workers.contains(&m)
                {
                    workers.push(m);
                }
            }
            delegate::complex(
                host,
                Complex {
                    messages: assembled.messages,
                    text: &req.text,
                    tools: &tools,
                    guarded: &guarded,
                    strong: &chain,
                    native,
                    workers: &workers,
                    text_protocol_tools: s.text_protocol_tools,
                    max_subtasks: d.max_subtasks,
                    limits: &limits,
                },
            )
            .await
        }
        _ => {
            engine::run(
                host,
                Task {
                    messages: assembled.messages,
                    tools: &tools,
                    chain: &chain,
                    native,
                    guarded: &guarded,
                    limits: &limits,
                },
            )
            .await
        }
    };
    if let Some(a) = &analysis {
        let mut report = json!({
            "complexity": if a.complex { "complex" } else { "simple" },
            "reason": a.reason,
            "tier": if a.complex { "strong" } else { "cheap" },
        });
        if let Some(Value::Object(more)) = out.delegation.take()
            && let Some(r) = report.as_object_mut()
        {
            r.extend(more);
        }
        out.delegation = Some(report);
    }
    if !out.text.is_empty() {
        memory(
            &cx,
            s.memory,
            "memory.observe",
            json!({
                "user": user, "session": session, "role": "assistant", "text": out.text,
                "meta": {"models": out.models, "usage": out.usage, "cost_usd": out.cost_usd},
            }),
        )
        .await;
    }
    let mut payload = serde_json::to_value(&out).unwrap_or_else(|_| json!({}));
    payload["user"] = json!(user);
    payload["memories"] = json!(assembled.recalled);
    if let Some(m) = learned {
        payload["learned"] = m["id"].clone();
    }
    if let Some(why) = observed.as_ref().and_then(|o| o.get("not_learned")) {
        payload["not_learned"] = why.clone();
    }
    host.emit("action.response", payload).await;
}

#[lotus_nucleus::module]
impl ReasoningModule {
    async fn initialize(&mut self, cx: &Context) -> Result<(), ModuleError> {
        let s: Settings = serde_json::from_value(cx.settings().clone())
            .map_err(|e| ModuleError::msg(format!("[modules.reasoning]: {e}")))?;
        let parse = |key: &str, list: &[String]| {
            list.iter()
                .map(|p| {
                    Pattern::new(p).map_err(|e| {
                        ModuleError::msg(format!(
                            "[modules.reasoning] {key}: `{p}`: {e}; write patterns over `module.tool`, e.g. `fs.*`"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        if let Some(catalog) = cx.catalog() {
            let d = &s.delegation;
            for (key, names) in [
                ("cheap", &d.cheap),
                ("strong", &d.strong),
                ("workers", &d.workers),
            ] {
                for n in names
                    .iter()
                    .filter(|n| *n != lotus_providers::DEFAULT_CHAIN)
                {
                    catalog.resolve(n).map_err(|e| {
                        ModuleError::msg(format!(
                            "[modules.reasoning.delegation] {key}: `{n}`: {e}"
                        ))
                    })?;
                }
            }
        }
        self.patterns = Arc::new(Patterns {
            hidden: parse("hide_tools", &s.hide_tools)?,
            approve: parse("approve", &s.approve)?,
            trust: parse("trust", &s.trust)?,
        });
        self.running = Some(Arc::new(Semaphore::new(s.concurrency.max(1))));
        self.settings = Some(Arc::new(s));
        Ok(())
    }

    /// The calls waiting for a human to approve them.
    #[tool("approvals")]
    async fn approvals(&mut self) -> Result<Value, ModuleError> {
        Ok(Value::Array(self.approvals.list()))
    }

    /// Approves (`approve: true`) or denies a call waiting for a human, by its approval id.
    #[tool("approve")]
    async fn approve(
        &mut self,
        id: String,
        approve: bool,
        reason: Option<String>,
    ) -> Result<Value, ModuleError> {
        let id = Uuid::parse_str(id.trim())
            .map_err(|e| ModuleError::msg(format!("`{id}` is not an approval id: {e}")))?;
        self.approvals
            .decide(id, approve, reason.as_deref(), "the user")
            .map_err(ModuleError::msg)
    }

    /// An answer to `cognition.approval_request`: `{"id": …, "approve": true|false, "reason"?}`.
    #[on_event("cognition.approval_response")]
    async fn approval_response(&mut self, cx: &Context, ev: &Event) -> Result<(), ModuleError> {
        #[derive(Deserialize)]
        struct Answer {
            id: Uuid,
            approve: bool,
            #[serde(default)]
            reason: Option<String>,
        }
        let a: Answer = serde_json::from_value(ev.payload.clone()).map_err(|e| {
            ModuleError::msg(format!(
                "cognition.approval_response from {}: {e}; send {{\"id\": …, \"approve\": true|false, \"reason\"?}}",
                ev.source
            ))
        })?;
        if let Err(e) = self.approvals.decide(
            a.id,
            a.approve,
            a.reason.as_deref(),
            &format!("`{}`", ev.source),
        ) {
            cx.warn(e);
        }
        Ok(())
    }

    /// Runs a task: `{"text": …, "user"?, "session"?, "model"?, "max_steps"?, "tools"?}`.
    #[on_event("cognition.task_request")]
    async fn task(&mut self, cx: &Context, ev: &Event) -> Result<(), ModuleError> {
        let (Some(s), Some(running)) = (self.settings.clone(), self.running.clone()) else {
            return Err(ModuleError::msg("the reasoning module is not initialized"));
        };
        let (cx, ev) = (cx.clone(), ev.clone());
        let (patterns, approvals) = (self.patterns.clone(), self.approvals.clone());
        tokio::spawn(async move {
            let Ok(_permit) = running.acquire_owned().await else {
                return;
            };
            run_task(cx, s, patterns, approvals, ev).await;
        });
        Ok(())
    }
}
