//! Capacity-aware dispatch against loopback mocks that speak OpenAI's chat API: a deployment
//! known to be full is skipped before sending (declared capacity, rate-limit headers), the
//! window slides, and replicas sharing one `SharedLimits` see each other's cooldowns. Nothing
//! here asserts a duration.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test scaffolding: a failure there is the test's failure"
)]
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use router_dispatch::{
    Deployment, DeploymentKind, DispatchOptions, DispatchRequest, Dispatcher, LocalLimits,
    SharedLimits, SpillReason,
};
use serde_json::{json, Value};

/// A mock deployment on 127.0.0.1 answering `status` with `headers`, counting its requests.
struct Mock {
    url: reqwest::Url,
    hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Mock {
    async fn start(status: StatusCode, headers: &'static [(&'static str, &'static str)]) -> Mock {
        let hits = Arc::new(AtomicU64::new(0));
        let counter = hits.clone();
        let answer = move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let mut map = HeaderMap::new();
                for (name, value) in headers {
                    map.insert(*name, HeaderValue::from_static(value));
                }
                let body = json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]});
                (status, map, axum::Json(body)).into_response()
            }
        };
        let app = axum::Router::new().route("/v1/chat/completions", post(answer));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _: Result<(), _> = axum::serve(listener, app).await;
        });
        let url = reqwest::Url::parse(&format!("http://{addr}/v1")).unwrap();
        Mock { url, hits, task }
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A provisioned `ptu` (spilling to `payg`) and a pay-as-you-go `payg`.
fn deployments(ptu: &Mock, payg: &Mock, capacity_tpm: Option<u64>) -> Vec<Deployment> {
    let mut primary = Deployment::new("ptu", DeploymentKind::OpenAi, ptu.url.clone(), "m");
    primary.provisioned = true;
    primary.spillover = Some("payg".into());
    primary.capacity_tpm = capacity_tpm;
    let spill = Deployment::new("payg", DeploymentKind::OpenAi, payg.url.clone(), "m");
    vec![primary, spill]
}

/// A request charged 3 + (2 + 2 + 4) + 100 = 111 tokens.
fn body() -> Value {
    json!({"messages": [{"role": "user", "content": "hello"}], "max_tokens": 100})
}

async fn send(dispatcher: &Dispatcher) -> (String, Option<SpillReason>, usize) {
    let names = ["ptu".to_string()];
    let body = body();
    let d = dispatcher
        .dispatch(DispatchRequest {
            deployments: &names,
            body: &body,
            spillover: None,
        })
        .await
        .expect("dispatched");
    (d.deployment, d.spill_reason, d.throttled.len())
}

#[tokio::test]
async fn a_full_window_spills_before_sending_and_slides() {
    let ptu = Mock::start(StatusCode::OK, &[]).await;
    let payg = Mock::start(StatusCode::OK, &[]).await;
    let options = DispatchOptions {
        capacity_window: Duration::from_secs(2),
        ..DispatchOptions::default()
    };
    // 6,000 tokens a minute are 200 in a 2-second window: one request of 111 fits, two do not.
    let dispatcher = Dispatcher::new(deployments(&ptu, &payg, Some(6_000)), options).unwrap();
    assert_eq!(send(&dispatcher).await, ("ptu".into(), None, 0));
    assert_eq!(
        send(&dispatcher).await,
        ("payg".into(), Some(SpillReason::PredictedFull), 0)
    );
    assert_eq!((ptu.hits(), payg.hits()), (1, 1));

    let load = dispatcher.load_snapshot().await;
    let ptu_load = load.iter().find(|l| l.deployment == "ptu").unwrap();
    assert_eq!((ptu_load.window_tokens, ptu_load.window_requests), (111, 1));
    assert_eq!(ptu_load.utilisation, Some(111.0 / 200.0));
    assert_eq!(ptu_load.spills.predicted_full, 1);
    assert_eq!(ptu_load.in_flight, 0);

    // The window slides: once the first request has left it, the provisioned one takes the next.
    let mut waited = 0;
    while dispatcher.load_snapshot().await[1].window_requests > 0 {
        assert!(waited < 100, "the window never slid");
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    assert_eq!(send(&dispatcher).await, ("ptu".into(), None, 0));
}

#[tokio::test]
async fn rate_limit_headers_without_room_spill_the_next_request() {
    let ptu = Mock::start(
        StatusCode::OK,
        &[
            ("x-ratelimit-remaining-tokens", "50"),
            ("x-ratelimit-reset-tokens", "1m0s"),
        ],
    )
    .await;
    let payg = Mock::start(StatusCode::OK, &[]).await;
    let dispatcher =
        Dispatcher::new(deployments(&ptu, &payg, None), DispatchOptions::default()).unwrap();
    assert_eq!(send(&dispatcher).await.0, "ptu");
    // 50 tokens left for a minute: a request charged 111 spills without a round trip.
    assert_eq!(
        send(&dispatcher).await,
        ("payg".into(), Some(SpillReason::PredictedFull), 0)
    );
    assert_eq!(ptu.hits(), 1);
    let load = dispatcher.load_snapshot().await;
    assert_eq!(load[1].headroom_tokens, Some(50));

    // Cooldown-only dispatch ignores the headers and meets the provisioned deployment again.
    let options = DispatchOptions {
        capacity_aware: false,
        ..DispatchOptions::default()
    };
    let unaware = Dispatcher::new(deployments(&ptu, &payg, None), options).unwrap();
    assert_eq!(send(&unaware).await.0, "ptu");
    assert_eq!(send(&unaware).await.0, "ptu");
    assert_eq!(ptu.hits(), 3);
}

#[tokio::test]
async fn replicas_sharing_limits_skip_a_deployment_another_cooled() {
    let ptu = Mock::start(StatusCode::TOO_MANY_REQUESTS, &[("retry-after", "30")]).await;
    let payg = Mock::start(StatusCode::OK, &[]).await;
    let shared: Arc<dyn SharedLimits> = Arc::new(LocalLimits::default());
    let options = DispatchOptions {
        probe_interval: Duration::from_secs(60),
        ..DispatchOptions::default()
    };
    let replica_a = Dispatcher::new(deployments(&ptu, &payg, None), options.clone())
        .unwrap()
        .with_shared_limits(shared.clone());
    let replica_b = Dispatcher::new(deployments(&ptu, &payg, None), options)
        .unwrap()
        .with_shared_limits(shared.clone());
    // Two 429s in a row on replica A cool the deployment for its Retry-After...
    assert_eq!(
        send(&replica_a).await,
        ("payg".into(), Some(SpillReason::TooMany), 1)
    );
    assert_eq!(
        send(&replica_a).await,
        ("payg".into(), Some(SpillReason::TooMany), 1)
    );
    assert!(shared.cooldown_left("ptu").unwrap().is_some());
    assert_eq!(ptu.hits(), 2);
    // ...replica B sends its probe (it never saw the deployment), then skips it while it cools.
    assert_eq!(send(&replica_b).await.2, 1);
    assert_eq!(
        send(&replica_b).await,
        ("payg".into(), Some(SpillReason::Cooling), 0)
    );
    assert_eq!(ptu.hits(), 3);
    assert!(replica_b.cooldown_left("ptu").is_some());
}
