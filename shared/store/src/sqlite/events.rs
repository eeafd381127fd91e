//! The per-run event log: appends numbered in the writer's transaction, reads, and waits for
//! what comes next.

use std::time::Duration;

use async_trait::async_trait;
use orchestrator_core::event::{Event, Frame, WireFrame};
use orchestrator_core::ports::{EventLog, StoreError};
use rusqlite::params;

use super::{SqliteStore, WriteTx, db_error, lease, saturating_i64, tail, to_u64};
use crate::codec::{encode, frame_of, wire_frame_of};

impl SqliteStore {
    /// The run's stored events after `after` (seq and JSON), each made into a `T` by `make`.
    async fn stored_after<T: Send + 'static>(
        &self,
        run_id: &str,
        after: u64,
        limit: usize,
        make: fn(&str, u64, String) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
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
                make(&run_id, to_u64(seq, "seq")?, json)
            })
            .collect()
        })
        .await
    }

    async fn has_beyond(&self, run_id: &str, after: u64) -> Result<bool, StoreError> {
        let run_id = run_id.to_owned();
        self.call(move |conn| {
            conn.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM events WHERE run_id = ?1 AND seq > ?2)",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![run_id, saturating_i64(after)], |r| r.get(0))
            })
            .map_err(db_error)
        })
        .await
    }
}

/// Events must belong to the run whose log they go to: a mismatch is a caller's bug that
/// would put a foreign `runId` on the wire.
pub(super) fn check_events(run_id: &str, events: &[Event]) -> Result<(), StoreError> {
    match events.iter().find(|e| e.run_id != run_id) {
        Some(e) => Err(StoreError::Conflict(format!(
            "an event of run {} cannot go to the log of run {run_id}",
            e.run_id
        ))),
        None => Ok(()),
    }
}

/// Appends `events` after the run's last seq; the caller holds a write transaction.
pub(super) fn append_events(
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
        stmt.execute(params![run_id, saturating_i64(seq), &json])
            .map_err(db_error)?;
        if let Some(wire) = WireFrame::from_json(seq, json) {
            tx.appended.borrow_mut().push((run_id.to_owned(), wire));
        }
        frames.push(Frame { seq, event });
    }
    Ok(frames)
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
        let key = run_id;
        let run_id = run_id.to_owned();
        let events = events.to_vec();
        self.write(
            key,
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
        self.stored_after(run_id, after, limit, frame_of).await
    }

    async fn read_wire_after(
        &self,
        run_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<WireFrame>, StoreError> {
        if let Some(Some(frames)) = self.tail(run_id, |run| run.after(after, limit)) {
            return Ok(frames);
        }
        self.stored_after(run_id, after, limit, wire_frame_of).await
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
        let mut appended = self.watch_appends(run_id);
        let mut first = true;
        loop {
            let known = self.tail(run_id, tail::Watched::last_seq).flatten();
            if known.is_some_and(|last| last > after) {
                return Ok(());
            }
            // Caught up with this process's own appends to the run: the database would say the
            // same, so the first look is skipped (another process's appends are seen at the poll).
            let caught_up = first && known == Some(after);
            if !caught_up && self.has_beyond(run_id, after).await? {
                return Ok(());
            }
            first = false;
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(());
            }
            let nap = (deadline - now).min(self.poll.max(Duration::from_millis(10)));
            // Woken by an append to this run in this process: its events are committed, so
            // the caller reads them without a look first (for an `after` past the log's end
            // that read finds nothing and it waits again). Timed out, the look is what sees
            // another process's appends.
            if let Ok(Ok(())) = tokio::time::timeout(nap, appended.changed()).await {
                return Ok(());
            }
        }
    }
}
