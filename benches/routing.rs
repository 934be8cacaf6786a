//! Routing benchmarks (criterion): latency per prompt of the static and the BERT tier (tokenizer +
//! encoder + head + policy) at 8, 32, 128 and 256 tokens; batches of 1, 8 and 32 prompts; and the
//! BERT tier's achieved GFLOP/s next to its own matmuls alone, measured in the same run.
//!
//! The BERT tier is all-MiniLM-L6-v2 from the hub cache (`scripts/fetch-minilm.sh` fills it) under a
//! head shaped like the shipped bundle's; without the cache its benchmarks are skipped with a note.
//!
//! Settings are short by default so that CI runs everything in a few minutes; criterion's flags
//! override them, e.g.
//!
//! ```text
//! cargo bench --bench routing                        # short: 10 samples, 1 s each
//! cargo bench --bench routing -- --quick             # shorter still
//! cargo bench --bench routing -- --sample-size 100 --measurement-time 10 route/bert
//! ```
//!
//! In the `gflops` groups criterion's "elements" are floating-point operations, so its throughput
//! column reads directly in GFLOP/s ("Gelem/s").

// The workload helpers are shared with `model-router bench`; this target uses only part of them.
#[allow(dead_code)]
#[path = "../src/bench/workload.rs"]
mod workload;

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use criterion::{BenchmarkId, Criterion, Throughput};
use model_router::router_core::{BertEncoder, Encoder};
use workload::{
    bert_forward_flops, bert_model_dir, minilm_tier_like, prompt_of_tokens, read_bert_config,
    MatmulWorkload, RoutingTier,
};

// As in the binary: the allocator changes the BERT tier's latency (DESIGN.md, performance notes).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOKEN_COUNTS: [usize; 4] = [8, 32, 128, 256];
const BATCH_SIZES: [usize; 3] = [1, 8, 32];
/// Batches are built from prompts of this length, so that nothing is padded.
const BATCH_PROMPT_TOKENS: usize = 32;
/// Prompt lengths of the GFLOP/s comparison.
const GFLOPS_TOKEN_COUNTS: [usize; 2] = [32, 128];

fn short_criterion() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args()
}

fn bench_latency(criterion: &mut Criterion, name: &str, tier: &RoutingTier) -> Result<()> {
    let mut group = criterion.benchmark_group(format!("route/{name}"));
    group.throughput(Throughput::Elements(1));
    for tokens in TOKEN_COUNTS {
        let prompt = prompt_of_tokens(tier.tokenizer(), tokens)?;
        // Fail here, not silently inside the timing loop.
        tier.route(&prompt)?;
        group.bench_with_input(BenchmarkId::new("tokens", tokens), &prompt, |b, prompt| {
            b.iter(|| tier.route(prompt))
        });
    }
    group.finish();
    Ok(())
}

fn bench_batches(criterion: &mut Criterion, name: &str, tier: &RoutingTier) -> Result<()> {
    let prompt = prompt_of_tokens(tier.tokenizer(), BATCH_PROMPT_TOKENS)?;
    let mut group = criterion.benchmark_group(format!("batch/{name}"));
    for size in BATCH_SIZES {
        let batch: Vec<&str> = vec![prompt.as_str(); size];
        tier.route_batch(&batch)?;
        group.throughput(Throughput::Elements(size as u64));
        group.bench_with_input(BenchmarkId::new("prompts", size), &batch, |b, batch| {
            b.iter(|| tier.route_batch(batch))
        });
    }
    group.finish();
    Ok(())
}

fn bert_encoder(tier: &RoutingTier) -> Result<&BertEncoder> {
    match tier.router.encoder() {
        Encoder::Bert(encoder) => Ok(encoder),
        Encoder::Static(_) => bail!("not a BERT tier"),
    }
}

/// The BERT tier end to end, its forward pass alone (pre-tokenized), its matmuls alone and the same
/// products through candle's general matmul (the plain-GEMM rate), each
/// with the forward's FLOPs as criterion's elements; then a one-line summary per length from a
/// short interleaved timing, so that the ratio is printed even where criterion's output is not
/// read.
fn bench_gflops(criterion: &mut Criterion, tier: &RoutingTier) -> Result<()> {
    let encoder = bert_encoder(tier)?;
    let config = read_bert_config(&bert_model_dir(&tier.router)?)?;
    let mut summaries = Vec::new();
    for tokens in GFLOPS_TOKEN_COUNTS {
        let prompt = prompt_of_tokens(tier.tokenizer(), tokens)?;
        let ids = vec![tier.tokenizer().encode(&prompt)?];
        let matmuls = MatmulWorkload::new(&config, tokens)?;
        tier.route(&prompt)?;
        encoder.embed_ids(&ids)?;
        matmuls.run()?;
        let flops = bert_forward_flops(&config, tokens);
        let mut group = criterion.benchmark_group(format!("gflops/bert_{tokens}_tokens"));
        group.throughput(Throughput::Elements(flops as u64));
        group.bench_function("tier_route", |b| b.iter(|| tier.route(&prompt)));
        group.bench_function("encoder_forward", |b| b.iter(|| encoder.embed_ids(&ids)));
        group.bench_function("matmuls_alone", |b| b.iter(|| matmuls.run()));
        group.bench_function("matmuls_candle_general", |b| {
            b.iter(|| matmuls.run_general())
        });
        group.finish();

        let (forward_us, matmul_us) = interleaved_medians(
            || {
                encoder.embed_ids(&ids)?;
                Ok(())
            },
            || matmuls.run(),
        )?;
        summaries.push(format!(
            "{tokens} tokens: forward {:.1} GFLOP/s ({forward_us:.0} µs), matmuls alone {:.1} GFLOP/s ({matmul_us:.0} µs), forward/matmuls {:.2}x",
            flops / forward_us / 1e3,
            flops / matmul_us / 1e3,
            forward_us / matmul_us,
        ));
    }
    println!(
        "\nBERT tier vs its own matmuls ({} thread(s)):",
        model_router::router_core::candle_core::utils::get_num_threads()
    );
    for summary in summaries {
        println!("  {summary}");
    }
    Ok(())
}

/// Median microseconds of `first` and `second`, run alternately.
fn interleaved_medians(
    mut first: impl FnMut() -> Result<()>,
    mut second: impl FnMut() -> Result<()>,
) -> Result<(f64, f64)> {
    const RUNS: usize = 21;
    let (mut first_us, mut second_us) = (Vec::with_capacity(RUNS), Vec::with_capacity(RUNS));
    for _ in 0..RUNS {
        let start = Instant::now();
        black_box(first()?);
        first_us.push(start.elapsed().as_secs_f64() * 1e6);
        let start = Instant::now();
        black_box(second()?);
        second_us.push(start.elapsed().as_secs_f64() * 1e6);
    }
    first_us.sort_by(f64::total_cmp);
    second_us.sort_by(f64::total_cmp);
    Ok((first_us[RUNS / 2], second_us[RUNS / 2]))
}

fn main() -> Result<()> {
    let mut criterion = short_criterion();
    let static_tier = RoutingTier::new(model_router::load_router(None)?, None)?;
    let bert_tier = match minilm_tier_like(&static_tier.router) {
        Ok(router) => Some(RoutingTier::new(
            router,
            Some(static_tier.policy.catalog().clone()),
        )?),
        Err(error) => {
            eprintln!("skipping the BERT tier: {error:#}");
            None
        }
    };
    bench_latency(&mut criterion, "static", &static_tier)?;
    bench_batches(&mut criterion, "static", &static_tier)?;
    if let Some(bert_tier) = &bert_tier {
        bench_latency(&mut criterion, "bert", bert_tier)?;
        bench_batches(&mut criterion, "bert", bert_tier)?;
        bench_gflops(&mut criterion, bert_tier)?;
    }
    criterion.final_summary();
    Ok(())
}
