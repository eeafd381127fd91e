//! The payloads between the state machine (infra/statemachine.asl.json) and the functions:
//! ids and small facts only, never documents (Step Functions passes at most 256 KB).
//! functions/README.md describes the same contract for people.

use orchestrator_core::tools::HumanRequest;
use serde::{Deserialize, Serialize};

/// Where the execution goes next; the ASL's `Route` state chooses on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    Plan,
    Dispatch,
    Await,
    Succeeded,
    Failed,
    Cancelled,
}

/// One step to run: an item of the Dispatch Map, and the input of a specialist function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepTask {
    pub run_id: String,
    pub step_id: String,
    pub attempt: u32,
    pub capability_id: String,
    /// The function (name or ARN) that runs this capability.
    pub function: String,
    pub timeout_ms: u64,
}

/// What `planner` and `advance` return.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Next {
    pub run_id: String,
    pub route: Route,
    #[serde(default)]
    pub steps: Vec<StepTask>,
    #[serde(default)]
    pub checkpoint_id: Option<String>,
    #[serde(default)]
    pub approval_timeout_seconds: Option<u64>,
    #[serde(default)]
    pub error: Option<String>,
}

/// The planner function's input (also the execution's input).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunRef {
    pub run_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OutcomeKind {
    Finished,
    Failed,
    NeedsHuman,
}

/// What a specialist function returns (and what the Map's Catch builds for an invocation that
/// kept failing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub run_id: String,
    pub step_id: String,
    pub attempt: u32,
    pub outcome: OutcomeKind,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub retryable: bool,
    #[serde(default)]
    pub request: Option<Box<HumanRequest>>,
}

/// The advance function's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", rename_all_fields = "camelCase")]
pub enum AdvanceRequest {
    /// After the Dispatch Map (with its outcomes), an answered approval (none), or an
    /// approval wait that timed out.
    Advance {
        run_id: String,
        #[serde(default)]
        outcomes: Vec<Outcome>,
        #[serde(default)]
        timed_out: bool,
    },
    /// A task kept failing past its retries (the ASL's Catch on Plan and Advance): fail the
    /// run visibly. `caught` is the Catch's `{"Error", "Cause"}`.
    Abort {
        run_id: String,
        #[serde(default)]
        caught: serde_json::Value,
    },
    /// The run has ended (the route was succeeded, failed or cancelled): send its completion
    /// event, once.
    Notify { run_id: String },
    /// From `lambda:invoke.waitForTaskToken`: keep the token for whoever answers.
    Await {
        run_id: String,
        checkpoint_id: String,
        task_token: String,
    },
}

/// What the streamer sends with SendTaskSuccess (the AwaitApproval state's output).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resumed {
    pub run_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_catch_states_failure_shape_reads_as_an_outcome() {
        // GIVEN what the Map's Catch -> Pass state builds
        let caught = json!({"runId": "r1", "stepId": "draft", "attempt": 2, "outcome": "failed",
            "error": "Specialist.ModelThrottled: slow down", "retryable": true});
        // WHEN it is read THEN it is a retryable failure of that attempt
        let o: Outcome = serde_json::from_value(caught).unwrap();
        assert_eq!(o.outcome, OutcomeKind::Failed);
        assert!(o.retryable);
        assert_eq!(o.attempt, 2);
    }

    #[test]
    fn advance_requests_are_told_apart_by_op() {
        let after_map: AdvanceRequest =
            serde_json::from_value(json!({"op": "advance", "runId": "r1", "outcomes": []}))
                .unwrap();
        assert!(matches!(
            after_map,
            AdvanceRequest::Advance {
                timed_out: false,
                ..
            }
        ));
        let token: AdvanceRequest = serde_json::from_value(
            json!({"op": "await", "runId": "r1", "checkpointId": "cp-a", "taskToken": "t"}),
        )
        .unwrap();
        assert!(matches!(token, AdvanceRequest::Await { .. }));
        let bad = serde_json::from_value::<AdvanceRequest>(json!({"op": "jump", "runId": "r1"}));
        assert!(bad.is_err());
    }

    #[test]
    fn next_serialises_routes_as_the_asl_expects() {
        let next = Next {
            run_id: "r1".into(),
            route: Route::Succeeded,
            steps: vec![],
            checkpoint_id: None,
            approval_timeout_seconds: None,
            error: None,
        };
        assert_eq!(serde_json::to_value(next).unwrap()["route"], "succeeded");
    }
}
