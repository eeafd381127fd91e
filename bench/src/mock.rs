//! A small OpenAI-compatible chat completions server for benchmarks.
//!
//! The reply of each call is scripted per role, the role being read from the system prompt (or
//! an `x-mock-role` header): the planner, strategist, writer and QA reviewer of the built-in
//! prompts. The script is the offline model's (`OfflineModel::reply`), so the reference workload
//! runs its reference path: a first draft that QA fails, a replan, a revision that passes.
//!
//! Timing is scheduled, not best-effort: chunk `i` of a reply (4 characters each) is sent at
//! `arrival + ttft + i * chunk_delay`, against absolute deadlines on a thread that sleeps with
//! the OS timer (tokio's timer rounds up to whole milliseconds, which over 600 chunks would add
//! up to hundreds of ms of the mock's own lateness). A non-streamed call is answered whole at
//! the time its last chunk would have been sent. `GET /stats` reports the calls, chunks and the
//! scheduled model time so far, and how late the mock actually was.
//!
//! Throttling on demand ([`Throttle`], `mock-llm --throttle-first qa:2`): the first N requests of
//! a role answer HTTP 429 with an OpenAI-style `rate_limit_exceeded` error and `retry-after: 0`,
//! then the role behaves normally; so a test can drive a provider's throttling path (a
//! specialist's `ModelThrottled`, the state machine's Retry) deterministically.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures::StreamExt;
use orchestrator_core::ports::{ModelRequest, Purpose};
use orchestrator_llm::OfflineModel;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Characters per streamed chunk.
pub const CHUNK_CHARS: usize = 4;

#[derive(Debug, Clone, Copy, Default)]
pub struct MockConfig {
    pub ttft: Duration,
    pub chunk_delay: Duration,
    /// How many of the first requests of each role answer 429.
    pub throttle: Throttle,
}

/// The index of a role in the per-role tables.
fn role_index(purpose: Purpose) -> usize {
    match purpose {
        Purpose::Plan => 0,
        Purpose::Strategy => 1,
        Purpose::Generate => 2,
        Purpose::Review => 3,
        Purpose::Chat => 4,
    }
}

/// A role's name on the command line: `plan`/`planner`, `strategy`/`strategist`,
/// `generation`/`generate`/`writer`, `qa`/`review`/`reviewer`, `chat` (any case).
pub fn parse_role(name: &str) -> Result<Purpose, String> {
    match name.trim().to_ascii_lowercase().as_str() {
        "plan" | "planner" => Ok(Purpose::Plan),
        "strategy" | "strategist" => Ok(Purpose::Strategy),
        "generation" | "generate" | "writer" => Ok(Purpose::Generate),
        "qa" | "review" | "reviewer" => Ok(Purpose::Review),
        "chat" => Ok(Purpose::Chat),
        other => Err(format!(
            "unknown role {other:?} (planner, strategy, generation, qa, chat)"
        )),
    }
}

/// How many of the first requests of each role the mock answers with HTTP 429.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Throttle {
    first: [u64; 5],
}

impl Throttle {
    /// Throttles the first `n` requests of `role` (replacing what was set for it).
    pub fn with(mut self, role: Purpose, n: u64) -> Self {
        self.first[role_index(role)] = n;
        self
    }

    /// How many of the first requests of `role` are throttled.
    pub fn first(&self, role: Purpose) -> u64 {
        self.first[role_index(role)]
    }

    /// Adds `ROLE[:N][,ROLE[:N]...]` (N defaults to 1) to what is set.
    pub fn add_spec(mut self, spec: &str) -> Result<Self, String> {
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (role, n) = match part.split_once(':') {
                Some((role, n)) => {
                    let n = n
                        .trim()
                        .parse::<u64>()
                        .map_err(|_| format!("{part:?}: N must be a whole number (ROLE[:N])"))?;
                    (role, n)
                }
                None => (part, 1),
            };
            self = self.with(parse_role(role)?, n);
        }
        Ok(self)
    }
}

impl FromStr for Throttle {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        Throttle::default().add_spec(spec)
    }
}

#[derive(Debug, Default)]
struct Counters {
    calls: AtomicU64,
    streamed_calls: AtomicU64,
    chunks: AtomicU64,
    streamed_chunks: AtomicU64,
    scheduled_us: AtomicU64,
    late_us: AtomicU64,
    late_max_us: AtomicU64,
    throttled: AtomicU64,
    /// Timed calls in progress.
    active: AtomicU64,
    /// Requests seen per role (by `role_index`), for [`Throttle`].
    per_role: [AtomicU64; 5],
}

/// What `GET /stats` answers.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct MockStats {
    pub calls: u64,
    pub streamed_calls: u64,
    /// Chunks of every reply (a non-streamed reply counts the chunks it would have had).
    pub chunks: u64,
    pub streamed_chunks: u64,
    /// Sum over calls of ttft + (chunks - 1) * chunk_delay.
    pub scheduled_us: u64,
    /// How much later than scheduled the mock handed the last byte of each reply to its
    /// connection (the wait's own lateness; the write follows at once on the same thread),
    /// summed.
    pub late_us: u64,
    pub late_max_us: u64,
    /// Requests answered 429 by `--throttle-first`.
    #[serde(default)]
    pub throttled: u64,
}

impl MockStats {
    pub fn minus(&self, before: &MockStats) -> MockStats {
        MockStats {
            calls: self.calls - before.calls,
            streamed_calls: self.streamed_calls - before.streamed_calls,
            chunks: self.chunks - before.chunks,
            streamed_chunks: self.streamed_chunks - before.streamed_chunks,
            scheduled_us: self.scheduled_us - before.scheduled_us,
            late_us: self.late_us - before.late_us,
            late_max_us: self.late_max_us,
            throttled: self.throttled - before.throttled,
        }
    }
}

struct Mock {
    config: MockConfig,
    model: OfflineModel,
    counters: Counters,
}

/// Serves the mock on a free loopback port, on the current runtime (for tests); its address.
pub async fn spawn_on_loopback(config: MockConfig) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router(config)).await });
    Ok(addr)
}

pub fn router(config: MockConfig) -> Router {
    let mock = Arc::new(Mock {
        config,
        model: OfflineModel::default(),
        counters: Counters::default(),
    });
    Router::new()
        .route("/v1/chat/completions", post(completions))
        .route("/chat/completions", post(completions))
        .route("/stats", get(stats))
        .with_state(mock)
}

async fn stats(State(mock): State<Arc<Mock>>) -> axum::Json<MockStats> {
    let c = &mock.counters;
    axum::Json(MockStats {
        calls: c.calls.load(Ordering::Relaxed),
        streamed_calls: c.streamed_calls.load(Ordering::Relaxed),
        chunks: c.chunks.load(Ordering::Relaxed),
        streamed_chunks: c.streamed_chunks.load(Ordering::Relaxed),
        scheduled_us: c.scheduled_us.load(Ordering::Relaxed),
        late_us: c.late_us.load(Ordering::Relaxed),
        late_max_us: c.late_max_us.load(Ordering::Relaxed),
        throttled: c.throttled.load(Ordering::Relaxed),
    })
}

#[derive(Deserialize)]
struct WireRequest {
    #[serde(default)]
    messages: Vec<WireMessage>,
    #[serde(default)]
    stream: bool,
}

#[derive(Deserialize)]
struct WireMessage {
    role: String,
    #[serde(default)]
    content: Value,
}

/// The role a request plays, from the `x-mock-role` header or the system prompt.
pub fn role_of(system: &str, header: Option<&str>) -> Purpose {
    let hint = header.unwrap_or(system).to_ascii_lowercase();
    if hint.starts_with("plan") || hint.contains("you are the planner") {
        Purpose::Plan
    } else if hint.starts_with("strateg") || hint.contains("you are the strategist") {
        Purpose::Strategy
    } else if hint.starts_with("writ")
        || hint.starts_with("gen")
        || hint.contains("you are the writer")
    {
        Purpose::Generate
    } else if hint.starts_with("qa") || hint.contains("you are the qa reviewer") {
        Purpose::Review
    } else {
        Purpose::Chat
    }
}

/// Splits a reply into chunks of [`CHUNK_CHARS`] characters.
pub fn chunks_of(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars
        .chunks(CHUNK_CHARS)
        .map(|c| c.iter().collect())
        .collect()
}

fn content_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

async fn completions(State(mock): State<Arc<Mock>>, headers: HeaderMap, body: Bytes) -> Response {
    let arrived = Instant::now();
    let Ok(req) = serde_json::from_slice::<WireRequest>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": {"message": "not a chat completions request"}})),
        )
            .into_response();
    };
    let system = req
        .messages
        .iter()
        .find(|m| m.role == "system")
        .map(|m| content_text(&m.content))
        .unwrap_or_default();
    let header_role = headers.get("x-mock-role").and_then(|v| v.to_str().ok());
    let purpose = role_of(&system, header_role);
    if let Some(refused) = throttle(&mock, purpose) {
        return refused;
    }
    let request = match model_request(&req.messages, purpose, system) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(json!({"error": {"message": format!("mock: {e}")}})),
            )
                .into_response();
        }
    };
    let text = mock.model.reply(&request);
    let usage = token_usage(body.len(), &text);
    let chunks = chunks_of(&text);
    let n = chunks.len().max(1) as u32;
    let cfg = mock.config;
    let scheduled = cfg.ttft + cfg.chunk_delay * (n - 1);
    let c = &mock.counters;
    c.calls.fetch_add(1, Ordering::Relaxed);
    c.chunks.fetch_add(u64::from(n), Ordering::Relaxed);
    c.scheduled_us
        .fetch_add(scheduled.as_micros() as u64, Ordering::Relaxed);
    let timed = !cfg.ttft.is_zero() || !cfg.chunk_delay.is_zero();
    // While this call is timed, a few calls at once may spin out the last stretch of a wait.
    // Counted until the reply is sent (for a stream: until the connection drops its body).
    let active = timed.then(|| Active::enter(&mock));
    if !req.stream {
        let due = timed.then_some(arrived + scheduled);
        return whole_reply(&mock, &text, usage, due).await;
    }
    c.streamed_calls.fetch_add(1, Ordering::Relaxed);
    c.streamed_chunks.fetch_add(u64::from(n), Ordering::Relaxed);
    let frames = sse_frames(&chunks, &usage, arrived, cfg);
    streamed_reply(mock, frames, timed, active)
}

/// The 429 for a request among the first ones of its role the mock is told to throttle.
fn throttle(mock: &Mock, purpose: Purpose) -> Option<Response> {
    let limit = mock.config.throttle.first(purpose);
    if limit == 0 {
        return None;
    }
    // Counted whatever the answer, so exactly the first `limit` requests are throttled
    // however many arrive at once.
    let seen = mock.counters.per_role[role_index(purpose)].fetch_add(1, Ordering::Relaxed);
    if seen >= limit {
        return None;
    }
    mock.counters.throttled.fetch_add(1, Ordering::Relaxed);
    Some(throttled(purpose, seen + 1, limit))
}

/// The offline model's request for the conversation.
fn model_request(
    messages: &[WireMessage],
    purpose: Purpose,
    system: String,
) -> Result<ModelRequest, serde_json::Error> {
    // Built through serde so the mock keeps compiling as the Model port grows optional fields.
    let messages: Vec<Value> = messages
        .iter()
        .filter(|m| m.role == "user" || m.role == "assistant")
        .map(|m| json!({"role": m.role, "content": content_text(&m.content)}))
        .collect();
    serde_json::from_value(json!({
        "purpose": purpose,
        "system": system,
        "messages": messages,
        "temperature": null,
        "max_tokens": null,
        "json": false,
    }))
}

/// Token counts at 4 bytes a token, in and out.
fn token_usage(input_bytes: usize, text: &str) -> Value {
    json!({
        "prompt_tokens": input_bytes.div_ceil(4),
        "completion_tokens": text.len().div_ceil(4),
        "total_tokens": input_bytes.div_ceil(4) + text.len().div_ceil(4),
    })
}

/// A non-streamed answer, sent at `due` when the call is timed.
async fn whole_reply(mock: &Mock, text: &str, usage: Value, due: Option<Instant>) -> Response {
    // Built before the wait, so the reply goes out the moment it is due.
    let reply = json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "model": "mock",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": usage,
    });
    let body = Bytes::from(reply.to_string());
    if let Some(due) = due {
        let late = wait_until(mock, due).await;
        record_late(mock, late);
    }
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The SSE frames of a streamed answer, each with the time it is due; the last one carries
/// the finish reason, the usage and `[DONE]`.
fn sse_frames(
    chunks: &[String],
    usage: &Value,
    arrived: Instant,
    cfg: MockConfig,
) -> Vec<(Instant, Bytes)> {
    let last = chunks.len().saturating_sub(1);
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let data = json!({
                "id": "chatcmpl-mock",
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": chunk}, "finish_reason": null}],
            });
            let mut frame = format!("data: {data}\n\n");
            if i == last {
                let end = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
                let usage = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk",
                    "choices": [], "usage": usage});
                frame.push_str(&format!("data: {end}\n\ndata: {usage}\n\ndata: [DONE]\n\n"));
            }
            (
                arrived + cfg.ttft + cfg.chunk_delay * i as u32,
                Bytes::from(frame),
            )
        })
        .collect()
}

/// A streamed answer: each frame written when it is due (when the call is timed). `active`
/// is held until the connection drops the body.
fn streamed_reply(
    mock: Arc<Mock>,
    frames: Vec<(Instant, Bytes)>,
    timed: bool,
    active: Option<Arc<Active>>,
) -> Response {
    let last = frames.len().saturating_sub(1);
    // Each chunk is handed to the connection by the task that writes it, as soon as it is
    // due: no other thread or task sits between the wait and the write.
    let stream =
        futures::stream::iter(frames.into_iter().enumerate()).then(move |(i, (at, bytes))| {
            let mock = mock.clone();
            let _counted = active.clone();
            async move {
                if timed {
                    // The wait blocks its thread, so the connection would only see more
                    // chunks ready and write them out in bursts (hyper flushes when the body
                    // is pending, or after 16 buffers): pending once first, and the chunk
                    // before this one is flushed now.
                    if i > 0 {
                        tokio::task::yield_now().await;
                    }
                    let late = wait_until(&mock, at).await;
                    if i == last {
                        record_late(&mock, late);
                    }
                }
                Ok::<_, std::convert::Infallible>(bytes)
            }
        });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Counts the timed calls in progress (see [`SPIN_MAX_ACTIVE`]).
struct Active(Arc<Mock>);

impl Active {
    fn enter(mock: &Arc<Mock>) -> Arc<Self> {
        mock.counters.active.fetch_add(1, Ordering::Relaxed);
        Arc::new(Active(mock.clone()))
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.counters.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// OpenAI's answer to a request over the rate limit: 429, `retry-after`, a `rate_limit_exceeded`
/// error body.
fn throttled(purpose: Purpose, nth: u64, limit: u64) -> Response {
    let role = ["planner", "strategy", "generation", "qa", "chat"][role_index(purpose)];
    let body = json!({"error": {
        "message": format!(
            "Rate limit reached for mock on requests per min (RPM): the mock throttles the first \
             {limit} {role} request(s) (--throttle-first); this is {nth}. Please try again in 0s."
        ),
        "type": "requests",
        "param": null,
        "code": "rate_limit_exceeded",
    }});
    (
        StatusCode::TOO_MANY_REQUESTS,
        [
            (header::RETRY_AFTER, "0"),
            (
                header::HeaderName::from_static("x-ratelimit-remaining-requests"),
                "0",
            ),
        ],
        axum::Json(body),
    )
        .into_response()
}

/// The last stretch of a wait is spun rather than slept when at most this many timed calls are
/// in progress: a sleeping thread wakes tens to hundreds of microseconds late (timer slack,
/// an idle vCPU), and that would be the mock's lateness charged to the client. Above it the
/// spinning would cost more CPU than the machine has, so waits only sleep.
pub const SPIN_MAX_ACTIVE: u64 = 2;
/// How long before the deadline a wait stops sleeping and spins.
const SPIN: Duration = Duration::from_micros(200);

/// Waits until `at`, with the OS timer and then spinning (see [`SPIN_MAX_ACTIVE`]); returns how
/// late it was. On a multi-thread runtime the wait blocks the task's own thread
/// (`block_in_place`), so what follows it (writing the reply) runs at once on that thread; on
/// a current-thread runtime it waits on the blocking pool.
async fn wait_until(mock: &Mock, at: Instant) -> Duration {
    if at <= Instant::now() {
        return Instant::now().saturating_duration_since(at);
    }
    let spin = mock.counters.active.load(Ordering::Relaxed) <= SPIN_MAX_ACTIVE;
    let wait = move || {
        let now = Instant::now();
        let sleep_until = if spin {
            at.checked_sub(SPIN).unwrap_or(at)
        } else {
            at
        };
        if sleep_until > now {
            std::thread::sleep(sleep_until - now);
        }
        while Instant::now() < at {
            std::hint::spin_loop();
        }
        Instant::now().saturating_duration_since(at)
    };
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => {
            tokio::task::spawn_blocking(wait).await.unwrap_or_default()
        }
        _ => tokio::task::block_in_place(wait),
    }
}

fn record_late(mock: &Mock, late: Duration) {
    let us = late.as_micros() as u64;
    mock.counters.late_us.fetch_add(us, Ordering::Relaxed);
    mock.counters.late_max_us.fetch_max(us, Ordering::Relaxed);
}
