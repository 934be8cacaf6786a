//! Two replicas, one store: two `model-router serve` processes on one PostgreSQL database (the
//! server named by `MODEL_ROUTER_TEST_PG_URL`; `.ci/run` starts a throwaway cluster), in front of
//! one loopback OpenAI-compatible backend, with the load split between them. Every stored
//! completion either replica acknowledged is visible through the other; a key sees only its own;
//! a `kill -9` of one replica in the middle of a burst loses nothing it acknowledged; `store
//! export --db URL` reads the shared database.

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod thread_backend;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::command;
use router_store::{owner_of_key, Location, Store, StoreOptions};
use serde_json::{json, Value};
use tempfile::TempDir;
use thread_backend::{read_message, start_backend, IO_TIMEOUT};

const MODEL: &str = "gpt-3.5-turbo-1106";
const KEYS: [&str; 2] = ["key-alice", "key-bob"];
const PG_URL_VAR: &str = "MODEL_ROUTER_TEST_PG_URL";

/// A database of its own on the test server, dropped with its connections afterwards.
struct TestDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDatabase {
    /// `None` (with a message) when no test server is configured outside CI; under `CI=true`
    /// a missing server fails the test.
    fn create() -> Option<TestDatabase> {
        let admin_url = match std::env::var(PG_URL_VAR) {
            Ok(url) if !url.is_empty() => url,
            _ if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("{PG_URL_VAR} is unset under CI=true: the replica tests need a PostgreSQL server (.ci/run starts one)")
            }
            _ => {
                eprintln!("skipped: {PG_URL_VAR} is unset (set it to a postgres:// URL to run the replica tests)");
                return None;
            }
        };
        // One database per test: the tests of this file run in parallel in one process.
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "replicas_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let mut admin = postgres::Client::connect(&admin_url, postgres::NoTls)
            .unwrap_or_else(|e| panic!("{PG_URL_VAR}={admin_url}: cannot connect: {e:?}"));
        for sql in [
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            format!("CREATE DATABASE {name}"),
        ] {
            admin
                .batch_execute(&sql)
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        }
        let url = with_database(&admin_url, &name);
        Some(TestDatabase {
            admin_url,
            name,
            url,
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Ok(mut admin) = postgres::Client::connect(&self.admin_url, postgres::NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// `url` with its database (the path) replaced by `name`, its query kept.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    format!("{}/{name}{query}", &base[..authority_end])
}

/// One request to a replica: `Some((status, body))`, or `None` when the connection failed.
fn http(
    server: SocketAddr,
    method: &str,
    path: &str,
    key: &str,
    body: Option<&Value>,
) -> Option<(u16, Value)> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {server}\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let (head, body) = read_message(&mut stream).ok()?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

/// A stored chat request `i` by `key`; `Some((status, body))` as [`http`].
fn post_chat(server: SocketAddr, key: &str, i: usize) -> Option<(u16, Value)> {
    let body = json!({"model": MODEL, "store": true, "metadata": {"i": i.to_string()},
        "messages": [{"role": "user", "content": format!("replica request {i}")}]});
    http(server, "POST", "/v1/chat/completions", key, Some(&body))
}

/// Starts `serve` on `config` (keys in `REPLICA_KEYS`) and waits for its listen address.
fn start_replica(config: &std::path::Path) -> (Child, SocketAddr) {
    let mut child = command()
        .args(["serve", "--config"])
        .arg(config)
        .env("REPLICA_KEYS", KEYS.join(","))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start model-router serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel::<String>();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                if let Some(addr) = line.split("on http://").nth(1) {
                    let addr = addr
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .parse()
                        .expect("a listen address");
                    return (child, addr);
                }
                seen.push(line);
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("a replica did not start within 60 s; stderr: {seen:?}");
            }
        }
    }
}

/// The replicas' config: keys from `REPLICA_KEYS`, the store at the PostgreSQL `url`.
fn write_config(dir: &std::path::Path, backend: SocketAddr, url: &str) -> std::path::PathBuf {
    let config = common::one_model_config(MODEL, "backend", backend, "upstream")
        .listen("127.0.0.1:0".parse().unwrap())
        .api_keys_env("REPLICA_KEYS")
        .store(router_server::StoreSection {
            url: Some(url.to_string()),
            ..Default::default()
        });
    common::write_config(dir, "serve.toml", &config)
}

/// Sends `per_client` stored requests from each of `clients` threads, spread over the
/// replicas and the keys, until a replica is gone: every (request, replica, key, result).
type Sent = Vec<(usize, usize, usize, Option<(u16, Value)>)>;

fn burst(
    replicas: &[SocketAddr],
    clients: usize,
    per_client: usize,
    first: usize,
    ok: Arc<AtomicUsize>,
) -> thread::JoinHandle<Sent> {
    let replicas = replicas.to_vec();
    thread::spawn(move || {
        let sent = Arc::new(Mutex::new(Sent::new()));
        let threads: Vec<_> = (0..clients)
            .map(|c| {
                let (sent, ok, replicas) = (sent.clone(), ok.clone(), replicas.clone());
                thread::spawn(move || {
                    for j in 0..per_client {
                        let i = first + c * per_client + j;
                        let (replica, key) = (i % replicas.len(), (i / 2) % KEYS.len());
                        let r = post_chat(replicas[replica], KEYS[key], i);
                        if matches!(&r, Some((200, _))) {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        sent.lock().unwrap().push((i, replica, key, r));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("client thread");
        }
        let sent = std::mem::take(&mut *sent.lock().unwrap());
        sent
    })
}

/// Every acknowledged (200) request of `sent`: (request, replica, key, stored id).
fn acknowledged(sent: &Sent) -> Vec<(usize, usize, usize, String)> {
    sent.iter()
        .filter_map(|(i, replica, key, r)| match r {
            Some((200, body)) => Some((
                *i,
                *replica,
                *key,
                body["id"].as_str().unwrap_or("").to_string(),
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn two_replicas_share_one_postgres_store_and_a_kill_loses_nothing_acknowledged() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    let dir = TempDir::new().unwrap();
    let stop_backend = Arc::new(AtomicBool::new(false));
    let backend = start_backend(stop_backend.clone(), "replica", Duration::from_millis(10));
    let config = write_config(dir.path(), backend, &db.url);
    let (mut first, a) = start_replica(&config);
    let (mut second, b) = start_replica(&config);
    let replicas = [a, b];

    // Split load: 2 clients × 20 requests, alternating replicas and keys; all must succeed.
    let sent = burst(&replicas, 2, 20, 0, Arc::new(AtomicUsize::new(0)))
        .join()
        .unwrap();
    let acked = acknowledged(&sent);
    assert_eq!(
        acked.len(),
        40,
        "every request succeeds while both replicas are up: {sent:?}"
    );
    for (i, replica, key, id) in &acked {
        // Through the other replica: the owner sees it, the other key does not.
        let other = replicas[1 - replica];
        let (status, body) = http(
            other,
            "GET",
            &format!("/v1/chat/completions/{id}"),
            KEYS[*key],
            None,
        )
        .expect("the other replica answers");
        assert_eq!(
            status, 200,
            "{id} stored by replica {replica} is visible through the other: {body}"
        );
        assert_eq!(body["metadata"]["i"], i.to_string());
        let (status, _) = http(
            other,
            "GET",
            &format!("/v1/chat/completions/{id}"),
            KEYS[1 - key],
            None,
        )
        .expect("answers");
        assert_eq!(status, 404, "{id} is not the other key's");
    }
    for (k, key) in KEYS.iter().enumerate() {
        let own = acked.iter().filter(|(_, _, owner, _)| *owner == k).count();
        for replica in replicas {
            let (status, list) =
                http(replica, "GET", "/v1/chat/completions?limit=100", key, None).expect("list");
            assert_eq!(status, 200, "{list}");
            assert_eq!(
                list["data"].as_array().map(Vec::len),
                Some(own),
                "each replica lists exactly {key}'s {own} records"
            );
        }
    }

    // A burst on both replicas; the first is SIGKILLed once 25 more requests succeeded.
    let ok = Arc::new(AtomicUsize::new(0));
    let running = burst(&replicas, 8, 30, 1000, ok.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    while ok.load(Ordering::SeqCst) < 25 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(2));
    }
    first.kill().expect("SIGKILL the first replica");
    first.wait().expect("reap it");
    let sent = running.join().unwrap();
    let acked_burst = acknowledged(&sent);
    let from_killed = acked_burst
        .iter()
        .filter(|(_, replica, _, _)| *replica == 0)
        .count();
    eprintln!(
        "burst: {} acknowledged ({from_killed} by the killed replica) of {} sent",
        acked_burst.len(),
        sent.len()
    );
    assert!(
        from_killed > 0,
        "the killed replica acknowledged nothing before the kill"
    );
    assert!(
        sent.iter()
            .any(|(_, replica, _, r)| *replica == 0 && r.is_none()),
        "the kill came after the burst: nothing was in flight on the killed replica"
    );
    for (_, replica, _, r) in &sent {
        if let (1, Some((status, body))) = (replica, r) {
            assert_eq!(*status, 200, "the surviving replica kept answering: {body}");
        }
    }
    // Everything either replica acknowledged is readable through the survivor, by its owner.
    for (i, _, key, id) in acked.iter().chain(&acked_burst) {
        let (status, body) = http(
            b,
            "GET",
            &format!("/v1/chat/completions/{id}"),
            KEYS[*key],
            None,
        )
        .expect("the survivor answers");
        assert_eq!(
            status, 200,
            "{id} (request {i}) was acknowledged but is lost: {body}"
        );
        assert_eq!(body["metadata"]["i"], i.to_string());
    }
    second.kill().expect("stop the second replica");
    second.wait().expect("reap it");
    stop_backend.store(true, Ordering::SeqCst);
    let _ = TcpStream::connect(backend); // wakes the backend's accept loop so it stops

    // The database holds them under the keys' owners, and the operator's export reads it by URL.
    let location = Location::parse(&db.url, None).unwrap();
    let store =
        Store::open_location(&location, StoreOptions::default()).expect("open the shared store");
    let total = acked.len() + acked_burst.len();
    for (_, _, key, id) in acked.iter().chain(&acked_burst) {
        let record = store.get(None, id).unwrap().expect("stored");
        assert_eq!(record.owner, owner_of_key(KEYS[*key]));
    }
    let records = store.stats().unwrap().records;
    assert!(
        records >= total as u64,
        "{records} records for {total} acknowledged"
    );
    drop(store);
    let out = dir.path().join("train.jsonl");
    let run = command()
        .args(["store", "export", "--db", &db.url, "--out"])
        .arg(&out)
        .output()
        .expect("run store export");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("wrote {records} lines")),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(&out).unwrap().lines().count() as u64,
        records
    );
}

/// The tokens-per-minute limit of the provisioned mock, declared as the deployment's `capacity_tpm`.
const PTU_TPM: u64 = 2_000;

/// A provisioned deployment (`/ptu/v1/...`) that admits at most [`PTU_TPM`] tokens in all (the
/// test runs well inside its minute) and answers 429 above, counting each request as a provider
/// admits it: `max_tokens` plus 10 for the short prompt; and a pay-as-you-go one (`/payg/v1/...`)
/// without a limit. Returns the address and the (admitted tokens, 429s) of the provisioned one.
fn start_capacity_backend(stop: Arc<AtomicBool>) -> (SocketAddr, Arc<Mutex<(u64, u64)>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the backend");
    let addr = listener.local_addr().expect("backend address");
    let ptu = Arc::new(Mutex::new((0u64, 0u64)));
    let counts = ptu.clone();
    thread::spawn(move || {
        for stream in listener.incoming() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let Ok(mut stream) = stream else { continue };
            let counts = counts.clone();
            thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
                let Ok((head, body)) = read_message(&mut stream) else {
                    return;
                };
                let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let tokens = request["max_tokens"].as_u64().unwrap_or(0) + 10;
                let admitted = !head.contains("/ptu/") || {
                    let mut c = counts.lock().unwrap();
                    let fits = c.0 + tokens <= PTU_TPM;
                    if fits {
                        c.0 += tokens
                    } else {
                        c.1 += 1
                    }
                    fits
                };
                thread::sleep(Duration::from_millis(20));
                let (status, answer) = if admitted {
                    (
                        "200 OK",
                        json!({"id": "chatcmpl-cap", "object": "chat.completion", "created": 1, "model": request["model"],
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}}),
                    )
                } else {
                    (
                        "429 Too Many Requests",
                        json!({"error": {"message": "rate limited", "type": "rate_limit"}}),
                    )
                };
                let answer = answer.to_string();
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                let _ = stream.write_all(response.as_bytes());
            });
        }
    });
    (addr, ptu)
}

/// Two replicas, a provisioned deployment declaring the mock's `capacity_tpm`, spilling over to
/// pay-as-you-go; `store` on PostgreSQL or none.
fn write_capacity_config(
    dir: &std::path::Path,
    name: &str,
    backend: SocketAddr,
    store: Option<&str>,
) -> std::path::PathBuf {
    let mut ptu = router_server::DeploymentSection::openai(
        "ptu",
        format!("http://{backend}/ptu/v1"),
        "upstream",
    )
    .provisioned("payg");
    ptu.capacity_tpm = Some(PTU_TPM);
    let mut config = router_server::ServerConfig::builder(common::routerbench_bundle())
        .listen("127.0.0.1:0".parse().unwrap())
        .dispatch(|d| d.max_retries = Some(0))
        .model(router_policy::ModelSpec::new(MODEL, 1.0, 2.0, 16_385).deployments(["ptu"]))
        .deployment(ptu)
        .deployment(router_server::DeploymentSection::openai(
            "payg",
            format!("http://{backend}/payg/v1"),
            "upstream",
        ));
    if let Some(url) = store {
        config = config.store(router_server::StoreSection {
            url: Some(url.to_string()),
            ..Default::default()
        });
    }
    common::write_config(dir, name, &config)
}

/// Sends 40 requests of `max_tokens` 100, alternating between the replicas from 4 threads;
/// every one must be answered (the overflow by pay-as-you-go).
fn capacity_load(replicas: [SocketAddr; 2]) {
    let threads: Vec<_> = (0..4)
        .map(|t| {
            thread::spawn(move || {
                for j in 0..10 {
                    let i = t * 10 + j;
                    let body = json!({"model": MODEL, "max_tokens": 100, "messages": [{"role": "user", "content": format!("capacity request {i}")}]});
                    let answer = http(replicas[i % 2], "POST", "/v1/chat/completions", "none", Some(&body));
                    assert!(matches!(answer, Some((200, _))), "request {i}: {answer:?}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("load thread");
    }
}

/// Issue #16: with the PostgreSQL store, the replicas' capacity windows are one, so together they
/// send the provisioned mock no more than its limit (stated tolerance: 0 tokens over it, because
/// each request is charged at least what the mock counts); each on its own window, they overshoot.
#[test]
fn two_replicas_on_postgres_share_one_capacity_window() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    let dir = TempDir::new().unwrap();
    for (name, store) in [("shared.toml", Some(db.url.as_str())), ("alone.toml", None)] {
        let stop = Arc::new(AtomicBool::new(false));
        let (backend, ptu) = start_capacity_backend(stop.clone());
        let config = write_capacity_config(dir.path(), name, backend, store);
        let (mut first, a) = start_replica(&config);
        let (mut second, b) = start_replica(&config);
        capacity_load([a, b]);
        for child in [&mut first, &mut second] {
            child.kill().expect("stop a replica");
            child.wait().expect("reap it");
        }
        stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(backend);
        let (tokens, refused) = *ptu.lock().unwrap();
        eprintln!("{name}: the provisioned mock admitted {tokens} of {PTU_TPM} tokens and answered {refused} 429s");
        if store.is_some() {
            assert_eq!(
                refused, 0,
                "shared windows: no request beyond the limit reached the provisioned mock"
            );
            assert!(
                tokens <= PTU_TPM && tokens >= PTU_TPM * 3 / 4,
                "{tokens} tokens: the limit is respected and mostly used"
            );
        } else {
            assert!(refused > 0, "without a shared store each replica fills the window on its own: {tokens} tokens, {refused} 429s");
        }
    }
}
