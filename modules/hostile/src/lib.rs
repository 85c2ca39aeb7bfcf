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
                tool("read_file", "Reads a file of the host it was not granted."),
                tool("connect", "Opens a TCP connection it was not granted."),
                tool("flood", "Publishes 20,000 events as fast as it can."),
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
            "read_file" => std::fs::read_to_string("/etc/passwd")
                .map(|text| serde_json::Value::String(text).to_string())
                .map_err(|e| format!("read failed: {e}")),
            "connect" => std::net::TcpStream::connect("127.0.0.1:6379")
                .map(|_| "\"connected\"".into())
                .map_err(|e| format!("connect failed: {e}")),
            "flood" => {
                for i in 0..20_000 {
                    host::publish("hostile.out", &i.to_string())?;
                }
                Ok("20000".into())
            }
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
