#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the assertion in a test

//! The HTTP/SSE API over a real socket: README.md's "The RunRequest and the stream", as a client sees it.
//! Every test serves the Router on 127.0.0.1:0 over a fresh SQLite store and the offline model.

mod common;

use std::time::Duration;

use common::*;
use orchestrator_api::ApiConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};

const RUNS: &str = "/api/v1/runs";
const RUN_STREAM: &str = "/api/v1/agent/run.stream";

// ---------------------------------------------------------------------------------------------
// A whole run, live and replayed
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_streams_every_frame_of_the_contract_and_ends_after_complete() {
    // GIVEN a server
    let server = serve(Setup::default()).await;
    // WHEN a client starts a run over run.stream with its own correlation id
    let response = send(
        server
            .post(RUN_STREAM)
            .header("x-correlation-id", "corr-abc.1")
            .json(&request(json!({}))),
    )
    .await;
    // THEN the response is an event stream that proxies must not buffer (checked on receipt)
    let mut sse = Sse::new(expect_ok_stream(response));
    // AND the body ends by itself: the last frame is `complete`
    let frames = sse.rest().await;
    // AND the body opens with the empty comment
    assert!(sse.raw.starts_with(b":\n\n"));
    // AND the ids are 1..n without a gap
    assert_consecutive(&frames, 1);
    // AND every frame's data carries the request's correlation id and one run id
    let run_id = frames[0].data["runId"].as_str().unwrap().to_owned();
    for f in &frames {
        assert_eq!(f.data["correlationId"], "corr-abc.1", "{}", f.data);
        assert_eq!(f.data["runId"], run_id.as_str(), "{}", f.data);
    }
    // AND it starts, plans (version 1), replans after QA (version 2, a delta with a reason)
    assert_eq!(frames[0].event, "start");
    let versions: Vec<u64> = frames
        .iter()
        .filter(|f| f.event == "plan_update")
        .map(|f| f.data["data"]["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2]);
    let replan = frames
        .iter()
        .filter(|f| f.event == "plan_update")
        .nth(1)
        .unwrap();
    assert!(replan.data["data"]["patch"].is_object());
    assert!(replan.data["data"]["reason"].is_string());
    // AND hands work to specialists (requested, then occurred) and streams their text
    let handoffs: Vec<&Ev> = frames.iter().filter(|f| f.event == "handoff").collect();
    assert!(handoffs.iter().any(|h| h.data["message"] == "requested"));
    assert!(handoffs.iter().any(|h| h.data["message"] == "occurred"));
    assert!(handoffs.iter().all(|h| h.data["data"]["to"].is_string()
        && h.data["data"]["capabilityId"].is_string()
        && h.data["data"]["stepId"].is_string()));
    let deltas: Vec<&Ev> = frames.iter().filter(|f| f.event == "delta").collect();
    assert!(!deltas.is_empty());
    assert!(
        deltas
            .iter()
            .all(|d| d.data["message"].is_string() && d.data["data"]["stepId"].is_string())
    );
    // AND the only `complete` is the last frame, completed, with the final bundle
    let last = frames.last().unwrap();
    assert_eq!(last.event, "complete");
    assert_eq!(last.status(), Some("completed"));
    assert!(last.data["data"]["result"]["content"].is_string());
    assert_eq!(frames.iter().filter(|f| f.event == "complete").count(), 1);
    // AND the stored run agrees
    let run = server.run(&run_id).await;
    assert_eq!(run["status"], "completed");
    assert_eq!(run["plan"]["version"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_a_finished_run_gives_the_live_frames_exactly() {
    // GIVEN a run watched live to the end, started without a correlation id
    let server = serve(Setup::default()).await;
    let live = server.run_stream(&request(json!({}))).await.rest().await;
    let run_id = live[0].data["runId"].as_str().unwrap().to_owned();
    // THEN the server gave all its frames one generated correlation id
    let correlation = live[0].data["correlationId"].as_str().unwrap().to_owned();
    assert!(!correlation.is_empty());
    assert!(
        live.iter()
            .all(|f| f.data["correlationId"] == correlation.as_str())
    );
    // WHEN the finished run's events are read again from the start
    let mut replay = server.events(&run_id, None).await;
    let replayed = replay.rest().await;
    // THEN the frames are identical: same ids, same event names, same data
    assert!(replay.raw.starts_with(b":\n\n"));
    assert_eq!(replayed, live);
    // AND resuming a finished run after frame 5 gives exactly the frames after 5
    let tail = server.events(&run_id, Some(5)).await.rest().await;
    assert_eq!(tail, live[5..]);
    // AND resuming after the last frame gives nothing and ends
    let last = live.last().unwrap().id;
    let nothing = server.events(&run_id, Some(last)).await.rest().await;
    assert!(nothing.is_empty());
}

/// Watches a slow run live up to its first delta, then resumes it in a second request with
/// `resume(k)`; the resumed stream must carry k+1.. and match the live one to the end.
async fn resume_mid_run(resume: impl AsyncFnOnce(&Server, &str, u64) -> Sse) {
    // GIVEN a run in progress, watched live up to its first delta (id k)
    let server = serve(Setup::slow()).await;
    let mut live = server.run_stream(&request(json!({}))).await;
    let mut seen = live.until(is("delta")).await;
    let k = seen.last().unwrap().id;
    let run_id = seen[0].data["runId"].as_str().unwrap().to_owned();
    assert_eq!(server.run(&run_id).await["status"], "running");
    // WHEN a second client resumes after k
    let mut resumed = resume(&server, &run_id, k).await;
    let rest = resumed.rest().await;
    // THEN it gets k+1, k+2, ... without a gap or a repeat, through `complete`
    assert_consecutive(&rest, k + 1);
    assert_eq!(rest.last().unwrap().status(), Some("completed"));
    // AND exactly the frames the live stream carried after k
    seen.extend(live.rest().await);
    assert_consecutive(&seen, 1);
    assert_eq!(rest, seen[k as usize..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_with_last_event_id_mid_run_replays_the_rest_then_goes_live() {
    resume_mid_run(async |server: &Server, run_id: &str, k: u64| {
        server.events(run_id, Some(k)).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_with_the_after_query_works_like_last_event_id() {
    resume_mid_run(async |server: &Server, run_id: &str, k: u64| {
        let response = send(server.get(&format!("{RUNS}/{run_id}/events?after={k}"))).await;
        Sse::new(expect_ok_stream(response))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_watchers_of_one_run_see_the_same_frames() {
    // GIVEN a run started without a stream, still in progress
    let server = serve(Setup::slow()).await;
    let run_id = server.start(&request(json!({}))).await;
    // WHEN two clients watch its events at once
    let (mut a, mut b) = tokio::join!(server.events(&run_id, None), server.events(&run_id, None));
    let (a, b) = tokio::join!(a.rest(), b.rest());
    // THEN both see every frame from 1, the same ids and the same data, through `complete`
    assert_consecutive(&a, 1);
    assert_eq!(a, b);
    assert_eq!(a.last().unwrap().status(), Some("completed"));
    assert!(a.iter().all(|f| f.data["runId"] == run_id.as_str()));
}

// ---------------------------------------------------------------------------------------------
// Disconnects and cancellation
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_detaches_and_the_run_goes_on() {
    // GIVEN a run in progress, watched over run.stream
    let server = serve(Setup::slow()).await;
    let mut sse = server.run_stream(&request(json!({}))).await;
    let seen = sse.until(is("delta")).await;
    let run_id = seen[0].data["runId"].as_str().unwrap().to_owned();
    // WHEN the client goes away mid-run
    drop(sse);
    // THEN the run still completes
    let run = server.settled(&run_id).await;
    assert_eq!(run["status"], "completed");
    assert_eq!(run["report"]["status"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_with_on_disconnect_cancel_cancels_the_run() {
    // GIVEN a run in progress that asked to be cancelled when its client leaves
    let server = serve(Setup::slow()).await;
    let mut sse = server
        .run_stream(&request(json!({ "onDisconnect": "cancel" })))
        .await;
    let seen = sse.until(is("delta")).await;
    let run_id = seen[0].data["runId"].as_str().unwrap().to_owned();
    // WHEN the client goes away mid-run
    drop(sse);
    // THEN the run ends cancelled
    let run = server.settled(&run_id).await;
    assert_eq!(run["status"], "cancelled");
    // AND its log ends with complete{status: cancelled}
    let frames = server.events(&run_id, None).await.rest().await;
    assert_consecutive(&frames, 1);
    assert_eq!(frames.last().unwrap().status(), Some("cancelled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_run_ends_its_stream_cancelled() {
    // GIVEN a run in progress, watched
    let server = serve(Setup::slow()).await;
    let mut sse = server.run_stream(&request(json!({}))).await;
    let mut frames = sse.until(is("delta")).await;
    let run_id = frames[0].data["runId"].as_str().unwrap().to_owned();
    // WHEN it is cancelled
    let response = send(server.post(&format!("{RUNS}/{run_id}/cancel"))).await;
    // THEN the cancel is accepted
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["runId"], run_id.as_str());
    // AND the stream goes on, gap-free, to complete{status: cancelled} and ends
    frames.extend(sse.rest().await);
    assert_consecutive(&frames, 1);
    let last = frames.last().unwrap();
    assert_eq!(last.event, "complete");
    assert_eq!(last.status(), Some("cancelled"));
    assert_eq!(server.run(&run_id).await["status"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_finished_run_is_a_conflict_and_an_unknown_run_is_not_found() {
    // GIVEN a finished run
    let server = serve(Setup::default()).await;
    let frames = server.run_stream(&request(json!({}))).await.rest().await;
    let run_id = frames[0].data["runId"].as_str().unwrap().to_owned();
    // WHEN it is cancelled THEN 409, and it stays completed with its log unchanged
    let response = send(server.post(&format!("{RUNS}/{run_id}/cancel"))).await;
    expect_error(response, StatusCode::CONFLICT, "conflict", None).await;
    assert_eq!(server.run(&run_id).await["status"], "completed");
    assert_eq!(server.events(&run_id, None).await.rest().await, frames);
    // WHEN a run that does not exist is cancelled THEN 404
    let response = send(server.post(&format!("{RUNS}/no-such-run/cancel"))).await;
    expect_error(response, StatusCode::NOT_FOUND, "not_found", None).await;
}

// ---------------------------------------------------------------------------------------------
// Human approval
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_resumes_a_paused_run_to_completion() {
    // GIVEN a run that must be approved before its final step, watched
    let server = serve(Setup::default()).await;
    let mut sse = server
        .run_stream(&request(json!({ "requireApproval": true })))
        .await;
    // WHEN it reaches the checkpoint
    let mut frames = sse.until(is("hitl_request")).await;
    let hitl = frames.last().unwrap().data["data"].clone();
    let run_id = frames[0].data["runId"].as_str().unwrap().to_owned();
    let checkpoint = hitl["checkpointId"].as_str().unwrap().to_owned();
    assert_eq!(hitl["kind"], "approval");
    assert!(hitl["question"].is_string() && hitl["expiresAt"].is_string());
    // THEN the run shows it waits on a person, at that checkpoint
    let run = server.run(&run_id).await;
    assert_eq!(run["status"], "pending_hitl");
    assert_eq!(run["checkpoint"]["id"], checkpoint.as_str());
    // AND an answer that is neither approve nor reject is refused, naming `decision`
    let approvals = format!("{RUNS}/{run_id}/approvals/{checkpoint}");
    let response = send(
        server
            .post(&approvals)
            .json(&json!({ "decision": "maybe" })),
    )
    .await;
    expect_error(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
        Some("decision"),
    )
    .await;
    // AND an answer to another checkpoint is a conflict
    let response = send(
        server
            .post(&format!("{RUNS}/{run_id}/approvals/cp-other"))
            .json(&json!({ "decision": "approve" })),
    )
    .await;
    expect_error(response, StatusCode::CONFLICT, "conflict", None).await;
    assert_eq!(server.run(&run_id).await["status"], "pending_hitl");
    // WHEN the checkpoint is approved
    let response = send(
        server
            .post(&approvals)
            .json(&json!({ "decision": "approve", "comment": "ship it" })),
    )
    .await;
    // THEN 202, and the same stream goes on, gap-free, to complete{status: completed}
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    frames.extend(sse.rest().await);
    assert_consecutive(&frames, 1);
    assert_eq!(frames.last().unwrap().status(), Some("completed"));
    assert_eq!(server.run(&run_id).await["status"], "completed");
    // AND approving again, now that the run is not waiting, is a conflict
    let response = send(
        server
            .post(&approvals)
            .json(&json!({ "decision": "approve" })),
    )
    .await;
    expect_error(response, StatusCode::CONFLICT, "conflict", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_for_a_run_that_is_not_waiting_is_a_conflict() {
    // GIVEN a run in progress that asked for no approval
    let server = serve(Setup::slow()).await;
    let mut sse = server.run_stream(&request(json!({}))).await;
    let frames = sse.until(is("delta")).await;
    let run_id = frames[0].data["runId"].as_str().unwrap().to_owned();
    // WHEN an approval arrives for it THEN 409, and the run carries on to completion
    let response = send(
        server
            .post(&format!("{RUNS}/{run_id}/approvals/cp-s4"))
            .json(&json!({ "decision": "approve" })),
    )
    .await;
    expect_error(response, StatusCode::CONFLICT, "conflict", None).await;
    assert_eq!(sse.rest().await.last().unwrap().status(), Some("completed"));
    // AND an approval for a run that does not exist is 404
    let response = send(
        server
            .post(&format!("{RUNS}/no-such-run/approvals/cp-s4"))
            .json(&json!({ "decision": "approve" })),
    )
    .await;
    expect_error(response, StatusCode::NOT_FOUND, "not_found", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_paused_at_a_checkpoint_is_kept_alive_with_pings() {
    // GIVEN a server that pings every 50 ms and a run paused at a checkpoint
    let server = serve(Setup {
        api: ApiConfig {
            ping_interval: Duration::from_millis(50),
            ..ApiConfig::default()
        },
        ..Setup::default()
    })
    .await;
    let mut sse = server
        .run_stream(&request(json!({ "requireApproval": true })))
        .await;
    let mut frames = sse.until(is("hitl_request")).await;
    let checkpoint = frames.last().unwrap().data["data"]["checkpointId"]
        .as_str()
        .unwrap()
        .to_owned();
    let run_id = frames[0].data["runId"].as_str().unwrap().to_owned();
    // WHEN nothing happens for a while
    sse.pings(2).await;
    // THEN the stream carried `: ping` comments, which are no frames
    assert!(count(&sse.raw, b"\n\n: ping\n\n") >= 2);
    // AND once approved, the stream goes on where it was
    let response = send(
        server
            .post(&format!("{RUNS}/{run_id}/approvals/{checkpoint}"))
            .json(&json!({ "decision": "approve" })),
    )
    .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    frames.extend(sse.rest().await);
    assert_consecutive(&frames, 1);
    assert_eq!(frames.last().unwrap().status(), Some("completed"));
}

// ---------------------------------------------------------------------------------------------
// Idempotency and auth
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_twice_with_one_idempotency_key_starts_one_run() {
    // GIVEN a server
    let server = serve(Setup::default()).await;
    let start = || {
        send(
            server
                .post(RUNS)
                .header("Idempotency-Key", "order-42")
                .json(&request(json!({}))),
        )
    };
    // WHEN a run is started with an Idempotency-Key
    let first = start().await;
    // THEN 202 and a new run
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["created"], true);
    let run_id = first["runId"].as_str().unwrap().to_owned();
    assert_eq!(first["eventsUrl"], format!("{RUNS}/{run_id}/events"));
    assert_eq!(first["runUrl"], format!("{RUNS}/{run_id}"));
    // WHEN the same start is sent again
    let second = start().await;
    // THEN 200 and the same run, not a new one
    assert_eq!(second.status(), StatusCode::OK);
    let second: Value = second.json().await.unwrap();
    assert_eq!(second["created"], false);
    assert_eq!(second["runId"], run_id.as_str());
    let runs = server.runs().await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["runId"], run_id.as_str());
    // AND run.stream with that key streams the existing run
    let response = send(
        server
            .post(RUN_STREAM)
            .header("Idempotency-Key", "order-42")
            .json(&request(json!({}))),
    )
    .await;
    let frames = Sse::new(expect_ok_stream(response)).rest().await;
    assert!(frames.iter().all(|f| f.data["runId"] == run_id.as_str()));
    assert_eq!(server.runs().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_guards_the_api_but_not_healthz() {
    // GIVEN a server with an API key
    let server = serve(Setup {
        api: ApiConfig {
            api_key: Some("s3cret".into()),
            ..ApiConfig::default()
        },
        ..Setup::default()
    })
    .await;
    // WHEN a request has no token THEN 401, with the scheme to use
    let response = send(server.get(RUNS)).await;
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    expect_error(response, StatusCode::UNAUTHORIZED, "unauthorized", None).await;
    let response = send(server.post(RUN_STREAM).json(&request(json!({})))).await;
    expect_error(response, StatusCode::UNAUTHORIZED, "unauthorized", None).await;
    // WHEN the token is wrong THEN 403
    let response = send(server.get(RUNS).bearer_auth("s3cre")).await;
    expect_error(response, StatusCode::FORBIDDEN, "forbidden", None).await;
    let response = send(
        server
            .post(RUNS)
            .bearer_auth("wrong")
            .json(&request(json!({}))),
    )
    .await;
    expect_error(response, StatusCode::FORBIDDEN, "forbidden", None).await;
    // WHEN the token is right THEN 200, and the refused starts started nothing
    let response = send(server.get(RUNS).bearer_auth("s3cret")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["runs"], json!([]));
    // AND /healthz needs no token
    let response = send(server.get("/healthz")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({ "status": "ok" })
    );
}

// ---------------------------------------------------------------------------------------------
// Bad input: a JSON error naming the field, and nothing started or stored
// ---------------------------------------------------------------------------------------------

/// Sends `body` to both start endpoints; each must refuse it the same way and store nothing.
async fn refused(
    server: &Server,
    body: impl Into<String>,
    status: StatusCode,
    code: &str,
    field: Option<&str>,
) {
    let body = body.into();
    for path in [RUNS, RUN_STREAM] {
        let response = send(
            server
                .post(path)
                .header("content-type", "application/json")
                .body(body.clone()),
        )
        .await;
        expect_error(response, status, code, field).await;
    }
    assert!(server.runs().await.is_empty(), "nothing was started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_size_limit_is_413() {
    // GIVEN a server that takes bodies of at most 1 KiB
    let server = serve(Setup {
        api: ApiConfig {
            max_body_bytes: 1024,
            ..ApiConfig::default()
        },
        ..Setup::default()
    })
    .await;
    // WHEN a valid request of 4 KiB arrives THEN 413
    let body = json!({ "objective": OBJECTIVE, "state": { "brief": "x".repeat(4096) } });
    refused(
        &server,
        body.to_string(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_objective_is_422_naming_objective() {
    let server = serve(Setup::default()).await;
    for objective in ["", "   "] {
        let body = json!({ "objective": objective });
        refused(
            &server,
            body.to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            Some("objective"),
        )
        .await;
    }
    // AND a missing objective names it too
    refused(
        &server,
        "{}",
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
        Some("objective"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_field_is_422_naming_it() {
    let server = serve(Setup::default()).await;
    let body = request(json!({ "bogus": 1 }));
    refused(
        &server,
        body.to_string(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
        Some("options.bogus"),
    )
    .await;
    let body = json!({ "objective": OBJECTIVE, "bogus": true });
    refused(
        &server,
        body.to_string(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
        Some("bogus"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_of_the_wrong_type_is_422_naming_it() {
    let server = serve(Setup::default()).await;
    let body = json!({ "objective": 42 });
    refused(
        &server,
        body.to_string(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
        Some("objective"),
    )
    .await;
    let body = request(json!({ "maxTurns": "three" }));
    refused(
        &server,
        body.to_string(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
        Some("options.maxTurns"),
    )
    .await;
    let body = json!({ "objective": OBJECTIVE, "mode": "poem" });
    refused(
        &server,
        body.to_string(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
        Some("mode"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_system_prompt_override_over_8000_characters_is_422() {
    let server = serve(Setup::default()).await;
    let body = request(json!({ "systemPromptOverride": "é".repeat(8001) }));
    refused(
        &server,
        body.to_string(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
        Some("options.systemPromptOverride"),
    )
    .await;
    // AND 8000 characters exactly is accepted
    let body = request(json!({ "systemPromptOverride": "é".repeat(8000) }));
    let frames = server.run_stream(&body).await.rest().await;
    assert_eq!(frames.last().unwrap().status(), Some("completed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_400() {
    let server = serve(Setup::default()).await;
    refused(
        &server,
        r#"{"objective": "#,
        StatusCode::BAD_REQUEST,
        "malformed_json",
        None,
    )
    .await;
    refused(
        &server,
        r#"{"objective": "a"} trailing"#,
        StatusCode::BAD_REQUEST,
        "malformed_json",
        None,
    )
    .await;
    refused(&server, "", StatusCode::BAD_REQUEST, "malformed_json", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_correlation_id_header_is_422_naming_it() {
    let server = serve(Setup::default()).await;
    for path in [RUNS, RUN_STREAM] {
        let response = send(
            server
                .post(path)
                .header("x-correlation-id", "has spaces")
                .json(&request(json!({}))),
        )
        .await;
        expect_error(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            Some("x-correlation-id"),
        )
        .await;
    }
    assert!(server.runs().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_run_is_404() {
    let server = serve(Setup::default()).await;
    let response = send(server.get(&format!("{RUNS}/no-such-run"))).await;
    expect_error(response, StatusCode::NOT_FOUND, "not_found", None).await;
    let response = send(server.get(&format!("{RUNS}/no-such-run/events"))).await;
    expect_error(response, StatusCode::NOT_FOUND, "not_found", None).await;
    let response = send(
        server
            .get(&format!("{RUNS}/no-such-run/events"))
            .header("Last-Event-ID", "3"),
    )
    .await;
    expect_error(response, StatusCode::NOT_FOUND, "not_found", None).await;
    assert!(server.runs().await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Overload
// ---------------------------------------------------------------------------------------------

async fn expect_overloaded(response: reqwest::Response) {
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let secs: u64 = retry_after
        .expect("a Retry-After header")
        .parse()
        .expect("whole seconds");
    assert!(secs >= 1);
    expect_error(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_streams_a_stream_is_503_with_retry_after() {
    // GIVEN a server that allows one open stream, and a run watched over it
    let server = serve(Setup {
        api: ApiConfig {
            max_streams: 1,
            ..ApiConfig::default()
        },
        ..Setup::slow()
    })
    .await;
    let mut sse = server.run_stream(&request(json!({}))).await;
    let run_id = sse.until(is("start")).await[0].data["runId"]
        .as_str()
        .unwrap()
        .to_owned();
    // WHEN another run is started over run.stream THEN 503, and it is not started
    let response = send(server.post(RUN_STREAM).json(&request(json!({})))).await;
    expect_overloaded(response).await;
    let runs = server.runs().await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["runId"], run_id.as_str());
    // AND a second watcher of the run is refused the same way
    let response = send(server.get(&format!("{RUNS}/{run_id}/events"))).await;
    expect_overloaded(response).await;
    // AND a start without a stream is still taken
    server.start(&request(json!({}))).await;
    // WHEN the open stream ends THEN its slot is free again
    assert_eq!(sse.rest().await.last().unwrap().status(), Some("completed"));
    let reopened = async {
        loop {
            let response = send(server.get(&format!("{RUNS}/{run_id}/events"))).await;
            if response.status() == StatusCode::OK {
                return Sse::new(expect_ok_stream(response));
            }
            expect_overloaded(response).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let mut again = tokio::time::timeout(DEADLINE, reopened)
        .await
        .expect("the slot is freed");
    assert_eq!(
        again.rest().await.last().unwrap().status(),
        Some("completed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_active_runs_a_start_is_503_with_retry_after() {
    // GIVEN a server that drives one run at a time, and a run in progress
    let server = serve(Setup {
        max_active: 1,
        ..Setup::slow()
    })
    .await;
    let run_id = server.start(&request(json!({}))).await;
    // WHEN another run is started, with or without a stream THEN 503, and nothing is stored
    let response = send(server.post(RUNS).json(&request(json!({})))).await;
    expect_overloaded(response).await;
    let response = send(server.post(RUN_STREAM).json(&request(json!({})))).await;
    expect_overloaded(response).await;
    let runs = server.runs().await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["runId"], run_id.as_str());
    // WHEN the run finishes THEN a new run is taken again
    assert_eq!(server.settled(&run_id).await["status"], "completed");
    let started = async {
        loop {
            let response = send(server.post(RUNS).json(&request(json!({})))).await;
            if response.status() == StatusCode::ACCEPTED {
                return;
            }
            expect_overloaded(response).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(DEADLINE, started)
        .await
        .expect("the slot is freed");
    assert_eq!(server.runs().await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ended_for_time_says_retry_and_the_client_continues_without_a_gap() {
    // GIVEN a server whose streams end after 300 ms (the streamer's function has a time
    // limit), and a run that takes longer, watched with onDisconnect: cancel
    let server = serve(Setup {
        api: orchestrator_api::ApiConfig {
            max_stream: Some(Duration::from_millis(300)),
            ..orchestrator_api::ApiConfig::default()
        },
        ..Setup::slow()
    })
    .await;
    let mut first = server
        .run_stream(&request(json!({"onDisconnect": "cancel"})))
        .await;
    let mut frames = first.rest().await;

    // THEN the first response ends with a retry hint before the run is over, and the run goes
    // on: a stream that ended for time is not a client that left
    assert!(
        first.raw.ends_with(b"retry: 1000\n\n"),
        "{:?}",
        String::from_utf8_lossy(&first.raw[first.raw.len().saturating_sub(80)..])
    );
    assert_ne!(frames.last().unwrap().event, "complete");
    let run_id = frames[0].data["runId"].as_str().unwrap().to_owned();

    // WHEN the client reconnects with Last-Event-ID, as often as it is told to
    for _ in 0..100 {
        if frames.last().unwrap().event == "complete" {
            break;
        }
        let last = frames.last().unwrap().id;
        frames.extend(server.events(&run_id, Some(last)).await.rest().await);
    }

    // THEN it has every frame once, in order, through `complete`
    assert_consecutive(&frames, 1);
    assert_eq!(frames.last().unwrap().status(), Some("completed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_start_rate_a_key_gets_429_with_retry_after_and_other_keys_do_not() {
    // GIVEN a server that allows one run start a minute per key
    let server = serve(Setup {
        api: ApiConfig {
            max_starts_per_minute: Some(1),
            ..ApiConfig::default()
        },
        ..Setup::default()
    })
    .await;
    server.start(&request(json!({}))).await;
    // WHEN the same caller starts again, on either start route
    for path in [RUNS, RUN_STREAM] {
        let response = send(server.post(path).json(&request(json!({})))).await;
        // THEN 429, saying when to retry, and nothing is started
        let secs: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&secs), "{secs}");
        expect_error(
            response,
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            None,
        )
        .await;
    }
    assert_eq!(server.runs().await.len(), 1);
    // AND a caller with another key is not held back by the first one's rate
    let response = send(
        server
            .post(RUNS)
            .bearer_auth("another-key")
            .json(&request(json!({}))),
    )
    .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
}
