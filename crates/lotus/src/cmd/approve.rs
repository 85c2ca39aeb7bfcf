//! `lotus approve [ID] [--deny] [--reason R]`: the calls of dangerous tools that wait for a
//! human in the running nucleus — listed, approved or denied (through the reasoning module's
//! `reasoning.approvals` and `reasoning.approve` tools).

use anyhow::Result;
use serde_json::{Value, json};

use super::clip;
use crate::cli::ApproveArgs;
use crate::client::Client;
use crate::config::Config;
use crate::home::Home;

/// Runs `lotus approve`.
pub async fn run(home: &Home, cfg: &Config, args: ApproveArgs) -> Result<()> {
    let client = Client::new(home, cfg)?;
    let Some(id) = args.id else {
        let waiting = client
            .call_tool("reasoning.approvals", &json!({}))
            .await?
            .as_array()
            .cloned()
            .unwrap_or_default();
        if args.json {
            println!("{}", serde_json::to_string_pretty(&waiting)?);
        } else if waiting.is_empty() {
            eprintln!("No call waits for approval.");
        } else {
            println!("{:<36}  {:<20}  {:<19}  ARGUMENTS", "ID", "TOOL", "ASKED");
            for w in &waiting {
                println!(
                    "{:<36}  {:<20}  {:<19}  {}",
                    w["id"].as_str().unwrap_or_default(),
                    w["tool"].as_str().unwrap_or_default(),
                    w["asked_at"]
                        .as_str()
                        .unwrap_or_default()
                        .replace('T', " ")
                        .trim_end_matches('Z'),
                    clip(&w["arguments"].to_string(), 80)
                );
            }
            eprintln!(
                "Answer with `lotus approve ID` or `lotus approve ID --deny --reason \"…\"`."
            );
        }
        return Ok(());
    };
    let r = client
        .call_tool(
            "reasoning.approve",
            &json!({"id": id, "approve": !args.deny, "reason": args.reason}),
        )
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        let verb = if r["approved"] == Value::Bool(true) {
            "Approved"
        } else {
            "Denied"
        };
        println!("{verb}: {}", r["tool"].as_str().unwrap_or("the call"));
    }
    Ok(())
}
