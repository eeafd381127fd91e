//! The streamer's way of starting and steering runs: every run is a Step Functions execution
//! named by its run id; answers and cancellations are applied to the stored run and then handed
//! to the execution.

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_sfn::error::ProvideErrorMetadata;
use orchestrator_api::{ApiError, Control, StartedRun};
use orchestrator_core::engine::Input;
use orchestrator_core::ports::StoreError;
use orchestrator_core::types::{RunRequest, ValidationError};
use orchestrator_runner::{RunError, Started, Transitions};
use orchestrator_store::DynamoDbStore;

use crate::completion::deliver;
use crate::contract::{ExecutionInput, Resumed};
use crate::error::{AwsError, Service};
use crate::handlers::{ApprovalWaits, Delivery};
use crate::segments::{
    Deadlines, MachineKind, SegmentStarts, Segments, deadline_name, segment_name,
};

/// Task tokens in the run's table, waits resumed with SendTaskSuccess.
#[derive(Clone)]
pub struct AwsApprovalWaits {
    pub store: DynamoDbStore,
    pub sfn: aws_sdk_sfn::Client,
}

#[async_trait]
impl ApprovalWaits for AwsApprovalWaits {
    async fn save_token(
        &self,
        run_id: &str,
        checkpoint_id: &str,
        token: &str,
    ) -> Result<(), StoreError> {
        self.store
            .put_task_token(run_id, checkpoint_id, token)
            .await
    }

    async fn token(&self, run_id: &str, checkpoint_id: &str) -> Result<Option<String>, StoreError> {
        self.store.task_token(run_id, checkpoint_id).await
    }

    async fn resume(&self, token: &str, run_id: &str) -> Result<(), AwsError> {
        self.send_task_success(token, run_id).await
    }
}

impl AwsApprovalWaits {
    /// Ends the wait whose task token is `token`; a wait already over is success.
    pub async fn send_task_success(&self, token: &str, run_id: &str) -> Result<(), AwsError> {
        let output = serde_json::to_string(&Resumed {
            run_id: run_id.to_owned(),
        })
        .map_err(|source| AwsError::Encode {
            what: "SendTaskSuccess output",
            source,
        })?;
        match self
            .sfn
            .send_task_success()
            .task_token(token)
            .output(output)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // Already resumed (by the other side of the race) or over: nothing left to do.
            Err(e) if matches!(e.code(), Some("TaskTimedOut" | "InvalidToken")) => {
                tracing::info!(%run_id, code = ?e.code(), "the wait was already over");
                Ok(())
            }
            Err(e) => Err(AwsError::call(
                Service::StepFunctions,
                "SendTaskSuccess",
                &e,
            )),
        }
    }
}

#[derive(Clone)]
pub struct SfnControl {
    pub transitions: Transitions,
    pub sfn: aws_sdk_sfn::Client,
    pub state_machine_arn: String,
    pub kind: MachineKind,
    pub waits: Arc<dyn ApprovalWaits>,
    /// Express: where the run's segments are claimed (an answer starts the next one).
    pub segments: Arc<dyn Segments>,
    /// Express: the paused run's deadline, cancelled by an answer.
    pub deadlines: Arc<dyn Deadlines>,
    /// A run cancelled here never reaches the state machine's Notify: its completion is sent
    /// from here.
    pub delivery: Option<Delivery>,
}

impl SfnControl {
    /// A run's first execution is named by its run id, so its ARN follows from the state
    /// machine's.
    fn execution_arn(&self, run_id: &str) -> String {
        format!(
            "{}:{run_id}",
            self.state_machine_arn
                .replacen(":stateMachine:", ":execution:", 1)
        )
    }

    /// Starts the run's execution (on Express, its first segment).
    pub(crate) async fn start_execution(
        &self,
        run_id: &str,
        traceparent: Option<&str>,
    ) -> Result<(), AwsError> {
        let segment = (self.kind == MachineKind::Express).then_some(0);
        start(
            &self.sfn,
            &self.state_machine_arn,
            run_id,
            segment,
            traceparent,
        )
        .await
    }

    /// Express: the answer has been applied to the stored run, whose last segment ended at
    /// the checkpoint; the next segment carries the run on, and the checkpoint's deadline is
    /// deleted.
    async fn start_next_segment(
        &self,
        run_id: &str,
        traceparent: Option<&str>,
    ) -> Result<(), ApiError> {
        let latest = self.segments.latest(run_id).await?;
        let next = latest.map_or(1, |l| l.number + 1);
        start(
            &self.sfn,
            &self.state_machine_arn,
            run_id,
            Some(next),
            traceparent,
        )
        .await
        .map_err(|e| {
            unavailable(format!(
                "the answer is saved, but the run could not go on ({e}); answer again to retry"
            ))
        })?;
        // Left in place, the deadline would start a segment that finds this one's claim and
        // ends: harmless, so a failure here is only logged.
        if let Err(e) = self.deadlines.cancel(run_id, next).await {
            tracing::warn!(%run_id, error = %e, "the answered checkpoint's deadline was not deleted");
        }
        Ok(())
    }
}

/// Starts an execution: a Standard run's only one (`segment` none) or an Express segment.
async fn start(
    sfn: &aws_sdk_sfn::Client,
    state_machine_arn: &str,
    run_id: &str,
    segment: Option<u32>,
    traceparent: Option<&str>,
) -> Result<(), AwsError> {
    let input = serde_json::to_string(&ExecutionInput {
        run_id: run_id.to_owned(),
        segment,
        traceparent: traceparent.map(str::to_owned),
    })
    .map_err(|source| AwsError::Encode {
        what: "execution input",
        source,
    })?;
    match sfn
        .start_execution()
        .state_machine_arn(state_machine_arn)
        .name(segment_name(run_id, segment.unwrap_or(0)))
        .input(input)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        // Started before (a retried request): Step Functions itself refuses a second one of
        // that name (Standard; on Express the segment's claim does).
        Err(e) if e.code() == Some("ExecutionAlreadyExists") => Ok(()),
        Err(e) => Err(AwsError::call(Service::StepFunctions, "StartExecution", &e)),
    }
}

#[async_trait]
impl SegmentStarts for aws_sdk_sfn::Client {
    async fn start(
        &self,
        state_machine: &str,
        run_id: &str,
        segment: u32,
        traceparent: Option<&str>,
    ) -> Result<(), AwsError> {
        start(self, state_machine, run_id, Some(segment), traceparent).await
    }
}

fn unavailable(message: String) -> ApiError {
    ApiError::Overloaded {
        message,
        retry_after_secs: 2,
    }
}

#[async_trait]
impl Control for SfnControl {
    fn validate(&self, request: &RunRequest) -> Result<(), ValidationError> {
        self.transitions.validate(request)
    }

    async fn start(
        &self,
        request: RunRequest,
        correlation_id: String,
    ) -> Result<StartedRun, ApiError> {
        match self
            .transitions
            .start(request, Some(correlation_id))
            .await?
        {
            Started::New(launch) => {
                let run_id = launch.state.run_id.clone();
                self.transitions.owned_by_execution(&run_id).await?;
                let traceparent = launch.state.traceparent.as_deref();
                if let Err(e) = self.start_execution(&run_id, traceparent).await {
                    // No execution will ever drive this run: end it visibly rather than leave
                    // a run that looks alive.
                    tracing::error!(%run_id, error = %e, "could not start the execution");
                    let reason = format!("the run could not be started: {e}");
                    self.transitions
                        .transition(launch.state, Input::Cancelled { reason })
                        .await?;
                    return Err(unavailable(format!(
                        "could not start the run's execution ({e}); retry later"
                    )));
                }
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
        let state = self.transitions.load(run_id).await?;
        if state.status.is_terminal() {
            return Err(RunError::Finished {
                run_id: run_id.to_owned(),
                status: state.status,
            }
            .into());
        }
        let launch = self
            .transitions
            .transition(
                state,
                Input::Cancelled {
                    reason: reason.clone(),
                },
            )
            .await?;
        if let Some(delivery) = &self.delivery {
            let report = self.transitions.report(run_id).await?;
            if let Err(e) = deliver(
                delivery.completions.as_ref(),
                &report,
                &launch.state,
                &delivery.table,
            )
            .await
            {
                // The run is cancelled either way; say loudly that its event did not go out.
                tracing::error!(%run_id, error = %e, "the completion event of a cancelled run was not sent");
            }
        }
        if self.kind == MachineKind::Express {
            // Express executions cannot be stopped: the segment ends at its next move, whose
            // function finds the run cancelled. A paused run's deadline would start a segment
            // that finds it cancelled too; deleting it saves that execution.
            let next = self
                .segments
                .latest(run_id)
                .await?
                .map_or(1, |l| l.number + 1);
            if let Err(e) = self.deadlines.cancel(run_id, next).await {
                tracing::warn!(%run_id, error = %e, "the cancelled run's deadline was not deleted");
            }
            return Ok(());
        }
        match self
            .sfn
            .stop_execution()
            .execution_arn(self.execution_arn(run_id))
            .cause(reason)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("ExecutionDoesNotExist") => Ok(()),
            Err(e) => {
                // The run is cancelled in the table, which is what every reader sees; the
                // execution ends at its next step, whose functions find the run over.
                let e = AwsError::call(Service::StepFunctions, "StopExecution", &e);
                tracing::warn!(%run_id, error = %e, "StopExecution failed");
                Ok(())
            }
        }
    }

    async fn answer(
        &self,
        run_id: &str,
        checkpoint_id: &str,
        approve: bool,
        comment: Option<String>,
    ) -> Result<(), ApiError> {
        let state = self.transitions.load(run_id).await?;
        let input = self
            .transitions
            .answer_input(&state, checkpoint_id, approve, comment)?;
        let launch = self.transitions.transition(state, input).await?;
        if self.kind == MachineKind::Express {
            let traceparent = launch.state.traceparent.as_deref();
            return self.start_next_segment(run_id, traceparent).await;
        }
        // Without a token the wait has not begun; when it does, it finds the answer.
        if let Some(token) = self.waits.token(run_id, checkpoint_id).await? {
            self.waits
                .resume(&token, run_id)
                .await
                .map_err(|e| unavailable(e.to_string()))?;
        }
        Ok(())
    }
}

/// Deadlines as one-time EventBridge Scheduler schedules that call StartExecution (the
/// universal target, so the segment's execution gets its name) and delete themselves.
#[derive(Clone)]
pub struct SchedulerDeadlines {
    pub client: aws_sdk_scheduler::Client,
    /// The role Scheduler assumes to start executions (template: SchedulerRole).
    pub role_arn: String,
}

#[async_trait]
impl Deadlines for SchedulerDeadlines {
    async fn schedule(
        &self,
        state_machine: &str,
        run_id: &str,
        segment: u32,
        at_ms: u64,
    ) -> Result<(), AwsError> {
        use aws_sdk_scheduler::types::{
            ActionAfterCompletion, FlexibleTimeWindow, FlexibleTimeWindowMode, Target,
        };
        let start = serde_json::json!({
            "StateMachineArn": state_machine,
            "Name": segment_name(run_id, segment),
            "Input": serde_json::json!({"runId": run_id, "segment": segment}).to_string(),
        });
        // arn:<partition>:states:... -> the same partition's universal target.
        let partition = state_machine.split(':').nth(1).unwrap_or("aws");
        let invalid = |e: aws_sdk_scheduler::error::BuildError| AwsError::Call {
            service: Service::Scheduler,
            operation: "CreateSchedule",
            detail: format!("the request could not be built: {e}"),
        };
        let target = Target::builder()
            .arn(format!(
                "arn:{partition}:scheduler:::aws-sdk:sfn:startExecution"
            ))
            .role_arn(&self.role_arn)
            .input(start.to_string())
            .build()
            .map_err(invalid)?;
        let window = FlexibleTimeWindow::builder()
            .mode(FlexibleTimeWindowMode::Off)
            .build()
            .map_err(invalid)?;
        let result = self
            .client
            .create_schedule()
            .name(deadline_name(run_id, segment))
            .schedule_expression(format!("at({})", at_expression(at_ms)))
            .schedule_expression_timezone("UTC")
            .flexible_time_window(window)
            .target(target)
            .action_after_completion(ActionAfterCompletion::Delete)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // Kept by a retried pause: the same schedule.
            Err(e) if e.code() == Some("ConflictException") => Ok(()),
            Err(e) => Err(AwsError::call(Service::Scheduler, "CreateSchedule", &e)),
        }
    }

    async fn cancel(&self, run_id: &str, segment: u32) -> Result<(), AwsError> {
        let name = deadline_name(run_id, segment);
        match self.client.delete_schedule().name(name).send().await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("ResourceNotFoundException") => Ok(()),
            Err(e) => Err(AwsError::call(Service::Scheduler, "DeleteSchedule", &e)),
        }
    }
}

/// `at()`'s time: UTC to the second, no zone suffix (the zone is the schedule's).
fn at_expression(at_ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(at_ms);
    let text = humantime::format_rfc3339_seconds(at).to_string();
    text.trim_end_matches('Z').to_owned()
}

/// Standard deployments keep no deadlines: the state machine's wait times the approval out.
pub struct NoDeadlines;

#[async_trait]
impl Deadlines for NoDeadlines {
    async fn schedule(&self, _: &str, run_id: &str, _: u32, _: u64) -> Result<(), AwsError> {
        tracing::warn!(%run_id, "no deadline kept (SCHEDULER_ROLE_ARN is not set)");
        Ok(())
    }

    async fn cancel(&self, _: &str, _: u32) -> Result<(), AwsError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_is_an_at_expression_in_utc_to_the_second() {
        // 2026-12-07T14:00:05.900Z
        assert_eq!(at_expression(1_796_652_005_900), "2026-12-07T14:00:05");
    }
}
