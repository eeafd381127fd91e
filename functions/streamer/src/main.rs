//! The streamer function: the same HTTP/SSE API as `orchestrator serve`, through a function URL
//! in RESPONSE_STREAM mode. Runs are Step Functions executions. See functions/README.md.

use std::sync::Arc;

use orchestrator_api::router;
use orchestrator_aws::bootstrap::{Aws, functions_from_env};
use orchestrator_llm::{LlmConfig, Provider};
use orchestrator_runner::RunnerConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orchestrator_aws::telemetry::init("streamer")?;
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
            max_runs_in_progress: orchestrator_runner::max_runs_in_progress_from_env()?,
            ..RunnerConfig::default()
        },
    );
    let control = aws.sfn_control(transitions.clone(), aws.delivery())?;
    let config = aws.api_config().await?;
    let app = router(Arc::new(control), transitions.store().clone(), config);
    let app = orchestrator_aws::telemetry::flushing(app);
    lambda_http::run_with_streaming_response(app)
        .await
        .map_err(|e| anyhow::anyhow!(e))
}
