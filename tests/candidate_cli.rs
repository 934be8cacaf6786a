//! `model-router candidate add` end to end on a slice of the RouterBench data
//! (../shared/data/routerbench/*_train.csv, 50 prompts per task): a small bundle is trained
//! without one model, a model is added from graded samples, and the new bundle version keeps the
//! encoder and the other columns bit for bit, has the new column, catalog entry, model card
//! note and training record, and predicts the new model's scores on held-out prompts better
//! than a constant.

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::{
    arg, assert_mentions, fails, ok, prepare, routerbench_slice, write_jsonl, ROUTERBENCH_MODELS,
};
use model_router::router_core::candle_core::{safetensors, Device, Tensor};
use model_router::router_core::Router;
use serde_json::Value;
use tempfile::TempDir;

const CATALOG: &str = "models/routerbench/catalog.toml";
const LEFT_OUT: &str = "gpt-4-1106-preview";

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    safetensors::load(path, &Device::Cpu).unwrap()
}

fn values(tensor: &Tensor) -> Vec<f32> {
    tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// The synthetic model: strong on code (mbpp), middling on ARC, weak on Winogrande.
fn synthetic_score(task: &str) -> f64 {
    match task {
        "mbpp" => 0.9,
        "arc-challenge" | "arc_challenge" => 0.5,
        _ => 0.1,
    }
}

fn log_loss(p: f64, y: f64) -> f64 {
    let p = p.clamp(1e-7, 1.0 - 1e-7);
    -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
}

/// A 10-model bundle (all but gpt-4) trained on the slice, small and quick.
fn train_without_left_out(dir: &Path, data: &Path) -> PathBuf {
    let bundle = dir.join("ten");
    let others: Vec<&str> = ROUTERBENCH_MODELS
        .iter()
        .copied()
        .filter(|m| *m != LEFT_OUT)
        .collect();
    ok(&[
        "train",
        "--data",
        &arg(data),
        "--out",
        &arg(&bundle),
        "--encoder",
        "static",
        "--hidden",
        "32",
        "--epochs",
        "30",
        "--catalog",
        CATALOG,
        "--models",
        &others.join(","),
        "--version",
        "2026-11-01",
    ]);
    bundle
}

#[test]
fn candidate_add_extends_a_bundle_without_touching_the_rest() {
    prepare();
    let dir = TempDir::new().unwrap();
    let data = write_jsonl(dir.path(), "slice.jsonl", routerbench_slice());
    let bundle = train_without_left_out(dir.path(), &data);
    let old_config = read_json(&bundle.join("router.json"));
    assert_eq!(old_config["models"].as_array().unwrap().len(), 10);

    // Samples: two thirds of the slice, graded by the synthetic model; the rest is held out.
    let records: Vec<Value> = routerbench_slice()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let tasks: std::collections::BTreeSet<&str> = records
        .iter()
        .map(|r| r["task"].as_str().unwrap())
        .collect();
    assert!(tasks.contains("mbpp"), "{tasks:?}");
    type Indexed<'a> = Vec<(usize, &'a Value)>;
    let (fit, held): (Indexed, Indexed) = records.iter().enumerate().partition(|(i, _)| i % 3 != 0);
    let mut lines: Vec<String> = fit
        .iter()
        .map(|(_, r)| serde_json::json!({ "prompt": r["prompt"], "score": synthetic_score(r["task"].as_str().unwrap()) }).to_string())
        .collect();
    // Two bad rows, reported by line number and left out.
    lines.insert(1, "{\"prompt\": \"no score\"}".into());
    lines.insert(3, "{\"prompt\": \"too high\", \"score\": 1.5}".into());
    let samples = write_jsonl(dir.path(), "samples.jsonl", &lines);

    let added = dir.path().join("eleven");
    let run = ok(&[
        "candidate",
        "add",
        "--model",
        &arg(&bundle),
        "--name",
        "synthetic",
        "--samples",
        &arg(&samples),
        "--out",
        &arg(&added),
        "--input-price",
        "0.5",
        "--output-price",
        "1.5",
        "--context-window",
        "16000",
        "--expected-output-tokens",
        "64",
        "--capabilities",
        "tools",
        "--version",
        "2026-12-01",
        "--json",
    ]);
    assert_mentions(
        &run.stderr,
        &[
            "skipped 2 row(s)",
            "line 2: no field \"score\"",
            "line 4: score 1.5 is not in [0, 1]",
        ],
    );
    let report = run.json();
    assert_eq!(report["version"], "2026-12-01");
    assert_eq!(report["previous_version"], old_config["version"]);
    let fit_stats = &report["fit"];
    assert_eq!(fit_stats["samples"], 100);
    assert_eq!(fit_stats["lambda_rule"], "cross-validation");
    let cv = fit_stats["cv_log_loss"].as_f64().unwrap();
    assert!(
        cv < fit_stats["cv_log_loss_constant"].as_f64().unwrap(),
        "the fitted row beats a constant in cross-validation: {fit_stats}"
    );

    // router.json: the model appended, the version set, the addition recorded.
    let config = read_json(&added.join("router.json"));
    let mut models = old_config["models"].as_array().unwrap().clone();
    models.push("synthetic".into());
    assert_eq!(config["models"], Value::Array(models));
    assert_eq!(config["version"], "2026-12-01");
    assert_eq!(config["encoder"], old_config["encoder"]);
    assert_eq!(config["head"], old_config["head"]);
    let addition = &config["training"]["details"]["added_models"][0];
    assert_eq!(addition["model"], "synthetic");
    assert_eq!(addition["samples"], "samples.jsonl");
    assert_eq!(addition["fit"]["samples"], 100);
    assert_eq!(
        config["training"]["details"]["validation"],
        old_config["training"]["details"]["validation"]
    );

    // The encoder and tokenizer byte for byte; the head: every old weight bit for bit.
    for file in ["encoder.safetensors", "tokenizer.json"] {
        assert!(
            std::fs::read(bundle.join(file)).unwrap() == std::fs::read(added.join(file)).unwrap(),
            "{file} is copied as it is"
        );
    }
    let (old_head, new_head) = (
        tensors(&bundle.join("head.safetensors")),
        tensors(&added.join("head.safetensors")),
    );
    assert_eq!(old_head.len(), new_head.len());
    for key in ["layers.0.weight", "layers.0.bias"] {
        assert_eq!(values(&old_head[key]), values(&new_head[key]), "{key}");
    }
    assert_eq!(new_head["layers.1.weight"].dims(), [11, 32]);
    assert_eq!(new_head["layers.1.bias"].dims(), [11]);
    let (old_w, new_w) = (
        values(&old_head["layers.1.weight"]),
        values(&new_head["layers.1.weight"]),
    );
    assert!(
        old_w
            .iter()
            .zip(&new_w)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "the first 10 rows are unchanged"
    );
    let (old_b, new_b) = (
        values(&old_head["layers.1.bias"]),
        values(&new_head["layers.1.bias"]),
    );
    assert_eq!(old_b[..], new_b[..10]);

    // Catalog: the old entries and the new one.
    let catalog = std::fs::read_to_string(added.join("catalog.toml")).unwrap();
    assert!(
        catalog.starts_with(
            std::fs::read_to_string(bundle.join("catalog.toml"))
                .unwrap()
                .trim_end()
        ),
        "the old catalog is kept"
    );
    assert_mentions(
        &catalog,
        &[
            "name = \"synthetic\"",
            "input_price = 0.5",
            "context_window = 16000",
            "tools = true",
        ],
    );
    // Model card.
    let card = std::fs::read_to_string(added.join("README.md")).unwrap();
    assert_mentions(
        &card,
        &[
            "(2026-12-01)",
            "## Added models",
            "### synthetic",
            "100 samples (samples.jsonl)",
            "cross-validated log loss",
        ],
    );

    // Scores: the old columns are the same, prompt by prompt; the new one is there.
    let (old_router, new_router) = (
        Router::load(&bundle).unwrap(),
        Router::load(&added).unwrap(),
    );
    let held_prompts: Vec<&str> = held
        .iter()
        .map(|(_, r)| r["prompt"].as_str().unwrap())
        .collect();
    let (before, after) = (
        old_router.score_batch(&held_prompts).unwrap(),
        new_router.score_batch(&held_prompts).unwrap(),
    );
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a.len(), 11);
        assert_eq!(b[..], a[..10], "the old columns score exactly as before");
    }
    let decision = ok(&[
        "route",
        "--json",
        "--model",
        &arg(&added),
        "--mode",
        "quality",
        "Write a Python function to merge two sorted lists.",
    ])
    .json();
    assert!(decision["scores"]["synthetic"].is_number(), "{decision}");

    // On held-out prompts the new column predicts the synthetic scores far better than a constant.
    let truth: Vec<f64> = held
        .iter()
        .map(|(_, r)| synthetic_score(r["task"].as_str().unwrap()))
        .collect();
    let fit_mean = fit
        .iter()
        .map(|(_, r)| synthetic_score(r["task"].as_str().unwrap()))
        .sum::<f64>()
        / fit.len() as f64;
    let predicted: Vec<f64> = after.iter().map(|row| f64::from(row[10])).collect();
    let loss = |p: &dyn Fn(usize) -> f64| {
        truth
            .iter()
            .enumerate()
            .map(|(i, y)| log_loss(p(i), *y))
            .sum::<f64>()
            / truth.len() as f64
    };
    let (model_loss, constant_loss) = (loss(&|i| predicted[i]), loss(&|_| fit_mean));
    assert!(
        model_loss < constant_loss - 0.1,
        "held-out log loss {model_loss:.4} vs constant {constant_loss:.4}"
    );
    let mean = |task: &str| {
        let picked: Vec<f64> = held
            .iter()
            .zip(&predicted)
            .filter(|((_, r), _)| r["task"] == task)
            .map(|(_, p)| *p)
            .collect();
        picked.iter().sum::<f64>() / picked.len() as f64
    };
    assert!(
        mean("mbpp") > mean("winogrande") + 0.4,
        "mbpp {:.3} vs winogrande {:.3}",
        mean("mbpp"),
        mean("winogrande")
    );
}

#[test]
fn candidate_add_refuses_what_it_cannot_do() {
    prepare();
    let dir = TempDir::new().unwrap();
    let data = write_jsonl(dir.path(), "slice.jsonl", routerbench_slice());
    let bundle = train_without_left_out(dir.path(), &data);
    let samples = write_jsonl(
        dir.path(),
        "s.jsonl",
        &["{\"prompt\": \"Write a sort.\", \"score\": 1}".into()],
    );
    let (b, s, out) = (arg(&bundle), arg(&samples), arg(&dir.path().join("out")));
    let prices = [
        "--input-price",
        "1",
        "--output-price",
        "2",
        "--context-window",
        "8000",
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = [
            "candidate",
            "add",
            "--model",
            &b,
            "--samples",
            &s,
            "--out",
            &out,
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|x| x.to_string()));
        args
    };
    // The bundle ships a catalog, so the new model needs its prices.
    let run = fails(&with(&["--name", LEFT_OUT]));
    assert_mentions(&run.stderr, &["--input-price", "--context-window"]);
    // A name the bundle already has.
    let mut args = with(&["--name", "claude-v2"]);
    args.extend(prices.map(String::from));
    assert_mentions(&fails(&args).stderr, &["claude-v2"]);
    // Never in place.
    let mut args = with(&["--name", LEFT_OUT]);
    args.extend(prices.map(String::from));
    let in_place: Vec<String> = args
        .iter()
        .map(|a| if *a == out { b.clone() } else { a.clone() })
        .collect();
    assert_mentions(&fails(&in_place).stderr, &["--out", "new directory"]);
    // No usable sample.
    let empty = write_jsonl(
        dir.path(),
        "empty.jsonl",
        &["{\"prompt\": 3, \"score\": 1}".into()],
    );
    let no_samples: Vec<String> = args
        .iter()
        .map(|a| if *a == s { arg(&empty) } else { a.clone() })
        .collect();
    assert_mentions(&fails(&no_samples).stderr, &["no usable samples", "line 1"]);
    // With one sample it works (no cross-validation: the strongest regularisation).
    let report = ok(&[args, vec!["--json".into()]].concat()).json();
    assert_eq!(report["fit"]["lambda_rule"], "too few samples");
    assert_ne!(
        report["version"],
        read_json(&bundle.join("router.json"))["version"],
        "the version is bumped"
    );
}
