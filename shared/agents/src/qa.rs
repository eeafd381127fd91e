use std::sync::Arc;

use async_trait::async_trait;
use orchestrator_core::engine::QA_CAPABILITY;
use orchestrator_core::ports::{ChatMessage, Model, ModelRequest, Purpose};
use orchestrator_core::types::{
    CriterionResult, GENERATION_CAPABILITY, QualityVerdict, STRATEGY_CAPABILITY,
};
use serde_json::json;

use serde_json::{Map, Value};

use crate::repair::{Repaired, converse_with_repair};
use crate::replies::{field, read_json, score_of, text_of, verdict_schema, yes_no};
use crate::tools::Turns;
use crate::{AgentError, DeltaSink, SpecialistOutput, StepContext};

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
        QA_CAPABILITY
    }

    async fn run(
        &self,
        ctx: &StepContext,
        sink: &dyn DeltaSink,
    ) -> Result<SpecialistOutput, AgentError> {
        let draft = ctx
            .latest(GENERATION_CAPABILITY)
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
            "strategy": ctx.latest(STRATEGY_CAPABILITY),
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
            schema: Some(verdict_schema().clone()),
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
/// acceptance criterion (a criterion QA did not report on counts as not passed). Read in the
/// forms models write: the score as 0.8, "0.8", "8/10" or "80%"; issues as strings or objects;
/// criteria by id, number or text, passed as true or "yes".
pub(crate) fn parse(
    reply: &str,
    criteria: &[String],
    threshold: f64,
) -> Result<QualityVerdict, String> {
    let raw = read_json(reply)?;
    let obj = match &raw {
        Value::Object(o) => field(o, &["verdict", "review", "qa", "result"])
            .and_then(Value::as_object)
            .filter(|inner| field(inner, SCORE).is_some())
            .unwrap_or(o),
        _ => return Err("the verdict must be a JSON object".into()),
    };
    let score = field(obj, SCORE).ok_or("the verdict has no score")?;
    let score = score_of(score)?;
    let issues = match field(obj, ISSUES) {
        Some(Value::Array(items)) => items.iter().filter_map(text_of).collect(),
        Some(other) => text_of(other).into_iter().collect(),
        None => Vec::new(),
    };
    let reported = match field(obj, CRITERIA) {
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, c)| criterion(i, c, criteria))
            .collect(),
        Some(Value::Object(by_id)) => by_id
            .iter()
            .enumerate()
            .filter_map(|(i, (k, v))| {
                let mut entry = Map::new();
                entry.insert("id".into(), Value::String(k.clone()));
                entry.insert("passed".into(), v.clone());
                criterion(i, &Value::Object(entry), criteria)
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(QualityVerdict {
        score,
        pass: score >= threshold,
        issues,
        criteria: with_every_criterion(reported, criteria),
    })
}

const SCORE: &[&str] = &[
    "score",
    "qualityScore",
    "overallScore",
    "rating",
    "overall",
    "grade",
];
const ISSUES: &[&str] = &[
    "issues",
    "problems",
    "feedback",
    "suggestions",
    "comments",
    "fixes",
];
const CRITERIA: &[&str] = &[
    "criteria",
    "acceptanceCriteria",
    "acceptanceReport",
    "checks",
];

/// One reported criterion, its id made `acN` whether the model gave `ac2`, `2` or the text.
fn criterion(index: usize, v: &Value, criteria: &[String]) -> Option<CriterionResult> {
    let obj = v.as_object()?;
    let named = field(obj, &["id", "criterion", "name", "text"]).and_then(text_of);
    let id = match named {
        Some(id) if id.starts_with("ac") => id,
        Some(n) if n.parse::<usize>().is_ok() => format!("ac{n}"),
        Some(text) => criteria
            .iter()
            .position(|c| c.eq_ignore_ascii_case(&text))
            .map_or_else(|| format!("ac{}", index + 1), |i| format!("ac{}", i + 1)),
        None => format!("ac{}", index + 1),
    };
    let passed = field(obj, &["passed", "pass", "met", "status", "result", "ok"])
        .and_then(yes_no)
        .unwrap_or(false);
    let details = field(
        obj,
        &[
            "details",
            "detail",
            "reason",
            "comment",
            "notes",
            "explanation",
        ],
    )
    .and_then(text_of);
    Some(CriterionResult {
        id,
        passed,
        details,
    })
}

fn with_every_criterion(
    reported: Vec<CriterionResult>,
    criteria: &[String],
) -> Vec<CriterionResult> {
    criteria
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
        .collect()
}
