//! Recorded model calls ([`CallLog`]): one row per (run, unit, index), kept until the
//! retention the store was opened with lapses (expired rows go when a store opens the file).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use orchestrator_core::ports::{CallLog, RecordedCall, StoreError};
use rusqlite::{Connection, params};

use super::{Shared, SqliteStore, WriteTx, db_error, saturating_i64};
use crate::codec::{decode, encode};

#[async_trait]
impl CallLog for SqliteStore {
    /// Queues the call for the next write transaction of this store (any run's), which then
    /// carries it: a call is written with the step result, plan or text that follows it
    /// rather than in a transaction of its own (a commit rewrites every page it touches, and
    /// this one sat between two model calls). A result is never stored before the calls that
    /// made it. When no write follows within [`CALL_FLUSH_AFTER`], the call is written alone.
    async fn record_call(&self, run_id: &str, call: &RecordedCall) -> Result<(), StoreError> {
        let expires = self
            .call_retention
            .map_or(0, |keep| call.started_at_ms + keep.as_millis() as u64);
        let pending = PendingCall {
            run_id: run_id.to_owned(),
            unit: call.unit.key(),
            index: call.index,
            json: encode(call, "model call")?,
            expires_at_ms: saturating_i64(expires),
        };
        let first = {
            let mut queue = self.shared.pending_calls();
            queue.push(pending);
            queue.len() == 1
        };
        if first && let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let shared = Arc::downgrade(&self.shared);
            runtime.spawn(async move {
                tokio::time::sleep(CALL_FLUSH_AFTER).await;
                if let Some(shared) = shared.upgrade() {
                    flush_pending(&shared);
                }
            });
        }
        Ok(())
    }

    async fn calls(&self, run_id: &str) -> Result<Vec<RecordedCall>, StoreError> {
        flush_pending(&self.shared);
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

/// How long a recorded call waits for another write to carry it before it is written alone.
pub const CALL_FLUSH_AFTER: Duration = Duration::from_millis(100);

/// A recorded call, encoded, waiting for the next write transaction.
pub(super) struct PendingCall {
    run_id: String,
    unit: String,
    index: u32,
    json: String,
    expires_at_ms: i64,
}

/// Writes `calls` in the open transaction. A call that cannot be written is logged and never
/// fails the write that carries it.
pub(super) fn insert_pending(tx: &WriteTx<'_>, calls: &[PendingCall]) {
    for call in calls {
        let inserted = tx
            .prepare_cached(
                "INSERT INTO model_calls (run_id, unit, idx, call_json, expires_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (run_id, unit, idx) DO UPDATE SET
                   call_json = excluded.call_json, expires_at_ms = excluded.expires_at_ms",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    call.run_id,
                    call.unit,
                    call.index,
                    call.json,
                    call.expires_at_ms
                ])
            });
        if let Err(e) = inserted {
            tracing::warn!(run_id = %call.run_id, unit = %call.unit, index = call.index, error = %e, "could not record a model call");
        }
    }
}

/// Writes the queued calls in a transaction of their own (nothing else came to carry them,
/// or they are about to be read, or the store is closing).
pub(super) fn flush_pending(shared: &Shared) {
    if shared.pending_calls().is_empty() {
        return;
    }
    if let Err(e) = shared.transact(|_| Ok(())) {
        tracing::warn!(error = %e, "could not record model calls; the next write carries them");
    }
}
