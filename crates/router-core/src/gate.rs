//! The task gate: the prompt's task, recognised from its embedding, decides how far the head's
//! per-prompt predictions are trusted on that task.
//!
//! On benchmark-like data a head's per-prompt differences between models within one task often do
//! not hold on new prompts of that task as well as "the model that is best on this task" does. The
//! gate carries a task recogniser (a softmax regression over the prompt embedding), each known
//! task's mean scores on the training data, and per task a blend weight `α` chosen by
//! cross-validation on the training side. A prompt is recognised as task `t` when the recogniser
//! gives `t` a probability of at least [`TaskGateConfig::min_confidence`] *and* the prompt lies
//! as close to `t`'s training prompts as they do themselves (its cosine similarity to `t`'s
//! centroid reaches `t`'s `min_similarity`, a low quantile of its own prompts' similarities), so
//! a prompt unlike every training task (everyday chat for a router trained on maths) is not forced
//! into one. Its scores are then `(1 − α_t) · head + α_t · mean_t`.
//! `α = 0` leaves the head alone, `α = 1` routes by the task's training means (in Quality mode,
//! the per-task-best rule). Prompts the recogniser is not sure about keep the head's scores.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};

/// Tensor names inside the gate's file ([`crate::config::files::TASK_GATE`]).
pub mod tensors {
    /// `[tasks, dim]`: the recogniser's weights.
    pub const RECOGNISER_WEIGHT: &str = "recogniser.weight";
    /// `[tasks]`: the recogniser's biases.
    pub const RECOGNISER_BIAS: &str = "recogniser.bias";
    /// `[tasks, models]`: each task's mean scores on the training data.
    pub const TASK_MEANS: &str = "task_means";
    /// `[tasks]`: each task's blend weight `α` in [0, 1].
    pub const BLEND: &str = "blend";
    /// `[tasks, dim]`: each task's centroid, L2-normalised.
    pub const CENTROIDS: &str = "centroids";
    /// `[tasks]`: the lowest cosine similarity to its centroid at which a prompt can be the task.
    pub const MIN_SIMILARITY: &str = "min_similarity";
}

/// The gate's entry in the manifest (`router.json`, field `task_gate`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskGateConfig {
    /// The task names, in the order of the recogniser's outputs.
    pub tasks: Vec<String>,
    /// The lowest recogniser probability at which a prompt counts as recognised.
    pub min_confidence: f32,
}

/// What the gate did for one prompt: recognised its task and blended by `blend`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateChoice {
    /// The recognised task.
    pub task: String,
    /// The recogniser's probability of that task.
    pub confidence: f32,
    /// How much of the task's training means replaced the head's scores (0 < blend ≤ 1).
    pub blend: f32,
}

/// A loaded task gate (see the module documentation).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskGate {
    config: TaskGateConfig,
    dim: usize,
    models: usize,
    weight: Vec<f32>,
    bias: Vec<f32>,
    task_means: Vec<f32>,
    blend: Vec<f32>,
    centroids: Vec<f32>,
    min_similarity: Vec<f32>,
}

/// The parts of a [`TaskGate`], row-major, as training fits them.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskGateParts {
    /// The manifest entry: task names and the confidence threshold.
    pub config: TaskGateConfig,
    /// `[tasks][dim]`: the recogniser's weight rows.
    pub weight: Vec<Vec<f32>>,
    /// `[tasks]`: the recogniser's biases.
    pub bias: Vec<f32>,
    /// `[tasks][models]`: each task's mean scores.
    pub task_means: Vec<Vec<f32>>,
    /// `[tasks]`: each task's blend weight in [0, 1].
    pub blend: Vec<f32>,
    /// `[tasks][dim]`: each task's centroid, L2-normalised.
    pub centroids: Vec<Vec<f32>>,
    /// `[tasks]`: the lowest cosine similarity to its centroid at which a prompt can be the task.
    pub min_similarity: Vec<f32>,
}

impl TaskGate {
    /// Builds a gate for embeddings of `dim` values and `models` score columns, checking every shape.
    ///
    /// ```
    /// use router_core::{TaskGate, TaskGateConfig, TaskGateParts};
    /// let parts = TaskGateParts {
    ///     config: TaskGateConfig { tasks: vec!["math".into(), "chat".into()], min_confidence: 0.6 },
    ///     weight: vec![vec![8.0, 0.0], vec![0.0, 8.0]],
    ///     bias: vec![0.0, 0.0],
    ///     task_means: vec![vec![0.9, 0.3], vec![0.8, 0.7]],
    ///     blend: vec![1.0, 0.0],
    ///     centroids: vec![vec![1.0, 0.0], vec![0.0, 1.0]],
    ///     min_similarity: vec![0.5, 0.5],
    /// };
    /// let gate = TaskGate::new(parts, 2, 2)?;
    /// let mut scores = vec![0.2, 0.5];
    /// let choice = gate.apply(&[1.0, 0.0], &mut scores).expect("recognised as math");
    /// assert_eq!((choice.task.as_str(), choice.blend), ("math", 1.0));
    /// assert_eq!(scores, vec![0.9, 0.3]);
    /// // A chat prompt is recognised too, but its blend is 0: the head's scores stay.
    /// let mut scores = vec![0.2, 0.5];
    /// assert_eq!(gate.apply(&[0.0, 1.0], &mut scores), None);
    /// assert_eq!(scores, vec![0.2, 0.5]);
    /// // A prompt far from every task's centroid is recognised as none.
    /// assert_eq!(gate.recognise(&[-0.6, -0.8]), None);
    /// # Ok::<(), router_core::CoreError>(())
    /// ```
    pub fn new(parts: TaskGateParts, dim: usize, models: usize) -> Result<Self> {
        let tasks = parts.config.tasks.len();
        let rows_ok = |rows: &[Vec<f32>], width: usize| {
            rows.len() == tasks && rows.iter().all(|r| r.len() == width)
        };
        if tasks == 0 {
            return Err(CoreError::Invalid("task gate: no tasks".into()));
        }
        if !rows_ok(&parts.weight, dim) || parts.bias.len() != tasks {
            return Err(CoreError::Invalid(format!(
                "task gate: the recogniser must be {tasks} × {dim} with {tasks} biases"
            )));
        }
        if !rows_ok(&parts.centroids, dim) || parts.min_similarity.len() != tasks {
            return Err(CoreError::Invalid(format!(
                "task gate: centroids must be {tasks} × {dim} with {tasks} min_similarity values"
            )));
        }
        if !rows_ok(&parts.task_means, models) {
            return Err(CoreError::Invalid(format!(
                "task gate: task_means must be {tasks} × {models}"
            )));
        }
        if parts.blend.len() != tasks || parts.blend.iter().any(|a| !(0.0..=1.0).contains(a)) {
            return Err(CoreError::Invalid(format!(
                "task gate: blend must be {tasks} values in [0, 1]"
            )));
        }
        if !(0.0..=1.0).contains(&parts.config.min_confidence) {
            return Err(CoreError::Invalid(
                "task gate: min_confidence must be in [0, 1]".into(),
            ));
        }
        Ok(Self {
            config: parts.config,
            dim,
            models,
            weight: parts.weight.concat(),
            bias: parts.bias,
            task_means: parts.task_means.concat(),
            blend: parts.blend,
            centroids: parts.centroids.concat(),
            min_similarity: parts.min_similarity,
        })
    }

    /// Loads the gate's file, for embeddings of `dim` values and `models` score columns.
    pub fn load(path: &Path, config: &TaskGateConfig, dim: usize, models: usize) -> Result<Self> {
        if !path.is_file() {
            return Err(CoreError::bundle(path, "file not found"));
        }
        let tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| CoreError::bundle(path, e.to_string()))?;
        let matrix = |name: &str| -> Result<Vec<Vec<f32>>> {
            let tensor = tensors
                .get(name)
                .ok_or_else(|| CoreError::bundle(path, format!("no tensor {name}")))?;
            tensor
                .to_dtype(DType::F32)
                .and_then(|t| t.to_vec2())
                .map_err(|e| CoreError::bundle(path, format!("{name}: {e}")))
        };
        let vector = |name: &str| -> Result<Vec<f32>> {
            let tensor = tensors
                .get(name)
                .ok_or_else(|| CoreError::bundle(path, format!("no tensor {name}")))?;
            tensor
                .to_dtype(DType::F32)
                .and_then(|t| t.to_vec1())
                .map_err(|e| CoreError::bundle(path, format!("{name}: {e}")))
        };
        let parts = TaskGateParts {
            config: config.clone(),
            weight: matrix(tensors::RECOGNISER_WEIGHT)?,
            bias: vector(tensors::RECOGNISER_BIAS)?,
            task_means: matrix(tensors::TASK_MEANS)?,
            blend: vector(tensors::BLEND)?,
            centroids: matrix(tensors::CENTROIDS)?,
            min_similarity: vector(tensors::MIN_SIMILARITY)?,
        };
        Self::new(parts, dim, models).map_err(|e| CoreError::bundle(path, e.to_string()))
    }

    /// Writes the gate's tensors to `path` (the manifest entry is [`TaskGate::config`]).
    pub fn save(&self, path: &Path) -> Result<()> {
        let tasks = self.config.tasks.len();
        let cpu = Device::Cpu;
        let tensors: HashMap<String, Tensor> = [
            (
                tensors::RECOGNISER_WEIGHT,
                Tensor::from_slice(&self.weight, (tasks, self.dim), &cpu)?,
            ),
            (
                tensors::RECOGNISER_BIAS,
                Tensor::from_slice(&self.bias, tasks, &cpu)?,
            ),
            (
                tensors::TASK_MEANS,
                Tensor::from_slice(&self.task_means, (tasks, self.models), &cpu)?,
            ),
            (
                tensors::BLEND,
                Tensor::from_slice(&self.blend, tasks, &cpu)?,
            ),
            (
                tensors::CENTROIDS,
                Tensor::from_slice(&self.centroids, (tasks, self.dim), &cpu)?,
            ),
            (
                tensors::MIN_SIMILARITY,
                Tensor::from_slice(&self.min_similarity, tasks, &cpu)?,
            ),
        ]
        .into_iter()
        .map(|(name, tensor)| (name.to_string(), tensor))
        .collect();
        candle_core::safetensors::save(&tensors, path)
            .map_err(|e| CoreError::bundle(path, e.to_string()))
    }

    /// Whether the gate reads embeddings of `dim` values and blends `models` score columns.
    pub fn fits(&self, dim: usize, models: usize) -> bool {
        self.dim == dim && self.models == models
    }

    /// The manifest entry.
    pub fn config(&self) -> &TaskGateConfig {
        &self.config
    }

    /// Task `task`'s mean training scores, one per model (empty for an unknown index).
    pub fn task_mean(&self, task: usize) -> &[f32] {
        self.task_means
            .get(task * self.models..(task + 1) * self.models)
            .unwrap_or(&[])
    }

    /// Each task's blend weight, in the order of [`TaskGateConfig::tasks`].
    pub fn blend(&self) -> &[f32] {
        &self.blend
    }

    /// The recogniser's probability of each task for `embedding` (a softmax over the tasks).
    pub fn task_probabilities(&self, embedding: &[f32]) -> Vec<f32> {
        let logits: Vec<f32> = self
            .weight
            .chunks_exact(self.dim)
            .zip(&self.bias)
            .map(|(row, b)| row.iter().zip(embedding).map(|(w, x)| w * x).sum::<f32>() + b)
            .collect();
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
        let total: f32 = exp.iter().sum();
        exp.into_iter().map(|e| e / total).collect()
    }

    /// The most probable task (its index) and its probability, when that probability reaches
    /// [`TaskGateConfig::min_confidence`] and the (L2-normalised) embedding's cosine similarity to
    /// the task's centroid reaches the task's `min_similarity`.
    pub fn recognise(&self, embedding: &[f32]) -> Option<(usize, f32)> {
        let probabilities = self.task_probabilities(embedding);
        let (task, &p) = probabilities
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))?;
        let centroid = self.centroids.get(task * self.dim..(task + 1) * self.dim)?;
        let similarity: f32 = centroid.iter().zip(embedding).map(|(c, x)| c * x).sum();
        (p >= self.config.min_confidence && similarity >= self.min_similarity[task])
            .then_some((task, p))
    }

    /// Blends `scores` (the head's, for `embedding`) towards the recognised task's means by its
    /// blend weight; `None`, with `scores` untouched, when no task is recognised or its weight is 0.
    pub fn apply(&self, embedding: &[f32], scores: &mut [f32]) -> Option<GateChoice> {
        let (task, confidence) = self.recognise(embedding)?;
        let blend = self.blend[task];
        if blend <= 0.0 || scores.len() != self.models {
            return None;
        }
        let means = &self.task_means[task * self.models..(task + 1) * self.models];
        scores
            .iter_mut()
            .zip(means)
            .for_each(|(s, m)| *s = (1.0 - blend) * *s + blend * m);
        Some(GateChoice {
            task: self.config.tasks[task].clone(),
            confidence,
            blend,
        })
    }

    /// [`TaskGate::apply`] to each row of `scores` with its embedding: what the gate did per row.
    pub fn apply_batch(
        &self,
        embeddings: &[Vec<f32>],
        scores: &mut [Vec<f32>],
    ) -> Vec<Option<GateChoice>> {
        scores
            .iter_mut()
            .zip(embeddings)
            .map(|(row, embedding)| self.apply(embedding, row))
            .collect()
    }
}
