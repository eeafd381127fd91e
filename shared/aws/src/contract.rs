//! The payloads between the state machine (infra/statemachine.asl.json) and the functions:
//! ids and small facts only, never documents (Step Functions passes at most 256 KB).
//! functions/README.md describes the same contract for people.

use orchestrator_core::tools::HumanRequest;
use serde::{Deserialize, Serialize};

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

/// What `planner` and `advance` return: the run's next move, as the ASL's `Route` Choice
/// state reads it (`$.route`, then the fields of that route).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Next {
    pub run_id: String,
    #[serde(flatten)]
    pub route: Route,
}

impl Next {
    /// The steps to dispatch (none unless the route is `dispatch`).
    pub fn steps(&self) -> &[StepTask] {
        match &self.route {
            Route::Dispatch { steps, .. } => steps,
            _ => &[],
        }
    }

    /// The checkpoint awaited (only when the route is `await`).
    pub fn checkpoint_id(&self) -> Option<&str> {
        match &self.route {
            Route::Await { checkpoint_id, .. } => Some(checkpoint_id),
            _ => None,
        }
    }
}

/// Where the execution goes next; each route carries what its states need, and nothing else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "route",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum Route {
    Plan,
    /// The Dispatch Map runs these, at most `max_concurrency` at once (its
    /// `MaxConcurrencyPath`; 0: no limit).
    Dispatch {
        steps: Vec<StepTask>,
        max_concurrency: u32,
    },
    /// AwaitApproval waits for the answer, at most this long.
    Await {
        checkpoint_id: String,
        approval_timeout_seconds: u64,
    },
    Succeeded,
    Failed {
        error: String,
    },
    Cancelled,
    /// Express only: this segment has run long enough; the next one carries on.
    Continue,
    /// Express only: a later segment drives the run; this one ends doing nothing.
    Superseded,
}

impl Route {
    /// The route's name, as the ASL matches it.
    pub fn name(&self) -> &'static str {
        match self {
            Route::Plan => "plan",
            Route::Dispatch { .. } => "dispatch",
            Route::Await { .. } => "await",
            Route::Succeeded => "succeeded",
            Route::Failed { .. } => "failed",
            Route::Cancelled => "cancelled",
            Route::Continue => "continue",
            Route::Superseded => "superseded",
        }
    }
}

/// The planner function's input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunRef {
    pub run_id: String,
    /// The Express segment planning (none on Standard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<u32>,
}

/// An execution's input: the run, and its W3C trace context when traces are exported (the
/// functions read it from the stored run; here it ties the execution to the trace for
/// anyone reading the execution's input).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionInput {
    pub run_id: String,
    /// The Express segment this execution is (none on Standard, where one execution is the
    /// whole run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// What a specialist function returns (and what the Map's Catch builds for an invocation that
/// kept failing): the attempt, and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub run_id: String,
    pub step_id: String,
    pub attempt: u32,
    #[serde(flatten)]
    pub end: AttemptEnd,
}

/// How an attempt ended (`$.outcome`); a failure says whether another attempt may succeed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "outcome",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum AttemptEnd {
    /// The result is in the table, where the specialist stored it.
    Finished,
    Failed {
        error: String,
        retryable: bool,
    },
    NeedsHuman {
        request: Box<HumanRequest>,
    },
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
        /// The Express segment advancing (none on Standard).
        #[serde(default)]
        segment: Option<u32>,
    },
    /// Express: the first state of a segment claims it for its execution, then routes from
    /// the stored run.
    Claim {
        run_id: String,
        segment: u32,
        execution: String,
    },
    /// Express: the run waits for a person and this segment ends; keep the checkpoint's
    /// deadline, when the next segment of `state_machine` starts if nobody answered.
    Pause {
        run_id: String,
        segment: u32,
        state_machine: String,
    },
    /// Express: the segment hands over; start the next one of `state_machine`.
    Continue {
        run_id: String,
        segment: u32,
        state_machine: String,
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
        assert_eq!(
            o.end,
            AttemptEnd::Failed {
                error: "Specialist.ModelThrottled: slow down".into(),
                retryable: true
            }
        );
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
        // GIVEN the routes the ASL's Choice states read
        let wire = |route| {
            serde_json::to_value(Next {
                run_id: "r1".into(),
                route,
            })
            .unwrap()
        };
        // THEN each is `route` beside the run id, with only its own fields
        assert_eq!(
            wire(Route::Succeeded),
            json!({"runId": "r1", "route": "succeeded"})
        );
        assert_eq!(
            wire(Route::Await {
                checkpoint_id: "cp-a".into(),
                approval_timeout_seconds: 61
            }),
            json!({"runId": "r1", "route": "await", "checkpointId": "cp-a", "approvalTimeoutSeconds": 61})
        );
        assert_eq!(
            wire(Route::Failed {
                error: "boom".into()
            }),
            json!({"runId": "r1", "route": "failed", "error": "boom"})
        );
        // AND a failed route without its error cannot be read (nor written)
        assert!(serde_json::from_value::<Next>(json!({"runId": "r1", "route": "failed"})).is_err());
    }
}
