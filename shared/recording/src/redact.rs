//! The redaction hook: what is stored of a model call passes through a [`Redact`] first, so
//! secrets and personal data never reach the record. A replay redacts the new request the same
//! way before comparing it with the record, so redaction never reads as a changed prompt.

use std::borrow::Cow;
use std::path::Path;

use orchestrator_core::ports::{CallReply, ChatMessage, ModelRequest, RecordedCall};
use regex::Regex;
use serde_json::Value;

/// Rewrites text before it is stored.
pub trait Redact: Send + Sync {
    fn redact<'a>(&self, text: &'a str) -> Cow<'a, str>;
}

/// What replaces a redacted match.
pub const REDACTED: &str = "[REDACTED]";

/// Keys and tokens of the common providers, private keys, bearer tokens and email addresses.
/// Word boundaries are ASCII ones (`(?-u:\b)`): a Unicode boundary makes the regex engine
/// leave its fast DFA on any non-ASCII text, and prompts have plenty.
const BUILT_IN: &[&str] = &[
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
    r"(?-u:\b)sk-[A-Za-z0-9_-]{16,}",
    r"(?-u:\b)(?:AKIA|ASIA)[0-9A-Z]{16}(?-u:\b)",
    r"(?-u:\b)gh[pousr]_[A-Za-z0-9]{30,}",
    r"(?-u:\b)xox[abprs]-[A-Za-z0-9-]{10,}",
    r"(?-u:\b)(?i:bearer)\s+[A-Za-z0-9._~+/-]{12,}=*",
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
];

/// Redaction by regular expressions: the built-in ones, and any a deployment adds, searched
/// for together in one pass over the text.
pub struct Patterns {
    sources: Vec<String>,
    /// None only if the built-in patterns failed to compile, which a test rules out.
    combined: Option<Regex>,
}

#[derive(Debug, thiserror::Error)]
pub enum PatternError {
    #[error("cannot read the redaction patterns file {path}: {error}")]
    Read { path: String, error: String },
    #[error("{path} line {line}: not a regular expression ({error})")]
    Invalid {
        path: String,
        line: usize,
        error: String,
    },
}

impl Patterns {
    /// The built-in patterns only.
    pub fn builtin() -> Self {
        let sources = BUILT_IN.iter().map(|p| (*p).to_owned()).collect();
        Self::from_sources(sources).unwrap_or_else(|_| Self {
            sources: Vec::new(),
            combined: None,
        })
    }

    fn from_sources(sources: Vec<String>) -> Result<Self, regex::Error> {
        let alternation = sources
            .iter()
            .map(|p| format!("(?:{p})"))
            .collect::<Vec<_>>()
            .join("|");
        Ok(Self {
            combined: Some(Regex::new(&alternation)?),
            sources,
        })
    }

    /// The built-in patterns and those of `file`: one regular expression per line; blank
    /// lines and lines starting with `#` are skipped.
    pub fn with_file(file: &Path) -> Result<Self, PatternError> {
        let path = file.display().to_string();
        let text = std::fs::read_to_string(file).map_err(|e| PatternError::Read {
            path: path.clone(),
            error: e.to_string(),
        })?;
        let mut sources = Self::builtin().sources;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            Regex::new(line).map_err(|e| PatternError::Invalid {
                path: path.clone(),
                line: i + 1,
                error: e.to_string(),
            })?;
            sources.push(line.to_owned());
        }
        Self::from_sources(sources).map_err(|e| PatternError::Invalid {
            path,
            line: 0,
            error: e.to_string(),
        })
    }
}

impl Redact for Patterns {
    fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match &self.combined {
            Some(regex) => regex.replace_all(text, REDACTED),
            None => Cow::Borrowed(text),
        }
    }
}

/// Redaction that keeps everything (for tests, and deployments that opt out).
pub struct Nothing;

impl Redact for Nothing {
    fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        Cow::Borrowed(text)
    }
}

/// The request as it is stored.
pub fn request(redact: &dyn Redact, request: &ModelRequest) -> ModelRequest {
    let mut out = request.clone();
    redact_request(redact, &mut out);
    out
}

fn redact_request(redact: &dyn Redact, request: &mut ModelRequest) {
    if let Cow::Owned(system) = redact.redact(&request.system) {
        request.system = system;
    }
    for message in &mut request.messages {
        redact_message(redact, message);
    }
}

/// The call as it is stored. A streamed reply whose text changed keeps no cuts (they would
/// point into the text before redaction).
pub fn call(redact: &dyn Redact, mut call: RecordedCall) -> RecordedCall {
    redact_request(redact, &mut call.request);
    if let CallReply::Answered {
        text,
        tool_calls,
        cuts,
        ..
    } = &mut call.reply
    {
        if let Cow::Owned(redacted) = redact.redact(text) {
            *text = redacted;
            cuts.clear();
        }
        for tool_call in tool_calls {
            redact_value(redact, &mut tool_call.arguments);
        }
    }
    call
}

fn redact_message(redact: &dyn Redact, message: &mut ChatMessage) {
    if let Cow::Owned(content) = redact.redact(&message.content) {
        message.content = content;
    }
    for tool_call in &mut message.tool_calls {
        redact_value(redact, &mut tool_call.arguments);
    }
}

fn redact_value(redact: &dyn Redact, value: &mut Value) {
    match value {
        Value::String(s) => {
            if let Cow::Owned(r) = redact.redact(s) {
                *s = r;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact_value(redact, v)),
        Value::Object(map) => map.values_mut().for_each(|v| redact_value(redact, v)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_addresses_are_replaced_and_the_rest_kept() {
        // GIVEN text with a key, a token and an address among plain words
        let text = "use sk-abcdefghijklmnop1234 with Bearer abc.def-ghi_jkl123 and mail ann@example.com today";

        // WHEN it is redacted with the built-in patterns
        let out = Patterns::builtin().redact(text).into_owned();

        // THEN each is gone and the words around them stay
        assert_eq!(
            out,
            "use [REDACTED] with [REDACTED] and mail [REDACTED] today"
        );
        // AND text with nothing to hide is not copied
        assert!(matches!(
            Patterns::builtin().redact("plain words"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn every_built_in_pattern_compiles_and_redacts() {
        // GIVEN the built-in patterns, each of which must compile on its own
        for p in BUILT_IN {
            assert!(Regex::new(p).is_ok(), "{p}");
        }
        // WHEN text with one secret of each kind is redacted
        let secrets = [
            "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----",
            "sk-proj0123456789abcdefXYZ",
            "AKIAABCDEFGHIJKLMNOP",
            "ghp_0123456789abcdefghijABCDEFGHIJ0123",
            "xoxb-0123456789-abcdef",
            "BEARER abcdefghijklmnop",
            "ann.lee+news@mail.example.co.uk",
        ];
        let text = secrets.join(" — ");
        let out = Patterns::builtin().redact(&text).into_owned();
        // THEN each is gone, the non-ASCII separators kept
        assert_eq!(out, vec![REDACTED; secrets.len()].join(" — "));
    }

    #[test]
    fn a_patterns_file_adds_to_the_built_in_ones_and_a_bad_line_is_named() {
        // GIVEN a file with a comment, a customer-number pattern and a broken one
        let dir = std::env::temp_dir().join(format!("redact-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.txt");
        std::fs::write(&good, "# customer numbers\nCUST-\\d{6}\n").unwrap();
        let bad = dir.join("bad.txt");
        std::fs::write(&bad, "ok\n(unclosed\n").unwrap();

        // WHEN they are loaded
        let patterns = Patterns::with_file(&good).unwrap();
        let error = Patterns::with_file(&bad).err().unwrap();

        // THEN the added pattern redacts, and the broken line is named with its number
        assert_eq!(patterns.redact("id CUST-123456"), "id [REDACTED]");
        assert!(error.to_string().contains("line 2"), "{error}");
    }
}
