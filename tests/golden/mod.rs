//! The reference run's SSE frames, normalised so that two runs of the same inputs compare
//! equal whatever their ids, clocks and chunk timing: the golden file pins the wire contract
//! across refactors, on every path (`orchestrator run`, `serve`, the emulated AWS stack).
//!
//! Normalised: run and correlation ids are dropped, every `durationMs` is 0, `expiresAt` is
//! a placeholder, consecutive `delta` frames of one step are joined into one (how a draft is
//! cut into frames depends on timing), the offline model's notice is one placeholder (its fix
//! names an env var locally and a stack parameter on AWS), and ids are renumbered 1..n.
//!
//! `GOLDEN_UPDATE=1 cargo test --test golden_local` rewrites the file from a local run.

#![allow(dead_code)] // each test binary uses part of it

use std::path::PathBuf;

use orchestrator_core::event::SseParser;
use serde_json::Value;

/// The reference run's objective (the README's main job).
pub const OBJECTIVE: &str = "Write a launch post for Acme Sync, our file sync app";

pub fn golden_path() -> PathBuf {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    while !dir.join("tests/golden").is_dir() {
        assert!(dir.pop(), "no tests/golden above the package");
    }
    dir.join("tests/golden/reference_run.jsonl")
}

/// The frames' JSON data, in order, normalised (see the module docs).
pub fn normalise(frames: impl IntoIterator<Item = Value>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for mut data in frames {
        let obj = data
            .as_object_mut()
            .expect("every frame's data is an object");
        obj.remove("runId");
        obj.remove("correlationId");
        scrub(&mut data);
        if data["type"] == "delta"
            && let Some(last) = out.last_mut()
            && last["type"] == "delta"
            && last["data"]["stepId"] == data["data"]["stepId"]
        {
            let joined = format!(
                "{}{}",
                last["message"].as_str().unwrap_or_default(),
                data["message"].as_str().unwrap_or_default()
            );
            last["message"] = Value::String(joined);
            continue;
        }
        out.push(data);
    }
    out
}

fn scrub(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match key.as_str() {
                    "durationMs" => *v = Value::from(0),
                    "expiresAt" => *v = Value::from("<time>"),
                    "message" if v.as_str().is_some_and(is_offline_notice) => {
                        *v = Value::from("<offline model notice>")
                    }
                    _ => scrub(v),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(scrub),
        _ => {}
    }
}

fn is_offline_notice(text: &str) -> bool {
    text.starts_with("Using the built-in offline model")
}

/// One frame per line, so a change shows as a readable diff.
pub fn to_lines(frames: &[Value]) -> String {
    frames
        .iter()
        .map(|f| serde_json::to_string(f).expect("JSON") + "\n")
        .collect()
}

/// Compares with the golden file (or rewrites it under `GOLDEN_UPDATE=1`), naming the first
/// frame that differs.
pub fn assert_golden(path_label: &str, frames: &[Value]) {
    let path = golden_path();
    let actual = to_lines(frames);
    if std::env::var_os("GOLDEN_UPDATE").is_some() {
        std::fs::write(&path, &actual).expect("write the golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read {}: {e} (GOLDEN_UPDATE=1 writes it)", path.display()));
    if expected == actual {
        return;
    }
    let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    let at = e
        .iter()
        .zip(&a)
        .position(|(x, y)| x != y)
        .unwrap_or(e.len().min(a.len()));
    panic!(
        "{path_label}: the reference run's frames differ from {} at frame {} ({} expected, {} seen)\n  expected: {}\n  seen:     {}",
        path.display(),
        at + 1,
        e.len(),
        a.len(),
        e.get(at).unwrap_or(&"<end>"),
        a.get(at).unwrap_or(&"<end>"),
    );
}

/// The JSON data of every frame of an SSE text, in order.
pub fn data_of(sse: &str) -> Vec<Value> {
    let mut parser = SseParser::default();
    parser
        .push(sse)
        .into_iter()
        .map(|f| serde_json::from_str(&f.data).expect("one-line JSON data"))
        .collect()
}
