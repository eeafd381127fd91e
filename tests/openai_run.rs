#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the assertion in a test

//! End to end with a real provider adapter: the `orchestrator` binary with MODEL_PROVIDER=openai
//! against a local OpenAI-compatible server (on 127.0.0.1:0) that answers as each role would,
//! recognising the role by its system prompt.

use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

const KEY: &str = "sk-e2e-secret-key";
const DRAFT: [&str; 3] = [
    "Acme Sync keeps every file in step. ",
    "Edit on your laptop, find it on your phone. ",
    "Try it free today at acme.example/sync.",
];

type Seen = Arc<Mutex<Vec<(HeaderMap, Value)>>>;

/// What each role answers; the writer's reply is streamed when asked to stream.
fn reply_for(system: &str) -> String {
    if system.starts_with("You are the planner") {
        json!({"stepsAdd": [
            {"id": "s1", "capabilityId": "strategy", "label": "Define the angle"},
            {"id": "s2", "capabilityId": "generation", "label": "Write the draft", "dependsOn": ["s1"]},
            {"id": "s3", "capabilityId": "qa", "label": "Review the draft", "dependsOn": ["s2"]},
            {"id": "s4", "action": "finalize", "label": "Assemble the result", "dependsOn": ["s3"]}
        ]})
        .to_string()
    } else if system.starts_with("You are the strategist") {
        json!({"audience": "busy teams", "angle": "never lose a file", "keyMessages": ["sync", "speed", "safety"],
               "tone": "friendly", "callToAction": "Try it free", "platform": "blog"})
        .to_string()
    } else if system.starts_with("You are the QA reviewer") {
        json!({"score": 0.92, "pass": true, "issues": [], "criteria": []}).to_string()
    } else {
        DRAFT.concat()
    }
}

async fn chat_completions(
    State(seen): State<Seen>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    seen.lock().unwrap().push((headers, body.clone()));
    let system = body["messages"][0]["content"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let text = reply_for(&system);
    if body["stream"] == true {
        let mut sse = String::new();
        let pieces: Vec<String> = if text == DRAFT.concat() {
            DRAFT.iter().map(|s| s.to_string()).collect()
        } else {
            vec![text]
        };
        for p in pieces {
            let chunk =
                json!({"choices": [{"index": 0, "delta": {"content": p}, "finish_reason": null}]});
            sse.push_str(&format!("data: {chunk}\n\n"));
        }
        sse.push_str(&format!(
            "data: {}\n\n",
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        ));
        sse.push_str(&format!(
            "data: {}\n\n",
            json!({"choices": [], "usage": {"prompt_tokens": 100, "completion_tokens": 30}})
        ));
        sse.push_str("data: [DONE]\n\n");
        ([("content-type", "text/event-stream")], Body::from(sse)).into_response()
    } else {
        Json(json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 50, "completion_tokens": 20}}))
        .into_response()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_against_an_openai_compatible_server_completes_and_names_its_model() {
    // GIVEN a local OpenAI-compatible server and a fresh database
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route(
            "/v1/chat/completions",
            axum::routing::post(chat_completions),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
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
    let seen = seen.lock().unwrap().clone();
    let roles: Vec<String> = seen
        .iter()
        .map(|(_, b)| {
            b["messages"][0]["content"]
                .as_str()
                .unwrap()
                .lines()
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
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
