#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the assertion in a test

//! Any model, any reply: a corpus of replies as real models write them (prose around JSON,
//! fences, trailing commas, single quotes, Python literals, other keys and casings, scores in
//! every form, refusals, empty and cut-off replies, reasoning blocks, tool calls), each with the
//! value it must give or the clear error it must end in. Every row runs through the real
//! OpenAI-compatible adapter and the real Bedrock adapter against a loopback endpoint, then
//! through the real planner, strategist or QA. The test prints a markdown table of the results
//! (`cargo test -p orchestrator-llm --test corpus -- --nocapture`).

mod support;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_bedrockruntime::config::{BehaviorVersion, Credentials, Region};
use orchestrator_agents::{
    AgentError, NoDeltas, PlanContext, Planner, PriorOutput, Qa, Specialist, StepContext, Strategy,
};
use orchestrator_core::ports::Model;
use orchestrator_core::types::{Plan, PlanStep, RunRequest, StepStatus, ToolPolicy};
use orchestrator_llm::{ApiKey, BedrockModel, OpenAiModel, Resilience};
use serde_json::{Value, json};
use support::{MockServer, Reply};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    Plan,
    Strategy,
    Qa,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Plan => "plan",
            Role::Strategy => "strategy",
            Role::Qa => "qa",
        }
    }

    /// The name of the reply's schema: the tool a model answers with when it answers with one.
    fn schema(self) -> &'static str {
        match self {
            Role::Plan => "plan_patch",
            Role::Strategy => "strategy",
            Role::Qa => "qa_verdict",
        }
    }
}

/// One reply of the model, in the shape each provider sends it.
#[derive(Debug, Clone, Copy)]
enum Turn {
    /// Text, finished normally.
    Text(&'static str),
    /// Text stopped by the length limit (`finish_reason: length`, `stopReason: max_tokens`).
    Cut(&'static str),
    /// No text, one call of a tool named after the reply's schema with the JSON as its
    /// arguments (`tool_calls` with null content; a `toolUse` block).
    Call(&'static str),
    /// A sentence, then the JSON as a tool call.
    SayThenCall(&'static str, &'static str),
    /// A refusal the provider's own way: OpenAI's `refusal` field with null content (what
    /// structured outputs answer); Bedrock has no such field, so a text block.
    Refusal(&'static str),
}

#[derive(Debug, Clone)]
enum Expect {
    /// The capabilities of the added steps, in order (`finalize` for the finalize step).
    Plan(&'static [&'static str]),
    /// A strategy: its audience, its angle, how many key messages.
    Strategy {
        audience: Option<&'static str>,
        angle: Option<&'static str>,
        messages: usize,
    },
    /// Prose kept for the writer as `{"notes": text}`; the text starts with this.
    Notes(&'static str),
    /// A QA verdict: its score, its issues, whether each acceptance criterion passed.
    Verdict {
        score: f64,
        issues: &'static [&'static str],
        criteria: &'static [bool],
    },
    /// An error whose message contains each of these words (case-insensitive).
    Error(&'static [&'static str]),
}

#[derive(Debug, Clone)]
struct Want {
    expect: Expect,
    /// The requests the endpoint sees.
    calls: usize,
}

#[derive(Debug, Clone)]
struct Case {
    kind: &'static str,
    role: Role,
    /// The nth call gets the nth reply; the last one repeats.
    replies: Vec<Turn>,
    openai: Want,
    bedrock: Want,
    /// The step runs with `toolPolicy: off`: no tools of its own are offered, so Bedrock forces
    /// the reply tool for strategy and QA too (it always does for the planner).
    tools_off: bool,
}

/// A row that must give the same on both adapters.
fn case(kind: &'static str, role: Role, replies: &[Turn], expect: Expect, calls: usize) -> Case {
    let want = Want { expect, calls };
    Case {
        kind,
        role,
        replies: replies.to_vec(),
        openai: want.clone(),
        bedrock: want,
        tools_off: false,
    }
}

impl Case {
    /// What the OpenAI-compatible adapter gives instead.
    #[allow(dead_code)] // every row reads the same on both adapters today
    fn on_openai(mut self, expect: Expect, calls: usize) -> Self {
        self.openai = Want { expect, calls };
        self
    }

    fn tools_off(mut self) -> Self {
        self.tools_off = true;
        self
    }
}

use Expect::{Error, Notes, Plan as Steps, Verdict};
use Role::{Plan as P, Qa as Q, Strategy as S};
use Turn::{Call, Cut, Refusal, SayThenCall, Text};

const FOUR: &[&str] = &["strategy", "generation", "qa", "finalize"];

fn strategy(audience: &'static str, angle: &'static str, messages: usize) -> Expect {
    Expect::Strategy {
        audience: Some(audience),
        angle: Some(angle),
        messages,
    }
}

/// The corpus. QA rows review against two acceptance criteria, "Has a call to action" (ac1) and
/// "Under 100 words" (ac2), with the default threshold 0.78.
fn cases() -> Vec<Case> {
    vec![
        // ---------------------------------------------------------------- planner
        case(
            "plain valid JSON",
            P,
            &[Text(
                r#"{"stepsAdd": [{"id": "s1", "capabilityId": "strategy", "label": "Research the audience"}, {"id": "s2", "capabilityId": "generation", "label": "Write the launch post", "dependsOn": ["s1"]}, {"id": "s3", "capabilityId": "qa", "label": "Review the draft", "dependsOn": ["s2"]}, {"id": "s4", "action": "finalize", "label": "Assemble the final result", "dependsOn": ["s3"]}]}"#,
            )],
            Steps(FOUR),
            1,
        ),
        case(
            "prose around JSON",
            P,
            &[Text(
                r#"Sure! Here is a plan for the launch post:

{"stepsAdd": [{"id": "s1", "capabilityId": "strategy", "label": "Research the audience"}, {"id": "s2", "capabilityId": "generation", "label": "Write the launch post", "dependsOn": ["s1"]}, {"id": "s3", "capabilityId": "qa", "label": "Review the draft", "dependsOn": ["s2"]}]}

Let me know if you would like any changes."#,
            )],
            Steps(FOUR),
            1,
        ),
        case(
            "fenced ```json",
            P,
            &[Text(
                r#"```json
{
  "stepsAdd": [
    {"id": "s1", "capabilityId": "strategy", "label": "Research the audience"},
    {"id": "s2", "capabilityId": "generation", "label": "Write the launch post", "dependsOn": ["s1"]},
    {"id": "s3", "capabilityId": "qa", "label": "Review the draft", "dependsOn": ["s2"]},
    {"id": "s4", "action": "finalize", "label": "Assemble the final result", "dependsOn": ["s3"]}
  ]
}
```"#,
            )],
            Steps(FOUR),
            1,
        ),
        case(
            "fenced bare ``` with prose before",
            P,
            &[Text(
                r#"Here's the plan:
```
{"stepsAdd": [{"capabilityId": "strategy", "label": "Research the audience"}, {"capabilityId": "generation", "label": "Write the launch post", "dependsOn": ["1"]}, {"capabilityId": "qa", "label": "Review the draft", "dependsOn": ["2"]}]}
```"#,
            )],
            Steps(FOUR),
            1,
        ),
        case(
            "JSON cut off at max_tokens",
            P,
            &[Cut(
                r#"{"stepsAdd": [{"id": "s1", "capabilityId": "strategy", "label": "Research the audience"}, {"id": "s2", "capabilityId": "generation", "label": "Write the la"#,
            )],
            Error(&["cut off", "after 3 attempts"]),
            3,
        ),
        case(
            "trailing commas",
            P,
            &[Text(
                r#"{"stepsAdd": [{"id": "s1", "capabilityId": "strategy", "label": "Research the audience",}, {"id": "s2", "capabilityId": "generation", "label": "Write the launch post", "dependsOn": ["s1",],}, {"id": "s3", "capabilityId": "qa", "label": "Review the draft", "dependsOn": ["s2"],},],}"#,
            )],
            Steps(FOUR),
            1,
        ),
        case(
            "single quotes",
            P,
            &[Text(
                r#"{'stepsAdd': [{'id': 's1', 'capabilityId': 'strategy', 'label': 'Research the audience'}, {'id': 's2', 'capabilityId': 'generation', 'label': "Write the team's launch post", 'dependsOn': ['s1']}, {'id': 's3', 'capabilityId': 'qa', 'label': 'Review the draft', 'dependsOn': ['s2']}]}"#,
            )],
            Steps(FOUR),
            1,
        ),
        case(
            "Python True/False/None",
            P,
            &[Text(
                r#"{'stepsAdd': [{'id': 's1', 'capabilityId': 'strategy', 'label': 'Research the audience', 'optional': False}, {'id': 's2', 'capabilityId': 'generation', 'label': 'Write the launch post', 'dependsOn': ['s1'], 'note': None}, {'id': 's3', 'capabilityId': 'qa', 'label': 'Review the draft', 'dependsOn': ['s2'], 'blocking': True}], 'stepsUpdate': [], 'note': None}"#,
            )],
            Steps(FOUR),
            1,
        ),
        case(
            "alias \"steps\", steps as plain strings",
            P,
            &[Text(
                r#"{"steps": ["Research the audience and the angle", "Write the launch post", "Review the draft against the criteria"]}"#,
            )],
            Steps(FOUR),
            1,
        ),
        case(
            "alias \"add\", agents by other names",
            P,
            &[Text(
                r#"{"add": [{"agent": "researcher", "task": "Find the angle"}, {"agent": "copywriter", "task": "Draft the post", "after": ["1"]}, {"agent": "critic", "task": "Check the draft", "after": ["2"]}, {"agent": "finalizer", "task": "Deliver", "after": ["3"]}]}"#,
            )],
            Steps(FOUR),
            1,
        ),
        case(
            "other casing (STEPS_ADD, Capability_Id)",
            P,
            &[Text(
                r#"{"STEPS_ADD": [{"ID": "s1", "Capability_Id": "strategy", "Label": "Research the audience"}, {"ID": "s2", "Capability_Id": "generation", "Label": "Write the launch post", "Depends_On": ["s1"]}, {"ID": "s3", "Capability_Id": "qa", "Label": "Review the draft", "Depends_On": ["s2"]}]}"#,
            )],
            Steps(FOUR),
            1,
        ),
        case(
            "wrapped in {\"plan\": {...}}",
            P,
            &[Text(
                r#"{"plan": {"stepsAdd": [{"id": "s1", "capabilityId": "strategy", "label": "Research the audience"}, {"id": "s2", "capabilityId": "generation", "label": "Write the launch post", "dependsOn": ["s1"]}, {"id": "s3", "capabilityId": "qa", "label": "Review the draft", "dependsOn": ["s2"]}]}}"#,
            )],
            Steps(FOUR),
            1,
        ),
        case(
            "a bare array of steps",
            P,
            &[Text(
                r#"[{"capability": "strategy", "label": "Research the audience"}, {"capability": "generation", "label": "Write the launch post", "dependsOn": ["1"]}, {"capability": "qa", "label": "Review the draft", "dependsOn": ["2"]}]"#,
            )],
            Steps(FOUR),
            1,
        ),
        case(
            "reasoning before the answer",
            P,
            &[Text(
                r#"<think>
The user wants a launch post. I could answer {"stepsAdd": []} but that changes nothing.
Research first, then write, then review.
</think>

{"stepsAdd": [{"id": "s1", "capabilityId": "strategy", "label": "Research the audience"}, {"id": "s2", "capabilityId": "generation", "label": "Write the launch post", "dependsOn": ["s1"]}, {"id": "s3", "capabilityId": "qa", "label": "Review the draft", "dependsOn": ["s2"]}]}"#,
            )],
            Steps(FOUR),
            1,
        ),
        // Cut off while reasoning: named as such.
        case(
            "<think> never closed (cut off while reasoning)",
            P,
            &[Cut(
                "<think>\nThe user wants a launch post for Acme Sync. First I should research the audience: IT managers, probably. Then the writer drafts, then",
            )],
            Error(&["cut off while the model was still reasoning", "after 3 attempts"]),
            3,
        ),
        case(
            "only a tool call",
            P,
            &[Call(
                r#"{"stepsAdd": [{"id": "s1", "capabilityId": "strategy", "label": "Research the audience"}, {"id": "s2", "capabilityId": "generation", "label": "Write the launch post", "dependsOn": ["s1"]}, {"id": "s3", "capabilityId": "qa", "label": "Review the draft", "dependsOn": ["s2"]}, {"id": "s4", "action": "finalize", "label": "Assemble", "dependsOn": ["s3"]}]}"#,
            )],
            Steps(FOUR),
            1,
        ),
        // A sentence without JSON beside a tool call: the call's arguments are the reply.
        case(
            "a sentence, then the JSON as a tool call",
            P,
            &[SayThenCall(
                "I'll lay out the plan with the tool.",
                r#"{"stepsAdd": [{"id": "s1", "capabilityId": "strategy", "label": "Research the audience"}, {"id": "s2", "capabilityId": "generation", "label": "Write the launch post", "dependsOn": ["s1"]}, {"id": "s3", "capabilityId": "qa", "label": "Review the draft", "dependsOn": ["s2"]}]}"#,
            )],
            Steps(FOUR),
            1,
        ),
        case(
            "refusal (\"I can't help with that.\")",
            P,
            &[Text("I can't help with that.")],
            Error(&["refused", "I can't help with that", "after 3 attempts"]),
            3,
        ),
        // A refusal with a typographic apostrophe (as OpenAI models write it) is named as one.
        case(
            "refusal with a typographic apostrophe (\u{2019})",
            P,
            &[Text("I\u{2019}m sorry, but I can\u{2019}t help with that.")],
            Error(&["refused", "after 3 attempts"]),
            3,
        ),
        // OpenAI's structured-output refusal (`refusal` set, `content` null) is the reply's words.
        case(
            "refusal in OpenAI's `refusal` field",
            P,
            &[Refusal(
                "I'm sorry, but I cannot assist with that request.",
            )],
            Error(&["refused", "cannot assist", "after 3 attempts"]),
            3,
        ),
        case(
            "empty reply",
            P,
            &[Text("")],
            Error(&["empty", "after 3 attempts"]),
            3,
        ),
        case(
            "an empty object",
            P,
            &[Text("{}")],
            Error(&["changes nothing", "after 3 attempts"]),
            3,
        ),
        case(
            "a capability that does not exist",
            P,
            &[Text(
                r#"{"stepsAdd": [{"id": "s1", "capabilityId": "seo", "label": "Optimise keywords"}]}"#,
            )],
            Error(&["seo", "the capabilities are", "after 3 attempts"]),
            3,
        ),
        case(
            "retry: prose first, then valid JSON",
            P,
            &[
                Text("Sure! I would start with research, then write, then review."),
                Text(
                    r#"{"stepsAdd": [{"capabilityId": "strategy", "label": "Research the audience"}, {"capabilityId": "generation", "label": "Write the launch post", "dependsOn": ["1"]}, {"capabilityId": "qa", "label": "Review the draft", "dependsOn": ["2"]}]}"#,
                ),
            ],
            Steps(FOUR),
            2,
        ),
        case(
            "retry: cut off first, then valid JSON",
            P,
            &[
                Cut(r#"{"stepsAdd": [{"capabilityId": "strategy", "label": "Research the"#),
                Text(
                    r#"{"stepsAdd": [{"capabilityId": "strategy", "label": "Research the audience"}, {"capabilityId": "generation", "label": "Write the launch post", "dependsOn": ["1"]}, {"capabilityId": "qa", "label": "Review the draft", "dependsOn": ["2"]}]}"#,
                ),
            ],
            Steps(FOUR),
            2,
        ),
        case(
            "retry: refused twice, then valid JSON",
            P,
            &[
                Text("I can't help with that."),
                Text("I'm sorry, but I cannot assist with that request."),
                Text(r#"{"steps": ["Research the audience", "Write the launch post"]}"#),
            ],
            Steps(&["strategy", "generation", "finalize"]),
            3,
        ),
        // ---------------------------------------------------------------- strategy
        case(
            "plain valid JSON",
            S,
            &[Text(
                r#"{"audience": "IT managers at mid-size firms", "angle": "Sync that never loses a file", "keyMessages": ["Real-time sync", "End-to-end encryption", "Set up in minutes"], "tone": "confident", "callToAction": "Start a free trial", "platform": "linkedin"}"#,
            )],
            strategy("IT managers at mid-size firms", "Sync that never loses a file", 3),
            1,
        ),
        case(
            "prose around JSON",
            S,
            &[Text(
                r#"Here's the strategy I'd recommend:
{"audience": "IT managers at mid-size firms", "angle": "Sync that never loses a file", "keyMessages": ["Real-time sync", "End-to-end encryption"]}
This should resonate with a technical audience."#,
            )],
            strategy("IT managers at mid-size firms", "Sync that never loses a file", 2),
            1,
        ),
        case(
            "fenced ```json",
            S,
            &[Text(
                r#"```json
{
  "audience": "IT managers at mid-size firms",
  "angle": "Sync that never loses a file",
  "keyMessages": ["Real-time sync", "End-to-end encryption", "Set up in minutes"]
}
```"#,
            )],
            strategy("IT managers at mid-size firms", "Sync that never loses a file", 3),
            1,
        ),
        case(
            "fenced bare ```",
            S,
            &[Text(
                r#"```
{"audience": "IT managers at mid-size firms", "angle": "Sync that never loses a file", "keyMessages": ["Real-time sync"]}
```"#,
            )],
            strategy("IT managers at mid-size firms", "Sync that never loses a file", 1),
            1,
        ),
        case(
            "JSON cut off at max_tokens",
            S,
            &[Cut(
                r#"{"audience": "IT managers at mid-size firms", "angle": "Sync that never loses a file", "keyMessages": ["Real-time sync", "End-to-end encry"#,
            )],
            Error(&["cut off", "after one repair"]),
            2,
        ),
        case(
            "trailing commas",
            S,
            &[Text(
                r#"{"audience": "IT managers at mid-size firms", "angle": "Sync that never loses a file", "keyMessages": ["Real-time sync", "End-to-end encryption",],}"#,
            )],
            strategy("IT managers at mid-size firms", "Sync that never loses a file", 2),
            1,
        ),
        case(
            "single quotes",
            S,
            &[Text(
                r#"{'audience': 'IT managers at mid-size firms', 'angle': "Sync that doesn't lose a file", 'keyMessages': ['Real-time sync', 'It\'s encrypted end to end']}"#,
            )],
            strategy("IT managers at mid-size firms", "Sync that doesn't lose a file", 2),
            1,
        ),
        case(
            "Python None",
            S,
            &[Text(
                r#"{'audience': 'IT managers at mid-size firms', 'angle': 'Sync that never loses a file', 'keyMessages': ['Real-time sync'], 'platform': None, 'callToAction': None, 'formal': False}"#,
            )],
            strategy("IT managers at mid-size firms", "Sync that never loses a file", 1),
            1,
        ),
        case(
            "alias keys (target_audience, approach, key_points, cta)",
            S,
            &[Text(
                r#"{"target_audience": "IT managers at mid-size firms", "approach": "Sync that never loses a file", "key_points": ["Real-time sync", "End-to-end encryption"], "cta": "Start a free trial"}"#,
            )],
            strategy("IT managers at mid-size firms", "Sync that never loses a file", 2),
            1,
        ),
        case(
            "other casing (Audience, Key_Messages)",
            S,
            &[Text(
                r#"{"Audience": "IT managers at mid-size firms", "ANGLE": "Sync that never loses a file", "Key_Messages": ["Real-time sync", "End-to-end encryption", "Set up in minutes"]}"#,
            )],
            strategy("IT managers at mid-size firms", "Sync that never loses a file", 3),
            1,
        ),
        case(
            "audience as an object",
            S,
            &[Text(
                r#"{"audience": {"description": "IT managers at mid-size firms", "size": "50-500 employees"}, "angle": "Sync that never loses a file", "keyMessages": ["Real-time sync"]}"#,
            )],
            strategy("IT managers at mid-size firms", "Sync that never loses a file", 1),
            1,
        ),
        // A strategy wrapped in {"strategy": {...}} is unwrapped.
        case(
            "wrapped in {\"strategy\": {...}}",
            S,
            &[Text(
                r#"{"strategy": {"audience": "IT managers at mid-size firms", "angle": "Sync that never loses a file", "keyMessages": ["Real-time sync"]}}"#,
            )],
            strategy("IT managers at mid-size firms", "Sync that never loses a file", 1),
            1,
        ),
        case(
            "pure prose (kept as notes)",
            S,
            &[Text(
                "**Audience:** IT managers at mid-size firms who are tired of sync conflicts.\n**Angle:** Acme Sync never loses a file.\n**Key messages:** real-time sync, end-to-end encryption, set up in minutes.",
            )],
            Notes("**Audience:** IT managers"),
            1,
        ),
        case(
            "reasoning before the answer",
            S,
            &[Text(
                r#"<think>Who buys sync software? IT managers. The angle: reliability.</think>
    {"audience": "IT managers at mid-size firms", "angle": "Sync that never loses a file", "keyMessages": ["Real-time sync", "End-to-end encryption"]}"#,
            )],
            strategy("IT managers at mid-size firms", "Sync that never loses a file", 2),
            1,
        ),
        // Cut off while reasoning: named as such.
        case(
            "<think> never closed (cut off while reasoning)",
            S,
            &[Cut(
                "<think>Who buys sync software? Mostly IT managers, but small agencies too. The angle could be",
            )],
            Error(&["cut off while the model was still reasoning", "after one repair"]),
            2,
        ),
        // A strategy given only as a call of a tool nobody offered: the call's arguments.
        case(
            "only a tool call",
            S,
            &[Call(
                r#"{"audience": "IT managers at mid-size firms", "angle": "Sync that never loses a file", "keyMessages": ["Real-time sync"]}"#,
            )],
            strategy("IT managers at mid-size firms", "Sync that never loses a file", 1),
            1,
        ),
        // With the step's tools off: Bedrock forces the reply tool; an OpenAI call is read too.
        case(
            "only a tool call (step's tools off)",
            S,
            &[Call(
                r#"{"audience": "IT managers at mid-size firms", "angle": "Sync that never loses a file", "keyMessages": ["Real-time sync"]}"#,
            )],
            strategy("IT managers at mid-size firms", "Sync that never loses a file", 1),
            1,
        )
        .tools_off(),
        // FINDING: prose stopped by the length limit is kept as notes like any prose, with no
        // word that it was cut off (the adapters drop finish_reason / stopReason in `complete`;
        // strategy.rs, parse cannot tell).
        case(
            "prose cut off at max_tokens",
            S,
            &[Cut(
                "Audience: IT managers at mid-size firms who are tired of sync conflicts. Angle: Acme Sync never loses a file. Key messages: real-time sync, end-to-end encry",
            )],
            Notes("Audience: IT managers"),
            1,
        ),
        case(
            "refusal (\"I'm sorry, but I cannot assist ...\")",
            S,
            &[Text("I'm sorry, but I cannot assist with that request.")],
            Error(&["refused", "cannot assist", "after one repair"]),
            2,
        ),
        // A refusal with a typographic apostrophe is an error, not notes for the writer.
        case(
            "refusal with a typographic apostrophe (\u{2019})",
            S,
            &[Text("I\u{2019}m sorry, but I can\u{2019}t help with that.")],
            Error(&["refused", "after one repair"]),
            2,
        ),
        case(
            "empty reply",
            S,
            &[Text("")],
            Error(&["empty", "after one repair"]),
            2,
        ),
        case(
            "a JSON array instead of an object",
            S,
            &[Text(
                r#"["IT managers at mid-size firms", "Sync that never loses a file"]"#,
            )],
            Error(&["must be a JSON object", "after one repair"]),
            2,
        ),
        case(
            "retry: cut off first, then valid JSON",
            S,
            &[
                Cut(r#"{"audience": "IT managers at mid-size firms", "angle": "Sync th"#),
                Text(
                    r#"{"audience": "IT managers at mid-size firms", "angle": "Sync that never loses a file", "keyMessages": ["Real-time sync"]}"#,
                ),
            ],
            strategy("IT managers at mid-size firms", "Sync that never loses a file", 1),
            2,
        ),
        // ---------------------------------------------------------------- QA
        case(
            "plain valid JSON",
            Q,
            &[Text(
                r#"{"score": 0.8, "pass": true, "issues": ["The hook is weak"], "criteria": [{"id": "ac1", "passed": true}, {"id": "ac2", "passed": false, "details": "112 words"}]}"#,
            )],
            Verdict {
                score: 0.8,
                issues: &["The hook is weak"],
                criteria: &[true, false],
            },
            1,
        ),
        case(
            "prose around JSON",
            Q,
            &[Text(
                r#"Overall the draft is solid. Here is my verdict:
{"score": 0.85, "pass": true, "issues": [], "criteria": [{"id": "ac1", "passed": true}, {"id": "ac2", "passed": true}]}
Nice work!"#,
            )],
            Verdict {
                score: 0.85,
                issues: &[],
                criteria: &[true, true],
            },
            1,
        ),
        case(
            "fenced ```json",
            Q,
            &[Text(
                r#"```json
{"score": 0.7, "pass": false, "issues": ["No call to action"], "criteria": [{"id": "ac1", "passed": false}, {"id": "ac2", "passed": true}]}
```"#,
            )],
            Verdict {
                score: 0.7,
                issues: &["No call to action"],
                criteria: &[false, true],
            },
            1,
        ),
        case(
            "JSON cut off at max_tokens",
            Q,
            &[Cut(
                r#"{"score": 0.8, "pass": true, "issues": ["The hook is weak", "The second paragraph repeats the fi"#,
            )],
            Error(&["cut off", "after one repair"]),
            2,
        ),
        case(
            "trailing commas",
            Q,
            &[Text(
                r#"{"score": 0.8, "pass": true, "issues": ["The hook is weak",], "criteria": [{"id": "ac1", "passed": true,}, {"id": "ac2", "passed": true,},],}"#,
            )],
            Verdict {
                score: 0.8,
                issues: &["The hook is weak"],
                criteria: &[true, true],
            },
            1,
        ),
        case(
            "single quotes",
            Q,
            &[Text(
                r#"{'score': 0.8, 'pass': true, 'issues': ["The CTA doesn't stand out"], 'criteria': [{'id': 'ac1', 'passed': true}, {'id': 'ac2', 'passed': true}]}"#,
            )],
            Verdict {
                score: 0.8,
                issues: &["The CTA doesn't stand out"],
                criteria: &[true, true],
            },
            1,
        ),
        case(
            "Python True/False/None",
            Q,
            &[Text(
                r#"{'score': 0.8, 'pass': True, 'issues': [], 'criteria': [{'id': 'ac1', 'passed': True, 'details': None}, {'id': 'ac2', 'passed': False, 'details': '112 words'}]}"#,
            )],
            Verdict {
                score: 0.8,
                issues: &[],
                criteria: &[true, false],
            },
            1,
        ),
        case(
            "alias keys (rating, problems, checks)",
            Q,
            &[Text(
                r#"{"rating": 8, "problems": ["The hook is weak"], "checks": [{"id": "ac1", "passed": true}, {"id": "ac2", "passed": true}]}"#,
            )],
            Verdict {
                score: 0.8,
                issues: &["The hook is weak"],
                criteria: &[true, true],
            },
            1,
        ),
        case(
            "other casing (Score, Issues, CRITERIA)",
            Q,
            &[Text(
                r#"{"Score": 0.9, "Pass": true, "Issues": [], "CRITERIA": [{"ID": "ac1", "Passed": true}, {"ID": "ac2", "Passed": true}]}"#,
            )],
            Verdict {
                score: 0.9,
                issues: &[],
                criteria: &[true, true],
            },
            1,
        ),
        case(
            "score as a string \"0.8\"",
            Q,
            &[Text(
                r#"{"score": "0.8", "pass": true, "issues": [], "criteria": [{"id": "ac1", "passed": true}, {"id": "ac2", "passed": true}]}"#,
            )],
            Verdict {
                score: 0.8,
                issues: &[],
                criteria: &[true, true],
            },
            1,
        ),
        case(
            "score \"8/10\"",
            Q,
            &[Text(
                r#"{"score": "8/10", "pass": true, "issues": [], "criteria": [{"id": "ac1", "passed": true}, {"id": "ac2", "passed": true}]}"#,
            )],
            Verdict {
                score: 0.8,
                issues: &[],
                criteria: &[true, true],
            },
            1,
        ),
        case(
            "score \"80%\"",
            Q,
            &[Text(
                r#"{"score": "80%", "pass": true, "issues": [], "criteria": [{"id": "ac1", "passed": true}, {"id": "ac2", "passed": true}]}"#,
            )],
            Verdict {
                score: 0.8,
                issues: &[],
                criteria: &[true, true],
            },
            1,
        ),
        case(
            "score 8 (out of 10)",
            Q,
            &[Text(
                r#"{"score": 8, "pass": true, "issues": [], "criteria": [{"id": "ac1", "passed": true}, {"id": "ac2", "passed": true}]}"#,
            )],
            Verdict {
                score: 0.8,
                issues: &[],
                criteria: &[true, true],
            },
            1,
        ),
        case(
            "score 80 (out of 100)",
            Q,
            &[Text(
                r#"{"score": 80, "pass": true, "issues": [], "criteria": [{"id": "ac1", "passed": true}, {"id": "ac2", "passed": true}]}"#,
            )],
            Verdict {
                score: 0.8,
                issues: &[],
                criteria: &[true, true],
            },
            1,
        ),
        case(
            "score \"4/5\"",
            Q,
            &[Text(
                r#"{"score": "4/5", "pass": true, "issues": [], "criteria": [{"id": "ac1", "passed": true}, {"id": "ac2", "passed": true}]}"#,
            )],
            Verdict {
                score: 0.8,
                issues: &[],
                criteria: &[true, true],
            },
            1,
        ),
        case(
            "pass and criteria as \"yes\"/\"pass\"/\"no\"",
            Q,
            &[Text(
                r#"{"score": 0.9, "pass": "yes", "issues": [], "criteria": [{"id": "ac1", "status": "pass"}, {"id": "ac2", "passed": "no"}]}"#,
            )],
            Verdict {
                score: 0.9,
                issues: &[],
                criteria: &[true, false],
            },
            1,
        ),
        case(
            "issues as objects",
            Q,
            &[Text(
                r#"{"score": 0.7, "pass": false, "issues": [{"issue": "No call to action", "severity": "high"}, {"description": "Too long for LinkedIn", "severity": "low"}], "criteria": [{"id": "ac1", "passed": false}, {"id": "ac2", "passed": false}]}"#,
            )],
            Verdict {
                score: 0.7,
                issues: &["No call to action", "Too long for LinkedIn"],
                criteria: &[false, false],
            },
            1,
        ),
        case(
            "criteria by number",
            Q,
            &[Text(
                r#"{"score": 0.8, "pass": true, "issues": [], "criteria": [{"criterion": 2, "met": false, "reason": "112 words"}, {"criterion": 1, "met": true}]}"#,
            )],
            Verdict {
                score: 0.8,
                issues: &[],
                criteria: &[true, false],
            },
            1,
        ),
        case(
            "criteria by text",
            Q,
            &[Text(
                r#"{"score": 0.8, "pass": true, "issues": [], "criteria": [{"criterion": "Under 100 words", "passed": true}, {"criterion": "Has a call to action", "passed": false}]}"#,
            )],
            Verdict {
                score: 0.8,
                issues: &[],
                criteria: &[false, true],
            },
            1,
        ),
        case(
            "criteria as a map {\"ac1\": true}",
            Q,
            &[Text(
                r#"{"score": 0.8, "pass": true, "issues": [], "criteria": {"ac1": true, "ac2": "no"}}"#,
            )],
            Verdict {
                score: 0.8,
                issues: &[],
                criteria: &[true, false],
            },
            1,
        ),
        case(
            "wrapped in {\"verdict\": {...}}",
            Q,
            &[Text(
                r#"{"verdict": {"score": 0.9, "pass": true, "issues": [], "criteria": [{"id": "ac1", "passed": true}, {"id": "ac2", "passed": true}]}}"#,
            )],
            Verdict {
                score: 0.9,
                issues: &[],
                criteria: &[true, true],
            },
            1,
        ),
        case(
            "reasoning before the answer",
            Q,
            &[Text(
                r#"<think>The draft has a CTA ("Start your free trial"). Word count is 87, under 100. Score it 0.9.</think>
    {"score": 0.9, "pass": true, "issues": [], "criteria": [{"id": "ac1", "passed": true}, {"id": "ac2", "passed": true}]}"#,
            )],
            Verdict {
                score: 0.9,
                issues: &[],
                criteria: &[true, true],
            },
            1,
        ),
        // Cut off while reasoning: named as such.
        case(
            "<think> never closed (cut off while reasoning)",
            Q,
            &[Cut(
                "<think>Let me count the words of the draft. Introducing Acme Sync: one, two, three",
            )],
            Error(&["cut off while the model was still reasoning", "after one repair"]),
            2,
        ),
        // A verdict given only as a call of a tool nobody offered: the call's arguments.
        case(
            "only a tool call",
            Q,
            &[Call(
                r#"{"score": 0.9, "pass": true, "issues": [], "criteria": [{"id": "ac1", "passed": true}, {"id": "ac2", "passed": true}]}"#,
            )],
            Verdict {
                score: 0.9,
                issues: &[],
                criteria: &[true, true],
            },
            1,
        ),
        // With the step's tools off (see the strategy row).
        case(
            "only a tool call (step's tools off)",
            Q,
            &[Call(
                r#"{"score": 0.9, "pass": true, "issues": [], "criteria": [{"id": "ac1", "passed": true}, {"id": "ac2", "passed": true}]}"#,
            )],
            Verdict {
                score: 0.9,
                issues: &[],
                criteria: &[true, true],
            },
            1,
        )
        .tools_off(),
        // A typographic apostrophe (see the plan row).
        case(
            "refusal with a typographic apostrophe (\u{2019})",
            Q,
            &[Text("I\u{2019}m sorry, but I can\u{2019}t help with that.")],
            Error(&["refused", "after one repair"]),
            2,
        ),
        // OpenAI's `refusal` field (see the plan row).
        case(
            "refusal in OpenAI's `refusal` field",
            Q,
            &[Refusal(
                "I'm sorry, but I cannot assist with that request.",
            )],
            Error(&["refused", "cannot assist", "after one repair"]),
            2,
        ),
        case(
            "refusal (\"I'm sorry, but I cannot assist ...\")",
            Q,
            &[Text("I'm sorry, but I cannot assist with that request.")],
            Error(&["refused", "cannot assist", "after one repair"]),
            2,
        ),
        case(
            "empty reply",
            Q,
            &[Text("")],
            Error(&["empty", "after one repair"]),
            2,
        ),
        case(
            "a JSON array instead of an object",
            Q,
            &[Text(
                r#"[{"score": 0.8, "pass": true}, {"id": "ac1", "passed": true}]"#,
            )],
            Error(&["must be a JSON object", "after one repair"]),
            2,
        ),
        case(
            "pure prose (no JSON)",
            Q,
            &[Text(
                "Score: 8/10. The draft is clear and has a call to action, but the hook is weak.",
            )],
            Error(&["no JSON object", "after one repair"]),
            2,
        ),
        case(
            "no score",
            Q,
            &[Text(
                r#"{"pass": true, "issues": ["The hook is weak"]}"#,
            )],
            Error(&["no score", "after one repair"]),
            2,
        ),
        case(
            "a score in words (\"high\")",
            Q,
            &[Text(
                r#"{"score": "high", "pass": true, "issues": []}"#,
            )],
            Error(&["score", "not a number", "after one repair"]),
            2,
        ),
        case(
            "retry: prose first, then valid JSON",
            Q,
            &[
                Text("The draft looks good overall, I'd give it 8 out of 10."),
                Text(
                    r#"{"score": 0.8, "pass": true, "issues": [], "criteria": [{"id": "ac1", "passed": true}, {"id": "ac2", "passed": true}]}"#,
                ),
            ],
            Verdict {
                score: 0.8,
                issues: &[],
                criteria: &[true, true],
            },
            2,
        ),
    ]
}

// ------------------------------------------------------------------------- the endpoints

#[derive(Debug, Clone, Copy, PartialEq)]
enum Adapter {
    OpenAi,
    Bedrock,
}

fn fast() -> Resilience {
    Resilience {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
        max_retries: 2,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
    }
}

/// A chat completion carrying this turn.
fn openai_reply(turn: Turn, role: Role) -> Value {
    let call = |args: &str| {
        json!([{"id": "call_1", "type": "function",
                "function": {"name": role.schema(), "arguments": args}}])
    };
    let (message, finish) = match turn {
        Text(t) => (json!({"role": "assistant", "content": t}), "stop"),
        Cut(t) => (json!({"role": "assistant", "content": t}), "length"),
        Call(args) => (
            json!({"role": "assistant", "content": null, "tool_calls": call(args)}),
            "tool_calls",
        ),
        SayThenCall(t, args) => (
            json!({"role": "assistant", "content": t, "tool_calls": call(args)}),
            "tool_calls",
        ),
        Refusal(t) => (
            json!({"role": "assistant", "content": null, "refusal": t}),
            "stop",
        ),
    };
    json!({"id": "chatcmpl-1", "object": "chat.completion", "model": "test-model",
           "choices": [{"index": 0, "message": message, "finish_reason": finish}],
           "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}})
}

/// A Converse reply carrying this turn.
fn bedrock_reply(turn: Turn, role: Role) -> Value {
    let text = |t: &str| {
        if t.is_empty() {
            json!([])
        } else {
            json!([{"text": t}])
        }
    };
    let call = |args: &str| {
        json!({"toolUse": {"toolUseId": "tooluse_1", "name": role.schema(),
                           "input": serde_json::from_str::<Value>(args).unwrap()}})
    };
    let (content, stop) = match turn {
        Text(t) | Refusal(t) => (text(t), "end_turn"),
        Cut(t) => (text(t), "max_tokens"),
        Call(args) => (json!([call(args)]), "tool_use"),
        SayThenCall(t, args) => (json!([{"text": t}, call(args)]), "tool_use"),
    };
    json!({"output": {"message": {"role": "assistant", "content": content}},
           "stopReason": stop,
           "usage": {"inputTokens": 11, "outputTokens": 7, "totalTokens": 18},
           "metrics": {"latencyMs": 10}})
}

async fn endpoint(case: &Case, adapter: Adapter) -> (MockServer, Arc<dyn Model>) {
    let replies = case.replies.clone();
    let role = case.role;
    let server = MockServer::start(move |_, n| {
        let turn = replies[n.min(replies.len() - 1)];
        Reply::json(
            200,
            match adapter {
                Adapter::OpenAi => openai_reply(turn, role),
                Adapter::Bedrock => bedrock_reply(turn, role),
            },
        )
    })
    .await;
    let model: Arc<dyn Model> = match adapter {
        Adapter::OpenAi => Arc::new(
            OpenAiModel::new(
                &format!("{}/v1", server.url),
                Some(ApiKey::new("sk-test")),
                "test-model",
                fast(),
            )
            .unwrap(),
        ),
        Adapter::Bedrock => Arc::new(BedrockModel::with_sdk_config(
            aws_sdk_bedrockruntime::config::Builder::new()
                .behavior_version(BehaviorVersion::latest())
                .endpoint_url(&server.url)
                .region(Region::new("us-east-1"))
                .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test")),
            "anthropic.claude-3-5-haiku-20241022-v1:0",
            &fast(),
        )),
    };
    (server, model)
}

// ------------------------------------------------------------------------- the agents

#[derive(Debug)]
enum Outcome {
    /// The capabilities of the added steps, in order.
    Plan(Vec<String>),
    /// A specialist's output.
    Output(Value),
    Error(String),
}

const OBJECTIVE: &str = "Write a LinkedIn launch post for Acme Sync";
const CRITERIA: [&str; 2] = ["Has a call to action", "Under 100 words"];

fn step_context(role: Role, tools_off: bool) -> StepContext {
    let mut request = RunRequest::new(OBJECTIVE);
    if tools_off {
        request.options.tool_policy = Some(ToolPolicy::Off);
    }
    let mut inputs = Vec::new();
    if role == Role::Qa {
        request.options.acceptance_criteria = CRITERIA.map(String::from).to_vec();
        inputs.push(PriorOutput {
            step_id: "s2".into(),
            capability_id: "generation".into(),
            output: json!({"text": "Introducing Acme Sync: your files, everywhere, never lost. Start your free trial today."}),
        });
    }
    StepContext {
        run_id: "r".into(),
        request,
        step: PlanStep {
            id: "s3".into(),
            capability_id: Some(role.name().into()),
            action: None,
            label: Some(format!("The {} step", role.name())),
            status: StepStatus::InProgress,
            depends_on: vec![],
            note: None,
            acceptance_criteria: vec![],
        },
        attempt: 1,
        inputs,
        hitl_remaining: 3,
        resume: None,
    }
}

async fn run_agent(role: Role, tools_off: bool, model: Arc<dyn Model>) -> Outcome {
    let result: Result<Outcome, AgentError> = match role {
        Role::Plan => {
            let request = RunRequest::new(OBJECTIVE);
            let capabilities: Vec<String> = ["strategy", "generation", "qa", "finalize"]
                .map(String::from)
                .to_vec();
            Planner::new(model)
                .plan(
                    PlanContext {
                        request: &request,
                        plan: &Plan::default(),
                        reason: None,
                        capabilities: &capabilities,
                    },
                    &NoDeltas,
                )
                .await
                .map(|outcome| {
                    Outcome::Plan(
                        outcome
                            .patch
                            .steps_add
                            .iter()
                            .map(|s| s.capability().unwrap_or("approval").to_owned())
                            .collect(),
                    )
                })
        }
        Role::Strategy => Strategy::new(model)
            .run(&step_context(role, tools_off), &NoDeltas)
            .await
            .map(|out| Outcome::Output(out.output)),
        Role::Qa => Qa::new(model)
            .run(&step_context(role, tools_off), &NoDeltas)
            .await
            .map(|out| Outcome::Output(out.output)),
    };
    result.unwrap_or_else(|e| Outcome::Error(e.to_string()))
}

// ------------------------------------------------------------------------- checking

fn check(expect: &Expect, outcome: &Outcome) -> Result<(), String> {
    match (expect, outcome) {
        (Expect::Plan(want), Outcome::Plan(got)) => (got == want)
            .then_some(())
            .ok_or_else(|| format!("steps {got:?}, expected {want:?}")),
        (
            Expect::Strategy {
                audience,
                angle,
                messages,
            },
            Outcome::Output(out),
        ) => {
            let got = (
                out.get("audience").and_then(Value::as_str),
                out.get("angle").and_then(Value::as_str),
                out.get("keyMessages")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len),
            );
            let notes = out.get("notes");
            (got == (*audience, *angle, *messages) && notes.is_none())
                .then_some(())
                .ok_or_else(|| format!("strategy {out}, expected audience {audience:?}, angle {angle:?}, {messages} key messages"))
        }
        (Expect::Notes(start), Outcome::Output(out)) => {
            let ok = out.as_object().is_some_and(|o| o.len() == 1)
                && out["notes"].as_str().is_some_and(|n| n.starts_with(start));
            ok.then_some(())
                .ok_or_else(|| format!("output {out}, expected notes starting {start:?}"))
        }
        (
            Expect::Verdict {
                score,
                issues,
                criteria,
            },
            Outcome::Output(out),
        ) => {
            let got_score = out["score"].as_f64().unwrap_or(f64::NAN);
            let got_issues: Vec<&str> = out["issues"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let got_criteria: Vec<(String, bool)> = out["criteria"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|c| {
                            (
                                c["id"].as_str().unwrap_or_default().to_owned(),
                                c["passed"].as_bool().unwrap_or_default(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let want_criteria: Vec<(String, bool)> = criteria
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("ac{}", i + 1), *p))
                .collect();
            let ok = (got_score - score).abs() < 1e-9
                && out["pass"] == json!(*score >= 0.78)
                && got_issues == *issues
                && got_criteria == want_criteria;
            ok.then_some(()).ok_or_else(|| {
                format!("verdict {out}, expected score {score}, issues {issues:?}, criteria {want_criteria:?}")
            })
        }
        (Expect::Error(words), Outcome::Error(message)) => {
            let lower = message.to_lowercase();
            let missing: Vec<&&str> = words
                .iter()
                .filter(|w| !lower.contains(&w.to_lowercase()))
                .collect();
            missing
                .is_empty()
                .then_some(())
                .ok_or_else(|| format!("error {message:?} does not mention {missing:?}"))
        }
        (want, got) => Err(format!("{got:?}, expected {want:?}")),
    }
}

/// The first request asked for a structured reply: OpenAI-compatible with a response_format;
/// Bedrock by forcing the reply tool when the request has no tools of its own, else with the
/// step's tools and an automatic choice.
fn asked(adapter: Adapter, case: &Case, body: &Value) -> Result<(), String> {
    let ok = match adapter {
        Adapter::OpenAi => {
            let format = body["response_format"]["type"].as_str().unwrap_or("none");
            let tools = body["tools"].as_array().map_or(0, Vec::len);
            matches!(format, "json_schema" | "json_object")
                && (tools > 0) == (case.role != Role::Plan && !case.tools_off)
        }
        Adapter::Bedrock => {
            let choice = &body["toolConfig"]["toolChoice"];
            if case.role == Role::Plan || case.tools_off {
                *choice == json!({"tool": {"name": case.role.schema()}})
            } else {
                *choice == json!({"auto": {}})
            }
        }
    };
    ok.then_some(())
        .ok_or_else(|| format!("the first request was not as expected: {body}"))
}

/// One cell of the report table.
fn describe(outcome: &Outcome, calls: usize) -> String {
    let text = match outcome {
        Outcome::Plan(steps) => format!("plan: {}", steps.join(", ")),
        Outcome::Output(out) if out.get("notes").is_some() && out.get("score").is_none() => {
            "notes kept (prose)".to_owned()
        }
        Outcome::Output(out) if out.get("score").is_some() => {
            let criteria: Vec<String> = out["criteria"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    let mark = if c["passed"] == json!(true) {
                        "yes"
                    } else {
                        "no"
                    };
                    format!("{} {mark}", c["id"].as_str().unwrap_or("?"))
                })
                .collect();
            format!(
                "score {:.2} ({}), {} issue(s), {}",
                out["score"].as_f64().unwrap_or(f64::NAN),
                if out["pass"] == json!(true) {
                    "pass"
                } else {
                    "fail"
                },
                out["issues"].as_array().map_or(0, Vec::len),
                criteria.join(", ")
            )
        }
        Outcome::Output(out) => format!(
            "audience {}, angle {}, {} key message(s)",
            out.get("audience").map_or("none".into(), Value::to_string),
            out.get("angle").map_or("none".into(), Value::to_string),
            out.get("keyMessages")
                .and_then(Value::as_array)
                .map_or(0, Vec::len)
        ),
        Outcome::Error(message) => {
            let message = message.strip_prefix("unusable reply: ").unwrap_or(message);
            let short: String = message.chars().take(150).collect();
            let more = if message.chars().count() > 150 {
                "…"
            } else {
                ""
            };
            format!("error: {short}{more}")
        }
    };
    let text = if calls > 1 {
        format!("{text} [{calls} calls]")
    } else {
        text
    };
    text.replace('|', "\\|").replace('\n', " ")
}

#[tokio::test]
async fn every_reply_of_the_corpus_gives_its_value_or_its_clear_error_on_both_adapters() {
    let cases = cases();
    assert!(cases.len() >= 40, "the corpus has {} rows", cases.len());
    let mut table = vec![
        "| reply kind | role | OpenAI | Bedrock |".to_owned(),
        "|---|---|---|---|".to_owned(),
    ];
    let mut failures = Vec::new();
    for case in &cases {
        let mut cells = Vec::new();
        for (adapter, want) in [
            (Adapter::OpenAi, &case.openai),
            (Adapter::Bedrock, &case.bedrock),
        ] {
            // GIVEN a loopback endpoint of this adapter answering with the row's replies
            let (server, model) = endpoint(case, adapter).await;

            // WHEN the row's agent asks it through the real adapter
            let outcome = run_agent(case.role, case.tools_off, model).await;

            // THEN the agent gives the expected value or clear error, after the expected calls
            let sent = server.requests();
            let calls = sent.len();
            let mut problems = Vec::new();
            // AND the first request asked for the structured reply the way this adapter does
            if let Some(first) = sent.first()
                && let Err(why) = asked(adapter, case, &first.json())
            {
                problems.push(why);
            }
            if let Err(why) = check(&want.expect, &outcome) {
                problems.push(why);
            }
            if calls != want.calls {
                problems.push(format!("{calls} calls, expected {}", want.calls));
            }
            if !problems.is_empty() {
                failures.push(format!(
                    "{} / {} / {adapter:?}: {}",
                    case.kind,
                    case.role.name(),
                    problems.join("; ")
                ));
            }
            let cell = describe(&outcome, calls);
            cells.push(if problems.is_empty() {
                cell
            } else {
                format!("MISMATCH {cell}")
            });
        }
        table.push(format!(
            "| {} | {} | {} | {} |",
            case.kind.replace('|', "\\|"),
            case.role.name(),
            cells[0],
            cells[1]
        ));
    }
    eprintln!("\n{} rows\n\n{}\n", cases.len(), table.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
