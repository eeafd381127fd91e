#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the assertion in a test

//! Hand-offs between steps as the local driver writes them: a step's result, its last
//! streamed text, the transition it causes and the next step's opening in one write; and a
//! result that another writer stored first for the same attempt wins.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use orchestrator_agents::{Planner, default_specialists};
use orchestrator_core::engine::RunState;
use orchestrator_core::event::{Event, EventKind, Frame};
use orchestrator_core::fakes::ScriptedModel;
use orchestrator_core::ports::{
    ActiveRun, CallLog, Claim, Committed, Created, EventLog, Lease, Model, ModelError, ModelInfo,
    ModelRequest, ModelResponse, OpenedStep, RecordedCall, RunCursor, RunStore, StoreError,
    StreamItem, SystemClock, TransitionWrite,
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
    /// Stored by "another writer" just before the transition that opens its attempt.
    answered_before_opening: Mutex<Option<StepResult>>,
    /// The results the driver's transitions carried, as (step, attempt).
    carried: Mutex<Vec<(String, u32)>>,
}

impl Recording {
    fn new(race: Option<StepResult>) -> Self {
        Self {
            inner: SqliteStore::open_in_memory().unwrap(),
            calls: Mutex::new(Vec::new()),
            race: Mutex::new(race),
            answered_before_opening: Mutex::new(None),
            carried: Mutex::new(Vec::new()),
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
        if let Some(r) = w.result {
            let carried = (r.step_id.clone(), r.attempt);
            self.carried.lock().unwrap().push(carried);
        }
        let answered = {
            let mut answered = self.answered_before_opening.lock().unwrap();
            let due = matches!(&*answered, Some(a) if w.opens.iter().any(|o| o.step_id == a.step_id && o.attempt == a.attempt));
            if due { answered.take() } else { None }
        };
        if let Some(answered) = answered {
            self.inner
                .put_step_result(&w.state.run_id, &answered)
                .await
                .unwrap();
        }
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

/// The scripted model, noting how many transitions the store had been asked to write when
/// each request was made.
struct Watching {
    inner: ScriptedModel,
    store: Arc<Recording>,
    commits_at_request: Mutex<Vec<usize>>,
}

impl Watching {
    fn note(&self) {
        let commits = self.store.calls("commit_transition");
        self.commits_at_request.lock().unwrap().push(commits);
    }
}

#[async_trait]
impl Model for Watching {
    fn info(&self) -> ModelInfo {
        self.inner.info()
    }
    async fn complete(&self, request: ModelRequest) -> Result<ModelResponse, ModelError> {
        self.note();
        self.inner.complete(request).await
    }
    fn stream(&self, request: ModelRequest) -> BoxStream<'_, Result<StreamItem, ModelError>> {
        self.note();
        self.inner.stream(request)
    }
}

async fn run(store: Arc<Recording>) -> (String, RunStatus) {
    run_watched(store).await.0
}

async fn run_watched(store: Arc<Recording>) -> ((String, RunStatus), Arc<Watching>) {
    run_watched_with(store, |_| {}).await
}

/// A run whose script `edit` changes first.
async fn run_watched_with(
    store: Arc<Recording>,
    edit: impl FnOnce(&mut Vec<Result<String, ModelError>>),
) -> ((String, RunStatus), Arc<Watching>) {
    let mut replies = script();
    edit(&mut replies);
    let model = Arc::new(Watching {
        inner: ScriptedModel::new(replies),
        store: store.clone(),
        commits_at_request: Mutex::new(Vec::new()),
    });
    let runner = Runner::new(
        store.clone(),
        Planner::new(model.clone()),
        default_specialists(model.clone()),
        Arc::new(SystemClock),
        RunnerConfig::default(),
    );
    let request = RunRequest::new("Write a launch post for Acme Sync");
    let Started::New(launch) = runner.start(request, None).await.unwrap() else {
        panic!("a new run");
    };
    let run_id = launch.state.run_id.clone();
    let status = runner.drive(*launch).await.unwrap();
    ((run_id, status), model)
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

    // WHEN the run goes on (QA, asked ahead about the driver's own draft, is asked again)
    let ((run_id, status), model) = run_watched_with(store.clone(), |script| {
        script.push(Ok(
            r#"{"score": 0.8, "pass": true, "issues": [], "criteria": []}"#.into(),
        ));
    })
    .await;

    // THEN it completes on the stored draft: the report holds theirs, once, and QA reviewed it
    assert_eq!(status, RunStatus::Completed);
    let report = store.get_report(&run_id).await.unwrap().unwrap();
    let drafts: Vec<&StepResult> = report.steps.iter().filter(|r| r.step_id == "s2").collect();
    assert_eq!(drafts, vec![&theirs]);
    let requests = model.inner.requests();
    let last = serde_json::to_string(&requests.last().unwrap().messages).unwrap();
    assert!(last.contains("The other writer's draft."), "{last}");
    // AND the log stays gap-free
    let frames = frames(&store, &run_id).await;
    let seqs: Vec<u64> = frames.iter().map(|f| f.seq).collect();
    assert_eq!(seqs, (1..=frames.len() as u64).collect::<Vec<_>>());
}

/// The step each event of a step's own (its text, its tools) belongs to, and each step's
/// `occurred` handoff, in log order.
fn step_of(frame: &Frame) -> Option<(&str, bool)> {
    match &frame.event.kind {
        EventKind::Handoff { message, data } => {
            let occurred = format!("{message:?}").starts_with("Occurred");
            occurred.then_some((data.step_id.as_str(), true))
        }
        EventKind::Delta { data, .. } => Some((data.step_id.as_str(), false)),
        _ => None,
    }
}

#[tokio::test]
async fn the_next_model_request_goes_out_before_the_hand_off_is_written() {
    // GIVEN a runner on SQLite whose model answers at once
    let store = Arc::new(Recording::new(None));

    // WHEN a run goes plan -> strategy -> draft -> QA -> finalize
    let ((run_id, status), model) = run_watched(store.clone()).await;
    assert_eq!(status, RunStatus::Completed);

    // THEN each step's request was made before the transition that opens it was written:
    // strategy's before the plan's, the draft's before strategy's hand-off, QA's before the
    // draft's (waiting for each would give [0, 1, 2, 3])
    let at = model.commits_at_request.lock().unwrap().clone();
    assert_eq!(at, vec![0, 0, 1, 2], "transitions written at each request");

    // AND each step was asked once, and nothing a step wrote precedes its opening: every
    // streamed text of a step follows that step's `occurred` handoff
    let frames = frames(&store, &run_id).await;
    let mut opened = Vec::new();
    for (step, is_opening) in frames.iter().filter_map(step_of) {
        if is_opening {
            opened.push(step);
        } else {
            assert!(
                opened.contains(&step),
                "{step}'s text came before its opening"
            );
        }
    }
    assert!(frames.iter().any(|f| f.event.kind.name() == "delta"));
}

#[tokio::test]
async fn a_step_started_ahead_whose_attempt_was_answered_meanwhile_is_called_off() {
    // GIVEN a store where another writer stores QA's verdict for s3's first attempt just
    // before the driver writes the hand-off that opens it (after QA was asked)
    let theirs = StepResult {
        step_id: "s3".into(),
        attempt: 1,
        output: json!({"score": 0.95, "pass": true, "issues": [], "criteria": []}),
        error: None,
        retryable: false,
        metrics: orchestrator_core::types::StepMetrics {
            duration_ms: 1,
            attempt: 1,
            capability_id: "qa".into(),
            input_tokens: 1,
            output_tokens: 1,
        },
    };
    let store = Arc::new(Recording::new(None));
    *store.answered_before_opening.lock().unwrap() = Some(theirs.clone());

    // WHEN the run goes on
    let ((run_id, status), model) = run_watched(store.clone()).await;

    // THEN QA was asked ahead, but its answer was dropped: the run completes on the stored
    // verdict, and no transition carried a QA result of the driver's own
    assert_eq!(status, RunStatus::Completed);
    assert_eq!(model.commits_at_request.lock().unwrap().len(), 4);
    let report = store.get_report(&run_id).await.unwrap().unwrap();
    let verdicts: Vec<&StepResult> = report.steps.iter().filter(|r| r.step_id == "s3").collect();
    assert_eq!(verdicts, vec![&theirs]);
    let carried = store.carried.lock().unwrap().clone();
    assert!(!carried.iter().any(|(step, _)| step == "s3"), "{carried:?}");
    // AND the log stays gap-free
    let frames = frames(&store, &run_id).await;
    let seqs: Vec<u64> = frames.iter().map(|f| f.seq).collect();
    assert_eq!(seqs, (1..=frames.len() as u64).collect::<Vec<_>>());
}
