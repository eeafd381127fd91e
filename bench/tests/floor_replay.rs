//! The floor replays the reference run's recorded calls from a bare client; it is only a floor
//! if the mock then does exactly the work a real run asks of it.

use std::sync::Arc;
use std::time::Duration;

use orchestrator_bench::mock::{MockConfig, MockStats, spawn_on_loopback};
use orchestrator_bench::workload::{one_run, reference_calls, runner_on};
use orchestrator_core::ports::Model;
use orchestrator_core::types::RunStatus;
use orchestrator_llm::{OpenAiModel, Resilience};
use orchestrator_store::SqliteStore;

async fn reference_run(model: Arc<dyn Model>) -> RunStatus {
    let store = SqliteStore::open_in_memory().unwrap_or_else(|e| panic!("store: {e}"));
    one_run(&runner_on(Arc::new(store), model))
        .await
        .unwrap_or_else(|e| panic!("reference run: {e}"))
}

async fn stats(http: &reqwest::Client, root: &str) -> MockStats {
    http.get(format!("{root}/stats"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET /stats: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("/stats: {e}"))
}

#[tokio::test]
async fn replaying_the_recorded_calls_asks_the_mock_for_what_a_real_run_does() {
    // GIVEN the mock at zero latency
    let config = MockConfig {
        ttft: Duration::ZERO,
        chunk_delay: Duration::ZERO,
        ..MockConfig::default()
    };
    let addr = spawn_on_loopback(config)
        .await
        .unwrap_or_else(|e| panic!("mock: {e}"));
    let root = format!("http://{addr}");
    let http = reqwest::Client::new();

    // WHEN the reference run goes through the real adapter to the mock
    let adapter = OpenAiModel::new(&format!("{root}/v1"), None, "mock", Resilience::default())
        .unwrap_or_else(|e| panic!("adapter: {e}"));
    assert_eq!(reference_run(Arc::new(adapter)).await, RunStatus::Completed);
    let real = stats(&http, &root).await;

    // AND its calls, recorded on the offline model, are replayed by a bare client
    let calls = reference_calls()
        .await
        .unwrap_or_else(|e| panic!("recording: {e}"));
    for call in calls {
        let body = http
            .post(format!("{root}/v1/chat/completions"))
            .json(&call.openai_body("mock"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST: {e}"))
            .error_for_status()
            .unwrap_or_else(|e| panic!("status: {e}"))
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("body: {e}"));
        assert!(!body.is_empty());
    }
    let replayed = stats(&http, &root).await.minus(&real);

    // THEN the mock answered the same calls with the same replies, chunk for chunk
    assert_eq!(replayed.calls, real.calls);
    assert_eq!(replayed.streamed_calls, real.streamed_calls);
    assert_eq!(replayed.chunks, real.chunks);
    assert_eq!(replayed.streamed_chunks, real.streamed_chunks);
    assert_eq!(real.calls, 7, "the reference run makes 7 calls: {real:?}");
}
