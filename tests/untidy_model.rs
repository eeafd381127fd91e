#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the assertion in a test

//! No run lost to one bad reply: the `orchestrator` binary with MODEL_PROVIDER=openai against
//! a local OpenAI-compatible server that answers as real models do when JSON is not enforced:
//! the planner garbled once, the strategist in prose, QA in each form models write its score,
//! and one 429 on the writer. Every run completes, and the stream says what was retried.

use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// QA verdicts as models write them; each run gets the next.
const VERDICTS: &[&str] = &[
    r#"{"score": "0.9", "pass": "yes", "issues": []}"#,
    r#"Here is my review: {"Score": "9/10", "Pass": "pass", "Issues": [{"message": "a bit long"}]}"#,
    r#"```json
{"rating": "90%", "passed": true, "problems": ["none worth a revision"],}
```"#,
    r#"<think>The draft has a call to action.</think>{'score': 9, 'pass': True, 'issues': []}"#,
    r#"{"verdict": {"score": 0.88, "pass": "Yes", "issues": "minor wording"}}"#,
];

#[derive(Default)]
struct Script {
    planner_calls: usize,
    writer_calls: usize,
    qa_calls: usize,
}

type Shared = Arc<Mutex<Script>>;

fn completion(text: &str) -> Response {
    Json(json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 50, "completion_tokens": 20}}))
    .into_response()
}

fn streamed(text: &str) -> Response {
    let chunk =
        json!({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]});
    let stop = json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
    let usage = json!({"choices": [], "usage": {"prompt_tokens": 100, "completion_tokens": 30}});
    let sse = format!("data: {chunk}\n\ndata: {stop}\n\ndata: {usage}\n\ndata: [DONE]\n\n");
    ([("content-type", "text/event-stream")], Body::from(sse)).into_response()
}

fn plan() -> String {
    json!({"stepsAdd": [
        {"id": "s1", "capabilityId": "strategy", "label": "Define the angle"},
        {"id": "s2", "capabilityId": "generation", "label": "Write the draft", "dependsOn": ["s1"]},
        {"id": "s3", "capabilityId": "qa", "label": "Review the draft", "dependsOn": ["s2"]},
        {"id": "s4", "action": "finalize", "label": "Assemble the result", "dependsOn": ["s3"]}
    ]})
    .to_string()
}

async fn chat(State(script): State<Shared>, Json(body): Json<Value>) -> Response {
    let system = body["messages"][0]["content"].as_str().unwrap_or_default();
    let mut s = script.lock().unwrap();
    if system.starts_with("You are the planner") {
        s.planner_calls += 1;
        // Every first planner call of a run is garbled (the repair quotes the problem).
        let first_of_run = body["messages"].as_array().is_some_and(|m| m.len() == 2);
        return completion(if first_of_run {
            "Sure! Here is the plan: {steps: [research, write"
        } else {
            Box::leak(plan().into_boxed_str())
        });
    }
    if system.starts_with("You are the strategist") {
        return completion(
            "Approach: problem-first, benchmark-backed. Tone: plain and technical. Length: about \
             150 words. Structure: hook, three bullets, example, limits, call to action.",
        );
    }
    if system.starts_with("You are the QA reviewer") {
        let verdict = VERDICTS[s.qa_calls % VERDICTS.len()];
        s.qa_calls += 1;
        return completion(verdict);
    }
    s.writer_calls += 1;
    if s.writer_calls % 2 == 1 {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "0")],
            Json(json!({"error": {"message": "rate limited, slow down"}})),
        )
            .into_response();
    }
    streamed("Acme Sync keeps every file in step. Try it free today at acme.example/sync.")
}

fn frames(sse: &str) -> Vec<(String, Value)> {
    let mut parser = orchestrator_core::event::SseParser::default();
    parser
        .push(sse)
        .into_iter()
        .map(|f| (f.event.unwrap(), serde_json::from_str(&f.data).unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_complete_against_a_model_that_answers_untidily() {
    // GIVEN a server answering as untidy models do
    let script: Shared = Arc::default();
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(chat))
        .with_state(script.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");

    for (i, verdict) in VERDICTS.iter().enumerate() {
        // WHEN a run is made (its QA answers in the next form)
        let out = tokio::task::spawn_blocking({
            let (base, db) = (base.clone(), db.clone());
            move || {
                Command::new(env!("CARGO_BIN_EXE_orchestrator"))
                    .env_remove("ORCHESTRATOR_STORE")
                    .env_remove("ORCHESTRATOR_PROMPTS_DIR")
                    .env("MODEL_PROVIDER", "openai")
                    .env("MODEL_ID", "untidy")
                    .env("OPENAI_BASE_URL", &base)
                    .env("MODEL_MAX_RETRIES", "2")
                    .arg("--db")
                    .arg(&db)
                    .args(["run", "Write a launch post for Acme Sync", "--json"])
                    .output()
                    .unwrap()
            }
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);

        // THEN it completes, with the QA score read from that form
        assert!(
            out.status.success(),
            "QA form {verdict}: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        let frames = frames(&stdout);
        let (_, complete) = frames.last().unwrap();
        assert_eq!(complete["status"], "completed", "{verdict}");
        let score = complete["data"]["quality"]["score"].as_f64().unwrap();
        assert!((0.85..=0.95).contains(&score), "{verdict}: score {score}");

        // AND the stream says what was retried and what was kept: the planner's garbled
        // reply (attempt 2 of 3, with the cause), the strategist's prose, the writer's 429
        let warnings: Vec<String> = frames
            .iter()
            .filter(|f| f.0 == "warning")
            .map(|f| f.1["message"].as_str().unwrap().to_owned())
            .collect();
        let has = |needle: &str| warnings.iter().any(|w| w.contains(needle));
        assert!(
            has("Asking the planner again (attempt 2 of 3)") && has("could not be used"),
            "run {i}: {warnings:?}"
        );
        assert!(has("answered in prose"), "run {i}: {warnings:?}");
        assert!(
            has("model call was made again (attempt 2)") && has("throttling"),
            "run {i}: {warnings:?}"
        );
        let planner_retry = frames
            .iter()
            .find(|f| f.0 == "warning" && f.1["data"]["agent"] == "planner")
            .unwrap();
        assert_eq!(planner_retry.1["data"]["attempt"], 2);
    }
    // AND the planner was asked twice per run: one garbled reply, one repair
    assert_eq!(script.lock().unwrap().planner_calls, 2 * VERDICTS.len());
}
