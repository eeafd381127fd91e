use std::sync::Arc;

use async_trait::async_trait;
use orchestrator_core::engine::QA_CAPABILITY;
use orchestrator_core::ports::{ChatMessage, Model, ModelError, ModelRequest, Purpose};
use orchestrator_core::types::{GENERATION_CAPABILITY, Mode, STRATEGY_CAPABILITY};
use serde_json::{Value, json};

use crate::tools::Turns;
use crate::{AgentError, DeltaSink, SpecialistOutput, StepContext};

/// The writer: streams a draft (or, in chat mode, the answer) as it is produced.
pub struct Generation {
    model: Arc<dyn Model>,
    prompts: Arc<crate::Prompts>,
    tools: Arc<crate::ToolRegistry>,
}

impl Generation {
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
        "platform_constraints",
        "text_stats",
        "read_artifact",
        "hitl_request",
    ];
}

#[async_trait]
impl crate::Specialist for Generation {
    fn capability(&self) -> &'static str {
        GENERATION_CAPABILITY
    }

    async fn run(
        &self,
        ctx: &StepContext,
        sink: &dyn DeltaSink,
    ) -> Result<SpecialistOutput, AgentError> {
        let chat = ctx.request.mode == Mode::Chat;
        let platform = ctx.platform().unwrap_or_else(|| "blog".into());
        let (purpose, default_prompt, context) = if chat {
            (
                Purpose::Chat,
                self.prompts.chat.as_str(),
                json!({ "objective": ctx.request.objective }).to_string(),
            )
        } else {
            // A revision sees the previous draft and the latest QA issues; nothing else of the run.
            let feedback = ctx
                .latest(QA_CAPABILITY)
                .and_then(|q| q.get("issues"))
                .cloned()
                .unwrap_or(Value::Null);
            let previous = ctx
                .latest(GENERATION_CAPABILITY)
                .and_then(|g| g.get("text"))
                .cloned()
                .unwrap_or(Value::Null);
            (
                Purpose::Generate,
                self.prompts.writer.as_str(),
                json!({
                    "objective": ctx.request.objective,
                    "task": ctx.step.label,
                    "platform": platform,
                    "strategy": ctx.latest(STRATEGY_CAPABILITY),
                    "brief": ctx.request.state.brief,
                    "acceptanceCriteria": ctx.acceptance_criteria(),
                    "previousDraft": previous,
                    "feedback": feedback,
                })
                .to_string(),
            )
        };
        let system = ctx
            .request
            .options
            .system_prompt_override
            .clone()
            .unwrap_or_else(|| default_prompt.to_owned());
        let request = ModelRequest {
            purpose,
            system,
            messages: vec![ChatMessage::user(context)],
            temperature: ctx.request.options.temperature,
            max_tokens: Some(4_000),
            json: false,
            schema: None,
            tools: Vec::new(),
            tool_choice: Default::default(),
        };
        // The draft is the last reply: text written before a tool call streams, but is not
        // part of it.
        let finished = Turns {
            model: self.model.as_ref(),
            ctx,
            sink,
            tools: self.tools.for_step(Self::TOOLS, &ctx.request.options),
            stream: true,
        }
        .run(request)
        .await?;
        let (text, usage) = (finished.text, finished.usage);
        if text.trim().is_empty() {
            return Err(AgentError::Model(ModelError::Invalid(
                "the model returned no text".into(),
            )));
        }
        let output = if chat {
            json!({ "text": text })
        } else {
            json!({ "text": text, "platform": platform })
        };
        Ok(SpecialistOutput { output, usage })
    }
}
