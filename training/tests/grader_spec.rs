//! `GraderSpec`: each of OpenAI's grader shapes parsed from JSON and graded on small exact cases.
//! The judge here is a `ChatModel` that answers from a table and records what it was asked, so
//! each case shows the messages a grader sends and what it makes of a reply; the CLI test
//! (`tests/grader_cli.rs`) asks a judge over HTTP.

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Mutex;
use std::time::Instant;

use router_training::grade::{ChatModel, GradeContext, Graded, GraderSpec};
use router_training::TrainingError;
use serde_json::{json, Map, Value};

/// One request to the judge: the model, the messages, the sampling parameters.
type Asked = (String, Vec<Value>, Map<String, Value>);

/// Answers every request with `reply` and keeps the requests.
struct TableJudge {
    reply: String,
    asked: Mutex<Vec<Asked>>,
}

impl TableJudge {
    fn new(reply: &str) -> Self {
        TableJudge {
            reply: reply.to_owned(),
            asked: Mutex::new(Vec::new()),
        }
    }
}

impl ChatModel for TableJudge {
    fn complete(
        &self,
        model: &str,
        messages: &[Value],
        params: &Map<String, Value>,
    ) -> Result<String, String> {
        self.asked
            .lock()
            .unwrap()
            .push((model.to_owned(), messages.to_vec(), params.clone()));
        if self.reply == "<fail>" {
            return Err("backend down".into());
        }
        Ok(self.reply.clone())
    }
}

fn spec(value: Value) -> GraderSpec {
    GraderSpec::from_json(&value).unwrap_or_else(|e| panic!("{value}: {e}"))
}

fn spec_error(value: Value) -> String {
    GraderSpec::from_json(&value)
        .expect_err("a bad spec")
        .to_string()
}

fn item(value: Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap()
}

fn grade_with(
    spec: &GraderSpec,
    output: &str,
    row: Value,
    judge: Option<&dyn ChatModel>,
) -> Result<Graded, TrainingError> {
    spec.grade(
        output,
        &item(row),
        &GradeContext {
            judge,
            encoder: None,
        },
    )
}

fn score_model(range: Option<Value>, threshold: Option<f64>) -> GraderSpec {
    let mut value = json!({
        "type": "score_model", "name": "judge", "model": "gpt-judge",
        "input": [
            {"role": "system", "content": "Grade from 1 to 10."},
            {"role": "user", "content": "Q: {{item.question}} ({{item.meta.level}})\nReference: {{item.reference}}\nAnswer: {{sample.output_text}}"},
        ],
        "sampling_params": {"temperature": 0, "max_completions_tokens": 20},
    });
    if let Some(range) = range {
        value["range"] = range;
    }
    if let Some(threshold) = threshold {
        value["pass_threshold"] = json!(threshold);
    }
    spec(value)
}

#[test]
fn score_model_sends_rendered_messages_and_scales_by_the_range() {
    let grader = score_model(Some(json!([1, 10])), Some(7.0));
    assert!(grader.needs_judge());
    assert_eq!(
        grader.pass_threshold(),
        Some(6.0 / 9.0),
        "the threshold is scaled like the score"
    );
    let judge = TableJudge::new("Score: 7/10");
    let row = json!({"question": "2+2?", "reference": "4", "meta": {"level": "easy"}});
    let graded = grade_with(&grader, "four", row.clone(), Some(&judge)).unwrap();
    assert_eq!(
        graded,
        Graded {
            score: 6.0 / 9.0,
            passed: Some(true)
        }
    );
    let asked = judge.asked.lock().unwrap();
    let (model, messages, params) = &asked[0];
    assert_eq!(model, "gpt-judge");
    assert_eq!(
        messages[1],
        json!({"role": "user", "content": "Q: 2+2? (easy)\nReference: 4\nAnswer: four"})
    );
    assert_eq!(
        params["max_completion_tokens"], 20,
        "OpenAI's grader spelling becomes the chat API's"
    );
    assert_eq!(params["temperature"], 0);
    drop(asked);

    let judge = TableJudge::new("{\"score\": 4}");
    assert_eq!(
        grade_with(&grader, "five", row, Some(&judge)).unwrap(),
        Graded {
            score: 3.0 / 9.0,
            passed: Some(false)
        }
    );
    // The default range is [0, 1], no threshold.
    let judge = TableJudge::new("0.25");
    let graded = grade_with(
        &score_model(None, None),
        "x",
        json!({"question": "q", "reference": "r", "meta": {"level": "l"}}),
        Some(&judge),
    );
    assert_eq!(
        graded.unwrap(),
        Graded {
            score: 0.25,
            passed: None
        }
    );
}

#[test]
fn unparsable_or_failed_judges_and_missing_fields_are_errors_not_zeros() {
    let grader = score_model(Some(json!([0, 10])), None);
    let row = json!({"question": "q", "reference": "r", "meta": {"level": "l"}});
    for (reply, expected) in [
        ("I'd rather not say.", "no score in the judge's reply"),
        ("{\"score\": 12}", "outside the range [0, 10]"),
        ("<fail>", "the judge \"gpt-judge\" failed: backend down"),
    ] {
        let judge = TableJudge::new(reply);
        let error = grade_with(&grader, "x", row.clone(), Some(&judge))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(expected) && error.contains("grader \"judge\""),
            "{reply:?}: {error}"
        );
    }
    let judge = TableJudge::new("5");
    let error = grade_with(
        &grader,
        "x",
        json!({"question": "q", "reference": "r", "meta": {}}),
        Some(&judge),
    )
    .unwrap_err();
    assert!(error.to_string().contains("item.meta.level"), "{error}");
    assert!(
        judge.asked.lock().unwrap().is_empty(),
        "nothing is sent when a template cannot be filled"
    );
    let error = grade_with(&grader, "x", row, None).unwrap_err();
    assert!(error.to_string().contains("needs a judge"), "{error}");
}

#[test]
fn label_model_matches_one_label_and_passes_the_passing_ones() {
    let grader = spec(json!({
        "type": "label_model", "name": "verdict", "model": "gpt-judge",
        "input": [{"role": "user", "content": "Is {{sample.output_text}} right for {{item.question}}?"}],
        "labels": ["correct", "incorrect"], "passing_labels": ["correct"],
    }));
    assert_eq!(grader.pass_threshold(), Some(1.0));
    for (reply, score) in [
        ("Correct.", 1.0),
        ("{\"label\": \"incorrect\"}", 0.0),
        ("The answer is incorrect.", 0.0),
    ] {
        let judge = TableJudge::new(reply);
        let graded = grade_with(&grader, "4", json!({"question": "2+2"}), Some(&judge)).unwrap();
        assert_eq!(
            graded,
            Graded {
                score,
                passed: Some(score == 1.0)
            },
            "{reply:?}"
        );
    }
    for reply in ["maybe", "correct or incorrect, hard to say"] {
        let judge = TableJudge::new(reply);
        assert!(
            grade_with(&grader, "4", json!({"question": "2+2"}), Some(&judge)).is_err(),
            "{reply:?}"
        );
    }
}

#[test]
fn string_check_and_text_similarity_read_templates() {
    let grader = spec(json!({
        "type": "string_check", "name": "nested", "operation": "ilike",
        "input": "{{sample.output_text}}", "reference": "{{item.answer.city}}",
    }));
    let graded = grade_with(
        &grader,
        "It is PARIS.",
        json!({"answer": {"city": "paris"}}),
        None,
    )
    .unwrap();
    assert_eq!(
        graded,
        Graded {
            score: 1.0,
            passed: Some(true)
        }
    );
    assert!(grade_with(&grader, "x", json!({"answer": "paris"}), None)
        .unwrap_err()
        .to_string()
        .contains("item.answer.city"));

    let grader = spec(json!({
        "type": "text_similarity", "evaluation_metric": "rouge_l", "pass_threshold": 0.5,
        "input": "{{sample.output_text}}", "reference": "{{item.reference}}",
    }));
    assert_eq!(
        grader.name(),
        "text_similarity",
        "the type names a grader without a name"
    );
    let graded = grade_with(
        &grader,
        "the cat",
        json!({"reference": "the black cat sat"}),
        None,
    )
    .unwrap();
    assert!(
        (graded.score - 2.0 / 3.0).abs() < 1e-12 && graded.passed == Some(true),
        "{graded:?}"
    );
}

#[test]
fn python_grader_scores_raises_and_times_out_per_answer() {
    let grader = spec(json!({
        "type": "python", "name": "code", "timeout_seconds": 1, "pass_threshold": 0.5,
        "source": "import time\ndef grade(sample, item):\n    if item.get('sleep'):\n        time.sleep(20)\n    if item.get('boom'):\n        raise RuntimeError('boom')\n    return len(sample['output_text']) / item['n']\n",
    }));
    let rows = [
        json!({"n": 4}),
        json!({"boom": true, "n": 1}),
        json!({"sleep": true, "n": 1}),
        json!({"n": 2}),
    ];
    let items: Vec<Map<String, Value>> = rows.into_iter().map(item).collect();
    let pairs: Vec<(&str, &Map<String, Value>)> = items.iter().map(|i| ("ab", i)).collect();
    let started = Instant::now();
    let results = grader.grade_batch(&pairs, &GradeContext::default());
    assert!(
        started.elapsed().as_secs() < 10,
        "the sleeping answer is cut at 1 s: {:?}",
        started.elapsed()
    );
    assert_eq!(
        results[0].as_ref().unwrap(),
        &Graded {
            score: 0.5,
            passed: Some(true)
        }
    );
    assert!(
        results[1]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("RuntimeError: boom"),
        "{results:?}"
    );
    assert!(
        results[2]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("timed out after 1.0 s"),
        "{results:?}"
    );
    assert_eq!(
        results[3].as_ref().unwrap(),
        &Graded {
            score: 1.0,
            passed: Some(true)
        }
    );
    assert!(grader.runs_python() && !grader.needs_judge());
}

#[test]
fn multi_combines_named_scores_by_its_formula() {
    let grader = spec(json!({
        "type": "multi", "name": "combined", "pass_threshold": 0.6,
        "graders": {
            "exact": {"type": "string_check", "operation": "eq", "input": "{{sample.output_text}}", "reference": "{{item.reference}}"},
            "overlap": {"type": "text_similarity", "evaluation_metric": "rouge_l", "input": "{{sample.output_text}}", "reference": "{{item.reference}}"},
            "judge": {"type": "score_model", "model": "m", "range": [0, 10], "input": [{"role": "user", "content": "{{sample.output_text}}"}]},
        },
        "calculate_output": "0.5 * exact + 0.25 * overlap + 0.25 * min(judge, 1) - abs(-0)",
    }));
    assert!(grader.needs_judge(), "a judge anywhere inside");
    let judge = TableJudge::new("8");
    let graded = grade_with(
        &grader,
        "the cat",
        json!({"reference": "the black cat sat"}),
        Some(&judge),
    )
    .unwrap();
    assert!(
        (graded.score - (0.25 * 2.0 / 3.0 + 0.25 * 0.8)).abs() < 1e-12,
        "{graded:?}"
    );
    assert_eq!(graded.passed, Some(false));
    let graded = grade_with(
        &grader,
        "the black cat sat",
        json!({"reference": "the black cat sat"}),
        Some(&judge),
    )
    .unwrap();
    assert!(
        (graded.score - 0.95).abs() < 1e-12 && graded.passed == Some(true),
        "{graded:?}"
    );
    // A failing sub-grader fails the whole answer, naming itself.
    let judge = TableJudge::new("no idea");
    let error = grade_with(&grader, "x", json!({"reference": "y"}), Some(&judge))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("grader \"judge\": no score"),
        "a sub-grader is called by its key: {error}"
    );

    let ratio = spec(json!({
        "type": "multi", "graders": {
            "a": {"type": "string_check", "operation": "eq", "input": "{{sample.output_text}}", "reference": "{{item.r}}"},
            "b": {"type": "string_check", "operation": "ne", "input": "{{sample.output_text}}", "reference": "{{item.r}}"},
        },
        "calculate_output": "a / b",
    }));
    let error = grade_with(&ratio, "same", json!({"r": "same"}), None)
        .unwrap_err()
        .to_string();
    assert!(error.contains("division by zero"), "{error}");
    assert_eq!(
        grade_with(&ratio, "other", json!({"r": "same"}), None)
            .unwrap()
            .score,
        0.0
    );
}

#[test]
fn bad_specs_name_the_grader_and_the_field() {
    let check = |value: Value, expected: &[&str]| {
        let error = spec_error(value);
        for part in expected {
            assert!(error.contains(part), "{error:?} should mention {part:?}");
        }
    };
    check(
        json!({"type": "regex_check"}),
        &[
            "field \"type\"",
            "unknown grader type \"regex_check\"",
            "string_check",
            "multi",
        ],
    );
    check(json!({"name": "x"}), &["field \"type\" is missing"]);
    check(json!([1]), &["a grader is a JSON object"]);
    check(
        json!({"type": "string_check", "input": "a", "reference": "b", "operation": "eq", "oops": 1}),
        &[
            "field \"oops\": unknown field",
            "input, reference, operation",
        ],
    );
    check(
        json!({"type": "string_check", "input": "a", "reference": "b"}),
        &["grader \"string_check\" (string_check): field \"operation\": missing"],
    );
    check(
        json!({"type": "string_check", "input": 3, "reference": "b", "operation": "eq"}),
        &["field \"input\": expected a string, got 3"],
    );
    check(
        json!({"type": "string_check", "input": "{{item.a", "reference": "b", "operation": "eq"}),
        &["field \"input\"", "unclosed"],
    );
    check(
        json!({"type": "string_check", "input": "{{output}}", "reference": "b", "operation": "eq"}),
        &["field \"input\"", "unknown template reference"],
    );
    check(
        json!({"type": "string_check", "input": "a", "reference": "b", "operation": "contains"}),
        &[
            "field \"operation\"",
            "unknown string_check operation \"contains\"",
        ],
    );
    check(
        json!({"type": "text_similarity", "input": "a", "reference": "b", "evaluation_metric": "meteor"}),
        &["field \"evaluation_metric\"", "meteor", "rouge_l"],
    );
    check(
        json!({"type": "text_similarity", "input": "a", "reference": "b", "evaluation_metric": "bleu", "pass_threshold": 2}),
        &["field \"pass_threshold\"", "not in [0, 1]"],
    );
    let judged = |extra: Value| {
        let mut value = json!({"type": "score_model", "name": "j", "model": "m", "input": [{"role": "user", "content": "{{sample.output_text}}"}]});
        value
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        value
    };
    check(
        judged(json!({"range": [10, 1]})),
        &["grader \"j\" (score_model): field \"range\"", "min < max"],
    );
    check(
        judged(json!({"range": [0, 10], "pass_threshold": 11})),
        &["field \"pass_threshold\"", "not in [0, 10]"],
    );
    check(
        judged(json!({"input": []})),
        &["field \"input\"", "non-empty list"],
    );
    check(
        judged(json!({"input": [{"role": "user", "content": {"text": "x"}}]})),
        &["field \"input\"", "message 0", "content"],
    );
    check(
        judged(json!({"sampling_params": 3})),
        &["field \"sampling_params\"", "an object"],
    );
    check(
        json!({"type": "label_model", "model": "m", "input": [{"role": "user", "content": "x"}], "labels": ["a", "b"], "passing_labels": ["c"]}),
        &["field \"passing_labels\"", "\"c\" is not one of the labels"],
    );
    check(
        json!({"type": "python", "source": "x", "timeout_seconds": 0}),
        &["field \"timeout_seconds\"", "not in (0, 3600]"],
    );
    check(json!({"type": "python"}), &["field \"source\": missing"]);
    let multi = |formula: &str| {
        json!({"type": "multi", "name": "m", "calculate_output": formula, "graders": {
            "a": {"type": "string_check", "operation": "eq", "input": "x", "reference": "y"},
            "b": {"type": "python", "source": "def grade(s, i): return 1"},
        }})
    };
    check(
        multi("a + c"),
        &[
            "grader \"m\" (multi): field \"calculate_output\"",
            "unknown name \"c\" at column 5; the graders are a, b",
        ],
    );
    check(
        multi("a + * b"),
        &["field \"calculate_output\"", "column 5"],
    );
    check(
        multi("(a + b"),
        &["field \"calculate_output\"", "expected ')'"],
    );
    check(multi("pow(a, b)"), &["unknown function \"pow\""]);
    check(multi("a; import os"), &["unexpected ';'"]);
    check(
        json!({"type": "multi", "calculate_output": "a", "graders": {"a": {"type": "nope"}}}),
        &["field \"graders.a\"", "unknown grader type \"nope\""],
    );
    assert!(spec(multi("max(a, b) / 2")).runs_python());
}

#[test]
fn load_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grader.json");
    std::fs::write(&path, "{\"type\": \"string_check\", \"input\": \"a\"}").unwrap();
    let error = GraderSpec::load(&path).unwrap_err().to_string();
    assert!(
        error.contains("grader.json") && error.contains("\"reference\": missing"),
        "{error}"
    );
    std::fs::write(&path, "{not json").unwrap();
    assert!(GraderSpec::load(&path)
        .unwrap_err()
        .to_string()
        .contains("not JSON"));
    assert!(GraderSpec::load(&dir.path().join("absent.json"))
        .unwrap_err()
        .to_string()
        .contains("absent.json"));
    std::fs::write(
        &path,
        "\u{feff}{\"type\": \"python\", \"source\": \"def grade(s, i): return 1\"}",
    )
    .unwrap();
    assert_eq!(
        GraderSpec::load(&path).unwrap().name(),
        "python",
        "a byte-order mark is accepted"
    );
}
