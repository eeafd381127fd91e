//! The pure engine, driven only through `Engine::apply(state, input, now_ms)` and
//! `Engine::next(state)`.

use orchestrator_core::engine::PlannerState;
use orchestrator_core::event::{HitlKind, Phase};
use orchestrator_core::{
    Checkpoint, Dispatch, Engine, EngineConfig, EventKind, Input, Mode, Move, QualityGate,
    ReplanReason, RunRequest, RunState, RunStatus, StepMetrics, StepResult, StepStatus,
    normalize_patch,
};
use serde_json::{Value, json};

/// What a driver sees after one apply: whether to persist, the events, and the moves that
/// are new since the state before (what it starts; a restarted driver starts all of them).
#[derive(Debug, Clone, PartialEq)]
enum Action {
    Persist,
    Emit { event: EventKind },
    CallPlanner { reason: Option<ReplanReason> },
    Dispatch { steps: Vec<Dispatch> },
    AwaitApproval { checkpoint: Checkpoint },
    Finish { status: RunStatus },
}

fn seen(
    engine: &Engine,
    before: &RunState,
    after: &RunState,
    input: &Input,
    events: Vec<EventKind>,
    changed: bool,
) -> Vec<Action> {
    let restarted = matches!(input, Input::Resumed);
    let mut seen: Vec<Action> = Vec::new();
    if changed {
        seen.push(Action::Persist);
    }
    seen.extend(events.into_iter().map(|event| Action::Emit { event }));
    let consumed_plan = matches!(input, Input::PlanProposed { .. } | Input::PlanFailed { .. });
    if let PlannerState::Awaiting { reason } = &after.planner
        && (restarted || consumed_plan || before.planner == PlannerState::Idle)
    {
        seen.push(Action::CallPlanner {
            reason: reason.clone(),
        });
    }
    let outstanding = |s: &RunState| match engine.next(s) {
        Move::Dispatch { steps } => steps,
        _ => Vec::new(),
    };
    // The step whose outcome this is runs no more; a restarted driver runs nothing yet.
    let ended = match input {
        Input::StepFinished { result } => Some((result.step_id.clone(), result.attempt)),
        Input::StepFailed {
            step_id, attempt, ..
        }
        | Input::StepNeedsHuman {
            step_id, attempt, ..
        } => Some((step_id.clone(), *attempt)),
        _ => None,
    };
    let running: Vec<Dispatch> = if restarted {
        Vec::new()
    } else {
        outstanding(before)
            .into_iter()
            .filter(|d| ended.as_ref() != Some(&(d.step_id.clone(), d.attempt)))
            .collect()
    };
    let steps: Vec<Dispatch> = outstanding(after)
        .into_iter()
        .filter(|d| !running.contains(d))
        .collect();
    if !steps.is_empty() {
        seen.push(Action::Dispatch { steps });
    }
    if let Some(checkpoint) = &after.checkpoint
        && (restarted || before.checkpoint.as_ref() != Some(checkpoint))
    {
        seen.push(Action::AwaitApproval {
            checkpoint: checkpoint.clone(),
        });
    }
    if after.status.is_terminal() && !before.status.is_terminal() {
        seen.push(Action::Finish {
            status: after.status,
        });
    }
    seen
}

/// A run under test: applies inputs, and checks on every step that an apply which changes
/// nothing says so (no events, not `changed`).
struct Run {
    engine: Engine,
    state: RunState,
    now: u64,
}

impl Run {
    fn new(config: EngineConfig, request: RunRequest) -> Self {
        Self {
            engine: Engine::new(config),
            state: RunState::new("run-1", "corr-1", request, 0),
            now: 0,
        }
    }

    fn app() -> Self {
        Self::new(
            EngineConfig::default(),
            RunRequest::new("Write a launch post"),
        )
    }

    /// Started, then the first plan.
    fn planned(mut self, plan: Value) -> Self {
        self.send(Input::Started);
        self.send(plan_input(plan));
        self
    }

    fn send(&mut self, input: Input) -> Vec<Action> {
        self.now += 10;
        let before = self.state.clone();
        let (after, t) = self.engine.apply(before.clone(), input.clone(), self.now);
        if !t.changed {
            assert_eq!(
                after, before,
                "{input:?} said unchanged but changed the state"
            );
            assert!(
                t.events.is_empty(),
                "{input:?} said unchanged but emitted {:?}",
                t.events
            );
        }
        let actions = seen(&self.engine, &before, &after, &input, t.events, t.changed);
        self.state = after;
        actions
    }

    fn finish(&mut self, step_id: &str, output: Value, tokens: u64) -> Vec<Action> {
        let attempt = self.state.progress.get(step_id).map_or(0, |p| p.attempts);
        self.send(finished(step_id, attempt, output, tokens))
    }

    fn fail(&mut self, step_id: &str, error: &str, retryable: bool) -> Vec<Action> {
        let attempt = self.state.progress.get(step_id).map_or(0, |p| p.attempts);
        self.send(Input::StepFailed {
            step_id: step_id.into(),
            attempt,
            error: error.into(),
            retryable,
        })
    }

    fn status_of(&self, step_id: &str) -> Option<StepStatus> {
        self.state.plan.step(step_id).map(|s| s.status)
    }
}

fn plan_input(raw: Value) -> Input {
    let patch = normalize_patch(&raw, &[]).unwrap_or_else(|e| panic!("{e}"));
    Input::PlanProposed {
        patch,
        usage: Default::default(),
    }
}

fn replan_input(run: &Run, raw: Value) -> Input {
    let existing: Vec<String> = run.state.plan.steps.iter().map(|s| s.id.clone()).collect();
    let patch = normalize_patch(&raw, &existing).unwrap_or_else(|e| panic!("{e}"));
    Input::PlanProposed {
        patch,
        usage: Default::default(),
    }
}

fn finished(step_id: &str, attempt: u32, output: Value, tokens: u64) -> Input {
    Input::StepFinished {
        result: StepResult {
            step_id: step_id.into(),
            attempt,
            output,
            error: None,
            retryable: false,
            metrics: StepMetrics {
                duration_ms: 5,
                attempt,
                capability_id: String::new(),
                input_tokens: tokens / 2,
                output_tokens: tokens - tokens / 2,
            },
        },
    }
}

fn verdict(score: f64, issues: &[&str]) -> Value {
    json!({ "score": score, "pass": score >= 0.78, "issues": issues, "criteria": [] })
}

fn bundle() -> Value {
    json!({
        "result": { "platform": "linkedin", "content": "We launched." },
        "quality": { "score": 0.9, "issues": [], "pass": true, "metrics": {} },
        "acceptance-report": { "overall": "pass", "criteria": [{ "id": "c1", "passed": true }] },
    })
}

/// strategy -> generation -> qa -> finalize.
fn linear_plan() -> Value {
    json!({ "steps": [
        { "id": "s1", "capability": "strategy", "label": "Research" },
        { "id": "s2", "capability": "generation", "label": "Draft", "dependsOn": ["s1"] },
        { "id": "s3", "capability": "qa", "label": "Review", "dependsOn": ["s2"] },
        { "id": "s4", "action": "finalize", "dependsOn": ["s3"] },
    ] })
}

/// Every dispatch in the actions, as (step, attempt).
fn dispatched(actions: &[Action]) -> Vec<(String, u32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Dispatch { steps } => Some(steps),
            _ => None,
        })
        .flatten()
        .map(|d: &Dispatch| (d.step_id.clone(), d.attempt))
        .collect()
}

fn dispatch_count(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::Dispatch { .. }))
        .count()
}

fn events(actions: &[Action]) -> Vec<&EventKind> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Emit { event } => Some(event),
            _ => None,
        })
        .collect()
}

fn warnings(actions: &[Action]) -> Vec<String> {
    events(actions)
        .into_iter()
        .filter_map(|e| match e {
            EventKind::Warning { message, .. } => Some(message.clone()),
            _ => None,
        })
        .collect()
}

fn planner_calls(actions: &[Action]) -> Vec<Option<ReplanReason>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::CallPlanner { reason } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

fn finish_status(actions: &[Action]) -> Option<RunStatus> {
    actions.iter().find_map(|a| match a {
        Action::Finish { status } => Some(*status),
        _ => None,
    })
}

/// The `complete` event's (data, status).
fn complete(actions: &[Action]) -> Option<(Value, RunStatus)> {
    events(actions).into_iter().find_map(|e| match e {
        EventKind::Complete { data, status, .. } => Some((data.clone(), *status)),
        _ => None,
    })
}

fn plan_update(actions: &[Action]) -> Option<(u32, Option<String>)> {
    events(actions).into_iter().find_map(|e| match e {
        EventKind::PlanUpdate { data } => Some((data.version, data.reason.clone())),
        _ => None,
    })
}

// ---- app mode --------------------------------------------------------------------------------

#[test]
fn starting_an_app_run_asks_the_planner() {
    // GIVEN a new app-mode run
    let mut run = Run::app();
    // WHEN it starts
    let actions = run.send(Input::Started);
    // THEN it persists, announces the start and the planning phase, and calls the planner
    assert!(
        matches!(
            actions.as_slice(),
            [
                Action::Persist,
                Action::Emit {
                    event: EventKind::Start { .. }
                },
                Action::Emit {
                    event: EventKind::Phase {
                        phase: Phase::Planning,
                        ..
                    }
                },
                Action::CallPlanner { reason: None },
            ]
        ),
        "{actions:?}"
    );
    assert_eq!(run.state.status, RunStatus::Running);
    // AND a second Started changes nothing
    assert!(run.send(Input::Started).is_empty());
}

#[test]
fn the_first_plan_dispatches_every_step_whose_dependencies_are_met_together() {
    // GIVEN a started run
    let mut run = Run::app();
    run.send(Input::Started);
    // WHEN the planner proposes two independent steps and two that wait on them
    let actions = run.send(plan_input(json!({ "steps": [
        { "id": "a", "capability": "strategy" },
        { "id": "b", "capability": "strategy" },
        { "id": "c", "capability": "generation", "dependsOn": ["a", "b"] },
        { "id": "d", "action": "finalize", "dependsOn": ["c"] },
    ] })));
    // THEN plan version 1 goes out, and a and b leave in one dispatch, at attempt 1
    assert_eq!(plan_update(&actions), Some((1, None)));
    assert_eq!(dispatch_count(&actions), 1);
    assert_eq!(dispatched(&actions), vec![("a".into(), 1), ("b".into(), 1)]);
    assert_eq!(run.status_of("a"), Some(StepStatus::InProgress));
    assert_eq!(run.status_of("c"), Some(StepStatus::Pending));

    // WHEN only one of them finishes, c still waits
    let actions = run.finish("a", json!({ "notes": "audience" }), 100);
    assert!(dispatched(&actions).is_empty());
    // WHEN the other finishes, c is dispatched
    let actions = run.finish("b", json!({ "notes": "angle" }), 100);
    assert_eq!(dispatched(&actions), vec![("c".into(), 1)]);
    assert_eq!(run.status_of("b"), Some(StepStatus::Done));
}

#[test]
fn a_full_run_completes_with_the_final_bundle() {
    // GIVEN a planned linear run
    let mut run = Run::app().planned(linear_plan());
    // WHEN every step finishes, QA passing
    run.finish("s1", json!({ "brief": "..." }), 100);
    run.finish("s2", json!({ "text": "We launched." }), 200);
    let actions = run.finish("s3", verdict(0.9, &[]), 50);
    assert_eq!(dispatched(&actions), vec![("s4".into(), 1)]);
    let actions = run.finish("s4", bundle(), 30);
    // THEN the run completes and the complete event carries the finalize step's bundle
    let (data, status) = complete(&actions).unwrap_or_else(|| panic!("{actions:?}"));
    assert_eq!(status, RunStatus::Completed);
    assert_eq!(data, bundle());
    assert_eq!(data["acceptance-report"]["overall"], "pass");
    assert_eq!(finish_status(&actions), Some(RunStatus::Completed));
    assert_eq!(run.state.status, RunStatus::Completed);
    assert_eq!(run.state.usage.total(), 380);
    // AND the run-level metrics report all tokens
    let totals = events(&actions).into_iter().find_map(|e| match e {
        EventKind::Metrics {
            tokens, data: None, ..
        } => Some(tokens.input + tokens.output),
        _ => None,
    });
    assert_eq!(totals, Some(380));
    // AND a finished run ignores further input
    assert!(
        run.send(Input::Cancelled {
            reason: "late".into()
        })
        .is_empty()
    );
}

#[test]
fn a_qa_score_below_the_threshold_triggers_a_replan_with_the_issues() {
    // GIVEN a run whose draft is under review
    let mut run = Run::app().planned(linear_plan());
    run.finish("s1", json!({}), 10);
    run.finish("s2", json!({ "text": "draft" }), 10);
    // WHEN QA scores 0.5 (threshold 0.78, one revision cycle allowed)
    let actions = run.finish("s3", verdict(0.5, &["too long", "no call to action"]), 10);
    // THEN the planner is asked again with the QA feedback, and finalize does not run
    assert_eq!(
        planner_calls(&actions),
        vec![Some(ReplanReason::QualityBelowThreshold {
            step_id: "s3".into(),
            score: 0.5,
            threshold: 0.78,
            issues: vec!["too long".into(), "no call to action".into()],
        })]
    );
    assert!(dispatched(&actions).is_empty());
    assert_eq!(run.status_of("s4"), Some(StepStatus::Pending));

    // WHEN the planner replaces finalize with a revision, a second review and a new finalize
    let replan = replan_input(
        &run,
        json!({
            "remove": ["s4"],
            "add": [
                { "id": "s5", "capability": "generation", "label": "Revise", "dependsOn": ["s3"] },
                { "id": "s6", "capability": "qa", "dependsOn": ["s5"] },
                { "id": "s7", "action": "finalize", "dependsOn": ["s6"] },
            ],
        }),
    );
    let actions = run.send(replan);
    // THEN plan version 2 goes out with the reason, and the revision is dispatched
    let (version, reason) = plan_update(&actions).unwrap_or_else(|| panic!("{actions:?}"));
    assert_eq!(version, 2);
    assert!(reason.is_some_and(|r| r.contains("too long")));
    assert_eq!(dispatched(&actions), vec![("s5".into(), 1)]);
}

#[test]
fn a_low_qa_score_without_revisions_left_warns_and_finishes() {
    // GIVEN a run that allows no revision cycle
    let mut request = RunRequest::new("Write a launch post");
    request.options.max_revision_cycles = 0;
    let mut run = Run::new(EngineConfig::default(), request).planned(linear_plan());
    run.finish("s1", json!({}), 10);
    run.finish("s2", json!({ "text": "draft" }), 10);
    // WHEN QA scores below the threshold
    let actions = run.finish("s3", verdict(0.6, &["bland"]), 10);
    // THEN a warning says so, no replan happens, and finalize runs
    assert!(planner_calls(&actions).is_empty());
    assert!(
        warnings(&actions).iter().any(|w| w.contains("0.60")),
        "{actions:?}"
    );
    assert_eq!(dispatched(&actions), vec![("s4".into(), 1)]);
    // AND the run completes
    let actions = run.finish("s4", bundle(), 10);
    assert_eq!(finish_status(&actions), Some(RunStatus::Completed));
}

/// The `complete` event's quality gate, as the wire carries it.
fn complete_quality_gate(actions: &[Action]) -> Option<Value> {
    events(actions).into_iter().find_map(|e| match e {
        EventKind::Complete { .. } => serde_json::to_value(e)
            .ok()
            .map(|v| v.get("qualityGate").cloned().unwrap_or(Value::Null)),
        _ => None,
    })
}

#[test]
fn a_run_completed_below_the_threshold_says_its_quality_gate_failed() {
    // GIVEN a run that allows no revision cycle, whose QA scores below the threshold
    let mut request = RunRequest::new("Write a launch post");
    request.options.max_revision_cycles = 0;
    let mut run = Run::new(EngineConfig::default(), request).planned(linear_plan());
    run.finish("s1", json!({}), 10);
    run.finish("s2", json!({ "text": "draft" }), 10);
    run.finish("s3", verdict(0.6, &["bland"]), 10);
    // WHEN finalize finishes
    let actions = run.finish("s4", bundle(), 10);
    // THEN the run is completed (the result exists) but the complete frame says the gate failed
    assert_eq!(finish_status(&actions), Some(RunStatus::Completed));
    assert_eq!(complete_quality_gate(&actions), Some(json!("failed")));
    // AND so does the report
    let report = orchestrator_core::report::build_report(&run.state, vec![], run.now);
    assert_eq!(report.quality_gate, QualityGate::Failed);
    let wire = serde_json::to_value(&report).unwrap_or_default();
    assert_eq!(wire["qualityGate"], "failed");
}

#[test]
fn a_run_that_passes_qa_carries_no_quality_gate_on_the_wire() {
    // GIVEN a planned linear run
    let mut run = Run::app().planned(linear_plan());
    run.finish("s1", json!({}), 10);
    run.finish("s2", json!({ "text": "draft" }), 10);
    run.finish("s3", verdict(0.9, &[]), 10);
    // WHEN it completes, QA passing
    let actions = run.finish("s4", bundle(), 10);
    // THEN the complete frame and the report have no qualityGate field (frames stay as they were)
    assert_eq!(complete_quality_gate(&actions), Some(Value::Null));
    let report = orchestrator_core::report::build_report(&run.state, vec![], run.now);
    assert_eq!(report.quality_gate, QualityGate::Passed);
    let wire = serde_json::to_value(&report).unwrap_or_default();
    assert!(wire.get("qualityGate").is_none(), "{wire}");
}

#[test]
fn a_retryable_failure_is_retried_until_max_attempts_then_replanned() {
    // GIVEN a run whose first step is running, with 3 attempts allowed
    let mut run = Run::app().planned(linear_plan());
    // WHEN it fails with a retryable error twice
    for next_attempt in [2, 3] {
        let actions = run.fail("s1", "throttled", true);
        // THEN it is dispatched again with the next attempt number, with a warning
        assert_eq!(dispatched(&actions), vec![("s1".into(), next_attempt)]);
        assert_eq!(warnings(&actions).len(), 1);
        assert!(planner_calls(&actions).is_empty());
    }
    // WHEN the third attempt fails too
    let actions = run.fail("s1", "throttled", true);
    // THEN the step is failed, visibly, and the planner is asked what to do
    assert!(dispatched(&actions).is_empty());
    assert_eq!(run.status_of("s1"), Some(StepStatus::Failed));
    assert!(
        warnings(&actions)
            .iter()
            .any(|w| w.contains("s1") && w.contains("after 3 attempts")),
        "{actions:?}"
    );
    assert!(matches!(
        planner_calls(&actions).as_slice(),
        [Some(ReplanReason::StepFailed { step_id, .. })] if step_id == "s1"
    ));
    assert_eq!(run.state.status, RunStatus::Running);
}

#[test]
fn a_non_retryable_failure_fails_the_step_at_once() {
    // GIVEN a running first step
    let mut run = Run::app().planned(linear_plan());
    // WHEN it fails with an error that retrying cannot fix
    let actions = run.fail("s1", "content policy refusal", false);
    // THEN no retry, the step is failed with a warning, and the planner is asked
    assert!(dispatched(&actions).is_empty());
    assert_eq!(run.status_of("s1"), Some(StepStatus::Failed));
    assert!(
        warnings(&actions)
            .iter()
            .any(|w| w.contains("content policy refusal"))
    );
    assert_eq!(
        planner_calls(&actions),
        vec![Some(ReplanReason::StepFailed {
            step_id: "s1".into(),
            error: "content policy refusal".into(),
        })]
    );
}

#[test]
fn a_step_for_a_missing_capability_fails_visibly_and_replans() {
    // GIVEN a started run
    let mut run = Run::app();
    run.send(Input::Started);
    // WHEN the plan asks for a specialist nobody provides, next to one that exists
    let actions = run.send(plan_input(json!({ "steps": [
        { "id": "s1", "capability": "strategy" },
        { "id": "s2", "capability": "translation" },
    ] })));
    // THEN the known step runs, the other is failed with a warning naming the capability,
    // and the planner is asked again
    assert_eq!(dispatched(&actions), vec![("s1".into(), 1)]);
    assert_eq!(run.status_of("s2"), Some(StepStatus::Failed));
    assert!(
        warnings(&actions).iter().any(|w| w.contains("translation")),
        "{actions:?}"
    );
    assert!(matches!(
        planner_calls(&actions).as_slice(),
        [Some(ReplanReason::StepFailed { step_id, .. })] if step_id == "s2"
    ));
}

#[test]
fn the_run_fails_when_the_replan_cap_is_reached() {
    // GIVEN an engine allowing a single replan
    let config = EngineConfig {
        max_replans: 1,
        ..EngineConfig::default()
    };
    let mut run = Run::new(config, RunRequest::new("Write")).planned(linear_plan());
    // AND a failure that used it, answered by a retry of the step
    run.fail("s1", "upstream down", false);
    let retry = replan_input(
        &run,
        json!({ "update": [{ "id": "s1", "status": "pending" }] }),
    );
    assert_eq!(dispatched(&run.send(retry)), vec![("s1".into(), 2)]);
    // WHEN the step fails again
    let actions = run.fail("s1", "upstream still down", false);
    // THEN the run fails, with an error event, a complete(failed) and no further planner call
    assert!(planner_calls(&actions).is_empty());
    assert!(
        events(&actions).iter().any(
            |e| matches!(e, EventKind::Error { message, .. } if message.contains("replan limit"))
        ),
        "{actions:?}"
    );
    assert_eq!(complete(&actions).map(|c| c.1), Some(RunStatus::Failed));
    assert_eq!(finish_status(&actions), Some(RunStatus::Failed));
    assert_eq!(run.state.status, RunStatus::Failed);
}

#[test]
fn a_plan_stalled_by_a_failed_step_gets_one_more_planner_turn_before_failing() {
    // GIVEN a run whose first step failed for good and whose replan left the plan as it was
    let mut run = Run::app().planned(linear_plan());
    run.fail("s1", "strategy answered in riddles", false);
    let noop = replan_input(
        &run,
        json!({ "update": [{ "id": "s2", "note": "waiting" }] }),
    );

    // WHEN the steps that depend on it cannot run
    let actions = run.send(noop);

    // THEN the planner is asked once more, told which step failed and why
    assert_eq!(
        planner_calls(&actions),
        vec![Some(ReplanReason::StepFailed {
            step_id: "s1".into(),
            error: "strategy answered in riddles".into(),
        })]
    );
    assert_eq!(run.state.status, RunStatus::Running);

    // AND when that turn changes nothing either, the run fails as stalled
    let again = replan_input(&run, json!({ "update": [{ "id": "s2", "note": "still" }] }));
    let actions = run.send(again);
    assert!(planner_calls(&actions).is_empty());
    assert_eq!(finish_status(&actions), Some(RunStatus::Failed));
}

#[test]
fn a_planner_repeating_the_same_change_for_the_same_reason_fails_the_run() {
    // GIVEN a run whose first step failed and was retried through a replan
    let mut run = Run::app().planned(linear_plan());
    run.fail("s1", "boom", false);
    let retry = json!({ "update": [{ "id": "s1", "status": "pending" }] });
    let first = replan_input(&run, retry.clone());
    assert_eq!(dispatched(&run.send(first)), vec![("s1".into(), 2)]);
    // WHEN it fails the same way and the planner answers with the same patch
    run.fail("s1", "boom", false);
    let second = replan_input(&run, retry);
    let actions = run.send(second);
    // THEN the loop is caught: the run fails instead of going round again
    assert!(dispatched(&actions).is_empty());
    assert_eq!(finish_status(&actions), Some(RunStatus::Failed));
    assert!(
        run.state
            .error
            .as_deref()
            .is_some_and(|e| e.contains("loop"))
    );
}

// ---- budgets ---------------------------------------------------------------------------------

#[test]
fn the_step_budget_stops_the_run_before_the_next_dispatch() {
    // GIVEN a run allowed two dispatches and a four-step plan
    let mut request = RunRequest::new("Write");
    request.options.budget.max_steps = Some(2);
    let mut run = Run::new(EngineConfig::default(), request).planned(linear_plan());
    run.finish("s1", json!({}), 10);
    // WHEN the second step finishes
    let actions = run.finish("s2", json!({ "text": "draft" }), 10);
    // THEN the third is not dispatched and the run ends with its budget exhausted
    assert!(dispatched(&actions).is_empty());
    assert_eq!(finish_status(&actions), Some(RunStatus::BudgetExhausted));
    assert_eq!(
        complete(&actions).map(|c| c.1),
        Some(RunStatus::BudgetExhausted)
    );
    assert_eq!(run.status_of("s3"), Some(StepStatus::Pending));
}

#[test]
fn the_token_budget_reserves_tokens_so_parallel_steps_cannot_overrun_it() {
    // GIVEN a token budget that covers exactly one step's reservation
    let config = EngineConfig {
        token_reservation: 1_000,
        ..EngineConfig::default()
    };
    let mut request = RunRequest::new("Write");
    request.options.budget.max_tokens = Some(1_000);
    let mut run = Run::new(config, request);
    run.send(Input::Started);
    // WHEN two independent steps become ready at once
    let actions = run.send(plan_input(json!({ "steps": [
        { "id": "a", "capability": "strategy" },
        { "id": "b", "capability": "strategy" },
        { "id": "c", "capability": "generation", "dependsOn": ["a", "b"] },
    ] })));
    // THEN only one is dispatched
    assert_eq!(dispatched(&actions), vec![("a".into(), 1)]);
    assert_eq!(run.status_of("b"), Some(StepStatus::Pending));
    // WHEN it finishes having used 400 tokens, the other gets the remaining room
    let actions = run.finish("a", json!({}), 400);
    assert_eq!(dispatched(&actions), vec![("b".into(), 1)]);
    // WHEN that one uses the rest, nothing more is dispatched and the budget is exhausted
    let actions = run.finish("b", json!({}), 700);
    assert!(dispatched(&actions).is_empty());
    assert_eq!(finish_status(&actions), Some(RunStatus::BudgetExhausted));
}

#[test]
fn the_time_budget_is_enforced_on_a_budget_tick() {
    // GIVEN a run with a 10 s budget, started at t=0 and busy with its first step
    let mut request = RunRequest::new("Write");
    request.options.budget.max_seconds = Some(10);
    let run = Run::new(EngineConfig::default(), request).planned(linear_plan());
    // WHEN a tick comes before the deadline, nothing happens
    let before = run.state.clone();
    let (state, t) = run.engine.apply(before.clone(), Input::BudgetTick, 9_999);
    assert!(!t.changed && t.events.is_empty());
    assert_eq!(state, before);
    // WHEN a tick comes at the deadline
    let (state, t) = run.engine.apply(before, Input::BudgetTick, 10_000);
    // THEN the run ends with its budget exhausted
    assert!(t.changed);
    assert_eq!(state.status, RunStatus::BudgetExhausted);
    assert_eq!(
        run.engine.next(&state),
        Move::Finished {
            status: RunStatus::BudgetExhausted,
            error: state.error.clone(),
        }
    );
}

// ---- approval, cancellation ------------------------------------------------------------------

fn approval_run() -> Run {
    Run::app().planned(json!({ "steps": [
        { "id": "s1", "capability": "generation" },
        { "id": "s2", "action": "approval", "label": "Publish this draft?", "dependsOn": ["s1"] },
        { "id": "s3", "action": "finalize", "dependsOn": ["s2"] },
    ] }))
}

#[test]
fn an_approval_step_pauses_the_run_until_a_human_approves() {
    // GIVEN a run whose next step is an approval
    let mut run = approval_run();
    // WHEN the step before it finishes
    let actions = run.finish("s1", json!({ "text": "draft" }), 10);
    // THEN a hitl_request goes out, the driver is told to wait, and nothing is dispatched
    let hitl = events(&actions).into_iter().find_map(|e| match e {
        EventKind::HitlRequest { data } => Some(data.clone()),
        _ => None,
    });
    let hitl = hitl.unwrap_or_else(|| panic!("no hitl_request in {actions:?}"));
    assert_eq!(hitl.kind, HitlKind::Approval);
    assert_eq!(hitl.question, "Publish this draft?");
    let checkpoint = actions
        .iter()
        .find_map(|a| match a {
            Action::AwaitApproval { checkpoint } => Some(checkpoint.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no AwaitApproval in {actions:?}"));
    assert_eq!(checkpoint.id, hitl.checkpoint_id);
    assert!(dispatched(&actions).is_empty());
    assert_eq!(run.state.status, RunStatus::PendingHitl);
    // WHEN an answer names another checkpoint, nothing changes
    assert!(
        run.send(Input::ApprovalGiven {
            checkpoint_id: "cp-other".into(),
            comment: None
        })
        .is_empty()
    );
    // WHEN the human approves
    let actions = run.send(Input::ApprovalGiven {
        checkpoint_id: checkpoint.id,
        comment: Some("ship it".into()),
    });
    // THEN the run goes on to finalize
    assert_eq!(run.state.status, RunStatus::Running);
    assert_eq!(run.status_of("s2"), Some(StepStatus::Done));
    assert_eq!(dispatched(&actions), vec![("s3".into(), 1)]);
}

#[test]
fn a_denied_approval_cancels_the_run() {
    // GIVEN a run waiting for approval
    let mut run = approval_run();
    run.finish("s1", json!({ "text": "draft" }), 10);
    let checkpoint_id = run
        .state
        .checkpoint
        .as_ref()
        .map(|c| c.id.clone())
        .unwrap_or_default();
    // WHEN the human denies it
    let actions = run.send(Input::ApprovalDenied {
        checkpoint_id,
        comment: Some("off brand".into()),
    });
    // THEN the run is cancelled and finalize never runs
    assert_eq!(finish_status(&actions), Some(RunStatus::Cancelled));
    assert_eq!(complete(&actions).map(|c| c.1), Some(RunStatus::Cancelled));
    assert!(dispatched(&actions).is_empty());
    assert_eq!(run.state.status, RunStatus::Cancelled);
}

#[test]
fn cancelling_ends_the_run_and_late_results_are_ignored() {
    // GIVEN a run with a step in flight
    let mut run = Run::app().planned(linear_plan());
    // WHEN it is cancelled
    let actions = run.send(Input::Cancelled {
        reason: "user asked".into(),
    });
    // THEN it finishes as cancelled
    assert_eq!(finish_status(&actions), Some(RunStatus::Cancelled));
    assert_eq!(complete(&actions).map(|c| c.1), Some(RunStatus::Cancelled));
    assert_eq!(run.state.status, RunStatus::Cancelled);
    // AND the step's late result changes nothing
    assert!(run.finish("s1", json!({}), 10).is_empty());
}

#[test]
fn stale_and_duplicate_step_reports_change_nothing() {
    // GIVEN a run whose first step is on its second attempt
    let mut run = Run::app().planned(linear_plan());
    run.fail("s1", "timeout", true);
    // WHEN the first attempt reports late
    assert!(run.send(finished("s1", 1, json!({}), 10)).is_empty());
    assert!(
        run.send(Input::StepFailed {
            step_id: "s1".into(),
            attempt: 1,
            error: "late".into(),
            retryable: true,
        })
        .is_empty()
    );
    // WHEN a step that is not running reports
    assert!(
        run.send(finished("s3", 1, verdict(0.9, &[]), 10))
            .is_empty()
    );
    assert!(run.send(finished("nope", 1, json!({}), 10)).is_empty());
    // WHEN the current attempt reports twice, only the first counts
    assert_eq!(
        dispatched(&run.finish("s1", json!({}), 10)),
        vec![("s2".into(), 1)]
    );
    assert!(run.send(finished("s1", 2, json!({}), 10)).is_empty());
    assert_eq!(run.state.usage.total(), 10);
}

// ---- resuming ----------------------------------------------------------------------------------

#[test]
fn resuming_re_dispatches_interrupted_steps_with_the_same_attempt() {
    // GIVEN a run whose first step is in flight on attempt 2
    let mut run = Run::app().planned(linear_plan());
    run.fail("s1", "timeout", true);
    // WHEN the driver restarts
    let actions = run.send(Input::Resumed);
    // THEN the step is dispatched again under the same attempt, nothing else is
    assert_eq!(dispatched(&actions), vec![("s1".into(), 2)]);
    assert!(planner_calls(&actions).is_empty());
    // AND the result of that attempt is accepted
    assert_eq!(
        dispatched(&run.finish("s1", json!({}), 10)),
        vec![("s2".into(), 1)]
    );
}

#[test]
fn resuming_calls_an_awaited_planner_again() {
    // GIVEN a run waiting for a replan after a low QA score
    let mut run = Run::app().planned(linear_plan());
    run.finish("s1", json!({}), 10);
    run.finish("s2", json!({}), 10);
    run.finish("s3", verdict(0.4, &["vague"]), 10);
    let awaited = match &run.state.planner {
        PlannerState::Awaiting { reason } => reason.clone(),
        other => panic!("planner is {other:?}"),
    };
    // WHEN the driver restarts
    let actions = run.send(Input::Resumed);
    // THEN the planner is called again with the same reason, and no replan is counted
    assert_eq!(planner_calls(&actions), vec![awaited]);
    assert!(dispatched(&actions).is_empty());
    assert_eq!(run.state.replans, 1);
}

#[test]
fn resuming_a_run_that_never_started_starts_it_rather_than_completing_it() {
    // GIVEN a run that was created but whose Started was never applied
    let mut run = Run::app();
    // WHEN the driver restarts
    let actions = run.send(Input::Resumed);
    // THEN the run is not reported complete: it asks the planner for a plan
    assert_eq!(finish_status(&actions), None, "{actions:?}");
    assert_eq!(planner_calls(&actions), vec![None]);
    assert_eq!(run.state.status, RunStatus::Running);
}

// ---- chat mode ---------------------------------------------------------------------------------

fn chat_request(target: Option<&str>) -> RunRequest {
    let mut request = RunRequest::new("Say hello");
    request.mode = Mode::Chat;
    request.options.target_agent_id = target.map(String::from);
    request
}

#[test]
fn chat_mode_dispatches_one_step_to_the_target_agent() {
    for (target, expected) in [(None, "generation"), (Some("strategy"), "strategy")] {
        // GIVEN a chat run naming `target`
        let mut run = Run::new(EngineConfig::default(), chat_request(target));
        // WHEN it starts
        let actions = run.send(Input::Started);
        // THEN one step goes to that agent, without a planner
        let steps: Vec<(String, String)> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Dispatch { steps } => Some(steps),
                _ => None,
            })
            .flatten()
            .map(|d| (d.step_id.clone(), d.capability_id.clone()))
            .collect();
        assert_eq!(steps.len(), 1, "{target:?}");
        assert_eq!(steps[0].1, expected);
        assert!(planner_calls(&actions).is_empty());
    }
}

#[test]
fn chat_mode_answers_with_a_message_and_completes_with_it() {
    // GIVEN a started chat run
    let mut run = Run::new(EngineConfig::default(), chat_request(None));
    let actions = run.send(Input::Started);
    let step_id = dispatched(&actions)
        .first()
        .map(|d| d.0.clone())
        .unwrap_or_default();
    // WHEN the agent answers
    let actions = run.finish(&step_id, json!({ "text": "Hello!\nHow can I help?" }), 20);
    // THEN the answer goes out as a message and as the complete event's data
    assert!(events(&actions).iter().any(
        |e| matches!(e, EventKind::Message { message } if message == "Hello!\nHow can I help?")
    ));
    let (data, status) = complete(&actions).unwrap_or_else(|| panic!("{actions:?}"));
    assert_eq!(status, RunStatus::Completed);
    assert_eq!(data, json!({ "message": "Hello!\nHow can I help?" }));
    assert_eq!(finish_status(&actions), Some(RunStatus::Completed));
}

fn needs_human(run: &Run, step_id: &str, question: &str) -> Input {
    use orchestrator_core::tools::{HumanRequest, ToolSession, Urgency};
    Input::StepNeedsHuman {
        step_id: step_id.into(),
        attempt: run.state.progress.get(step_id).map_or(0, |p| p.attempts),
        request: Box::new(HumanRequest {
            kind: HitlKind::Clarify,
            question: question.into(),
            urgency: Urgency::Normal,
            session: ToolSession {
                messages: Vec::new(),
                pending: Vec::new(),
                turns: 1,
            },
            usage: Default::default(),
        }),
    }
}

fn parallel_plan() -> Value {
    json!({ "steps": [
        { "id": "a", "capability": "strategy", "label": "One" },
        { "id": "b", "capability": "strategy", "label": "Two" },
    ] })
}

#[test]
fn a_specialists_question_pauses_its_step_and_the_answer_dispatches_it_again() {
    // GIVEN two parallel steps that both ask a person
    let mut run = Run::app().planned(parallel_plan());
    let first = run.send(needs_human(&run, "a", "Which market?"));
    // THEN the first opens a checkpoint; the run waits, the step stays in progress
    assert_eq!(run.state.status, RunStatus::PendingHitl);
    assert!(
        first
            .iter()
            .any(|a| matches!(a, Action::AwaitApproval { .. }))
    );
    assert_eq!(run.status_of("a"), Some(StepStatus::InProgress));
    let cp_a = run.state.checkpoint.clone().unwrap();
    assert_eq!((cp_a.step_id.as_str(), cp_a.kind), ("a", HitlKind::Clarify));
    // AND the second queues behind it without a second checkpoint
    let second = run.send(needs_human(&run, "b", "Which tone?"));
    assert!(
        !second
            .iter()
            .any(|a| matches!(a, Action::AwaitApproval { .. }))
    );
    assert_eq!(run.state.checkpoint.as_ref().unwrap().id, cp_a.id);
    // AND a restart re-dispatches neither waiting step
    assert!(dispatched(&run.send(Input::Resumed)).is_empty());

    // WHEN the first is answered
    let answered = run.send(Input::ApprovalGiven {
        checkpoint_id: cp_a.id.clone(),
        comment: Some("Europe".into()),
    });
    // THEN its step runs again under the same attempt with the answer kept for it
    assert_eq!(dispatched(&answered), [("a".to_owned(), 1)]);
    let answer = run.state.suspended["a"].answer.clone().unwrap();
    assert_eq!(answer.comment.as_deref(), Some("Europe"));
    // AND the queued question is asked next
    let cp_b = run.state.checkpoint.clone().unwrap();
    assert_eq!(cp_b.step_id, "b");
    assert_eq!(run.state.status, RunStatus::PendingHitl);
    // AND when the step finishes, nothing of the pause is left for it
    run.finish("a", json!({"audience": "x", "angle": "y"}), 5);
    assert!(!run.state.suspended.contains_key("a"));
    assert_eq!(run.state.hitl_requests, 2);
}

#[test]
fn requests_past_the_cap_are_denied_and_the_step_goes_on_at_once() {
    // GIVEN a run that allows one request for a person
    let mut run = Run::new(
        EngineConfig {
            max_hitl_requests: 1,
            ..EngineConfig::default()
        },
        RunRequest::new("Write a launch post"),
    )
    .planned(parallel_plan());
    run.send(needs_human(&run, "a", "First?"));
    let cp = run.state.checkpoint.clone().unwrap();
    run.send(Input::ApprovalGiven {
        checkpoint_id: cp.id,
        comment: None,
    });
    // WHEN a second request comes
    let actions = run.send(needs_human(&run, "b", "Second?"));
    // THEN no checkpoint: a warning, and the step is dispatched again with the denial
    assert!(run.state.checkpoint.is_none());
    assert_eq!(run.state.status, RunStatus::Running);
    assert_eq!(dispatched(&actions), [("b".to_owned(), 1)]);
    assert!(warnings(&actions).iter().any(|w| w.contains("denied")));
    let denied = run.state.suspended["b"].answer.clone().unwrap();
    assert_eq!(denied.denied.as_deref(), Some("too many requests"));
    assert_eq!(denied.to_result()["error"], "denied: too many requests");
}
