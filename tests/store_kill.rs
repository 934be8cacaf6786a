//! "What was acknowledged is never lost": the real `model-router serve` binary with a `[store]`
//! in front of a local OpenAI-compatible backend (std threads on 127.0.0.1) takes a burst of
//! concurrent `"store": true` requests and is killed with SIGKILL in the middle of it. Every
//! request that got a 200 must be in the database afterwards; then `model-router store export`
//! exports the database the killed server left.

mod common;
mod thread_backend;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::command;
use router_store::{Store, StoreOptions};
use serde_json::{json, Value};
use tempfile::TempDir;
use thread_backend::{read_message, start_backend, IO_TIMEOUT};

const MODEL: &str = "gpt-3.5-turbo-1106";
const CLIENTS: usize = 8;
const PER_CLIENT: usize = 40;
const KILL_AFTER: usize = 25;

/// One stored chat request to the server: `Some((status, x-router-store, body))`, or `None`
/// when the connection failed (the server is gone).
fn post_chat(server: SocketAddr, i: usize) -> Option<(u16, String, Value)> {
    let body = json!({"model": MODEL, "store": true, "metadata": {"i": i.to_string()},
        "messages": [{"role": "user", "content": format!("burst request {i}")}]})
    .to_string();
    let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {server}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let (head, body) = read_message(&mut stream).ok()?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let store = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("x-router-store")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    Some((
        status,
        store,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    ))
}

#[test]
fn sigkill_mid_burst_loses_no_acknowledged_record() {
    let dir = TempDir::new().unwrap();
    let stop_backend = Arc::new(AtomicBool::new(false));
    let backend = start_backend(stop_backend.clone(), "kill", Duration::from_millis(15));
    let config = common::one_model_config(MODEL, "backend", backend, "upstream")
        .listen("127.0.0.1:0".parse().unwrap())
        .store(router_server::StoreSection {
            max_bytes: Some(100_000_000),
            ..router_server::StoreSection::sqlite("completions.db")
        });
    let config = common::write_config(dir.path(), "serve.toml", &config);

    let mut child = command()
        .args(["serve", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start model-router serve");
    // The server prints "... on http://ADDR" to stderr once it listens.
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel::<String>();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let server: SocketAddr = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(addr) = line.split("on http://").nth(1) {
                    break addr
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .parse()
                        .expect("a listen address");
                }
                seen.push(line);
            }
            Err(_) => {
                let _ = child.kill();
                panic!("the server did not start within 60 s; stderr: {seen:?}");
            }
        }
    };

    // The burst: CLIENTS threads, PER_CLIENT requests each, until the server is gone.
    let results = Arc::new(Mutex::new(
        Vec::<(usize, Option<(u16, String, Value)>)>::new(),
    ));
    let ok = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let results = results.clone();
            let ok = ok.clone();
            thread::spawn(move || {
                for j in 0..PER_CLIENT {
                    let i = c * PER_CLIENT + j;
                    let r = post_chat(server, i);
                    let gone = r.is_none();
                    if matches!(&r, Some((200, _, _))) {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    results.lock().unwrap().push((i, r));
                    if gone {
                        break;
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ok.load(Ordering::SeqCst) < KILL_AFTER && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(2));
    }
    child.kill().expect("SIGKILL the server");
    child.wait().expect("reap the server");
    for c in clients {
        c.join().expect("client thread");
    }
    stop_backend.store(true, Ordering::SeqCst);
    let _ = TcpStream::connect(backend); // wakes the backend's accept loop so it stops

    let results = results.lock().unwrap();
    let acknowledged: Vec<(usize, String, String)> = results
        .iter()
        .filter_map(|(i, r)| match r {
            Some((200, store, body)) => Some((
                *i,
                body["id"].as_str().unwrap_or("").to_string(),
                store.clone(),
            )),
            _ => None,
        })
        .collect();
    eprintln!(
        "acknowledged {} of {} attempted",
        acknowledged.len(),
        results.len()
    );
    assert!(
        acknowledged.len() >= KILL_AFTER,
        "only {} requests succeeded before the kill",
        acknowledged.len()
    );
    assert!(
        acknowledged.len() < CLIENTS * PER_CLIENT,
        "the kill came after the burst: nothing was in flight"
    );
    for (_, r) in results.iter() {
        if let Some((status, _, body)) = r {
            assert_eq!(
                *status, 200,
                "no request failed while the server was up: {body}"
            );
        }
    }

    // Every acknowledged request is in the database the killed server left.
    let db = dir.path().join("completions.db");
    let store =
        Store::open(&db, StoreOptions::default()).expect("open the database after the kill");
    for (i, id, header) in &acknowledged {
        assert_eq!(header, &format!("stored {id}"), "a 200 says it was stored");
        let record = store
            .get(None, id)
            .expect("query")
            .unwrap_or_else(|| panic!("{id} was acknowledged but is lost"));
        assert_eq!(record.model, MODEL);
        assert_eq!(
            record.metadata.get("i"),
            Some(i.to_string().as_str()),
            "{id} holds request {i}"
        );
    }
    let records = store.stats().expect("stats").records;
    assert!(records >= acknowledged.len() as u64);
    drop(store);

    // The access log has a line for every answered request, written before the answer went out.
    let logged: Vec<String> = rx
        .try_iter()
        .filter(|line| line.starts_with("access "))
        .collect();
    let stored_lines = logged
        .iter()
        .filter(|l| l.contains(" status=200 ") && l.contains(" store=stored "))
        .count();
    assert!(
        stored_lines >= acknowledged.len(),
        "{stored_lines} access lines for {} answers: {logged:?}",
        acknowledged.len()
    );
    assert!(
        logged
            .iter()
            .all(|l| l.contains(" path=/v1/chat/completions ") && l.contains(" ms=")),
        "{logged:?}"
    );

    // The operator's export reads the same file.
    let out = dir.path().join("train.jsonl");
    let run = command()
        .args(["store", "export", "--db"])
        .arg(&db)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run store export");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("wrote {records} lines")) && stderr.contains("skipped 0"),
        "{stderr}"
    );
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().count() as u64, records);
    let first: Value = serde_json::from_str(text.lines().next().unwrap_or("null")).unwrap();
    assert_eq!(first["messages"][1]["role"], "assistant");
    assert!(first["messages"][0]["content"]
        .as_str()
        .unwrap_or("")
        .starts_with("burst request"));
}

#[test]
fn store_export_filters_and_reports_skips() {
    use router_store::{Metadata, NewCompletion};

    let dir = TempDir::new().unwrap();
    let db = dir.path().join("s.db");
    let store = Store::open(&db, StoreOptions::default()).unwrap();
    for (i, (task, grade)) in [
        ("math", Some("0.9")),
        ("math", Some("0.1")),
        ("math", None),
        ("code", Some("1")),
    ]
    .iter()
    .enumerate()
    {
        let request = json!({"model": "model-router", "messages": [{"role": "user", "content": format!("q{i}")}]});
        let response = json!({"id": format!("c{i}"), "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("a{i}")}}]});
        let mut r = NewCompletion::new("o", request.as_object().cloned().unwrap(), response);
        r.model = "small".into();
        let mut meta = json!({"task": task});
        if let Some(g) = grade {
            meta["grade"] = json!(g);
        }
        r.metadata = Metadata::from_json(&meta).unwrap();
        store.insert(r).unwrap();
    }
    drop(store);
    let out = dir.path().join("out.jsonl");
    let run = command()
        .args(["store", "export", "--db"])
        .arg(&db)
        .args([
            "--filter",
            "metadata.task=math",
            "--model",
            "small",
            "--min-grade",
            "0.5",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains("wrote 1 lines") && stderr.contains("skipped 2"),
        "{stderr}"
    );
    assert!(
        stderr.contains("1 without a valid grade") && stderr.contains("1 with a grade below 0.5"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "{\"messages\":[{\"content\":\"q0\",\"role\":\"user\"},{\"content\":\"a0\",\"role\":\"assistant\"}]}\n"
    );
    // Bad arguments fail with a message.
    for args in [vec!["--filter", "task=math"], vec!["--min-grade", "2"]] {
        let run = command()
            .args(["store", "export", "--db"])
            .arg(&db)
            .args(&args)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(!run.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            stderr.contains("--filter") || stderr.contains("--min-grade"),
            "{stderr}"
        );
    }
    let run = command()
        .args(["store", "export", "--db"])
        .arg(dir.path().join("missing.db"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!run.status.success() && String::from_utf8_lossy(&run.stderr).contains("missing.db"));
}
