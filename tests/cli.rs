//! The `model-router` command line end to end: `route` (table, `--json`, `--jsonl`), `embed`,
//! `--model` / `--catalog` errors and `data import`, on the shipped default bundle
//! (models/zeroeval). No test here needs all-MiniLM-L6-v2: the bundle ships its static table.

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{
    arg, assert_mentions, command, data_file, fails, import_slice, ok, prepare, repo_root,
    run_with_stdin, write_jsonl,
};
use serde_json::Value;
use tempfile::TempDir;

const PROMPT: &str = "Write a Python function that returns the n-th Fibonacci number.";

/// The bundle `route` uses without `--model`.
fn routerbench_bundle() -> std::path::PathBuf {
    repo_root().join("models").join("zeroeval")
}

/// The shipped bundle's models (the head's columns), from its router.json.
fn bundle_models() -> Vec<String> {
    let text = std::fs::read_to_string(routerbench_bundle().join("router.json"))
        .expect("read the default bundle's router.json");
    let config: Value = serde_json::from_str(&text).expect("router.json is JSON");
    config["models"]
        .as_array()
        .expect("models")
        .iter()
        .map(|m| m.as_str().expect("a name").to_owned())
        .collect()
}

/// (name, context_window) of each model of the shipped catalog (a minimal reading of its TOML).
fn catalog_windows() -> Vec<(String, u64)> {
    let text = std::fs::read_to_string(routerbench_bundle().join("catalog.toml"))
        .expect("read the default bundle's catalog.toml");
    let mut windows = Vec::new();
    let mut name = None;
    for line in text.lines().map(str::trim) {
        if let Some(value) = line.strip_prefix("name = ") {
            name = Some(value.trim_matches('"').to_owned());
        } else if let Some(value) = line.strip_prefix("context_window = ") {
            windows.push((
                name.take().expect("name before context_window"),
                value.parse().expect("a number"),
            ));
        }
    }
    windows
}

fn route_json(extra: &[&str]) -> Value {
    let mut args = vec!["route", "--json"];
    args.extend_from_slice(extra);
    ok(&args).json()
}

fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .expect("an object")
        .keys()
        .cloned()
        .collect()
}

#[test]
fn route_table_names_the_chosen_model() {
    let chosen = route_json(&[PROMPT])["model"]
        .as_str()
        .expect("model")
        .to_owned();
    let table = ok(&["route", PROMPT]).stdout;
    let first = table.lines().next().expect("a first line");
    assert!(first.starts_with(&format!("route: {chosen} ")), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&format!("* {chosen} ")) && l.contains("chosen")),
        "{table}"
    );
    // One row per bundle column, plus the summary and the header; no blank line at the end.
    assert_eq!(table.lines().count(), bundle_models().len() + 2, "{table}");
    assert!(
        table.ends_with('\n') && !table.ends_with("\n\n"),
        "{table:?}"
    );
}

#[test]
fn route_json_has_the_decision_and_its_explanation() {
    let decision = route_json(&[PROMPT]);
    let models = bundle_models();
    for key in [
        "model",
        "mode",
        "scores",
        "eligible",
        "excluded",
        "estimated_cost",
    ] {
        assert!(
            decision.get(key).is_some(),
            "--json lacks {key:?}: {decision}"
        );
    }
    assert_eq!(decision["mode"], "balanced", "balanced is the default mode");
    let scores = decision["scores"].as_object().expect("scores");
    assert_eq!(
        scores.len(),
        models.len(),
        "one score per bundle model: {decision}"
    );
    for model in &models {
        let q = scores[model]
            .as_f64()
            .unwrap_or_else(|| panic!("a finite score for {model}"));
        assert!((0.0..=1.0).contains(&q), "{model}: {q}");
    }
    let chosen = decision["model"].as_str().expect("model");
    let eligible = decision["eligible"].as_object().expect("eligible");
    assert!(
        eligible.contains_key(chosen),
        "the chosen model is eligible: {decision}"
    );
    // Eligible and excluded partition the bundle's models.
    let mut all: Vec<String> = keys(&decision["eligible"])
        .union(&keys(&decision["excluded"]))
        .cloned()
        .collect();
    all.sort();
    let mut sorted = models.clone();
    sorted.sort();
    assert_eq!(all, sorted);
    let cost = decision["estimated_cost"].as_f64().expect("estimated_cost");
    assert!(cost > 0.0 && cost.is_finite(), "{cost}");
    assert_eq!(eligible[chosen]["estimated_cost"].as_f64(), Some(cost));
}

/// The shipped bundle has an output-length head: `--json` lists each model's predicted output
/// tokens, every eligible model is charged its own (so they differ between models), and the table
/// shows them in its `out tok.` column.
#[test]
fn route_json_shows_the_predicted_output_lengths() {
    let decision = route_json(&[PROMPT]);
    let lengths = decision["predicted_output_tokens"]
        .as_object()
        .expect("predicted_output_tokens");
    assert_eq!(
        keys(&decision["predicted_output_tokens"]),
        bundle_models().into_iter().collect()
    );
    for (model, eligible) in decision["eligible"].as_object().expect("eligible") {
        let tokens = lengths[model].as_u64().expect("a whole number of tokens");
        assert!((1..100_000).contains(&tokens), "{model}: {tokens}");
        assert_eq!(
            eligible["output_tokens"].as_u64(),
            Some(tokens),
            "{model} is charged its predicted length"
        );
    }
    let distinct: BTreeSet<u64> = lengths.values().filter_map(Value::as_u64).collect();
    assert!(
        distinct.len() > 1,
        "the models' predicted lengths differ: {decision}"
    );
    // --max-tokens caps what is charged, not what is predicted.
    let capped = route_json(&["--max-tokens", "50", PROMPT]);
    for eligible in capped["eligible"].as_object().expect("eligible").values() {
        assert!(
            eligible["output_tokens"].as_u64().expect("output_tokens") <= 50,
            "{capped}"
        );
    }
    let table = ok(&["route", PROMPT]).stdout;
    assert!(
        table
            .lines()
            .next()
            .is_some_and(|l| l.contains("output tokens predicted per model")),
        "{table}"
    );
    let chosen = decision["model"].as_str().expect("model");
    let row = table
        .lines()
        .find(|l| l.starts_with(&format!("* {chosen} ")))
        .expect("the chosen row");
    let charged = lengths[chosen].to_string();
    assert!(row.split_whitespace().any(|cell| cell == charged), "{row}");
}

/// Without its length head (the manifest's `output_length` removed), the same bundle charges
/// the catalog's expected_output_tokens.
#[test]
fn a_bundle_without_a_length_head_charges_the_catalog_lengths() {
    let bundle = bundle_with_catalog(Some(
        &std::fs::read_to_string(routerbench_bundle().join("catalog.toml")).unwrap(),
    ));
    let manifest = bundle.path().join("router.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    config.as_object_mut().unwrap().remove("output_length");
    std::fs::remove_file(&manifest).unwrap();
    std::fs::write(&manifest, config.to_string()).unwrap();
    let decision = ok(&["route", "--json", "--model", &arg(bundle.path()), PROMPT]).json();
    assert!(
        decision.get("predicted_output_tokens").is_none(),
        "{decision}"
    );
    let catalog = std::fs::read_to_string(routerbench_bundle().join("catalog.toml")).unwrap();
    let chosen = decision["model"].as_str().unwrap();
    let expected = catalog
        .split("[[models]]")
        .find(|entry| entry.contains(&format!("name = \"{chosen}\"")))
        .and_then(|entry| {
            entry
                .lines()
                .find_map(|l| l.trim().strip_prefix("expected_output_tokens = "))
        })
        .expect("the chosen model's expected_output_tokens");
    assert_eq!(
        decision["eligible"][chosen]["output_tokens"].as_u64(),
        expected.parse().ok(),
        "{decision}"
    );
}

#[test]
fn quality_mode_picks_the_best_eligible_model() {
    for prompt in [
        PROMPT,
        "Which is heavier, a kilogram of feathers or a kilogram of steel?",
        "hi",
    ] {
        let decision = route_json(&["--mode", "quality", prompt]);
        assert_eq!(decision["mode"], "quality");
        let eligible = decision["eligible"].as_object().expect("eligible");
        let best = eligible
            .values()
            .map(|e| e["predicted_quality"].as_f64().expect("quality"))
            .fold(f64::MIN, f64::max);
        let chosen = decision["model"].as_str().expect("model");
        assert_eq!(
            eligible[chosen]["predicted_quality"].as_f64(),
            Some(best),
            "{prompt:?}: {decision}"
        );
        assert_eq!(decision["scores"][chosen].as_f64(), Some(best));
    }
}

#[test]
fn subset_restricts_the_choice() {
    let subset = ["Meta-Llama-3-8B-Instruct", "gpt-4o-mini-2024-07-18"];
    let decision = route_json(&["--subset", &subset.join(","), PROMPT]);
    let chosen = decision["model"].as_str().expect("model");
    assert!(subset.contains(&chosen), "{chosen} is outside the subset");
    assert_eq!(
        keys(&decision["eligible"]),
        subset.iter().map(|s| s.to_string()).collect()
    );
    let excluded = decision["excluded"].as_object().expect("excluded");
    assert_eq!(excluded.len(), bundle_models().len() - subset.len());
    for (model, why) in excluded {
        assert_eq!(why["reason"], "not_in_request_subset", "{model}: {why}");
    }
    // The scores still cover every model: the explanation shows what the subset left out.
    assert_eq!(
        decision["scores"].as_object().expect("scores").len(),
        bundle_models().len()
    );
}

#[test]
fn unknown_subset_model_fails_with_a_clear_message() {
    let run = fails(&[
        "route",
        "--subset",
        "gpt-4o-2024-08-06,no-such-model",
        PROMPT,
    ]);
    assert_mentions(&run.stderr, &["no-such-model", "does not predict"]);
    assert!(
        run.stdout.is_empty(),
        "no decision is printed: {}",
        run.stdout
    );
}

#[test]
fn prompt_from_stdin_routes_like_the_argument() {
    let from_argument = route_json(&[PROMPT]);
    let run = run_with_stdin(&["route", "--json"], Some(&format!("{PROMPT}\n")));
    assert!(run.success, "{}", run.stderr);
    assert_eq!(
        run.json(),
        from_argument,
        "the trailing newline of stdin is not part of the prompt"
    );
    let table = run_with_stdin(&["route"], Some(PROMPT));
    assert!(table.success, "{}", table.stderr);
    assert!(
        table.stdout.starts_with(&format!(
            "route: {} ",
            from_argument["model"].as_str().unwrap()
        )),
        "{}",
        table.stdout
    );
}

#[test]
fn max_tokens_beyond_a_context_window_excludes_the_model() {
    let windows = catalog_windows();
    let small: Vec<&(String, u64)> = windows.iter().filter(|(_, w)| *w == 8192).collect();
    assert!(
        !small.is_empty(),
        "the shipped catalog has 8192-token models"
    );
    let decision = route_json(&["--max-tokens", "9000", "--mode", "quality", PROMPT]);
    let excluded = decision["excluded"].as_object().expect("excluded");
    for (model, window) in &small {
        let why = excluded
            .get(model)
            .unwrap_or_else(|| panic!("{model} (window {window}) must be excluded: {decision}"));
        assert_eq!(why["reason"], "context_window", "{model}: {why}");
        assert_eq!(why["window"].as_u64(), Some(*window));
        assert!(why["needed"].as_u64().expect("needed") > 9000, "{why}");
    }
    for (model, window) in windows.iter().filter(|(_, w)| *w > 9100) {
        assert!(
            decision["eligible"].get(model).is_some(),
            "{model} (window {window}) stays eligible: {decision}"
        );
    }
    let chosen = decision["model"].as_str().expect("model");
    assert!(small.iter().all(|(m, _)| m != chosen));
    // The table says why.
    let table = ok(&["route", "--max-tokens", "9000", PROMPT]).stdout;
    assert!(
        table
            .lines()
            .any(|l| l.contains(&small[0].0) && l.contains("context window is 8192")),
        "{table}"
    );
}

/// Everyday prompts (the README's table): the modes keep their promise on them, Cost mode spending
/// well under what Quality mode spends, with easy questions going to models priced under USD 1 per
/// 1M output tokens.
#[test]
fn the_default_bundle_spends_less_in_cost_mode_on_everyday_prompts() {
    let prompts = [
        "What is the capital of France?",
        "Translate 'good morning' to Spanish.",
        "Write a haiku about autumn.",
        "Write a SQL query that returns the ten customers with the highest total order value.",
        "Prove that the square root of 2 is irrational.",
        "What is 15% of 80?",
        "Summarize the plot of Romeo and Juliet in two sentences.",
        "Write a Python function that reverses a linked list.",
        "Explain the difference between TCP and UDP.",
        "Give me three ideas for a birthday party for a 10-year-old.",
        "Fix the bug in this code: for i in range(10) print(i)",
        "What year did World War II end?",
        "Write a polite email declining a meeting invitation.",
        "A train travels 120 km in 1.5 hours. What is its average speed?",
        "Solve for x: 3x + 7 = 22.",
        "What does this Python code print? x = [1, 2, 3]; print(x[::-1])",
    ];
    let input: String = prompts
        .iter()
        .map(|p| serde_json::to_string(p).unwrap() + "\n")
        .collect();
    let decide = |mode: &str| -> Vec<Value> {
        let run = run_with_stdin(&["route", "--jsonl", "--mode", mode], Some(&input));
        assert!(run.success, "{}", run.stderr);
        run.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let total = |decisions: &[Value]| {
        decisions
            .iter()
            .map(|d| d["estimated_cost"].as_f64().unwrap())
            .sum::<f64>()
    };
    let (quality, cost) = (decide("quality"), decide("cost"));
    assert!(
        total(&cost) < 0.7 * total(&quality),
        "cost mode {} vs quality mode {}",
        total(&cost),
        total(&quality)
    );
    let cheap = [
        "gpt-4o-mini-2024-07-18",
        "Meta-Llama-3-8B-Instruct",
        "Meta-Llama-3.1-8B-Instruct",
        "Meta-Llama-3-70B-Instruct",
        "Meta-Llama-3.1-70B-Instruct",
        "claude-3-haiku-20240307",
    ];
    let to_cheap = cost
        .iter()
        .filter(|d| cheap.contains(&d["model"].as_str().unwrap()))
        .count();
    assert!(
        to_cheap >= 4,
        "{to_cheap} of 16 to a cheap model in cost mode"
    );
    assert!(
        cheap.contains(&cost[0]["model"].as_str().unwrap()),
        "the capital of France: {}",
        cost[0]
    );
}

/// `models/mixed` (ZeroEval and LLMRouter trained together with a masked loss) predicts exactly the
/// default's models: LLMRouter's columns were auxiliary outputs during training, cut from the head,
/// and its model card says so; it routes with every model eligible.
#[test]
fn the_mixed_bundle_predicts_the_default_bundles_models_only() {
    let mixed = repo_root().join("models").join("mixed");
    let text =
        std::fs::read_to_string(mixed.join("router.json")).expect("models/mixed/router.json");
    let config: Value = serde_json::from_str(&text).expect("router.json is JSON");
    let models: Vec<&str> = config["models"]
        .as_array()
        .expect("models")
        .iter()
        .map(|m| m.as_str().expect("a name"))
        .collect();
    assert_eq!(models, bundle_models());
    let card = std::fs::read_to_string(mixed.join("README.md")).expect("the model card");
    assert!(
        card.contains("--families")
            && card.contains("Auxiliary outputs")
            && card.contains("qwen2.5-7b-instruct"),
        "{card}"
    );
    let mixed = mixed.to_string_lossy().into_owned();
    let decision = route_json(&["--model", &mixed, "--mode", "cost", PROMPT]);
    assert!(
        models.contains(&decision["model"].as_str().expect("model")),
        "{decision}"
    );
    assert_eq!(
        keys(&decision["eligible"]).len(),
        models.len(),
        "{decision}"
    );
}

/// `cv --families` on a ZeroEval slice and an LLMRouter slice (one model joined by `--rename`):
/// one report per family, each on its own models and prompts; `train --families` with ZeroEval's
/// catalog ships ZeroEval's columns only; the task gate refuses several families.
#[test]
fn several_families_are_cross_validated_apart_and_the_catalogs_models_ship() {
    prepare();
    let dir = TempDir::new().unwrap();
    let zeroeval = import_slice("jsonl", &[data_file("zeroeval/train.jsonl")], 12);
    let llmrouter = import_slice("llmrouter", &[data_file("llmrouter/train.json")], 3);
    let zeroeval = arg(&write_jsonl(dir.path(), "zeroeval.jsonl", &zeroeval));
    let llmrouter = arg(&write_jsonl(dir.path(), "llmrouter.jsonl", &llmrouter));
    let prices = arg(&data_file("llmrouter/default_llm.json"));
    let catalog = arg(&repo_root().join("models/zeroeval/catalog.toml"));
    let families = [
        "--families",
        "--data",
        &zeroeval,
        &llmrouter,
        "--prices",
        &prices,
        "--rename",
        "llama-3.1-8b-instruct=Meta-Llama-3.1-8B-Instruct",
        "--catalog",
        &catalog,
        "--hidden",
        "32",
        "--epochs",
        "20",
    ];
    let cv = ok(&[&["cv", "--json", "--folds", "3"], &families[..]].concat()).json();
    let reports = cv["families"].as_array().expect("one report per family");
    assert_eq!(reports.len(), 2, "{cv}");
    let names = |value: &Value| -> Vec<String> {
        let names = value.as_array().expect("names").iter();
        names
            .map(|m| m.as_str().expect("a name").to_owned())
            .collect()
    };
    let default_models = bundle_models();
    assert_eq!(names(&reports[0]["models"]), default_models);
    assert_eq!(reports[0]["records"], 36);
    assert_eq!(reports[0]["ranked_by_catalog"], true);
    let llmrouter_models = names(&reports[1]["models"]);
    assert_eq!(llmrouter_models.len(), 9);
    assert!(llmrouter_models.contains(&"Meta-Llama-3.1-8B-Instruct".to_owned()));
    assert_eq!(reports[1]["records"], 42);
    assert_eq!(reports[1]["ranked_by_catalog"], false);
    for report in reports {
        assert_eq!(report["report"]["models"], report["models"], "{report}");
        assert_eq!(report["report"]["n"], report["records"], "{report}");
    }
    let out = dir.path().join("mixed");
    ok(&[&["train", "--out", &arg(&out)], &families[..]].concat());
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("router.json")).unwrap()).unwrap();
    assert_eq!(names(&config["models"]), default_models);
    let refused = fails(&[&["cv", "--task-gate"], &families[..]].concat());
    assert_mentions(&refused.stderr, &["task gate needs one family"]);
}

#[test]
fn jsonl_routes_each_line_in_order_and_reports_bad_lines() {
    let prompts = [
        PROMPT,
        "What is the capital of Australia?",
        "Résumé: écrivez une fonction en Rust.",
    ];
    let input = [
        serde_json::to_string(prompts[0]).unwrap(),
        serde_json::json!({ "prompt": prompts[1], "metadata": { "user": "x" } }).to_string(),
        "this is not JSON".to_owned(),
        serde_json::json!({ "text": "no prompt field" }).to_string(),
        serde_json::json!(42).to_string(),
        serde_json::to_string(prompts[2]).unwrap(),
    ]
    .join("\n");
    let run = run_with_stdin(
        &["route", "--jsonl", "--mode", "cost"],
        Some(&format!("{input}\n")),
    );
    assert!(
        run.success,
        "a bad line does not stop the run: {}",
        run.stderr
    );
    let lines: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("each output line is JSON"))
        .collect();
    assert_eq!(
        lines.len(),
        6,
        "one output line per input line: {}",
        run.stdout
    );
    for bad in [2, 3, 4] {
        let error = lines[bad]["error"]
            .as_str()
            .unwrap_or_else(|| panic!("line {} is an error object: {}", bad + 1, lines[bad]));
        assert!(
            error.contains(&format!("line {}", bad + 1)),
            "the error names its line: {error}"
        );
        assert!(lines[bad].get("model").is_none());
    }
    assert_mentions(&run.stderr, &["3 line(s)"]);
    // The good lines, in order, decide as a single `--json` run of the same prompt. A prompt
    // scores the same alone and in a batch up to float rounding (router-core's contract: 1e-5).
    for (line, prompt) in [0, 1, 5].into_iter().zip(prompts) {
        let single = route_json(&["--mode", "cost", prompt]);
        assert_same_decision(&lines[line], &single, prompt);
    }
}

/// Two decisions agree: the same choice, mode, band, eligible and excluded models, cost and input
/// tokens, and every score within 1e-5.
fn assert_same_decision(batch: &Value, single: &Value, prompt: &str) {
    for key in [
        "model",
        "mode",
        "band",
        "custom_band",
        "excluded",
        "estimated_cost",
        "input_tokens",
    ] {
        assert_eq!(
            batch[key], single[key],
            "{prompt:?}: {key} differs in a batch and alone"
        );
    }
    assert_eq!(
        keys(&batch["eligible"]),
        keys(&single["eligible"]),
        "{prompt:?}"
    );
    let (a, b) = (
        batch["scores"].as_object().unwrap(),
        single["scores"].as_object().unwrap(),
    );
    assert_eq!(a.len(), b.len());
    for (model, score) in a {
        let drift = (score.as_f64().unwrap() - b[model].as_f64().unwrap()).abs();
        assert!(
            drift < 1e-5,
            "{prompt:?}: {model} scores {score} in a batch, {} alone",
            b[model]
        );
    }
}

#[test]
fn embed_json_is_a_unit_vector_of_the_bundle_dimension() {
    let text = std::fs::read_to_string(routerbench_bundle().join("router.json")).unwrap();
    let dim = serde_json::from_str::<Value>(&text).unwrap()["encoder"]["dim"]
        .as_u64()
        .expect("encoder.dim") as usize;
    let value = ok(&["embed", "--json", PROMPT]).json();
    assert_eq!(keys(&value), BTreeSet::from(["embedding".to_owned()]));
    let embedding: Vec<f64> = value["embedding"]
        .as_array()
        .expect("an array")
        .iter()
        .map(|v| v.as_f64().expect("a number"))
        .collect();
    assert_eq!(embedding.len(), dim);
    let norm = embedding.iter().map(|v| v * v).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    // stdin gives the same vector.
    let from_stdin = run_with_stdin(&["embed", "--json"], Some(PROMPT));
    assert!(from_stdin.success, "{}", from_stdin.stderr);
    assert_eq!(from_stdin.json(), value);
}

#[test]
fn model_dir_without_a_bundle_fails_naming_the_file() {
    let empty = TempDir::new().unwrap();
    let dir = arg(empty.path());
    for command in [
        &["route", "--model", &dir, PROMPT][..],
        &["embed", "--model", &dir, PROMPT],
        &["eval", "--model", &dir, "--data", "x.jsonl"],
    ] {
        let run = fails(command);
        assert_mentions(&run.stderr, &["router.json"]);
        assert!(
            run.stderr.contains(&dir),
            "the message names the directory: {}",
            run.stderr
        );
        assert_eq!(
            run.stderr.matches("os error 2").count(),
            1,
            "the cause is said once: {}",
            run.stderr
        );
    }
}

/// A bundle directory with the shipped bundle's files (linked, not copied) and `catalog` as its
/// catalog.toml (none when None).
fn bundle_with_catalog(catalog: Option<&str>) -> TempDir {
    let dir = TempDir::new().unwrap();
    for file in [
        "router.json",
        "tokenizer.json",
        "encoder.safetensors",
        "head.safetensors",
        "length.safetensors",
        "gate.safetensors",
    ] {
        let from = routerbench_bundle().join(file);
        if std::os::unix::fs::symlink(&from, dir.path().join(file)).is_err() {
            std::fs::copy(&from, dir.path().join(file)).unwrap();
        }
    }
    if let Some(text) = catalog {
        std::fs::write(dir.path().join("catalog.toml"), text).unwrap();
    }
    dir
}

#[test]
fn broken_catalog_path_fails_naming_the_path() {
    let missing = Path::new("/nonexistent/model-router/catalog.toml");
    let run = fails(&["route", "--catalog", &arg(missing), PROMPT]);
    assert_mentions(&run.stderr, &[&arg(missing)]);
    assert_eq!(
        run.stderr.matches("os error 2").count(),
        1,
        "the cause is said once: {}",
        run.stderr
    );

    // A bundle without its catalog.toml.
    let bundle = bundle_with_catalog(None);
    let run = fails(&["route", "--model", &arg(bundle.path()), PROMPT]);
    assert_mentions(&run.stderr, &[&arg(&bundle.path().join("catalog.toml"))]);

    // A bundle whose catalog.toml is not a catalog.
    let bundle = bundle_with_catalog(Some(
        "[[models]]\nname = \"gpt-4o-2024-08-06\"\ninput_price = \"cheap\"\n",
    ));
    let run = fails(&["route", "--model", &arg(bundle.path()), PROMPT]);
    assert_mentions(&run.stderr, &[&arg(&bundle.path().join("catalog.toml"))]);

    // The same bundle routes with a valid catalog given explicitly.
    let catalog = routerbench_bundle().join("catalog.toml");
    let decision = ok(&[
        "route",
        "--json",
        "--model",
        &arg(bundle.path()),
        "--catalog",
        &arg(&catalog),
        PROMPT,
    ])
    .json();
    assert_eq!(decision, route_json(&[PROMPT]));
}

use common::ROUTERBENCH_MODELS as MODELS;

/// The RouterBench CSV layout: an unnamed index, sample_id, prompt, eval_name, a score column per
/// model, `<model>|model_response`, `<model>|total_cost`, oracle_model_to_route_to (the header of
/// ../shared/data/routerbench/*_train.csv, checked by `routerbench_header_matches_the_data`).
fn routerbench_header() -> Vec<String> {
    let mut header: Vec<String> = ["", "sample_id", "prompt", "eval_name"]
        .map(String::from)
        .to_vec();
    header.extend(MODELS.iter().map(|m| m.to_string()));
    header.extend(MODELS.iter().map(|m| format!("{m}|model_response")));
    header.extend(MODELS.iter().map(|m| format!("{m}|total_cost")));
    header.push("oracle_model_to_route_to".into());
    header
}

fn csv_field(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}

/// One CSV row: `scores[i]` for MODELS[i] ("" for an empty score), a response with a comma, a
/// quote and a newline, and a cost per model.
fn routerbench_row(index: usize, prompt: &str, task: &str, scores: &[&str; 11]) -> String {
    let mut fields = vec![
        index.to_string(),
        format!("{task}.dev.{index}"),
        csv_field(&format!("['{prompt}']")),
        task.to_owned(),
    ];
    fields.extend(scores.iter().map(|s| s.to_string()));
    fields.extend(
        MODELS
            .iter()
            .map(|m| csv_field(&format!("[\"{m} says: yes,\nreally\"]"))),
    );
    fields.extend((0..MODELS.len()).map(|i| format!("{:e}", 1e-5 * (i + 1) as f64)));
    fields.push("gpt-4-1106-preview".into());
    fields.join(",")
}

#[test]
fn data_import_writes_canonical_jsonl_and_reports_skipped_rows() {
    let dir = TempDir::new().unwrap();
    let csv = dir.path().join("sample_train.csv");
    let ones = ["1.0"; 11];
    let mut empty = ["0.0"; 11];
    empty[4] = "";
    let rows = [
        routerbench_header()
            .iter()
            .map(|h| csv_field(h))
            .collect::<Vec<_>>()
            .join(","),
        routerbench_row(0, "Write a function to add two numbers.", "mbpp", &ones),
        routerbench_row(
            1,
            "Which word fits: the trophy does not fit in the suitcase because it is too big.",
            "winogrande",
            &[
                "0.0", "1.0", "1.0", "0.0", "1.0", "1.0", "0.0", "0.0", "1.0", "0.0", "1.0",
            ],
        ),
        routerbench_row(2, "An empty score in one column.", "arc-challenge", &empty),
        routerbench_row(3, "Which gas do plants absorb?", "arc-challenge", &ones),
    ];
    std::fs::write(&csv, rows.join("\n") + "\n").unwrap();
    let out = dir.path().join("out.jsonl");
    let run = ok(&[
        "data",
        "import",
        "--format",
        "routerbench",
        "--out",
        &arg(&out),
        &arg(&csv),
    ]);
    assert_mentions(
        &run.stderr,
        &["skipped 1", "empty score", "wrote 3 records"],
    );
    let text = std::fs::read_to_string(&out).expect("the output file");
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(records.len(), 3);
    assert_eq!(
        records[0]["prompt"], "Write a function to add two numbers.",
        "the Python list around the prompt is removed"
    );
    assert_eq!(
        records
            .iter()
            .map(|r| r["task"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["mbpp", "winogrande", "arc-challenge"]
    );
    for record in &records {
        assert_eq!(
            keys(record),
            ["costs", "prompt", "scores", "task"]
                .map(String::from)
                .into()
        );
        assert_eq!(keys(&record["scores"]), MODELS.map(String::from).into());
        assert_eq!(keys(&record["costs"]), MODELS.map(String::from).into());
    }
    assert_eq!(records[1]["scores"]["claude-v2"], 0.0);
    assert_eq!(records[1]["scores"]["claude-v1"], 1.0);
    assert!((records[0]["costs"]["claude-instant-v1"].as_f64().unwrap() - 2e-5).abs() < 1e-12);

    // The canonical JSONL reads back: importing it again keeps every record.
    let again = dir.path().join("again.jsonl");
    let run = ok(&[
        "data",
        "import",
        "--format",
        "jsonl",
        "--out",
        &arg(&again),
        &arg(&out),
    ]);
    assert!(!run.stderr.contains("skipped"), "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(&again).unwrap(), text);

    // A missing input file is an error naming it.
    let missing = dir.path().join("missing.csv");
    let run = fails(&[
        "data",
        "import",
        "--format",
        "routerbench",
        "--out",
        &arg(&again),
        &arg(&missing),
    ]);
    assert_mentions(&run.stderr, &[&arg(&missing)]);
}

#[test]
fn routerbench_header_matches_the_data() {
    let path = data_file("routerbench/mbpp_train.csv");
    let text = std::fs::read_to_string(&path).unwrap();
    let first = text.lines().next().expect("a header line");
    let mut header: Vec<&str> = first.split(',').collect();
    let mut expected = routerbench_header();
    // The data orders its response and cost columns differently; the importer finds columns by name.
    header.sort();
    expected.sort();
    assert_eq!(header, expected, "the header of {}", path.display());
}

#[test]
fn a_closed_stdout_ends_the_run_quietly() {
    use std::io::Write;
    use std::process::Stdio;
    let prompts: String = (0..300)
        .map(|i| format!("\"prompt number {i}\"\n"))
        .collect();
    for (args, stdin) in [
        (&["route", "--jsonl"][..], prompts.as_str()),
        (&["route", "--json", PROMPT], ""),
        (&["embed", PROMPT], ""),
    ] {
        let mut child = command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before the first line is written (as `| head -0` would).
        drop(child.stdout.take());
        let mut pipe = child.stdin.take().unwrap();
        let _ = pipe.write_all(stdin.as_bytes());
        drop(pipe);
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(
            output.status.success(),
            "{args:?}: a reader that stopped reading is not an error: {stderr}"
        );
    }
}
