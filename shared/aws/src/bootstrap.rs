//! What every function's main does once, before the runtime starts: read the environment, build
//! the SDK clients, open the table, resolve secrets. Errors name the variable to fix.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;
use orchestrator_api::ApiConfig;
use orchestrator_core::ports::{Model, SystemClock};
use orchestrator_llm::LlmConfig;
use orchestrator_runner::{RunnerConfig, Store, Transitions};
use orchestrator_store::{DynamoDbConfig, DynamoDbStore};

use crate::control::{NoDeadlines, SchedulerDeadlines};
pub use crate::error::InitError;
use crate::error::{AwsError, Service};
use crate::handlers::Delivery;
use crate::route::{DEFAULT_MAP_MAX_CONCURRENCY, FunctionMap};
use crate::segments::Deadlines;
use crate::segments::{
    DEFAULT_SEGMENT_SECONDS, MachineKind, SEGMENT_SECONDS_VAR, STATE_MACHINE_TYPE_VAR, SegmentGuard,
};
use crate::trigger::EventMapping;
use crate::{AwsApprovalWaits, SfnControl};

/// The capabilities of the reference team; each runs in the function of the same name unless
/// SPECIALIST_FUNCTIONS says otherwise.
pub const DEFAULT_SPECIALISTS: &str =
    "strategy=strategy,generation=generation,qa=qa,finalize=finalize";

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The table and the SDK configuration every other client is built from.
pub struct Aws {
    pub sdk: SdkConfig,
    pub store: DynamoDbStore,
}

impl Aws {
    /// `TABLE_NAME`, `AWS_REGION`, `AWS_ENDPOINT_URL` (emulators) and the store's own knobs.
    pub async fn from_env() -> Result<Self, InitError> {
        let config = DynamoDbConfig::from_env()?;
        let sdk = config.sdk_config().await;
        let store = DynamoDbStore::new(aws_sdk_dynamodb::Client::new(&sdk), &config);
        Ok(Self { sdk, store })
    }

    pub fn sfn(&self) -> aws_sdk_sfn::Client {
        aws_sdk_sfn::Client::new(&self.sdk)
    }

    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.sdk)
    }

    /// Engine transitions over the table, for the given capabilities; streamed text batched as
    /// a store that bills every write wants it.
    pub fn transitions(&self, functions: &FunctionMap, config: RunnerConfig) -> Transitions {
        let config = config.with_billed_writes();
        let store: Arc<dyn Store> = Arc::new(self.store.clone());
        let capabilities: BTreeSet<String> = functions.capabilities().cloned().collect();
        Transitions::new(store, capabilities, Arc::new(SystemClock), config)
    }

    /// A secret's value by id/ARN (Secrets Manager), read once at start.
    pub async fn secret(&self, name: &'static str, id: &str) -> Result<String, InitError> {
        let client = aws_sdk_secretsmanager::Client::new(&self.sdk);
        let out = client
            .get_secret_value()
            .secret_id(id)
            .send()
            .await
            .map_err(|e| InitError::Secret {
                name,
                id: id.to_owned(),
                source: AwsError::call(Service::SecretsManager, "GetSecretValue", &e),
            })?;
        out.secret_string.ok_or_else(|| InitError::SecretNotText {
            name,
            id: id.to_owned(),
        })
    }

    /// The model configuration from the environment, with `OPENAI_API_KEY` taken from the
    /// Secrets Manager secret named by `OPENAI_API_KEY_SECRET` when that is set: the key never
    /// sits in the function's configuration in plain text.
    pub async fn llm_config(&self) -> Result<LlmConfig, InitError> {
        let key = match var("OPENAI_API_KEY_SECRET") {
            Some(id) => Some(self.secret("OPENAI_API_KEY_SECRET", &id).await?),
            None => None,
        };
        Ok(LlmConfig::from_lookup(|name| match (name, &key) {
            ("OPENAI_API_KEY", Some(key)) => Some(key.clone()),
            _ => var(name),
        })?)
    }

    /// The configured model, its calls recorded with their run in the table unless
    /// `ORCHESTRATOR_RECORD=off` (redacted as `ORCHESTRATOR_REDACT_FILE` says).
    pub async fn model(&self) -> Result<Arc<dyn Model>, InitError> {
        let model = orchestrator_llm::build_model(&self.llm_config().await?).await?;
        let record = orchestrator_recording::RecordConfig::from_env()?;
        Ok(record.wrap(model, Arc::new(self.store.clone())))
    }

    /// Completion events on the bus named by `EVENT_BUS_NAME`; none when it is unset.
    pub fn delivery(&self) -> Option<Delivery> {
        let bus = var("EVENT_BUS_NAME")?;
        Some(Delivery {
            completions: Arc::new(crate::completion::EventBridgeCompletions {
                client: aws_sdk_eventbridge::Client::new(&self.sdk),
                bus,
                store: self.store.clone(),
            }),
            table: self.store.table_name().to_owned(),
        })
    }

    /// The bearer key of the API: `API_KEY_SECRET` (Secrets Manager), else `API_KEY`.
    pub async fn api_key(&self) -> Result<Option<String>, InitError> {
        match var("API_KEY_SECRET") {
            Some(id) => Ok(Some(
                self.secret("API_KEY_SECRET", &id).await?.trim().to_owned(),
            )),
            None => Ok(var("API_KEY")),
        }
    }

    /// Approval waits over the table and Step Functions.
    pub fn approval_waits(&self) -> AwsApprovalWaits {
        AwsApprovalWaits {
            store: self.store.clone(),
            sfn: self.sfn(),
        }
    }

    /// Runs as executions of the state machine `STATE_MACHINE_ARN`. `delivery` sends the
    /// completion of a run cancelled through this control (none if it never cancels).
    pub fn sfn_control(
        &self,
        transitions: Transitions,
        delivery: Option<Delivery>,
    ) -> Result<SfnControl, InitError> {
        let waits = self.approval_waits();
        Ok(SfnControl {
            transitions,
            sfn: waits.sfn.clone(),
            state_machine_arn: required("STATE_MACHINE_ARN")?,
            kind: machine_kind_from_env()?,
            waits: Arc::new(waits),
            segments: Arc::new(self.store.clone()),
            deadlines: self.deadlines(),
            delivery,
        })
    }

    /// Paused Express runs' deadlines as EventBridge Scheduler schedules, assumed into
    /// `SCHEDULER_ROLE_ARN`; unset (Standard), none are kept.
    pub fn deadlines(&self) -> Arc<dyn Deadlines> {
        match var("SCHEDULER_ROLE_ARN") {
            Some(role_arn) => Arc::new(SchedulerDeadlines {
                client: aws_sdk_scheduler::Client::new(&self.sdk),
                role_arn,
            }),
            None => Arc::new(NoDeadlines),
        }
    }

    /// The segment checks of `planner` and `advance` over the table, `SEGMENT_SECONDS`
    /// (default 240) apart. They act only when the state machine names a segment (Express).
    pub fn segment_guard(&self) -> Result<SegmentGuard, InitError> {
        let limit = seconds(SEGMENT_SECONDS_VAR)?.unwrap_or(DEFAULT_SEGMENT_SECONDS);
        Ok(SegmentGuard::new(Arc::new(self.store.clone()), limit))
    }

    /// The streamer's API: the bearer key ([`Aws::api_key`]), `CORS_ORIGINS` (comma-separated)
    /// and `STREAM_MAX_SECONDS` (default 840).
    pub async fn api_config(&self) -> Result<ApiConfig, InitError> {
        Ok(ApiConfig {
            api_key: self.api_key().await?,
            cors_origins: std::env::var("CORS_ORIGINS")
                .unwrap_or_default()
                .split(',')
                .map(|o| o.trim().to_owned())
                .filter(|o| !o.is_empty())
                .collect(),
            // End each response before the function's timeout, with a retry hint.
            max_stream: Some(Duration::from_secs(
                seconds("STREAM_MAX_SECONDS")?.unwrap_or(840),
            )),
            max_starts_per_minute: orchestrator_api::max_starts_per_minute_from_env()?,
            ..ApiConfig::default()
        })
    }
}

/// `SPECIALIST_FUNCTIONS`, or the reference team in functions named after their capability.
pub fn functions_from_env() -> Result<FunctionMap, InitError> {
    let spec = var("SPECIALIST_FUNCTIONS").unwrap_or_else(|| DEFAULT_SPECIALISTS.to_owned());
    let functions = FunctionMap::parse(&spec)?;
    // Unset: the default; set, 0 means no limit (as for the Map itself).
    let max_concurrency = match var(MAP_MAX_CONCURRENCY_VAR) {
        None => DEFAULT_MAP_MAX_CONCURRENCY,
        Some(_) => orchestrator_runner::limit_from_env(MAP_MAX_CONCURRENCY_VAR)?.unwrap_or(0),
    };
    Ok(functions.with_max_concurrency(max_concurrency))
}

/// Steps the Dispatch Map runs at once (template parameter `MapMaxConcurrency`).
pub const MAP_MAX_CONCURRENCY_VAR: &str = "MAP_MAX_CONCURRENCY";

/// `EVENT_MAPPING`; none when it is unset (an EventBridge event's `detail` is the request).
pub fn mapping_from_env() -> Result<Option<EventMapping>, InitError> {
    Ok(var("EVENT_MAPPING")
        .map(|text| EventMapping::parse(&text))
        .transpose()?)
}

/// `STATE_MACHINE_TYPE` (`EXPRESS`, the default, or `STANDARD`).
pub fn machine_kind_from_env() -> Result<MachineKind, InitError> {
    MachineKind::parse(var(STATE_MACHINE_TYPE_VAR).as_deref())
}

/// A required variable.
pub fn required(name: &'static str) -> Result<String, InitError> {
    var(name).ok_or(InitError::Missing { name })
}

/// An optional number of seconds.
pub fn seconds(name: &'static str) -> Result<Option<u64>, InitError> {
    var(name)
        .map(|v| {
            v.trim()
                .parse()
                .map_err(|_| InitError::NotSeconds { name, value: v })
        })
        .transpose()
}

/// Runs `handler` on every invocation until the runtime stops: the payload in, the function's
/// answer (or its error, with its stable error type) out.
pub async fn serve<T, R, F, Fut>(handler: F) -> Result<(), lambda_runtime::Error>
where
    T: serde::de::DeserializeOwned + Send,
    R: serde::Serialize,
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = Result<R, crate::FunctionError>> + Send,
{
    let handler = &handler;
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<T>| async move {
            let answer = handler(event.payload).await;
            crate::telemetry::flush().await;
            answer
        },
    ))
    .await
}
