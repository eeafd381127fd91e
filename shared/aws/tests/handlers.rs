#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the assertion in a test

//! The function handlers driven the way infra/statemachine.asl.json drives them (Plan -> Route
//! -> Dispatch Map -> Advance -> ...), in process over SQLite with the offline model: the run they
//! produce is the local runner's run, retried invocations change nothing, and approval waits
//! cannot hang whichever side of the token race comes first.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use orchestrator_agents::{Planner, default_specialists};
use orchestrator_aws::completion::{Completion, Completions};
use orchestrator_aws::contract::{AdvanceRequest, Next, Outcome, Route, RunRef};
use orchestrator_aws::error::AwsError;
use orchestrator_aws::handlers::{
    AdvanceFunction, ApprovalWaits, Delivery, PlannerFunction, SpecialistFunction,
};
use orchestrator_aws::route::FunctionMap;
use orchestrator_aws::segments::{Deadlines, SegmentGuard, SegmentStarts, Segments};
use orchestrator_core::engine::RunState;
use orchestrator_core::ports::{Clock, StoreError, SystemClock};
use orchestrator_core::types::{RunRequest, RunStatus};
use orchestrator_llm::OfflineModel;
use orchestrator_runner::{Runner, RunnerConfig, Started, StepRunner, Store, Transitions};
use orchestrator_store::SqliteStore;
use orchestrator_store::{SegmentClaim, SegmentRecord};
use serde_json::json;

#[derive(Default)]
struct FakeWaits {
    tokens: Mutex<BTreeMap<(String, String), String>>,
    resumed: Mutex<Vec<String>>,
}

#[async_trait]
impl ApprovalWaits for FakeWaits {
    async fn save_token(&self, run: &str, cp: &str, token: &str) -> Result<(), StoreError> {
        let key = (run.to_owned(), cp.to_owned());
        self.tokens.lock().unwrap().insert(key, token.to_owned());
        Ok(())
    }
    async fn token(&self, run: &str, cp: &str) -> Result<Option<String>, StoreError> {
        let key = (run.to_owned(), cp.to_owned());
        Ok(self.tokens.lock().unwrap().get(&key).cloned())
    }
    async fn resume(&self, token: &str, _run_id: &str) -> Result<(), AwsError> {
        self.resumed.lock().unwrap().push(token.to_owned());
        Ok(())
    }
}

#[derive(Default)]
struct FakeCompletions {
    sent: Mutex<Vec<Completion>>,
    marks: Mutex<Vec<String>>,
}

#[async_trait]
impl Completions for FakeCompletions {
    async fn sent(&self, run_id: &str) -> Result<bool, StoreError> {
        Ok(self.marks.lock().unwrap().iter().any(|r| r == run_id))
    }
    async fn send(&self, completion: &Completion) -> Result<(), AwsError> {
        self.sent.lock().unwrap().push(completion.clone());
        Ok(())
    }
    async fn mark_sent(&self, run_id: &str) -> Result<(), StoreError> {
        self.marks.lock().unwrap().push(run_id.to_owned());
        Ok(())
    }
}

/// The run's segment claims, as the table keeps them.
#[derive(Default)]
struct FakeSegments {
    claims: Mutex<BTreeMap<(String, u32), SegmentRecord>>,
}

#[async_trait]
impl Segments for FakeSegments {
    async fn claim(&self, run: &str, n: u32, exec: &str) -> Result<SegmentClaim, StoreError> {
        let mut claims = self.claims.lock().unwrap();
        let record = claims
            .entry((run.to_owned(), n))
            .or_insert_with(|| SegmentRecord {
                number: n,
                execution: exec.to_owned(),
                claimed_at_ms: SystemClock.now_ms(),
            })
            .clone();
        Ok(if record.execution == exec {
            SegmentClaim::Claimed(record)
        } else {
            SegmentClaim::Taken(record)
        })
    }
    async fn latest(&self, run: &str) -> Result<Option<SegmentRecord>, StoreError> {
        let claims = self.claims.lock().unwrap();
        Ok(claims
            .iter()
            .filter(|((r, _), _)| r == run)
            .map(|(_, record)| record.clone())
            .next_back())
    }
}

/// The segments `op: continue` started: (state machine, run, segment).
#[derive(Default)]
struct FakeStarts {
    started: Mutex<Vec<(String, String, u32)>>,
}

#[async_trait]
impl SegmentStarts for FakeStarts {
    async fn start(
        &self,
        sm: &str,
        run: &str,
        n: u32,
        _traceparent: Option<&str>,
    ) -> Result<(), AwsError> {
        let start = (sm.to_owned(), run.to_owned(), n);
        self.started.lock().unwrap().push(start);
        Ok(())
    }
}

/// The deadlines kept: (run, segment) -> when.
#[derive(Default)]
struct FakeDeadlines {
    kept: Mutex<BTreeMap<(String, u32), u64>>,
}

#[async_trait]
impl Deadlines for FakeDeadlines {
    async fn schedule(&self, _sm: &str, run: &str, n: u32, at_ms: u64) -> Result<(), AwsError> {
        self.kept.lock().unwrap().insert((run.to_owned(), n), at_ms);
        Ok(())
    }
    async fn cancel(&self, run: &str, n: u32) -> Result<(), AwsError> {
        self.kept.lock().unwrap().remove(&(run.to_owned(), n));
        Ok(())
    }
}

struct Cloud {
    deadlines: Arc<FakeDeadlines>,
    store: Arc<dyn Store>,
    starts: Arc<FakeStarts>,
    transitions: Transitions,
    planner: PlannerFunction,
    advance: AdvanceFunction,
    specialist: SpecialistFunction,
    waits: Arc<FakeWaits>,
    completions: Arc<FakeCompletions>,
    invocations: Mutex<Vec<String>>,
}

fn model() -> Arc<OfflineModel> {
    Arc::new(OfflineModel::new(std::time::Duration::ZERO))
}

fn cloud(store: Arc<dyn Store>) -> Cloud {
    cloud_with(store, 240)
}

/// The handlers, Express segments handing over after `segment_seconds`.
fn cloud_with(store: Arc<dyn Store>, segment_seconds: u64) -> Cloud {
    let functions = FunctionMap::parse(
        "strategy=fn-strategy,generation=fn-generation,qa=fn-qa,finalize=fn-finalize",
    )
    .unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let transitions = Transitions::new(
        store.clone(),
        functions.capabilities().cloned().collect(),
        clock.clone(),
        RunnerConfig::default(),
    );
    let waits = Arc::new(FakeWaits::default());
    let completions = Arc::new(FakeCompletions::default());
    let segments = Arc::new(FakeSegments::default());
    let starts = Arc::new(FakeStarts::default());
    let deadlines = Arc::new(FakeDeadlines::default());
    let guard = SegmentGuard::new(segments.clone(), segment_seconds);
    // One StepRunner with the whole team stands in for the four specialist functions: the
    // handler is the same code in each, only the capability differs.
    let steps = StepRunner::new(
        store.clone(),
        clock,
        default_specialists(model()),
        transitions.config(),
        transitions.engine().config.max_hitl_requests,
    );
    Cloud {
        deadlines: deadlines.clone(),
        store,
        starts: starts.clone(),
        planner: PlannerFunction {
            transitions: transitions.clone(),
            planner: Planner::new(model()),
            functions: functions.clone(),
            segments: guard.clone(),
        },
        advance: AdvanceFunction {
            transitions: transitions.clone(),
            functions,
            waits: waits.clone(),
            delivery: Some(Delivery {
                completions: completions.clone(),
                table: "runs".into(),
            }),
            segments: guard,
            starts,
            deadlines,
        },
        specialist: SpecialistFunction {
            steps,
            transitions: transitions.clone(),
        },
        transitions,
        waits,
        completions,
        invocations: Mutex::new(Vec::new()),
    }
}

impl Cloud {
    fn invoked(&self, what: &str) {
        self.invocations.lock().unwrap().push(what.to_owned());
    }

    /// What the state machine does from `next` until the run ends or waits on a person.
    async fn execute(&self, next: Next) -> Next {
        self.execute_in(next, None).await
    }

    /// The same, as Express segment `segment` (none: Standard).
    async fn execute_in(&self, mut next: Next, segment: Option<u32>) -> Next {
        loop {
            next = match next.route {
                Route::Plan => {
                    self.invoked("planner");
                    self.plan_in(&next.run_id, segment).await
                }
                Route::Dispatch { .. } => {
                    let mut outcomes: Vec<Outcome> = Vec::new();
                    for task in next.steps().to_vec() {
                        self.invoked(&task.function);
                        outcomes.push(self.specialist.handle(task).await.unwrap());
                    }
                    self.invoked("advance");
                    self.advance_in(&next.run_id, outcomes, segment).await
                }
                Route::Await { .. } | Route::Continue | Route::Superseded => return next,
                Route::Succeeded | Route::Failed { .. } | Route::Cancelled => {
                    // The terminal branches of Route pass through Notify.
                    self.invoked("notify");
                    self.notify(&next.run_id).await;
                    return next;
                }
            };
        }
    }

    /// One planner invocation for the run.
    async fn plan(&self, run_id: &str) -> Next {
        self.plan_in(run_id, None).await
    }

    async fn plan_in(&self, run_id: &str, segment: Option<u32>) -> Next {
        self.planner
            .handle(RunRef {
                run_id: run_id.to_owned(),
                segment,
            })
            .await
            .unwrap()
    }

    async fn notify(&self, run_id: &str) {
        self.advance
            .handle(AdvanceRequest::Notify {
                run_id: run_id.to_owned(),
            })
            .await
            .unwrap();
    }

    async fn advance_with(&self, run_id: &str, outcomes: Vec<Outcome>) -> Next {
        self.advance_in(run_id, outcomes, None).await
    }

    async fn advance_in(&self, run_id: &str, outcomes: Vec<Outcome>, seg: Option<u32>) -> Next {
        let value = self
            .advance
            .handle(AdvanceRequest::Advance {
                run_id: run_id.to_owned(),
                outcomes,
                timed_out: false,
                segment: seg,
            })
            .await
            .unwrap();
        serde_json::from_value(value).unwrap()
    }

    /// One Express execution of segment `n`: its Claim, then the states, until it ends.
    async fn segment(&self, run_id: &str, n: u32, execution: &str) -> Next {
        let claimed = self.advance.handle(AdvanceRequest::Claim {
            run_id: run_id.to_owned(),
            segment: n,
            execution: execution.to_owned(),
        });
        let next: Next = serde_json::from_value(claimed.await.unwrap()).unwrap();
        let end = self.execute_in(next, Some(n)).await;
        if let Route::Await { .. } = end.route {
            // The Pause state keeps the checkpoint's deadline.
            let pause = AdvanceRequest::Pause {
                run_id: run_id.to_owned(),
                segment: n,
                state_machine: "sm".into(),
            };
            self.advance.handle(pause).await.unwrap();
        }
        end
    }

    /// A run on Express from segment `n`: each segment that hands over starts the next (the
    /// Continue state), until one ends otherwise. Returns that end and its segment.
    async fn express(&self, run_id: &str, mut n: u32) -> (Next, u32) {
        loop {
            let next = self.segment(run_id, n, &format!("exec-{n}")).await;
            if next.route != Route::Continue {
                return (next, n);
            }
            let request = AdvanceRequest::Continue {
                run_id: run_id.to_owned(),
                segment: n,
                state_machine: "sm".into(),
            };
            self.advance.handle(request).await.unwrap();
            let started = self.starts.started.lock().unwrap().last().cloned().unwrap();
            assert_eq!(started, ("sm".to_owned(), run_id.to_owned(), n + 1));
            n += 1;
        }
    }

    async fn start(&self, request: RunRequest) -> Next {
        let Started::New(launch) = self.transitions.start(request, None).await.unwrap() else {
            panic!("a new run");
        };
        // The execution's first state is Plan.
        Next {
            run_id: launch.state.run_id.clone(),
            route: Route::Plan,
        }
    }

    /// A run that needs approval, run by the state machine up to its checkpoint.
    async fn at_checkpoint(&self) -> (String, Next) {
        let first = self
            .start(request(json!({"options": {"requireApproval": true}})))
            .await;
        let run_id = first.run_id.clone();
        (run_id, self.execute(first).await)
    }

    async fn state(&self, run_id: &str) -> RunState {
        self.store.load_run(run_id).await.unwrap().unwrap()
    }
}

fn request(extra: serde_json::Value) -> RunRequest {
    let mut body = json!({
        "objective": "Launch post for a neighbourhood bakery's new sourdough",
        "options": {"acceptanceCriteria": ["mentions the opening hours"]}
    });
    if let Some(options) = extra.get("options") {
        for (k, v) in options.as_object().unwrap() {
            body["options"][k] = v.clone();
        }
    }
    serde_json::from_value(body).unwrap()
}

async fn kinds(store: &dyn Store, run_id: &str) -> Vec<String> {
    store
        .read_after(run_id, 0, 10_000)
        .await
        .unwrap()
        .iter()
        .map(|f| {
            serde_json::to_value(&f.event).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn the_state_machine_drives_the_reference_run_to_the_local_runs_result() {
    // GIVEN the reference request, run once by the local runner and once through the handlers
    let local_store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().unwrap());
    let runner = Runner::new(
        local_store.clone(),
        Planner::new(model()),
        default_specialists(model()),
        Arc::new(SystemClock),
        RunnerConfig::default(),
    );
    let Started::New(launch) = runner.start(request(json!({})), None).await.unwrap() else {
        panic!()
    };
    let local_id = launch.state.run_id.clone();
    runner.drive(*launch).await.unwrap();

    let cloud = cloud(Arc::new(SqliteStore::open_in_memory().unwrap()));
    let first = cloud.start(request(json!({}))).await;
    let run_id = first.run_id.clone();

    // WHEN the state machine runs it
    let last = cloud.execute(first).await;

    // THEN it succeeds with the replan after the failed QA, like the local run
    assert_eq!(last.route.name(), "succeeded");
    let state = cloud.state(&run_id).await;
    assert_eq!(state.status, RunStatus::Completed);
    assert_eq!(state.plan.version, 2, "plan v1, then the replan");
    let report = cloud
        .store
        .get_report(&run_id)
        .await
        .unwrap()
        .expect("report");
    let local_report = local_store.get_report(&local_id).await.unwrap().unwrap();
    assert_eq!(report.status, local_report.status);
    assert_eq!(
        cloud.state(&run_id).await.plan,
        local_store.load_run(&local_id).await.unwrap().unwrap().plan
    );
    let attempts = |r: &orchestrator_core::types::RunReport| {
        r.steps
            .iter()
            .map(|s| (s.step_id.clone(), s.attempt, s.error.is_none()))
            .collect::<Vec<_>>()
    };
    assert_eq!(attempts(&report), attempts(&local_report));
    assert_eq!(
        serde_json::to_value(&report.final_bundle).unwrap(),
        serde_json::to_value(&local_report.final_bundle).unwrap()
    );
    // AND the stream a client sees has the same events in the same order
    assert_eq!(
        kinds(cloud.store.as_ref(), &run_id).await,
        kinds(local_store.as_ref(), &local_id).await
    );
    // AND the invocations are the reference path: 2 planner calls, 7 steps, one advance each
    let calls = cloud.invocations.lock().unwrap().clone();
    assert_eq!(
        calls,
        [
            "planner",
            "fn-strategy",
            "advance",
            "fn-generation",
            "advance",
            "fn-qa",
            "advance",
            "planner",
            "fn-generation",
            "advance",
            "fn-qa",
            "advance",
            "fn-finalize",
            "advance",
            "notify"
        ]
    );
}

#[tokio::test]
async fn retried_invocations_change_nothing() {
    // GIVEN a run whose plan is committed and whose first step has run
    let cloud = cloud(Arc::new(SqliteStore::open_in_memory().unwrap()));
    let first = cloud.start(request(json!({}))).await;
    let run_id = first.run_id.clone();
    let planned = cloud.plan(&run_id).await;
    assert_eq!(planned.route.name(), "dispatch");
    let task = planned.steps()[0].clone();
    let outcome = cloud.specialist.handle(task.clone()).await.unwrap();
    let advanced = cloud.advance_with(&run_id, vec![outcome.clone()]).await;
    let events_before = kinds(cloud.store.as_ref(), &run_id).await.len();

    // WHEN Step Functions retries the planner, the specialist and the advance (at-least-once)
    let replanned = cloud.plan(&run_id).await;
    let again = cloud.specialist.handle(task).await.unwrap();
    let readvanced = cloud.advance_with(&run_id, vec![again.clone()]).await;

    // THEN the planner answers the current route without planning again, the specialist
    // returns its stored result, and the advance routes to the same next step
    assert_eq!(cloud.state(&run_id).await.plan.version, 1);
    assert_eq!(replanned.route.name(), "dispatch");
    assert_eq!(
        replanned.steps(),
        advanced.steps(),
        "the in-flight step, same attempt"
    );
    assert_eq!(again, outcome);
    assert_eq!(readvanced, advanced);
    assert_eq!(
        kinds(cloud.store.as_ref(), &run_id).await.len(),
        events_before,
        "no event written twice"
    );
}

#[tokio::test]
async fn an_approval_wait_resumes_whichever_side_of_the_token_race_comes_first() {
    // GIVEN a run that needs approval before its result is final
    let cloud = cloud(Arc::new(SqliteStore::open_in_memory().unwrap()));

    // WHEN the state machine runs it
    let (run_id, waiting) = cloud.at_checkpoint().await;

    // THEN it stops at the checkpoint, with a timeout in seconds for the wait
    assert_eq!(waiting.route.name(), "await");
    let checkpoint = waiting.checkpoint_id().unwrap().to_owned();
    let Route::Await {
        approval_timeout_seconds,
        ..
    } = &waiting.route
    else {
        panic!("{waiting:?}")
    };
    assert!(*approval_timeout_seconds > 3600);
    assert_eq!(cloud.state(&run_id).await.status, RunStatus::PendingHitl);

    // WHEN the person answers before the wait has registered its token (the streamer applies
    // the answer and finds no token), and then the wait registers
    let state = cloud.state(&run_id).await;
    let input = cloud
        .transitions
        .answer_input(&state, &checkpoint, true, Some("ship it".into()))
        .unwrap();
    cloud.transitions.transition(state, input).await.unwrap();
    cloud
        .advance
        .handle(AdvanceRequest::Await {
            run_id: run_id.clone(),
            checkpoint_id: checkpoint.clone(),
            task_token: "token-1".into(),
        })
        .await
        .unwrap();

    // THEN the registration itself resumes the wait, and the run finishes
    assert_eq!(*cloud.waits.resumed.lock().unwrap(), ["token-1"]);
    let resumed = cloud.advance_with(&run_id, vec![]).await;
    let last = cloud.execute(resumed).await;
    assert_eq!(last.route.name(), "succeeded");
    assert_eq!(cloud.state(&run_id).await.status, RunStatus::Completed);
}

#[tokio::test]
async fn a_wait_registered_before_any_answer_is_left_waiting() {
    // GIVEN a run at its checkpoint
    let cloud = cloud(Arc::new(SqliteStore::open_in_memory().unwrap()));
    let (run_id, waiting) = cloud.at_checkpoint().await;
    let checkpoint = waiting.checkpoint_id().unwrap().to_owned();

    // WHEN the wait registers first
    cloud
        .advance
        .handle(AdvanceRequest::Await {
            run_id: run_id.clone(),
            checkpoint_id: checkpoint.clone(),
            task_token: "token-2".into(),
        })
        .await
        .unwrap();

    // THEN nothing resumes it yet, and the token is there for the answer
    assert!(cloud.waits.resumed.lock().unwrap().is_empty());
    assert_eq!(
        cloud
            .waits
            .token(&run_id, &checkpoint)
            .await
            .unwrap()
            .as_deref(),
        Some("token-2")
    );
}

#[tokio::test]
async fn an_approval_wait_that_times_out_ends_the_run_visibly() {
    // GIVEN a run at its checkpoint
    let cloud = cloud(Arc::new(SqliteStore::open_in_memory().unwrap()));
    let (run_id, waiting) = cloud.at_checkpoint().await;
    assert_eq!(waiting.route.name(), "await");

    // WHEN Step Functions times the wait out and the engine's deadline has passed
    let mut state = cloud.state(&run_id).await;
    state.checkpoint.as_mut().unwrap().expires_at_ms = 1;
    cloud.store.commit(&state, &[]).await.unwrap();
    let value = cloud
        .advance
        .handle(AdvanceRequest::Advance {
            run_id: run_id.clone(),
            outcomes: vec![],
            timed_out: true,
            segment: None,
        })
        .await
        .unwrap();
    let next: Next = serde_json::from_value(value).unwrap();

    // THEN the run does not stay waiting: the engine closes the checkpoint
    assert_ne!(next.route.name(), "await");
    assert_ne!(cloud.state(&run_id).await.status, RunStatus::PendingHitl);
}

#[tokio::test]
async fn a_task_that_kept_failing_aborts_the_run_visibly_once() {
    // GIVEN a run in progress (planned, its first step not yet run)
    let cloud = cloud(Arc::new(SqliteStore::open_in_memory().unwrap()));
    let first = cloud.start(request(json!({}))).await;
    let run_id = first.run_id.clone();
    cloud.plan(&run_id).await;
    let abort = || AdvanceRequest::Abort {
        run_id: run_id.clone(),
        caught: json!({"Error": "Store.Unavailable", "Cause": "throttled for too long"}),
    };

    // WHEN the state machine's Catch sends it to Abort
    let value = cloud.advance.handle(abort()).await.unwrap();
    let next: Next = serde_json::from_value(value).unwrap();

    // THEN the run is failed with the cause, a client sees `error` and `complete`, and Route
    // ends the execution as failed
    assert_eq!(next.route.name(), "failed");
    let state = cloud.state(&run_id).await;
    assert_eq!(state.status, RunStatus::Failed);
    assert!(state.error.unwrap().contains("throttled for too long"));
    let seen = kinds(cloud.store.as_ref(), &run_id).await;
    assert_eq!(seen[seen.len() - 3..], ["error", "metrics", "complete"]);
    // AND an abort delivered twice changes nothing more
    cloud.advance.handle(abort()).await.unwrap();
    assert_eq!(kinds(cloud.store.as_ref(), &run_id).await.len(), seen.len());
}

#[tokio::test]
async fn a_finished_run_sends_one_completion_even_when_its_last_steps_are_retried() {
    // GIVEN a run executed up to its finalize step
    let cloud = cloud(Arc::new(SqliteStore::open_in_memory().unwrap()));
    let mut next = cloud.start(request(json!({}))).await;
    let run_id = next.run_id.clone();
    loop {
        next = match next.route {
            Route::Plan => cloud.plan(&run_id).await,
            Route::Dispatch { .. } if next.steps()[0].capability_id == "finalize" => break,
            Route::Dispatch { .. } => {
                let mut outcomes = Vec::new();
                for task in next.steps().to_vec() {
                    outcomes.push(cloud.specialist.handle(task).await.unwrap());
                }
                cloud.advance_with(&run_id, outcomes).await
            }
            other => panic!("unexpected route {other:?}"),
        };
    }
    let finalize = next.steps()[0].clone();

    // WHEN Step Functions runs finalize twice (a retried invocation), the advance after it
    // twice, and Notify twice
    let first = cloud.specialist.handle(finalize.clone()).await.unwrap();
    let again = cloud.specialist.handle(finalize).await.unwrap();
    assert_eq!(first, again);
    let ended = cloud.advance_with(&run_id, vec![first]).await;
    let ended_again = cloud.advance_with(&run_id, vec![again]).await;
    assert_eq!(ended.route.name(), "succeeded");
    assert_eq!(ended_again.route.name(), "succeeded");
    cloud.notify(&run_id).await;
    cloud.notify(&run_id).await;

    // THEN exactly one completion went out: Run Completed, with the run's summary
    let sent = cloud.completions.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].detail_type, "Run Completed");
    assert_eq!(sent[0].detail["runId"], run_id.as_str());
    assert_eq!(sent[0].detail["status"], "completed");
    let report = cloud.store.get_report(&run_id).await.unwrap().unwrap();
    assert_eq!(
        sent[0].detail["summary"],
        serde_json::to_value(&report.summary).unwrap()
    );
}

#[tokio::test]
async fn an_aborted_run_sends_run_failed_with_its_error() {
    // GIVEN a planned run whose state machine gives up on it
    let cloud = cloud(Arc::new(SqliteStore::open_in_memory().unwrap()));
    let first = cloud.start(request(json!({}))).await;
    let run_id = first.run_id.clone();
    cloud.plan(&run_id).await;
    let value = cloud
        .advance
        .handle(AdvanceRequest::Abort {
            run_id: run_id.clone(),
            caught: json!({"Error": "Lambda.ServiceException", "Cause": "gone"}),
        })
        .await
        .unwrap();
    let next: Next = serde_json::from_value(value).unwrap();
    assert_eq!(next.route.name(), "failed");

    // WHEN Notify runs on the failed route
    cloud.notify(&run_id).await;

    // THEN the completion is Run Failed, naming the error
    let sent = cloud.completions.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].detail_type, "Run Failed");
    assert!(
        sent[0].detail["error"]
            .as_str()
            .unwrap()
            .contains("Lambda.ServiceException"),
        "{:?}",
        sent[0].detail
    );
}

#[tokio::test]
async fn express_segments_that_hand_over_at_every_move_write_the_standard_runs_events() {
    // GIVEN the reference request run through the handlers as on Standard
    let standard = cloud(Arc::new(SqliteStore::open_in_memory().unwrap()));
    let first = standard.start(request(json!({}))).await;
    let done = standard.execute(first.clone()).await;
    assert_eq!(done.route, Route::Succeeded);
    // AND as on Express, with segments that hand over after every move (limit 0)
    let express = cloud_with(Arc::new(SqliteStore::open_in_memory().unwrap()), 0);
    let run = express.start(request(json!({}))).await;
    let (end, last) = express.express(&run.run_id, 0).await;
    // THEN the run ends the same, after many segments, with the same events
    assert_eq!(end.route, Route::Succeeded);
    assert!(last >= 4, "a segment per move: {last}");
    assert_eq!(
        kinds(express.store.as_ref(), &run.run_id).await,
        kinds(standard.store.as_ref(), &first.run_id).await
    );
}

#[tokio::test]
async fn a_duplicated_segment_start_runs_nothing_twice() {
    // GIVEN an Express run whose first segment ran to the end
    let cloud = cloud(Arc::new(SqliteStore::open_in_memory().unwrap()));
    let run = cloud.start(request(json!({}))).await;
    let (end, last) = cloud.express(&run.run_id, 0).await;
    assert_eq!((end.route.name(), last), ("succeeded", 0));
    let events = kinds(cloud.store.as_ref(), &run.run_id).await;
    let calls = cloud.invocations.lock().unwrap().len();
    // WHEN the same segment is started again, as another execution (a retried start)
    let again = cloud.segment(&run.run_id, 0, "exec-duplicate").await;
    // THEN it ends at its claim: no function ran, no event was written
    assert_eq!(again.route, Route::Superseded);
    assert_eq!(cloud.invocations.lock().unwrap().len(), calls);
    assert_eq!(kinds(cloud.store.as_ref(), &run.run_id).await, events);
    assert_eq!(cloud.completions.sent.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_segment_superseded_by_a_later_one_stops_at_its_next_move() {
    // GIVEN an Express run whose segment 0 has claimed, and a segment 1 that has claimed since
    let cloud = cloud(Arc::new(SqliteStore::open_in_memory().unwrap()));
    let run = cloud.start(request(json!({}))).await;
    let request = |n: u32| AdvanceRequest::Claim {
        run_id: run.run_id.clone(),
        segment: n,
        execution: format!("exec-{n}"),
    };
    cloud.advance.handle(request(0)).await.unwrap();
    cloud.advance.handle(request(1)).await.unwrap();
    let events = kinds(cloud.store.as_ref(), &run.run_id).await;
    // WHEN segment 0 would plan THEN it stops without calling the model or writing
    let next = cloud.plan_in(&run.run_id, Some(0)).await;
    assert_eq!(next.route, Route::Superseded);
    assert_eq!(kinds(cloud.store.as_ref(), &run.run_id).await, events);
    // AND segment 1 plans
    assert_ne!(
        cloud.plan_in(&run.run_id, Some(1)).await.route,
        Route::Superseded
    );
}

#[tokio::test]
async fn an_express_run_pauses_at_its_checkpoint_and_the_answer_starts_the_next_segment() {
    // GIVEN an approval run on Express, its first segment ended at the checkpoint
    let cloud = cloud(Arc::new(SqliteStore::open_in_memory().unwrap()));
    let first = cloud
        .start(request(json!({"options": {"requireApproval": true}})))
        .await;
    let (paused, n) = cloud.express(&first.run_id, 0).await;
    let Route::Await { checkpoint_id, .. } = paused.route else {
        panic!("{paused:?}")
    };
    // WHEN the answer is applied (as the approvals endpoint does) and the next segment starts
    let state = cloud.state(&first.run_id).await;
    let input = cloud
        .transitions
        .answer_input(&state, &checkpoint_id, true, None)
        .unwrap();
    cloud.transitions.transition(state, input).await.unwrap();
    let (end, _) = cloud.express(&first.run_id, n + 1).await;
    // THEN the run completes, with one completion event
    assert_eq!(end.route, Route::Succeeded);
    assert_eq!(
        cloud.state(&first.run_id).await.status,
        RunStatus::Completed
    );
    assert_eq!(cloud.completions.sent.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn an_unanswered_express_checkpoint_fails_the_run_at_its_deadline() {
    // GIVEN an approval run on Express, paused at its checkpoint
    let cloud = cloud(Arc::new(SqliteStore::open_in_memory().unwrap()));
    let first = cloud
        .start(request(json!({"options": {"requireApproval": true}})))
        .await;
    let (paused, n) = cloud.express(&first.run_id, 0).await;
    assert_eq!(paused.route.name(), "await");
    // THEN the pause kept a deadline: the next segment, at the checkpoint's expiry
    let mut state = cloud.state(&first.run_id).await;
    let expires = state.checkpoint.as_ref().unwrap().expires_at_ms;
    let kept = cloud.deadlines.kept.lock().unwrap().clone();
    assert_eq!(
        kept,
        BTreeMap::from([((first.run_id.clone(), n + 1), expires)])
    );
    // WHEN nobody answers and the deadline starts that segment
    state.checkpoint.as_mut().unwrap().expires_at_ms = 1;
    cloud.store.commit(&state, &[]).await.unwrap();
    let (end, _) = cloud.express(&first.run_id, n + 1).await;
    // THEN the run fails visibly, saying why, with its completion event
    let Route::Failed { error } = end.route else {
        panic!("{end:?}")
    };
    assert!(error.contains("expired without an answer"), "{error}");
    assert_eq!(cloud.state(&first.run_id).await.status, RunStatus::Failed);
    assert_eq!(cloud.completions.sent.lock().unwrap().len(), 1);
}
