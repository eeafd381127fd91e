//! A run's event log as an SSE body: replay after a seq, then live, with pings, ending after
//! `complete`. The body is a plain stream polled by the server: when the client goes away the
//! stream is dropped, so nothing keeps running for it.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use orchestrator_core::event::{EventKind, Frame, SSE_PING, SSE_PROLOGUE};
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
    buffered: VecDeque<Frame>,
    _permit: OwnedSemaphorePermit,
    cancel_on_drop: Option<CancelOnDrop>,
}

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
        buffered: VecDeque::new(),
        _permit: permit,
        cancel_on_drop,
    };
    futures::stream::unfold(tail, |mut t| async move {
        if !t.opened {
            t.opened = true;
            return Some((Ok(Bytes::from_static(SSE_PROLOGUE.as_bytes())), t));
        }
        loop {
            if let Some(frame) = t.buffered.pop_front() {
                t.after = frame.seq;
                if matches!(frame.event.kind, EventKind::Complete { .. }) {
                    t.done = true;
                    // The run ended while watched: leaving now cancels nothing.
                    if let Some(guard) = t.cancel_on_drop.as_mut() {
                        guard.armed = false;
                    }
                }
                return Some((Ok(Bytes::from(frame.to_sse())), t));
            }
            if t.done {
                return None;
            }
            if t.deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                // Ended for time, not because the client left: reconnecting must not find the
                // run cancelled. The hint tells EventSource when to come back.
                if let Some(guard) = t.cancel_on_drop.as_mut() {
                    guard.armed = false;
                }
                t.done = true;
                return Some((Ok(Bytes::from(format!("retry: {RECONNECT_MS}\n\n"))), t));
            }
            match t.store.read_after(&t.run_id, t.after, 256).await {
                Ok(frames) if !frames.is_empty() => {
                    t.buffered.extend(frames);
                    continue;
                }
                Ok(_) => {
                    // A finished run commits `complete` with its final state, so once the state
                    // reads final, one more read sees every frame there will ever be.
                    if let Ok(Some(run)) = t.store.load_run(&t.run_id).await
                        && run.status.is_terminal()
                    {
                        match t.store.read_after(&t.run_id, t.after, 256).await {
                            Ok(frames) if !frames.is_empty() => {
                                t.buffered.extend(frames);
                                continue;
                            }
                            _ => return None,
                        }
                    }
                }
                Err(e) => {
                    // End the response; the client resumes with Last-Event-ID.
                    tracing::warn!(run_id = %t.run_id, error = %e, "event stream stopped");
                    return None;
                }
            }
            let wait = t.deadline.map_or(t.ping, |d| {
                t.ping
                    .min(d.saturating_duration_since(tokio::time::Instant::now()))
            });
            if let Err(e) = t.store.wait_beyond(&t.run_id, t.after, wait).await {
                tracing::warn!(run_id = %t.run_id, error = %e, "event stream stopped");
                return None;
            }
            match t.store.read_after(&t.run_id, t.after, 256).await {
                Ok(frames) if !frames.is_empty() => t.buffered.extend(frames),
                Ok(_) => return Some((Ok(Bytes::from_static(SSE_PING.as_bytes())), t)),
                Err(e) => {
                    tracing::warn!(run_id = %t.run_id, error = %e, "event stream stopped");
                    return None;
                }
            }
        }
    })
}
