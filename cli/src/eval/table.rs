//! The eval's table on stdout: one row per case, then the totals; and each failed case in full.

use std::fmt::Write;
use std::time::Duration;

use super::CaseResult;
use crate::terminal;

/// The longest first failure reason shown in a row; the rest is in the failures above.
const REASON_CHARS: usize = 72;

const HEADERS: [&str; 7] = [
    "case", "status", "qa", "tokens", "duration", "result", "reason",
];

/// The table, with a header row; every cell made safe to print.
pub fn render(results: &[CaseResult]) -> String {
    let rows: Vec<[String; 7]> = results.iter().map(row).collect();
    let mut widths = HEADERS.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    line(&mut out, &HEADERS.map(str::to_owned), &widths);
    for row in &rows {
        line(&mut out, row, &widths);
    }
    out
}

fn row(r: &CaseResult) -> [String; 7] {
    let observed = r.observed.as_ref();
    let reason: String = r
        .first_reason()
        .map(|reason| {
            let reason = terminal::line(reason);
            if reason.chars().count() > REASON_CHARS {
                reason.chars().take(REASON_CHARS - 1).chain(['…']).collect()
            } else {
                reason.into_owned()
            }
        })
        .unwrap_or_default();
    [
        terminal::line(&r.name).into_owned(),
        observed.map_or("-".into(), |o| o.status.to_string()),
        observed
            .and_then(|o| o.qa_score)
            .map_or("-".into(), |s| format!("{s:.2}")),
        observed.map_or("-".into(), |o| o.tokens.to_string()),
        observed.map_or("-".into(), |o| seconds(o.duration_ms)),
        r.verdict().to_owned(),
        reason,
    ]
}

/// Left-aligned text, right-aligned figures; the last column unpadded.
fn line(out: &mut String, cells: &[String; 7], widths: &[usize; 7]) {
    let mut text = String::new();
    for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
        let pad = width.saturating_sub(cell.chars().count());
        match i {
            6 => text.push_str(cell),
            2..=4 => {
                let _ = write!(text, "{}{cell}  ", " ".repeat(pad));
            }
            _ => {
                let _ = write!(text, "{cell}{}  ", " ".repeat(pad));
            }
        }
    }
    out.push_str(text.trim_end());
    out.push('\n');
}

fn seconds(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

/// `3 cases: 2 passed, 1 failed in 4.2s` (errors named when there are some).
pub fn totals(results: &[CaseResult], elapsed: Duration) -> String {
    let passed = results.iter().filter(|r| r.passed()).count();
    let errors = results.iter().filter(|r| r.error.is_some()).count();
    let failed = results.len() - passed - errors;
    let errors = if errors > 0 {
        format!(", {errors} errors")
    } else {
        String::new()
    };
    format!(
        "{} cases: {passed} passed, {failed} failed{errors} in {:.1}s",
        results.len(),
        elapsed.as_secs_f64()
    )
}

/// A case that did not pass, in full: every failure with its details (a side-by-side diff).
pub fn failure_details(r: &CaseResult) -> String {
    let mut out = format!("── {} {}", r.name, r.verdict());
    if let Some(run) = &r.run_id {
        let _ = write!(out, " (run {run}");
        if let Some(of) = &r.replay_of {
            let _ = write!(out, ", replay of {of}");
        }
        out.push(')');
    }
    out.push('\n');
    if let Some(e) = &r.error {
        let _ = writeln!(out, "  error: {e}");
    }
    for f in &r.failures {
        let _ = writeln!(out, "  {}: {}", f.kind, f.message);
        if let Some(details) = &f.details {
            for l in details.lines() {
                let _ = writeln!(out, "    {l}");
            }
        }
    }
    out.push('\n');
    out
}
