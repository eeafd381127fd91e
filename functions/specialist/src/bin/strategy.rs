//! The strategy specialist function. See functions/README.md.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    fn_specialist::serve(orchestrator_core::types::STRATEGY_CAPABILITY).await
}
