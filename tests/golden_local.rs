#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the assertion in a test

//! The reference run's frames on the local paths, against `tests/golden/reference_run.jsonl`:
//! `orchestrator run --json` and `orchestrator serve`'s `run.stream`, offline model. The
//! emulated AWS stack checks the same file (the second test in `tests/aws_run.rs`).

mod golden;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use orchestrator_core::event::SseParser;
use serde_json::Value;

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    cmd.env_remove("MODEL_PROVIDER")
        .env_remove("ORCHESTRATOR_DB")
        .env_remove("ORCHESTRATOR_STORE")
        .env_remove("API_KEY")
        .env("ORCHESTRATOR_OFFLINE_CHUNK_MS", "0");
    cmd
}

/// The JSON data of every frame of an SSE text, in order.
fn data_of(sse: &str) -> Vec<Value> {
    let mut parser = SseParser::default();
    parser
        .push(sse)
        .into_iter()
        .map(|f| serde_json::from_str(&f.data).expect("one-line JSON data"))
        .collect()
}

#[test]
fn orchestrator_run_streams_the_golden_frames() {
    // GIVEN a fresh database and the offline model
    let dir = tempfile::tempdir().unwrap();
    // WHEN the reference run is run with --json
    let out = bin()
        .arg("--db")
        .arg(dir.path().join("runs.db"))
        .args(["run", golden::OBJECTIVE, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // THEN its frames, normalised, are the golden ones
    let frames = golden::normalise(data_of(&String::from_utf8(out.stdout).unwrap()));
    golden::assert_golden("orchestrator run --json", &frames);
}

#[test]
fn serve_streams_the_golden_frames() {
    // GIVEN `orchestrator serve` on a fresh database, offline model
    let dir = tempfile::tempdir().unwrap();
    let mut child = bin()
        .arg("--db")
        .arg(dir.path().join("runs.db"))
        .args(["serve", "--addr", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            let rest = l.split("listening on http://").nth(1)?;
            Some(rest.split_whitespace().next()?.to_owned())
        })
        .expect("serve says where it listens");
    std::thread::spawn(move || lines.for_each(drop));

    // WHEN the reference run is posted to run.stream and read to its end
    let body = serde_json::json!({ "objective": golden::OBJECTIVE }).to_string();
    let mut tcp = TcpStream::connect(&addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        tcp,
        "POST /api/v1/agent/run.stream HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();

    // THEN its frames, normalised, are the golden ones
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    golden::assert_golden("serve run.stream", &golden::normalise(data_of(&body)));
}

/// The payload of a chunked HTTP/1.1 body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}
