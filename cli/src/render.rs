//! Renders a run's frames for a person (or, with --json, as the exact SSE frames).

use std::collections::HashMap;
use std::io::{self, Write};

use orchestrator_core::event::{
    EventKind, Frame, HandoffStage, HitlKind, HitlRequest, MetricsScope, PlanUpdate, SSE_PROLOGUE,
    TokenCounts,
};
use orchestrator_core::types::{FinalBundle, Mode, Plan, QualityGate, RunStatus, StepStatus};

use crate::terminal::{self, Clean, block, line};

pub trait Render {
    /// Shows one frame; returns true when the run's stream is complete.
    fn frame(&mut self, frame: &Frame) -> io::Result<bool>;
}

/// The wire contract, byte for byte; but DEL and C1 characters, which serde_json leaves raw,
/// are `\u` escaped (the same JSON values) so that no frame can drive the terminal.
pub struct Sse<W: Write> {
    out: W,
    opened: bool,
}

impl<W: Write> Sse<W> {
    pub fn new(out: W) -> Self {
        Self { out, opened: false }
    }
}

impl<W: Write> Render for Sse<W> {
    fn frame(&mut self, frame: &Frame) -> io::Result<bool> {
        if !self.opened {
            self.out.write_all(SSE_PROLOGUE.as_bytes())?;
            self.opened = true;
        }
        self.out
            .write_all(terminal::json(&frame.to_sse()).as_bytes())?;
        self.out.flush()?;
        Ok(matches!(frame.event.kind, EventKind::Complete { .. }))
    }
}

/// A checklist that is re-printed when the plan changes, the draft as it streams, QA verdicts,
/// and the result with time and tokens at the end. Everything goes out through [`Clean`]: text
/// from the request or a model never reaches the terminal as a control character.
pub struct Human<W: Write> {
    out: Clean<W>,
    mode: Mode,
    plan: Plan,
    status: HashMap<String, StepStatus>,
    streaming: Option<String>,
    streamed: bool,
}

impl<W: Write> Human<W> {
    pub fn new(out: W, mode: Mode) -> Self {
        Self {
            out: Clean::new(out),
            mode,
            plan: Plan::default(),
            status: HashMap::new(),
            streaming: None,
            streamed: false,
        }
    }

    fn end_stream(&mut self) -> io::Result<()> {
        if self.streaming.take().is_some() {
            writeln!(self.out)?;
        }
        Ok(())
    }

    fn checklist(&mut self) -> io::Result<()> {
        for step in &self.plan.steps {
            let status = self.status.get(&step.id).copied().unwrap_or(step.status);
            let mark = match status {
                StepStatus::Pending => "[ ]",
                StepStatus::InProgress => "[~]",
                StepStatus::Done => "[x]",
                StepStatus::Skipped => "[-]",
                StepStatus::Failed => "[!]",
            };
            let who = step.capability().unwrap_or("approval");
            writeln!(
                self.out,
                "  {mark} {:<4} {:<11} {}",
                line(&step.id),
                line(who),
                line(&step.title())
            )?;
        }
        Ok(())
    }

    fn result(&mut self, bundle: &FinalBundle) -> io::Result<()> {
        writeln!(
            self.out,
            "\n── Result ({}) ──",
            line(&bundle.result.platform)
        )?;
        writeln!(self.out, "{}", block(bundle.result.content.trim_end()))?;
        writeln!(self.out, "──")?;
        writeln!(
            self.out,
            "Quality {:.2} ({}) · acceptance {:?}",
            bundle.quality.score,
            if bundle.quality.pass {
                "pass"
            } else {
                "below threshold"
            },
            bundle.acceptance_report.overall
        )?;
        for c in &bundle.acceptance_report.criteria {
            writeln!(
                self.out,
                "  {} {} {}",
                if c.passed { "✓" } else { "✗" },
                line(&c.id),
                line(c.details.as_deref().unwrap_or(""))
            )?;
        }
        Ok(())
    }
}

impl<W: Write> Render for Human<W> {
    fn frame(&mut self, frame: &Frame) -> io::Result<bool> {
        let kind = &frame.event.kind;
        if !matches!(kind, EventKind::Delta { .. }) {
            self.end_stream()?;
        }
        match kind {
            EventKind::Start { message } => {
                let run_id = line(&frame.event.run_id);
                writeln!(self.out, "▶ {} · run {run_id}", line(message))?
            }
            EventKind::Phase { message, .. } => writeln!(self.out, "… {}", line(message))?,
            EventKind::PlanUpdate { data } => self.plan_update(data)?,
            EventKind::Handoff { message, data } => {
                if *message == HandoffStage::Requested {
                    self.status
                        .insert(data.step_id.clone(), StepStatus::InProgress);
                }
            }
            EventKind::Delta { message, data } => self.delta(message, &data.step_id)?,
            EventKind::Message { message } => {
                if !(self.mode == Mode::Chat && self.streamed) {
                    writeln!(self.out, "  {}", block(message))?;
                }
            }
            EventKind::Warning { message, .. } => {
                if let Some(step) = frame.event.kind.clone().warning_step_failed() {
                    self.status.insert(step, StepStatus::Failed);
                }
                writeln!(self.out, "⚠ {}", block(message))?;
            }
            EventKind::Error { message, .. } => writeln!(self.out, "✗ {}", block(message))?,
            EventKind::ToolCall { message, data } => {
                let args = data.get("args").map(|a| a.to_string()).unwrap_or_default();
                let args: String = args.chars().take(100).collect();
                writeln!(self.out, "  ⚙ {} {}", line(message), line(&args))?;
            }
            EventKind::ToolResult { message, data } => {
                match data.pointer("/result/error").and_then(|e| e.as_str()) {
                    Some(error) => writeln!(self.out, "  ⚙ {}: {}", line(message), line(error))?,
                    None => writeln!(self.out, "  ⚙ {} done", line(message))?,
                }
            }
            EventKind::HitlRequest { data } => self.hitl_request(data)?,
            EventKind::Metrics {
                tokens,
                duration_ms,
                data,
            } => self.metrics(tokens, *duration_ms, data.as_ref())?,
            EventKind::Complete {
                data,
                status,
                quality_gate,
                ..
            } => {
                self.complete(data, *status, *quality_gate)?;
                self.out.flush()?;
                return Ok(true);
            }
        }
        self.out.flush()?;
        Ok(false)
    }
}

impl<W: Write> Human<W> {
    fn plan_update(&mut self, data: &PlanUpdate) -> io::Result<()> {
        if let Ok(next) = self.plan.apply_patch(&data.patch) {
            self.plan = next;
        }
        self.plan.version = data.version;
        match &data.reason {
            Some(reason) => writeln!(self.out, "Plan v{} ({}):", data.version, line(reason))?,
            None => writeln!(self.out, "Plan v{}:", data.version)?,
        }
        self.checklist()
    }

    fn delta(&mut self, text: &str, step_id: &str) -> io::Result<()> {
        if self.streaming.as_deref() != Some(step_id) {
            self.end_stream()?;
            if self.mode == Mode::App {
                writeln!(self.out, "  ┌ draft from {}", line(step_id))?;
            }
            write!(self.out, "  │ ")?;
            self.streaming = Some(step_id.to_owned());
        }
        self.streamed = true;
        write!(self.out, "{}", block(text).replace('\n', "\n  │ "))
    }

    fn hitl_request(&mut self, data: &HitlRequest) -> io::Result<()> {
        let wanted = match data.kind {
            HitlKind::Approval => "approval",
            HitlKind::Clarify => "an answer",
        };
        writeln!(
            self.out,
            "⏸ Waiting for {wanted} at {}: {} (expires {}); answer with `orchestrator approve <runId> {}`",
            line(&data.checkpoint_id),
            line(&data.question),
            line(&data.expires_at),
            line(&data.checkpoint_id)
        )
    }

    fn metrics(
        &mut self,
        tokens: &TokenCounts,
        duration_ms: u64,
        scope: Option<&MetricsScope>,
    ) -> io::Result<()> {
        match scope {
            Some(scope) => {
                self.status.insert(scope.step_id.clone(), StepStatus::Done);
                writeln!(
                    self.out,
                    "✓ {} ({}) done in {} ms · {} tokens in, {} out",
                    line(&scope.step_id),
                    line(&scope.capability_id),
                    duration_ms,
                    tokens.input,
                    tokens.output
                )
            }
            None => writeln!(
                self.out,
                "Σ {:.1} s · {} tokens ({} in, {} out)",
                duration_ms as f64 / 1000.0,
                tokens.input + tokens.output,
                tokens.input,
                tokens.output
            ),
        }
    }

    fn complete(
        &mut self,
        data: &serde_json::Value,
        status: RunStatus,
        quality_gate: QualityGate,
    ) -> io::Result<()> {
        if self.mode == Mode::App && !self.plan.steps.is_empty() {
            writeln!(self.out, "Plan v{} at the end:", self.plan.version)?;
            self.checklist()?;
        }
        if let Ok(bundle) = serde_json::from_value::<FinalBundle>(data.clone()) {
            self.result(&bundle)?;
        }
        writeln!(self.out, "■ Run {status}")?;
        if quality_gate == QualityGate::Failed {
            writeln!(self.out, "{QUALITY_GATE_FAILED}")?;
        }
        Ok(())
    }
}

/// What a run that completed below the QA threshold ends with (and `orchestrator show` says).
pub const QUALITY_GATE_FAILED: &str = "✗ QUALITY GATE FAILED: the result stayed below the QA threshold after the last revision cycle (the result is kept; the run exits 4)";

trait WarningStep {
    fn warning_step_failed(self) -> Option<String>;
}

impl WarningStep for EventKind {
    /// The step a "Step X failed" warning is about.
    fn warning_step_failed(self) -> Option<String> {
        match self {
            EventKind::Warning {
                message,
                data: Some(data),
            } if message.contains("failed:") && !message.contains("retrying") => {
                data.get("stepId")?.as_str().map(str::to_owned)
            }
            _ => None,
        }
    }
}
