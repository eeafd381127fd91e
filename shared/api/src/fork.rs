//! A run's recorded model calls, and forks: a new run that reuses a finished run's record up
//! to a step and asks a live model from there (`POST /api/v1/runs/{id}/fork`).

use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use orchestrator_agents::Prompts;
use orchestrator_core::ports::{Model, RecordedCall};
use orchestrator_runner::replay::{self, ReplayError};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::extract::PathParams;
use crate::{AppState, read_json};

/// A run's recorded model calls, in unit and call order.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallList {
    pub run_id: String,
    pub calls: Vec<RecordedCall>,
}

pub(crate) async fn list_calls(
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<axum::Json<CallList>, ApiError> {
    if state.store.load_run(&id).await?.is_none() {
        return Err(ApiError::NotFound(format!("run {id} not found")));
    }
    let calls = state.store.calls(&id).await?;
    Ok(axum::Json(CallList { run_id: id, calls }))
}

/// What to fork: the step to run again (and what follows), and optionally another model or
/// other prompts for the new run.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForkRequest {
    /// The step of the original run to run again, with everything after it.
    pub from_step: String,
    /// A model id of the server's provider to call from the step on [default: the server's].
    #[serde(default)]
    pub model: Option<String>,
    /// System prompts replacing the server's for the new run.
    #[serde(default)]
    pub prompts: Option<PromptOverrides>,
}

/// Replacement system prompts, by role; a role left out keeps the server's prompt.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PromptOverrides {
    pub planner: Option<String>,
    pub strategy: Option<String>,
    pub writer: Option<String>,
    pub qa: Option<String>,
    pub chat: Option<String>,
}

impl PromptOverrides {
    fn apply(self, mut prompts: Prompts) -> Result<Prompts, ApiError> {
        let slots = [
            ("planner", self.planner, &mut prompts.planner),
            ("strategy", self.strategy, &mut prompts.strategy),
            ("writer", self.writer, &mut prompts.writer),
            ("qa", self.qa, &mut prompts.qa),
            ("chat", self.chat, &mut prompts.chat),
        ];
        for (name, text, slot) in slots {
            match text {
                Some(t) if t.trim().is_empty() => {
                    return Err(ApiError::Invalid {
                        field: format!("prompts.{name}"),
                        message: "is empty; leave it out to keep the server's prompt".into(),
                    });
                }
                Some(t) => *slot = t,
                None => {}
            }
        }
        Ok(prompts)
    }
}

/// The fork, started.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForkResponse {
    pub run_id: String,
    pub fork_of: String,
    pub from_step: String,
    /// Plan versions and step attempts answered from the original's record.
    pub reused: usize,
    pub events_url: String,
    pub run_url: String,
}

/// The models a server can fork with: its own, or another of its provider's.
#[async_trait]
pub trait ForkModels: Send + Sync {
    /// The model named `model` (None: the server's), its calls recorded.
    async fn model(&self, model: Option<&str>) -> Result<Arc<dyn Model>, String>;
    /// The server's prompts.
    fn prompts(&self) -> Prompts;
}

pub(crate) async fn fork_run(
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let fork: ForkRequest = read_json(body, state.config.max_body_bytes).await?;
    if fork.from_step.trim().is_empty() {
        return Err(ApiError::Invalid {
            field: "fromStep".into(),
            message: "is empty; name a step of the run".into(),
        });
    }
    let started = state.control.fork(&id, fork).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(started)).into_response())
}

/// Starts a fork on `runner`'s store; the caller drives it.
pub(crate) async fn start_fork(
    runner: &orchestrator_runner::Runner,
    models: &dyn ForkModels,
    run_id: &str,
    fork: ForkRequest,
) -> Result<(replay::Forked, ForkResponse), ApiError> {
    let recorded = replay::load(runner, run_id).await.map_err(replay_error)?;
    let live = models
        .model(fork.model.as_deref())
        .await
        .map_err(|message| ApiError::Invalid {
            field: "model".into(),
            message,
        })?;
    let prompts = fork.prompts.unwrap_or_default().apply(models.prompts())?;
    let forked = replay::fork(runner, recorded, &fork.from_step, live, Arc::new(prompts))
        .await
        .map_err(replay_error)?;
    let new_id = forked.launch.state.run_id.clone();
    let response = ForkResponse {
        events_url: format!("/api/v1/runs/{new_id}/events"),
        run_url: format!("/api/v1/runs/{new_id}"),
        run_id: new_id,
        fork_of: run_id.to_owned(),
        from_step: fork.from_step,
        reused: forked.reused.len(),
    };
    Ok((forked, response))
}

fn replay_error(e: ReplayError) -> ApiError {
    match e {
        ReplayError::Run(e) => e.into(),
        e @ (ReplayError::NoRecord(_) | ReplayError::Unfinished { .. }) => {
            ApiError::Conflict(e.to_string())
        }
        e @ ReplayError::NoSuchStep { .. } => ApiError::Invalid {
            field: "fromStep".into(),
            message: e.to_string(),
        },
    }
}
