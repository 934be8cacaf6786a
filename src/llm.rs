//! Asking one catalog model from the command line (`label`'s candidates, graders' judges): through
//! `router-dispatch` like live traffic, but with no client waiting.

use router_dispatch::{DispatchError, DispatchRequest, Dispatched, Dispatcher};
use serde_json::Value;

/// Times a request waits out deployments that are all rate-limited (429 or cooling down) before
/// it fails.
const SATURATED_WAITS: u32 = 5;

/// A chat completion read whole.
pub struct ChatAnswer {
    /// The whole response body (its `usage` prices the answer).
    pub response: Value,
    /// `choices[0].message.content`.
    pub content: String,
}

/// One chat completion from the first of `deployments` that answers. An error status, a body that
/// is not a chat completion or an answer without text is an error, never an empty answer.
pub async fn ask_model(
    dispatcher: &Dispatcher,
    deployments: &[String],
    body: &Value,
) -> Result<ChatAnswer, String> {
    let dispatched = dispatch_waiting(dispatcher, deployments, body).await?;
    let status = dispatched.response.status();
    let deployment = dispatched.deployment;
    let text = dispatched
        .response
        .text()
        .await
        .map_err(|e| format!("deployment `{deployment}`: reading the answer: {e}"))?;
    if !status.is_success() {
        let excerpt: String = text.chars().take(200).collect();
        return Err(format!(
            "deployment `{deployment}` answered {status}: {excerpt}"
        ));
    }
    let response: Value = serde_json::from_str(&text)
        .map_err(|e| format!("deployment `{deployment}`: the answer is not JSON ({e})"))?;
    let content = match response.pointer("/choices/0/message/content") {
        Some(Value::String(content)) => content.clone(),
        _ => {
            return Err(format!(
                "deployment `{deployment}`: the answer has no choices[0].message.content text"
            ))
        }
    };
    Ok(ChatAnswer { response, content })
}

/// Dispatches like live traffic (retries, spillover, cooldowns), except that when every deployment
/// is rate-limited a batch job has no client waiting: it sleeps until the first is free again (the
/// `Retry-After` the dispatcher recorded, else its default cooldown) and tries again,
/// [`SATURATED_WAITS`] times.
async fn dispatch_waiting(
    dispatcher: &Dispatcher,
    deployments: &[String],
    body: &Value,
) -> Result<Dispatched, String> {
    let request = DispatchRequest {
        deployments,
        body,
        spillover: None,
    };
    let mut waits = 0;
    loop {
        match dispatcher.dispatch(request).await {
            Err(DispatchError::Saturated { retry_after, .. }) if waits < SATURATED_WAITS => {
                waits += 1;
                let options = dispatcher.options();
                tokio::time::sleep(
                    retry_after
                        .unwrap_or(options.default_cooldown)
                        .min(options.max_cooldown),
                )
                .await;
            }
            result => return result.map_err(|e| e.to_string()),
        }
    }
}
