//! [`Recorder`]: a model whose calls, made within a unit of a run ([`crate::within`]), are
//! handed to the run's store (redacted) as they finish; the store writes them no later than
//! the write that follows (see the SQLite adapter's `record_call`). What the inner model
//! answers passes through unchanged; a record that cannot be written is logged and never
//! fails the run.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use orchestrator_core::ports::{
    CallLog, CallReply, Clock, Model, ModelError, ModelInfo, ModelRequest, ModelResponse,
    RecordedCall, StreamItem,
};
use orchestrator_core::tools::ToolCall;
use orchestrator_core::types::Usage;

use crate::redact::{self, Redact};
use crate::scope::{CallKey, next_call};

/// Records every model call of a run into its store.
pub struct Recorder {
    inner: Arc<dyn Model>,
    log: Arc<dyn CallLog>,
    redact: Arc<dyn Redact>,
    clock: Arc<dyn Clock>,
    info: ModelInfo,
}

impl Recorder {
    pub fn new(
        inner: Arc<dyn Model>,
        log: Arc<dyn CallLog>,
        redact: Arc<dyn Redact>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let info = inner.info();
        Self {
            inner,
            log,
            redact,
            clock,
            info,
        }
    }
}

/// A call under way: what the record needs besides the reply.
struct Pending {
    key: CallKey,
    request: ModelRequest,
    streamed: bool,
    started_at_ms: u64,
    started: Instant,
}

impl Recorder {
    fn begin(&self, request: &ModelRequest, streamed: bool) -> Option<Pending> {
        next_call().map(|key| Pending {
            key,
            request: request.clone(),
            streamed,
            started_at_ms: self.clock.now_ms(),
            started: Instant::now(),
        })
    }

    async fn finish(&self, pending: Pending, reply: CallReply) {
        let Pending {
            key,
            request,
            streamed,
            started_at_ms,
            started,
        } = pending;
        let call = redact::call(
            self.redact.as_ref(),
            RecordedCall {
                unit: key.unit,
                index: key.index,
                model: self.info.clone(),
                streamed,
                request,
                reply,
                started_at_ms,
                duration_ms: started.elapsed().as_millis() as u64,
            },
        );
        if let Err(e) = self.log.record_call(&key.run_id, &call).await {
            tracing::warn!(run_id = %key.run_id, unit = %call.unit, index = call.index, error = %e, "could not record a model call");
        }
    }
}

#[async_trait]
impl Model for Recorder {
    fn info(&self) -> ModelInfo {
        self.info.clone()
    }

    async fn complete(&self, request: ModelRequest) -> Result<ModelResponse, ModelError> {
        let pending = self.begin(&request, false);
        let answer = self.inner.complete(request).await;
        if let Some(pending) = pending {
            let reply = match &answer {
                Ok(r) => CallReply::Answered {
                    text: r.text.clone(),
                    tool_calls: r.tool_calls.clone(),
                    usage: r.usage,
                    cuts: Vec::new(),
                    retries: r.retries.clone(),
                },
                Err(e) => CallReply::Failed { error: e.clone() },
            };
            self.finish(pending, reply).await;
        }
        answer
    }

    fn stream(&self, request: ModelRequest) -> BoxStream<'_, Result<StreamItem, ModelError>> {
        let Some(pending) = self.begin(&request, true) else {
            return self.inner.stream(request);
        };
        let inner = self.inner.stream(request);
        let state = Some((inner, pending, Collected::default()));
        futures::stream::unfold(state, move |state| async move {
            let (mut inner, pending, mut collected) = state?;
            match inner.next().await {
                Some(Ok(item)) => {
                    collected.add(&item);
                    Some((Ok(item), Some((inner, pending, collected))))
                }
                Some(Err(e)) => {
                    self.finish(pending, CallReply::Failed { error: e.clone() })
                        .await;
                    Some((Err(e), None))
                }
                None => {
                    self.finish(pending, collected.reply()).await;
                    None
                }
            }
        })
        .boxed()
    }
}

/// A streamed reply, gathered as it passes.
#[derive(Default)]
struct Collected {
    text: String,
    cuts: Vec<u32>,
    tool_calls: Vec<ToolCall>,
    usage: Usage,
    retries: Vec<orchestrator_core::ports::RetryNote>,
}

impl Collected {
    fn add(&mut self, item: &StreamItem) {
        match item {
            StreamItem::Text(t) => {
                if !self.text.is_empty() {
                    self.cuts.push(self.text.len() as u32);
                }
                self.text.push_str(t);
            }
            StreamItem::ToolCall(c) => self.tool_calls.push(c.clone()),
            StreamItem::Usage(u) => self.usage = *u,
            StreamItem::Retried(note) => self.retries.push(note.clone()),
        }
    }

    fn reply(self) -> CallReply {
        CallReply::Answered {
            text: self.text,
            tool_calls: self.tool_calls,
            usage: self.usage,
            cuts: self.cuts,
            retries: self.retries,
        }
    }
}
