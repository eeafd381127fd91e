#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the assertion in a test

//! The Bedrock adapter against a local endpoint (the SDK's endpoint_url), answering with real
//! `application/vnd.amazon.eventstream` frames.

mod support;

use std::time::Duration;

use aws_sdk_bedrockruntime::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_bedrockruntime::primitives::event_stream::{Header, HeaderValue, Message};
use axum::body::Bytes;
use futures::StreamExt;
use orchestrator_core::ports::{ChatMessage, Model, ModelError, ModelRequest, Purpose, StreamItem};
use orchestrator_core::types::Usage;
use orchestrator_llm::{BedrockModel, Resilience};
use serde_json::{Value, json};
use support::{MockServer, Reply};

const MODEL: &str = "anthropic.claude-3-5-haiku-20241022-v1:0";

fn model(server: &MockServer) -> BedrockModel {
    let builder = aws_sdk_bedrockruntime::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(&server.url)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"));
    BedrockModel::with_sdk_config(
        builder,
        MODEL,
        &Resilience {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            max_retries: 2,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(20),
        },
    )
}

fn request() -> ModelRequest {
    ModelRequest {
        purpose: Purpose::Generate,
        system: "You are the writer.".into(),
        messages: vec![ChatMessage::user("Write about Acme Sync")],
        temperature: Some(0.2),
        max_tokens: Some(100),
        json: false,
        schema: None,
        tools: Vec::new(),
        tool_choice: Default::default(),
    }
}

/// One event of a ConverseStream reply, encoded as the service sends it.
fn event(kind: &'static str, payload: Value) -> Bytes {
    let message = Message::new(payload.to_string().into_bytes())
        .add_header(Header::new(
            ":message-type",
            HeaderValue::String("event".into()),
        ))
        .add_header(Header::new(":event-type", HeaderValue::String(kind.into())))
        .add_header(Header::new(
            ":content-type",
            HeaderValue::String("application/json".into()),
        ));
    let mut buf = Vec::new();
    aws_smithy_eventstream::frame::write_message_to(&message, &mut buf).unwrap();
    Bytes::from(buf)
}

fn delta(text: &str) -> Bytes {
    event(
        "contentBlockDelta",
        json!({"contentBlockIndex": 0, "delta": {"text": text}}),
    )
}

fn stream_reply(events: Vec<Bytes>) -> Reply {
    Reply::binary("application/vnd.amazon.eventstream", events)
}

fn full_stream() -> Vec<Bytes> {
    vec![
        event("messageStart", json!({"role": "assistant"})),
        delta("Intro"),
        delta("ducing "),
        delta("Acme Sync"),
        event("contentBlockStop", json!({"contentBlockIndex": 0})),
        event("messageStop", json!({"stopReason": "end_turn"})),
        event(
            "metadata",
            json!({"usage": {"inputTokens": 31, "outputTokens": 4, "totalTokens": 35}, "metrics": {"latencyMs": 12}}),
        ),
    ]
}

fn throttled() -> Reply {
    Reply::json(
        429,
        json!({"message": "Too many requests, please wait before trying again."}),
    )
    .header(
        "x-amzn-errortype",
        "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/",
    )
}

#[tokio::test]
async fn converse_stream_text_arrives_in_order_with_usage() {
    // GIVEN a local Bedrock endpoint streaming three pieces, messageStop and metadata
    let server = MockServer::script(vec![stream_reply(full_stream())]).await;
    let model = model(&server);

    // WHEN the reply is streamed
    let items: Vec<_> = model.stream(request()).collect().await;

    // THEN the text comes in order, then the usage
    let items: Vec<StreamItem> = items.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        items,
        vec![
            StreamItem::Text("Intro".into()),
            StreamItem::Text("ducing ".into()),
            StreamItem::Text("Acme Sync".into()),
            StreamItem::Usage(Usage {
                input_tokens: 31,
                output_tokens: 4
            }),
        ]
    );
    // AND the SDK called ConverseStream for the configured model, with system and messages
    let sent = server.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].path,
        format!("/model/{}/converse-stream", MODEL.replace(':', "%3A"))
    );
    let body = sent[0].json();
    assert_eq!(body["system"], json!([{"text": "You are the writer."}]));
    assert_eq!(body["messages"][0]["role"], "user");
    assert_eq!(body["inferenceConfig"]["maxTokens"], 100);
}

#[tokio::test]
async fn throttling_is_retried_then_the_stream_succeeds() {
    // GIVEN an endpoint that throttles once, then streams
    let server = MockServer::script(vec![throttled(), stream_reply(full_stream())]).await;
    let model = model(&server);

    // WHEN the reply is streamed
    let items: Vec<_> = model.stream(request()).collect().await;

    // THEN it succeeded on the second attempt
    assert_eq!(server.requests().len(), 2);
    assert!(items.iter().all(Result::is_ok), "{items:?}");
    assert_eq!(
        items.last().unwrap(),
        &Ok(StreamItem::Usage(Usage {
            input_tokens: 31,
            output_tokens: 4
        }))
    );
}

#[tokio::test]
async fn throttling_that_persists_is_a_retryable_throttled_error() {
    // GIVEN an endpoint that keeps throttling
    let server = MockServer::script(vec![throttled()]).await;
    let model = model(&server);

    // WHEN a completion is asked for
    let err = model.complete(request()).await.unwrap_err();

    // THEN 1 + max_retries attempts, then Throttled
    assert_eq!(server.requests().len(), 3);
    assert!(matches!(err, ModelError::Throttled(_)), "{err:?}");
    assert!(err.retryable());
}

#[tokio::test]
async fn a_validation_error_is_not_retried() {
    // GIVEN an endpoint that refuses the request
    let server = MockServer::script(vec![
        Reply::json(400, json!({"message": "The model ID is invalid"}))
            .header("x-amzn-errortype", "ValidationException"),
    ])
    .await;
    let model = model(&server);

    // WHEN a completion is asked for
    let err = model.complete(request()).await.unwrap_err();

    // THEN one attempt, a final 400
    assert_eq!(server.requests().len(), 1);
    assert!(
        matches!(err, ModelError::Provider { status: 400, .. }),
        "{err:?}"
    );
    assert!(!err.retryable());
}

#[tokio::test]
async fn converse_returns_text_and_usage() {
    // GIVEN an endpoint answering Converse
    let server = MockServer::script(vec![Reply::json(
        200,
        json!({"output": {"message": {"role": "assistant", "content": [{"text": "{\"ok\":true}"}]}},
               "stopReason": "end_turn",
               "usage": {"inputTokens": 12, "outputTokens": 5, "totalTokens": 17},
               "metrics": {"latencyMs": 10}}),
    )])
    .await;
    let model = model(&server);

    // WHEN a completion is asked for
    let reply = model.complete(request()).await.unwrap();

    // THEN text and usage come back
    assert_eq!(reply.text, "{\"ok\":true}");
    assert_eq!(
        reply.usage,
        Usage {
            input_tokens: 12,
            output_tokens: 5
        }
    );
    assert!(server.requests()[0].path.ends_with("/converse"));
}

#[tokio::test]
async fn a_stream_without_message_stop_is_broken() {
    // GIVEN an endpoint whose stream ends after two pieces, without messageStop
    let server = MockServer::script(vec![stream_reply(vec![
        event("messageStart", json!({"role": "assistant"})),
        delta("Intro"),
        delta("ducing"),
    ])])
    .await;
    let model = model(&server);

    // WHEN the reply is streamed
    let items: Vec<_> = model.stream(request()).collect().await;

    // THEN the pieces are followed by StreamBroken, not a usage
    assert_eq!(items[0], Ok(StreamItem::Text("Intro".into())));
    assert!(
        matches!(items.last(), Some(Err(ModelError::StreamBroken(_)))),
        "{items:?}"
    );
}

#[tokio::test]
async fn a_stream_cut_mid_frame_is_broken() {
    // GIVEN an endpoint that drops the connection in the middle of a frame
    let mut events = full_stream();
    let half = events[2].slice(..events[2].len() / 2);
    events.truncate(2);
    events.push(half);
    let server = MockServer::script(vec![stream_reply(events).cut()]).await;
    let model = model(&server);

    // WHEN the reply is streamed
    let items: Vec<_> = model.stream(request()).collect().await;

    // THEN it ends in a retryable StreamBroken
    let last = items.last().unwrap().clone().unwrap_err();
    assert!(matches!(last, ModelError::StreamBroken(_)), "{last:?}");
    assert!(last.retryable());
}

#[tokio::test]
async fn converse_tool_use_round_trip() {
    use orchestrator_core::tools::{ToolCall, ToolSpec};
    // GIVEN a local Bedrock endpoint whose model asks for a tool
    let server = MockServer::script(vec![Reply::json(
        200,
        json!({
            "output": {"message": {"role": "assistant", "content": [
                {"text": "Let me measure it."},
                {"toolUse": {"toolUseId": "tu-1", "name": "text_stats", "input": {"text": "Hi there."}}}
            ]}},
            "stopReason": "tool_use",
            "usage": {"inputTokens": 20, "outputTokens": 10, "totalTokens": 30},
            "metrics": {"latencyMs": 5}
        }),
    )])
    .await;
    let model = model(&server);
    let mut req = request();
    req.tools = vec![ToolSpec {
        name: "text_stats".into(),
        description: "Measure a text".into(),
        parameters: json!({"type": "object", "properties": {"text": {"type": "string"}}}).into(),
    }];
    // A conversation that already had one call and its result
    let earlier = ToolCall {
        id: "tu-0".into(),
        name: "text_stats".into(),
        arguments: json!({"text": "x"}),
    };
    req.messages.push(ChatMessage::assistant("", vec![earlier]));
    req.messages
        .push(ChatMessage::tool_result("tu-0", r#"{"words": 1}"#, false));
    // WHEN it is called
    let reply = model.complete(req).await.unwrap();
    // THEN the call comes back as a domain tool call with its input
    assert_eq!(reply.text, "Let me measure it.");
    assert_eq!(
        reply.tool_calls,
        vec![ToolCall {
            id: "tu-1".into(),
            name: "text_stats".into(),
            arguments: json!({"text": "Hi there."}),
        }]
    );
    // AND the request carried toolConfig and the earlier call and result as content blocks
    let body = server.requests()[0].json();
    assert_eq!(
        body["toolConfig"]["tools"][0]["toolSpec"]["name"],
        "text_stats"
    );
    assert_eq!(
        body["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]["type"],
        "object"
    );
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[1]["content"][0]["toolUse"]["toolUseId"], "tu-0");
    assert_eq!(messages[2]["role"], "user");
    let result = &messages[2]["content"][0]["toolResult"];
    assert_eq!(result["toolUseId"], "tu-0");
    assert_eq!(result["content"][0]["json"]["words"], 1);
}

#[tokio::test]
async fn converse_stream_tool_use_deltas_are_assembled() {
    // GIVEN a stream with a tool use whose input arrives in pieces
    let server = MockServer::script(vec![stream_reply(vec![
        event("messageStart", json!({"role": "assistant"})),
        event(
            "contentBlockStart",
            json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tu-9", "name": "platform_constraints"}}}),
        ),
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"platform\":"}}}),
        ),
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": " \"x\"}"}}}),
        ),
        event("contentBlockStop", json!({"contentBlockIndex": 1})),
        event("messageStop", json!({"stopReason": "tool_use"})),
        event(
            "metadata",
            json!({"usage": {"inputTokens": 5, "outputTokens": 6, "totalTokens": 11}, "metrics": {"latencyMs": 1}}),
        ),
    ])])
    .await;
    let model = model(&server);
    // WHEN streamed
    let items: Vec<StreamItem> = model.stream(request()).map(Result::unwrap).collect().await;
    // THEN one whole call, then usage
    assert_eq!(
        items,
        vec![
            StreamItem::ToolCall(orchestrator_core::tools::ToolCall {
                id: "tu-9".into(),
                name: "platform_constraints".into(),
                arguments: json!({"platform": "x"}),
            }),
            StreamItem::Usage(Usage {
                input_tokens: 5,
                output_tokens: 6
            }),
        ]
    );
}

// Structured replies: the schema forced through a tool whose input is the reply.

fn verdict_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "VerdictReply",
        "description": "A QA verdict.",
        "type": "object",
        "properties": {
            "score": {"type": "number", "format": "double"},
            "pass": {"type": "boolean"},
            "note": {"type": ["string", "null"]}
        },
        "required": ["score", "pass"]
    })
}

fn structured() -> ModelRequest {
    let mut req = request();
    req.json = true;
    req.schema = Some(orchestrator_core::ports::ReplySchema {
        name: "qa_verdict".into(),
        schema: verdict_schema(),
    });
    req
}

fn converse_reply(content: Value) -> Reply {
    Reply::json(
        200,
        json!({"output": {"message": {"role": "assistant", "content": content}},
               "stopReason": "tool_use",
               "usage": {"inputTokens": 12, "outputTokens": 5, "totalTokens": 17},
               "metrics": {"latencyMs": 10}}),
    )
}

#[tokio::test]
async fn a_schema_is_forced_through_a_tool_and_its_input_comes_back_as_json() {
    // GIVEN an endpoint whose model answers with the forced tool
    let verdict = json!({"score": 0.9, "pass": true, "note": null});
    let server = MockServer::script(vec![converse_reply(json!([
        {"toolUse": {"toolUseId": "tu-1", "name": "qa_verdict", "input": verdict}}
    ]))])
    .await;
    let model = model(&server);

    // WHEN a structured reply is asked for
    let reply = model.complete(structured()).await.unwrap();

    // THEN the tool's input is the reply's text, as JSON, and no tool call comes back
    assert_eq!(serde_json::from_str::<Value>(&reply.text).unwrap(), verdict);
    assert!(reply.tool_calls.is_empty());
    assert_eq!(reply.usage.output_tokens, 5);
    // AND the request carried the one tool, with the schema, and a choice naming it
    let body = server.requests()[0].json();
    let config = &body["toolConfig"];
    assert_eq!(config["tools"].as_array().unwrap().len(), 1);
    let spec = &config["tools"][0]["toolSpec"];
    assert_eq!(spec["name"], "qa_verdict");
    assert_eq!(spec["description"], "A QA verdict.");
    let mut expected = verdict_schema();
    expected.as_object_mut().unwrap().remove("$schema");
    expected.as_object_mut().unwrap().remove("title");
    assert_eq!(spec["inputSchema"]["json"], expected);
    assert_eq!(
        config["toolChoice"],
        json!({"tool": {"name": "qa_verdict"}})
    );
}

#[tokio::test]
async fn a_text_answer_to_a_schema_call_comes_back_as_text() {
    // GIVEN an endpoint whose model writes text instead of calling the tool
    let server = MockServer::script(vec![converse_reply(json!([
        {"text": "{\"score\": 0.4, \"pass\": false}"}
    ]))])
    .await;
    let model = model(&server);

    // WHEN a structured reply is asked for
    let reply = model.complete(structured()).await.unwrap();

    // THEN the text is the reply
    assert_eq!(reply.text, "{\"score\": 0.4, \"pass\": false}");
    assert!(reply.tool_calls.is_empty());
}

#[tokio::test]
async fn a_request_with_its_own_tools_is_not_forced_to_the_schema() {
    use orchestrator_core::tools::ToolSpec;
    // GIVEN an endpoint, and a structured request that also offers a tool of its own
    let server = MockServer::script(vec![converse_reply(json!([{"text": "{}"}]))]).await;
    let model = model(&server);
    let mut req = structured();
    req.tools = vec![ToolSpec {
        name: "text_stats".into(),
        description: "Measure a text".into(),
        parameters: json!({"type": "object", "properties": {"text": {"type": "string"}}}).into(),
    }];

    // WHEN it is called
    model.complete(req).await.unwrap();

    // THEN only its own tool is offered, with the usual automatic choice
    let config = &server.requests()[0].json()["toolConfig"];
    assert_eq!(config["tools"].as_array().unwrap().len(), 1);
    assert_eq!(config["tools"][0]["toolSpec"]["name"], "text_stats");
    assert_eq!(config["toolChoice"], json!({"auto": {}}));
}

#[tokio::test]
async fn a_model_that_cannot_be_forced_gets_the_prompt_alone_from_then_on() {
    // GIVEN an endpoint whose model refuses a forced tool choice, and answers without one
    let server = MockServer::start(|sent, _| {
        if sent.json().get("toolConfig").is_some() {
            Reply::json(400, json!({"message": "This model doesn't support the toolConfig.toolChoice.tool field. Remove toolConfig.toolChoice.tool and try again."}))
                .header("x-amzn-errortype", "ValidationException")
        } else {
            converse_reply(json!([{"text": "{\"score\": 1, \"pass\": true}"}]))
        }
    })
    .await;
    let model = model(&server);

    // WHEN two structured calls are made
    let first = model.complete(structured()).await.unwrap();
    let second = model.complete(structured()).await.unwrap();

    // THEN the first was asked again without the tool, the second never had it
    let forced: Vec<bool> = server
        .requests()
        .iter()
        .map(|r| r.json().get("toolConfig").is_some())
        .collect();
    assert_eq!(forced, [true, false, false]);
    assert_eq!(first.text, "{\"score\": 1, \"pass\": true}");
    assert_eq!(second.text, first.text);
}
