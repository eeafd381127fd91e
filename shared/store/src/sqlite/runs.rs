//! Runs: their rows (the state snapshot and what listings show), created once and saved with
//! each transition, and their plan versions.

use orchestrator_core::engine::RunState;
use orchestrator_core::event::{Event, Frame};
use orchestrator_core::ports::{Created, StoreError};
use orchestrator_core::types::{Plan, RunStatus};
use rusqlite::{Connection, OptionalExtension, params};

use super::events::append_events;
use super::{SqliteStore, WriteTx, db_error, lease, saturating_i64};
use crate::codec::{decode, encode};

impl SqliteStore {
    /// Every plan version stored for the run, oldest first (each as it was when first
    /// committed). Empty for an unknown run.
    pub async fn plan_versions(&self, run_id: &str) -> Result<Vec<Plan>, StoreError> {
        let run_id = run_id.to_owned();
        self.call(move |conn| {
            let mut stmt = conn
                .prepare("SELECT plan_json FROM plan_versions WHERE run_id = ?1 ORDER BY version")
                .map_err(db_error)?;
            let rows = stmt
                .query_map([&run_id], |r| r.get::<_, String>(0))
                .map_err(db_error)?;
            rows.map(|json| decode(&json.map_err(db_error)?, "plan", &run_id))
                .collect()
        })
        .await
    }
}

pub(super) fn run_exists(tx: &WriteTx<'_>, run_id: &str) -> Result<bool, StoreError> {
    tx.prepare_cached("SELECT 1 FROM runs WHERE run_id = ?1")
        .and_then(|mut stmt| stmt.query_row([run_id], |_| Ok(())).optional())
        .map(|found| found.is_some())
        .map_err(db_error)
}

/// Inserts a new run with its first events, unless its idempotency key already names one
/// (then that run, and nothing is written); the caller holds a write transaction.
pub(super) fn insert_run(
    tx: &WriteTx<'_>,
    row: StateRow,
    events: Vec<Event>,
) -> Result<Created, StoreError> {
    if let Some(key) = &row.idempotency_key {
        let existing: Option<String> = tx
            .prepare_cached("SELECT run_id FROM runs WHERE idempotency_key = ?1")
            .and_then(|mut stmt| stmt.query_row([key], |r| r.get(0)).optional())
            .map_err(db_error)?;
        if let Some(run_id) = existing {
            return Ok(Created::Existing { run_id });
        }
    }
    if run_exists(tx, &row.run_id)? {
        return Err(StoreError::Conflict(format!(
            "run {} already exists",
            row.run_id
        )));
    }
    tx.prepare_cached(
        "INSERT INTO runs (run_id, idempotency_key, mode, objective, status,
                           created_at_ms, updated_at_ms, state_json)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            row.run_id,
            row.idempotency_key,
            row.mode,
            row.objective,
            row.status,
            row.created_at_ms,
            row.updated_at_ms,
            row.state_json,
        ])
    })
    .map_err(db_error)?;
    insert_plan(tx, &row.run_id, row.plan.as_ref())?;
    let frames = append_events(tx, &row.run_id, events)?;
    Ok(Created::New { frames })
}

/// The run's state, if the run exists.
pub(super) fn load_state(conn: &Connection, run_id: &str) -> Result<Option<RunState>, StoreError> {
    let json: Option<String> = conn
        .prepare_cached("SELECT state_json FROM runs WHERE run_id = ?1")
        .and_then(|mut stmt| stmt.query_row([run_id], |r| r.get(0)).optional())
        .map_err(db_error)?;
    json.map(|json| decode(&json, "state", run_id)).transpose()
}

/// A finished run keeps its outcome, and plan versions only move forward: a late writer
/// (a retried transition, a cancel racing the end) gets a conflict instead of undoing them.
fn check_transition(tx: &WriteTx<'_>, row: &StateRow) -> Result<(), StoreError> {
    let stored: Option<(String, i64, i64)> = tx
        .prepare_cached(
            "SELECT status,
                    (SELECT COALESCE(MAX(version), 0) FROM plan_versions WHERE run_id = ?1),
                    lease_token
             FROM runs WHERE run_id = ?1",
        )
        .and_then(|mut stmt| {
            stmt.query_row([&row.run_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
        })
        .map_err(db_error)?;
    // An unknown run is reported as NotFound by the update that follows.
    let Some((status, plan_version, lease_token)) = stored else {
        return Ok(());
    };
    lease::check_fence(&row.run_id, lease_token, row.lease_token)?;
    let status: RunStatus = status
        .parse()
        .map_err(|e| StoreError::Corrupt(format!("run {}: {e}", row.run_id)))?;
    if status.is_terminal() && status.as_str() != row.status {
        return Err(StoreError::Conflict(format!(
            "run {} has finished ({status}); its status cannot change to {}",
            row.run_id, row.status
        )));
    }
    let new_version = row.plan.as_ref().map_or(0, |(v, _)| i64::from(*v));
    if new_version < plan_version {
        return Err(StoreError::Conflict(format!(
            "run {} is at plan version {plan_version}; a commit cannot take it back to {new_version}",
            row.run_id
        )));
    }
    Ok(())
}

/// Saves a transition's state (with its plan version) and appends its events; the caller
/// holds a write transaction.
pub(super) fn save_transition(
    tx: &WriteTx<'_>,
    row: StateRow,
    events: Vec<Event>,
) -> Result<Vec<Frame>, StoreError> {
    check_transition(tx, &row)?;
    let updated = tx
        .prepare_cached(
            "UPDATE runs SET state_json = ?1, status = ?2, updated_at_ms = ?3
             WHERE run_id = ?4",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                row.state_json,
                row.status,
                row.updated_at_ms,
                row.run_id
            ])
        })
        .map_err(db_error)?;
    if updated == 0 {
        return Err(StoreError::NotFound(row.run_id));
    }
    insert_plan(tx, &row.run_id, row.plan.as_ref())?;
    append_events(tx, &row.run_id, events)
}

fn insert_plan(
    tx: &WriteTx<'_>,
    run_id: &str,
    plan: Option<&(u32, String)>,
) -> Result<(), StoreError> {
    if let Some((version, json)) = plan {
        tx.prepare_cached(
            "INSERT INTO plan_versions (run_id, version, plan_json) VALUES (?1, ?2, ?3)
             ON CONFLICT (run_id, version) DO NOTHING",
        )
        .and_then(|mut stmt| stmt.execute(params![run_id, version, json]))
        .map_err(db_error)?;
    }
    Ok(())
}

/// What a state write stores, encoded before it goes to the blocking pool.
pub(super) struct StateRow {
    run_id: String,
    idempotency_key: Option<String>,
    mode: String,
    objective: String,
    status: &'static str,
    created_at_ms: i64,
    updated_at_ms: i64,
    state_json: String,
    /// The plan, when it has a version (version 0 is "no plan yet").
    plan: Option<(u32, String)>,
    /// The writer's lease token (the fence), if it holds one.
    lease_token: Option<u64>,
}

impl StateRow {
    pub(super) fn new(state: &RunState, now_ms: u64) -> Result<Self, StoreError> {
        let plan = if state.plan.version > 0 {
            Some((state.plan.version, encode(&state.plan, "plan")?))
        } else {
            None
        };
        Ok(Self {
            run_id: state.run_id.clone(),
            idempotency_key: state.request.idempotency_key.clone(),
            mode: state.request.mode.to_string(),
            objective: state.request.objective.clone(),
            status: state.status.as_str(),
            created_at_ms: saturating_i64(state.started_at_ms),
            updated_at_ms: saturating_i64(now_ms),
            state_json: encode(state, "run state")?,
            plan,
            lease_token: state.lease_token,
        })
    }
}
