//! Recorded model calls ([`CallLog`]): one item per (run, unit, index) in the run's partition
//! (`CALL#<unit>#<index>`), its document inline (deflated) or in parts like every other, and a `ttl`
//! when the deployment keeps calls for a limited time.

use async_trait::async_trait;
use orchestrator_core::ports::{CallLog, RecordedCall, StoreError};

use super::body::Body;
use super::{DynamoDbStore, keys, n, s};
use crate::codec::{decode, encode};

#[async_trait]
impl CallLog for DynamoDbStore {
    async fn record_call(&self, run_id: &str, call: &RecordedCall) -> Result<(), StoreError> {
        let pk = keys::run_pk(run_id);
        let body = Body::compressed(encode(call, "model call")?);
        let ttl = (self.calls_ttl_days > 0)
            .then(|| call.started_at_ms / 1000 + u64::from(self.calls_ttl_days) * 86_400);
        self.write_parts(&pk, [&body], ttl).await?;
        let mut item = Self::key(&pk, &keys::call_sk(&call.unit.key(), call.index));
        body.put_attrs(&mut item);
        if let Some(ttl) = ttl {
            item.insert(keys::TTL.into(), n(ttl));
        }
        item.insert(keys::RUN_ID.into(), s(run_id));
        self.put(item).await
    }

    async fn calls(&self, run_id: &str) -> Result<Vec<RecordedCall>, StoreError> {
        let pk = keys::run_pk(run_id);
        let items = self.query_prefix(&pk, keys::CALL_PREFIX).await?;
        let mut calls = Vec::with_capacity(items.len());
        for item in &items {
            let json = self.read_body(&pk, item, run_id, "model call").await?;
            calls.push(decode(&json, "model call", run_id)?);
        }
        Ok(calls)
    }
}
