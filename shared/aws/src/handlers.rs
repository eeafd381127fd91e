//! What each function does, as plain async methods over the ports: no Lambda types here, so
//! they are tested against SQLite and run under Lambda against DynamoDB unchanged.

use std::sync::Arc;

use async_trait::async_trait;
use orchestrator_agents::Planner;
use orchestrator_core::engine::{Dispatch, Input, Move, PlannerState, RunState};
use orchestrator_core::ports::StoreError;
use orchestrator_core::types::{QA_CAPABILITY, QualityVerdict, StepMetrics};
use orchestrator_runner::{StepRunner, Transitions, outcome_of, propose, spans};
use serde_json::{Value, json};
use tracing::Instrument;

use crate::completion::{Completions, deliver};
use crate::contract::{AdvanceRequest, AttemptEnd, Next, Outcome, RunRef, StepTask};
use crate::error::{AwsError, FunctionError};
use crate::route::{FunctionMap, next_of};
use crate::segments::{Deadlines, SegmentGuard, SegmentStarts, Standing};
use crate::telemetry::{StepFigures, emit, step_metrics};
use orchestrator_store::SegmentClaim;

/// Where approval waits keep their task tokens, and how a wait is resumed.
#[async_trait]
pub trait ApprovalWaits: Send + Sync {
    async fn save_token(
        &self,
        run_id: &str,
        checkpoint_id: &str,
        token: &str,
    ) -> Result<(), StoreError>;
    async fn token(&self, run_id: &str, checkpoint_id: &str) -> Result<Option<String>, StoreError>;
    /// Ends the wait (SendTaskSuccess); the execution carries on with `advance`.
    async fn resume(&self, token: &str, run_id: &str) -> Result<(), AwsError>;
}

/// The `planner` function.
pub struct PlannerFunction {
    pub transitions: Transitions,
    pub planner: Planner,
    pub functions: FunctionMap,
    pub segments: SegmentGuard,
}

impl PlannerFunction {
    pub async fn handle(&self, run: RunRef) -> Result<Next, FunctionError> {
        let state = self.transitions.load(&run.run_id).await?;
        let span = spans::invocation("planner", &state, None);
        let clock = self.transitions.clock();
        async {
            let standing = self
                .segments
                .standing(&run.run_id, run.segment, clock.now_ms())
                .await?;
            if let Some(Standing::Superseded { by }) = standing {
                tracing::info!(by, "a later segment drives the run: not planning");
                return Ok(superseded(run.run_id));
            }
            let next = self.plan(state).await?;
            Ok(self.segments.route(next, standing, clock.now_ms()))
        }
        .instrument(span)
        .await
    }

    async fn plan(&self, state: RunState) -> Result<Next, FunctionError> {
        let engine = self.transitions.engine();
        let now = || self.transitions.clock().now_ms();
        // A retried invocation whose first try committed finds nothing to plan: it answers the
        // route again instead of calling the model twice.
        let PlannerState::Awaiting { reason } = &state.planner else {
            return Ok(next_of(engine, &state, &self.functions, now()));
        };
        let input = match propose(&self.planner, &self.transitions, &state, reason.as_ref()).await {
            Ok(input) => input,
            // The planner retried within the call already; Step Functions retries it again.
            Err(e) => {
                tracing::warn!(error = %e, "planner model call failed; Step Functions retries it");
                return Err(if e.throttled() {
                    FunctionError::PlannerThrottled(e.to_string())
                } else {
                    FunctionError::PlannerUnavailable(e.to_string())
                });
            }
        };
        let launch = self.transitions.transition(state, input).await?;
        let next = next_of(engine, &launch.state, &self.functions, now());
        tracing::info!(
            route = next.route.name(),
            plan_version = launch.state.plan.version,
            "planned"
        );
        Ok(next)
    }
}

/// Where completion events go (none: runs end without one).
#[derive(Clone)]
pub struct Delivery {
    pub completions: Arc<dyn Completions>,
    /// The runs' table, named in the event as where the report is.
    pub table: String,
}

/// The `advance` function: the engine's apply over the stored state.
pub struct AdvanceFunction {
    pub transitions: Transitions,
    pub functions: FunctionMap,
    pub waits: Arc<dyn ApprovalWaits>,
    pub delivery: Option<Delivery>,
    pub segments: SegmentGuard,
    /// Starts the next Express segment (`op: continue`).
    pub starts: Arc<dyn SegmentStarts>,
    /// Keeps a paused Express run's deadline (`op: pause`).
    pub deadlines: Arc<dyn Deadlines>,
}

fn superseded(run_id: String) -> Next {
    Next {
        run_id,
        route: crate::contract::Route::Superseded,
    }
}

impl AdvanceFunction {
    pub async fn handle(&self, request: AdvanceRequest) -> Result<Value, FunctionError> {
        let next = match request {
            AdvanceRequest::Advance {
                run_id,
                outcomes,
                timed_out,
                segment,
            } => {
                let state = self.transitions.load(&run_id).await?;
                let span = spans::invocation("advance", &state, None);
                self.apply(state, outcomes, timed_out, segment)
                    .instrument(span)
                    .await?
            }
            AdvanceRequest::Abort { run_id, caught } => {
                let state = self.transitions.load(&run_id).await?;
                let span = spans::invocation("abort", &state, None);
                let text = |k: &str| caught.get(k).and_then(|v| v.as_str()).unwrap_or("");
                let error = match (text("Error"), text("Cause")) {
                    ("", _) => "the state machine stopped the run".to_owned(),
                    (error, "") => format!("the state machine stopped the run: {error}"),
                    (error, cause) => {
                        format!("the state machine stopped the run: {error}: {cause}")
                    }
                };
                async {
                    tracing::error!(%error, "aborting the run");
                    self.advance(state, vec![Input::Aborted { error }]).await
                }
                .instrument(span)
                .await?
            }
            AdvanceRequest::Notify { run_id } => {
                let state = self.transitions.load(&run_id).await?;
                let span = spans::invocation("notify", &state, None);
                let sent = self.notify(&state).instrument(span).await?;
                return Ok(json!({ "sent": sent }));
            }
            AdvanceRequest::Await {
                run_id,
                checkpoint_id,
                task_token,
            } => {
                self.register(&run_id, &checkpoint_id, &task_token).await?;
                return Ok(json!({}));
            }
            AdvanceRequest::Claim {
                run_id,
                segment,
                execution,
            } => {
                let state = self.transitions.load(&run_id).await?;
                let span = spans::invocation("claim", &state, None);
                self.claim(state, segment, &execution)
                    .instrument(span)
                    .await?
            }
            AdvanceRequest::Pause {
                run_id,
                segment,
                state_machine,
            } => {
                self.pause(&run_id, segment, &state_machine).await?;
                return Ok(json!({}));
            }
            AdvanceRequest::Continue {
                run_id,
                segment,
                state_machine,
            } => {
                self.hand_over(&run_id, segment, &state_machine).await?;
                return Ok(json!({}));
            }
        };
        serde_json::to_value(next).map_err(|e| FunctionError::InvalidRequest(e.to_string()))
    }

    /// `op: advance`: the outcomes (and a timed-out wait) applied, unless a later segment
    /// drives the run.
    async fn apply(
        &self,
        state: RunState,
        outcomes: Vec<Outcome>,
        timed_out: bool,
        segment: Option<u32>,
    ) -> Result<Next, FunctionError> {
        let clock = self.transitions.clock();
        let run_id = state.run_id.clone();
        let standing = self
            .segments
            .standing(&run_id, segment, clock.now_ms())
            .await?;
        if let Some(Standing::Superseded { by }) = standing {
            tracing::info!(by, "a later segment drives the run: not advancing");
            return Ok(superseded(run_id));
        }
        let mut inputs = Vec::with_capacity(outcomes.len() + 1);
        for outcome in outcomes {
            if outcome.run_id != run_id {
                return Err(FunctionError::InvalidRequest(format!(
                    "an outcome of run {} was sent to run {run_id}",
                    outcome.run_id
                )));
            }
            inputs.push(self.input_of(outcome).await?);
        }
        if timed_out {
            // The engine sees the checkpoint past its deadline and closes it.
            inputs.push(Input::BudgetTick);
        }
        let next = self.advance(state, inputs).await?;
        Ok(self.segments.route(next, standing, clock.now_ms()))
    }

    /// Applies the inputs (none: the route as the stored run stands) and names the next route.
    async fn advance(&self, state: RunState, inputs: Vec<Input>) -> Result<Next, FunctionError> {
        let mut state = if inputs.is_empty() {
            state
        } else {
            self.transitions.transition_all(state, inputs).await?.state
        };
        // A run with nothing to do that has not ended fails visibly, as the local driver fails
        // it, rather than stay `running` with no execution.
        if let Move::Stalled { error } = self.transitions.engine().next(&state) {
            let aborted = Input::Aborted { error };
            state = self.transitions.transition(state, aborted).await?.state;
        }
        let now = self.transitions.clock().now_ms();
        let next = next_of(self.transitions.engine(), &state, &self.functions, now);
        tracing::info!(route = next.route.name(), status = %state.status, "advanced");
        Ok(next)
    }

    /// Express: keeps the paused run's deadline, when segment `segment + 1` starts.
    async fn pause(&self, run_id: &str, segment: u32, sm: &str) -> Result<(), FunctionError> {
        let state = self.transitions.load(run_id).await?;
        // Answered already (the answer started the next segment): nothing to keep.
        let Some(checkpoint) = &state.checkpoint else {
            return Ok(());
        };
        let at = checkpoint.expires_at_ms;
        self.deadlines
            .schedule(sm, run_id, segment + 1, at)
            .await
            .map_err(|e| FunctionError::ExecutionUnavailable(e.to_string()))?;
        tracing::info!(runId = %run_id, checkpoint = %checkpoint.id, "paused until answered or expired");
        Ok(())
    }

    /// Express: starts segment `segment + 1`, which carries the run on.
    async fn hand_over(&self, run_id: &str, segment: u32, sm: &str) -> Result<(), FunctionError> {
        let state = self.transitions.load(run_id).await?;
        let traceparent = state.traceparent.as_deref();
        self.starts
            .start(sm, run_id, segment + 1, traceparent)
            .await
            .map_err(|e| FunctionError::ExecutionUnavailable(e.to_string()))?;
        tracing::info!(runId = %run_id, next = segment + 1, "the next segment carries on");
        Ok(())
    }

    /// Claims the segment for this execution; one claimed already by another execution (a
    /// duplicated start) ends here, having done nothing.
    async fn claim(
        &self,
        state: RunState,
        segment: u32,
        execution: &str,
    ) -> Result<Next, FunctionError> {
        let segments = &self.segments.segments;
        match segments.claim(&state.run_id, segment, execution).await? {
            SegmentClaim::Taken(owner) => {
                tracing::warn!(segment, owner = %owner.execution, "segment already claimed: this execution ends");
                Ok(superseded(state.run_id))
            }
            SegmentClaim::Claimed(_) => {
                // A segment started at a paused run's deadline (nobody answered): the engine
                // closes the expired checkpoint.
                let now = self.transitions.clock().now_ms();
                let expired = state
                    .checkpoint
                    .as_ref()
                    .is_some_and(|c| now >= c.expires_at_ms);
                let inputs = if expired {
                    vec![Input::BudgetTick]
                } else {
                    Vec::new()
                };
                self.advance(state, inputs).await
            }
        }
    }

    /// Sends a finished run's completion event (once); false when there was nothing to send.
    async fn notify(&self, state: &RunState) -> Result<bool, FunctionError> {
        let Some(delivery) = &self.delivery else {
            return Ok(false);
        };
        if !state.status.is_terminal() {
            return Err(FunctionError::InvalidRequest(format!(
                "run {} has not ended ({}): no completion to send",
                state.run_id, state.status
            )));
        }
        let report = self.transitions.report(&state.run_id).await?;
        deliver(
            delivery.completions.as_ref(),
            &report,
            state,
            &delivery.table,
        )
        .await
        .map_err(FunctionError::from)
    }

    /// A step's outcome as the engine hears it. A finished step's result is read from the
    /// table, where the specialist stored it: payloads carry ids, not documents.
    async fn input_of(&self, o: Outcome) -> Result<Input, FunctionError> {
        Ok(match o.end {
            AttemptEnd::Finished => {
                let stored = self
                    .transitions
                    .store()
                    .get_step_result(&o.run_id, &o.step_id, o.attempt)
                    .await?;
                match stored {
                    Some(result) => outcome_of(result),
                    None => Input::StepFailed {
                        step_id: o.step_id,
                        attempt: o.attempt,
                        error: "the step reported a result that is not in the table".into(),
                        retryable: true,
                    },
                }
            }
            AttemptEnd::Failed { error, retryable } => Input::StepFailed {
                step_id: o.step_id,
                attempt: o.attempt,
                error,
                retryable,
            },
            AttemptEnd::NeedsHuman { request } => Input::StepNeedsHuman {
                step_id: o.step_id,
                attempt: o.attempt,
                request,
            },
        })
    }

    /// Keeps the wait's token. An answer given before the token was kept found nothing to
    /// resume; then the wait is resumed here, so it cannot hang.
    async fn register(
        &self,
        run_id: &str,
        checkpoint_id: &str,
        token: &str,
    ) -> Result<(), FunctionError> {
        self.waits.save_token(run_id, checkpoint_id, token).await?;
        let state = self.transitions.load(run_id).await?;
        let open = state.checkpoint.as_ref().map(|c| c.id.as_str()) == Some(checkpoint_id);
        if !open {
            tracing::info!(
                runId = run_id,
                checkpoint_id,
                "answered before the wait began"
            );
            // Store.Unavailable is what AwaitApproval retries: a retry registers the wait again
            // and resumes it, where any other errorType would abort an answered run.
            self.waits
                .resume(token, run_id)
                .await
                .map_err(|e| FunctionError::StoreUnavailable(e.to_string()))?;
        }
        Ok(())
    }
}

/// A specialist function (strategy, generation, qa, finalize): runs one step.
pub struct SpecialistFunction {
    pub steps: StepRunner,
    pub transitions: Transitions,
}

impl SpecialistFunction {
    pub async fn handle(&self, task: StepTask) -> Result<Outcome, FunctionError> {
        let state = self.transitions.load(&task.run_id).await?;
        let span = spans::invocation("specialist", &state, Some(&task.step_id));
        self.run(state, task).instrument(span).await
    }

    async fn run(&self, state: RunState, task: StepTask) -> Result<Outcome, FunctionError> {
        let outcome = |end| Outcome {
            run_id: task.run_id.clone(),
            step_id: task.step_id.clone(),
            attempt: task.attempt,
            end,
        };
        if state.status.is_terminal() {
            return Ok(outcome(AttemptEnd::Failed {
                error: format!("the run has already ended ({})", state.status),
                retryable: false,
            }));
        }
        let dispatch = Dispatch {
            step_id: task.step_id.clone(),
            capability_id: task.capability_id.clone(),
            attempt: task.attempt,
            timeout_ms: task.timeout_ms,
        };
        let input = match self.steps.attempt(&state, &dispatch).await {
            Ok(input) => input,
            Err(e) => {
                tracing::warn!(error = %e, attempt = task.attempt, "step failed; Step Functions retries it");
                return Err(FunctionError::of_step(e));
            }
        };
        let now = self.transitions.clock().now_ms();
        let end = match input {
            Input::StepFinished { result } => {
                let qa_score = serde_json::from_value::<QualityVerdict>(result.output.clone())
                    .ok()
                    .map(|v| v.score)
                    .filter(|_| task.capability_id == QA_CAPABILITY);
                emit_figures(&task, &result.metrics, qa_score, false, now);
                AttemptEnd::Finished
            }
            Input::StepFailed {
                error, retryable, ..
            } => {
                let none = StepMetrics {
                    duration_ms: 0,
                    attempt: task.attempt,
                    capability_id: task.capability_id.clone(),
                    input_tokens: 0,
                    output_tokens: 0,
                };
                emit_figures(&task, &none, None, true, now);
                AttemptEnd::Failed { error, retryable }
            }
            Input::StepNeedsHuman { request, .. } => AttemptEnd::NeedsHuman { request },
            other => {
                return Err(FunctionError::InvalidRequest(format!(
                    "a step ended with an unexpected input: {other:?}"
                )));
            }
        };
        Ok(outcome(end))
    }
}

/// The attempt's figures as a metrics log line (CloudWatch embedded metric format).
fn emit_figures(
    task: &StepTask,
    metrics: &StepMetrics,
    qa_score: Option<f64>,
    failed: bool,
    now_ms: u64,
) {
    emit(&step_metrics(
        &StepFigures {
            run_id: &task.run_id,
            step_id: &task.step_id,
            capability: &task.capability_id,
            duration_ms: metrics.duration_ms,
            input_tokens: metrics.input_tokens,
            output_tokens: metrics.output_tokens,
            retries: task.attempt.saturating_sub(1),
            qa_score,
            failed,
        },
        now_ms,
    ));
}
