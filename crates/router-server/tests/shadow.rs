//! Shadow traffic end to end: the server in-process on 127.0.0.1:0 with `[store]` and `[shadow]`
//! in front of a local OpenAI-compatible mock whose deployments answer "answer from <model>"; one
//! of its models can be made to hang until the test releases it. Every wait is bounded; servers
//! stop at the end of each test.

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::{bundle, collect_stream, header, json_of, send, text_of, Backend, Server};
use router_policy::ModelSpec;
use router_server::{DeploymentSection, ServerConfig, ShadowSection, StoreSection};
use router_store::{Completion, ListQuery, Store, StoreOptions, ROUTER_OWNER};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::sync::Semaphore;

mod common;

const GPT4: &str = "gpt-4-1106-preview";
const GPT35: &str = "gpt-3.5-turbo-1106";
const MIXTRAL: &str = "mistralai/mixtral-8x7b-chat";
/// A catalog model the bundle does not predict: served when named, shadowed, never routed to.
const CANDIDATE: &str = "candidate-x";

/// The mock backend: every request body it saw, and the upstream model that hangs.
struct Mock {
    seen: Mutex<Vec<Value>>,
    hang_model: Option<&'static str>,
    /// Requests for `hang_model` that arrived (and wait for `release`).
    entered: AtomicUsize,
    release: Semaphore,
}

impl Mock {
    fn new(hang_model: Option<&'static str>) -> Arc<Mock> {
        Arc::new(Mock {
            seen: Mutex::new(Vec::new()),
            hang_model,
            entered: AtomicUsize::new(0),
            release: Semaphore::new(0),
        })
    }

    fn seen_by(&self, upstream: &str) -> Vec<Value> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|b| b["model"] == upstream)
            .cloned()
            .collect()
    }

    /// Waits (at most 10 s) until `n` requests for the hanging model have arrived.
    async fn wait_entered(&self, n: usize) {
        for _ in 0..200 {
            if self.entered.load(Ordering::SeqCst) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the hanging backend never got {n} requests");
    }
}

async fn backend(State(mock): State<Arc<Mock>>, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    mock.seen.lock().unwrap().push(body.clone());
    let model = body["model"].as_str().unwrap_or("?").to_string();
    if mock.hang_model == Some(model.as_str()) {
        mock.entered.fetch_add(1, Ordering::SeqCst);
        let _permit = mock.release.acquire().await;
    }
    if body["stream"] == true {
        let chunk = |delta: Value, finish: Value| {
            format!(
                "data: {}\n\n",
                json!({"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            )
        };
        let events = [
            chunk(json!({"role": "assistant", "content": "Hel"}), Value::Null),
            chunk(json!({"content": "lo"}), json!("stop")),
            "data: [DONE]\n\n".to_string(),
        ];
        let stream = futures_util::stream::iter(
            events.map(|e| Ok::<Bytes, std::convert::Infallible>(Bytes::from(e))),
        );
        return (
            [("content-type", "text/event-stream")],
            Body::from_stream(stream),
        )
            .into_response();
    }
    axum::Json(json!({
        "id": format!("chatcmpl-{model}"), "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("answer from {model}")}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    }))
    .into_response()
}

struct Env {
    mock: Arc<Mock>,
    _backend: Backend,
    server: Server,
    dir: TempDir,
}

impl Env {
    /// A server whose `[shadow]` section is `shadow`, routing to GPT-3.5 only (the
    /// `x-router-subset` of [`Env::chat`]), with models GPT-4, GPT-3.5 and Mixtral.
    async fn start(mock: Arc<Mock>, shadow: Option<ShadowSection>) -> Env {
        let app = axum::Router::new()
            .route("/v1/chat/completions", post(backend))
            .with_state(mock.clone());
        let backend = Backend::serve(app).await;
        let url = format!("http://{}/v1", backend.addr);
        let dir = TempDir::new().unwrap();
        let mut config = ServerConfig::builder(bundle())
            .named("shadow-test.toml")
            .base_dir(dir.path())
            .env(|_| None)
            .listen("127.0.0.1:0".parse().unwrap())
            .access_log(false)
            .dispatch(|d| {
                d.timeout_ms = Some(20_000);
                d.max_retries = Some(0);
            })
            .store(StoreSection::sqlite("completions.db"));
        for (name, deployment, upstream, price) in [
            (GPT4, "d4", "up-4", 10.0),
            (GPT35, "d35", "up-35", 1.0),
            (MIXTRAL, "dmx", "up-mx", 0.5),
            (CANDIDATE, "dcx", "up-cx", 2.0),
        ] {
            config = config
                .model(ModelSpec::new(name, price, price, 16_000).deployments([deployment]))
                .deployment(DeploymentSection::openai(deployment, &url, upstream));
        }
        if let Some(shadow) = shadow {
            config = config.shadow(shadow);
        }
        let server = Server::start(config).await;
        Env {
            mock,
            _backend: backend,
            server,
            dir,
        }
    }

    /// A routed request (the router's name), routed among GPT-3.5 only.
    async fn chat(&self, body: Value) -> reqwest::Response {
        let mut body = body;
        body["model"] = json!("model-router");
        send(
            self.server
                .request(reqwest::Method::POST, "/v1/chat/completions")
                .header("x-router-subset", GPT35)
                .json(&body),
        )
        .await
    }

    async fn metrics(&self) -> String {
        text_of(self.server.get("/metrics")).await
    }

    /// Waits (at most 10 s) until the metrics page has `line`.
    async fn wait_metric(&self, line: &str) -> String {
        for _ in 0..200 {
            let metrics = self.metrics().await;
            if metrics.contains(line) {
                return metrics;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no `{line}` in\n{}", self.metrics().await);
    }

    fn store(&self) -> Store {
        Store::open(
            self.dir.path().join("completions.db"),
            StoreOptions::default(),
        )
        .unwrap()
    }

    /// Every original (non-shadow) record, of any owner, oldest first.
    fn originals(&self) -> Vec<Completion> {
        self.store().list(&ListQuery::default()).unwrap().data
    }

    async fn stop(self) {
        self.mock.release.add_permits(1000);
        self.server.stop().await;
    }
}

/// `[shadow]` of every routed request to `models`, within `max_cost_per_day` USD.
fn shadow_all(models: &[&str], max_cost_per_day: f64) -> Option<ShadowSection> {
    Some(ShadowSection {
        rate: 1.0,
        models: models.iter().map(|m| m.to_string()).collect(),
        max_cost_per_day,
        ..ShadowSection::default()
    })
}

fn answer_text(record: &Completion) -> String {
    record.response["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The value of the sample line `name VALUE`.
fn metric_value(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
}

/// The client's view of a JSON answer: everything but the upstream's id.
fn client_view(mut body: Value) -> Value {
    body.as_object_mut().unwrap().remove("id");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_routed_request_is_shadowed_stored_and_linked_and_the_client_answer_is_unchanged() {
    let env = Env::start(Mock::new(None), shadow_all(&[GPT4, GPT35, MIXTRAL], 5.0)).await;
    let plain = Env::start(Mock::new(None), None).await;
    let question =
        json!({"messages": [{"role": "user", "content": "What is 2+2?"}], "stream": false});

    let r = env.chat(question.clone()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-router-model").as_deref(), Some(GPT35));
    assert_eq!(
        header(&r, "x-router-store"),
        None,
        "nothing said about storing"
    );
    let shadowed = json_of(r).await;
    let unshadowed = json_of(plain.chat(question.clone()).await).await;
    assert_eq!(client_view(shadowed.clone()), client_view(unshadowed));
    assert_eq!(
        shadowed["choices"][0]["message"]["content"],
        "answer from up-35"
    );

    // The two other models answer in the background, each stored with the original's id.
    let metrics = env.wait_metric("model_router_shadow_sent_total 2").await;
    // (5 + 3) tokens at GPT-4's $10 and Mixtral's $0.5 per million.
    let cost = metric_value(&metrics, "model_router_shadow_cost_usd_total");
    assert!((cost - 8.4e-5).abs() < 1e-12, "{cost}");
    let originals = env.originals();
    assert_eq!(originals.len(), 1);
    let original = &originals[0];
    assert_eq!(
        (original.owner.as_str(), original.model.as_str()),
        (ROUTER_OWNER, GPT35)
    );
    assert_eq!(answer_text(original), "answer from up-35");
    assert!(
        original.decision.is_some(),
        "the original keeps its decision"
    );
    let shadows = env.store().shadows_of(&original.id).unwrap();
    let mut got: Vec<(String, String)> = shadows
        .iter()
        .map(|s| (s.model.clone(), answer_text(s)))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (GPT4.to_string(), "answer from up-4".to_string()),
            (MIXTRAL.to_string(), "answer from up-mx".to_string())
        ]
    );
    for shadow in &shadows {
        assert_eq!(shadow.shadow_of.as_deref(), Some(original.id.as_str()));
        assert_eq!(shadow.messages, original.messages, "the same request");
        assert!(shadow.cost_usd > 0.0 && shadow.usage.is_some());
    }
    // The shadow calls were plain requests: not streamed, no `store`.
    for upstream in ["up-4", "up-mx"] {
        let seen = env.mock.seen_by(upstream);
        assert_eq!(seen.len(), 1, "{upstream}: {seen:?}");
        assert!(
            seen[0].get("stream").is_none() && seen[0].get("store").is_none(),
            "{seen:?}"
        );
    }
    // The client's list does not change meaning: it never asked to store anything.
    let list = json_of(send(env.server.get("/v1/chat/completions")).await).await;
    assert_eq!(list["data"], json!([]), "{list}");
    // Shadows are not router traffic: one routed request counted, to GPT-3.5 only.
    let requests: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("model_router_requests_total{"))
        .collect();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(
        requests[0].contains(GPT35) && requests[0].ends_with(" 1"),
        "{requests:?}"
    );

    // A stored request: the original is the client's record, its shadows stay out of its list.
    let r = env
        .chat(json!({"messages": [{"role": "user", "content": "Name a colour."}], "store": true, "metadata": {"task": "colours"}}))
        .await;
    let stored_id = header(&r, "x-router-store").unwrap().replace("stored ", "");
    env.wait_metric("model_router_shadow_sent_total 4").await;
    let list = json_of(send(env.server.get("/v1/chat/completions")).await).await;
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["id"].as_str())
        .collect();
    assert_eq!(ids, vec![stored_id.as_str()]);
    let shadows = env.store().shadows_of(&stored_id).unwrap();
    assert_eq!(shadows.len(), 2);
    assert!(
        shadows
            .iter()
            .all(|s| s.metadata.get("task") == Some("colours")),
        "metadata copied"
    );
    // A request that names its model is the client's choice: never shadowed.
    let pinned = send(
        env.server
            .request(reqwest::Method::POST, "/v1/chat/completions")
            .json(&json!({"model": GPT4, "messages": [{"role": "user", "content": "hi"}]})),
    )
    .await;
    assert_eq!(pinned.status(), 200);
    assert_eq!(
        env.mock.seen_by("up-35").len(),
        2,
        "GPT-3.5 was never asked again"
    );
    env.stop().await;
    plain.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_shadow_backend_does_not_hold_up_the_client() {
    let env = Env::start(
        Mock::new(Some("up-4")),
        shadow_all(&[GPT4], 5.0).map(|s| ShadowSection {
            workers: Some(2),
            ..s
        }),
    )
    .await;
    let question = json!({"messages": [{"role": "user", "content": "What is 2+2?"}]});
    let first = env.chat(question.clone()).await;
    assert_eq!(first.status(), 200);
    assert_eq!(
        json_of(first).await["choices"][0]["message"]["content"],
        "answer from up-35"
    );
    // The shadow of the first request is now blocked in the backend...
    env.mock.wait_entered(1).await;
    // ... and the client's next request is answered all the same, while it is still blocked.
    let second = tokio::time::timeout(Duration::from_secs(10), env.chat(question)).await;
    assert_eq!(
        second.expect("answered while the shadow hangs").status(),
        200
    );
    assert!(env
        .metrics()
        .await
        .contains("model_router_shadow_sent_total 0"));
    env.mock.release.add_permits(10);
    env.wait_metric("model_router_shadow_sent_total 2").await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_shadows_and_counts_them() {
    let env = Env::start(
        Mock::new(Some("up-4")),
        shadow_all(&[GPT4], 5.0).map(|s| ShadowSection {
            queue: Some(1),
            workers: Some(1),
            ..s
        }),
    )
    .await;
    let question = json!({"messages": [{"role": "user", "content": "What is 2+2?"}]});
    // The only worker takes the first shadow and hangs on it; the second waits in the queue
    // (room for one); the third and fourth find it full.
    assert_eq!(env.chat(question.clone()).await.status(), 200);
    env.mock.wait_entered(1).await;
    for _ in 0..3 {
        assert_eq!(env.chat(question.clone()).await.status(), 200);
    }
    let metrics = env.metrics().await;
    assert!(
        metrics.contains("model_router_shadow_dropped_total{reason=\"queue_full\"} 2"),
        "{metrics}"
    );
    env.mock.release.add_permits(10);
    env.wait_metric("model_router_shadow_sent_total 2").await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadows_stop_at_the_daily_budget() {
    // One GPT-4 answer costs (5 + 3) tokens × $10 per million = $0.00008: the first fits the
    // budget of $0.00005 (nothing spent yet), and spends it; the rest of the day is dropped.
    let env = Env::start(
        Mock::new(None),
        shadow_all(&[GPT4], 0.00005).map(|s| ShadowSection {
            workers: Some(1),
            ..s
        }),
    )
    .await;
    let question = json!({"messages": [{"role": "user", "content": "What is 2+2?"}]});
    assert_eq!(env.chat(question.clone()).await.status(), 200);
    env.wait_metric("model_router_shadow_sent_total 1").await;
    for _ in 0..3 {
        assert_eq!(env.chat(question.clone()).await.status(), 200);
    }
    let metrics = env
        .wait_metric("model_router_shadow_dropped_total{reason=\"budget\"} 3")
        .await;
    assert!(
        metrics.contains("model_router_shadow_sent_total 1"),
        "{metrics}"
    );
    let cost = metric_value(&metrics, "model_router_shadow_cost_usd_total");
    assert!((cost - 8e-5).abs() < 1e-12, "{cost}");
    assert_eq!(env.mock.seen_by("up-4").len(), 1, "no call past the budget");
    // Dropped shadows store no original either.
    assert_eq!(env.originals().len(), 1);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_shadowed_after_it_ended_and_reaches_the_client_unchanged() {
    let env = Env::start(Mock::new(None), shadow_all(&[GPT4], 5.0)).await;
    let r = env
        .chat(
            json!({"messages": [{"role": "user", "content": "Say hello."}], "stream": true,
            "stream_options": {"include_usage": true}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-router-store"), None);
    let text = collect_stream(r, |_| {}).await;
    assert!(
        text.ends_with("data: [DONE]\n\n") && !text.contains("x-router-store"),
        "{text:?}"
    );
    env.wait_metric("model_router_shadow_sent_total 1").await;
    let originals = env.originals();
    assert_eq!(originals.len(), 1);
    assert_eq!(answer_text(&originals[0]), "Hello", "the assembled stream");
    let shadows = env.store().shadows_of(&originals[0].id).unwrap();
    assert_eq!(shadows.len(), 1);
    assert_eq!(answer_text(&shadows[0]), "answer from up-4");
    // The shadow was asked without streaming.
    let seen = env.mock.seen_by("up-4");
    assert!(
        seen[0].get("stream").is_none() && seen[0].get("stream_options").is_none(),
        "{seen:?}"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_the_bundle_does_not_predict_is_shadowed_and_served_by_name_but_never_routed_to() {
    let env = Env::start(Mock::new(None), shadow_all(&[CANDIDATE], 5.0)).await;
    // Routed among every deployed model: the candidate is not one of them.
    let routed = send(
        env.server
            .request(reqwest::Method::POST, "/v1/chat/completions")
            .json(&json!({"model": "model-router", "messages": [{"role": "user", "content": "What is 2+2?"}]})),
    )
    .await;
    assert_eq!(routed.status(), 200);
    assert_ne!(
        header(&routed, "x-router-model").as_deref(),
        Some(CANDIDATE)
    );
    env.wait_metric("model_router_shadow_sent_total 1").await;
    let original = env
        .originals()
        .pop()
        .expect("the shadowed original is stored");
    let shadows = env.store().shadows_of(&original.id).unwrap();
    assert_eq!(shadows.len(), 1);
    assert_eq!(answer_text(&shadows[0]), "answer from up-cx");

    // Listed among the models a client may name.
    let models = json_of(send(env.server.get("/v1/models")).await).await;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert!(ids.contains(&CANDIDATE) && ids.contains(&GPT35), "{ids:?}");

    // Named, it is served like any deployed model.
    let named = send(
        env.server
            .request(reqwest::Method::POST, "/v1/chat/completions")
            .json(&json!({"model": CANDIDATE, "messages": [{"role": "user", "content": "Hi"}]})),
    )
    .await;
    assert_eq!(named.status(), 200);
    assert_eq!(
        json_of(named).await["choices"][0]["message"]["content"],
        "answer from up-cx"
    );
    env.stop().await;
}
