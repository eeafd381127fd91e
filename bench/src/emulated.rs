//! What one reference run on the emulated AWS stack did, for the cost model.
//!
//! `tests/aws_run.rs` runs the reference workload through the real functions under
//! `cargo lambda watch`, driven by moto executing `infra/statemachine.asl.json`, and writes
//! these figures to [`DEFAULT_PATH`] (or `AWS_RUN_FIGURES`): the states the execution entered
//! and the task retries (from its history), every Lambda task invocation with its duration
//! (the history's TaskStarted -> TaskSucceeded/TaskFailed timestamps), the DynamoDB requests
//! the emulator served during the run (its counters) and the SSE frames the client received.
//! `bench-driver all --aws-figures FILE` reads them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where `tests/aws_run.rs` writes the figures, relative to the workspace root, unless
/// `AWS_RUN_FIGURES` names another file; `bench-driver all` reads it from there by default.
pub const DEFAULT_PATH: &str = "target/aws-run-figures.json";

/// One reference run on the emulated stack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmulatedRun {
    /// What produced the figures, for a reader of the file.
    pub source: String,
    pub run_id: String,
    /// The execution's status (SUCCEEDED for the reference run).
    pub status: String,
    /// States entered (StateEntered events of the history), by state name; states inside a
    /// Map iteration included.
    pub states_entered: BTreeMap<String, u64>,
    /// Task attempts after the first within one state entry (the ASL's Retry). Step Functions
    /// bills each retry as one more state transition.
    pub task_retries: u64,
    /// Every Lambda task invocation of the execution, in history order, retried attempts
    /// included.
    pub invocations: Vec<Invocation>,
    /// `Lambda.Invoke` requests the emulator forwarded to the functions during the run (its
    /// counters): the same invocations, counted on the other side.
    pub lambda_invoke_requests: u64,
    /// DynamoDB requests the emulator served during the run, by operation (its counters), the
    /// streamer's tail of the event log included.
    pub dynamodb_requests: BTreeMap<String, u64>,
    pub dynamodb_write_requests: u64,
    pub dynamodb_read_requests: u64,
    /// SSE frames the client received, by event type (each is one event in the log).
    pub frames: BTreeMap<String, u64>,
    /// Start of the request to the last frame, ms (debug binaries on a shared machine).
    pub wall_ms: u64,
}

/// One Lambda task invocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invocation {
    /// The state that made it: Plan, RunStep (a Map iteration), Advance, Notify, ...
    pub state: String,
    /// The function invoked: planner, advance, strategy, generation, qa, finalize.
    pub function: String,
    /// The error it ended with (a retried or caught attempt), if any.
    pub error: Option<String>,
    /// TaskStarted to TaskSucceeded/TaskFailed in the history, ms; `None` when the history
    /// lacks one of the two. On the emulator this is the function's time under
    /// `cargo lambda watch` plus the emulator's own hand-off, so an upper bound of what Lambda
    /// would bill.
    pub duration_ms: Option<f64>,
}

impl EmulatedRun {
    /// Standard state transitions Step Functions bills for the run: every state entered, plus
    /// one per retry.
    pub fn state_transitions(&self) -> u64 {
        self.states_entered.values().sum::<u64>() + self.task_retries
    }

    pub fn lambda_invocations(&self) -> u64 {
        self.invocations.len() as u64
    }

    pub fn invocations_by_function(&self) -> BTreeMap<&str, u64> {
        let mut out = BTreeMap::new();
        for i in &self.invocations {
            *out.entry(i.function.as_str()).or_default() += 1;
        }
        out
    }

    /// Billed Lambda time, ms: each invocation's duration rounded up to the next whole ms (at
    /// least 1), as Lambda bills. `None` if any invocation's duration is absent.
    pub fn billed_ms(&self) -> Option<u64> {
        self.invocations
            .iter()
            .map(|i| i.duration_ms.map(|d| (d.ceil() as u64).max(1)))
            .sum()
    }

    /// Reads a figures file.
    pub fn load(path: &Path) -> Result<Self, FiguresError> {
        let text = std::fs::read_to_string(path).map_err(|error| FiguresError::Read {
            path: path.to_owned(),
            error,
        })?;
        serde_json::from_str(&text).map_err(|error| FiguresError::Parse {
            path: path.to_owned(),
            error,
        })
    }

    /// The figures for the cost model: `explicit` (a path the user named) must load; without
    /// one, `default` is read when it exists, and its absence means "no figures".
    pub fn find(explicit: Option<&Path>, default: &Path) -> Result<Option<Self>, FiguresError> {
        match explicit {
            Some(path) => Self::load(path).map(Some),
            None if default.exists() => Self::load(default).map(Some),
            None => Ok(None),
        }
    }
}

/// A figures file that cannot be used; the message names the file and what went wrong (the
/// underlying error is in it, not chained, so it is printed once).
#[derive(Debug, thiserror::Error)]
pub enum FiguresError {
    #[error(
        "cannot read the emulated AWS run's figures at {path}: {error} (`ORCHESTRATOR_AWS_E2E=1 cargo test -p orchestrator-aws --test aws_run -- --nocapture` writes them)",
        path = path.display()
    )]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "{path} does not hold the emulated AWS run's figures ({error}); run `ORCHESTRATOR_AWS_E2E=1 cargo test -p orchestrator-aws --test aws_run -- --nocapture` again to rewrite it",
        path = path.display()
    )]
    Parse {
        path: PathBuf,
        error: serde_json::Error,
    },
}
