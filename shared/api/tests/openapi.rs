#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the assertion in a test

//! The document against the code: the routes `router()` declares and serves, the schemas
//! against what serde accepts, and every answer of the Router during real runs (offline
//! model, in-memory store) against the operation's documented statuses, headers and schemas.

mod common;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, BodyDataStream};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use futures::StreamExt;
use orchestrator_agents::{Planner, Prompts, default_specialists};
use orchestrator_api::openapi::document;
use orchestrator_api::{ApiConfig, ApprovalRequest, ForkModels, LocalControl};
use orchestrator_core::event::{SseFrame, SseParser};
use orchestrator_core::ports::{Model, SystemClock};
use orchestrator_core::types::RunRequest;
use orchestrator_llm::OfflineModel;
use orchestrator_recording::RecordConfig;
use orchestrator_runner::{Runner, RunnerConfig};
use orchestrator_store::SqliteStore;
use serde_json::{Value, json};
use tower::ServiceExt;

use common::{DEADLINE, OBJECTIVE};

/// Where the document's component schemas are (fixed by OpenAPI).
const SCHEMAS: &str = "#/components/schemas/";
const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// `{id}` and `{checkpoint}` alike: routes compare by shape.
fn shape(path: &str) -> String {
    path.split('/')
        .map(|s| if s.starts_with('{') { "{}" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

fn documented_routes(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            out.insert((method.clone(), shape(path)));
        }
    }
    out
}

/// The text from `open` (just past it) to its matching close.
fn balanced(text: &str) -> &str {
    let mut depth = 1;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &text[..i];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced parentheses in {text:?}");
}

/// The routes `router()` declares, read from its source: (method, path shape).
fn routes_in_source() -> BTreeSet<(String, String)> {
    let src = include_str!("../src/lib.rs");
    let start = src.find("pub fn router(").expect("router() in lib.rs");
    let body = &src[start..];
    let body = &body[..body.find("\n}\n").expect("the end of router()")];
    for unsupported in [
        ".merge(",
        ".nest_service(",
        ".route_service(",
        ".fallback_service(",
    ] {
        assert!(
            !body.contains(unsupported),
            "router() uses {unsupported}: teach routes_in_source() to read it"
        );
    }
    let mut declared: Vec<(String, String, String)> = Vec::new();
    let mut nested: BTreeMap<String, String> = BTreeMap::new();
    for statement in body.split(';') {
        let target = statement
            .split_once('=')
            .map(|(lhs, _)| lhs.split_whitespace().last().unwrap_or("").to_owned())
            .unwrap_or_default();
        for call in statement.split(".route(").skip(1) {
            let args = balanced(call);
            let path = args.split('"').nth(1).expect("a literal path").to_owned();
            for (i, _) in args.match_indices('(') {
                let name_start = args[..i]
                    .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .map_or(0, |j| j + 1);
                let name = &args[name_start..i];
                if [
                    "get", "post", "put", "delete", "patch", "head", "options", "trace", "any",
                ]
                .contains(&name)
                {
                    declared.push((target.clone(), name.to_owned(), path.clone()));
                }
            }
        }
        for call in statement.split(".nest(").skip(1) {
            let args = balanced(call);
            let prefix = args.split('"').nth(1).expect("a literal prefix").to_owned();
            let inner = args.rsplit(',').next().unwrap().trim().to_owned();
            nested.insert(inner, prefix);
        }
    }
    assert!(!declared.is_empty(), "no routes found in router()");
    declared
        .into_iter()
        .map(|(target, method, path)| {
            let mut full = path;
            let mut at = target;
            while let Some(prefix) = nested.get(&at) {
                full = format!("{prefix}{full}");
                // The router the prefix was given by: one level is all router() uses.
                at = String::new();
            }
            (method, shape(&full))
        })
        .collect()
}

#[test]
fn every_route_in_the_source_is_documented_and_no_other() {
    let doc = document();
    assert_eq!(routes_in_source(), documented_routes(&doc));
}

/// Forks call the offline model, whatever model they name but `unknown`.
struct Offline(Arc<dyn Model>);

#[async_trait::async_trait]
impl ForkModels for Offline {
    async fn model(&self, model: Option<&str>) -> Result<Arc<dyn Model>, String> {
        match model {
            Some("unknown") => Err("no model unknown on this server".into()),
            _ => Ok(self.0.clone()),
        }
    }
    fn prompts(&self) -> Prompts {
        Prompts::builtin()
    }
}

fn app_with(config: ApiConfig, max_active: usize) -> Router {
    let store = Arc::new(SqliteStore::open_in_memory().unwrap());
    let offline: Arc<dyn Model> = Arc::new(OfflineModel::new(Duration::ZERO));
    let model = RecordConfig::default().wrap(offline, store.clone());
    let forks = Arc::new(Offline(model.clone()));
    let runner = Runner::new(
        store.clone(),
        Planner::new(model.clone()),
        default_specialists(model),
        Arc::new(SystemClock),
        RunnerConfig::default(),
    );
    orchestrator_api::router(
        Arc::new(LocalControl::new(runner, max_active).with_forks(forks)),
        store,
        config,
    )
}

fn app() -> Router {
    app_with(ApiConfig::default(), 16)
}

fn concrete(path: &str) -> String {
    path.split('/')
        .map(|s| if s.starts_with('{') { "x" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

async fn send(app: &Router, method: &str, path: &str) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method.to_ascii_uppercase().as_str())
        .uri(path)
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn is_fallback(status: StatusCode, body: &Value) -> bool {
    status == StatusCode::NOT_FOUND
        && body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("no such route"))
}

#[tokio::test]
async fn the_router_serves_exactly_the_documented_routes() {
    let doc = document();
    let app = app();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let url = concrete(path);
        for method in METHODS {
            let (status, body) = send(&app, method, &url).await;
            let served = status != StatusCode::METHOD_NOT_ALLOWED && !is_fallback(status, &body);
            assert_eq!(
                served,
                item.get(method).is_some(),
                "{method} {url} answered {status} {body}"
            );
        }
    }
    for url in [
        "/api/v1",
        "/api/v1/runs/x/nope",
        "/api/v1/agent/run",
        "/api/v2/runs",
        "/runs",
        "/openapi.yaml",
    ] {
        for method in ["get", "post"] {
            let (status, body) = send(&app, method, url).await;
            assert!(
                is_fallback(status, &body),
                "{method} {url} answered {status} {body}"
            );
        }
    }
}

fn walk<'a>(value: &'a Value, f: &mut dyn FnMut(&'a str, &'a Value)) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                f(k, v);
                walk(v, f);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| walk(v, f)),
        _ => {}
    }
}

#[test]
fn every_ref_resolves_and_every_schema_is_a_schema() {
    let doc = document();
    let mut refs = BTreeSet::new();
    walk(&doc, &mut |k, v| {
        if k == "$ref" {
            refs.insert(v.as_str().unwrap().to_owned());
        }
    });
    assert!(refs.len() > 20, "{refs:?}");
    for r in &refs {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{r} is not local"));
        assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
        assert!(
            r.starts_with(SCHEMAS)
                || r.starts_with("#/components/responses/")
                || r.starts_with("#/components/parameters/"),
            "{r}"
        );
    }
    let text = doc.to_string();
    assert!(
        !text.contains("$defs") && !text.contains("$input"),
        "a schemars path is left"
    );
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        jsonschema::meta::validate(schema).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // Nothing in the components is unused.
    for name in doc["components"]["schemas"].as_object().unwrap().keys() {
        assert!(
            refs.contains(&format!("{SCHEMAS}{name}")),
            "{name} is never used"
        );
    }
}

/// Validators of the document's schemas, `#/components/...` refs and all.
fn validator(doc: &Value, schema: &Value) -> jsonschema::Validator {
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": doc["components"],
        "allOf": [schema],
    });
    jsonschema::validator_for(&root).unwrap()
}

fn component(doc: &Value, name: &str) -> jsonschema::Validator {
    validator(doc, &json!({"$ref": format!("{SCHEMAS}{name}")}))
}

fn errors(v: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[test]
fn request_schemas_accept_what_serde_accepts() {
    let doc = document();
    let run_request = component(&doc, "RunRequest");
    let example = &doc["paths"]["/api/v1/runs"]["post"]["requestBody"]["content"]["application/json"]
        ["example"];
    assert!(serde_json::from_value::<RunRequest>(example.clone()).is_ok());
    assert_eq!(errors(&run_request, example), Vec::<String>::new());
    let cases = [
        json!({"objective": "x"}),
        json!({"objective": "x", "mode": "chat", "threadId": "t", "briefId": null}),
        json!({"objective": "x", "state": {"brief": {"a": 1}, "assets": [1, "two"]}}),
        json!({"objective": "x", "options": {"executionDepth": 2}}),
        json!({"objective": "x", "options": {"maxRevisionCycles": 2, "qualityThreshold": 0.5}}),
        json!({"objective": "x", "options": {"budget": {"maxTokens": 10}, "toolPolicy": "off", "onDisconnect": "cancel"}}),
        json!({"objective": "x", "options": {"temperature": 0.2, "toolsAllowlist": ["a"], "requireApproval": true}}),
        json!({"objective": "x", "idempotencyKey": "k"}),
        // refused by serde
        json!({"mode": "app"}),
        json!({"objective": 1}),
        json!({"objective": "x", "unknown": 1}),
        json!({"objective": "x", "mode": "batch"}),
        json!({"objective": "x", "options": {"executionDepth": 2, "maxRevisionCycles": 2}}),
        json!({"objective": "x", "options": {"maxRevisionCycles": -1}}),
        json!({"objective": "x", "options": {"budget": {"maxTokens": 10, "extra": true}}}),
        json!({"objective": "x", "options": {"toolPolicy": "sometimes"}}),
        json!({"objective": "x", "state": {"other": 1}}),
        json!([]),
    ];
    for case in &cases {
        let serde_ok = serde_json::from_value::<RunRequest>(case.clone()).is_ok();
        assert_eq!(
            serde_ok,
            run_request.is_valid(case),
            "{case}: serde says {serde_ok}"
        );
    }
    let approval = component(&doc, "ApprovalRequest");
    for case in [
        json!({"decision": "approve"}),
        json!({"decision": "reject", "comment": "no"}),
        json!({"decision": "reject", "comment": null}),
        json!({"decision": "maybe"}),
        json!({"comment": "no"}),
        json!({"decision": "approve", "extra": 1}),
    ] {
        let serde_ok = serde_json::from_value::<ApprovalRequest>(case.clone()).is_ok();
        assert_eq!(
            serde_ok,
            approval.is_valid(&case),
            "{case}: serde says {serde_ok}"
        );
    }
}

#[test]
fn the_stream_example_is_made_of_documented_events() {
    let doc = document();
    let media = &doc["paths"]["/api/v1/runs/{id}/events"]["get"]["responses"]["200"]["content"]["text/event-stream"];
    let frames = SseParser::default().push(media["example"].as_str().unwrap());
    assert_eq!(frames.len(), 3);
    let contract = Contract::new();
    for frame in &frames {
        contract.check_frame(frame);
    }
}

/// The document, and what the tests saw of the Router against it.
struct Contract {
    doc: Value,
    event: jsonschema::Validator,
    event_types: BTreeSet<String>,
    /// (operationId, status) of every answer checked.
    seen: BTreeSet<(String, u16)>,
}

impl Contract {
    fn new() -> Self {
        let doc = document();
        let event_types = doc["components"]["schemas"]["SseFrame"]["properties"]["event"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_owned())
            .collect();
        Self {
            event: component(&doc, "Event"),
            event_types,
            doc,
            seen: BTreeSet::new(),
        }
    }

    fn resolve<'a>(&'a self, value: &'a Value) -> &'a Value {
        match value.get("$ref").and_then(Value::as_str) {
            Some(r) => self.doc.pointer(&r[1..]).unwrap(),
            None => value,
        }
    }

    fn operation(&self, method: &Method, uri: &str) -> (&str, &Value) {
        let path = uri.split('?').next().unwrap();
        let segments: Vec<&str> = path.split('/').collect();
        for (template, item) in self.doc["paths"].as_object().unwrap() {
            let t: Vec<&str> = template.split('/').collect();
            let matches = t.len() == segments.len()
                && t.iter()
                    .zip(&segments)
                    .all(|(t, s)| t == s || (t.starts_with('{') && !s.is_empty()));
            if matches {
                let op = &item[method.as_str().to_ascii_lowercase()];
                assert!(!op.is_null(), "{method} {template} is not documented");
                return (template, op);
            }
        }
        panic!("{uri} is not documented");
    }

    /// Checks one answer: its status is documented for the operation, with the documented
    /// headers and content type, and a JSON body fits the documented schema. Returns the
    /// documented media type.
    fn check(
        &mut self,
        method: &Method,
        uri: &str,
        status: StatusCode,
        headers: &HeaderMap,
        body: Option<&[u8]>,
    ) -> String {
        let (template, op) = self.operation(method, uri);
        let id = op["operationId"].as_str().unwrap().to_owned();
        let documented = op["responses"].get(status.as_str()).unwrap_or_else(|| {
            panic!("{method} {template} answered {status}, which is not documented")
        });
        let response = self.resolve(documented).clone();
        for (name, h) in response["headers"].as_object().into_iter().flatten() {
            let value = headers.get(name.as_str());
            if h["required"] == json!(true) || h["schema"].get("const").is_some() {
                let value = value
                    .unwrap_or_else(|| panic!("{method} {template} {status}: no {name} header"));
                if let Some(expected) = h["schema"].get("const").and_then(Value::as_str) {
                    assert_eq!(value, expected, "{name}");
                }
            }
        }
        let content = response["content"].as_object().unwrap();
        assert_eq!(content.len(), 1, "{template} {status}");
        let (media, media_type) = content.iter().next().unwrap();
        let content_type = headers.get(header::CONTENT_TYPE).unwrap().to_str().unwrap();
        assert!(
            content_type.starts_with(media.as_str()),
            "{template} {status}: {content_type}, documented {media}"
        );
        // The viewer page is HTML; everything else the API answers is JSON.
        if let Some(body) = body.filter(|_| media != "text/html") {
            assert_eq!(media, "application/json");
            let value: Value = serde_json::from_slice(body).unwrap();
            let v = validator(&self.doc, &media_type["schema"]);
            assert_eq!(
                errors(&v, &value),
                Vec::<String>::new(),
                "{method} {template} {status}: {value}"
            );
        }
        self.seen.insert((id, status.as_u16()));
        media.clone()
    }

    fn check_frame(&self, frame: &SseFrame) {
        let data: Value = serde_json::from_str(&frame.data).unwrap();
        assert_eq!(errors(&self.event, &data), Vec::<String>::new(), "{data}");
        let event = frame.event.as_deref().unwrap();
        assert_eq!(data["type"], json!(event));
        assert!(self.event_types.contains(event), "{event}");
        assert!(frame.id.as_deref().unwrap().parse::<u64>().unwrap() >= 1);
    }

    /// Sends a request and checks the answer; a JSON answer is returned, an event stream
    /// is left open.
    async fn send(&mut self, app: &Router, request: Request<Body>) -> Answer {
        let method = request.method().clone();
        let uri = request.uri().to_string();
        let response = app.clone().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let (_, op) = self.operation(&method, &uri);
        let streams = op["responses"].get(parts.status.as_str()).is_some_and(|r| {
            self.resolve(r)["content"]
                .get("text/event-stream")
                .is_some()
        });
        if streams {
            self.check(&method, &uri, parts.status, &parts.headers, None);
            return Answer::Stream(Stream {
                body: body.into_data_stream(),
                parser: SseParser::default(),
                frames: VecDeque::new(),
                last: 0,
            });
        }
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        self.check(&method, &uri, parts.status, &parts.headers, Some(&bytes));
        // The viewer page is not JSON: the test sees it as its text.
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Answer::Json(parts.status, value)
    }

    async fn json(&mut self, app: &Router, request: Request<Body>) -> (StatusCode, Value) {
        match self.send(app, request).await {
            Answer::Json(status, body) => (status, body),
            Answer::Stream(_) => panic!("an event stream, not JSON"),
        }
    }

    async fn stream(&mut self, app: &Router, request: Request<Body>) -> Stream {
        match self.send(app, request).await {
            Answer::Stream(s) => s,
            Answer::Json(status, body) => panic!("{status} {body}, not a stream"),
        }
    }
}

enum Answer {
    Json(StatusCode, Value),
    Stream(Stream),
}

struct Stream {
    body: BodyDataStream,
    parser: SseParser,
    frames: VecDeque<SseFrame>,
    last: u64,
}

impl Stream {
    /// Frames up to and including the first of type `until`, each checked; the seqs run on
    /// without gaps.
    async fn read_until(&mut self, contract: &Contract, until: &str) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            while let Some(frame) = self.frames.pop_front() {
                contract.check_frame(&frame);
                let seq: u64 = frame.id.as_deref().unwrap().parse().unwrap();
                if self.last != 0 {
                    assert_eq!(seq, self.last + 1, "a gap in the stream");
                }
                self.last = seq;
                let data: Value = serde_json::from_str(&frame.data).unwrap();
                let done = frame.event.as_deref() == Some(until);
                out.push(data);
                if done {
                    return out;
                }
            }
            let chunk = tokio::time::timeout(DEADLINE, self.body.next())
                .await
                .expect("a frame before the deadline")
                .unwrap_or_else(|| panic!("the stream ended before {until}; got {out:?}"))
                .unwrap();
            self.frames.extend(self.parser.push_bytes(&chunk));
        }
    }

    /// Nothing comes after `complete`: the body ends.
    async fn end(mut self) {
        let rest = tokio::time::timeout(DEADLINE, async {
            let mut rest = Vec::new();
            while let Some(chunk) = self.body.next().await {
                rest.extend(self.parser.push_bytes(&chunk.unwrap()));
            }
            rest
        })
        .await
        .expect("the end of the stream");
        assert!(
            self.frames.is_empty() && rest.is_empty(),
            "frames after complete"
        );
    }
}

/// The run once its report is written, which is just after its `complete` event.
async fn finished(c: &mut Contract, app: &Router, run_id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (_, run) = c.json(app, get(&format!("/api/v1/runs/{run_id}"))).await;
        if run.get("report").is_some() {
            return run;
        }
        assert!(tokio::time::Instant::now() < deadline, "no report: {run}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn post(uri: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .unwrap()
}

fn post_json(uri: &str, body: &Value) -> Request<Body> {
    post(uri, body.to_string())
}

#[tokio::test]
async fn the_router_answers_as_documented() {
    let mut c = Contract::new();
    let app = app();

    // An app run that waits for an approval, watched through its event stream.
    let mut start = post_json(
        "/api/v1/runs",
        &json!({"objective": OBJECTIVE, "options": {"requireApproval": true, "acceptanceCriteria": ["Mentions offline mode"]}}),
    );
    start
        .headers_mut()
        .insert("idempotency-key", HeaderValue::from_static("key-1"));
    start
        .headers_mut()
        .insert("x-correlation-id", HeaderValue::from_static("corr-1"));
    let (status, started) = c.json(&app, start).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let run_id = started["runId"].as_str().unwrap().to_owned();
    let mut again = post_json("/api/v1/runs", &json!({"objective": OBJECTIVE}));
    again
        .headers_mut()
        .insert("idempotency-key", HeaderValue::from_static("key-1"));
    let (status, same) = c.json(&app, again).await;
    assert_eq!(
        (status, &same["runId"], &same["created"]),
        (StatusCode::OK, &json!(run_id), &json!(false))
    );

    let mut events = c
        .stream(&app, get(started["eventsUrl"].as_str().unwrap()))
        .await;
    let first = events.read_until(&c, "hitl_request").await;
    assert!(
        first
            .iter()
            .all(|e| e["correlationId"] == json!("corr-1") && e["runId"] == json!(run_id))
    );
    let checkpoint = first.last().unwrap()["data"]["checkpointId"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, waiting) = c.json(&app, get(started["runUrl"].as_str().unwrap())).await;
    assert_eq!(waiting["status"], json!("pending_hitl"));
    assert_eq!(waiting["checkpoint"]["id"], json!(checkpoint));

    let (status, answered) = c
        .json(
            &app,
            post_json(
                &format!("/api/v1/runs/{run_id}/approvals/{checkpoint}"),
                &json!({"decision": "approve", "comment": "ok"}),
            ),
        )
        .await;
    assert_eq!(
        (status, &answered["status"]),
        (StatusCode::ACCEPTED, &json!("resuming"))
    );
    let rest = events.read_until(&c, "complete").await;
    assert_eq!(rest.last().unwrap()["status"], json!("completed"));
    events.end().await;
    let done = finished(&mut c, &app, &run_id).await;
    assert!(
        done["report"]["final"]["acceptance-report"].is_object(),
        "{done}"
    );

    // Resuming a stream after a seq, by header and by query.
    let mut request = get(&format!("/api/v1/runs/{run_id}/events"));
    request
        .headers_mut()
        .insert("last-event-id", HeaderValue::from_static("2"));
    let mut resumed = c.stream(&app, request).await;
    resumed.read_until(&c, "complete").await;
    assert_eq!(resumed.last, (first.len() + rest.len()) as u64);
    let mut resumed = c
        .stream(&app, get(&format!("/api/v1/runs/{run_id}/events?after=3")))
        .await;
    resumed.read_until(&c, "complete").await;

    // A chat run on the streaming endpoint.
    let mut chat = c
        .stream(
            &app,
            post_json(
                "/api/v1/agent/run.stream",
                &json!({"mode": "chat", "objective": "Say hello"}),
            ),
        )
        .await;
    let chat_events = chat.read_until(&c, "complete").await;
    chat.end().await;
    let chat_id = chat_events[0]["runId"].as_str().unwrap().to_owned();
    let chat_run = finished(&mut c, &app, &chat_id).await;
    assert!(chat_run["report"]["message"].is_string(), "{chat_run}");

    // A run cancelled while it waits.
    let (_, waits) = c
        .json(
            &app,
            post_json(
                "/api/v1/runs",
                &json!({"objective": OBJECTIVE, "options": {"requireApproval": true}}),
            ),
        )
        .await;
    let mut events = c
        .stream(&app, get(waits["eventsUrl"].as_str().unwrap()))
        .await;
    events.read_until(&c, "hitl_request").await;
    let cancel = format!("/api/v1/runs/{}/cancel", waits["runId"].as_str().unwrap());
    let (status, cancelling) = c.json(&app, post(&cancel, Body::empty())).await;
    assert_eq!(
        (status, &cancelling["status"]),
        (StatusCode::ACCEPTED, &json!("cancelling"))
    );
    let end = events.read_until(&c, "complete").await;
    assert_eq!(end.last().unwrap()["status"], json!("cancelled"));

    // Listing, a page at a time.
    let (_, page) = c.json(&app, get("/api/v1/runs?limit=2")).await;
    assert_eq!(page["runs"].as_array().unwrap().len(), 2);
    let next = page["nextCursor"].as_str().unwrap();
    let (_, last) = c
        .json(&app, get(&format!("/api/v1/runs?limit=2&cursor={next}")))
        .await;
    assert_eq!(last["runs"].as_array().unwrap().len(), 1);
    assert!(last.get("nextCursor").is_none());

    // A finished run's recorded calls, and a fork of it from its QA step.
    let (_, plain) = c
        .json(
            &app,
            post_json("/api/v1/runs", &json!({"objective": OBJECTIVE})),
        )
        .await;
    let plain_id = plain["runId"].as_str().unwrap().to_owned();
    finished(&mut c, &app, &plain_id).await;
    let (status, calls) = c
        .json(&app, get(&format!("/api/v1/runs/{plain_id}/calls")))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        calls["calls"][0]["unit"],
        json!({"kind": "plan", "version": 1})
    );
    let (status, forked) = c
        .json(
            &app,
            post_json(
                &format!("/api/v1/runs/{plain_id}/fork"),
                &json!({"fromStep": "s3", "prompts": {"qa": "You are the QA reviewer. Be strict."}}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{forked}");
    assert_eq!(
        (&forked["forkOf"], &forked["reused"]),
        (&json!(plain_id), &json!(3))
    );
    let mut fork_events = c
        .stream(&app, get(forked["eventsUrl"].as_str().unwrap()))
        .await;
    let fork_log = fork_events.read_until(&c, "complete").await;
    fork_events.end().await;
    assert_eq!(fork_log.last().unwrap()["status"], json!("completed"));

    let (_, health) = c.json(&app, get("/healthz")).await;
    assert_eq!(health, json!({"status": "ok"}));
    let (_, doc) = c.json(&app, get("/openapi.json")).await;
    assert_eq!(doc, c.doc);

    // Errors.
    let big = json!({"objective": "x".repeat(100_000)}).to_string();
    let bad = HeaderValue::from_bytes(b"\xff").unwrap();
    let cases: Vec<(Request<Body>, StatusCode, Option<&str>)> = vec![
        (
            post_json("/api/v1/runs", &json!({"objective": ""})),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("objective"),
        ),
        (
            post_json(
                &format!("/api/v1/runs/{plain_id}/fork"),
                &json!({"fromStep": "s99"}),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("fromStep"),
        ),
        (
            post_json(
                &format!("/api/v1/runs/{plain_id}/fork"),
                &json!({"fromStep": "s3", "model": "unknown"}),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("model"),
        ),
        (
            post_json(
                &format!("/api/v1/runs/{plain_id}/fork"),
                &json!({"fromStep": "s3", "prompts": {"qa": " "}}),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("prompts.qa"),
        ),
        (
            post_json(
                &format!("/api/v1/runs/{plain_id}/fork"),
                &json!({"from": "s3"}),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
        ),
        (
            post_json("/api/v1/runs/nope/fork", &json!({"fromStep": "s3"})),
            StatusCode::NOT_FOUND,
            None,
        ),
        (get("/api/v1/runs/nope/calls"), StatusCode::NOT_FOUND, None),
        (
            post_json("/api/v1/agent/run.stream", &json!({"objective": " "})),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("objective"),
        ),
        (
            post_json("/api/v1/runs", &json!({"objective": "x", "bogus": 1})),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("bogus"),
        ),
        (
            post_json(
                "/api/v1/runs",
                &json!({"objective": "x", "options": {"qualityThreshold": 2}}),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("options.qualityThreshold"),
        ),
        (post("/api/v1/runs", "{"), StatusCode::BAD_REQUEST, None),
        (
            post("/api/v1/agent/run.stream", Body::empty()),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            post("/api/v1/runs", big.clone()),
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
        ),
        (
            post("/api/v1/agent/run.stream", big.clone()),
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
        ),
        (
            post(
                &format!("/api/v1/runs/{run_id}/approvals/{checkpoint}"),
                big,
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
        ),
        (
            get("/api/v1/runs?limit=0"),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("limit"),
        ),
        (
            get("/api/v1/runs?limit=many"),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("limit"),
        ),
        (get("/api/v1/runs/nope"), StatusCode::NOT_FOUND, None),
        (get("/api/v1/runs/nope/events"), StatusCode::NOT_FOUND, None),
        (
            get(&format!("/api/v1/runs/{run_id}/events?after=soon")),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("after"),
        ),
        (
            post("/api/v1/runs/nope/cancel", Body::empty()),
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            post(&format!("/api/v1/runs/{run_id}/cancel"), Body::empty()),
            StatusCode::CONFLICT,
            None,
        ),
        (
            post_json(
                "/api/v1/runs/nope/approvals/c",
                &json!({"decision": "approve"}),
            ),
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            post_json(
                &format!("/api/v1/runs/{run_id}/approvals/{checkpoint}"),
                &json!({"decision": "approve"}),
            ),
            StatusCode::CONFLICT,
            None,
        ),
        (
            post_json(
                &format!("/api/v1/runs/{run_id}/approvals/c"),
                &json!({"decision": "maybe"}),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("decision"),
        ),
        (
            post_json(
                &format!("/api/v1/runs/{run_id}/approvals/c"),
                &json!({"decision": "reject", "comment": "x".repeat(2001)}),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("comment"),
        ),
        (
            post(&format!("/api/v1/runs/{run_id}/approvals/c"), Body::empty()),
            StatusCode::BAD_REQUEST,
            None,
        ),
    ];
    let mut headed = Vec::new();
    let mut r = get(&format!("/api/v1/runs/{run_id}/events"));
    r.headers_mut().insert("last-event-id", bad.clone());
    headed.push((r, StatusCode::BAD_REQUEST, Some("last-event-id")));
    let mut r = get(&format!("/api/v1/runs/{run_id}/events"));
    r.headers_mut()
        .insert("last-event-id", HeaderValue::from_static("soon"));
    headed.push((r, StatusCode::UNPROCESSABLE_ENTITY, Some("Last-Event-ID")));
    let mut r = post_json("/api/v1/runs", &json!({"objective": "x"}));
    r.headers_mut()
        .insert("x-correlation-id", HeaderValue::from_static("not ok!"));
    headed.push((
        r,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("x-correlation-id"),
    ));
    let mut r = post_json(
        "/api/v1/runs",
        &json!({"objective": "x", "idempotencyKey": "a"}),
    );
    r.headers_mut()
        .insert("idempotency-key", HeaderValue::from_static("b"));
    headed.push((r, StatusCode::UNPROCESSABLE_ENTITY, Some("idempotencyKey")));
    let mut r = post_json("/api/v1/agent/run.stream", &json!({"objective": "x"}));
    r.headers_mut().insert("idempotency-key", bad);
    headed.push((r, StatusCode::BAD_REQUEST, Some("idempotency-key")));
    for (request, expected, field) in cases.into_iter().chain(headed) {
        let what = format!("{} {}", request.method(), request.uri());
        let (status, body) = c.json(&app, request).await;
        assert_eq!(status, expected, "{what}: {body}");
        if let Some(field) = field {
            assert_eq!(body["error"]["field"], json!(field), "{what}: {body}");
        }
    }

    // Auth, when the server has an API key.
    let locked = app_with(
        ApiConfig {
            api_key: Some("secret".into()),
            ..ApiConfig::default()
        },
        16,
    );
    let paths = c.doc["paths"].as_object().unwrap().clone();
    for (path, item) in &paths {
        for (method, op) in item.as_object().unwrap() {
            let request = |auth: Option<&'static str>| {
                let mut r = Request::builder()
                    .method(method.to_ascii_uppercase().as_str())
                    .uri(concrete(path));
                if let Some(a) = auth {
                    r = r.header(header::AUTHORIZATION, a);
                }
                r.body(Body::empty()).unwrap()
            };
            let open = op.get("security") == Some(&json!([]));
            let (status, _) = c.json(&locked, request(None)).await;
            assert_eq!(
                status == StatusCode::UNAUTHORIZED,
                !open,
                "{method} {path}: {status}"
            );
            if !open {
                let (status, _) = c.json(&locked, request(Some("Bearer wrong"))).await;
                assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}");
            }
        }
    }
    let mut r = get("/api/v1/runs");
    r.headers_mut().insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("Bearer secret"),
    );
    assert_eq!(c.json(&locked, r).await.0, StatusCode::OK);

    // Overload: no stream slots, no run slots.
    let no_streams = app_with(
        ApiConfig {
            max_streams: 0,
            ..ApiConfig::default()
        },
        16,
    );
    let (_, started) = c
        .json(
            &no_streams,
            post_json("/api/v1/runs", &json!({"objective": OBJECTIVE})),
        )
        .await;
    let (status, _) = c
        .json(&no_streams, get(started["eventsUrl"].as_str().unwrap()))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = c
        .json(
            &no_streams,
            post_json("/api/v1/agent/run.stream", &json!({"objective": OBJECTIVE})),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let no_runs = app_with(ApiConfig::default(), 0);
    let (status, _) = c
        .json(
            &no_runs,
            post_json("/api/v1/runs", &json!({"objective": OBJECTIVE})),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    // Every operation was seen to succeed, and every error the tests provoke is documented.
    for item in paths.values() {
        for op in item.as_object().unwrap().values() {
            let id = op["operationId"].as_str().unwrap();
            assert!(
                c.seen
                    .iter()
                    .any(|(seen, s)| seen == id && (200..300).contains(s)),
                "{id} never succeeded"
            );
        }
    }
    let statuses: BTreeSet<u16> = c.seen.iter().map(|(_, s)| *s).collect();
    for status in [400, 401, 403, 404, 409, 413, 422, 503] {
        assert!(statuses.contains(&status), "{status} never seen");
    }
}
