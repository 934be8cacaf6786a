//! Capacity-aware dispatch through the server: a provisioned deployment whose declared
//! `capacity_tpm` is used up spills the next request before sending, and `/metrics` shows the
//! deployment's utilisation and its spills by reason.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::routing::post;
use common::{assert_has_metric, bundle, header, send, text_of, Backend, Server};
use router_policy::{Mode, ModelSpec};
use router_server::{DeploymentSection, ServerConfig};
use serde_json::{json, Value};

/// Answers every deployment's chat completions, counting the provisioned one's.
async fn answer(
    State(ptu_hits): State<Arc<AtomicU64>>,
    UrlPath(deployment): UrlPath<String>,
) -> axum::Json<Value> {
    if deployment == "ptu" {
        ptu_hits.fetch_add(1, Ordering::SeqCst);
    }
    axum::Json(json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
    }))
}

#[tokio::test]
async fn a_full_provisioned_deployment_spills_before_sending_and_metrics_show_it() {
    let ptu_hits = Arc::new(AtomicU64::new(0));
    let app = axum::Router::new()
        .route("/d/{deployment}/v1/chat/completions", post(answer))
        .with_state(ptu_hits.clone());
    let backend = Backend::serve(app).await;
    let base = |d: &str| format!("http://{}/d/{d}/v1", backend.addr);
    let mut ptu = DeploymentSection::openai("ptu", base("ptu"), "gpt-4o").provisioned("payg");
    // 300 tokens a minute: one request charged about 215 (its prompt + max_tokens) fits, a second does not.
    ptu.capacity_tpm = Some(300);
    let config = ServerConfig::builder(bundle())
        .listen("127.0.0.1:0".parse().unwrap())
        .mode(Mode::Balanced)
        .model(ModelSpec::new("gpt-4-1106-preview", 10.0, 30.0, 128_000).deployments(["ptu"]))
        .deployment(ptu)
        .deployment(DeploymentSection::openai("payg", base("payg"), "gpt-4o"));
    let server = Server::start(config).await;
    let body = json!({"model": "gpt-4-1106-preview", "max_tokens": 200, "messages": [{"role": "user", "content": "Say ok."}]});
    let first = send(
        server
            .request(reqwest::Method::POST, "/v1/chat/completions")
            .json(&body),
    )
    .await;
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-ms-spillover-from-deployment"), None);
    let second = send(
        server
            .request(reqwest::Method::POST, "/v1/chat/completions")
            .json(&body),
    )
    .await;
    assert_eq!(second.status(), 200);
    assert_eq!(
        header(&second, "x-ms-spillover-from-deployment").as_deref(),
        Some("ptu")
    );
    assert_eq!(
        ptu_hits.load(Ordering::SeqCst),
        1,
        "the full deployment was not sent the second request"
    );

    let metrics = text_of(server.get("/metrics")).await;
    assert_has_metric(
        &metrics,
        r#"model_router_deployment_spills_total{deployment="ptu",reason="predicted_full"} 1"#,
    );
    assert_has_metric(
        &metrics,
        r#"model_router_deployment_spills_total{deployment="ptu",reason="429"} 0"#,
    );
    assert_has_metric(
        &metrics,
        r#"model_router_deployment_in_flight{deployment="payg"} 0"#,
    );
    let utilisation = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"model_router_deployment_utilisation{deployment="ptu"} "#))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no utilisation for ptu: {metrics}"));
    assert!(utilisation > 0.3 && utilisation <= 1.0, "{utilisation}");
    server.stop().await;
}
