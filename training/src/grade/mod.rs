//! Graders: a model's output against a reference, scored in [0, 1].
//!
//! They mirror OpenAI's eval graders, so a dataset graded here means what it would mean there:
//!
//! | grader | what it scores |
//! |---|---|
//! | `string_check` `eq` / `ne` | 1 when the output equals (`eq`) or differs from (`ne`) the reference, byte for byte, else 0 |
//! | `string_check` `like` / `ilike` | 1 when the output *contains* the reference (`ilike`: ignoring case), else 0; as OpenAI defines them, no `%` / `_` wildcards |
//! | `text_similarity` `fuzzy_match` | rapidfuzz's `ratio` (what OpenAI uses): `1 − indel distance / (len(a) + len(b))` over characters |
//! | `text_similarity` `bleu` | sentence BLEU up to 4-grams, as sacreBLEU's `sentence_bleu` computes it (see [`bleu`]) |
//! | `text_similarity` `rouge_l` | the F-measure of the longest common subsequence of words (see [`rouge_l`]) |
//! | `text_similarity` `cosine` | the cosine of the two texts' embeddings by a router bundle's encoder, negative values clamped to 0 (see [`cosine_score`]) |
//!
//! Nothing is normalised unless the table says so: `eq` compares `"Paris"` and `"Paris\n"` as
//! different, as OpenAI does. A pass threshold turns a score into pass / fail (`score >=
//! threshold`); `string_check` passes at 1 unless told otherwise.
//!
//! [`grade_jsonl`] grades a JSON-lines file of `{"output", "reference", ...}` objects: each graded
//! row is written back whole with `score` (and `passed`) added, so a file that has a `prompt`
//! field becomes the samples of `model-router candidate add` (see [`crate::candidate`]). A row
//! that cannot be graded is skipped and reported with its line number, never dropped silently.
//!
//! ```
//! use router_training::grade::{bleu, fuzzy_match, rouge_l, string_check, StringCheckOperation};
//!
//! assert_eq!(string_check(StringCheckOperation::Ilike, "The answer is PARIS.", "paris"), 1.0);
//! assert_eq!(string_check(StringCheckOperation::Eq, "Paris\n", "Paris"), 0.0);
//! // rapidfuzz: 2 × 14 matching characters out of 14 + 15.
//! assert!((fuzzy_match("this is a test", "this is a test!") - 28.0 / 29.0).abs() < 1e-12);
//! // One hypothesis word of two is wrong: p1 = 1/2, p2 = 1/2 (smoothed: 1/(2·1)), BP = 1.
//! assert!((bleu("the dog", "the cat") - 0.5).abs() < 1e-12);
//! // LCS "the cat": precision 2/2, recall 2/4, F = 2/3.
//! assert!((rouge_l("the cat", "the black cat sat") - 2.0 / 3.0).abs() < 1e-12);
//! ```

use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use router_core::Encoder;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Result, TrainingError};

/// `name`, `Display` and `FromStr` for a grader setting, from one table of variants and the names
/// OpenAI and the command line use; an unknown name is an error listing the known ones.
macro_rules! named_variants {
    ($type:ident, $what:literal { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $type {
            /// The name used on the command line and by OpenAI.
            pub fn name(self) -> &'static str {
                match self {
                    $($type::$variant => $name),+
                }
            }
        }

        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl FromStr for $type {
            type Err = TrainingError;

            fn from_str(name: &str) -> Result<Self> {
                match name {
                    $($name => Ok($type::$variant),)+
                    _ => Err(TrainingError::Invalid(format!(
                        "unknown {} {name:?}; expected {}",
                        $what,
                        one_of(&[$($name),+])
                    ))),
                }
            }
        }
    };
}

/// "a, b or c".
fn one_of(names: &[&str]) -> String {
    match names.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// Rows graded per batch by [`grade_jsonl`] (the cosine grader embeds a batch at once).
const BATCH: usize = 256;

/// The operation of a `string_check` grader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StringCheckOperation {
    /// The output equals the reference.
    Eq,
    /// The output differs from the reference.
    Ne,
    /// The output contains the reference (case-sensitive).
    Like,
    /// The output contains the reference, ignoring case.
    Ilike,
}

named_variants!(StringCheckOperation, "string_check operation" { Eq => "eq", Ne => "ne", Like => "like", Ilike => "ilike" });

/// The evaluation metric of a `text_similarity` grader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimilarityMetric {
    /// rapidfuzz's `ratio` over characters ([`fuzzy_match`]).
    FuzzyMatch,
    /// Sentence BLEU up to 4-grams ([`bleu`]).
    Bleu,
    /// ROUGE-L F-measure ([`rouge_l`]).
    RougeL,
    /// Cosine of the two texts' embeddings, clamped to [0, 1] ([`cosine_score`]).
    Cosine,
}

named_variants!(SimilarityMetric, "text_similarity metric" {
    FuzzyMatch => "fuzzy_match",
    Bleu => "bleu",
    RougeL => "rouge_l",
    Cosine => "cosine",
});

/// `string_check`: 1.0 or 0.0.
///
/// ```
/// use router_training::grade::{string_check, StringCheckOperation::*};
/// assert_eq!(string_check(Eq, "42", "42"), 1.0);
/// assert_eq!(string_check(Ne, "42", "42"), 0.0);
/// assert_eq!(string_check(Like, "It is 42.", "42"), 1.0);
/// assert_eq!(string_check(Like, "Yes", "yes"), 0.0);
/// assert_eq!(string_check(Ilike, "Yes", "yes"), 1.0);
/// ```
pub fn string_check(operation: StringCheckOperation, output: &str, reference: &str) -> f64 {
    let pass = match operation {
        StringCheckOperation::Eq => output == reference,
        StringCheckOperation::Ne => output != reference,
        StringCheckOperation::Like => output.contains(reference),
        StringCheckOperation::Ilike => output.to_lowercase().contains(&reference.to_lowercase()),
    };
    if pass {
        1.0
    } else {
        0.0
    }
}

/// `fuzzy_match`: rapidfuzz's `fuzz.ratio` scaled to [0, 1], the normalised indel similarity of
/// the two strings' characters: `1 − (insertions + deletions) / (len(a) + len(b))`, that is
/// `2 × LCS / (len(a) + len(b))`. Two empty strings score 1.
///
/// ```
/// // LCS of "kitten" and "sitting" is "ittn": 2 × 4 / 13.
/// assert!((router_training::grade::fuzzy_match("kitten", "sitting") - 8.0 / 13.0).abs() < 1e-12);
/// ```
pub fn fuzzy_match(output: &str, reference: &str) -> f64 {
    rapidfuzz::fuzz::ratio(output.chars(), reference.chars())
}

/// Tokens for BLEU, close to sacreBLEU's `13a` tokenizer: maximal runs of letters and digits are
/// words, every other non-space character is a token of its own; case is kept.
fn bleu_tokens(text: &str) -> Vec<&str> {
    let mut tokens = Vec::new();
    let mut start: Option<usize> = None;
    for (i, c) in text.char_indices() {
        if c.is_alphanumeric() {
            start.get_or_insert(i);
            continue;
        }
        if let Some(s) = start.take() {
            tokens.push(&text[s..i]);
        }
        if !c.is_whitespace() {
            tokens.push(&text[i..i + c.len_utf8()]);
        }
    }
    if let Some(s) = start {
        tokens.push(&text[s..]);
    }
    tokens
}

/// Tokens for ROUGE-L, as Google's `rouge_score` makes them: lower-cased, runs of letters and
/// digits; punctuation is dropped.
fn rouge_tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|t| !t.is_empty()).map(str::to_lowercase).collect()
}

fn ngram_counts<'t, 'a>(tokens: &'t [&'a str], n: usize) -> HashMap<&'t [&'a str], usize> {
    let mut counts = HashMap::new();
    for gram in tokens.windows(n) {
        *counts.entry(gram).or_insert(0) += 1;
    }
    counts
}

/// `bleu`: sentence BLEU of `output` against one `reference`, up to 4-grams, computed as
/// sacreBLEU's `sentence_bleu` does (its defaults):
///
/// - tokens: see the `13a`-like rule above (words and single punctuation marks, case kept);
/// - clipped n-gram precisions `p_n` for n = 1..4;
/// - *effective order*: orders the output is too short to have (no n-grams at all) are left out
///   of the geometric mean, so a short exact answer can score 1;
/// - *exp smoothing* (Chen & Cherry's method 3, mteval's): the k-th order with no match gets
///   `p_n = 1 / (2^k × total_n)` instead of 0;
/// - brevity penalty `exp(1 − r / c)` when the output (c tokens) is shorter than the reference (r);
/// - no matching unigram at all, or an empty output, scores 0.
///
/// ```
/// use router_training::grade::bleu;
/// // p = 5/6, 3/5, 1/4 and, smoothed, 1/(2·3): the geometric mean is 48^(-1/4).
/// let score = bleu("the cat sat on the mat", "the cat is on the mat");
/// assert!((score - 48f64.powf(-0.25)).abs() < 1e-12);
/// assert_eq!(bleu("the cat", "the cat"), 1.0);
/// ```
pub fn bleu(output: &str, reference: &str) -> f64 {
    const MAX_ORDER: usize = 4;
    let hyp = bleu_tokens(output);
    let reference = bleu_tokens(reference);
    if hyp.is_empty() {
        return 0.0;
    }
    let mut log_sum = 0.0;
    let mut order = 0;
    let mut smooth = 1.0;
    for n in 1..=MAX_ORDER {
        let total = hyp.len().saturating_sub(n - 1);
        if total == 0 {
            break;
        }
        let ref_counts = ngram_counts(&reference, n);
        let correct: usize =
            ngram_counts(&hyp, n).iter().map(|(gram, count)| (*count).min(ref_counts.get(gram).copied().unwrap_or(0))).sum();
        if n == 1 && correct == 0 {
            return 0.0;
        }
        let precision = if correct == 0 {
            smooth *= 2.0;
            1.0 / (smooth * total as f64)
        } else {
            correct as f64 / total as f64
        };
        log_sum += precision.ln();
        order = n;
    }
    let (c, r) = (hyp.len() as f64, reference.len() as f64);
    let brevity = if c < r { (1.0 - r / c).exp() } else { 1.0 };
    (brevity * (log_sum / order as f64).exp()).clamp(0.0, 1.0)
}

/// `rouge_l`: the F-measure (β = 1) of the longest common subsequence of words, as Google's
/// `rouge_score` computes `rougeL` for one reference: tokens are lower-cased runs of letters and
/// digits, precision = LCS / output words, recall = LCS / reference words, F = 2PR / (P + R).
/// No common word (or an empty side) scores 0.
///
/// ```
/// use router_training::grade::rouge_l;
/// // LCS "the cat on the mat" = 5 of 6 words on each side.
/// assert!((rouge_l("The cat sat on the mat.", "the cat is on the mat") - 5.0 / 6.0).abs() < 1e-12);
/// ```
pub fn rouge_l(output: &str, reference: &str) -> f64 {
    let (a, b) = (rouge_tokens(output), rouge_tokens(reference));
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    // One row of the LCS table at a time.
    let mut previous = vec![0usize; b.len() + 1];
    let mut current = vec![0usize; b.len() + 1];
    for token in &a {
        for (j, other) in b.iter().enumerate() {
            current[j + 1] = if token == other { previous[j] + 1 } else { previous[j + 1].max(current[j]) };
        }
        std::mem::swap(&mut previous, &mut current);
    }
    let lcs = previous[b.len()] as f64;
    if lcs == 0.0 {
        return 0.0;
    }
    let (precision, recall) = (lcs / a.len() as f64, lcs / b.len() as f64);
    2.0 * precision * recall / (precision + recall)
}

/// `cosine`: the cosine similarity of two embeddings, mapped into [0, 1] by clamping negative
/// values to 0: `max(0, a·b / (|a| |b|))`.
///
/// Why clamp rather than rescale `(1 + cos) / 2`: a non-negative cosine keeps the value OpenAI's
/// grader would report for it, so a pass threshold means the same in both places, and an
/// orthogonal (unrelated) pair scores 0, not 0.5. Negative cosines only occur between unrelated
/// texts, where the order among them carries no grade. A zero vector (an empty text) has no
/// direction: it scores 0 against anything.
///
/// ```
/// use router_training::grade::cosine_score;
/// assert!((cosine_score(&[1.0, 0.0], &[1.0, 1.0]) - 0.5f64.sqrt()).abs() < 1e-7);
/// assert_eq!(cosine_score(&[1.0, 0.0], &[-1.0, 0.0]), 0.0);
/// assert_eq!(cosine_score(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
/// ```
pub fn cosine_score(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let (na, nb) = (norm(a), norm(b));
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    (dot / (na * nb)).clamp(0.0, 1.0)
}

/// Which grader, without its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GraderKind {
    /// `string_check` with an operation.
    StringCheck {
        /// The operation.
        operation: StringCheckOperation,
    },
    /// `text_similarity` with an evaluation metric.
    TextSimilarity {
        /// The metric.
        evaluation_metric: SimilarityMetric,
    },
}

impl fmt::Display for GraderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GraderKind::StringCheck { operation } => write!(f, "string_check ({operation})"),
            GraderKind::TextSimilarity { evaluation_metric } => write!(f, "text_similarity ({evaluation_metric})"),
        }
    }
}

/// A grader: its kind, its pass threshold, and for `cosine` the encoder that embeds both texts.
///
/// ```
/// use router_training::grade::{Grader, SimilarityMetric, StringCheckOperation};
///
/// let check = Grader::string_check(StringCheckOperation::Like);
/// assert_eq!(check.grade("The capital is Paris.", "Paris")?, 1.0);
/// assert_eq!(check.passes(1.0), Some(true), "string_check passes at 1 by default");
///
/// let similar = Grader::text_similarity(SimilarityMetric::RougeL)?.with_pass_threshold(0.5)?;
/// let scores = similar.grade_batch(&[("the cat sat", "the cat sat"), ("a dog", "the cat sat")])?;
/// assert_eq!(scores, [1.0, 0.0]);
/// assert_eq!(similar.passes(scores[1]), Some(false));
///
/// // cosine needs an encoder: a bundle's.
/// assert!(Grader::text_similarity(SimilarityMetric::Cosine).is_err());
/// let router = router_core::Router::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/routerbench"))?;
/// let cosine = Grader::cosine(router.encoder().clone());
/// assert!(cosine.grade("Paris is the capital of France.", "The capital of France is Paris.")? > 0.9);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Grader {
    kind: GraderKind,
    pass_threshold: Option<f64>,
    encoder: Option<Encoder>,
}

impl Grader {
    /// A `string_check` grader (passes at score 1 unless [`Grader::with_pass_threshold`] says otherwise).
    pub fn string_check(operation: StringCheckOperation) -> Self {
        Grader { kind: GraderKind::StringCheck { operation }, pass_threshold: None, encoder: None }
    }

    /// A `text_similarity` grader for a metric that needs no model (`cosine` is an error here:
    /// use [`Grader::cosine`]).
    pub fn text_similarity(metric: SimilarityMetric) -> Result<Self> {
        if metric == SimilarityMetric::Cosine {
            return Err(TrainingError::Invalid("the cosine metric needs an encoder (a router bundle: --model DIR)".into()));
        }
        Ok(Grader { kind: GraderKind::TextSimilarity { evaluation_metric: metric }, pass_threshold: None, encoder: None })
    }

    /// A `text_similarity` grader with the `cosine` metric over `encoder`'s embeddings.
    pub fn cosine(encoder: Encoder) -> Self {
        Grader {
            kind: GraderKind::TextSimilarity { evaluation_metric: SimilarityMetric::Cosine },
            pass_threshold: None,
            encoder: Some(encoder),
        }
    }

    /// Sets the pass threshold: a score passes when it is at least `threshold`, in [0, 1].
    pub fn with_pass_threshold(mut self, threshold: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&threshold) {
            return Err(TrainingError::Invalid(format!("the pass threshold {threshold} is not in [0, 1]")));
        }
        self.pass_threshold = Some(threshold);
        Ok(self)
    }

    /// The grader's kind.
    pub fn kind(&self) -> GraderKind {
        self.kind
    }

    /// The pass threshold in force: the one set, else 1 for `string_check`, else none.
    pub fn pass_threshold(&self) -> Option<f64> {
        match (self.pass_threshold, self.kind) {
            (Some(t), _) => Some(t),
            (None, GraderKind::StringCheck { .. }) => Some(1.0),
            (None, GraderKind::TextSimilarity { .. }) => None,
        }
    }

    /// Whether `score` passes; `None` without a threshold.
    pub fn passes(&self, score: f64) -> Option<bool> {
        self.pass_threshold().map(|t| score >= t)
    }

    /// The score of one output against its reference.
    pub fn grade(&self, output: &str, reference: &str) -> Result<f64> {
        let mut scores = self.grade_batch(&[(output, reference)])?;
        scores.pop().ok_or_else(|| TrainingError::Invalid("the grader returned no score".into()))
    }

    /// The scores of many (output, reference) pairs, in order; `cosine` embeds them in batches.
    pub fn grade_batch(&self, pairs: &[(&str, &str)]) -> Result<Vec<f64>> {
        let metric = match self.kind {
            GraderKind::StringCheck { operation } => {
                return Ok(pairs.iter().map(|(o, r)| string_check(operation, o, r)).collect())
            }
            GraderKind::TextSimilarity { evaluation_metric } => evaluation_metric,
        };
        let score: fn(&str, &str) -> f64 = match metric {
            SimilarityMetric::FuzzyMatch => fuzzy_match,
            SimilarityMetric::Bleu => bleu,
            SimilarityMetric::RougeL => rouge_l,
            SimilarityMetric::Cosine => {
                let encoder = self
                    .encoder
                    .as_ref()
                    .ok_or_else(|| TrainingError::Invalid("the cosine metric needs an encoder".into()))?;
                if pairs.is_empty() {
                    return Ok(Vec::new());
                }
                let texts: Vec<&str> = pairs.iter().flat_map(|(o, r)| [*o, *r]).collect();
                let embeddings = encoder.embed_all(&texts, &mut |_| {})?;
                return Ok(embeddings.chunks(2).map(|pair| cosine_score(&pair[0], &pair[1])).collect());
            }
        };
        Ok(pairs.iter().map(|(o, r)| score(o, r)).collect())
    }
}

/// A line of a JSON-lines input that was not used, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowSkip {
    /// The line number, from 1.
    pub line: usize,
    /// Why it was skipped.
    pub reason: String,
}

impl fmt::Display for RowSkip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// Writes "skipped N row(s): line 3: why; line 9: why" with at most `shown` lines named.
pub fn describe_skips(skipped: &[RowSkip], shown: usize) -> Option<String> {
    if skipped.is_empty() {
        return None;
    }
    let mut text = format!("skipped {} row(s): ", skipped.len());
    text.push_str(&skipped.iter().take(shown).map(RowSkip::to_string).collect::<Vec<_>>().join("; "));
    if skipped.len() > shown {
        text.push_str(&format!("; and {} more", skipped.len() - shown));
    }
    Some(text)
}

/// One JSON object of a JSON-lines file with its line number (from 1).
pub type NumberedObject = (usize, Map<String, Value>);

/// Reads the non-blank lines of a JSON-lines file as objects: `(line number, object)` for each
/// good line, and a [`RowSkip`] for each line that is not a JSON object. Blank lines are not rows.
pub fn read_json_objects(path: &Path) -> Result<(Vec<NumberedObject>, Vec<RowSkip>)> {
    let file = std::fs::File::open(path).map_err(|source| TrainingError::Io { path: path.to_path_buf(), source })?;
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let number = index + 1;
        let line = match line {
            Ok(line) => line,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                skipped.push(RowSkip { line: number, reason: "not UTF-8".into() });
                continue;
            }
            Err(source) => return Err(TrainingError::Io { path: path.to_path_buf(), source }),
        };
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(&line) {
            Ok(Value::Object(object)) => rows.push((number, object)),
            Ok(_) => skipped.push(RowSkip { line: number, reason: "not a JSON object".into() }),
            Err(e) => skipped.push(RowSkip { line: number, reason: format!("not JSON ({e})") }),
        }
    }
    Ok((rows, skipped))
}

/// The field names [`grade_jsonl`] reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GradeFields {
    /// The candidate output (default `output`).
    pub output: String,
    /// The reference answer (default `reference`).
    pub reference: String,
}

impl Default for GradeFields {
    fn default() -> Self {
        GradeFields { output: "output".into(), reference: "reference".into() }
    }
}

/// What [`grade_jsonl`] did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GradeSummary {
    /// The grader.
    pub grader: GraderKind,
    /// The input file.
    pub input: PathBuf,
    /// Rows graded.
    pub graded: usize,
    /// Rows skipped, with their line numbers and reasons.
    pub skipped: Vec<RowSkip>,
    /// The mean score of the graded rows (`None` when none was graded).
    pub mean_score: Option<f64>,
    /// The pass threshold in force, if any.
    pub pass_threshold: Option<f64>,
    /// Rows that passed (with a threshold).
    pub passed: Option<usize>,
    /// `passed / graded` (with a threshold and at least one graded row).
    pub pass_rate: Option<f64>,
}

impl fmt::Display for GradeSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "graded {} row(s) of {} with {}", self.graded, self.input.display(), self.grader)?;
        if let Some(skips) = describe_skips(&self.skipped, 10) {
            writeln!(f, "{skips}")?;
        }
        match self.mean_score {
            Some(mean) => writeln!(f, "mean score {mean:.4}")?,
            None => writeln!(f, "mean score: none (no row graded)")?,
        }
        match (self.pass_rate, self.passed, self.pass_threshold) {
            (Some(rate), Some(passed), Some(threshold)) => {
                write!(f, "pass rate {rate:.4} ({passed} of {} at score >= {threshold})", self.graded)
            }
            (_, _, Some(threshold)) => write!(f, "pass rate: none (no row graded; threshold {threshold})"),
            _ => write!(f, "pass rate: none (no pass threshold; give one)"),
        }
    }
}

/// Grades every row of the JSON-lines file `input`: each row is an object with string fields
/// `fields.output` and `fields.reference`. With `out`, each graded row is written there whole,
/// other fields (such as `prompt`) kept, with `score` added (and `passed` when the grader has a
/// pass threshold), replacing any fields of those names. Rows that are not objects or lack a
/// string field are skipped and listed in the summary. `progress` is called after each batch with
/// the rows graded so far and the rows to grade in all.
pub fn grade_jsonl(
    grader: &Grader,
    input: &Path,
    fields: &GradeFields,
    out: Option<&Path>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<GradeSummary> {
    let (rows, mut skipped) = read_json_objects(input)?;
    // (line, the row, its output, its reference)
    type Pair = (usize, Map<String, Value>, String, String);
    let mut pairs: Vec<Pair> = Vec::with_capacity(rows.len());
    for (line, object) in rows {
        let text = |field: &str| match object.get(field) {
            Some(Value::String(text)) => Ok(text.clone()),
            Some(_) => Err(format!("field {field:?} is not a string")),
            None => Err(format!("no field {field:?}")),
        };
        match (text(&fields.output), text(&fields.reference)) {
            (Ok(output), Ok(reference)) => pairs.push((line, object, output, reference)),
            (Err(reason), _) | (_, Err(reason)) => skipped.push(RowSkip { line, reason }),
        }
    }
    skipped.sort_by_key(|s| s.line);
    let mut writer = out
        .map(|path| {
            std::fs::File::create(path)
                .map(BufWriter::new)
                .map_err(|source| TrainingError::Io { path: path.to_path_buf(), source })
        })
        .transpose()?;
    let (mut sum, mut passed, mut done) = (0.0, 0usize, 0usize);
    let total = pairs.len();
    for chunk in pairs.chunks_mut(BATCH) {
        let batch: Vec<(&str, &str)> = chunk.iter().map(|(_, _, o, r)| (o.as_str(), r.as_str())).collect();
        let scores = grader.grade_batch(&batch)?;
        for ((_, object, _, _), score) in chunk.iter_mut().zip(scores) {
            sum += score;
            let pass = grader.passes(score);
            passed += usize::from(pass == Some(true));
            if let (Some(writer), Some(path)) = (writer.as_mut(), out) {
                object.insert("score".into(), Value::from(score));
                if let Some(pass) = pass {
                    object.insert("passed".into(), Value::Bool(pass));
                }
                let io = |e: std::io::Error| TrainingError::Io { path: path.to_path_buf(), source: e };
                serde_json::to_writer(&mut *writer, object).map_err(|e| io(std::io::Error::other(e)))?;
                writer.write_all(b"\n").map_err(io)?;
            }
        }
        done += chunk.len();
        progress(done, total);
    }
    if let (Some(mut writer), Some(path)) = (writer, out) {
        writer.flush().map_err(|source| TrainingError::Io { path: path.to_path_buf(), source })?;
    }
    let graded = pairs.len();
    let pass_threshold = grader.pass_threshold();
    Ok(GradeSummary {
        grader: grader.kind(),
        input: input.to_path_buf(),
        graded,
        skipped,
        mean_score: (graded > 0).then(|| sum / graded as f64),
        pass_threshold,
        passed: pass_threshold.map(|_| passed),
        pass_rate: pass_threshold.filter(|_| graded > 0).map(|_| passed as f64 / graded as f64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setting_names_round_trip_and_unknown_names_list_the_known_ones() {
        for operation in [StringCheckOperation::Eq, StringCheckOperation::Ne, StringCheckOperation::Like, StringCheckOperation::Ilike] {
            assert_eq!(operation.to_string().parse::<StringCheckOperation>().ok(), Some(operation));
        }
        for metric in [SimilarityMetric::FuzzyMatch, SimilarityMetric::Bleu, SimilarityMetric::RougeL, SimilarityMetric::Cosine] {
            assert_eq!(metric.to_string().parse::<SimilarityMetric>().ok(), Some(metric));
        }
        assert_eq!(SimilarityMetric::RougeL.name(), "rouge_l");
        let message = |e: TrainingError| e.to_string();
        assert!(message("EQ".parse::<StringCheckOperation>().unwrap_err())
            .ends_with("unknown string_check operation \"EQ\"; expected eq, ne, like or ilike"));
        assert!(message("rouge".parse::<SimilarityMetric>().unwrap_err())
            .ends_with("unknown text_similarity metric \"rouge\"; expected fuzzy_match, bleu, rouge_l or cosine"));
        assert_eq!(one_of(&["a"]), "a");
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn string_check_operations() {
        use StringCheckOperation::*;
        let cases = [
            (Eq, "Paris", "Paris", 1.0),
            (Eq, "Paris", "paris", 0.0),
            (Eq, "Paris ", "Paris", 0.0),
            (Ne, "Paris", "paris", 1.0),
            (Ne, "Paris", "Paris", 0.0),
            (Like, "The capital is Paris.", "Paris", 1.0),
            (Like, "The capital is PARIS.", "Paris", 0.0),
            (Like, "anything", "", 1.0),
            // No SQL wildcards: `%` is a character like any other.
            (Like, "The capital is Paris.", "%Paris%", 0.0),
            (Ilike, "The capital is PARIS.", "paris", 1.0),
            (Ilike, "ÉCOLE", "école", 1.0),
            (Ilike, "Lyon", "paris", 0.0),
        ];
        for (operation, output, reference, expected) in cases {
            assert_eq!(string_check(operation, output, reference), expected, "{operation} {output:?} {reference:?}");
        }
        for name in ["eq", "ne", "like", "ilike"] {
            assert_eq!(name.parse::<StringCheckOperation>().unwrap().name(), name);
        }
        assert!("contains".parse::<StringCheckOperation>().is_err());
    }

    #[test]
    fn fuzzy_match_is_rapidfuzz_ratio() {
        close(fuzzy_match("kitten", "sitting"), 8.0 / 13.0);
        close(fuzzy_match("this is a test", "this is a test!"), 28.0 / 29.0);
        close(fuzzy_match("abc", "abc"), 1.0);
        close(fuzzy_match("abc", "xyz"), 0.0);
        close(fuzzy_match("", ""), 1.0);
        // Case counts: "Paris" / "paris" share 4 of 5 characters.
        close(fuzzy_match("Paris", "paris"), 8.0 / 10.0);
        // Characters, not bytes: é is one.
        close(fuzzy_match("café", "cafe"), 6.0 / 8.0);
    }

    #[test]
    fn bleu_hand_computed() {
        // p1 = 5/6, p2 = 3/5, p3 = 1/4, p4 = 0/3 -> 1/(2·3); BP = 1.
        close(bleu("the cat sat on the mat", "the cat is on the mat"), (5.0 / 6.0 * 3.0 / 5.0 * 1.0 / 4.0 * 1.0 / 6.0f64).powf(0.25));
        // Effective order 2 (two words), exact: BP = exp(1 - 6/2).
        close(bleu("the cat", "the cat sat on the mat"), (-2.0f64).exp());
        // Longer output than the reference: no brevity penalty. p1 = 3/4 ("the" clipped to 1),
        // p2 = 2/3, p3 = 1/2, p4: none of 1 -> 1/(2·1).
        close(bleu("the the cat sat", "the cat sat"), (0.75 * 2.0 / 3.0 * 0.5 * 0.5f64).powf(0.25));
        // Two zero-match orders: the second is smoothed twice as hard. "a b c d" vs "a x c y":
        // p1 = 2/4, p2 = 0/3 -> 1/(2·3), p3 = 0/2 -> 1/(4·2), p4 = 0/1 -> 1/(8·1).
        close(bleu("a b c d", "a x c y"), (0.5 * (1.0 / 6.0) * (1.0 / 8.0) * (1.0 / 8.0f64)).powf(0.25));
        // Punctuation is a token of its own; case counts.
        close(bleu("Paris.", "Paris ."), 1.0);
        close(bleu("paris", "Paris"), 0.0);
        close(bleu("", "Paris"), 0.0);
        close(bleu("Paris", ""), 0.0);
    }

    #[test]
    fn rouge_l_hand_computed() {
        close(rouge_l("the cat sat on the mat", "the cat is on the mat"), 5.0 / 6.0);
        // P = 2/2, R = 2/4.
        close(rouge_l("the cat", "the black cat sat"), 2.0 / 3.0);
        // Order matters: LCS of "the gunman police killed" and "police killed the gunman" is 2.
        close(rouge_l("the gunman police killed", "police killed the gunman"), 0.5);
        // Case and punctuation are ignored.
        close(rouge_l("The Cat, sat!", "the cat sat"), 1.0);
        close(rouge_l("dog", "the cat"), 0.0);
        close(rouge_l("", "the cat"), 0.0);
    }

    #[test]
    fn thresholds() {
        let grader = Grader::text_similarity(SimilarityMetric::Bleu).unwrap();
        assert_eq!(grader.pass_threshold(), None);
        assert_eq!(grader.passes(0.9), None);
        let grader = grader.with_pass_threshold(0.5).unwrap();
        assert_eq!(grader.passes(0.5), Some(true));
        assert_eq!(grader.passes(0.49), Some(false));
        assert!(Grader::string_check(StringCheckOperation::Eq).with_pass_threshold(1.5).is_err());
        assert_eq!(Grader::string_check(StringCheckOperation::Eq).passes(0.0), Some(false));
    }

    #[test]
    fn jsonl_rows_are_graded_and_bad_rows_counted_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("pairs.jsonl");
        std::fs::write(
            &input,
            concat!(
                "{\"prompt\": \"Capital of France?\", \"output\": \"Paris\", \"reference\": \"Paris\", \"id\": 1}\n",
                "not json\n",
                "\n",
                "{\"output\": \"Lyon\", \"reference\": \"Paris\"}\n",
                "[1, 2]\n",
                "{\"output\": 3, \"reference\": \"Paris\"}\n",
                "{\"output\": \"Paris\"}\n",
            ),
        )
        .unwrap();
        let out = dir.path().join("graded.jsonl");
        let grader = Grader::string_check(StringCheckOperation::Eq);
        let mut done = (0, 0);
        let summary = grade_jsonl(&grader, &input, &GradeFields::default(), Some(&out), &mut |d, t| done = (d, t)).unwrap();
        assert_eq!(done, (2, 2));
        assert_eq!(summary.graded, 2);
        let lines: Vec<usize> = summary.skipped.iter().map(|s| s.line).collect();
        assert_eq!(lines, [2, 5, 6, 7]);
        assert!(summary.skipped[2].reason.contains("\"output\" is not a string"), "{:?}", summary.skipped);
        assert!(summary.skipped[3].reason.contains("no field \"reference\""), "{:?}", summary.skipped);
        assert_eq!(summary.mean_score, Some(0.5));
        assert_eq!((summary.passed, summary.pass_rate), (Some(1), Some(0.5)));
        let written: Vec<Value> =
            std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(written.len(), 2);
        assert_eq!(written[0]["prompt"], "Capital of France?", "other fields pass through");
        assert_eq!(written[0]["id"], 1);
        assert_eq!((written[0]["score"].as_f64(), written[0]["passed"].as_bool()), (Some(1.0), Some(true)));
        assert_eq!((written[1]["score"].as_f64(), written[1]["passed"].as_bool()), (Some(0.0), Some(false)));
        let text = summary.to_string();
        assert!(text.contains("skipped 4 row(s): line 2: not JSON"), "{text}");
        assert!(text.contains("pass rate 0.5000 (1 of 2 at score >= 1)"), "{text}");
    }
}
