//! A model wrapper that adds up the wall time spent inside model calls, so a run's overhead
//! can be split into the orchestration around the calls and the calls themselves (the adapter,
//! loopback and the server).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use orchestrator_core::ports::{
    Model, ModelError, ModelInfo, ModelRequest, ModelResponse, StreamItem,
};

pub struct TimingModel {
    inner: Arc<dyn Model>,
    in_calls_us: Arc<AtomicU64>,
}

impl TimingModel {
    pub fn new(inner: Arc<dyn Model>) -> Self {
        Self {
            inner,
            in_calls_us: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Microseconds spent inside calls so far: from the call to its reply (complete), or to
    /// the end of its stream.
    pub fn in_calls_us(&self) -> u64 {
        self.in_calls_us.load(Ordering::Relaxed)
    }
}

/// Adds the time since `started` when dropped: a stream is timed until it ends or is dropped.
struct Span {
    started: Instant,
    total: Arc<AtomicU64>,
}

impl Drop for Span {
    fn drop(&mut self) {
        let us = self.started.elapsed().as_micros() as u64;
        self.total.fetch_add(us, Ordering::Relaxed);
    }
}

#[async_trait]
impl Model for TimingModel {
    fn info(&self) -> ModelInfo {
        self.inner.info()
    }

    async fn complete(&self, request: ModelRequest) -> Result<ModelResponse, ModelError> {
        let _span = Span {
            started: Instant::now(),
            total: self.in_calls_us.clone(),
        };
        self.inner.complete(request).await
    }

    fn stream(&self, request: ModelRequest) -> BoxStream<'_, Result<StreamItem, ModelError>> {
        let mut span = Some(Span {
            started: Instant::now(),
            total: self.in_calls_us.clone(),
        });
        let mut inner = self.inner.stream(request);
        futures::stream::poll_fn(move |cx| {
            let next = inner.poll_next_unpin(cx);
            if let std::task::Poll::Ready(None) = next {
                span.take();
            }
            next
        })
        .boxed()
    }
}
