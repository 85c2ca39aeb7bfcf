//! `counter`: a count kept in the host's state store, so it survives reloads and restarts.

wit_bindgen::generate!({ path: "../../wit/lotus-module/0.1.0", world: "module" });

use exports::lotus::module::guest::{Description, Event, Guest};
use lotus::module::host;
use lotus::module::types::{Job, Tool};

struct Counter;

fn count() -> Result<u64, String> {
    Ok(host::state_get("count")?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

impl Guest for Counter {
    fn describe() -> Description {
        let no_args = r#"{"type":"object","properties":{},"additionalProperties":false}"#;
        Description {
            handlers: vec![],
            tools: vec![
                Tool {
                    name: "increment".into(),
                    description: "Adds one and returns the count.".into(),
                    input_schema: no_args.into(),
                },
                Tool {
                    name: "get".into(),
                    description: "The current count.".into(),
                    input_schema: no_args.into(),
                },
            ],
            jobs: vec![Job {
                name: "announce".into(),
                every_ms: 60_000,
            }],
        }
    }

    fn initialize(_settings: String) -> Result<(), String> {
        Ok(())
    }

    fn on_event(_handler: u32, _ev: Event) -> Result<(), String> {
        Ok(())
    }

    fn call_tool(name: String, _args: String) -> Result<String, String> {
        match name.as_str() {
            "increment" => {
                let n = count()? + 1;
                host::state_set("count", &n.to_string())?;
                Ok(n.to_string())
            }
            "get" => Ok(count()?.to_string()),
            other => Err(format!("no tool `{other}`")),
        }
    }

    fn tick(_job: u32) -> Result<(), String> {
        host::publish("counter.value", &count()?.to_string())
    }

    fn shutdown() -> Result<(), String> {
        Ok(())
    }
}

export!(Counter);
