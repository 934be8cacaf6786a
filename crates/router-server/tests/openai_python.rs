//! Drives the server with the official `openai` Python package: a plain and a streamed chat
//! completion through `model-router`. The package is installed from PyPI into a virtual
//! environment under the cargo target directory (reused by later runs). Without `python3`, or
//! when the install fails (no network), the test says so on stderr and passes without running.

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::IntoResponse;
use axum::routing::post;
use common::{bundle, Backend, Server};
use router_policy::ModelSpec;
use router_server::{DeploymentSection, ServerConfig, ServerConfigBuilder, StoreSection};
use serde_json::{json, Value};

mod common;

fn venv_python() -> Result<PathBuf, String> {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("openai-venv");
    let python = venv.join("bin").join("python");
    let works = |p: &Path| {
        Command::new(p)
            .args(["-c", "import openai"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works(&python) {
        return Ok(python);
    }
    let created = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .map_err(|e| format!("python3 is not available ({e})"))?;
    if !created.status.success() {
        return Err(format!(
            "python3 -m venv failed: {}",
            String::from_utf8_lossy(&created.stderr)
        ));
    }
    let installed = Command::new("timeout")
        .arg("300")
        .arg(venv.join("bin").join("pip"))
        .args(["install", "--quiet", "openai"])
        .output()
        .map_err(|e| format!("pip is not available ({e})"))?;
    if !installed.status.success() || !works(&python) {
        return Err(format!(
            "pip install openai failed: {}",
            String::from_utf8_lossy(&installed.stderr)
        ));
    }
    Ok(python)
}

/// The virtual environment's python, or `None` (said on stderr, naming `test`) when it cannot be
/// had: the test then passes without running.
async fn python_or_skip(test: &str) -> Option<PathBuf> {
    match tokio::task::spawn_blocking(venv_python).await.unwrap() {
        Ok(p) => Some(p),
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            None
        }
    }
}

async fn mock_backend() -> Backend {
    async fn answer(body: Bytes) -> axum::response::Response {
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let model = body["model"].as_str().unwrap_or("?").to_string();
        if body["stream"] == json!(true) {
            let mut text = String::new();
            for (i, word) in ["one", "two", "three"].iter().enumerate() {
                let chunk = json!({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": model,
                    "choices": [{"index": 0, "delta": {"content": if i == 0 { word.to_string() } else { format!(" {word}") }}, "finish_reason": null}]});
                text.push_str(&format!("data: {chunk}\n\n"));
            }
            text.push_str("data: [DONE]\n\n");
            return ([("content-type", "text/event-stream")], Body::from(text)).into_response();
        }
        axum::Json(json!({"id": "x", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}))
        .into_response()
    }
    Backend::serve(axum::Router::new().route("/v1/chat/completions", post(answer))).await
}

/// The config of the scripts: the proxy key, relative paths against `dir`, and each model with
/// one deployment (`d0`, `d1`, ...) on the mock backend `mock`.
fn config(
    mock: std::net::SocketAddr,
    dir: &Path,
    models: &[(&str, f64, &str)],
) -> ServerConfigBuilder {
    let mut config = ServerConfig::builder(bundle())
        .named("py.toml")
        .base_dir(dir)
        .env(|v| (v == "KEYS").then(|| "proxy-key".into()))
        .listen("127.0.0.1:0".parse().unwrap())
        .api_keys_env("KEYS");
    for (i, (name, price, upstream)) in models.iter().enumerate() {
        let deployment = format!("d{i}");
        config = config
            .model(ModelSpec::new(*name, *price, *price, 32_000).deployments([deployment.as_str()]))
            .deployment(DeploymentSection::openai(
                deployment,
                format!("http://{mock}/v1"),
                *upstream,
            ));
    }
    config
}

/// Runs `script` with the server's `/v1` URL as its argument (for at most 60 s), stops the
/// server, and returns the JSON the script printed.
async fn run_script(python: PathBuf, script: &'static str, server: Server) -> Value {
    let base = server.url("/v1");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || {
            Command::new(python).args(["-c", script, &base]).output()
        }),
    )
    .await
    .expect("python finished in time")
    .unwrap()
    .expect("python runs");
    server.stop().await;
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from the script")
}

const SCRIPT: &str = r#"
import json, sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key="proxy-key", max_retries=0, timeout=20)
r = client.chat.completions.create(model="model-router", messages=[
    {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}])
s = client.chat.completions.create(model="model-router", stream=True,
    messages=[{"role": "user", "content": "Count to three."}])
text = "".join(c.choices[0].delta.content or "" for c in s if c.choices)
print(json.dumps({"model": r.model, "content": r.choices[0].message.content, "stream": text}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_python_client() {
    let Some(python) = python_or_skip("official_openai_python_client").await else {
        return;
    };
    let backend = mock_backend().await;
    let mock = backend.addr;
    let models = ["gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat"];
    let priced = [(models[0], 10.0, models[0]), (models[1], 5.0, models[1])];
    let server = Server::start(config(mock, Path::new("."), &priced)).await;
    let result = run_script(python, SCRIPT, server).await;
    assert!(
        models.contains(&result["model"].as_str().unwrap()),
        "{result}"
    );
    assert_eq!(result["content"], "hello");
    assert_eq!(result["stream"], "one two three");
}

const STORED_SCRIPT: &str = r#"
import json, sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key="proxy-key", max_retries=0, timeout=20)
ids = []
for i in range(3):
    r = client.chat.completions.create(model="model-router", store=True, metadata={"task": "t", "i": str(i)},
        messages=[{"role": "user", "content": f"Q{i}"}])
    ids.append(r.id)
s = client.chat.completions.create(model="model-router", stream=True, store=True, metadata={"task": "s"},
    messages=[{"role": "user", "content": "Count to three."}])
text = "".join(c.choices[0].delta.content or "" for c in s if c.choices)
listed = [c.id for c in client.chat.completions.list(metadata={"task": "t"}, limit=2)]
one = client.chat.completions.retrieve(ids[0])
msgs = [(m.id, m.content) for m in client.chat.completions.messages.list(ids[1])]
updated = client.chat.completions.update(ids[2], metadata={"task": "u"})
deleted = client.chat.completions.delete(ids[0])
left = [c.id for c in client.chat.completions.list(order="desc")]
streamed = list(client.chat.completions.list(metadata={"task": "s"}))
print(json.dumps({"ids": ids, "listed": listed, "one_id": one.id, "one": one.choices[0].message.content,
    "one_metadata": getattr(one, "metadata", None), "msgs": msgs, "updated": getattr(updated, "metadata", None),
    "deleted": [deleted.id, deleted.deleted], "left": left, "stream": text,
    "streamed": [c.choices[0].message.content for c in streamed]}))
"#;

/// The OpenAI SDK's stored-completions calls (`list` with auto-pagination, `retrieve`,
/// `messages.list`, `update`, `delete`) against the server's `[store]`. The mock backend reuses
/// one id for every answer, so the store gives each record a fresh one and the client sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_python_client_stored_completions() {
    let Some(python) = python_or_skip("official_openai_python_client_stored_completions").await
    else {
        return;
    };
    let backend = mock_backend().await;
    let mock = backend.addr;
    let dir = tempfile::TempDir::new().unwrap();
    let config = config(mock, dir.path(), &[("gpt-4-1106-preview", 1.0, "up")])
        .store(StoreSection::sqlite("stored.db"));
    let server = Server::start(config).await;
    let r = run_script(python, STORED_SCRIPT, server).await;
    let ids: Vec<String> = serde_json::from_value(r["ids"].clone()).unwrap();
    assert_eq!(ids[0], "x", "the first answer keeps the backend's id");
    assert!(
        ids[1] != "x" && ids[2] != "x" && ids[1] != ids[2],
        "{ids:?}"
    );
    assert_eq!(r["listed"], json!(ids), "auto-pagination over pages of 2");
    assert_eq!(r["one_id"], ids[0]);
    assert_eq!(r["one"], "hello");
    assert_eq!(r["one_metadata"], json!({"task": "t", "i": "0"}));
    assert_eq!(r["msgs"], json!([[format!("{}-0", ids[1]), "Q1"]]));
    assert_eq!(r["updated"], json!({"task": "u"}));
    assert_eq!(r["deleted"], json!([ids[0], true]));
    assert_eq!(r["stream"], "one two three");
    assert_eq!(r["streamed"], json!(["one two three"]));
    let left: Vec<String> = serde_json::from_value(r["left"].clone()).unwrap();
    assert_eq!(left.len(), 3, "{left:?}");
    assert_eq!(left[1..], [ids[2].clone(), ids[1].clone()], "newest first");
}
