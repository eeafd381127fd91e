//! Logs and traces for every binary. Logs: `tracing` lines on stderr (the CLI) or stdout
//! (Lambda, JSON when the function's log format is JSON). Traces: when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, the
//! orchestrator's spans (run, plan, step, model call) are exported over OTLP/HTTP by the
//! OpenTelemetry SDK; the exporter reads the other `OTEL_*` variables itself (headers, timeout,
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`). Unset: no OpenTelemetry layer at all, so
//! tracing costs nothing a run would notice.
//!
//! One run is one trace: its W3C trace context is stored with the run ([`traceparent_of`])
//! and every process that works on it later parents its spans there ([`set_parent`]).

mod client;
mod context;

use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::filter::{EnvFilter, FilterFn, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

pub use context::{set_parent, traceparent_of};

/// The variables that turn export on; either names where spans go.
pub const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
];

/// The instrumentation scope of every span.
const SCOPE: &str = "orchestrator";

/// Spans of these crates are exported; the rest (HTTP clients, the AWS SDK) are not.
const EXPORTED_TARGETS: &str = "orchestrator";

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot set up the OTLP exporter ({var} is set): {source}")]
    Exporter {
        var: &'static str,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("logging was already set up in this process")]
    AlreadySet,
}

/// Where log lines go and how they look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logs {
    /// Text on stderr, filtered by `RUST_LOG` (else `default`, e.g. "warn").
    Terminal { default: &'static str },
    /// Lambda: stdout, JSON when `AWS_LAMBDA_LOG_FORMAT=JSON`, the level from
    /// `AWS_LAMBDA_LOG_LEVEL` (else `RUST_LOG`, else INFO), no timestamps (CloudWatch adds them).
    Lambda,
}

/// Sets up logs, and traces when an endpoint is configured. Once per process, before any span.
pub fn init(service: &str, logs: Logs) -> Result<(), TelemetryError> {
    let export = match configured_endpoint() {
        Some(var) => Some(
            tracer_provider(service).map_err(|source| TelemetryError::Exporter { var, source })?,
        ),
        None => None,
    };
    let traces = export.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(SCOPE))
            .with_threads(false)
            .with_location(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(exported())
    });
    tracing_subscriber::registry()
        .with(log_layer(logs))
        .with(traces)
        .try_init()
        .map_err(|_| TelemetryError::AlreadySet)?;
    if let Some(provider) = export {
        let _ = PROVIDER.set(provider);
    }
    Ok(())
}

/// True when spans are exported (an endpoint was configured at [`init`]).
pub fn exporting() -> bool {
    PROVIDER.get().is_some()
}

/// Sends the spans ended so far and waits for the receiver. Blocking: on an async runtime call
/// it from `spawn_blocking`. Lambda calls it after each invocation, since a frozen sandbox
/// sends nothing.
pub fn flush() {
    if let Some(provider) = PROVIDER.get()
        && let Err(e) = provider.force_flush()
    {
        tracing::warn!(error = %e, "could not export traces");
    }
}

/// Flushes and stops the exporter at the end of the process. Blocking, like [`flush`].
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get()
        && let Err(e) = provider.shutdown()
    {
        tracing::warn!(error = %e, "could not export the last traces");
    }
}

/// The URL spans are sent to, resolved as the exporter resolves it: the traces endpoint as
/// it is, else the base endpoint with `/v1/traces`; `None` when export is off.
pub fn traces_url() -> Option<String> {
    let set = |var: &str| std::env::var(var).ok().filter(|v| !v.trim().is_empty());
    set(ENDPOINT_VARS[1]).or_else(|| {
        set(ENDPOINT_VARS[0]).map(|base| format!("{}/v1/traces", base.trim_end_matches('/')))
    })
}

fn configured_endpoint() -> Option<&'static str> {
    ENDPOINT_VARS
        .into_iter()
        .find(|var| std::env::var(var).is_ok_and(|v| !v.trim().is_empty()))
}

fn tracer_provider(
    service: &str,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
    let client = client::LazyClient::from_env();
    client.warm_up();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_http_client(client)
        .build()?;
    // OTEL_SERVICE_NAME, when set, names the service; else the binary does.
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service.to_owned());
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// What is exported: the orchestrator's spans, and warnings and errors (as span events).
fn exported() -> FilterFn {
    FilterFn::new(|meta| {
        if meta.is_span() {
            meta.target().starts_with(EXPORTED_TARGETS) && *meta.level() <= Level::INFO
        } else {
            *meta.level() <= Level::WARN
        }
    })
}

fn log_layer(logs: Logs) -> Box<dyn Layer<Registry> + Send + Sync> {
    match logs {
        Logs::Terminal { default } => {
            let filter =
                EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter)
                .boxed()
        }
        Logs::Lambda => {
            let level = std::env::var("AWS_LAMBDA_LOG_LEVEL")
                .or_else(|_| std::env::var("RUST_LOG"))
                .ok()
                .and_then(|l| l.parse::<LevelFilter>().ok())
                .unwrap_or(LevelFilter::INFO);
            let filter = EnvFilter::builder()
                .with_default_directive(level.into())
                .from_env_lossy();
            let json = std::env::var("AWS_LAMBDA_LOG_FORMAT")
                .is_ok_and(|f| f.eq_ignore_ascii_case("json"));
            let layer = tracing_subscriber::fmt::layer()
                .with_target(false)
                .without_time()
                .with_writer(std::io::stdout);
            if json {
                layer.json().with_filter(filter).boxed()
            } else {
                layer.with_filter(filter).boxed()
            }
        }
    }
}
