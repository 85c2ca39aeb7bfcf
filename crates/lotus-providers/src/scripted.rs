//! A scripted provider: it answers with a fixed sequence of replies (text, tool calls, errors),
//! streamed like a real one, and keeps every request it was sent. Deterministic tests of
//! anything that talks to a model use it, and so can a demo that must run without a model.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{ErrorKind, ProviderError};
use crate::types::{ChatEvent, ChatRequest, StopReason, Usage};
use crate::{ChatStream, Provider};

/// One scripted answer.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reply {
    /// The text, streamed a word at a time.
    #[serde(default)]
    pub text: String,
    /// Tool calls, in order.
    #[serde(default)]
    pub tool_calls: Vec<ScriptedCall>,
    /// Tokens to report; estimated from the request and the text when absent (4 bytes a token).
    #[serde(default)]
    pub usage: Option<Usage>,
    /// Fail instead of answering, with this message (a server error, so the router retries or
    /// falls back).
    #[serde(default)]
    pub error: Option<String>,
    /// Wait this long before answering (a slow model).
    #[serde(default, with = "humantime_serde")]
    pub delay: Option<Duration>,
}

/// A scripted tool call.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedCall {
    /// The tool's name, as the model sees it.
    pub name: String,
    /// The arguments.
    #[serde(default)]
    pub arguments: Value,
}

impl Reply {
    /// A reply that says `text`.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            ..Self::default()
        }
    }

    /// A reply that calls `name` with `arguments`.
    pub fn call(name: impl Into<String>, arguments: Value) -> Self {
        Self::default().and_call(name, arguments)
    }

    /// This reply, also calling `name` with `arguments`.
    pub fn and_call(mut self, name: impl Into<String>, arguments: Value) -> Self {
        self.tool_calls.push(ScriptedCall {
            name: name.into(),
            arguments,
        });
        self
    }

    /// A failure with `message`.
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            error: Some(message.into()),
            ..Self::default()
        }
    }

    /// This reply, reporting `usage`.
    pub fn with_usage(mut self, input_tokens: u64, output_tokens: u64) -> Self {
        self.usage = Some(Usage {
            input_tokens,
            output_tokens,
            cached_input_tokens: 0,
        });
        self
    }

    /// This reply, after `delay`.
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }
}

#[derive(Default)]
struct Script {
    replies: VecDeque<Reply>,
    /// Answered when the script is spent (instead of an error).
    repeat: Option<Reply>,
    requests: Vec<ChatRequest>,
}

/// A provider that plays a script.
pub struct Scripted {
    name: String,
    script: Mutex<Script>,
}

impl Scripted {
    /// A provider named `name` (the `provider` of `provider:model`) answering with `replies`
    /// in order; once they are spent, every call fails with a clear error.
    pub fn new(name: impl Into<String>, replies: impl IntoIterator<Item = Reply>) -> Self {
        Self {
            name: name.into(),
            script: Mutex::new(Script {
                replies: replies.into_iter().collect(),
                ..Script::default()
            }),
        }
    }

    /// This provider, answering `reply` to every call once the script is spent.
    pub fn then_always(self, reply: Reply) -> Self {
        self.script.lock().repeat = Some(reply);
        self
    }

    /// Adds replies at the end of the script.
    pub fn push(&self, replies: impl IntoIterator<Item = Reply>) {
        self.script.lock().replies.extend(replies);
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<ChatRequest> {
        self.script.lock().requests.clone()
    }

    /// Replies not yet played.
    pub fn remaining(&self) -> usize {
        self.script.lock().replies.len()
    }
}

/// Estimated tokens of `bytes` bytes of text.
fn tokens(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4)
}

fn events(reply: Reply, req: &ChatRequest) -> Vec<Result<ChatEvent, ProviderError>> {
    let mut out = Vec::new();
    // Words keep their following whitespace, so the deltas join back into the text.
    let blank = |s: &str| s.len() - s.trim_start().len();
    let mut rest = reply.text.as_str();
    while !rest.is_empty() {
        let word_at = blank(rest);
        let word_end = rest[word_at..]
            .find(char::is_whitespace)
            .map_or(rest.len(), |i| word_at + i);
        let end = word_end + blank(&rest[word_end..]);
        out.push(Ok(ChatEvent::Text {
            delta: rest[..end].to_owned(),
        }));
        rest = &rest[end..];
    }
    let mut args_bytes = 0;
    for (index, call) in reply.tool_calls.iter().enumerate() {
        out.push(Ok(ChatEvent::ToolCallStart {
            index,
            id: format!("call_{}", index + 1),
            name: call.name.clone(),
        }));
        let args = if call.arguments.is_null() {
            "{}".to_owned()
        } else {
            call.arguments.to_string()
        };
        args_bytes += args.len();
        out.push(Ok(ChatEvent::ToolCallDelta {
            index,
            arguments: args,
        }));
    }
    let usage = reply.usage.unwrap_or_else(|| {
        let request_bytes = serde_json::to_string(&req.messages).map_or(0, |s| s.len())
            + serde_json::to_string(&req.tools).map_or(0, |s| s.len());
        Usage {
            input_tokens: tokens(request_bytes),
            output_tokens: tokens(reply.text.len() + args_bytes).max(1),
            cached_input_tokens: 0,
        }
    });
    out.push(Ok(ChatEvent::Finished {
        stop_reason: if reply.tool_calls.is_empty() {
            StopReason::Stop
        } else {
            StopReason::ToolCalls
        },
        usage: Some(usage),
    }));
    out
}

impl Provider for Scripted {
    fn name(&self) -> &str {
        &self.name
    }

    fn chat(&self, req: ChatRequest) -> BoxFuture<'_, Result<ChatStream, ProviderError>> {
        Box::pin(async move {
            let reply = {
                let mut s = self.script.lock();
                s.requests.push(req.clone());
                s.replies.pop_front().or_else(|| s.repeat.clone())
            };
            let Some(reply) = reply else {
                return Err(ProviderError::new(
                    &self.name,
                    ErrorKind::Protocol,
                    "the script has no more replies",
                ));
            };
            if let Some(d) = reply.delay {
                tokio::time::sleep(d).await;
            }
            if let Some(message) = reply.error {
                return Err(ProviderError::new(
                    &self.name,
                    ErrorKind::Server { retry_after: None },
                    message,
                ));
            }
            let stream: ChatStream = Box::pin(futures_util::stream::iter(events(reply, &req)));
            Ok(stream)
        })
    }

    fn check(&self) -> BoxFuture<'_, Result<(), ProviderError>> {
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Message;
    use serde_json::json;

    #[tokio::test]
    async fn plays_its_replies_in_order_and_keeps_the_requests() {
        let p = Scripted::new(
            "scripted",
            [
                Reply::call("clock.now", json!({"zone": "UTC"})),
                Reply::text("It is  noon.\n"),
            ],
        );
        let first = crate::collect(
            "scripted",
            p.chat(ChatRequest::new(vec![Message::user("time?")]))
                .await
                .expect("chat"),
        )
        .await
        .expect("collect");
        assert_eq!(first.tool_calls[0].name, "clock.now");
        assert_eq!(first.tool_calls[0].arguments, json!({"zone": "UTC"}));
        assert_eq!(first.stop_reason, StopReason::ToolCalls);
        let mut s = p
            .chat(ChatRequest::new(vec![Message::user("and?")]))
            .await
            .expect("chat");
        let mut deltas = Vec::new();
        while let Some(ev) = futures_util::StreamExt::next(&mut s).await {
            if let ChatEvent::Text { delta } = ev.expect("event") {
                deltas.push(delta);
            }
        }
        assert_eq!(deltas, ["It ", "is  ", "noon.\n"]);
        assert_eq!(p.requests().len(), 2);
        assert_eq!(p.requests()[1].messages[0].text(), "and?");
        let spent = p.chat(ChatRequest::default()).await;
        assert!(spent.is_err_and(|e| e.message.contains("no more replies")));
    }
}
