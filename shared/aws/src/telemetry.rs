//! Logs, traces and metrics on Lambda. Logs: JSON when the function's log format is JSON
//! (AWS_LAMBDA_LOG_FORMAT), at AWS_LAMBDA_LOG_LEVEL; every handler runs inside a span carrying
//! runId, stepId and correlationId, so each line of a run names them. Traces: exported over
//! OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set, flushed at the end of every invocation
//! (`orchestrator_telemetry`). Metrics: CloudWatch Embedded Metric Format lines on stdout,
//! which CloudWatch turns into metrics with no agent and no API call.

use serde_json::{Value, json};

use crate::error::InitError;

/// The metrics namespace of every EMF line.
pub const NAMESPACE: &str = "Orchestrator";

/// Sets up logs and traces once, before the runtime starts; `function` names the service in
/// traces (`orchestrator-{function}`) unless OTEL_SERVICE_NAME does.
pub fn init(function: &str) -> Result<(), InitError> {
    let service = format!("orchestrator-{function}");
    orchestrator_telemetry::init(&service, orchestrator_telemetry::Logs::Lambda)?;
    Ok(())
}

/// The streamer's app, its spans sent as each response begins: by then the request's span
/// and a new run's span have ended, and a streamed response keeps the sandbox awake while they
/// go. Unchanged when traces are not exported.
pub fn flushing(app: axum::Router) -> axum::Router {
    if !orchestrator_telemetry::exporting() {
        return app;
    }
    app.layer(axum::middleware::map_response(
        |response: axum::response::Response| async move {
            tokio::task::spawn_blocking(orchestrator_telemetry::flush);
            response
        },
    ))
}

/// Sends the invocation's spans before the sandbox freezes (nothing to do when traces are not
/// exported).
pub async fn flush() {
    if orchestrator_telemetry::exporting() {
        let _ = tokio::task::spawn_blocking(orchestrator_telemetry::flush).await;
    }
}

/// One step's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct StepFigures<'a> {
    pub run_id: &'a str,
    pub step_id: &'a str,
    pub capability: &'a str,
    pub duration_ms: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Attempts before this one.
    pub retries: u32,
    pub qa_score: Option<f64>,
    pub failed: bool,
}

/// The EMF document for one step: metrics by capability, with the run and step as properties
/// (searchable in Logs Insights, not dimensions: one metric series per run would be costly).
pub fn step_metrics(f: &StepFigures<'_>, timestamp_ms: u64) -> Value {
    let mut metrics = vec![
        json!({"Name": "StepDuration", "Unit": "Milliseconds"}),
        json!({"Name": "InputTokens", "Unit": "Count"}),
        json!({"Name": "OutputTokens", "Unit": "Count"}),
        json!({"Name": "StepRetries", "Unit": "Count"}),
        json!({"Name": "StepFailed", "Unit": "Count"}),
    ];
    let mut doc = json!({
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [],
        },
        "Capability": f.capability,
        "runId": f.run_id,
        "stepId": f.step_id,
        "StepDuration": f.duration_ms,
        "InputTokens": f.input_tokens,
        "OutputTokens": f.output_tokens,
        "StepRetries": f.retries,
        "StepFailed": u8::from(f.failed),
    });
    if let Some(score) = f.qa_score {
        metrics.push(json!({"Name": "QaScore", "Unit": "None"}));
        doc["QaScore"] = json!(score);
    }
    doc["_aws"]["CloudWatchMetrics"] = json!([{
        "Namespace": NAMESPACE,
        "Dimensions": [["Capability"]],
        "Metrics": metrics,
    }]);
    doc
}

/// Writes the document as one stdout line, where CloudWatch Logs picks EMF up.
pub fn emit(doc: &Value) {
    println!("{doc}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_qa_step_reports_its_score_as_a_metric_by_capability() {
        // GIVEN a finished QA step
        let f = StepFigures {
            run_id: "r1",
            step_id: "review",
            capability: "qa",
            duration_ms: 812,
            input_tokens: 900,
            output_tokens: 120,
            retries: 1,
            qa_score: Some(0.5),
            failed: false,
        };
        // WHEN its EMF document is built
        let doc = step_metrics(&f, 1_700_000_000_000);
        // THEN every declared metric has a value at the top level, by the Capability dimension
        let decl = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(decl["Namespace"], NAMESPACE);
        assert_eq!(decl["Dimensions"][0][0], "Capability");
        for m in decl["Metrics"].as_array().unwrap() {
            let name = m["Name"].as_str().unwrap();
            assert!(doc.get(name).is_some_and(Value::is_number), "{name}");
        }
        assert_eq!(doc["QaScore"], 0.5);
        assert_eq!(doc["runId"], "r1");
    }

    #[test]
    fn a_step_without_a_score_declares_no_score_metric() {
        let f = StepFigures {
            run_id: "r1",
            step_id: "draft",
            capability: "generation",
            duration_ms: 1,
            input_tokens: 0,
            output_tokens: 0,
            retries: 0,
            qa_score: None,
            failed: true,
        };
        let doc = step_metrics(&f, 0);
        let names: Vec<_> = doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap().to_owned())
            .collect();
        assert!(!names.contains(&"QaScore".to_owned()));
        assert_eq!(doc["StepFailed"], 1);
    }
}
