//! The skeleton every model-backed specialist shares: build the request from the step's own
//! context, hold the conversation (tools, streaming, one repair request), read the reply, and
//! turn it into the step's output. A [`Role`] says only what differs: its capability, tools,
//! prompt and context, reply schema, whether it streams, and how its reply becomes the output.

use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use orchestrator_core::ports::{
    ChatMessage, Model, ModelError, ModelRequest, Purpose, ReplySchema,
};
use orchestrator_core::types::{Mode, Usage};
use serde_json::{Value, json};

use crate::repair::{Repaired, converse_with_repair};
use crate::replies::Unusable;
use crate::tools::Turns;
use crate::{AgentError, DeltaSink, Prompts, SpecialistOutput, StepContext, ToolRegistry};

/// How a reply that cannot be used is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// One repair request quotes the problem; `agent` names the specialist in its warning and
    /// in the error when the repaired reply is unusable too.
    Repaired { agent: &'static str },
    /// The step fails at once as an invalid model reply: a draft already streamed to the
    /// reader is not asked for again.
    AsIs,
}

/// The part of a step's model request that is the role's: the rest (one user message, the
/// reply schema, the tools) the skeleton adds.
pub struct Ask<S> {
    pub purpose: Purpose,
    pub system: String,
    /// The step's context, already serialised: the JSON tree is not kept through the call.
    pub context: String,
    pub temperature: Option<f32>,
    /// What the role keeps from the context to read the reply and build the output.
    pub keep: S,
}

/// What one model-backed specialist is, beyond the skeleton.
#[async_trait]
pub trait Role: Send + Sync + 'static {
    const CAPABILITY: &'static str;
    /// The tools it may use (before the request's policy and allowlist).
    const TOOLS: &'static [&'static str];
    /// Its reply's text streams to the sink as it is written.
    const STREAMS: bool;
    const READING: Reading;
    const MAX_TOKENS: u32;
    /// Who answers in chat mode: appended to the chat prompt, so each agent answers the
    /// question in its own role.
    const CHAT_ROLE: &'static str;
    /// What the request was built from that the reply and the output still need.
    type Keep: Send + Sync;
    /// The reply, read.
    type Reply: Send;

    /// The shape of a JSON reply; none when the reply is prose.
    fn schema() -> Option<&'static ReplySchema>;
    /// The request for this step, or why the step cannot run.
    fn ask(prompts: &Prompts, ctx: &StepContext) -> Result<Ask<Self::Keep>, AgentError>;
    /// The reply made usable, or why it cannot be.
    fn read(keep: &Self::Keep, reply: &str) -> Result<Self::Reply, Unusable>;
    /// The step's output from the reply.
    async fn output(
        keep: Self::Keep,
        reply: Self::Reply,
        ctx: &StepContext,
        sink: &dyn DeltaSink,
    ) -> Result<Value, AgentError>;
}

/// A specialist that asks a model, configured by its [`Role`].
pub struct ModelSpecialist<R> {
    model: Arc<dyn Model>,
    prompts: Arc<Prompts>,
    tools: Arc<ToolRegistry>,
    role: PhantomData<fn() -> R>,
}

impl<R: Role> ModelSpecialist<R> {
    /// The tools this specialist may use (before the request's policy and allowlist).
    pub const TOOLS: &'static [&'static str] = R::TOOLS;

    pub fn new(model: Arc<dyn Model>) -> Self {
        Self::with_prompts(model, Arc::new(Prompts::builtin()))
    }

    pub fn with_prompts(model: Arc<dyn Model>, prompts: Arc<Prompts>) -> Self {
        Self {
            model,
            prompts,
            tools: Arc::new(ToolRegistry::builtin()),
            role: PhantomData,
        }
    }

    /// Draws its tools from this registry instead of the built-in one.
    pub fn with_tools(mut self, tools: Arc<ToolRegistry>) -> Self {
        self.tools = tools;
        self
    }
}

#[async_trait]
impl<R: Role> crate::Specialist for ModelSpecialist<R> {
    fn capability(&self) -> &'static str {
        R::CAPABILITY
    }

    async fn run(
        &self,
        ctx: &StepContext,
        sink: &dyn DeltaSink,
    ) -> Result<SpecialistOutput, AgentError> {
        if ctx.request.mode == Mode::Chat {
            return self.chat(ctx, sink).await;
        }
        let Ask {
            purpose,
            system,
            context,
            temperature,
            keep,
        } = R::ask(&self.prompts, ctx)?;
        let ask = Ask {
            purpose,
            system,
            context,
            temperature,
            keep: (),
        };
        let request = model_request(ask, R::MAX_TOKENS, R::schema());
        let turns = self.turns(ctx, sink, R::STREAMS);
        let (reply, usage) = converse::<R>(&turns, request, &keep).await?;
        let output = R::output(keep, reply, ctx, sink).await?;
        Ok(SpecialistOutput { output, usage })
    }
}

impl<R: Role> ModelSpecialist<R> {
    /// Chat mode: the agent answers the message in its role, its text streamed as it comes.
    /// The answer is the step's output (`text`), whichever agent was asked.
    async fn chat(
        &self,
        ctx: &StepContext,
        sink: &dyn DeltaSink,
    ) -> Result<SpecialistOutput, AgentError> {
        let system = ctx
            .request
            .options
            .system_prompt_override
            .clone()
            .unwrap_or_else(|| format!("{}\n\n{}", self.prompts.chat.trim_end(), R::CHAT_ROLE));
        let ask = Ask {
            purpose: Purpose::Chat,
            system,
            context: json!({ "objective": ctx.request.objective, "agent": R::CAPABILITY })
                .to_string(),
            temperature: ctx.request.options.temperature,
            keep: (),
        };
        let request = model_request(ask, CHAT_MAX_TOKENS, None);
        let finished = self.turns(ctx, sink, true).run(request).await?;
        if finished.text.trim().is_empty() {
            return Err(AgentError::Model(ModelError::Invalid(
                "the model returned no text".into(),
            )));
        }
        Ok(SpecialistOutput {
            output: json!({ "text": finished.text }),
            usage: finished.usage,
        })
    }
}

impl<R: Role> ModelSpecialist<R> {
    /// The conversation of a step: the role's tools, as the request's policy allows them.
    fn turns<'a>(
        &'a self,
        ctx: &'a StepContext,
        sink: &'a dyn DeltaSink,
        stream: bool,
    ) -> Turns<'a> {
        Turns {
            model: self.model.as_ref(),
            ctx,
            sink,
            tools: self.tools.for_step(R::TOOLS, &ctx.request.options),
            stream,
        }
    }
}

/// The first request of a step's conversation: one user message with its context.
fn model_request(ask: Ask<()>, max_tokens: u32, schema: Option<&ReplySchema>) -> ModelRequest {
    ModelRequest {
        purpose: ask.purpose,
        system: ask.system,
        messages: vec![ChatMessage::user(ask.context)],
        temperature: ask.temperature,
        max_tokens: Some(max_tokens),
        json: schema.is_some(),
        schema: schema.cloned(),
        tools: Vec::new(),
        tool_choice: Default::default(),
    }
}

/// A chat answer's length limit, whichever agent answers.
const CHAT_MAX_TOKENS: u32 = 4_000;

/// The conversation's reply, read as the role reads it, and the tokens it took.
async fn converse<R: Role>(
    turns: &Turns<'_>,
    request: ModelRequest,
    keep: &R::Keep,
) -> Result<(R::Reply, Usage), AgentError> {
    match R::READING {
        Reading::Repaired { agent } => {
            let Repaired { value, usage, .. } =
                converse_with_repair(turns, request, agent, |reply| R::read(keep, reply)).await?;
            Ok((value, usage))
        }
        Reading::AsIs => {
            let finished = turns.run(request).await?;
            let value = R::read(keep, &finished.text)
                .map_err(|problem| AgentError::Model(ModelError::Invalid(problem)))?;
            Ok((value, finished.usage))
        }
    }
}
