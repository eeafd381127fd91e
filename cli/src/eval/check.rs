//! What a run's report shows, and the case's expectations checked against it.

use orchestrator_core::types::{
    CriterionResult, QA_CAPABILITY, QualityVerdict, RunReport, RunStatus,
};

use super::suite::Expect;

/// The figures of a run an eval checks, read from its RunReport.
#[derive(Debug, Clone)]
pub struct Observed {
    pub status: RunStatus,
    /// The score of the last QA step that finished (none in chat mode, or before any QA).
    pub qa_score: Option<f64>,
    /// What that QA step reported on each acceptance criterion.
    pub criteria: Option<Vec<CriterionResult>>,
    /// Input and output tokens of the whole run.
    pub tokens: u64,
    pub duration_ms: u64,
    /// The result: the final bundle's content, or in chat mode the answer.
    pub text: Option<String>,
    /// The last step error of the run, `step: error`, to say why a run failed.
    pub last_error: Option<String>,
}

impl Observed {
    pub fn of(report: &RunReport) -> Self {
        let verdict = report
            .steps
            .iter()
            .rev()
            .filter(|s| s.error.is_none() && s.metrics.capability_id == QA_CAPABILITY)
            .find_map(|s| serde_json::from_value::<QualityVerdict>(s.output.clone()).ok());
        let text = report
            .final_bundle
            .as_ref()
            .map(|b| b.result.content.clone())
            .or_else(|| report.message.clone());
        Self {
            status: report.status,
            qa_score: verdict.as_ref().map(|v| v.score),
            criteria: verdict.map(|v| v.criteria),
            tokens: report.summary.tokens.total(),
            duration_ms: report.summary.duration_ms,
            text,
            last_error: report
                .steps
                .iter()
                .rev()
                .find_map(|s| Some(format!("step {}: {}", s.step_id, s.error.as_ref()?))),
        }
    }
}

/// One way a case did not pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// What failed, for JUnit's `type`: an expectation's field (`status`, `minQaScore`...),
    /// `replay` or `run`.
    pub kind: &'static str,
    /// One line.
    pub message: String,
    /// More, over lines (a side-by-side diff), when there is more to say.
    pub details: Option<String>,
}

impl Failure {
    pub fn new(kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: String) -> Self {
        self.details = Some(details);
        self
    }
}

/// Every expectation `got` does not meet, in the order the suite format lists them.
pub fn check(expect: &Expect, got: &Observed) -> Vec<Failure> {
    let mut failures = Vec::new();
    if got.status != expect.status {
        let why = match &got.last_error {
            Some(error) if got.status != RunStatus::Completed => format!(" ({error})"),
            _ => String::new(),
        };
        failures.push(Failure::new(
            "status",
            format!("status is {}, expected {}{why}", got.status, expect.status),
        ));
    }
    if let Some(min) = expect.min_qa_score {
        match got.qa_score {
            Some(score) if score >= min => {}
            Some(score) => failures.push(Failure::new(
                "minQaScore",
                format!("QA score {score:.2} is below {min:.2}"),
            )),
            None => failures.push(Failure::new(
                "minQaScore",
                format!("no QA score to compare with {min:.2}: the run has no finished QA step"),
            )),
        }
    }
    if let Some(wanted) = expect.criteria_passed {
        failures.extend(check_criteria(wanted, got.criteria.as_deref()));
    }
    if let Some(max) = expect.max_tokens
        && got.tokens > max
    {
        failures.push(Failure::new(
            "maxTokens",
            format!("{} tokens, over the {max} allowed", got.tokens),
        ));
    }
    if let Some(max) = expect.max_duration_ms
        && got.duration_ms > max
    {
        failures.push(Failure::new(
            "maxDurationMs",
            format!("took {} ms, over the {max} ms allowed", got.duration_ms),
        ));
    }
    failures.extend(check_text(expect, got.text.as_deref()));
    failures
}

fn check_criteria(wanted: bool, criteria: Option<&[CriterionResult]>) -> Option<Failure> {
    let Some(criteria) = criteria else {
        return Some(Failure::new(
            "criteriaPassed",
            "no QA verdict on the acceptance criteria: the run has no finished QA step",
        ));
    };
    let failed: Vec<&str> = criteria
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.details.as_deref().unwrap_or(&c.id))
        .collect();
    match (wanted, failed.is_empty()) {
        (true, false) => Some(Failure::new(
            "criteriaPassed",
            format!("acceptance criteria not met: {}", failed.join("; ")),
        )),
        (false, true) => Some(Failure::new(
            "criteriaPassed",
            "every acceptance criterion passed, expected at least one to fail",
        )),
        _ => None,
    }
}

fn check_text(expect: &Expect, text: Option<&str>) -> Vec<Failure> {
    let mut failures = Vec::new();
    let Some(text) = text else {
        if !expect.must_match.is_empty() {
            failures.push(Failure::new(
                "mustMatch",
                "the run has no result text to match",
            ));
        }
        return failures;
    };
    for pattern in &expect.must_match {
        if !pattern.is_match(text) {
            failures.push(Failure::new(
                "mustMatch",
                format!("the result does not match {:?}", pattern.as_str()),
            ));
        }
    }
    for pattern in &expect.must_not_match {
        if let Some(found) = pattern.find(text) {
            let excerpt: String = found.as_str().chars().take(60).collect();
            failures.push(Failure::new(
                "mustNotMatch",
                format!(
                    "the result matches {:?} (at {:?})",
                    pattern.as_str(),
                    excerpt
                ),
            ));
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;

    fn expect() -> Expect {
        Expect {
            status: RunStatus::Completed,
            min_qa_score: Some(0.8),
            criteria_passed: Some(true),
            max_tokens: Some(100),
            max_duration_ms: Some(1000),
            must_match: vec![Regex::new("Acme").unwrap()],
            must_not_match: vec![Regex::new("(?i)lorem").unwrap()],
        }
    }

    fn observed() -> Observed {
        Observed {
            status: RunStatus::Completed,
            qa_score: Some(0.9),
            criteria: Some(vec![CriterionResult {
                id: "ac1".into(),
                passed: true,
                details: None,
            }]),
            tokens: 90,
            duration_ms: 500,
            text: Some("Acme Sync is here".into()),
            last_error: None,
        }
    }

    #[test]
    fn a_run_that_meets_every_expectation_has_no_failure() {
        assert_eq!(check(&expect(), &observed()), []);
    }

    #[test]
    fn each_unmet_expectation_is_one_failure_in_order() {
        let got = Observed {
            status: RunStatus::Failed,
            qa_score: Some(0.5),
            criteria: Some(vec![CriterionResult {
                id: "ac1".into(),
                passed: false,
                details: Some("Ends with a call to action: none".into()),
            }]),
            tokens: 101,
            duration_ms: 1001,
            text: Some("Lorem ipsum".into()),
            last_error: Some("step s2: the model is down".into()),
        };
        let failures = check(&expect(), &got);
        assert_eq!(
            failures[0].message,
            "status is failed, expected completed (step s2: the model is down)"
        );
        let kinds: Vec<&str> = failures.iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            [
                "status",
                "minQaScore",
                "criteriaPassed",
                "maxTokens",
                "maxDurationMs",
                "mustMatch",
                "mustNotMatch"
            ]
        );
    }

    #[test]
    fn no_qa_step_and_no_text_fail_what_needs_them() {
        let got = Observed {
            qa_score: None,
            criteria: None,
            text: None,
            ..observed()
        };
        let kinds: Vec<&str> = check(&expect(), &got).iter().map(|f| f.kind).collect();
        assert_eq!(kinds, ["minQaScore", "criteriaPassed", "mustMatch"]);
    }
}
