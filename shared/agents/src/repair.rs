use std::time::Duration;

use orchestrator_core::event::EventKind;
use orchestrator_core::ports::{ChatMessage, Model, ModelRequest};
use orchestrator_core::tools::ToolChoice;
use orchestrator_core::types::Usage;
use serde_json::json;

use crate::tools::Turns;
use crate::{AgentError, DeltaSink};

/// What a structured call gave: the parsed value, the tokens of every call, and whether it
/// took more than one.
pub struct Repaired<T> {
    pub value: T,
    pub usage: Usage,
    pub repaired: bool,
}

/// Asks the model until a reply parses, at most `attempts` calls: an unusable reply is
/// answered with a repair request quoting the problem, a transient model error with the same
/// request after a pause. Each retry is a `warning` on `sink`, with its attempt and cause.
pub async fn complete_with_retries<T>(
    model: &dyn Model,
    mut request: ModelRequest,
    what: &str,
    attempts: u32,
    sink: &dyn DeltaSink,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Repaired<T>, AgentError> {
    let mut usage = Usage::default();
    let mut attempt = 1;
    loop {
        let cause = match model.complete(request.clone()).await {
            Ok(reply) => {
                usage.add(reply.usage);
                for note in &reply.retries {
                    sink.event(EventKind::warning(
                        format!(
                            "The {what}'s model call was made again (attempt {}): {}",
                            note.attempt, note.cause
                        ),
                        Some(
                            json!({ "agent": what, "attempt": note.attempt, "cause": note.cause }),
                        ),
                    ))
                    .await;
                }
                let text = reply_text(reply.text, &reply.tool_calls);
                match parse(&text) {
                    Ok(value) => {
                        let repaired = attempt > 1;
                        return Ok(Repaired {
                            value,
                            usage,
                            repaired,
                        });
                    }
                    Err(problem) if attempt < attempts => {
                        ask_again(&mut request, text, &problem);
                        format!("its reply could not be used: {problem}")
                    }
                    Err(problem) => {
                        return Err(AgentError::Invalid(format!(
                            "{what} reply, after {attempt} attempts: {problem}"
                        )));
                    }
                }
            }
            Err(e) if e.retryable() && attempt < attempts => {
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                format!("the model call failed: {e}")
            }
            Err(e) => return Err(e.into()),
        };
        attempt += 1;
        retried(sink, what, attempt, attempts, &cause).await;
    }
}

/// What to parse of a reply: its text, or, when a model answered a structured request with a
/// tool call and no JSON in its text (some do, to emit JSON), that call's arguments.
fn reply_text(text: String, calls: &[orchestrator_core::tools::ToolCall]) -> String {
    match calls.first() {
        Some(call) if !text.contains('{') => call.arguments.to_string(),
        _ => text,
    }
}

/// A `warning` that a call is made again, and why.
async fn retried(sink: &dyn DeltaSink, what: &str, attempt: u32, attempts: u32, cause: &str) {
    tracing::warn!(%what, attempt, %cause, "retrying a model call");
    sink.event(EventKind::warning(
        format!("Asking the {what} again (attempt {attempt} of {attempts}): {cause}"),
        Some(json!({ "agent": what, "attempt": attempt, "maxAttempts": attempts, "cause": cause })),
    ))
    .await;
}

fn ask_again(request: &mut ModelRequest, reply: String, problem: &str) {
    request
        .messages
        .push(ChatMessage::assistant(reply, Vec::new()));
    request.messages.push(ChatMessage::user(format!(
        "Your reply could not be used: {problem}. Reply again with only the corrected JSON."
    )));
}

/// For a specialist with tools: the first answer comes from its conversation (tools and
/// all); when it cannot be used, one repair request asks for the JSON alone (a `warning`
/// says so). A second unusable reply fails the attempt; the engine may run the step again.
pub(crate) async fn converse_with_repair<T>(
    turns: &Turns<'_>,
    request: ModelRequest,
    what: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Repaired<T>, AgentError> {
    let first = turns.run(request).await?;
    let mut usage = first.usage;
    let problem = match parse(&first.text) {
        Ok(value) => {
            return Ok(Repaired {
                value,
                usage,
                repaired: false,
            });
        }
        Err(problem) => problem,
    };
    let mut request = first.request;
    request.tool_choice = ToolChoice::None;
    ask_again(&mut request, first.text, &problem);
    let cause = format!("its reply could not be used: {problem}");
    retried(turns.sink, what, 2, 2, &cause).await;
    let second = turns.model.complete(request).await?;
    usage.add(second.usage);
    let value = parse(&second.text)
        .map_err(|p| AgentError::Invalid(format!("{what} reply, after one repair: {p}")))?;
    Ok(Repaired {
        value,
        usage,
        repaired: true,
    })
}
