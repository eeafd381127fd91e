//! Run leases in SQLite: columns of the run's row, changed inside the same `BEGIN IMMEDIATE`
//! transactions as every other write, so a fenced write and a takeover never interleave, even
//! between processes sharing the file.

use orchestrator_core::ports::{ActiveRun, Claim, Lease, StoreError};
use rusqlite::{Connection, OptionalExtension, params};

use super::{WriteTx, db_error, saturating_i64, to_u64};

/// A write under lease `fence` is refused once the run's token has moved on.
pub(super) fn check_fence(run_id: &str, stored: i64, fence: Option<u64>) -> Result<(), StoreError> {
    match fence {
        Some(token) if saturating_i64(token) != stored => {
            Err(StoreError::LeaseLost(run_id.to_owned()))
        }
        _ => Ok(()),
    }
}

/// The run exists, and a fenced writer still holds its lease.
pub(super) fn check_writer(
    tx: &WriteTx<'_>,
    run_id: &str,
    fence: Option<u64>,
) -> Result<(), StoreError> {
    let token: Option<i64> = tx
        .prepare_cached("SELECT lease_token FROM runs WHERE run_id = ?1")
        .and_then(|mut stmt| stmt.query_row([run_id], |r| r.get(0)).optional())
        .map_err(db_error)?;
    let token = token.ok_or_else(|| StoreError::NotFound(run_id.to_owned()))?;
    check_fence(run_id, token, fence)
}

struct Held {
    owner: Option<String>,
    token: i64,
    expires_at_ms: i64,
}

fn read(tx: &WriteTx<'_>, run_id: &str) -> Result<Held, StoreError> {
    tx.prepare_cached(
        "SELECT lease_owner, lease_token, lease_expires_at_ms FROM runs WHERE run_id = ?1",
    )
    .and_then(|mut stmt| {
        stmt.query_row([run_id], |r| {
            Ok(Held {
                owner: r.get(0)?,
                token: r.get(1)?,
                expires_at_ms: r.get(2)?,
            })
        })
        .optional()
    })
    .map_err(db_error)?
    .ok_or_else(|| StoreError::NotFound(run_id.to_owned()))
}

fn write(tx: &WriteTx<'_>, lease: &Lease) -> Result<(), StoreError> {
    tx.prepare_cached(
        "UPDATE runs SET lease_owner = ?1, lease_token = ?2, lease_expires_at_ms = ?3
         WHERE run_id = ?4",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            lease.owner,
            saturating_i64(lease.token),
            saturating_i64(lease.expires_at_ms),
            lease.run_id
        ])
    })
    .map_err(db_error)?;
    Ok(())
}

pub(super) fn acquire(
    tx: &WriteTx<'_>,
    run_id: &str,
    owner: &str,
    now_ms: u64,
    ttl_ms: u64,
    replacing: Option<&str>,
) -> Result<Claim, StoreError> {
    let held = read(tx, run_id)?;
    let expires = to_u64(held.expires_at_ms, "lease_expires_at_ms")?;
    let live = |holder: &String| expires > now_ms && Some(holder.as_str()) != replacing;
    if let Some(holder) = held.owner.filter(live) {
        return Ok(Claim::Held {
            owner: holder,
            expires_at_ms: expires,
        });
    }
    let lease = Lease {
        run_id: run_id.to_owned(),
        owner: owner.to_owned(),
        token: to_u64(held.token, "lease_token")? + 1,
        expires_at_ms: now_ms.saturating_add(ttl_ms),
    };
    write(tx, &lease)?;
    Ok(Claim::Acquired(lease))
}

pub(super) fn renew(
    tx: &WriteTx<'_>,
    mut lease: Lease,
    now_ms: u64,
    ttl_ms: u64,
) -> Result<Lease, StoreError> {
    let held = read(tx, &lease.run_id)?;
    check_fence(&lease.run_id, held.token, Some(lease.token))?;
    lease.expires_at_ms = now_ms.saturating_add(ttl_ms);
    write(tx, &lease)?;
    Ok(lease)
}

pub(super) fn release(tx: &WriteTx<'_>, lease: &Lease) -> Result<(), StoreError> {
    let held = read(tx, &lease.run_id)?;
    if held.token == saturating_i64(lease.token) {
        write(
            tx,
            &Lease {
                expires_at_ms: 0,
                ..lease.clone()
            },
        )?;
    }
    Ok(())
}

pub(super) fn list_active(
    conn: &Connection,
    limit: i64,
    after: Option<(i64, String)>,
) -> Result<Vec<ActiveRun>, StoreError> {
    let (ms, id) = after.unzip();
    let mut stmt = conn
        .prepare_cached(
            "SELECT run_id, created_at_ms, status FROM runs
             WHERE status IN ('running', 'pending_hitl')
               AND (?1 IS NULL OR (created_at_ms, run_id) > (?1, ?2))
             ORDER BY created_at_ms, run_id
             LIMIT ?3",
        )
        .map_err(db_error)?;
    let rows = stmt
        .query_map(params![ms, id, limit], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .map_err(db_error)?;
    rows.map(|row| {
        let (run_id, created, status) = row.map_err(db_error)?;
        let status = status
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("run {run_id}: {e}")))?;
        Ok(ActiveRun {
            created_at_ms: to_u64(created, "created_at_ms")?,
            run_id,
            status,
        })
    })
    .collect()
}
