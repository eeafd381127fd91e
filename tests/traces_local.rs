#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the assertion in a test

//! The reference run's trace on the local paths, read back from a real OTLP receiver (Arize
//! Phoenix): `orchestrator run` and `orchestrator serve` export it when
//! OTEL_EXPORTER_OTLP_ENDPOINT is set, and its outline is `tests/golden/reference_trace.txt`
//! (the emulated AWS stack checks the same file, in `tests/aws_run.rs`). Needs PHOENIX_URL
//! (`bash infra/phoenix.sh`); `.ci/run` starts Phoenix and sets it.

mod golden;
mod serve;
mod traces;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use serve::Serve;

/// Long enough for a batch from a slow machine; a passing test waits far less.
const ARRIVAL: Duration = Duration::from_secs(60);

fn bin(phoenix: &str, project: &str) -> Command {
    let mut cmd = serve::offline_orchestrator();
    cmd.env_remove("OTEL_SERVICE_NAME")
        // A long-lived `serve` sends its spans in batches; a short delay keeps the test short.
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .envs(traces::exporting_to(phoenix, project));
    cmd
}

#[test]
fn orchestrator_run_exports_the_reference_runs_trace() {
    let Some(phoenix) = traces::phoenix_url("orchestrator_run_exports_the_reference_runs_trace")
    else {
        return;
    };
    // GIVEN a fresh database, the offline model, and export to Phoenix into a project of its own
    let project = traces::project("local-run");
    let dir = tempfile::tempdir().unwrap();
    // WHEN the reference run is run
    let out = bin(&phoenix, &project)
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
    // THEN Phoenix has its trace: the golden outline, one trace, the GenAI attributes, and
    // the model calls' tokens add up to the run's
    let (run_id, tokens) =
        traces::run_and_tokens(&golden::data_of(&String::from_utf8(out.stdout).unwrap()));
    let spans = traces::reference_spans(&phoenix, &project, ARRIVAL, |_| true);
    traces::assert_golden("orchestrator run", &traces::outline(&spans));
    traces::assert_attributes(&spans, &run_id, tokens);
    let run = spans.iter().find(|s| s.name == "run").unwrap();
    assert_eq!(run.attr("run.status").unwrap(), "completed");
}

#[test]
fn a_run_started_through_serve_joins_the_callers_trace() {
    let Some(phoenix) = traces::phoenix_url("a_run_started_through_serve_joins_the_callers_trace")
    else {
        return;
    };
    // GIVEN `orchestrator serve` exporting to Phoenix
    let project = traces::project("local-serve");
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = bin(&phoenix, &project);
    cmd.arg("--db").arg(dir.path().join("runs.db"));
    let serve = Serve::start(cmd);

    // WHEN a traced client posts the reference run to run.stream and reads it to its end
    // (A trace id of its own: Phoenix files a known trace id's spans under its first project.)
    let client_trace = format!("{:032x}", uuid::Uuid::new_v4().as_u128());
    let client_span = "00f067aa0ba902b7";
    let body = serde_json::json!({ "objective": golden::OBJECTIVE }).to_string();
    let traceparent = format!("00-{client_trace}-{client_span}-01");
    let frames = golden::data_of(&serve.run_stream(&body, &[("traceparent", &traceparent)]));
    let (run_id, tokens) = traces::run_and_tokens(&frames);
    let spans = traces::reference_spans(&phoenix, &project, ARRIVAL, |spans| {
        spans.iter().any(|s| s.name.starts_with("POST "))
    });
    drop(serve);

    // THEN the request is a child of the client's span, the run is in the client's trace, and
    // its outline is the golden one
    let request = spans
        .iter()
        .find(|s| s.name == "POST /api/v1/agent/run.stream")
        .unwrap_or_else(|| panic!("no request span in {spans:?}"));
    assert_eq!(request.trace_id, client_trace);
    assert_eq!(request.parent_id.as_deref(), Some(client_span));
    traces::assert_golden("serve run.stream", &traces::outline(&spans));
    traces::assert_attributes(&spans, &run_id, tokens);
    let run = spans.iter().find(|s| s.name == "run").unwrap();
    assert_eq!(run.trace_id, client_trace);
}

#[test]
fn a_run_continued_by_another_process_stays_in_its_trace() {
    let Some(phoenix) =
        traces::phoenix_url("a_run_continued_by_another_process_stays_in_its_trace")
    else {
        return;
    };
    // GIVEN a run that paused at its approval checkpoint, its process gone
    let project = traces::project("local-continued");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let paused = bin(&phoenix, &project)
        .arg("--db")
        .arg(&db)
        .args(["run", golden::OBJECTIVE, "--require-approval", "--json"])
        .output()
        .unwrap();
    assert_eq!(
        paused.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&paused.stderr)
    );
    let frames = golden::data_of(&String::from_utf8(paused.stdout).unwrap());
    let run_id = frames[0]["runId"].as_str().unwrap().to_owned();
    let checkpoint = frames
        .iter()
        .find(|f| f["type"] == "hitl_request")
        .and_then(|f| f["data"]["checkpointId"].as_str())
        .expect("a checkpoint")
        .to_owned();

    // WHEN another process approves it and drives it to the end
    let approved = bin(&phoenix, &project)
        .arg("--db")
        .arg(&db)
        .args(["approve", &run_id, &checkpoint, "--json"])
        .output()
        .unwrap();
    assert!(
        approved.status.success(),
        "{}",
        String::from_utf8_lossy(&approved.stderr)
    );

    // THEN both processes' spans are one trace: the second drive's run span is a child of
    // the first's, and the final step is under it
    let spans = traces::spans_until(&phoenix, &project, ARRIVAL, |spans| {
        spans.iter().filter(|s| s.name == "run").count() == 2
            && spans
                .iter()
                .any(|s| s.attr("step.capability").is_some_and(|c| c == "finalize"))
    });
    let runs: Vec<_> = spans.iter().filter(|s| s.name == "run").collect();
    assert_eq!(runs.len(), 2, "{spans:?}");
    let (first, second) = match runs[0].attr("run.resumed").and_then(Value::as_bool) {
        Some(false) => (runs[0], runs[1]),
        _ => (runs[1], runs[0]),
    };
    assert_eq!(
        second.attr("run.resumed").and_then(Value::as_bool),
        Some(true)
    );
    assert_eq!(second.trace_id, first.trace_id);
    assert_eq!(second.parent_id.as_deref(), Some(first.span_id.as_str()));
    let finalize = spans
        .iter()
        .find(|s| s.attr("step.capability").is_some_and(|c| c == "finalize"))
        .unwrap();
    assert_eq!(finalize.parent_id.as_deref(), Some(second.span_id.as_str()));
    assert!(spans.iter().all(|s| s.trace_id == first.trace_id));
}
