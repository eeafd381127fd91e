//! Running one step of a plan: the specialist with its filtered inputs, its text streamed into
//! the event log in batches, its StepResult stored once per (run, step, attempt). The local
//! driver and the AWS specialist functions both run steps through a [`StepRunner`].

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use orchestrator_agents::{
    AgentError, DeltaSink, PriorOutput, Specialist, Specialists, StepContext,
};
use orchestrator_core::batch::DeltaBatcher;
use orchestrator_core::engine::{Dispatch, Input, RunState};
use orchestrator_core::event::{Event, EventKind, Handoff, HandoffStage, StepRef};
use orchestrator_core::ports::{Clock, ModelError, OpenedStep, StepOpening, StoreError};
use orchestrator_core::tools::Resume;
use orchestrator_core::types::{PlanStep, StepMetrics, StepResult, Usage};

use crate::{RunnerConfig, Store};

/// A failure worth running the same attempt again for: nothing was stored for it, so a retry
/// (the local engine's, or Step Functions' Retry on AWS) starts clean.
#[derive(Debug, thiserror::Error)]
pub enum Transient {
    /// The model provider's own words (they already say it is throttling).
    #[error("{0}")]
    Throttled(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Transient {
    fn of_model(e: &ModelError) -> Self {
        if e.throttled() {
            Transient::Throttled(e.to_string())
        } else {
            Transient::Unavailable(e.to_string())
        }
    }
}

/// Runs steps with the specialists it holds (all of them locally, one per AWS function).
#[derive(Clone)]
pub struct StepRunner {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    specialists: Arc<Specialists>,
    delta_max_chars: usize,
    delta_max_age_ms: u64,
    max_hitl_requests: u32,
}

impl StepRunner {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        specialists: Specialists,
        config: &RunnerConfig,
        max_hitl_requests: u32,
    ) -> Self {
        Self {
            store,
            clock,
            specialists: Arc::new(specialists),
            delta_max_chars: config.delta_max_chars,
            delta_max_age_ms: config.delta_max_age_ms,
            max_hitl_requests,
        }
    }

    pub fn specialists(&self) -> &Specialists {
        &self.specialists
    }

    /// Runs a step for the local driver, which stores what it returns with the transition
    /// that follows ([`StepEnd::Result`]): the step's result, its last streamed text and the
    /// engine's answer to them go in one write. `opened` is the attempt as the dispatching
    /// transition opened it; `None` opens it here. A transient failure comes back as a failed
    /// result, retryable, so the engine decides whether to try again.
    pub async fn run_local(
        &self,
        state: RunState,
        dispatch: Dispatch,
        opened: Option<OpenedStep>,
    ) -> StepEnd {
        let started = Instant::now();
        let ready = match self.ready(&state, &dispatch) {
            Ok(ready) => ready,
            Err(error) => {
                return match self.unrunnable(&state, &dispatch, error).await {
                    Ok(input) => StepEnd::Input(input),
                    Err(e) => failed_end(&dispatch, started, e),
                };
            }
        };
        let opened = match opened {
            Some(opened) => opened,
            None => match self.open(&state, &dispatch).await {
                Ok(opened) => opened,
                Err(e) => return failed_end(&dispatch, started, e),
            },
        };
        let inputs = match opened {
            OpenedStep::Stored(stored) => return StepEnd::Input(outcome_of(stored)),
            OpenedStep::Open { results } => inputs_for(&state, &ready.step.id, results),
        };
        match self.execute(&state, &dispatch, ready, inputs).await {
            Ok(Ran::NeedsHuman(input)) => StepEnd::Input(input),
            Ok(Ran::Finished { result, trailing }) => StepEnd::Result {
                result,
                trailing,
                retryable: false,
            },
            Err(e) => failed_end(&dispatch, started, e),
        }
    }

    /// The `occurred` handoff of a dispatch, when its step can run (the specialist exists and
    /// the step is in the plan): what opening the attempt appends.
    pub fn opening(&self, state: &RunState, dispatch: &Dispatch) -> Option<StepOpening> {
        self.ready(state, dispatch).ok()?;
        Some(StepOpening {
            step_id: dispatch.step_id.clone(),
            attempt: dispatch.attempt,
            handoff: vec![occurred(state, dispatch)],
        })
    }

    /// Runs the step once. At-least-once dispatch, exactly-once effect: a result stored for
    /// this attempt is the answer. A transient failure stores nothing and comes back as `Err`.
    pub async fn attempt(&self, state: &RunState, dispatch: &Dispatch) -> Result<Input, Transient> {
        let ready = match self.ready(state, dispatch) {
            Ok(ready) => ready,
            Err(error) => return self.unrunnable(state, dispatch, error).await,
        };
        // The run's results are dropped here, not held through the model call: only the
        // ancestors' outputs go on.
        let inputs = match self.open(state, dispatch).await? {
            OpenedStep::Stored(stored) => return Ok(outcome_of(stored)),
            OpenedStep::Open { results } => inputs_for(state, &ready.step.id, results),
        };
        match self.execute(state, dispatch, ready, inputs).await? {
            Ran::NeedsHuman(input) => Ok(input),
            Ran::Finished { result, trailing } => {
                if !trailing.is_empty() {
                    self.store
                        .append_fenced(&state.run_id, &trailing, state.lease_token)
                        .await?;
                }
                Ok(self.store_result(&state.run_id, result, false).await)
            }
        }
    }

    /// The specialist and the plan step of a dispatch, or why it cannot run.
    fn ready(&self, state: &RunState, dispatch: &Dispatch) -> Result<Ready, String> {
        match (
            self.specialists.get(&dispatch.capability_id),
            state.plan.step(&dispatch.step_id),
        ) {
            (Some(specialist), Some(step)) => Ok(Ready {
                specialist: specialist.clone(),
                step: step.clone(),
            }),
            (None, _) => Err(format!(
                "no specialist provides {:?}",
                dispatch.capability_id
            )),
            (_, None) => Err("the step is no longer in the plan".to_owned()),
        }
    }

    /// A step that cannot run fails for good, unless a result stored for this attempt still
    /// answers it.
    async fn unrunnable(
        &self,
        state: &RunState,
        dispatch: &Dispatch,
        error: String,
    ) -> Result<Input, Transient> {
        let stored = self
            .store
            .get_step_result(&state.run_id, &dispatch.step_id, dispatch.attempt)
            .await?;
        Ok(stored.map_or_else(
            || Input::StepFailed {
                step_id: dispatch.step_id.clone(),
                attempt: dispatch.attempt,
                error,
                retryable: false,
            },
            outcome_of,
        ))
    }

    async fn open(&self, state: &RunState, dispatch: &Dispatch) -> Result<OpenedStep, StoreError> {
        self.store
            .open_step(
                &state.run_id,
                &dispatch.step_id,
                dispatch.attempt,
                &[occurred(state, dispatch)],
                state.lease_token,
            )
            .await
    }

    /// Runs the specialist with its inputs, its text streamed into the log as it goes. The
    /// result is not stored here; the text not yet flushed comes back with it.
    async fn execute(
        &self,
        state: &RunState,
        dispatch: &Dispatch,
        ready: Ready,
        inputs: Vec<PriorOutput>,
    ) -> Result<Ran, Transient> {
        let run_id = state.run_id.clone();
        // A step that paused for a person carries on from its conversation, with the answer.
        let resume = state
            .suspended
            .get(&dispatch.step_id)
            .filter(|s| s.attempt == dispatch.attempt)
            .and_then(|s| {
                Some(Resume {
                    session: s.request.session.clone(),
                    answer: s.answer.clone()?,
                })
            });
        let ctx = StepContext {
            run_id: run_id.clone(),
            request: state.request.clone(),
            step: ready.step,
            attempt: dispatch.attempt,
            inputs,
            hitl_remaining: self.max_hitl_requests.saturating_sub(state.hitl_requests),
            resume,
        };
        let sink = BatchingSink {
            store: self.store.clone(),
            clock: self.clock.clone(),
            template: Event {
                kind: EventKind::Message {
                    message: String::new(),
                },
                correlation_id: state.correlation_id.clone(),
                run_id: run_id.clone(),
            },
            step_id: dispatch.step_id.clone(),
            fence: state.lease_token,
            batcher: tokio::sync::Mutex::new(DeltaBatcher::new(
                self.delta_max_chars,
                self.delta_max_age_ms,
            )),
            error: Mutex::new(None),
        };
        let started = Instant::now();
        let ran = tokio::time::timeout(
            Duration::from_millis(dispatch.timeout_ms),
            ready.specialist.run(&ctx, &sink),
        )
        .await;
        let (output, usage, error, trailing) = match ran {
            // The text not yet flushed goes with the result, in the same write.
            Ok(Ok(out)) => (out.output, out.usage, None, sink.rest().await?),
            // Not a result: the engine opens a checkpoint and dispatches the step again later.
            Ok(Err(AgentError::NeedsHuman(request))) => {
                sink.finish().await?;
                return Ok(Ran::NeedsHuman(Input::StepNeedsHuman {
                    step_id: dispatch.step_id.clone(),
                    attempt: dispatch.attempt,
                    request,
                }));
            }
            Ok(Err(AgentError::Model(e))) if e.retryable() => {
                sink.finish().await?;
                return Err(Transient::of_model(&e));
            }
            // Replies that could not be used, even after a repair: another attempt asks afresh.
            Ok(Err(e @ AgentError::Invalid(_))) => {
                sink.finish().await?;
                return Err(Transient::Unavailable(e.to_string()));
            }
            Ok(Err(e)) => (
                serde_json::Value::Null,
                Usage::default(),
                Some(e.to_string()),
                sink.rest().await?,
            ),
            Err(_) => {
                sink.finish().await?;
                return Err(Transient::Unavailable(format!(
                    "timed out after {} ms",
                    dispatch.timeout_ms
                )));
            }
        };
        let duration_ms = started.elapsed().as_millis() as u64;
        let result = StepResult {
            step_id: dispatch.step_id.clone(),
            attempt: dispatch.attempt,
            output,
            error: error.clone(),
            metrics: StepMetrics {
                duration_ms,
                attempt: dispatch.attempt,
                capability_id: dispatch.capability_id.clone(),
                input_tokens: usage.input_tokens,
                output_tokens: usage.output_tokens,
            },
        };
        tracing::info!(
            run_id = %run_id,
            step_id = %dispatch.step_id,
            gen_ai.usage.input_tokens = usage.input_tokens,
            gen_ai.usage.output_tokens = usage.output_tokens,
            duration_ms,
            error = error.as_deref().unwrap_or(""),
            "step finished"
        );
        Ok(Ran::Finished { result, trailing })
    }

    /// Stores a result (first writer wins) and reports the stored one to the engine.
    async fn store_result(&self, run_id: &str, result: StepResult, retryable: bool) -> Input {
        match self.store.put_step_result(run_id, &result).await {
            Ok(stored) => stored_input(stored, &result, retryable),
            Err(e) => Input::StepFailed {
                step_id: result.step_id,
                attempt: result.attempt,
                error: format!("could not store the result: {e}"),
                retryable: true,
            },
        }
    }
}

/// What the engine hears when `ours` went to the store and `stored` is what the store kept
/// (ours, or an earlier writer's).
pub fn stored_input(stored: StepResult, ours: &StepResult, retryable: bool) -> Input {
    match stored.error {
        None => Input::StepFinished { result: stored },
        Some(error) => Input::StepFailed {
            step_id: stored.step_id,
            attempt: stored.attempt,
            error,
            // A failure stored by an earlier writer: let the engine try again.
            retryable: retryable || ours.error.is_none(),
        },
    }
}

/// The outputs of the step's ancestors (transitive dependencies), latest attempt each, in plan
/// order: the filtered context a handoff carries.
fn inputs_for(state: &RunState, step_id: &str, results: Vec<StepResult>) -> Vec<PriorOutput> {
    let mut ancestors = BTreeSet::new();
    let mut stack = vec![step_id.to_owned()];
    while let Some(id) = stack.pop() {
        if let Some(step) = state.plan.step(&id) {
            for dep in &step.depends_on {
                if ancestors.insert(dep.clone()) {
                    stack.push(dep.clone());
                }
            }
        }
    }
    state
        .plan
        .steps
        .iter()
        .filter(|s| ancestors.contains(&s.id))
        .filter_map(|s| {
            let result = results
                .iter()
                .filter(|r| r.step_id == s.id && r.error.is_none())
                .max_by_key(|r| r.attempt)?;
            Some(PriorOutput {
                step_id: s.id.clone(),
                capability_id: s.capability()?.to_owned(),
                output: result.output.clone(),
            })
        })
        .collect()
}

/// What a stored result tells the engine.
pub fn outcome_of(stored: StepResult) -> Input {
    match &stored.error {
        None => Input::StepFinished { result: stored },
        Some(error) => Input::StepFailed {
            step_id: stored.step_id.clone(),
            attempt: stored.attempt,
            error: error.clone(),
            retryable: true,
        },
    }
}

/// What the engine hears of a result that the caller stores itself (the local driver, with
/// the transition that follows).
pub fn input_of(result: &StepResult, retryable: bool) -> Input {
    stored_input(result.clone(), result, retryable)
}

/// How a step run by [`StepRunner::run_local`] ended.
#[derive(Debug)]
pub enum StepEnd {
    /// Nothing to store: a result stored earlier, a request for a person, a step that cannot
    /// run. Apply it.
    Input(Input),
    /// A result to store with the transition it causes, after the step's last streamed text.
    Result {
        result: StepResult,
        trailing: Vec<Event>,
        /// A failure worth another attempt (the engine decides whether to make one).
        retryable: bool,
    },
}

/// A transient failure as the local driver stores it: a failed result of this attempt.
fn failed_end(dispatch: &Dispatch, started: Instant, e: impl std::fmt::Display) -> StepEnd {
    StepEnd::Result {
        result: StepResult {
            step_id: dispatch.step_id.clone(),
            attempt: dispatch.attempt,
            output: serde_json::Value::Null,
            error: Some(e.to_string()),
            metrics: StepMetrics {
                duration_ms: started.elapsed().as_millis() as u64,
                attempt: dispatch.attempt,
                capability_id: dispatch.capability_id.clone(),
                input_tokens: 0,
                output_tokens: 0,
            },
        },
        trailing: Vec::new(),
        retryable: true,
    }
}

/// The handoff `occurred` of a dispatch: its specialist picked it up.
fn occurred(state: &RunState, dispatch: &Dispatch) -> Event {
    Event {
        kind: EventKind::Handoff {
            message: HandoffStage::Occurred,
            data: Handoff {
                from: Some("orchestrator".into()),
                to: dispatch.capability_id.clone(),
                capability_id: dispatch.capability_id.clone(),
                step_id: dispatch.step_id.clone(),
            },
        },
        correlation_id: state.correlation_id.clone(),
        run_id: state.run_id.clone(),
    }
}

struct Ready {
    specialist: Arc<dyn Specialist>,
    step: PlanStep,
}

enum Ran {
    NeedsHuman(Input),
    Finished {
        result: StepResult,
        trailing: Vec<Event>,
    },
}

/// Streams a step's text into delta events, batched.
struct BatchingSink {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    template: Event,
    step_id: String,
    /// The driver's lease token: a step whose run was taken over stops writing into its log.
    fence: Option<u64>,
    batcher: tokio::sync::Mutex<DeltaBatcher>,
    error: Mutex<Option<StoreError>>,
}

impl BatchingSink {
    fn delta_event(&self, text: String) -> Event {
        let mut event = self.template.clone();
        event.kind = EventKind::Delta {
            message: text,
            data: StepRef {
                step_id: self.step_id.clone(),
            },
        };
        event
    }

    async fn write(&self, text: String) {
        let event = self.delta_event(text);
        if let Err(e) = self
            .store
            .append_fenced(&event.run_id, std::slice::from_ref(&event), self.fence)
            .await
            && let Ok(mut slot) = self.error.lock()
        {
            slot.get_or_insert(e);
        }
    }

    /// The text not yet flushed, as the delta event the caller writes; or the first write
    /// that failed.
    async fn rest(&self) -> Result<Vec<Event>, StoreError> {
        let rest = self.batcher.lock().await.flush();
        self.failed()?;
        Ok(rest
            .map(|text| self.delta_event(text))
            .into_iter()
            .collect())
    }

    fn failed(&self) -> Result<(), StoreError> {
        match self.error.lock() {
            Ok(mut slot) => slot.take().map_or(Ok(()), Err),
            Err(_) => Ok(()),
        }
    }

    async fn finish(&self) -> Result<(), StoreError> {
        let rest = self.batcher.lock().await.flush();
        if let Some(text) = rest {
            self.write(text).await;
        }
        self.failed()
    }
}

#[async_trait]
impl DeltaSink for BatchingSink {
    async fn delta(&self, text: &str) {
        // The lock is held across the write so batches reach the log in order.
        let mut batcher = self.batcher.lock().await;
        if let Some(batch) = batcher.push(text, self.clock.now_ms()) {
            self.write(batch).await;
        }
    }

    async fn event(&self, kind: EventKind) {
        // The text so far goes first, so the log keeps the order things happened in.
        let mut batcher = self.batcher.lock().await;
        if let Some(rest) = batcher.flush() {
            self.write(rest).await;
        }
        let mut event = self.template.clone();
        event.kind = kind;
        if let Err(e) = self
            .store
            .append_fenced(&event.run_id, &[event.clone()], self.fence)
            .await
            && let Ok(mut slot) = self.error.lock()
        {
            slot.get_or_insert(e);
        }
    }
}
