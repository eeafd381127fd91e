//! Token usage in the OpenTelemetry GenAI vocabulary, so any OTel pipeline reading these spans
//! and events knows the fields. Never the prompt, the reply, a key or a URL.

use orchestrator_core::ports::Purpose;
use orchestrator_core::types::Usage;

pub(crate) fn record_usage(
    system: &'static str,
    model: &str,
    purpose: Purpose,
    streamed: bool,
    usage: Usage,
) {
    tracing::info!(
        gen_ai.system = system,
        gen_ai.operation.name = "chat",
        gen_ai.request.model = model,
        gen_ai.usage.input_tokens = usage.input_tokens,
        gen_ai.usage.output_tokens = usage.output_tokens,
        purpose = ?purpose,
        streamed,
        "model call finished"
    );
}
