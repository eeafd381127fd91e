//! The RunRequest wire shape and its validation.

use orchestrator_core::{Mode, OnDisconnect, RunRequest, ToolPolicy};
use serde_json::{Value, json};

fn parse(v: Value) -> Result<RunRequest, serde_json::Error> {
    serde_json::from_value(v)
}

fn valid(v: Value) -> RunRequest {
    parse(v.clone()).unwrap_or_else(|e| panic!("{v} was refused: {e}"))
}

#[test]
fn a_bare_objective_gets_the_documented_defaults() {
    // GIVEN requests naming only the objective, with and without an empty options object
    for raw in [
        json!({ "objective": "Write a post" }),
        json!({ "objective": "Write a post", "options": {}, "state": {} }),
    ] {
        let r = valid(raw.clone());
        // THEN app mode, one revision cycle, threshold 0.78, the run survives a disconnect
        assert_eq!(r.mode, Mode::App, "{raw}");
        assert_eq!(r.options.max_revision_cycles, 1, "{raw}");
        assert_eq!(r.options.quality_threshold, 0.78, "{raw}");
        assert_eq!(r.options.on_disconnect, OnDisconnect::Continue, "{raw}");
        assert!(r.options.acceptance_criteria.is_empty());
        assert_eq!(r.options.budget.max_tokens, None);
        assert_eq!(r, RunRequest::new("Write a post"));
        assert_eq!(r.validate(), Ok(()));
    }
}

#[test]
fn every_field_reads_from_its_camel_case_name() {
    // GIVEN a request using every field
    let raw = json!({
        "mode": "chat",
        "objective": "Answer",
        "threadId": "t-1",
        "briefId": "b-1",
        "state": { "brief": { "topic": "launch" }, "clientProfile": { "tone": "warm" }, "assets": [] },
        "options": {
            "toolPolicy": "auto",
            "toolsAllowlist": ["web_search"],
            "temperature": 0.5,
            "maxTurns": 3,
            "maxRevisionCycles": 2,
            "qualityThreshold": 0.9,
            "acceptanceCriteria": ["mentions the date"],
            "onDisconnect": "cancel",
            "budget": { "maxTokens": 1000, "maxSeconds": 60, "maxSteps": 5 },
            "targetAgentId": "generation",
            "systemPromptOverride": "Be brief.",
            "requireApproval": true
        },
        "idempotencyKey": "k-1"
    });
    let r = valid(raw.clone());
    // THEN each lands where it belongs
    assert_eq!(r.mode, Mode::Chat);
    assert_eq!(r.thread_id.as_deref(), Some("t-1"));
    assert_eq!(r.brief_id.as_deref(), Some("b-1"));
    assert_eq!(r.state.client_profile, Some(json!({ "tone": "warm" })));
    assert_eq!(r.options.tool_policy, Some(ToolPolicy::Auto));
    assert_eq!(r.options.max_turns, Some(3));
    assert_eq!(r.options.max_revision_cycles, 2);
    assert_eq!(r.options.quality_threshold, 0.9);
    assert_eq!(r.options.on_disconnect, OnDisconnect::Cancel);
    assert_eq!(r.options.budget.max_steps, Some(5));
    assert_eq!(r.options.target_agent_id.as_deref(), Some("generation"));
    assert!(r.options.require_approval);
    assert_eq!(r.idempotency_key.as_deref(), Some("k-1"));
    assert_eq!(r.validate(), Ok(()));
    // AND it serializes back to the same camelCase document
    assert_eq!(serde_json::to_value(&r).unwrap_or_default(), raw);
}

#[test]
fn execution_depth_is_an_alias_of_max_revision_cycles() {
    let r = valid(json!({ "objective": "x", "options": { "executionDepth": 3 } }));
    assert_eq!(r.options.max_revision_cycles, 3);
}

#[test]
fn unknown_fields_are_refused_by_name() {
    // GIVEN requests with a misspelt field at each level
    for (raw, field) in [
        (json!({ "objective": "x", "objectve": "y" }), "objectve"),
        (
            json!({ "objective": "x", "options": { "qualityTreshold": 0.9 } }),
            "qualityTreshold",
        ),
        (
            json!({ "objective": "x", "options": { "budget": { "maxToken": 5 } } }),
            "maxToken",
        ),
        (
            json!({ "objective": "x", "state": { "client_profile": {} } }),
            "client_profile",
        ),
    ] {
        // THEN parsing fails and the error names the field
        let err = parse(raw.clone()).err().map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains(field)),
            "{raw}: {err:?}"
        );
    }
}

#[test]
fn validation_errors_name_the_field() {
    let base = RunRequest::new("Write a post");
    type Breaker = Box<dyn Fn(&mut RunRequest)>;
    let cases: Vec<(&str, Breaker)> = vec![
        ("objective", Box::new(|r| r.objective = "   \n".into())),
        ("objective", Box::new(|r| r.objective = "x".repeat(4_001))),
        (
            "options.systemPromptOverride",
            Box::new(|r| r.options.system_prompt_override = Some("p".repeat(8_001))),
        ),
        (
            "options.qualityThreshold",
            Box::new(|r| r.options.quality_threshold = 1.01),
        ),
        (
            "options.qualityThreshold",
            Box::new(|r| r.options.quality_threshold = -0.1),
        ),
    ];
    for (field, break_it) in cases {
        // GIVEN a request that breaks one rule
        let mut r = base.clone();
        break_it(&mut r);
        // WHEN it is validated
        let err = r.validate().err();
        // THEN the error names the field, and so does its message
        assert_eq!(err.as_ref().map(|e| e.field.as_str()), Some(field));
        assert!(err.is_some_and(|e| e.to_string().starts_with(field)));
    }
}

#[test]
fn values_at_the_limits_are_accepted() {
    let mut r = RunRequest::new("é".repeat(4_000));
    r.options.system_prompt_override = Some("p".repeat(8_000));
    r.options.quality_threshold = 1.0;
    assert_eq!(r.validate(), Ok(()));
    r.options.quality_threshold = 0.0;
    assert_eq!(r.validate(), Ok(()));
}
