//! What this process knows of a watched run's log without asking the database: the frames its
//! own writes appended most recently, kept while a stream waits on the run.
//!
//! A stream reads each batch of streamed text right after it is appended: woken by the append,
//! it used to look for new frames (one query) and read them (another), about 70 times a run at
//! real model latency. The append already had those frames in hand, as the wire carries them, so
//! they are kept here and the stream reads them from memory. Only what follows `after` without a
//! gap is served from here; anything else (a reader further behind, frames another process
//! appended) is read from the database as before.

use std::collections::VecDeque;

use orchestrator_core::event::WireFrame;
use tokio::sync::watch;

/// The most frames kept per watched run: more than a hand-off appends at once.
pub(super) const TAIL_FRAMES: usize = 64;

/// A run that a stream waits on: who to wake, and the frames appended here most recently.
pub(super) struct Watched {
    pub(super) woken: watch::Sender<u64>,
    tail: VecDeque<WireFrame>,
}

impl Watched {
    pub(super) fn new() -> (Self, watch::Receiver<u64>) {
        let (woken, receiver) = watch::channel(0);
        let watched = Watched {
            woken,
            tail: VecDeque::new(),
        };
        (watched, receiver)
    }

    /// Keeps `frames` (just committed, in seq order), dropping the oldest past the limit.
    pub(super) fn push(&mut self, frames: impl IntoIterator<Item = WireFrame>) {
        for frame in frames {
            // A frame that does not follow the last kept (another process appended between)
            // starts the tail over: what is kept stays gap-free.
            if self.last_seq().is_some_and(|last| frame.seq != last + 1) {
                self.tail.clear();
            }
            self.tail.push_back(frame);
        }
        while self.tail.len() > TAIL_FRAMES {
            self.tail.pop_front();
        }
    }

    /// The seq of the last frame appended here, if any is kept.
    pub(super) fn last_seq(&self) -> Option<u64> {
        self.tail.back().map(|f| f.seq)
    }

    /// Up to `limit` frames after `after`, when the tail holds the very next one; None when
    /// the database must answer.
    pub(super) fn after(&self, after: u64, limit: usize) -> Option<Vec<WireFrame>> {
        let first = self.tail.front()?.seq;
        if after + 1 < first || limit == 0 {
            return None;
        }
        let skip = usize::try_from(after + 1 - first).ok()?;
        Some(self.tail.iter().skip(skip).take(limit).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64) -> WireFrame {
        WireFrame {
            seq,
            name: "delta".into(),
            data: format!(r#"{{"type":"delta","n":{seq}}}"#),
        }
    }

    fn seqs(frames: &[WireFrame]) -> Vec<u64> {
        frames.iter().map(|f| f.seq).collect()
    }

    #[test]
    fn a_reader_at_or_inside_the_tail_is_answered_from_it() {
        // GIVEN frames 5 to 9 appended here
        let (mut watched, _rx) = Watched::new();
        watched.push((5..=9).map(frame));
        // WHEN readers ask from inside it, at its end, and before it
        // THEN the first two are answered from memory (the second with nothing new), the
        // third is left to the database
        assert_eq!(seqs(&watched.after(6, 10).unwrap()), [7, 8, 9]);
        assert_eq!(seqs(&watched.after(4, 2).unwrap()), [5, 6]);
        assert!(watched.after(9, 10).unwrap().is_empty());
        assert!(watched.after(3, 10).is_none());
        assert_eq!(watched.last_seq(), Some(9));
    }

    #[test]
    fn a_gap_starts_the_tail_over_and_the_oldest_frames_go_first() {
        // GIVEN frames 1 to 3, then 7 (4 to 6 appended by another process)
        let (mut watched, _rx) = Watched::new();
        watched.push((1..=3).map(frame));
        watched.push([frame(7)]);
        // THEN only 7 is kept: a reader after 3 goes to the database
        assert!(watched.after(3, 10).is_none());
        assert_eq!(seqs(&watched.after(6, 10).unwrap()), [7]);
        // AND past the limit the oldest frames are dropped
        watched.push((8..8 + TAIL_FRAMES as u64).map(frame));
        assert!(watched.after(6, 10).is_none());
        assert_eq!(watched.after(8, 1000).unwrap().len(), TAIL_FRAMES - 1);
    }
}
