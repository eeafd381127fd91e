//! The events a run emits, and their Server-Sent Events wire encoding (README.md, "The
//! RunRequest and the stream").

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::patch::PlanPatch;
use crate::types::{
    FINALIZE_CAPABILITY, QA_CAPABILITY, QualityGate, RunStatus, STRATEGY_CAPABILITY,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Planning,
    Analysis,
    Generation,
    Qa,
    Finalization,
}

impl Phase {
    /// The phase a capability's work belongs to.
    pub fn of_capability(capability: &str) -> Phase {
        match capability {
            STRATEGY_CAPABILITY => Phase::Analysis,
            QA_CAPABILITY => Phase::Qa,
            FINALIZE_CAPABILITY => Phase::Finalization,
            _ => Phase::Generation,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum HandoffStage {
    Requested,
    Occurred,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Handoff {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub to: String,
    pub capability_id: String,
    pub step_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct PlanUpdate {
    pub patch: PlanPatch,
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct StepRef {
    pub step_id: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct TokenCounts {
    pub input: u64,
    pub output: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct MetricsScope {
    pub step_id: String,
    pub capability_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum HitlKind {
    Approval,
    Clarify,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct HitlRequest {
    pub checkpoint_id: String,
    pub kind: HitlKind,
    pub question: String,
    /// RFC 3339, UTC.
    pub expires_at: String,
    /// The step that waits on the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_id: Option<String>,
    /// How soon the asking specialist needs the answer (requests made with `hitl_request`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urgency: Option<crate::tools::Urgency>,
}

/// One event's payload; `type` on the wire is the variant name in snake_case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum EventKind {
    Start {
        message: String,
    },
    Phase {
        phase: Phase,
        message: String,
    },
    PlanUpdate {
        data: PlanUpdate,
    },
    Handoff {
        message: HandoffStage,
        data: Handoff,
    },
    Delta {
        message: String,
        data: StepRef,
    },
    ToolCall {
        message: String,
        data: Value,
    },
    ToolResult {
        message: String,
        data: Value,
    },
    Message {
        message: String,
    },
    Warning {
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<Value>,
    },
    Error {
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<Value>,
    },
    Metrics {
        tokens: TokenCounts,
        duration_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<MetricsScope>,
    },
    HitlRequest {
        data: HitlRequest,
    },
    Complete {
        data: Value,
        duration_ms: u64,
        status: RunStatus,
        /// `failed` when the run completed below the QA threshold; absent when it passed.
        #[serde(default, skip_serializing_if = "QualityGate::is_passed")]
        quality_gate: QualityGate,
    },
}

impl EventKind {
    /// The SSE `event:` name, equal to the JSON `type`.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Start { .. } => "start",
            EventKind::Phase { .. } => "phase",
            EventKind::PlanUpdate { .. } => "plan_update",
            EventKind::Handoff { .. } => "handoff",
            EventKind::Delta { .. } => "delta",
            EventKind::ToolCall { .. } => "tool_call",
            EventKind::ToolResult { .. } => "tool_result",
            EventKind::Message { .. } => "message",
            EventKind::Warning { .. } => "warning",
            EventKind::Error { .. } => "error",
            EventKind::Metrics { .. } => "metrics",
            EventKind::HitlRequest { .. } => "hitl_request",
            EventKind::Complete { .. } => "complete",
        }
    }

    pub fn warning(message: impl Into<String>, data: Option<Value>) -> Self {
        EventKind::Warning {
            message: message.into(),
            data,
        }
    }
}

/// An event as stored and sent: the payload plus the run it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Event {
    #[serde(flatten)]
    pub kind: EventKind,
    pub correlation_id: String,
    pub run_id: String,
}

/// An event with its place in the run's log: seq is 1, 2, 3... per run, without gaps.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub seq: u64,
    pub event: Event,
}

/// What every stream starts with.
pub const SSE_PROLOGUE: &str = ":\n\n";
/// The keep-alive comment.
pub const SSE_PING: &str = ": ping\n\n";

impl Frame {
    /// `id: <seq>\nevent: <type>\ndata: <one-line JSON>\n\n`
    pub fn to_sse(&self) -> String {
        let mut out = Vec::new();
        WireFrame::of(self).write_sse(&mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// A frame as the wire carries it: its seq, its type and its data, the event's one-line JSON.
/// A store that keeps that JSON hands it over without decoding it (see
/// [`crate::ports::EventLog::read_wire_after`]), so a stream never decodes and re-encodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireFrame {
    pub seq: u64,
    /// The event's `type` (its SSE `event:` name).
    pub name: String,
    pub data: String,
}

impl WireFrame {
    pub fn of(frame: &Frame) -> Self {
        // serde_json escapes control characters inside strings, so the JSON is one line.
        let data = serde_json::to_string(&frame.event).unwrap_or_else(|e| {
            format!(r#"{{"type":"error","message":"unencodable event: {e}"}}"#)
        });
        Self {
            seq: frame.seq,
            name: frame.event.kind.name().to_owned(),
            data,
        }
    }

    /// An event's stored JSON as a frame; None when it has no `type`.
    pub fn from_json(seq: u64, data: String) -> Option<Self> {
        let name = match leading_type(&data) {
            Some(name) => name.to_owned(),
            None => serde_json::from_str::<serde_json::Value>(&data)
                .ok()?
                .get("type")?
                .as_str()?
                .to_owned(),
        };
        Some(Self { seq, name, data })
    }

    pub fn is_complete(&self) -> bool {
        self.name == "complete"
    }

    /// Appends `id: <seq>\nevent: <type>\ndata: <JSON>\n\n`.
    pub fn write_sse(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let _ = write!(out, "id: {}\nevent: {}\ndata: ", self.seq, self.name);
        out.extend_from_slice(self.data.as_bytes());
        out.extend_from_slice(b"\n\n");
    }
}

/// The `type` an event's JSON opens with, as serde writes it: `{"type":"<name>",`.
fn leading_type(json: &str) -> Option<&str> {
    let rest = json.strip_prefix("{\"type\":\"")?;
    let name = &rest[..rest.find('"')?];
    name.bytes()
        .all(|b| b.is_ascii_lowercase() || b == b'_')
        .then_some(name)
}

/// One frame read back from an SSE byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseFrame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// An incremental SSE parser (comments are dropped); for clients and tests.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: String,
    /// The start of a UTF-8 character whose remaining bytes have not arrived yet.
    partial: Vec<u8>,
}

impl SseParser {
    /// Feeds raw bytes as they come off the network; a chunk may end inside a character.
    /// Invalid UTF-8 is read as U+FFFD.
    pub fn push_bytes(&mut self, chunk: &[u8]) -> Vec<SseFrame> {
        // The common case, a chunk of whole characters, goes straight through.
        if self.partial.is_empty()
            && let Ok(text) = std::str::from_utf8(chunk)
        {
            return self.push(text);
        }
        self.partial.extend_from_slice(chunk);
        let mut text = String::new();
        let mut rest = std::mem::take(&mut self.partial);
        loop {
            match std::str::from_utf8(&rest) {
                Ok(valid) => {
                    text.push_str(valid);
                    break;
                }
                Err(e) => {
                    let (valid, tail) = rest.split_at(e.valid_up_to());
                    text.push_str(&String::from_utf8_lossy(valid));
                    match e.error_len() {
                        // Incomplete character at the end: keep it for the next chunk.
                        None => {
                            self.partial = tail.to_vec();
                            break;
                        }
                        Some(bad) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            rest = tail[bad..].to_vec();
                        }
                    }
                }
            }
        }
        self.push(&text)
    }

    /// Feeds bytes (as text) and returns the frames completed by them.
    pub fn push(&mut self, chunk: &str) -> Vec<SseFrame> {
        self.buf.push_str(chunk);
        let mut out = Vec::new();
        // Blocks are parsed where they lie and dropped from the buffer once, at the end.
        let mut start = 0;
        while let Some(end) = self.buf[start..].find("\n\n") {
            if let Some(frame) = parse_block(&self.buf[start..start + end]) {
                out.push(frame);
            }
            start += end + 2;
        }
        self.buf.drain(..start);
        out
    }
}

/// One block of an SSE stream (the lines before a blank line), or `None` when it has no data:
/// as EventSource does, a block without data (e.g. only `retry:`) is no event.
fn parse_block(block: &str) -> Option<SseFrame> {
    let mut frame = SseFrame {
        id: None,
        event: None,
        data: String::new(),
    };
    let mut has_data = false;
    for line in block.lines() {
        if line.starts_with(':') || line.is_empty() {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => frame.id = Some(value.to_owned()),
            "event" => frame.event = Some(value.to_owned()),
            "data" => {
                if has_data {
                    frame.data.push('\n');
                }
                frame.data.push_str(value);
                has_data = true;
            }
            _ => {}
        }
    }
    has_data.then_some(frame)
}

/// Formats milliseconds since the Unix epoch as RFC 3339 UTC (`2026-11-25T04:15:02.123Z`).
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_events_json_is_sent_as_is_and_names_its_type() {
        // GIVEN a frame and its event's JSON as a store keeps it
        let frame = Frame {
            seq: 7,
            event: Event {
                kind: EventKind::Delta {
                    message: "line one\nline \"two\"".into(),
                    data: StepRef {
                        step_id: "s2".into(),
                    },
                },
                correlation_id: "c".into(),
                run_id: "r".into(),
            },
        };
        let stored = serde_json::to_string(&frame.event).unwrap();

        // WHEN the JSON is read back as a wire frame, without decoding it
        let wire = WireFrame::from_json(7, stored.clone()).unwrap();

        // THEN it is the frame as the stream would have encoded it, byte for byte
        assert_eq!(wire, WireFrame::of(&frame));
        let mut sse = Vec::new();
        wire.write_sse(&mut sse);
        assert_eq!(String::from_utf8(sse).unwrap(), frame.to_sse());
        assert!(frame.to_sse().starts_with("id: 7\nevent: delta\ndata: {"));
        // AND JSON written another way still gets its type, and JSON without one is refused
        let other = r#"{"runId":"r","type":"complete"}"#.to_owned();
        assert!(WireFrame::from_json(1, other).unwrap().is_complete());
        assert_eq!(WireFrame::from_json(1, "{}".into()), None);
    }
}
