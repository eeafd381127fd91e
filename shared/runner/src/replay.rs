//! Replay and fork of a recorded run, for every front end (the CLI, the API, evals).
//!
//! A replay runs the original's request again through the same engine and specialists, with a
//! [`Tape`] for the model: no model is called, and the event log must come out identical
//! (ids and clocks aside). Each step's streamed text is cut where the original's delta frames
//! were, and deltas are flushed as they come, so that frames match one for one. A fork reuses
//! the record up to a step and calls a live model from there.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use orchestrator_agents::{Planner, Prompts, specialists_with_prompts};
use orchestrator_core::engine::RunState;
use orchestrator_core::event::{EventKind, Frame, HandoffStage};
use orchestrator_core::ports::{CallUnit, Model, RecordedCall};
use orchestrator_core::types::RunStatus;
use orchestrator_recording::{Divergence, LogMatch, Redact, Tape, compare_logs};

use crate::{Launch, RunError, Runner, Started};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(
        "run {0} has no recorded model calls (recording was off when it ran, or its records expired): nothing to replay"
    )]
    NoRecord(String),
    #[error("run {run_id} is still {status}: replay or fork a run once it has finished")]
    Unfinished { run_id: String, status: RunStatus },
    #[error("run {run_id} has no step {step_id}; its steps are: {steps}")]
    NoSuchStep {
        run_id: String,
        step_id: String,
        steps: String,
    },
}

/// A finished run as recorded: its state, model calls and event log.
pub struct Recorded {
    pub state: RunState,
    pub calls: Vec<RecordedCall>,
    pub frames: Vec<Frame>,
}

/// Reads a finished run's record.
pub async fn load(runner: &Runner, run_id: &str) -> Result<Recorded, ReplayError> {
    let state = runner.transitions().load(run_id).await?;
    if !state.status.is_terminal() {
        return Err(ReplayError::Unfinished {
            run_id: run_id.to_owned(),
            status: state.status,
        });
    }
    let store = runner.store();
    let calls = store.calls(run_id).await.map_err(RunError::from)?;
    if calls.is_empty() {
        return Err(ReplayError::NoRecord(run_id.to_owned()));
    }
    let frames = all_frames(runner, run_id).await?;
    Ok(Recorded {
        state,
        calls,
        frames,
    })
}

/// Every frame of a run's log, in order.
pub async fn all_frames(runner: &Runner, run_id: &str) -> Result<Vec<Frame>, RunError> {
    const PAGE: usize = 1000;
    let mut frames: Vec<Frame> = Vec::new();
    loop {
        let after = frames.last().map_or(0, |f| f.seq);
        let page = runner.store().read_after(run_id, after, PAGE).await?;
        let done = page.len() < PAGE;
        frames.extend(page);
        if done {
            return Ok(frames);
        }
    }
}

/// How a replay went.
#[derive(Debug)]
pub enum Replayed {
    /// The log came out identical (`interleaved`: but for how steps that ran at the same time
    /// interleave, see [`LogMatch::Identical`]).
    Identical {
        run_id: String,
        frames: usize,
        interleaved: bool,
    },
    /// A request was not the recorded one: the run was stopped there.
    Diverged {
        run_id: String,
        divergence: Box<Divergence>,
    },
    /// Every request matched, yet the logs differ (the code changed what it makes of replies).
    Differs {
        run_id: String,
        index: usize,
        original: Option<serde_json::Value>,
        replayed: Option<serde_json::Value>,
    },
}

/// What a replay answered from the record, beside how it went.
#[derive(Debug)]
pub struct ReplayOutcome {
    pub replayed: Replayed,
    /// Calls answered from the record (a replay calls no model).
    pub served: u64,
    pub status: RunStatus,
}

/// Replays `recorded` to its end as a new run (no model calls) and compares the logs.
pub async fn replay(
    runner: &Runner,
    recorded: Recorded,
    prompts: Arc<Prompts>,
    redact: Arc<dyn Redact>,
) -> Result<ReplayOutcome, ReplayError> {
    let Recorded {
        state,
        calls,
        frames,
    } = recorded;
    let tape = Arc::new(Tape::replay(calls, redact, delta_pieces(&frames)));
    let model: Arc<dyn Model> = tape.clone();
    let (messages, notices) = opening_notes(&frames);
    let replayer = runner.with_team(
        Planner::with_prompts(model.clone(), prompts.clone()),
        specialists_with_prompts(model, prompts),
        |config| {
            // Every piece is written as it comes, so frames are cut as the original's were.
            config.delta_max_chars = 1;
            config.delta_max_age_ms = 0;
            // What the original's process said of its model, whichever process replays it.
            config.messages = messages;
            config.notices = notices;
        },
    );
    let launch = start_again(&replayer, &state, "replay").await?;
    let run_id = launch.state.run_id.clone();
    let drive = replayer.drive(launch);
    tokio::pin!(drive);
    let status = tokio::select! {
        status = &mut drive => status?,
        () = tape.diverged() => {
            let _ = replayer.cancel(&run_id, "replay: a request differs from the record".into()).await;
            (&mut drive).await?
        }
    };
    let replayed = match tape.divergence() {
        Some(divergence) => Replayed::Diverged {
            run_id,
            divergence: Box::new(divergence),
        },
        None => {
            let again = all_frames(runner, &run_id).await?;
            match compare_logs(&frames, &again) {
                LogMatch::Identical {
                    frames,
                    interleaved,
                } => Replayed::Identical {
                    run_id,
                    frames,
                    interleaved,
                },
                LogMatch::Differs {
                    index,
                    original,
                    replayed,
                } => Replayed::Differs {
                    run_id,
                    index,
                    original,
                    replayed,
                },
            }
        }
    };
    Ok(ReplayOutcome {
        replayed,
        served: tape.served(),
        status,
    })
}

/// A fork, started and ready to drive with its own runner.
pub struct Forked {
    pub runner: Runner,
    pub launch: Launch,
    pub tape: Arc<Tape>,
    /// The units answered from the record.
    pub reused: BTreeSet<CallUnit>,
}

/// Starts a new run with `recorded`'s request that reuses the recorded calls of everything
/// before `from_step` first started, and asks `live` from there on.
pub async fn fork(
    runner: &Runner,
    recorded: Recorded,
    from_step: &str,
    live: Arc<dyn Model>,
    prompts: Arc<Prompts>,
) -> Result<Forked, ReplayError> {
    let reused = reused_units(&recorded, from_step)?;
    let store = runner.store().clone();
    let tape = Arc::new(Tape::fork(
        recorded.calls,
        reused.clone(),
        live,
        store,
        runner.transitions().clock().clone(),
    ));
    let model: Arc<dyn Model> = tape.clone();
    let forker = runner.with_team(
        Planner::with_prompts(model.clone(), prompts.clone()),
        specialists_with_prompts(model, prompts),
        |_| {},
    );
    let launch = start_again(&forker, &recorded.state, "fork").await?;
    Ok(Forked {
        runner: forker,
        launch,
        tape,
        reused,
    })
}

/// A new run of the original's request (without its idempotency key, which names the original).
async fn start_again(runner: &Runner, original: &RunState, kind: &str) -> Result<Launch, RunError> {
    let mut request = original.request.clone();
    request.idempotency_key = None;
    let correlation = format!("{kind}-of-{}", original.run_id);
    match runner.start(request, Some(correlation)).await? {
        Started::New(launch) => Ok(*launch),
        Started::Existing { run_id } => Err(RunError::NotFound(run_id)),
    }
}

/// The messages and warnings the original's process put right after `start` (which model
/// ran it), so a replay says the same whatever process runs it.
fn opening_notes(frames: &[Frame]) -> (Vec<String>, Vec<String>) {
    let mut rest = frames.iter().skip(1).map(|f| &f.event.kind).peekable();
    let mut messages = Vec::new();
    while let Some(EventKind::Message { message }) = rest.peek() {
        messages.push(message.clone());
        rest.next();
    }
    let mut notices = Vec::new();
    while let Some(EventKind::Warning {
        message,
        data: None,
    }) = rest.peek()
    {
        notices.push(message.clone());
        rest.next();
    }
    (messages, notices)
}

/// Each step's delta texts, in the order the log has them.
pub fn delta_pieces(frames: &[Frame]) -> HashMap<String, VecDeque<String>> {
    let mut pieces: HashMap<String, VecDeque<String>> = HashMap::new();
    for frame in frames {
        if let EventKind::Delta { message, data } = &frame.event.kind {
            pieces
                .entry(data.step_id.clone())
                .or_default()
                .push_back(message.clone());
        }
    }
    pieces
}

/// The units whose calls a fork from `from_step` reuses: the plan versions proposed and the
/// step attempts started before `from_step` first started.
pub fn reused_units(
    recorded: &Recorded,
    from_step: &str,
) -> Result<BTreeSet<CallUnit>, ReplayError> {
    let mut reused = BTreeSet::new();
    let mut attempts: HashMap<&str, u32> = HashMap::new();
    let mut found = false;
    for frame in &recorded.frames {
        match &frame.event.kind {
            EventKind::PlanUpdate { data } => {
                reused.insert(CallUnit::Plan {
                    version: data.version,
                });
            }
            EventKind::Handoff { data, .. } if data.step_id == from_step => {
                found = true;
                break;
            }
            EventKind::Handoff { message, data } if *message == HandoffStage::Occurred => {
                let attempt = attempts.entry(data.step_id.as_str()).or_default();
                *attempt += 1;
                reused.insert(CallUnit::Step {
                    step_id: data.step_id.clone(),
                    attempt: *attempt,
                });
            }
            _ => {}
        }
    }
    if !found {
        let mut steps: Vec<&str> = recorded
            .frames
            .iter()
            .filter_map(|f| match &f.event.kind {
                EventKind::Handoff { data, .. } => Some(data.step_id.as_str()),
                _ => None,
            })
            .collect();
        steps.dedup();
        return Err(ReplayError::NoSuchStep {
            run_id: recorded.state.run_id.clone(),
            step_id: from_step.to_owned(),
            steps: steps.join(", "),
        });
    }
    Ok(reused)
}
