//! `data import` → `train` → `eval` → `route`, end to end through the binary, on small slices of the
//! real routing data in ../shared/data (RouterBench, RouterDC, LLMRouter): the bundle a run writes,
//! the evaluation report's shape, two-model metrics, renamed models, and bit-for-bit determinism.
//!
//! Every test trains the static tier (a table derived from all-MiniLM-L6-v2) on at most ~170
//! records with a small head and few epochs. The table takes a pass over MiniLM's vocabulary to
//! derive, so all tests share one cache directory (see `common::cache_dir`) and the first test
//! derives it, once, before any other trains.

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{
    arg, assert_mentions, data_file, fails, import_slice, ok, prepare, routerbench_bundle,
    routerbench_slice, write_jsonl, Run,
};
use serde_json::Value;
use tempfile::TempDir;

const CATALOG: &str = "models/routerbench/catalog.toml";
const STRONG: &str = "gpt-4-1106-preview";
const WEAK: &str = "mistralai/mistral-7b-chat";
/// Small and quick: a 32-unit head, at most 30 epochs.
const SMALL: [&str; 6] = ["--encoder", "static", "--hidden", "32", "--epochs", "30"];

/// `train` with the small settings, `--data data --out out` and `extra`; returns the run.
fn train(data: &Path, out: &Path, extra: &[&str]) -> Run {
    let mut args: Vec<String> = vec![
        "train".into(),
        "--data".into(),
        arg(data),
        "--out".into(),
        arg(out),
    ];
    args.extend(SMALL.iter().map(|s| s.to_string()));
    args.extend(extra.iter().map(|s| s.to_string()));
    ok(&args)
}

/// `eval --json` of `bundle` on `data` with `extra`: exactly one JSON object on stdout.
fn eval_json(bundle: &Path, data: &Path, extra: &[&str]) -> Value {
    let mut args: Vec<String> = vec![
        "eval".into(),
        "--json".into(),
        "--model".into(),
        arg(bundle),
        "--data".into(),
        arg(data),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let run = ok(&args);
    assert_eq!(
        run.stdout.lines().count(),
        1,
        "eval --json prints exactly one line: {:?}",
        run.stdout
    );
    let report = run.json();
    assert!(report.is_object(), "{report}");
    report
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn keys(value: &Value) -> BTreeSet<&str> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect()
}

fn set<'a>(names: &[&'a str]) -> BTreeSet<&'a str> {
    names.iter().copied().collect()
}

fn number(value: &Value, what: &str) -> f64 {
    let x = value
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is a number: {value}"));
    assert!(x.is_finite(), "{what} is finite: {x}");
    x
}

fn assert_point(point: &Value, what: &str) {
    assert_eq!(keys(point), set(&["quality", "cost"]), "{what}");
    let quality = number(&point["quality"], what);
    assert!((0.0..=1.0).contains(&quality), "{what}: quality {quality}");
    assert!(number(&point["cost"], what) >= 0.0, "{what}");
}

fn assert_modes(modes: &Value, what: &str) {
    assert_eq!(keys(modes), set(&["quality", "balanced", "cost"]), "{what}");
    for mode in ["quality", "balanced", "cost"] {
        assert_point(&modes[mode], &format!("{what}.{mode}"));
    }
}

/// The report has exactly the shape documented in training/src/eval.rs.
fn assert_report_shape(report: &Value, models: &[&str], n: usize) {
    assert_eq!(
        keys(report),
        set(&[
            "n",
            "skipped",
            "models",
            "best_single",
            "oracle",
            "modes",
            "aiq",
            "single_models_aiq",
            "cost_at_parity",
            "apgr",
            "cpt50",
            "cpt80",
            "baselines",
            "tasks",
        ]),
        "{report}"
    );
    assert_eq!(report["n"].as_u64(), Some(n as u64), "{report}");
    assert_eq!(report["skipped"].as_u64(), Some(0));
    let report_models: Vec<&str> = report["models"]
        .as_array()
        .expect("models")
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(report_models, models);
    assert_eq!(
        keys(&report["best_single"]),
        set(&["model", "quality", "cost"])
    );
    assert!(models.contains(
        &report["best_single"]["model"]
            .as_str()
            .expect("best_single.model")
    ));
    assert_point(&json_point(&report["best_single"]), "best_single");
    assert_point(&report["oracle"], "oracle");
    assert!(
        number(&report["oracle"]["quality"], "oracle")
            >= number(&report["best_single"]["quality"], "best single")
    );
    assert_modes(&report["modes"], "modes");
    for key in ["aiq", "single_models_aiq"] {
        let aiq = number(&report[key], key);
        assert!((0.0..=1.0).contains(&aiq), "{key} {aiq}");
    }
    assert!(
        number(&report["aiq"], "aiq") >= number(&report["single_models_aiq"], "single") - 1e-12,
        "the router's hull includes the single models"
    );
    for key in ["cost_at_parity", "apgr", "cpt50", "cpt80"] {
        assert!(
            report[key].is_null() || report[key].is_number(),
            "{key}: {}",
            report[key]
        );
    }
    assert_eq!(
        keys(&report["baselines"]),
        set(&["knn", "random", "task_best"])
    );
    assert_point(&report["baselines"]["task_best"], "task_best");
    assert_eq!(keys(&report["baselines"]["knn"]), set(&["aiq", "modes"]));
    number(&report["baselines"]["knn"]["aiq"], "knn aiq");
    assert_modes(&report["baselines"]["knn"]["modes"], "knn.modes");
    assert_eq!(
        keys(&report["baselines"]["random"]),
        set(&["aiq", "quality", "cost"])
    );
    number(&report["baselines"]["random"]["aiq"], "random aiq");
    // One entry per task, in name order, whose prompts add up to the report's.
    let tasks = report["tasks"].as_array().expect("tasks");
    let names: Vec<&str> = tasks
        .iter()
        .map(|t| t["task"].as_str().expect("task"))
        .collect();
    assert!(names.windows(2).all(|w| w[0] < w[1]), "{names:?}");
    assert_eq!(
        tasks.iter().map(|t| t["n"].as_u64().unwrap()).sum::<u64>(),
        n as u64
    );
    for task in tasks {
        let what = task["task"].as_str().unwrap();
        assert_eq!(
            keys(task),
            set(&["task", "n", "best_single", "task_best", "knn", "modes"]),
            "{what}"
        );
        assert_point(&task["best_single"], what);
        assert_point(&task["task_best"], what);
        assert_modes(&task["knn"], what);
        assert_modes(&task["modes"], what);
    }
}

fn json_point(value: &Value) -> Value {
    serde_json::json!({ "quality": value["quality"], "cost": value["cost"] })
}

#[test]
fn train_eval_route_end_to_end_on_a_routerbench_slice() {
    prepare();
    let dir = TempDir::new().unwrap();
    let data = write_jsonl(dir.path(), "slice.jsonl", routerbench_slice());
    let bundle = dir.path().join("bundle");
    let trained = train(&data, &bundle, &["--catalog", CATALOG, "--json"]);
    assert_mentions(&trained.stderr, &["bundle written to"]);
    let train_report: Value = trained.json();

    // The bundle: every file, the catalog it was given, a model card with the validation table.
    for file in [
        "router.json",
        "tokenizer.json",
        "encoder.safetensors",
        "head.safetensors",
        "catalog.toml",
        "README.md",
        "validation.svg",
    ] {
        assert!(bundle.join(file).is_file(), "the bundle has {file}");
    }
    assert_eq!(
        std::fs::read_to_string(bundle.join("catalog.toml")).unwrap(),
        std::fs::read_to_string(CATALOG).unwrap()
    );
    let config = read_json(&bundle.join("router.json"));
    assert_eq!(
        config["name"], "bundle",
        "the name defaults to the output directory's"
    );
    let models: Vec<&str> = config["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(models, common::ROUTERBENCH_MODELS);
    assert_eq!(config["encoder"]["kind"], "static");
    assert_eq!(config["head"]["hidden"], serde_json::json!([32]));
    let training = &config["training"];
    assert_eq!(training["seed"], 42);
    assert_eq!(training["data"], serde_json::json!(["slice.jsonl"]));
    let details = &training["details"];
    let (train_n, val_n) = (
        details["train_prompts"].as_u64().unwrap() as usize,
        details["val_prompts"].as_u64().unwrap() as usize,
    );
    assert_eq!(train_n + val_n, 150);
    assert_eq!(
        val_n,
        3 * 8,
        "15 % of 50 per task, rounded, in each of the 3 tasks"
    );
    assert!((1..=30).contains(&details["epochs"].as_u64().unwrap()));
    assert_eq!(
        details["validation"], train_report,
        "router.json records the validation report"
    );

    let card = std::fs::read_to_string(bundle.join("README.md")).unwrap();
    assert_mentions(
        &card,
        &[
            "## Validation (15 % held out, seed 42; early stopping on 15 % of the rest)",
            &format!("{val_n} test prompts"),
            "best single (",
            "router, quality mode",
            "AIQ: router",
            "validation.svg",
            "slice.jsonl",
            "## Reproduce",
            "model-router train --data ",
            "--hidden 32 --epochs 30 --catalog models/routerbench/catalog.toml --json\n",
        ],
    );

    // eval --split val re-makes the validation split: the same prompts, so the same report, but
    // for the kNN baseline (cross-validated on the evaluated data, not fitted on the training side).
    let plot = dir.path().join("out.svg");
    let report = eval_json(&bundle, &data, &["--split", "val", "--plot", &arg(&plot)]);
    assert_report_shape(&report, &common::ROUTERBENCH_MODELS, val_n);
    assert_eq!(report["best_single"]["model"], STRONG, "{report}");
    assert!(
        report["apgr"].is_null() && report["cpt50"].is_null() && report["cpt80"].is_null(),
        "APGR needs two models"
    );
    // The baselines are learned on the evaluated data out of fold by eval, on the training side by train.
    let strip_knn = |mut r: Value| {
        r["baselines"].as_object_mut().unwrap().remove("knn");
        r["baselines"].as_object_mut().unwrap().remove("task_best");
        for task in r["tasks"].as_array_mut().unwrap() {
            task.as_object_mut().unwrap().remove("knn");
            task.as_object_mut().unwrap().remove("task_best");
        }
        r
    };
    assert_eq!(strip_knn(report.clone()), strip_knn(train_report.clone()));
    let svg = std::fs::read_to_string(&plot).expect("--plot writes the SVG");
    assert!(
        svg.trim_start().starts_with("<svg") || svg.trim_start().starts_with("<?xml"),
        "{}",
        &svg[..svg.len().min(200)]
    );
    assert!(svg.trim_end().ends_with("</svg>"));

    // The other sides of the split, and the table form.
    assert_report_shape(
        &eval_json(&bundle, &data, &["--split", "train"]),
        &common::ROUTERBENCH_MODELS,
        train_n,
    );
    assert_report_shape(
        &eval_json(&bundle, &data, &[]),
        &common::ROUTERBENCH_MODELS,
        150,
    );
    let table = ok(&[
        "eval",
        "--model",
        &arg(&bundle),
        "--data",
        &arg(&data),
        "--split",
        "val",
    ])
    .stdout;
    assert_mentions(
        &table,
        &[
            &format!("{val_n} test prompts"),
            "router, balanced mode",
            "AIQ: router",
            "per-task best (training side)",
            "quality per task:",
        ],
    );
    let run = fails(&[
        "eval",
        "--model",
        &arg(&bundle),
        "--data",
        &arg(&data),
        "--split",
        "test",
    ]);
    assert_mentions(&run.stderr, &["--split", "\"test\""]);

    // The new bundle routes.
    let decision = ok(&[
        "route",
        "--json",
        "--model",
        &arg(&bundle),
        "--mode",
        "quality",
        "Write a function to reverse a string.",
    ])
    .json();
    assert_eq!(decision["scores"].as_object().unwrap().len(), 11);
    assert!(models.contains(&decision["model"].as_str().unwrap()));
    let best = decision["eligible"]
        .as_object()
        .unwrap()
        .values()
        .map(|e| e["predicted_quality"].as_f64().unwrap())
        .fold(f64::MIN, f64::max);
    assert_eq!(
        decision["eligible"][decision["model"].as_str().unwrap()]["predicted_quality"].as_f64(),
        Some(best)
    );
}

#[test]
fn two_model_slice_reports_apgr_and_cpt() {
    prepare();
    let dir = TempDir::new().unwrap();
    let data = write_jsonl(dir.path(), "slice.jsonl", routerbench_slice());
    let bundle = dir.path().join("two");
    let pair = format!("{STRONG},{WEAK}");
    train(&data, &bundle, &["--catalog", CATALOG, "--models", &pair]);
    let config = read_json(&bundle.join("router.json"));
    assert_eq!(
        config["models"],
        serde_json::json!([STRONG, WEAK]),
        "the head's columns follow --models"
    );
    // The bundle ships the catalog's entries for its two models only: a policy refuses entries
    // for models the bundle does not predict, so the full catalog would not route.
    let shipped = std::fs::read_to_string(bundle.join("catalog.toml")).unwrap();
    let names: Vec<&str> = shipped
        .lines()
        .filter_map(|l| l.trim().strip_prefix("name = "))
        .map(|n| n.trim_matches('"'))
        .collect();
    assert_eq!(names, [STRONG, WEAK], "{shipped}");
    assert_mentions(&shipped, &["context_window = 128000", "input_price = 10.0"]);

    let report = eval_json(&bundle, &data, &["--split", "val", "--models", &pair]);
    assert_report_shape(&report, &[STRONG, WEAK], 24);
    let apgr = number(&report["apgr"], "apgr");
    assert!((-1.0..=2.0).contains(&apgr), "apgr {apgr}");
    for key in ["cpt50", "cpt80"] {
        let cpt = number(&report[key], key);
        assert!((0.0..=1.0).contains(&cpt), "{key} {cpt}");
    }
    assert!(number(&report["cpt50"], "cpt50") <= number(&report["cpt80"], "cpt80"));

    // The data has 11 models, the bundle predicts two: eval says which flag to use.
    let run = fails(&["eval", "--model", &arg(&bundle), "--data", &arg(&data)]);
    assert_mentions(&run.stderr, &["does not predict", "--models"]);

    let decision = ok(&["route", "--json", "--model", &arg(&bundle), "hello"]).json();
    assert_eq!(keys(&decision["scores"]), set(&[STRONG, WEAK]));
}

#[test]
fn renamed_model_trains_and_evaluates_under_its_new_name() {
    prepare();
    let dir = TempDir::new().unwrap();
    let data = write_jsonl(dir.path(), "slice.jsonl", routerbench_slice());
    // The catalog must know the new name: the same catalog with gpt-4-1106-preview renamed.
    let catalog_text = std::fs::read_to_string(CATALOG).unwrap();
    assert!(catalog_text.contains(&format!("name = \"{STRONG}\"")));
    let catalog = dir.path().join("catalog.toml");
    std::fs::write(
        &catalog,
        catalog_text.replace(&format!("name = \"{STRONG}\""), "name = \"gpt-4\""),
    )
    .unwrap();
    let rename = format!("{STRONG}=gpt-4");
    let bundle = dir.path().join("renamed");
    train(
        &data,
        &bundle,
        &["--catalog", &arg(&catalog), "--rename", &rename],
    );
    let config = read_json(&bundle.join("router.json"));
    let models: Vec<&str> = config["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(
        models.contains(&"gpt-4") && !models.contains(&STRONG),
        "{models:?}"
    );

    let report = eval_json(&bundle, &data, &["--split", "val", "--rename", &rename]);
    let expected: Vec<&str> = common::ROUTERBENCH_MODELS
        .iter()
        .map(|m| if *m == STRONG { "gpt-4" } else { m })
        .collect();
    assert_report_shape(&report, &expected, 24);
    assert_eq!(report["best_single"]["model"], "gpt-4");

    // Without the rename, eval names the model it cannot find and the flag that fixes it.
    let run = fails(&["eval", "--model", &arg(&bundle), "--data", &arg(&data)]);
    assert_mentions(&run.stderr, &[STRONG, "--rename"]);
    // The rename and --models compose: --models takes the new names.
    let two = eval_json(
        &bundle,
        &data,
        &["--rename", &rename, "--models", &format!("gpt-4,{WEAK}")],
    );
    assert_eq!(two["models"], serde_json::json!(["gpt-4", WEAK]));
    // A malformed rename is an error that says the expected form.
    let run = fails(&[
        "eval",
        "--model",
        &arg(&bundle),
        "--data",
        &arg(&data),
        "--rename",
        "gpt-4",
    ]);
    assert_mentions(&run.stderr, &["OLD=NEW"]);

    let decision = ok(&["route", "--json", "--model", &arg(&bundle), "hello"]).json();
    assert!(decision["scores"].get("gpt-4").is_some(), "{decision}");
}

#[test]
fn training_is_deterministic_for_a_seed() {
    prepare();
    let dir = TempDir::new().unwrap();
    let data = write_jsonl(dir.path(), "slice.jsonl", routerbench_slice());
    let run = |out: &str, seed: &str| {
        let bundle = dir.path().join(out);
        train(
            &data,
            &bundle,
            &["--catalog", CATALOG, "--name", "same", "--seed", seed],
        );
        bundle
    };
    let (first, second, other) = (run("first", "42"), run("second", "42"), run("other", "7"));
    let read = |bundle: &Path, file: &str| std::fs::read(bundle.join(file)).unwrap();
    assert!(
        read(&first, "head.safetensors") == read(&second, "head.safetensors"),
        "the same seed gives byte-identical head weights"
    );
    assert_eq!(
        read(&first, "router.json"),
        read(&second, "router.json"),
        "and the same training record"
    );
    // The model cards differ only in the --out of the command they record.
    let card = |bundle: &Path| {
        std::fs::read_to_string(bundle.join("README.md"))
            .unwrap()
            .replace(&arg(bundle), "OUT")
    };
    assert!(
        card(&first) == card(&second),
        "the same model card but for --out"
    );
    assert!(
        read(&first, "head.safetensors") != read(&other, "head.safetensors"),
        "another seed gives other weights"
    );
    assert_eq!(read_json(&other.join("router.json"))["training"]["seed"], 7);
}

/// Without `--catalog`, data without costs trains (every model counts as free, and `train` says
/// so), the bundle's version is today's date, and the bundle routes with a catalog given to `route`.
#[test]
fn routerdc_slice_trains_without_a_catalog_and_says_how_it_ranks() {
    prepare();
    let files =
        ["gsm8k-train.json", "mmlu_train.json"].map(|f| data_file(&format!("routerdc/{f}")));
    let dir = TempDir::new().unwrap();
    let data = write_jsonl(
        dir.path(),
        "routerdc.jsonl",
        &import_slice("routerdc", &files, 30),
    );
    let bundle = dir.path().join("routerdc");
    let run = train(&data, &bundle, &[]);
    assert_mentions(
        &run.stderr,
        &[
            "no --catalog",
            "no costs in the data",
            "every model counts as free",
            "route it with --catalog",
        ],
    );
    assert!(!bundle.join("catalog.toml").exists());
    let config = read_json(&bundle.join("router.json"));
    assert_eq!(config["version"], router_training::train::today());
    let report = config["training"]["details"]["validation"].clone();
    assert_eq!(
        report["modes"]["cost"], report["modes"]["quality"],
        "free models: every mode is Quality mode"
    );
    let run = ok(&[
        "route",
        "--model",
        &arg(&bundle),
        "--catalog",
        "models/routerdc/catalog.toml",
        "What is 12 times 7?",
    ]);
    assert!(!run.stdout.is_empty());

    // LLMRouter with --prices and no --catalog ranks by the prices, and says so.
    let prices = data_file("llmrouter/default_llm.json");
    let data = write_jsonl(
        dir.path(),
        "llmrouter.jsonl",
        &import_slice("llmrouter", &[data_file("llmrouter/train.json")], 4),
    );
    let run = train(
        &data,
        &dir.path().join("llmrouter"),
        &["--prices", &arg(&prices), "--version", "2025-01-02"],
    );
    assert_mentions(
        &run.stderr,
        &["no --catalog", "estimated from", "default_llm.json"],
    );
    assert_eq!(
        read_json(&dir.path().join("llmrouter/router.json"))["version"],
        "2025-01-02"
    );
}

/// RouterDC: six task files, no costs (the catalog prices the prompts), pass rates as soft labels.
#[test]
fn routerdc_slice_trains_and_evaluates() {
    prepare();
    let files = [
        "arc_challenge_train.json",
        "arc_easy_train.json",
        "cmmlu_train.json",
        "gsm8k-train.json",
        "humaneval_train.json",
        "mmlu_train.json",
    ]
    .map(|f| data_file(&format!("routerdc/{f}")));
    let slice = import_slice("routerdc", &files, 25);
    assert_eq!(slice.len(), 150);
    let dir = TempDir::new().unwrap();
    let data = write_jsonl(dir.path(), "routerdc.jsonl", &slice);
    let bundle = dir.path().join("routerdc");
    train(
        &data,
        &bundle,
        &["--catalog", "models/routerdc/catalog.toml"],
    );
    let config = read_json(&bundle.join("router.json"));
    let models: Vec<&str> = config["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(models.len(), 7);
    let report = eval_json(&bundle, &data, &["--split", "val"]);
    assert_report_shape(&report, &models, 24);
    ok(&["route", "--model", &arg(&bundle), "What is 12 times 7?"]);
}

/// LLMRouter: costs from the price list (`--prices`), 14 tasks, scores 0/1 or F1.
#[test]
fn llmrouter_slice_trains_and_evaluates_with_prices() {
    prepare();
    let prices = data_file("llmrouter/default_llm.json");
    let slice = import_slice("llmrouter", &[data_file("llmrouter/train.json")], 12);
    assert!((100..=200).contains(&slice.len()), "{}", slice.len());
    assert!(
        slice.iter().all(|l| l.contains("\"costs\":{}")),
        "without --prices the import has no costs"
    );
    let dir = TempDir::new().unwrap();
    let data = write_jsonl(dir.path(), "llmrouter.jsonl", &slice);
    let bundle = dir.path().join("llmrouter");
    train(
        &data,
        &bundle,
        &[
            "--catalog",
            "models/llmrouter/catalog.toml",
            "--prices",
            &arg(&prices),
        ],
    );
    let config = read_json(&bundle.join("router.json"));
    let models: Vec<&str> = config["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(models.len(), 9);
    let val_n = config["training"]["details"]["val_prompts"]
        .as_u64()
        .unwrap() as usize;
    let report = eval_json(
        &bundle,
        &data,
        &["--split", "val", "--prices", &arg(&prices)],
    );
    assert_report_shape(&report, &models, val_n);
    ok(&[
        "route",
        "--model",
        &arg(&bundle),
        "Name the capital of Peru.",
    ]);
}

/// The validation split is never seen by training: flipping every validation score leaves the
/// trained head byte-identical (early stopping uses a share of the training side), while the
/// validation report changes.
#[test]
fn training_never_sees_the_validation_split() {
    prepare();
    let dir = TempDir::new().unwrap();
    let slice = routerbench_slice();
    let records: Vec<Value> = slice
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let keys: Vec<(&str, &str)> = records
        .iter()
        .map(|r| (r["task"].as_str().unwrap(), r["prompt"].as_str().unwrap()))
        .collect();
    let in_validation =
        router_training::data::validation_mask(keys.iter().copied(), 0.15, 42).unwrap();
    assert_eq!(
        in_validation.iter().filter(|&&v| v).count(),
        24,
        "8 of each task's 50"
    );
    let flipped: Vec<String> = records
        .iter()
        .zip(&in_validation)
        .map(|(record, &validation)| {
            let mut record = record.clone();
            if validation {
                for score in record["scores"].as_object_mut().unwrap().values_mut() {
                    *score = Value::from(1.0 - score.as_f64().unwrap());
                }
            }
            record.to_string()
        })
        .collect();
    let original = write_jsonl(dir.path(), "original.jsonl", slice);
    let flipped = write_jsonl(dir.path(), "flipped.jsonl", &flipped);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    train(&original, &a, &["--catalog", CATALOG, "--name", "same"]);
    train(&flipped, &b, &["--catalog", CATALOG, "--name", "same"]);
    let read = |bundle: &Path, file: &str| std::fs::read(bundle.join(file)).unwrap();
    assert!(
        read(&a, "head.safetensors") == read(&b, "head.safetensors"),
        "the head does not depend on validation scores"
    );
    let details =
        |bundle: &Path| read_json(&bundle.join("router.json"))["training"]["details"].clone();
    let (details_a, details_b) = (details(&a), details(&b));
    assert_eq!(details_a["epochs"], details_b["epochs"]);
    assert_eq!(details_a["train_prompts"], 126);
    assert_eq!(
        details_a["early_stop_prompts"], 18,
        "15 % of each task's 42 training prompts"
    );
    assert_ne!(
        details_a["validation"], details_b["validation"],
        "the validation report reads the flipped scores"
    );
}

/// `cv`: every prompt evaluated once, out of fold, in `eval --json`'s shape; deterministic for a
/// seed; the plot is written.
#[test]
fn cross_validation_reports_every_prompt_out_of_fold() {
    prepare();
    let dir = TempDir::new().unwrap();
    let data = write_jsonl(dir.path(), "slice.jsonl", routerbench_slice());
    let plot = dir.path().join("cv.svg");
    let cv = |seed: &str, plot: Option<&Path>| {
        let mut args: Vec<String> = vec![
            "cv".into(),
            "--json".into(),
            "--folds".into(),
            "3".into(),
            "--data".into(),
            arg(&data),
        ];
        args.extend(SMALL.iter().map(|s| s.to_string()));
        args.extend([
            "--catalog".into(),
            CATALOG.into(),
            "--seed".into(),
            seed.into(),
        ]);
        if let Some(plot) = plot {
            args.extend(["--plot".into(), arg(plot)]);
        }
        let run = ok(&args);
        assert_eq!(
            run.stdout.lines().count(),
            1,
            "cv --json prints exactly one line: {:?}",
            run.stdout
        );
        assert_mentions(&run.stderr, &["3 folds"]);
        run.json()
    };
    let report = cv("42", Some(&plot));
    let models: Vec<String> = report["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_owned())
        .collect();
    let models: Vec<&str> = models.iter().map(String::as_str).collect();
    assert_eq!(models.len(), 11);
    assert_report_shape(&report, &models, 150);
    assert!(
        std::fs::read_to_string(&plot).unwrap().contains("<svg"),
        "the plot is an SVG"
    );

    // --predictions: one line per prompt with its fold and out-of-fold predictions, which are what
    // the report was computed from: quality mode takes each prompt's best predicted model.
    let predictions = dir.path().join("oof.jsonl");
    let mut args: Vec<String> = vec![
        "cv".into(),
        "--folds".into(),
        "3".into(),
        "--data".into(),
        arg(&data),
        "--predictions".into(),
        arg(&predictions),
    ];
    args.extend(SMALL.iter().map(|s| s.to_string()));
    args.extend(["--catalog".into(), CATALOG.into()]);
    ok(&args);
    let lines: Vec<Value> = std::fs::read_to_string(&predictions)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 150);
    let mut per_fold = [0; 3];
    let mut quality_mode = 0.0;
    for line in &lines {
        per_fold[line["fold"].as_u64().unwrap() as usize] += 1;
        let predicted = line["predicted"].as_object().unwrap();
        assert_eq!(predicted.len(), 11);
        assert!(predicted
            .values()
            .all(|p| (0.0..=1.0).contains(&p.as_f64().unwrap())));
        let best = predicted
            .iter()
            .max_by(|a, b| a.1.as_f64().unwrap().total_cmp(&b.1.as_f64().unwrap()))
            .unwrap()
            .0;
        quality_mode += line["scores"][best].as_f64().unwrap() / 150.0;
    }
    assert_eq!(
        per_fold,
        [50, 50, 50],
        "150 prompts dealt round-robin, task after task"
    );
    assert!(
        (quality_mode - number(&report["modes"]["quality"]["quality"], "quality mode")).abs()
            < 1e-9
    );
    let reimported = ok(&[
        "eval",
        "--json",
        "--model",
        &arg(&routerbench_bundle()),
        "--data",
        &arg(&predictions),
        "--format",
        "jsonl",
    ])
    .json();
    assert_eq!(reimported["n"], 150, "the file is a canonical dataset too");
    assert_eq!(
        cv("42", None),
        report,
        "the same seed gives the same report"
    );
    assert_ne!(
        cv("7", None)["aiq"],
        report["aiq"],
        "another seed deals other folds"
    );
    fails(&["cv", "--folds", "1", "--data", &arg(&data)]);
    let run = fails(&["cv", "--early-stop-fraction", "1.5", "--data", &arg(&data)]);
    assert_mentions(&run.stderr, &["held-out fraction 1.5 is not in [0, 1]"]);
}

/// ZeroEval: the import keeps each model's output_tokens, `train` fits an output-length head on
/// them (length.safetensors, `output_length` in router.json, its measurement in the training
/// record and the model card) without changing the quality head, `route` charges the predicted
/// lengths, and `--no-length-head` ships none.
#[test]
fn zeroeval_slice_trains_an_output_length_head() {
    prepare();
    let slice = import_slice("jsonl", &[data_file("zeroeval/train.jsonl")], 40);
    assert!(
        slice.iter().all(|l| l.contains("\"output_tokens\":{")),
        "the import keeps output_tokens"
    );
    let dir = TempDir::new().unwrap();
    let data = write_jsonl(dir.path(), "zeroeval.jsonl", &slice);
    let (with, without) = (dir.path().join("with"), dir.path().join("without"));
    train(&data, &with, &["--catalog", "models/zeroeval/catalog.toml"]);
    train(
        &data,
        &without,
        &[
            "--catalog",
            "models/zeroeval/catalog.toml",
            "--no-length-head",
        ],
    );

    let config = read_json(&with.join("router.json"));
    assert_eq!(config["output_length"], serde_json::json!({ "hidden": [] }));
    assert!(with.join("length.safetensors").is_file());
    let report = &config["training"]["details"]["output_length"]["validation"];
    for key in [
        "head_log_mae_mean",
        "mean_log_mae_mean",
        "task_mean_log_mae_mean",
    ] {
        let error = number(&report[key], key);
        assert!(error.is_finite() && error > 0.0, "{key}: {report}");
    }
    assert_eq!(
        report["head_log_mae"].as_array().map(Vec::len),
        Some(11),
        "{report}"
    );
    let card = std::fs::read_to_string(with.join("README.md")).unwrap();
    assert_mentions(
        &card,
        &["## Output length", "length.safetensors", "per-model mean"],
    );
    let decision = ok(&[
        "route",
        "--json",
        "--model",
        &arg(&with),
        "What is 17 times 23?",
    ])
    .json();
    assert_eq!(
        decision["predicted_output_tokens"]
            .as_object()
            .map(|m| m.len()),
        Some(11),
        "{decision}"
    );

    assert!(read_json(&without.join("router.json"))
        .get("output_length")
        .is_none());
    assert!(!without.join("length.safetensors").exists());
    assert_eq!(
        std::fs::read(with.join("head.safetensors")).unwrap(),
        std::fs::read(without.join("head.safetensors")).unwrap()
    );
    let decision = ok(&[
        "route",
        "--json",
        "--model",
        &arg(&without),
        "What is 17 times 23?",
    ])
    .json();
    assert!(
        decision.get("predicted_output_tokens").is_none(),
        "{decision}"
    );
}
