#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the assertion in a test

//! The trigger function over SQLite, with the dead-letter queue and Step Functions faked, fed
//! the events exactly as SQS and EventBridge deliver them to Lambda.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use orchestrator_aws::error::{AwsError, Service};
use orchestrator_aws::route::FunctionMap;
use orchestrator_aws::trigger::{
    DeadLetters, EventMapping, Executions, Source, TriggerEvent, TriggerFunction, TriggerResponse,
    run_id_for,
};
use orchestrator_core::ports::{Clock, SystemClock};
use orchestrator_runner::{RunnerConfig, Store, Transitions};
use orchestrator_store::SqliteStore;
use serde_json::{Value, json};

#[derive(Default)]
struct FakeDeadLetters {
    sent: Mutex<Vec<(String, BTreeMap<String, String>)>>,
}

#[async_trait]
impl DeadLetters for FakeDeadLetters {
    async fn send(
        &self,
        body: &str,
        attributes: &BTreeMap<String, String>,
    ) -> Result<(), AwsError> {
        let sent = (body.to_owned(), attributes.clone());
        self.sent.lock().unwrap().push(sent);
        Ok(())
    }
}

/// Step Functions: records every start; the first `fail_first` starts fail.
#[derive(Default)]
struct FakeExecutions {
    started: Mutex<Vec<String>>,
    fail_first: Mutex<usize>,
}

#[async_trait]
impl Executions for FakeExecutions {
    async fn start(&self, run_id: &str, _traceparent: Option<&str>) -> Result<(), AwsError> {
        let mut fail = self.fail_first.lock().unwrap();
        if *fail > 0 {
            *fail -= 1;
            return Err(AwsError::Call {
                service: Service::StepFunctions,
                operation: "StartExecution",
                detail: "ServiceUnavailable: try again".into(),
            });
        }
        self.started.lock().unwrap().push(run_id.to_owned());
        Ok(())
    }
}

struct Fixture {
    store: Arc<dyn Store>,
    trigger: TriggerFunction,
    dlq: Arc<FakeDeadLetters>,
    executions: Arc<FakeExecutions>,
}

fn fixture(mapping: Option<&str>) -> Fixture {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().unwrap());
    let functions = FunctionMap::parse(
        "strategy=fn-strategy,generation=fn-generation,qa=fn-qa,finalize=fn-finalize",
    )
    .unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let transitions = Transitions::new(
        store.clone(),
        functions.capabilities().cloned().collect(),
        clock,
        RunnerConfig::default(),
    );
    let dlq = Arc::new(FakeDeadLetters::default());
    let executions = Arc::new(FakeExecutions::default());
    let trigger = TriggerFunction {
        transitions,
        executions: executions.clone(),
        dead_letters: dlq.clone(),
        mapping: mapping.map(|m| EventMapping::parse(m).unwrap()),
    };
    Fixture {
        store,
        trigger,
        dlq,
        executions,
    }
}

/// One record as SQS hands it to Lambda.
fn sqs_record(message_id: &str, body: &str) -> Value {
    json!({
        "messageId": message_id,
        "receiptHandle": format!("AQEB{message_id}Lk2fYwq1Z8c3N1kQ=="),
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": "1718000000000",
            "SenderId": "AIDAIENQZJOLO23YVJ4VO",
            "ApproximateFirstReceiveTimestamp": "1718000000042"
        },
        "messageAttributes": {
            "team": {"stringValue": "marketing", "stringListValues": [], "binaryListValues": [], "dataType": "String"}
        },
        "md5OfBody": "e4e68fb7bd0e697a0ae8f1bb342846b3",
        "md5OfMessageAttributes": "00484c68...59e48f06",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:eu-west-1:123456789012:orchestrator-runs",
        "awsRegion": "eu-west-1"
    })
}

fn sqs_event(records: Vec<Value>) -> TriggerEvent {
    serde_json::from_value(json!({ "Records": records })).unwrap()
}

/// An S3 "Object Created" event as EventBridge delivers it.
fn s3_object_created(id: &str, key: &str) -> Value {
    json!({
        "version": "0",
        "id": id,
        "detail-type": "Object Created",
        "source": "aws.s3",
        "account": "123456789012",
        "time": "2024-06-10T12:00:00Z",
        "region": "eu-west-1",
        "resources": ["arn:aws:s3:::acme-briefs"],
        "detail": {
            "version": "0",
            "bucket": {"name": "acme-briefs"},
            "object": {"key": key, "size": 5120, "etag": "b1946ac92492d2347c6235b4d2611184", "sequencer": "00617F08299329D189"},
            "request-id": "N4N7GDK58NMKJ12R",
            "requester": "123456789012",
            "source-ip-address": "1.2.3.4",
            "reason": "PutObject"
        }
    })
}

fn batch_failures(response: TriggerResponse) -> Vec<String> {
    let TriggerResponse::Sqs(batch) = response else {
        panic!("an SQS batch gets a batch response")
    };
    batch
        .batch_item_failures
        .into_iter()
        .map(|f| f.item_identifier)
        .collect()
}

async fn stored_runs(store: &Arc<dyn Store>, run_ids: &[String]) -> usize {
    let mut n = 0;
    for id in run_ids {
        if store.load_run(id).await.unwrap().is_some() {
            n += 1;
        }
    }
    n
}

#[tokio::test]
async fn a_bad_message_in_a_batch_goes_to_the_dlq_and_the_good_ones_start() {
    // GIVEN a batch of three messages, the second with an empty objective
    let f = fixture(None);
    let event = sqs_event(vec![
        sqs_record("m-1", r#"{"objective": "Write a launch post"}"#),
        sqs_record("m-2", r#"{"objective": ""}"#),
        sqs_record(
            "m-3",
            r#"{"objective": "Plan a campaign", "idempotencyKey": "campaign-7"}"#,
        ),
    ]);

    // WHEN the trigger handles it
    let failures = batch_failures(f.trigger.handle(event).await.unwrap());

    // THEN nothing is redelivered
    assert!(failures.is_empty(), "{failures:?}");
    // AND only the bad message is dead-lettered, as sent, with the error naming the field
    let sent = f.dlq.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    let (body, attributes) = &sent[0];
    assert_eq!(body, r#"{"objective": ""}"#);
    assert!(
        attributes["error"].starts_with("objective:"),
        "{attributes:?}"
    );
    assert_eq!(attributes["source"], "sqs");
    assert_eq!(attributes["sourceId"], "m-2");
    // AND the two good runs are stored under their derived ids and their executions started
    let good = vec![
        run_id_for(Source::Sqs, "m-1"),
        run_id_for(Source::Sqs, "campaign-7"),
    ];
    assert_eq!(stored_runs(&f.store, &good).await, 2);
    assert_eq!(*f.executions.started.lock().unwrap(), good);
    // AND the correlation id is the message id
    let run = f.store.load_run(&good[0]).await.unwrap().unwrap();
    assert_eq!(run.correlation_id, "m-1");
    // AND nothing was stored for the bad one
    let bad = vec![run_id_for(Source::Sqs, "m-2")];
    assert_eq!(stored_runs(&f.store, &bad).await, 0);
}

#[tokio::test]
async fn a_message_that_is_not_json_or_not_a_request_names_the_problem_in_the_dlq() {
    // GIVEN a message that is not JSON and one with an unknown field
    let f = fixture(None);
    let event = sqs_event(vec![
        sqs_record("m-1", "write me a post"),
        sqs_record(
            "m-2",
            r#"{"objective": "x", "options": {"qualityTreshold": 0.9}}"#,
        ),
    ]);

    // WHEN the trigger handles them
    let failures = batch_failures(f.trigger.handle(event).await.unwrap());

    // THEN both are dead-lettered, with errors naming the problem, and neither is retried
    assert!(failures.is_empty());
    let sent = f.dlq.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 2);
    assert!(
        sent[0].1["error"].contains("not valid JSON"),
        "{:?}",
        sent[0]
    );
    assert!(
        sent[1].1["error"].starts_with("options.qualityTreshold:"),
        "{:?}",
        sent[1]
    );
    assert!(f.executions.started.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_transient_failure_is_redelivered_and_then_starts_its_one_run() {
    // GIVEN Step Functions fails the first start
    let f = fixture(None);
    *f.executions.fail_first.lock().unwrap() = 1;
    let records = vec![
        sqs_record("m-1", r#"{"objective": "Write a launch post"}"#),
        sqs_record("m-2", r#"{"objective": "Write a follow-up"}"#),
    ];

    // WHEN the batch is handled
    let failures = batch_failures(f.trigger.handle(sqs_event(records.clone())).await.unwrap());

    // THEN only the message whose start failed is reported, and nothing is dead-lettered
    assert_eq!(failures, vec!["m-1".to_owned()]);
    assert!(f.dlq.sent.lock().unwrap().is_empty());
    let run_id = run_id_for(Source::Sqs, "m-1");
    // (the run was stored before the start failed)
    assert!(f.store.load_run(&run_id).await.unwrap().is_some());

    // WHEN SQS redelivers it
    let mut again = records[0].clone();
    again["attributes"]["ApproximateReceiveCount"] = json!("2");
    let failures = batch_failures(f.trigger.handle(sqs_event(vec![again])).await.unwrap());

    // THEN it starts the stored run's execution, and still one run exists for it
    assert!(failures.is_empty());
    let started = f.executions.started.lock().unwrap().clone();
    assert_eq!(
        started,
        vec![run_id_for(Source::Sqs, "m-2"), run_id.clone()]
    );
    let runs = f.store.list_runs(100, None).await.unwrap();
    assert_eq!(runs.len(), 2, "{runs:?}");
}

#[tokio::test]
async fn a_redelivered_message_starts_no_second_run() {
    // GIVEN a message that was handled
    let f = fixture(None);
    let record = sqs_record("m-1", r#"{"objective": "Write a launch post"}"#);
    let first = batch_failures(
        f.trigger
            .handle(sqs_event(vec![record.clone()]))
            .await
            .unwrap(),
    );
    assert!(first.is_empty());

    // WHEN the same message (same messageId) comes again
    let again = batch_failures(f.trigger.handle(sqs_event(vec![record])).await.unwrap());

    // THEN it finds the same run: one stored run, the execution start attempted again under
    // the same name (Step Functions refuses a second execution of that name)
    assert!(again.is_empty());
    let run_id = run_id_for(Source::Sqs, "m-1");
    let runs = f.store.list_runs(100, None).await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].run_id, run_id);
    assert_eq!(
        *f.executions.started.lock().unwrap(),
        vec![run_id.clone(), run_id]
    );
    assert!(f.dlq.sent.lock().unwrap().is_empty());
}

const S3_MAPPING: &str = r#"{
    "objective": "Write a launch post from the brief at s3://{/detail/bucket/name}/{/detail/object/key}",
    "briefId": "/detail/object/key",
    "options.qualityThreshold": "/detail/threshold"
}"#;

#[tokio::test]
async fn an_s3_event_is_mapped_to_a_run() {
    // GIVEN a mapping of S3 "Object Created" events (without the threshold pointer)
    let f = fixture(Some(
        r#"{"objective": "Write a launch post from the brief at s3://{/detail/bucket/name}/{/detail/object/key}",
            "briefId": "/detail/object/key"}"#,
    ));
    let event: TriggerEvent =
        serde_json::from_value(s3_object_created("ev-1", "briefs/spring.json")).unwrap();

    // WHEN the event arrives
    let TriggerResponse::EventBridge(outcome) = f.trigger.handle(event).await.unwrap() else {
        panic!("an EventBridge event gets an event outcome")
    };

    // THEN a run is stored with the templated objective and the pointed brief id
    let run_id = run_id_for(Source::EventBridge, "ev-1");
    assert_eq!(outcome.run_id.as_deref(), Some(run_id.as_str()));
    assert!(!outcome.dead_lettered);
    let run = f.store.load_run(&run_id).await.unwrap().unwrap();
    assert_eq!(
        run.request.objective,
        "Write a launch post from the brief at s3://acme-briefs/briefs/spring.json"
    );
    assert_eq!(run.request.brief_id.as_deref(), Some("briefs/spring.json"));
    assert_eq!(run.correlation_id, "ev-1");
    assert_eq!(*f.executions.started.lock().unwrap(), vec![run_id]);
}

#[tokio::test]
async fn an_event_whose_mapping_points_at_nothing_goes_to_the_dlq() {
    // GIVEN a mapping with a pointer the S3 event does not have
    let f = fixture(Some(S3_MAPPING));
    let raw = s3_object_created("ev-2", "briefs/spring.json");
    let event: TriggerEvent = serde_json::from_value(raw.clone()).unwrap();

    // WHEN the event arrives
    let TriggerResponse::EventBridge(outcome) = f.trigger.handle(event).await.unwrap() else {
        panic!("an EventBridge event gets an event outcome")
    };

    // THEN the invocation succeeds (no retry), the event is dead-lettered whole, the error names
    // the pointer and the field, and no run is stored
    assert!(outcome.dead_lettered);
    let sent = f.dlq.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    let (body, attributes) = &sent[0];
    assert_eq!(serde_json::from_str::<Value>(body).unwrap(), raw);
    assert!(
        attributes["error"].contains("/detail/threshold"),
        "{attributes:?}"
    );
    assert!(
        attributes["error"].starts_with("options.qualityThreshold:"),
        "{attributes:?}"
    );
    assert_eq!(attributes["source"], "eventbridge");
    assert_eq!(attributes["sourceId"], "ev-2");
    assert!(
        f.store
            .load_run(&run_id_for(Source::EventBridge, "ev-2"))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn an_event_without_a_mapping_is_its_detail_and_a_transient_failure_fails_the_invocation() {
    // GIVEN no mapping, and Step Functions failing the first start
    let f = fixture(None);
    *f.executions.fail_first.lock().unwrap() = 1;
    let raw = json!({
        "version": "0", "id": "ev-3", "detail-type": "Brief Ready", "source": "acme.briefs",
        "account": "123456789012", "time": "2024-06-10T12:00:00Z", "region": "eu-west-1",
        "resources": [], "detail": {"objective": "Write a launch post", "briefId": "b-9"}
    });

    // WHEN the event arrives
    let first = f
        .trigger
        .handle(serde_json::from_value(raw.clone()).unwrap())
        .await;

    // THEN the invocation fails with a stable error type, for Lambda to retry it
    let error = first.unwrap_err();
    assert_eq!(error.error_type(), "Trigger.Unavailable");

    // WHEN it is retried
    let TriggerResponse::EventBridge(outcome) = f
        .trigger
        .handle(serde_json::from_value(raw).unwrap())
        .await
        .unwrap()
    else {
        panic!("an EventBridge event gets an event outcome")
    };

    // THEN the one run stored on the first try gets its execution
    let run_id = run_id_for(Source::EventBridge, "ev-3");
    assert_eq!(outcome.run_id.as_deref(), Some(run_id.as_str()));
    assert_eq!(*f.executions.started.lock().unwrap(), vec![run_id]);
    assert_eq!(f.store.list_runs(100, None).await.unwrap().len(), 1);
}

#[test]
fn an_event_that_is_neither_sqs_nor_eventbridge_is_refused() {
    // GIVEN a payload of neither shape WHEN it is read THEN the error says what was expected
    let e = serde_json::from_value::<TriggerEvent>(json!({"runId": "r1"})).unwrap_err();
    assert!(e.to_string().contains("Records"), "{e}");
}
