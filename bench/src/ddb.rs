//! Measured DynamoDB capacity: an SDK interceptor that sizes every request's items (writes) and
//! every response's items (reads) by DynamoDB's item-size rules and turns them into on-demand
//! write and read request units.
//!
//! Units: a standard write is 1 WRU per started KB of the item, a transactional one 2; a
//! strongly consistent read is 1 RRU per started 4 KB (per request, summed over a query's
//! items), an eventually consistent one half that. An UpdateItem is sized from its key and the
//! values it sets (DynamoDB bills the larger of the item before and after, which the request
//! alone does not show): a lower bound, small for this store's meta updates.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use aws_sdk_dynamodb::config::interceptors::{
    AfterDeserializationInterceptorContextRef, BeforeSerializationInterceptorContextRef,
};
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use aws_sdk_dynamodb::operation::delete_item::DeleteItemInput;
use aws_sdk_dynamodb::operation::get_item::{GetItemInput, GetItemOutput};
use aws_sdk_dynamodb::operation::put_item::PutItemInput;
use aws_sdk_dynamodb::operation::query::{QueryInput, QueryOutput};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsInput;
use aws_sdk_dynamodb::operation::update_item::UpdateItemInput;
use aws_sdk_dynamodb::types::AttributeValue;
use serde::Serialize;

type Item = HashMap<String, AttributeValue>;

/// Request counts and units, per operation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CapacityCounters {
    pub requests: BTreeMap<String, u64>,
    pub items_written: u64,
    pub bytes_written: u64,
    pub wru: f64,
    pub items_read: u64,
    pub bytes_read: u64,
    pub rru: f64,
    /// Of the writes, the recorded model calls' items (sort key `CALL#...`).
    #[serde(default)]
    pub call_items: u64,
    #[serde(default)]
    pub call_bytes: u64,
    #[serde(default)]
    pub call_wru: f64,
}

#[derive(Debug, Clone, Default)]
pub struct CapacityMeter {
    inner: Arc<Mutex<Meter>>,
}

#[derive(Debug, Default)]
struct Meter {
    counters: CapacityCounters,
    /// Consistency of the read in flight (requests of one client run one at a time per task;
    /// this only needs to be right for the benchmark's single run, so the last one is kept).
    consistent: bool,
}

impl CapacityMeter {
    pub fn counters(&self) -> CapacityCounters {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .counters
            .clone()
    }

    fn with(&self, f: impl FnOnce(&mut Meter)) {
        f(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

/// DynamoDB's size of an attribute value, bytes.
pub fn value_size(v: &AttributeValue) -> u64 {
    match v {
        AttributeValue::S(s) => s.len() as u64,
        AttributeValue::N(n) => number_size(n),
        AttributeValue::B(b) => b.as_ref().len() as u64,
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::Ss(v) => v.iter().map(|s| s.len() as u64).sum(),
        AttributeValue::Ns(v) => v.iter().map(|n| number_size(n)).sum(),
        AttributeValue::Bs(v) => v.iter().map(|b| b.as_ref().len() as u64).sum(),
        AttributeValue::L(l) => 3 + l.iter().map(|x| 1 + value_size(x)).sum::<u64>(),
        AttributeValue::M(m) => {
            3 + m
                .iter()
                .map(|(k, x)| 1 + k.len() as u64 + value_size(x))
                .sum::<u64>()
        }
        _ => 0,
    }
}

fn number_size(n: &str) -> u64 {
    let digits = n.chars().filter(char::is_ascii_digit).count() as u64;
    digits.div_ceil(2) + 1
}

/// DynamoDB's size of an item: attribute names plus values.
pub fn item_size(item: &Item) -> u64 {
    item.iter()
        .map(|(k, v)| k.len() as u64 + value_size(v))
        .sum()
}

/// A recorded model call's item.
fn is_call(item: &Item) -> bool {
    matches!(item.get("sk"), Some(AttributeValue::S(sk)) if sk.starts_with("CALL#"))
}

fn write_units(bytes: u64, transactional: bool) -> f64 {
    let units = bytes.div_ceil(1024).max(1) as f64;
    if transactional { 2.0 * units } else { units }
}

fn read_units(bytes: u64, consistent: bool) -> f64 {
    let units = bytes.div_ceil(4096).max(1) as f64;
    if consistent { units } else { units / 2.0 }
}

impl Meter {
    fn count(&mut self, op: &str) {
        *self.counters.requests.entry(op.to_owned()).or_default() += 1;
    }

    fn write(&mut self, bytes: u64, transactional: bool) {
        let c = &mut self.counters;
        c.items_written += 1;
        c.bytes_written += bytes;
        c.wru += write_units(bytes, transactional);
    }
}

impl Intercept for CapacityMeter {
    fn name(&self) -> &'static str {
        "CapacityMeter"
    }

    fn read_before_serialization(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let input = context.input();
        self.with(|m| {
            if let Some(i) = input.downcast_ref::<PutItemInput>() {
                m.count("PutItem");
                let bytes = i.item().map_or(0, item_size);
                m.write(bytes, false);
                if i.item().is_some_and(is_call) {
                    m.counters.call_items += 1;
                    m.counters.call_bytes += bytes;
                    m.counters.call_wru += write_units(bytes, false);
                }
            } else if let Some(i) = input.downcast_ref::<UpdateItemInput>() {
                m.count("UpdateItem");
                let bytes = i.key().map_or(0, item_size)
                    + i.expression_attribute_values()
                        .map_or(0, |v| v.values().map(value_size).sum());
                m.write(bytes, false);
            } else if let Some(i) = input.downcast_ref::<DeleteItemInput>() {
                m.count("DeleteItem");
                m.write(i.key().map_or(0, item_size), false);
            } else if let Some(i) = input.downcast_ref::<TransactWriteItemsInput>() {
                m.count("TransactWriteItems");
                for t in i.transact_items() {
                    let bytes = if let Some(p) = t.put() {
                        item_size(p.item())
                    } else if let Some(u) = t.update() {
                        item_size(u.key())
                            + u.expression_attribute_values()
                                .map_or(0, |v| v.values().map(value_size).sum())
                    } else if let Some(d) = t.delete() {
                        item_size(d.key())
                    } else if let Some(c) = t.condition_check() {
                        item_size(c.key())
                    } else {
                        0
                    };
                    m.write(bytes, true);
                }
            } else if let Some(i) = input.downcast_ref::<GetItemInput>() {
                m.count("GetItem");
                m.consistent = i.consistent_read().unwrap_or(false);
            } else if let Some(i) = input.downcast_ref::<QueryInput>() {
                m.count("Query");
                m.consistent = i.consistent_read().unwrap_or(false);
            } else {
                m.count("other");
            }
        });
        Ok(())
    }

    fn read_after_deserialization(
        &self,
        context: &AfterDeserializationInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Ok(output) = context.output_or_error() else {
            return Ok(());
        };
        self.with(|m| {
            let consistent = m.consistent;
            let c = &mut m.counters;
            let bytes_items: Option<(u64, u64)> =
                if let Some(o) = output.downcast_ref::<GetItemOutput>() {
                    Some((o.item().map_or(0, item_size), u64::from(o.item().is_some())))
                } else {
                    output.downcast_ref::<QueryOutput>().map(|o| {
                        (
                            o.items().iter().map(item_size).sum(),
                            o.items().len() as u64,
                        )
                    })
                };
            if let Some((bytes, items)) = bytes_items {
                c.items_read += items;
                c.bytes_read += bytes;
                c.rru += read_units(bytes, consistent);
            }
        });
        Ok(())
    }
}
