//! Running one step of a plan: the specialist with its filtered inputs, its text streamed into
//! the event log in batches, its StepResult stored once per (run, step, attempt). The local
//! driver and the AWS specialist functions both run steps through a [`StepRunner`].

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use orchestrator_agents::{AgentError, DeltaSink, PriorOutput, Specialists, StepContext};
use orchestrator_core::batch::DeltaBatcher;
use orchestrator_core::engine::{Dispatch, Input, RunState};
use orchestrator_core::event::{Event, EventKind, Handoff, HandoffStage, StepRef};
use orchestrator_core::ports::{Clock, ModelError, OpenedStep, StoreError};
use orchestrator_core::tools::Resume;
use orchestrator_core::types::{StepMetrics, StepResult, Usage};

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

    /// Runs the step; a transient failure is stored as a failed result of this attempt and
    /// reported retryable, so the engine decides whether to try again.
    pub async fn run_step(&self, state: RunState, dispatch: Dispatch) -> Input {
        let started = Instant::now();
        match self.attempt(&state, &dispatch).await {
            Ok(input) => input,
            Err(e) => {
                let result = StepResult {
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
                };
                self.store_result(&state.run_id, result, true).await
            }
        }
    }

    /// Runs the step once. At-least-once dispatch, exactly-once effect: a result stored for
    /// this attempt is the answer. A transient failure stores nothing and comes back as `Err`.
    pub async fn attempt(&self, state: &RunState, dispatch: &Dispatch) -> Result<Input, Transient> {
        let run_id = state.run_id.clone();
        let runnable = match (
            self.specialists.get(&dispatch.capability_id),
            state.plan.step(&dispatch.step_id),
        ) {
            (Some(specialist), Some(step)) => Ok((specialist.clone(), step.clone())),
            (None, _) => Err(format!(
                "no specialist provides {:?}",
                dispatch.capability_id
            )),
            (_, None) => Err("the step is no longer in the plan".to_owned()),
        };
        let (specialist, step) = match runnable {
            Ok(runnable) => runnable,
            // A result stored for this attempt still answers it.
            Err(error) => {
                let stored = self
                    .store
                    .get_step_result(&run_id, &dispatch.step_id, dispatch.attempt)
                    .await?;
                return Ok(stored.map_or_else(
                    || Input::StepFailed {
                        step_id: dispatch.step_id.clone(),
                        attempt: dispatch.attempt,
                        error,
                        retryable: false,
                    },
                    outcome_of,
                ));
            }
        };
        let event = |kind| Event {
            kind,
            correlation_id: state.correlation_id.clone(),
            run_id: run_id.clone(),
        };
        let occurred = event(EventKind::Handoff {
            message: HandoffStage::Occurred,
            data: Handoff {
                from: Some("orchestrator".into()),
                to: dispatch.capability_id.clone(),
                capability_id: dispatch.capability_id.clone(),
                step_id: dispatch.step_id.clone(),
            },
        });
        // The run's results are dropped here, not held through the model call: only the
        // ancestors' outputs go on.
        let inputs = match self
            .store
            .open_step(&run_id, &dispatch.step_id, dispatch.attempt, &[occurred])
            .await?
        {
            OpenedStep::Stored(stored) => return Ok(outcome_of(stored)),
            OpenedStep::Open { results } => inputs_for(state, &step.id, results),
        };
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
            step,
            attempt: dispatch.attempt,
            inputs,
            hitl_remaining: self.max_hitl_requests.saturating_sub(state.hitl_requests),
            resume,
        };
        let sink = BatchingSink {
            store: self.store.clone(),
            clock: self.clock.clone(),
            template: event(EventKind::Message {
                message: String::new(),
            }),
            step_id: dispatch.step_id.clone(),
            batcher: tokio::sync::Mutex::new(DeltaBatcher::new(
                self.delta_max_chars,
                self.delta_max_age_ms,
            )),
            error: Mutex::new(None),
        };
        let started = Instant::now();
        let ran = tokio::time::timeout(
            Duration::from_millis(dispatch.timeout_ms),
            specialist.run(&ctx, &sink),
        )
        .await;
        sink.finish().await?;
        let duration_ms = started.elapsed().as_millis() as u64;
        let (output, usage, error) = match ran {
            Ok(Ok(out)) => (out.output, out.usage, None),
            // Not a result: the engine opens a checkpoint and dispatches the step again later.
            Ok(Err(AgentError::NeedsHuman(request))) => {
                return Ok(Input::StepNeedsHuman {
                    step_id: dispatch.step_id.clone(),
                    attempt: dispatch.attempt,
                    request,
                });
            }
            Ok(Err(AgentError::Model(e))) if e.retryable() => {
                return Err(Transient::of_model(&e));
            }
            Ok(Err(e)) => (
                serde_json::Value::Null,
                Usage::default(),
                Some(e.to_string()),
            ),
            Err(_) => {
                return Err(Transient::Unavailable(format!(
                    "timed out after {} ms",
                    dispatch.timeout_ms
                )));
            }
        };
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
        Ok(self.store_result(&run_id, result, false).await)
    }

    /// Stores a result (first writer wins) and reports the stored one to the engine.
    async fn store_result(&self, run_id: &str, result: StepResult, retryable: bool) -> Input {
        let (step_id, attempt) = (result.step_id.clone(), result.attempt);
        match self.store.put_step_result(run_id, &result).await {
            Ok(stored) if stored.error.is_none() => Input::StepFinished { result: stored },
            Ok(stored) => Input::StepFailed {
                step_id: stored.step_id,
                attempt: stored.attempt,
                error: stored.error.unwrap_or_default(),
                // A failure stored by an earlier writer: let the engine try again.
                retryable: retryable || result.error.is_none(),
            },
            Err(e) => Input::StepFailed {
                step_id,
                attempt,
                error: format!("could not store the result: {e}"),
                retryable: true,
            },
        }
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

/// Streams a step's text into delta events, batched.
struct BatchingSink {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    template: Event,
    step_id: String,
    batcher: tokio::sync::Mutex<DeltaBatcher>,
    error: Mutex<Option<StoreError>>,
}

impl BatchingSink {
    async fn write(&self, text: String) {
        let mut event = self.template.clone();
        event.kind = EventKind::Delta {
            message: text,
            data: StepRef {
                step_id: self.step_id.clone(),
            },
        };
        if let Err(e) = self.store.append(&event.run_id, &[event.clone()]).await
            && let Ok(mut slot) = self.error.lock()
        {
            slot.get_or_insert(e);
        }
    }

    async fn finish(&self) -> Result<(), StoreError> {
        let rest = self.batcher.lock().await.flush();
        if let Some(text) = rest {
            self.write(text).await;
        }
        match self.error.lock() {
            Ok(mut slot) => slot.take().map_or(Ok(()), Err),
            Err(_) => Ok(()),
        }
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
        if let Err(e) = self.store.append(&event.run_id, &[event.clone()]).await
            && let Ok(mut slot) = self.error.lock()
        {
            slot.get_or_insert(e);
        }
    }
}
