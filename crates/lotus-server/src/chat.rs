//! `POST /api/v1/chat`: a task for ASH, its steps and answer streamed as Server-Sent Events;
//! and the task runner the OpenAI-compatible endpoint shares.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use lotus_bus::Subscription;
use lotus_core::{Event, Overflow, Pattern};
use lotus_nucleus::ModuleState;
use lotus_reasoning::TaskRequest;
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use crate::error::{ErrorBody, parse_json};
use crate::{ApiError, ApiState};

/// Query of `POST /api/v1/chat`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct ChatParams {
    /// `false`: one JSON answer at the end instead of the event stream.
    stream: Option<bool>,
}

/// Where tasks go.
const TASK_TOPIC: &str = "cognition.task_request";

fn no_reasoning() -> ApiError {
    ApiError::unavailable(
        "no reasoning module runs: enable it in lotus.toml ([modules.reasoning] enabled = true) or with POST /api/v1/modules/reasoning/enable",
    )
}

/// The topics a task answers on.
const ANSWER_TOPICS: [&str; 4] = [
    "action.response",
    "action.response.delta",
    "cognition.step",
    "cognition.approval_request",
];

/// What a task said, by kind.
pub(crate) enum Said {
    /// A reasoning step.
    Step(Value),
    /// A piece of the answer: `{step, delta}`.
    Delta(Value),
    /// A dangerous call waits for approval.
    Approval(Value),
    /// The final response.
    Done(Value),
}

/// A task on its way: the events that answer it.
pub(crate) struct Task {
    sub: Subscription,
    id: Uuid,
    silence: Duration,
}

impl Task {
    /// Publishes the task (listening first, so nothing it says is missed).
    pub(crate) async fn start(st: &ApiState, task: &TaskRequest) -> Result<Self, ApiError> {
        if task.text.trim().is_empty() {
            return Err(ApiError::bad(
                "invalid_arguments",
                "say something: `text` is empty",
            ));
        }
        // The recorders take every task too: ask whether a module that handles tasks runs (here
        // or on another node), rather than whether the task reached anyone.
        let handled = st.nucleus.modules().iter().any(|m| {
            m.state == ModuleState::Running
                && m.subscriptions
                    .iter()
                    .any(|p| Pattern::new(p).is_ok_and(|p| p.matches_str(TASK_TOPIC)))
        });
        if !handled {
            return Err(no_reasoning());
        }
        let patterns = ANSWER_TOPICS
            .iter()
            .filter_map(|t| Pattern::new(t).ok())
            .collect();
        // A client that stops reading must not hold up ASH for everyone: its queue drops the
        // oldest (every chat's events pass through it). The final response carries the whole
        // answer anyway.
        let sub = st
            .nucleus
            .bus()
            .subscribe("api:chat", patterns, 65_536, Overflow::DropOldest);
        let payload = serde_json::to_value(task).map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })?;
        let (ev, d) = st.nucleus.publish("api", TASK_TOPIC, payload).await?;
        if d.matched == 0 {
            return Err(no_reasoning());
        }
        Ok(Self {
            sub,
            id: ev.id,
            silence: st.settings.chat_timeout,
        })
    }

    /// The next thing the task says; `None` once the bus closes (the nucleus stops).
    pub(crate) async fn next(&self) -> Result<Option<Said>, ApiError> {
        let deadline = tokio::time::Instant::now() + self.silence;
        loop {
            let ev: Arc<Event> = match tokio::time::timeout_at(deadline, self.sub.recv()).await {
                Ok(Some(ev)) => ev,
                Ok(None) => return Ok(None),
                Err(_) => {
                    return Err(ApiError::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        "timeout",
                        format!(
                            "the reasoning module said nothing for {} s",
                            self.silence.as_secs()
                        ),
                    ));
                }
            };
            if ev.correlation_id != Some(self.id) {
                continue;
            }
            let p = ev.payload.clone();
            return Ok(Some(match ev.topic.as_str() {
                "action.response" => Said::Done(p),
                "action.response.delta" => Said::Delta(p),
                "cognition.approval_request" => Said::Approval(p),
                _ => Said::Step(p),
            }));
        }
    }

    /// Waits for the final response.
    pub(crate) async fn finish(&self) -> Result<Value, ApiError> {
        loop {
            match self.next().await? {
                Some(Said::Done(r)) => return Ok(r),
                Some(_) => {}
                None => return Err(stopping()),
            }
        }
    }
}

fn stopping() -> ApiError {
    ApiError::unavailable("the nucleus is stopping; the task was not finished")
}

fn sse(name: &str, data: &Value) -> SseEvent {
    SseEvent::default().event(name).data(data.to_string())
}

/// A task for ASH. Streamed (the default) as Server-Sent Events: `step` (a reasoning step),
/// `delta` (`{step, delta}`: a piece of the answer), `approval` (a dangerous call waits:
/// answer with the tool `reasoning.approve`), `done` (the final response), `error`. With
/// `?stream=false`, the final response as JSON.
#[utoipa::path(post, path = "/api/v1/chat", tag = "chat", request_body = TaskRequest, params(ChatParams),
    responses((status = 200, description = "the events, or the final response", content_type = "text/event-stream"),
        (status = 400, body = ErrorBody),
        (status = 503, description = "no reasoning module", body = ErrorBody)))]
pub(crate) async fn chat(
    State(st): State<ApiState>,
    Query(p): Query<ChatParams>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let task: TaskRequest = parse_json(&body, "the task (`{\"text\": …, \"session\"?: …}`)")?;
    let task = Task::start(&st, &task).await?;
    if p.stream == Some(false) {
        return Ok(Json(task.finish().await?).into_response());
    }
    let events = futures_util::stream::unfold(Some(task), |task| async move {
        let task = task?;
        let ev = match task.next().await {
            Ok(Some(Said::Step(p))) => sse("step", &p),
            Ok(Some(Said::Delta(d))) => sse("delta", &d),
            Ok(Some(Said::Approval(p))) => sse("approval", &p),
            Ok(Some(Said::Done(r))) => return Some((Ok::<_, Infallible>(sse("done", &r)), None)),
            Ok(None) => return Some((Ok(sse("error", &stopping().body()["error"])), None)),
            Err(e) => return Some((Ok(sse("error", &e.body()["error"])), None)),
        };
        Some((Ok(ev), Some(task)))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
