//! The `trigger` function: starts runs from an SQS batch or an EventBridge event, idempotently.
//!
//! - SQS: each message's body is a RunRequest (the body of POST /api/v1/runs). The run id is a
//!   UUID v5 of `sqs:<idempotencyKey or messageId>`, so a redelivered message finds its run.
//!   Only transient failures (store or Step Functions unavailable) are reported in
//!   `batchItemFailures`: SQS redelivers those, and its redrive policy moves them to the DLQ
//!   after maxReceiveCount.
//! - EventBridge: the RunRequest is the event's `detail`, or is built from the event by an
//!   [`EventMapping`]. The run id is a UUID v5 of `eventbridge:<event id>`. A transient failure
//!   fails the invocation (EventBridge/Lambda retry it).
//!
//! An invalid message or event (not JSON, not a valid RunRequest, a mapping pointer at nothing)
//! is never retried: it goes to the dead-letter queue with its `error` attached, and counts as
//! handled.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use aws_sdk_sqs::types::MessageAttributeValue;
use orchestrator_core::ports::StoreError;
use orchestrator_core::types::{RunRequest, ValidationError};
use orchestrator_runner::{RunError, Started, Transitions};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::Instrument;

use crate::control::SfnControl;
use crate::error::{AwsError, FunctionError, MappingError, Service};

/// The namespace of the run ids the trigger derives (UUID v5): fixed, so the same message or
/// event names the same run on every delivery, in every deployment.
pub const RUN_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x5b1c_7a4e_2f0d_4c8e_9a61_3e7f_d2b0_c914);

/// The longest `error` attribute put on a dead-lettered message.
const MAX_ERROR_CHARS: usize = 4096;

/// The run id a source names: UUID v5 of `<source>:<key>` in [`RUN_ID_NAMESPACE`].
pub fn run_id_for(source: Source, key: &str) -> String {
    let name = format!("{}:{key}", source.as_str());
    uuid::Uuid::new_v5(&RUN_ID_NAMESPACE, name.as_bytes()).to_string()
}

/// Where a request came from; the `source` attribute of a dead-lettered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Sqs,
    EventBridge,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Sqs => "sqs",
            Source::EventBridge => "eventbridge",
        }
    }
}

/// Where invalid messages and events go, with their error attached.
#[async_trait]
pub trait DeadLetters: Send + Sync {
    /// Sends `body` with string message `attributes`.
    async fn send(&self, body: &str, attributes: &BTreeMap<String, String>)
    -> Result<(), AwsError>;
}

/// How a stored run's execution is started. Idempotent: starting a started run is success.
#[async_trait]
pub trait Executions: Send + Sync {
    /// `traceparent`: the run's trace context, handed to the execution with its input.
    async fn start(&self, run_id: &str, traceparent: Option<&str>) -> Result<(), AwsError>;
}

#[async_trait]
impl Executions for SfnControl {
    async fn start(&self, run_id: &str, traceparent: Option<&str>) -> Result<(), AwsError> {
        self.start_execution(run_id, traceparent).await
    }
}

/// The dead-letter queue over SQS (`DLQ_URL`).
#[derive(Clone)]
pub struct SqsDeadLetters {
    pub sqs: aws_sdk_sqs::Client,
    pub queue_url: String,
}

#[async_trait]
impl DeadLetters for SqsDeadLetters {
    async fn send(
        &self,
        body: &str,
        attributes: &BTreeMap<String, String>,
    ) -> Result<(), AwsError> {
        let mut request = self
            .sqs
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body);
        for (name, value) in attributes {
            let value = MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .map_err(|e| AwsError::Call {
                    service: Service::Sqs,
                    operation: "SendMessage",
                    detail: format!("the attribute {name}: {e}"),
                })?;
            request = request.message_attributes(name, value);
        }
        request
            .send()
            .await
            .map(|_| ())
            .map_err(|e| AwsError::call(Service::Sqs, "SendMessage", &e))
    }
}

/// `EVENT_MAPPING`: how an EventBridge event becomes a RunRequest. A JSON object whose keys are
/// RunRequest fields (dot paths: `objective`, `options.qualityThreshold`, `state.brief`) and
/// whose values are a JSON Pointer into the whole event (`/detail/object/key`: the value is
/// copied as is) or a template whose `{/json/pointer}` placeholders are replaced by the pointed
/// values' text.
#[derive(Debug, Clone, PartialEq)]
pub struct EventMapping {
    fields: Vec<(String, Mapped)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Mapped {
    Pointer(String),
    Template(Vec<Part>),
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Pointer(String),
}

impl EventMapping {
    /// Parses the mapping; the error says what is wrong with which key.
    pub fn parse(text: &str) -> Result<Self, MappingError> {
        let value: Value = serde_json::from_str(text).map_err(MappingError::NotJson)?;
        let Value::Object(object) = value else {
            return Err(MappingError::NotObject);
        };
        if object.is_empty() {
            return Err(MappingError::Empty);
        }
        let mut fields = Vec::new();
        for (key, value) in object {
            if key.is_empty() || key.split('.').any(str::is_empty) {
                return Err(MappingError::NotFieldPath(key));
            }
            let Value::String(spec) = value else {
                return Err(MappingError::NotString(key));
            };
            let mapped = if spec.starts_with('/') {
                Mapped::Pointer(spec)
            } else {
                Mapped::Template(template(&key, &spec)?)
            };
            fields.push((key, mapped));
        }
        for (a, _) in &fields {
            if let Some((b, _)) = fields.iter().find(|(b, _)| b.starts_with(&format!("{a}."))) {
                return Err(MappingError::Overlap(a.clone(), b.clone()));
            }
        }
        Ok(Self { fields })
    }

    /// The request JSON for `event` (the whole event, as delivered).
    pub fn build(&self, event: &Value) -> Result<Value, ValidationError> {
        let mut request = Value::Object(serde_json::Map::new());
        for (field, mapped) in &self.fields {
            let value = match mapped {
                Mapped::Pointer(pointer) => pointed(event, field, pointer)?.clone(),
                Mapped::Template(parts) => {
                    let mut text = String::new();
                    for part in parts {
                        match part {
                            Part::Text(t) => text.push_str(t),
                            Part::Pointer(pointer) => match pointed(event, field, pointer)? {
                                Value::Null => {
                                    return Err(ValidationError::new(
                                        field.clone(),
                                        format!("the event's {pointer} is null"),
                                    ));
                                }
                                Value::String(s) => text.push_str(s),
                                other => text.push_str(&other.to_string()),
                            },
                        }
                    }
                    Value::String(text)
                }
            };
            set(&mut request, field, value);
        }
        Ok(request)
    }
}

fn pointed<'a>(event: &'a Value, field: &str, pointer: &str) -> Result<&'a Value, ValidationError> {
    event.pointer(pointer).ok_or_else(|| {
        ValidationError::new(
            field,
            format!("EVENT_MAPPING points at {pointer}, which is not in the event"),
        )
    })
}

/// The parts of `field`'s template `spec`.
fn template(field: &str, spec: &str) -> Result<Vec<Part>, MappingError> {
    let mut parts = Vec::new();
    let mut rest = spec;
    while let Some(start) = rest.find("{/") {
        if start > 0 {
            parts.push(Part::Text(rest[..start].to_owned()));
        }
        let after = &rest[start + 1..];
        let end = after.find('}').ok_or_else(|| MappingError::Unclosed {
            field: field.to_owned(),
            at: rest[start..].to_owned(),
        })?;
        parts.push(Part::Pointer(after[..end].to_owned()));
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    Ok(parts)
}

/// Sets a dot path in a JSON object, creating the objects on the way.
fn set(target: &mut Value, path: &str, value: Value) {
    let mut node = target;
    let mut segments = path.split('.').peekable();
    while let Some(segment) = segments.next() {
        if !node.is_object() {
            *node = Value::Object(serde_json::Map::new());
        }
        let Value::Object(map) = node else { return };
        if segments.peek().is_none() {
            map.insert(segment.to_owned(), value);
            return;
        }
        node = map
            .entry(segment.to_owned())
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
    }
}

/// What the trigger is invoked with: an SQS batch (`Records`) or an EventBridge event
/// (`detail-type`). The EventBridge event keeps its JSON as delivered, for the mapping's
/// pointers and the dead-letter queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "Value")]
pub enum TriggerEvent {
    Sqs(SqsEvent),
    EventBridge {
        event: Box<EventBridgeEvent<Value>>,
        raw: Value,
    },
}

/// Why an invocation's payload is not a [`TriggerEvent`].
#[derive(Debug, thiserror::Error)]
pub enum NotATriggerEvent {
    #[error("not an SQS event: {0}")]
    Sqs(serde_json::Error),
    #[error("not an EventBridge event: {0}")]
    EventBridge(serde_json::Error),
    #[error("neither an SQS batch (Records) nor an EventBridge event (detail-type)")]
    Neither,
}

impl TryFrom<Value> for TriggerEvent {
    type Error = NotATriggerEvent;

    fn try_from(value: Value) -> Result<Self, NotATriggerEvent> {
        if value.get("Records").is_some() {
            serde_json::from_value(value)
                .map(TriggerEvent::Sqs)
                .map_err(NotATriggerEvent::Sqs)
        } else if value.get("detail-type").is_some() {
            let event =
                serde_json::from_value(value.clone()).map_err(NotATriggerEvent::EventBridge)?;
            Ok(TriggerEvent::EventBridge {
                event: Box::new(event),
                raw: value,
            })
        } else {
            Err(NotATriggerEvent::Neither)
        }
    }
}

/// The answer to an EventBridge invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventOutcome {
    /// The run the event names, when it was valid.
    pub run_id: Option<String>,
    /// The event was invalid and went to the dead-letter queue.
    pub dead_lettered: bool,
}

/// What the trigger answers: the batch response for SQS, the outcome for EventBridge.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum TriggerResponse {
    Sqs(SqsBatchResponse),
    EventBridge(EventOutcome),
}

/// Why one message or event was not handled. Only these are retried.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("the store is unavailable: {0}")]
    Store(#[source] RunError),
    #[error("could not start the run's execution: {0}")]
    Execution(#[source] AwsError),
    #[error("could not send the invalid message to the dead-letter queue: {0}")]
    DeadLetter(#[source] AwsError),
}

impl From<TriggerError> for FunctionError {
    fn from(e: TriggerError) -> Self {
        match e {
            TriggerError::Store(_) => FunctionError::StoreUnavailable(e.to_string()),
            TriggerError::Execution(_) | TriggerError::DeadLetter(_) => {
                FunctionError::TriggerUnavailable(e.to_string())
            }
        }
    }
}

/// A start that went wrong: the request is invalid (dead-letter it) or something transient.
enum Failure {
    Invalid(ValidationError),
    Transient(TriggerError),
}

/// The `trigger` function.
pub struct TriggerFunction {
    pub transitions: Transitions,
    pub executions: Arc<dyn Executions>,
    pub dead_letters: Arc<dyn DeadLetters>,
    /// `EVENT_MAPPING`; without it an EventBridge event's `detail` is the RunRequest.
    pub mapping: Option<EventMapping>,
}

impl TriggerFunction {
    pub async fn handle(&self, event: TriggerEvent) -> Result<TriggerResponse, FunctionError> {
        match event {
            TriggerEvent::Sqs(batch) => Ok(TriggerResponse::Sqs(self.handle_sqs(batch).await)),
            TriggerEvent::EventBridge { event, raw } => Ok(TriggerResponse::EventBridge(
                self.handle_event(&event, &raw).await?,
            )),
        }
    }

    /// Starts a run per message; the response lists only the messages to redeliver.
    pub async fn handle_sqs(&self, batch: SqsEvent) -> SqsBatchResponse {
        let mut response = SqsBatchResponse::default();
        for message in &batch.records {
            let id = message.message_id.clone().unwrap_or_default();
            let span = tracing::info_span!("message", source = "sqs", sourceId = %id);
            // A producer that sends its W3C trace context as a `traceparent` string attribute
            // gets the run in its own trace.
            if let Some(parent) = message
                .message_attributes
                .get("traceparent")
                .and_then(|a| a.string_value.as_deref())
            {
                orchestrator_telemetry::set_parent(&span, parent);
            }
            if let Err(e) = self.message(message, &id).instrument(span).await {
                tracing::error!(source = "sqs", sourceId = %id, error = %e, "message failed; SQS redelivers it");
                response.add_failure(id);
            }
        }
        response
    }

    async fn message(&self, message: &SqsMessage, id: &str) -> Result<(), TriggerError> {
        let body = message.body.as_deref().unwrap_or_default();
        let parsed = if id.is_empty() {
            Err(ValidationError::new("messageId", "the message has no id"))
        } else {
            self.request_from_json(body)
        };
        let request = match parsed {
            Ok(request) => request,
            Err(invalid) => return self.dead_letter(body, Source::Sqs, id, &invalid).await,
        };
        let key = request
            .idempotency_key
            .clone()
            .unwrap_or_else(|| id.to_owned());
        let run_id = run_id_for(Source::Sqs, &key);
        match self.start(run_id, request, id).await {
            Ok(_) => Ok(()),
            Err(Failure::Invalid(invalid)) => {
                self.dead_letter(body, Source::Sqs, id, &invalid).await
            }
            Err(Failure::Transient(e)) => Err(e),
        }
    }

    /// Starts the run an EventBridge event names; a transient failure fails the invocation.
    pub async fn handle_event(
        &self,
        event: &EventBridgeEvent<Value>,
        raw: &Value,
    ) -> Result<EventOutcome, TriggerError> {
        let id = event.id.clone().unwrap_or_default();
        let span = tracing::info_span!("event", source = "eventbridge", sourceId = %id);
        self.event(event, raw, &id).instrument(span).await
    }

    async fn event(
        &self,
        event: &EventBridgeEvent<Value>,
        raw: &Value,
        id: &str,
    ) -> Result<EventOutcome, TriggerError> {
        let body = raw.to_string();
        let parsed = if id.is_empty() {
            Err(ValidationError::new("id", "the event has no id"))
        } else {
            match &self.mapping {
                Some(mapping) => mapping
                    .build(raw)
                    .and_then(|value| self.request_from_value(value)),
                None => self.request_from_value(event.detail.clone()),
            }
        };
        let invalid = match parsed {
            Ok(request) => {
                let run_id = run_id_for(Source::EventBridge, id);
                match self.start(run_id, request, id).await {
                    Ok(run_id) => {
                        return Ok(EventOutcome {
                            run_id: Some(run_id),
                            dead_lettered: false,
                        });
                    }
                    Err(Failure::Invalid(invalid)) => invalid,
                    Err(Failure::Transient(e)) => {
                        tracing::error!(source = "eventbridge", sourceId = %id, error = %e, "event failed; the invocation is retried");
                        return Err(e);
                    }
                }
            }
            Err(invalid) => invalid,
        };
        self.dead_letter(&body, Source::EventBridge, id, &invalid)
            .await?;
        Ok(EventOutcome {
            run_id: None,
            dead_lettered: true,
        })
    }

    /// Stores the run (once per id) and starts its execution unless it is over. A run stored by
    /// an earlier try whose execution did not start gets it now.
    async fn start(
        &self,
        run_id: String,
        request: RunRequest,
        correlation_id: &str,
    ) -> Result<String, Failure> {
        let started = self
            .transitions
            .start_as(
                Some(run_id.clone()),
                request,
                Some(correlation_id.to_owned()),
            )
            .await;
        let (run_id, created, mut traceparent) = match started {
            Ok(Started::New(launch)) => (launch.state.run_id, true, launch.state.traceparent),
            Ok(Started::Existing { run_id }) => (run_id, false, None),
            // The id is taken under another idempotency key: it is this message's run all the
            // same (the id derives from it), so it is found rather than made twice.
            Err(RunError::Store(StoreError::Conflict(_))) => (run_id, false, None),
            Err(RunError::Invalid(invalid)) => return Err(Failure::Invalid(invalid)),
            Err(e) => return Err(Failure::Transient(TriggerError::Store(e))),
        };
        if !created {
            let state = self
                .transitions
                .load(&run_id)
                .await
                .map_err(|e| Failure::Transient(TriggerError::Store(e)))?;
            if state.status.is_terminal() {
                tracing::info!(runId = %run_id, status = %state.status, "the run exists and is over; nothing to start");
                return Ok(run_id);
            }
            tracing::info!(runId = %run_id, "the run exists; making sure its execution is started");
            traceparent = state.traceparent;
        }
        self.transitions
            .owned_by_execution(&run_id)
            .await
            .map_err(|e| Failure::Transient(TriggerError::Store(e)))?;
        self.executions
            .start(&run_id, traceparent.as_deref())
            .await
            .map_err(|e| Failure::Transient(TriggerError::Execution(e)))?;
        tracing::info!(runId = %run_id, created, "run started");
        Ok(run_id)
    }

    async fn dead_letter(
        &self,
        body: &str,
        source: Source,
        id: &str,
        invalid: &ValidationError,
    ) -> Result<(), TriggerError> {
        let error = attribute_text(&invalid.to_string());
        tracing::warn!(source = source.as_str(), sourceId = %id, %error, "invalid; sent to the dead-letter queue");
        let attributes = BTreeMap::from([
            ("error".to_owned(), error),
            ("source".to_owned(), source.as_str().to_owned()),
            (
                "sourceId".to_owned(),
                if id.is_empty() {
                    "unknown".to_owned()
                } else {
                    attribute_text(id)
                },
            ),
        ]);
        // SQS refuses an empty body; the attributes still say what it was.
        let body = if body.is_empty() { "(empty)" } else { body };
        self.dead_letters
            .send(body, &attributes)
            .await
            .map_err(TriggerError::DeadLetter)
    }

    fn request_from_json(&self, body: &str) -> Result<RunRequest, ValidationError> {
        let value: Value = serde_json::from_str(body)
            .map_err(|e| ValidationError::new(".", format!("the body is not valid JSON: {e}")))?;
        self.request_from_value(value)
    }

    /// A checked RunRequest, or the error naming the field (as POST /api/v1/runs does).
    fn request_from_value(&self, value: Value) -> Result<RunRequest, ValidationError> {
        if !value.is_object() {
            return Err(ValidationError::new(
                ".",
                "must be a JSON object (a RunRequest)",
            ));
        }
        let request: RunRequest = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            ValidationError::at_path(&path, e.into_inner().to_string())
        })?;
        self.transitions.validate(&request)?;
        Ok(request)
    }
}

/// Text SQS accepts as an attribute value: its allowed characters, bounded length.
fn attribute_text(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| match c {
            '\t' | '\n' | '\r' | ' '..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'.. => c,
            _ => ' ',
        })
        .take(MAX_ERROR_CHARS)
        .collect();
    if clean.trim().is_empty() {
        "unknown".to_owned()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_same_key_names_the_same_run_and_sources_do_not_collide() {
        // GIVEN one key from two sources WHEN run ids are derived THEN each is stable and distinct
        assert_eq!(run_id_for(Source::Sqs, "k"), run_id_for(Source::Sqs, "k"));
        assert_ne!(
            run_id_for(Source::Sqs, "k"),
            run_id_for(Source::EventBridge, "k")
        );
    }

    #[test]
    fn a_malformed_mapping_says_what_is_wrong() {
        // GIVEN mappings that cannot work WHEN parsed THEN each error names the problem
        assert!(
            EventMapping::parse("[1]")
                .unwrap_err()
                .to_string()
                .contains("JSON object")
        );
        assert!(
            EventMapping::parse("{\"objective\": 3}")
                .unwrap_err()
                .to_string()
                .contains("objective")
        );
        assert!(
            EventMapping::parse("{\"objective\": \"a {/detail\"}")
                .unwrap_err()
                .to_string()
                .contains("closing")
        );
        assert!(
            EventMapping::parse("{\"state\": \"/a\", \"state.brief\": \"/b\"}")
                .unwrap_err()
                .to_string()
                .contains("overlap")
        );
        assert!(
            EventMapping::parse("{\"options..x\": \"/a\"}")
                .unwrap_err()
                .to_string()
                .contains("field path")
        );
    }

    #[test]
    fn a_mapping_copies_pointed_values_and_fills_templates() {
        // GIVEN a mapping with a pointer, a nested field and a template
        let mapping = EventMapping::parse(
            r#"{"briefId": "/detail/key", "options.qualityThreshold": "/detail/q",
                "objective": "Write {/detail/key} at {/detail/q}"}"#,
        )
        .unwrap();
        // WHEN it builds a request from an event
        let built = mapping
            .build(&json!({"detail": {"key": "b/1", "q": 0.9}}))
            .unwrap();
        // THEN values are copied as is and placeholders become text
        assert_eq!(
            built,
            json!({"briefId": "b/1", "options": {"qualityThreshold": 0.9}, "objective": "Write b/1 at 0.9"})
        );
    }
}
