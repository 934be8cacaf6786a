//! `model-router bench --server`: what the server adds to a request's latency.
//!
//! One process holds a local OpenAI-compatible backend that answers at once, the router server in
//! front of it (the bundle's tier, every catalog model dispatched to that backend), and an
//! open-loop load generator: requests leave on a fixed schedule, whether or not earlier ones have
//! returned, so a slow server meets the queueing it would meet in production. Two streams are
//! interleaved at the same rate, one to the backend directly and one through the router, so that
//! both see the same machine; the overhead is the difference of their percentiles.
//!
//! With `--shadow`, a second router runs beside the first with `[shadow] rate = 1.0` (every
//! request shadowed to two catalog models on the same instant backend, each answer stored in a
//! SQLite store in a temporary directory), and a third stream goes through it: the client's
//! latency with shadows on over off is the ratio of its percentiles to the first router's, in
//! the same run.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use axum::routing::post;
use model_router::router_policy::Catalog;
use router_server::ServerConfig;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use super::Samples;

/// Requests per second and seconds of the measurement, and whether a shadowing router is
/// measured too.
pub struct ServerLoad {
    pub rate: f64,
    pub seconds: f64,
    pub shadow: bool,
}

/// Seconds of load before the measurement, to open connections and warm the scorer.
const WARM_UP_SECONDS: f64 = 1.0;

/// Runs the measurement for the bundle in `bundle_dir` (its catalog prices the models).
pub fn run(bundle_dir: &Path, catalog: &Catalog, prompts: &[String], load: &ServerLoad) -> Result<Value> {
    if !(load.rate > 0.0 && load.rate.is_finite() && load.seconds > 0.0 && load.seconds.is_finite()) {
        return Err(anyhow!("--rate and --seconds must be positive"));
    }
    if prompts.is_empty() {
        return Err(anyhow!("the workload has no prompts"));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(measure(bundle_dir, catalog, prompts, load))
}

async fn measure(bundle_dir: &Path, catalog: &Catalog, prompts: &[String], load: &ServerLoad) -> Result<Value> {
    let backend = start_backend().await?;
    let text = config_text(bundle_dir, catalog, backend);
    let config = ServerConfig::from_toml_str(&text, "bench-server.toml", Path::new("."), |_| None)?;
    let server = router_server::start(config).await?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    let mut targets = vec![
        (format!("http://{backend}/v1/chat/completions"), "backend"),
        (format!("http://{}/v1/chat/completions", server.local_addr()), "model-router"),
    ];
    let shadowing = match load.shadow {
        true => {
            let store_dir = std::env::temp_dir().join(format!("model-router-bench-{}", std::process::id()));
            let text = format!("{text}
{}", shadow_sections(catalog, &store_dir)?);
            let config = ServerConfig::from_toml_str(&text, "bench-server-shadow.toml", Path::new("."), |_| None)?;
            let server = router_server::start(config).await?;
            targets.push((format!("http://{}/v1/chat/completions", server.local_addr()), "model-router"));
            Some((server, store_dir))
        }
        false => None,
    };

    run_load(&client, &targets, prompts, load.rate, WARM_UP_SECONDS).await?;
    let mut streams = run_load(&client, &targets, prompts, load.rate, load.seconds).await?.into_iter();
    server.shutdown(Duration::from_secs(1)).await;
    let (direct, routed) = (streams.next().unwrap_or_default(), streams.next().unwrap_or_default());
    let shadowed = match shadowing {
        Some((server, store_dir)) => {
            let metrics = reqwest::get(format!("http://{}/metrics", server.local_addr())).await?.text().await?;
            server.shutdown(Duration::from_secs(1)).await;
            std::fs::remove_dir_all(&store_dir).with_context(|| format!("removing {}", store_dir.display()))?;
            Some((streams.next().unwrap_or_default(), metrics))
        }
        None => None,
    };

    let summary = |stream: &Stream| {
        let samples = Samples::sorted(stream.latencies_us.clone());
        json!({
            "requests": stream.latencies_us.len() + stream.errors,
            "errors": stream.errors,
            "p50_us": samples.p50(),
            "p90_us": samples.percentile(0.9),
            "p99_us": samples.percentile(0.99),
            "max_us": samples.percentile(1.0),
            "mean_us": samples.mean(),
        })
    };
    let (direct_summary, routed_summary) = (summary(&direct), summary(&routed));
    let number = |value: &Value| value.as_f64().unwrap_or(f64::NAN);
    let mut report = json!({
        "rate_per_s": load.rate,
        "seconds": load.seconds,
        "direct": direct_summary,
        "routed": routed_summary,
        "overhead_p50_us": number(&routed_summary["p50_us"]) - number(&direct_summary["p50_us"]),
        "overhead_p99_us": number(&routed_summary["p99_us"]) - number(&direct_summary["p99_us"]),
    });
    if let Some((stream, metrics)) = shadowed {
        let shadowed_summary = summary(&stream);
        let sample = |name: &str| {
            metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        };
        report["shadowed"] = shadowed_summary.clone();
        report["shadow_latency_ratio_p50"] = json!(number(&shadowed_summary["p50_us"]) / number(&routed_summary["p50_us"]));
        report["shadow_latency_ratio_p99"] = json!(number(&shadowed_summary["p99_us"]) / number(&routed_summary["p99_us"]));
        report["shadows_sent"] = json!(sample("model_router_shadow_sent_total"));
        report["shadows_dropped_queue_full"] = json!(sample("model_router_shadow_dropped_total{reason=\"queue_full\"}"));
    }
    Ok(report)
}

/// `[store]` in `store_dir` and `[shadow]`: every request to the first two catalog models.
fn shadow_sections(catalog: &Catalog, store_dir: &Path) -> Result<String> {
    let models: Vec<String> = catalog.models.iter().take(2).map(|m| toml_string(&m.name)).collect();
    if models.len() < 2 {
        return Err(anyhow!("--shadow needs a catalog of at least two models"));
    }
    Ok(format!(
        "[store]\npath = {}\n\n[shadow]\nrate = 1.0\nmodels = [{}]\nmax_cost_per_day = 1000000.0\n",
        toml_string(&store_dir.join("completions.db").display().to_string()),
        models.join(", ")
    ))
}

#[derive(Default)]
struct Stream {
    latencies_us: Vec<f64>,
    errors: usize,
}

/// Sends `rate` requests per second to each target for `seconds`, the targets' requests
/// interleaved evenly over each period, and waits for all of them.
async fn run_load(
    client: &reqwest::Client,
    targets: &[(String, &'static str)],
    prompts: &[String],
    rate: f64,
    seconds: f64,
) -> Result<Vec<Stream>> {
    let n = targets.len();
    let streams: Arc<Vec<Mutex<Stream>>> = Arc::new((0..n).map(|_| Mutex::new(Stream::default())).collect());
    let requests = (rate * seconds).ceil() as usize * n;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / (rate * n as f64)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(requests);
    for i in 0..requests {
        ticker.tick().await;
        let (url, model) = &targets[i % n];
        let body = json!({
            "model": model,
            "messages": [{"role": "user", "content": prompts[(i / n) % prompts.len()]}],
        });
        let (client, url, streams) = (client.clone(), url.clone(), streams.clone());
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            let answered = match client.post(&url).json(&body).send().await {
                Ok(response) if response.status().is_success() => response.bytes().await.is_ok(),
                _ => false,
            };
            let mut stream = streams[i % n].lock().await;
            if answered {
                stream.latencies_us.push(start.elapsed().as_secs_f64() * 1e6);
            } else {
                stream.errors += 1;
            }
        }));
    }
    for task in tasks {
        task.await.context("a load task failed")?;
    }
    let streams = Arc::try_unwrap(streams).map_err(|_| anyhow!("load tasks still hold the results"))?;
    Ok(streams.into_iter().map(Mutex::into_inner).collect())
}

/// A backend that answers every chat completion at once with a short fixed reply.
async fn start_backend() -> Result<SocketAddr> {
    async fn answer(axum::Json(request): axum::Json<Value>) -> axum::Json<Value> {
        axum::Json(json!({
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 0,
            "model": request.get("model").cloned().unwrap_or(Value::Null),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
        }))
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the bench backend")?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route("/v1/chat/completions", post(answer));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// The server config: the bundle, its catalog's models, all dispatched to the backend.
fn config_text(bundle_dir: &Path, catalog: &Catalog, backend: SocketAddr) -> String {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n\n[router]\nbundle = {}\n\n",
        toml_string(&bundle_dir.display().to_string())
    );
    for model in &catalog.models {
        text.push_str(&format!(
            "[[models]]\nname = {}\ninput_price = {}\noutput_price = {}\ncontext_window = {}\nexpected_output_tokens = {}\ndeployments = [\"backend\"]\n\n",
            toml_string(&model.name),
            model.input_price,
            model.output_price,
            model.context_window,
            model.expected_output_tokens,
        ));
    }
    text.push_str(&format!(
        "[[deployments]]\nname = \"backend\"\nkind = \"openai\"\nbase_url = \"http://{backend}/v1\"\nmodel = \"backend\"\n"
    ));
    text
}

/// A TOML basic string (JSON's escaping is valid TOML for these).
fn toml_string(text: &str) -> String {
    Value::String(text.to_string()).to_string()
}
