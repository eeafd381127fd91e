//! The spans of a run, the same for every driver: `run` -> `plan` (or `replan`) and `step`,
//! each model call below them (`orchestrator_llm::Traced`). A run's spans form one trace
//! across processes: the `run` span's trace context is stored with the run, and work picked
//! up elsewhere (a resumed run, each Lambda function) is parented there.
//!
//! Attribute names: `run.id`, `step.id`, `step.attempt`, `step.capability`, `plan.version`.
//! Numbers are recorded as `i64`: the OpenTelemetry layer writes a `u64` as text.

use orchestrator_core::engine::{Dispatch, ReplanReason, RunState};
use orchestrator_core::types::RunStatus;
use tracing::field::Empty;

/// The span of a run being started. Its trace context goes into the stored run.
pub fn run(run_id: &str, correlation_id: &str) -> tracing::Span {
    run_span(run_id, correlation_id, false)
}

/// The span of a stored run driven again by this process (after a crash, an answer, a
/// takeover), in the run's trace.
pub fn resumed(state: &RunState) -> tracing::Span {
    let span = run_span(&state.run_id, &state.correlation_id, true);
    join(&span, state);
    span
}

fn run_span(run_id: &str, correlation_id: &str, resumed: bool) -> tracing::Span {
    tracing::info_span!(
        "run",
        run.id = %run_id,
        correlation.id = %correlation_id,
        run.resumed = resumed,
        run.status = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
    )
}

/// The span of one invocation of a function working on a stored run (`name`: which), in
/// the run's trace. Its log lines name the run, the correlation id and the step.
pub fn invocation(name: &'static str, state: &RunState, step_id: Option<&str>) -> tracing::Span {
    let span = tracing::info_span!(
        "invocation",
        otel.name = name,
        runId = %state.run_id,
        correlationId = %state.correlation_id,
        stepId = step_id.unwrap_or(""),
    );
    join(&span, state);
    span
}

/// A planner call: `plan` for the first plan, `replan` for any later one.
pub fn plan(state: &RunState, reason: Option<&ReplanReason>) -> tracing::Span {
    let span = tracing::info_span!(
        "plan",
        otel.name = if reason.is_some() { "replan" } else { "plan" },
        run.id = %state.run_id,
        plan.version = i64::from(state.plan.version),
        replan.reason = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
    );
    if let Some(reason) = reason {
        span.record("replan.reason", reason.to_string());
    }
    span
}

/// One attempt of a step.
pub fn step(state: &RunState, dispatch: &Dispatch) -> tracing::Span {
    tracing::info_span!(
        "step",
        run.id = %state.run_id,
        step.id = %dispatch.step_id,
        step.attempt = i64::from(dispatch.attempt),
        step.capability = %dispatch.capability_id,
        otel.status_code = Empty,
        otel.status_description = Empty,
    )
}

/// Marks the current span failed, with why.
pub fn failed(error: &str) {
    let span = tracing::Span::current();
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_description", error);
}

/// Records how the drive of a run ended on its span.
pub fn settled<E: std::fmt::Display>(span: &tracing::Span, driven: &Result<RunStatus, E>) {
    match driven {
        Ok(status) => {
            span.record("run.status", status.as_str());
            if matches!(status, RunStatus::Failed | RunStatus::BudgetExhausted) {
                span.in_scope(|| failed(status.as_str()));
            }
        }
        Err(e) => span.in_scope(|| failed(&e.to_string())),
    }
}

fn join(span: &tracing::Span, state: &RunState) {
    if let Some(parent) = &state.traceparent {
        orchestrator_telemetry::set_parent(span, parent);
    }
}
