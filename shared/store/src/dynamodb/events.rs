//! The event log's items. The events of one write go in as few items as fit a size budget:
//! DynamoDB bills a write per started KB of each item (twice in a transaction), so ten
//! 300-byte events in one item cost what one of them cost alone.
//!
//! An item is keyed by the seq of its LAST event (`EV#<lastSeq>`) and holds its first seq in
//! `seq`. So one range query from `EV#<after+1>` finds every item with an event after `after`,
//! also the one `after` falls inside (whose earlier events the reader drops), and "is there an
//! event after `after`" is that query with a limit of one.
//!
//! An item of one event has the shape every event item had before packing (`seq`, its body
//! inline or in parts), so logs written then read the same. An item of several holds them in
//! `events`, a list whose elements are the event JSON, or a map naming the parts of a large
//! one (see [`Body::element`]).

use aws_sdk_dynamodb::types::AttributeValue;
use orchestrator_core::ports::StoreError;

use super::body::StoredBody;
use super::{DynamoDbStore, Item, Pending, keys, n, need_n, s};

/// Event bytes per item before a new item starts. Large enough that the rounding up to whole
/// KB stays a few percent of a batch, small enough that a reader resuming inside an item, or
/// a waiter probing it, reads a few 4 KB read units of it, not hundreds.
pub const PACK_MAX: usize = 16 * 1024;

/// An item's bytes besides its events: keys, `seq`, `ttl` and attribute names.
const ITEM_OVERHEAD: usize = 120;

/// The events `start..end` of a write, which go in one item of about `bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pack {
    pub start: usize,
    pub end: usize,
    pub bytes: usize,
}

/// Cuts a write's events into items, in order: each item takes events while they fit in
/// [`PACK_MAX`] (one larger event gets an item of its own). Greedy from the front, so a
/// prefix of `events` that ends where an item ends is cut the same way.
pub fn packs(events: &[Pending]) -> Vec<Pack> {
    let mut packs: Vec<Pack> = Vec::new();
    for (i, pending) in events.iter().enumerate() {
        // An element of the list: the value and one byte of list overhead.
        let size = pending.body.inline_len() + 1;
        match packs.last_mut() {
            Some(pack) if pack.bytes + size <= PACK_MAX + ITEM_OVERHEAD => {
                pack.end = i + 1;
                pack.bytes += size;
            }
            _ => packs.push(Pack {
                start: i,
                end: i + 1,
                bytes: ITEM_OVERHEAD + size,
            }),
        }
    }
    packs
}

/// The seq an event item's sort key names: its last event's.
fn last_seq_of(item: &Item, run_id: &str) -> Result<u64, StoreError> {
    super::get_s(item, keys::SK)
        .and_then(|sk| sk.strip_prefix(keys::EVENT_PREFIX))
        .and_then(|digits| digits.parse().ok())
        .ok_or_else(|| StoreError::Corrupt(format!("run {run_id}: an event item has a bad key")))
}

/// The events an item holds, with their seqs, in order.
pub fn stored_events(mut item: Item, run_id: &str) -> Result<Vec<(u64, StoredBody)>, StoreError> {
    let first: u64 = need_n(&item, keys::SEQ, run_id)?;
    let last = last_seq_of(&item, run_id)?;
    let bodies = match item.remove(keys::EVENTS) {
        Some(AttributeValue::L(list)) => list
            .into_iter()
            .map(StoredBody::of_element)
            .collect::<Option<Vec<_>>>(),
        _ => StoredBody::of(&item).map(|body| vec![body]),
    };
    let bodies = bodies.ok_or_else(|| {
        StoreError::Corrupt(format!(
            "run {run_id}: an event item at seq {first} has no body"
        ))
    })?;
    // The key and `seq` must agree with the number of events, or some would be misnumbered.
    if first.checked_add(bodies.len() as u64 - 1) != Some(last) || bodies.is_empty() {
        return Err(StoreError::Corrupt(format!(
            "run {run_id}: the event item of seqs {first}..={last} holds {} events",
            bodies.len()
        )));
    }
    Ok((first..).zip(bodies).collect())
}

impl DynamoDbStore {
    /// The item of `events`, the first of which gets seq `first`.
    pub(super) fn pack_item(pk: &str, first: u64, events: &[Pending], ttl: Option<u64>) -> Item {
        let last = first + events.len().saturating_sub(1) as u64;
        let mut item = Self::key(pk, &keys::event_sk(last));
        item.insert(keys::SEQ.into(), n(first));
        match events {
            [one] => one.body.put_attrs(&mut item),
            many => {
                let list = many.iter().map(|p| p.body.element()).collect();
                item.insert(keys::EVENTS.into(), AttributeValue::L(list));
            }
        }
        if let Some(ttl) = ttl {
            item.insert(keys::TTL.into(), n(ttl));
        }
        item
    }

    /// Up to `limit` events after `after`, in seq order, as stored: (seq, JSON). Each item the
    /// query returns holds at least one event after `after` (its key is its last seq), so
    /// asking for as many items as events are still wanted never reads more pages than needed.
    pub(super) async fn stored_after(
        &self,
        run_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        if limit == 0 || after == u64::MAX {
            return Ok(Vec::new());
        }
        let pk = keys::run_pk(run_id);
        let base = self.events_from(&pk, after + 1);
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let left = i32::try_from(limit - out.len()).unwrap_or(i32::MAX);
            let page = base
                .clone()
                .set_exclusive_start_key(start.take())
                .limit(left)
                .send()
                .await
                .map_err(|e| self.fail("Query", e))?;
            for item in page.items.unwrap_or_default() {
                for (seq, body) in stored_events(item, run_id)? {
                    if seq <= after {
                        continue;
                    }
                    out.push((seq, self.read_stored(&pk, body, run_id, "event").await?));
                    if out.len() == limit {
                        return Ok(out);
                    }
                }
            }
            match page.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(out),
            }
        }
    }

    /// Whether the run has an event at `seq` or later: the first item from there, keys only.
    pub(super) async fn has_event_from(&self, run_id: &str, seq: u64) -> Result<bool, StoreError> {
        let out = self
            .events_from(&keys::run_pk(run_id), seq)
            .limit(1)
            .projection_expression("#sk")
            .send()
            .await
            .map_err(|e| self.fail("Query", e))?;
        Ok(!out.items().is_empty())
    }

    /// A consistent query of the run's event items that hold seq `from` or later.
    fn events_from(
        &self,
        pk: &str,
        from: u64,
    ) -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder {
        self.client
            .query()
            .table_name(self.table.as_ref())
            .consistent_read(true)
            .key_condition_expression("#pk = :pk AND #sk BETWEEN :from AND :to")
            .expression_attribute_names("#pk", keys::PK)
            .expression_attribute_names("#sk", keys::SK)
            .expression_attribute_values(":pk", s(pk))
            .expression_attribute_values(":from", s(keys::event_sk(from)))
            .expression_attribute_values(":to", s(keys::event_sk(u64::MAX)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dynamodb::body::{Body, INLINE_MAX};

    fn pending(bytes: usize) -> Pending {
        let event = orchestrator_core::event::Event {
            kind: orchestrator_core::event::EventKind::Message {
                message: String::new(),
            },
            correlation_id: "c".into(),
            run_id: "r".into(),
        };
        Pending {
            event,
            body: Body::new("x".repeat(bytes)),
        }
    }

    #[test]
    fn small_events_share_an_item_until_the_budget() {
        // GIVEN a write of 40 events of 1 KB, then one over the inline limit, then two small
        let mut events: Vec<Pending> = (0..40).map(|_| pending(1024)).collect();
        events.push(pending(INLINE_MAX + 1));
        events.extend([pending(10), pending(10)]);

        // WHEN it is cut into items
        let packs = packs(&events);

        // THEN the 1 KB events fill items of at most the budget, in order, without a gap
        let per_item = PACK_MAX / 1025;
        assert_eq!(
            packs[0],
            Pack {
                start: 0,
                end: per_item,
                bytes: ITEM_OVERHEAD + per_item * 1025
            }
        );
        assert!(packs.windows(2).all(|w| w[0].end == w[1].start));
        assert_eq!(packs.last().map(|p| p.end), Some(events.len()));
        assert!(packs.iter().all(|p| p.bytes <= PACK_MAX + ITEM_OVERHEAD));
        // AND the large event (in parts: its item only names them) shares the last item with
        // the small ones after it
        let tail = packs.last().unwrap();
        assert!(tail.start <= 40 && tail.end == 43, "{tail:?}");
        // AND cutting a prefix that ends at an item's end cuts it the same way
        assert_eq!(super::packs(&events[..packs[1].end]), packs[..2].to_vec());
    }
}
