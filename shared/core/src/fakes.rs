//! Fakes of the ports for tests of the logic around them (never the only test of an adapter).

use std::collections::VecDeque;
use std::sync::Mutex;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::{self, BoxStream};

use serde_json::Value;

use crate::ports::{Model, ModelError, ModelInfo, ModelRequest, ModelResponse, StreamItem};
use crate::tools::ToolCall;
use crate::types::Usage;

/// One scripted reply: text, tool calls, or both.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scripted {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
}

impl Scripted {
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            tool_calls: Vec::new(),
        }
    }

    /// A reply that calls one tool (call id `call-<name>`).
    pub fn tool(name: &str, arguments: Value) -> Self {
        Self::tools([(name, arguments)])
    }

    /// A reply that calls several tools in one turn.
    pub fn tools<'a>(calls: impl IntoIterator<Item = (&'a str, Value)>) -> Self {
        Self {
            text: String::new(),
            tool_calls: calls
                .into_iter()
                .enumerate()
                .map(|(i, (name, arguments))| ToolCall {
                    id: format!("call-{name}-{i}"),
                    name: name.to_owned(),
                    arguments,
                })
                .collect(),
        }
    }
}

impl From<String> for Scripted {
    fn from(text: String) -> Self {
        Self::text(text)
    }
}

impl From<&str> for Scripted {
    fn from(text: &str) -> Self {
        Self::text(text)
    }
}

/// A model that answers with scripted replies, in order, and records every request.
#[derive(Default)]
pub struct ScriptedModel {
    replies: Mutex<VecDeque<Result<Scripted, ModelError>>>,
    pub requests: Mutex<Vec<ModelRequest>>,
}

impl ScriptedModel {
    pub fn new(replies: impl IntoIterator<Item = Result<String, ModelError>>) -> Self {
        Self::scripted(replies.into_iter().map(|r| r.map(Scripted::text)))
    }

    /// Replies that may call tools.
    pub fn scripted(replies: impl IntoIterator<Item = Result<Scripted, ModelError>>) -> Self {
        Self {
            replies: Mutex::new(replies.into_iter().collect()),
            requests: Mutex::new(Vec::new()),
        }
    }

    /// Adds replies at the end of the script.
    pub fn push(&self, replies: impl IntoIterator<Item = Result<Scripted, ModelError>>) {
        if let Ok(mut r) = self.replies.lock() {
            r.extend(replies);
        }
    }

    pub fn requests(&self) -> Vec<ModelRequest> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    fn next(&self, request: &ModelRequest) -> Result<Scripted, ModelError> {
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
        let reply = self.next(&request)?;
        Ok(ModelResponse {
            usage: usage(&reply.text),
            text: reply.text,
            tool_calls: reply.tool_calls,
            retries: Vec::new(),
        })
    }

    fn stream(&self, request: ModelRequest) -> BoxStream<'_, Result<StreamItem, ModelError>> {
        match self.next(&request) {
            Err(e) => stream::once(async move { Err(e) }).boxed(),
            Ok(reply) => {
                let u = usage(&reply.text);
                let words: Vec<Result<StreamItem, ModelError>> = reply
                    .text
                    .split_inclusive(' ')
                    .map(|w| Ok(StreamItem::Text(w.to_owned())))
                    .chain(
                        reply
                            .tool_calls
                            .into_iter()
                            .map(|c| Ok(StreamItem::ToolCall(c))),
                    )
                    .chain(std::iter::once(Ok(StreamItem::Usage(u))))
                    .collect();
                stream::iter(words).boxed()
            }
        }
    }
}
