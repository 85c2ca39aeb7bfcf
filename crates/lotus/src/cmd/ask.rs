//! `lotus ask "…"`: one task for ASH — through the running nucleus when there is one (its
//! event stream carries the answer as it is written), else through a nucleus in this process
//! that runs the memory and reasoning modules on the home's files.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use lotus_core::{Overflow, Pattern};
use lotus_nucleus::Nucleus;
use serde_json::{Value, json};

use super::target::Target;
use crate::cli::AskArgs;
use crate::client::Client;
use crate::config::Config;
use crate::exit::{CliError, ExitCode, bad_input};
use crate::home::Home;
use lotus_reasoning::TaskRequest;

/// The topics a task answers on.
const ANSWER_TOPICS: &str =
    "action.response,action.response.delta,cognition.step,cognition.approval_request";

/// What the printer made of an event.
pub(crate) enum Seen {
    /// Shown, or nothing to show.
    Nothing,
    /// A call waits for a human: the request.
    Approval(Value),
    /// The task's response.
    Done(Value),
}

/// Prints a task's events as they come; returns the final response once it arrives.
pub(crate) struct Printer {
    json: bool,
    steps: bool,
    /// Whether the line on stdout is open (deltas written, no newline yet).
    open: bool,
    /// Whether any of the answer streamed.
    streamed: bool,
    started: Instant,
}

impl Printer {
    pub(crate) fn new(json: bool, steps: bool) -> Self {
        Self {
            json,
            steps,
            open: false,
            streamed: false,
            started: Instant::now(),
        }
    }

    /// Ready for the next task (`lotus chat`).
    pub(crate) fn reset(&mut self) {
        self.open = false;
        self.streamed = false;
        self.started = Instant::now();
    }

    fn close_line(&mut self) {
        if self.open {
            println!();
            self.open = false;
        }
    }

    /// What a task said on `topic`.
    fn on(&mut self, topic: &str, p: &Value) -> Result<Seen> {
        match topic {
            "action.response.delta" if !self.json => {
                let mut out = std::io::stdout();
                out.write_all(p["delta"].as_str().unwrap_or_default().as_bytes())?;
                out.flush()?;
                self.open = true;
                self.streamed = true;
            }
            "cognition.step" if self.steps => {
                self.close_line();
                eprintln!("  · {}", step_line(p));
            }
            // Without --steps, only the tools show (so a pause has a reason).
            "cognition.step" if p["kind"] == "tool_call" => {
                self.close_line();
                eprintln!(
                    "  → {} {}",
                    p["tool"].as_str().unwrap_or("?"),
                    p["arguments"]
                );
            }
            "cognition.step" if p["kind"] == "approval" && p["approved"] == false => {
                self.close_line();
                eprintln!(
                    "  ✗ {} not run: {}",
                    p["tool"].as_str().unwrap_or("?"),
                    p["reason"].as_str().unwrap_or("denied")
                );
            }
            "cognition.approval_request" => {
                self.close_line();
                return Ok(Seen::Approval(p.clone()));
            }
            "action.response" => return Ok(Seen::Done(p.clone())),
            _ => {}
        }
        Ok(Seen::Nothing)
    }

    /// Prints the end of the answer and its cost; fails when the task did.
    pub(crate) fn finish(&mut self, r: &Value) -> Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(r)?);
        } else {
            if !self.streamed && r["stopped"] != "error" {
                // The answer did not stream (a model that sent it whole): print it now.
                print!("{}", r["text"].as_str().unwrap_or_default());
                self.open = true;
            }
            self.close_line();
        }
        if r["stopped"] == "error" {
            let why = r["error"].as_str().unwrap_or("the task failed");
            let code = if why.contains("not configured") || why.contains("no model") {
                ExitCode::BadInput
            } else {
                ExitCode::Failure
            };
            return Err(CliError::new(code, why.to_owned()).into());
        }
        if !self.json {
            let models: Vec<&str> = r["models"]
                .as_array()
                .map(|m| m.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut note = format!(
                "({} · {} steps · {} tools · {}+{} tokens · ${:.4} · {:.1} s",
                models.join(", "),
                r["steps"],
                r["tool_calls"],
                r["usage"]["input_tokens"],
                r["usage"]["output_tokens"],
                r["cost_usd"].as_f64().unwrap_or(0.0),
                self.started.elapsed().as_secs_f64()
            );
            match r["stopped"].as_str() {
                Some("answer") | None => {}
                Some(other) => note.push_str(&format!(" · stopped: {other}")),
            }
            if r.get("learned").is_some() {
                note.push_str(" · remembered");
            }
            if let Some(why) = r["not_learned"].as_str() {
                note.push_str(&format!(" · not remembered: {why}"));
            }
            note.push(')');
            eprintln!("{note}");
        }
        Ok(())
    }
}

fn step_line(p: &Value) -> String {
    let s = |k: &str| p[k].as_str().unwrap_or_default().to_owned();
    match p["kind"].as_str().unwrap_or_default() {
        "context" => format!(
            "context: {} · {} memories · {} earlier turns · {} tools{}",
            s("model"),
            p["memories"],
            p["history"],
            p["tools"],
            if p["native_tools"] == false {
                " (text protocol)"
            } else {
                ""
            }
        ),
        "model" => format!(
            "step {}: {} ({}+{} tokens)",
            p["step"],
            s("model"),
            p["input_tokens"],
            p["output_tokens"]
        ),
        "thought" => format!("thought: {}", s("text")),
        "tool_call" => format!("call {} {}", s("tool"), p["arguments"]),
        "observation" => {
            let mut r = p["result"].to_string();
            if r.len() > 200 {
                r.truncate(r.floor_char_boundary(200));
                r.push('…');
            }
            format!(
                "{} {} ({} ms): {r}",
                if p["ok"] == true { "result" } else { "failed" },
                s("tool"),
                p["duration_us"].as_u64().unwrap_or(0) / 1000
            )
        }
        "reflection" => format!("reflection: {}", s("text")),
        "approval" => format!(
            "approval of {}: {}",
            s("tool"),
            if p["approved"] == true {
                "approved".to_owned()
            } else {
                format!("denied ({})", s("reason"))
            }
        ),
        other => format!("{other}: {p}"),
    }
}

fn task(args: &AskArgs) -> Result<TaskRequest> {
    if args.prompt.trim().is_empty() {
        return Err(bad_input("say what to ask: lotus ask \"…\""));
    }
    Ok(TaskRequest {
        text: args.prompt.clone(),
        user: args.user.clone(),
        session: args.session.clone(),
        model: args.model.clone(),
        max_steps: args.max_steps,
        tools: args.no_tools.then_some(false),
        ..TaskRequest::default()
    })
}

/// Runs `lotus ask`.
pub async fn run(home: &Home, cfg: &Config, args: AskArgs) -> Result<()> {
    let payload = task(&args)?;
    let mut printer = Printer::new(args.json, args.steps);
    let chain: Vec<String> = args.model.iter().cloned().collect();
    let target = Target::open(home, cfg, Some(&chain)).await?;
    let outcome = task_on(&target, &payload, &mut printer).await;
    target.close().await?;
    printer.finish(&outcome?)
}

/// Runs one task on `target`, printing it as it goes; the final `action.response`.
pub(crate) async fn task_on(
    target: &Target,
    task: &TaskRequest,
    printer: &mut Printer,
) -> Result<Value> {
    let payload = serde_json::to_value(task)?;
    match target {
        Target::Remote(client) => remote(target, client, task, printer).await,
        Target::Local(nucleus, _) => local(target, nucleus, payload, printer).await,
    }
}

async fn remote(
    target: &Target,
    client: &Client,
    task: &TaskRequest,
    printer: &mut Printer,
) -> Result<Value> {
    let resp = client
        .open("/api/v1/chat", &serde_json::to_value(task)?)
        .await?;
    let mut events = resp.bytes_stream().eventsource();
    while let Some(item) = events.next().await {
        let item = item.context("the answer's stream broke")?;
        let p: Value = serde_json::from_str(&item.data)
            .context("the nucleus sent an event that is not valid JSON")?;
        let topic = match item.event.as_str() {
            "step" => "cognition.step",
            "delta" => "action.response.delta",
            "approval" => "cognition.approval_request",
            "done" => "action.response",
            "error" => {
                return Err(CliError::new(
                    ExitCode::Failure,
                    p["message"]
                        .as_str()
                        .unwrap_or("the task failed")
                        .to_owned(),
                )
                .into());
            }
            _ => continue,
        };
        match printer.on(topic, &p)? {
            Seen::Done(r) => return Ok(r),
            Seen::Approval(request) => on_approval(target, &request).await?,
            Seen::Nothing => {}
        }
    }
    Err(CliError::new(
        ExitCode::NotRunning,
        "the nucleus closed the event stream before the answer (it is stopping)",
    )
    .into())
}

async fn local(
    target: &Target,
    nucleus: &Nucleus,
    payload: Value,
    printer: &mut Printer,
) -> Result<Value> {
    let patterns = ANSWER_TOPICS
        .split(',')
        .map(Pattern::new)
        .collect::<Result<Vec<_>, _>>()?;
    let sub = nucleus
        .bus()
        .subscribe("cli:ask", patterns, 65_536, Overflow::Block);
    let (ev, _) = nucleus
        .publish("cli", "cognition.task_request", payload)
        .await?;
    while let Some(e) = sub.recv().await {
        if e.correlation_id != Some(ev.id) {
            continue;
        }
        match printer.on(e.topic.as_str(), &e.payload)? {
            Seen::Done(r) => return Ok(r),
            Seen::Approval(request) => on_approval(target, &request).await?,
            Seen::Nothing => {}
        }
    }
    Err(anyhow::anyhow!(
        "the reasoning module stopped before answering"
    ))
}

/// A call waits for approval: the person at the terminal is asked, and the answer goes to
/// `reasoning.approve`. An answer that came too late is said, and the task goes on.
async fn on_approval(target: &Target, request: &Value) -> Result<()> {
    let remote = matches!(target, Target::Remote(_));
    if let Some(answer) = ask_human(request, remote).await?
        && let Err(e) = target.call("reasoning.approve", answer).await
    {
        eprintln!("  ! {e:#}");
    }
    Ok(())
}

/// Whether standard input has a line to read within `wait` (a terminal gives it when Enter is
/// pressed), so a prompt can give up without leaving a read behind.
fn stdin_ready(wait: Duration) -> std::io::Result<bool> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let stdin = rustix::stdio::stdin();
    let mut fds = [PollFd::new(&stdin, PollFlags::IN)];
    let timeout = Timespec {
        tv_sec: i64::try_from(wait.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(wait.subsec_nanos()),
    };
    loop {
        match poll(&mut fds, Some(&timeout)) {
            Ok(n) => return Ok(n > 0),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Asks the person at the terminal whether a dangerous call may run, until the call's time
/// runs out; the answer, or `None` when it is left to someone else (`lotus approve`, against
/// the running nucleus) or came too late.
async fn ask_human(request: &Value, remote: bool) -> Result<Option<Value>> {
    let id = request["id"].clone();
    let tool = request["tool"].as_str().unwrap_or("?").to_owned();
    let args = request["arguments"].to_string();
    if !std::io::stdin().is_terminal() {
        if remote {
            eprintln!(
                "  ? {tool} {args} waits for approval: `lotus approve {}` (or `--deny`) within {} s",
                id.as_str().unwrap_or_default(),
                request["timeout_s"]
            );
            return Ok(None);
        }
        eprintln!(
            "  ? {tool} needs approval, and no one can give it here (no terminal, no running nucleus)"
        );
        return Ok(Some(json!({
            "id": id, "approve": false,
            "reason": "no one could approve it: lotus ran without a terminal and without a running nucleus (`lotus up`, then `lotus approve`)",
        })));
    }
    let wait = Duration::from_secs(request["timeout_s"].as_u64().unwrap_or(120));
    eprint!(
        "  ? ASH wants to run {tool} {args}. Allow? [y/N] (within {} s) ",
        wait.as_secs()
    );
    std::io::stderr().flush()?;
    let line = tokio::task::spawn_blocking(move || {
        if !stdin_ready(wait)? {
            return Ok(None);
        }
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| Some(line))
    })
    .await?
    .map_err(anyhow::Error::from)?;
    let Some(line) = line else {
        eprintln!(
            "\n  (no answer within {} s: {tool} was not run)",
            wait.as_secs()
        );
        return Ok(None);
    };
    let yes = matches!(line.trim().to_lowercase().as_str(), "y" | "yes");
    Ok(Some(if yes {
        json!({"id": id, "approve": true})
    } else {
        json!({"id": id, "approve": false, "reason": "denied at the prompt"})
    }))
}
