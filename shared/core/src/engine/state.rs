//! What the engine knows about a run: the state every store persists.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::event::HitlKind;
use crate::tools::Suspended;
use crate::types::{FinalBundle, Plan, QualityGate, QualityVerdict, RunRequest, RunStatus, Usage};

/// Why the planner is asked again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum ReplanReason {
    QualityBelowThreshold {
        step_id: String,
        score: f64,
        threshold: f64,
        issues: Vec<String>,
    },
    StepFailed {
        step_id: String,
        error: String,
    },
    InvalidPatch {
        error: String,
    },
}

impl fmt::Display for ReplanReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplanReason::QualityBelowThreshold {
                score,
                threshold,
                issues,
                ..
            } => {
                write!(
                    f,
                    "QA scored {score:.2}, below the threshold {threshold:.2}"
                )?;
                if !issues.is_empty() {
                    write!(f, ": {}", issues.join("; "))?;
                }
                Ok(())
            }
            ReplanReason::StepFailed { step_id, error } => {
                write!(f, "step {step_id} failed: {error}")
            }
            ReplanReason::InvalidPatch { error } => {
                write!(f, "the last patch was refused: {error}")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    pub id: String,
    pub step_id: String,
    pub kind: HitlKind,
    pub question: String,
    pub expires_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Dispatch {
    pub step_id: String,
    pub capability_id: String,
    pub attempt: u32,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum PlannerState {
    Idle,
    Awaiting { reason: Option<ReplanReason> },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepProgress {
    pub attempts: u32,
    pub reserved_tokens: u64,
}

/// Everything the engine knows about one run. Serializable: it is what the stores persist.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunState {
    pub run_id: String,
    pub correlation_id: String,
    /// The W3C trace context of the span that started the run, so every process that works
    /// on it later (another `serve`, each Lambda) adds its spans to the same trace. `None` when
    /// traces were not exported as it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    pub request: RunRequest,
    pub status: RunStatus,
    pub plan: Plan,
    pub planner: PlannerState,
    pub progress: BTreeMap<String, StepProgress>,
    pub revisions: u32,
    pub replans: u32,
    pub usage: Usage,
    pub reserved_tokens: u64,
    pub dispatched: u32,
    pub started_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    pub checkpoint: Option<Checkpoint>,
    pub quality: Option<QualityVerdict>,
    pub final_bundle: Option<FinalBundle>,
    pub chat_message: Option<String>,
    /// The last replan's reason and patch shape, to catch a planner going round in circles.
    pub last_replan: Option<(String, String)>,
    pub error: Option<String>,
    /// Requests for a person made so far (asked or queued; denied ones not counted).
    #[serde(default)]
    pub hitl_requests: u32,
    /// Steps paused on a person, by step id: their conversation, and the answer once given.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub suspended: BTreeMap<String, Suspended>,
    /// The extra planner turn a plan stalled by a failed step gets has been used.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stall_replanned: bool,
    /// The fencing token of the lease its driver holds ([`crate::ports::Lease`]); never
    /// stored with the state. The store refuses a commit of this state once another owner
    /// has taken the run over. `None`: a writer without a lease (a Step Functions execution
    /// owns its run; a person's cancel).
    #[serde(skip)]
    pub lease_token: Option<u64>,
}

impl RunState {
    pub fn new(
        run_id: impl Into<String>,
        correlation_id: impl Into<String>,
        request: RunRequest,
        now_ms: u64,
    ) -> Self {
        Self {
            run_id: run_id.into(),
            correlation_id: correlation_id.into(),
            traceparent: None,
            request,
            status: RunStatus::Running,
            plan: Plan::default(),
            planner: PlannerState::Idle,
            progress: BTreeMap::new(),
            revisions: 0,
            replans: 0,
            usage: Usage::default(),
            reserved_tokens: 0,
            dispatched: 0,
            started_at_ms: now_ms,
            finished_at_ms: None,
            checkpoint: None,
            quality: None,
            final_bundle: None,
            chat_message: None,
            last_replan: None,
            error: None,
            hitl_requests: 0,
            suspended: BTreeMap::new(),
            stall_replanned: false,
            lease_token: None,
        }
    }

    /// Whether the result met the QA threshold ([`QualityGate`]).
    pub fn quality_gate(&self) -> QualityGate {
        let threshold = self.request.options.quality_threshold;
        QualityGate::of(self.status, self.quality.as_ref(), threshold)
    }

    pub fn duration_ms(&self, now_ms: u64) -> u64 {
        self.finished_at_ms
            .unwrap_or(now_ms)
            .saturating_sub(self.started_at_ms)
    }

    pub(super) fn attempts(&self, step_id: &str) -> u32 {
        self.progress.get(step_id).map_or(0, |p| p.attempts)
    }
}
