//! The `--json` document: the suite, its totals and each case, for scripts and dashboards.

use std::time::Duration;

use serde::Serialize;

use super::CaseResult;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Document<'a> {
    suite: &'a str,
    /// Every case passed (the eval exits 0).
    passed: bool,
    totals: Totals,
    cases: Vec<Case<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Totals {
    cases: usize,
    passed: usize,
    failed: usize,
    errors: usize,
    duration_ms: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Case<'a> {
    name: &'a str,
    /// The case's run (live) or the replay's run.
    run_id: Option<&'a str>,
    /// With `--replay`: the recorded run replayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    replay_of: Option<&'a str>,
    status: Option<&'static str>,
    qa_score: Option<f64>,
    tokens: Option<u64>,
    /// The run's duration, as its report gives it.
    duration_ms: Option<u64>,
    /// The case's wall time in the eval.
    elapsed_ms: u64,
    passed: bool,
    failures: Vec<Failure<'a>>,
}

#[derive(Serialize)]
struct Failure<'a> {
    /// The expectation (`status`, `minQaScore`...), `replay`, or `error` for a case that could
    /// not be run or checked.
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a str>,
}

pub fn render<'a>(name: &'a str, results: &'a [CaseResult], elapsed: Duration) -> Document<'a> {
    let passed = results.iter().filter(|r| r.passed()).count();
    let errors = results.iter().filter(|r| r.error.is_some()).count();
    Document {
        suite: name,
        passed: passed == results.len(),
        totals: Totals {
            cases: results.len(),
            passed,
            failed: results.len() - passed - errors,
            errors,
            duration_ms: millis(elapsed),
        },
        cases: results.iter().map(case).collect(),
    }
}

fn case(r: &CaseResult) -> Case<'_> {
    let observed = r.observed.as_ref();
    let error = r.error.as_deref().map(|message| Failure {
        kind: "error",
        message,
        details: None,
    });
    let failures = error
        .into_iter()
        .chain(r.failures.iter().map(|f| Failure {
            kind: f.kind,
            message: &f.message,
            details: f.details.as_deref(),
        }))
        .collect();
    Case {
        name: &r.name,
        run_id: r.run_id.as_deref(),
        replay_of: r.replay_of.as_deref(),
        status: observed.map(|o| o.status.as_str()),
        qa_score: observed.and_then(|o| o.qa_score),
        tokens: observed.map(|o| o.tokens),
        duration_ms: observed.map(|o| o.duration_ms),
        elapsed_ms: millis(r.elapsed),
        passed: r.passed(),
        failures,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
