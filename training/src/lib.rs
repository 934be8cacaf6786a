//! Training and evaluation of model-router's router heads.
//!
//! - [`data`]: importers for the public routing datasets (RouterBench, RouterDC, LLMRouter,
//!   RouteLLM) and this crate's canonical JSON lines, into one [`data::Record`] list; model
//!   selection and renaming; a deterministic, task-stratified train/validation split.
//! - [`metrics`]: the evaluation words of `DESIGN.md`: quality and cost of a routing, best single,
//!   oracle, the band router, AIQ, APGR / CPT, cost at parity.
//! - [`baselines`]: kNN over prompt embeddings, uniformly random routing.
//! - [`gate`]: the task gate: a task recogniser and, per task, a blend of the head's scores
//!   towards the task's means, chosen by inner cross-validation of the training side.
//! - [`eval`]: the evaluation report (JSON and table) and its cost–quality plot.
//! - [`grade`]: graders that score an output against a reference (OpenAI's `string_check` and
//!   `text_similarity`), one at a time or over a JSON-lines file.
//! - [`candidate`]: adding an underlying model to a trained bundle from graded samples, by
//!   fitting one more output row on the frozen head.
//!
//! Design decisions, briefly:
//! - Importers never stop at a bad row: they skip it and count it by reason, so a report can say
//!   what was left out. A missing or wrong *file* is an error that names it.
//! - Metrics take a [`metrics::Matrix`] of scores and costs in a fixed model order, so one set of
//!   predictions (router head, kNN, anything) is judged by the same code; each choice is made by
//!   the policy crate's own band rule ([`router_policy::choose_in_band`]), so evaluation measures
//!   what a deployment does.
//! - Everything random (the split, the random baseline) is seeded with a value-stable RNG.
//! - One error enum for the crate, [`TrainingError`].

#![deny(missing_docs)]

pub mod baselines;
pub mod candidate;
pub mod capacity;
pub mod data;
pub mod embed;
pub mod error;
pub mod eval;
pub mod gate;
pub mod grade;
pub mod length;
pub mod metrics;
mod plot;
pub mod train;

pub use error::{Result, TrainingError};
