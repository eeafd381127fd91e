//! The SSE wire encoding: frame shape, parsing back, and timestamps.

use orchestrator_core::event::{SSE_PING, SSE_PROLOGUE, SseFrame, SseParser, rfc3339_ms};
use orchestrator_core::{
    Engine, Event, EventKind, Frame, Input, Move, RunRequest, RunState, RunStatus, StepMetrics,
    StepResult, normalize_patch,
};
use serde_json::{Value, json};

fn frame(seq: u64, kind: EventKind) -> Frame {
    Frame {
        seq,
        event: Event {
            kind,
            correlation_id: "corr-7".into(),
            run_id: "run-42".into(),
        },
    }
}

fn data_json(frame: &SseFrame) -> Value {
    serde_json::from_str(&frame.data).unwrap_or_else(|e| panic!("{:?}: {e}", frame.data))
}

#[test]
fn a_frame_is_id_event_and_one_line_of_json() {
    // GIVEN a message whose text spans several lines
    let f = frame(
        3,
        EventKind::Message {
            message: "line one\nline two\r\n\nend".into(),
        },
    );
    // WHEN it is encoded
    let sse = f.to_sse();
    // THEN it is exactly three fields and a blank line, the data on one line
    let data = sse
        .strip_prefix("id: 3\nevent: message\ndata: ")
        .and_then(|rest| rest.strip_suffix("\n\n"))
        .unwrap_or_else(|| panic!("bad frame {sse:?}"));
    assert!(!data.contains('\n') && !data.contains('\r'), "{data:?}");
    // AND the data carries type, correlationId, runId and the text intact
    let v: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v["type"], "message");
    assert_eq!(v["correlationId"], "corr-7");
    assert_eq!(v["runId"], "run-42");
    assert_eq!(v["message"], "line one\nline two\r\n\nend");
}

#[test]
fn the_stream_opens_with_an_empty_comment() {
    assert_eq!(SSE_PROLOGUE, ":\n\n");
    // AND a parser reads no frame from the prologue or a ping
    let mut parser = SseParser::default();
    assert!(parser.push(SSE_PROLOGUE).is_empty());
    assert!(parser.push(SSE_PING).is_empty());
}

#[test]
fn frames_survive_being_split_at_any_point() {
    // GIVEN a stream with non-ASCII text, multi-line text and pings between frames
    let frames = [
        frame(
            1,
            EventKind::Start {
                message: "Démarrage 🚀".into(),
            },
        ),
        frame(
            2,
            EventKind::Delta {
                message: "Bonjour,\n\nvoici l'été ☀️".into(),
                data: orchestrator_core::event::StepRef {
                    step_id: "s2".into(),
                },
            },
        ),
        frame(
            3,
            EventKind::Complete {
                data: json!({ "message": "fin" }),
                duration_ms: 1234,
                status: RunStatus::Completed,
                quality_gate: Default::default(),
            },
        ),
    ];
    let mut stream = String::from(SSE_PROLOGUE);
    for f in &frames {
        stream.push_str(&f.to_sse());
        stream.push_str(SSE_PING);
    }
    let bytes = stream.as_bytes();
    for cut in 0..=bytes.len() {
        // WHEN the bytes arrive in two chunks split at `cut`, even inside a character
        let mut parser = SseParser::default();
        let mut got = parser.push_bytes(&bytes[..cut]);
        got.extend(parser.push_bytes(&bytes[cut..]));
        // THEN every frame comes back whole and in order, and the pings are dropped
        assert_eq!(got.len(), frames.len(), "cut at {cut}");
        for (parsed, sent) in got.iter().zip(&frames) {
            assert_eq!(parsed.id.as_deref(), Some(sent.seq.to_string().as_str()));
            assert_eq!(parsed.event.as_deref(), Some(sent.event.kind.name()));
            let back: Event =
                serde_json::from_str(&parsed.data).unwrap_or_else(|e| panic!("cut {cut}: {e}"));
            assert_eq!(back, sent.event, "cut at {cut}");
        }
    }
    // AND text chunks split at character boundaries parse the same
    for cut in (0..=stream.len()).filter(|&i| stream.is_char_boundary(i)) {
        let mut parser = SseParser::default();
        let mut got = parser.push(&stream[..cut]);
        got.extend(parser.push(&stream[cut..]));
        assert_eq!(got.len(), frames.len(), "cut at {cut}");
    }
    // AND one byte at a time works too
    let mut parser = SseParser::default();
    let got: Vec<SseFrame> = bytes
        .iter()
        .flat_map(|b| parser.push_bytes(std::slice::from_ref(b)))
        .collect();
    assert_eq!(got.len(), frames.len());
    assert_eq!(data_json(&got[1])["message"], "Bonjour,\n\nvoici l'été ☀️");
}

#[test]
fn a_run_streams_frames_numbered_one_to_n() {
    // GIVEN a chat run driven to completion, its events logged in order as the event log does
    let engine = Engine::default();
    let mut request = RunRequest::new("Say hi");
    request.mode = orchestrator_core::Mode::Chat;
    let mut state = RunState::new("run-42", "corr-7", request, 0);
    let mut emitted = Vec::new();
    let (next, t) = engine.apply(state, Input::Started, 10);
    state = next;
    emitted.extend(t.events);
    // (a driver: run what `next` names, apply its outcome, until the run has ended)
    while let Move::Dispatch { steps } = engine.next(&state) {
        for d in steps {
            let input = Input::StepFinished {
                result: StepResult {
                    step_id: d.step_id,
                    attempt: d.attempt,
                    output: json!({ "text": "hi" }),
                    error: None,
                    retryable: false,
                    metrics: StepMetrics {
                        duration_ms: 1,
                        attempt: d.attempt,
                        capability_id: d.capability_id,
                        input_tokens: 1,
                        output_tokens: 1,
                    },
                },
            };
            let (next, t) = engine.apply(state, input, 10);
            state = next;
            emitted.extend(t.events);
        }
    }
    assert_eq!(state.status, RunStatus::Completed);
    let frames: Vec<Frame> = emitted
        .into_iter()
        .zip(1..)
        .map(|(kind, seq)| frame(seq, kind))
        .collect();
    let body: String = std::iter::once(SSE_PROLOGUE.to_owned())
        .chain(frames.iter().map(Frame::to_sse))
        .collect();
    // WHEN a client parses the body
    let parsed = SseParser::default().push(&body);
    // THEN the ids run 1..n, each event name equals the data's type, and each frame names
    // the run and the correlation id
    let ids: Vec<String> = parsed.iter().filter_map(|f| f.id.clone()).collect();
    let expected: Vec<String> = (1..=frames.len()).map(|n| n.to_string()).collect();
    assert_eq!(ids, expected);
    let types: Vec<String> = parsed
        .iter()
        .map(|f| {
            let v = data_json(f);
            assert_eq!(v["runId"], "run-42");
            assert_eq!(v["correlationId"], "corr-7");
            assert_eq!(f.event.as_deref(), v["type"].as_str());
            v["type"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    assert_eq!(types.first().map(String::as_str), Some("start"));
    assert_eq!(types.last().map(String::as_str), Some("complete"));
    assert!(types.iter().any(|t| t == "message"));
}

#[test]
fn every_app_mode_event_type_is_named_as_the_wire_expects() {
    // GIVEN the events of an app run from start to its first plan
    let engine = Engine::default();
    let state = RunState::new("r", "c", RunRequest::new("Write"), 0);
    let (state, first) = engine.apply(state, Input::Started, 1);
    let patch = normalize_patch(&json!({ "steps": [{ "capability": "strategy" }] }), &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let (_, more) = engine.apply(
        state,
        Input::PlanProposed {
            patch,
            usage: Default::default(),
        },
        2,
    );
    // WHEN they are encoded
    let names: Vec<String> = first
        .events
        .into_iter()
        .chain(more.events)
        .map(|kind| {
            let sse = frame(1, kind).to_sse();
            let parsed = SseParser::default().push(&sse);
            assert_eq!(parsed.len(), 1);
            let v = data_json(&parsed[0]);
            assert_eq!(parsed[0].event.as_deref(), v["type"].as_str());
            v["type"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    // THEN they carry the contract's type names, in order
    assert_eq!(
        names,
        vec!["start", "phase", "plan_update", "phase", "handoff"]
    );
}

#[test]
fn timestamps_are_rfc3339_utc_with_milliseconds() {
    assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
    // a leap day
    assert_eq!(rfc3339_ms(1_709_210_096_789), "2024-02-29T12:34:56.789Z");
    // a leap day in a century year divisible by 400
    assert_eq!(rfc3339_ms(951_868_799_999), "2000-02-29T23:59:59.999Z");
    // a century year that is not a leap year goes from 28 February to 1 March
    assert_eq!(rfc3339_ms(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
    assert_eq!(rfc3339_ms(4_107_542_400_000), "2100-03-01T00:00:00.000Z");
}

#[test]
fn a_block_with_only_a_retry_hint_is_no_event() {
    // GIVEN a stream that ends with a reconnection hint, as the streamer's responses do
    let mut parser = SseParser::default();
    // WHEN it is parsed
    let frames = parser.push("id: 7\nevent: delta\ndata: {}\n\nretry: 1000\n\n");
    // THEN only the real frame comes out
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].id.as_deref(), Some("7"));
}
