//! Fakes of the ports for tests of the logic around them (never the only test of an adapter).

use std::collections::VecDeque;
use std::sync::Mutex;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::{self, BoxStream};

use crate::ports::{Model, ModelError, ModelInfo, ModelRequest, ModelResponse, StreamItem};
use crate::types::Usage;

/// A model that answers with scripted replies, in order, and records every request.
#[derive(Default)]
pub struct ScriptedModel {
    replies: Mutex<VecDeque<Result<String, ModelError>>>,
    pub requests: Mutex<Vec<ModelRequest>>,
}

impl ScriptedModel {
    pub fn new(replies: impl IntoIterator<Item = Result<String, ModelError>>) -> Self {
        Self {
            replies: Mutex::new(replies.into_iter().collect()),
            requests: Mutex::new(Vec::new()),
        }
    }

    pub fn requests(&self) -> Vec<ModelRequest> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    fn next(&self, request: &ModelRequest) -> Result<String, ModelError> {
        if let Ok(mut log) = self.requests.lock() {
            log.push(request.clone());
        }
        self.replies
            .lock()
            .ok()
            .and_then(|mut r| r.pop_front())
            .unwrap_or_else(|| Err(ModelError::Invalid("the script has no more replies".into())))
    }
}

fn usage(text: &str) -> Usage {
    Usage {
        input_tokens: 10,
        output_tokens: text.len() as u64,
    }
}

#[async_trait]
impl Model for ScriptedModel {
    fn info(&self) -> ModelInfo {
        ModelInfo {
            provider: "scripted".into(),
            model: "scripted".into(),
        }
    }

    async fn complete(&self, request: ModelRequest) -> Result<ModelResponse, ModelError> {
        let text = self.next(&request)?;
        Ok(ModelResponse {
            usage: usage(&text),
            text,
        })
    }

    fn stream(&self, request: ModelRequest) -> BoxStream<'_, Result<StreamItem, ModelError>> {
        match self.next(&request) {
            Err(e) => stream::once(async move { Err(e) }).boxed(),
            Ok(text) => {
                let u = usage(&text);
                let words: Vec<Result<StreamItem, ModelError>> = text
                    .split_inclusive(' ')
                    .map(|w| Ok(StreamItem::Text(w.to_owned())))
                    .chain(std::iter::once(Ok(StreamItem::Usage(u))))
                    .collect();
                stream::iter(words).boxed()
            }
        }
    }
}
