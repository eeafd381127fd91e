//! The language model port: requests, replies, streamed pieces and errors. Each provider's
//! adapter (the llm crate) keeps its wire types private behind [`Model`].

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::tools::{ToolCall, ToolChoice, ToolSpec};
use crate::types::Usage;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum ChatRole {
    User,
    Assistant,
    /// The result of a tool call, answering `tool_call_id`.
    Tool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ChatMessage {
    pub role: ChatRole,
    pub content: String,
    /// The calls an assistant message asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// The call a tool message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// A tool message that reports a failure (bad arguments, refused, timed out).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_error: bool,
}

impl ChatMessage {
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: ChatRole::User,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            is_error: false,
        }
    }

    pub fn assistant(content: impl Into<String>, tool_calls: Vec<ToolCall>) -> Self {
        Self {
            role: ChatRole::Assistant,
            content: content.into(),
            tool_calls,
            tool_call_id: None,
            is_error: false,
        }
    }

    /// A tool's result (JSON text) for the call `call_id`.
    pub fn tool_result(
        call_id: impl Into<String>,
        content: impl Into<String>,
        is_error: bool,
    ) -> Self {
        Self {
            role: ChatRole::Tool,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: Some(call_id.into()),
            is_error,
        }
    }
}

/// What a model call is for: providers ignore it; telemetry and the offline model use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    Plan,
    Strategy,
    Generate,
    Review,
    Chat,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ModelRequest {
    pub purpose: Purpose,
    pub system: String,
    pub messages: Vec<ChatMessage>,
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
    /// The reply must be one JSON object.
    pub json: bool,
    /// The shape that JSON object must have, when the caller knows it: providers that can
    /// enforce a schema are given it; the others get JSON mode or only the prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<ReplySchema>,
    /// Tools the model may call; none means a plain completion.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolSpec>,
    #[serde(default)]
    pub tool_choice: ToolChoice,
}

/// A JSON Schema for a structured reply, generated from the Rust type that parses it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ReplySchema {
    /// Names the schema to the provider (OpenAI's `json_schema.name`, Bedrock's tool name):
    /// letters, digits, `_` and `-`, at most 64.
    pub name: String,
    /// A JSON Schema (draft 2020-12 as schemars writes it) of one JSON object.
    pub schema: serde_json::Value,
}

impl ModelRequest {
    /// A request with no tools, no JSON mode and the provider's defaults.
    pub fn new(purpose: Purpose, system: impl Into<String>, messages: Vec<ChatMessage>) -> Self {
        Self {
            purpose,
            system: system.into(),
            messages,
            temperature: None,
            max_tokens: None,
            json: false,
            schema: None,
            tools: Vec::new(),
            tool_choice: ToolChoice::Auto,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelResponse {
    pub text: String,
    pub usage: Usage,
    /// The tools the model asked to call, in order; answer them and call again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// The attempts the adapter made again before this reply (throttling, 5xx), so that the
    /// stream a user watches can say so.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retries: Vec<RetryNote>,
}

/// An attempt of a model call that the adapter made again, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RetryNote {
    /// The attempt that followed (2 for the first retry).
    pub attempt: u32,
    pub cause: String,
}

/// A piece of a streamed reply. A `ToolCall` comes whole once its arguments have streamed in;
/// `Usage` comes once, at the end; `Retried` only before the first text.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    Text(String),
    ToolCall(ToolCall),
    Usage(Usage),
    /// The adapter made the call again before the reply began (throttling, 5xx).
    Retried(RetryNote),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ModelInfo {
    pub provider: String,
    pub model: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "kind", content = "detail", rename_all = "camelCase")]
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

    /// The provider is throttling (as opposed to down or slow): the retry should back off.
    pub fn throttled(&self) -> bool {
        matches!(
            self,
            ModelError::Throttled(_) | ModelError::Provider { status: 429, .. }
        )
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
