//! The Offline model: a built-in, deterministic stand-in for an LLM that needs no network.
//!
//! It reads the JSON context the agents send (the first user message that parses as a JSON
//! object) and answers as each role would: a plan patch, a strategy brief, a draft that it
//! streams, or a QA verdict computed from real checks on the draft. A first draft has no call to
//! action and no concrete detail, so its QA fails and the replan path runs; the revision
//! addresses each issue QA named, so the second QA passes.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::{self, BoxStream};
use orchestrator_core::engine::QA_CAPABILITY;
use orchestrator_core::ports::{
    Model, ModelError, ModelInfo, ModelRequest, ModelResponse, Purpose, StreamItem,
};
use orchestrator_core::types::{GENERATION_CAPABILITY, STRATEGY_CAPABILITY, Usage};
use serde_json::{Map, Value, json};

/// Characters per streamed chunk, like a tokenizer's pieces.
const CHUNK_CHARS: usize = 4;

#[derive(Debug, Clone, Default)]
pub struct OfflineModel {
    /// Pause between streamed chunks, so a person can watch a draft arrive.
    pub chunk_delay: Duration,
}

impl OfflineModel {
    pub fn new(chunk_delay: Duration) -> Self {
        Self { chunk_delay }
    }

    /// The reply for a request; the whole behaviour of the model.
    pub fn reply(&self, request: &ModelRequest) -> String {
        let ctx = context(request);
        match request.purpose {
            Purpose::Plan => plan(&ctx).to_string(),
            Purpose::Strategy => strategy(&ctx).to_string(),
            Purpose::Generate => draft(&ctx),
            Purpose::Review => review(&ctx).to_string(),
            Purpose::Chat => chat(&ctx),
        }
    }
}

fn usage_of(request: &ModelRequest, reply: &str) -> Usage {
    let input_chars = request.system.len()
        + request
            .messages
            .iter()
            .map(|m| m.content.len())
            .sum::<usize>();
    Usage {
        input_tokens: input_chars.div_ceil(4) as u64,
        output_tokens: reply.len().div_ceil(4) as u64,
    }
}

#[async_trait]
impl Model for OfflineModel {
    fn info(&self) -> ModelInfo {
        ModelInfo {
            provider: "offline".into(),
            model: "offline-deterministic-v1".into(),
        }
    }

    async fn complete(&self, request: ModelRequest) -> Result<ModelResponse, ModelError> {
        let text = self.reply(&request);
        let usage = usage_of(&request, &text);
        Ok(ModelResponse {
            text,
            usage,
            tool_calls: Vec::new(),
            retries: Vec::new(),
        })
    }

    fn stream(&self, request: ModelRequest) -> BoxStream<'_, Result<StreamItem, ModelError>> {
        let text = self.reply(&request);
        let usage = usage_of(&request, &text);
        let chars: Vec<char> = text.chars().collect();
        let chunks: Vec<String> = chars
            .chunks(CHUNK_CHARS)
            .map(|c| c.iter().collect())
            .collect();
        let delay = self.chunk_delay;
        stream::iter(chunks)
            .then(move |chunk| async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Ok(StreamItem::Text(chunk))
            })
            .chain(stream::once(async move { Ok(StreamItem::Usage(usage)) }))
            .boxed()
    }
}

fn context(request: &ModelRequest) -> Map<String, Value> {
    request
        .messages
        .iter()
        .find_map(|m| match serde_json::from_str::<Value>(&m.content) {
            Ok(Value::Object(map)) => Some(map),
            _ => None,
        })
        .unwrap_or_default()
}

fn text<'a>(ctx: &'a Map<String, Value>, key: &str) -> &'a str {
    ctx.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// What the objective is about: the words after "for", "about" or "on", else the objective.
pub fn topic_of(objective: &str) -> String {
    let lower = objective.to_lowercase();
    let start = [" for ", " about ", " on ", " announcing ", " introducing "]
        .iter()
        .filter_map(|k| lower.find(k).map(|i| i + k.len()))
        .min();
    let raw = match start {
        Some(i) => &objective[i..],
        None => objective,
    };
    // A topic ends at the first clause break: "Acme Sync, our file sync app" is about Acme Sync.
    let raw = raw.split([',', ';', '(']).next().unwrap_or(raw);
    let raw = raw.split(" - ").next().unwrap_or(raw);
    let topic: String = raw
        .trim()
        .trim_end_matches(['.', '!', '?', ',', ';', ':'])
        .chars()
        .take(80)
        .collect();
    if topic.is_empty() {
        "the product".into()
    } else {
        topic
    }
}

fn platform_of(ctx: &Map<String, Value>) -> String {
    let given = text(ctx, "platform");
    if !given.is_empty() {
        return given.to_owned();
    }
    let objective = text(ctx, "objective").to_lowercase();
    for (needle, platform) in [
        ("linkedin", "linkedin"),
        ("tweet", "x"),
        ("twitter", "x"),
        ("email", "email"),
        ("newsletter", "email"),
        ("instagram", "instagram"),
    ] {
        if objective.contains(needle) {
            return platform.into();
        }
    }
    "blog".into()
}

// ---------------------------------------------------------------- planner

fn next_ids(plan: &Value, n: usize) -> Vec<String> {
    let max = plan
        .get("steps")
        .and_then(Value::as_array)
        .map(|steps| {
            steps
                .iter()
                .filter_map(|s| {
                    s.get("id")?
                        .as_str()?
                        .strip_prefix('s')?
                        .parse::<usize>()
                        .ok()
                })
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    (1..=n).map(|i| format!("s{}", max + i)).collect()
}

fn plan(ctx: &Map<String, Value>) -> Value {
    let approval = ctx
        .get("requireApproval")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let current = ctx.get("plan").cloned().unwrap_or(Value::Null);
    match ctx.get("replanReason").filter(|r| !r.is_null()) {
        None => first_plan(&current, approval),
        Some(reason) => replan(&current, reason, approval),
    }
}

/// Strategy first, then a draft, a review (and an approval when asked for) and the final result.
fn first_plan(current: &Value, approval: bool) -> Value {
    let ids = next_ids(current, if approval { 5 } else { 4 });
    let mut steps = vec![
        json!({"id": ids[0], "capabilityId": STRATEGY_CAPABILITY, "label": "Define the audience, angle and key messages"}),
        json!({"id": ids[1], "capabilityId": GENERATION_CAPABILITY, "label": "Write the draft", "dependsOn": [ids[0]]}),
        json!({"id": ids[2], "capabilityId": QA_CAPABILITY, "label": "Review the draft against the acceptance criteria", "dependsOn": [ids[1]]}),
    ];
    let mut last = ids[2].clone();
    if approval {
        steps.push(json!({"id": ids[3], "action": "approval", "label": "Approve the reviewed draft before it is finalized?", "dependsOn": [last]}));
        last = ids[3].clone();
    }
    let id = ids.last().cloned().unwrap_or_default();
    steps.push(json!({"id": id, "action": "finalize", "label": "Assemble the final result", "dependsOn": [last]}));
    json!({"stepsAdd": steps, "note": "Strategy first, then a draft, a review and the final result."})
}

/// Drops whatever has not run (and what failed), then adds the work the reason calls for.
fn replan(current: &Value, reason: &Value, approval: bool) -> Value {
    let pending: Vec<Value> = current
        .get("steps")
        .and_then(Value::as_array)
        .map(|steps| {
            steps
                .iter()
                .filter(|s| {
                    matches!(
                        s.get("status").and_then(Value::as_str),
                        Some("pending" | "failed")
                    )
                })
                .filter_map(|s| s.get("id").cloned())
                .collect()
        })
        .unwrap_or_default();
    let done = |cap: &str| -> Option<String> {
        current
            .get("steps")?
            .as_array()?
            .iter()
            .rev()
            .find_map(|s| {
                (s.get("capabilityId")?.as_str()? == cap && s.get("status")?.as_str()? == "done")
                    .then(|| s.get("id")?.as_str().map(str::to_owned))?
            })
    };
    let kind = reason
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let ids = next_ids(current, if approval { 4 } else { 3 });
    let issues = strings(reason.get("issues"));
    let mut steps = Vec::new();
    let after = done(QA_CAPABILITY).or_else(|| done(STRATEGY_CAPABILITY));
    let deps = |d: &Option<String>| d.iter().cloned().collect::<Vec<_>>();
    let (label, note) = match kind {
        "quality_below_threshold" => (
            "Revise the draft to address the QA feedback".to_owned(),
            format!("Revise: {}", issues.join("; ")),
        ),
        _ => (
            "Write the draft again".to_owned(),
            format!(
                "Retry after: {}",
                reason
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("a failure")
            ),
        ),
    };
    steps.push(json!({"id": ids[0], "capabilityId": GENERATION_CAPABILITY, "label": label, "dependsOn": deps(&after), "note": note}));
    steps.push(json!({"id": ids[1], "capabilityId": QA_CAPABILITY, "label": "Review the revision", "dependsOn": [ids[0]]}));
    let mut last = ids[1].clone();
    if approval {
        steps.push(json!({"id": ids[2], "action": "approval", "label": "Approve the revised draft before it is finalized?", "dependsOn": [last]}));
        last = ids[2].clone();
    }
    let id = ids.last().cloned().unwrap_or_default();
    steps.push(json!({"id": id, "action": "finalize", "label": "Assemble the final result", "dependsOn": [last]}));
    json!({"stepsRemove": pending, "stepsAdd": steps, "note": note})
}

// ---------------------------------------------------------------- strategy

fn strategy(ctx: &Map<String, Value>) -> Value {
    let objective = text(ctx, "objective");
    let topic = topic_of(objective);
    let platform = platform_of(ctx);
    let lower = objective.to_lowercase();
    let audience = if lower.contains("developer") || lower.contains("engineer") {
        "software developers who want less toil"
    } else if lower.contains("team") || lower.contains("business") || lower.contains("compan") {
        "teams deciding what to adopt next"
    } else {
        "early adopters curious about what is new"
    };
    json!({
        "audience": audience,
        "angle": format!("{topic} removes a daily annoyance, and it takes minutes to try"),
        "keyMessages": [
            format!("{topic} is available today"),
            "It saves time on work people already do".to_owned(),
            "Getting started takes a few minutes".to_owned(),
        ],
        "tone": "clear, warm and specific",
        "callToAction": format!("Try {topic} today and tell us what you think"),
        "platform": platform,
    })
}

// ---------------------------------------------------------------- writer

fn draft(ctx: &Map<String, Value>) -> String {
    let objective = text(ctx, "objective");
    let topic = topic_of(objective);
    let strategy = ctx.get("strategy").cloned().unwrap_or(Value::Null);
    let messages = strings(strategy.get("keyMessages"));
    let angle = strategy
        .get("angle")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{topic} makes everyday work simpler"));
    let audience = strategy
        .get("audience")
        .and_then(Value::as_str)
        .unwrap_or("our readers");
    let feedback = strings(ctx.get("feedback")).join(" ").to_lowercase();

    let mut out = format!("Introducing {topic}\n\n");
    out.push_str(&format!(
        "We built {topic} for {audience}. The idea is simple: {angle}.\n\n"
    ));
    for m in messages.iter().take(3) {
        out.push_str(&format!("- {m}.\n"));
    }
    if feedback.contains("concrete") || feedback.contains("example") || feedback.contains("detail")
    {
        out.push_str(&format!(
            "\nFor example, a team of 5 that spends 30 minutes a day on this work gets back more than 10 hours a month with {topic}.\n"
        ));
    }
    if feedback.contains("call to action") {
        let cta = strategy
            .get("callToAction")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("Try {topic} today"));
        out.push_str(&format!("\n{cta}: get started in minutes.\n"));
    }
    out
}

fn chat(ctx: &Map<String, Value>) -> String {
    let objective = text(ctx, "objective");
    let topic = topic_of(objective);
    let answer = match text(ctx, "agent") {
        "strategy" => format!(
            "A strategy for {topic}: speak to the people who feel the problem most, lead with the \
             one outcome they want, and test that angle on one channel before widening it."
        ),
        "qa" => format!(
            "A review of {topic}: the goal is clear, but it names no audience and no measure of \
             success. Fix those two first; then check every claim can be backed up."
        ),
        _ => format!(
            "Here is a short answer about {topic}. Start from the outcome you want, name the one \
             constraint that matters most, and take the smallest step that tests it. If you share \
             more detail about {topic}, I can make this more specific."
        ),
    };
    format!(
        "{answer} (This answer comes from the built-in offline model: configure MODEL_PROVIDER \
         for a real one.)"
    )
}

// ---------------------------------------------------------------- QA

const CTA_WORDS: &[&str] = &[
    "try ",
    "sign up",
    "get started",
    "join",
    "book a",
    "download",
    "learn more",
    "subscribe",
    "contact us",
    "register",
];

fn has_cta(draft: &str) -> bool {
    let d = draft.to_lowercase();
    CTA_WORDS.iter().any(|w| d.contains(w))
}

fn has_concrete_detail(draft: &str) -> bool {
    draft.chars().any(|c| c.is_ascii_digit()) || draft.to_lowercase().contains("for example")
}

fn words(s: &str) -> Vec<String> {
    s.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() > 3)
        .map(str::to_owned)
        .collect()
}

/// One acceptance criterion checked against the draft, as plainly as text allows.
fn check_criterion(criterion: &str, draft: &str) -> (bool, String) {
    let c = criterion.to_lowercase();
    if c.contains("call to action") || c.contains("cta") {
        let ok = has_cta(draft);
        return (
            ok,
            if ok {
                "has a call to action".into()
            } else {
                "no call to action found".into()
            },
        );
    }
    let n_words = draft.split_whitespace().count();
    if let Some(limit) = c
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .find_map(|w| {
            (w[1].starts_with("word"))
                .then(|| w[0].parse::<usize>().ok())
                .flatten()
        })
    {
        let under = c.contains("under")
            || c.contains("at most")
            || c.contains("max")
            || c.contains("fewer");
        let ok = if under {
            n_words <= limit
        } else {
            n_words >= limit
        };
        return (ok, format!("{n_words} words (limit {limit})"));
    }
    let wanted = words(criterion);
    let have = words(draft);
    let hits = wanted.iter().filter(|w| have.contains(w)).count();
    let ok = wanted.is_empty() || hits * 2 >= wanted.len();
    (ok, format!("{hits} of {} key words present", wanted.len()))
}

fn review(ctx: &Map<String, Value>) -> Value {
    let draft = text(ctx, "draft");
    let objective = text(ctx, "objective");
    let threshold = ctx.get("threshold").and_then(Value::as_f64).unwrap_or(0.78);
    let topic = topic_of(objective);
    let mut issues = Vec::new();
    let mut score = 0.0;
    let topic_words = words(&topic);
    let draft_words = words(draft);
    if topic_words.iter().any(|w| draft_words.contains(w)) || topic_words.is_empty() {
        score += 0.3;
    } else {
        issues.push(format!("The draft does not mention {topic}"));
    }
    if has_cta(draft) {
        score += 0.25;
    } else {
        issues.push("No clear call to action: tell the reader what to do next".to_owned());
    }
    if has_concrete_detail(draft) {
        score += 0.25;
    } else {
        issues
            .push("No concrete detail: add a number, an example or a specific benefit".to_owned());
    }
    let n = draft.chars().count();
    if (120..=3000).contains(&n) {
        score += 0.1;
    } else {
        issues.push(format!("Length is {n} characters; aim for 120 to 3000"));
    }
    let longest = draft
        .split(['.', '!', '?', '\n'])
        .map(|s| s.split_whitespace().count())
        .max()
        .unwrap_or(0);
    if longest <= 30 {
        score += 0.1;
    } else {
        issues.push(format!(
            "The longest sentence has {longest} words; split it"
        ));
    }
    let criteria: Vec<Value> = strings(ctx.get("acceptanceCriteria"))
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let (passed, details) = check_criterion(c, draft);
            if !passed {
                issues.push(format!("Criterion not met: {c} ({details})"));
            }
            json!({"id": format!("ac{}", i + 1), "passed": passed, "details": format!("{c}: {details}")})
        })
        .collect();
    let failed_criteria = criteria.iter().filter(|c| c["passed"] == false).count();
    let score: f64 = ((score - 0.1 * failed_criteria as f64).max(0.0) * 100.0).round() / 100.0;
    json!({
        "score": score,
        "pass": score >= threshold,
        "issues": issues,
        "criteria": criteria,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestrator_core::ports::ChatMessage;

    fn request(purpose: Purpose, ctx: Value) -> ModelRequest {
        ModelRequest {
            purpose,
            system: String::new(),
            messages: vec![ChatMessage::user(ctx.to_string())],
            temperature: None,
            max_tokens: None,
            json: true,
            schema: None,
            tools: Vec::new(),
            tool_choice: Default::default(),
        }
    }

    #[test]
    fn first_draft_fails_review_and_the_revision_passes() {
        // GIVEN an objective and the strategy the offline model itself proposes
        let m = OfflineModel::default();
        let objective = "Write a launch post for Acme Sync, our file sync app";
        let strat: Value = serde_json::from_str(
            &m.reply(&request(Purpose::Strategy, json!({"objective": objective}))),
        )
        .unwrap();
        // WHEN it writes a first draft and reviews it
        let first = m.reply(&request(
            Purpose::Generate,
            json!({"objective": objective, "strategy": strat}),
        ));
        let v1: Value = serde_json::from_str(&m.reply(&request(
            Purpose::Review,
            json!({"objective": objective, "draft": first}),
        )))
        .unwrap();
        // THEN QA fails it, naming what is missing
        assert!(v1["score"].as_f64().unwrap() < 0.78, "{v1}");
        let issues = v1["issues"].to_string();
        assert!(
            issues.contains("call to action") && issues.contains("concrete"),
            "{issues}"
        );
        // WHEN it revises with that feedback
        let second = m.reply(&request(
            Purpose::Generate,
            json!({"objective": objective, "strategy": strat, "feedback": v1["issues"]}),
        ));
        let v2: Value = serde_json::from_str(&m.reply(&request(
            Purpose::Review,
            json!({"objective": objective, "draft": second}),
        )))
        .unwrap();
        // THEN the revision passes
        assert!(v2["score"].as_f64().unwrap() >= 0.78, "{v2}");
        assert_eq!(v2["pass"], true);
    }

    #[test]
    fn acceptance_criteria_are_checked_against_the_text() {
        let draft = "Try Acme today. It has 3 features.";
        assert!(check_criterion("Include a call to action", draft).0);
        assert!(check_criterion("Under 50 words", draft).0);
        assert!(!check_criterion("At most 3 words", draft).0);
        assert!(!check_criterion("Mention pricing and discounts", draft).0);
    }

    #[test]
    fn topic_is_what_follows_for_or_about() {
        assert_eq!(topic_of("Write a launch post for Acme Sync."), "Acme Sync");
        assert_eq!(topic_of("A note about rust lambdas"), "rust lambdas");
        assert_eq!(topic_of("Haiku"), "Haiku");
    }
}
