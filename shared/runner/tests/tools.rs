#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the assertion in a test

//! Tools for specialists, through whole runs on a scripted model: the calls and results in the
//! stream, invalid arguments and refusals sent back to the model, the turn limit, `hitl_request`
//! pausing and resuming a run, the per-run cap, and clean handoffs.

use std::sync::Arc;

use orchestrator_agents::{Planner, default_specialists, prompts};
use orchestrator_core::engine::RunState;
use orchestrator_core::event::{Event, EventKind};
use orchestrator_core::fakes::{Scripted, ScriptedModel};
use orchestrator_core::ports::{ChatRole, EventLog, ModelError, Purpose, RunStore, SystemClock};
use orchestrator_core::tools::ToolChoice;
use orchestrator_core::types::{RunRequest, RunStatus, ToolPolicy};
use orchestrator_runner::{Delivered, Runner, RunnerConfig, Started};
use orchestrator_store::SqliteStore;
use serde_json::{Value, json};

type Reply = Result<Scripted, ModelError>;

/// The planner's reply: strategy, then generation, then qa (finalize is added after it).
fn plan() -> Reply {
    Ok(Scripted::text(
        json!({"add": [
            {"id": "s1", "capabilityId": "strategy", "label": "Research the audience"},
            {"id": "s2", "capabilityId": "generation", "label": "Write the draft", "dependsOn": ["s1"]},
            {"id": "s3", "capabilityId": "qa", "label": "Review the draft", "dependsOn": ["s2"]},
        ]})
        .to_string(),
    ))
}

fn strategy() -> Reply {
    Ok(Scripted::text(
        r#"{"audience": "developers", "angle": "sync that never loses a file", "platform": "linkedin"}"#,
    ))
}

fn draft(text: &str) -> Reply {
    Ok(Scripted::text(text))
}

fn verdict() -> Reply {
    Ok(Scripted::text(
        r#"{"score": 0.9, "pass": true, "issues": [], "criteria": []}"#,
    ))
}

fn tool(name: &str, args: Value) -> Reply {
    Ok(Scripted::tool(name, args))
}

struct Harness {
    runner: Runner,
    model: Arc<ScriptedModel>,
    store: Arc<SqliteStore>,
}

fn harness(script: Vec<Reply>) -> Harness {
    let store = Arc::new(SqliteStore::open_in_memory().unwrap());
    let model = Arc::new(ScriptedModel::scripted(script));
    let runner = Runner::new(
        store.clone(),
        Planner::new(model.clone()),
        default_specialists(model.clone()),
        Arc::new(SystemClock),
        RunnerConfig::default(),
    );
    Harness {
        runner,
        model,
        store,
    }
}

impl Harness {
    async fn start(&self, request: RunRequest) -> (String, RunStatus) {
        let Started::New(launch) = self.runner.start(request, None).await.unwrap() else {
            panic!("a new run");
        };
        let run_id = launch.state.run_id.clone();
        let status = self.runner.drive(*launch).await.unwrap();
        self.explain(&run_id).await;
        (run_id, status)
    }

    async fn events(&self, run_id: &str) -> Vec<Event> {
        self.store
            .read_after(run_id, 0, 100_000)
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.event)
            .collect()
    }

    /// Prints the run's warnings and errors (shown when a test fails).
    async fn explain(&self, run_id: &str) {
        for e in self.events(run_id).await {
            if matches!(e.kind, EventKind::Warning { .. } | EventKind::Error { .. }) {
                eprintln!("{}", serde_json::to_string(&e.kind).unwrap());
            }
        }
    }

    async fn state(&self, run_id: &str) -> RunState {
        self.store.load_run(run_id).await.unwrap().unwrap()
    }

    /// Answers the open checkpoint and drives the run on.
    async fn answer(&self, run_id: &str, comment: &str) -> RunStatus {
        let checkpoint = self.state(run_id).await.checkpoint.expect("a checkpoint");
        let delivered = self
            .runner
            .answer(run_id, &checkpoint.id, true, Some(comment.to_owned()))
            .await
            .unwrap();
        let Delivered::Applied(launch) = delivered else {
            panic!("the run was not live");
        };
        self.runner.drive(*launch).await.unwrap()
    }
}

/// (type, name, data) of the tool events, in order.
fn tool_events(events: &[Event]) -> Vec<(&'static str, String, Value)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::ToolCall { message, data } => {
                Some(("tool_call", message.clone(), data.clone()))
            }
            EventKind::ToolResult { message, data } => {
                Some(("tool_result", message.clone(), data.clone()))
            }
            _ => None,
        })
        .collect()
}

fn tool_names(request: &orchestrator_core::ports::ModelRequest) -> Vec<String> {
    request.tools.iter().map(|t| t.name.clone()).collect()
}

#[tokio::test]
async fn a_tool_call_and_its_result_are_in_the_stream_and_fed_back_to_the_model() {
    // GIVEN a QA specialist that measures the draft with text_stats before its verdict
    let h = harness(vec![
        plan(),
        strategy(),
        draft("Acme Sync keeps every file. Try it today!"),
        tool(
            "text_stats",
            json!({"text": "Acme Sync keeps every file. Try it today!", "platform": "linkedin"}),
        ),
        verdict(),
    ]);
    // WHEN the run goes
    let (run_id, status) = h.start(RunRequest::new("Write a launch post")).await;
    // THEN it completes, and the stream has the call and then its result, with the step id
    assert_eq!(status, RunStatus::Completed);
    let events = h.events(&run_id).await;
    let tools = tool_events(&events);
    assert_eq!(tools.len(), 2, "{tools:?}");
    assert_eq!(
        (tools[0].0, tools[0].1.as_str()),
        ("tool_call", "text_stats")
    );
    assert_eq!(tools[0].2["args"]["platform"], "linkedin");
    assert_eq!(tools[0].2["stepId"], "s3");
    assert_eq!(
        (tools[1].0, tools[1].1.as_str()),
        ("tool_result", "text_stats")
    );
    assert_eq!(tools[1].2["result"]["words"], 8);
    assert_eq!(tools[1].2["result"]["platform"]["fits"], true);
    assert_eq!(tools[1].2["stepId"], "s3");
    // AND the call came after QA's handoff and before QA's metrics
    let pos =
        |pred: &dyn Fn(&EventKind) -> bool| events.iter().position(|e| pred(&e.kind)).unwrap();
    let call = pos(&|k| matches!(k, EventKind::ToolCall { .. }));
    let metrics =
        pos(&|k| matches!(k, EventKind::Metrics { data: Some(d), .. } if d.step_id == "s3"));
    assert!(call < metrics);
    // AND the model got the result as a tool message answering its call
    let requests = h.model.requests();
    let review: Vec<_> = requests
        .iter()
        .filter(|r| r.purpose == Purpose::Review)
        .collect();
    assert_eq!(review.len(), 2);
    assert!(tool_names(review[0]).contains(&"text_stats".to_owned()));
    let answer = review[1].messages.last().unwrap();
    assert_eq!(answer.role, ChatRole::Tool);
    assert_eq!(answer.tool_call_id.as_deref(), Some("call-text_stats-0"));
    assert!(!answer.is_error);
    let result: Value = serde_json::from_str(&answer.content).unwrap();
    assert_eq!(result["words"], 8);
    let asked = &review[1].messages[review[1].messages.len() - 2];
    assert_eq!(asked.role, ChatRole::Assistant);
    assert_eq!(asked.tool_calls[0].name, "text_stats");
}

#[tokio::test]
async fn invalid_arguments_go_back_to_the_model_as_a_tool_error() {
    // GIVEN a strategist that misspells an argument, then a valid call, then its strategy
    let h = harness(vec![
        plan(),
        tool("platform_constraints", json!({"platfrom": "linkedin"})),
        tool("platform_constraints", json!({"platform": "linkedin"})),
        strategy(),
        draft("A draft."),
        verdict(),
    ]);
    // WHEN the run goes
    let (run_id, status) = h.start(RunRequest::new("Write a launch post")).await;
    // THEN nothing crashed: the run completed
    assert_eq!(status, RunStatus::Completed);
    // AND the first result is an error naming the bad field, the second the real constraints
    let tools = tool_events(&h.events(&run_id).await);
    assert_eq!(tools.len(), 4, "{tools:?}");
    let error = tools[1].2["result"]["error"].as_str().unwrap();
    assert!(error.starts_with("invalid arguments"), "{error}");
    assert!(error.contains("platfrom"), "{error}");
    assert_eq!(tools[3].2["result"]["maxChars"], 3000);
    // AND the model read that error as a failed tool result
    let strategy_requests: Vec<_> = h
        .model
        .requests()
        .into_iter()
        .filter(|r| r.purpose == Purpose::Strategy)
        .collect();
    let reported = strategy_requests[1].messages.last().unwrap();
    assert_eq!(reported.role, ChatRole::Tool);
    assert!(reported.is_error);
    assert!(reported.content.contains("platfrom"));
}

#[tokio::test]
async fn a_tool_outside_the_allowlist_is_not_offered_and_its_call_is_refused() {
    // GIVEN a request that allows only text_stats, and a QA that calls platform_constraints
    let mut request = RunRequest::new("Write a launch post");
    request.options.tools_allowlist = Some(vec!["text_stats".into()]);
    let h = harness(vec![
        plan(),
        strategy(),
        draft("A draft."),
        tool("platform_constraints", json!({"platform": "x"})),
        verdict(),
    ]);
    // WHEN the run goes
    let (run_id, status) = h.start(request).await;
    assert_eq!(status, RunStatus::Completed);
    // THEN each specialist was offered its own tools within the allowlist: QA text_stats only,
    // strategy (which has no text_stats) nothing
    let requests = h.model.requests();
    for r in &requests {
        match r.purpose {
            Purpose::Review | Purpose::Generate => assert_eq!(tool_names(r), ["text_stats"]),
            _ => assert!(r.tools.is_empty(), "{:?}: {:?}", r.purpose, tool_names(r)),
        }
    }
    // AND the call outside it was refused, in the stream and to the model
    let tools = tool_events(&h.events(&run_id).await);
    assert_eq!(tools[0].1, "platform_constraints");
    let refusal = tools[1].2["result"]["error"].as_str().unwrap();
    assert!(refusal.starts_with("refused"), "{refusal}");
    let last_review = requests
        .iter()
        .rfind(|r| r.purpose == Purpose::Review)
        .unwrap();
    let told = last_review.messages.last().unwrap();
    assert!(told.is_error && told.content.contains("refused"));
}

#[tokio::test]
async fn tool_policy_off_offers_nothing_and_required_forces_the_first_call() {
    // GIVEN toolPolicy off
    let mut off = RunRequest::new("Write a launch post");
    off.options.tool_policy = Some(ToolPolicy::Off);
    let h = harness(vec![plan(), strategy(), draft("A draft."), verdict()]);
    let (_, status) = h.start(off).await;
    assert_eq!(status, RunStatus::Completed);
    // THEN no request carried tools
    assert!(h.model.requests().iter().all(|r| r.tools.is_empty()));

    // GIVEN toolPolicy required
    let mut required = RunRequest::new("Write a launch post");
    required.options.tool_policy = Some(ToolPolicy::Required);
    let h = harness(vec![
        plan(),
        tool("platform_constraints", json!({"platform": "linkedin"})),
        strategy(),
        draft("A draft."),
        verdict(),
    ]);
    let (_, status) = h.start(required).await;
    assert_eq!(status, RunStatus::Completed);
    // THEN each specialist's first call must call a tool, and the next ones may answer
    let strategy: Vec<_> = h
        .model
        .requests()
        .into_iter()
        .filter(|r| r.purpose == Purpose::Strategy)
        .collect();
    assert_eq!(strategy[0].tool_choice, ToolChoice::Required);
    assert_eq!(strategy[1].tool_choice, ToolChoice::Auto);
}

#[tokio::test]
async fn the_turn_limit_stops_the_tool_loop() {
    // GIVEN maxTurns 2 and a QA that keeps calling tools, with its verdict on the last turn
    let mut request = RunRequest::new("Write a launch post");
    request.options.max_turns = Some(2);
    let h = harness(vec![
        plan(),
        strategy(),
        draft("A draft."),
        tool("text_stats", json!({"text": "A draft."})),
        Ok(Scripted {
            text: r#"{"score": 0.9, "pass": true, "issues": []}"#.into(),
            ..Scripted::tool("text_stats", json!({"text": "A draft."}))
        }),
    ]);
    // WHEN the run goes
    let (run_id, status) = h.start(request).await;
    assert_eq!(status, RunStatus::Completed);
    // THEN QA called the model twice; the second time tools were switched off
    let review: Vec<_> = h
        .model
        .requests()
        .into_iter()
        .filter(|r| r.purpose == Purpose::Review)
        .collect();
    assert_eq!(review.len(), 2);
    assert_eq!(review[0].tool_choice, ToolChoice::Auto);
    assert_eq!(review[1].tool_choice, ToolChoice::None);
    // AND the call past the limit was refused and a warning says so
    let events = h.events(&run_id).await;
    let tools = tool_events(&events);
    assert_eq!(tools.len(), 4);
    assert!(
        tools[3].2["result"]["error"]
            .as_str()
            .unwrap()
            .contains("turn limit")
    );
    assert!(events.iter().any(|e| matches!(
        &e.kind,
        EventKind::Warning { message, .. } if message.contains("turn limit")
    )));
}

#[tokio::test]
async fn a_turn_limit_reached_without_an_answer_fails_the_step() {
    // GIVEN maxTurns 1 and a strategist that only calls tools
    let mut request = RunRequest::new("Write a launch post");
    request.options.max_turns = Some(1);
    request.options.max_revision_cycles = 0;
    let h = harness(vec![
        plan(),
        tool("platform_constraints", json!({"platform": "x"})),
        // the replan after the failure gets no usable reply: the run fails
    ]);
    let (run_id, status) = h.start(request).await;
    // THEN the step failed visibly with the turn limit as the reason
    assert_eq!(status, RunStatus::Failed);
    let events = h.events(&run_id).await;
    assert!(events.iter().any(|e| matches!(
        &e.kind,
        EventKind::Warning { message, .. } if message.contains("Step s1 failed") && message.contains("turn limit")
    )));
}

#[tokio::test]
async fn hitl_request_pauses_the_run_and_the_answer_comes_back_as_the_tool_result() {
    // GIVEN a writer that measures something, then asks a person, then writes with the answer
    let h = harness(vec![
        plan(),
        strategy(),
        tool("platform_constraints", json!({"platform": "linkedin"})),
        tool(
            "hitl_request",
            json!({"kind": "clarify", "question": "Which launch date should the post name?", "urgency": "high"}),
        ),
    ]);
    // WHEN the run goes
    let (run_id, status) = h.start(RunRequest::new("Write a launch post")).await;
    // THEN it pauses at a checkpoint with a hitl_request event
    assert_eq!(status, RunStatus::PendingHitl);
    let state = h.state(&run_id).await;
    let checkpoint = state.checkpoint.clone().unwrap();
    assert_eq!(checkpoint.step_id, "s2");
    assert_eq!(
        checkpoint.question,
        "Which launch date should the post name?"
    );
    let events = h.events(&run_id).await;
    let hitl = events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::HitlRequest { data } => Some(data.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(hitl.checkpoint_id, checkpoint.id);
    assert_eq!(serde_json::to_value(hitl.kind).unwrap(), "clarify");
    assert_eq!(serde_json::to_value(hitl.urgency).unwrap(), "high");
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Complete { .. }))
    );

    // WHEN a person answers
    h.model
        .push([draft("Acme Sync launches on March 3."), verdict()]);
    let status = h.answer(&run_id, "March 3").await;
    // THEN the run completes
    assert_eq!(status, RunStatus::Completed);
    // AND the writer carried on from its conversation: the answer is the hitl_request's result
    let generate: Vec<_> = h
        .model
        .requests()
        .into_iter()
        .filter(|r| r.purpose == Purpose::Generate)
        .collect();
    assert_eq!(generate.len(), 3, "two calls before the pause, one after");
    let resumed = &generate[2];
    let answer = resumed.messages.last().unwrap();
    assert_eq!(answer.role, ChatRole::Tool);
    assert_eq!(answer.tool_call_id.as_deref(), Some("call-hitl_request-0"));
    let result: Value = serde_json::from_str(&answer.content).unwrap();
    assert_eq!(result["answer"], "March 3");
    assert_eq!(result["decision"], "approved");
    // AND the tool that ran before the pause did not run again: its result is in the
    // conversation once and in the stream once
    let events = h.events(&run_id).await;
    let tools = tool_events(&events);
    let ran = |name: &str| {
        tools
            .iter()
            .filter(|t| t.0 == "tool_result" && t.1 == name)
            .count()
    };
    assert_eq!(ran("platform_constraints"), 1);
    assert_eq!(ran("hitl_request"), 1);
    assert_eq!(
        resumed
            .messages
            .iter()
            .filter(|m| m.role == ChatRole::Tool)
            .count(),
        2
    );
    // AND the draft is the resumed step's answer
    let report = h.runner.report(&run_id).await.unwrap();
    let result = &report.final_bundle.unwrap().result;
    assert_eq!(result.content, "Acme Sync launches on March 3.");
}

#[tokio::test]
async fn the_fourth_request_for_a_person_is_denied_and_the_specialist_goes_on() {
    // GIVEN a writer that asks a person four times
    let ask = |n: u32| {
        tool(
            "hitl_request",
            json!({"kind": "approval", "question": format!("May I go on? ({n})")}),
        )
    };
    let h = harness(vec![plan(), strategy(), ask(1)]);
    let (run_id, mut status) = h.start(RunRequest::new("Write a launch post")).await;
    // WHEN each of the first three is answered
    for n in 2..=4 {
        assert_eq!(status, RunStatus::PendingHitl, "request {}", n - 1);
        h.model.push([ask(n)]);
        if n == 4 {
            h.model.push([draft("The draft."), verdict()]);
        }
        status = h.answer(&run_id, "yes").await;
    }
    // THEN the fourth was denied without a pause and the run completed
    assert_eq!(status, RunStatus::Completed);
    let events = h.events(&run_id).await;
    let asked = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::HitlRequest { .. }))
        .count();
    assert_eq!(asked, 3);
    let tools = tool_events(&events);
    let results: Vec<&Value> = tools
        .iter()
        .filter(|t| t.0 == "tool_result" && t.1 == "hitl_request")
        .map(|t| &t.2["result"])
        .collect();
    assert_eq!(results.len(), 4);
    assert_eq!(results[3]["error"], "denied: too many requests");
    // AND the model read the denial
    let last = h
        .model
        .requests()
        .into_iter()
        .rfind(|r| r.purpose == Purpose::Generate)
        .unwrap();
    let denial = last.messages.last().unwrap();
    assert!(denial.is_error && denial.content.contains("too many requests"));
    assert_eq!(h.state(&run_id).await.hitl_requests, 3);
}

#[tokio::test]
async fn specialists_never_receive_the_planners_prompt_or_the_plan() {
    // GIVEN a run whose specialists read the artifacts they are handed
    let h = harness(vec![
        plan(),
        strategy(),
        tool("read_artifact", json!({})),
        tool("read_artifact", json!({"stepId": "s1"})),
        draft("A draft for developers."),
        tool("read_artifact", json!({})),
        verdict(),
    ]);
    let (run_id, status) = h.start(RunRequest::new("Write a launch post")).await;
    assert_eq!(status, RunStatus::Completed);
    // THEN the planner's request had the planner's prompt (so the check below means something)
    let requests = h.model.requests();
    assert_eq!(requests[0].purpose, Purpose::Plan);
    assert_eq!(requests[0].system, prompts::PLANNER);
    let planner_line = prompts::PLANNER
        .lines()
        .find(|l| l.trim().len() > 20)
        .unwrap();
    // AND no specialist request carries it, or the plan, or the planner's view of the run
    let specialist: Vec<_> = requests
        .iter()
        .filter(|r| r.purpose != Purpose::Plan)
        .collect();
    assert_eq!(specialist.len(), 6);
    for r in specialist {
        assert_ne!(r.system, prompts::PLANNER);
        assert!(!r.system.contains(planner_line));
        for m in &r.messages {
            for forbidden in [
                planner_line,
                "stepsAdd",
                "capabilities",
                "dependsOn",
                "replan",
            ] {
                assert!(
                    !m.content.contains(forbidden),
                    "{:?} request carried {forbidden:?}: {}",
                    r.purpose,
                    m.content
                );
            }
        }
    }
    // AND the artifacts reader hands out only the step's ancestors' outputs
    let tools = tool_events(&h.events(&run_id).await);
    let listing = &tools[1].2["result"]["artifacts"];
    assert_eq!(listing.as_array().unwrap().len(), 1);
    assert_eq!(listing[0]["stepId"], "s1");
    assert_eq!(tools[3].2["result"]["output"]["audience"], "developers");
    let qa_listing = &tools[5].2["result"]["artifacts"];
    let ids: Vec<&str> = qa_listing
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["stepId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["s1", "s2"]);
}
