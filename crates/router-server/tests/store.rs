//! Stored completions end to end: the server in-process on 127.0.0.1:0 with a `[store]` (a
//! SQLite file in a temporary directory) in front of a local OpenAI-compatible mock backend.
//! Store → list/filter → get → messages → update → delete → export; the cap through the server;
//! API keys scoping the records. Every wait is bounded; servers stop at the end of each test.

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::{
    assert_has_metric, bundle, collect_stream, gpt4_and_gpt35, header, json_of, send, text_of,
    Backend, Server,
};
use router_server::{DeploymentSection, ServerConfig, StoreSection};
use router_store::{ExportFilter, Store, StoreOptions};
use serde_json::{json, Value};
use tempfile::TempDir;

mod common;

const GPT4: &str = "gpt-4-1106-preview";
const GPT35: &str = "gpt-3.5-turbo-1106";
const KEY_A: &str = "key-a";
const KEY_B: &str = "key-b";

#[derive(Default)]
struct Mock {
    hits: AtomicUsize,
    seen: Mutex<Vec<Value>>,
}

impl Mock {
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// The router takes `store` and `metadata` out of the first request it forwarded.
    #[track_caller]
    fn assert_store_fields_not_forwarded(&self) {
        let seen = self.seen.lock().unwrap()[0].clone();
        assert!(
            seen.get("store").is_none() && seen.get("metadata").is_none(),
            "{seen}"
        );
    }
}

/// An OpenAI-compatible backend: a JSON answer with a fresh id and usage, or a stream of
/// "Hel", "lo" (and a usage chunk when `stream_options.include_usage`).
async fn backend(State(mock): State<Arc<Mock>>, body: Bytes) -> Response {
    let n = mock.hits.fetch_add(1, Ordering::SeqCst) + 1;
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    mock.seen.lock().unwrap().push(body.clone());
    let model = body["model"].as_str().unwrap_or("?").to_string();
    let id = format!("chatcmpl-up-{n}");
    if body["stream"] == true {
        let chunk = |delta: Value, finish: Value| {
            format!(
                "data: {}\n\n",
                json!({"id": id, "object": "chat.completion.chunk", "created": 1, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            )
        };
        let mut events = vec![
            chunk(json!({"role": "assistant", "content": "Hel"}), Value::Null),
            chunk(json!({"content": "lo"}), Value::Null),
            chunk(json!({}), json!("stop")),
        ];
        if body["stream_options"]["include_usage"] == true {
            events.push(format!(
                "data: {}\n\n",
                json!({"id": id, "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [],
                    "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}})
            ));
        }
        events.push("data: [DONE]\n\n".into());
        let stream = futures_util::stream::iter(
            events
                .into_iter()
                .map(|e| Ok::<Bytes, std::convert::Infallible>(Bytes::from(e))),
        );
        return (
            [("content-type", "text/event-stream")],
            Body::from_stream(stream),
        )
            .into_response();
    }
    let prompt = body["messages"][0]["content"]
        .as_str()
        .unwrap_or("")
        .to_string();
    axum::Json(json!({
        "id": id, "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("answer to {prompt}")}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    }))
    .into_response()
}

struct Env {
    mock: Arc<Mock>,
    // Serves `mock` until the Env is dropped.
    _backend: Backend,
    server: Server,
    db: PathBuf,
    _dir: TempDir,
}

impl Env {
    /// A server with proxy keys A and B; `store` is the `[store]` section, its path set to
    /// `completions.db` in the test's directory (`None`: no store).
    async fn start(store: Option<StoreSection>) -> Env {
        let mock = Arc::new(Mock::default());
        let app = axum::Router::new()
            .route("/v1/chat/completions", post(backend))
            .with_state(mock.clone());
        let backend = Backend::serve(app).await;
        let addr = backend.addr;
        let dir = TempDir::new().unwrap();
        let db = dir.path().join("completions.db");
        let url = format!("http://{addr}/v1");
        let mut config = gpt4_and_gpt35(
            ServerConfig::builder(bundle())
                .named("store-test.toml")
                .base_dir(dir.path())
                .env(|v| (v == "PROXY_KEYS").then(|| format!("{KEY_A},{KEY_B}")))
                .listen("127.0.0.1:0".parse().unwrap())
                .api_keys_env("PROXY_KEYS"),
            GPT4,
            GPT35,
            "d4",
        )
        .deployment(DeploymentSection::openai("d4", &url, "up-4"))
        .deployment(DeploymentSection::openai("d35", &url, "up-35"));
        // Relative store paths resolve against the config's directory.
        if let Some(store) = store {
            config = config.store(StoreSection {
                path: Some("completions.db".into()),
                ..store
            });
        }
        let server = Server::start(config).await;
        Env {
            mock,
            _backend: backend,
            server,
            db,
            _dir: dir,
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut r = self.server.request(method, path).bearer_auth(key);
        if let Some(body) = body {
            r = r.json(&body);
        }
        send(r).await
    }

    async fn chat(&self, key: &str, body: Value) -> reqwest::Response {
        self.send(
            reqwest::Method::POST,
            "/v1/chat/completions",
            key,
            Some(body),
        )
        .await
    }

    async fn get(&self, key: &str, path: &str) -> (u16, Value) {
        let r = self.send(reqwest::Method::GET, path, key, None).await;
        (r.status().as_u16(), r.json().await.expect("JSON"))
    }

    /// The ids of a list (of completions or messages) that `key` gets at `path`.
    async fn listed_ids(&self, key: &str, path: &str) -> Vec<String> {
        ids(&self.get(key, path).await.1)
    }

    /// Updates a stored completion (a POST to its path).
    async fn update(&self, key: &str, path: &str, body: Value) -> reqwest::Response {
        self.send(reqwest::Method::POST, path, key, Some(body))
            .await
    }

    async fn delete(&self, key: &str, path: &str) -> reqwest::Response {
        self.send(reqwest::Method::DELETE, path, key, None).await
    }

    async fn metrics(&self) -> String {
        text_of(self.server.get("/metrics").bearer_auth(KEY_A)).await
    }

    /// A second connection to the SQLite file the server is using.
    fn open_store(&self) -> Store {
        Store::open(&self.db, StoreOptions::default()).expect("open the server's store")
    }

    async fn stop(self) {
        self.server.stop().await;
    }
}

fn store_header(r: &reqwest::Response) -> String {
    header(r, "x-router-store").unwrap_or_default()
}

#[track_caller]
fn assert_stored(r: &reqwest::Response) {
    assert!(
        store_header(r).starts_with("stored "),
        "{}",
        store_header(r)
    );
}

async fn id_of(r: reqwest::Response) -> String {
    json_of(r).await["id"].as_str().unwrap().to_string()
}

/// Checks that `r` has `status` and returns its (error) body.
async fn error_of(r: reqwest::Response, status: u16) -> Value {
    assert_eq!(r.status(), status);
    json_of(r).await
}

fn message_of(e: &Value) -> &str {
    e["error"]["message"].as_str().unwrap()
}

/// Checks that `r` is a 400 whose error names `param` and `code` and says `said`.
async fn assert_rejected(r: reqwest::Response, param: &str, code: &str, said: &str) {
    let e = error_of(r, 400).await;
    assert_eq!(
        (e["error"]["param"].as_str(), e["error"]["code"].as_str()),
        (Some(param), Some(code))
    );
    assert!(message_of(&e).contains(said), "{e}");
}

fn ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|c| c["id"].as_str().expect("id").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_list_get_messages_update_delete_export() {
    let env = Env::start(Some(StoreSection {
        max_bytes: Some(10_000_000),
        ..StoreSection::default()
    }))
    .await;

    // 1. A bypassed JSON request, stored with metadata.
    let r = env
        .chat(
            KEY_A,
            json!({"model": GPT35, "store": true, "metadata": {"task": "math", "grade": "0.9"},
            "messages": [{"role": "user", "content": "2+2?"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(store_header(&r), "stored chatcmpl-up-1");
    assert_eq!(json_of(r).await["id"], "chatcmpl-up-1");
    // `store` and `metadata` are the router's: not forwarded.
    env.mock.assert_store_fields_not_forwarded();

    // 2. A routed request, stored with its decision.
    let r = env
        .chat(
            KEY_A,
            json!({"model": "model-router", "store": true, "metadata": {"task": "code"},
            "messages": [{"role": "user", "content": "Reverse a linked list in Python."}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_stored(&r);
    let routed_id = id_of(r).await;

    // 3. A streamed request: stored at the end of the stream, before [DONE] reaches the client.
    let r = env
        .chat(KEY_A, json!({"model": GPT4, "store": true, "stream": true, "stream_options": {"include_usage": true},
            "metadata": {"task": "math", "grade": "0.4"},
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(store_header(&r), "pending");
    let text = collect_stream(r, |_| {}).await;
    assert!(
        text.contains("\"Hel\"") && text.contains("\"lo\""),
        "{text}"
    );
    assert!(
        text.ends_with("data: [DONE]\n\n: x-router-store: stored chatcmpl-up-3\n\n"),
        "{text}"
    );

    // 4. Not stored without `store: true`.
    let r = env
        .chat(
            KEY_A,
            json!({"model": GPT35, "messages": [{"role": "user", "content": "not kept"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(store_header(&r), "");

    // List: all three, oldest first; pages; filters.
    let (status, list) = env.get(KEY_A, "/v1/chat/completions").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["object"], "list");
    assert_eq!(
        ids(&list),
        ["chatcmpl-up-1", routed_id.as_str(), "chatcmpl-up-3"]
    );
    assert_eq!(
        (list["first_id"].as_str(), list["last_id"].as_str()),
        (Some("chatcmpl-up-1"), Some("chatcmpl-up-3"))
    );
    assert_eq!(list["has_more"], false);
    let (_, page) = env.get(KEY_A, "/v1/chat/completions?limit=2").await;
    assert_eq!((ids(&page).len(), &page["has_more"]), (2, &json!(true)));
    let (_, rest) = env
        .get(
            KEY_A,
            &format!(
                "/v1/chat/completions?limit=2&after={}",
                page["last_id"].as_str().unwrap()
            ),
        )
        .await;
    assert_eq!(
        (ids(&rest), &rest["has_more"]),
        (vec!["chatcmpl-up-3".to_string()], &json!(false))
    );
    let desc = env
        .listed_ids(KEY_A, "/v1/chat/completions?order=desc&limit=1")
        .await;
    assert_eq!(desc, ["chatcmpl-up-3"]);
    let math = env
        .listed_ids(KEY_A, "/v1/chat/completions?metadata[task]=math")
        .await;
    assert_eq!(math, ["chatcmpl-up-1", "chatcmpl-up-3"]);
    let math35 = env
        .listed_ids(
            KEY_A,
            &format!("/v1/chat/completions?metadata%5Btask%5D=math&model={GPT35}"),
        )
        .await;
    assert_eq!(math35, ["chatcmpl-up-1"]);
    let both = env
        .listed_ids(
            KEY_A,
            "/v1/chat/completions?metadata[task]=math&metadata[grade]=0.4",
        )
        .await;
    assert_eq!(both, ["chatcmpl-up-3"]);
    let (status, bad) = env.get(KEY_A, "/v1/chat/completions?limit=500").await;
    assert_eq!(
        (status, bad["error"]["param"].as_str()),
        (400, Some("limit"))
    );
    let (status, bad) = env.get(KEY_A, "/v1/chat/completions?after=nope").await;
    assert_eq!(
        (status, bad["error"]["param"].as_str()),
        (400, Some("after"))
    );

    // Get one: the response with metadata, the deployment, usage and the cost from usage.
    let (status, one) = env.get(KEY_A, "/v1/chat/completions/chatcmpl-up-1").await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["object"], "chat.completion");
    assert_eq!(one["model"], GPT35);
    assert_eq!(one["choices"][0]["message"]["content"], "answer to 2+2?");
    assert_eq!(one["metadata"], json!({"task": "math", "grade": "0.9"}));
    assert_eq!(one["router"]["deployment"], "d35");
    assert!(
        one["router"]["decision"].is_null(),
        "bypass has no decision"
    );
    // 5 prompt tokens × $1/1M + 3 completion tokens × $2/1M.
    let cost = one["router"]["estimated_cost_usd"].as_f64().unwrap();
    assert!((cost - 11e-6).abs() < 1e-12, "{cost}");
    let (_, routed_one) = env
        .get(KEY_A, &format!("/v1/chat/completions/{routed_id}"))
        .await;
    assert_eq!(
        routed_one["router"]["decision"]["model"],
        routed_one["model"]
    );
    assert_eq!(routed_one["router"]["decision"]["mode"], "balanced");
    // The streamed record is the assembled message with the stream's usage.
    let (_, streamed) = env.get(KEY_A, "/v1/chat/completions/chatcmpl-up-3").await;
    assert_eq!(
        streamed["choices"][0]["message"],
        json!({"role": "assistant", "content": "Hello"})
    );
    assert_eq!(streamed["choices"][0]["finish_reason"], "stop");
    assert_eq!(streamed["usage"]["total_tokens"], 13);
    assert_eq!(streamed["model"], GPT4);
    assert_eq!(streamed["router"]["deployment"], "d4");

    // Messages: the request messages, paged.
    let messages = "/v1/chat/completions/chatcmpl-up-3/messages";
    let (status, msgs) = env.get(KEY_A, messages).await;
    assert_eq!(status, 200, "{msgs}");
    assert_eq!(msgs["object"], "list");
    assert_eq!(ids(&msgs), ["chatcmpl-up-3-0", "chatcmpl-up-3-1"]);
    assert_eq!(msgs["data"][1]["content"], "Say hello");
    assert_eq!(msgs["data"][1]["role"], "user");
    let (_, page) = env
        .get(KEY_A, &format!("{messages}?limit=1&order=desc"))
        .await;
    assert_eq!(
        (ids(&page), &page["has_more"]),
        (vec!["chatcmpl-up-3-1".to_string()], &json!(true))
    );
    let page = env
        .listed_ids(KEY_A, &format!("{messages}?after=chatcmpl-up-3-0"))
        .await;
    assert_eq!(page, ["chatcmpl-up-3-1"]);

    // Update: replaces the metadata; invalid metadata is a 400 that changes nothing.
    let first_path = "/v1/chat/completions/chatcmpl-up-1";
    let metadata = json!({"task": "math", "grade": "1"});
    let r = env
        .update(KEY_A, first_path, json!({ "metadata": metadata }))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r).await["metadata"], metadata);
    let too_many: serde_json::Map<String, Value> =
        (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
    let r = env
        .update(KEY_A, first_path, json!({ "metadata": too_many }))
        .await;
    let e = error_of(r, 400).await;
    assert_eq!(e["error"]["param"], "metadata");
    assert!(message_of(&e).contains("at most 16"), "{e}");
    let r = env.update(KEY_A, first_path, json!({"model": "x"})).await;
    assert_eq!(r.status(), 400);
    let (_, one) = env.get(KEY_A, first_path).await;
    assert_eq!(one["metadata"]["grade"], "1");

    // Invalid metadata on a chat request: 400 before anything goes upstream.
    let hits = env.mock.hits();
    let r = env
        .chat(
            KEY_A,
            json!({"model": GPT35, "store": true, "metadata": {"k": "v".repeat(513)},
            "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_rejected(r, "metadata", "invalid_metadata", "513").await;
    assert_eq!(env.mock.hits(), hits);

    // Delete.
    let routed_path = format!("/v1/chat/completions/{routed_id}");
    let r = env.delete(KEY_A, &routed_path).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        json_of(r).await,
        json!({"object": "chat.completion.deleted", "id": routed_id, "deleted": true})
    );
    let (status, e) = env.get(KEY_A, &routed_path).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    assert_eq!(env.delete(KEY_A, &routed_path).await.status(), 404);

    // Metrics count the outcomes.
    let metrics = env.metrics().await;
    assert_has_metric(&metrics, "model_router_store_total{result=\"stored\"} 3");

    // Export through the library, from a second connection to the file the server is using.
    let mut out = Vec::new();
    let summary = env
        .open_store()
        .export(
            &ExportFilter {
                metadata: vec![("task".into(), "math".into())],
                min_grade: Some(0.5),
                ..ExportFilter::default()
            },
            &mut out,
        )
        .unwrap();
    assert_eq!(
        (summary.written, summary.below_grade, summary.no_grade),
        (1, 1, 0)
    );
    let line: Value = serde_json::from_slice(out.strip_suffix(b"\n").unwrap()).unwrap();
    assert_eq!(
        line,
        json!({"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "answer to 2+2?"}]})
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_visible_only_to_the_key_that_stored_them() {
    let env = Env::start(Some(StoreSection::default())).await;
    let r = env
        .chat(KEY_A, json!({"model": GPT35, "store": true, "messages": [{"role": "user", "content": "mine"}]}))
        .await;
    assert_eq!(r.status(), 200);
    let id = id_of(r).await;
    let path = format!("/v1/chat/completions/{id}");

    let (status, list) = env.get(KEY_B, "/v1/chat/completions").await;
    assert_eq!((status, ids(&list)), (200, vec![]));
    for p in [path.clone(), format!("{path}/messages")] {
        let (status, e) = env.get(KEY_B, &p).await;
        assert_eq!(status, 404, "{p}: {e}");
    }
    let r = env
        .update(KEY_B, &path, json!({"metadata": {"stolen": "yes"}}))
        .await;
    assert_eq!(r.status(), 404);
    assert_eq!(env.delete(KEY_B, &path).await.status(), 404);
    let (status, e) = env
        .get(KEY_B, &format!("/v1/chat/completions?after={id}"))
        .await;
    assert_eq!(status, 400, "another key's id is no cursor: {e}");
    // B's attempts changed nothing; A sees its record; no key at all is a 401.
    let (status, one) = env.get(KEY_A, &path).await;
    assert_eq!((status, &one["metadata"]), (200, &json!({})));
    let list = env.listed_ids(KEY_A, "/v1/chat/completions").await;
    assert_eq!(list, vec![id.clone()]);
    assert_eq!(send(env.server.get(&path)).await.status(), 401);
    // The owner column holds a hash, never the key.
    let record = env.open_store().get(None, &id).unwrap().unwrap();
    assert_eq!(record.owner, router_store::owner_of_key(KEY_A));
    assert!(!record.owner.contains(KEY_A));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_refuses_but_the_request_succeeds() {
    let env = Env::start(Some(StoreSection {
        max_bytes: Some(3000),
        on_full: Some("refuse".into()),
        ..StoreSection::default()
    }))
    .await;
    let mut stored = Vec::new();
    let mut refused = None;
    for i in 0..10 {
        let r = env
            .chat(KEY_A, json!({"model": GPT35, "store": true, "metadata": {"i": i.to_string()},
                "messages": [{"role": "user", "content": format!("request {i} {}", "padding ".repeat(40))}]}))
            .await;
        assert_eq!(
            r.status(),
            200,
            "the chat request succeeds whatever the store says"
        );
        let header = store_header(&r);
        let body = json_of(r).await;
        assert!(body["choices"][0]["message"]["content"].is_string());
        if header.starts_with("stored ") {
            assert!(
                refused.is_none(),
                "nothing is stored after the first refusal"
            );
            stored.push(body["id"].as_str().unwrap().to_string());
        } else {
            assert!(header.starts_with("refused: store full"), "{header}");
            refused = Some(header);
        }
    }
    assert!(!stored.is_empty(), "the first records fit");
    assert!(refused.is_some(), "3000 bytes do not hold ten records");
    let list = env
        .listed_ids(KEY_A, "/v1/chat/completions?limit=100")
        .await;
    assert_eq!(list, stored);
    let metrics = env.metrics().await;
    let n = 10 - stored.len();
    assert_has_metric(
        &metrics,
        &format!("model_router_store_total{{result=\"refused\"}} {n}"),
    );
    let stats = env.open_store().stats().unwrap();
    assert!(stats.used_bytes <= 3000, "{stats:?}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicting_store_keeps_the_newest() {
    let env = Env::start(Some(StoreSection {
        max_bytes: Some(3000),
        on_full: Some("evict_oldest".into()),
        ..StoreSection::default()
    }))
    .await;
    let mut all = Vec::new();
    for i in 0..8 {
        let r = env
            .chat(KEY_A, json!({"model": GPT35, "store": true,
                "messages": [{"role": "user", "content": format!("request {i} {}", "padding ".repeat(40))}]}))
            .await;
        assert_stored(&r);
        all.push(id_of(r).await);
    }
    let kept = env
        .listed_ids(KEY_A, "/v1/chat/completions?limit=100")
        .await;
    assert!(!kept.is_empty() && kept.len() < all.len(), "{kept:?}");
    assert_eq!(kept, all[all.len() - kept.len()..], "the newest are kept");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_store_section_store_is_a_400() {
    let env = Env::start(None).await;
    let r = env
        .chat(
            KEY_A,
            json!({"model": GPT35, "store": true, "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_rejected(r, "store", "store_not_configured", "[store]").await;
    assert_eq!(env.mock.hits(), 0);
    // `store: false` and metadata alone are fine (and not forwarded).
    let r = env
        .chat(KEY_A, json!({"model": GPT35, "store": false, "metadata": {"a": "b"}, "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert_eq!(r.status(), 200);
    env.mock.assert_store_fields_not_forwarded();
    let (status, e) = env.get(KEY_A, "/v1/chat/completions").await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (400, Some("store_not_configured"))
    );
    env.stop().await;
}
