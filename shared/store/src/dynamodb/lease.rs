//! Run leases in DynamoDB. The lease lives in its own small item (`LEASE`), so the renewals a
//! long run makes cost one write unit each; its token is mirrored on the meta item, where every
//! fenced write checks it. A takeover writes both in one transaction and bumps the meta item's
//! `rev`, so a write the old owner prepared before it fails its condition, re-reads the meta
//! item and finds the new token.

use aws_sdk_dynamodb::types::{Put, TransactWriteItem};
use orchestrator_core::ports::{ActiveRun, Claim, Lease, RunCursor, StoreError};
use orchestrator_core::types::RunStatus;

use super::{
    DynamoDbStore, MAX_CONFLICTS, MetaUpdate, backoff, build_error, get_n, get_s, keys, n, need_n,
    s,
};

impl DynamoDbStore {
    pub(super) async fn take_lease(
        &self,
        run_id: &str,
        owner: &str,
        ttl_ms: u64,
        replacing: Option<&str>,
    ) -> Result<Claim, StoreError> {
        let pk = keys::run_pk(run_id);
        let mut conflicts = 0;
        loop {
            let now = self.clock.now_ms();
            let meta = self
                .read_meta(run_id)
                .await?
                .ok_or_else(|| StoreError::NotFound(run_id.to_owned()))?;
            if let Some(item) = self.get(&pk, keys::LEASE).await? {
                let expires: u64 = get_n(&item, keys::LEASE_EXPIRES).unwrap_or(0);
                let live = |holder: &&str| expires > now && Some(*holder) != replacing;
                if let Some(holder) = get_s(&item, keys::LEASE_OWNER).filter(live) {
                    return Ok(Claim::Held {
                        owner: holder.to_owned(),
                        expires_at_ms: expires,
                    });
                }
            }
            let lease = Lease {
                run_id: run_id.to_owned(),
                owner: owner.to_owned(),
                token: meta.lease_token + 1,
                expires_at_ms: now.saturating_add(ttl_ms),
            };
            let mut update = MetaUpdate::new("#c0 = :c0");
            update.names.insert("#c0".into(), keys::REV.into());
            update.values.insert(":c0".into(), n(meta.rev));
            update.set(keys::REV, n(meta.rev + 1));
            update.set(keys::LEASE_TOKEN, n(lease.token));
            let items = vec![
                self.tx_update(&pk, update)?,
                self.lease_put(&lease, meta.lease_token)?,
            ];
            if self.transact(items).await? {
                return Ok(Claim::Acquired(lease));
            }
            conflicts += 1;
            if conflicts > MAX_CONFLICTS {
                return Err(StoreError::Unavailable(format!(
                    "run {run_id}: gave up taking its lease after {MAX_CONFLICTS} tries lost to other writers"
                )));
            }
            backoff(conflicts).await;
        }
    }

    /// The lease item, written only if its token is still `previous` (or it does not exist).
    fn lease_put(&self, lease: &Lease, previous: u64) -> Result<TransactWriteItem, StoreError> {
        let mut item = Self::key(&keys::run_pk(&lease.run_id), keys::LEASE);
        item.insert(keys::LEASE_OWNER.into(), s(lease.owner.clone()));
        item.insert(keys::LEASE_TOKEN.into(), n(lease.token));
        item.insert(keys::LEASE_EXPIRES.into(), n(lease.expires_at_ms));
        let put = Put::builder()
            .table_name(self.table.as_ref())
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#pk) OR #t = :t")
            .expression_attribute_names("#pk", keys::PK)
            .expression_attribute_names("#t", keys::LEASE_TOKEN)
            .expression_attribute_values(":t", n(previous))
            .build()
            .map_err(build_error)?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    /// Sets the lease item's expiry if its token is still the lease's.
    async fn set_expiry(&self, lease: &Lease, expires_at_ms: u64) -> Result<bool, StoreError> {
        let mut update = MetaUpdate::new("#c0 = :c0");
        update.names.insert("#c0".into(), keys::LEASE_TOKEN.into());
        update.values.insert(":c0".into(), n(lease.token));
        update.set(keys::LEASE_EXPIRES, n(expires_at_ms));
        let pk = keys::run_pk(&lease.run_id);
        self.update_if(&pk, keys::LEASE, update).await
    }

    pub(super) async fn extend_lease(
        &self,
        lease: &Lease,
        ttl_ms: u64,
    ) -> Result<Lease, StoreError> {
        let expires_at_ms = self.clock.now_ms().saturating_add(ttl_ms);
        if !self.set_expiry(lease, expires_at_ms).await? {
            return Err(StoreError::LeaseLost(lease.run_id.clone()));
        }
        Ok(Lease {
            expires_at_ms,
            ..lease.clone()
        })
    }

    pub(super) async fn drop_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        // A lease another owner holds now is theirs: nothing to do.
        self.set_expiry(lease, 0).await.map(|_| ())
    }

    /// Reads the sparse active-runs index (eventually consistent, like every GSI: a run
    /// created a moment ago may show up a moment later).
    pub(super) async fn active_runs(
        &self,
        limit: usize,
        after: Option<&RunCursor>,
    ) -> Result<Vec<ActiveRun>, StoreError> {
        let bound = after.map(|c| keys::created_sk(c.created_at_ms, &c.run_id));
        let items = self
            .index_page(
                (
                    keys::GSI2,
                    keys::GSI2_PK,
                    keys::GSI2_PARTITION,
                    keys::GSI2_SK,
                ),
                bound,
                true,
                limit,
            )
            .await?;
        items
            .iter()
            .map(|item| {
                let run_id = get_s(item, keys::RUN_ID)
                    .ok_or_else(|| StoreError::Corrupt("an active run has no runId".into()))?
                    .to_owned();
                let status: RunStatus = get_s(item, keys::STATUS)
                    .unwrap_or_default()
                    .parse()
                    .map_err(|e| StoreError::Corrupt(format!("run {run_id}: {e}")))?;
                Ok(ActiveRun {
                    created_at_ms: need_n(item, keys::CREATED_AT, &run_id)?,
                    run_id,
                    status,
                })
            })
            .collect()
    }
}
