#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the assertion in a test

//! Every error of every route is the JSON error, `{"error": {"code", "message", "field"?}}`,
//! with the field at fault named: the routes are walked as the OpenAPI document lists them, and
//! each gets bad input of every kind it can take (method, sub-path, path and query parameters,
//! headers, body), with and without an API key.

mod common;

use common::{Server, Setup, send, serve};
use orchestrator_api::ApiConfig;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
];

/// One documented operation, read from the document.
struct Operation {
    method: Method,
    template: String,
    doc: Value,
    /// (name, in) of its parameters.
    params: Vec<(String, String)>,
}

impl Operation {
    /// Its URL with every path parameter `x`, but `bad` for the one named so.
    fn url(&self, bad: Option<(&str, &str)>) -> String {
        self.template
            .split('/')
            .map(
                |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(name) if bad.is_some_and(|(b, _)| b == name) => {
                        bad.map_or("x", |(_, v)| v).to_owned()
                    }
                    Some(_) => "x".to_owned(),
                    None => s.to_owned(),
                },
            )
            .collect::<Vec<_>>()
            .join("/")
    }

    fn documents(&self, status: StatusCode) -> bool {
        self.doc["responses"].get(status.as_str()).is_some()
    }
}

fn operations(doc: &Value) -> Vec<Operation> {
    let mut out = Vec::new();
    for (template, item) in doc["paths"].as_object().into_iter().flatten() {
        for (method, op) in item.as_object().into_iter().flatten() {
            let params = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| resolve(doc, p))
                .map(|p| (p["name"].as_str(), p["in"].as_str()))
                .map(|(n, i)| (n.unwrap_or("").to_owned(), i.unwrap_or("").to_owned()))
                .collect();
            out.push(Operation {
                method: method.to_ascii_uppercase().parse().unwrap(),
                template: template.clone(),
                doc: op.clone(),
                params,
            });
        }
    }
    assert!(out.len() >= 9, "the document lists every operation");
    out
}

fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(r) => doc.pointer(&r[1..]).unwrap(),
        None => value,
    }
}

/// Checks an error answer: JSON, `{"error": {"code", "message", "field"?}}` and nothing else,
/// the code the one of its status. Returns the status, code and field.
async fn error_of(what: &str, response: reqwest::Response) -> (StatusCode, String, Option<String>) {
    let status = response.status();
    assert!(status.is_client_error(), "{what}: answered {status}");
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let text = response.text().await.unwrap();
    assert!(
        content_type.starts_with("application/json"),
        "{what}: {status} {content_type} {text:?}"
    );
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: {e}: {text}"));
    let error = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("{what}: {body}"));
    assert!(
        error
            .keys()
            .all(|k| ["code", "message", "field"].contains(&k.as_str())),
        "{what}: {body}"
    );
    let code = error["code"].as_str().unwrap_or_default().to_owned();
    assert!(
        !error["message"].as_str().unwrap_or_default().is_empty(),
        "{what}: {body}"
    );
    let field = error.get("field").map(|f| f.as_str().unwrap().to_owned());
    (status, code, field)
}

/// Sends `request` and checks it is refused with `status` and `code`, naming `field`.
async fn refused(
    what: &str,
    request: reqwest::RequestBuilder,
    status: StatusCode,
    code: &str,
    field: Option<&str>,
) {
    let got = error_of(what, send(request).await).await;
    let field = field.map(str::to_owned);
    assert_eq!(got, (status, code.to_owned(), field), "{what}");
}

const NOT_UTF8: &str = "%FF%FE";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_a_bad_method_and_an_unknown_sub_path_as_json() {
    // GIVEN a server, and the routes its document lists
    let server = serve(Setup::default()).await;
    let doc = orchestrator_api::openapi::document();
    for (template, item) in doc["paths"].as_object().unwrap() {
        let url = template.replace("{id}", "x").replace("{checkpointId}", "x");
        for method in METHODS {
            if item.get(method.as_str().to_ascii_lowercase()).is_some() {
                continue;
            }
            // WHEN a method it does not serve is used
            let response = send(server.client.request(method.clone(), server.url(&url))).await;
            // THEN 405, as JSON, with the Allow header
            assert!(response.headers().contains_key("allow"), "{method} {url}");
            let got = error_of(&format!("{method} {url}"), response).await;
            let expected = (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed".into(),
                None,
            );
            assert_eq!(got, expected, "{method} {url}");
        }
        // WHEN a path under it that is no route is asked for THEN 404, as JSON
        let under = format!("{}/no-such/route", url.trim_end_matches('/'));
        for method in [Method::GET, Method::POST] {
            let what = format!("{method} {under}");
            let request = server.client.request(method, server.url(&under));
            refused(&what, request, StatusCode::NOT_FOUND, "not_found", None).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_path_query_header_or_body_is_a_json_error_naming_the_field() {
    // GIVEN a server, and the operations its document lists
    let server = serve(Setup::default()).await;
    let doc = orchestrator_api::openapi::document();
    for op in operations(&doc) {
        for (name, place) in &op.params {
            bad_parameter(&server, &op, name, place).await;
        }
        if op.doc.get("requestBody").is_some() {
            bad_bodies(&server, &op).await;
        }
    }
}

/// WHEN one parameter of `op` is bad THEN 4xx as JSON naming it, with a documented status.
async fn bad_parameter(server: &Server, op: &Operation, name: &str, place: &str) {
    let what = format!(
        "{} {} with a bad {place} parameter {name}",
        op.method, op.template
    );
    let request = |url: String| server.client.request(op.method.clone(), server.url(&url));
    let cases: Vec<reqwest::RequestBuilder> = match place {
        // Not UTF-8 once percent-decoded.
        "path" => vec![request(op.url(Some((name, NOT_UTF8))))],
        // A value no parameter takes, and the parameter given twice.
        "query" => vec![
            request(format!("{}?{name}=bogus!", op.url(None))),
            request(format!("{}?{name}=1&{name}=2", op.url(None))),
        ],
        // A value no header parameter takes, and one that is not visible ASCII.
        "header" => vec![
            request(op.url(None)).header(name, "!".repeat(300)),
            request(op.url(None)).header(
                name,
                reqwest::header::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
            ),
        ],
        other => panic!("{what}: a parameter in {other}"),
    };
    for case in cases {
        // A body that is fine, so that only the parameter is at fault.
        let case = case.json(&json!({ "objective": "x" }));
        let (status, code, field) = error_of(&what, send(case).await).await;
        assert!(
            op.documents(status),
            "{what}: {status} {code} is not documented"
        );
        assert_eq!(
            field.map(|f| f.to_ascii_lowercase()),
            Some(name.to_ascii_lowercase()),
            "{what}: {code}"
        );
    }
}

/// WHEN `op` gets a body that is not JSON, not an object, or of the wrong shape THEN 4xx as
/// JSON, naming the field when one is at fault.
async fn bad_bodies(server: &Server, op: &Operation) {
    let cases: [(&str, &str, StatusCode, &str, Option<&str>); 5] = [
        (
            "",
            "application/json",
            StatusCode::BAD_REQUEST,
            "malformed_json",
            None,
        ),
        (
            "{\"objective\": ",
            "application/json",
            StatusCode::BAD_REQUEST,
            "malformed_json",
            None,
        ),
        (
            "plain words",
            "text/plain",
            StatusCode::BAD_REQUEST,
            "malformed_json",
            None,
        ),
        (
            "[]",
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            Some("."),
        ),
        (
            "{\"bogus\": 1}",
            "application/json",
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            Some("bogus"),
        ),
    ];
    for (body, content_type, status, code, field) in cases {
        let what = format!(
            "{} {} with the body {body:?} as {content_type}",
            op.method, op.template
        );
        let request = server
            .client
            .request(op.method.clone(), server.url(&op.url(None)))
            .header("content-type", content_type)
            .body(body);
        assert!(op.documents(status), "{what}: {status} is not documented");
        refused(&what, request, status, code, field).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive_and_every_refusal_is_json() {
    // GIVEN a server with an API key
    let server = serve(Setup {
        api: ApiConfig {
            api_key: Some("s3cret".into()),
            ..ApiConfig::default()
        },
        ..Setup::default()
    })
    .await;
    let doc = orchestrator_api::openapi::document();
    for op in operations(&doc)
        .into_iter()
        .filter(|o| o.template.starts_with("/api/"))
    {
        let url = server.url(&op.url(None));
        let request = || server.client.request(op.method.clone(), &url);
        let what = format!("{} {}", op.method, op.template);
        // WHEN no token, another scheme, or a wrong token is sent THEN 401 or 403, as JSON
        refused(
            &what,
            request(),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            None,
        )
        .await;
        let basic = request().header("authorization", "Basic czNjcmV0");
        refused(&what, basic, StatusCode::UNAUTHORIZED, "unauthorized", None).await;
        let wrong = request().header("authorization", "bearer s3cre");
        refused(&what, wrong, StatusCode::FORBIDDEN, "forbidden", None).await;
        // WHEN the scheme is written in any case THEN the key is accepted
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            let response =
                send(request().header("authorization", format!("{scheme} s3cret"))).await;
            let status = response.status();
            assert!(
                status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                "{what} with `{scheme}`: {status}"
            );
        }
    }
}
