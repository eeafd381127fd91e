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
