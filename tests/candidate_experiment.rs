//! How many graded samples does `candidate add` need? An experiment on the RouterBench data
//! (../shared/data/routerbench/*_train.csv), ignored by default because it trains three routers
//! and adds models to them 24 times (1–2 minutes on 2 cores once the static table is cached):
//!
//! ```sh
//! cargo test --test candidate_experiment -- --ignored --nocapture
//! # other models to leave out (comma-separated):
//! MODEL_ROUTER_EXPERIMENT_MODELS=claude-v2 cargo test --test candidate_experiment -- --ignored --nocapture
//! ```
//!
//! For each left-out model M it trains the static-tier router on the training side of the
//! standard split (seed 42, 15 % validation) without M (`train --models`), adds M back with
//! `candidate add` from 50, 100, 200 and 500 samples drawn from the same training side (three
//! seeded draws each), and evaluates every bundle with `eval --split val --json`, beside the
//! full retrain on all 11 models and the 10-model router itself. It prints a Markdown table and
//! writes it, with every bundle and sample file, under `target/tmp/candidate-experiment/`. The
//! commands it runs are printed as it runs them.

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use model_router::router_core::Router;
use model_router::router_policy::Catalog;
use router_training::data::{self, Format, Record};
use router_training::embed::StableHasher;
use serde_json::Value;

const CATALOG: &str = "models/routerbench/catalog.toml";
const SIZES: [usize; 4] = [50, 100, 200, 500];
const DRAWS: u64 = 3;

/// Runs the binary with the user's embedding cache (the static table is derived once, ~80 s).
fn run(args: &[String]) -> String {
    eprintln!("$ model-router {}", args.join(" "));
    let output = common::command()
        .env("MODEL_ROUTER_CACHE", router_training::embed::cache_dir())
        .args(args)
        .output()
        .expect("run model-router");
    assert!(
        output.status.success(),
        "model-router {} failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn data_args(files: &[PathBuf]) -> Vec<String> {
    let mut args = vec!["--data".to_string()];
    args.extend(files.iter().map(|f| common::arg(f)));
    args.extend(strings(&["--format", "routerbench"]));
    args
}

/// `eval --split val --json` of `bundle`, on `models` (all when empty).
fn eval(bundle: &Path, files: &[PathBuf], models: &[&str]) -> Value {
    let mut args = strings(&["eval", "--json", "--split", "val", "--model"]);
    args.push(common::arg(bundle));
    args.extend(data_args(files));
    if !models.is_empty() {
        args.extend(["--models".to_string(), models.join(",")]);
    }
    serde_json::from_str(run(&args).trim()).expect("one JSON report")
}

fn train(out: &Path, files: &[PathBuf], models: &[&str]) {
    if out.join("router.json").is_file() {
        std::fs::remove_dir_all(out).expect("clear the old bundle");
    }
    // The shipped RouterBench settings: static tier, linear head.
    let mut args = strings(&[
        "train",
        "--encoder",
        "static",
        "--hidden",
        "",
        "--catalog",
        CATALOG,
        "--out",
    ]);
    args.push(common::arg(out));
    args.extend(data_args(files));
    if !models.is_empty() {
        args.extend(["--models".to_string(), models.join(",")]);
    }
    run(&args);
}

/// The numbers of one evaluated router.
#[derive(Debug, Clone, Default)]
struct Row {
    aiq: f64,
    quality: (f64, f64),
    balanced: (f64, f64),
    cost: (f64, f64),
    /// Log loss and AUC of the left-out model's column on the validation prompts.
    column: Option<(f64, f64)>,
}

fn row(report: &Value, column: Option<(f64, f64)>) -> Row {
    let point = |mode: &str| {
        (
            report["modes"][mode]["quality"].as_f64().unwrap(),
            report["modes"][mode]["cost"].as_f64().unwrap(),
        )
    };
    Row {
        aiq: report["aiq"].as_f64().unwrap(),
        quality: point("quality"),
        balanced: point("balanced"),
        cost: point("cost"),
        column,
    }
}

/// Log loss and AUC of `model`'s column of `bundle` against the true scores of `val`.
fn column_metrics(bundle: &Path, model: &str, val: &[Record]) -> (f64, f64) {
    let router = Router::load(bundle).expect("load the bundle");
    let index = router
        .models()
        .iter()
        .position(|m| m == model)
        .expect("the column");
    let prompts: Vec<&str> = val.iter().map(|r| r.prompt.as_str()).collect();
    let predicted: Vec<f64> = router
        .score_batch(&prompts)
        .unwrap()
        .iter()
        .map(|row| f64::from(row[index]))
        .collect();
    let truth: Vec<f64> = val.iter().map(|r| r.scores[model]).collect();
    let loss = predicted
        .iter()
        .zip(&truth)
        .map(|(p, y)| {
            let p = p.clamp(1e-7, 1.0 - 1e-7);
            -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
        })
        .sum::<f64>()
        / truth.len() as f64;
    let (mut pairs, mut wins) = (0.0, 0.0);
    for (pi, yi) in predicted.iter().zip(&truth) {
        for (pj, yj) in predicted.iter().zip(&truth) {
            if yi > yj {
                pairs += 1.0;
                wins += if pi > pj {
                    1.0
                } else if pi == pj {
                    0.5
                } else {
                    0.0
                };
            }
        }
    }
    (loss, if pairs > 0.0 { wins / pairs } else { f64::NAN })
}

fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

fn cell(values: &[f64], digits: usize) -> String {
    let (mean, sd) = mean_sd(values);
    if values.len() > 1 {
        format!("{mean:.digits$} ± {sd:.digits$}")
    } else {
        format!("{mean:.digits$}")
    }
}

fn point_cell(points: &[(f64, f64)]) -> String {
    let qualities: Vec<f64> = points.iter().map(|p| p.0).collect();
    let costs: Vec<f64> = points.iter().map(|p| p.1).collect();
    format!("{} @ {:.2e}", cell(&qualities, 4), mean_sd(&costs).0)
}

fn table_row(label: &str, rows: &[Row]) -> String {
    let aiq: Vec<f64> = rows.iter().map(|r| r.aiq).collect();
    let column = if rows.iter().all(|r| r.column.is_some()) {
        let losses: Vec<f64> = rows.iter().filter_map(|r| r.column.map(|c| c.0)).collect();
        let aucs: Vec<f64> = rows.iter().filter_map(|r| r.column.map(|c| c.1)).collect();
        format!("{} / {}", cell(&losses, 3), cell(&aucs, 3))
    } else {
        "–".into()
    };
    format!(
        "| {label} | {} | {} | {} | {} | {column} |",
        cell(&aiq, 4),
        point_cell(&rows.iter().map(|r| r.quality).collect::<Vec<_>>()),
        point_cell(&rows.iter().map(|r| r.balanced).collect::<Vec<_>>()),
        point_cell(&rows.iter().map(|r| r.cost).collect::<Vec<_>>()),
    )
}

fn slug(model: &str) -> String {
    model.replace('/', "_")
}

#[test]
#[ignore = "an experiment (~10 minutes): cargo test --test candidate_experiment -- --ignored --nocapture"]
fn samples_needed_to_add_a_model() {
    common::ensure_minilm();
    let files: Vec<PathBuf> = [
        "arc_challenge_train.csv",
        "mbpp_train.csv",
        "winograde_train.csv",
    ]
    .iter()
    .map(|f| common::data_file(&format!("routerbench/{f}")))
    .collect();
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("candidate-experiment");
    std::fs::create_dir_all(&root).unwrap();
    let dataset = data::load(Format::Routerbench, &files, None).expect("the RouterBench data");
    let all_models = dataset.models();
    let (train_side, val) = data::split(dataset.records, 0.15, 42).unwrap();
    let catalog = Catalog::from_toml_str(
        &std::fs::read_to_string(common::repo_root().join(CATALOG)).unwrap(),
    )
    .unwrap();
    let left_out: Vec<String> = std::env::var("MODEL_ROUTER_EXPERIMENT_MODELS")
        .map(|v| v.split(',').map(str::to_owned).collect())
        .unwrap_or_else(|_| {
            vec![
                "gpt-3.5-turbo-1106".into(),
                "mistralai/mixtral-8x7b-chat".into(),
            ]
        });

    let full = root.join("full");
    train(&full, &files, &[]);
    let full_report = eval(&full, &files, &[]);
    let mut table = vec![format!(
        "RouterBench, validation split ({} prompts; seed 42, 15 %); {} training prompts to draw samples from; \
         modes as quality @ USD/prompt; mean ± sd over {DRAWS} seeded draws of the samples.\n",
        val.len(),
        train_side.len()
    )];
    for model in &left_out {
        assert!(
            all_models.contains(model),
            "{model} is not a RouterBench model: {all_models:?}"
        );
        let others: Vec<&str> = all_models
            .iter()
            .map(String::as_str)
            .filter(|m| m != model)
            .collect();
        let without = root.join(format!("without-{}", slug(model)));
        train(&without, &files, &others);
        let spec = catalog.get(model).expect("the catalog prices the model");
        let mut lines = vec![
            format!("\n**{model}** left out, then added back\n"),
            "| router | AIQ | quality mode | balanced mode | cost mode | new column on val: log loss / AUC |".into(),
            "|---|---|---|---|---|---|".into(),
            table_row(&format!("10 models (without {model})"), &[row(&eval(&without, &files, &others), None)]),
        ];
        for n in SIZES {
            let mut rows = Vec::new();
            for draw in 0..DRAWS {
                // A seeded random order: the records sorted by a hash of (seed, prompt).
                let seed = 1000 * draw + n as u64;
                let mut picked: Vec<&Record> = train_side.iter().collect();
                picked.sort_by_cached_key(|r| {
                    StableHasher::default()
                        .add(&seed.to_le_bytes())
                        .add(r.prompt.as_bytes())
                        .finish()
                });
                let samples: Vec<String> = picked[..n]
                    .iter()
                    .map(|r| {
                        serde_json::json!({ "prompt": r.prompt, "score": r.scores[model] })
                            .to_string()
                    })
                    .collect();
                let samples_path = root.join(format!("samples-{}-{n}-{draw}.jsonl", slug(model)));
                std::fs::write(&samples_path, samples.join("\n") + "\n").unwrap();
                let added = root.join(format!("added-{}-{n}-{draw}", slug(model)));
                let mut args = strings(&["candidate", "add", "--name", model, "--model"]);
                args.extend([
                    common::arg(&without),
                    "--samples".into(),
                    common::arg(&samples_path),
                    "--out".into(),
                    common::arg(&added),
                ]);
                args.extend([
                    "--input-price".into(),
                    spec.input_price.to_string(),
                    "--output-price".into(),
                    spec.output_price.to_string(),
                    "--context-window".into(),
                    spec.context_window.to_string(),
                    "--expected-output-tokens".into(),
                    spec.expected_output_tokens.to_string(),
                    "--version".into(),
                    format!("experiment-{n}-{draw}"),
                ]);
                run(&args);
                rows.push(row(
                    &eval(&added, &files, &[]),
                    Some(column_metrics(&added, model, &val)),
                ));
            }
            lines.push(table_row(&format!("+ {model} from {n} samples"), &rows));
        }
        lines.push(table_row(
            "full retrain, 11 models",
            &[row(&full_report, Some(column_metrics(&full, model, &val)))],
        ));
        table.extend(lines);
    }
    let text = table.join("\n") + "\n";
    std::fs::write(root.join("table.md"), &text).unwrap();
    println!("{text}");
}
