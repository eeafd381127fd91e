//! `orchestrator`: runs the multi-agent engine on one machine, with an embedded SQLite store
//! (the default) or a DynamoDB table (`--store dynamodb`).

mod config;
mod doctor;
mod eval;
mod render;
mod replay;
mod terminal;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use axum::serve::ListenerExt;
use clap::{Parser, Subcommand, ValueEnum};
use orchestrator_agents::{Planner, Prompts, specialists_with_prompts};
use orchestrator_core::ports::{Model, ModelInfo, SystemClock};
use orchestrator_core::types::{Budget, Mode, QualityGate, RunRequest, RunStatus};
use orchestrator_llm::Provider;
use orchestrator_runner::{
    Delivered, Launch, LeaseConfig, RunError, Runner, RunnerConfig, Started, Store,
};
use orchestrator_store::{DynamoDbStore, SqliteStore};
use orchestrator_telemetry::Logs;

use crate::config::{Config, StoreKind};
use crate::render::{Human, Render, Sse};

#[derive(Parser)]
#[command(
    name = "orchestrator",
    version,
    about = "A multi-agent orchestrator: a planner, specialists and a critic, streamed live"
)]
struct Cli {
    /// SQLite database file [env: ORCHESTRATOR_DB] [default: <data dir>/orchestrator/orchestrator.db]
    #[arg(long, global = true)]
    db: Option<PathBuf>,
    /// Where runs are kept: sqlite (a local file) or dynamodb (TABLE_NAME at AWS_REGION, or at
    /// AWS_ENDPOINT_URL for an emulator) [env: ORCHESTRATOR_STORE] [default: sqlite]
    #[arg(long, global = true, value_enum)]
    store: Option<StoreKind>,
    /// With --store dynamodb: create the table (index, TTL, on-demand billing) if it is missing
    #[arg(long, global = true)]
    create_table: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    App,
    Chat,
}

#[derive(Subcommand)]
enum Command {
    /// Run an objective to the end, rendering it live
    Run {
        /// What the run should achieve
        objective: Option<String>,
        /// app: plan, specialists and critic to a result; chat: one agent answers, streamed
        #[arg(long, value_enum, default_value = "app")]
        mode: ModeArg,
        /// Print the exact SSE frames instead of the rendered run
        #[arg(long)]
        json: bool,
        /// Read the whole RunRequest (camelCase JSON) from this file instead
        #[arg(long, conflicts_with = "objective")]
        request: Option<PathBuf>,
        /// QA score a draft needs, 0 to 1 [default: 0.78]
        #[arg(long)]
        threshold: Option<f64>,
        /// Revision cycles the critic may ask for, at most 5 [default: 1]
        #[arg(long)]
        max_revisions: Option<u32>,
        /// An acceptance criterion QA must report on (repeatable)
        #[arg(long = "criterion")]
        criteria: Vec<String>,
        /// With --mode chat: the agent that answers, strategy, generation or qa [default: generation]
        #[arg(long)]
        agent: Option<String>,
        /// Pause for approval before the final step (the run exits 5 until it is answered)
        #[arg(long)]
        require_approval: bool,
        /// Budget: the run ends out of budget past this many model tokens [default: no limit]
        #[arg(long)]
        max_tokens: Option<u64>,
        /// Budget: the run ends out of budget past this many seconds [default: no limit]
        #[arg(long)]
        max_seconds: Option<u64>,
        /// Budget: the run ends out of budget past this many steps run [default: no limit]
        #[arg(long)]
        max_steps: Option<u32>,
    },
    /// Continue a run whose process stopped, from its last finished step
    ///
    /// A run another live process drives is left alone: exit 3, naming that process (or, with
    /// --follow, its stream is followed to the end).
    Resume {
        /// The run to continue (`orchestrator runs` lists them)
        run_id: String,
        /// Print the exact SSE frames instead of the rendered run
        #[arg(long)]
        json: bool,
        /// When another process drives the run, follow its stream instead of exiting 3
        #[arg(long)]
        follow: bool,
    },
    /// Answer a run waiting at a checkpoint, then continue it
    Approve {
        /// The paused run
        run_id: String,
        /// The checkpoint it waits at (the run's output names it)
        checkpoint_id: String,
        /// Reject instead of approve (the run ends cancelled)
        #[arg(long)]
        reject: bool,
        /// A note kept with the answer in the run's log
        #[arg(long)]
        comment: Option<String>,
        /// Print the exact SSE frames instead of the rendered run
        #[arg(long)]
        json: bool,
    },
    /// Serve the HTTP/SSE API (and run what it starts) on this machine
    Serve {
        /// Address to listen on [env: ORCHESTRATOR_ADDR] [default: 127.0.0.1:8080]
        #[arg(long)]
        addr: Option<String>,
    },
    /// List recent runs
    Runs {
        /// How many runs to list, newest first
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Check what runs need, for real, and name the fix for what is missing: the store, the
    /// model (a few tokens), and on AWS the state machine, the secrets and the trace receiver
    ///
    /// Exit 0 when every check passed, 1 when one failed. Point it at a deployment with the
    /// stack's settings: --store dynamodb with TABLE_NAME and AWS_REGION, MODEL_PROVIDER and
    /// MODEL_ID as deployed, --state-machine-arn and --secret from the stack's outputs.
    Doctor {
        /// The state machine that drives runs on AWS (the stack's StateMachineArn output)
        /// [env: STATE_MACHINE_ARN] [default: not checked]
        #[arg(long, env = "STATE_MACHINE_ARN", hide_env = true)]
        state_machine_arn: Option<String>,
        /// A secret the deployment reads (ARN or name), e.g. OpenAiApiKeySecretArn; repeatable
        /// [default: none checked]
        #[arg(long = "secret")]
        secrets: Vec<String>,
    },
    /// Run a finished run again with no model: every model call is answered from its record,
    /// and the event log must come out identical
    ///
    /// Exit 0 when it did; 1 when a request differs from its record (a prompt or the code
    /// changed: the first such request is shown beside the recorded one) or the log differs.
    Replay {
        /// The finished run (`orchestrator runs` lists them)
        run_id: String,
        /// Replay with the prompts of this folder (planner.md, strategy.md, writer.md, qa.md,
        /// chat.md) [default: ORCHESTRATOR_PROMPTS_DIR, else the built-in prompts]
        #[arg(long)]
        prompts: Option<PathBuf>,
        /// Print one JSON object with the outcome instead
        #[arg(long)]
        json: bool,
    },
    /// Start a new run from a finished one: what ran before a step is reused from the record,
    /// and the model is called from that step on
    Fork {
        /// The finished run to fork
        run_id: String,
        /// The step to run again, and everything after it (the run's output names its steps)
        #[arg(long = "from")]
        from: String,
        /// Prompts for the new run: a folder with planner.md, strategy.md, writer.md, qa.md
        /// or chat.md [default: ORCHESTRATOR_PROMPTS_DIR, else the built-in prompts]
        #[arg(long)]
        prompts: Option<PathBuf>,
        /// The model to call from the step on [default: MODEL_ID]
        #[arg(long)]
        model: Option<String>,
        /// Its provider: offline, openai or bedrock [default: MODEL_PROVIDER]
        #[arg(long)]
        provider: Option<String>,
        /// Print the exact SSE frames instead of the rendered run
        #[arg(long)]
        json: bool,
    },
    /// Run an eval suite (YAML): each case a run whose report must meet its expectations
    ///
    /// Live with the configured model, or with --replay from each case's recorded run with no
    /// model. Prints a table; exit 0 when every case passed, 1 when one did not, 2 when the
    /// suite or a flag is not valid (then nothing runs).
    Eval {
        #[command(flatten)]
        args: eval::Args,
    },
    /// Print a run's RunReport (JSON)
    Show {
        /// The run (`orchestrator runs` lists them)
        run_id: String,
        /// Print the run's event log as SSE frames instead
        #[arg(long)]
        events: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = orchestrator_telemetry::init("orchestrator", Logs::Terminal { default: "warn" })
    {
        eprintln!("error: {e} (unset OTEL_EXPORTER_OTLP_ENDPOINT to run without traces)");
        return ExitCode::from(2);
    }
    // Every command runs on one thread with its own runtime: a run waits on the model and the
    // store almost all the time, and on one thread its hand-offs cost no cross-thread wake-ups
    // (a quarter less CPU per run, bench/README.md). `serve` starts more such threads, one per
    // core, each serving the connections it accepts (`serve_threads`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let ran = runtime.block_on(run(cli));
    // On a thread of its own: the exporter's last flush blocks until the receiver has the
    // spans, which a thread of the async runtime must not do.
    if orchestrator_telemetry::exporting() {
        let _ = std::thread::spawn(orchestrator_telemetry::shutdown).join();
    }
    match ran {
        Ok(code) => code,
        // A reader that went away (`| head`) is not an error worth a message.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", terminal::block(&format!("{e:#}")));
            ExitCode::from(2)
        }
    }
}

impl Command {
    /// Commands that only read or continue runs already stored: pointed at a database that
    /// does not exist, they say so instead of creating an empty one.
    fn reads_existing_runs(&self) -> bool {
        matches!(
            self,
            Command::Runs { .. }
                | Command::Show { .. }
                | Command::Resume { .. }
                | Command::Approve { .. }
                | Command::Replay { .. }
                | Command::Fork { .. }
                | Command::Eval {
                    args: eval::Args { replay: true, .. }
                }
        )
    }
}

fn request_from(cmd: &Command) -> anyhow::Result<Option<RunRequest>> {
    let Command::Run {
        objective,
        mode,
        request,
        threshold,
        max_revisions,
        criteria,
        agent,
        require_approval,
        max_tokens,
        max_seconds,
        max_steps,
        ..
    } = cmd
    else {
        return Ok(None);
    };
    let mut req = match (request, objective) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the request file {}", path.display()))?;
            serde_json::from_str::<RunRequest>(&text).map_err(|e| {
                anyhow!(
                    "the request file {} is not a valid RunRequest: {e}",
                    path.display()
                )
            })?
        }
        (None, Some(objective)) => RunRequest::new(objective.clone()),
        (None, None) => {
            return Err(anyhow!(
                "objective: missing; pass it as the first argument, e.g. orchestrator run \"Write a launch post for ...\""
            ));
        }
    };
    if request.is_none() {
        req.mode = match mode {
            ModeArg::App => Mode::App,
            ModeArg::Chat => Mode::Chat,
        };
    }
    let o = &mut req.options;
    if let Some(t) = threshold {
        o.quality_threshold = *t;
    }
    if let Some(m) = max_revisions {
        o.max_revision_cycles = *m;
    }
    o.acceptance_criteria.extend(criteria.iter().cloned());
    if agent.is_some() {
        o.target_agent_id = agent.clone();
    }
    o.require_approval |= *require_approval;
    let b = &mut o.budget;
    *b = Budget {
        max_tokens: max_tokens.or(b.max_tokens),
        max_seconds: max_seconds.or(b.max_seconds),
        max_steps: max_steps.or(b.max_steps),
    };
    // Checked before the database is touched: a bad request writes nothing.
    req.validate().map_err(|e| anyhow!("{e}"))?;
    Ok(Some(req))
}

/// The store for `doctor`, which never creates a SQLite file.
async fn probe_store(config: &Config, cli: &Cli) -> doctor::StoreProbe {
    let db = config.db_path(cli.db.clone());
    if cli.store.unwrap_or(config.store) == StoreKind::Sqlite && !db.exists() {
        return doctor::StoreProbe::NotYet(db);
    }
    doctor::StoreProbe::Opened(open_store(config, cli).await)
}

/// The store `--store` (else ORCHESTRATOR_STORE) names, and where it is, for messages.
async fn open_store(config: &Config, cli: &Cli) -> anyhow::Result<(Arc<dyn Store>, String)> {
    match cli.store.unwrap_or(config.store) {
        StoreKind::Sqlite => {
            let db = config.db_path(cli.db.clone());
            if cli.command.reads_existing_runs() && !db.exists() {
                bail!(
                    "no database at {}: it holds no runs (a mistyped --db?). Without --db or ORCHESTRATOR_DB, runs are kept in {}",
                    db.display(),
                    Config::default_db_path().display()
                );
            }
            if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| {
                    format!(
                        "cannot create the database directory {}; pass --db with a writable path",
                        dir.display()
                    )
                })?;
            }
            let store = SqliteStore::open(&db)
                .and_then(|s| s.with_call_retention(config.call_retention()))
                .with_context(|| {
                    format!(
                        "cannot open the database {}; pass --db with another path",
                        db.display()
                    )
                })?;
            Ok((Arc::new(store), db.display().to_string()))
        }
        StoreKind::Dynamodb => {
            let dynamodb = &config.dynamodb;
            let store = DynamoDbStore::connect(dynamodb).await;
            if cli.create_table {
                store.create_table().await?;
            } else {
                // Fails fast, naming the table and how to create it, before anything runs.
                store.check_table().await?;
            }
            let location = format!(
                "the DynamoDB table {} at {}",
                dynamodb.table_name,
                dynamodb.location()
            );
            Ok((Arc::new(store), location))
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = Config::from_env()?;
    if let Command::Doctor {
        state_machine_arn,
        secrets,
    } = &cli.command
    {
        let options = doctor::Options {
            state_machine_arn: state_machine_arn.clone(),
            secrets: secrets.clone(),
        };
        return Ok(doctor::run(&config, probe_store(&config, &cli).await, options).await);
    }
    let request = request_from(&cli.command)?;
    // Read and checked whole before the store is opened: a bad suite runs nothing.
    let suite = eval::suite_of(&cli.command)?;
    let (store, location) = open_store(&config, &cli).await?;
    let model: Arc<dyn Model> = orchestrator_llm::build_model(&config.llm).await?;
    let offline = config.llm.provider == Provider::Offline;
    let info = model.info();
    // Read once: replay, fork, eval and serve's forks start from the same prompts.
    let prompts = Arc::new(prompts_from(&config, None)?);
    let runner = build_runner(&config, store, model, offline, prompts.clone())?;
    match cli.command {
        Command::Run { json, .. } => {
            let request = request.ok_or_else(|| anyhow!("no request"))?;
            announce(offline, json, &info, &location);
            start(&runner, request, json).await
        }
        Command::Resume {
            run_id,
            json,
            follow: watch,
        } => resume(&runner, &run_id, json, watch).await,
        Command::Approve {
            run_id,
            checkpoint_id,
            reject,
            comment,
            json,
        } => approve(&runner, &run_id, &checkpoint_id, !reject, comment, json).await,
        Command::Serve { addr } => {
            let forks = replay::Forks::new(&config, runner.store().clone(), prompts);
            serve(runner, config.serve, addr, offline, forks).await
        }
        Command::Runs { limit } => list_runs(&runner, limit, &location).await,
        Command::Replay {
            run_id,
            prompts: dir,
            json,
        } => {
            let prompts = prompts_or(&prompts, &config, dir.as_ref())?;
            replay::replay(&config, &runner, &run_id, prompts, json).await
        }
        Command::Fork {
            run_id,
            from,
            prompts: dir,
            model,
            provider,
            json,
        } => {
            let args = replay::ForkArgs {
                run_id,
                from,
                prompts: prompts_or(&prompts, &config, dir.as_ref())?,
                provider,
                model,
                json,
            };
            replay::fork(&config, &runner, args).await
        }
        Command::Eval { args } => eval::run(&config, &runner, prompts, suite, args).await,
        Command::Show { run_id, events } if events => show_events(&runner, run_id).await,
        Command::Show { run_id, .. } => show_report(&runner, &run_id).await,
        // Answered above, before a store or a model is needed.
        Command::Doctor { .. } => Ok(ExitCode::SUCCESS),
    }
}

/// What `orchestrator run` says on stderr before the run: which model, and where runs are kept.
fn announce(offline: bool, json: bool, info: &ModelInfo, location: &str) {
    if offline && !json {
        eprintln!(
            "note: no MODEL_PROVIDER set: using the built-in offline model (deterministic sample output)"
        );
    } else if !offline {
        eprintln!("note: model {}/{}", info.provider, info.model);
    }
    eprintln!("note: runs are kept in {}", terminal::line(location));
}

/// The runner every command drives, with the configured prompts and the model it names in
/// each run's log.
fn build_runner(
    config: &Config,
    store: Arc<dyn Store>,
    model: Arc<dyn Model>,
    offline: bool,
    prompts: Arc<Prompts>,
) -> anyhow::Result<Runner> {
    let info = model.info();
    // Says which model ran, in every run's log; the offline model keeps its warning instead.
    let (notices, messages) = if offline {
        (vec!["Using the built-in offline model: deterministic sample output, not a real LLM. Set MODEL_PROVIDER to use one.".to_owned()], Vec::new())
    } else {
        (
            Vec::new(),
            vec![format!("Model: {}/{}", info.provider, info.model)],
        )
    };
    let model = config.record.wrap(model, store.clone());
    Ok(Runner::new(
        store,
        Planner::with_prompts(model.clone(), prompts.clone()),
        specialists_with_prompts(model, prompts),
        Arc::new(SystemClock),
        RunnerConfig {
            notices,
            messages,
            lease: LeaseConfig {
                ttl: config.lease_ttl,
                owner: config
                    .owner
                    .clone()
                    .unwrap_or_else(orchestrator_runner::process_owner),
            },
            max_runs_in_progress: config.max_runs_in_progress,
            delta_max_age_ms: config.delta_flush_ms,
            ..RunnerConfig::default()
        },
    ))
}

/// The prompts of `dir` (a `--prompts` flag), else `base` (the configured ones).
fn prompts_or(
    base: &Arc<Prompts>,
    config: &Config,
    dir: Option<&PathBuf>,
) -> anyhow::Result<Arc<Prompts>> {
    match dir {
        Some(dir) => Ok(Arc::new(prompts_from(config, Some(dir))?)),
        None => Ok(base.clone()),
    }
}

/// The built-in prompts, or those of `dir` (a `--prompts` flag), else of
/// ORCHESTRATOR_PROMPTS_DIR (saying which it found).
fn prompts_from(config: &Config, dir: Option<&PathBuf>) -> anyhow::Result<Prompts> {
    let (dir, name) = match dir {
        Some(dir) => (dir, "--prompts"),
        None => match &config.llm.prompts_dir {
            Some(dir) => (dir, "ORCHESTRATOR_PROMPTS_DIR"),
            None => return Ok(Prompts::builtin()),
        },
    };
    let (prompts, used) = Prompts::from_dir(dir)
        .with_context(|| format!("{name} names a folder that cannot be used"))?;
    eprintln!(
        "note: prompts from {}: {}",
        dir.display(),
        if used.is_empty() {
            "none of planner.md, strategy.md, writer.md, qa.md, chat.md; all built in".to_owned()
        } else {
            used.join(", ")
        }
    );
    Ok(prompts)
}

/// `orchestrator run`: starts the run (or finds the one its idempotency key names) and follows
/// it to its end.
async fn start(runner: &Runner, request: RunRequest, json: bool) -> anyhow::Result<ExitCode> {
    runner.validate(&request).map_err(|e| anyhow!("{e}"))?;
    let mode = request.mode;
    let launch = match runner.start(request, None).await.map_err(explain)? {
        Started::New(launch) => *launch,
        Started::Existing { run_id } => {
            eprintln!("note: the idempotency key names run {run_id}; showing it");
            return follow(runner, &run_id, None, mode, json).await;
        }
    };
    let run_id = launch.state.run_id.clone();
    follow(runner, &run_id, Some(launch), mode, json).await
}

async fn approve(
    runner: &Runner,
    run_id: &str,
    checkpoint_id: &str,
    approved: bool,
    comment: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let delivered = runner
        .answer(run_id, checkpoint_id, approved, comment)
        .await
        .map_err(explain)?;
    let Delivered::Applied(launch) = delivered else {
        eprintln!("the run is being driven by another command in this process");
        return Ok(ExitCode::SUCCESS);
    };
    let mode = launch.state.request.mode;
    follow(runner, run_id, Some(*launch), mode, json).await
}

async fn list_runs(runner: &Runner, limit: usize, location: &str) -> anyhow::Result<ExitCode> {
    let runs = runner.store().list_runs(limit, None).await?;
    if runs.is_empty() {
        println!("no runs yet in {location}; start one with: orchestrator run \"<objective>\"");
    }
    for r in runs {
        let when = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_millis(r.created_at_ms),
        );
        let objective: String = terminal::line(&r.objective).chars().take(60).collect();
        println!(
            "{}  {}  {:<16} {:<4} {}",
            terminal::line(&r.run_id),
            when,
            r.status.as_str(),
            r.mode,
            objective
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `orchestrator show --events`: the run's stored frames, exactly as SSE sends them.
async fn show_events(runner: &Runner, run_id: String) -> anyhow::Result<ExitCode> {
    let mut out = Sse::new(std::io::stdout().lock());
    let mut after = 0;
    loop {
        let frames = runner.store().read_after(&run_id, after, 1000).await?;
        if frames.is_empty() {
            break;
        }
        for f in &frames {
            out.frame(f)?;
        }
        after = frames.last().map_or(after, |f| f.seq);
    }
    if after == 0 {
        return Err(explain(RunError::NotFound(run_id)));
    }
    Ok(ExitCode::SUCCESS)
}

/// `orchestrator show`: the run's RunReport.
async fn show_report(runner: &Runner, run_id: &str) -> anyhow::Result<ExitCode> {
    let report = runner.report(run_id).await.map_err(explain)?;
    let json = serde_json::to_string_pretty(&report)?;
    println!("{}", terminal::json(&json));
    if report.quality_gate == QualityGate::Failed {
        eprintln!("{}", render::QUALITY_GATE_FAILED);
    }
    Ok(ExitCode::SUCCESS)
}

async fn serve(
    runner: Runner,
    config: config::ServeConfig,
    addr: Option<String>,
    offline: bool,
    forks: replay::Forks,
) -> anyhow::Result<ExitCode> {
    let addr = addr.unwrap_or(config.addr);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {addr}; pass --addr with a free address, e.g. --addr 127.0.0.1:0"
            )
        })?;
    let store = runner.store().clone();
    let control =
        orchestrator_api::LocalControl::new(runner, config.max_runs).with_forks(Arc::new(forks));
    // Runs in progress that no live process drives (a previous process of this server died,
    // or another replica did) are taken over now and every third of a lease time after.
    let watcher = control.clone();
    tokio::spawn(async move {
        let every = watcher.runner().lease_config().renew_every();
        loop {
            let taken = |run_id: &str| {
                eprintln!("took over run {run_id}: no live process was driving it");
            };
            if let Err(e) = watcher.take_over_orphans(taken).await {
                eprintln!("warning: looking for interrupted runs: {e}");
            }
            tokio::time::sleep(every).await;
        }
    });
    let auth = config.api_key.is_some();
    let app = orchestrator_api::router(
        Arc::new(control),
        store,
        orchestrator_api::ApiConfig {
            api_key: config.api_key,
            ping_interval: config.ping,
            max_streams: config.max_streams,
            max_body_bytes: config.max_body_bytes,
            cors_origins: config.cors_origins,
            max_starts_per_minute: config.max_starts_per_minute,
            // A local server has no time limit: streams last as long as their run.
            max_stream: None,
        },
    );
    let local = listener.local_addr()?;
    eprintln!(
        "orchestrator listening on http://{local} ({}{})",
        if auth {
            "bearer API_KEY required"
        } else {
            "no auth: set API_KEY to require a bearer token"
        },
        if offline { ", offline model" } else { "" },
    );
    serve_threads(listener.into_std()?, app, config.threads).await?;
    Ok(ExitCode::SUCCESS)
}

/// Serves `app` on `threads` threads, each with a runtime of its own accepting from the same
/// socket, until Ctrl-C. A connection, and a run started on it, stay on the thread that
/// accepted it: a run's hand-offs and its stream's frames wake no other thread, which on a
/// work-stealing runtime cost a futex wake and a context switch per streamed chunk (a third
/// of the CPU of a run at real model latency, bench/README.md).
async fn serve_threads(
    listener: std::net::TcpListener,
    app: axum::Router,
    threads: usize,
) -> anyhow::Result<()> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut others = Vec::with_capacity(threads.saturating_sub(1));
    for n in 1..threads {
        let listener = listener
            .try_clone()
            .context("cannot share the listening socket")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start a serving thread's runtime")?;
        let (app, stopped) = (app.clone(), stopped.clone());
        let thread = std::thread::Builder::new()
            .name(format!("serve-{n}"))
            .spawn(move || runtime.block_on(serve_on(listener, app, stopped)))
            .context("cannot start a serving thread")?;
        others.push(thread);
    }
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = stop.send(true);
    });
    let served = serve_on(listener, app, stopped).await;
    for thread in others {
        match thread.join() {
            Ok(Err(e)) => eprintln!("warning: a serving thread stopped: {e:#}"),
            Err(_) => eprintln!("warning: a serving thread panicked"),
            Ok(Ok(())) => {}
        }
    }
    served
}

/// Serves `app` on the current runtime from `listener` until `stopped` says so.
async fn serve_on(
    listener: std::net::TcpListener,
    app: axum::Router,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    // SSE frames are small writes a few ms apart: without TCP_NODELAY, Nagle's algorithm holds
    // each one until the client ACKs the previous, and delayed ACKs make that up to 40 ms.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        })
        .await
        .context("the server stopped")
}

/// `resume`: continues the run here, or leaves a run another live process drives alone
/// (exit 3, or its stream followed with `--follow`).
async fn resume(
    runner: &Runner,
    run_id: &str,
    json: bool,
    watch: bool,
) -> anyhow::Result<ExitCode> {
    match runner.resume(run_id).await {
        Ok(launch) => {
            let mode = launch.state.request.mode;
            follow(runner, run_id, Some(launch), mode, json).await
        }
        Err(RunError::Owned {
            owner,
            expires_in_ms,
            ..
        }) => {
            let owner = terminal::line(&owner);
            if !watch {
                eprintln!(
                    "error: run {run_id} is being driven by {owner} (its lease runs {:.1} s more if that process stops renewing it); nothing was changed.\nFollow it with `orchestrator resume {run_id} --follow`, or resume it once that process has stopped.",
                    expires_in_ms as f64 / 1000.0
                );
                return Ok(ExitCode::from(3));
            }
            eprintln!("note: run {run_id} is being driven by {owner}; following its stream");
            let mode = runner
                .store()
                .load_run(run_id)
                .await?
                .map_or(Mode::App, |s| s.request.mode);
            watch_run(runner, run_id, mode, json).await
        }
        Err(e) => Err(explain(e)),
    }
}

fn explain(e: RunError) -> anyhow::Error {
    match e {
        RunError::NotFound(id) => anyhow!("run {id} not found; list runs with `orchestrator runs`"),
        RunError::Finished { run_id, status } => anyhow!(
            "run {run_id} has already finished ({status}); see it with `orchestrator show {run_id}`"
        ),
        other => anyhow!("{other}"),
    }
}

/// Drives the launch (if any) while rendering the run's log from the start; returns the exit
/// code for the run's status.
async fn follow(
    runner: &Runner,
    run_id: &str,
    launch: Option<Launch>,
    mode: Mode,
    json: bool,
) -> anyhow::Result<ExitCode> {
    follow_from(runner, run_id, launch, mode, json, false).await
}

/// Follows a run another process drives, to its end (or its pause).
async fn watch_run(
    runner: &Runner,
    run_id: &str,
    mode: Mode,
    json: bool,
) -> anyhow::Result<ExitCode> {
    follow_from(runner, run_id, None, mode, json, true).await
}

/// `elsewhere`: another process drives the run; keep reading while it is running.
async fn follow_from(
    runner: &Runner,
    run_id: &str,
    launch: Option<Launch>,
    mode: Mode,
    json: bool,
    elsewhere: bool,
) -> anyhow::Result<ExitCode> {
    let driver = launch.map(|l| {
        let r = runner.clone();
        tokio::spawn(async move { r.drive(l).await })
    });
    let stdout = std::io::stdout();
    let mut render: Box<dyn Render> = if json {
        Box::new(Sse::new(stdout.lock()))
    } else {
        Box::new(Human::new(stdout.lock(), mode))
    };
    let store = runner.store().clone();
    let mut after = 0;
    let mut driver = driver;
    let mut elsewhere = elsewhere;
    let mut outcome: Option<Result<RunStatus, RunError>> = None;
    loop {
        let frames = store.read_after(run_id, after, 1000).await?;
        for f in &frames {
            after = f.seq;
            if render.frame(f)? {
                if let Some(d) = driver.take() {
                    outcome = Some(d.await?);
                }
                let report = match outcome {
                    Some(Err(e)) => return Err(explain(e)),
                    _ => runner.report(run_id).await.map_err(explain)?,
                };
                return Ok(exit_code(report.status, report.quality_gate));
            }
        }
        if !frames.is_empty() {
            continue;
        }
        if let Some(d) = driver.as_ref()
            && d.is_finished()
            && let Some(d) = driver.take()
        {
            outcome = Some(d.await?);
            continue; // drain what the driver wrote last
        }
        if driver.is_none() {
            match outcome.take() {
                // Another process took the run over (its lease had lapsed here): it carries
                // on there, and its stream is followed to the end.
                Some(Err(e)) if e.taken_over() => {
                    eprintln!("note: another process took run {run_id} over; following its stream");
                    elsewhere = true;
                }
                Some(Err(e)) => return Err(explain(e)),
                _ if elsewhere && still_running(runner, run_id).await? => {}
                // Nothing drives the run here: paused, or an idempotent replay of another run.
                _ => return paused(runner, run_id).await,
            }
        }
        store
            .wait_beyond(run_id, after, Duration::from_millis(500))
            .await?;
    }
}

async fn still_running(runner: &Runner, run_id: &str) -> anyhow::Result<bool> {
    let state = runner.store().load_run(run_id).await?;
    Ok(state.is_some_and(|s| s.status == RunStatus::Running))
}

/// The exit code of a finished run (README.md, "Exit codes"): 0 completed, 4 completed below
/// the QA threshold, 1 failed, cancelled or out of budget.
/// The exit code of a run left paused at an approval checkpoint: not an end, not a failure.
const PAUSED: u8 = 5;

fn exit_code(status: RunStatus, gate: QualityGate) -> ExitCode {
    match (status, gate) {
        (RunStatus::Completed, QualityGate::Passed) => ExitCode::SUCCESS,
        (RunStatus::Completed, QualityGate::Failed) => ExitCode::from(4),
        _ => ExitCode::from(1),
    }
}

/// A run left waiting at a checkpoint: says how to answer it, and exits [`PAUSED`].
async fn paused(runner: &Runner, run_id: &str) -> anyhow::Result<ExitCode> {
    let state = runner
        .store()
        .load_run(run_id)
        .await?
        .ok_or_else(|| anyhow!("run {run_id} vanished"))?;
    if let Some(cp) = &state.checkpoint {
        let mut err = std::io::stderr();
        writeln!(
            err,
            "The run is paused at checkpoint {id}. Continue it with:\n  orchestrator approve {run_id} {id}\nor end it with:\n  orchestrator approve {run_id} {id} --reject",
            id = terminal::line(&cp.id)
        )?;
        if std::io::stdin().is_terminal() {
            writeln!(
                err,
                "(approve or reject from another terminal, or run the command above)"
            )?;
        }
        return Ok(ExitCode::from(PAUSED));
    } else {
        eprintln!(
            "run {run_id} is {}; continue it with `orchestrator resume {run_id}`",
            state.status
        );
    }
    Ok(ExitCode::SUCCESS)
}
