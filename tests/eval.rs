#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the assertion in a test

//! `orchestrator eval` end to end: the real binary, the offline model, a temporary SQLite file.
//! The example suite passes live and then replayed with no model; an expectation not met, a
//! malformed suite and a prompt change each end the way CI needs them to.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn example_suite() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("examples/eval/reference.yaml")
}

/// The cases of the example suite, in order.
const EXAMPLE_CASES: [&str; 3] = ["launch-post", "first-draft", "chat-answer"];

fn bin(db: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    cmd.env_remove("MODEL_PROVIDER")
        .env_remove("ORCHESTRATOR_DB")
        .env_remove("ORCHESTRATOR_STORE")
        .env_remove("ORCHESTRATOR_PROMPTS_DIR")
        .env("ORCHESTRATOR_OFFLINE_CHUNK_MS", "0")
        .arg("--db")
        .arg(db);
    cmd
}

fn eval(db: &Path, suite: &Path, args: &[&str]) -> Output {
    bin(db)
        .arg("eval")
        .arg(suite)
        .args(args)
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn says(o: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", text(&o.stdout), text(&o.stderr))
}

/// The value of `attr` on the first `<element ` of the XML.
fn attr(xml: &str, element: &str, attr: &str) -> String {
    let start = xml
        .find(&format!("<{element} "))
        .unwrap_or_else(|| panic!("no <{element}> in {xml}"));
    let tag = &xml[start..start + xml[start..].find('>').unwrap()];
    let key = format!(" {attr}=\"");
    let from = tag
        .find(&key)
        .unwrap_or_else(|| panic!("no {attr} in {tag}"))
        + key.len();
    tag[from..from + tag[from..].find('"').unwrap()].to_owned()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn write_suite(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("suite.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_example_suite_passes_live_then_replayed_with_no_model() {
    // GIVEN a fresh database and the example suite
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let (xml, json) = (dir.path().join("live.xml"), dir.path().join("live.json"));
    // WHEN it runs live on the offline model, writing JUnit XML and JSON
    let out = eval(
        &db,
        &example_suite(),
        &[
            "--junit",
            xml.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
        ],
    );
    // THEN every case passes, and both files say so
    assert_eq!(out.status.code(), Some(0), "{}", says(&out));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("3 cases: 3 passed, 0 failed"), "{stdout}");
    let stderr = text(&out.stderr);
    for case in EXAMPLE_CASES {
        assert!(stderr.contains(&format!("] {case} PASS ")), "{stderr}");
    }
    let xml = std::fs::read_to_string(&xml).unwrap();
    assert_eq!(attr(&xml, "testsuite", "name"), "reference");
    assert_eq!(attr(&xml, "testsuite", "tests"), "3");
    assert_eq!(attr(&xml, "testsuite", "failures"), "0");
    assert_eq!(attr(&xml, "testsuite", "errors"), "0");
    assert_eq!(xml.matches("<testcase ").count(), 3);
    let live = read_json(&json);
    assert_eq!(live["suite"], "reference");
    assert_eq!(live["passed"], true);
    assert_eq!(live["totals"]["cases"], 3);
    let names: Vec<&str> = live["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, EXAMPLE_CASES);
    assert_eq!(live["cases"][0]["status"], "completed");
    assert_eq!(live["cases"][0]["qaScore"], 1.0);

    // WHEN it runs again with --replay, the configured model a server that must not be called
    let model = TcpListener::bind("127.0.0.1:0").unwrap();
    model.set_nonblocking(true).unwrap();
    let base = format!("http://{}/v1", model.local_addr().unwrap());
    let (xml, json) = (
        dir.path().join("replay.xml"),
        dir.path().join("replay.json"),
    );
    let out = bin(&db)
        .env("MODEL_PROVIDER", "openai")
        .env("MODEL_ID", "not-to-be-called")
        .env("OPENAI_API_KEY", "unused")
        .env("OPENAI_BASE_URL", &base)
        .env("MODEL_MAX_RETRIES", "0")
        .arg("eval")
        .arg(example_suite())
        .args(["--replay", "--junit", xml.to_str().unwrap()])
        .args(["--json", json.to_str().unwrap()])
        .output()
        .unwrap();
    // THEN every case passes from its record, and no model call was made
    assert_eq!(out.status.code(), Some(0), "{}", says(&out));
    assert!(
        matches!(model.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the replay connected to the model"
    );
    let xml = std::fs::read_to_string(&xml).unwrap();
    assert_eq!(attr(&xml, "testsuite", "tests"), "3");
    assert_eq!(attr(&xml, "testsuite", "failures"), "0");
    assert_eq!(attr(&xml, "testsuite", "errors"), "0");
    let replayed = read_json(&json);
    for (i, case) in EXAMPLE_CASES.iter().enumerate() {
        let (then, now) = (&live["cases"][i], &replayed["cases"][i]);
        assert_eq!(now["name"], *case);
        assert_eq!(
            now["replayOf"], then["runId"],
            "{case} replays its live run"
        );
        assert_ne!(now["runId"], then["runId"]);
        assert_eq!(now["tokens"], then["tokens"], "{case}");
        assert_eq!(now["passed"], true);
    }
}

#[test]
fn an_expectation_the_run_cannot_meet_exits_1_with_the_failure_in_the_xml() {
    // GIVEN a suite whose second case allows fewer tokens than the answer takes
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let suite = write_suite(
        dir.path(),
        r#"
name: impossible
cases:
  - name: fits
    objective: "What makes a good launch post?"
    mode: chat
    expect: { maxTokens: 1000 }
  - name: too-long
    objective: "What makes a good launch post for a file sync app?"
    mode: chat
    expect:
      maxTokens: 10
      mustMatch: ["<never & \"nowhere\">"]
"#,
    );
    let xml = dir.path().join("out.xml");
    // WHEN it runs
    let out = eval(&db, &suite, &["--junit", xml.to_str().unwrap()]);
    // THEN it exits 1; the table and the XML name the case and why it failed
    assert_eq!(out.status.code(), Some(1), "{}", says(&out));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("2 cases: 1 passed, 1 failed"), "{stdout}");
    let row = stdout.lines().find(|l| l.starts_with("too-long")).unwrap();
    assert!(
        row.contains("FAIL") && row.contains("over the 10 allowed"),
        "{row}"
    );
    let xml = std::fs::read_to_string(&xml).unwrap();
    assert_eq!(attr(&xml, "testsuite", "tests"), "2");
    assert_eq!(attr(&xml, "testsuite", "failures"), "1");
    assert_eq!(attr(&xml, "testsuite", "errors"), "0");
    assert!(xml.contains(r#"<testcase name="fits" classname="impossible""#));
    let failure = attr(&xml, "failure", "message");
    assert!(
        failure.ends_with("tokens, over the 10 allowed"),
        "{failure}"
    );
    assert_eq!(attr(&xml, "failure", "type"), "maxTokens");
    assert!(
        xml.contains(
            "the result does not match &quot;&lt;never &amp; \\&quot;nowhere\\&quot;&gt;&quot;"
        ),
        "every failure is in the body, escaped: {xml}"
    );

    // WHEN a suite no run has been recorded for is replayed
    let other = dir.path().join("other.yaml");
    std::fs::write(
        &other,
        "name: other\ncases:\n  - name: unrecorded\n    objective: \"Never run\"\n",
    )
    .unwrap();
    let out = eval(&db, &other, &["--replay"]);
    // THEN its case fails, saying to run the suite live once first
    assert_eq!(out.status.code(), Some(1), "{}", says(&out));
    assert!(
        text(&out.stdout).contains("run the suite live once first"),
        "{}",
        says(&out)
    );
}

#[test]
fn a_malformed_suite_exits_2_naming_the_field_and_runs_nothing() {
    // GIVEN the example suite with a misspelt expectation
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let good = std::fs::read_to_string(example_suite()).unwrap();
    let bad = good.replacen("minQaScore:", "minQaScor:", 1);
    assert_ne!(good, bad);
    let suite = write_suite(dir.path(), &bad);
    // WHEN it is run
    let out = eval(&db, &suite, &[]);
    // THEN it exits 2 naming the file, the case and the field, and no run was made
    assert_eq!(out.status.code(), Some(2), "{}", says(&out));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("suite.yaml"), "{stderr}");
    assert!(
        stderr.contains("case \"launch-post\" (cases[0])"),
        "{stderr}"
    );
    assert!(
        stderr.contains("expect.minQaScor: unknown field"),
        "{stderr}"
    );
    let runs = bin(&db).arg("runs").output().unwrap();
    let listed = text(&runs.stdout);
    assert!(
        listed.contains("no runs yet") || (runs.status.code() == Some(2) && !db.exists()),
        "{}",
        says(&runs)
    );
    assert!(!listed.contains("Acme Sync"), "{listed}");
}

#[test]
fn a_prompt_change_fails_the_replay_with_the_requests_side_by_side() {
    // GIVEN the launch post case recorded live with the built-in prompts
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let suite = write_suite(
        dir.path(),
        r#"
name: prompts
cases:
  - name: launch-post
    objective: "Write a launch post for Acme Sync, our file sync app"
    expect: { minQaScore: 1.0, mustMatch: ["Try Acme Sync today"] }
"#,
    );
    let out = eval(&db, &suite, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", says(&out));
    // AND a prompts folder whose QA prompt has one more sentence
    let prompts = dir.path().join("prompts");
    std::fs::create_dir(&prompts).unwrap();
    let qa = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/agents/prompts/qa.v1.md");
    let changed = std::fs::read_to_string(qa).unwrap() + "Penalise drafts over 300 words.\n";
    std::fs::write(prompts.join("qa.md"), changed).unwrap();
    // WHEN the suite is replayed with those prompts
    let xml = dir.path().join("out.xml");
    let out = bin(&db)
        .env("ORCHESTRATOR_PROMPTS_DIR", &prompts)
        .arg("eval")
        .arg(&suite)
        .args(["--replay", "--junit", xml.to_str().unwrap()])
        .output()
        .unwrap();
    // THEN the case fails at the QA request, shown beside the recorded one
    assert_eq!(out.status.code(), Some(1), "{}", says(&out));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("the request differs from the recorded one"),
        "{stdout}"
    );
    assert!(stdout.contains("| this run"), "{stdout}");
    assert!(
        stdout.contains("Penalise drafts over 300 words."),
        "{stdout}"
    );
    let xml = std::fs::read_to_string(&xml).unwrap();
    assert_eq!(attr(&xml, "testsuite", "failures"), "1");
    assert_eq!(attr(&xml, "failure", "type"), "replay");
    assert!(xml.contains("Penalise drafts over 300 words."), "{xml}");
    assert!(xml.contains("| this run"), "{xml}");
}
