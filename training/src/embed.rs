//! Encoders for training and evaluation, and the embedding cache.
//!
//! Encoding a dataset with the BERT tier takes minutes on CPU, and the static tier's table takes a
//! pass over the whole vocabulary to derive; both are cached in a directory (see [`cache_dir`]) so
//! that a second `train` or `eval` run re-encodes nothing. Cache entries are keyed by a hash of
//! everything that changes the result: the encoder's weights or identity, its tokenizer settings
//! and the prompts themselves.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use router_core::candle_core::Device;
use router_core::{BertEncoder, Encoder, Pooling, RouterConfig, StaticEncoder, Truncation};

use crate::error::{Result, TrainingError};

const MAGIC: &[u8; 8] = b"MREMB001";

/// Where a BERT encoder comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BertSource {
    /// A Hugging Face repo at a revision, through the hub cache.
    Hub {
        /// Repo id.
        repo: String,
        /// Revision.
        revision: String,
    },
    /// A local directory with `config.json`, `model.safetensors` and `tokenizer.json`.
    Dir(PathBuf),
}

impl BertSource {
    /// The default teacher and BERT tier: all-MiniLM-L6-v2.
    pub fn minilm() -> Self {
        BertSource::Hub {
            repo: "sentence-transformers/all-MiniLM-L6-v2".into(),
            revision: "main".into(),
        }
    }

    /// Parses `HUB_ID[@REVISION]` or a directory path (anything that exists on disk).
    pub fn parse(text: &str) -> Self {
        if Path::new(text).is_dir() {
            return BertSource::Dir(PathBuf::from(text));
        }
        match text.split_once('@') {
            Some((repo, revision)) => BertSource::Hub {
                repo: repo.into(),
                revision: revision.into(),
            },
            None => BertSource::Hub {
                repo: text.into(),
                revision: router_core::DEFAULT_REVISION.into(),
            },
        }
    }

    /// The directory holding the model files.
    pub fn model_dir(&self) -> Result<PathBuf> {
        match self {
            BertSource::Hub { repo, revision } => {
                Ok(router_core::bert_dir_from_hub(repo, revision)?)
            }
            BertSource::Dir(dir) => Ok(dir.clone()),
        }
    }

    /// Loads the encoder.
    pub fn load(&self, max_seq_length: usize, truncation: Truncation) -> Result<BertEncoder> {
        let dir = self.model_dir()?;
        Ok(BertEncoder::load(
            &dir,
            &dir.join("tokenizer.json"),
            max_seq_length,
            truncation,
            Pooling::Mean,
            &Device::Cpu,
        )?)
    }
}

/// The cache directory: `$MODEL_ROUTER_CACHE`, else `$XDG_CACHE_HOME/model-router`, else
/// `~/.cache/model-router`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MODEL_ROUTER_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("model-router")
}

/// A stable 64-bit FNV-1a hash (std's hasher may change between Rust releases; cache keys must not).
#[derive(Debug, Clone, Copy)]
pub struct StableHasher(u64);

impl Default for StableHasher {
    fn default() -> Self {
        StableHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl StableHasher {
    /// Adds bytes, length-prefixed so that ("ab", "c") and ("a", "bc") differ.
    pub fn add(&mut self, bytes: &[u8]) -> &mut Self {
        for byte in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    /// The hash so far.
    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// Everything about a bundle's encoder that changes embeddings, hashed.
pub fn encoder_fingerprint(config: &RouterConfig, encoder: &Encoder) -> u64 {
    let mut hasher = StableHasher::default();
    let settings = serde_json::json!({
        "encoder": config.encoder, "max_seq_length": config.max_seq_length,
        "truncation": config.truncation, "pooling": config.pooling,
    });
    hasher.add(settings.to_string().as_bytes());
    if let Encoder::Bert(bert) = encoder {
        hasher.add(bert.tokenizer().path().to_string_lossy().as_bytes());
    }
    hasher.finish()
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress_bar(len: usize, message: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) = ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} ({eta})") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message.to_string());
    bar
}

/// Embeddings of `prompts`. BERT embeddings come from the cache when an entry for this encoder and
/// these prompts exists, else are computed (with a progress bar) and stored; static embeddings
/// cost microseconds and are always computed.
pub fn embed_cached(
    encoder: &Encoder,
    fingerprint: u64,
    prompts: &[&str],
    cache: &Path,
) -> Result<Vec<Vec<f32>>> {
    if let Encoder::Static(_) = encoder {
        return Ok(encoder.embed_batch(prompts)?);
    }
    let mut hasher = StableHasher::default();
    hasher.add(&fingerprint.to_le_bytes());
    for prompt in prompts {
        hasher.add(prompt.as_bytes());
    }
    let path = cache.join(format!("embeddings-{:016x}.bin", hasher.finish()));
    if let Some(rows) = read_rows(&path, prompts.len(), encoder.dim()) {
        return Ok(rows);
    }
    let bar = progress_bar(prompts.len(), "embedding");
    let rows = encoder.embed_all(prompts, &mut |done| bar.inc(done as u64))?;
    bar.finish_and_clear();
    write_rows(&path, &rows, encoder.dim())?;
    Ok(rows)
}

/// The static encoder derived from `teacher` at `dim` (cached: deriving it encodes the whole
/// vocabulary).
pub fn static_from_teacher(
    teacher: &BertSource,
    dim: usize,
    max_tokens: usize,
    truncation: Truncation,
    cache: &Path,
) -> Result<StaticEncoder> {
    let model_dir = teacher.model_dir()?;
    let mut hasher = StableHasher::default();
    hasher
        .add(b"static-v1")
        .add(model_dir.to_string_lossy().as_bytes())
        .add(&(dim as u64).to_le_bytes());
    let path = cache.join(format!("static-{:016x}.safetensors", hasher.finish()));
    let tokenizer = model_dir.join("tokenizer.json");
    if path.is_file() {
        if let Ok(encoder) = StaticEncoder::load(&path, &tokenizer, max_tokens, truncation, dim) {
            return Ok(encoder);
        }
    }
    let bert = teacher.load(16, Truncation::Right)?;
    let bar = progress_bar(bert.tokenizer().vocab_size(), "distilling");
    let derived = router_core::distill::distill_static(&bert, dim, &mut |done, _| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    std::fs::create_dir_all(cache).map_err(|e| TrainingError::Io {
        path: cache.to_path_buf(),
        source: e,
    })?;
    let partial = partial_path(&path);
    derived.save_table(&partial)?;
    std::fs::rename(&partial, &path).map_err(|e| TrainingError::Io {
        path: path.clone(),
        source: e,
    })?;
    Ok(StaticEncoder::load(
        &path, &tokenizer, max_tokens, truncation, dim,
    )?)
}

fn read_rows(path: &Path, n: usize, dim: usize) -> Option<Vec<Vec<f32>>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .read_to_end(&mut bytes)
        .ok()?;
    let header = 8 + 16;
    if bytes.len() != header + n * dim * 4 || &bytes[..8] != MAGIC {
        return None;
    }
    let stored_n = u64::from_le_bytes(bytes[8..16].try_into().ok()?);
    let stored_dim = u64::from_le_bytes(bytes[16..24].try_into().ok()?);
    if stored_n != n as u64 || stored_dim != dim as u64 {
        return None;
    }
    let values: Vec<f32> = bytes[header..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Some(values.chunks(dim.max(1)).map(<[f32]>::to_vec).collect())
}

fn write_rows(path: &Path, rows: &[Vec<f32>], dim: usize) -> Result<()> {
    let io_error = |source| TrainingError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_error)?;
    }
    let mut bytes = Vec::with_capacity(24 + rows.len() * dim * 4);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(rows.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&(dim as u64).to_le_bytes());
    for value in rows.iter().flatten() {
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    // Write then rename, so a killed run never leaves a truncated entry that looks valid.
    let partial = partial_path(path);
    std::fs::File::create(&partial)
        .and_then(|mut f| f.write_all(&bytes))
        .map_err(io_error)?;
    std::fs::rename(&partial, path).map_err(io_error)
}

/// A temporary name beside `path`, unique to this process and call: two runs (or threads) that
/// fill the same cache entry at once must not write into, or rename away, each other's file.
fn partial_path(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}-{n}.partial", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_names_are_unique_and_beside_the_entry() {
        let path = Path::new("/cache/embeddings-0123.bin");
        let (a, b) = (partial_path(path), partial_path(path));
        assert_ne!(
            a, b,
            "two writers of one entry never share a temporary file"
        );
        assert_eq!(
            a.parent(),
            path.parent(),
            "same directory, so the rename is atomic"
        );
        assert!(
            a.to_string_lossy()
                .starts_with("/cache/embeddings-0123.bin."),
            "{}",
            a.display()
        );
        assert!(a.to_string_lossy().ends_with(".partial"));
    }

    #[test]
    fn rows_written_concurrently_to_one_entry_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("embeddings-test.bin");
        let rows: Vec<Vec<f32>> = (0..200).map(|i| vec![i as f32; 64]).collect();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..20 {
                        write_rows(&path, &rows, 64).expect("a concurrent write succeeds");
                    }
                });
            }
        });
        assert_eq!(read_rows(&path, rows.len(), 64), Some(rows));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            leftovers.len(),
            1,
            "no temporary file is left: {leftovers:?}"
        );
    }
}
