//! `orchestrator eval <suite.yaml>`: a suite of cases, each a run whose report must meet its
//! expectations; live with the configured model, or `--replay`ed from recorded runs with no
//! model (a prompt or code change is then caught as the first request that differs). Prints a
//! table, writes JUnit XML and JSON for CI, exits 0 when every case passed and 1 when one did
//! not.

mod cases;
mod check;
mod json;
mod junit;
mod suite;
mod table;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use futures::StreamExt;
use orchestrator_runner::Runner;

pub use suite::Suite;

use crate::config::Config;
use crate::terminal;
use cases::Replaying;
use check::{Failure, Observed};

/// The suite and flags of `orchestrator eval`.
#[derive(clap::Args)]
pub struct Args {
    /// The suite file (YAML: name, concurrency, cases with name, objective, mode, options,
    /// replay, expect)
    pub suite: PathBuf,
    /// Replay each case's recorded run (its `replay:`, else the newest finished run of the
    /// same request) with no model, instead of running it live
    #[arg(long)]
    pub replay: bool,
    /// Cases run at once, 1 to 64 [default: the suite's concurrency, else 4]
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: Option<u16>,
    /// Write JUnit XML here
    #[arg(long, value_name = "PATH")]
    pub junit: Option<PathBuf>,
    /// Write a JSON summary here
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
}

/// The suite of an `eval` command, read and checked whole (before the store is opened, so a
/// bad suite runs and writes nothing); `None` for the other commands.
pub fn suite_of(command: &crate::Command) -> Result<Option<Suite>, suite::SuiteError> {
    match command {
        crate::Command::Eval { args } => Suite::load(&args.suite).map(Some),
        _ => Ok(None),
    }
}

/// How one case went.
#[derive(Debug)]
pub struct CaseResult {
    pub name: String,
    /// The run this case made (live), or the replay's run.
    pub run_id: Option<String>,
    /// With `--replay`: the recorded run replayed.
    pub replay_of: Option<String>,
    /// The run's figures, once its report could be read.
    pub observed: Option<Observed>,
    /// Every way the case did not pass; empty when it passed.
    pub failures: Vec<Failure>,
    /// The case could not be run or checked (a store error, a run that could not start):
    /// JUnit's `error`, where a failure is an expectation not met.
    pub error: Option<String>,
    /// Wall time of the case.
    pub elapsed: Duration,
}

impl CaseResult {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            run_id: None,
            replay_of: None,
            observed: None,
            failures: Vec::new(),
            error: None,
            elapsed: Duration::ZERO,
        }
    }

    fn with_run(mut self, run_id: String) -> Self {
        self.run_id = Some(run_id);
        self
    }

    fn failed(mut self, failure: Failure) -> Self {
        self.failures.push(failure);
        self
    }

    fn errored(mut self, message: String) -> Self {
        self.error = Some(message);
        self
    }

    pub fn passed(&self) -> bool {
        self.failures.is_empty() && self.error.is_none()
    }

    /// PASS, FAIL or ERROR.
    pub fn verdict(&self) -> &'static str {
        match (&self.error, self.failures.is_empty()) {
            (Some(_), _) => "ERROR",
            (None, true) => "PASS",
            (None, false) => "FAIL",
        }
    }

    /// The first reason the case did not pass, on one line.
    pub fn first_reason(&self) -> Option<&str> {
        self.error
            .as_deref()
            .or_else(|| self.failures.first().map(|f| f.message.as_str()))
    }
}

/// How the cases run.
enum How {
    Live,
    /// Each case's recorded run (none found: the case fails), replayed with no model.
    Replay {
        with: Replaying,
        recorded: Vec<Option<String>>,
    },
}

/// Runs the suite and reports on it: exit 0 when every case passed, 1 when one did not.
/// `suite` is the one [`suite_of`] read (read here when it is `None`).
pub async fn run(
    config: &Config,
    runner: &Runner,
    prompts: Arc<orchestrator_agents::Prompts>,
    suite: Option<Suite>,
    options: Args,
) -> anyhow::Result<ExitCode> {
    let suite = match suite {
        Some(suite) => suite,
        None => Suite::load(&options.suite)?,
    };
    // The checks that need the runner (a chat agent it has), before anything runs.
    for (i, case) in suite.cases.iter().enumerate() {
        runner.validate(&case.request).map_err(|e| {
            anyhow!(
                "the eval suite {} is not valid: case {:?} (cases[{i}]): {e}",
                suite.path.display(),
                case.name
            )
        })?;
    }
    let concurrency = options
        .concurrency
        .map(usize::from)
        .or(suite.concurrency)
        .unwrap_or(suite::DEFAULT_CONCURRENCY);
    let how = if options.replay {
        let store = runner.store().clone();
        let recorded = cases::recorded_runs(store.as_ref(), &suite.cases).await?;
        let with = Replaying {
            prompts,
            redact: config.record.redact.clone(),
        };
        How::Replay { with, recorded }
    } else {
        How::Live
    };
    eprintln!(
        "eval {}: {} cases, {concurrency} at a time, {}",
        terminal::line(&suite.name),
        suite.cases.len(),
        if options.replay {
            "replayed from their recorded runs (no model calls)"
        } else {
            "live"
        }
    );
    let started = Instant::now();
    let results = run_cases(runner, &how, &suite, concurrency).await;
    let elapsed = started.elapsed();
    report(&suite, &results, elapsed, &options)?;
    Ok(if results.iter().all(CaseResult::passed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Every case, `concurrency` at a time; the results in the suite's order.
async fn run_cases(
    runner: &Runner,
    how: &How,
    suite: &Suite,
    concurrency: usize,
) -> Vec<CaseResult> {
    let cases = &suite.cases;
    let mut progress = Progress::new(cases.len(), concurrency);
    let mut finished =
        futures::stream::iter(cases.iter().enumerate().map(|(i, case)| async move {
            let started = Instant::now();
            let mut result = match how {
                How::Live => cases::live(runner, case).await,
                How::Replay { with, recorded } => {
                    cases::replayed(runner, with, case, recorded[i].as_deref()).await
                }
            };
            result.elapsed = started.elapsed();
            (i, result)
        }))
        .buffer_unordered(concurrency.max(1));
    let mut results: Vec<Option<CaseResult>> = cases.iter().map(|_| None).collect();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            next = finished.next() => match next {
                Some((i, result)) => {
                    progress.finished(&result);
                    results[i] = Some(result);
                }
                None => break,
            },
            _ = tick.tick(), if progress.live => progress.redraw(),
        }
    }
    progress.clear();
    results.into_iter().flatten().collect()
}

/// What the eval prints on stdout (failures in full, the table, the totals) and writes to the
/// `--junit` and `--json` files.
fn report(
    suite: &Suite,
    results: &[CaseResult],
    elapsed: Duration,
    options: &Args,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for r in results.iter().filter(|r| !r.passed()) {
        write!(out, "{}", terminal::block(&table::failure_details(r)))?;
    }
    write!(out, "{}", table::render(results))?;
    writeln!(out, "{}", table::totals(results, elapsed))?;
    out.flush()?;
    if let Some(path) = &options.junit {
        let xml = junit::render(&suite.name, results, elapsed);
        std::fs::write(path, xml)
            .with_context(|| format!("cannot write the JUnit file {}", path.display()))?;
    }
    if let Some(path) = &options.json {
        let doc = json::render(&suite.name, results, elapsed);
        let text = serde_json::to_string_pretty(&doc)? + "\n";
        std::fs::write(path, text)
            .with_context(|| format!("cannot write the JSON file {}", path.display()))?;
    }
    Ok(())
}

/// Progress on stderr: a line per finished case, and on a terminal a counter redrawn while
/// cases run.
struct Progress {
    total: usize,
    done: usize,
    concurrency: usize,
    started: Instant,
    /// stderr is a terminal: the counter is drawn.
    live: bool,
}

impl Progress {
    fn new(total: usize, concurrency: usize) -> Self {
        Self {
            total,
            done: 0,
            concurrency,
            started: Instant::now(),
            live: std::io::stderr().is_terminal(),
        }
    }

    fn finished(&mut self, result: &CaseResult) {
        self.done += 1;
        self.clear();
        eprintln!(
            "[{}/{}] {} {} {:.1}s",
            self.done,
            self.total,
            terminal::line(&result.name),
            result.verdict(),
            result.elapsed.as_secs_f64()
        );
        if self.live {
            self.redraw();
        }
    }

    fn redraw(&self) {
        let running = (self.total - self.done).min(self.concurrency);
        if running == 0 {
            return;
        }
        eprint!(
            "\r[{}/{}] {running} running · {:.0}s",
            self.done,
            self.total,
            self.started.elapsed().as_secs_f64()
        );
        let _ = std::io::stderr().flush();
    }

    /// Wipes the counter's line, so the next line starts clean.
    fn clear(&self) {
        if self.live {
            eprint!("\r\x1b[2K");
        }
    }
}
