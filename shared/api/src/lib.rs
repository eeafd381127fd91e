//! The HTTP/SSE API (README.md, "The HTTP/SSE API"): one axum Router over the ports, so the
//! same Router serves `orchestrator serve` locally and the streamer function on AWS.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use orchestrator_core::engine::Checkpoint;
use orchestrator_core::ports::RunCursor;
use orchestrator_core::types::{Mode, Plan, RunReport, RunRequest, RunStatus, RunSummary};
use orchestrator_runner::Store;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub mod control;
pub mod error;
mod extract;
pub mod fork;
mod limit;
pub mod openapi;
mod sse;

pub use control::{Control, LocalControl, StartedRun};
pub use error::{ApiError, ErrorBody};
use extract::{PathParams, QueryParams};
pub use fork::{ForkModels, ForkRequest, ForkResponse};

/// The API's knobs, read once by the binary that serves it.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// When set, every /api route needs `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    pub ping_interval: Duration,
    /// Ends every event stream after this long with a `retry:` hint (the streamer's function
    /// has a time limit); clients carry on with Last-Event-ID. None: streams end with the run.
    pub max_stream: Option<Duration>,
    /// Open event streams at most; past it, 503 with Retry-After.
    pub max_streams: usize,
    pub max_body_bytes: usize,
    /// Origins allowed by CORS; empty means no CORS headers, `*` any origin.
    pub cors_origins: Vec<String>,
    /// Run starts a minute per key (the bearer token); past it, 429 with Retry-After. None:
    /// no limit.
    pub max_starts_per_minute: Option<u32>,
}

/// The variable that limits run starts a minute per key, read by every binary that serves
/// the API.
pub const MAX_STARTS_PER_MINUTE_VAR: &str = "ORCHESTRATOR_MAX_STARTS_PER_MINUTE";

/// [`MAX_STARTS_PER_MINUTE_VAR`]: run starts a minute per key; unset, empty or 0 for none.
pub fn max_starts_per_minute_from_env() -> Result<Option<u32>, orchestrator_runner::SettingError> {
    orchestrator_runner::limit_from_env(MAX_STARTS_PER_MINUTE_VAR)
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            ping_interval: Duration::from_secs(15),
            max_stream: None,
            max_streams: 1024,
            max_body_bytes: 64 * 1024,
            cors_origins: Vec::new(),
            max_starts_per_minute: None,
        }
    }
}

#[derive(Clone)]
struct AppState {
    control: Arc<dyn Control>,
    store: Arc<dyn Store>,
    config: Arc<ApiConfig>,
    streams: Arc<Semaphore>,
    starts: Option<Arc<limit::StartLimit>>,
}

/// The Router: `/api/v1/...`, `/healthz`, `/openapi.json`.
pub fn router(control: Arc<dyn Control>, store: Arc<dyn Store>, config: ApiConfig) -> Router {
    let state = AppState {
        control,
        store,
        streams: Arc::new(Semaphore::new(config.max_streams)),
        starts: config
            .max_starts_per_minute
            .map(|n| Arc::new(limit::StartLimit::new(n))),
        config: Arc::new(config),
    };
    let api = Router::new()
        .route("/agent/run.stream", post(run_stream))
        .route("/runs", post(start_run).get(list_runs))
        .route("/runs/{id}", get(get_run))
        .route("/runs/{id}/events", get(run_events))
        .route("/runs/{id}/cancel", post(cancel_run))
        .route("/runs/{id}/calls", get(fork::list_calls))
        .route("/runs/{id}/fork", post(fork::fork_run))
        .route(
            "/runs/{id}/approvals/{checkpointId}",
            post(answer_checkpoint),
        )
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(middleware::from_fn_with_state(state.clone(), auth))
        .route_layer(middleware::from_fn(traced));
    let mut app = Router::new()
        .nest("/api/v1", api)
        .route("/", get(viewer))
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi_json))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(state.clone());
    if let Some(cors) = cors_layer(&state.config.cors_origins) {
        app = app.layer(cors);
    }
    app
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static("last-event-id"),
                header::HeaderName::from_static("idempotency-key"),
                header::HeaderName::from_static("x-correlation-id"),
                header::HeaderName::from_static("traceparent"),
                header::HeaderName::from_static("tracestate"),
            ]),
    )
}

/// Each API request is a server span, the child of the caller's span when it sends a W3C
/// `traceparent`: a run started by a traced client is part of the client's trace.
async fn traced(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(
            || request.uri().path().to_owned(),
            |p| p.as_str().to_owned(),
        );
    let span = tracing::info_span!(
        "request",
        otel.name = format!("{} {route}", request.method()),
        otel.kind = "server",
        http.request.method = %request.method(),
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    if let Some(parent) = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
    {
        orchestrator_telemetry::set_parent(&span, parent);
    }
    let response = tracing::Instrument::instrument(next.run(request), span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route; see /openapi.json".into())
}

/// A route that exists, asked with a method it does not serve; axum adds the Allow header.
async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "{method} is not served here; the Allow header lists the methods that are"
    ))
}

/// The token of an `Authorization: Bearer <token>` header. The scheme is case-insensitive
/// (RFC 9110, 11.1): `bearer` and `BEARER` are `Bearer`.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

async fn auth(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(key) = state.config.api_key.as_deref() else {
        return next.run(request).await;
    };
    match bearer_token(request.headers()) {
        None => ApiError::Unauthorized.into_response(),
        Some(token)
            if bool::from(subtle::ConstantTimeEq::ct_eq(
                token.as_bytes(),
                key.as_bytes(),
            )) =>
        {
            next.run(request).await
        }
        Some(_) => ApiError::Forbidden.into_response(),
    }
}

#[derive(Serialize, schemars::JsonSchema)]
struct Health {
    status: &'static str,
}

async fn healthz() -> axum::Json<Health> {
    axum::Json(Health { status: "ok" })
}

/// The run viewer: one static page, embedded in the binary.
const VIEWER_HTML: &str = include_str!("../static/index.html");

async fn viewer() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        VIEWER_HTML,
    )
        .into_response()
}

async fn openapi_json() -> axum::Json<serde_json::Value> {
    axum::Json(openapi::document())
}

/// Reads a JSON body within the size limit, naming the field at fault when it does not fit the
/// type: 400 for JSON that does not parse, 422 for JSON of the wrong shape, 413 when too big.
async fn read_json<T: serde::de::DeserializeOwned>(
    body: Body,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes: Bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::TooLarge(limit))?;
    if bytes.is_empty() {
        return Err(ApiError::Malformed {
            field: None,
            message: "the request body is empty; send a JSON object".into(),
        });
    }
    // Syntax first (400), then shape (422): a JSON array is well-formed but not a request.
    let json: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Malformed {
            field: None,
            message: format!("the body is not valid JSON: {e}"),
        })?;
    if !json.is_object() {
        return Err(ApiError::Invalid {
            field: ".".into(),
            message: "the body must be a JSON object".into(),
        });
    }
    let value = serde_path_to_error::deserialize::<_, T>(json).map_err(|e| {
        let path = e.path().to_string();
        let orchestrator_core::types::ValidationError { field, message } =
            orchestrator_core::types::ValidationError::at_path(&path, e.into_inner().to_string());
        ApiError::Invalid { field, message }
    })?;
    Ok(value)
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| ApiError::Malformed {
            field: Some(name.to_owned()),
            message: format!("the {name} header is not visible ASCII"),
        }),
    }
}

fn correlation_id(headers: &HeaderMap) -> Result<String, ApiError> {
    match header_text(headers, "x-correlation-id")? {
        None => Ok(uuid::Uuid::new_v4().to_string()),
        Some(id)
            if !id.is_empty()
                && id.len() <= 128
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)) =>
        {
            Ok(id.to_owned())
        }
        Some(_) => Err(ApiError::Invalid {
            field: "x-correlation-id".into(),
            message: "must be 1 to 128 characters of letters, digits and - _ . :".into(),
        }),
    }
}

/// One run start for the caller's key, or 429 when the key is past its rate.
fn take_start(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(starts) = &state.starts else {
        return Ok(());
    };
    let key = bearer_token(headers).unwrap_or("");
    starts
        .take(key, std::time::Instant::now())
        .map_err(|retry_after_secs| ApiError::RateLimited { retry_after_secs })
}

/// The request from the body, with the Idempotency-Key header folded in, fully validated.
async fn run_request(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<RunRequest, ApiError> {
    take_start(state, headers)?;
    let mut request: RunRequest = read_json(body, state.config.max_body_bytes).await?;
    let header_key = header_text(headers, "idempotency-key")?;
    if let Some(key) = header_key {
        match &request.idempotency_key {
            Some(body_key) if body_key != key => {
                return Err(ApiError::Invalid {
                    field: "idempotencyKey".into(),
                    message: "differs from the Idempotency-Key header; send one or make them equal"
                        .into(),
                });
            }
            _ => request.idempotency_key = Some(key.to_owned()),
        }
    }
    state.control.validate(&request).map_err(|mut e| {
        // The key came from the header: the header is what to fix.
        if e.field == "idempotencyKey" && header_key.is_some() {
            e.field = "idempotency-key".into();
        }
        ApiError::from(e)
    })?;
    Ok(request)
}

fn stream_permit(state: &AppState) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    state
        .streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Overloaded {
            message: "too many open streams; retry later".into(),
            retry_after_secs: 2,
        })
}

fn sse_response(body: Body) -> Response {
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

async fn run_stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request = run_request(&state, &headers, body).await?;
    let correlation_id = correlation_id(&headers)?;
    // Taken before the run starts: a run nobody can watch is not started.
    let permit = stream_permit(&state)?;
    let cancel_on_drop =
        request.options.on_disconnect == orchestrator_core::types::OnDisconnect::Cancel;
    let started = state.control.start(request, correlation_id).await?;
    let guard = (cancel_on_drop && started.created)
        .then(|| sse::CancelOnDrop::new(state.control.clone(), started.run_id.clone()));
    let frames = sse::frames(
        state.store.clone(),
        started.run_id,
        0,
        state.config.ping_interval,
        state.config.max_stream,
        permit,
        guard,
    );
    Ok(sse_response(Body::from_stream(frames)))
}

/// The answer to a start without streaming.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StartResponse {
    pub run_id: String,
    /// False when the idempotency key named an existing run.
    pub created: bool,
    pub events_url: String,
    pub run_url: String,
}

async fn start_run(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request = run_request(&state, &headers, body).await?;
    let correlation_id = correlation_id(&headers)?;
    let started = state.control.start(request, correlation_id).await?;
    let status = if started.created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let body = StartResponse {
        events_url: format!("/api/v1/runs/{}/events", started.run_id),
        run_url: format!("/api/v1/runs/{}", started.run_id),
        run_id: started.run_id,
        created: started.created,
    };
    Ok((status, axum::Json(body)).into_response())
}

/// A run as GET /api/v1/runs/{id} shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunView {
    pub run_id: String,
    pub mode: Mode,
    pub objective: String,
    pub status: RunStatus,
    pub started_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    pub plan: Plan,
    /// The budget the run was started with.
    pub budget: orchestrator_core::types::Budget,
    pub quality_threshold: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Checkpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<RunReport>,
}

async fn get_run(
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<axum::Json<RunView>, ApiError> {
    let run = state
        .store
        .load_run(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("run {id} not found")))?;
    let report = state.store.get_report(&id).await?;
    Ok(axum::Json(RunView {
        run_id: run.run_id,
        mode: run.request.mode,
        objective: run.request.objective,
        status: run.status,
        started_at_ms: run.started_at_ms,
        finished_at_ms: run.finished_at_ms,
        plan: run.plan,
        budget: run.request.options.budget.clone(),
        quality_threshold: run.request.options.quality_threshold,
        checkpoint: run.checkpoint,
        error: run.error,
        report,
    }))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunList {
    pub runs: Vec<RunSummary>,
    /// Pass as `cursor` for the next page; absent on the last page. Opaque.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

async fn list_runs(
    State(state): State<AppState>,
    query: QueryParams,
) -> Result<axum::Json<RunList>, ApiError> {
    let limit = match query.one("limit")? {
        None => 20,
        Some(v) => v.trim().parse::<usize>().unwrap_or(0),
    };
    if !(1..=200).contains(&limit) {
        return Err(ApiError::Invalid {
            field: "limit".into(),
            message: "must be a whole number between 1 and 200".into(),
        });
    }
    let cursor = query
        .one("cursor")?
        .map(|c| {
            RunCursor::decode(c).ok_or_else(|| ApiError::Invalid {
                field: "cursor".into(),
                message:
                    "is not a cursor this API handed out; pass nextCursor from the page before"
                        .into(),
            })
        })
        .transpose()?;
    let runs = state.store.list_runs(limit, cursor.as_ref()).await?;
    let next_cursor = (runs.len() == limit)
        .then(|| runs.last().map(|r| RunCursor::after(r).encode()))
        .flatten();
    Ok(axum::Json(RunList { runs, next_cursor }))
}

async fn run_events(
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
    query: QueryParams,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let parse = |field: &str, v: &str| {
        v.trim().parse::<u64>().map_err(|_| ApiError::Invalid {
            field: field.to_owned(),
            message: format!("{v:?} is not a sequence number"),
        })
    };
    let after = match (header_text(&headers, "last-event-id")?, query.one("after")?) {
        (Some(v), _) => parse("Last-Event-ID", v)?,
        (None, Some(v)) => parse("after", v)?,
        (None, None) => 0,
    };
    if state.store.load_run(&id).await?.is_none() {
        return Err(ApiError::NotFound(format!("run {id} not found")));
    }
    let permit = stream_permit(&state)?;
    let frames = sse::frames(
        state.store.clone(),
        id,
        after,
        state.config.ping_interval,
        state.config.max_stream,
        permit,
        None,
    );
    Ok(sse_response(Body::from_stream(frames)))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    pub run_id: String,
    pub status: String,
}

async fn cancel_run(
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<Response, ApiError> {
    state
        .control
        .cancel(&id, "cancelled by request".into())
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(Accepted {
            run_id: id,
            status: "cancelling".into(),
        }),
    )
        .into_response())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Approve,
    Reject,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApprovalRequest {
    pub decision: Decision,
    #[serde(default)]
    pub comment: Option<String>,
}

async fn answer_checkpoint(
    State(state): State<AppState>,
    PathParams((id, checkpoint)): PathParams<(String, String)>,
    body: Body,
) -> Result<Response, ApiError> {
    let answer: ApprovalRequest = read_json(body, state.config.max_body_bytes).await?;
    if answer
        .comment
        .as_ref()
        .is_some_and(|c| c.chars().count() > 2000)
    {
        return Err(ApiError::Invalid {
            field: "comment".into(),
            message: "must be at most 2000 characters".into(),
        });
    }
    let approve = answer.decision == Decision::Approve;
    state
        .control
        .answer(&id, &checkpoint, approve, answer.comment)
        .await?;
    let status = if approve { "resuming" } else { "rejected" };
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(Accepted {
            run_id: id,
            status: status.into(),
        }),
    )
        .into_response())
}
