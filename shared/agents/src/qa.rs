use async_trait::async_trait;
use orchestrator_core::engine::QA_CAPABILITY;
use orchestrator_core::ports::{Purpose, ReplySchema};
use orchestrator_core::types::{
    CriterionResult, GENERATION_CAPABILITY, QualityVerdict, STRATEGY_CAPABILITY,
};
use serde_json::{Map, Value, json};

use crate::replies::{Unusable, field, read_json, score_of, text_of, verdict_schema, yes_no};
use crate::specialist::{Ask, ModelSpecialist, Reading, Role};
use crate::{AgentError, DeltaSink, Prompts, StepContext};

/// The critic: scores the latest draft and reports on every acceptance criterion.
pub type Qa = ModelSpecialist<QaRole>;

/// The critic's part of the specialist skeleton.
pub struct QaRole;

/// What a verdict is read against.
pub struct Bar {
    criteria: Vec<String>,
    threshold: f64,
}

#[async_trait]
impl Role for QaRole {
    const CAPABILITY: &'static str = QA_CAPABILITY;
    const TOOLS: &'static [&'static str] = &[
        "text_stats",
        "platform_constraints",
        "read_artifact",
        "hitl_request",
    ];
    const STREAMS: bool = false;
    const READING: Reading = Reading::Repaired { agent: "QA" };
    const MAX_TOKENS: u32 = 1_500;
    const CHAT_ROLE: &'static str = "You are the QA critic: answer as a reviewer: what holds up, what does not, and what to fix first.";
    type Keep = Bar;
    type Reply = QualityVerdict;

    fn schema() -> Option<&'static ReplySchema> {
        Some(verdict_schema())
    }

    fn ask(prompts: &Prompts, ctx: &StepContext) -> Result<Ask<Bar>, AgentError> {
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
        let context = json!({
            "objective": ctx.request.objective,
            "draft": draft,
            "strategy": ctx.latest(STRATEGY_CAPABILITY),
            "acceptanceCriteria": criteria,
            "threshold": threshold,
        })
        .to_string();
        Ok(Ask {
            purpose: Purpose::Review,
            system: prompts.qa.clone(),
            context,
            temperature: Some(0.0),
            keep: Bar {
                criteria,
                threshold,
            },
        })
    }

    fn read(bar: &Bar, reply: &str) -> Result<QualityVerdict, Unusable> {
        parse(reply, &bar.criteria, bar.threshold)
    }

    async fn output(
        _: Bar,
        verdict: QualityVerdict,
        _: &StepContext,
        _: &dyn DeltaSink,
    ) -> Result<Value, AgentError> {
        serde_json::to_value(&verdict).map_err(|e| AgentError::Invalid(e.to_string()))
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
