//! The server's decide step charges the bundle's predicted output lengths: with models/zeroeval
//! (which has an output-length head) behind a mock OpenAI backend on 127.0.0.1, the explained
//! decision lists each model's predicted output tokens and charges each eligible model its own.

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use axum::routing::post;
use axum::Json;
use common::{header, json_of, send, Backend, Server};
use router_policy::{Mode, ModelSpec};
use router_server::{DeploymentSection, ServerConfig, ServerConfigBuilder};
use serde_json::{json, Value};

mod common;

const MINI: &str = "gpt-4o-mini-2024-07-18";
const GPT4O: &str = "gpt-4o-2024-08-06";

async fn answer(Json(body): Json<Value>) -> Json<Value> {
    Json(json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
    }))
}

fn config(backend: std::net::SocketAddr) -> ServerConfigBuilder {
    let bundle = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/zeroeval");
    let url = format!("http://{backend}/v1");
    ServerConfig::builder(bundle)
        .listen("127.0.0.1:0".parse().unwrap())
        .mode(Mode::Cost)
        .env(|_| None)
        .model(
            ModelSpec::new(GPT4O, 2.5, 10.0, 128_000)
                .expected_output_tokens(217)
                .deployments(["gpt4o"]),
        )
        .model(
            ModelSpec::new(MINI, 0.15, 0.6, 128_000)
                .expected_output_tokens(217)
                .deployments(["mini"]),
        )
        .deployment(DeploymentSection::openai("gpt4o", &url, GPT4O))
        .deployment(DeploymentSection::openai("mini", &url, MINI))
}

/// Routes `prompt` with `x-router-explain` and returns the decision the server explains (the
/// answer itself read to its end).
async fn explained_decision(server: &Server, prompt: &str) -> Value {
    let body = json!({"model": "model-router", "messages": [{"role": "user", "content": prompt}]});
    let response = send(
        server
            .request(reqwest::Method::POST, "/v1/chat/completions")
            .header("x-router-explain", "true")
            .json(&body),
    )
    .await;
    assert_eq!(response.status(), 200);
    let decision =
        serde_json::from_str(&header(&response, "x-router-decision").expect("a decision header"))
            .unwrap();
    json_of(response).await;
    decision
}

#[tokio::test]
async fn the_explained_decision_charges_predicted_output_lengths() {
    let backend =
        Backend::serve(axum::Router::new().route("/v1/chat/completions", post(answer))).await;
    let server = Server::start(config(backend.addr)).await;
    let decision = explained_decision(&server, "What is the capital of France?").await;
    let lengths = decision["predicted_output_tokens"]
        .as_object()
        .expect("predicted_output_tokens");
    assert_eq!(
        lengths.len(),
        11,
        "one predicted length per bundle column: {decision}"
    );
    for model in [GPT4O, MINI] {
        let charged = decision["eligible"][model]["output_tokens"]
            .as_u64()
            .expect("eligible");
        assert_eq!(
            Some(charged),
            lengths[model].as_u64(),
            "{model} is charged its predicted length"
        );
    }
    assert_ne!(lengths[GPT4O], lengths[MINI], "{decision}");
    server.stop().await;
}

/// A MATH level-5 prompt of the data the default bundle learned from: its task gate recognises
/// it, and the server's explained decision says so, as `route` does.
fn math_level5_prompt() -> String {
    let data =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/zeroeval/train.jsonl");
    let text = std::fs::read_to_string(&data).unwrap_or_else(|e| panic!("{}: {e}", data.display()));
    text.lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .find(|row| row["task"] == "math-l5")
        .and_then(|row| row["prompt"].as_str().map(str::to_string))
        .expect("a math-l5 row")
}

#[tokio::test]
async fn the_explained_decision_names_the_task_gate() {
    let backend =
        Backend::serve(axum::Router::new().route("/v1/chat/completions", post(answer))).await;
    let server = Server::start(config(backend.addr)).await;
    let mut gates = Vec::new();
    for prompt in [
        math_level5_prompt(),
        "What is the capital of France?".to_string(),
    ] {
        gates.push(explained_decision(&server, &prompt).await["task_gate"].clone());
    }
    assert_eq!(gates[0]["task"], "math-l5", "{gates:?}");
    assert!(gates[0]["confidence"].as_f64().unwrap() >= 0.5, "{gates:?}");
    assert!(
        gates[1].is_null(),
        "an everyday prompt is not recognised: {gates:?}"
    );
    server.stop().await;
}
