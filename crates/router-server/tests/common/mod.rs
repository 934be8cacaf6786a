//! Scaffolding shared by the integration tests: a backend app and the router server, each
//! in-process on 127.0.0.1:0, requests to the router, and reading what comes back. Every wait is
//! bounded.

// Each test file is its own crate and uses only some of these; a test's unwrap is its
// assertion (the workspace lints forbid it in library code).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use router_policy::ModelSpec;
use router_server::{RunningServer, ServerConfigBuilder};
use serde_json::Value;

/// The store and usage tests' two catalog models: gpt-4 on `gpt4_deployment`, gpt-3.5 on
/// `d35`, each expecting 64 output tokens, with a 5 s timeout and no retries (the deployments
/// themselves are the caller's).
pub fn gpt4_and_gpt35(
    builder: ServerConfigBuilder,
    gpt4: &str,
    gpt35: &str,
    gpt4_deployment: &str,
) -> ServerConfigBuilder {
    builder
        .dispatch(|d| {
            d.timeout_ms = Some(5000);
            d.max_retries = Some(0);
        })
        .model(
            ModelSpec::new(gpt4, 10.0, 30.0, 128_000)
                .expected_output_tokens(64)
                .deployments([gpt4_deployment]),
        )
        .model(
            ModelSpec::new(gpt35, 1.0, 2.0, 16_385)
                .expected_output_tokens(64)
                .deployments(["d35"]),
        )
}

/// The router bundle shipped with the repository.
pub fn bundle() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/routerbench")
}

/// An axum app served on 127.0.0.1:0 until dropped: a mock backend for the router.
pub struct Backend {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    pub async fn serve(app: axum::Router) -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Backend { addr, task }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The router server started from a config (listening on 127.0.0.1:0), with an HTTP client
/// whose requests to it time out.
pub struct Server {
    pub running: RunningServer,
    base: String,
    http: reqwest::Client,
}

impl Server {
    /// Builds the config (validated as a file would be) and starts the server.
    pub async fn start(config: ServerConfigBuilder) -> Server {
        let config = config.build().expect("valid config");
        let running = router_server::start(config).await.expect("server starts");
        let base = format!("http://{}", running.local_addr());
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Server {
            running,
            base,
            http,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path))
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::GET, path)
    }

    pub async fn stop(self) {
        self.running.shutdown(Duration::from_secs(2)).await;
    }
}

pub async fn send(request: reqwest::RequestBuilder) -> reqwest::Response {
    request.send().await.expect("request completes")
}

/// Sends `request` and reads its body as text (the metrics page).
pub async fn text_of(request: reqwest::RequestBuilder) -> String {
    send(request).await.text().await.expect("text body")
}

/// Asserts that the metrics page has `expected` (a sample line or a metric's name).
#[track_caller]
pub fn assert_has_metric(metrics: &str, expected: &str) {
    assert!(metrics.contains(expected), "{metrics}");
}

pub async fn json_of(r: reqwest::Response) -> Value {
    r.json::<Value>().await.expect("JSON body")
}

pub fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Reads a streamed body to its end (within 20 s), calling `after_chunk` with the text so far
/// after each chunk.
pub async fn collect_stream(r: reqwest::Response, mut after_chunk: impl FnMut(&str)) -> String {
    let mut stream = r.bytes_stream();
    let mut text = String::new();
    let read = async {
        while let Some(chunk) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
            after_chunk(&text);
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("stream finished in time");
    text
}
