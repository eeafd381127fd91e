#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the assertion in a test

//! End to end against DynamoDB: the real `orchestrator` binary with `--store dynamodb` on the
//! emulator (`DYNAMODB_TEST_ENDPOINT`, started by infra/emulator.sh; skipped with a note when
//! unset, a failure when unset under CI).

mod mock_openai;

use std::process::{Command, Output};

use serde_json::Value;

const OBJECTIVE: &str = "Write a launch post for Acme Sync";

fn endpoint() -> Option<String> {
    if let Ok(url) = std::env::var("DYNAMODB_TEST_ENDPOINT")
        && !url.trim().is_empty()
    {
        return Some(url);
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(
        !ci,
        "DYNAMODB_TEST_ENDPOINT is not set, and CI is: .ci/run starts the emulator and exports it"
    );
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: tests/dynamodb_run.rs needs the emulator: `export DYNAMODB_TEST_ENDPOINT=$(infra/emulator.sh)`"
    );
    None
}

/// The binary on the emulator, a fresh table, and no credentials (the store uses placeholder
/// ones for an emulator endpoint).
fn bin(endpoint: &str, table: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .env_remove("MODEL_PROVIDER")
        .env_remove("ORCHESTRATOR_DB")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_REGION")
        .env("ORCHESTRATOR_STORE", "sqlite")
        .env("ORCHESTRATOR_OFFLINE_CHUNK_MS", "0")
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("TABLE_NAME", table)
        .args(args)
        .output()
        .expect("the binary runs")
}

#[test]
fn a_run_with_the_dynamodb_store_completes_and_reads_back() {
    let Some(endpoint) = endpoint() else { return };
    let table = format!("cli-{}", uuid::Uuid::new_v4().simple());

    // GIVEN no table yet WHEN a run is started on DynamoDB
    let missing = bin(
        &endpoint,
        &table,
        &["run", OBJECTIVE, "--store", "dynamodb"],
    );
    // THEN it refuses, naming the table and how to create it
    assert_eq!(missing.status.code(), Some(2));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains(&table) && err.contains("--create-table"),
        "{err}"
    );

    // WHEN the run is started with --create-table
    let out = bin(
        &endpoint,
        &table,
        &[
            "run",
            OBJECTIVE,
            "--json",
            "--store",
            "dynamodb",
            "--create-table",
        ],
    );

    // THEN it completes, with a gap-free stream ending in `complete`
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stream = String::from_utf8_lossy(&out.stdout).into_owned();
    let ids: Vec<u64> = stream
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(|id| id.parse().unwrap())
        .collect();
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>());
    assert!(stream.contains("event: complete"));
    let run_id = stream
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .and_then(|d| serde_json::from_str::<Value>(d).ok())
        .and_then(|v| v["runId"].as_str().map(str::to_owned))
        .unwrap();

    // AND `show` reads the report and the same log back from DynamoDB (ORCHESTRATOR_STORE
    // picks the store as well as --store does)
    let show = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .env("ORCHESTRATOR_STORE", "dynamodb")
        .env("AWS_ENDPOINT_URL", &endpoint)
        .env("TABLE_NAME", &table)
        .env_remove("AWS_ACCESS_KEY_ID")
        .args(["show", &run_id])
        .output()
        .unwrap();
    assert!(
        show.status.success(),
        "{}",
        String::from_utf8_lossy(&show.stderr)
    );
    let report: Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(report["status"], "completed");
    assert!(report["final"]["result"]["content"].is_string(), "{report}");
    let events = bin(
        &endpoint,
        &table,
        &["show", &run_id, "--events", "--store", "dynamodb"],
    );
    let replayed = String::from_utf8_lossy(&events.stdout);
    assert_eq!(
        replayed.lines().filter(|l| l.starts_with("id: ")).count(),
        ids.len()
    );
}

/// A run on DynamoDB with the given model settings (`--json`), then its replay (`--json`).
fn run_and_replay(endpoint: &str, table: &str, model: &[(&str, &str)]) -> (String, Value) {
    let with_model = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
        cmd.env_remove("MODEL_PROVIDER")
            .env_remove("ORCHESTRATOR_RECORD")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_PROFILE")
            .env("ORCHESTRATOR_STORE", "dynamodb")
            .env("ORCHESTRATOR_OFFLINE_CHUNK_MS", "15")
            .env("AWS_ENDPOINT_URL", endpoint)
            .env("TABLE_NAME", table);
        for (k, v) in model {
            cmd.env(k, v);
        }
        cmd.args(args).output().unwrap()
    };
    let run = with_model(&["run", OBJECTIVE, "--json", "--create-table"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let first = orchestrator_core::event::SseParser::default()
        .push(&String::from_utf8_lossy(&run.stdout))
        .remove(0);
    let run_id = serde_json::from_str::<Value>(&first.data).unwrap()["runId"]
        .as_str()
        .unwrap()
        .to_owned();
    let replay = with_model(&["replay", &run_id, "--json"]);
    let summary = serde_json::from_slice(&replay.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&replay.stderr)));
    (run_id, summary)
}

#[test]
fn a_run_recorded_in_dynamodb_replays_identically_offline_and_on_an_openai_server() {
    let Some(endpoint) = endpoint() else { return };
    let table = format!("replay-{}", uuid::Uuid::new_v4().simple());

    // GIVEN a run on the offline model, recorded in DynamoDB
    // WHEN it is replayed from the table
    let (offline_run, offline) = run_and_replay(&endpoint, &table, &[]);

    // THEN its log is identical, every call answered from the record
    assert_eq!(offline["outcome"], "identical", "{offline}");
    assert_eq!(offline["replayOf"], offline_run.as_str());
    assert_eq!(offline["answeredFromRecord"], 7);

    // GIVEN a run against an OpenAI-compatible server, recorded in the same table
    let (_runtime, base, seen) = mock_openai::start_blocking();
    let model = [
        ("MODEL_PROVIDER", "openai"),
        ("MODEL_ID", "e2e-model"),
        ("OPENAI_BASE_URL", base.as_str()),
        ("OPENAI_API_KEY", mock_openai::KEY),
        ("MODEL_MAX_RETRIES", "0"),
    ];
    // WHEN it is replayed
    let (_, openai) = run_and_replay(&endpoint, &table, &model);

    // THEN its log is identical too, and the server saw only the original run's 4 requests
    assert_eq!(openai["outcome"], "identical", "{openai}");
    assert_eq!(openai["answeredFromRecord"], 4);
    assert_eq!(seen.lock().unwrap().len(), 4);
}
