//! What `model-router bench` and the criterion benches (`benches/routing.rs`) measure: routing tiers
//! with their policy, prompts of an exact token count, the stock candle-transformers BERT forward on
//! the same weights, and the BERT tier's matmuls alone.
//!
//! The criterion benches include this file by path (`#[path]`), so that both measure exactly the
//! same work without making benchmark helpers part of the library's API. It must therefore use
//! only the library facade and the root package's dependencies, never the binary's own modules.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_transformers::models::bert as stock;
use model_router::load_catalog;
use model_router::router_core::bert::BertConfig;
use model_router::router_core::candle_core::{DType, Device, Tensor, D};
use model_router::router_core::candle_nn::{VarBuilder, VarMap};
use model_router::router_core::{
    bert_dir_from_hub, BertEncoder, Encoder, EncoderConfig, Head, PackedLinear, PromptTokenizer,
    Router, RouterConfig, DEFAULT_REVISION,
};
use model_router::router_policy::{
    estimate_tokens, Catalog, Decision, Mode, ModelSpec, Policy, PolicyDefaults, RouteRequest,
};

/// The BERT tier's encoder when the benchmarked bundle is a static one.
pub const MINILM_REPO: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// Where the policy's catalog came from: a bundle without one is routed over a catalog that prices
/// every model alike, so the policy's work is still measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatalogSource {
    /// The bundle's `catalog.toml`.
    Bundle,
    /// One price and window for every model.
    Uniform,
}

impl CatalogSource {
    /// A short name for reports.
    pub fn as_str(self) -> &'static str {
        match self {
            CatalogSource::Bundle => "bundle",
            CatalogSource::Uniform => "uniform",
        }
    }
}

/// A router with its policy: what one routed request costs (tokenizer, encoder, head, policy).
pub struct RoutingTier {
    /// The loaded bundle.
    pub router: Router,
    /// The Balanced-mode policy over the bundle's models.
    pub policy: Policy,
    /// Where the catalog came from.
    pub catalog: CatalogSource,
}

impl RoutingTier {
    /// Wraps `router` with a Balanced policy over `catalog`, or over the bundle's own catalog, or
    /// else over a uniform one.
    pub fn new(router: Router, catalog: Option<Catalog>) -> Result<Self> {
        let (catalog, source) = match catalog {
            Some(catalog) => (catalog, CatalogSource::Bundle),
            None => match load_catalog(&router, None) {
                Ok(catalog) => (catalog, CatalogSource::Bundle),
                Err(_) => (uniform_catalog(router.models()), CatalogSource::Uniform),
            },
        };
        let policy = Policy::new(
            catalog,
            router.models().to_vec(),
            PolicyDefaults::new(Mode::Balanced),
        )?;
        Ok(Self {
            router,
            policy,
            catalog: source,
        })
    }

    /// Routes one prompt end to end.
    pub fn route(&self, prompt: &str) -> Result<Decision> {
        let scores = self.router.score(prompt)?;
        Ok(self
            .policy
            .decide(&scores, &RouteRequest::new(estimate_tokens(prompt)))?)
    }

    /// Routes a batch: one encoder and head pass, then one policy decision per prompt.
    pub fn route_batch(&self, prompts: &[&str]) -> Result<Vec<Decision>> {
        let rows = self.router.score_batch(prompts)?;
        prompts
            .iter()
            .zip(&rows)
            .map(|(prompt, scores)| {
                Ok(self
                    .policy
                    .decide(scores, &RouteRequest::new(estimate_tokens(prompt)))?)
            })
            .collect()
    }

    /// Routes a prompt from an embedding computed elsewhere (the stock BERT forward), through the
    /// same head and policy.
    pub fn route_embedding(&self, prompt: &str, embedding: Vec<f32>) -> Result<Decision> {
        let scores = self
            .router
            .score_embeddings(&[embedding])?
            .pop()
            .ok_or_else(|| anyhow!("the head returned no row"))?;
        Ok(self
            .policy
            .decide(&scores, &RouteRequest::new(estimate_tokens(prompt)))?)
    }

    /// The tokenizer the encoder uses (with special tokens for BERT, without for static).
    pub fn tokenizer(&self) -> &PromptTokenizer {
        self.router.encoder().tokenizer()
    }

    /// Whether this is the BERT tier.
    pub fn is_bert(&self) -> bool {
        matches!(self.router.encoder(), Encoder::Bert(_))
    }
}

fn uniform_catalog(models: &[String]) -> Catalog {
    Catalog::new(
        models
            .iter()
            .map(|name| ModelSpec::new(name.clone(), 1.0, 1.0, 1_000_000))
            .collect(),
    )
}

/// The directory with `config.json` and `model.safetensors` of a BERT-tier bundle.
pub fn bert_model_dir(router: &Router) -> Result<PathBuf> {
    match &router.config().encoder {
        EncoderConfig::Bert {
            path: Some(path), ..
        } => Ok(router.dir().join(path)),
        EncoderConfig::Bert {
            repo: Some(repo),
            revision,
            ..
        } => Ok(bert_dir_from_hub(
            repo,
            revision.as_deref().unwrap_or(DEFAULT_REVISION),
        )?),
        EncoderConfig::Bert { .. } => {
            bail!("the bundle's bert encoder names neither a repo nor a path")
        }
        EncoderConfig::Static { .. } => bail!("the bundle has a static encoder"),
    }
}

/// A BERT-tier router for benchmarking next to `like` (a static bundle): all-MiniLM-L6-v2 from the
/// hub cache, `like`'s models, head shape, sequence length and pooling, and a head with untrained
/// (random) weights, which cost exactly what trained ones do.
pub fn minilm_tier_like(like: &Router) -> Result<Router> {
    let model_dir = bert_dir_from_hub(MINILM_REPO, DEFAULT_REVISION).with_context(|| {
        format!(
            "the BERT tier needs {MINILM_REPO} in the hub cache (scripts/fetch-minilm.sh fills it)"
        )
    })?;
    let like_config = like.config();
    let device = Device::Cpu;
    let encoder = BertEncoder::load(
        &model_dir,
        &model_dir.join("tokenizer.json"),
        like_config.max_seq_length,
        like_config.truncation,
        like_config.pooling,
        &device,
    )?;
    let config = RouterConfig {
        name: format!("{}-bench-bert", like_config.name),
        encoder: EncoderConfig::Bert {
            repo: Some(MINILM_REPO.into()),
            revision: Some(DEFAULT_REVISION.into()),
            path: None,
            dim: encoder.dim(),
        },
        training: None,
        ..like_config.clone()
    };
    let variables = VarMap::new();
    let head = Head::load(
        VarBuilder::from_varmap(&variables, DType::F32, &device),
        &config.head,
        encoder.dim(),
        config.models.len(),
    )?;
    Ok(Router::from_parts(
        config,
        Encoder::Bert(encoder),
        head,
        device,
    )?)
}

/// A prompt that `tokenizer` turns into exactly `tokens` tokens (special tokens included when the
/// tokenizer adds them), built from common one-piece words and checked by tokenizing it.
pub fn prompt_of_tokens(tokenizer: &PromptTokenizer, tokens: usize) -> Result<String> {
    const WORDS: [&str; 16] = [
        "write", "a", "short", "function", "that", "sorts", "the", "list", "and", "explain", "why",
        "it", "is", "fast", "for", "users",
    ];
    let count = |text: &str| -> Result<usize> { Ok(tokenizer.encode(text)?.len()) };
    let mut prompt = String::new();
    let mut current = count(&prompt)?;
    let mut next_word = 0usize;
    // Every word is one word piece in BERT's uncased vocabulary, so each step adds one token; the
    // check guards against a tokenizer where that does not hold.
    while current < tokens {
        let word = WORDS[next_word % WORDS.len()];
        next_word += 1;
        let candidate = if prompt.is_empty() {
            word.to_string()
        } else {
            format!("{prompt} {word}")
        };
        let candidate_count = count(&candidate)?;
        if candidate_count <= current {
            bail!(
                "adding {word:?} did not add a token: the tokenizer truncates at {current} tokens"
            );
        }
        if candidate_count > tokens {
            if next_word > WORDS.len() * 4 {
                bail!("cannot build a prompt of exactly {tokens} tokens from one-piece words");
            }
            continue;
        }
        prompt = candidate;
        current = candidate_count;
    }
    if current != tokens {
        bail!("the shortest prompt already has {current} tokens, more than {tokens}");
    }
    Ok(prompt)
}

/// Floating-point operations (multiply and add counted apart) of one BERT forward over `tokens`
/// tokens: the linear layers and the attention products. Layer norms, softmax and GELU are a few
/// operations per value and left out, as is customary.
pub fn bert_forward_flops(config: &BertConfig, tokens: usize) -> f64 {
    let (n, hidden, inner) = (
        tokens as f64,
        config.hidden_size as f64,
        config.intermediate_size as f64,
    );
    // Q, K, V and the attention output are hidden x hidden each; the feed-forward is two
    // hidden x inner layers.
    let linear = 2.0 * n * (4.0 * hidden * hidden + 2.0 * hidden * inner);
    // Q·Kᵀ and probabilities·V over all heads: n x n x hidden multiply-adds each.
    let attention = 2.0 * 2.0 * n * n * hidden;
    config.num_hidden_layers as f64 * (linear + attention)
}

/// Reads a BERT `config.json`.
pub fn read_bert_config(model_dir: &Path) -> Result<BertConfig> {
    let path = model_dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    serde_json::from_str(&text).with_context(|| path.display().to_string())
}

/// The BERT tier's matrix multiplies alone, with the shapes and layouts of its forward pass
/// (`router_core::bert`): per layer the fused QKV (hidden → 3·hidden), the attention output
/// (hidden → hidden) and the feed-forward (hidden → inner → hidden) as the tier runs them on the CPU
/// ([`PackedLinear`]), and per head `Q·Kᵀ` and `P·V` through candle. Each layer has its own
/// weights, so that they stream from memory as the real ones do. [`MatmulWorkload::run`] is the
/// floor the whole forward is compared with; [`MatmulWorkload::run_general`] does the same
/// products with candle's general matmul (weights pre-transposed), the rate of a plain GEMM.
pub struct MatmulWorkload {
    packed: Vec<[PackedLinear; 4]>,
    transposed: Vec<[Tensor; 4]>,
    activations: Tensor,
    inner_activations: Tensor,
    queries: Tensor,
    keys: Tensor,
    probabilities: Tensor,
    values: Tensor,
}

impl MatmulWorkload {
    /// Random operands for one prompt of `tokens` tokens.
    pub fn new(config: &BertConfig, tokens: usize) -> Result<Self> {
        let device = Device::Cpu;
        let (hidden, inner, heads) = (
            config.hidden_size,
            config.intermediate_size,
            config.num_attention_heads,
        );
        let head_dim = hidden / heads.max(1);
        let random = |shape: &[usize]| Tensor::randn(0f32, 0.05, shape, &device);
        let shapes = [
            (hidden, 3 * hidden),
            (hidden, hidden),
            (hidden, inner),
            (inner, hidden),
        ];
        let mut packed = Vec::with_capacity(config.num_hidden_layers);
        let mut transposed = Vec::with_capacity(config.num_hidden_layers);
        for _ in 0..config.num_hidden_layers {
            // Weights as a Linear stores them, `[out, in]`.
            let weights = shapes.map(|(inputs, outputs)| random(&[outputs, inputs]));
            let [a, b, c, d] = weights;
            let weights = [a?, b?, c?, d?];
            let pack = |w: &Tensor| -> Result<PackedLinear> {
                let (outputs, inputs) = w.dims2()?;
                PackedLinear::new(
                    &w.flatten_all()?.to_vec1::<f32>()?,
                    &vec![0.0; outputs],
                    inputs,
                    outputs,
                )
                .map_err(|e| anyhow!(e))
            };
            packed.push([
                pack(&weights[0])?,
                pack(&weights[1])?,
                pack(&weights[2])?,
                pack(&weights[3])?,
            ]);
            let transpose = |w: &Tensor| -> Result<Tensor> { Ok(w.t()?.contiguous()?) };
            transposed.push([
                transpose(&weights[0])?,
                transpose(&weights[1])?,
                transpose(&weights[2])?,
                transpose(&weights[3])?,
            ]);
        }
        Ok(Self {
            packed,
            transposed,
            activations: random(&[tokens, hidden])?,
            inner_activations: random(&[tokens, inner])?,
            queries: random(&[1, heads, tokens, head_dim])?,
            keys: random(&[1, heads, tokens, head_dim])?,
            probabilities: random(&[1, heads, tokens, tokens])?,
            values: random(&[1, heads, tokens, head_dim])?,
        })
    }

    /// Runs every matmul of one forward pass once, as the BERT tier runs them.
    pub fn run(&self) -> Result<()> {
        for [qkv, attention_out, intermediate, output] in &self.packed {
            self.activations.apply_op1_no_bwd(qkv)?;
            self.attention()?;
            self.activations.apply_op1_no_bwd(attention_out)?;
            self.activations.apply_op1_no_bwd(intermediate)?;
            self.inner_activations.apply_op1_no_bwd(output)?;
        }
        Ok(())
    }

    /// The same products through candle's general matmul.
    pub fn run_general(&self) -> Result<()> {
        for [qkv, attention_out, intermediate, output] in &self.transposed {
            self.activations.matmul(qkv)?;
            self.attention()?;
            self.activations.matmul(attention_out)?;
            self.activations.matmul(intermediate)?;
            self.inner_activations.matmul(output)?;
        }
        Ok(())
    }

    fn attention(&self) -> Result<()> {
        // Kᵀ as a strided view, as the forward pass uses it.
        self.queries.matmul(&self.keys.t()?)?;
        self.probabilities.matmul(&self.values)?;
        Ok(())
    }
}

/// The stock candle-transformers `BertModel` on the same weights, pooled and normalised as the
/// BERT tier does: the baseline the tier's own forward is compared with.
pub struct StockBert {
    model: stock::BertModel,
    tokenizer: PromptTokenizer,
}

impl StockBert {
    /// Loads `config.json` and `model.safetensors` of `model_dir`; prompts are tokenized with
    /// `tokenizer` (the BERT tier's, so both see the same ids).
    pub fn load(model_dir: &Path, tokenizer: PromptTokenizer) -> Result<Self> {
        let config_path = model_dir.join("config.json");
        let text = std::fs::read_to_string(&config_path)
            .with_context(|| config_path.display().to_string())?;
        let config: stock::Config =
            serde_json::from_str(&text).with_context(|| config_path.display().to_string())?;
        let weights_path = model_dir.join("model.safetensors");
        let tensors = candle_core_load(&weights_path)?;
        let model = stock::BertModel::load(
            VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
            &config,
        )
        .with_context(|| {
            format!(
                "loading {} into candle-transformers' BertModel",
                weights_path.display()
            )
        })?;
        Ok(Self { model, tokenizer })
    }

    /// The embedding of one prompt: tokenize, stock forward, mean pooling, L2 normalisation.
    pub fn embed(&self, prompt: &str) -> Result<Vec<f32>> {
        let ids = self.tokenizer.encode(prompt)?;
        let length = ids.len();
        let input_ids = Tensor::from_vec(ids, (1, length), &Device::Cpu)?;
        let token_type_ids = input_ids.zeros_like()?;
        let hidden = self.model.forward(&input_ids, &token_type_ids, None)?;
        let pooled = hidden.mean(1)?;
        let norm = pooled
            .sqr()?
            .sum_keepdim(D::Minus1)?
            .sqrt()?
            .maximum(1e-12)?;
        let normalized = pooled.broadcast_div(&norm)?;
        normalized.squeeze(0)?.to_vec1::<f32>().map_err(Into::into)
    }
}

fn candle_core_load(path: &Path) -> Result<std::collections::HashMap<String, Tensor>> {
    model_router::router_core::candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| path.display().to_string())
}

/// Prompts for the workload pass when no dataset is given: the kinds of request a router sees,
/// from a one-line question to a long task description.
pub const BUILT_IN_PROMPTS: [&str; 12] = [
    "What is the capital of Australia?",
    "Hi!",
    "Write a Python function that reverses a linked list in place and explain its complexity.",
    "Translate to French: the meeting has been moved to Thursday afternoon.",
    "Prove that the square root of two is irrational.",
    "Summarise the plot of Hamlet in three sentences.",
    "Which of these is a mammal? (A) shark (B) dolphin (C) trout (D) octopus. Answer with one letter.",
    "Given a sorted array of integers and a target, return the indices of two numbers that add up to the \
     target. Write the solution in Rust, handle the case where no pair exists, and include unit tests \
     that cover empty input, duplicates and negative numbers.",
    "The trophy does not fit into the brown suitcase because it is too large. What is too large?",
    "Explain the difference between TCP and UDP to a new engineer, with one example where each is the \
     better choice, and mention what happens to packet loss in both.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\nMake this run in linear time.",
    "You are a careful assistant. Read the following customer email and draft a polite reply that \
     apologises for the delay, confirms the new delivery date of 14 March, offers a 10% discount code \
     on the next order, and asks whether the customer would like the invoice sent to a different \
     address. Keep it under 150 words and do not promise anything else.",
];
