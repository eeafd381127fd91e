#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the assertion in a test

//! Prompts from a folder replace the built-in ones, role by role.

use std::sync::Arc;

use orchestrator_agents::{NoDeltas, PlanContext, Planner, Prompts, prompts};
use orchestrator_core::fakes::ScriptedModel;
use orchestrator_core::types::{Plan, RunRequest};

#[test]
fn a_folder_replaces_only_the_prompts_it_has() {
    // GIVEN a folder with a planner prompt only
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("planner.md"), "You plan. Reply with JSON.").unwrap();

    // WHEN the prompts are loaded
    let (loaded, used) = Prompts::from_dir(dir.path()).unwrap();

    // THEN the planner's is replaced and the others stay built in
    assert_eq!(used, ["planner.md"]);
    assert_eq!(loaded.planner, "You plan. Reply with JSON.");
    assert_eq!(loaded.writer, prompts::WRITER);
    assert_eq!(loaded.qa, prompts::QA);
}

#[test]
fn a_folder_that_cannot_be_read_is_a_clear_error() {
    // GIVEN a path that does not exist, and a folder with an empty prompt
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    std::fs::write(dir.path().join("qa.md"), "  \n").unwrap();

    // WHEN they are loaded THEN each error names the path
    let e = Prompts::from_dir(&missing).unwrap_err().to_string();
    assert!(e.contains("nope"), "{e}");
    let e = Prompts::from_dir(dir.path()).unwrap_err().to_string();
    assert!(e.contains("qa.md") && e.contains("empty"), "{e}");
}

#[tokio::test]
async fn the_planner_sends_the_prompt_it_was_given() {
    // GIVEN a planner with a replaced prompt
    let model = Arc::new(ScriptedModel::new([Ok(
        r#"{"add": ["Write the draft"]}"#.to_owned()
    )]));
    let custom = Prompts {
        planner: "Custom planner prompt".into(),
        ..Prompts::builtin()
    };
    let planner = Planner::with_prompts(model.clone(), Arc::new(custom));

    // WHEN it plans
    planner
        .plan(
            PlanContext {
                request: &RunRequest::new("Write a launch post"),
                plan: &Plan::default(),
                reason: None,
                capabilities: &["generation".to_owned(), "finalize".to_owned()],
            },
            &NoDeltas,
        )
        .await
        .unwrap();

    // THEN the model got that prompt
    assert_eq!(model.requests()[0].system, "Custom planner prompt");
}
