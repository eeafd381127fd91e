//! Every model call as a span in the OpenTelemetry GenAI vocabulary (`chat {model}`, kind
//! client, `gen_ai.*` attributes, token usage once known), whatever the provider, so any OTel
//! pipeline reading it knows the fields. Never the prompt, the reply, a key or a URL.

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use orchestrator_core::ports::{
    Model, ModelError, ModelInfo, ModelRequest, ModelResponse, StreamItem,
};
use orchestrator_core::types::Usage;
use tracing::field::Empty;

/// A model whose calls are spans; what the inner model answers passes through unchanged.
pub struct Traced<M> {
    inner: M,
    info: ModelInfo,
}

impl<M: Model> Traced<M> {
    pub fn new(inner: M) -> Self {
        let info = inner.info();
        Self { inner, info }
    }

    fn span(&self, request: &ModelRequest, streamed: bool) -> tracing::Span {
        let span = tracing::info_span!(
            "chat",
            otel.name = format!("chat {}", self.info.model),
            otel.kind = "client",
            otel.status_code = Empty,
            otel.status_description = Empty,
            gen_ai.operation.name = "chat",
            gen_ai.provider.name = provider_name(&self.info.provider),
            gen_ai.request.model = %self.info.model,
            gen_ai.request.max_tokens = Empty,
            gen_ai.request.temperature = Empty,
            gen_ai.usage.input_tokens = Empty,
            gen_ai.usage.output_tokens = Empty,
            error.r#type = Empty,
            orchestrator.purpose = ?request.purpose,
            orchestrator.streamed = streamed,
        );
        if let Some(max) = request.max_tokens {
            span.record("gen_ai.request.max_tokens", i64::from(max));
        }
        if let Some(t) = request.temperature {
            span.record("gen_ai.request.temperature", f64::from(t));
        }
        span
    }
}

/// The provider as the GenAI conventions name it.
fn provider_name(provider: &str) -> &str {
    match provider {
        "bedrock" => "aws.bedrock",
        other => other,
    }
}

/// A count as OpenTelemetry's integer (the layer would write a `u64` as text).
fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn finished(span: &tracing::Span, usage: Usage) {
    span.record("gen_ai.usage.input_tokens", int(usage.input_tokens));
    span.record("gen_ai.usage.output_tokens", int(usage.output_tokens));
    tracing::info!(
        parent: span,
        gen_ai.usage.input_tokens = usage.input_tokens,
        gen_ai.usage.output_tokens = usage.output_tokens,
        "model call finished"
    );
}

fn failed(span: &tracing::Span, error: &ModelError) {
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_description", error.to_string());
    span.record("error.type", error_type(error));
}

/// The error's class, as the GenAI conventions' `error.type`.
fn error_type(error: &ModelError) -> &'static str {
    match error {
        ModelError::Throttled(_) => "throttled",
        ModelError::Timeout(_) => "timeout",
        ModelError::Transport(_) => "transport",
        ModelError::Provider { .. } => "provider",
        ModelError::StreamBroken(_) => "stream_broken",
        ModelError::Invalid(_) => "invalid_reply",
    }
}

#[async_trait]
impl<M: Model> Model for Traced<M> {
    fn info(&self) -> ModelInfo {
        self.info.clone()
    }

    async fn complete(&self, request: ModelRequest) -> Result<ModelResponse, ModelError> {
        use tracing::Instrument;
        let span = self.span(&request, false);
        let reply = self.inner.complete(request).instrument(span.clone()).await;
        match &reply {
            Ok(response) => finished(&span, response.usage),
            Err(e) => failed(&span, e),
        }
        reply
    }

    /// The span lasts as long as the stream: it ends when the caller drops it.
    fn stream(&self, request: ModelRequest) -> BoxStream<'_, Result<StreamItem, ModelError>> {
        let span = self.span(&request, true);
        let inner = span.in_scope(|| self.inner.stream(request));
        inner
            .map(move |item| {
                match &item {
                    Ok(StreamItem::Usage(usage)) => finished(&span, *usage),
                    Err(e) => failed(&span, e),
                    Ok(_) => {}
                }
                item
            })
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OfflineModel;
    use orchestrator_core::ports::Purpose;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    /// Records each span's name and its fields as they are recorded.
    #[derive(Clone, Default)]
    struct Fields(Arc<Mutex<Vec<(String, String)>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Fields {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            _: &tracing::span::Id,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            attrs.record(&mut Visitor(self.0.clone()));
        }
        fn on_record(
            &self,
            _: &tracing::span::Id,
            values: &tracing::span::Record<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            values.record(&mut Visitor(self.0.clone()));
        }
    }

    struct Visitor(Arc<Mutex<Vec<(String, String)>>>);

    impl tracing::field::Visit for Visitor {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            let value = format!("{value:?}").trim_matches('"').to_owned();
            self.0
                .lock()
                .unwrap()
                .push((field.name().to_owned(), value));
        }
    }

    #[tokio::test]
    async fn a_streamed_call_is_one_gen_ai_span_with_its_token_usage() {
        // GIVEN the offline model, traced
        let fields = Fields::default();
        let subscriber = tracing_subscriber::registry().with(fields.clone());
        let _guard = tracing::subscriber::set_default(subscriber);
        let model = Traced::new(OfflineModel::new(std::time::Duration::ZERO));
        let mut request = ModelRequest::new(Purpose::Generate, "system", Vec::new());
        request.max_tokens = Some(300);

        // WHEN a reply is streamed to the end
        let items: Vec<_> = model.stream(request).collect().await;

        // THEN the span names the operation, provider, model and usage
        let Some(Ok(StreamItem::Usage(usage))) = items.last() else {
            panic!("no usage: {items:?}")
        };
        let fields = fields.0.lock().unwrap().clone();
        let get = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("{name} missing from {fields:?}"))
        };
        assert_eq!(get("otel.name"), "chat offline-deterministic-v1");
        assert_eq!(get("gen_ai.operation.name"), "chat");
        assert_eq!(get("gen_ai.provider.name"), "offline");
        assert_eq!(get("gen_ai.request.model"), "offline-deterministic-v1");
        assert_eq!(get("gen_ai.request.max_tokens"), "300");
        assert_eq!(
            get("gen_ai.usage.output_tokens"),
            usage.output_tokens.to_string()
        );
    }
}
