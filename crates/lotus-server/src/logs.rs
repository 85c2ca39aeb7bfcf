//! The recent log lines of each module, for `GET /api/v1/modules/{name}/logs`: a tracing layer
//! keeps every event that carries a `module` field (what modules log through their context, and
//! what the nucleus logs about them: crashes, restarts, errors), the newest lines per module.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

/// One log line of a module.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogLine {
    /// When.
    #[serde(with = "lotus_core::event::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub time: SystemTime,
    /// `ERROR`, `WARN`, `INFO`, `DEBUG` or `TRACE`.
    pub level: String,
    /// The message.
    pub message: String,
    /// The other fields of the event.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    #[schema(value_type = Object)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// The newest log lines of each module.
#[derive(Debug)]
pub struct ModuleLogs {
    per_module: usize,
    lines: Mutex<HashMap<String, VecDeque<LogLine>>>,
}

impl Default for ModuleLogs {
    fn default() -> Self {
        Self::new(500)
    }
}

impl ModuleLogs {
    /// Keeps the newest `per_module` lines of each module.
    pub fn new(per_module: usize) -> Self {
        Self {
            per_module: per_module.max(1),
            lines: Mutex::new(HashMap::new()),
        }
    }

    /// Adds a line.
    pub fn push(&self, module: &str, line: LogLine) {
        let mut all = self.lines.lock();
        let q = all.entry(module.to_owned()).or_default();
        if q.len() == self.per_module {
            q.pop_front();
        }
        q.push_back(line);
    }

    /// The newest `limit` lines of `module`, oldest first.
    pub fn recent(&self, module: &str, limit: usize) -> Vec<LogLine> {
        self.lines.lock().get(module).map_or_else(Vec::new, |q| {
            q.iter()
                .skip(q.len().saturating_sub(limit))
                .cloned()
                .collect()
        })
    }

    /// The tracing layer that fills it.
    pub fn layer<S: tracing::Subscriber>(self: &Arc<Self>) -> impl Layer<S> {
        Collect(self.clone())
    }
}

struct Collect(Arc<ModuleLogs>);

#[derive(Default)]
struct Fields {
    module: Option<String>,
    message: String,
    rest: serde_json::Map<String, serde_json::Value>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "module" => self.module = Some(value.to_owned()),
            "message" => self.message = value.to_owned(),
            n => {
                self.rest.insert(n.to_owned(), value.into());
            }
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.rest.insert(field.name().to_owned(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.rest.insert(field.name().to_owned(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.rest.insert(field.name().to_owned(), value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut s = String::new();
        let _ = write!(s, "{value:?}");
        match field.name() {
            "module" => self.module = Some(s),
            "message" => self.message = s,
            n => {
                self.rest.insert(n.to_owned(), s.into());
            }
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for Collect {
    fn on_event(&self, event: &tracing::Event<'_>, _cx: Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        if let Some(module) = f.module {
            self.0.push(
                &module,
                LogLine {
                    time: SystemTime::now(),
                    level: event.metadata().level().to_string(),
                    message: f.message,
                    fields: f.rest,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::prelude::*;

    #[test]
    fn lines_with_a_module_field_are_kept_newest_last_and_bounded() {
        let logs = Arc::new(ModuleLogs::new(3));
        let subscriber = tracing_subscriber::registry().with(logs.layer());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("no module: not kept");
            for i in 0..5 {
                tracing::warn!(module = "echo", attempt = i, "line {i}");
            }
            tracing::error!(module = %"other", "boom");
        });
        let echo = logs.recent("echo", 10);
        assert_eq!(
            echo.iter().map(|l| l.message.as_str()).collect::<Vec<_>>(),
            ["line 2", "line 3", "line 4"]
        );
        assert_eq!(echo[2].level, "WARN");
        assert_eq!(echo[2].fields["attempt"], 4);
        assert_eq!(logs.recent("echo", 1)[0].message, "line 4");
        assert_eq!(logs.recent("other", 10)[0].level, "ERROR");
        assert!(logs.recent("nobody", 10).is_empty());
    }
}
