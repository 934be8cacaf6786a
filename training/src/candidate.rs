//! Adding an underlying model to a trained bundle from a few graded samples, without retraining.
//!
//! A bundle's head ends in one output row per model: `logit_m = w_m · h + b_m`, where `h` is the
//! last hidden layer's activation (the embedding itself for a linear head). [`add_candidate`]
//! keeps the encoder and every layer bit for bit, computes `h` for the sample prompts, and fits
//! one more row `(w, b)` for the new model:
//!
//! - **loss**: the mean sigmoid cross-entropy against the sample scores (soft labels in [0, 1],
//!   as training uses), plus `λ/2 · |(w, b) − (w₀, b₀)|²`;
//! - **prior** `(w₀, b₀)`: the mean of the existing rows — on routing data the models' successes
//!   are strongly correlated (a hard prompt is hard for all), so the average model is the best
//!   guess before any sample — with its bias shifted so that its mean prediction on the samples
//!   equals their mean score, pulled slightly toward ½: `(Σ score + ½) / (n + 1)` (this keeps the
//!   shift finite when every sample scored 0 or 1). With few samples the fit stays near this
//!   prior; with many, the data move it;
//! - **λ**: chosen from the grid `s × 10^{1, 0.5, 0, …, −4}` by `k`-fold cross-validation (5 folds,
//!   folds from a seeded shuffle) on held-out cross-entropy, where `s` is the mean squared norm of
//!   `(h, 1)` over the samples, so the grid does not depend on the scale of the features. The
//!   prior is re-fitted (re-shifted) on each fold's training part. The *one-standard-error rule*
//!   picks the strongest regularisation whose held-out loss is within one standard error of the
//!   lowest (the error of the per-sample differences, paired): on RouterBench the lowest-loss λ
//!   alone now and then chose an almost unregularised row from a noisy, flat loss curve and did
//!   worse on the validation split. Below [`MIN_CV_SAMPLES`] samples there is no
//!   cross-validation and λ is the largest value of the grid;
//! - **solver**: Newton's method with backtracking in `f64` (the problem is strictly convex), so
//!   the fit is deterministic and exact to the solver's tolerance.
//!
//! The new bundle (a new *version*) has the model appended to `router.json`'s models (its column
//! is the last), the head's last layer one row longer, the catalog entry appended to
//! `catalog.toml`, and the model card and training record noting the addition with the sample
//! count and fit statistics.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use router_core::candle_core::{DType, Device, Tensor};
use router_core::config::files;
use router_core::{EncoderConfig, Router, RouterConfig};
use router_policy::{Catalog, ModelSpec};
use serde::Serialize;
use serde_json::Value;

use crate::embed;
use crate::error::{Result, TrainingError};
use crate::grade::{read_json_objects, RowSkip};

/// Below this many samples λ is not cross-validated: the largest value of the grid is used.
pub const MIN_CV_SAMPLES: usize = 10;

/// The catalog file of a bundle.
const CATALOG: &str = "catalog.toml";

/// One graded sample: a prompt and the new model's score on it, in [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// The prompt.
    pub prompt: String,
    /// The score in [0, 1].
    pub score: f64,
}

/// Reads samples from a JSON-lines file of objects with a string `prompt` and a number `score`
/// in [0, 1] (other fields are ignored: the output of `model-router grade` reads as it is).
/// Lines that are not such objects are skipped and returned with their line numbers.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("graded.jsonl");
/// std::fs::write(&path, "{\"prompt\": \"2+2?\", \"score\": 1.0, \"output\": \"4\"}\n{\"prompt\": \"x\", \"score\": 2}\n")?;
/// let (samples, skipped) = router_training::candidate::read_samples(&path)?;
/// assert_eq!(samples.len(), 1);
/// assert_eq!((skipped[0].line, skipped[0].reason.as_str()), (2, "score 2 is not in [0, 1]"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn read_samples(path: &Path) -> Result<(Vec<Sample>, Vec<RowSkip>)> {
    let (rows, mut skipped) = read_json_objects(path)?;
    let mut samples = Vec::with_capacity(rows.len());
    for (line, object) in rows {
        let prompt = match object.get("prompt") {
            Some(Value::String(prompt)) => prompt.clone(),
            Some(_) => {
                skipped.push(RowSkip {
                    line,
                    reason: "field \"prompt\" is not a string".into(),
                });
                continue;
            }
            None => {
                skipped.push(RowSkip {
                    line,
                    reason: "no field \"prompt\"".into(),
                });
                continue;
            }
        };
        match object.get("score") {
            Some(Value::Number(n)) => match n.as_f64() {
                Some(score) if (0.0..=1.0).contains(&score) => {
                    samples.push(Sample { prompt, score })
                }
                _ => skipped.push(RowSkip {
                    line,
                    reason: format!("score {n} is not in [0, 1]"),
                }),
            },
            Some(_) => skipped.push(RowSkip {
                line,
                reason: "field \"score\" is not a number".into(),
            }),
            None => skipped.push(RowSkip {
                line,
                reason: "no field \"score\"".into(),
            }),
        }
    }
    skipped.sort_by_key(|s| s.line);
    Ok((samples, skipped))
}

/// Settings of the row fit. [`FitOptions::default`] is what `candidate add` uses.
#[derive(Debug, Clone, PartialEq)]
pub struct FitOptions {
    /// Cross-validation folds.
    pub folds: usize,
    /// The λ grid, as multiples of the mean squared feature norm, largest first.
    pub lambdas: Vec<f64>,
    /// Seed of the fold assignment.
    pub seed: u64,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            folds: 5,
            lambdas: (0..=10).map(|k| 10f64.powf(1.0 - 0.5 * k as f64)).collect(),
            seed: 42,
        }
    }
}

/// A fitted output row and how it was chosen.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RowFit {
    /// The row's weights, one per feature.
    pub weights: Vec<f64>,
    /// The row's bias.
    pub bias: f64,
    /// The regularisation strength used (absolute, not relative to the feature scale).
    pub lambda: f64,
    /// `lambda` as a multiple of the mean squared feature norm (a value of the grid).
    pub relative_lambda: f64,
    /// How λ was chosen: `"cross-validation"` or `"too few samples"`.
    pub lambda_rule: String,
    /// The shift added to the prior's bias (the mean of the existing biases).
    pub prior_shift: f64,
    /// Samples fitted.
    pub samples: usize,
    /// Their mean score.
    pub mean_score: f64,
    /// The fitted row's mean prediction on them.
    pub mean_prediction: f64,
    /// Cross-entropy of the fitted row on the samples.
    pub train_log_loss: f64,
    /// Cross-validated cross-entropy of the chosen λ (when cross-validated).
    pub cv_log_loss: Option<f64>,
    /// Cross-validated cross-entropy of the shifted prior alone.
    pub cv_log_loss_prior: Option<f64>,
    /// Cross-validated cross-entropy of a constant prediction (the fold's mean score).
    pub cv_log_loss_constant: Option<f64>,
}

/// `log(1 + e^z)`, without overflow.
fn softplus(z: f64) -> f64 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// Cross-entropy of logit `z` against a soft label `y`.
fn log_loss(z: f64, y: f64) -> f64 {
    softplus(z) - y * z
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The bias shift that makes the mean of `σ(z_i + δ)` equal `target` (bisection: monotone in δ).
fn shift_to_mean(logits: &[f64], target: f64) -> f64 {
    let mean_at =
        |d: f64| logits.iter().map(|z| sigmoid(z + d)).sum::<f64>() / logits.len().max(1) as f64;
    let (mut lo, mut hi) = (-50.0, 50.0);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mean_at(mid) < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// In-place Cholesky factorisation of the symmetric positive definite `a` (`d × d`, row-major,
/// lower triangle read and written); `false` if it is not positive definite.
fn cholesky(a: &mut [f64], d: usize) -> bool {
    for j in 0..d {
        let mut diag = a[j * d + j];
        for k in 0..j {
            diag -= a[j * d + k] * a[j * d + k];
        }
        if diag <= 0.0 || !diag.is_finite() {
            return false;
        }
        let diag = diag.sqrt();
        a[j * d + j] = diag;
        for i in j + 1..d {
            let mut v = a[i * d + j];
            for k in 0..j {
                v -= a[i * d + k] * a[j * d + k];
            }
            a[i * d + j] = v / diag;
        }
    }
    true
}

/// Solves `L Lᵀ x = b` with the factor from [`cholesky`].
fn cholesky_solve(l: &[f64], d: usize, b: &[f64]) -> Vec<f64> {
    let mut y = b.to_vec();
    for i in 0..d {
        let mut v = y[i];
        for k in 0..i {
            v -= l[i * d + k] * y[k];
        }
        y[i] = v / l[i * d + i];
    }
    for i in (0..d).rev() {
        let mut v = y[i];
        for k in i + 1..d {
            v -= l[k * d + i] * y[k];
        }
        y[i] = v / l[i * d + i];
    }
    y
}

/// Minimises `mean_i CE(θ·x_i, y_i) + λ/2 |θ − θ₀|²` by Newton's method with backtracking, from
/// `start`. Rows of `x` carry the constant 1 of the bias as their last value.
fn newton(x: &[&[f64]], y: &[f64], prior: &[f64], lambda: f64, start: &[f64]) -> Vec<f64> {
    let d = prior.len();
    let n = x.len().max(1) as f64;
    let objective = |theta: &[f64]| {
        let data: f64 = x
            .iter()
            .zip(y)
            .map(|(xi, yi)| log_loss(dot(theta, xi), *yi))
            .sum::<f64>()
            / n;
        let penalty: f64 = theta
            .iter()
            .zip(prior)
            .map(|(t, p)| (t - p) * (t - p))
            .sum();
        data + 0.5 * lambda * penalty
    };
    let mut theta = start.to_vec();
    let mut current = objective(&theta);
    let mut hessian = vec![0.0; d * d];
    for _ in 0..100 {
        let mut gradient: Vec<f64> = theta
            .iter()
            .zip(prior)
            .map(|(t, p)| lambda * (t - p))
            .collect();
        hessian.iter_mut().for_each(|h| *h = 0.0);
        for j in 0..d {
            hessian[j * d + j] = lambda;
        }
        for (xi, yi) in x.iter().zip(y) {
            let p = sigmoid(dot(&theta, xi));
            let (g, w) = ((p - yi) / n, p * (1.0 - p) / n);
            for (j, &xj) in xi.iter().enumerate() {
                if xj == 0.0 {
                    continue;
                }
                gradient[j] += g * xj;
                let a = w * xj;
                let row = &mut hessian[j * d..j * d + j + 1];
                for (h, xk) in row.iter_mut().zip(xi.iter()) {
                    *h += a * xk;
                }
            }
        }
        if !cholesky(&mut hessian, d) {
            break;
        }
        let step = cholesky_solve(&hessian, d, &gradient);
        let decrease = dot(&gradient, &step);
        let mut t = 1.0;
        let mut accepted = false;
        while t > 1e-10 {
            let candidate: Vec<f64> = theta.iter().zip(&step).map(|(a, s)| a - t * s).collect();
            let value = objective(&candidate);
            if value <= current - 1e-4 * t * decrease {
                theta = candidate;
                current = value;
                accepted = true;
                break;
            }
            t *= 0.5;
        }
        let size = step.iter().fold(0.0f64, |m, s| m.max((t * s).abs()));
        if !accepted || size < 1e-10 {
            break;
        }
    }
    theta
}

/// The mean score pulled toward ½ that the prior's bias is shifted to match.
fn prior_target(y: &[f64]) -> f64 {
    (y.iter().sum::<f64>() + 0.5) / (y.len() as f64 + 1.0)
}

/// The prior `(w₀, b₀ + δ)` for samples `x`, `y`: `base` with its bias shifted.
fn shifted_prior(base: &[f64], x: &[&[f64]], y: &[f64]) -> (Vec<f64>, f64) {
    let logits: Vec<f64> = x.iter().map(|xi| dot(base, xi)).collect();
    let shift = shift_to_mean(&logits, prior_target(y));
    let mut prior = base.to_vec();
    if let Some(bias) = prior.last_mut() {
        *bias += shift;
    }
    (prior, shift)
}

/// Fits one output row on `features` (one row of activations per sample) to `scores`, with L2
/// regularisation towards `prior_weights` / `prior_bias` (shifted, see the module docs).
///
/// ```
/// use router_training::candidate::{fit_row, FitOptions};
/// // One feature that decides the score; the prior knows nothing (zero weights).
/// let features: Vec<Vec<f64>> = (0..40).map(|i| vec![if i % 2 == 0 { 1.0 } else { 0.0 }]).collect();
/// let scores: Vec<f64> = (0..40).map(|i| if i % 2 == 0 { 1.0 } else { 0.0 }).collect();
/// let fit = fit_row(&features, &scores, &[0.0], 0.0, &FitOptions::default())?;
/// assert!(fit.weights[0] > 1.0, "the signal is learnt: {fit:?}");
/// assert!(fit.cv_log_loss.unwrap() < fit.cv_log_loss_constant.unwrap());
/// # Ok::<(), router_training::TrainingError>(())
/// ```
pub fn fit_row(
    features: &[Vec<f64>],
    scores: &[f64],
    prior_weights: &[f64],
    prior_bias: f64,
    options: &FitOptions,
) -> Result<RowFit> {
    check_fit_input(features, scores, prior_weights.len(), &options.lambdas)?;
    let n = features.len();
    // Rows with the bias's constant 1 appended.
    let rows: Vec<Vec<f64>> = features
        .iter()
        .map(|f| f.iter().copied().chain(std::iter::once(1.0)).collect())
        .collect();
    let x: Vec<&[f64]> = rows.iter().map(Vec::as_slice).collect();
    let base: Vec<f64> = prior_weights
        .iter()
        .copied()
        .chain(std::iter::once(prior_bias))
        .collect();
    let scale = rows.iter().map(|r| dot(r, r)).sum::<f64>() / n as f64;
    let mut grid = options.lambdas.clone();
    grid.sort_by(|a, b| b.total_cmp(a));

    let cv = cross_validate(&x, scores, &base, &grid, scale, options);
    let relative_lambda = cv.as_ref().map_or(grid[0], |c| c.relative_lambda);
    let lambda = relative_lambda * scale;
    let (prior, prior_shift) = shifted_prior(&base, &x, scores);
    let mut theta = prior.clone();
    // The same path as in cross-validation, so the chosen λ's fit is reached the same way.
    for relative in grid.iter().take_while(|r| **r >= relative_lambda) {
        theta = newton(&x, scores, &prior, relative * scale, &theta);
    }
    let logits: Vec<f64> = x.iter().map(|xi| dot(&theta, xi)).collect();
    let bias = theta.pop().unwrap_or(0.0);
    Ok(RowFit {
        weights: theta,
        bias,
        lambda,
        relative_lambda,
        lambda_rule: if cv.is_some() {
            "cross-validation".into()
        } else {
            "too few samples".into()
        },
        prior_shift,
        samples: n,
        mean_score: scores.iter().sum::<f64>() / n as f64,
        mean_prediction: logits.iter().map(|z| sigmoid(*z)).sum::<f64>() / n as f64,
        train_log_loss: logits
            .iter()
            .zip(scores)
            .map(|(z, y)| log_loss(*z, *y))
            .sum::<f64>()
            / n as f64,
        cv_log_loss: cv.as_ref().map(|c| c.fitted),
        cv_log_loss_prior: cv.as_ref().map(|c| c.prior),
        cv_log_loss_constant: cv.as_ref().map(|c| c.constant),
    })
}

/// Rejects what [`fit_row`] cannot fit: no samples, feature rows and scores that do not pair up,
/// rows not as wide as the prior, non-finite values, and a λ grid that is not all positive.
fn check_fit_input(
    features: &[Vec<f64>],
    scores: &[f64],
    width: usize,
    lambdas: &[f64],
) -> Result<()> {
    let n = features.len();
    if n == 0 || n != scores.len() {
        return Err(TrainingError::Invalid(format!(
            "{n} feature rows for {} scores; need at least one sample",
            scores.len()
        )));
    }
    if let Some(bad) = features.iter().find(|f| f.len() != width) {
        return Err(TrainingError::Invalid(format!(
            "a feature row has {} values, the prior {width}",
            bad.len()
        )));
    }
    if let Some(bad) = scores
        .iter()
        .chain(features.iter().flatten())
        .find(|v| !v.is_finite())
    {
        return Err(TrainingError::Invalid(format!(
            "a sample has the non-finite value {bad}"
        )));
    }
    if lambdas.is_empty() || lambdas.iter().any(|l| !(l.is_finite() && *l > 0.0)) {
        return Err(TrainingError::Invalid(
            "the λ grid must be positive numbers".into(),
        ));
    }
    Ok(())
}

/// What cross-validation chose and measured (the losses as [`RowFit`] reports them).
struct CrossValidation {
    /// The chosen entry of the λ grid.
    relative_lambda: f64,
    /// The held-out loss at the chosen λ.
    fitted: f64,
    /// The held-out loss of the shifted prior alone.
    prior: f64,
    /// The held-out loss of the training folds' mean score as a constant prediction.
    constant: f64,
}

/// Cross-validates the λ grid (sorted from the strongest regularisation down); `None` when there
/// are too few samples or folds for it.
fn cross_validate(
    x: &[&[f64]],
    scores: &[f64],
    base: &[f64],
    grid: &[f64],
    scale: f64,
    options: &FitOptions,
) -> Option<CrossValidation> {
    let n = x.len();
    let folds = options.folds.min(n);
    if n < MIN_CV_SAMPLES || folds < 2 {
        return None;
    }
    let fold_of = assign_folds(n, folds, options.seed);
    let held_out = held_out_losses(x, scores, base, grid, scale, &fold_of, folds);
    let mean_loss: Vec<f64> = held_out
        .losses
        .iter()
        .map(|l| l.iter().sum::<f64>() / n as f64)
        .collect();
    let chosen = one_standard_error_choice(&held_out.losses, &mean_loss);
    Some(CrossValidation {
        relative_lambda: grid[chosen],
        fitted: mean_loss[chosen],
        prior: held_out.prior_loss / n as f64,
        constant: held_out.constant_loss / n as f64,
    })
}

/// The fold of every sample: a seeded shuffle dealt round-robin into `folds` folds.
fn assign_folds(n: usize, folds: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let mut fold_of = vec![0; n];
    for (position, &i) in order.iter().enumerate() {
        fold_of[i] = position % folds;
    }
    fold_of
}

/// Held-out log losses of one cross-validation run.
struct HeldOutLosses {
    /// The loss of every sample at every λ of the grid (`losses[λ][sample]`).
    losses: Vec<Vec<f64>>,
    /// The shifted prior's loss, summed over the samples.
    prior_loss: f64,
    /// The loss of the training folds' mean score as a constant prediction, summed.
    constant_loss: f64,
}

/// Every sample's loss when its fold is held out: the fit along the λ path on the other folds,
/// the shifted prior and the constant prediction.
fn held_out_losses(
    x: &[&[f64]],
    scores: &[f64],
    base: &[f64],
    grid: &[f64],
    scale: f64,
    fold_of: &[usize],
    folds: usize,
) -> HeldOutLosses {
    let n = x.len();
    let mut losses = vec![vec![0.0; n]; grid.len()];
    let (mut prior_loss, mut constant_loss) = (0.0, 0.0);
    for fold in 0..folds {
        let (train_x, train_y): (Vec<&[f64]>, Vec<f64>) = (0..n)
            .filter(|i| fold_of[*i] != fold)
            .map(|i| (x[i], scores[i]))
            .unzip();
        let held: Vec<usize> = (0..n).filter(|i| fold_of[*i] == fold).collect();
        let (prior, _) = shifted_prior(base, &train_x, &train_y);
        prior_loss += held
            .iter()
            .map(|&i| log_loss(dot(&prior, x[i]), scores[i]))
            .sum::<f64>();
        let mean = (train_y.iter().sum::<f64>() / train_y.len() as f64).clamp(1e-6, 1.0 - 1e-6);
        constant_loss += held
            .iter()
            .map(|&i| log_loss((mean / (1.0 - mean)).ln(), scores[i]))
            .sum::<f64>();
        // Warm starts along the path, from the strongest regularisation down.
        let mut theta = prior.clone();
        for (k, relative) in grid.iter().enumerate() {
            theta = newton(&train_x, &train_y, &prior, relative * scale, &theta);
            for &i in &held {
                losses[k][i] = log_loss(dot(&theta, x[i]), scores[i]);
            }
        }
    }
    HeldOutLosses {
        losses,
        prior_loss,
        constant_loss,
    }
}

/// The index of the chosen λ given every sample's held-out loss at every λ and their means.
fn one_standard_error_choice(losses: &[Vec<f64>], mean_loss: &[f64]) -> usize {
    let n = losses.first().map_or(0, Vec::len);
    // The lowest held-out loss (on a tie the stronger regularisation, the earlier entry) ...
    let best = mean_loss.iter().enumerate().fold(
        0,
        |best, (k, loss)| if *loss < mean_loss[best] { k } else { best },
    );
    // ... then the one-standard-error rule: the strongest regularisation whose loss is within
    // one standard error of the best, the error of the per-sample differences (paired).
    (0..=best)
        .find(|&k| {
            let d: Vec<f64> = losses[k]
                .iter()
                .zip(&losses[best])
                .map(|(a, b)| a - b)
                .collect();
            let m = d.iter().sum::<f64>() / n as f64;
            let se = (d.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n as f64 - 1.0)).sqrt()
                / (n as f64).sqrt();
            m <= se
        })
        .unwrap_or(best)
}

/// Settings of [`add_candidate`].
#[derive(Debug, Clone)]
pub struct AddOptions {
    /// The new model's name (its column in the new bundle).
    pub name: String,
    /// Its catalog entry; required when the bundle ships a `catalog.toml`.
    pub catalog_entry: Option<ModelSpec>,
    /// The new bundle's version; `None` bumps it (see [`next_version`]).
    pub version: Option<String>,
    /// The row fit's settings.
    pub fit: FitOptions,
    /// Where BERT embeddings are cached.
    pub cache_dir: PathBuf,
    /// Describes the samples for the model card (e.g. the file name).
    pub samples_source: String,
}

impl AddOptions {
    /// Options for adding `name`, with the default fit and cache and no catalog entry.
    pub fn new(name: impl Into<String>) -> Self {
        AddOptions {
            name: name.into(),
            catalog_entry: None,
            version: None,
            fit: FitOptions::default(),
            cache_dir: embed::cache_dir(),
            samples_source: "graded samples".into(),
        }
    }
}

/// What [`add_candidate`] wrote.
#[derive(Debug)]
pub struct AddOutcome {
    /// The new bundle, loaded.
    pub router: Router,
    /// The fit of the new row.
    pub fit: RowFit,
    /// The bundle's version before.
    pub previous_version: String,
    /// The new bundle's version.
    pub version: String,
}

/// The next version after `current`: today's date (UTC, `YYYY-MM-DD`) when it sorts after
/// `current`, else `current` with a `.N` suffix counted up (`2026-11-23` → `2026-11-23.1` →
/// `2026-11-23.2`).
///
/// ```
/// use router_training::candidate::next_version;
/// assert_eq!(next_version("2026-11-23", "2026-11-24"), "2026-11-24");
/// assert_eq!(next_version("2026-11-23", "2026-11-23"), "2026-11-23.1");
/// assert_eq!(next_version("2026-11-23.1", "2026-11-23"), "2026-11-23.2");
/// assert_eq!(next_version("v7", "2026-11-23"), "v7.1");
/// ```
pub fn next_version(current: &str, today: &str) -> String {
    let looks_like_date = |v: &str| {
        v.len() >= 10
            && v.as_bytes()[..10].iter().enumerate().all(|(i, b)| {
                if i == 4 || i == 7 {
                    *b == b'-'
                } else {
                    b.is_ascii_digit()
                }
            })
    };
    if looks_like_date(current) && today > current && !current.starts_with(today) {
        return today.to_string();
    }
    match current.rsplit_once('.') {
        Some((stem, n)) if !stem.is_empty() && n.parse::<u64>().is_ok() => {
            format!("{stem}.{}", n.parse::<u64>().map(|n| n + 1).unwrap_or(1))
        }
        _ => format!("{current}.1"),
    }
}

/// Today's date in UTC as `YYYY-MM-DD`.
pub fn today_utc() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TrainingError + '_ {
    move |source| TrainingError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn to_rows(tensor: &Tensor) -> Result<Vec<Vec<f64>>> {
    Ok(tensor.to_dtype(DType::F64)?.to_vec2::<f64>()?)
}

/// Adds the model `options.name` to the bundle in `bundle_dir` from `samples` (prompts with the
/// model's scores) and writes the new bundle version to `out_dir` (see the module docs).
pub fn add_candidate(
    bundle_dir: &Path,
    samples: &[Sample],
    options: &AddOptions,
    out_dir: &Path,
) -> Result<AddOutcome> {
    let router = Router::load(bundle_dir)?;
    let config = router.config().clone();
    check_addition(bundle_dir, &config, samples, options, out_dir)?;
    let name = options.name.as_str();
    let catalog = CatalogAddition::read(bundle_dir, name, options)?;

    // Frozen features: the activations that feed the output layer.
    let prompts: Vec<&str> = samples.iter().map(|s| s.prompt.as_str()).collect();
    let features = frozen_features(&router, &prompts, &options.cache_dir)?;
    let width = features.first().map_or(0, Vec::len);
    let mut layer = OutputLayer::load(bundle_dir, &config, width)?;
    let (prior_weights, prior_bias) = layer.prior(width)?;
    let scores: Vec<f64> = samples.iter().map(|s| s.score).collect();
    let fit = fit_row(&features, &scores, &prior_weights, prior_bias, &options.fit)?;
    layer.append_row(&fit, width)?;

    let previous_version = config.version.clone();
    let version = options
        .version
        .clone()
        .unwrap_or_else(|| next_version(&previous_version, &today_utc()));
    if version == previous_version {
        return Err(TrainingError::Invalid(format!(
            "the new version must differ from the bundle's ({version})"
        )));
    }
    let new_config = added_config(&config, bundle_dir, &version, &fit, options);

    // Write the new bundle: the files we do not change are copied byte for byte.
    copy_unchanged_files(bundle_dir, out_dir)?;
    new_config.save(out_dir)?;
    layer.save(out_dir)?;
    catalog.write(out_dir, &version, fit.samples)?;
    let card_path = bundle_dir.join(files::MODEL_CARD);
    let card = std::fs::read_to_string(&card_path).unwrap_or_default();
    let new_card = out_dir.join(files::MODEL_CARD);
    std::fs::write(
        &new_card,
        model_card(&card, &config, &new_config, &fit, options),
    )
    .map_err(io_error(&new_card))?;

    let new_router = Router::load(out_dir)?;
    check_old_columns(&router, &new_router, &prompts)?;
    Ok(AddOutcome {
        router: new_router,
        fit,
        previous_version,
        version,
    })
}

/// Rejects an addition before any work: a bad or taken name, an untrained head, no samples, or
/// an output directory that is the bundle itself.
fn check_addition(
    bundle_dir: &Path,
    config: &RouterConfig,
    samples: &[Sample],
    options: &AddOptions,
    out_dir: &Path,
) -> Result<()> {
    let name = options.name.trim();
    if name.is_empty() || name != options.name {
        return Err(TrainingError::Invalid(format!(
            "the model name {:?} is empty or has surrounding spaces",
            options.name
        )));
    }
    if config.models.iter().any(|m| m == name) {
        return Err(TrainingError::DuplicateModel(name.to_string()));
    }
    if !config.is_trained() {
        return Err(TrainingError::Invalid(format!(
            "{}: the head was never trained; train it first",
            bundle_dir.display()
        )));
    }
    if samples.is_empty() {
        return Err(TrainingError::Invalid(
            "no samples: adding a model needs graded prompts".into(),
        ));
    }
    let same_dir = match (
        std::fs::canonicalize(bundle_dir),
        std::fs::canonicalize(out_dir),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same_dir {
        return Err(TrainingError::Invalid(
            "--out must be a new directory: a bundle version is never rewritten in place".into(),
        ));
    }
    Ok(())
}

/// The bundle's `catalog.toml` (if it ships one) and the new model's entry for it.
struct CatalogAddition {
    /// Where the bundle's catalog is (or would be).
    path: PathBuf,
    /// Its text, when the bundle ships one.
    text: Option<String>,
    /// The new model's entry, given exactly when the bundle ships a catalog.
    entry: Option<ModelSpec>,
}

impl CatalogAddition {
    /// Reads the bundle's catalog and checks that `options` has an entry for `name` exactly when
    /// there is a catalog.
    fn read(bundle_dir: &Path, name: &str, options: &AddOptions) -> Result<Self> {
        let path = bundle_dir.join(CATALOG);
        let text = if path.is_file() {
            Some(std::fs::read_to_string(&path).map_err(io_error(&path))?)
        } else {
            None
        };
        let entry = match (&text, &options.catalog_entry) {
            (Some(_), None) => {
                return Err(TrainingError::Invalid(format!(
                    "{} needs an entry for {name}: give its prices and context window",
                    path.display()
                )))
            }
            (None, Some(_)) => {
                return Err(TrainingError::Invalid(format!(
                    "{} has no catalog.toml to add prices to",
                    bundle_dir.display()
                )))
            }
            (_, entry) => entry.clone(),
        };
        if let Some(entry) = &entry {
            if entry.name != name {
                return Err(TrainingError::Invalid(format!(
                    "the catalog entry is for {:?}, the model is {name:?}",
                    entry.name
                )));
            }
            entry.validate()?;
        }
        Ok(Self { path, text, entry })
    }

    /// Writes the old catalog with the new entry appended to `out_dir`, checking that it parses.
    fn write(self, out_dir: &Path, version: &str, samples: usize) -> Result<()> {
        let (Some(text), Some(entry)) = (self.text, self.entry) else {
            return Ok(());
        };
        let body =
            toml::to_string(&Catalog::new(vec![entry])).map_err(|e| TrainingError::Format {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        let text = format!(
            "{}\n# Added in version {version} by `model-router candidate add` ({samples} samples).\n{body}",
            text.trim_end(),
        );
        let path = out_dir.join(CATALOG);
        Catalog::from_toml_str(&text).map_err(|e| TrainingError::Format {
            path: path.clone(),
            message: e.to_string(),
        })?;
        std::fs::write(&path, text).map_err(io_error(&path))
    }
}

/// The activations that feed the output layer, one row per prompt (embeddings cached).
fn frozen_features(router: &Router, prompts: &[&str], cache_dir: &Path) -> Result<Vec<Vec<f64>>> {
    let fingerprint = embed::encoder_fingerprint(router.config(), router.encoder());
    let embeddings = embed::embed_cached(router.encoder(), fingerprint, prompts, cache_dir)?;
    let flat: Vec<f32> = embeddings.iter().flatten().copied().collect();
    let input = Tensor::from_vec(
        flat,
        (embeddings.len(), router.encoder().dim()),
        router.device(),
    )?;
    to_rows(&router.head().forward_hidden(&input)?)
}

/// The head's tensors as stored, with its output layer picked out.
struct OutputLayer {
    /// All of the head's tensors.
    tensors: HashMap<String, Tensor>,
    weight_key: String,
    bias_key: String,
    /// The output layer's weights, one row per model.
    weight: Tensor,
    /// The output layer's biases.
    bias: Tensor,
}

impl OutputLayer {
    /// Loads the bundle's head and checks that its output layer maps `width` activations to
    /// the configured models.
    fn load(bundle_dir: &Path, config: &RouterConfig, width: usize) -> Result<Self> {
        let path = bundle_dir.join(files::HEAD);
        let tensors =
            router_core::candle_core::safetensors::load(&path, &Device::Cpu).map_err(|e| {
                TrainingError::Format {
                    path: path.clone(),
                    message: e.to_string(),
                }
            })?;
        let last = config.head.hidden.len();
        let (weight_key, bias_key) = (
            format!("layers.{last}.weight"),
            format!("layers.{last}.bias"),
        );
        let missing = |key: &str| TrainingError::Format {
            path: path.clone(),
            message: format!("no tensor {key:?}"),
        };
        let weight = tensors
            .get(&weight_key)
            .ok_or_else(|| missing(&weight_key))?
            .clone();
        let bias = tensors
            .get(&bias_key)
            .ok_or_else(|| missing(&bias_key))?
            .clone();
        let models = config.models.len();
        if weight.dims() != [models, width] || bias.dims() != [models] {
            return Err(TrainingError::Format {
                path: path.clone(),
                message: format!(
                    "the output layer is {:?} + {:?}, expected [{models}, {width}] + [{models}]",
                    weight.dims(),
                    bias.dims(),
                ),
            });
        }
        Ok(Self {
            tensors,
            weight_key,
            bias_key,
            weight,
            bias,
        })
    }

    /// The prior for a new row: the mean of the existing rows and of their biases.
    fn prior(&self, width: usize) -> Result<(Vec<f64>, f64)> {
        let rows = to_rows(&self.weight)?;
        let biases: Vec<f64> = self.bias.to_dtype(DType::F64)?.to_vec1()?;
        let count = rows.len() as f64;
        let prior_weights: Vec<f64> = (0..width)
            .map(|j| rows.iter().map(|r| r[j]).sum::<f64>() / count)
            .collect();
        let prior_bias = biases.iter().sum::<f64>() / count;
        Ok((prior_weights, prior_bias))
    }

    /// The new output layer: the old rows as they are, the fitted one appended.
    fn append_row(&mut self, fit: &RowFit, width: usize) -> Result<()> {
        let new_row: Vec<f32> = fit.weights.iter().map(|w| *w as f32).collect();
        let new_row =
            Tensor::from_vec(new_row, (1, width), &Device::Cpu)?.to_dtype(self.weight.dtype())?;
        let new_bias = Tensor::from_vec(vec![fit.bias as f32], 1, &Device::Cpu)?
            .to_dtype(self.bias.dtype())?;
        self.tensors.insert(
            self.weight_key.clone(),
            Tensor::cat(&[&self.weight, &new_row], 0)?,
        );
        self.tensors.insert(
            self.bias_key.clone(),
            Tensor::cat(&[&self.bias, &new_bias], 0)?,
        );
        Ok(())
    }

    /// Writes all tensors as the head of the bundle in `out_dir`.
    fn save(&self, out_dir: &Path) -> Result<()> {
        let new_head = out_dir.join(files::HEAD);
        router_core::candle_core::safetensors::save(&self.tensors, &new_head).map_err(|e| {
            TrainingError::Format {
                path: new_head.clone(),
                message: e.to_string(),
            }
        })
    }
}

/// The new bundle's configuration: `options.name` appended to the models, the new version, the
/// encoder still found, and the addition recorded in the training details.
fn added_config(
    config: &RouterConfig,
    bundle_dir: &Path,
    version: &str,
    fit: &RowFit,
    options: &AddOptions,
) -> RouterConfig {
    let name = options.name.as_str();
    let mut new_config = config.clone();
    new_config.models.push(name.to_string());
    new_config.version = version.to_string();
    // A BERT encoder given by a path relative to the bundle must still be found from the new one.
    if let EncoderConfig::Bert {
        path: Some(path), ..
    } = &mut new_config.encoder
    {
        if path.is_relative() {
            *path = std::fs::canonicalize(bundle_dir.join(&*path))
                .unwrap_or_else(|_| bundle_dir.join(&*path));
        }
    }
    let addition = serde_json::json!({
        "model": name,
        "version": version,
        "previous_version": config.version,
        "samples": options.samples_source,
        "method": "one output row fitted on frozen penultimate activations: L2-regularised logistic regression towards the mean of the existing rows, bias shifted to the samples' mean score",
        "fit": fit,
    });
    if let Some(training) = new_config.training.as_mut() {
        if !training.details.is_object() {
            training.details = serde_json::json!({ "previous_details": training.details });
        }
        if let Some(details) = training.details.as_object_mut() {
            match details.get_mut("added_models") {
                Some(Value::Array(list)) => list.push(addition),
                _ => {
                    details.insert("added_models".into(), Value::Array(vec![addition]));
                }
            }
        }
    }
    new_config
}

/// Copies the bundle's files that the addition leaves unchanged, byte for byte, to `out_dir`.
fn copy_unchanged_files(bundle_dir: &Path, out_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(out_dir).map_err(io_error(out_dir))?;
    let rewritten = [files::MANIFEST, files::HEAD, files::MODEL_CARD, CATALOG];
    for entry in std::fs::read_dir(bundle_dir).map_err(io_error(bundle_dir))? {
        let entry = entry.map_err(io_error(bundle_dir))?;
        let file_name = entry.file_name();
        if !entry.path().is_file() || rewritten.iter().any(|r| file_name == *r) {
            continue;
        }
        std::fs::copy(entry.path(), out_dir.join(&file_name)).map_err(io_error(&entry.path()))?;
    }
    Ok(())
}

/// The new bundle must score the old columns as the old one did.
fn check_old_columns(router: &Router, new_router: &Router, prompts: &[&str]) -> Result<()> {
    let check: Vec<&str> = prompts.iter().take(16).copied().collect();
    let (before, after) = (router.score_batch(&check)?, new_router.score_batch(&check)?);
    for (b, a) in before.iter().zip(&after) {
        if a.len() != b.len() + 1 || b.iter().zip(a).any(|(x, y)| (x - y).abs() > 1e-5) {
            return Err(TrainingError::Invalid(
                "the new bundle changed the scores of the existing models; this is a bug".into(),
            ));
        }
    }
    Ok(())
}

fn model_card(
    card: &str,
    old: &RouterConfig,
    new: &RouterConfig,
    fit: &RowFit,
    options: &AddOptions,
) -> String {
    let old_title = format!("# {} ({})", old.name, old.version);
    let new_title = format!("# {} ({})", new.name, new.version);
    let old_models = format!("- Models (head columns): {}", old.models.join(", "));
    let new_models = format!("- Models (head columns): {}", new.models.join(", "));
    let mut card = if card.trim().is_empty() {
        format!("{new_title}\n\n{new_models}\n")
    } else {
        card.replacen(&old_title, &new_title, 1)
            .replacen(&old_models, &new_models, 1)
    };
    if !card.contains("\n## Added models") {
        card = format!(
            "{}\n\n## Added models\n\nModels added after training by `model-router candidate add`: the encoder and the other \
             columns are unchanged (bit for bit), the validation section above predates them.\n",
            card.trim_end()
        );
    }
    let cv = match (fit.cv_log_loss, fit.cv_log_loss_prior, fit.cv_log_loss_constant) {
        (Some(fitted), Some(prior), Some(constant)) => format!(
            "{}-fold cross-validated log loss: fitted {fitted:.4}, prior alone {prior:.4}, constant (mean score) {constant:.4}",
            options.fit.folds.min(fit.samples)
        ),
        _ => format!("fewer than {MIN_CV_SAMPLES} samples: no cross-validation, the strongest regularisation of the grid"),
    };
    format!(
        "{}\n\n### {} (version {})\n\n- Fitted from {} samples ({}), mean score {:.4}, mean prediction {:.4}\n\
         - Method: one output row on the frozen last hidden layer, logistic loss with L2 regularisation towards the mean of the \
         existing rows (bias shifted by {:+.4} to the samples' mean score)\n- λ = {:.4e} ({} × the mean squared feature norm, by {})\n\
         - {cv}; training log loss {:.4}\n",
        card.trim_end(),
        options.name,
        new.version,
        fit.samples,
        options.samples_source,
        fit.mean_score,
        fit.mean_prediction,
        fit.prior_shift,
        fit.lambda,
        fit.relative_lambda,
        fit.lambda_rule,
        fit.train_log_loss,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_solves() {
        let mut a = vec![4.0, 0.0, 2.0, 3.0];
        assert!(cholesky(&mut a, 2));
        let x = cholesky_solve(&a, 2, &[2.0, 5.0]);
        // [[4, 2], [2, 3]] x = [2, 5] -> x = [-0.5, 2].
        assert!(
            (x[0] + 0.5).abs() < 1e-12 && (x[1] - 2.0).abs() < 1e-12,
            "{x:?}"
        );
        assert!(
            !cholesky(&mut [1.0, 0.0, 2.0, 1.0], 2),
            "not positive definite"
        );
    }

    #[test]
    fn newton_matches_the_closed_form_of_one_parameter() {
        // One bias-only parameter, no regularisation to speak of: the logit of the mean.
        let rows = [[1.0], [1.0], [1.0], [1.0]];
        let x: Vec<&[f64]> = rows.iter().map(|r| r.as_slice()).collect();
        let theta = newton(&x, &[1.0, 1.0, 1.0, 0.0], &[0.0], 1e-12, &[0.0]);
        assert!((theta[0] - 3f64.ln()).abs() < 1e-8, "{theta:?}");
        // Strong regularisation keeps it at the prior.
        let theta = newton(&x, &[1.0, 1.0, 1.0, 0.0], &[0.25], 1e6, &[0.0]);
        assert!((theta[0] - 0.25).abs() < 1e-5, "{theta:?}");
    }

    #[test]
    fn prior_is_shifted_to_the_mean_score() {
        let features: Vec<Vec<f64>> = (0..6).map(|i| vec![i as f64 / 6.0]).collect();
        let scores = [1.0, 1.0, 1.0, 1.0, 0.0, 1.0];
        // Fewer than MIN_CV_SAMPLES: the strongest regularisation, so about the shifted prior.
        let fit = fit_row(&features, &scores, &[2.0], -3.0, &FitOptions::default()).unwrap();
        assert_eq!(fit.lambda_rule, "too few samples");
        assert!(fit.cv_log_loss.is_none());
        assert!((fit.mean_prediction - 5.5 / 7.0).abs() < 0.02, "{fit:?}");
        assert!(
            (fit.weights[0] - 2.0).abs() < 0.2,
            "stays near the prior: {fit:?}"
        );
        // All samples at 1: the shift stays finite.
        let fit = fit_row(&features, &[1.0; 6], &[0.0], 0.0, &FitOptions::default()).unwrap();
        assert!(fit.bias.is_finite() && fit.mean_prediction > 0.8, "{fit:?}");
    }

    #[test]
    fn the_fit_is_deterministic_and_checks_its_input() {
        let features: Vec<Vec<f64>> = (0..30)
            .map(|i| vec![(i % 3) as f64, (i % 5) as f64 / 5.0])
            .collect();
        let scores: Vec<f64> = (0..30)
            .map(|i| if i % 3 == 0 { 0.9 } else { 0.2 })
            .collect();
        let a = fit_row(&features, &scores, &[0.0, 0.0], 0.0, &FitOptions::default()).unwrap();
        let b = fit_row(&features, &scores, &[0.0, 0.0], 0.0, &FitOptions::default()).unwrap();
        assert_eq!(a, b);
        assert!(
            a.weights[0] < 0.0,
            "score falls with the first feature: {a:?}"
        );
        assert!(fit_row(
            &features,
            &scores[1..],
            &[0.0, 0.0],
            0.0,
            &FitOptions::default()
        )
        .is_err());
        assert!(fit_row(&features, &scores, &[0.0], 0.0, &FitOptions::default()).is_err());
        assert!(fit_row(&[], &[], &[0.0], 0.0, &FitOptions::default()).is_err());
        let nan = vec![vec![f64::NAN, 0.0]; 30];
        assert!(fit_row(&nan, &scores, &[0.0, 0.0], 0.0, &FitOptions::default()).is_err());
    }

    #[test]
    fn the_held_out_losses_are_means_per_sample_on_one_scale() {
        // Features without signal and scores of a fair coin: every predictor's held-out loss is
        // about ln 2 per sample, the fitted row's included (it was once divided by n twice).
        let features: Vec<Vec<f64>> = (0..40).map(|i| vec![((i * 7) % 5) as f64 / 5.0]).collect();
        let scores: Vec<f64> = (0..40).map(|i| (i % 2) as f64).collect();
        let fit = fit_row(&features, &scores, &[0.0], 0.0, &FitOptions::default()).unwrap();
        let (fitted, constant) = (fit.cv_log_loss.unwrap(), fit.cv_log_loss_constant.unwrap());
        for loss in [fitted, constant, fit.cv_log_loss_prior.unwrap()] {
            assert!((loss - std::f64::consts::LN_2).abs() < 0.2, "{fit:?}");
        }
    }
}
