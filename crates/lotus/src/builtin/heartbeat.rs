use std::time::Instant;

use lotus_core::{Value, json};
use lotus_nucleus::{Context, ModuleError};

/// Publishes `system.heartbeat` periodically (every 2 s; `[modules.heartbeat.every] beat = "…"`).
#[derive(Default)]
pub struct Heartbeat {
    started: Option<Instant>,
    beats: u64,
}

#[lotus::module]
impl Heartbeat {
    async fn initialize(&mut self) -> Result<(), ModuleError> {
        self.started = Some(Instant::now());
        Ok(())
    }

    /// Publishes one heartbeat.
    #[periodic(every = "2s")]
    async fn beat(&mut self, cx: &Context) -> Result<(), ModuleError> {
        self.beats += 1;
        cx.publish("system.heartbeat", self.snapshot()).await?;
        if self.beats == 1 {
            cx.info("first heartbeat published");
        }
        Ok(())
    }

    /// How many heartbeats were published and for how long the module has run.
    #[tool("status")]
    async fn status(&mut self) -> Result<Value, ModuleError> {
        Ok(self.snapshot())
    }
}

impl Heartbeat {
    fn snapshot(&self) -> Value {
        let uptime_ms = self.started.map_or(0, |s| s.elapsed().as_millis());
        json!({ "beat": self.beats, "uptime_ms": uptime_ms, "pid": std::process::id() })
    }
}
