//! Measured DynamoDB capacity: an SDK interceptor that sizes every request's items (writes) and
//! every response's items (reads) by DynamoDB's item-size rules and turns them into on-demand
//! write and read request units.
//!
//! Units: a standard write is 1 WRU per started KB of the item, a transactional one 2; a
//! strongly consistent read is 1 RRU per started 4 KB (per request, summed over a query's
//! items), an eventually consistent one half that.
//!
//! DynamoDB bills by the WHOLE item, not by what a request carries:
//! - an UpdateItem (alone or in a transaction) costs by the larger of the item's size before
//!   and after the update, so setting one number on a 4 KB item is a 4 KB write; a PutItem
//!   that replaces an item, by the larger of the two;
//! - a DeleteItem and a transaction's ConditionCheck cost by the item's size;
//! - a GetItem or Query costs by the items' full sizes, whatever a projection returns.
//!
//! The request alone does not show those sizes, so the meter keeps what it has seen of each
//! item (keyed by `pk` and `sk`, this store's key): every attribute's size, from Puts, from
//! the updates it applies itself (SET of a value or `if_not_exists`, REMOVE), and from
//! GetItem and Query responses. Approximations: an item the meter has not seen is sized from
//! what the request shows (a lower bound: the key and the values set); a SET of an
//! expression other than a value or `if_not_exists` (arithmetic, `list_append`) and ADD keep
//! the larger of the old size and the values', DELETE keeps the old size; a write is applied
//! to the meter's picture when it is sent, also when its condition then fails (the run
//! measured here has one writer, so that does not happen).

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
use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem};
use aws_smithy_types::config_bag::{Storable, StoreReplace};
use serde::Serialize;

type Item = HashMap<String, AttributeValue>;

/// An item's key: its `pk` and `sk`.
type Key = (String, String);

/// What the meter knows of an item: each attribute's value size, bytes.
type Shape = HashMap<String, u64>;

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
    /// Every item seen in this run, by key.
    items: HashMap<Key, Shape>,
}

/// A read in flight, kept in its request's config bag until its response comes: how it reads
/// and which item a GetItem names (its response may be projected and carry no key).
#[derive(Debug, Clone)]
struct ReadInFlight {
    consistent: bool,
    key: Option<Key>,
}

impl Storable for ReadInFlight {
    type Storer = StoreReplace<Self>;
}

impl CapacityMeter {
    pub fn counters(&self) -> CapacityCounters {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .counters
            .clone()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Meter) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner))
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

fn shape_of(item: &Item) -> Shape {
    item.iter()
        .map(|(k, v)| (k.clone(), value_size(v)))
        .collect()
}

fn shape_size(shape: &Shape) -> u64 {
    shape.iter().map(|(k, v)| k.len() as u64 + v).sum()
}

fn key_of(item: &Item) -> Option<Key> {
    match (item.get("pk"), item.get("sk")) {
        (Some(AttributeValue::S(pk)), Some(AttributeValue::S(sk))) => {
            Some((pk.clone(), sk.clone()))
        }
        _ => None,
    }
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

/// An UpdateItem's expression and its placeholders.
struct UpdateRequest<'a> {
    key: &'a Item,
    expression: Option<&'a str>,
    names: Option<&'a HashMap<String, String>>,
    values: Option<&'a Item>,
}

impl UpdateRequest<'_> {
    fn name(&self, path: &str) -> String {
        // The top-level attribute a path changes (`a.b[0]` changes `a`).
        let top = path
            .split(['.', '['])
            .next()
            .unwrap_or(path)
            .trim()
            .to_owned();
        match self.names.and_then(|n| n.get(&top)) {
            Some(name) => name.clone(),
            None => top,
        }
    }

    fn value(&self, placeholder: &str) -> u64 {
        self.values
            .and_then(|v| v.get(placeholder.trim()))
            .map_or(0, value_size)
    }

    /// The summed sizes of the values an expression names.
    fn values_in(&self, expression: &str) -> u64 {
        expression
            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .filter(|word| word.starts_with(':'))
            .map(|word| self.value(word))
            .sum()
    }

    /// `shape` as the update leaves it (see the module's header for what is approximated).
    fn apply(&self, shape: &mut Shape) {
        let Some(expression) = self.expression else {
            return;
        };
        for (keyword, actions) in clauses(expression) {
            for action in actions {
                self.apply_action(&keyword, &action, shape);
            }
        }
    }

    fn apply_action(&self, keyword: &str, action: &str, shape: &mut Shape) {
        match keyword {
            "SET" => {
                let Some((path, rhs)) = action.split_once('=') else {
                    return;
                };
                let name = self.name(path);
                let rhs = rhs.trim();
                let old = shape.get(&name).copied();
                let size = if rhs.starts_with(':') {
                    self.value(rhs)
                } else if rhs.starts_with("if_not_exists") {
                    old.unwrap_or_else(|| self.values_in(rhs))
                } else {
                    old.unwrap_or(0).max(self.values_in(rhs))
                };
                shape.insert(name, size);
            }
            "REMOVE" => {
                shape.remove(&self.name(action));
            }
            "ADD" => {
                let mut words = action.split_whitespace();
                let (Some(path), Some(value)) = (words.next(), words.next()) else {
                    return;
                };
                let name = self.name(path);
                let size = shape
                    .get(&name)
                    .copied()
                    .unwrap_or(0)
                    .max(self.value(value));
                shape.insert(name, size);
            }
            _ => {}
        }
    }
}

/// An update expression's clauses (`SET`, `REMOVE`, `ADD`, `DELETE`), each with its actions:
/// split at the top-level commas, not at those inside a function's arguments.
fn clauses(expression: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut depth = 0usize;
    for word in expression.split_whitespace() {
        let upper = word.to_ascii_uppercase();
        if depth == 0 && matches!(upper.as_str(), "SET" | "REMOVE" | "ADD" | "DELETE") {
            out.push((upper, String::new()));
            continue;
        }
        depth = (depth + word.matches('(').count()).saturating_sub(word.matches(')').count());
        if let Some((_, body)) = out.last_mut() {
            body.push(' ');
            body.push_str(word);
        }
    }
    out.into_iter()
        .map(|(keyword, body)| (keyword, split_top_level(&body)))
        .collect()
}

fn split_top_level(body: &str) -> Vec<String> {
    let mut actions = Vec::new();
    let mut current = String::new();
    let mut depth = 0usize;
    for c in body.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                actions.push(std::mem::take(&mut current).trim().to_owned());
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    if !current.trim().is_empty() {
        actions.push(current.trim().to_owned());
    }
    actions
}

impl Meter {
    fn count(&mut self, op: &str) {
        *self.counters.requests.entry(op.to_owned()).or_default() += 1;
    }

    /// Bills a write of `bytes`; returns its units.
    fn write(&mut self, bytes: u64, transactional: bool) -> f64 {
        let units = write_units(bytes, transactional);
        let c = &mut self.counters;
        c.items_written += 1;
        c.bytes_written += bytes;
        c.wru += units;
        units
    }

    /// The size the meter knows of the item `key` names, at least the key's own.
    fn known_size(&self, key: &Item) -> u64 {
        let known = key_of(key)
            .and_then(|k| self.items.get(&k))
            .map_or(0, shape_size);
        known.max(item_size(key))
    }

    /// Bills a put by the larger of the item it replaces (if the meter saw one) and itself.
    fn put(&mut self, item: &Item, transactional: bool) {
        let bytes = item_size(item).max(self.known_size(item));
        let units = self.write(bytes, transactional);
        if is_call(item) {
            let c = &mut self.counters;
            c.call_items += 1;
            c.call_bytes += bytes;
            c.call_wru += units;
        }
        if let Some(key) = key_of(item) {
            self.items.insert(key, shape_of(item));
        }
    }

    /// Bills an update by the larger of the item before and after it, and keeps the after.
    fn update(&mut self, request: &UpdateRequest<'_>, transactional: bool) {
        let key = key_of(request.key);
        let mut shape = key
            .as_ref()
            .and_then(|k| self.items.get(k))
            .cloned()
            .unwrap_or_else(|| shape_of(request.key));
        let before = shape_size(&shape);
        request.apply(&mut shape);
        let after = shape_size(&shape);
        self.write(before.max(after), transactional);
        if let Some(key) = key {
            self.items.insert(key, shape);
        }
    }

    fn delete(&mut self, key: &Item, transactional: bool) {
        let bytes = self.known_size(key);
        self.write(bytes, transactional);
        if let Some(key) = key_of(key) {
            self.items.remove(&key);
        }
    }

    fn transact(&mut self, t: &TransactWriteItem) {
        if let Some(p) = t.put() {
            self.put(p.item(), true);
        } else if let Some(u) = t.update() {
            self.update(
                &UpdateRequest {
                    key: u.key(),
                    expression: Some(u.update_expression()),
                    names: u.expression_attribute_names(),
                    values: u.expression_attribute_values(),
                },
                true,
            );
        } else if let Some(d) = t.delete() {
            self.delete(d.key(), true);
        } else if let Some(c) = t.condition_check() {
            let bytes = self.known_size(c.key());
            self.write(bytes, true);
        }
    }

    /// Learns the sizes a response shows of an item and returns the size it is billed by:
    /// the whole item as far as the meter knows it, whatever was projected.
    fn read_item(&mut self, key: Option<Key>, item: &Item) -> u64 {
        let key = key.or_else(|| key_of(item));
        let Some(key) = key else {
            return item_size(item);
        };
        let shape = self.items.entry(key).or_default();
        shape.extend(item.iter().map(|(k, v)| (k.clone(), value_size(v))));
        shape_size(shape)
    }

    fn read(&mut self, bytes: u64, items: u64, consistent: bool) {
        let c = &mut self.counters;
        c.items_read += items;
        c.bytes_read += bytes;
        c.rru += read_units(bytes, consistent);
    }

    /// Bills a write request; `Some` names a read, to be kept until its response.
    fn request(
        &mut self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
    ) -> Option<ReadInFlight> {
        let input = context.input();
        if let Some(i) = input.downcast_ref::<PutItemInput>() {
            self.count("PutItem");
            if let Some(item) = i.item() {
                self.put(item, false);
            }
        } else if let Some(i) = input.downcast_ref::<UpdateItemInput>() {
            self.count("UpdateItem");
            let empty = HashMap::new();
            let request = UpdateRequest {
                key: i.key().unwrap_or(&empty),
                expression: i.update_expression(),
                names: i.expression_attribute_names(),
                values: i.expression_attribute_values(),
            };
            self.update(&request, false);
        } else if let Some(i) = input.downcast_ref::<DeleteItemInput>() {
            self.count("DeleteItem");
            let empty = HashMap::new();
            self.delete(i.key().unwrap_or(&empty), false);
        } else if let Some(i) = input.downcast_ref::<TransactWriteItemsInput>() {
            self.count("TransactWriteItems");
            for t in i.transact_items() {
                self.transact(t);
            }
        } else if let Some(i) = input.downcast_ref::<GetItemInput>() {
            self.count("GetItem");
            return Some(ReadInFlight {
                consistent: i.consistent_read().unwrap_or(false),
                key: i.key().and_then(key_of),
            });
        } else if let Some(i) = input.downcast_ref::<QueryInput>() {
            self.count("Query");
            return Some(ReadInFlight {
                consistent: i.consistent_read().unwrap_or(false),
                key: None,
            });
        } else {
            self.count("other");
        }
        None
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
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(read) = self.with(|m| m.request(context)) {
            cfg.interceptor_state().store_put(read);
        }
        Ok(())
    }

    fn read_after_deserialization(
        &self,
        context: &AfterDeserializationInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Ok(output) = context.output_or_error() else {
            return Ok(());
        };
        let Some(read) = cfg.load::<ReadInFlight>().cloned() else {
            return Ok(());
        };
        self.with(|m| {
            if let Some(o) = output.downcast_ref::<GetItemOutput>() {
                let bytes = o
                    .item()
                    .map_or(0, |item| m.read_item(read.key.clone(), item));
                m.read(bytes, u64::from(o.item().is_some()), read.consistent);
            } else if let Some(o) = output.downcast_ref::<QueryOutput>() {
                let bytes = o.items().iter().map(|item| m.read_item(None, item)).sum();
                m.read(bytes, o.items().len() as u64, read.consistent);
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> AttributeValue {
        AttributeValue::S(v.to_owned())
    }

    fn key(sk: &str) -> Item {
        HashMap::from([("pk".to_owned(), s("RUN#r")), ("sk".to_owned(), s(sk))])
    }

    fn rev_update(rev: &str) -> (String, HashMap<String, String>, Item) {
        (
            "SET #u0 = :u0, #at = if_not_exists(#at, :now) REMOVE #x0".to_owned(),
            HashMap::from([
                ("#u0".to_owned(), "rev".to_owned()),
                ("#at".to_owned(), "createdAt".to_owned()),
                ("#x0".to_owned(), "gsi2pk".to_owned()),
            ]),
            HashMap::from([
                (":u0".to_owned(), AttributeValue::N(rev.to_owned())),
                (":now".to_owned(), AttributeValue::N("1".to_owned())),
            ]),
        )
    }

    #[test]
    fn an_update_is_billed_by_the_whole_item_it_changes() {
        // GIVEN a meter that saw a 3.5 KB item put (a run's meta item with its state inline)
        let mut meter = Meter::default();
        let mut item = key("META");
        item.insert("body".into(), s(&"x".repeat(3500)));
        item.insert("gsi2pk".into(), s("ACTIVE"));
        meter.put(&item, false);
        let put_wru = meter.counters.wru;
        assert_eq!(put_wru, 4.0);

        // WHEN a transaction sets one small number on it (and removes an attribute)
        let (expression, names, values) = rev_update("2");
        let request = UpdateRequest {
            key: &key("META"),
            expression: Some(&expression),
            names: Some(&names),
            values: Some(&values),
        };
        meter.update(&request, true);

        // THEN it is billed as a 4 KB transactional write, not as the few bytes it set
        assert_eq!(meter.counters.wru - put_wru, 8.0);
        // AND the meter's picture of the item is the item after the update
        let shape = &meter.items[&("RUN#r".to_owned(), "META".to_owned())];
        assert!(shape.contains_key("rev") && shape.contains_key("createdAt"));
        assert!(!shape.contains_key("gsi2pk"));
    }

    #[test]
    fn an_update_of_an_unseen_item_is_sized_from_the_request_and_reads_learn_items() {
        // GIVEN a meter that has seen nothing
        let mut meter = Meter::default();
        let (expression, names, values) = rev_update("2");
        let request = UpdateRequest {
            key: &key("LEASE"),
            expression: Some(&expression),
            names: Some(&names),
            values: Some(&values),
        };

        // WHEN it meters an update, then reads a projected response of a larger item
        meter.update(&request, false);
        let mut projected = HashMap::from([("body".to_owned(), s(&"y".repeat(5000)))]);
        let read = meter.read_item(Some(("RUN#r".into(), "LEASE".into())), &projected);
        projected.clear();
        let again = meter.read_item(Some(("RUN#r".into(), "LEASE".into())), &projected);

        // THEN the update is one unit (its key and values), and a read is billed by all the
        // item the meter knows, also when the response projects less
        assert_eq!(meter.counters.wru, 1.0);
        assert!(read > 5000);
        assert_eq!(read, again);
    }

    #[test]
    fn update_expressions_split_into_clauses_and_top_level_actions() {
        // GIVEN an expression with a function call's comma inside a SET
        let parsed = clauses("SET #a = :a, #b = if_not_exists(#b, :b) REMOVE #c, #d");

        // THEN the clauses and their actions are the ones written
        assert_eq!(
            parsed,
            vec![
                (
                    "SET".to_owned(),
                    vec![
                        "#a = :a".to_owned(),
                        "#b = if_not_exists(#b, :b)".to_owned()
                    ]
                ),
                ("REMOVE".to_owned(), vec!["#c".to_owned(), "#d".to_owned()]),
            ]
        );
    }
}
