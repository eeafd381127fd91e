#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the assertion in a test

//! The trigger function over SQLite, with the dead-letter queue and Step Functions faked, fed
//! the events exactly as SQS and EventBridge deliver them to Lambda (`trigger_fixture`).

mod trigger_fixture;

use orchestrator_aws::trigger::{Source, TriggerEvent, TriggerResponse, run_id_for};
use serde_json::{Value, json};
use trigger_fixture::*;

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
