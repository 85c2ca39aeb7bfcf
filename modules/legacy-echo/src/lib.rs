//! `legacy-echo`: an echo written directly against the first API, `lotus:module@0.1.0`, with
//! wit-bindgen and no SDK. Kept to prove that the host keeps serving components built against
//! an older API version.

wit_bindgen::generate!({ path: "../../wit/lotus-module/0.1.0", world: "module" });

use exports::lotus::module::guest::{Description, Event, Guest};
use lotus::module::host;
use lotus::module::types::{Handler, LogLevel, Tool};

struct LegacyEcho;

impl Guest for LegacyEcho {
    fn describe() -> Description {
        Description {
            handlers: vec![Handler { name: "on_request".into(), pattern: "wecho.request".into() }],
            tools: vec![Tool {
                name: "echo".into(),
                description: "Returns the text it is given.".into(),
                input_schema: r#"{"type":"object","properties":{"text":{"type":"string"}},"required":["text"],"additionalProperties":false}"#.into(),
            }],
            jobs: vec![],
        }
    }

    fn initialize(_settings: String) -> Result<(), String> {
        host::log(LogLevel::Debug, "legacy-echo ready");
        Ok(())
    }

    fn on_event(_handler: u32, ev: Event) -> Result<(), String> {
        host::publish("wecho.reply", &ev.payload)
    }

    fn call_tool(name: String, args: String) -> Result<String, String> {
        match name.as_str() {
            "echo" => {
                let v: serde_json::Value =
                    serde_json::from_str(&args).map_err(|e| e.to_string())?;
                let text = v
                    .get("text")
                    .and_then(|t| t.as_str())
                    .ok_or("missing field `text`")?;
                Ok(serde_json::json!({ "text": text }).to_string())
            }
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

export!(LegacyEcho);
