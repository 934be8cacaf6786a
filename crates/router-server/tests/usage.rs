//! Usage recorded for every request (issue #15), end to end: the server in-process on
//! 127.0.0.1:0 in front of a loopback OpenAI-compatible mock, requests with and without
//! `store: true`, JSON and streamed, with and without reported usage, and a provisioned
//! deployment that answers 429 so that requests spill; after the server stops, the usage rows
//! in the database say exactly what was sent. Every wait is bounded.

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::{bundle, collect_stream, gpt4_and_gpt35, send, Backend, Server};
use router_server::{
    DeploymentSection, ServerConfig, ServerConfigBuilder, StoreSection, UsageSection,
};
use router_store::{Store, StoreOptions, UsageRow};
use serde_json::{json, Value};
use tempfile::TempDir;

mod common;

const GPT4: &str = "gpt-4-1106-preview";
const GPT35: &str = "gpt-3.5-turbo-1106";

/// The mock: `up-ptu` answers 429 (Retry-After 30 s); the others answer with usage 5 in / 3 out,
/// or stream "Hel", "lo" with a usage chunk (11 in / 2 out) only when
/// `stream_options.include_usage`.
async fn backend(State(hits): State<Arc<AtomicUsize>>, body: Bytes) -> Response {
    hits.fetch_add(1, Ordering::SeqCst);
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = body["model"].as_str().unwrap_or("?").to_string();
    if model == "up-ptu" {
        let error =
            json!({"error": {"message": "rate limited", "type": "requests", "code": "429"}});
        return (
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "30")],
            axum::Json(error),
        )
            .into_response();
    }
    if body["stream"] == true {
        let chunk = |mut event: Value| {
            event["id"] = json!("c");
            event["object"] = json!("chat.completion.chunk");
            event["model"] = json!(model);
            format!("data: {event}\n\n")
        };
        let mut events = vec![
            chunk(
                json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]}),
            ),
            chunk(
                json!({"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]}),
            ),
        ];
        if body["stream_options"]["include_usage"] == true {
            events.push(chunk(json!({"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}})));
        }
        events.push("data: [DONE]\n\n".into());
        let stream = futures_util::stream::iter(
            events
                .into_iter()
                .map(|e| Ok::<Bytes, std::convert::Infallible>(Bytes::from(e))),
        );
        return (
            [("content-type", "text/event-stream")],
            Body::from_stream(stream),
        )
            .into_response();
    }
    let answer = json!({
        "id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello world"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    });
    axum::Json(answer).into_response()
}

/// A config in front of the mock at `url`: gpt-4 on the provisioned `ptu` (always 429) that
/// spills to `paygo`; gpt-3.5 on `d35`.
fn config(dir: &Path, url: &str) -> ServerConfigBuilder {
    gpt4_and_gpt35(
        ServerConfig::builder(bundle())
            .named("usage-test.toml")
            .base_dir(dir)
            .listen("127.0.0.1:0".parse().unwrap()),
        GPT4,
        GPT35,
        "ptu",
    )
    .deployment(DeploymentSection::openai("ptu", url, "up-ptu").provisioned("paygo"))
    .deployment(DeploymentSection::openai("paygo", url, "up-4"))
    .deployment(DeploymentSection::openai("d35", url, "up-35"))
}

async fn mock() -> (Backend, String) {
    let app = axum::Router::new()
        .route("/v1/chat/completions", post(backend))
        .with_state(Arc::new(AtomicUsize::new(0)));
    let backend = Backend::serve(app).await;
    let url = format!("http://{}/v1", backend.addr);
    (backend, url)
}

async fn chat(server: &Server, body: Value) -> reqwest::Response {
    let r = send(
        server
            .request(reqwest::Method::POST, "/v1/chat/completions")
            .json(&body),
    )
    .await;
    assert_eq!(r.status(), 200, "{body}");
    r
}

fn message(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

/// The rows summed over minutes (a test may straddle a minute), by (deployment, spilled from).
fn by_deployment(rows: Vec<UsageRow>) -> BTreeMap<(String, String), UsageRow> {
    let mut sums: BTreeMap<(String, String), UsageRow> = BTreeMap::new();
    for row in rows {
        let key = (row.deployment.clone(), row.spillover_from.clone());
        sums.entry(key)
            .or_insert_with(|| UsageRow {
                minute: 0,
                ..UsageRow::new(0, &row.deployment, &row.model)
            })
            .add(&row);
    }
    sums
}

#[tokio::test]
async fn every_request_is_counted_on_its_deployment_with_and_without_store() {
    let (_backend, url) = mock().await;
    let dir = TempDir::new().unwrap();
    let server =
        Server::start(config(dir.path(), &url).store(StoreSection::sqlite("completions.db"))).await;
    // gpt-3.5 on d35: 3 stored, 4 not, one streamed with usage and one without.
    for i in 0..7 {
        let mut body = message(GPT35, &format!("question {i}"));
        if i < 3 {
            body["store"] = json!(true);
        }
        chat(&server, body).await;
    }
    let mut streamed = message(GPT35, "stream with usage");
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    collect_stream(chat(&server, streamed.clone()).await, |_| {}).await;
    streamed["store"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": false});
    let text = collect_stream(chat(&server, streamed).await, |_| {}).await;
    assert!(text.contains("[DONE]"), "{text}");
    // gpt-4: ptu answers 429 twice (the second cools it down), the third skips it; all spill.
    for i in 0..3 {
        let r = chat(&server, message(GPT4, &format!("big question {i}"))).await;
        assert_eq!(
            common::header(&r, "x-ms-spillover-from-deployment").as_deref(),
            Some("ptu")
        );
    }
    server.stop().await;

    let store = Store::open(dir.path().join("completions.db"), StoreOptions::default()).unwrap();
    let usage = by_deployment(store.usage(None).unwrap());
    let keys: Vec<(&str, &str)> = usage
        .keys()
        .map(|(d, f)| (d.as_str(), f.as_str()))
        .collect();
    assert_eq!(keys, [("d35", ""), ("paygo", "ptu"), ("ptu", "")]);

    let d35 = &usage[&("d35".to_string(), String::new())];
    let estimated_out = router_policy::estimate_tokens("Hello") as u64;
    assert_eq!((d35.requests, d35.estimated, d35.throttled), (9, 1, 0));
    assert_eq!(
        d35.output_tokens,
        7 * 3 + 2 + estimated_out,
        "reported, streamed and estimated"
    );
    assert!(
        d35.input_tokens > 7 * 5 + 11,
        "the unreported stream's prompt is estimated: {d35:?}"
    );
    assert_eq!(d35.model, GPT35);

    let spilled = &usage[&("paygo".to_string(), "ptu".to_string())];
    assert_eq!(
        (
            spilled.requests,
            spilled.input_tokens,
            spilled.output_tokens,
            spilled.model.as_str()
        ),
        (3, 15, 9, GPT4)
    );
    let ptu = &usage[&("ptu".to_string(), String::new())];
    assert_eq!(
        (ptu.requests, ptu.throttled),
        (0, 2),
        "two 429s met; the cooled third skipped it"
    );
}

#[tokio::test]
async fn without_a_store_usage_goes_to_its_own_file_every_flush_interval() {
    let (_backend, url) = mock().await;
    let dir = TempDir::new().unwrap();
    let usage = UsageSection {
        path: Some("usage.db".into()),
        retention_days: Some(30),
        flush_interval_ms: Some(100),
    };
    let server = Server::start(config(dir.path(), &url).usage(usage)).await;
    for i in 0..2 {
        chat(&server, message(GPT35, &format!("question {i}"))).await;
    }
    let file = dir.path().join("usage.db");
    let mut rows = Vec::new();
    for _ in 0..100 {
        rows = Store::open(&file, StoreOptions::default())
            .unwrap()
            .usage(None)
            .unwrap();
        if rows.iter().map(|r| r.requests).sum::<u64>() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let summed = by_deployment(rows);
    let d35 = &summed[&("d35".to_string(), String::new())];
    assert_eq!(
        (d35.requests, d35.input_tokens, d35.output_tokens),
        (2, 10, 6),
        "written before shutdown"
    );
    server.stop().await;
}

#[test]
fn usage_needs_a_store_or_a_file() {
    let dir = TempDir::new().unwrap();
    let e = config(dir.path(), "http://127.0.0.1:9/v1")
        .usage(UsageSection::default())
        .build()
        .unwrap_err();
    assert!(
        e.to_string().contains("usage.path") && e.to_string().contains("without `[store]`"),
        "{e}"
    );
    let e = config(dir.path(), "http://127.0.0.1:9/v1")
        .usage(UsageSection {
            path: Some("u.db".into()),
            retention_days: Some(0),
            flush_interval_ms: None,
        })
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("usage.retention_days"), "{e}");
    let none = config(dir.path(), "http://127.0.0.1:9/v1").build().unwrap();
    assert!(
        none.usage.is_none(),
        "neither [store] nor [usage]: not recorded"
    );
}

/// The cost of recording usage, measured (run by hand: `cargo test -p router-server --test usage
/// -- --ignored --nocapture`): sequential requests to a model by name, in alternating rounds,
/// straight to the mock, through a server without usage and through one writing a usage file
/// (flushed every 100 ms, so the flushes fall inside the measurement). The proxy overhead is a
/// server's median latency minus the mock's; recording must move it by less than 10 %.
#[tokio::test]
#[ignore = "a measurement: run by hand with --ignored --nocapture"]
async fn recording_usage_moves_the_proxy_overhead_by_less_than_ten_percent() {
    let (_backend, url) = mock().await;
    let dir = TempDir::new().unwrap();
    let plain = Server::start(config(dir.path(), &url)).await;
    let usage = UsageSection {
        path: Some("usage.db".into()),
        retention_days: None,
        flush_interval_ms: Some(100),
    };
    let recording = Server::start(config(dir.path(), &url).usage(usage)).await;
    let http = reqwest::Client::new();
    let targets = [
        format!("{url}/chat/completions"),
        plain.url("/v1/chat/completions"),
        recording.url("/v1/chat/completions"),
    ];
    let mut latencies_us: [Vec<f64>; 3] = Default::default();
    for round in 0..40 {
        for (target, samples) in targets.iter().zip(latencies_us.iter_mut()) {
            for i in 0..50 {
                let body = message(GPT35, &format!("question {round} {i}"));
                let start = std::time::Instant::now();
                let r = http.post(target).json(&body).send().await.unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap();
                samples.push(start.elapsed().as_secs_f64() * 1e6);
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let [direct, without, with] = latencies_us.map(|mut v| median(&mut v));
    let (overhead_without, overhead_with) = (without - direct, with - direct);
    println!(
        "median latency (µs): mock {direct:.0}, server {without:.0}, server recording usage {with:.0}; \
         proxy overhead {overhead_without:.0} → {overhead_with:.0} ({:+.1} %)",
        (overhead_with / overhead_without - 1.0) * 100.0
    );
    plain.stop().await;
    recording.stop().await;
    let rows = Store::open(dir.path().join("usage.db"), StoreOptions::default())
        .unwrap()
        .usage(None)
        .unwrap();
    assert_eq!(
        rows.iter().map(|r| r.requests).sum::<u64>(),
        2000,
        "every request recorded"
    );
    assert!(
        overhead_with < overhead_without * 1.1,
        "usage recording moved the overhead by 10 % or more"
    );
}
