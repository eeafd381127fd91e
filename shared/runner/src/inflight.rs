//! The work a drive has in flight (planner calls and step attempts, as futures of the drive's
//! task), and the work it starts ahead of the commit that names it.
//!
//! Starting ahead: a hand-off between steps is one write (the step's result, the transition
//! and the next step's opening), and the next model request used to wait for it. Now the
//! driver starts what the transition names, lets its request go out, and commits while the
//! model thinks. A started step is run on the inputs the driver expects the opening to hand
//! it (the run's results as of the last commit, and the one being written); the commit's
//! answer is the truth, and a step whose opening came back otherwise (its attempt already had
//! a result, or other results were stored meanwhile) is called off and started again from
//! that answer. Nothing a piece of work started ahead writes can precede the commit: its
//! writes to the run's log wait for it ([`after_commit`]), even when its model answers at once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;

use futures::future::{AbortHandle, BoxFuture, abortable};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};

use orchestrator_core::engine::{Input, RunState};
use orchestrator_core::ports::OpenedStep;
use orchestrator_core::types::StepResult;

use tokio::sync::watch;

use crate::StepEnd;
use crate::steps::inputs_for;

tokio::task_local! {
    /// Set on work started ahead of its commit: opens once that commit is in.
    static AHEAD: watch::Receiver<bool>;
}

/// Waits, in work started ahead of its commit, until that commit is in; at once elsewhere.
/// Every write of a step or planner call to the run's log goes through here first.
pub(crate) async fn after_commit() {
    let Ok(mut gate) = AHEAD.try_with(Clone::clone) else {
        return;
    };
    if gate.wait_for(|open| *open).await.is_err() {
        // The gate was dropped unopened: the work is being called off and never writes.
        std::future::pending::<()>().await;
    }
}

/// What the driver waits on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Work {
    Planner,
    Step(String, u32),
}

impl Work {
    pub(crate) fn crashed(self, panic: String) -> Input {
        match self {
            Work::Planner => Input::PlanFailed {
                error: format!("the planner crashed: {panic}"),
            },
            Work::Step(step_id, attempt) => Input::StepFailed {
                step_id,
                attempt,
                error: format!("the specialist crashed: {panic}"),
                retryable: true,
            },
        }
    }
}

/// How a piece of work ended: its outcome (a panic caught and reported as the message), or
/// `None` when it was called off.
pub(crate) type Ended = Option<(Work, Result<StepEnd, String>)>;

/// The work a drive has in flight: the futures, and which moves they carry out.
#[derive(Default)]
pub(crate) struct InFlight {
    futures: FuturesUnordered<BoxFuture<'static, Ended>>,
    /// Outcomes that came at the first poll ([`InFlight::poll_once`]), not yet handed out.
    ready: VecDeque<(Work, Result<StepEnd, String>)>,
    pub(crate) running: HashSet<Work>,
}

impl InFlight {
    pub(crate) fn is_empty(&self) -> bool {
        self.futures.is_empty() && self.ready.is_empty()
    }

    /// Starts `work` unless it is running. `ahead`: before the commit that names it; then it
    /// writes nothing until that commit is in ([`Ahead::settle`]) and can be called off.
    pub(crate) fn start(
        &mut self,
        key: Work,
        work: impl Future<Output = StepEnd> + Send + 'static,
        ahead: Option<&mut Ahead>,
    ) {
        if !self.running.insert(key.clone()) {
            return;
        }
        let Some(ahead) = ahead else {
            self.futures.push(guarded(key, work).map(Some).boxed());
            return;
        };
        let (open, gate) = watch::channel(false);
        let (work, handle) = abortable(AHEAD.scope(gate, guarded(key.clone(), work)));
        self.futures.push(work.map(Result::ok).boxed());
        ahead.started.push(Started { key, handle, open });
    }

    /// The next piece of work to end (`None`: nothing in flight).
    pub(crate) async fn next(&mut self) -> Option<Ended> {
        if let Some(ended) = self.ready.pop_front() {
            return Some(Some(ended));
        }
        self.futures.next().await
    }

    /// Polls what is in flight until all of it waits, so work just started sends its
    /// requests; what ends at once is kept for [`InFlight::next`].
    pub(crate) async fn poll_once(&mut self) {
        while let Some(Some(ended)) = futures::future::poll_immediate(self.futures.next()).await {
            self.ready.extend(ended);
        }
    }
}

/// A piece of work whose panic is caught and reported as its outcome.
async fn guarded(
    key: Work,
    work: impl Future<Output = StepEnd> + Send + 'static,
) -> (Work, Result<StepEnd, String>) {
    let end = AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .map_err(|panic| {
            panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "it panicked".to_owned())
        });
    (key, end)
}

/// A piece of work started ahead, with what calls it off and what lets it write.
struct Started {
    key: Work,
    handle: AbortHandle,
    open: watch::Sender<bool>,
}

impl Started {
    fn call_off(self, work: &mut InFlight) {
        self.handle.abort();
        work.ready.retain(|(key, _)| *key != self.key);
        work.running.remove(&self.key);
    }
}

/// Work started ahead of the commit of the transition that names it.
#[derive(Default)]
pub(crate) struct Ahead {
    started: Vec<Started>,
    /// The results the started steps were given: what their openings should hand back.
    guess: Vec<StepResult>,
}

impl Ahead {
    pub(crate) fn new(guess: Vec<StepResult>) -> Self {
        Self {
            started: Vec::new(),
            guess,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.started.is_empty()
    }

    /// The commit was written and opened `keys` as `got` says: a step whose opening would
    /// give it other inputs than it was started on (or none: its attempt was answered) is
    /// called off, and every opening it did not start is left in `opened` for the driver to
    /// start from.
    pub(crate) fn settle(
        self,
        state: &RunState,
        keys: Vec<Work>,
        got: Vec<OpenedStep>,
        work: &mut InFlight,
        opened: &mut HashMap<Work, OpenedStep>,
    ) {
        let mut got: HashMap<Work, OpenedStep> = keys.into_iter().zip(got).collect();
        for started in self.started {
            let real = got.remove(&started.key);
            let as_guessed = match (&started.key, &real) {
                (Work::Planner, None) => true, // it needs no opening
                (Work::Step(step_id, _), Some(OpenedStep::Open { results })) => {
                    inputs_for(state, step_id, results) == inputs_for(state, step_id, &self.guess)
                }
                _ => false,
            };
            if as_guessed {
                let _ = started.open.send(true);
                continue;
            }
            tracing::debug!(key = ?started.key, "work started ahead was opened otherwise; starting it again");
            let key = started.key.clone();
            started.call_off(work);
            if let Some(real) = real {
                opened.insert(key, real);
            }
        }
        opened.extend(got);
    }

    /// The commit did not go as written (nothing to write, or the result was taken): every
    /// piece of work started ahead is called off, to be started again from what was stored.
    pub(crate) fn call_off(self, work: &mut InFlight) {
        for started in self.started {
            started.call_off(work);
        }
    }
}
