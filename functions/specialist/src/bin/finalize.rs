//! The finalize specialist function. See functions/README.md.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    fn_specialist::serve("finalize").await
}
