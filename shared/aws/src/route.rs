//! Where a run goes next, read from its stored state alone. Deriving it from the state (not
//! from the actions of the last transition) makes `planner` and `advance` safe to retry: a
//! repeated invocation whose inputs are stale still answers with the right route.

use std::collections::BTreeMap;

use orchestrator_core::engine::{Engine, PlannerState, RunState};
use orchestrator_core::types::RunStatus;

use crate::contract::{Next, Route, StepTask};

/// Which function runs each capability (`SPECIALIST_FUNCTIONS="strategy=fn-a,qa=fn-b,..."`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FunctionMap(BTreeMap<String, String>);

impl FunctionMap {
    /// Parses `capability=function` pairs separated by commas.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut map = BTreeMap::new();
        for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((capability, function)) = pair.split_once('=') else {
                return Err(format!(
                    "{pair:?} is not capability=function (e.g. qa=my-stack-qa)"
                ));
            };
            let (capability, function) = (capability.trim(), function.trim());
            if capability.is_empty() || function.is_empty() {
                return Err(format!("{pair:?} has an empty capability or function"));
            }
            map.insert(capability.to_owned(), function.to_owned());
        }
        if map.is_empty() {
            return Err("no capability=function pairs".into());
        }
        Ok(Self(map))
    }

    pub fn capabilities(&self) -> impl Iterator<Item = &String> {
        self.0.keys()
    }

    pub fn function(&self, capability: &str) -> Option<&str> {
        self.0.get(capability).map(String::as_str)
    }
}

/// The next route of a run. In-flight steps go first (a replan waits for them), then the
/// planner, then a person.
pub fn next_of(engine: &Engine, state: &RunState, functions: &FunctionMap, now_ms: u64) -> Next {
    let mut next = Next {
        run_id: state.run_id.clone(),
        route: Route::Failed,
        steps: Vec::new(),
        checkpoint_id: None,
        approval_timeout_seconds: None,
        error: None,
    };
    if state.status.is_terminal() {
        next.route = match state.status {
            RunStatus::Completed => Route::Succeeded,
            RunStatus::Cancelled => Route::Cancelled,
            _ => Route::Failed,
        };
        next.error = state
            .error
            .clone()
            .or_else(|| Some(format!("the run ended {}", state.status)))
            .filter(|_| next.route == Route::Failed);
        return next;
    }
    let outstanding = engine.outstanding(state);
    if !outstanding.is_empty() {
        let mut missing = Vec::new();
        for d in outstanding {
            match functions.function(&d.capability_id) {
                Some(function) => next.steps.push(StepTask {
                    run_id: state.run_id.clone(),
                    step_id: d.step_id,
                    attempt: d.attempt,
                    capability_id: d.capability_id,
                    function: function.to_owned(),
                    timeout_ms: d.timeout_ms,
                }),
                None => missing.push(d.capability_id),
            }
        }
        if missing.is_empty() {
            next.route = Route::Dispatch;
        } else {
            // The engine only dispatches capabilities it was told exist, so this is a
            // deployment whose SPECIALIST_FUNCTIONS lacks one: say which.
            next.steps.clear();
            next.error = Some(format!(
                "no function is configured for {} (SPECIALIST_FUNCTIONS)",
                missing.join(", ")
            ));
        }
        return next;
    }
    if matches!(state.planner, PlannerState::Awaiting { .. }) {
        next.route = Route::Plan;
        return next;
    }
    if let Some(checkpoint) = &state.checkpoint {
        next.route = Route::Await;
        next.checkpoint_id = Some(checkpoint.id.clone());
        // Step Functions times the wait out a second after the engine's deadline, so the
        // engine, asked then, sees the checkpoint expired.
        next.approval_timeout_seconds =
            Some(checkpoint.expires_at_ms.saturating_sub(now_ms) / 1000 + 1);
        return next;
    }
    next.error = Some("the run has nothing in progress, yet it has not finished".into());
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestrator_core::engine::{EngineConfig, Input};
    use orchestrator_core::types::RunRequest;

    fn engine() -> Engine {
        Engine::new(EngineConfig::default())
    }

    fn functions() -> FunctionMap {
        FunctionMap::parse("strategy=s, generation=g, qa=q, finalize=f").unwrap()
    }

    fn request() -> RunRequest {
        serde_json::from_value(serde_json::json!({"objective": "Launch post for a bakery"}))
            .unwrap()
    }

    #[test]
    fn a_new_app_run_goes_to_the_planner() {
        // GIVEN a started app run
        let e = engine();
        let (state, _) = e.apply(RunState::new("r1", "c1", request(), 0), Input::Started, 0);
        // WHEN its route is asked THEN it is the planner
        assert_eq!(next_of(&e, &state, &functions(), 0).route, Route::Plan);
    }

    #[test]
    fn a_chat_run_dispatches_its_one_step_to_the_configured_function() {
        // GIVEN a chat run (no planner: one step for the answering agent)
        let e = engine();
        let mut req = request();
        req.mode = orchestrator_core::types::Mode::Chat;
        let (state, _) = e.apply(RunState::new("r1", "c1", req, 0), Input::Started, 0);
        // WHEN its route is asked
        let next = next_of(&e, &state, &functions(), 0);
        // THEN the step goes to generation's function, attempt 1
        assert_eq!(next.route, Route::Dispatch);
        assert_eq!(next.steps.len(), 1);
        assert_eq!(next.steps[0].function, "g");
        assert_eq!(next.steps[0].attempt, 1);
    }

    #[test]
    fn a_missing_function_is_a_failure_that_names_it() {
        let e = engine();
        let mut req = request();
        req.mode = orchestrator_core::types::Mode::Chat;
        let (state, _) = e.apply(RunState::new("r1", "c1", req, 0), Input::Started, 0);
        let next = next_of(&e, &state, &FunctionMap::parse("qa=q").unwrap(), 0);
        assert_eq!(next.route, Route::Failed);
        assert!(next.error.unwrap().contains("generation"));
    }

    #[test]
    fn a_cancelled_run_routes_to_cancelled() {
        let e = engine();
        let (state, _) = e.apply(RunState::new("r1", "c1", request(), 0), Input::Started, 0);
        let (state, _) = e.apply(
            state,
            Input::Cancelled {
                reason: "user".into(),
            },
            1,
        );
        assert_eq!(next_of(&e, &state, &functions(), 1).route, Route::Cancelled);
    }

    #[test]
    fn function_maps_refuse_malformed_pairs() {
        assert!(
            FunctionMap::parse("qa")
                .unwrap_err()
                .contains("capability=function")
        );
        assert!(FunctionMap::parse("").is_err());
        assert!(FunctionMap::parse("qa=").is_err());
    }
}
