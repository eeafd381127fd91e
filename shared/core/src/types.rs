//! Domain types with their wire names (camelCase JSON), as the API and the store use them.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest objective accepted, in characters.
pub const MAX_OBJECTIVE_CHARS: usize = 4000;
/// Longest `systemPromptOverride` accepted, in characters.
pub const MAX_SYSTEM_PROMPT_OVERRIDE_CHARS: usize = 8000;
/// Most revision cycles a request may ask for.
pub const MAX_REVISION_CYCLES: u32 = 5;
/// Most acceptance criteria a request may carry.
pub const MAX_ACCEPTANCE_CRITERIA: usize = 20;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Plan-driven: planner, specialists, critic loop, final bundle.
    #[default]
    App,
    /// One agent answers freely.
    Chat,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::App => "app",
            Mode::Chat => "chat",
        })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum OnDisconnect {
    /// The run goes on when the client goes away (the default).
    #[default]
    Continue,
    Cancel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum ToolPolicy {
    Auto,
    Required,
    Off,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Budget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u32>,
}

fn default_revision_cycles() -> u32 {
    1
}
fn default_quality_threshold() -> f64 {
    0.78
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_policy: Option<ToolPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools_allowlist: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_turns: Option<u32>,
    #[serde(default = "default_revision_cycles", alias = "executionDepth")]
    pub max_revision_cycles: u32,
    #[serde(default = "default_quality_threshold")]
    pub quality_threshold: f64,
    #[serde(default)]
    pub acceptance_criteria: Vec<String>,
    #[serde(default)]
    pub on_disconnect: OnDisconnect,
    #[serde(default)]
    pub budget: Budget,
    /// Chat mode: the agent that answers (any capability but finalize; generation by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_agent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt_override: Option<String>,
    /// Pause for a human approval before the final step.
    #[serde(default)]
    pub require_approval: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            tool_policy: None,
            tools_allowlist: None,
            temperature: None,
            max_turns: None,
            max_revision_cycles: default_revision_cycles(),
            quality_threshold: default_quality_threshold(),
            acceptance_criteria: Vec::new(),
            on_disconnect: OnDisconnect::default(),
            budget: Budget::default(),
            target_agent_id: None,
            system_prompt_override: None,
            require_approval: false,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunInput {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brief: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_profile: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assets: Option<Vec<Value>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunRequest {
    #[serde(default)]
    pub mode: Mode,
    pub objective: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brief_id: Option<String>,
    #[serde(default)]
    pub state: RunInput,
    #[serde(default)]
    pub options: RunOptions,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// A request that breaks a rule, naming the field (JSON path) and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A deserialisation error at `path` (as serde_path_to_error reports it) with the field it
    /// is about: serde names an unknown or missing field only in its message, so that name is
    /// put in the path (the path already ends at an unknown field; a missing one it lacks).
    pub fn at_path(path: &str, message: String) -> Self {
        let named = ["unknown field `", "missing field `"].iter().find_map(|p| {
            message
                .split(p)
                .nth(1)?
                .split('`')
                .next()
                .map(str::to_owned)
        });
        let field = match (path, named) {
            (".", Some(name)) => name,
            (p, Some(name)) if !p.ends_with(&name) => format!("{p}.{name}"),
            (p, _) => p.to_owned(),
        };
        Self { field, message }
    }
}

impl RunRequest {
    /// A request with defaults for everything but the objective.
    pub fn new(objective: impl Into<String>) -> Self {
        Self {
            mode: Mode::App,
            objective: objective.into(),
            thread_id: None,
            brief_id: None,
            state: RunInput::default(),
            options: RunOptions::default(),
            idempotency_key: None,
        }
    }

    /// Checks the rules serde cannot express. Nothing may be started or stored for a request
    /// that fails here.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let objective = self.objective.trim();
        if objective.is_empty() {
            return Err(ValidationError::new(
                "objective",
                "must not be empty: say what the run should achieve",
            ));
        }
        let chars = self.objective.chars().count();
        if chars > MAX_OBJECTIVE_CHARS {
            return Err(ValidationError::new(
                "objective",
                format!(
                    "is {chars} characters; the limit is {MAX_OBJECTIVE_CHARS}: shorten it or move detail into state.brief"
                ),
            ));
        }
        self.options.validate()?;
        if let Some(key) = &self.idempotency_key
            && (key.is_empty() || key.len() > 255)
        {
            return Err(ValidationError::new(
                "idempotencyKey",
                "must be 1 to 255 characters",
            ));
        }
        Ok(())
    }
}

impl RunOptions {
    /// The options' rules serde cannot express; each error names the field under `options`.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if let Some(p) = &self.system_prompt_override {
            let n = p.chars().count();
            if n > MAX_SYSTEM_PROMPT_OVERRIDE_CHARS {
                return Err(ValidationError::new(
                    "options.systemPromptOverride",
                    format!("is {n} characters; the limit is {MAX_SYSTEM_PROMPT_OVERRIDE_CHARS}"),
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.quality_threshold) || self.quality_threshold.is_nan() {
            return Err(ValidationError::new(
                "options.qualityThreshold",
                "must be between 0 and 1",
            ));
        }
        if self.max_revision_cycles > MAX_REVISION_CYCLES {
            return Err(ValidationError::new(
                "options.maxRevisionCycles",
                format!("must be at most {MAX_REVISION_CYCLES}"),
            ));
        }
        if let Some(t) = self.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(ValidationError::new(
                "options.temperature",
                "must be between 0 and 2",
            ));
        }
        if self.max_turns == Some(0) {
            return Err(ValidationError::new(
                "options.maxTurns",
                "must be at least 1",
            ));
        }
        if self.acceptance_criteria.len() > MAX_ACCEPTANCE_CRITERIA {
            return Err(ValidationError::new(
                "options.acceptanceCriteria",
                format!(
                    "has {} entries; the limit is {MAX_ACCEPTANCE_CRITERIA}",
                    self.acceptance_criteria.len()
                ),
            ));
        }
        if let Some(i) = self
            .acceptance_criteria
            .iter()
            .position(|c| c.trim().is_empty())
        {
            return Err(ValidationError::new(
                format!("options.acceptanceCriteria[{i}]"),
                "must not be empty",
            ));
        }
        let b = &self.budget;
        for (field, zero) in [
            ("options.budget.maxTokens", b.max_tokens == Some(0)),
            ("options.budget.maxSeconds", b.max_seconds == Some(0)),
            ("options.budget.maxSteps", b.max_steps == Some(0)),
        ] {
            if zero {
                return Err(ValidationError::new(field, "must be greater than 0"));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    InProgress,
    Done,
    Skipped,
    Failed,
}

impl StepStatus {
    /// Done or skipped: a dependent step may run.
    pub fn satisfies_dependency(self) -> bool {
        matches!(self, StepStatus::Done | StepStatus::Skipped)
    }
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            StepStatus::Done | StepStatus::Skipped | StepStatus::Failed
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum StepAction {
    /// Assemble the final bundle from the step results.
    Finalize,
    /// Pause for a human decision.
    Approval,
}

/// The capability that assembles the final bundle; `action: finalize` steps run it.
pub const FINALIZE_CAPABILITY: &str = "finalize";
/// The capability that sets audience, angle and key messages before the draft.
pub const STRATEGY_CAPABILITY: &str = "strategy";
/// The capability that writes the draft (or, in chat mode, the answer).
pub const GENERATION_CAPABILITY: &str = "generation";
/// The capability whose verdict drives the critic loop.
pub const QA_CAPABILITY: &str = "qa";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct PlanStep {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<StepAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub status: StepStatus,
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acceptance_criteria: Vec<String>,
}

impl PlanStep {
    /// The capability a dispatch of this step goes to, if any.
    pub fn capability(&self) -> Option<&str> {
        match self.action {
            Some(StepAction::Finalize) => Some(FINALIZE_CAPABILITY),
            Some(StepAction::Approval) => None,
            None => self.capability_id.as_deref(),
        }
    }
    pub fn title(&self) -> String {
        self.label
            .clone()
            .or_else(|| self.capability().map(str::to_owned))
            .unwrap_or_else(|| self.id.clone())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub version: u32,
    pub steps: Vec<PlanStep>,
}

impl Plan {
    pub fn step(&self, id: &str) -> Option<&PlanStep> {
        self.steps.iter().find(|s| s.id == id)
    }
    pub fn step_mut(&mut self, id: &str) -> Option<&mut PlanStep> {
        self.steps.iter_mut().find(|s| s.id == id)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }
    pub fn add(&mut self, other: Usage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct StepMetrics {
    pub duration_ms: u64,
    pub attempt: u32,
    pub capability_id: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct StepResult {
    pub step_id: String,
    pub attempt: u32,
    pub output: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// With `error`: the failure is worth another attempt (a transient model error, a reply
    /// that could not be used, a timeout). Decided once, where the error was classified, and
    /// stored with it, so a result read back after a crash tells the engine the same.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retryable: bool,
    pub metrics: StepMetrics,
}

impl StepResult {
    pub fn usage(&self) -> Usage {
        Usage {
            input_tokens: self.metrics.input_tokens,
            output_tokens: self.metrics.output_tokens,
        }
    }
}

/// Where a run stands. The last four are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    PendingHitl,
    Completed,
    Failed,
    Cancelled,
    BudgetExhausted,
}

impl RunStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Completed
                | RunStatus::Failed
                | RunStatus::Cancelled
                | RunStatus::BudgetExhausted
        )
    }
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::PendingHitl => "pending_hitl",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::BudgetExhausted => "budget_exhausted",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RunStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(Value::String(s.to_owned()))
            .map_err(|_| format!("unknown run status {s:?}"))
    }
}

/// Whether a run's result met the QA threshold. Only a failed gate is written on the wire
/// (`qualityGate: "failed"` on the `complete` frame and the RunReport); a run that passed, or
/// had no QA verdict to judge (chat mode, a plan without a QA step), carries no field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum QualityGate {
    #[default]
    Passed,
    /// The run completed, but its last QA verdict stayed below the threshold after the last
    /// revision cycle: the result exists, it is not up to the bar.
    Failed,
}

impl QualityGate {
    /// The gate of a run that ends with `status` and `verdict` as its last QA verdict.
    pub fn of(status: RunStatus, verdict: Option<&QualityVerdict>, threshold: f64) -> Self {
        match verdict {
            Some(v) if status == RunStatus::Completed && v.score < threshold => QualityGate::Failed,
            _ => QualityGate::Passed,
        }
    }

    pub fn is_passed(&self) -> bool {
        *self == QualityGate::Passed
    }
}

/// What the QA specialist reports; the engine's critic loop reads `score`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QualityVerdict {
    pub score: f64,
    pub pass: bool,
    #[serde(default)]
    pub issues: Vec<String>,
    #[serde(default)]
    pub criteria: Vec<CriterionResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct CriterionResult {
    pub id: String,
    pub passed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ResultContent {
    pub platform: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rationale: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knob_settings: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct QualitySummary {
    pub score: f64,
    pub issues: Vec<String>,
    pub pass: bool,
    #[serde(default)]
    pub metrics: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum AcceptanceOverall {
    Pass,
    Partial,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct AcceptanceReport {
    pub overall: AcceptanceOverall,
    pub criteria: Vec<CriterionResult>,
}

/// The result of an app-mode run. The wire key `acceptance-report` is the one existing clients
/// read; `acceptanceReport` is accepted on input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct FinalBundle {
    pub result: ResultContent,
    pub quality: QualitySummary,
    #[serde(rename = "acceptance-report", alias = "acceptanceReport")]
    pub acceptance_report: AcceptanceReport,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ReportSummary {
    pub steps: u32,
    pub failures: u32,
    pub duration_ms: u64,
    pub tokens: Usage,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RunReport {
    pub run_id: String,
    pub status: RunStatus,
    pub steps: Vec<StepResult>,
    pub summary: ReportSummary,
    #[serde(rename = "final", default, skip_serializing_if = "Option::is_none")]
    pub final_bundle: Option<FinalBundle>,
    /// Chat mode: the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `failed` when the run completed below the QA threshold; absent when it passed.
    #[serde(default, skip_serializing_if = "QualityGate::is_passed")]
    pub quality_gate: QualityGate,
}

/// One row of a run listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    pub run_id: String,
    pub mode: Mode,
    pub objective: String,
    pub status: RunStatus,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}
