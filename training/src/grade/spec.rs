//! A grader given in OpenAI's JSON shape, parsed once into a [`GraderSpec`].

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use rayon::prelude::*;
use router_core::Encoder;
use serde_json::{Map, Value};

use super::formula::Formula;
use super::judge_reply::{match_label, parse_score};
use super::template::Template;
use super::{
    bleu, cosine_score, fuzzy_match, python, rouge_l, string_check, SimilarityMetric,
    StringCheckOperation,
};
use crate::error::{Result, TrainingError};

/// The time limit of one answer of a `python` grader unless its `timeout_seconds` says otherwise.
pub const DEFAULT_PYTHON_TIMEOUT: Duration = Duration::from_secs(10);

/// A chat model that a `score_model` or `label_model` grader asks (the judge).
pub trait ChatModel: Send + Sync {
    /// One chat completion by `model` (a catalog model name) on `messages` (OpenAI chat
    /// messages); returns the answer's text, or an error message.
    fn complete(
        &self,
        model: &str,
        messages: &[Value],
        sampling_params: &Map<String, Value>,
    ) -> std::result::Result<String, String>;
}

/// What grading may need besides the grader: a judge for model graders, an encoder for `cosine`.
#[derive(Clone, Copy, Default)]
pub struct GradeContext<'a> {
    /// The judge of `score_model` and `label_model` graders.
    pub judge: Option<&'a dyn ChatModel>,
    /// The encoder of the `cosine` metric.
    pub encoder: Option<&'a Encoder>,
}

/// The grade of one answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Graded {
    /// The score: in [0, 1] for every grader but `python` and `multi`, whose value is what the
    /// code or the formula gives (any finite number).
    pub score: f64,
    /// `score >= pass_threshold`, when the grader has a threshold.
    pub passed: Option<bool>,
}

/// A grader in OpenAI's JSON shape (`string_check`, `text_similarity`, `score_model`,
/// `label_model`, `python`, `multi`), parsed once: templates, the formula, the range and the
/// labels are checked when it is built, so grading only fails on what the row or the judge
/// brings.
///
/// ```
/// use router_training::grade::{GradeContext, GraderSpec};
/// use serde_json::json;
///
/// let spec = GraderSpec::from_json(&json!({
///     "type": "string_check", "name": "exact", "operation": "eq",
///     "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
/// }))?;
/// let item = json!({"answer": "Paris"});
/// let graded = spec.grade("Paris", item.as_object().unwrap(), &GradeContext::default())?;
/// assert_eq!((graded.score, graded.passed), (1.0, Some(true)));
/// assert_eq!(spec.name(), "exact");
/// assert!(!spec.needs_judge());
/// # Ok::<(), router_training::TrainingError>(())
/// ```
#[derive(Debug, Clone)]
pub struct GraderSpec {
    name: String,
    kind: Kind,
    json: Value,
}

#[derive(Debug, Clone)]
enum Kind {
    StringCheck {
        input: Template,
        reference: Template,
        operation: StringCheckOperation,
    },
    TextSimilarity {
        input: Template,
        reference: Template,
        metric: SimilarityMetric,
        pass_threshold: Option<f64>,
    },
    ScoreModel {
        judge: JudgeCall,
        range: (f64, f64),
        pass_threshold: Option<f64>,
    },
    LabelModel {
        judge: JudgeCall,
        labels: Vec<String>,
        passing: Vec<String>,
    },
    Python {
        code: python::PythonGrader,
        pass_threshold: Option<f64>,
    },
    Multi {
        graders: Vec<GraderSpec>,
        formula: Formula,
        pass_threshold: Option<f64>,
    },
}

/// What a model grader sends: the model, its message templates, its sampling parameters.
#[derive(Debug, Clone)]
struct JudgeCall {
    model: String,
    messages: Vec<(String, Template)>,
    sampling_params: Map<String, Value>,
}

/// The grader types and the fields each takes (besides `type` and `name`).
const TYPES: [(&str, &[&str]); 6] = [
    ("string_check", &["input", "reference", "operation"]),
    (
        "text_similarity",
        &["input", "reference", "evaluation_metric", "pass_threshold"],
    ),
    (
        "score_model",
        &[
            "model",
            "input",
            "range",
            "pass_threshold",
            "sampling_params",
        ],
    ),
    (
        "label_model",
        &[
            "model",
            "input",
            "labels",
            "passing_labels",
            "sampling_params",
        ],
    ),
    (
        "python",
        &["source", "image_tag", "timeout_seconds", "pass_threshold"],
    ),
    ("multi", &["graders", "calculate_output", "pass_threshold"]),
];

/// The fields of one grader object, read with errors that name the grader and the field.
struct Fields<'a> {
    object: &'a Map<String, Value>,
    what: String,
}

impl Fields<'_> {
    fn error(&self, field: &str, message: impl std::fmt::Display) -> TrainingError {
        TrainingError::Grader(format!("{}: field \"{field}\": {message}", self.what))
    }

    fn optional(&self, field: &str) -> Option<&Value> {
        self.object.get(field).filter(|v| !v.is_null())
    }

    fn required(&self, field: &str) -> Result<&Value> {
        self.optional(field)
            .ok_or_else(|| self.error(field, "missing"))
    }

    fn string(&self, field: &str) -> Result<String> {
        match self.required(field)? {
            Value::String(text) => Ok(text.clone()),
            other => Err(self.error(field, format!("expected a string, got {other}"))),
        }
    }

    fn template(&self, field: &str) -> Result<Template> {
        Template::parse(&self.string(field)?).map_err(|e| self.error(field, e))
    }

    fn number(&self, field: &str) -> Result<Option<f64>> {
        match self.optional(field) {
            None => Ok(None),
            Some(value) => match value.as_f64().filter(|v| v.is_finite()) {
                Some(number) => Ok(Some(number)),
                None => Err(self.error(field, format!("expected a number, got {value}"))),
            },
        }
    }

    fn threshold(&self, within: (f64, f64)) -> Result<Option<f64>> {
        let threshold = self.number("pass_threshold")?;
        match threshold {
            Some(t) if !(within.0..=within.1).contains(&t) => Err(self.error(
                "pass_threshold",
                format!("{t} is not in [{}, {}]", within.0, within.1),
            )),
            _ => Ok(threshold),
        }
    }

    fn strings(&self, field: &str) -> Result<Vec<String>> {
        let bad = || self.error(field, "expected a non-empty list of strings");
        let list = self
            .required(field)?
            .as_array()
            .filter(|l| !l.is_empty())
            .ok_or_else(bad)?;
        list.iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(bad))
            .collect()
    }

    fn parsed<T: std::str::FromStr<Err = TrainingError>>(&self, field: &str) -> Result<T> {
        self.string(field)?.parse().map_err(|e: TrainingError| {
            self.error(field, e.to_string().trim_start_matches("invalid input: "))
        })
    }
}

impl GraderSpec {
    /// Parses a grader from OpenAI's JSON shape. An unknown `type`, an unknown or missing field,
    /// a field of the wrong type, a bad template, formula, range or label list is an error that
    /// names the grader and the field.
    pub fn from_json(value: &Value) -> Result<GraderSpec> {
        let object = value.as_object().ok_or_else(|| {
            TrainingError::Grader(format!("a grader is a JSON object, got {value}"))
        })?;
        let kind_name = match object.get("type") {
            Some(Value::String(name)) => name.as_str(),
            Some(other) => {
                return Err(TrainingError::Grader(format!(
                    "field \"type\": expected a string, got {other}"
                )))
            }
            None => return Err(TrainingError::Grader("field \"type\" is missing".into())),
        };
        let known = TYPES
            .iter()
            .find(|(name, _)| *name == kind_name)
            .map(|(_, fields)| *fields)
            .ok_or_else(|| {
                let names: Vec<&str> = TYPES.iter().map(|(n, _)| *n).collect();
                TrainingError::Grader(format!(
                    "field \"type\": unknown grader type {kind_name:?}; expected {}",
                    super::one_of(&names)
                ))
            })?;
        let name = match object.get("name") {
            None => kind_name.to_owned(),
            Some(Value::String(name)) => name.clone(),
            Some(other) => {
                return Err(TrainingError::Grader(format!(
                    "{kind_name}: field \"name\": expected a string, got {other}"
                )))
            }
        };
        let fields = Fields {
            object,
            what: format!("grader {name:?} ({kind_name})"),
        };
        if let Some(unknown) = object
            .keys()
            .find(|k| !matches!(k.as_str(), "type" | "name") && !known.contains(&k.as_str()))
        {
            return Err(fields.error(
                unknown,
                format!("unknown field; {kind_name} takes {}", known.join(", ")),
            ));
        }
        let kind = match kind_name {
            "string_check" => Kind::StringCheck {
                input: fields.template("input")?,
                reference: fields.template("reference")?,
                operation: fields.parsed("operation")?,
            },
            "text_similarity" => Kind::TextSimilarity {
                input: fields.template("input")?,
                reference: fields.template("reference")?,
                metric: fields.parsed("evaluation_metric")?,
                pass_threshold: fields.threshold((0.0, 1.0))?,
            },
            "score_model" => Self::score_model(&fields)?,
            "label_model" => Self::label_model(&fields)?,
            "python" => Self::python(&fields)?,
            _ => Self::multi(&fields)?,
        };
        Ok(GraderSpec {
            name,
            kind,
            json: value.clone(),
        })
    }

    fn judge_call(fields: &Fields<'_>) -> Result<JudgeCall> {
        let model = fields.string("model")?;
        let bad = |i: usize, what: &str| fields.error("input", format!("message {i}: {what}"));
        let list = fields
            .required("input")?
            .as_array()
            .filter(|l| !l.is_empty());
        let list =
            list.ok_or_else(|| fields.error("input", "expected a non-empty list of messages"))?;
        let mut messages = Vec::with_capacity(list.len());
        for (i, message) in list.iter().enumerate() {
            let message = message.as_object().ok_or_else(|| bad(i, "not an object"))?;
            if let Some(extra) = message
                .keys()
                .find(|k| !matches!(k.as_str(), "role" | "content" | "type"))
            {
                return Err(bad(
                    i,
                    &format!("unknown field {extra:?}; a message takes role, content and type"),
                ));
            }
            let role = message
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(i, "\"role\" must be a string"))?;
            let content = message
                .get("content")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(i, "\"content\" must be a string"))?;
            messages.push((
                role.to_owned(),
                Template::parse(content).map_err(|e| bad(i, &e))?,
            ));
        }
        let mut sampling_params = match fields.optional("sampling_params") {
            None => Map::new(),
            Some(Value::Object(params)) => params.clone(),
            Some(other) => {
                return Err(fields.error(
                    "sampling_params",
                    format!("expected an object, got {other}"),
                ))
            }
        };
        // OpenAI's grader field is `max_completions_tokens`; the chat API's is `max_completion_tokens`.
        if let Some(tokens) = sampling_params.remove("max_completions_tokens") {
            sampling_params.insert("max_completion_tokens".into(), tokens);
        }
        Ok(JudgeCall {
            model,
            messages,
            sampling_params,
        })
    }

    fn score_model(fields: &Fields<'_>) -> Result<Kind> {
        let range = match fields.optional("range") {
            None => (0.0, 1.0),
            Some(value) => match value
                .as_array()
                .map(|r| r.iter().map(Value::as_f64).collect::<Option<Vec<_>>>())
            {
                Some(Some(bounds))
                    if bounds.len() == 2
                        && bounds[0] < bounds[1]
                        && bounds.iter().all(|b| b.is_finite()) =>
                {
                    (bounds[0], bounds[1])
                }
                _ => {
                    return Err(fields.error(
                        "range",
                        format!("expected [min, max] with min < max, got {value}"),
                    ))
                }
            },
        };
        Ok(Kind::ScoreModel {
            judge: Self::judge_call(fields)?,
            range,
            pass_threshold: fields.threshold(range)?,
        })
    }

    fn label_model(fields: &Fields<'_>) -> Result<Kind> {
        let labels = fields.strings("labels")?;
        let passing = fields.strings("passing_labels")?;
        if let Some(stray) = passing.iter().find(|p| !labels.contains(p)) {
            return Err(fields.error(
                "passing_labels",
                format!("{stray:?} is not one of the labels {labels:?}"),
            ));
        }
        Ok(Kind::LabelModel {
            judge: Self::judge_call(fields)?,
            labels,
            passing,
        })
    }

    fn python(fields: &Fields<'_>) -> Result<Kind> {
        let timeout = match fields.number("timeout_seconds")? {
            None => DEFAULT_PYTHON_TIMEOUT,
            Some(seconds) if seconds > 0.0 && seconds <= 3600.0 => Duration::from_secs_f64(seconds),
            Some(seconds) => {
                return Err(
                    fields.error("timeout_seconds", format!("{seconds} is not in (0, 3600]"))
                )
            }
        };
        let pass_threshold = fields.number("pass_threshold")?;
        Ok(Kind::Python {
            code: python::PythonGrader::new(fields.string("source")?, timeout),
            pass_threshold,
        })
    }

    fn multi(fields: &Fields<'_>) -> Result<Kind> {
        let map = fields
            .required("graders")?
            .as_object()
            .filter(|m| !m.is_empty());
        let map = map.ok_or_else(|| {
            fields.error("graders", "expected a non-empty object of name → grader")
        })?;
        let mut graders = Vec::with_capacity(map.len());
        let mut names = HashMap::new();
        for (key, value) in map {
            // A sub-grader without a name is called by its key, so its errors say which one failed.
            let mut value = value.clone();
            if let Some(object) = value.as_object_mut().filter(|o| !o.contains_key("name")) {
                object.insert("name".into(), Value::String(key.clone()));
            }
            let grader = GraderSpec::from_json(&value)
                .map_err(|e| fields.error(&format!("graders.{key}"), e))?;
            names.insert(key.clone(), graders.len());
            graders.push(grader);
        }
        let text = fields.string("calculate_output")?;
        let formula =
            Formula::parse(&text, &names).map_err(|e| fields.error("calculate_output", e))?;
        Ok(Kind::Multi {
            graders,
            formula,
            pass_threshold: fields.number("pass_threshold")?,
        })
    }

    /// Reads a grader from a JSON file; errors name the file.
    pub fn load(path: &Path) -> Result<GraderSpec> {
        let text = std::fs::read_to_string(path).map_err(|source| TrainingError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let value: Value =
            serde_json::from_str(text.trim_start_matches('\u{feff}')).map_err(|e| {
                TrainingError::Format {
                    path: path.to_path_buf(),
                    message: format!("not JSON: {e}"),
                }
            })?;
        Self::from_json(&value).map_err(|e| TrainingError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// The grader's `name` (its type when the JSON has none).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The JSON the grader was parsed from.
    pub fn json(&self) -> &Value {
        &self.json
    }

    /// Whether a `score_model` or `label_model` grader is anywhere inside (grading needs a judge).
    pub fn needs_judge(&self) -> bool {
        !self.judge_models().is_empty()
    }

    /// The judge models that `score_model` and `label_model` graders inside ask, each once, in
    /// order: a caller can check them against its catalog before grading.
    pub fn judge_models(&self) -> Vec<&str> {
        let mut models = Vec::new();
        self.collect_judge_models(&mut models);
        models
    }

    fn collect_judge_models<'s>(&'s self, models: &mut Vec<&'s str>) {
        match &self.kind {
            Kind::ScoreModel { judge, .. } | Kind::LabelModel { judge, .. }
                if !models.contains(&judge.model.as_str()) =>
            {
                models.push(&judge.model)
            }
            Kind::Multi { graders, .. } => {
                graders.iter().for_each(|g| g.collect_judge_models(models))
            }
            _ => {}
        }
    }

    /// Whether a `cosine` metric is anywhere inside (grading needs an encoder).
    pub fn needs_encoder(&self) -> bool {
        match &self.kind {
            Kind::TextSimilarity { metric, .. } => *metric == SimilarityMetric::Cosine,
            Kind::Multi { graders, .. } => graders.iter().any(GraderSpec::needs_encoder),
            _ => false,
        }
    }

    /// Whether a `python` grader is anywhere inside.
    pub fn runs_python(&self) -> bool {
        match &self.kind {
            Kind::Python { .. } => true,
            Kind::Multi { graders, .. } => graders.iter().any(GraderSpec::runs_python),
            _ => false,
        }
    }

    /// The score at or above which an answer passes, in the units of [`Graded::score`]: 1 for
    /// `string_check`; `pass_threshold` (scaled by the range for `score_model`); 1 for
    /// `label_model` (passing labels score 1); none where the spec gives none.
    pub fn pass_threshold(&self) -> Option<f64> {
        match &self.kind {
            Kind::StringCheck { .. } | Kind::LabelModel { .. } => Some(1.0),
            Kind::ScoreModel {
                range,
                pass_threshold,
                ..
            } => pass_threshold.map(|t| scale(t, *range)),
            Kind::TextSimilarity { pass_threshold, .. }
            | Kind::Python { pass_threshold, .. }
            | Kind::Multi { pass_threshold, .. } => *pass_threshold,
        }
    }

    /// Grades one answer. `item` is the dataset row ({{item.FIELD}}), `output_text` the
    /// answer ({{sample.output_text}}). Errors (unparsable judge reply, python exception or
    /// timeout, missing template field, formula error) are Err, never a 0 score.
    pub fn grade(
        &self,
        output_text: &str,
        item: &Map<String, Value>,
        context: &GradeContext<'_>,
    ) -> Result<Graded> {
        let mut results = self.grade_batch(&[(output_text, item)], context);
        results
            .pop()
            .unwrap_or_else(|| Err(TrainingError::Grading("no result".into())))
    }

    /// Grades many answers ((output text, item) pairs): one result per pair, in order. Model
    /// graders ask the judge for the pairs in parallel (on rayon's current pool, so its size
    /// bounds the requests in flight); a `python` grader grades the batch in one warm process
    /// (its processes stay up between calls, one per concurrent caller, until the spec is
    /// dropped); `cosine` embeds the batch at once.
    pub fn grade_batch(
        &self,
        rows: &[(&str, &Map<String, Value>)],
        context: &GradeContext<'_>,
    ) -> Vec<Result<Graded>> {
        let scores = self.scores(rows, context);
        scores
            .into_iter()
            .map(|score| {
                score.map(|score| Graded {
                    score,
                    passed: self.pass_threshold().map(|t| score >= t),
                })
            })
            .collect()
    }

    fn failed(&self, message: impl std::fmt::Display) -> TrainingError {
        TrainingError::Grading(format!("grader {:?}: {message}", self.name))
    }

    fn scores(
        &self,
        rows: &[(&str, &Map<String, Value>)],
        context: &GradeContext<'_>,
    ) -> Vec<Result<f64>> {
        match &self.kind {
            Kind::StringCheck {
                input,
                reference,
                operation,
            } => rows
                .iter()
                .map(|(output, item)| {
                    self.texts(input, reference, output, item)
                        .map(|(a, b)| string_check(*operation, &a, &b))
                })
                .collect(),
            Kind::TextSimilarity {
                input,
                reference,
                metric,
                ..
            } => self.similarity(input, reference, *metric, rows, context),
            Kind::ScoreModel { judge, range, .. } => rows
                .par_iter()
                .map(|(output, item)| {
                    let reply = self.ask(judge, output, item, context)?;
                    parse_score(&reply, *range)
                        .map(|score| scale(score, *range))
                        .map_err(|e| self.failed(e))
                })
                .collect(),
            Kind::LabelModel {
                judge,
                labels,
                passing,
            } => rows
                .par_iter()
                .map(|(output, item)| {
                    let reply = self.ask(judge, output, item, context)?;
                    let label = match_label(&reply, labels).map_err(|e| self.failed(e))?;
                    Ok(if passing.iter().any(|p| p == label) {
                        1.0
                    } else {
                        0.0
                    })
                })
                .collect(),
            Kind::Python { code, .. } => code
                .grade_batch(rows)
                .into_iter()
                .map(|r| r.map_err(|e| self.failed(e)))
                .collect(),
            Kind::Multi {
                graders, formula, ..
            } => self.combine(graders, formula, rows, context),
        }
    }

    fn texts(
        &self,
        input: &Template,
        reference: &Template,
        output: &str,
        item: &Map<String, Value>,
    ) -> Result<(String, String)> {
        let render =
            |template: &Template| template.render(output, item).map_err(|e| self.failed(e));
        Ok((render(input)?, render(reference)?))
    }

    fn similarity(
        &self,
        input: &Template,
        reference: &Template,
        metric: SimilarityMetric,
        rows: &[(&str, &Map<String, Value>)],
        context: &GradeContext<'_>,
    ) -> Vec<Result<f64>> {
        let texts: Vec<Result<(String, String)>> = rows
            .iter()
            .map(|(o, item)| self.texts(input, reference, o, item))
            .collect();
        let score: fn(&str, &str) -> f64 = match metric {
            SimilarityMetric::FuzzyMatch => fuzzy_match,
            SimilarityMetric::Bleu => bleu,
            SimilarityMetric::RougeL => rouge_l,
            SimilarityMetric::Cosine => return self.cosine(texts, context),
        };
        texts
            .into_iter()
            .map(|pair| pair.map(|(a, b)| score(&a, &b)))
            .collect()
    }

    /// Embeds the rendered pairs in one call and scores each pair's cosine.
    fn cosine(
        &self,
        texts: Vec<Result<(String, String)>>,
        context: &GradeContext<'_>,
    ) -> Vec<Result<f64>> {
        let Some(encoder) = context.encoder else {
            return texts
                .iter()
                .map(|_| Err(self.failed("the cosine metric needs an encoder (a router bundle)")))
                .collect();
        };
        let flat: Vec<&str> = texts
            .iter()
            .flatten()
            .flat_map(|(a, b)| [a.as_str(), b.as_str()])
            .collect();
        let embeddings = match flat.is_empty() {
            true => Vec::new(),
            false => match encoder.embed_all(&flat, &mut |_| {}) {
                Ok(embeddings) => embeddings,
                Err(e) => {
                    return texts
                        .iter()
                        .map(|_| Err(self.failed(format!("embedding failed: {e}"))))
                        .collect()
                }
            },
        };
        let mut pairs = embeddings.chunks(2);
        texts
            .into_iter()
            .map(|pair| {
                pair?;
                match pairs.next() {
                    Some([a, b]) => Ok(cosine_score(a, b)),
                    _ => Err(self.failed("the encoder returned too few embeddings")),
                }
            })
            .collect()
    }

    fn ask(
        &self,
        judge: &JudgeCall,
        output: &str,
        item: &Map<String, Value>,
        context: &GradeContext<'_>,
    ) -> Result<String> {
        let model = context.judge.ok_or_else(|| {
            self.failed("a model grader needs a judge (the server config: --config)")
        })?;
        let mut messages = Vec::with_capacity(judge.messages.len());
        for (role, template) in &judge.messages {
            let content = template.render(output, item).map_err(|e| self.failed(e))?;
            messages.push(serde_json::json!({"role": role, "content": content}));
        }
        model
            .complete(&judge.model, &messages, &judge.sampling_params)
            .map_err(|e| self.failed(format!("the judge {:?} failed: {e}", judge.model)))
    }

    fn combine(
        &self,
        graders: &[GraderSpec],
        formula: &Formula,
        rows: &[(&str, &Map<String, Value>)],
        context: &GradeContext<'_>,
    ) -> Vec<Result<f64>> {
        let mut per_grader: Vec<std::vec::IntoIter<Result<f64>>> = graders
            .iter()
            .map(|g| g.scores(rows, context).into_iter())
            .collect();
        (0..rows.len())
            .map(|_| {
                // Every sub-grader's result is taken for this row before the first error returns.
                let results: Vec<Result<f64>> = per_grader
                    .iter_mut()
                    .map(|scores| {
                        scores
                            .next()
                            .unwrap_or_else(|| Err(self.failed("a grader gave no result")))
                    })
                    .collect();
                let scores = results.into_iter().collect::<Result<Vec<f64>>>()?;
                let value = formula
                    .evaluate(&scores)
                    .map_err(|e| self.failed(format!("calculate_output: {e}")))?;
                if value.is_finite() {
                    Ok(value)
                } else {
                    Err(self.failed(format!("calculate_output gave {value}")))
                }
            })
            .collect()
    }
}

/// `value` in `range` mapped onto [0, 1].
fn scale(value: f64, (low, high): (f64, f64)) -> f64 {
    (value - low) / (high - low)
}
