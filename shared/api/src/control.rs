//! How the API starts and steers runs. Locally a [`LocalControl`] drives them in-process; on
//! AWS the streamer starts Step Functions executions instead.

use std::sync::Arc;

use async_trait::async_trait;
use orchestrator_core::ports::RunCursor;
use orchestrator_core::types::{RunRequest, RunStatus, ValidationError};
use orchestrator_runner::{Delivered, Launch, RunError, Runner, Started};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;
use crate::fork::{ForkModels, ForkRequest, ForkResponse};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedRun {
    pub run_id: String,
    /// False when an idempotency key named an existing run.
    pub created: bool,
}

#[async_trait]
pub trait Control: Send + Sync + 'static {
    /// Every check a request must pass; nothing is started or stored when it fails.
    fn validate(&self, request: &RunRequest) -> Result<(), ValidationError>;
    async fn start(
        &self,
        request: RunRequest,
        correlation_id: String,
    ) -> Result<StartedRun, ApiError>;
    async fn cancel(&self, run_id: &str, reason: String) -> Result<(), ApiError>;
    async fn answer(
        &self,
        run_id: &str,
        checkpoint_id: &str,
        approve: bool,
        comment: Option<String>,
    ) -> Result<(), ApiError>;
    /// Starts a fork of a finished run (see [`crate::fork`]).
    async fn fork(&self, run_id: &str, fork: ForkRequest) -> Result<ForkResponse, ApiError> {
        let _ = (run_id, fork);
        Err(ApiError::NotImplemented(
            "forks are driven in-process: run `orchestrator fork` (or `orchestrator serve`) against this deployment's store".into(),
        ))
    }
}

/// When a client refused for the cap on runs in progress may try again: runs take minutes.
const CAPACITY_RETRY_AFTER_SECS: u64 = 30;

impl From<RunError> for ApiError {
    fn from(e: RunError) -> Self {
        match e {
            RunError::Invalid(v) => v.into(),
            RunError::Store(s) => s.into(),
            RunError::NotFound(id) => ApiError::NotFound(format!("run {id} not found")),
            RunError::Finished { run_id, status } => {
                ApiError::Conflict(format!("run {run_id} has already finished ({status})"))
            }
            RunError::NoSuchCheckpoint {
                run_id,
                checkpoint_id,
            } => ApiError::Conflict(format!(
                "run {run_id} is not waiting at checkpoint {checkpoint_id}"
            )),
            RunError::Owned { run_id, owner, .. } => ApiError::Conflict(format!(
                "run {run_id} is being driven by another process ({owner}); retry once it pauses"
            )),
            e @ RunError::AtCapacity { .. } => ApiError::Overloaded {
                message: e.to_string(),
                retry_after_secs: CAPACITY_RETRY_AFTER_SECS,
            },
        }
    }
}

/// Drives a run on a task of its own, holding its slot until it ends.
fn spawn_drive(runner: Runner, launch: Launch, permit: Option<OwnedSemaphorePermit>) {
    tokio::spawn(async move {
        let run_id = launch.state.run_id.clone();
        match runner.drive(launch).await {
            Ok(status) => tracing::info!(%run_id, %status, "run driven"),
            Err(e) if e.taken_over() => {
                tracing::info!(%run_id, "another process took the run over")
            }
            Err(e) => tracing::error!(%run_id, error = %e, "run stopped with an error"),
        }
        drop(permit);
    });
}

/// Runs driven by tasks of this process, at most `max_active` at once.
#[derive(Clone)]
pub struct LocalControl {
    runner: Runner,
    active: Arc<Semaphore>,
    retry_after_secs: u64,
    /// Where a fork's live model comes from; none: forks are not served.
    forks: Option<Arc<dyn ForkModels>>,
}

impl LocalControl {
    pub fn new(runner: Runner, max_active: usize) -> Self {
        Self {
            runner,
            active: Arc::new(Semaphore::new(max_active)),
            retry_after_secs: 2,
            forks: None,
        }
    }

    /// Serves forks, their live calls made by models from `models`.
    pub fn with_forks(mut self, models: Arc<dyn ForkModels>) -> Self {
        self.forks = Some(models);
        self
    }

    pub fn runner(&self) -> &Runner {
        &self.runner
    }

    fn permit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.active
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::Overloaded {
                message: "too many runs in progress; retry later".into(),
                retry_after_secs: self.retry_after_secs,
            })
    }

    fn spawn(&self, launch: Launch, permit: Option<OwnedSemaphorePermit>) {
        spawn_drive(self.runner.clone(), launch, permit);
    }

    /// One pass of recovery: takes over every run in progress that no live process drives
    /// (its owner died, or a previous process of this one stopped), oldest first. Each waits
    /// for a free slot, so a backlog beyond the admission limit queues instead of failing.
    /// A run created less than a lease time ago is left to its creator, which claims it at
    /// once. `taken` hears of each run as it is taken over; returns how many were.
    pub async fn take_over_orphans(&self, taken: impl Fn(&str)) -> Result<usize, ApiError> {
        const PAGE: usize = 200;
        let store = self.runner.store().clone();
        let grace = self.runner.lease_config().ttl_ms();
        let mut count = 0;
        let mut after: Option<RunCursor> = None;
        loop {
            let page = store.list_active(PAGE, after.as_ref()).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.cursor());
            for run in page.iter().filter(|r| r.status == RunStatus::Running) {
                let now = self.runner.now_ms();
                if self.runner.is_live(&run.run_id) || run.created_at_ms.saturating_add(grace) > now
                {
                    continue;
                }
                if self.take_over(&run.run_id).await? {
                    taken(&run.run_id);
                    count += 1;
                }
            }
            if page.len() < PAGE {
                break;
            }
        }
        Ok(count)
    }

    /// Resumes the run here if its lease is free, once a slot is.
    async fn take_over(&self, run_id: &str) -> Result<bool, ApiError> {
        let permit = self
            .active
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::Internal("the run slots are closed".into()))?;
        match self.runner.resume(run_id).await {
            Ok(launch) => {
                self.spawn(launch, Some(permit));
                Ok(true)
            }
            // Driven by a live process, finished or gone since the listing: not ours.
            Err(RunError::Owned { .. } | RunError::Finished { .. } | RunError::NotFound(_)) => {
                Ok(false)
            }
            Err(e) => {
                tracing::warn!(%run_id, error = %e, "could not take the run over");
                Ok(false)
            }
        }
    }

    async fn delivered(&self, delivered: Delivered) -> Result<(), ApiError> {
        if let Delivered::Applied(launch) = delivered {
            // A run that just ended only needs its report written: no slot needed for that.
            let permit = if launch.state.status.is_terminal() {
                None
            } else {
                Some(self.permit()?)
            };
            self.spawn(*launch, permit);
        }
        Ok(())
    }
}

#[async_trait]
impl Control for LocalControl {
    fn validate(&self, request: &RunRequest) -> Result<(), ValidationError> {
        self.runner.validate(request)
    }

    async fn start(
        &self,
        request: RunRequest,
        correlation_id: String,
    ) -> Result<StartedRun, ApiError> {
        let permit = self.permit()?;
        match self.runner.start(request, Some(correlation_id)).await? {
            Started::New(launch) => {
                let run_id = launch.state.run_id.clone();
                self.spawn(*launch, Some(permit));
                Ok(StartedRun {
                    run_id,
                    created: true,
                })
            }
            Started::Existing { run_id } => Ok(StartedRun {
                run_id,
                created: false,
            }),
        }
    }

    async fn cancel(&self, run_id: &str, reason: String) -> Result<(), ApiError> {
        let delivered = self.runner.cancel(run_id, reason).await?;
        self.delivered(delivered).await
    }

    async fn answer(
        &self,
        run_id: &str,
        checkpoint_id: &str,
        approve: bool,
        comment: Option<String>,
    ) -> Result<(), ApiError> {
        let delivered = self
            .runner
            .answer(run_id, checkpoint_id, approve, comment)
            .await?;
        self.delivered(delivered).await
    }

    async fn fork(&self, run_id: &str, fork: ForkRequest) -> Result<ForkResponse, ApiError> {
        let Some(models) = &self.forks else {
            return Err(ApiError::NotImplemented(
                "this server does not fork runs; `orchestrator serve` does".into(),
            ));
        };
        let permit = self.permit()?;
        let (forked, response) =
            crate::fork::start_fork(&self.runner, models.as_ref(), run_id, fork).await?;
        spawn_drive(forked.runner, forked.launch, Some(permit));
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;

    use super::*;

    #[test]
    fn a_start_past_the_cap_on_runs_is_a_503_with_retry_after() {
        // GIVEN a start refused for the cap on runs in progress
        let refused = RunError::AtCapacity { limit: 3 };
        // WHEN the API answers it
        let response = ApiError::from(refused).into_response();
        // THEN the client is told to come back later, and when
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers().get(header::RETRY_AFTER).unwrap(),
            &CAPACITY_RETRY_AFTER_SECS.to_string()
        );
    }
}
