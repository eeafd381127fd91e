//! `bench-driver`: runs the reference workload through the real engine, the real
//! OpenAI-compatible adapter and the real SQLite store, and measures it. See bench/README.md.
//!
//! - `bench-driver load --base-url URL --runs N --concurrency C`: one measurement, in this
//!   process; prints one JSON object.
//! - `bench-driver dynamo --endpoint URL --base-url URL`: one reference run on DynamoDbStore with
//!   a capacity meter; prints one JSON object.
//! - `bench-driver all --orchestrator PATH --out FILE [--aws-figures FILE]`: every
//!   measurement, each in its own process (so peak RSS is clean), then the table, the cost
//!   model (Step Functions and Lambda from the emulated AWS run's figures when there are some)
//!   and the JSON file.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::{Parser, Subcommand};
use orchestrator_bench::cost::{self, LambdaAssumptions, RunShape};
use orchestrator_bench::counting::CountingStore;
use orchestrator_bench::ddb::CapacityMeter;
use orchestrator_bench::emulated::{self, EmulatedRun};
use orchestrator_bench::mock::MockStats;
use orchestrator_bench::rusage;
use orchestrator_bench::serve::{PathResult, Server, bare_runs, drive_runs, proc_cpu};
use orchestrator_bench::timing::TimingModel;
use orchestrator_bench::workload::{OBJECTIVE, one_run, reference_calls, runner_on, runner_with};
use orchestrator_core::ports::Model;
use orchestrator_core::types::RunStatus;
use orchestrator_llm::{OfflineModel, OpenAiModel, Resilience, Traced};
use orchestrator_recording::RecordConfig;
use orchestrator_runner::{Runner, Store};
use orchestrator_store::{DynamoDbConfig, DynamoDbStore, SqliteStore};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(name = "bench-driver")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One load measurement in this process.
    Load {
        #[arg(long)]
        base_url: String,
        #[arg(long, default_value_t = 20)]
        runs: usize,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Scheduled model time per run, ms, for a server that is not the bench mock.
        #[arg(long)]
        scheduled_ms: Option<f64>,
        /// Wrap the store to time the first delta (costs a little CPU).
        #[arg(long)]
        first_delta: bool,
        /// `openai` (the adapter against --base-url) or `offline` (the built-in model, no
        /// HTTP): to tell the adapter's cost from the engine's and the store's.
        #[arg(long, default_value = "openai")]
        model: String,
        /// `file` (SQLite in WAL mode in a temp dir) or `memory` (SQLite in memory).
        #[arg(long, default_value = "file")]
        store: String,
        /// The tokio runtime the runs are driven on: `multi` (worker threads on every core, as
        /// `orchestrator serve` runs) or `current` (one thread, as `orchestrator run` runs).
        #[arg(long, value_enum, default_value_t = Flavor::Multi)]
        runtime: Flavor,
        /// Do not record the runs' model calls (recording is on by default, as in the product):
        /// recording's CPU per run is the difference.
        #[arg(long)]
        no_record: bool,
    },
    /// The platform's floor: the reference run's seven model calls made back to back by a bare
    /// HTTP client (reqwest, as the OpenAI adapter uses it), with nothing around them.
    Floor {
        #[arg(long)]
        base_url: String,
        #[arg(long, default_value_t = 10)]
        runs: usize,
        #[arg(long, value_enum, default_value_t = Flavor::Multi)]
        runtime: Flavor,
    },
    /// The path users take: reference runs posted to a real `orchestrator serve` over HTTP,
    /// each stream read to `complete`; the server's CPU and peak RSS from /proc.
    ServePath {
        #[arg(long)]
        orchestrator: PathBuf,
        #[arg(long)]
        base_url: String,
        #[arg(long, default_value_t = 100)]
        runs: usize,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// The server records no model calls (ORCHESTRATOR_RECORD=off).
        #[arg(long)]
        no_record: bool,
    },
    /// The serve path's floor: the reference run's 7 calls made by a bare client, `concurrency`
    /// runs at a time; this process's CPU and peak RSS. On one thread by default, the leanest
    /// such client (`--runtime multi`: a work-stealing runtime, a worker per core).
    BareFloor {
        #[arg(long)]
        base_url: String,
        #[arg(long, default_value_t = 100)]
        runs: usize,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        #[arg(long, value_enum, default_value_t = Flavor::Current)]
        runtime: Flavor,
    },
    /// Exec of `orchestrator run --json` on the offline model to its first frame, ms: each
    /// of `n` tries, and their median.
    ExecFirst {
        #[arg(long)]
        orchestrator: PathBuf,
        #[arg(long, default_value_t = 15)]
        n: usize,
    },
    /// One reference run on DynamoDbStore with a capacity meter.
    Dynamo {
        #[arg(long)]
        endpoint: String,
        #[arg(long)]
        base_url: String,
    },
    /// The AWS cost of one reference run alone (Standard and Express): the DynamoDB run
    /// against the realistic mock, priced; what `all` prints under "AWS cost".
    Cost {
        /// The DynamoDB emulator.
        #[arg(long, env = "DYNAMODB_ENDPOINT")]
        dynamodb_endpoint: String,
        /// As for `all`.
        #[arg(long, env = "AWS_RUN_FIGURES")]
        aws_figures: Option<PathBuf>,
    },
    /// Everything; prints the table and writes the JSON.
    All {
        /// The `orchestrator` binary (for exec-to-first-frame and the idle server).
        #[arg(long)]
        orchestrator: PathBuf,
        #[arg(long, default_value = "bench/results.json")]
        out: PathBuf,
        /// An OpenAI-compatible server to use instead of spawning the mock (no overhead
        /// figures then, unless --scheduled-ms is given).
        #[arg(long)]
        base_url: Option<String>,
        #[arg(long)]
        scheduled_ms: Option<f64>,
        /// The DynamoDB emulator for the measured capacity (skipped without it).
        #[arg(long, env = "DYNAMODB_ENDPOINT")]
        dynamodb_endpoint: Option<String>,
        /// Fewer runs: a quick look rather than stable figures.
        #[arg(long)]
        quick: bool,
        /// Time to first token and per-chunk delay of the "realistic" mock, ms.
        #[arg(long, default_value_t = 200)]
        ttft_ms: u64,
        #[arg(long, default_value_t = 5.0)]
        chunk_ms: f64,
        /// The figures of the reference run on the emulated AWS stack, written by
        /// `ORCHESTRATOR_AWS_E2E=1 cargo test -p orchestrator-aws --test aws_run`: the cost
        /// model takes its state transitions, Lambda invocations and durations from them.
        /// Without it, `target/aws-run-figures.json` is read if it exists, else they are
        /// modelled.
        #[arg(long, env = "AWS_RUN_FIGURES")]
        aws_figures: Option<PathBuf>,
    },
}

/// The runtimes a measurement runs on: `orchestrator` runs every command on one thread (and
/// `serve` on one such thread per core, cli/src/main.rs); the Lambda functions steal work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Flavor {
    /// A work-stealing runtime, a worker thread per core.
    #[default]
    Multi,
    /// One thread, as every `orchestrator` command.
    Current,
}

impl Flavor {
    fn runtime(self) -> std::io::Result<tokio::runtime::Runtime> {
        match self {
            Flavor::Multi => tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build(),
            Flavor::Current => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
        }
    }

    fn arg(self) -> &'static str {
        match self {
            Flavor::Multi => "multi",
            Flavor::Current => "current",
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    orchestrator_telemetry::init(
        "bench-driver",
        orchestrator_telemetry::Logs::Terminal { default: "warn" },
    )?;
    match cli.command {
        Cmd::Load {
            base_url,
            runs,
            concurrency,
            scheduled_ms,
            first_delta,
            model,
            store,
            runtime,
            no_record,
        } => {
            let rt = runtime.runtime()?;
            let result = rt.block_on(load(
                &base_url,
                runs,
                concurrency,
                scheduled_ms,
                first_delta,
                Variant {
                    offline_model: model == "offline",
                    memory_store: store == "memory",
                    runtime,
                    record: !no_record,
                },
            ))?;
            println!("{}", serde_json::to_string(&result)?);
            Ok(())
        }
        Cmd::Floor {
            base_url,
            runs,
            runtime,
        } => {
            let result = runtime
                .runtime()?
                .block_on(floor(&base_url, runs, runtime))?;
            println!("{}", serde_json::to_string(&result)?);
            Ok(())
        }
        command @ (Cmd::ServePath { .. } | Cmd::BareFloor { .. } | Cmd::ExecFirst { .. }) => {
            serve_command(command)
        }
        Cmd::Cost {
            dynamodb_endpoint,
            aws_figures,
        } => cost_only(&dynamodb_endpoint, aws_figures),
        Cmd::Dynamo { endpoint, base_url } => dynamo_command(&endpoint, &base_url),
        Cmd::All {
            orchestrator,
            out,
            base_url,
            scheduled_ms,
            dynamodb_endpoint,
            quick,
            ttft_ms,
            chunk_ms,
            aws_figures,
        } => all(AllArgs {
            orchestrator,
            out,
            base_url,
            scheduled_ms,
            dynamodb_endpoint,
            quick,
            ttft_ms,
            chunk_ms,
            aws_figures,
        }),
    }
}

/// The serve path's commands: `serve-path`, `bare-floor`, `exec-first`.
fn serve_command(command: Cmd) -> anyhow::Result<()> {
    match command {
        Cmd::ServePath {
            orchestrator,
            base_url,
            runs,
            concurrency,
            no_record,
        } => print_json(&Flavor::Multi.runtime()?.block_on(serve_path(
            &orchestrator,
            &base_url,
            runs,
            concurrency,
            !no_record,
        ))?),
        Cmd::BareFloor {
            base_url,
            runs,
            concurrency,
            runtime,
        } => print_json(
            &runtime
                .runtime()?
                .block_on(bare_floor(&base_url, runs, concurrency))?,
        ),
        Cmd::ExecFirst { orchestrator, n } => exec_first(&orchestrator, n),
        _ => bail!("not a serve-path command"),
    }
}

/// One result as the JSON line the `all` command reads from a child.
fn print_json<T: Serialize>(result: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(result)?);
    Ok(())
}

/// `exec-first`: each try's exec to first frame, and their median.
fn exec_first(orchestrator: &Path, n: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut times = exec_to_first_frame(orchestrator, dir.path(), &[], n)?;
    let all = times.clone();
    times.sort_by(f64::total_cmp);
    print_json(&json!({ "median_ms": percentile(&times, 0.5), "all_ms": all }))
}

// ------------------------------------------------------------------------------------- load

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct LoadResult {
    runs: usize,
    concurrency: usize,
    /// The runtime the runs were driven on.
    #[serde(default)]
    runtime: Flavor,
    completed: usize,
    elapsed_s: f64,
    runs_per_s: f64,
    wall_ms_median: f64,
    wall_ms_p95: f64,
    /// Scheduled model time of one run (from the mock's counters), ms.
    scheduled_ms: Option<f64>,
    overhead_ms_median: Option<f64>,
    overhead_ms_p95: Option<f64>,
    /// Concurrency 1 only: the wall time of a run outside its model calls (the engine, the
    /// store, the agents between calls), median and p95, ms...
    #[serde(default)]
    outside_calls_ms_median: Option<f64>,
    #[serde(default)]
    outside_calls_ms_p95: Option<f64>,
    /// ...and the time inside the calls beyond the scheduled model time (the adapter, loopback
    /// and the mock server), median, ms.
    #[serde(default)]
    in_calls_excess_ms_median: Option<f64>,
    /// Process CPU (user + system) per run, over the measured runs only.
    cpu_ms_per_run: f64,
    /// Peak RSS of the process (getrusage), after setup and at the end.
    rss_setup_mb: f64,
    peak_rss_mb: f64,
    /// From a generation step's handoff `occurred` to its first delta event (median).
    first_delta_ms_median: Option<f64>,
    mock: Option<MockStats>,
    store: Option<orchestrator_bench::counting::StoreCounters>,
}

fn stats_url(base_url: &str) -> String {
    let root = base_url.trim_end_matches('/').trim_end_matches("/v1");
    format!("{root}/stats")
}

async fn mock_stats(http: &reqwest::Client, base_url: &str) -> Option<MockStats> {
    let resp = http.get(stats_url(base_url)).send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json::<MockStats>().await.ok()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// What `load` runs on, for the breakdown: the defaults are the real adapter and a file.
#[derive(Debug, Clone, Copy)]
struct Variant {
    offline_model: bool,
    memory_store: bool,
    runtime: Flavor,
    /// The model calls are recorded into the store, as the product does by default.
    record: bool,
}

async fn load(
    base_url: &str,
    runs: usize,
    concurrency: usize,
    scheduled_ms: Option<f64>,
    first_delta: bool,
    variant: Variant,
) -> anyhow::Result<LoadResult> {
    let dir = tempfile::tempdir()?;
    let sqlite: Arc<dyn Store> = if variant.memory_store {
        Arc::new(SqliteStore::open_in_memory()?)
    } else {
        Arc::new(SqliteStore::open(&dir.path().join("bench.db"))?)
    };
    let counting = first_delta.then(|| Arc::new(CountingStore::new(sqlite.clone(), false)));
    let store: Arc<dyn Store> = match &counting {
        Some(c) => c.clone(),
        None => sqlite,
    };
    // Traced as `build_model` traces it: with OTEL_EXPORTER_OTLP_ENDPOINT set, the load's runs
    // are exported, which is how tracing's cost per run is measured (bench/README.md).
    let model: Arc<dyn Model> = if variant.offline_model {
        Arc::new(Traced::new(OfflineModel::new(Duration::ZERO)))
    } else {
        Arc::new(Traced::new(OpenAiModel::new(
            base_url,
            None,
            "mock",
            Resilience::default(),
        )?))
    };
    let model = if variant.record {
        RecordConfig::default().wrap(model, store.clone())
    } else {
        model
    };
    let timing = Arc::new(TimingModel::new(model));
    let runner = runner_on(store, timing.clone());
    let http = reqwest::Client::new();

    // One warm-up run: connections, statement caches, lazy statics.
    let status = one_run(&runner).await?;
    if status != RunStatus::Completed {
        bail!("the warm-up run ended {status}, not completed: is {base_url} the bench mock?");
    }
    let setup = rusage::self_usage();
    let stats_before = mock_stats(&http, base_url).await;
    let started = Instant::now();
    let mut timed = drive(&runner, &timing, runs, concurrency).await?;
    let elapsed = started.elapsed();
    // The spans still queued are part of these runs' cost (nothing to do when not exporting).
    tokio::task::spawn_blocking(orchestrator_telemetry::flush).await?;
    let end = rusage::self_usage();
    let stats_after = mock_stats(&http, base_url).await;
    let mock = match (stats_before, stats_after) {
        (Some(b), Some(a)) => Some(a.minus(&b)),
        _ => None,
    };
    timed.walls.sort_by(f64::total_cmp);
    let scheduled = scheduled_ms.or_else(|| {
        mock.filter(|m| m.calls > 0)
            .map(|m| m.scheduled_us as f64 / 1000.0 / runs as f64)
    });
    let mut result = timed.result(runs, concurrency, scheduled);
    result.runtime = variant.runtime;
    result.elapsed_s = elapsed.as_secs_f64();
    result.runs_per_s = runs as f64 / elapsed.as_secs_f64();
    result.cpu_ms_per_run =
        (end.cpu.saturating_sub(setup.cpu)).as_secs_f64() * 1000.0 / runs as f64;
    result.rss_setup_mb = mb(setup.max_rss);
    result.peak_rss_mb = mb(end.max_rss);
    result.first_delta_ms_median = counting.as_ref().and_then(|c| first_delta_median(c));
    result.mock = mock;
    result.store = counting.map(|c| c.counters());
    Ok(result)
}

/// What the runs of a load took, one entry per run, ms.
struct Timed {
    /// Wall time of each run.
    walls: Vec<f64>,
    /// Time inside its model calls.
    in_calls: Vec<f64>,
    completed: usize,
}

/// `runs` runs, `concurrency` at a time, each timed.
async fn drive(
    runner: &Runner,
    timing: &Arc<TimingModel>,
    runs: usize,
    concurrency: usize,
) -> anyhow::Result<Timed> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let runner = runner.clone();
        let next = next.clone();
        let timing = timing.clone();
        workers.spawn(async move {
            let mut walls = Vec::new();
            let mut in_calls = Vec::new();
            let mut completed = 0;
            while next.fetch_add(1, Ordering::Relaxed) < runs {
                let t = Instant::now();
                let calls_before = timing.in_calls_us();
                if let Ok(RunStatus::Completed) = one_run(&runner).await {
                    completed += 1;
                }
                walls.push(t.elapsed().as_secs_f64() * 1000.0);
                in_calls.push((timing.in_calls_us() - calls_before) as f64 / 1000.0);
            }
            (walls, in_calls, completed)
        });
    }
    let mut timed = Timed {
        walls: Vec::with_capacity(runs),
        in_calls: Vec::with_capacity(runs),
        completed: 0,
    };
    while let Some(joined) = workers.join_next().await {
        let (w, i, c) = joined?;
        timed.walls.extend(w);
        timed.in_calls.extend(i);
        timed.completed += c;
    }
    Ok(timed)
}

impl Timed {
    /// The load's wall times and overheads (`walls` sorted); the process figures are left to
    /// the caller.
    fn result(self, runs: usize, concurrency: usize, scheduled: Option<f64>) -> LoadResult {
        let walls = &self.walls;
        // Runs overlap above concurrency 1, so their calls cannot be told apart there.
        let (outside, excess) = if concurrency <= 1 {
            let mut outside: Vec<f64> = walls
                .iter()
                .zip(&self.in_calls)
                .map(|(w, i)| w - i)
                .collect();
            outside.sort_by(f64::total_cmp);
            (Some(outside), Some(&self.in_calls))
        } else {
            (None, None)
        };
        let overheads: Option<Vec<f64>> =
            scheduled.map(|s| walls.iter().map(|w| w - s).collect::<Vec<_>>());
        LoadResult {
            runs,
            concurrency,
            completed: self.completed,
            wall_ms_median: percentile(walls, 0.5),
            wall_ms_p95: percentile(walls, 0.95),
            scheduled_ms: scheduled,
            overhead_ms_median: overheads.as_ref().map(|o| percentile(o, 0.5)),
            overhead_ms_p95: overheads.as_ref().map(|o| percentile(o, 0.95)),
            outside_calls_ms_median: outside.as_ref().map(|o| percentile(o, 0.5)),
            outside_calls_ms_p95: outside.as_ref().map(|o| percentile(o, 0.95)),
            in_calls_excess_ms_median: excess.zip(scheduled).map(|(calls, s)| {
                let mut excess: Vec<f64> = calls.iter().map(|c| c - s).collect();
                excess.sort_by(f64::total_cmp);
                percentile(&excess, 0.5)
            }),
            ..LoadResult::default()
        }
    }
}

/// From a generation step's handoff to its first delta, median, ms.
fn first_delta_median(counting: &CountingStore) -> Option<f64> {
    let mut v: Vec<f64> = counting
        .first_delta_latencies()
        .iter()
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| percentile(&v, 0.5))
}

// ------------------------------------------------------------------------------------ floor

/// What the calls alone cost over the mock's schedule, per run of seven calls.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct FloorResult {
    runs: usize,
    runtime: Flavor,
    excess_ms_median: f64,
    excess_ms_p95: f64,
    /// CPU of the whole process per run: what reading the same streams costs a bare client.
    cpu_ms_per_run: f64,
}

/// The reference run's seven calls (the very requests the engine makes) back to back, each
/// read to its last byte, with no engine, store or agent around them: the wall time over the
/// mock's scheduled time is what loopback HTTP, the mock and waking an idle machine cost,
/// below which no client can go.
async fn floor(base_url: &str, runs: usize, runtime: Flavor) -> anyhow::Result<FloorResult> {
    let http = reqwest::Client::new();
    let url = format!("{}/chat/completions", base_url.trim_end_matches('/'));
    let mut excess = Vec::with_capacity(runs);
    let mut cpu = std::time::Duration::ZERO;
    let bodies: Vec<Value> = reference_calls()
        .await?
        .iter()
        .map(|c| c.openai_body("mock"))
        .collect();
    // One warm-up run (the connection, lazy statics), not counted.
    for i in 0..=runs {
        let before = mock_stats(&http, base_url)
            .await
            .ok_or_else(|| anyhow!("{base_url} is not the bench mock (no /stats)"))?;
        let t = Instant::now();
        let cpu_before = rusage::self_usage().cpu;
        for body in &bodies {
            let resp = http
                .post(&url)
                .json(body)
                .send()
                .await?
                .error_for_status()?;
            let mut bytes = resp.bytes_stream();
            while let Some(chunk) = futures::StreamExt::next(&mut bytes).await {
                chunk?;
            }
        }
        let wall = t.elapsed().as_secs_f64() * 1000.0;
        let cpu_run = rusage::self_usage().cpu.saturating_sub(cpu_before);
        let after = mock_stats(&http, base_url)
            .await
            .ok_or_else(|| anyhow!("the mock stopped answering /stats"))?;
        if i > 0 {
            excess.push(wall - (after.scheduled_us - before.scheduled_us) as f64 / 1000.0);
            cpu += cpu_run;
        }
    }
    excess.sort_by(f64::total_cmp);
    Ok(FloorResult {
        runs,
        runtime,
        excess_ms_median: percentile(&excess, 0.5),
        excess_ms_p95: percentile(&excess, 0.95),
        cpu_ms_per_run: cpu.as_secs_f64() * 1000.0 / runs.max(1) as f64,
    })
}

fn floor_in_child(base_url: &str, runs: usize, runtime: Flavor) -> anyhow::Result<FloorResult> {
    eprintln!(
        "  floor: {runs} x the reference run's 7 calls from a bare client ({} runtime)",
        runtime.arg()
    );
    let out = Command::new(std::env::current_exe()?)
        .args(["floor", "--base-url", base_url, "--runs", &runs.to_string()])
        .args(["--runtime", runtime.arg()])
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("the floor run failed ({})", out.status);
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

// ----------------------------------------------------------------------------------- dynamo

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DynamoResult {
    status: String,
    capacity: Value,
    store: Value,
    mock: Option<MockStats>,
    table: String,
    /// WRU of each lease write on the run's items as they are at its end (the largest meta
    /// item the run had: an upper bound for a take).
    #[serde(default)]
    lease_wru: Option<LeaseWru>,
    /// What recording the run's model calls added to it.
    #[serde(default)]
    recording: Option<RecordingCost>,
}

/// The writes of the run's recorded model calls (a call over 200 KB also writes part items,
/// which are not counted here; the reference run has none).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct RecordingCost {
    /// Model calls recorded, and the bytes of their JSON.
    calls: u64,
    bytes: u64,
    items_written: u64,
    bytes_written: u64,
    wru: f64,
}

/// One reference run on `runner`, and the capacity it used.
async fn metered(
    meter: &CapacityMeter,
    runner: &Runner,
) -> anyhow::Result<(RunStatus, orchestrator_bench::ddb::CapacityCounters)> {
    let before = meter.counters();
    let status = one_run(runner).await?;
    let mut capacity = meter.counters();
    for (op, n) in &before.requests {
        if let Some(v) = capacity.requests.get_mut(op) {
            *v -= n;
        }
    }
    capacity.requests.retain(|_, n| *n > 0);
    capacity.wru -= before.wru;
    capacity.rru -= before.rru;
    capacity.items_written -= before.items_written;
    capacity.bytes_written -= before.bytes_written;
    capacity.items_read -= before.items_read;
    capacity.bytes_read -= before.bytes_read;
    capacity.call_items -= before.call_items;
    capacity.call_bytes -= before.call_bytes;
    capacity.call_wru -= before.call_wru;
    Ok((status, capacity))
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct LeaseWru {
    take: f64,
    renew: f64,
    release: f64,
}

/// What run leases cost on DynamoDB: per run (a take and a release; a renewal per third of a
/// lease time the run lasts) and per minute a run is driven (15 s leases: 12 renewals).
fn print_lease_cost(l: LeaseWru, writes: Option<u64>) {
    let usd = cost::price("dynamodb_wru") * 1000.0;
    let per_run = l.take + l.release;
    let per_minute = 60.0 / 5.0 * l.renew;
    println!(
        "  leases (included above; lease writes this run: {}): take {:.0} WRU, renew {:.0}, release {:.0}: {per_run:.0} WRU per run (${:.4} per 1000 runs) plus {per_minute:.0} WRU per run-minute driven by `serve` (${:.4} per 1000 run-minutes); on Step Functions one take per run",
        writes.map_or("?".to_owned(), |w| w.to_string()),
        l.take,
        l.renew,
        l.release,
        per_run * usd,
        per_minute * usd,
    );
}

/// Measures one take, renewal and release of the run's lease, each on its own.
async fn lease_wru(ddb: &DynamoDbStore, meter: &CapacityMeter) -> anyhow::Result<LeaseWru> {
    use orchestrator_core::ports::{Claim, RunStore};
    let run = ddb.list_runs(1, None).await?;
    let run_id = &run.first().context("the run is listed")?.run_id;
    let wru = || meter.counters().wru;
    let start = wru();
    let Claim::Acquired(lease) = ddb.acquire_lease(run_id, "bench", 15_000, None).await? else {
        bail!("the finished run's lease is held");
    };
    let took = wru();
    let lease = ddb.renew_lease(&lease, 15_000).await?;
    let renewed = wru();
    ddb.release_lease(&lease).await?;
    Ok(LeaseWru {
        take: took - start,
        renew: renewed - took,
        release: wru() - renewed,
    })
}

async fn dynamo(endpoint: &str, base_url: &str) -> anyhow::Result<DynamoResult> {
    let meter = CapacityMeter::default();
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "bench", "bench", None, None, "bench",
        ))
        .load()
        .await;
    let conf = aws_sdk_dynamodb::config::Builder::from(&sdk)
        .interceptor(meter.clone())
        .build();
    let client = aws_sdk_dynamodb::Client::from_conf(conf);
    let table = format!("bench-{}", std::process::id());
    let mut config = DynamoDbConfig::new(table.clone());
    config.endpoint_url = Some(endpoint.to_owned());
    let ddb = DynamoDbStore::new(client, &config);
    ddb.create_table().await?;
    let counting = Arc::new(CountingStore::new(Arc::new(ddb.clone()), true));
    let model: Arc<dyn Model> = Arc::new(OpenAiModel::new(
        base_url,
        None,
        "mock",
        Resilience::default(),
    )?);
    // The run as the product makes it: its model calls recorded in the table.
    let recorded = RecordConfig::default().wrap(model, counting.clone());
    let http = reqwest::Client::new();
    let before = mock_stats(&http, base_url).await;
    // Batched as the functions batch on DynamoDB.
    let config = orchestrator_runner::RunnerConfig::default().with_billed_writes();
    let runner = runner_with(counting.clone(), recorded, config);
    let (status, capacity) = metered(&meter, &runner).await?;
    let after = mock_stats(&http, base_url).await;
    let calls = counting.counters();
    let recording = RecordingCost {
        calls: calls.call_records,
        bytes: calls.call_bytes,
        items_written: capacity.call_items,
        bytes_written: capacity.call_bytes,
        wru: capacity.call_wru,
    };
    let lease_wru = Some(lease_wru(&ddb, &meter).await?);
    Ok(DynamoResult {
        lease_wru,
        status: status.to_string(),
        capacity: serde_json::to_value(capacity)?,
        store: serde_json::to_value(calls)?,
        recording: Some(recording),
        mock: match (before, after) {
            (Some(b), Some(a)) => Some(a.minus(&b)),
            _ => None,
        },
        table,
    })
}

// ------------------------------------------------------------------------------ serve path

/// A client for `concurrency` streams at once, kept open between runs.
fn lean_client(concurrency: usize) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency.max(1))
        .tcp_nodelay(true)
        .build()
}

/// What the measured runs took, as a [`PathResult`].
struct Measured {
    runs: usize,
    concurrency: usize,
    walls: Vec<Duration>,
    elapsed: Duration,
    cpu: Duration,
    client_cpu: Duration,
    scheduled_us: u64,
    peak_rss: u64,
}

impl Measured {
    fn result(self) -> PathResult {
        let per_run = |d: Duration| d.as_secs_f64() * 1000.0 / self.runs.max(1) as f64;
        let scheduled_ms = self.scheduled_us as f64 / 1000.0 / self.runs.max(1) as f64;
        let mut walls: Vec<f64> = self
            .walls
            .iter()
            .map(|w| w.as_secs_f64() * 1000.0)
            .collect();
        walls.sort_by(f64::total_cmp);
        PathResult {
            runs: self.runs,
            concurrency: self.concurrency,
            cpu_ms_per_run: per_run(self.cpu),
            client_cpu_ms_per_run: per_run(self.client_cpu),
            runs_per_s: self.runs as f64 / self.elapsed.as_secs_f64().max(1e-9),
            wall_ms_median: percentile(&walls, 0.5),
            wall_ms_p95: percentile(&walls, 0.95),
            scheduled_ms,
            overhead_ms_median: percentile(&walls, 0.5) - scheduled_ms,
            overhead_ms_p95: percentile(&walls, 0.95) - scheduled_ms,
            peak_rss_mb: mb(self.peak_rss),
        }
    }
}

async fn serve_path(
    orchestrator: &Path,
    base_url: &str,
    runs: usize,
    concurrency: usize,
    record: bool,
) -> anyhow::Result<PathResult> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(orchestrator, dir.path(), Some(base_url), record)?;
    let http = lean_client(concurrency)?;
    // Warm-up: connections, the server's statement caches and lazy statics.
    drive_runs(&http, &server.base, OBJECTIVE, concurrency, concurrency).await?;
    let stats_before = mock_stats(&http, base_url).await;
    let (cpu_before, client_before) = (proc_cpu(server.pid())?, rusage::self_usage().cpu);
    let started = Instant::now();
    let walls = drive_runs(&http, &server.base, OBJECTIVE, runs, concurrency).await?;
    let elapsed = started.elapsed();
    let (cpu_after, client_after) = (proc_cpu(server.pid())?, rusage::self_usage().cpu);
    let stats_after = mock_stats(&http, base_url).await;
    Ok(Measured {
        runs,
        concurrency,
        walls,
        elapsed,
        cpu: cpu_after.saturating_sub(cpu_before),
        client_cpu: client_after.saturating_sub(client_before),
        scheduled_us: scheduled_between(stats_before, stats_after),
        peak_rss: rusage::proc_rss(server.pid()).map_or(0, |(_, hwm)| hwm),
    }
    .result())
}

async fn bare_floor(base_url: &str, runs: usize, concurrency: usize) -> anyhow::Result<PathResult> {
    let http = lean_client(concurrency)?;
    let bodies: Vec<Value> = reference_calls()
        .await?
        .iter()
        .map(|c| c.openai_body("mock"))
        .collect();
    bare_runs(&http, base_url, &bodies, concurrency, concurrency).await?;
    let stats_before = mock_stats(&http, base_url).await;
    let cpu_before = rusage::self_usage().cpu;
    let started = Instant::now();
    let walls = bare_runs(&http, base_url, &bodies, runs, concurrency).await?;
    let elapsed = started.elapsed();
    let cpu = rusage::self_usage().cpu.saturating_sub(cpu_before);
    let stats_after = mock_stats(&http, base_url).await;
    Ok(Measured {
        runs,
        concurrency,
        walls,
        elapsed,
        cpu,
        client_cpu: Duration::ZERO,
        scheduled_us: scheduled_between(stats_before, stats_after),
        peak_rss: rusage::self_usage().max_rss,
    }
    .result())
}

fn scheduled_between(before: Option<MockStats>, after: Option<MockStats>) -> u64 {
    match (before, after) {
        (Some(b), Some(a)) => a.scheduled_us.saturating_sub(b.scheduled_us),
        _ => 0,
    }
}

/// A `serve-path` or `bare-floor` measurement in a process of its own.
fn path_in_child(args: &[&str]) -> anyhow::Result<PathResult> {
    eprintln!("  {}", args.join(" "));
    let out = Command::new(std::env::current_exe()?)
        .args(args)
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("{} failed ({})", args.first().unwrap_or(&""), out.status);
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

// -------------------------------------------------------------------------------------- all

struct AllArgs {
    orchestrator: PathBuf,
    out: PathBuf,
    base_url: Option<String>,
    scheduled_ms: Option<f64>,
    dynamodb_endpoint: Option<String>,
    quick: bool,
    ttft_ms: u64,
    chunk_ms: f64,
    aws_figures: Option<PathBuf>,
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let dir = me
        .parent()
        .ok_or_else(|| anyhow!("no directory for {}", me.display()))?;
    Ok(dir.join(name))
}

fn spawn_mock(ttft_ms: u64, chunk_ms: f64) -> anyhow::Result<(Proc, String)> {
    let mut child = Command::new(sibling("mock-llm")?)
        .args([
            "--ttft-ms",
            &ttft_ms.to_string(),
            "--chunk-ms",
            &chunk_ms.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start mock-llm (build it with the driver)")?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("mock-llm has no stdout"))?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let url = line.trim().to_owned();
    if !url.starts_with("http") {
        bail!("mock-llm did not say where it listens");
    }
    Ok((Proc(child), url))
}

fn load_in_child(
    base_url: &str,
    runs: usize,
    concurrency: usize,
    scheduled_ms: Option<f64>,
    first_delta: bool,
    runtime: Flavor,
    record: bool,
) -> anyhow::Result<LoadResult> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args([
        "load",
        "--base-url",
        base_url,
        "--runs",
        &runs.to_string(),
        "--concurrency",
        &concurrency.to_string(),
        "--runtime",
        runtime.arg(),
    ]);
    if let Some(s) = scheduled_ms {
        cmd.args(["--scheduled-ms", &s.to_string()]);
    }
    if first_delta {
        cmd.arg("--first-delta");
    }
    if !record {
        cmd.arg("--no-record");
    }
    eprintln!(
        "  load: {runs} runs at concurrency {concurrency} against {base_url} ({} runtime{})",
        runtime.arg(),
        if record {
            ""
        } else {
            ", model calls not recorded"
        }
    );
    let out = cmd.stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        bail!("the load run failed ({})", out.status);
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Exec of `orchestrator run --json` to its first `id:` line, ms (median of `n`).
fn exec_to_first_frame(
    orchestrator: &Path,
    db_dir: &Path,
    env: &[(&str, &str)],
    n: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut times = Vec::new();
    for i in 0..n {
        let db = db_dir.join(format!("exec-{i}.db"));
        let t = Instant::now();
        let mut cmd = Command::new(orchestrator);
        cmd.args(["run", "--json", OBJECTIVE, "--db"])
            .arg(&db)
            .env_remove("MODEL_PROVIDER")
            .env("ORCHESTRATOR_OFFLINE_CHUNK_MS", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let mut first = None;
        while reader.read_line(&mut line)? > 0 {
            if line.starts_with("id:") {
                first = Some(t.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            line.clear();
        }
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest)?;
        child.wait()?;
        times.push(first.ok_or_else(|| anyhow!("orchestrator run printed no frame"))?);
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// RSS of an idle `orchestrator serve`, MB (current, peak).
fn idle_server(orchestrator: &Path, db_dir: &Path) -> anyhow::Result<(f64, f64)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(orchestrator)
        .args(["serve", "--addr", &addr, "--db"])
        .arg(db_dir.join("serve.db"))
        .env_remove("MODEL_PROVIDER")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = child.id();
    let _guard = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
            use std::io::Write;
            s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")?;
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            if buf.starts_with("HTTP/1.1 200") {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("orchestrator serve did not answer /healthz");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (rss, hwm) = rusage::proc_rss(pid).ok_or_else(|| anyhow!("no /proc/{pid}/status"))?;
    Ok((mb(rss), mb(hwm)))
}

fn dynamo_in_child(endpoint: &str, base_url: &str) -> anyhow::Result<DynamoResult> {
    eprintln!("  dynamodb: one reference run on DynamoDbStore at {endpoint}");
    let out = Command::new(std::env::current_exe()?)
        .args(["dynamo", "--endpoint", endpoint, "--base-url", base_url])
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("the DynamoDB run failed ({})", out.status);
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.digits$}"))
}

/// `bench-driver dynamo`: one reference run on DynamoDB, its figures as JSON.
fn dynamo_command(endpoint: &str, base_url: &str) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(dynamo(endpoint, base_url))?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

/// `bench-driver cost`: the reference run on DynamoDB against the realistic mock, priced.
fn cost_only(endpoint: &str, aws_figures: Option<PathBuf>) -> anyhow::Result<()> {
    let figures_path = aws_figures
        .clone()
        .unwrap_or_else(|| PathBuf::from(emulated::DEFAULT_PATH));
    let figures = EmulatedRun::find(aws_figures.as_deref(), &figures_path)?;
    let (_mock, url) = spawn_mock(200, 5.0)?;
    let d = dynamo_in_child(endpoint, &url)?;
    let c = cost_of(&d, figures.as_ref());
    print_cost(&d, &c, figures.as_ref(), &figures_path);
    Ok(())
}

fn all(args: AllArgs) -> anyhow::Result<()> {
    // The emulated run's figures first: a bad file fails now, not after the measurements.
    let figures_path = args
        .aws_figures
        .clone()
        .unwrap_or_else(|| PathBuf::from(emulated::DEFAULT_PATH));
    let figures = EmulatedRun::find(args.aws_figures.as_deref(), &figures_path)?;
    if figures.is_some() {
        eprintln!(
            "AWS run figures: {} (Step Functions and Lambda measured on the emulated stack)",
            figures_path.display()
        );
    }
    let m = measure(&args)?;
    print_table(&args, &m);
    let cost = m.dynamo.as_ref().map(|d| cost_of(d, figures.as_ref()));
    match (&m.dynamo, &cost) {
        (Some(d), Some(c)) => print_cost(d, c, figures.as_ref(), &figures_path),
        _ => {
            println!();
            println!(
                "AWS cost: not computed (it needs the DynamoDB run: --dynamodb-endpoint or DYNAMODB_ENDPOINT)"
            );
        }
    }
    let results = json!({
        "profile": m.profile,
        "mock": {"ttft_ms": args.ttft_ms, "chunk_ms": args.chunk_ms, "external_base_url": args.base_url},
        "targets": m.targets(&args),
        "load": {
            "zero_latency": [m.cpu, m.cpu_run, m.zero50, m.zero500],
            "scheduled_latency": [m.real1, m.real1_run, m.real50, m.real500],
        },
        "serve_path": m.serve,
        "dynamodb": m.dynamo,
        "recording": {
            "cpu_ms_per_run": m.cpu.cpu_ms_per_run,
            "cpu_ms_per_run_unrecorded": m.cpu_unrecorded.cpu_ms_per_run,
            "dynamodb": m.dynamo.as_ref().and_then(|d| d.recording),
        },
        "cost": cost,
        "aws_run_figures": figures.as_ref().map(|f| json!({"path": figures_path, "figures": f})),
        "prices": cost::PRICES,
    });
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&results)?)?;
    println!();
    println!("wrote {}", args.out.display());
    Ok(())
}

/// Everything `all` measures: the loads (each in its own process), the floors, exec to first
/// frame, the idle server and the DynamoDB run.
struct Measurements {
    profile: String,
    /// Zero model latency: one run at a time on `serve`'s runtime and on `run`'s, then 50 and
    /// 500 at once.
    cpu: LoadResult,
    cpu_run: LoadResult,
    /// `cpu` again with the model calls not recorded.
    cpu_unrecorded: LoadResult,
    zero50: LoadResult,
    zero500: LoadResult,
    /// Scheduled latency, in the same order.
    real1: LoadResult,
    real1_run: LoadResult,
    real50: LoadResult,
    real500: LoadResult,
    floor_multi: FloorResult,
    floor_run: FloorResult,
    startup: Startup,
    dynamo: Option<DynamoResult>,
    serve: ServePaths,
}

/// The serve path and its floor, at concurrency 1 and 50, at zero latency and at the
/// realistic mock's: `[serve at 1, serve at 50, floor at 1, floor at 50]` each.
#[derive(Debug, Clone, Serialize)]
struct ServePaths {
    zero_latency: [PathResult; 4],
    scheduled_latency: [PathResult; 4],
}

impl ServePaths {
    fn measure(args: &AllArgs, zero_url: &str, real_url: &str) -> anyhow::Result<Self> {
        let scale = if args.quick { 4 } else { 1 };
        let orchestrator = args.orchestrator.to_string_lossy().into_owned();
        let four = |url: &str, one: usize, fifty: usize| -> anyhow::Result<[PathResult; 4]> {
            let serve = |runs: usize, conc: &str| {
                path_in_child(&[
                    "serve-path",
                    "--orchestrator",
                    &orchestrator,
                    "--base-url",
                    url,
                    "--runs",
                    &runs.to_string(),
                    "--concurrency",
                    conc,
                ])
            };
            let floor = |runs: usize, conc: &str| {
                path_in_child(&[
                    "bare-floor",
                    "--base-url",
                    url,
                    "--runs",
                    &runs.to_string(),
                    "--concurrency",
                    conc,
                ])
            };
            Ok([
                serve(one, "1")?,
                serve(fifty, "50")?,
                floor(one, "1")?,
                floor(fifty, "50")?,
            ])
        };
        let realistic_one = if args.quick { 5 } else { 12 };
        Ok(Self {
            zero_latency: four(zero_url, 400 / scale, 1000 / scale)?,
            scheduled_latency: four(real_url, realistic_one, 100 / scale)?,
        })
    }
}

/// What starting the binary costs: exec to first frame (offline model and mock), ms, and the
/// idle server's RSS, MB.
struct Startup {
    exec_offline: Vec<f64>,
    exec_mock: Vec<f64>,
    idle_rss: f64,
    idle_hwm: f64,
}

fn measure(args: &AllArgs) -> anyhow::Result<Measurements> {
    let (scale, realistic_one) = if args.quick { (4, 3) } else { (1, 10) };
    let profile = std::env::current_exe()?
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    eprintln!("orchestrator benchmarks ({profile} build)");

    // The servers: zero latency (CPU and capacity) and scheduled latency (overhead, memory).
    let (zero_url, real_url, _mocks) = match &args.base_url {
        Some(url) => (url.clone(), url.clone(), Vec::new()),
        None => {
            let (m0, u0) = spawn_mock(0, 0.0)?;
            let (m1, u1) = spawn_mock(args.ttft_ms, args.chunk_ms)?;
            (u0, u1, vec![m0, m1])
        }
    };
    let sched = args.scheduled_ms;

    // `orchestrator serve`'s runtime for everything; one run alone also on the runtime of
    // `orchestrator run`.
    let multi = Flavor::Multi;
    let cpu = load_in_child(&zero_url, 400 / scale, 1, sched, false, multi, true)?;
    let cpu_run = load_in_child(
        &zero_url,
        400 / scale,
        1,
        sched,
        false,
        Flavor::Current,
        true,
    )?;
    // The same without recording the model calls: what recording costs per run.
    let cpu_unrecorded = load_in_child(&zero_url, 400 / scale, 1, sched, false, multi, false)?;
    let zero50 = load_in_child(&zero_url, 1000 / scale, 50, sched, false, multi, true)?;
    let zero500 = load_in_child(&zero_url, 2000 / scale, 500, sched, false, multi, true)?;
    let real1 = load_in_child(&real_url, realistic_one, 1, sched, true, multi, true)?;
    let real1_run = load_in_child(
        &real_url,
        realistic_one,
        1,
        sched,
        true,
        Flavor::Current,
        true,
    )?;
    let floor_multi = floor_in_child(&real_url, realistic_one, multi)?;
    let floor_run = floor_in_child(&real_url, realistic_one, Flavor::Current)?;
    let real50 = load_in_child(&real_url, 100 / scale, 50, sched, false, multi, true)?;
    let real500 = load_in_child(&real_url, 1000 / scale, 500, sched, false, multi, true)?;
    let startup = startup(&args.orchestrator, &real_url, args.quick)?;
    let serve = ServePaths::measure(args, &zero_url, &real_url)?;
    let dynamo = match &args.dynamodb_endpoint {
        Some(endpoint) => Some(dynamo_in_child(endpoint, &real_url)?),
        None => {
            eprintln!("  dynamodb: skipped (no --dynamodb-endpoint / DYNAMODB_ENDPOINT)");
            None
        }
    };
    Ok(Measurements {
        profile,
        cpu,
        cpu_run,
        cpu_unrecorded,
        zero50,
        zero500,
        real1,
        real1_run,
        real50,
        real500,
        floor_multi,
        floor_run,
        startup,
        dynamo,
        serve,
    })
}

fn startup(orchestrator: &Path, mock_url: &str, quick: bool) -> anyhow::Result<Startup> {
    eprintln!("  exec to first frame, idle server");
    let tmp = tempfile::tempdir()?;
    let n_exec = if quick { 5 } else { 15 };
    let exec_offline = exec_to_first_frame(orchestrator, tmp.path(), &[], n_exec)?;
    let model_env = [
        ("MODEL_PROVIDER", "openai"),
        ("MODEL_ID", "mock"),
        ("OPENAI_BASE_URL", mock_url),
    ];
    let exec_mock = exec_to_first_frame(orchestrator, tmp.path(), &model_env, n_exec)?;
    let (idle_rss, idle_hwm) = idle_server(orchestrator, tmp.path())?;
    Ok(Startup {
        exec_offline,
        exec_mock,
        idle_rss,
        idle_hwm,
    })
}

impl Measurements {
    /// The first delta after the mock's time to first token, ms.
    fn first_delta_over_ttft(&self, args: &AllArgs) -> Option<f64> {
        let ttft = args.ttft_ms as f64;
        self.real1.first_delta_ms_median.map(|d| d - ttft)
    }

    /// How late the mock's own timer was, per run of the scheduled-latency load, ms.
    fn mock_late_ms(&self) -> Option<f64> {
        self.real1
            .mock
            .map(|m| m.late_us as f64 / 1000.0 / self.real1.runs.max(1) as f64)
    }

    /// The figures with a target or a place in the README, as `results.json` has them.
    fn targets(&self, args: &AllArgs) -> Value {
        let (cpu, cpu_run, real1, real1_run) =
            (&self.cpu, &self.cpu_run, &self.real1, &self.real1_run);
        let st = &self.startup;
        json!({
            "client_cpu_ms_per_run": {"value": cpu.cpu_ms_per_run, "target": 3.0, "measured": true, "runtime": "multi"},
            "client_cpu_ms_per_run_current_thread": {"value": cpu_run.cpu_ms_per_run, "target": 3.0, "measured": true, "runtime": "current"},
            "overhead_ms_median": {"value": real1.overhead_ms_median, "target": 2.0, "measured": true, "runtime": "multi"},
            "overhead_ms_median_current_thread": {"value": real1_run.overhead_ms_median, "p95": real1_run.overhead_ms_p95, "target": 2.0, "measured": true, "runtime": "current"},
            "overhead_ms_p95": {"value": real1.overhead_ms_p95, "measured": true},
            "mock_lateness_ms_per_run": {"value": self.mock_late_ms(), "measured": true},
            "floor_ms_per_run": {"serve_runtime": self.floor_multi, "run_runtime": self.floor_run, "measured": true},
            "outside_calls_ms_median": {"value": real1.outside_calls_ms_median, "p95": real1.outside_calls_ms_p95, "measured": true},
            "in_calls_excess_ms_median": {"value": real1.in_calls_excess_ms_median, "measured": true},
            "peak_rss_mb_500_concurrent": {"value": self.real500.peak_rss_mb, "target": 60.0, "measured": true},
            "idle_server_rss_mb": {"value": st.idle_rss, "peak": st.idle_hwm, "target": 10.0, "measured": true},
            "exec_to_first_frame_ms_offline": {"median": percentile(&st.exec_offline, 0.5), "all": st.exec_offline, "target": 20.0, "measured": true},
            "exec_to_first_frame_ms_mock": {"median": percentile(&st.exec_mock, 0.5), "all": st.exec_mock, "target": 20.0, "measured": true},
            "first_delta_ms_over_ttft": {"value": self.first_delta_over_ttft(args), "measured": true},
            "serve_cpu_over_bare_client": {
                "zero_latency": self.serve.cpu_ratio(&self.serve.zero_latency),
                "scheduled_latency": self.serve.cpu_ratio(&self.serve.scheduled_latency),
                "target": 2.0, "measured": true,
            },
            "serve_wall_over_floor_ms": {"value": self.serve.wall_over_floor(), "target": 3.0, "measured": true},
            "exec_to_first_frame_ms_offline_target_5": {"median": percentile(&st.exec_offline, 0.5), "target": 5.0, "measured": true},
        })
    }
}

/// One line of the table of targets.
fn row(name: &str, value: String, target: &str) {
    println!("{name:<58} {value:>12} {target:>10}");
}

/// The measurements as `bench-driver all` prints them: the workload, the figures with their
/// targets, then one line per load.
fn print_table(args: &AllArgs, m: &Measurements) {
    println!();
    println!(
        "Reference workload: planner -> strategy -> generation -> QA (fails) -> replan -> generation -> QA (passes) -> finalize"
    );
    if let Some(mock) = &m.cpu.mock {
        let runs = m.cpu.runs as u64;
        println!(
            "  per run: {} model calls ({} streamed), {} chunks of <= 4 chars ({} streamed); build profile: {}",
            mock.calls / runs,
            mock.streamed_calls / runs,
            mock.chunks / runs,
            mock.streamed_chunks / runs,
            m.profile
        );
    }
    println!();
    println!(
        "{:<58} {:>12} {:>10}",
        "measured (real engine, OpenAiModel, SqliteStore)", "value", "target"
    );
    print_overhead_rows(args, m);
    print_breakdown_rows(args, m);
    if let Some(st) = &m.real1.store {
        print_store_rows(st, m.real1.runs);
    }
    print_startup_rows(&m.startup);
    print_serve_rows(&m.serve);
    print_loads(m);
}

impl ServePaths {
    /// Server CPU per run over the bare client's, at concurrency 1.
    fn cpu_ratio(&self, four: &[PathResult; 4]) -> f64 {
        four[0].cpu_ms_per_run / four[2].cpu_ms_per_run.max(1e-9)
    }

    /// At the realistic mock's latency, concurrency 1: the serve path's wall over the model's
    /// schedule minus the floor's.
    fn wall_over_floor(&self) -> f64 {
        let s = &self.scheduled_latency;
        s[0].overhead_ms_median - s[2].overhead_ms_median
    }
}

/// The serve path against its floor.
fn print_serve_rows(serve: &ServePaths) {
    println!();
    println!(
        "{:<44} {:>7} {:>5} {:>9} {:>10} {:>10} {:>9} {:>9}",
        "serve path (server CPU) / floor (bare client)",
        "runs",
        "conc",
        "runs/s",
        "over p50",
        "over p95",
        "CPU/run",
        "peak RSS"
    );
    for (latency, four) in [
        ("zero latency", &serve.zero_latency),
        ("ttft + 5 ms/chunk", &serve.scheduled_latency),
    ] {
        for (what, r) in ["serve", "serve", "floor", "floor"].iter().zip(four.iter()) {
            println!(
                "{:<44} {:>7} {:>5} {:>9.1} {:>8.2}ms {:>8.2}ms {:>7.2}ms {:>6.1}MiB",
                format!("{what}, {latency}"),
                r.runs,
                r.concurrency,
                r.runs_per_s,
                r.overhead_ms_median,
                r.overhead_ms_p95,
                r.cpu_ms_per_run,
                r.peak_rss_mb
            );
        }
    }
    println!(
        "  server CPU over the bare client's at concurrency 1: {:.2}x at zero latency, {:.2}x at the realistic mock's (target <= 2); wall over the floor's: {:+.2} ms (target <= 3)",
        serve.cpu_ratio(&serve.zero_latency),
        serve.cpu_ratio(&serve.scheduled_latency),
        serve.wall_over_floor()
    );
}

/// Client CPU at zero latency and the overhead over the scheduled model time.
fn print_overhead_rows(args: &AllArgs, m: &Measurements) {
    row(
        "client CPU per run, zero model latency (ms) [serve]",
        format!("{:.2}", m.cpu.cpu_ms_per_run),
        "<= 3",
    );
    row(
        "  the same, one run on the runtime of `orchestrator run`",
        format!("{:.2}", m.cpu_run.cpu_ms_per_run),
        "<= 3",
    );
    row(
        &format!(
            "overhead over scheduled model time, median (ms) [ttft {} ms, {} ms/chunk]",
            args.ttft_ms as f64, args.chunk_ms
        ),
        fmt_opt(m.real1.overhead_ms_median, 2),
        "<= 2",
    );
    row(
        "overhead over scheduled model time, p95 (ms)",
        fmt_opt(m.real1.overhead_ms_p95, 2),
        "",
    );
    row(
        "  the same, median / p95, on the runtime of `orchestrator run` (ms)",
        format!(
            "{} / {}",
            fmt_opt(m.real1_run.overhead_ms_median, 2),
            fmt_opt(m.real1_run.overhead_ms_p95, 2)
        ),
        "<= 2",
    );
}

/// Where the overhead goes: the floor of a bare client, outside and inside the calls, the
/// mock's own lateness, and the first delta.
fn print_breakdown_rows(args: &AllArgs, m: &Measurements) {
    let (real1, real1_run) = (&m.real1, &m.real1_run);
    let (floor_multi, floor_run) = (&m.floor_multi, &m.floor_run);
    row(
        "  floor: the 7 calls alone from a bare client, multi / one thread (ms)",
        format!(
            "{:.2} / {:.2}",
            floor_multi.excess_ms_median, floor_run.excess_ms_median
        ),
        "",
    );
    let above = |load: &LoadResult, floor: &FloorResult| {
        fmt_opt(
            load.overhead_ms_median.map(|o| o - floor.excess_ms_median),
            2,
        )
    };
    row(
        "  overhead above the floor, multi / one thread, median (ms)",
        format!(
            "{} / {}",
            above(real1, floor_multi),
            above(real1_run, floor_run)
        ),
        "",
    );
    row(
        "  client CPU per run at this latency, orchestrator / bare client (ms)",
        format!(
            "{:.1} / {:.1}",
            real1.cpu_ms_per_run, floor_multi.cpu_ms_per_run
        ),
        "",
    );
    row(
        "  outside the model calls (engine, store, agents), median (ms)",
        fmt_opt(real1.outside_calls_ms_median, 2),
        "",
    );
    row(
        "  inside the calls beyond schedule (adapter, loopback, mock), median (ms)",
        fmt_opt(real1.in_calls_excess_ms_median, 2),
        "",
    );
    row(
        "    of which the mock's own timer lateness, per run (ms)",
        fmt_opt(m.mock_late_ms(), 2),
        "",
    );
    row(
        "scheduled model time per run (ms)",
        fmt_opt(real1.scheduled_ms, 1),
        "",
    );
    row(
        "first delta after ttft (ms; delta batching: 50 ms / 256 B)",
        fmt_opt(m.first_delta_over_ttft(args), 1),
        "",
    );
}

/// The store's writes, counted on the scheduled-latency run (warm-up included, so per run
/// over runs + 1).
fn print_store_rows(st: &orchestrator_bench::counting::StoreCounters, runs: usize) {
    let per_run = |n: u64| n as f64 / (runs + 1) as f64;
    let writes = st.create_run
        + st.commit
        + st.commit_transition
        + st.append
        + st.put_step_result
        + st.open_step;
    let deltas = st.events.get("delta").copied().unwrap_or(0);
    row(
        "store writes per run (one SQLite transaction each)",
        format!("{:.1}", per_run(writes)),
        "",
    );
    row(
        "  of which carry events (one batch each) / events / deltas",
        format!(
            "{:.0} / {:.0} / {:.0}",
            per_run(st.event_batches),
            per_run(st.events.values().sum()),
            per_run(deltas)
        ),
        "",
    );
}

fn print_startup_rows(st: &Startup) {
    row(
        "exec -> first frame, offline model, median (ms)",
        format!("{:.1}", percentile(&st.exec_offline, 0.5)),
        "<= 20",
    );
    row(
        "exec -> first frame, OpenAI-compatible mock, median (ms)",
        format!("{:.1}", percentile(&st.exec_mock, 0.5)),
        "<= 20",
    );
    row(
        "idle `orchestrator serve` RSS (MB)",
        format!("{:.1}", st.idle_rss),
        "<= 10",
    );
}

/// One line per load: throughput, wall time, CPU and peak RSS.
fn print_loads(m: &Measurements) {
    println!();
    println!(
        "{:<26} {:>7} {:>6} {:>10} {:>11} {:>11} {:>10} {:>10}",
        "load", "runs", "conc", "runs/s", "wall p50", "wall p95", "CPU/run", "peak RSS"
    );
    for (name, r) in [
        ("zero latency", &m.cpu),
        ("zero latency, one thread", &m.cpu_run),
        ("zero latency", &m.zero50),
        ("zero latency", &m.zero500),
        ("ttft+chunks scheduled", &m.real1),
        ("ttft+chunks, one thread", &m.real1_run),
        ("ttft+chunks scheduled", &m.real50),
        ("ttft+chunks scheduled", &m.real500),
    ] {
        println!(
            "{:<26} {:>7} {:>6} {:>10.1} {:>9.1}ms {:>9.1}ms {:>8.2}ms {:>8.1}MB",
            name,
            r.runs,
            r.concurrency,
            r.runs_per_s,
            r.wall_ms_median,
            r.wall_ms_p95,
            r.cpu_ms_per_run,
            r.peak_rss_mb
        );
    }
    println!(
        "(peak RSS at 500 concurrent runs in one process, target <= 60 MB: {:.1} MB)",
        m.real500.peak_rss_mb
    );
}

/// The cost model over the DynamoDB run's shape and capacity (and the emulated AWS run's
/// figures, when there are some).
fn cost_of(d: &DynamoResult, figures: Option<&EmulatedRun>) -> cost::CostModel {
    let store = &d.store;
    let n = |k: &str| store.get(k).and_then(Value::as_u64).unwrap_or(0);
    let plan_updates = store
        .get("events")
        .and_then(|e| e.get("plan_update"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let shape = RunShape {
        planner_calls: plan_updates,
        step_invocations: n("handoffs_occurred"),
        dispatches: n("dispatch_writes"),
        model_ms: d.mock.map_or(0, |m| m.scheduled_us / 1000),
    };
    let f = |k: &str| d.capacity.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let stored = d
        .capacity
        .get("bytes_written")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    cost::model(
        shape,
        LambdaAssumptions::default(),
        figures,
        f("wru"),
        f("rru"),
        stored,
    )
}

/// What recording the model calls adds to a run on DynamoDB: writes, and dollars a month
/// (write units, and a month's storage while the records are kept).
fn print_recording_cost(r: RecordingCost, run_wru: f64) {
    let usd_writes = r.wru * cost::price("dynamodb_wru") * 1000.0;
    let gb = r.bytes_written as f64 * 1000.0 / 1e9;
    let usd_storage = gb * cost::price("dynamodb_storage_gb_month");
    println!(
        "  recording the model calls (included above): {} calls, {} bytes of JSON, {} items, {} bytes written, {:.1} WRU of the run's {:.1}; ${:.4} per 1000 runs in writes, ${:.5} per 1000 runs per month kept",
        r.calls, r.bytes, r.items_written, r.bytes_written, r.wru, run_wru, usd_writes, usd_storage
    );
}

/// What the DynamoDB run measured, what leases add, and the cost model's report.
fn print_cost(
    d: &DynamoResult,
    c: &cost::CostModel,
    figures: Option<&EmulatedRun>,
    figures_path: &Path,
) {
    let capacity = |k: &str| d.capacity.get(k).and_then(Value::as_u64).unwrap_or(0);
    let quantity = |item: &str| {
        c.lines
            .iter()
            .find(|l| l.item == item)
            .map_or(0.0, |l| l.quantity)
    };
    println!();
    println!("AWS cost of one reference run (prices: {})", c.prices_as_of);
    println!(
        "  measured on the emulator (DynamoDbStore, status {}): requests {}, items written {}, {} bytes, {:.1} WRU; items read {}, {:.1} RRU; events {}",
        d.status,
        d.capacity
            .get("requests")
            .map(Value::to_string)
            .unwrap_or_default(),
        capacity("items_written"),
        capacity("bytes_written"),
        quantity("dynamodb_wru"),
        capacity("items_read"),
        quantity("dynamodb_rru"),
        d.store
            .get("events")
            .map(Value::to_string)
            .unwrap_or_default(),
    );
    if let Some(l) = d.lease_wru {
        print_lease_cost(l, d.store.get("lease_writes").and_then(Value::as_u64));
    }
    if let Some(r) = d.recording {
        print_recording_cost(r, quantity("dynamodb_wru"));
    }
    print!("{}", c.report(figures, figures_path));
}
