//! The evaluation report: every metric of [`crate::metrics`] for a router and the baselines on one
//! test set, as JSON (the CLI's `--json`), as a table ([`std::fmt::Display`]), and as an SVG plot of
//! the cost–quality plane ([`plot_svg`]).
//!
//! The JSON has exactly this shape (qualities are mean scores, costs USD per prompt):
//!
//! ```text
//! {"n", "skipped", "models": [..],
//!  "best_single": {"model", "quality", "cost"},
//!  "oracle": {"quality", "cost"},
//!  "modes": {"quality": {"quality", "cost"}, "balanced": {..}, "cost": {..}},
//!  "aiq", "single_models_aiq", "cost_at_parity": f|null,
//!  "apgr": f|null, "cpt50": f|null, "cpt80": f|null,
//!  "baselines": {"knn": {"aiq", "modes"}, "task_best": {"quality", "cost"},
//!                "random": {"aiq", "quality", "cost"}},
//!  "tasks": [{"task", "n", "best_single": {"quality", "cost"}, "task_best": {..},
//!             "knn": {"quality": {..}, "balanced": {..}, "cost": {..}}, "modes": {..}}, ..]}
//! ```
//!
//! `tasks` has one entry per task of the test set, in name order: each prompt of the task routed by
//! the overall best single model, by the per-task-best rule ([`crate::baselines::task_best`]), by
//! kNN and by the router in each mode. A router that loses to the per-task-best rule on a task
//! would do better there by ignoring the prompt.
//!
//! `apgr`, `cpt50` and `cpt80` are null unless the test set has exactly two models with different
//! mean scores; `cost_at_parity` is null when the router never reaches the best single model.

use std::fmt;
use std::ops::Range;
use std::path::Path;

use plotters::prelude::*;
use router_policy::Mode;
use serde::{Deserialize, Serialize};

use crate::baselines::{self, RandomBaseline};
use crate::error::{Result, TrainingError};
use crate::metrics::{self, Matrix, PgrCurve, Point};
use crate::plot::{labelled_point, Canvas, LabelSide, Stroke};

/// What [`evaluate`] needs.
#[derive(Debug, Clone, Copy)]
pub struct EvalInput<'a> {
    /// The test set: scores, actual costs and the costs the router ranks by.
    pub test: &'a Matrix,
    /// How many rows the importer skipped reading the test set (reported, not used).
    pub skipped: usize,
    /// The router's predicted quality, one row per test prompt, one column per model of `test`.
    pub predictions: &'a [Vec<f32>],
    /// The kNN baseline's predictions ([`crate::baselines::knn`]), same shape.
    pub knn_predictions: &'a [Vec<f32>],
    /// Each test prompt's task.
    pub tasks: &'a [&'a str],
    /// The per-task-best rule's model index for each test prompt, learned on a training side
    /// ([`crate::baselines::task_best`] or [`crate::baselines::task_best_out_of_fold`]).
    pub task_best: &'a [usize],
    /// Seed of the random baseline.
    pub seed: u64,
}

/// A router's mean quality and cost in each routing mode.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Modes {
    /// Quality mode (the policy's band, [`Mode::band`]).
    pub quality: Point,
    /// Balanced mode.
    pub balanced: Point,
    /// Cost mode.
    pub cost: Point,
}

/// The best single model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestSingle {
    /// Its name.
    pub model: String,
    /// Its mean score.
    pub quality: f64,
    /// Its mean cost in USD per prompt.
    pub cost: f64,
}

/// A baseline that predicts qualities and routes with the band rule, like the router.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RouterBaseline {
    /// Its AIQ (band sweep plus the single models).
    pub aiq: f64,
    /// Its quality and cost per mode.
    pub modes: Modes,
}

/// The baselines of the report.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Baselines {
    /// kNN over prompt embeddings.
    pub knn: RouterBaseline,
    /// Each prompt to the best model of its task on the training side.
    pub task_best: Point,
    /// Uniformly random routing.
    pub random: RandomBaseline,
}

/// The evaluation of a router on a test set; serialises to the JSON of the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Test prompts.
    pub n: usize,
    /// Rows skipped reading the test set.
    pub skipped: usize,
    /// The models, in the predictions' column order.
    pub models: Vec<String>,
    /// The best single model.
    pub best_single: BestSingle,
    /// The oracle: per prompt the cheapest of the best-scoring models.
    pub oracle: Point,
    /// The router per mode.
    pub modes: Modes,
    /// The router's AIQ.
    pub aiq: f64,
    /// AIQ of the single models alone.
    pub single_models_aiq: f64,
    /// Lowest cost at which the router matches the best single model's quality.
    pub cost_at_parity: Option<f64>,
    /// Average performance gap recovered (two models only).
    pub apgr: Option<f64>,
    /// Share of strong-model calls needed to recover 50 % of the gap (two models only).
    pub cpt50: Option<f64>,
    /// Share of strong-model calls needed to recover 80 % of the gap (two models only).
    pub cpt80: Option<f64>,
    /// The baselines.
    pub baselines: Baselines,
    /// The same routings task by task, tasks in name order.
    pub tasks: Vec<TaskReport>,
}

/// The routings of the report on the prompts of one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskReport {
    /// The task.
    pub task: String,
    /// Its test prompts.
    pub n: usize,
    /// The overall best single model (the report's `best_single`) on this task.
    pub best_single: Point,
    /// The per-task-best rule.
    pub task_best: Point,
    /// The kNN baseline per mode.
    pub knn: Modes,
    /// The router per mode.
    pub modes: Modes,
}

/// The points behind the report, for the plot.
#[derive(Debug, Clone, PartialEq)]
pub struct Curves {
    /// The swept bands ([`metrics::sweep_bands`]).
    pub bands: Vec<f64>,
    /// The router's point at each band.
    pub router: Vec<Point>,
    /// The kNN baseline's point at each band.
    pub knn: Vec<Point>,
    /// Each single model's point, in the report's model order.
    pub singles: Vec<Point>,
    /// The oracle's point.
    pub oracle: Point,
    /// The seeded random routing's point.
    pub random: Point,
}

/// A report with the curves it was computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// The numbers.
    pub report: EvalReport,
    /// The points to plot.
    pub curves: Curves,
}

/// Evaluates a router and the baselines on `input.test`.
///
/// Errors when the predictions do not have one finite value per model for every test prompt.
///
/// ```
/// use router_training::eval::{evaluate, EvalInput};
/// use router_training::metrics::Matrix;
/// let test = Matrix::new(
///     vec!["big".into(), "small".into()],
///     vec![vec![1.0, 1.0], vec![1.0, 0.0]],
///     vec![vec![1.0, 0.1], vec![1.0, 0.1]],
/// )
/// .unwrap();
/// // A perfect router: it knows small gets the first prompt right.
/// let predictions = vec![vec![1.0, 1.0], vec![1.0, 0.0]];
/// let evaluation = evaluate(&EvalInput {
///     test: &test,
///     skipped: 0,
///     predictions: &predictions,
///     knn_predictions: &predictions,
///     tasks: &["easy", "hard"],
///     task_best: &[1, 0],
///     seed: 1,
/// })
/// .unwrap();
/// let report = &evaluation.report;
/// assert_eq!(report.modes.quality, report.oracle);
/// assert_eq!(report.apgr, Some(0.75));
/// assert_eq!(report.tasks[0].task, "easy");
/// assert_eq!(report.tasks[0].task_best.cost, 0.1);
/// println!("{report}");
/// ```
pub fn evaluate(input: &EvalInput) -> Result<Evaluation> {
    let test = input.test;
    let bands = metrics::sweep_bands();
    let (router, router_sweep, router_choices) = band_router(test, input.predictions, &bands)?;
    let (knn, knn_sweep, knn_choices) = band_router(test, input.knn_predictions, &bands)?;
    let (best_index, best) = metrics::best_single(test);
    let task_best = metrics::routing_point(test, input.task_best)?;
    let tasks = per_task(test, input, best_index, &router_choices, &knn_choices)?;
    let oracle = metrics::oracle(test);
    let pgr = PgrCurve::new(test, input.predictions)?;
    let random = baselines::random(test, input.seed);
    let report = EvalReport {
        n: test.len(),
        skipped: input.skipped,
        models: test.models().to_vec(),
        best_single: BestSingle {
            model: test.models()[best_index].clone(),
            quality: best.quality,
            cost: best.cost,
        },
        oracle,
        modes: router.modes,
        aiq: router.aiq,
        single_models_aiq: metrics::single_models_aiq(test),
        cost_at_parity: metrics::cost_at_parity(&router_sweep, best.quality),
        apgr: pgr.as_ref().map(PgrCurve::apgr),
        cpt50: pgr.as_ref().and_then(|curve| curve.cpt(0.5)),
        cpt80: pgr.as_ref().and_then(|curve| curve.cpt(0.8)),
        baselines: Baselines {
            knn,
            task_best,
            random,
        },
        tasks,
    };
    let curves = Curves {
        bands,
        router: router_sweep,
        knn: knn_sweep,
        singles: metrics::single_model_points(test),
        oracle,
        random: Point {
            quality: random.quality,
            cost: random.cost,
        },
    };
    Ok(Evaluation { report, curves })
}

/// The choices of each mode, in [`Mode::ALL`] order.
type ModeChoices = [Vec<usize>; 3];

/// Modes, AIQ, sweep and each mode's choices of a band router with `predictions`.
fn band_router(
    test: &Matrix,
    predictions: &[Vec<f32>],
    bands: &[f64],
) -> Result<(RouterBaseline, Vec<Point>, ModeChoices)> {
    let sweep = metrics::band_sweep(test, predictions, bands)?;
    let [quality, balanced, cost] =
        Mode::ALL.map(|mode| metrics::band_choices(test, predictions, mode.band()));
    let choices = [quality?, balanced?, cost?];
    let modes = modes_over(test, &(0..test.len()).collect::<Vec<_>>(), &choices)?;
    Ok((
        RouterBaseline {
            aiq: metrics::router_aiq(test, &sweep),
            modes,
        },
        sweep,
        choices,
    ))
}

/// Each mode's point over the prompts `rows`.
fn modes_over(test: &Matrix, rows: &[usize], choices: &ModeChoices) -> Result<Modes> {
    let point = |choices: &[usize]| metrics::routing_point_over(test, rows, choices);
    Ok(Modes {
        quality: point(&choices[0])?,
        balanced: point(&choices[1])?,
        cost: point(&choices[2])?,
    })
}

/// The report's routings task by task.
fn per_task(
    test: &Matrix,
    input: &EvalInput,
    best_index: usize,
    router: &ModeChoices,
    knn: &ModeChoices,
) -> Result<Vec<TaskReport>> {
    if input.tasks.len() != test.len() {
        return Err(TrainingError::Invalid(format!(
            "{} tasks for {} test prompts",
            input.tasks.len(),
            test.len()
        )));
    }
    let mut rows_of_task: std::collections::BTreeMap<&str, Vec<usize>> =
        std::collections::BTreeMap::new();
    for (row, task) in input.tasks.iter().enumerate() {
        rows_of_task.entry(task).or_default().push(row);
    }
    let best = vec![best_index; test.len()];
    rows_of_task
        .into_iter()
        .map(|(task, rows)| {
            Ok(TaskReport {
                task: task.to_owned(),
                n: rows.len(),
                best_single: metrics::routing_point_over(test, &rows, &best)?,
                task_best: metrics::routing_point_over(test, &rows, input.task_best)?,
                knn: modes_over(test, &rows, knn)?,
                modes: modes_over(test, &rows, router)?,
            })
        })
        .collect()
}

impl fmt::Display for EvalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} test prompts ({} skipped), {} models",
            self.n,
            self.skipped,
            self.models.len()
        )?;
        let best = format!("best single ({})", self.best_single.model);
        let rows: [(&str, Point); 10] = [
            (
                &best,
                Point {
                    quality: self.best_single.quality,
                    cost: self.best_single.cost,
                },
            ),
            ("oracle", self.oracle),
            ("router, quality mode", self.modes.quality),
            ("router, balanced mode", self.modes.balanced),
            ("router, cost mode", self.modes.cost),
            ("kNN, quality mode", self.baselines.knn.modes.quality),
            ("kNN, balanced mode", self.baselines.knn.modes.balanced),
            ("kNN, cost mode", self.baselines.knn.modes.cost),
            ("per-task best (training side)", self.baselines.task_best),
            (
                "random",
                Point {
                    quality: self.baselines.random.quality,
                    cost: self.baselines.random.cost,
                },
            ),
        ];
        let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
        writeln!(
            f,
            "{:width$}  {:>7}  {:>17}",
            "", "quality", "cost (USD/prompt)"
        )?;
        for (name, point) in rows {
            writeln!(
                f,
                "{name:width$}  {:>7.4}  {:>17.3e}",
                point.quality, point.cost
            )?;
        }
        writeln!(
            f,
            "AIQ: router {:.4}, kNN {:.4}, random {:.4}, single models {:.4}",
            self.aiq, self.baselines.knn.aiq, self.baselines.random.aiq, self.single_models_aiq
        )?;
        match self.cost_at_parity {
            Some(cost) => writeln!(
                f,
                "cost at parity with the best single model: {cost:.3e} USD/prompt"
            )?,
            None => writeln!(
                f,
                "cost at parity with the best single model: never reached"
            )?,
        }
        let share = |share: Option<f64>| {
            share.map_or("never".to_owned(), |s| format!("{:.1} %", 100.0 * s))
        };
        match self.apgr {
            Some(apgr) => writeln!(
                f,
                "APGR {apgr:.4}, CPT(50 %) {}, CPT(80 %) {}",
                share(self.cpt50),
                share(self.cpt80)
            )?,
            None => writeln!(
                f,
                "APGR / CPT: n/a (they need exactly two models with different mean scores)"
            )?,
        }
        self.fmt_tasks(f)
    }
}

impl EvalReport {
    /// The per-task table: qualities only (the costs are in the JSON).
    fn fmt_tasks(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .tasks
            .iter()
            .map(|t| t.task.len())
            .max()
            .unwrap_or(0)
            .max("task".len());
        write!(
            f,
            "quality per task:\n{:width$}  {:>5}  {:>11}  {:>13}  {:>7}  {:>14}  {:>15}  {:>11}",
            "task",
            "n",
            "best single",
            "per-task best",
            "kNN (q)",
            "router quality",
            "router balanced",
            "router cost"
        )?;
        for t in &self.tasks {
            write!(
                f,
                "\n{:width$}  {:>5}  {:>11.4}  {:>13.4}  {:>7.4}  {:>14.4}  {:>15.4}  {:>11.4}",
                t.task,
                t.n,
                t.best_single.quality,
                t.task_best.quality,
                t.knn.quality.quality,
                t.modes.quality.quality,
                t.modes.balanced.quality,
                t.modes.cost.quality
            )?;
        }
        Ok(())
    }
}

/// Draws the cost–quality plane to an SVG file: the router's band sweep as a line with its three
/// modes marked, the kNN baseline's sweep as a dashed line, and each single model, the oracle and
/// the random baseline as labelled points. The cost axis is logarithmic when costs are all
/// positive and span more than a factor of 10.
pub fn plot_svg(evaluation: &Evaluation, path: &Path) -> Result<()> {
    let (report, curves) = (&evaluation.report, &evaluation.curves);
    let mut labelled: Vec<(String, Point)> = report
        .models
        .iter()
        .cloned()
        .zip(curves.singles.iter().copied())
        .collect();
    labelled.push(("oracle".into(), curves.oracle));
    labelled.push(("random".into(), curves.random));
    let axes = PlaneAxes::fit(
        labelled
            .iter()
            .map(|(_, p)| *p)
            .chain(curves.router.iter().copied())
            .chain(curves.knn.iter().copied()),
    );
    let canvas = Canvas::new(path)?;
    let mut chart = canvas.chart(
        &format!("cost vs quality ({} prompts)", report.n),
        60,
        axes.x_range.clone(),
        axes.y_range.clone(),
    )?;
    let cost_label = |value: &f64| format!("{:.1e}", axes.cost_of(*value));
    chart
        .configure_mesh()
        .x_desc(if axes.log_scale {
            "cost, USD per prompt (log scale)"
        } else {
            "cost, USD per prompt"
        })
        .y_desc("quality (mean score)")
        .x_label_formatter(&cost_label)
        .light_line_style(RGBColor(238, 238, 238))
        .draw()
        .map_err(|e| canvas.error(e))?;
    let on_plane = |points: &[Point]| points.iter().map(|p| axes.at(*p)).collect();
    canvas.line(
        &mut chart,
        on_plane(&curves.router),
        BLUE,
        Stroke::Solid,
        format!("router, band 0 to 1 (AIQ {:.3})", report.aiq),
    )?;
    canvas.line(
        &mut chart,
        on_plane(&curves.knn),
        RGBColor(230, 120, 0),
        Stroke::Dashed,
        format!(
            "kNN baseline, band 0 to 1 (AIQ {:.3})",
            report.baselines.knn.aiq
        ),
    )?;
    let marker = |(label, point): (String, Point), colour: RGBColor, above: bool| {
        let at = axes.at(point);
        let left = at.0 > axes.right_third();
        labelled_point(at, label, colour, 4, LabelSide { left, above })
    };
    let modes = mode_labels(&report.modes);
    chart
        .draw_series(modes.into_iter().map(|l| marker(l, BLUE, false)))
        .map_err(|e| canvas.error(e))?;
    chart
        .draw_series(labelled.into_iter().map(|l| marker(l, BLACK, true)))
        .map_err(|e| canvas.error(e))?;
    canvas.finish(&mut chart, SeriesLabelPosition::LowerRight)
}

/// The cost–quality plane's axes: cost on a log scale when costs are all positive and span more
/// than a factor of 10, with margins around every point.
struct PlaneAxes {
    log_scale: bool,
    x_range: Range<f64>,
    y_range: Range<f64>,
}

impl PlaneAxes {
    fn fit(points: impl Iterator<Item = Point> + Clone) -> Self {
        let bounds = |value: fn(&Point) -> f64| {
            points
                .clone()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
                    (lo.min(value(&p)), hi.max(value(&p)))
                })
        };
        let (min_cost, max_cost) = bounds(|p| p.cost);
        let (min_quality, max_quality) = bounds(|p| p.quality);
        let log_scale = min_cost > 0.0 && max_cost / min_cost > 10.0;
        let x = |cost: f64| if log_scale { cost.log10() } else { cost };
        let x_margin = ((x(max_cost) - x(min_cost)) * 0.08).max(1e-9);
        PlaneAxes {
            log_scale,
            x_range: x(min_cost) - x_margin..x(max_cost) + x_margin,
            y_range: (min_quality - 0.05).max(0.0)..(max_quality + 0.05).min(1.05),
        }
    }

    /// Where `point` lies on the plane.
    fn at(&self, point: Point) -> (f64, f64) {
        let x = if self.log_scale {
            point.cost.log10()
        } else {
            point.cost
        };
        (x, point.quality)
    }

    /// The cost at `x` on the axis.
    fn cost_of(&self, x: f64) -> f64 {
        if self.log_scale {
            10f64.powf(x)
        } else {
            x
        }
    }

    /// Labels of points right of this go left of the point, so they stay inside the plot.
    fn right_third(&self) -> f64 {
        self.x_range.end - (self.x_range.end - self.x_range.start) / 3.0
    }
}

/// The router's three modes as labelled points; modes that land on the same point share one
/// label, so labels do not overprint.
fn mode_labels(modes: &Modes) -> Vec<(String, Point)> {
    let mut labels: Vec<(String, Point)> = Vec::new();
    for (mode, point) in [
        ("quality", modes.quality),
        ("balanced", modes.balanced),
        ("cost", modes.cost),
    ] {
        match labels.iter_mut().find(|(_, shared)| *shared == point) {
            Some((label, _)) => label.push_str(&format!(" / {mode}")),
            None => labels.push((format!("router: {mode}"), point)),
        }
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The metrics tests' toy: big (cost 1) scores [1, 1, 1], small (cost 0.1) [1, 0, 0].
    fn toy() -> Matrix {
        Matrix::new(
            vec!["big".into(), "small".into()],
            vec![vec![1.0, 1.0], vec![1.0, 0.0], vec![1.0, 0.0]],
            vec![vec![1.0, 0.1]; 3],
        )
        .unwrap()
    }

    fn toy_evaluation() -> Evaluation {
        let predictions = vec![vec![0.9, 0.88], vec![0.8, 0.5], vec![0.6, 0.7]];
        // The kNN stand-in predicts big everywhere: every mode sends everything to big.
        let knn_predictions = vec![vec![1.0, 0.0]; 3];
        let test = toy();
        evaluate(&EvalInput {
            test: &test,
            skipped: 4,
            predictions: &predictions,
            knn_predictions: &knn_predictions,
            tasks: &["easy", "hard", "hard"],
            task_best: &[1, 0, 0],
            seed: 1,
        })
        .unwrap()
    }

    #[test]
    fn report_on_the_toy() {
        let report = toy_evaluation().report;
        assert_eq!(report.n, 3);
        assert_eq!(report.skipped, 4);
        assert_eq!(
            report.best_single,
            BestSingle {
                model: "big".into(),
                quality: 1.0,
                cost: 1.0
            }
        );
        assert!((report.aiq - 0.65 / 0.9).abs() < 1e-9);
        assert!((report.single_models_aiq - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(report.cost_at_parity, None);
        assert_eq!(report.apgr, Some(0.5));
        assert!((report.cpt50.unwrap() - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(report.cpt80, Some(1.0));
        assert!((report.modes.cost.cost - 0.4).abs() < 1e-9);
        assert_eq!(
            report.baselines.knn.modes.balanced,
            Point {
                quality: 1.0,
                cost: 1.0
            }
        );
        // kNN's sweep adds nothing beyond the single models to the hull.
        assert!((report.baselines.knn.aiq - report.single_models_aiq).abs() < 1e-9);
        // The per-task-best rule sends "easy" to small (right) and "hard" to big.
        assert_eq!(report.baselines.task_best.quality, 1.0);
        assert!((report.baselines.task_best.cost - 0.7).abs() < 1e-12);
        let easy = &report.tasks[0];
        assert_eq!((easy.task.as_str(), easy.n), ("easy", 1));
        assert_eq!(
            easy.best_single,
            Point {
                quality: 1.0,
                cost: 1.0
            }
        );
        assert_eq!(
            easy.task_best,
            Point {
                quality: 1.0,
                cost: 0.1
            }
        );
        // The router's cost mode takes small on prompt 0 (easy), big on 1, small on 2 (hard).
        assert_eq!(
            easy.modes.cost,
            Point {
                quality: 1.0,
                cost: 0.1
            }
        );
        let hard = &report.tasks[1];
        assert_eq!((hard.task.as_str(), hard.n), ("hard", 2));
        assert_eq!(
            hard.modes.cost,
            Point {
                quality: 0.5,
                cost: 0.55
            }
        );
        assert_eq!(
            hard.knn.cost,
            Point {
                quality: 1.0,
                cost: 1.0
            }
        );
    }

    #[test]
    fn json_has_exactly_the_documented_shape() {
        let json = serde_json::to_value(toy_evaluation().report).unwrap();
        let keys = |value: &serde_json::Value| {
            let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
            keys.sort();
            keys
        };
        assert_eq!(
            keys(&json),
            [
                "aiq",
                "apgr",
                "baselines",
                "best_single",
                "cost_at_parity",
                "cpt50",
                "cpt80",
                "models",
                "modes",
                "n",
                "oracle",
                "single_models_aiq",
                "skipped",
                "tasks"
            ]
        );
        assert_eq!(keys(&json["best_single"]), ["cost", "model", "quality"]);
        assert_eq!(keys(&json["oracle"]), ["cost", "quality"]);
        assert_eq!(keys(&json["modes"]), ["balanced", "cost", "quality"]);
        assert_eq!(keys(&json["modes"]["balanced"]), ["cost", "quality"]);
        assert_eq!(keys(&json["baselines"]), ["knn", "random", "task_best"]);
        assert_eq!(keys(&json["baselines"]["task_best"]), ["cost", "quality"]);
        assert_eq!(
            keys(&json["tasks"][0]),
            ["best_single", "knn", "modes", "n", "task", "task_best"]
        );
        assert_eq!(
            keys(&json["tasks"][0]["knn"]),
            ["balanced", "cost", "quality"]
        );
        assert_eq!(keys(&json["baselines"]["knn"]), ["aiq", "modes"]);
        assert_eq!(
            keys(&json["baselines"]["random"]),
            ["aiq", "cost", "quality"]
        );
        assert!(json["cost_at_parity"].is_null());
        assert_eq!(json["n"], 3);
        assert_eq!(json["models"], serde_json::json!(["big", "small"]));
        let back: EvalReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, toy_evaluation().report);
    }

    #[test]
    fn three_models_have_no_apgr() {
        let test = Matrix::new(
            vec!["a".into(), "b".into(), "c".into()],
            vec![vec![1.0, 0.0, 0.5]],
            vec![vec![3.0, 1.0, 2.0]],
        )
        .unwrap();
        let predictions = vec![vec![0.9, 0.1, 0.5]];
        let evaluation = evaluate(&EvalInput {
            test: &test,
            skipped: 0,
            predictions: &predictions,
            knn_predictions: &predictions,
            tasks: &[""],
            task_best: &[0],
            seed: 0,
        })
        .unwrap();
        assert_eq!(
            (
                evaluation.report.apgr,
                evaluation.report.cpt50,
                evaluation.report.cpt80
            ),
            (None, None, None)
        );
        assert_eq!(evaluation.report.cost_at_parity, Some(3.0));
        assert!(evaluation.report.to_string().contains("n/a"));
    }

    #[test]
    fn bad_predictions_are_an_error() {
        let test = toy();
        let short = vec![vec![0.5, 0.5]];
        let good = vec![vec![0.5, 0.5]; 3];
        let input = EvalInput {
            test: &test,
            skipped: 0,
            predictions: &short,
            knn_predictions: &good,
            tasks: &["", "", ""],
            task_best: &[0, 0, 0],
            seed: 0,
        };
        assert!(matches!(evaluate(&input), Err(TrainingError::Invalid(_))));
        let input = EvalInput {
            predictions: &good,
            knn_predictions: &short,
            ..input
        };
        assert!(evaluate(&input).is_err());
        let input = EvalInput {
            knn_predictions: &good,
            tasks: &[""],
            ..input
        };
        assert!(evaluate(&input).is_err(), "one task per prompt");
        let input = EvalInput {
            tasks: &["", "", ""],
            task_best: &[0, 0, 2],
            ..input
        };
        assert!(evaluate(&input).is_err(), "a model index");
    }

    #[test]
    fn display_shows_every_row() {
        let table = toy_evaluation().report.to_string();
        for row in [
            "best single (big)",
            "oracle",
            "router, balanced mode",
            "kNN, cost mode",
            "random",
            "per-task best (training side)",
            "AIQ",
            "APGR 0.5000",
            "quality per task:",
            "hard      2",
        ] {
            assert!(table.contains(row), "{row} missing in\n{table}");
        }
    }

    #[test]
    fn plot_writes_an_svg_with_the_labels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curve.svg");
        plot_svg(&toy_evaluation(), &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"));
        for label in [
            "big",
            "small",
            "oracle",
            "random",
            "balanced",
            "kNN baseline",
        ] {
            assert!(svg.contains(label), "{label} missing");
        }
        let error =
            plot_svg(&toy_evaluation(), &dir.path().join("no/such/dir/curve.svg")).unwrap_err();
        assert!(matches!(error, TrainingError::Plot { .. }), "{error}");
    }
}
