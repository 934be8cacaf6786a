//! The `model-router` command line.

mod bench;
mod capacity;
mod grading;
mod judge;
mod label;
mod llm;
mod store_cli;

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use model_router::{load_catalog, load_router};
use router_embed::{RouteInput, Routing};
use router_policy::{Mode, PolicyDefaults};
use router_training::data::{self, Dataset, Format};
use router_training::embed::{self, BertSource};
use router_training::eval::{self, EvalInput};
use router_training::train::{self, EncoderChoice, TrainOptions};
use router_training::{baselines, Result as TrainingResult};

// The allocator matters for latency: glibc returns large buffers to the OS and the kernel
// re-zeroes them on every forward pass (DESIGN.md, performance notes).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "model-router",
    version,
    about = "Route each LLM request to the cheapest model that is good enough for it."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Predict every model's quality on a prompt and choose one.
    Route(RouteArgs),
    /// Print a prompt's embedding.
    Embed(EmbedArgs),
    /// Dataset tools.
    #[command(subcommand)]
    Data(DataCommand),
    /// Train a router head and write a bundle.
    Train(TrainArgs),
    /// Evaluate a bundle on a dataset.
    Eval(EvalArgs),
    /// Cross-validate training on a dataset: one head per fold, every prompt evaluated out of fold.
    Cv(CvArgs),
    /// Derive a static token table from a BERT encoder (Model2Vec-style).
    Distill(DistillArgs),
    /// Measure routing latency and throughput against the tokenizer, stock BERT and raw matmuls.
    Bench(bench::BenchArgs),
    /// Serve the OpenAI-compatible router endpoint (`serve --config FILE`).
    Serve(ServeArgs),
    /// Stored completions: `store export` writes a fine-tuning JSONL from a server's database.
    #[command(subcommand)]
    Store(store_cli::StoreCommand),
    /// Size provisioned throughput per deployment from the usage a server recorded: tokens per
    /// minute (p50 … max, by hour), and the monthly cost of each size with spillover.
    Capacity(capacity::CapacityArgs),
    /// Recorded usage: `usage export` writes it as JSON lines (what `capacity --usage` reads).
    #[command(subcommand)]
    Usage(capacity::UsageCommand),
    /// Grade outputs against references (OpenAI's string_check and text_similarity graders).
    Grade(grading::GradeArgs),
    /// Add an underlying model to a bundle from graded samples.
    #[command(subcommand)]
    Candidate(grading::CandidateCommand),
    /// Ask candidate models through the server config's deployments, grade every answer and
    /// write the training data `train` reads (resumable: `--progress`).
    Label(label::LabelArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Server config (TOML): [server], [router], [dispatch], [store], [[models]], [[deployments]].
    #[arg(long)]
    config: PathBuf,
}

#[derive(Args)]
struct RouteArgs {
    /// Bundle directory or hub repo id (`ID[@REVISION]`); the shipped default when absent.
    #[arg(long)]
    model: Option<String>,
    /// Catalog TOML (prices, context windows, capabilities); the bundle's catalog.toml when absent.
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// Routing mode.
    #[arg(long, default_value = "balanced")]
    mode: Mode,
    /// A custom quality band (fraction of the best prediction), overriding the mode's.
    #[arg(long)]
    band: Option<f64>,
    /// Only consider these models (comma-separated).
    #[arg(long, value_delimiter = ',')]
    subset: Option<Vec<String>>,
    /// The request's max_tokens (for the context window and the cost).
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Print the decision as one JSON object.
    #[arg(long)]
    json: bool,
    /// Read prompts from stdin, one per line (a JSON string or an object with a "prompt" field),
    /// and print one JSON decision per line.
    #[arg(long, conflicts_with = "prompt")]
    jsonl: bool,
    /// The prompt; read from stdin when absent.
    prompt: Option<String>,
}

#[derive(Args)]
struct EmbedArgs {
    /// Bundle directory or hub repo id; the shipped default when absent.
    #[arg(long)]
    model: Option<String>,
    /// Print `{"embedding": [...]}`.
    #[arg(long)]
    json: bool,
    /// The text; read from stdin when absent.
    text: Option<String>,
}

#[derive(Subcommand)]
enum DataCommand {
    /// Convert a dataset to canonical JSONL (prompt, task, scores, costs).
    Import(ImportArgs),
}

#[derive(Args)]
struct DataArgs {
    /// Input files.
    #[arg(long = "data", required = true, num_args = 1..)]
    data: Vec<PathBuf>,
    /// Input format: routerbench, routerdc, llmrouter, routellm or jsonl (guessed from the file
    /// name when absent).
    #[arg(long)]
    format: Option<Format>,
    /// Price list (model -> input_price, output_price in USD per 1M tokens) for data without costs.
    #[arg(long)]
    prices: Option<PathBuf>,
    /// Use only these models (comma-separated).
    #[arg(long, value_delimiter = ',')]
    models: Option<Vec<String>>,
    /// Rename a model of the data: OLD=NEW (repeatable).
    #[arg(long)]
    rename: Vec<String>,
    /// Several families of data in one run: each --data file's format is guessed from its name
    /// (unless --format is given) and a record keeps the models it has scores for; training masks
    /// the missing scores, `cv` reports each family on its own models.
    #[arg(long)]
    families: bool,
}

#[derive(Args)]
struct ImportArgs {
    /// Input format.
    #[arg(long)]
    format: Format,
    /// Price list for data without costs.
    #[arg(long)]
    prices: Option<PathBuf>,
    /// Output JSONL file.
    #[arg(long)]
    out: PathBuf,
    /// Input files.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
}

/// How a head is trained: shared by `train` and `cv`.
#[derive(Args)]
struct HeadArgs {
    /// `static[:DIM]` (a table derived from all-MiniLM-L6-v2) or `bert[:DIR|HUB_ID[@REV]]`.
    #[arg(long, default_value = "static")]
    encoder: String,
    /// Catalog whose prices rank the report's choices (`train` also ships it with the bundle);
    /// without it the data's own costs (or `--prices`) rank them.
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// Seed of the splits, the initialisation and the batch order.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Share of the training side held out for early stopping.
    #[arg(long, default_value_t = 0.15)]
    early_stop_fraction: f64,
    /// Hidden layer widths of the head (comma-separated; `""` for a linear head).
    #[arg(long, value_parser = parse_hidden, default_value = "256")]
    hidden: Hidden,
    /// Maximum epochs.
    #[arg(long, default_value_t = 200)]
    epochs: usize,
    /// Tokens kept per prompt (the end of longer prompts is kept).
    #[arg(long, default_value_t = 256)]
    max_seq_length: usize,
    /// Shrink each training target towards its task's mean scores by this fraction (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    task_shrinkage: f64,
    /// Fit no output-length head even when the data has output lengths (costs then charge the
    /// catalog's expected_output_tokens).
    #[arg(long)]
    no_length_head: bool,
    /// Fit a task gate: a task recogniser and, per task, how far the head's scores are blended
    /// towards the task's training means, chosen by an inner cross-validation of the training side.
    #[arg(long)]
    task_gate: bool,
}

/// Hidden layer widths (a named type: clap treats a bare `Vec` as a repeated argument).
#[derive(Clone)]
struct Hidden(Vec<usize>);

fn parse_hidden(text: &str) -> Result<Hidden, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Hidden(Vec::new()));
    }
    text.split(',')
        .map(|w| w.trim().parse::<usize>().map_err(|e| format!("{w:?}: {e}")))
        .collect::<Result<_, _>>()
        .map(Hidden)
}

impl HeadArgs {
    fn options(self, data: &DataArgs) -> Result<TrainOptions> {
        Ok(TrainOptions {
            encoder: parse_encoder(&self.encoder)?,
            hidden: self.hidden.0,
            max_seq_length: self.max_seq_length,
            seed: self.seed,
            early_stop_fraction: self.early_stop_fraction,
            max_epochs: self.epochs,
            task_shrinkage: self.task_shrinkage,
            length_head: !self.no_length_head,
            task_gate: self.task_gate,
            data: data
                .data
                .iter()
                .map(|p| {
                    p.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                })
                .collect(),
            catalog: self.catalog,
            ..TrainOptions::default()
        })
    }
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    head: HeadArgs,
    /// Output bundle directory.
    #[arg(long)]
    out: PathBuf,
    /// Bundle name (default: the output directory's name).
    #[arg(long)]
    name: Option<String>,
    /// Bundle version (a date; today's, in UTC, when absent).
    #[arg(long)]
    version: Option<String>,
    /// Share held out for validation (never seen by training; 0 trains on everything).
    #[arg(long, default_value_t = 0.15)]
    val_fraction: f64,
    /// Print the validation report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct CvArgs {
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    head: HeadArgs,
    /// Number of folds.
    #[arg(long, default_value_t = 5)]
    folds: usize,
    /// Print exactly one JSON object (the shape `eval --json` prints).
    #[arg(long)]
    json: bool,
    /// Write the cost–quality plot (SVG).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Write every prompt's out-of-fold predictions as JSON lines: the canonical record plus
    /// `fold` and `predicted` (model → predicted quality).
    #[arg(long)]
    predictions: Option<PathBuf>,
}

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Bundle directory or hub repo id; the shipped default when absent.
    #[arg(long)]
    model: Option<String>,
    /// Catalog whose prices rank the choices; the bundle's catalog.toml when absent.
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// Evaluate on `all` the data, or on the `val` / `train` side of the split that `train` makes
    /// with the same seed and fraction.
    #[arg(long, default_value = "all")]
    split: String,
    /// Seed of the split (as given to `train`).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Validation share of the split (as given to `train`).
    #[arg(long, default_value_t = 0.15)]
    val_fraction: f64,
    /// Print exactly one JSON object.
    #[arg(long)]
    json: bool,
    /// Write the cost–quality plot (SVG).
    #[arg(long)]
    plot: Option<PathBuf>,
}

#[derive(Args)]
struct DistillArgs {
    /// The BERT encoder: a directory or `HUB_ID[@REV]`.
    #[arg(long, default_value = "sentence-transformers/all-MiniLM-L6-v2")]
    from: String,
    /// Table dimension (PCA).
    #[arg(long, default_value_t = 256)]
    dim: usize,
    /// Output directory (encoder.safetensors + tokenizer.json).
    #[arg(long)]
    out: PathBuf,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Route(args) => route(args),
        Command::Embed(args) => embed_command(args),
        Command::Data(DataCommand::Import(args)) => import(args),
        Command::Train(args) => train_command(args),
        Command::Eval(args) => eval_command(args),
        Command::Cv(args) => cv_command(args),
        Command::Distill(args) => distill(args),
        Command::Bench(args) => bench::run(args),
        Command::Store(command) => store_cli::run(command),
        Command::Capacity(args) => capacity::run(args),
        Command::Usage(command) => capacity::run_usage(command),
        Command::Grade(args) => grading::grade(args),
        Command::Candidate(grading::CandidateCommand::Add(args)) => grading::candidate_add(args),
        Command::Label(args) => label::run(args),
        Command::Serve(args) => router_server::ServerConfig::load(&args.config)
            .and_then(router_server::run_blocking)
            .map_err(anyhow::Error::from),
    };
    if let Err(error) = result {
        if is_broken_pipe(&error) {
            // The reader went away (`model-router route --jsonl < prompts | head`): not a failure.
            std::process::exit(0);
        }
        eprintln!("error: {}", error_message(&error));
        std::process::exit(1);
    }
}

/// Whether writing to stdout failed because its reader closed the pipe.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Writes `text` and a newline to stdout. Unlike `println!`, which panics, a closed pipe is an
/// error that `main` handles.
fn print_line(text: impl std::fmt::Display) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")?;
    stdout.flush()?;
    Ok(())
}

/// The error and its causes, joined with ": ", leaving out a cause whose text the message already
/// ends with: our error types print their source themselves (`{path}: {source}`), so anyhow's
/// `{:#}` alone would repeat it ("x.toml: No such file: No such file").
fn error_message(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if message.ends_with(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

fn read_stdin() -> Result<String> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("reading stdin")?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

fn route(args: RouteArgs) -> Result<()> {
    let router = load_router(args.model.as_deref())?;
    let catalog = load_catalog(&router, args.catalog.as_deref())?;
    // One way to route: the same `Routing` an embedder or the Python package uses.
    let routing = Routing::from_parts(router, catalog, PolicyDefaults::new(args.mode))?;
    let input = |prompt: String| {
        let mut input = RouteInput::prompt(prompt);
        input.max_tokens = args.max_tokens;
        input.band = args.band;
        input.subset = args.subset.clone();
        input
    };
    if args.jsonl {
        return route_jsonl(&routing, &input);
    }
    let prompt = match args.prompt {
        Some(prompt) => prompt,
        None => read_stdin()?,
    };
    let decision = routing.route(&input(prompt))?;
    if args.json {
        print_line(serde_json::to_string(&decision)?)?;
    } else {
        // The table's Display ends every row, the last included, with a newline.
        print_line(decision.to_string().trim_end_matches('\n'))?;
    }
    Ok(())
}

/// Batch routing: prompts are scored in batches, and a bad line prints an error object in its
/// place instead of stopping the run.
fn route_jsonl(routing: &Routing, input: &dyn Fn(String) -> RouteInput) -> Result<()> {
    const BATCH: usize = 64;
    let stdin = std::io::stdin();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut lines = stdin.lock().lines().enumerate().peekable();
    let mut failed = 0usize;
    while lines.peek().is_some() {
        let chunk: Vec<(usize, std::io::Result<String>)> = lines.by_ref().take(BATCH).collect();
        let parsed: Vec<Result<String>> = chunk
            .into_iter()
            .map(|(number, line)| {
                let line = line.with_context(|| format!("line {}", number + 1))?;
                prompt_of_line(&line).with_context(|| format!("line {}", number + 1))
            })
            .collect();
        let inputs: Vec<RouteInput> = parsed
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .map(|p| input(p.clone()))
            .collect();
        let mut decisions = routing.route_batch(&inputs)?.into_iter();
        for item in &parsed {
            let decided = match item {
                Ok(_) => decisions
                    .next()
                    .ok_or_else(|| anyhow!("the router returned too few rows"))?
                    .map_err(anyhow::Error::from),
                Err(error) => Err(anyhow!(error_message(error))),
            };
            let line = match decided {
                Ok(decision) => serde_json::to_string(&decision)?,
                Err(error) => {
                    failed += 1;
                    serde_json::json!({ "error": error.to_string() }).to_string()
                }
            };
            writeln!(out, "{line}")?;
        }
    }
    out.flush()?;
    if failed > 0 {
        eprintln!("{failed} line(s) could not be routed; see their \"error\" objects");
    }
    Ok(())
}

fn prompt_of_line(line: &str) -> Result<String> {
    match serde_json::from_str::<serde_json::Value>(line).context("not JSON")? {
        serde_json::Value::String(prompt) => Ok(prompt),
        serde_json::Value::Object(object) => match object.get("prompt") {
            Some(serde_json::Value::String(prompt)) => Ok(prompt.clone()),
            _ => bail!("an object line needs a string \"prompt\" field"),
        },
        _ => bail!("expected a JSON string or an object with a \"prompt\" field"),
    }
}

fn embed_command(args: EmbedArgs) -> Result<()> {
    let text = match args.text {
        Some(text) => text,
        None => read_stdin()?,
    };
    let embedding = match args.model.as_deref() {
        // A plain BERT model directory (config.json, no router.json) embeds too.
        Some(dir)
            if Path::new(dir).join("config.json").is_file()
                && !Path::new(dir).join("router.json").exists() =>
        {
            let bert = BertSource::Dir(dir.into()).load(256, router_core::Truncation::Right)?;
            bert.embed_batch(&[&text])?
                .pop()
                .ok_or_else(|| anyhow!("the encoder returned no row"))?
        }
        model => load_router(model)?.embed(&text)?,
    };
    if args.json {
        print_line(serde_json::json!({ "embedding": embedding }))?;
    } else {
        print_line(
            embedding
                .iter()
                .map(|v| format!("{v:.6}"))
                .collect::<Vec<_>>()
                .join(" "),
        )?;
    }
    Ok(())
}

fn import(args: ImportArgs) -> Result<()> {
    let dataset = data::load(args.format, &args.inputs, args.prices.as_deref())?;
    data::write_jsonl(&dataset.records, &args.out)?;
    report_skips(&dataset);
    eprintln!(
        "wrote {} records to {}",
        dataset.records.len(),
        args.out.display()
    );
    Ok(())
}

fn report_skips(dataset: &Dataset) {
    if dataset.skipped > 0 {
        let reasons: Vec<String> = dataset
            .skip_reasons
            .iter()
            .map(|(reason, n)| format!("{n} {reason}"))
            .collect();
        eprintln!("skipped {} row(s): {}", dataset.skipped, reasons.join(", "));
    }
}

fn guess_format(path: &Path) -> Result<Format> {
    let name = path.to_string_lossy().to_lowercase();
    Ok(if name.ends_with(".jsonl") {
        Format::Jsonl
    } else if name.contains("routerbench") {
        Format::Routerbench
    } else if name.contains("llmrouter") {
        Format::Llmrouter
    } else if name.contains("routerdc") {
        Format::Routerdc
    } else {
        bail!(
            "cannot tell the format of {}; pass --format",
            path.display()
        )
    })
}

fn load_data(args: &DataArgs) -> Result<(Dataset, Vec<String>)> {
    let mut dataset = if args.families {
        let inputs = args
            .data
            .iter()
            .map(|path| {
                Ok((
                    args.format.map_or_else(|| guess_format(path), Ok)?,
                    path.clone(),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        data::load_files(&inputs, args.prices.as_deref(), data::MissingScores::Keep)?
    } else {
        let format = match args.format {
            Some(format) => format,
            None => guess_format(&args.data[0])?,
        };
        data::load(format, &args.data, args.prices.as_deref())?
    };
    if !args.rename.is_empty() {
        let renames = args
            .rename
            .iter()
            .map(|pair| {
                pair.split_once('=')
                    .map(|(old, new)| (old.to_string(), new.to_string()))
                    .ok_or_else(|| anyhow!("--rename takes OLD=NEW, got {pair:?}"))
            })
            .collect::<Result<Vec<_>>>()?;
        dataset = data::rename_models(dataset, &renames)?;
    }
    if let Some(models) = &args.models {
        dataset = data::select_models(dataset, models)?;
    }
    report_skips(&dataset);
    let models = match &args.models {
        Some(models) => models.clone(),
        None => dataset.models(),
    };
    Ok((dataset, models))
}

fn parse_encoder(text: &str) -> Result<EncoderChoice> {
    let (kind, rest) = text.split_once(':').unwrap_or((text, ""));
    match kind {
        "static" => {
            let dim = if rest.is_empty() {
                256
            } else {
                rest.parse()
                    .with_context(|| format!("static dimension {rest:?}"))?
            };
            Ok(EncoderChoice::Static {
                dim,
                teacher: BertSource::minilm(),
            })
        }
        "bert" if rest.is_empty() => Ok(EncoderChoice::Bert(BertSource::minilm())),
        "bert" => Ok(EncoderChoice::Bert(BertSource::parse(rest))),
        _ => bail!("--encoder takes static[:DIM] or bert[:DIR|HUB_ID], got {text:?}"),
    }
}

fn train_command(args: TrainArgs) -> Result<()> {
    let (dataset, models) = load_data(&args.data)?;
    let name = args
        .name
        .clone()
        .or_else(|| {
            args.out
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "router".into());
    if let Some(note) = ranking_note(&dataset, &args.data, &args.head) {
        eprintln!("note: {note}; the bundle ships no catalog.toml, so route it with --catalog");
    }
    let options = TrainOptions {
        name,
        version: args.version.unwrap_or_else(train::today),
        val_fraction: args.val_fraction,
        command: Some(command_line()),
        ..args.head.options(&args.data)?
    };
    let outcome = train::train(dataset.records, &models, &options, &args.out)?;
    eprintln!(
        "trained {} epochs (best early-stopping loss {:.4}); bundle written to {}",
        outcome.epochs,
        outcome.best_loss,
        args.out.display()
    );
    if let Some(report) = &outcome.output_length {
        eprintln!("{report}");
    }
    if let Some(report) = &outcome.task_gate {
        eprint!("{report}");
    }
    if let Some(validation) = &outcome.validation {
        if args.json {
            print_line(serde_json::to_string(&validation.report)?)?;
        } else {
            print_line(&validation.report)?;
        }
    }
    Ok(())
}

fn eval_command(args: EvalArgs) -> Result<()> {
    if args.data.families {
        bail!("eval judges one family of data at a time (every record scoring every model): run it on each family's files");
    }
    let router = load_router(args.model.as_deref())?;
    let catalog = match load_catalog(&router, args.catalog.as_deref()) {
        Ok(catalog) => Some(catalog),
        // Without a catalog the data's own costs rank the choices; say so rather than fail.
        Err(_) if args.catalog.is_none() => {
            eprintln!(
                "note: no catalog.toml in the bundle; choices are ranked by the data's costs"
            );
            None
        }
        Err(error) => return Err(error.into()),
    };
    let (dataset, data_models) = load_data(&args.data)?;
    let skipped = dataset.skipped;
    let models: Vec<String> = match &args.data.models {
        Some(models) => models.clone(),
        None => data_models,
    };
    let columns: Vec<usize> = models
        .iter()
        .map(|m| router.models().iter().position(|c| c == m).ok_or_else(|| anyhow!("the bundle does not predict model {m:?} of the data (use --rename or --models)")))
        .collect::<Result<_>>()?;
    let records = match args.split.as_str() {
        "all" => dataset.records,
        "val" => data::split(dataset.records, args.val_fraction, args.seed)?.1,
        "train" => data::split(dataset.records, args.val_fraction, args.seed)?.0,
        other => bail!("--split takes all, val or train, got {other:?}"),
    };
    let fingerprint = embed::encoder_fingerprint(router.config(), router.encoder());
    let prompts: Vec<&str> = records.iter().map(|r| r.prompt.as_str()).collect();
    let embeddings =
        embed::embed_cached(router.encoder(), fingerprint, &prompts, &embed::cache_dir())?;
    // Routing costs charge each model the output length the bundle predicts, as `route` does.
    let output_tokens: Option<Vec<Vec<f32>>> =
        router.output_tokens_embeddings(&embeddings)?.map(|rows| {
            rows.into_iter()
                .map(|row| columns.iter().map(|&c| row[c]).collect())
                .collect()
        });
    let test = train::test_matrix(
        &records,
        &models,
        catalog.as_ref(),
        output_tokens.as_deref(),
    )?;
    let predictions: Vec<Vec<f32>> = router
        .score_embeddings(&embeddings)?
        .into_iter()
        .map(|row| columns.iter().map(|&c| row[c]).collect())
        .collect();
    let tasks: Vec<&str> = records.iter().map(|r| r.task.as_str()).collect();
    let (knn, task_best) = out_of_fold_baselines(&records, &embeddings, &test, &tasks, args.seed)?;
    let evaluation = eval::evaluate(&EvalInput {
        test: &test,
        skipped,
        predictions: &predictions,
        knn_predictions: &knn,
        tasks: &tasks,
        task_best: &task_best,
        seed: args.seed,
    })?;
    if let Some(plot) = &args.plot {
        eval::plot_svg(&evaluation, plot)?;
    }
    if args.json {
        print_line(serde_json::to_string(&evaluation.report)?)?;
    } else {
        print_line(&evaluation.report)?;
    }
    Ok(())
}

fn cv_command(args: CvArgs) -> Result<()> {
    let (dataset, models) = load_data(&args.data)?;
    let skipped = dataset.skipped;
    if let Some(note) = ranking_note(&dataset, &args.data, &args.head) {
        eprintln!("note: {note}");
    }
    let options = args.head.options(&args.data)?;
    let mut outcome = train::cross_validate(&dataset.records, &models, &options, args.folds)?;
    eprintln!(
        "{} folds; epochs per fold: {:?}",
        args.folds, outcome.epochs
    );
    if let Some(gate) = &outcome.task_gate {
        eprint!("{gate}");
    }
    if let Some(path) = &args.predictions {
        write_predictions(path, &dataset.records, &models, &outcome)?;
    }
    if let [family] = outcome.families.as_mut_slice() {
        family.evaluation.report.skipped = skipped;
        return print_cv_family(family, args.json, args.plot.clone());
    }
    if args.json {
        let families: Vec<serde_json::Value> = outcome.families.iter().map(|family| serde_json::json!({
            "models": family.models, "records": family.records.len(),
            "ranked_by_catalog": family.ranked_by_catalog, "report": family.evaluation.report,
        })).collect();
        return print_line(serde_json::json!({ "skipped": skipped, "families": families }));
    }
    for (index, family) in outcome.families.iter().enumerate() {
        let ranking = match family.ranked_by_catalog {
            true => "choices ranked by the catalog",
            false => "choices ranked by the data's own costs (the catalog does not price them all)",
        };
        print_line(format_args!(
            "family {} of {}: {} records, models {}; {ranking}",
            index + 1,
            outcome.families.len(),
            family.records.len(),
            family.models.join(", ")
        ))?;
        let plot = args
            .plot
            .as_ref()
            .map(|path| numbered_path(path, index + 1));
        print_cv_family(family, args.json, plot)?;
    }
    Ok(())
}

/// One family's cross-validated report (and its length report on stderr, its plot at `plot`).
fn print_cv_family(
    family: &train::FamilyEvaluation,
    json: bool,
    plot: Option<PathBuf>,
) -> Result<()> {
    if let Some(report) = &family.output_length {
        eprintln!("{report}");
    }
    if let Some(plot) = &plot {
        eval::plot_svg(&family.evaluation, plot)?;
    }
    if json {
        print_line(serde_json::to_string(&family.evaluation.report)?)
    } else {
        print_line(&family.evaluation.report)
    }
}

/// `path` with `-N` before its extension: one plot per family (`cv.svg` -> `cv-2.svg`).
fn numbered_path(path: &Path, number: usize) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{number}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{number}"),
    };
    path.with_file_name(name)
}

/// `cv --predictions`: each record with its fold and out-of-fold predictions, one JSON line each.
fn write_predictions(
    path: &Path,
    records: &[data::Record],
    models: &[String],
    outcome: &train::CrossValidation,
) -> Result<()> {
    let file = std::fs::File::create(path).with_context(|| path.display().to_string())?;
    let mut out = std::io::BufWriter::new(file);
    for ((record, fold), predicted) in records.iter().zip(&outcome.folds).zip(&outcome.predictions)
    {
        let predicted: serde_json::Map<String, serde_json::Value> = models
            .iter()
            .zip(predicted)
            .map(|(model, p)| (model.clone(), serde_json::json!(p)))
            .collect();
        let line = serde_json::json!({
            "prompt": record.prompt, "task": record.task, "scores": record.scores, "costs": record.costs,
            "fold": fold, "predicted": predicted,
        });
        writeln!(out, "{line}").with_context(|| path.display().to_string())?;
    }
    out.flush().with_context(|| path.display().to_string())
}

/// The kNN and per-task-best baselines on the evaluated data itself, 5-fold (folds grouped by
/// prompt, as `cv`'s): each prompt is predicted from the other folds, so neither baseline sees a
/// prompt's own scores.
fn out_of_fold_baselines(
    records: &[data::Record],
    embeddings: &[Vec<f32>],
    test: &router_training::metrics::Matrix,
    tasks: &[&str],
    seed: u64,
) -> TrainingResult<(Vec<Vec<f32>>, Vec<usize>)> {
    const FOLDS: usize = 5;
    let fold_of = data::folds(data::split_keys(records), FOLDS, seed)?;
    let knn = baselines::knn_out_of_fold(embeddings, test.scores(), &fold_of, FOLDS)?;
    let task_best = baselines::task_best_out_of_fold(test, tasks, &fold_of, FOLDS)?;
    Ok((knn, task_best))
}

/// This run's command line as a shell would take it back: `model-router` and the arguments, each
/// quoted when it is empty or holds anything but plain path characters.
fn command_line() -> String {
    let plain = |arg: &str| {
        !arg.is_empty()
            && arg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+".contains(c))
    };
    let quoted = std::env::args().skip(1).map(|arg| {
        if plain(&arg) {
            arg
        } else {
            format!("'{}'", arg.replace('\'', "'\\''"))
        }
    });
    std::iter::once("model-router".to_string())
        .chain(quoted)
        .collect::<Vec<_>>()
        .join(" ")
}

/// What ranks the report's choices when `train` or `cv` has no `--catalog`: said, not silent.
fn ranking_note(dataset: &Dataset, data: &DataArgs, head: &HeadArgs) -> Option<String> {
    if head.catalog.is_some() {
        return None;
    }
    let has_costs = dataset.records.iter().any(|r| !r.costs.is_empty());
    Some(match (&data.prices, has_costs) {
        (Some(prices), _) => format!("no --catalog: the report ranks choices by the costs estimated from {} (and the data's own, where it has them)", prices.display()),
        (None, true) => "no --catalog: the report ranks choices by the data's own costs".to_string(),
        (None, false) => "no --catalog, no --prices and no costs in the data: every model counts as free, so every mode chooses as Quality mode does".to_string(),
    })
}

fn distill(args: DistillArgs) -> Result<()> {
    let source = BertSource::parse(&args.from);
    let bert = source.load(16, router_core::Truncation::Right)?;
    let bar = embed::progress_bar(bert.tokenizer().vocab_size(), "distilling");
    let table = router_core::distill::distill_static(&bert, args.dim, &mut |done, _| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    std::fs::create_dir_all(&args.out).with_context(|| args.out.display().to_string())?;
    table.save_table(&args.out.join("encoder.safetensors"))?;
    let tokenizer = source.model_dir()?.join("tokenizer.json");
    std::fs::copy(&tokenizer, args.out.join("tokenizer.json"))
        .with_context(|| tokenizer.display().to_string())?;
    eprintln!(
        "wrote a {}-token x {} table to {}",
        table.table().len() / args.dim,
        args.dim,
        args.out.display()
    );
    Ok(())
}
