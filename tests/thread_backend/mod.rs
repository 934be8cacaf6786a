//! A blocking HTTP/1.1 backend on std threads (127.0.0.1) and a message reader, for the tests that
//! run the `model-router` binary as a child process and kill it: no async runtime in the test
//! process to keep alive across the kill.
#![allow(dead_code)]
// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};

/// How long a socket read may wait.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// Reads one HTTP/1.1 message (headers, then `Content-Length` bytes) from `stream`: the head
/// and the body. A message without Content-Length is read to EOF.
pub fn read_message(stream: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before the head ended",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut body = buf[head_end + 4..].to_vec();
    let length = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    match length {
        Some(length) => {
            while body.len() < length {
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "closed mid-body",
                    ));
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(length);
        }
        None => {
            stream.read_to_end(&mut body)?;
        }
    }
    Ok((head, body))
}

/// The backend: answers every chat request after `delay` (so a burst is in flight when a kill
/// comes) with a fresh id `chatcmpl-{id_prefix}-{n}`, one connection per request, until `stop`.
pub fn start_backend(
    stop: Arc<AtomicBool>,
    id_prefix: &'static str,
    delay: Duration,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the backend");
    let addr = listener.local_addr().expect("backend address");
    let next = Arc::new(AtomicUsize::new(0));
    thread::spawn(move || {
        for stream in listener.incoming() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let Ok(mut stream) = stream else { continue };
            let next = next.clone();
            thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
                let Ok((_, body)) = read_message(&mut stream) else {
                    return;
                };
                let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let n = next.fetch_add(1, Ordering::SeqCst) + 1;
                thread::sleep(delay);
                let answer = json!({
                    "id": format!("chatcmpl-{id_prefix}-{n}"), "object": "chat.completion", "created": 1,
                    "model": request["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("answer {n}")}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
                })
                .to_string();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                let _ = stream.write_all(response.as_bytes());
            });
        }
    });
    addr
}
