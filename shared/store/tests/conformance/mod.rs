//! The behaviour every `RunStore + EventLog` adapter must show, written once and run against
//! each adapter (tests/sqlite.rs, tests/dynamodb.rs) with a fresh, empty store per check.
//!
//! Each check takes the store (or a way to open it) and panics on a violation.

// Helpers, not #[test] fns, so clippy's allow-unwrap-in-tests does not cover them: a panic is the assertion.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use orchestrator_core::engine::RunState;
use orchestrator_core::event::{Event, EventKind, Frame, StepRef, WireFrame};
use orchestrator_core::ports::{
    CallLog, CallReply, CallUnit, ChatMessage, Claim, Committed, Created, EventLog, Lease,
    ModelError, ModelInfo, ModelRequest, OpenedStep, Purpose, RecordedCall, RunCursor, RunStore,
    StepOpening, StoreError, TransitionWrite,
};
use orchestrator_core::types::{
    Plan, PlanStep, ReportSummary, RunReport, RunRequest, RunStatus, StepMetrics, StepResult,
    StepStatus, Usage,
};
use serde_json::json;

/// A new run's state, started at `started_at_ms`.
pub fn state(run_id: &str, started_at_ms: u64) -> RunState {
    RunState::new(
        run_id,
        format!("corr-{run_id}"),
        RunRequest::new(format!("objective of {run_id}")),
        started_at_ms,
    )
}

pub fn state_with_key(run_id: &str, key: &str) -> RunState {
    let mut request = RunRequest::new(format!("objective of {run_id}"));
    request.idempotency_key = Some(key.to_owned());
    RunState::new(run_id, format!("corr-{run_id}"), request, 1_000)
}

pub fn message(run_id: &str, text: &str) -> Event {
    Event {
        kind: EventKind::Message {
            message: text.to_owned(),
        },
        correlation_id: format!("corr-{run_id}"),
        run_id: run_id.to_owned(),
    }
}

pub fn messages(run_id: &str, texts: &[&str]) -> Vec<Event> {
    texts.iter().map(|t| message(run_id, t)).collect()
}

pub fn step_result(step_id: &str, attempt: u32, output: serde_json::Value) -> StepResult {
    StepResult {
        step_id: step_id.to_owned(),
        attempt,
        output,
        error: None,
        retryable: false,
        metrics: StepMetrics {
            duration_ms: 12,
            attempt,
            capability_id: "copy".to_owned(),
            input_tokens: 10,
            output_tokens: 20,
        },
    }
}

fn seqs(frames: &[Frame]) -> Vec<u64> {
    frames.iter().map(|f| f.seq).collect()
}

fn texts(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .map(|f| match &f.event.kind {
            EventKind::Message { message } => message.clone(),
            other => panic!("unexpected event {other:?}"),
        })
        .collect()
}

async fn create_new<S: RunStore>(s: &S, state: &RunState, events: &[Event]) -> Vec<Frame> {
    match s.create_run(state, events).await.expect("create_run") {
        Created::New { frames } => frames,
        Created::Existing { run_id } => panic!("expected a new run, got existing {run_id}"),
    }
}

pub async fn create_once<S: RunStore + EventLog>(s: &S) {
    // GIVEN a run created with an idempotency key and two events
    let first = state_with_key("run-a", "key-1");
    let frames = create_new(s, &first, &messages("run-a", &["hello", "world"])).await;
    // THEN the events are numbered from 1 and the state is stored
    assert_eq!(seqs(&frames), vec![1, 2]);
    assert_eq!(texts(&frames), vec!["hello", "world"]);
    assert_eq!(s.load_run("run-a").await.unwrap(), Some(first.clone()));

    // WHEN another run is created with the same key
    let second = state_with_key("run-b", "key-1");
    let created = s
        .create_run(&second, &messages("run-b", &["again"]))
        .await
        .unwrap();

    // THEN the first run is named and nothing of the second is written
    assert_eq!(
        created,
        Created::Existing {
            run_id: "run-a".to_owned()
        }
    );
    assert_eq!(s.load_run("run-b").await.unwrap(), None);
    assert!(s.read_after("run-b", 0, 100).await.unwrap().is_empty());
    assert_eq!(s.read_after("run-a", 0, 100).await.unwrap(), frames);
    assert_eq!(s.list_runs(10, None).await.unwrap().len(), 1);

    // AND a retry of the very same create also gets the existing run
    let again = s
        .create_run(&first, &messages("run-a", &["hello", "world"]))
        .await
        .unwrap();
    assert_eq!(
        again,
        Created::Existing {
            run_id: "run-a".to_owned()
        }
    );
    assert_eq!(s.read_after("run-a", 0, 100).await.unwrap().len(), 2);
}

pub async fn create_same_id_conflicts<S: RunStore + EventLog>(s: &S) {
    // GIVEN a run without an idempotency key
    let first = state("run-1", 1_000);
    create_new(s, &first, &messages("run-1", &["one"])).await;

    // WHEN a run with the same id is created again
    let mut other = state("run-1", 2_000);
    other.request.objective = "something else".to_owned();
    let err = s
        .create_run(&other, &messages("run-1", &["two"]))
        .await
        .unwrap_err();

    // THEN it conflicts and the first run is untouched
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(s.load_run("run-1").await.unwrap(), Some(first));
    assert_eq!(
        texts(&s.read_after("run-1", 0, 100).await.unwrap()),
        vec!["one"]
    );
}

pub async fn commit_appends_gap_free<S: RunStore + EventLog>(s: &S) {
    // GIVEN a run with two events
    let mut st = state("run-c", 1_000);
    create_new(s, &st, &messages("run-c", &["a", "b"])).await;

    // WHEN a transition with a plan and three events is committed
    st.plan = Plan {
        version: 1,
        steps: vec![PlanStep {
            id: "s1".to_owned(),
            capability_id: Some("copy".to_owned()),
            action: None,
            label: Some("Write".to_owned()),
            status: StepStatus::InProgress,
            depends_on: Vec::new(),
            note: None,
            acceptance_criteria: Vec::new(),
        }],
    };
    st.usage = Usage {
        input_tokens: 5,
        output_tokens: 7,
    };
    let frames = s
        .commit(&st, &messages("run-c", &["c", "d", "e"]))
        .await
        .unwrap();

    // THEN the events follow on without a gap and the state is stored
    assert_eq!(seqs(&frames), vec![3, 4, 5]);
    assert_eq!(s.load_run("run-c").await.unwrap(), Some(st.clone()));

    // WHEN a transition without events and then one more are committed
    st.status = RunStatus::Completed;
    st.finished_at_ms = Some(9_000);
    assert!(s.commit(&st, &[]).await.unwrap().is_empty());
    let frames = s.commit(&st, &messages("run-c", &["f"])).await.unwrap();

    // THEN the seqs still have no gap, and the log reads back whole, in order
    assert_eq!(seqs(&frames), vec![6]);
    let all = s.read_after("run-c", 0, 100).await.unwrap();
    assert_eq!(seqs(&all), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(texts(&all), vec!["a", "b", "c", "d", "e", "f"]);
    assert_eq!(s.load_run("run-c").await.unwrap(), Some(st));
    let listed = s.list_runs(10, None).await.unwrap();
    assert_eq!(listed[0].status, RunStatus::Completed);
}

/// `writers` tasks append concurrently through their own handles (clones of one store, or
/// stores opened on the same backing storage); `open` gives each writer its handle.
pub async fn concurrent_appends<S, F>(open: F)
where
    S: RunStore + EventLog + 'static,
    F: Fn() -> Arc<S>,
{
    const WRITERS: usize = 4;
    const BATCHES: usize = 25;

    // GIVEN a run with one event
    let first = open();
    create_new(
        &*first,
        &state("run-p", 1_000),
        &messages("run-p", &["start"]),
    )
    .await;

    // WHEN four writers each append 25 batches of one or two events at once
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let s = open();
        tasks.push(tokio::spawn(async move {
            let mut returned = Vec::new();
            for b in 0..BATCHES {
                let batch: Vec<Event> = (0..=(b % 2))
                    .map(|i| message("run-p", &format!("w{w}-b{b}-{i}")))
                    .collect();
                let frames = s.append("run-p", &batch).await.expect("append");
                assert_eq!(frames.len(), batch.len());
                // a batch's frames are consecutive
                for pair in frames.windows(2) {
                    assert_eq!(pair[1].seq, pair[0].seq + 1);
                }
                returned.extend(frames);
            }
            returned
        }));
    }
    let mut returned: Vec<Frame> = Vec::new();
    for t in tasks {
        returned.extend(t.await.unwrap());
    }

    // THEN the log holds seqs 1..=n with no gap and no duplicate
    let all = first.read_after("run-p", 0, 10_000).await.unwrap();
    let per_writer = BATCHES / 2 + BATCHES; // batches alternate one and two events
    let n = 1 + WRITERS * per_writer;
    assert_eq!(seqs(&all), (1..=n as u64).collect::<Vec<_>>());

    // AND every frame an append returned is the frame stored under its seq
    let by_seq: BTreeMap<u64, &Frame> = all.iter().map(|f| (f.seq, f)).collect();
    assert_eq!(returned.len(), n - 1);
    for f in &returned {
        assert_eq!(by_seq.get(&f.seq), Some(&f), "seq {}", f.seq);
    }

    // AND each writer's events are in the order it appended them
    for w in 0..WRITERS {
        let prefix = format!("w{w}-");
        let mine: Vec<String> = texts(&all)
            .into_iter()
            .filter(|t| t.starts_with(&prefix))
            .collect();
        let expected: Vec<String> = (0..BATCHES)
            .flat_map(|b| (0..=(b % 2)).map(move |i| format!("w{w}-b{b}-{i}")))
            .collect();
        assert_eq!(mine, expected);
    }
}

pub async fn read_after_pages<S: RunStore + EventLog>(s: &S) {
    // GIVEN a run with five events, and another run with its own
    create_new(
        s,
        &state("run-r", 1_000),
        &messages("run-r", &["1", "2", "3", "4", "5"]),
    )
    .await;
    create_new(s, &state("run-x", 1_000), &messages("run-x", &["x"])).await;

    // WHEN reading after a seq, with and without a limit
    // THEN only the frames after it come, in order, up to the limit
    assert_eq!(
        seqs(&s.read_after("run-r", 0, 100).await.unwrap()),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(
        seqs(&s.read_after("run-r", 2, 100).await.unwrap()),
        vec![3, 4, 5]
    );
    let page = s.read_after("run-r", 1, 2).await.unwrap();
    assert_eq!(seqs(&page), vec![2, 3]);
    assert_eq!(texts(&page), vec!["2", "3"]);
    assert!(s.read_after("run-r", 5, 100).await.unwrap().is_empty());
    assert!(s.read_after("run-r", 500, 100).await.unwrap().is_empty());
    assert!(s.read_after("run-r", 0, 0).await.unwrap().is_empty());
    assert_eq!(
        seqs(&s.read_after("run-r", 0, 1).await.unwrap()),
        vec![1],
        "limit 1"
    );

    // AND a frame reads back as it was appended (kind, correlation id, run id)
    let frame = &s.read_after("run-x", 0, 10).await.unwrap()[0];
    assert_eq!(frame.event, message("run-x", "x"));
}

pub async fn wait_beyond_wakes_on_append<S: RunStore + EventLog + 'static>(s: Arc<S>) {
    // GIVEN a run with one event and a reader waiting for more
    create_new(&*s, &state("run-w", 1_000), &messages("run-w", &["1"])).await;
    let waiter = {
        let s = Arc::clone(&s);
        tokio::spawn(async move {
            let started = Instant::now();
            s.wait_beyond("run-w", 1, Duration::from_secs(10))
                .await
                .expect("wait_beyond");
            started.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished(), "returned before anything came");

    // WHEN another event is appended
    s.append("run-w", &messages("run-w", &["2"])).await.unwrap();

    // THEN the reader wakes well before its timeout
    let waited = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter did not wake")
        .unwrap();
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");

    // AND waiting for a seq that is already there returns at once
    let started = Instant::now();
    s.wait_beyond("run-w", 0, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));

    // AND a commit's events wake a waiter too
    let waiter = {
        let s = Arc::clone(&s);
        tokio::spawn(async move { s.wait_beyond("run-w", 2, Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.commit(&state("run-w", 1_000), &messages("run-w", &["3"]))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter did not wake on commit")
        .unwrap()
        .unwrap();
}

pub async fn wait_beyond_times_out<S: RunStore + EventLog>(s: &S) {
    // GIVEN a run whose log ends at seq 1, and an append to another run
    create_new(s, &state("run-t", 1_000), &messages("run-t", &["1"])).await;
    create_new(s, &state("run-o", 1_000), &messages("run-o", &["1", "2"])).await;

    // WHEN waiting for more than is there, with a short timeout
    let started = Instant::now();
    s.wait_beyond("run-t", 1, Duration::from_millis(300))
        .await
        .unwrap();

    // THEN it returns after the timeout, not before and not much after
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(300), "waited {waited:?}");
    assert!(waited < Duration::from_secs(3), "waited {waited:?}");

    // AND for an unknown run it also just times out
    s.wait_beyond("nope", 0, Duration::from_millis(50))
        .await
        .unwrap();
}

/// `open` opens the same backing storage each time; the store from one call is dropped
/// before the next.
pub async fn resume_after_restart<S, F, Fut>(open: F)
where
    S: RunStore + EventLog,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = S>,
{
    // GIVEN a run with a committed transition, a step result and a report
    let mut st = state("run-z", 1_000);
    let report = RunReport {
        run_id: "run-z".to_owned(),
        status: RunStatus::Completed,
        steps: vec![step_result("s1", 1, json!({"text": "done"}))],
        summary: ReportSummary {
            steps: 1,
            failures: 0,
            duration_ms: 5,
            tokens: Usage::default(),
        },
        final_bundle: None,
        message: Some("bye".to_owned()),
        quality_gate: Default::default(),
    };
    {
        let s = open().await;
        create_new(&s, &st, &messages("run-z", &["a", "b"])).await;
        st.revisions = 1;
        st.status = RunStatus::Completed;
        s.commit(&st, &messages("run-z", &["c"])).await.unwrap();
        s.put_step_result("run-z", &step_result("s1", 1, json!({"text": "done"})))
            .await
            .unwrap();
        s.put_report(&report).await.unwrap();
        // WHEN the store goes away
    }

    // AND the storage is opened again
    let s = open().await;

    // THEN the state, the events, the results and the report are all there
    assert_eq!(s.load_run("run-z").await.unwrap(), Some(st.clone()));
    let all = s.read_after("run-z", 0, 100).await.unwrap();
    assert_eq!(seqs(&all), vec![1, 2, 3]);
    assert_eq!(texts(&all), vec!["a", "b", "c"]);
    assert_eq!(
        s.get_step_result("run-z", "s1", 1).await.unwrap(),
        Some(step_result("s1", 1, json!({"text": "done"})))
    );
    assert_eq!(s.get_report("run-z").await.unwrap(), Some(report));

    // AND appending goes on from the last seq
    let frames = s.commit(&st, &messages("run-z", &["d"])).await.unwrap();
    assert_eq!(seqs(&frames), vec![4]);
}

pub async fn large_output_round_trip<S: RunStore + EventLog>(s: &S) {
    // GIVEN a run and a step whose output is 1 MB of text (with some non-ASCII)
    create_new(s, &state("run-l", 1_000), &[]).await;
    let big: String = "abcdéfgh\n".repeat(1024 * 1024 / 10);
    assert!(big.len() >= 1_000_000);
    let result = step_result("s1", 1, json!({"content": big, "n": 1}));

    // WHEN it is stored and read back
    let stored = s.put_step_result("run-l", &result).await.unwrap();

    // THEN nothing is cut or changed
    assert_eq!(stored, result);
    assert_eq!(
        s.get_step_result("run-l", "s1", 1).await.unwrap(),
        Some(result.clone())
    );
    assert_eq!(s.step_results("run-l").await.unwrap(), vec![result]);

    // AND a 1 MB event round-trips as well
    let frames = s.append("run-l", &[message("run-l", &big)]).await.unwrap();
    assert_eq!(s.read_after("run-l", 0, 10).await.unwrap(), frames);
}

pub async fn step_result_first_writer_wins<S: RunStore + EventLog>(s: &S) {
    // GIVEN a run and a stored result for (s1, attempt 1)
    create_new(s, &state("run-s", 1_000), &[]).await;
    let first = step_result("s1", 1, json!({"text": "first"}));
    assert_eq!(s.put_step_result("run-s", &first).await.unwrap(), first);

    // WHEN a retried invocation writes another result for the same (step, attempt)
    let second = step_result("s1", 1, json!({"text": "second"}));
    let got = s.put_step_result("run-s", &second).await.unwrap();

    // THEN it gets the first back, and the first stays stored
    assert_eq!(got, first);
    assert_eq!(
        s.get_step_result("run-s", "s1", 1).await.unwrap(),
        Some(first.clone())
    );

    // AND other attempts and steps are separate, listed in the order they were written
    let retry = step_result("s1", 2, json!({"text": "retry"}));
    let other = step_result("s0", 1, json!({"text": "other"}));
    s.put_step_result("run-s", &retry).await.unwrap();
    s.put_step_result("run-s", &other).await.unwrap();
    assert_eq!(
        s.step_results("run-s").await.unwrap(),
        vec![first, retry, other]
    );
    assert_eq!(s.get_step_result("run-s", "s1", 3).await.unwrap(), None);
}

pub async fn reports_upsert<S: RunStore + EventLog>(s: &S) {
    // GIVEN a run without a report
    create_new(s, &state("run-q", 1_000), &[]).await;
    assert_eq!(s.get_report("run-q").await.unwrap(), None);
    let mut report = RunReport {
        run_id: "run-q".to_owned(),
        status: RunStatus::Running,
        steps: Vec::new(),
        summary: ReportSummary {
            steps: 0,
            failures: 0,
            duration_ms: 0,
            tokens: Usage::default(),
        },
        final_bundle: None,
        message: None,
        quality_gate: Default::default(),
    };

    // WHEN a report is put, then replaced
    s.put_report(&report).await.unwrap();
    assert_eq!(s.get_report("run-q").await.unwrap(), Some(report.clone()));
    report.status = RunStatus::Completed;
    report.message = Some("done".to_owned());
    s.put_report(&report).await.unwrap();

    // THEN the latest one is stored
    assert_eq!(s.get_report("run-q").await.unwrap(), Some(report));
}

pub async fn unknown_run<S: RunStore + EventLog>(s: &S) {
    // GIVEN an empty store
    // WHEN reading a run that does not exist
    // THEN reads find nothing
    assert_eq!(s.load_run("ghost").await.unwrap(), None);
    assert_eq!(s.get_report("ghost").await.unwrap(), None);
    assert_eq!(s.get_step_result("ghost", "s1", 1).await.unwrap(), None);
    assert!(s.step_results("ghost").await.unwrap().is_empty());
    assert!(s.read_after("ghost", 0, 10).await.unwrap().is_empty());
    assert!(s.list_runs(10, None).await.unwrap().is_empty());

    // AND writes to it are NotFound, and leave nothing behind
    let nf = |r: Result<_, StoreError>| match r {
        Err(StoreError::NotFound(id)) => assert_eq!(id, "ghost"),
        Err(other) => panic!("expected NotFound, got {other:?}"),
        Ok(_) => panic!("expected NotFound, got Ok"),
    };
    nf(s.commit(&state("ghost", 1_000), &messages("ghost", &["x"]))
        .await
        .map(|_| ()));
    nf(s.append("ghost", &messages("ghost", &["x"]))
        .await
        .map(|_| ()));
    nf(s.put_step_result("ghost", &step_result("s1", 1, json!({})))
        .await
        .map(|_| ()));
    let report = RunReport {
        run_id: "ghost".to_owned(),
        status: RunStatus::Failed,
        steps: Vec::new(),
        summary: ReportSummary {
            steps: 0,
            failures: 0,
            duration_ms: 0,
            tokens: Usage::default(),
        },
        final_bundle: None,
        message: None,
        quality_gate: Default::default(),
    };
    nf(s.put_report(&report).await);
    assert!(s.read_after("ghost", 0, 10).await.unwrap().is_empty());
    assert_eq!(s.load_run("ghost").await.unwrap(), None);
}

pub async fn events_must_belong_to_the_run<S: RunStore + EventLog>(s: &S) {
    // GIVEN two runs
    create_new(s, &state("run-1", 1_000), &[]).await;
    create_new(s, &state("run-2", 1_000), &[]).await;

    // WHEN an event of run-2 is appended to run-1's log
    let err = s
        .append("run-1", &messages("run-2", &["stray"]))
        .await
        .unwrap_err();

    // THEN it is refused and nothing is written
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(s.read_after("run-1", 0, 10).await.unwrap().is_empty());
}

pub async fn list_runs_newest_first<S: RunStore + EventLog>(s: &S) {
    // GIVEN five runs created at 1000, 2000, ... 5000 ms, inserted out of order
    for (id, at) in [
        ("r3", 3_000),
        ("r1", 1_000),
        ("r5", 5_000),
        ("r2", 2_000),
        ("r4", 4_000),
    ] {
        create_new(s, &state(id, at), &[]).await;
    }
    let mut finished = state("r2", 2_000);
    finished.status = RunStatus::Failed;
    s.commit(&finished, &[]).await.unwrap();

    let ids = |rows: Vec<orchestrator_core::types::RunSummary>| -> Vec<String> {
        rows.into_iter().map(|r| r.run_id).collect()
    };

    // WHEN listing two at a time, paging by the last run of each page
    let page1 = s.list_runs(2, None).await.unwrap();
    let page2 = s
        .list_runs(2, Some(&RunCursor::after(&page1[1])))
        .await
        .unwrap();
    let page3 = s
        .list_runs(2, Some(&RunCursor::after(&page2[1])))
        .await
        .unwrap();

    // THEN the runs come newest first, each once
    assert_eq!(ids(page1.clone()), vec!["r5", "r4"]);
    assert_eq!(ids(page2.clone()), vec!["r3", "r2"]);
    assert_eq!(ids(page3), vec!["r1"]);

    // AND a row carries the run's mode, objective, status and creation time
    let r5 = &page1[0];
    assert_eq!(r5.objective, "objective of r5");
    assert_eq!(r5.mode, orchestrator_core::types::Mode::App);
    assert_eq!(r5.status, RunStatus::Running);
    assert_eq!(r5.created_at_ms, 5_000);
    assert_eq!(page2[1].status, RunStatus::Failed);

    // AND a limit of zero lists nothing
    assert!(s.list_runs(0, None).await.unwrap().is_empty());
}

pub async fn status_transition_refused<S: RunStore + EventLog>(s: &S) {
    // GIVEN a run that has completed, at plan version 2
    let mut st = state("run-f", 1_000);
    create_new(s, &st, &messages("run-f", &["start"])).await;
    st.plan = Plan {
        version: 2,
        steps: Vec::new(),
    };
    st.status = RunStatus::Completed;
    st.finished_at_ms = Some(2_000);
    s.commit(&st, &messages("run-f", &["complete"]))
        .await
        .unwrap();

    // WHEN a late writer commits it as running again, or with another final status
    let mut late = st.clone();
    late.status = RunStatus::Running;
    late.finished_at_ms = None;
    let back = s
        .commit(&late, &messages("run-f", &["late"]))
        .await
        .unwrap_err();
    late.status = RunStatus::Cancelled;
    let other = s.commit(&late, &[]).await.unwrap_err();

    // THEN both are refused, and neither the state nor the log changes
    assert!(matches!(back, StoreError::Conflict(_)), "{back:?}");
    assert!(matches!(other, StoreError::Conflict(_)), "{other:?}");
    assert_eq!(s.load_run("run-f").await.unwrap(), Some(st.clone()));
    assert_eq!(
        texts(&s.read_after("run-f", 0, 10).await.unwrap()),
        vec!["start", "complete"]
    );

    // AND a plan version cannot go back either
    let mut older = st.clone();
    older.plan.version = 1;
    let err = s.commit(&older, &[]).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

    // AND the finished run may still be committed with its own status (e.g. a final event)
    let frames = s.commit(&st, &messages("run-f", &["bye"])).await.unwrap();
    assert_eq!(seqs(&frames), vec![3]);
    assert_eq!(
        s.list_runs(10, None).await.unwrap()[0].status,
        RunStatus::Completed
    );
}

pub async fn open_step_once_per_attempt<S: RunStore + EventLog>(s: &S) {
    // GIVEN a run with a stored result for step s0
    create_new(s, &state("run-o", 1_000), &messages("run-o", &["start"])).await;
    let s0 = step_result("s0", 1, json!({"text": "brief"}));
    s.put_step_result("run-o", &s0).await.unwrap();

    // WHEN step s1's first attempt is opened
    let opened = s
        .open_step("run-o", "s1", 1, &messages("run-o", &["handoff s1"]), None)
        .await
        .unwrap();

    // THEN the handoff is in the log and the step gets the stored results as its inputs
    assert_eq!(
        opened,
        OpenedStep::Open {
            results: vec![s0.clone()]
        }
    );
    assert_eq!(
        texts(&s.read_after("run-o", 0, 10).await.unwrap()),
        vec!["start", "handoff s1"]
    );

    // AND once the attempt has a result, opening it again (a retried dispatch) answers that
    // result and appends nothing
    let s1 = step_result("s1", 1, json!({"text": "draft"}));
    s.put_step_result("run-o", &s1).await.unwrap();
    let again = s
        .open_step(
            "run-o",
            "s1",
            1,
            &messages("run-o", &["handoff again"]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(again, OpenedStep::Stored(s1));
    assert_eq!(s.read_after("run-o", 0, 10).await.unwrap().len(), 2);

    // AND an unknown run is NotFound, with nothing written
    let err = s
        .open_step("ghost", "s1", 1, &messages("ghost", &["handoff"]), None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert!(s.read_after("ghost", 0, 10).await.unwrap().is_empty());
}

pub async fn commit_finished_writes_the_report<S: RunStore + EventLog>(s: &S) {
    // GIVEN a running run with two stored results
    let mut st = state("run-r", 1_000);
    create_new(s, &st, &messages("run-r", &["start"])).await;
    let a = step_result("a", 1, json!({"text": "one"}));
    let b = step_result("b", 1, json!({"text": "two"}));
    s.put_step_result("run-r", &a).await.unwrap();
    s.put_step_result("run-r", &b).await.unwrap();

    // WHEN its last transition is committed
    st.status = RunStatus::Completed;
    st.finished_at_ms = Some(3_000);
    let frames = s
        .commit_finished(&st, &messages("run-r", &["complete"]), 3_000)
        .await
        .unwrap();

    // THEN the state, the final event and the report built from the results are all stored
    assert_eq!(seqs(&frames), vec![2]);
    assert_eq!(s.load_run("run-r").await.unwrap(), Some(st.clone()));
    let report = s.get_report("run-r").await.unwrap().unwrap();
    assert_eq!(report.status, RunStatus::Completed);
    assert_eq!(report.steps, vec![a, b]);
    assert_eq!(report.summary.steps, 2);
    assert_eq!(report.summary.duration_ms, 2_000);

    // AND a late writer cannot finish it again with another status: nothing changes
    let mut late = st.clone();
    late.status = RunStatus::Failed;
    let err = s
        .commit_finished(&late, &messages("run-r", &["late"]), 4_000)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(s.read_after("run-r", 0, 10).await.unwrap().len(), 2);
    assert_eq!(
        s.get_report("run-r").await.unwrap().unwrap().status,
        RunStatus::Completed
    );
}

fn opening(run_id: &str, step_id: &str, attempt: u32) -> StepOpening {
    StepOpening {
        step_id: step_id.to_owned(),
        attempt,
        handoff: messages(run_id, &[&format!("handoff {step_id}")]),
    }
}

pub async fn commit_transition_writes_it_all<S: RunStore + EventLog>(s: &S) {
    // GIVEN a running run whose step s0 has a stored result, and s1's attempt 1 one too
    let mut st = state("run-t", 1_000);
    create_new(s, &st, &messages("run-t", &["start"])).await;
    let s0 = step_result("s0", 1, json!({"text": "brief"}));
    s.put_step_result("run-t", &s0).await.unwrap();
    let s1_stored = step_result("s1", 1, json!({"text": "earlier"}));
    s.put_step_result("run-t", &s1_stored).await.unwrap();

    // WHEN a transition is written with the result of step a, opening s1 (taken) and s2
    let a = step_result("a", 1, json!({"text": "draft"}));
    st.revisions = 1;
    let committed = s
        .commit_transition(TransitionWrite {
            state: &st,
            events: &messages("run-t", &["last text", "metrics"]),
            result: Some(&a),
            opens: &[opening("run-t", "s1", 1), opening("run-t", "s2", 1)],
            now_ms: 2_000,
        })
        .await
        .unwrap();

    // THEN the result, the state and the events are stored, then s2's handoff; s1 answers
    // its stored result and appends nothing; s2's inputs are every stored result, a included
    let Committed::Written { frames, opened } = committed else {
        panic!("expected the transition written, got {committed:?}");
    };
    assert_eq!(seqs(&frames), vec![2, 3]);
    assert_eq!(
        opened,
        vec![
            OpenedStep::Stored(s1_stored.clone()),
            OpenedStep::Open {
                results: vec![s0.clone(), s1_stored.clone(), a.clone()]
            },
        ]
    );
    assert_eq!(
        texts(&s.read_after("run-t", 0, 10).await.unwrap()),
        vec!["start", "last text", "metrics", "handoff s2"]
    );
    assert_eq!(s.load_run("run-t").await.unwrap(), Some(st.clone()));
    assert_eq!(s.get_step_result("run-t", "a", 1).await.unwrap(), Some(a));

    // AND a last transition writes the report from the results, its own included
    let fin = step_result("f", 1, json!({"text": "final"}));
    st.status = RunStatus::Completed;
    st.finished_at_ms = Some(3_000);
    s.commit_transition(TransitionWrite {
        state: &st,
        events: &messages("run-t", &["complete"]),
        result: Some(&fin),
        opens: &[],
        now_ms: 3_000,
    })
    .await
    .unwrap();
    let report = s.get_report("run-t").await.unwrap().unwrap();
    assert_eq!(report.status, RunStatus::Completed);
    assert_eq!(report.steps.len(), 4);
    assert_eq!(report.steps.last(), Some(&fin));
}

pub async fn commit_transition_refuses_a_taken_result<S: RunStore + EventLog>(s: &S) {
    // GIVEN a run whose step a attempt 1 already has a result (an earlier writer's)
    let st = state("run-k", 1_000);
    create_new(s, &st, &messages("run-k", &["start"])).await;
    let earlier = step_result("a", 1, json!({"text": "first"}));
    s.put_step_result("run-k", &earlier).await.unwrap();

    // WHEN a transition comes with another result for that attempt
    let mut next = st.clone();
    next.revisions = 3;
    let committed = s
        .commit_transition(TransitionWrite {
            state: &next,
            events: &messages("run-k", &["ours"]),
            result: Some(&step_result("a", 1, json!({"text": "second"}))),
            opens: &[opening("run-k", "b", 1)],
            now_ms: 2_000,
        })
        .await
        .unwrap();

    // THEN it answers the stored result and writes nothing: no state, no event, no opening
    assert_eq!(committed, Committed::ResultTaken(earlier.clone()));
    assert_eq!(s.load_run("run-k").await.unwrap(), Some(st));
    assert_eq!(
        texts(&s.read_after("run-k", 0, 10).await.unwrap()),
        vec!["start"]
    );
    assert_eq!(s.step_results("run-k").await.unwrap(), vec![earlier]);

    // AND an unknown run is NotFound, with nothing written
    let ghost = state("ghost", 1_000);
    let err = s
        .commit_transition(TransitionWrite {
            state: &ghost,
            events: &messages("ghost", &["x"]),
            result: Some(&step_result("a", 1, json!({}))),
            opens: &[],
            now_ms: 2_000,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert!(s.get_step_result("ghost", "a", 1).await.unwrap().is_none());
}

/// Every page of `list_runs`, `limit` at a time.
async fn list_all<S: RunStore + EventLog>(s: &S, limit: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<RunCursor> = None;
    loop {
        let page = s.list_runs(limit, cursor.as_ref()).await.unwrap();
        ids.extend(page.iter().map(|r| r.run_id.clone()));
        match page.last() {
            Some(last) if page.len() == limit => cursor = Some(RunCursor::after(last)),
            _ => return ids,
        }
    }
}

/// Every page of `list_active`, `limit` at a time.
async fn active_all<S: RunStore + EventLog>(s: &S, limit: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<RunCursor> = None;
    loop {
        let page = s.list_active(limit, cursor.as_ref()).await.unwrap();
        ids.extend(page.iter().map(|r| r.run_id.clone()));
        match page.last() {
            Some(last) if page.len() == limit => cursor = Some(last.cursor()),
            _ => return ids,
        }
    }
}

pub async fn paging_within_one_millisecond<S: RunStore + EventLog>(s: &S) {
    // GIVEN 30 runs created in the same millisecond, between runs of the one before and after,
    // and 5 of them finished
    let mut expected = vec!["before".to_owned()];
    create_new(s, &state("before", 999), &[]).await;
    for i in 0..30 {
        let id = format!("same-{i:02}");
        create_new(s, &state(&id, 1_000), &[]).await;
        expected.push(id);
    }
    create_new(s, &state("after", 1_001), &[]).await;
    expected.push("after".to_owned());
    for i in [3, 7, 11, 20, 29] {
        let mut done = state(&format!("same-{i:02}"), 1_000);
        done.status = RunStatus::Completed;
        s.commit(&done, &[]).await.unwrap();
    }

    // WHEN every run is listed one, then seven, at a time
    // THEN each is listed exactly once, newest first (same millisecond: by id)
    let mut newest_first = expected.clone();
    newest_first.reverse();
    assert_eq!(list_all(s, 1).await, newest_first);
    assert_eq!(list_all(s, 7).await, newest_first);

    // AND the runs in progress are listed once each, oldest first, the finished left out
    let finished = ["same-03", "same-07", "same-11", "same-20", "same-29"];
    let active: Vec<String> = expected
        .iter()
        .filter(|id| !finished.contains(&id.as_str()))
        .cloned()
        .collect();
    // The DynamoDB index is eventually consistent: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while active_all(s, 4).await != active && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(active_all(s, 4).await, active);
    assert_eq!(active_all(s, 1).await, active);
}

fn lost<T: std::fmt::Debug>(r: Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::LeaseLost(_)))
}

fn acquired(claim: Claim) -> Lease {
    match claim {
        Claim::Acquired(lease) => lease,
        Claim::Held { owner, .. } => panic!("the lease is held by {owner}"),
    }
}

pub async fn leases_fence_stale_owners<S: RunStore + EventLog>(s: &S) {
    // GIVEN a run whose lease process A holds
    create_new(s, &state("run-l", 1_000), &[]).await;
    let a = acquired(s.acquire_lease("run-l", "A", 300, None).await.unwrap());
    assert_eq!((a.owner.as_str(), a.token), ("A", 1));

    // WHEN B asks while A's lease runs
    // THEN B is told A holds it, and so is A itself
    for asker in ["B", "A"] {
        match s.acquire_lease("run-l", asker, 300, None).await.unwrap() {
            Claim::Held { owner, .. } => assert_eq!(owner, "A"),
            Claim::Acquired(l) => panic!("{asker} took a held lease: {l:?}"),
        }
    }
    // AND A's fenced writes go through, and its renewal keeps the token
    let mut as_a = state("run-l", 1_000);
    as_a.lease_token = Some(a.token);
    s.commit(&as_a, &messages("run-l", &["by A"]))
        .await
        .unwrap();
    let a = s.renew_lease(&a, 300).await.unwrap();
    assert_eq!(a.token, 1);

    // WHEN A stops renewing and B takes the lapsed lease
    tokio::time::sleep(Duration::from_millis(400)).await;
    let b = acquired(s.acquire_lease("run-l", "B", 60_000, None).await.unwrap());
    assert_eq!((b.owner.as_str(), b.token), ("B", 2));

    // THEN every write A makes under its old token is refused, and changes nothing
    assert!(lost(s.commit(&as_a, &messages("run-l", &["late A"])).await));
    assert!(lost(
        s.append_fenced("run-l", &messages("run-l", &["late delta"]), Some(1))
            .await
    ));
    assert!(lost(
        s.open_step(
            "run-l",
            "s1",
            1,
            &messages("run-l", &["late handoff"]),
            Some(1)
        )
        .await
    ));
    let result = step_result("s1", 1, json!({"by": "A"}));
    let transition = s
        .commit_transition(TransitionWrite {
            state: &as_a,
            events: &messages("run-l", &["late transition"]),
            result: Some(&result),
            opens: &[],
            now_ms: 2_000,
        })
        .await;
    assert!(lost(transition));
    assert!(lost(s.renew_lease(&a, 300).await));
    let log: Vec<String> = s
        .read_after("run-l", 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|f| match f.event.kind {
            EventKind::Message { message } => message,
            other => format!("{other:?}"),
        })
        .collect();
    // (The step result may stay: an attempt's result is the attempt's, whoever stored it
    // first, and the new owner reads it instead of running the attempt again.)
    assert_eq!(log, ["by A"]);

    // AND A letting go of its old lease does not free B's
    s.release_lease(&a).await.unwrap();
    match s.acquire_lease("run-l", "C", 300, None).await.unwrap() {
        Claim::Held { owner, .. } => assert_eq!(owner, "B"),
        Claim::Acquired(l) => panic!("C took B's lease: {l:?}"),
    }
    // AND B writes under its token, and releasing lets the next owner in at once
    let mut as_b = state("run-l", 1_000);
    as_b.lease_token = Some(b.token);
    s.commit(&as_b, &messages("run-l", &["by B"]))
        .await
        .unwrap();
    s.release_lease(&b).await.unwrap();
    let c = acquired(s.acquire_lease("run-l", "C", 300, None).await.unwrap());
    assert_eq!(c.token, 3);
    // AND an owner known dead is replaced at once, its lease running or not
    match s.acquire_lease("run-l", "D", 300, Some("B")).await.unwrap() {
        Claim::Held { owner, .. } => assert_eq!(owner, "C", "B no longer holds it"),
        Claim::Acquired(l) => panic!("D replaced C, which was not named: {l:?}"),
    }
    let d = acquired(s.acquire_lease("run-l", "D", 300, Some("C")).await.unwrap());
    assert_eq!((d.owner.as_str(), d.token), ("D", 4));
    // AND a writer with no lease (a person's cancel) is not fenced
    s.append("run-l", &messages("run-l", &["unfenced"]))
        .await
        .unwrap();
}

/// A recorded model call of `unit`, answered with `text`.
pub fn call(unit: CallUnit, index: u32, text: &str) -> RecordedCall {
    RecordedCall {
        unit,
        index,
        model: ModelInfo {
            provider: "offline".into(),
            model: "m".into(),
        },
        streamed: true,
        request: ModelRequest::new(Purpose::Generate, "system", vec![ChatMessage::user("hi")]),
        reply: CallReply::Answered {
            text: text.into(),
            tool_calls: Vec::new(),
            usage: Usage {
                input_tokens: 3,
                output_tokens: 4,
            },
            cuts: vec![1],
            retries: Vec::new(),
        },
        started_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
        duration_ms: 5,
    }
}

pub async fn model_calls_round_trip_in_unit_order<S: RunStore + CallLog>(s: &S) {
    // GIVEN a run, and calls recorded out of order: a step's, the plan's, a 1 MB reply, an error
    create_new(s, &state("run-c", 1_000), &[]).await;
    let step = |attempt| CallUnit::Step {
        step_id: "s2".into(),
        attempt,
    };
    let plan = CallUnit::Plan { version: 1 };
    let big: String = "abcdéfgh\n".repeat(1024 * 1024 / 10);
    let mut failed = call(step(2), 0, "");
    failed.reply = CallReply::Failed {
        error: ModelError::Provider {
            status: 503,
            message: "busy".into(),
        },
    };
    for c in [
        call(step(1), 1, "second"),
        call(plan.clone(), 0, "plan"),
        call(step(1), 0, &big),
        failed.clone(),
    ] {
        s.record_call("run-c", &c).await.unwrap();
    }

    // WHEN a retried invocation records (step 1, call 1) again, and the calls are read back
    let again = call(step(1), 1, "second, again");
    s.record_call("run-c", &again).await.unwrap();
    let calls = s.calls("run-c").await.unwrap();

    // THEN they come in unit and call order, nothing cut, the retried call replaced
    let expected = [call(plan, 0, "plan"), call(step(1), 0, &big), again, failed];
    let key = |c: &RecordedCall| (c.unit.clone(), c.index);
    assert_eq!(
        calls.iter().map(key).collect::<Vec<_>>(),
        expected.iter().map(key).collect::<Vec<_>>()
    );
    for (got, want) in calls.iter().zip(&expected) {
        assert!(
            got.reply == want.reply,
            "the reply of {:?} changed",
            key(got)
        );
        assert_eq!(got.request, want.request);
    }
    // AND another run has none
    assert!(s.calls("run-other").await.unwrap().is_empty());
}

/// Every read after each seq from 0 to past the end: the frames after it, in order, whole or
/// in pages of `page`, and the same frames as the wire carries them.
pub async fn reads_from_every_seq<S: EventLog>(s: &S, run_id: &str, all: &[Frame], page: usize) {
    let last = all.last().map_or(0, |f| f.seq);
    for after in 0..=last + 1 {
        let tail: Vec<Frame> = all.iter().filter(|f| f.seq > after).cloned().collect();
        assert_eq!(
            s.read_after(run_id, after, 10_000).await.unwrap(),
            tail,
            "after {after}"
        );
        let paged = s.read_after(run_id, after, page).await.unwrap();
        assert_eq!(
            paged,
            tail[..tail.len().min(page)],
            "after {after}, page {page}"
        );
        let wire: Vec<WireFrame> = tail.iter().take(page).map(WireFrame::of).collect();
        assert_eq!(
            s.read_wire_after(run_id, after, page).await.unwrap(),
            wire,
            "wire after {after}"
        );
    }
}

pub async fn read_from_inside_a_batch<S: RunStore + EventLog>(s: &S) {
    // GIVEN a run created with two events, then a batch of six appended in one call (a store
    // may keep a batch's events together)
    let mut all = create_new(s, &state("run-i", 1_000), &messages("run-i", &["a", "b"])).await;
    let batch = messages("run-i", &["c", "d", "e", "f", "g", "h"]);
    let frames = s.append("run-i", &batch).await.unwrap();
    assert_eq!(seqs(&frames), vec![3, 4, 5, 6, 7, 8]);
    all.extend(frames);

    // WHEN reading after every seq, the ones inside the batch included, whole and in pages
    // THEN exactly the later events come, in order, as appended
    reads_from_every_seq(s, "run-i", &all, 2).await;
    assert_eq!(
        texts(&s.read_after("run-i", 4, 3).await.unwrap()),
        vec!["e", "f", "g"]
    );

    // AND appending goes on after the batch
    let next = s.append("run-i", &messages("run-i", &["i"])).await.unwrap();
    assert_eq!(seqs(&next), vec![9]);
}

fn delta(run_id: &str, step_id: &str, text: &str) -> Event {
    Event {
        kind: EventKind::Delta {
            message: text.to_owned(),
            data: StepRef {
                step_id: step_id.to_owned(),
            },
        },
        correlation_id: format!("corr-{run_id}"),
        run_id: run_id.to_owned(),
    }
}

pub async fn many_small_deltas_read_back_in_order<S: RunStore + EventLog>(s: &S) {
    // GIVEN a run that streams 90 small deltas of two steps, appended in batches of one to
    // four (as a streamer flushes them), with a message between some batches
    let mut all = create_new(s, &state("run-d", 1_000), &messages("run-d", &["start"])).await;
    let mut n = 0;
    for batch in 0..36 {
        let size = 1 + batch % 4;
        let step = if batch % 2 == 0 { "s1" } else { "s2" };
        let mut events: Vec<Event> = (0..size)
            .map(|i| delta("run-d", step, &format!("chunk {} of {step} ({i}) ", n + i)))
            .collect();
        n += size;
        if batch % 5 == 0 {
            events.push(message("run-d", &format!("after batch {batch}")));
        }
        let frames = s.append("run-d", &events).await.unwrap();
        assert_eq!(frames.first().map(|f| f.seq), all.last().map(|f| f.seq + 1));
        all.extend(frames);
    }
    assert_eq!(all.len(), 1 + 90 + 8);

    // WHEN the log is read from the start, and after every seq in pages
    // THEN every event comes back once, in order, as appended
    assert_eq!(s.read_after("run-d", 0, 1_000).await.unwrap(), all);
    assert_eq!(
        seqs(&all),
        (1..=all.len() as u64).collect::<Vec<_>>(),
        "gap-free"
    );
    reads_from_every_seq(s, "run-d", &all, 7).await;
}
