#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the assertion in a test

//! The reference run's frames on the local paths, against `tests/golden/reference_run.jsonl`:
//! `orchestrator run --json` and `orchestrator serve`'s `run.stream`, offline model. The
//! emulated AWS stack checks the same file (the second test in `tests/aws_run.rs`).

mod golden;
mod serve;

use serve::Serve;

#[test]
fn orchestrator_run_streams_the_golden_frames() {
    // GIVEN a fresh database and the offline model
    let dir = tempfile::tempdir().unwrap();
    // WHEN the reference run is run with --json
    let out = serve::offline_orchestrator()
        .arg("--db")
        .arg(dir.path().join("runs.db"))
        .args(["run", golden::OBJECTIVE, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // THEN its frames, normalised, are the golden ones
    let frames = golden::normalise(golden::data_of(&String::from_utf8(out.stdout).unwrap()));
    golden::assert_golden("orchestrator run --json", &frames);
}

#[test]
fn serve_streams_the_golden_frames() {
    // GIVEN `orchestrator serve` on a fresh database, offline model
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = serve::offline_orchestrator();
    cmd.arg("--db").arg(dir.path().join("runs.db"));
    let serve = Serve::start(cmd);

    // WHEN the reference run is posted to run.stream and read to its end
    let body = serde_json::json!({ "objective": golden::OBJECTIVE }).to_string();
    let sse = serve.run_stream(&body, &[]);

    // THEN its frames, normalised, are the golden ones
    golden::assert_golden(
        "serve run.stream",
        &golden::normalise(golden::data_of(&sse)),
    );
}

#[test]
fn serve_on_several_threads_streams_the_golden_frames_of_runs_at_once() {
    // GIVEN `orchestrator serve` on three threads (more than this machine may have cores)
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = serve::offline_orchestrator();
    cmd.arg("--db")
        .arg(dir.path().join("runs.db"))
        .env("ORCHESTRATOR_SERVE_THREADS", "3");
    let serve = Serve::start(cmd);

    // WHEN six reference runs are posted at once, each read to its end
    let body = serde_json::json!({ "objective": golden::OBJECTIVE }).to_string();
    let streams: Vec<String> = std::thread::scope(|s| {
        let posted: Vec<_> = (0..6)
            .map(|_| s.spawn(|| serve.run_stream(&body, &[])))
            .collect();
        posted.into_iter().map(|p| p.join().unwrap()).collect()
    });

    // THEN each stream has the golden frames, and each run's log, read again on a connection
    // of its own (accepted by any thread), is the stream it was posted on
    for sse in &streams {
        golden::assert_golden("serve run.stream", &golden::normalise(golden::data_of(sse)));
        let run_id = golden::data_of(sse)[0]["runId"]
            .as_str()
            .unwrap()
            .to_owned();
        let again = serve.get(&format!("/api/v1/runs/{run_id}/events"));
        assert_eq!(
            golden::data_of(&again),
            golden::data_of(sse),
            "run {run_id}"
        );
    }
}

#[test]
fn serve_refuses_a_thread_count_it_cannot_use() {
    // GIVEN ORCHESTRATOR_SERVE_THREADS=0
    let dir = tempfile::tempdir().unwrap();
    // WHEN serve starts
    let out = serve::offline_orchestrator()
        .arg("--db")
        .arg(dir.path().join("runs.db"))
        .env("ORCHESTRATOR_SERVE_THREADS", "0")
        .args(["serve", "--addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    // THEN it exits 2 naming the variable and its range, and serves nothing
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("ORCHESTRATOR_SERVE_THREADS must be between 1 and 256"),
        "{stderr}"
    );
    assert!(!stderr.contains("listening"), "{stderr}");
}
