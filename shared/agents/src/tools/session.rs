//! One specialist's conversation with the model and its tools: call the model, run the tools it
//! asks for, feed the results back, until it answers or the turn limit is reached. A
//! `hitl_request` ends the run with the conversation so far, so the step resumes from there
//! (tools that already ran are not run again) once a person answers.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use futures::StreamExt;
use orchestrator_core::event::EventKind;
use orchestrator_core::ports::{
    ChatMessage, Model, ModelRequest, ModelResponse, RetryNote, StreamItem,
};
use orchestrator_core::tools::{
    DEFAULT_MAX_TURNS, HITL_TOOL, HumanRequest, ToolCall, ToolChoice, ToolSession,
};
use orchestrator_core::types::Usage;
use serde_json::{Value, json};

use super::{HitlArgs, ToolError, Toolset, parse_args};
use crate::{AgentError, DeltaSink, StepContext};

/// What a finished conversation gave: the last reply's text, the tokens of every call, and the
/// conversation (for a repair request).
pub(crate) struct Finished {
    pub text: String,
    pub usage: Usage,
    pub request: ModelRequest,
}

pub(crate) struct Turns<'a> {
    pub model: &'a dyn Model,
    pub ctx: &'a StepContext,
    pub sink: &'a dyn DeltaSink,
    pub tools: Toolset,
    /// Stream the text of each reply to the sink.
    pub stream: bool,
}

enum Step {
    /// Every call was answered; ask the model again.
    Continue,
    /// A person must answer the first pending call.
    Pause(HitlArgs, Vec<ToolCall>),
}

impl Turns<'_> {
    fn max_turns(&self) -> u32 {
        self.ctx
            .request
            .options
            .max_turns
            .unwrap_or(DEFAULT_MAX_TURNS)
            .max(1)
    }

    async fn event(&self, kind: EventKind) {
        self.sink.event(kind).await;
    }

    /// Runs the conversation to its answer, or to a pause for a person
    /// (`AgentError::NeedsHuman`).
    pub async fn run(&self, mut request: ModelRequest) -> Result<Finished, AgentError> {
        // The step's context as tools see it: copied only once a tool is called, not held
        // (with every prior output in it) through each model call of every step.
        let env = OnceLock::new();
        request.tools = self.tools.specs();
        let max_turns = self.max_turns();
        let mut usage = Usage::default();
        let mut hitl_left = self.ctx.hitl_remaining;
        let mut turns = self.resume(&mut request, &env, &mut hitl_left).await?;
        loop {
            self.offer_tools(&mut request, turns, max_turns);
            turns += 1;
            let reply = self.call(&request).await?;
            usage.add(reply.usage);
            // A structured answer some models give as a call of a tool named after the reply
            // (as if it were offered, as Bedrock's forced tool is): its arguments are the answer.
            if let Some(answer) = self.answer_in_call(&request, &reply) {
                return Ok(Finished {
                    text: answer,
                    usage,
                    request,
                });
            }
            // A call of a tool that was not offered is still answered (refused) below.
            if reply.tool_calls.is_empty() {
                return Ok(Finished {
                    text: reply.text,
                    usage,
                    request,
                });
            }
            if turns >= max_turns {
                let text = self.refuse_past_limit(reply, max_turns).await?;
                return Ok(Finished {
                    text,
                    usage,
                    request,
                });
            }
            request.messages.push(ChatMessage::assistant(
                reply.text.clone(),
                reply.tool_calls.clone(),
            ));
            if let Step::Pause(args, rest) = self
                .answer_calls(
                    reply.tool_calls.into(),
                    &mut request.messages,
                    &env,
                    &mut hitl_left,
                )
                .await
            {
                return Err(self.pause(args, rest, request.messages, turns, usage));
            }
        }
    }

    /// Carries on where the step paused, if it did: the person's answer is the pending call's
    /// result, and the calls after it are answered too. Returns the turns already taken.
    async fn resume(
        &self,
        request: &mut ModelRequest,
        env: &OnceLock<Arc<StepContext>>,
        hitl_left: &mut u32,
    ) -> Result<u32, AgentError> {
        let Some(resume) = &self.ctx.resume else {
            return Ok(0);
        };
        request.messages = resume.session.messages.clone();
        let turns = resume.session.turns;
        let mut pending: VecDeque<ToolCall> = resume.session.pending.clone().into();
        if let Some(call) = pending.pop_front() {
            let result = resume.answer.to_result();
            let is_error = resume.answer.denied.is_some();
            self.answered(&mut request.messages, &call, result, is_error)
                .await;
        }
        if let Step::Pause(args, rest) = self
            .answer_calls(pending, &mut request.messages, env, hitl_left)
            .await
        {
            let messages = std::mem::take(&mut request.messages);
            return Err(self.pause(args, rest, messages, turns, Usage::default()));
        }
        Ok(turns)
    }

    /// Whether the next call may (or, first with `toolPolicy: required`, must) call tools: the
    /// last turn may not, and after tool calls the model is told so.
    fn offer_tools(&self, request: &mut ModelRequest, turns: u32, max_turns: u32) {
        if request.tools.is_empty() {
            return;
        }
        let last = turns + 1 >= max_turns;
        request.tool_choice = if last {
            ToolChoice::None
        } else if turns == 0 && self.tools.required {
            ToolChoice::Required
        } else {
            ToolChoice::Auto
        };
        if last && turns > 0 {
            request.messages.push(ChatMessage::user(
                "That was the last tool call this step allows: answer now, without calling tools.",
            ));
        }
    }

    /// The model asked for tools on its last turn: the calls are refused, a `warning` says so,
    /// and the reply's text is the answer if it has any.
    async fn refuse_past_limit(
        &self,
        reply: ModelResponse,
        max_turns: u32,
    ) -> Result<String, AgentError> {
        for call in &reply.tool_calls {
            self.event(tool_call_event(call, &self.ctx.step.id)).await;
            let refusal =
                json!({ "error": format!("refused: the turn limit ({max_turns}) is reached") });
            self.event(tool_result_event(&call.name, refusal, &self.ctx.step.id))
                .await;
        }
        self.event(EventKind::warning(
            format!(
                "Step {} reached its turn limit ({max_turns} model calls) with tool calls pending",
                self.ctx.step.id
            ),
            Some(json!({ "stepId": self.ctx.step.id, "maxTurns": max_turns })),
        ))
        .await;
        if reply.text.trim().is_empty() {
            return Err(AgentError::Invalid(format!(
                "the turn limit ({max_turns} model calls) was reached before the model answered"
            )));
        }
        Ok(reply.text)
    }

    fn answer_in_call(&self, request: &ModelRequest, reply: &ModelResponse) -> Option<String> {
        let reply_name = &request.schema.as_ref()?.name;
        let call = reply.tool_calls.iter().find(|c| {
            &c.name == reply_name && self.tools.get(&c.name).is_none() && c.arguments.is_object()
        })?;
        (!reply.text.contains('{')).then(|| call.arguments.to_string())
    }

    fn pause(
        &self,
        args: HitlArgs,
        pending: Vec<ToolCall>,
        messages: Vec<ChatMessage>,
        turns: u32,
        usage: Usage,
    ) -> AgentError {
        AgentError::NeedsHuman(Box::new(HumanRequest {
            kind: args.kind,
            question: args.question,
            urgency: args.urgency,
            session: ToolSession {
                messages,
                pending,
                turns,
            },
            usage,
        }))
    }

    async fn call(&self, request: &ModelRequest) -> Result<ModelResponse, AgentError> {
        if !self.stream {
            let reply = self.model.complete(request.clone()).await?;
            for note in &reply.retries {
                self.retried(note).await;
            }
            return Ok(reply);
        }
        let mut stream = self.model.stream(request.clone());
        let mut reply = ModelResponse {
            text: String::new(),
            usage: Usage::default(),
            tool_calls: Vec::new(),
            retries: Vec::new(),
        };
        while let Some(item) = stream.next().await {
            match item? {
                StreamItem::Text(chunk) => {
                    self.sink.delta(&chunk).await;
                    reply.text.push_str(&chunk);
                }
                StreamItem::ToolCall(call) => reply.tool_calls.push(call),
                StreamItem::Usage(u) => reply.usage = u,
                StreamItem::Retried(note) => self.retried(&note).await,
            }
        }
        Ok(reply)
    }

    /// A `warning` that the adapter made a model call of this step again, and why.
    async fn retried(&self, note: &RetryNote) {
        let step = &self.ctx.step.id;
        self.event(EventKind::warning(
            format!(
                "Step {step}: the model call was made again (attempt {}): {}",
                note.attempt, note.cause
            ),
            Some(json!({ "stepId": step, "attempt": note.attempt, "cause": note.cause })),
        ))
        .await;
    }

    /// Answers the calls in order; stops at a `hitl_request` that a person must answer.
    async fn answer_calls(
        &self,
        mut calls: VecDeque<ToolCall>,
        messages: &mut Vec<ChatMessage>,
        env: &OnceLock<Arc<StepContext>>,
        hitl_left: &mut u32,
    ) -> Step {
        while let Some(call) = calls.pop_front() {
            self.event(tool_call_event(&call, &self.ctx.step.id)).await;
            let outcome: Result<Value, String> = match self.tools.get(&call.name) {
                None => Err(format!(
                    "refused: tool {:?} is not available to this step (available: {})",
                    call.name,
                    if self.tools.tools.is_empty() {
                        "none".to_owned()
                    } else {
                        self.tools.names().join(", ")
                    }
                )),
                Some(_) if call.name == HITL_TOOL => {
                    match parse_args::<HitlArgs>(call.arguments.clone()) {
                        Err(e) => Err(e.to_string()),
                        Ok(args) if args.question.trim().is_empty() => {
                            Err("invalid arguments: question must not be empty".into())
                        }
                        Ok(_) if *hitl_left == 0 => {
                            self.event(EventKind::warning(
                                format!(
                                    "Step {}: a request for a person was denied: too many requests in this run",
                                    self.ctx.step.id
                                ),
                                Some(json!({ "stepId": self.ctx.step.id, "denied": "too many requests" })),
                            ))
                            .await;
                            Err("denied: too many requests".into())
                        }
                        Ok(args) => {
                            *hitl_left -= 1;
                            calls.push_front(call);
                            return Step::Pause(args, calls.into());
                        }
                    }
                }
                Some(tool) => tool
                    .call(
                        call.arguments.clone(),
                        env.get_or_init(|| Arc::new(self.ctx.clone())).clone(),
                    )
                    .await
                    .map_err(|e| match e {
                        ToolError::InvalidArguments(_) => e.to_string(),
                        ToolError::Failed(why) => format!("the tool failed: {why}"),
                    }),
            };
            let (result, is_error) = match outcome {
                Ok(v) => (v, false),
                Err(e) => (json!({ "error": e }), true),
            };
            self.answered(messages, &call, result, is_error).await;
        }
        Step::Continue
    }

    async fn answered(
        &self,
        messages: &mut Vec<ChatMessage>,
        call: &ToolCall,
        result: Value,
        is_error: bool,
    ) {
        messages.push(ChatMessage::tool_result(
            call.id.clone(),
            result.to_string(),
            is_error,
        ));
        self.event(tool_result_event(&call.name, result, &self.ctx.step.id))
            .await;
    }
}

fn tool_call_event(call: &ToolCall, step_id: &str) -> EventKind {
    EventKind::ToolCall {
        message: call.name.clone(),
        data: json!({ "args": call.arguments, "stepId": step_id, "callId": call.id }),
    }
}

fn tool_result_event(name: &str, result: Value, step_id: &str) -> EventKind {
    EventKind::ToolResult {
        message: name.to_owned(),
        data: json!({ "result": result, "stepId": step_id }),
    }
}
