//! The task gate through the binary, on a slice of the ZeroEval data (three tasks): `train
//! --task-gate` ships `gate.safetensors` with its manifest entry, its inner cross-validation in
//! the training record and the model card, and leaves the quality head as it is; `route` says
//! when the gate chose; `cv --task-gate` fits a gate inside each fold and reports it.

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::{arg, assert_mentions, data_file, import_slice, ok, prepare, write_jsonl};
use serde_json::Value;
use tempfile::TempDir;

const CATALOG: &str = "models/zeroeval/catalog.toml";
/// Small and quick: a 32-unit head, at most 30 epochs.
const SMALL: [&str; 6] = ["--encoder", "static", "--hidden", "32", "--epochs", "30"];

fn train(data: &Path, out: &Path, extra: &[&str]) {
    let mut args: Vec<String> = vec![
        "train".into(),
        "--data".into(),
        arg(data),
        "--out".into(),
        arg(out),
        "--catalog".into(),
        CATALOG.into(),
    ];
    args.extend(SMALL.iter().chain(extra).map(|s| s.to_string()));
    ok(&args);
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn train_ships_a_task_gate_and_route_says_when_it_chose() {
    prepare();
    let slice = import_slice("jsonl", &[data_file("zeroeval/train.jsonl")], 40);
    let dir = TempDir::new().unwrap();
    let data = write_jsonl(dir.path(), "zeroeval.jsonl", &slice);
    let (gated, plain) = (dir.path().join("gated"), dir.path().join("plain"));
    train(&data, &gated, &["--task-gate"]);
    train(&data, &plain, &[]);

    let config = read_json(&gated.join("router.json"));
    assert_eq!(
        config["task_gate"]["tasks"],
        serde_json::json!(["crux", "gsm", "math-l5"]),
        "{config}"
    );
    assert!(gated.join("gate.safetensors").is_file());
    let report = config["training"]["details"]["task_gate"]["tasks"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(report.len(), 3);
    let blends: Vec<(String, f64)> = report
        .iter()
        .map(|t| {
            (
                t["task"].as_str().unwrap().to_owned(),
                t["blend"].as_f64().unwrap(),
            )
        })
        .collect();
    assert!(
        blends
            .iter()
            .all(|(_, b)| [0.0, 0.25, 0.5, 0.75, 1.0].contains(b)),
        "{blends:?}"
    );
    let card = std::fs::read_to_string(gated.join("README.md")).unwrap();
    assert_mentions(&card, &["## Task gate", "gate.safetensors", "recognised"]);
    // The gate is fitted beside the head and changes nothing in it.
    assert_eq!(
        std::fs::read(gated.join("head.safetensors")).unwrap(),
        std::fs::read(plain.join("head.safetensors")).unwrap()
    );
    assert!(
        read_json(&plain.join("router.json"))
            .get("task_gate")
            .is_none()
            && !plain.join("gate.safetensors").exists()
    );

    // Route the slice's own prompts: whenever the gate chose, the decision names a task whose
    // blend is positive; it chooses for some prompt of such a task; the plain bundle never does.
    let blended: Vec<&str> = blends
        .iter()
        .filter(|(_, b)| *b > 0.0)
        .map(|(t, _)| t.as_str())
        .collect();
    assert!(
        !blended.is_empty(),
        "on this slice some task prefers its training means: {blends:?}"
    );
    let prompts: Vec<(String, String)> = slice
        .iter()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|r| blended.contains(&r["task"].as_str().unwrap()))
        .take(20)
        .map(|r| {
            (
                r["prompt"].as_str().unwrap().to_owned(),
                r["task"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut chose = 0;
    for (prompt, task) in &prompts {
        let decision = ok(&["route", "--json", "--model", &arg(&gated), prompt]).json();
        if let Some(gate) = decision.get("task_gate") {
            assert!(blended.contains(&gate["task"].as_str().unwrap()), "{gate}");
            assert!(
                gate["confidence"].as_f64().unwrap() >= 0.5
                    && gate["blend"].as_f64().unwrap() > 0.0,
                "{gate}"
            );
            chose += usize::from(gate["task"] == task.as_str());
        }
        assert!(ok(&["route", "--json", "--model", &arg(&plain), prompt])
            .json()
            .get("task_gate")
            .is_none());
    }
    assert!(
        chose > 0,
        "the gate recognised none of {} training prompts of {blended:?}",
        prompts.len()
    );
    let (prompt, _) = &prompts[0];
    let text = ok(&["route", "--model", &arg(&gated), prompt]).stdout;
    let json = ok(&["route", "--json", "--model", &arg(&gated), prompt]).json();
    assert_eq!(
        text.contains("task gate: recognised as"),
        json.get("task_gate").is_some(),
        "{text}"
    );
}

#[test]
fn cv_fits_a_gate_inside_each_fold() {
    prepare();
    let slice = import_slice("jsonl", &[data_file("zeroeval/train.jsonl")], 30);
    let dir = TempDir::new().unwrap();
    let data = write_jsonl(dir.path(), "zeroeval.jsonl", &slice);
    let cv = |extra: &[&str]| {
        let mut args: Vec<String> = vec![
            "cv".into(),
            "--json".into(),
            "--folds".into(),
            "3".into(),
            "--data".into(),
            arg(&data),
            "--catalog".into(),
            CATALOG.into(),
        ];
        args.extend(SMALL.iter().chain(extra).map(|s| s.to_string()));
        ok(&args)
    };
    let gated = cv(&["--task-gate"]);
    assert_mentions(
        &gated.stderr,
        &[
            "task gate:",
            "held-out prompts blended",
            "crux",
            "gsm",
            "math-l5",
        ],
    );
    let plain = cv(&[]);
    assert!(!plain.stderr.contains("task gate:"), "{}", plain.stderr);
    let (gated, plain) = (gated.json(), plain.json());
    assert_eq!(gated["n"], 90);
    // Same folds and heads: the baselines are identical, only the router's scores differ.
    assert_eq!(
        gated["baselines"]["task_best"],
        plain["baselines"]["task_best"]
    );
    assert_eq!(gated["baselines"]["knn"], plain["baselines"]["knn"]);
}
