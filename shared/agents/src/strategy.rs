use std::sync::Arc;

use async_trait::async_trait;
use orchestrator_core::ports::{ChatMessage, Model, ModelRequest, Purpose};
use serde_json::{Value, json};

use orchestrator_core::event::EventKind;
use orchestrator_core::types::STRATEGY_CAPABILITY;

use crate::repair::{Repaired, converse_with_repair};
use crate::replies::{answer, field, read_json, refusal, strategy_schema, text_of};
use crate::tools::Turns;
use crate::{AgentError, DeltaSink, SpecialistOutput, StepContext};

/// Audience, angle and key messages for the writer.
pub struct Strategy {
    model: Arc<dyn Model>,
    prompts: Arc<crate::Prompts>,
    tools: Arc<crate::ToolRegistry>,
}

impl Strategy {
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
    pub const TOOLS: &'static [&'static str] =
        &["platform_constraints", "read_artifact", "hitl_request"];
}

#[async_trait]
impl crate::Specialist for Strategy {
    fn capability(&self) -> &'static str {
        STRATEGY_CAPABILITY
    }

    async fn run(
        &self,
        ctx: &StepContext,
        sink: &dyn DeltaSink,
    ) -> Result<SpecialistOutput, AgentError> {
        let context = json!({
            "objective": ctx.request.objective,
            "task": ctx.step.label,
            "brief": ctx.request.state.brief,
            "clientProfile": ctx.request.state.client_profile,
            "platform": ctx.platform(),
        })
        .to_string();
        let request = ModelRequest {
            purpose: Purpose::Strategy,
            system: self.prompts.strategy.clone(),
            messages: vec![ChatMessage::user(context)],
            temperature: ctx.request.options.temperature,
            max_tokens: Some(1_000),
            json: true,
            schema: Some(strategy_schema().clone()),
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
        let Repaired { value, usage, .. } =
            converse_with_repair(&turns, request, "strategist", parse).await?;
        if let Read::Prose(_) = &value {
            sink.event(EventKind::warning(
                "The strategist answered in prose, not JSON: the writer gets its text as notes",
                Some(json!({ "stepId": ctx.step.id, "capabilityId": STRATEGY_CAPABILITY })),
            ))
            .await;
        }
        Ok(SpecialistOutput {
            output: value.into_output(),
            usage,
        })
    }
}

/// A strategy read from a reply: the JSON asked for, or prose, which is kept.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Read {
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
