//! Baselines a trained router must beat.
//!
//! - **kNN** ([`knn`]): the predicted quality of a test prompt is the mean score of its `k` nearest
//!   training prompts by cosine similarity of their embeddings. Its predictions go through the same
//!   band router and AIQ as the trained head's.
//! - **random** ([`random`]): each prompt goes to a uniformly random model (seeded). Reported: the
//!   quality and cost of that one seeded routing, and as its AIQ the AIQ of the hull of the single
//!   models plus the *expected* point of uniform random routing (the mean of the single models'
//!   points). That point lies inside the single models' hull, so this AIQ equals
//!   [`crate::metrics::single_models_aiq`]: mixing models at random can reach nothing that mixing
//!   whole models cannot. It is reported anyway so the table reads the same for every router.
//! - **per-task best** ([`task_best`]): each prompt goes to the model that is best on its task in
//!   the *training* data ([`metrics::best_single`] over that task's training prompts); a task the
//!   training data lacks goes to the best model over all of it. The task is known for every
//!   benchmark prompt, so a router that cannot beat this rule adds nothing a lookup table would not.
//! - **always-best** is the best single model, in the report as `best_single`.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainingError};
use crate::metrics::{self, Matrix, Point};

/// The default number of neighbours of [`knn`].
pub const DEFAULT_K: usize = 10;

/// Out-of-fold [`knn`] predictions with [`DEFAULT_K`]: each prompt is predicted from the prompts
/// of the other folds (`fold_of[i]` is prompt `i`'s fold, in `0..folds`), so the baseline never
/// sees a prompt's own scores. A fold with no other prompts to learn from keeps empty rows.
///
/// ```
/// use router_training::baselines::knn_out_of_fold;
/// let embeddings = [vec![1.0, 0.0], vec![1.0, 0.1], vec![0.0, 1.0]];
/// let scores = [vec![1.0], vec![0.0], vec![0.5]];
/// let predictions = knn_out_of_fold(&embeddings, &scores, &[0, 1, 1], 2).unwrap();
/// // Prompt 0 learns from prompts 1 and 2 only; prompts 1 and 2 from prompt 0 only.
/// assert_eq!(predictions, [vec![0.25], vec![1.0], vec![1.0]]);
/// ```
pub fn knn_out_of_fold(
    embeddings: &[Vec<f32>],
    scores: &[Vec<f64>],
    fold_of: &[usize],
    folds: usize,
) -> Result<Vec<Vec<f32>>> {
    let mut predictions = vec![Vec::new(); embeddings.len()];
    for fold in 0..folds {
        let (held, kept): (Vec<usize>, Vec<usize>) =
            (0..embeddings.len()).partition(|&i| fold_of[i] == fold);
        if held.is_empty() || kept.is_empty() {
            continue;
        }
        let train_x: Vec<Vec<f32>> = kept.iter().map(|&i| embeddings[i].clone()).collect();
        let train_y: Vec<Vec<f64>> = kept.iter().map(|&i| scores[i].clone()).collect();
        let test_x: Vec<Vec<f32>> = held.iter().map(|&i| embeddings[i].clone()).collect();
        for (&i, row) in held
            .iter()
            .zip(knn(&train_x, &train_y, &test_x, DEFAULT_K)?)
        {
            predictions[i] = row;
        }
    }
    Ok(predictions)
}

/// kNN predictions for every test prompt: the mean train scores (one column per model, in the
/// order of `train_scores`) of its `k` nearest train prompts by cosine similarity.
///
/// Neighbours are ranked by similarity, ties by lower train index, so the result is deterministic.
/// A zero embedding has similarity 0 to everything. With fewer than `k` train prompts all are used.
///
/// ```
/// use router_training::baselines::knn;
/// let train = [vec![1.0, 0.0], vec![0.0, 1.0], vec![1.0, 1.0]];
/// let scores = [vec![1.0, 0.0], vec![0.0, 1.0], vec![0.5, 0.5]];
/// // [1, 0.1] is nearest to [1, 0], then to [1, 1].
/// let predictions = knn(&train, &scores, &[vec![1.0, 0.1]], 2).unwrap();
/// assert_eq!(predictions, [vec![0.75, 0.25]]);
/// ```
pub fn knn(
    train_embeddings: &[Vec<f32>],
    train_scores: &[Vec<f64>],
    test_embeddings: &[Vec<f32>],
    k: usize,
) -> Result<Vec<Vec<f32>>> {
    let invalid = |message: String| Err(TrainingError::Invalid(format!("kNN: {message}")));
    if k == 0 || train_embeddings.is_empty() {
        return invalid("needs k >= 1 and at least one train prompt".into());
    }
    if train_embeddings.len() != train_scores.len() {
        return invalid(format!(
            "{} train embeddings, {} score rows",
            train_embeddings.len(),
            train_scores.len()
        ));
    }
    let dimension = train_embeddings[0].len();
    if let Some(other) = train_embeddings
        .iter()
        .chain(test_embeddings)
        .find(|e| e.len() != dimension)
    {
        return invalid(format!(
            "embeddings of dimension {} and {dimension}",
            other.len()
        ));
    }
    let models = train_scores[0].len();
    if train_scores
        .iter()
        .any(|row| row.len() != models || !row.iter().all(|s| s.is_finite()))
    {
        return invalid("train score rows must all have the same width and be finite".into());
    }
    let train: Vec<Vec<f32>> = train_embeddings.iter().map(|e| unit(e)).collect();
    let k = k.min(train.len());
    Ok(test_embeddings
        .par_iter()
        .map(|embedding| {
            let query = unit(embedding);
            let mut neighbours: Vec<(f32, usize)> = train
                .iter()
                .enumerate()
                .map(|(index, t)| (dot(&query, t), index))
                .collect();
            let nearest_first =
                |a: &(f32, usize), b: &(f32, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
            neighbours.select_nth_unstable_by(k - 1, nearest_first);
            let mut mean = vec![0.0f64; models];
            for &(_, index) in &neighbours[..k] {
                for (sum, score) in mean.iter_mut().zip(&train_scores[index]) {
                    *sum += score;
                }
            }
            mean.iter().map(|sum| (sum / k as f64) as f32).collect()
        })
        .collect())
}

fn unit(vector: &[f32]) -> Vec<f32> {
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 && norm.is_finite() {
        vector.iter().map(|x| x / norm).collect()
    } else {
        vec![0.0; vector.len()]
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The per-task-best rule (see the module docs): for each of `test_tasks`, the index of the model
/// with the best mean score on the `train` prompts of that task (ties by lower mean cost, then by
/// name, as [`metrics::best_single`]), or on all of `train` for a task it lacks. `train_tasks` has
/// one task per prompt of `train`.
///
/// ```
/// use router_training::baselines::task_best;
/// use router_training::metrics::Matrix;
/// let train = Matrix::new(
///     vec!["coder".into(), "writer".into()],
///     vec![vec![1.0, 0.0], vec![1.0, 0.0], vec![0.0, 1.0]],
///     vec![vec![1.0, 1.0]; 3],
/// )
/// .unwrap();
/// let choices = task_best(&train, &["code", "code", "prose"], &["prose", "code", "unseen"]).unwrap();
/// assert_eq!(choices, [1, 0, 0]);
/// ```
pub fn task_best(train: &Matrix, train_tasks: &[&str], test_tasks: &[&str]) -> Result<Vec<usize>> {
    if train_tasks.len() != train.len() {
        return Err(TrainingError::Invalid(format!(
            "{} tasks for {} training prompts",
            train_tasks.len(),
            train.len()
        )));
    }
    let mut rows_of_task: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (row, task) in train_tasks.iter().enumerate() {
        rows_of_task.entry(task).or_default().push(row);
    }
    let best_of_task = rows_of_task
        .into_iter()
        .map(|(task, rows)| Ok((task, metrics::best_single(&train.select(&rows)?).0)))
        .collect::<Result<BTreeMap<&str, usize>>>()?;
    let overall = metrics::best_single(train).0;
    Ok(test_tasks
        .iter()
        .map(|task| best_of_task.get(task).copied().unwrap_or(overall))
        .collect())
}

/// Out-of-fold [`task_best`] choices on `test` itself: each prompt's model is learned from the
/// prompts of the other folds (`fold_of[i]` in `0..folds`, as for [`knn_out_of_fold`]). A fold with
/// no other prompts to learn from goes to model 0.
pub fn task_best_out_of_fold(
    test: &Matrix,
    tasks: &[&str],
    fold_of: &[usize],
    folds: usize,
) -> Result<Vec<usize>> {
    if tasks.len() != test.len() || fold_of.len() != test.len() {
        return Err(TrainingError::Invalid(format!(
            "{} tasks and {} folds for {} prompts",
            tasks.len(),
            fold_of.len(),
            test.len()
        )));
    }
    let mut choices = vec![0; test.len()];
    for fold in 0..folds {
        let (held, kept): (Vec<usize>, Vec<usize>) =
            (0..test.len()).partition(|&i| fold_of[i] == fold);
        if held.is_empty() || kept.is_empty() {
            continue;
        }
        let kept_tasks: Vec<&str> = kept.iter().map(|&i| tasks[i]).collect();
        let held_tasks: Vec<&str> = held.iter().map(|&i| tasks[i]).collect();
        for (&i, choice) in
            held.iter()
                .zip(task_best(&test.select(&kept)?, &kept_tasks, &held_tasks)?)
        {
            choices[i] = choice;
        }
    }
    Ok(choices)
}

/// What the random baseline reports (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RandomBaseline {
    /// AIQ of the single models plus the expected point of uniform random routing.
    pub aiq: f64,
    /// Mean score of the seeded random routing.
    pub quality: f64,
    /// Mean cost (USD per prompt) of the seeded random routing.
    pub cost: f64,
}

/// One uniformly random model per prompt, from a ChaCha8 RNG seeded with `seed`.
pub fn random_choices(prompts: usize, models: usize, seed: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..prompts)
        .map(|_| rng.random_range(0..models.max(1)))
        .collect()
}

/// The random baseline on `test` (see the module docs).
pub fn random(test: &Matrix, seed: u64) -> RandomBaseline {
    let choices = random_choices(test.len(), test.models().len(), seed);
    // The choices are one model index per prompt, so the routing is valid.
    let routed = metrics::routing_point(test, &choices).unwrap_or(Point {
        quality: 0.0,
        cost: 0.0,
    });
    let singles = metrics::single_model_points(test);
    let count = singles.len() as f64;
    let expected = Point {
        quality: singles.iter().map(|p| p.quality).sum::<f64>() / count,
        cost: singles.iter().map(|p| p.cost).sum::<f64>() / count,
    };
    let mut points = singles;
    points.push(expected);
    RandomBaseline {
        aiq: metrics::aiq_over_single_range(test, &points),
        quality: routed.quality,
        cost: routed.cost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knn_means_the_nearest_scores_with_ties_by_index() {
        let train = [
            vec![1.0, 0.0],
            vec![2.0, 0.0],
            vec![0.0, 1.0],
            vec![0.0, 0.0],
        ];
        let scores = [
            vec![1.0, 0.0],
            vec![0.0, 1.0],
            vec![0.5, 0.5],
            vec![0.0, 0.0],
        ];
        // [3, 0] is equally similar to train 0 and 1: k = 1 takes the lower index.
        assert_eq!(
            knn(&train, &scores, &[vec![3.0, 0.0]], 1).unwrap(),
            [vec![1.0, 0.0]]
        );
        assert_eq!(
            knn(&train, &scores, &[vec![3.0, 0.0]], 2).unwrap(),
            [vec![0.5, 0.5]]
        );
        // Similarities to [0, 1]: 0, 0, 1, 0 (zero vector): train 2, then 0 and 1 by index.
        assert_eq!(
            knn(&train, &scores, &[vec![0.0, 1.0]], 3).unwrap(),
            [vec![0.5, 0.5]]
        );
        // k beyond the train set uses all of it.
        assert_eq!(
            knn(&train, &scores, &[vec![0.0, 1.0]], 99).unwrap(),
            [vec![0.375, 0.375]]
        );
        assert!(knn(&train, &scores, &[vec![1.0]], 1).is_err());
        assert!(knn(&train, &scores[..2], &[vec![1.0, 0.0]], 1).is_err());
        assert!(knn(&train, &scores, &[vec![1.0, 0.0]], 0).is_err());
    }

    #[test]
    fn random_is_seeded_and_its_aiq_is_the_single_models_aiq() {
        assert_eq!(random_choices(50, 3, 1), random_choices(50, 3, 1));
        assert_ne!(random_choices(50, 3, 1), random_choices(50, 3, 2));
        assert!(random_choices(50, 3, 1).iter().all(|&c| c < 3));
        let test = Matrix::new(
            vec!["big".into(), "small".into()],
            vec![vec![1.0, 1.0], vec![1.0, 0.0], vec![1.0, 0.0]],
            vec![vec![1.0, 0.1]; 3],
        )
        .unwrap();
        let baseline = random(&test, 3);
        assert!((baseline.aiq - metrics::single_models_aiq(&test)).abs() < 1e-12);
        let choices = random_choices(3, 2, 3);
        assert_eq!(
            Point {
                quality: baseline.quality,
                cost: baseline.cost
            },
            metrics::routing_point(&test, &choices).unwrap()
        );
    }
}
