use async_trait::async_trait;
use orchestrator_core::engine::QA_CAPABILITY;
use orchestrator_core::types::{
    AcceptanceOverall, AcceptanceReport, FINALIZE_CAPABILITY, FinalBundle, GENERATION_CAPABILITY,
    QualitySummary, QualityVerdict, ResultContent, STRATEGY_CAPABILITY, Usage,
};
use serde_json::{Value, json};

use crate::{AgentError, DeltaSink, SpecialistOutput, StepContext};

/// Assembles the final bundle from the step results: no model call.
pub struct Finalize;

#[async_trait]
impl crate::Specialist for Finalize {
    fn capability(&self) -> &'static str {
        FINALIZE_CAPABILITY
    }

    async fn run(
        &self,
        ctx: &StepContext,
        _sink: &dyn DeltaSink,
    ) -> Result<SpecialistOutput, AgentError> {
        let draft = ctx.latest(GENERATION_CAPABILITY).ok_or_else(|| {
            AgentError::MissingInput(format!("step {} has no draft to finalize", ctx.step.id))
        })?;
        let content = draft
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let platform = draft
            .get("platform")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| ctx.platform())
            .unwrap_or_else(|| "blog".into());
        let verdict: Option<QualityVerdict> = ctx
            .latest(QA_CAPABILITY)
            .and_then(|q| serde_json::from_value(q.clone()).ok());
        let rationale = ctx
            .latest(STRATEGY_CAPABILITY)
            .and_then(|s| s.get("angle"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let (quality, criteria) = match verdict {
            Some(v) => (
                QualitySummary {
                    score: v.score,
                    issues: v.issues,
                    pass: v.pass,
                    metrics: json!({ "threshold": ctx.request.options.quality_threshold }),
                },
                v.criteria,
            ),
            None => (
                QualitySummary {
                    score: 0.0,
                    issues: vec!["the draft was not reviewed".into()],
                    pass: false,
                    metrics: json!({ "threshold": ctx.request.options.quality_threshold }),
                },
                Vec::new(),
            ),
        };
        let passed = criteria.iter().filter(|c| c.passed).count();
        let overall = if criteria.is_empty() {
            if quality.pass {
                AcceptanceOverall::Pass
            } else {
                AcceptanceOverall::Fail
            }
        } else if passed == criteria.len() {
            AcceptanceOverall::Pass
        } else if passed == 0 {
            AcceptanceOverall::Fail
        } else {
            AcceptanceOverall::Partial
        };
        let bundle = FinalBundle {
            result: ResultContent {
                platform,
                content,
                rationale,
                knob_settings: Some(json!({
                    "temperature": ctx.request.options.temperature,
                    "qualityThreshold": ctx.request.options.quality_threshold,
                    "maxRevisionCycles": ctx.request.options.max_revision_cycles,
                })),
            },
            quality,
            acceptance_report: AcceptanceReport { overall, criteria },
        };
        let output =
            serde_json::to_value(&bundle).map_err(|e| AgentError::Invalid(e.to_string()))?;
        Ok(SpecialistOutput {
            output,
            usage: Usage::default(),
        })
    }
}
