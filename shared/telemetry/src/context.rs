//! The W3C trace context (`traceparent`) of a span, as text that travels with a run: stored in
//! its record, sent in the state machine's input, read back by whichever process works on it.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

const TRACEPARENT: &str = "traceparent";

/// The span's `traceparent`, or `None` when it has no trace (nothing is exported, or the span
/// is disabled).
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Makes `span` a child of the span `traceparent` names. Call it before the span is entered.
/// A malformed value is ignored (the span starts a trace of its own), since trace context
/// comes from outside (a client's header, a stored run) and must never fail the work.
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.trim().to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid()
        && let Err(e) = span.set_parent(cx)
    {
        tracing::debug!(error = %e, "the span's parent could not be set");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tracing_subscriber::layer::SubscriberExt;

    fn traced() -> (SdkTracerProvider, InMemorySpanExporter, tracing::Dispatch) {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
        let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layer));
        (provider, exporter, dispatch)
    }

    #[test]
    fn a_span_parented_on_a_stored_traceparent_joins_that_trace() {
        // GIVEN a run span whose traceparent was stored
        let (provider, exporter, dispatch) = traced();
        tracing::dispatcher::with_default(&dispatch, || {
            let run = tracing::info_span!("run");
            let stored = traceparent_of(&run).unwrap();
            assert!(stored.starts_with("00-"), "{stored}");
            drop(run);
            // WHEN another span (another process, later) is parented on it
            let step = tracing::info_span!("step");
            set_parent(&step, &stored);
            drop(step);
        });
        provider.force_flush().unwrap();
        // THEN both are in one trace, the step a child of the run
        let spans = exporter.get_finished_spans().unwrap();
        let run = spans.iter().find(|s| s.name == "run").unwrap();
        let step = spans.iter().find(|s| s.name == "step").unwrap();
        assert_eq!(step.span_context.trace_id(), run.span_context.trace_id());
        assert_eq!(step.parent_span_id, run.span_context.span_id());
    }

    #[test]
    fn a_malformed_traceparent_is_ignored_and_the_span_starts_its_own_trace() {
        let (provider, exporter, dispatch) = traced();
        tracing::dispatcher::with_default(&dispatch, || {
            let span = tracing::info_span!("request");
            set_parent(&span, "00-not-a-trace\u{1b}[2J-01");
            drop(span);
        });
        provider.force_flush().unwrap();
        let spans = exporter.get_finished_spans().unwrap();
        assert_eq!(spans.len(), 1);
        assert_eq!(
            spans[0].parent_span_id,
            opentelemetry::trace::SpanId::INVALID
        );
    }

    #[test]
    fn without_an_exporting_subscriber_there_is_no_traceparent() {
        let span = tracing::info_span!("run");
        assert_eq!(traceparent_of(&span), None);
    }
}
