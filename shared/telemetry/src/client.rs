//! The exporter's HTTP client, built on a thread of its own while the process starts (or by
//! the first export, if that comes first) rather than before it: building it loads the TLS
//! roots, several milliseconds that a Lambda cold start or a short `orchestrator run` should
//! not wait for (bench/README.md, "Tracing").

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};

/// The OTLP default when neither timeout variable is set.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub(crate) struct LazyClient {
    client: Arc<OnceLock<reqwest::blocking::Client>>,
    timeout: Duration,
}

impl LazyClient {
    /// Its timeout from `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, else `OTEL_EXPORTER_OTLP_TIMEOUT`
    /// (milliseconds), else 10 s: what the exporter's own client would use.
    pub(crate) fn from_env() -> Self {
        let timeout = [
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ]
        .into_iter()
        .find_map(|var| std::env::var(var).ok()?.trim().parse::<u64>().ok())
        .map_or(DEFAULT_TIMEOUT, Duration::from_millis);
        Self {
            client: Arc::new(OnceLock::new()),
            timeout,
        }
    }

    /// Builds the client now, away from the caller's thread.
    pub(crate) fn warm_up(&self) {
        let this = self.clone();
        std::thread::spawn(move || {
            let _ = this.get();
        });
    }

    fn get(&self) -> Result<&reqwest::blocking::Client, reqwest::Error> {
        if let Some(client) = self.client.get() {
            return Ok(client);
        }
        let built = reqwest::blocking::Client::builder()
            .timeout(self.timeout)
            .build()?;
        Ok(self.client.get_or_init(|| built))
    }
}

#[async_trait::async_trait]
impl HttpClient for LazyClient {
    /// Runs on the batch processor's own thread, where a blocking client may be built and used.
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        self.get()?.send_bytes(request).await
    }
}
