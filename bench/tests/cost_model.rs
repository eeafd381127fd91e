#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the assertion in a test

//! The AWS cost model: Step Functions and Lambda from the emulated run's figures file when
//! there is one, else counted along the real state machine (infra/statemachine.asl.json).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use orchestrator_bench::cost::{self, LambdaAssumptions, RunShape, Source};
use orchestrator_bench::emulated::{EmulatedRun, Invocation};
use serde_json::{Value, json};

/// The reference workload as the DynamoDB run counts it.
fn reference_shape() -> RunShape {
    RunShape {
        planner_calls: 2,
        step_invocations: 6,
        dispatches: 6,
        model_ms: 4420,
    }
}

fn invocation(state: &str, function: &str, ms: Option<f64>) -> Invocation {
    Invocation {
        state: state.into(),
        function: function.into(),
        error: None,
        duration_ms: ms,
    }
}

fn figures() -> EmulatedRun {
    EmulatedRun {
        source: "a test".into(),
        run_id: "run-1".into(),
        status: "SUCCEEDED".into(),
        states_entered: BTreeMap::from([
            ("Plan".into(), 1),
            ("Route".into(), 2),
            ("Dispatch".into(), 1),
            ("RunStep".into(), 1),
            ("Advance".into(), 1),
            ("Notify".into(), 1),
        ]),
        task_retries: 1,
        invocations: vec![
            invocation("Plan", "planner", Some(20.2)),
            invocation("RunStep", "qa", Some(3.0)),
            Invocation {
                error: Some("Specialist.ModelThrottled".into()),
                ..invocation("RunStep", "qa", Some(0.4))
            },
            invocation("Advance", "advance", Some(7.5)),
            invocation("Notify", "advance", Some(0.0)),
        ],
        lambda_invoke_requests: 5,
        dynamodb_requests: BTreeMap::from([("PutItem".into(), 3)]),
        dynamodb_write_requests: 3,
        dynamodb_read_requests: 0,
        frames: BTreeMap::from([("start".into(), 1), ("complete".into(), 1)]),
        wall_ms: 1234,
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_cost_model_takes_transitions_invocations_and_billed_time_from_a_figures_file() {
    // GIVEN the figures of an emulated run in a file
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "figures.json",
        &serde_json::to_string(&figures()).unwrap(),
    );

    // WHEN the cost model is given that file
    let run = EmulatedRun::find(Some(&path), &dir.path().join("absent.json"))
        .unwrap()
        .expect("the figures");
    let c = cost::model(
        reference_shape(),
        LambdaAssumptions::default(),
        Some(&run),
        232.0,
        62.0,
        43_700,
    );

    // THEN Step Functions bills every state entered plus the retry, Lambda every invocation,
    // each invocation's time rounded up to the next ms (at least 1)
    let o = &c.orchestration;
    assert_eq!(o.state_transitions, 7 + 1);
    assert_eq!(o.lambda_invocations, 5);
    assert_eq!(o.function_ms, 21 + 3 + 1 + 8 + 1);
    let line = |what: &str| c.lines.iter().find(|l| l.what == what).unwrap();
    assert_eq!(line("Step Functions state transitions").quantity, 8.0);
    assert_eq!(line("Lambda requests").quantity, 5.0);
    let gb_s = 256.0 / 1024.0 * 34.0 / 1000.0;
    assert!((line("Lambda GB-s, function time").quantity - gb_s).abs() < 1e-12);
    // AND those lines say they were measured on the emulated stack; DynamoDB stays measured
    // by the benchmark and the model wait modelled
    for what in [
        "Step Functions state transitions",
        "Lambda requests",
        "Lambda GB-s, function time",
    ] {
        assert_eq!(line(what).source, Source::Emulated, "{what}");
    }
    assert_eq!(line("DynamoDB WRU").source, Source::Measured);
    assert_eq!(line("DynamoDB WRU").quantity, 232.0);
    assert_eq!(
        line("Lambda GB-s, waiting on the model").source,
        Source::Modelled
    );
    let report = c.report(Some(&run), &path);
    assert!(report.contains("measured (emulated stack)"), "{report}");
    assert!(report.contains(&path.display().to_string()), "{report}");
}

#[test]
fn an_emulated_run_without_durations_keeps_its_counts_and_models_the_function_time() {
    // GIVEN figures whose history gave no duration for one invocation
    let mut run = figures();
    run.invocations[0].duration_ms = None;

    // WHEN the cost model uses them
    let c = cost::model(
        reference_shape(),
        LambdaAssumptions::default(),
        Some(&run),
        0.0,
        0.0,
        0,
    );

    // THEN the counts are the run's, the function time the assumptions', marked modelled
    assert_eq!(c.orchestration.state_transitions, 8);
    assert_eq!(c.orchestration.source, Source::Emulated);
    assert_eq!(c.orchestration.function_ms_source, Source::Modelled);
    assert_eq!(
        c.orchestration.function_ms,
        cost::Orchestration::modelled(&reference_shape(), &LambdaAssumptions::default())
            .function_ms
    );
}

#[test]
fn a_missing_or_invalid_figures_file_is_an_error_that_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let default = dir.path().join("default.json");

    // GIVEN a path to a file that does not exist
    let missing = dir.path().join("nowhere.json");
    // WHEN it is asked for
    let err = EmulatedRun::find(Some(&missing), &default).unwrap_err();
    // THEN the error names it and says how to write it
    let msg = err.to_string();
    assert!(msg.contains(&missing.display().to_string()), "{msg}");
    assert!(msg.contains("--test aws_run"), "{msg}");

    // GIVEN files that are not figures (not JSON; JSON of another shape)
    for (name, text) in [("bad.json", "not json"), ("other.json", r#"{"runId": 1}"#)] {
        let bad = write(dir.path(), name, text);
        // WHEN they are asked for, or found at the default path
        for err in [
            EmulatedRun::find(Some(&bad), &default).unwrap_err(),
            EmulatedRun::find(None, &bad).unwrap_err(),
        ] {
            // THEN the error names the file
            let msg = err.to_string();
            assert!(msg.contains(&bad.display().to_string()), "{msg}");
        }
    }

    // GIVEN no path and nothing at the default path
    // THEN there are no figures, and no error: the model is used
    assert!(EmulatedRun::find(None, &default).unwrap().is_none());
}

#[test]
fn without_figures_the_transitions_follow_the_state_machine_definition() {
    // GIVEN the state machine the template deploys
    let asl: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/statemachine.asl.json"),
        )
        .unwrap(),
    )
    .unwrap();

    // WHEN the reference run's routes are walked through it: the planner dispatches strategy,
    // advance dispatches generation and QA, QA fails so advance routes to the planner, which
    // dispatches generation again, then QA, finalize, and the run succeeds
    let routes = [
        ("dispatch", 1),
        ("dispatch", 1),
        ("dispatch", 1),
        ("plan", 0),
        ("dispatch", 1),
        ("dispatch", 1),
        ("dispatch", 1),
        ("succeeded", 0),
    ];
    let entered = walk(&asl, &routes);

    // THEN the model counts the same transitions and invocations
    let shape = reference_shape();
    let modelled = cost::Orchestration::modelled(&shape, &LambdaAssumptions::default());
    assert_eq!(
        modelled.state_transitions,
        entered.values().sum::<u64>(),
        "{entered:?}"
    );
    let tasks = ["Plan", "RunStep", "Advance", "Notify"];
    assert_eq!(
        modelled.lambda_invocations,
        tasks
            .iter()
            .map(|t| entered.get(*t).copied().unwrap_or(0))
            .sum::<u64>(),
        "{entered:?}"
    );
    assert_eq!(
        cost::advance_invocations(&shape),
        entered["Advance"] + entered["Notify"]
    );
}

/// The states an execution enters when each task that returns a route (`OutputPath` of the
/// Lambda payload) returns the next of `routes`, with that many steps to dispatch.
fn walk(asl: &Value, routes: &[(&str, usize)]) -> BTreeMap<String, u64> {
    let states = &asl["States"];
    let mut entered = BTreeMap::new();
    let mut routes = routes.iter();
    let (mut route, mut items) = ("", 0);
    let mut at = asl["StartAt"].as_str().unwrap().to_owned();
    for _ in 0..1000 {
        *entered.entry(at.clone()).or_default() += 1;
        let state = &states[&at];
        let next = match state["Type"].as_str().unwrap() {
            "Task" => {
                if state["OutputPath"] == json!("$.Payload") {
                    (route, items) = *routes.next().expect("a route for every routing task");
                }
                state["Next"].as_str()
            }
            "Choice" => state["Choices"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["Variable"] == json!("$.route") && c["StringEquals"] == json!(route))
                .and_then(|c| c["Next"].as_str())
                .or_else(|| state["Default"].as_str()),
            "Map" => {
                let inner = &state["ItemProcessor"];
                let first = inner["StartAt"].as_str().unwrap();
                assert!(
                    inner["States"][first]["End"] == json!(true),
                    "one state per item"
                );
                *entered.entry(first.to_owned()).or_default() += items as u64;
                state["Next"].as_str()
            }
            "Succeed" | "Fail" => return entered,
            other => panic!("a {other} state on the reference path"),
        };
        at = next.expect("a next state").to_owned();
    }
    panic!("the walk did not end: {entered:?}")
}

#[test]
fn on_express_the_run_is_billed_by_execution_and_duration_not_by_transition() {
    // GIVEN the reference run's shape and DynamoDB figures, no emulated run
    let c = cost::model(
        reference_shape(),
        LambdaAssumptions::default(),
        None,
        232.0,
        62.0,
        43_700,
    );
    // WHEN it is priced on Express
    let e = &c.express;
    // THEN it is one segment (it runs well under 240 s), whose claim adds an invocation and a
    // write, and whose planner and advance moves each read the segment once
    assert_eq!(e.segments, 1);
    assert_eq!(e.lambda_invocations, c.orchestration.lambda_invocations + 1);
    assert_eq!(e.wru, 233.0);
    assert_eq!(e.rru, 62.0 + 2.0 + 7.0);
    // AND no state transition is billed; the execution, its duration and its logs are
    assert!(e.lines.iter().all(|l| l.item != "sfn_standard_transition"));
    for item in [
        "sfn_express_request",
        "sfn_express_gb_s",
        "cloudwatch_logs_ingest_gb",
    ] {
        assert!(
            e.lines.iter().any(|l| l.item == item && l.usd > 0.0),
            "{item}"
        );
    }
    // AND the whole is a fraction of Standard's, and the report says both
    assert!(
        e.total_usd < c.total_usd / 3.0,
        "{} vs {}",
        e.total_usd,
        c.total_usd
    );
    let report = c.report(None, Path::new("figures.json"));
    assert!(report.contains("on Express"), "{report}");
    assert!(
        report.contains("per 1000 runs; target <= $0.15"),
        "{report}"
    );
}
