//! The conformance suite against DynamoDB (a real emulator: moto server, started by
//! `infra/emulator.sh`), plus what only DynamoDB has: item size limits, transaction limits,
//! throttling retries, TTLs, a missing table.
//!
//! Runs when `DYNAMODB_TEST_ENDPOINT` names the emulator; without it each test prints a skip
//! note and passes, except under CI (`CI` set), where a missing endpoint fails the test.
//! Every test uses its own table, so they run in parallel.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the assertion

mod conformance;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use conformance::{message, messages, state, step_result};
use orchestrator_core::ports::{CallLog, CallUnit, EventLog, RunStore, StoreError};
use orchestrator_core::types::{
    Plan, PlanStep, ReportSummary, RunReport, RunStatus, StepStatus, Usage,
};
use orchestrator_store::{DynamoDbConfig, DynamoDbStore};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The emulator's endpoint, or `None` (with a note) when the suite is to be skipped.
fn endpoint() -> Option<String> {
    if let Ok(url) = std::env::var("DYNAMODB_TEST_ENDPOINT")
        && !url.trim().is_empty()
    {
        return Some(url);
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(
        !ci,
        "DYNAMODB_TEST_ENDPOINT is not set, and CI is: the DynamoDB suite must run in CI (.ci/run starts the emulator with infra/emulator.sh and exports it)"
    );
    // Written to stderr directly (not `eprintln!`, which the test harness captures), once.
    static NOTE: std::sync::Once = std::sync::Once::new();
    NOTE.call_once(|| {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: the DynamoDB suite (tests/dynamodb.rs) needs an emulator: run `export DYNAMODB_TEST_ENDPOINT=$(infra/emulator.sh)`, then `cargo test` again."
        );
    });
    None
}

/// A configuration for a new, uniquely named table at `endpoint`, with the placeholder
/// credentials emulators accept (nobody needs real ones to run the tests).
fn config(endpoint: &str) -> DynamoDbConfig {
    let mut config = DynamoDbConfig::new(format!("test-{}", uuid::Uuid::new_v4().simple()));
    config.endpoint_url = Some(endpoint.to_owned());
    config.region = Some("us-east-1".to_owned());
    config.placeholder_credentials = true;
    config.max_attempts = 3;
    config.initial_backoff = Duration::from_millis(10);
    config
}

async fn open(config: &DynamoDbConfig) -> DynamoDbStore {
    DynamoDbStore::connect(config).await
}

/// A store on a fresh table, or `None` when the suite is skipped.
async fn fresh() -> Option<DynamoDbStore> {
    let endpoint = endpoint()?;
    let store = open(&config(&endpoint)).await;
    store.create_table().await.unwrap();
    Some(store)
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some(s) = fresh().await else { return };
            conformance::$name(&s).await;
        }
    )*};
}

conformance!(
    create_once,
    create_same_id_conflicts,
    commit_appends_gap_free,
    read_after_pages,
    read_from_inside_a_batch,
    many_small_deltas_read_back_in_order,
    wait_beyond_times_out,
    large_output_round_trip,
    step_result_first_writer_wins,
    reports_upsert,
    unknown_run,
    events_must_belong_to_the_run,
    list_runs_newest_first,
    status_transition_refused,
    open_step_once_per_attempt,
    commit_finished_writes_the_report,
    commit_transition_writes_it_all,
    commit_transition_refuses_a_taken_result,
    paging_within_one_millisecond,
    leases_fence_stale_owners,
    model_calls_round_trip_in_unit_order,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_through_one_store() {
    let Some(s) = fresh().await else { return };
    let s = Arc::new(s);
    conformance::concurrent_appends(|| Arc::clone(&s)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_through_separate_clients() {
    // Each writer has its own SDK client, as separate Lambda invocations would: only the
    // conditional transactions keep the seqs gap-free.
    let Some(endpoint) = endpoint() else { return };
    let config = config(&endpoint);
    let first = open(&config).await;
    first.create_table().await.unwrap();
    let mut stores = vec![Arc::new(first)];
    for _ in 0..4 {
        stores.push(Arc::new(open(&config).await));
    }
    let stores = Mutex::new(stores);
    conformance::concurrent_appends(|| stores.lock().unwrap().remove(0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_beyond_wakes_on_append() {
    let Some(s) = fresh().await else { return };
    conformance::wait_beyond_wakes_on_append(Arc::new(s)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_restart() {
    let Some(endpoint) = endpoint() else { return };
    let config = config(&endpoint);
    open(&config).await.create_table().await.unwrap();
    conformance::resume_after_restart(|| open(&config)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_beyond_sees_another_clients_append_by_polling() {
    // GIVEN two stores with their own clients on one table, a reader waiting on one
    let Some(endpoint) = endpoint() else { return };
    let config = config(&endpoint);
    let writer = open(&config).await;
    writer.create_table().await.unwrap();
    let reader = open(&config).await;
    writer
        .create_run(&state("run-x", 1_000), &[])
        .await
        .unwrap();
    let waiter = tokio::spawn(async move {
        reader
            .wait_beyond("run-x", 0, Duration::from_secs(30))
            .await
            .unwrap();
        Instant::now()
    });
    tokio::time::sleep(Duration::from_millis(600)).await;

    // WHEN the other store appends
    let before = Instant::now();
    writer
        .append("run-x", &[message("run-x", "hi")])
        .await
        .unwrap();

    // THEN the reader notices within its longest poll interval (plus a request)
    let woke = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the reader never saw the append")
        .unwrap();
    assert!(
        woke.duration_since(before) < Duration::from_millis(1_000),
        "{:?}",
        woke.duration_since(before)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_table_is_idempotent() {
    // GIVEN a store whose table exists
    let Some(s) = fresh().await else { return };
    // WHEN it is created again THEN nothing fails and the table still works
    s.create_table().await.unwrap();
    s.check_table().await.unwrap();
    s.create_run(&state("run-1", 1_000), &[]).await.unwrap();
    assert!(s.load_run("run-1").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_is_a_clear_error_naming_it() {
    // GIVEN a store on a table that was never created
    let Some(endpoint) = endpoint() else { return };
    let config = config(&endpoint);
    let s = open(&config).await;

    // WHEN it is checked or used
    let checked = s.check_table().await.unwrap_err();
    let loaded = s.load_run("run-1").await.unwrap_err();

    // THEN the error names the table and how to create it
    for err in [checked, loaded] {
        let StoreError::Unavailable(msg) = err else {
            panic!("expected Unavailable, got {err:?}")
        };
        assert!(msg.contains(&config.table_name), "{msg}");
        assert!(msg.contains("--create-table"), "{msg}");
    }
}

fn plan(version: u32, steps: &[&str]) -> Plan {
    Plan {
        version,
        steps: steps
            .iter()
            .map(|id| PlanStep {
                id: (*id).to_owned(),
                capability_id: Some("copy".to_owned()),
                action: None,
                label: None,
                status: StepStatus::Pending,
                depends_on: Vec::new(),
                note: None,
                acceptance_criteria: Vec::new(),
            })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_stores_each_new_plan_version_once() {
    // GIVEN a run without a plan
    let Some(s) = fresh().await else { return };
    let mut st = state("run-v", 1_000);
    s.create_run(&st, &[]).await.unwrap();
    assert!(s.plan_versions("run-v").await.unwrap().is_empty());

    // WHEN version 1 is committed, committed again changed, then version 2
    st.plan = plan(1, &["s1"]);
    let v1 = st.plan.clone();
    s.commit(&st, &[]).await.unwrap();
    st.plan.steps[0].status = StepStatus::Done;
    s.commit(&st, &[]).await.unwrap();
    st.plan = plan(2, &["s1", "s2"]);
    s.commit(&st, &messages("run-v", &["replanned"]))
        .await
        .unwrap();

    // THEN each version is stored once, as first committed
    assert_eq!(
        s.plan_versions("run-v").await.unwrap(),
        vec![v1, st.plan.clone()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_events_than_one_transaction_holds_stay_gap_free() {
    // GIVEN a run created with 150 events (DynamoDB takes 100 items per transaction)
    let Some(s) = fresh().await else { return };
    let texts: Vec<String> = (0..150).map(|i| format!("e{i}")).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let created = s
        .create_run(&state("run-b", 1_000), &messages("run-b", &refs))
        .await
        .unwrap();
    let orchestrator_core::ports::Created::New { frames } = created else {
        panic!("expected a new run")
    };
    assert_eq!(frames.len(), 150);

    // WHEN a commit adds 250 more
    let more: Vec<String> = (150..400).map(|i| format!("e{i}")).collect();
    let refs: Vec<&str> = more.iter().map(String::as_str).collect();
    let mut st = state("run-b", 1_000);
    st.status = RunStatus::Completed;
    let frames = s.commit(&st, &messages("run-b", &refs)).await.unwrap();

    // THEN seqs run 1..=400 without a gap, in order, and the state is saved
    assert_eq!(frames.first().map(|f| f.seq), Some(151));
    assert_eq!(frames.last().map(|f| f.seq), Some(400));
    let all = s.read_after("run-b", 0, 1_000).await.unwrap();
    assert_eq!(
        all.iter().map(|f| f.seq).collect::<Vec<_>>(),
        (1..=400).collect::<Vec<_>>()
    );
    assert_eq!(s.load_run("run-b").await.unwrap(), Some(st));
    // AND reading pages through the log in steps works from any point
    let page = s.read_after("run-b", 299, 50).await.unwrap();
    assert_eq!(page.first().map(|f| f.seq), Some(300));
    assert_eq!(page.len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_and_a_report_over_400_kb_round_trip_and_replace() {
    // GIVEN a run whose state carries 1 MB of brief (over DynamoDB's 400 KB item limit)
    let Some(s) = fresh().await else { return };
    let big = "0123456789abcdéf".repeat(64 * 1024);
    let mut st = state("run-big", 1_000);
    st.request.state.brief = Some(json!({"notes": big}));
    s.create_run(&st, &messages("run-big", &["start"]))
        .await
        .unwrap();
    assert_eq!(s.load_run("run-big").await.unwrap(), Some(st.clone()));

    // WHEN the state is committed again (smaller), and a 1 MB report is put, then replaced
    st.request.state.brief = Some(json!({"notes": "short"}));
    s.commit(&st, &[]).await.unwrap();
    let mut report = RunReport {
        run_id: "run-big".to_owned(),
        status: RunStatus::Completed,
        steps: vec![step_result("s1", 1, json!({"content": big}))],
        summary: ReportSummary {
            steps: 1,
            failures: 0,
            duration_ms: 1,
            tokens: Usage::default(),
        },
        final_bundle: None,
        message: None,
        quality_gate: Default::default(),
    };
    s.put_report(&report).await.unwrap();
    let stored_big = s.get_report("run-big").await.unwrap();
    report.message = Some("replaced".to_owned());
    report.steps.clear();
    s.put_report(&report).await.unwrap();

    // THEN each reads back whole
    assert_eq!(s.load_run("run-big").await.unwrap(), Some(st));
    assert_eq!(stored_big.unwrap().steps[0].output["content"], json!(big));
    assert_eq!(s.get_report("run-big").await.unwrap(), Some(report));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_with_events_is_one_write_request() {
    // GIVEN a run
    let Some(s) = fresh().await else { return };
    let mut st = state("run-w", 1_000);
    s.create_run(&st, &messages("run-w", &["a"])).await.unwrap();
    let before = s.write_requests();

    // WHEN a transition with a new plan and three events is committed, then one event appended
    st.plan = plan(1, &["s1"]);
    s.commit(&st, &messages("run-w", &["b", "c", "d"]))
        .await
        .unwrap();
    s.append("run-w", &messages("run-w", &["e"])).await.unwrap();

    // THEN each cost one write request (a transaction), and nothing else was written
    assert_eq!(s.write_requests() - before, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_carry_a_ttl_and_runs_do_not() {
    // GIVEN a store whose events expire after 7 days
    let Some(endpoint) = endpoint() else { return };
    let mut config = config(&endpoint);
    config.events_ttl_days = 7;
    let s = open(&config).await;
    s.create_table().await.unwrap();

    // WHEN a run with an event is created
    s.create_run(&state("run-t", 1_000), &messages("run-t", &["x"]))
        .await
        .unwrap();

    // THEN the event item has a ttl about 7 days ahead, and the run's meta item none
    let client = config.client().await;
    let get = |sk: &'static str| {
        let client = client.clone();
        let table = config.table_name.clone();
        async move {
            client
                .get_item()
                .table_name(table)
                .key("pk", AttributeValue::S("RUN#run-t".into()))
                .key("sk", AttributeValue::S(sk.into()))
                .send()
                .await
                .unwrap()
                .item
                .unwrap()
        }
    };
    let event: HashMap<String, AttributeValue> = get("EV#00000000000000000001").await;
    let ttl: u64 = event["ttl"].as_n().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(ttl.abs_diff(now + 7 * 86_400) < 120, "ttl {ttl}, now {now}");
    assert!(!get("META").await.contains_key("ttl"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_call_expires_with_the_retention_setting() {
    // GIVEN a store that keeps model calls 3 days
    let Some(endpoint) = endpoint() else { return };
    let mut config = config(&endpoint);
    config.calls_ttl_days = 3;
    let s = open(&config).await;
    s.create_table().await.unwrap();
    s.create_run(&state("run-k", 1_000), &[]).await.unwrap();

    // WHEN a call made at t=1000 s is recorded
    let mut call = conformance::call(CallUnit::Plan { version: 1 }, 0, "plan");
    call.started_at_ms = 1_000_000;
    s.record_call("run-k", &call).await.unwrap();

    // THEN its item's ttl is 3 days after the call
    let item = config
        .client()
        .await
        .get_item()
        .table_name(&config.table_name)
        .key("pk", AttributeValue::S("RUN#run-k".into()))
        .key("sk", AttributeValue::S("CALL#plan#0001#000000".into()))
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    assert_eq!(
        item["ttl"].as_n().unwrap(),
        &(1_000 + 3 * 86_400).to_string()
    );
}

/// A proxy on 127.0.0.1:0 in front of the emulator that answers the first `throttle` write
/// requests (PutItem, UpdateItem, TransactWriteItems) with DynamoDB's throttling error, and
/// forwards everything else. One request per connection, so framing stays trivial.
struct ThrottlingProxy {
    endpoint: String,
    throttled: Arc<AtomicUsize>,
    writes_forwarded: Arc<AtomicUsize>,
}

async fn throttling_proxy(upstream: &str, throttle: usize) -> ThrottlingProxy {
    let upstream = upstream
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let throttled = Arc::new(AtomicUsize::new(0));
    let writes_forwarded = Arc::new(AtomicUsize::new(0));
    let (t, w) = (Arc::clone(&throttled), Arc::clone(&writes_forwarded));
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                return;
            };
            let (upstream, t, w) = (upstream.clone(), Arc::clone(&t), Arc::clone(&w));
            tokio::spawn(async move {
                let _ = proxy_one(conn, &upstream, throttle, &t, &w).await;
            });
        }
    });
    ThrottlingProxy {
        endpoint,
        throttled,
        writes_forwarded,
    }
}

/// Reads up to the end of the head; returns (head, what came after it).
async fn read_head(conn: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            return Ok((head, buf[end + 4..].to_vec()));
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The head without its Connection header, asking the peer to close after this message.
fn closing(head: &str) -> String {
    let lines: Vec<&str> = head
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    format!("{}\r\nconnection: close\r\n\r\n", lines.join("\r\n"))
}

async fn proxy_one(
    mut client: TcpStream,
    upstream: &str,
    throttle: usize,
    throttled: &AtomicUsize,
    writes_forwarded: &AtomicUsize,
) -> std::io::Result<()> {
    let (head, mut body) = read_head(&mut client).await?;
    let header = |name: &str| {
        head.split("\r\n").find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while body.len() < length {
        let mut chunk = vec![0u8; length - body.len()];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let target = header("x-amz-target").unwrap_or_default();
    let write = ["PutItem", "UpdateItem", "TransactWriteItems"]
        .iter()
        .any(|op| target.ends_with(op));
    if write
        && throttled
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < throttle).then_some(n + 1)
            })
            .is_ok()
    {
        let json = r#"{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException","message":"The level of configured provisioned throughput for the table was exceeded."}"#;
        let response = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}",
            json.len()
        );
        client.write_all(response.as_bytes()).await?;
        return client.shutdown().await;
    }
    if write {
        writes_forwarded.fetch_add(1, Ordering::SeqCst);
    }
    let mut server = TcpStream::connect(upstream).await?;
    server.write_all(closing(&head).as_bytes()).await?;
    server.write_all(&body).await?;
    let (response_head, mut rest) = read_head(&mut server).await?;
    server.read_to_end(&mut rest).await?;
    client.write_all(closing(&response_head).as_bytes()).await?;
    client.write_all(&rest).await?;
    client.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_write_is_retried_by_the_sdk() {
    // GIVEN a table, and a store that reaches it through a proxy that throttles the first
    // two write requests
    let Some(endpoint) = endpoint() else { return };
    let direct = config(&endpoint);
    open(&direct).await.create_table().await.unwrap();
    let proxy = throttling_proxy(&endpoint, 2).await;
    let mut through = direct.clone();
    through.endpoint_url = Some(proxy.endpoint.clone());
    let s = open(&through).await;

    // WHEN a run is created and an event appended
    s.create_run(&state("run-r", 1_000), &messages("run-r", &["a"]))
        .await
        .unwrap();
    let frames = s.append("run-r", &messages("run-r", &["b"])).await.unwrap();

    // THEN the first write was throttled twice and went through on the SDK's third attempt,
    // the second went straight through; the store itself sent each write once
    assert_eq!(proxy.throttled.load(Ordering::SeqCst), 2);
    assert_eq!(proxy.writes_forwarded.load(Ordering::SeqCst), 2);
    assert_eq!(s.write_requests(), 2);
    assert_eq!(frames[0].seq, 2);
    let direct_store = open(&direct).await;
    assert_eq!(
        direct_store.read_after("run-r", 0, 10).await.unwrap().len(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_past_the_max_attempts_is_an_error_not_a_silent_loss() {
    // GIVEN a store allowed 2 attempts per request, behind a proxy that throttles 2 writes
    let Some(endpoint) = endpoint() else { return };
    let direct = config(&endpoint);
    open(&direct).await.create_table().await.unwrap();
    let proxy = throttling_proxy(&endpoint, 2).await;
    let mut through = direct.clone();
    through.endpoint_url = Some(proxy.endpoint.clone());
    through.max_attempts = 2;
    let s = open(&through).await;

    // WHEN a run is created
    let err = s
        .create_run(&state("run-e", 1_000), &messages("run-e", &["a"]))
        .await
        .unwrap_err();

    // THEN the store reports the throttling, and nothing was written
    let StoreError::Unavailable(msg) = err else {
        panic!("expected Unavailable, got {err:?}")
    };
    assert!(msg.contains("ProvisionedThroughputExceeded"), "{msg}");
    assert_eq!(proxy.throttled.load(Ordering::SeqCst), 2);
    assert_eq!(open(&direct).await.load_run("run-e").await.unwrap(), None);
}

/// `len` bytes of text that deflate cannot shrink (a simple generator's letters, seeded).
fn incompressible(seed: u64, len: usize) -> String {
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'!' + (x % 90) as u8)
        })
        .collect()
}

/// The run's event items as stored, in key order.
async fn event_items(
    config: &DynamoDbConfig,
    run_id: &str,
) -> Vec<HashMap<String, AttributeValue>> {
    config
        .client()
        .await
        .query()
        .table_name(&config.table_name)
        .consistent_read(true)
        .key_condition_expression("pk = :pk AND begins_with(sk, :ev)")
        .expression_attribute_values(":pk", AttributeValue::S(format!("RUN#{run_id}")))
        .expression_attribute_values(":ev", AttributeValue::S("EV#".into()))
        .send()
        .await
        .unwrap()
        .items
        .unwrap_or_default()
}

fn sk(item: &HashMap<String, AttributeValue>) -> &str {
    item["sk"].as_s().unwrap()
}

fn first_seq(item: &HashMap<String, AttributeValue>) -> u64 {
    item["seq"].as_n().unwrap().parse().unwrap()
}

/// A store on a fresh table and its configuration, or `None` when the suite is skipped.
async fn fresh_with_config() -> Option<(DynamoDbStore, DynamoDbConfig)> {
    let endpoint = endpoint()?;
    let config = config(&endpoint);
    let store = open(&config).await;
    store.create_table().await.unwrap();
    Some((store, config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_appended_batch_is_one_item_keyed_by_its_last_seq() {
    // GIVEN a run created with one event
    let Some((s, config)) = fresh_with_config().await else {
        return;
    };
    s.create_run(&state("run-p", 1_000), &messages("run-p", &["first"]))
        .await
        .unwrap();

    // WHEN ten small events are appended in one call
    let texts: Vec<String> = (2..=11).map(|i| format!("event {i}")).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let frames = s.append("run-p", &messages("run-p", &refs)).await.unwrap();

    // THEN the log is two items: the first event's, and the ten's, keyed by the last seq and
    // holding the first
    let items = event_items(&config, "run-p").await;
    let keys: Vec<&str> = items.iter().map(sk).collect();
    assert_eq!(keys, ["EV#00000000000000000001", "EV#00000000000000000011"]);
    assert_eq!(first_seq(&items[1]), 2);
    // AND a read from a seq inside that item returns its later events, in order
    let tail = s.read_after("run-p", 6, 100).await.unwrap();
    assert_eq!(tail, frames[5..].to_vec());
    // AND a waiter after a seq inside it sees there is more, and after its last that there
    // is not
    let started = Instant::now();
    s.wait_beyond("run-p", 10, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    s.wait_beyond("run-p", 11, Duration::from_millis(100))
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_past_the_size_budget_is_split_across_items() {
    // GIVEN a run
    let Some((s, config)) = fresh_with_config().await else {
        return;
    };
    s.create_run(&state("run-s", 1_000), &[]).await.unwrap();

    // WHEN one call appends 40 events of about 1 KB, one of 300 KB (over the inline limit:
    // its JSON goes in parts), and five small ones
    // (text that does not deflate: events are kept compressed when that makes them smaller)
    let mut texts: Vec<String> = (0..40).map(|i| incompressible(i, 1024)).collect();
    texts.push(incompressible(99, 300 * 1024));
    texts.extend((0..5).map(|i| format!("small {i}")));
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let frames = s.append("run-s", &messages("run-s", &refs)).await.unwrap();
    assert_eq!(frames.len(), 46);

    // THEN the events are spread over a few items, none holding more than about the budget,
    // each starting where the one before ended
    let items = event_items(&config, "run-s").await;
    assert!((3..=6).contains(&items.len()), "{} items", items.len());
    let mut next = 1;
    for item in &items {
        assert_eq!(first_seq(item), next, "{}", sk(item));
        let last: u64 = sk(item)["EV#".len()..].parse().unwrap();
        next = last + 1;
        let size: usize = item
            .values()
            .map(|v| {
                v.as_l().map_or(0, |l| {
                    l.iter()
                        .map(|e| match e {
                            AttributeValue::S(s) => s.len(),
                            AttributeValue::B(b) => b.as_ref().len(),
                            _ => 50,
                        })
                        .sum()
                })
            })
            .sum();
        assert!(size <= 20 * 1024, "{} holds {size} bytes", sk(item));
    }
    assert_eq!(next, 47);
    // AND every read, from every seq, returns the events after it whole and in order
    conformance::reads_from_every_seq(&s, "run-s", &frames, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_stored_one_item_per_event_still_reads() {
    // GIVEN a run whose first three events were stored one item per seq, as before events
    // were packed (written here by hand), its meta item's lastSeq at 3
    let Some((s, config)) = fresh_with_config().await else {
        return;
    };
    s.create_run(&state("run-o", 1_000), &[]).await.unwrap();
    let client = config.client().await;
    let old = messages("run-o", &["one", "two", "three"]);
    for (seq, event) in (1u64..).zip(&old) {
        client
            .put_item()
            .table_name(&config.table_name)
            .item("pk", AttributeValue::S("RUN#run-o".into()))
            .item("sk", AttributeValue::S(format!("EV#{seq:020}")))
            .item("seq", AttributeValue::N(seq.to_string()))
            .item(
                "body",
                AttributeValue::S(serde_json::to_string(event).unwrap()),
            )
            .send()
            .await
            .unwrap();
    }
    client
        .update_item()
        .table_name(&config.table_name)
        .key("pk", AttributeValue::S("RUN#run-o".into()))
        .key("sk", AttributeValue::S("META".into()))
        .update_expression("SET lastSeq = :n")
        .expression_attribute_values(":n", AttributeValue::N("3".into()))
        .send()
        .await
        .unwrap();

    // WHEN two more are appended through the store
    let frames = s
        .append("run-o", &messages("run-o", &["four", "five"]))
        .await
        .unwrap();

    // THEN they follow on, and every read returns old and new events in order
    assert_eq!(frames.first().map(|f| f.seq), Some(4));
    let mut all: Vec<orchestrator_core::event::Frame> = (1u64..)
        .zip(old)
        .map(|(seq, event)| orchestrator_core::event::Frame { seq, event })
        .collect();
    all.extend(frames);
    conformance::reads_from_every_seq(&s, "run-o", &all, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transition_that_opens_steps_is_one_write_request() {
    // GIVEN a run
    let Some(s) = fresh().await else { return };
    let st = state("run-o2", 1_000);
    s.create_run(&st, &messages("run-o2", &["start"]))
        .await
        .unwrap();
    let before = s.write_requests();

    // WHEN a transition without a step result commits two events and opens two steps
    let opening = |step: &str| orchestrator_core::ports::StepOpening {
        step_id: step.to_owned(),
        attempt: 1,
        handoff: messages("run-o2", &[&format!("handoff {step}")]),
    };
    let committed = s
        .commit_transition(orchestrator_core::ports::TransitionWrite {
            state: &st,
            events: &messages("run-o2", &["plan", "dispatch"]),
            result: None,
            opens: &[opening("s1"), opening("s2")],
            now_ms: 2_000,
        })
        .await
        .unwrap();

    // THEN it cost one write request: the handoffs went with the commit, after its events
    assert_eq!(s.write_requests() - before, 1);
    let orchestrator_core::ports::Committed::Written { frames, opened } = committed else {
        panic!("expected the transition written, got {committed:?}");
    };
    assert_eq!(frames.iter().map(|f| f.seq).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(opened.len(), 2);
    let log = s.read_after("run-o2", 0, 10).await.unwrap();
    assert_eq!(
        log.iter().map(|f| f.event.clone()).collect::<Vec<_>>(),
        messages(
            "run-o2",
            &["start", "plan", "dispatch", "handoff s1", "handoff s2"]
        )
    );
}

/// An item of the run's partition, read by hand (`None` when there is none).
async fn item_of(
    config: &DynamoDbConfig,
    run_id: &str,
    sk: &str,
) -> Option<HashMap<String, AttributeValue>> {
    config
        .client()
        .await
        .get_item()
        .table_name(&config.table_name)
        .key("pk", AttributeValue::S(format!("RUN#{run_id}")))
        .key("sk", AttributeValue::S(sk.to_owned()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_and_a_model_call_are_kept_deflated_beside_a_small_meta_item_and_read_back() {
    // GIVEN a run whose state is a few KB of JSON (a long objective and an error text)
    let Some((s, config)) = fresh_with_config().await else {
        return;
    };
    let mut st = state("run-z", 1_000);
    st.request.objective = "Write a launch post for Acme Sync. ".repeat(60);
    s.create_run(&st, &messages("run-z", &["start"]))
        .await
        .unwrap();

    // WHEN it commits a changed state with an event, and a long model call is recorded
    st.error = Some("the draft was too long; ".repeat(40));
    s.commit(&st, &messages("run-z", &["next"])).await.unwrap();
    let call = conformance::call(CallUnit::Plan { version: 1 }, 0, &"plan text ".repeat(300));
    s.record_call("run-z", &call).await.unwrap();

    // THEN the meta item holds no state, and the state item holds it deflated, far smaller
    let meta = item_of(&config, "run-z", "META").await.unwrap();
    assert!(!meta.contains_key("body") && !meta.contains_key("bodyZ"));
    let stored = item_of(&config, "run-z", "META#STATE").await.unwrap();
    let json = serde_json::to_string(&st).unwrap();
    let deflated = stored["bodyZ"].as_b().unwrap().as_ref().len();
    assert!(deflated < json.len() / 3, "{deflated} of {}", json.len());
    // AND the state reads back whole
    assert_eq!(s.load_run("run-z").await.unwrap(), Some(st));
    // AND the call's item is deflated too, and reads back
    let call_item = item_of(&config, "run-z", "CALL#plan#0001#000000")
        .await
        .unwrap();
    assert!(call_item.contains_key("bodyZ") && !call_item.contains_key("body"));
    assert_eq!(s.calls("run-z").await.unwrap(), vec![call]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_of_the_old_shape_still_read_and_the_next_commit_moves_the_state_out() {
    // GIVEN a run whose meta item holds its state inline as plain JSON and has no state item,
    // and a model call stored as plain JSON: items as written before states were kept beside
    // the meta item and documents deflated (made by hand here)
    let Some((s, config)) = fresh_with_config().await else {
        return;
    };
    let mut st = state("run-y", 1_000);
    s.create_run(&st, &[]).await.unwrap();
    st.error = Some("written by an older version".into());
    let client = config.client().await;
    client
        .update_item()
        .table_name(&config.table_name)
        .key("pk", AttributeValue::S("RUN#run-y".into()))
        .key("sk", AttributeValue::S("META".into()))
        .update_expression("SET body = :b")
        .expression_attribute_values(":b", AttributeValue::S(serde_json::to_string(&st).unwrap()))
        .send()
        .await
        .unwrap();
    client
        .delete_item()
        .table_name(&config.table_name)
        .key("pk", AttributeValue::S("RUN#run-y".into()))
        .key("sk", AttributeValue::S("META#STATE".into()))
        .send()
        .await
        .unwrap();
    let call = conformance::call(CallUnit::Plan { version: 1 }, 0, &"old call ".repeat(200));
    client
        .put_item()
        .table_name(&config.table_name)
        .item("pk", AttributeValue::S("RUN#run-y".into()))
        .item("sk", AttributeValue::S("CALL#plan#0001#000000".into()))
        .item("runId", AttributeValue::S("run-y".into()))
        .item(
            "body",
            AttributeValue::S(serde_json::to_string(&call).unwrap()),
        )
        .send()
        .await
        .unwrap();

    // WHEN the store reads them
    // THEN the state on the meta item and the plain call read as they were written
    assert_eq!(s.load_run("run-y").await.unwrap(), Some(st.clone()));
    assert_eq!(s.calls("run-y").await.unwrap(), vec![call]);

    // WHEN the run then commits a new state
    st.error = None;
    s.commit(&st, &messages("run-y", &["on"])).await.unwrap();

    // THEN the state moved to its own item, the meta item's copy is gone, and it reads back
    let meta = item_of(&config, "run-y", "META").await.unwrap();
    assert!(!meta.contains_key("body"));
    assert!(item_of(&config, "run-y", "META#STATE").await.is_some());
    assert_eq!(s.load_run("run-y").await.unwrap(), Some(st));
}
