//! `model-router grade` end to end: every grader on a small file with hand-computed scores, the
//! graded output (fields passed through, `score` and `passed` added), bad rows reported by line
//! number, the JSON summary, and the errors that name the missing flag. Needs no data file; the
//! cosine case uses the shipped default bundle's encoder.

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{arg, assert_mentions, fails, ok, routerbench_bundle};
use serde_json::Value;
use tempfile::TempDir;

/// Four good rows, two unreadable ones (lines 3 and 5: no string output, not JSON) and one that
/// fails to grade (line 7: no reference); a blank line (6) is not a row.
const PAIRS: &str = concat!(
    "{\"prompt\": \"p1\", \"output\": \"the cat sat on the mat\", \"reference\": \"the cat is on the mat\", \"id\": 1}\n",
    "{\"prompt\": \"p2\", \"output\": \"The capital is Paris.\", \"reference\": \"paris\"}\n",
    "{\"prompt\": \"p3\", \"output\": 42, \"reference\": \"42\"}\n",
    "{\"prompt\": \"p4\", \"output\": \"the cat\", \"reference\": \"the black cat sat\"}\n",
    "this line is not JSON\n",
    "\n",
    "{\"prompt\": \"p7\", \"output\": \"no reference here\"}\n",
    "{\"prompt\": \"p8\", \"output\": \"kitten\", \"reference\": \"kitten\"}\n",
);

fn pairs(dir: &Path) -> PathBuf {
    let path = dir.join("pairs.jsonl");
    std::fs::write(&path, PAIRS).unwrap();
    path
}

/// `grade --json` with `extra`: the summary object.
fn summary(input: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "grade".to_string(),
        "--json".into(),
        "--input".into(),
        arg(input),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let run = ok(&args);
    assert_eq!(
        run.stdout.lines().count(),
        1,
        "--json prints one line: {:?}",
        run.stdout
    );
    run.json()
}

fn graded_rows(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn scores(rows: &[Value]) -> Vec<f64> {
    rows.iter()
        .map(|r| r["score"].as_f64().expect("a score"))
        .collect()
}

fn close(actual: &[f64], expected: &[f64]) {
    assert_eq!(actual.len(), expected.len(), "{actual:?} vs {expected:?}");
    for (a, e) in actual.iter().zip(expected) {
        assert!((a - e).abs() < 1e-9, "{actual:?} vs {expected:?}");
    }
}

#[test]
fn string_check_operations_grade_and_report_bad_rows_by_line() {
    let dir = TempDir::new().unwrap();
    let input = pairs(dir.path());
    let expected = [
        ("eq", [0.0, 0.0, 0.0, 1.0]),
        ("ne", [1.0, 1.0, 1.0, 0.0]),
        ("like", [0.0, 0.0, 0.0, 1.0]),
        ("ilike", [0.0, 1.0, 0.0, 1.0]),
    ];
    for (operation, want) in expected {
        let out = dir.path().join(format!("{operation}.jsonl"));
        let report = summary(
            &input,
            &[
                "--grader",
                "string_check",
                "--operation",
                operation,
                "--out",
                &arg(&out),
            ],
        );
        assert_eq!(report["graded"], 4, "{report}");
        let lines = |key: &str| -> Vec<u64> {
            report[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["line"].as_u64().unwrap())
                .collect()
        };
        assert_eq!(lines("skipped"), [3, 5], "{report}");
        assert_eq!(lines("failed"), [7], "{report}");
        let rows = graded_rows(&out);
        close(&scores(&rows), &want);
        let passed = want.iter().filter(|s| **s == 1.0).count();
        assert_eq!(report["passed"], passed, "string_check passes at 1");
        assert!((report["mean_score"].as_f64().unwrap() - passed as f64 / 4.0).abs() < 1e-12);
        assert!((report["pass_rate"].as_f64().unwrap() - passed as f64 / 4.0).abs() < 1e-12);
        let grader = serde_json::json!({
            "type": "string_check", "name": "string_check", "operation": operation,
            "input": "{{sample.output_text}}", "reference": "{{item.reference}}",
        });
        assert_eq!(
            report["grader"], grader,
            "the short form stands for this JSON grader"
        );
        // Everything else passes through, so the file feeds `candidate add`.
        let prompts: Vec<&str> = rows.iter().map(|r| r["prompt"].as_str().unwrap()).collect();
        assert_eq!(prompts, ["p1", "p2", "p4", "p8"]);
        assert_eq!(rows[0]["id"], 1);
        assert_eq!(rows[0]["reference"], "the cat is on the mat");
        assert!(rows.iter().all(|r| r["passed"].is_boolean()));
    }

    // The table form names the skipped lines and their reasons.
    let table = ok(&[
        "grade",
        "--input",
        &arg(&input),
        "--grader",
        "string_check",
        "--operation",
        "ilike",
    ])
    .stdout;
    assert_mentions(
        &table,
        &[
            "graded 4 row(s)",
            "skipped 2 row(s)",
            "line 3: field \"output\" is not a string",
            "line 5: not JSON",
            "failed to grade 1 row(s): line 7: grader \"string_check\": the row has no field item.reference",
            "mean score 0.5000",
            "pass rate 0.5000 (2 of 4 at score >= 1)",
        ],
    );
}

#[test]
fn text_similarity_metrics_have_their_hand_computed_values() {
    let dir = TempDir::new().unwrap();
    let input = pairs(dir.path());
    let run = |metric: &str, extra: &[&str]| {
        let out = dir.path().join(format!("{metric}.jsonl"));
        let mut args = vec!["--grader", "text_similarity", "--metric", metric];
        args.extend_from_slice(extra);
        let out_arg = arg(&out);
        args.extend_from_slice(&["--out", &out_arg]);
        let report = summary(&input, &args);
        (report, scores(&graded_rows(&out)))
    };
    // BLEU: p = 5/6, 3/5, 1/4, 1/(2·3); "The capital is Paris." vs "paris": no common token;
    // "the cat" vs "the black cat sat": effective order 2, p1 = 1, p2 = 1/(2·1), BP = exp(1 − 4/2).
    let (report, bleu) = run("bleu", &[]);
    close(
        &bleu,
        &[
            48f64.powf(-0.25),
            0.0,
            (0.5f64).sqrt() * (-1.0f64).exp(),
            1.0,
        ],
    );
    assert!(
        report["pass_rate"].is_null() && report["passed"].is_null(),
        "no threshold, no pass rate: {report}"
    );
    // ROUGE-L: 5/6; "the capital is paris" vs "paris": P = 1/4, R = 1 → 0.4; 2/3; 1.
    let (_, rouge) = run("rouge_l", &["--threshold", "0.5"]);
    close(&rouge, &[5.0 / 6.0, 0.4, 2.0 / 3.0, 1.0]);
    // fuzzy_match (rapidfuzz ratio): LCS of the characters.
    let (_, fuzzy) = run("fuzzy_match", &[]);
    assert!(
        (fuzzy[3] - 1.0).abs() < 1e-12 && fuzzy[0] > 0.8 && fuzzy[1] < 0.5,
        "{fuzzy:?}"
    );
    close(&fuzzy[2..3], &[2.0 * 7.0 / 24.0]);

    let (report, _) = run("rouge_l", &["--threshold", "0.6"]);
    assert_eq!(report["passed"], 3, "5/6, 2/3 and 1 pass at 0.6: {report}");
    assert_eq!(report["pass_threshold"], 0.6);

    // Cosine through the default bundle's encoder: identical texts score 1, all in [0, 1].
    let (report, cosine) = run("cosine", &["--model", &arg(&routerbench_bundle())]);
    assert_eq!(report["graded"], 4);
    assert!((cosine[3] - 1.0).abs() < 1e-6, "{cosine:?}");
    assert!(cosine.iter().all(|c| (0.0..=1.0).contains(c)), "{cosine:?}");
    assert!(
        cosine[0] > cosine[1],
        "the two cat sentences are closer than an answer and a one-word reference: {cosine:?}"
    );
}

#[test]
fn custom_field_names_and_errors_that_say_what_is_missing() {
    let dir = TempDir::new().unwrap();
    let input = dir.path().join("custom.jsonl");
    std::fs::write(
        &input,
        "{\"answer\": \"4\", \"ideal\": \"4\"}\n{\"answer\": \"5\", \"ideal\": \"4\"}\n",
    )
    .unwrap();
    let report = summary(
        &input,
        &[
            "--grader",
            "string_check",
            "--operation",
            "eq",
            "--output-field",
            "answer",
            "--reference-field",
            "ideal",
        ],
    );
    assert_eq!(
        (report["graded"].as_u64(), report["passed"].as_u64()),
        (Some(2), Some(1))
    );

    let input = arg(&input);
    let run = fails(&["grade", "--input", &input, "--grader", "string_check"]);
    assert_mentions(&run.stderr, &["--operation"]);
    let run = fails(&[
        "grade",
        "--input",
        &input,
        "--grader",
        "text_similarity",
        "--metric",
        "cosine",
    ]);
    assert_mentions(&run.stderr, &["cosine", "--model"]);
    let run = fails(&[
        "grade",
        "--input",
        &input,
        "--grader",
        "text_similarity",
        "--metric",
        "meteor",
    ]);
    assert_mentions(&run.stderr, &["meteor", "fuzzy_match", "bleu", "rouge_l"]);
    let run = fails(&["grade", "--input", &input, "--grader", "label_model"]);
    assert_mentions(&run.stderr, &["string_check", "text_similarity"]);
    let run = fails(&[
        "grade",
        "--input",
        &input,
        "--grader",
        "string_check",
        "--operation",
        "eq",
        "--threshold",
        "2",
    ]);
    assert_mentions(&run.stderr, &["threshold", "[0, 1]"]);
    let run = fails(&[
        "grade",
        "--input",
        "no-such-file.jsonl",
        "--grader",
        "string_check",
        "--operation",
        "eq",
    ]);
    assert_mentions(&run.stderr, &["no-such-file.jsonl"]);
}
