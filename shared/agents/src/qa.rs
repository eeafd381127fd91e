use std::sync::Arc;

use async_trait::async_trait;
use orchestrator_core::ports::{ChatMessage, Model, ModelRequest, Purpose};
use orchestrator_core::types::{CriterionResult, QualityVerdict};
use serde_json::json;

use crate::repair::{Repaired, converse_with_repair};
use crate::tools::Turns;
use crate::{AgentError, DeltaSink, SpecialistOutput, StepContext, extract_json};

/// The critic: scores the latest draft and reports on every acceptance criterion.
pub struct Qa {
    model: Arc<dyn Model>,
    prompts: Arc<crate::Prompts>,
    tools: Arc<crate::ToolRegistry>,
}

impl Qa {
    pub fn new(model: Arc<dyn Model>) -> Self {
        Self::with_prompts(model, Arc::new(crate::Prompts::builtin()))
    }

    pub fn with_prompts(model: Arc<dyn Model>, prompts: Arc<crate::Prompts>) -> Self {
        Self {
            model,
            prompts,
            tools: Arc::new(crate::ToolRegistry::builtin()),
        }
    }

    /// Draws its tools from this registry instead of the built-in one.
    pub fn with_tools(mut self, tools: Arc<crate::ToolRegistry>) -> Self {
        self.tools = tools;
        self
    }

    /// The tools this specialist may use (before the request's policy and allowlist).
    pub const TOOLS: &'static [&'static str] = &[
        "text_stats",
        "platform_constraints",
        "read_artifact",
        "hitl_request",
    ];
}

#[async_trait]
impl crate::Specialist for Qa {
    fn capability(&self) -> &'static str {
        "qa"
    }

    async fn run(
        &self,
        ctx: &StepContext,
        sink: &dyn DeltaSink,
    ) -> Result<SpecialistOutput, AgentError> {
        let draft = ctx
            .latest("generation")
            .and_then(|g| g.get("text"))
            .and_then(|t| t.as_str())
            .ok_or_else(|| {
                AgentError::MissingInput(format!(
                    "step {} has no draft to review: it must depend on a generation step",
                    ctx.step.id
                ))
            })?;
        let criteria = ctx.acceptance_criteria();
        let threshold = ctx.request.options.quality_threshold;
        // Serialised at once: the JSON tree is not kept through the model call.
        let context = json!({
            "objective": ctx.request.objective,
            "draft": draft,
            "strategy": ctx.latest("strategy"),
            "acceptanceCriteria": criteria,
            "threshold": threshold,
        })
        .to_string();
        let request = ModelRequest {
            purpose: Purpose::Review,
            system: self.prompts.qa.clone(),
            messages: vec![ChatMessage::user(context)],
            temperature: Some(0.0),
            max_tokens: Some(1_500),
            json: true,
            schema: None,
            tools: Vec::new(),
            tool_choice: Default::default(),
        };
        let turns = Turns {
            model: self.model.as_ref(),
            ctx,
            sink,
            tools: self.tools.for_step(Self::TOOLS, &ctx.request.options),
            stream: false,
        };
        let Repaired {
            value: verdict,
            usage,
            ..
        } = converse_with_repair(&turns, request, "QA", |reply| {
            parse(reply, &criteria, threshold)
        })
        .await?;
        let output =
            serde_json::to_value(&verdict).map_err(|e| AgentError::Invalid(e.to_string()))?;
        Ok(SpecialistOutput { output, usage })
    }
}

/// A verdict with a score in range, `pass` consistent with the threshold, and one entry per
/// acceptance criterion (a criterion QA did not report on counts as not passed).
fn parse(reply: &str, criteria: &[String], threshold: f64) -> Result<QualityVerdict, String> {
    let raw = extract_json(reply)?;
    let mut v: QualityVerdict =
        serde_json::from_value(raw).map_err(|e| format!("not a QA verdict: {e}"))?;
    if !(0.0..=1.0).contains(&v.score) {
        return Err(format!("score {} is outside 0..1", v.score));
    }
    v.pass = v.score >= threshold;
    let reported = std::mem::take(&mut v.criteria);
    v.criteria = criteria
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let id = format!("ac{}", i + 1);
            reported
                .iter()
                .find(|c| c.id == id)
                .cloned()
                .unwrap_or(CriterionResult {
                    id,
                    passed: false,
                    details: Some(format!("{text}: not reported by QA")),
                })
        })
        .collect();
    Ok(v)
}
