//! A loopback OpenAI-compatible backend whose deployments misbehave on demand, and the router
//! in front of it: shared by the fault suite (`faults.rs`) and the soak (`soak.rs`).

// Each test file uses only some of these.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use router_policy::ModelSpec;
use router_server::{DeploymentSection, ServerConfig, ServerConfigBuilder, StoreSection};
use serde_json::{json, Value};

use crate::common::{header, json_of, send, text_of, Backend, Server};

pub const GPT4: &str = "gpt-4-1106-preview";
pub const GPT35: &str = "gpt-3.5-turbo-1106";
pub const CLAUDE: &str = "claude-instant-v1";
pub const MIXTRAL: &str = "mistralai/mixtral-8x7b-chat";

/// What a mock deployment does.
#[derive(Clone, Debug)]
pub enum Fault {
    Answer,
    Status500,
    Empty500,
    /// 500 for the first n calls, then answers.
    FailFirst(usize),
    /// 401 whose body echoes part of the router's key.
    Unauthorized,
    Garbage200,
    NoChoices,
    /// 429, with `Retry-After: n` when given.
    TooMany(Option<u64>),
    /// 429 (Retry-After: 1) on the calls whose number is a multiple of n, else an answer.
    TooManyEvery(usize),
    /// 429 with `Retry-After: 30` on the first two calls, then answers.
    TooManyTwice,
    /// No response headers for 60 s.
    Hang,
    /// Headers and half a body, then 60 s of silence.
    Stall,
    /// A stream that ends without `data: [DONE]`.
    CutStream,
    /// One call in five fails, in turn: an empty 500, a garbage 200, a 429 without
    /// `Retry-After`, a 200 without `choices`, half a body then 1 s of silence.
    Mixed,
}

#[derive(Default)]
pub struct Mock {
    faults: Mutex<HashMap<String, Fault>>,
    hits: Mutex<HashMap<String, usize>>,
    /// The `x-request-id` of every call, in order.
    pub request_ids: Mutex<Vec<String>>,
}

impl Mock {
    pub fn set(&self, deployment: &str, fault: Fault) {
        self.faults
            .lock()
            .unwrap()
            .insert(deployment.to_string(), fault);
    }

    pub fn hits(&self, deployment: &str) -> usize {
        self.hits
            .lock()
            .unwrap()
            .get(deployment)
            .copied()
            .unwrap_or(0)
    }
}

fn completion(model: &str) -> Value {
    json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
    })
}

/// Two events, then `data: [DONE]` when `done` (else the stream breaks off before it).
fn events(model: &str, done: bool) -> Response {
    let chunk = json!({"id": "c1", "object": "chat.completion.chunk", "model": model,
        "choices": [{"index": 0, "delta": {"content": "par"}, "finish_reason": null}]});
    let mut events = format!("data: {chunk}\n\ndata: {chunk}\n\n");
    if done {
        events.push_str("data: [DONE]\n\n");
    }
    let stream = futures_util::stream::iter([Ok::<_, Infallible>(Bytes::from(events))]);
    (
        [("content-type", "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Headers and half a completion, then `silence`.
fn stall(body: &Value, silence: Duration) -> Response {
    let text = completion(body["model"].as_str().unwrap_or("?")).to_string();
    let half = Bytes::from(text[..text.len() / 2].to_string());
    let stream = futures_util::stream::unfold(0, move |i| {
        let half = half.clone();
        async move {
            if i > 0 {
                tokio::time::sleep(silence).await;
                return None;
            }
            Some((Ok::<_, Infallible>(half), 1))
        }
    });
    (
        [("content-type", "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

pub async fn mock_backend(
    State(mock): State<Arc<Mock>>,
    UrlPath(dep): UrlPath<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    mock.request_ids.lock().unwrap().push(id.to_string());
    let hit = {
        let mut hits = mock.hits.lock().unwrap();
        let n = hits.entry(dep.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let fault = mock
        .faults
        .lock()
        .unwrap()
        .get(&dep)
        .cloned()
        .unwrap_or(Fault::Answer);
    let fault = match fault {
        Fault::Mixed if hit % 5 == 0 => match (hit / 5) % 5 {
            0 => Fault::Empty500,
            1 => Fault::Garbage200,
            2 => Fault::TooMany(None),
            3 => Fault::NoChoices,
            _ => return stall(&body, Duration::from_secs(1)),
        },
        Fault::FailFirst(n) if hit <= n => Fault::Empty500,
        Fault::TooManyEvery(n) if hit % n == 0 => Fault::TooMany(Some(1)),
        Fault::TooManyTwice if hit <= 2 => Fault::TooMany(Some(30)),
        other => other,
    };
    answer(fault, &body).await
}

/// What `fault` answers to a request with `body`.
async fn answer(fault: Fault, body: &Value) -> Response {
    let model = body["model"].as_str().unwrap_or("?");
    match fault {
        Fault::Status500 => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": {"message": "boom"}})),
        )
            .into_response(),
        Fault::Empty500 => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Fault::Unauthorized => (
            StatusCode::UNAUTHORIZED,
            "{\"error\": {\"message\": \"Incorrect API key provided: sk-live-12****cret\"}}",
        )
            .into_response(),
        Fault::Garbage200 => (StatusCode::OK, "<html>gateway says hi</html>").into_response(),
        Fault::NoChoices => {
            axum::Json(json!({"id": "x", "object": "chat.completion"})).into_response()
        }
        Fault::TooMany(after) => {
            let mut r = (
                StatusCode::TOO_MANY_REQUESTS,
                "{\"error\": {\"message\": \"slow down\"}}",
            )
                .into_response();
            if let Some(secs) = after {
                r.headers_mut()
                    .insert("retry-after", secs.to_string().parse().unwrap());
            }
            r
        }
        Fault::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
        Fault::Stall => stall(body, Duration::from_secs(60)),
        Fault::CutStream => events(model, false),
        _ if body["stream"] == json!(true) => events(model, true),
        _ => axum::Json(completion(model)).into_response(),
    }
}

/// The deployments: `a1` and `a2` serve GPT4, `b` GPT35 (provisioned, spilling to `b-spill`),
/// `c` CLAUDE, `m` MIXTRAL, `dead` is a port nobody listens on; `mixtral` names MIXTRAL's
/// deployment (`m`, or `dead` for a model nobody answers for).
pub fn config(mock: SocketAddr, dead: SocketAddr, mixtral: &str) -> ServerConfigBuilder {
    let url = |d: &str| format!("http://{mock}/d/{d}/v1");
    let openai = |name: &str| DeploymentSection::openai(name, url(name), format!("up-{name}"));
    ServerConfig::builder(crate::common::bundle())
        .named("faults.toml")
        .listen("127.0.0.1:0".parse().unwrap())
        .env(|_| None)
        .dispatch(|d| {
            d.timeout_ms = Some(400);
            d.read_timeout_ms = Some(300);
            d.connect_timeout_ms = Some(300);
            d.max_retries = Some(1);
            d.backoff_ms = Some(5);
            d.max_backoff_ms = Some(10);
            d.probe_interval_ms = Some(200);
        })
        .model(ModelSpec::new(GPT4, 10.0, 30.0, 128_000).deployments(["a1", "a2"]))
        .model(ModelSpec::new(GPT35, 1.0, 2.0, 16_385).deployments(["b"]))
        .model(ModelSpec::new(CLAUDE, 0.8, 2.4, 100_000).deployments(["c"]))
        .model(ModelSpec::new(MIXTRAL, 0.6, 0.6, 32_768).deployments([mixtral]))
        .deployment(openai("a1"))
        .deployment(openai("a2"))
        .deployment(openai("b").provisioned("b-spill"))
        .deployment(DeploymentSection::openai("b-spill", url("b-spill"), "up-b"))
        .deployment(openai("c"))
        .deployment(openai("m"))
        .deployment(DeploymentSection::openai(
            "dead",
            format!("http://{dead}/v1"),
            "up-dead",
        ))
}

pub struct Env {
    pub mock: Arc<Mock>,
    _backend: Backend,
    pub server: Server,
    dir: tempfile::TempDir,
}

/// A port that refuses connections: bound, then closed.
pub async fn dead_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

impl Env {
    /// The mock, and the router in front of it with a store, an access log file and short
    /// client timeouts, then `edit`.
    pub async fn start(edit: impl FnOnce(ServerConfigBuilder) -> ServerConfigBuilder) -> Env {
        let mock = Arc::new(Mock::default());
        let app = axum::Router::new()
            .route("/d/{dep}/v1/chat/completions", post(mock_backend))
            .with_state(mock.clone());
        let backend = Backend::serve(app).await;
        let dir = tempfile::tempdir().unwrap();
        let config = config(backend.addr, dead_port().await, "m")
            .store(StoreSection::sqlite(dir.path().join("s.db")))
            .access_log_path(dir.path().join("access.log"))
            .server(|s| {
                s.header_timeout_ms = Some(300);
                s.body_timeout_ms = Some(300);
            });
        let server = Server::start(edit(config)).await;
        Env {
            mock,
            _backend: backend,
            server,
            dir,
        }
    }

    pub async fn chat(&self, model: &str, extra: Value) -> reqwest::Response {
        let mut body =
            json!({"model": model, "messages": [{"role": "user", "content": "Hi there"}]});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        send(
            self.server
                .request(reqwest::Method::POST, "/v1/chat/completions")
                .json(&body),
        )
        .await
    }

    pub async fn metrics(&self) -> String {
        text_of(self.server.get("/metrics")).await
    }

    pub async fn stored_count(&self) -> usize {
        let list = json_of(send(self.server.get("/v1/chat/completions?limit=100")).await).await;
        list["data"].as_array().map_or(0, Vec::len)
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.running.local_addr()
    }

    pub async fn stop(self) {
        self.server.stop().await;
    }
}

/// The status, the OpenAI error body (asserted to have OpenAI's shape) and the `Retry-After`.
pub async fn openai_error(r: reqwest::Response) -> (u16, Value, Option<String>) {
    let status = r.status().as_u16();
    let retry_after = header(&r, "retry-after");
    let body = json_of(r).await;
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string(), "{body}");
    assert!(
        error.get("param").is_some() && error.get("code").is_some(),
        "{body}"
    );
    (status, body, retry_after)
}
