//! The fault suite: the server in front of loopback backends that misbehave (5xx, empty 5xx,
//! 401 with the key in the body, garbage 200, 200 without `choices`, 429 with and without
//! `Retry-After`, hangs, stalls, cut streams, refused connections) and clients that are slow,
//! idle or hostile. Each case asserts what the client gets, what is counted and logged, and
//! that nothing half-done is stored. Every wait is bounded; every server is stopped.

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::post;
use common::{header, send, text_of, Backend, Server};
use fault_backend::*;
use router_server::LogFormat;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
mod fault_backend;

// ---------------------------------------------------------------------------------------------
// Upstream answers that are not answers

#[tokio::test]
async fn upstream_non_answers_are_502_counted_and_never_stored() {
    let env = Env::start(|c| c).await;
    let store = json!({"store": true});
    for (fault, code, kind) in [
        (
            Fault::Garbage200,
            "invalid_upstream_answer",
            "not_a_completion",
        ),
        (
            Fault::NoChoices,
            "invalid_upstream_answer",
            "not_a_completion",
        ),
        (Fault::Empty500, "upstream_error", "server_error"),
        (Fault::Status500, "upstream_error", "server_error"),
        (Fault::Unauthorized, "upstream_auth_failed", "credentials"),
    ] {
        env.mock.set("m", fault.clone());
        let r = env.chat(MIXTRAL, store.clone()).await;
        let stored_header = header(&r, "x-router-store").unwrap_or_default();
        let (status, body, _) = openai_error(r).await;
        assert_eq!(status, 502, "{fault:?}: {body}");
        assert_eq!(body["error"]["code"], code, "{fault:?}: {body}");
        assert!(
            stored_header.starts_with("skipped"),
            "{fault:?}: {stored_header}"
        );
        assert!(
            !body.to_string().contains("sk-live"),
            "the backend's body is never passed on: {body}"
        );
        let metrics = env.metrics().await;
        assert!(
            metrics.contains(&format!(
                "model_router_upstream_failures_total{{deployment=\"m\",kind=\"{kind}\"}}"
            )),
            "{metrics}"
        );
    }
    assert_eq!(env.stored_count().await, 0, "nothing half-done is stored");
    // 5xx are retried (max_retries = 1): an empty 500 cost two calls.
    let hits = env.mock.hits("m");
    assert_eq!(
        hits,
        1 + 1 + 2 + 2 + 1,
        "garbage, no choices, 2 × empty 500, 2 × 500, 401"
    );
    // 500 then 200: the retry answers.
    env.mock.set("m", Fault::FailFirst(hits + 1));
    let r = env.chat(MIXTRAL, store).await;
    assert_eq!(r.status(), 200);
    assert!(header(&r, "x-router-store")
        .unwrap_or_default()
        .starts_with("stored"));
    assert_eq!(env.stored_count().await, 1);
    env.stop().await;
}

#[tokio::test]
async fn timeouts_are_504_and_refused_connections_502() {
    let env = Env::start(|c| c).await;
    let started = Instant::now();
    env.mock.set("m", Fault::Hang);
    let (status, body, _) = openai_error(env.chat(MIXTRAL, json!({"store": true})).await).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (504, Some("gateway_timeout")),
        "{body}"
    );
    env.mock.set("m", Fault::Stall);
    let (status, body, _) = openai_error(env.chat(MIXTRAL, json!({"store": true})).await).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (504, Some("gateway_timeout")),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded by the dispatch timeouts"
    );
    let metrics = env.metrics().await;
    assert!(
        metrics
            .contains("model_router_upstream_failures_total{deployment=\"m\",kind=\"timeout\"} 2"),
        "{metrics}"
    );
    // A stream that breaks off before `data: [DONE]` reaches the client as it came and is not stored.
    env.mock.set("m", Fault::CutStream);
    let r = env
        .chat(MIXTRAL, json!({"stream": true, "store": true}))
        .await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("par") && !text.lines().any(|l| l == "data: [DONE]"),
        "{text}"
    );
    assert!(text.contains(": x-router-store: skipped"), "{text}");
    assert_eq!(env.stored_count().await, 0);
    env.stop().await;

    // Connection refused: a model whose only deployment is a closed port.
    let mock = Arc::new(Mock::default());
    let backend = Backend::serve(
        axum::Router::new()
            .route("/d/{dep}/v1/chat/completions", post(mock_backend))
            .with_state(mock.clone()),
    )
    .await;
    let server = Server::start(config(backend.addr, dead_port().await, "dead")).await;
    let body = json!({"model": MIXTRAL, "messages": [{"role": "user", "content": "Hi"}]});
    let r = send(
        server
            .request(reqwest::Method::POST, "/v1/chat/completions")
            .json(&body),
    )
    .await;
    let (status, body, _) = openai_error(r).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (502, Some("upstream_error")),
        "{body}"
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 429s

#[tokio::test]
async fn a_429_tries_everything_that_can_serve_before_the_client_sees_one() {
    let env = Env::start(|c| c).await;
    // The model's other deployment.
    env.mock.set("a1", Fault::TooMany(Some(1)));
    let r = env.chat(GPT4, json!({})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-router-deployment").as_deref(), Some("a2"));
    // A provisioned deployment spills over.
    env.mock.set("b", Fault::TooMany(None));
    let r = env.chat(GPT35, json!({})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-router-deployment").as_deref(),
        Some("b-spill")
    );
    // Nothing left: 429, always with Retry-After (here none came from upstream).
    env.mock.set("c", Fault::TooMany(None));
    let (status, _, retry_after) = openai_error(env.chat(CLAUDE, json!({})).await).await;
    assert_eq!((status, retry_after.as_deref()), (429, Some("1")));
    // One 429 without Retry-After does not cool the deployment: the next request goes there.
    env.mock.set("c", Fault::Answer);
    assert_eq!(env.chat(CLAUDE, json!({})).await.status(), 200);
    assert_eq!(env.mock.hits("c"), 2);
    env.stop().await;
}

#[tokio::test]
async fn a_cooling_deployment_lets_a_probe_through() {
    let env = Env::start(|c| c).await;
    env.mock.set("c", Fault::TooManyTwice);
    // The client gets the backend's Retry-After; one 429 does not cool, the second does.
    for _ in 0..2 {
        let (status, _, retry_after) = openai_error(env.chat(CLAUDE, json!({})).await).await;
        assert_eq!((status, retry_after.as_deref()), (429, Some("30")));
    }
    // Cooling (Retry-After 30 s): the next request is answered without a round trip...
    let (status, _, retry_after) = openai_error(env.chat(CLAUDE, json!({})).await).await;
    assert_eq!((status, env.mock.hits("c")), (429, 2));
    assert!(retry_after.is_some_and(|s| s.parse::<u64>().is_ok_and(|s| (29..=30).contains(&s))));
    // ... until the probe interval (200 ms) has passed: the probe is answered, the cooldown ends.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(env.chat(CLAUDE, json!({})).await.status(), 200);
    assert_eq!(env.chat(CLAUDE, json!({})).await.status(), 200);
    assert_eq!(env.mock.hits("c"), 4);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_percent_of_429s_do_not_reach_the_clients() {
    let env = Env::start(|c| c).await;
    for d in ["a1", "a2", "b", "b-spill", "c", "m"] {
        env.mock.set(d, Fault::TooManyEvery(50));
    }
    let mut failed = 0;
    for i in 0..300 {
        // Named models, then routed requests: both must find another deployment or model.
        let model = if i % 2 == 0 { GPT4 } else { "model-router" };
        let r = env.chat(model, json!({})).await;
        if r.status() != 200 {
            failed += 1;
            eprintln!(
                "{model}: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
    }
    assert_eq!(failed, 0, "client requests failed");
    env.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Clients

/// Reads from `stream` until the server closes it (or `limit` passes); what it sent.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read).await.ok()?;
    Some(String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test]
async fn idle_half_header_and_half_body_clients_are_closed() {
    let env = Env::start(|c| c).await;
    let chat =
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n";
    for (name, sent) in [
        ("idle", String::new()),
        ("half a header", chat.to_string()),
        (
            "half a body",
            format!("{chat}content-length: 100\r\n\r\n{{\"model\":"),
        ),
    ] {
        let mut stream = TcpStream::connect(env.addr()).await.unwrap();
        stream.write_all(sent.as_bytes()).await.unwrap();
        let got = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        let got = got.unwrap_or_else(|| panic!("{name}: still open after 5 s"));
        if name == "half a body" {
            assert!(got.starts_with("HTTP/1.1 408"), "{name}: {got}");
        }
    }
    // A keep-alive connection idle after its answer is closed too.
    let mut stream = TcpStream::connect(env.addr()).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut stream, Duration::from_secs(5))
        .await
        .expect("closed");
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    env.stop().await;
}

#[tokio::test]
async fn at_the_connection_cap_health_still_answers() {
    // Long header timeout: the idle connections stay for the whole test.
    let env = Env::start(|c| {
        c.server(|s| {
            s.max_connections = Some(8);
            s.header_timeout_ms = Some(20_000);
        })
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..200 {
        if let Ok(s) = TcpStream::connect(env.addr()).await {
            idle.push(s);
        }
    }
    // The cap's overflow connections time out after 1 s; then /health answers at once.
    let deadline = Instant::now() + Duration::from_secs(5);
    let health = loop {
        let r = reqwest::Client::new()
            .get(env.server.url("/health"))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        match r {
            Ok(r) => break r,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("/health does not answer at the cap: {e}"),
        }
    };
    assert_eq!(health.status(), 200);
    let r = reqwest::Client::new()
        .post(env.server.url("/v1/chat/completions"))
        .json(&json!({"model": MIXTRAL, "messages": [{"role": "user", "content": "Hi"}]}))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .expect("answered");
    let (status, body, retry_after) = openai_error(r).await;
    assert_eq!((status, retry_after.as_deref()), (503, Some("1")), "{body}");
    drop(idle);
    // The cap's slots come back when the clients go.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.chat(MIXTRAL, json!({})).await.status(), 200);
    env.stop().await;
}

/// Sends three requests whose path, model and request id try to forge log lines, each a 404,
/// and returns the access log.
async fn hostile_requests(env: &Env) -> String {
    let forged = "%0D%0Aaccess%20ts=1%20status=200%20path=%22forged%22%0A";
    let http = reqwest::Client::new();
    let r = http
        .post(
            env.server
                .url(&format!("/openai/deployments/{forged}/chat/completions")),
        )
        .json(&json!({"messages": [{"role": "user", "content": "Hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = env.chat("x\r\nstatus=200 \"y\"", json!({})).await;
    assert_eq!(r.status(), 404);
    // A client's request id with a quote and `=` is kept, and quoted in the log.
    let body = json!({"model": "nope", "messages": [{"role": "user", "content": "Hi"}]});
    let r = send(
        env.server
            .request(reqwest::Method::POST, "/v1/chat/completions")
            .header("x-request-id", "a\"b=status=200")
            .json(&body),
    )
    .await;
    assert_eq!(r.status(), 404);
    env.access_log()
}

#[tokio::test]
async fn log_fields_are_escaped() {
    let env = Env::start(|c| c).await;
    let log = hostile_requests(&env).await;
    eprintln!("{log}");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 3, "{log}");
    for line in &lines {
        assert!(line.starts_with("access ts="), "{line}");
        assert!(line.contains(" status=404 "), "{line}");
    }
    assert!(
        lines[0].contains(r#"\r\naccess ts=1 status=200 path=\"forged\"\n"#),
        "{}",
        lines[0]
    );
    assert!(
        lines[2].contains(r#" request_id="a\"b=status=200" "#),
        "{}",
        lines[2]
    );
    env.stop().await;
}

#[tokio::test]
async fn json_log_fields_are_escaped() {
    let env = Env::start(|c| c.log_format(LogFormat::Json)).await;
    let log = hostile_requests(&env).await;
    eprintln!("{log}");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert_eq!(lines.len(), 3, "{log}");
    for line in &lines {
        assert_eq!(
            (&line["event"], &line["status"]),
            (&json!("access"), &json!(404)),
            "{line}"
        );
    }
    assert_eq!(
        lines[0]["path"],
        "/openai/deployments/\r\naccess ts=1 status=200 path=\"forged\"\n/chat/completions"
    );
    assert_eq!(
        lines[1]["model"], "none",
        "an unknown model is not logged as one"
    );
    assert_eq!(lines[2]["request_id"], "a\"b=status=200");
    env.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Silent failures

#[tokio::test]
async fn unauthorised_requests_are_logged_and_counted() {
    let env = Env::start(|c| {
        c.api_keys_env("KEYS")
            .env(|name| (name == "KEYS").then(|| "key-1".to_string()))
    })
    .await;
    let r = send(
        env.server
            .get("/v1/models")
            .header("authorization", "Bearer wrong"),
    )
    .await;
    assert_eq!(r.status(), 401);
    let log = env.access_log();
    assert!(
        log.contains("status=401") && log.contains("error=invalid_api_key"),
        "{log}"
    );
    let metrics = text_of(
        env.server
            .get("/metrics")
            .header("authorization", "Bearer key-1"),
    )
    .await;
    assert!(metrics.contains("model_router_requests_total{mode=\"none\",model=\"none\",spillover=\"false\",status=\"401\"} 1"), "{metrics}");
    env.stop().await;
}

#[tokio::test]
async fn address_in_use_names_the_address() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap();
    let config = config(dead_port().await, dead_port().await, "m")
        .listen(addr)
        .build()
        .unwrap();
    let error = router_server::start(config)
        .await
        .err()
        .expect("the address is taken");
    assert!(error.to_string().contains(&addr.to_string()), "{error}");
}

#[tokio::test]
async fn request_ids_are_kept_or_made_sent_upstream_returned_and_logged() {
    let env = Env::start(|c| c).await;
    let body = json!({"model": MIXTRAL, "messages": [{"role": "user", "content": "Hi"}]});
    let post = || {
        env.server
            .request(reqwest::Method::POST, "/v1/chat/completions")
            .json(&body)
    };
    let r = send(post().header("x-request-id", "client-id-1")).await;
    assert_eq!(header(&r, "x-request-id").as_deref(), Some("client-id-1"));
    let r = send(post()).await;
    let made = header(&r, "x-request-id").expect("an id is made");
    assert!(made.starts_with("req_"), "{made}");
    // An id with a space is not kept.
    let r = send(post().header("x-request-id", "a b")).await;
    assert_ne!(header(&r, "x-request-id").as_deref(), Some("a b"));
    let upstream = env.mock.request_ids.lock().unwrap().clone();
    assert_eq!(&upstream[..2], &["client-id-1".to_string(), made.clone()]);
    let log = env.access_log();
    assert!(
        log.lines()
            .next()
            .is_some_and(|l| l.contains("request_id=client-id-1")),
        "{log}"
    );
    assert!(log.contains(&format!("request_id={made}")), "{log}");
    env.stop().await;
}
