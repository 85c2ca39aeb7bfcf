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
use std::time::{Duration, Instant, SystemTime};

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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// The conversation so far, oldest first, when the caller keeps it (the OpenAI-compatible
    /// API does): it replaces the session's turns from memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<Turn>>,
    /// The caller's instructions (an OpenAI `system` message), added to the persona.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
}

/// One earlier turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Turn {
    /// `user` or `assistant`.
    pub role: Role,
    /// What was said.
    pub text: String,
}

/// Who said a turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Role {
    /// The user.
    User,
    /// ASH.
    Assistant,
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
    /// Summarize finished conversations into memory.
    summaries: bool,
    /// A session without a task this long is finished (and summarized).
    #[serde(with = "humantime_serde")]
    episode_idle: Duration,
    /// Turns a session needs before it is worth a summary.
    episode_min_turns: usize,
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
                "memory.profile",
            ]
            .map(String::from)
            .to_vec(),
            text_protocol_tools: true,
            memory: true,
            approve: Vec::new(),
            trust: Vec::new(),
            approval_timeout: Duration::from_secs(120),
            delegation: Delegation::default(),
            summaries: true,
            episode_idle: Duration::from_secs(600),
            episode_min_turns: 4,
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
    episodes: Arc<Episodes>,
}

/// A session with turns since its last summary.
struct Episode {
    user: String,
    last: Instant,
}

/// The sessions of this run, until they are summarized.
#[derive(Default)]
struct Episodes {
    open: Mutex<HashMap<String, Episode>>,
}

impl Episodes {
    fn touch(&self, session: &str, user: &str) {
        self.open.lock().insert(
            session.to_owned(),
            Episode {
                user: user.to_owned(),
                last: Instant::now(),
            },
        );
    }

    /// Takes the sessions idle for `idle`: `(session, user)`.
    fn idle(&self, idle: Duration) -> Vec<(String, String)> {
        let mut open = self.open.lock();
        let done: Vec<String> = open
            .iter()
            .filter(|(_, e)| e.last.elapsed() >= idle)
            .map(|(k, _)| k.clone())
            .collect();
        done.into_iter()
            .filter_map(|k| open.remove(&k).map(|e| (k, e.user)))
            .collect()
    }
}

/// Words a summary uses about any conversation.
const SUMMARY_WORDS: &[&str] = &[
    "user",
    "users",
    "asked",
    "asks",
    "said",
    "says",
    "told",
    "tells",
    "wanted",
    "wants",
    "assistant",
    "conversation",
    "about",
    "that",
    "this",
    "with",
    "what",
    "which",
    "their",
    "they",
    "them",
    "there",
    "were",
    "from",
    "have",
    "been",
    "also",
    "would",
    "could",
    "should",
    "into",
    "then",
    "than",
    "when",
    "where",
    "while",
    "discussed",
    "talked",
    "mentioned",
    "explained",
    "answered",
    "replied",
    "remember",
    "remembered",
    "noted",
    "confirmed",
    "summary",
    "your",
    "yours",
    "will",
];

/// Whether a summary is about the conversation: most of its own words (beyond those any
/// summary uses) come from the transcript. A small model may write about something else
/// entirely; such a summary is not kept.
fn grounded(summary: &str, transcript: &str) -> bool {
    fn words(t: &str) -> impl Iterator<Item = String> + '_ {
        t.split(|c: char| !c.is_alphanumeric())
            .filter(|w| w.chars().count() >= 4)
            .map(str::to_lowercase)
    }
    let source: std::collections::HashSet<String> = words(transcript).collect();
    let own: Vec<String> = words(summary)
        .filter(|w| !SUMMARY_WORDS.contains(&w.as_str()))
        .collect();
    if own.is_empty() {
        return false;
    }
    let found = own.iter().filter(|w| source.contains(*w)).count();
    found * 10 >= own.len() * 6
}

/// Summarizes a session's conversation into memory (`conversation_summaries`, superseding an
/// earlier summary of the same session): the cheap tier writes it, or — when no model can —
/// the summary is the user's messages themselves. `Ok(None)`: too short to be worth it.
async fn summarize(
    cx: &Context,
    s: &Settings,
    user: &str,
    session: &str,
) -> Result<Option<Value>, String> {
    let turns = cx
        .call_tool(
            "memory.history",
            json!({"user": user, "session": session, "limit": 200}),
        )
        .await
        .map_err(|e| format!("the conversation cannot be read: {e}"))?;
    let turns = turns.as_array().cloned().unwrap_or_default();
    if turns.len() < s.episode_min_turns.max(1) {
        return Ok(None);
    }
    // The newest turns that fit in about 6,000 characters.
    let mut transcript: Vec<String> = Vec::new();
    let mut size = 0;
    for t in turns.iter().rev() {
        let line = format!(
            "{}: {}",
            t["role"].as_str().unwrap_or("user"),
            t["text"].as_str().unwrap_or_default()
        );
        if size + line.len() > 6000 && !transcript.is_empty() {
            break;
        }
        size += line.len();
        transcript.push(line);
    }
    transcript.reverse();
    let transcript = transcript.join("\n");
    let request = ChatRequest::new(vec![
        Message::system("You write brief notes for your own memory."),
        Message::user(format!(
            "Summarize this conversation in at most three sentences: what the user wanted, what \
             was done or decided, and anything worth remembering. Write about \"the user\".\n\n\
             {transcript}"
        )),
    ]);
    let written = cx
        .complete_on(s.delegation.cheap.clone(), request)
        .await
        .map(|(model, r)| (r.text.trim().to_owned(), model.to_string()));
    let (summary, by) = match written {
        Ok((text, model)) if grounded(&text, &transcript) => (text, model),
        other => {
            match other {
                Err(e) => cx.warn(format!(
                    "no model could summarize session {session} ({e}); keeping the user's messages"
                )),
                Ok((text, model)) => cx.warn(format!(
                    "{model}'s summary of session {session} is not about the conversation ({text:?}); keeping the user's messages"
                )),
            }
            let asked: Vec<&str> = turns
                .iter()
                .filter(|t| t["role"] == "user")
                .filter_map(|t| t["text"].as_str())
                .collect();
            let mut text = format!("The user said: {}", asked.join(" / "));
            if text.len() > 1000 {
                text.truncate(text.floor_char_boundary(1000));
                text.push('…');
            }
            (text, "none".to_owned())
        }
    };
    let text = format!("Conversation of {}: {summary}", today());
    let stored = cx
        .call_tool(
            "memory.remember",
            json!({
                "text": text, "user": user, "kind": "summary", "importance": 0.5,
                "subject": format!("conversation {session}"), "attribute": "summary",
                "source": "reasoning",
                "metadata": {"session": session, "turns": turns.len(), "model": by},
            }),
        )
        .await
        .map_err(|e| format!("the summary cannot be remembered: {e}"))?;
    let id = stored.pointer("/memory/id").cloned().unwrap_or(Value::Null);
    let done = json!({"session": session, "user": user, "summary": text, "memory": id, "model": by, "turns": turns.len()});
    if let Err(e) = cx.publish("cognition.episode", done.clone()).await {
        cx.warn(format!("cannot publish cognition.episode: {e}"));
    }
    Ok(Some(done))
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

/// Removes a call from those waiting when its wait ends, whichever way.
struct Waiting<'a> {
    approvals: &'a Approvals,
    id: Uuid,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.approvals.pending.lock().remove(&self.id);
    }
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
        let (tx, mut rx) = oneshot::channel();
        self.approvals.pending.lock().insert(
            id,
            Pending {
                request: request.clone(),
                answer: tx,
            },
        );
        // However the wait ends (answered, timed out, the task dropped), the call no longer waits.
        let _waiting = Waiting {
            approvals: &self.approvals,
            id,
        };
        self.emit("cognition.approval_request", request).await;
        let late = || {
            format!(
                "no one approved this call within {} s, so it was not run",
                wait.as_secs()
            )
        };
        let decision = match tokio::time::timeout(wait, &mut rx).await {
            Ok(Ok(d)) => d,
            Ok(Err(_)) => Err(
                "the reasoning module stopped while this call waited for approval, so it was not run"
                    .to_owned(),
            ),
            Err(_) => {
                // An answer taken just as the time ran out stands: it is on its way.
                let answered = self.approvals.pending.lock().remove(&id).is_none();
                if answered {
                    rx.await.unwrap_or_else(|_| Err(late()))
                } else {
                    Err(late())
                }
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
    /// The user's profile (keys and values).
    profile: Option<&'a serde_json::Map<String, Value>>,
    hits: &'a [Value],
    turns: &'a [Value],
    learned: Option<&'a str>,
    /// The caller's instructions.
    instructions: Option<&'a str>,
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
        profile,
        hits,
        turns,
        learned,
        instructions,
    } = *memory;
    // The system prompt stays the same from one task to the next (persona, date, the user's
    // profile, which seldom changes), so provider prompt caches hit; what changes (memories,
    // what was just saved) rides with the message.
    let mut system = format!("{}\nToday is {} (UTC).", s.persona, today());
    if let Some(i) = instructions.map(str::trim).filter(|i| !i.is_empty()) {
        system.push('\n');
        system.push_str(i);
    }
    if let Some(p) = profile.filter(|p| !p.is_empty()) {
        // Entries in key order while they fit in about 150 tokens (the first one, cut, if it
        // alone does not).
        let mut line = String::new();
        for (k, v) in p {
            let entry = format!(
                "{k}: {}",
                v.as_str().map_or_else(|| v.to_string(), str::to_owned)
            );
            if !line.is_empty() && line.len() + 2 + entry.len() > 600 {
                break;
            }
            if !line.is_empty() {
                line.push_str("; ");
            }
            line.push_str(&entry);
        }
        line.truncate(line.floor_char_boundary(600));
        system.push_str(&format!("\nAbout the user: {line}."));
    }
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
    episodes: Arc<Episodes>,
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
    let tiered = d.enabled
        && req.model.is_none()
        && !req.text.trim().is_empty()
        && matches!(
            (cx.first_model(&d.cheap), cx.first_model(&d.strong)),
            (Some(cheap), Some(strong)) if cheap != strong
        );
    let analysis = tiered.then(|| delegate::analyze(&req.text));
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
    // A conversation the caller keeps replaces the session's turns from memory.
    let given = req.history.as_ref().map(|h| {
        h.iter()
            .map(|t| json!({"role": t.role, "text": t.text}))
            .collect::<Vec<_>>()
    });
    let (profile, hits, turns) = tokio::join!(
        memory(&cx, s.memory, "memory.profile", json!({"user": user})),
        memory(
            &cx,
            s.memory,
            "memory.recall",
            json!({"query": req.text, "user": user, "k": s.memory_k})
        ),
        memory(
            &cx,
            s.memory && given.is_none(),
            "memory.history",
            json!({"user": user, "session": session, "limit": s.history_turns})
        ),
    );
    let hits = hits.and_then(|v| v.as_array().cloned()).unwrap_or_default();
    let turns = given.unwrap_or_else(|| {
        turns
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    });
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
        profile: profile.as_ref().and_then(Value::as_object),
        hits: &hits,
        turns: &turns,
        learned: learned.and_then(|m| m["text"].as_str()),
        instructions: req.instructions.as_deref(),
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
        if s.memory && s.summaries {
            episodes.touch(&session, &user);
        }
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

    /// Ends a conversation: its summary goes to memory (when it has enough turns), so a later
    /// session knows what happened. `{"summarized": false, "reason"}` when it is too short or
    /// summaries are off. The session stays open until its summary is stored, so one cut short
    /// is summarized later, when it has been idle for `episode_idle`.
    #[tool("end_episode")]
    async fn end_episode(
        &mut self,
        cx: &Context,
        session: String,
        user: Option<String>,
    ) -> Result<Value, ModuleError> {
        let s = self
            .settings
            .clone()
            .ok_or_else(|| ModuleError::msg("the reasoning module is not initialized"))?;
        if !(s.memory && s.summaries) {
            self.episodes.open.lock().remove(&session);
            return Ok(json!({
                "summarized": false,
                "reason": "summaries are off ([modules.reasoning] memory and summaries)",
            }));
        }
        let known = self
            .episodes
            .open
            .lock()
            .get(&session)
            .map(|e| e.user.clone());
        let user = user
            .filter(|u| !u.trim().is_empty())
            .or(known)
            .unwrap_or_else(|| s.default_user.clone());
        let done = summarize(cx, &s, &user, &session)
            .await
            .map_err(ModuleError::msg)?;
        self.episodes.open.lock().remove(&session);
        Ok(match done {
            Some(done) => json!({"summarized": true, "episode": done}),
            None => json!({
                "summarized": false,
                "reason": format!("fewer than {} turns", s.episode_min_turns),
            }),
        })
    }

    /// Summarizes the sessions idle for `episode_idle`.
    #[periodic(every = "1m")]
    async fn episodes(&mut self, cx: &Context) -> Result<(), ModuleError> {
        let Some(s) = self.settings.clone() else {
            return Ok(());
        };
        let idle = self.episodes.idle(s.episode_idle);
        if idle.is_empty() {
            return Ok(());
        }
        // Model calls run beside the mailbox.
        let cx = cx.clone();
        tokio::spawn(async move {
            for (session, user) in idle {
                if let Err(e) = summarize(&cx, &s, &user, &session).await {
                    cx.warn(format!("session {session}: {e}"));
                }
            }
        });
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
        // Only a person answers: through the API or the CLI, never another module.
        if !matches!(ev.source.as_str(), "api" | "cli") {
            cx.warn(format!(
                "cognition.approval_response from `{}` is ignored: approvals come from a person (`lotus approve`, the API)",
                ev.source
            ));
            return Ok(());
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
        let episodes = self.episodes.clone();
        tokio::spawn(async move {
            let Ok(_permit) = running.acquire_owned().await else {
                return;
            };
            run_task(cx, s, patterns, approvals, episodes, ev).await;
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::grounded;

    #[test]
    fn a_summary_about_something_else_is_not_grounded() {
        let t = "user: My bike is blue and I ride it to work.\nassistant: Noted: your bike is blue.\nuser: What colour is my bike?\nassistant: Blue.";
        assert!(grounded(
            "The user said their bike is blue and that they ride it to work.",
            t
        ));
        assert!(grounded("user: My bike is blue", t));
        assert!(!grounded(
            "The user is going to the gym tomorrow for a workout.",
            t
        ));
        assert!(!grounded("", t));
        assert!(!grounded("The user asked.", t));
    }
}
