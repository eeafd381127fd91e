#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the assertion in a test

//! Replay and fork on one machine: the real `orchestrator` binary, the offline model and a
//! SQLite file. A run records its model calls; `replay` runs it again with none and must give
//! the same log; a changed prompt stops the replay at the request it changed; `fork` reuses the
//! record before a step and calls the model from there.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const OBJECTIVE: &str = "Write a launch post for Acme Sync, our file sync app";

/// The binary on `db`. The offline model streams a chunk every 15 ms, so the original's
/// deltas are cut by the batcher's clock, not by its size: a replay must cut them the same.
fn bin(db: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .env_remove("MODEL_PROVIDER")
        .env_remove("ORCHESTRATOR_DB")
        .env_remove("ORCHESTRATOR_STORE")
        .env_remove("ORCHESTRATOR_PROMPTS_DIR")
        .env_remove("ORCHESTRATOR_RECORD")
        .env("ORCHESTRATOR_OFFLINE_CHUNK_MS", "15")
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The frames' (type, data) of a run's stored log.
fn events(db: &Path, run_id: &str) -> Vec<Value> {
    let out = bin(db, &["show", run_id, "--events"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    orchestrator_core::event::SseParser::default()
        .push(&text(&out.stdout))
        .into_iter()
        .map(|f| serde_json::from_str(&f.data).unwrap())
        .collect()
}

/// A finished reference run in a fresh database: (dir, db, run id).
fn reference_run() -> (tempfile::TempDir, PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let out = bin(&db, &["run", OBJECTIVE, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let first = orchestrator_core::event::SseParser::default()
        .push(&text(&out.stdout))
        .into_iter()
        .next()
        .unwrap();
    let start: Value = serde_json::from_str(&first.data).unwrap();
    let run_id = start["runId"].as_str().unwrap().to_owned();
    (dir, db, run_id)
}

fn replay_json(db: &Path, args: &[&str]) -> (Output, Value) {
    let out = bin(db, args);
    let summary = serde_json::from_str(text(&out.stdout).trim())
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", text(&out.stdout), text(&out.stderr)));
    (out, summary)
}

/// A log with the run's own ids and clocks taken out, for comparing two runs by eye.
fn comparable(frames: &[Value]) -> Vec<Value> {
    frames
        .iter()
        .map(|f| {
            let mut f = f.clone();
            let o = f.as_object_mut().unwrap();
            o.remove("runId");
            o.remove("correlationId");
            o.remove("durationMs");
            f
        })
        .collect()
}

/// Consecutive deltas of one step joined into one frame.
fn joined_deltas(frames: Vec<Value>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for f in frames {
        if let Some(last) = out.last_mut()
            && f["type"] == "delta"
            && last["type"] == "delta"
            && last["data"] == f["data"]
        {
            let joined = format!(
                "{}{}",
                last["message"].as_str().unwrap(),
                f["message"].as_str().unwrap()
            );
            last["message"] = Value::from(joined);
            continue;
        }
        out.push(f);
    }
    out
}

#[test]
fn a_replay_gives_the_same_log_frame_for_frame_with_no_model_call() {
    // GIVEN a finished reference run, whose streamed drafts were cut into several deltas
    let (_dir, db, original) = reference_run();
    let before = events(&db, &original);
    let deltas = before.iter().filter(|f| f["type"] == "delta").count();
    assert!(deltas > 3, "the draft streamed in several frames: {deltas}");

    // WHEN it is replayed
    let (out, summary) = replay_json(&db, &["replay", &original, "--json"]);

    // THEN the replay says its log is identical, with no model call
    assert!(out.status.success(), "{summary}\n{}", text(&out.stderr));
    assert_eq!(summary["outcome"], "identical", "{summary}");
    assert_eq!(summary["modelCalls"], 0);
    assert_eq!(summary["replayOf"], original.as_str());
    assert_eq!(summary["frames"], before.len());
    // AND every model call of the run was answered from the record (plan, replan, 5 steps)
    assert_eq!(summary["answeredFromRecord"], 7, "{summary}");
    // AND the replay's own stored log is the original's, frame for frame, deltas included
    let replay_id = summary["runId"].as_str().unwrap();
    assert_ne!(replay_id, original);
    assert_eq!(comparable(&events(&db, replay_id)), comparable(&before));
}

#[test]
fn a_changed_prompt_stops_the_replay_at_the_first_request_it_changed() {
    // GIVEN a finished reference run and a writer prompt with one sentence added
    let (dir, db, original) = reference_run();
    let prompts = dir.path().join("prompts");
    std::fs::create_dir(&prompts).unwrap();
    let writer = include_str!("../shared/agents/prompts/writer.v1.md");
    std::fs::write(
        prompts.join("writer.md"),
        format!("{writer}\nNever use exclamation marks."),
    )
    .unwrap();

    // WHEN the run is replayed with it
    let out = bin(
        &db,
        &["replay", &original, "--prompts", prompts.to_str().unwrap()],
    );

    // THEN the replay fails, naming the writer's step and showing the new line beside the old
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(
        shown.contains("stopped at step s2 attempt 1 call 1"),
        "{shown}"
    );
    let changed: Vec<&str> = shown.lines().filter(|l| l.starts_with('>')).collect();
    assert!(
        changed
            .iter()
            .any(|l| l.contains("Never use exclamation marks.")),
        "{shown}"
    );
    // AND with --json, the first differing request is given whole, recorded and new
    let (_, summary) = replay_json(
        &db,
        &[
            "replay",
            &original,
            "--prompts",
            prompts.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(summary["outcome"], "diverged");
    assert_eq!(summary["unit"]["stepId"], "s2");
    let new_system = summary["actual"]["system"].as_str().unwrap();
    assert!(new_system.ends_with("Never use exclamation marks."));
    assert!(
        !summary["recorded"]["system"]
            .as_str()
            .unwrap()
            .contains("exclamation")
    );
    // AND the stopped replay did not run on: no step after the writer's started
    let replay_events = events(&db, summary["runId"].as_str().unwrap());
    assert!(
        !replay_events
            .iter()
            .any(|f| f["type"] == "handoff" && f["data"]["stepId"] == "s3"),
        "{replay_events:?}"
    );
}

#[test]
fn a_fork_from_the_qa_step_reuses_what_ran_before_and_asks_the_model_from_there() {
    // GIVEN a finished reference run
    let (_dir, db, original) = reference_run();
    let before = events(&db, &original);

    // WHEN it is forked from its QA step (s3)
    let out = bin(&db, &["fork", &original, "--from", "s3", "--json"]);

    // THEN the fork completes
    let said = text(&out.stderr);
    assert!(out.status.success(), "{said}");
    // AND it reused the plan, strategy and draft (3 calls) and asked the model for the rest:
    // QA, the replan it leads to, the revision and its review (4 calls)
    assert!(said.contains("3 units reused from the record"), "{said}");
    assert!(
        said.contains(": 4 model calls, 3 answered from the record"),
        "{said}"
    );
    // AND the steps before QA produced what the original's did (a fork batches its deltas
    // as any run does, so a draft may be cut into other frames)
    let forked: Vec<Value> = orchestrator_core::event::SseParser::default()
        .push(&text(&out.stdout))
        .into_iter()
        .map(|f| serde_json::from_str(&f.data).unwrap())
        .collect();
    let until_qa = |log: &[Value]| -> Vec<Value> {
        let end = log
            .iter()
            .position(|f| f["type"] == "handoff" && f["data"]["stepId"] == "s3")
            .unwrap();
        joined_deltas(comparable(&log[..end]))
    };
    assert_eq!(until_qa(&forked), until_qa(&before));
    // AND the fork is a run of its own, recorded too: it replays identically
    let fork_id = forked[0]["runId"].as_str().unwrap();
    let (_, summary) = replay_json(&db, &["replay", fork_id, "--json"]);
    assert_eq!(summary["outcome"], "identical", "{summary}");
}

#[test]
fn replay_and_fork_name_what_is_wrong_and_start_nothing() {
    // GIVEN a finished reference run
    let (_dir, db, original) = reference_run();
    let runs_before = text(&bin(&db, &["runs"]).stdout).lines().count();

    // WHEN a fork names a step the run does not have, and a replay names no run
    let bad_step = bin(&db, &["fork", &original, "--from", "s99"]);
    let no_run = bin(&db, &["replay", "no-such-run"]);

    // THEN each exits 2 naming the problem (the step, with the run's steps listed)
    assert_eq!(bad_step.status.code(), Some(2));
    let said = text(&bad_step.stderr);
    assert!(
        said.contains("has no step s99") && said.contains("s1, s2"),
        "{said}"
    );
    assert_eq!(no_run.status.code(), Some(2));
    assert!(
        text(&no_run.stderr).contains("no-such-run"),
        "{}",
        text(&no_run.stderr)
    );
    // AND no run was added
    assert_eq!(
        text(&bin(&db, &["runs"]).stdout).lines().count(),
        runs_before
    );
}

#[test]
fn a_run_made_with_recording_off_says_there_is_nothing_to_replay() {
    // GIVEN a run made with ORCHESTRATOR_RECORD=off
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let out = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .env_remove("MODEL_PROVIDER")
        .env("ORCHESTRATOR_RECORD", "off")
        .env("ORCHESTRATOR_OFFLINE_CHUNK_MS", "0")
        .arg("--db")
        .arg(&db)
        .args(["run", OBJECTIVE, "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let start: Value = serde_json::from_str(
        &orchestrator_core::event::SseParser::default().push(&text(&out.stdout))[0].data,
    )
    .unwrap();

    // WHEN it is replayed
    let replay = bin(&db, &["replay", start["runId"].as_str().unwrap()]);

    // THEN it exits 2 saying why
    assert_eq!(replay.status.code(), Some(2));
    assert!(
        text(&replay.stderr).contains("no recorded model calls"),
        "{}",
        text(&replay.stderr)
    );
}
