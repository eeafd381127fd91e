//! A SQLite adapter for the [`RunStore`] and [`EventLog`] ports: the store behind local runs,
//! the CLI and tests. One file holds runs (state snapshots), plan versions, step results,
//! reports and the per-run event log.
//!
//! rusqlite is blocking; every call runs its statements inline, against one connection
//! behind a mutex (`SqliteStore::call` says why not on the blocking pool). Writers take `BEGIN IMMEDIATE` transactions, so seqs stay gap-free and
//! ordered even when several processes write the same file (SQLite serialises them; the busy
//! timeout makes the others wait instead of failing).
//!
//! [`EventLog::wait_beyond`] is woken in-process by every write that appends events, with no
//! polling delay. Writes from another process on the same file do not wake it; it re-checks
//! the database every [`CROSS_PROCESS_POLL`] (configurable) to see those.
//!
//! The parts: [`runs`] (rows, states, plan versions), [`listing`], [`results`] (step results
//! and reports), [`events`] (the log and [`EventLog`]), [`lease`], [`schema`], and
//! [`run_store`], where [`RunStore`]'s calls put them together in transactions.
//!
//! [`RunStore`]: orchestrator_core::ports::RunStore
//! [`EventLog`]: orchestrator_core::ports::EventLog
//! [`EventLog::wait_beyond`]: orchestrator_core::ports::EventLog::wait_beyond

mod calls;
mod events;
mod lease;
mod listing;
mod results;
mod run_store;
mod runs;
mod schema;
mod tail;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use orchestrator_core::event::WireFrame;
use orchestrator_core::ports::{Clock, StoreError, SystemClock};
use rusqlite::{Connection, ErrorCode};
use tokio::sync::watch;

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
    /// How long recorded model calls are kept; None: for ever.
    call_retention: Option<Duration>,
}

/// How long recorded model calls are kept unless the store is told otherwise.
pub const DEFAULT_CALL_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

struct Shared {
    conn: std::sync::Mutex<Connection>,
    /// Per run being watched: woken after every committed write that appended events to it,
    /// with those events kept as the wire carries them (`tail`). `wait_beyond` watches its
    /// run's only, so an append wakes the streams of its own run and not every stream of the
    /// process.
    appended: std::sync::Mutex<HashMap<String, tail::Watched>>,
    /// The file (or `:memory:`), for error messages and `Debug`.
    location: String,
    /// Recorded model calls waiting for the next write transaction (see `record_call`).
    pending_calls: std::sync::Mutex<Vec<calls::PendingCall>>,
}

impl Shared {
    fn lock_conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn pending_calls(&self) -> std::sync::MutexGuard<'_, Vec<calls::PendingCall>> {
        self.pending_calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn take_pending_calls(&self) -> Vec<calls::PendingCall> {
        std::mem::take(&mut *self.pending_calls())
    }

    /// Runs `f` in a write transaction (`BEGIN IMMEDIATE`) that also carries the model calls
    /// recorded since the last write, and commits it; gives back what `f` returned and the
    /// frames it appended. The calls go back in the queue when it does not commit.
    fn transact<T>(
        &self,
        f: impl FnOnce(&WriteTx<'_>) -> Result<T, StoreError>,
    ) -> Result<(T, Vec<(String, WireFrame)>), StoreError> {
        let conn = self.lock_conn();
        let tx = WriteTx::begin(&conn)?;
        let calls = self.take_pending_calls();
        calls::insert_pending(&tx, &calls);
        let committed = f(&tx).and_then(|written| {
            let frames = tx.appended.take();
            tx.commit().map(|()| (written, frames))
        });
        if committed.is_err() {
            self.requeue_calls(calls);
        }
        committed
    }

    /// Puts back calls whose transaction did not commit, ahead of any queued since.
    fn requeue_calls(&self, mut calls: Vec<calls::PendingCall>) {
        if !calls.is_empty() {
            let mut queue = self.pending_calls();
            calls.append(&mut queue);
            *queue = calls;
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        calls::flush_pending(self);
    }
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
        // A file that holds nothing yet is created without syncing (see `configure`).
        let new = std::fs::metadata(path).map_or(true, |m| m.len() == 0);
        let conn = Connection::open(path).map_err(|e| open_error(&location, e))?;
        if new {
            conn.pragma_update(None, "synchronous", "OFF")
                .map_err(|e| open_error(&location, e))?;
        }
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

    /// Keeps recorded model calls this long (None: for ever), and deletes those already older.
    pub fn with_call_retention(mut self, keep: Option<Duration>) -> Result<Self, StoreError> {
        self.call_retention = keep;
        let now = self.clock.now_ms();
        let conn = self
            .shared
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        calls::purge_expired(&conn, now)?;
        drop(conn);
        Ok(self)
    }

    fn init(mut conn: Connection, location: String) -> Result<Self, StoreError> {
        configure(&conn).map_err(|e| open_error(&location, e))?;
        schema::migrate(&mut conn).map_err(|e| match e {
            schema::MigrateError::TooNew { found } => StoreError::Unavailable(format!(
                "the database {location} has schema version {found}, newer than the {SCHEMA_VERSION} this build knows: use a newer build or another file"
            )),
            schema::MigrateError::Sqlite(e) => open_error(&location, e),
        })?;
        // From here on every commit is durable against a crash of the process, and the WAL is
        // synced at each checkpoint.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| open_error(&location, e))?;
        Ok(Self {
            shared: Arc::new(Shared {
                conn: std::sync::Mutex::new(conn),
                appended: std::sync::Mutex::new(HashMap::new()),
                location,
                pending_calls: std::sync::Mutex::default(),
            }),
            clock: Arc::new(SystemClock),
            poll: CROSS_PROCESS_POLL,
            call_retention: Some(DEFAULT_CALL_RETENTION),
        })
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
        let mut conn = self.shared.lock_conn();
        f(&mut conn)
    }

    /// Runs `f` in a write transaction (`BEGIN IMMEDIATE`) and commits it; when `appended`
    /// says the result added events to `run_id`'s log, wakes that run's `wait_beyond` callers.
    async fn write<T, F>(
        &self,
        run_id: &str,
        f: F,
        appended: fn(&T) -> bool,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTx<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        // Inline, like `call`: the model calls recorded since the last write go with this one.
        let (written, frames) = self.shared.transact(f)?;
        if appended(&written) {
            self.poke(run_id, frames);
        }
        Ok(written)
    }

    /// Wakes the `wait_beyond` callers of `run_id` in this store and its clones, keeping the
    /// run's `frames` just committed for them to read; forgets the run when none is left.
    fn poke(&self, run_id: &str, frames: Vec<(String, WireFrame)>) {
        let mut watched = self.watched();
        if let Some(run) = watched.get_mut(run_id) {
            if run.woken.receiver_count() == 0 {
                watched.remove(run_id);
            } else {
                run.push(
                    frames
                        .into_iter()
                        .filter(|(of, _)| of == run_id)
                        .map(|(_, frame)| frame),
                );
                run.woken.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }

    /// A receiver that changes with every append to `run_id`'s log in this process.
    fn watch_appends(&self, run_id: &str) -> watch::Receiver<u64> {
        let mut watched = self.watched();
        match watched.get(run_id) {
            Some(run) => run.woken.subscribe(),
            None => {
                let (run, receiver) = tail::Watched::new();
                watched.insert(run_id.to_owned(), run);
                receiver
            }
        }
    }

    /// The runs streams wait on. Held only to look up or change an entry, never across SQL.
    fn watched(&self) -> std::sync::MutexGuard<'_, HashMap<String, tail::Watched>> {
        self.shared
            .appended
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What this process's own appends say of `run_id`'s log, if a stream watches it (see
    /// [`tail`]).
    fn tail<T>(&self, run_id: &str, read: impl FnOnce(&tail::Watched) -> T) -> Option<T> {
        let watched = self.watched();
        watched.get(run_id).map(read)
    }
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // An in-memory database answers "memory"; either way the answer is not an error.
    // A new file switches to WAL and gets its schema with `synchronous` OFF (set by `open`):
    // the rollback journal of the switch and the WAL's creation would otherwise cost six
    // fsyncs before a run's first frame, for a file with nothing in it to lose. A power cut in
    // those milliseconds can leave the file unusable; it holds no runs, and the error says to
    // move it aside. `init` turns syncing on before any run is written.
    let _mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    conn.pragma_update(None, "foreign_keys", true)?;
    // Every statement of the hot paths is prepared once per connection and reused (preparing
    // costs more than running most of them); room for all of them.
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

/// Distinct statements the store prepares and keeps (about 20 today).
const STATEMENT_CACHE: usize = 64;

fn open_error(location: &str, e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StoreError::Corrupt(format!(
            "{location} is not a usable SQLite database ({e}): move it aside or choose another file"
        )),
        _ => StoreError::Unavailable(format!("cannot open the database {location}: {e}")),
    }
}

fn db_error(e: rusqlite::Error) -> StoreError {
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

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("negative {what}: {n}")))
}

/// A write transaction (`BEGIN IMMEDIATE`) that rolls back unless committed.
///
/// Why not rusqlite's `Transaction`: it parses `BEGIN` and `COMMIT` anew on every write
/// (`execute_batch`); here they are cached statements like the rest of the hot path, which
/// matters because every event batch is a write and a hand-off's write is on the critical path
/// between two model calls.
struct WriteTx<'c> {
    conn: &'c Connection,
    /// The events appended in this transaction, by run, as the wire carries them.
    appended: std::cell::RefCell<Vec<(String, WireFrame)>>,
}

impl<'c> WriteTx<'c> {
    fn begin(conn: &'c Connection) -> Result<Self, StoreError> {
        run_cached(conn, "BEGIN IMMEDIATE")?;
        Ok(WriteTx {
            conn,
            appended: std::cell::RefCell::default(),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn synchronous(store: &SqliteStore) -> i64 {
        let conn = store.shared.conn.lock().unwrap();
        conn.query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_new_file_is_created_unsynced_and_then_written_durably() {
        // GIVEN no file yet, and one already created
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.db");
        // WHEN each is opened
        let new = SqliteStore::open(&path).unwrap();
        drop(new);
        let existing = SqliteStore::open(&path).unwrap();
        // THEN both connections write with synchronous=NORMAL (1) once open, whatever the
        // creation used
        assert_eq!(synchronous(&existing), 1);
        let fresh = SqliteStore::open(&dir.path().join("other.db")).unwrap();
        assert_eq!(synchronous(&fresh), 1);
    }
}
