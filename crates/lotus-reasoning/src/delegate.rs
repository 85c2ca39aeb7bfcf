//! Delegation: a quick analysis of the request decides whether it is simple (answered by the
//! cheap tier) or complex (the strong tier). A complex request is first given to the strong
//! model to plan: when it splits into independent parts, each part is answered by its own
//! engine run — side by side, spread over the worker models (several providers where they are
//! configured) — and the strong model writes the one answer from theirs. Every run's models,
//! tokens and cost are added up, and each part's are reported.

use async_trait::async_trait;
use lotus_providers::{ChatRequest, Message, ModelInfo, ModelRef, Routed, ToolCall, ToolSpec};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::engine::{self, Host, Limits, Outcome, Stopped, Task};
use crate::protocol;

/// `[modules.reasoning.delegation]` settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Delegation {
    /// Whether tasks that name no model are analysed and routed by tier.
    pub enabled: bool,
    /// The chain for simple requests (`default`: the configured chain).
    pub cheap: Vec<String>,
    /// The chain for complex requests, their plans and the synthesis.
    pub strong: Vec<String>,
    /// Models that answer the parts of a split request (the usable ones, in turn).
    pub workers: Vec<String>,
    /// Most parts a request is split into.
    pub max_subtasks: usize,
}

impl Default for Delegation {
    fn default() -> Self {
        Self {
            enabled: true,
            cheap: vec!["default".into()],
            strong: vec!["smart".into(), "default".into()],
            workers: vec!["smart".into(), "fast".into(), "cheap".into()],
            max_subtasks: 4,
        }
    }
}

/// How complex a request looks, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Analysis {
    /// Whether it goes to the strong tier.
    pub complex: bool,
    /// What decided it.
    pub reason: String,
}

/// Words and phrases that ask for more than a lookup or a short reply, matched as whole words
/// (so "prove" is not found in "improve").
const COMPLEX_CUES: &[&str] = &[
    "compare",
    "contrast",
    "analyse",
    "analyze",
    "analysis",
    "design",
    "architecture",
    "plan",
    "strategy",
    "step by step",
    "pros and cons",
    "trade-off",
    "tradeoff",
    "evaluate",
    "research",
    "report",
    "essay",
    "in detail",
    "explain why",
    "prove",
    "refactor",
    "implement",
];

/// Decides, from the text alone and in microseconds, whether a request is complex: long, a
/// list of things to do, several questions, or words that ask for analysis or design.
pub fn analyze(text: &str) -> Analysis {
    let words = text.split_whitespace().count();
    // The words, lowercased, each between spaces: a cue is found only as whole words.
    let spaced = format!(
        " {} ",
        text.to_lowercase()
            .split(|c: char| !(c.is_alphanumeric() || c == '-'))
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let items = text
        .lines()
        .map(str::trim_start)
        .filter(|l| {
            l.starts_with("- ")
                || l.starts_with("* ")
                || l.split_once(['.', ')'])
                    .is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        })
        .count();
    let questions = text.matches('?').count();
    let complex = |reason: String| Analysis {
        complex: true,
        reason,
    };
    if words > 120 {
        return complex(format!("a long request ({words} words)"));
    }
    if items >= 2 {
        return complex(format!("a list of {items} things"));
    }
    if questions >= 2 {
        return complex(format!("{questions} questions"));
    }
    if let Some(cue) = COMPLEX_CUES
        .iter()
        .find(|c| spaced.contains(&format!(" {c} ")))
    {
        return complex(format!("it asks to {cue}"));
    }
    Analysis {
        complex: false,
        reason: format!("a short request ({words} words)"),
    }
}

/// What the planner is asked.
fn plan_prompt(text: &str, max: usize) -> String {
    format!(
        "Split the request below into independent parts that can be answered separately, \
         at most {max}. Reply with JSON only: {{\"subtasks\": [\"…\", \"…\"]}}, each part a \
         self-contained instruction. When the request is one task, reply {{\"subtasks\": []}}.\n\n\
         Request: {text}"
    )
}

/// The parts a planner's reply names (none when it names fewer than two, or is not JSON).
pub fn parse_plan(reply: &str, max: usize) -> Vec<String> {
    let Ok(plan) = protocol::lenient_object(reply) else {
        return Vec::new();
    };
    let parts: Vec<String> = plan
        .get("subtasks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| match p {
            Value::String(s) => Some(s.trim().to_owned()),
            // `{"task": "…"}` and the like.
            Value::Object(o) => o
                .values()
                .find_map(Value::as_str)
                .map(|s| s.trim().to_owned()),
            _ => None,
        })
        .filter(|s| !s.is_empty())
        .take(max)
        .collect();
    if parts.len() < 2 { Vec::new() } else { parts }
}

/// A host for a part of the work: its text does not stream as the answer, and its steps say
/// which part they belong to.
struct Part<'a> {
    host: &'a dyn Host,
    tag: Value,
}

#[async_trait]
impl Host for Part<'_> {
    fn info(&self, model: &ModelRef) -> Option<ModelInfo> {
        self.host.info(model)
    }
    async fn chat(&self, chain: &[String], request: ChatRequest) -> Result<Routed, String> {
        self.host.chat(chain, request).await
    }
    async fn call_tool(&self, name: &str, args: Value) -> Result<Value, String> {
        self.host.call_tool(name, args).await
    }
    async fn delta(&self, _step: u32, _text: &str) {}
    async fn step(&self, mut record: Value) {
        if let (Some(r), Some(t)) = (record.as_object_mut(), self.tag.as_object()) {
            r.extend(t.clone());
        }
        self.host.step(record).await;
    }
    async fn approve(&self, step: u32, call: &ToolCall) -> Result<(), String> {
        self.host.approve(step, call).await
    }
}

/// A complex task, ready to plan.
pub struct Complex<'a> {
    /// The assembled conversation, ending with the user's message (facts included).
    pub messages: Vec<Message>,
    /// What the user asked.
    pub text: &'a str,
    /// The tools.
    pub tools: &'a [ToolSpec],
    /// The tools that wait for approval.
    pub guarded: &'a [String],
    /// The strong chain.
    pub strong: &'a [String],
    /// Whether the strong chain's model calls tools natively.
    pub native: bool,
    /// The worker models (resolved, usable, distinct); empty: the strong chain answers the
    /// parts.
    pub workers: &'a [ModelRef],
    /// Whether models without native tool calling get tools (text protocol).
    pub text_protocol_tools: bool,
    /// Most parts.
    pub max_subtasks: usize,
    /// The task's limits, shared among the runs.
    pub limits: &'a Limits,
}

/// Adds a run that followed the others to the total: its use and its time.
fn add(total: &mut Outcome, part: &Outcome) {
    add_use(total, part);
    add_time(total, part);
}

/// Adds a run's use (steps, calls, tokens, cost, models) to the total.
fn add_use(total: &mut Outcome, part: &Outcome) {
    total.steps += part.steps;
    total.tool_calls += part.tool_calls;
    total.usage += part.usage;
    total.cost_usd += part.cost_usd;
    for m in &part.models {
        if !total.models.contains(m) {
            total.models.push(m.clone());
        }
    }
}

/// Adds a run's time (model, approval, overhead) to the total. Of runs side by side only the
/// slowest one's counts, so the times add up to what the clock saw.
fn add_time(total: &mut Outcome, part: &Outcome) {
    total.model_us += part.model_us;
    total.approval_us += part.approval_us;
    total.overhead_us += part.overhead_us;
}

/// What is left of the task's budget, shared among `ways` runs.
fn share(limits: &Limits, used: &Outcome, ways: usize) -> Limits {
    let ways = ways.max(1);
    let tokens = used.usage.input_tokens + used.usage.output_tokens;
    Limits {
        max_tokens: limits.max_tokens.saturating_sub(tokens) / ways as u64,
        max_cost_usd: (limits.max_cost_usd - used.cost_usd).max(0.0) / ways as f64,
        ..limits.clone()
    }
}

/// Plans a complex task; answers its parts side by side and writes the answer from theirs, or
/// (one part) answers it on the strong chain.
pub async fn complex(host: &dyn Host, c: Complex<'_>) -> Outcome {
    let planner = Part {
        host,
        tag: json!({"phase": "plan"}),
    };
    let system = c.messages.first().cloned().into_iter();
    let plan = engine::run(
        &planner,
        Task {
            messages: system
                .chain([Message::user(plan_prompt(c.text, c.max_subtasks))])
                .collect(),
            tools: &[],
            chain: c.strong,
            native: c.native,
            guarded: &[],
            limits: &Limits {
                max_steps: 1,
                ..c.limits.clone()
            },
        },
    )
    .await;
    let mut total = plan.clone();
    total.text.clear();
    if plan.stopped == Stopped::Error {
        return total;
    }
    let parts = parse_plan(&plan.text, c.max_subtasks.max(2));
    host.step(json!({"kind": "plan", "step": 0, "subtasks": parts}))
        .await;
    if parts.is_empty() {
        // One task: the strong chain answers it as it is.
        let direct = engine::run(
            host,
            Task {
                messages: c.messages,
                tools: c.tools,
                chain: c.strong,
                native: c.native,
                guarded: c.guarded,
                limits: &share(c.limits, &total, 1),
            },
        )
        .await;
        add(&mut total, &direct);
        total.text = direct.text;
        total.stopped = direct.stopped;
        total.error = direct.error;
        total.delegation = Some(json!({"plan": "one task", "subtasks": []}));
        return total;
    }

    // The parts, side by side.
    let context = c.messages.last().map(Message::text).unwrap_or_default();
    let limits = share(c.limits, &total, parts.len() + 1);
    let runs = parts.iter().enumerate().map(|(i, part)| {
        let (chain, native) = match c.workers.get(i % c.workers.len().max(1)) {
            Some(m) => {
                let info = host.info(m);
                (vec![m.to_string()], engine::native_tools(m, info.as_ref()))
            }
            None => (c.strong.to_vec(), c.native),
        };
        let tools = if native || c.text_protocol_tools {
            c.tools
        } else {
            &[]
        };
        let messages: Vec<Message> = c
            .messages
            .first()
            .cloned()
            .into_iter()
            .chain([Message::user(format!(
                "{context}\n\nThis is one part of that request; answer only this part, briefly: {part}"
            ))])
            .collect();
        let limits = &limits;
        async move {
            let worker = Part {
                host,
                tag: json!({"subtask": i + 1}),
            };
            host.step(json!({"kind": "subtask", "step": 0, "subtask": i + 1, "text": part, "chain": chain}))
                .await;
            let out = engine::run(
                &worker,
                Task {
                    messages,
                    tools,
                    chain: &chain,
                    native,
                    guarded: c.guarded,
                    limits,
                },
            )
            .await;
            (part, out)
        }
    });
    let answered = futures_util::future::join_all(runs).await;
    let mut report = Vec::new();
    let mut findings = String::new();
    if let Some(slowest) = answered
        .iter()
        .map(|(_, out)| out)
        .max_by_key(|o| o.model_us + o.approval_us + o.overhead_us)
    {
        add_time(&mut total, slowest);
    }
    for (i, (part, out)) in answered.iter().enumerate() {
        add_use(&mut total, out);
        report.push(json!({
            "text": part, "models": out.models, "stopped": out.stopped, "steps": out.steps,
            "usage": out.usage, "cost_usd": out.cost_usd, "error": out.error,
        }));
        let answer = if out.text.is_empty() {
            format!(
                "(no answer: {})",
                out.error.as_deref().unwrap_or("the part failed")
            )
        } else {
            out.text.clone()
        };
        findings.push_str(&format!("### Part {}: {part}\n{answer}\n\n", i + 1));
    }

    // The answer, from the parts' answers, on the strong chain (streamed).
    let mut messages = c.messages;
    messages.push(Message::user(format!(
        "The parts of my request were answered separately:\n\n{findings}Write the one answer \
         to my request from them: complete, without repeating yourself, without mentioning the \
         parts."
    )));
    let synthesis = engine::run(
        host,
        Task {
            messages,
            tools: &[],
            chain: c.strong,
            native: c.native,
            guarded: &[],
            limits: &share(c.limits, &total, 1),
        },
    )
    .await;
    add(&mut total, &synthesis);
    total.text = synthesis.text;
    total.stopped = synthesis.stopped;
    total.error = synthesis.error;
    total.delegation = Some(json!({"plan": "split", "subtasks": report}));
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_questions_are_simple_and_lists_questions_and_analysis_are_complex() {
        for simple in [
            "What is my favourite editor?",
            "Remember that my favourite editor is Helix.",
            "hi",
            // Cues inside other words are not cues.
            "Improve this sentence.",
            "Who is the reporter on this story?",
            "Is the designated driver here?",
        ] {
            assert!(!analyze(simple).complex, "{simple}");
        }
        for (complex, why) in [
            ("Compare Rust and Go.", "compare"),
            ("Give me the pros and cons of Rust.", "pros and cons"),
            ("Make a plan for the move.", "plan"),
            ("Do this:\n1. fetch the page\n2. summarise it", "list of 2"),
            ("- a\n- b\n- c", "list of 3"),
            ("Where is Lisbon? And how far is Porto?", "2 questions"),
            (&"word ".repeat(130), "long request"),
        ] {
            let a = analyze(complex);
            assert!(a.complex, "{complex}");
            assert!(a.reason.contains(why), "{complex}: {}", a.reason);
        }
    }

    #[test]
    fn a_plan_is_read_forgivingly_and_needs_two_parts() {
        assert_eq!(
            parse_plan(
                "Sure:\n```json\n{\"subtasks\": [\"a\", \"b\", \"c\"]}\n```",
                2
            ),
            ["a", "b"]
        );
        assert_eq!(
            parse_plan("{'subtasks': [{'task': 'x'}, {'task': 'y'},]}", 4),
            ["x", "y"]
        );
        assert!(parse_plan("{\"subtasks\": [\"only\"]}", 4).is_empty());
        assert!(parse_plan("I would not split this.", 4).is_empty());
        assert!(parse_plan("{\"subtasks\": [\"\", \"  \"]}", 4).is_empty());
    }
}
