//! `router.json`: the manifest of a router bundle.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};

/// The bundle format this build reads and writes. Bumped on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;

/// File names inside a bundle directory.
pub mod files {
    /// The manifest.
    pub const MANIFEST: &str = "router.json";
    /// The tokenizer of the encoder.
    pub const TOKENIZER: &str = "tokenizer.json";
    /// The token table of a static encoder.
    pub const STATIC_ENCODER: &str = "encoder.safetensors";
    /// The head weights.
    pub const HEAD: &str = "head.safetensors";
    /// The output-length head's weights (only in bundles whose manifest has `output_length`).
    pub const LENGTH_HEAD: &str = "length.safetensors";
    /// The task gate's tensors (only in bundles whose manifest has `task_gate`).
    pub const TASK_GATE: &str = "gate.safetensors";
    /// The model card.
    pub const MODEL_CARD: &str = "README.md";
}

/// The manifest of a router bundle (`router.json`).
///
/// A bundle is a router *version*: it pins the ordered list of underlying models (the head's output
/// columns), the encoder and the head, as Azure pins a model-router version by date.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// Must equal [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The bundle's name, e.g. `routerbench-static`.
    pub name: String,
    /// The bundle's version: a date such as `2026-11-23`.
    pub version: String,
    /// The underlying models, in the order of the head's outputs.
    pub models: Vec<String>,
    /// The encoder that turns a prompt into an embedding.
    pub encoder: EncoderConfig,
    /// How token vectors are pooled into one embedding.
    #[serde(default)]
    pub pooling: Pooling,
    /// Prompts are truncated to this many tokens (special tokens included).
    pub max_seq_length: usize,
    /// Which end of an over-long prompt is kept.
    #[serde(default)]
    pub truncation: Truncation,
    /// The head's shape.
    pub head: HeadConfig,
    /// The output-length head's shape ([`crate::LengthHead`], in [`files::LENGTH_HEAD`]); `None`
    /// for a bundle without one, whose costs use the catalog's expected output lengths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_length: Option<HeadConfig>,
    /// The task gate's tasks and threshold ([`crate::TaskGate`], in [`files::TASK_GATE`]); `None`
    /// for a bundle without one, whose scores are the head's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_gate: Option<crate::gate::TaskGateConfig>,
    /// How the head was trained; `None` for a bundle whose weights were never trained.
    #[serde(default)]
    pub training: Option<TrainingRecord>,
}

/// The encoder of a bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum EncoderConfig {
    /// A token-embedding table (`encoder.safetensors`, tensor `embeddings` of `[vocab, dim]`).
    Static {
        /// The embedding dimension.
        dim: usize,
        /// Where the table was derived from, for the model card (e.g. the BERT repo id).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        derived_from: Option<String>,
    },
    /// A BERT-family transformer encoder, loaded from the hub cache or a local directory.
    Bert {
        /// Hugging Face repo id, e.g. `sentence-transformers/all-MiniLM-L6-v2`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        repo: Option<String>,
        /// Revision (commit hash or branch) of `repo`; `main` when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        revision: Option<String>,
        /// A local directory with `config.json` and `model.safetensors`; relative paths are taken
        /// from the bundle directory. Takes precedence over `repo`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<PathBuf>,
        /// The embedding dimension (the encoder's hidden size).
        dim: usize,
    },
}

impl EncoderConfig {
    /// The dimension of the embeddings this encoder produces.
    pub fn dim(&self) -> usize {
        match self {
            EncoderConfig::Static { dim, .. } | EncoderConfig::Bert { dim, .. } => *dim,
        }
    }
}

/// How token vectors are pooled into one prompt embedding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Mean over the (unpadded) tokens, then L2 normalisation, as sentence-transformers does.
    #[default]
    Mean,
    /// The `[CLS]` token's vector, then L2 normalisation.
    Cls,
}

/// Which end of an over-long prompt is kept.
///
/// `left` drops the beginning and keeps the end: in few-shot prompts and long conversations the
/// part that decides which model is needed (the question, the latest turn) comes last.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Truncation {
    /// Keep the beginning (the usual BERT convention).
    #[default]
    Right,
    /// Keep the end.
    Left,
}

/// The head: an MLP from the embedding to one sigmoid output per underlying model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadConfig {
    /// Widths of the hidden layers (ReLU); empty for a linear head.
    pub hidden: Vec<usize>,
}

/// How a bundle's head was trained: enough to reproduce it and to judge it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingRecord {
    /// The data it was trained on (file names and formats).
    pub data: Vec<String>,
    /// The random seed.
    pub seed: u64,
    /// Free-form details: split, epochs, learning rate, validation metrics.
    #[serde(default)]
    pub details: serde_json::Value,
}

impl RouterConfig {
    /// Reads and validates `router.json` from a bundle directory.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(files::MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| CoreError::io(&path, e))?;
        // Check the version before the full parse, so an old or future bundle says so plainly
        // instead of failing on whichever field changed.
        let raw: serde_json::Value = serde_json::from_str(&text).map_err(|e| CoreError::Json {
            path: path.clone(),
            source: e,
        })?;
        match raw.get("format_version").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(FORMAT_VERSION) => {}
            Some(v) => {
                return Err(CoreError::bundle(
                    &path,
                    format!("unsupported format_version {v} (this build reads {FORMAT_VERSION})"),
                ))
            }
            None => {
                return Err(CoreError::bundle(
                    &path,
                    "missing or non-integer format_version",
                ))
            }
        }
        let config: RouterConfig = serde_json::from_value(raw).map_err(|e| CoreError::Json {
            path: path.clone(),
            source: e,
        })?;
        config.validate().map_err(|m| CoreError::bundle(&path, m))?;
        Ok(config)
    }

    /// Writes `router.json` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.validate().map_err(CoreError::Invalid)?;
        let path = dir.join(files::MANIFEST);
        let text = serde_json::to_string_pretty(self).map_err(|e| CoreError::Json {
            path: path.clone(),
            source: e,
        })?;
        std::fs::write(&path, text + "\n").map_err(|e| CoreError::io(&path, e))
    }

    /// Checks what serde cannot: non-empty, unique model names and non-zero sizes.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.models.is_empty() {
            return Err("models: the list of underlying models is empty".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for name in &self.models {
            if name.is_empty() {
                return Err("models: empty model name".into());
            }
            if !seen.insert(name) {
                return Err(format!("models: duplicate model name {name:?}"));
            }
        }
        if self.encoder.dim() == 0 {
            return Err("encoder.dim must be positive".into());
        }
        if self.max_seq_length < 2 {
            return Err("max_seq_length must be at least 2".into());
        }
        if let Some(width) = self.head.hidden.iter().find(|w| **w == 0) {
            return Err(format!("head.hidden: layer width {width} must be positive"));
        }
        if let Some(width) = self
            .output_length
            .iter()
            .flat_map(|h| &h.hidden)
            .find(|w| **w == 0)
        {
            return Err(format!(
                "output_length.hidden: layer width {width} must be positive"
            ));
        }
        if let EncoderConfig::Bert {
            repo: None,
            path: None,
            ..
        } = &self.encoder
        {
            return Err("encoder: a bert encoder needs a repo or a path".into());
        }
        Ok(())
    }

    /// Whether the head was trained (a bundle with untrained weights must never pass for trained).
    pub fn is_trained(&self) -> bool {
        self.training.is_some()
    }
}
