use std::sync::Arc;

use orchestrator_core::engine::ReplanReason;
use orchestrator_core::patch::{PlanPatch, normalize_patch};
use orchestrator_core::ports::{ChatMessage, Model, ModelRequest, Purpose};
use orchestrator_core::types::{Plan, RunRequest, StepAction, Usage};

use crate::repair::{Repaired, complete_with_retries};
use crate::replies::{plan_schema, read_json};
use serde_json::json;

use crate::{AgentError, DeltaSink};

pub struct PlanContext<'a> {
    pub request: &'a RunRequest,
    pub plan: &'a Plan,
    pub reason: Option<&'a ReplanReason>,
    pub capabilities: &'a [String],
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlanOutcome {
    pub patch: PlanPatch,
    pub usage: Usage,
    /// The first reply was unusable and the repair request fixed it.
    pub repaired: bool,
}

/// Turns the objective (or a replan reason) into a validated plan patch.
pub struct Planner {
    model: Arc<dyn Model>,
    prompts: Arc<crate::Prompts>,
    attempts: u32,
}

/// Calls per plan at most, the first included: like a step's attempts.
pub const PLANNER_ATTEMPTS: u32 = 3;

impl Planner {
    pub fn new(model: Arc<dyn Model>) -> Self {
        Self::with_prompts(model, Arc::new(crate::Prompts::builtin()))
    }

    pub fn with_prompts(model: Arc<dyn Model>, prompts: Arc<crate::Prompts>) -> Self {
        Self {
            model,
            prompts,
            attempts: PLANNER_ATTEMPTS,
        }
    }

    /// Asks for a patch, retried like a step: an unusable reply gets a repair request quoting
    /// the problem, a transient model error the same request again, up to the attempts; each
    /// retry is a `warning` on `sink`.
    pub async fn plan(
        &self,
        ctx: PlanContext<'_>,
        sink: &dyn DeltaSink,
    ) -> Result<PlanOutcome, AgentError> {
        let context = json!({
            "objective": ctx.request.objective,
            "capabilities": ctx.capabilities,
            "plan": ctx.plan,
            "replanReason": ctx.reason,
            "acceptanceCriteria": ctx.request.options.acceptance_criteria,
            "requireApproval": ctx.request.options.require_approval,
            "brief": ctx.request.state.brief,
        })
        .to_string();
        let request = ModelRequest {
            purpose: Purpose::Plan,
            system: self.prompts.planner.clone(),
            messages: vec![ChatMessage::user(context)],
            temperature: Some(0.0),
            max_tokens: Some(2_000),
            json: true,
            schema: Some(plan_schema().clone()),
            tools: Vec::new(),
            tool_choice: Default::default(),
        };
        let Repaired {
            value: patch,
            usage,
            repaired,
        } = complete_with_retries(
            self.model.as_ref(),
            request,
            "planner",
            self.attempts,
            sink,
            |reply| self.validate(reply, &ctx),
        )
        .await?;
        Ok(PlanOutcome {
            patch,
            usage,
            repaired,
        })
    }

    /// Parses, normalises and dry-runs the patch against the current plan.
    fn validate(&self, reply: &str, ctx: &PlanContext<'_>) -> Result<PlanPatch, String> {
        let raw = read_json(reply)?;
        let existing: Vec<String> = ctx.plan.steps.iter().map(|s| s.id.clone()).collect();
        let patch = normalize_patch(&raw, &existing).map_err(|e| e.to_string())?;
        let mut patch = ctx.plan.reconcile(patch);
        let next = ctx.plan.apply_patch(&patch).map_err(|e| e.to_string())?;
        if let Some(step) = next.steps.iter().find(|s| {
            s.status == orchestrator_core::types::StepStatus::Pending
                && s.capability()
                    .is_some_and(|c| !ctx.capabilities.iter().any(|k| k == c))
        }) {
            return Err(format!(
                "step {} uses capability {:?}; the capabilities are {}",
                step.id,
                step.capability().unwrap_or_default(),
                ctx.capabilities.join(", ")
            ));
        }
        // Every plan ends in a finalize step; add one after the leaves if the planner forgot.
        let has_pending_finalize = next
            .steps
            .iter()
            .any(|s| s.action == Some(StepAction::Finalize) && !s.status.is_settled());
        if !has_pending_finalize && ctx.plan.version == 0 {
            let leaves: Vec<String> = next
                .steps
                .iter()
                .filter(|s| !next.steps.iter().any(|o| o.depends_on.contains(&s.id)))
                .map(|s| s.id.clone())
                .collect();
            let mut ids = existing.clone();
            ids.extend(patch.steps_add.iter().map(|s| s.id.clone()));
            let extra = normalize_patch(
                &json!({"stepsAdd": [{"action": "finalize", "label": "Assemble the final result", "dependsOn": leaves}]}),
                &ids,
            )
            .map_err(|e| e.to_string())?;
            patch.steps_add.extend(extra.steps_add);
        }
        Ok(patch)
    }
}
