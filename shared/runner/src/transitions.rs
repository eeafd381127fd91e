//! Engine transitions over a store, with no model in sight: start a run, apply inputs to the
//! state and commit the result with its events, answer a checkpoint, cancel. The local driver,
//! the AWS `advance`/`planner` functions and the streamer all go through [`Transitions`], and
//! every commit of a transition goes through [`Transitions::commit`].

use std::collections::BTreeSet;
use std::sync::Arc;

use orchestrator_core::engine::{Engine, EngineConfig, Input, RunState, Transition};
use orchestrator_core::event::{Event, EventKind};
use orchestrator_core::ports::{Clock, Committed, Created, StepOpening, TransitionWrite};
use orchestrator_core::report::build_report;
use orchestrator_core::types::{
    FINALIZE_CAPABILITY, Mode, RunReport, RunRequest, StepResult, ValidationError,
};

use crate::{Launch, RunError, RunnerConfig, Started, Store, spans};

/// The lease owner of runs a Step Functions execution drives.
pub const EXECUTION_OWNER: &str = "step-functions";

#[derive(Clone)]
pub struct Transitions {
    engine: Arc<Engine>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    config: RunnerConfig,
}

impl Transitions {
    /// `capabilities`: the specialists that exist (every capability a plan may name).
    pub fn new(
        store: Arc<dyn Store>,
        capabilities: BTreeSet<String>,
        clock: Arc<dyn Clock>,
        config: RunnerConfig,
    ) -> Self {
        let engine = Engine::new(EngineConfig {
            capabilities,
            ..EngineConfig::default()
        });
        Self {
            engine: Arc::new(engine),
            store,
            clock,
            config,
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn config(&self) -> &RunnerConfig {
        &self.config
    }

    /// The agents a chat run may be answered by.
    pub fn chat_agents(&self) -> Vec<String> {
        self.engine
            .config
            .capabilities
            .iter()
            .filter(|k| k.as_str() != FINALIZE_CAPABILITY)
            .cloned()
            .collect()
    }

    /// Checks a request completely; nothing is stored for a request that fails here.
    pub fn validate(&self, request: &RunRequest) -> Result<(), ValidationError> {
        request.validate()?;
        if let Some(agent) = &request.options.target_agent_id {
            let agents = self.chat_agents();
            if !agents.contains(agent) {
                return Err(ValidationError::new(
                    "options.targetAgentId",
                    format!(
                        "unknown agent {agent:?}; the agents are {}",
                        agents.join(", ")
                    ),
                ));
            }
            if request.mode == Mode::App {
                return Err(ValidationError::new(
                    "options.targetAgentId",
                    "applies to chat mode only; set mode to chat or drop it",
                ));
            }
        }
        Ok(())
    }

    /// Validates and stores a new run (once per idempotency key).
    pub async fn start(
        &self,
        request: RunRequest,
        correlation_id: Option<String>,
    ) -> Result<Started, RunError> {
        self.start_as(None, request, correlation_id).await
    }

    /// `start` with the run id chosen by the caller (e.g. derived from a queue message's id);
    /// the request's idempotency key, when it has none, becomes that id, so starting the same
    /// id again finds the run instead of creating a second one.
    pub async fn start_as(
        &self,
        run_id: Option<String>,
        mut request: RunRequest,
        correlation_id: Option<String>,
    ) -> Result<Started, RunError> {
        self.validate(&request)?;
        self.check_capacity().await?;
        let now = self.clock.now_ms();
        let run_id = match run_id {
            Some(id) => {
                request.idempotency_key.get_or_insert_with(|| id.clone());
                id
            }
            None => uuid::Uuid::now_v7().to_string(),
        };
        let correlation_id = correlation_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let span = spans::run(&run_id, &correlation_id);
        let mut state = RunState::new(run_id, correlation_id, request, now);
        state.traceparent = orchestrator_telemetry::traceparent_of(&span);
        let (state, transition) = self.engine.apply(state, Input::Started, now);
        let mut events = events_of(&state, &transition.events);
        let messages = self
            .config
            .messages
            .iter()
            .map(|m| EventKind::Message { message: m.clone() });
        let warnings = self
            .config
            .notices
            .iter()
            .map(|n| EventKind::warning(n.clone(), None));
        let notices = messages.chain(warnings).map(|kind| Event {
            kind,
            correlation_id: state.correlation_id.clone(),
            run_id: state.run_id.clone(),
        });
        events.splice(1.min(events.len())..1.min(events.len()), notices);
        match self.store.create_run(&state, &events).await? {
            Created::New { .. } => Ok(Started::New(Box::new(Launch {
                state,
                lease: None,
                span,
            }))),
            Created::Existing { run_id } => Ok(Started::Existing { run_id }),
        }
    }

    /// Refuses a start once the runs in progress reach the configured cap. A check, not a
    /// reservation: starts racing past it can overshoot by the number of racers.
    async fn check_capacity(&self) -> Result<(), RunError> {
        let Some(limit) = self.config.max_runs_in_progress else {
            return Ok(());
        };
        let active = self.store.list_active(limit, None).await?;
        if active.len() >= limit {
            return Err(RunError::AtCapacity { limit });
        }
        Ok(())
    }

    /// Marks the run as driven by its Step Functions execution, for good: the execution owns
    /// it, and no local process (`serve` on the same table) ever takes it over. Marking a run
    /// again does nothing.
    pub async fn owned_by_execution(&self, run_id: &str) -> Result<(), RunError> {
        self.store
            .acquire_lease(run_id, EXECUTION_OWNER, u64::MAX, None)
            .await?;
        Ok(())
    }

    pub async fn load(&self, run_id: &str) -> Result<RunState, RunError> {
        self.store
            .load_run(run_id)
            .await?
            .ok_or_else(|| RunError::NotFound(run_id.to_owned()))
    }

    /// The input that answers the run's open checkpoint, checked against the stored run.
    pub fn answer_input(
        &self,
        state: &RunState,
        checkpoint_id: &str,
        approve: bool,
        comment: Option<String>,
    ) -> Result<Input, RunError> {
        if state.checkpoint.as_ref().map(|c| c.id.as_str()) != Some(checkpoint_id) {
            return Err(RunError::NoSuchCheckpoint {
                run_id: state.run_id.clone(),
                checkpoint_id: checkpoint_id.to_owned(),
            });
        }
        let checkpoint_id = checkpoint_id.to_owned();
        Ok(if approve {
            Input::ApprovalGiven {
                checkpoint_id,
                comment,
            }
        } else {
            Input::ApprovalDenied {
                checkpoint_id,
                comment,
            }
        })
    }

    /// One engine step outside a driver: apply, commit.
    pub async fn transition(&self, state: RunState, input: Input) -> Result<Launch, RunError> {
        self.transition_all(state, [input]).await
    }

    /// Applies inputs in order and commits the result once: one write for a batch of step
    /// outcomes.
    pub async fn transition_all(
        &self,
        mut state: RunState,
        inputs: impl IntoIterator<Item = Input>,
    ) -> Result<Launch, RunError> {
        let mut all = Transition::default();
        for input in inputs {
            let (next, transition) = self.engine.apply(state, input, self.clock.now_ms());
            state = next;
            all.changed |= transition.changed;
            all.events.extend(transition.events);
        }
        self.commit(&state, &all, With::default()).await?;
        Ok(Launch {
            state,
            lease: None,
            span: tracing::Span::none(),
        })
    }

    /// Writes a transition with what goes with it, in one write where the store can (see
    /// [`RunStore::commit_transition`]): the step result it applied, the step's last streamed
    /// text (`trailing`, before the transition's events) and the openings of the steps it
    /// dispatches. A final transition writes the run's report first, so whoever sees
    /// `complete` (or the final status) can read it. `None` when there was nothing to write.
    ///
    /// [`RunStore::commit_transition`]: orchestrator_core::ports::RunStore::commit_transition
    pub async fn commit(
        &self,
        state: &RunState,
        transition: &Transition,
        with: With<'_>,
    ) -> Result<Option<Committed>, RunError> {
        if !transition.changed && with.result.is_none() && with.trailing.is_empty() {
            return Ok(None);
        }
        let mut events = with.trailing;
        events.extend(events_of(state, &transition.events));
        let committed = self
            .store
            .commit_transition(TransitionWrite {
                state,
                events: &events,
                result: with.result,
                opens: with.opens,
                now_ms: self.clock.now_ms(),
            })
            .await?;
        Ok(Some(committed))
    }

    /// The run's report, built from the stored state and results when it has none yet.
    pub async fn report(&self, run_id: &str) -> Result<RunReport, RunError> {
        if let Some(report) = self.store.get_report(run_id).await? {
            return Ok(report);
        }
        let state = self.load(run_id).await?;
        let results = self.store.step_results(run_id).await?;
        Ok(build_report(&state, results, self.clock.now_ms()))
    }
}

/// What a transition's commit carries besides the state and its events (see
/// [`Transitions::commit`]).
#[derive(Debug, Default)]
pub struct With<'a> {
    pub result: Option<&'a StepResult>,
    pub trailing: Vec<Event>,
    pub opens: &'a [StepOpening],
}

/// A transition's events, stamped with the run.
pub fn events_of(state: &RunState, events: &[EventKind]) -> Vec<Event> {
    events
        .iter()
        .map(|kind| Event {
            kind: kind.clone(),
            correlation_id: state.correlation_id.clone(),
            run_id: state.run_id.clone(),
        })
        .collect()
}
