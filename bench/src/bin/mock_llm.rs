//! `mock-llm`: the benchmarks' OpenAI-compatible server (see `orchestrator_bench::mock`).
//!
//! mock-llm [--addr 127.0.0.1:0] [--ttft-ms 200] [--chunk-ms 5]
//! Prints `http://HOST:PORT/v1` on its first line of stdout once it listens.

use std::io::Write;
use std::time::Duration;

use axum::serve::ListenerExt;
use clap::Parser;
use orchestrator_bench::mock::{MockConfig, router};

#[derive(Parser)]
#[command(
    name = "mock-llm",
    about = "A scripted, scheduled OpenAI-compatible chat completions server"
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: String,
    /// Time to first token, ms.
    #[arg(long, default_value_t = 200)]
    ttft_ms: u64,
    /// Delay between chunks (4 characters each), ms; fractions allowed.
    #[arg(long, default_value_t = 5.0)]
    chunk_ms: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(2048)
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.addr).await?;
        let addr = listener.local_addr()?;
        let config = MockConfig {
            ttft: Duration::from_millis(args.ttft_ms),
            chunk_delay: Duration::from_secs_f64(args.chunk_ms.max(0.0) / 1000.0),
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "http://{addr}/v1")?;
        out.flush()?;
        drop(out);
        // Without TCP_NODELAY, Nagle holds each small chunk until the client ACKs the last one
        // (delayed ACK: up to 40 ms), which would be the mock's latency, not the client's.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, router(config)).await?;
        Ok(())
    })
}
