//! What starts when: ready steps within the budgets, the end of a run with nothing left to
//! start, the clock, and a restart.

use serde_json::json;

use super::*;
use crate::event::{EventKind, Handoff, HandoffStage, Phase};
use crate::types::{PlanStep, RunStatus, StepAction, StepStatus};

impl Engine {
    pub(super) fn on_tick(&self, state: &mut RunState, now_ms: u64, out: &mut Out) -> bool {
        if let Some(cp) = &state.checkpoint
            && now_ms >= cp.expires_at_ms
        {
            let reason = format!("checkpoint {} expired without an answer", cp.id);
            self.fail(state, reason, now_ms, out);
            return true;
        }
        self.out_of_time(state, now_ms, out)
    }

    pub(super) fn out_of_time(&self, state: &mut RunState, now_ms: u64, out: &mut Out) -> bool {
        match state.request.options.budget.max_seconds {
            Some(max) if state.duration_ms(now_ms) >= max.saturating_mul(1000) => {
                self.finish(
                    state,
                    RunStatus::BudgetExhausted,
                    Some(format!("the time budget of {max} s is used up")),
                    now_ms,
                    out,
                );
                true
            }
            _ => false,
        }
    }

    pub(super) fn on_resumed(&self, state: &mut RunState, now_ms: u64, out: &mut Out) -> bool {
        // A run whose start was never applied has nothing in flight: start it, rather than let
        // `schedule` find an empty plan and report the run completed.
        if state.plan.version == 0 && state.planner == PlannerState::Idle {
            return self.on_started(state, now_ms, out);
        }
        // An interrupted attempt never produced a result; it runs again under the same attempt
        // number, so a result it did store is found instead of written twice.
        let interrupted = self.outstanding(state);
        for d in &interrupted {
            out.emit(EventKind::warning(
                format!(
                    "Step {} was interrupted; running attempt {} again",
                    d.step_id, d.attempt
                ),
                Some(json!({ "stepId": d.step_id, "attempt": d.attempt, "restart": true })),
            ));
        }
        self.schedule(state, now_ms, out);
        true
    }

    /// Starts every ready step the budgets allow; finishes the run when nothing is left.
    pub(super) fn schedule(&self, state: &mut RunState, now_ms: u64, out: &mut Out) {
        if state.status.is_terminal() || matches!(state.planner, PlannerState::Awaiting { .. }) {
            return;
        }
        if self.out_of_time(state, now_ms, out) {
            return;
        }
        let mut missing = None;
        let mut exhausted = None;
        for id in Self::ready(state) {
            let Some(step) = state.plan.step(&id).cloned() else {
                continue;
            };
            if step.action == Some(StepAction::Approval) {
                if state.checkpoint.is_none() {
                    self.open_checkpoint(state, &step, now_ms, out);
                }
                continue;
            }
            let capability = step.capability().unwrap_or_default().to_owned();
            if !self.config.capabilities.contains(&capability) {
                missing.get_or_insert((id.clone(), capability));
                continue;
            }
            if let Some(why) = self.budget_refusal(state) {
                exhausted = Some(why);
                break;
            }
            self.start(state, &step, capability, out);
        }
        if let Some((step_id, capability)) = missing {
            let error = format!("no specialist provides capability {capability:?}");
            self.step_failed_for_good(state, &step_id, error, now_ms, out);
            return;
        }
        let in_flight = state
            .plan
            .steps
            .iter()
            .any(|s| s.status == StepStatus::InProgress);
        if in_flight {
            return;
        }
        if let Some(why) = exhausted {
            self.finish(state, RunStatus::BudgetExhausted, Some(why), now_ms, out);
            return;
        }
        self.settle(state, now_ms, out);
    }

    /// Pending steps whose dependencies are satisfied, in plan order.
    fn ready(state: &RunState) -> Vec<String> {
        state
            .plan
            .steps
            .iter()
            .filter(|s| s.status == StepStatus::Pending)
            .filter(|s| {
                s.depends_on.iter().all(|d| {
                    state
                        .plan
                        .step(d)
                        .is_some_and(|dep| dep.status.satisfies_dependency())
                })
            })
            .map(|s| s.id.clone())
            .collect()
    }

    /// Puts a step in progress under its next attempt, with its share of the token budget;
    /// it is then outstanding (see [`Engine::next`]) until its outcome is applied.
    fn start(&self, state: &mut RunState, step: &PlanStep, capability: String, out: &mut Out) {
        let reservation = match state.request.options.budget.max_tokens {
            Some(max) => self
                .config
                .token_reservation
                .min(max.saturating_sub(state.usage.total() + state.reserved_tokens)),
            None => 0,
        };
        let progress = state.progress.entry(step.id.clone()).or_default();
        progress.attempts += 1;
        progress.reserved_tokens = reservation;
        state.reserved_tokens += reservation;
        state.dispatched += 1;
        if let Some(s) = state.plan.step_mut(&step.id) {
            s.status = StepStatus::InProgress;
        }
        out.emit(EventKind::Phase {
            phase: Phase::of_capability(&capability),
            message: format!("{capability} is working on {}: {}", step.id, step.title()),
        });
        out.emit(EventKind::Handoff {
            message: HandoffStage::Requested,
            data: Handoff {
                from: Some("orchestrator".into()),
                to: capability.clone(),
                capability_id: capability,
                step_id: step.id.clone(),
            },
        });
    }

    /// Nothing runs and nothing can start: the run ends, unless a plan stalled by a failed
    /// step still has its one more planner turn.
    pub(super) fn settle(&self, state: &mut RunState, now_ms: u64, out: &mut Out) {
        let failed: Vec<&str> = state
            .plan
            .steps
            .iter()
            .filter(|s| s.status == StepStatus::Failed)
            .map(|s| s.id.as_str())
            .collect();
        let blocked: Vec<&str> = state
            .plan
            .steps
            .iter()
            .filter(|s| s.status == StepStatus::Pending)
            .map(|s| s.id.as_str())
            .collect();
        if !blocked.is_empty() && !failed.is_empty() && !state.stall_replanned {
            // One more planner turn, told which step failed and why, before the run fails.
            state.stall_replanned = true;
            let step_id = failed[0].to_owned();
            let error = state
                .plan
                .step(&step_id)
                .and_then(|s| s.note.clone())
                .unwrap_or_else(|| "it failed".to_owned());
            if !matches!(state.planner, PlannerState::Awaiting { .. }) {
                Self::call_planner(state, ReplanReason::StepFailed { step_id, error }, out);
            }
            return;
        }
        if !blocked.is_empty() {
            let why = format!(
                "stalled: steps {} wait on steps that cannot finish ({})",
                blocked.join(", "),
                if failed.is_empty() {
                    "none ready".to_owned()
                } else {
                    format!("failed: {}", failed.join(", "))
                }
            );
            self.fail(state, why, now_ms, out);
        } else if !failed.is_empty() {
            let why = format!("steps failed: {}", failed.join(", "));
            self.fail(state, why, now_ms, out);
        } else {
            self.finish(state, RunStatus::Completed, None, now_ms, out);
        }
    }

    pub(super) fn budget_refusal(&self, state: &RunState) -> Option<String> {
        let budget = &state.request.options.budget;
        if let Some(max) = budget.max_steps
            && state.dispatched >= max
        {
            return Some(format!("the step budget of {max} is used up"));
        }
        if let Some(max) = budget.max_tokens
            && state.usage.total() + state.reserved_tokens >= max
        {
            return Some(format!(
                "the token budget of {max} is used up ({} used, {} reserved)",
                state.usage.total(),
                state.reserved_tokens
            ));
        }
        None
    }
}
