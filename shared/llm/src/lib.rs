//! Model port adapters: the built-in Offline model, any OpenAI-compatible chat completions
//! endpoint, and Amazon Bedrock. Provider wire types stay private to their module; the rest of
//! the workspace sees only the Model port of `orchestrator-core`.

pub mod bedrock;
mod clients;
pub mod config;
pub mod offline;
pub mod openai;
mod schema;
pub mod telemetry;

use std::sync::Arc;

use orchestrator_core::ports::Model;

pub use bedrock::{BedrockBuildError, BedrockModel};
pub use config::{ApiKey, ConfigError, LlmConfig, Provider, Resilience};
pub use offline::OfflineModel;
pub use openai::{OpenAiBuildError, OpenAiModel};
pub use telemetry::Traced;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    OpenAi(#[from] OpenAiBuildError),
    #[error(transparent)]
    Bedrock(#[from] BedrockBuildError),
}

/// The model the configuration names, built once at start-up, its calls traced. Async because
/// Bedrock loads AWS credentials and region.
pub async fn build_model(config: &LlmConfig) -> Result<Arc<dyn Model>, BuildError> {
    Ok(match config.provider {
        Provider::Offline => Arc::new(Traced::new(OfflineModel::new(config.offline_chunk_delay))),
        Provider::OpenAi => Arc::new(Traced::new(OpenAiModel::new(
            &config.openai_base_url,
            config.openai_api_key.clone(),
            config.model.clone(),
            config.resilience.clone(),
        )?)),
        Provider::Bedrock => Arc::new(Traced::new(BedrockModel::from_config(config).await?)),
    })
}
