//! The RunReport, assembled from the state and the stored step results (no model call).

use crate::engine::RunState;
use crate::types::{ReportSummary, RunReport, StepResult};

pub fn build_report(state: &RunState, mut results: Vec<StepResult>, now_ms: u64) -> RunReport {
    let order = |id: &str| {
        state
            .plan
            .steps
            .iter()
            .position(|s| s.id == id)
            .unwrap_or(usize::MAX)
    };
    results.sort_by(|a, b| {
        order(&a.step_id)
            .cmp(&order(&b.step_id))
            .then(a.attempt.cmp(&b.attempt))
    });
    let failures = results.iter().filter(|r| r.error.is_some()).count() as u32;
    RunReport {
        run_id: state.run_id.clone(),
        status: state.status,
        summary: ReportSummary {
            steps: results.iter().filter(|r| r.error.is_none()).count() as u32,
            failures,
            duration_ms: state.duration_ms(now_ms),
            tokens: state.usage,
        },
        steps: results,
        final_bundle: state.final_bundle.clone(),
        message: state.chat_message.clone(),
        quality_gate: state.quality_gate(),
    }
}
