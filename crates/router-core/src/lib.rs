//! # router-core
//!
//! Turns a prompt into one predicted quality in [0, 1] per underlying LLM. This is the part of
//! model-router that other services embed: it has no async runtime and no web framework.
//!
//! A [`Router`] is a loaded *bundle* (a directory, see [`config`]): an [`Encoder`] turns the
//! prompt into an L2-normalised embedding, and a [`Head`] (an MLP) maps it to one sigmoid output
//! per underlying model, in the order of [`Router::models`].
//!
//! A bundle may also carry a [`LengthHead`] (`length.safetensors`): over the same embedding, the
//! output tokens each model is expected to write for the prompt, which the policy charges in its
//! cost estimate; [`Router::predict`] returns both from one encoder pass.
//!
//! And a [`TaskGate`] (`gate.safetensors`): a task recogniser over the embedding and, per known
//! task, how far the head's scores are blended towards that task's training means (chosen by
//! cross-validation when the bundle was trained); [`Router::score`] and the other scoring methods
//! return the gated scores, and [`Prediction::task_gate`] says when the gate chose.
//!
//! Two encoder tiers:
//! - **static** ([`StaticEncoder`]): a token-embedding table, averaged over the prompt's word
//!   pieces. Microseconds per prompt; the table is derived from a BERT encoder by
//!   [`distill::distill_static`].
//! - **bert** ([`BertEncoder`]): a BERT-family transformer such as all-MiniLM-L6-v2, mean-pooled.
//!   Milliseconds per prompt on CPU. Its forward pass is this crate's own ([`bert`]), built for
//!   CPU latency.
//!
//! Design decisions:
//! - Nothing that comes from outside panics: a broken bundle is a [`CoreError`] naming the file.
//! - Tokenizers never pad; batches are padded to their longest prompt and masked, so a prompt
//!   scores the same alone and inside a batch.
//! - Encoder weights load from a directory or from the Hugging Face hub cache
//!   ([`hub::hub_file`]), which works offline once the cache is filled.
//!
//! ```
//! use router_core::Router;
//!
//! let bundle = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/routerbench");
//! let router = Router::load(bundle)?;
//! let scores = router.score("Write a Python function that reverses a linked list.")?;
//! assert_eq!(scores.len(), router.models().len());
//! assert!(scores.iter().all(|q| (0.0..=1.0).contains(q)));
//! // The same prompt inside a batch scores the same.
//! let batch = router.score_batch(&["Hi", "Write a Python function that reverses a linked list."])?;
//! assert!(batch[1].iter().zip(&scores).all(|(a, b)| (a - b).abs() < 1e-5));
//! # Ok::<(), router_core::CoreError>(())
//! ```
#![deny(missing_docs)]

pub mod bert;
pub mod config;
mod cpu_head;
mod cpu_layer;
pub mod distill;
mod encoder;
mod error;
mod gate;
mod head;
pub mod hub;
mod length;
mod packed;
mod router;
mod tokenize;

pub use config::{
    EncoderConfig, HeadConfig, Pooling, RouterConfig, TrainingRecord, Truncation, FORMAT_VERSION,
};
pub use cpu_head::CpuHead;
pub use encoder::{save_static_table, BertEncoder, Encoder, StaticEncoder, STATIC_TABLE_TENSOR};
pub use error::{CoreError, Result};
pub use gate::{tensors as gate_tensors, GateChoice, TaskGate, TaskGateConfig, TaskGateParts};
pub use head::Head;
pub use length::LengthHead;
pub use packed::PackedLinear;
pub use router::{
    bert_dir_from_hub, default_device, Prediction, Router, TokenizedPrompt, DEFAULT_REVISION,
};
pub use tokenize::PromptTokenizer;

/// Re-exported so that users of the crate build devices and tensors with the same candle version.
pub use candle_core;
/// Re-exported for building and training heads with the same candle-nn version.
pub use candle_nn;
