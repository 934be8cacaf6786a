//! Graders: a model's answer scored, in OpenAI's grader shapes.
//!
//! A [`GraderSpec`] is one of OpenAI's graders, parsed from its JSON: `string_check`,
//! `text_similarity`, `score_model` (an LLM judge's number), `label_model` (an LLM judge's label),
//! `python` (the user's `grade(sample, item)` in a separate `python3` process, see [`python`]) and
//! `multi` (a formula over named graders). Their text fields are templates over the dataset row
//! (`{{item.FIELD}}`, nested `{{item.a.b}}`) and the answer (`{{sample.output_text}}`).
//!
//! The metrics are the reference packages' own, checked against them in CI
//! (`tests/grader_reference.rs`):
//!
//! | grader | what it scores |
//! |---|---|
//! | `string_check` `eq` / `ne` | 1 when the input equals (`eq`) or differs from (`ne`) the reference, byte for byte, else 0 |
//! | `string_check` `like` / `ilike` | 1 when the input *contains* the reference (`ilike`: ignoring case), else 0; as OpenAI defines them, no `%` / `_` wildcards |
//! | `text_similarity` `fuzzy_match` | rapidfuzz's `fuzz.ratio` / 100: `1 − indel distance / (len(a) + len(b))` over characters |
//! | `text_similarity` `bleu` | sacreBLEU's `sentence_bleu` / 100: the `13a` tokenizer, `exp` smoothing, effective order (see [`bleu`]) |
//! | `text_similarity` `rouge_l` | `rouge_score`'s `rougeL` F-measure with its default tokenizer, which keeps only ASCII letters and digits (see [`rouge_l`]) |
//! | `text_similarity` `cosine` | the cosine of the two texts' embeddings by a router bundle's encoder, negative values clamped to 0 (see [`cosine_score`]) |
//!
//! Nothing is normalised unless the table says so: `eq` compares `"Paris"` and `"Paris\n"` as
//! different, as OpenAI does.
//!
//! [`grade_jsonl`] grades a JSON-lines file: each graded row is written back whole with `score`
//! (and `passed`) added, so a file that has a `prompt` field becomes the samples of
//! `model-router candidate add` (see [`crate::candidate`]). A row that cannot be read is skipped,
//! a row whose grading fails (a judge's unparsable reply, a python exception) is counted as
//! failed, each with its line number; neither is ever a score of 0.
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

mod bleu;
mod formula;
mod judge_reply;
pub mod python;
mod rouge;
mod spec;
mod template;

use std::fmt;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use bleu::{bleu, tokenize_13a};
pub use rouge::{rouge_l, rouge_tokens};
pub use spec::{ChatModel, GradeContext, Graded, GraderSpec, DEFAULT_PYTHON_TIMEOUT};

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

/// Rows graded per batch by [`grade_jsonl`] (a python grader runs one process per batch, the
/// cosine metric embeds a batch at once).
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
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let (na, nb) = (norm(a), norm(b));
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    (dot / (na * nb)).clamp(0.0, 1.0)
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
    text.push_str(
        &skipped
            .iter()
            .take(shown)
            .map(RowSkip::to_string)
            .collect::<Vec<_>>()
            .join("; "),
    );
    if skipped.len() > shown {
        text.push_str(&format!("; and {} more", skipped.len() - shown));
    }
    Some(text)
}

/// One JSON object of a JSON-lines file with its line number (from 1).
pub type NumberedObject = (usize, Map<String, Value>);

/// Reads the non-blank lines of a JSON-lines file as objects: `(line number, object)` for each
/// good line, and a [`RowSkip`] for each line that is not a JSON object. Blank lines are not rows;
/// a UTF-8 byte-order mark at the start of the file is skipped.
pub fn read_json_objects(path: &Path) -> Result<(Vec<NumberedObject>, Vec<RowSkip>)> {
    let file = std::fs::File::open(path).map_err(|source| TrainingError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let number = index + 1;
        let line = match line {
            Ok(line) => line,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                skipped.push(RowSkip {
                    line: number,
                    reason: "not UTF-8".into(),
                });
                continue;
            }
            Err(source) => {
                return Err(TrainingError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        // A byte-order mark (Windows editors write one) is accepted: it is not part of the JSON.
        let line = if number == 1 {
            line.strip_prefix('\u{feff}')
                .map(str::to_owned)
                .unwrap_or(line)
        } else {
            line
        };
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(&line) {
            Ok(Value::Object(object)) => rows.push((number, object)),
            Ok(_) => skipped.push(RowSkip {
                line: number,
                reason: "not a JSON object".into(),
            }),
            Err(e) => skipped.push(RowSkip {
                line: number,
                reason: format!("not JSON ({e})"),
            }),
        }
    }
    Ok((rows, skipped))
}

/// What [`grade_jsonl`] did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GradeSummary {
    /// The grader, as the JSON it was parsed from.
    pub grader: Value,
    /// The input file.
    pub input: PathBuf,
    /// Rows graded.
    pub graded: usize,
    /// Rows that could not be read (not JSON, no answer), with their line numbers and reasons.
    pub skipped: Vec<RowSkip>,
    /// Rows whose grading failed (a template field missing, the judge's reply unparsable, the
    /// python code raising or timing out), with their line numbers and the errors.
    pub failed: Vec<RowSkip>,
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
        let name = self
            .grader
            .get("name")
            .or_else(|| self.grader.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("grader");
        writeln!(
            f,
            "graded {} row(s) of {} with {name}",
            self.graded,
            self.input.display()
        )?;
        if let Some(skips) = describe_skips(&self.skipped, 10) {
            writeln!(f, "{skips}")?;
        }
        if let Some(failures) = describe_skips(&self.failed, 10) {
            writeln!(f, "{}", failures.replacen("skipped", "failed to grade", 1))?;
        }
        match self.mean_score {
            Some(mean) => writeln!(f, "mean score {mean:.4}")?,
            None => writeln!(f, "mean score: none (no row graded)")?,
        }
        match (self.pass_rate, self.passed, self.pass_threshold) {
            (Some(rate), Some(passed), Some(threshold)) => {
                write!(
                    f,
                    "pass rate {rate:.4} ({passed} of {} at score >= {threshold})",
                    self.graded
                )
            }
            (_, _, Some(threshold)) => {
                write!(f, "pass rate: none (no row graded; threshold {threshold})")
            }
            _ => write!(f, "pass rate: none (no pass threshold; give one)"),
        }
    }
}

/// A row to grade: its line, the whole row, its answer.
type Row = (usize, Map<String, Value>, String);

/// The rows of `input` that have a string `output_field`; the others are skipped with a reason.
fn answered_rows(input: &Path, output_field: &str) -> Result<(Vec<Row>, Vec<RowSkip>)> {
    let (objects, mut skipped) = read_json_objects(input)?;
    let mut rows = Vec::with_capacity(objects.len());
    for (line, object) in objects {
        match object.get(output_field) {
            Some(Value::String(text)) => {
                let text = text.clone();
                rows.push((line, object, text));
            }
            Some(_) => skipped.push(RowSkip {
                line,
                reason: format!("field {output_field:?} is not a string"),
            }),
            None => skipped.push(RowSkip {
                line,
                reason: format!("no field {output_field:?}"),
            }),
        }
    }
    skipped.sort_by_key(|s| s.line);
    Ok((rows, skipped))
}

fn write_row(
    writer: &mut BufWriter<std::fs::File>,
    path: &Path,
    row: &mut Map<String, Value>,
    graded: &Graded,
) -> Result<()> {
    row.insert("score".into(), Value::from(graded.score));
    if let Some(pass) = graded.passed {
        row.insert("passed".into(), Value::Bool(pass));
    }
    let io = |e: std::io::Error| TrainingError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    serde_json::to_writer(&mut *writer, row).map_err(|e| io(std::io::Error::other(e)))?;
    writer.write_all(b"\n").map_err(io)
}

/// Grades every row of the JSON-lines file `input` with `spec`: the row is the template's
/// `item`, its string field `output_field` the answer (`sample.output_text`). With `out`, each
/// graded row is written there whole, other fields (such as `prompt`) kept, with `score` added
/// (and `passed` when the grader has a pass threshold), replacing any fields of those names.
/// Rows that are not objects or lack the answer are skipped; rows whose grading fails are
/// counted as failed; both are listed in the summary by line. Model graders grade the rows of a
/// batch in parallel on rayon's current pool. `progress` is called after each batch with the
/// rows done so far and the rows to grade in all.
pub fn grade_jsonl(
    spec: &GraderSpec,
    context: &GradeContext<'_>,
    input: &Path,
    output_field: &str,
    out: Option<&Path>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<GradeSummary> {
    let (mut rows, skipped) = answered_rows(input, output_field)?;
    let mut writer = out
        .map(|path| {
            std::fs::File::create(path)
                .map(BufWriter::new)
                .map_err(|source| TrainingError::Io {
                    path: path.to_path_buf(),
                    source,
                })
        })
        .transpose()?;
    // A judge is slow: small batches keep the progress bar moving.
    let batch = if spec.needs_judge() {
        4 * rayon::current_num_threads()
    } else {
        BATCH
    };
    let (mut sum, mut passed, mut graded, mut done) = (0.0, 0usize, 0usize, 0usize);
    let mut failed = Vec::new();
    let total = rows.len();
    for chunk in rows.chunks_mut(batch) {
        let pairs: Vec<(&str, &Map<String, Value>)> = chunk
            .iter()
            .map(|(_, item, output)| (output.as_str(), item))
            .collect();
        let results = spec.grade_batch(&pairs, context);
        for ((line, row, _), result) in chunk.iter_mut().zip(results) {
            match result {
                Ok(grade) => {
                    sum += grade.score;
                    graded += 1;
                    passed += usize::from(grade.passed == Some(true));
                    if let (Some(writer), Some(path)) = (writer.as_mut(), out) {
                        write_row(writer, path, row, &grade)?;
                    }
                }
                Err(error) => failed.push(RowSkip {
                    line: *line,
                    reason: error.to_string(),
                }),
            }
        }
        done += chunk.len();
        progress(done, total);
    }
    if let (Some(mut writer), Some(path)) = (writer, out) {
        writer.flush().map_err(|source| TrainingError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    }
    let pass_threshold = spec.pass_threshold();
    Ok(GradeSummary {
        grader: spec.json().clone(),
        input: input.to_path_buf(),
        graded,
        skipped,
        failed,
        mean_score: (graded > 0).then(|| sum / graded as f64),
        pass_threshold,
        passed: pass_threshold.map(|_| passed),
        pass_rate: pass_threshold
            .filter(|_| graded > 0)
            .map(|_| passed as f64 / graded as f64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setting_names_round_trip_and_unknown_names_list_the_known_ones() {
        for operation in [
            StringCheckOperation::Eq,
            StringCheckOperation::Ne,
            StringCheckOperation::Like,
            StringCheckOperation::Ilike,
        ] {
            assert_eq!(
                operation.to_string().parse::<StringCheckOperation>().ok(),
                Some(operation)
            );
        }
        for metric in [
            SimilarityMetric::FuzzyMatch,
            SimilarityMetric::Bleu,
            SimilarityMetric::RougeL,
            SimilarityMetric::Cosine,
        ] {
            assert_eq!(
                metric.to_string().parse::<SimilarityMetric>().ok(),
                Some(metric)
            );
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
            assert_eq!(
                string_check(operation, output, reference),
                expected,
                "{operation} {output:?} {reference:?}"
            );
        }
        for name in ["eq", "ne", "like", "ilike"] {
            assert_eq!(name.parse::<StringCheckOperation>().unwrap().name(), name);
        }
        assert!("contains".parse::<StringCheckOperation>().is_err());
    }

    #[test]
    fn fuzzy_match_is_rapidfuzz_ratio() {
        close(fuzzy_match("kitten", "sitting"), 8.0 / 13.0);
        close(
            fuzzy_match("this is a test", "this is a test!"),
            28.0 / 29.0,
        );
        close(fuzzy_match("abc", "abc"), 1.0);
        close(fuzzy_match("abc", "xyz"), 0.0);
        close(fuzzy_match("", ""), 1.0);
        // Case counts: "Paris" / "paris" share 4 of 5 characters.
        close(fuzzy_match("Paris", "paris"), 8.0 / 10.0);
        // Characters, not bytes: é is one.
        close(fuzzy_match("café", "cafe"), 6.0 / 8.0);
    }

    #[test]
    fn jsonl_rows_are_graded_and_bad_rows_counted_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("pairs.jsonl");
        std::fs::write(
            &input,
            concat!(
                "\u{feff}{\"prompt\": \"Capital of France?\", \"output\": \"Paris\", \"reference\": \"Paris\", \"id\": 1}\n",
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
        let spec = GraderSpec::from_json(&serde_json::json!({
            "type": "string_check", "operation": "eq", "input": "{{sample.output_text}}", "reference": "{{item.reference}}",
        }))
        .unwrap();
        let mut done = (0, 0);
        let summary = grade_jsonl(
            &spec,
            &GradeContext::default(),
            &input,
            "output",
            Some(&out),
            &mut |d, t| done = (d, t),
        )
        .unwrap();
        assert_eq!(done, (3, 3));
        assert_eq!(
            summary.graded, 2,
            "the byte-order mark of line 1 is skipped: {summary:?}"
        );
        let lines: Vec<usize> = summary.skipped.iter().map(|s| s.line).collect();
        assert_eq!(lines, [2, 5, 6]);
        assert!(
            summary.skipped[2]
                .reason
                .contains("\"output\" is not a string"),
            "{:?}",
            summary.skipped
        );
        assert_eq!(summary.failed.len(), 1);
        assert_eq!(summary.failed[0].line, 7);
        assert!(
            summary.failed[0].reason.contains("item.reference"),
            "{:?}",
            summary.failed
        );
        assert_eq!(summary.mean_score, Some(0.5));
        assert_eq!((summary.passed, summary.pass_rate), (Some(1), Some(0.5)));
        let written: Vec<Value> = std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(written.len(), 2);
        assert_eq!(
            written[0]["prompt"], "Capital of France?",
            "other fields pass through"
        );
        assert_eq!(written[0]["id"], 1);
        assert_eq!(
            (written[0]["score"].as_f64(), written[0]["passed"].as_bool()),
            (Some(1.0), Some(true))
        );
        assert_eq!(
            (written[1]["score"].as_f64(), written[1]["passed"].as_bool()),
            (Some(0.0), Some(false))
        );
        let text = summary.to_string();
        assert!(
            text.contains("skipped 3 row(s): line 2: not JSON"),
            "{text}"
        );
        assert!(text.contains("failed to grade 1 row(s): line 7: grader \"string_check\": the row has no field item.reference"), "{text}");
        assert!(
            text.contains("pass rate 0.5000 (1 of 2 at score >= 1)"),
            "{text}"
        );
    }
}
