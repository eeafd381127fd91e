//! The AWS side's errors. [`FunctionError`] is what a function raises to Step Functions: its
//! `errorType` strings are stable, the ASL's Retry and Catch name them (functions/README.md lists
//! them). [`AwsError`] is an AWS call that failed, named by service and operation; [`InitError`]
//! stops a function at start and names the variable to fix.

use std::fmt;

use aws_sdk_sfn::error::{DisplayErrorContext, ProvideErrorMetadata};
use orchestrator_core::ports::StoreError;
use orchestrator_runner::{RunError, Transient};

#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    #[error("{0}")]
    SpecialistThrottled(String),
    #[error("{0}")]
    SpecialistUnavailable(String),
    #[error("{0}")]
    PlannerThrottled(String),
    #[error("{0}")]
    PlannerUnavailable(String),
    #[error("{0}")]
    StoreUnavailable(String),
    #[error("{0}")]
    StoreConflict(String),
    #[error("{0}")]
    EventsUnavailable(String),
    #[error("run {0} not found")]
    RunNotFound(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    TriggerUnavailable(String),
    #[error("{0}")]
    ExecutionUnavailable(String),
}

impl FunctionError {
    /// The `errorType` Step Functions sees.
    pub fn error_type(&self) -> &'static str {
        match self {
            FunctionError::SpecialistThrottled(_) => "Specialist.ModelThrottled",
            FunctionError::SpecialistUnavailable(_) => "Specialist.ModelUnavailable",
            FunctionError::PlannerThrottled(_) => "Planner.ModelThrottled",
            FunctionError::PlannerUnavailable(_) => "Planner.ModelUnavailable",
            FunctionError::StoreUnavailable(_) => "Store.Unavailable",
            FunctionError::StoreConflict(_) => "Store.Conflict",
            FunctionError::EventsUnavailable(_) => "Events.Unavailable",
            FunctionError::RunNotFound(_) => "Run.NotFound",
            FunctionError::InvalidRequest(_) => "Request.Invalid",
            FunctionError::TriggerUnavailable(_) => "Trigger.Unavailable",
            FunctionError::ExecutionUnavailable(_) => "Execution.Unavailable",
        }
    }

    /// A transient failure of a specialist's attempt.
    pub fn of_step(e: Transient) -> Self {
        match e {
            Transient::Throttled(m) => FunctionError::SpecialistThrottled(m),
            Transient::Unavailable(m) => FunctionError::SpecialistUnavailable(m),
            Transient::Store(s) => s.into(),
        }
    }
}

impl From<StoreError> for FunctionError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => FunctionError::RunNotFound(id),
            StoreError::Conflict(m) => FunctionError::StoreConflict(m),
            // Step Functions owns its runs; a lease on one is a local process's mistake.
            StoreError::LeaseLost(id) => {
                FunctionError::StoreConflict(format!("run {id} is leased by another driver"))
            }
            // Corrupt data will not mend itself, but the table might be mid-write: one more try.
            StoreError::Corrupt(m) | StoreError::Unavailable(m) => {
                FunctionError::StoreUnavailable(m)
            }
        }
    }
}

impl From<RunError> for FunctionError {
    fn from(e: RunError) -> Self {
        match e {
            RunError::Store(s) => s.into(),
            RunError::NotFound(id) => FunctionError::RunNotFound(id),
            // Retried later (a queue message stays in its queue): the cap is back-pressure.
            e @ RunError::AtCapacity { .. } => FunctionError::TriggerUnavailable(e.to_string()),
            other => FunctionError::InvalidRequest(other.to_string()),
        }
    }
}

impl From<DeliveryError> for FunctionError {
    fn from(e: DeliveryError) -> Self {
        match e {
            DeliveryError::Note(s) => s.into(),
            DeliveryError::Event(e) => FunctionError::EventsUnavailable(e.to_string()),
        }
    }
}

impl From<FunctionError> for lambda_runtime::Diagnostic {
    fn from(e: FunctionError) -> Self {
        lambda_runtime::Diagnostic {
            error_type: e.error_type().to_owned(),
            error_message: e.to_string(),
        }
    }
}

/// An AWS service the functions call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    StepFunctions,
    Scheduler,
    Sqs,
    EventBridge,
    SecretsManager,
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Service::StepFunctions => "Step Functions",
            Service::Scheduler => "EventBridge Scheduler",
            Service::Sqs => "SQS",
            Service::EventBridge => "EventBridge",
            Service::SecretsManager => "Secrets Manager",
        })
    }
}

/// A call to an AWS service that did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// The call failed; `detail` is what the service said (its error code and message), or why
    /// it could not be asked.
    #[error("{service} {operation} failed: {detail}")]
    Call {
        service: Service,
        operation: &'static str,
        detail: String,
    },
    /// PutEvents answers 200 with per-entry failures: the bus took the call, not the event.
    #[error("EventBridge refused the completion event: {0}")]
    EventRefused(String),
    /// A request's JSON body could not be written.
    #[error("could not encode the {what}: {source}")]
    Encode {
        what: &'static str,
        source: serde_json::Error,
    },
}

impl AwsError {
    /// A failed call, from the SDK's error: the service's code and message when it answered,
    /// else the whole chain (a timeout, a refused connection, a bad endpoint).
    pub fn call<E>(service: Service, operation: &'static str, error: &E) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error,
    {
        let detail = match error.code() {
            Some(code) => format!("{code}: {}", error.message().unwrap_or("no message")),
            None => DisplayErrorContext(error).to_string(),
        };
        AwsError::Call {
            service,
            operation,
            detail,
        }
    }
}

/// Why a run's completion event did not go out: the note that records it, or the bus.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("the completion note: {0}")]
    Note(#[from] StoreError),
    #[error(transparent)]
    Event(#[from] AwsError),
}

/// Why a function cannot start. Each names the variable to fix.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Telemetry(#[from] orchestrator_telemetry::TelemetryError),
    #[error("STATE_MACHINE_TYPE: {0:?} is neither STANDARD nor EXPRESS")]
    MachineType(String),
    #[error("{name}: is not set")]
    Missing { name: &'static str },
    #[error("{name}: {value:?} is not a whole number of seconds")]
    NotSeconds { name: &'static str, value: String },
    #[error(transparent)]
    Setting(#[from] orchestrator_runner::SettingError),
    #[error("SPECIALIST_FUNCTIONS: {0}")]
    SpecialistFunctions(#[from] FunctionMapError),
    #[error("EVENT_MAPPING: {0}")]
    EventMapping(#[from] MappingError),
    #[error("{0}")]
    Store(#[from] orchestrator_store::ConfigError),
    #[error("LLM configuration: {0}")]
    Llm(#[from] orchestrator_llm::ConfigError),
    #[error("the model: {0}")]
    Model(#[from] orchestrator_llm::BuildError),
    #[error("{0}")]
    Record(#[from] orchestrator_recording::RecordConfigError),
    #[error("{name}: could not read the secret {id}: {source}")]
    Secret {
        name: &'static str,
        id: String,
        source: AwsError,
    },
    #[error("{name}: could not read the secret {id}: the secret has no string value")]
    SecretNotText { name: &'static str, id: String },
}

/// What is wrong with a `SPECIALIST_FUNCTIONS`, and with which of its pairs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FunctionMapError {
    #[error("{0:?} is not capability=function (e.g. qa=my-stack-qa)")]
    NotAPair(String),
    #[error("{0:?} has an empty capability or function")]
    EmptyHalf(String),
    #[error("no capability=function pairs")]
    Empty,
}

/// What is wrong with an `EVENT_MAPPING`, and with which of its keys.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("is not valid JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("must be a JSON object of RunRequest field -> pointer or template")]
    NotObject,
    #[error("maps no field; leave it unset to use the event's detail")]
    Empty,
    #[error("{0:?} is not a field path (e.g. options.qualityThreshold)")]
    NotFieldPath(String),
    #[error("{0}: must be a string: a JSON Pointer (/detail/...) or a template")]
    NotString(String),
    #[error("{field}: the placeholder at {at:?} has no closing }}")]
    Unclosed { field: String, at: String },
    #[error("{0} and {1} overlap: map one or the other")]
    Overlap(String, String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttled_model_is_raised_under_the_name_the_asl_retries() {
        let e = FunctionError::of_step(Transient::Throttled("429".into()));
        let d: lambda_runtime::Diagnostic = e.into();
        assert_eq!(d.error_type, "Specialist.ModelThrottled");
    }

    #[test]
    fn a_refused_call_names_the_service_the_operation_and_what_it_said() {
        // GIVEN Step Functions refusing a StartExecution with a code and a message
        let refused = aws_sdk_sfn::operation::start_execution::StartExecutionError::generic(
            aws_sdk_sfn::error::ErrorMetadata::builder()
                .code("ExecutionLimitExceeded")
                .message("too many executions")
                .build(),
        );
        // WHEN it becomes an AwsError
        let e = AwsError::call(Service::StepFunctions, "StartExecution", &refused);
        // THEN its text says all of it
        assert_eq!(
            e.to_string(),
            "Step Functions StartExecution failed: ExecutionLimitExceeded: too many executions"
        );
    }

    #[test]
    fn a_bad_setting_is_named_at_start() {
        // GIVEN a malformed EVENT_MAPPING and a missing variable
        let mapping = InitError::from(MappingError::NotObject);
        let missing = InitError::Missing {
            name: "STATE_MACHINE_ARN",
        };
        // WHEN they are shown THEN each begins with the variable to fix
        assert!(mapping.to_string().starts_with("EVENT_MAPPING: must be"));
        assert_eq!(missing.to_string(), "STATE_MACHINE_ARN: is not set");
    }

    #[test]
    fn a_completion_is_retried_under_the_name_of_what_failed() {
        // GIVEN the bus refusing the event, and the table unreachable for its note
        let event = DeliveryError::from(AwsError::EventRefused("throttled".into()));
        let note = DeliveryError::from(StoreError::Unavailable("timeout".into()));
        // WHEN they are raised THEN each has the errorType Notify retries
        assert_eq!(
            FunctionError::from(event).error_type(),
            "Events.Unavailable"
        );
        assert_eq!(FunctionError::from(note).error_type(), "Store.Unavailable");
    }

    #[test]
    fn store_errors_keep_their_meaning() {
        assert_eq!(
            FunctionError::from(StoreError::Unavailable("x".into())).error_type(),
            "Store.Unavailable"
        );
        assert_eq!(
            FunctionError::from(StoreError::NotFound("r".into())).error_type(),
            "Run.NotFound"
        );
    }
}
