use async_trait::async_trait;
use orchestrator_core::event::EventKind;
use orchestrator_core::ports::{Purpose, ReplySchema};
use orchestrator_core::types::STRATEGY_CAPABILITY;
use serde_json::{Value, json};

use crate::replies::{Unusable, answer, field, read_json, refusal, strategy_schema, text_of};
use crate::specialist::{Ask, ModelSpecialist, Reading, Role};
use crate::{AgentError, DeltaSink, Prompts, StepContext};

/// Audience, angle and key messages for the writer.
pub type Strategy = ModelSpecialist<StrategyRole>;

/// The strategist's part of the specialist skeleton.
pub struct StrategyRole;

#[async_trait]
impl Role for StrategyRole {
    const CAPABILITY: &'static str = STRATEGY_CAPABILITY;
    const TOOLS: &'static [&'static str] =
        &["platform_constraints", "read_artifact", "hitl_request"];
    const STREAMS: bool = false;
    const READING: Reading = Reading::Repaired {
        agent: "strategist",
    };
    const MAX_TOKENS: u32 = 1_000;
    const CHAT_ROLE: &'static str = "You are the strategist: answer with the audience, the angle and the plan of attack the question calls for.";
    type Keep = ();
    type Reply = Read;

    fn schema() -> Option<&'static ReplySchema> {
        Some(strategy_schema())
    }

    fn ask(prompts: &Prompts, ctx: &StepContext) -> Result<Ask<()>, AgentError> {
        let context = json!({
            "objective": ctx.request.objective,
            "task": ctx.step.label,
            "brief": ctx.request.state.brief,
            "clientProfile": ctx.request.state.client_profile,
            "platform": ctx.platform(),
        })
        .to_string();
        Ok(Ask {
            purpose: Purpose::Strategy,
            system: prompts.strategy.clone(),
            context,
            temperature: ctx.request.options.temperature,
            keep: (),
        })
    }

    fn read((): &(), reply: &str) -> Result<Read, Unusable> {
        parse(reply)
    }

    /// A strategy in prose is kept as the writer's notes, with a `warning` that says so.
    async fn output(
        (): (),
        reply: Read,
        ctx: &StepContext,
        sink: &dyn DeltaSink,
    ) -> Result<Value, AgentError> {
        if let Read::Prose(_) = &reply {
            sink.event(EventKind::warning(
                "The strategist answered in prose, not JSON: the writer gets its text as notes",
                Some(json!({ "stepId": ctx.step.id, "capabilityId": STRATEGY_CAPABILITY })),
            ))
            .await;
        }
        Ok(reply.into_output())
    }
}

/// A strategy read from a reply: the JSON asked for, or prose, which is kept.
#[derive(Debug, Clone, PartialEq)]
pub enum Read {
    Json(Value),
    Prose(String),
}

impl Read {
    fn into_output(self) -> Value {
        match self {
            Read::Json(v) => v,
            Read::Prose(text) => json!({ "notes": text }),
        }
    }
}

/// Any JSON object is a strategy (the canonical fields filled from the aliases models use);
/// a reply with no JSON is prose the writer can still use. Only an empty reply, a refusal or
/// JSON that is not an object is unusable.
pub(crate) fn parse(reply: &str) -> Result<Read, String> {
    let text = answer(reply)?;
    match read_json(text) {
        Ok(Value::Object(obj)) => {
            let mut obj = match field(&obj, &["strategy", "result", "output"]) {
                Some(Value::Object(inner)) if !obj.contains_key("audience") => inner.clone(),
                _ => obj,
            };
            for (canonical, aliases) in ALIASES {
                if obj.contains_key(*canonical) {
                    continue;
                }
                if let Some(v) = field(&obj, aliases).cloned() {
                    obj.insert((*canonical).to_owned(), v);
                }
            }
            if let Some(v) = obj.get("audience").and_then(text_of) {
                obj.insert("audience".into(), Value::String(v));
            }
            Ok(Read::Json(Value::Object(obj)))
        }
        Ok(_) => Err("the strategy must be a JSON object".into()),
        Err(_) if refusal(text).is_some() => Err(format!("the model refused: {text:?}")),
        Err(_) if !text.contains('{') => Ok(Read::Prose(text.to_owned())),
        Err(problem) => Err(problem),
    }
}

const ALIASES: &[(&str, &[&str])] = &[
    (
        "audience",
        &["targetAudience", "target", "readers", "persona"],
    ),
    ("angle", &["approach", "hook", "positioning", "theme"]),
    (
        "keyMessages",
        &["messages", "keyPoints", "points", "keyMessage"],
    ),
    ("callToAction", &["cta"]),
];
