//! `lotus tool list|call`.

use anyhow::Result;
use lotus_core::ToolSpec;
use serde_json::Value;

use super::clip;
use crate::cli::ToolCmd;
use crate::client::Client;
use crate::config::Config;
use crate::exit::bad_input;
use crate::home::Home;

pub async fn run(home: &Home, config: &Config, cmd: ToolCmd) -> Result<()> {
    match cmd {
        ToolCmd::List(f) => {
            let client = Client::new(home, config)?;
            let tools: Vec<ToolSpec> = client.get("/api/v1/tools", &[]).await?;
            if f.json {
                println!("{}", serde_json::to_string_pretty(&tools)?);
            } else {
                let w = tools.iter().map(|t| t.name.len()).max().unwrap_or(4).max(4);
                // The NODE column appears when several nuclei share the bus.
                let nw = tools
                    .iter()
                    .filter_map(|t| t.node.as_ref().map(String::len))
                    .max()
                    .map(|n| n.max(4));
                match nw {
                    Some(nw) => println!("{:<w$}  {:<nw$}  DESCRIPTION", "NAME", "NODE"),
                    None => println!("{:<w$}  DESCRIPTION", "NAME"),
                }
                for t in &tools {
                    let mark = if t.dangerous { "[asks first] " } else { "" };
                    let desc = clip(&t.description, 90);
                    match nw {
                        Some(nw) => println!(
                            "{:<w$}  {:<nw$}  {mark}{desc}",
                            t.name,
                            t.node.as_deref().unwrap_or("-")
                        ),
                        None => println!("{:<w$}  {mark}{desc}", t.name),
                    }
                }
            }
        }
        ToolCmd::Call { name, args } => {
            let args: Value = match args.as_deref() {
                None => Value::Object(Default::default()),
                Some(text) => serde_json::from_str(text).map_err(|e| {
                    bad_input(format!(
                        "the arguments are not valid JSON ({e}); pass an object, e.g. lotus tool call {name} '{{\"text\":\"hi\"}}'"
                    ))
                })?,
            };
            let client = Client::new(home, config)?;
            let result = client.call_tool(&name, &args).await?;
            println!("{}", serde_json::to_string_pretty(&result)?);
        }
    }
    Ok(())
}
