//! `model-router label`: prompts × candidate models → graded training data.
//!
//! Every candidate is asked through `router-dispatch` with the server config's deployments (the
//! same retries, timeouts, spillover and cooldowns as live traffic), each answer is graded by an
//! OpenAI-shaped grader, and the canonical JSON lines `train` reads are written with the real cost
//! of every answer (reported usage × catalog prices), its output length and latency.
//!
//! Crash safety: a (prompt, model) pair counts only once its answer, cost, latency and grade (or
//! its error) are committed to the progress file (SQLite, WAL, `synchronous = FULL`). A rerun of
//! the same command skips finished pairs, and the output files are rewritten whole from the
//! progress file at the end of every run, through a temporary file and a rename.

mod ask;
mod output;
mod progress;
mod prompts;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use router_dispatch::Dispatcher;
use router_policy::ModelSpec;
use router_server::ServerConfig;
use router_training::grade::{ChatModel, GradeContext, GraderSpec};
use serde_json::Value;

use ask::Sampling;
use progress::{Answer, AnswerSource, PairResult, Progress};
use prompts::{LabelPrompt, PromptSet};

#[derive(Args)]
pub struct LabelArgs {
    /// JSON lines, one prompt each: a string `prompt` or a `messages` array, optional `reference`,
    /// `task` and any other fields (graders read them as `{{item.FIELD}}`).
    #[arg(long, required_unless_present = "db", conflicts_with = "db")]
    prompts: Option<PathBuf>,
    /// A completions store (a server's `[store] path`, or its `postgres://` URL): each record's
    /// request messages are a prompt, and its answer counts as the answer of the model that gave it.
    #[arg(long, value_name = "PATH|URL")]
    db: Option<String>,
    /// With a PostgreSQL --db: the environment variable holding its password.
    #[arg(long, requires = "db")]
    password_env: Option<String>,
    /// With --db: keep records whose metadata has KEY=VALUE (repeatable, all must match).
    #[arg(long = "filter", value_name = "metadata.KEY=VALUE", requires = "db")]
    filters: Vec<String>,
    /// The server config whose [[models]] and [[deployments]] say where each candidate is served.
    #[arg(long)]
    config: PathBuf,
    /// The candidate models (catalog names, comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    models: Vec<String>,
    /// The grader, as JSON in OpenAI's shape (string_check, text_similarity, score_model,
    /// label_model, python, multi).
    #[arg(long)]
    grader: PathBuf,
    /// Pairs in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Budget in USD of the whole labelling job (all runs on this progress file): no pair is
    /// started that could pass it. Reaching it is not an error (exit 0, with a warning).
    #[arg(long)]
    max_cost: Option<f64>,
    /// `max_tokens` of every candidate request.
    #[arg(long)]
    max_tokens: Option<u32>,
    /// `temperature` of every candidate request.
    #[arg(long)]
    temperature: Option<f64>,
    /// The labels: canonical JSON lines (`prompt`, `task`, `scores`, `costs`) plus `output_tokens`
    /// and `latency_ms` per model.
    #[arg(long)]
    out: PathBuf,
    /// The answers, one JSON line per pair [default: OUT.answers.jsonl].
    #[arg(long)]
    answers: Option<PathBuf>,
    /// The progress file (SQLite) [default: OUT.progress.db].
    #[arg(long)]
    progress: Option<PathBuf>,
    /// Ask again the pairs whose earlier attempt ended in an error (else they stay recorded errors).
    #[arg(long)]
    retry_errors: bool,
    /// Grade every stored answer again with --grader, which may differ from the progress file's:
    /// no model is asked again. Until such a run finishes, the progress file accepts only --regrade.
    #[arg(long)]
    regrade: bool,
}

/// The settings key of the grader in the progress file.
const GRADER_SETTING: &str = "grader (SHA-256 of its JSON)";

/// A prompt ready to send: its routing text (the canonical record's `prompt`) and token estimate.
struct Prepared {
    prompt: LabelPrompt,
    text: String,
    estimated_tokens: usize,
}

/// One pair to finish: ask the model, or grade an answer that is already there.
struct Job {
    prompt: Arc<Prepared>,
    model: usize,
    answer: Option<Answer>,
}

pub fn run(args: LabelArgs) -> Result<()> {
    check_args(&args)?;
    let config = ServerConfig::load(&args.config)?;
    let specs = candidates(&config, &args.models)?;
    let grader = GraderSpec::load(&args.grader)?;
    check_judges(&config, grader.json())?;
    let Inputs {
        prompts: prepared,
        mut skipped,
        duplicates,
    } = read_prompts(&args, config.recent_turns)?;
    let answers_path = args
        .answers
        .clone()
        .unwrap_or_else(|| beside(&args.out, "answers.jsonl"));
    let models: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let settings = settings(&models, &args, &grader);
    let progress = open_progress(&args, &settings)?;
    let done = progress.pairs()?;
    let jobs = plan(
        &prepared,
        &specs,
        &done,
        Redo {
            errors: args.retry_errors,
            grades: args.regrade,
        },
    );
    let spent_before = spent_on_backends(&done);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (dispatcher, judge, encoder) = grading_backends(&config, &grader, runtime.handle())?;
    let total_jobs = jobs.len();
    let engine = Arc::new(Engine {
        dispatcher,
        specs,
        grader,
        judge,
        encoder,
        progress: Mutex::new(progress),
        sampling: Sampling {
            max_tokens: args.max_tokens,
            temperature: args.temperature,
        },
        budget: Mutex::new(Budget {
            limit: args.max_cost,
            spent: spent_before,
            reserved: 0.0,
        }),
        bar: pair_bar(total_jobs),
    });
    let stop = runtime.block_on(run_jobs(engine.clone(), jobs, args.concurrency))?;
    engine.bar.finish_and_clear();
    if args.regrade && stop == Stop::Done {
        lock(&engine.progress).set_setting(GRADER_SETTING, &settings[GRADER_SETTING])?;
    }

    let pairs = lock(&engine.progress).pairs()?;
    let written = write_outputs(&prepared, &models, &pairs, &args.out, &answers_path)?;
    skipped.sort();
    let report = Report {
        engine: &engine,
        prepared: &prepared,
        pairs: &pairs,
        skipped: &skipped,
        duplicates,
        spent_before,
        total_jobs,
        stop,
    };
    report.print(&args, &written, &answers_path);
    check_outcome(stop, &written)
}

/// The checks of the arguments that clap does not make.
fn check_args(args: &LabelArgs) -> Result<()> {
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if let Some(budget) = args.max_cost {
        if !(budget.is_finite() && budget >= 0.0) {
            bail!("--max-cost must be a non-negative number of USD, got {budget}");
        }
    }
    Ok(())
}

/// Opens the progress file after checking that its pairs were made with these `settings`; a
/// `--regrade` run marks it as unfinished until it ends.
fn open_progress(args: &LabelArgs, settings: &BTreeMap<&'static str, String>) -> Result<Progress> {
    let progress_path = args
        .progress
        .clone()
        .unwrap_or_else(|| beside(&args.out, "progress.db"));
    let progress = Progress::open(&progress_path)?;
    progress.check_settings(
        &progress_path,
        settings,
        args.regrade.then_some(GRADER_SETTING),
    )?;
    if args.regrade {
        progress.set_setting(
            GRADER_SETTING,
            &format!("an unfinished --regrade to {}", settings[GRADER_SETTING]),
        )?;
    }
    Ok(progress)
}

/// What the pairs are asked and graded through: the config's dispatcher, and the judge and
/// encoder when the grader needs them.
type Backends = (
    Arc<Dispatcher>,
    Option<Arc<dyn ChatModel>>,
    Option<router_core::Encoder>,
);

/// The dispatcher of the config's deployments, the judge of the grader's model graders (asked
/// through the same dispatcher on `handle`), and the encoder of its cosine metric.
fn grading_backends(
    config: &ServerConfig,
    grader: &GraderSpec,
    handle: &tokio::runtime::Handle,
) -> Result<Backends> {
    let dispatcher = Arc::new(Dispatcher::new(
        config.deployments.clone(),
        config.dispatch.clone(),
    )?);
    let judge: Option<Arc<dyn ChatModel>> = grader.needs_judge().then(|| {
        Arc::new(crate::judge::DispatchJudge::new(
            dispatcher.clone(),
            config.catalog.clone(),
            handle.clone(),
        )) as Arc<dyn ChatModel>
    });
    // The cosine metric embeds with the encoder of the bundle the server routes with.
    let encoder = if grader.needs_encoder() {
        Some(router_core::Router::load(&config.bundle)?.encoder().clone())
    } else {
        None
    };
    Ok((dispatcher, judge, encoder))
}

/// Writes the labels and answers of every prepared prompt from the progress file's `pairs`.
fn write_outputs(
    prepared: &[Arc<Prepared>],
    models: &[String],
    pairs: &HashMap<(String, String), PairResult>,
    out: &Path,
    answers: &Path,
) -> Result<output::Written> {
    let rows: Vec<(&LabelPrompt, &str)> = prepared
        .iter()
        .map(|p| (&p.prompt, p.text.as_str()))
        .collect();
    output::write_outputs(&rows, models, pairs, out, answers)
}

/// The exit status of a run whose outputs are written: an error when Ctrl-C stopped it or when
/// nothing could be labelled.
fn check_outcome(stop: Stop, written: &output::Written) -> Result<()> {
    if let Stop::Interrupted(not_started) = stop {
        bail!("interrupted: {not_started} pair(s) not started; the finished ones are kept and written. Rerun the same command to go on");
    }
    if written.lines == 0 {
        bail!("nothing could be labelled: no prompt has a graded answer from any model (see the errors above)");
    }
    Ok(())
}

/// What the answers asked by this command (not those read from a store) cost, in all runs.
fn spent_on_backends(done: &HashMap<(String, String), PairResult>) -> f64 {
    done.values()
        .filter_map(|r| r.answer.as_ref())
        .filter(|a| a.source == AnswerSource::Backend)
        .map(|a| a.cost_usd)
        .sum()
}

/// `OUT` with `.SUFFIX` appended to its file name.
fn beside(out: &Path, suffix: &str) -> PathBuf {
    let mut name = out
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".{suffix}"));
    out.with_file_name(name)
}

/// The candidates' catalog entries, in the order given; each must have deployments.
fn candidates(config: &ServerConfig, models: &[String]) -> Result<Vec<ModelSpec>> {
    let mut specs: Vec<ModelSpec> = Vec::new();
    for name in models.iter().map(|m| m.trim()).filter(|m| !m.is_empty()) {
        let spec = config.catalog.get(name).ok_or_else(|| {
            let known: Vec<&str> = config
                .catalog
                .models
                .iter()
                .map(|m| m.name.as_str())
                .collect();
            anyhow!(
                "--models: {name:?} is not a [[models]] entry of {} (known: {})",
                config.file,
                known.join(", ")
            )
        })?;
        if spec.deployments.is_empty() {
            bail!(
                "--models: {name:?} has no deployments in {}: nothing to send its requests to",
                config.file
            );
        }
        if specs.iter().any(|s| s.name == name) {
            bail!("--models: {name:?} is named twice");
        }
        specs.push(spec.clone());
    }
    if specs.is_empty() {
        bail!("--models names no model");
    }
    Ok(specs)
}

/// Every judge model the grader names (`model` of a `score_model` or `label_model` grader, in a
/// `multi` too) must be a catalog model with deployments: checked before any candidate is asked,
/// since a grader that cannot grade would leave every paid answer ungraded.
fn check_judges(config: &ServerConfig, grader: &Value) -> Result<()> {
    let judge = matches!(
        grader.get("type").and_then(Value::as_str),
        Some("score_model" | "label_model")
    );
    if let Some(model) = grader
        .get("model")
        .and_then(Value::as_str)
        .filter(|_| judge)
    {
        if config
            .catalog
            .get(model)
            .is_none_or(|spec| spec.deployments.is_empty())
        {
            bail!(
                "the grader's judge {model:?} is not a [[models]] entry with deployments in {}",
                config.file
            );
        }
    }
    if let Some(graders) = grader.get("graders").and_then(Value::as_object) {
        graders
            .values()
            .try_for_each(|inner| check_judges(config, inner))?;
    }
    Ok(())
}

/// What the pairs of a progress file depend on: another value makes them incomparable.
fn settings(
    models: &[String],
    args: &LabelArgs,
    grader: &GraderSpec,
) -> BTreeMap<&'static str, String> {
    let show = |v: Option<String>| v.unwrap_or_else(|| "unset".into());
    BTreeMap::from([
        ("models", models.join(",")),
        (GRADER_SETTING, prompts::json_digest(grader.json())),
        ("max_tokens", show(args.max_tokens.map(|v| v.to_string()))),
        ("temperature", show(args.temperature.map(|v| v.to_string()))),
    ])
}

/// The prompts of a run and what was left out of them.
struct Inputs {
    prompts: Vec<Arc<Prepared>>,
    /// `(line number, why)`; line 0 for a store record.
    skipped: Vec<(usize, String)>,
    /// Repeats of an earlier prompt, labelled once.
    duplicates: usize,
}

/// The prompts of the source, with their routing texts; a prompt the server could not route
/// (analysed as the server analyses a request) joins the skipped lines.
fn read_prompts(args: &LabelArgs, recent_turns: usize) -> Result<Inputs> {
    let set: PromptSet = match (&args.prompts, &args.db) {
        (Some(path), _) => prompts::read_prompt_file(path)?,
        (None, Some(db)) => {
            let metadata = args
                .filters
                .iter()
                .map(|f| crate::store_cli::parse_filter(f))
                .collect::<Result<Vec<_>>>()?;
            let store = crate::store_cli::open_for_reading(db, args.password_env.as_deref())?;
            prompts::read_store(&store, metadata)?
        }
        (None, None) => bail!("give --prompts FILE or --db PATH|URL"),
    };
    let mut skipped = set.skipped;
    let mut prepared = Vec::with_capacity(set.prompts.len());
    for prompt in set.prompts {
        let mut body = serde_json::Map::new();
        body.insert("messages".into(), Value::Array(prompt.messages.clone()));
        match router_server::analyse(&body, recent_turns) {
            Ok(conversation) => prepared.push(Arc::new(Prepared {
                text: conversation.routing_text,
                estimated_tokens: conversation.prompt_tokens,
                prompt,
            })),
            Err(error) => skipped.push((
                origin_line(&prompt.origin),
                format!("{}: {}", prompt.origin, error),
            )),
        }
    }
    Ok(Inputs {
        prompts: prepared,
        skipped,
        duplicates: set.duplicates,
    })
}

/// The line number in an origin `line N` (0 for store records), to sort the skipped lines by.
fn origin_line(origin: &str) -> usize {
    origin
        .strip_prefix("line ")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Which finished pairs a run does again.
#[derive(Debug, Clone, Copy)]
struct Redo {
    /// `--retry-errors`: those that ended in an error.
    errors: bool,
    /// `--regrade`: the grading of every answer.
    grades: bool,
}

/// The pairs still to finish, prompt by prompt: those without a row, with `--retry-errors` those
/// whose row is an error (an answer that the grader failed on is graded again, not re-asked), and
/// with `--regrade` every answer (graded again).
fn plan(
    prepared: &[Arc<Prepared>],
    specs: &[ModelSpec],
    done: &HashMap<(String, String), PairResult>,
    redo: Redo,
) -> Vec<Job> {
    let mut jobs = Vec::new();
    for prompt in prepared {
        for (model, spec) in specs.iter().enumerate() {
            let answer = match done.get(&(prompt.prompt.key.clone(), spec.name.clone())) {
                Some(result) if redo.grades && result.answer.is_some() => result.answer.clone(),
                Some(result) if result.error.is_none() || !redo.errors => continue,
                Some(result) => result.answer.clone(),
                None => prompt
                    .prompt
                    .known
                    .get(&spec.name)
                    .map(|known| ask::known_answer(spec, known, prompt.estimated_tokens)),
            };
            jobs.push(Job {
                prompt: prompt.clone(),
                model,
                answer,
            });
        }
    }
    jobs
}

fn pair_bar(len: usize) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) =
        ProgressStyle::with_template("labelling [{bar:40}] {pos}/{len} pairs, {msg} ({eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message("$0.0000 spent");
    bar
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The spend: what finished pairs cost and what the pairs in flight are expected to cost.
struct Budget {
    limit: Option<f64>,
    spent: f64,
    reserved: f64,
}

impl Budget {
    /// Reserves `expected` USD for a pair about to start, unless that could pass the limit.
    fn reserve(&mut self, expected: f64) -> bool {
        if self
            .limit
            .is_some_and(|limit| self.spent + self.reserved + expected > limit)
        {
            return false;
        }
        self.reserved += expected;
        true
    }

    /// A pair finished: its reservation becomes what it really cost.
    fn settle(&mut self, reserved: f64, cost: f64) {
        self.reserved = (self.reserved - reserved).max(0.0);
        self.spent += cost;
    }
}

/// What every pair task shares.
struct Engine {
    dispatcher: Arc<Dispatcher>,
    specs: Vec<ModelSpec>,
    grader: GraderSpec,
    judge: Option<Arc<dyn ChatModel>>,
    encoder: Option<router_core::Encoder>,
    progress: Mutex<Progress>,
    sampling: Sampling,
    budget: Mutex<Budget>,
    bar: ProgressBar,
}

/// Why a run ended before its last pair: how many pairs were not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Every pair was started.
    Done,
    /// The next pair could have passed `--max-cost`.
    Budget(usize),
    /// Ctrl-C.
    Interrupted(usize),
}

impl Stop {
    fn not_started(self) -> usize {
        match self {
            Stop::Done => 0,
            Stop::Budget(n) | Stop::Interrupted(n) => n,
        }
    }
}

/// Runs `jobs`, at most `concurrency` at once, until done, until the next one could pass the
/// budget, or until Ctrl-C (the pairs in flight finish either way; a second Ctrl-C quits at once).
/// A failure to commit a pair ends the run (the tasks in flight are aborted; their pairs are
/// simply not done).
async fn run_jobs(engine: Arc<Engine>, jobs: Vec<Job>, concurrency: usize) -> Result<Stop> {
    let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let interrupted = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(watch_interrupts(interrupted.clone(), engine.bar.clone()));
    let mut tasks = tokio::task::JoinSet::new();
    let total = jobs.len();
    let mut stop = Stop::Done;
    for (index, job) in jobs.into_iter().enumerate() {
        let permit = semaphore
            .clone()
            .acquire_owned()
            .await
            .context("the pair semaphore closed")?;
        while let Some(finished) = tasks.try_join_next() {
            finished.context("a pair task panicked")??;
        }
        if interrupted.load(Ordering::SeqCst) {
            stop = Stop::Interrupted(total - index);
            break;
        }
        let expected = match job.answer {
            Some(_) => 0.0,
            None => ask::expected_cost(
                &engine.specs[job.model],
                job.prompt.estimated_tokens,
                &engine.sampling,
            ),
        };
        if !lock(&engine.budget).reserve(expected) {
            stop = Stop::Budget(total - index);
            break;
        }
        let engine = engine.clone();
        tasks.spawn(async move {
            let _permit = permit;
            engine.finish_pair(job, expected).await
        });
    }
    while let Some(finished) = tasks.join_next().await {
        finished.context("a pair task panicked")??;
    }
    watcher.abort();
    Ok(stop)
}

/// The first Ctrl-C sets `interrupted` (no new pair starts); the second exits at once, which
/// loses only the pairs in flight: every finished one is already committed.
async fn watch_interrupts(interrupted: Arc<AtomicBool>, bar: ProgressBar) {
    if tokio::signal::ctrl_c().await.is_ok() {
        interrupted.store(true, Ordering::SeqCst);
        bar.suspend(|| {
            eprintln!("interrupted: finishing the pairs in flight (Ctrl-C again to quit now)")
        });
        if tokio::signal::ctrl_c().await.is_ok() {
            std::process::exit(130);
        }
    }
}

impl Engine {
    /// Asks (unless the job has its answer), grades on the blocking pool, commits, and only then
    /// counts the pair.
    async fn finish_pair(self: Arc<Self>, job: Job, reserved: f64) -> Result<()> {
        let spec = &self.specs[job.model];
        let (answer, asked) = match job.answer.clone() {
            Some(answer) => (Ok(answer), false),
            None => {
                let body = self.sampling.body(&spec.name, &job.prompt.prompt.messages);
                (
                    ask::ask(&self.dispatcher, spec, &body, job.prompt.estimated_tokens).await,
                    true,
                )
            }
        };
        let cost = match (&answer, asked) {
            (Ok(answer), true) => answer.cost_usd,
            _ => 0.0,
        };
        let engine = self.clone();
        tokio::task::spawn_blocking(move || engine.grade_and_commit(&job, answer))
            .await
            .context("a grading task panicked")??;
        let spent = {
            let mut budget = lock(&self.budget);
            budget.settle(reserved, cost);
            budget.spent
        };
        self.bar.set_message(format!("${spent:.4} spent"));
        self.bar.inc(1);
        Ok(())
    }

    fn grade_and_commit(&self, job: &Job, answer: Result<Answer, String>) -> Result<()> {
        let result = match answer {
            Err(error) => PairResult {
                answer: None,
                score: None,
                passed: None,
                error: Some(error),
            },
            Ok(answer) => {
                let context = GradeContext {
                    judge: self.judge.as_deref(),
                    encoder: self.encoder.as_ref(),
                };
                match self
                    .grader
                    .grade(&answer.text, &job.prompt.prompt.item, &context)
                {
                    Ok(graded) => PairResult {
                        answer: Some(answer),
                        score: Some(graded.score),
                        passed: graded.passed,
                        error: None,
                    },
                    Err(error) => PairResult {
                        answer: Some(answer),
                        score: None,
                        passed: None,
                        error: Some(format!("grader: {error}")),
                    },
                }
            }
        };
        lock(&self.progress).commit(&job.prompt.prompt.key, &self.specs[job.model].name, &result)
    }
}

/// The summary on stderr at the end of a run.
struct Report<'a> {
    engine: &'a Engine,
    prepared: &'a [Arc<Prepared>],
    pairs: &'a HashMap<(String, String), PairResult>,
    skipped: &'a [(usize, String)],
    duplicates: usize,
    spent_before: f64,
    total_jobs: usize,
    stop: Stop,
}

impl Report<'_> {
    fn print(&self, args: &LabelArgs, written: &output::Written, answers: &Path) {
        const SHOWN: usize = 20;
        let spent = lock(&self.engine.budget).spent;
        let total_pairs = self.prepared.len() * self.engine.specs.len();
        let finished = self
            .prepared
            .iter()
            .flat_map(|p| self.engine.specs.iter().map(move |s| (p, s)))
            .filter(|(p, s)| {
                self.pairs
                    .contains_key(&(p.prompt.key.clone(), s.name.clone()))
            })
            .count();
        eprintln!(
            "labelled {} of {} prompts: {} (answers in {}); pairs finished {finished}/{total_pairs}, {} this run",
            written.lines,
            self.prepared.len(),
            args.out.display(),
            answers.display(),
            self.total_jobs - self.stop.not_started(),
        );
        eprintln!("spend: ${:.6} this run, ${spent:.6} in all (answers asked by this command, usage × catalog prices)", spent - self.spent_before);
        if self.duplicates > 0 {
            eprintln!("{} repeated prompt(s) labelled once", self.duplicates);
        }
        if !self.skipped.is_empty() {
            let shown: Vec<String> = self
                .skipped
                .iter()
                .take(SHOWN)
                .map(|(line, why)| {
                    if *line > 0 && !why.starts_with("line ") {
                        format!("line {line}: {why}")
                    } else {
                        why.clone()
                    }
                })
                .collect();
            let more = self.skipped.len().saturating_sub(SHOWN);
            eprintln!(
                "skipped {} input line(s) or record(s): {}{}",
                self.skipped.len(),
                shown.join("; "),
                if more > 0 {
                    format!("; and {more} more")
                } else {
                    String::new()
                }
            );
        }
        self.print_errors(SHOWN, answers);
        if written.all_failed > 0 {
            eprintln!(
                "{} prompt(s) not written: every model failed on them",
                written.all_failed
            );
        }
        if let Stop::Budget(not_started) = self.stop {
            eprintln!(
                "warning: stopped at --max-cost ${:.6}: {} pair(s) not started; {} prompt(s) not written yet. Rerun with a higher --max-cost to finish",
                args.max_cost.unwrap_or(0.0),
                not_started,
                written.unfinished
            );
        }
    }

    fn print_errors(&self, shown: usize, answers: &Path) {
        let errors: Vec<String> = self
            .prepared
            .iter()
            .flat_map(|p| self.engine.specs.iter().map(move |s| (p, s)))
            .filter_map(|(p, s)| {
                let error = self
                    .pairs
                    .get(&(p.prompt.key.clone(), s.name.clone()))?
                    .error
                    .as_ref()?;
                Some(format!("  {} × {}: {error}", p.prompt.origin, s.name))
            })
            .collect();
        if errors.is_empty() {
            return;
        }
        eprintln!("{} pair(s) ended in an error (not scored; rerun with --retry-errors to try them again; all in {}):", errors.len(), answers.display());
        for line in errors.iter().take(shown) {
            eprintln!("{line}");
        }
        if errors.len() > shown {
            eprintln!("  and {} more", errors.len() - shown);
        }
    }
}
