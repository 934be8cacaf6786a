//! Scaffolding of the `label` tests: an OpenAI-compatible mock backend on 127.0.0.1 (axum on its
//! own tokio runtime) whose answers follow a rule on the model and the prompt, which counts the
//! requests per (prompt, model); and the server config that points `label` at it.
#![allow(dead_code)]
// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Json;
use router_policy::ModelSpec;
use router_server::{DeploymentSection, ServerConfig, ServerConfigBuilder};
use serde_json::{json, Value};

/// What the mock answers to one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A chat completion with `text` and this usage.
    Answer {
        text: String,
        prompt_tokens: u64,
        completion_tokens: u64,
    },
    /// An error status with an OpenAI error body.
    Status(u16),
    /// 429 with `retry-after-ms`.
    TooMany { retry_after_ms: u64 },
}

/// The rule: (upstream model, the last user message) → reply.
pub type Rule = Arc<dyn Fn(&str, &str) -> Reply + Send + Sync>;

struct Shared {
    rule: Rule,
    delay: Duration,
    counts: Mutex<HashMap<(String, String), usize>>,
}

/// The running mock; stopped when dropped.
pub struct MockBackend {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl MockBackend {
    /// Serves `rule` on 127.0.0.1:0, each answer after `delay`.
    pub fn start(rule: Rule, delay: Duration) -> MockBackend {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let shared = Arc::new(Shared {
            rule,
            delay,
            counts: Mutex::new(HashMap::new()),
        });
        let app = axum::Router::new()
            .route("/v1/chat/completions", post(complete))
            .with_state(shared.clone());
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the mock");
        let addr = listener.local_addr().expect("mock address");
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MockBackend {
            addr,
            shared,
            runtime: Some(runtime),
        }
    }

    /// Requests received for (prompt, model).
    pub fn count(&self, prompt: &str, model: &str) -> usize {
        self.shared
            .counts
            .lock()
            .unwrap()
            .get(&(prompt.to_string(), model.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Every (prompt, model) with its request count.
    pub fn counts(&self) -> HashMap<(String, String), usize> {
        self.shared.counts.lock().unwrap().clone()
    }
}

impl Drop for MockBackend {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn complete(State(shared): State<Arc<Shared>>, Json(body): Json<Value>) -> Response {
    let model = body["model"].as_str().unwrap_or_default().to_string();
    let prompt = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string();
    *shared
        .counts
        .lock()
        .unwrap()
        .entry((prompt.clone(), model.clone()))
        .or_default() += 1;
    tokio::time::sleep(shared.delay).await;
    match (shared.rule)(&model, &prompt) {
        Reply::Answer { text, prompt_tokens, completion_tokens } => Json(json!({
            "id": "chatcmpl-mock", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }))
        .into_response(),
        Reply::TooMany { retry_after_ms } => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after-ms", retry_after_ms.to_string())],
            Json(json!({"error": {"message": "rate limited", "type": "rate_limit_error"}})),
        )
            .into_response(),
        Reply::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, Json(json!({"error": {"message": "mock failure", "type": "server_error"}}))).into_response()
        }
    }
}

/// A candidate in the config: catalog name (also its upstream model name) and prices per 1M tokens.
pub struct Candidate<'a> {
    pub name: &'a str,
    pub input_price: f64,
    pub output_price: f64,
}

/// One deployment per candidate on the mock at `addr` (`NAME-dep`, sending the candidate's
/// name upstream), fast retries (one retry, 10 ms backoff) so failing pairs fail quickly.
pub fn candidates_config(addr: SocketAddr, candidates: &[Candidate<'_>]) -> ServerConfigBuilder {
    let bundle = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/routerbench");
    let mut config = ServerConfig::builder(bundle).dispatch(|d| {
        d.max_retries = Some(1);
        d.backoff_ms = Some(10);
        d.max_backoff_ms = Some(20);
        d.timeout_ms = Some(20_000);
    });
    for c in candidates {
        let deployment = format!("{}-dep", c.name);
        config = config
            .model(
                ModelSpec::new(c.name, c.input_price, c.output_price, 100_000)
                    .expected_output_tokens(20)
                    .deployments([deployment.as_str()]),
            )
            .deployment(DeploymentSection::openai(
                deployment.as_str(),
                format!("http://{addr}/v1"),
                c.name,
            ));
    }
    config
}

/// Writes [`candidates_config`] as `dir/model-router.toml`.
pub fn write_config(dir: &Path, addr: SocketAddr, candidates: &[Candidate<'_>]) -> PathBuf {
    let path = dir.join("model-router.toml");
    let text = candidates_config(addr, candidates)
        .to_toml()
        .expect("a config as TOML");
    std::fs::write(&path, text).expect("write the config");
    path
}

/// Writes a string_check grader: the output must equal `{{item.reference}}`.
pub fn write_exact_grader(dir: &Path) -> PathBuf {
    let path = dir.join("grader.json");
    let grader = json!({
        "type": "string_check", "name": "exact", "operation": "eq",
        "input": "{{sample.output_text}}", "reference": "{{item.reference}}",
    });
    std::fs::write(&path, grader.to_string()).expect("write the grader");
    path
}

/// Reads JSON lines.
pub fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}
