//! `model-router bench --server`: what the server adds to a request's latency.
//!
//! One process holds a local OpenAI-compatible backend that answers at once, the router server in
//! front of it (the bundle's tier, every catalog model dispatched to that backend), and an
//! open-loop load generator: requests leave on a fixed schedule, whether or not earlier ones have
//! returned, so a slow server meets the queueing it would meet in production. Two streams are
//! interleaved at the same rate, one to the backend directly and one through the router, so that
//! both see the same machine; the overhead is the difference of their percentiles.

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

/// Requests per second and seconds of the measurement.
pub struct ServerLoad {
    pub rate: f64,
    pub seconds: f64,
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
    let config = ServerConfig::from_toml_str(
        &config_text(bundle_dir, catalog, backend),
        "bench-server.toml",
        Path::new("."),
        |_| None,
    )?;
    let server = router_server::start(config).await?;
    let router = server.local_addr();
    let client = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    let targets = [
        (format!("http://{backend}/v1/chat/completions"), "backend"),
        (format!("http://{router}/v1/chat/completions"), "model-router"),
    ];

    run_load(&client, &targets, prompts, load.rate, WARM_UP_SECONDS).await?;
    let [direct, routed] = run_load(&client, &targets, prompts, load.rate, load.seconds).await?;
    server.shutdown(Duration::from_secs(1)).await;

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
    Ok(json!({
        "rate_per_s": load.rate,
        "seconds": load.seconds,
        "direct": direct_summary,
        "routed": routed_summary,
        "overhead_p50_us": number(&routed_summary["p50_us"]) - number(&direct_summary["p50_us"]),
        "overhead_p99_us": number(&routed_summary["p99_us"]) - number(&direct_summary["p99_us"]),
    }))
}

#[derive(Default)]
struct Stream {
    latencies_us: Vec<f64>,
    errors: usize,
}

/// Sends `rate` requests per second to each target for `seconds`, the targets' requests
/// interleaved half a period apart, and waits for all of them.
async fn run_load(
    client: &reqwest::Client,
    targets: &[(String, &'static str); 2],
    prompts: &[String],
    rate: f64,
    seconds: f64,
) -> Result<[Stream; 2]> {
    let streams = Arc::new([Mutex::new(Stream::default()), Mutex::new(Stream::default())]);
    let requests = (rate * seconds).ceil() as usize * 2;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(0.5 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(requests);
    for i in 0..requests {
        ticker.tick().await;
        let (url, model) = &targets[i % 2];
        let body = json!({
            "model": model,
            "messages": [{"role": "user", "content": prompts[(i / 2) % prompts.len()]}],
        });
        let (client, url, streams) = (client.clone(), url.clone(), streams.clone());
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            let answered = match client.post(&url).json(&body).send().await {
                Ok(response) if response.status().is_success() => response.bytes().await.is_ok(),
                _ => false,
            };
            let mut stream = streams[i % 2].lock().await;
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
    let [direct, routed] = streams;
    Ok([direct.into_inner(), routed.into_inner()])
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
