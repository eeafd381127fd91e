//! Micro-benchmarks of the hot paths: the engine's transitions over a whole reference run, plan
//! patch normalisation, SSE frame encoding and delta batching. `cargo bench -p orchestrator-bench`.
//!
//! Inputs are built through serde (the wire shapes), so these keep compiling while the domain
//! types grow optional fields.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use orchestrator_core::batch::DeltaBatcher;
use orchestrator_core::engine::{Engine, EngineConfig, Input, Move, RunState};
use orchestrator_core::event::{Event, Frame};
use orchestrator_core::patch::normalize_patch;
use orchestrator_core::types::RunRequest;
use serde_json::{Value, json};

fn request() -> RunRequest {
    serde_json::from_value(
        json!({"objective": "Write a launch post for Acme Sync, our file sync app"}),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn engine() -> Engine {
    Engine::new(EngineConfig {
        capabilities: ["strategy", "generation", "qa", "finalize"]
            .into_iter()
            .map(str::to_owned)
            .collect(),
        ..EngineConfig::default()
    })
}

fn plan(reason: bool) -> Input {
    let raw = if reason {
        json!({"stepsRemove": ["s4"], "stepsAdd": [
            {"id": "s5", "capabilityId": "generation", "label": "Revise the draft", "dependsOn": ["s3"]},
            {"id": "s6", "capabilityId": "qa", "label": "Review the revision", "dependsOn": ["s5"]},
            {"id": "s7", "action": "finalize", "label": "Assemble the final result", "dependsOn": ["s6"]}]})
    } else {
        json!({"stepsAdd": [
            {"id": "s1", "capabilityId": "strategy", "label": "Define the audience"},
            {"id": "s2", "capabilityId": "generation", "label": "Write the draft", "dependsOn": ["s1"]},
            {"id": "s3", "capabilityId": "qa", "label": "Review the draft", "dependsOn": ["s2"]},
            {"id": "s4", "action": "finalize", "label": "Assemble the final result", "dependsOn": ["s3"]}]})
    };
    let patch = normalize_patch(&raw, &[]).unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_value(json!({"kind": "plan_proposed", "patch": patch,
        "usage": {"inputTokens": 300, "outputTokens": 80}}))
    .unwrap_or_else(|e| panic!("{e}"))
}

fn output(capability: &str, qa_runs: &mut u32) -> Value {
    let draft = "Introducing Acme Sync. ".repeat(40);
    match capability {
        "strategy" => json!({"audience": "teams", "angle": "no more lost files",
            "keyMessages": ["fast", "safe", "simple"], "tone": "warm", "callToAction": "Try it", "platform": "blog"}),
        "generation" => json!({"text": draft, "platform": "blog"}),
        "qa" => {
            *qa_runs += 1;
            let score = if *qa_runs == 1 { 0.5 } else { 1.0 };
            json!({"score": score, "pass": score >= 0.78, "issues": if score < 0.78 { vec!["No clear call to action"] } else { vec![] }, "criteria": []})
        }
        _ => json!({"result": {"platform": "blog", "content": draft},
            "quality": {"score": 1.0, "issues": [], "pass": true, "metrics": {}},
            "acceptance-report": {"overall": "pass", "criteria": []}}),
    }
}

/// The reference run through `Engine::next` and `Engine::apply` alone: every transition,
/// from start to finish, each step's outcome applied as it is dispatched.
fn reference_run(engine: &Engine, request: &RunRequest) -> usize {
    let mut state = RunState::new("run-1", "corr-1", request.clone(), 0);
    let mut now = 10;
    let (next, _) = engine.apply(state, Input::Started, now);
    state = next;
    let mut transitions = 1;
    let mut qa_runs = 0;
    let mut plans = 0;
    loop {
        let inputs = match engine.next(&state) {
            Move::Plan { .. } => {
                plans += 1;
                vec![plan(plans > 1)]
            }
            Move::Dispatch { steps } => steps
                .into_iter()
                .map(|d| {
                    let out = output(&d.capability_id, &mut qa_runs);
                    let input = json!({"kind": "step_finished", "result": {
                        "stepId": d.step_id, "attempt": d.attempt, "output": out,
                        "metrics": {"durationMs": 5, "attempt": d.attempt,
                            "capabilityId": d.capability_id, "inputTokens": 200, "outputTokens": 100}}});
                    serde_json::from_value(input).unwrap_or_else(|e| panic!("{e}"))
                })
                .collect(),
            _ => return transitions,
        };
        for input in inputs {
            now += 10;
            let (next, _) = engine.apply(state, input, now);
            state = next;
            transitions += 1;
        }
    }
}

fn bench_engine(c: &mut Criterion) {
    let engine = engine();
    let request = request();
    assert!(
        reference_run(&engine, &request) > 8,
        "the reference run did not run"
    );
    c.bench_function(
        "engine/apply: whole reference run (inputs built included)",
        |b| b.iter(|| reference_run(black_box(&engine), black_box(&request))),
    );
}

fn bench_patch(c: &mut Criterion) {
    let canonical = json!({"stepsAdd": [
        {"id": "s1", "capabilityId": "strategy", "label": "Define the audience"},
        {"id": "s2", "capabilityId": "generation", "label": "Write the draft", "dependsOn": ["s1"]},
        {"id": "s3", "capabilityId": "qa", "label": "Review the draft", "dependsOn": ["s2"]},
        {"id": "s4", "action": "finalize", "label": "Assemble", "dependsOn": ["s3"]}]});
    let aliased = json!({"steps": ["Research the audience", "Write the draft", "Review it", "Finalize"],
        "update": [{"op": "add", "path": "/steps/-", "value": {"capability": "writer", "title": "Polish"}}]});
    let existing: Vec<String> = ["s1", "s2", "s3"].into_iter().map(str::to_owned).collect();
    c.bench_function("patch/normalize: canonical stepsAdd", |b| {
        b.iter(|| normalize_patch(black_box(&canonical), &[]))
    });
    c.bench_function(
        "patch/normalize: aliased (plain strings, JSON-Patch ops)",
        |b| b.iter(|| normalize_patch(black_box(&aliased), black_box(&existing))),
    );
}

fn bench_sse(c: &mut Criterion) {
    let event: Event = serde_json::from_value(
        json!({"type": "delta", "message": "Introducing Acme Sync. ".repeat(11),
        "data": {"stepId": "s2"}, "correlationId": "9493c0de-5a9e-4d8e-9a43-3d3e0b5e8c11",
        "runId": "01a2f0d7-d440-75eb-a746-01e190d02c91"}),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let frame = Frame { seq: 42, event };
    c.bench_function("sse/encode: one 256-byte delta frame", |b| {
        b.iter(|| black_box(&frame).to_sse())
    });
}

fn bench_batching(c: &mut Criterion) {
    let chunks: Vec<String> = "Introducing Acme Sync. "
        .repeat(105)
        .chars()
        .collect::<Vec<_>>()
        .chunks(4)
        .map(|c| c.iter().collect())
        .collect();
    c.bench_function("batch/delta: 600 chunks of 4 chars, 5 ms apart", |b| {
        b.iter(|| {
            let mut batcher = DeltaBatcher::new(256, 50);
            let mut batches = 0;
            for (i, chunk) in chunks.iter().enumerate() {
                if batcher.push(black_box(chunk), i as u64 * 5).is_some() {
                    batches += 1;
                }
            }
            batches + usize::from(batcher.flush().is_some())
        })
    });
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_engine, bench_patch, bench_sse, bench_batching
}
criterion_main!(benches);
