//! Stored documents as JSON: how both stores encode what they keep and read it back.

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
