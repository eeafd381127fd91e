//! The in-process driver. It owns one task per live run: apply an input to the engine, commit the
//! new state with the events it emitted, carry out the actions (planner calls and step dispatches
//! run as concurrent tasks), repeat. The same engine runs on AWS behind the `advance` function.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orchestrator_agents::{Planner, Specialists};
use orchestrator_core::engine::{Input, Move, PlannerState, ReplanReason, RunState};
use orchestrator_core::event::Event;
use orchestrator_core::ports::{
    CallLog, Claim, Clock, Committed, EventLog, Lease, OpenedStep, RunStore, StepOpening,
    StoreError,
};
use orchestrator_core::types::{RunReport, RunRequest, RunStatus, StepResult, ValidationError};
use tokio::sync::mpsc;
use tracing::Instrument;

mod inflight;
mod lease;
mod log_sink;
mod planning;
pub mod replay;
pub mod spans;
mod steps;
mod transitions;

use inflight::{Ahead, InFlight, Work};
pub use lease::{LeaseConfig, process_owner};
pub use log_sink::LogSink;
pub use planning::propose;

pub use steps::{StepEnd, StepRunner, Transient, outcome_of, stored_input};
pub use transitions::{EXECUTION_OWNER, Transitions, With, events_of};

/// A store that is a run store, an event log and the record of model calls (SQLite here,
/// DynamoDB on AWS).
pub trait Store: RunStore + EventLog + CallLog {}
impl<T: RunStore + EventLog + CallLog> Store for T {}

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
    /// Another live process drives the run (it holds the run's lease).
    #[error("run {run_id} is being driven by {owner} (its lease runs {expires_in_ms} ms more)")]
    Owned {
        run_id: String,
        owner: String,
        expires_in_ms: u64,
    },
    /// The deployment's cap on runs in progress is reached: nothing was started.
    #[error(
        "{limit} runs are in progress, the most allowed ({MAX_RUNS_IN_PROGRESS_VAR}); nothing was started: try again once one ends"
    )]
    AtCapacity { limit: usize },
}

impl RunError {
    /// Another owner took the run over while this process drove it: it stops, quietly.
    pub fn taken_over(&self) -> bool {
        matches!(self, RunError::Store(StoreError::LeaseLost(_)))
    }
}

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Flush streamed text after this many bytes...
    pub delta_max_chars: usize,
    /// ...or this long after the first unflushed chunk.
    pub delta_max_age_ms: u64,
    /// Whether a stream's first chunk waits for its batch too (else it goes out at once).
    pub delta_hold_first: bool,
    /// How often the driver checks the time budget and checkpoint expiry.
    pub tick: Duration,
    /// Warnings every run states right after `start` (e.g. that the offline model is in use).
    pub notices: Vec<String>,
    /// Messages every run states right after `start` (e.g. which provider and model run it).
    pub messages: Vec<String>,
    /// Who this process is when it drives a run, and how long its lease lasts unrenewed.
    pub lease: LeaseConfig,
    /// The most runs in progress (not finished, paused ones included) the store may hold; a
    /// start past it is refused before anything is stored. None: no limit.
    pub max_runs_in_progress: Option<usize>,
}

impl RunnerConfig {
    /// The same, for a store that bills every write (DynamoDB): streamed text goes out every
    /// [`BILLED_DELTA_MAX_AGE_MS`] or [`BILLED_DELTA_MAX_CHARS`] rather than every 50 ms or 256
    /// bytes, and a stream's first chunk waits for its batch too, since each batch is a
    /// transaction of its own. A watcher polling the table still sees a token within about
    /// 300 ms (the flush, then at most one poll).
    pub fn with_billed_writes(self) -> Self {
        Self {
            delta_max_chars: BILLED_DELTA_MAX_CHARS,
            delta_max_age_ms: BILLED_DELTA_MAX_AGE_MS,
            delta_hold_first: true,
            ..self
        }
    }
}

/// Delta batching on a store that bills each write: see [`RunnerConfig::with_billed_writes`].
pub const BILLED_DELTA_MAX_AGE_MS: u64 = 200;
pub const BILLED_DELTA_MAX_CHARS: usize = 4096;

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            delta_max_chars: 256,
            delta_max_age_ms: 50,
            delta_hold_first: false,
            tick: Duration::from_secs(1),
            notices: Vec::new(),
            messages: Vec::new(),
            lease: LeaseConfig::default(),
            max_runs_in_progress: None,
        }
    }
}

/// The variable that caps runs in progress, read by every binary that starts runs.
pub const MAX_RUNS_IN_PROGRESS_VAR: &str = "ORCHESTRATOR_MAX_RUNS_IN_PROGRESS";

/// A setting that cannot be used, named with its value.
#[derive(Debug, thiserror::Error)]
#[error("{name}={value:?} must be a whole number (0 or unset for no limit)")]
pub struct SettingError {
    pub name: &'static str,
    pub value: String,
}

/// A limit read from the variable `name`: unset, empty or 0 is no limit.
pub fn limit_from_env<T: std::str::FromStr + Default + PartialEq>(
    name: &'static str,
) -> Result<Option<T>, SettingError> {
    let Some(value) = std::env::var(name).ok().filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    match value.trim().parse::<T>() {
        Ok(n) if n == T::default() => Ok(None),
        Ok(n) => Ok(Some(n)),
        Err(_) => Err(SettingError { name, value }),
    }
}

/// [`MAX_RUNS_IN_PROGRESS_VAR`]: the cap on runs in progress; unset, empty or 0 for none.
pub fn max_runs_in_progress_from_env() -> Result<Option<usize>, SettingError> {
    limit_from_env(MAX_RUNS_IN_PROGRESS_VAR)
}

/// A run ready to be driven: its state, and the lease it was made under (`drive` takes one
/// when there is none).
#[derive(Debug)]
pub struct Launch {
    pub state: RunState,
    pub lease: Option<Lease>,
    /// The run's span when this process started the run ([`spans::run`]); none for a stored
    /// run, which `drive` then traces as resumed.
    pub span: tracing::Span,
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
    transitions: Transitions,
    steps: StepRunner,
    planner: Arc<Planner>,
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
        let capabilities = specialists.keys().cloned().collect::<BTreeSet<_>>();
        let transitions = Transitions::new(store.clone(), capabilities, clock.clone(), config);
        let max_hitl = transitions.engine().config.max_hitl_requests;
        let steps = StepRunner::new(store, clock, specialists, transitions.config(), max_hitl);
        Self {
            transitions,
            steps,
            planner: Arc::new(planner),
            live: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        self.transitions.store()
    }

    /// A runner on the same store, clock and settings (`tweak` may change them) with another
    /// planner and specialists: a replay's or a fork's, whose model answers from a record.
    pub fn with_team(
        &self,
        planner: Planner,
        specialists: Specialists,
        tweak: impl FnOnce(&mut RunnerConfig),
    ) -> Runner {
        let mut config = self.transitions.config().clone();
        tweak(&mut config);
        Runner::new(
            self.store().clone(),
            planner,
            specialists,
            self.transitions.clock().clone(),
            config,
        )
    }

    pub fn transitions(&self) -> &Transitions {
        &self.transitions
    }

    pub fn lease_config(&self) -> &LeaseConfig {
        &self.transitions.config().lease
    }

    pub fn now_ms(&self) -> u64 {
        self.transitions.clock().now_ms()
    }

    /// A task of this process drives the run.
    pub fn is_live(&self, run_id: &str) -> bool {
        self.live
            .lock()
            .map(|live| live.contains_key(run_id))
            .unwrap_or(false)
    }

    /// The agents a chat run may be answered by.
    pub fn chat_agents(&self) -> Vec<String> {
        self.transitions.chat_agents()
    }

    /// Checks a request completely; nothing is stored for a request that fails here.
    pub fn validate(&self, request: &RunRequest) -> Result<(), ValidationError> {
        self.transitions.validate(request)
    }

    /// Validates and stores a new run (once per idempotency key). Drive the launch to run it.
    pub async fn start(
        &self,
        request: RunRequest,
        correlation_id: Option<String>,
    ) -> Result<Started, RunError> {
        self.transitions.start(request, correlation_id).await
    }

    /// Picks up a run after its process stopped: re-issues what was in flight.
    /// Refused (`Owned`) while another live process drives the run.
    pub async fn resume(&self, run_id: &str) -> Result<Launch, RunError> {
        let mut state = self.transitions.load(run_id).await?;
        if state.status.is_terminal() {
            return Err(RunError::Finished {
                run_id: run_id.to_owned(),
                status: state.status,
            });
        }
        let lease = self.claim(&mut state).await?;
        self.leased(state, Input::Resumed, lease).await
    }

    /// Takes the run's lease for this process and fences the state's writes with it. A
    /// holder this machine knows is dead (its process is gone) is replaced without waiting
    /// for its lease to lapse.
    async fn claim(&self, state: &mut RunState) -> Result<Lease, RunError> {
        let config = &self.transitions.config().lease;
        let store = self.store();
        let mut claim = store
            .acquire_lease(&state.run_id, &config.owner, config.ttl_ms(), None)
            .await?;
        if let Claim::Held { owner, .. } = &claim
            && lease::owner_is_dead(owner)
        {
            claim = store
                .acquire_lease(&state.run_id, &config.owner, config.ttl_ms(), Some(owner))
                .await?;
        }
        match claim {
            Claim::Acquired(lease) => {
                state.lease_token = Some(lease.token);
                Ok(lease)
            }
            Claim::Held {
                owner,
                expires_at_ms,
            } => Err(RunError::Owned {
                run_id: state.run_id.clone(),
                owner,
                expires_in_ms: expires_at_ms.saturating_sub(self.transitions.clock().now_ms()),
            }),
        }
    }

    /// A transition under a lease just taken; the lease is let go if the transition fails.
    async fn leased(
        &self,
        state: RunState,
        input: Input,
        lease: Lease,
    ) -> Result<Launch, RunError> {
        match self.transitions.transition(state, input).await {
            Ok(launch) => Ok(Launch {
                lease: Some(lease),
                ..launch
            }),
            Err(e) => {
                let _ = self.store().release_lease(&lease).await;
                Err(e)
            }
        }
    }

    /// Answers a checkpoint. A live run gets the answer at once; a stored one is advanced here.
    pub async fn answer(
        &self,
        run_id: &str,
        checkpoint_id: &str,
        approve: bool,
        comment: Option<String>,
    ) -> Result<Delivered, RunError> {
        let state = self.transitions.load(run_id).await?;
        let input = self
            .transitions
            .answer_input(&state, checkpoint_id, approve, comment)?;
        self.deliver(state, input).await
    }

    pub async fn cancel(&self, run_id: &str, reason: String) -> Result<Delivered, RunError> {
        let state = self.transitions.load(run_id).await?;
        if state.status.is_terminal() {
            return Err(RunError::Finished {
                run_id: run_id.to_owned(),
                status: state.status,
            });
        }
        self.deliver(state, Input::Cancelled { reason }).await
    }

    /// To the task driving the run here; else applied under the run's lease. A cancel of a
    /// run another process drives is written without the lease: it ends the run, and that
    /// process stops at its next write, which finds the run finished.
    async fn deliver(&self, mut state: RunState, input: Input) -> Result<Delivered, RunError> {
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
        let launch = match self.claim(&mut state).await {
            Ok(lease) => self.leased(state, input, lease).await?,
            Err(RunError::Owned { .. }) if matches!(input, Input::Cancelled { .. }) => {
                self.transitions.transition(state, input).await?
            }
            Err(e) => return Err(e),
        };
        Ok(Delivered::Applied(Box::new(launch)))
    }

    /// The run's report, built from the stored state and results when it has none yet.
    pub async fn report(&self, run_id: &str) -> Result<RunReport, RunError> {
        self.transitions.report(run_id).await
    }

    /// Drives a run until it finishes, or until it waits on a person with nothing in flight
    /// (then it returns `PendingHitl`; `answer` picks it up again).
    ///
    /// The planner call and the steps run as futures of this task, not as tasks of their own:
    /// they wait on the model almost all the time, and a hand-off between tasks costs a
    /// cross-thread wake-up where a poll costs nothing (bench/README.md). A step's result is
    /// written together with the transition it causes and the openings of the steps that
    /// transition dispatches: one write per hand-off between steps.
    ///
    /// The run's lease is held throughout (taken here if the launch has none), renewed every
    /// third of its time and let go at the end. A run another owner takes over ends the drive
    /// with an error for which [`RunError::taken_over`] holds; nothing more is written.
    pub async fn drive(&self, launch: Launch) -> Result<RunStatus, RunError> {
        let Launch {
            mut state,
            lease,
            span,
        } = launch;
        let span = if span.is_none() {
            spans::resumed(&state)
        } else {
            span
        };
        let lease = match lease {
            Some(lease) => Some(lease),
            None if state.status.is_terminal() => None,
            None => Some(self.claim(&mut state).await?),
        };
        state.lease_token = lease.as_ref().map(|l| l.token);
        let config = &self.transitions.config().lease;
        let mut keeper = lease.map(|l| lease::Keeper::start(self.store().clone(), l, config));
        let run_id = state.run_id.clone();
        let driven = self
            .drive_leased(state, keeper.as_mut())
            .instrument(span.clone())
            .await;
        // The run's last frames go out to its watchers on this thread before the lease's
        // release is written: nobody waits on the release.
        tokio::task::yield_now().await;
        if let Some(lease) = keeper.and_then(lease::Keeper::stop)
            && let Err(e) = self.store().release_lease(&lease).await
        {
            tracing::warn!(run_id = %lease.run_id, error = %e, "could not release the lease");
        }
        let settled = self.settled(&run_id, driven).await;
        spans::settled(&span, &settled);
        settled
    }

    /// A drive that ran into a run finished by someone else (a cancel from another process)
    /// ends with that run's status.
    async fn settled(
        &self,
        run_id: &str,
        driven: Result<RunStatus, RunError>,
    ) -> Result<RunStatus, RunError> {
        if let Err(RunError::Store(StoreError::Conflict(_))) = &driven
            && let Ok(state) = self.transitions.load(run_id).await
            && state.status.is_terminal()
        {
            return Ok(state.status);
        }
        driven
    }

    /// The loop: ask the engine for the next move, start what it names that is not running
    /// yet, wait for the first outcome (or an answer, a cancel, a tick), apply and commit it.
    async fn drive_leased(
        &self,
        mut state: RunState,
        mut keeper: Option<&mut lease::Keeper>,
    ) -> Result<RunStatus, RunError> {
        let run_id = state.run_id.clone();
        let (tx, mut rx) = mpsc::unbounded_channel();
        if let Ok(mut live) = self.live.lock() {
            live.insert(run_id.clone(), tx);
        }
        let _unregister = Unregister {
            live: self.live.clone(),
            run_id: run_id.clone(),
        };
        let mut drive = Drive {
            // A run never planned has no results yet: its first hand-off can start ahead too.
            results: (state.plan.version == 0).then(Vec::new),
            ..Drive::default()
        };
        let mut tick = tokio::time::interval(self.transitions.config().tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let input = match self.transitions.engine().next(&state) {
                Move::Finished { status, .. } => return Ok(status),
                Move::AwaitApproval { .. } if drive.work.is_empty() => {
                    return Ok(RunStatus::PendingHitl);
                }
                Move::Stalled { error } => Some(Input::Aborted { error }),
                _ => {
                    self.launch(&state, &mut drive.work, &mut drive.opened, None);
                    None
                }
            };
            let (input, ended) = match input {
                Some(input) => (input, None),
                None => tokio::select! {
                    Some(ended) = drive.work.next() => match ended {
                        Some((key, end)) => {
                            drive.work.running.remove(&key);
                            match end {
                                Ok(StepEnd::Input(input)) => (input, None),
                                Ok(StepEnd::Result { result, trailing }) => {
                                    (outcome_of(result.clone()), Some((result, trailing)))
                                }
                                // A panicking specialist is a failed attempt, not a dead run.
                                Err(panic) => (key.crashed(panic), None),
                            }
                        }
                        None => continue, // called off; its replacement is in flight
                    },
                    Some(input) = rx.recv() => (input, None),
                    _ = tick.tick() => (Input::BudgetTick, None),
                    _ = async { if let Some(k) = keeper.as_mut() { k.lost().await } }, if keeper.is_some() => {
                        return Err(RunError::Store(StoreError::LeaseLost(run_id)));
                    }
                },
            };
            state = self.advance(state, input, ended, &mut drive).await?;
        }
    }

    /// Starts the planner call or the steps the engine's next move names that are not
    /// running, each step with its opening from `opened` (without one it opens itself).
    /// `ahead`: before the transition that names them is committed, and only the steps that
    /// have an opening in `opened`.
    fn launch(
        &self,
        state: &RunState,
        work: &mut InFlight,
        opened: &mut HashMap<Work, OpenedStep>,
        mut ahead: Option<&mut Ahead>,
    ) {
        match self.transitions.engine().next(state) {
            Move::Plan { reason } => {
                let (this, snapshot) = (self.clone(), state.clone());
                let planned =
                    async move { StepEnd::Input(this.call_planner(snapshot, reason).await) };
                work.start(Work::Planner, planned, ahead);
            }
            Move::Dispatch { steps } => {
                for d in steps {
                    let key = Work::Step(d.step_id.clone(), d.attempt);
                    let unopened = ahead.is_some() && !opened.contains_key(&key);
                    if work.running.contains(&key) || unopened {
                        continue;
                    }
                    let (runner, snapshot) = (self.steps.clone(), state.clone());
                    let opening = opened.remove(&key);
                    let ran = async move { runner.run_local(snapshot, d, opening).await };
                    work.start(key, ran, ahead.as_deref_mut());
                }
            }
            _ => {}
        }
    }

    /// Applies an input and writes the transition, with the step result it came from (if
    /// any) and the openings of the steps it starts (those `next` names that are not
    /// running). Those steps, and a planner call it asks for, are started before the write
    /// goes in (see `inflight`). When the attempt already had a result (another writer's),
    /// the transition is made again from that one.
    async fn advance(
        &self,
        state: RunState,
        input: Input,
        ended: Option<(StepResult, Vec<Event>)>,
        drive: &mut Drive,
    ) -> Result<RunState, RunError> {
        let now = self.transitions.clock().now_ms();
        let (next, transition) = self.transitions.engine().apply(state, input, now);
        let (result, trailing) = match ended {
            Some((result, trailing)) => (Some(result), trailing),
            None => (None, Vec::new()),
        };
        let openings = self.openings(&next, &drive.work.running);
        let ahead = self
            .start_ahead(&next, &openings, result.as_ref(), drive)
            .await;
        let with = With {
            result: result.as_ref(),
            trailing: trailing.clone(),
            opens: &openings.opens,
        };
        match self.transitions.commit(&next, &transition, with).await? {
            Some(Committed::Written { opened, .. }) => {
                drive.written(result, &opened);
                ahead.settle(
                    &next,
                    openings.keys,
                    opened,
                    &mut drive.work,
                    &mut drive.opened,
                );
                Ok(next)
            }
            Some(Committed::ResultTaken(stored)) => {
                ahead.call_off(&mut drive.work);
                drive.results = None;
                let ours = result.as_ref().unwrap_or(&stored).clone();
                let input = stored_input(stored, &ours);
                let mut state = self.transitions.load(&next.run_id).await?;
                state.lease_token = next.lease_token;
                let (next, transition) = self.transitions.engine().apply(state, input, now);
                let openings = self.openings(&next, &drive.work.running);
                let with = With {
                    result: None,
                    trailing,
                    opens: &openings.opens,
                };
                let committed = self.transitions.commit(&next, &transition, with).await?;
                if let Some(Committed::Written { opened, .. }) = committed {
                    drive.opened.extend(openings.keys.into_iter().zip(opened));
                }
                Ok(next)
            }
            None => {
                ahead.call_off(&mut drive.work);
                Ok(next)
            }
        }
    }

    /// Starts what the transition to `next` names before it is committed: the planner call,
    /// and the steps it opens when the run's results are known (those stored, and `result`,
    /// which goes with this write). What starts is polled once and the task yields, so the
    /// model requests go out before the write.
    async fn start_ahead(
        &self,
        next: &RunState,
        openings: &Openings,
        result: Option<&StepResult>,
        drive: &mut Drive,
    ) -> Ahead {
        let mut guessed: HashMap<Work, OpenedStep> = HashMap::new();
        let mut ahead = Ahead::default();
        if let Some(stored) = &drive.results {
            let guess: Vec<StepResult> = stored.iter().chain(result).cloned().collect();
            for key in &openings.keys {
                let results = guess.clone();
                guessed.insert(key.clone(), OpenedStep::Open { results });
            }
            ahead = Ahead::new(guess);
        }
        self.launch(next, &mut drive.work, &mut guessed, Some(&mut ahead));
        if !ahead.is_empty() {
            drive.work.poll_once().await;
            tokio::task::yield_now().await;
        }
        ahead
    }

    /// The openings of the steps the next move names that are not running yet; a step that
    /// cannot run (no specialist) gets none and fails without being opened.
    fn openings(&self, state: &RunState, running: &HashSet<Work>) -> Openings {
        let mut openings = Openings::default();
        if let Move::Dispatch { steps } = self.transitions.engine().next(state) {
            for d in steps {
                let key = Work::Step(d.step_id.clone(), d.attempt);
                if !running.contains(&key)
                    && let Some(opening) = self.steps.opening(state, &d)
                {
                    openings.keys.push(key);
                    openings.opens.push(opening);
                }
            }
        }
        openings
    }

    async fn call_planner(&self, state: RunState, reason: Option<ReplanReason>) -> Input {
        debug_assert!(matches!(state.planner, PlannerState::Awaiting { .. }));
        planning::propose(&self.planner, &self.transitions, &state, reason.as_ref())
            .await
            .unwrap_or_else(|e| Input::PlanFailed {
                error: e.to_string(),
            })
    }
}

/// The openings a transition writes, and the steps they are for, in the same order.
#[derive(Default)]
struct Openings {
    keys: Vec<Work>,
    opens: Vec<StepOpening>,
}

/// What a drive keeps between its transitions.
#[derive(Default)]
struct Drive {
    work: InFlight,
    /// Steps opened by a committed transition and not started yet.
    opened: HashMap<Work, OpenedStep>,
    /// The run's stored results, in the order written, when known (from the last opening
    /// the store handed back, and the results written since): what a step started ahead of
    /// its opening is given.
    results: Option<Vec<StepResult>>,
}

impl Drive {
    /// A transition was written with `result` (if any), opening steps as `opened` says.
    fn written(&mut self, result: Option<StepResult>, opened: &[OpenedStep]) {
        let handed = opened.iter().find_map(|o| match o {
            OpenedStep::Open { results } => Some(results),
            OpenedStep::Stored(_) => None,
        });
        match (handed, result, self.results.as_mut()) {
            (Some(results), _, _) => self.results = Some(results.clone()),
            (None, Some(result), Some(results)) => results.push(result),
            _ => {}
        }
    }
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
