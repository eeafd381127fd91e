//! The table's key layout and attribute names, in one place (DYNAMODB.md describes the design).
//!
//! Numbers inside sort keys are zero-padded to a fixed width, so that string order is number
//! order and a `Query` returns events, plan versions and blob parts in sequence.

/// Partition key of every item: `RUN#<runId>` or `IDEM#<key>`.
pub const PK: &str = "pk";
/// Sort key: `META`, `EV#<seq>` (an item of events, keyed by the last one's seq), `PLAN#<version>`, `STEP#<stepId>#<attempt>`, `REPORT`,
/// `BLOB#<token>#<part>`, `CALL#<unit>#<index>` (and `IDEM` on idempotency items).
pub const SK: &str = "sk";
/// The runs-by-creation index: a constant partition and `<createdAt>#<runId>`.
pub const GSI1: &str = "byCreated";
pub const GSI1_PK: &str = "gsi1pk";
pub const GSI1_SK: &str = "gsi1sk";
/// The one partition of [`GSI1`]: every run's meta item, newest first by its sort key.
pub const GSI1_PARTITION: &str = "RUNS";

/// The active-runs index: only meta items of runs that have not finished carry its keys
/// (a sparse index), so recovery reads in-progress runs without reading every run.
pub const GSI2: &str = "byActive";
pub const GSI2_PK: &str = "gsi2pk";
pub const GSI2_SK: &str = "gsi2sk";
pub const GSI2_PARTITION: &str = "ACTIVE";

pub const META: &str = "META";
/// The run's state, beside its meta item: every write that adds events updates the meta item
/// (`rev`, `lastSeq`), and DynamoDB bills an update by the whole item, so the state, which
/// only commits change, is kept out of it. Its key starts with `META`, so one query reads both.
/// Meta items written before it hold the state themselves (and a state in parts is still named
/// on the meta item, see `DYNAMODB.md`).
pub const STATE: &str = "META#STATE";
/// The run's lease item: small, so renewing it costs one write unit (the meta item, with the
/// state inline, can be many).
pub const LEASE: &str = "LEASE";
/// Attributes of the lease item; `leaseToken` is mirrored on the meta item, where fenced
/// writes check it.
pub const LEASE_OWNER: &str = "leaseOwner";
pub const LEASE_TOKEN: &str = "leaseToken";
pub const LEASE_EXPIRES: &str = "leaseExpires";
pub const REPORT: &str = "REPORT";
pub const IDEM_SK: &str = "IDEM";
pub const EVENT_PREFIX: &str = "EV#";
pub const PLAN_PREFIX: &str = "PLAN#";
pub const STEP_PREFIX: &str = "STEP#";
pub const BLOB_PREFIX: &str = "BLOB#";
pub const TOKEN_PREFIX: &str = "TOKEN#";
pub const NOTE_PREFIX: &str = "NOTE#";
/// A recorded model call: `CALL#<unit>#<index>`.
pub const CALL_PREFIX: &str = "CALL#";
/// Attribute of a `TOKEN#` item: the Step Functions task token.
pub const TOKEN: &str = "token";

// Attributes of the run meta item.
pub const RUN_ID: &str = "runId";
pub const STATUS: &str = "status";
pub const MODE: &str = "mode";
pub const OBJECTIVE: &str = "objective";
pub const CREATED_AT: &str = "createdAt";
pub const UPDATED_AT: &str = "updatedAt";
pub const IDEM_KEY: &str = "idemKey";
/// The last event seq handed out; moved forward in the same transaction as the events.
pub const LAST_SEQ: &str = "lastSeq";
/// Bumped by every write of the meta item's state or seq: the optimistic lock.
pub const REV: &str = "rev";
pub const PLAN_VERSION: &str = "planVersion";
/// How many step results the run has: their write order.
pub const STEP_COUNT: &str = "stepCount";

// Attributes of items that carry a JSON document.
/// The JSON inline, when it is small enough.
pub const BODY: &str = "body";
/// Or the JSON deflated (binary), when that is smaller.
pub const BODY_Z: &str = "bodyZ";
/// Otherwise the token of its parts, and how many there are.
pub const BLOB: &str = "blob";
pub const PARTS: &str = "parts";
/// One part's bytes.
pub const DATA: &str = "data";

/// Of an event item: the seq of its first event.
pub const SEQ: &str = "seq";
/// Of an event item holding several events: their bodies, in seq order.
pub const EVENTS: &str = "events";
pub const VERSION: &str = "version";
pub const ORD: &str = "ord";
/// Epoch seconds after which DynamoDB may delete the item (events and their parts).
pub const TTL: &str = "ttl";

pub fn run_pk(run_id: &str) -> String {
    format!("RUN#{run_id}")
}

/// A recorded fact about a run (see `DynamoDbStore::put_note`).
pub fn note_sk(name: &str) -> String {
    format!("{NOTE_PREFIX}{name}")
}

/// The approval wait's task token of a checkpoint.
pub fn token_sk(checkpoint_id: &str) -> String {
    format!("{TOKEN_PREFIX}{checkpoint_id}")
}

pub fn idem_pk(key: &str) -> String {
    format!("IDEM#{key}")
}

/// 20 digits hold any u64.
pub fn event_sk(seq: u64) -> String {
    format!("{EVENT_PREFIX}{seq:020}")
}

pub fn plan_sk(version: u32) -> String {
    format!("{PLAN_PREFIX}{version:010}")
}

pub fn step_sk(step_id: &str, attempt: u32) -> String {
    format!("{STEP_PREFIX}{step_id}#{attempt:010}")
}

pub fn call_sk(unit: &str, index: u32) -> String {
    format!("{CALL_PREFIX}{unit}#{index:06}")
}

pub fn blob_prefix(token: &str) -> String {
    format!("{BLOB_PREFIX}{token}#")
}

pub fn blob_sk(token: &str, part: usize) -> String {
    format!("{BLOB_PREFIX}{token}#{part:06}")
}

/// Sorts runs by creation time, then id, like the SQLite store's `ORDER BY`.
pub fn created_sk(created_at_ms: u64, run_id: &str) -> String {
    format!("{created_at_ms:020}#{run_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_keys_sort_like_numbers() {
        // GIVEN seqs and creation times of different widths
        // THEN their keys sort as the numbers do
        assert!(event_sk(9) < event_sk(10));
        assert!(event_sk(10) < event_sk(u64::MAX));
        assert!(plan_sk(2) < plan_sk(10));
        assert!(created_sk(999, "z") < created_sk(1_000, "a"));
        // AND runs of the same millisecond sort by id, after every earlier millisecond
        assert!(created_sk(5_000, "a") < created_sk(5_000, "b"));
        assert!(created_sk(4_999, "z") < created_sk(5_000, "a"));
    }
}
