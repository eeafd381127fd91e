//! The call record port: every model call of a run (its request, and its reply or error), kept
//! with the run so that the run can be replayed with no model and forked from a step.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::model::{ModelError, ModelInfo, ModelRequest, RetryNote};
use super::store::StoreError;
use crate::tools::ToolCall;
use crate::types::Usage;

/// What a model call was made for within its run: a plan version, or an attempt of a step.
/// Calls are numbered within their unit, so parallel steps record and replay independently.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum CallUnit {
    /// The planner's call(s) that proposed this plan version.
    #[serde(rename_all = "camelCase")]
    Plan { version: u32 },
    #[serde(rename_all = "camelCase")]
    Step { step_id: String, attempt: u32 },
}

impl CallUnit {
    /// A sortable, stable text form (`plan#0001`, `step#<id>#0002`), for store keys.
    pub fn key(&self) -> String {
        match self {
            CallUnit::Plan { version } => format!("plan#{version:04}"),
            CallUnit::Step { step_id, attempt } => format!("step#{step_id}#{attempt:04}"),
        }
    }

    pub fn step_id(&self) -> Option<&str> {
        match self {
            CallUnit::Plan { .. } => None,
            CallUnit::Step { step_id, .. } => Some(step_id),
        }
    }
}

impl std::fmt::Display for CallUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallUnit::Plan { version } => write!(f, "plan v{version}"),
            CallUnit::Step { step_id, attempt } => write!(f, "step {step_id} attempt {attempt}"),
        }
    }
}

/// How a recorded call ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "outcome", rename_all = "camelCase")]
pub enum CallReply {
    #[serde(rename_all = "camelCase")]
    Answered {
        text: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall>,
        usage: Usage,
        /// Where a streamed reply's text was cut into pieces (byte offsets), as it arrived.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        cuts: Vec<u32>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        retries: Vec<RetryNote>,
    },
    Failed {
        error: ModelError,
    },
}

/// One model call of a run, as recorded (after redaction).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RecordedCall {
    pub unit: CallUnit,
    /// Its place among its unit's calls, from 0.
    pub index: u32,
    pub model: ModelInfo,
    pub streamed: bool,
    pub request: ModelRequest,
    pub reply: CallReply,
    pub started_at_ms: u64,
    pub duration_ms: u64,
}

/// Where a run's model calls are kept: the run's store. A call is written once per (run,
/// unit, index); writing it again (a retried invocation) replaces it.
#[async_trait]
pub trait CallLog: Send + Sync {
    async fn record_call(&self, run_id: &str, call: &RecordedCall) -> Result<(), StoreError>;
    /// The run's calls, ordered by unit and index.
    async fn calls(&self, run_id: &str) -> Result<Vec<RecordedCall>, StoreError>;
}
