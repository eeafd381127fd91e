//! A run's event log as an SSE body: replay after a seq, then live, with pings, ending after
//! `complete`. The body is a plain stream polled by the server: when the client goes away the
//! stream is dropped, so nothing keeps running for it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use orchestrator_core::event::{SSE_PING, SSE_PROLOGUE, WireFrame};
use orchestrator_runner::Store;
use tokio::sync::OwnedSemaphorePermit;

use crate::control::Control;

/// Cancels the run if the client leaves before `complete` (onDisconnect: cancel).
pub struct CancelOnDrop {
    control: Arc<dyn Control>,
    run_id: String,
    armed: bool,
}

impl CancelOnDrop {
    pub fn new(control: Arc<dyn Control>, run_id: String) -> Self {
        Self {
            control,
            run_id,
            armed: true,
        }
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let control = self.control.clone();
        let run_id = std::mem::take(&mut self.run_id);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let reason = "the client disconnected (onDisconnect: cancel)".to_owned();
                if let Err(e) = control.cancel(&run_id, reason).await {
                    tracing::debug!(%run_id, error = %e, "cancel on disconnect");
                }
            });
        }
    }
}

/// The `retry:` hint sent when a response ends for time: reconnect after this many ms.
pub const RECONNECT_MS: u64 = 1000;

struct Tail {
    store: Arc<dyn Store>,
    run_id: String,
    after: u64,
    ping: Duration,
    /// When the response must end (the streamer's function timeout); the client reconnects.
    deadline: Option<tokio::time::Instant>,
    opened: bool,
    done: bool,
    _permit: OwnedSemaphorePermit,
    cancel_on_drop: Option<CancelOnDrop>,
}

/// Frames read at once: the first read of a long run's replay, or what a busy run wrote since.
const PAGE: usize = 256;

pub fn frames(
    store: Arc<dyn Store>,
    run_id: String,
    after: u64,
    ping: Duration,
    max: Option<Duration>,
    permit: OwnedSemaphorePermit,
    cancel_on_drop: Option<CancelOnDrop>,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    let tail = Tail {
        store,
        run_id,
        after,
        ping,
        deadline: max.map(|m| tokio::time::Instant::now() + m),
        opened: false,
        done: false,
        _permit: permit,
        cancel_on_drop,
    };
    futures::stream::unfold(tail, |mut t| async move {
        if t.done {
            return None;
        }
        if !t.opened {
            t.opened = true;
            return t.open().await;
        }
        t.next().await
    })
}

type Next = Option<(Result<Bytes, Infallible>, Tail)>;

impl Tail {
    /// The prologue, and the frames already written (a replay), or the end when the run has
    /// finished and nothing is left after `after` (a client resuming after `complete`).
    async fn open(mut self) -> Next {
        let mut out = SSE_PROLOGUE.as_bytes().to_vec();
        match self
            .store
            .read_wire_after(&self.run_id, self.after, PAGE)
            .await
        {
            Ok(frames) if !frames.is_empty() => self.push(&frames, &mut out),
            Ok(_) => {
                // A finished run commits `complete` with its final state, so a run that reads
                // final here has written every frame it will: none is coming after `after`.
                if let Ok(Some(run)) = self.store.load_run(&self.run_id).await
                    && run.status.is_terminal()
                {
                    self.done = true;
                }
            }
            Err(e) => {
                tracing::warn!(run_id = %self.run_id, error = %e, "event stream stopped");
                self.done = true;
            }
        }
        Some((Ok(Bytes::from(out)), self))
    }

    /// The frames written since, in one chunk, once there are some; a ping when none come
    /// for the ping interval; the `retry:` hint when the response's time is up.
    async fn next(mut self) -> Next {
        if self
            .deadline
            .is_some_and(|d| tokio::time::Instant::now() >= d)
        {
            // Ended for time, not because the client left: reconnecting must not find the
            // run cancelled. The hint tells EventSource when to come back.
            if let Some(guard) = self.cancel_on_drop.as_mut() {
                guard.armed = false;
            }
            self.done = true;
            return Some((Ok(Bytes::from(format!("retry: {RECONNECT_MS}\n\n"))), self));
        }
        let wait = self.deadline.map_or(self.ping, |d| {
            self.ping
                .min(d.saturating_duration_since(tokio::time::Instant::now()))
        });
        // Returns at once when a frame is already there: no read is spent finding nothing.
        if let Err(e) = self.store.wait_beyond(&self.run_id, self.after, wait).await {
            tracing::warn!(run_id = %self.run_id, error = %e, "event stream stopped");
            return None;
        }
        // A watcher comes after the run's own work: the commit that woke this stream usually
        // also dispatched the next model call, whose request then goes out first (a frame a
        // few hundred microseconds later is invisible; the same delay on the request is on
        // the run's critical path), and frames committed meanwhile go out in the same chunk.
        tokio::task::yield_now().await;
        match self
            .store
            .read_wire_after(&self.run_id, self.after, PAGE)
            .await
        {
            Ok(frames) if !frames.is_empty() => {
                let mut out = Vec::new();
                self.push(&frames, &mut out);
                Some((Ok(Bytes::from(out)), self))
            }
            Ok(_) => Some((Ok(Bytes::from_static(SSE_PING.as_bytes())), self)),
            Err(e) => {
                // End the response; the client resumes with Last-Event-ID.
                tracing::warn!(run_id = %self.run_id, error = %e, "event stream stopped");
                None
            }
        }
    }

    /// Appends `frames` to `out`, up to and with `complete`, after which the stream ends.
    fn push(&mut self, frames: &[WireFrame], out: &mut Vec<u8>) {
        for frame in frames {
            frame.write_sse(out);
            self.after = frame.seq;
            if frame.is_complete() {
                self.done = true;
                // The run ended while watched: leaving now cancels nothing.
                if let Some(guard) = self.cancel_on_drop.as_mut() {
                    guard.armed = false;
                }
                return;
            }
        }
    }
}
