//! The in-process driver. It owns one task per live run: apply an input to the engine, commit the
//! new state with the events it emitted, carry out the actions (planner calls and step dispatches
//! run as concurrent tasks), repeat. The same engine runs on AWS behind the `advance` function.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use orchestrator_agents::{
    AgentError, DeltaSink, PlanContext, Planner, PriorOutput, Specialists, StepContext,
};
use orchestrator_core::batch::DeltaBatcher;
use orchestrator_core::engine::{
    Action, Dispatch, Engine, EngineConfig, Input, PlannerState, RunState,
};
use orchestrator_core::event::{Event, EventKind, Handoff, HandoffStage, StepRef};
use orchestrator_core::ports::{Clock, Created, EventLog, RunStore, StoreError};
use orchestrator_core::report::build_report;
use orchestrator_core::tools::Resume;
use orchestrator_core::types::{
    Mode, RunReport, RunRequest, RunStatus, StepMetrics, StepResult, ValidationError,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// A store that is both a run store and an event log (SQLite here, DynamoDB on AWS).
pub trait Store: RunStore + EventLog {}
impl<T: RunStore + EventLog> Store for T {}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid request: {0}")]
    Invalid(#[from] ValidationError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("run {0} not found")]
    NotFound(String),
    #[error("run {run_id} has already finished ({status})")]
    Finished { run_id: String, status: RunStatus },
    #[error("run {run_id} is not waiting at checkpoint {checkpoint_id}")]
    NoSuchCheckpoint {
        run_id: String,
        checkpoint_id: String,
    },
}

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Flush streamed text after this many bytes...
    pub delta_max_chars: usize,
    /// ...or this long after the first unflushed chunk.
    pub delta_max_age_ms: u64,
    /// How often the driver checks the time budget and checkpoint expiry.
    pub tick: Duration,
    /// Warnings every run states right after `start` (e.g. that the offline model is in use).
    pub notices: Vec<String>,
    /// Messages every run states right after `start` (e.g. which provider and model run it).
    pub messages: Vec<String>,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            delta_max_chars: 256,
            delta_max_age_ms: 50,
            tick: Duration::from_secs(1),
            notices: Vec::new(),
            messages: Vec::new(),
        }
    }
}

/// A run ready to be driven: its state and the actions its last transition asked for.
#[derive(Debug)]
pub struct Launch {
    pub state: RunState,
    pub actions: Vec<Action>,
}

#[derive(Debug)]
pub enum Started {
    New(Box<Launch>),
    /// The idempotency key named a run that exists.
    Existing {
        run_id: String,
    },
}

impl Started {
    pub fn run_id(&self) -> &str {
        match self {
            Started::New(l) => &l.state.run_id,
            Started::Existing { run_id } => run_id,
        }
    }
}

/// What an approval or cancellation did.
#[derive(Debug)]
pub enum Delivered {
    /// Handed to the task driving the run.
    Live,
    /// Applied to the stored run; drive the launch to carry on.
    Applied(Box<Launch>),
}

#[derive(Clone)]
pub struct Runner {
    engine: Arc<Engine>,
    store: Arc<dyn Store>,
    planner: Arc<Planner>,
    specialists: Arc<Specialists>,
    clock: Arc<dyn Clock>,
    config: RunnerConfig,
    live: Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Input>>>>,
}

impl Runner {
    pub fn new(
        store: Arc<dyn Store>,
        planner: Planner,
        specialists: Specialists,
        clock: Arc<dyn Clock>,
        config: RunnerConfig,
    ) -> Self {
        let engine = Engine::new(EngineConfig {
            capabilities: specialists.keys().cloned().collect::<BTreeSet<_>>(),
            ..EngineConfig::default()
        });
        Self {
            engine: Arc::new(engine),
            store,
            planner: Arc::new(planner),
            specialists: Arc::new(specialists),
            clock,
            config,
            live: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The agents a chat run may be answered by.
    pub fn chat_agents(&self) -> Vec<String> {
        self.specialists
            .keys()
            .filter(|k| k.as_str() != orchestrator_core::types::FINALIZE_CAPABILITY)
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

    /// Validates and stores a new run (once per idempotency key). Drive the launch to run it.
    pub async fn start(
        &self,
        request: RunRequest,
        correlation_id: Option<String>,
    ) -> Result<Started, RunError> {
        self.validate(&request)?;
        let now = self.clock.now_ms();
        let run_id = uuid::Uuid::now_v7().to_string();
        let correlation_id = correlation_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let state = RunState::new(run_id, correlation_id, request, now);
        let (state, actions) = self.engine.apply(state, Input::Started, now);
        let mut events = events_of(&state, &actions);
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
            Created::New { .. } => Ok(Started::New(Box::new(Launch { state, actions }))),
            Created::Existing { run_id } => Ok(Started::Existing { run_id }),
        }
    }

    /// Picks up a run after its process stopped: re-issues what was in flight.
    pub async fn resume(&self, run_id: &str) -> Result<Launch, RunError> {
        let state = self.load(run_id).await?;
        if state.status.is_terminal() {
            return Err(RunError::Finished {
                run_id: run_id.to_owned(),
                status: state.status,
            });
        }
        self.transition(state, Input::Resumed).await
    }

    /// Answers a checkpoint. A live run gets the answer at once; a stored one is advanced here.
    pub async fn answer(
        &self,
        run_id: &str,
        checkpoint_id: &str,
        approve: bool,
        comment: Option<String>,
    ) -> Result<Delivered, RunError> {
        let state = self.load(run_id).await?;
        if state.checkpoint.as_ref().map(|c| c.id.as_str()) != Some(checkpoint_id) {
            return Err(RunError::NoSuchCheckpoint {
                run_id: run_id.to_owned(),
                checkpoint_id: checkpoint_id.to_owned(),
            });
        }
        let checkpoint_id = checkpoint_id.to_owned();
        let input = if approve {
            Input::ApprovalGiven {
                checkpoint_id,
                comment,
            }
        } else {
            Input::ApprovalDenied {
                checkpoint_id,
                comment,
            }
        };
        self.deliver(state, input).await
    }

    pub async fn cancel(&self, run_id: &str, reason: String) -> Result<Delivered, RunError> {
        let state = self.load(run_id).await?;
        if state.status.is_terminal() {
            return Err(RunError::Finished {
                run_id: run_id.to_owned(),
                status: state.status,
            });
        }
        self.deliver(state, Input::Cancelled { reason }).await
    }

    async fn deliver(&self, state: RunState, input: Input) -> Result<Delivered, RunError> {
        let sender = self
            .live
            .lock()
            .ok()
            .and_then(|live| live.get(&state.run_id).cloned());
        if let Some(tx) = sender
            && tx.send(input.clone()).is_ok()
        {
            return Ok(Delivered::Live);
        }
        Ok(Delivered::Applied(Box::new(
            self.transition(state, input).await?,
        )))
    }

    async fn load(&self, run_id: &str) -> Result<RunState, RunError> {
        self.store
            .load_run(run_id)
            .await?
            .ok_or_else(|| RunError::NotFound(run_id.to_owned()))
    }

    /// One engine step outside a driver: apply, commit, hand back the actions.
    async fn transition(&self, state: RunState, input: Input) -> Result<Launch, RunError> {
        let (state, actions) = self.engine.apply(state, input, self.clock.now_ms());
        self.persist(&state, &actions).await?;
        Ok(Launch { state, actions })
    }

    /// Saves a transition. A final one writes the report first, so whoever sees `complete`
    /// (or the final status) can read the report.
    async fn persist(&self, state: &RunState, actions: &[Action]) -> Result<(), RunError> {
        if !actions.contains(&Action::Persist) {
            return Ok(());
        }
        if state.status.is_terminal() {
            let results = self.store.step_results(&state.run_id).await?;
            let report = build_report(state, results, self.clock.now_ms());
            self.store.put_report(&report).await?;
        }
        self.store.commit(state, &events_of(state, actions)).await?;
        Ok(())
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

    /// Drives a run until it finishes, or until it waits on a person with nothing in flight
    /// (then it returns `PendingHitl`; `answer` picks it up again).
    pub async fn drive(&self, launch: Launch) -> Result<RunStatus, RunError> {
        let Launch { mut state, actions } = launch;
        let run_id = state.run_id.clone();
        let (tx, mut rx) = mpsc::unbounded_channel();
        if let Ok(mut live) = self.live.lock() {
            live.insert(run_id.clone(), tx);
        }
        let _unregister = Unregister {
            live: self.live.clone(),
            run_id: run_id.clone(),
        };
        let mut tasks: JoinSet<Input> = JoinSet::new();
        let mut in_flight: HashMap<tokio::task::Id, (String, u32)> = HashMap::new();
        let mut pending = actions;
        let mut tick = tokio::time::interval(self.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            for action in pending.drain(..) {
                match action {
                    Action::CallPlanner { reason } => {
                        let this = self.clone();
                        let snapshot = state.clone();
                        let id = tasks
                            .spawn(async move { this.call_planner(snapshot, reason).await })
                            .id();
                        in_flight.insert(id, ("planner".into(), 0));
                    }
                    Action::Dispatch { steps } => {
                        for d in steps {
                            let this = self.clone();
                            let snapshot = state.clone();
                            let key = (d.step_id.clone(), d.attempt);
                            let id = tasks
                                .spawn(async move { this.run_step(snapshot, d).await })
                                .id();
                            in_flight.insert(id, key);
                        }
                    }
                    Action::Finish { .. } => {
                        // The report was written with the final state (see `persist`).
                        tasks.abort_all();
                        return Ok(state.status);
                    }
                    Action::AwaitApproval { .. } | Action::Emit { .. } | Action::Persist => {}
                }
            }
            if tasks.is_empty() && state.status == RunStatus::PendingHitl {
                return Ok(RunStatus::PendingHitl);
            }
            let input = tokio::select! {
                Some(joined) = tasks.join_next_with_id() => match joined {
                    Ok((id, input)) => {
                        in_flight.remove(&id);
                        input
                    }
                    Err(e) => {
                        // A panicking specialist is a failed attempt, not a dead run.
                        let Some((step_id, attempt)) = in_flight.remove(&e.id()) else { continue };
                        if step_id == "planner" && attempt == 0 {
                            Input::PlanFailed { error: format!("the planner crashed: {e}") }
                        } else {
                            Input::StepFailed { step_id, attempt, error: format!("the specialist crashed: {e}"), retryable: true }
                        }
                    }
                },
                Some(input) = rx.recv() => input,
                _ = tick.tick() => Input::BudgetTick,
            };
            let (next, actions) = self.engine.apply(state, input, self.clock.now_ms());
            self.persist(&next, &actions).await?;
            state = next;
            pending = actions;
        }
    }

    async fn call_planner(
        &self,
        state: RunState,
        reason: Option<orchestrator_core::engine::ReplanReason>,
    ) -> Input {
        debug_assert!(matches!(state.planner, PlannerState::Awaiting { .. }));
        let capabilities: Vec<String> = self.specialists.keys().cloned().collect();
        let ctx = PlanContext {
            request: &state.request,
            plan: &state.plan,
            reason: reason.as_ref(),
            capabilities: &capabilities,
        };
        match self.planner.plan(ctx).await {
            Ok(outcome) => Input::PlanProposed {
                patch: outcome.patch,
                usage: outcome.usage,
            },
            Err(e) => Input::PlanFailed {
                error: e.to_string(),
            },
        }
    }

    async fn run_step(&self, state: RunState, dispatch: Dispatch) -> Input {
        let failed = |error: String, retryable: bool| Input::StepFailed {
            step_id: dispatch.step_id.clone(),
            attempt: dispatch.attempt,
            error,
            retryable,
        };
        let run_id = state.run_id.clone();
        // At-least-once dispatch, exactly-once effect: a stored result is the answer.
        match self
            .store
            .get_step_result(&run_id, &dispatch.step_id, dispatch.attempt)
            .await
        {
            Ok(Some(stored)) => return outcome_of(stored),
            Ok(None) => {}
            Err(e) => return failed(e.to_string(), true),
        }
        let Some(specialist) = self.specialists.get(&dispatch.capability_id).cloned() else {
            return failed(
                format!("no specialist provides {:?}", dispatch.capability_id),
                false,
            );
        };
        let Some(step) = state.plan.step(&dispatch.step_id).cloned() else {
            return failed("the step is no longer in the plan".into(), false);
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
        if let Err(e) = self.store.append(&run_id, &[occurred]).await {
            return failed(e.to_string(), true);
        }
        let inputs = match self.inputs_for(&state, &step.id).await {
            Ok(inputs) => inputs,
            Err(e) => return failed(e.to_string(), true),
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
            hitl_remaining: self
                .engine
                .config
                .max_hitl_requests
                .saturating_sub(state.hitl_requests),
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
                self.config.delta_max_chars,
                self.config.delta_max_age_ms,
            )),
            error: Mutex::new(None),
        };
        let started = Instant::now();
        let ran = tokio::time::timeout(
            Duration::from_millis(dispatch.timeout_ms),
            specialist.run(&ctx, &sink),
        )
        .await;
        let flushed = sink.finish().await;
        let duration_ms = started.elapsed().as_millis() as u64;
        let ran = match ran {
            // Not a result: the engine opens a checkpoint and dispatches the step again later.
            Ok(Err(AgentError::NeedsHuman(request))) if flushed.is_ok() => {
                return Input::StepNeedsHuman {
                    step_id: dispatch.step_id.clone(),
                    attempt: dispatch.attempt,
                    request,
                };
            }
            other => other,
        };
        let (output, usage, error, retryable) = match (ran, flushed) {
            (_, Err(e)) => (
                serde_json::Value::Null,
                Default::default(),
                Some(format!("streaming to the event log failed: {e}")),
                true,
            ),
            (Ok(Ok(out)), Ok(())) => (out.output, out.usage, None, false),
            (Ok(Err(e)), Ok(())) => (
                serde_json::Value::Null,
                Default::default(),
                Some(e.to_string()),
                e.retryable(),
            ),
            (Err(_), Ok(())) => (
                serde_json::Value::Null,
                Default::default(),
                Some(format!("timed out after {} ms", dispatch.timeout_ms)),
                true,
            ),
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
        match self.store.put_step_result(&run_id, &result).await {
            Ok(stored) if stored.error.is_none() => Input::StepFinished { result: stored },
            Ok(stored) => Input::StepFailed {
                step_id: stored.step_id,
                attempt: stored.attempt,
                error: stored.error.unwrap_or_default(),
                retryable: if error.is_some() { retryable } else { true },
            },
            Err(e) => failed(format!("could not store the result: {e}"), true),
        }
    }

    /// The outputs of the step's ancestors (transitive dependencies), latest attempt each, in
    /// plan order: the filtered context a handoff carries.
    async fn inputs_for(
        &self,
        state: &RunState,
        step_id: &str,
    ) -> Result<Vec<PriorOutput>, StoreError> {
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
        let results = self.store.step_results(&state.run_id).await?;
        Ok(state
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
            .collect())
    }
}

fn outcome_of(stored: StepResult) -> Input {
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

/// The events among the actions, stamped with the run.
pub fn events_of(state: &RunState, actions: &[Action]) -> Vec<Event> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Emit { event } => Some(Event {
                kind: event.clone(),
                correlation_id: state.correlation_id.clone(),
                run_id: state.run_id.clone(),
            }),
            _ => None,
        })
        .collect()
}

struct Unregister {
    live: Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Input>>>>,
    run_id: String,
}

impl Drop for Unregister {
    fn drop(&mut self) {
        if let Ok(mut live) = self.live.lock() {
            live.remove(&self.run_id);
        }
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
