#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the assertion in a test

//! End to end with a real provider adapter: the `orchestrator` binary with MODEL_PROVIDER=openai
//! against a local OpenAI-compatible server (on 127.0.0.1:0) that answers as each role would,
//! recognising the role by its system prompt.

mod mock_openai;

use mock_openai::{DRAFT, KEY};
use serde_json::Value;
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_against_an_openai_compatible_server_completes_and_names_its_model() {
    // GIVEN a local OpenAI-compatible server and a fresh database
    let (base, seen) = mock_openai::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");

    // WHEN the binary runs an objective with MODEL_PROVIDER=openai, logging at info
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    cmd.env_remove("ORCHESTRATOR_STORE")
        .env_remove("ORCHESTRATOR_PROMPTS_DIR")
        .env("MODEL_PROVIDER", "openai")
        .env("MODEL_ID", "e2e-model")
        .env("OPENAI_BASE_URL", &base)
        .env("OPENAI_API_KEY", KEY)
        .env("MODEL_MAX_RETRIES", "0")
        .env("RUST_LOG", "info")
        .arg("--db")
        .arg(&db)
        .args(["run", "Write a launch post for Acme Sync", "--json"]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();

    // THEN the run completed
    assert!(out.status.success(), "stderr: {stderr}\nstdout: {stdout}");
    let frames: Vec<(String, Value)> = orchestrator_core::event::SseParser::default()
        .push(&stdout)
        .into_iter()
        .map(|f| (f.event.unwrap(), serde_json::from_str(&f.data).unwrap()))
        .collect();
    let complete = &frames.last().unwrap().1;
    assert_eq!(complete["type"], "complete");
    assert_eq!(complete["status"], "completed");
    // AND the log says which provider and model ran, right after start, with no offline warning
    assert_eq!(frames[0].0, "start");
    assert_eq!(frames[1].0, "message");
    assert_eq!(frames[1].1["message"], "Model: openai/e2e-model");
    assert!(!frames.iter().any(|f| f.0 == "warning"), "{stdout}");
    assert!(stderr.contains("openai/e2e-model"), "{stderr}");
    // AND the draft streamed from the server is the draft of the run
    let streamed: String = frames
        .iter()
        .filter(|f| f.0 == "delta")
        .map(|f| f.1["message"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, DRAFT.concat());
    // AND every role was asked, with the key, and the planner with its reply's schema
    let roles = mock_openai::roles(&seen);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4, "{roles:?}");
    for (headers, body) in &seen {
        assert_eq!(headers["authorization"], format!("Bearer {KEY}").as_str());
        assert_eq!(body["model"], "e2e-model");
    }
    assert_eq!(seen[0].1["response_format"]["type"], "json_schema");
    assert_eq!(
        seen[0].1["response_format"]["json_schema"]["name"],
        "plan_patch"
    );
    // AND the info log has token usage in GenAI names, and no key, URL or prompt
    assert!(stderr.contains("gen_ai.usage.input_tokens"), "{stderr}");
    assert!(!stderr.contains(KEY), "{stderr}");
    assert!(!stderr.contains(&base), "{stderr}");
    assert!(!stderr.contains("You are the planner"), "{stderr}");
}

/// The binary on the mock server and a database: `--json` runs and replays.
fn openai_bin(base: &str, db: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .env_remove("ORCHESTRATOR_STORE")
        .env_remove("ORCHESTRATOR_PROMPTS_DIR")
        .env_remove("ORCHESTRATOR_RECORD")
        .env("MODEL_PROVIDER", "openai")
        .env("MODEL_ID", "e2e-model")
        .env("OPENAI_BASE_URL", base)
        .env("OPENAI_API_KEY", KEY)
        .env("MODEL_MAX_RETRIES", "0")
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_run_replays_with_no_request_and_forks_from_qa_with_one() {
    // GIVEN a run made against the OpenAI-compatible server (4 requests: planner, strategy,
    // writer, QA)
    let (base, seen) = mock_openai::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let (b, d) = (base.clone(), db.clone());
    let run = tokio::task::spawn_blocking(move || {
        openai_bin(
            &b,
            &d,
            &["run", "Write a launch post for Acme Sync", "--json"],
        )
    })
    .await
    .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let first = orchestrator_core::event::SseParser::default()
        .push(&String::from_utf8_lossy(&run.stdout))
        .remove(0);
    let run_id = serde_json::from_str::<Value>(&first.data).unwrap()["runId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(seen.lock().unwrap().len(), 4);

    // WHEN it is replayed
    let (b, d, id) = (base.clone(), db.clone(), run_id.clone());
    let replay =
        tokio::task::spawn_blocking(move || openai_bin(&b, &d, &["replay", &id, "--json"]))
            .await
            .unwrap();

    // THEN the log is identical and the server was not asked anything
    let summary: Value = serde_json::from_slice(&replay.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&replay.stderr)));
    assert_eq!(summary["outcome"], "identical", "{summary}");
    assert_eq!(summary["answeredFromRecord"], 4);
    assert_eq!(seen.lock().unwrap().len(), 4, "a replay sends no request");

    // WHEN it is forked from its QA step
    let (b, d, id) = (base.clone(), db.clone(), run_id.clone());
    let fork = tokio::task::spawn_blocking(move || {
        openai_bin(&b, &d, &["fork", &id, "--from", "s3", "--json"])
    })
    .await
    .unwrap();

    // THEN it completes having asked the server once more, for QA only
    assert!(
        fork.status.success(),
        "{}",
        String::from_utf8_lossy(&fork.stderr)
    );
    let roles = mock_openai::roles(&seen);
    assert_eq!(roles.len(), 5, "{roles:?}");
    assert!(roles[4].starts_with("You are the QA reviewer"), "{roles:?}");
    // AND its QA reviewed the recorded draft
    let qa_request = seen.lock().unwrap()[4].1.to_string();
    assert!(qa_request.contains(&DRAFT.concat().replace('\n', "\\n")));
}
