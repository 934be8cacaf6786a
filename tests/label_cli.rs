//! `model-router label` against loopback mock backends: graded lines, costs from usage × prices,
//! bad input lines counted, a failing backend recorded as an error (not a 0), the budget stop, the
//! store source whose stored answers are not asked again, and refused settings changes.

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod label_common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{arg, command, Run};
use label_common::{read_lines, write_config, write_exact_grader, Candidate, MockBackend, Reply};
use router_store::{Metadata, NewCompletion, Store, StoreOptions};
use serde_json::{json, Value};
use tempfile::TempDir;

/// `small` is right only when the sum is below 10 (else off by one), `large` always; `broken`
/// always answers 500. Usage: 10 prompt tokens; `small` writes 2 tokens, `large` 20.
fn arithmetic_backend() -> MockBackend {
    MockBackend::start(
        Arc::new(|model: &str, prompt: &str| {
            let sum = sum_of(prompt);
            match model {
                "small" => Reply::Answer {
                    text: if sum < 10 {
                        sum.to_string()
                    } else {
                        (sum + 1).to_string()
                    },
                    prompt_tokens: 10,
                    completion_tokens: 2,
                },
                "large" => Reply::Answer {
                    text: sum.to_string(),
                    prompt_tokens: 10,
                    completion_tokens: 20,
                },
                _ => Reply::Status(500),
            }
        }),
        Duration::ZERO,
    )
}

/// The sum asked by "What is A + B?".
fn sum_of(prompt: &str) -> u64 {
    let numbers: Vec<u64> = prompt
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    numbers.iter().sum()
}

const SMALL: Candidate<'static> = Candidate {
    name: "small",
    input_price: 1.0,
    output_price: 2.0,
};
const LARGE: Candidate<'static> = Candidate {
    name: "large",
    input_price: 10.0,
    output_price: 30.0,
};
const BROKEN: Candidate<'static> = Candidate {
    name: "broken",
    input_price: 1.0,
    output_price: 1.0,
};
const SMALL_COST: f64 = (10.0 * 1.0 + 2.0 * 2.0) / 1e6;
const LARGE_COST: f64 = (10.0 * 10.0 + 20.0 * 30.0) / 1e6;

fn question(a: u64, b: u64) -> String {
    format!("What is {a} + {b}?")
}

/// Eight prompts (sums 2, 5, ..., 23: the first three below 10) with their references.
fn prompt_lines() -> Vec<String> {
    (1..=8u64).map(|i| json!({"prompt": question(i, i + 1), "reference": (2 * i + 1).to_string(), "task": "math"}).to_string()).collect()
}

fn label(dir: &Path, config: &Path, models: &str, extra: &[&str]) -> Run {
    let mut args = vec![
        "label".to_string(),
        "--prompts".into(),
        arg(&dir.join("prompts.jsonl")),
        "--config".into(),
        arg(config),
        "--models".into(),
        models.into(),
        "--grader".into(),
        arg(&write_exact_grader(dir)),
        "--out".into(),
        arg(&dir.join("labels.jsonl")),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let output = command()
        .args(&args)
        .output()
        .expect("run model-router label");
    Run {
        success: output.status.success(),
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).expect("utf-8"),
        stderr: String::from_utf8(output.stderr).expect("utf-8"),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn labels_with_costs_skips_bad_lines_and_records_backend_errors() {
    let dir = TempDir::new().unwrap();
    let backend = arithmetic_backend();
    let config = write_config(dir.path(), backend.addr, &[SMALL, LARGE, BROKEN]);
    let mut lines = prompt_lines();
    lines.insert(2, "{not json".into());
    lines.insert(5, r#"{"reference": "no prompt"}"#.into());
    std::fs::write(dir.path().join("prompts.jsonl"), lines.join("\n") + "\n").unwrap();

    let run = label(dir.path(), &config, "small,large,broken", &[]);
    assert!(run.success, "{}", run.stderr);
    assert!(
        run.stderr.contains("skipped 2 input line(s)"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("line 3: not JSON") && run.stderr.contains("line 6: needs a string"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("8 pair(s) ended in an error") && run.stderr.contains("× broken"),
        "{}",
        run.stderr
    );

    let labels = read_lines(&dir.path().join("labels.jsonl"));
    assert_eq!(labels.len(), 8);
    for (i, line) in labels.iter().enumerate() {
        let i = i as u64 + 1;
        assert_eq!(line["prompt"], question(i, i + 1));
        assert_eq!(line["task"], "math");
        let small_right = if 2 * i + 1 < 10 { 1.0 } else { 0.0 };
        assert_eq!(
            line["scores"],
            json!({"small": small_right, "large": 1.0}),
            "a failed model is absent, not 0"
        );
        assert!(
            close(line["costs"]["small"].as_f64().unwrap(), SMALL_COST),
            "{line}"
        );
        assert!(
            close(line["costs"]["large"].as_f64().unwrap(), LARGE_COST),
            "{line}"
        );
        assert_eq!(line["output_tokens"], json!({"small": 2, "large": 20}));
        assert!(line["latency_ms"]["large"].is_u64());
        // One retry of the dispatcher, then an error.
        assert_eq!(backend.count(&question(i, i + 1), "broken"), 2);
    }
    let answers = read_lines(&dir.path().join("labels.jsonl.answers.jsonl"));
    assert_eq!(answers.len(), 24);
    let broken: Vec<&Value> = answers.iter().filter(|a| a["model"] == "broken").collect();
    assert!(broken.iter().all(|a| a["score"].is_null()
        && a["answer"].is_null()
        && a["error"].as_str().unwrap().contains("500")));

    // A rerun asks nothing again and writes the same bytes; --retry-errors asks the failed pairs.
    let before = std::fs::read(dir.path().join("labels.jsonl")).unwrap();
    let counts = backend.counts();
    let again = label(dir.path(), &config, "small,large,broken", &[]);
    assert!(again.success, "{}", again.stderr);
    assert_eq!(backend.counts(), counts);
    assert_eq!(
        std::fs::read(dir.path().join("labels.jsonl")).unwrap(),
        before
    );
    let retried = label(
        dir.path(),
        &config,
        "small,large,broken",
        &["--retry-errors"],
    );
    assert!(retried.success, "{}", retried.stderr);
    assert_eq!(backend.count(&question(1, 2), "broken"), 4);
    assert_eq!(backend.count(&question(1, 2), "small"), 1);
}

#[test]
fn the_budget_stops_new_pairs_and_a_rerun_finishes() {
    let dir = TempDir::new().unwrap();
    let backend = arithmetic_backend();
    let config = write_config(dir.path(), backend.addr, &[SMALL, LARGE]);
    std::fs::write(
        dir.path().join("prompts.jsonl"),
        prompt_lines().join("\n") + "\n",
    )
    .unwrap();
    let budget = 0.003;
    let run = label(
        dir.path(),
        &config,
        "small,large",
        &["--max-cost", "0.003", "--concurrency", "2"],
    );
    assert!(
        run.success,
        "a budget stop is not a failure: {}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("warning: stopped at --max-cost $0.003000"),
        "{}",
        run.stderr
    );
    let answers = read_lines(&dir.path().join("labels.jsonl.answers.jsonl"));
    let spent: f64 = answers.iter().filter_map(|a| a["cost_usd"].as_f64()).sum();
    assert!(spent <= budget && spent > budget / 2.0, "spent {spent}");
    let written = read_lines(&dir.path().join("labels.jsonl")).len();
    assert!((1..8).contains(&written), "{written} lines");

    let rest = label(dir.path(), &config, "small,large", &["--max-cost", "1"]);
    assert!(rest.success, "{}", rest.stderr);
    assert_eq!(read_lines(&dir.path().join("labels.jsonl")).len(), 8);
    assert!(
        backend.counts().values().all(|&n| n == 1),
        "no pair asked twice: {:?}",
        backend.counts()
    );
}

#[test]
fn stored_answers_are_graded_not_asked_again() {
    let dir = TempDir::new().unwrap();
    let backend = arithmetic_backend();
    let config = write_config(dir.path(), backend.addr, &[SMALL, LARGE]);
    let db = dir.path().join("completions.db");
    let store = Store::open(&db, StoreOptions::default()).unwrap();
    for (i, task) in [(1u64, "math"), (2, "math"), (3, "math"), (4, "other")] {
        let request = json!({"model": "model-router", "messages": [{"role": "user", "content": question(i, 10)}]});
        let response = json!({"id": format!("chatcmpl-{i}"), "model": "large",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": (i + 10).to_string()}}],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100}});
        let mut record =
            NewCompletion::new("anonymous", request.as_object().cloned().unwrap(), response);
        record.metadata =
            Metadata::from_json(&json!({"task": task, "reference": (i + 10).to_string()})).unwrap();
        store.insert(record).unwrap();
    }
    // The server's shadow of the first request: small's answer (right, unlike what the mock says now).
    let request =
        json!({"model": "small", "messages": [{"role": "user", "content": question(1, 10)}]});
    let response = json!({"model": "small", "choices": [{"index": 0, "message": {"role": "assistant", "content": "11"}}],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100}});
    let mut shadow = NewCompletion::new(
        router_store::ROUTER_OWNER,
        request.as_object().cloned().unwrap(),
        response,
    );
    shadow.shadow_of = Some("chatcmpl-1".into());
    store.insert(shadow).unwrap();
    drop(store);
    let grader = write_exact_grader(dir.path());
    let out = dir.path().join("labels.jsonl");
    let output = command()
        .args([
            "label",
            "--db",
            &arg(&db),
            "--filter",
            "metadata.task=math",
            "--config",
            &arg(&config),
        ])
        .args([
            "--models",
            "small,large",
            "--grader",
            &arg(&grader),
            "--out",
            &arg(&out),
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let labels = read_lines(&out);
    assert_eq!(labels.len(), 3, "the filter keeps the math records");
    for (line, i) in labels.iter().zip(1u64..) {
        assert_eq!(
            backend.count(&question(i, 10), "large"),
            0,
            "the stored answer is not asked again"
        );
        let shadowed = i == 1;
        assert_eq!(
            backend.count(&question(i, 10), "small"),
            usize::from(!shadowed),
            "the shadow's answer is not asked again"
        );
        assert_eq!(
            line["scores"],
            json!({"small": if shadowed { 1.0 } else { 0.0 }, "large": 1.0})
        );
        // The stored usage at the catalog's prices.
        assert!(
            close(
                line["costs"]["large"].as_f64().unwrap(),
                (1000.0 * 10.0 + 100.0 * 30.0) / 1e6
            ),
            "{line}"
        );
    }
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("spend: $0.000028 this run"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_grader_error_is_recorded_and_graded_again_without_asking() {
    let dir = TempDir::new().unwrap();
    let backend = arithmetic_backend();
    let config = write_config(dir.path(), backend.addr, &[SMALL, LARGE]);
    let lines = [
        json!({"prompt": question(1, 1), "reference": "2"}),
        json!({"prompt": question(2, 2)}),
    ];
    std::fs::write(
        dir.path().join("prompts.jsonl"),
        lines.map(|l| l.to_string()).join("\n"),
    )
    .unwrap();
    let run = label(dir.path(), &config, "small,large", &[]);
    assert!(run.success, "{}", run.stderr);
    assert!(
        run.stderr.contains("2 pair(s) ended in an error") && run.stderr.contains("grader"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("1 prompt(s) not written: every model failed"),
        "{}",
        run.stderr
    );
    assert_eq!(read_lines(&dir.path().join("labels.jsonl")).len(), 1);
    let answers = read_lines(&dir.path().join("labels.jsonl.answers.jsonl"));
    let failed: Vec<&Value> = answers.iter().filter(|a| !a["error"].is_null()).collect();
    assert_eq!(failed.len(), 2);
    assert!(
        failed
            .iter()
            .all(|a| a["score"].is_null() && a["answer"] == "4"),
        "the answer is kept: {failed:?}"
    );
    let retried = label(dir.path(), &config, "small,large", &["--retry-errors"]);
    assert!(retried.success, "{}", retried.stderr);
    assert_eq!(
        backend.count(&question(2, 2), "small"),
        1,
        "graded again, not asked again"
    );
    assert_eq!(backend.count(&question(2, 2), "large"), 1);
}

#[test]
fn changed_settings_and_hopeless_runs_fail() {
    let dir = TempDir::new().unwrap();
    let backend = arithmetic_backend();
    let config = write_config(dir.path(), backend.addr, &[SMALL, LARGE, BROKEN]);
    std::fs::write(
        dir.path().join("prompts.jsonl"),
        prompt_lines()[..2].join("\n") + "\n",
    )
    .unwrap();
    let run = label(dir.path(), &config, "broken", &[]);
    assert!(
        !run.success && run.stderr.contains("nothing could be labelled"),
        "{}",
        run.stderr
    );
    let changed = label(dir.path(), &config, "small,large", &[]);
    assert!(!changed.success, "{}", changed.stderr);
    assert!(
        changed
            .stderr
            .contains("models was broken and is now small,large"),
        "{}",
        changed.stderr
    );
    let unknown = label(
        dir.path(),
        &config,
        "tiny",
        &["--progress", &arg(&dir.path().join("other.db"))],
    );
    assert!(
        !unknown.success
            && unknown
                .stderr
                .contains("\"tiny\" is not a [[models]] entry"),
        "{}",
        unknown.stderr
    );
    // A judge that is not in the config: refused before any candidate is asked.
    let judge = json!({"type": "score_model", "name": "j", "model": "nobody", "range": [0, 1],
        "input": [{"role": "user", "content": "{{sample.output_text}}"}]});
    let grader = dir.path().join("judge.json");
    std::fs::write(&grader, judge.to_string()).unwrap();
    let asked = backend.counts();
    let output = command()
        .args([
            "label",
            "--prompts",
            &arg(&dir.path().join("prompts.jsonl")),
            "--config",
            &arg(&config),
            "--models",
            "small",
        ])
        .args([
            "--grader",
            &arg(&grader),
            "--out",
            &arg(&dir.path().join("judged.jsonl")),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("judge \"nobody\" is not a [[models]] entry"),
        "{stderr}"
    );
    assert_eq!(backend.counts(), asked);
}

#[test]
fn a_python_grader_reads_the_answer_and_the_item() {
    let dir = TempDir::new().unwrap();
    let backend = arithmetic_backend();
    let config = write_config(dir.path(), backend.addr, &[SMALL, LARGE]);
    std::fs::write(
        dir.path().join("prompts.jsonl"),
        prompt_lines()[..4].join("\n") + "\n",
    )
    .unwrap();
    let source = "def grade(sample, item):\n    return 1.0 if sample['output_text'] == item['reference'] else 0.25\n";
    let grader = dir.path().join("python.json");
    std::fs::write(
        &grader,
        json!({"type": "python", "name": "exact-py", "source": source}).to_string(),
    )
    .unwrap();
    let out = dir.path().join("labels.jsonl");
    let output = command()
        .args([
            "label",
            "--prompts",
            &arg(&dir.path().join("prompts.jsonl")),
            "--config",
            &arg(&config),
        ])
        .args([
            "--models",
            "small,large",
            "--grader",
            &arg(&grader),
            "--out",
            &arg(&out),
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let scores: Vec<Value> = read_lines(&out)
        .into_iter()
        .map(|l| l["scores"].clone())
        .collect();
    let expected: Vec<Value> = (1..=4)
        .map(|i| json!({"small": if 2 * i + 1 < 10 { 1.0 } else { 0.25 }, "large": 1.0}))
        .collect();
    assert_eq!(scores, expected);
}

#[test]
fn a_rate_limited_model_is_waited_for_not_recorded_as_failed() {
    let dir = TempDir::new().unwrap();
    // `limited` answers 429 (retry after 50 ms) to the first request of every prompt.
    let limited_once = std::sync::Mutex::new(std::collections::HashSet::new());
    let backend = MockBackend::start(
        Arc::new(move |model: &str, prompt: &str| {
            if model == "limited" && limited_once.lock().unwrap().insert(prompt.to_string()) {
                return Reply::TooMany { retry_after_ms: 50 };
            }
            Reply::Answer {
                text: sum_of(prompt).to_string(),
                prompt_tokens: 10,
                completion_tokens: 2,
            }
        }),
        Duration::ZERO,
    );
    let limited = Candidate {
        name: "limited",
        input_price: 1.0,
        output_price: 2.0,
    };
    let config = write_config(dir.path(), backend.addr, &[limited]);
    std::fs::write(
        dir.path().join("prompts.jsonl"),
        prompt_lines()[..3].join("\n") + "\n",
    )
    .unwrap();
    let run = label(dir.path(), &config, "limited", &["--concurrency", "1"]);
    assert!(run.success, "{}", run.stderr);
    assert!(!run.stderr.contains("ended in an error"), "{}", run.stderr);
    assert_eq!(read_lines(&dir.path().join("labels.jsonl")).len(), 3);
    assert_eq!(
        backend.count(&question(1, 2), "limited"),
        2,
        "one 429, then the answer"
    );
}

#[test]
fn regrade_grades_the_stored_answers_with_a_new_grader_without_asking() {
    let dir = TempDir::new().unwrap();
    let backend = arithmetic_backend();
    let config = write_config(dir.path(), backend.addr, &[SMALL, LARGE]);
    std::fs::write(
        dir.path().join("prompts.jsonl"),
        prompt_lines()[..4].join("\n") + "\n",
    )
    .unwrap();
    assert!(label(dir.path(), &config, "small,large", &[]).success);
    let asked = backend.counts();
    // The same grader file, now `ne`: every score flips.
    let grader = dir.path().join("grader.json");
    let inverted = std::fs::read_to_string(&grader)
        .unwrap()
        .replace("\"eq\"", "\"ne\"");
    let run_with = |extra: &[&str]| {
        let mut args = vec![
            "label".to_string(),
            "--prompts".into(),
            arg(&dir.path().join("prompts.jsonl")),
            "--config".into(),
            arg(&config),
        ];
        args.extend(["--models", "small,large", "--grader"].map(String::from));
        args.extend([
            arg(&grader),
            "--out".into(),
            arg(&dir.path().join("labels.jsonl")),
        ]);
        args.extend(extra.iter().map(|a| a.to_string()));
        command().args(&args).output().unwrap()
    };
    std::fs::write(&grader, &inverted).unwrap();
    let refused = run_with(&[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && stderr.contains("grader (SHA-256 of its JSON) was")
            && stderr.contains("--regrade"),
        "{stderr}"
    );
    let regraded = run_with(&["--regrade"]);
    assert!(
        regraded.status.success(),
        "{}",
        String::from_utf8_lossy(&regraded.stderr)
    );
    let scores: Vec<Value> = read_lines(&dir.path().join("labels.jsonl"))
        .into_iter()
        .map(|l| l["scores"].clone())
        .collect();
    let expected: Vec<Value> = (1..=4)
        .map(|i| json!({"small": if 2 * i + 1 < 10 { 0.0 } else { 1.0 }, "large": 0.0}))
        .collect();
    assert_eq!(scores, expected);
    assert_eq!(backend.counts(), asked, "no model asked again");
    // Finished: the new grader is the progress file's now.
    assert!(run_with(&[]).status.success());
}
