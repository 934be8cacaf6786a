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
//!
//! With `--find-max`, three bounded searches take turns: the highest open-loop rate whose p99
//! stays within the bound when calling the backend directly, through a bare forwarding proxy
//! (axum in, reqwest out, nothing else: what any second hop on these crates costs) and through
//! the router. Each rate runs alone against its target, and a rate fails only when it fails twice
//! in a row. Besides the rates and their ratios it reports the process's CPU time per request at
//! each side's best rate, and the router's own stage times from its `/metrics`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use axum::routing::post;
use model_router::router_policy::Catalog;
use router_server::{
    DeploymentSection, RunningServer, ServerConfig, ServerConfigBuilder, ShadowSection,
    StoreSection,
};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use model_router::router_training::embed::progress_bar;

use super::{number, Samples};

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
pub fn run(
    bundle_dir: &Path,
    catalog: &Catalog,
    prompts: &[String],
    load: &ServerLoad,
) -> Result<Value> {
    if !(positive(load.rate) && positive(load.seconds)) {
        return Err(anyhow!("--rate and --seconds must be positive"));
    }
    on_runtime(prompts, measure(bundle_dir, catalog, prompts, load))
}

/// A finite number above zero (what a rate, a duration or a bound must be).
fn positive(value: f64) -> bool {
    value > 0.0 && value.is_finite()
}

/// Runs a measurement over `prompts` on a multi-threaded runtime of its own.
fn on_runtime(
    prompts: &[String],
    measurement: impl std::future::Future<Output = Result<Value>>,
) -> Result<Value> {
    if prompts.is_empty() {
        return Err(anyhow!("the workload has no prompts"));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(measurement)
}

async fn measure(
    bundle_dir: &Path,
    catalog: &Catalog,
    prompts: &[String],
    load: &ServerLoad,
) -> Result<Value> {
    let backend = start_backend().await?;
    let server = router_server::start(server_config(bundle_dir, catalog, backend).build()?).await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let mut targets = vec![
        (format!("http://{backend}/v1/chat/completions"), "backend"),
        (
            format!("http://{}/v1/chat/completions", server.local_addr()),
            "model-router",
        ),
    ];
    let shadowing = match load.shadow {
        true => {
            let shadowing = ShadowingRouter::start(bundle_dir, catalog, backend).await?;
            targets.push((
                format!(
                    "http://{}/v1/chat/completions",
                    shadowing.server.local_addr()
                ),
                "model-router",
            ));
            Some(shadowing)
        }
        false => None,
    };

    run_load(&client, &targets, prompts, load.rate, WARM_UP_SECONDS).await?;
    let mut streams = run_load(&client, &targets, prompts, load.rate, load.seconds)
        .await?
        .into_iter();
    server.shutdown(Duration::from_secs(1)).await;
    let (direct, routed) = (
        stream_summary(&streams.next().unwrap_or_default()),
        stream_summary(&streams.next().unwrap_or_default()),
    );
    let mut report = json!({
        "rate_per_s": load.rate,
        "seconds": load.seconds,
        "overhead_p50_us": number(&routed["p50_us"]) - number(&direct["p50_us"]),
        "overhead_p99_us": number(&routed["p99_us"]) - number(&direct["p99_us"]),
        "direct": direct,
        "routed": routed,
    });
    if let Some(shadowing) = shadowing {
        let shadowed = stream_summary(&streams.next().unwrap_or_default());
        shadowing.report(shadowed, &mut report).await?;
    }
    Ok(report)
}

/// Requests, errors and latency percentiles of one stream.
fn stream_summary(stream: &Stream) -> Value {
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
}

/// A second router that stores and shadows every request (`bench --server --shadow`).
struct ShadowingRouter {
    server: RunningServer,
    store_dir: PathBuf,
}

impl ShadowingRouter {
    async fn start(bundle_dir: &Path, catalog: &Catalog, backend: SocketAddr) -> Result<Self> {
        let store_dir =
            std::env::temp_dir().join(format!("model-router-bench-{}", std::process::id()));
        let config = shadowing_config(
            server_config(bundle_dir, catalog, backend),
            catalog,
            &store_dir,
        )?;
        let server = router_server::start(config.build()?).await?;
        Ok(ShadowingRouter { server, store_dir })
    }

    /// Stops the router, removes its store and adds the shadowed stream's figures to `report`.
    async fn report(self, shadowed: Value, report: &mut Value) -> Result<()> {
        let metrics = reqwest::get(format!("http://{}/metrics", self.server.local_addr()))
            .await?
            .text()
            .await?;
        self.server.shutdown(Duration::from_secs(1)).await;
        std::fs::remove_dir_all(&self.store_dir)
            .with_context(|| format!("removing {}", self.store_dir.display()))?;
        let sample = |name: &str| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        };
        let ratio = |at: &str| number(&shadowed[at]) / number(&report["routed"][at]);
        let (ratio_p50, ratio_p99) = (ratio("p50_us"), ratio("p99_us"));
        report["shadow_latency_ratio_p50"] = json!(ratio_p50);
        report["shadow_latency_ratio_p99"] = json!(ratio_p99);
        report["shadowed"] = shadowed;
        report["shadows_sent"] = json!(sample("model_router_shadow_sent_total"));
        report["shadows_dropped_queue_full"] = json!(sample(
            "model_router_shadow_dropped_total{reason=\"queue_full\"}"
        ));
        Ok(())
    }
}

/// `[store]` in `store_dir` and `[shadow]`: every request to the first two catalog models.
fn shadowing_config(
    builder: ServerConfigBuilder,
    catalog: &Catalog,
    store_dir: &Path,
) -> Result<ServerConfigBuilder> {
    let models: Vec<String> = catalog
        .models
        .iter()
        .take(2)
        .map(|m| m.name.clone())
        .collect();
    if models.len() < 2 {
        return Err(anyhow!("--shadow needs a catalog of at least two models"));
    }
    let shadow = ShadowSection {
        rate: 1.0,
        models,
        max_cost_per_day: 1e6,
        ..ShadowSection::default()
    };
    Ok(builder
        .store(StoreSection::sqlite(store_dir.join("completions.db")))
        .shadow(shadow))
}

#[derive(Default)]
struct Stream {
    latencies_us: Vec<f64>,
    errors: usize,
}

/// Sends `rate` requests per second to each target for `seconds`, the targets' requests
/// interleaved evenly over each period, and waits for all of them. Each latency is counted from
/// the moment its request was due on the schedule, not from when it left: a load generator (or
/// a machine) that falls behind shows as latency instead of quietly sending less
/// (no coordinated omission).
async fn run_load(
    client: &reqwest::Client,
    targets: &[(String, &'static str)],
    prompts: &[String],
    rate: f64,
    seconds: f64,
) -> Result<Vec<Stream>> {
    let n = targets.len();
    let streams: Arc<Vec<Mutex<Stream>>> =
        Arc::new((0..n).map(|_| Mutex::new(Stream::default())).collect());
    let requests = (rate * seconds).ceil() as usize * n;
    let period = Duration::from_secs_f64(1.0 / (rate * n as f64));
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(requests);
    for i in 0..requests {
        let due = start + period.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        let (url, model) = &targets[i % n];
        let body = json!({
            "model": model,
            "messages": [{"role": "user", "content": prompts[(i / n) % prompts.len()]}],
        });
        let (client, url, streams) = (client.clone(), url.clone(), streams.clone());
        tasks.push(tokio::spawn(async move {
            let answered = match client.post(&url).json(&body).send().await {
                Ok(response) if response.status().is_success() => response.bytes().await.is_ok(),
                _ => false,
            };
            let latency_us = due.elapsed().as_secs_f64() * 1e6;
            let mut stream = streams[i % n].lock().await;
            if answered {
                stream.latencies_us.push(latency_us);
            } else {
                stream.errors += 1;
            }
        }));
    }
    for task in tasks {
        task.await.context("a load task failed")?;
    }
    let streams =
        Arc::try_unwrap(streams).map_err(|_| anyhow!("load tasks still hold the results"))?;
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the bench backend")?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route("/v1/chat/completions", post(answer));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// The server config: the bundle, its catalog's models, all dispatched to the backend, no
/// access log.
fn server_config(bundle_dir: &Path, catalog: &Catalog, backend: SocketAddr) -> ServerConfigBuilder {
    let mut builder = ServerConfig::builder(bundle_dir)
        .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .access_log(false)
        .deployment(DeploymentSection::openai(
            "backend",
            format!("http://{backend}/v1"),
            "backend",
        ));
    for model in &catalog.models {
        builder = builder.model(model.clone().deployments(["backend"]));
    }
    builder
}

/// `--find-max`: the p99 bound a rate must keep, and the measured seconds at each rate tried.
pub struct FindMax {
    pub p99_ms: f64,
    pub seconds: f64,
}

/// The first rate each search tries, requests per second.
const FIRST_RATE: f64 = 250.0;
/// A search that passes this rate stops there (the report says the maximum is at least this).
const MAX_RATE: f64 = 100_000.0;
/// A search that fails below this rate stops there (no rate passed).
const MIN_RATE: f64 = 10.0;
/// The search stops once its highest passing and lowest failing rate are within this factor.
const RESOLUTION: f64 = 1.05;
/// The most rates one search tries.
const MAX_STEPS: usize = 16;
/// Seconds of load at a rate before its measured seconds, to open connections at that rate.
const STEP_WARM_UP_SECONDS: f64 = 0.5;
/// A request unanswered after this long counts as an error, so an overloaded step ends.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A bounded search for the highest rate that passes: doubling from [`FIRST_RATE`] until a rate
/// fails (or halving until one passes), then bisecting (geometrically) between the highest
/// passing and the lowest failing rate until they are within [`RESOLUTION`].
#[derive(Debug, Clone, Default)]
struct RateSearch {
    passed: Option<f64>,
    failed: Option<f64>,
    steps: usize,
}

impl RateSearch {
    /// The next rate to try; `None` when the search is done.
    fn next_rate(&self) -> Option<f64> {
        if self.steps >= MAX_STEPS {
            return None;
        }
        let next = match (self.passed, self.failed) {
            (None, None) => FIRST_RATE,
            (Some(passed), None) => passed * 2.0,
            (None, Some(failed)) => failed / 2.0,
            (Some(passed), Some(failed)) if failed / passed <= RESOLUTION => return None,
            (Some(passed), Some(failed)) => (passed * failed).sqrt(),
        };
        (MIN_RATE..=MAX_RATE).contains(&next).then_some(next)
    }

    /// Records the outcome at `rate`.
    fn record(&mut self, rate: f64, passed: bool) {
        self.steps += 1;
        match passed {
            true => self.passed = Some(self.passed.map_or(rate, |p| p.max(rate))),
            false => self.failed = Some(self.failed.map_or(rate, |f| f.min(rate))),
        }
    }
}

/// One target of the search: its name in the report, its URL and the `model` it is asked for.
struct Target {
    name: &'static str,
    url: String,
    model: &'static str,
}

/// Runs `--find-max` for the bundle in `bundle_dir`: the highest open-loop rate with p99 under
/// the bound, calling the backend directly and through the router, and their ratio.
pub fn find_max(
    bundle_dir: &Path,
    catalog: &Catalog,
    prompts: &[String],
    find: &FindMax,
) -> Result<Value> {
    if !(positive(find.p99_ms) && positive(find.seconds)) {
        return Err(anyhow!("--p99-ms and --seconds must be positive"));
    }
    on_runtime(prompts, search(bundle_dir, catalog, prompts, find))
}

async fn search(
    bundle_dir: &Path,
    catalog: &Catalog,
    prompts: &[String],
    find: &FindMax,
) -> Result<Value> {
    let backend = start_backend().await?;
    let server = router_server::start(server_config(bundle_dir, catalog, backend).build()?).await?;
    let proxy = start_proxy(backend).await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(REQUEST_TIMEOUT)
        .build()?;
    let url = |addr: SocketAddr| format!("http://{addr}/v1/chat/completions");
    let targets = [
        Target {
            name: "direct",
            url: url(backend),
            model: "backend",
        },
        Target {
            name: "proxy",
            url: url(proxy),
            model: "backend",
        },
        Target {
            name: "router",
            url: url(server.local_addr()),
            model: "model-router",
        },
    ];
    let warm_up: Vec<(String, &'static str)> =
        targets.iter().map(|t| (t.url.clone(), t.model)).collect();
    run_load(&client, &warm_up, prompts, FIRST_RATE, WARM_UP_SECONDS).await?;
    let (searches, steps) = take_turns(&client, &targets, prompts, find).await?;
    // Through the load's own client: its pooled connections count against the router's
    // `max_connections`, so a new one could be refused after a heavy step.
    let metrics = client
        .get(format!("http://{}/metrics", server.local_addr()))
        .send()
        .await?;
    let metrics = metrics.error_for_status()?.text().await?;
    server.shutdown(Duration::from_secs(1)).await;
    Ok(search_report(find, &searches, &steps, &metrics))
}

/// Runs the three searches, taking turns, so that all meet the same machine (other load comes
/// and goes): each search's state and its steps.
async fn take_turns(
    client: &reqwest::Client,
    targets: &[Target; 3],
    prompts: &[String],
    find: &FindMax,
) -> Result<([RateSearch; 3], [Vec<Value>; 3])> {
    let mut searches: [RateSearch; 3] = Default::default();
    let mut steps: [Vec<Value>; 3] = Default::default();
    let bar = progress_bar(3 * MAX_STEPS, "rates tried");
    loop {
        let mut tried = false;
        for ((target, search), steps) in targets.iter().zip(&mut searches).zip(&mut steps) {
            let Some(rate) = search.next_rate() else {
                continue;
            };
            tried = true;
            bar.set_message(format!("{} {rate:.0}/s", target.name));
            let mut step = measure_rate(client, target, prompts, rate, find).await?;
            // A rate fails only when it fails twice in a row: one burst of other work on a shared
            // machine must not end a search.
            if !passed(&step) {
                steps.push(step);
                step = measure_rate(client, target, prompts, rate, find).await?;
            }
            search.record(rate, passed(&step));
            steps.push(step);
            bar.inc(1);
        }
        if !tried {
            break;
        }
    }
    bar.finish_and_clear();
    Ok((searches, steps))
}

/// The report of `--find-max`: each side's best rate, the ratios, CPU per request over the
/// direct call's and the router's stage times from its `metrics`.
fn search_report(
    find: &FindMax,
    searches: &[RateSearch; 3],
    steps: &[Vec<Value>; 3],
    metrics: &str,
) -> Value {
    let sides: Vec<Value> = searches
        .iter()
        .zip(steps)
        .map(|(search, steps)| side_report(search, steps))
        .collect();
    let rate = |side: &Value| side["max_rate_per_s"].as_f64().unwrap_or(f64::NAN);
    let cpu = |side: &Value| side["cpu_us_per_request"].as_f64().unwrap_or(f64::NAN);
    json!({
        "p99_bound_ms": find.p99_ms,
        "seconds_per_rate": find.seconds,
        "direct": sides[0],
        "proxy": sides[1],
        "router": sides[2],
        "ratio": rate(&sides[2]) / rate(&sides[0]),
        "proxy_ratio": rate(&sides[1]) / rate(&sides[0]),
        "router_over_proxy": rate(&sides[2]) / rate(&sides[1]),
        "cpu_us_per_request_over_direct": {
            "proxy": cpu(&sides[1]) - cpu(&sides[0]),
            "router": cpu(&sides[2]) - cpu(&sides[0]),
        },
        "stages": stage_means(metrics),
    })
}

/// Whether a step of [`measure_rate`] kept its bound.
fn passed(step: &Value) -> bool {
    step["passed"].as_bool() == Some(true)
}

/// A bare forwarding proxy on 127.0.0.1:0: each request's body to `backend` and its answer
/// back, with the same HTTP crates as the router (axum, reqwest) and nothing else. What any
/// router built on them pays for the second hop, without routing.
async fn start_proxy(backend: SocketAddr) -> Result<SocketAddr> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    let url = format!("http://{backend}/v1/chat/completions");
    let forward = move |body: axum::body::Bytes| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let sent = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            match sent {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let status = axum::http::StatusCode::from_u16(status)
                        .unwrap_or(axum::http::StatusCode::BAD_GATEWAY);
                    (status, response.bytes().await.unwrap_or_default())
                }
                Err(_) => (
                    axum::http::StatusCode::BAD_GATEWAY,
                    axum::body::Bytes::new(),
                ),
            }
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the bench proxy")?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route("/v1/chat/completions", post(forward));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// One rate against one target: a short warm-up, then `find.seconds` measured; it passes when
/// every request was answered and p99 is within the bound. Also the process's CPU time per
/// request (load generator, router and backend together: they share this process).
async fn measure_rate(
    client: &reqwest::Client,
    target: &Target,
    prompts: &[String],
    rate: f64,
    find: &FindMax,
) -> Result<Value> {
    let targets = [(target.url.clone(), target.model)];
    run_load(client, &targets, prompts, rate, STEP_WARM_UP_SECONDS).await?;
    let cpu_before = super::process_cpu_seconds();
    let stream = run_load(client, &targets, prompts, rate, find.seconds)
        .await?
        .into_iter()
        .next()
        .unwrap_or_default();
    let cpu_seconds = cpu_before
        .zip(super::process_cpu_seconds())
        .map(|(before, after)| after - before);
    let requests = stream.latencies_us.len() + stream.errors;
    let samples = Samples::sorted(stream.latencies_us);
    let p99_us = samples.percentile(0.99);
    Ok(json!({
        "rate_per_s": rate,
        "requests": requests,
        "errors": stream.errors,
        "p50_us": samples.p50(),
        "p99_us": p99_us,
        "cpu_us_per_request": cpu_seconds.map(|s| s * 1e6 / requests.max(1) as f64),
        "passed": stream.errors == 0 && p99_us <= find.p99_ms * 1e3,
    }))
}

/// A search's result: the highest passing rate (null when none passed), whether the search
/// stopped at [`MAX_RATE`] still passing, the figures at that rate, and every step.
fn side_report(search: &RateSearch, steps: &[Value]) -> Value {
    let best = steps.iter().filter(|s| passed(s)).max_by(|a, b| {
        a["rate_per_s"]
            .as_f64()
            .unwrap_or(0.0)
            .total_cmp(&b["rate_per_s"].as_f64().unwrap_or(0.0))
    });
    let at_best = |key: &str| best.map_or(Value::Null, |s| s[key].clone());
    json!({
        "max_rate_per_s": search.passed,
        "at_least": search.failed.is_none() && search.passed.is_some(),
        "p50_us": at_best("p50_us"),
        "p99_us": at_best("p99_us"),
        "cpu_us_per_request": at_best("cpu_us_per_request"),
        "steps": steps,
    })
}

/// The router's own time per stage over the whole search, from its `/metrics`: deciding
/// (tokenising, scoring, the policy) and waiting for the backend's response headers, as means
/// in microseconds.
fn stage_means(metrics: &str) -> Value {
    let sample = |name: &str| {
        metrics
            .lines()
            .filter_map(|l| {
                l.strip_prefix(name)?
                    .rsplit(' ')
                    .next()?
                    .parse::<f64>()
                    .ok()
            })
            .sum::<f64>()
    };
    let mean_us = |histogram: &str| {
        let count = sample(&format!("{histogram}_count"));
        (count > 0.0).then(|| sample(&format!("{histogram}_sum")) * 1e6 / count)
    };
    json!({
        "decide_mean_us": mean_us("model_router_routing_seconds"),
        "upstream_mean_us": mean_us("model_router_upstream_seconds"),
        "scorer_skipped": sample("model_router_scorer_skipped_total "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a search against a machine that sustains exactly `limit` requests per second.
    fn search_for(limit: f64) -> RateSearch {
        let mut search = RateSearch::default();
        while let Some(rate) = search.next_rate() {
            search.record(rate, rate <= limit);
        }
        search
    }

    #[test]
    fn the_search_brackets_the_limit_within_its_resolution() {
        for limit in [37.0, 250.0, 999.0, 4321.0, 61_000.0] {
            let search = search_for(limit);
            let (passed, failed) = (search.passed.unwrap(), search.failed.unwrap());
            assert!(
                passed <= limit && limit < failed,
                "{limit}: {passed}..{failed}"
            );
            assert!(failed / passed <= RESOLUTION, "{limit}: {passed}..{failed}");
            assert!(search.steps <= MAX_STEPS);
        }
    }

    #[test]
    fn the_search_stops_at_its_bounds() {
        let fast = search_for(f64::INFINITY);
        assert!(
            fast.failed.is_none()
                && fast
                    .passed
                    .is_some_and(|p| p <= MAX_RATE && p * 2.0 > MAX_RATE)
        );
        let slow = search_for(0.0);
        assert!(slow.passed.is_none() && slow.failed.is_some_and(|f| f >= MIN_RATE));
    }

    #[test]
    fn stage_means_read_the_router_metrics() {
        let metrics = "# HELP x\nmodel_router_routing_seconds_sum 0.5\nmodel_router_routing_seconds_count 100\n\
                       model_router_upstream_seconds_sum{deployment=\"a\"} 1\nmodel_router_upstream_seconds_count{deployment=\"a\"} 10\n\
                       model_router_upstream_seconds_sum{deployment=\"b\"} 1\nmodel_router_upstream_seconds_count{deployment=\"b\"} 10\n\
                       model_router_scorer_skipped_total 3\n";
        let means = stage_means(metrics);
        assert_eq!(means["decide_mean_us"], 5000.0);
        assert_eq!(means["upstream_mean_us"], 100_000.0);
        assert_eq!(means["scorer_skipped"], 3.0);
    }
}
