//! The planner function: plans (and replans) the run named by its input. See functions/README.md.

use orchestrator_agents::{Planner, Prompts};
use orchestrator_aws::bootstrap::{Aws, functions_from_env};
use orchestrator_aws::handlers::PlannerFunction;
use orchestrator_runner::RunnerConfig;
use std::sync::Arc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orchestrator_aws::telemetry::init("planner")?;
    let aws = Aws::from_env().await?;
    let functions = functions_from_env()?;
    let model = aws.model().await?;
    let planner = Planner::with_prompts(model, Arc::new(Prompts::builtin()));
    let function = PlannerFunction {
        transitions: aws.transitions(&functions, RunnerConfig::default()),
        planner,
        functions,
        segments: aws.segment_guard()?,
    };
    let function = &function;
    orchestrator_aws::bootstrap::serve(|payload| function.handle(payload))
        .await
        .map_err(|e| anyhow::anyhow!(e))
}
