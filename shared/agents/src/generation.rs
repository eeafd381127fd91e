use async_trait::async_trait;
use orchestrator_core::engine::QA_CAPABILITY;
use orchestrator_core::ports::{Purpose, ReplySchema};
use orchestrator_core::types::{GENERATION_CAPABILITY, STRATEGY_CAPABILITY};
use serde_json::{Value, json};

use crate::replies::Unusable;
use crate::specialist::{Ask, ModelSpecialist, Reading, Role};
use crate::{AgentError, DeltaSink, Prompts, StepContext};

/// The writer: streams a draft (or, in chat mode, the answer) as it is produced.
pub type Generation = ModelSpecialist<GenerationRole>;

/// The writer's part of the specialist skeleton.
pub struct GenerationRole;

/// What the writer keeps from its context for the output.
pub struct Draft {
    platform: String,
}

#[async_trait]
impl Role for GenerationRole {
    const CAPABILITY: &'static str = GENERATION_CAPABILITY;
    const TOOLS: &'static [&'static str] = &[
        "platform_constraints",
        "text_stats",
        "read_artifact",
        "hitl_request",
    ];
    const STREAMS: bool = true;
    const READING: Reading = Reading::AsIs;
    const MAX_TOKENS: u32 = 4_000;
    const CHAT_ROLE: &'static str =
        "You are the writer: when the message asks for copy, write it; otherwise answer plainly.";
    type Keep = Draft;
    type Reply = String;

    fn schema() -> Option<&'static ReplySchema> {
        None
    }

    fn ask(prompts: &Prompts, ctx: &StepContext) -> Result<Ask<Draft>, AgentError> {
        let platform = ctx.platform().unwrap_or_else(|| "blog".into());
        let system = ctx
            .request
            .options
            .system_prompt_override
            .clone()
            .unwrap_or_else(|| prompts.writer.clone());
        Ok(Ask {
            purpose: Purpose::Generate,
            system,
            context: draft_context(ctx, &platform),
            temperature: ctx.request.options.temperature,
            keep: Draft { platform },
        })
    }

    /// The draft is the last reply: text written before a tool call streams, but is not part
    /// of it.
    fn read(_: &Draft, reply: &str) -> Result<String, Unusable> {
        if reply.trim().is_empty() {
            return Err("the model returned no text".into());
        }
        Ok(reply.to_owned())
    }

    async fn output(
        draft: Draft,
        text: String,
        _: &StepContext,
        _: &dyn DeltaSink,
    ) -> Result<Value, AgentError> {
        Ok(json!({ "text": text, "platform": draft.platform }))
    }
}

/// A revision sees the previous draft and the latest QA issues; nothing else of the run.
fn draft_context(ctx: &StepContext, platform: &str) -> String {
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
    .to_string()
}
