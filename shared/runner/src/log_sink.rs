//! Events an agent reports outside a step's stream (the planner's retries), written to the
//! run's log as they come.

use std::sync::Arc;

use async_trait::async_trait;
use orchestrator_agents::DeltaSink;
use orchestrator_core::engine::RunState;
use orchestrator_core::event::{Event, EventKind};

use crate::Store;

pub struct LogSink {
    store: Arc<dyn Store>,
    run_id: String,
    correlation_id: String,
    fence: Option<u64>,
}

impl LogSink {
    /// Writes to `state`'s run, under its driver's lease.
    pub fn new(store: Arc<dyn Store>, state: &RunState) -> Self {
        Self {
            store,
            run_id: state.run_id.clone(),
            correlation_id: state.correlation_id.clone(),
            fence: state.lease_token,
        }
    }
}

#[async_trait]
impl DeltaSink for LogSink {
    async fn delta(&self, _text: &str) {}

    async fn event(&self, kind: EventKind) {
        let event = Event {
            kind,
            correlation_id: self.correlation_id.clone(),
            run_id: self.run_id.clone(),
        };
        crate::inflight::after_commit().await;
        // A lost warning is no reason to stop planning; the log says why it is missing.
        if let Err(e) = self
            .store
            .append_fenced(&self.run_id, &[event], self.fence)
            .await
        {
            tracing::warn!(run_id = %self.run_id, error = %e, "could not write the planner's warning");
        }
    }
}
