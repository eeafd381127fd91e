//! Comparing a replay with its original: the two event logs frame by frame, and a request
//! that differs from its record, side by side.

use orchestrator_core::event::Frame;
use orchestrator_core::ports::ModelRequest;
use serde_json::Value;

/// Fields that differ between two runs of the same inputs by nature: when and how long.
const TIMED: &[&str] = &["durationMs", "expiresAt"];

/// A frame as compared: its seq, type and data, with the run's own ids and the clock taken out.
pub fn comparable(frame: &Frame) -> Value {
    let mut data = serde_json::to_value(&frame.event).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut data {
        map.remove("runId");
        map.remove("correlationId");
        map.insert("seq".into(), Value::from(frame.seq));
    }
    scrub(&mut data, &frame.event.run_id);
    data
}

fn scrub(value: &mut Value, run_id: &str) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if TIMED.contains(&key.as_str()) {
                    *v = Value::from("<time>");
                } else {
                    scrub(v, run_id);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| scrub(v, run_id)),
        Value::String(s) if !run_id.is_empty() && s.contains(run_id) => {
            *s = s.replace(run_id, "<run>");
        }
        _ => {}
    }
}

/// How a replayed log compares with the original.
#[derive(Debug, Clone, PartialEq)]
pub enum LogMatch {
    /// Frame for frame. `interleaved`: the same frames, each step's in the same order, but
    /// the frames of steps that ran at the same time interleave differently (their timing is
    /// the model's and the machine's, not the run's).
    Identical { frames: usize, interleaved: bool },
    /// The first frame that differs (none: that log had ended).
    Differs {
        index: usize,
        original: Option<Value>,
        replayed: Option<Value>,
    },
}

pub fn compare_logs(original: &[Frame], replayed: &[Frame]) -> LogMatch {
    let a: Vec<Value> = original.iter().map(comparable).collect();
    let b: Vec<Value> = replayed.iter().map(comparable).collect();
    match (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i)) {
        None => LogMatch::Identical {
            frames: a.len(),
            interleaved: false,
        },
        Some(_) if interleaved_alike(&a, &b) => LogMatch::Identical {
            frames: a.len(),
            interleaved: true,
        },
        Some(index) => LogMatch::Differs {
            index,
            original: a.get(index).cloned(),
            replayed: b.get(index).cloned(),
        },
    }
}

/// The same frames (seqs aside), and each step's frames in the same order.
fn interleaved_alike(a: &[Value], b: &[Value]) -> bool {
    let unseq = |frames: &[Value]| -> Vec<Value> {
        frames
            .iter()
            .map(|f| {
                let mut f = f.clone();
                if let Value::Object(map) = &mut f {
                    map.remove("seq");
                }
                f
            })
            .collect()
    };
    let (a, b) = (unseq(a), unseq(b));
    let sorted = |frames: &[Value]| {
        let mut texts: Vec<String> = frames.iter().map(Value::to_string).collect();
        texts.sort();
        texts
    };
    if a.len() != b.len() || sorted(&a) != sorted(&b) {
        return false;
    }
    let lane = |frames: &[Value], step: &Value| -> Vec<Value> {
        frames
            .iter()
            .filter(|f| &f["data"]["stepId"] == step)
            .cloned()
            .collect()
    };
    a.iter()
        .map(|f| &f["data"]["stepId"])
        .filter(|step| step.is_string())
        .all(|step| lane(&a, step) == lane(&b, step))
}

/// A request as lines a person can compare: its settings, then each message's text.
pub fn request_lines(request: &ModelRequest) -> Vec<String> {
    let mut lines = vec![
        format!("purpose: {:?}", request.purpose),
        format!(
            "temperature: {:?}  max_tokens: {:?}  json: {}",
            request.temperature, request.max_tokens, request.json
        ),
        format!(
            "schema: {}",
            request.schema.as_ref().map_or("none", |s| s.name.as_str())
        ),
        format!(
            "tools: {}",
            request
                .tools
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        "--- system".to_owned(),
    ];
    lines.extend(request.system.lines().map(str::to_owned));
    for (i, m) in request.messages.iter().enumerate() {
        lines.push(format!("--- message {} ({:?})", i + 1, m.role));
        lines.extend(m.content.lines().map(str::to_owned));
        for call in &m.tool_calls {
            lines.push(format!("tool call {} {}", call.name, call.arguments));
        }
    }
    if let Some(schema) = &request.schema {
        lines.push("--- schema".to_owned());
        lines.push(schema.schema.to_string());
    }
    lines
}

/// The two texts side by side around their first differing line (`>` marks it), each column
/// `width` characters; lines past the width end in `…`.
pub fn side_by_side(left: &[String], right: &[String], width: usize) -> String {
    let first = (0..left.len().max(right.len()))
        .find(|&i| left.get(i) != right.get(i))
        .unwrap_or(0);
    let from = first.saturating_sub(3);
    let to = (first + 6).min(left.len().max(right.len()));
    let mut out = format!(
        "  line | {:<width$} | {}\n",
        "recorded",
        "this run",
        width = width
    );
    for i in from..to {
        let (l, r) = (
            left.get(i).map_or("", String::as_str),
            right.get(i).map_or("", String::as_str),
        );
        let mark = if left.get(i) == right.get(i) {
            ' '
        } else {
            '>'
        };
        // A long line that differs is shown from a little before where it differs.
        let skip = if mark == '>' {
            shown_from(l, r, width)
        } else {
            0
        };
        let (l, r) = (fit(l, skip, width), fit(r, skip, width));
        out.push_str(&format!("{mark}{:>5} | {l:<width$} | {r}\n", i + 1));
    }
    out
}

/// Characters to skip so the first difference of `a` and `b` shows in a column of `width`.
fn shown_from(a: &str, b: &str, width: usize) -> usize {
    let same = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
    if same + 2 < width {
        0
    } else {
        same.saturating_sub(width / 3)
    }
}

/// `text` from its `skip`th character (marked `…`), cut to `width` (ending `…`).
fn fit(text: &str, skip: usize, width: usize) -> String {
    let mut shown: String = if skip > 0 {
        std::iter::once('…')
            .chain(text.chars().skip(skip + 1))
            .collect()
    } else {
        text.to_owned()
    };
    if shown.chars().count() > width {
        shown = shown.chars().take(width.saturating_sub(1)).collect();
        shown.push('…');
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestrator_core::event::{Event, EventKind};

    fn frame(seq: u64, run: &str, message: &str) -> Frame {
        Frame {
            seq,
            event: Event {
                kind: EventKind::Message {
                    message: message.replace("{run}", run),
                },
                correlation_id: format!("c-{run}"),
                run_id: run.into(),
            },
        }
    }

    #[test]
    fn logs_that_differ_only_in_their_run_compare_identical() {
        // GIVEN two logs of different runs with the same messages, one naming its run
        let a = [frame(1, "r-1", "run {run} starts"), frame(2, "r-1", "done")];
        let b = [frame(1, "r-2", "run {run} starts"), frame(2, "r-2", "done")];

        // THEN they are identical
        assert_eq!(
            compare_logs(&a, &b),
            LogMatch::Identical {
                frames: 2,
                interleaved: false
            }
        );
    }

    fn step_frame(seq: u64, step: &str, text: &str) -> Frame {
        Frame {
            seq,
            event: Event {
                kind: EventKind::Delta {
                    message: text.into(),
                    data: orchestrator_core::event::StepRef {
                        step_id: step.into(),
                    },
                },
                correlation_id: "c".into(),
                run_id: "r".into(),
            },
        }
    }

    #[test]
    fn parallel_steps_that_interleave_otherwise_are_identical_but_not_a_reordered_step() {
        // GIVEN two steps that streamed at the same time
        let original = [
            step_frame(1, "s1", "a1"),
            step_frame(2, "s2", "b1"),
            step_frame(3, "s1", "a2"),
        ];
        // WHEN the replay interleaves them otherwise, each step's frames in order
        let interleaved = [
            step_frame(1, "s2", "b1"),
            step_frame(2, "s1", "a1"),
            step_frame(3, "s1", "a2"),
        ];
        // THEN the logs are identical but interleaved
        assert_eq!(
            compare_logs(&original, &interleaved),
            LogMatch::Identical {
                frames: 3,
                interleaved: true
            }
        );
        // AND a step whose own frames came in another order differs
        let reordered = [
            step_frame(1, "s1", "a2"),
            step_frame(2, "s2", "b1"),
            step_frame(3, "s1", "a1"),
        ];
        assert!(matches!(
            compare_logs(&original, &reordered),
            LogMatch::Differs { index: 0, .. }
        ));
    }

    #[test]
    fn the_first_differing_frame_is_named_and_a_shorter_log_differs() {
        let a = [frame(1, "r", "one"), frame(2, "r", "two")];
        let b = [frame(1, "r", "one"), frame(2, "r", "TWO")];
        let LogMatch::Differs { index, .. } = compare_logs(&a, &b) else {
            panic!("expected a difference")
        };
        assert_eq!(index, 1);
        assert!(matches!(
            compare_logs(&a, &a[..1]),
            LogMatch::Differs {
                index: 1,
                replayed: None,
                ..
            }
        ));
    }

    #[test]
    fn side_by_side_marks_the_first_differing_line() {
        let left: Vec<String> = ["a", "b", "c"].map(String::from).into();
        let right: Vec<String> = ["a", "B", "c"].map(String::from).into();
        let out = side_by_side(&left, &right, 10);
        let marked: Vec<&str> = out.lines().filter(|l| l.starts_with('>')).collect();
        assert_eq!(marked, [">    2 | b          | B"]);
    }

    #[test]
    fn a_long_line_is_shown_from_near_its_first_difference() {
        // GIVEN two long lines that differ only near their end
        let base = "x".repeat(100);
        let left = vec![format!("{base} old ending")];
        let right = vec![format!("{base} new ending")];

        // WHEN they are put side by side in narrow columns
        let out = side_by_side(&left, &right, 30);

        // THEN both columns show the difference
        let line = out.lines().find(|l| l.starts_with('>')).unwrap();
        assert!(line.contains("old") && line.contains("new"), "{line}");
    }
}
