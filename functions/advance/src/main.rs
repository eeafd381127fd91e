//! The advance function: applies step outcomes, answers and timeouts to the stored run through
//! the engine, and names the next route. See functions/README.md.

use std::sync::Arc;

use orchestrator_aws::bootstrap::{Aws, functions_from_env};
use orchestrator_aws::handlers::AdvanceFunction;
use orchestrator_runner::RunnerConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orchestrator_aws::telemetry::init("advance")?;
    let aws = Aws::from_env().await?;
    let functions = functions_from_env()?;
    let function = AdvanceFunction {
        transitions: aws.transitions(&functions, RunnerConfig::default()),
        waits: Arc::new(aws.approval_waits()),
        delivery: aws.delivery(),
        segments: aws.segment_guard()?,
        starts: Arc::new(aws.sfn()),
        deadlines: aws.deadlines(),
        functions,
    };
    let function = &function;
    orchestrator_aws::bootstrap::serve(|payload| function.handle(payload))
        .await
        .map_err(|e| anyhow::anyhow!(e))
}
