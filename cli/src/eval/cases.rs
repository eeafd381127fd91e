//! One case run: live through the runner, or replayed from a recorded run with no model.

use std::sync::Arc;

use orchestrator_agents::Prompts;
use orchestrator_core::ports::{RunCursor, StoreError};
use orchestrator_core::types::RunRequest;
use orchestrator_recording::Redact;
use orchestrator_runner::replay::{self, ReplayOutcome, Replayed};
use orchestrator_runner::{Runner, Started, Store};

use super::CaseResult;
use super::check::{self, Failure, Observed};
use super::suite::Case;

/// The width of each column of a side-by-side request in a failure.
const COLUMN: usize = 58;
/// Runs listed a page at a time while looking for recorded runs.
const PAGE: usize = 200;
/// Runs started by a replay or a fork: never the record of a case.
const NOT_RECORDS: [&str; 2] = ["replay-of-", "fork-of-"];

/// What `--replay` needs beside the runner.
pub struct Replaying {
    /// The prompts the replay runs with (ORCHESTRATOR_PROMPTS_DIR, else the built-in ones):
    /// the change under test.
    pub prompts: Arc<Prompts>,
    pub redact: Arc<dyn Redact>,
}

/// The case as a new run with the configured model, driven to its end (or its pause at an
/// approval checkpoint), then checked against its expectations.
pub async fn live(runner: &Runner, case: &Case) -> CaseResult {
    let mut result = CaseResult::new(&case.name);
    let launch = match runner.start(case.request.clone(), None).await {
        Ok(Started::New(launch)) => *launch,
        Ok(Started::Existing { run_id }) => {
            // A suite's requests carry no idempotency key; should one ever, its run is checked.
            return checked(runner, case, result.with_run(run_id)).await;
        }
        Err(e) => return result.errored(format!("the run could not start: {e}")),
    };
    let run_id = launch.state.run_id.clone();
    result.run_id = Some(run_id.clone());
    if let Err(e) = runner.drive(launch).await {
        return result.errored(format!("run {run_id} could not be driven: {e}"));
    }
    checked(runner, case, result).await
}

/// The case's recorded run (`recorded`) replayed with no model: a request that differs from
/// its record, or a log that does, fails the case with what differs; an identical replay is
/// checked against the expectations.
pub async fn replayed(
    runner: &Runner,
    with: &Replaying,
    case: &Case,
    recorded: Option<&str>,
) -> CaseResult {
    let result = CaseResult::new(&case.name);
    let Some(original) = recorded else {
        return result.failed(Failure::new(
            "replay",
            "no finished run of this case's request is recorded in the store: run the suite live once first (without --replay) to record one, or name one with `replay:`",
        ));
    };
    let mut result = result;
    result.replay_of = Some(original.to_owned());
    let record = match replay::load(runner, original).await {
        Ok(record) => record,
        Err(e) => return result.failed(Failure::new("replay", e.to_string())),
    };
    let outcome = replay::replay(runner, record, with.prompts.clone(), with.redact.clone()).await;
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(e) => return result.errored(format!("the replay of run {original} failed: {e}")),
    };
    let (run_id, difference) = difference(original, &outcome);
    let result = result.with_run(run_id.to_owned());
    match difference {
        None => checked(runner, case, result).await,
        Some(failure) => {
            let mut result = observe(runner, result).await;
            result.failures.push(failure);
            result
        }
    }
}

/// The replay's run, and what differs from the original when something does.
fn difference<'a>(original: &str, outcome: &'a ReplayOutcome) -> (&'a str, Option<Failure>) {
    let served = outcome.served;
    match &outcome.replayed {
        Replayed::Identical { run_id, .. } => (run_id, None),
        Replayed::Diverged { run_id, divergence } => {
            let message = divergence.headline(original, served);
            let diff = divergence.side_by_side(COLUMN);
            (
                run_id,
                Some(Failure::new("replay", message).with_details(diff)),
            )
        }
        Replayed::Differs {
            run_id,
            index,
            original: before,
            replayed,
        } => {
            let show = |v: &Option<serde_json::Value>| {
                v.as_ref()
                    .map_or("(none: the log had ended)".to_owned(), |v| v.to_string())
            };
            let message = format!(
                "the replay of run {original}: every request matched its record, but the event log differs at frame {}",
                index + 1
            );
            let details = format!("original: {}\nreplayed: {}\n", show(before), show(replayed));
            (
                run_id,
                Some(Failure::new("replay", message).with_details(details)),
            )
        }
    }
}

/// The run's report read, and the expectations checked on it.
async fn checked(runner: &Runner, case: &Case, result: CaseResult) -> CaseResult {
    let mut result = observe(runner, result).await;
    if let Some(observed) = &result.observed {
        result.failures = check::check(&case.expect, observed);
    }
    result
}

/// The run's figures, for the table, from its report.
async fn observe(runner: &Runner, mut result: CaseResult) -> CaseResult {
    let Some(run_id) = result.run_id.clone() else {
        return result;
    };
    match runner.report(&run_id).await {
        Ok(report) => {
            result.observed = Some(Observed::of(&report));
            result
        }
        Err(e) => result.errored(format!("the report of run {run_id} cannot be read: {e}")),
    }
}

/// For each case, the run `--replay` replays: the one its `replay:` names, else the newest
/// finished run in the store whose request is the case's (its idempotency key aside) and that
/// is not itself a replay or a fork.
pub async fn recorded_runs(
    store: &dyn Store,
    cases: &[Case],
) -> Result<Vec<Option<String>>, StoreError> {
    let mut found: Vec<Option<String>> = cases.iter().map(|c| c.replay.clone()).collect();
    let wanted: Vec<RunRequest> = cases.iter().map(|c| keyless(&c.request)).collect();
    let mut before: Option<RunCursor> = None;
    while found.iter().any(Option::is_none) {
        let page = store.list_runs(PAGE, before.as_ref()).await?;
        for run in &page {
            let open: Vec<usize> = (0..cases.len())
                .filter(|&i| found[i].is_none())
                .filter(|&i| wanted[i].objective == run.objective && wanted[i].mode == run.mode)
                .collect();
            if open.is_empty() || !run.status.is_terminal() {
                continue;
            }
            let Some(state) = store.load_run(&run.run_id).await? else {
                continue;
            };
            if NOT_RECORDS
                .iter()
                .any(|p| state.correlation_id.starts_with(p))
            {
                continue;
            }
            let request = keyless(&state.request);
            for i in open.into_iter().filter(|&i| wanted[i] == request) {
                found[i] = Some(run.run_id.clone());
            }
        }
        match page.last() {
            Some(last) if page.len() == PAGE => before = Some(RunCursor::after(last)),
            _ => break,
        }
    }
    Ok(found)
}

fn keyless(request: &RunRequest) -> RunRequest {
    RunRequest {
        idempotency_key: None,
        ..request.clone()
    }
}
