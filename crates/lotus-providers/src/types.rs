//! The provider-neutral vocabulary: messages, tools, requests, streamed events, responses.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who said a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the model.
    System,
    /// The user.
    User,
    /// The model.
    Assistant,
    /// The result of a tool call (see [`Message::tool_result`]).
    Tool,
}

/// One piece of a message's content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// An image, inline.
    Image {
        /// e.g. `image/png`.
        media_type: String,
        /// The bytes, base64-encoded (standard alphabet, padded).
        data: String,
    },
}

/// A tool the model may call: a name, what it does, and the JSON Schema of its arguments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// Name (`[A-Za-z0-9_-]`, ≤ 64; LOTUS tool names `module.tool` are mapped by the caller).
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// JSON Schema of the arguments object.
    pub input_schema: Value,
}

/// A call the model asked for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id for the call (made up for providers that have none).
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments (a JSON object; `{}` when the model sent none).
    pub arguments: Value,
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Who said it.
    pub role: Role,
    /// What was said.
    #[serde(default)]
    pub parts: Vec<Part>,
    /// Tool calls the assistant made (assistant messages only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// Which call this message answers (tool messages only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// The tool's name (tool messages only; Gemini needs it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_name: Option<String>,
}

impl Message {
    fn of(role: Role, text: impl Into<String>) -> Self {
        Self {
            role,
            parts: vec![Part::Text { text: text.into() }],
            tool_calls: Vec::new(),
            tool_call_id: None,
            tool_name: None,
        }
    }

    /// A system message.
    pub fn system(text: impl Into<String>) -> Self {
        Self::of(Role::System, text)
    }

    /// A user message.
    pub fn user(text: impl Into<String>) -> Self {
        Self::of(Role::User, text)
    }

    /// An assistant message.
    pub fn assistant(text: impl Into<String>) -> Self {
        Self::of(Role::Assistant, text)
    }

    /// An assistant message that made tool calls (and maybe said something).
    pub fn assistant_calls(text: impl Into<String>, calls: Vec<ToolCall>) -> Self {
        let text = text.into();
        Self {
            parts: if text.is_empty() {
                Vec::new()
            } else {
                vec![Part::Text { text }]
            },
            tool_calls: calls,
            ..Self::of(Role::Assistant, "")
        }
    }

    /// The result of tool call `call` (its content is JSON text or plain text).
    pub fn tool_result(call: &ToolCall, content: impl Into<String>) -> Self {
        Self {
            tool_call_id: Some(call.id.clone()),
            tool_name: Some(call.name.clone()),
            ..Self::of(Role::Tool, content)
        }
    }

    /// Adds an image part.
    pub fn with_image(mut self, media_type: impl Into<String>, base64: impl Into<String>) -> Self {
        self.parts.push(Part::Image {
            media_type: media_type.into(),
            data: base64.into(),
        });
        self
    }

    /// The text parts, joined.
    pub fn text(&self) -> String {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Text { text } => Some(text.as_str()),
                Part::Image { .. } => None,
            })
            .collect()
    }
}

/// A chat completion request, addressed to one provider's model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The model as the provider names it (`gpt-4o-mini`), without the `provider:` prefix.
    pub model: String,
    /// The conversation; system messages anywhere are gathered by providers that want them apart.
    pub messages: Vec<Message>,
    /// Tools the model may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolSpec>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Most tokens to generate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Stop sequences.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
}

impl ChatRequest {
    /// A request for `messages` with the provider's defaults (the router sets the model).
    pub fn new(messages: Vec<Message>) -> Self {
        Self {
            messages,
            ..Self::default()
        }
    }
}

/// Tokens used by one completion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Usage {
    /// Prompt tokens (including cached ones).
    pub input_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
    /// Prompt tokens served from the provider's cache, when it says.
    #[serde(default)]
    pub cached_input_tokens: u64,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, o: Self) {
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.cached_input_tokens += o.cached_input_tokens;
    }
}

/// Why the model stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// It finished its answer (or hit a stop sequence).
    Stop,
    /// It ran into `max_tokens` or its context window.
    Length,
    /// It wants tool calls run.
    ToolCalls,
    /// The provider filtered the content.
    ContentFilter,
    /// Something else, as the provider said it.
    Other(String),
}

/// One event of a streamed completion. A stream is: any number of text and tool-call deltas,
/// then [`ChatEvent::Finished`] once (carrying usage when the provider reports it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChatEvent {
    /// More text.
    Text {
        /// The new text.
        delta: String,
    },
    /// A tool call begins: its position among this response's calls, id and name.
    ToolCallStart {
        /// Position of the call in the response (0-based).
        index: usize,
        /// The call's id.
        id: String,
        /// The tool's name.
        name: String,
    },
    /// More of a tool call's arguments (a fragment of JSON text).
    ToolCallDelta {
        /// Which call.
        index: usize,
        /// The next fragment of the arguments' JSON text.
        arguments: String,
    },
    /// The end.
    Finished {
        /// Why it stopped.
        stop_reason: StopReason,
        /// Tokens used, when reported.
        usage: Option<Usage>,
    },
}

/// A whole completion (a stream collected, or a non-streamed answer).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// The text.
    pub text: String,
    /// Tool calls, in order.
    pub tool_calls: Vec<ToolCall>,
    /// Why it stopped.
    pub stop_reason: StopReason,
    /// Tokens used (zero when the provider did not say).
    pub usage: Usage,
}

/// Embeddings of several inputs, in input order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Embeddings {
    /// One vector per input.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens used, when reported.
    pub input_tokens: u64,
}
