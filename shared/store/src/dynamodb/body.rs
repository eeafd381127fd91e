//! JSON documents (states, plans, events, step results, reports) in items that must stay under
//! DynamoDB's 400 KB: a small document sits inline in its item; a large one is split into part
//! items under a fresh token, written before the item that names them.
//!
//! The parts are keyed by a token, not by the owner's key, so a writer that loses a race (a
//! second StepResult for the same attempt, a retried seq) never overwrites the winner's parts;
//! it deletes its own afterwards.
//!
//! Documents written with [`Body::compressed`] are kept deflated (`bodyZ`, binary) when that
//! makes them smaller: DynamoDB bills writes by the item's size, and the run state, reports and
//! recorded model calls are JSON that deflates to a third or less. Items written before, or
//! with plain JSON (`body`), read as they always did.

use std::collections::HashMap;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;

use super::keys;
use crate::codec::deflate;

/// Documents up to this many bytes go inline. Leaves room in the item for its other
/// attributes, and keeps a transaction of several items under its 4 MB.
pub const INLINE_MAX: usize = 200 * 1024;

/// Bytes per part item.
pub const PART_SIZE: usize = 300 * 1024;

/// A document ready to be written.
#[derive(Debug, Clone)]
pub enum Body {
    Inline(String),
    /// The JSON deflated (see [`crate::codec::deflate`]), inline.
    Compressed(Vec<u8>),
    Parts {
        token: String,
        parts: Vec<Vec<u8>>,
    },
}

impl Body {
    pub fn new(json: String) -> Self {
        if json.len() <= INLINE_MAX {
            return Body::Inline(json);
        }
        let parts = json
            .into_bytes()
            .chunks(PART_SIZE)
            .map(<[u8]>::to_vec)
            .collect();
        Body::Parts {
            token: uuid::Uuid::new_v4().simple().to_string(),
            parts,
        }
    }

    /// The document deflated when that makes it smaller and it then fits inline; otherwise
    /// as [`Self::new`] keeps it (a document too large for one item is split as plain JSON).
    pub fn compressed(json: String) -> Self {
        match deflate(&json) {
            Some(bytes) if bytes.len() <= INLINE_MAX => Body::Compressed(bytes),
            _ => Body::new(json),
        }
    }

    /// Whether the document goes in part items (and so is named on its owner by a token).
    pub fn is_parts(&self) -> bool {
        matches!(self, Body::Parts { .. })
    }

    /// About how many bytes the owning item will hold for this body.
    pub fn inline_len(&self) -> usize {
        match self {
            Body::Inline(s) => s.len(),
            Body::Compressed(bytes) => bytes.len(),
            Body::Parts { token, .. } => token.len() + 16,
        }
    }

    pub fn token(&self) -> Option<&str> {
        match self {
            Body::Inline(_) | Body::Compressed(_) => None,
            Body::Parts { token, .. } => Some(token),
        }
    }

    /// The attributes that go on the owning item.
    pub fn put_attrs(&self, item: &mut HashMap<String, AttributeValue>) {
        match self {
            Body::Inline(json) => {
                item.insert(keys::BODY.into(), AttributeValue::S(json.clone()));
            }
            Body::Compressed(bytes) => {
                item.insert(
                    keys::BODY_Z.into(),
                    AttributeValue::B(Blob::new(bytes.clone())),
                );
            }
            Body::Parts { token, parts } => {
                item.insert(keys::BLOB.into(), AttributeValue::S(token.clone()));
                item.insert(
                    keys::PARTS.into(),
                    AttributeValue::N(parts.len().to_string()),
                );
            }
        }
    }

    /// The body as an element of the list of a packed event item: the JSON itself (binary
    /// when deflated), or a map naming its parts (what [`Self::put_attrs`] puts on an item of
    /// its own).
    pub fn element(&self) -> AttributeValue {
        match self {
            Body::Inline(json) => AttributeValue::S(json.clone()),
            Body::Compressed(bytes) => AttributeValue::B(Blob::new(bytes.clone())),
            Body::Parts { .. } => {
                let mut map = HashMap::new();
                self.put_attrs(&mut map);
                AttributeValue::M(map)
            }
        }
    }

    /// The part items, each keyed under `pk`; `ttl` (epoch seconds) goes on each when given.
    pub fn part_items(&self, pk: &str, ttl: Option<u64>) -> Vec<HashMap<String, AttributeValue>> {
        let Body::Parts { token, parts } = self else {
            return Vec::new();
        };
        parts
            .iter()
            .enumerate()
            .map(|(i, bytes)| {
                let mut item = HashMap::new();
                item.insert(keys::PK.into(), AttributeValue::S(pk.to_owned()));
                item.insert(keys::SK.into(), AttributeValue::S(keys::blob_sk(token, i)));
                item.insert(
                    keys::DATA.into(),
                    AttributeValue::B(Blob::new(bytes.clone())),
                );
                if let Some(ttl) = ttl {
                    item.insert(keys::TTL.into(), AttributeValue::N(ttl.to_string()));
                }
                item
            })
            .collect()
    }
}

/// Where a stored item's document is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredBody {
    Inline(String),
    /// Deflated JSON, inflated when read.
    Compressed(Vec<u8>),
    Parts {
        token: String,
        count: usize,
    },
}

impl StoredBody {
    /// Reads the body attributes of an item; `None` when it has neither form.
    pub fn of(item: &HashMap<String, AttributeValue>) -> Option<Self> {
        if let Some(AttributeValue::S(json)) = item.get(keys::BODY) {
            return Some(StoredBody::Inline(json.clone()));
        }
        if let Some(AttributeValue::B(bytes)) = item.get(keys::BODY_Z) {
            return Some(StoredBody::Compressed(bytes.as_ref().to_vec()));
        }
        let token = match item.get(keys::BLOB) {
            Some(AttributeValue::S(t)) => t.clone(),
            _ => return None,
        };
        let count = match item.get(keys::PARTS) {
            Some(AttributeValue::N(n)) => n.parse().ok()?,
            _ => return None,
        };
        Some(StoredBody::Parts { token, count })
    }

    /// Reads an element of a packed event item's list (see [`Body::element`]).
    pub fn of_element(value: AttributeValue) -> Option<Self> {
        match value {
            AttributeValue::S(json) => Some(StoredBody::Inline(json)),
            AttributeValue::B(bytes) => Some(StoredBody::Compressed(bytes.into_inner())),
            AttributeValue::M(map) => Self::of(&map),
            _ => None,
        }
    }

    pub fn token(&self) -> Option<&str> {
        match self {
            StoredBody::Inline(_) | StoredBody::Compressed(_) => None,
            StoredBody::Parts { token, .. } => Some(token),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_documents_stay_inline_and_large_ones_split_without_loss() {
        // GIVEN a small and a large document (multi-byte characters across part boundaries)
        let small = "{\"a\":1}".to_owned();
        let large = "é".repeat(PART_SIZE);

        // WHEN they are prepared for writing
        let small_body = Body::new(small.clone());
        let large_body = Body::new(large.clone());

        // THEN the small one is inline
        assert!(matches!(&small_body, Body::Inline(s) if *s == small));
        // AND the large one is parts under the size limit that join back to the same bytes
        let Body::Parts { parts, .. } = &large_body else {
            panic!("expected parts")
        };
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.len() <= PART_SIZE));
        assert_eq!(parts.concat(), large.into_bytes());
        // AND the owning item names the token and the count
        let mut item = HashMap::new();
        large_body.put_attrs(&mut item);
        assert_eq!(
            StoredBody::of(&item),
            Some(StoredBody::Parts {
                token: large_body.token().unwrap().to_owned(),
                count: 2
            })
        );
        assert_eq!(large_body.part_items("RUN#x", Some(7)).len(), 2);
    }
}
