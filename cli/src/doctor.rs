//! `orchestrator doctor`: the pre-flight check. Each thing a run needs is tried for real (the
//! store read, the model asked for a few tokens, the state machine described, each secret
//! read, the trace receiver sent an empty export) and reported on one line; what fails comes
//! with its fix. Exit 0 when everything passed, 1 when something did.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use orchestrator_core::ports::{ChatMessage, ModelError, ModelRequest, Purpose};
use orchestrator_llm::{LlmConfig, Provider};
use orchestrator_runner::Store;

use crate::config::Config;
use crate::terminal;

/// How long the model probe may take, retries included.
const MODEL_PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// What to check besides the store and the model.
pub struct Options {
    /// The state machine that drives runs on AWS (STATE_MACHINE_ARN).
    pub state_machine_arn: Option<String>,
    /// Secrets the deployment reads (the model key, the API key), by ARN or name.
    pub secrets: Vec<String>,
}

enum Outcome {
    Passed(String),
    Failed { problem: String, fix: String },
}

struct Check {
    what: &'static str,
    outcome: Outcome,
}

impl Check {
    fn passed(what: &'static str, detail: impl Into<String>) -> Self {
        Self {
            what,
            outcome: Outcome::Passed(detail.into()),
        }
    }

    fn failed(what: &'static str, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            what,
            outcome: Outcome::Failed {
                problem: problem.into(),
                fix: fix.into(),
            },
        }
    }

    fn print(&self) {
        match &self.outcome {
            Outcome::Passed(detail) => {
                println!("✓ {:<13} {}", self.what, terminal::line(detail));
            }
            Outcome::Failed { problem, fix } => {
                println!("✗ {:<13} {}", self.what, terminal::line(problem));
                println!("  {:<13} fix: {}", "", terminal::line(fix));
            }
        }
    }
}

/// The store as the command found it.
pub enum StoreProbe {
    /// Opened (or why not), with where it is.
    Opened(anyhow::Result<(Arc<dyn Store>, String)>),
    /// A SQLite file that does not exist yet: the doctor does not create it.
    NotYet(PathBuf),
}

/// Runs every check, printing each as it ends.
pub async fn run(config: &Config, store: StoreProbe, options: Options) -> ExitCode {
    let mut failed = 0;
    let mut report = |check: Check| {
        check.print();
        if matches!(check.outcome, Outcome::Failed { .. }) {
            failed += 1;
        }
    };
    report(check_store(store).await);
    report(check_model(&config.llm).await);
    if options.state_machine_arn.is_some() || !options.secrets.is_empty() {
        let aws = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await;
        if let Some(arn) = &options.state_machine_arn {
            report(check_state_machine(&aws, arn).await);
        }
        for secret in &options.secrets {
            report(check_secret(&aws, secret).await);
        }
    }
    if let Some(endpoint) = orchestrator_telemetry::traces_url() {
        report(check_traces(&endpoint).await);
    }
    if failed == 0 {
        println!("all checks passed");
        ExitCode::SUCCESS
    } else {
        println!("{failed} check(s) failed");
        ExitCode::from(1)
    }
}

async fn check_store(store: StoreProbe) -> Check {
    let (store, location) = match store {
        StoreProbe::NotYet(db) => {
            return Check::passed(
                "store",
                format!(
                    "no database yet at {}: the first run creates it",
                    db.display()
                ),
            );
        }
        StoreProbe::Opened(Ok(opened)) => opened,
        StoreProbe::Opened(Err(e)) => {
            return Check::failed(
                "store",
                format!("{e:#}"),
                "create it (--create-table, or deploy the stack), or point TABLE_NAME / --db at the right one",
            );
        }
    };
    match store.list_runs(1, None).await {
        Ok(_) => Check::passed("store", format!("{location} can be read")),
        Err(e) => Check::failed(
            "store",
            format!("{location}: {e}"),
            "check the credentials' access to the table (dynamodb:Query on it and its index)",
        ),
    }
}

async fn check_model(llm: &LlmConfig) -> Check {
    let model = match orchestrator_llm::build_model(llm).await {
        Ok(model) => model,
        Err(e) => return Check::failed("model", e.to_string(), model_fix(llm, None)),
    };
    let info = model.info();
    let name = format!("{}/{}", info.provider, info.model);
    if llm.provider == Provider::Offline {
        return Check::passed(
            "model",
            "the built-in offline model (nothing to reach; set MODEL_PROVIDER for a real one)",
        );
    }
    let mut probe = ModelRequest::new(
        Purpose::Chat,
        "Answer with the word OK.",
        vec![ChatMessage::user("Are you there?")],
    );
    probe.max_tokens = Some(16);
    let started = Instant::now();
    match tokio::time::timeout(MODEL_PROBE_TIMEOUT, model.complete(probe)).await {
        Ok(Ok(_)) => Check::passed(
            "model",
            format!(
                "{name}{} answers ({} ms)",
                region_of(llm),
                started.elapsed().as_millis()
            ),
        ),
        Ok(Err(e)) if e.throttled() => Check::passed(
            "model",
            format!("{name}{} is reachable, and throttling now", region_of(llm)),
        ),
        Ok(Err(e)) => Check::failed(
            "model",
            format!("{name}{}: {e}", region_of(llm)),
            model_fix(llm, Some(&e)),
        ),
        Err(_) => Check::failed(
            "model",
            format!(
                "{name}{}: no answer within {} s",
                region_of(llm),
                MODEL_PROBE_TIMEOUT.as_secs()
            ),
            model_fix(llm, Some(&ModelError::Timeout(0))),
        ),
    }
}

fn region_of(llm: &LlmConfig) -> String {
    match (&llm.provider, &llm.aws_region) {
        (Provider::Bedrock, Some(region)) => format!(" in {region}"),
        _ => String::new(),
    }
}

/// What to do about a model that did not answer, by provider and by what went wrong.
fn model_fix(llm: &LlmConfig, error: Option<&ModelError>) -> String {
    let status = match error {
        Some(ModelError::Provider { status, .. }) => Some(*status),
        _ => None,
    };
    let unreachable = matches!(
        error,
        Some(ModelError::Transport(_) | ModelError::Timeout(_))
    );
    match llm.provider {
        Provider::OpenAi if unreachable => format!(
            "check OPENAI_BASE_URL ({}) and that this machine can reach it",
            llm.openai_base_url
        ),
        Provider::OpenAi if matches!(status, Some(401 | 403)) => {
            "check OPENAI_API_KEY (on AWS: the secret OpenAiApiKeySecretArn names)".to_owned()
        }
        Provider::OpenAi => format!(
            "check MODEL_ID ({}) against the models {} lists",
            llm.model, llm.openai_base_url
        ),
        Provider::Bedrock if unreachable => {
            "check AWS_REGION and that this machine can reach Bedrock there".to_owned()
        }
        Provider::Bedrock if matches!(status, Some(401 | 403)) => format!(
            "grant bedrock:InvokeModel on {} and enable access to it in the Bedrock console for this Region",
            llm.model
        ),
        Provider::Bedrock => format!(
            "{} may not be offered in this Region: us.* inference profiles work only in US Regions; use the eu.* or apac.* profile, or a model id the Region lists (ModelId parameter)",
            llm.model
        ),
        Provider::Offline => "unset MODEL_PROVIDER to use the offline model".to_owned(),
    }
}

async fn check_state_machine(aws: &aws_config::SdkConfig, arn: &str) -> Check {
    let sfn = aws_sdk_sfn::Client::new(aws);
    match sfn
        .describe_state_machine()
        .state_machine_arn(arn)
        .send()
        .await
    {
        Ok(out) => match out.status() {
            Some(aws_sdk_sfn::types::StateMachineStatus::Active) | None => Check::passed(
                "state machine",
                format!("{} ({}) is active", out.name(), out.r#type()),
            ),
            Some(status) => Check::failed(
                "state machine",
                format!("{arn} is {}", status.as_str()),
                "deploy the stack again (sam deploy)",
            ),
        },
        Err(e) => Check::failed(
            "state machine",
            format!("{arn}: {}", aws_error(&e)),
            "check STATE_MACHINE_ARN against the stack's StateMachineArn output, and states:DescribeStateMachine on it",
        ),
    }
}

async fn check_secret(aws: &aws_config::SdkConfig, id: &str) -> Check {
    let secrets = aws_sdk_secretsmanager::Client::new(aws);
    match secrets.get_secret_value().secret_id(id).send().await {
        Ok(out) if out.secret_string().is_some_and(|s| !s.trim().is_empty()) => {
            Check::passed("secret", format!("{id} can be read (value not shown)"))
        }
        Ok(_) => Check::failed(
            "secret",
            format!("{id} has no text value"),
            "store the key as the secret's plain text value",
        ),
        Err(e) => Check::failed(
            "secret",
            format!("{id}: {}", aws_error(&e)),
            "check the ARN, secretsmanager:GetSecretValue on it, and kms:Decrypt on its key when it is customer-managed (SecretsKmsKeyArn)",
        ),
    }
}

fn aws_error<E>(e: &aws_sdk_sfn::error::SdkError<E>) -> String
where
    E: aws_sdk_sfn::error::ProvideErrorMetadata,
{
    match e.as_service_error() {
        Some(service) => format!(
            "{}: {}",
            service.code().unwrap_or("error"),
            service.message().unwrap_or_default()
        ),
        None => format!("{e}"),
    }
}

/// OTEL_EXPORTER_OTLP_HEADERS: `name=value` pairs, comma-separated, values URL-encoded.
fn otlp_headers() -> Vec<(String, String)> {
    std::env::var("OTEL_EXPORTER_OTLP_HEADERS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().replace("%20", " ")))
        .collect()
}

/// An empty export (a valid, empty protobuf request): accepted means spans will be.
async fn check_traces(endpoint: &str) -> Check {
    let fix = "check OTEL_EXPORTER_OTLP_ENDPOINT (the receiver's OTLP/HTTP base URL, e.g. http://localhost:4318) and OTEL_EXPORTER_OTLP_HEADERS";
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build();
    let sent = match client {
        Ok(client) => {
            let mut post = client
                .post(endpoint)
                .header("content-type", "application/x-protobuf")
                .body(Vec::new());
            for (name, value) in otlp_headers() {
                post = post.header(name, value);
            }
            post.send().await
        }
        Err(e) => return Check::failed("traces", e.to_string(), fix),
    };
    match sent {
        Ok(r) if r.status().is_success() => {
            Check::passed("traces", format!("{endpoint} accepts OTLP exports"))
        }
        Ok(r) => Check::failed("traces", format!("{endpoint} answered {}", r.status()), fix),
        Err(e) => Check::failed("traces", format!("{endpoint}: {e}"), fix),
    }
}
