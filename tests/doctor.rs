#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the assertion in a test

//! `orchestrator doctor`, the pre-flight check: each check tried for real, what fails named
//! with its fix, exit 1. The AWS checks run against moto (`DYNAMODB_TEST_ENDPOINT`, which
//! `.ci/run` starts; skipped with a note without it, outside CI).

use std::process::{Command, Output};

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    for var in [
        "MODEL_PROVIDER",
        "MODEL_ID",
        "ORCHESTRATOR_DB",
        "ORCHESTRATOR_STORE",
        "STATE_MACHINE_ARN",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "TABLE_NAME",
        "AWS_ENDPOINT_URL",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn on_a_fresh_machine_the_offline_setup_passes_and_nothing_is_created() {
    // GIVEN no database yet and no model configured
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    // WHEN doctor runs
    let out = bin().arg("--db").arg(&db).arg("doctor").output().unwrap();
    // THEN every check passes, and it created no database
    assert!(out.status.success(), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("✓ store"), "{text}");
    assert!(text.contains("✓ model"), "{text}");
    assert!(text.contains("all checks passed"), "{text}");
    assert!(!db.exists(), "doctor created {}", db.display());
}

#[test]
fn an_unreachable_model_endpoint_is_named_with_its_fix() {
    // GIVEN an OpenAI-compatible provider at an address nobody listens on
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .arg("--db")
        .arg(dir.path().join("runs.db"))
        .arg("doctor")
        .env("MODEL_PROVIDER", "openai")
        .env("MODEL_ID", "some-model")
        .env("OPENAI_API_KEY", "sk-test")
        .env("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
        .env("MODEL_MAX_RETRIES", "0")
        .output()
        .unwrap();
    // THEN it fails (exit 1), naming the model and the variable to fix
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("✗ model"), "{text}");
    assert!(text.contains("openai/some-model"), "{text}");
    assert!(
        text.contains("fix: check OPENAI_BASE_URL (http://127.0.0.1:9/v1)"),
        "{text}"
    );
    assert!(text.contains("1 check(s) failed"), "{text}");
}

/// The emulator's endpoint, or `None` (with a note) outside CI.
fn emulator() -> Option<String> {
    match std::env::var("DYNAMODB_TEST_ENDPOINT") {
        Ok(url) => Some(url),
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("DYNAMODB_TEST_ENDPOINT is not set, and CI is: .ci/run starts the emulator")
        }
        Err(_) => {
            eprintln!("SKIPPED: needs `export DYNAMODB_TEST_ENDPOINT=$(infra/emulator.sh)`");
            None
        }
    }
}

/// Creates a secret in the emulator with boto3 (moto's dependency); its ARN.
fn create_secret(endpoint: &str, name: &str) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, boto3; c = boto3.client('secretsmanager', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test'); print(c.create_secret(Name=sys.argv[2], SecretString='sk-doctor')['ARN'])",
            endpoint,
            name,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn on_aws_a_missing_table_state_machine_and_secret_are_each_named() {
    let Some(endpoint) = emulator() else {
        return;
    };
    // GIVEN a deployment's settings where the table and state machine do not exist, one
    // secret exists and another does not
    let secret = create_secret(&endpoint, &format!("doctor-{}", std::process::id()));
    let missing_machine = "arn:aws:states:us-east-1:123456789012:stateMachine:no-such-runs";
    // WHEN doctor checks them
    let out = bin()
        .args(["--store", "dynamodb", "doctor"])
        .args(["--state-machine-arn", missing_machine])
        .args(["--secret", &secret, "--secret", "no-such-secret"])
        .env("TABLE_NAME", "no-such-table")
        .env("AWS_ENDPOINT_URL", &endpoint)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .output()
        .unwrap();
    // THEN each missing one fails with its name and fix, the secret that exists passes
    // without its value shown, and the exit code is 1
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("✗ store"), "{text}");
    assert!(text.contains("no-such-table"), "{text}");
    assert!(text.contains("✗ state machine"), "{text}");
    assert!(text.contains(missing_machine), "{text}");
    assert!(
        text.contains(&format!("✓ secret        {secret} can be read")),
        "{text}"
    );
    assert!(
        !text.contains("sk-doctor"),
        "a secret's value was printed: {text}"
    );
    assert!(text.contains("✗ secret        no-such-secret"), "{text}");
    assert!(text.contains("3 check(s) failed"), "{text}");
}
