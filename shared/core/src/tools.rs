//! Tool calling in the domain's own terms: what a model is offered (`ToolSpec`), what it asks
//! for (`ToolCall`), and the conversation a specialist keeps while it pauses for a person
//! (`ToolSession`). Providers map these onto their wire formats privately.

use serde::{Deserialize, Serialize};
use std::sync::Arc;

use serde_json::Value;

use crate::event::HitlKind;
use crate::ports::ChatMessage;
use crate::types::Usage;

/// The tool a specialist calls to ask a person (approval or clarification).
pub const HITL_TOOL: &str = "hitl_request";
/// Requests for a person per run, unless the engine is configured otherwise.
pub const DEFAULT_MAX_HITL_REQUESTS: u32 = 3;
/// Model calls per specialist step when the request sets no `maxTurns`.
pub const DEFAULT_MAX_TURNS: u32 = 6;

/// A tool offered to the model: its name, what it does, and a JSON Schema of its arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// A JSON Schema object, shared: every model call offers the specs again, and a tool's
    /// schema does not change.
    pub parameters: Arc<Value>,
}

/// Whether the model may, must, or must not call a tool on this turn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum ToolChoice {
    #[default]
    Auto,
    Required,
    None,
}

/// A call the model asked for. `arguments` is the JSON it wrote (a string when it wrote
/// something that is not JSON, so validation can say so).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: Value,
}

/// How soon a person should answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Urgency {
    Low,
    #[default]
    Normal,
    High,
}

/// A specialist's conversation at the moment it paused for a person: the messages so far (the
/// assistant's tool calls and the results of those already run), the calls not answered yet
/// (the first is the `hitl_request`), and the turns used. The step resumes from it, so tools
/// that already ran are not run again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolSession {
    pub messages: Vec<ChatMessage>,
    pub pending: Vec<ToolCall>,
    pub turns: u32,
}

/// What a specialist asks a person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HumanRequest {
    pub kind: HitlKind,
    pub question: String,
    #[serde(default)]
    pub urgency: Urgency,
    pub session: ToolSession,
    /// Tokens spent before the pause.
    #[serde(default)]
    pub usage: Usage,
}

/// The person's answer (or the engine's refusal), given to the model as the tool's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HitlAnswer {
    pub approved: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Set when the request was refused without asking anyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied: Option<String>,
}

impl HitlAnswer {
    /// The tool result the model reads.
    pub fn to_result(&self) -> Value {
        match &self.denied {
            Some(why) => serde_json::json!({ "error": format!("denied: {why}") }),
            None => serde_json::json!({
                "decision": if self.approved { "approved" } else { "rejected" },
                "answer": self.comment,
            }),
        }
    }
}

/// A step paused on a person: what it asked, where it stopped, and (once given) the answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Suspended {
    pub attempt: u32,
    pub checkpoint_id: String,
    pub request: HumanRequest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<HitlAnswer>,
}

/// Where a resumed step picks up: its conversation and the answer to its pending request.
#[derive(Debug, Clone, PartialEq)]
pub struct Resume {
    pub session: ToolSession,
    pub answer: HitlAnswer,
}
