//! Any OpenAI-compatible chat completions endpoint (OpenAI, vLLM, Ollama, LM Studio, ...).
//!
//! A small client on reqwest rather than a full SDK: the compatible servers disagree on the shape
//! of error bodies, and this adapter must classify every failure by its HTTP status (429 and 5xx
//! retried, other 4xx not) and must see whether a stream reached its finish marker. The wire
//! types below are the few fields this needs and stay private.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use orchestrator_core::event::SseParser;
use orchestrator_core::ports::{
    ChatRole, Model, ModelError, ModelInfo, ModelRequest, ModelResponse, RetryNote, StreamItem,
};
use orchestrator_core::tools::{ToolCall, ToolChoice};
use orchestrator_core::types::Usage;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clients::Clients;
use crate::config::{ApiKey, Resilience};
use crate::schema::{strict_schema, wire_name};

const GEN_AI_SYSTEM: &str = "openai";
/// Provider error bodies are quoted in errors (and so in warning events); keep them short.
const MAX_ERROR_CHARS: usize = 400;

#[derive(Debug, thiserror::Error)]
pub enum OpenAiBuildError {
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// The URL itself is left out: it may carry a secret.
    #[error("OPENAI_BASE_URL is not a valid URL: {0}")]
    BaseUrl(String),
}

pub struct OpenAiModel {
    http: Clients,
    /// `<base>/chat/completions`, parsed once (not per request); never logged, it may carry a
    /// secret.
    endpoint: reqwest::Url,
    key: Option<ApiKey>,
    model: String,
    resilience: Resilience,
    /// The strongest reply format the endpoint is believed to accept, so later calls do not ask
    /// again for one it refused.
    accepted: Accepted,
}

/// How a JSON reply is asked for, strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
enum Format {
    /// `response_format: json_schema`, strict.
    Schema = 0,
    /// `response_format: json_object`.
    JsonObject = 1,
    /// No `response_format`: the prompt alone asks for JSON.
    PromptOnly = 2,
}

impl Format {
    fn weaker(self) -> Format {
        match self {
            Format::Schema => Format::JsonObject,
            Format::JsonObject | Format::PromptOnly => Format::PromptOnly,
        }
    }

    fn wire_name(self) -> &'static str {
        match self {
            Format::Schema => "json_schema",
            Format::JsonObject => "json_object",
            Format::PromptOnly => "none",
        }
    }
}

/// A `Format` shared by the calls of one adapter: it only ever steps down, so concurrent calls
/// need no lock and a refusal is never forgotten.
struct Accepted(AtomicU8);

impl Accepted {
    fn get(&self) -> Format {
        match self.0.load(Ordering::Relaxed) {
            0 => Format::Schema,
            1 => Format::JsonObject,
            _ => Format::PromptOnly,
        }
    }

    /// Steps down to `to`; true only for the call that did it, so the change is logged once.
    fn lower(&self, to: Format) -> bool {
        self.0.fetch_max(to as u8, Ordering::Relaxed) < to as u8
    }
}

/// A reply schema made strict for one call.
struct Strict {
    name: String,
    schema: Value,
}

impl Strict {
    /// None without a schema, or when strict mode cannot express it: that call asks for
    /// `json_object` instead, and the endpoint is not marked as refusing `json_schema`.
    fn of(request: &ModelRequest) -> Option<Strict> {
        let reply = request.schema.as_ref()?;
        let Some(schema) = strict_schema(&reply.schema) else {
            tracing::debug!(
                gen_ai.system = GEN_AI_SYSTEM,
                "the reply schema has open parts strict mode cannot express; asking for json_object"
            );
            return None;
        };
        Some(Strict {
            name: wire_name(&reply.name),
            schema,
        })
    }
}

/// What an error status says about the format an attempt asked for.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// Not about the format.
    No,
    /// The message names the format: the endpoint does not take it.
    Certain,
    /// A bare 400 or 422 to a `json_schema` request: the schema may be the cause, or not. Proven
    /// only if the same call succeeds with `json_object`.
    Suspected,
}

/// Endpoints word a refused format in many ways (OpenAI, vLLM, LM Studio, proxies); they all name
/// the parameter or the kind of format.
const FORMAT_WORDS: [&str; 6] = [
    "response_format",
    "response format",
    "json_schema",
    "json_object",
    "schema",
    "structured output",
];

fn refusal(asked: Format, status: u16, message: &str) -> Refusal {
    let client_error = (400..500).contains(&status) && status != 429;
    if asked == Format::PromptOnly || !client_error {
        return Refusal::No;
    }
    let message = message.to_ascii_lowercase();
    if FORMAT_WORDS.iter().any(|w| message.contains(w)) {
        Refusal::Certain
    } else if asked == Format::Schema && matches!(status, 400 | 422) {
        Refusal::Suspected
    } else {
        Refusal::No
    }
}

/// A failed attempt, before it is classified.
enum Failure {
    Status {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    Other(ModelError),
}

impl OpenAiModel {
    pub fn new(
        base_url: &str,
        key: Option<ApiKey>,
        model: impl Into<String>,
        resilience: Resilience,
    ) -> Result<Self, OpenAiBuildError> {
        let endpoint = format!("{}/chat/completions", base_url.trim_end_matches('/'));
        let endpoint =
            reqwest::Url::parse(&endpoint).map_err(|e| OpenAiBuildError::BaseUrl(e.to_string()))?;
        let (connect, read) = (resilience.connect_timeout, resilience.request_timeout);
        // A plain-HTTP endpoint (a local server) makes no TLS connection: an empty root store
        // spares reading every certificate of the system at start (147 files here, about 3 ms
        // before a run's first byte). An https endpoint verifies against the platform's roots.
        let plain = endpoint.scheme() == "http";
        let http = Clients::new(Box::new(move || {
            let http = reqwest::Client::builder()
                .connect_timeout(connect)
                // Per read, so a long stream is fine as long as it keeps moving.
                .read_timeout(read);
            if plain {
                http.tls_certs_only(Vec::new())
            } else {
                http
            }
            .build()
        }))
        .map_err(|e| OpenAiBuildError::Client(e.to_string()))?;
        Ok(Self {
            http,
            endpoint,
            key,
            model: model.into(),
            resilience,
            accepted: Accepted(AtomicU8::new(Format::Schema as u8)),
        })
    }

    /// The format one attempt asks for: what the request wants, but no stronger than the
    /// endpoint accepts nor than this call has stepped down to.
    fn format_for(&self, request: &ModelRequest, strict: bool, floor: Format) -> Format {
        let wanted = if strict {
            Format::Schema
        } else if request.json || request.schema.is_some() {
            Format::JsonObject
        } else {
            Format::PromptOnly
        };
        wanted.max(self.accepted.get()).max(floor)
    }

    /// Remembers that the endpoint refused `refused`, logging it once (no prompt, key or URL).
    fn step_down(&self, refused: Format, status: u16) {
        let now = refused.weaker();
        if self.accepted.lower(now) {
            tracing::warn!(
                gen_ai.system = GEN_AI_SYSTEM,
                gen_ai.request.model = %self.model,
                status,
                refused = refused.wire_name(),
                now = now.wire_name(),
                "the endpoint refused this response_format; asking with the weaker one from now on"
            );
        }
    }

    /// The request's JSON, serialised straight from the wire types (no `Value` tree is built or
    /// kept while the call is in flight).
    fn body(
        &self,
        request: &ModelRequest,
        stream: bool,
        format: Format,
        strict: Option<&Strict>,
    ) -> Bytes {
        let mut messages = Vec::with_capacity(request.messages.len() + 1);
        if !request.system.is_empty() {
            messages.push(WireMessage {
                role: "system",
                content: &request.system,
                tool_calls: Vec::new(),
                tool_call_id: None,
            });
        }
        messages.extend(request.messages.iter().map(|m| {
            WireMessage {
                role: match m.role {
                    ChatRole::User => "user",
                    ChatRole::Assistant => "assistant",
                    ChatRole::Tool => "tool",
                },
                content: &m.content,
                tool_calls: m
                    .tool_calls
                    .iter()
                    .map(|c| WireToolCall {
                        id: &c.id,
                        kind: "function",
                        function: WireFunctionCall {
                            name: &c.name,
                            arguments: match &c.arguments {
                                Value::String(raw) => raw.clone(),
                                other => other.to_string(),
                            },
                        },
                    })
                    .collect(),
                tool_call_id: m.tool_call_id.as_deref(),
            }
        }));
        let tools: Vec<WireTool> = request
            .tools
            .iter()
            .map(|t| WireTool {
                kind: "function",
                function: WireFunction {
                    name: &t.name,
                    description: &t.description,
                    parameters: &t.parameters,
                },
            })
            .collect();
        let tool_choice = (!tools.is_empty()).then_some(match request.tool_choice {
            ToolChoice::Auto => "auto",
            ToolChoice::Required => "required",
            ToolChoice::None => "none",
        });
        let body = WireRequest {
            model: &self.model,
            messages,
            tools,
            tool_choice,
            temperature: request.temperature,
            max_tokens: request.max_tokens,
            stream,
            stream_options: stream.then_some(StreamOptions {
                include_usage: true,
            }),
            response_format: match (format, strict) {
                (Format::PromptOnly, _) => None,
                (Format::Schema, Some(s)) => Some(ResponseFormat {
                    kind: "json_schema",
                    json_schema: Some(WireJsonSchema {
                        name: &s.name,
                        schema: &s.schema,
                        strict: true,
                    }),
                }),
                _ => Some(ResponseFormat {
                    kind: "json_object",
                    json_schema: None,
                }),
            },
        };
        // The wire types are plain structs of strings and JSON values: they always serialise.
        Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
    }

    /// Sends until a 2xx: retries 429, 5xx and refused connections with backoff; steps the reply
    /// format down when the endpoint refuses it; returns any other failure at once.
    /// The attempts made again come back with the response, for the stream a user watches.
    async fn send(
        &self,
        request: &ModelRequest,
        stream: bool,
    ) -> Result<(reqwest::Response, Vec<RetryNote>), ModelError> {
        let strict = Strict::of(request);
        // After a suspected refusal this call alone steps down; the endpoint's state only once
        // the weaker format is accepted (a 400 may be about something else, e.g. the length).
        let mut floor = Format::Schema;
        let mut unproven: Option<(Format, u16)> = None;
        let mut retry = 0;
        let mut notes = Vec::new();
        loop {
            let format = self.format_for(request, strict.is_some(), floor);
            // Built for each attempt rather than kept for a retry: the body is freed as soon as
            // it is sent, not held for the whole call.
            let body = self.body(request, stream, format, strict.as_ref());
            let (err, retry_after) = match self.post(body, stream).await {
                Ok(resp) => {
                    if let Some((refused, status)) = unproven {
                        self.step_down(refused, status);
                    }
                    return Ok((resp, notes));
                }
                Err(Failure::Status {
                    status,
                    message,
                    retry_after,
                }) => match refusal(format, status, &message) {
                    // Each step is to a strictly weaker format, so this loop ends.
                    Refusal::Certain => {
                        self.step_down(format, status);
                        continue;
                    }
                    Refusal::Suspected => {
                        floor = format.weaker();
                        unproven = Some((format, status));
                        continue;
                    }
                    Refusal::No => (status_error(status, message), retry_after),
                },
                Err(Failure::Other(e)) => (e, None),
            };
            if !worth_retrying(&err) || retry >= self.resilience.max_retries {
                return Err(err);
            }
            let delay = self.resilience.backoff(retry, retry_after);
            tracing::warn!(
                gen_ai.system = GEN_AI_SYSTEM,
                gen_ai.request.model = %self.model,
                purpose = ?request.purpose,
                retry = retry + 1,
                delay_ms = delay.as_millis() as u64,
                error = %err,
                "model call failed; retrying"
            );
            tokio::time::sleep(delay).await;
            retry += 1;
            notes.push(RetryNote {
                attempt: retry + 1,
                cause: err.to_string(),
            });
        }
    }

    /// One attempt: the response when it is a 2xx, otherwise what went wrong.
    async fn post(&self, body: Bytes, stream: bool) -> Result<reqwest::Response, Failure> {
        let mut req = self
            .http
            .get()
            .post(self.endpoint.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(key) = &self.key {
            req = req.bearer_auth(key.expose());
        }
        let timeout = self.resilience.request_timeout;
        let sent = if stream {
            // Only the headers: the body is read chunk by chunk under the read timeout.
            match tokio::time::timeout(timeout, req.send()).await {
                Ok(r) => r.map_err(|e| transport(e, timeout)),
                Err(_) => Err(ModelError::Timeout(timeout.as_millis() as u64)),
            }
        } else {
            req.timeout(timeout)
                .send()
                .await
                .map_err(|e| transport(e, timeout))
        };
        let resp = sent.map_err(Failure::Other)?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = resp.text().await.unwrap_or_default();
        Err(Failure::Status {
            status,
            message: error_message(&text),
            retry_after,
        })
    }

    async fn open_stream(
        &self,
        request: ModelRequest,
    ) -> Result<BoxStream<'_, Result<StreamItem, ModelError>>, ModelError> {
        let (resp, retries) = self.send(&request, true).await?;
        let timeout = self.resilience.request_timeout;
        let body = resp
            .bytes_stream()
            .map_err(move |e| {
                if e.is_timeout() {
                    ModelError::StreamBroken(format!(
                        "no data for {} s in the middle of the reply",
                        timeout.as_secs()
                    ))
                } else {
                    ModelError::StreamBroken(e.to_string())
                }
            })
            .boxed();
        let state = StreamState {
            body,
            parser: SseParser::default(),
            queue: retries
                .into_iter()
                .map(|note| Ok(StreamItem::Retried(note)))
                .collect(),
            calls: BTreeMap::new(),
            finished: false,
            usage: None,
            done: false,
            model: &self.model,
        };
        Ok(stream::unfold(state, |mut st| async move {
            loop {
                if let Some(item) = st.queue.pop_front() {
                    return Some((item, st));
                }
                if st.done {
                    return None;
                }
                match st.body.next().await {
                    Some(Ok(bytes)) => st.feed(&bytes),
                    Some(Err(e)) => {
                        st.done = true;
                        st.queue.push_back(Err(e));
                    }
                    None => st.end(),
                }
            }
        })
        .boxed())
    }
}

/// The reader of one streamed reply.
struct StreamState<'a> {
    body: BoxStream<'a, Result<Bytes, ModelError>>,
    parser: SseParser,
    queue: VecDeque<Result<StreamItem, ModelError>>,
    /// Tool calls being assembled from their deltas, by index.
    calls: BTreeMap<u32, PartialCall>,
    /// A choice reported its finish_reason: the text is whole.
    finished: bool,
    usage: Option<Usage>,
    done: bool,
    model: &'a str,
}

impl StreamState<'_> {
    fn feed(&mut self, bytes: &[u8]) {
        // CR is only a line terminator in SSE; dropping it lets "\r\n" servers parse too.
        let frames = if bytes.contains(&b'\r') {
            let clean: Vec<u8> = bytes.iter().copied().filter(|b| *b != b'\r').collect();
            self.parser.push_bytes(&clean)
        } else {
            self.parser.push_bytes(bytes)
        };
        for frame in frames {
            if self.done {
                return;
            }
            let data = frame.data.trim();
            if data == "[DONE]" {
                self.end();
                return;
            }
            let chunk: WireChunk = match serde_json::from_str(data) {
                Ok(c) => c,
                Err(e) => {
                    self.fail(format!("unreadable chunk: {e}"));
                    return;
                }
            };
            if let Some(err) = chunk.error {
                self.fail(format!("the provider reported: {}", error_text(&err)));
                return;
            }
            for choice in chunk.choices {
                if let Some(delta) = choice.delta {
                    if let Some(text) = delta.content
                        && !text.is_empty()
                    {
                        self.queue.push_back(Ok(StreamItem::Text(text)));
                    }
                    for (i, d) in delta.tool_calls.into_iter().enumerate() {
                        let index = d.index.unwrap_or(i as u32);
                        let call = self.calls.entry(index).or_default();
                        if let Some(id) = d.id {
                            call.id = id;
                        }
                        if let Some(f) = d.function {
                            if let Some(name) = f.name {
                                call.name.push_str(&name);
                            }
                            if let Some(args) = f.arguments {
                                call.arguments.push_str(&args);
                            }
                        }
                    }
                }
                if let Some(reason) = choice.finish_reason {
                    // The calls are whole once the choice finishes.
                    for (index, call) in std::mem::take(&mut self.calls) {
                        self.queue
                            .push_back(Ok(StreamItem::ToolCall(call.finish(index))));
                    }
                    if reason == "length" {
                        tracing::warn!(gen_ai.request.model = %self.model, "the reply hit max_tokens");
                    }
                    self.finished = true;
                }
            }
            if let Some(u) = chunk.usage {
                self.usage = Some(u.into());
            }
        }
    }

    fn fail(&mut self, why: String) {
        self.done = true;
        self.queue.push_back(Err(ModelError::StreamBroken(why)));
    }

    /// The stream is over ([DONE] or end of body): whole only if a finish_reason came.
    fn end(&mut self) {
        if self.done {
            return;
        }
        if !self.finished {
            self.fail("the stream ended before the model finished its reply".into());
            return;
        }
        self.done = true;
        let usage = self.usage.unwrap_or_default();
        self.queue.push_back(Ok(StreamItem::Usage(usage)));
    }
}

#[async_trait]
impl Model for OpenAiModel {
    fn info(&self) -> ModelInfo {
        ModelInfo {
            provider: "openai".into(),
            model: self.model.clone(),
        }
    }

    async fn complete(&self, request: ModelRequest) -> Result<ModelResponse, ModelError> {
        let timeout = self.resilience.request_timeout;
        let (resp, retries) = self.send(&request, false).await?;
        let bytes = resp.bytes().await.map_err(|e| transport(e, timeout))?;
        let reply: WireResponse = serde_json::from_slice(&bytes)
            .map_err(|e| ModelError::Invalid(format!("not a chat completion: {e}")))?;
        let message = reply
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message)
            .ok_or_else(|| ModelError::Invalid("the completion has no message".into()))?;
        let tool_calls: Vec<ToolCall> = message
            .tool_calls
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let f = c.function.unwrap_or_default();
                PartialCall {
                    id: c.id.unwrap_or_default(),
                    name: f.name.unwrap_or_default(),
                    arguments: f.arguments.unwrap_or_default(),
                }
                .finish(i as u32)
            })
            .collect();
        let text = match message.content.or(message.refusal) {
            Some(text) => text,
            None if !tool_calls.is_empty() => String::new(),
            None => {
                return Err(ModelError::Invalid(
                    "the completion has no message content".into(),
                ));
            }
        };
        let usage = reply.usage.map(Usage::from).unwrap_or_default();
        Ok(ModelResponse {
            text,
            usage,
            tool_calls,
            retries,
        })
    }

    fn stream(&self, request: ModelRequest) -> BoxStream<'_, Result<StreamItem, ModelError>> {
        stream::once(self.open_stream(request))
            .flat_map(|opened| match opened {
                Ok(s) => s,
                Err(e) => stream::iter([Err(e)]).boxed(),
            })
            .boxed()
    }
}

fn transport(e: reqwest::Error, timeout: Duration) -> ModelError {
    if e.is_timeout() {
        return ModelError::Timeout(timeout.as_millis() as u64);
    }
    // Without the URL: it may carry a secret. The causes say what went wrong.
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    ModelError::Transport(text)
}

fn status_error(status: u16, message: String) -> ModelError {
    if status == 429 {
        ModelError::Throttled(message)
    } else {
        ModelError::Provider { status, message }
    }
}

fn worth_retrying(err: &ModelError) -> bool {
    match err {
        ModelError::Throttled(_) => true,
        ModelError::Provider { status, .. } => *status >= 500,
        // Refused or reset before the request reached the model: nothing was spent.
        ModelError::Transport(_) => true,
        // A timeout has already cost the whole budget once; the engine's step retry decides
        // whether to spend it again.
        _ => false,
    }
}

/// The message of an error body, whatever its shape: OpenAI's `{"error": {"message"}}`,
/// Ollama's `{"error": "..."}`, vLLM's `{"message"}`, or plain text.
fn error_message(body: &str) -> String {
    let text = match serde_json::from_str::<Value>(body) {
        Ok(v) => v
            .get("error")
            .map(error_text)
            .or_else(|| v.get("message").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| body.to_owned()),
        Err(_) => body.trim().to_owned(),
    };
    let text = if text.is_empty() {
        "(no body)".to_owned()
    } else {
        text
    };
    text.chars().take(MAX_ERROR_CHARS).collect()
}

fn error_text(err: &Value) -> String {
    match err {
        Value::String(s) => s.clone(),
        other => other
            .get("message")
            .and_then(Value::as_str)
            .map_or_else(|| other.to_string(), str::to_owned),
    }
}

/// A tool call whose pieces are still arriving.
#[derive(Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

impl PartialCall {
    /// Arguments that are not JSON stay a string, so validation can tell the model so.
    fn finish(self, index: u32) -> ToolCall {
        let arguments = if self.arguments.trim().is_empty() {
            Value::Object(Default::default())
        } else {
            serde_json::from_str(&self.arguments).unwrap_or(Value::String(self.arguments))
        };
        ToolCall {
            id: if self.id.is_empty() {
                format!("call_{index}")
            } else {
                self.id
            },
            name: self.name,
            arguments,
        }
    }
}

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<ResponseFormat<'a>>,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<WireToolCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

#[derive(Serialize)]
struct WireToolCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunctionCall<'a>,
}

#[derive(Serialize)]
struct WireFunctionCall<'a> {
    name: &'a str,
    /// A JSON document in a string, as the API wants it.
    arguments: String,
}

#[derive(Serialize)]
struct WireTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunction<'a>,
}

#[derive(Serialize)]
struct WireFunction<'a> {
    name: &'a str,
    description: &'a str,
    parameters: &'a Value,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
struct ResponseFormat<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    json_schema: Option<WireJsonSchema<'a>>,
}

#[derive(Serialize)]
struct WireJsonSchema<'a> {
    name: &'a str,
    schema: &'a Value,
    strict: bool,
}

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default)]
    choices: Vec<WireChoice>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChoice {
    message: Option<WireContent>,
}

#[derive(Deserialize)]
struct WireContent {
    content: Option<String>,
    /// A structured-output refusal (OpenAI sets it instead of `content`): its words are the
    /// reply, so the caller can name the refusal.
    #[serde(default)]
    refusal: Option<String>,
    /// Whole calls in a reply; pieces of calls (with their `index`) in a stream's deltas.
    #[serde(default)]
    tool_calls: Vec<WireCallPiece>,
}

#[derive(Deserialize)]
struct WireCallPiece {
    index: Option<u32>,
    id: Option<String>,
    function: Option<WireFunctionPiece>,
}

#[derive(Deserialize, Default)]
struct WireFunctionPiece {
    name: Option<String>,
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct WireChunk {
    #[serde(default)]
    choices: Vec<WireChunkChoice>,
    usage: Option<WireUsage>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct WireChunkChoice {
    delta: Option<WireContent>,
    finish_reason: Option<String>,
}

#[derive(Deserialize, Clone, Copy)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Self {
        Usage {
            input_tokens: u.prompt_tokens,
            output_tokens: u.completion_tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_of_every_dialect_give_their_message() {
        // GIVEN the error shapes of OpenAI, Ollama, vLLM and a plain proxy
        // WHEN read THEN the message comes out
        assert_eq!(
            error_message(r#"{"error":{"message":"bad model","type":"invalid_request_error"}}"#),
            "bad model"
        );
        assert_eq!(
            error_message(r#"{"error":"model not found"}"#),
            "model not found"
        );
        assert_eq!(
            error_message(r#"{"object":"error","message":"too long","code":400}"#),
            "too long"
        );
        assert_eq!(error_message("Bad Gateway\n"), "Bad Gateway");
        assert_eq!(error_message(""), "(no body)");
    }

    #[test]
    fn refusals_are_read_from_the_status_and_the_message() {
        // GIVEN errors to attempts that asked for each format
        let vllm = "The provided JSON schema contains features not supported by xgrammar.";
        // WHEN classified THEN a message naming the format is a refusal of it
        assert_eq!(
            refusal(
                Format::Schema,
                400,
                "response_format json_schema is not supported"
            ),
            Refusal::Certain
        );
        assert_eq!(refusal(Format::Schema, 422, vllm), Refusal::Certain);
        assert_eq!(
            refusal(
                Format::JsonObject,
                400,
                "Unrecognized argument: response_format"
            ),
            Refusal::Certain
        );
        // AND a bare 400 or 422 is only a suspicion, and only against json_schema
        assert_eq!(
            refusal(Format::Schema, 400, "context length exceeded"),
            Refusal::Suspected
        );
        assert_eq!(
            refusal(Format::JsonObject, 400, "bad max_tokens"),
            Refusal::No
        );
        assert_eq!(refusal(Format::Schema, 401, "invalid key"), Refusal::No);
        // AND throttling, server errors and prompt-only attempts are never refusals
        assert_eq!(refusal(Format::Schema, 429, "schema quota"), Refusal::No);
        assert_eq!(
            refusal(Format::Schema, 500, "json_schema crashed"),
            Refusal::No
        );
        assert_eq!(
            refusal(Format::PromptOnly, 400, "response_format"),
            Refusal::No
        );
    }

    #[test]
    fn the_accepted_format_only_steps_down() {
        // GIVEN a fresh state
        let accepted = Accepted(AtomicU8::new(Format::Schema as u8));
        // WHEN lowered to json_object twice, then to the prompt, then "raised"
        let first = accepted.lower(Format::JsonObject);
        let again = accepted.lower(Format::JsonObject);
        let prompt = accepted.lower(Format::PromptOnly);
        let raised = accepted.lower(Format::Schema);
        // THEN only the real steps count, and it never goes back up
        assert!(first && !again && prompt && !raised);
        assert_eq!(accepted.get(), Format::PromptOnly);
    }
}
