//! The planner and the specialists. Each builds its request from its own prompt and only the
//! context its step needs (never the planner's prompt), calls the Model port, and validates what
//! comes back before anything reaches the engine.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use orchestrator_core::event::EventKind;
use orchestrator_core::ports::{Model, ModelError};
use orchestrator_core::tools::{HumanRequest, Resume};
use orchestrator_core::types::{PlanStep, RunRequest, STRATEGY_CAPABILITY, Usage};
use serde_json::Value;

mod finalize;
mod generation;
mod planner;
mod prompt_set;
mod qa;
mod repair;
pub mod replies;
mod specialist;
mod strategy;
pub mod tools;

pub use finalize::Finalize;
pub use generation::Generation;
pub use planner::{PlanContext, PlanOutcome, Planner};
pub use prompt_set::{PROMPT_FILES, Prompts, PromptsError};
pub use qa::Qa;
pub use replies::read_json as extract_json;
pub use strategy::Strategy;
pub use tools::{Tool, ToolError, ToolRegistry, Toolset};

/// The system prompts, versioned with the code.
pub mod prompts {
    pub const PLANNER: &str = include_str!("../prompts/planner.v1.md");
    pub const STRATEGY: &str = include_str!("../prompts/strategy.v1.md");
    pub const WRITER: &str = include_str!("../prompts/writer.v1.md");
    pub const QA: &str = include_str!("../prompts/qa.v1.md");
    pub const CHAT: &str = include_str!("../prompts/chat.v1.md");
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The reply could not be used, even after the repair request.
    #[error("unusable reply: {0}")]
    Invalid(String),
    /// The step cannot run with what it was given.
    #[error("missing input: {0}")]
    MissingInput(String),
    /// Not a failure: the specialist asked a person (`hitl_request`) and stops here. The engine
    /// opens a checkpoint; the step runs again from this conversation with the answer.
    #[error("waiting for a person: {}", .0.question)]
    NeedsHuman(Box<HumanRequest>),
}

impl AgentError {
    /// Worth another attempt of the step: a transient model error, or replies that could not
    /// be used (another attempt asks afresh, and models do not answer the same way twice).
    pub fn retryable(&self) -> bool {
        match self {
            AgentError::Model(e) => e.retryable(),
            AgentError::Invalid(_) => true,
            AgentError::MissingInput(_) | AgentError::NeedsHuman(_) => false,
        }
    }
}

/// The output of a finished step of an ancestor, handed to a later step.
#[derive(Debug, Clone, PartialEq)]
pub struct PriorOutput {
    pub step_id: String,
    pub capability_id: String,
    pub output: Value,
}

/// Everything a specialist gets: its step, the request, and its ancestors' outputs, in plan
/// order. Nothing of the planner.
#[derive(Debug, Clone)]
pub struct StepContext {
    pub run_id: String,
    pub request: RunRequest,
    pub step: PlanStep,
    pub attempt: u32,
    pub inputs: Vec<PriorOutput>,
    /// Requests for a person this run still allows (`hitl_request`); past them, denied.
    pub hitl_remaining: u32,
    /// Set when the step paused for a person and is now answered: where it carries on.
    pub resume: Option<Resume>,
}

impl StepContext {
    /// The latest output of an ancestor with this capability.
    pub fn latest(&self, capability: &str) -> Option<&Value> {
        self.inputs
            .iter()
            .rev()
            .find(|p| p.capability_id == capability)
            .map(|p| &p.output)
    }

    /// Acceptance criteria of the request and of the step.
    pub fn acceptance_criteria(&self) -> Vec<String> {
        let mut all = self.request.options.acceptance_criteria.clone();
        all.extend(self.step.acceptance_criteria.iter().cloned());
        all
    }

    pub fn platform(&self) -> Option<String> {
        let from_brief = self
            .request
            .state
            .brief
            .as_ref()
            .and_then(|b| b.get("platform"))
            .and_then(Value::as_str);
        let from_strategy = self
            .latest(STRATEGY_CAPABILITY)
            .and_then(|s| s.get("platform"))
            .and_then(Value::as_str);
        from_brief.or(from_strategy).map(str::to_owned)
    }
}

/// Where streamed text goes (batched into delta events by the driver).
#[async_trait]
pub trait DeltaSink: Send + Sync {
    async fn delta(&self, text: &str);
    /// Any other event of the step (tool calls and results, warnings), after the text so far.
    async fn event(&self, _event: EventKind) {}
}

/// A sink that drops everything, for steps whose caller does not stream.
pub struct NoDeltas;

#[async_trait]
impl DeltaSink for NoDeltas {
    async fn delta(&self, _text: &str) {}
}

#[derive(Debug, Clone, PartialEq)]
pub struct SpecialistOutput {
    pub output: Value,
    pub usage: Usage,
}

#[async_trait]
pub trait Specialist: Send + Sync {
    fn capability(&self) -> &'static str;
    async fn run(
        &self,
        ctx: &StepContext,
        sink: &dyn DeltaSink,
    ) -> Result<SpecialistOutput, AgentError>;
}

pub type Specialists = BTreeMap<String, Arc<dyn Specialist>>;

/// The reference team: strategy, generation, qa and finalize, on one model.
pub fn default_specialists(model: Arc<dyn Model>) -> Specialists {
    specialists_with_prompts(model, Arc::new(Prompts::builtin()))
}

/// The reference team with these system prompts.
pub fn specialists_with_prompts(model: Arc<dyn Model>, prompts: Arc<Prompts>) -> Specialists {
    let team: Vec<Arc<dyn Specialist>> = vec![
        Arc::new(Strategy::with_prompts(model.clone(), prompts.clone())),
        Arc::new(Generation::with_prompts(model.clone(), prompts.clone())),
        Arc::new(Qa::with_prompts(model, prompts)),
        Arc::new(Finalize),
    ];
    team.into_iter()
        .map(|s| (s.capability().to_owned(), s))
        .collect()
}
