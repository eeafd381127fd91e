//! Stored documents as JSON: how both stores encode what they keep and read it back.

use orchestrator_core::event::{Frame, WireFrame};
use orchestrator_core::ports::StoreError;

/// JSON for a stored document.
pub(crate) fn encode<T: serde::Serialize + ?Sized>(
    value: &T,
    what: &str,
) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Corrupt(format!("cannot encode the {what}: {e}")))
}

/// A stored document read back; unreadable JSON is `Corrupt`, naming the run.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    json: &str,
    what: &str,
    run_id: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::Corrupt(format!("run {run_id}: stored {what} is unreadable: {e}")))
}

/// A stored event read back as a frame.
pub(crate) fn frame_of(run_id: &str, seq: u64, json: String) -> Result<Frame, StoreError> {
    Ok(Frame {
        seq,
        event: decode(&json, "event", run_id)?,
    })
}

/// A stored event's JSON as the wire carries it, without decoding it.
pub(crate) fn wire_frame_of(run_id: &str, seq: u64, json: String) -> Result<WireFrame, StoreError> {
    WireFrame::from_json(seq, json)
        .ok_or_else(|| StoreError::Corrupt(format!("run {run_id}: a stored event has no type")))
}

/// Documents shorter than this are kept as they are: an item of under a KB costs one unit
/// whatever it holds, and deflate's gain on a short document is small.
pub(crate) const COMPRESS_MIN: usize = 512;

/// A decompressed document larger than this is refused as corrupt: no document this store
/// writes comes near it, and a damaged stream must not exhaust memory.
const INFLATE_MAX: usize = 64 * 1024 * 1024;

/// The JSON compressed (raw deflate), when it is long enough and compressing shrinks it.
pub(crate) fn deflate(json: &str) -> Option<Vec<u8>> {
    if json.len() < COMPRESS_MIN {
        return None;
    }
    let compressed = miniz_oxide::deflate::compress_to_vec(json.as_bytes(), 6);
    (compressed.len() < json.len()).then_some(compressed)
}

/// A document compressed by [`deflate`], back as JSON text; a damaged one is `Corrupt`.
pub(crate) fn inflate(bytes: &[u8], what: &str, run_id: &str) -> Result<String, StoreError> {
    let corrupt =
        |e: String| StoreError::Corrupt(format!("run {run_id}: stored {what} is unreadable: {e}"));
    let raw = miniz_oxide::inflate::decompress_to_vec_with_limit(bytes, INFLATE_MAX)
        .map_err(|e| corrupt(format!("cannot decompress it: {e}")))?;
    String::from_utf8(raw).map_err(|e| corrupt(format!("it is not UTF-8: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_document_deflates_and_inflates_back_and_a_short_one_is_left_alone() {
        // GIVEN a long JSON document (with multi-byte text) and a short one
        let long = serde_json::json!({"draft": "Acme Sync — ".repeat(200)}).to_string();

        // WHEN they are compressed
        let compressed = deflate(&long).unwrap();

        // THEN the long one shrinks and reads back the same; the short one is not compressed
        assert!(compressed.len() < long.len() / 4);
        assert_eq!(inflate(&compressed, "state", "r").unwrap(), long);
        assert!(deflate("{\"a\":1}").is_none());
        // AND damaged bytes are Corrupt, not a panic
        assert!(matches!(
            inflate(&[0xff, 0x00, 0x13], "state", "r"),
            Err(StoreError::Corrupt(_))
        ));
    }
}
