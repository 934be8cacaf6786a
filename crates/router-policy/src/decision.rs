//! The decision and its explanation.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Capability, Mode};

/// Why a model was not eligible for a request. Only the first filter that removed a model is
/// recorded; the filters run in the order of the variants below.
///
/// Serialised with a `reason` tag, e.g. `{"reason":"context_window","needed":9000,"window":8192}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Exclusion {
    /// The bundle predicts the model but the catalog has no entry for it (no price, no window).
    NoCatalogEntry,
    /// Outside the deployment's subset, and the request did not ask for it.
    NotInSubset,
    /// The request's subset names it, but it is outside the deployment's subset, which a request
    /// can narrow and never widen.
    RequestedOutsideSubset,
    /// Inside the deployment's subset but outside the request's.
    NotInRequestSubset,
    /// The request's `exclude` list names it (dispatch uses this for models whose deployments are
    /// all saturated).
    Saturated,
    /// Its predicted quality is NaN or infinite, so it cannot be compared.
    InvalidPrediction,
    /// Estimated prompt tokens plus output tokens exceed its context window.
    ContextWindow {
        /// Estimated prompt tokens + `max_tokens` (or the model's expected output tokens).
        needed: u64,
        /// The model's context window.
        window: u64,
    },
    /// The request needs capabilities the model lacks.
    MissingCapabilities {
        /// The capabilities lacking, in [`Capability::ALL`] order.
        missing: Vec<Capability>,
    },
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exclusion::NoCatalogEntry => {
                f.write_str("no catalog entry (no price or context window known)")
            }
            Exclusion::NotInSubset => f.write_str("not in the deployment's model subset"),
            Exclusion::RequestedOutsideSubset => f.write_str(
                "named by the request's subset but outside the deployment's model subset",
            ),
            Exclusion::NotInRequestSubset => f.write_str("not in the request's model subset"),
            Exclusion::Saturated => {
                f.write_str("excluded by the request (e.g. its deployments are saturated)")
            }
            Exclusion::InvalidPrediction => f.write_str("predicted quality is not a finite number"),
            Exclusion::ContextWindow { needed, window } => write!(
                f,
                "needs {needed} tokens (prompt + output) but its context window is {window}"
            ),
            Exclusion::MissingCapabilities { missing } => {
                f.write_str("lacks ")?;
                for (i, c) in missing.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{c}")?;
                }
                Ok(())
            }
        }
    }
}

/// A model that passed every filter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EligibleModel {
    /// Its predicted quality.
    pub predicted_quality: f32,
    /// The output tokens charged in the cost estimate.
    pub output_tokens: u64,
    /// Estimated cost of this request on this model, USD.
    pub estimated_cost: f64,
    /// Whether its quality reached the threshold, i.e. it was a candidate for the choice.
    pub within_band: bool,
}

/// One routing decision and its full explanation. Maps are ordered by model name, so the JSON
/// form is deterministic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The chosen model.
    pub model: String,
    /// The chosen model's estimated cost for this request, USD.
    pub estimated_cost: f64,
    /// The routing mode in effect (the request's, else the deployment's).
    pub mode: Mode,
    /// The band in effect: the mode's band, or a custom one.
    pub band: f64,
    /// Whether `band` is a custom band rather than `mode`'s.
    pub custom_band: bool,
    /// The highest predicted quality among the eligible models.
    pub q_star: f32,
    /// The lowest quality a candidate may have: `q* × (1 − band)`.
    pub threshold: f64,
    /// The request's estimated prompt tokens, as used for the window check and the cost.
    pub input_tokens: u64,
    /// Every bundle column's predicted quality (`None` where it was NaN or infinite); `scores` in JSON.
    #[serde(rename = "scores", alias = "predictions")]
    pub predictions: BTreeMap<String, Option<f32>>,
    /// Every bundle column's predicted output length in tokens, when the bundle has an
    /// output-length head (empty otherwise: the catalog's `expected_output_tokens` was charged).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub predicted_output_tokens: BTreeMap<String, u64>,
    /// The models that passed every filter.
    pub eligible: BTreeMap<String, EligibleModel>,
    /// The models that did not, each with the first filter that removed it.
    pub excluded: BTreeMap<String, Exclusion>,
    /// Set when the bundle's task gate recognised the prompt's task and blended the scores
    /// towards that task's training means (the scores above are the blended ones). The policy
    /// leaves it `None`; whoever scored the prompt fills it in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_gate: Option<TaskGateNote>,
}

/// What a bundle's task gate did to the scores of one prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskGateNote {
    /// The task the gate recognised.
    pub task: String,
    /// The recogniser's probability of that task.
    pub confidence: f32,
    /// How much of the task's training means replaced the head's scores (1: all of them).
    pub blend: f32,
}

impl Decision {
    /// The chosen model's entry in [`Decision::eligible`].
    pub fn chosen(&self) -> Option<&EligibleModel> {
        self.eligible.get(&self.model)
    }
}

/// A short table: one row per bundle column, eligible models first (by quality, then name), the
/// chosen one marked with `*`; `out tok.` is the output tokens charged (eligible models) or
/// predicted (excluded ones), from the bundle's length head when it has one, else the catalog.
impl Decision {
    /// The explanation's table rows: the eligible models by predicted quality (best first), then
    /// the excluded ones with their reasons.
    fn table_rows(&self) -> Vec<[String; 5]> {
        let mut eligible: Vec<(&String, &EligibleModel)> = self.eligible.iter().collect();
        eligible.sort_by(|a, b| {
            b.1.predicted_quality
                .total_cmp(&a.1.predicted_quality)
                .then_with(|| a.0.cmp(b.0))
        });
        let mut rows: Vec<[String; 5]> = Vec::with_capacity(self.predictions.len());
        for (name, e) in eligible {
            let marker = if *name == self.model { "*" } else { " " };
            let status = if *name == self.model {
                "chosen"
            } else if e.within_band {
                "eligible, within band"
            } else {
                "eligible, below threshold"
            };
            rows.push([
                format!("{marker} {name}"),
                format!("{:.4}", e.predicted_quality),
                e.output_tokens.to_string(),
                format!("${:.6}", e.estimated_cost),
                status.to_string(),
            ]);
        }
        for (name, why) in &self.excluded {
            let quality = match self.predictions.get(name) {
                Some(Some(q)) => format!("{q:.4}"),
                _ => "-".to_string(),
            };
            rows.push([
                format!("  {name}"),
                quality,
                self.predicted_output_tokens
                    .get(name)
                    .map_or_else(|| "-".to_string(), u64::to_string),
                "-".to_string(),
                format!("excluded: {why}"),
            ]);
        }
        rows
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let band = if self.custom_band {
            format!("custom band {}", self.band)
        } else {
            format!("band {}", self.band)
        };
        writeln!(
            f,
            "route: {} (mode {}, {band}; q* {:.4}, threshold {:.4}; {} input tokens; output tokens {}; est. ${:.6})",
            self.model,
            self.mode,
            self.q_star,
            self.threshold,
            self.input_tokens,
            if self.predicted_output_tokens.is_empty() { "from the catalog" } else { "predicted per model" },
            self.estimated_cost
        )?;
        if let Some(gate) = &self.task_gate {
            writeln!(
                f,
                "task gate: recognised as {} (p {:.2}); scores blended {:.2} towards that task's training means",
                gate.task, gate.confidence, gate.blend
            )?;
        }

        let rows = self.table_rows();
        let header = ["  model", "quality", "out tok.", "est. cost", "status"];
        let width = |i: usize| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        };
        let (w0, w1, w2, w3) = (width(0), width(1), width(2), width(3));
        for row in std::iter::once(header.map(String::from)).chain(rows) {
            writeln!(
                f,
                "{:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}  {}",
                row[0], row[1], row[2], row[3], row[4]
            )?;
        }
        Ok(())
    }
}
