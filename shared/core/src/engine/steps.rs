//! A step's end: a result (read by capability: chat answer, QA verdict, final bundle), a
//! failure (retried while attempts are left) or a failure for good (a replan).

use serde_json::{Value, json};

use super::*;
use crate::event::{EventKind, MetricsScope, TokenCounts};
use crate::types::{FINALIZE_CAPABILITY, FinalBundle, Mode, PlanStep, QualityVerdict, StepStatus};

impl Engine {
    /// Whether `step_id` is in progress with exactly `attempt`.
    pub(super) fn is_current(state: &RunState, step_id: &str, attempt: u32) -> bool {
        state
            .plan
            .step(step_id)
            .is_some_and(|s| s.status == StepStatus::InProgress)
            && state.attempts(step_id) == attempt
    }

    pub(super) fn release(state: &mut RunState, step_id: &str) {
        if let Some(p) = state.progress.get_mut(step_id) {
            state.reserved_tokens = state.reserved_tokens.saturating_sub(p.reserved_tokens);
            p.reserved_tokens = 0;
        }
    }

    pub(super) fn on_step_finished(
        &self,
        state: &mut RunState,
        result: StepResult,
        now_ms: u64,
        out: &mut Out,
    ) -> bool {
        if !Self::is_current(state, &result.step_id, result.attempt) {
            return false;
        }
        state.suspended.remove(&result.step_id);
        let step_id = result.step_id.clone();
        let capability = state
            .plan
            .step(&step_id)
            .and_then(PlanStep::capability)
            .unwrap_or_default()
            .to_owned();
        Self::release(state, &step_id);
        state.usage.add(result.usage());
        out.emit(EventKind::Metrics {
            tokens: TokenCounts {
                input: result.metrics.input_tokens,
                output: result.metrics.output_tokens,
            },
            duration_ms: result.metrics.duration_ms,
            data: Some(MetricsScope {
                step_id: step_id.clone(),
                capability_id: capability.clone(),
            }),
        });
        // Read what the engine needs from the output before declaring the step done.
        let replan = match Self::read_output(state, &capability, &result, out) {
            Ok(replan) => replan,
            Err(error) => return self.step_failed_for_good(state, &step_id, error, now_ms, out),
        };
        if let Some(step) = state.plan.step_mut(&step_id) {
            step.status = StepStatus::Done;
        }
        if let Some(reason) = replan {
            state.revisions += 1;
            self.ask_planner(state, reason, now_ms, out);
            return true;
        }
        self.schedule(state, now_ms, out);
        true
    }

    /// Takes from a finished step's output what the run needs: a chat answer, a QA verdict
    /// (and the replan it may call for), a final bundle. An output that is not what its
    /// capability must give is the step's failure.
    fn read_output(
        state: &mut RunState,
        capability: &str,
        result: &StepResult,
        out: &mut Out,
    ) -> Result<Option<ReplanReason>, String> {
        if state.request.mode == Mode::Chat {
            let text = result
                .output
                .get("text")
                .and_then(Value::as_str)
                .filter(|t| !t.trim().is_empty())
                .ok_or("the chat answer has no text")?;
            state.chat_message = Some(text.to_owned());
            out.emit(EventKind::Message {
                message: text.to_owned(),
            });
        } else if capability == QA_CAPABILITY {
            let verdict = serde_json::from_value::<QualityVerdict>(result.output.clone())
                .map_err(|e| format!("QA output is not a verdict: {e}"))?;
            return Ok(Self::judge(state, &result.step_id, verdict, out));
        } else if capability == FINALIZE_CAPABILITY {
            let bundle = serde_json::from_value::<FinalBundle>(result.output.clone())
                .map_err(|e| format!("finalize output is not a final bundle: {e}"))?;
            state.final_bundle = Some(bundle);
        }
        Ok(None)
    }

    /// Reads a QA verdict against the threshold: a pass, a replan while revision cycles are
    /// left, or a warning that the run finishes below the threshold.
    fn judge(
        state: &mut RunState,
        step_id: &str,
        verdict: QualityVerdict,
        out: &mut Out,
    ) -> Option<ReplanReason> {
        let opts = &state.request.options;
        let passed = verdict.score >= opts.quality_threshold;
        out.emit(EventKind::Message {
            message: format!(
                "QA score {:.2} (threshold {:.2}): {}",
                verdict.score,
                opts.quality_threshold,
                if passed { "pass" } else { "below threshold" }
            ),
        });
        let replan = if passed {
            None
        } else if state.revisions < opts.max_revision_cycles {
            Some(ReplanReason::QualityBelowThreshold {
                step_id: step_id.to_owned(),
                score: verdict.score,
                threshold: opts.quality_threshold,
                issues: verdict.issues.clone(),
            })
        } else {
            out.emit(EventKind::warning(
                format!(
                    "QA scored {:.2}, below the threshold {:.2}, after {} revision cycle(s); finishing with this draft",
                    verdict.score, opts.quality_threshold, state.revisions
                ),
                Some(json!({ "stepId": step_id, "issues": verdict.issues })),
            ));
            None
        };
        state.quality = Some(verdict);
        replan
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_step_failed(
        &self,
        state: &mut RunState,
        step_id: &str,
        attempt: u32,
        error: String,
        retryable: bool,
        now_ms: u64,
        out: &mut Out,
    ) -> bool {
        if !Self::is_current(state, step_id, attempt) {
            return false;
        }
        state.suspended.remove(step_id);
        Self::release(state, step_id);
        if retryable && attempt < self.config.max_attempts {
            out.emit(EventKind::warning(
                format!(
                    "Step {step_id} failed ({error}); retrying, attempt {} of {}",
                    attempt + 1,
                    self.config.max_attempts
                ),
                Some(json!({ "stepId": step_id, "attempt": attempt, "retryable": true })),
            ));
            if let Some(step) = state.plan.step_mut(step_id) {
                step.status = StepStatus::Pending;
            }
            self.schedule(state, now_ms, out);
            return true;
        }
        let error = if retryable {
            format!("{error} (after {attempt} attempts)")
        } else {
            error
        };
        self.step_failed_for_good(state, step_id, error, now_ms, out)
    }

    /// A step that will not succeed: failed in the plan, a warning on the stream, and a replan
    /// if any are left (else the run fails).
    pub(super) fn step_failed_for_good(
        &self,
        state: &mut RunState,
        step_id: &str,
        error: String,
        now_ms: u64,
        out: &mut Out,
    ) -> bool {
        let capability = state
            .plan
            .step(step_id)
            .and_then(PlanStep::capability)
            .map(str::to_owned);
        if let Some(step) = state.plan.step_mut(step_id) {
            step.status = StepStatus::Failed;
            step.note = Some(error.clone());
        }
        out.emit(EventKind::warning(
            format!("Step {step_id} failed: {error}"),
            Some(json!({ "stepId": step_id, "capabilityId": capability, "error": error })),
        ));
        if state.request.mode == Mode::Chat {
            self.fail(state, format!("the answer failed: {error}"), now_ms, out);
            return true;
        }
        self.ask_planner(
            state,
            ReplanReason::StepFailed {
                step_id: step_id.to_owned(),
                error,
            },
            now_ms,
            out,
        );
        true
    }
}
