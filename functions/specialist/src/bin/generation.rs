//! The generation specialist function. See functions/README.md.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    fn_specialist::serve(orchestrator_core::types::GENERATION_CAPABILITY).await
}
