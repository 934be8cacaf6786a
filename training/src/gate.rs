//! Fitting a [`TaskGate`]: a task recogniser over the prompt embedding and, per task, how far the
//! head's scores are blended towards the task's training means.
//!
//! Everything is fitted on the training side it is given, never on what it will be judged on. The
//! blend of each task is chosen by an inner cross-validation of that side ([`GATE_FOLDS`] folds,
//! grouped by prompt): each inner fold's head, recogniser and task means are fitted on the other
//! inner folds, the held-out prompts are routed in Quality mode with every blend of [`BLENDS`]
//! (applied to the prompts *recognised* as the task, as the deployed gate would), and their mean
//! observed scores compared. The default is blend 1, the per-task-best rule the issue asks the
//! router never to fall below: a smaller blend (more of the head's per-prompt differences) is
//! chosen only when it beats blend 1 by more than one standard error of the paired differences,
//! and then the best such blend. The final recogniser, centroids and task means are fitted on the
//! whole side. Inside `cv` this runs within each outer fold, so the outer report stays honest.

use std::collections::BTreeMap;
use std::fmt;

use router_core::candle_core::{DType, Device, Tensor, Var};
use router_core::candle_nn::{loss, AdamW, Optimizer, ParamsAdamW};
use router_core::{TaskGate, TaskGateConfig, TaskGateParts};
use router_policy::Mode;
use serde::Serialize;

use crate::error::{Result, TrainingError};
use crate::metrics::{self, Matrix};
use crate::train::{self, TrainOptions};

/// A prompt counts as recognised when the recogniser gives its task at least this probability.
pub const MIN_CONFIDENCE: f32 = 0.5;
/// The blend weights the inner cross-validation chooses from (0: the head alone; 1: the task's means).
pub const BLENDS: [f32; 5] = [0.0, 0.25, 0.5, 0.75, 1.0];
/// A prompt can be a task only if its cosine similarity to the task's centroid reaches this
/// quantile of the task's own training prompts' similarities (so 95 % of them pass).
pub const SIMILARITY_QUANTILE: f64 = 0.05;
/// Inner folds of the training side that choose each task's blend.
pub const GATE_FOLDS: usize = 3;
/// Full-batch AdamW steps of the recogniser (a convex softmax regression, started at zero).
const RECOGNISER_STEPS: usize = 300;

/// What the inner cross-validation measured for one task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateTask {
    /// The task.
    pub task: String,
    /// Inner held-out prompts of this task.
    pub n: usize,
    /// Share of them the inner recogniser recognised as this task (at [`MIN_CONFIDENCE`]).
    pub recognised: f64,
    /// Inner held-out prompts recognised as this task (whatever their own task).
    pub routed: usize,
    /// Their mean observed score in Quality mode with the head's scores.
    pub head_quality: f64,
    /// Their mean observed score in Quality mode with the chosen blend.
    pub gated_quality: f64,
    /// The chosen blend weight.
    pub blend: f32,
}

/// The inner cross-validation behind a gate: per task, what it measured and chose.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateReport {
    /// One entry per task, in task-name order.
    pub tasks: Vec<GateTask>,
}

impl fmt::Display for GateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "task gate (inner {GATE_FOLDS}-fold cv on the training side, Quality mode):"
        )?;
        writeln!(
            f,
            "{:<24} {:>6} {:>11} {:>7} {:>12} {:>12} {:>6}",
            "task", "n", "recognised", "routed", "head (q)", "gated (q)", "blend"
        )?;
        for t in &self.tasks {
            writeln!(
                f,
                "{:<24} {:>6} {:>10.1}% {:>7} {:>12.4} {:>12.4} {:>6.2}",
                t.task,
                t.n,
                100.0 * t.recognised,
                t.routed,
                t.head_quality,
                t.gated_quality,
                t.blend
            )?;
        }
        Ok(())
    }
}

/// Fits a gate on a training side: `keys` are its records' `(task, prompt)`, `x` their
/// embeddings, `side` their scores and routing costs. `label` names the progress bars.
pub fn fit_gate(
    keys: &[(&str, &str)],
    x: &[Vec<f32>],
    side: &Matrix,
    options: &TrainOptions,
    label: &str,
) -> Result<(TaskGate, GateReport)> {
    let tasks: Vec<String> = keys
        .iter()
        .map(|(task, _)| task.to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let labels: Vec<usize> = keys
        .iter()
        .map(|(task, _)| tasks.iter().position(|t| t == task).unwrap_or(0))
        .collect();
    let inner = crate::data::folds(keys.iter().copied(), GATE_FOLDS, options.seed)?;
    let mut held_out = Vec::with_capacity(x.len());
    for fold in 0..GATE_FOLDS {
        let (held, kept): (Vec<usize>, Vec<usize>) = (0..x.len()).partition(|&i| inner[i] == fold);
        let pick =
            |index: &[usize]| -> Vec<Vec<f32>> { index.iter().map(|&i| x[i].clone()).collect() };
        let (kept_x, held_x) = (pick(&kept), pick(&held));
        let kept_y: Vec<Vec<f64>> = kept.iter().map(|&i| side.scores()[i].clone()).collect();
        let kept_keys: Vec<(&str, &str)> = kept.iter().map(|&i| keys[i]).collect();
        let fit = train::fit_early_stopped(
            &kept_keys,
            &kept_x,
            &kept_y,
            side.models().len(),
            options,
            &format!("{label} gate {}/{GATE_FOLDS}", fold + 1),
        )?;
        let kept_labels: Vec<usize> = kept.iter().map(|&i| labels[i]).collect();
        let gate = gate_of(
            &tasks,
            &kept_x,
            &kept_labels,
            &kept_y,
            vec![0.0; tasks.len()],
        )?;
        for (&i, head) in held.iter().zip(train::predict(&fit.head, &held_x)?) {
            let recognised = gate.recognise(&x[i]);
            held_out.push(HeldOut {
                row: i,
                head,
                recognised: recognised.map(|(t, _)| t),
                means: recognised.map(|(t, _)| gate.task_mean(t).to_vec()),
            });
        }
    }
    let report = choose_blends(&tasks, &labels, &held_out, side)?;
    let blends = report.tasks.iter().map(|t| t.blend).collect();
    let all_y: Vec<Vec<f64>> = side.scores().to_vec();
    Ok((gate_of(&tasks, x, &labels, &all_y, blends)?, report))
}

/// One inner held-out prompt: its row in the side, the inner head's scores, the task the inner
/// recogniser gave it and that task's inner training means.
struct HeldOut {
    row: usize,
    head: Vec<f32>,
    recognised: Option<usize>,
    means: Option<Vec<f32>>,
}

/// Per task, the blend whose Quality-mode choices score best on the held-out prompts recognised
/// as that task (ties to the smaller blend).
fn choose_blends(
    tasks: &[String],
    labels: &[usize],
    held_out: &[HeldOut],
    side: &Matrix,
) -> Result<GateReport> {
    let mut report = Vec::with_capacity(tasks.len());
    for (t, task) in tasks.iter().enumerate() {
        let own: Vec<&HeldOut> = held_out.iter().filter(|h| labels[h.row] == t).collect();
        let recognised =
            own.iter().filter(|h| h.recognised == Some(t)).count() as f64 / own.len().max(1) as f64;
        let routed: Vec<&HeldOut> = held_out
            .iter()
            .filter(|h| h.recognised == Some(t))
            .collect();
        let rows: Vec<usize> = routed.iter().map(|h| h.row).collect();
        let routed_side = side.select(&rows)?;
        let scores_at = |blend: f32| -> Result<Vec<f64>> {
            let predictions: Vec<Vec<f32>> = routed
                .iter()
                .map(|h| match &h.means {
                    Some(means) => h
                        .head
                        .iter()
                        .zip(means)
                        .map(|(s, m)| (1.0 - blend) * s + blend * m)
                        .collect(),
                    None => h.head.clone(),
                })
                .collect();
            let choices = metrics::band_choices(&routed_side, &predictions, Mode::Quality.band())?;
            Ok(choices
                .iter()
                .zip(routed_side.scores())
                .map(|(&c, row)| row[c])
                .collect())
        };
        if routed.is_empty() {
            report.push(GateTask {
                task: task.clone(),
                n: own.len(),
                recognised,
                routed: 0,
                head_quality: 0.0,
                gated_quality: 0.0,
                blend: 0.0,
            });
            continue;
        }
        let task_best = scores_at(1.0)?;
        let (mut blend, mut gated_quality) = (1.0, mean(&task_best));
        for candidate in BLENDS.into_iter().filter(|b| *b < 1.0) {
            let scores = scores_at(candidate)?;
            let gain: Vec<f64> = scores.iter().zip(&task_best).map(|(s, t)| s - t).collect();
            if mean(&gain) > standard_error(&gain) && mean(&scores) > gated_quality {
                (blend, gated_quality) = (candidate, mean(&scores));
            }
        }
        let head_quality = mean(&scores_at(0.0)?);
        report.push(GateTask {
            task: task.clone(),
            n: own.len(),
            recognised,
            routed: routed.len(),
            head_quality,
            gated_quality,
            blend,
        });
    }
    Ok(GateReport { tasks: report })
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// The standard error of the mean of `values` (0 for fewer than two).
fn standard_error(values: &[f64]) -> f64 {
    if values.len() < 2 {
        return 0.0;
    }
    let m = mean(values);
    let variance = values.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (values.len() - 1) as f64;
    (variance / values.len() as f64).sqrt()
}

/// A gate with a recogniser fitted on `x` → `labels`, the task means of `y`, and `blends`.
fn gate_of(
    tasks: &[String],
    x: &[Vec<f32>],
    labels: &[usize],
    y: &[Vec<f64>],
    blends: Vec<f32>,
) -> Result<TaskGate> {
    let dim = x.first().map_or(0, Vec::len);
    let models = y.first().map_or(0, Vec::len);
    let (weight, bias) = fit_recogniser(x, labels, tasks.len())?;
    let mut sums = vec![(vec![0.0f64; models], 0usize); tasks.len()];
    for (row, &label) in y.iter().zip(labels) {
        let (sum, count) = &mut sums[label];
        sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
        *count += 1;
    }
    let task_means = sums
        .into_iter()
        .map(|(sum, count)| {
            sum.into_iter()
                .map(|s| (s / count.max(1) as f64) as f32)
                .collect()
        })
        .collect();
    let (centroids, min_similarity) = centroids(x, labels, tasks.len());
    let config = TaskGateConfig {
        tasks: tasks.to_vec(),
        min_confidence: MIN_CONFIDENCE,
    };
    let parts = TaskGateParts {
        config,
        weight,
        bias,
        task_means,
        blend: blends,
        centroids,
        min_similarity,
    };
    Ok(TaskGate::new(parts, dim, models)?)
}

/// Each task's L2-normalised centroid and the [`SIMILARITY_QUANTILE`] of its own prompts' cosine
/// similarities to it: how close a prompt must be to pass for the task.
fn centroids(x: &[Vec<f32>], labels: &[usize], tasks: usize) -> (Vec<Vec<f32>>, Vec<f32>) {
    let dim = x.first().map_or(0, Vec::len);
    let mut sums = vec![vec![0.0f32; dim]; tasks];
    for (row, &label) in x.iter().zip(labels) {
        sums[label].iter_mut().zip(row).for_each(|(s, v)| *s += v);
    }
    let centroids: Vec<Vec<f32>> = sums
        .into_iter()
        .map(|sum| {
            let norm = sum
                .iter()
                .map(|v| v * v)
                .sum::<f32>()
                .sqrt()
                .max(f32::MIN_POSITIVE);
            sum.into_iter().map(|v| v / norm).collect()
        })
        .collect();
    let min_similarity = (0..tasks)
        .map(|task| {
            let mut similarities: Vec<f32> = x
                .iter()
                .zip(labels)
                .filter(|(_, &label)| label == task)
                .map(|(row, _)| row.iter().zip(&centroids[task]).map(|(a, b)| a * b).sum())
                .collect();
            similarities.sort_by(f32::total_cmp);
            let at = ((similarities.len() as f64 - 1.0) * SIMILARITY_QUANTILE)
                .round()
                .max(0.0) as usize;
            similarities.get(at).copied().unwrap_or(1.0)
        })
        .collect();
    (centroids, min_similarity)
}

/// A softmax regression of the task on the embedding (full-batch AdamW from zero weights, so
/// it is deterministic): the weight rows `[tasks][dim]` and the biases.
pub fn fit_recogniser(
    x: &[Vec<f32>],
    labels: &[usize],
    tasks: usize,
) -> Result<(Vec<Vec<f32>>, Vec<f32>)> {
    let dim = x.first().map_or(0, Vec::len);
    if x.is_empty() || labels.len() != x.len() || labels.iter().any(|&l| l >= tasks) {
        return Err(TrainingError::Invalid(
            "the recogniser needs one task label (< tasks) per embedding".into(),
        ));
    }
    let cpu = Device::Cpu;
    let input = Tensor::from_vec(x.concat(), (x.len(), dim), &cpu)?;
    let target = Tensor::from_vec(
        labels.iter().map(|&l| l as u32).collect::<Vec<u32>>(),
        x.len(),
        &cpu,
    )?;
    let weight = Var::zeros((tasks, dim), DType::F32, &cpu)?;
    let bias = Var::zeros(tasks, DType::F32, &cpu)?;
    let mut optimizer = AdamW::new(
        vec![weight.clone(), bias.clone()],
        ParamsAdamW {
            lr: 0.05,
            weight_decay: 1e-4,
            ..Default::default()
        },
    )?;
    for _ in 0..RECOGNISER_STEPS {
        let logits = input
            .matmul(&weight.as_tensor().t()?)?
            .broadcast_add(bias.as_tensor())?;
        optimizer.backward_step(&loss::cross_entropy(&logits, &target)?)?;
    }
    Ok((weight.as_tensor().to_vec2()?, bias.as_tensor().to_vec1()?))
}

/// Per task, the share of prompts the gate recognises as their own task, and how many it
/// recognises at all: the recogniser's accuracy on prompts it never saw.
pub fn recognition(
    gate: &TaskGate,
    x: &[Vec<f32>],
    tasks: &[&str],
) -> BTreeMap<String, (usize, usize)> {
    let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (embedding, task) in x.iter().zip(tasks) {
        let entry = counts.entry(task.to_string()).or_default();
        entry.0 += 1;
        let known = gate
            .recognise(embedding)
            .map(|(t, _)| gate.config().tasks[t].as_str());
        entry.1 += usize::from(known == Some(*task));
    }
    counts
}

/// The gates of a cross-validation, one per outer fold, each fitted on that fold's training side.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CvGate {
    /// Each fold's inner report (the blends it chose).
    pub folds: Vec<GateReport>,
    /// Per task: held-out prompts, and how many of them the fold's gate recognised as their task.
    pub recognition: BTreeMap<String, (usize, usize)>,
    /// Held-out prompts whose scores the gate blended.
    pub gated: usize,
    /// Held-out prompts in all.
    pub prompts: usize,
}

impl CvGate {
    /// Records one outer fold: its gate and inner report, and applies the gate to the fold's
    /// held-out `predictions` (rows of `x`, whose true tasks are `tasks`).
    pub fn add_fold(
        &mut self,
        gate: &TaskGate,
        report: GateReport,
        x: &[Vec<f32>],
        tasks: &[&str],
        predictions: &mut [Vec<f32>],
    ) {
        for (task, (n, hit)) in recognition(gate, x, tasks) {
            let entry = self.recognition.entry(task).or_default();
            entry.0 += n;
            entry.1 += hit;
        }
        self.gated += gate
            .apply_batch(x, predictions)
            .iter()
            .filter(|choice| choice.is_some())
            .count();
        self.prompts += x.len();
        self.folds.push(report);
    }
}

impl fmt::Display for CvGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "task gate: {} of {} held-out prompts blended; per task, held-out recognition and each fold's blend:", self.gated, self.prompts)?;
        for (task, (n, hit)) in &self.recognition {
            let blends: Vec<String> = self
                .folds
                .iter()
                .map(|fold| {
                    fold.tasks
                        .iter()
                        .find(|t| &t.task == task)
                        .map_or("-".into(), |t| format!("{:.2}", t.blend))
                })
                .collect();
            writeln!(
                f,
                "  {task:<24} {:>5.1}% of {n:>5}  blends {}",
                100.0 * *hit as f64 / (*n).max(1) as f64,
                blends.join(" ")
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn unit(v: [f32; 4]) -> Vec<f32> {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / norm).collect()
    }

    /// Task `a`: which of two models answers is readable from the embedding (its sign in the third
    /// dimension), so the head's per-prompt differences hold and the gate keeps them (blend < 1).
    /// Task `b`: each model answers at random (0.8 and 0.4) whatever the prompt, so nothing beats
    /// the task's best model and the gate routes by the task's means (blend 1).
    #[test]
    fn the_blend_keeps_the_head_only_where_it_beats_the_task_best_model() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (mut keys, mut x, mut scores) = (Vec::new(), Vec::new(), Vec::new());
        let prompts: Vec<String> = (0..400).map(|i| format!("prompt {i}")).collect();
        for (i, prompt) in prompts.iter().enumerate() {
            let sign = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
            let noise = rng.random_range(-0.2..0.2);
            if i % 2 == 0 {
                keys.push(("a", prompt.as_str()));
                x.push(unit([1.0, noise, 0.6 * sign, 0.0]));
                scores.push(if sign > 0.0 {
                    vec![1.0, 0.0]
                } else {
                    vec![0.0, 1.0]
                });
            } else {
                keys.push(("b", prompt.as_str()));
                x.push(unit([noise, 1.0, 0.0, 0.6 * sign]));
                scores.push(vec![
                    f64::from(u8::from(rng.random_bool(0.8))),
                    f64::from(u8::from(rng.random_bool(0.4))),
                ]);
            }
        }
        let side = Matrix::new(
            vec!["m0".into(), "m1".into()],
            scores,
            vec![vec![1.0, 1.0]; 400],
        )
        .unwrap();
        let options = TrainOptions {
            hidden: vec![],
            max_epochs: 60,
            learning_rate: 3e-2,
            ..TrainOptions::default()
        };
        let (gate, report) = fit_gate(&keys, &x, &side, &options, "test").unwrap();
        let blend = |task: &str| report.tasks.iter().find(|t| t.task == task).unwrap().blend;
        assert!(blend("a") < 1.0, "{report}");
        assert_eq!(blend("b"), 1.0, "{report}");
        assert!(report.tasks.iter().all(|t| t.recognised > 0.9), "{report}");
        assert_eq!(gate.blend(), &[blend("a"), blend("b")]);
        // Task b's prompts are routed by its means: m0, whatever the head says.
        let mut row = vec![0.1, 0.9];
        let choice = gate.apply(&x[1], &mut row).unwrap();
        assert_eq!(choice.task, "b");
        assert!(row[0] > row[1], "{row:?}");
    }

    #[test]
    fn the_recogniser_separates_separable_tasks() {
        let x: Vec<Vec<f32>> = (0..40)
            .map(|i| {
                unit(if i % 2 == 0 {
                    [1.0, 0.1, 0.0, 0.0]
                } else {
                    [0.1, 1.0, 0.0, 0.0]
                })
            })
            .collect();
        let labels: Vec<usize> = (0..40).map(|i| i % 2).collect();
        let (weight, bias) = fit_recogniser(&x, &labels, 2).unwrap();
        for (row, label) in x.iter().zip(&labels) {
            let logits: Vec<f32> = weight
                .iter()
                .zip(&bias)
                .map(|(w, b)| w.iter().zip(row).map(|(a, b)| a * b).sum::<f32>() + b)
                .collect();
            assert_eq!(usize::from(logits[1] > logits[0]), *label);
        }
        assert!(
            fit_recogniser(&x, &labels, 1).is_err(),
            "a label out of range is refused"
        );
    }
}
