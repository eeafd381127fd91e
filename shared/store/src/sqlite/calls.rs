//! Recorded model calls ([`CallLog`]): one row per (run, unit, index), kept until the
//! retention the store was opened with lapses (expired rows go when a store opens the file).

use async_trait::async_trait;
use orchestrator_core::ports::{CallLog, RecordedCall, StoreError};
use rusqlite::{Connection, params};

use super::{SqliteStore, db_error, saturating_i64};
use crate::codec::{decode, encode};

#[async_trait]
impl CallLog for SqliteStore {
    async fn record_call(&self, run_id: &str, call: &RecordedCall) -> Result<(), StoreError> {
        let json = encode(call, "model call")?;
        let run_id = run_id.to_owned();
        let unit = call.unit.key();
        let index = call.index;
        let expires = self
            .call_retention
            .map_or(0, |keep| call.started_at_ms + keep.as_millis() as u64);
        self.write(
            "",
            move |tx| {
                tx.prepare_cached(
                    "INSERT INTO model_calls (run_id, unit, idx, call_json, expires_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (run_id, unit, idx) DO UPDATE SET
                       call_json = excluded.call_json, expires_at_ms = excluded.expires_at_ms",
                )
                .and_then(|mut stmt| {
                    stmt.execute(params![run_id, unit, index, json, saturating_i64(expires)])
                })
                .map(drop)
                .map_err(db_error)
            },
            |_| false,
        )
        .await
    }

    async fn calls(&self, run_id: &str) -> Result<Vec<RecordedCall>, StoreError> {
        let run_id = run_id.to_owned();
        let now = saturating_i64(self.clock.now_ms());
        self.call(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT call_json FROM model_calls
                     WHERE run_id = ?1 AND (expires_at_ms = 0 OR expires_at_ms > ?2)
                     ORDER BY unit, idx",
                )
                .map_err(db_error)?;
            let rows = stmt
                .query_map(params![run_id, now], |r| r.get::<_, String>(0))
                .map_err(db_error)?;
            rows.map(|json| decode(&json.map_err(db_error)?, "model call", &run_id))
                .collect()
        })
        .await
    }
}

/// Deletes the calls whose retention has lapsed.
pub(super) fn purge_expired(conn: &Connection, now_ms: u64) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM model_calls WHERE expires_at_ms > 0 AND expires_at_ms <= ?1")
        .and_then(|mut stmt| stmt.execute([saturating_i64(now_ms)]))
        .map(drop)
        .map_err(db_error)?;
    Ok(())
}
