//! A SQLite adapter for the [`RunStore`] and [`EventLog`] ports: the store behind local runs,
//! the CLI and tests. One file holds runs (state snapshots), plan versions, step results,
//! reports and the per-run event log.
//!
//! rusqlite is blocking, so every call runs on tokio's blocking pool against one connection
//! behind a mutex. Writers take `BEGIN IMMEDIATE` transactions, so seqs stay gap-free and
//! ordered even when several processes write the same file (SQLite serialises them; the busy
//! timeout makes the others wait instead of failing).
//!
//! [`EventLog::wait_beyond`] is woken in-process by every write that appends events, with no
//! polling delay. Writes from another process on the same file do not wake it; it re-checks
//! the database every [`CROSS_PROCESS_POLL`] (configurable) to see those.

mod dynamodb;
mod lease;
mod schema;

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use orchestrator_core::engine::RunState;
use orchestrator_core::event::{Event, Frame};
use orchestrator_core::ports::{
    ActiveRun, Claim, Clock, Committed, Created, EventLog, Lease, OpenedStep, RunCursor, RunStore,
    StoreError, SystemClock, TransitionWrite,
};
use orchestrator_core::report::build_report;
use orchestrator_core::types::{Mode, Plan, RunReport, RunStatus, RunSummary, StepResult};
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use tokio::sync::watch;

pub use dynamodb::{
    ConfigError, DEFAULT_EVENTS_TTL_DAYS, DEFAULT_MAX_ATTEMPTS, DEFAULT_TABLE, DynamoDbConfig,
    DynamoDbStore,
};
pub use schema::SCHEMA_VERSION;

/// How long a writer waits for another connection's lock before giving up with
/// [`StoreError::Unavailable`].
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How often [`EventLog::wait_beyond`] re-reads the database while it waits, by default, to
/// see events that another process appended (in-process appends wake it at once).
pub const CROSS_PROCESS_POLL: Duration = Duration::from_millis(250);

/// Runs, plans, step results, reports and event logs in one SQLite database.
///
/// Cheap to clone: clones share the connection and the append notifications.
#[derive(Clone)]
pub struct SqliteStore {
    shared: Arc<Shared>,
    clock: Arc<dyn Clock>,
    poll: Duration,
}

struct Shared {
    conn: std::sync::Mutex<Connection>,
    /// Bumped after every committed write that appended events; `wait_beyond` watches it.
    appended: watch::Sender<u64>,
    /// The file (or `:memory:`), for error messages and `Debug`.
    location: String,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("location", &self.shared.location)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` and brings its schema up to
    /// date. The parent directory must exist. Errors name the path: a file that is not a
    /// SQLite database is [`StoreError::Corrupt`]; one that cannot be opened for writing, or
    /// was written by a newer build, is [`StoreError::Unavailable`].
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let location = path.display().to_string();
        let conn = Connection::open(path).map_err(|e| open_error(&location, e))?;
        if conn
            .is_readonly(rusqlite::MAIN_DB)
            .map_err(|e| open_error(&location, e))?
        {
            return Err(StoreError::Unavailable(format!(
                "cannot open the database {location} for writing: the file is read-only"
            )));
        }
        Self::init(conn, location)
    }

    /// A private database in memory, gone when the last clone is dropped. For tests.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let location = ":memory:".to_owned();
        let conn = Connection::open_in_memory().map_err(|e| open_error(&location, e))?;
        Self::init(conn, location)
    }

    /// Uses `clock` for the runs' `updated_at_ms` (the default is the system clock).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// How often a waiting [`EventLog::wait_beyond`] re-reads the database for events that
    /// another process appended (default [`CROSS_PROCESS_POLL`]). In-process appends wake it
    /// at once regardless.
    pub fn with_cross_process_poll(mut self, every: Duration) -> Self {
        self.poll = every;
        self
    }

    fn init(mut conn: Connection, location: String) -> Result<Self, StoreError> {
        configure(&conn).map_err(|e| open_error(&location, e))?;
        schema::migrate(&mut conn).map_err(|e| match e {
            schema::MigrateError::TooNew { found } => StoreError::Unavailable(format!(
                "the database {location} has schema version {found}, newer than the {SCHEMA_VERSION} this build knows: use a newer build or another file"
            )),
            schema::MigrateError::Sqlite(e) => open_error(&location, e),
        })?;
        let (appended, _) = watch::channel(0);
        Ok(Self {
            shared: Arc::new(Shared {
                conn: std::sync::Mutex::new(conn),
                appended,
                location,
            }),
            clock: Arc::new(SystemClock),
            poll: CROSS_PROCESS_POLL,
        })
    }

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

    /// Runs `f` with the connection, on the calling task's thread, once the connection is free.
    ///
    /// Why inline and not on the blocking pool: a statement of this store takes tens of
    /// microseconds, less than the pool's two thread hand-offs (wake a pool thread, wake the
    /// runtime back), which were half the CPU of a run; and under load the pool grew a thread
    /// per waiting call (bench/README.md). The connection's lock is a plain (blocking) mutex,
    /// held only while SQL runs: an async one hands itself to the next waiting future, and a
    /// driver that keeps a step's future unpolled while it awaits the store itself (its loop
    /// does) then waits on a lock that future will never release. A waiter blocks its thread
    /// for the tens of microseconds a statement takes; the one long wait is another process
    /// holding the write lock (up to [`BUSY_TIMEOUT`]).
    async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        // A panic while the connection was held rolled its transaction back (`WriteTx` rolls
        // back on drop), so the connection is still usable.
        let mut conn = self
            .shared
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut conn)
    }

    /// Runs `f` in a write transaction (`BEGIN IMMEDIATE`) and commits it; when `appended`
    /// says the result added events, wakes the `wait_beyond` callers.
    async fn write<T, F>(&self, f: F, appended: fn(&T) -> bool) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTx<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let written = self
            .call(move |conn| {
                let tx = WriteTx::begin(conn)?;
                let written = f(&tx)?;
                tx.commit()?;
                Ok(written)
            })
            .await?;
        if appended(&written) {
            self.poke();
        }
        Ok(written)
    }

    /// Wakes the `wait_beyond` callers of this store and its clones.
    fn poke(&self) {
        self.shared.appended.send_modify(|n| *n = n.wrapping_add(1));
    }

    async fn has_beyond(&self, run_id: &str, after: u64) -> Result<bool, StoreError> {
        let run_id = run_id.to_owned();
        self.call(move |conn| {
            conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM events WHERE run_id = ?1 AND seq > ?2)",
                params![run_id, saturating_i64(after)],
                |r| r.get(0),
            )
            .map_err(db_error)
        })
        .await
    }
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // An in-memory database answers "memory"; either way the answer is not an error.
    let _mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    // Every statement of the hot paths is prepared once per connection and reused (preparing
    // costs more than running most of them); room for all of them.
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

/// Distinct statements the store prepares and keeps (about 20 today).
const STATEMENT_CACHE: usize = 64;

const STEP_RESULT_SQL: &str = "SELECT result_json FROM step_results
     WHERE run_id = ?1 AND step_id = ?2 AND attempt = ?3";

fn open_error(location: &str, e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StoreError::Corrupt(format!(
            "{location} is not a usable SQLite database ({e}): move it aside or choose another file"
        )),
        _ => StoreError::Unavailable(format!("cannot open the database {location}: {e}")),
    }
}

pub(crate) fn db_error(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::Unavailable(format!("the database is busy: {e}"))
        }
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            StoreError::Corrupt(e.to_string())
        }
        _ => StoreError::Unavailable(e.to_string()),
    }
}

pub(crate) fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(n: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("negative {what}: {n}")))
}

/// JSON for a stored document; shared by the SQLite and DynamoDB stores.
pub(crate) fn encode<T: serde::Serialize + ?Sized>(
    value: &T,
    what: &str,
) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Corrupt(format!("cannot encode the {what}: {e}")))
}

/// A stored document read back; unreadable JSON is `Corrupt`, naming the run.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    json: &str,
    what: &str,
    run_id: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::Corrupt(format!("run {run_id}: stored {what} is unreadable: {e}")))
}

/// A write transaction (`BEGIN IMMEDIATE`) that rolls back unless committed.
///
/// Why not rusqlite's `Transaction`: it parses `BEGIN` and `COMMIT` anew on every write
/// (`execute_batch`); here they are cached statements like the rest of the hot path, which
/// matters because every event batch is a write and a hand-off's write is on the critical path
/// between two model calls.
pub(crate) struct WriteTx<'c> {
    conn: &'c Connection,
}

impl<'c> WriteTx<'c> {
    fn begin(conn: &'c Connection) -> Result<Self, StoreError> {
        run_cached(conn, "BEGIN IMMEDIATE")?;
        Ok(WriteTx { conn })
    }

    fn commit(self) -> Result<(), StoreError> {
        run_cached(self.conn, "COMMIT")
    }
}

impl std::ops::Deref for WriteTx<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for WriteTx<'_> {
    fn drop(&mut self) {
        // Open after an error or a panic, and after a failed COMMIT (SQLite may keep the
        // transaction): the connection must not carry it into the next write. There is no
        // one left to report a failed rollback to.
        if !self.conn.is_autocommit() {
            let _ = run_cached(self.conn, "ROLLBACK");
        }
    }
}

fn run_cached(conn: &Connection, sql: &str) -> Result<(), StoreError> {
    conn.prepare_cached(sql)
        .and_then(|mut stmt| stmt.raw_execute())
        .map(drop)
        .map_err(db_error)
}

fn run_exists(tx: &WriteTx<'_>, run_id: &str) -> Result<bool, StoreError> {
    tx.prepare_cached("SELECT 1 FROM runs WHERE run_id = ?1")
        .and_then(|mut stmt| stmt.query_row([run_id], |_| Ok(())).optional())
        .map(|found| found.is_some())
        .map_err(db_error)
}

/// Events must belong to the run whose log they go to: a mismatch is a caller's bug that
/// would put a foreign `runId` on the wire.
fn check_events(run_id: &str, events: &[Event]) -> Result<(), StoreError> {
    match events.iter().find(|e| e.run_id != run_id) {
        Some(e) => Err(StoreError::Conflict(format!(
            "an event of run {} cannot go to the log of run {run_id}",
            e.run_id
        ))),
        None => Ok(()),
    }
}

/// Appends `events` after the run's last seq; the caller holds a write transaction.
fn append_events(
    tx: &WriteTx<'_>,
    run_id: &str,
    events: Vec<Event>,
) -> Result<Vec<Frame>, StoreError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let last: i64 = tx
        .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM events WHERE run_id = ?1")
        .and_then(|mut stmt| stmt.query_row([run_id], |r| r.get(0)))
        .map_err(db_error)?;
    let mut seq = to_u64(last, "seq")?;
    let mut stmt = tx
        .prepare_cached("INSERT INTO events (run_id, seq, event_json) VALUES (?1, ?2, ?3)")
        .map_err(db_error)?;
    let mut frames = Vec::with_capacity(events.len());
    for event in events {
        seq += 1;
        let json = encode(&event, "event")?;
        stmt.execute(params![run_id, saturating_i64(seq), json])
            .map_err(db_error)?;
        frames.push(Frame { seq, event });
    }
    Ok(frames)
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
fn save_transition(
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

/// Every stored result of the run, in the order they were written.
fn read_step_results(conn: &Connection, run_id: &str) -> Result<Vec<StepResult>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT result_json FROM step_results WHERE run_id = ?1 ORDER BY rowid")
        .map_err(db_error)?;
    let rows = stmt
        .query_map([run_id], |r| r.get::<_, String>(0))
        .map_err(db_error)?;
    rows.map(|json| decode(&json.map_err(db_error)?, "step result", run_id))
        .collect()
}

fn read_step_result(
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

fn taken_unreadable(run_id: &str, ours: &StepResult) -> StoreError {
    StoreError::Corrupt(format!(
        "run {run_id}: the result of step {} attempt {} conflicted but cannot be read",
        ours.step_id, ours.attempt
    ))
}

fn upsert_report(tx: &WriteTx<'_>, run_id: &str, json: &str) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO reports (run_id, report_json) VALUES (?1, ?2)
         ON CONFLICT (run_id) DO UPDATE SET report_json = excluded.report_json",
    )
    .and_then(|mut stmt| stmt.execute(params![run_id, json]))
    .map_err(db_error)?;
    Ok(())
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
struct StateRow {
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
    fn new(state: &RunState, now_ms: u64) -> Result<Self, StoreError> {
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

#[async_trait]
impl RunStore for SqliteStore {
    async fn create_run(&self, state: &RunState, events: &[Event]) -> Result<Created, StoreError> {
        check_events(&state.run_id, events)?;
        let row = StateRow::new(state, self.clock.now_ms())?;
        let events = events.to_vec();
        self.write(
            move |tx| {
                if let Some(key) = &row.idempotency_key {
                    let existing: Option<String> = tx
                        .query_row(
                            "SELECT run_id FROM runs WHERE idempotency_key = ?1",
                            [key],
                            |r| r.get(0),
                        )
                        .optional()
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
                tx.execute(
                    "INSERT INTO runs (run_id, idempotency_key, mode, objective, status,
                                       created_at_ms, updated_at_ms, state_json)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        row.run_id,
                        row.idempotency_key,
                        row.mode,
                        row.objective,
                        row.status,
                        row.created_at_ms,
                        row.updated_at_ms,
                        row.state_json,
                    ],
                )
                .map_err(db_error)?;
                insert_plan(tx, &row.run_id, row.plan.as_ref())?;
                let frames = append_events(tx, &row.run_id, events)?;
                Ok(Created::New { frames })
            },
            |created| matches!(created, Created::New { frames } if !frames.is_empty()),
        )
        .await
    }

    async fn commit(&self, state: &RunState, events: &[Event]) -> Result<Vec<Frame>, StoreError> {
        check_events(&state.run_id, events)?;
        let row = StateRow::new(state, self.clock.now_ms())?;
        let events = events.to_vec();
        self.write(
            move |tx| save_transition(tx, row, events),
            |frames| !frames.is_empty(),
        )
        .await
    }

    async fn load_run(&self, run_id: &str) -> Result<Option<RunState>, StoreError> {
        let run_id = run_id.to_owned();
        self.call(move |conn| {
            let json: Option<String> = conn
                .prepare_cached("SELECT state_json FROM runs WHERE run_id = ?1")
                .and_then(|mut stmt| stmt.query_row([&run_id], |r| r.get(0)).optional())
                .map_err(db_error)?;
            json.map(|json| decode(&json, "state", &run_id)).transpose()
        })
        .await
    }

    async fn list_runs(
        &self,
        limit: usize,
        before: Option<&RunCursor>,
    ) -> Result<Vec<RunSummary>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let before = before.map(|c| (saturating_i64(c.created_at_ms), c.run_id.clone()));
        self.call(move |conn| {
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
        })
        .await
    }

    async fn list_active(
        &self,
        limit: usize,
        after: Option<&RunCursor>,
    ) -> Result<Vec<ActiveRun>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let after = after.map(|c| (saturating_i64(c.created_at_ms), c.run_id.clone()));
        self.call(move |conn| lease::list_active(conn, limit, after))
            .await
    }

    async fn acquire_lease(
        &self,
        run_id: &str,
        owner: &str,
        ttl_ms: u64,
        replacing: Option<&str>,
    ) -> Result<Claim, StoreError> {
        let (run_id, owner) = (run_id.to_owned(), owner.to_owned());
        let replacing = replacing.map(str::to_owned);
        let now = self.clock.now_ms();
        self.write(
            move |tx| lease::acquire(tx, &run_id, &owner, now, ttl_ms, replacing.as_deref()),
            |_| false,
        )
        .await
    }

    async fn renew_lease(&self, held: &Lease, ttl_ms: u64) -> Result<Lease, StoreError> {
        let held = held.clone();
        let now = self.clock.now_ms();
        self.write(move |tx| lease::renew(tx, held, now, ttl_ms), |_| false)
            .await
    }

    async fn release_lease(&self, held: &Lease) -> Result<(), StoreError> {
        let held = held.clone();
        self.write(move |tx| lease::release(tx, &held), |_| false)
            .await
    }

    async fn put_step_result(
        &self,
        run_id: &str,
        result: &StepResult,
    ) -> Result<StepResult, StoreError> {
        let run_id = run_id.to_owned();
        let json = encode(result, "step result")?;
        let ours = result.clone();
        self.write(
            move |tx| {
                if !run_exists(tx, &run_id)? {
                    return Err(StoreError::NotFound(run_id));
                }
                if insert_step_result(tx, &run_id, &ours, &json)? {
                    return Ok(ours);
                }
                // The insert found (run, step, attempt) taken: the row is there to read.
                read_step_result(tx, &run_id, &ours.step_id, ours.attempt)?
                    .ok_or_else(|| taken_unreadable(&run_id, &ours))
            },
            |_| false,
        )
        .await
    }

    async fn get_step_result(
        &self,
        run_id: &str,
        step_id: &str,
        attempt: u32,
    ) -> Result<Option<StepResult>, StoreError> {
        let run_id = run_id.to_owned();
        let step_id = step_id.to_owned();
        self.call(move |conn| read_step_result(conn, &run_id, &step_id, attempt))
            .await
    }

    async fn step_results(&self, run_id: &str) -> Result<Vec<StepResult>, StoreError> {
        let run_id = run_id.to_owned();
        self.call(move |conn| read_step_results(conn, &run_id))
            .await
    }

    async fn put_report(&self, report: &RunReport) -> Result<(), StoreError> {
        let run_id = report.run_id.clone();
        let json = encode(report, "report")?;
        self.write(
            move |tx| {
                if !run_exists(tx, &run_id)? {
                    return Err(StoreError::NotFound(run_id));
                }
                upsert_report(tx, &run_id, &json)
            },
            |_| false,
        )
        .await
    }

    /// One transaction: the stored result, or the handoff appended and the results read.
    async fn open_step(
        &self,
        run_id: &str,
        step_id: &str,
        attempt: u32,
        handoff: &[Event],
        fence: Option<u64>,
    ) -> Result<OpenedStep, StoreError> {
        check_events(run_id, handoff)?;
        let run_id = run_id.to_owned();
        let step_id = step_id.to_owned();
        let handoff = handoff.to_vec();
        self.write(
            move |tx| {
                if let Some(stored) = read_step_result(tx, &run_id, &step_id, attempt)? {
                    return Ok(OpenedStep::Stored(stored));
                }
                lease::check_writer(tx, &run_id, fence)?;
                append_events(tx, &run_id, handoff)?;
                let results = read_step_results(tx, &run_id)?;
                Ok(OpenedStep::Open { results })
            },
            |opened| matches!(opened, OpenedStep::Open { .. }),
        )
        .await
    }

    /// One transaction: the report built from the results, the state and the events.
    async fn commit_finished(
        &self,
        state: &RunState,
        events: &[Event],
        now_ms: u64,
    ) -> Result<Vec<Frame>, StoreError> {
        check_events(&state.run_id, events)?;
        let row = StateRow::new(state, self.clock.now_ms())?;
        let events = events.to_vec();
        let state = state.clone();
        self.write(
            move |tx| {
                if !run_exists(tx, &row.run_id)? {
                    return Err(StoreError::NotFound(row.run_id));
                }
                let results = read_step_results(tx, &row.run_id)?;
                let report = encode(&build_report(&state, results, now_ms), "report")?;
                upsert_report(tx, &row.run_id, &report)?;
                save_transition(tx, row, events)
            },
            |frames| !frames.is_empty(),
        )
        .await
    }

    /// One transaction: the result, the state and events (with the report when the run ends)
    /// and the openings. A result that finds its attempt taken rolls nothing forward.
    async fn commit_transition(&self, w: TransitionWrite<'_>) -> Result<Committed, StoreError> {
        let run_id = w.state.run_id.clone();
        check_events(&run_id, w.events)?;
        for o in w.opens {
            check_events(&run_id, &o.handoff)?;
        }
        let row = StateRow::new(w.state, self.clock.now_ms())?;
        let events = w.events.to_vec();
        let result = w
            .result
            .map(|r| Ok::<_, StoreError>((r.clone(), encode(r, "step result")?)))
            .transpose()?;
        let opens = w.opens.to_vec();
        // The report is built inside the transaction, from the results it can see.
        let finished = w
            .state
            .status
            .is_terminal()
            .then(|| (w.state.clone(), w.now_ms));
        self.write(
            move |tx| {
                if !run_exists(tx, &run_id)? {
                    return Err(StoreError::NotFound(run_id));
                }
                if let Some((ours, json)) = result {
                    let inserted = insert_step_result(tx, &run_id, &ours, &json)?;
                    if !inserted {
                        let stored = read_step_result(tx, &run_id, &ours.step_id, ours.attempt)?
                            .ok_or_else(|| taken_unreadable(&run_id, &ours))?;
                        return Ok(Committed::ResultTaken(stored));
                    }
                }
                if let Some((state, now_ms)) = &finished {
                    let results = read_step_results(tx, &run_id)?;
                    let report = encode(&build_report(state, results, *now_ms), "report")?;
                    upsert_report(tx, &run_id, &report)?;
                }
                let frames = save_transition(tx, row, events)?;
                let mut opened = Vec::with_capacity(opens.len());
                let mut results = None;
                // The fence was checked with the state above, in this transaction.
                for o in opens {
                    if let Some(stored) = read_step_result(tx, &run_id, &o.step_id, o.attempt)? {
                        opened.push(OpenedStep::Stored(stored));
                        continue;
                    }
                    append_events(tx, &run_id, o.handoff)?;
                    if results.is_none() {
                        results = Some(read_step_results(tx, &run_id)?);
                    }
                    opened.push(OpenedStep::Open {
                        results: results.clone().unwrap_or_default(),
                    });
                }
                Ok(Committed::Written { frames, opened })
            },
            |committed| matches!(committed, Committed::Written { .. }),
        )
        .await
    }

    async fn get_report(&self, run_id: &str) -> Result<Option<RunReport>, StoreError> {
        let run_id = run_id.to_owned();
        self.call(move |conn| {
            let json: Option<String> = conn
                .prepare_cached("SELECT report_json FROM reports WHERE run_id = ?1")
                .and_then(|mut stmt| stmt.query_row([&run_id], |r| r.get(0)).optional())
                .map_err(db_error)?;
            json.map(|json| decode(&json, "report", &run_id))
                .transpose()
        })
        .await
    }
}

#[async_trait]
impl EventLog for SqliteStore {
    async fn append_fenced(
        &self,
        run_id: &str,
        events: &[Event],
        fence: Option<u64>,
    ) -> Result<Vec<Frame>, StoreError> {
        check_events(run_id, events)?;
        let run_id = run_id.to_owned();
        let events = events.to_vec();
        self.write(
            move |tx| {
                lease::check_writer(tx, &run_id, fence)?;
                append_events(tx, &run_id, events)
            },
            |frames| !frames.is_empty(),
        )
        .await
    }

    async fn read_after(
        &self,
        run_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Frame>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let run_id = run_id.to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, event_json FROM events
                     WHERE run_id = ?1 AND seq > ?2
                     ORDER BY seq
                     LIMIT ?3",
                )
                .map_err(db_error)?;
            let rows = stmt
                .query_map(params![run_id, saturating_i64(after), limit], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                })
                .map_err(db_error)?;
            rows.map(|row| {
                let (seq, json) = row.map_err(db_error)?;
                Ok(Frame {
                    seq: to_u64(seq, "seq")?,
                    event: decode(&json, "event", &run_id)?,
                })
            })
            .collect()
        })
        .await
    }

    async fn wait_beyond(
        &self,
        run_id: &str,
        after: u64,
        timeout: Duration,
    ) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Subscribe before looking, so an append that lands between the look and the wait
        // still wakes us (the receiver has seen only the value current at subscription).
        let mut appended = self.shared.appended.subscribe();
        loop {
            if self.has_beyond(run_id, after).await? {
                return Ok(());
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(());
            }
            let nap = (deadline - now).min(self.poll.max(Duration::from_millis(10)));
            // Woken, timed out or (never, while `self` lives) closed: look again either way.
            let _ = tokio::time::timeout(nap, appended.changed()).await;
        }
    }
}
