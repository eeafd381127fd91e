//! [`Tape`]: a model that answers from a run's recorded calls.
//!
//! A replay answers every call from the record, and only when the request is the recorded one
//! (both redacted): the first request that differs, or that has no record, is kept as the
//! run's [`Divergence`] and answered with an error. A fork answers the units it was told to
//! reuse from the record whatever they ask, and hands every other call to a live model.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use orchestrator_core::ports::{
    CallLog, CallReply, CallUnit, Clock, Model, ModelError, ModelInfo, ModelRequest, ModelResponse,
    RecordedCall, StreamItem,
};

use crate::redact::{self, Redact};
use crate::scope::{CallKey, next_call, peek_call};

/// The first request of a replay that is not the recorded one.
#[derive(Debug, Clone, PartialEq)]
pub struct Divergence {
    pub unit: CallUnit,
    pub index: u32,
    /// None: the original run made no such call.
    pub recorded: Option<ModelRequest>,
    pub actual: ModelRequest,
}

impl Divergence {
    /// One line saying where the replay of `original` stopped, after `served` matching calls.
    pub fn headline(&self, original: &str, served: u64) -> String {
        format!(
            "the replay of run {original} stopped at {} call {}: the request differs from the recorded one ({served} calls matched before it)",
            self.unit,
            self.index + 1
        )
    }

    /// The recorded request and this run's, side by side around their first difference.
    pub fn side_by_side(&self, width: usize) -> String {
        let recorded = self.recorded.as_ref().map_or_else(
            || vec!["(the original run made no such call)".to_owned()],
            crate::compare::request_lines,
        );
        let actual = crate::compare::request_lines(&self.actual);
        crate::compare::side_by_side(&recorded, &actual, width)
    }
}

enum Mode {
    Replay,
    Fork {
        reuse: BTreeSet<CallUnit>,
        live: Arc<dyn Model>,
        /// Where the calls answered from the record are recorded again, for the new run.
        log: Arc<dyn CallLog>,
        clock: Arc<dyn Clock>,
    },
}

pub struct Tape {
    calls: HashMap<(CallUnit, u32), RecordedCall>,
    info: ModelInfo,
    redact: Arc<dyn Redact>,
    mode: Mode,
    /// Per step: the original log's delta texts, still to be given out, so that a replayed
    /// stream is cut where the original's frames were.
    pieces: Mutex<HashMap<String, VecDeque<String>>>,
    served: AtomicU64,
    delegated: AtomicU64,
    divergence: Mutex<Option<Divergence>>,
    diverged: tokio::sync::Notify,
}

impl Tape {
    /// Answers every call from `calls`. `pieces`: each step's delta texts in the original log.
    pub fn replay(
        calls: Vec<RecordedCall>,
        redact: Arc<dyn Redact>,
        pieces: HashMap<String, VecDeque<String>>,
    ) -> Self {
        let info = calls.first().map_or_else(
            || ModelInfo {
                provider: "replay".into(),
                model: "none recorded".into(),
            },
            |c| c.model.clone(),
        );
        Self::new(calls, info, redact, Mode::Replay, pieces)
    }

    /// Answers the calls of `reuse` from `calls` (recording them again under the new run in
    /// `log`), and every other call with `live`.
    pub fn fork(
        calls: Vec<RecordedCall>,
        reuse: BTreeSet<CallUnit>,
        live: Arc<dyn Model>,
        log: Arc<dyn CallLog>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let info = live.info();
        let mode = Mode::Fork {
            reuse,
            live,
            log,
            clock,
        };
        Self::new(calls, info, Arc::new(redact::Nothing), mode, HashMap::new())
    }

    fn new(
        calls: Vec<RecordedCall>,
        info: ModelInfo,
        redact: Arc<dyn Redact>,
        mode: Mode,
        pieces: HashMap<String, VecDeque<String>>,
    ) -> Self {
        Self {
            calls: calls
                .into_iter()
                .map(|c| ((c.unit.clone(), c.index), c))
                .collect(),
            info,
            redact,
            mode,
            pieces: Mutex::new(pieces),
            served: AtomicU64::new(0),
            delegated: AtomicU64::new(0),
            divergence: Mutex::new(None),
            diverged: tokio::sync::Notify::new(),
        }
    }

    /// Calls answered from the record.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Calls handed to the live model (a fork's).
    pub fn delegated(&self) -> u64 {
        self.delegated.load(Ordering::Relaxed)
    }

    /// The first request that did not match its record, if any did not.
    pub fn divergence(&self) -> Option<Divergence> {
        self.divergence.lock().ok().and_then(|d| d.clone())
    }

    /// Returns once a request has not matched its record.
    pub async fn diverged(&self) {
        self.diverged.notified().await;
    }
}

/// What the tape does with one call.
enum Answer<'a> {
    Recorded(&'a RecordedCall),
    Live(&'a dyn Model),
    Diverged,
}

impl Tape {
    /// Decides the call; takes its number unless a live model (which numbers it) answers it.
    fn answer(&self, request: &ModelRequest) -> (Option<CallKey>, Answer<'_>) {
        let key = peek_call();
        let answer = self.answer_to(key.clone(), request);
        if !matches!(answer, Answer::Live(_)) {
            next_call();
        }
        (key, answer)
    }

    fn answer_to(&self, key: Option<CallKey>, request: &ModelRequest) -> Answer<'_> {
        let recorded = key
            .as_ref()
            .and_then(|k| self.calls.get(&(k.unit.clone(), k.index)));
        match &self.mode {
            Mode::Fork { reuse, live, .. } => match (key.as_ref(), recorded) {
                (Some(k), Some(call)) if reuse.contains(&k.unit) => Answer::Recorded(call),
                _ => {
                    self.delegated.fetch_add(1, Ordering::Relaxed);
                    Answer::Live(live.as_ref())
                }
            },
            Mode::Replay => {
                let actual = redact::request(self.redact.as_ref(), request);
                match recorded {
                    Some(call) if call.request == actual => Answer::Recorded(call),
                    _ => {
                        self.diverge(key, recorded.map(|c| c.request.clone()), actual);
                        Answer::Diverged
                    }
                }
            }
        }
    }

    fn diverge(&self, key: Option<CallKey>, recorded: Option<ModelRequest>, actual: ModelRequest) {
        let (unit, index) = key.map_or((CallUnit::Plan { version: 0 }, 0), |k| (k.unit, k.index));
        if let Ok(mut slot) = self.divergence.lock()
            && slot.is_none()
        {
            *slot = Some(Divergence {
                unit,
                index,
                recorded,
                actual,
            });
            self.diverged.notify_one();
        }
    }

    /// Counts a call answered from the record; a fork records it again under its new run.
    async fn served_from(&self, key: Option<&CallKey>, call: &RecordedCall) {
        self.served.fetch_add(1, Ordering::Relaxed);
        if let (Mode::Fork { log, clock, .. }, Some(key)) = (&self.mode, key) {
            let mut again = call.clone();
            again.started_at_ms = clock.now_ms();
            if let Err(e) = log.record_call(&key.run_id, &again).await {
                tracing::warn!(run_id = %key.run_id, error = %e, "could not record a reused model call");
            }
        }
    }

    /// The recorded text cut as the original log's frames were, or as it streamed.
    fn pieces_of(&self, unit: &CallUnit, text: &str, cuts: &[u32]) -> Vec<String> {
        let from_log = unit.step_id().and_then(|step| {
            let mut all = self.pieces.lock().ok()?;
            take_pieces(all.get_mut(step)?, text)
        });
        from_log.unwrap_or_else(|| split_at_cuts(text, cuts))
    }
}

/// The error a replayed call gets when its request is not the recorded one.
fn diverged_error() -> ModelError {
    ModelError::Invalid("replay: this request differs from the recorded one".into())
}

#[async_trait]
impl Model for Tape {
    fn info(&self) -> ModelInfo {
        self.info.clone()
    }

    async fn complete(&self, request: ModelRequest) -> Result<ModelResponse, ModelError> {
        let (key, answer) = self.answer(&request);
        match answer {
            Answer::Live(model) => model.complete(request).await,
            Answer::Diverged => Err(diverged_error()),
            Answer::Recorded(call) => {
                self.served_from(key.as_ref(), call).await;
                match call.reply.clone() {
                    CallReply::Answered {
                        text,
                        tool_calls,
                        usage,
                        retries,
                        ..
                    } => Ok(ModelResponse {
                        text,
                        usage,
                        tool_calls,
                        retries,
                    }),
                    CallReply::Failed { error } => Err(error),
                }
            }
        }
    }

    fn stream(&self, request: ModelRequest) -> BoxStream<'_, Result<StreamItem, ModelError>> {
        let (key, answer) = self.answer(&request);
        let call = match answer {
            Answer::Live(model) => return model.stream(request),
            Answer::Diverged => return futures::stream::iter([Err(diverged_error())]).boxed(),
            Answer::Recorded(call) => call,
        };
        let items = self.items_of(call);
        futures::stream::once(async move {
            self.served_from(key.as_ref(), call).await;
            futures::stream::iter(items)
        })
        .flatten()
        .boxed()
    }
}

impl Tape {
    fn items_of(&self, call: &RecordedCall) -> Vec<Result<StreamItem, ModelError>> {
        match &call.reply {
            CallReply::Failed { error } => vec![Err(error.clone())],
            CallReply::Answered {
                text,
                tool_calls,
                usage,
                cuts,
                retries,
            } => {
                let retried = retries.iter().cloned().map(StreamItem::Retried);
                let texts = self
                    .pieces_of(&call.unit, text, cuts)
                    .into_iter()
                    .map(StreamItem::Text);
                let calls = tool_calls.iter().cloned().map(StreamItem::ToolCall);
                retried
                    .chain(texts)
                    .chain(calls)
                    .chain([StreamItem::Usage(*usage)])
                    .map(Ok)
                    .collect()
            }
        }
    }
}

/// `text` cut at the byte offsets `cuts` (ignoring any that is not a character boundary).
fn split_at_cuts(text: &str, cuts: &[u32]) -> Vec<String> {
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut from = 0;
    for &cut in cuts {
        let cut = cut as usize;
        if cut > from && cut < text.len() && text.is_char_boundary(cut) {
            out.push(text[from..cut].to_owned());
            from = cut;
        }
    }
    if from < text.len() {
        out.push(text[from..].to_owned());
    }
    out
}

/// `text` cut as the queued pieces are, taking them off the queue (a piece that runs past the
/// text's end keeps its rest for the next call); none when the queue does not spell `text`.
fn take_pieces(queue: &mut VecDeque<String>, text: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let front = queue.front_mut()?;
        if let Some(after) = rest.strip_prefix(front.as_str()) {
            out.push(queue.pop_front()?);
            rest = after;
        } else if let Some(left) = front.strip_prefix(rest) {
            out.push(rest.to_owned());
            *front = left.to_owned();
            rest = "";
        } else {
            return None;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_text_is_cut_where_the_log_cut_it_across_calls() {
        // GIVEN a step's logged pieces spanning two calls
        let mut queue: VecDeque<String> = ["Hel", "lo wor", "ld!"].map(String::from).into();

        // WHEN the two calls' texts are cut by them
        let first = take_pieces(&mut queue, "Hello w");
        let second = take_pieces(&mut queue, "orld!");

        // THEN each call gives out the pieces it covers, the straddling one split
        assert_eq!(first, Some(vec!["Hel".into(), "lo w".into()]));
        assert_eq!(second, Some(vec!["or".into(), "ld!".into()]));
        assert!(queue.is_empty());
        // AND text the pieces do not spell is not cut by them
        let mut other: VecDeque<String> = ["abc".into()].into();
        assert_eq!(take_pieces(&mut other, "xyz"), None);
    }

    #[test]
    fn recorded_cuts_split_the_text_and_bad_cuts_are_ignored() {
        assert_eq!(split_at_cuts("abcdef", &[2, 4]), ["ab", "cd", "ef"]);
        assert_eq!(split_at_cuts("éa", &[1]), ["éa"]);
        assert!(split_at_cuts("", &[]).is_empty());
    }
}
