//! Express segments: a run on an Express state machine is a chain of executions, and each is
//! one numbered segment. `SEG#<number>` in the run's partition says which execution owns that
//! segment, claimed with a conditional write, so a duplicated start runs nothing twice.

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::ReturnValue;
use orchestrator_core::ports::StoreError;

use super::{DynamoDbStore, Item, keys, n, s};

const SEGMENT_PREFIX: &str = "SEG#";
const EXECUTION: &str = "execution";
const CLAIMED_AT: &str = "claimedAt";

fn segment_sk(number: u32) -> String {
    format!("{SEGMENT_PREFIX}{number:06}")
}

/// One claimed segment: its number, the execution that owns it, and when it was claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRecord {
    pub number: u32,
    pub execution: String,
    pub claimed_at_ms: u64,
}

/// How a claim went: this execution owns the segment (also when it claimed it before), or
/// another one does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentClaim {
    Claimed(SegmentRecord),
    Taken(SegmentRecord),
}

impl DynamoDbStore {
    /// Claims segment `number` of the run for `execution`. A retried claim by the same
    /// execution keeps its first claim time.
    pub async fn claim_segment(
        &self,
        run_id: &str,
        number: u32,
        execution: &str,
    ) -> Result<SegmentClaim, StoreError> {
        let pk = keys::run_pk(run_id);
        let sk = segment_sk(number);
        self.count_write("UpdateItem", 1);
        let ttl = self.ttl();
        let set = match ttl {
            Some(_) => {
                "SET #exec = :exec, #at = if_not_exists(#at, :now), #run = :run, #ttl = :ttl"
            }
            None => "SET #exec = :exec, #at = if_not_exists(#at, :now), #run = :run",
        };
        let mut update = self
            .client
            .update_item()
            .table_name(self.table.as_ref())
            .set_key(Some(Self::key(&pk, &sk)))
            .update_expression(set)
            .condition_expression("attribute_not_exists(#pk) OR #exec = :exec")
            .expression_attribute_names("#pk", keys::PK)
            .expression_attribute_names("#exec", EXECUTION)
            .expression_attribute_names("#at", CLAIMED_AT)
            .expression_attribute_names("#run", keys::RUN_ID)
            .expression_attribute_values(":exec", s(execution))
            .expression_attribute_values(":now", n(self.clock.now_ms()))
            .expression_attribute_values(":run", s(run_id))
            .return_values(ReturnValue::AllNew);
        if let Some(ttl) = ttl {
            update = update
                .expression_attribute_names("#ttl", keys::TTL)
                .expression_attribute_values(":ttl", n(ttl));
        }
        match update.send().await {
            Ok(out) => record_of(number, out.attributes.unwrap_or_default())
                .map(SegmentClaim::Claimed)
                .ok_or_else(|| malformed(run_id, number)),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => {
                let item = self.get(&pk, &sk).await?.unwrap_or_default();
                record_of(number, item)
                    .map(SegmentClaim::Taken)
                    .ok_or_else(|| malformed(run_id, number))
            }
            Err(e) => Err(self.fail("UpdateItem", e)),
        }
    }

    /// The run's highest claimed segment (none before its first claim).
    pub async fn latest_segment(&self, run_id: &str) -> Result<Option<SegmentRecord>, StoreError> {
        let out = self
            .prefix_query(&keys::run_pk(run_id), SEGMENT_PREFIX)
            .scan_index_forward(false)
            .limit(1)
            .send()
            .await
            .map_err(|e| self.fail("Query", e))?;
        let Some(item) = out.items.unwrap_or_default().into_iter().next() else {
            return Ok(None);
        };
        let number = item
            .get(keys::SK)
            .and_then(|v| v.as_s().ok())
            .and_then(|sk| sk.strip_prefix(SEGMENT_PREFIX))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| malformed(run_id, 0))?;
        record_of(number, item)
            .map(Some)
            .ok_or_else(|| malformed(run_id, number))
    }
}

fn record_of(number: u32, item: Item) -> Option<SegmentRecord> {
    let execution = item.get(EXECUTION)?.as_s().ok()?.clone();
    let claimed_at_ms = item.get(CLAIMED_AT)?.as_n().ok()?.parse().ok()?;
    Some(SegmentRecord {
        number,
        execution,
        claimed_at_ms,
    })
}

fn malformed(run_id: &str, number: u32) -> StoreError {
    StoreError::Corrupt(format!(
        "run {run_id}: segment {number}'s item lacks its execution or claim time"
    ))
}
