#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the assertion in a test

//! The trigger with traces exported, in a test binary of its own: tracing caches whether a
//! span is wanted per call site, process-wide, and tests without a subscriber running beside
//! this one would have it cached as unwanted.

mod trigger_fixture;

use serde_json::json;
use trigger_fixture::*;

#[tokio::test]
async fn a_message_carrying_a_traceparent_starts_its_run_in_the_producers_trace() {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt;
    // GIVEN traces exported, and a message whose producer sent its trace context
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(opentelemetry_sdk::trace::InMemorySpanExporter::default())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _traced = tracing::subscriber::set_default(subscriber);
    let f = fixture(None);
    let producer_trace = "0af7651916cd43dd8448eb211c80319c";
    let mut record = sqs_record("m-traced", r#"{"objective": "Write a launch post"}"#);
    record["messageAttributes"]["traceparent"] = json!({
        "stringValue": format!("00-{producer_trace}-b7ad6b7169203331-01"),
        "stringListValues": [], "binaryListValues": [], "dataType": "String"
    });

    // WHEN the trigger handles it
    let response = f.trigger.handle(sqs_event(vec![record])).await.unwrap();

    // THEN the run is stored and its execution started in the producer's trace
    assert!(batch_failures(response).is_empty());
    let started = f.executions.traceparents.lock().unwrap().clone();
    let [Some(traceparent)] = started.as_slice() else {
        panic!("one start with a trace context: {started:?}")
    };
    assert!(
        traceparent.starts_with(&format!("00-{producer_trace}-")),
        "{traceparent}"
    );
    let run_id = f.executions.started.lock().unwrap()[0].clone();
    let stored = f.store.load_run(&run_id).await.unwrap().unwrap();
    assert_eq!(stored.traceparent.as_deref(), Some(traceparent.as_str()));
}
