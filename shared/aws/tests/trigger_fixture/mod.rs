//! The trigger under test: over SQLite, the dead-letter queue and Step Functions faked, fed
//! the events exactly as SQS and EventBridge deliver them to Lambda.

#![allow(dead_code)] // each test binary uses part of it

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use orchestrator_aws::error::{AwsError, Service};
use orchestrator_aws::route::FunctionMap;
use orchestrator_aws::trigger::{
    DeadLetters, EventMapping, Executions, TriggerEvent, TriggerFunction, TriggerResponse,
};
use orchestrator_core::ports::{Clock, SystemClock};
use orchestrator_runner::{RunnerConfig, Store, Transitions};
use orchestrator_store::SqliteStore;
use serde_json::{Value, json};

#[derive(Default)]
pub struct FakeDeadLetters {
    pub sent: Mutex<Vec<(String, BTreeMap<String, String>)>>,
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

/// Step Functions: records every start (and the trace context it was given); the first
/// `fail_first` starts fail.
#[derive(Default)]
pub struct FakeExecutions {
    pub started: Mutex<Vec<String>>,
    pub traceparents: Mutex<Vec<Option<String>>>,
    pub fail_first: Mutex<usize>,
}

#[async_trait]
impl Executions for FakeExecutions {
    async fn start(&self, run_id: &str, traceparent: Option<&str>) -> Result<(), AwsError> {
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
        let traceparent = traceparent.map(str::to_owned);
        self.traceparents.lock().unwrap().push(traceparent);
        Ok(())
    }
}

pub struct Fixture {
    pub store: Arc<dyn Store>,
    pub trigger: TriggerFunction,
    pub dlq: Arc<FakeDeadLetters>,
    pub executions: Arc<FakeExecutions>,
}

pub fn fixture(mapping: Option<&str>) -> Fixture {
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
pub fn sqs_record(message_id: &str, body: &str) -> Value {
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

pub fn sqs_event(records: Vec<Value>) -> TriggerEvent {
    serde_json::from_value(json!({ "Records": records })).unwrap()
}

/// An S3 "Object Created" event as EventBridge delivers it.
pub fn s3_object_created(id: &str, key: &str) -> Value {
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

pub fn batch_failures(response: TriggerResponse) -> Vec<String> {
    let TriggerResponse::Sqs(batch) = response else {
        panic!("an SQS batch gets a batch response")
    };
    batch
        .batch_item_failures
        .into_iter()
        .map(|f| f.item_identifier)
        .collect()
}

pub async fn stored_runs(store: &Arc<dyn Store>, run_ids: &[String]) -> usize {
    let mut n = 0;
    for id in run_ids {
        if store.load_run(id).await.unwrap().is_some() {
            n += 1;
        }
    }
    n
}
