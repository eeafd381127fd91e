//! A DynamoDB adapter for the [`RunStore`] and [`EventLog`] ports: the store behind the AWS
//! deployment, with the same behaviour as the SQLite store (one conformance suite checks both).
//! `shared/store/DYNAMODB.md` describes the table design and how each access pattern maps to
//! one request.
//!
//! Correctness comes from conditional writes, not from locks:
//! - the run's meta item carries `rev` (an optimistic lock) and `lastSeq`; a write that adds
//!   events reads them, then moves `lastSeq` forward and puts the event items in ONE
//!   `TransactWriteItems` conditioned on `rev` being unchanged. A writer that loses the race
//!   reads again and retries with backoff, so seqs stay gap-free and ordered across processes.
//! - `commit` puts the state (and a new plan version) into that same transaction, so state and
//!   events land together; status transitions and plan versions are checked against what the
//!   transaction's condition proves is current.
//! - a run is created once: its meta item and its `IDEM#<key>` item are put with
//!   `attribute_not_exists`; a step result likewise, and the loser of a race reads the winner's.
//!
//! Throttling and transient errors are retried by the SDK (standard mode, see
//! [`DynamoDbConfig`]); a transaction cancelled by a condition, a conflict or throttling is
//! retried here.

mod body;
mod calls;
mod config;
mod events;
mod keys;
mod lease;
mod segments;
mod table;
mod transition;

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, Delete, Put, TransactWriteItem, Update,
};
use orchestrator_core::engine::RunState;
use orchestrator_core::event::{Event, Frame, WireFrame};
use orchestrator_core::ports::{
    ActiveRun, Claim, Clock, Committed, Created, EventLog, Lease, RunCursor, RunStore, StoreError,
    SystemClock, TransitionWrite,
};
use orchestrator_core::report::build_report;
use orchestrator_core::types::{Mode, Plan, RunReport, RunStatus, RunSummary, StepResult};
use tokio::sync::watch;

use body::{Body, StoredBody};
pub use config::{
    ConfigError, DEFAULT_EVENTS_TTL_DAYS, DEFAULT_MAX_ATTEMPTS, DEFAULT_TABLE, DynamoDbConfig,
};
pub use segments::{SegmentClaim, SegmentRecord};

type Item = HashMap<String, AttributeValue>;

/// DynamoDB's limits on one `TransactWriteItems`: 100 actions and 4 MB. The byte budget keeps
/// a margin for attribute names and keys.
const MAX_TX_ITEMS: usize = 100;
const MAX_TX_BYTES: usize = 3_500_000;

/// A write that keeps losing the race to other writers gives up after this many tries.
const MAX_CONFLICTS: u32 = 100;

/// `wait_beyond` polls this often at first (a step is probably streaming)...
const POLL_MIN: Duration = Duration::from_millis(20);
/// ...backing off to this while nothing comes.
const POLL_MAX: Duration = Duration::from_millis(250);

/// Runs, plans, step results, reports and event logs in one DynamoDB table.
///
/// Cheap to clone: clones share the SDK client, the write counter and the in-process wake-ups.
#[derive(Clone)]
pub struct DynamoDbStore {
    client: Client,
    table: Arc<str>,
    location: Arc<str>,
    events_ttl_days: u32,
    /// Recorded model calls get a `ttl` this many days after the call (0: kept for ever).
    calls_ttl_days: u32,
    clock: Arc<dyn Clock>,
    /// Write requests sent (PutItem, UpdateItem, DeleteItem, TransactWriteItems), for the
    /// writes-per-run figure.
    writes: Arc<AtomicU64>,
    /// Bumped after every write that appended events: waiters in this process wake at once
    /// instead of at their next poll.
    appended: Arc<watch::Sender<u64>>,
}

impl fmt::Debug for DynamoDbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynamoDbStore")
            .field("table", &self.table)
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// What the write paths need of the meta item (read with a projection: not the state).
#[derive(Debug, Clone)]
struct Meta {
    rev: u64,
    last_seq: u64,
    status: RunStatus,
    plan_version: u32,
    step_count: u64,
    body: Option<StoredBody>,
    /// The current lease's token (0: never leased).
    lease_token: u64,
}

/// A state to save along with events.
struct StateWrite {
    status: RunStatus,
    updated_at_ms: u64,
    body: Body,
    plan: Option<(u32, Body)>,
}

impl StateWrite {
    fn new(state: &RunState, now_ms: u64) -> Result<Self, StoreError> {
        Ok(Self {
            status: state.status,
            updated_at_ms: now_ms,
            body: Body::compressed(encode(state, "run state")?),
            plan: plan_body(state)?,
        })
    }

    fn plan_version(&self) -> u32 {
        self.plan.as_ref().map_or(0, |(v, _)| *v)
    }

    fn bodies(&self) -> impl Iterator<Item = &Body> {
        std::iter::once(&self.body).chain(self.plan.iter().map(|(_, b)| b))
    }
}

/// An event ready to be written.
struct Pending {
    event: Event,
    body: Body,
}

fn bodies_of(pending: &[Pending]) -> Vec<&Body> {
    pending.iter().map(|p| &p.body).collect()
}

/// The meta item's update in a write: expression, condition and their values.
struct MetaUpdate {
    set: Vec<String>,
    remove: Vec<&'static str>,
    condition: String,
    names: HashMap<String, String>,
    values: Item,
}

impl MetaUpdate {
    fn new(condition: &str) -> Self {
        Self {
            set: Vec::new(),
            remove: Vec::new(),
            condition: condition.to_owned(),
            names: HashMap::new(),
            values: HashMap::new(),
        }
    }

    /// `SET <attr> = <value>`, through placeholders (some names are reserved words).
    fn set(&mut self, attr: &'static str, value: AttributeValue) {
        let i = self.set.len();
        self.names.insert(format!("#u{i}"), attr.to_owned());
        self.values.insert(format!(":u{i}"), value);
        self.set.push(format!("#u{i} = :u{i}"));
    }

    fn remove(&mut self, attr: &'static str) {
        let i = self.remove.len();
        self.names.insert(format!("#x{i}"), attr.to_owned());
        self.remove.push(attr);
    }

    /// Saves a state: its status (out of the active-runs index once finished), its time, its
    /// plan version, and where its body is: named by its parts' token when it has parts, else
    /// in the state item beside (see [`keys::STATE`] and [`DynamoDbStore::state_items`]). A
    /// body an older write left on the meta item is removed: the reader takes that first.
    fn set_state(&mut self, write: &StateWrite) {
        self.set(keys::STATUS, s(write.status.as_str()));
        self.set(keys::UPDATED_AT, n(write.updated_at_ms));
        self.set(keys::PLAN_VERSION, n(write.plan_version()));
        if write.status.is_terminal() {
            self.remove(keys::GSI2_PK);
            self.remove(keys::GSI2_SK);
        }
        if let Body::Parts { token, parts } = &write.body {
            self.set(keys::BLOB, s(token.clone()));
            self.set(keys::PARTS, n(parts.len()));
        } else {
            self.remove(keys::BLOB);
            self.remove(keys::PARTS);
        }
        self.remove(keys::BODY);
        self.remove(keys::BODY_Z);
    }

    fn expression(&self) -> String {
        let mut expr = format!("SET {}", self.set.join(", "));
        if !self.remove.is_empty() {
            let removed: Vec<String> = (0..self.remove.len()).map(|i| format!("#x{i}")).collect();
            expr.push_str(&format!(" REMOVE {}", removed.join(", ")));
        }
        expr
    }
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Some(v),
        _ => None,
    }
}

fn get_n<T: std::str::FromStr>(item: &Item, name: &str) -> Option<T> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v.parse().ok(),
        _ => None,
    }
}

fn need_n<T: std::str::FromStr>(item: &Item, name: &str, run_id: &str) -> Result<T, StoreError> {
    get_n(item, name).ok_or_else(|| {
        StoreError::Corrupt(format!("run {run_id}: the item lacks a numeric {name}"))
    })
}

use crate::codec::{decode, encode, frame_of, inflate, wire_frame_of};

fn plan_body(state: &RunState) -> Result<Option<(u32, Body)>, StoreError> {
    if state.plan.version == 0 {
        return Ok(None);
    }
    Ok(Some((
        state.plan.version,
        Body::compressed(encode(&state.plan, "plan")?),
    )))
}

/// Events must belong to the run whose log they go to: a mismatch is a caller's bug that
/// would put a foreign `runId` on the wire.
fn check_events(run_id: &str, events: &[Event]) -> Result<(), StoreError> {
    match events.iter().find(|e| e.run_id != run_id) {
        Some(e) => Err(StoreError::Conflict(format!(
            "an event of run {} cannot go to the log of run {run_id}",
            e.run_id
        ))),
        None => Ok(()),
    }
}

/// A finished run keeps its outcome, and plan versions only move forward.
fn check_transition(run_id: &str, meta: &Meta, write: &StateWrite) -> Result<(), StoreError> {
    if meta.status.is_terminal() && write.status != meta.status {
        return Err(StoreError::Conflict(format!(
            "run {run_id} has finished ({}); its status cannot change to {}",
            meta.status, write.status
        )));
    }
    if write.plan_version() < meta.plan_version {
        return Err(StoreError::Conflict(format!(
            "run {run_id} is at plan version {}; a commit cannot take it back to {}",
            meta.plan_version,
            write.plan_version()
        )));
    }
    Ok(())
}

/// The meta item's update for one try of a log write: `rev` moves on, on condition that it
/// is still the one read (no one wrote in between); `lastSeq` moves past the `taken` events;
/// the state goes along when it is this try's to write.
fn log_update(meta: &Meta, taken: usize, state: Option<&StateWrite>) -> MetaUpdate {
    let mut update = MetaUpdate::new("#c0 = :c0");
    update.names.insert("#c0".into(), keys::REV.into());
    update.values.insert(":c0".into(), n(meta.rev));
    update.set(keys::REV, n(meta.rev + 1));
    update.set(keys::LAST_SEQ, n(meta.last_seq + taken as u64));
    if let Some(write) = state {
        update.set_state(write);
    }
    update
}

/// How many of `events` fit in one transaction next to `fixed_items` items of `fixed_bytes`:
/// whole event items (see [`events::packs`]), so the events taken are cut into items the same
/// way again. At least one item's when there is any: one is far below the limits.
fn fit(events: &[Pending], fixed_items: usize, fixed_bytes: usize) -> usize {
    let mut bytes = fixed_bytes;
    let mut taken = 0;
    for (items, pack) in (fixed_items..).zip(events::packs(events)) {
        if taken > 0 && (items >= MAX_TX_ITEMS || bytes + pack.bytes > MAX_TX_BYTES) {
            break;
        }
        bytes += pack.bytes;
        taken = pack.end;
    }
    taken
}

/// Sleeps before the next try of a write that lost a race: exponential, capped, jittered so
/// that writers that collided do not collide again.
async fn backoff(attempt: u32) {
    let cap = Duration::from_millis(2)
        .saturating_mul(1 << attempt.min(7))
        .min(Duration::from_millis(200));
    let random = std::collections::hash_map::RandomState::new().hash_one(attempt);
    let fraction = (random >> 11) as f64 / (1u64 << 53) as f64;
    tokio::time::sleep(cap.mul_f64(0.5 + 0.5 * fraction)).await;
}

fn build_error(e: impl fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("cannot build a DynamoDB request: {e}"))
}

impl DynamoDbStore {
    /// A store on `config`'s table, with a new SDK client. Does not touch the table: see
    /// [`Self::check_table`] and [`Self::create_table`].
    pub async fn connect(config: &DynamoDbConfig) -> Self {
        let client = config.client().await;
        Self::new(client, config)
    }

    /// A store over an existing client (built once per process, e.g. in a Lambda's main).
    pub fn new(client: Client, config: &DynamoDbConfig) -> Self {
        let (appended, _) = watch::channel(0);
        Self {
            client,
            table: Arc::from(config.table_name.as_str()),
            location: Arc::from(config.location().as_str()),
            events_ttl_days: config.events_ttl_days,
            calls_ttl_days: config.calls_ttl_days,
            clock: Arc::new(SystemClock),
            writes: Arc::new(AtomicU64::new(0)),
            appended: Arc::new(appended),
        }
    }

    /// Uses `clock` for `updatedAt` and event TTLs (the default is the system clock).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn table_name(&self) -> &str {
        &self.table
    }

    /// Write requests this store (and its clones) sent so far: each PutItem, UpdateItem,
    /// DeleteItem and TransactWriteItems counts one, whatever its number of items.
    pub fn write_requests(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Records a fact about a run under `name` (e.g. that its completion event went out), so
    /// a retried function does not do it again.
    pub async fn put_note(&self, run_id: &str, name: &str) -> Result<(), StoreError> {
        let mut item = Self::key(&keys::run_pk(run_id), &keys::note_sk(name));
        item.insert(
            keys::UPDATED_AT.into(),
            AttributeValue::N(self.clock.now_ms().to_string()),
        );
        self.put(item).await
    }

    /// Whether [`Self::put_note`] recorded `name` for the run.
    pub async fn has_note(&self, run_id: &str, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .get(&keys::run_pk(run_id), &keys::note_sk(name))
            .await?
            .is_some())
    }

    /// Keeps the Step Functions task token of a run's approval wait, so whoever answers the
    /// checkpoint (the streamer) can resume the execution. A later token for the same
    /// checkpoint (a retried wait) replaces the earlier one.
    pub async fn put_task_token(
        &self,
        run_id: &str,
        checkpoint_id: &str,
        token: &str,
    ) -> Result<(), StoreError> {
        let mut item = Self::key(&keys::run_pk(run_id), &keys::token_sk(checkpoint_id));
        item.insert(keys::TOKEN.into(), AttributeValue::S(token.to_owned()));
        self.put(item).await
    }

    /// The task token stored for the checkpoint, if its wait has started.
    pub async fn task_token(
        &self,
        run_id: &str,
        checkpoint_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let item = self
            .get(&keys::run_pk(run_id), &keys::token_sk(checkpoint_id))
            .await?;
        Ok(item
            .and_then(|mut i| i.remove(keys::TOKEN))
            .and_then(|v| v.as_s().ok().cloned()))
    }

    /// Every plan version stored for the run, oldest first (each as it was when first
    /// committed). Empty for an unknown run.
    pub async fn plan_versions(&self, run_id: &str) -> Result<Vec<Plan>, StoreError> {
        let pk = keys::run_pk(run_id);
        let items = self.query_prefix(&pk, keys::PLAN_PREFIX).await?;
        let mut plans = Vec::with_capacity(items.len());
        for item in items {
            let json = self.read_body(&pk, &item, run_id, "plan").await?;
            plans.push(decode(&json, "plan", run_id)?);
        }
        Ok(plans)
    }

    /// A store error for a failed SDK call, naming the table; a missing table says how to
    /// create it.
    fn fail<E, R>(&self, op: &str, e: SdkError<E, R>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: fmt::Debug + Send + Sync + 'static,
    {
        if e.code() == Some("ResourceNotFoundException") {
            return StoreError::Unavailable(format!(
                "the DynamoDB table {} does not exist at {}: create it with `orchestrator --store dynamodb --create-table <command>` (or start the emulator with infra/emulator.sh and pass --create-table), or set TABLE_NAME to an existing table",
                self.table, self.location
            ));
        }
        StoreError::Unavailable(format!(
            "DynamoDB {op} on table {} at {} failed: {}",
            self.table,
            self.location,
            DisplayErrorContext(&e)
        ))
    }

    fn count_write(&self, op: &'static str, items: usize) {
        let total = self.writes.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(op, items, total, table = %self.table, "dynamodb write");
    }

    /// Wakes the `wait_beyond` callers of this store and its clones.
    fn poke(&self) {
        self.appended.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn ttl(&self) -> Option<u64> {
        (self.events_ttl_days > 0)
            .then(|| self.clock.now_ms() / 1000 + u64::from(self.events_ttl_days) * 86_400)
    }

    fn key(pk: &str, sk: &str) -> Item {
        HashMap::from([(keys::PK.to_owned(), s(pk)), (keys::SK.to_owned(), s(sk))])
    }

    async fn get(&self, pk: &str, sk: &str) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(self.table.as_ref())
            .set_key(Some(Self::key(pk, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.fail("GetItem", e))?;
        Ok(out.item)
    }

    /// Reads the meta item without its state document.
    async fn read_meta(&self, run_id: &str) -> Result<Option<Meta>, StoreError> {
        let names = [
            keys::REV,
            keys::LAST_SEQ,
            keys::STATUS,
            keys::PLAN_VERSION,
            keys::STEP_COUNT,
            keys::BODY,
            keys::BODY_Z,
            keys::BLOB,
            keys::PARTS,
            keys::LEASE_TOKEN,
        ];
        // An inline body is projected too, only so that `StoredBody::of` can tell the forms
        // apart; only meta items written before the state item existed have one.
        let projection: Vec<String> = (0..names.len()).map(|i| format!("#p{i}")).collect();
        let out = self
            .client
            .get_item()
            .table_name(self.table.as_ref())
            .set_key(Some(Self::key(&keys::run_pk(run_id), keys::META)))
            .consistent_read(true)
            .projection_expression(projection.join(", "))
            .set_expression_attribute_names(Some(
                names
                    .iter()
                    .enumerate()
                    .map(|(i, name)| (format!("#p{i}"), (*name).to_owned()))
                    .collect(),
            ))
            .send()
            .await
            .map_err(|e| self.fail("GetItem", e))?;
        let Some(item) = out.item else {
            return Ok(None);
        };
        let status = get_s(&item, keys::STATUS)
            .ok_or_else(|| StoreError::Corrupt(format!("run {run_id}: the run has no status")))?
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("run {run_id}: {e}")))?;
        Ok(Some(Meta {
            rev: need_n(&item, keys::REV, run_id)?,
            last_seq: need_n(&item, keys::LAST_SEQ, run_id)?,
            status,
            plan_version: need_n(&item, keys::PLAN_VERSION, run_id)?,
            step_count: need_n(&item, keys::STEP_COUNT, run_id)?,
            body: StoredBody::of(&item),
            lease_token: get_n(&item, keys::LEASE_TOKEN).unwrap_or(0),
        }))
    }

    async fn meta_exists(&self, run_id: &str) -> Result<bool, StoreError> {
        Ok(self.read_meta(run_id).await?.is_some())
    }

    /// Runs a query to the end (or until `limit` items), page by page.
    async fn query_pages(
        &self,
        base: QueryFluentBuilder,
        limit: Option<usize>,
    ) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut request = base.clone().set_exclusive_start_key(start.take());
            if let Some(limit) = limit {
                let left = limit.saturating_sub(items.len());
                request = request.limit(i32::try_from(left).unwrap_or(i32::MAX));
            }
            let out = request.send().await.map_err(|e| self.fail("Query", e))?;
            items.extend(out.items.unwrap_or_default());
            if limit.is_some_and(|limit| items.len() >= limit) {
                items.truncate(limit.unwrap_or(usize::MAX));
                return Ok(items);
            }
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(items),
            }
        }
    }

    /// Up to `limit` items of one partition of an index (index, its partition key attribute,
    /// the partition, its sort key attribute), in sort key order (`forward`) or reversed, with
    /// sort keys beyond `bound` (after it going forward, before it going back).
    async fn index_page(
        &self,
        (index, pk_attr, partition, sk_attr): (&str, &str, &str, &str),
        bound: Option<String>,
        forward: bool,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let base = self
            .client
            .query()
            .table_name(self.table.as_ref())
            .index_name(index)
            .scan_index_forward(forward)
            .expression_attribute_names("#pk", pk_attr)
            .expression_attribute_values(":pk", s(partition));
        let base = match bound {
            None => base.key_condition_expression("#pk = :pk"),
            Some(bound) => base
                .key_condition_expression(if forward {
                    "#pk = :pk AND #sk > :bound"
                } else {
                    "#pk = :pk AND #sk < :bound"
                })
                .expression_attribute_names("#sk", sk_attr)
                .expression_attribute_values(":bound", s(bound)),
        };
        self.query_pages(base, Some(limit)).await
    }

    /// The items of a run's partition whose sort key starts with `prefix`, in key order.
    async fn query_prefix(&self, pk: &str, prefix: &str) -> Result<Vec<Item>, StoreError> {
        self.query_pages(self.prefix_query(pk, prefix), None).await
    }

    /// A consistent Query of the partition's items whose sort key starts with `prefix`.
    fn prefix_query(&self, pk: &str, prefix: &str) -> QueryFluentBuilder {
        self.client
            .query()
            .table_name(self.table.as_ref())
            .consistent_read(true)
            .key_condition_expression("#pk = :pk AND begins_with(#sk, :prefix)")
            .expression_attribute_names("#pk", keys::PK)
            .expression_attribute_names("#sk", keys::SK)
            .expression_attribute_values(":pk", s(pk))
            .expression_attribute_values(":prefix", s(prefix))
    }

    /// The JSON document an item holds, joined from its parts when it has them.
    async fn read_body(
        &self,
        pk: &str,
        item: &Item,
        run_id: &str,
        what: &str,
    ) -> Result<String, StoreError> {
        match StoredBody::of(item) {
            Some(body) => self.read_stored(pk, body, run_id, what).await,
            None => Err(StoreError::Corrupt(format!(
                "run {run_id}: the stored {what} has no body"
            ))),
        }
    }

    /// A stored document's JSON, joined from its parts when it has them.
    async fn read_stored(
        &self,
        pk: &str,
        body: StoredBody,
        run_id: &str,
        what: &str,
    ) -> Result<String, StoreError> {
        match body {
            StoredBody::Inline(json) => Ok(json),
            StoredBody::Compressed(bytes) => inflate(&bytes, what, run_id),
            StoredBody::Parts { token, count } => {
                let parts = self.query_prefix(pk, &keys::blob_prefix(&token)).await?;
                if parts.len() != count {
                    return Err(StoreError::Corrupt(format!(
                        "run {run_id}: the stored {what} has {} of its {count} parts",
                        parts.len()
                    )));
                }
                let mut bytes = Vec::new();
                for part in &parts {
                    match part.get(keys::DATA) {
                        Some(AttributeValue::B(blob)) => bytes.extend_from_slice(blob.as_ref()),
                        _ => {
                            return Err(StoreError::Corrupt(format!(
                                "run {run_id}: a part of the stored {what} has no data"
                            )));
                        }
                    }
                }
                String::from_utf8(bytes).map_err(|e| {
                    StoreError::Corrupt(format!(
                        "run {run_id}: the stored {what} is not UTF-8: {e}"
                    ))
                })
            }
        }
    }

    async fn put(&self, item: Item) -> Result<(), StoreError> {
        self.count_write("PutItem", 1);
        self.client
            .put_item()
            .table_name(self.table.as_ref())
            .set_item(Some(item))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.fail("PutItem", e))
    }

    /// Writes the part items of large bodies (before the items that name them).
    async fn write_parts<'a>(
        &self,
        pk: &str,
        bodies: impl IntoIterator<Item = &'a Body>,
        ttl: Option<u64>,
    ) -> Result<(), StoreError> {
        for body in bodies {
            for item in body.part_items(pk, ttl) {
                self.put(item).await?;
            }
        }
        Ok(())
    }

    /// Deletes parts nothing names any more. Best effort: a leftover part costs storage, not
    /// correctness (nothing reads a token no item names).
    async fn discard_parts(&self, pk: &str, tokens: impl IntoIterator<Item = String>) {
        for token in tokens {
            let parts = match self.query_prefix(pk, &keys::blob_prefix(&token)).await {
                Ok(parts) => parts,
                Err(e) => {
                    tracing::warn!(error = %e, pk, token, "cannot list parts to discard");
                    continue;
                }
            };
            for part in parts {
                let Some(sk) = get_s(&part, keys::SK) else {
                    continue;
                };
                self.count_write("DeleteItem", 1);
                let deleted = self
                    .client
                    .delete_item()
                    .table_name(self.table.as_ref())
                    .set_key(Some(Self::key(pk, sk)))
                    .send()
                    .await;
                if let Err(e) = deleted {
                    tracing::warn!(error = %DisplayErrorContext(&e), pk, sk, "cannot delete a part");
                }
            }
        }
    }

    /// Sends a transaction. `Ok(false)`: cancelled because a condition failed, another
    /// transaction conflicted or the items were throttled; the caller re-reads and retries.
    async fn transact(&self, items: Vec<TransactWriteItem>) -> Result<bool, StoreError> {
        self.count_write("TransactWriteItems", items.len());
        let sent = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await;
        let e = match sent {
            Ok(_) => return Ok(true),
            Err(e) => e,
        };
        match e.as_service_error() {
            Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) => {
                let codes: Vec<&str> = cancelled
                    .cancellation_reasons()
                    .iter()
                    .filter_map(|r| r.code())
                    .filter(|code| *code != "None")
                    .collect();
                let retryable = codes.iter().all(|code| {
                    matches!(
                        *code,
                        "ConditionalCheckFailed"
                            | "TransactionConflict"
                            | "ThrottlingError"
                            | "ProvisionedThroughputExceeded"
                    )
                });
                if retryable {
                    tracing::debug!(?codes, "transaction cancelled; retrying");
                    Ok(false)
                } else {
                    Err(StoreError::Unavailable(format!(
                        "DynamoDB cancelled a transaction on table {}: {codes:?}",
                        self.table
                    )))
                }
            }
            Some(TransactWriteItemsError::TransactionInProgressException(_)) => Ok(false),
            _ => Err(self.fail("TransactWriteItems", e)),
        }
    }

    /// Sends a lone conditional update of the item (pk, sk). `Ok(false)`: the condition
    /// failed.
    async fn update_if(&self, pk: &str, sk: &str, update: MetaUpdate) -> Result<bool, StoreError> {
        self.count_write("UpdateItem", 1);
        let sent = self
            .client
            .update_item()
            .table_name(self.table.as_ref())
            .set_key(Some(Self::key(pk, sk)))
            .update_expression(update.expression())
            .condition_expression(update.condition)
            .set_expression_attribute_names(Some(update.names))
            .set_expression_attribute_values(Some(update.values))
            .send()
            .await;
        match sent {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(self.fail("UpdateItem", e)),
        }
    }

    fn tx_update(&self, pk: &str, update: MetaUpdate) -> Result<TransactWriteItem, StoreError> {
        let update = Update::builder()
            .table_name(self.table.as_ref())
            .set_key(Some(Self::key(pk, keys::META)))
            .update_expression(update.expression())
            .condition_expression(update.condition)
            .set_expression_attribute_names(Some(update.names))
            .set_expression_attribute_values(Some(update.values))
            .build()
            .map_err(build_error)?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    fn tx_put(&self, item: Item, condition: Option<&str>) -> Result<TransactWriteItem, StoreError> {
        let mut put = Put::builder()
            .table_name(self.table.as_ref())
            .set_item(Some(item));
        if let Some(condition) = condition {
            put = put
                .condition_expression(condition)
                .expression_attribute_names("#pk", keys::PK);
        }
        Ok(TransactWriteItem::builder()
            .put(put.build().map_err(build_error)?)
            .build())
    }

    fn plan_item(pk: &str, version: u32, body: &Body) -> Item {
        let mut item = Self::key(pk, &keys::plan_sk(version));
        item.insert(keys::VERSION.into(), n(version));
        body.put_attrs(&mut item);
        item
    }

    fn encode_events(events: &[Event]) -> Result<Vec<Pending>, StoreError> {
        events
            .iter()
            .map(|event| {
                Ok(Pending {
                    event: event.clone(),
                    body: Body::compressed(encode(event, "event")?),
                })
            })
            .collect()
    }

    /// Appends `events` after the run's last seq, with `state` saved in the same transaction
    /// as the last of them. Events beyond one transaction's limits go in several, each
    /// gap-free; the state goes with the last, so a reader never sees a state whose events
    /// are missing.
    ///
    /// `fence`: the writer's lease token; every try checks it against the meta item it read,
    /// whose `rev` condition makes the check hold at the write (a takeover bumps `rev`).
    async fn write_log(
        &self,
        run_id: &str,
        events: &[Pending],
        mut state: Option<StateWrite>,
        fence: Option<u64>,
    ) -> Result<Vec<Frame>, StoreError> {
        let pk = keys::run_pk(run_id);
        let ttl = self.ttl();
        let mut frames = Vec::with_capacity(events.len());
        let mut next = 0;
        let mut conflicts = 0;
        loop {
            let meta = self
                .read_meta(run_id)
                .await?
                .ok_or_else(|| StoreError::NotFound(run_id.to_owned()))?;
            if fence.is_some_and(|token| token != meta.lease_token) {
                return Err(StoreError::LeaseLost(run_id.to_owned()));
            }
            if let Some(write) = &state {
                check_transition(run_id, &meta, write)?;
            }
            let new_plan = state
                .as_ref()
                .and_then(|w| w.plan.as_ref())
                .filter(|(version, _)| *version > meta.plan_version);
            let fixed_bytes = state.as_ref().map_or(0, |w| w.body.inline_len())
                + new_plan.map_or(0, |(_, b)| b.inline_len())
                + 1024;
            let rest = &events[next..];
            // Beside the meta item: the state's item and the new plan version.
            let take = fit(rest, 2 + usize::from(new_plan.is_some()), fixed_bytes);
            let with_state = state.is_some() && take == rest.len();
            if take == 0 && !with_state {
                return Ok(frames);
            }

            let this_state = state.as_ref().filter(|_| with_state);
            let plan = new_plan.filter(|_| with_state);
            let written = self
                .send_try(&pk, &meta, &rest[..take], this_state, plan, ttl)
                .await?;

            if !written {
                conflicts += 1;
                if conflicts > MAX_CONFLICTS {
                    return Err(StoreError::Unavailable(format!(
                        "run {run_id}: gave up writing after {MAX_CONFLICTS} tries lost to other writers"
                    )));
                }
                backoff(conflicts).await;
                continue;
            }
            conflicts = 0;
            frames.extend(rest[..take].iter().enumerate().map(|(i, pending)| Frame {
                seq: meta.last_seq + 1 + i as u64,
                event: pending.event.clone(),
            }));
            next += take;
            if with_state && let Some(write) = state.take() {
                // The previous state's parts are named by nothing now.
                let old = meta.body.as_ref().and_then(StoredBody::token);
                if let Some(old) = old.filter(|old| Some(*old) != write.body.token()) {
                    self.discard_parts(&pk, [old.to_owned()]).await;
                }
            }
            if next == events.len() && state.is_none() {
                return Ok(frames);
            }
        }
    }

    /// Sends one try of [`Self::write_log`]; `Ok(false)`: it lost to another writer. The
    /// meta item's update, the state's items (see [`Self::state_items`]), the new plan
    /// version (if it goes), and the events numbered on from the `lastSeq` read, in as few
    /// items as fit (see [`events::packs`]), in one transaction. The `rev` condition is what
    /// keeps two writers from taking the same seqs; each event item is also put only where
    /// none is, so one is never replaced. When only the meta item changes, a plain
    /// conditional update: half the cost of a transaction.
    async fn send_try(
        &self,
        pk: &str,
        meta: &Meta,
        events: &[Pending],
        state: Option<&StateWrite>,
        plan: Option<&(u32, Body)>,
        ttl: Option<u64>,
    ) -> Result<bool, StoreError> {
        let update = log_update(meta, events.len(), state);
        let mut beside = match state {
            Some(write) => self.state_items(pk, &write.body, meta.body.is_none())?,
            None => Vec::new(),
        };
        if let Some((version, body)) = plan {
            beside.push(self.tx_put(Self::plan_item(pk, *version, body), None)?);
        }
        if events.is_empty() && beside.is_empty() {
            return self.update_if(pk, keys::META, update).await;
        }
        let mut items = vec![self.tx_update(pk, update)?];
        items.extend(beside);
        self.push_event_items(&mut items, pk, events, meta.last_seq + 1, ttl)?;
        self.transact(items).await
    }

    /// The writes of a state's body beside the meta item's update: its item put (inline or
    /// deflated). A body in parts is named on the meta item instead, as it always was; then a
    /// state item an earlier write left (`in_item`: the meta item named no body) is deleted,
    /// so no reader finds an old state there.
    fn state_items(
        &self,
        pk: &str,
        body: &Body,
        in_item: bool,
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        if !body.is_parts() {
            let mut item = Self::key(pk, keys::STATE);
            body.put_attrs(&mut item);
            return Ok(vec![self.tx_put(item, None)?]);
        }
        if !in_item {
            return Ok(Vec::new());
        }
        let delete = Delete::builder()
            .table_name(self.table.as_ref())
            .set_key(Some(Self::key(pk, keys::STATE)))
            .build()
            .map_err(build_error)?;
        Ok(vec![TransactWriteItem::builder().delete(delete).build()])
    }

    /// Puts `events`, numbered from `first`, into a transaction: an item per
    /// [`events::Pack`], each only where no item is.
    fn push_event_items(
        &self,
        items: &mut Vec<TransactWriteItem>,
        pk: &str,
        events: &[Pending],
        first: u64,
        ttl: Option<u64>,
    ) -> Result<(), StoreError> {
        for pack in events::packs(events) {
            let item = Self::pack_item(
                pk,
                first + pack.start as u64,
                &events[pack.start..pack.end],
                ttl,
            );
            items.push(self.tx_put(item, Some("attribute_not_exists(#pk)"))?);
        }
        Ok(())
    }

    /// Deletes the parts of bodies that were written for a write that did not happen.
    async fn discard_bodies<'a>(&self, pk: &str, bodies: impl IntoIterator<Item = &'a Body>) {
        let tokens: Vec<String> = bodies
            .into_iter()
            .filter_map(|b| b.token().map(str::to_owned))
            .collect();
        if !tokens.is_empty() {
            self.discard_parts(pk, tokens).await;
        }
    }

    async fn idem_owner(&self, key: &str) -> Result<Option<String>, StoreError> {
        let item = self.get(&keys::idem_pk(key), keys::IDEM_SK).await?;
        Ok(item.and_then(|item| get_s(&item, keys::RUN_ID).map(str::to_owned)))
    }

    async fn create(
        &self,
        state: &RunState,
        write: &StateWrite,
        events: &[Pending],
    ) -> Result<Created, StoreError> {
        let run_id = state.run_id.as_str();
        let key = state.request.idempotency_key.as_deref();
        let fixed = 2 + usize::from(key.is_some()) + usize::from(write.plan.is_some());
        let fixed_bytes = write.body.inline_len()
            + write.plan.as_ref().map_or(0, |(_, b)| b.inline_len())
            + state.request.objective.len()
            + 2048;
        let take = fit(events, fixed, fixed_bytes);
        let items = self.create_items(state, write, &events[..take])?;

        let mut conflicts = 0;
        while !self.transact(items.clone()).await? {
            // Cancelled: by the idempotency key, by an existing run, or by a passing conflict.
            if let Some(key) = key
                && let Some(owner) = self.idem_owner(key).await?
            {
                return Ok(Created::Existing { run_id: owner });
            }
            if self.meta_exists(run_id).await? {
                return Err(StoreError::Conflict(format!("run {run_id} already exists")));
            }
            conflicts += 1;
            if conflicts > MAX_CONFLICTS {
                return Err(StoreError::Unavailable(format!(
                    "run {run_id}: gave up creating it after {MAX_CONFLICTS} cancelled tries"
                )));
            }
            backoff(conflicts).await;
        }
        let mut frames: Vec<Frame> = events[..take]
            .iter()
            .enumerate()
            .map(|(i, pending)| Frame {
                seq: i as u64 + 1,
                event: pending.event.clone(),
            })
            .collect();
        if take < events.len() {
            frames.extend(self.write_log(run_id, &events[take..], None, None).await?);
        }
        Ok(Created::New { frames })
    }

    /// The transaction that creates a run: its idempotency key's item (if it has a key), its
    /// meta item, its first plan version and its first `events` (seqs from 1). The key and the
    /// meta item are put only where none is, so a run is created once.
    fn create_items(
        &self,
        state: &RunState,
        write: &StateWrite,
        events: &[Pending],
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        let run_id = state.run_id.as_str();
        let pk = keys::run_pk(run_id);
        let key = state.request.idempotency_key.as_deref();
        let mut meta = Self::meta_item(&pk, state, write);
        meta.insert(keys::LAST_SEQ.into(), n(events.len()));

        let ttl = self.ttl();
        let mut items = Vec::with_capacity(4);
        if let Some(key) = key {
            let mut idem = Self::key(&keys::idem_pk(key), keys::IDEM_SK);
            idem.insert(keys::RUN_ID.into(), s(run_id));
            items.push(self.tx_put(idem, Some("attribute_not_exists(#pk)"))?);
        }
        items.push(self.tx_put(meta, Some("attribute_not_exists(#pk)"))?);
        items.extend(self.state_items(&pk, &write.body, false)?);
        if let Some((version, body)) = &write.plan {
            items.push(self.tx_put(Self::plan_item(&pk, *version, body), None)?);
        }
        self.push_event_items(&mut items, &pk, events, 1, ttl)?;
        Ok(items)
    }

    /// A new run's meta item, but its `lastSeq`: in both listing indexes (the active one only
    /// while it has not finished), naming its first state's parts if it has parts (else the
    /// state goes in its own item, see [`Self::state_items`]).
    fn meta_item(pk: &str, state: &RunState, write: &StateWrite) -> Item {
        let run_id = state.run_id.as_str();
        let mut meta = Self::key(pk, keys::META);
        meta.insert(keys::GSI1_PK.into(), s(keys::GSI1_PARTITION));
        meta.insert(
            keys::GSI1_SK.into(),
            s(keys::created_sk(state.started_at_ms, run_id)),
        );
        if !state.status.is_terminal() {
            meta.insert(keys::GSI2_PK.into(), s(keys::GSI2_PARTITION));
            meta.insert(
                keys::GSI2_SK.into(),
                s(keys::created_sk(state.started_at_ms, run_id)),
            );
        }
        meta.insert(keys::RUN_ID.into(), s(run_id));
        meta.insert(keys::STATUS.into(), s(state.status.as_str()));
        meta.insert(keys::MODE.into(), s(state.request.mode.to_string()));
        meta.insert(keys::OBJECTIVE.into(), s(state.request.objective.clone()));
        meta.insert(keys::CREATED_AT.into(), n(state.started_at_ms));
        meta.insert(keys::UPDATED_AT.into(), n(write.updated_at_ms));
        meta.insert(keys::REV.into(), n(1));
        meta.insert(keys::PLAN_VERSION.into(), n(write.plan_version()));
        meta.insert(keys::STEP_COUNT.into(), n(0));
        if let Some(key) = state.request.idempotency_key.as_deref() {
            meta.insert(keys::IDEM_KEY.into(), s(key));
        }
        if write.body.is_parts() {
            write.body.put_attrs(&mut meta);
        }
        meta
    }

    async fn step_item(
        &self,
        run_id: &str,
        step_id: &str,
        attempt: u32,
    ) -> Result<Option<StepResult>, StoreError> {
        let pk = keys::run_pk(run_id);
        match self.get(&pk, &keys::step_sk(step_id, attempt)).await? {
            None => Ok(None),
            Some(item) => {
                let json = self.read_body(&pk, &item, run_id, "step result").await?;
                decode(&json, "step result", run_id).map(Some)
            }
        }
    }

    async fn put_step(
        &self,
        run_id: &str,
        result: &StepResult,
        body: &Body,
    ) -> Result<StepResult, StoreError> {
        let pk = keys::run_pk(run_id);
        let mut conflicts = 0;
        loop {
            let meta = self
                .read_meta(run_id)
                .await?
                .ok_or_else(|| StoreError::NotFound(run_id.to_owned()))?;
            // A retried invocation finds the stored result without writing anything.
            if let Some(stored) = self
                .step_item(run_id, &result.step_id, result.attempt)
                .await?
            {
                return Ok(stored);
            }
            let ord = meta.step_count + 1;
            let mut update = MetaUpdate::new("#c0 = :c0");
            update.names.insert("#c0".into(), keys::STEP_COUNT.into());
            update.values.insert(":c0".into(), n(meta.step_count));
            update.set(keys::STEP_COUNT, n(ord));
            let mut item = Self::key(&pk, &keys::step_sk(&result.step_id, result.attempt));
            item.insert(keys::ORD.into(), n(ord));
            body.put_attrs(&mut item);
            let items = vec![
                self.tx_update(&pk, update)?,
                self.tx_put(item, Some("attribute_not_exists(#pk)"))?,
            ];
            if self.transact(items).await? {
                return Ok(result.clone());
            }
            conflicts += 1;
            if conflicts > MAX_CONFLICTS {
                return Err(StoreError::Unavailable(format!(
                    "run {run_id}: gave up writing a step result after {MAX_CONFLICTS} tries"
                )));
            }
            backoff(conflicts).await;
        }
    }

    async fn put_report_body(&self, run_id: &str, body: &Body) -> Result<(), StoreError> {
        let pk = keys::run_pk(run_id);
        let check = ConditionCheck::builder()
            .table_name(self.table.as_ref())
            .set_key(Some(Self::key(&pk, keys::META)))
            .condition_expression("attribute_exists(#pk)")
            .expression_attribute_names("#pk", keys::PK)
            .build()
            .map_err(build_error)?;
        let mut item = Self::key(&pk, keys::REPORT);
        body.put_attrs(&mut item);
        let items = vec![
            TransactWriteItem::builder().condition_check(check).build(),
            self.tx_put(item, None)?,
        ];
        let mut conflicts = 0;
        while !self.transact(items.clone()).await? {
            if !self.meta_exists(run_id).await? {
                return Err(StoreError::NotFound(run_id.to_owned()));
            }
            conflicts += 1;
            if conflicts > MAX_CONFLICTS {
                return Err(StoreError::Unavailable(format!(
                    "run {run_id}: gave up writing the report after {MAX_CONFLICTS} tries"
                )));
            }
            backoff(conflicts).await;
        }
        Ok(())
    }
}

#[async_trait]
impl RunStore for DynamoDbStore {
    async fn create_run(&self, state: &RunState, events: &[Event]) -> Result<Created, StoreError> {
        check_events(&state.run_id, events)?;
        let write = StateWrite::new(state, self.clock.now_ms())?;
        let pending = Self::encode_events(events)?;
        let pk = keys::run_pk(&state.run_id);
        self.write_parts(&pk, write.bodies(), None).await?;
        self.write_parts(&pk, bodies_of(&pending), self.ttl())
            .await?;
        let created = self.create(state, &write, &pending).await;
        match &created {
            Ok(Created::New { frames }) if !frames.is_empty() => self.poke(),
            Ok(Created::New { .. }) => {}
            Ok(Created::Existing { .. }) | Err(_) => {
                let bodies: Vec<&Body> = write.bodies().chain(bodies_of(&pending)).collect();
                self.discard_bodies(&pk, bodies).await;
            }
        }
        created
    }

    async fn commit(&self, state: &RunState, events: &[Event]) -> Result<Vec<Frame>, StoreError> {
        check_events(&state.run_id, events)?;
        let write = StateWrite::new(state, self.clock.now_ms())?;
        let pending = Self::encode_events(events)?;
        let pk = keys::run_pk(&state.run_id);
        let tokens: Vec<String> = write
            .bodies()
            .chain(bodies_of(&pending))
            .filter_map(|b| b.token().map(str::to_owned))
            .collect();
        self.write_parts(&pk, write.bodies(), None).await?;
        self.write_parts(&pk, bodies_of(&pending), self.ttl())
            .await?;
        let written = self
            .write_log(&state.run_id, &pending, Some(write), state.lease_token)
            .await;
        match &written {
            Ok(frames) if !frames.is_empty() => self.poke(),
            Ok(_) => {}
            Err(_) => self.discard_parts(&pk, tokens).await,
        }
        written
    }

    async fn load_run(&self, run_id: &str) -> Result<Option<RunState>, StoreError> {
        let pk = keys::run_pk(run_id);
        // The meta item and the state item beside it, in one request.
        let items = self.query_prefix(&pk, keys::META).await?;
        let sk_is = |item: &&Item, sk: &str| get_s(item, keys::SK) == Some(sk);
        let Some(meta) = items.iter().find(|i| sk_is(i, keys::META)) else {
            return Ok(None);
        };
        // A body on the meta item is the state: written before the state item existed, or in
        // parts. Else the state item holds it.
        let body = StoredBody::of(meta).or_else(|| {
            items
                .iter()
                .find(|i| sk_is(i, keys::STATE))
                .and_then(StoredBody::of)
        });
        let Some(body) = body else {
            return Err(StoreError::Corrupt(format!(
                "run {run_id}: the stored state has no body"
            )));
        };
        let json = self.read_stored(&pk, body, run_id, "state").await?;
        decode(&json, "state", run_id).map(Some)
    }

    async fn list_runs(
        &self,
        limit: usize,
        before: Option<&RunCursor>,
    ) -> Result<Vec<RunSummary>, StoreError> {
        // The index is read eventually consistent (GSIs offer nothing else): a run created a
        // moment ago may be missing from a listing for a moment.
        let bound = before.map(|c| keys::created_sk(c.created_at_ms, &c.run_id));
        let items = self
            .index_page(
                (
                    keys::GSI1,
                    keys::GSI1_PK,
                    keys::GSI1_PARTITION,
                    keys::GSI1_SK,
                ),
                bound,
                false,
                limit,
            )
            .await?;
        items
            .iter()
            .map(|item| {
                let run_id = get_s(item, keys::RUN_ID)
                    .ok_or_else(|| StoreError::Corrupt("a listed run has no runId".into()))?
                    .to_owned();
                let mode_str = get_s(item, keys::MODE).unwrap_or_default();
                let mode: Mode =
                    serde_json::from_value(serde_json::Value::String(mode_str.to_owned()))
                        .map_err(|_| {
                            StoreError::Corrupt(format!("run {run_id}: unknown mode {mode_str:?}"))
                        })?;
                let status: RunStatus = get_s(item, keys::STATUS)
                    .unwrap_or_default()
                    .parse()
                    .map_err(|e| StoreError::Corrupt(format!("run {run_id}: {e}")))?;
                Ok(RunSummary {
                    mode,
                    objective: get_s(item, keys::OBJECTIVE).unwrap_or_default().to_owned(),
                    status,
                    created_at_ms: need_n(item, keys::CREATED_AT, &run_id)?,
                    updated_at_ms: need_n(item, keys::UPDATED_AT, &run_id)?,
                    run_id,
                })
            })
            .collect()
    }

    async fn list_active(
        &self,
        limit: usize,
        after: Option<&RunCursor>,
    ) -> Result<Vec<ActiveRun>, StoreError> {
        self.active_runs(limit, after).await
    }

    async fn acquire_lease(
        &self,
        run_id: &str,
        owner: &str,
        ttl_ms: u64,
        replacing: Option<&str>,
    ) -> Result<Claim, StoreError> {
        self.take_lease(run_id, owner, ttl_ms, replacing).await
    }

    async fn renew_lease(&self, lease: &Lease, ttl_ms: u64) -> Result<Lease, StoreError> {
        self.extend_lease(lease, ttl_ms).await
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        self.drop_lease(lease).await
    }

    async fn put_step_result(
        &self,
        run_id: &str,
        result: &StepResult,
    ) -> Result<StepResult, StoreError> {
        let body = Body::compressed(encode(result, "step result")?);
        let pk = keys::run_pk(run_id);
        if !self.meta_exists(run_id).await? {
            return Err(StoreError::NotFound(run_id.to_owned()));
        }
        self.write_parts(&pk, [&body], None).await?;
        let stored = self.put_step(run_id, result, &body).await;
        // Parts of a result that lost the race (or failed) are named by nothing.
        let won = matches!(&stored, Ok(s) if s == result);
        if !won {
            self.discard_bodies(&pk, [&body]).await;
        }
        stored
    }

    async fn get_step_result(
        &self,
        run_id: &str,
        step_id: &str,
        attempt: u32,
    ) -> Result<Option<StepResult>, StoreError> {
        self.step_item(run_id, step_id, attempt).await
    }

    async fn step_results(&self, run_id: &str) -> Result<Vec<StepResult>, StoreError> {
        let pk = keys::run_pk(run_id);
        let mut items = self.query_prefix(&pk, keys::STEP_PREFIX).await?;
        items.sort_by_key(|item| get_n::<u64>(item, keys::ORD).unwrap_or(u64::MAX));
        let mut results = Vec::with_capacity(items.len());
        for item in &items {
            let json = self.read_body(&pk, item, run_id, "step result").await?;
            results.push(decode(&json, "step result", run_id)?);
        }
        Ok(results)
    }

    async fn put_report(&self, report: &RunReport) -> Result<(), StoreError> {
        let run_id = report.run_id.as_str();
        let pk = keys::run_pk(run_id);
        let body = Body::compressed(encode(report, "report")?);
        let old = self
            .get(&pk, keys::REPORT)
            .await?
            .and_then(|item| StoredBody::of(&item))
            .and_then(|b| b.token().map(str::to_owned));
        self.write_parts(&pk, [&body], None).await?;
        let put = self.put_report_body(run_id, &body).await;
        match (&put, old) {
            (Err(_), _) => self.discard_bodies(&pk, [&body]).await,
            (Ok(()), Some(old)) if Some(old.as_str()) != body.token() => {
                self.discard_parts(&pk, [old]).await;
            }
            (Ok(()), _) => {}
        }
        put
    }

    /// Composed of the other calls: the report first, so whoever sees the final status or
    /// `complete` can read it.
    async fn commit_finished(
        &self,
        state: &RunState,
        events: &[Event],
        now_ms: u64,
    ) -> Result<Vec<Frame>, StoreError> {
        // The commit refuses such a late writer too, but only after the report was written.
        if let Some(stored) = self.load_run(&state.run_id).await?
            && stored.status.is_terminal()
            && stored.status != state.status
        {
            return Err(StoreError::Conflict(format!(
                "run {} has finished ({}); its status cannot change to {}",
                state.run_id, stored.status, state.status
            )));
        }
        let results = self.step_results(&state.run_id).await?;
        self.put_report(&build_report(state, results, now_ms))
            .await?;
        self.commit(state, events).await
    }

    /// The handoffs of the attempts it opens go in the commit's transaction (see
    /// `transition.rs`).
    async fn commit_transition(&self, w: TransitionWrite<'_>) -> Result<Committed, StoreError> {
        self.transition(w).await
    }

    async fn get_report(&self, run_id: &str) -> Result<Option<RunReport>, StoreError> {
        let pk = keys::run_pk(run_id);
        let Some(item) = self.get(&pk, keys::REPORT).await? else {
            return Ok(None);
        };
        let json = self.read_body(&pk, &item, run_id, "report").await?;
        decode(&json, "report", run_id).map(Some)
    }
}

#[async_trait]
impl EventLog for DynamoDbStore {
    async fn append_fenced(
        &self,
        run_id: &str,
        events: &[Event],
        fence: Option<u64>,
    ) -> Result<Vec<Frame>, StoreError> {
        check_events(run_id, events)?;
        let pending = Self::encode_events(events)?;
        let pk = keys::run_pk(run_id);
        self.write_parts(&pk, bodies_of(&pending), self.ttl())
            .await?;
        let written = self.write_log(run_id, &pending, None, fence).await;
        match &written {
            Ok(frames) if !frames.is_empty() => self.poke(),
            Ok(_) => {}
            Err(_) => {
                self.discard_bodies(&pk, bodies_of(&pending)).await;
            }
        }
        written
    }

    async fn read_after(
        &self,
        run_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Frame>, StoreError> {
        let stored = self.stored_after(run_id, after, limit).await?;
        stored
            .into_iter()
            .map(|(seq, json)| frame_of(run_id, seq, json))
            .collect()
    }

    async fn read_wire_after(
        &self,
        run_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<WireFrame>, StoreError> {
        let stored = self.stored_after(run_id, after, limit).await?;
        stored
            .into_iter()
            .map(|(seq, json)| wire_frame_of(run_id, seq, json))
            .collect()
    }

    async fn wait_beyond(
        &self,
        run_id: &str,
        after: u64,
        timeout: Duration,
    ) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Subscribe before looking, so an append in this process that lands between the look
        // and the nap still cuts the nap short.
        let mut appended = self.appended.subscribe();
        let mut nap = POLL_MIN;
        loop {
            // Seqs are gap-free, so "anything after `after`" is "an item holds `after + 1` or
            // later".
            if after < u64::MAX && self.has_event_from(run_id, after + 1).await? {
                return Ok(());
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(());
            }
            let _ = tokio::time::timeout(nap.min(deadline - now), appended.changed()).await;
            nap = (nap * 2).min(POLL_MAX);
        }
    }
}
