//! Training a router head and writing the bundle.
//!
//! The head is fitted with AdamW to the observed scores in [0, 1] with a sigmoid cross-entropy
//! (scores are probabilities of success, and pass rates such as RouterDC's are soft labels), with
//! early stopping on a share of the training side: the weights of the best epoch there are kept.
//! The validation split is never seen by training, so its report is an honest held-out estimate.
//! Everything random (initial weights, the splits, the batch order) derives from one seed, so a
//! run is reproducible bit for bit on the same machine. [`cross_validate`] trains one head per
//! fold and evaluates the out-of-fold predictions of every prompt.
//!
//! Records of several families (each scoring its own models) train one head: the loss is averaged
//! over the observed (prompt, model) cells only, and each family is evaluated on its own models.

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use router_core::candle_core::{DType, Device, Tensor, Var};
use router_core::candle_nn::{loss, AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use router_core::config::files;
use router_core::{
    Encoder, EncoderConfig, Head, HeadConfig, Pooling, Router, RouterConfig, TrainingRecord,
    Truncation,
};
use router_policy::Catalog;

use crate::baselines;
use crate::data::Record;
use crate::embed::{self, BertSource};
use crate::error::{Result, TrainingError};
use crate::eval::{self, EvalInput, Evaluation};
use crate::gate;
use crate::length;
use crate::metrics::Matrix;

/// Which encoder tier to train a head for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncoderChoice {
    /// A static table of `dim` derived from `teacher`.
    Static {
        /// Table dimension.
        dim: usize,
        /// The BERT encoder it is derived from.
        teacher: BertSource,
    },
    /// The BERT encoder itself.
    Bert(BertSource),
}

/// Settings of a training run. [`TrainOptions::default`] holds the values the shipped routers use.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Bundle name.
    pub name: String,
    /// Bundle version (a date; by default [`today`]).
    pub version: String,
    /// The encoder tier.
    pub encoder: EncoderChoice,
    /// Hidden layer widths of the head.
    pub hidden: Vec<usize>,
    /// Truncation length in tokens.
    pub max_seq_length: usize,
    /// Which end of long prompts is kept.
    pub truncation: Truncation,
    /// The seed of everything random.
    pub seed: u64,
    /// Share of the data held out for validation (never seen by training).
    pub val_fraction: f64,
    /// Share of the training side held out for early stopping.
    pub early_stop_fraction: f64,
    /// Upper bound on epochs.
    pub max_epochs: usize,
    /// Epochs without a better validation loss before stopping.
    pub patience: usize,
    /// λ in [0, 1]: each training target is shrunk towards its task's mean scores by λ.
    pub task_shrinkage: f64,
    /// Minibatch size.
    pub batch_size: usize,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Descriptions of the training data, for the model card.
    pub data: Vec<String>,
    /// The catalog shipped with the bundle; its prices give the routing costs of the validation report.
    pub catalog: Option<PathBuf>,
    /// The embedding cache directory.
    pub cache_dir: PathBuf,
    /// The command line that trained the bundle, recorded in its model card so that it can be
    /// re-made exactly.
    pub command: Option<String>,
    /// Whether to fit an output-length head when every record has every model's output length.
    pub length_head: bool,
    /// Whether to fit a task gate ([`crate::gate`]) on the training side and ship it.
    pub task_gate: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            name: "router".into(),
            version: today(),
            encoder: EncoderChoice::Static {
                dim: 256,
                teacher: BertSource::minilm(),
            },
            hidden: vec![256],
            max_seq_length: 256,
            truncation: Truncation::Left,
            seed: 42,
            val_fraction: 0.15,
            early_stop_fraction: 0.15,
            max_epochs: 200,
            patience: 20,
            task_shrinkage: 0.0,
            batch_size: 64,
            learning_rate: 1e-3,
            weight_decay: 1e-2,
            data: Vec::new(),
            catalog: None,
            cache_dir: embed::cache_dir(),
            command: None,
            length_head: true,
            task_gate: false,
        }
    }
}

/// Today's date in UTC as `YYYY-MM-DD`: a trained bundle's default version.
///
/// ```
/// let today = router_training::train::today();
/// assert_eq!(today.len(), 10);
/// assert_eq!(today.as_bytes()[4], b'-');
/// ```
pub fn today() -> String {
    let date = time::OffsetDateTime::now_utc().date();
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// What a training run produced.
#[derive(Debug)]
pub struct TrainOutcome {
    /// The trained router (also written to the output directory).
    pub router: Router,
    /// The evaluation on the validation split (None when the split is empty).
    pub validation: Option<Evaluation>,
    /// Epochs run before early stopping.
    pub epochs: usize,
    /// The best early-stopping loss (the training loss when there is no early-stopping split).
    pub best_loss: f64,
    /// The output-length head's validation report, when one was fitted and measured.
    pub output_length: Option<length::LengthReport>,
    /// The task gate's inner cross-validation, when one was fitted ([`TrainOptions::task_gate`]).
    pub task_gate: Option<gate::GateReport>,
}

/// Trains a head on `records` (scores for `models`, in that order) and writes a complete bundle to
/// `out_dir`.
///
/// Records of several families (each scoring its own models; a missing score is masked in the
/// loss) train one head. With a catalog, the bundle then predicts the models the catalog prices
/// ([`shipped_models`]): the other columns were auxiliary outputs that shaped the shared hidden
/// layer and are cut from the head. The validation report, the output-length head and the task
/// gate cover the records that score every shipped model.
pub fn train(
    records: Vec<Record>,
    models: &[String],
    options: &TrainOptions,
    out_dir: &Path,
) -> Result<TrainOutcome> {
    let catalog = options.catalog.as_deref().map(read_catalog).transpose()?;
    let shipped = shipped_models(&records, models, catalog.as_ref(), options)?;
    let (train_records, val_records) = training_split(records, models, options)?;
    let (encoder, encoder_config, teacher_dir) = build_encoder(options)?;
    let mut config = router_config(options, &shipped, encoder_config);
    let fingerprint = embed::encoder_fingerprint(&config, &encoder);
    let embed_records = |records: &[Record]| {
        let prompts: Vec<&str> = records.iter().map(|r| r.prompt.as_str()).collect();
        embed::embed_cached(&encoder, fingerprint, &prompts, &options.cache_dir)
    };
    let train_x = embed_records(&train_records)?;
    let val_x = embed_records(&val_records)?;
    let train_y = score_rows(&train_records, models, Missing::Masked)?;
    let train_keys: Vec<(&str, &str)> = crate::data::split_keys(&train_records).collect();
    let fit = fit_early_stopped(
        &train_keys,
        &train_x,
        &train_y,
        models.len(),
        options,
        "training",
    )?;
    let head = shipped_head(&fit.varmap, models, &shipped)?;

    let (train_records, train_x) = scoring_all(train_records, train_x, &shipped);
    let (val_records, val_x) = scoring_all(val_records, val_x, &shipped);
    let length = match options.length_head {
        true => fit_length_head(&train_records, &val_records, &train_x, &val_x, &shipped)?,
        false => None,
    };
    let train_keys: Vec<(&str, &str)> = crate::data::split_keys(&train_records).collect();
    let train_side = test_matrix(&train_records, &shipped, catalog.as_ref(), None)?;
    let task_gate = options
        .task_gate
        .then(|| gate::fit_gate(&train_keys, &train_x, &train_side, options, "training"))
        .transpose()?;
    let validation = if val_records.is_empty() {
        None
    } else {
        let side = TrainingSide {
            keys: &train_keys,
            x: &train_x,
            matrix: &train_side,
        };
        let held = HeldOut {
            records: &val_records,
            x: &val_x,
            lengths: length.as_ref().map(|(fit, _)| fit),
        };
        let columns = column_indices(models, &shipped);
        let mut predictions = select_columns(predict(&fit.head, &val_x)?, &columns);
        if let Some((task_gate, _)) = &task_gate {
            task_gate.apply_batch(&val_x, &mut predictions);
        }
        let test = held.matrix(&shipped, catalog.as_ref())?;
        Some(validate(&side, &held, &test, &predictions, options.seed)?)
    };

    config.output_length = length.as_ref().map(|_| length::LengthFit::shape());
    config.task_gate = task_gate.as_ref().map(|(gate, _)| gate.config().clone());
    config.training = Some(training_record(
        options,
        (train_records.len(), val_records.len()),
        &fit,
        validation.as_ref(),
        length.as_ref(),
        task_gate.as_ref().map(|(_, report)| report),
    ));
    let auxiliary: Vec<String> = models
        .iter()
        .filter(|m| !shipped.contains(m))
        .cloned()
        .collect();
    let bundle = BundleParts {
        config: &config,
        encoder: &encoder,
        teacher_dir: &teacher_dir,
        head: &head,
        auxiliary: &auxiliary,
    };
    write_bundle(out_dir, &bundle, options, validation.as_ref())?;
    if let Some((fit, report)) = &length {
        write_length_head(out_dir, fit, report.as_ref())?;
    }
    if let Some((task_gate, report)) = &task_gate {
        write_task_gate(out_dir, task_gate, report)?;
    }
    Ok(TrainOutcome {
        router: Router::load(out_dir)?,
        validation,
        epochs: fit.epochs,
        best_loss: fit.best_loss,
        output_length: length.and_then(|(_, report)| report),
        task_gate: task_gate.map(|(_, report)| report),
    })
}

/// The models a bundle trained on `records` predicts: all of `models` when every record scores
/// every one of them (one family) or there is no catalog; with several families and a catalog,
/// those the catalog prices (the users' catalog; the other families' models are auxiliary
/// outputs during training). The task gate needs one family.
pub fn shipped_models(
    records: &[Record],
    models: &[String],
    catalog: Option<&Catalog>,
    options: &TrainOptions,
) -> Result<Vec<String>> {
    if records.is_empty() {
        return Err(TrainingError::Invalid("no training records".into()));
    }
    let one_family = records
        .iter()
        .all(|r| models.iter().all(|m| r.scores.contains_key(m)));
    if one_family {
        return Ok(models.to_vec());
    }
    if options.task_gate {
        return Err(TrainingError::Invalid(
            "the task gate needs one family of data: some records lack some of the models".into(),
        ));
    }
    let Some(catalog) = catalog else {
        return Ok(models.to_vec());
    };
    let shipped: Vec<String> = models
        .iter()
        .filter(|m| catalog.get(m).is_some())
        .cloned()
        .collect();
    if shipped.is_empty() {
        return Err(TrainingError::Invalid(format!(
            "the catalog prices none of the data's models ({})",
            models.join(", ")
        )));
    }
    Ok(shipped)
}

/// The (training, validation) split of `records`, with an error when the training side is empty.
/// Each family is split as if it were the whole data ([`crate::data::family_split`]).
fn training_split(
    records: Vec<Record>,
    models: &[String],
    options: &TrainOptions,
) -> Result<(Vec<Record>, Vec<Record>)> {
    let (train_records, val_records) =
        crate::data::family_split(records, models, options.val_fraction, options.seed)?;
    if train_records.is_empty() {
        return Err(TrainingError::Invalid("the training split is empty".into()));
    }
    Ok((train_records, val_records))
}

/// The records (with their embeddings) that score every one of `models`.
fn scoring_all(
    records: Vec<Record>,
    x: Vec<Vec<f32>>,
    models: &[String],
) -> (Vec<Record>, Vec<Vec<f32>>) {
    records
        .into_iter()
        .zip(x)
        .filter(|(record, _)| models.iter().all(|m| record.scores.contains_key(m)))
        .unzip()
}

/// The position in `models` of each of `chosen` (all of which are among `models`).
fn column_indices(models: &[String], chosen: &[String]) -> Vec<usize> {
    chosen
        .iter()
        .filter_map(|m| models.iter().position(|c| c == m))
        .collect()
}

/// Each row's values at `columns`, in that order.
fn select_columns(rows: Vec<Vec<f32>>, columns: &[usize]) -> Vec<Vec<f32>> {
    rows.into_iter()
        .map(|row| columns.iter().map(|&c| row[c]).collect())
        .collect()
}

/// The head's weights by name, the output layer cut to the rows of the `shipped` models (all of
/// the fitted head's weights, unchanged, when every model ships).
fn shipped_head(
    varmap: &VarMap,
    models: &[String],
    shipped: &[String],
) -> Result<std::collections::HashMap<String, Tensor>> {
    let vars = named_vars(varmap)?;
    if shipped == models {
        return Ok(vars
            .into_iter()
            .map(|(name, var)| (name, var.as_tensor().clone()))
            .collect());
    }
    let rows: Vec<u32> = column_indices(models, shipped)
        .iter()
        .map(|&c| c as u32)
        .collect();
    let index = Tensor::from_slice(&rows, rows.len(), &Device::Cpu)?;
    let last = vars
        .iter()
        .filter_map(|(name, _)| {
            name.strip_prefix("layers.")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .unwrap_or(0);
    let output_layer = format!("layers.{last}.");
    vars.into_iter()
        .map(|(name, var)| {
            let tensor = var.as_tensor();
            let tensor = match name.starts_with(&output_layer) {
                true => tensor.index_select(&index, 0)?,
                false => tensor.clone(),
            };
            Ok((name, tensor))
        })
        .collect()
}

/// The training record of the bundle's manifest: data, seed and what the run measured.
fn training_record(
    options: &TrainOptions,
    (train_prompts, val_prompts): (usize, usize),
    fit: &FittedHead,
    validation: Option<&Evaluation>,
    length: Option<&(length::LengthFit, Option<length::LengthReport>)>,
    task_gate: Option<&gate::GateReport>,
) -> TrainingRecord {
    TrainingRecord {
        data: options.data.clone(),
        seed: options.seed,
        details: serde_json::json!({
            "val_fraction": options.val_fraction,
            "train_prompts": train_prompts,
            "val_prompts": val_prompts,
            "early_stop_fraction": options.early_stop_fraction,
            "early_stop_prompts": fit.early_stop_prompts,
            "epochs": fit.epochs,
            "best_early_stop_loss": fit.best_loss,
            "learning_rate": options.learning_rate,
            "weight_decay": options.weight_decay,
            "batch_size": options.batch_size,
            "task_shrinkage": options.task_shrinkage,
            "validation": validation.map(|v| &v.report),
            "output_length": length.map(|(fit, report)| serde_json::json!({
                "model": "ridge regression of ln(output tokens) on the embedding, per model",
                "ridge_strength": fit.strength,
                "validation": report,
            })),
            "task_gate": task_gate,
        }),
    }
}

/// What a validation report needs of the training side: its records' `(task, prompt)` keys,
/// embeddings, and its matrix of scores and routing costs.
struct TrainingSide<'a> {
    keys: &'a [(&'a str, &'a str)],
    x: &'a [Vec<f32>],
    matrix: &'a Matrix,
}

/// The validation side: its records, their embeddings and the length head that predicts the
/// output lengths its routing costs charge.
struct HeldOut<'a> {
    records: &'a [Record],
    x: &'a [Vec<f32>],
    lengths: Option<&'a length::LengthFit>,
}

impl HeldOut<'_> {
    /// The held-out test matrix for `models`, charging the length head's predicted output lengths.
    fn matrix(&self, models: &[String], catalog: Option<&Catalog>) -> Result<Matrix> {
        let lengths: Option<Vec<Vec<f32>>> = self.lengths.map(|fit| {
            self.x
                .iter()
                .map(|x| {
                    fit.predict_log(x)
                        .into_iter()
                        .map(|l| l.exp() as f32)
                        .collect()
                })
                .collect()
        });
        test_matrix(self.records, models, catalog, lengths.as_deref())
    }
}

/// The validation report: `predictions` of the held-out records judged on `test`, beside the kNN
/// and per-task-best baselines learned on the training side.
fn validate(
    train: &TrainingSide<'_>,
    held: &HeldOut<'_>,
    test: &Matrix,
    predictions: &[Vec<f32>],
    seed: u64,
) -> Result<Evaluation> {
    let knn = baselines::knn(train.x, train.matrix.scores(), held.x, baselines::DEFAULT_K)?;
    let train_tasks: Vec<&str> = train.keys.iter().map(|(task, _)| *task).collect();
    let val_tasks: Vec<&str> = held.records.iter().map(|r| r.task.as_str()).collect();
    let task_best = baselines::task_best(train.matrix, &train_tasks, &val_tasks)?;
    eval::evaluate(&EvalInput {
        test,
        skipped: 0,
        predictions,
        knn_predictions: &knn,
        tasks: &val_tasks,
        task_best: &task_best,
        seed,
    })
}

/// The output-length head fitted on the training side and measured on the validation side, when
/// every training record has every model's output length.
fn fit_length_head(
    train_records: &[Record],
    val_records: &[Record],
    train_x: &[Vec<f32>],
    val_x: &[Vec<f32>],
    models: &[String],
) -> Result<Option<(length::LengthFit, Option<length::LengthReport>)>> {
    if !length::has_lengths(train_records, models) {
        return Ok(None);
    }
    let train_y = length::log_lengths(train_records, models);
    let fit = length::fit(train_x, &train_y)?;
    let val_y = length::log_lengths(val_records, models);
    let train_tasks: Vec<&str> = train_records.iter().map(|r| r.task.as_str()).collect();
    let val_tasks: Vec<&str> = val_records.iter().map(|r| r.task.as_str()).collect();
    let report = length::has_lengths(val_records, models).then(|| {
        let train_side = length::Side {
            y: &train_y,
            tasks: &train_tasks,
        };
        length::report(
            &fit,
            train_side,
            val_x,
            length::Side {
                y: &val_y,
                tasks: &val_tasks,
            },
            models,
        )
    });
    Ok(Some((fit, report)))
}

/// Reads a catalog file.
pub fn read_catalog(path: &Path) -> Result<Catalog> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainingError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    Catalog::from_toml_str(&text).map_err(|e| TrainingError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// An evaluation of out-of-fold predictions: every prompt scored by a head that never saw it.
#[derive(Debug)]
pub struct CrossValidation {
    /// One report per family of the data ([`crate::data::families`]: records grouped by the set
    /// of models they score), in order of first appearance: data where every record scores every
    /// model is one family, reported over all of it.
    pub families: Vec<FamilyEvaluation>,
    /// Epochs each fold's head ran before early stopping.
    pub epochs: Vec<usize>,
    /// The fold each record was held out in.
    pub folds: Vec<usize>,
    /// Each record's out-of-fold predicted quality per model (in the order of `models`; a model
    /// the record has no score for is predicted too).
    pub predictions: Vec<Vec<f32>>,
    /// With [`TrainOptions::task_gate`]: each fold's gate, fitted on its training side only, and
    /// its recogniser's accuracy on the held-out prompts.
    pub task_gate: Option<gate::CvGate>,
}

/// The cross-validated report of one family: its records judged on its own models only, with the
/// head's out-of-fold predictions of those columns.
#[derive(Debug)]
pub struct FamilyEvaluation {
    /// The models its records score (the columns judged).
    pub models: Vec<String>,
    /// Its records' indices in the data.
    pub records: Vec<usize>,
    /// Whether the catalog's prices rank its choices (it prices every model of the family);
    /// else the data's own costs do.
    pub ranked_by_catalog: bool,
    /// The report (modes, AIQ, baselines, per task); the kNN and per-task-best baselines are
    /// out of fold in the same folds, learned on this family's records.
    pub evaluation: Evaluation,
    /// The out-of-fold output-length head against the per-model mean (each fold's training
    /// side), when the family has output lengths; the routing costs of `evaluation` then charge
    /// the out-of-fold predicted lengths.
    pub output_length: Option<length::LengthReport>,
}

/// K-fold cross-validation of training with `options` on `records`: folds stratified by task and
/// grouped by normalised prompt (see [`crate::data::folds`]); each fold's head is trained, with early stopping on a share of
/// its training side, on the other folds and predicts the held-out one. Every prompt is evaluated
/// once, so the estimate uses all the data and varies less than one validation split.
/// `options.val_fraction` is not used. Records of several families (each scoring its own models)
/// train one head with a masked loss, and each family is reported on its own
/// ([`FamilyEvaluation`]); the task gate needs one family.
pub fn cross_validate(
    records: &[Record],
    models: &[String],
    options: &TrainOptions,
    folds: usize,
) -> Result<CrossValidation> {
    let keys: Vec<(&str, &str)> = crate::data::split_keys(records).collect();
    let fold_of = checked_folds(records, models, folds, options.seed)?;
    let catalog = options.catalog.as_deref().map(read_catalog).transpose()?;
    let x = embed_records(records, models, options)?;
    let y = &score_rows(records, models, Missing::Masked)?;
    let tasks: Vec<&str> = keys.iter().map(|(task, _)| *task).collect();
    let families = crate::data::families(records, models);
    if options.task_gate
        && !matches!(families.as_slice(), [one] if one.records.len() == records.len())
    {
        return Err(TrainingError::Invalid(format!(
            "the task gate needs one family of data; these records score {} different sets of models",
            families.len()
        )));
    }
    let sides = families
        .into_iter()
        .map(|family| {
            FamilySide::new(
                family,
                records,
                &x,
                &fold_of,
                folds,
                catalog.as_ref(),
                options,
            )
        })
        .collect::<Result<Vec<_>>>()?;

    let mut predictions = vec![Vec::new(); records.len()];
    let mut epochs = Vec::with_capacity(folds);
    let mut gates = options.task_gate.then(gate::CvGate::default);
    for fold in 0..folds {
        let (held, kept): (Vec<usize>, Vec<usize>) =
            (0..records.len()).partition(|&i| fold_of[i] == fold);
        let rows =
            |index: &[usize]| -> Vec<Vec<f32>> { index.iter().map(|&i| x[i].clone()).collect() };
        let (kept_x, held_x) = (rows(&kept), rows(&held));
        let kept_y: Vec<Vec<f64>> = kept.iter().map(|&i| y[i].clone()).collect();
        let kept_keys: Vec<(&str, &str)> = kept.iter().map(|&i| keys[i]).collect();
        let label = format!("fold {}/{folds}", fold + 1);
        let fit = fit_early_stopped(&kept_keys, &kept_x, &kept_y, models.len(), options, &label)?;
        epochs.push(fit.epochs);
        let mut held_predictions = predict(&fit.head, &held_x)?;
        if let (Some(gates), [side]) = (gates.as_mut(), sides.as_slice()) {
            let (task_gate, report) = gate::fit_gate(
                &kept_keys,
                &kept_x,
                &side.test.select(&kept)?,
                options,
                &label,
            )?;
            let held_tasks: Vec<&str> = held.iter().map(|&i| tasks[i]).collect();
            gates.add_fold(
                &task_gate,
                report,
                &held_x,
                &held_tasks,
                &mut held_predictions,
            );
        }
        for (&i, row) in held.iter().zip(held_predictions) {
            predictions[i] = row;
        }
    }
    let families = sides
        .into_iter()
        .map(|side| side.evaluate(models, &x, &tasks, &predictions, options.seed))
        .collect::<Result<Vec<_>>>()?;
    Ok(CrossValidation {
        families,
        epochs,
        folds: fold_of,
        predictions,
        task_gate: gates,
    })
}

/// The fold of every record, each family's folds those of a run on it alone
/// ([`crate::data::family_folds`]); an error when some fold is left empty.
fn checked_folds(
    records: &[Record],
    models: &[String],
    folds: usize,
    seed: u64,
) -> Result<Vec<usize>> {
    let fold_of = crate::data::family_folds(records, models, folds, seed)?;
    if let Some(empty) = (0..folds).find(|fold| !fold_of.contains(fold)) {
        return Err(TrainingError::Invalid(format!(
            "{} records ({} distinct prompts) leave fold {} of {folds} empty",
            records.len(),
            records
                .iter()
                .map(|r| crate::data::normalized_prompt(&r.prompt))
                .collect::<std::collections::HashSet<_>>()
                .len(),
            empty + 1
        )));
    }
    Ok(fold_of)
}

/// Every record's embedding by the encoder `options` name (cached).
fn embed_records(
    records: &[Record],
    models: &[String],
    options: &TrainOptions,
) -> Result<Vec<Vec<f32>>> {
    let (encoder, encoder_config, _) = build_encoder(options)?;
    let fingerprint =
        embed::encoder_fingerprint(&router_config(options, models, encoder_config), &encoder);
    let prompts: Vec<&str> = records.iter().map(|r| r.prompt.as_str()).collect();
    embed::embed_cached(&encoder, fingerprint, &prompts, &options.cache_dir)
}

/// One family's side of a cross-validation: its records' folds, its test matrix (ranked by the
/// catalog when it prices every model of the family, charging out-of-fold predicted output
/// lengths when the family has lengths) and the length report.
struct FamilySide {
    family: crate::data::Family,
    fold_of: Vec<usize>,
    folds: usize,
    ranked_by_catalog: bool,
    test: Matrix,
    output_length: Option<length::LengthReport>,
}

impl FamilySide {
    fn new(
        family: crate::data::Family,
        records: &[Record],
        x: &[Vec<f32>],
        fold_of: &[usize],
        folds: usize,
        catalog: Option<&Catalog>,
        options: &TrainOptions,
    ) -> Result<Self> {
        let rows = &family.records;
        let own: Vec<Record> = rows.iter().map(|&i| records[i].clone()).collect();
        let own_folds: Vec<usize> = rows.iter().map(|&i| fold_of[i]).collect();
        let lengths = if options.length_head && length::has_lengths(&own, &family.models) {
            let own_x: Vec<Vec<f32>> = rows.iter().map(|&i| x[i].clone()).collect();
            let tasks: Vec<&str> = own.iter().map(|r| r.task.as_str()).collect();
            let log_lengths = length::log_lengths(&own, &family.models);
            Some(lengths_out_of_fold(
                &own_x,
                &log_lengths,
                &tasks,
                &own_folds,
                folds,
                &family.models,
            )?)
        } else {
            None
        };
        let catalog = catalog.filter(|c| family.models.iter().all(|m| c.get(m).is_some()));
        let predicted_lengths = lengths.as_ref().map(|(rows, _)| rows.as_slice());
        let test = test_matrix(&own, &family.models, catalog, predicted_lengths)?;
        Ok(Self {
            ranked_by_catalog: catalog.is_some(),
            output_length: lengths.map(|(_, report)| report),
            fold_of: own_folds,
            folds,
            test,
            family,
        })
    }

    /// The family's report from the out-of-fold `predictions` (of every model in `models`), with
    /// the kNN and per-task-best baselines out of fold on its own records.
    fn evaluate(
        self,
        models: &[String],
        x: &[Vec<f32>],
        tasks: &[&str],
        predictions: &[Vec<f32>],
        seed: u64,
    ) -> Result<FamilyEvaluation> {
        let rows = &self.family.records;
        let columns: Vec<usize> = self
            .family
            .models
            .iter()
            .filter_map(|m| models.iter().position(|c| c == m))
            .collect();
        let own_x: Vec<Vec<f32>> = rows.iter().map(|&i| x[i].clone()).collect();
        let own_tasks: Vec<&str> = rows.iter().map(|&i| tasks[i]).collect();
        let own_predictions: Vec<Vec<f32>> = rows
            .iter()
            .map(|&i| columns.iter().map(|&c| predictions[i][c]).collect())
            .collect();
        let knn =
            baselines::knn_out_of_fold(&own_x, self.test.scores(), &self.fold_of, self.folds)?;
        let task_best =
            baselines::task_best_out_of_fold(&self.test, &own_tasks, &self.fold_of, self.folds)?;
        let evaluation = eval::evaluate(&EvalInput {
            test: &self.test,
            skipped: 0,
            predictions: &own_predictions,
            knn_predictions: &knn,
            tasks: &own_tasks,
            task_best: &task_best,
            seed,
        })?;
        Ok(FamilyEvaluation {
            models: self.family.models,
            records: self.family.records,
            ranked_by_catalog: self.ranked_by_catalog,
            evaluation,
            output_length: self.output_length,
        })
    }
}

/// Out-of-fold predicted output tokens of every record (each from a length head fitted on the
/// other folds), and their report against each fold's per-model (and per-task) mean, pooled over
/// the folds.
fn lengths_out_of_fold(
    x: &[Vec<f32>],
    y: &[Vec<Option<f64>>],
    tasks: &[&str],
    fold_of: &[usize],
    folds: usize,
    models: &[String],
) -> Result<(Vec<Vec<f32>>, length::LengthReport)> {
    let mut predicted = vec![Vec::new(); x.len()];
    let mut reports = Vec::with_capacity(folds);
    for fold in 0..folds {
        let (held, kept): (Vec<usize>, Vec<usize>) =
            (0..x.len()).partition(|&i| fold_of[i] == fold);
        let rows =
            |index: &[usize]| -> Vec<Vec<f32>> { index.iter().map(|&i| x[i].clone()).collect() };
        let lengths = |index: &[usize]| -> Vec<Vec<Option<f64>>> {
            index.iter().map(|&i| y[i].clone()).collect()
        };
        let task_of = |index: &[usize]| -> Vec<&str> { index.iter().map(|&i| tasks[i]).collect() };
        let (kept_x, kept_y, kept_tasks) = (rows(&kept), lengths(&kept), task_of(&kept));
        let (held_x, held_y, held_tasks) = (rows(&held), lengths(&held), task_of(&held));
        let fit = length::fit(&kept_x, &kept_y)?;
        for (&i, row) in held.iter().zip(&held_x) {
            predicted[i] = fit
                .predict_log(row)
                .into_iter()
                .map(|l| l.exp() as f32)
                .collect();
        }
        let (train_side, held_side) = (
            length::Side {
                y: &kept_y,
                tasks: &kept_tasks,
            },
            length::Side {
                y: &held_y,
                tasks: &held_tasks,
            },
        );
        reports.push((
            held.len(),
            length::report(&fit, train_side, &held_x, held_side, models),
        ));
    }
    Ok((predicted, length::pooled(&reports)))
}

fn router_config(
    options: &TrainOptions,
    models: &[String],
    encoder: EncoderConfig,
) -> RouterConfig {
    RouterConfig {
        format_version: router_core::FORMAT_VERSION,
        name: options.name.clone(),
        version: options.version.clone(),
        models: models.to_vec(),
        encoder,
        pooling: Pooling::Mean,
        max_seq_length: options.max_seq_length,
        truncation: options.truncation,
        head: HeadConfig {
            hidden: options.hidden.clone(),
        },
        output_length: None,
        task_gate: None,
        training: None,
    }
}

/// A test matrix for `records`: actual costs from the data (else estimated from the catalog), and
/// the costs the router ranks by estimated from the catalog the way the live policy estimates them
/// (else the actual costs). Without a catalog, data with no costs at all (RouterDC's) costs 0 for
/// every model, so every mode chooses as Quality mode does; data with some costs must have all.
/// `output_tokens` (per record, per model: an output-length head's predictions) replaces the
/// catalog's expected output length in the routing costs, by the policy's own rule
/// ([`router_policy::ModelSpec::billed_output_tokens_for`]).
pub fn test_matrix(
    records: &[Record],
    models: &[String],
    catalog: Option<&Catalog>,
    output_tokens: Option<&[Vec<f32>]>,
) -> Result<Matrix> {
    let free = catalog.is_none() && records.iter().all(|r| r.costs.is_empty());
    let estimate = |index: usize, record: &Record, model: &String| -> Result<f64> {
        if free {
            return Ok(0.0);
        }
        let spec =
            catalog
                .and_then(|c| c.get(model))
                .ok_or_else(|| TrainingError::MissingPrice {
                    model: model.clone(),
                    source_name: "the catalog".into(),
                })?;
        let input = router_policy::estimate_tokens(&record.prompt) as u64;
        let predicted = output_tokens
            .and_then(|rows| rows.get(index))
            .and_then(|row| {
                models
                    .iter()
                    .position(|m| m == model)
                    .and_then(|column| row.get(column).copied())
            });
        Ok(router_policy::estimated_cost(
            spec,
            input,
            spec.billed_output_tokens_for(None, predicted),
        ))
    };
    let scores = score_rows(records, models, Missing::Error)?;
    let costs = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            models
                .iter()
                .map(|m| {
                    r.costs
                        .get(m)
                        .copied()
                        .map_or_else(|| estimate(i, r, m), Ok)
                })
                .collect()
        })
        .collect::<Result<Vec<Vec<f64>>>>()?;
    let matrix = Matrix::new(models.to_vec(), scores, costs)?;
    match catalog {
        Some(_) => {
            let routing = records
                .iter()
                .enumerate()
                .map(|(i, r)| models.iter().map(|m| estimate(i, r, m)).collect())
                .collect::<Result<Vec<Vec<f64>>>>()?;
            matrix.with_routing_costs(routing)
        }
        None => Ok(matrix),
    }
}

/// What [`score_rows`] makes of a record without a score for one of the models.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Missing {
    /// An error: a test matrix judges every model on every record.
    Error,
    /// NaN, a cell the training loss masks ([`targets`]).
    Masked,
}

fn score_rows(records: &[Record], models: &[String], missing: Missing) -> Result<Vec<Vec<f64>>> {
    records
        .iter()
        .enumerate()
        .map(|(index, record)| {
            models
                .iter()
                .map(|m| match (record.scores.get(m), missing) {
                    (Some(score), _) => Ok(*score),
                    (None, Missing::Masked) => Ok(f64::NAN),
                    (None, Missing::Error) => Err(TrainingError::MissingScore {
                        record: index,
                        model: m.clone(),
                    }),
                })
                .collect()
        })
        .collect()
}

fn build_encoder(options: &TrainOptions) -> Result<(Encoder, EncoderConfig, PathBuf)> {
    match &options.encoder {
        EncoderChoice::Static { dim, teacher } => {
            let table = embed::static_from_teacher(
                teacher,
                *dim,
                options.max_seq_length,
                options.truncation,
                &options.cache_dir,
            )?;
            let derived_from = match teacher {
                BertSource::Hub { repo, revision } => format!("{repo}@{revision}"),
                BertSource::Dir(dir) => dir.display().to_string(),
            };
            Ok((
                Encoder::Static(table),
                EncoderConfig::Static {
                    dim: *dim,
                    derived_from: Some(derived_from),
                },
                teacher.model_dir()?,
            ))
        }
        EncoderChoice::Bert(source) => {
            let bert = source.load(options.max_seq_length, options.truncation)?;
            let dim = bert.dim();
            let config = match source {
                BertSource::Hub { repo, revision } => EncoderConfig::Bert {
                    repo: Some(repo.clone()),
                    revision: Some(revision.clone()),
                    path: None,
                    dim,
                },
                BertSource::Dir(dir) => EncoderConfig::Bert {
                    repo: None,
                    revision: None,
                    path: Some(std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone())),
                    dim,
                },
            };
            Ok((Encoder::Bert(bert), config, source.model_dir()?))
        }
    }
}

pub(crate) struct FittedHead {
    pub(crate) head: Head,
    varmap: VarMap,
    epochs: usize,
    best_loss: f64,
    early_stop_prompts: usize,
}

/// Fits a head on the rows `x`, `y` (of records with these `(task, prompt)` keys), early-stopping
/// on a task-stratified, prompt-grouped share (`options.early_stop_fraction`) of them that the
/// optimiser never steps on.
pub(crate) fn fit_early_stopped(
    keys: &[(&str, &str)],
    x: &[Vec<f32>],
    y: &[Vec<f64>],
    outputs: usize,
    options: &TrainOptions,
    label: &str,
) -> Result<FittedHead> {
    let held = crate::data::validation_mask(
        keys.iter().copied(),
        options.early_stop_fraction,
        options.seed,
    )?;
    let side = |stop: bool| {
        let index: Vec<usize> = (0..x.len()).filter(|&i| held[i] == stop).collect();
        let xs: Vec<Vec<f32>> = index.iter().map(|&i| x[i].clone()).collect();
        let ys: Vec<Vec<f64>> = index.iter().map(|&i| y[i].clone()).collect();
        (xs, ys)
    };
    let (fit_x, mut fit_y) = side(false);
    let (stop_x, stop_y) = side(true);
    if fit_x.is_empty() {
        return Err(TrainingError::Invalid(
            "nothing is left to train on after the early-stopping split".into(),
        ));
    }
    if options.task_shrinkage > 0.0 {
        let fit_tasks: Vec<&str> = (0..x.len())
            .filter(|&i| !held[i])
            .map(|i| keys[i].0)
            .collect();
        shrink_towards_task_means(&mut fit_y, &fit_tasks, options.task_shrinkage);
    }
    let mut fitted = fit_head(&fit_x, &fit_y, &stop_x, &stop_y, outputs, options, label)?;
    fitted.early_stop_prompts = stop_x.len();
    Ok(fitted)
}

/// Replaces each target row `y` by `(1 − λ) y + λ m`, `m` the mean row of its task: the head
/// learns per-prompt differences only as far as they stand out from what is known for the task.
/// Missing cells (NaN) stay missing and are left out of the means.
fn shrink_towards_task_means(y: &mut [Vec<f64>], tasks: &[&str], shrinkage: f64) {
    type SumsAndCounts = (Vec<f64>, Vec<f64>);
    let mut sums: std::collections::BTreeMap<&str, SumsAndCounts> =
        std::collections::BTreeMap::new();
    for (row, task) in y.iter().zip(tasks) {
        let (sum, count) = sums
            .entry(task)
            .or_insert_with(|| (vec![0.0; row.len()], vec![0.0; row.len()]));
        for ((s, c), v) in sum.iter_mut().zip(count.iter_mut()).zip(row) {
            if !v.is_nan() {
                *s += v;
                *c += 1.0;
            }
        }
    }
    for (row, task) in y.iter_mut().zip(tasks) {
        if let Some((sum, count)) = sums.get(task) {
            for ((v, s), c) in row.iter_mut().zip(sum).zip(count) {
                *v = (1.0 - shrinkage) * *v + shrinkage * s / c;
            }
        }
    }
}

/// Rows a loss is taken over: embeddings, targets and the mask of the cells that have a score
/// (`None` when every cell has one).
struct LossRows {
    x: Tensor,
    y: Tensor,
    mask: Option<Tensor>,
}

impl LossRows {
    fn new(x: &[Vec<f32>], y: &[Vec<f64>], dim: usize, outputs: usize) -> Result<Self> {
        let (targets, mask) = targets(y, outputs)?;
        Ok(LossRows {
            x: to_tensor(x, dim)?,
            y: targets,
            mask,
        })
    }

    /// The rows at `index` (a mini-batch).
    fn select(&self, index: &Tensor) -> Result<LossRows> {
        Ok(LossRows {
            x: self.x.index_select(index, 0)?,
            y: self.y.index_select(index, 0)?,
            mask: self
                .mask
                .as_ref()
                .map(|m| m.index_select(index, 0))
                .transpose()?,
        })
    }

    /// `head`'s masked sigmoid cross-entropy over these rows.
    fn loss(&self, head: &Head) -> Result<Tensor> {
        masked_bce(&head.forward_logits(&self.x)?, &self.y, self.mask.as_ref())
    }
}

fn to_tensor(rows: &[Vec<f32>], width: usize) -> Result<Tensor> {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Ok(Tensor::from_vec(flat, (rows.len(), width), &Device::Cpu)?)
}

/// Score rows as the loss's targets: a tensor, and where some cell is missing (NaN: a record of
/// another family) a mask of the observed cells (1 observed, 0 missing; missing targets set to 0).
/// Rows that are all observed give no mask, so the dense loss is exactly candle's.
fn targets(rows: &[Vec<f64>], width: usize) -> Result<(Tensor, Option<Tensor>)> {
    let shape = (rows.len(), width);
    let flat: Vec<f32> = rows.iter().flatten().map(|v| *v as f32).collect();
    if !flat.iter().any(|v| v.is_nan()) {
        return Ok((Tensor::from_vec(flat, shape, &Device::Cpu)?, None));
    }
    let mask: Vec<f32> = flat
        .iter()
        .map(|v| f32::from(u8::from(!v.is_nan())))
        .collect();
    let observed: Vec<f32> = flat
        .iter()
        .map(|v| if v.is_nan() { 0.0 } else { *v })
        .collect();
    Ok((
        Tensor::from_vec(observed, shape, &Device::Cpu)?,
        Some(Tensor::from_vec(mask, shape, &Device::Cpu)?),
    ))
}

/// The sigmoid cross-entropy of `logits` against `targets`, averaged over the observed cells.
/// Without a mask every cell is observed: candle's own loss, as before masks existed. With one,
/// each cell's loss in the stable form `max(z, 0) − z·y + ln(1 + e^−|z|)` is multiplied by its
/// mask and the sum divided by the number of observed cells (at least 1), so a missing cell adds
/// nothing to the loss and gives no gradient, whatever its logit.
fn masked_bce(logits: &Tensor, targets: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let Some(mask) = mask else {
        return Ok(loss::binary_cross_entropy_with_logit(logits, targets)?);
    };
    let softplus = logits.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    let cells = ((logits.relu()? - (logits * targets)?)? + softplus)?;
    let observed = mask.sum_all()?.maximum(1.0)?;
    Ok((cells * mask)?.sum_all()?.div(&observed)?)
}

fn fit_head(
    train_x: &[Vec<f32>],
    train_y: &[Vec<f64>],
    stop_x: &[Vec<f32>],
    stop_y: &[Vec<f64>],
    outputs: usize,
    options: &TrainOptions,
    label: &str,
) -> Result<FittedHead> {
    let dim = train_x.first().map_or(0, Vec::len);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let head = Head::load(
        vb,
        &HeadConfig {
            hidden: options.hidden.clone(),
        },
        dim,
        outputs,
    )?;
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let vars = seeded_init(&varmap, &mut rng)?;
    let mut optimizer = AdamW::new(
        vars.iter().map(|(_, v)| v.clone()).collect(),
        ParamsAdamW {
            lr: options.learning_rate,
            weight_decay: options.weight_decay,
            ..Default::default()
        },
    )?;
    let all = LossRows::new(train_x, train_y, dim, outputs)?;
    let stop = (!stop_x.is_empty() && !stop_y.is_empty())
        .then(|| LossRows::new(stop_x, stop_y, dim, outputs))
        .transpose()?;
    let mut order: Vec<u32> = (0..train_x.len() as u32).collect();
    let mut best: Option<(f64, Vec<Tensor>)> = None;
    let (mut since_best, mut epochs) = (0, 0);
    let bar = embed::progress_bar(options.max_epochs, label);
    for _ in 0..options.max_epochs {
        epochs += 1;
        order.shuffle(&mut rng);
        for batch in order.chunks(options.batch_size.max(1)) {
            let index = Tensor::from_slice(batch, batch.len(), &Device::Cpu)?;
            optimizer.backward_step(&all.select(&index)?.loss(&head)?)?;
        }
        let epoch_loss = stop
            .as_ref()
            .unwrap_or(&all)
            .loss(&head)?
            .to_scalar::<f32>()? as f64;
        bar.inc(1);
        if best.as_ref().is_none_or(|(b, _)| epoch_loss < *b) {
            let weights = vars.iter().map(|(_, v)| v.as_tensor().copy());
            best = Some((epoch_loss, weights.collect::<std::result::Result<_, _>>()?));
            since_best = 0;
        } else {
            since_best += 1;
            if since_best >= options.patience {
                break;
            }
        }
    }
    bar.finish_and_clear();
    let best_loss = match best {
        Some((loss, weights)) => {
            for ((_, var), weight) in vars.iter().zip(weights) {
                var.set(&weight)?;
            }
            loss
        }
        None => f64::NAN,
    };
    Ok(FittedHead {
        head,
        varmap,
        epochs,
        best_loss,
        early_stop_prompts: 0,
    })
}

/// Sets every variable, in name order, from `rng`: uniform in ±1/√fan_in, PyTorch's default for
/// linear layers. candle's own initialisation draws from an unseeded generator.
fn seeded_init(varmap: &VarMap, rng: &mut ChaCha8Rng) -> Result<Vec<(String, Var)>> {
    let vars = named_vars(varmap)?;
    let fan_in_of = |name: &str| -> usize {
        let weight = name.replace(".bias", ".weight");
        vars.iter()
            .find(|(n, _)| *n == weight)
            .and_then(|(_, v)| v.dims().get(1).copied())
            .unwrap_or(1)
    };
    for (name, var) in &vars {
        let bound = 1.0 / (fan_in_of(name) as f32).sqrt();
        let values: Vec<f32> = (0..var.elem_count())
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        var.set(&Tensor::from_vec(values, var.shape(), &Device::Cpu)?)?;
    }
    Ok(vars)
}

/// The variables of `varmap` with their names, in name order.
fn named_vars(varmap: &VarMap) -> Result<Vec<(String, Var)>> {
    let mut vars: Vec<(String, Var)> = match varmap.data().lock() {
        Ok(data) => data
            .iter()
            .map(|(name, var)| (name.clone(), var.clone()))
            .collect(),
        Err(_) => {
            return Err(TrainingError::Invalid(
                "the variable map's lock is poisoned".into(),
            ))
        }
    };
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(vars)
}

/// The head's predicted qualities for embeddings.
pub fn predict(head: &Head, embeddings: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
    use router_core::candle_core::Module;
    if embeddings.is_empty() {
        return Ok(Vec::new());
    }
    let width = embeddings[0].len();
    Ok(head.forward(&to_tensor(embeddings, width)?)?.to_vec2()?)
}

/// What a bundle is written from: its manifest, encoder (and the teacher's directory, for the
/// tokenizer), the head's weights by name, and the auxiliary models cut from the head.
struct BundleParts<'a> {
    config: &'a RouterConfig,
    encoder: &'a Encoder,
    teacher_dir: &'a Path,
    head: &'a std::collections::HashMap<String, Tensor>,
    auxiliary: &'a [String],
}

fn write_bundle(
    out_dir: &Path,
    parts: &BundleParts<'_>,
    options: &TrainOptions,
    validation: Option<&Evaluation>,
) -> Result<()> {
    let BundleParts {
        config,
        encoder,
        teacher_dir,
        head,
        auxiliary,
    } = *parts;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TrainingError::Io { path, source }
    };
    std::fs::create_dir_all(out_dir).map_err(io(out_dir))?;
    config.save(out_dir)?;
    let tokenizer_from = teacher_dir.join(files::TOKENIZER);
    let tokenizer_to = out_dir.join(files::TOKENIZER);
    std::fs::copy(&tokenizer_from, &tokenizer_to).map_err(io(&tokenizer_from))?;
    if let Encoder::Static(table) = encoder {
        table.save_table(&out_dir.join(files::STATIC_ENCODER))?;
    }
    let head_path = out_dir.join(files::HEAD);
    router_core::candle_core::safetensors::save(head, &head_path).map_err(|e| {
        TrainingError::Format {
            path: head_path.clone(),
            message: e.to_string(),
        }
    })?;
    if let Some(catalog) = &options.catalog {
        write_catalog(catalog, &out_dir.join("catalog.toml"), &config.models)?;
    }
    if let Some(evaluation) = validation {
        eval::plot_svg(evaluation, &out_dir.join("validation.svg"))?;
    }
    let card = model_card(config, options, validation, auxiliary);
    let card_path = out_dir.join(files::MODEL_CARD);
    std::fs::write(&card_path, card).map_err(io(&card_path))
}

/// Writes the task gate into the bundle and appends its inner cross-validation to the model card.
fn write_task_gate(
    out_dir: &Path,
    task_gate: &router_core::TaskGate,
    report: &gate::GateReport,
) -> Result<()> {
    task_gate.save(&out_dir.join(files::TASK_GATE))?;
    let card_path = out_dir.join(files::MODEL_CARD);
    let mut card = std::fs::read_to_string(&card_path).map_err(|source| TrainingError::Io {
        path: card_path.clone(),
        source,
    })?;
    card.push_str(&format!(
        "\n## Task gate\n\n`{}`: a softmax regression recognises the prompt's task. A prompt recognised with probability \
         ≥ {}, and at least as similar to the task's centroid as {} % of the task's training prompts (so a prompt unlike \
         every task is recognised as none), has its scores blended towards its task's training means by the task's \
         blend, chosen by an inner cross-validation of the training side (Quality mode, observed scores; blend 1, the \
         per-task-best rule, unless a smaller one beats it by more than a standard error):\n\n```text\n{report}```\n",
        files::TASK_GATE,
        gate::MIN_CONFIDENCE,
        100.0 * (1.0 - gate::SIMILARITY_QUANTILE)
    ));
    std::fs::write(&card_path, card).map_err(|source| TrainingError::Io {
        path: card_path,
        source,
    })
}

/// Writes the output-length head into the bundle and appends its measurement to the model card.
fn write_length_head(
    out_dir: &Path,
    fit: &length::LengthFit,
    report: Option<&length::LengthReport>,
) -> Result<()> {
    let tensors = fit.to_tensors()?;
    let path = out_dir.join(files::LENGTH_HEAD);
    router_core::candle_core::safetensors::save(&tensors, &path).map_err(|e| {
        TrainingError::Format {
            path: path.clone(),
            message: e.to_string(),
        }
    })?;
    let card_path = out_dir.join(files::MODEL_CARD);
    let mut card = std::fs::read_to_string(&card_path).map_err(|source| TrainingError::Io {
        path: card_path.clone(),
        source,
    })?;
    card.push_str(&format!(
        "\n## Output length\n\n`{}`: per model, a ridge regression (strength {}) of ln(output tokens) on the prompt embedding; \
         the policy charges each model its predicted output tokens instead of the catalog's `expected_output_tokens`.\n",
        files::LENGTH_HEAD,
        fit.strength
    ));
    if let Some(report) = report {
        card.push_str(&format!(
            "\nOn the validation split:\n\n```text\n{report}\n```\n"
        ));
    }
    std::fs::write(&card_path, card).map_err(|source| TrainingError::Io {
        path: card_path,
        source,
    })
}

/// Ships the catalog `from` in the bundle as `to`: copied as it is when it names only the bundle's
/// models, else restricted to them. A policy refuses a catalog entry the bundle does not predict
/// (it is almost always a typo), so a bundle trained on a subset of a catalog's models (`--models`)
/// would otherwise not route with its own catalog.
fn write_catalog(from: &Path, to: &Path, models: &[String]) -> Result<()> {
    let catalog = read_catalog(from)?;
    if catalog.models.iter().all(|m| models.contains(&m.name)) {
        if std::fs::canonicalize(from).ok() != std::fs::canonicalize(to).ok() {
            std::fs::copy(from, to).map_err(|source| TrainingError::Io {
                path: from.to_path_buf(),
                source,
            })?;
        }
        return Ok(());
    }
    let kept = Catalog::new(
        catalog
            .models
            .into_iter()
            .filter(|m| models.contains(&m.name))
            .collect(),
    );
    let body = toml::to_string(&kept).map_err(|e| TrainingError::Format {
        path: to.to_path_buf(),
        message: e.to_string(),
    })?;
    let text = format!(
        "# The entries of {} for the {} models of this bundle.\n\n{body}",
        from.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        kept.models.len()
    );
    std::fs::write(to, text).map_err(|source| TrainingError::Io {
        path: to.to_path_buf(),
        source,
    })
}

fn model_card(
    config: &RouterConfig,
    options: &TrainOptions,
    validation: Option<&Evaluation>,
    auxiliary: &[String],
) -> String {
    let encoder = match &config.encoder {
        EncoderConfig::Static { dim, derived_from } => format!(
            "static token table, {dim} dimensions, derived from {} (Model2Vec-style: vocabulary through the encoder, PCA, SIF weights)",
            derived_from.as_deref().unwrap_or("a BERT encoder")
        ),
        EncoderConfig::Bert { repo, revision, path, dim } => format!(
            "BERT encoder {} ({dim} dimensions, mean pooling)",
            path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| format!(
                "{}@{}",
                repo.as_deref().unwrap_or("?"),
                revision.as_deref().unwrap_or("main")
            ))
        ),
    };
    let table = validation
        .map(|v| format!(
            "## Validation ({:.0} % held out, seed {}; early stopping on {:.0} % of the rest)\n\n```text\n{}\n```\n\n![cost-quality curve](validation.svg)\n",
            options.val_fraction * 100.0,
            options.seed,
            options.early_stop_fraction * 100.0,
            v.report
        ))
        .unwrap_or_else(|| "No validation split was held out.\n".into());
    let reproduce = options
        .command
        .as_ref()
        .map(|command| format!("## Reproduce\n\nFrom the repository root, with the data beside it in `../shared/data`:\n\n```sh\n{command}\n```\n\n"))
        .unwrap_or_default();
    format!(
        "# {name} ({version})\n\nA model-router bundle: it predicts, for a prompt, the quality each of {n} models would reach.\n\n\
         - Models (head columns): {models}\n{auxiliary}- Encoder: {encoder}\n- Head: {head}, one sigmoid per model\n\
         - Prompts: the last {max} tokens are kept (truncation {truncation:?})\n- Trained on: {data}\n- Seed: {seed}\n\n{reproduce}{table}\n\
         ## Licence lineage\n\nThe encoder derives from sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0). The head is trained on the \
         data listed above; see each dataset's own licence (RouterBench via RouterDC: code MIT, dataset card states no licence; \
         LLMRouter: MIT; RouterDC: no licence file; ZeroEval: Apache-2.0, its GSM8K, MATH and CRUXEval prompts MIT). No data is shipped in the bundle.\n",
        name = config.name,
        version = config.version,
        n = config.models.len(),
        models = config.models.join(", "),
        auxiliary = if auxiliary.is_empty() { String::new() } else { format!(
            "- Auxiliary outputs during training (other families' models: their scores were learned with a masked loss, \
             shaping the shared hidden layer, and their rows were cut from the output layer): {}\n",
            auxiliary.join(", ")
        ) },
        head = if config.head.hidden.is_empty() { "linear".to_string() } else { format!("MLP, hidden layers {:?}", config.head.hidden) },
        max = config.max_seq_length,
        truncation = config.truncation,
        data = options.data.join(", "),
        seed = options.seed,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const CATALOG: &str = "# prices\n\n[[models]]\nname = \"big\"\ninput_price = 10.0\noutput_price = 30.0\ncontext_window = 128000\ntools = true\n\n\
                           [[models]]\nname = \"small\"\ninput_price = 0.2\noutput_price = 0.2\ncontext_window = 4096\n";

    fn names(catalog: &Catalog) -> Vec<&str> {
        catalog.models.iter().map(|m| m.name.as_str()).collect()
    }

    #[test]
    fn targets_shrink_towards_their_task_means() {
        let mut y = vec![vec![1.0, 0.0], vec![0.0, 0.0], vec![0.5, 1.0]];
        shrink_towards_task_means(&mut y, &["a", "a", "b"], 0.5);
        // Task a's mean is [0.5, 0]; task b's is its one row, which stays as it is.
        assert_eq!(y, [vec![0.75, 0.0], vec![0.25, 0.0], vec![0.5, 1.0]]);
        shrink_towards_task_means(&mut y, &["a", "a", "b"], 1.0);
        assert_eq!(y, [vec![0.5, 0.0], vec![0.5, 0.0], vec![0.5, 1.0]]);
    }

    #[test]
    fn shrinkage_leaves_missing_cells_missing_and_out_of_the_means() {
        let mut y = vec![vec![1.0, f64::NAN], vec![0.0, 1.0], vec![0.5, 0.0]];
        shrink_towards_task_means(&mut y, &["a", "a", "a"], 0.5);
        // Column 0's mean is 0.5 over three rows; column 1's is 0.5 over the two observed ones.
        assert_eq!(y[1..], [vec![0.25, 0.75], vec![0.5, 0.25]]);
        assert_eq!(y[0][0], 0.75);
        assert!(y[0][1].is_nan());
    }

    /// The sigmoid cross-entropy of one cell, by hand.
    fn bce(logit: f64, target: f64) -> f64 {
        let p = 1.0 / (1.0 + (-logit).exp());
        -(target * p.ln() + (1.0 - target) * (1.0 - p).ln())
    }

    #[test]
    fn missing_scores_add_nothing_to_the_loss_and_get_no_gradient() {
        let rows = vec![vec![1.0, f64::NAN], vec![0.0, 0.5]];
        let (y, mask) = targets(&rows, 2).unwrap();
        let mask = mask.expect("a missing cell makes a mask");
        assert_eq!(y.to_vec2::<f32>().unwrap(), [[1.0, 0.0], [0.0, 0.5]]);
        assert_eq!(mask.to_vec2::<f32>().unwrap(), [[1.0, 0.0], [1.0, 1.0]]);
        // The missing cell's logit is far out: its own loss would be huge (or inf).
        let logits = Var::from_vec(vec![0.3f32, -120.0, -0.7, 2.0], (2, 2), &Device::Cpu).unwrap();
        // Whatever value the missing cell's target holds, loss and gradients are the same.
        let other_y = Tensor::new(&[[1.0f32, 1.0], [0.0, 0.5]], &Device::Cpu).unwrap();
        let mut gradients = Vec::new();
        for targets in [&y, &other_y] {
            let loss = masked_bce(logits.as_tensor(), targets, Some(&mask)).unwrap();
            let expected = (bce(0.3, 1.0) + bce(-0.7, 0.0) + bce(2.0, 0.5)) / 3.0;
            let value = loss.to_scalar::<f32>().unwrap() as f64;
            assert!((value - expected).abs() < 1e-6, "{value} vs {expected}");
            let grads = loss.backward().unwrap();
            let gradient = grads
                .get(logits.as_tensor())
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            assert_eq!(gradient[0][1], 0.0, "the missing cell gets no gradient");
            // d/dz of the mean over 3 observed cells: (sigmoid(z) - y) / 3.
            let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
            assert!((gradient[0][0] as f64 - (sigmoid(0.3) - 1.0) / 3.0).abs() < 1e-6);
            gradients.push(gradient);
        }
        assert_eq!(gradients[0], gradients[1]);
    }

    #[test]
    fn complete_targets_make_no_mask_and_the_loss_is_candles_own() {
        let (y, mask) = targets(&[vec![1.0, 0.0], vec![0.25, 1.0]], 2).unwrap();
        assert!(mask.is_none());
        let logits = Tensor::new(&[[0.3f32, -1.0], [0.7, 2.0]], &Device::Cpu).unwrap();
        let ours = masked_bce(&logits, &y, None)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let candles = loss::binary_cross_entropy_with_logit(&logits, &y)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(ours.to_bits(), candles.to_bits());
    }

    /// A linear head's column sees only its own cells: a column missing on some records is fitted
    /// the same whatever the other columns score there.
    #[test]
    fn a_column_missing_on_some_records_is_fitted_from_its_observed_cells_only() {
        let options = TrainOptions {
            hidden: Vec::new(),
            max_epochs: 3,
            batch_size: 4,
            learning_rate: 1e-2,
            ..TrainOptions::default()
        };
        let x: Vec<Vec<f32>> = (0..12)
            .map(|i| {
                (0..4)
                    .map(|j| ((i * 7 + j * 3) % 5) as f32 / 5.0 - 0.4)
                    .collect()
            })
            .collect();
        let scored = |other: f64| -> Vec<Vec<f64>> {
            (0..12)
                .map(|i| match i % 2 {
                    0 => vec![(i % 3) as f64 / 2.0, (i % 4) as f64 / 3.0],
                    _ => vec![other, f64::NAN],
                })
                .collect()
        };
        let column = |y: &[Vec<f64>]| -> Vec<f32> {
            let fit = fit_head(&x, y, &[], &[], 2, &options, "test").unwrap();
            predict(&fit.head, &x)
                .unwrap()
                .iter()
                .map(|row| row[1])
                .collect()
        };
        let (low, high) = (column(&scored(0.0)), column(&scored(1.0)));
        assert!(low.iter().all(|p| p.is_finite() && (0.0..=1.0).contains(p)));
        assert_eq!(low, high);
        // ... and it did learn: its predictions moved away from where they started.
        let untrained = TrainOptions {
            max_epochs: 0,
            ..options.clone()
        };
        let start = fit_head(&x, &scored(0.0), &[], &[], 2, &untrained, "test").unwrap();
        let start: Vec<f32> = predict(&start.head, &x)
            .unwrap()
            .iter()
            .map(|r| r[1])
            .collect();
        assert_ne!(start, low);
    }

    #[test]
    fn catalog_is_copied_as_is_when_it_names_only_bundle_models() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("given.toml");
        std::fs::write(&from, CATALOG).unwrap();
        let to = dir.path().join("catalog.toml");
        write_catalog(&from, &to, &["small".into(), "big".into()]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&to).unwrap(),
            CATALOG,
            "comments and all"
        );
        // Shipping a bundle's own catalog into itself leaves it alone.
        write_catalog(&to, &to, &["small".into(), "big".into()]).unwrap();
        assert_eq!(std::fs::read_to_string(&to).unwrap(), CATALOG);
    }

    #[test]
    fn catalog_is_restricted_to_the_bundle_models() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("given.toml");
        std::fs::write(&from, CATALOG).unwrap();
        let to = dir.path().join("catalog.toml");
        write_catalog(&from, &to, &["big".into()]).unwrap();
        let written = read_catalog(&to).unwrap();
        assert_eq!(names(&written), ["big"]);
        assert_eq!(
            written.get("big"),
            read_catalog(&from).unwrap().get("big"),
            "the entry is kept whole"
        );
        // And a policy over the bundle's one column accepts it.
        router_policy::Policy::new(
            written,
            vec!["big".into()],
            router_policy::PolicyDefaults::new(router_policy::Mode::Balanced),
        )
        .expect("the restricted catalog routes");
    }
}
