//! An eval suite: its YAML file read and checked whole before any case runs. Every error names
//! the file, the case (by name, and its place in `cases`) and the field.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use orchestrator_core::types::{Mode, RunOptions, RunRequest, RunStatus, ValidationError};
use regex::Regex;
use serde::Deserialize;

/// Cases run at once when neither the suite nor `--concurrency` says.
pub const DEFAULT_CONCURRENCY: usize = 4;
/// The most cases a suite may run at once.
pub const MAX_CONCURRENCY: usize = 64;

/// A suite that cannot be used; nothing was run.
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    #[error("cannot read the eval suite {path}: {error}")]
    Read { path: String, error: std::io::Error },
    /// The YAML itself, or a field of the wrong shape, an unknown or a missing one.
    #[error("the eval suite {path} is not valid: {place}{field}: {message}")]
    Invalid {
        path: String,
        /// `case "name" (cases[i]): `, or empty for a field of the suite itself.
        place: String,
        field: String,
        message: String,
    },
}

/// The suite as written in YAML (camelCase, unknown fields refused).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SuiteFile {
    name: String,
    #[serde(default)]
    concurrency: Option<usize>,
    cases: Vec<CaseFile>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CaseFile {
    name: String,
    objective: String,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    options: RunOptions,
    #[serde(default)]
    replay: Option<String>,
    #[serde(default)]
    expect: ExpectFile,
}

fn completed() -> RunStatus {
    RunStatus::Completed
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ExpectFile {
    #[serde(default = "completed")]
    status: RunStatus,
    #[serde(default)]
    min_qa_score: Option<f64>,
    #[serde(default)]
    criteria_passed: Option<bool>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_duration_ms: Option<u64>,
    #[serde(default)]
    must_match: Vec<String>,
    #[serde(default)]
    must_not_match: Vec<String>,
}

impl Default for ExpectFile {
    fn default() -> Self {
        Self {
            status: completed(),
            min_qa_score: None,
            criteria_passed: None,
            max_tokens: None,
            max_duration_ms: None,
            must_match: Vec::new(),
            must_not_match: Vec::new(),
        }
    }
}

/// A checked suite, ready to run.
#[derive(Debug)]
pub struct Suite {
    pub name: String,
    pub path: PathBuf,
    /// From the file; `--concurrency` overrides it.
    pub concurrency: Option<usize>,
    pub cases: Vec<Case>,
}

/// One case: the run it makes and what its report must show.
#[derive(Debug)]
pub struct Case {
    pub name: String,
    pub request: RunRequest,
    /// The recorded run `--replay` replays for this case, when the suite names one.
    pub replay: Option<String>,
    pub expect: Expect,
}

/// What a case's run must show; `None` and empty lists are not checked.
#[derive(Debug)]
pub struct Expect {
    pub status: RunStatus,
    pub min_qa_score: Option<f64>,
    pub criteria_passed: Option<bool>,
    pub max_tokens: Option<u64>,
    pub max_duration_ms: Option<u64>,
    pub must_match: Vec<Regex>,
    pub must_not_match: Vec<Regex>,
}

impl Suite {
    /// Reads and checks the suite at `path`: its YAML, every field, every case's request and
    /// every pattern.
    pub fn load(path: &Path) -> Result<Suite, SuiteError> {
        let text = std::fs::read_to_string(path).map_err(|error| SuiteError::Read {
            path: path.display().to_string(),
            error,
        })?;
        Suite::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Suite, SuiteError> {
        let shown = path.display().to_string();
        let file: SuiteFile =
            serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text))
                .map_err(|e| parse_error(&shown, text, &e))?;
        let invalid = |place: String, field: &str, message: String| SuiteError::Invalid {
            path: shown.clone(),
            place,
            field: field.to_owned(),
            message,
        };
        if file.name.trim().is_empty() {
            return Err(invalid(String::new(), "name", "must not be empty".into()));
        }
        if let Some(n) = file.concurrency
            && !(1..=MAX_CONCURRENCY).contains(&n)
        {
            let message = format!("must be between 1 and {MAX_CONCURRENCY}");
            return Err(invalid(String::new(), "concurrency", message));
        }
        if file.cases.is_empty() {
            let message = "must list at least one case".to_owned();
            return Err(invalid(String::new(), "cases", message));
        }
        let mut names = HashSet::new();
        let mut cases = Vec::with_capacity(file.cases.len());
        for (i, case) in file.cases.into_iter().enumerate() {
            let place = case_place(Some(&case.name), i);
            if case.name.trim().is_empty() {
                return Err(invalid(place, "name", "must not be empty".into()));
            }
            if !names.insert(case.name.clone()) {
                let message = "another case of the suite has this name; names must be unique";
                return Err(invalid(place, "name", message.into()));
            }
            cases.push(
                case.check()
                    .map_err(|e| invalid(place, &e.field, e.message))?,
            );
        }
        Ok(Suite {
            name: file.name,
            path: path.to_owned(),
            concurrency: file.concurrency,
            cases,
        })
    }
}

impl CaseFile {
    /// The case's request, validated as `orchestrator run` validates one, and its patterns.
    fn check(self) -> Result<Case, ValidationError> {
        let mut request = RunRequest::new(self.objective);
        request.mode = self.mode;
        request.options = self.options;
        request.validate()?;
        if let Some(id) = &self.replay
            && id.trim().is_empty()
        {
            return Err(ValidationError::new("replay", "must not be empty"));
        }
        let e = self.expect;
        if let Some(score) = e.min_qa_score
            && !(0.0..=1.0).contains(&score)
        {
            return Err(ValidationError::new(
                "expect.minQaScore",
                "must be between 0 and 1",
            ));
        }
        Ok(Case {
            name: self.name,
            request,
            replay: self.replay,
            expect: Expect {
                status: e.status,
                min_qa_score: e.min_qa_score,
                criteria_passed: e.criteria_passed,
                max_tokens: e.max_tokens,
                max_duration_ms: e.max_duration_ms,
                must_match: patterns("expect.mustMatch", &e.must_match)?,
                must_not_match: patterns("expect.mustNotMatch", &e.must_not_match)?,
            },
        })
    }
}

/// The most a compiled pattern may take; a pattern past it is refused, not run slowly.
const PATTERN_SIZE_LIMIT: usize = 1 << 20;

fn patterns(field: &str, sources: &[String]) -> Result<Vec<Regex>, ValidationError> {
    sources
        .iter()
        .enumerate()
        .map(|(i, source)| {
            regex::RegexBuilder::new(source)
                .size_limit(PATTERN_SIZE_LIMIT)
                .build()
                .map_err(|e| {
                    let message = format!("{source:?} is not a valid regex: {e}");
                    ValidationError::new(format!("{field}[{i}]"), message)
                })
        })
        .collect()
}

/// Where in the suite a case is: by name when it has one, and by its place in `cases`.
fn case_place(name: Option<&str>, index: usize) -> String {
    match name.filter(|n| !n.trim().is_empty()) {
        Some(name) => format!("case {name:?} (cases[{index}]): "),
        None => format!("cases[{index}]: "),
    }
}

/// A YAML or shape error, placed: the case by its name when the YAML reads far enough to
/// give it, and the field relative to the case.
fn parse_error(
    path: &str,
    text: &str,
    e: &serde_path_to_error::Error<serde_yaml::Error>,
) -> SuiteError {
    let at = ValidationError::at_path(&e.path().to_string(), e.inner().to_string());
    let (place, field) = match split_case(&at.field) {
        Some((index, rest)) => (case_place(case_name(text, index).as_deref(), index), rest),
        None => (String::new(), at.field.clone()),
    };
    // serde_yaml starts its message with the part of the path it knows; the field says it.
    let full = e.path().to_string();
    let message = match at.message.split_once(": ") {
        Some((known, rest)) if full.starts_with(known) => rest.to_owned(),
        _ => at.message.clone(),
    };
    SuiteError::Invalid {
        path: path.to_owned(),
        place,
        field: if field.is_empty() || field == "." {
            "(the document)".to_owned()
        } else {
            field
        },
        message,
    }
}

/// `cases[3].expect.minQaScore` as (3, `expect.minQaScore`).
fn split_case(field: &str) -> Option<(usize, String)> {
    let rest = field.strip_prefix("cases[")?;
    let (index, rest) = rest.split_once(']')?;
    let index = index.parse().ok()?;
    let rest = rest.strip_prefix('.').unwrap_or(rest);
    Some((index, if rest.is_empty() { "." } else { rest }.to_owned()))
}

/// The name of case `index`, read loosely from YAML that did not parse as a suite.
fn case_name(text: &str, index: usize) -> Option<String> {
    let doc: serde_yaml::Value = serde_yaml::from_str(text).ok()?;
    doc.get("cases")?
        .get(index)?
        .get("name")?
        .as_str()
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Suite, SuiteError> {
        Suite::parse(Path::new("suite.yaml"), text)
    }

    const GOOD: &str = r#"
name: s
cases:
  - name: one
    objective: "Write a launch post"
    options:
      acceptanceCriteria: ["Mentions it"]
    expect:
      minQaScore: 0.8
      mustMatch: ["(?i)launch"]
  - name: two
    objective: "Answer"
    mode: chat
"#;

    #[test]
    fn a_good_suite_reads_with_its_defaults() {
        let suite = parse(GOOD).unwrap();
        assert_eq!(suite.name, "s");
        assert_eq!(suite.concurrency, None);
        assert_eq!(suite.cases.len(), 2);
        let one = &suite.cases[0];
        assert_eq!(one.request.options.acceptance_criteria, ["Mentions it"]);
        assert_eq!(one.request.options.quality_threshold, 0.78);
        assert_eq!(one.expect.status, RunStatus::Completed);
        assert!(one.expect.must_match[0].is_match("LAUNCH"));
        assert_eq!(suite.cases[1].request.mode, Mode::Chat);
    }

    #[test]
    fn an_unknown_field_names_the_file_the_case_and_the_field() {
        let text = GOOD.replace("minQaScore", "minQaScor");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("suite.yaml"), "{e}");
        assert!(e.contains("case \"one\" (cases[0])"), "{e}");
        assert!(e.contains("expect.minQaScor: unknown field"), "{e}");
    }

    #[test]
    fn a_bad_option_a_bad_regex_and_a_duplicate_name_name_their_case() {
        let e = parse(&GOOD.replace("0.8", "1.5")).unwrap_err().to_string();
        assert!(
            e.contains("case \"one\"") && e.contains("expect.minQaScore"),
            "{e}"
        );
        let e = parse(&GOOD.replace("(?i)launch", "(unclosed"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("expect.mustMatch[0]") && e.contains("case \"one\""),
            "{e}"
        );
        let e = parse(&GOOD.replace("name: two", "name: one"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cases[1]") && e.contains("unique"), "{e}");
        let e = parse(&GOOD.replace("Answer", "")).unwrap_err().to_string();
        assert!(e.contains("case \"two\"") && e.contains("objective"), "{e}");
        let text = GOOD.replace("acceptanceCriteria", "qualityThreshold: 7\n      criteria");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("options.criteria"), "{e}");
    }

    #[test]
    fn a_missing_field_and_a_wrong_type_are_named() {
        let e = parse("name: s\ncases:\n  - name: x\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("case \"x\" (cases[0]): objective"), "{e}");
        let e = parse("name: s\nconcurrency: many\ncases: []\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("concurrency"), "{e}");
        let e = parse("name: s\ncases: []\n").unwrap_err().to_string();
        assert!(e.contains("cases: must list"), "{e}");
    }
}
