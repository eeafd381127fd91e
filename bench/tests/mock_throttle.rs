//! `mock-llm --throttle-first`: the first N requests of a role answer 429, then it streams.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use orchestrator_bench::mock::{MockConfig, Throttle, spawn_on_loopback};
use orchestrator_core::ports::Purpose;
use serde_json::{Value, json};

fn request() -> Value {
    json!({
        "model": "mock",
        "stream": true,
        "messages": [
            {"role": "system", "content": "You are the QA reviewer."},
            {"role": "user", "content": "Review this draft."}
        ]
    })
}

async fn post(http: &reqwest::Client, base: &str) -> reqwest::Response {
    http.post(format!("{base}/chat/completions"))
        .json(&request())
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {base}: {e}"))
}

async fn assert_throttled_then_streams(base: &str) {
    let http = reqwest::Client::new();

    let first = post(&http, base).await;
    assert_eq!(first.status(), reqwest::StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        first
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("0")
    );
    let body: Value = first.json().await.unwrap_or_default();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    assert!(body["error"]["message"].as_str().is_some(), "{body}");

    let second = post(&http, base).await;
    assert_eq!(second.status(), reqwest::StatusCode::OK);
    assert!(
        second
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"))
    );
    let text = second.text().await.unwrap_or_default();
    assert!(text.contains("chat.completion.chunk"), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
}

#[tokio::test]
async fn given_throttle_first_qa_when_two_qa_requests_then_the_first_is_429_and_the_second_streams()
{
    let config = MockConfig {
        throttle: Throttle::default().with(Purpose::Review, 1),
        ..MockConfig::default()
    };
    let addr = spawn_on_loopback(config)
        .await
        .unwrap_or_else(|e| panic!("mock: {e}"));
    let base = format!("http://{addr}/v1");

    assert_throttled_then_streams(&base).await;

    // Other roles were never throttled, and the count is per role.
    let http = reqwest::Client::new();
    let planner = http
        .post(format!("{base}/chat/completions"))
        .header("x-mock-role", "planner")
        .json(&request())
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST: {e}"));
    assert_eq!(planner.status(), reqwest::StatusCode::OK);
    let stats: Value = http
        .get(format!("http://{addr}/stats"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET /stats: {e}"))
        .json()
        .await
        .unwrap_or_default();
    assert_eq!(stats["throttled"], 1, "{stats}");
    assert_eq!(stats["calls"], 2, "{stats}");
}

#[test]
fn throttle_specs_parse_roles_counts_and_lists() {
    let t: Throttle = "qa".parse().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.first(Purpose::Review), 1);
    assert_eq!(t.first(Purpose::Plan), 0);
    let t = t
        .add_spec("planner:3, writer:2")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.first(Purpose::Plan), 3);
    assert_eq!(t.first(Purpose::Generate), 2);
    assert_eq!(t.first(Purpose::Review), 1);
    assert!("nobody".parse::<Throttle>().is_err());
    assert!("qa:x".parse::<Throttle>().is_err());
}

/// Kills the child when the test ends, pass or fail.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_binary_prints_its_base_url_and_throttles_from_the_flag() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mock-llm"))
        .args([
            "--ttft-ms",
            "0",
            "--chunk-ms",
            "0",
            "--throttle-first",
            "qa",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn mock-llm: {e}"));
    let stdout = child.stdout.take();
    let child = Killed(child);
    let mut line = String::new();
    let read = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            if let Some(out) = stdout {
                let _ = BufReader::new(out).read_line(&mut line);
            }
            line
        }),
    )
    .await;
    if let Ok(Ok(l)) = read {
        line = l;
    }
    let base = line.trim();
    assert!(
        base.starts_with("http://127.0.0.1:") && base.ends_with("/v1"),
        "first line of stdout: {line:?}"
    );
    assert_throttled_then_streams(base).await;
    drop(child);
}
