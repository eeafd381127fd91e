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
use orchestrator_core::ports::{CallUnit, Clock, OpenedStep, StepOpening, StoreError};
use orchestrator_core::tools::{HumanRequest, Resume};
use orchestrator_core::types::{PlanStep, StepMetrics, StepResult, Usage};
use serde_json::Value;

use tracing::Instrument;

use crate::{RunnerConfig, Store, spans};

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

/// How a specialist's attempt failed, classified once ([`AgentError::retryable`] decides);
/// everything after (run the attempt again, store a failed result, open a checkpoint) follows
/// from the variant.
enum Failure {
    /// Not a failure: the specialist asked a person.
    NeedsHuman(Box<HumanRequest>),
    /// Worth the same attempt again; nothing is stored for it.
    Transient(Transient),
    /// The step's failed result, stored; another attempt would fail the same way.
    Final(String),
}

impl Failure {
    fn of_agent(e: AgentError) -> Self {
        match e {
            AgentError::NeedsHuman(request) => Failure::NeedsHuman(request),
            AgentError::Model(m) if m.retryable() && m.throttled() => {
                Failure::Transient(Transient::Throttled(m.to_string()))
            }
            e if e.retryable() => Failure::Transient(Transient::Unavailable(e.to_string())),
            e => Failure::Final(e.to_string()),
        }
    }

    fn timed_out(ms: u64) -> Self {
        Failure::Transient(Transient::Unavailable(format!(
            "the step timed out after {ms} ms"
        )))
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
    delta_hold_first: bool,
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
            delta_hold_first: config.delta_hold_first,
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
        let span = spans::step(&state, &dispatch);
        self.run_local_traced(state, dispatch, opened)
            .instrument(span)
            .await
    }

    async fn run_local_traced(
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
            OpenedStep::Open { results } => inputs_for(&state, &ready.step.id, &results),
        };
        match self.execute(&state, &dispatch, ready, inputs).await {
            Ok(Ran::NeedsHuman(input)) => StepEnd::Input(input),
            Ok(Ran::Finished { result, trailing }) => StepEnd::Result { result, trailing },
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
        let span = spans::step(state, dispatch);
        let attempted = self
            .attempt_traced(state, dispatch)
            .instrument(span.clone())
            .await;
        if let Err(e) = &attempted {
            span.in_scope(|| spans::failed(&e.to_string()));
        }
        attempted
    }

    async fn attempt_traced(
        &self,
        state: &RunState,
        dispatch: &Dispatch,
    ) -> Result<Input, Transient> {
        let ready = match self.ready(state, dispatch) {
            Ok(ready) => ready,
            Err(error) => return self.unrunnable(state, dispatch, error).await,
        };
        // The run's results are dropped here, not held through the model call: only the
        // ancestors' outputs go on.
        let inputs = match self.open(state, dispatch).await? {
            OpenedStep::Stored(stored) => return Ok(outcome_of(stored)),
            OpenedStep::Open { results } => inputs_for(state, &ready.step.id, &results),
        };
        match self.execute(state, dispatch, ready, inputs).await? {
            Ran::NeedsHuman(input) => Ok(input),
            Ran::Finished { result, trailing } => {
                if !trailing.is_empty() {
                    self.store
                        .append_fenced(&state.run_id, &trailing, state.lease_token)
                        .await?;
                }
                Ok(self.store_result(&state.run_id, result).await)
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
        let ctx = StepContext {
            run_id: state.run_id.clone(),
            request: state.request.clone(),
            step: ready.step,
            attempt: dispatch.attempt,
            inputs,
            hitl_remaining: self.max_hitl_requests.saturating_sub(state.hitl_requests),
            resume: resume_of(state, dispatch),
        };
        let sink = self.sink(state, dispatch);
        let started = Instant::now();
        let unit = CallUnit::Step {
            step_id: dispatch.step_id.clone(),
            attempt: dispatch.attempt,
        };
        let ran = tokio::time::timeout(
            Duration::from_millis(dispatch.timeout_ms),
            orchestrator_recording::within(&state.run_id, unit, ready.specialist.run(&ctx, &sink)),
        )
        .await
        .map_or_else(
            |_| Err(Failure::timed_out(dispatch.timeout_ms)),
            |ran| ran.map_err(Failure::of_agent),
        );
        let (output, usage, error) = match ran {
            Ok(out) => (out.output, out.usage, None),
            Err(Failure::Final(error)) => {
                spans::failed(&error);
                (Value::Null, Usage::default(), Some(error))
            }
            // Not a result: the engine opens a checkpoint and dispatches the step again later.
            Err(Failure::NeedsHuman(request)) => {
                sink.finish().await?;
                return Ok(Ran::NeedsHuman(Input::StepNeedsHuman {
                    step_id: dispatch.step_id.clone(),
                    attempt: dispatch.attempt,
                    request,
                }));
            }
            Err(Failure::Transient(e)) => {
                sink.finish().await?;
                return Err(e);
            }
        };
        // The text not yet flushed goes with the result, in the same write.
        let trailing = sink.rest().await?;
        let duration_ms = started.elapsed().as_millis() as u64;
        tracing::info!(
            run_id = %state.run_id,
            step_id = %dispatch.step_id,
            gen_ai.usage.input_tokens = usage.input_tokens,
            gen_ai.usage.output_tokens = usage.output_tokens,
            duration_ms,
            error = error.as_deref().unwrap_or(""),
            "step finished"
        );
        let result = result_of(dispatch, output, usage, duration_ms, error);
        Ok(Ran::Finished { result, trailing })
    }

    /// The sink that streams the step's text into the run's log, fenced by the driver's lease.
    fn sink(&self, state: &RunState, dispatch: &Dispatch) -> BatchingSink {
        BatchingSink {
            store: self.store.clone(),
            clock: self.clock.clone(),
            template: Event {
                kind: EventKind::Message {
                    message: String::new(),
                },
                correlation_id: state.correlation_id.clone(),
                run_id: state.run_id.clone(),
            },
            step_id: dispatch.step_id.clone(),
            fence: state.lease_token,
            batcher: tokio::sync::Mutex::new({
                let batcher = DeltaBatcher::new(self.delta_max_chars, self.delta_max_age_ms);
                if self.delta_hold_first {
                    batcher.holding_first()
                } else {
                    batcher
                }
            }),
            error: Mutex::new(None),
        }
    }

    /// Stores a result (first writer wins) and reports the stored one to the engine.
    async fn store_result(&self, run_id: &str, result: StepResult) -> Input {
        match self.store.put_step_result(run_id, &result).await {
            Ok(stored) => stored_input(stored, &result),
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
pub fn stored_input(mut stored: StepResult, ours: &StepResult) -> Input {
    // Ours succeeded but an earlier writer's failure was kept: let the engine try again.
    stored.retryable |= ours.error.is_none();
    outcome_of(stored)
}

/// The step's result as the specialist's run left it; a failure here is final (transient ones
/// store nothing, or go through [`failed_end`]).
fn result_of(
    dispatch: &Dispatch,
    output: Value,
    usage: Usage,
    duration_ms: u64,
    error: Option<String>,
) -> StepResult {
    StepResult {
        step_id: dispatch.step_id.clone(),
        attempt: dispatch.attempt,
        output,
        error,
        retryable: false,
        metrics: StepMetrics {
            duration_ms,
            attempt: dispatch.attempt,
            capability_id: dispatch.capability_id.clone(),
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
        },
    }
}

/// A step that paused for a person carries on from its conversation, with the answer.
fn resume_of(state: &RunState, dispatch: &Dispatch) -> Option<Resume> {
    let suspended = state
        .suspended
        .get(&dispatch.step_id)
        .filter(|s| s.attempt == dispatch.attempt)?;
    Some(Resume {
        session: suspended.request.session.clone(),
        answer: suspended.answer.clone()?,
    })
}

/// The outputs of the step's ancestors (transitive dependencies), latest attempt each, in plan
/// order: the filtered context a handoff carries.
pub(crate) fn inputs_for(
    state: &RunState,
    step_id: &str,
    results: &[StepResult],
) -> Vec<PriorOutput> {
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
/// What a stored result (or one the caller stores itself, with the transition that follows)
/// tells the engine: the failure as retryable as it was classified.
pub fn outcome_of(stored: StepResult) -> Input {
    match stored.error {
        None => Input::StepFinished { result: stored },
        Some(error) => Input::StepFailed {
            step_id: stored.step_id,
            attempt: stored.attempt,
            error,
            retryable: stored.retryable,
        },
    }
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
    },
}

/// A transient failure as the local driver stores it: a failed result of this attempt, worth
/// another (the engine decides whether to make one).
fn failed_end(dispatch: &Dispatch, started: Instant, e: impl std::fmt::Display) -> StepEnd {
    let duration_ms = started.elapsed().as_millis() as u64;
    let mut result = result_of(
        dispatch,
        Value::Null,
        Usage::default(),
        duration_ms,
        Some(e.to_string()),
    );
    result.retryable = true;
    StepEnd::Result {
        result,
        trailing: Vec::new(),
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
        crate::inflight::after_commit().await;
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
        crate::inflight::after_commit().await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use orchestrator_core::ports::ModelError;

    fn failed(retryable: bool) -> StepResult {
        let dispatch = Dispatch {
            step_id: "s1".into(),
            capability_id: "qa".into(),
            attempt: 1,
            timeout_ms: 1000,
        };
        let mut result = result_of(
            &dispatch,
            Value::Null,
            Usage::default(),
            5,
            Some("no".into()),
        );
        result.retryable = retryable;
        result
    }

    fn retryable(input: Input) -> bool {
        match input {
            Input::StepFailed { retryable, .. } => retryable,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn an_agent_error_is_classified_once_by_its_own_retryability() {
        // GIVEN the errors a specialist can end with
        let throttled = AgentError::Model(ModelError::Throttled("slow down".into()));
        let bad_request = AgentError::Model(ModelError::Provider {
            status: 400,
            message: "bad".into(),
        });
        // WHEN each is classified THEN transient ones are run again and the rest are final
        assert!(matches!(
            Failure::of_agent(throttled),
            Failure::Transient(Transient::Throttled(_))
        ));
        assert!(matches!(
            Failure::of_agent(AgentError::Invalid("not JSON".into())),
            Failure::Transient(Transient::Unavailable(_))
        ));
        assert!(matches!(Failure::of_agent(bad_request), Failure::Final(_)));
        assert!(matches!(
            Failure::of_agent(AgentError::MissingInput("the draft".into())),
            Failure::Final(_)
        ));
    }

    #[test]
    fn a_stored_failure_tells_the_engine_what_was_decided_when_it_was_stored() {
        // GIVEN a final failure and a transient one, stored and read back as JSON
        for decided in [false, true] {
            let json = serde_json::to_value(failed(decided)).unwrap();
            let read: StepResult = serde_json::from_value(json).unwrap();
            // WHEN a redelivered attempt finds it THEN the engine hears the same decision
            assert_eq!(retryable(outcome_of(read)), decided);
        }
        // AND a result stored before the flag existed reads as final
        let mut old = serde_json::to_value(failed(false)).unwrap();
        old.as_object_mut().unwrap().remove("retryable");
        assert!(!retryable(outcome_of(serde_json::from_value(old).unwrap())));
    }

    #[test]
    fn an_earlier_writers_failure_over_our_success_is_tried_again() {
        // GIVEN our attempt succeeded but the store kept an earlier writer's final failure
        let mut ours = failed(false);
        ours.error = None;
        // WHEN the engine hears what the store kept THEN it may try again
        assert!(retryable(stored_input(failed(false), &ours)));
    }
}
