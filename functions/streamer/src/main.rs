//! The streamer function: the same HTTP/SSE API as `orchestrator serve`, through a function URL
//! in RESPONSE_STREAM mode. Runs are Step Functions executions. See functions/README.md.

use std::sync::Arc;
use std::time::Duration;

use orchestrator_api::{ApiConfig, router};
use orchestrator_aws::bootstrap::{Aws, functions_from_env, required, seconds};
use orchestrator_aws::{AwsApprovalWaits, SfnControl};
use orchestrator_llm::{LlmConfig, Provider};
use orchestrator_runner::RunnerConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orchestrator_aws::telemetry::init_logging();
    let aws = Aws::from_env().await?;
    let functions = functions_from_env()?;
    // Only to tell each run which model runs it; the key stays with the functions that call it.
    let llm = LlmConfig::from_env()?;
    let (notices, messages) = match llm.provider {
        Provider::Offline => (
            vec!["Using the built-in offline model: deterministic sample output, not a real LLM. Set the ModelProvider parameter to use one.".to_owned()],
            Vec::new(),
        ),
        provider => (Vec::new(), vec![format!("Model: {}/{}", provider.as_str(), llm.model)]),
    };
    let transitions = aws.transitions(
        &functions,
        RunnerConfig {
            notices,
            messages,
            ..RunnerConfig::default()
        },
    );
    let sfn = aws.sfn();
    let control = SfnControl {
        transitions: transitions.clone(),
        sfn: sfn.clone(),
        state_machine_arn: required("STATE_MACHINE_ARN")?,
        waits: Arc::new(AwsApprovalWaits {
            store: aws.store.clone(),
            sfn,
        }),
        delivery: aws.delivery(),
    };
    let config = ApiConfig {
        api_key: aws.api_key().await?,
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
        ..ApiConfig::default()
    };
    let app = router(Arc::new(control), transitions.store().clone(), config);
    lambda_http::run_with_streaming_response(app)
        .await
        .map_err(|e| anyhow::anyhow!(e))
}
