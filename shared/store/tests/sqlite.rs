//! The conformance suite against SQLite, plus what only a file-backed store has: restarts,
//! several connections on one file, corrupt files, plan versions and notification latency.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the assertion

mod conformance;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conformance::{message, messages, state};
use orchestrator_core::event::EventKind;
use orchestrator_core::ports::{CallLog, Clock, Created, EventLog, RunStore, StoreError};
use orchestrator_core::types::{Plan, PlanStep, StepStatus};
use orchestrator_store::SqliteStore;
use tempfile::TempDir;

/// A fresh store on a new file; keep the directory alive as long as the store.
fn fresh() -> (TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&db_path(&dir)).unwrap();
    (dir, store)
}

fn db_path(dir: &TempDir) -> PathBuf {
    dir.path().join("orchestrator.db")
}

#[tokio::test]
async fn paging_within_one_millisecond() {
    let (_dir, s) = fresh();
    conformance::paging_within_one_millisecond(&s).await;
}

#[tokio::test]
async fn leases_fence_stale_owners() {
    let (_dir, s) = fresh();
    conformance::leases_fence_stale_owners(&s).await;
}

#[tokio::test]
async fn create_once() {
    let (_dir, s) = fresh();
    conformance::create_once(&s).await;
}

#[tokio::test]
async fn create_same_id_conflicts() {
    let (_dir, s) = fresh();
    conformance::create_same_id_conflicts(&s).await;
}

#[tokio::test]
async fn commit_appends_gap_free() {
    let (_dir, s) = fresh();
    conformance::commit_appends_gap_free(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_through_one_store() {
    let (_dir, s) = fresh();
    let s = Arc::new(s);
    conformance::concurrent_appends(|| Arc::clone(&s)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_through_separate_connections() {
    // Each writer opens the file itself, as separate processes would: BEGIN IMMEDIATE and the
    // busy timeout must keep the seqs gap-free.
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    conformance::concurrent_appends(|| Arc::new(SqliteStore::open(&path).unwrap())).await;
}

#[tokio::test]
async fn read_after_pages() {
    let (_dir, s) = fresh();
    conformance::read_after_pages(&s).await;
}

#[tokio::test]
async fn read_from_inside_a_batch() {
    let (_dir, s) = fresh();
    conformance::read_from_inside_a_batch(&s).await;
}

#[tokio::test]
async fn many_small_deltas_read_back_in_order() {
    let (_dir, s) = fresh();
    conformance::many_small_deltas_read_back_in_order(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_beyond_wakes_on_append() {
    let (_dir, s) = fresh();
    conformance::wait_beyond_wakes_on_append(Arc::new(s)).await;
}

#[tokio::test]
async fn wait_beyond_times_out() {
    let (_dir, s) = fresh();
    conformance::wait_beyond_times_out(&s).await;
}

#[tokio::test]
async fn resume_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    conformance::resume_after_restart(|| {
        let path = path.clone();
        async move { SqliteStore::open(&path).unwrap() }
    })
    .await;
}

#[tokio::test]
async fn large_output_round_trip() {
    let (_dir, s) = fresh();
    conformance::large_output_round_trip(&s).await;
}

#[tokio::test]
async fn model_calls_round_trip_in_unit_order() {
    let (_dir, s) = fresh();
    conformance::model_calls_round_trip_in_unit_order(&s).await;
}

/// A clock stopped at a time.
struct At(u64);

impl Clock for At {
    fn now_ms(&self) -> u64 {
        self.0
    }
}

#[tokio::test]
async fn recorded_calls_past_their_retention_are_gone() {
    // GIVEN a file with a call recorded at t=1 s by a store that keeps calls a day
    let (dir, s) = fresh();
    let day = std::time::Duration::from_secs(86_400);
    let s = s
        .with_clock(Arc::new(At(1_000)))
        .with_call_retention(Some(day))
        .unwrap();
    s.create_run(&conformance::state("run-r", 1_000), &[])
        .await
        .unwrap();
    let plan = orchestrator_core::ports::CallUnit::Plan { version: 1 };
    let mut call = conformance::call(plan, 0, "plan");
    call.started_at_ms = 1_000;
    s.record_call("run-r", &call).await.unwrap();
    assert_eq!(s.calls("run-r").await.unwrap().len(), 1);

    // WHEN the file is opened again two days later
    let later = Arc::new(At(1_000 + 2 * 86_400_000));
    let reopened = SqliteStore::open(&db_path(&dir))
        .unwrap()
        .with_clock(later)
        .with_call_retention(Some(day))
        .unwrap();

    // THEN the call is gone, and the run is not
    assert!(reopened.calls("run-r").await.unwrap().is_empty());
    assert!(reopened.load_run("run-r").await.unwrap().is_some());
}

#[tokio::test]
async fn step_result_first_writer_wins() {
    let (_dir, s) = fresh();
    conformance::step_result_first_writer_wins(&s).await;
}

#[tokio::test]
async fn open_step_once_per_attempt() {
    let (_dir, s) = fresh();
    conformance::open_step_once_per_attempt(&s).await;
}

#[tokio::test]
async fn commit_finished_writes_the_report() {
    let (_dir, s) = fresh();
    conformance::commit_finished_writes_the_report(&s).await;
}

#[tokio::test]
async fn commit_transition_writes_it_all() {
    let (_dir, s) = fresh();
    conformance::commit_transition_writes_it_all(&s).await;
}

#[tokio::test]
async fn commit_transition_refuses_a_taken_result() {
    let (_dir, s) = fresh();
    conformance::commit_transition_refuses_a_taken_result(&s).await;
}

#[tokio::test]
async fn reports_upsert() {
    let (_dir, s) = fresh();
    conformance::reports_upsert(&s).await;
}

#[tokio::test]
async fn unknown_run() {
    let (_dir, s) = fresh();
    conformance::unknown_run(&s).await;
}

#[tokio::test]
async fn events_must_belong_to_the_run() {
    let (_dir, s) = fresh();
    conformance::events_must_belong_to_the_run(&s).await;
}

#[tokio::test]
async fn list_runs_newest_first() {
    let (_dir, s) = fresh();
    conformance::list_runs_newest_first(&s).await;
}

#[tokio::test]
async fn in_memory_store_passes_the_basics() {
    // GIVEN an in-memory store
    let s = SqliteStore::open_in_memory().unwrap();
    // THEN it behaves like a file-backed one
    conformance::create_once(&s).await;
    let s = SqliteStore::open_in_memory().unwrap();
    conformance::commit_appends_gap_free(&s).await;
}

fn assert_corrupt_naming(err: StoreError, path: &Path) {
    match &err {
        StoreError::Corrupt(msg) => {
            assert!(
                msg.contains(&path.display().to_string()),
                "message does not name the path: {msg}"
            );
            assert!(msg.contains("not a database"), "{msg}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn corrupt_file_is_a_clear_error_naming_the_path() {
    // GIVEN a file that is not a SQLite database
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    std::fs::write(
        &path,
        "this is not a database, just some text\n".repeat(200),
    )
    .unwrap();

    // WHEN it is opened as the store
    let err = SqliteStore::open(&path).unwrap_err();

    // THEN the error says so and names the file
    assert_corrupt_naming(err, &path);
    // AND the file is left as it was
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .starts_with("this is not")
    );
}

#[test]
fn short_garbage_file_is_also_corrupt() {
    // GIVEN a tiny file of garbage (shorter than a SQLite header)
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    std::fs::write(&path, "garbage").unwrap();

    // WHEN it is opened THEN the error names the path
    assert_corrupt_naming(SqliteStore::open(&path).unwrap_err(), &path);
}

#[test]
fn missing_directory_is_unavailable_naming_the_path() {
    // GIVEN a path whose directory does not exist
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("orchestrator.db");

    // WHEN it is opened
    let err = SqliteStore::open(&path).unwrap_err();

    // THEN the store is unavailable, and the error names the path
    match err {
        StoreError::Unavailable(msg) => {
            assert!(msg.contains(&path.display().to_string()), "{msg}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[test]
fn newer_schema_is_refused() {
    // GIVEN a database written by a build with a newer schema
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    drop(SqliteStore::open(&path).unwrap());
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", orchestrator_store::SCHEMA_VERSION + 1)
            .unwrap();
    }

    // WHEN this build opens it
    let err = SqliteStore::open(&path).unwrap_err();

    // THEN it refuses, naming the file and the versions
    match err {
        StoreError::Unavailable(msg) => {
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains("newer"), "{msg}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[test]
fn open_sets_wal_and_the_schema_version() {
    // GIVEN a new store file
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    drop(SqliteStore::open(&path).unwrap());
    // WHEN it is opened twice (the second open migrates nothing)
    drop(SqliteStore::open(&path).unwrap());

    // THEN the file is in WAL mode at the current schema version
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let version: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, orchestrator_store::SCHEMA_VERSION);
}

#[tokio::test]
async fn corrupt_state_json_is_reported_as_corrupt() {
    // GIVEN a run whose stored state was damaged behind the store's back
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let s = SqliteStore::open(&path).unwrap();
    s.create_run(&state("run-bad", 1_000), &messages("run-bad", &["1"]))
        .await
        .unwrap();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute(
            "UPDATE runs SET state_json = '{\"runId\": 42' WHERE run_id = 'run-bad'",
            [],
        )
        .unwrap();
        conn.execute(
            "UPDATE events SET event_json = 'nope' WHERE run_id = 'run-bad'",
            [],
        )
        .unwrap();
    }

    // WHEN it is loaded, or its events read
    // THEN the store says the data is corrupt, naming the run
    match s.load_run("run-bad").await {
        Err(StoreError::Corrupt(msg)) => assert!(msg.contains("run-bad"), "{msg}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(matches!(
        s.read_after("run-bad", 0, 10).await,
        Err(StoreError::Corrupt(_))
    ));
}

#[tokio::test]
async fn commit_stores_each_new_plan_version_once() {
    // GIVEN a run without a plan
    let (_dir, s) = fresh();
    let mut st = state("run-v", 1_000);
    s.create_run(&st, &[]).await.unwrap();
    assert!(s.plan_versions("run-v").await.unwrap().is_empty());

    // WHEN plan version 1 is committed, then changed without a new version, then version 2
    let step = |id: &str, status| PlanStep {
        id: id.to_owned(),
        capability_id: Some("copy".to_owned()),
        action: None,
        label: None,
        status,
        depends_on: Vec::new(),
        note: None,
        acceptance_criteria: Vec::new(),
    };
    let v1 = Plan {
        version: 1,
        steps: vec![step("s1", StepStatus::Pending)],
    };
    st.plan = v1.clone();
    s.commit(&st, &[]).await.unwrap();
    st.plan.steps[0].status = StepStatus::Done;
    s.commit(&st, &[]).await.unwrap();
    let v2 = Plan {
        version: 2,
        steps: vec![
            step("s1", StepStatus::Done),
            step("s2", StepStatus::Pending),
        ],
    };
    st.plan = v2.clone();
    s.commit(&st, &[]).await.unwrap();

    // THEN each version is stored once, as first committed; the state has the latest plan
    assert_eq!(
        s.plan_versions("run-v").await.unwrap(),
        vec![v1, v2.clone()]
    );
    assert_eq!(s.load_run("run-v").await.unwrap().unwrap().plan, v2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_beyond_is_woken_without_polling() {
    // GIVEN a store that would poll only once an hour, and a reader waiting on a run
    let (_dir, s) = fresh();
    let s = s.with_cross_process_poll(Duration::from_secs(3600));
    s.create_run(&state("run-n", 1_000), &[]).await.unwrap();
    let waiter = {
        let s = s.clone();
        tokio::spawn(async move {
            s.wait_beyond("run-n", 0, Duration::from_secs(30))
                .await
                .unwrap();
            Instant::now()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;

    // WHEN a clone of the store appends
    let before = Instant::now();
    s.append("run-n", &[message("run-n", "hi")]).await.unwrap();

    // THEN the reader wakes at once, not at its next poll
    let woke = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("not woken by the append")
        .unwrap();
    assert!(woke.duration_since(before) < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_beyond_sees_another_connections_append_by_polling() {
    // GIVEN two stores on one file (as two processes would have), a reader waiting on one
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let reader = SqliteStore::open(&path)
        .unwrap()
        .with_cross_process_poll(Duration::from_millis(20));
    let writer = SqliteStore::open(&path).unwrap();
    writer
        .create_run(&state("run-x", 1_000), &[])
        .await
        .unwrap();
    let waiter = tokio::spawn(async move {
        reader
            .wait_beyond("run-x", 0, Duration::from_secs(30))
            .await
            .unwrap();
    });
    tokio::time::sleep(Duration::from_millis(50)).await;

    // WHEN the other store appends
    writer
        .append("run-x", &[message("run-x", "hi")])
        .await
        .unwrap();

    // THEN the reader notices within a few polls
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the reader never saw the append")
        .unwrap();
}

#[tokio::test]
async fn created_frames_carry_the_events() {
    // GIVEN a new run with a start event
    let (_dir, s) = fresh();
    let start = orchestrator_core::event::Event {
        kind: EventKind::Start {
            message: "go".to_owned(),
        },
        correlation_id: "c".to_owned(),
        run_id: "run-f".to_owned(),
    };
    // WHEN it is created
    let created = s
        .create_run(&state("run-f", 1_000), std::slice::from_ref(&start))
        .await
        .unwrap();
    // THEN the frame is seq 1 with the event, and encodes as SSE with id 1
    let Created::New { frames } = created else {
        panic!("expected a new run")
    };
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].seq, 1);
    assert_eq!(frames[0].event, start);
    assert!(frames[0].to_sse().starts_with("id: 1\nevent: start\n"));
}

#[tokio::test]
async fn status_transition_refused() {
    let (_dir, s) = fresh();
    conformance::status_transition_refused(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_reads_every_frame_once_in_order_when_two_processes_append() {
    // GIVEN two stores on one file (as two processes would have), a stream following a run
    // through the first, as `serve` does: read what is there, then wait for more
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let here = SqliteStore::open(&path)
        .unwrap()
        .with_cross_process_poll(Duration::from_millis(20));
    let other = SqliteStore::open(&path).unwrap();
    here.create_run(&state("run-2p", 1_000), &[]).await.unwrap();
    const TOTAL: usize = 12;
    let follower = {
        let here = here.clone();
        tokio::spawn(async move {
            let (mut after, mut seen) = (0, Vec::new());
            while seen.len() < TOTAL {
                let frames = here.read_wire_after("run-2p", after, 100).await.unwrap();
                after = frames.last().map_or(after, |f| f.seq);
                seen.extend(frames);
                if seen.len() >= TOTAL {
                    break;
                }
                here.wait_beyond("run-2p", after, Duration::from_secs(5))
                    .await
                    .unwrap();
            }
            seen
        })
    };

    // WHEN both append in turns, this process's appends waking the stream, the other's not
    let mut n = 0;
    for (store, count) in [(&here, 2), (&other, 2), (&here, 3), (&other, 1), (&here, 4)] {
        let events: Vec<_> = (0..count)
            .map(|_| {
                n += 1;
                message("run-2p", &format!("m{n}"))
            })
            .collect();
        store.append("run-2p", &events).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }

    // THEN the stream read each frame once, in order, as the log holds it
    let seen = tokio::time::timeout(Duration::from_secs(10), follower)
        .await
        .expect("the stream missed a frame")
        .unwrap();
    let stored = other.read_wire_after("run-2p", 0, 100).await.unwrap();
    assert_eq!(seen, stored);
    assert_eq!(
        seen.iter().map(|f| f.seq).collect::<Vec<_>>(),
        (1..=TOTAL as u64).collect::<Vec<_>>()
    );
}

/// The units of the calls another connection on `path` (another process) finds for `run_id`.
async fn calls_seen_by_another_process(path: &Path, run_id: &str) -> Vec<u32> {
    let other = SqliteStore::open(path).unwrap();
    let calls = other.calls(run_id).await.unwrap();
    calls.into_iter().map(|c| c.index).collect()
}

fn plan_call(index: u32) -> orchestrator_core::ports::RecordedCall {
    let unit = orchestrator_core::ports::CallUnit::Plan { version: 1 };
    conformance::call(unit, index, "plan")
}

#[tokio::test]
async fn a_recorded_call_is_in_the_file_when_the_step_result_after_it_is() {
    // GIVEN a run, and a model call of it just recorded
    let (dir, s) = fresh();
    s.create_run(&state("run-c", 1_000), &[]).await.unwrap();
    s.record_call("run-c", &plan_call(0)).await.unwrap();

    // WHEN the step's result is written
    let result = conformance::step_result("s1", 1, serde_json::json!({"ok": true}));
    s.put_step_result("run-c", &result).await.unwrap();

    // THEN another process finds the call in the file, with the result
    assert_eq!(
        calls_seen_by_another_process(&db_path(&dir), "run-c").await,
        [0]
    );
    assert!(
        SqliteStore::open(&db_path(&dir))
            .unwrap()
            .get_step_result("run-c", "s1", 1)
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn a_recorded_call_with_no_write_after_it_is_written_on_its_own() {
    // GIVEN a run with a call recorded, and nothing written after it
    let (dir, s) = fresh();
    s.create_run(&state("run-c", 1_000), &[]).await.unwrap();
    s.record_call("run-c", &plan_call(0)).await.unwrap();

    // WHEN another process looks, for up to five seconds
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    while seen.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        seen = calls_seen_by_another_process(&db_path(&dir), "run-c").await;
    }

    // THEN it finds the call (written alone once no write came to carry it)
    assert_eq!(seen, [0]);
    drop(s);
}

#[tokio::test]
async fn a_call_queued_before_a_refused_write_goes_with_the_next_one() {
    // GIVEN a run leased to B (token 2), and a call recorded
    let (dir, s) = fresh();
    s.create_run(&state("run-c", 1_000), &[]).await.unwrap();
    s.acquire_lease("run-c", "A", 60_000, None).await.unwrap();
    s.acquire_lease("run-c", "B", 60_000, Some("A"))
        .await
        .unwrap();
    s.record_call("run-c", &plan_call(0)).await.unwrap();

    // WHEN A's fenced append is refused, and B then appends
    let refused = s
        .append_fenced("run-c", &messages("run-c", &["late"]), Some(1))
        .await;
    assert!(
        matches!(refused, Err(StoreError::LeaseLost(_))),
        "{refused:?}"
    );
    s.append_fenced("run-c", &messages("run-c", &["on time"]), Some(2))
        .await
        .unwrap();

    // THEN the call is in the file, and so is only B's event
    assert_eq!(
        calls_seen_by_another_process(&db_path(&dir), "run-c").await,
        [0]
    );
    let log: Vec<String> = s
        .read_after("run-c", 0, 10)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.event.kind {
            EventKind::Message { message } => Some(message),
            _ => None,
        })
        .collect();
    assert_eq!(log, ["on time"]);
}

#[tokio::test]
async fn a_store_closed_with_a_call_queued_writes_it_first() {
    // GIVEN a run with a call recorded
    let (dir, s) = fresh();
    s.create_run(&state("run-c", 1_000), &[]).await.unwrap();
    s.record_call("run-c", &plan_call(3)).await.unwrap();

    // WHEN the store is closed at once
    drop(s);

    // THEN the call is in the file
    assert_eq!(
        calls_seen_by_another_process(&db_path(&dir), "run-c").await,
        [3]
    );
}
