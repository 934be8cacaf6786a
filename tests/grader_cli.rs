//! `model-router grade --grader FILE`: OpenAI-shaped graders from the command line. A
//! `score_model` grader asks a judge through the server config's deployment, here an
//! OpenAI-compatible backend on 127.0.0.1 whose verdict depends on the answer; a `python` grader
//! given inline; and the run's hygiene: an input whose every row is bad exits non-zero, a
//! byte-order mark is accepted, a row whose grading fails is reported by line, not scored 0.

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::routing::post;
use axum::Json;
use common::{arg, assert_mentions, fails, ok};
use serde_json::{json, Value};
use tempfile::TempDir;

/// The judge backend: "Score: 9/10" when the answer equals the reference, `{"score": 2}` when it
/// does not, and no number at all for the answer "???". Every request body is kept.
struct Judge {
    addr: std::net::SocketAddr,
    requests: Arc<Mutex<Vec<Value>>>,
    /// Serves the backend until the judge is dropped.
    _runtime: tokio::runtime::Runtime,
}

fn verdict(body: &Value) -> String {
    let prompt = body["messages"][1]["content"].as_str().unwrap_or_default();
    let field = |name: &str| {
        prompt
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let (answer, reference) = (field("Answer:"), field("Reference:"));
    if answer == "???" {
        "I cannot judge this one.".into()
    } else if answer == reference {
        "Score: 9/10".into()
    } else {
        "{\"score\": 2}".into()
    }
}

impl Judge {
    fn start() -> Judge {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let kept = requests.clone();
        let app = axum::Router::new().route(
            "/v1/chat/completions",
            post(move |Json(body): Json<Value>| {
                let kept = kept.clone();
                async move {
                    let content = verdict(&body);
                    kept.lock().unwrap().push(body);
                    Json(json!({
                        "id": "chatcmpl-judge", "object": "chat.completion", "model": "upstream-judge",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25},
                    }))
                }
            }),
        );
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Judge {
            addr,
            requests,
            _runtime: runtime,
        }
    }

    /// A server config whose catalog has `judge-model`, served by this backend.
    fn config(&self, dir: &Path) -> PathBuf {
        common::write_config(
            dir,
            "model-router.toml",
            &common::one_model_config("judge-model", "judge", self.addr, "upstream-judge"),
        )
    }
}

const SCORE_MODEL: &str = r#"{
  "type": "score_model",
  "name": "judge",
  "model": "judge-model",
  "range": [0, 10],
  "pass_threshold": 5,
  "sampling_params": {"temperature": 0, "seed": 7},
  "input": [
    {"role": "system", "content": "You grade answers from 0 to 10."},
    {"role": "user", "content": "Question: {{item.prompt}}\nReference: {{item.reference}}\nAnswer: {{sample.output_text}}"}
  ]
}"#;

fn rows(dir: &Path) -> PathBuf {
    let path = dir.join("answers.jsonl");
    let lines = [
        json!({"prompt": "2+2?", "output": "4", "reference": "4"}).to_string(),
        json!({"prompt": "3+3?", "output": "7", "reference": "6"}).to_string(),
        json!({"prompt": "capital of France?", "output": "???", "reference": "Paris"}).to_string(),
        "not json".to_owned(),
        json!({"prompt": "no reference", "output": "x"}).to_string(),
        json!({"prompt": "5+5?", "output": "10", "reference": "10"}).to_string(),
    ];
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

#[test]
fn score_model_grader_asks_the_configured_judge() {
    let judge = Judge::start();
    let dir = TempDir::new().unwrap();
    let grader = dir.path().join("grader.json");
    std::fs::write(&grader, SCORE_MODEL).unwrap();
    let out = dir.path().join("graded.jsonl");
    let config = judge.config(dir.path());
    let input = rows(dir.path());
    let run = ok(&[
        "grade",
        "--json",
        "--input",
        &arg(&input),
        "--grader",
        &arg(&grader),
        "--config",
        &arg(&config),
        "--concurrency",
        "3",
        "--out",
        &arg(&out),
    ]);
    let report = run.json();
    assert_eq!(report["graded"], 3, "{report}");
    let lines = |key: &str| -> Vec<u64> {
        report[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["line"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(lines("skipped"), [4], "{report}");
    assert_eq!(
        lines("failed"),
        [3, 5],
        "an unparsable verdict and a missing field are failures, not zeros: {report}"
    );
    let reasons = report["failed"].to_string();
    assert_mentions(
        &reasons,
        &[
            "no score in the judge's reply",
            "I cannot judge this one.",
            "item.reference",
        ],
    );
    assert_eq!(report["pass_threshold"], 0.5, "5 on [0, 10]");
    assert_eq!(report["passed"], 2);
    assert!(
        (report["mean_score"].as_f64().unwrap() - (0.9 + 0.2 + 0.9) / 3.0).abs() < 1e-12,
        "{report}"
    );

    let graded: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let scores: Vec<(String, f64, bool)> = graded
        .iter()
        .map(|r| {
            (
                r["prompt"].as_str().unwrap().to_owned(),
                r["score"].as_f64().unwrap(),
                r["passed"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        scores,
        [
            ("2+2?".into(), 0.9, true),
            ("3+3?".into(), 0.2, false),
            ("5+5?".into(), 0.9, true)
        ]
    );

    let requests = judge.requests.lock().unwrap();
    assert_eq!(
        requests.len(),
        4,
        "one request per row with a filled template: {requests:?}"
    );
    for request in requests.iter() {
        assert_eq!(
            request["model"], "upstream-judge",
            "the deployment's model name goes upstream"
        );
        assert_eq!(
            (request["temperature"].as_i64(), request["seed"].as_i64()),
            (Some(0), Some(7)),
            "sampling params are sent"
        );
        assert_eq!(
            request["messages"][0],
            json!({"role": "system", "content": "You grade answers from 0 to 10."})
        );
    }
    assert!(requests
        .iter()
        .any(|r| r["messages"][1]["content"] == "Question: 2+2?\nReference: 4\nAnswer: 4"));
}

#[test]
fn model_graders_need_a_config_and_a_known_model() {
    let judge = Judge::start();
    let dir = TempDir::new().unwrap();
    let input = rows(dir.path());
    let run = fails(&["grade", "--input", &arg(&input), "--grader", SCORE_MODEL]);
    assert_mentions(&run.stderr, &["judge", "--config"]);
    // A model the catalog lacks is refused before any request.
    let config = judge.config(dir.path());
    let unknown = SCORE_MODEL.replace("\"judge-model\"", "\"gpt-unknown\"");
    let run = fails(&[
        "grade",
        "--input",
        &arg(&input),
        "--grader",
        &unknown,
        "--config",
        &arg(&config),
    ]);
    assert_mentions(
        &run.stderr,
        &[
            "model-router.toml",
            "the judge model \"gpt-unknown\" is not in the config's catalog",
        ],
    );
    // A judge whose backend is down: every row fails with the dispatcher's error, and so does the run.
    drop(judge);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    let start = text.find("http://").unwrap();
    let end = start + text[start..].find("/v1").unwrap();
    std::fs::write(
        &config,
        text.replace(&text[start..end], &format!("http://{closed}")),
    )
    .unwrap();
    let run = fails(&[
        "grade",
        "--input",
        &arg(&input),
        "--grader",
        SCORE_MODEL,
        "--config",
        &arg(&config),
    ]);
    assert_mentions(
        &run.stdout,
        &["failed to grade 5 row(s): line 1: grader \"judge\": the judge \"judge-model\" failed"],
    );
    assert_mentions(
        &run.stderr,
        &[
            "no row of",
            "was graded",
            "1 row(s) skipped, 5 failed to grade",
        ],
    );
}

#[test]
fn python_grader_inline_and_the_hygiene_of_a_run() {
    let dir = TempDir::new().unwrap();
    // A byte-order mark before the first row is accepted.
    let input = dir.path().join("bom.jsonl");
    std::fs::write(&input, "\u{feff}{\"output\": \"abcd\", \"n\": 4}\n{\"output\": \"ab\", \"n\": 0}\n{\"output\": \"ab\", \"n\": 8}\n").unwrap();
    let grader = json!({"type": "python", "name": "ratio", "pass_threshold": 0.5, "source": "def grade(sample, item):\n    return len(sample['output_text']) / item['n']\n"});
    let run = ok(&[
        "grade",
        "--json",
        "--input",
        &arg(&input),
        "--grader",
        &grader.to_string(),
    ]);
    let report = run.json();
    assert_eq!(
        (report["graded"].as_u64(), report["passed"].as_u64()),
        (Some(2), Some(1)),
        "{report}"
    );
    assert_eq!(report["failed"][0]["line"], 2);
    assert_mentions(
        report["failed"][0]["reason"].as_str().unwrap(),
        &["ZeroDivisionError"],
    );

    // Every row bad: a failure that says so, not a summary with exit code 0.
    let junk = dir.path().join("junk.jsonl");
    std::fs::write(&junk, "not json\n{\"no_output\": 1}\n").unwrap();
    let run = fails(&[
        "grade",
        "--input",
        &arg(&junk),
        "--grader",
        "string_check",
        "--operation",
        "eq",
    ]);
    assert_mentions(
        &run.stderr,
        &[
            "no row of",
            "junk.jsonl",
            "2 row(s) skipped, 0 failed to grade",
        ],
    );
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "\n").unwrap();
    let run = fails(&[
        "grade",
        "--input",
        &arg(&empty),
        "--grader",
        "string_check",
        "--operation",
        "eq",
    ]);
    assert_mentions(&run.stderr, &["it has no rows"]);

    // Flags of the short forms do not mix with a JSON grader; a bad spec names its field.
    let run = fails(&[
        "grade",
        "--input",
        &arg(&input),
        "--grader",
        &grader.to_string(),
        "--threshold",
        "0.5",
    ]);
    assert_mentions(&run.stderr, &["--threshold", "JSON grader"]);
    let run = fails(&[
        "grade",
        "--input",
        &arg(&input),
        "--grader",
        "{\"type\": \"python\"}",
    ]);
    assert_mentions(&run.stderr, &["field \"source\": missing"]);
}
