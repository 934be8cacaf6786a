//! [`Router`]: a loaded bundle that scores prompts.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};

use crate::config::{files, EncoderConfig, RouterConfig};
use crate::cpu_head::CpuHead;
use crate::encoder::{load_safetensors, BertEncoder, Encoder, StaticEncoder};
use crate::error::{CoreError, Result};
use crate::gate::{GateChoice, TaskGate};
use crate::head::Head;
use crate::hub::hub_file;
use crate::length::LengthHead;

/// The default revision used when none is given.
pub const DEFAULT_REVISION: &str = "main";

/// A router bundle, loaded: prompt in, one predicted quality per underlying model out.
#[derive(Debug, Clone)]
pub struct Router {
    config: RouterConfig,
    encoder: Encoder,
    head: Head,
    /// The output-length head, when the bundle has one.
    length_head: Option<LengthHead>,
    /// The task gate, when the bundle has one: it blends the head's scores (see [`TaskGate`]).
    task_gate: Option<TaskGate>,
    /// The head as plain `f32` rows when running on the CPU (see [`CpuHead`]).
    cpu_head: Option<CpuHead>,
    /// The output-length head likewise: candle's matmul costs tens of µs per call at one prompt
    /// (it reads `/proc/cpuinfo` to size its thread pool each time), more than the whole static
    /// tier.
    cpu_length_head: Option<CpuHead>,
    device: Device,
    dir: PathBuf,
}

impl Router {
    /// Loads a bundle directory on the default device (CPU, or the GPU when built with `cuda` or
    /// `metal` and one is present).
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        Self::load_on(dir, &default_device()?)
    }

    /// Loads a bundle directory on `device`.
    pub fn load_on(dir: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        let config = RouterConfig::load(dir)?;
        let encoder = load_encoder(dir, &config, device)?;
        let head_path = dir.join(files::HEAD);
        let head = load_safetensors(&head_path, device, |vb| {
            Head::load(vb, &config.head, config.encoder.dim(), config.models.len())
        })?;
        let cpu_head = cpu_head_for(&head, device)
            .map_err(|e| CoreError::bundle(&head_path, e.to_string()))?;
        let length_head = match &config.output_length {
            Some(shape) => Some(load_safetensors(
                &dir.join(files::LENGTH_HEAD),
                device,
                |vb| LengthHead::load(vb, shape, config.encoder.dim(), config.models.len()),
            )?),
            None => None,
        };
        let task_gate = match &config.task_gate {
            Some(gate) => Some(TaskGate::load(
                &dir.join(files::TASK_GATE),
                gate,
                config.encoder.dim(),
                config.models.len(),
            )?),
            None => None,
        };
        let cpu_length_head = match &length_head {
            Some(length) => cpu_head_for(length.head(), device)
                .map_err(|e| CoreError::bundle(dir.join(files::LENGTH_HEAD), e.to_string()))?,
            None => None,
        };
        Ok(Self {
            config,
            encoder,
            head,
            length_head,
            task_gate,
            cpu_head,
            cpu_length_head,
            device: device.clone(),
            dir: dir.to_path_buf(),
        })
    }

    /// Loads a bundle published as a Hugging Face model repo, through the hub cache: with a filled
    /// cache this needs no network (see [`crate::hub::hub_file`]).
    pub fn from_hub(repo_id: &str, revision: Option<&str>) -> Result<Self> {
        let revision = revision.unwrap_or(DEFAULT_REVISION);
        let manifest = hub_file(repo_id, revision, files::MANIFEST)?;
        let config = RouterConfig::load(manifest.parent().unwrap_or(Path::new(".")))?;
        hub_file(repo_id, revision, files::TOKENIZER)?;
        hub_file(repo_id, revision, files::HEAD)?;
        if config.output_length.is_some() {
            hub_file(repo_id, revision, files::LENGTH_HEAD)?;
        }
        if config.task_gate.is_some() {
            hub_file(repo_id, revision, files::TASK_GATE)?;
        }
        if matches!(config.encoder, EncoderConfig::Static { .. }) {
            hub_file(repo_id, revision, files::STATIC_ENCODER)?;
        }
        // All files of one revision live in the same snapshot directory.
        Self::load(manifest.parent().unwrap_or(Path::new(".")))
    }

    /// Builds a router from parts already in memory (used by training, before a bundle is written),
    /// without an output-length head (see [`Router::with_length_head`]).
    pub fn from_parts(
        mut config: RouterConfig,
        encoder: Encoder,
        head: Head,
        device: Device,
    ) -> Result<Self> {
        // The manifest must not promise a length head or a gate this router does not have.
        config.output_length = None;
        config.task_gate = None;
        config.validate().map_err(CoreError::Invalid)?;
        if encoder.dim() != config.encoder.dim() {
            return Err(CoreError::Invalid(format!(
                "the encoder has dimension {}, the config says {}",
                encoder.dim(),
                config.encoder.dim()
            )));
        }
        let cpu_head = cpu_head_for(&head, &device)?;
        Ok(Self {
            config,
            encoder,
            head,
            length_head: None,
            task_gate: None,
            cpu_head,
            cpu_length_head: None,
            device,
            dir: PathBuf::new(),
        })
    }

    /// Adds an output-length head of shape `shape` (recorded in the manifest's `output_length`).
    pub fn with_length_head(
        mut self,
        length_head: LengthHead,
        shape: crate::config::HeadConfig,
    ) -> Self {
        self.config.output_length = Some(shape);
        // Weights that cannot be packed keep the candle path: the same function, slower.
        self.cpu_length_head = cpu_head_for(length_head.head(), &self.device)
            .ok()
            .flatten();
        self.length_head = Some(length_head);
        self
    }

    /// Adds a task gate (recorded in the manifest's `task_gate`); its shapes must match this
    /// router's embedding and models.
    pub fn with_task_gate(mut self, gate: TaskGate) -> Result<Self> {
        if !gate.fits(self.encoder.dim(), self.config.models.len()) {
            return Err(CoreError::Invalid(
                "the task gate's shapes do not match the router's".into(),
            ));
        }
        self.config.task_gate = Some(gate.config().clone());
        self.task_gate = Some(gate);
        Ok(self)
    }

    /// The task gate, if the bundle has one.
    pub fn task_gate(&self) -> Option<&TaskGate> {
        self.task_gate.as_ref()
    }

    /// The output-length head, if the bundle has one.
    pub fn length_head(&self) -> Option<&LengthHead> {
        self.length_head.as_ref()
    }

    /// Predicted output tokens of each underlying model for each embedding, in [`Router::models`]
    /// order; `None` when the bundle has no output-length head.
    pub fn output_tokens_embeddings(
        &self,
        embeddings: &[Vec<f32>],
    ) -> Result<Option<Vec<Vec<f32>>>> {
        let (Some(length_head), Some(cpu)) = (&self.length_head, &self.cpu_length_head) else {
            return self
                .length_head
                .as_ref()
                .map(|head| head.predict(embeddings, &self.device))
                .transpose();
        };
        let dim = cpu.inputs();
        if embeddings.iter().any(|e| e.len() != dim) {
            return length_head.predict(embeddings, &self.device).map(Some);
        }
        let flat: Vec<f32> = embeddings.iter().flatten().copied().collect();
        let mut tokens = cpu.forward_logits(&flat);
        tokens.iter_mut().for_each(|v| *v = v.exp());
        Ok(Some(
            tokens
                .chunks_exact(self.config.models.len().max(1))
                .map(<[f32]>::to_vec)
                .collect(),
        ))
    }

    /// [`Router::predict`] for many prompts with one encoder pass.
    pub fn predict_batch(&self, prompts: &[&str]) -> Result<Vec<Prediction>> {
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        self.predict_embeddings(&self.encoder.embed_batch(prompts)?)
    }

    /// A prompt's token ids, as this bundle's encoder reads them: the first half of
    /// [`Router::predict`], split off so that a server can tokenise on many threads and batch
    /// only the encoder (see [`Router::predict_tokenized`]).
    ///
    /// ```
    /// # fn main() -> router_core::Result<()> {
    /// let router = router_core::Router::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/routerbench"))?;
    /// let prompts = ["What is 2 + 2?", "Prove that there are infinitely many primes."];
    /// let tokenized = prompts.iter().map(|p| router.tokenize(p)).collect::<router_core::Result<Vec<_>>>()?;
    /// // One encoder pass for the batch; each prompt gets what `predict` gives it alone.
    /// let batch = router.predict_tokenized(&tokenized)?;
    /// assert_eq!(batch[1], router.predict(prompts[1])?);
    /// # Ok(()) }
    /// ```
    pub fn tokenize(&self, prompt: &str) -> Result<TokenizedPrompt> {
        Ok(TokenizedPrompt {
            ids: self.encoder.tokenizer().encode(prompt)?,
        })
    }

    /// [`Router::predict_batch`] for prompts tokenised by [`Router::tokenize`] of this router:
    /// one encoder pass (a BERT batch is padded only to its longest prompt), and each prompt gets
    /// the same prediction alone or in a batch.
    pub fn predict_tokenized(&self, prompts: &[TokenizedPrompt]) -> Result<Vec<Prediction>> {
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        let embeddings = match &self.encoder {
            Encoder::Static(encoder) => prompts.iter().map(|p| encoder.embed_ids(&p.ids)).collect(),
            Encoder::Bert(encoder) => {
                let ids: Vec<Vec<u32>> = prompts.iter().map(|p| p.ids.clone()).collect();
                encoder.embed_ids(&ids)?
            }
        };
        self.predict_embeddings(&embeddings)
    }

    /// The quality and output-length heads on embeddings, one [`Prediction`] per row.
    fn predict_embeddings(&self, embeddings: &[Vec<f32>]) -> Result<Vec<Prediction>> {
        let (scores, gate) = self.score_and_gate(embeddings)?;
        let lengths = self.output_tokens_embeddings(embeddings)?;
        let mut lengths = lengths.map(Vec::into_iter);
        Ok(scores
            .into_iter()
            .zip(gate)
            .map(|(scores, task_gate)| Prediction {
                scores,
                output_tokens: lengths.as_mut().and_then(Iterator::next),
                task_gate,
            })
            .collect())
    }

    /// [`Router::score`] and the predicted output tokens of each model (when the bundle has a
    /// length head) from one encoder pass.
    pub fn predict(&self, prompt: &str) -> Result<Prediction> {
        let embedding = [self.encoder.embed(prompt)?];
        let (mut scores, mut gate) = self.score_and_gate(&embedding)?;
        let output_tokens = self
            .output_tokens_embeddings(&embedding)?
            .and_then(|mut rows| rows.pop());
        let scores = scores
            .pop()
            .ok_or_else(|| CoreError::Invalid("the head returned no row".into()))?;
        Ok(Prediction {
            scores,
            output_tokens,
            task_gate: gate.pop().flatten(),
        })
    }

    /// The manifest.
    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    /// The underlying models, in the order of the scores.
    pub fn models(&self) -> &[String] {
        &self.config.models
    }

    /// The encoder.
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    /// The head.
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// The device the head (and a BERT encoder) runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The directory the bundle was loaded from (empty for one built in memory).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The prompt's embedding.
    pub fn embed(&self, prompt: &str) -> Result<Vec<f32>> {
        self.encoder.embed(prompt)
    }

    /// Predicted quality in [0, 1] of each underlying model on `prompt`, in [`Router::models`] order.
    pub fn score(&self, prompt: &str) -> Result<Vec<f32>> {
        let embedding = self.encoder.embed(prompt)?;
        let mut rows = self.score_embeddings(&[embedding])?;
        rows.pop()
            .ok_or_else(|| CoreError::Invalid("the head returned no row".into()))
    }

    /// [`Router::score`] for many prompts at once; a prompt gets the same scores alone or in a batch.
    pub fn score_batch(&self, prompts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        let embeddings = self.encoder.embed_batch(prompts)?;
        self.score_embeddings(&embeddings)
    }

    /// Runs the head (and the task gate, when the bundle has one) on embeddings computed earlier
    /// (e.g. cached for evaluation).
    pub fn score_embeddings(&self, embeddings: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        Ok(self.score_and_gate(embeddings)?.0)
    }

    /// The gated scores of each embedding and what the gate did for it (`None` where it left the
    /// head's scores alone).
    fn score_and_gate(&self, embeddings: &[Vec<f32>]) -> Result<GatedScores> {
        let mut scores = self.head_scores(embeddings)?;
        let gate = match &self.task_gate {
            Some(gate) => gate.apply_batch(embeddings, &mut scores),
            None => vec![None; scores.len()],
        };
        Ok((scores, gate))
    }

    /// The head's own scores, before any task gate.
    pub fn head_scores(&self, embeddings: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        if embeddings.is_empty() {
            return Ok(Vec::new());
        }
        let dim = self.encoder.dim();
        if let Some(bad) = embeddings.iter().find(|e| e.len() != dim) {
            return Err(CoreError::Invalid(format!(
                "an embedding has {} values, the head takes {dim}",
                bad.len()
            )));
        }
        let flat: Vec<f32> = embeddings.iter().flatten().copied().collect();
        if let Some(cpu_head) = &self.cpu_head {
            let scores = cpu_head.forward(&flat);
            return Ok(scores
                .chunks_exact(self.config.models.len().max(1))
                .map(<[f32]>::to_vec)
                .collect());
        }
        let input = Tensor::from_vec(flat, (embeddings.len(), dim), &self.device)?;
        Ok(self.head.forward(&input)?.to_dtype(DType::F32)?.to_vec2()?)
    }
}

/// A prompt's token ids from [`Router::tokenize`] (special tokens included, truncated to the
/// bundle's length): what [`Router::predict_tokenized`] scores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPrompt {
    ids: Vec<u32>,
}

impl TokenizedPrompt {
    /// The token ids.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// The number of tokens (what a batch of BERT prompts costs grows with).
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether it has no tokens (an empty prompt for a static encoder).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Each embedding's scores after the task gate, and what the gate did for it.
type GatedScores = (Vec<Vec<f32>>, Vec<Option<GateChoice>>);

/// What a bundle predicts for one prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Predicted quality in [0, 1] of each underlying model.
    pub scores: Vec<f32>,
    /// Predicted output tokens of each underlying model; `None` without a length head.
    pub output_tokens: Option<Vec<f32>>,
    /// What the task gate did: `Some` when it recognised the prompt's task and blended the
    /// head's scores towards that task's means; `None` without a gate or when it left them alone.
    pub task_gate: Option<GateChoice>,
}

/// The CPU copy of `head` when the router runs on the CPU.
fn cpu_head_for(head: &Head, device: &Device) -> candle_core::Result<Option<CpuHead>> {
    if device.is_cpu() {
        CpuHead::from_head(head).map(Some)
    } else {
        Ok(None)
    }
}

/// The device a router runs on by default: the first GPU when built with `cuda` or `metal` and
/// one is present, else the CPU.
pub fn default_device() -> Result<Device> {
    #[cfg(feature = "cuda")]
    {
        return Ok(Device::cuda_if_available(0)?);
    }
    #[cfg(all(feature = "metal", not(feature = "cuda")))]
    {
        return Ok(Device::new_metal(0).unwrap_or(Device::Cpu));
    }
    #[allow(unreachable_code)]
    Ok(Device::Cpu)
}

fn load_encoder(dir: &Path, config: &RouterConfig, device: &Device) -> Result<Encoder> {
    let tokenizer = dir.join(files::TOKENIZER);
    match &config.encoder {
        EncoderConfig::Static { dim, .. } => Ok(Encoder::Static(StaticEncoder::load(
            &dir.join(files::STATIC_ENCODER),
            &tokenizer,
            config.max_seq_length,
            config.truncation,
            *dim,
        )?)),
        EncoderConfig::Bert {
            repo,
            revision,
            path,
            dim,
        } => {
            let model_dir = match (path, repo) {
                (Some(path), _) => dir.join(path),
                (None, Some(repo)) => {
                    bert_dir_from_hub(repo, revision.as_deref().unwrap_or(DEFAULT_REVISION))?
                }
                (None, None) => {
                    return Err(CoreError::bundle(
                        dir.join(files::MANIFEST),
                        "encoder: a bert encoder needs a repo or a path",
                    ))
                }
            };
            let encoder = BertEncoder::load(
                &model_dir,
                &tokenizer,
                config.max_seq_length,
                config.truncation,
                config.pooling,
                device,
            )?;
            if encoder.dim() != *dim {
                return Err(CoreError::bundle(
                    dir.join(files::MANIFEST),
                    format!(
                        "encoder.dim is {dim}, but {} has hidden_size {}",
                        model_dir.display(),
                        encoder.dim()
                    ),
                ));
            }
            Ok(Encoder::Bert(encoder))
        }
    }
}

/// The snapshot directory holding a BERT model's `config.json` and `model.safetensors`.
pub fn bert_dir_from_hub(repo: &str, revision: &str) -> Result<PathBuf> {
    hub_file(repo, revision, "model.safetensors")?;
    let config = hub_file(repo, revision, "config.json")?;
    Ok(config.parent().map(Path::to_path_buf).unwrap_or_default())
}
