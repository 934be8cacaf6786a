//! Evaluation metrics: quality and cost of a routing, best single, oracle, the band router, AIQ,
//! APGR / CPT and cost at parity (the words of `DESIGN.md`, "Evaluation: the words we use").
//!
//! Everything works on a [`Matrix`]: `n` test prompts × `m` models in a fixed column order, with
//! the score `s[i][m]` each model got, the cost `c[i][m]` it actually cost (USD), and the cost the
//! router *ranks* by (its estimate before sending; the actual cost unless estimates are given).
//!
//! **The band router** ([`band_choices`]): each prompt is decided by the policy's own band rule,
//! [`router_policy::choose_in_band`] (the function `Policy::decide` applies after its filters), with
//! every model a candidate at the matrix's routing cost: with `p*` the highest prediction, the
//! models with `p >= p* (1 - band)` are in the band and the cheapest wins, ties by higher
//! prediction, then by model name. The modes' bands are [`router_policy::Mode::band`]. So what
//! evaluation measures is what `serve` does, for a request that no filter narrows.
//!
//! **AIQ** ([`aiq`]), as RouterBench defines it: the (cost, quality) points of a band sweep (by
//! default the 101 bands 0, 0.01, …, 1) together with the single models' points; their
//! non-decreasing convex hull ([`upper_hull`]: dominated points dropped, then the upper concave
//! hull, linear between vertices, flat after the last); AIQ is the hull's mean quality over costs
//! from the cheapest to the most expensive single model (the cost axis scaled to [0, 1]). Below the
//! cheapest hull point quality counts as 0 (no router reaches that cost); this never happens when
//! the single models are among the points, since the cheapest one starts the range. When every
//! single model costs the same, AIQ is the hull's quality at that cost.
//!
//! **APGR / CPT** ([`PgrCurve`]), as RouteLLM defines them, for exactly two models: the *strong*
//! model has the higher mean score. The router ranks prompts by how much it prefers the strong
//! model (predicted strong minus predicted weak); sending the top `k` of `n` to the strong model
//! gives quality `q(k)`, and `PGR(k) = (q(k) - q_weak) / (q_strong - q_weak)` at the share `k/n`.
//! Prompts with equal preference are one group taken in a random order, so within a group each
//! prompt adds the group's mean gain (the expected value: no arbitrary tie order). APGR is the area
//! under PGR over the share in [0, 1], the exact trapezoid through all `n + 1` shares (RouteLLM's
//! paper averages 10 evenly spaced shares instead). `CPT(x)` is the smallest share `k/n` with
//! `PGR(k) >= x`.
//!
//! **Cost at parity** ([`cost_at_parity`]): on the hull of the router's own band-sweep points (a
//! mixture of two routers reaches any point between them), the lowest cost whose quality reaches
//! the best single model's; `None` if the router never does.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use router_policy::BandCandidate;

use crate::data::{estimate_cost, Price, Record};
use crate::error::{Result, TrainingError};

/// The bands of the default sweep: 0, 0.01, …, 1 (101 points).
pub fn sweep_bands() -> Vec<f64> {
    (0..=100).map(|step| f64::from(step) / 100.0).collect()
}

/// Mean quality and mean cost (USD per prompt) of a routing, or of one model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Mean score.
    pub quality: f64,
    /// Mean cost in USD per prompt.
    pub cost: f64,
}

/// Scores and costs of `n` test prompts × `m` models, in a fixed model order.
///
/// ```
/// use router_training::metrics::{self, Matrix, Point};
/// let test = Matrix::new(
///     vec!["big".into(), "small".into()],
///     vec![vec![1.0, 1.0], vec![1.0, 0.0]],
///     vec![vec![1.0, 0.1], vec![1.0, 0.1]],
/// )
/// .unwrap();
/// assert_eq!(metrics::best_single(&test), (0, Point { quality: 1.0, cost: 1.0 }));
/// // The first prompt goes to the cheaper of the two perfect answers.
/// assert!((metrics::oracle(&test).cost - 0.55).abs() < 1e-12);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    models: Vec<String>,
    scores: Vec<Vec<f64>>,
    costs: Vec<Vec<f64>>,
    routing_costs: Vec<Vec<f64>>,
}

impl Matrix {
    /// A test set from its model names, scores and actual costs (rows are prompts). The router
    /// ranks by the actual costs until [`Matrix::with_routing_costs`] gives estimates.
    ///
    /// Errors unless there is at least one prompt and one model, names are unique, every row has
    /// one value per model, scores are finite and costs finite and non-negative.
    pub fn new(models: Vec<String>, scores: Vec<Vec<f64>>, costs: Vec<Vec<f64>>) -> Result<Self> {
        if models.is_empty() || scores.is_empty() {
            return Err(TrainingError::Invalid(
                "a test set needs at least one prompt and one model".into(),
            ));
        }
        for (index, model) in models.iter().enumerate() {
            if models[..index].contains(model) {
                return Err(TrainingError::DuplicateModel(model.clone()));
            }
        }
        check_table(
            "scores",
            &scores,
            scores.len(),
            models.len(),
            f64::is_finite,
        )?;
        check_table("costs", &costs, scores.len(), models.len(), is_cost)?;
        Ok(Matrix {
            models,
            scores,
            routing_costs: costs.clone(),
            costs,
        })
    }

    /// Replaces the costs the router ranks by (its per-prompt estimates) with `routing_costs`.
    pub fn with_routing_costs(mut self, routing_costs: Vec<Vec<f64>>) -> Result<Self> {
        check_table(
            "routing costs",
            &routing_costs,
            self.len(),
            self.models.len(),
            is_cost,
        )?;
        self.routing_costs = routing_costs;
        Ok(self)
    }

    /// A test set from records, with `models` as the columns.
    ///
    /// Actual costs are the records' costs; where a record has none for a model, they are estimated
    /// from `prices` ([`estimate_cost`]). With `prices`, the router ranks by the estimates for every
    /// prompt (what a live router knows); without, by the actual costs (which a live router can only
    /// approximate: they include the length of an answer not yet written).
    pub fn from_records(
        records: &[Record],
        models: &[String],
        prices: Option<&BTreeMap<String, Price>>,
    ) -> Result<Self> {
        let price_of = |model: &String| {
            prices
                .and_then(|prices| prices.get(model))
                .ok_or_else(|| TrainingError::MissingPrice {
                    model: model.clone(),
                    source_name: "the price list".into(),
                })
        };
        let mut scores = Vec::with_capacity(records.len());
        let mut costs = Vec::with_capacity(records.len());
        for (index, record) in records.iter().enumerate() {
            let row_scores =
                models
                    .iter()
                    .map(|model| {
                        record.scores.get(model).copied().ok_or_else(|| {
                            TrainingError::MissingScore {
                                record: index,
                                model: model.clone(),
                            }
                        })
                    })
                    .collect::<Result<Vec<f64>>>()?;
            let row_costs = models
                .iter()
                .map(|model| match (record.costs.get(model), prices) {
                    (Some(cost), _) => Ok(*cost),
                    (None, Some(_)) => Ok(estimate_cost(&record.prompt, price_of(model)?)),
                    (None, None) => Err(TrainingError::MissingCost {
                        record: index,
                        model: model.clone(),
                    }),
                })
                .collect::<Result<Vec<f64>>>()?;
            scores.push(row_scores);
            costs.push(row_costs);
        }
        let matrix = Matrix::new(models.to_vec(), scores, costs)?;
        if prices.is_none() {
            return Ok(matrix);
        }
        let estimates = records
            .iter()
            .map(|record| {
                models
                    .iter()
                    .map(|model| Ok(estimate_cost(&record.prompt, price_of(model)?)))
                    .collect()
            })
            .collect::<Result<Vec<Vec<f64>>>>()?;
        matrix.with_routing_costs(estimates)
    }

    /// The model names, in column order.
    pub fn models(&self) -> &[String] {
        &self.models
    }

    /// Number of prompts.
    pub fn len(&self) -> usize {
        self.scores.len()
    }

    /// Always false: a matrix has at least one prompt.
    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }

    /// Scores, one row per prompt.
    pub fn scores(&self) -> &[Vec<f64>] {
        &self.scores
    }

    /// Actual costs (USD), one row per prompt.
    pub fn costs(&self) -> &[Vec<f64>] {
        &self.costs
    }

    /// The costs the router ranks by (USD), one row per prompt.
    pub fn routing_costs(&self) -> &[Vec<f64>] {
        &self.routing_costs
    }

    /// The test set of the prompts `rows` (indices, in that order): scores, costs and routing
    /// costs. Errors when `rows` is empty or names a prompt the matrix lacks.
    pub fn select(&self, rows: &[usize]) -> Result<Matrix> {
        if let Some(&row) = rows.iter().find(|&&row| row >= self.len()) {
            return Err(TrainingError::Invalid(format!(
                "row {row} of a test set of {} prompts",
                self.len()
            )));
        }
        let pick = |table: &[Vec<f64>]| rows.iter().map(|&row| table[row].clone()).collect();
        Matrix::new(self.models.clone(), pick(&self.scores), pick(&self.costs))?
            .with_routing_costs(pick(&self.routing_costs))
    }

    /// Errors unless `predictions` has one finite value per model for every prompt.
    pub fn check_predictions(&self, predictions: &[Vec<f32>]) -> Result<()> {
        check_table(
            "predictions",
            predictions,
            self.len(),
            self.models.len(),
            |p: f32| p.is_finite(),
        )
    }
}

fn is_cost(cost: f64) -> bool {
    cost.is_finite() && cost >= 0.0
}

fn check_table<T: Copy>(
    what: &str,
    table: &[Vec<T>],
    rows: usize,
    columns: usize,
    valid: impl Fn(T) -> bool,
) -> Result<()> {
    if table.len() != rows {
        return Err(TrainingError::Invalid(format!(
            "{what}: {} rows for {rows} prompts",
            table.len()
        )));
    }
    for (index, row) in table.iter().enumerate() {
        if row.len() != columns {
            return Err(TrainingError::Invalid(format!(
                "{what}: row {index} has {} values for {columns} models",
                row.len()
            )));
        }
        if !row.iter().all(|&value| valid(value)) {
            return Err(TrainingError::Invalid(format!(
                "{what}: row {index} has an invalid value"
            )));
        }
    }
    Ok(())
}

/// Mean actual score and cost when prompt `i` goes to model `choices[i]`.
///
/// Errors unless there is one choice per prompt, each a model index.
pub fn routing_point(test: &Matrix, choices: &[usize]) -> Result<Point> {
    if choices.len() != test.len() || choices.iter().any(|&choice| choice >= test.models.len()) {
        return Err(TrainingError::Invalid(format!(
            "{} choices among {} models for {} prompts",
            choices.len(),
            test.models.len(),
            test.len()
        )));
    }
    Ok(point_of(test, choices.iter().copied()))
}

/// Mean actual score and cost over the prompts `rows` when prompt `i` goes to model `choices[i]`
/// (`choices` has one entry per prompt of the whole test set).
///
/// Errors like [`routing_point`], and when `rows` is empty or names a prompt the matrix lacks.
///
/// ```
/// use router_training::metrics::{routing_point_over, Matrix, Point};
/// let test = Matrix::new(
///     vec!["big".into(), "small".into()],
///     vec![vec![1.0, 1.0], vec![1.0, 0.0]],
///     vec![vec![1.0, 0.1], vec![1.0, 0.1]],
/// )
/// .unwrap();
/// assert_eq!(routing_point_over(&test, &[1], &[1, 1]).unwrap(), Point { quality: 0.0, cost: 0.1 });
/// ```
pub fn routing_point_over(test: &Matrix, rows: &[usize], choices: &[usize]) -> Result<Point> {
    routing_point(test, choices)?;
    if rows.is_empty() || rows.iter().any(|&row| row >= test.len()) {
        return Err(TrainingError::Invalid(format!(
            "{} rows of a test set of {} prompts",
            rows.len(),
            test.len()
        )));
    }
    let (mut quality, mut cost) = (0.0, 0.0);
    for &row in rows {
        quality += test.scores[row][choices[row]];
        cost += test.costs[row][choices[row]];
    }
    let n = rows.len() as f64;
    Ok(Point {
        quality: quality / n,
        cost: cost / n,
    })
}

fn point_of(test: &Matrix, choices: impl Iterator<Item = usize>) -> Point {
    let (mut quality, mut cost) = (0.0, 0.0);
    for (prompt, choice) in choices.enumerate() {
        quality += test.scores[prompt][choice];
        cost += test.costs[prompt][choice];
    }
    let n = test.len() as f64;
    Point {
        quality: quality / n,
        cost: cost / n,
    }
}

/// Each model's mean score and cost, in column order.
pub fn single_model_points(test: &Matrix) -> Vec<Point> {
    (0..test.models.len())
        .map(|model| point_of(test, std::iter::repeat_n(model, test.len())))
        .collect()
}

/// The best single model (its index and point): highest mean score, ties by lower mean cost, then
/// by name.
pub fn best_single(test: &Matrix) -> (usize, Point) {
    let points = single_model_points(test);
    let best = (1..points.len()).fold(0, |best, model| {
        let (a, b) = (&points[model], &points[best]);
        let better = a.quality > b.quality
            || (a.quality == b.quality
                && (a.cost < b.cost
                    || (a.cost == b.cost && test.models[model] < test.models[best])));
        if better {
            model
        } else {
            best
        }
    });
    (best, points[best])
}

/// Per prompt, the cheapest (by actual cost) of the models with the highest score, ties by name.
pub fn oracle_choices(test: &Matrix) -> Vec<usize> {
    (0..test.len())
        .map(|prompt| {
            let (scores, costs) = (&test.scores[prompt], &test.costs[prompt]);
            (1..test.models.len()).fold(0, |best, model| {
                let better = scores[model] > scores[best]
                    || (scores[model] == scores[best]
                        && (costs[model] < costs[best]
                            || (costs[model] == costs[best]
                                && test.models[model] < test.models[best])));
                if better {
                    model
                } else {
                    best
                }
            })
        })
        .collect()
}

/// The oracle's quality and cost: [`oracle_choices`].
pub fn oracle(test: &Matrix) -> Point {
    point_of(test, oracle_choices(test).into_iter())
}

/// The band router's choice for every prompt, ranking by the matrix's routing costs.
pub fn band_choices(test: &Matrix, predictions: &[Vec<f32>], band: f64) -> Result<Vec<usize>> {
    test.check_predictions(predictions)?;
    Ok(band_choices_unchecked(test, predictions, band))
}

fn band_choices_unchecked(test: &Matrix, predictions: &[Vec<f32>], band: f64) -> Vec<usize> {
    let mut candidates = Vec::with_capacity(test.models.len());
    predictions
        .iter()
        .zip(&test.routing_costs)
        .map(|(predicted, costs)| {
            candidates.clear();
            candidates.extend(test.models.iter().zip(predicted).zip(costs).map(
                |((name, &q), &cost)| BandCandidate {
                    name,
                    predicted_quality: q,
                    estimated_cost: cost,
                },
            ));
            // Shapes are checked and predictions finite, so there is always a choice.
            router_policy::choose_in_band(&candidates, band).map_or(0, |choice| choice.chosen)
        })
        .collect()
}

/// The band router's (quality, cost) at each of `bands`.
pub fn band_sweep(test: &Matrix, predictions: &[Vec<f32>], bands: &[f64]) -> Result<Vec<Point>> {
    test.check_predictions(predictions)?;
    Ok(bands
        .iter()
        .map(|&band| {
            point_of(
                test,
                band_choices_unchecked(test, predictions, band).into_iter(),
            )
        })
        .collect())
}

/// The non-decreasing convex hull of `points`, by increasing cost: points dominated by a cheaper
/// (or equally cheap) point of at least the same quality are dropped, then points on or below the
/// segment joining their neighbours. Non-finite points are ignored.
///
/// ```
/// use router_training::metrics::{upper_hull, Point};
/// let p = |cost, quality| Point { cost, quality };
/// let hull = upper_hull(&[p(1.0, 0.5), p(2.0, 0.6), p(3.0, 0.9), p(4.0, 0.8)]);
/// assert_eq!(hull, [p(1.0, 0.5), p(3.0, 0.9)]);
/// ```
pub fn upper_hull(points: &[Point]) -> Vec<Point> {
    let mut sorted: Vec<Point> = points
        .iter()
        .copied()
        .filter(|p| p.cost.is_finite() && p.quality.is_finite())
        .collect();
    sorted.sort_by(|a, b| {
        a.cost
            .total_cmp(&b.cost)
            .then(b.quality.total_cmp(&a.quality))
    });
    let mut hull: Vec<Point> = Vec::new();
    for point in sorted {
        if hull
            .last()
            .is_some_and(|last| point.quality <= last.quality)
        {
            continue;
        }
        // Pop the last vertex while it lies on or below the segment from the one before to `point`.
        while let [.., before, last] = hull[..] {
            let cross = (last.cost - before.cost) * (point.quality - before.quality)
                - (last.quality - before.quality) * (point.cost - before.cost);
            if cross < 0.0 {
                break;
            }
            hull.pop();
        }
        hull.push(point);
    }
    hull
}

/// The hull's quality at `cost`: linear between vertices, flat after the last, 0 below the first.
fn hull_quality_at(hull: &[Point], cost: f64) -> f64 {
    match hull.iter().position(|vertex| vertex.cost >= cost) {
        None => hull.last().map_or(0.0, |last| last.quality),
        Some(0) if hull[0].cost > cost => 0.0,
        Some(0) => hull[0].quality,
        Some(next) => {
            let (a, b) = (hull[next - 1], hull[next]);
            a.quality + (b.quality - a.quality) * (cost - a.cost) / (b.cost - a.cost)
        }
    }
}

/// AIQ of `points`: the mean quality of their [`upper_hull`] over costs in `[min_cost, max_cost]`
/// (see the module docs).
///
/// Errors unless the costs are finite with `min_cost <= max_cost`.
///
/// ```
/// use router_training::metrics::{aiq, Point};
/// let p = |cost, quality| Point { cost, quality };
/// // The hull is the segment from (1, 0.5) to (3, 0.9): its mean is 0.7.
/// let singles = [p(1.0, 0.5), p(2.0, 0.6), p(3.0, 0.9)];
/// assert!((aiq(&singles, 1.0, 3.0).unwrap() - 0.7).abs() < 1e-12);
/// ```
pub fn aiq(points: &[Point], min_cost: f64, max_cost: f64) -> Result<f64> {
    if !(min_cost.is_finite() && max_cost.is_finite() && min_cost <= max_cost) {
        return Err(TrainingError::Invalid(format!(
            "AIQ cost range [{min_cost}, {max_cost}]"
        )));
    }
    let hull = upper_hull(points);
    if min_cost == max_cost {
        return Ok(hull_quality_at(&hull, min_cost));
    }
    let Some(first) = hull.first() else {
        return Ok(0.0);
    };
    // Quality is 0 below the first vertex, so the area starts there; the hull is continuous after.
    let start = first.cost.max(min_cost);
    if start >= max_cost {
        return Ok(0.0);
    }
    let mut breakpoints = vec![start];
    breakpoints.extend(
        hull.iter()
            .map(|v| v.cost)
            .filter(|&cost| cost > start && cost < max_cost),
    );
    breakpoints.push(max_cost);
    let area: f64 = breakpoints
        .windows(2)
        .map(|w| {
            (hull_quality_at(&hull, w[0]) + hull_quality_at(&hull, w[1])) / 2.0 * (w[1] - w[0])
        })
        .sum();
    Ok(area / (max_cost - min_cost))
}

/// The cheapest and the most expensive single model's mean cost: AIQ's cost range.
pub fn single_cost_range(test: &Matrix) -> (f64, f64) {
    single_model_points(test)
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(min, max), p| {
            (min.min(p.cost), max.max(p.cost))
        })
}

/// AIQ of a router: its `sweep` points together with the single models, over the single models'
/// cost range.
pub fn router_aiq(test: &Matrix, sweep: &[Point]) -> f64 {
    let mut points = single_model_points(test);
    points.extend_from_slice(sweep);
    aiq_over_single_range(test, &points)
}

/// AIQ of the single models alone: what mixing whole models achieves, the bar a router must clear.
pub fn single_models_aiq(test: &Matrix) -> f64 {
    aiq_over_single_range(test, &single_model_points(test))
}

pub(crate) fn aiq_over_single_range(test: &Matrix, points: &[Point]) -> f64 {
    let (min_cost, max_cost) = single_cost_range(test);
    // Matrix costs are finite and there is at least one model, so the range is valid.
    aiq(points, min_cost, max_cost).unwrap_or(0.0)
}

/// The lowest cost at which the hull of `router_points` reaches `target_quality`, interpolating
/// between hull vertices; `None` if it never does.
///
/// ```
/// use router_training::metrics::{cost_at_parity, Point};
/// let p = |cost, quality| Point { cost, quality };
/// // Halfway from (0.2, 0.5) to (0.6, 0.9) in quality is halfway in cost.
/// assert!((cost_at_parity(&[p(0.2, 0.5), p(0.6, 0.9)], 0.7).unwrap() - 0.4).abs() < 1e-12);
/// assert_eq!(cost_at_parity(&[p(0.2, 0.5)], 0.7), None);
/// ```
pub fn cost_at_parity(router_points: &[Point], target_quality: f64) -> Option<f64> {
    let hull = upper_hull(router_points);
    let reached = hull
        .iter()
        .position(|vertex| vertex.quality >= target_quality)?;
    if reached == 0 {
        return Some(hull[0].cost);
    }
    let (a, b) = (hull[reached - 1], hull[reached]);
    Some(a.cost + (b.cost - a.cost) * (target_quality - a.quality) / (b.quality - a.quality))
}

/// The weak and the strong model (column indices) of a two-model test set; `None` with other than
/// two models or when both have the same mean score.
pub fn weak_and_strong(test: &Matrix) -> Option<(usize, usize)> {
    let [first, second] = single_model_points(test)[..] else {
        return None;
    };
    if first.quality < second.quality {
        Some((0, 1))
    } else if second.quality < first.quality {
        Some((1, 0))
    } else {
        None
    }
}

/// The performance gap recovered as a function of the share of prompts sent to the strong model
/// (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct PgrCurve {
    /// Column of the weak model.
    pub weak: usize,
    /// Column of the strong model.
    pub strong: usize,
    /// `pgr[k]`: the gap recovered when the `k` most strong-preferred prompts go to the strong
    /// model (share `k / n`); `pgr[0] = 0`, `pgr[n] = 1`.
    pub pgr: Vec<f64>,
}

impl PgrCurve {
    /// The curve of a router whose preference for the strong model on prompt `i` is
    /// `predictions[i][strong] - predictions[i][weak]`. `None` unless [`weak_and_strong`] finds
    /// the two models.
    pub fn new(test: &Matrix, predictions: &[Vec<f32>]) -> Result<Option<Self>> {
        test.check_predictions(predictions)?;
        let Some((weak, strong)) = weak_and_strong(test) else {
            return Ok(None);
        };
        let preference: Vec<f64> = predictions
            .iter()
            .map(|p| f64::from(p[strong]) - f64::from(p[weak]))
            .collect();
        Self::from_preference(test, &preference)
    }

    /// The curve of a router that prefers the strong model on prompt `i` by `preference[i]`
    /// (higher: more strong-worthy). `None` unless [`weak_and_strong`] finds the two models.
    pub fn from_preference(test: &Matrix, preference: &[f64]) -> Result<Option<Self>> {
        if preference.len() != test.len() || !preference.iter().all(|p| p.is_finite()) {
            return Err(TrainingError::Invalid(format!(
                "{} finite preferences needed, one per prompt",
                test.len()
            )));
        }
        let Some((weak, strong)) = weak_and_strong(test) else {
            return Ok(None);
        };
        let gain = |prompt: usize| test.scores[prompt][strong] - test.scores[prompt][weak];
        let mut order: Vec<usize> = (0..test.len()).collect();
        order.sort_by(|&a, &b| preference[b].total_cmp(&preference[a]));
        // gained[k]: total score gained by sending the top k prompts to the strong model, with each
        // group of equal preference contributing its mean gain per prompt.
        let mut gained = vec![0.0];
        for group in order.chunk_by(|&a, &b| preference[a] == preference[b]) {
            let mean_gain =
                group.iter().map(|&prompt| gain(prompt)).sum::<f64>() / group.len() as f64;
            let before = gained.last().copied().unwrap_or(0.0);
            gained.extend((1..=group.len()).map(|taken| before + mean_gain * taken as f64));
        }
        let total = gained.last().copied().unwrap_or(0.0);
        if total <= 0.0 {
            return Ok(None);
        }
        // q(k) - q_weak = gained[k] / n and q_strong - q_weak = total / n.
        let pgr = gained.iter().map(|g| g / total).collect();
        Ok(Some(PgrCurve { weak, strong, pgr }))
    }

    /// Number of prompts.
    fn prompts(&self) -> usize {
        self.pgr.len() - 1
    }

    /// Average PGR over the share of strong calls: the trapezoid area under the curve through all
    /// `n + 1` shares `k / n`.
    pub fn apgr(&self) -> f64 {
        let area: f64 = self.pgr.windows(2).map(|w| (w[0] + w[1]) / 2.0).sum();
        area / self.prompts() as f64
    }

    /// CPT(`recovered`): the smallest share `k / n` of strong calls at which PGR reaches
    /// `recovered` (0.5 for CPT(50 %)); `None` if it never does.
    pub fn cpt(&self, recovered: f64) -> Option<f64> {
        let calls = self.pgr.iter().position(|&pgr| pgr >= recovered)?;
        Some(calls as f64 / self.prompts() as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use router_policy::Mode;

    const EPS: f64 = 1e-9;

    fn p(cost: f64, quality: f64) -> Point {
        Point { cost, quality }
    }

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn assert_close(actual: f64, expected: f64) {
        assert!((actual - expected).abs() < EPS, "{actual} != {expected}");
    }

    /// Three prompts, "big" (cost 1) and "small" (cost 0.1):
    /// scores big [1, 1, 1], small [1, 0, 0].
    fn toy() -> Matrix {
        Matrix::new(
            names(&["big", "small"]),
            vec![vec![1.0, 1.0], vec![1.0, 0.0], vec![1.0, 0.0]],
            vec![vec![1.0, 0.1]; 3],
        )
        .unwrap()
    }

    /// Predictions [big, small]: prompt 0 small is 2.2 % below big (in Cost mode, not Balanced);
    /// prompt 1 small is 37.5 % below; prompt 2 small is predicted better.
    fn toy_predictions() -> Vec<Vec<f32>> {
        vec![vec![0.9, 0.88], vec![0.8, 0.5], vec![0.6, 0.7]]
    }

    #[test]
    fn matrix_rejects_bad_shapes_and_values() {
        let models = names(&["a", "b"]);
        assert!(Matrix::new(models.clone(), vec![], vec![]).is_err());
        assert!(Matrix::new(models.clone(), vec![vec![1.0]], vec![vec![1.0, 1.0]]).is_err());
        assert!(Matrix::new(
            models.clone(),
            vec![vec![1.0, f64::NAN]],
            vec![vec![1.0, 1.0]]
        )
        .is_err());
        assert!(Matrix::new(models.clone(), vec![vec![1.0, 1.0]], vec![vec![1.0, -1.0]]).is_err());
        assert!(Matrix::new(
            names(&["a", "a"]),
            vec![vec![1.0, 1.0]],
            vec![vec![1.0, 1.0]]
        )
        .is_err());
        assert!(toy().check_predictions(&[vec![0.5, 0.5]]).is_err());
        assert!(toy()
            .check_predictions(&[vec![0.5, f32::NAN], vec![0.5, 0.5], vec![0.5, 0.5]])
            .is_err());
    }

    #[test]
    fn from_records_uses_record_costs_else_prices_and_ranks_by_estimates() {
        let record = |prompt: &str, costs: &[(&str, f64)]| Record {
            prompt: prompt.into(),
            task: String::new(),
            scores: BTreeMap::from([("a".into(), 1.0), ("b".into(), 0.0)]),
            costs: costs.iter().map(|(m, c)| (m.to_string(), *c)).collect(),
            output_tokens: BTreeMap::new(),
        };
        let records = [
            record("abcd", &[("a", 0.5), ("b", 0.25)]),
            record("abcdefgh", &[]),
        ];
        let models = names(&["b", "a"]);
        assert!(matches!(
            Matrix::from_records(&records, &models, None),
            Err(TrainingError::MissingCost { record: 1, .. })
        ));
        let prices = BTreeMap::from([
            (
                "a".to_string(),
                Price {
                    input_price: 1.0,
                    output_price: 0.0,
                },
            ),
            (
                "b".to_string(),
                Price {
                    input_price: 2.0,
                    output_price: 0.0,
                },
            ),
        ]);
        let test = Matrix::from_records(&records, &models, Some(&prices)).unwrap();
        assert_eq!(test.scores(), [vec![0.0, 1.0], vec![0.0, 1.0]]);
        // The policy's token estimate: "abcd" is 2 tokens, "abcdefgh" 3 (characters / 3, rounded up).
        assert_eq!(test.costs(), [vec![0.25, 0.5], vec![6e-6, 3e-6]]);
        assert_eq!(test.routing_costs(), [vec![4e-6, 2e-6], vec![6e-6, 3e-6]]);
        let without_b = BTreeMap::from([("a".to_string(), prices["a"])]);
        assert!(matches!(
            Matrix::from_records(&records, &models, Some(&without_b)),
            Err(TrainingError::MissingPrice { .. })
        ));
    }

    #[test]
    fn quality_and_cost_of_a_routing_best_single_and_oracle() {
        let test = toy();
        let routed = routing_point(&test, &[1, 0, 0]).unwrap();
        assert_close(routed.quality, 1.0);
        assert_close(routed.cost, 0.7);
        assert!(routing_point(&test, &[1, 0]).is_err());
        assert!(routing_point(&test, &[1, 0, 2]).is_err());
        let singles = single_model_points(&test);
        assert_close(singles[1].quality, 1.0 / 3.0);
        assert_close(singles[1].cost, 0.1);
        assert_eq!(best_single(&test), (0, p(1.0, 1.0)));
        assert_eq!(oracle_choices(&test), [1, 0, 0]);
        let oracle = oracle(&test);
        assert_close(oracle.quality, 1.0);
        assert_close(oracle.cost, 0.7);
    }

    #[test]
    fn best_single_and_oracle_break_ties_by_cost_then_name() {
        let test = Matrix::new(
            names(&["z", "y", "x"]),
            vec![vec![1.0, 1.0, 1.0], vec![0.0, 0.0, 0.0]],
            vec![vec![2.0, 1.0, 1.0], vec![2.0, 1.0, 1.0]],
        )
        .unwrap();
        // Same quality; y and x equally cheap; x comes first by name.
        assert_eq!(best_single(&test).0, 2);
        assert_eq!(oracle_choices(&test), [2, 2]);
    }

    #[test]
    fn band_choices_are_the_policy_decisions() {
        use router_policy::{Catalog, ModelSpec, Policy, PolicyDefaults, RouteRequest};
        // Costs equal to the catalog's estimate for a request of 1M prompt tokens and no output.
        let spec = |name: &str, price: f64| {
            ModelSpec::new(name, price, 0.0, 10_000_000).expected_output_tokens(0)
        };
        let models = names(&["a", "c", "b"]);
        let policy = Policy::new(
            Catalog::new(vec![spec("a", 3.0), spec("c", 1.0), spec("b", 1.0)]),
            models.clone(),
            PolicyDefaults::default(),
        )
        .unwrap();
        let predictions = vec![
            vec![0.9, 0.85, 0.88],
            vec![0.9, 0.88, 0.88],
            vec![0.9, 0.9, 0.1],
            vec![1.0, 0.5, 0.2],
            vec![-0.5, -0.52, -0.6],
        ];
        let test = Matrix::new(
            models.clone(),
            vec![vec![1.0; 3]; 5],
            vec![vec![3.0, 1.0, 1.0]; 5],
        )
        .unwrap();
        for band in [0.0, 0.02, 0.06, 0.1, 0.5, 1.0] {
            let decided: Vec<usize> = predictions
                .iter()
                .map(|row| {
                    let model = policy
                        .decide(row, &RouteRequest::new(1_000_000).band(band))
                        .unwrap()
                        .model;
                    models.iter().position(|m| *m == model).unwrap()
                })
                .collect();
            assert_eq!(
                band_choices(&test, &predictions, band).unwrap(),
                decided,
                "band {band}"
            );
        }
        // Ties on cost go to the higher prediction; then to the first name; on the band's edge is in.
        assert_eq!(
            band_choices(&test, &predictions, 0.1).unwrap(),
            [2, 2, 1, 0, 1]
        );
        assert_eq!(band_choices(&test, &predictions, 0.5).unwrap()[3], 1);
    }

    #[test]
    fn modes_on_the_toy() {
        let test = toy();
        let predictions = toy_predictions();
        assert_eq!(
            band_choices(&test, &predictions, Mode::Quality.band()).unwrap(),
            [0, 0, 1]
        );
        assert_eq!(
            band_choices(&test, &predictions, Mode::Balanced.band()).unwrap(),
            [0, 0, 1]
        );
        assert_eq!(
            band_choices(&test, &predictions, Mode::Cost.band()).unwrap(),
            [1, 0, 1]
        );
        let sweep = band_sweep(
            &test,
            &predictions,
            &[Mode::Quality.band(), Mode::Cost.band(), 0.5],
        )
        .unwrap();
        assert_close(sweep[0].quality, 2.0 / 3.0);
        assert_close(sweep[0].cost, 0.7);
        assert_close(sweep[1].quality, 2.0 / 3.0);
        assert_close(sweep[1].cost, 0.4);
        assert_close(sweep[2].quality, 1.0 / 3.0);
        assert_close(sweep[2].cost, 0.1);
        assert!(band_choices(&test, &predictions[..2], 0.0).is_err());
    }

    #[test]
    fn hull_drops_dominated_and_concave_points() {
        let hull = upper_hull(&[
            p(0.7, 2.0 / 3.0),
            p(0.1, 1.0 / 3.0),
            p(1.0, 1.0),
            p(0.4, 2.0 / 3.0),
            p(0.4, 0.5),
        ]);
        assert_eq!(hull, [p(0.1, 1.0 / 3.0), p(0.4, 2.0 / 3.0), p(1.0, 1.0)]);
        // A point exactly on the segment is dropped.
        assert_eq!(
            upper_hull(&[p(1.0, 0.0), p(2.0, 0.5), p(3.0, 1.0)]),
            [p(1.0, 0.0), p(3.0, 1.0)]
        );
        assert!(upper_hull(&[]).is_empty());
    }

    #[test]
    fn aiq_by_hand() {
        let test = toy();
        let sweep = band_sweep(&test, &toy_predictions(), &sweep_bands()).unwrap();
        // Hull (0.1, 1/3), (0.4, 2/3), (1, 1) over [0.1, 1]: (0.15 + 0.5) / 0.9.
        assert_close(router_aiq(&test, &sweep), 0.65 / 0.9);
        // The singles' hull is the segment from (0.1, 1/3) to (1, 1): its mean is 2/3.
        assert_close(single_models_aiq(&test), 2.0 / 3.0);

        // A router point above the segment: hull (1, .5), (1.5, .8), (3, .9): (0.325 + 1.275) / 2.
        let points = [p(1.0, 0.5), p(2.0, 0.6), p(3.0, 0.9), p(1.5, 0.8)];
        assert_close(aiq(&points, 1.0, 3.0).unwrap(), 0.8);
        // Flat after the last vertex: (1, .5)-(2, .9) then .9 to 4: (0.7 + 1.8) / 3.
        assert_close(
            aiq(&[p(1.0, 0.5), p(2.0, 0.9), p(4.0, 0.8)], 1.0, 4.0).unwrap(),
            2.5 / 3.0,
        );
        // Zero below the first point: nothing from 0 to 1, then 0.5 to 2: 0.5 / 2.
        assert_close(aiq(&[p(1.0, 0.5)], 0.0, 2.0).unwrap(), 0.25);
        // A point cheaper than the range still shapes the hull inside it: (0, 0)-(2, 1) over [1, 2].
        assert_close(aiq(&[p(0.0, 0.0), p(2.0, 1.0)], 1.0, 2.0).unwrap(), 0.75);
        // All singles cost the same: the hull's quality there.
        assert_close(aiq(&[p(1.0, 0.5), p(1.0, 0.7)], 1.0, 1.0).unwrap(), 0.7);
        assert!(aiq(&points, 3.0, 1.0).is_err());
        assert_close(aiq(&[], 0.0, 1.0).unwrap(), 0.0);
    }

    #[test]
    fn cost_at_parity_by_hand() {
        let test = toy();
        let (_, best) = best_single(&test);
        let sweep = band_sweep(&test, &toy_predictions(), &sweep_bands()).unwrap();
        // The toy router never reaches big's 1.0.
        assert_eq!(cost_at_parity(&sweep, best.quality), None);
        // Between (0.4, 2/3) and (1, 1), quality 0.8 is 40 % of the way: 0.4 + 0.4 * 0.6.
        let points = [
            p(0.1, 1.0 / 3.0),
            p(0.4, 2.0 / 3.0),
            p(0.7, 2.0 / 3.0),
            p(1.0, 1.0),
        ];
        assert_close(cost_at_parity(&points, 0.8).unwrap(), 0.64);
        // Reached at the cheapest point already.
        assert_close(cost_at_parity(&points, 0.2).unwrap(), 0.1);
        assert_close(cost_at_parity(&points, 2.0 / 3.0).unwrap(), 0.4);
    }

    #[test]
    fn apgr_and_cpt_by_hand() {
        let test = toy();
        assert_eq!(weak_and_strong(&test), Some((1, 0)));
        // Preference strong - weak: prompt 1 (0.3), prompt 0 (0.02), prompt 2 (-0.1); gains 1, 0, 1.
        let curve = PgrCurve::new(&test, &toy_predictions()).unwrap().unwrap();
        assert_eq!(curve.pgr, [0.0, 0.5, 0.5, 1.0]);
        // (1/3) * ((0 + .5) / 2 + (.5 + .5) / 2 + (.5 + 1) / 2)
        assert_close(curve.apgr(), 0.5);
        assert_close(curve.cpt(0.5).unwrap(), 1.0 / 3.0);
        assert_close(curve.cpt(0.8).unwrap(), 1.0);
        assert_eq!(curve.cpt(1.5), None);

        // Prompts 0 and 2 tie: each adds their mean gain 0.5 -> PGR 0, .5, .75, 1.
        let tied = PgrCurve::from_preference(&test, &[0.1, 0.3, 0.1])
            .unwrap()
            .unwrap();
        assert_eq!(tied.pgr, [0.0, 0.5, 0.75, 1.0]);
        assert_close(tied.apgr(), 7.0 / 12.0);
        assert_close(tied.cpt(0.75).unwrap(), 2.0 / 3.0);
        assert_close(tied.cpt(0.8).unwrap(), 1.0);
        assert!(PgrCurve::from_preference(&test, &[0.1]).is_err());
    }

    /// Needs `shared/data/routerbench/{arc_challenge,mbpp,winograde}_train.csv`. The figures match
    /// the reference figures that `shared/data/README.md` gives for the test split.
    #[test]
    fn real_routerbench_train_best_single_oracle_and_single_models_aiq() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/routerbench");
        let files: Vec<_> = [
            "arc_challenge_train.csv",
            "mbpp_train.csv",
            "winograde_train.csv",
        ]
        .iter()
        .map(|name| dir.join(name))
        .collect();
        let dataset = crate::data::load(crate::data::Format::Routerbench, &files, None).unwrap();
        let test = Matrix::from_records(&dataset.records, &dataset.models(), None).unwrap();
        let (best, point) = best_single(&test);
        assert_eq!(test.models()[best], "gpt-4-1106-preview");
        assert!((point.quality - 0.8794).abs() < 1e-4 && (point.cost - 5.020e-3).abs() < 1e-6);
        let oracle = oracle(&test);
        assert!((oracle.quality - 0.9755).abs() < 1e-4 && (oracle.cost - 2.071e-4).abs() < 1e-7);
        assert!((single_models_aiq(&test) - 0.8182).abs() < 1e-4);
    }

    #[test]
    fn apgr_needs_two_models_with_a_gap() {
        let three = Matrix::new(
            names(&["a", "b", "c"]),
            vec![vec![1.0, 0.0, 0.0]],
            vec![vec![1.0; 3]],
        )
        .unwrap();
        assert_eq!(weak_and_strong(&three), None);
        assert_eq!(PgrCurve::new(&three, &[vec![0.0; 3]]).unwrap(), None);
        let equal = Matrix::new(
            names(&["a", "b"]),
            vec![vec![1.0, 0.0], vec![0.0, 1.0]],
            vec![vec![1.0; 2]; 2],
        )
        .unwrap();
        assert_eq!(
            PgrCurve::from_preference(&equal, &[0.0, 1.0]).unwrap(),
            None
        );
    }
}
