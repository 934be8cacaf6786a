//! The soak: thousands of requests on loopback with one upstream call in five failing (empty
//! 500, garbage 200, 429, 200 without `choices`, a stalled body), half of them streamed and
//! stored. Resident memory and open file descriptors of the process (server and backends run
//! in it) must come back to their level after a first round: a leak per request shows as
//! growth between the rounds. Its own test binary, so no other test's sockets are counted.
//! Linux only (it reads /proc/self).

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![cfg(target_os = "linux")]

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;

mod common;
mod fault_backend;

use fault_backend::*;

/// Requests per round, and how many at once.
const ROUND: usize = 1500;
const CONCURRENCY: usize = 16;
/// The router's pooled keep-alive connections to the backends (both ends are in this process)
/// may number a few more or fewer from one round to the next; a leak of one descriptor per
/// failed request would be hundreds.
const FD_SLACK: usize = 8;

/// Resident memory (kB) and open file descriptors of this process.
fn usage() -> (u64, usize) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    let fds = std::fs::read_dir("/proc/self/fd").unwrap().count();
    (rss, fds)
}

/// One round of `ROUND` requests: named and routed, JSON and streamed, stored; counts by status.
async fn round(env: &Env, first: usize) -> std::collections::BTreeMap<u16, usize> {
    let statuses = futures_util::stream::iter(first..first + ROUND)
        .map(|i| async move {
            let model = [GPT4, MIXTRAL, "model-router"][i % 3];
            let r = env
                .chat(model, json!({"stream": i % 2 == 0, "store": true}))
                .await;
            let status = r.status().as_u16();
            // Read every body to its end (a stream too), as a client does.
            let _ = r.bytes().await;
            status
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<u16>>()
        .await;
    let mut by_status = std::collections::BTreeMap::new();
    for s in statuses {
        *by_status.entry(s).or_insert(0) += 1;
    }
    by_status
}

/// Waits (bounded) until the fd count is at most `level`; the last count.
async fn settle_fds(level: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, fds) = usage();
        if fds <= level || Instant::now() > deadline {
            return fds;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_and_file_descriptors_come_back_after_thousands_of_faulty_requests() {
    let env = Env::start(|c| c.access_log(false)).await;
    for d in ["a1", "a2", "b", "b-spill", "c", "m"] {
        env.mock.set(d, Fault::Mixed);
    }
    let started = Instant::now();
    let first = round(&env, 0).await;
    // Idle keep-alive connections close after header_timeout_ms (300 ms here).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (rss_after_first, fds_after_first) = usage();
    let second = round(&env, ROUND).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let fds = settle_fds(fds_after_first + FD_SLACK).await;
    let (rss, _) = usage();
    eprintln!(
        "soak: {} requests in {:.1} s; round 1 {first:?}, round 2 {second:?}; \
         rss {rss_after_first} -> {rss} kB, fds {fds_after_first} -> {fds}",
        2 * ROUND,
        started.elapsed().as_secs_f64()
    );
    for by_status in [&first, &second] {
        assert!(
            by_status.keys().all(|s| [200, 429, 502, 504].contains(s)),
            "{by_status:?}"
        );
        // Most faults are absorbed by retries and other deployments.
        assert!(
            by_status.get(&200).copied().unwrap_or(0) * 10 >= ROUND * 8,
            "{by_status:?}"
        );
    }
    assert!(
        fds <= fds_after_first + FD_SLACK,
        "open file descriptors grew: {fds_after_first} -> {fds}"
    );
    assert!(
        rss <= rss_after_first + 16 * 1024,
        "resident memory grew by more than 16 MiB: {rss_after_first} -> {rss} kB"
    );
    assert_eq!(
        common::json_of(common::send(env.server.get("/health")).await).await["status"],
        "ok"
    );
    env.stop().await;
}
