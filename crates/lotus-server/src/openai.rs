//! The OpenAI API, answered by ASH: `POST /v1/chat/completions` (plain, or streamed with
//! `usage` in the last chunk when `stream_options.include_usage` asks) and `GET /v1/models`.
//! Model `ash` is the reasoning module's own chain; any other id is a model (name or alias)
//! for it to use. The conversation comes from the caller: the earlier messages replace the
//! session's turns, `system` and `developer` messages add to the persona.

use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use lotus_reasoning::{Role, TaskRequest, Turn};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::chat::{Said, Task};
use crate::error::{ErrorBody, parse_json};
use crate::{ApiError, ApiState};

/// The model that means "ASH, with its own chain".
const ASH: &str = "ash";

/// A chat completion request (the fields LOTUS reads; others are accepted and ignored).
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub(crate) struct CompletionRequest {
    /// `ash`, or a model (name or alias) for ASH to use.
    model: String,
    /// The conversation; the last message is the user's.
    messages: Vec<ChatMessage>,
    /// Stream chunks as Server-Sent Events.
    #[serde(default)]
    stream: bool,
    /// `{"include_usage": true}`: a last chunk with `usage`.
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    /// Client-side tools are not supported (ASH uses its own).
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    tools: Option<Vec<Value>>,
    /// Only 1.
    #[serde(default)]
    n: Option<u32>,
    /// Only `{"type": "text"}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    response_format: Option<Value>,
}

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// One message.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub(crate) struct ChatMessage {
    /// `system`, `developer`, `user` or `assistant`.
    role: String,
    /// A string, or parts of which the `text` ones are read.
    #[serde(default)]
    #[schema(value_type = Object)]
    content: Value,
}

fn text_of(content: &Value) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut out = String::new();
            for p in parts {
                match p["type"].as_str() {
                    Some("text") => out.push_str(p["text"].as_str().unwrap_or_default()),
                    other => {
                        return Err(ApiError::bad(
                            "unsupported",
                            format!(
                                "message parts of type {} are not supported; send text",
                                other.unwrap_or("(none)")
                            ),
                        ));
                    }
                }
            }
            Ok(out)
        }
        _ => Err(ApiError::bad(
            "invalid_arguments",
            "`content` must be a string or a list of parts",
        )),
    }
}

/// The task a completion request asks for.
fn task_of(req: &CompletionRequest) -> Result<TaskRequest, ApiError> {
    if req.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::bad(
            "unsupported",
            "client-side `tools` are not supported: ASH calls LOTUS's own tools (GET /api/v1/tools)",
        ));
    }
    if req.n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad("unsupported", "only `n: 1` is supported"));
    }
    if let Some(f) = &req.response_format
        && f["type"] != "text"
    {
        return Err(ApiError::bad(
            "unsupported",
            format!("`response_format` {f} is not supported; ASH answers in text"),
        ));
    }
    let Some((last, earlier)) = req.messages.split_last() else {
        return Err(ApiError::bad("invalid_arguments", "`messages` is empty"));
    };
    if last.role != "user" {
        return Err(ApiError::bad(
            "invalid_arguments",
            format!("the last message must be the user's, not `{}`", last.role),
        ));
    }
    let mut instructions = Vec::new();
    let mut history = Vec::new();
    for m in earlier {
        let text = text_of(&m.content)?;
        match m.role.as_str() {
            "system" | "developer" => instructions.push(text),
            "user" => history.push(Turn {
                role: Role::User,
                text,
            }),
            "assistant" => history.push(Turn {
                role: Role::Assistant,
                text,
            }),
            other => {
                return Err(ApiError::bad(
                    "unsupported",
                    format!(
                        "messages with role `{other}` are not supported (user, assistant, system, developer are)"
                    ),
                ));
            }
        }
    }
    Ok(TaskRequest {
        text: text_of(&last.content)?,
        model: (req.model != ASH && !req.model.is_empty()).then(|| req.model.clone()),
        history: Some(history),
        instructions: (!instructions.is_empty()).then(|| instructions.join("\n")),
        ..TaskRequest::default()
    })
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn usage_of(r: &Value) -> Value {
    let i = r["usage"]["input_tokens"].as_u64().unwrap_or(0);
    let o = r["usage"]["output_tokens"].as_u64().unwrap_or(0);
    json!({"prompt_tokens": i, "completion_tokens": o, "total_tokens": i + o})
}

/// The finish reason of a response, or its error.
fn finish_of(r: &Value) -> Result<&'static str, ApiError> {
    match r["stopped"].as_str() {
        Some("error") => Err(ApiError::new(
            axum::http::StatusCode::BAD_GATEWAY,
            "task_failed",
            r["error"].as_str().unwrap_or("the task failed").to_owned(),
        )),
        Some("answer") | None => Ok("stop"),
        Some(_) => Ok("length"),
    }
}

/// A chat completion, answered by ASH.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai",
    request_body = CompletionRequest,
    responses((status = 200, description = "a `chat.completion`, or `chat.completion.chunk`s as Server-Sent Events", body = Object),
        (status = 400, body = ErrorBody), (status = 503, description = "no reasoning module", body = ErrorBody)))]
pub(crate) async fn completions(
    State(st): State<ApiState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: CompletionRequest = parse_json(&body, "the chat completion request")?;
    let task = task_of(&req)?;
    known_model(&st, &req.model)?;
    let task = Task::start(&st, &task).await?;
    let id = format!("chatcmpl-{}", Uuid::now_v7().simple());
    let created = now_s();
    let model = req.model.clone();
    if !req.stream {
        let r = task.finish().await?;
        let finish = finish_of(&r)?;
        return Ok(Json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "finish_reason": finish,
                "message": {"role": "assistant", "content": r["text"].as_str().unwrap_or_default()}}],
            "usage": usage_of(&r),
        }))
        .into_response());
    }
    let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
    let chunk = move |delta: Value, finish: Option<&str>| {
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let data = |v: &Value| Ok::<_, Infallible>(SseEvent::default().data(v.to_string()));
    // State: the task (gone once it ended), whether any text went out, chunks still to send.
    let first = chunk(json!({"role": "assistant", "content": ""}), None);
    let stream = futures_util::stream::unfold(
        (Some(task), false, vec![first]),
        move |(task, mut said, mut queue)| {
            let chunk = chunk.clone();
            async move {
                if let Some(v) = queue.pop() {
                    let ev = if v == json!("[DONE]") {
                        Ok(SseEvent::default().data("[DONE]"))
                    } else {
                        data(&v)
                    };
                    return Some((ev, (task, said, queue)));
                }
                let t = task?;
                loop {
                    match t.next().await {
                        Ok(Some(Said::Delta(d))) => {
                            said = true;
                            let v = chunk(json!({"content": d["delta"]}), None);
                            return Some((data(&v), (Some(t), said, queue)));
                        }
                        Ok(Some(Said::Done(r))) => {
                            // Queued in reverse: popped from the end.
                            queue.push(json!("[DONE]"));
                            match finish_of(&r) {
                                Ok(finish) => {
                                    if include_usage {
                                        let mut u = chunk(json!({}), None);
                                        u["choices"] = json!([]);
                                        u["usage"] = usage_of(&r);
                                        queue.push(u);
                                    }
                                    queue.push(chunk(json!({}), Some(finish)));
                                    if !said {
                                        // An answer that did not stream comes whole.
                                        queue.push(chunk(json!({"content": r["text"]}), None));
                                    }
                                }
                                Err(e) => queue.push(json!({"error": e.body()["error"]})),
                            }
                            let v = queue.pop()?;
                            return Some((data(&v), (None, said, queue)));
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            queue.push(json!("[DONE]"));
                            let e = ApiError::unavailable(
                                "the nucleus is stopping; the answer was cut short",
                            );
                            return Some((
                                data(&json!({"error": e.body()["error"]})),
                                (None, said, queue),
                            ));
                        }
                        Err(e) => {
                            queue.push(json!("[DONE]"));
                            return Some((
                                data(&json!({"error": e.body()["error"]})),
                                (None, said, queue),
                            ));
                        }
                    }
                }
            }
        },
    );
    // Tool steps and approvals can be quiet for a while: comments keep proxies from hanging up.
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// A 404 for a model the catalog does not know (`ash` always is).
fn known_model(st: &ApiState, model: &str) -> Result<(), ApiError> {
    if model == ASH {
        return Ok(());
    }
    match &st.providers {
        Some(setup) => setup
            .router
            .catalog()
            .resolve(model)
            .map(drop)
            .map_err(|e| {
                ApiError::new(
                    axum::http::StatusCode::NOT_FOUND,
                    "model_not_found",
                    format!(
                        "model `{model}`: {e}; GET /v1/models lists them (`ash` is ASH's own chain)"
                    ),
                )
            }),
        None => Ok(()),
    }
}

/// One model.
#[utoipa::path(get, path = "/v1/models/{model}", tag = "openai",
    params(("model" = String, Path, description = "`ash`, or a model name or alias")),
    responses((status = 200, description = "`{\"id\", \"object\": \"model\", \"created\", \"owned_by\"}`", body = Object),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn model(
    State(st): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    known_model(&st, &id)?;
    let owner = st
        .providers
        .as_ref()
        .and_then(|s| s.router.catalog().resolve(&id).ok())
        .map_or_else(|| "lotus".to_owned(), |m| m.provider.to_string());
    Ok(Json(
        json!({"id": id, "object": "model", "created": 0, "owned_by": owner}),
    ))
}

/// The models: `ash` (the reasoning module's chain) and the models of the default chain.
#[utoipa::path(get, path = "/v1/models", tag = "openai",
    responses((status = 200, description = "`{\"object\": \"list\", \"data\": [{\"id\", \"object\": \"model\", \"created\", \"owned_by\"}]}`", body = Object)))]
pub(crate) async fn models(State(st): State<ApiState>) -> Json<Value> {
    let model = |id: &str, owner: &str| json!({"id": id, "object": "model", "created": 0, "owned_by": owner});
    let mut data = vec![model(ASH, "lotus")];
    if let Some(setup) = &st.providers {
        for name in &setup.router.config().chain {
            let owner = setup
                .router
                .catalog()
                .resolve(name)
                .map_or_else(|_| "lotus".to_owned(), |m| m.provider.to_string());
            data.push(model(name, &owner));
        }
    }
    Json(json!({"object": "list", "data": data}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> CompletionRequest {
        serde_json::from_value(v).expect("a request")
    }

    #[test]
    fn the_conversation_becomes_history_instructions_and_the_last_message() {
        let t = task_of(&req(json!({
            "model": "ash",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]},
            ],
            "temperature": 0.2,
        })))
        .expect("a task");
        assert_eq!(t.text, "What is 2+2?");
        assert_eq!(t.model, None);
        assert_eq!(t.instructions.as_deref(), Some("Be brief."));
        assert_eq!(
            t.history,
            Some(vec![
                Turn {
                    role: Role::User,
                    text: "Hi".into()
                },
                Turn {
                    role: Role::Assistant,
                    text: "Hello!".into()
                },
            ])
        );
        let t = task_of(&req(
            json!({"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}),
        ))
        .expect("a task");
        assert_eq!(t.model.as_deref(), Some("openai:gpt-4o-mini"));
    }

    #[test]
    fn what_cannot_be_answered_is_refused_with_a_reason() {
        let bad = |v: Value| task_of(&req(v)).expect_err("refused").message().to_owned();
        assert!(bad(json!({"model": "ash", "messages": []})).contains("empty"));
        assert!(
            bad(json!({"model": "ash", "messages": [{"role": "assistant", "content": "x"}]}))
                .contains("user")
        );
        assert!(bad(json!({"model": "ash", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]})).contains("tools"));
        assert!(bad(json!({"model": "ash", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]})).contains("image_url"));
        assert!(bad(json!({"model": "ash", "messages": [{"role": "tool", "content": "x"}, {"role": "user", "content": "y"}]})).contains("tool"));
    }
}
