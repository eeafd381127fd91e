//! One Lambda function per specialist: each binary names its capability and calls [`serve`].

use std::sync::Arc;

use orchestrator_agents::{Finalize, Prompts, Specialist, Specialists, specialists_with_prompts};
use orchestrator_aws::bootstrap::{Aws, functions_from_env};
use orchestrator_aws::handlers::SpecialistFunction;
use orchestrator_core::types::FINALIZE_CAPABILITY;
use orchestrator_runner::{RunnerConfig, StepRunner};

/// Serves the one specialist `capability` until the runtime stops.
pub async fn serve(capability: &str) -> anyhow::Result<()> {
    orchestrator_aws::telemetry::init(capability)?;
    let aws = Aws::from_env().await?;
    let functions = functions_from_env()?;
    let transitions = aws.transitions(&functions, RunnerConfig::default());
    // Finalize assembles the bundle from stored results: it needs no model.
    let specialists: Specialists = if capability == FINALIZE_CAPABILITY {
        Specialists::from([(
            capability.to_owned(),
            Arc::new(Finalize) as Arc<dyn Specialist>,
        )])
    } else {
        let model = aws.model().await?;
        specialists_with_prompts(model, Arc::new(Prompts::builtin()))
            .into_iter()
            .filter(|(name, _)| name == capability)
            .collect()
    };
    anyhow::ensure!(
        !specialists.is_empty(),
        "no specialist provides {capability:?}"
    );
    let steps = StepRunner::new(
        transitions.store().clone(),
        transitions.clock().clone(),
        specialists,
        transitions.config(),
        transitions.engine().config.max_hitl_requests,
    );
    let function = SpecialistFunction { steps, transitions };
    let function = &function;
    orchestrator_aws::bootstrap::serve(|payload| function.handle(payload))
        .await
        .map_err(|e| anyhow::anyhow!(e))
}
