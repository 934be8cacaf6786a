//! Hot reload: `POST /admin/reload` and SIGHUP load the configured bundle again. The shipped
//! bundle is copied into a temporary directory, which the tests then change: a new version in
//! `router.json`, a head of NaN weights, a missing file. The SIGHUP test drives the handler that
//! `serve` installs ([`router_server::reload_on_sighup`]) with a real SIGHUP sent to this test
//! process. Every wait is bounded; servers stop at the end of each test.

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Json;
use axum::routing::post;
use common::{bundle, json_of, send, Backend, Server};
use router_policy::ModelSpec;
use router_server::{DeploymentSection, ServerConfig, ServerConfigBuilder};
use serde_json::{json, Value};
use tempfile::TempDir;

mod common;

const ADMIN_KEY: &str = "admin-secret";
const SHIPPED_VERSION: &str = "2026-11-23";

/// Copies the shipped bundle's files into `dir/bundle`.
fn copy_bundle(dir: &Path) -> PathBuf {
    let to = dir.join("bundle");
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(bundle()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
    to
}

fn set_version(bundle: &Path, version: &str) {
    let path = bundle.join("router.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["version"] = json!(version);
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
}

/// Overwrites every weight of `head.safetensors` with NaN (the header, shapes and size stay).
fn poison_head(bundle: &Path) {
    let path = bundle.join("head.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + header_len]).unwrap();
    assert!(
        header.contains("F32") && !header.contains("F16"),
        "{header}"
    );
    for weight in bytes[8 + header_len..].chunks_exact_mut(4) {
        weight.copy_from_slice(&f32::NAN.to_le_bytes());
    }
    std::fs::write(&path, bytes).unwrap();
}

async fn answer(Json(request): Json<Value>) -> Json<Value> {
    Json(json!({
        "id": "chatcmpl-r", "object": "chat.completion", "created": 1, "model": request["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
    }))
}

/// Two models on one deployment `d` at `backend`, without an access log.
fn config(bundle: &Path, backend: std::net::SocketAddr) -> ServerConfigBuilder {
    ServerConfig::builder(bundle)
        .named("reload-test.toml")
        .listen("127.0.0.1:0".parse().unwrap())
        .access_log(false)
        .env(|var| (var == "ADMIN_KEY").then(|| ADMIN_KEY.to_string()))
        .model(ModelSpec::new("gpt-4-1106-preview", 10.0, 30.0, 128_000).deployments(["d"]))
        .model(ModelSpec::new("gpt-3.5-turbo-1106", 1.0, 2.0, 16_385).deployments(["d"]))
        .deployment(DeploymentSection::openai(
            "d",
            format!("http://{backend}/v1"),
            "up",
        ))
}

struct Env {
    server: Server,
    bundle: PathBuf,
    _backend: Backend,
    _dir: TempDir,
}

impl Env {
    async fn start(admin: bool) -> Env {
        let backend =
            Backend::serve(axum::Router::new().route("/v1/chat/completions", post(answer))).await;
        let dir = TempDir::new().unwrap();
        let bundle = copy_bundle(dir.path());
        let config = config(&bundle, backend.addr);
        let server = Server::start(if admin {
            config.admin_key_env("ADMIN_KEY")
        } else {
            config
        })
        .await;
        Env {
            server,
            bundle,
            _backend: backend,
            _dir: dir,
        }
    }

    async fn reload(&self, key: &str) -> (u16, Value) {
        let r = send(
            self.server
                .request(reqwest::Method::POST, "/admin/reload")
                .bearer_auth(key),
        )
        .await;
        (r.status().as_u16(), json_of(r).await)
    }

    async fn version(&self) -> String {
        let health = json_of(send(self.server.get("/health")).await).await;
        assert_eq!(health["bundle"], "routerbench");
        health["version"].as_str().unwrap().to_string()
    }

    async fn chat_ok(&self) {
        let r = send(
            self.server
                .request(reqwest::Method::POST, "/v1/chat/completions")
                .json(&json!({"model": "model-router", "messages": [{"role": "user", "content": "What is 2+2?"}]})),
        )
        .await;
        assert_eq!(r.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_over_http_switches_the_bundle_in_use() {
    let env = Env::start(true).await;
    assert_eq!(env.version().await, SHIPPED_VERSION);
    let old_routing = Arc::downgrade(&env.server.running.state().routing());
    set_version(&env.bundle, "2099-01-01");

    let (status, body) = env.reload("wrong").await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (401, json!("invalid_api_key"))
    );
    assert_eq!(
        env.version().await,
        SHIPPED_VERSION,
        "not reloaded without the admin key"
    );

    let (status, body) = env.reload(ADMIN_KEY).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"status": "reloaded", "old": "routerbench@2026-11-23", "new": "routerbench@2099-01-01"})
    );
    assert_eq!(env.version().await, "2099-01-01");
    let models = json_of(send(env.server.get("/v1/models")).await).await;
    assert_eq!(models["data"][0]["version"], "2099-01-01", "{models}");
    env.chat_ok().await;
    // No request holds the old router any more: it (and its scorer thread) is gone.
    assert!(old_routing.upgrade().is_none());
    let metrics = common::text_of(env.server.get("/metrics")).await;
    assert!(
        metrics.contains("model_router_reloads_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_key_there_is_no_reload_endpoint() {
    let env = Env::start(false).await;
    let (status, body) = env.reload(ADMIN_KEY).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (404, json!("not_found"))
    );
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_bundle_is_refused_and_the_old_one_keeps_serving() {
    let env = Env::start(true).await;
    // NaN weights load, but fail the probe.
    let head = std::fs::read(env.bundle.join("head.safetensors")).unwrap();
    set_version(&env.bundle, "2099-01-01");
    poison_head(&env.bundle);
    let (status, body) = env.reload(ADMIN_KEY).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "bundle_refused");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("NaN") && message.contains("probe"),
        "{message}"
    );
    assert_eq!(env.version().await, SHIPPED_VERSION);
    env.chat_ok().await;

    // A missing file fails to load.
    std::fs::write(env.bundle.join("head.safetensors"), head).unwrap();
    std::fs::remove_file(env.bundle.join("tokenizer.json")).unwrap();
    let (status, body) = env.reload(ADMIN_KEY).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tokenizer.json"),
        "{body}"
    );
    assert_eq!(env.version().await, SHIPPED_VERSION);
    env.chat_ok().await;
    let metrics = common::text_of(env.server.get("/metrics")).await;
    assert!(
        metrics.contains("model_router_reloads_total{result=\"refused\"} 2"),
        "{metrics}"
    );
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_with_nan_weights_does_not_start() {
    let dir = TempDir::new().unwrap();
    let bundle = copy_bundle(dir.path());
    poison_head(&bundle);
    let config = config(&bundle, "127.0.0.1:9".parse().unwrap())
        .build()
        .unwrap();
    let error = match router_server::start(config).await {
        Ok(_) => panic!("a NaN head started"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains("refused") && error.contains("NaN") && error.contains("probe prompt"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_running_across_reloads_all_succeed() {
    let env = Arc::new(Env::start(true).await);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let env = env.clone();
            tokio::spawn(async move {
                for _ in 0..25 {
                    env.chat_ok().await;
                }
            })
        })
        .collect();
    for i in 0..6 {
        set_version(&env.bundle, &format!("2099-01-0{}", i + 1));
        let (status, body) = env.reload(ADMIN_KEY).await;
        assert_eq!(status, 200, "{body}");
    }
    for client in clients {
        client.await.expect("every request succeeded");
    }
    assert_eq!(env.version().await, "2099-01-06");
    let metrics = common::text_of(env.server.get("/metrics")).await;
    assert!(
        metrics.contains("spillover=\"false\",status=\"200\"} 100"),
        "{metrics}"
    );
    let env = Arc::into_inner(env).expect("the clients are done");
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_bundle() {
    let env = Env::start(false).await;
    let reloader = router_server::reload_on_sighup(env.server.running.state().clone()).unwrap();
    set_version(&env.bundle, "2099-12-31");
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut version = String::new();
    for _ in 0..200 {
        version = env.version().await;
        if version == "2099-12-31" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(version, "2099-12-31");
    env.chat_ok().await;
    reloader.abort();
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_reads_the_config_file_again() {
    let backend =
        Backend::serve(axum::Router::new().route("/v1/chat/completions", post(answer))).await;
    let dir = TempDir::new().unwrap();
    let first = copy_bundle(dir.path());
    let second = dir.path().join("second");
    std::fs::rename(copy_bundle(&dir.path().join("tmp")), &second).unwrap();
    set_version(&second, "2099-02-02");
    let file = dir.path().join("model-router.toml");
    let written = config(&first, backend.addr);
    std::fs::write(&file, written.to_toml().unwrap()).unwrap();
    let config = router_server::ServerConfig::load(&file).unwrap();
    let running = router_server::start(config).await.unwrap();
    let state = running.state().clone();

    // `router.bundle` now names another directory.
    let moved = written.router(|r| r.bundle = second.clone());
    std::fs::write(&file, moved.to_toml().unwrap()).unwrap();
    let reloaded = state.reload().await.unwrap();
    assert_eq!(reloaded.new, "routerbench@2099-02-02");
    assert_eq!(state.routing().version(), "2099-02-02");

    // A catalog that needs a deployment the running server does not have is refused.
    let extra = moved
        .model(ModelSpec::new("claude-v2", 8.0, 24.0, 100_000).deployments(["new"]))
        .deployment(DeploymentSection::openai(
            "new",
            "http://127.0.0.1:9/v1",
            "c",
        ));
    std::fs::write(&file, extra.to_toml().unwrap()).unwrap();
    let error = state.reload().await.unwrap_err().to_string();
    assert!(
        error.contains("models.claude-v2.deployments") && error.contains("running server"),
        "{error}"
    );
    assert_eq!(state.routing().version(), "2099-02-02");
    running.shutdown(Duration::from_secs(2)).await;
}
