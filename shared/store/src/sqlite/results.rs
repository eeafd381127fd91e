//! Step results (one per step attempt, the first written stays) and the run's report.

use orchestrator_core::engine::RunState;
use orchestrator_core::ports::{OpenedStep, StepOpening, StoreError};
use orchestrator_core::report::build_report;
use orchestrator_core::types::{RunReport, StepResult};
use rusqlite::{Connection, OptionalExtension, params};

use super::events::append_events;
use super::{WriteTx, db_error};
use crate::codec::{decode, encode};

const STEP_RESULT_SQL: &str = "SELECT result_json FROM step_results
     WHERE run_id = ?1 AND step_id = ?2 AND attempt = ?3";

/// Every stored result of the run, in the order they were written.
pub(super) fn read_step_results(
    conn: &Connection,
    run_id: &str,
) -> Result<Vec<StepResult>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT result_json FROM step_results WHERE run_id = ?1 ORDER BY rowid")
        .map_err(db_error)?;
    let rows = stmt
        .query_map([run_id], |r| r.get::<_, String>(0))
        .map_err(db_error)?;
    rows.map(|json| decode(&json.map_err(db_error)?, "step result", run_id))
        .collect()
}

pub(super) fn read_step_result(
    conn: &Connection,
    run_id: &str,
    step_id: &str,
    attempt: u32,
) -> Result<Option<StepResult>, StoreError> {
    let json: Option<String> = conn
        .prepare_cached(STEP_RESULT_SQL)
        .and_then(|mut stmt| {
            stmt.query_row(params![run_id, step_id, attempt], |r| r.get(0))
                .optional()
        })
        .map_err(db_error)?;
    json.map(|json| decode(&json, "step result", run_id))
        .transpose()
}

/// Inserts a step result unless its (run, step, attempt) has one; true when it was inserted.
fn insert_step_result(
    tx: &WriteTx<'_>,
    run_id: &str,
    result: &StepResult,
    json: &str,
) -> Result<bool, StoreError> {
    let inserted = tx
        .prepare_cached(
            "INSERT INTO step_results (run_id, step_id, attempt, result_json)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (run_id, step_id, attempt) DO NOTHING",
        )
        .and_then(|mut stmt| stmt.execute(params![run_id, result.step_id, result.attempt, json]))
        .map_err(db_error)?;
    Ok(inserted == 1)
}

/// Stores our result of an attempt unless the attempt has one: `None` when ours went in,
/// else the result that took the attempt first.
pub(super) fn taken_by(
    tx: &WriteTx<'_>,
    run_id: &str,
    ours: &StepResult,
    json: &str,
) -> Result<Option<StepResult>, StoreError> {
    if insert_step_result(tx, run_id, ours, json)? {
        return Ok(None);
    }
    // The insert found (run, step, attempt) taken: the row is there to read.
    read_step_result(tx, run_id, &ours.step_id, ours.attempt)?
        .ok_or_else(|| taken_unreadable(run_id, ours))
        .map(Some)
}

fn taken_unreadable(run_id: &str, ours: &StepResult) -> StoreError {
    StoreError::Corrupt(format!(
        "run {run_id}: the result of step {} attempt {} conflicted but cannot be read",
        ours.step_id, ours.attempt
    ))
}

pub(super) fn upsert_report(tx: &WriteTx<'_>, run_id: &str, json: &str) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO reports (run_id, report_json) VALUES (?1, ?2)
         ON CONFLICT (run_id) DO UPDATE SET report_json = excluded.report_json",
    )
    .and_then(|mut stmt| stmt.execute(params![run_id, json]))
    .map_err(db_error)?;
    Ok(())
}

/// The run's report, built from the results this transaction sees, written over any earlier.
pub(super) fn write_report(
    tx: &WriteTx<'_>,
    state: &RunState,
    now_ms: u64,
) -> Result<(), StoreError> {
    let results = read_step_results(tx, &state.run_id)?;
    let report = encode(&build_report(state, results, now_ms), "report")?;
    upsert_report(tx, &state.run_id, &report)
}

pub(super) fn read_report(
    conn: &Connection,
    run_id: &str,
) -> Result<Option<RunReport>, StoreError> {
    let json: Option<String> = conn
        .prepare_cached("SELECT report_json FROM reports WHERE run_id = ?1")
        .and_then(|mut stmt| stmt.query_row([run_id], |r| r.get(0)).optional())
        .map_err(db_error)?;
    json.map(|json| decode(&json, "report", run_id)).transpose()
}

/// Opens the attempts a transition dispatches, in order: an attempt's stored result, or its
/// handoff appended and the run's results read (once, for all of them). The caller holds the
/// write transaction and has checked the writer's fence in it.
pub(super) fn open_steps(
    tx: &WriteTx<'_>,
    run_id: &str,
    opens: Vec<StepOpening>,
) -> Result<Vec<OpenedStep>, StoreError> {
    let mut opened = Vec::with_capacity(opens.len());
    let mut results = None;
    for o in opens {
        if let Some(stored) = read_step_result(tx, run_id, &o.step_id, o.attempt)? {
            opened.push(OpenedStep::Stored(stored));
            continue;
        }
        append_events(tx, run_id, o.handoff)?;
        if results.is_none() {
            results = Some(read_step_results(tx, run_id)?);
        }
        opened.push(OpenedStep::Open {
            results: results.clone().unwrap_or_default(),
        });
    }
    Ok(opened)
}
