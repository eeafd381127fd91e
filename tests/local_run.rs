#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the assertion in a test

//! End to end on one machine: the real `orchestrator` binary, the offline model and a SQLite
//! file, as a newcomer runs it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const OBJECTIVE: &str = "Write a launch post for Acme Sync, our file sync app";

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    cmd.env_remove("MODEL_PROVIDER")
        .env_remove("ORCHESTRATOR_DB")
        .env_remove("ORCHESTRATOR_STORE")
        .env("ORCHESTRATOR_OFFLINE_CHUNK_MS", "0");
    cmd
}

fn run(db: &Path, args: &[&str]) -> Output {
    bin()
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .expect("the binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// (id, event, data) of every frame in an SSE text.
fn frames(sse: &str) -> Vec<(u64, String, Value)> {
    assert!(
        sse.starts_with(":\n\n"),
        "the stream opens with the prologue comment"
    );
    let mut parser = orchestrator_core::event::SseParser::default();
    parser
        .push(sse)
        .into_iter()
        .map(|f| {
            let id =
                f.id.expect("every frame has an id")
                    .parse()
                    .expect("numeric id");
            let data: Value = serde_json::from_str(&f.data).expect("one-line JSON data");
            let event = f.event.expect("every frame has an event name");
            assert_eq!(
                data["type"],
                event.as_str(),
                "event name and JSON type agree"
            );
            (id, event, data)
        })
        .collect()
}

fn assert_gap_free(frames: &[(u64, String, Value)]) {
    let ids: Vec<u64> = frames.iter().map(|f| f.0).collect();
    let expected: Vec<u64> = (1..=frames.len() as u64).collect();
    assert_eq!(ids, expected, "ids are 1..n without gaps or duplicates");
}

fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    (dir, db)
}

#[test]
fn a_run_streams_the_whole_critic_loop_and_show_reads_the_report_back() {
    // GIVEN a fresh database and no model provider configured
    let (_dir, db) = temp_db();
    // WHEN a run is started with --json
    let out = run(&db, &["run", OBJECTIVE, "--json"]);
    // THEN it completes, and the stream shows every stage of the reference run
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let frames = frames(&stdout(&out));
    assert_gap_free(&frames);
    let run_id = frames[0].2["runId"].as_str().unwrap().to_owned();
    for (_, _, data) in &frames {
        assert_eq!(data["runId"], run_id.as_str());
        assert!(
            data["correlationId"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
        );
    }
    let types: Vec<&str> = frames.iter().map(|f| f.1.as_str()).collect();
    assert_eq!(types[0], "start");
    assert!(
        frames.iter().any(|f| f.1 == "warning" && f.2["message"].as_str().unwrap().contains("offline model")),
        "the run says it used the offline model"
    );
    let versions: Vec<u64> = frames
        .iter()
        .filter(|f| f.1 == "plan_update")
        .map(|f| f.2["data"]["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![1, 2], "a first plan, then one replan");
    let replan = frames
        .iter()
        .find(|f| f.1 == "plan_update" && f.2["data"]["version"] == 2)
        .unwrap();
    assert!(
        replan.2["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("QA scored"),
        "the replan says why"
    );
    for specialist in ["strategy", "generation", "qa"] {
        assert!(
            frames
                .iter()
                .any(|f| f.1 == "handoff" && f.2["data"]["to"] == specialist),
            "a handoff to {specialist}"
        );
    }
    assert!(types.contains(&"delta"), "the draft streams");
    let qa: Vec<&str> = frames
        .iter()
        .filter(|f| f.1 == "message" && f.2["message"].as_str().unwrap().starts_with("QA score"))
        .map(|f| f.2["message"].as_str().unwrap())
        .collect();
    assert_eq!(qa.len(), 2, "{qa:?}");
    assert!(
        qa[0].contains("below threshold") && qa[1].contains("pass"),
        "{qa:?}"
    );
    let complete = frames.last().unwrap();
    assert_eq!(complete.1, "complete");
    assert_eq!(complete.2["status"], "completed");
    assert!(
        complete.2["data"]["result"]["content"]
            .as_str()
            .unwrap()
            .contains("Acme Sync")
    );
    assert!(complete.2["data"]["acceptance-report"].is_object());

    // WHEN the run is shown from the database
    let shown = run(&db, &["show", &run_id]);
    // THEN the RunReport comes back with its steps and final bundle
    assert!(shown.status.success(), "stderr: {}", stderr(&shown));
    let report: Value = serde_json::from_str(&stdout(&shown)).unwrap();
    assert_eq!(report["runId"], run_id.as_str());
    assert_eq!(report["status"], "completed");
    assert_eq!(report["summary"]["steps"], 6);
    assert_eq!(report["final"]["quality"]["pass"], true);

    // AND the run is listed
    let listed = stdout(&run(&db, &["runs"]));
    assert!(
        listed.contains(&run_id) && listed.contains("completed"),
        "{listed}"
    );
}

#[test]
fn chat_mode_answers_with_a_streamed_message() {
    let (_dir, db) = temp_db();
    // WHEN a chat run is started
    let out = run(
        &db,
        &[
            "run",
            "--mode",
            "chat",
            "How should I name a Rust crate?",
            "--json",
        ],
    );
    // THEN it streams start, phase, deltas, a message, metrics and complete{message}
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let frames = frames(&stdout(&out));
    assert_gap_free(&frames);
    let types: Vec<&str> = frames.iter().map(|f| f.1.as_str()).collect();
    for t in ["start", "phase", "delta", "message", "metrics", "complete"] {
        assert!(types.contains(&t), "{t} in {types:?}");
    }
    assert!(!types.contains(&"plan_update"), "chat mode has no plan");
    let streamed: String = frames
        .iter()
        .filter(|f| f.1 == "delta")
        .map(|f| f.2["message"].as_str().unwrap())
        .collect();
    let complete = frames.last().unwrap();
    assert_eq!(complete.2["status"], "completed");
    assert_eq!(complete.2["data"]["message"].as_str().unwrap(), streamed);
}

#[test]
fn chat_mode_answers_with_each_agent_in_its_role() {
    let (_dir, db) = temp_db();
    let mut answers = Vec::new();
    for agent in ["strategy", "generation", "qa"] {
        // WHEN a chat run asks this agent
        let args = [
            "run",
            "--mode",
            "chat",
            "--agent",
            agent,
            "Launch our note-taking app",
            "--json",
        ];
        let out = run(&db, &args);
        // THEN it completes with the agent's own answer, streamed
        assert!(out.status.success(), "{agent}: {}", stderr(&out));
        let frames = frames(&stdout(&out));
        let complete = frames.last().unwrap();
        assert_eq!(complete.2["status"], "completed", "{agent}");
        let answer = complete.2["data"]["message"].as_str().unwrap().to_owned();
        assert!(!answer.trim().is_empty(), "{agent} answered nothing");
        assert!(
            frames.iter().any(|f| f.1 == "delta"),
            "{agent} streamed nothing"
        );
        answers.push(answer);
    }
    // AND each agent answered in its role, not all with the same text
    answers.dedup();
    assert_eq!(answers.len(), 3, "{answers:?}");
}

#[test]
fn bad_input_is_refused_with_the_problem_named_and_nothing_stored() {
    let (dir, db) = temp_db();
    let long_prompt = "x".repeat(8001);
    let request = dir.path().join("req.json");
    std::fs::write(
        &request,
        serde_json::json!({"objective": "ok", "options": {"systemPromptOverride": long_prompt}})
            .to_string(),
    )
    .unwrap();
    let unknown = dir.path().join("unknown.json");
    std::fs::write(&unknown, r#"{"objective": "ok", "options": {"bogus": 1}}"#).unwrap();
    let long_objective = "word ".repeat(1000);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["run", "   "], "objective"),
        (vec!["run", &long_objective], "objective"),
        (
            vec!["run", "--request", request.to_str().unwrap()],
            "systemPromptOverride",
        ),
        (vec!["run", "--request", unknown.to_str().unwrap()], "bogus"),
        (vec!["run", "ok", "--threshold", "3"], "qualityThreshold"),
        (
            vec!["run", "ok", "--mode", "chat", "--agent", "poet"],
            "targetAgentId",
        ),
        (vec!["run", "ok", "--bogus"], "--bogus"),
    ];
    for (args, named) in cases {
        // WHEN the binary gets bad input
        let out = run(&db, &args);
        // THEN it exits non-zero with one clear message naming the problem
        assert!(!out.status.success(), "{args:?} should fail");
        let err = stderr(&out);
        assert!(err.contains(named), "{args:?}: {err}");
    }
    // AND no run was stored
    let listed = stdout(&run(&db, &["runs"]));
    assert!(listed.starts_with("no runs yet"), "{listed}");

    // WHEN a run id is unknown THEN show and resume say so and how to find runs
    for cmd in ["show", "resume"] {
        let out = run(&db, &[cmd, "no-such-run"]);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("no-such-run not found"),
            "{}",
            stderr(&out)
        );
    }

    // WHEN the database file is not a database THEN the error names the file
    let corrupt = dir.path().join("corrupt.db");
    std::fs::write(
        &corrupt,
        "this is not sqlite, just text that is long enough to have a header",
    )
    .unwrap();
    let out = run(&corrupt, &["run", "ok"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("corrupt.db"), "{}", stderr(&out));

    // WHEN the database path cannot be written THEN the error names it and the fix
    let out = run(Path::new("/proc/no/such/dir/runs.db"), &["run", "ok"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--db"), "{}", stderr(&out));
    // WHEN a command that reads stored runs names a database that does not exist
    let typo = dir.path().join("typo").join("x.db");
    for args in [
        vec!["runs"],
        vec!["show", "some-run"],
        vec!["resume", "some-run"],
    ] {
        let out = run(&typo, &args);
        // THEN it exits 2 naming the path, and creates nothing
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("no database at"), "{}", stderr(&out));
        assert!(stderr(&out).contains("x.db"), "{}", stderr(&out));
        assert!(
            !typo.parent().unwrap().exists(),
            "{args:?} created the folder"
        );
    }
}

/// Non-delta frames reduced to what must match between two runs of the same objective.
fn shape(frames: &[(u64, String, Value)]) -> Vec<String> {
    frames
        .iter()
        .filter(|f| f.1 != "delta")
        .filter(|f| !(f.1 == "warning" && f.2["data"]["restart"] == true))
        .map(|f| {
            let mut d = f.2.clone();
            let o = d.as_object_mut().unwrap();
            for k in ["runId", "correlationId", "durationMs"] {
                o.remove(k);
            }
            if f.1 == "complete" {
                o.remove("data");
            }
            if f.1 == "hitl_request" {
                o.remove("data");
            }
            d.to_string()
        })
        .fold(Vec::new(), |mut acc, s| {
            // A restarted step announces its handoff again; that repeat is expected.
            if !(s.contains("\"occurred\"") && acc.contains(&s)) {
                acc.push(s);
            }
            acc
        })
}

fn report_essentials(report: &Value) -> Value {
    let steps: Vec<Value> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| serde_json::json!([s["stepId"], s["attempt"], s["output"], s["error"]]))
        .collect();
    serde_json::json!({"status": report["status"], "steps": steps, "final": report["final"], "tokens": report["summary"]["tokens"]})
}

#[test]
fn a_killed_run_resumes_without_repeating_steps_or_losing_events() {
    // GIVEN a reference run of the objective, start to end
    let (_dir, db) = temp_db();
    let reference = run(&db, &["run", OBJECTIVE, "--json"]);
    assert!(reference.status.success());
    let reference = frames(&stdout(&reference));
    let reference_id = reference[0].2["runId"].as_str().unwrap().to_owned();

    // AND the same objective streaming slowly in another process
    let mut child = bin()
        .env("ORCHESTRATOR_OFFLINE_CHUNK_MS", "15")
        .arg("--db")
        .arg(&db)
        .args(["run", OBJECTIVE, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut run_id = None;
    let mut deltas = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    // WHEN it is killed in the middle of streaming the draft
    while let Some(Ok(line)) = lines.next() {
        assert!(Instant::now() < deadline, "the run never reached its draft");
        if let Some(json) = line.strip_prefix("data: ") {
            let v: Value = serde_json::from_str(json).unwrap();
            run_id.get_or_insert_with(|| v["runId"].as_str().unwrap().to_owned());
            if v["type"] == "delta" {
                deltas += 1;
                if deltas == 3 {
                    break;
                }
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let run_id = run_id.expect("the run started");

    // THEN `resume` finishes it
    let resumed = run(&db, &["resume", &run_id, "--json"]);
    assert!(resumed.status.success(), "stderr: {}", stderr(&resumed));

    // AND its event log has no gap and no duplicate, and the same shape as the reference run
    let log = run(&db, &["show", &run_id, "--events"]);
    let log = frames(&stdout(&log));
    assert_gap_free(&log);
    assert_eq!(shape(&log), shape(&reference));
    let restarts: Vec<&Value> = log
        .iter()
        .filter(|f| f.1 == "warning" && f.2["data"]["restart"] == true)
        .map(|f| &f.2)
        .collect();
    assert_eq!(
        restarts.len(),
        1,
        "one step was interrupted and restarted: {restarts:?}"
    );
    // AND the restarted step streamed its whole draft after the restart notice
    let restart_at = log
        .iter()
        .position(|f| f.1 == "warning" && f.2["data"]["restart"] == true)
        .unwrap();
    let step = restarts[0]["data"]["stepId"].as_str().unwrap();
    let after: String = log[restart_at..]
        .iter()
        .filter(|f| f.1 == "delta" && f.2["data"]["stepId"] == step)
        .map(|f| f.2["message"].as_str().unwrap())
        .collect();
    let full: String = reference
        .iter()
        .filter(|f| f.1 == "delta" && f.2["data"]["stepId"] == step)
        .map(|f| f.2["message"].as_str().unwrap())
        .collect();
    assert_eq!(after, full);

    // AND the RunReport is the reference run's (ids, attempts, outputs, final bundle, tokens)
    let a: Value = serde_json::from_str(&stdout(&run(&db, &["show", &run_id]))).unwrap();
    let b: Value = serde_json::from_str(&stdout(&run(&db, &["show", &reference_id]))).unwrap();
    assert_eq!(report_essentials(&a), report_essentials(&b));

    // AND resuming a finished run is refused with a pointer to `show`
    let again = run(&db, &["resume", &run_id]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already finished"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn an_approval_checkpoint_pauses_the_run_until_approve() {
    let (_dir, db) = temp_db();
    // GIVEN a run that must be approved before its final step
    let out = run(&db, &["run", OBJECTIVE, "--require-approval", "--json"]);
    // THEN it stops at the checkpoint with a hitl_request and no complete frame, exit 5
    assert_eq!(out.status.code(), Some(5), "stderr: {}", stderr(&out));
    let frames = frames(&stdout(&out));
    let hitl = frames
        .iter()
        .find(|f| f.1 == "hitl_request")
        .expect("a hitl_request");
    assert!(frames.iter().all(|f| f.1 != "complete"));
    assert!(
        stderr(&out).contains("orchestrator approve"),
        "{}",
        stderr(&out)
    );
    let run_id = hitl.2["runId"].as_str().unwrap().to_owned();
    let checkpoint = hitl.2["data"]["checkpointId"].as_str().unwrap().to_owned();
    // WHEN it is approved
    let approved = run(&db, &["approve", &run_id, &checkpoint, "--json"]);
    // THEN it completes
    assert!(approved.status.success(), "stderr: {}", stderr(&approved));
    let report: Value = serde_json::from_str(&stdout(&run(&db, &["show", &run_id]))).unwrap();
    assert_eq!(report["status"], "completed");
    // AND a second answer is refused: the checkpoint is gone
    let again = run(&db, &["approve", &run_id, &checkpoint]);
    assert!(!again.status.success());
}

/// ESC, BEL, NUL, DEL or a C1 character (U+009B is CSI on some terminals) in `text`.
fn terminal_controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|c| c.is_control() && !matches!(c, '\n' | '\t'))
        .collect()
}

#[test]
fn control_characters_from_a_request_never_reach_the_terminal() {
    // GIVEN a request whose objective would clear and retitle a terminal
    let (dir, db) = temp_db();
    let request = dir.path().join("req.json");
    let objective = "hi \u{1b}[2J\u{1b}]0;pwned\u{7} \u{0}\u{7f}\u{9b}31m Acme Sync";
    std::fs::write(
        &request,
        serde_json::json!({ "objective": objective }).to_string(),
    )
    .unwrap();
    // WHEN it runs, rendered for a person, then is listed, shown and its events printed
    let ran = run(&db, &["run", "--request", request.to_str().unwrap()]);
    assert!(ran.status.success(), "stderr: {}", stderr(&ran));
    let listed = run(&db, &["runs"]);
    let run_id = stdout(&listed)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let shown = run(&db, &["show", &run_id]);
    let events = run(&db, &["show", &run_id, "--events"]);
    // THEN none of them prints a control character but line breaks and tabs
    for (what, out) in [
        ("run", &ran),
        ("runs", &listed),
        ("show", &shown),
        ("show --events", &events),
    ] {
        for text in [stdout(out), stderr(out)] {
            assert_eq!(terminal_controls(&text), vec![], "{what}: {text:?}");
        }
    }
    // AND the objective is still there to read, its controls replaced in the listing
    assert!(
        stdout(&listed).contains("hi \u{fffd}[2J\u{fffd}]0;pwned\u{fffd}"),
        "{}",
        stdout(&listed)
    );
    // AND the JSON outputs still carry the draft written from it exactly, escape and all
    let report: Value = serde_json::from_str(&stdout(&shown)).unwrap();
    assert!(report["steps"].to_string().contains("hi \\u001b[2J"));
    let frames = frames(&stdout(&events));
    assert!(
        frames.iter().any(|f| {
            f.1 == "delta" && f.2["message"].as_str().unwrap().contains("hi \u{1b}[2J")
        })
    );
}

#[test]
fn a_run_left_below_the_qa_threshold_exits_4_and_says_so() {
    // GIVEN the offline model, whose first draft fails QA, and no revision cycle allowed
    let (_dir, db) = temp_db();
    // WHEN the run is rendered for a person
    let human = run(&db, &["run", OBJECTIVE, "--max-revisions", "0"]);
    // THEN it completes with its own exit code, and says the quality gate failed
    assert_eq!(human.status.code(), Some(4), "stderr: {}", stderr(&human));
    assert!(
        stdout(&human).contains("■ Run completed\n✗ QUALITY GATE FAILED"),
        "{}",
        stdout(&human)
    );
    // WHEN it runs again with --json
    let json = run(&db, &["run", OBJECTIVE, "--max-revisions", "0", "--json"]);
    // THEN the complete frame says completed, with the quality gate failed
    assert_eq!(json.status.code(), Some(4), "stderr: {}", stderr(&json));
    let frames = frames(&stdout(&json));
    let complete = &frames.last().unwrap().2;
    assert_eq!(complete["status"], "completed");
    assert_eq!(complete["qualityGate"], "failed");
    // AND the RunReport says so, and `show` says it on stderr too
    let run_id = complete["runId"].as_str().unwrap();
    let shown = run(&db, &["show", run_id]);
    let report: Value = serde_json::from_str(&stdout(&shown)).unwrap();
    assert_eq!(report["status"], "completed");
    assert_eq!(report["qualityGate"], "failed");
    assert!(
        stderr(&shown).contains("QUALITY GATE FAILED"),
        "{}",
        stderr(&shown)
    );
}

/// The delta frames of a `run --json` with streamed text flushed every `flush_ms`: per step,
/// how many frames and the text they carry.
fn deltas_with_flush(flush_ms: &str) -> std::collections::BTreeMap<String, (usize, String)> {
    let (_dir, db) = temp_db();
    let out = bin()
        .env("ORCHESTRATOR_OFFLINE_CHUNK_MS", "1")
        .env("ORCHESTRATOR_DELTA_FLUSH_MS", flush_ms)
        .arg("--db")
        .arg(&db)
        .args(["run", OBJECTIVE, "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let mut steps = std::collections::BTreeMap::<String, (usize, String)>::new();
    for (_, event, data) in frames(&stdout(&out)) {
        if event == "delta" {
            let step = data["data"]["stepId"].as_str().unwrap().to_owned();
            let entry = steps.entry(step).or_default();
            entry.0 += 1;
            entry.1.push_str(data["message"].as_str().unwrap());
        }
    }
    steps
}

#[test]
fn the_delta_flush_setting_trades_frames_for_latency_and_keeps_the_text() {
    // GIVEN the offline model streaming a chunk every millisecond
    // WHEN a run flushes streamed text every millisecond, and another every ten seconds
    let often = deltas_with_flush("1");
    let rarely = deltas_with_flush("10000");
    // THEN the second has fewer delta frames (flushed by size only), and every step's text
    // is the same in both
    let count = |d: &std::collections::BTreeMap<String, (usize, String)>| {
        d.values().map(|(n, _)| n).sum::<usize>()
    };
    assert!(
        count(&rarely) < count(&often),
        "{} frames flushing every 10 s, {} every 1 ms",
        count(&rarely),
        count(&often)
    );
    let texts = |d: &std::collections::BTreeMap<String, (usize, String)>| {
        d.iter()
            .map(|(step, (_, text))| (step.clone(), text.clone()))
            .collect::<Vec<_>>()
    };
    assert!(!often.is_empty());
    assert_eq!(texts(&often), texts(&rarely));
}

#[test]
fn a_delta_flush_setting_it_cannot_use_is_refused_naming_it() {
    // GIVEN ORCHESTRATOR_DELTA_FLUSH_MS=fast
    let (_dir, db) = temp_db();
    // WHEN a run is started
    let out = bin()
        .env("ORCHESTRATOR_DELTA_FLUSH_MS", "fast")
        .arg("--db")
        .arg(&db)
        .args(["run", OBJECTIVE])
        .output()
        .unwrap();
    // THEN it exits 2 naming the variable and its range, and stores nothing
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("ORCHESTRATOR_DELTA_FLUSH_MS=\"fast\" must be a whole number of milliseconds from 1 to 10000"),
        "{}",
        stderr(&out)
    );
    assert!(!db.exists());
}
