//! The pure engine: `Engine::apply(state, input, now) -> (state, actions)`. No I/O: the local
//! driver and the AWS `advance` function both call it and carry out the actions it returns.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::event::{
    EventKind, Handoff, HandoffStage, HitlKind, HitlRequest, MetricsScope, Phase, PlanUpdate,
    TokenCounts, rfc3339_ms,
};
use crate::patch::PlanPatch;
use crate::tools::{DEFAULT_MAX_HITL_REQUESTS, HitlAnswer, HumanRequest, Suspended};
use crate::types::{
    FinalBundle, Mode, Plan, PlanStep, QualityGate, QualityVerdict, RunRequest, RunStatus,
    StepAction, StepResult, StepStatus, Usage,
};

/// The capability that answers in chat mode when the request names none.
pub const DEFAULT_CHAT_AGENT: &str = "generation";
/// The capability whose verdict drives the critic loop.
pub const QA_CAPABILITY: &str = "qa";

/// The rules that are configuration rather than request: which specialists exist, retries,
/// timeouts and caps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineConfig {
    pub capabilities: BTreeSet<String>,
    /// Attempts per step, the first included.
    pub max_attempts: u32,
    pub step_timeout_ms: u64,
    /// Planner calls after the first plan (critic replans, failure replans, invalid patches).
    pub max_replans: u32,
    /// Tokens set aside for each dispatched step while a token budget is in force.
    pub token_reservation: u64,
    pub approval_timeout_ms: u64,
    /// Requests for a person (the `hitl_request` tool) per run; later ones are denied.
    #[serde(default = "default_max_hitl_requests")]
    pub max_hitl_requests: u32,
}

fn default_max_hitl_requests() -> u32 {
    DEFAULT_MAX_HITL_REQUESTS
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            capabilities: ["strategy", "generation", "qa", "finalize"]
                .into_iter()
                .map(String::from)
                .collect(),
            max_attempts: 3,
            step_timeout_ms: 120_000,
            max_replans: 4,
            token_reservation: 2_048,
            approval_timeout_ms: 24 * 3600 * 1000,
            max_hitl_requests: DEFAULT_MAX_HITL_REQUESTS,
        }
    }
}

/// Why the planner is asked again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum ReplanReason {
    QualityBelowThreshold {
        step_id: String,
        score: f64,
        threshold: f64,
        issues: Vec<String>,
    },
    StepFailed {
        step_id: String,
        error: String,
    },
    InvalidPatch {
        error: String,
    },
}

impl fmt::Display for ReplanReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplanReason::QualityBelowThreshold {
                score,
                threshold,
                issues,
                ..
            } => {
                write!(
                    f,
                    "QA scored {score:.2}, below the threshold {threshold:.2}"
                )?;
                if !issues.is_empty() {
                    write!(f, ": {}", issues.join("; "))?;
                }
                Ok(())
            }
            ReplanReason::StepFailed { step_id, error } => {
                write!(f, "step {step_id} failed: {error}")
            }
            ReplanReason::InvalidPatch { error } => {
                write!(f, "the last patch was refused: {error}")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    pub id: String,
    pub step_id: String,
    pub kind: HitlKind,
    pub question: String,
    pub expires_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Dispatch {
    pub step_id: String,
    pub capability_id: String,
    pub attempt: u32,
    pub timeout_ms: u64,
}

/// What the engine hears.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum Input {
    Started,
    PlanProposed {
        patch: PlanPatch,
        /// Tokens the planner spent on it; they count against the run's budget.
        #[serde(default)]
        usage: Usage,
    },
    /// The planner gave no usable patch, even after its repair retry.
    PlanFailed {
        error: String,
    },
    StepFinished {
        result: StepResult,
    },
    StepFailed {
        step_id: String,
        attempt: u32,
        error: String,
        retryable: bool,
    },
    /// The specialist asked a person (its `hitl_request` tool) and stopped until the answer.
    StepNeedsHuman {
        step_id: String,
        attempt: u32,
        request: Box<HumanRequest>,
    },
    ApprovalGiven {
        checkpoint_id: String,
        comment: Option<String>,
    },
    ApprovalDenied {
        checkpoint_id: String,
        comment: Option<String>,
    },
    Cancelled {
        reason: String,
    },
    /// Time passed: check the wall-clock budget and checkpoint expiry.
    BudgetTick,
    /// The driver itself failed past its own retries (on AWS: a state machine task that kept
    /// failing): the run fails visibly instead of looking alive forever.
    Aborted {
        error: String,
    },
    /// The process driving the run restarted: re-issue whatever was in flight.
    Resumed,
}

/// What the engine asks its driver to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum Action {
    CallPlanner {
        reason: Option<ReplanReason>,
    },
    Dispatch {
        steps: Vec<Dispatch>,
    },
    AwaitApproval {
        checkpoint: Checkpoint,
    },
    Emit {
        event: EventKind,
    },
    /// Save the state (and the events emitted with it) before anything else happens.
    Persist,
    Finish {
        status: RunStatus,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum PlannerState {
    Idle,
    Awaiting { reason: Option<ReplanReason> },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepProgress {
    pub attempts: u32,
    pub reserved_tokens: u64,
}

/// Everything the engine knows about one run. Serializable: it is what the stores persist.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunState {
    pub run_id: String,
    pub correlation_id: String,
    pub request: RunRequest,
    pub status: RunStatus,
    pub plan: Plan,
    pub planner: PlannerState,
    pub progress: BTreeMap<String, StepProgress>,
    pub revisions: u32,
    pub replans: u32,
    pub usage: Usage,
    pub reserved_tokens: u64,
    pub dispatched: u32,
    pub started_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    pub checkpoint: Option<Checkpoint>,
    pub quality: Option<QualityVerdict>,
    pub final_bundle: Option<FinalBundle>,
    pub chat_message: Option<String>,
    /// The last replan's reason and patch shape, to catch a planner going round in circles.
    pub last_replan: Option<(String, String)>,
    pub error: Option<String>,
    /// Requests for a person made so far (asked or queued; denied ones not counted).
    #[serde(default)]
    pub hitl_requests: u32,
    /// Steps paused on a person, by step id: their conversation, and the answer once given.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub suspended: BTreeMap<String, Suspended>,
    /// The extra planner turn a plan stalled by a failed step gets has been used.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stall_replanned: bool,
    /// The fencing token of the lease its driver holds ([`crate::ports::Lease`]); never
    /// stored with the state. The store refuses a commit of this state once another owner
    /// has taken the run over. `None`: a writer without a lease (a Step Functions execution
    /// owns its run; a person's cancel).
    #[serde(skip)]
    pub lease_token: Option<u64>,
}

impl RunState {
    pub fn new(
        run_id: impl Into<String>,
        correlation_id: impl Into<String>,
        request: RunRequest,
        now_ms: u64,
    ) -> Self {
        Self {
            run_id: run_id.into(),
            correlation_id: correlation_id.into(),
            request,
            status: RunStatus::Running,
            plan: Plan::default(),
            planner: PlannerState::Idle,
            progress: BTreeMap::new(),
            revisions: 0,
            replans: 0,
            usage: Usage::default(),
            reserved_tokens: 0,
            dispatched: 0,
            started_at_ms: now_ms,
            finished_at_ms: None,
            checkpoint: None,
            quality: None,
            final_bundle: None,
            chat_message: None,
            last_replan: None,
            error: None,
            hitl_requests: 0,
            suspended: BTreeMap::new(),
            stall_replanned: false,
            lease_token: None,
        }
    }

    /// Whether the result met the QA threshold ([`QualityGate`]).
    pub fn quality_gate(&self) -> QualityGate {
        let threshold = self.request.options.quality_threshold;
        QualityGate::of(self.status, self.quality.as_ref(), threshold)
    }

    pub fn duration_ms(&self, now_ms: u64) -> u64 {
        self.finished_at_ms
            .unwrap_or(now_ms)
            .saturating_sub(self.started_at_ms)
    }

    fn attempts(&self, step_id: &str) -> u32 {
        self.progress.get(step_id).map_or(0, |p| p.attempts)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Engine {
    pub config: EngineConfig,
}

/// Collects the actions of one `apply`.
struct Out(Vec<Action>);

impl Out {
    fn emit(&mut self, event: EventKind) {
        self.0.push(Action::Emit { event });
    }
}

impl Engine {
    pub fn new(config: EngineConfig) -> Self {
        Self { config }
    }

    /// Applies one input. Inputs for a finished run, and stale step reports (a step that is not
    /// in progress, or an attempt that is not the current one), change nothing.
    pub fn apply(&self, state: RunState, input: Input, now_ms: u64) -> (RunState, Vec<Action>) {
        let mut state = state;
        let mut out = Out(Vec::new());
        if state.status.is_terminal() {
            return (state, Vec::new());
        }
        let changed = match input {
            Input::Started => self.on_started(&mut state, now_ms, &mut out),
            Input::PlanProposed { patch, usage } => {
                self.on_plan(&mut state, patch, usage, now_ms, &mut out)
            }
            Input::PlanFailed { error } => self.on_plan_failed(&mut state, error, now_ms, &mut out),
            Input::StepFinished { result } => {
                self.on_step_finished(&mut state, result, now_ms, &mut out)
            }
            Input::StepFailed {
                step_id,
                attempt,
                error,
                retryable,
            } => self.on_step_failed(
                &mut state, &step_id, attempt, error, retryable, now_ms, &mut out,
            ),
            Input::StepNeedsHuman {
                step_id,
                attempt,
                request,
            } => self.on_needs_human(&mut state, &step_id, attempt, *request, now_ms, &mut out),
            Input::ApprovalGiven {
                checkpoint_id,
                comment,
            } => self.on_approval(&mut state, &checkpoint_id, true, comment, now_ms, &mut out),
            Input::ApprovalDenied {
                checkpoint_id,
                comment,
            } => self.on_approval(&mut state, &checkpoint_id, false, comment, now_ms, &mut out),
            Input::Cancelled { reason } => {
                self.finish(
                    &mut state,
                    RunStatus::Cancelled,
                    Some(reason),
                    now_ms,
                    &mut out,
                );
                true
            }
            Input::BudgetTick => self.on_tick(&mut state, now_ms, &mut out),
            Input::Aborted { error } => {
                self.fail(&mut state, error, now_ms, &mut out);
                true
            }
            Input::Resumed => self.on_resumed(&mut state, now_ms, &mut out),
        };
        if changed {
            // Persist goes first: the driver must save before it carries anything out.
            out.0.insert(0, Action::Persist);
        }
        (state, out.0)
    }

    fn on_started(&self, state: &mut RunState, now_ms: u64, out: &mut Out) -> bool {
        if state.plan.version > 0 || state.planner != PlannerState::Idle {
            return false;
        }
        out.emit(EventKind::Start {
            message: format!("Run started ({} mode)", state.request.mode),
        });
        match state.request.mode {
            Mode::Chat => {
                let agent = state
                    .request
                    .options
                    .target_agent_id
                    .clone()
                    .unwrap_or_else(|| DEFAULT_CHAT_AGENT.to_owned());
                state.plan = Plan {
                    version: 1,
                    steps: vec![PlanStep {
                        id: "chat".into(),
                        capability_id: Some(agent),
                        action: None,
                        label: Some("Answer".into()),
                        status: StepStatus::Pending,
                        depends_on: Vec::new(),
                        note: None,
                        acceptance_criteria: Vec::new(),
                    }],
                };
                self.schedule(state, now_ms, out);
            }
            Mode::App => {
                out.emit(EventKind::Phase {
                    phase: Phase::Planning,
                    message: "Planning the work".into(),
                });
                state.planner = PlannerState::Awaiting { reason: None };
                out.0.push(Action::CallPlanner { reason: None });
            }
        }
        true
    }

    fn on_plan(
        &self,
        state: &mut RunState,
        patch: PlanPatch,
        usage: Usage,
        now_ms: u64,
        out: &mut Out,
    ) -> bool {
        let PlannerState::Awaiting { reason } = state.planner.clone() else {
            return false;
        };
        state.usage.add(usage);
        let patch = state.plan.reconcile(patch);
        let next = match state.plan.apply_patch(&patch) {
            Ok(next) => next,
            Err(e) => {
                out.emit(EventKind::warning(
                    format!("The planner's patch was refused: {e}"),
                    Some(json!({ "patch": patch })),
                ));
                state.planner = PlannerState::Idle;
                self.ask_planner(
                    state,
                    ReplanReason::InvalidPatch {
                        error: e.to_string(),
                    },
                    now_ms,
                    out,
                );
                return true;
            }
        };
        if let Some(reason) = &reason {
            let key = (reason.to_string(), patch.fingerprint());
            if state.last_replan.as_ref() == Some(&key) {
                state.planner = PlannerState::Idle;
                self.fail(
                    state,
                    "replan loop: the planner proposed the same change for the same reason twice"
                        .into(),
                    now_ms,
                    out,
                );
                return true;
            }
            state.last_replan = Some(key);
        }
        state.plan = next;
        state.planner = PlannerState::Idle;
        out.emit(EventKind::PlanUpdate {
            data: PlanUpdate {
                patch,
                version: state.plan.version,
                reason: reason.map(|r| r.to_string()),
            },
        });
        self.schedule(state, now_ms, out);
        true
    }

    fn on_plan_failed(
        &self,
        state: &mut RunState,
        error: String,
        now_ms: u64,
        out: &mut Out,
    ) -> bool {
        if !matches!(state.planner, PlannerState::Awaiting { .. }) {
            return false;
        }
        state.planner = PlannerState::Idle;
        if state.plan.version == 0 {
            self.fail(
                state,
                format!("the planner produced no usable plan: {error}"),
                now_ms,
                out,
            );
        } else {
            // Carry on with the plan we have; if it cannot finish, schedule reports the stall.
            out.emit(EventKind::warning(
                format!(
                    "Replanning failed, continuing with plan version {}: {error}",
                    state.plan.version
                ),
                None,
            ));
            self.schedule(state, now_ms, out);
        }
        true
    }

    /// Whether `step_id` is in progress with exactly `attempt`.
    fn is_current(state: &RunState, step_id: &str, attempt: u32) -> bool {
        state
            .plan
            .step(step_id)
            .is_some_and(|s| s.status == StepStatus::InProgress)
            && state.attempts(step_id) == attempt
    }

    fn release(state: &mut RunState, step_id: &str) {
        if let Some(p) = state.progress.get_mut(step_id) {
            state.reserved_tokens = state.reserved_tokens.saturating_sub(p.reserved_tokens);
            p.reserved_tokens = 0;
        }
    }

    fn on_step_finished(
        &self,
        state: &mut RunState,
        result: StepResult,
        now_ms: u64,
        out: &mut Out,
    ) -> bool {
        if !Self::is_current(state, &result.step_id, result.attempt) {
            return false;
        }
        state.suspended.remove(&result.step_id);
        let step_id = result.step_id.clone();
        let capability = state
            .plan
            .step(&step_id)
            .and_then(PlanStep::capability)
            .unwrap_or_default()
            .to_owned();
        Self::release(state, &step_id);
        state.usage.add(result.usage());
        out.emit(EventKind::Metrics {
            tokens: TokenCounts {
                input: result.metrics.input_tokens,
                output: result.metrics.output_tokens,
            },
            duration_ms: result.metrics.duration_ms,
            data: Some(MetricsScope {
                step_id: step_id.clone(),
                capability_id: capability.clone(),
            }),
        });

        // Read what the engine needs from the output before declaring the step done.
        let mut replan = None;
        if state.request.mode == Mode::Chat {
            let text = result
                .output
                .get("text")
                .and_then(Value::as_str)
                .unwrap_or_default();
            state.chat_message = Some(text.to_owned());
            out.emit(EventKind::Message {
                message: text.to_owned(),
            });
        } else if capability == QA_CAPABILITY {
            match serde_json::from_value::<QualityVerdict>(result.output.clone()) {
                Ok(verdict) => {
                    let opts = &state.request.options;
                    out.emit(EventKind::Message {
                        message: format!(
                            "QA score {:.2} (threshold {:.2}): {}",
                            verdict.score,
                            opts.quality_threshold,
                            if verdict.score >= opts.quality_threshold {
                                "pass"
                            } else {
                                "below threshold"
                            }
                        ),
                    });
                    if verdict.score < opts.quality_threshold {
                        if state.revisions < opts.max_revision_cycles {
                            replan = Some(ReplanReason::QualityBelowThreshold {
                                step_id: step_id.clone(),
                                score: verdict.score,
                                threshold: opts.quality_threshold,
                                issues: verdict.issues.clone(),
                            });
                        } else {
                            out.emit(EventKind::warning(
                                format!(
                                    "QA scored {:.2}, below the threshold {:.2}, after {} revision cycle(s); finishing with this draft",
                                    verdict.score, opts.quality_threshold, state.revisions
                                ),
                                Some(json!({ "stepId": step_id, "issues": verdict.issues })),
                            ));
                        }
                    }
                    state.quality = Some(verdict);
                }
                Err(e) => {
                    return self.step_failed_for_good(
                        state,
                        &step_id,
                        format!("QA output is not a verdict: {e}"),
                        now_ms,
                        out,
                    );
                }
            }
        } else if capability == crate::types::FINALIZE_CAPABILITY {
            match serde_json::from_value::<FinalBundle>(result.output.clone()) {
                Ok(bundle) => state.final_bundle = Some(bundle),
                Err(e) => {
                    return self.step_failed_for_good(
                        state,
                        &step_id,
                        format!("finalize output is not a final bundle: {e}"),
                        now_ms,
                        out,
                    );
                }
            }
        }
        if let Some(step) = state.plan.step_mut(&step_id) {
            step.status = StepStatus::Done;
        }
        if let Some(reason) = replan {
            state.revisions += 1;
            if !self.ask_planner(state, reason, now_ms, out) {
                return true;
            }
            return true;
        }
        self.schedule(state, now_ms, out);
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn on_step_failed(
        &self,
        state: &mut RunState,
        step_id: &str,
        attempt: u32,
        error: String,
        retryable: bool,
        now_ms: u64,
        out: &mut Out,
    ) -> bool {
        if !Self::is_current(state, step_id, attempt) {
            return false;
        }
        state.suspended.remove(step_id);
        Self::release(state, step_id);
        if retryable && attempt < self.config.max_attempts {
            out.emit(EventKind::warning(
                format!(
                    "Step {step_id} failed ({error}); retrying, attempt {} of {}",
                    attempt + 1,
                    self.config.max_attempts
                ),
                Some(json!({ "stepId": step_id, "attempt": attempt, "retryable": true })),
            ));
            if let Some(step) = state.plan.step_mut(step_id) {
                step.status = StepStatus::Pending;
            }
            self.schedule(state, now_ms, out);
            return true;
        }
        let error = if retryable {
            format!("{error} (after {attempt} attempts)")
        } else {
            error
        };
        self.step_failed_for_good(state, step_id, error, now_ms, out)
    }

    /// A step that will not succeed: failed in the plan, a warning on the stream, and a replan
    /// if any are left (else the run fails).
    fn step_failed_for_good(
        &self,
        state: &mut RunState,
        step_id: &str,
        error: String,
        now_ms: u64,
        out: &mut Out,
    ) -> bool {
        let capability = state
            .plan
            .step(step_id)
            .and_then(PlanStep::capability)
            .map(str::to_owned);
        if let Some(step) = state.plan.step_mut(step_id) {
            step.status = StepStatus::Failed;
            step.note = Some(error.clone());
        }
        out.emit(EventKind::warning(
            format!("Step {step_id} failed: {error}"),
            Some(json!({ "stepId": step_id, "capabilityId": capability, "error": error })),
        ));
        if state.request.mode == Mode::Chat {
            self.fail(state, format!("the answer failed: {error}"), now_ms, out);
            return true;
        }
        self.ask_planner(
            state,
            ReplanReason::StepFailed {
                step_id: step_id.to_owned(),
                error,
            },
            now_ms,
            out,
        );
        true
    }

    /// Asks for a replan, or fails the run when the replan cap is reached. Returns whether the
    /// planner was asked.
    fn ask_planner(
        &self,
        state: &mut RunState,
        reason: ReplanReason,
        now_ms: u64,
        out: &mut Out,
    ) -> bool {
        if matches!(state.planner, PlannerState::Awaiting { .. }) {
            return true;
        }
        if state.replans >= self.config.max_replans {
            self.fail(
                state,
                format!(
                    "replan limit ({}) reached; last reason: {reason}",
                    self.config.max_replans
                ),
                now_ms,
                out,
            );
            return false;
        }
        Self::call_planner(state, reason, out);
        true
    }

    /// Asks the planner, whatever the replan cap says.
    fn call_planner(state: &mut RunState, reason: ReplanReason, out: &mut Out) {
        state.replans += 1;
        out.emit(EventKind::Phase {
            phase: Phase::Planning,
            message: format!("Replanning: {reason}"),
        });
        state.planner = PlannerState::Awaiting {
            reason: Some(reason.clone()),
        };
        out.0.push(Action::CallPlanner {
            reason: Some(reason),
        });
    }

    fn on_approval(
        &self,
        state: &mut RunState,
        checkpoint_id: &str,
        approved: bool,
        comment: Option<String>,
        now_ms: u64,
        out: &mut Out,
    ) -> bool {
        let Some(checkpoint) = state.checkpoint.clone().filter(|c| c.id == checkpoint_id) else {
            return false;
        };
        state.checkpoint = None;
        state.status = RunStatus::Running;
        let suffix = comment
            .as_ref()
            .map(|c| format!(": {c}"))
            .unwrap_or_default();
        let asked_by_tool = state
            .suspended
            .get(&checkpoint.step_id)
            .is_some_and(|s| s.checkpoint_id == checkpoint_id);
        if asked_by_tool {
            // The specialist asked: its step runs again with the answer as the tool's result,
            // whichever way the person decided (the model reads the decision).
            out.emit(EventKind::Message {
                message: format!(
                    "Checkpoint {checkpoint_id} {}{suffix}",
                    if approved { "approved" } else { "rejected" }
                ),
            });
            let answer = HitlAnswer {
                approved,
                comment,
                denied: None,
            };
            self.resume_suspended(state, &checkpoint.step_id, answer, out);
            self.open_next_tool_checkpoint(state, now_ms, out);
            self.schedule(state, now_ms, out);
        } else if approved {
            if let Some(step) = state.plan.step_mut(&checkpoint.step_id) {
                step.status = StepStatus::Done;
            }
            out.emit(EventKind::Message {
                message: format!("Checkpoint {checkpoint_id} approved{suffix}"),
            });
            self.schedule(state, now_ms, out);
        } else {
            if let Some(step) = state.plan.step_mut(&checkpoint.step_id) {
                step.status = StepStatus::Failed;
            }
            self.finish(
                state,
                RunStatus::Cancelled,
                Some(format!("checkpoint {checkpoint_id} rejected{suffix}")),
                now_ms,
                out,
            );
        }
        true
    }

    fn on_tick(&self, state: &mut RunState, now_ms: u64, out: &mut Out) -> bool {
        if let Some(cp) = &state.checkpoint
            && now_ms >= cp.expires_at_ms
        {
            let reason = format!("checkpoint {} expired without an answer", cp.id);
            self.fail(state, reason, now_ms, out);
            return true;
        }
        self.out_of_time(state, now_ms, out)
    }

    fn out_of_time(&self, state: &mut RunState, now_ms: u64, out: &mut Out) -> bool {
        match state.request.options.budget.max_seconds {
            Some(max) if state.duration_ms(now_ms) >= max.saturating_mul(1000) => {
                self.finish(
                    state,
                    RunStatus::BudgetExhausted,
                    Some(format!("the time budget of {max} s is used up")),
                    now_ms,
                    out,
                );
                true
            }
            _ => false,
        }
    }

    fn on_resumed(&self, state: &mut RunState, now_ms: u64, out: &mut Out) -> bool {
        // A run whose start was never applied has nothing in flight: start it, rather than let
        // `schedule` find an empty plan and report the run completed.
        if state.plan.version == 0 && state.planner == PlannerState::Idle {
            return self.on_started(state, now_ms, out);
        }
        if let PlannerState::Awaiting { reason } = &state.planner {
            out.0.push(Action::CallPlanner {
                reason: reason.clone(),
            });
        }
        if let Some(checkpoint) = &state.checkpoint {
            out.0.push(Action::AwaitApproval {
                checkpoint: checkpoint.clone(),
            });
        }
        // An interrupted attempt never produced a result; it runs again under the same attempt
        // number, so a result it did store is found instead of written twice.
        let interrupted = self.outstanding(state);
        for d in &interrupted {
            out.emit(EventKind::warning(
                format!(
                    "Step {} was interrupted; running attempt {} again",
                    d.step_id, d.attempt
                ),
                Some(json!({ "stepId": d.step_id, "attempt": d.attempt, "restart": true })),
            ));
        }
        if !interrupted.is_empty() {
            out.0.push(Action::Dispatch { steps: interrupted });
        }
        self.schedule(state, now_ms, out);
        true
    }

    /// The dispatches in flight according to the state: steps in progress (not approvals, not
    /// waiting on a person's answer), under their current attempt. A driver that does not keep
    /// its own record of what it dispatched (Step Functions' `advance`) carries out these.
    pub fn outstanding(&self, state: &RunState) -> Vec<Dispatch> {
        state
            .plan
            .steps
            .iter()
            .filter(|s| {
                s.status == StepStatus::InProgress
                    && s.action != Some(StepAction::Approval)
                    && state
                        .suspended
                        .get(&s.id)
                        .is_none_or(|w| w.answer.is_some())
            })
            .filter_map(|s| {
                Some(Dispatch {
                    step_id: s.id.clone(),
                    capability_id: s.capability()?.to_owned(),
                    attempt: state.attempts(&s.id),
                    timeout_ms: self.config.step_timeout_ms,
                })
            })
            .collect()
    }

    /// Dispatches every ready step the budgets allow; finishes the run when nothing is left.
    fn schedule(&self, state: &mut RunState, now_ms: u64, out: &mut Out) {
        if state.status.is_terminal() || matches!(state.planner, PlannerState::Awaiting { .. }) {
            return;
        }
        if self.out_of_time(state, now_ms, out) {
            return;
        }
        let ready: Vec<String> = state
            .plan
            .steps
            .iter()
            .filter(|s| s.status == StepStatus::Pending)
            .filter(|s| {
                s.depends_on.iter().all(|d| {
                    state
                        .plan
                        .step(d)
                        .is_some_and(|dep| dep.status.satisfies_dependency())
                })
            })
            .map(|s| s.id.clone())
            .collect();

        let mut dispatches = Vec::new();
        let mut missing = None;
        let mut exhausted = None;
        for id in ready {
            let Some(step) = state.plan.step(&id).cloned() else {
                continue;
            };
            if step.action == Some(StepAction::Approval) {
                if state.checkpoint.is_none() {
                    self.open_checkpoint(state, &step, now_ms, out);
                }
                continue;
            }
            let capability = step.capability().unwrap_or_default().to_owned();
            if !self.config.capabilities.contains(&capability) {
                missing.get_or_insert((id.clone(), capability));
                continue;
            }
            if let Some(why) = self.budget_refusal(state) {
                exhausted = Some(why);
                break;
            }
            let reservation = match state.request.options.budget.max_tokens {
                Some(max) => self
                    .config
                    .token_reservation
                    .min(max.saturating_sub(state.usage.total() + state.reserved_tokens)),
                None => 0,
            };
            let progress = state.progress.entry(id.clone()).or_default();
            progress.attempts += 1;
            progress.reserved_tokens = reservation;
            let attempt = progress.attempts;
            state.reserved_tokens += reservation;
            state.dispatched += 1;
            if let Some(s) = state.plan.step_mut(&id) {
                s.status = StepStatus::InProgress;
            }
            out.emit(EventKind::Phase {
                phase: Phase::of_capability(&capability),
                message: format!("{capability} is working on {}: {}", id, step.title()),
            });
            out.emit(EventKind::Handoff {
                message: HandoffStage::Requested,
                data: Handoff {
                    from: Some("orchestrator".into()),
                    to: capability.clone(),
                    capability_id: capability.clone(),
                    step_id: id.clone(),
                },
            });
            dispatches.push(Dispatch {
                step_id: id,
                capability_id: capability,
                attempt,
                timeout_ms: self.config.step_timeout_ms,
            });
        }
        let dispatched_any = !dispatches.is_empty();
        if dispatched_any {
            out.0.push(Action::Dispatch { steps: dispatches });
        }
        if let Some((step_id, capability)) = missing {
            let error = format!("no specialist provides capability {capability:?}");
            self.step_failed_for_good(state, &step_id, error, now_ms, out);
            return;
        }
        let in_flight = state
            .plan
            .steps
            .iter()
            .any(|s| s.status == StepStatus::InProgress);
        if in_flight || dispatched_any {
            return;
        }
        if let Some(why) = exhausted {
            self.finish(state, RunStatus::BudgetExhausted, Some(why), now_ms, out);
            return;
        }
        self.settle(state, now_ms, out);
    }

    /// Nothing runs and nothing can start: the run ends, unless a plan stalled by a failed
    /// step still has its one more planner turn.
    fn settle(&self, state: &mut RunState, now_ms: u64, out: &mut Out) {
        let failed: Vec<&str> = state
            .plan
            .steps
            .iter()
            .filter(|s| s.status == StepStatus::Failed)
            .map(|s| s.id.as_str())
            .collect();
        let blocked: Vec<&str> = state
            .plan
            .steps
            .iter()
            .filter(|s| s.status == StepStatus::Pending)
            .map(|s| s.id.as_str())
            .collect();
        if !blocked.is_empty() && !failed.is_empty() && !state.stall_replanned {
            // One more planner turn, told which step failed and why, before the run fails.
            state.stall_replanned = true;
            let step_id = failed[0].to_owned();
            let error = state
                .plan
                .step(&step_id)
                .and_then(|s| s.note.clone())
                .unwrap_or_else(|| "it failed".to_owned());
            if !matches!(state.planner, PlannerState::Awaiting { .. }) {
                Self::call_planner(state, ReplanReason::StepFailed { step_id, error }, out);
            }
            return;
        }
        if !blocked.is_empty() {
            let why = format!(
                "stalled: steps {} wait on steps that cannot finish ({})",
                blocked.join(", "),
                if failed.is_empty() {
                    "none ready".to_owned()
                } else {
                    format!("failed: {}", failed.join(", "))
                }
            );
            self.fail(state, why, now_ms, out);
        } else if !failed.is_empty() {
            let why = format!("steps failed: {}", failed.join(", "));
            self.fail(state, why, now_ms, out);
        } else {
            self.finish(state, RunStatus::Completed, None, now_ms, out);
        }
    }

    fn budget_refusal(&self, state: &RunState) -> Option<String> {
        let budget = &state.request.options.budget;
        if let Some(max) = budget.max_steps
            && state.dispatched >= max
        {
            return Some(format!("the step budget of {max} is used up"));
        }
        if let Some(max) = budget.max_tokens
            && state.usage.total() + state.reserved_tokens >= max
        {
            return Some(format!(
                "the token budget of {max} is used up ({} used, {} reserved)",
                state.usage.total(),
                state.reserved_tokens
            ));
        }
        None
    }

    /// A specialist asked a person: open a checkpoint (or queue it behind the open one), or,
    /// past the per-run cap, deny it and run the step on at once.
    fn on_needs_human(
        &self,
        state: &mut RunState,
        step_id: &str,
        attempt: u32,
        request: HumanRequest,
        now_ms: u64,
        out: &mut Out,
    ) -> bool {
        // A step already waiting cannot ask again; one resumed with its answer can.
        let waiting = state
            .suspended
            .get(step_id)
            .is_some_and(|w| w.answer.is_none());
        if !Self::is_current(state, step_id, attempt) || waiting {
            return false;
        }
        Self::release(state, step_id);
        state.usage.add(request.usage);
        let checkpoint_id = format!("hitl-{step_id}-{}", state.hitl_requests + 1);
        let over_cap = state.hitl_requests >= self.config.max_hitl_requests;
        let question = request.question.clone();
        state.suspended.insert(
            step_id.to_owned(),
            Suspended {
                attempt,
                checkpoint_id,
                request,
                answer: None,
            },
        );
        if over_cap {
            out.emit(EventKind::warning(
                format!(
                    "Step {step_id} asked a person more than {} times in this run; denied: {question}",
                    self.config.max_hitl_requests
                ),
                Some(json!({ "stepId": step_id, "denied": "too many requests" })),
            ));
            let answer = HitlAnswer {
                approved: false,
                comment: None,
                denied: Some("too many requests".into()),
            };
            self.resume_suspended(state, step_id, answer, out);
            return true;
        }
        state.hitl_requests += 1;
        self.open_next_tool_checkpoint(state, now_ms, out);
        true
    }

    /// Gives a paused step its answer and dispatches it again (same attempt: it stored no
    /// result, and its conversation carries on from where it stopped).
    fn resume_suspended(
        &self,
        state: &mut RunState,
        step_id: &str,
        answer: HitlAnswer,
        out: &mut Out,
    ) {
        let Some(waiting) = state.suspended.get_mut(step_id) else {
            return;
        };
        waiting.answer = Some(answer);
        let attempt = waiting.attempt;
        let Some(capability) = state
            .plan
            .step(step_id)
            .and_then(PlanStep::capability)
            .map(str::to_owned)
        else {
            return;
        };
        out.emit(EventKind::Handoff {
            message: HandoffStage::Requested,
            data: Handoff {
                from: Some("orchestrator".into()),
                to: capability.clone(),
                capability_id: capability.clone(),
                step_id: step_id.to_owned(),
            },
        });
        out.0.push(Action::Dispatch {
            steps: vec![Dispatch {
                step_id: step_id.to_owned(),
                capability_id: capability,
                attempt,
                timeout_ms: self.config.step_timeout_ms,
            }],
        });
    }

    /// Opens the checkpoint of the first paused step still waiting, unless one is open.
    fn open_next_tool_checkpoint(&self, state: &mut RunState, now_ms: u64, out: &mut Out) {
        if state.checkpoint.is_some() {
            return;
        }
        let Some((step_id, waiting)) = state
            .suspended
            .iter()
            .find(|(_, w)| w.answer.is_none())
            .map(|(id, w)| (id.clone(), w.clone()))
        else {
            return;
        };
        let checkpoint = Checkpoint {
            id: waiting.checkpoint_id.clone(),
            step_id: step_id.clone(),
            kind: waiting.request.kind,
            question: waiting.request.question.clone(),
            expires_at_ms: now_ms + self.config.approval_timeout_ms,
        };
        state.status = RunStatus::PendingHitl;
        state.checkpoint = Some(checkpoint.clone());
        out.emit(EventKind::HitlRequest {
            data: HitlRequest {
                checkpoint_id: checkpoint.id.clone(),
                kind: checkpoint.kind,
                question: checkpoint.question.clone(),
                expires_at: rfc3339_ms(checkpoint.expires_at_ms),
                step_id: Some(step_id),
                urgency: Some(waiting.request.urgency),
            },
        });
        out.0.push(Action::AwaitApproval { checkpoint });
    }

    fn open_checkpoint(&self, state: &mut RunState, step: &PlanStep, now_ms: u64, out: &mut Out) {
        let checkpoint = Checkpoint {
            id: format!("cp-{}", step.id),
            step_id: step.id.clone(),
            kind: HitlKind::Approval,
            question: step
                .label
                .clone()
                .unwrap_or_else(|| "Approve the work so far before it is finalized?".into()),
            expires_at_ms: now_ms + self.config.approval_timeout_ms,
        };
        if let Some(s) = state.plan.step_mut(&step.id) {
            s.status = StepStatus::InProgress;
        }
        state.status = RunStatus::PendingHitl;
        state.checkpoint = Some(checkpoint.clone());
        out.emit(EventKind::HitlRequest {
            data: HitlRequest {
                checkpoint_id: checkpoint.id.clone(),
                kind: checkpoint.kind,
                question: checkpoint.question.clone(),
                expires_at: rfc3339_ms(checkpoint.expires_at_ms),
                step_id: Some(step.id.clone()),
                urgency: None,
            },
        });
        out.0.push(Action::AwaitApproval { checkpoint });
    }

    fn fail(&self, state: &mut RunState, why: String, now_ms: u64, out: &mut Out) {
        out.emit(EventKind::Error {
            message: why.clone(),
            data: None,
        });
        self.finish(state, RunStatus::Failed, Some(why), now_ms, out);
    }

    fn finish(
        &self,
        state: &mut RunState,
        status: RunStatus,
        why: Option<String>,
        now_ms: u64,
        out: &mut Out,
    ) {
        state.status = status;
        state.finished_at_ms = Some(now_ms);
        state.checkpoint = None;
        state.planner = PlannerState::Idle;
        state.error = why.clone();
        let duration_ms = state.duration_ms(now_ms);
        out.emit(EventKind::Metrics {
            tokens: TokenCounts {
                input: state.usage.input_tokens,
                output: state.usage.output_tokens,
            },
            duration_ms,
            data: None,
        });
        let data = match (state.request.mode, &state.final_bundle) {
            (Mode::Chat, _) => json!({ "message": state.chat_message.clone().unwrap_or_default() }),
            (Mode::App, Some(bundle)) if status == RunStatus::Completed => {
                serde_json::to_value(bundle).unwrap_or(Value::Null)
            }
            _ => json!({ "error": why }),
        };
        out.emit(EventKind::Complete {
            data,
            duration_ms,
            status,
            quality_gate: state.quality_gate(),
        });
        out.0.push(Action::Finish { status });
    }
}
