//! Asking a candidate model: the request body, the dispatcher call, the answer and its cost.

use std::time::Instant;

use router_dispatch::Dispatcher;
use router_policy::{estimate_tokens, estimated_cost, ModelSpec};
use router_store::Usage;
use serde_json::{Map, Value};

use super::progress::{Answer, AnswerSource};
use super::prompts::KnownAnswer;
use crate::llm::ask_model;

/// Sampling settings sent with every candidate request.
#[derive(Debug, Clone, Default)]
pub struct Sampling {
    /// `max_tokens`.
    pub max_tokens: Option<u32>,
    /// `temperature`.
    pub temperature: Option<f64>,
}

impl Sampling {
    /// The chat-completions body for `model`: the messages and the sampling settings (the
    /// dispatcher replaces `model` with each deployment's upstream name).
    pub fn body(&self, model: &str, messages: &[Value]) -> Value {
        let mut body = Map::new();
        body.insert("model".into(), Value::String(model.to_string()));
        body.insert("messages".into(), Value::Array(messages.to_vec()));
        if let Some(max_tokens) = self.max_tokens {
            body.insert("max_tokens".into(), max_tokens.into());
        }
        if let Some(temperature) = self.temperature {
            body.insert("temperature".into(), temperature.into());
        }
        Value::Object(body)
    }
}

/// Sends `body` to `spec`'s deployments (with the dispatcher's retries, spillover and cooldowns,
/// waiting out rate limits: see [`ask_model`]) and prices the answer.
pub async fn ask(
    dispatcher: &Dispatcher,
    spec: &ModelSpec,
    body: &Value,
    estimated_prompt_tokens: usize,
) -> Result<Answer, String> {
    let start = Instant::now();
    let answer = ask_model(dispatcher, &spec.deployments, body).await?;
    let latency_ms = start.elapsed().as_millis() as u64;
    Ok(priced(
        spec,
        &answer.content,
        Usage::from_response(&answer.response),
        estimated_prompt_tokens,
        latency_ms,
        AnswerSource::Backend,
    ))
}

/// A stored answer, priced by the catalog when its usage is known (else its stored cost).
pub fn known_answer(
    spec: &ModelSpec,
    known: &KnownAnswer,
    estimated_prompt_tokens: usize,
) -> Answer {
    let mut answer = priced(
        spec,
        &known.text,
        known.usage,
        estimated_prompt_tokens,
        known.latency_ms,
        AnswerSource::Store,
    );
    if known.usage.is_none() {
        answer.cost_usd = known.cost_usd;
    }
    answer
}

/// The answer with its cost: reported usage × the catalog's prices; without a reported usage, the
/// policy's token estimate of the prompt and of the answer.
fn priced(
    spec: &ModelSpec,
    text: &str,
    usage: Option<Usage>,
    estimated_prompt_tokens: usize,
    latency_ms: u64,
    source: AnswerSource,
) -> Answer {
    let (prompt_tokens, output_tokens) = match usage {
        Some(usage) => (usage.prompt_tokens, usage.completion_tokens),
        None => (estimated_prompt_tokens as u64, estimate_tokens(text) as u64),
    };
    Answer {
        text: text.to_string(),
        prompt_tokens,
        output_tokens,
        usage_reported: usage.is_some(),
        cost_usd: estimated_cost(spec, prompt_tokens, output_tokens),
        latency_ms,
        source,
    }
}

/// What a pair may cost before it is asked, for the budget: the estimated prompt tokens (the
/// policy's estimate, which errs high) and `max_tokens` of output when it is set (the most the
/// backend may write), else the catalog's `expected_output_tokens`, at the model's prices.
pub fn expected_cost(spec: &ModelSpec, estimated_prompt_tokens: usize, sampling: &Sampling) -> f64 {
    let output_tokens = sampling.max_tokens.unwrap_or(spec.expected_output_tokens);
    estimated_cost(
        spec,
        estimated_prompt_tokens as u64,
        u64::from(output_tokens),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_usage_times_prices() {
        let spec = ModelSpec::new("m", 2.0, 8.0, 1000);
        let usage = Usage {
            prompt_tokens: 1000,
            completion_tokens: 500,
            total_tokens: 1500,
        };
        let answer = priced(&spec, "four", Some(usage), 7, 3, AnswerSource::Backend);
        assert!((answer.cost_usd - (1000.0 * 2.0 + 500.0 * 8.0) / 1e6).abs() < 1e-15);
        assert_eq!(
            (
                answer.prompt_tokens,
                answer.output_tokens,
                answer.usage_reported
            ),
            (1000, 500, true)
        );
        let estimated = priced(&spec, "four", None, 7, 3, AnswerSource::Backend);
        assert_eq!(
            (
                estimated.prompt_tokens,
                estimated.output_tokens,
                estimated.usage_reported
            ),
            (7, 2, false)
        );
    }

    #[test]
    fn the_body_carries_sampling_settings() {
        let sampling = Sampling {
            max_tokens: Some(5),
            temperature: Some(0.0),
        };
        let body = sampling.body("m", &[serde_json::json!({"role": "user", "content": "hi"})]);
        assert_eq!(body["max_tokens"], 5);
        assert_eq!(body["temperature"], 0.0);
        assert_eq!(body["model"], "m");
        assert!(Sampling::default()
            .body("m", &[])
            .get("max_tokens")
            .is_none());
    }
}
