#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the assertion in a test

//! The planner and specialists against a scripted model: what they send, what they accept.

use std::sync::Arc;

use orchestrator_agents::{
    DeltaSink, NoDeltas, PlanContext, Planner, PriorOutput, Qa, Specialist, StepContext,
    default_specialists, prompts,
};
use orchestrator_core::fakes::ScriptedModel;
use orchestrator_core::ports::ModelError;
use orchestrator_core::types::{Plan, PlanStep, RunRequest, StepStatus};
use serde_json::json;

fn caps() -> Vec<String> {
    ["finalize", "generation", "qa", "strategy"]
        .map(String::from)
        .to_vec()
}

#[tokio::test]
async fn an_unparsable_plan_gets_one_repair_request_quoting_the_problem() {
    // GIVEN a model whose first plan is prose and whose second is a valid patch
    let model = Arc::new(ScriptedModel::new([
        Ok("Sure! I would start with research, then write.".to_owned()),
        Ok(r#"```json
{"add": ["Research the audience", "Write the draft", "Review the draft"]}
```"#
            .to_owned()),
    ]));
    let planner = Planner::new(model.clone());
    let request = RunRequest::new("Write a launch post");
    // WHEN it plans
    let outcome = planner
        .plan(
            PlanContext {
                request: &request,
                plan: &Plan::default(),
                reason: None,
                capabilities: &caps(),
            },
            &NoDeltas,
        )
        .await
        .unwrap();
    // THEN the repair request quoted the parse error, and the patch is usable
    assert!(outcome.repaired);
    let sent = model.requests();
    assert_eq!(sent.len(), 2);
    let repair = &sent[1].messages.last().unwrap().content;
    assert!(repair.contains("no JSON object"), "{repair}");
    let capabilities: Vec<_> = outcome
        .patch
        .steps_add
        .iter()
        .map(|s| s.capability().unwrap().to_owned())
        .collect();
    // AND a finalize step was added after the leaves, since the planner forgot it
    assert_eq!(capabilities, ["strategy", "generation", "qa", "finalize"]);
    assert!(outcome.usage.total() > 0, "both calls' tokens are counted");
}

#[tokio::test]
async fn a_plan_still_unusable_after_every_attempt_fails_visibly() {
    let model = Arc::new(ScriptedModel::new([
        Ok("{}".to_owned()),
        Ok("I can't help with that.".to_owned()),
        Ok(r#"{"stepsAdd": [{"capabilityId": "seo", "label": "Optimise keywords"}]}"#.to_owned()),
    ]));
    let planner = Planner::new(model);
    let request = RunRequest::new("x");
    let err = planner
        .plan(
            PlanContext {
                request: &request,
                plan: &Plan::default(),
                reason: None,
                capabilities: &caps(),
            },
            &NoDeltas,
        )
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("after 3 attempts") && text.contains("seo"),
        "{text}"
    );
}

fn step(id: &str, capability: &str) -> PlanStep {
    PlanStep {
        id: id.into(),
        capability_id: Some(capability.into()),
        action: None,
        label: Some(format!("{capability} step")),
        status: StepStatus::InProgress,
        depends_on: vec![],
        note: None,
        acceptance_criteria: vec![],
    }
}

#[tokio::test]
async fn qa_reports_every_criterion_and_its_pass_follows_the_threshold() {
    // GIVEN a QA reply that claims a pass below the threshold and skips a criterion
    let model = Arc::new(ScriptedModel::new([Ok(
        r#"{"score": 0.6, "pass": true, "issues": ["too long"], "criteria": [{"id": "ac1", "passed": true}]}"#.to_owned(),
    )]));
    let mut request = RunRequest::new("Write a post");
    request.options.acceptance_criteria =
        vec!["Has a call to action".into(), "Under 100 words".into()];
    let ctx = StepContext {
        run_id: "r".into(),
        request,
        step: step("s3", "qa"),
        attempt: 1,
        inputs: vec![PriorOutput {
            step_id: "s2".into(),
            capability_id: "generation".into(),
            output: json!({"text": "Hello"}),
        }],
        hitl_remaining: 3,
        resume: None,
    };
    // WHEN QA runs
    let out = Qa::new(model).run(&ctx, &NoDeltas).await.unwrap();
    // THEN pass is recomputed from the threshold and the missing criterion is reported as not passed
    assert_eq!(out.output["pass"], false);
    assert_eq!(out.output["criteria"][1]["id"], "ac2");
    assert_eq!(out.output["criteria"][1]["passed"], false);
}

struct Collect(std::sync::Mutex<Vec<String>>);

#[async_trait::async_trait]
impl DeltaSink for Collect {
    async fn delta(&self, text: &str) {
        self.0.lock().unwrap().push(text.to_owned());
    }
}

#[tokio::test]
async fn specialists_never_see_the_planner_prompt_and_the_writer_streams() {
    // GIVEN the reference team on a scripted model
    let model = Arc::new(ScriptedModel::new([
        Ok(r#"{"audience": "devs", "angle": "fast"}"#.to_owned()),
        Ok("A short draft with words".to_owned()),
    ]));
    let team = default_specialists(model.clone());
    let request = RunRequest::new("Write a post");
    let mut ctx = StepContext {
        run_id: "r".into(),
        request,
        step: step("s1", "strategy"),
        attempt: 1,
        inputs: vec![],
        hitl_remaining: 3,
        resume: None,
    };
    // WHEN strategy and generation run
    team["strategy"].run(&ctx, &NoDeltas).await.unwrap();
    ctx.step = step("s2", "generation");
    ctx.inputs.push(PriorOutput {
        step_id: "s1".into(),
        capability_id: "strategy".into(),
        output: json!({"audience": "devs", "angle": "fast"}),
    });
    let sink = Collect(Default::default());
    let out = team["generation"].run(&ctx, &sink).await.unwrap();
    // THEN the draft streamed in pieces that add up to the output
    let pieces = sink.0.lock().unwrap().clone();
    assert!(pieces.len() > 1);
    assert_eq!(pieces.concat(), out.output["text"].as_str().unwrap());
    // AND no request carried the planner's prompt
    for r in model.requests() {
        assert!(!r.system.contains(prompts::PLANNER.lines().next().unwrap()));
        assert!(r.messages.iter().all(|m| !m.content.contains("planner")));
    }
}

#[tokio::test]
async fn a_throttled_model_is_a_retryable_failure_and_a_bad_request_is_not() {
    let team = default_specialists(Arc::new(ScriptedModel::new([
        Err(ModelError::Throttled("slow down".into())),
        Err(ModelError::Provider {
            status: 400,
            message: "bad".into(),
        }),
    ])));
    let ctx = StepContext {
        run_id: "r".into(),
        request: RunRequest::new("x"),
        step: step("s1", "strategy"),
        attempt: 1,
        inputs: vec![],
        hitl_remaining: 3,
        resume: None,
    };
    assert!(
        team["strategy"]
            .run(&ctx, &NoDeltas)
            .await
            .unwrap_err()
            .retryable()
    );
    assert!(
        !team["strategy"]
            .run(&ctx, &NoDeltas)
            .await
            .unwrap_err()
            .retryable()
    );
}
