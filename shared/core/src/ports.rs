//! The ports: what the engine's drivers need from the outside world. Adapters live in other
//! crates (store, llm); fakes for tests live behind the `test-util` feature.

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::engine::RunState;
use crate::event::{Event, Frame};
use crate::types::{RunReport, RunSummary, StepResult, Usage};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("run {0} not found")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// The result of creating a run: a new one, or the one an idempotency key already named.
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    New { frames: Vec<Frame> },
    Existing { run_id: String },
}

/// Durable runs: state snapshots (with plan versions), step results and reports.
#[async_trait]
pub trait RunStore: Send + Sync {
    /// Stores a new run with its first events, once per idempotency key.
    async fn create_run(&self, state: &RunState, events: &[Event]) -> Result<Created, StoreError>;
    /// Saves the state and appends the events its transition emitted, atomically: a crash
    /// leaves both or neither.
    async fn commit(&self, state: &RunState, events: &[Event]) -> Result<Vec<Frame>, StoreError>;
    async fn load_run(&self, run_id: &str) -> Result<Option<RunState>, StoreError>;
    /// Most recent first; `before_ms` pages by creation time.
    async fn list_runs(
        &self,
        limit: usize,
        before_ms: Option<u64>,
    ) -> Result<Vec<RunSummary>, StoreError>;
    /// Writes the result of (run, step, attempt) once; returns whichever result is stored.
    async fn put_step_result(
        &self,
        run_id: &str,
        result: &StepResult,
    ) -> Result<StepResult, StoreError>;
    async fn get_step_result(
        &self,
        run_id: &str,
        step_id: &str,
        attempt: u32,
    ) -> Result<Option<StepResult>, StoreError>;
    /// Every stored result of the run, in the order they were written.
    async fn step_results(&self, run_id: &str) -> Result<Vec<StepResult>, StoreError>;
    async fn put_report(&self, report: &RunReport) -> Result<(), StoreError>;
    async fn get_report(&self, run_id: &str) -> Result<Option<RunReport>, StoreError>;
}

/// The per-run event log: gap-free seqs from 1.
#[async_trait]
pub trait EventLog: Send + Sync {
    async fn append(&self, run_id: &str, events: &[Event]) -> Result<Vec<Frame>, StoreError>;
    async fn read_after(
        &self,
        run_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Frame>, StoreError>;
    /// Returns once the run has a frame after `after`, or when `timeout` passes. A store that
    /// cannot notify polls.
    async fn wait_beyond(
        &self,
        run_id: &str,
        after: u64,
        timeout: Duration,
    ) -> Result<(), StoreError>;
}

pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatRole {
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: ChatRole,
    pub content: String,
}

impl ChatMessage {
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: ChatRole::User,
            content: content.into(),
        }
    }
}

/// What a model call is for: providers ignore it; telemetry and the offline model use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    Plan,
    Strategy,
    Generate,
    Review,
    Chat,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRequest {
    pub purpose: Purpose,
    pub system: String,
    pub messages: Vec<ChatMessage>,
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
    /// The reply must be one JSON object.
    pub json: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelResponse {
    pub text: String,
    pub usage: Usage,
}

/// A piece of a streamed reply; `Usage` comes once, at the end.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    Text(String),
    Usage(Usage),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub provider: String,
    pub model: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("the model provider is throttling requests: {0}")]
    Throttled(String),
    #[error("the model call timed out after {0} ms")]
    Timeout(u64),
    #[error("could not reach the model provider: {0}")]
    Transport(String),
    #[error("the model provider answered {status}: {message}")]
    Provider { status: u16, message: String },
    #[error("the reply stream broke off: {0}")]
    StreamBroken(String),
    #[error("the model's reply is unusable: {0}")]
    Invalid(String),
}

impl ModelError {
    /// Worth another attempt: throttling, timeouts, transport trouble, 5xx, broken streams.
    pub fn retryable(&self) -> bool {
        match self {
            ModelError::Throttled(_)
            | ModelError::Timeout(_)
            | ModelError::Transport(_)
            | ModelError::StreamBroken(_) => true,
            ModelError::Provider { status, .. } => *status == 429 || *status >= 500,
            ModelError::Invalid(_) => false,
        }
    }
}

/// A language model, behind which each provider keeps its wire types private.
#[async_trait]
pub trait Model: Send + Sync {
    fn info(&self) -> ModelInfo;
    async fn complete(&self, request: ModelRequest) -> Result<ModelResponse, ModelError>;
    /// Streams the reply's text in order, then its usage.
    fn stream(&self, request: ModelRequest) -> BoxStream<'_, Result<StreamItem, ModelError>>;
}

/// Waits at most `timeout` on a store, for callers that must not hang forever.
pub fn clamp_wait(timeout: Duration) -> Duration {
    timeout.min(Duration::from_secs(60))
}
