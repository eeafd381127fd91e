//! The planner's side of a run: the first plan, patches, failed plans and replans.

use serde_json::json;

use super::*;
use crate::event::{EventKind, Phase, PlanUpdate};
use crate::patch::PlanPatch;
use crate::types::{Mode, Plan, PlanStep, StepStatus, Usage};

impl Engine {
    pub(super) fn on_started(&self, state: &mut RunState, now_ms: u64, out: &mut Out) -> bool {
        if state.plan.version > 0 || state.planner != PlannerState::Idle {
            return false;
        }
        out.emit(EventKind::Start {
            message: format!("Run started ({} mode)", state.request.mode),
        });
        match state.request.mode {
            Mode::Chat => {
                let agent = state
                    .request
                    .options
                    .target_agent_id
                    .clone()
                    .unwrap_or_else(|| DEFAULT_CHAT_AGENT.to_owned());
                state.plan = Plan {
                    version: 1,
                    steps: vec![PlanStep {
                        id: "chat".into(),
                        capability_id: Some(agent),
                        action: None,
                        label: Some("Answer".into()),
                        status: StepStatus::Pending,
                        depends_on: Vec::new(),
                        note: None,
                        acceptance_criteria: Vec::new(),
                    }],
                };
                self.schedule(state, now_ms, out);
            }
            Mode::App => {
                out.emit(EventKind::Phase {
                    phase: Phase::Planning,
                    message: "Planning the work".into(),
                });
                state.planner = PlannerState::Awaiting { reason: None };
            }
        }
        true
    }

    pub(super) fn on_plan(
        &self,
        state: &mut RunState,
        patch: PlanPatch,
        usage: Usage,
        now_ms: u64,
        out: &mut Out,
    ) -> bool {
        let PlannerState::Awaiting { reason } = state.planner.clone() else {
            return false;
        };
        state.usage.add(usage);
        let patch = state.plan.reconcile(patch);
        let next = match state.plan.apply_patch(&patch) {
            Ok(next) => next,
            Err(e) => {
                out.emit(EventKind::warning(
                    format!("The planner's patch was refused: {e}"),
                    Some(json!({ "patch": patch })),
                ));
                state.planner = PlannerState::Idle;
                self.ask_planner(
                    state,
                    ReplanReason::InvalidPatch {
                        error: e.to_string(),
                    },
                    now_ms,
                    out,
                );
                return true;
            }
        };
        if let Some(reason) = &reason {
            let key = (reason.to_string(), patch.fingerprint());
            if state.last_replan.as_ref() == Some(&key) {
                state.planner = PlannerState::Idle;
                self.fail(
                    state,
                    "replan loop: the planner proposed the same change for the same reason twice"
                        .into(),
                    now_ms,
                    out,
                );
                return true;
            }
            state.last_replan = Some(key);
        }
        state.plan = next;
        state.planner = PlannerState::Idle;
        out.emit(EventKind::PlanUpdate {
            data: PlanUpdate {
                patch,
                version: state.plan.version,
                reason: reason.map(|r| r.to_string()),
            },
        });
        self.schedule(state, now_ms, out);
        true
    }

    pub(super) fn on_plan_failed(
        &self,
        state: &mut RunState,
        error: String,
        now_ms: u64,
        out: &mut Out,
    ) -> bool {
        if !matches!(state.planner, PlannerState::Awaiting { .. }) {
            return false;
        }
        state.planner = PlannerState::Idle;
        if state.plan.version == 0 {
            self.fail(
                state,
                format!("the planner produced no usable plan: {error}"),
                now_ms,
                out,
            );
        } else {
            // Carry on with the plan we have; if it cannot finish, schedule reports the stall.
            out.emit(EventKind::warning(
                format!(
                    "Replanning failed, continuing with plan version {}: {error}",
                    state.plan.version
                ),
                None,
            ));
            self.schedule(state, now_ms, out);
        }
        true
    }

    /// Asks for a replan, or fails the run when the replan cap is reached. Returns whether the
    /// planner was asked.
    pub(super) fn ask_planner(
        &self,
        state: &mut RunState,
        reason: ReplanReason,
        now_ms: u64,
        out: &mut Out,
    ) -> bool {
        if matches!(state.planner, PlannerState::Awaiting { .. }) {
            return true;
        }
        if state.replans >= self.config.max_replans {
            self.fail(
                state,
                format!(
                    "replan limit ({}) reached; last reason: {reason}",
                    self.config.max_replans
                ),
                now_ms,
                out,
            );
            return false;
        }
        Self::call_planner(state, reason, out);
        true
    }

    /// Asks the planner, whatever the replan cap says.
    pub(super) fn call_planner(state: &mut RunState, reason: ReplanReason, out: &mut Out) {
        state.replans += 1;
        out.emit(EventKind::Phase {
            phase: Phase::Planning,
            message: format!("Replanning: {reason}"),
        });
        state.planner = PlannerState::Awaiting {
            reason: Some(reason.clone()),
        };
    }
}
