//! Encoders: a prompt to one L2-normalised embedding.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::bert::{l2_normalize, mean_pool, pad_batch, BertConfig, BertModel};
use crate::config::{Pooling, Truncation};
use crate::error::{CoreError, Result};
use crate::tokenize::PromptTokenizer;

/// The name of the tensor that holds a static encoder's table.
pub const STATIC_TABLE_TENSOR: &str = "embeddings";

/// Batches for [`Encoder::embed_all`] are cut at about this many tokens (padding included), which
/// keeps the attention matrices cache-sized on CPU.
const BATCH_TOKEN_BUDGET: usize = 4096;

/// A BERT-family encoder with its tokenizer and pooling.
#[derive(Debug, Clone)]
pub struct BertEncoder {
    model: BertModel,
    tokenizer: PromptTokenizer,
    pooling: Pooling,
    hidden_size: usize,
    device: Device,
}

impl BertEncoder {
    /// Loads `config.json` and `model.safetensors` from `model_dir`, and the tokenizer from
    /// `tokenizer_path`; prompts are truncated to `max_seq_length` tokens.
    pub fn load(
        model_dir: &Path,
        tokenizer_path: &Path,
        max_seq_length: usize,
        truncation: Truncation,
        pooling: Pooling,
        device: &Device,
    ) -> Result<Self> {
        let config_path = model_dir.join("config.json");
        let text =
            std::fs::read_to_string(&config_path).map_err(|e| CoreError::io(&config_path, e))?;
        let config: BertConfig = serde_json::from_str(&text).map_err(|e| CoreError::Json {
            path: config_path.clone(),
            source: e,
        })?;
        config
            .validate()
            .map_err(|m| CoreError::bundle(&config_path, m))?;
        let weights_path = model_dir.join("model.safetensors");
        let model = load_safetensors(&weights_path, device, |vb| BertModel::load(vb, &config))?;
        let max_seq_length = max_seq_length.min(model.max_positions());
        let tokenizer = PromptTokenizer::load(tokenizer_path, max_seq_length, truncation, true)?;
        // Ids past the word embeddings would fail on every prompt (and distillation) that uses them.
        if tokenizer.vocab_size() > config.vocab_size {
            return Err(CoreError::bundle(
                tokenizer_path,
                format!(
                    "the tokenizer has {} tokens, but {} has vocab_size {}",
                    tokenizer.vocab_size(),
                    config_path.display(),
                    config.vocab_size
                ),
            ));
        }
        Ok(Self {
            model,
            tokenizer,
            pooling,
            hidden_size: config.hidden_size,
            device: device.clone(),
        })
    }

    /// Embeddings of a batch of prompts, padded only to the longest one.
    pub fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let ids = texts
            .iter()
            .map(|t| self.tokenizer.encode(t))
            .collect::<Result<Vec<_>>>()?;
        self.embed_ids(&ids)
    }

    /// Embeddings of already tokenized prompts (each with its special tokens).
    pub fn embed_ids(&self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let (input, lengths) = pad_batch(ids, self.tokenizer.pad_id(), &self.device)?;
        let hidden = self.model.forward(&input, Some(&lengths))?;
        let pooled = match self.pooling {
            Pooling::Mean => mean_pool(&hidden, &lengths)?,
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
        };
        Ok(l2_normalize(&pooled)?.to_dtype(DType::F32)?.to_vec2()?)
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &PromptTokenizer {
        &self.tokenizer
    }

    /// The transformer itself.
    pub fn model(&self) -> &BertModel {
        &self.model
    }

    /// The embedding dimension.
    pub fn dim(&self) -> usize {
        self.hidden_size
    }

    /// The device it runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }
}

/// A static encoder: a token-embedding table; a prompt's embedding is the mean of its word pieces'
/// rows (frequency weights are baked into the rows), L2-normalised. Routes in microseconds.
#[derive(Debug, Clone)]
pub struct StaticEncoder {
    table: Vec<f32>,
    dim: usize,
    tokenizer: PromptTokenizer,
}

impl StaticEncoder {
    /// Loads the table (`[vocab, dim]`, tensor `embeddings`) and the tokenizer.
    pub fn load(
        table_path: &Path,
        tokenizer_path: &Path,
        max_tokens: usize,
        truncation: Truncation,
        dim: usize,
    ) -> Result<Self> {
        let tensors = candle_core::safetensors::load(table_path, &Device::Cpu)
            .map_err(|e| CoreError::bundle(table_path, e.to_string()))?;
        let table = tensors.get(STATIC_TABLE_TENSOR).ok_or_else(|| {
            CoreError::bundle(
                table_path,
                format!("no tensor named {STATIC_TABLE_TENSOR:?}"),
            )
        })?;
        let tokenizer = PromptTokenizer::load(tokenizer_path, max_tokens, truncation, false)?;
        let (rows, cols) = table.dims2().map_err(|_| {
            CoreError::bundle(
                table_path,
                format!(
                    "{STATIC_TABLE_TENSOR:?} must be 2-D, got {:?}",
                    table.dims()
                ),
            )
        })?;
        if cols != dim {
            return Err(CoreError::bundle(
                table_path,
                format!("{STATIC_TABLE_TENSOR:?} has dimension {cols}, router.json says {dim}"),
            ));
        }
        if rows < tokenizer.vocab_size() {
            return Err(CoreError::bundle(
                table_path,
                format!(
                    "{STATIC_TABLE_TENSOR:?} has {rows} rows, the tokenizer has {} tokens",
                    tokenizer.vocab_size()
                ),
            ));
        }
        let table = table
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| CoreError::bundle(table_path, e.to_string()))?;
        Ok(Self {
            table,
            dim,
            tokenizer,
        })
    }

    /// Builds an encoder from a table held in memory (`rows × dim`, row-major).
    pub fn from_table(table: Vec<f32>, dim: usize, tokenizer: PromptTokenizer) -> Result<Self> {
        if dim == 0
            || !table.len().is_multiple_of(dim)
            || table.len() / dim < tokenizer.vocab_size()
        {
            return Err(CoreError::Invalid(format!(
                "a static table of {} values does not fit dimension {dim} and {} tokens",
                table.len(),
                tokenizer.vocab_size()
            )));
        }
        Ok(Self {
            table,
            dim,
            tokenizer: tokenizer.with_special_tokens(false),
        })
    }

    /// The embedding of one prompt. An empty prompt gives the zero vector.
    pub fn embed(&self, text: &str) -> Result<Vec<f32>> {
        let ids = self.tokenizer.encode(text)?;
        Ok(self.embed_ids(&ids))
    }

    /// The embedding of already tokenized word pieces.
    pub fn embed_ids(&self, ids: &[u32]) -> Vec<f32> {
        let mut sum = vec![0f32; self.dim];
        let mut count = 0usize;
        for &id in ids {
            // The tokenizer's vocabulary was checked against the table at load time.
            if let Some(row) = self
                .table
                .get(id as usize * self.dim..(id as usize + 1) * self.dim)
            {
                sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
                count += 1;
            }
        }
        if count > 0 {
            let norm = sum.iter().map(|v| v * v).sum::<f32>().sqrt();
            if norm > 0.0 {
                sum.iter_mut().for_each(|v| *v /= norm);
            }
        }
        sum
    }

    /// The table, `vocab × dim`, row-major.
    pub fn table(&self) -> &[f32] {
        &self.table
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &PromptTokenizer {
        &self.tokenizer
    }

    /// The embedding dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Writes the table as safetensors (tensor `embeddings`).
    pub fn save_table(&self, path: &Path) -> Result<()> {
        save_static_table(&self.table, self.dim, path)
    }
}

/// Writes a `rows × dim` table as the safetensors file of a static encoder.
pub fn save_static_table(table: &[f32], dim: usize, path: &Path) -> Result<()> {
    let rows = table.len() / dim.max(1);
    // Stored as f16: half the size on disk, and well inside the precision a mean of many rows
    // needs; loading widens it back to f32.
    let tensor = Tensor::from_slice(table, (rows, dim), &Device::Cpu)?.to_dtype(DType::F16)?;
    candle_core::safetensors::save(
        &std::collections::HashMap::from([(STATIC_TABLE_TENSOR, tensor)]),
        path,
    )
    .map_err(|e| CoreError::bundle(path, e.to_string()))
}

/// Either encoder tier.
#[derive(Debug, Clone)]
pub enum Encoder {
    /// Token-table encoder: microseconds per prompt.
    Static(StaticEncoder),
    /// Transformer encoder: milliseconds per prompt, better embeddings.
    Bert(BertEncoder),
}

impl Encoder {
    /// The embedding dimension.
    pub fn dim(&self) -> usize {
        match self {
            Encoder::Static(e) => e.dim(),
            Encoder::Bert(e) => e.dim(),
        }
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &PromptTokenizer {
        match self {
            Encoder::Static(e) => e.tokenizer(),
            Encoder::Bert(e) => e.tokenizer(),
        }
    }

    /// The embedding of one prompt.
    pub fn embed(&self, text: &str) -> Result<Vec<f32>> {
        match self {
            Encoder::Static(e) => e.embed(text),
            Encoder::Bert(e) => {
                let mut rows = e.embed_batch(&[text])?;
                rows.pop()
                    .ok_or_else(|| CoreError::Invalid("the encoder returned no row".into()))
            }
        }
    }

    /// The embeddings of a batch, in order.
    pub fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        match self {
            Encoder::Static(e) => texts.iter().map(|t| e.embed(t)).collect(),
            Encoder::Bert(e) => e.embed_batch(texts),
        }
    }

    /// The embeddings of many prompts (a dataset), in order. BERT batches are formed from prompts
    /// of similar length, so little is spent on padding; `progress` is called with the number of
    /// prompts done after each batch.
    pub fn embed_all(
        &self,
        texts: &[&str],
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<Vec<f32>>> {
        let bert = match self {
            Encoder::Static(_) => {
                let rows = self.embed_batch(texts)?;
                progress(texts.len());
                return Ok(rows);
            }
            Encoder::Bert(bert) => bert,
        };
        let ids = texts
            .iter()
            .map(|t| bert.tokenizer.encode(t))
            .collect::<Result<Vec<_>>>()?;
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| ids[i].len());
        let mut out = vec![Vec::new(); ids.len()];
        let mut start = 0;
        while start < order.len() {
            // Sorted ascending, so the last prompt of a batch is its longest.
            let mut end = start + 1;
            while end < order.len()
                && (end + 1 - start) * ids[order[end]].len() <= BATCH_TOKEN_BUDGET
            {
                end += 1;
            }
            let batch: Vec<Vec<u32>> = order[start..end].iter().map(|&i| ids[i].clone()).collect();
            for (&i, row) in order[start..end].iter().zip(bert.embed_ids(&batch)?) {
                out[i] = row;
            }
            progress(end - start);
            start = end;
        }
        Ok(out)
    }
}

/// Reads a safetensors file and builds a module from it; any failure names the file.
pub(crate) fn load_safetensors<T>(
    path: &Path,
    device: &Device,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<T>,
) -> Result<T> {
    if !path.is_file() {
        return Err(CoreError::bundle(path, "file not found"));
    }
    let tensors = candle_core::safetensors::load(path, device)
        .map_err(|e| CoreError::bundle(path, e.to_string()))?;
    build(VarBuilder::from_tensors(tensors, DType::F32, device))
        .map_err(|e| CoreError::bundle(path, e.to_string()))
}
