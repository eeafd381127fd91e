//! The reference workload as the driver and the tests run it: the objective, a runner with
//! the default planner and specialists on a given store and model, one run to its end, and
//! the model calls such a run makes.

use std::sync::Arc;
use std::time::Duration;

use orchestrator_agents::{Planner, default_specialists};
use orchestrator_core::ports::{Model, StoreError, SystemClock};
use orchestrator_core::types::{RunRequest, RunStatus};
use orchestrator_llm::OfflineModel;
use orchestrator_runner::{RunError, Runner, RunnerConfig, Started, Store};
use orchestrator_store::SqliteStore;
use serde_json::json;

use crate::recording::{RecordedCall, RecordingModel};

/// The objective of every reference run (the offline model's script, which the mock serves,
/// takes the planner -> strategy -> draft -> QA fails -> replan -> draft -> QA passes path).
pub const OBJECTIVE: &str = "Write a launch post for Acme Sync, our file sync app";

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("the reference request is invalid: {0}")]
    Request(#[from] serde_json::Error),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the run already existed")]
    Existed,
    #[error("the reference run on the offline model ended {0}, not completed")]
    NotCompleted(RunStatus),
}

pub fn request() -> Result<RunRequest, WorkloadError> {
    Ok(serde_json::from_value(json!({ "objective": OBJECTIVE }))?)
}

pub fn runner_on(store: Arc<dyn Store>, model: Arc<dyn Model>) -> Runner {
    runner_with(store, model, RunnerConfig::default())
}

/// The same with `config` (e.g. the batching of a store that bills every write).
pub fn runner_with(store: Arc<dyn Store>, model: Arc<dyn Model>, config: RunnerConfig) -> Runner {
    Runner::new(
        store,
        Planner::new(model.clone()),
        default_specialists(model),
        Arc::new(SystemClock),
        config,
    )
}

/// Starts a reference run and drives it to its end.
pub async fn one_run(runner: &Runner) -> Result<RunStatus, WorkloadError> {
    let Started::New(launch) = runner.start(request()?, None).await? else {
        return Err(WorkloadError::Existed);
    };
    Ok(runner.drive(*launch).await?)
}

/// The reference run's model calls as the engine makes them: one run on the offline model
/// (whose replies the mock also sends), recorded.
pub async fn reference_calls() -> Result<Vec<RecordedCall>, WorkloadError> {
    let recording = Arc::new(RecordingModel::new(Arc::new(OfflineModel::new(
        Duration::ZERO,
    ))));
    let runner = runner_on(Arc::new(SqliteStore::open_in_memory()?), recording.clone());
    match one_run(&runner).await? {
        RunStatus::Completed => Ok(recording.calls()),
        status => Err(WorkloadError::NotCompleted(status)),
    }
}
