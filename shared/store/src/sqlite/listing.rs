//! The run listing: summaries, most recent first, a page at a time.

use orchestrator_core::ports::StoreError;
use orchestrator_core::types::{Mode, RunStatus, RunSummary};
use rusqlite::{Connection, params};

use super::{db_error, to_u64};

/// Up to `limit` runs created before `before` (created_at_ms, run_id), most recent first.
pub(super) fn list_runs(
    conn: &Connection,
    limit: i64,
    before: Option<(i64, String)>,
) -> Result<Vec<RunSummary>, StoreError> {
    let (ms, id) = before.unzip();
    let mut stmt = conn
        .prepare_cached(
            "SELECT run_id, mode, objective, status, created_at_ms, updated_at_ms
             FROM runs
             WHERE ?1 IS NULL OR (created_at_ms, run_id) < (?1, ?2)
             ORDER BY created_at_ms DESC, run_id DESC
             LIMIT ?3",
        )
        .map_err(db_error)?;
    let rows = stmt
        .query_map(params![ms, id, limit], summary_row)
        .map_err(db_error)?;
    rows.map(|row| summary_of(row.map_err(db_error)?)).collect()
}

type SummaryRow = (String, String, String, String, i64, i64);

fn summary_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SummaryRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn summary_of(row: SummaryRow) -> Result<RunSummary, StoreError> {
    let (run_id, mode, objective, status, created, updated) = row;
    let mode: Mode = serde_json::from_value(serde_json::Value::String(mode.clone()))
        .map_err(|_| StoreError::Corrupt(format!("run {run_id}: unknown mode {mode:?}")))?;
    let status: RunStatus = status
        .parse()
        .map_err(|e| StoreError::Corrupt(format!("run {run_id}: {e}")))?;
    Ok(RunSummary {
        mode,
        objective,
        status,
        created_at_ms: to_u64(created, "created_at_ms")?,
        updated_at_ms: to_u64(updated, "updated_at_ms")?,
        run_id,
    })
}
