//! `model-router bench` end to end, with few iterations: it runs, prints one JSON object with the
//! documented keys, and every measured number is positive. Speed itself is never asserted here: this
//! machine is shared and CI's is another; the ratios in the report are what to read.

mod common;

use common::{ensure_minilm, ok};
use serde_json::Value;

fn positive(report: &Value, pointer: &str) -> f64 {
    let value = report
        .pointer(pointer)
        .unwrap_or_else(|| panic!("the report has no {pointer}: {report}"))
        .as_f64()
        .unwrap_or_else(|| panic!("{pointer} is not a number: {report}"));
    assert!(
        value.is_finite() && value > 0.0,
        "{pointer} = {value} should be positive"
    );
    value
}

#[test]
fn bench_json_reports_every_tier_and_baseline() {
    // The BERT tier and the stock baseline load all-MiniLM-L6-v2 from the hub cache.
    ensure_minilm();
    let report = ok(&["bench", "--json", "--iterations", "5"]).json();

    for tier in ["/tiers/static", "/tiers/bert", "/stock_bert", "/static_128"] {
        for field in ["tokens", "p50_us"] {
            positive(&report, &format!("{tier}/{field}"));
        }
    }
    for tier in ["/tiers/static", "/tiers/bert", "/static_128"] {
        let p50 = positive(&report, &format!("{tier}/p50_us"));
        let p99 = positive(&report, &format!("{tier}/p99_us"));
        assert!(p99 >= p50, "{tier}: p99 {p99} below p50 {p50}");
    }
    assert_eq!(report["tiers"]["static"]["tokens"], 32, "{report}");
    assert_eq!(report["tiers"]["bert"]["tokens"], 32, "{report}");
    assert_eq!(report["stock_bert"]["tokens"], 32, "{report}");
    assert_eq!(report["static_128"]["tokens"], 128, "{report}");
    for key in [
        "/tokenize_us",
        "/tokenize_128_us",
        "/tokenize_tokenizers_crate_us",
        "/tokenize_128_tokenizers_crate_us",
        "/static_128_over_tokenizers_crate",
        "/bert_speedup_vs_stock",
        "/bert_matmul_us",
        "/bert_gflops",
        "/threads",
        "/workload/static/p50_us",
        "/workload/bert/p50_us",
        "/workload/stock_bert/p50_us",
    ] {
        positive(&report, key);
    }
    assert_eq!(report["workload"]["source"], "built-in", "{report}");
    assert_eq!(
        report["tokenize_fast_path"], true,
        "the shipped MiniLM tokenizer takes the fast path: {report}"
    );
}

#[test]
fn bench_lengths_times_the_encoder_per_length_and_names_the_build() {
    ensure_minilm();
    let report = ok(&["bench", "--lengths", "16,40", "--iterations", "3", "--json"]).json();
    // The tests run the dev-profile binary, which must say so.
    assert_eq!(report["profile"], "dev", "{report}");
    let rows = report["lengths"]
        .as_array()
        .unwrap_or_else(|| panic!("no lengths: {report}"));
    assert_eq!(
        rows.iter()
            .map(|row| row["tokens"].as_u64())
            .collect::<Vec<_>>(),
        [Some(16), Some(40)],
        "{report}"
    );
    for index in 0..rows.len() {
        positive(&report, &format!("/lengths/{index}/p50_us"));
        positive(&report, &format!("/lengths/{index}/cpu_us"));
        assert!(
            rows[index]["prompt"]
                .as_str()
                .is_some_and(|p| !p.is_empty()),
            "{report}"
        );
    }
}

#[test]
fn bench_server_reports_direct_and_routed_latency() {
    let report = ok(&[
        "bench",
        "--server",
        "--rate",
        "40",
        "--seconds",
        "1",
        "--json",
    ])
    .json();
    for path in ["direct", "routed"] {
        assert_eq!(report["server"][path]["requests"], 40, "{report}");
        assert_eq!(report["server"][path]["errors"], 0, "{report}");
        let p50 = positive(&report, &format!("/server/{path}/p50_us"));
        let p99 = positive(&report, &format!("/server/{path}/p99_us"));
        assert!(p99 >= p50, "{path}: p99 {p99} below p50 {p50}");
    }
    for key in ["/server/overhead_p50_us", "/server/overhead_p99_us"] {
        assert!(
            report
                .pointer(key)
                .and_then(Value::as_f64)
                .is_some_and(f64::is_finite),
            "{key}: {report}"
        );
    }
}

#[test]
fn bench_server_find_max_searches_each_path_down_to_its_floor_under_an_impossible_bound() {
    // No request answers within 1 µs: each search halves from 250/s until below its floor of
    // 10/s (250, 125, 62.5, 31.25, 15.6), every rate failing twice, so the run stays short.
    let report = ok(&[
        "bench",
        "--server",
        "--find-max",
        "--p99-ms",
        "0.001",
        "--seconds",
        "0.1",
        "--json",
    ])
    .json();
    let found = &report["find_max"];
    for path in ["direct", "proxy", "router"] {
        assert!(found[path]["max_rate_per_s"].is_null(), "{path}: {found}");
        let steps = found[path]["steps"]
            .as_array()
            .unwrap_or_else(|| panic!("{path} has no steps: {found}"));
        let rates: Vec<f64> = steps
            .iter()
            .filter_map(|s| s["rate_per_s"].as_f64())
            .collect();
        assert_eq!(
            rates,
            [250.0, 250.0, 125.0, 125.0, 62.5, 62.5, 31.25, 31.25, 15.625, 15.625],
            "{path}"
        );
        for (i, _) in steps.iter().enumerate() {
            assert_eq!(steps[i]["passed"], false, "{path}: {found}");
            assert_eq!(steps[i]["errors"], 0, "{path}: {found}");
            positive(&report, &format!("/find_max/{path}/steps/{i}/p99_us"));
        }
    }
    assert!(
        found["ratio"].is_null(),
        "no rate passed, so there is no ratio: {found}"
    );
    assert_eq!(found["p99_bound_ms"], 0.001);
}

#[test]
fn bench_server_rejects_a_zero_rate() {
    let run = common::fails(&["bench", "--server", "--rate", "0"]);
    common::assert_mentions(&run.stderr, &["--rate"]);
}

#[test]
fn bench_rejects_zero_iterations() {
    let run = common::fails(&["bench", "--iterations", "0"]);
    common::assert_mentions(&run.stderr, &["--iterations"]);
}
