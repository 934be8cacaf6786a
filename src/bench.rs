//! `model-router bench`: routing latency and throughput of the static and BERT tiers, next to the
//! baselines that say whether the numbers are good (the tokenizer alone, the stock
//! candle-transformers BERT forward on the same weights, the BERT tier's own matmuls), all measured
//! in the same run so that their ratios hold on any machine.

mod capacity;
mod server;
mod workload;

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use indicatif::ProgressBar;
use model_router::load_router;
use model_router::router_core::bert::BertConfig;
use model_router::router_core::candle_core;
use model_router::router_core::{
    bert_dir_from_hub, BertEncoder, Pooling, Truncation, DEFAULT_REVISION,
};
use model_router::router_training::data::{self, Format};
use model_router::router_training::embed::progress_bar;
use serde_json::{json, Value};

use workload::{
    bert_forward_flops, bert_model_dir, minilm_tier_like, prompt_of_tokens, read_bert_config,
    MatmulWorkload, RoutingTier, StockBert, BUILT_IN_PROMPTS, MINILM_REPO,
};

/// The prompt length of the headline one-prompt numbers.
const HEADLINE_TOKENS: usize = 32;
/// Prompts per batch in the batch-throughput measurement.
const BATCH_SIZE: usize = 32;
/// The longer prompt at which the static tier is compared with its tokenizer.
const LONG_TOKENS: usize = 128;

#[derive(Args)]
pub struct BenchArgs {
    /// Bundle directory or hub repo id; the shipped default when absent. A static bundle is
    /// measured next to a BERT tier (all-MiniLM-L6-v2 from the hub cache with a head of the same
    /// shape); a BERT bundle next to the shipped static one.
    #[arg(long)]
    model: Option<String>,
    /// A dataset whose prompts form the workload pass; built-in prompts when absent.
    #[arg(long)]
    data: Option<PathBuf>,
    /// The dataset's format (guessed from the file name when absent).
    #[arg(long, requires = "data")]
    format: Option<Format>,
    /// Print exactly one JSON object.
    #[arg(long)]
    json: bool,
    /// Timed runs of each measurement (after a short warm-up); the workload pass routes this many
    /// prompts, cycling through the prompt set.
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    /// Measure the server instead: its latency over calling a local backend directly, under an
    /// open-loop load of `--rate` requests per second for `--seconds`.
    #[arg(long)]
    server: bool,
    /// Requests per second of the server measurement (to the router, and as many to the backend).
    #[arg(long, default_value_t = 200.0, requires = "server")]
    rate: f64,
    /// Seconds of the server measurement (after one second of warm-up).
    #[arg(long, default_value_t = 10.0, requires = "server")]
    seconds: f64,
    /// With --server: also measure a router that shadows every request (`[shadow] rate = 1.0`
    /// to two models on the same backend, answers stored), and report the client's latency
    /// with shadows on over off.
    #[arg(long, requires = "server")]
    shadow: bool,
    /// With --server: find the highest open-loop request rate whose p99 latency stays within
    /// `--p99-ms`, calling the backend directly, through a bare forwarding proxy and through the
    /// router (each rate tried runs for `--seconds`), and report the router's share of the
    /// direct rate.
    #[arg(long, requires = "server", conflicts_with_all = ["rate", "shadow"])]
    find_max: bool,
    /// With --find-max: the p99 latency bound, milliseconds.
    #[arg(long, default_value_t = 50.0, requires = "find_max")]
    p99_ms: f64,
    /// Measure only the BERT encoder (all-MiniLM-L6-v2 from the hub cache: tokenize, forward, mean
    /// pool, normalise) on one prompt of each of these token counts, e.g. `16,32,128,512`, and
    /// print each prompt with its figures (what `scripts/onnx-compare.sh` feeds ONNX Runtime).
    #[arg(long, value_delimiter = ',', conflicts_with = "server")]
    lengths: Vec<usize>,
    /// Measure dispatch instead: cooldown-only against capacity-aware dispatch in one run, on
    /// loopback mocks of a provisioned deployment with a tokens-per-minute limit and its
    /// pay-as-you-go spillover, under a bursty load of `--capacity-seconds`.
    #[arg(long, conflicts_with_all = ["server", "lengths"])]
    capacity: bool,
    /// Seconds of the `--capacity` load.
    #[arg(long, default_value_t = 30.0, requires = "capacity")]
    capacity_seconds: f64,
}

/// The cargo profile this binary was built with: `release` when debug assertions are off (the
/// release and bench profiles), `dev` otherwise. Speed figures mean little without it.
pub fn build_profile() -> &'static str {
    if cfg!(debug_assertions) {
        "dev"
    } else {
        "release"
    }
}

/// Latencies of one measurement, in microseconds, sorted.
struct Samples(Vec<f64>);

impl Samples {
    fn sorted(mut times: Vec<f64>) -> Self {
        times.sort_by(f64::total_cmp);
        Samples(times)
    }

    /// The nearest-rank percentile (`quantile` in [0, 1]).
    fn percentile(&self, quantile: f64) -> f64 {
        let rank = (quantile * self.0.len() as f64).ceil() as usize;
        self.0
            .get(rank.clamp(1, self.0.len().max(1)) - 1)
            .copied()
            .unwrap_or(f64::NAN)
    }

    fn p50(&self) -> f64 {
        self.percentile(0.5)
    }

    fn mean(&self) -> f64 {
        self.0.iter().sum::<f64>() / self.0.len().max(1) as f64
    }

    /// The summary printed for a tier: percentiles, mean and the throughput of one thread of
    /// callers routing back to back.
    fn summary(&self, tokens: Option<usize>) -> Value {
        let mut summary = json!({
            "p50_us": self.p50(),
            "p90_us": self.percentile(0.9),
            "p99_us": self.percentile(0.99),
            "mean_us": self.mean(),
            "prompts_per_s": 1e6 / self.mean(),
            "samples": self.0.len(),
        });
        if let (Some(tokens), Some(object)) = (tokens, summary.as_object_mut()) {
            object.insert("tokens".into(), json!(tokens));
        }
        summary
    }
}

/// Times `runs` round-robin, one call of each per iteration, after a warm-up: interleaving keeps a
/// slow spell of this shared machine from landing on one side of a ratio.
fn measure_interleaved(
    iterations: usize,
    bar: &ProgressBar,
    runs: &mut [&mut dyn FnMut() -> Result<()>],
) -> Result<Vec<Samples>> {
    for _ in 0..warm_up_runs(iterations) {
        for run in runs.iter_mut() {
            run()?;
        }
    }
    let mut samples: Vec<Vec<f64>> = runs
        .iter()
        .map(|_| Vec::with_capacity(iterations))
        .collect();
    for _ in 0..iterations {
        for (run, times) in runs.iter_mut().zip(&mut samples) {
            let start = Instant::now();
            run()?;
            times.push(start.elapsed().as_secs_f64() * 1e6);
        }
        bar.inc(runs.len() as u64);
    }
    Ok(samples.into_iter().map(Samples::sorted).collect())
}

/// Untimed calls of each run before the timed ones.
fn warm_up_runs(iterations: usize) -> usize {
    (iterations / 10).clamp(1, 10)
}

/// CPU time used so far by all of this process's threads, in seconds, from Linux's per-thread
/// scheduler statistics (nanoseconds; `None` where they cannot be read). On a machine shared with
/// other work this moves far less than wall time does.
fn process_cpu_seconds() -> Option<f64> {
    let mut nanoseconds = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        nanoseconds += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(nanoseconds as f64 / 1e9)
}

/// Keeps the optimiser from discarding a measured result.
fn consume<T>(value: T) -> Result<()> {
    black_box(value);
    Ok(())
}

/// The static and the BERT tier, whichever `--model` is.
fn load_tiers(model: Option<&str>) -> Result<(RoutingTier, RoutingTier)> {
    let chosen = RoutingTier::new(load_router(model)?, None)?;
    if chosen.is_bert() {
        let static_tier = RoutingTier::new(load_router(None)?, None)?;
        if static_tier.is_bert() {
            bail!("the default bundle is not a static one; pass a static bundle with --model");
        }
        return Ok((static_tier, chosen));
    }
    let bert_router = minilm_tier_like(&chosen.router)?;
    // Same models as the static bundle, so its catalog prices them.
    let bert_tier = RoutingTier::new(bert_router, Some(chosen.policy.catalog().clone()))?;
    Ok((chosen, bert_tier))
}

fn workload_prompts(args: &BenchArgs) -> Result<(String, Vec<String>)> {
    let Some(path) = &args.data else {
        return Ok((
            "built-in".into(),
            BUILT_IN_PROMPTS.iter().map(|p| p.to_string()).collect(),
        ));
    };
    let format = match args.format {
        Some(format) => format,
        None => super::guess_format(path)?,
    };
    let dataset = data::load(format, std::slice::from_ref(path), None)?;
    if dataset.records.is_empty() {
        bail!("{} has no usable records", path.display());
    }
    Ok((
        path.display().to_string(),
        dataset.records.into_iter().map(|r| r.prompt).collect(),
    ))
}

/// Runs the benchmark and prints its report.
pub fn run(args: BenchArgs) -> Result<()> {
    if args.iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    if args.server {
        return run_server(&args);
    }
    if args.capacity {
        return capacity::print(capacity::run(args.capacity_seconds)?, args.json);
    }
    if !args.lengths.is_empty() {
        return run_lengths(&args);
    }
    let setup = TierSetup::load(&args)?;
    let iterations = args.iterations;
    // Static trio, long static trio, BERT quartet, static workload, BERT workload pair, batch pair.
    let bar = progress_bar(
        iterations * (3 + 3 + 4 + 1 + 2) + (iterations / 10).max(1) * 2,
        "benchmarking",
    );
    let prompts = setup.measure_prompts(iterations, &bar)?;
    let workload = setup.measure_workload(iterations, &bar)?;
    let batches = setup.measure_batches(iterations, &bar)?;
    bar.finish_and_clear();
    let report = setup.report(iterations, prompts, workload, batches)?;
    if args.json {
        println!("{report}");
    } else {
        print_report(&report);
    }
    Ok(())
}

/// What the default measurement compares: both tiers of the bundle, stock candle's BERT on the
/// same weights, the BERT tier's matmuls alone, the prompts and the workload.
struct TierSetup {
    static_tier: RoutingTier,
    bert_tier: RoutingTier,
    bert_config: BertConfig,
    stock_bert: StockBert,
    matmuls: MatmulWorkload,
    workload_source: String,
    workload: Vec<String>,
    static_prompt: String,
    static_long_prompt: String,
    bert_prompt: String,
}

impl TierSetup {
    fn load(args: &BenchArgs) -> Result<Self> {
        let (static_tier, bert_tier) = load_tiers(args.model.as_deref())?;
        let model_dir = bert_model_dir(&bert_tier.router)?;
        let bert_config = read_bert_config(&model_dir)?;
        let stock_bert = StockBert::load(&model_dir, bert_tier.tokenizer().clone())?;
        let matmuls = MatmulWorkload::new(&bert_config, HEADLINE_TOKENS)?;
        let (workload_source, workload) = workload_prompts(args)?;
        let static_prompt = prompt_of_tokens(static_tier.tokenizer(), HEADLINE_TOKENS)?;
        let static_long_prompt = prompt_of_tokens(static_tier.tokenizer(), LONG_TOKENS)?;
        let bert_prompt = prompt_of_tokens(bert_tier.tokenizer(), HEADLINE_TOKENS)?;
        Ok(Self {
            static_tier,
            bert_tier,
            bert_config,
            stock_bert,
            matmuls,
            workload_source,
            workload,
            static_prompt,
            static_long_prompt,
            bert_prompt,
        })
    }

    /// One prompt, over and over: the static tier beside the two tokenizers (at 32 and 128
    /// tokens), then the BERT tier beside stock BERT and its own matmuls.
    fn measure_prompts(&self, iterations: usize, bar: &ProgressBar) -> Result<PromptSamples> {
        let (static_tier, tokenizer) = (&self.static_tier, self.static_tier.tokenizer());
        let measure_static = |prompt: &str| {
            measure_interleaved(
                iterations,
                bar,
                &mut [
                    &mut || consume(static_tier.route(prompt)?),
                    &mut || consume(tokenizer.encode(prompt)?),
                    &mut || consume(tokenizer.encode_with_tokenizers(prompt)?),
                ],
            )
        };
        let short = measure_static(&self.static_prompt)?;
        let long = measure_static(&self.static_long_prompt)?;
        let bert_prompt = self.bert_prompt.as_str();
        let bert = measure_interleaved(
            iterations,
            bar,
            &mut [
                &mut || consume(self.bert_tier.route(bert_prompt)?),
                &mut || {
                    let embedding = self.stock_bert.embed(bert_prompt)?;
                    consume(self.bert_tier.route_embedding(bert_prompt, embedding)?)
                },
                &mut || self.matmuls.run(),
                &mut || self.matmuls.run_general(),
            ],
        )?;
        PromptSamples::from_runs(short, long, bert)
    }

    /// The workload's prompts in turn: the static tier, then the BERT tier beside stock BERT.
    /// Each side cycles through the workload on its own, so every side routes the same prompts.
    fn measure_workload(&self, iterations: usize, bar: &ProgressBar) -> Result<[Samples; 3]> {
        let (mut static_prompts, mut bert_prompts, mut stock_prompts) = (
            self.workload.iter().cycle(),
            self.workload.iter().cycle(),
            self.workload.iter().cycle(),
        );
        let no_prompt = || anyhow!("the workload has no prompts");
        let mut static_samples = measure_interleaved(
            iterations,
            bar,
            &mut [&mut || {
                consume(
                    self.static_tier
                        .route(static_prompts.next().ok_or_else(no_prompt)?)?,
                )
            }],
        )?;
        let mut bert_samples = measure_interleaved(
            iterations,
            bar,
            &mut [
                &mut || {
                    consume(
                        self.bert_tier
                            .route(bert_prompts.next().ok_or_else(no_prompt)?)?,
                    )
                },
                &mut || {
                    let prompt = stock_prompts.next().ok_or_else(no_prompt)?;
                    let embedding = self.stock_bert.embed(prompt)?;
                    consume(self.bert_tier.route_embedding(prompt, embedding)?)
                },
            ],
        )?;
        let stock = bert_samples.remove(1);
        Ok([static_samples.remove(0), bert_samples.remove(0), stock])
    }

    /// Batches of [`BATCH_SIZE`] copies of the prompt, static and BERT tier. A batch costs about
    /// `BATCH_SIZE` single prompts, so it gets proportionally fewer runs.
    fn measure_batches(&self, iterations: usize, bar: &ProgressBar) -> Result<[Samples; 2]> {
        let static_batch = vec![self.static_prompt.as_str(); BATCH_SIZE];
        let bert_batch = vec![self.bert_prompt.as_str(); BATCH_SIZE];
        let mut samples = measure_interleaved(
            (iterations / 10).max(1),
            bar,
            &mut [
                &mut || consume(self.static_tier.route_batch(&static_batch)?),
                &mut || consume(self.bert_tier.route_batch(&bert_batch)?),
            ],
        )?;
        let bert = samples.remove(1);
        Ok([samples.remove(0), bert])
    }

    /// The report `--json` prints and [`print_report`] reads.
    fn report(
        &self,
        iterations: usize,
        p: PromptSamples,
        [static_workload, bert_workload, stock_workload]: [Samples; 3],
        [static_batch, bert_batch]: [Samples; 2],
    ) -> Result<Value> {
        let batch_throughput = |samples: &Samples, tokens: usize| {
            json!({
                "prompts": BATCH_SIZE,
                "tokens": tokens,
                "p50_us": samples.p50(),
                "prompts_per_s": BATCH_SIZE as f64 * 1e6 / samples.p50(),
            })
        };
        let bert_tokens = self.bert_tier.tokenizer().encode(&self.bert_prompt)?.len();
        let flops = bert_forward_flops(&self.bert_config, bert_tokens);
        let gflops = |microseconds: f64| flops / microseconds / 1e3;
        Ok(json!({
            "profile": build_profile(),
            "threads": candle_core::utils::get_num_threads(),
            "iterations": iterations,
            "catalog": self.static_tier.catalog.as_str(),
            "tiers": {
                "static": p.static_route.summary(Some(HEADLINE_TOKENS)),
                "bert": p.bert.summary(Some(bert_tokens)),
            },
            "static_128": p.static_long.summary(Some(LONG_TOKENS)),
            "stock_bert": p.stock.summary(Some(bert_tokens)),
            "tokenize_us": p.tokenize.p50(),
            "tokenize_128_us": p.tokenize_long.p50(),
            "static_128_over_tokenize": p.static_long.p50() / p.tokenize_long.p50(),
            "tokenize_fast_path": self.static_tier.tokenizer().has_fast_path(),
            "tokenize_tokenizers_crate_us": p.tokenize_crate.p50(),
            "tokenize_128_tokenizers_crate_us": p.tokenize_long_crate.p50(),
            "static_128_over_tokenizers_crate": p.static_long.p50() / p.tokenize_long_crate.p50(),
            "bert_speedup_vs_stock": p.stock.p50() / p.bert.p50(),
            "bert_matmul_us": p.matmul.p50(),
            "bert_over_matmul": p.bert.p50() / p.matmul.p50(),
            "bert_flops": flops,
            "bert_gflops": gflops(p.bert.p50()),
            "bert_matmul_gflops": gflops(p.matmul.p50()),
            "general_matmul_us": p.general_matmul.p50(),
            "general_matmul_gflops": gflops(p.general_matmul.p50()),
            "stock_bert_gflops": gflops(p.stock.p50()),
            "batch": {
                "static": batch_throughput(&static_batch, HEADLINE_TOKENS),
                "bert": batch_throughput(&bert_batch, bert_tokens),
            },
            "workload": {
                "source": self.workload_source,
                "prompts": self.workload.len(),
                "static": static_workload.summary(None),
                "bert": bert_workload.summary(None),
                "stock_bert": stock_workload.summary(None),
                "bert_speedup_vs_stock": stock_workload.p50() / bert_workload.p50(),
            },
        }))
    }
}

/// [`TierSetup::measure_prompts`]' samples, by what they timed.
struct PromptSamples {
    static_route: Samples,
    tokenize: Samples,
    tokenize_crate: Samples,
    static_long: Samples,
    tokenize_long: Samples,
    tokenize_long_crate: Samples,
    bert: Samples,
    stock: Samples,
    matmul: Samples,
    general_matmul: Samples,
}

impl PromptSamples {
    /// From the three interleaved runs, each in the order its closures were given.
    fn from_runs(short: Vec<Samples>, long: Vec<Samples>, bert: Vec<Samples>) -> Result<Self> {
        let [static_route, tokenize, tokenize_crate] = <[Samples; 3]>::try_from(short)
            .map_err(|_| anyhow!("three static samples expected"))?;
        let [static_long, tokenize_long, tokenize_long_crate] = <[Samples; 3]>::try_from(long)
            .map_err(|_| anyhow!("three long static samples expected"))?;
        let [bert, stock, matmul, general_matmul] =
            <[Samples; 4]>::try_from(bert).map_err(|_| anyhow!("four BERT samples expected"))?;
        Ok(Self {
            static_route,
            tokenize,
            tokenize_crate,
            static_long,
            tokenize_long,
            tokenize_long_crate,
            bert,
            stock,
            matmul,
            general_matmul,
        })
    }
}

/// `--server`: the server's overhead over the backend, for the bundle of `--model`.
fn run_server(args: &BenchArgs) -> Result<()> {
    let router = load_router(args.model.as_deref())?;
    let catalog = model_router::load_catalog(&router, None)?;
    let (source, prompts) = workload_prompts(args)?;
    let bundle_dir = router.dir().to_path_buf();
    drop(router);
    if args.find_max {
        let find = server::FindMax {
            p99_ms: args.p99_ms,
            seconds: args.seconds,
        };
        let report = server::find_max(&bundle_dir, &catalog, &prompts, &find)?;
        return print_find_max(args, &source, report);
    }
    let load = server::ServerLoad {
        rate: args.rate,
        seconds: args.seconds,
        shadow: args.shadow,
    };
    let report = server::run(&bundle_dir, &catalog, &prompts, &load)?;
    let report = json!({
        "profile": build_profile(),
        "threads": candle_core::utils::get_num_threads(),
        "workload": source,
        "server": report,
    });
    if args.json {
        println!("{report}");
        return Ok(());
    }
    let server = &report["server"];
    println!(
        "model-router bench --server ({} build): {} requests/s for {} s to each of the backend and the router ({} prompts: {source})",
        build_profile(),
        server["rate_per_s"], server["seconds"], prompts.len()
    );
    println!(
        "  {:<10} {:>9} {:>7} {:>10} {:>10} {:>10} {:>10}",
        "path", "requests", "errors", "p50 µs", "p90 µs", "p99 µs", "max µs"
    );
    for (name, row) in [
        ("direct", &server["direct"]),
        ("routed", &server["routed"]),
        ("shadowed", &server["shadowed"]),
    ] {
        if row.is_null() {
            continue;
        }
        println!(
            "  {name:<10} {:>9} {:>7} {:>10.0} {:>10.0} {:>10.0} {:>10.0}",
            row["requests"].as_u64().unwrap_or(0),
            row["errors"].as_u64().unwrap_or(0),
            number(&row["p50_us"]),
            number(&row["p90_us"]),
            number(&row["p99_us"]),
            number(&row["max_us"]),
        );
    }
    println!(
        "  router overhead: p50 {:.0} µs, p99 {:.0} µs",
        number(&server["overhead_p50_us"]),
        number(&server["overhead_p99_us"])
    );
    if !server["shadowed"].is_null() {
        println!(
            "  client latency with shadows on / off: p50 {:.3}, p99 {:.3} ({:.0} shadows sent, {:.0} dropped on a full queue)",
            number(&server["shadow_latency_ratio_p50"]),
            number(&server["shadow_latency_ratio_p99"]),
            number(&server["shadows_sent"]),
            number(&server["shadows_dropped_queue_full"])
        );
    }
    Ok(())
}

/// Prints `--find-max`'s report: each side's highest rate and the figures at it, their ratio,
/// and where the router's time goes.
fn print_find_max(args: &BenchArgs, source: &str, report: Value) -> Result<()> {
    let report = json!({
        "profile": build_profile(),
        "workload": source,
        "find_max": report,
    });
    if args.json {
        println!("{report}");
        return Ok(());
    }
    let found = &report["find_max"];
    println!(
        "model-router bench --server --find-max ({} build): the highest open-loop rate with p99 <= {} ms, {} s per rate ({source})",
        build_profile(),
        found["p99_bound_ms"],
        found["seconds_per_rate"]
    );
    println!(
        "  {:<8} {:>12} {:>9} {:>10} {:>10} {:>14}",
        "path", "max req/s", "tried", "p50 µs", "p99 µs", "CPU µs/req"
    );
    for name in ["direct", "proxy", "router"] {
        let side = &found[name];
        let at_least = if side["at_least"].as_bool() == Some(true) {
            ">="
        } else {
            ""
        };
        println!(
            "  {name:<8} {:>12} {:>9} {:>10.0} {:>10.0} {:>14.1}",
            format!("{at_least}{:.0}", number(&side["max_rate_per_s"])),
            side["steps"].as_array().map_or(0, Vec::len),
            number(&side["p50_us"]),
            number(&side["p99_us"]),
            number(&side["cpu_us_per_request"]),
        );
    }
    let (stages, cpu) = (&found["stages"], &found["cpu_us_per_request_over_direct"]);
    println!(
        "  router / direct: {:.2} of the direct rate (a bare axum + reqwest proxy: {:.2}; router / proxy {:.2})",
        number(&found["ratio"]),
        number(&found["proxy_ratio"]),
        number(&found["router_over_proxy"])
    );
    println!(
        "  CPU per request over the direct call's (the whole process: load generator, server, backend): proxy {:.1} µs, router {:.1} µs",
        number(&cpu["proxy"]),
        number(&cpu["router"])
    );
    println!(
        "  router stages, mean over the search: decide (tokenise, score, policy) {:.1} µs, backend response headers {:.1} µs, prompts skipped (client gone) {:.0}",
        number(&stages["decide_mean_us"]),
        number(&stages["upstream_mean_us"]),
        number(&stages["scorer_skipped"])
    );
    Ok(())
}

/// `--lengths`: the BERT encoder alone on one prompt of each length, with the prompt itself, so
/// another runtime can be timed on exactly the same input.
fn run_lengths(args: &BenchArgs) -> Result<()> {
    let longest = args.lengths.iter().copied().max().unwrap_or(0);
    let model_dir = bert_dir_from_hub(MINILM_REPO, DEFAULT_REVISION).with_context(|| {
        format!("--lengths needs {MINILM_REPO} in the hub cache (scripts/fetch-minilm.sh fills it)")
    })?;
    let encoder = BertEncoder::load(
        &model_dir,
        &model_dir.join("tokenizer.json"),
        longest,
        Truncation::Right,
        Pooling::Mean,
        &candle_core::Device::Cpu,
    )?;
    let prompts = args
        .lengths
        .iter()
        .map(|&tokens| prompt_of_tokens(encoder.tokenizer(), tokens))
        .collect::<Result<Vec<_>>>()?;
    let bar = progress_bar(args.iterations * prompts.len(), "benchmarking");
    let mut rows = Vec::with_capacity(prompts.len());
    for (prompt, &tokens) in prompts.iter().zip(&args.lengths) {
        let cpu_before = process_cpu_seconds();
        let samples = measure_interleaved(
            args.iterations,
            &bar,
            &mut [&mut || consume(encoder.embed_batch(&[prompt])?)],
        )?;
        let calls = (args.iterations + warm_up_runs(args.iterations)) as f64;
        let cpu_us = cpu_before
            .zip(process_cpu_seconds())
            .map(|(before, after)| (after - before) * 1e6 / calls);
        let mut row = samples[0].summary(Some(tokens));
        if let Some(object) = row.as_object_mut() {
            object.insert("prompt".into(), json!(prompt));
            object.insert("cpu_us".into(), json!(cpu_us));
        }
        rows.push(row);
    }
    bar.finish_and_clear();
    let report = json!({
        "profile": build_profile(),
        "threads": candle_core::utils::get_num_threads(),
        "iterations": args.iterations,
        "encoder": MINILM_REPO,
        "lengths": rows,
    });
    if args.json {
        println!("{report}");
        return Ok(());
    }
    println!(
        "model-router bench --lengths ({} build): {MINILM_REPO} encoder alone (tokenize + forward + pool), {} thread(s)",
        build_profile(),
        report["threads"]
    );
    println!(
        "  {:>6} {:>10} {:>10} {:>10} {:>12}",
        "tokens", "p50 µs", "p90 µs", "p99 µs", "CPU µs/call"
    );
    for row in &rows {
        println!(
            "  {:>6} {:>10.1} {:>10.1} {:>10.1} {:>12.1}",
            row["tokens"],
            number(&row["p50_us"]),
            number(&row["p90_us"]),
            number(&row["p99_us"]),
            number(&row["cpu_us"])
        );
    }
    Ok(())
}

fn print_report(report: &Value) {
    println!(
        "model-router bench ({} build): {} thread(s), {} iterations per measurement, {} catalog",
        report["profile"].as_str().unwrap_or("?"),
        report["threads"],
        report["iterations"],
        report["catalog"].as_str().unwrap_or("?")
    );
    println!("\none prompt, end to end (tokenizer + encoder + head + policy)");
    print_latency_header("tokens");
    print_latency_row("static", &report["tiers"]["static"]);
    print_latency_row("static", &report["static_128"]);
    print_latency_row("bert", &report["tiers"]["bert"]);
    print_latency_row("stock bert", &report["stock_bert"]);
    print_ratios(report);
    let workload = &report["workload"];
    println!(
        "\nworkload: {} ({} prompts), one prompt at a time",
        workload["source"].as_str().unwrap_or("?"),
        workload["prompts"]
    );
    print_latency_header("");
    print_latency_row("static", &workload["static"]);
    print_latency_row("bert", &workload["bert"]);
    print_latency_row("stock bert", &workload["stock_bert"]);
    println!(
        "  BERT tier vs stock: {:.2}x",
        number(&workload["bert_speedup_vs_stock"])
    );
}

/// A JSON number of the report as `f64` (NaN when it is not one).
fn number(value: &Value) -> f64 {
    value.as_f64().unwrap_or(f64::NAN)
}

fn print_latency_header(tokens: &str) {
    println!(
        "  {:<12} {:>6} {:>10} {:>10} {:>10} {:>12}",
        "tier", tokens, "p50 µs", "p90 µs", "p99 µs", "prompts/s"
    );
}

fn print_latency_row(name: &str, summary: &Value) {
    let tokens = summary["tokens"]
        .as_u64()
        .map(|t| t.to_string())
        .unwrap_or_else(|| "-".into());
    println!(
        "  {name:<12} {tokens:>6} {:>10.1} {:>10.1} {:>10.1} {:>12.0}",
        number(&summary["p50_us"]),
        number(&summary["p90_us"]),
        number(&summary["p99_us"]),
        number(&summary["prompts_per_s"]),
    );
}

/// The tokenizers' and the BERT tier's figures against their baselines of the same run.
fn print_ratios(report: &Value) {
    println!(
        "\ntokenizer alone{}: {:.1} µs at {HEADLINE_TOKENS} tokens, {:.1} µs at {LONG_TOKENS} (static tier / tokenizer at {LONG_TOKENS}: {:.2}x)",
        if report["tokenize_fast_path"].as_bool() == Some(true) { " (ASCII WordPiece fast path)" } else { "" },
        number(&report["tokenize_us"]),
        number(&report["tokenize_128_us"]),
        number(&report["static_128_over_tokenize"]),
    );
    println!(
        "the tokenizers crate: {:.1} µs at {HEADLINE_TOKENS} tokens, {:.1} µs at {LONG_TOKENS} (static tier / it at {LONG_TOKENS}: {:.2}x)",
        number(&report["tokenize_tokenizers_crate_us"]),
        number(&report["tokenize_128_tokenizers_crate_us"]),
        number(&report["static_128_over_tokenizers_crate"]),
    );
    println!(
        "BERT tier: {:.2}x faster than stock candle-transformers; {:.2}x the time of its own matmuls ({:.1} µs)",
        number(&report["bert_speedup_vs_stock"]),
        number(&report["bert_over_matmul"]),
        number(&report["bert_matmul_us"]),
    );
    println!(
        "           {:.1} GFLOP/s end to end, matmuls alone {:.1} GFLOP/s, stock {:.1} GFLOP/s ({:.2} GFLOP per forward)",
        number(&report["bert_gflops"]),
        number(&report["bert_matmul_gflops"]),
        number(&report["stock_bert_gflops"]),
        number(&report["bert_flops"]) / 1e9,
    );
    println!(
        "           the same products through candle's general matmul: {:.1} µs, {:.1} GFLOP/s",
        number(&report["general_matmul_us"]),
        number(&report["general_matmul_gflops"]),
    );
    println!(
        "batches of {BATCH_SIZE} prompts of {HEADLINE_TOKENS} tokens: static {:.0} prompts/s, bert {:.0} prompts/s",
        number(&report["batch"]["static"]["prompts_per_s"]),
        number(&report["batch"]["bert"]["prompts_per_s"]),
    );
}
