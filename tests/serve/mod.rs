//! The `orchestrator` binary as the reference-run tests start it, and `orchestrator serve`: on
//! a free port, stopped when dropped, with a reference run posted to its `run.stream`.

#![allow(dead_code)] // each test binary uses part of it

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The `orchestrator` binary as the reference run needs it: the offline model streaming
/// without pauses, and none of the caller's store, database or key settings.
pub fn offline_orchestrator() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    cmd.env_remove("MODEL_PROVIDER")
        .env_remove("ORCHESTRATOR_DB")
        .env_remove("ORCHESTRATOR_STORE")
        .env_remove("API_KEY")
        .env("ORCHESTRATOR_OFFLINE_CHUNK_MS", "0");
    cmd
}

/// A running `serve`, killed when dropped.
pub struct Serve {
    child: Child,
    pub addr: String,
}

impl Serve {
    /// Starts `cmd` (an `orchestrator` command with its options) as `serve` on a free port,
    /// and waits until it says where it listens.
    pub fn start(mut cmd: Command) -> Self {
        let mut child = cmd
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
        Serve { child, addr }
    }

    /// POSTs `body` (a RunRequest) to `run.stream` with the extra `headers`, reads the
    /// response to its end and returns its SSE body.
    pub fn run_stream(&self, body: &str, headers: &[(&str, &str)]) -> String {
        let mut tcp = TcpStream::connect(&self.addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let extra: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        write!(
            tcp,
            "POST /api/v1/agent/run.stream HTTP/1.0\r\nhost: {}\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut raw = String::new();
        tcp.read_to_string(&mut raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(head.contains(" 200 "), "{head}");
        body.to_owned()
    }

    /// GETs `path`, reads the response to its end and returns its body (a 200 is asserted).
    pub fn get(&self, path: &str) -> String {
        let mut tcp = TcpStream::connect(&self.addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(tcp, "GET {path} HTTP/1.0\r\nhost: {}\r\n\r\n", self.addr).unwrap();
        let mut raw = String::new();
        tcp.read_to_string(&mut raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(head.contains(" 200 "), "{head}");
        body.to_owned()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
