//! People in the loop: approval steps, a specialist's question, and the answers.

use serde_json::json;

use super::*;
use crate::event::{EventKind, Handoff, HandoffStage, HitlKind, HitlRequest, rfc3339_ms};
use crate::tools::{HitlAnswer, HumanRequest, Suspended};
use crate::types::{PlanStep, RunStatus, StepStatus};

impl Engine {
    pub(super) fn on_approval(
        &self,
        state: &mut RunState,
        checkpoint_id: &str,
        approved: bool,
        comment: Option<String>,
        now_ms: u64,
        out: &mut Out,
    ) -> bool {
        let Some(checkpoint) = state.checkpoint.clone().filter(|c| c.id == checkpoint_id) else {
            return false;
        };
        state.checkpoint = None;
        state.status = RunStatus::Running;
        let suffix = comment
            .as_ref()
            .map(|c| format!(": {c}"))
            .unwrap_or_default();
        let asked_by_tool = state
            .suspended
            .get(&checkpoint.step_id)
            .is_some_and(|s| s.checkpoint_id == checkpoint_id);
        if asked_by_tool {
            // The specialist asked: its step runs again with the answer as the tool's result,
            // whichever way the person decided (the model reads the decision).
            out.emit(EventKind::Message {
                message: format!(
                    "Checkpoint {checkpoint_id} {}{suffix}",
                    if approved { "approved" } else { "rejected" }
                ),
            });
            let answer = HitlAnswer {
                approved,
                comment,
                denied: None,
            };
            self.resume_suspended(state, &checkpoint.step_id, answer, out);
            self.open_next_tool_checkpoint(state, now_ms, out);
            self.schedule(state, now_ms, out);
        } else if approved {
            if let Some(step) = state.plan.step_mut(&checkpoint.step_id) {
                step.status = StepStatus::Done;
            }
            out.emit(EventKind::Message {
                message: format!("Checkpoint {checkpoint_id} approved{suffix}"),
            });
            self.schedule(state, now_ms, out);
        } else {
            if let Some(step) = state.plan.step_mut(&checkpoint.step_id) {
                step.status = StepStatus::Failed;
            }
            self.finish(
                state,
                RunStatus::Cancelled,
                Some(format!("checkpoint {checkpoint_id} rejected{suffix}")),
                now_ms,
                out,
            );
        }
        true
    }

    /// A specialist asked a person: open a checkpoint (or queue it behind the open one), or,
    /// past the per-run cap, deny it and run the step on at once.
    pub(super) fn on_needs_human(
        &self,
        state: &mut RunState,
        step_id: &str,
        attempt: u32,
        request: HumanRequest,
        now_ms: u64,
        out: &mut Out,
    ) -> bool {
        // A step already waiting cannot ask again; one resumed with its answer can.
        let waiting = state
            .suspended
            .get(step_id)
            .is_some_and(|w| w.answer.is_none());
        if !Self::is_current(state, step_id, attempt) || waiting {
            return false;
        }
        Self::release(state, step_id);
        state.usage.add(request.usage);
        let checkpoint_id = format!("hitl-{step_id}-{}", state.hitl_requests + 1);
        let over_cap = state.hitl_requests >= self.config.max_hitl_requests;
        let question = request.question.clone();
        state.suspended.insert(
            step_id.to_owned(),
            Suspended {
                attempt,
                checkpoint_id,
                request,
                answer: None,
            },
        );
        if over_cap {
            out.emit(EventKind::warning(
                format!(
                    "Step {step_id} asked a person more than {} times in this run; denied: {question}",
                    self.config.max_hitl_requests
                ),
                Some(json!({ "stepId": step_id, "denied": "too many requests" })),
            ));
            let answer = HitlAnswer {
                approved: false,
                comment: None,
                denied: Some("too many requests".into()),
            };
            self.resume_suspended(state, step_id, answer, out);
            return true;
        }
        state.hitl_requests += 1;
        self.open_next_tool_checkpoint(state, now_ms, out);
        true
    }

    /// Gives a paused step its answer and dispatches it again (same attempt: it stored no
    /// result, and its conversation carries on from where it stopped).
    pub(super) fn resume_suspended(
        &self,
        state: &mut RunState,
        step_id: &str,
        answer: HitlAnswer,
        out: &mut Out,
    ) {
        let Some(waiting) = state.suspended.get_mut(step_id) else {
            return;
        };
        waiting.answer = Some(answer);
        let _attempt = waiting.attempt;
        let Some(capability) = state
            .plan
            .step(step_id)
            .and_then(PlanStep::capability)
            .map(str::to_owned)
        else {
            return;
        };
        out.emit(EventKind::Handoff {
            message: HandoffStage::Requested,
            data: Handoff {
                from: Some("orchestrator".into()),
                to: capability.clone(),
                capability_id: capability.clone(),
                step_id: step_id.to_owned(),
            },
        });
    }

    /// Opens the checkpoint of the first paused step still waiting, unless one is open.
    pub(super) fn open_next_tool_checkpoint(
        &self,
        state: &mut RunState,
        now_ms: u64,
        out: &mut Out,
    ) {
        if state.checkpoint.is_some() {
            return;
        }
        let Some((step_id, waiting)) = state
            .suspended
            .iter()
            .find(|(_, w)| w.answer.is_none())
            .map(|(id, w)| (id.clone(), w.clone()))
        else {
            return;
        };
        let checkpoint = Checkpoint {
            id: waiting.checkpoint_id.clone(),
            step_id: step_id.clone(),
            kind: waiting.request.kind,
            question: waiting.request.question.clone(),
            expires_at_ms: now_ms + self.config.approval_timeout_ms,
        };
        state.status = RunStatus::PendingHitl;
        state.checkpoint = Some(checkpoint.clone());
        out.emit(EventKind::HitlRequest {
            data: HitlRequest {
                checkpoint_id: checkpoint.id.clone(),
                kind: checkpoint.kind,
                question: checkpoint.question.clone(),
                expires_at: rfc3339_ms(checkpoint.expires_at_ms),
                step_id: Some(step_id),
                urgency: Some(waiting.request.urgency),
            },
        });
    }

    pub(super) fn open_checkpoint(
        &self,
        state: &mut RunState,
        step: &PlanStep,
        now_ms: u64,
        out: &mut Out,
    ) {
        let checkpoint = Checkpoint {
            id: format!("cp-{}", step.id),
            step_id: step.id.clone(),
            kind: HitlKind::Approval,
            question: step
                .label
                .clone()
                .unwrap_or_else(|| "Approve the work so far before it is finalized?".into()),
            expires_at_ms: now_ms + self.config.approval_timeout_ms,
        };
        if let Some(s) = state.plan.step_mut(&step.id) {
            s.status = StepStatus::InProgress;
        }
        state.status = RunStatus::PendingHitl;
        state.checkpoint = Some(checkpoint.clone());
        out.emit(EventKind::HitlRequest {
            data: HitlRequest {
                checkpoint_id: checkpoint.id.clone(),
                kind: checkpoint.kind,
                question: checkpoint.question.clone(),
                expires_at: rfc3339_ms(checkpoint.expires_at_ms),
                step_id: Some(step.id.clone()),
                urgency: None,
            },
        });
    }
}
