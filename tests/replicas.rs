//! Two replicas, one store: two `model-router serve` processes on one PostgreSQL database (the
//! server named by `MODEL_ROUTER_TEST_PG_URL`; `.ci/run` starts a throwaway cluster), in front of
//! one loopback OpenAI-compatible backend, with the load split between them. Every stored
//! completion either replica acknowledged is visible through the other; a key sees only its own;
//! a `kill -9` of one replica in the middle of a burst loses nothing it acknowledged; `store
//! export --db URL` reads the shared database.

mod common;
mod thread_backend;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{command, routerbench_bundle};
use thread_backend::{read_message, start_backend, IO_TIMEOUT};
use router_store::{owner_of_key, Location, Store, StoreOptions};
use serde_json::{json, Value};
use tempfile::TempDir;

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
        let name = format!("replicas_{}", std::process::id());
        let mut admin = postgres::Client::connect(&admin_url, postgres::NoTls)
            .unwrap_or_else(|e| panic!("{PG_URL_VAR}={admin_url}: cannot connect: {e:?}"));
        for sql in [format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"), format!("CREATE DATABASE {name}")] {
            admin.batch_execute(&sql).unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        }
        let url = with_database(&admin_url, &name);
        Some(TestDatabase { admin_url, name, url })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Ok(mut admin) = postgres::Client::connect(&self.admin_url, postgres::NoTls) {
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
        }
    }
}

/// `url` with its database (the path) replaced by `name`, its query kept.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    format!("{}/{name}{query}", &base[..authority_end])
}

/// One request to a replica: `Some((status, body))`, or `None` when the connection failed.
fn http(server: SocketAddr, method: &str, path: &str, key: &str, body: Option<&Value>) -> Option<(u16, Value)> {
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
                    let addr = addr.split_whitespace().next().unwrap_or("").parse().expect("a listen address");
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

fn write_config(dir: &std::path::Path, backend: SocketAddr, url: &str) -> std::path::PathBuf {
    let config = dir.join("serve.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
api_keys_env = "REPLICA_KEYS"

[router]
bundle = "{bundle}"

[dispatch]
timeout_ms = 10000
max_retries = 0

[[models]]
name = "{MODEL}"
input_price = 1.0
output_price = 2.0
context_window = 16385
deployments = ["backend"]

[[deployments]]
name = "backend"
kind = "openai"
base_url = "http://{backend}/v1"
model = "upstream"

[store]
url = "{url}"
"#,
            bundle = routerbench_bundle().display()
        ),
    )
    .expect("write the config");
    config
}

/// Sends `per_client` stored requests from each of `clients` threads, spread over the
/// replicas and the keys, until a replica is gone: every (request, replica, key, result).
type Sent = Vec<(usize, usize, usize, Option<(u16, Value)>)>;

fn burst(replicas: &[SocketAddr], clients: usize, per_client: usize, first: usize, ok: Arc<AtomicUsize>) -> thread::JoinHandle<Sent> {
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
            Some((200, body)) => Some((*i, *replica, *key, body["id"].as_str().unwrap_or("").to_string())),
            _ => None,
        })
        .collect()
}

#[test]
fn two_replicas_share_one_postgres_store_and_a_kill_loses_nothing_acknowledged() {
    let Some(db) = TestDatabase::create() else { return };
    let dir = TempDir::new().unwrap();
    let stop_backend = Arc::new(AtomicBool::new(false));
    let backend = start_backend(stop_backend.clone(), "replica", Duration::from_millis(10));
    let config = write_config(dir.path(), backend, &db.url);
    let (mut first, a) = start_replica(&config);
    let (mut second, b) = start_replica(&config);
    let replicas = [a, b];

    // Split load: 2 clients × 20 requests, alternating replicas and keys; all must succeed.
    let sent = burst(&replicas, 2, 20, 0, Arc::new(AtomicUsize::new(0))).join().unwrap();
    let acked = acknowledged(&sent);
    assert_eq!(acked.len(), 40, "every request succeeds while both replicas are up: {sent:?}");
    for (i, replica, key, id) in &acked {
        // Through the other replica: the owner sees it, the other key does not.
        let other = replicas[1 - replica];
        let (status, body) = http(other, "GET", &format!("/v1/chat/completions/{id}"), KEYS[*key], None).expect("the other replica answers");
        assert_eq!(status, 200, "{id} stored by replica {replica} is visible through the other: {body}");
        assert_eq!(body["metadata"]["i"], i.to_string());
        let (status, _) = http(other, "GET", &format!("/v1/chat/completions/{id}"), KEYS[1 - key], None).expect("answers");
        assert_eq!(status, 404, "{id} is not the other key's");
    }
    for (k, key) in KEYS.iter().enumerate() {
        let own = acked.iter().filter(|(_, _, owner, _)| *owner == k).count();
        for replica in replicas {
            let (status, list) = http(replica, "GET", "/v1/chat/completions?limit=100", key, None).expect("list");
            assert_eq!(status, 200, "{list}");
            assert_eq!(list["data"].as_array().map(Vec::len), Some(own), "each replica lists exactly {key}'s {own} records");
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
    let from_killed = acked_burst.iter().filter(|(_, replica, _, _)| *replica == 0).count();
    eprintln!("burst: {} acknowledged ({from_killed} by the killed replica) of {} sent", acked_burst.len(), sent.len());
    assert!(from_killed > 0, "the killed replica acknowledged nothing before the kill");
    assert!(
        sent.iter().any(|(_, replica, _, r)| *replica == 0 && r.is_none()),
        "the kill came after the burst: nothing was in flight on the killed replica"
    );
    for (_, replica, _, r) in &sent {
        if let (1, Some((status, body))) = (replica, r) {
            assert_eq!(*status, 200, "the surviving replica kept answering: {body}");
        }
    }
    // Everything either replica acknowledged is readable through the survivor, by its owner.
    for (i, _, key, id) in acked.iter().chain(&acked_burst) {
        let (status, body) = http(b, "GET", &format!("/v1/chat/completions/{id}"), KEYS[*key], None).expect("the survivor answers");
        assert_eq!(status, 200, "{id} (request {i}) was acknowledged but is lost: {body}");
        assert_eq!(body["metadata"]["i"], i.to_string());
    }
    second.kill().expect("stop the second replica");
    second.wait().expect("reap it");
    stop_backend.store(true, Ordering::SeqCst);
    let _ = TcpStream::connect(backend); // wakes the backend's accept loop so it stops

    // The database holds them under the keys' owners, and the operator's export reads it by URL.
    let location = Location::parse(&db.url, None).unwrap();
    let store = Store::open_location(&location, StoreOptions::default()).expect("open the shared store");
    let total = acked.len() + acked_burst.len();
    for (_, _, key, id) in acked.iter().chain(&acked_burst) {
        let record = store.get(None, id).unwrap().expect("stored");
        assert_eq!(record.owner, owner_of_key(KEYS[*key]));
    }
    let records = store.stats().unwrap().records;
    assert!(records >= total as u64, "{records} records for {total} acknowledged");
    drop(store);
    let out = dir.path().join("train.jsonl");
    let run = command().args(["store", "export", "--db", &db.url, "--out"]).arg(&out).output().expect("run store export");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("wrote {records} lines")), "{stderr}");
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count() as u64, records);
}
