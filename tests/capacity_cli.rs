//! `model-router capacity` and `usage export` (issue #15): a usage log with a known demand
//! distribution gets the size the arithmetic says, from a JSON-lines file and from a usage
//! database alike; broken lines are skipped with their numbers; a deployment without traffic
//! needs nothing; a model without a price is a clear error; the plot marks the recommendation.

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{arg, assert_mentions, fails, ok};
use router_store::{Store, StoreOptions, UsageRow};
use serde_json::Value;

const MODEL: &str = "gpt-4-1106-preview";
const FIRST_MINUTE: i64 = 29_412_000;

/// 100 minutes of demand on `gpt4-ptu`, input tokens only, in a scrambled order: 50 minutes at
/// 1000 tokens, 30 at 2000, 15 at 3000, 5 at 4000. A unit of 1000 tokens/min saves
/// 43800/100 × 1000 × $10/M = $438 × (share of minutes at or above it) a month: $438, $219,
/// $87.60, $21.90 for units 1 to 4. At $100 a unit, two units pay for themselves, the third
/// does not: 2 units, $200 + 438 × (0.15 × 1000 + 0.05 × 2000) × 10/1000 = $309.50 a month,
/// against $766.50 all pay-as-you-go and $400 for the peak.
fn known_demand() -> Vec<UsageRow> {
    let mut levels = Vec::new();
    for (tokens, count) in [(1000u64, 50), (2000, 30), (3000, 15), (4000, 5)] {
        levels.extend(std::iter::repeat_n(tokens, count));
    }
    // A fixed permutation (37 is coprime with 100), so the order is not sorted.
    (0..100)
        .map(|i| {
            let tokens = levels[(i * 37) % 100];
            UsageRow {
                requests: tokens / 500,
                input_tokens: tokens,
                ..UsageRow::new(FIRST_MINUTE + i as i64, "gpt4-ptu", MODEL)
            }
        })
        .collect()
}

fn write_usage(dir: &Path, rows: &[UsageRow], extra_lines: &[(usize, &str)]) -> PathBuf {
    let mut lines: Vec<String> = rows
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    for (at, text) in extra_lines {
        lines.insert(*at, text.to_string());
    }
    let path = dir.join("usage.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn write_catalog(dir: &Path) -> PathBuf {
    let path = dir.join("catalog.toml");
    let text = format!("[[models]]\nname = \"{MODEL}\"\ninput_price = 10.0\noutput_price = 30.0\ncontext_window = 128000\n");
    std::fs::write(&path, text).unwrap();
    path
}

fn capacity(source: &[&str], catalog: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec!["capacity".into()];
    args.extend(source.iter().map(|s| s.to_string()));
    args.extend([
        "--catalog".into(),
        arg(catalog),
        "--unit-tpm".into(),
        "1000".into(),
        "--unit-price".into(),
        "100".into(),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn close(value: &Value, expected: f64) -> bool {
    value.as_f64().is_some_and(|v| (v - expected).abs() < 1e-6)
}

#[test]
fn a_known_demand_gets_the_size_the_arithmetic_says() {
    let dir = tempfile::tempdir().unwrap();
    let usage = write_usage(dir.path(), &known_demand(), &[]);
    let catalog = write_catalog(dir.path());
    let report = ok(&capacity(&["--usage", &arg(&usage)], &catalog, &["--json"])).json();
    assert_eq!(report["window"]["minutes"], 100);
    assert_eq!(report["skipped_lines"].as_array().unwrap().len(), 0);
    let d = &report["deployments"][0];
    assert_eq!(
        (
            d["deployment"].as_str(),
            d["requests"].as_u64(),
            d["input_tokens"].as_u64()
        ),
        (Some("gpt4-ptu"), Some(350), Some(175_000))
    );
    let s = &d["sizing"];
    let tpm: Vec<u64> = ["p50", "p80", "p90", "p99", "max"]
        .iter()
        .map(|p| s["tpm"][p].as_u64().unwrap())
        .collect();
    assert_eq!(tpm, [1000, 2000, 3000, 4000, 4000]);
    assert_eq!(s["recommended"]["units"], 2);
    assert_eq!(s["recommended"]["covers"], "p80");
    assert!(
        close(&s["recommended"]["monthly_usd"], 309.5),
        "{}",
        s["recommended"]
    );
    assert!(close(&s["all_paygo_usd"], 766.5));
    assert!(close(&s["peak"]["monthly_usd"], 400.0));
    let monthly: Vec<f64> = s["sizes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["monthly_usd"].as_f64().unwrap())
        .collect();
    let expected = [766.5, 428.5, 309.5, 321.9, 400.0];
    assert!(
        monthly
            .iter()
            .zip(expected)
            .all(|(a, b)| (a - b).abs() < 1e-6),
        "{monthly:?}"
    );
    // The window's two UTC hours: 60 minutes of one, 40 of the next.
    let minutes: Vec<u64> = s["by_hour"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["minutes"].as_u64().unwrap())
        .collect();
    assert_eq!(minutes.iter().sum::<u64>(), 100);

    let table = ok(&capacity(&["--usage", &arg(&usage)], &catalog, &[])).stdout;
    assert_mentions(
        &table,
        &[
            "gpt4-ptu",
            "p80 2000",
            "<- recommended",
            "recommended: 2 units ($309.50/month)",
            "$766.50",
            "$400.00",
        ],
    );
}

#[test]
fn a_usage_database_and_its_export_read_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("usage.db");
    Store::open(&db, StoreOptions::default())
        .unwrap()
        .add_usage(&known_demand())
        .unwrap();
    let catalog = write_catalog(dir.path());
    let from_db = ok(&capacity(&["--db", &arg(&db)], &catalog, &["--json"])).json();
    let export = dir.path().join("export.jsonl");
    let exported = ok(&["usage", "export", "--db", &arg(&db), "--out", &arg(&export)]);
    assert_mentions(&exported.stderr, &["wrote 100 usage rows"]);
    let from_file = ok(&capacity(
        &["--usage", &arg(&export)],
        &catalog,
        &["--json"],
    ))
    .json();
    assert_eq!(from_db, from_file);
    assert_eq!(
        from_db["deployments"][0]["sizing"]["recommended"]["units"],
        2
    );
    let missing = fails(&capacity(
        &["--db", &arg(&dir.path().join("none.db"))],
        &catalog,
        &[],
    ));
    assert_mentions(&missing.stderr, &["none.db", "no such database file"]);
}

#[test]
fn broken_lines_are_skipped_and_numbered() {
    let dir = tempfile::tempdir().unwrap();
    let usage = write_usage(
        dir.path(),
        &known_demand(),
        &[(2, "{not json"), (50, "{\"minute\": 1}")],
    );
    let catalog = write_catalog(dir.path());
    let run = ok(&capacity(&["--usage", &arg(&usage)], &catalog, &["--json"]));
    assert_mentions(
        &run.stderr,
        &["skipped 2 lines", "line 3:", "line 51:", "missing field"],
    );
    let report = run.json();
    let lines: Vec<u64> = report["skipped_lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [3, 51]);
    assert_eq!(
        report["deployments"][0]["sizing"]["recommended"]["units"], 2,
        "the good lines still count"
    );
}

#[test]
fn a_deployment_without_traffic_needs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows = known_demand();
    // It only answered 429s: no request, no token.
    rows.push(UsageRow {
        throttled: 3,
        ..UsageRow::new(FIRST_MINUTE + 5, "idle-ptu", MODEL)
    });
    let usage = write_usage(dir.path(), &rows, &[]);
    let catalog = write_catalog(dir.path());
    let only = ["--deployment", "idle-ptu"];
    let report = ok(&capacity(
        &["--usage", &arg(&usage)],
        &catalog,
        &[&only[..], &["--json"]].concat(),
    ))
    .json();
    let d = &report["deployments"][0];
    assert_eq!(
        (d["throttled"].as_u64(), d["requests"].as_u64()),
        (Some(3), Some(0))
    );
    assert_eq!(d["sizing"]["tpm"]["max"], 0);
    assert_eq!(d["sizing"]["recommended"]["units"], 0);
    assert!(close(&d["sizing"]["all_paygo_usd"], 0.0));
    let table = ok(&capacity(&["--usage", &arg(&usage)], &catalog, &only)).stdout;
    assert_mentions(
        &table,
        &["idle-ptu", "no traffic in the window: nothing to provision"],
    );
    let unknown = fails(&capacity(
        &["--usage", &arg(&usage)],
        &catalog,
        &["--deployment", "nope"],
    ));
    assert_mentions(
        &unknown.stderr,
        &[
            "no usage recorded for deployment `nope`",
            "`gpt4-ptu`",
            "`idle-ptu`",
        ],
    );
}

#[test]
fn a_model_without_a_price_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows = known_demand();
    rows.push(UsageRow {
        requests: 1,
        input_tokens: 10,
        ..UsageRow::new(FIRST_MINUTE, "local", "mystery-model")
    });
    let usage = write_usage(dir.path(), &rows, &[]);
    let catalog = write_catalog(dir.path());
    let run = fails(&capacity(&["--usage", &arg(&usage)], &catalog, &[]));
    assert_mentions(
        &run.stderr,
        &[
            "no pay-as-you-go price for model `mystery-model`",
            "deployment `local`",
            "--catalog",
        ],
    );
}

#[test]
fn the_plot_marks_the_recommended_size() {
    let dir = tempfile::tempdir().unwrap();
    let usage = write_usage(dir.path(), &known_demand(), &[]);
    let catalog = write_catalog(dir.path());
    let plot = dir.path().join("capacity.svg");
    ok(&capacity(
        &["--usage", &arg(&usage)],
        &catalog,
        &["--plot", &arg(&plot)],
    ));
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert_mentions(
        &svg,
        &[
            "<svg",
            "recommended: 2 units, $310/month",
            "all pay-as-you-go ($767)",
            "gpt4-ptu",
        ],
    );
}
