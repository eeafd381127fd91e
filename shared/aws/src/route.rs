//! The engine's next move as the state machine's route. The move is read from the stored state
//! alone ([`Engine::next`]), which makes `planner` and `advance` safe to retry: a repeated
//! invocation whose inputs are stale still answers with the right route.

use std::collections::BTreeMap;

use orchestrator_core::engine::{Engine, Move, RunState};
use orchestrator_core::types::RunStatus;

use crate::contract::{Next, Route, StepTask};
use crate::error::FunctionMapError;

/// Which function runs each capability (`SPECIALIST_FUNCTIONS="strategy=fn-a,qa=fn-b,..."`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FunctionMap {
    functions: BTreeMap<String, String>,
    max_concurrency: u32,
}

/// Steps the Dispatch Map runs at once unless MAP_MAX_CONCURRENCY says otherwise.
pub const DEFAULT_MAP_MAX_CONCURRENCY: u32 = 10;

impl FunctionMap {
    /// Parses `capability=function` pairs separated by commas.
    pub fn parse(spec: &str) -> Result<Self, FunctionMapError> {
        let mut map = BTreeMap::new();
        for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((capability, function)) = pair.split_once('=') else {
                return Err(FunctionMapError::NotAPair(pair.to_owned()));
            };
            let (capability, function) = (capability.trim(), function.trim());
            if capability.is_empty() || function.is_empty() {
                return Err(FunctionMapError::EmptyHalf(pair.to_owned()));
            }
            map.insert(capability.to_owned(), function.to_owned());
        }
        if map.is_empty() {
            return Err(FunctionMapError::Empty);
        }
        Ok(Self {
            functions: map,
            max_concurrency: DEFAULT_MAP_MAX_CONCURRENCY,
        })
    }

    /// The same map, the Dispatch Map running at most `n` steps at once (0: no limit).
    pub fn with_max_concurrency(self, n: u32) -> Self {
        Self {
            max_concurrency: n,
            ..self
        }
    }

    pub fn capabilities(&self) -> impl Iterator<Item = &String> {
        self.functions.keys()
    }

    pub fn function(&self, capability: &str) -> Option<&str> {
        self.functions.get(capability).map(String::as_str)
    }
}

/// The next route of a run: the engine's next move, with each step's function.
pub fn next_of(engine: &Engine, state: &RunState, functions: &FunctionMap, now_ms: u64) -> Next {
    let route = match engine.next(state) {
        Move::Finished { status, error } => match status {
            RunStatus::Completed => Route::Succeeded,
            RunStatus::Cancelled => Route::Cancelled,
            _ => Route::Failed {
                error: error.unwrap_or_else(|| format!("the run ended {status}")),
            },
        },
        Move::Dispatch { steps } => dispatch(state, steps, functions),
        Move::Plan { .. } => Route::Plan,
        Move::AwaitApproval { checkpoint } => Route::Await {
            checkpoint_id: checkpoint.id,
            // Step Functions times the wait out a second after the engine's deadline, so the
            // engine, asked then, sees the checkpoint expired.
            approval_timeout_seconds: checkpoint.expires_at_ms.saturating_sub(now_ms) / 1000 + 1,
        },
        Move::Stalled { error } => Route::Failed { error },
    };
    Next {
        run_id: state.run_id.clone(),
        route,
    }
}

fn dispatch(
    state: &RunState,
    steps: Vec<orchestrator_core::engine::Dispatch>,
    functions: &FunctionMap,
) -> Route {
    let mut tasks = Vec::with_capacity(steps.len());
    let mut missing = Vec::new();
    for d in steps {
        match functions.function(&d.capability_id) {
            Some(function) => tasks.push(StepTask {
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
        return Route::Dispatch {
            steps: tasks,
            max_concurrency: functions.max_concurrency,
        };
    }
    // The engine only dispatches capabilities it was told exist, so this is a deployment
    // whose SPECIALIST_FUNCTIONS lacks one: say which.
    Route::Failed {
        error: format!(
            "no function is configured for {} (SPECIALIST_FUNCTIONS)",
            missing.join(", ")
        ),
    }
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
    fn a_dispatch_carries_the_maps_concurrency_as_the_state_machine_reads_it() {
        // GIVEN a chat run and a deployment allowing 3 steps at once
        let e = engine();
        let mut req = request();
        req.mode = orchestrator_core::types::Mode::Chat;
        let (state, _) = e.apply(RunState::new("r1", "c1", req, 0), Input::Started, 0);
        // WHEN its route is asked
        let next = next_of(&e, &state, &functions().with_max_concurrency(3), 0);
        // THEN the payload names it where the Dispatch Map's MaxConcurrencyPath looks
        let payload = serde_json::to_value(&next).unwrap();
        assert_eq!(payload["route"], "dispatch");
        assert_eq!(payload["maxConcurrency"], 3);
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
        let Route::Dispatch { steps, .. } = next.route else {
            panic!("{next:?}")
        };
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].function, "g");
        assert_eq!(steps[0].attempt, 1);
    }

    #[test]
    fn a_missing_function_is_a_failure_that_names_it() {
        let e = engine();
        let mut req = request();
        req.mode = orchestrator_core::types::Mode::Chat;
        let (state, _) = e.apply(RunState::new("r1", "c1", req, 0), Input::Started, 0);
        let next = next_of(&e, &state, &FunctionMap::parse("qa=q").unwrap(), 0);
        let Route::Failed { error } = next.route else {
            panic!("{next:?}")
        };
        assert!(error.contains("generation"), "{error}");
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
    fn function_maps_refuse_malformed_pairs_and_name_them() {
        let not_a_pair = FunctionMap::parse("qa=q, strategy").unwrap_err();
        assert_eq!(not_a_pair, FunctionMapError::NotAPair("strategy".into()));
        assert!(
            not_a_pair.to_string().contains("capability=function"),
            "{not_a_pair}"
        );
        assert_eq!(FunctionMap::parse(" , "), Err(FunctionMapError::Empty));
        assert_eq!(
            FunctionMap::parse("qa="),
            Err(FunctionMapError::EmptyHalf("qa=".into()))
        );
    }
}
