//! `model-router bench --capacity`: cooldown-only dispatch against capacity-aware dispatch, in
//! one run, on loopback mocks: a provisioned deployment that enforces a tokens-per-window limit
//! (answering 429 above it, with or without OpenAI's rate-limit headers) spilling over to a
//! pay-as-you-go deployment without a limit, under the same bursty load for every scenario.
//!
//! The mocks answer after 20–50 ms (a request's round trip to a region), 429s included, so a
//! request that meets a 429 before spilling pays one round trip more than one that spills at once.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Json;
use indicatif::ProgressBar;
use model_router::router_training::embed::progress_bar;
use router_dispatch::{Deployment, DeploymentKind, DispatchOptions, DispatchRequest, Dispatcher};
use serde_json::{json, Value};

/// The sliding window both the provisioned mock and the dispatcher count in: 10 s, as Azure
/// enforces per-minute limits over shorter intervals; it also lets a short run see it slide.
const WINDOW: Duration = Duration::from_secs(10);
/// The provisioned deployment's capacity per minute (20,000 tokens per 10-second window).
const PROVISIONED_TPM: u64 = 120_000;
/// Requests per second between bursts and during them; a burst lasts `BURST_SECONDS` of every
/// `BURST_PERIOD` seconds. Demand averages 10.8 requests/s (about 3,600 tokens/s as the mock
/// counts them) against the provisioned 2,000 tokens/s: the bursts must spill.
const BASE_RATE: f64 = 6.0;
const BURST_RATE: f64 = 30.0;
const BURST_SECONDS: f64 = 2.0;
const BURST_PERIOD: f64 = 10.0;

/// One way of dispatching, measured against its own pair of mocks.
#[derive(Clone, Copy)]
struct Scenario {
    name: &'static str,
    capacity_aware: bool,
    /// `capacity_tpm` declared on the provisioned deployment (the mock's limit).
    declared: bool,
    /// The provisioned mock sends `x-ratelimit-*` headers.
    headers: bool,
}

const SCENARIOS: [Scenario; 4] = [
    Scenario {
        name: "cooldown-only",
        capacity_aware: false,
        declared: false,
        headers: true,
    },
    Scenario {
        name: "capacity: declared tpm",
        capacity_aware: true,
        declared: true,
        headers: false,
    },
    Scenario {
        name: "capacity: tpm + headers",
        capacity_aware: true,
        declared: true,
        headers: true,
    },
    Scenario {
        name: "capacity: headers only",
        capacity_aware: true,
        declared: false,
        headers: true,
    },
];

/// Runs every scenario at once for `seconds` of load and returns the report.
pub fn run(seconds: f64) -> Result<Value> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(measure(seconds))
}

async fn measure(seconds: f64) -> Result<Value> {
    let schedule = Arc::new(schedule(seconds));
    let bar = progress_bar(schedule.len() * SCENARIOS.len(), "dispatching");
    // Every scenario runs at the same time, each on its own task against its own mocks.
    let runs: Vec<_> = SCENARIOS
        .iter()
        .map(|s| tokio::spawn(run_scenario(*s, schedule.clone(), bar.clone())))
        .collect();
    let mut results = Vec::with_capacity(runs.len());
    for run in runs {
        results.push(run.await.context("a scenario failed")??);
    }
    bar.finish_and_clear();
    let rows: Vec<Value> = SCENARIOS
        .iter()
        .zip(&results)
        .map(|(s, r)| r.report(s))
        .collect();
    let baseline = &rows[0];
    let ratio = |row: &Value, key: &str| {
        row[key]
            .as_f64()
            .zip(baseline[key].as_f64())
            .map(|(a, b)| a / b)
    };
    let comparisons: Vec<Value> = rows[1..]
        .iter()
        .map(|row| {
            json!({
                "scenario": row["scenario"],
                "met_429_ratio": ratio(row, "met_429"),
                "p90_spilled_ratio": ratio(row, "p90_spilled_ms"),
                "p99_spilled_ratio": ratio(row, "p99_spilled_ms"),
                "provisioned_share_points": row["provisioned_share"].as_f64().zip(baseline["provisioned_share"].as_f64()).map(|(a, b)| (a - b) * 100.0),
            })
        })
        .collect();
    Ok(json!({
        "seconds": seconds,
        "window_s": WINDOW.as_secs(),
        "provisioned_tpm": PROVISIONED_TPM,
        "requests_per_scenario": schedule.len(),
        "scenarios": rows,
        "against_cooldown_only": comparisons,
    }))
}

/// When each request is due, from the start: `BASE_RATE` per second, `BURST_RATE` inside bursts.
fn schedule(seconds: f64) -> Vec<Duration> {
    let mut due = Vec::new();
    let mut t = 0.0;
    while t < seconds {
        due.push(Duration::from_secs_f64(t));
        let rate = if t % BURST_PERIOD < BURST_SECONDS {
            BURST_RATE
        } else {
            BASE_RATE
        };
        t += 1.0 / rate;
    }
    due
}

/// Request `i` of the load: a prompt of 10–49 words and a `max_tokens` of 150–349, varied
/// deterministically so every scenario sends the same requests.
fn request_body(i: usize) -> Value {
    let words = 10 + (i * 13) % 40;
    let prompt: Vec<&str> = (0..words)
        .map(|w| {
            [
                "summarise",
                "the",
                "quarterly",
                "report",
                "in",
                "plain",
                "words",
            ][w % 7]
        })
        .collect();
    json!({
        "model": "router",
        "messages": [{"role": "user", "content": format!("Request {i}: {}", prompt.join(" "))}],
        "max_tokens": 150 + (i * 53) % 200,
    })
}

/// What one request came to.
struct Served {
    provisioned: bool,
    spilled: bool,
    met_429: bool,
    latency: Duration,
}

/// What one scenario came to.
struct Outcome {
    served: Vec<Served>,
    errors: usize,
    mock_429s: u64,
}

impl Outcome {
    fn report(&self, scenario: &Scenario) -> Value {
        let ms = |d: &Duration| d.as_secs_f64() * 1e3;
        let mut spilled: Vec<f64> = self
            .served
            .iter()
            .filter(|s| s.spilled)
            .map(|s| ms(&s.latency))
            .collect();
        let mut all: Vec<f64> = self.served.iter().map(|s| ms(&s.latency)).collect();
        let provisioned = self.served.iter().filter(|s| s.provisioned).count();
        json!({
            "scenario": scenario.name,
            "capacity_aware": scenario.capacity_aware,
            "declared_tpm": scenario.declared.then_some(PROVISIONED_TPM),
            "mock_headers": scenario.headers,
            "served": self.served.len(),
            "errors": self.errors,
            "met_429": self.served.iter().filter(|s| s.met_429).count(),
            "mock_429s": self.mock_429s,
            "spilled": spilled.len(),
            "provisioned_share": provisioned as f64 / self.served.len().max(1) as f64,
            "p99_spilled_ms": percentile(&mut spilled, 0.99),
            "p50_spilled_ms": percentile(&mut spilled, 0.50),
            "p90_spilled_ms": percentile(&mut spilled, 0.90),
            "p50_ms": percentile(&mut all, 0.50),
            "p99_ms": percentile(&mut all, 0.99),
        })
    }
}

/// The `quantile` of `values` (nearest rank), `None` when empty.
fn percentile(values: &mut [f64], quantile: f64) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let last = values.len().checked_sub(1)?;
    Some(values[((last as f64) * quantile).round() as usize])
}

async fn run_scenario(
    scenario: Scenario,
    schedule: Arc<Vec<Duration>>,
    bar: ProgressBar,
) -> Result<Outcome> {
    let provisioned = Arc::new(ProvisionedMock::new(
        PROVISIONED_TPM * WINDOW.as_secs() / 60,
        scenario.headers,
    ));
    let ptu_addr = serve(
        axum::Router::new()
            .route("/v1/chat/completions", post(answer_provisioned))
            .with_state(provisioned.clone()),
    )
    .await?;
    let payg_addr =
        serve(axum::Router::new().route("/v1/chat/completions", post(answer_payg))).await?;
    let url =
        |addr: SocketAddr| reqwest::Url::parse(&format!("http://{addr}/v1")).context("mock URL");
    let mut ptu = Deployment::new("ptu", DeploymentKind::OpenAi, url(ptu_addr)?, "gpt-4o");
    ptu.provisioned = true;
    ptu.spillover = Some("payg".into());
    ptu.capacity_tpm = scenario.declared.then_some(PROVISIONED_TPM);
    let payg = Deployment::new("payg", DeploymentKind::OpenAi, url(payg_addr)?, "gpt-4o");
    let options = DispatchOptions {
        capacity_aware: scenario.capacity_aware,
        capacity_window: WINDOW,
        ..DispatchOptions::default()
    };
    let dispatcher = Arc::new(Dispatcher::new(vec![ptu, payg], options)?);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(schedule.len());
    for (i, offset) in schedule.iter().enumerate() {
        let due = start + *offset;
        tokio::time::sleep_until(due).await;
        let (dispatcher, bar) = (dispatcher.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            let served = send_one(&dispatcher, i, due).await;
            bar.inc(1);
            served
        }));
    }
    let mut outcome = Outcome {
        served: Vec::with_capacity(tasks.len()),
        errors: 0,
        mock_429s: 0,
    };
    for task in tasks {
        match task.await.context("a load task failed")? {
            Some(served) => outcome.served.push(served),
            None => outcome.errors += 1,
        }
    }
    outcome.mock_429s = provisioned.refused.load(Ordering::Relaxed);
    Ok(outcome)
}

/// Dispatches request `i`, due at `due`; its latency runs from `due` to the answer's headers
/// (a late start counts as latency).
async fn send_one(dispatcher: &Dispatcher, i: usize, due: tokio::time::Instant) -> Option<Served> {
    let deployments = ["ptu".to_string()];
    let body = request_body(i);
    let dispatched = dispatcher
        .dispatch(DispatchRequest {
            deployments: &deployments,
            body: &body,
            spillover: None,
        })
        .await
        .ok()?;
    let latency = due.elapsed();
    if !dispatched.response.status().is_success() || dispatched.response.bytes().await.is_err() {
        return None;
    }
    Some(Served {
        provisioned: dispatched.deployment == "ptu",
        spilled: dispatched.spillover_from.is_some(),
        met_429: !dispatched.throttled.is_empty(),
        latency,
    })
}

/// Serves `app` on 127.0.0.1 for the rest of the run.
async fn serve(app: axum::Router) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a mock backend")?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// A provisioned deployment: a sliding `WINDOW` of the tokens it admitted, a 429 above
/// `limit`, counted at arrival as OpenAI and Azure admit requests: the prompt's tokens plus
/// `max_tokens`.
struct ProvisionedMock {
    limit: u64,
    headers: bool,
    window: Mutex<VecDeque<(Instant, u64)>>,
    refused: AtomicU64,
}

impl ProvisionedMock {
    fn new(limit: u64, headers: bool) -> Self {
        ProvisionedMock {
            limit,
            headers,
            window: Mutex::new(VecDeque::new()),
            refused: AtomicU64::new(0),
        }
    }

    /// Admits `tokens` now or refuses them; returns whether it admitted, the tokens left, and
    /// the time until the window's oldest entry leaves it (when room next grows).
    fn admit(&self, tokens: u64) -> (bool, u64, Duration) {
        let now = Instant::now();
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        while window
            .front()
            .is_some_and(|&(at, _)| now.duration_since(at) >= WINDOW)
        {
            window.pop_front();
        }
        let used: u64 = window.iter().map(|&(_, t)| t).sum();
        let admitted = used + tokens <= self.limit;
        if admitted {
            window.push_back((now, tokens));
        }
        let left = self
            .limit
            .saturating_sub(if admitted { used + tokens } else { used });
        let next_room = window.front().map_or(Duration::ZERO, |&(at, _)| {
            (at + WINDOW).saturating_duration_since(now)
        });
        (admitted, left, next_room)
    }
}

/// The tokens the mock counts: a tokenizer's usual 4 characters per token, 3 per message
/// for its framing and 3 for the reply's, plus `max_tokens`.
fn mock_tokens(body: &Value) -> u64 {
    let messages = body["messages"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let prompt: u64 = messages
        .iter()
        .map(|m| m["content"].as_str().unwrap_or("").len().div_ceil(4) as u64 + 3)
        .sum();
    prompt + 3 + body["max_tokens"].as_u64().unwrap_or(0)
}

/// 20–50 ms, varied by the request's own length.
fn mock_latency(body: &Value) -> Duration {
    Duration::from_millis(20 + (body.to_string().len() as u64 * 7) % 31)
}

async fn answer_provisioned(
    State(mock): State<Arc<ProvisionedMock>>,
    Json(body): Json<Value>,
) -> Response {
    let (admitted, left, next_room) = mock.admit(mock_tokens(&body));
    tokio::time::sleep(mock_latency(&body)).await;
    let mut headers = HeaderMap::new();
    let mut set = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    if mock.headers {
        // Azure's pair (no limit header): what is left, and when room next grows.
        set("x-ratelimit-remaining-tokens", left.to_string());
        set(
            "x-ratelimit-reset-tokens",
            format!("{}ms", next_room.as_millis()),
        );
    }
    if !admitted {
        mock.refused.fetch_add(1, Ordering::Relaxed);
        set("retry-after-ms", next_room.as_millis().to_string());
        return (
            StatusCode::TOO_MANY_REQUESTS,
            headers,
            Json(json!({"error": {"message": "rate limited", "type": "rate_limit"}})),
        )
            .into_response();
    }
    (headers, Json(completion(&body))).into_response()
}

async fn answer_payg(Json(body): Json<Value>) -> Json<Value> {
    tokio::time::sleep(mock_latency(&body)).await;
    Json(completion(&body))
}

fn completion(body: &Value) -> Value {
    json!({
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
    })
}

/// Prints the report: one JSON object with `json`, else a table and the ratios.
pub fn print(report: Value, json: bool) -> Result<()> {
    if json {
        println!("{report}");
        return Ok(());
    }
    println!(
        "model-router bench --capacity ({} build): {} requests per scenario over {} s; provisioned {} tokens/min over a {} s window, spilling to pay-as-you-go; mocks answer in 20-50 ms",
        super::build_profile(), report["requests_per_scenario"], report["seconds"], report["provisioned_tpm"], report["window_s"]
    );
    let number = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.1}"));
    println!(
        "  {:<24} {:>6} {:>6} {:>7} {:>7} {:>11} {:>26} {:>7} {:>7}",
        "scenario",
        "served",
        "errors",
        "met 429",
        "spilled",
        "provisioned",
        "spilled p50/p90/p99 ms",
        "p50 ms",
        "p99 ms"
    );
    for row in report["scenarios"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        println!(
            "  {:<24} {:>6} {:>6} {:>7} {:>7} {:>10.1}% {:>26} {:>7} {:>7}",
            row["scenario"].as_str().unwrap_or(""),
            row["served"].to_string(),
            row["errors"].to_string(),
            row["met_429"].to_string(),
            row["spilled"].to_string(),
            row["provisioned_share"].as_f64().unwrap_or(f64::NAN) * 100.0,
            format!(
                "{} / {} / {}",
                number(&row["p50_spilled_ms"]),
                number(&row["p90_spilled_ms"]),
                number(&row["p99_spilled_ms"])
            ),
            number(&row["p50_ms"]),
            number(&row["p99_ms"]),
        );
    }
    println!("  against cooldown-only:");
    for row in report["against_cooldown_only"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        println!(
            "    {:<24} met 429 x{}, p90 spilled x{}, p99 spilled x{}, provisioned share {:+.1} points",
            row["scenario"].as_str().unwrap_or(""),
            row["met_429_ratio"].as_f64().map_or("-".into(), |x| format!("{x:.3}")),
            row["p90_spilled_ratio"].as_f64().map_or("-".into(), |x| format!("{x:.3}")),
            row["p99_spilled_ratio"].as_f64().map_or("-".into(), |x| format!("{x:.3}")),
            row["provisioned_share_points"].as_f64().unwrap_or(f64::NAN),
        );
    }
    Ok(())
}
