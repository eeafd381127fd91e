//! The planner call, written once for every driver: the local runner and the `planner`
//! Lambda function.

use orchestrator_agents::{AgentError, PlanContext, Planner};
use orchestrator_core::engine::{Input, ReplanReason, RunState};
use orchestrator_core::ports::{CallUnit, ModelError};

use tracing::Instrument;

use crate::{LogSink, Transitions, spans};

/// Asks the planner for the run's plan (`reason`: why again, for a replan), its reasoning
/// streamed to the run's log. `Ok` is what the engine hears: a patch, or a failure it handles
/// (no usable plan). `Err` is a model failure worth another call, which the planner already
/// retried within this one; a driver that can retry the call as a whole (Step Functions)
/// does, and one that cannot hands it to the engine as [`Input::PlanFailed`].
pub async fn propose(
    planner: &Planner,
    transitions: &Transitions,
    state: &RunState,
    reason: Option<&ReplanReason>,
) -> Result<Input, ModelError> {
    let span = spans::plan(state, reason);
    let unit = CallUnit::Plan {
        version: state.plan.version + 1,
    };
    let proposed = orchestrator_recording::within(
        &state.run_id,
        unit,
        call(planner, transitions, state, reason),
    )
    .instrument(span.clone())
    .await;
    let error = match &proposed {
        Ok(Input::PlanFailed { error }) => Some(error.clone()),
        Err(e) => Some(e.to_string()),
        Ok(_) => None,
    };
    if let Some(error) = error {
        span.in_scope(|| spans::failed(&error));
    }
    proposed
}

async fn call(
    planner: &Planner,
    transitions: &Transitions,
    state: &RunState,
    reason: Option<&ReplanReason>,
) -> Result<Input, ModelError> {
    let capabilities: Vec<String> = transitions
        .engine()
        .config
        .capabilities
        .iter()
        .cloned()
        .collect();
    let ctx = PlanContext {
        request: &state.request,
        plan: &state.plan,
        reason,
        capabilities: &capabilities,
    };
    let sink = LogSink::new(transitions.store().clone(), state);
    match planner.plan(ctx, &sink).await {
        Ok(outcome) => Ok(Input::PlanProposed {
            patch: outcome.patch,
            usage: outcome.usage,
        }),
        Err(AgentError::Model(e)) if e.retryable() => Err(e),
        Err(e) => Ok(Input::PlanFailed {
            error: e.to_string(),
        }),
    }
}
