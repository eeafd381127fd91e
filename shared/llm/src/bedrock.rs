//! Amazon Bedrock through the Converse and ConverseStream APIs of `aws-sdk-bedrockruntime`.
//!
//! Retries (exponential backoff with jitter on throttling and 5xx, none on other 4xx) and the
//! connect and per-attempt timeouts are the SDK's own, configured from `Resilience`; this adapter
//! maps the SDK's errors and events onto the Model port and checks that a stream reached its
//! `messageStop`. A structured reply (a request with a schema) is forced through a tool whose
//! input schema is the reply's: the tool's input comes back as the reply's JSON text.

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_bedrockruntime::Client;
use aws_sdk_bedrockruntime::config::http::HttpResponse;
use aws_sdk_bedrockruntime::config::retry::RetryConfig;
use aws_sdk_bedrockruntime::config::timeout::TimeoutConfig;
use aws_sdk_bedrockruntime::config::{BehaviorVersion, Region};
use aws_sdk_bedrockruntime::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_bedrockruntime::operation::converse::ConverseOutput as ConverseReply;
use aws_sdk_bedrockruntime::operation::converse_stream::ConverseStreamOutput as StreamOutput;
use aws_sdk_bedrockruntime::types::{
    AnyToolChoice, AutoToolChoice, ContentBlock, ContentBlockDelta, ContentBlockStart,
    ConversationRole, ConverseOutput, ConverseStreamOutput, InferenceConfiguration, Message,
    SpecificToolChoice, SystemContentBlock, TokenUsage, Tool, ToolChoice as WireToolChoice,
    ToolConfiguration, ToolInputSchema, ToolResultBlock, ToolResultContentBlock, ToolResultStatus,
    ToolSpecification, ToolUseBlock,
};
use aws_smithy_types::{Document, Number};
use futures::StreamExt;
use futures::stream::{self, BoxStream};
use orchestrator_core::ports::{
    ChatMessage, ChatRole, Model, ModelError, ModelInfo, ModelRequest, ModelResponse, StreamItem,
};
use orchestrator_core::tools::{ToolCall, ToolChoice};
use orchestrator_core::types::Usage;
use serde_json::Value;

use crate::config::{LlmConfig, Resilience};
use crate::schema::{tool_input_schema, wire_name};

const GEN_AI_SYSTEM: &str = "aws.bedrock";

#[derive(Debug, thiserror::Error)]
pub enum BedrockBuildError {
    #[error(
        "AWS_REGION is not set and no AWS profile names a region: set AWS_REGION (e.g. us-east-1) for Bedrock"
    )]
    NoRegion,
}

pub struct BedrockModel {
    client: Client,
    model_id: String,
    request_timeout: Duration,
    /// Set once the model refused the forced reply tool (not every model on Bedrock can be made
    /// to call a given tool): structured calls rely on the prompt alone from then on.
    reply_tool_refused: AtomicBool,
}

/// The tool a structured reply is forced through: its name and the configuration forcing it.
struct ReplyTool {
    name: String,
    config: ToolConfiguration,
}

impl BedrockModel {
    /// Loads credentials and region the AWS way (env, profile, container or instance role).
    pub async fn from_config(config: &LlmConfig) -> Result<Self, BedrockBuildError> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &config.aws_region {
            loader = loader.region(Region::new(region.clone()));
        }
        let sdk = loader.load().await;
        if sdk.region().is_none() {
            return Err(BedrockBuildError::NoRegion);
        }
        let builder = aws_sdk_bedrockruntime::config::Builder::from(&sdk);
        Ok(Self::with_sdk_config(
            builder,
            config.model.clone(),
            &config.resilience,
        ))
    }

    /// Builds on a client configuration the caller prepared (a test points it at a local
    /// endpoint with static credentials), adding this crate's retries and timeouts.
    pub fn with_sdk_config(
        builder: aws_sdk_bedrockruntime::config::Builder,
        model_id: impl Into<String>,
        resilience: &Resilience,
    ) -> Self {
        let config = builder
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(resilience.max_retries + 1)
                    .with_initial_backoff(resilience.base_delay)
                    .with_max_backoff(resilience.max_delay),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(resilience.connect_timeout)
                    .operation_attempt_timeout(resilience.request_timeout)
                    .read_timeout(resilience.request_timeout)
                    .build(),
            )
            .build();
        Self {
            client: Client::from_conf(config),
            model_id: model_id.into(),
            request_timeout: resilience.request_timeout,
            reply_tool_refused: AtomicBool::new(false),
        }
    }

    /// The forced tool whose input is the reply, for a request with a schema and no tools of
    /// its own (a request with tools keeps them, and the schema is left to the prompt).
    fn reply_tool(&self, request: &ModelRequest) -> Result<Option<ReplyTool>, ModelError> {
        let Some(schema) = &request.schema else {
            return Ok(None);
        };
        if !request.tools.is_empty() || self.reply_tool_refused.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let name = wire_name(&schema.name);
        let description = schema
            .schema
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or("Give your reply as this tool's input.");
        let spec = ToolSpecification::builder()
            .name(&name)
            .description(description)
            .input_schema(ToolInputSchema::Json(to_document(&tool_input_schema(
                &schema.schema,
            ))))
            .build()
            .map_err(|e| invalid(&e))?;
        let choice = SpecificToolChoice::builder()
            .name(&name)
            .build()
            .map_err(|e| invalid(&e))?;
        let config = ToolConfiguration::builder()
            .tools(Tool::ToolSpec(spec))
            .tool_choice(WireToolChoice::Tool(choice))
            .build()
            .map_err(|e| invalid(&e))?;
        Ok(Some(ReplyTool { name, config }))
    }

    /// One Converse call, with the forced reply tool when there is one.
    async fn converse(
        &self,
        request: &ModelRequest,
        reply_tool: Option<&ReplyTool>,
    ) -> Result<ConverseReply, ModelError> {
        let mut parts = self.parts(request)?;
        if let Some(tool) = reply_tool {
            parts.tools = Some(tool.config.clone());
        }
        self.client
            .converse()
            .model_id(&self.model_id)
            .set_system(Some(parts.system))
            .set_messages(Some(parts.messages))
            .inference_config(parts.inference)
            .set_tool_config(parts.tools)
            .send()
            .await
            .map_err(|e| sdk_error(e, self.request_timeout))
    }

    /// Converse with the forced reply tool; if the model refuses to be forced (a validation
    /// error about tools), once more without it, remembered for this adapter.
    async fn converse_structured(
        &self,
        request: &ModelRequest,
        reply_tool: Option<&ReplyTool>,
    ) -> Result<ConverseReply, ModelError> {
        match self.converse(request, reply_tool).await {
            Err(ModelError::Provider {
                status: 400,
                message,
            }) if reply_tool.is_some() && message.to_ascii_lowercase().contains("tool") => {
                if !self.reply_tool_refused.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        gen_ai.system = GEN_AI_SYSTEM,
                        gen_ai.request.model = %self.model_id,
                        "the model refused the forced reply tool; structured replies rely on the prompt from now on"
                    );
                }
                self.converse(request, None).await
            }
            other => other,
        }
    }

    fn parts(&self, request: &ModelRequest) -> Result<Parts, ModelError> {
        let system = if request.system.is_empty() {
            Vec::new()
        } else {
            vec![SystemContentBlock::Text(request.system.clone())]
        };
        // Converse has no JSON mode for every model; the prompts of JSON calls ask for JSON.
        let inference = InferenceConfiguration::builder()
            .set_max_tokens(request.max_tokens.map(|t| t.min(i32::MAX as u32) as i32))
            .set_temperature(request.temperature)
            .build();
        Ok(Parts {
            system,
            messages: messages_of(&request.messages)?,
            inference,
            tools: tool_config(request)?,
        })
    }

    /// The reply schema is not forced here: structured calls use `complete`, and a forced tool's
    /// input would arrive as tool-use deltas rather than the text a stream's reader shows.
    async fn open_stream(
        &self,
        request: ModelRequest,
    ) -> Result<BoxStream<'_, Result<StreamItem, ModelError>>, ModelError> {
        let parts = self.parts(&request)?;
        let out: StreamOutput = self
            .client
            .converse_stream()
            .model_id(&self.model_id)
            .set_system(Some(parts.system))
            .set_messages(Some(parts.messages))
            .inference_config(parts.inference)
            .set_tool_config(parts.tools)
            .send()
            .await
            .map_err(|e| sdk_error(e, self.request_timeout))?;
        let state = StreamState {
            receiver: out.stream,
            calls: BTreeMap::new(),
            stopped: false,
            usage: None,
            done: false,
            model: &self.model_id,
            timeout: self.request_timeout,
        };
        Ok(stream::unfold(state, |mut st| async move {
            let item = st.next_item().await?;
            Some((item, st))
        })
        .boxed())
    }
}

struct Parts {
    system: Vec<SystemContentBlock>,
    messages: Vec<Message>,
    inference: InferenceConfiguration,
    tools: Option<ToolConfiguration>,
}

fn invalid(e: &dyn std::fmt::Display) -> ModelError {
    ModelError::Invalid(format!("cannot build the request: {e}"))
}

/// Converse alternates user and assistant turns: tool results are user content blocks, and
/// consecutive blocks of one role go into one message.
fn messages_of(messages: &[ChatMessage]) -> Result<Vec<Message>, ModelError> {
    let mut turns: Vec<(ConversationRole, Vec<ContentBlock>)> = Vec::new();
    for m in messages {
        let (role, blocks) = match m.role {
            ChatRole::User => (
                ConversationRole::User,
                vec![ContentBlock::Text(m.content.clone())],
            ),
            ChatRole::Assistant => (ConversationRole::Assistant, assistant_blocks(m)?),
            ChatRole::Tool => (
                ConversationRole::User,
                vec![ContentBlock::ToolResult(tool_result_block(m)?)],
            ),
        };
        match turns.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    turns
        .into_iter()
        .map(|(role, blocks)| {
            Message::builder()
                .role(role)
                .set_content(Some(blocks))
                .build()
                .map_err(|e| invalid(&e))
        })
        .collect()
}

/// An assistant message's text (if any) and its tool calls.
fn assistant_blocks(m: &ChatMessage) -> Result<Vec<ContentBlock>, ModelError> {
    let mut blocks = Vec::new();
    if !m.content.is_empty() {
        blocks.push(ContentBlock::Text(m.content.clone()));
    }
    for call in &m.tool_calls {
        let input = match &call.arguments {
            Value::Object(_) => to_document(&call.arguments),
            // Converse wants an object; what the model wrote is kept inside one.
            other => to_document(&serde_json::json!({ "_raw": other })),
        };
        blocks.push(ContentBlock::ToolUse(
            ToolUseBlock::builder()
                .tool_use_id(&call.id)
                .name(&call.name)
                .input(input)
                .build()
                .map_err(|e| invalid(&e))?,
        ));
    }
    Ok(blocks)
}

/// A tool's result: JSON when it is a JSON object, else text.
fn tool_result_block(m: &ChatMessage) -> Result<ToolResultBlock, ModelError> {
    let content = match serde_json::from_str::<Value>(&m.content) {
        Ok(v @ Value::Object(_)) => ToolResultContentBlock::Json(to_document(&v)),
        _ => ToolResultContentBlock::Text(m.content.clone()),
    };
    ToolResultBlock::builder()
        .tool_use_id(m.tool_call_id.clone().unwrap_or_default())
        .content(content)
        .set_status(m.is_error.then_some(ToolResultStatus::Error))
        .build()
        .map_err(|e| invalid(&e))
}

/// The request's own tools, if it has any.
fn tool_config(request: &ModelRequest) -> Result<Option<ToolConfiguration>, ModelError> {
    if request.tools.is_empty() {
        return Ok(None);
    }
    let specs = request
        .tools
        .iter()
        .map(|t| {
            ToolSpecification::builder()
                .name(&t.name)
                .description(&t.description)
                .input_schema(ToolInputSchema::Json(to_document(&t.parameters)))
                .build()
                .map(Tool::ToolSpec)
                .map_err(|e| invalid(&e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Converse has no "none": the last turn's instructions ask for an answer instead.
    let choice = match request.tool_choice {
        ToolChoice::Required => WireToolChoice::Any(AnyToolChoice::builder().build()),
        ToolChoice::Auto | ToolChoice::None => {
            WireToolChoice::Auto(AutoToolChoice::builder().build())
        }
    };
    ToolConfiguration::builder()
        .set_tools(Some(specs))
        .tool_choice(choice)
        .build()
        .map(Some)
        .map_err(|e| invalid(&e))
}

/// JSON into the SDK's document type.
fn to_document(v: &Value) -> Document {
    match v {
        Value::Null => Document::Null,
        Value::Bool(b) => Document::Bool(*b),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Document::Number(Number::PosInt(u))
            } else if let Some(i) = n.as_i64() {
                Document::Number(Number::NegInt(i))
            } else {
                Document::Number(Number::Float(n.as_f64().unwrap_or_default()))
            }
        }
        Value::String(s) => Document::String(s.clone()),
        Value::Array(items) => Document::Array(items.iter().map(to_document).collect()),
        Value::Object(map) => Document::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), to_document(v)))
                .collect::<HashMap<_, _>>(),
        ),
    }
}

/// The SDK's document type into JSON.
fn from_document(d: &Document) -> Value {
    match d {
        Document::Null => Value::Null,
        Document::Bool(b) => Value::Bool(*b),
        Document::Number(Number::PosInt(u)) => Value::from(*u),
        Document::Number(Number::NegInt(i)) => Value::from(*i),
        Document::Number(Number::Float(f)) => Value::from(*f),
        Document::String(s) => Value::String(s.clone()),
        Document::Array(items) => Value::Array(items.iter().map(from_document).collect()),
        Document::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), from_document(v)))
                .collect(),
        ),
    }
}

struct StreamState<'a> {
    receiver: aws_sdk_bedrockruntime::primitives::event_stream::EventReceiver<
        ConverseStreamOutput,
        aws_sdk_bedrockruntime::types::error::ConverseStreamOutputError,
    >,
    /// Tool calls being assembled, by content block index: id, name, input so far.
    calls: BTreeMap<i32, (String, String, String)>,
    /// `messageStop` came: the text is whole.
    stopped: bool,
    usage: Option<Usage>,
    done: bool,
    model: &'a str,
    timeout: Duration,
}

impl StreamState<'_> {
    /// The next item of the reply; none once it is over.
    async fn next_item(&mut self) -> Option<Result<StreamItem, ModelError>> {
        while !self.done {
            match self.receive().await {
                ControlFlow::Continue(event) => {
                    if let Some(item) = self.on_event(event) {
                        return Some(Ok(item));
                    }
                }
                ControlFlow::Break(item) => {
                    self.done = true;
                    return Some(item);
                }
            }
        }
        None
    }

    /// The next event of the reply, or the stream's last item: a break, or the usage once the
    /// message stopped.
    async fn receive(
        &mut self,
    ) -> ControlFlow<Result<StreamItem, ModelError>, ConverseStreamOutput> {
        let broken = |why: String| ControlFlow::Break(Err(ModelError::StreamBroken(why)));
        match tokio::time::timeout(self.timeout, self.receiver.recv()).await {
            Err(_) => broken(format!(
                "no event for {} s in the middle of the reply",
                self.timeout.as_secs()
            )),
            Ok(Err(e)) => broken(DisplayErrorContext(&e).to_string()),
            Ok(Ok(None)) if !self.stopped => broken("the stream ended before messageStop".into()),
            Ok(Ok(None)) => {
                let usage = self.usage.unwrap_or_default();
                ControlFlow::Break(Ok(StreamItem::Usage(usage)))
            }
            Ok(Ok(Some(event))) => ControlFlow::Continue(event),
        }
    }

    /// What an event gives the reader, if anything: text, or a tool call once its input is
    /// whole.
    fn on_event(&mut self, event: ConverseStreamOutput) -> Option<StreamItem> {
        match event {
            ConverseStreamOutput::ContentBlockStart(s) => {
                if let Some(ContentBlockStart::ToolUse(tool)) = s.start {
                    self.calls.insert(
                        s.content_block_index,
                        (tool.tool_use_id, tool.name, String::new()),
                    );
                }
            }
            ConverseStreamOutput::ContentBlockDelta(d) => match d.delta {
                Some(ContentBlockDelta::Text(text)) if !text.is_empty() => {
                    return Some(StreamItem::Text(text));
                }
                Some(ContentBlockDelta::ToolUse(piece)) => {
                    if let Some(call) = self.calls.get_mut(&d.content_block_index) {
                        call.2.push_str(&piece.input);
                    }
                }
                _ => {}
            },
            ConverseStreamOutput::ContentBlockStop(stop) => {
                let (id, name, input) = self.calls.remove(&stop.content_block_index)?;
                let arguments = if input.trim().is_empty() {
                    Value::Object(Default::default())
                } else {
                    serde_json::from_str(&input).unwrap_or(Value::String(input))
                };
                return Some(StreamItem::ToolCall(ToolCall {
                    id,
                    name,
                    arguments,
                }));
            }
            ConverseStreamOutput::MessageStop(stop) => {
                if stop.stop_reason.as_str() == "max_tokens" {
                    tracing::warn!(gen_ai.request.model = %self.model, "the reply hit max_tokens");
                }
                self.stopped = true;
            }
            ConverseStreamOutput::Metadata(meta) => {
                self.usage = meta.usage.as_ref().map(usage_of);
            }
            _ => {}
        }
        None
    }
}

fn usage_of(u: &TokenUsage) -> Usage {
    Usage {
        input_tokens: u.input_tokens.max(0) as u64,
        output_tokens: u.output_tokens.max(0) as u64,
    }
}

/// The text and tool calls of a Converse reply. The input of the forced reply tool is the reply
/// itself: it comes back as JSON text and no tool call, as a JSON reply from any provider would.
fn reply_of(
    output: Option<&ConverseOutput>,
    forced: Option<&str>,
) -> Result<(String, Vec<ToolCall>), ModelError> {
    let Some(ConverseOutput::Message(m)) = output else {
        return Err(ModelError::Invalid("the reply has no message".into()));
    };
    let uses = || m.content().iter().filter_map(|b| b.as_tool_use().ok());
    if let Some(name) = forced
        && let Some(reply) = uses().find(|t| t.name() == name)
    {
        return Ok((from_document(reply.input()).to_string(), Vec::new()));
    }
    let text = m
        .content()
        .iter()
        .filter_map(|b| b.as_text().ok())
        .cloned()
        .collect::<Vec<_>>()
        .join("");
    let calls = uses()
        .map(|t| ToolCall {
            id: t.tool_use_id().to_owned(),
            name: t.name().to_owned(),
            arguments: from_document(t.input()),
        })
        .collect();
    Ok((text, calls))
}

/// Maps the SDK's error (after its own retries) onto the port's.
fn sdk_error<E>(e: SdkError<E, HttpResponse>, timeout: Duration) -> ModelError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &e {
        SdkError::TimeoutError(_) => ModelError::Timeout(timeout.as_millis() as u64),
        SdkError::DispatchFailure(d) if d.is_timeout() => {
            ModelError::Timeout(timeout.as_millis() as u64)
        }
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            ModelError::Transport(DisplayErrorContext(&e).to_string())
        }
        SdkError::ServiceError(service) => {
            let err = service.err();
            let code = err.code().unwrap_or("UnknownError");
            let message = format!("{code}: {}", err.message().unwrap_or("(no message)"));
            let status = service.raw().status().as_u16();
            if code == "ThrottlingException" || status == 429 {
                ModelError::Throttled(message)
            } else {
                ModelError::Provider { status, message }
            }
        }
        _ => ModelError::Invalid(DisplayErrorContext(&e).to_string()),
    }
}

#[async_trait]
impl Model for BedrockModel {
    fn info(&self) -> ModelInfo {
        ModelInfo {
            provider: "bedrock".into(),
            model: self.model_id.clone(),
        }
    }

    async fn complete(&self, request: ModelRequest) -> Result<ModelResponse, ModelError> {
        let reply_tool = self.reply_tool(&request)?;
        let out = self
            .converse_structured(&request, reply_tool.as_ref())
            .await?;
        let forced = reply_tool.as_ref().map(|t| t.name.as_str());
        let (text, tool_calls) = reply_of(out.output(), forced)?;
        let usage = out.usage().map(usage_of).unwrap_or_default();
        Ok(ModelResponse {
            text,
            usage,
            tool_calls,
            retries: Vec::new(),
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
