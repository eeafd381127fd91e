//! A local OpenAI-compatible server (on 127.0.0.1:0) that answers as each role would,
//! recognising the role by its system prompt, and keeps every request it was sent.

#![allow(dead_code)] // each test binary uses part of it

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub const KEY: &str = "sk-e2e-secret-key";
pub const DRAFT: [&str; 3] = [
    "Acme Sync keeps every file in step. ",
    "Edit on your laptop, find it on your phone. ",
    "Try it free today at acme.example/sync.",
];

pub type Seen = Arc<Mutex<Vec<(HeaderMap, Value)>>>;

/// What each role answers; the writer's reply is streamed when asked to stream.
pub fn reply_for(system: &str) -> String {
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

/// Starts the server on this runtime: its `/v1` base URL and the requests it will see.
pub async fn start() -> (String, Seen) {
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
    (base, seen)
}

/// The server on a runtime of its own, for tests that are not async: it lives as long as the
/// returned runtime.
pub fn start_blocking() -> (tokio::runtime::Runtime, String, Seen) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (base, seen) = runtime.block_on(start());
    (runtime, base, seen)
}

/// The first line of each request's system prompt, in order: which roles were asked.
pub fn roles(seen: &Seen) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|(_, b)| {
            b["messages"][0]["content"]
                .as_str()
                .unwrap_or_default()
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}
