//! The ReAct loop: model call → tool calls (in parallel, each with a time limit) → observations
//! → reflection → again, until an answer, the step limit, the budget, or a loop (the same call
//! with the same arguments again) stops it. What happens is told to a [`Host`] as it happens:
//! text deltas as they stream, and one step record per thought, call, observation and
//! reflection.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use lotus_providers::{
    CallParts, ChatEvent, ChatRequest, Message, ModelInfo, ModelRef, Routed, StopReason, ToolCall,
    ToolSpec, Usage,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::protocol::{self, AnswerFilter, Parsed};

/// What the engine needs from the system around it: models, tools, and somewhere to report.
#[async_trait]
pub trait Host: Send + Sync {
    /// What the catalog knows of `model` (its price, for the cost).
    fn info(&self, model: &ModelRef) -> Option<ModelInfo>;
    /// Starts a streamed completion on `chain`.
    async fn chat(&self, chain: &[String], request: ChatRequest) -> Result<Routed, String>;
    /// Calls a tool (`module.tool`).
    async fn call_tool(&self, name: &str, args: Value) -> Result<Value, String>;
    /// More text of the answer being written in `step`.
    async fn delta(&self, step: u32, text: &str);
    /// A step record (`kind`: `model`, `thought`, `tool_call`, `observation`, `reflection`).
    async fn step(&self, record: Value);
    /// Asks a human whether `call` (of a dangerous tool) may run: `Err` says why not (denied, or
    /// no answer in time).
    async fn approve(&self, step: u32, call: &ToolCall) -> Result<(), String>;
}

/// Limits of one task (also `[modules.reasoning]` settings).
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Model calls with tools before the engine asks for an answer without them.
    pub max_steps: u32,
    /// Tokens (input and output, all calls) the task may use.
    pub max_tokens: u64,
    /// USD the task may cost (priced models only).
    pub max_cost_usd: f64,
    /// Longest wait for one tool call.
    #[serde(with = "humantime_serde")]
    pub tool_timeout: Duration,
    /// Longest observation passed back to the model, in bytes (the rest is cut, and it says so).
    pub max_observation_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_steps: 8,
            max_tokens: 200_000,
            max_cost_usd: 0.50,
            tool_timeout: Duration::from_secs(30),
            max_observation_bytes: 16_000,
        }
    }
}

/// Why the loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stopped {
    /// The model answered.
    Answer,
    /// The step limit was reached (the model then answered without tools).
    StepLimit,
    /// The token or cost budget was spent.
    Budget,
    /// The model repeated a call (it then answered without tools).
    Loop,
    /// A model call failed.
    Error,
}

/// A task's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    /// The answer (empty when there is none).
    pub text: String,
    /// Why the loop ended.
    pub stopped: Stopped,
    /// Model calls made.
    pub steps: u32,
    /// Tool calls run.
    pub tool_calls: u32,
    /// The models that answered, in order of first use.
    pub models: Vec<String>,
    /// Tokens used, all calls.
    pub usage: Usage,
    /// What the calls cost (USD, priced models only).
    pub cost_usd: f64,
    /// What went wrong, when `stopped` is `error` or `budget`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Time spent outside the model (context, tools, bookkeeping), µs.
    pub overhead_us: u64,
    /// Time spent waiting for models, µs.
    pub model_us: u64,
    /// Time spent waiting for a human to approve calls, µs.
    pub approval_us: u64,
    /// How the task was delegated: the tier and why, the plan, each part's models, tokens and
    /// cost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delegation: Option<Value>,
}

/// One task for the engine.
pub struct Task<'a> {
    /// The conversation so far, ending with the user's message.
    pub messages: Vec<Message>,
    /// The tools the model may call, in a stable order.
    pub tools: &'a [ToolSpec],
    /// The models to try in order (empty: the host's default).
    pub chain: &'a [String],
    /// Whether the model calls tools natively (else the text protocol; see [`native_tools`]).
    pub native: bool,
    /// Tools (of `tools`) that run only once a human approves the call.
    pub guarded: &'a [String],
    /// Limits.
    pub limits: &'a Limits,
}

/// The provider-side name of a tool: LOTUS's `module.tool` with `.` as `__` (providers allow
/// only letters, digits, `_` and `-`).
pub fn wire_name(name: &str) -> String {
    name.replace('.', "__")
}

/// Whether `model` takes tools natively: the catalog says so, or (unlisted) it is not the local
/// model.
pub fn native_tools(model: &ModelRef, info: Option<&ModelInfo>) -> bool {
    match info {
        Some(i) if !i.capabilities.is_empty() => i.capabilities.iter().any(|c| c == "tools"),
        _ => model.provider != "local",
    }
}

/// A call's identity for loop detection: the tool and its arguments, keys sorted.
fn call_key(name: &str, args: &Value) -> String {
    // serde_json's map keeps keys sorted (no preserve_order feature), so this is canonical.
    format!("{name} {args}")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A model's reply, as the engine reads it.
struct Reply {
    text: String,
    calls: Vec<ToolCall>,
    usage: Usage,
    model: ModelRef,
}

/// Runs the loop.
pub async fn run(host: &dyn Host, task: Task<'_>) -> Outcome {
    let started = Instant::now();
    let limits = task.limits;
    let mut out = Outcome {
        text: String::new(),
        stopped: Stopped::Answer,
        steps: 0,
        tool_calls: 0,
        models: Vec::new(),
        usage: Usage::default(),
        cost_usd: 0.0,
        error: None,
        overhead_us: 0,
        model_us: 0,
        approval_us: 0,
        delegation: None,
    };
    let native = task.native;
    let mut messages = task.messages;
    let by_wire: HashMap<String, &str> = task
        .tools
        .iter()
        .map(|t| (wire_name(&t.name), t.name.as_str()))
        .collect();
    let wire_tools: Vec<ToolSpec> = task
        .tools
        .iter()
        .map(|t| ToolSpec {
            name: wire_name(&t.name),
            ..t.clone()
        })
        .collect();
    if !native && !task.tools.is_empty() {
        let teach = protocol::instructions(task.tools);
        match messages.first_mut() {
            Some(m) if m.role == lotus_providers::Role::System => {
                let text = format!("{}\n\n{teach}", m.text());
                *m = Message::system(text);
            }
            _ => messages.insert(0, Message::system(teach)),
        }
    }
    let mut seen: HashMap<String, u32> = HashMap::new();
    let mut repairs = 0;
    // Set when the engine wants an answer without tools, and why.
    let mut forced: Option<Stopped> = None;
    loop {
        if out.usage.input_tokens + out.usage.output_tokens >= limits.max_tokens
            || out.cost_usd >= limits.max_cost_usd
        {
            out.stopped = Stopped::Budget;
            out.error = Some(format!(
                "the task's budget is spent ({} tokens, ${:.4}; limits {} tokens, ${:.2}): raise max_tokens or max_cost_usd in [modules.reasoning] of lotus.toml",
                out.usage.input_tokens + out.usage.output_tokens,
                out.cost_usd,
                limits.max_tokens,
                limits.max_cost_usd
            ));
            break;
        }
        if forced.is_none() && out.steps >= limits.max_steps {
            forced = Some(Stopped::StepLimit);
            messages.push(Message::user(format!(
                "You have used all {} steps. Answer now with what you know, without tools.",
                limits.max_steps
            )));
            host.step(json!({"kind": "reflection", "step": out.steps, "text": "step limit reached: asking for an answer without tools"})).await;
        }
        let with_tools = forced.is_none() && !task.tools.is_empty();
        out.steps += 1;
        let step = out.steps;
        let mut request = ChatRequest::new(messages.clone());
        // A native model keeps its tools even when asked to answer without them: a conversation
        // holding tool calls must declare them for some providers. Calls it makes then are
        // ignored.
        if native && !task.tools.is_empty() {
            request.tools = wire_tools.clone();
        }
        let t_model = Instant::now();
        let reply = match call(host, task.chain, request, step, !native).await {
            Ok(r) => r,
            Err(e) => {
                out.model_us += micros(t_model.elapsed());
                out.stopped = Stopped::Error;
                out.error = Some(e);
                break;
            }
        };
        out.model_us += micros(t_model.elapsed());
        out.usage += reply.usage;
        out.cost_usd += host
            .info(&reply.model)
            .map_or(0.0, |i| i.cost(&reply.usage));
        let model = reply.model.to_string();
        if !out.models.contains(&model) {
            out.models.push(model.clone());
        }
        host.step(json!({
            "kind": "model", "step": step, "model": model,
            "input_tokens": reply.usage.input_tokens, "output_tokens": reply.usage.output_tokens,
        }))
        .await;

        // What the reply asks for: tool calls (with the thought before them), or the answer.
        let (thought, calls, answer) = if !with_tools {
            // A model taught the text protocol may still use it for its last answer.
            let answer = match (native || task.tools.is_empty(), &reply.text) {
                (false, t) => match protocol::parse(t, task.tools) {
                    Parsed::Answer(a) => a,
                    _ => t.trim().to_owned(),
                },
                (true, t) => t.trim().to_owned(),
            };
            (String::new(), Vec::new(), answer)
        } else if native {
            let calls: Vec<ToolCall> = reply
                .calls
                .into_iter()
                .map(|c| ToolCall {
                    name: by_wire
                        .get(&c.name)
                        .map_or_else(|| c.name.clone(), |n| (*n).to_owned()),
                    ..c
                })
                .collect();
            (reply.text.clone(), calls, reply.text.trim().to_owned())
        } else {
            match protocol::parse(&reply.text, task.tools) {
                Parsed::Answer(a) => (String::new(), Vec::new(), a),
                Parsed::Call {
                    thought,
                    name,
                    arguments,
                } => (
                    thought,
                    vec![ToolCall {
                        id: format!("call_{step}"),
                        name,
                        arguments,
                    }],
                    String::new(),
                ),
                Parsed::Malformed(why) if repairs < 2 => {
                    repairs += 1;
                    host.step(json!({"kind": "reflection", "step": step, "text": format!("the reply could not be used ({why}); asking the model to repair it")})).await;
                    messages.push(Message::assistant(reply.text.clone()));
                    messages.push(Message::user(format!(
                        "That reply could not be used: {why}. Reply with either\nAction: <tool name>\nAction Input: <JSON object>\nor\nFinal Answer: <your answer>"
                    )));
                    continue;
                }
                // Still unusable after the repairs: taken as the answer it is.
                Parsed::Malformed(_) => (String::new(), Vec::new(), reply.text.trim().to_owned()),
            }
        };
        if calls.is_empty() {
            out.text = answer;
            if out.text.is_empty() && forced.is_some() {
                out.text =
                    "I could not finish this: I kept needing tools after my steps ran out.".into();
            }
            out.stopped = forced.unwrap_or(Stopped::Answer);
            break;
        }
        if !thought.trim().is_empty() {
            host.step(json!({"kind": "thought", "step": step, "text": thought.trim()}))
                .await;
        }
        messages.push(if native {
            Message::assistant_calls(reply.text.clone(), calls.clone())
        } else {
            Message::assistant(reply.text.clone())
        });

        // Repeats are not run again: the first is pointed out, the second ends the loop.
        let mut fresh = Vec::new();
        let mut results: Vec<(usize, Result<Value, String>)> = Vec::new();
        for (i, c) in calls.iter().enumerate() {
            let n = seen.entry(call_key(&c.name, &c.arguments)).or_insert(0);
            *n += 1;
            if *n == 1 {
                fresh.push(i);
            } else {
                if *n > 2 {
                    forced = Some(Stopped::Loop);
                }
                results.push((
                    i,
                    Err(format!(
                        "you already called `{}` with these arguments; its result is above. Do not repeat it: answer, or try something different",
                        c.name
                    )),
                ));
                host.step(json!({"kind": "reflection", "step": step, "text": format!("`{}` was called again with the same arguments", c.name)})).await;
            }
        }
        for &i in &fresh {
            host.step(json!({"kind": "tool_call", "step": step, "tool": calls[i].name, "arguments": calls[i].arguments}))
                .await;
        }
        let runs = fresh.iter().map(|&i| {
            let c = &calls[i];
            async move {
                let mut waited = Duration::ZERO;
                // Only a tool offered runs (a made-up or hidden name is told to the model).
                let name = match protocol::resolve(&c.name, task.tools) {
                    Ok(name) => name,
                    Err(why) => return (i, Err(why), Duration::ZERO, waited),
                };
                if task.guarded.iter().any(|g| g == name) {
                    let t = Instant::now();
                    let call = ToolCall {
                        name: name.to_owned(),
                        ..c.clone()
                    };
                    let decision = host.approve(step, &call).await;
                    waited = t.elapsed();
                    if let Err(why) = decision {
                        return (i, Err(why), Duration::ZERO, waited);
                    }
                }
                let t = Instant::now();
                let r = match tokio::time::timeout(
                    limits.tool_timeout,
                    host.call_tool(name, c.arguments.clone()),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => Err(format!(
                        "`{}` did not answer within {} s",
                        c.name,
                        limits.tool_timeout.as_secs_f32()
                    )),
                };
                (i, r, t.elapsed(), waited)
            }
        });
        // Calls of one reply wait for approval side by side: the longest wait is the time lost.
        let mut longest_wait = Duration::ZERO;
        for (i, r, took, waited) in futures_util::future::join_all(runs).await {
            longest_wait = longest_wait.max(waited);
            out.tool_calls += 1;
            let (ok, shown) = match &r {
                Ok(v) => (true, v.clone()),
                Err(e) => (false, json!({"error": e})),
            };
            host.step(json!({
                "kind": "observation", "step": step, "tool": calls[i].name, "ok": ok,
                "result": shown, "duration_us": micros(took),
            }))
            .await;
            results.push((i, r));
        }
        out.approval_us += micros(longest_wait);
        results.sort_by_key(|(i, _)| *i);
        let failed = results.iter().filter(|(_, r)| r.is_err()).count();
        for (i, r) in results {
            let c = &calls[i];
            let mut body = match r {
                Ok(v) => v.to_string(),
                Err(e) => json!({"error": e}).to_string(),
            };
            if body.len() > limits.max_observation_bytes {
                let cut = body.floor_char_boundary(limits.max_observation_bytes);
                let dropped = body.len() - cut;
                body.truncate(cut);
                body.push_str(&format!("… ({dropped} more bytes cut)"));
            }
            messages.push(if native {
                Message::tool_result(
                    &ToolCall {
                        name: wire_name(&c.name),
                        ..c.clone()
                    },
                    body,
                )
            } else {
                Message::user(format!("Observation from {}: {body}", c.name))
            });
        }
        if failed > 0 && forced.is_none() {
            host.step(json!({"kind": "reflection", "step": step, "text": format!("{failed} tool call(s) failed; the model is told why and may try another way")})).await;
        }
        if forced == Some(Stopped::Loop) {
            messages.push(Message::user(
                "You are repeating the same tool call. Stop using tools and answer now with what you know.",
            ));
        }
    }
    out.overhead_us = micros(started.elapsed())
        .saturating_sub(out.model_us)
        .saturating_sub(out.approval_us);
    out
}

/// One model call, streamed: text deltas go to the host as they come (through the protocol's
/// filter when the model writes the text protocol).
async fn call(
    host: &dyn Host,
    chain: &[String],
    request: ChatRequest,
    step: u32,
    text_protocol: bool,
) -> Result<Reply, String> {
    let Routed { model, stream, .. } = host.chat(chain, request).await?;
    let mut stream = stream;
    let mut text = String::new();
    let mut calls = CallParts::default();
    let mut filter = AnswerFilter::default();
    let mut usage = Usage::default();
    let mut finished = false;
    while let Some(ev) = stream.next().await {
        let ev = ev.map_err(|e| e.to_string())?;
        if calls.take(&ev) {
            continue;
        }
        match ev {
            ChatEvent::Text { delta } => {
                text.push_str(&delta);
                let shown = if text_protocol {
                    filter.push(&delta)
                } else {
                    Some(delta)
                };
                if let Some(s) = shown {
                    host.delta(step, &s).await;
                }
            }
            ChatEvent::ToolCallStart { .. } | ChatEvent::ToolCallDelta { .. } => {}
            ChatEvent::Finished {
                stop_reason,
                usage: u,
            } => {
                usage = u.unwrap_or_default();
                finished = true;
                if stop_reason == StopReason::Length && calls.is_empty() && text.is_empty() {
                    return Err(format!(
                        "{model} stopped at its token limit before answering"
                    ));
                }
                break;
            }
        }
    }
    if !finished {
        return Err(format!("{model}: the answer ended before it was complete"));
    }
    if text_protocol && let Some(s) = filter.finish() {
        host.delta(step, &s).await;
    }
    let calls = calls
        .into_parts()
        .map(|(id, name, args)| {
            // Arguments that are not a JSON object are repaired where possible, else passed as
            // they are, so the tool's own validation explains what is wrong.
            let arguments = if args.trim().is_empty() {
                json!({})
            } else {
                serde_json::from_str(&args)
                    .or_else(|_| protocol::lenient_object(&args).map(Value::Object))
                    .unwrap_or(Value::String(args))
            };
            ToolCall {
                id,
                name,
                arguments,
            }
        })
        .collect();
    Ok(Reply {
        text,
        calls,
        usage,
        model,
    })
}
