//! Completion delivery: when a run ends, one EventBridge event (`Run Completed` / `Run Failed`)
//! on the configured bus, so other services react without polling. Sent by whoever ended the
//! run (`advance`, or the streamer's cancel); a note in the table keeps a retried invocation
//! from sending it again.

use async_trait::async_trait;
use orchestrator_core::engine::RunState;
use orchestrator_core::ports::StoreError;
use orchestrator_core::types::{RunReport, RunStatus};
use serde_json::{Value, json};

use crate::error::{AwsError, DeliveryError, Service};

/// The `source` of every completion event.
pub const SOURCE: &str = "orchestrator";
/// The note that records a sent completion.
const NOTE: &str = "completion";

/// One completion event, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub run_id: String,
    pub detail_type: &'static str,
    pub detail: Value,
}

/// The event for a finished run: its report, and from its state the correlation id and error.
pub fn completion_of(report: &RunReport, state: &RunState, table: &str) -> Completion {
    let detail_type = if report.status == RunStatus::Completed {
        "Run Completed"
    } else {
        "Run Failed"
    };
    let mut detail = json!({
        "runId": report.run_id,
        "correlationId": state.correlation_id,
        "status": report.status,
        "summary": report.summary,
        "report": {
            "path": format!("/api/v1/runs/{}", report.run_id),
            "table": table,
            "key": {"pk": format!("RUN#{}", report.run_id), "sk": "REPORT"},
        },
    });
    if let Some(error) = &state.error {
        detail["error"] = json!(error);
    }
    Completion {
        run_id: report.run_id.clone(),
        detail_type,
        detail,
    }
}

/// Where completions go, and the record of those sent. The record is the runs' table, hence
/// a store's error; the event is an AWS call.
#[async_trait]
pub trait Completions: Send + Sync {
    async fn sent(&self, run_id: &str) -> Result<bool, StoreError>;
    async fn send(&self, completion: &Completion) -> Result<(), AwsError>;
    async fn mark_sent(&self, run_id: &str) -> Result<(), StoreError>;
}

/// Sends the run's completion unless it went out before. Sent, then recorded: a crash between
/// the two sends it again on retry (consumers can tell by the runId), never zero times.
pub async fn deliver(
    completions: &dyn Completions,
    report: &RunReport,
    state: &RunState,
    table: &str,
) -> Result<bool, DeliveryError> {
    if completions.sent(&report.run_id).await? {
        return Ok(false);
    }
    completions
        .send(&completion_of(report, state, table))
        .await?;
    completions.mark_sent(&report.run_id).await?;
    tracing::info!(runId = %report.run_id, status = %report.status, "completion event sent");
    Ok(true)
}

/// Completions on an EventBridge bus, the record in the runs' table.
#[derive(Clone)]
pub struct EventBridgeCompletions {
    pub client: aws_sdk_eventbridge::Client,
    pub bus: String,
    pub store: orchestrator_store::DynamoDbStore,
}

#[async_trait]
impl Completions for EventBridgeCompletions {
    async fn sent(&self, run_id: &str) -> Result<bool, StoreError> {
        self.store.has_note(run_id, NOTE).await
    }

    async fn send(&self, completion: &Completion) -> Result<(), AwsError> {
        self.put_event(completion).await
    }

    async fn mark_sent(&self, run_id: &str) -> Result<(), StoreError> {
        self.store.put_note(run_id, NOTE).await
    }
}

impl EventBridgeCompletions {
    /// Puts the completion on the bus.
    pub async fn put_event(&self, completion: &Completion) -> Result<(), AwsError> {
        let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
            .event_bus_name(&self.bus)
            .source(SOURCE)
            .detail_type(completion.detail_type)
            .detail(completion.detail.to_string())
            .resources(format!("run:{}", completion.run_id))
            .build();
        let out = self
            .client
            .put_events()
            .entries(entry)
            .send()
            .await
            .map_err(|e| AwsError::call(Service::EventBridge, "PutEvents", &e))?;
        // PutEvents answers 200 with per-entry failures.
        if out.failed_entry_count() > 0 {
            let why = out
                .entries()
                .iter()
                .filter_map(|e| e.error_message())
                .collect::<Vec<_>>()
                .join("; ");
            return Err(AwsError::EventRefused(why));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestrator_core::types::{ReportSummary, Usage};

    fn state(error: Option<&str>) -> RunState {
        let request = serde_json::from_value(json!({"objective": "x"})).unwrap();
        let mut state = RunState::new("r1", "c1", request, 0);
        state.error = error.map(str::to_owned);
        state
    }

    fn report(status: RunStatus) -> RunReport {
        RunReport {
            run_id: "r1".into(),
            status,
            steps: vec![],
            summary: ReportSummary {
                steps: 7,
                failures: 0,
                duration_ms: 1200,
                tokens: Usage::default(),
            },
            final_bundle: None,
            message: None,
            quality_gate: Default::default(),
        }
    }

    #[test]
    fn a_completed_run_is_run_completed_with_its_summary_and_where_the_report_is() {
        let c = completion_of(&report(RunStatus::Completed), &state(None), "runs");
        assert_eq!(c.detail_type, "Run Completed");
        assert_eq!(c.detail["status"], "completed");
        assert_eq!(c.detail["summary"]["steps"], 7);
        assert_eq!(c.detail["report"]["path"], "/api/v1/runs/r1");
        assert_eq!(c.detail["report"]["key"]["pk"], "RUN#r1");
        assert_eq!(c.detail["correlationId"], "c1");
        assert!(c.detail.get("error").is_none());
    }

    #[test]
    fn a_failed_or_cancelled_run_is_run_failed_with_its_error() {
        for status in [
            RunStatus::Failed,
            RunStatus::Cancelled,
            RunStatus::BudgetExhausted,
        ] {
            let c = completion_of(&report(status), &state(Some("boom")), "runs");
            assert_eq!(c.detail_type, "Run Failed");
            assert_eq!(c.detail["error"], "boom");
        }
    }
}
