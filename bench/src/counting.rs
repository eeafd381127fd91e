//! A store wrapper that counts what a run asks of its store and times the first streamed text.
//! It forwards every call unchanged; the counters feed the cost model and the latency figures.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use orchestrator_core::engine::RunState;
use orchestrator_core::event::{Event, EventKind, Frame, HandoffStage};
use orchestrator_core::ports::RecordedCall;
use orchestrator_core::ports::{
    ActiveRun, CallLog, Claim, Committed, Created, EventLog, Lease, OpenedStep, RunCursor,
    RunStore, StoreError, TransitionWrite,
};
use orchestrator_core::types::{RunReport, RunSummary, StepResult};
use orchestrator_runner::Store;
use serde::{Deserialize, Serialize};

/// What the runs asked of the store.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoreCounters {
    pub create_run: u64,
    /// Engine transitions that were persisted (state + events in one write).
    pub commit: u64,
    /// Appends outside a transition (handoff `occurred`, delta batches).
    pub append: u64,
    pub put_step_result: u64,
    pub put_report: u64,
    /// Steps opened (stored result looked up, handoff appended, inputs read: one write).
    #[serde(default)]
    pub open_step: u64,
    /// Transitions written with the step result they applied and the steps they opened (one
    /// write each where the store can; not counted in `commit`, `put_step_result` or
    /// `open_step`).
    #[serde(default)]
    pub commit_transition: u64,
    /// Writes that carried events: each is one event batch in one write transaction.
    #[serde(default)]
    pub event_batches: u64,
    pub reads: u64,
    /// Events written, by type.
    pub events: BTreeMap<String, u64>,
    /// Bytes of event JSON written (counted only by a detailed store).
    pub event_bytes: u64,
    /// Specialist invocations: handoffs that occurred.
    pub handoffs_occurred: u64,
    /// Writes that dispatched steps (carried at least one handoff `requested`).
    pub dispatch_writes: u64,
    /// Lease writes: takes (a conditional write each), renewals and releases.
    #[serde(default)]
    pub lease_writes: u64,
    /// Model calls recorded (one write each), and their JSON's bytes.
    #[serde(default)]
    pub call_records: u64,
    #[serde(default)]
    pub call_bytes: u64,
}

#[derive(Default)]
struct Inner {
    counters: StoreCounters,
    /// When a generation step's specialist picked it up, per (run, step).
    gen_started: HashMap<(String, String), Instant>,
    first_delta: Vec<Duration>,
}

pub struct CountingStore {
    inner: Arc<dyn Store>,
    state: Mutex<Inner>,
    detailed: bool,
}

impl CountingStore {
    /// A `detailed` store also encodes every event to count its bytes (costs CPU).
    pub fn new(inner: Arc<dyn Store>, detailed: bool) -> Self {
        Self {
            inner,
            state: Mutex::new(Inner::default()),
            detailed,
        }
    }

    pub fn counters(&self) -> StoreCounters {
        self.lock().counters.clone()
    }

    /// From a generation step's handoff `occurred` to its first delta event, each step.
    pub fn first_delta_latencies(&self) -> Vec<Duration> {
        self.lock().first_delta.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn saw(&self, events: &[Event]) {
        let now = Instant::now();
        let mut st = self.lock();
        if !events.is_empty() {
            st.counters.event_batches += 1;
        }
        if events.iter().any(|e| {
            matches!(&e.kind, EventKind::Handoff { message, .. } if *message == HandoffStage::Requested)
        }) {
            st.counters.dispatch_writes += 1;
        }
        for e in events {
            *st.counters
                .events
                .entry(e.kind.name().to_owned())
                .or_default() += 1;
            if self.detailed {
                st.counters.event_bytes += serde_json::to_vec(e).map_or(0, |v| v.len() as u64);
            }
            if matches!(&e.kind, EventKind::Handoff { message, .. } if *message == HandoffStage::Occurred)
            {
                st.counters.handoffs_occurred += 1;
            }
            match &e.kind {
                EventKind::Handoff { message, data }
                    if *message == HandoffStage::Occurred && data.capability_id == "generation" =>
                {
                    st.gen_started
                        .insert((e.run_id.clone(), data.step_id.clone()), now);
                }
                EventKind::Delta { data, .. } => {
                    if let Some(t) = st
                        .gen_started
                        .remove(&(e.run_id.clone(), data.step_id.clone()))
                    {
                        st.first_delta.push(now - t);
                    }
                }
                _ => {}
            }
        }
    }

    fn count(&self, f: impl FnOnce(&mut StoreCounters)) {
        f(&mut self.lock().counters);
    }
}

#[async_trait]
impl CallLog for CountingStore {
    async fn record_call(&self, run_id: &str, call: &RecordedCall) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(call).map_or(0, |v| v.len() as u64);
        self.count(|c| {
            c.call_records += 1;
            c.call_bytes += bytes;
        });
        self.inner.record_call(run_id, call).await
    }
    async fn calls(&self, run_id: &str) -> Result<Vec<RecordedCall>, StoreError> {
        self.count(|c| c.reads += 1);
        self.inner.calls(run_id).await
    }
}

#[async_trait]
impl RunStore for CountingStore {
    async fn create_run(&self, state: &RunState, events: &[Event]) -> Result<Created, StoreError> {
        self.count(|c| c.create_run += 1);
        self.saw(events);
        self.inner.create_run(state, events).await
    }
    async fn commit(&self, state: &RunState, events: &[Event]) -> Result<Vec<Frame>, StoreError> {
        self.count(|c| c.commit += 1);
        self.saw(events);
        self.inner.commit(state, events).await
    }
    async fn load_run(&self, run_id: &str) -> Result<Option<RunState>, StoreError> {
        self.count(|c| c.reads += 1);
        self.inner.load_run(run_id).await
    }
    async fn list_runs(
        &self,
        limit: usize,
        before: Option<&RunCursor>,
    ) -> Result<Vec<RunSummary>, StoreError> {
        self.count(|c| c.reads += 1);
        self.inner.list_runs(limit, before).await
    }
    async fn list_active(
        &self,
        limit: usize,
        after: Option<&RunCursor>,
    ) -> Result<Vec<ActiveRun>, StoreError> {
        self.count(|c| c.reads += 1);
        self.inner.list_active(limit, after).await
    }
    async fn acquire_lease(
        &self,
        run_id: &str,
        owner: &str,
        ttl_ms: u64,
        replacing: Option<&str>,
    ) -> Result<Claim, StoreError> {
        self.count(|c| c.lease_writes += 1);
        self.inner
            .acquire_lease(run_id, owner, ttl_ms, replacing)
            .await
    }
    async fn renew_lease(&self, lease: &Lease, ttl_ms: u64) -> Result<Lease, StoreError> {
        self.count(|c| c.lease_writes += 1);
        self.inner.renew_lease(lease, ttl_ms).await
    }
    async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        self.count(|c| c.lease_writes += 1);
        self.inner.release_lease(lease).await
    }
    async fn put_step_result(
        &self,
        run_id: &str,
        result: &StepResult,
    ) -> Result<StepResult, StoreError> {
        self.count(|c| c.put_step_result += 1);
        self.inner.put_step_result(run_id, result).await
    }
    async fn get_step_result(
        &self,
        run_id: &str,
        step_id: &str,
        attempt: u32,
    ) -> Result<Option<StepResult>, StoreError> {
        self.count(|c| c.reads += 1);
        self.inner.get_step_result(run_id, step_id, attempt).await
    }
    async fn step_results(&self, run_id: &str) -> Result<Vec<StepResult>, StoreError> {
        self.count(|c| c.reads += 1);
        self.inner.step_results(run_id).await
    }
    async fn put_report(&self, report: &RunReport) -> Result<(), StoreError> {
        self.count(|c| c.put_report += 1);
        self.inner.put_report(report).await
    }
    async fn get_report(&self, run_id: &str) -> Result<Option<RunReport>, StoreError> {
        self.count(|c| c.reads += 1);
        self.inner.get_report(run_id).await
    }
    async fn open_step(
        &self,
        run_id: &str,
        step_id: &str,
        attempt: u32,
        handoff: &[Event],
        fence: Option<u64>,
    ) -> Result<OpenedStep, StoreError> {
        self.count(|c| c.open_step += 1);
        let opened = self
            .inner
            .open_step(run_id, step_id, attempt, handoff, fence)
            .await?;
        // Only an opened step appended its handoff.
        if matches!(opened, OpenedStep::Open { .. }) {
            self.saw(handoff);
        }
        Ok(opened)
    }
    async fn commit_transition(&self, w: TransitionWrite<'_>) -> Result<Committed, StoreError> {
        self.count(|c| c.commit_transition += 1);
        let committed = self.inner.commit_transition(w).await?;
        if let Committed::Written { opened, .. } = &committed {
            // One batch: the transition's events, then the handoffs of the steps it opened.
            let mut written = w.events.to_vec();
            for (opening, opened) in w.opens.iter().zip(opened) {
                if matches!(opened, OpenedStep::Open { .. }) {
                    written.extend(opening.handoff.iter().cloned());
                }
            }
            self.saw(&written);
        }
        Ok(committed)
    }
    /// A transition like `commit`, with the report in the same write.
    async fn commit_finished(
        &self,
        state: &RunState,
        events: &[Event],
        now_ms: u64,
    ) -> Result<Vec<Frame>, StoreError> {
        self.count(|c| {
            c.commit += 1;
            c.put_report += 1;
        });
        self.saw(events);
        self.inner.commit_finished(state, events, now_ms).await
    }
}

#[async_trait]
impl EventLog for CountingStore {
    async fn append_fenced(
        &self,
        run_id: &str,
        events: &[Event],
        fence: Option<u64>,
    ) -> Result<Vec<Frame>, StoreError> {
        self.count(|c| c.append += 1);
        self.saw(events);
        self.inner.append_fenced(run_id, events, fence).await
    }
    async fn read_after(
        &self,
        run_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Frame>, StoreError> {
        self.inner.read_after(run_id, after, limit).await
    }
    async fn wait_beyond(
        &self,
        run_id: &str,
        after: u64,
        timeout: Duration,
    ) -> Result<(), StoreError> {
        self.inner.wait_beyond(run_id, after, timeout).await
    }
}
