use orchestrator_core::ports::{ChatMessage, ChatRole, Model, ModelRequest};
use orchestrator_core::types::Usage;

use crate::AgentError;

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
    mut request: ModelRequest,
    what: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Repaired<T>, AgentError> {
    let first = model.complete(request.clone()).await?;
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
    tracing::warn!(%what, %problem, "unusable reply; asking for a repair");
    request.messages.push(ChatMessage {
        role: ChatRole::Assistant,
        content: first.text,
    });
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
