use std::sync::Arc;

use async_trait::async_trait;
use orchestrator_core::ports::{ChatMessage, Model, ModelRequest, Purpose};
use serde_json::{Value, json};

use crate::repair::{Repaired, converse_with_repair};
use crate::tools::Turns;
use crate::{AgentError, DeltaSink, SpecialistOutput, StepContext, extract_json};

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
        "strategy"
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
        let Repaired { value, usage, .. } =
            converse_with_repair(&turns, request, "strategy", parse).await?;
        Ok(SpecialistOutput {
            output: value,
            usage,
        })
    }
}

fn parse(reply: &str) -> Result<Value, String> {
    let v = extract_json(reply)?;
    let obj = v.as_object().ok_or("the strategy must be a JSON object")?;
    for key in ["audience", "angle"] {
        let present = obj
            .get(key)
            .and_then(Value::as_str)
            .is_some_and(|s| !s.trim().is_empty());
        if !present {
            return Err(format!("the field {key:?} is missing or empty"));
        }
    }
    Ok(v)
}
