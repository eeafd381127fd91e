//! The trigger function: starts runs from an SQS queue (a RunRequest per message) and from
//! EventBridge events (mapped by EVENT_MAPPING), idempotently; invalid ones go to the DLQ.
//! See README.md "Event-driven runs".

use std::sync::Arc;

use orchestrator_aws::bootstrap::{Aws, functions_from_env, mapping_from_env, required};
use orchestrator_aws::trigger::{SqsDeadLetters, TriggerFunction};
use orchestrator_runner::RunnerConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    orchestrator_aws::telemetry::init("trigger")?;
    let aws = Aws::from_env().await?;
    let functions = functions_from_env()?;
    let mapping = mapping_from_env()?;
    let config = RunnerConfig {
        max_runs_in_progress: orchestrator_runner::max_runs_in_progress_from_env()?,
        ..RunnerConfig::default()
    };
    let transitions = aws.transitions(&functions, config);
    // The trigger never cancels a run, so it has no completion of its own to send.
    let control = aws.sfn_control(transitions.clone(), None)?;
    let function = TriggerFunction {
        transitions,
        executions: Arc::new(control),
        dead_letters: Arc::new(SqsDeadLetters {
            sqs: aws.sqs(),
            queue_url: required("DLQ_URL")?,
        }),
        mapping,
    };
    let function = &function;
    orchestrator_aws::bootstrap::serve(|payload| function.handle(payload))
        .await
        .map_err(|e| anyhow::anyhow!(e))
}
