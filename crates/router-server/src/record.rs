//! Writing a record: what became of it, and what an answer cost. Shared by stored completions
//! and shadow answers, and independent of both.

use std::sync::Arc;

use router_policy::{estimated_cost, ModelSpec};
use router_store::{Inserted, NewCompletion, Store, Usage};

use crate::Metrics;

/// What became of a `"store": true` request.
pub(crate) enum Outcome {
    Stored(Inserted),
    Refused(String),
    Failed(String),
    Skipped(String),
}

impl Outcome {
    /// The `x-router-store` value: `stored`, `refused: ...`, `failed: ...`, `skipped: ...`
    /// (visible ASCII only).
    pub fn header_value(&self) -> String {
        let text = match self {
            Outcome::Stored(i) => format!("stored {}", i.id),
            Outcome::Refused(why) => format!("refused: {why}"),
            Outcome::Failed(why) => format!("failed: {why}"),
            Outcome::Skipped(why) => format!("skipped: {why}"),
        };
        text.chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .collect()
    }

    pub fn metric(&self) -> &'static str {
        match self {
            Outcome::Stored(_) => "stored",
            Outcome::Refused(_) => "refused",
            Outcome::Failed(_) => "failed",
            Outcome::Skipped(_) => "skipped",
        }
    }
}

/// The cost of an answer: the catalog's prices × the tokens the backend reported; else
/// `fallback` (an estimate).
pub(crate) fn cost_of(spec: &ModelSpec, usage: Option<Usage>, fallback: f64) -> f64 {
    usage
        .map(|u| estimated_cost(spec, u.prompt_tokens, u.completion_tokens))
        .unwrap_or(fallback)
}

/// Inserts `record` off the async workers (committed before it returns); counts evictions.
pub(crate) async fn insert(
    store: Option<&Arc<Store>>,
    metrics: &Metrics,
    record: NewCompletion,
) -> Result<Inserted, Outcome> {
    let Some(store) = store.cloned() else {
        return Err(Outcome::Failed("no store configured".into()));
    };
    match tokio::task::spawn_blocking(move || store.insert(record)).await {
        Ok(Ok(inserted)) => {
            if inserted.evicted > 0 {
                metrics.store_evicted(inserted.evicted);
            }
            Ok(inserted)
        }
        Ok(Err(e)) if e.is_full() => Err(Outcome::Refused(e.to_string())),
        Ok(Err(e)) => Err(Outcome::Failed(e.to_string())),
        Err(e) => Err(Outcome::Failed(format!("the store task failed: {e}"))),
    }
}
