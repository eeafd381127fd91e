use orchestrator_core::ports::{ChatMessage, Model, ModelRequest};
use orchestrator_core::tools::ToolChoice;
use orchestrator_core::types::Usage;

use crate::AgentError;
use crate::tools::Turns;

/// What a structured call gave: the parsed value, the tokens of every call, and whether the
/// repair request was needed.
pub struct Repaired<T> {
    pub value: T,
    pub usage: Usage,
    pub repaired: bool,
}

/// Asks the model, parses the reply, and when the reply is unusable asks once more, quoting the
/// problem. After that the failure is final (`AgentError::Invalid`, naming `what`).
pub async fn complete_with_repair<T>(
    model: &dyn Model,
    request: ModelRequest,
    what: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Repaired<T>, AgentError> {
    let first = model.complete(request.clone()).await?;
    repair(model, request, first.text, first.usage, what, parse).await
}

/// Like `complete_with_repair`, for a specialist with tools: the first answer comes from its
/// conversation (tools and all); the repair request, if needed, asks for the JSON alone.
pub(crate) async fn converse_with_repair<T>(
    turns: &Turns<'_>,
    request: ModelRequest,
    what: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Repaired<T>, AgentError> {
    let first = turns.run(request).await?;
    let mut request = first.request;
    request.tool_choice = ToolChoice::None;
    repair(turns.model, request, first.text, first.usage, what, parse).await
}

async fn repair<T>(
    model: &dyn Model,
    mut request: ModelRequest,
    first: String,
    first_usage: Usage,
    what: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Repaired<T>, AgentError> {
    let mut usage = first_usage;
    let problem = match parse(&first) {
        Ok(value) => {
            return Ok(Repaired {
                value,
                usage,
                repaired: false,
            });
        }
        Err(problem) => problem,
    };
    tracing::warn!(%what, %problem, "unusable reply; asking for a repair");
    request
        .messages
        .push(ChatMessage::assistant(first, Vec::new()));
    request.messages.push(ChatMessage::user(format!(
        "Your reply could not be used: {problem}. Reply again with only the corrected JSON."
    )));
    let second = model.complete(request).await?;
    usage.add(second.usage);
    let value = parse(&second.text)
        .map_err(|p| AgentError::Invalid(format!("{what} reply, after one repair: {p}")))?;
    Ok(Repaired {
        value,
        usage,
        repaired: true,
    })
}
