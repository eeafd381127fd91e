//! The SQLite schema and its migrations. `PRAGMA user_version` holds the number of migrations
//! applied; opening a database applies the missing ones, each in its own transaction.

use rusqlite::Connection;

/// Migration `i` takes the schema from version `i` to `i + 1`. Append only: never edit a
/// migration that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: runs, plan versions, step results, reports and the event log.
    "CREATE TABLE runs (
         run_id          TEXT PRIMARY KEY NOT NULL,
         idempotency_key TEXT UNIQUE,
         mode            TEXT NOT NULL,
         objective       TEXT NOT NULL,
         status          TEXT NOT NULL,
         created_at_ms   INTEGER NOT NULL,
         updated_at_ms   INTEGER NOT NULL,
         state_json      TEXT NOT NULL
     );
     CREATE INDEX runs_by_created ON runs (created_at_ms DESC, run_id DESC);
     CREATE TABLE plan_versions (
         run_id    TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
         version   INTEGER NOT NULL,
         plan_json TEXT NOT NULL,
         PRIMARY KEY (run_id, version)
     );
     CREATE TABLE step_results (
         run_id      TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
         step_id     TEXT NOT NULL,
         attempt     INTEGER NOT NULL,
         result_json TEXT NOT NULL,
         PRIMARY KEY (run_id, step_id, attempt)
     );
     CREATE TABLE reports (
         run_id      TEXT PRIMARY KEY NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
         report_json TEXT NOT NULL
     );
     CREATE TABLE events (
         run_id     TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
         seq        INTEGER NOT NULL,
         event_json TEXT NOT NULL,
         PRIMARY KEY (run_id, seq)
     ) WITHOUT ROWID;",
    // 2: run leases (owner, fencing token, expiry) and the index recovery pages through.
    "ALTER TABLE runs ADD COLUMN lease_owner TEXT;
     ALTER TABLE runs ADD COLUMN lease_token INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE runs ADD COLUMN lease_expires_at_ms INTEGER NOT NULL DEFAULT 0;
     CREATE INDEX runs_by_status ON runs (status, created_at_ms, run_id);",
    // 3: recorded model calls (request and reply), for replay and fork; 0 = kept forever. A
    // rowid table: a call's JSON (about 5 KB) mostly fits its leaf page there, where a WITHOUT
    // ROWID table would spill most of it to overflow pages.
    "CREATE TABLE model_calls (
         run_id        TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
         unit          TEXT NOT NULL,
         idx           INTEGER NOT NULL,
         expires_at_ms INTEGER NOT NULL DEFAULT 0,
         call_json     TEXT NOT NULL,
         UNIQUE (run_id, unit, idx)
     );
     CREATE INDEX model_calls_by_expiry ON model_calls (expires_at_ms) WHERE expires_at_ms > 0;",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

#[derive(Debug)]
pub enum MigrateError {
    /// The file was written by a newer build.
    TooNew {
        found: u32,
    },
    Sqlite(rusqlite::Error),
}

impl From<rusqlite::Error> for MigrateError {
    fn from(e: rusqlite::Error) -> Self {
        MigrateError::Sqlite(e)
    }
}

/// Brings the schema up to [`SCHEMA_VERSION`]: every missing migration in one immediate
/// transaction, so two processes opening a new file at once do not both apply one, and a new
/// file costs one commit rather than one per migration.
pub fn migrate(conn: &mut Connection) -> Result<(), MigrateError> {
    // Most opens find the schema current: a plain read says so without taking the write lock.
    let found: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    // Read again under the lock: another process may have migrated since.
    let found: u32 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(MigrateError::TooNew { found });
    }
    for sql in &MIGRATIONS[found as usize..] {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(conn: &Connection) -> u32 {
        conn.query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_file_of_an_older_schema_gets_the_missing_migrations_in_one_go() {
        // GIVEN a database left at the first schema version
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        // WHEN it is migrated
        migrate(&mut conn).unwrap();
        // THEN it is at the current version, with the later migrations' tables
        assert_eq!(version(&conn), SCHEMA_VERSION);
        let calls: u32 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'model_calls'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(calls, 1);
        // AND migrating again changes nothing
        migrate(&mut conn).unwrap();
        assert_eq!(version(&conn), SCHEMA_VERSION);
    }

    #[test]
    fn a_new_file_is_created_at_the_current_version() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        assert_eq!(version(&conn), SCHEMA_VERSION);
    }
}
