//! Test fixtures built from nothing: a tiny random BERT with its WordPiece tokenizer, and router
//! bundles on top of it. No download, no network; everything lives in a tempdir.
//!
//! Each test binary uses a different part of this module.
#![allow(dead_code)]
// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use router_core::candle_core::{DType, Device, Tensor};
use router_core::candle_nn::{VarBuilder, VarMap};
use router_core::config::files;
use router_core::{
    BertEncoder, EncoderConfig, Head, HeadConfig, Pooling, RouterConfig, StaticEncoder, Truncation,
    FORMAT_VERSION,
};
use tempfile::TempDir;

/// The tiny BERT's hidden size, i.e. the dimension of its embeddings.
pub const TINY_HIDDEN: usize = 8;
/// The tiny BERT's learned positions: prompts are truncated to this many tokens.
pub const TINY_POSITIONS: usize = 32;
/// The underlying models of the test bundles.
pub const MODELS: [&str; 2] = ["small-model", "large-model"];

/// The tiny WordPiece vocabulary; a token's id is its index. Special tokens first, as in BERT.
pub const TINY_VOCAB: [&str; 30] = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", //
    "the", "a", "write", "python", "function", "that", "reverse", "list", "hello", "world", "code",
    "math", "prove", "sum", "of", "is", "what", "how", ",", ".", "?", //
    "##s", "##ing", "##ed", "##er",
];

/// A seeded linear congruential generator (Knuth's MMIX constants): reproducible weights
/// without a `rand` dependency.
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Uniform in [-1, 1).
    pub fn next_f32(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // The top 24 bits: exactly representable in an f32.
        (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// A tensor of values uniform in [center - scale, center + scale).
    fn tensor(&mut self, shape: &[usize], center: f32, scale: f32) -> Tensor {
        let values: Vec<f32> = (0..shape.iter().product())
            .map(|_| center + scale * self.next_f32())
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).expect("tensor of the given shape")
    }
}

/// Named random tensors, filled in the order they are asked for (so a seed fixes them all).
struct RandomWeights {
    rng: Lcg,
    tensors: HashMap<String, Tensor>,
}

impl RandomWeights {
    fn put(&mut self, name: &str, shape: &[usize], center: f32, scale: f32) {
        self.tensors
            .insert(name.to_string(), self.rng.tensor(shape, center, scale));
    }

    /// A Hugging Face `nn.Linear`: weight `[out, in]`.
    fn linear(&mut self, prefix: &str, inputs: usize, outputs: usize) {
        self.put(&format!("{prefix}.weight"), &[outputs, inputs], 0.0, 0.5);
        self.put(&format!("{prefix}.bias"), &[outputs], 0.0, 0.1);
    }

    /// Gains near 1 and small biases keep the activations in a sane range.
    fn layer_norm(&mut self, prefix: &str, width: usize) {
        self.put(&format!("{prefix}.weight"), &[width], 1.0, 0.1);
        self.put(&format!("{prefix}.bias"), &[width], 0.0, 0.1);
    }
}

/// Writes a BERT WordPiece `tokenizer.json` over [`TINY_VOCAB`], laid out as the one of
/// all-MiniLM-L6-v2 (lowercasing normaliser, `[CLS] … [SEP]` template), with no padding or truncation.
pub fn write_tiny_tokenizer(path: &Path) {
    let vocab: serde_json::Map<String, serde_json::Value> = TINY_VOCAB
        .iter()
        .enumerate()
        .map(|(id, token)| (token.to_string(), id.into()))
        .collect();
    let added_tokens: Vec<serde_json::Value> = TINY_VOCAB[..5]
        .iter()
        .enumerate()
        .map(|(id, token)| {
            serde_json::json!({
                "id": id, "content": token, "special": true, "single_word": false,
                "lstrip": false, "rstrip": false, "normalized": false
            })
        })
        .collect();
    let special =
        |token: &str| serde_json::json!({ "SpecialToken": { "id": token, "type_id": 0 } });
    let sequence = |id: &str, type_id: u32| serde_json::json!({ "Sequence": { "id": id, "type_id": type_id } });
    let tokenizer = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": {
            "type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
            "strip_accents": null, "lowercase": true
        },
        "pre_tokenizer": { "type": "BertPreTokenizer" },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [special("[CLS]"), sequence("A", 0), special("[SEP]")],
            "pair": [special("[CLS]"), sequence("A", 0), special("[SEP]"), sequence("B", 1),
                     { "SpecialToken": { "id": "[SEP]", "type_id": 1 } }],
            "special_tokens": {
                "[CLS]": { "id": "[CLS]", "ids": [2], "tokens": ["[CLS]"] },
                "[SEP]": { "id": "[SEP]", "ids": [3], "tokens": ["[SEP]"] }
            }
        },
        "decoder": { "type": "WordPiece", "prefix": "##", "cleanup": true },
        "model": {
            "type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
            "max_input_chars_per_word": 100, "vocab": vocab
        }
    });
    let text = serde_json::to_string_pretty(&tokenizer).expect("serialise tokenizer.json");
    std::fs::write(path, text).expect("write tokenizer.json");
}

/// Writes `config.json`, `model.safetensors` (random weights under the Hugging Face `BertModel`
/// names) and `tokenizer.json` of a 2-layer, 2-head BERT of width [`TINY_HIDDEN`] into `dir`.
pub fn write_tiny_bert(dir: &Path, seed: u64) {
    let (hidden, intermediate, layers) = (TINY_HIDDEN, 16, 2);
    let config = serde_json::json!({
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": TINY_VOCAB.len(),
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "intermediate_size": intermediate,
        "hidden_act": "gelu",
        "max_position_embeddings": TINY_POSITIONS,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "position_embedding_type": "absolute"
    });
    std::fs::write(dir.join("config.json"), config.to_string()).expect("write config.json");

    let mut weights = RandomWeights {
        rng: Lcg::new(seed),
        tensors: HashMap::new(),
    };
    weights.put(
        "embeddings.word_embeddings.weight",
        &[TINY_VOCAB.len(), hidden],
        0.0,
        1.0,
    );
    weights.put(
        "embeddings.position_embeddings.weight",
        &[TINY_POSITIONS, hidden],
        0.0,
        0.3,
    );
    weights.put(
        "embeddings.token_type_embeddings.weight",
        &[2, hidden],
        0.0,
        0.3,
    );
    weights.layer_norm("embeddings.LayerNorm", hidden);
    for i in 0..layers {
        let layer = format!("encoder.layer.{i}");
        for part in ["query", "key", "value"] {
            weights.linear(&format!("{layer}.attention.self.{part}"), hidden, hidden);
        }
        weights.linear(&format!("{layer}.attention.output.dense"), hidden, hidden);
        weights.layer_norm(&format!("{layer}.attention.output.LayerNorm"), hidden);
        weights.linear(&format!("{layer}.intermediate.dense"), hidden, intermediate);
        weights.linear(&format!("{layer}.output.dense"), intermediate, hidden);
        weights.layer_norm(&format!("{layer}.output.LayerNorm"), hidden);
    }
    router_core::candle_core::safetensors::save(&weights.tensors, dir.join("model.safetensors"))
        .expect("write model.safetensors");
    write_tiny_tokenizer(&dir.join(files::TOKENIZER));
}

/// A tiny random BERT in its own tempdir.
pub struct TinyBert {
    dir: TempDir,
}

impl TinyBert {
    pub fn new(seed: u64) -> Self {
        let dir = TempDir::new().expect("tempdir");
        write_tiny_bert(dir.path(), seed);
        Self { dir }
    }

    /// The directory with `config.json`, `model.safetensors` and `tokenizer.json`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn tokenizer_path(&self) -> PathBuf {
        self.dir().join(files::TOKENIZER)
    }

    /// The encoder, on the CPU, mean-pooled.
    pub fn encoder(&self) -> BertEncoder {
        BertEncoder::load(
            self.dir(),
            &self.tokenizer_path(),
            TINY_POSITIONS,
            Truncation::Right,
            Pooling::Mean,
            &Device::Cpu,
        )
        .expect("load the tiny BERT")
    }

    /// A 4-dimensional static encoder distilled from it.
    pub fn distilled(&self) -> StaticEncoder {
        router_core::distill::distill_static(&self.encoder(), 4, &mut |_, _| {})
            .expect("distil the tiny BERT")
    }
}

/// A valid, untrained `router.json` for `models` over `encoder`, with one hidden layer in the head.
pub fn manifest(encoder: EncoderConfig, models: &[&str]) -> RouterConfig {
    RouterConfig {
        format_version: FORMAT_VERSION,
        name: "tiny-test".into(),
        version: "2026-01-01".into(),
        models: models.iter().map(|m| m.to_string()).collect(),
        encoder,
        pooling: Pooling::Mean,
        max_seq_length: TINY_POSITIONS,
        truncation: Truncation::Right,
        head: HeadConfig { hidden: vec![6] },
        output_length: None,
        task_gate: None,
        training: None,
    }
}

/// Writes randomly initialised head weights for `input_dim` inputs and `outputs` outputs, created
/// the way training creates them (a `VarMap`).
pub fn write_random_head(path: &Path, config: &HeadConfig, input_dim: usize, outputs: usize) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    Head::load(vb, config, input_dim, outputs).expect("create a head");
    varmap.save(path).expect("write head.safetensors");
}

/// Writes the files every bundle has: `router.json`, `tokenizer.json` (copied from `tokenizer`),
/// `head.safetensors` (random, matching `config`) and `README.md`.
pub fn write_bundle(dir: &Path, config: &RouterConfig, tokenizer: &Path) {
    config.save(dir).expect("write router.json");
    std::fs::copy(tokenizer, dir.join(files::TOKENIZER)).expect("copy tokenizer.json");
    write_random_head(
        &dir.join(files::HEAD),
        &config.head,
        config.encoder.dim(),
        config.models.len(),
    );
    std::fs::write(
        dir.join(files::MODEL_CARD),
        "# tiny-test\n\nRandom weights, for tests only.\n",
    )
    .expect("write README.md");
}

/// A complete static bundle for [`MODELS`] over a table distilled from `bert`.
pub fn static_bundle(bert: &TinyBert) -> TempDir {
    let dir = TempDir::new().expect("tempdir");
    let encoder = bert.distilled();
    let config = manifest(
        EncoderConfig::Static {
            dim: encoder.dim(),
            derived_from: Some("tiny-bert".into()),
        },
        &MODELS,
    );
    write_bundle(dir.path(), &config, &bert.tokenizer_path());
    encoder
        .save_table(&dir.path().join(files::STATIC_ENCODER))
        .expect("write encoder.safetensors");
    dir
}

/// A complete BERT bundle for [`MODELS`] whose encoder is `bert`, referenced by its path.
pub fn bert_bundle(bert: &TinyBert) -> TempDir {
    let dir = TempDir::new().expect("tempdir");
    let encoder = EncoderConfig::Bert {
        repo: None,
        revision: None,
        path: Some(bert.dir().to_path_buf()),
        dim: TINY_HIDDEN,
    };
    write_bundle(
        dir.path(),
        &manifest(encoder, &MODELS),
        &bert.tokenizer_path(),
    );
    dir
}

/// Rewrites `router.json` of `dir` through a JSON edit, bypassing `RouterConfig::save`'s checks
/// (to build bundles that are broken on purpose).
pub fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join(files::MANIFEST);
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read router.json"))
            .expect("parse router.json");
    edit(&mut json);
    std::fs::write(&path, json.to_string()).expect("write router.json");
}

/// The largest absolute difference between two equally long vectors.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "vectors of different lengths");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}
