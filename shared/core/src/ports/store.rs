//! The store port: durable runs ([`RunStore`]) and their event logs ([`EventLog`]).

use std::time::Duration;

use async_trait::async_trait;

use crate::engine::RunState;
use crate::event::{Event, Frame, WireFrame};
use crate::types::{RunReport, RunStatus, RunSummary, StepResult};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("run {0} not found")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A fenced write of a run whose lease another owner has taken since: the writer no
    /// longer drives the run and must stop, quietly.
    #[error("run {0} is now driven by another owner (its lease was taken over)")]
    LeaseLost(String),
}

/// Where a listing of runs goes on from: the last run of the page before. Runs are ordered by
/// creation time and then run id, so runs created in the same millisecond are neither skipped
/// nor listed twice at a page boundary.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RunCursor {
    pub created_at_ms: u64,
    pub run_id: String,
}

impl RunCursor {
    pub fn after(run: &RunSummary) -> Self {
        Self {
            created_at_ms: run.created_at_ms,
            run_id: run.run_id.clone(),
        }
    }

    /// The opaque form the API hands out: hex, so it survives any URL and is not mistaken
    /// for something a client should build itself.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.created_at_ms, self.run_id)
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    pub fn decode(text: &str) -> Option<Self> {
        if !text.len().is_multiple_of(2) || text.len() > 1024 {
            return None;
        }
        let bytes = (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        let plain = String::from_utf8(bytes).ok()?;
        let (ms, run_id) = plain.split_once('.')?;
        (!run_id.is_empty()).then_some(())?;
        Some(Self {
            created_at_ms: ms.parse().ok()?,
            run_id: run_id.to_owned(),
        })
    }
}

/// The right to drive a run: held by `owner` until `expires_at_ms`. `token` grows with every
/// new owner; writes made under the lease carry it (the run state's `lease_token`, the
/// `fence` of appends) and the store refuses them once a newer owner has taken over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub run_id: String,
    pub owner: String,
    pub token: u64,
    pub expires_at_ms: u64,
}

/// What asking for a run's lease got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    Acquired(Lease),
    /// Another owner holds it and has not let it lapse.
    Held {
        owner: String,
        expires_at_ms: u64,
    },
}

/// A run that has not finished (running, or waiting on a person), as recovery sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveRun {
    pub run_id: String,
    pub created_at_ms: u64,
    pub status: RunStatus,
}

impl ActiveRun {
    pub fn cursor(&self) -> RunCursor {
        RunCursor {
            created_at_ms: self.created_at_ms,
            run_id: self.run_id.clone(),
        }
    }
}

/// The result of creating a run: a new one, or the one an idempotency key already named.
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    New { frames: Vec<Frame> },
    Existing { run_id: String },
}

/// Where an attempt of a step starts from (see [`RunStore::open_step`]).
#[derive(Debug, Clone, PartialEq)]
pub enum OpenedStep {
    /// The attempt already has a result (a retried dispatch): that result is the answer.
    Stored(StepResult),
    /// The handoff was appended; every stored result of the run, in the order written.
    Open { results: Vec<StepResult> },
}

/// A step attempt that a transition dispatches, opened in the same write (see
/// [`RunStore::commit_transition`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StepOpening {
    pub step_id: String,
    pub attempt: u32,
    /// Appended unless the attempt already has a result (the `occurred` handoff).
    pub handoff: Vec<Event>,
}

/// One transition and what goes with it, written together by
/// [`RunStore::commit_transition`].
#[derive(Debug, Clone, Copy)]
pub struct TransitionWrite<'a> {
    /// The state after the transition.
    pub state: &'a RunState,
    /// Its events, in order (a step's last streamed text first, then the engine's).
    pub events: &'a [Event],
    /// The step result the transition applied; it is stored first, and only if its attempt
    /// has no result yet.
    pub result: Option<&'a StepResult>,
    /// The attempts the transition dispatches.
    pub opens: &'a [StepOpening],
    /// The time a final transition stamps the run's report with.
    pub now_ms: u64,
}

/// What [`RunStore::commit_transition`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Committed {
    /// Everything was written; one opening per [`TransitionWrite::opens`], in order.
    Written {
        frames: Vec<Frame>,
        opened: Vec<OpenedStep>,
    },
    /// The attempt already had another result (an earlier writer won): nothing was written.
    /// The transition must be made again from that result.
    ResultTaken(StepResult),
}

/// Durable runs: state snapshots (with plan versions), step results and reports. A run store
/// is also its runs' event log: a transition's state and events are written together.
///
/// `open_step` and `commit_transition` are compositions of the other calls; a store that can
/// do them in one round trip (SQLite: one transaction) overrides them. `commit_finished` has
/// no default: it builds the run's report (`report::build_report`), which is the store
/// adapter's business, not the port's.
#[async_trait]
pub trait RunStore: EventLog + Send + Sync {
    /// Stores a new run with its first events, once per idempotency key.
    async fn create_run(&self, state: &RunState, events: &[Event]) -> Result<Created, StoreError>;
    /// Saves the state and appends the events its transition emitted, atomically: a crash
    /// leaves both or neither.
    async fn commit(&self, state: &RunState, events: &[Event]) -> Result<Vec<Frame>, StoreError>;
    async fn load_run(&self, run_id: &str) -> Result<Option<RunState>, StoreError>;
    /// Most recent first (creation time, then run id, both descending); `before` is the last
    /// run of the page before.
    async fn list_runs(
        &self,
        limit: usize,
        before: Option<&RunCursor>,
    ) -> Result<Vec<RunSummary>, StoreError>;
    /// Runs that have not finished, oldest first (creation time, then run id); `after` is the
    /// last run of the page before.
    async fn list_active(
        &self,
        limit: usize,
        after: Option<&RunCursor>,
    ) -> Result<Vec<ActiveRun>, StoreError>;
    /// Takes the run's lease for `owner` for `ttl_ms` (from the store's clock) when no one
    /// holds it, its holder let it lapse, or its holder is `replacing` (an owner the caller
    /// knows is dead); the new lease's token is the old one plus one. A lease still held,
    /// even by `owner` itself, is `Held`.
    async fn acquire_lease(
        &self,
        run_id: &str,
        owner: &str,
        ttl_ms: u64,
        replacing: Option<&str>,
    ) -> Result<Claim, StoreError>;
    /// Extends a lease still held; `LeaseLost` when another owner has taken it.
    async fn renew_lease(&self, lease: &Lease, ttl_ms: u64) -> Result<Lease, StoreError>;
    /// Lets the lease lapse now, if it is still this one; otherwise does nothing.
    async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError>;
    /// Writes the result of (run, step, attempt) once; returns whichever result is stored.
    async fn put_step_result(
        &self,
        run_id: &str,
        result: &StepResult,
    ) -> Result<StepResult, StoreError>;
    async fn get_step_result(
        &self,
        run_id: &str,
        step_id: &str,
        attempt: u32,
    ) -> Result<Option<StepResult>, StoreError>;
    /// Every stored result of the run, in the order they were written.
    async fn step_results(&self, run_id: &str) -> Result<Vec<StepResult>, StoreError>;
    async fn put_report(&self, report: &RunReport) -> Result<(), StoreError>;
    async fn get_report(&self, run_id: &str) -> Result<Option<RunReport>, StoreError>;

    /// Opens an attempt of a step: the result already stored for it, or else appends
    /// `handoff` and returns the run's stored results (the step's inputs come from them).
    /// `fence`: the lease token of the writer (see [`Lease`]).
    async fn open_step(
        &self,
        run_id: &str,
        step_id: &str,
        attempt: u32,
        handoff: &[Event],
        fence: Option<u64>,
    ) -> Result<OpenedStep, StoreError> {
        if let Some(stored) = self.get_step_result(run_id, step_id, attempt).await? {
            return Ok(OpenedStep::Stored(stored));
        }
        self.append_fenced(run_id, handoff, fence).await?;
        Ok(OpenedStep::Open {
            results: self.step_results(run_id).await?,
        })
    }

    /// Commits a run's last transition together with its report, built from the stored
    /// results. The report is written first, so whoever sees the final status or `complete`
    /// can read it; a run that already finished with another status is a conflict, and its
    /// report stays as it was.
    async fn commit_finished(
        &self,
        state: &RunState,
        events: &[Event],
        now_ms: u64,
    ) -> Result<Vec<Frame>, StoreError>;

    /// Writes a transition with the step result it applied and the attempts it dispatches:
    /// the result (first writer wins), the state and events (with the report when the run
    /// ends), then each opening as [`RunStore::open_step`] does. A store that can, does it in
    /// one write (SQLite: one transaction), which takes three writes off every hand-off
    /// between steps; this default composes the other calls.
    async fn commit_transition(&self, w: TransitionWrite<'_>) -> Result<Committed, StoreError> {
        if let Some(result) = w.result {
            let stored = self.put_step_result(&w.state.run_id, result).await?;
            if stored != *result {
                return Ok(Committed::ResultTaken(stored));
            }
        }
        let frames = if w.state.status.is_terminal() {
            self.commit_finished(w.state, w.events, w.now_ms).await?
        } else {
            self.commit(w.state, w.events).await?
        };
        let mut opened = Vec::with_capacity(w.opens.len());
        for o in w.opens {
            opened.push(
                self.open_step(
                    &w.state.run_id,
                    &o.step_id,
                    o.attempt,
                    &o.handoff,
                    w.state.lease_token,
                )
                .await?,
            );
        }
        Ok(Committed::Written { frames, opened })
    }
}

/// The per-run event log: gap-free seqs from 1.
#[async_trait]
pub trait EventLog: Send + Sync {
    /// Appends for a writer that holds no lease on the run.
    async fn append(&self, run_id: &str, events: &[Event]) -> Result<Vec<Frame>, StoreError> {
        self.append_fenced(run_id, events, None).await
    }
    /// Appends, refused with `LeaseLost` when `fence` is not the run's current lease token.
    async fn append_fenced(
        &self,
        run_id: &str,
        events: &[Event],
        fence: Option<u64>,
    ) -> Result<Vec<Frame>, StoreError>;
    async fn read_after(
        &self,
        run_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Frame>, StoreError>;
    /// The frames after `after` as the wire carries them. A store that keeps each event's JSON
    /// returns it as stored instead of decoding it here to encode it again.
    async fn read_wire_after(
        &self,
        run_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<WireFrame>, StoreError> {
        let frames = self.read_after(run_id, after, limit).await?;
        Ok(frames.iter().map(WireFrame::of).collect())
    }
    /// Returns once the run has a frame after `after`, or when `timeout` passes. A store that
    /// cannot notify polls.
    async fn wait_beyond(
        &self,
        run_id: &str,
        after: u64,
        timeout: Duration,
    ) -> Result<(), StoreError>;
}

/// Waits at most `timeout` on a store, for callers that must not hang forever.
pub fn clamp_wait(timeout: Duration) -> Duration {
    timeout.min(Duration::from_secs(60))
}
