#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the assertion in a test

//! The cap on runs in progress: a start past it is refused before anything is stored, and a
//! run that ends makes room again.

use std::sync::Arc;

use orchestrator_agents::{Planner, default_specialists};
use orchestrator_core::fakes::ScriptedModel;
use orchestrator_core::ports::{RunStore, SystemClock};
use orchestrator_core::types::{RunRequest, RunStatus};
use orchestrator_runner::{RunError, Runner, RunnerConfig, Started};
use orchestrator_store::SqliteStore;
use serde_json::json;

fn runner(store: Arc<SqliteStore>, cap: usize) -> Runner {
    let script = vec![
        Ok(
            json!({"add": [{"id": "s1", "capabilityId": "strategy", "label": "Research"}]})
                .to_string(),
        ),
        Ok(r#"{"audience": "developers", "angle": "sync", "platform": "blog"}"#.to_owned()),
    ];
    let model = Arc::new(ScriptedModel::new(script));
    Runner::new(
        store,
        Planner::new(model.clone()),
        default_specialists(model),
        Arc::new(SystemClock),
        RunnerConfig {
            max_runs_in_progress: Some(cap),
            ..RunnerConfig::default()
        },
    )
}

#[tokio::test]
async fn a_start_past_the_cap_is_refused_and_a_run_that_ends_makes_room() {
    // GIVEN a cap of one run in progress, and one run started
    let store = Arc::new(SqliteStore::open_in_memory().unwrap());
    let runner = runner(store.clone(), 1);
    let Started::New(first) = runner.start(RunRequest::new("First"), None).await.unwrap() else {
        panic!("a new run");
    };

    // WHEN a second run starts
    let refused = runner.start(RunRequest::new("Second"), None).await;

    // THEN it is refused, naming the cap and its variable, and nothing is stored for it
    match refused {
        Err(e @ RunError::AtCapacity { limit: 1 }) => {
            assert!(
                e.to_string().contains("ORCHESTRATOR_MAX_RUNS_IN_PROGRESS"),
                "{e}"
            );
        }
        other => panic!("expected AtCapacity, got {other:?}"),
    }
    assert_eq!(store.list_runs(10, None).await.unwrap().len(), 1);

    // WHEN the first run ends THEN a new one starts
    let status = runner.drive(*first).await.unwrap();
    assert_ne!(status, RunStatus::Running);
    let again = runner.start(RunRequest::new("Second"), None).await;
    assert!(matches!(again, Ok(Started::New(_))), "{again:?}");
}
