//! The harness: a real server on 127.0.0.1:0 over a fresh SQLite store and the offline model,
//! a real HTTP client, and an SSE reader built on `SseParser`.

#![allow(dead_code)] // each test binary uses a part of the harness

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use orchestrator_agents::{Planner, default_specialists};
use orchestrator_api::{ApiConfig, LocalControl};
use orchestrator_core::event::SseParser;
use orchestrator_core::ports::{Model, SystemClock};
use orchestrator_llm::OfflineModel;
use orchestrator_runner::{Runner, RunnerConfig};
use orchestrator_store::SqliteStore;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// No wait in these tests is a measurement: a deadline only stops a broken test from hanging.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub const OBJECTIVE: &str = "Write a launch post for Acme Sync, our file sync app";

/// What a test server is built with.
pub struct Setup {
    /// Pause between the offline model's streamed chunks; non-zero keeps a run in progress.
    pub chunk_delay: Duration,
    /// `LocalControl`'s limit of runs in progress.
    pub max_active: usize,
    pub api: ApiConfig,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            chunk_delay: Duration::ZERO,
            max_active: 16,
            api: ApiConfig::default(),
        }
    }
}

impl Setup {
    /// A model slow enough that a run is still in progress while a test acts on it.
    pub fn slow() -> Self {
        Self {
            chunk_delay: Duration::from_millis(3),
            ..Self::default()
        }
    }
}

pub struct Server {
    pub base: String,
    pub client: reqwest::Client,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// GIVEN a server on a fresh store: the Router of `orchestrator_api` over a `LocalControl`.
pub async fn serve(setup: Setup) -> Server {
    let store = Arc::new(SqliteStore::open_in_memory().expect("an in-memory store"));
    let model: Arc<dyn Model> = Arc::new(OfflineModel::new(setup.chunk_delay));
    let runner = Runner::new(
        store.clone(),
        Planner::new(model.clone()),
        default_specialists(model),
        Arc::new(SystemClock),
        RunnerConfig::default(),
    );
    let control = Arc::new(LocalControl::new(runner, setup.max_active));
    let app = orchestrator_api::router(control, store, setup.api);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let addr = listener.local_addr().expect("the bound address");
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("the server runs");
    });
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("an HTTP client");
    Server {
        base: format!("http://{addr}"),
        client,
        task,
    }
}

/// A run request with the default mode and the given options.
pub fn request(options: Value) -> Value {
    json!({ "objective": OBJECTIVE, "options": options })
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path))
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(self.url(path))
    }

    /// POST /api/v1/agent/run.stream, expecting 200 and an SSE body.
    pub async fn run_stream(&self, body: &Value) -> Sse {
        let response = send(self.post("/api/v1/agent/run.stream").json(body)).await;
        Sse::new(expect_ok_stream(response))
    }

    /// POST /api/v1/runs, expecting 202; the runId.
    pub async fn start(&self, body: &Value) -> String {
        let response = send(self.post("/api/v1/runs").json(body)).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let v: Value = response.json().await.expect("a JSON start response");
        v["runId"].as_str().expect("a runId").to_owned()
    }

    /// GET /api/v1/runs/{id}/events with `Last-Event-ID` when `after` is given.
    pub async fn events(&self, run_id: &str, after: Option<u64>) -> Sse {
        let mut req = self.get(&format!("/api/v1/runs/{run_id}/events"));
        if let Some(k) = after {
            req = req.header("Last-Event-ID", k.to_string());
        }
        Sse::new(expect_ok_stream(send(req).await))
    }

    /// GET /api/v1/runs/{id}: 200 and the run as JSON.
    pub async fn run(&self, run_id: &str) -> Value {
        let response = send(self.get(&format!("/api/v1/runs/{run_id}"))).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("a JSON run")
    }

    /// The runs GET /api/v1/runs lists.
    pub async fn runs(&self) -> Vec<Value> {
        let response = send(self.get("/api/v1/runs")).await;
        assert_eq!(response.status(), StatusCode::OK);
        let v: Value = response.json().await.expect("a JSON run list");
        v["runs"].as_array().expect("a runs array").clone()
    }

    /// Polls GET /api/v1/runs/{id} until its status is terminal (or the deadline passes).
    pub async fn settled(&self, run_id: &str) -> Value {
        let poll = async {
            loop {
                let run = self.run(run_id).await;
                let status = run["status"].as_str().unwrap_or_default();
                if !matches!(status, "running" | "pending_hitl") {
                    return run;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(DEADLINE, poll)
            .await
            .unwrap_or_else(|_| panic!("run {run_id} did not finish"))
    }
}

pub async fn send(request: reqwest::RequestBuilder) -> reqwest::Response {
    tokio::time::timeout(DEADLINE, request.send())
        .await
        .expect("the server answers")
        .expect("the request is sent")
}

/// Checks the SSE response headers.
pub fn expect_ok_stream(response: reqwest::Response) -> reqwest::Response {
    assert_eq!(response.status(), StatusCode::OK);
    let h = response.headers();
    assert_eq!(h["content-type"], "text/event-stream");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-accel-buffering"], "no");
    response
}

/// Checks an error answer: the status and `{"error": {"code", "message", "field"?}}`.
pub async fn expect_error(
    response: reqwest::Response,
    status: StatusCode,
    code: &str,
    field: Option<&str>,
) -> Value {
    assert_eq!(response.status(), status);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap_or_default()
            .starts_with("application/json")
    );
    let body: Value = response.json().await.expect("a JSON error body");
    let error = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("no error object in {body}"));
    assert_eq!(error["code"], code, "{body}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "an error says what is wrong: {body}");
    assert_eq!(error.get("field").and_then(Value::as_str), field, "{body}");
    let known = ["code", "message", "field"];
    assert!(error.keys().all(|k| known.contains(&k.as_str())), "{body}");
    body
}

/// One SSE frame, checked against the contract as it is read.
#[derive(Debug, Clone, PartialEq)]
pub struct Ev {
    pub id: u64,
    pub event: String,
    pub data: Value,
}

impl Ev {
    pub fn status(&self) -> Option<&str> {
        self.data["status"].as_str()
    }
}

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// An SSE response body read incrementally.
pub struct Sse {
    body: Body,
    parser: SseParser,
    ready: VecDeque<Ev>,
    /// Every byte received, comments included.
    pub raw: Vec<u8>,
    ended: bool,
}

impl Sse {
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            body: Box::pin(response.bytes_stream()),
            parser: SseParser::default(),
            ready: VecDeque::new(),
            raw: Vec::new(),
            ended: false,
        }
    }

    /// Reads one more chunk off the network; false at the end of the body.
    async fn pull(&mut self) -> bool {
        if self.ended {
            return false;
        }
        let chunk = tokio::time::timeout(DEADLINE, self.body.next())
            .await
            .expect("the stream stalled");
        match chunk {
            Some(chunk) => {
                let chunk = chunk.expect("the stream is readable");
                self.raw.extend_from_slice(&chunk);
                for f in self.parser.push_bytes(&chunk) {
                    let data_line = f.data.clone();
                    assert!(!data_line.contains('\n'), "data is one line: {data_line:?}");
                    let data: Value = serde_json::from_str(&data_line)
                        .unwrap_or_else(|e| panic!("data is JSON ({e}): {data_line}"));
                    let event = f.event.expect("every frame names its event");
                    assert_eq!(data["type"], event.as_str(), "type is the event name");
                    assert!(data["correlationId"].is_string(), "{data}");
                    assert!(data["runId"].is_string(), "{data}");
                    let id =
                        f.id.expect("every frame has an id")
                            .parse()
                            .expect("the id is a seq");
                    self.ready.push_back(Ev { id, event, data });
                }
                true
            }
            None => {
                self.ended = true;
                false
            }
        }
    }

    /// The next frame, or None at the end of the body.
    pub async fn next(&mut self) -> Option<Ev> {
        loop {
            if let Some(ev) = self.ready.pop_front() {
                return Some(ev);
            }
            if !self.pull().await {
                return None;
            }
        }
    }

    /// Frames up to and including the first one `stop` accepts.
    pub async fn until(&mut self, stop: impl Fn(&Ev) -> bool) -> Vec<Ev> {
        let mut out = Vec::new();
        loop {
            let ev = self
                .next()
                .await
                .unwrap_or_else(|| panic!("the stream ended before the frame waited for: {out:?}"));
            let done = stop(&ev);
            out.push(ev);
            if done {
                return out;
            }
        }
    }

    /// Every remaining frame, to the end of the body.
    pub async fn rest(&mut self) -> Vec<Ev> {
        let mut out = Vec::new();
        while let Some(ev) = self.next().await {
            out.push(ev);
        }
        out
    }

    /// Reads until the raw body holds `n` ping comments (frames read meanwhile are kept).
    pub async fn pings(&mut self, n: usize) {
        while count(&self.raw, b": ping\n\n") < n {
            assert!(self.pull().await, "the stream ended before {n} pings");
        }
    }
}

pub fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

pub fn is(kind: &'static str) -> impl Fn(&Ev) -> bool {
    move |ev| ev.event == kind
}

/// Asserts the ids are `from, from+1, ...` without a gap or a repeat.
pub fn assert_consecutive(frames: &[Ev], from: u64) {
    let ids: Vec<u64> = frames.iter().map(|f| f.id).collect();
    let want: Vec<u64> = (from..from + frames.len() as u64).collect();
    assert_eq!(ids, want, "ids are gap-free and in order");
}
