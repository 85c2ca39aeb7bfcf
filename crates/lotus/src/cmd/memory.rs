//! `lotus memory remember|recall|forget|stats|export|import|reindex`: the memory module's tools, through
//! the running nucleus when there is one, else through a nucleus in this process that runs only
//! the memory module on the home's files.

use std::io::{BufRead, Write};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use super::target::Target;
use crate::cli::MemoryCmd;
use crate::config::Config;
use crate::exit::bad_input;
use crate::home::Home;

/// With the local embedding model configured and missing, fetches it once (like `lotus
/// provider chat` does for the chat model), unless `[providers.local] auto_pull` is off.
pub(crate) async fn fetch_embedding_model(home: &Home, cfg: &Config) -> Result<()> {
    #[cfg(feature = "local")]
    {
        let model = cfg
            .modules
            .get("memory")
            .and_then(|m| m.get("embed"))
            .and_then(Value::as_str)
            .unwrap_or(lotus_memory::module::DEFAULT_EMBED);
        if model == format!("local:{}", lotus_local::EMBED_MODEL)
            && cfg.providers.local.auto_pull
            && !lotus_local::ready(&home.models(), lotus_local::EMBED_MODEL)
        {
            eprintln!("fetching the local embedding model once (lotus model pull minilm)");
            super::model::pull(home, lotus_local::EMBED_MODEL, None).await?;
        }
    }
    #[cfg(not(feature = "local"))]
    let _ = (home, cfg);
    Ok(())
}

fn user_arg(user: Option<String>) -> Value {
    user.map_or(Value::Null, Value::String)
}

fn date(us: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_micros(u64::try_from(us).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Runs a `lotus memory` command.
pub async fn run(home: &Home, cfg: &Config, cmd: MemoryCmd) -> Result<()> {
    // Arguments are checked before anything is opened.
    let (tool, args, json) = match &cmd {
        MemoryCmd::Remember {
            text,
            user,
            kind,
            importance,
            subject,
            attribute,
            json,
        } => (
            "memory.remember",
            json!({
                "text": text, "user": user_arg(user.user.clone()), "kind": kind,
                "importance": importance, "subject": subject, "attribute": attribute,
                "source": "cli",
            }),
            *json,
        ),
        MemoryCmd::Recall {
            query,
            user,
            k,
            kind,
            all,
            json,
        } => (
            "memory.recall",
            json!({
                "query": query, "user": user_arg(user.user.clone()), "k": k,
                "kinds": (!kind.is_empty()).then_some(kind), "include_superseded": all,
            }),
            *json,
        ),
        MemoryCmd::Forget {
            ids,
            user,
            kind,
            subject,
            attribute,
            everything,
            json,
        } => (
            "memory.forget",
            json!({
                "ids": ids, "user": user_arg(user.user.clone()), "kind": kind,
                "subject": subject, "attribute": attribute, "all": everything,
            }),
            *json,
        ),
        MemoryCmd::Profile {
            key: None,
            user,
            json,
            ..
        } => (
            "memory.profile",
            json!({"user": user_arg(user.user.clone())}),
            *json,
        ),
        MemoryCmd::Profile {
            key: Some(key),
            value,
            unset,
            user,
            json,
        } => {
            let value = match (value, unset) {
                (_, true) => Value::Null,
                (Some(v), false) => match serde_json::from_str(v) {
                    Ok(Value::Null) => {
                        return Err(bad_input(format!(
                            "`null` is no value for `{key}`: remove the key with `lotus memory profile {key} --unset`, or quote it ('\"null\"') to keep the word"
                        )));
                    }
                    Ok(parsed) => parsed,
                    Err(_) => json!(v),
                },
                (None, false) => {
                    return Err(bad_input(format!(
                        "give `{key}` a value (lotus memory profile {key} VALUE) or remove it with --unset"
                    )));
                }
            };
            (
                "memory.profile_set",
                json!({"key": key, "value": value, "user": user_arg(user.user.clone())}),
                *json,
            )
        }
        MemoryCmd::Stats(f) => ("memory.stats", json!({}), f.json),
        MemoryCmd::Export {
            user, all_users, ..
        } => (
            "memory.export",
            json!({ "user": user_arg(user.user.clone()), "all_users": all_users }),
            true,
        ),
        MemoryCmd::Import { file } => ("memory.import", read_jsonl(file)?, true),
        MemoryCmd::Reindex => ("memory.reindex", json!({}), false),
    };
    let args = strip_nulls(args);
    let target = Target::open(home, cfg, None).await?;
    let result = target.call(tool, args).await;
    target.close().await?;
    let out = result?;
    match cmd {
        MemoryCmd::Export { output, .. } => write_jsonl(&out, output.as_deref()),
        MemoryCmd::Import { .. } => {
            println!("imported {} memories", out["added"]);
            Ok(())
        }
        MemoryCmd::Reindex => {
            println!(
                "embedded {} memories into a new vector index",
                out["embedded"]
            );
            Ok(())
        }
        _ if json => {
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
        MemoryCmd::Remember { .. } => {
            print_remembered(&out);
            Ok(())
        }
        MemoryCmd::Recall { query, .. } => {
            print_hits(&query, &out);
            Ok(())
        }
        MemoryCmd::Forget { .. } => {
            let n = out["ids"].as_array().map_or(0, Vec::len);
            println!(
                "forgot {n} memor{} in every tier (vectors {}, stream records {}, working items {})",
                if n == 1 { "y" } else { "ies" },
                out["vectors"],
                out["short_term"],
                out["working"]
            );
            Ok(())
        }
        MemoryCmd::Stats(_) => {
            print_stats(&out);
            Ok(())
        }
        MemoryCmd::Profile { .. } => {
            match out.as_object().filter(|o| !o.is_empty()) {
                None => {
                    eprintln!("The profile is empty: lotus memory profile KEY VALUE sets a key.")
                }
                Some(p) => {
                    let w = p.keys().map(String::len).max().unwrap_or(0);
                    for (k, v) in p {
                        let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                        println!("{k:<w$}  {v}");
                    }
                }
            }
            Ok(())
        }
    }
}

/// Drops `null` fields: absent options are absent, not null.
fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.into_iter().filter(|(_, v)| !v.is_null()).collect()),
        other => other,
    }
}

fn read_jsonl(file: &std::path::Path) -> Result<Value> {
    let reader: Box<dyn BufRead> = if file.as_os_str() == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(std::fs::File::open(file).map_err(
            |e| bad_input(format!("cannot read {}: {e}", file.display())),
        )?))
    };
    let mut memories = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line).map_err(|e| {
            bad_input(format!(
                "{} line {}: not JSON ({e}); nothing was imported",
                file.display(),
                i + 1
            ))
        })?;
        memories.push(v);
    }
    Ok(json!({ "memories": memories }))
}

fn write_jsonl(out: &Value, output: Option<&std::path::Path>) -> Result<()> {
    let mut w: Box<dyn Write> = match output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot write {}", p.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    let items = out.as_array().cloned().unwrap_or_default();
    for m in &items {
        writeln!(w, "{}", serde_json::to_string(m)?)?;
    }
    w.flush()?;
    if let Some(p) = output {
        eprintln!("exported {} memories to {}", items.len(), p.display());
    }
    Ok(())
}

fn print_remembered(out: &Value) {
    let m = &out["memory"];
    if out["duplicate"] == json!(true) {
        println!(
            "already remembered: {} ({})",
            m["text"].as_str().unwrap_or(""),
            m["id"].as_str().unwrap_or("")
        );
        return;
    }
    let fact = match (m["subject"].as_str(), m["attribute"].as_str()) {
        (Some(s), Some(a)) => format!("; states {s}'s {a}"),
        _ => String::new(),
    };
    println!(
        "remembered {} ({}{fact})",
        m["id"].as_str().unwrap_or(""),
        m["kind"].as_str().unwrap_or("")
    );
    for s in out["superseded"].as_array().into_iter().flatten() {
        println!(
            "  supersedes: {} ({})",
            s["text"].as_str().unwrap_or(""),
            s["id"].as_str().unwrap_or("")
        );
    }
}

fn print_hits(query: &str, out: &Value) {
    let hits = out.as_array().cloned().unwrap_or_default();
    if hits.is_empty() {
        println!("nothing recalled for `{query}`");
        return;
    }
    for (i, h) in hits.iter().enumerate() {
        let m = &h["memory"];
        let state = if m["valid_to_us"].is_null() {
            "current".to_owned()
        } else {
            format!(
                "superseded {}",
                date(m["valid_to_us"].as_i64().unwrap_or(0))
            )
        };
        println!(
            "{}. {}\n   {} · {} · {} · score {:.4} · {}",
            i + 1,
            m["text"].as_str().unwrap_or(""),
            state,
            m["kind"].as_str().unwrap_or(""),
            date(m["created_us"].as_i64().unwrap_or(0)),
            h["score"].as_f64().unwrap_or(0.0),
            m["id"].as_str().unwrap_or("")
        );
        if let Some(via) = h["via"].as_str() {
            println!("   linked through {via} (shares its words, not the question's)");
        }
        for old in h["history"].as_array().into_iter().flatten() {
            println!(
                "   superseded: {} (until {})",
                old["text"].as_str().unwrap_or(""),
                date(old["valid_to_us"].as_i64().unwrap_or(0))
            );
        }
    }
}

fn print_stats(out: &Value) {
    println!(
        "memories {} (superseded {}), users {}, short-term records {}, working items {}",
        out["memories"], out["superseded"], out["users"], out["short_term"], out["working"]
    );
    for (c, n) in out["vectors"].as_object().into_iter().flatten() {
        println!("  {c:<24} {n} vectors");
    }
    for (tier, b) in out["backends"].as_object().into_iter().flatten() {
        println!("  {tier:<24} {}", b.as_str().unwrap_or(""));
    }
}
