#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the assertion in a test

//! The whole AWS shape on this machine, for real: `infra/local-aws.sh up` starts the emulator
//! (DynamoDB + Step Functions executing infra/statemachine.asl.json) and every function binary
//! under `cargo lambda watch`; the functions call an OpenAI-compatible mock LLM served here,
//! which throttles the first QA request. Through the streamer's function URL the test runs the
//! reference run and an approval run, and checks the SSE frames, the executions' histories and
//! the RunReport in DynamoDB; then a run requested by a queue message through the trigger
//! function (once, though delivered twice), and one completion event per run on the bus.
//! The reference run's figures (states entered, Lambda invocations and their durations,
//! DynamoDB requests, frames) go to `target/aws-run-figures.json` (or `AWS_RUN_FIGURES`) for
//! the cost model of `bench-driver all`.
//!
//! It needs cargo-lambda and moto (the script installs them) and takes minutes, so it runs when
//! `ORCHESTRATOR_AWS_E2E=1` or under CI (`.ci/run`), and otherwise says how to run it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sfn::types::HistoryEventType;
use futures::StreamExt;
use orchestrator_agents::{Planner, Prompts, default_specialists};
use orchestrator_aws::trigger::{Source, run_id_for};
use orchestrator_bench::emulated::{EmulatedRun, Invocation};
use orchestrator_bench::mock::{MockConfig, Throttle, router};
use orchestrator_core::event::SseParser;
use orchestrator_core::ports::{EventLog, Purpose, RunStore, SystemClock};
use orchestrator_recording::Patterns;
use orchestrator_runner::replay::{self, ReplayOutcome, Replayed};
use orchestrator_runner::{Runner, RunnerConfig, Store};
use orchestrator_store::{DynamoDbConfig, DynamoDbStore};
use serde_json::{Value, json};

mod golden;
mod traces;

use golden::OBJECTIVE;

/// One emulated stack at a time: the tests of this file take turns (two stacks at once would
/// starve each other of the machine's cores).
static ONE_STACK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The stack `infra/local-aws.sh up` started; `down` when dropped.
struct Stack {
    vars: HashMap<String, String>,
}

impl Stack {
    /// A stack whose runs a Standard state machine drives (the tests that read its history).
    fn up(function_env: &[(&str, String)]) -> Self {
        Self::up_as("STANDARD", function_env)
    }

    fn up_as(machine_type: &str, function_env: &[(&str, String)]) -> Self {
        let dir = tempfile::tempdir().unwrap().keep();
        let env_file = dir.join("functions.env");
        let lines: Vec<String> = function_env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        std::fs::write(&env_file, lines.join("\n") + "\n").unwrap();
        let out = Command::new("bash")
            .arg(repo().join("infra/local-aws.sh"))
            .arg("up")
            .arg("--type")
            .arg(machine_type)
            .arg("--env-file")
            .arg(&env_file)
            .env("LOCAL_AWS_DIR", dir.join("stack"))
            .current_dir(repo())
            .output()
            .expect("bash runs infra/local-aws.sh");
        assert!(
            out.status.success(),
            "infra/local-aws.sh up failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let vars = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect::<HashMap<_, _>>();
        let mut stack = Stack { vars };
        stack.vars.insert(
            "LOCAL_AWS_DIR".into(),
            dir.join("stack").display().to_string(),
        );
        stack
    }

    fn var(&self, name: &str) -> &str {
        self.vars
            .get(name)
            .unwrap_or_else(|| panic!("`up` printed no {name}: {:?}", self.vars))
    }

    fn dynamodb(&self) -> DynamoDbConfig {
        DynamoDbConfig::from_lookup(|name| match name {
            "TABLE_NAME" => Some(self.var("TABLE_NAME").to_owned()),
            "AWS_ENDPOINT_URL" => Some(self.var("AWS_ENDPOINT_URL").to_owned()),
            "AWS_REGION" => Some("us-east-1".to_owned()),
            _ => None,
        })
        .unwrap()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo().join("infra/local-aws.sh"))
            .arg("down")
            .env("LOCAL_AWS_DIR", self.var("LOCAL_AWS_DIR"))
            .status();
    }
}

#[derive(Debug, Clone)]
struct Ev {
    id: u64,
    event: String,
    data: Value,
}

/// Reads an SSE response to its end.
async fn frames(response: reqwest::Response) -> Vec<Ev> {
    assert_eq!(response.status(), 200, "{:?}", response.headers());
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream",
        "the streamer answers with an event stream"
    );
    let mut parser = SseParser::default();
    let mut out = Vec::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(120), body.next())
        .await
        .expect("the stream stalled for 2 minutes")
    {
        for f in parser.push_bytes(&chunk.unwrap()) {
            out.push(Ev {
                id: f.id.unwrap().parse().unwrap(),
                event: f.event.unwrap(),
                data: serde_json::from_str(&f.data).unwrap(),
            });
        }
    }
    out
}

fn assert_gap_free(frames: &[Ev]) {
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f.id, i as u64 + 1, "frame ids are 1, 2, 3, ...: {frames:?}");
    }
}

fn messages(frames: &[Ev]) -> Vec<String> {
    frames
        .iter()
        .filter(|f| f.event == "message")
        .map(|f| f.data["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn execution_arn(state_machine_arn: &str, run_id: &str) -> String {
    format!(
        "{}:{run_id}",
        state_machine_arn.replacen(":stateMachine:", ":execution:", 1)
    )
}

async fn status_of(sfn: &aws_sdk_sfn::Client, arn: &str) -> String {
    let d = sfn
        .describe_execution()
        .execution_arn(arn)
        .send()
        .await
        .unwrap();
    d.status().as_str().to_owned()
}

/// Waits for the execution to leave RUNNING and returns its status and history.
async fn execution(
    sfn: &aws_sdk_sfn::Client,
    state_machine_arn: &str,
    run_id: &str,
) -> (String, Vec<aws_sdk_sfn::types::HistoryEvent>) {
    let arn = execution_arn(state_machine_arn, run_id);
    let mut status = String::new();
    for _ in 0..600 {
        status = status_of(sfn, &arn).await;
        if status != "RUNNING" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut events = Vec::new();
    let mut token = None;
    loop {
        let page = sfn
            .get_execution_history()
            .execution_arn(&arn)
            .set_next_token(token)
            .max_results(1000)
            .send()
            .await
            .unwrap();
        events.extend(page.events().iter().cloned());
        token = page.next_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    (status, events)
}

fn entered(history: &[aws_sdk_sfn::types::HistoryEvent]) -> Vec<String> {
    history
        .iter()
        .filter_map(|e| e.state_entered_event_details())
        .map(|d| d.name().to_owned())
        .collect()
}

fn lambda_failures(history: &[aws_sdk_sfn::types::HistoryEvent]) -> Vec<String> {
    history
        .iter()
        .filter_map(|e| {
            e.lambda_function_failed_event_details()
                .and_then(|d| d.error().map(str::to_owned))
                .or_else(|| {
                    e.task_failed_event_details()
                        .and_then(|d| d.error().map(str::to_owned))
                })
        })
        .collect()
}

fn count(history: &[aws_sdk_sfn::types::HistoryEvent], kinds: &[HistoryEventType]) -> usize {
    history
        .iter()
        .filter(|e| kinds.contains(e.r#type()))
        .count()
}

/// Where the reference run's figures go: `AWS_RUN_FIGURES` (a relative path is taken from the
/// workspace root), else `target/aws-run-figures.json` there.
fn figures_path() -> PathBuf {
    let path = std::env::var_os("AWS_RUN_FIGURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(orchestrator_bench::emulated::DEFAULT_PATH));
    repo().join(path)
}

fn tally<'a>(names: impl Iterator<Item = &'a str>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for name in names {
        *out.entry(name.to_owned()).or_default() += 1;
    }
    out
}

/// The function a Lambda ARN (or a bare name) names.
fn function_name(arn: &str) -> String {
    let name = arn.split_once(":function:").map_or(arn, |(_, rest)| rest);
    name.split(':').next().unwrap_or(name).to_owned()
}

/// Every Lambda task invocation of an execution, from its history: each attempt's end
/// (succeeded, failed, timed out), followed back along `previous_event_id` to its Started,
/// Scheduled and state-entered events (the state's name, the function, and the duration from
/// the timestamps). Also the retries: attempts after the first within one state entry.
fn task_invocations(history: &[aws_sdk_sfn::types::HistoryEvent]) -> (Vec<Invocation>, u64) {
    use HistoryEventType as T;
    let by_id: HashMap<i64, &aws_sdk_sfn::types::HistoryEvent> =
        history.iter().map(|e| (e.id(), e)).collect();
    let back = |from: &aws_sdk_sfn::types::HistoryEvent, kinds: &[T]| {
        let mut at = by_id.get(&from.previous_event_id()).copied();
        while let Some(e) = at {
            if kinds.contains(e.r#type()) {
                return Some(e);
            }
            at = by_id.get(&e.previous_event_id()).copied();
        }
        None
    };
    // The history's timestamps have ms resolution (epoch seconds with 3 decimals, which the
    // SDK parses through a float): round each to its ms.
    let ms =
        |e: &aws_sdk_sfn::types::HistoryEvent| (e.timestamp().as_nanos() + 500_000) / 1_000_000;
    let mut invocations = Vec::new();
    let mut entries = HashSet::new();
    for end in history.iter().filter(|e| {
        [
            T::TaskSucceeded,
            T::TaskFailed,
            T::TaskTimedOut,
            T::LambdaFunctionSucceeded,
            T::LambdaFunctionFailed,
            T::LambdaFunctionTimedOut,
        ]
        .contains(e.r#type())
    }) {
        let started = back(end, &[T::TaskStarted, T::LambdaFunctionStarted]);
        let scheduled = back(end, &[T::TaskScheduled, T::LambdaFunctionScheduled]);
        let entered = back(end, &[T::TaskStateEntered]);
        entries.insert(entered.map_or(end.id(), |e| e.id()));
        let function = scheduled
            .and_then(|s| {
                s.task_scheduled_event_details()
                    .and_then(|d| serde_json::from_str::<Value>(d.parameters()).ok())
                    .and_then(|p| p["FunctionName"].as_str().map(function_name))
                    .or_else(|| {
                        s.lambda_function_scheduled_event_details()
                            .map(|d| function_name(d.resource()))
                    })
            })
            .unwrap_or_else(|| "unknown".into());
        let error = end
            .task_failed_event_details()
            .and_then(|d| d.error())
            .or_else(|| {
                end.lambda_function_failed_event_details()
                    .and_then(|d| d.error())
            })
            .map(str::to_owned)
            .or_else(|| {
                matches!(end.r#type(), T::TaskTimedOut | T::LambdaFunctionTimedOut)
                    .then(|| "States.Timeout".to_owned())
            });
        invocations.push(Invocation {
            state: entered
                .and_then(|e| e.state_entered_event_details())
                .map_or("unknown".into(), |d| d.name().to_owned()),
            function,
            error,
            duration_ms: started.map(|s| (ms(end) - ms(s)) as f64),
        });
    }
    let retries = invocations.len() as u64 - entries.len() as u64;
    (invocations, retries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulated_aws_stack_streams_replans_retries_pauses_starts_from_a_queue_and_reports_completions()
 {
    if std::env::var_os("ORCHESTRATOR_AWS_E2E").is_none() && std::env::var_os("CI").is_none() {
        eprintln!(
            "skipped: set ORCHESTRATOR_AWS_E2E=1 to bring up the emulated AWS stack (moto + cargo lambda watch; minutes)"
        );
        return;
    }
    let _turn = ONE_STACK.lock().await;
    // GIVEN a mock LLM whose first QA request is throttled (429)
    let mock = router(MockConfig {
        ttft: Duration::from_millis(5),
        chunk_delay: Duration::ZERO,
        throttle: Throttle::default().with(Purpose::Review, 1),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock_url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, mock).await.unwrap() });

    // AND the AWS stack, with functions that do not retry the model themselves, so a 429
    // reaches the state machine's Retry
    let stack = Stack::up(&[
        ("MODEL_PROVIDER", "openai".into()),
        ("MODEL_ID", "mock-1".into()),
        ("OPENAI_BASE_URL", mock_url.clone()),
        ("MODEL_MAX_RETRIES", "0".into()),
        // What Lambda sets for the template's LoggingConfig.
        ("AWS_LAMBDA_LOG_FORMAT", "JSON".into()),
        ("AWS_LAMBDA_LOG_LEVEL", "INFO".into()),
    ]);
    let stream_url = stack.var("STREAM_URL").to_owned();
    let state_machine = stack.var("STATE_MACHINE_ARN").to_owned();
    let sfn = aws_sdk_sfn::Client::new(&stack.dynamodb().sdk_config().await);
    let store = DynamoDbStore::connect(&stack.dynamodb()).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let sdk = stack.dynamodb().sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);

    // AND a consumer subscribed to the completion events (a rule on the bus -> its queue)
    let completions = subscribe_to_completions(&sdk, &sqs).await;

    let counters = async || -> HashMap<String, u64> {
        http.get(format!(
            "{}/local-aws/counters",
            stack.var("AWS_ENDPOINT_URL")
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
    };
    let before = counters().await;

    // WHEN the reference run is started through the streamer's function URL and watched
    let started = std::time::Instant::now();
    let response = http
        .post(format!("{stream_url}/api/v1/agent/run.stream"))
        .json(&json!({"objective": OBJECTIVE}))
        .send()
        .await
        .unwrap();
    let run = frames(response).await;
    let wall = started.elapsed();

    // THEN the frames are the local contract: gap-free ids, plan v1 then v2 after the failed
    // QA, the QA scores, and `complete` with status completed
    assert_gap_free(&run);
    let run_id = run[0].data["runId"].as_str().unwrap().to_owned();
    assert_eq!(run[0].event, "start");
    let last = run.last().unwrap();
    assert_eq!(last.event, "complete", "{run:?}");
    assert_eq!(last.data["status"], "completed", "{:?}", last.data);
    let versions: Vec<u64> = run
        .iter()
        .filter(|f| f.event == "plan_update")
        .filter_map(|f| f.data["data"]["version"].as_u64())
        .collect();
    assert!(
        versions.contains(&1) && versions.contains(&2),
        "{versions:?}"
    );
    let qa: Vec<String> = messages(&run)
        .into_iter()
        .filter(|m| m.starts_with("QA score"))
        .collect();
    assert_eq!(qa.len(), 2, "{qa:?}");
    assert!(qa[0].starts_with("QA score 0.50"), "{qa:?}");
    assert!(qa[1].starts_with("QA score 1.00"), "{qa:?}");
    assert!(run.iter().any(|f| f.event == "delta"), "the draft streamed");

    // AND the execution succeeded through Plan, Dispatch, Advance and the replan
    let (status, history) = execution(&sfn, &state_machine, &run_id).await;
    assert_eq!(status, "SUCCEEDED");
    let states = entered(&history);
    assert_eq!(
        states.iter().filter(|s| *s == "Plan").count(),
        2,
        "plan and one replan: {states:?}"
    );
    assert!(states.contains(&"Dispatch".to_owned()), "{states:?}");
    assert!(states.contains(&"Advance".to_owned()), "{states:?}");
    // AND the throttled QA call was retried by the state machine, not by hand
    let failures = lambda_failures(&history);
    assert!(
        failures.iter().any(|e| e == "Specialist.ModelThrottled"),
        "the 429 surfaced as Specialist.ModelThrottled: {failures:?}"
    );
    let attempts: Vec<(String, u32)> = store
        .step_results(&run_id)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.step_id.clone(), r.attempt))
        .collect();
    assert!(
        attempts.iter().all(|(_, a)| *a == 1),
        "every step done at its first engine attempt (the ASL retried inside it): {attempts:?}"
    );

    // AND the RunReport is in DynamoDB
    let report = store.get_report(&run_id).await.unwrap().expect("a report");
    assert_eq!(report.status.as_str(), "completed");
    assert!(report.final_bundle.is_some());

    // AND the buffered (non-SSE) routes answer whole through the streaming runtime, which
    // has been known to send such bodies empty
    let run_json: Value = http
        .get(format!("{stream_url}/api/v1/runs/{run_id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .expect("GET run answers JSON through the function URL");
    assert_eq!(run_json["status"], "completed", "{run_json}");
    let executions = || async {
        sfn.list_executions()
            .state_machine_arn(&state_machine)
            .send()
            .await
            .unwrap()
            .executions()
            .len()
    };
    let before_bad = executions().await;
    let bad = http
        .post(format!("{stream_url}/api/v1/agent/run.stream"))
        .json(&json!({"objective": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    let body: Value = bad.json().await.expect("the error is JSON");
    assert_eq!(body["error"]["field"], "objective", "{body}");
    assert_eq!(
        executions().await,
        before_bad,
        "a refused request starts nothing"
    );

    // AND the functions logged JSON lines that name the run, its correlation id and the step
    let log = std::fs::read_to_string(format!("{}/watch.log", stack.var("LOCAL_AWS_DIR")))
        .expect("the functions' log");
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|l| l.find('{').map(|i| &l[i..]))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["span"]["runId"] == run_id.as_str())
        .collect();
    assert!(
        lines.len() >= 10,
        "JSON log lines of the run: {}",
        lines.len()
    );
    assert!(lines.iter().all(|v| v["span"]["correlationId"].is_string()));
    let throttled = lines
        .iter()
        .find(|v| v["level"] == "WARN" && v["span"]["stepId"] != "")
        .expect("the throttled step's warning, with its step id");
    assert!(throttled.to_string().contains("throttl"), "{throttled}");

    // Figures for the report (printed, not asserted). The counters are the emulator's
    // requests during the run, the streamer's polling of the log included.
    let after = counters().await;
    let delta = |op: &str| after.get(op).unwrap_or(&0) - before.get(op).unwrap_or(&0);
    let writes: u64 = [
        "PutItem",
        "UpdateItem",
        "DeleteItem",
        "TransactWriteItems",
        "BatchWriteItem",
    ]
    .iter()
    .map(|op| delta(&format!("DynamoDB.{op}")))
    .sum();
    let reads: u64 = ["GetItem", "Query", "BatchGetItem", "TransactGetItems"]
        .iter()
        .map(|op| delta(&format!("DynamoDB.{op}")))
        .sum();
    eprintln!(
        "reference run: {writes} DynamoDB write requests, {reads} read requests, {} Lambda invocations through the emulator",
        delta("Lambda.Invoke")
    );
    let invocations = count(
        &history,
        &[
            HistoryEventType::LambdaFunctionScheduled,
            HistoryEventType::TaskScheduled,
        ],
    );
    eprintln!(
        "reference run on the emulated stack: {:.1} s wall, {} frames, {} state transitions, {} Lambda task invocations (incl. retries), {} history events",
        wall.as_secs_f64(),
        run.len(),
        states.len(),
        invocations,
        history.len()
    );

    // AND its figures go to a file, for the cost model of bench/ (bench/src/emulated.rs)
    let (invocations, task_retries) = task_invocations(&history);
    let figures = EmulatedRun {
        source: "tests/aws_run.rs: the reference run on the emulated AWS stack (moto executing \
                 infra/statemachine.asl.json, the functions' debug builds under cargo lambda \
                 watch, a mock LLM that throttles the first QA call once)"
            .into(),
        run_id: run_id.clone(),
        status: status.clone(),
        states_entered: tally(states.iter().map(String::as_str)),
        task_retries,
        invocations,
        lambda_invoke_requests: delta("Lambda.Invoke"),
        dynamodb_requests: after
            .keys()
            .filter_map(|k| Some((k.strip_prefix("DynamoDB.")?.to_owned(), delta(k))))
            .filter(|(_, n)| *n > 0)
            .collect(),
        dynamodb_write_requests: writes,
        dynamodb_read_requests: reads,
        frames: tally(run.iter().map(|f| f.event.as_str())),
        wall_ms: wall.as_millis() as u64,
    };
    let path = figures_path();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, serde_json::to_string_pretty(&figures).unwrap()).unwrap();
    eprintln!(
        "figures of the reference run for bench/ (bench-driver all --aws-figures): {}",
        path.display()
    );

    // WHEN a run that needs approval is started and reaches its checkpoint
    let mut answered = false;
    let approval_request = json!({"objective": OBJECTIVE, "options": {"requireApproval": true}});
    let approval_run = stream_answering(&http, &stream_url, approval_request, async |ev: &Ev| {
        if answered {
            return;
        }
        let run_id = ev.data["runId"].as_str().unwrap().to_owned();
        // THEN the execution waits in AwaitApproval
        let arn = execution_arn(&state_machine, &run_id);
        let mut waiting = false;
        for _ in 0..100 {
            assert_eq!(status_of(&sfn, &arn).await, "RUNNING");
            let h = sfn
                .get_execution_history()
                .execution_arn(&arn)
                .max_results(1000)
                .send()
                .await
                .unwrap();
            if entered(h.events()).last().map(String::as_str) == Some("AwaitApproval") {
                waiting = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(waiting, "the execution reached AwaitApproval");
        // WHEN the approvals endpoint answers
        approve(&http, &stream_url, ev).await;
        answered = true;
    })
    .await;
    // THEN the same stream carries on to completion, and the execution succeeded
    assert!(answered, "the run asked for approval: {approval_run:?}");
    assert_gap_free(&approval_run);
    assert_eq!(approval_run.last().unwrap().data["status"], "completed");
    let approval_id = approval_run[0].data["runId"].as_str().unwrap().to_owned();
    let (status, history) = execution(&sfn, &state_machine, &approval_id).await;
    assert_eq!(status, "SUCCEEDED");
    let states = entered(&history);
    assert!(states.contains(&"AwaitApproval".to_owned()), "{states:?}");
    assert!(
        states.contains(&"ResumeAfterApproval".to_owned()),
        "{states:?}"
    );

    // WHEN a run is requested by a queue message, handed to the trigger function the way
    // Lambda's SQS poller does (moto does not poll queues into functions)
    let queue_url = stack.var("RUNS_QUEUE_URL").to_owned();
    sqs.send_message()
        .queue_url(&queue_url)
        .message_body(json!({"objective": OBJECTIVE}).to_string())
        .send()
        .await
        .unwrap();
    let received = sqs
        .receive_message()
        .queue_url(&queue_url)
        .wait_time_seconds(2)
        .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
        .send()
        .await
        .unwrap();
    let message = received
        .messages()
        .first()
        .expect("the queued message")
        .clone();
    let queue_arn = queue_arn(&sqs, &queue_url).await;
    let event = sqs_event(&message, &queue_arn);
    let invoke = format!(
        "{}/2015-03-31/functions/trigger/invocations",
        stack.var("AWS_ENDPOINT_URL")
    );
    let answer: Value = http
        .post(&invoke)
        .json(&event)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["batchItemFailures"], json!([]), "{answer}");

    // THEN the run named after the message executes to success
    let queued_id = run_id_for(Source::Sqs, message.message_id().unwrap());
    let (status, _) = execution(&sfn, &state_machine, &queued_id).await;
    assert_eq!(status, "SUCCEEDED", "the queued run {queued_id}");
    // AND the message redelivered starts no second run
    let runs_before = executions().await;
    let again: Value = http
        .post(&invoke)
        .json(&event)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["batchItemFailures"], json!([]), "{again}");
    let runs_after = executions().await;
    assert_eq!(
        runs_after, runs_before,
        "a redelivered message starts nothing"
    );

    // AND every run that ended sent exactly one completion event, Run Completed
    let mut by_run: HashMap<String, Vec<Value>> = HashMap::new();
    let expected = [run_id.clone(), approval_id.clone(), queued_id.clone()];
    for _ in 0..20 {
        let got = sqs
            .receive_message()
            .queue_url(&completions)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        for m in got.messages() {
            let body: Value = serde_json::from_str(m.body().unwrap()).unwrap();
            let id = body["detail"]["runId"].as_str().unwrap().to_owned();
            by_run.entry(id).or_default().push(body);
        }
        if expected.iter().all(|id| by_run.contains_key(id)) && got.messages().is_empty() {
            break;
        }
    }
    for id in &expected {
        let events = by_run
            .get(id)
            .unwrap_or_else(|| panic!("no completion for {id}: {by_run:?}"));
        assert_eq!(events.len(), 1, "one completion for {id}: {events:?}");
        assert_eq!(events[0]["detail-type"], "Run Completed");
        assert_eq!(events[0]["source"], "orchestrator");
        assert_eq!(events[0]["detail"]["status"], "completed");
        assert_eq!(
            events[0]["detail"]["report"]["path"],
            format!("/api/v1/runs/{id}")
        );
    }
}

/// A queue that receives the orchestrator's completion events from the default bus.
async fn subscribe_to_completions(
    sdk: &aws_config::SdkConfig,
    sqs: &aws_sdk_sqs::Client,
) -> String {
    let events = aws_sdk_eventbridge::Client::new(sdk);
    let url = sqs
        .create_queue()
        .queue_name("test-completions")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    let arn = queue_arn(sqs, &url).await;
    events
        .put_rule()
        .name("test-completions")
        .event_pattern(
            json!({"source": ["orchestrator"], "detail-type": ["Run Completed", "Run Failed"]})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    events
        .put_targets()
        .rule("test-completions")
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("queue")
                .arn(arn)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    url
}

async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> String {
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
        .cloned()
        .unwrap()
}

/// The event Lambda's SQS poller hands a function for one received message.
fn sqs_event(m: &aws_sdk_sqs::types::Message, queue_arn: &str) -> Value {
    let attributes: serde_json::Map<String, Value> = m
        .attributes()
        .map(|a| {
            a.iter()
                .map(|(k, v)| (k.as_str().to_owned(), json!(v)))
                .collect()
        })
        .unwrap_or_default();
    json!({"Records": [{
        "messageId": m.message_id(),
        "receiptHandle": m.receipt_handle(),
        "body": m.body(),
        "attributes": attributes,
        "messageAttributes": {},
        "md5OfBody": m.md5_of_body(),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": "us-east-1",
    }]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_run_on_the_emulated_stack_streams_the_golden_frames() {
    if std::env::var_os("ORCHESTRATOR_AWS_E2E").is_none() && std::env::var_os("CI").is_none() {
        eprintln!("skipped: set ORCHESTRATOR_AWS_E2E=1 to bring up the emulated AWS stack");
        return;
    }
    let _turn = ONE_STACK.lock().await;
    // GIVEN the emulated stack with the offline model, as the local golden run has it, every
    // function exporting its spans to Phoenix (when PHOENIX_URL names one; always under CI)
    let phoenix = traces::phoenix_url("the_reference_run_on_the_emulated_stack");
    let project = traces::project("aws");
    let mut env = vec![
        ("MODEL_PROVIDER", "offline".to_owned()),
        ("ORCHESTRATOR_OFFLINE_CHUNK_MS", "0".to_owned()),
    ];
    if let Some(url) = &phoenix {
        env.extend(traces::exporting_to(url, &project));
    }
    let stack = Stack::up(&env);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    // WHEN a traced client starts the reference run through the streamer's function URL and
    // watches it
    let client_trace = format!("{:032x}", uuid::Uuid::new_v4().as_u128());
    let client_span = "00f067aa0ba902b7";
    let response = http
        .post(format!(
            "{}/api/v1/agent/run.stream",
            stack.var("STREAM_URL")
        ))
        .header("traceparent", format!("00-{client_trace}-{client_span}-01"))
        .json(&json!({ "objective": OBJECTIVE }))
        .send()
        .await
        .unwrap();
    let run = frames(response).await;
    // THEN its frames, normalised, are the very frames of `orchestrator run` and `serve`
    assert_gap_free(&run);
    let data: Vec<Value> = run.iter().map(|f| f.data.clone()).collect();
    golden::assert_golden("the emulated AWS stack", &golden::normalise(data.clone()));
    // AND the functions recorded its model calls in the table: replayed from there with no
    // model, its log comes out identical, frame for frame
    let run_id = data[0]["runId"].as_str().unwrap();
    let store = DynamoDbStore::connect(&stack.dynamodb()).await;
    let replayed = replay_from(Arc::new(store), run_id).await;
    assert!(
        matches!(replayed.replayed, Replayed::Identical { .. }),
        "{:?}",
        replayed.replayed
    );
    assert_eq!(replayed.served, 7);
    // AND its trace, across the streamer and every function, is the one `orchestrator run`
    // exports, in the client's trace
    if let Some(url) = phoenix {
        let spans = tokio::task::spawn_blocking(move || {
            traces::reference_spans(&url, &project, Duration::from_secs(120), |spans| {
                spans.iter().any(|s| s.name.starts_with("POST "))
            })
        })
        .await
        .unwrap();
        assert_reference_trace(&spans, &data, &client_trace, client_span);
    }
}

/// Replays a stored run in this process, the way `orchestrator replay` does.
async fn replay_from(store: Arc<dyn Store>, run_id: &str) -> ReplayOutcome {
    let model: Arc<dyn orchestrator_core::ports::Model> =
        Arc::new(orchestrator_llm::OfflineModel::new(Duration::ZERO));
    let runner = Runner::new(
        store,
        Planner::new(model.clone()),
        default_specialists(model),
        Arc::new(SystemClock),
        RunnerConfig::default(),
    );
    let recorded = replay::load(&runner, run_id).await.unwrap();
    let prompts = Arc::new(Prompts::builtin());
    replay::replay(&runner, recorded, prompts, Arc::new(Patterns::builtin()))
        .await
        .unwrap()
}

fn assert_reference_trace(
    spans: &[traces::Span],
    frames: &[Value],
    client_trace: &str,
    client_span: &str,
) {
    traces::assert_golden("the emulated AWS stack", &traces::outline(spans));
    let (run_id, tokens) = traces::run_and_tokens(frames);
    traces::assert_attributes(spans, &run_id, tokens);
    let request = spans
        .iter()
        .find(|s| s.name == "POST /api/v1/agent/run.stream")
        .expect("the streamer's request span");
    assert_eq!(request.trace_id, client_trace);
    assert_eq!(request.parent_id.as_deref(), Some(client_span));
    // Every kind of function took part: the planner, advance and the specialists.
    let invoked: HashSet<&str> = spans
        .iter()
        .filter(|s| s.trace_id == client_trace)
        .map(|s| s.name.as_str())
        .collect();
    for name in ["planner", "advance", "specialist"] {
        assert!(
            invoked.contains(name),
            "no {name} invocation in {invoked:?}"
        );
    }
}

/// Starts a run with `request` and reads its stream to the end; `at_checkpoint` runs at each
/// `hitl_request` frame, before the stream is read on.
async fn stream_answering(
    http: &reqwest::Client,
    stream_url: &str,
    request: Value,
    mut at_checkpoint: impl AsyncFnMut(&Ev),
) -> Vec<Ev> {
    let response = http
        .post(format!("{stream_url}/api/v1/agent/run.stream"))
        .json(&request)
        .send()
        .await
        .unwrap();
    let mut parser = SseParser::default();
    let mut body = response.bytes_stream();
    let mut run: Vec<Ev> = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(120), body.next())
        .await
        .expect("the stream stalled for 2 minutes")
    {
        for f in parser.push_bytes(&chunk.unwrap()) {
            let ev = Ev {
                id: f.id.unwrap().parse().unwrap(),
                event: f.event.unwrap(),
                data: serde_json::from_str(&f.data).unwrap(),
            };
            if ev.event == "hitl_request" {
                at_checkpoint(&ev).await;
            }
            run.push(ev);
        }
    }
    run
}

/// Approves the checkpoint a `hitl_request` frame asks about, through the approvals endpoint.
async fn approve(http: &reqwest::Client, stream_url: &str, hitl_request: &Ev) {
    let run_id = hitl_request.data["runId"].as_str().unwrap();
    let checkpoint = hitl_request.data["data"]["checkpointId"].as_str().unwrap();
    let answer = http
        .post(format!(
            "{stream_url}/api/v1/runs/{run_id}/approvals/{checkpoint}"
        ))
        .json(&json!({"decision": "approve", "comment": "ship it"}))
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success(), "{}", answer.status());
}

/// The reference run and an approval run through one stack's function URL, their frames'
/// data normalised (run ids, times and durations out), and their run ids.
async fn reference_and_approval(
    http: &reqwest::Client,
    stream_url: &str,
) -> [(String, Vec<Value>); 2] {
    let reference = http
        .post(format!("{stream_url}/api/v1/agent/run.stream"))
        .json(&json!({ "objective": OBJECTIVE }))
        .send()
        .await
        .unwrap();
    let reference = frames(reference).await;
    let request = json!({"objective": OBJECTIVE, "options": {"requireApproval": true}});
    let approval = stream_answering(http, stream_url, request, async |ev: &Ev| {
        approve(http, stream_url, ev).await;
    })
    .await;
    [reference, approval].map(|run| {
        assert_gap_free(&run);
        assert_eq!(run.last().unwrap().data["status"], "completed", "{run:?}");
        let id = run[0].data["runId"].as_str().unwrap().to_owned();
        (id, golden::normalise(run.into_iter().map(|f| f.data)))
    })
}

/// The run's executions (its segments on Express), waited on until none is running, in
/// segment order: (name, status, states entered).
async fn executions_of(
    sfn: &aws_sdk_sfn::Client,
    state_machine: &str,
    run_id: &str,
) -> Vec<(String, String, Vec<String>)> {
    let mut names: Vec<String> = sfn
        .list_executions()
        .state_machine_arn(state_machine)
        .max_results(1000)
        .send()
        .await
        .unwrap()
        .executions()
        .iter()
        .map(|e| e.name().to_owned())
        .filter(|n| n == run_id || n.starts_with(&format!("{run_id}-s")))
        .collect();
    let segment = |n: &str| -> u32 {
        n.strip_prefix(&format!("{run_id}-s"))
            .map_or(0, |s| s.parse().unwrap())
    };
    names.sort_by_key(|n| segment(n));
    let mut out = Vec::new();
    for name in names {
        let (status, history) = execution(sfn, state_machine, &name).await;
        out.push((name, status, entered(&history)));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn express_and_standard_stacks_write_the_same_event_logs() {
    if std::env::var_os("ORCHESTRATOR_AWS_E2E").is_none() && std::env::var_os("CI").is_none() {
        eprintln!("skipped: set ORCHESTRATOR_AWS_E2E=1 to bring up the emulated AWS stack");
        return;
    }
    let _turn = ONE_STACK.lock().await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let offline = || {
        vec![
            ("MODEL_PROVIDER", "offline".to_owned()),
            ("ORCHESTRATOR_OFFLINE_CHUNK_MS", "0".to_owned()),
        ]
    };
    // GIVEN the same requests on a Standard stack, an Express one, and an Express one whose
    // segments hand over at every move (SEGMENT_SECONDS=0: a long run, compressed)
    let mut long = offline();
    long.push(("SEGMENT_SECONDS", "0".to_owned()));
    let mut logs = Vec::new();
    for (label, machine, env) in [
        ("standard", "STANDARD", offline()),
        ("express", "EXPRESS", offline()),
        ("express, a segment per move", "EXPRESS", long),
    ] {
        let stack = Stack::up_as(machine, &env);
        assert_eq!(stack.var("STATE_MACHINE_TYPE"), machine);
        let sm = stack.var("STATE_MACHINE_ARN").to_owned();
        let sdk = stack.dynamodb().sdk_config().await;
        let sfn = aws_sdk_sfn::Client::new(&sdk);
        // WHEN the reference run and an approval run go through its function URL
        let [(reference_id, reference), (approval_id, approval)] =
            reference_and_approval(&http, stack.var("STREAM_URL")).await;
        // THEN every execution of theirs succeeded
        let reference_runs = executions_of(&sfn, &sm, &reference_id).await;
        let approval_runs = executions_of(&sfn, &sm, &approval_id).await;
        for (name, status, states) in reference_runs.iter().chain(&approval_runs) {
            assert_eq!(status, "SUCCEEDED", "{label}: {name}: {states:?}");
        }
        let segments = (reference_runs.len(), approval_runs.len());
        eprintln!(
            "{label}: executions per run: reference {}, approval {}",
            segments.0, segments.1
        );
        match label {
            // One execution holds each run; the approval waited in it.
            "standard" => {
                assert_eq!(segments, (1, 1), "{label}");
                assert!(approval_runs[0].2.contains(&"AwaitApproval".to_owned()));
            }
            // The approval ended the first segment; the answer started the second.
            "express" => {
                assert_eq!(segments, (1, 2), "{label}");
                assert_eq!(approval_runs[0].2.last().unwrap(), "Paused");
                assert_eq!(approval_runs[1].2.first().unwrap(), "Claim");
                let store = DynamoDbStore::connect(&stack.dynamodb()).await;
                assert_duplicate_start_runs_nothing(&sfn, &sm, &store, &reference_id).await;
                let scheduler = aws_sdk_scheduler::Client::new(&sdk);
                // An answer in time leaves no deadline behind.
                let deadline = scheduler
                    .get_schedule()
                    .name(format!("run-{approval_id}-s1"))
                    .send()
                    .await;
                assert!(
                    deadline.is_err(),
                    "the answered run's deadline: {deadline:?}"
                );
                let url = stack.var("STREAM_URL");
                assert_deadline_ends_an_unanswered_run(&http, url, &sfn, &sm, &store, &scheduler)
                    .await;
            }
            _ => {
                assert!(
                    segments.0 >= 5,
                    "{label}: a segment per move: {reference_runs:?}"
                );
                let handed_over = reference_runs
                    .iter()
                    .filter(|r| r.2.contains(&"Continue".to_owned()));
                assert_eq!(
                    handed_over.count(),
                    segments.0 - 1,
                    "{label}: {reference_runs:?}"
                );
            }
        }
        logs.push((label, reference, approval));
    }
    // AND the event logs are the same, frame for frame, whichever state machine drove them
    let (_, reference, approval) = &logs[0];
    golden::assert_golden("the standard stack", reference);
    for (label, r, a) in &logs[1..] {
        assert_eq!(
            r, reference,
            "{label}: the reference run's log differs from Standard's"
        );
        assert_eq!(
            a, approval,
            "{label}: the approval run's log differs from Standard's"
        );
    }
}

/// A second execution of a finished run's first segment (a duplicated start) ends at its
/// claim: no function but `claim` runs, and the run's log is unchanged.
async fn assert_duplicate_start_runs_nothing(
    sfn: &aws_sdk_sfn::Client,
    sm: &str,
    store: &DynamoDbStore,
    run_id: &str,
) {
    let events = || async { store.read_after(run_id, 0, 100_000).await.unwrap().len() };
    let before = events().await;
    let input = json!({"runId": run_id, "segment": 0}).to_string();
    let name = format!("{run_id}-again");
    sfn.start_execution()
        .state_machine_arn(sm)
        .name(&name)
        .input(input)
        .send()
        .await
        .unwrap();
    let (status, history) = execution(sfn, sm, &name).await;
    assert_eq!(status, "SUCCEEDED");
    assert_eq!(entered(&history), ["Claim", "Route", "Superseded"]);
    assert_eq!(events().await, before, "the duplicate wrote nothing");
}

/// An Express run nobody answers: its paused segment keeps a deadline, a schedule that starts
/// the next segment at the checkpoint's expiry; started then (the emulator's Scheduler keeps
/// schedules but never fires them, so the test starts what the schedule names), the run fails
/// visibly, saying the checkpoint expired.
async fn assert_deadline_ends_an_unanswered_run(
    http: &reqwest::Client,
    stream_url: &str,
    sfn: &aws_sdk_sfn::Client,
    sm: &str,
    store: &DynamoDbStore,
    scheduler: &aws_sdk_scheduler::Client,
) {
    let response = http
        .post(format!("{stream_url}/api/v1/agent/run.stream"))
        .json(&json!({"objective": OBJECTIVE, "options": {"requireApproval": true}}))
        .send()
        .await
        .unwrap();
    let mut parser = SseParser::default();
    let mut body = response.bytes_stream();
    let mut run_id = None;
    while run_id.is_none() {
        let chunk = tokio::time::timeout(Duration::from_secs(120), body.next())
            .await
            .expect("the run reached no checkpoint")
            .expect("the stream ended before a checkpoint");
        for f in parser.push_bytes(&chunk.unwrap()) {
            let data: Value = serde_json::from_str(&f.data).unwrap();
            if f.event.as_deref() == Some("hitl_request") {
                run_id = data["runId"].as_str().map(str::to_owned);
            }
        }
    }
    drop(body);
    let run_id = run_id.unwrap();
    let (status, history) = execution(sfn, sm, &run_id).await;
    assert_eq!(status, "SUCCEEDED");
    assert_eq!(entered(&history).last().unwrap(), "Paused");
    // THEN the pause kept the deadline: segment 1 at the checkpoint's expiry
    let schedule = scheduler
        .get_schedule()
        .name(format!("run-{run_id}-s1"))
        .send()
        .await
        .expect("the paused run's deadline");
    let state = store.load_run(&run_id).await.unwrap().unwrap();
    let expires = state.checkpoint.as_ref().unwrap().expires_at_ms;
    let at =
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(expires));
    let expected_at = format!("at({})", at.to_string().trim_end_matches('Z'));
    assert_eq!(schedule.schedule_expression(), Some(expected_at.as_str()));
    let target = schedule.target().unwrap();
    assert!(
        target
            .arn()
            .ends_with(":scheduler:::aws-sdk:sfn:startExecution"),
        "{target:?}"
    );
    let start: Value = serde_json::from_str(target.input().unwrap()).unwrap();
    assert_eq!(start["StateMachineArn"], sm);
    assert_eq!(start["Name"], format!("{run_id}-s1"));
    // WHEN the checkpoint has expired and the schedule starts its segment
    let mut expired = state.clone();
    expired.checkpoint.as_mut().unwrap().expires_at_ms = 1;
    store.commit(&expired, &[]).await.unwrap();
    sfn.start_execution()
        .state_machine_arn(sm)
        .name(start["Name"].as_str().unwrap())
        .input(start["Input"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    // THEN that segment fails the run, saying the checkpoint expired
    let (status, history) = execution(sfn, sm, &format!("{run_id}-s1")).await;
    assert_eq!(status, "FAILED", "{:?}", entered(&history));
    let ended = store.load_run(&run_id).await.unwrap().unwrap();
    assert_eq!(ended.status.as_str(), "failed");
    let events = store.read_after(&run_id, 0, 100_000).await.unwrap();
    let last = serde_json::to_value(&events.last().unwrap().event).unwrap();
    assert!(
        last.to_string().contains("expired without an answer"),
        "{last}"
    );
}
