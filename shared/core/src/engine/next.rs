//! What happens next in a run, read from its state alone. Every driver asks this and nothing
//! else: the local runner (which runs the move in-process), and the Lambda functions (which
//! hand it to the state machine, whose Choice state reads it).

use serde::{Deserialize, Serialize};

use super::{Checkpoint, Dispatch, Engine, PlannerState, ReplanReason, RunState};
use crate::types::{RunStatus, StepAction, StepStatus};

/// The next move of a run. In-flight steps come first (a replan waits for them), then the
/// planner, then a person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "move",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum Move {
    /// Run these steps: every step in progress, under its current attempt. A driver that is
    /// already running some of them (the local runner) starts only the others.
    Dispatch { steps: Vec<Dispatch> },
    /// Ask the planner for a plan (no reason: the first one) or a replan.
    Plan { reason: Option<ReplanReason> },
    /// Nothing runs until a person answers this checkpoint (or it expires).
    AwaitApproval { checkpoint: Checkpoint },
    /// The run has ended.
    Finished {
        status: RunStatus,
        error: Option<String>,
    },
    /// The run has not ended, yet nothing is in progress and nothing waits: no transition of
    /// the engine leaves a run so, so a driver that finds one fails it (`Input::Aborted`)
    /// rather than wait forever.
    Stalled { error: String },
}

impl Engine {
    /// The next move of the run (see [`Move`]).
    pub fn next(&self, state: &RunState) -> Move {
        if state.status.is_terminal() {
            return Move::Finished {
                status: state.status,
                error: state.error.clone(),
            };
        }
        let steps = self.outstanding(state);
        if !steps.is_empty() {
            return Move::Dispatch { steps };
        }
        if let PlannerState::Awaiting { reason } = &state.planner {
            return Move::Plan {
                reason: reason.clone(),
            };
        }
        if let Some(checkpoint) = &state.checkpoint {
            return Move::AwaitApproval {
                checkpoint: checkpoint.clone(),
            };
        }
        Move::Stalled {
            error: "the run has nothing in progress, yet it has not finished".into(),
        }
    }

    /// The dispatches in flight according to the state: steps in progress (not approvals, not
    /// waiting on a person's answer), under their current attempt.
    pub(super) fn outstanding(&self, state: &RunState) -> Vec<Dispatch> {
        state
            .plan
            .steps
            .iter()
            .filter(|s| {
                s.status == StepStatus::InProgress
                    && s.action != Some(StepAction::Approval)
                    && state
                        .suspended
                        .get(&s.id)
                        .is_none_or(|w| w.answer.is_some())
            })
            .filter_map(|s| {
                Some(Dispatch {
                    step_id: s.id.clone(),
                    capability_id: s.capability()?.to_owned(),
                    attempt: state.attempts(&s.id),
                    timeout_ms: self.config.step_timeout_ms,
                })
            })
            .collect()
    }
}
