#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the assertion in a test

//! Hand-offs between steps as the local driver writes them: a step's result, its last
//! streamed text, the transition it causes and the next step's opening in one write; and a
//! result that another writer stored first for the same attempt wins.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use orchestrator_agents::{Planner, default_specialists};
use orchestrator_core::engine::RunState;
use orchestrator_core::event::{Event, EventKind, Frame};
use orchestrator_core::fakes::ScriptedModel;
use orchestrator_core::ports::{
    ActiveRun, CallLog, Claim, Committed, Created, EventLog, Lease, OpenedStep, RecordedCall,
    RunCursor, RunStore, StoreError, SystemClock, TransitionWrite,
};
use orchestrator_core::types::{RunReport, RunRequest, RunStatus, RunSummary, StepResult};
use orchestrator_runner::{Runner, RunnerConfig, Started};
use orchestrator_store::SqliteStore;
use serde_json::json;

/// The planner's reply, then strategy, the draft and QA's verdict (finalize uses no model).
fn script() -> Vec<Result<String, orchestrator_core::ports::ModelError>> {
    vec![
        Ok(json!({"add": [
            {"id": "s1", "capabilityId": "strategy", "label": "Research the audience"},
            {"id": "s2", "capabilityId": "generation", "label": "Write the draft", "dependsOn": ["s1"]},
            {"id": "s3", "capabilityId": "qa", "label": "Review the draft", "dependsOn": ["s2"]},
        ]})
        .to_string()),
        Ok(r#"{"audience": "developers", "angle": "sync that never loses a file", "platform": "linkedin"}"#.to_owned()),
        Ok("Acme Sync keeps every file where you left it. Try it today.".to_owned()),
        Ok(r#"{"score": 0.9, "pass": true, "issues": [], "criteria": []}"#.to_owned()),
    ]
}

/// SQLite behind a wrapper that records which writes the driver asked for and, once, stores
/// another writer's result for an attempt just before the driver's own transition for it.
struct Recording {
    inner: SqliteStore,
    calls: Mutex<Vec<&'static str>>,
    race: Mutex<Option<StepResult>>,
}

impl Recording {
    fn new(race: Option<StepResult>) -> Self {
        Self {
            inner: SqliteStore::open_in_memory().unwrap(),
            calls: Mutex::new(Vec::new()),
            race: Mutex::new(race),
        }
    }

    fn saw(&self, call: &'static str) {
        self.calls.lock().unwrap().push(call);
    }

    fn calls(&self, call: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| **c == call)
            .count()
    }
}

#[async_trait]
impl RunStore for Recording {
    async fn create_run(&self, state: &RunState, events: &[Event]) -> Result<Created, StoreError> {
        self.saw("create_run");
        self.inner.create_run(state, events).await
    }
    async fn commit(&self, state: &RunState, events: &[Event]) -> Result<Vec<Frame>, StoreError> {
        self.saw("commit");
        self.inner.commit(state, events).await
    }
    async fn load_run(&self, run_id: &str) -> Result<Option<RunState>, StoreError> {
        self.inner.load_run(run_id).await
    }
    async fn list_runs(
        &self,
        limit: usize,
        before: Option<&RunCursor>,
    ) -> Result<Vec<RunSummary>, StoreError> {
        self.inner.list_runs(limit, before).await
    }
    async fn list_active(
        &self,
        limit: usize,
        after: Option<&RunCursor>,
    ) -> Result<Vec<ActiveRun>, StoreError> {
        self.inner.list_active(limit, after).await
    }
    async fn acquire_lease(
        &self,
        run_id: &str,
        owner: &str,
        ttl_ms: u64,
        replacing: Option<&str>,
    ) -> Result<Claim, StoreError> {
        self.inner
            .acquire_lease(run_id, owner, ttl_ms, replacing)
            .await
    }
    async fn renew_lease(&self, lease: &Lease, ttl_ms: u64) -> Result<Lease, StoreError> {
        self.inner.renew_lease(lease, ttl_ms).await
    }
    async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        self.inner.release_lease(lease).await
    }
    async fn put_step_result(
        &self,
        run_id: &str,
        result: &StepResult,
    ) -> Result<StepResult, StoreError> {
        self.saw("put_step_result");
        self.inner.put_step_result(run_id, result).await
    }
    async fn get_step_result(
        &self,
        run_id: &str,
        step_id: &str,
        attempt: u32,
    ) -> Result<Option<StepResult>, StoreError> {
        self.inner.get_step_result(run_id, step_id, attempt).await
    }
    async fn step_results(&self, run_id: &str) -> Result<Vec<StepResult>, StoreError> {
        self.inner.step_results(run_id).await
    }
    async fn put_report(&self, report: &RunReport) -> Result<(), StoreError> {
        self.saw("put_report");
        self.inner.put_report(report).await
    }
    async fn get_report(&self, run_id: &str) -> Result<Option<RunReport>, StoreError> {
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
        self.saw("open_step");
        self.inner
            .open_step(run_id, step_id, attempt, handoff, fence)
            .await
    }
    async fn commit_finished(
        &self,
        state: &RunState,
        events: &[Event],
        now_ms: u64,
    ) -> Result<Vec<Frame>, StoreError> {
        self.saw("commit_finished");
        self.inner.commit_finished(state, events, now_ms).await
    }
    async fn commit_transition(&self, w: TransitionWrite<'_>) -> Result<Committed, StoreError> {
        self.saw("commit_transition");
        let other = {
            let mut race = self.race.lock().unwrap();
            let due = matches!((&*race, w.result), (Some(o), Some(r)) if o.step_id == r.step_id && o.attempt == r.attempt);
            if due { race.take() } else { None }
        };
        if let Some(other) = other {
            self.inner
                .put_step_result(&w.state.run_id, &other)
                .await
                .unwrap();
        }
        self.inner.commit_transition(w).await
    }
}

#[async_trait]
impl CallLog for Recording {
    async fn record_call(&self, run_id: &str, call: &RecordedCall) -> Result<(), StoreError> {
        self.saw("record_call");
        self.inner.record_call(run_id, call).await
    }
    async fn calls(&self, run_id: &str) -> Result<Vec<RecordedCall>, StoreError> {
        self.inner.calls(run_id).await
    }
}

#[async_trait]
impl EventLog for Recording {
    async fn append_fenced(
        &self,
        run_id: &str,
        events: &[Event],
        fence: Option<u64>,
    ) -> Result<Vec<Frame>, StoreError> {
        self.saw("append");
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

async fn run(store: Arc<Recording>) -> (String, RunStatus) {
    let model = Arc::new(ScriptedModel::new(script()));
    let runner = Runner::new(
        store.clone(),
        Planner::new(model.clone()),
        default_specialists(model),
        Arc::new(SystemClock),
        RunnerConfig::default(),
    );
    let request = RunRequest::new("Write a launch post for Acme Sync");
    let Started::New(launch) = runner.start(request, None).await.unwrap() else {
        panic!("a new run");
    };
    let run_id = launch.state.run_id.clone();
    let status = runner.drive(*launch).await.unwrap();
    (run_id, status)
}

async fn frames(store: &Recording, run_id: &str) -> Vec<Frame> {
    store.read_after(run_id, 0, 10_000).await.unwrap()
}

#[tokio::test]
async fn each_hand_off_between_steps_is_one_write() {
    // GIVEN a runner on SQLite with a scripted team
    let store = Arc::new(Recording::new(None));

    // WHEN a run goes plan -> strategy -> draft -> QA -> finalize
    let (run_id, status) = run(store.clone()).await;

    // THEN it completes with every result in its report, and no result, opening or report was
    // written on its own: each went with a transition
    assert_eq!(status, RunStatus::Completed);
    let report = store.get_report(&run_id).await.unwrap().unwrap();
    let steps: Vec<&str> = report.steps.iter().map(|r| r.step_id.as_str()).collect();
    assert_eq!(steps.len(), 4, "{steps:?}");
    for call in ["put_step_result", "open_step", "put_report", "commit"] {
        assert_eq!(store.calls(call), 0, "{call} was called on its own");
    }
    assert!(store.calls("commit_transition") >= 5);

    // AND the log is gap-free, each step's `occurred` handoff follows its `requested` one, and
    // the draft's text comes before the result's metrics
    let frames = frames(&store, &run_id).await;
    let seqs: Vec<u64> = frames.iter().map(|f| f.seq).collect();
    assert_eq!(seqs, (1..=frames.len() as u64).collect::<Vec<_>>());
    let names: Vec<&str> = frames.iter().map(|f| f.event.kind.name()).collect();
    let handoffs: Vec<String> = frames
        .iter()
        .filter_map(|f| match &f.event.kind {
            EventKind::Handoff { message, data } => Some(format!("{message:?} {}", data.step_id)),
            _ => None,
        })
        .collect();
    for pair in handoffs.chunks(2) {
        assert!(
            pair[0].starts_with("Requested") && pair[1].starts_with("Occurred"),
            "{handoffs:?}"
        );
    }
    let last_delta = names.iter().rposition(|n| *n == "delta").unwrap();
    assert!(names[last_delta..].contains(&"metrics"), "{names:?}");
    assert_eq!(names.last(), Some(&"complete"));
}

#[tokio::test]
async fn a_result_another_writer_stored_first_wins() {
    // GIVEN a store where another writer stores its own draft for s2's first attempt just
    // before the driver writes the transition for its draft
    let theirs = StepResult {
        step_id: "s2".into(),
        attempt: 1,
        output: json!({"text": "The other writer's draft.", "platform": "linkedin"}),
        error: None,
        retryable: false,
        metrics: orchestrator_core::types::StepMetrics {
            duration_ms: 1,
            attempt: 1,
            capability_id: "generation".into(),
            input_tokens: 1,
            output_tokens: 1,
        },
    };
    let store = Arc::new(Recording::new(Some(theirs.clone())));

    // WHEN the run goes on
    let (run_id, status) = run(store.clone()).await;

    // THEN it completes on the stored draft: the report holds theirs, once, and QA reviewed it
    assert_eq!(status, RunStatus::Completed);
    let report = store.get_report(&run_id).await.unwrap().unwrap();
    let drafts: Vec<&StepResult> = report.steps.iter().filter(|r| r.step_id == "s2").collect();
    assert_eq!(drafts, vec![&theirs]);
    // AND the log stays gap-free
    let frames = frames(&store, &run_id).await;
    let seqs: Vec<u64> = frames.iter().map(|f| f.seq).collect();
    assert_eq!(seqs, (1..=frames.len() as u64).collect::<Vec<_>>());
}
