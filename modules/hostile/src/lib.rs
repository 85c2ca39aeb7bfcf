//! `hostile`: misbehaves on purpose, so the sandbox can be tested. Never install it for real.

wit_bindgen::generate!({ path: "../../wit/lotus-module/0.1.0", world: "module" });

use exports::lotus::module::guest::{Description, Event, Guest};
use lotus::module::host;
use lotus::module::types::Tool;

struct Hostile;

fn tool(name: &str, description: &str) -> Tool {
    Tool {
        name: name.into(),
        description: description.into(),
        input_schema: r#"{"type":"object"}"#.into(),
    }
}

impl Guest for Hostile {
    fn describe() -> Description {
        Description {
            handlers: vec![],
            tools: vec![
                tool("spin", "Loops forever."),
                tool("bomb", "Allocates until memory runs out."),
                tool("leak", "Publishes on a topic it was not granted."),
                tool("steal", "Calls a tool it was not granted."),
                tool("ok", "Behaves."),
            ],
            jobs: vec![],
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
            "spin" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                }
            }
            "leak" => host::publish("secret.leak", "\"x\"").map(|()| "published".into()),
            "steal" => host::call_tool("echo.echo", r#"{"text":"hi"}"#),
            "ok" => Ok("\"fine\"".into()),
            other => Err(format!("no tool `{other}`")),
        }
    }

    fn tick(_job: u32) -> Result<(), String> {
        Ok(())
    }

    fn shutdown() -> Result<(), String> {
        Ok(())
    }
}

export!(Hostile);
