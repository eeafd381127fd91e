//! What models actually write, made usable: the JSON in a reply (after reasoning, inside prose
//! or fences, with trailing commas or single quotes, keys in any casing), refusals and cut-off
//! replies named as such, and the schemas of the structured replies (generated from the types
//! below, given to providers that enforce them).

use std::sync::OnceLock;

use orchestrator_core::ports::ReplySchema;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Why a reply cannot be used; the text goes back to the model in a repair request and to the
/// stream in a warning.
pub type Unusable = String;

/// A strategy as the prompt asks for it (the schema's source; replies are read leniently).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct StrategyReply {
    pub audience: String,
    pub angle: String,
    pub key_messages: Vec<String>,
    pub tone: Option<String>,
    pub call_to_action: Option<String>,
    pub platform: Option<String>,
}

/// A QA verdict as the prompt asks for it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct VerdictReply {
    /// 0.0 to 1.0.
    pub score: f64,
    pub pass: bool,
    pub issues: Vec<String>,
    pub criteria: Vec<CriterionReply>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct CriterionReply {
    /// ac1, ac2, ... in the order of the acceptance criteria.
    pub id: String,
    pub passed: bool,
    pub details: Option<String>,
}

/// A plan patch as the prompt asks for it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct PatchReply {
    pub steps_add: Vec<NewStepReply>,
    pub steps_update: Vec<StepUpdateReply>,
    pub steps_remove: Vec<String>,
    pub note: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct NewStepReply {
    pub id: Option<String>,
    /// strategy, generation or qa; none for the finalize step.
    pub capability_id: Option<String>,
    /// "finalize" for the last step, else none.
    pub action: Option<String>,
    pub label: String,
    pub depends_on: Vec<String>,
    pub acceptance_criteria: Vec<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct StepUpdateReply {
    pub id: String,
    /// pending, skipped, ...
    pub status: Option<String>,
    pub note: Option<String>,
}

fn schema_of<T: JsonSchema>(name: &str) -> ReplySchema {
    ReplySchema {
        name: name.to_owned(),
        schema: serde_json::to_value(schemars::schema_for!(T)).unwrap_or(Value::Null),
    }
}

pub fn plan_schema() -> &'static ReplySchema {
    static SCHEMA: OnceLock<ReplySchema> = OnceLock::new();
    SCHEMA.get_or_init(|| schema_of::<PatchReply>("plan_patch"))
}

pub fn strategy_schema() -> &'static ReplySchema {
    static SCHEMA: OnceLock<ReplySchema> = OnceLock::new();
    SCHEMA.get_or_init(|| schema_of::<StrategyReply>("strategy"))
}

pub fn verdict_schema() -> &'static ReplySchema {
    static SCHEMA: OnceLock<ReplySchema> = OnceLock::new();
    SCHEMA.get_or_init(|| schema_of::<VerdictReply>("qa_verdict"))
}

/// The answer after the reasoning some models write first (`<think>...</think>`), or why
/// there is none: an empty reply, or one cut off while the model was still reasoning.
pub fn answer(reply: &str) -> Result<&str, Unusable> {
    let mut rest = reply.trim_start();
    while let Some(after) = rest.strip_prefix("<think>") {
        match after.find("</think>") {
            Some(end) => rest = after[end + "</think>".len()..].trim_start(),
            None => {
                return Err("the reply was cut off while the model was still reasoning (its <think> never closed), so it holds no answer; answer more briefly".into());
            }
        }
    }
    let rest = rest.trim_end();
    if rest.is_empty() {
        Err("the reply is empty".into())
    } else {
        Ok(rest)
    }
}

/// A reply that only says no: short, with no JSON, in the words refusals use.
pub fn refusal(text: &str) -> Option<&str> {
    const OPENINGS: &[&str] = &[
        "i can't",
        "i cannot",
        "i can not",
        "i won't",
        "i will not",
        "i'm sorry",
        "i am sorry",
        "sorry,",
        "i'm unable",
        "i am unable",
        "i'm not able",
        "i am not able",
        "as an ai",
    ];
    let t = text.trim();
    // Models often write the typographic apostrophe: "I’m sorry".
    let lower = t.to_lowercase().replace('\u{2019}', "'");
    let short = t.chars().count() <= 300 && !t.contains('{');
    (short && OPENINGS.iter().any(|o| lower.starts_with(o))).then_some(t)
}

/// The JSON object or array in a reply, however it is wrapped, with its keys folded to
/// lowerCamelCase. The errors name what was wrong in words a model (and a person) can act on.
pub fn read_json(reply: &str) -> Result<Value, Unusable> {
    let text = answer(reply)?;
    if let Some(no) = refusal(text) {
        return Err(format!("the model refused: {no:?}"));
    }
    let candidate = json_span(text).ok_or("the reply contains no JSON object")?;
    let value = serde_json::from_str(candidate)
        .or_else(|_| serde_json::from_str(&relaxed(candidate)))
        .map_err(|e| {
            if unbalanced(candidate) {
                "the JSON is cut off before its end (the reply hit its length limit); reply with shorter JSON".to_owned()
            } else {
                format!("the reply is not valid JSON: {e}")
            }
        })?;
    Ok(fold_keys(value))
}

/// The part of `text` that should be JSON: a fenced block, or the span from the first `{` or
/// `[` to the last `}` or `]` (or to the end, when it was cut off).
fn json_span(text: &str) -> Option<&str> {
    let inner = match text.split("```").nth(1) {
        Some(block) => {
            let block = block.trim_start();
            let block = block
                .strip_prefix("json")
                .or_else(|| block.strip_prefix("JSON"))
                .unwrap_or(block);
            block.trim()
        }
        None => text,
    };
    let start = inner.find(['{', '['])?;
    let end = inner.rfind(['}', ']']).filter(|e| *e > start);
    Some(match end {
        Some(end) if !unbalanced(&inner[start..=end]) => &inner[start..=end],
        _ => &inner[start..],
    })
}

/// Brackets left open outside strings: the JSON was cut off.
fn unbalanced(text: &str) -> bool {
    let (mut depth, mut in_str, mut quote, mut escaped) = (0i32, false, '"', false);
    for c in text.chars() {
        if in_str {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                _ if c == quote => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' | '\'' => {
                in_str = true;
                quote = c;
            }
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            _ => {}
        }
    }
    depth > 0 || in_str
}

/// JSON as people and models loosely write it, made strict: single-quoted strings, trailing
/// commas, and Python's True/False/None.
fn relaxed(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' => i = copy_string(&chars, i, &mut out),
            ',' => {
                let next = chars[i + 1..].iter().find(|c| !c.is_whitespace());
                if !matches!(next, Some('}' | ']')) {
                    out.push(',');
                }
                i += 1;
            }
            _ if c.is_ascii_alphabetic() => {
                let word: String = chars[i..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                    .collect();
                i += word.chars().count();
                out.push_str(match word.as_str() {
                    "True" => "true",
                    "False" => "false",
                    "None" => "null",
                    other => other,
                });
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Copies the string starting at `chars[start]` as a double-quoted JSON string; returns the
/// index after it.
fn copy_string(chars: &[char], start: usize, out: &mut String) -> usize {
    let quote = chars[start];
    out.push('"');
    let mut i = start + 1;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' if i + 1 < chars.len() => {
                if chars[i + 1] == '\'' {
                    out.push('\'');
                } else {
                    out.push('\\');
                    out.push(chars[i + 1]);
                }
                i += 2;
                continue;
            }
            _ if c == quote => {
                out.push('"');
                return i + 1;
            }
            '"' => out.push_str("\\\""),
            _ => out.push(c),
        }
        i += 1;
    }
    i
}

/// Object keys in lowerCamelCase, whatever the model wrote (`Score`, `SCORE`, `key_messages`,
/// `Key-Messages`), at every depth.
pub fn fold_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (camel(&k), fold_keys(v)))
                .collect::<Map<String, Value>>(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(fold_keys).collect()),
        other => other,
    }
}

fn camel(key: &str) -> String {
    let words: Vec<&str> = key
        .split(['_', '-', ' '])
        .filter(|w| !w.is_empty())
        .collect();
    let mut out = String::with_capacity(key.len());
    for (i, word) in words.iter().enumerate() {
        let shouting = word.chars().all(|c| !c.is_lowercase());
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            if i == 0 {
                out.extend(first.to_lowercase());
            } else {
                out.extend(first.to_uppercase());
            }
            if shouting {
                out.extend(chars.flat_map(char::to_lowercase));
            } else {
                out.extend(chars);
            }
        }
    }
    out
}

/// The first of `keys` present in `obj`.
pub fn field<'a>(obj: &'a Map<String, Value>, keys: &[&str]) -> Option<&'a Value> {
    keys.iter()
        .find_map(|k| obj.get(*k))
        .filter(|v| !v.is_null())
}

/// Text of a value that should be text: a string, a number, or an object's message.
pub fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.trim().to_owned()).filter(|s| !s.is_empty()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Object(o) => field(
            o,
            &[
                "message",
                "description",
                "issue",
                "text",
                "detail",
                "details",
                "summary",
                "problem",
            ],
        )
        .and_then(text_of)
        .or_else(|| Some(v.to_string())),
        Value::Array(_) | Value::Null => None,
    }
}

/// A yes/no as models write it: true, "yes", "pass", "passed", "met", 1...
pub fn yes_no(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_f64().map(|n| n > 0.0),
        Value::String(s) => match s.trim().to_lowercase().as_str() {
            "true" | "yes" | "y" | "pass" | "passed" | "passes" | "ok" | "met" | "approved"
            | "accept" | "accepted" => Some(true),
            "false" | "no" | "n" | "fail" | "failed" | "fails" | "not met" | "unmet"
            | "rejected" | "reject" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// A score in 0..=1 from the forms models write: 0.8, "0.8", 8 or "8/10", "80%", 80, "4/5".
pub fn score_of(v: &Value) -> Result<f64, Unusable> {
    let bad = || format!("the score {v} is not a number from 0 to 1 (or a fraction like 8/10)");
    let scaled = |n: f64| -> Result<f64, Unusable> {
        let s = if n <= 1.0 {
            n
        } else if n <= 10.0 {
            n / 10.0
        } else if n <= 100.0 {
            n / 100.0
        } else {
            return Err(bad());
        };
        if s.is_finite() && s >= 0.0 {
            Ok(s)
        } else {
            Err(bad())
        }
    };
    match v {
        Value::Number(n) => scaled(n.as_f64().ok_or_else(bad)?),
        Value::String(s) => {
            let s = s.trim();
            if let Some(pct) = s.strip_suffix('%') {
                let n: f64 = pct.trim().parse().map_err(|_| bad())?;
                return if (0.0..=100.0).contains(&n) {
                    Ok(n / 100.0)
                } else {
                    Err(bad())
                };
            }
            if let Some((num, den)) = s.split_once('/') {
                let num: f64 = num.trim().parse().map_err(|_| bad())?;
                let den: f64 = den.trim().parse().map_err(|_| bad())?;
                return if den > 0.0 && (0.0..=den).contains(&num) {
                    Ok(num / den)
                } else {
                    Err(bad())
                };
            }
            scaled(s.parse().map_err(|_| bad())?)
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_fold_to_lower_camel_case() {
        for (raw, folded) in [
            ("score", "score"),
            ("Score", "score"),
            ("SCORE", "score"),
            ("key_messages", "keyMessages"),
            ("Key-Messages", "keyMessages"),
            ("KEY_MESSAGES", "keyMessages"),
            ("stepsAdd", "stepsAdd"),
            ("StepsAdd", "stepsAdd"),
        ] {
            assert_eq!(camel(raw), folded, "{raw}");
        }
    }

    #[test]
    fn scores_in_every_form_read_the_same() {
        for v in [
            json!(0.8),
            json!("0.8"),
            json!(8),
            json!("8/10"),
            json!("80%"),
            json!(80),
            json!("4/5"),
        ] {
            assert!((score_of(&v).unwrap() - 0.8).abs() < 1e-9, "{v}");
        }
        for v in [
            json!(-1),
            json!("high"),
            json!(250),
            json!("11/10"),
            json!(null),
        ] {
            assert!(score_of(&v).is_err(), "{v}");
        }
    }

    #[test]
    fn schemas_are_objects_with_their_fields() {
        let s = &plan_schema().schema;
        assert_eq!(s["type"], "object");
        assert!(s["properties"]["stepsAdd"].is_object(), "{s}");
        assert!(verdict_schema().schema["properties"]["score"].is_object());
        assert!(strategy_schema().schema["properties"]["audience"].is_object());
    }
}
