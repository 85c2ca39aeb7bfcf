//! `lotus chat`: a conversation with ASH. Each line is a task in one session (so earlier turns
//! are in context), answered as it streams; lines starting with `/` are commands.

use std::io::{IsTerminal, Write};

use anyhow::Result;
use serde_json::{Value, json};

use super::ask::{Printer, task_on};
use super::target::Target;
use crate::cli::ChatArgs;
use crate::config::Config;
use crate::home::Home;

const HELP: &str = "\
/model [MODEL]   show or set the model (`/model default` for the configured chain)
/tools           the tools ASH may use
/memory QUERY    what memory recalls for QUERY
/history         this session's turns
/cost            tokens and cost of this session
/new             start a new session (earlier turns leave the context)
/exit            leave (also Ctrl-D)

Leaving or starting anew saves a summary of the conversation to memory.";

/// What the session has used.
#[derive(Default)]
struct Totals {
    tasks: u64,
    input: u64,
    output: u64,
    cost: f64,
    models: Vec<String>,
}

impl Totals {
    fn add(&mut self, r: &Value) {
        self.tasks += 1;
        self.input += r["usage"]["input_tokens"].as_u64().unwrap_or(0);
        self.output += r["usage"]["output_tokens"].as_u64().unwrap_or(0);
        self.cost += r["cost_usd"].as_f64().unwrap_or(0.0);
        for m in r["models"].as_array().into_iter().flatten() {
            if let Some(m) = m.as_str()
                && !self.models.iter().any(|x| x == m)
            {
                self.models.push(m.to_owned());
            }
        }
    }
}

/// Runs `lotus chat`.
pub async fn run(home: &Home, cfg: &Config, args: ChatArgs) -> Result<()> {
    let chain: Vec<String> = args.model.iter().cloned().collect();
    let target = Target::open(home, cfg, Some(&chain)).await?;
    let interactive = std::io::stdin().is_terminal();
    let mut model = args.model.clone();
    let mut session = uuid::Uuid::now_v7().to_string();
    let mut totals = Totals::default();
    // Tasks of the current session (`/new` starts another): one without any needs no summary.
    let mut session_tasks = 0u64;
    let mut printer = Printer::new(false, args.steps);
    if interactive {
        eprintln!("ASH is listening. /help for commands, /exit or Ctrl-D to leave.");
    }
    // Stdin is not held locked between lines: an approval prompt reads it too.
    let stdin = std::io::stdin();
    let mut buf = String::new();
    loop {
        if interactive {
            print!("you › ");
            std::io::stdout().flush()?;
        }
        buf.clear();
        if stdin.read_line(&mut buf)? == 0 {
            break;
        }
        let line = buf.trim().to_owned();
        let line = line.as_str();
        if line.is_empty() {
            continue;
        }
        if let Some(command) = line.strip_prefix('/') {
            let (name, rest) = command
                .split_once(char::is_whitespace)
                .map_or((command, ""), |(n, r)| (n, r.trim()));
            match name {
                "exit" | "quit" | "q" => break,
                "help" | "?" => println!("{HELP}"),
                "model" if rest.is_empty() => println!(
                    "model: {}",
                    model.as_deref().unwrap_or("the configured chain")
                ),
                "model" => {
                    model = (rest != "default").then(|| rest.to_owned());
                    println!(
                        "model: {}",
                        model.as_deref().unwrap_or("the configured chain")
                    );
                }
                "tools" => match target.tools().await {
                    Ok(tools) => {
                        for t in tools {
                            println!("{:<24} {}", t.name, t.description);
                        }
                    }
                    Err(e) => eprintln!("error: {e:#}"),
                },
                "memory" if rest.is_empty() => println!("usage: /memory QUERY"),
                "memory" => match target
                    .call(
                        "memory.recall",
                        json!({"query": rest, "k": 5, "user": args.user}),
                    )
                    .await
                {
                    Ok(hits) => {
                        let hits = hits.as_array().cloned().unwrap_or_default();
                        if hits.is_empty() {
                            println!("(nothing)");
                        }
                        for (i, h) in hits.iter().enumerate() {
                            println!(
                                "{}. {}",
                                i + 1,
                                h["memory"]["text"].as_str().unwrap_or_default()
                            );
                        }
                    }
                    Err(e) => eprintln!("error: {e:#}"),
                },
                "history" => match target
                    .call(
                        "memory.history",
                        json!({"session": session, "limit": 50, "user": args.user}),
                    )
                    .await
                {
                    Ok(turns) => {
                        for t in turns.as_array().into_iter().flatten() {
                            println!(
                                "{:>9}: {}",
                                t["role"].as_str().unwrap_or_default(),
                                t["text"].as_str().unwrap_or_default()
                            );
                        }
                    }
                    Err(e) => eprintln!("error: {e:#}"),
                },
                "cost" => println!(
                    "{} tasks · {}+{} tokens · ${:.4} · {}",
                    totals.tasks,
                    totals.input,
                    totals.output,
                    totals.cost,
                    if totals.models.is_empty() {
                        "no model yet".to_owned()
                    } else {
                        totals.models.join(", ")
                    }
                ),
                "new" => {
                    end_episode(&target, &session, args.user.as_deref(), session_tasks).await;
                    session = uuid::Uuid::now_v7().to_string();
                    session_tasks = 0;
                    println!("a new session begins");
                }
                other => eprintln!("unknown command /{other}; /help lists them"),
            }
            continue;
        }
        let task = lotus_reasoning::TaskRequest {
            text: line.to_owned(),
            session: Some(session.clone()),
            model: model.clone(),
            user: args.user.clone(),
            ..Default::default()
        };
        printer.reset();
        session_tasks += 1;
        match task_on(&target, &task, &mut printer).await {
            Ok(r) => {
                totals.add(&r);
                // A failed task is said, and the conversation goes on.
                if let Err(e) = printer.finish(&r) {
                    eprintln!("error: {e:#}");
                }
            }
            Err(e) => eprintln!("error: {e:#}"),
        }
    }
    end_episode(&target, &session, args.user.as_deref(), session_tasks).await;
    target.close().await
}

/// Ends the session's episode: its summary goes to memory (when it had enough turns).
async fn end_episode(target: &Target, session: &str, user: Option<&str>, tasks: u64) {
    if tasks == 0 {
        return;
    }
    match target
        .call(
            "reasoning.end_episode",
            json!({"session": session, "user": user}),
        )
        .await
    {
        Ok(r) if r["summarized"] == true => {
            eprintln!("(this conversation's summary is in memory)");
        }
        Ok(_) => {}
        Err(e) => eprintln!("the conversation could not be summarized: {e:#}"),
    }
}
