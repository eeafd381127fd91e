//! A model wrapper that keeps the requests made of it, so the floor can replay the reference
//! run's exact calls (the same prompts, so the mock streams the same replies) from a bare
//! HTTP client.

use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use futures::stream::BoxStream;
use orchestrator_core::ports::{
    Model, ModelError, ModelInfo, ModelRequest, ModelResponse, StreamItem,
};
use serde_json::{Value, json};

/// One call as the engine made it.
#[derive(Debug, Clone)]
pub struct RecordedCall {
    pub request: ModelRequest,
    /// Asked for as a stream (the adapter streams these) rather than a completion.
    pub streamed: bool,
}

impl RecordedCall {
    /// The chat completions body a plain client sends for this call: the system prompt, then
    /// the conversation, for `model`.
    pub fn openai_body(&self, model: &str) -> Value {
        let mut messages = vec![json!({"role": "system", "content": self.request.system})];
        messages.extend(
            self.request
                .messages
                .iter()
                .map(|m| json!({"role": m.role, "content": m.content})),
        );
        json!({"model": model, "stream": self.streamed, "messages": messages})
    }
}

pub struct RecordingModel {
    inner: Arc<dyn Model>,
    calls: Mutex<Vec<RecordedCall>>,
}

impl RecordingModel {
    pub fn new(inner: Arc<dyn Model>) -> Self {
        Self {
            inner,
            calls: Mutex::new(Vec::new()),
        }
    }

    /// The calls so far, in the order they were made.
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn record(&self, request: &ModelRequest, streamed: bool) {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(RecordedCall {
                request: request.clone(),
                streamed,
            });
    }
}

#[async_trait]
impl Model for RecordingModel {
    fn info(&self) -> ModelInfo {
        self.inner.info()
    }

    async fn complete(&self, request: ModelRequest) -> Result<ModelResponse, ModelError> {
        self.record(&request, false);
        self.inner.complete(request).await
    }

    fn stream(&self, request: ModelRequest) -> BoxStream<'_, Result<StreamItem, ModelError>> {
        self.record(&request, true);
        self.inner.stream(request)
    }
}
