//! `model-router grade` and `model-router candidate add`: grading outputs against references, and
//! adding an underlying model to a bundle from the graded samples.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use model_router::load_router;
use router_policy::{Capabilities, Capability, ModelSpec};
use router_training::candidate::{self, AddOptions, FitOptions};
use router_training::embed;
use router_training::grade::{
    self, describe_skips, ChatModel, GradeContext, GraderSpec, SimilarityMetric,
    StringCheckOperation,
};
use serde_json::{json, Value};

use crate::judge::DispatchJudge;

use super::print_line;

#[derive(Args)]
pub struct GradeArgs {
    /// JSON lines: objects with the candidate `output` (the grader's `{{sample.output_text}}`);
    /// the whole object is the grader's `{{item}}`, and every field is passed through to --out.
    #[arg(long)]
    input: PathBuf,
    /// A grader in OpenAI's JSON shape: a file (`grader.json`) or the JSON itself; or the short
    /// forms `string_check` (with --operation) and `text_similarity` (with --metric), which
    /// compare the output with the `reference` field.
    #[arg(long)]
    grader: String,
    /// string_check: eq, ne, like (output contains reference) or ilike (ignoring case).
    #[arg(long)]
    operation: Option<String>,
    /// text_similarity: fuzzy_match, bleu, rouge_l or cosine (cosine needs --model).
    #[arg(long)]
    metric: Option<String>,
    /// Bundle whose encoder embeds both texts for the cosine metric (directory or hub id).
    #[arg(long)]
    model: Option<String>,
    /// Pass threshold of the short forms: a row passes when its score is at least this
    /// (string_check: 1 by default). A JSON grader carries its own `pass_threshold`.
    #[arg(long)]
    threshold: Option<f64>,
    /// The server config (`model-router.toml`) whose deployments and catalog serve the judge
    /// models of `score_model` and `label_model` graders.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Rows graded at once by model graders (requests to the judge in flight).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Write every graded row here, with `score` (and `passed`) added.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The field holding the candidate output.
    #[arg(long, default_value = "output")]
    output_field: String,
    /// The field holding the reference (short forms only; a JSON grader names its fields).
    #[arg(long, default_value = "reference")]
    reference_field: String,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum CandidateCommand {
    /// Add an underlying model to a bundle from graded samples, without retraining: writes a new
    /// bundle version with one more head column.
    Add(CandidateAddArgs),
}

#[derive(Args)]
pub struct CandidateAddArgs {
    /// The bundle to extend (a directory or hub id); it is not modified.
    #[arg(long)]
    model: String,
    /// The new model's name (its column and catalog entry).
    #[arg(long)]
    name: String,
    /// JSON lines with a `prompt` and the new model's `score` in [0, 1] (`grade --out` writes them).
    #[arg(long)]
    samples: PathBuf,
    /// Output directory of the new bundle version.
    #[arg(long)]
    out: PathBuf,
    /// USD per 1M input tokens (for the bundle's catalog.toml).
    #[arg(long)]
    input_price: Option<f64>,
    /// USD per 1M output tokens.
    #[arg(long)]
    output_price: Option<f64>,
    /// Context window in tokens.
    #[arg(long)]
    context_window: Option<u64>,
    /// Output tokens assumed per answer when ranking by cost.
    #[arg(long)]
    expected_output_tokens: Option<u32>,
    /// Capabilities: tools, vision, json_schema, reasoning (comma-separated).
    #[arg(long, value_delimiter = ',')]
    capabilities: Vec<String>,
    /// Deployments that serve the model (comma-separated; used by `serve`).
    #[arg(long, value_delimiter = ',')]
    deployments: Vec<String>,
    /// The new version (default: today's date, or the old version with `.N` counted up).
    #[arg(long)]
    version: Option<String>,
    /// Seed of the cross-validation folds.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Print the fit as one JSON object.
    #[arg(long)]
    json: bool,
}

/// The grader of the short forms (`string_check --operation`, `text_similarity --metric`) as the
/// JSON grader they stand for.
fn short_form(args: &GradeArgs) -> Result<Value> {
    let fields = json!({"input": "{{sample.output_text}}", "reference": format!("{{{{item.{}}}}}", args.reference_field)});
    let mut grader = match args.grader.as_str() {
        "string_check" => {
            if args.metric.is_some() {
                bail!("--metric is for text_similarity; string_check takes --operation");
            }
            let operation: StringCheckOperation = args
                .operation
                .as_deref()
                .context("string_check needs --operation eq|ne|like|ilike")?
                .parse()?;
            json!({"type": "string_check", "name": "string_check", "operation": operation.name()})
        }
        _ => {
            if args.operation.is_some() {
                bail!("--operation is for string_check; text_similarity takes --metric");
            }
            let metric: SimilarityMetric = args
                .metric
                .as_deref()
                .context("text_similarity needs --metric fuzzy_match|bleu|rouge_l|cosine")?
                .parse()?;
            json!({"type": "text_similarity", "name": "text_similarity", "evaluation_metric": metric.name()})
        }
    };
    if let (Some(object), Some(more)) = (grader.as_object_mut(), fields.as_object()) {
        object.extend(more.clone());
    }
    match args.threshold {
        Some(t) if !(0.0..=1.0).contains(&t) => bail!("the pass threshold {t} is not in [0, 1]"),
        Some(t) if args.grader == "string_check" && t != 1.0 => {
            bail!("string_check passes at 1; a threshold of {t} is not meaningful")
        }
        Some(t) if args.grader == "text_similarity" => grader["pass_threshold"] = json!(t),
        _ => {}
    }
    Ok(grader)
}

/// The grader `--grader` names: a short form, inline JSON or a JSON file.
fn grader_spec(args: &GradeArgs) -> Result<GraderSpec> {
    if matches!(args.grader.as_str(), "string_check" | "text_similarity") {
        return Ok(GraderSpec::from_json(&short_form(args)?)?);
    }
    if args.operation.is_some() || args.metric.is_some() || args.threshold.is_some() {
        bail!("--operation, --metric and --threshold go with --grader string_check or text_similarity; a JSON grader carries its own fields");
    }
    if args.grader.trim_start().starts_with('{') {
        let value: Value = serde_json::from_str(&args.grader)
            .context("--grader: the inline grader is not JSON")?;
        return Ok(GraderSpec::from_json(&value)?);
    }
    let path = Path::new(&args.grader);
    if !path.is_file() {
        bail!("--grader takes string_check, text_similarity, a grader JSON file or inline JSON; {:?} is none of them", args.grader);
    }
    Ok(GraderSpec::load(path)?)
}

/// The judge of the spec's model graders with the runtime its requests run on (graders block on
/// them from rayon's threads); none when the spec asks no model.
fn judge(
    spec: &GraderSpec,
    config: Option<&Path>,
) -> Result<Option<(tokio::runtime::Runtime, DispatchJudge)>> {
    if !spec.needs_judge() {
        return Ok(None);
    }
    let config = config.with_context(|| {
        format!("the grader {:?} asks a judge model: give --config model-router.toml (its deployments and catalog)", spec.name())
    })?;
    let runtime = tokio::runtime::Runtime::new().context("starting the judge's runtime")?;
    let judge = DispatchJudge::from_config(config, runtime.handle().clone())?;
    judge
        .check_models(spec.judge_models())
        .with_context(|| config.display().to_string())?;
    Ok(Some((runtime, judge)))
}

pub fn grade(args: GradeArgs) -> Result<()> {
    let spec = grader_spec(&args)?;
    let encoder = match (spec.needs_encoder(), args.model.as_deref()) {
        (true, Some(model)) => Some(load_router(Some(model))?.encoder().clone()),
        (true, None) => {
            bail!("the cosine metric needs --model (a bundle whose encoder embeds the texts)")
        }
        (false, _) => None,
    };
    if spec.runs_python() && !grade::python::network_isolated() {
        eprintln!("note: `unshare -rn` is not available here: the python grader runs without a network namespace");
    }
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let judge = judge(&spec, args.config.as_deref())?;
    let context = GradeContext {
        judge: judge.as_ref().map(|(_, j)| j as &dyn ChatModel),
        encoder: encoder.as_ref(),
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.concurrency)
        .build()?;
    let bar = embed::progress_bar(0, "grading");
    let summary = pool.install(|| {
        grade::grade_jsonl(
            &spec,
            &context,
            &args.input,
            &args.output_field,
            args.out.as_deref(),
            &mut |done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            },
        )
    })?;
    bar.finish_and_clear();
    if args.json {
        print_line(serde_json::to_string(&summary)?)?;
    } else {
        print_line(&summary)?;
    }
    if summary.graded == 0 {
        let why = match (summary.skipped.len(), summary.failed.len()) {
            (0, 0) => "it has no rows".to_owned(),
            (skipped, failed) => format!("{skipped} row(s) skipped, {failed} failed to grade"),
        };
        bail!("no row of {} was graded: {why}", args.input.display());
    }
    if let Some(out) = &args.out {
        eprintln!(
            "wrote {} graded row(s) to {}",
            summary.graded,
            out.display()
        );
    }
    Ok(())
}

fn capabilities(names: &[String]) -> Result<Capabilities> {
    names.iter().filter(|n| !n.trim().is_empty()).try_fold(Capabilities::default(), |set, name| {
        let capability = Capability::ALL
            .into_iter()
            .find(|c| c.as_str() == name.trim())
            .with_context(|| format!("unknown capability {name:?}; expected tools, vision, json_schema or reasoning"))?;
        Ok(set.with(capability))
    })
}

pub fn candidate_add(args: CandidateAddArgs) -> Result<()> {
    let router = load_router(Some(&args.model))?;
    let bundle = router.dir().to_path_buf();
    let has_catalog = bundle.join(model_router::CATALOG_FILE).is_file();
    let entry = match (args.input_price, args.output_price, args.context_window) {
        (Some(input), Some(output), Some(window)) => {
            let mut spec = ModelSpec::new(args.name.clone(), input, output, window)
                .capabilities(capabilities(&args.capabilities)?)
                .deployments(args.deployments.iter().filter(|d| !d.trim().is_empty()).cloned());
            if let Some(tokens) = args.expected_output_tokens {
                spec = spec.expected_output_tokens(tokens);
            }
            Some(spec)
        }
        (None, None, None) if !has_catalog => None,
        _ if !has_catalog => bail!("{} has no catalog.toml: leave out the prices", bundle.display()),
        _ => bail!(
            "the bundle's catalog.toml needs an entry for {:?}: give --input-price, --output-price and --context-window",
            args.name
        ),
    };
    let (samples, skipped) = candidate::read_samples(&args.samples)?;
    if let Some(skips) = describe_skips(&skipped, 10) {
        eprintln!("{}: {skips}", args.samples.display());
    }
    if samples.is_empty() {
        bail!(
            "{}: no usable samples (each line needs a string \"prompt\" and a \"score\" in [0, 1])",
            args.samples.display()
        );
    }
    let mut options = AddOptions::new(args.name.clone());
    options.catalog_entry = entry;
    options.version = args.version;
    options.fit = FitOptions {
        seed: args.seed,
        ..FitOptions::default()
    };
    options.samples_source = args
        .samples
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let outcome = candidate::add_candidate(&bundle, &samples, &options, &args.out)?;
    let fit = &outcome.fit;
    if args.json {
        let report = serde_json::json!({
            "model": args.name, "version": outcome.version, "previous_version": outcome.previous_version,
            "out": args.out, "skipped": skipped, "fit": fit,
        });
        print_line(serde_json::to_string(&report)?)?;
    } else {
        let cv = match (
            fit.cv_log_loss,
            fit.cv_log_loss_prior,
            fit.cv_log_loss_constant,
        ) {
            (Some(a), Some(b), Some(c)) => {
                format!("cross-validated log loss {a:.4} (prior alone {b:.4}, constant {c:.4})")
            }
            _ => "too few samples to cross-validate: the strongest regularisation".to_string(),
        };
        print_line(format!(
            "added {} from {} samples (mean score {:.4}): λ = {:.3e} by {}; {cv}\nbundle version {} (was {}) written to {}",
            args.name,
            fit.samples,
            fit.mean_score,
            fit.lambda,
            fit.lambda_rule,
            outcome.version,
            outcome.previous_version,
            args.out.display()
        ))?;
    }
    Ok(())
}
