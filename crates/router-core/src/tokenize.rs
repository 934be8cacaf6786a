//! The tokenizer, configured for routing: no padding, truncation at the bundle's length.

use std::path::{Path, PathBuf};

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams};

use crate::config::Truncation;

use crate::error::{CoreError, Result};

/// A `tokenizer.json` with padding turned off and truncation set, so that a prompt alone and inside
/// a batch become the same ids. (The all-MiniLM-L6-v2 file pads to 128 by default.)
#[derive(Clone)]
pub struct PromptTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    max_tokens: usize,
    add_special_tokens: bool,
    pad_id: u32,
}

impl std::fmt::Debug for PromptTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptTokenizer")
            .field("path", &self.path)
            .field("max_tokens", &self.max_tokens)
            .field("add_special_tokens", &self.add_special_tokens)
            .finish()
    }
}

impl PromptTokenizer {
    /// Loads `path`. `max_tokens` counts special tokens when `add_special_tokens` is set;
    /// `truncation` says which end of a longer prompt is kept.
    pub fn load(path: &Path, max_tokens: usize, truncation: Truncation, add_special_tokens: bool) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| CoreError::io(path, e))?;
        let mut inner = Tokenizer::from_bytes(&bytes).map_err(|e| CoreError::Tokenizer {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                direction: match truncation {
                    Truncation::Right => TruncationDirection::Right,
                    Truncation::Left => TruncationDirection::Left,
                },
                ..Default::default()
            }))
            .map_err(|e| CoreError::Tokenizer { path: path.to_path_buf(), message: e.to_string() })?;
        let pad_id = ["[PAD]", "<pad>"].iter().find_map(|t| inner.token_to_id(t)).unwrap_or(0);
        Ok(Self { inner, path: path.to_path_buf(), max_tokens, add_special_tokens, pad_id })
    }

    /// The token ids of one prompt.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, self.add_special_tokens)
            .map_err(|e| CoreError::Tokenizer { path: self.path.clone(), message: e.to_string() })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The id used to pad batches.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The id of a token, if the vocabulary has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The truncation length.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The same tokenizer with or without special tokens (a static encoder averages word pieces
    /// only, as Model2Vec does; BERT needs `[CLS]` and `[SEP]`).
    pub fn with_special_tokens(mut self, add: bool) -> Self {
        self.add_special_tokens = add;
        self
    }
}
