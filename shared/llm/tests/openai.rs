#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the assertion in a test

//! The OpenAI-compatible adapter against a real HTTP server on loopback.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use orchestrator_agents::{PlanContext, Planner};
use orchestrator_core::ports::{ChatMessage, Model, ModelError, ModelRequest, Purpose, StreamItem};
use orchestrator_core::types::{Plan, RunRequest, Usage};
use orchestrator_llm::{ApiKey, OpenAiModel, Resilience};
use serde_json::{Value, json};
use support::{MockServer, Reply};

fn fast() -> Resilience {
    Resilience {
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
        max_retries: 2,
        base_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
    }
}

fn model(server: &MockServer, resilience: Resilience) -> OpenAiModel {
    OpenAiModel::new(
        &format!("{}/v1", server.url),
        Some(ApiKey::new("sk-test")),
        "test-model",
        resilience,
    )
    .unwrap()
}

fn request(json: bool) -> ModelRequest {
    ModelRequest {
        purpose: Purpose::Generate,
        system: "You are the writer.".into(),
        messages: vec![ChatMessage::user("Write about Acme Sync")],
        temperature: Some(0.2),
        max_tokens: Some(100),
        json,
        schema: None,
        tools: Vec::new(),
        tool_choice: Default::default(),
    }
}

fn chunk(text: &str) -> String {
    json!({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
        .to_string()
}

fn finish() -> String {
    json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}).to_string()
}

fn usage(input: u64, output: u64) -> String {
    json!({"choices": [], "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output}}).to_string()
}

fn completion(text: &str) -> Value {
    json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}})
}

async fn collect(model: &OpenAiModel, req: ModelRequest) -> Vec<Result<StreamItem, ModelError>> {
    model.stream(req).collect().await
}

#[tokio::test]
async fn a_stream_is_assembled_in_order_with_its_usage() {
    // GIVEN a server streaming three pieces, the finish marker, usage and [DONE]
    let server = MockServer::script(vec![Reply::sse(&[
        chunk("Intro"),
        chunk("ducing "),
        chunk("Acme Sync"),
        finish(),
        usage(42, 3),
        "[DONE]".into(),
    ])])
    .await;
    let model = model(&server, fast());

    // WHEN the reply is streamed
    let items = collect(&model, request(false)).await;

    // THEN the text comes in order, then the usage, and nothing else
    let items: Vec<StreamItem> = items.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        items,
        vec![
            StreamItem::Text("Intro".into()),
            StreamItem::Text("ducing ".into()),
            StreamItem::Text("Acme Sync".into()),
            StreamItem::Usage(Usage {
                input_tokens: 42,
                output_tokens: 3
            }),
        ]
    );
    // AND the request asked for a stream with usage, with the key and the messages in order
    let sent = server.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].path, "/v1/chat/completions");
    assert_eq!(sent[0].headers["authorization"], "Bearer sk-test");
    let body = sent[0].json();
    assert_eq!(body["model"], "test-model");
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert_eq!(
        body["messages"][0],
        json!({"role": "system", "content": "You are the writer."})
    );
    assert_eq!(
        body["messages"][1],
        json!({"role": "user", "content": "Write about Acme Sync"})
    );
    assert_eq!(body["max_tokens"], 100);
    assert!(body.get("response_format").is_none());
}

#[tokio::test]
async fn a_completion_returns_text_and_usage_and_asks_for_json_mode() {
    // GIVEN a server answering one completion
    let server = MockServer::script(vec![Reply::json(200, completion("{\"ok\":true}"))]).await;
    let model = model(&server, fast());

    // WHEN a JSON reply is asked for
    let reply = model.complete(request(true)).await.unwrap();

    // THEN text and usage come back, and the request used response_format json_object
    assert_eq!(reply.text, "{\"ok\":true}");
    assert_eq!(
        reply.usage,
        Usage {
            input_tokens: 11,
            output_tokens: 7
        }
    );
    let body = server.requests()[0].json();
    assert_eq!(body["response_format"], json!({"type": "json_object"}));
    assert_eq!(body["stream"], false);
}

#[tokio::test]
async fn an_endpoint_without_json_mode_is_asked_again_without_it() {
    // GIVEN a server that refuses response_format, then answers
    let server = MockServer::script(vec![
        Reply::json(400, json!({"error": {"message": "Unrecognized request argument supplied: response_format"}})),
        Reply::json(200, completion("{}")),
    ])
    .await;
    let model = model(&server, fast());

    // WHEN two JSON calls are made
    model.complete(request(true)).await.unwrap();
    model.complete(request(true)).await.unwrap();

    // THEN the refused option is dropped, then never sent again
    let sent = server.requests();
    assert_eq!(sent.len(), 3);
    assert!(sent[0].json().get("response_format").is_some());
    assert!(sent[1].json().get("response_format").is_none());
    assert!(sent[2].json().get("response_format").is_none());
}

#[tokio::test]
async fn throttling_is_retried_until_success() {
    // GIVEN a server that throttles twice, then answers
    let throttled = Reply::json(
        429,
        json!({"error": {"message": "Rate limit reached", "type": "requests"}}),
    )
    .header("retry-after", "0");
    let server = MockServer::script(vec![
        throttled.clone(),
        throttled,
        Reply::json(200, completion("done")),
    ])
    .await;
    let model = model(&server, fast());

    // WHEN one completion is asked for
    let reply = model.complete(request(false)).await.unwrap();

    // THEN it succeeded on the third attempt
    assert_eq!(reply.text, "done");
    assert_eq!(server.requests().len(), 3);
}

#[tokio::test]
async fn server_errors_are_retried_and_stay_retryable_when_they_persist() {
    // GIVEN a server that keeps answering 503
    let server = MockServer::script(vec![Reply::json(503, json!({"error": "overloaded"}))]).await;
    let model = model(&server, fast());

    // WHEN a stream is opened
    let items = collect(&model, request(false)).await;

    // THEN it was tried 1 + max_retries times, and the error is retryable for the engine
    assert_eq!(server.requests().len(), 3);
    assert_eq!(items.len(), 1);
    let err = items[0].clone().unwrap_err();
    assert_eq!(
        err,
        ModelError::Provider {
            status: 503,
            message: "overloaded".into()
        }
    );
    assert!(err.retryable());
}

#[tokio::test]
async fn a_bad_request_is_not_retried() {
    // GIVEN a server that answers 400
    let server = MockServer::script(vec![Reply::json(
        400,
        json!({"error": {"message": "max_tokens is too large", "type": "invalid_request_error"}}),
    )])
    .await;
    let model = model(&server, fast());

    // WHEN a completion is asked for
    let err = model.complete(request(false)).await.unwrap_err();

    // THEN one request only, and a final error naming the problem
    assert_eq!(server.requests().len(), 1);
    assert_eq!(
        err,
        ModelError::Provider {
            status: 400,
            message: "max_tokens is too large".into()
        }
    );
    assert!(!err.retryable());
}

#[tokio::test]
async fn a_stream_cut_in_the_middle_is_an_error_not_a_short_draft() {
    // GIVEN a server that drops the connection after two pieces
    let server = MockServer::script(vec![
        Reply::sse(&[chunk("Introducing "), chunk("Acme")]).cut(),
    ])
    .await;
    let model = model(&server, fast());

    // WHEN the reply is streamed
    let items = collect(&model, request(false)).await;

    // THEN the pieces that came are followed by a retryable StreamBroken, and no usage
    let last = items.last().unwrap().clone();
    assert!(matches!(last, Err(ModelError::StreamBroken(_))), "{last:?}");
    assert!(last.unwrap_err().retryable());
    assert!(!items.iter().any(|i| matches!(i, Ok(StreamItem::Usage(_)))));
    assert_eq!(
        server.requests().len(),
        1,
        "a started stream is not retried here"
    );
}

#[tokio::test]
async fn a_stream_that_ends_without_its_finish_marker_is_broken() {
    // GIVEN a server whose body ends cleanly, but before any finish_reason
    let server =
        MockServer::script(vec![Reply::sse(&[chunk("Introducing "), chunk("Acme")])]).await;
    let model = model(&server, fast());

    // WHEN the reply is streamed
    let items = collect(&model, request(false)).await;

    // THEN it ends in StreamBroken, never in a silent success
    assert!(
        matches!(items.last(), Some(Err(ModelError::StreamBroken(_)))),
        "{items:?}"
    );
}

#[tokio::test]
async fn a_server_that_does_not_answer_times_out() {
    // GIVEN a server that answers long after the request timeout
    let server = MockServer::script(vec![
        Reply::json(200, completion("late")).delayed(Duration::from_secs(30)),
    ])
    .await;
    let model = model(
        &server,
        Resilience {
            request_timeout: Duration::from_millis(200),
            ..fast()
        },
    );

    // WHEN a completion and a stream are asked for
    let err = model.complete(request(false)).await.unwrap_err();
    let items = collect(&model, request(false)).await;

    // THEN both fail with Timeout (retryable by the engine), not retried here
    assert_eq!(err, ModelError::Timeout(200));
    assert!(err.retryable());
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].clone().unwrap_err(), ModelError::Timeout(200));
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn a_stream_that_stalls_mid_way_is_broken() {
    // GIVEN a server that sends one piece, then goes silent
    let server = MockServer::script(vec![
        Reply::sse(&[chunk("Intro"), chunk("ducing"), finish(), "[DONE]".into()])
            .stalled(Duration::from_secs(30)),
    ])
    .await;
    let model = model(
        &server,
        Resilience {
            request_timeout: Duration::from_millis(300),
            ..fast()
        },
    );

    // WHEN the reply is streamed
    let items = collect(&model, request(false)).await;

    // THEN the first piece arrives, then StreamBroken
    assert_eq!(items[0], Ok(StreamItem::Text("Intro".into())));
    assert!(
        matches!(items.last(), Some(Err(ModelError::StreamBroken(_)))),
        "{items:?}"
    );
}

#[tokio::test]
async fn a_refused_connection_is_a_transport_error() {
    // GIVEN a port nobody listens on
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    drop(listener);
    let model = OpenAiModel::new(
        &url,
        None,
        "m",
        Resilience {
            max_retries: 1,
            ..fast()
        },
    )
    .unwrap();

    // WHEN a completion is asked for
    let err = model.complete(request(false)).await.unwrap_err();

    // THEN a retryable Transport error that does not quote the URL
    assert!(matches!(err, ModelError::Transport(_)), "{err:?}");
    assert!(!err.to_string().contains(&url), "{err}");
}

#[tokio::test]
async fn the_planner_repairs_invalid_json_through_the_real_adapter() {
    // GIVEN an endpoint whose first planner reply is not JSON and whose second is a valid plan
    let plan = json!({"stepsAdd": [
        {"id": "s1", "capabilityId": "generation", "label": "Write the draft"},
        {"id": "s2", "action": "finalize", "label": "Assemble", "dependsOn": ["s1"]}
    ]});
    let server = MockServer::script(vec![
        Reply::json(
            200,
            completion("Sure! Here is the plan: step 1, write; step 2, finish."),
        ),
        Reply::json(200, completion(&plan.to_string())),
    ])
    .await;
    let planner = Planner::new(Arc::new(model(&server, fast())));
    let request = RunRequest::new("Write a launch post for Acme Sync");
    let capabilities = vec!["generation".to_owned(), "finalize".to_owned()];

    // WHEN the planner plans
    let outcome = planner
        .plan(
            PlanContext {
                request: &request,
                plan: &Plan::default(),
                reason: None,
                capabilities: &capabilities,
            },
            &orchestrator_agents::NoDeltas,
        )
        .await
        .unwrap();

    // THEN the repair request fixed it, quoting the problem, and both calls' tokens count
    assert!(outcome.repaired);
    assert_eq!(outcome.patch.steps_add.len(), 2);
    assert_eq!(
        outcome.usage,
        Usage {
            input_tokens: 22,
            output_tokens: 14
        }
    );
    let sent = server.requests();
    assert_eq!(sent.len(), 2);
    let messages = sent[1].json()["messages"].as_array().unwrap().clone();
    assert_eq!(
        messages.len(),
        4,
        "system, context, the bad reply, the repair request"
    );
    assert_eq!(messages[2]["role"], "assistant");
    assert!(
        messages[3]["content"]
            .as_str()
            .unwrap()
            .contains("could not be used")
    );
}

fn tool_delta(index: u32, id: Option<&str>, name: Option<&str>, args: &str) -> String {
    let mut call = json!({"index": index, "function": {"arguments": args}});
    if let Some(id) = id {
        call["id"] = json!(id);
        call["type"] = json!("function");
    }
    if let Some(name) = name {
        call["function"]["name"] = json!(name);
    }
    json!({"choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": null}]})
        .to_string()
}

fn with_tools(mut req: ModelRequest) -> ModelRequest {
    req.tools = vec![orchestrator_core::tools::ToolSpec {
        name: "text_stats".into(),
        description: "Measure a text".into(),
        parameters: json!({"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}).into(),
    }];
    req
}

#[tokio::test]
async fn streamed_tool_call_pieces_are_assembled_into_whole_calls() {
    // GIVEN a server streaming two tool calls whose arguments arrive in pieces
    let server = MockServer::script(vec![Reply::sse(&[
        tool_delta(0, Some("call_1"), Some("text_stats"), ""),
        tool_delta(0, None, None, "{\"text\": "),
        tool_delta(0, None, None, "\"Hi there.\"}"),
        tool_delta(1, Some("call_2"), Some("text_stats"), "{not json"),
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}).to_string(),
        usage(20, 9),
        "[DONE]".into(),
    ])])
    .await;
    let model = model(&server, fast());
    // WHEN a request with a tool is streamed
    let items: Vec<StreamItem> = collect(&model, with_tools(request(false)))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    // THEN the calls come whole, in order (arguments that are not JSON stay a string), then usage
    use orchestrator_core::tools::ToolCall;
    assert_eq!(
        items,
        vec![
            StreamItem::ToolCall(ToolCall {
                id: "call_1".into(),
                name: "text_stats".into(),
                arguments: json!({"text": "Hi there."}),
            }),
            StreamItem::ToolCall(ToolCall {
                id: "call_2".into(),
                name: "text_stats".into(),
                arguments: json!("{not json"),
            }),
            StreamItem::Usage(Usage {
                input_tokens: 20,
                output_tokens: 9
            }),
        ]
    );
    // AND the request offered the tool in the OpenAI shape
    let body = server.requests()[0].json();
    assert_eq!(body["tools"][0]["type"], "function");
    assert_eq!(body["tools"][0]["function"]["name"], "text_stats");
    assert_eq!(
        body["tools"][0]["function"]["parameters"]["required"][0],
        "text"
    );
    assert_eq!(body["tool_choice"], "auto");
}

#[tokio::test]
async fn a_specialist_gets_tool_errors_and_refusals_back_over_http() {
    // GIVEN a local server whose model first calls text_stats with a bad argument and a tool
    // the request does not allow, then answers with a verdict
    use orchestrator_agents::{NoDeltas, PriorOutput, Qa, Specialist, StepContext};
    use orchestrator_core::types::{PlanStep, StepStatus};
    let server = MockServer::script(vec![
        Reply::json(
            200,
            json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "text_stats", "arguments": "{\"txt\": \"Hello\"}"}},
                {"id": "call_b", "type": "function", "function": {"name": "platform_constraints", "arguments": "{\"platform\": \"x\"}"}}
            ]}, "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 30, "completion_tokens": 12}}),
        ),
        Reply::json(
            200,
            completion(r#"{"score": 0.9, "pass": true, "issues": []}"#),
        ),
    ])
    .await;
    let model = Arc::new(model(&server, fast()));
    let mut request = RunRequest::new("Write a launch post");
    request.options.tools_allowlist = Some(vec!["text_stats".into()]);
    let ctx = StepContext {
        run_id: "r".into(),
        request,
        step: PlanStep {
            id: "s3".into(),
            capability_id: Some("qa".into()),
            action: None,
            label: Some("Review".into()),
            status: StepStatus::InProgress,
            depends_on: vec![],
            note: None,
            acceptance_criteria: vec![],
        },
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
    // THEN it finished with the verdict, both calls' tokens counted
    assert_eq!(out.output["score"], 0.9);
    assert_eq!(out.usage.input_tokens, 41);
    let sent = server.requests();
    assert_eq!(sent.len(), 2);
    // AND only the allowed tool was offered
    let first = sent[0].json();
    let offered: Vec<&str> = first["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(offered, ["text_stats"]);
    // AND the second request carried the assistant's calls and one tool message per call
    let second = sent[1].json();
    let messages = second["messages"].as_array().unwrap();
    let n = messages.len();
    assert_eq!(messages[n - 3]["role"], "assistant");
    assert_eq!(messages[n - 3]["tool_calls"][0]["id"], "call_a");
    assert_eq!(
        messages[n - 3]["tool_calls"][0]["function"]["arguments"],
        "{\"txt\":\"Hello\"}"
    );
    assert_eq!(messages[n - 2]["role"], "tool");
    assert_eq!(messages[n - 2]["tool_call_id"], "call_a");
    let invalid = messages[n - 2]["content"].as_str().unwrap();
    assert!(
        invalid.contains("invalid arguments") && invalid.contains("txt"),
        "{invalid}"
    );
    assert_eq!(messages[n - 1]["tool_call_id"], "call_b");
    assert!(
        messages[n - 1]["content"]
            .as_str()
            .unwrap()
            .contains("refused")
    );
}

// Structured replies: json_schema strict, and the fallback chain to json_object and the prompt.

/// What schemars 1.x writes for a QA verdict: `$schema`, `title`, `format`, `minimum`,
/// `default`, a nullable option, a `$defs` entry behind a `$ref`, fields left out of `required`.
fn verdict_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "VerdictReply",
        "description": "A QA verdict.",
        "type": "object",
        "properties": {
            "criteria": {"type": "array", "items": {"$ref": "#/$defs/CriterionReply"}},
            "issues": {"type": "array", "default": [], "items": {"type": "string"}},
            "pass": {"type": "boolean"},
            "score": {"description": "0.0 to 1.0.", "type": "number", "format": "double"},
            "attempts": {"type": "integer", "format": "uint32", "minimum": 0}
        },
        "required": ["score", "pass", "criteria"],
        "$defs": {
            "CriterionReply": {
                "type": "object",
                "properties": {
                    "details": {"type": ["string", "null"]},
                    "id": {"description": "ac1, ac2, ...", "type": "string"},
                    "passed": {"type": "boolean"}
                },
                "required": ["id", "passed"]
            }
        }
    })
}

const VERDICT: &str = r#"{"score":0.9,"pass":true,"issues":[],"attempts":1,"criteria":[{"id":"ac1","passed":true,"details":null}]}"#;

fn structured(schema: Value) -> ModelRequest {
    let mut req = request(true);
    req.schema = Some(orchestrator_core::ports::ReplySchema {
        name: "qa_verdict".into(),
        schema,
    });
    req
}

/// What OpenAI's strict mode refuses in a schema, by path.
fn strict_violations(node: &Value, path: &str, found: &mut Vec<String>) {
    let Some(map) = node.as_object() else {
        found.push(format!("{path}: not a schema object"));
        return;
    };
    for refused in [
        "$schema", "title", "format", "default", "minimum", "oneOf", "allOf",
    ] {
        if map.contains_key(refused) {
            found.push(format!("{path}: {refused}"));
        }
    }
    if map.contains_key("$ref") && map.len() > 1 {
        found.push(format!("{path}: $ref with siblings"));
    }
    if let Some(props) = map.get("properties").and_then(Value::as_object) {
        if map.get("additionalProperties") != Some(&json!(false)) {
            found.push(format!("{path}: additionalProperties is not false"));
        }
        let mut required: Vec<&str> = map["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        required.sort_unstable();
        let mut names: Vec<&str> = props.keys().map(String::as_str).collect();
        names.sort_unstable();
        if required != names {
            found.push(format!(
                "{path}: required {required:?} is not every property"
            ));
        }
    }
    for key in ["properties", "$defs"] {
        for (name, sub) in map
            .get(key)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            strict_violations(sub, &format!("{path}/{key}/{name}"), found);
        }
    }
    if let Some(items) = map.get("items") {
        strict_violations(items, &format!("{path}/items"), found);
    }
    for (i, sub) in map
        .get("anyOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        strict_violations(sub, &format!("{path}/anyOf/{i}"), found);
    }
}

/// The response_format a request carried: "json_schema", "json_object" or "none".
fn format_of(body: &Value) -> &str {
    body["response_format"]["type"].as_str().unwrap_or("none")
}

/// An endpoint that enforces strict json_schema as OpenAI does: a schema strict mode refuses
/// gets the 400 OpenAI gives; a valid one gets the verdict.
fn enforcing(sent: &support::Recorded, _: usize) -> Reply {
    let body = sent.json();
    let format = &body["response_format"];
    let mut found = Vec::new();
    if format["type"] != "json_schema" || format["json_schema"]["strict"] != true {
        found.push(format!("not strict json_schema: {format}"));
    } else {
        strict_violations(&format["json_schema"]["schema"], "#", &mut found);
    }
    if found.is_empty() {
        Reply::json(200, completion(VERDICT))
    } else {
        let message = format!("Invalid schema for response_format 'qa_verdict': {found:?}");
        Reply::json(
            400,
            json!({"error": {"message": message, "type": "invalid_request_error"}}),
        )
    }
}

#[tokio::test]
async fn a_schema_is_sent_as_strict_json_schema() {
    // GIVEN an endpoint that enforces strict json_schema
    let server = MockServer::start(enforcing).await;
    let model = model(&server, fast());

    // WHEN a reply is asked for with the schema schemars wrote
    let reply = model.complete(structured(verdict_schema())).await.unwrap();

    // THEN one request, accepted: strict, every object closed with all its properties required
    let sent = server.requests();
    assert_eq!(sent.len(), 1);
    let format = &sent[0].json()["response_format"];
    let mut found = Vec::new();
    strict_violations(&format["json_schema"]["schema"], "#", &mut found);
    assert!(found.is_empty(), "{found:?}");
    assert_eq!(format["type"], "json_schema");
    assert_eq!(format["json_schema"]["name"], "qa_verdict");
    assert_eq!(format["json_schema"]["strict"], true);
    // AND the optional field stays nullable, the $ref and descriptions stay
    let schema = &format["json_schema"]["schema"];
    let details = &schema["$defs"]["CriterionReply"]["properties"]["details"];
    assert_eq!(details["type"], json!(["string", "null"]));
    assert_eq!(
        schema["properties"]["criteria"]["items"]["$ref"],
        "#/$defs/CriterionReply"
    );
    assert_eq!(schema["properties"]["score"]["description"], "0.0 to 1.0.");
    // AND the reply is the JSON the endpoint wrote
    let verdict: Value = serde_json::from_str(&reply.text).unwrap();
    assert_eq!(verdict["score"], 0.9);
    assert!(reply.tool_calls.is_empty());
}

#[tokio::test]
async fn a_schema_strict_mode_cannot_express_asks_for_json_object_this_time_only() {
    // GIVEN an endpoint that takes json_schema and json_object alike
    let server = MockServer::script(vec![Reply::json(200, completion(VERDICT))]).await;
    let model = model(&server, fast());
    let mut open = verdict_schema();
    open["properties"]["extra"] = json!({"type": "object", "additionalProperties": true});

    // WHEN a call's schema has an open map, then the next call's has none
    model.complete(structured(open)).await.unwrap();
    model.complete(structured(verdict_schema())).await.unwrap();

    // THEN the first asked for json_object, and the second still for json_schema
    let formats: Vec<String> = server
        .requests()
        .iter()
        .map(|r| format_of(&r.json()).to_owned())
        .collect();
    assert_eq!(formats, ["json_object", "json_schema"]);
}

#[derive(Clone, Default)]
struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Captures this thread's events (a tokio test runs on one thread) until the guard drops.
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn warnings(&self, about: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains("WARN") && l.contains(about))
            .map(str::to_owned)
            .collect()
    }
}

#[tokio::test]
async fn an_endpoint_refusing_json_schema_gets_json_object_from_then_on() {
    // GIVEN an endpoint that refuses json_schema with a 400 but takes json_object
    let server = MockServer::start(|sent, _| {
        if format_of(&sent.json()) == "json_schema" {
            Reply::json(
                400,
                json!({"error": {"message": "response_format json_schema is not supported"}}),
            )
        } else {
            Reply::json(200, completion(VERDICT))
        }
    })
    .await;
    let model = model(&server, fast());
    let logs = Logs::default();
    let _capture = logs.capture();

    // WHEN two structured calls are made
    let first = model.complete(structured(verdict_schema())).await.unwrap();
    let after_first = server.requests().len();
    let second = model.complete(structured(verdict_schema())).await.unwrap();

    // THEN the first fell back within the call (two requests), the second went straight to
    // json_object (one request), and both got the JSON
    assert_eq!(after_first, 2);
    let formats: Vec<String> = server
        .requests()
        .iter()
        .map(|r| format_of(&r.json()).to_owned())
        .collect();
    assert_eq!(formats, ["json_schema", "json_object", "json_object"]);
    assert_eq!(first.text, VERDICT);
    assert_eq!(second.text, VERDICT);
    // AND the step down was logged once, without the prompt, the key or the URL
    let warnings = logs.warnings("response_format");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    for secret in ["Acme Sync", "sk-test", server.url.as_str()] {
        assert!(!warnings[0].contains(secret), "{}", warnings[0]);
    }
}

#[tokio::test]
async fn an_endpoint_refusing_every_response_format_gets_the_prompt_alone_from_then_on() {
    // GIVEN an endpoint that knows no response_format at all
    let server = MockServer::start(|sent, _| {
        if sent.json().get("response_format").is_some() {
            Reply::json(400, json!({"error": {"message": "Unrecognized request argument supplied: response_format"}}))
        } else {
            Reply::json(200, completion(VERDICT))
        }
    })
    .await;
    let model = model(&server, fast());
    let logs = Logs::default();
    let _capture = logs.capture();

    // WHEN two structured calls are made
    model.complete(structured(verdict_schema())).await.unwrap();
    let reply = model.complete(structured(verdict_schema())).await.unwrap();

    // THEN the first stepped down twice within the call, the second asked with the prompt alone
    let formats: Vec<String> = server
        .requests()
        .iter()
        .map(|r| format_of(&r.json()).to_owned())
        .collect();
    assert_eq!(formats, ["json_schema", "json_object", "none", "none"]);
    assert_eq!(reply.text, VERDICT);
    // AND each step down was logged once
    assert_eq!(logs.warnings("response_format").len(), 2);
}

#[tokio::test]
async fn a_bad_request_that_is_not_about_the_schema_keeps_json_schema() {
    // GIVEN an endpoint that refuses every request for a reason that is not the format
    let server = MockServer::script(vec![Reply::json(
        400,
        json!({"error": {"message": "This model's maximum context length is 8192 tokens", "code": "context_length_exceeded"}}),
    )])
    .await;
    let model = model(&server, fast());

    // WHEN two structured calls are made
    let err = model
        .complete(structured(verdict_schema()))
        .await
        .unwrap_err();
    model
        .complete(structured(verdict_schema()))
        .await
        .unwrap_err();

    // THEN each call tried json_object once more, failed with the endpoint's own error, and
    // json_schema was not given up on
    let formats: Vec<String> = server
        .requests()
        .iter()
        .map(|r| format_of(&r.json()).to_owned())
        .collect();
    assert_eq!(
        formats,
        ["json_schema", "json_object", "json_schema", "json_object"]
    );
    assert!(
        matches!(err, ModelError::Provider { status: 400, ref message } if message.contains("context length")),
        "{err:?}"
    );
}
