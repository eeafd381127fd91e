//! `mock-llm`: the benchmarks' OpenAI-compatible server (see `orchestrator_bench::mock`).
//!
//! mock-llm [--addr 127.0.0.1:0] [--ttft-ms 200] [--chunk-ms 5] [--throttle-first ROLE[:N]]...
//! Prints `http://HOST:PORT/v1` (the OpenAI base URL) as the first and only line of stdout once
//! it listens, so a script can `read` it: `mock-llm ... | { read -r base; ...; }` or from a file.
//!
//! `--throttle-first qa:2` answers the first 2 qa requests with HTTP 429 (`retry-after: 0`, an
//! OpenAI-style `rate_limit_exceeded` body), then qa behaves normally. Repeatable, or a comma
//! list (`--throttle-first planner,qa:3`); N defaults to 1. Roles: planner, strategy,
//! generation, qa, chat.

use std::io::Write;
use std::time::Duration;

use axum::serve::ListenerExt;
use clap::Parser;
use orchestrator_bench::mock::{MockConfig, Throttle, router};

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
    /// ROLE[:N]: the first N (default 1) requests of ROLE answer 429; repeatable or comma list.
    #[arg(long, value_name = "ROLE[:N]")]
    throttle_first: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut throttle = Throttle::default();
    for spec in &args.throttle_first {
        throttle = throttle
            .add_spec(spec)
            .map_err(|e| anyhow::anyhow!("--throttle-first {spec}: {e}"))?;
    }
    // One worker; a timed reply waits on the thread of the task that writes it
    // (`block_in_place` hands the worker to another thread meanwhile), so one thread per
    // waiting reply, as many as the load has.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .max_blocking_threads(2048)
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.addr).await?;
        let addr = listener.local_addr()?;
        let config = MockConfig {
            ttft: Duration::from_millis(args.ttft_ms),
            chunk_delay: Duration::from_secs_f64(args.chunk_ms.max(0.0) / 1000.0),
            throttle,
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
