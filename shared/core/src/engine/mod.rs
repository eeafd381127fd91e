//! The pure engine. `Engine::apply(state, input, now) -> (state, transition)` applies what
//! happened; `Engine::next(state)` says what happens next. No I/O: every driver (the local
//! runner, `serve`, the Lambda functions) asks `next`, carries the move out, and applies its
//! outcome (see docs/architecture.md).

mod approvals;
mod next;
mod planning;
mod schedule;
mod state;
mod steps;

pub use next::Move;
pub use state::{Checkpoint, Dispatch, PlannerState, ReplanReason, RunState, StepProgress};

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::event::{EventKind, TokenCounts};
use crate::patch::PlanPatch;
use crate::tools::{DEFAULT_MAX_HITL_REQUESTS, HumanRequest};
use crate::types::{
    FINALIZE_CAPABILITY, GENERATION_CAPABILITY, Mode, RunStatus, STRATEGY_CAPABILITY, StepResult,
    Usage,
};

/// The capability that answers in chat mode when the request names none.
pub const DEFAULT_CHAT_AGENT: &str = GENERATION_CAPABILITY;
pub use crate::types::QA_CAPABILITY;

/// The rules that are configuration rather than request: which specialists exist, retries,
/// timeouts and caps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineConfig {
    pub capabilities: BTreeSet<String>,
    /// Attempts per step, the first included.
    pub max_attempts: u32,
    pub step_timeout_ms: u64,
    /// Planner calls after the first plan (critic replans, failure replans, invalid patches).
    pub max_replans: u32,
    /// Tokens set aside for each dispatched step while a token budget is in force.
    pub token_reservation: u64,
    pub approval_timeout_ms: u64,
    /// Requests for a person (the `hitl_request` tool) per run; later ones are denied.
    #[serde(default = "default_max_hitl_requests")]
    pub max_hitl_requests: u32,
}

fn default_max_hitl_requests() -> u32 {
    DEFAULT_MAX_HITL_REQUESTS
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            capabilities: [
                STRATEGY_CAPABILITY,
                GENERATION_CAPABILITY,
                QA_CAPABILITY,
                FINALIZE_CAPABILITY,
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            max_attempts: 3,
            step_timeout_ms: 120_000,
            max_replans: 4,
            token_reservation: 2_048,
            approval_timeout_ms: 24 * 3600 * 1000,
            max_hitl_requests: DEFAULT_MAX_HITL_REQUESTS,
        }
    }
}

/// What the engine hears.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum Input {
    Started,
    PlanProposed {
        patch: PlanPatch,
        /// Tokens the planner spent on it; they count against the run's budget.
        #[serde(default)]
        usage: Usage,
    },
    /// The planner gave no usable patch, even after its repair retry.
    PlanFailed {
        error: String,
    },
    StepFinished {
        result: StepResult,
    },
    StepFailed {
        step_id: String,
        attempt: u32,
        error: String,
        retryable: bool,
    },
    /// The specialist asked a person (its `hitl_request` tool) and stopped until the answer.
    StepNeedsHuman {
        step_id: String,
        attempt: u32,
        request: Box<HumanRequest>,
    },
    ApprovalGiven {
        checkpoint_id: String,
        comment: Option<String>,
    },
    ApprovalDenied {
        checkpoint_id: String,
        comment: Option<String>,
    },
    Cancelled {
        reason: String,
    },
    /// Time passed: check the wall-clock budget and checkpoint expiry.
    BudgetTick,
    /// The driver itself failed past its own retries (on AWS: a state machine task that kept
    /// failing): the run fails visibly instead of looking alive forever.
    Aborted {
        error: String,
    },
    /// The process driving the run restarted: re-issue whatever was in flight.
    Resumed,
}

/// What one `apply` did: the events it emitted, in order, and whether the state changed (a
/// driver commits a changed state with its events before it makes the next move).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transition {
    pub changed: bool,
    pub events: Vec<EventKind>,
}

#[derive(Debug, Clone, Default)]
pub struct Engine {
    pub config: EngineConfig,
}

/// Collects the events of one `apply`.
pub(super) struct Out(Vec<EventKind>);

impl Out {
    pub(super) fn emit(&mut self, event: EventKind) {
        self.0.push(event);
    }
}

impl Engine {
    pub fn new(config: EngineConfig) -> Self {
        Self { config }
    }

    /// Applies one input. Inputs for a finished run, and stale step reports (a step that is not
    /// in progress, or an attempt that is not the current one), change nothing.
    pub fn apply(&self, state: RunState, input: Input, now_ms: u64) -> (RunState, Transition) {
        let mut state = state;
        let mut out = Out(Vec::new());
        if state.status.is_terminal() {
            return (state, Transition::default());
        }
        let changed = match input {
            Input::Started => self.on_started(&mut state, now_ms, &mut out),
            Input::PlanProposed { patch, usage } => {
                self.on_plan(&mut state, patch, usage, now_ms, &mut out)
            }
            Input::PlanFailed { error } => self.on_plan_failed(&mut state, error, now_ms, &mut out),
            Input::StepFinished { result } => {
                self.on_step_finished(&mut state, result, now_ms, &mut out)
            }
            Input::StepFailed {
                step_id,
                attempt,
                error,
                retryable,
            } => self.on_step_failed(
                &mut state, &step_id, attempt, error, retryable, now_ms, &mut out,
            ),
            Input::StepNeedsHuman {
                step_id,
                attempt,
                request,
            } => self.on_needs_human(&mut state, &step_id, attempt, *request, now_ms, &mut out),
            Input::ApprovalGiven {
                checkpoint_id,
                comment,
            } => self.on_approval(&mut state, &checkpoint_id, true, comment, now_ms, &mut out),
            Input::ApprovalDenied {
                checkpoint_id,
                comment,
            } => self.on_approval(&mut state, &checkpoint_id, false, comment, now_ms, &mut out),
            Input::Cancelled { reason } => {
                self.finish(
                    &mut state,
                    RunStatus::Cancelled,
                    Some(reason),
                    now_ms,
                    &mut out,
                );
                true
            }
            Input::BudgetTick => self.on_tick(&mut state, now_ms, &mut out),
            Input::Aborted { error } => {
                self.fail(&mut state, error, now_ms, &mut out);
                true
            }
            Input::Resumed => self.on_resumed(&mut state, now_ms, &mut out),
        };
        let events = out.0;
        (state, Transition { changed, events })
    }

    pub(super) fn fail(&self, state: &mut RunState, why: String, now_ms: u64, out: &mut Out) {
        out.emit(EventKind::Error {
            message: why.clone(),
            data: None,
        });
        self.finish(state, RunStatus::Failed, Some(why), now_ms, out);
    }

    pub(super) fn finish(
        &self,
        state: &mut RunState,
        status: RunStatus,
        why: Option<String>,
        now_ms: u64,
        out: &mut Out,
    ) {
        state.status = status;
        state.finished_at_ms = Some(now_ms);
        state.checkpoint = None;
        state.planner = PlannerState::Idle;
        state.error = why.clone();
        let duration_ms = state.duration_ms(now_ms);
        out.emit(EventKind::Metrics {
            tokens: TokenCounts {
                input: state.usage.input_tokens,
                output: state.usage.output_tokens,
            },
            duration_ms,
            data: None,
        });
        let data = match (state.request.mode, &state.final_bundle) {
            (Mode::Chat, _) => json!({ "message": state.chat_message.clone().unwrap_or_default() }),
            (Mode::App, Some(bundle)) if status == RunStatus::Completed => {
                serde_json::to_value(bundle).unwrap_or(Value::Null)
            }
            _ => json!({ "error": why }),
        };
        out.emit(EventKind::Complete {
            data,
            duration_ms,
            status,
            quality_gate: state.quality_gate(),
        });
    }
}
