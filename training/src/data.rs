//! Dataset importers: public routing data in its own formats -> one canonical [`Record`] list.
//!
//! Each format is read as it comes (see `shared/data/README.md`):
//!
//! | [`Format`] | input | task | costs |
//! |---|---|---|---|
//! | `routerbench` | CSV: `sample_id, prompt, eval_name`, a score column per model, `<model>\|model_response`, `<model>\|total_cost`, `oracle_model_to_route_to` | `eval_name` | `<model>\|total_cost` (USD) |
//! | `routerdc` | JSON array of `{"question", "scores", "cluster_id"?}` | the file name | none |
//! | `llmrouter` | JSON array of `{"question", "scores", "cluster_id", "task"}` | `task` | none |
//! | `routellm` | CSV: `prompt` and a `True`/`False` (or numeric) column per model; other columns ignored | the file name | none |
//! | `jsonl` | one [`Record`] per line: `prompt`, `task` (default `""`), `scores`, `costs` (optional) | `task` | `costs` |
//!
//! The models of a RouterBench file are the columns `X` that have a matching `X|total_cost`. The
//! models of a RouteLLM file are its columns other than `prompt` whose name neither contains
//! "response" nor is a pandas index (`""`, `Unnamed: 0`), and whose non-empty values are mostly
//! `True`/`False`/numbers; a minority of other values in such a column makes those rows skipped
//! (counted), rather than the column silently dropped.
//!
//! **The task from a file name** is the file stem without a trailing `_train`, `-train`, `_test` or
//! `-test` (`gsm8k-train.json` -> `gsm8k`).
//!
//! **RouterBench prompts** are stored as Python list literals of turns, with Python escapes
//! (`['Question...\nA) ...']`). The importer decodes such a literal into the text the model was
//! sent: the turns, unescaped, joined with a blank line. A prompt that is not such a literal is kept
//! exactly as given. (In the training files 8 arc-challenge prompts have two identical turns; they
//! are kept as they are, both turns.)
//!
//! **Bad rows are skipped and counted, never silently, never a panic**: an empty, non-numeric, NaN or
//! out-of-[0, 1] score, a model missing from a record that the other records have, a negative or
//! non-numeric cost, a row with the wrong number of fields or that is not a JSON object. The counts
//! by [`SkipReason`] are in [`Dataset::skip_reasons`]. (Several families read together with
//! [`MissingScores::Keep`] keep records that lack other families' models: see [`families`].)
//! Empty prompts are legal and kept. A file that is missing, unreadable or wrong as a whole is an
//! error naming the file.
//!
//! **Costs** are USD per prompt. They come from the data where it has them; where a record has no
//! cost for a model and a price list is given (`--prices`, the LLMRouter `default_llm.json` format:
//! model -> `{"input_price", "output_price", ...}` in USD per 1M tokens), the cost is estimated by
//! [`estimate_cost`]: the policy's token estimate of the prompt × input price + [`EXPECTED_OUTPUT_TOKENS`] ×
//! output price.
//!
//! ```
//! use std::collections::BTreeMap;
//! use router_training::data::{self, Format, Record};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("data.jsonl");
//! let record = Record {
//!     prompt: "What is 2 + 2?".into(),
//!     task: "math".into(),
//!     scores: BTreeMap::from([("small".into(), 1.0), ("big".into(), 1.0)]),
//!     costs: BTreeMap::new(),
//!     output_tokens: BTreeMap::from([("small".into(), 12), ("big".into(), 30)]),
//! };
//! data::write_jsonl(&[record.clone()], &path).unwrap();
//! let dataset = data::load(Format::Jsonl, &[path], None).unwrap();
//! assert_eq!(dataset.records, vec![record]);
//! assert_eq!(dataset.models(), ["big", "small"]);
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Result, TrainingError};

/// A row read into a record, or why it was skipped.
type RowResult<T> = std::result::Result<T, SkipReason>;

/// Output tokens assumed for every answer when a cost is estimated from prices.
///
/// The data have no output lengths. 256 tokens is a short answer with some reasoning; what matters
/// for routing is the ranking of models, which a constant does not change when input and output
/// prices are proportional.
pub const EXPECTED_OUTPUT_TOKENS: u64 = 256;

/// List prices of one model in USD per 1M tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Price {
    /// USD per 1M input (prompt) tokens.
    pub input_price: f64,
    /// USD per 1M output (completion) tokens.
    pub output_price: f64,
}

/// Estimated USD cost of sending `prompt` to a model with `price`: input tokens estimated as the
/// live policy estimates them ([`router_policy::estimate_tokens`]) × input price +
/// [`EXPECTED_OUTPUT_TOKENS`] × output price (prices per 1M tokens).
///
/// ```
/// use router_training::data::{estimate_cost, Price};
/// let price = Price { input_price: 1.0, output_price: 2.0 };
/// // "abcdefgh": 8 characters / 3 -> 3 input tokens at 1 USD/M, + 256 output tokens at 2 USD/M.
/// assert!((estimate_cost("abcdefgh", &price) - (3.0 + 512.0) / 1e6).abs() < 1e-15);
/// ```
pub fn estimate_cost(prompt: &str, price: &Price) -> f64 {
    (router_policy::estimate_tokens(prompt) as f64 * price.input_price
        + EXPECTED_OUTPUT_TOKENS as f64 * price.output_price)
        / 1e6
}

/// Reads a price list in the LLMRouter `default_llm.json` format: a JSON object mapping each model
/// to an object with at least `input_price` and `output_price` (USD per 1M tokens); other fields are
/// ignored.
pub fn read_prices(path: &Path) -> Result<BTreeMap<String, Price>> {
    let text = std::fs::read_to_string(path).map_err(|source| io_error(path, source))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| format_error(path, e))?;
    let Value::Object(models) = value else {
        return Err(format_error(
            path,
            "expected a JSON object of model -> prices",
        ));
    };
    models
        .into_iter()
        .map(|(model, entry)| {
            let price = |field: &str| {
                entry
                    .get(field)
                    .and_then(Value::as_f64)
                    .filter(|p| p.is_finite() && *p >= 0.0)
                    .ok_or_else(|| {
                        format_error(path, format!("model {model:?}: {field} is not a price"))
                    })
            };
            let price = Price {
                input_price: price("input_price")?,
                output_price: price("output_price")?,
            };
            Ok((model, price))
        })
        .collect()
}

/// One prompt with the score of every model on it: the canonical record all importers produce.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The prompt text as sent to the models.
    pub prompt: String,
    /// The task or benchmark the prompt comes from (may be empty).
    #[serde(default)]
    pub task: String,
    /// Model -> score in [0, 1].
    pub scores: BTreeMap<String, f64>,
    /// Model -> USD for this prompt; may be empty (then prices estimate it).
    #[serde(default)]
    pub costs: BTreeMap<String, f64>,
    /// Model -> the length of that model's own answer to this prompt, in tokens, where the data
    /// has it (ZeroEval's `output_tokens`); what the output-length head learns from.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub output_tokens: BTreeMap<String, u64>,
}

/// The input formats [`load`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// RouterBench CSV.
    Routerbench,
    /// RouterDC JSON arrays, one file per task.
    Routerdc,
    /// LLMRouter JSON array with a task per record.
    Llmrouter,
    /// RouteLLM CSV with one True/False column per model.
    Routellm,
    /// This crate's canonical JSON lines, as written by [`write_jsonl`].
    Jsonl,
}

impl Format {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Format::Routerbench => "routerbench",
            Format::Routerdc => "routerdc",
            Format::Llmrouter => "llmrouter",
            Format::Routellm => "routellm",
            Format::Jsonl => "jsonl",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = TrainingError;

    fn from_str(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "routerbench" => Ok(Format::Routerbench),
            "routerdc" => Ok(Format::Routerdc),
            "llmrouter" => Ok(Format::Llmrouter),
            "routellm" => Ok(Format::Routellm),
            "jsonl" => Ok(Format::Jsonl),
            _ => Err(TrainingError::UnknownFormat(name.to_owned())),
        }
    }
}

/// Why a row was skipped; its [`SkipReason::as_str`] is the key in [`Dataset::skip_reasons`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipReason {
    /// A CSV row with the wrong number of fields or invalid UTF-8; a JSON element or line that is
    /// not an object, or has a field of the wrong type.
    MalformedRow,
    /// A JSON record without its prompt field.
    MissingPrompt,
    /// A record without any score.
    NoScores,
    /// A record without a score for a model that other records have.
    MissingScore,
    /// An empty score cell (or a JSON `null`).
    EmptyScore,
    /// A score that is not a number, or is NaN.
    ScoreNotANumber,
    /// A score outside [0, 1].
    ScoreOutOfRange,
    /// A cost that is not a finite, non-negative number.
    BadCost,
}

impl SkipReason {
    /// The reason as counted in [`Dataset::skip_reasons`].
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::MalformedRow => "malformed row",
            SkipReason::MissingPrompt => "missing prompt",
            SkipReason::NoScores => "no scores",
            SkipReason::MissingScore => "missing score",
            SkipReason::EmptyScore => "empty score",
            SkipReason::ScoreNotANumber => "score not a number",
            SkipReason::ScoreOutOfRange => "score outside [0, 1]",
            SkipReason::BadCost => "bad cost",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Records read from one or more files, with what was skipped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dataset {
    /// The records kept, in file order (files in the order given).
    pub records: Vec<Record>,
    /// How many rows were skipped in all.
    pub skipped: usize,
    /// Skipped rows by reason ([`SkipReason::as_str`]).
    pub skip_reasons: BTreeMap<String, usize>,
}

impl Dataset {
    /// All model names that have a score in some record, sorted.
    pub fn models(&self) -> Vec<String> {
        let names: BTreeSet<&String> = self.records.iter().flat_map(|r| r.scores.keys()).collect();
        names.into_iter().cloned().collect()
    }

    fn skip(&mut self, reason: SkipReason) {
        self.skipped += 1;
        *self
            .skip_reasons
            .entry(reason.as_str().to_owned())
            .or_default() += 1;
    }

    fn push(&mut self, row: RowResult<Record>) {
        match row {
            Ok(record) => self.records.push(record),
            Err(reason) => self.skip(reason),
        }
    }
}

/// What [`load_files`] does with a record that lacks a score for a model other records have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingScores {
    /// Skip it (counted as [`SkipReason::MissingScore`]): every kept record scores every model.
    Skip,
    /// Keep it with the scores it has: several families (each record scoring its own models) in
    /// one dataset, for training with a masked loss ([`crate::train`]) and evaluation per
    /// [`Family`].
    Keep,
}

/// Reads `inputs` (all in `format`) into one dataset.
///
/// Every kept record has a score for every model of the dataset: a record that lacks one of the
/// models the others have is skipped as [`SkipReason::MissingScore`]. With `prices`, a record with
/// no cost for a model gets [`estimate_cost`] of its prompt; a model that then needs a price the
/// file lacks is an error.
pub fn load(format: Format, inputs: &[PathBuf], prices: Option<&Path>) -> Result<Dataset> {
    let inputs: Vec<(Format, PathBuf)> = inputs.iter().map(|p| (format, p.clone())).collect();
    load_files(&inputs, prices, MissingScores::Skip)
}

/// Reads `inputs`, each file in its own format, into one dataset, as [`load`] does; with
/// [`MissingScores::Keep`] a record that lacks some of the dataset's models is kept (several
/// families in one run).
pub fn load_files(
    inputs: &[(Format, PathBuf)],
    prices: Option<&Path>,
    missing: MissingScores,
) -> Result<Dataset> {
    let prices = prices
        .map(|path| Ok::<_, TrainingError>((path, read_prices(path)?)))
        .transpose()?;
    let mut dataset = Dataset::default();
    for (format, path) in inputs {
        match format {
            Format::Routerbench => read_routerbench(path, &mut dataset)?,
            Format::Routerdc | Format::Llmrouter => read_json_array(path, &mut dataset)?,
            Format::Routellm => read_routellm(path, &mut dataset)?,
            Format::Jsonl => read_jsonl(path, &mut dataset)?,
        }
    }
    if missing == MissingScores::Skip {
        drop_incomplete_records(&mut dataset);
    }
    if let Some((path, prices)) = prices {
        fill_costs(&mut dataset.records, &prices, &path.display().to_string())?;
    }
    Ok(dataset)
}

/// Writes `records` as canonical JSON lines, readable with [`Format::Jsonl`].
pub fn write_jsonl(records: &[Record], path: &Path) -> Result<()> {
    let file = File::create(path).map_err(|source| io_error(path, source))?;
    let mut out = BufWriter::new(file);
    for record in records {
        serde_json::to_writer(&mut out, record)
            .map_err(|e| io_error(path, std::io::Error::other(e)))?;
        out.write_all(b"\n")
            .map_err(|source| io_error(path, source))?;
    }
    out.flush().map_err(|source| io_error(path, source))
}

/// Keeps only `models` (scores and costs) in every record.
///
/// Errors on a model that the dataset does not have, or one named twice.
pub fn select_models(mut dataset: Dataset, models: &[String]) -> Result<Dataset> {
    let known = dataset.models();
    let mut wanted = BTreeSet::new();
    for model in models {
        if !known.contains(model) {
            return Err(TrainingError::UnknownModel {
                model: model.clone(),
                known,
            });
        }
        if !wanted.insert(model.as_str()) {
            return Err(TrainingError::DuplicateModel(model.clone()));
        }
    }
    for record in &mut dataset.records {
        record
            .scores
            .retain(|model, _| wanted.contains(model.as_str()));
        record
            .costs
            .retain(|model, _| wanted.contains(model.as_str()));
    }
    Ok(dataset)
}

/// Renames models, all at once (so `[(a, b), (b, a)]` swaps two names), in scores, costs and
/// output lengths. Records of different families may meet under one name (LLMRouter's
/// `llama-3.1-8b-instruct` renamed to ZeroEval's `Meta-Llama-3.1-8B-Instruct`: one model, one
/// column).
///
/// Errors on an old name the dataset does not have, an old name given twice, or a new name that
/// collides with another model's name in the same record.
pub fn rename_models(mut dataset: Dataset, renames: &[(String, String)]) -> Result<Dataset> {
    let known = dataset.models();
    let mut new_name_of: BTreeMap<&str, &str> = BTreeMap::new();
    for (old, new) in renames {
        if !known.contains(old) {
            return Err(TrainingError::UnknownModel {
                model: old.clone(),
                known,
            });
        }
        if new_name_of.insert(old, new).is_some() {
            return Err(TrainingError::DuplicateModel(old.clone()));
        }
    }
    let rename = |model: &str| new_name_of.get(model).copied().unwrap_or(model).to_owned();
    for record in &dataset.records {
        let mut final_names = BTreeSet::new();
        for model in record.scores.keys() {
            let name = rename(model);
            if !final_names.insert(name.clone()) {
                return Err(TrainingError::DuplicateModel(name));
            }
        }
    }
    for record in &mut dataset.records {
        record.scores = renamed_keys(std::mem::take(&mut record.scores), rename);
        record.costs = renamed_keys(std::mem::take(&mut record.costs), rename);
        record.output_tokens = renamed_keys(std::mem::take(&mut record.output_tokens), rename);
    }
    Ok(dataset)
}

fn renamed_keys<V>(
    map: BTreeMap<String, V>,
    rename: impl Fn(&str) -> String,
) -> BTreeMap<String, V> {
    map.into_iter()
        .map(|(model, value)| (rename(&model), value))
        .collect()
}

/// The text that makes two prompts copies of each other: trimmed, every run of whitespace one
/// space, lowercased. Every split ([`split`], [`validation_mask`], [`folds`]) keeps all the records
/// of one normalised prompt on the same side, so no prompt is judged by a head that saw a copy.
///
/// ```
/// use router_training::data::normalized_prompt;
/// assert_eq!(normalized_prompt("  What is\n2 +  2? "), "what is 2 + 2?");
/// assert_eq!(normalized_prompt("WHAT IS 2 + 2?"), normalized_prompt("what is 2 + 2?"));
/// ```
pub fn normalized_prompt(prompt: &str) -> String {
    prompt
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// The records' groups of copies (same [`normalized_prompt`]), stratified by task: for each task
/// in name order, the groups whose first record has that task, in order of first appearance,
/// shuffled with one ChaCha8 RNG seeded with `seed` (`rand_chacha`, whose output is value-stable,
/// with rand's Fisher–Yates shuffle, value-stable within rand 0.9). Each group lists its record
/// indices. `keys` are `(task, prompt)` per record. The split and the folds both start from it.
fn shuffled_groups_by_task<'a>(
    keys: impl Iterator<Item = (&'a str, &'a str)>,
    seed: u64,
) -> Vec<Vec<Vec<usize>>> {
    let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
    let mut group_of: HashMap<String, usize> = HashMap::new();
    for (index, (task, prompt)) in keys.enumerate() {
        let next = groups.len();
        let group = *group_of.entry(normalized_prompt(prompt)).or_insert(next);
        if group == next {
            groups.push((task, Vec::new()));
        }
        groups[group].1.push(index);
    }
    let mut groups_by_task: BTreeMap<&str, Vec<Vec<usize>>> = BTreeMap::new();
    for (task, indices) in groups {
        groups_by_task.entry(task).or_default().push(indices);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    groups_by_task
        .into_values()
        .map(|mut groups| {
            groups.shuffle(&mut rng);
            groups
        })
        .collect()
}

/// Which records (given as `(task, prompt)`, one per record) go to validation in the split of
/// [`split`]: stratified by task, grouped by [`normalized_prompt`]. The early-stopping split inside
/// the training side is made the same way.
pub fn validation_mask<'a>(
    keys: impl Iterator<Item = (&'a str, &'a str)>,
    fraction: f64,
    seed: u64,
) -> Result<Vec<bool>> {
    if !(0.0..=1.0).contains(&fraction) {
        return Err(TrainingError::Invalid(format!(
            "the held-out fraction {fraction} is not in [0, 1]"
        )));
    }
    let shuffled = shuffled_groups_by_task(keys, seed);
    let mut in_validation = vec![false; shuffled.iter().flatten().map(Vec::len).sum()];
    for groups in &shuffled {
        let count: usize = groups.iter().map(Vec::len).sum();
        let wanted = (count as f64 * fraction).round() as usize;
        let mut taken = 0;
        for group in groups {
            if taken >= wanted {
                break;
            }
            taken += group.len();
            for &index in group {
                in_validation[index] = true;
            }
        }
    }
    Ok(in_validation)
}

/// Splits `records` into (train, validation), stratified by task and grouped by
/// [`normalized_prompt`], deterministically for `seed`.
///
/// Each task's groups of copies are shuffled (see [`validation_mask`]) and taken, whole, until
/// `round(count × val_fraction)` records are in validation (a group of copies may take a task a
/// little past it; without copies it is exact). Both halves keep the input order. `val_fraction`
/// must be in [0, 1].
pub fn split(
    records: Vec<Record>,
    val_fraction: f64,
    seed: u64,
) -> Result<(Vec<Record>, Vec<Record>)> {
    let in_validation = validation_mask(split_keys(&records), val_fraction, seed)?;
    Ok(partition(records, &in_validation))
}

/// (train, validation): the records whose `in_validation` is false, then those where it is true,
/// each in input order.
fn partition(records: Vec<Record>, in_validation: &[bool]) -> (Vec<Record>, Vec<Record>) {
    let (validation, train): (Vec<_>, Vec<_>) = records
        .into_iter()
        .zip(in_validation)
        .partition(|(_, is_validation)| **is_validation);
    (
        train.into_iter().map(|(record, _)| record).collect(),
        validation.into_iter().map(|(record, _)| record).collect(),
    )
}

/// The `(task, prompt)` of each record: what the splits stratify and group by.
pub fn split_keys(records: &[Record]) -> impl Iterator<Item = (&str, &str)> {
    records.iter().map(|r| (r.task.as_str(), r.prompt.as_str()))
}

/// The fold (in `0..folds`) of each record (given as `(task, prompt)`) for k-fold
/// cross-validation, stratified by task, grouped by [`normalized_prompt`] and deterministic for
/// `seed`: each task's groups are shuffled as for [`split`], and the tasks' lists, one after
/// another, are dealt round-robin, a group at a time. Without copies, fold sizes differ by at most
/// one, overall and within each task, so no fold is empty when there are `folds` records.
pub fn folds<'a>(
    keys: impl Iterator<Item = (&'a str, &'a str)>,
    folds: usize,
    seed: u64,
) -> Result<Vec<usize>> {
    if folds < 2 {
        return Err(TrainingError::Invalid(format!(
            "cross-validation needs at least 2 folds, got {folds}"
        )));
    }
    let shuffled = shuffled_groups_by_task(keys, seed);
    let mut fold = vec![0; shuffled.iter().flatten().map(Vec::len).sum()];
    for (position, group) in shuffled.iter().flatten().enumerate() {
        for &index in group {
            fold[index] = position % folds;
        }
    }
    Ok(fold)
}

/// The records that score the same set of models: one family of data (ZeroEval's, LLMRouter's, ...)
/// in a dataset read with [`MissingScores::Keep`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    /// The models its records score, in the order of the `models` given to [`families`].
    pub models: Vec<String>,
    /// Its records' indices, in input order.
    pub records: Vec<usize>,
}

/// The families of `records`: records grouped by the set of `models` they have a score for, in
/// order of first appearance (a dataset where every record scores every model is one family).
/// Records that score none of `models` belong to no family.
///
/// ```
/// use std::collections::BTreeMap;
/// use router_training::data::{families, Record};
///
/// let record = |models: &[&str]| Record {
///     prompt: "p".into(),
///     task: "t".into(),
///     scores: models.iter().map(|m| (m.to_string(), 1.0)).collect(),
///     costs: BTreeMap::new(),
///     output_tokens: BTreeMap::new(),
/// };
/// let records = [record(&["a", "b"]), record(&["c"]), record(&["b", "a"])];
/// let models = ["a".to_string(), "b".to_string(), "c".to_string()];
/// let found = families(&records, &models);
/// assert_eq!(found.len(), 2);
/// assert_eq!((found[0].models.as_slice(), found[0].records.as_slice()), (&models[..2], &[0, 2][..]));
/// assert_eq!((found[1].models.as_slice(), found[1].records.as_slice()), (&models[2..], &[1][..]));
/// ```
pub fn families(records: &[Record], models: &[String]) -> Vec<Family> {
    let mut found: Vec<Family> = Vec::new();
    for (index, record) in records.iter().enumerate() {
        let scored: Vec<String> = models
            .iter()
            .filter(|m| record.scores.contains_key(*m))
            .cloned()
            .collect();
        if scored.is_empty() {
            continue;
        }
        match found.iter_mut().find(|f| f.models == scored) {
            Some(family) => family.records.push(index),
            None => found.push(Family {
                models: scored,
                records: vec![index],
            }),
        }
    }
    found
}

/// The fold (in `0..folds`) of each record of several families: each family's records are dealt
/// by [`folds`] as if they were the whole data, so a family's folds are those of a run on that
/// family alone (the records that score none of `models` are dealt as one more group). A prompt
/// that two families share keeps the fold of its first family: copies stay on one side.
pub fn family_folds(
    records: &[Record],
    models: &[String],
    folds: usize,
    seed: u64,
) -> Result<Vec<usize>> {
    per_family(records, models, |keys| {
        self::folds(keys.iter().copied(), folds, seed)
    })
}

/// [`split`] made per family, as [`family_folds`] deals folds: each family's validation records
/// are those of a split of that family alone.
pub fn family_split(
    records: Vec<Record>,
    models: &[String],
    val_fraction: f64,
    seed: u64,
) -> Result<(Vec<Record>, Vec<Record>)> {
    let in_validation = per_family(&records, models, |keys| {
        validation_mask(keys.iter().copied(), val_fraction, seed)
    })?;
    Ok(partition(records, &in_validation))
}

/// `assign` run on each family's `(task, prompt)` keys, merged back in record order; a
/// normalised prompt already assigned in an earlier family keeps that assignment.
fn per_family<T: Clone>(
    records: &[Record],
    models: &[String],
    assign: impl Fn(&[(&str, &str)]) -> Result<Vec<T>>,
) -> Result<Vec<T>> {
    let mut groups: Vec<Vec<usize>> = families(records, models)
        .into_iter()
        .map(|family| family.records)
        .collect();
    let in_a_family: BTreeSet<usize> = groups.iter().flatten().copied().collect();
    let rest: Vec<usize> = (0..records.len())
        .filter(|i| !in_a_family.contains(i))
        .collect();
    groups.push(rest);
    let mut assigned: Vec<Option<T>> = vec![None; records.len()];
    let mut by_prompt: HashMap<String, T> = HashMap::new();
    for group in groups.iter().filter(|g| !g.is_empty()) {
        let keys: Vec<(&str, &str)> = group
            .iter()
            .map(|&i| (records[i].task.as_str(), records[i].prompt.as_str()))
            .collect();
        for (&index, value) in group.iter().zip(assign(&keys)?) {
            let prompt = normalized_prompt(&records[index].prompt);
            let value = by_prompt.entry(prompt).or_insert(value).clone();
            assigned[index] = Some(value);
        }
    }
    Ok(assigned.into_iter().flatten().collect())
}

/// Estimates, from `prices`, every cost that a record lacks for one of its scored models.
/// `source_name` names where the prices came from, for the error.
fn fill_costs(
    records: &mut [Record],
    prices: &BTreeMap<String, Price>,
    source_name: &str,
) -> Result<()> {
    for record in records {
        for model in record.scores.keys() {
            if record.costs.contains_key(model) {
                continue;
            }
            let price = prices
                .get(model)
                .ok_or_else(|| TrainingError::MissingPrice {
                    model: model.clone(),
                    source_name: source_name.to_owned(),
                })?;
            let cost = estimate_cost(&record.prompt, price);
            record.costs.insert(model.clone(), cost);
        }
    }
    Ok(())
}

/// Skips the records that lack a model some other record has, so every record scores every model.
fn drop_incomplete_records(dataset: &mut Dataset) {
    let models = dataset.models();
    let records = std::mem::take(&mut dataset.records);
    for record in records {
        if models.iter().all(|model| record.scores.contains_key(model)) {
            dataset.records.push(record);
        } else {
            dataset.skip(SkipReason::MissingScore);
        }
    }
}

fn io_error(path: &Path, source: std::io::Error) -> TrainingError {
    TrainingError::Io {
        path: path.to_owned(),
        source,
    }
}

fn format_error(path: &Path, message: impl fmt::Display) -> TrainingError {
    TrainingError::Format {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

fn csv_error(path: &Path, error: csv::Error) -> TrainingError {
    if !error.is_io_error() {
        return format_error(path, error);
    }
    match error.into_kind() {
        csv::ErrorKind::Io(source) => io_error(path, source),
        other => format_error(path, format!("{other:?}")),
    }
}

/// The task named by a file: its stem without a trailing `_train`, `-train`, `_test` or `-test`.
fn task_from_path(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy())
        .unwrap_or_default();
    ["_train", "-train", "_test", "-test"]
        .iter()
        .find_map(|suffix| stem.strip_suffix(suffix))
        .unwrap_or(&stem)
        .to_owned()
}

/// Reads CSV rows; a row that fails for any reason but I/O is counted as malformed and left out.
fn csv_rows(
    path: &Path,
    reader: &mut csv::Reader<File>,
    dataset: &mut Dataset,
) -> Result<Vec<csv::StringRecord>> {
    let mut rows = Vec::new();
    for row in reader.records() {
        match row {
            Ok(row) => rows.push(row),
            Err(error) if error.is_io_error() => return Err(csv_error(path, error)),
            Err(_) => dataset.skip(SkipReason::MalformedRow),
        }
    }
    Ok(rows)
}

fn open_csv(path: &Path) -> Result<(csv::Reader<File>, Vec<String>)> {
    let mut reader = csv::Reader::from_path(path).map_err(|e| csv_error(path, e))?;
    let header = reader.headers().map_err(|e| csv_error(path, e))?;
    let header = header.iter().map(str::to_owned).collect();
    Ok((reader, header))
}

fn column(path: &Path, header: &[String], name: &str) -> Result<usize> {
    header
        .iter()
        .position(|h| h == name)
        .ok_or_else(|| format_error(path, format!("no {name:?} column")))
}

fn read_routerbench(path: &Path, dataset: &mut Dataset) -> Result<()> {
    let (mut reader, header) = open_csv(path)?;
    let prompt_column = column(path, &header, "prompt")?;
    let task_column = column(path, &header, "eval_name")?;
    // (model, score column, cost column)
    let models: Vec<(&str, usize, usize)> = header
        .iter()
        .enumerate()
        .filter_map(|(score_column, name)| {
            let cost_name = format!("{name}|total_cost");
            let cost_column = header.iter().position(|h| *h == cost_name)?;
            Some((name.as_str(), score_column, cost_column))
        })
        .collect();
    if models.is_empty() {
        return Err(format_error(
            path,
            "no model columns (a score column X with a matching X|total_cost)",
        ));
    }
    for row in csv_rows(path, &mut reader, dataset)? {
        dataset.push(routerbench_record(
            &row,
            &models,
            prompt_column,
            task_column,
        ));
    }
    Ok(())
}

fn routerbench_record(
    row: &csv::StringRecord,
    models: &[(&str, usize, usize)],
    prompt_column: usize,
    task_column: usize,
) -> RowResult<Record> {
    let mut scores = BTreeMap::new();
    let mut costs = BTreeMap::new();
    for &(model, score_column, cost_column) in models {
        scores.insert(model.to_owned(), score_from_text(&row[score_column])?);
        costs.insert(model.to_owned(), cost_from_text(&row[cost_column])?);
    }
    let raw_prompt = &row[prompt_column];
    let prompt = decode_python_str_list(raw_prompt).unwrap_or_else(|| raw_prompt.to_owned());
    Ok(Record {
        prompt,
        task: row[task_column].trim().to_owned(),
        scores,
        costs,
        output_tokens: BTreeMap::new(),
    })
}

fn read_routellm(path: &Path, dataset: &mut Dataset) -> Result<()> {
    let (mut reader, header) = open_csv(path)?;
    let prompt_column = column(path, &header, "prompt")?;
    let rows = csv_rows(path, &mut reader, dataset)?;
    let models: Vec<(&str, usize)> = header
        .iter()
        .enumerate()
        .filter(|&(index, name)| {
            let is_index = name.is_empty() || name.starts_with("Unnamed");
            index != prompt_column
                && !is_index
                && !name.to_ascii_lowercase().contains("response")
                && mostly_scores(rows.iter().map(|row| &row[index]))
        })
        .map(|(index, name)| (name.as_str(), index))
        .collect();
    if models.is_empty() {
        return Err(format_error(
            path,
            "no score columns (True/False or numbers) besides the prompt",
        ));
    }
    let task = task_from_path(path);
    for row in rows {
        let record = models
            .iter()
            .map(|&(model, index)| Ok((model.to_owned(), routellm_score(&row[index])?)))
            .collect::<RowResult<BTreeMap<_, _>>>()
            .map(|scores| Record {
                prompt: row[prompt_column].to_owned(),
                task: task.clone(),
                scores,
                costs: BTreeMap::new(),
                output_tokens: BTreeMap::new(),
            });
        dataset.push(record);
    }
    Ok(())
}

/// Whether more than half the non-empty values of a column read as scores (True/False/numbers).
fn mostly_scores<'a>(values: impl Iterator<Item = &'a str>) -> bool {
    let (mut filled, mut scores) = (0usize, 0usize);
    for value in values.map(str::trim).filter(|v| !v.is_empty()) {
        filled += 1;
        if boolean(value).is_some() || value.parse::<f64>().is_ok() {
            scores += 1;
        }
    }
    filled > 0 && scores * 2 > filled
}

fn boolean(value: &str) -> Option<f64> {
    if value.eq_ignore_ascii_case("true") {
        Some(1.0)
    } else if value.eq_ignore_ascii_case("false") {
        Some(0.0)
    } else {
        None
    }
}

fn routellm_score(text: &str) -> RowResult<f64> {
    boolean(text.trim()).map_or_else(|| score_from_text(text), Ok)
}

fn read_json_array(path: &Path, dataset: &mut Dataset) -> Result<()> {
    let text = std::fs::read_to_string(path).map_err(|source| io_error(path, source))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| format_error(path, e))?;
    let Value::Array(elements) = value else {
        return Err(format_error(path, "expected a JSON array of records"));
    };
    let default_task = task_from_path(path);
    for element in elements {
        let record = match element {
            Value::Object(object) => record_from_json(&object, "question", &default_task),
            _ => Err(SkipReason::MalformedRow),
        };
        dataset.push(record);
    }
    Ok(())
}

fn read_jsonl(path: &Path, dataset: &mut Dataset) -> Result<()> {
    let text = std::fs::read_to_string(path).map_err(|source| io_error(path, source))?;
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let record = match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(object)) => record_from_json(&object, "prompt", ""),
            _ => Err(SkipReason::MalformedRow),
        };
        dataset.push(record);
    }
    Ok(())
}

/// A record from a JSON object with the prompt under `prompt_key`, `scores`, and optional `task`
/// (else `default_task`) and `costs`.
fn record_from_json(
    object: &Map<String, Value>,
    prompt_key: &str,
    default_task: &str,
) -> RowResult<Record> {
    let prompt = match object.get(prompt_key) {
        Some(Value::String(prompt)) => prompt.clone(),
        None | Some(Value::Null) => return Err(SkipReason::MissingPrompt),
        Some(_) => return Err(SkipReason::MalformedRow),
    };
    let task = match object.get("task") {
        Some(Value::String(task)) => task.clone(),
        None | Some(Value::Null) => default_task.to_owned(),
        Some(_) => return Err(SkipReason::MalformedRow),
    };
    let scores = match object.get("scores") {
        Some(Value::Object(scores)) if !scores.is_empty() => scores
            .iter()
            .map(|(model, score)| Ok((model.clone(), score_from_json(score)?)))
            .collect::<RowResult<BTreeMap<_, _>>>()?,
        None | Some(Value::Null) => return Err(SkipReason::NoScores),
        Some(Value::Object(_)) => return Err(SkipReason::NoScores),
        Some(_) => return Err(SkipReason::MalformedRow),
    };
    let costs = match object.get("costs") {
        Some(Value::Object(costs)) => costs
            .iter()
            .map(|(model, cost)| Ok((model.clone(), cost_from_json(cost)?)))
            .collect::<RowResult<BTreeMap<_, _>>>()?,
        None | Some(Value::Null) => BTreeMap::new(),
        Some(_) => return Err(SkipReason::MalformedRow),
    };
    let output_tokens = match object.get("output_tokens") {
        Some(Value::Object(lengths)) => lengths
            .iter()
            .map(|(model, tokens)| Ok((model.clone(), tokens_from_json(tokens)?)))
            .collect::<RowResult<BTreeMap<_, _>>>()?,
        None | Some(Value::Null) => BTreeMap::new(),
        Some(_) => return Err(SkipReason::MalformedRow),
    };
    Ok(Record {
        prompt,
        task,
        scores,
        costs,
        output_tokens,
    })
}

fn checked_score(score: f64) -> RowResult<f64> {
    if score.is_nan() {
        Err(SkipReason::ScoreNotANumber)
    } else if !(0.0..=1.0).contains(&score) {
        Err(SkipReason::ScoreOutOfRange)
    } else {
        Ok(score)
    }
}

fn score_from_text(text: &str) -> RowResult<f64> {
    let text = text.trim();
    if text.is_empty() {
        return Err(SkipReason::EmptyScore);
    }
    checked_score(text.parse().map_err(|_| SkipReason::ScoreNotANumber)?)
}

fn score_from_json(value: &Value) -> RowResult<f64> {
    match value {
        Value::Null => Err(SkipReason::EmptyScore),
        Value::Number(number) => checked_score(number.as_f64().ok_or(SkipReason::ScoreNotANumber)?),
        _ => Err(SkipReason::ScoreNotANumber),
    }
}

fn checked_cost(cost: f64) -> RowResult<f64> {
    if cost.is_finite() && cost >= 0.0 {
        Ok(cost)
    } else {
        Err(SkipReason::BadCost)
    }
}

fn cost_from_text(text: &str) -> RowResult<f64> {
    checked_cost(text.trim().parse().map_err(|_| SkipReason::BadCost)?)
}

fn cost_from_json(value: &Value) -> RowResult<f64> {
    checked_cost(value.as_f64().ok_or(SkipReason::BadCost)?)
}

/// A token count: a whole number >= 0 (a float such as `12.0` that is one is accepted).
fn tokens_from_json(value: &Value) -> RowResult<u64> {
    match (value.as_u64(), value.as_f64()) {
        (Some(tokens), _) => Ok(tokens),
        (None, Some(tokens))
            if tokens >= 0.0 && tokens.fract() == 0.0 && tokens < u64::MAX as f64 =>
        {
            Ok(tokens as u64)
        }
        _ => Err(SkipReason::MalformedRow),
    }
}

/// Decodes a Python list literal of string literals (`['turn', "turn"]`, as Python's `repr` writes
/// it) into its turns joined by a blank line; `None` if `raw` is anything else.
fn decode_python_str_list(raw: &str) -> Option<String> {
    let mut chars = raw.trim().chars().peekable();
    if chars.next() != Some('[') {
        return None;
    }
    let mut turns = Vec::new();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        match chars.next()? {
            ']' => break,
            quote @ ('\'' | '"') => turns.push(decode_python_str(&mut chars, quote)?),
            _ => return None,
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        match chars.next()? {
            ',' => continue,
            ']' => break,
            _ => return None,
        }
    }
    chars.next().is_none().then(|| turns.join("\n\n"))
}

/// Decodes the rest of a Python string literal opened by `quote`, through its closing quote.
fn decode_python_str(chars: &mut impl Iterator<Item = char>, quote: char) -> Option<String> {
    let mut text = String::new();
    loop {
        let c = chars.next()?;
        if c == quote {
            return Some(text);
        }
        if c != '\\' {
            text.push(c);
            continue;
        }
        let escaped = chars.next()?;
        match escaped {
            '\n' => {}
            '\\' | '\'' | '"' => text.push(escaped),
            'n' => text.push('\n'),
            'r' => text.push('\r'),
            't' => text.push('\t'),
            'a' => text.push('\u{7}'),
            'b' => text.push('\u{8}'),
            'f' => text.push('\u{c}'),
            'v' => text.push('\u{b}'),
            'x' => text.push(hex_char(chars, 2)?),
            'u' => text.push(hex_char(chars, 4)?),
            'U' => text.push(hex_char(chars, 8)?),
            // Python's repr only writes \0 as an octal escape, never followed by more digits.
            '0' => text.push('\0'),
            // Python keeps an unknown escape as it is.
            other => {
                text.push('\\');
                text.push(other);
            }
        }
    }
}

/// Reads `digits` hex digits as one Unicode scalar value.
fn hex_char(chars: &mut impl Iterator<Item = char>, digits: usize) -> Option<char> {
    let mut code = 0u32;
    for _ in 0..digits {
        code = code * 16 + chars.next()?.to_digit(16)?;
    }
    char::from_u32(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, content).unwrap();
        path
    }

    fn reasons(pairs: &[(SkipReason, usize)]) -> BTreeMap<String, usize> {
        pairs
            .iter()
            .map(|(reason, count)| (reason.as_str().to_owned(), *count))
            .collect()
    }

    fn scores(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs
            .iter()
            .map(|(model, score)| (model.to_string(), *score))
            .collect()
    }

    /// The workspace's sibling `shared/data` folder, where the real datasets live.
    fn shared_data() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data")
    }

    #[test]
    fn format_parses_every_name_and_rejects_others() {
        for format in [
            Format::Routerbench,
            Format::Routerdc,
            Format::Llmrouter,
            Format::Routellm,
            Format::Jsonl,
        ] {
            assert_eq!(format.name().parse::<Format>().unwrap(), format);
        }
        assert!(matches!(
            "csv".parse::<Format>(),
            Err(TrainingError::UnknownFormat(_))
        ));
    }

    #[test]
    fn routerbench_reads_scores_costs_and_decoded_prompts_and_counts_bad_rows() {
        let dir = tempfile::tempdir().unwrap();
        let csv = concat!(
            ",sample_id,prompt,eval_name,a,b,b|model_response,a|model_response,a|total_cost,b|total_cost,oracle_model_to_route_to\n",
            "0,s0,\"['Q: it\\'s 2?\\nA)']\",mmlu,1.0,0.0,x,y,0.5,0.25,a\n",
            "1,s1,plain prompt,mmlu,0.0,1.0,x,y,0.5,0.25,b\n",
            "2,s2,p,mmlu,,1.0,x,y,0.5,0.25,b\n",
            "3,s3,p,mmlu,abc,1.0,x,y,0.5,0.25,b\n",
            "4,s4,p,mmlu,1.5,1.0,x,y,0.5,0.25,b\n",
            "5,s5,p,mmlu,NaN,1.0,x,y,0.5,0.25,b\n",
            "6,s6,p,mmlu,1.0,1.0,x,y,-1,0.25,b\n",
            "7,s7,p,mmlu,1.0\n",
            "8,s8,,gsm8k,1.0,1.0,x,y,0.5,0.25,a\n",
        );
        let path = write(dir.path(), "bench_train.csv", csv);
        let dataset = load(Format::Routerbench, &[path], None).unwrap();
        assert_eq!(dataset.records.len(), 3);
        assert_eq!(dataset.skipped, 6);
        assert_eq!(
            dataset.skip_reasons,
            reasons(&[
                (SkipReason::EmptyScore, 1),
                (SkipReason::ScoreNotANumber, 2),
                (SkipReason::ScoreOutOfRange, 1),
                (SkipReason::BadCost, 1),
                (SkipReason::MalformedRow, 1),
            ])
        );
        let first = &dataset.records[0];
        assert_eq!(first.prompt, "Q: it's 2?\nA)");
        assert_eq!(first.task, "mmlu");
        assert_eq!(first.scores, scores(&[("a", 1.0), ("b", 0.0)]));
        assert_eq!(first.costs, scores(&[("a", 0.5), ("b", 0.25)]));
        assert_eq!(dataset.records[1].prompt, "plain prompt");
        assert_eq!(dataset.records[2].prompt, "", "empty prompts are legal");
        assert_eq!(dataset.models(), ["a", "b"]);
    }

    #[test]
    fn routerbench_without_model_columns_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "x.csv", "prompt,eval_name,a\np,t,1\n");
        let error = load(Format::Routerbench, &[path], None).unwrap_err();
        assert!(error.to_string().contains("x.csv"), "{error}");
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        for format in [
            Format::Routerbench,
            Format::Routerdc,
            Format::Routellm,
            Format::Jsonl,
        ] {
            let error = load(format, &[PathBuf::from("/no/such/file.data")], None).unwrap_err();
            assert!(
                matches!(error, TrainingError::Io { .. }),
                "{format}: {error}"
            );
            assert!(error.to_string().contains("/no/such/file.data"), "{error}");
        }
    }

    #[test]
    fn python_list_prompts_decode_turns_and_escapes() {
        assert_eq!(
            decode_python_str_list(r#"['a\nb', "it's \"q\""]"#).unwrap(),
            "a\nb\n\nit's \"q\""
        );
        assert_eq!(
            decode_python_str_list(r"['\\Box \x02+ \u00e9 \t']").unwrap(),
            "\\Box \u{2}+ é \t"
        );
        assert_eq!(
            decode_python_str_list(r"['unknown \d escape']").unwrap(),
            r"unknown \d escape"
        );
        assert_eq!(decode_python_str_list("[]").unwrap(), "");
        for not_a_list in [
            "plain",
            "['unterminated]",
            "['a'] tail",
            "[1, 2]",
            "['a' 'b']",
        ] {
            assert_eq!(decode_python_str_list(not_a_list), None, "{not_a_list}");
        }
    }

    #[test]
    fn routerdc_takes_the_task_from_the_file_and_counts_bad_records() {
        let dir = tempfile::tempdir().unwrap();
        let json = r#"[
            {"question": "q1", "scores": {"a": 1, "b": 0.5}, "cluster_id": 3},
            {"question": "q2", "scores": {"a": 0, "b": null}},
            {"question": "q3", "scores": {"a": "high", "b": 1}},
            {"question": "q4", "scores": {"a": -0.1, "b": 1}},
            {"question": "q5", "scores": {"a": 1}},
            {"question": "q6", "scores": {}},
            {"scores": {"a": 1, "b": 1}},
            [1, 2]
        ]"#;
        let first = write(dir.path(), "gsm8k-train.json", json);
        let second = write(
            dir.path(),
            "mmlu_test.json",
            r#"[{"question": "", "scores": {"a": 0, "b": 1}}]"#,
        );
        let dataset = load(Format::Routerdc, &[first, second], None).unwrap();
        assert_eq!(dataset.records.len(), 2);
        assert_eq!(dataset.records[0].task, "gsm8k");
        assert_eq!(dataset.records[0].scores, scores(&[("a", 1.0), ("b", 0.5)]));
        assert!(dataset.records[0].costs.is_empty());
        assert_eq!(dataset.records[1].task, "mmlu");
        assert_eq!(dataset.skipped, 7);
        assert_eq!(
            dataset.skip_reasons,
            reasons(&[
                (SkipReason::EmptyScore, 1),
                (SkipReason::ScoreNotANumber, 1),
                (SkipReason::ScoreOutOfRange, 1),
                (SkipReason::MissingScore, 1),
                (SkipReason::NoScores, 1),
                (SkipReason::MissingPrompt, 1),
                (SkipReason::MalformedRow, 1),
            ])
        );
    }

    #[test]
    fn a_json_file_that_is_not_an_array_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "bad.json", r#"{"question": "q"}"#);
        let error = load(Format::Llmrouter, &[path], None).unwrap_err();
        assert!(matches!(error, TrainingError::Format { .. }), "{error}");
        assert!(error.to_string().contains("bad.json"));
    }

    #[test]
    fn llmrouter_uses_the_record_task_and_prices_estimate_costs() {
        let dir = tempfile::tempdir().unwrap();
        let json = r#"[{"question": "abcdefghi", "scores": {"a": 1, "b": 0.25}, "cluster_id": 1, "task": "math"}]"#;
        let data = write(dir.path(), "train.json", json);
        let prices = write(
            dir.path(),
            "prices.json",
            r#"{"a": {"size": "7B", "input_price": 0.2, "output_price": 0.4},
                "b": {"input_price": 1.0, "output_price": 2.0},
                "unused": {"input_price": 9, "output_price": 9}}"#,
        );
        let dataset = load(
            Format::Llmrouter,
            std::slice::from_ref(&data),
            Some(&prices),
        )
        .unwrap();
        let record = &dataset.records[0];
        assert_eq!(record.task, "math");
        // 9 characters -> 3 tokens; 256 output tokens.
        let expected_a = (3.0 * 0.2 + 256.0 * 0.4) / 1e6;
        let expected_b = (3.0 * 1.0 + 256.0 * 2.0) / 1e6;
        assert!((record.costs["a"] - expected_a).abs() < 1e-15);
        assert!((record.costs["b"] - expected_b).abs() < 1e-15);

        let partial = write(
            dir.path(),
            "partial.json",
            r#"{"a": {"input_price": 1, "output_price": 1}}"#,
        );
        let error = load(Format::Llmrouter, &[data], Some(&partial)).unwrap_err();
        assert!(
            matches!(&error, TrainingError::MissingPrice { model, .. } if model == "b"),
            "{error}"
        );
    }

    #[test]
    fn a_price_entry_without_prices_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let prices = write(dir.path(), "prices.json", r#"{"a": {"input_price": 1}}"#);
        let error = read_prices(&prices).unwrap_err();
        assert!(
            error.to_string().contains("prices.json") && error.to_string().contains("output_price"),
            "{error}"
        );
    }

    #[test]
    fn routellm_reads_boolean_columns_and_ignores_responses() {
        let dir = tempfile::tempdir().unwrap();
        let mmlu = write(
            dir.path(),
            "mmlu_astronomy.csv",
            "prompt,weak,strong\nq1,False,True\nq2,True,True\nq3,maybe,True\nq4,False\n",
        );
        let gsm8k = write(
            dir.path(),
            "gsm8k.csv",
            concat!(
                ",prompt,weak,strong,weak_response,strong_response,notes\n",
                "0,q5,1,0,\"The answer is 4\",42,free text\n",
                "1,q6,0,1,x,7,more text\n",
            ),
        );
        let dataset = load(Format::Routellm, &[mmlu, gsm8k], None).unwrap();
        assert_eq!(dataset.models(), ["strong", "weak"]);
        let prompts: Vec<_> = dataset.records.iter().map(|r| r.prompt.as_str()).collect();
        assert_eq!(prompts, ["q1", "q2", "q5", "q6"]);
        assert_eq!(
            dataset.records[0].scores,
            scores(&[("weak", 0.0), ("strong", 1.0)])
        );
        assert_eq!(dataset.records[0].task, "mmlu_astronomy");
        assert_eq!(
            dataset.records[2].scores,
            scores(&[("weak", 1.0), ("strong", 0.0)])
        );
        assert_eq!(dataset.records[2].task, "gsm8k");
        assert_eq!(
            dataset.skip_reasons,
            reasons(&[
                (SkipReason::ScoreNotANumber, 1),
                (SkipReason::MalformedRow, 1)
            ])
        );
    }

    #[test]
    fn jsonl_round_trips_and_counts_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let records = vec![
            Record {
                prompt: "p1".into(),
                task: "t".into(),
                scores: scores(&[("a", 1.0), ("b", 0.0)]),
                costs: scores(&[("a", 0.01), ("b", 0.001)]),
                output_tokens: BTreeMap::new(),
            },
            Record {
                prompt: String::new(),
                task: String::new(),
                scores: scores(&[("a", 0.5), ("b", 1.0)]),
                costs: BTreeMap::new(),
                output_tokens: BTreeMap::new(),
            },
        ];
        let path = dir.path().join("out.jsonl");
        write_jsonl(&records, &path).unwrap();
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str("not json\n\n{\"prompt\": \"p\", \"scores\": {\"a\": 1, \"b\": 1}, \"costs\": {\"a\": \"free\"}}\n");
        text.push_str("{\"prompt\": \"p\", \"scores\": {\"a\": 1, \"b\": 1}, \"task\": 7}\n");
        text.push_str("{\"prompt\": \"no task\", \"scores\": {\"a\": 1, \"b\": 1}}\n");
        fs::write(&path, text).unwrap();
        let dataset = load(Format::Jsonl, &[path], None).unwrap();
        assert_eq!(dataset.records[..2], records[..]);
        assert_eq!(dataset.records[2].task, "");
        assert_eq!(dataset.records.len(), 3);
        assert_eq!(
            dataset.skip_reasons,
            reasons(&[(SkipReason::MalformedRow, 2), (SkipReason::BadCost, 1)])
        );
        assert_eq!(dataset.skipped, 3);
    }

    #[test]
    fn families_in_their_own_formats_keep_their_own_models_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let jsonl = write(
            dir.path(),
            "a.jsonl",
            "{\"prompt\": \"p1\", \"task\": \"t\", \"scores\": {\"a\": 1, \"b\": 0}}\n",
        );
        let routerdc = write(
            dir.path(),
            "qa_train.json",
            r#"[{"question": "p2", "scores": {"b": 0.5, "c": 1}}]"#,
        );
        let inputs = [(Format::Jsonl, jsonl), (Format::Routerdc, routerdc)];
        let skipped = load_files(&inputs, None, MissingScores::Skip).unwrap();
        assert!(skipped.records.is_empty());
        assert_eq!(
            skipped.skip_reasons,
            reasons(&[(SkipReason::MissingScore, 2)])
        );
        let kept = load_files(&inputs, None, MissingScores::Keep).unwrap();
        assert_eq!(kept.skipped, 0);
        assert_eq!(kept.models(), ["a", "b", "c"]);
        assert_eq!(kept.records[1].task, "qa");
        let found = families(&kept.records, &kept.models());
        let found: Vec<(Vec<String>, Vec<usize>)> =
            found.into_iter().map(|f| (f.models, f.records)).collect();
        let names = |n: &[&str]| n.iter().map(|m| m.to_string()).collect::<Vec<_>>();
        assert_eq!(
            found,
            [(names(&["a", "b"]), vec![0]), (names(&["b", "c"]), vec![1])]
        );
    }

    #[test]
    fn each_family_is_split_and_folded_as_if_alone_and_shared_prompts_stay_together() {
        let record = |prompt: &str, task: &str, models: &[&str]| Record {
            prompt: prompt.into(),
            task: task.into(),
            scores: models.iter().map(|m| (m.to_string(), 1.0)).collect(),
            costs: BTreeMap::new(),
            output_tokens: BTreeMap::new(),
        };
        let first: Vec<Record> = (0..20)
            .map(|i| record(&format!("q{i}"), "x", &["a"]))
            .collect();
        let second: Vec<Record> = (0..15)
            .map(|i| record(&format!("r{i}"), ["x", "y"][i % 2], &["b"]))
            .chain([record("Q3", "y", &["b"])])
            .collect();
        let mixed: Vec<Record> = first.iter().chain(&second).cloned().collect();
        let models = ["a".to_string(), "b".to_string()];
        let alone = |records: &[Record]| folds(split_keys(records), 5, 7).unwrap();
        let together = family_folds(&mixed, &models, 5, 7).unwrap();
        assert_eq!(together[..20], alone(&first)[..]);
        assert_eq!(together[20..35], alone(&second)[..15]);
        assert_eq!(together[35], together[3], "a copy of q3 keeps q3's fold");
        let (train, validation) = family_split(mixed.clone(), &models, 0.2, 7).unwrap();
        let (first_train, first_validation) = split(first.clone(), 0.2, 7).unwrap();
        assert_eq!(validation[..first_validation.len()], first_validation[..]);
        assert_eq!(train[..first_train.len()], first_train[..]);
        assert_eq!(train.len() + validation.len(), mixed.len());
    }

    fn toy_dataset() -> Dataset {
        let record = |prompt: &str| Record {
            prompt: prompt.into(),
            task: String::new(),
            scores: scores(&[("a", 1.0), ("b", 0.5), ("c", 0.0)]),
            costs: scores(&[("a", 3.0), ("b", 2.0), ("c", 1.0)]),
            output_tokens: BTreeMap::new(),
        };
        Dataset {
            records: vec![record("p1"), record("p2")],
            ..Dataset::default()
        }
    }

    #[test]
    fn select_models_keeps_only_the_chosen_and_rejects_unknown_ones() {
        let kept = select_models(toy_dataset(), &["c".into(), "a".into()]).unwrap();
        assert_eq!(kept.models(), ["a", "c"]);
        assert_eq!(kept.records[0].costs, scores(&[("a", 3.0), ("c", 1.0)]));
        let error = select_models(toy_dataset(), &["z".into()]).unwrap_err();
        assert!(matches!(error, TrainingError::UnknownModel { model, .. } if model == "z"));
        assert!(matches!(
            select_models(toy_dataset(), &["a".into(), "a".into()]),
            Err(TrainingError::DuplicateModel(_))
        ));
    }

    #[test]
    fn rename_models_renames_at_once_and_rejects_collisions() {
        let renamed = rename_models(
            toy_dataset(),
            &[("a".into(), "b".into()), ("b".into(), "a".into())],
        )
        .unwrap();
        assert_eq!(
            renamed.records[0].scores,
            scores(&[("a", 0.5), ("b", 1.0), ("c", 0.0)])
        );
        assert_eq!(
            renamed.records[0].costs,
            scores(&[("a", 2.0), ("b", 3.0), ("c", 1.0)])
        );
        assert!(matches!(
            rename_models(toy_dataset(), &[("a".into(), "c".into())]),
            Err(TrainingError::DuplicateModel(name)) if name == "c"
        ));
        assert!(matches!(
            rename_models(toy_dataset(), &[("x".into(), "y".into())]),
            Err(TrainingError::UnknownModel { .. })
        ));
        // Two families' names for one model join: no record has both.
        let mut families = toy_dataset();
        families.records[1].scores = scores(&[("d", 0.25)]);
        families.records[1].output_tokens = BTreeMap::from([("d".to_string(), 7)]);
        let joined = rename_models(families, &[("d".into(), "a".into())]).unwrap();
        assert_eq!(joined.records[1].scores, scores(&[("a", 0.25)]));
        assert_eq!(
            joined.records[1].output_tokens,
            BTreeMap::from([("a".to_string(), 7)])
        );
        assert_eq!(joined.models(), ["a", "b", "c"]);
    }

    #[test]
    fn split_is_deterministic_stratified_and_keeps_order() {
        let records: Vec<Record> = (0..100)
            .map(|i| Record {
                prompt: format!("p{i}"),
                task: if i < 80 { "big".into() } else { "small".into() },
                scores: scores(&[("a", 1.0)]),
                costs: BTreeMap::new(),
                output_tokens: BTreeMap::new(),
            })
            .collect();
        let (train, validation) = split(records.clone(), 0.15, 7).unwrap();
        assert_eq!(train.len() + validation.len(), 100);
        assert_eq!(validation.iter().filter(|r| r.task == "big").count(), 12);
        assert_eq!(validation.iter().filter(|r| r.task == "small").count(), 3);
        let index = |r: &Record| r.prompt[1..].parse::<usize>().unwrap();
        assert!(train.windows(2).all(|w| index(&w[0]) < index(&w[1])));
        assert!(validation.windows(2).all(|w| index(&w[0]) < index(&w[1])));

        let (train_again, validation_again) = split(records.clone(), 0.15, 7).unwrap();
        assert_eq!((train_again, validation_again), (train, validation.clone()));
        let (_, other_validation) = split(records.clone(), 0.15, 8).unwrap();
        assert_ne!(other_validation, validation);
        assert!(split(records, 1.5, 7).is_err());
    }

    #[test]
    fn folds_are_stratified_balanced_and_deterministic() {
        let tasks: Vec<&str> = (0..23)
            .map(|i| if i < 13 { "big" } else { "small" })
            .collect();
        let prompts: Vec<String> = (0..23).map(|i| format!("p{i}")).collect();
        let keys: Vec<(&str, &str)> = tasks
            .iter()
            .zip(&prompts)
            .map(|(t, p)| (*t, p.as_str()))
            .collect();
        let fold = folds(keys.iter().copied(), 5, 7).unwrap();
        // 13 "big" records deal 3,3,3,2,2 and 10 "small" ones 2 each.
        for k in 0..5 {
            let in_fold = |task: &str| {
                (0..23)
                    .filter(|&i| fold[i] == k && tasks[i] == task)
                    .count()
            };
            assert_eq!(in_fold("big"), if k < 3 { 3 } else { 2 }, "fold {k}");
            assert_eq!(in_fold("small"), 2, "fold {k}");
        }
        assert_eq!(folds(keys.iter().copied(), 5, 7).unwrap(), fold);
        // One record in each of three tasks still fills three folds.
        assert_eq!(
            folds([("a", "x"), ("b", "y"), ("c", "z")].into_iter(), 3, 7).unwrap(),
            [0, 1, 2]
        );
        assert_ne!(folds(keys.iter().copied(), 5, 8).unwrap(), fold);
        assert!(folds(keys.iter().copied(), 1, 7).is_err());
    }

    #[test]
    fn copies_of_a_prompt_land_on_the_same_side_of_every_split() {
        let record = |prompt: &str, task: &str| Record {
            prompt: prompt.into(),
            task: task.into(),
            scores: scores(&[("a", 1.0)]),
            costs: BTreeMap::new(),
            output_tokens: BTreeMap::new(),
        };
        let mut records: Vec<Record> = (0..60)
            .map(|i| record(&format!("question {i}"), if i % 3 == 0 { "x" } else { "y" }))
            .collect();
        // Two copies of "question 7" (case and whitespace differ), one filed under another task.
        records.push(record("  Question\t7 ", "y"));
        records.push(record("QUESTION 7", "x"));
        let copies = [7, 60, 61];
        let keys: Vec<(&str, &str)> = split_keys(&records).collect();
        let mut sides_seen = BTreeSet::new();
        for seed in 0..40 {
            // The validation split (and, made the same way, the early-stopping split).
            let mask = validation_mask(keys.iter().copied(), 0.15, seed).unwrap();
            assert!(
                copies.iter().all(|&i| mask[i] == mask[7]),
                "seed {seed}: {:?}",
                copies.map(|i| mask[i])
            );
            sides_seen.insert(mask[7]);
            let (train, validation) = split(records.clone(), 0.15, seed).unwrap();
            let in_validation = validation
                .iter()
                .filter(|r| normalized_prompt(&r.prompt) == "question 7")
                .count();
            assert!(in_validation == 0 || in_validation == 3, "seed {seed}");
            assert_eq!(train.len() + validation.len(), records.len());
            let fold = folds(keys.iter().copied(), 5, seed).unwrap();
            assert!(copies.iter().all(|&i| fold[i] == fold[7]), "seed {seed}");
        }
        // The group does go to either side, depending on the seed.
        assert_eq!(sides_seen.len(), 2);
    }

    /// Needs `shared/data/routerbench/{arc_challenge,mbpp,winograde}_train.csv`.
    #[test]
    fn real_routerbench_train_files_load() {
        let dir = shared_data().join("routerbench");
        let files: Vec<PathBuf> = [
            "arc_challenge_train.csv",
            "mbpp_train.csv",
            "winograde_train.csv",
        ]
        .iter()
        .map(|name| dir.join(name))
        .collect();
        let dataset = load(Format::Routerbench, &files, None).unwrap();
        assert_eq!(dataset.models().len(), 11);
        assert_eq!(dataset.records.len() + dataset.skipped, 2225);
        assert_eq!(
            dataset.skip_reasons,
            reasons(&[(SkipReason::EmptyScore, 20)])
        );
        assert!(dataset
            .records
            .iter()
            .all(|r| r.costs.len() == 11 && r.scores.len() == 11));
        // Python list literals are decoded: real newlines, no brackets or escapes left.
        assert!(dataset
            .records
            .iter()
            .all(|r| !r.prompt.starts_with("['") && !r.prompt.contains("\\n")));
        let tasks: BTreeSet<&str> = dataset.records.iter().map(|r| r.task.as_str()).collect();
        assert_eq!(
            tasks,
            BTreeSet::from(["arc-challenge", "mbpp", "winogrande"])
        );
    }

    /// Needs `shared/data/routerdc/*.json`.
    #[test]
    fn real_routerdc_train_files_load() {
        let mut files: Vec<PathBuf> = fs::read_dir(shared_data().join("routerdc"))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        files.sort();
        let dataset = load(Format::Routerdc, &files, None).unwrap();
        assert_eq!(dataset.records.len(), 7598);
        assert_eq!(dataset.skipped, 0);
        assert_eq!(dataset.models().len(), 7);
        let tasks: BTreeSet<&str> = dataset.records.iter().map(|r| r.task.as_str()).collect();
        assert_eq!(
            tasks,
            BTreeSet::from([
                "arc_challenge",
                "arc_easy",
                "cmmlu",
                "gsm8k",
                "humaneval",
                "mmlu"
            ])
        );
    }

    /// Needs `shared/data/llmrouter/train.json` and `shared/data/llmrouter/default_llm.json`.
    #[test]
    fn real_llmrouter_train_file_loads_with_prices() {
        let dir = shared_data().join("llmrouter");
        let prices = dir.join("default_llm.json");
        let dataset = load(Format::Llmrouter, &[dir.join("train.json")], Some(&prices)).unwrap();
        assert_eq!(dataset.records.len(), 5608);
        assert_eq!(dataset.skipped, 0);
        assert_eq!(dataset.models().len(), 9);
        let tasks: BTreeSet<&str> = dataset.records.iter().map(|r| r.task.as_str()).collect();
        assert_eq!(tasks.len(), 14);
        assert!(dataset
            .records
            .iter()
            .all(|r| r.costs.len() == 9 && r.costs.values().all(|c| *c > 0.0)));
    }
}
