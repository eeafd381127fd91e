//! The built-in tools of the reference specialists.

use std::sync::Arc;
use std::time::Duration;

use orchestrator_core::event::HitlKind;
use orchestrator_core::tools::{HITL_TOOL, Urgency};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Tool;
use crate::StepContext;

/// Longest text `text_stats` reads, in characters.
const MAX_TEXT_CHARS: usize = 100_000;
/// Longest artifact `read_artifact` returns whole, in characters of JSON.
const MAX_ARTIFACT_CHARS: usize = 20_000;

pub(super) fn all() -> Vec<Tool> {
    vec![
        Tool::new(
            "text_stats",
            "Measure a text: characters, words, sentences, paragraphs, average sentence length, \
             Flesch reading ease and Flesch-Kincaid grade, reading time, hashtags, links and \
             questions. With a platform, also whether the text fits that platform's limits.",
            Duration::from_secs(5),
            |args: TextStatsArgs, _ctx| async move { text_stats(&args) },
        ),
        Tool::new(
            "platform_constraints",
            "Look up the publishing constraints of a platform (linkedin, x, instagram, facebook, \
             threads, tiktok, youtube, blog, email, newsletter): character limits, the length \
             that performs best, hashtag and link conventions, formatting notes.",
            Duration::from_secs(2),
            |args: PlatformArgs, _ctx| async move { platform_constraints(&args.platform) },
        ),
        Tool::new(
            "read_artifact",
            "Read the outputs of the earlier steps this step builds on (the strategy, previous \
             drafts, QA verdicts). Without stepId, lists them; with stepId, returns that step's \
             output.",
            Duration::from_secs(2),
            |args: ReadArtifactArgs, ctx: Arc<StepContext>| async move { read_artifact(&args, &ctx) },
        ),
        Tool::new(
            HITL_TOOL,
            "Ask a person and wait for the answer: kind \"approval\" for a yes/no decision, \
             \"clarify\" for missing information. The run pauses until someone answers. Use it \
             only when you cannot go on responsibly without a human; a run allows few requests.",
            Duration::from_secs(1),
            // Carried out by the engine (a checkpoint); the step's session never calls this.
            |_args: HitlArgs, _ctx| async move {
                Err::<Value, String>("hitl_request is answered by a person".into())
            },
        ),
    ]
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TextStatsArgs {
    /// The text to measure.
    pub text: String,
    /// A platform whose limits the text is checked against (e.g. "linkedin").
    #[serde(default)]
    pub platform: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlatformArgs {
    /// The platform, e.g. "linkedin", "x", "instagram", "blog", "email".
    pub platform: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReadArtifactArgs {
    /// The step whose output to read; omit it to list what is available.
    #[serde(default)]
    pub step_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HitlArgs {
    /// "approval" (a yes/no decision) or "clarify" (a question needing an answer).
    pub kind: HitlKind,
    /// The question, self-contained: the person sees nothing else.
    pub question: String,
    /// "low", "normal" (the default) or "high".
    #[serde(default)]
    pub urgency: Urgency,
}

fn syllables(word: &str) -> usize {
    let w: Vec<char> = word
        .chars()
        .filter(|c| c.is_alphabetic())
        .flat_map(char::to_lowercase)
        .collect();
    if w.is_empty() {
        return 0;
    }
    let vowel = |c: char| "aeiouy".contains(c);
    let mut count = 0;
    let mut prev = false;
    for &c in &w {
        let v = vowel(c);
        if v && !prev {
            count += 1;
        }
        prev = v;
    }
    // A silent final "e" ("make"), but not "-le" ("simple").
    let n = w.len();
    if n > 2 && w[n - 1] == 'e' && w[n - 2] != 'l' && !vowel(w[n - 2]) && count > 1 {
        count -= 1;
    }
    count.max(1)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Counts and readability of a text (Flesch reading ease, Flesch-Kincaid grade).
pub fn text_stats(args: &TextStatsArgs) -> Result<Value, String> {
    let text = &args.text;
    let chars = text.chars().count();
    if chars > MAX_TEXT_CHARS {
        return Err(format!(
            "the text is {chars} characters; this tool reads at most {MAX_TEXT_CHARS}"
        ));
    }
    let words: Vec<&str> = text
        .split_whitespace()
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .collect();
    let sentence_lengths: Vec<usize> = text
        .split(['.', '!', '?', '\n'])
        .map(|s| {
            s.split_whitespace()
                .filter(|w| w.chars().any(char::is_alphanumeric))
                .count()
        })
        .filter(|n| *n > 0)
        .collect();
    let sentences = sentence_lengths.len().max(usize::from(!words.is_empty()));
    let paragraphs = text.split("\n\n").filter(|p| !p.trim().is_empty()).count();
    let syllable_total: usize = words.iter().map(|w| syllables(w)).sum();
    let (wps, spw) = if words.is_empty() {
        (0.0, 0.0)
    } else {
        (
            words.len() as f64 / sentences as f64,
            syllable_total as f64 / words.len() as f64,
        )
    };
    let ease = if words.is_empty() {
        Value::Null
    } else {
        json!(round2(206.835 - 1.015 * wps - 84.6 * spw))
    };
    let grade = if words.is_empty() {
        Value::Null
    } else {
        json!(round2((0.39 * wps + 11.8 * spw - 15.59).max(0.0)))
    };
    let hashtags = words.iter().filter(|w| w.starts_with('#')).count();
    let links = words
        .iter()
        .filter(|w| w.starts_with("http://") || w.starts_with("https://"))
        .count();
    let mut out = json!({
        "characters": chars,
        "words": words.len(),
        "sentences": sentences,
        "paragraphs": paragraphs,
        "averageWordsPerSentence": round2(wps),
        "longestSentenceWords": sentence_lengths.iter().max().copied().unwrap_or(0),
        "syllablesPerWord": round2(spw),
        "fleschReadingEase": ease,
        "fleschKincaidGrade": grade,
        "readingTimeSeconds": (words.len() as f64 / 238.0 * 60.0).round(),
        "hashtags": hashtags,
        "links": links,
        "questions": text.matches('?').count(),
    });
    if let Some(platform) = &args.platform {
        let limits = platform_limits(platform).ok_or_else(|| unknown_platform(platform))?;
        let fits = limits.max_chars.is_none_or(|max| chars <= max);
        out["platform"] = json!({
            "name": limits.name,
            "maxChars": limits.max_chars,
            "fits": fits,
            "overBy": limits.max_chars.map(|max| chars.saturating_sub(max)),
            "idealChars": limits.ideal_chars,
        });
    }
    Ok(out)
}

/// What a platform allows and what works there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlatformLimits {
    pub name: &'static str,
    pub max_chars: Option<usize>,
    /// The length range that tends to perform best, in characters.
    pub ideal_chars: Option<(usize, usize)>,
    pub hashtags: &'static str,
    pub links: &'static str,
    pub notes: &'static str,
}

const PLATFORMS: &[(&[&str], PlatformLimits)] = &[
    (
        &["linkedin"],
        PlatformLimits {
            name: "linkedin",
            max_chars: Some(3000),
            ideal_chars: Some((1200, 1900)),
            hashtags: "3 to 5, at the end",
            links: "allowed; links in the post reduce reach, many put them in the first comment",
            notes: "Only the first ~210 characters show before \"see more\": lead with the hook. \
                    Short paragraphs, line breaks between them.",
        },
    ),
    (
        &["x", "twitter"],
        PlatformLimits {
            name: "x",
            max_chars: Some(280),
            ideal_chars: Some((70, 120)),
            hashtags: "at most 1 or 2",
            links: "a link counts as 23 characters",
            notes: "Longer content goes in a thread of numbered posts, each standing alone.",
        },
    ),
    (
        &["instagram"],
        PlatformLimits {
            name: "instagram",
            max_chars: Some(2200),
            ideal_chars: Some((138, 150)),
            hashtags: "up to 30 allowed; 3 to 5 relevant ones work best",
            links: "links in captions are not clickable: say \"link in bio\"",
            notes: "The caption is cut after ~125 characters; the visual carries the post.",
        },
    ),
    (
        &["facebook"],
        PlatformLimits {
            name: "facebook",
            max_chars: Some(63_206),
            ideal_chars: Some((40, 80)),
            hashtags: "1 or 2 at most",
            links: "allowed, with a preview",
            notes: "Posts are cut after ~480 characters; short posts get the most engagement.",
        },
    ),
    (
        &["threads"],
        PlatformLimits {
            name: "threads",
            max_chars: Some(500),
            ideal_chars: Some((100, 300)),
            hashtags: "one topic tag per post",
            links: "allowed",
            notes: "Conversational tone; questions invite replies.",
        },
    ),
    (
        &["tiktok"],
        PlatformLimits {
            name: "tiktok",
            max_chars: Some(4000),
            ideal_chars: Some((100, 300)),
            hashtags: "3 to 5",
            links: "not clickable in captions",
            notes: "The caption supports the video; put the key words early for search.",
        },
    ),
    (
        &["youtube"],
        PlatformLimits {
            name: "youtube",
            max_chars: Some(5000),
            ideal_chars: Some((200, 1000)),
            hashtags: "up to 3 show above the title",
            links: "allowed in the description",
            notes: "Only the first ~150 characters show in search: front-load the value.",
        },
    ),
    (
        &["blog", "article", "website"],
        PlatformLimits {
            name: "blog",
            max_chars: None,
            ideal_chars: Some((4000, 10_000)),
            hashtags: "none",
            links: "allowed; link to sources and the product page",
            notes: "A headline, an introduction that states the point, subheadings, and a \
                    closing call to action. 600 to 1500 words reads well.",
        },
    ),
    (
        &["email", "newsletter"],
        PlatformLimits {
            name: "email",
            max_chars: None,
            ideal_chars: Some((500, 1500)),
            hashtags: "none",
            links: "one clear call-to-action link",
            notes: "Subject line under 60 characters (about 40 shows on phones); preview text \
                    under 90 characters; one message per email.",
        },
    ),
];

pub fn platform_limits(platform: &str) -> Option<PlatformLimits> {
    let key = platform.trim().to_lowercase();
    PLATFORMS
        .iter()
        .find(|(names, _)| names.contains(&key.as_str()))
        .map(|(_, limits)| *limits)
}

fn unknown_platform(platform: &str) -> String {
    let known: Vec<&str> = PLATFORMS
        .iter()
        .flat_map(|(names, _)| names.iter().copied())
        .collect();
    format!(
        "unknown platform {platform:?}; known platforms: {}",
        known.join(", ")
    )
}

fn platform_constraints(platform: &str) -> Result<Value, String> {
    let l = platform_limits(platform).ok_or_else(|| unknown_platform(platform))?;
    Ok(json!({
        "platform": l.name,
        "maxChars": l.max_chars,
        "idealChars": l.ideal_chars.map(|(lo, hi)| json!({ "min": lo, "max": hi })),
        "hashtags": l.hashtags,
        "links": l.links,
        "notes": l.notes,
    }))
}

/// The outputs this step was handed (its ancestors'), never anything of the planner.
fn read_artifact(args: &ReadArtifactArgs, ctx: &StepContext) -> Result<Value, String> {
    let Some(step_id) = &args.step_id else {
        let listed: Vec<Value> = ctx
            .inputs
            .iter()
            .map(|p| {
                let fields: Vec<&String> = p
                    .output
                    .as_object()
                    .map(|o| o.keys().collect())
                    .unwrap_or_default();
                json!({
                    "stepId": p.step_id,
                    "capabilityId": p.capability_id,
                    "fields": fields,
                    "chars": p.output.to_string().len(),
                })
            })
            .collect();
        return Ok(json!({ "artifacts": listed }));
    };
    let found = ctx
        .inputs
        .iter()
        .find(|p| &p.step_id == step_id)
        .ok_or_else(|| {
            let ids: Vec<&str> = ctx.inputs.iter().map(|p| p.step_id.as_str()).collect();
            format!(
                "no artifact for step {step_id:?}; available: {}",
                if ids.is_empty() {
                    "none".to_owned()
                } else {
                    ids.join(", ")
                }
            )
        })?;
    let text = found.output.to_string();
    let output = if text.len() > MAX_ARTIFACT_CHARS {
        // Long outputs are cut on a character boundary and say so.
        let cut: String = text.chars().take(MAX_ARTIFACT_CHARS).collect();
        json!({ "truncated": true, "json": cut })
    } else {
        found.output.clone()
    };
    Ok(json!({
        "stepId": found.step_id,
        "capabilityId": found.capability_id,
        "output": output,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readability_of_a_plain_text() {
        // GIVEN a short text of simple sentences
        let args = TextStatsArgs {
            text: "The cat sat on the mat. It was happy. Try it today!".into(),
            platform: Some("x".into()),
        };
        // WHEN measured
        let stats = text_stats(&args).unwrap_or_default();
        // THEN counts and readability come out, and it fits on X
        assert_eq!(stats["words"], 12);
        assert_eq!(stats["sentences"], 3);
        assert!(stats["fleschReadingEase"].as_f64().unwrap_or_default() > 90.0);
        assert_eq!(stats["platform"]["fits"], true);
    }

    #[test]
    fn syllables_are_estimated() {
        assert_eq!(syllables("make"), 1);
        assert_eq!(syllables("simple"), 2);
        assert_eq!(syllables("readability"), 5);
        assert_eq!(syllables("sync"), 1);
    }

    #[test]
    fn unknown_platforms_list_the_known_ones() {
        let err = platform_constraints("myspace").err().unwrap_or_default();
        assert!(err.contains("linkedin") && err.contains("myspace"), "{err}");
        assert_eq!(
            platform_limits("Twitter").map(|l| l.max_chars),
            Some(Some(280))
        );
    }
}
