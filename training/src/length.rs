//! The output-length head: per model, a ridge regression of `ln(output tokens)` on the prompt
//! embedding, fitted in closed form, and its measurement against the per-model mean.
//!
//! Lengths are fitted in log space because they are heavy-tailed (a few answers run 10× the
//! median) and because the cost is a product: an error of a factor 2 should weigh the same for a
//! terse model as for a verbose one. The ridge strength is chosen on a held-out share of the
//! training side, among [`RIDGE_STRENGTHS`]; a strength so large that the weights vanish is the
//! per-model mean itself, so the fit can only do worse than the baseline through noise.

use std::collections::HashMap;

use router_core::candle_core::{Device, Tensor};
use router_core::HeadConfig;

use crate::data::Record;
use crate::error::{Result, TrainingError};

/// The ridge strengths tried, per prompt (the penalty is `strength × n × |w|²`).
pub const RIDGE_STRENGTHS: [f64; 6] = [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 1e3];

/// A fitted linear length head: `ln(tokens) = weights[m] · x + biases[m]` for model `m`.
#[derive(Debug, Clone, PartialEq)]
pub struct LengthFit {
    /// One weight row per model, each as long as the embedding.
    pub weights: Vec<Vec<f32>>,
    /// One bias per model.
    pub biases: Vec<f32>,
    /// The ridge strength chosen.
    pub strength: f64,
}

/// How well predicted lengths match the real ones on held-out prompts: mean absolute error of
/// `ln(tokens)` per model, for the head and for the per-model mean of the training side.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LengthReport {
    /// The models, in the order of the errors.
    pub models: Vec<String>,
    /// The head's mean absolute log error per model.
    pub head_log_mae: Vec<f64>,
    /// The per-model mean's mean absolute log error per model.
    pub mean_log_mae: Vec<f64>,
    /// The head's error averaged over models.
    pub head_log_mae_mean: f64,
    /// The per-model mean's error averaged over models.
    pub mean_log_mae_mean: f64,
    /// For reference, the error averaged over models of each model's mean on the prompt's task
    /// (training side): a baseline that needs the task, which a deployment does not know.
    pub task_mean_log_mae_mean: f64,
}

/// A table: per model, the head's and the per-model mean's mean absolute error of ln(tokens).
impl std::fmt::Display for LengthReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let width = self
            .models
            .iter()
            .map(|m| m.chars().count())
            .max()
            .unwrap_or(0)
            .max(5);
        writeln!(
            f,
            "output length, mean |error| of ln(tokens) on held-out prompts:"
        )?;
        writeln!(
            f,
            "{:<width$}  {:>9}  {:>14}",
            "model", "head", "per-model mean"
        )?;
        for ((model, head), mean) in self
            .models
            .iter()
            .zip(&self.head_log_mae)
            .zip(&self.mean_log_mae)
        {
            writeln!(f, "{model:<width$}  {head:>9.4}  {mean:>14.4}")?;
        }
        writeln!(
            f,
            "{:<width$}  {:>9.4}  {:>14.4}",
            "all", self.head_log_mae_mean, self.mean_log_mae_mean
        )?;
        write!(
            f,
            "(for reference, each model's mean on the prompt's task: {:.4})",
            self.task_mean_log_mae_mean
        )
    }
}

/// Per record, `ln(tokens)` of each model, `None` where the record has no length for it.
pub fn log_lengths(records: &[Record], models: &[String]) -> Vec<Vec<Option<f64>>> {
    records
        .iter()
        .map(|r| {
            models
                .iter()
                .map(|m| r.output_tokens.get(m).map(|&t| (t.max(1) as f64).ln()))
                .collect()
        })
        .collect()
}

/// Whether every record has an output length for every model: the data a length head needs.
pub fn has_lengths(records: &[Record], models: &[String]) -> bool {
    !records.is_empty()
        && records
            .iter()
            .all(|r| models.iter().all(|m| r.output_tokens.contains_key(m)))
}

/// Fits the head on `x` (embeddings) and `y` (log lengths), choosing the ridge strength on the
/// records at every seventh index (a fixed share, as the embeddings come in shuffled order).
pub fn fit(x: &[Vec<f32>], y: &[Vec<Option<f64>>]) -> Result<LengthFit> {
    let (tune, fit_on): (Vec<usize>, Vec<usize>) = (0..x.len()).partition(|i| i % 7 == 3);
    let pick = |index: &[usize]| -> (Vec<Vec<f32>>, Vec<Vec<Option<f64>>>) {
        (
            index.iter().map(|&i| x[i].clone()).collect(),
            index.iter().map(|&i| y[i].clone()).collect(),
        )
    };
    let ((fit_x, fit_y), (tune_x, tune_y)) = (pick(&fit_on), pick(&tune));
    let mut best: Option<(f64, f64)> = None;
    for strength in RIDGE_STRENGTHS {
        let error = mean(&log_mae(
            &fit_with(&fit_x, &fit_y, strength)?,
            &tune_x,
            &tune_y,
        ));
        if best.is_none_or(|(_, e)| error < e) {
            best = Some((strength, error));
        }
    }
    let strength = best.map_or(RIDGE_STRENGTHS[0], |(s, _)| s);
    fit_with(x, y, strength)
}

/// The ridge fit at one strength, each model on the records that have its length.
pub fn fit_with(x: &[Vec<f32>], y: &[Vec<Option<f64>>], strength: f64) -> Result<LengthFit> {
    let dim = x.first().map_or(0, Vec::len);
    let models = y.first().map_or(0, Vec::len);
    let mut fit = LengthFit {
        weights: Vec::with_capacity(models),
        biases: Vec::with_capacity(models),
        strength,
    };
    for model in 0..models {
        let rows: Vec<(&[f32], f64)> = x
            .iter()
            .zip(y)
            .filter_map(|(xi, yi)| yi[model].map(|t| (xi.as_slice(), t)))
            .collect();
        if rows.is_empty() {
            return Err(TrainingError::Invalid(format!(
                "no output lengths for model column {model}"
            )));
        }
        let (weights, bias) = ridge(&rows, dim, strength)?;
        fit.weights.push(weights);
        fit.biases.push(bias);
    }
    Ok(fit)
}

/// Ridge regression with an unpenalised intercept: centre, solve `(XᵀX + λnI) w = Xᵀy`.
fn ridge(rows: &[(&[f32], f64)], dim: usize, strength: f64) -> Result<(Vec<f32>, f32)> {
    let n = rows.len() as f64;
    let mut x_mean = vec![0.0; dim];
    let mut y_mean = 0.0;
    for (xi, yi) in rows {
        x_mean
            .iter_mut()
            .zip(*xi)
            .for_each(|(m, v)| *m += f64::from(*v) / n);
        y_mean += yi / n;
    }
    let mut gram = vec![0.0; dim * dim];
    let mut rhs = vec![0.0; dim];
    let mut centred = vec![0.0; dim];
    for (xi, yi) in rows {
        centred
            .iter_mut()
            .zip(*xi)
            .zip(&x_mean)
            .for_each(|((c, v), m)| *c = f64::from(*v) - m);
        for a in 0..dim {
            rhs[a] += centred[a] * (yi - y_mean);
            let row = &mut gram[a * dim..a * dim + a + 1];
            row.iter_mut()
                .zip(&centred)
                .for_each(|(g, c)| *g += centred[a] * c);
        }
    }
    (0..dim).for_each(|a| gram[a * dim + a] += strength * n);
    let weights = cholesky_solve(&mut gram, rhs, dim)?;
    let bias = y_mean - weights.iter().zip(&x_mean).map(|(w, m)| w * m).sum::<f64>();
    Ok((weights.iter().map(|&w| w as f32).collect(), bias as f32))
}

/// Solves `A w = b` for a symmetric positive definite `A` given by its lower triangle (row-major
/// `dim × dim`), which is overwritten by its Cholesky factor.
fn cholesky_solve(a: &mut [f64], mut b: Vec<f64>, dim: usize) -> Result<Vec<f64>> {
    for j in 0..dim {
        let diagonal =
            a[j * dim + j] - (0..j).map(|k| a[j * dim + k] * a[j * dim + k]).sum::<f64>();
        if diagonal <= 0.0 || !diagonal.is_finite() {
            return Err(TrainingError::Invalid(
                "the length regression's system is not positive definite".into(),
            ));
        }
        let diagonal = diagonal.sqrt();
        a[j * dim + j] = diagonal;
        for i in j + 1..dim {
            let dot: f64 = (0..j).map(|k| a[i * dim + k] * a[j * dim + k]).sum();
            a[i * dim + j] = (a[i * dim + j] - dot) / diagonal;
        }
    }
    for i in 0..dim {
        b[i] = (b[i] - (0..i).map(|k| a[i * dim + k] * b[k]).sum::<f64>()) / a[i * dim + i];
    }
    for i in (0..dim).rev() {
        b[i] = (b[i] - (i + 1..dim).map(|k| a[k * dim + i] * b[k]).sum::<f64>()) / a[i * dim + i];
    }
    Ok(b)
}

impl LengthFit {
    /// Predicted `ln(tokens)` of each model for one embedding.
    pub fn predict_log(&self, x: &[f32]) -> Vec<f64> {
        self.weights
            .iter()
            .zip(&self.biases)
            .map(|(w, b)| {
                f64::from(*b)
                    + w.iter()
                        .zip(x)
                        .map(|(w, v)| f64::from(*w) * f64::from(*v))
                        .sum::<f64>()
            })
            .collect()
    }

    /// The per-model mean of the training side: the fit with every weight at zero.
    pub fn per_model_mean(y: &[Vec<Option<f64>>], dim: usize) -> LengthFit {
        let models = y.first().map_or(0, Vec::len);
        let biases = (0..models)
            .map(|m| {
                let seen: Vec<f64> = y.iter().filter_map(|row| row[m]).collect();
                (seen.iter().sum::<f64>() / seen.len().max(1) as f64) as f32
            })
            .collect();
        LengthFit {
            weights: vec![vec![0.0; dim]; models],
            biases,
            strength: f64::INFINITY,
        }
    }

    /// The head's tensors as [`router_core::LengthHead`] reads them (`layers.0.weight`, `layers.0.bias`), on
    /// the CPU; the manifest's shape for it is [`LengthFit::shape`].
    pub fn to_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let dim = self.weights.first().map_or(0, Vec::len);
        let flat: Vec<f32> = self.weights.iter().flatten().copied().collect();
        Ok(HashMap::from([
            (
                "layers.0.weight".to_string(),
                Tensor::from_vec(flat, (self.weights.len(), dim), &Device::Cpu)?,
            ),
            (
                "layers.0.bias".to_string(),
                Tensor::from_vec(self.biases.clone(), self.biases.len(), &Device::Cpu)?,
            ),
        ]))
    }

    /// The head's shape for the manifest's `output_length`: linear, no hidden layer.
    pub fn shape() -> HeadConfig {
        HeadConfig { hidden: Vec::new() }
    }
}

/// Mean absolute `ln(tokens)` error of `fit` on each model, over the records that have its length.
pub fn log_mae(fit: &LengthFit, x: &[Vec<f32>], y: &[Vec<Option<f64>>]) -> Vec<f64> {
    let models = fit.biases.len();
    let (mut sums, mut counts) = (vec![0.0; models], vec![0usize; models]);
    for (xi, yi) in x.iter().zip(y) {
        for (m, predicted) in fit.predict_log(xi).into_iter().enumerate() {
            if let Some(actual) = yi[m] {
                sums[m] += (predicted - actual).abs();
                counts[m] += 1;
            }
        }
    }
    sums.iter()
        .zip(&counts)
        .map(|(s, &c)| s / c.max(1) as f64)
        .collect()
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// The training and the held-out side of a length measurement: log lengths and tasks.
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    /// `ln(tokens)` per record and model ([`log_lengths`]).
    pub y: &'a [Vec<Option<f64>>],
    /// Each record's task.
    pub tasks: &'a [&'a str],
}

/// Measures `fit` on held-out embeddings `x` against the per-model mean (and, for reference, the
/// per-task mean) of the training side.
pub fn report(
    fit: &LengthFit,
    train: Side<'_>,
    x: &[Vec<f32>],
    held: Side<'_>,
    models: &[String],
) -> LengthReport {
    let dim = fit.weights.first().map_or(0, Vec::len);
    let head_log_mae = log_mae(fit, x, held.y);
    let mean_log_mae = log_mae(&LengthFit::per_model_mean(train.y, dim), x, held.y);
    LengthReport {
        models: models.to_vec(),
        head_log_mae_mean: mean(&head_log_mae),
        mean_log_mae_mean: mean(&mean_log_mae),
        task_mean_log_mae_mean: mean(&task_mean_log_mae(train, held)),
        head_log_mae,
        mean_log_mae,
    }
}

/// Reports of several folds pooled into one, each weighted by its number of held-out records.
pub fn pooled(reports: &[(usize, LengthReport)]) -> LengthReport {
    let total = reports.iter().map(|(n, _)| *n).sum::<usize>().max(1) as f64;
    let weighted = |value: &dyn Fn(&LengthReport) -> f64| {
        reports
            .iter()
            .map(|(n, r)| *n as f64 * value(r))
            .sum::<f64>()
            / total
    };
    let models = reports
        .first()
        .map(|(_, r)| r.models.clone())
        .unwrap_or_default();
    let per_model = |values: &dyn Fn(&LengthReport) -> &Vec<f64>| -> Vec<f64> {
        (0..models.len())
            .map(|m| weighted(&|r| values(r)[m]))
            .collect()
    };
    LengthReport {
        head_log_mae: per_model(&|r| &r.head_log_mae),
        mean_log_mae: per_model(&|r| &r.mean_log_mae),
        head_log_mae_mean: weighted(&|r| r.head_log_mae_mean),
        mean_log_mae_mean: weighted(&|r| r.mean_log_mae_mean),
        task_mean_log_mae_mean: weighted(&|r| r.task_mean_log_mae_mean),
        models,
    }
}

/// Per model, the mean absolute error of predicting each held-out length by the training side's
/// mean for the same task (the overall mean for a task the training side lacks).
fn task_mean_log_mae(train: Side<'_>, held: Side<'_>) -> Vec<f64> {
    let overall = LengthFit::per_model_mean(train.y, 0).biases;
    (0..overall.len())
        .map(|m| {
            let task_mean = |task: &str| {
                let seen: Vec<f64> = train
                    .y
                    .iter()
                    .zip(train.tasks)
                    .filter(|(_, t)| **t == task)
                    .filter_map(|(row, _)| row[m])
                    .collect();
                if seen.is_empty() {
                    f64::from(overall[m])
                } else {
                    seen.iter().sum::<f64>() / seen.len() as f64
                }
            };
            let errors: Vec<f64> = held
                .y
                .iter()
                .zip(held.tasks)
                .filter_map(|(row, task)| row[m].map(|a| (a - task_mean(task)).abs()))
                .collect();
            mean(&errors)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ridge_recovers_a_linear_law_and_beats_the_mean() {
        // ln(tokens) = 2 + 3·x0 − x1 for model 0; model 1 is constant.
        let x: Vec<Vec<f32>> = (0..200)
            .map(|i| vec![(i % 13) as f32 / 13.0, (i % 7) as f32 / 7.0])
            .collect();
        let y: Vec<Vec<Option<f64>>> = x
            .iter()
            .map(|v| {
                vec![
                    Some(2.0 + 3.0 * f64::from(v[0]) - f64::from(v[1])),
                    Some(4.0),
                ]
            })
            .collect();
        let fit = fit_with(&x, &y, 1e-9).unwrap();
        assert!((fit.weights[0][0] - 3.0).abs() < 1e-3 && (fit.weights[0][1] + 1.0).abs() < 1e-3);
        assert!((fit.biases[0] - 2.0).abs() < 1e-3 && (fit.biases[1] - 4.0).abs() < 1e-3);
        let tasks = vec![""; y.len()];
        let side = Side {
            y: &y,
            tasks: &tasks,
        };
        let report = report(&fit, side, &x, side, &["a".into(), "b".into()]);
        // The tensors load as the router's LengthHead and predict exp of the fitted law.
        let vb = router_core::candle_nn::VarBuilder::from_tensors(
            fit.to_tensors().unwrap(),
            router_core::candle_core::DType::F32,
            &Device::Cpu,
        );
        let head = router_core::LengthHead::load(vb, &LengthFit::shape(), 2, 2).unwrap();
        let tokens = head.predict(&[vec![0.5, 0.0]], &Device::Cpu).unwrap();
        assert!(
            (tokens[0][0] - 3.5f32.exp()).abs() < 1e-2 && (tokens[0][1] - 4f32.exp()).abs() < 1e-2,
            "{tokens:?}"
        );
        assert!(report.head_log_mae[0] < 1e-3 && report.mean_log_mae[0] > 0.5);
        assert!(report.mean_log_mae[1] < 1e-9);
    }
}
