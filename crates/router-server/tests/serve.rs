//! End-to-end tests: the server in-process on 127.0.0.1:0 in front of mock OpenAI-compatible
//! backends (also on 127.0.0.1:0) that answer, stream, return 429 with Retry-After, 5xx, or hang.
//! Every wait is bounded; servers are stopped at the end of each test.

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::{
    assert_has_metric, bundle, collect_stream, header, json_of, send, text_of, Backend, Server,
};
use router_policy::{Capabilities, Capability, Mode, ModelSpec};
use router_server::{DeploymentSection, ServerConfig, ServerConfigBuilder};
use serde_json::{json, Value};
use tokio::sync::oneshot;

mod common;

const GPT4: &str = "gpt-4-1106-preview";
const GPT35: &str = "gpt-3.5-turbo-1106";
const CLAUDE: &str = "claude-instant-v1";
const MIXTRAL: &str = "mistralai/mixtral-8x7b-chat";
const LIMIT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
enum Behaviour {
    Answer,
    TooMany(u64),
    FailFirst(usize),
    Hang,
}

#[derive(Default)]
struct MockState {
    behaviours: Mutex<HashMap<String, Behaviour>>,
    hits: Mutex<HashMap<String, usize>>,
    seen: Mutex<Vec<Seen>>,
    gate: Mutex<Option<oneshot::Receiver<()>>>,
}

#[derive(Clone, Debug)]
struct Seen {
    deployment: String,
    path_model: Option<String>,
    query: Option<String>,
    authorization: Option<String>,
    api_key: Option<String>,
    body: Value,
}

struct Mock {
    backend: Backend,
    state: Arc<MockState>,
}

impl Mock {
    async fn start() -> Mock {
        let state = Arc::new(MockState::default());
        let app = axum::Router::new()
            .route("/d/{dep}/v1/chat/completions", post(mock_openai))
            .route(
                "/d/{dep}/openai/deployments/{model}/chat/completions",
                post(mock_azure),
            )
            .with_state(state.clone());
        Mock {
            backend: Backend::serve(app).await,
            state,
        }
    }

    fn set(&self, deployment: &str, b: Behaviour) {
        self.state
            .behaviours
            .lock()
            .unwrap()
            .insert(deployment.to_string(), b);
    }

    fn hits(&self, deployment: &str) -> usize {
        self.state
            .hits
            .lock()
            .unwrap()
            .get(deployment)
            .copied()
            .unwrap_or(0)
    }

    fn seen(&self, deployment: &str) -> Vec<Seen> {
        self.state
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.deployment == deployment)
            .cloned()
            .collect()
    }

    /// Requests to each model's first deployment (not to the spillover ones, gpt4-paygo and alt).
    fn primary_hits(&self) -> usize {
        ["gpt4-ptu", "gpt35", "claude", "mixtral"]
            .iter()
            .map(|d| self.hits(d))
            .sum()
    }
}

async fn mock_openai(
    State(s): State<Arc<MockState>>,
    UrlPath(dep): UrlPath<String>,
    q: RawQuery,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    mock(s, dep, None, q.0, h, body).await
}

async fn mock_azure(
    State(s): State<Arc<MockState>>,
    UrlPath((dep, model)): UrlPath<(String, String)>,
    q: RawQuery,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    mock(s, dep, Some(model), q.0, h, body).await
}

fn sse(model: &str, text: &str) -> String {
    let chunk = json!({"id": "c1", "object": "chat.completion.chunk", "model": model,
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]});
    format!("data: {chunk}\n\n")
}

async fn mock(
    s: Arc<MockState>,
    dep: String,
    path_model: Option<String>,
    query: Option<String>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let hit = {
        let mut hits = s.hits.lock().unwrap();
        let n = hits.entry(dep.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let header = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    s.seen.lock().unwrap().push(Seen {
        deployment: dep.clone(),
        path_model,
        query,
        authorization: header("authorization"),
        api_key: header("api-key"),
        body: body.clone(),
    });
    let behaviour = s
        .behaviours
        .lock()
        .unwrap()
        .get(&dep)
        .cloned()
        .unwrap_or(Behaviour::Answer);
    match behaviour {
        Behaviour::TooMany(secs) => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", secs.to_string())],
                axum::Json(json!({"error": {"message": "rate limited", "type": "requests", "param": null, "code": "429"}})),
            )
                .into_response()
        }
        Behaviour::FailFirst(n) if hit <= n => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response();
        }
        Behaviour::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        _ => {}
    }
    let upstream_model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_string();
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        let gate = s.gate.lock().unwrap().take();
        let stream = futures_util::stream::unfold(
            (0usize, gate, upstream_model),
            |(i, mut gate, m)| async move {
                let text = match i {
                    0 => sse(&m, "one"),
                    1 => {
                        if let Some(g) = gate.take() {
                            let _ = tokio::time::timeout(Duration::from_secs(10), g).await;
                        }
                        sse(&m, "two")
                    }
                    2 => sse(&m, "three"),
                    3 => "data: [DONE]\n\n".to_string(),
                    _ => return None,
                };
                Some((Ok::<Bytes, Infallible>(Bytes::from(text)), (i + 1, gate, m)))
            },
        );
        return (
            [("content-type", "text/event-stream")],
            Body::from_stream(stream),
        )
            .into_response();
    }
    axum::Json(json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": upstream_model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("hello from {dep}")}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    }))
    .into_response()
}

/// Four models and six deployments on the mock backend `mock`: gpt4-ptu spills over to
/// gpt4-paygo, gpt35 is an Azure deployment, claude has a key, alt serves no model.
fn config(mock: SocketAddr) -> ServerConfigBuilder {
    let base = |dep: &str| format!("http://{mock}/d/{dep}/v1");
    let model = |name: &str, input: f64, output: f64, window: u64, deployments: &[&str]| {
        ModelSpec::new(name, input, output, window)
            .expected_output_tokens(64)
            .deployments(deployments.iter().copied())
    };
    let tools = Capabilities::default().with(Capability::Tools);
    ServerConfig::builder(bundle())
        .named("test.toml")
        .env(env)
        .listen("127.0.0.1:0".parse().unwrap())
        .mode(Mode::Balanced)
        .dispatch(|d| {
            d.timeout_ms = Some(1500);
            d.connect_timeout_ms = Some(1000);
            d.max_retries = Some(2);
            d.backoff_ms = Some(10);
            d.max_backoff_ms = Some(50);
        })
        .model(model(GPT4, 10.0, 30.0, 128_000, &["gpt4-ptu", "gpt4-paygo"]).capabilities(tools))
        .model(model(GPT35, 1.0, 2.0, 16_385, &["gpt35"]).capabilities(tools))
        .model(model(CLAUDE, 0.8, 2.4, 100_000, &["claude"]))
        .model(model(MIXTRAL, 0.6, 0.6, 32_768, &["mixtral"]))
        .deployment(
            DeploymentSection::openai("gpt4-ptu", base("gpt4-ptu"), "gpt-4-upstream")
                .provisioned("gpt4-paygo"),
        )
        .deployment(DeploymentSection::openai(
            "gpt4-paygo",
            base("gpt4-paygo"),
            "gpt-4-upstream",
        ))
        .deployment(
            DeploymentSection::azure(
                "gpt35",
                format!("http://{mock}/d/gpt35"),
                "gpt35-azure-deployment",
                "2024-10-21",
            )
            .api_key_env("AZ_KEY"),
        )
        .deployment(
            DeploymentSection::openai("claude", base("claude"), CLAUDE).api_key_env("OAI_KEY"),
        )
        .deployment(DeploymentSection::openai(
            "mixtral",
            base("mixtral"),
            MIXTRAL,
        ))
        .deployment(DeploymentSection::openai(
            "alt",
            base("alt"),
            "alt-upstream",
        ))
}

fn env(name: &str) -> Option<String> {
    match name {
        "AZ_KEY" => Some("az-secret-key".into()),
        "OAI_KEY" => Some("oai-secret-key".into()),
        "PROXY_KEYS" => Some("proxy-key-1, proxy-key-2".into()),
        _ => None,
    }
}

struct Env {
    mock: Mock,
    server: Server,
}

impl Env {
    /// Starts the mock and the server with `config` edited by `edit`.
    async fn start(edit: impl FnOnce(ServerConfigBuilder) -> ServerConfigBuilder) -> Env {
        let mock = Mock::start().await;
        let server = Server::start(edit(config(mock.backend.addr))).await;
        Env { mock, server }
    }

    async fn post(&self, path: &str, body: Value, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut r = self.server.request(reqwest::Method::POST, path).json(&body);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        send(r).await
    }

    async fn completions(&self, body: Value, headers: &[(&str, &str)]) -> reqwest::Response {
        self.post("/v1/chat/completions", body, headers).await
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        send(self.server.get(path)).await
    }

    async fn metrics(&self) -> String {
        text_of(self.server.get("/metrics")).await
    }

    async fn stop(self) {
        self.server.stop().await;
    }
}

/// A config whose deployments point at a port nothing answers on: for tests that never send.
fn config_without_mock() -> ServerConfigBuilder {
    config("127.0.0.1:9".parse().unwrap())
}

fn chat(model: &str, prompt: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": prompt}]})
}

/// A chat request to `model-router` with the body's `router` overrides.
fn chat_with_router_field(prompt: &str, router: Value) -> Value {
    let mut body = chat("model-router", prompt);
    body["router"] = router;
    body
}

/// The `x-router-decision` header (sent on `x-router-explain`), parsed.
fn decision_of(r: &reqwest::Response) -> Value {
    serde_json::from_str(&header(r, "x-router-decision").expect("decision header")).unwrap()
}

fn assert_openai_error(body: &Value) {
    let e = body
        .get("error")
        .unwrap_or_else(|| panic!("no error object: {body}"));
    assert!(
        e.get("message")
            .and_then(Value::as_str)
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(e.get("type").and_then(Value::as_str).is_some(), "{body}");
    assert!(
        e.get("param").is_some() && e.get("code").is_some(),
        "{body}"
    );
}

/// Checks that `r` has `status` and an OpenAI-style error body, and returns the body.
async fn expect_openai_error(r: reqwest::Response, status: u16) -> Value {
    assert_eq!(r.status(), status);
    let body = json_of(r).await;
    assert_openai_error(&body);
    body
}

fn deployment_of(model: &str) -> &'static str {
    match model {
        GPT35 => "gpt35",
        CLAUDE => "claude",
        MIXTRAL => "mixtral",
        _ => "gpt4-ptu",
    }
}

#[tokio::test]
async fn routes_and_explains() {
    let env = Env::start(|c| c).await;
    let prompt = "Write a Python function that reverses a linked list.";
    let r = env
        .completions(
            chat("model-router", prompt),
            &[("x-router-explain", "true")],
        )
        .await;
    assert_eq!(r.status(), 200);
    let decision = decision_of(&r);
    let routed = header(&r, "x-router-model").unwrap();
    let body = json_of(r).await;
    let model = body["model"].as_str().unwrap().to_string();
    assert!(
        [GPT4, GPT35, CLAUDE, MIXTRAL].contains(&model.as_str()),
        "{model}"
    );
    assert_eq!(decision["model"], model);
    // The same explanation in the body's `router` field.
    assert_eq!(body["router"], decision, "{body}");
    assert_eq!(routed, model);
    assert_eq!(decision["mode"], "balanced");
    // Models without deployments are never chosen.
    assert_eq!(
        decision["excluded"]["claude-v2"]["reason"],
        "no_catalog_entry"
    );
    assert_eq!(env.mock.primary_hits(), 1);

    // The decision-only endpoint agrees and sends nothing upstream.
    let r = env
        .post("/v1/route", chat("model-router", prompt), &[])
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r).await["model"], model);
    assert_eq!(env.mock.primary_hits(), 1);

    // Without the explain header there is no decision header.
    let r = env.completions(chat("model-router", "Hi"), &[]).await;
    assert_eq!(r.status(), 200);
    assert!(header(&r, "x-router-decision").is_none());
    assert!(json_of(r).await.get("router").is_none());
    env.stop().await;
}

#[tokio::test]
async fn routes_on_the_conversation_and_capabilities() {
    let env = Env::start(|c| c).await;
    // Tools: only gpt-4 and gpt-3.5 have the capability.
    let body = json!({"model": "model-router", "messages": [
        {"role": "system", "content": "You call tools."}, {"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [{"type": "function", "function": {"name": "weather", "description": "Get the weather", "parameters": {"type": "object"}}}]});
    let r = env.post("/v1/route", body, &[]).await;
    assert_eq!(r.status(), 200);
    let d = json_of(r).await;
    assert!(d["model"] == GPT4 || d["model"] == GPT35, "{d}");
    assert_eq!(d["excluded"][CLAUDE]["reason"], "missing_capabilities");
    // Images need vision, which no model here has: a 400 that says why.
    let body = json!({"model": "model-router", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]}]});
    let b = expect_openai_error(env.completions(body, &[]).await, 400).await;
    assert_eq!(b["error"]["code"], "no_eligible_model");
    env.stop().await;
}

#[tokio::test]
async fn bypass_and_azure_paths() {
    let env = Env::start(|c| c).await;
    let r = env
        .completions(chat(MIXTRAL, "Hello"), &[("x-router-explain", "true")])
        .await;
    assert_eq!(r.status(), 200);
    assert!(header(&r, "x-router-decision").is_none());
    let b = json_of(r).await;
    assert_eq!(b["model"], MIXTRAL);
    assert_eq!(b["choices"][0]["message"]["content"], "hello from mixtral");
    assert_eq!(env.mock.hits("mixtral"), 1);

    // openai kind: Bearer key, upstream model name replaced.
    let r = env.completions(chat(CLAUDE, "Hello"), &[]).await;
    assert_eq!(r.status(), 200);
    let seen = env.mock.seen("claude");
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some("Bearer oai-secret-key")
    );
    assert_eq!(seen[0].body["model"], CLAUDE);

    // azure kind via the Azure path: api-key header, deployment in the path, api-version query.
    let r = env
        .post(
            &format!("/openai/deployments/{GPT35}/chat/completions?api-version=2024-10-21"),
            json!({"messages": [{"role": "user", "content": "Hi"}]}),
            &[],
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r).await["model"], GPT35);
    let seen = env.mock.seen("gpt35");
    assert_eq!(seen[0].api_key.as_deref(), Some("az-secret-key"));
    assert_eq!(seen[0].authorization, None);
    assert_eq!(
        seen[0].path_model.as_deref(),
        Some("gpt35-azure-deployment")
    );
    assert_eq!(seen[0].query.as_deref(), Some("api-version=2024-10-21"));

    // The Azure path with the router's name routes.
    let r = env
        .post(
            "/openai/deployments/model-router/chat/completions",
            json!({"messages": [{"role": "user", "content": "Hi"}]}),
            &[],
        )
        .await;
    assert_eq!(r.status(), 200);
    assert!(header(&r, "x-router-model").is_some());

    // Unknown model: 404 model_not_found.
    let r = env.completions(chat("gpt-5", "Hi"), &[]).await;
    let b = expect_openai_error(r, 404).await;
    assert_eq!(b["error"]["code"], "model_not_found");

    // /v1/models lists the router and the deployed models.
    let ids: Vec<String> = json_of(env.get("/v1/models").await).await["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        ids.contains(&"model-router".to_string())
            && ids.contains(&MIXTRAL.to_string())
            && !ids.contains(&"claude-v2".to_string()),
        "{ids:?}"
    );
    env.stop().await;
}

#[tokio::test]
async fn overrides_by_body_and_headers() {
    let env = Env::start(|c| c).await;
    let prompt = "Explain the proof that there are infinitely many primes.";
    let body = chat_with_router_field(prompt, json!({"subset": [CLAUDE], "mode": "quality"}));
    let r = env.completions(body, &[("x-router-explain", "true")]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(decision_of(&r)["mode"], "quality");
    assert_eq!(json_of(r).await["model"], CLAUDE);
    // The `router` field is not forwarded upstream.
    assert!(env.mock.seen("claude")[0].body.get("router").is_none());

    let r = env
        .completions(
            chat("model-router", prompt),
            &[
                ("x-router-subset", MIXTRAL),
                ("x-router-mode", "cost"),
                ("x-router-explain", "1"),
            ],
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(decision_of(&r)["mode"], "cost");
    assert_eq!(json_of(r).await["model"], MIXTRAL);

    // A custom band in the body; the body's mode wins over the header's.
    let body = chat_with_router_field(prompt, json!({"band": 1.0, "mode": "quality"}));
    let r = env
        .post("/v1/route", body, &[("x-router-mode", "cost")])
        .await;
    let d = json_of(r).await;
    assert_eq!(d["band"], 1.0);
    assert_eq!(d["custom_band"], true);
    // Band 1 admits every model: the cheapest deployed one wins.
    assert_eq!(d["model"], MIXTRAL);

    // Bad overrides are 400s with the parameter named.
    let body = chat_with_router_field(prompt, json!({"mode": "cheap"}));
    let b = expect_openai_error(env.completions(body, &[]).await, 400).await;
    assert_eq!(b["error"]["param"], "router.mode");
    let r = env
        .completions(
            chat("model-router", prompt),
            &[("x-router-subset", "not-a-model")],
        )
        .await;
    expect_openai_error(r, 400).await;
    env.stop().await;
}

/// Streams a chat request to `model` through the server and returns the text and the
/// `x-router-model` header. The backend holds chunk two until we have seen chunk one: this only
/// completes if the server passes chunks through unbuffered.
async fn stream_chat(env: &Env, model: &str, prompt: &str) -> (String, Option<String>) {
    let (gate, held) = oneshot::channel();
    *env.mock.state.gate.lock().unwrap() = Some(held);
    let mut body = chat(model, prompt);
    body["stream"] = json!(true);
    let r = env.completions(body, &[]).await;
    assert_eq!(r.status(), 200);
    assert!(header(&r, "content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let routed = header(&r, "x-router-model");
    let mut gate = Some(gate);
    let text = collect_stream(r, |text| {
        if text.contains("\"one\"") {
            if let Some(g) = gate.take() {
                let _ = g.send(());
            }
        }
    })
    .await;
    (text, routed)
}

#[tokio::test]
async fn streams_without_buffering() {
    let env = Env::start(|c| c).await;
    let (text, model) = stream_chat(&env, MIXTRAL, "Count to three.").await;
    assert_eq!(model.as_deref(), Some(MIXTRAL));
    // Every event names the model that answered, as a JSON response does.
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(events.len(), 3, "{text}");
    assert!(events.iter().all(|e| e["model"] == MIXTRAL), "{text}");
    let one = text.find("\"one\"").expect("one");
    let two = text.find("\"two\"").expect("two");
    let three = text.find("\"three\"").expect("three");
    let done = text.find("data: [DONE]").expect("[DONE]");
    assert!(one < two && two < three && three < done, "{text}");

    // Routed streaming too.
    let (text, model) = stream_chat(&env, "model-router", "Count to three.").await;
    assert!(model.is_some());
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    env.stop().await;
}

#[tokio::test]
async fn spillover_by_config_and_cooldown() {
    let env = Env::start(|c| c).await;
    env.mock.set("gpt4-ptu", Behaviour::TooMany(30));
    let r = env.completions(chat(GPT4, "Hi"), &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-ms-spillover-from-deployment").as_deref(),
        Some("gpt4-ptu")
    );
    assert_eq!(
        header(&r, "x-router-deployment").as_deref(),
        Some("gpt4-paygo")
    );
    assert_eq!(json_of(r).await["model"], GPT4);
    assert_eq!(
        (env.mock.hits("gpt4-ptu"), env.mock.hits("gpt4-paygo")),
        (1, 1)
    );
    // One 429 does not cool the deployment: the second request tries it again, and its
    // second 429 in a row cools it for its Retry-After.
    let r = env.completions(chat(GPT4, "Hi again"), &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        (env.mock.hits("gpt4-ptu"), env.mock.hits("gpt4-paygo")),
        (2, 2)
    );
    // Cooling down: the third request skips the provisioned deployment.
    let r = env.completions(chat(GPT4, "Hi a third time"), &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-ms-spillover-from-deployment").as_deref(),
        Some("gpt4-ptu")
    );
    assert_eq!(
        (env.mock.hits("gpt4-ptu"), env.mock.hits("gpt4-paygo")),
        (2, 3)
    );
    let dispatcher = env.server.running.state().dispatcher();
    assert!(dispatcher.cooldown_left("gpt4-ptu").unwrap() > Duration::from_secs(20));
    let metrics = env.metrics().await;
    assert_has_metric(&metrics, &format!("model_router_requests_total{{mode=\"bypass\",model=\"{GPT4}\",spillover=\"true\",status=\"200\"}} 3"));
    assert_has_metric(
        &metrics,
        "model_router_upstream_seconds_count{deployment=\"gpt4-paygo\"} 3",
    );
    assert_has_metric(&metrics, "model_router_estimated_cost_usd_total");
    env.stop().await;
}

#[tokio::test]
async fn spillover_by_header() {
    let env = Env::start(|c| c).await;
    env.mock.set("gpt4-ptu", Behaviour::TooMany(5));
    let r = env
        .completions(chat(GPT4, "Hi"), &[("x-ms-spillover-deployment", "alt")])
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-ms-spillover-from-deployment").as_deref(),
        Some("gpt4-ptu")
    );
    assert_eq!(header(&r, "x-router-deployment").as_deref(), Some("alt"));
    assert_eq!(json_of(r).await["model"], GPT4);
    assert_eq!(
        (
            env.mock.hits("gpt4-ptu"),
            env.mock.hits("alt"),
            env.mock.hits("gpt4-paygo")
        ),
        (1, 1, 0)
    );
    assert_eq!(env.mock.seen("alt")[0].body["model"], "alt-upstream");
    // An unknown spillover deployment is the caller's error.
    let r = env
        .completions(chat(GPT4, "Hi"), &[("x-ms-spillover-deployment", "nope")])
        .await;
    expect_openai_error(r, 400).await;
    env.stop().await;
}

#[tokio::test]
async fn reroutes_when_saturated() {
    let env = Env::start(|c| c).await;
    let prompt = "Summarise the plot of Hamlet in two sentences.";
    let body = chat_with_router_field(
        prompt,
        json!({"subset": [CLAUDE, MIXTRAL], "mode": "quality"}),
    );
    let first = json_of(env.post("/v1/route", body.clone(), &[]).await).await["model"]
        .as_str()
        .unwrap()
        .to_string();
    let other = if first == CLAUDE { MIXTRAL } else { CLAUDE };
    env.mock.set(deployment_of(&first), Behaviour::TooMany(30));
    let hits = || {
        (
            env.mock.hits(deployment_of(&first)),
            env.mock.hits(deployment_of(other)),
        )
    };

    let r = env
        .completions(body.clone(), &[("x-router-explain", "true")])
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        decision_of(&r)["excluded"][first.as_str()]["reason"],
        "saturated"
    );
    assert_eq!(json_of(r).await["model"], other);
    assert_eq!(hits(), (1, 1));
    // A second 429 in a row cools the model's deployment...
    let r = env.completions(body.clone(), &[]).await;
    assert_eq!(json_of(r).await["model"], other);
    assert_eq!(hits(), (2, 2));
    // ... so there is no doomed round trip the third time.
    let r = env.completions(body.clone(), &[]).await;
    assert_eq!(json_of(r).await["model"], other);
    assert_eq!(hits(), (2, 3));
    // Both saturated: 429 with Retry-After and an OpenAI-style body.
    env.mock.set(deployment_of(other), Behaviour::TooMany(7));
    let r = env.completions(body, &[]).await;
    assert_eq!(r.status(), 429);
    let wait: u64 = header(&r, "retry-after")
        .expect("retry-after")
        .parse()
        .unwrap();
    assert!((1..=30).contains(&wait), "{wait}");
    assert_openai_error(&json_of(r).await);
    let metrics = env.metrics().await;
    assert_has_metric(&metrics, "model_router_reroutes_total 5");
    env.stop().await;
}

#[tokio::test]
async fn retries_5xx_and_times_out_hanging_backends() {
    let env = Env::start(|c| c).await;
    env.mock.set("mixtral", Behaviour::FailFirst(2));
    let r = env.completions(chat(MIXTRAL, "Hi"), &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(env.mock.hits("mixtral"), 3);

    env.mock.set("mixtral", Behaviour::FailFirst(100));
    let r = env.completions(chat(MIXTRAL, "Hi"), &[]).await;
    // The backend's 500 after the retries is the router's OpenAI-shaped 502.
    assert_eq!(r.status(), 502);
    assert_eq!(json_of(r).await["error"]["code"], "upstream_error");
    assert_eq!(env.mock.hits("mixtral"), 6);

    env.mock.set("claude", Behaviour::Hang);
    let started = std::time::Instant::now();
    let r = env.completions(chat(CLAUDE, "Hi"), &[]).await;
    assert_eq!(r.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(20));
    let b = json_of(r).await;
    assert_openai_error(&b);
    // Backend keys never appear in errors.
    assert!(!b.to_string().contains("oai-secret-key"));
    assert_eq!(env.mock.hits("claude"), 3);
    env.stop().await;
}

#[tokio::test]
async fn auth_with_proxy_keys() {
    /// The status of a chat request carrying `key_header`.
    async fn status_with(env: &Env, key_header: (&str, &str)) -> reqwest::StatusCode {
        env.completions(chat(MIXTRAL, "Hi"), &[key_header])
            .await
            .status()
    }
    let env = Env::start(|c| c.api_keys_env("PROXY_KEYS")).await;
    expect_openai_error(env.completions(chat(MIXTRAL, "Hi"), &[]).await, 401).await;
    let wrong = status_with(&env, ("authorization", "Bearer wrong")).await;
    assert_eq!(wrong, 401);
    let right = status_with(&env, ("authorization", "Bearer proxy-key-2")).await;
    assert_eq!(right, 200);
    let r = env
        .post(
            "/v1/route",
            chat(MIXTRAL, "Hi"),
            &[("api-key", "proxy-key-1")],
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(env.mock.hits("mixtral"), 1);
    assert_eq!(env.get("/health").await.status(), 200);
    assert_eq!(env.get("/metrics").await.status(), 401);
    env.stop().await;
}

#[tokio::test]
async fn malformed_requests_are_openai_style_4xx() {
    let env = Env::start(|c| c.server(|s| s.max_body_bytes = Some(4096))).await;
    let raw = |body: &'static str| {
        env.server
            .request(reqwest::Method::POST, "/v1/chat/completions")
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for (body, param) in [
        ("{not json", Value::Null),
        ("[1, 2]", Value::Null),
        (
            r#"{"messages": [{"role": "user", "content": "x"}]}"#,
            json!("model"),
        ),
        (r#"{"model": "model-router"}"#, json!("messages")),
        (
            r#"{"model": "model-router", "messages": []}"#,
            json!("messages"),
        ),
        (
            r#"{"model": "model-router", "messages": [{"content": "x"}]}"#,
            json!("messages[0].role"),
        ),
        (
            r#"{"model": "model-router", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}"#,
            json!("stream"),
        ),
        (
            r#"{"model": "model-router", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}"#,
            json!("max_tokens"),
        ),
        (
            r#"{"model": 7, "messages": [{"role": "user", "content": "x"}]}"#,
            json!("model"),
        ),
    ] {
        let r = raw(body).await.unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let b = json_of(r).await;
        assert_openai_error(&b);
        assert_eq!(b["error"]["param"], param, "{body}: {b}");
    }
    let big = json!({"model": "model-router", "messages": [{"role": "user", "content": "x".repeat(10_000)}]});
    expect_openai_error(env.completions(big, &[]).await, 413).await;
    expect_openai_error(env.get("/v2/nothing").await, 404).await;
    assert_eq!(env.mock.primary_hits(), 0);
    env.stop().await;
}

#[test]
fn refuses_public_listen_without_keys_and_names_file_key_reason() {
    let e = config_without_mock()
        .listen("0.0.0.0:0".parse().unwrap())
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("test.toml") && e.contains("server.api_keys_env") && e.contains("refusing"),
        "{e}"
    );
    let e = config_without_mock()
        .deployment(DeploymentSection::openai("bad", "not a url", "m"))
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("test.toml") && e.contains("deployments[6].base_url"),
        "{e}"
    );
}

#[tokio::test]
async fn bad_bundle_fails_at_start() {
    // The catalog is in the config, so it validates; loading the bundle fails.
    let config = config_without_mock()
        .router(|r| r.bundle = "/nonexistent/bundle".into())
        .build()
        .unwrap();
    let e = router_server::start(config)
        .await
        .err()
        .expect("start fails")
        .to_string();
    assert!(
        e.contains("test.toml") && e.contains("router.bundle"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scorer_batches_concurrent_prompts_with_the_same_scores() {
    let router = router_core::Router::load(bundle()).unwrap();
    let prompts: Vec<String> = (0..24)
        .map(|i| format!("Question {i}: what is {i} times {}?", i + 3))
        .collect();
    let alone: Vec<Vec<f32>> = prompts.iter().map(|p| router.score(p).unwrap()).collect();
    let scorer = router_server::Scorer::spawn(router, 8, 4096, 64, Default::default()).unwrap();
    let handles: Vec<_> = prompts
        .iter()
        .map(|p| {
            let scorer = scorer.clone();
            let p = p.clone();
            tokio::spawn(async move { scorer.score(p).await })
        })
        .collect();
    for (handle, expected) in handles.into_iter().zip(alone) {
        let got = tokio::time::timeout(LIMIT, handle)
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .scores;
        assert_eq!(got.len(), expected.len());
        for (a, b) in got.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }
}
