//! A nucleus among several on one bus (DESIGN.md §3): what this node reports about itself,
//! what the others host, and tool calls that cross nodes.
//!
//! Each node's nucleus answers tool calls from other nodes on `system.node.NODE.tool_call`
//! (a request with a correlation id and a deadline) and replies on
//! `system.node.NODE.tool_result`. The caller's own nucleus checked its permissions before
//! sending; the audit trail of the serving node names it `CALLER@NODE`.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use lotus_bus::{BusError, LocalBus, Scope, Subscription};
use lotus_core::{Event, Overflow, ToolSpec, Topic};
use serde_json::{Value, json};

use crate::kernel::{ModuleInfo, Shared};
use crate::module::ToolError;

fn node_topic(node: &str, what: &str) -> Option<Topic> {
    Topic::new(&format!("system.node.{node}.{what}")).ok()
}

impl Shared {
    /// What this node reports to the others: its modules and tools.
    pub(crate) fn report(&self) -> Value {
        let node = self.bus.bridge().map(|b| b.node().to_owned());
        let modules: Vec<ModuleInfo> = self
            .slots
            .read()
            .values()
            .map(|s| {
                let mut m = s.info();
                m.node = node.clone();
                m
            })
            .collect();
        let tools: Vec<ToolSpec> = self.tools.read().values().map(|t| t.spec.clone()).collect();
        json!({"modules": modules, "tools": tools})
    }

    fn remote<T: serde::de::DeserializeOwned>(&self, what: &str) -> Vec<(String, T)> {
        let Some(bridge) = self.bus.bridge() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for n in bridge.nodes() {
            if n.local {
                continue;
            }
            if let Some(items) = n.info["hosted"][what].as_array() {
                for item in items {
                    if let Ok(v) = serde_json::from_value::<T>(item.clone()) {
                        out.push((n.node.clone(), v));
                    }
                }
            }
        }
        out
    }

    /// Modules other nodes run, as they last reported.
    pub(crate) fn remote_modules(&self) -> Vec<ModuleInfo> {
        self.remote::<ModuleInfo>("modules")
            .into_iter()
            .map(|(node, mut m)| {
                m.node = Some(node);
                m
            })
            .collect()
    }

    /// This node's tools, then those only other nodes offer (each name once).
    pub(crate) fn all_tools(&self) -> Vec<ToolSpec> {
        let node = self.bus.bridge().map(|b| b.node().to_owned());
        let mut out: Vec<ToolSpec> = self
            .tools
            .read()
            .values()
            .map(|t| ToolSpec {
                node: node.clone(),
                ..t.spec.clone()
            })
            .collect();
        for (n, mut t) in self.remote::<ToolSpec>("tools") {
            if !out.iter().any(|x| x.name == t.name) {
                t.node = Some(n);
                out.push(t);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Calls `tool` on a node that offers it; `None` when no other node does.
    pub(crate) async fn call_remote(
        &self,
        caller: &str,
        tool: &str,
        args: Value,
    ) -> Option<Result<Value, ToolError>> {
        let bridge = self.bus.bridge()?;
        let (node, _) = self
            .remote::<ToolSpec>("tools")
            .into_iter()
            .find(|(_, t)| t.name == tool)?;
        let topic = node_topic(&node, "tool_call")?;
        let req = Event::new(
            topic,
            "nucleus",
            json!({"tool": tool, "args": args, "caller": caller, "from": bridge.node()}),
        );
        let timeout = self.settings.tool_timeout;
        let unreachable = |why: String| ToolError::Unavailable {
            tool: tool.to_owned(),
            module: tool.split('.').next().unwrap_or_default().to_owned(),
            state: format!("on node `{node}`, which {why}"),
        };
        Some(match self.bus.request(req, timeout).await {
            Ok(reply) => {
                match (&reply.payload["ok"], &reply.payload["error"]) {
                    (Value::Null, Value::Null) => Ok(Value::Null),
                    (ok, Value::Null) => Ok(ok.clone()),
                    (_, err) => Err(serde_json::from_value::<ToolError>(err.clone())
                        .unwrap_or_else(|_| ToolError::Failed {
                            tool: tool.to_owned(),
                            message: err.to_string(),
                        })),
                }
            }
            Err(BusError::Timeout { after, .. }) => Err(ToolError::Timeout {
                tool: tool.to_owned(),
                after,
            }),
            Err(e) => Err(unreachable(format!("cannot be reached ({e})"))),
        })
    }
}

/// Joins the other nodes, if the bus has a bridge: this node reports what it hosts and
/// answers their tool calls. The subscription lives as long as the returned value.
pub(crate) fn join(shared: &Arc<Shared>) -> Option<Subscription> {
    let bridge = shared.bus.bridge()?;
    let weak: Weak<Shared> = Arc::downgrade(shared);
    let w = weak.clone();
    bridge.set_reporter(Box::new(move || {
        w.upgrade().map_or(Value::Null, |sh| sh.report())
    }));
    let topic = node_topic(bridge.node(), "tool_call")?;
    let sub = shared.bus.subscribe_scoped(
        "nucleus:tool_calls",
        vec![topic.into()],
        1024,
        Overflow::Block,
        Scope::Cluster,
    );
    let queue = sub.queue().clone();
    tokio::spawn(async move {
        while let Some(req) = queue.pop().await {
            let Some(sh) = weak.upgrade() else { return };
            tokio::spawn(answer(sh, req));
        }
    });
    Some(sub)
}

async fn answer(sh: Arc<Shared>, req: Arc<Event>) {
    let Some(bridge) = sh.bus.bridge() else {
        return;
    };
    let p = &req.payload;
    let (Some(tool), Some(caller), Some(from)) =
        (p["tool"].as_str(), p["caller"].as_str(), p["from"].as_str())
    else {
        tracing::warn!(topic = %req.topic, "a malformed tool call from another node was ignored");
        return;
    };
    let left = req
        .deadline
        .and_then(|d| d.duration_since(SystemTime::now()).ok())
        .unwrap_or(sh.settings.tool_timeout);
    let label = format!("{caller}@{from}");
    let call = sh.call_tool_as(None, &label, tool, p["args"].clone());
    let result = match tokio::time::timeout(left + Duration::from_millis(50), call).await {
        Ok(r) => r,
        // The caller has given up already.
        Err(_) => return,
    };
    let payload = match result {
        Ok(v) => json!({"ok": v}),
        Err(e) => json!({"error": e}),
    };
    let Some(topic) = node_topic(bridge.node(), "tool_result") else {
        return;
    };
    let reply = LocalBus::reply_to(&req, topic, "nucleus", payload);
    sh.bus
        .publish_within(Arc::new(reply), Duration::from_secs(1))
        .await;
}
