#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the assertion in a test

//! One owner per run, on real processes: two `orchestrator serve` on one store (a SQLite
//! file; a DynamoDB table in the emulator), the first killed -9 midway; `resume` against a
//! live `run`; a restart with more interrupted runs than the admission limit.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const OBJECTIVE: &str = "Write a launch post for Acme Sync, our file sync app";
const LEASE_SECONDS: f64 = 2.0;

/// Where the processes keep runs: their global flags and environment.
#[derive(Clone)]
struct StoreArgs {
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Servers name themselves (ORCHESTRATOR_OWNER) as replicas on different machines would.
    named_owners: bool,
}

impl StoreArgs {
    fn sqlite(db: &Path) -> Self {
        Self {
            args: vec!["--db".into(), db.display().to_string()],
            env: vec![("ORCHESTRATOR_STORE".into(), "sqlite".into())],
            named_owners: false,
        }
    }

    fn dynamodb(endpoint: &str, table: &str) -> Self {
        Self {
            args: vec!["--store".into(), "dynamodb".into()],
            env: vec![
                ("AWS_ENDPOINT_URL".into(), endpoint.into()),
                ("TABLE_NAME".into(), table.into()),
            ],
            named_owners: true,
        }
    }

    fn command(&self, chunk_ms: u32) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
        cmd.env_remove("MODEL_PROVIDER")
            .env_remove("ORCHESTRATOR_DB")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_REGION")
            .env("ORCHESTRATOR_OFFLINE_CHUNK_MS", chunk_ms.to_string())
            .env("ORCHESTRATOR_LEASE_SECONDS", LEASE_SECONDS.to_string());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.args(&self.args);
        cmd
    }
}

/// A `serve` process, its address, and its stderr lines with when each came.
struct Server {
    child: Child,
    addr: String,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Server {
    fn start(store: &StoreArgs, chunk_ms: u32, max_runs: usize, extra: &[&str]) -> Self {
        let mut command = store.command(chunk_ms);
        if store.named_owners {
            command.env(
                "ORCHESTRATOR_OWNER",
                format!("replica-{}", uuid::Uuid::new_v4()),
            );
        }
        let mut child = command
            .env("ORCHESTRATOR_MAX_RUNS", max_runs.to_string())
            .args(extra)
            .args(["serve", "--addr", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = BufReader::new(child.stderr.take().unwrap());
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in reader.lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
                }
                sink.lock().unwrap().push((Instant::now(), line));
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("serve says where it listens");
        Self { child, addr, lines }
    }

    fn kill(mut self) -> Instant {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        Instant::now()
    }

    /// When the server said it took each run over, in order.
    fn takeovers(&self) -> Vec<(Instant, String)> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter_map(|(at, l)| {
                let id = l.strip_prefix("took over run ")?.split(':').next()?;
                Some((*at, id.to_owned()))
            })
            .collect()
    }

    fn http(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut tcp = TcpStream::connect(&self.addr).unwrap();
        let body = body.map(Value::to_string).unwrap_or_default();
        write!(
            tcp,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        tcp.read_to_string(&mut response).unwrap();
        let status = response[9..12].parse().unwrap();
        let json = response
            .split_once("\r\n\r\n")
            .and_then(|(_, b)| serde_json::from_str(b).ok())
            .unwrap_or(Value::Null);
        (status, json)
    }

    fn start_run(&self) -> String {
        let (status, body) = self.http(
            "POST",
            "/api/v1/runs",
            Some(&json!({"objective": OBJECTIVE})),
        );
        assert_eq!(status, 202, "{body}");
        body["runId"].as_str().unwrap().to_owned()
    }

    /// Every run's status, through the cursor, `per_page` at a time.
    fn statuses(&self, per_page: usize) -> BTreeMap<String, String> {
        let mut all = BTreeMap::new();
        let mut path = format!("/api/v1/runs?limit={per_page}");
        loop {
            let (status, page) = self.http("GET", &path, None);
            assert_eq!(status, 200, "{page}");
            for r in page["runs"].as_array().unwrap() {
                let id = r["runId"].as_str().unwrap().to_owned();
                assert!(!all.contains_key(&id), "run {id} listed twice");
                all.insert(id, r["status"].as_str().unwrap().to_owned());
            }
            match page["nextCursor"].as_str() {
                Some(c) => path = format!("/api/v1/runs?limit={per_page}&cursor={c}"),
                None => return all,
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (id, event, data) of a run's stored log.
fn log(store: &StoreArgs, run_id: &str) -> Vec<(u64, String, Value)> {
    let out = store
        .command(0)
        .args(["show", run_id, "--events"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut parser = orchestrator_core::event::SseParser::default();
    parser
        .push(&String::from_utf8_lossy(&out.stdout))
        .into_iter()
        .map(|f| {
            let data: Value = serde_json::from_str(&f.data).unwrap();
            (f.id.unwrap().parse().unwrap(), f.event.unwrap(), data)
        })
        .collect()
}

/// Checks one run's log: gap-free, one `complete`, and no step attempt opened twice except
/// once per restart a takeover announced. Returns the number of restarts.
fn check_log(store: &StoreArgs, run_id: &str) -> usize {
    let frames = log(store, run_id);
    let ids: Vec<u64> = frames.iter().map(|f| f.0).collect();
    assert_eq!(
        ids,
        (1..=frames.len() as u64).collect::<Vec<_>>(),
        "run {run_id}: gap-free"
    );
    let completes = frames.iter().filter(|f| f.1 == "complete").count();
    assert_eq!(completes, 1, "run {run_id} ends exactly once");
    assert_eq!(
        frames.last().unwrap().2["status"],
        "completed",
        "run {run_id}"
    );
    let restarts = frames
        .iter()
        .filter(|f| f.1 == "warning" && f.2["data"]["restart"] == true)
        .count();
    let mut opened: BTreeMap<(String, String), usize> = BTreeMap::new();
    for f in frames
        .iter()
        .filter(|f| f.1 == "handoff" && f.2["message"] == "occurred")
    {
        let key = (
            f.2["data"]["stepId"].as_str().unwrap().to_owned(),
            f.2["data"]["capabilityId"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
        );
        *opened.entry(key).or_default() += 1;
    }
    let repeats: usize = opened.values().map(|n| n.saturating_sub(1)).sum();
    assert!(
        repeats <= restarts,
        "run {run_id}: {repeats} handoffs repeated with only {restarts} restarts: {opened:?}"
    );
    restarts
}

fn wait_until_all_end(server: &Server, runs: &[String], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        // Large pages, a second apart: the emulator reads an index by scanning the table.
        let statuses = server.statuses(100);
        let open: Vec<&String> = runs
            .iter()
            .filter(|id| {
                !matches!(
                    statuses.get(*id).map(String::as_str),
                    Some("completed" | "failed" | "cancelled" | "budget_exhausted")
                )
            })
            .collect();
        if open.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            let lines = server.lines.lock().unwrap();
            let tail: Vec<&String> = lines.iter().rev().take(20).map(|l| &l.1).collect();
            panic!("runs still open: {open:?}; the server said (last first): {tail:#?}");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Two replicas on one store; the first dies -9 while driving its runs.
fn two_replicas_one_dies(store: &StoreArgs, first_extra: &[&str], n: usize, chunk_ms: u32) {
    // GIVEN replica A driving n slow runs, and replica B started beside it
    let a = Server::start(store, chunk_ms, 256, first_extra);
    let runs: Vec<String> = (0..n).map(|_| a.start_run()).collect();
    let b = Server::start(store, chunk_ms, 256, &[]);

    // WHEN both run for longer than a lease time (B must take nothing from a live A)
    std::thread::sleep(Duration::from_secs_f64(LEASE_SECONDS * 1.5));
    assert_eq!(b.takeovers(), [], "B took runs from a live owner");
    let open_at_kill = {
        let s = b.statuses(100);
        runs.iter()
            .filter(|id| s.get(*id).map(String::as_str) == Some("running"))
            .count()
    };
    assert!(
        open_at_kill > 0,
        "A finished every run before the kill: make them slower"
    );
    // AND A is killed -9 midway
    let killed_at = a.kill();

    // THEN B takes A's runs over and every run ends exactly once, completed
    wait_until_all_end(&b, &runs, Duration::from_secs(300));
    // AND a listing a few at a time names each run once
    assert_eq!(b.statuses(3).len(), runs.len());
    let taken = b.takeovers();
    let mut ids: Vec<&String> = taken.iter().map(|t| &t.1).collect();
    ids.dedup();
    assert_eq!(
        ids.len(),
        open_at_kill,
        "B took over each run A left, once: {ids:?}"
    );
    let latency = taken[0].0.saturating_duration_since(killed_at);
    let last = taken[taken.len() - 1]
        .0
        .saturating_duration_since(killed_at);
    if store.named_owners {
        // The lapse path: not before the lease ran out, and within a lease and a poll of it
        // (plus slack for a loaded machine: this bounds "never", it is no speed test).
        let lease = Duration::from_secs_f64(LEASE_SECONDS);
        assert!(
            latency <= lease + lease / 3 + Duration::from_secs(5),
            "{latency:?}"
        );
    }
    let restarts: usize = runs.iter().map(|id| check_log(store, id)).sum();
    assert!(
        restarts <= open_at_kill,
        "{restarts} restarts for {open_at_kill} runs taken over"
    );
    eprintln!(
        "takeover: {open_at_kill} of {} runs taken over, the first {:.0} ms and the last {:.0} ms after the kill (lease {LEASE_SECONDS} s)",
        runs.len(),
        latency.as_secs_f64() * 1000.0,
        last.as_secs_f64() * 1000.0
    );
}

#[test]
fn two_serve_replicas_on_one_sqlite_file_survive_one_killed() {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreArgs::sqlite(&dir.path().join("runs.db"));
    two_replicas_one_dies(&store, &[], 8, 25);
}

#[test]
fn two_serve_replicas_on_one_dynamodb_table_survive_one_killed() {
    if std::env::var("DYNAMODB_TEST_ENDPOINT").is_err() {
        eprintln!("SKIPPED: needs the DynamoDB emulator (DYNAMODB_TEST_ENDPOINT)");
        assert!(std::env::var("CI").is_err(), "CI runs the emulator");
        return;
    }
    // An emulator of its own: moto slows as it fills, and the other suites fill the shared one.
    let emulator = Emulator::start();
    let table = format!("own-{}", uuid::Uuid::new_v4().simple());
    let store = StoreArgs::dynamodb(&emulator.endpoint, &table);
    // Named owners, as replicas on different machines would be: the dead one's runs wait for
    // its lease to lapse (no process check can vouch for another machine).
    two_replicas_one_dies(&store, &["--create-table"], 6, 15);
}

/// A moto server started by infra/emulator.sh on a free port, stopped when dropped.
struct Emulator {
    endpoint: String,
    port: u16,
}

impl Emulator {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let out = Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../infra/emulator.sh"))
            .arg(port.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let endpoint = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Self { endpoint, port }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../infra/emulator.sh"))
            .args(["--stop", &self.port.to_string()])
            .output();
    }
}

#[test]
fn resume_leaves_a_run_a_live_process_drives_alone() {
    // GIVEN `orchestrator run` driving a slow run
    let dir = tempfile::tempdir().unwrap();
    let store = StoreArgs::sqlite(&dir.path().join("runs.db"));
    let mut running = store
        .command(20)
        .args(["run", OBJECTIVE, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(running.stdout.take().unwrap()).lines();
    let run_id = loop {
        let line = lines.next().unwrap().unwrap();
        if let Some(data) = line.strip_prefix("data: ") {
            let v: Value = serde_json::from_str(data).unwrap();
            break v["runId"].as_str().unwrap().to_owned();
        }
    };
    let reader = std::thread::spawn(move || lines.map_while(Result::ok).count());

    // WHEN another process tries to resume it
    let resumed = store.command(0).args(["resume", &run_id]).output().unwrap();

    // THEN it refuses with exit 3, naming the owner, and changes nothing
    assert_eq!(resumed.status.code(), Some(3), "{resumed:?}");
    let err = String::from_utf8_lossy(&resumed.stderr);
    assert!(
        err.contains("is being driven by") && err.contains("--follow"),
        "{err}"
    );

    // AND with --follow it follows the stream to the end, as the driving process does
    let followed = store
        .command(0)
        .args(["resume", &run_id, "--follow", "--json"])
        .output()
        .unwrap();
    assert!(
        followed.status.success(),
        "{}",
        String::from_utf8_lossy(&followed.stderr)
    );
    assert!(String::from_utf8_lossy(&followed.stdout).contains("event: complete"));
    assert!(
        running.wait().unwrap().success(),
        "the driving `run` exits 0"
    );
    reader.join().unwrap();
    assert_eq!(check_log(&store, &run_id), 0, "nothing restarted");
}

#[test]
fn a_restart_with_three_times_the_admission_limit_of_interrupted_runs_finishes_them_all() {
    // GIVEN a server killed -9 with six runs in flight
    let dir = tempfile::tempdir().unwrap();
    let store = StoreArgs::sqlite(&dir.path().join("runs.db"));
    let first = Server::start(&store, 25, 6, &[]);
    let runs: Vec<String> = (0..6).map(|_| first.start_run()).collect();
    std::thread::sleep(Duration::from_millis(800));
    first.kill();

    // WHEN a server admitting two runs at a time starts on the same file
    let second = Server::start(&store, 0, 2, &[]);

    // THEN it stays up and finishes all six, a slot at a time
    wait_until_all_end(&second, &runs, Duration::from_secs(300));
    assert!(second.child.try_wait_ref().is_none(), "the server exited");
    for id in &runs {
        check_log(&store, id);
    }
    assert_eq!(second.takeovers().len(), 6);
}

trait TryWaitRef {
    fn try_wait_ref(&self) -> Option<std::process::ExitStatus>;
}

impl TryWaitRef for Child {
    /// Whether the process has exited, without reaping it (`/proc` shows a live pid).
    fn try_wait_ref(&self) -> Option<std::process::ExitStatus> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.id())).ok()?;
        let state = stat.rsplit(") ").next()?.chars().next()?;
        (state == 'Z').then(std::process::ExitStatus::default)
    }
}
