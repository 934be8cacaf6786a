//! The whole loop on loopback mocks: `label` 400 prompts with an LLM judge (a `score_model`
//! grader through the dispatcher), `train` on 300 of the labelled lines, `eval` on the other 100:
//! the router trained from the labels reaches the strong model's quality at no more than 60 % of
//! its cost. Then `serve` the first bundle, reload to the new one under load: no request fails and
//! `/health` shows the new version.
//!
//! The candidates: `cheap` is right only on short arithmetic; `strong` is right on nine prompts in
//! ten of every kind and costs ~30× more. The mix is half arithmetic, half prose requests, which
//! a static-embedding router tells apart.

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod label_common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{arg, ok, prepare};
use label_common::{candidates_config, read_lines, write_config, Candidate, MockBackend, Reply};
use serde_json::{json, Value};
use tempfile::TempDir;

const ADMIN_KEY: &str = "loop-admin-key";
const TOPICS: [&str; 20] = [
    "the Roman empire",
    "photosynthesis",
    "jazz music",
    "the stock market",
    "volcanoes",
    "medieval castles",
    "quantum computing",
    "the French revolution",
    "coral reefs",
    "urban planning",
    "the printing press",
    "honey bees",
    "renaissance painting",
    "climate policy",
    "the silk road",
    "antibiotics",
    "opera",
    "railway history",
    "deep sea exploration",
    "public libraries",
];
const ASKS: [&str; 10] = [
    "Write a detailed essay about {t} and its influence on modern society.",
    "Explain to a curious teenager how {t} works, with examples and a short history.",
    "Compare two competing theories about {t} and argue which one is more convincing.",
    "Summarise the most important debates among experts about {t} in three paragraphs.",
    "Draft a lecture outline on {t} for first-year university students.",
    "Describe the main misconceptions people have about {t} and correct each one.",
    "Tell the story of {t} as if you were a museum guide talking to visitors.",
    "List the open research questions about {t} and why each of them matters.",
    "Write a persuasive letter to a newspaper editor about {t}.",
    "Explain the economic and social consequences of {t} over the last century.",
];

/// Prompt `i` of 400: even ones short arithmetic, odd ones prose (each text distinct).
fn prompt(i: usize) -> String {
    let k = i / 2;
    if i.is_multiple_of(2) {
        format!("What is {} + {}?", k + 2, (k * 7) % 13 + 1)
    } else {
        ASKS[k % 10].replace("{t}", TOPICS[k / 10])
    }
}

fn is_arithmetic(prompt: &str) -> bool {
    prompt.starts_with("What is ")
}

/// The right answer to a prompt: the sum, or a fixed phrase naming the prompt's length.
fn right_answer(prompt: &str) -> String {
    if is_arithmetic(prompt) {
        let numbers: Vec<u64> = prompt
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|w| w.parse().ok())
            .collect();
        numbers.iter().sum::<u64>().to_string()
    } else {
        format!("a considered answer of {} characters", prompt.len())
    }
}

/// cheap: right on arithmetic only; strong: wrong on one prompt length in ten; judge: 1 when the
/// answer equals the reference in its prompt, else 0.
fn reply(model: &str, prompt: &str) -> Reply {
    let tokens = prompt.len() as u64 / 4 + 1;
    match model {
        "cheap" => {
            let text = if is_arithmetic(prompt) {
                right_answer(prompt)
            } else {
                "I am not sure.".into()
            };
            Reply::Answer {
                text,
                prompt_tokens: tokens,
                completion_tokens: 10,
            }
        }
        "strong" => {
            let text = if prompt.len() % 10 == 3 {
                "a confident mistake".into()
            } else {
                right_answer(prompt)
            };
            Reply::Answer {
                text,
                prompt_tokens: tokens,
                completion_tokens: 40,
            }
        }
        "judge" => {
            let field = |name: &str| {
                prompt
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            };
            let verdict = if field("Reference:") == field("Answer:") {
                "1"
            } else {
                "0"
            };
            Reply::Answer {
                text: format!("Score: {verdict}"),
                prompt_tokens: tokens,
                completion_tokens: 3,
            }
        }
        _ => Reply::Status(404),
    }
}

fn judge_grader(dir: &Path) -> PathBuf {
    let grader = json!({
        "type": "score_model", "name": "judge", "model": "judge", "range": [0, 1], "pass_threshold": 0.5,
        "input": [
            {"role": "system", "content": "Reply with a score: 1 when the answer equals the reference, else 0."},
            {"role": "user", "content": "Reference: {{item.reference}}\nAnswer: {{sample.output_text}}"},
        ],
    });
    let path = dir.join("judge.json");
    std::fs::write(&path, grader.to_string()).unwrap();
    path
}

fn train(data: &Path, out: &Path, version: &str) {
    ok(&[
        "train",
        "--data",
        &arg(data),
        "--format",
        "jsonl",
        "--hidden",
        "32",
        "--out",
        &arg(out),
        "--name",
        "loop",
        "--version",
        version,
    ]);
}

#[test]
fn labels_train_a_router_that_beats_the_strong_model_on_cost_and_reload_promotes_it() {
    prepare();
    let dir = TempDir::new().unwrap();
    let backend = MockBackend::start(Arc::new(reply), Duration::ZERO);
    let candidates = [
        Candidate {
            name: "cheap",
            input_price: 0.15,
            output_price: 0.6,
        },
        Candidate {
            name: "strong",
            input_price: 5.0,
            output_price: 15.0,
        },
        Candidate {
            name: "judge",
            input_price: 0.0,
            output_price: 0.0,
        },
    ];
    let config = write_config(dir.path(), backend.addr, &candidates);
    let lines: Vec<String> = (0..400).map(|i| json!({"prompt": prompt(i), "reference": right_answer(&prompt(i)), "task": if i % 2 == 0 { "arithmetic" } else { "prose" }}).to_string()).collect();
    std::fs::write(dir.path().join("prompts.jsonl"), lines.join("\n") + "\n").unwrap();
    let labels = dir.path().join("labels.jsonl");
    let started = std::time::Instant::now();
    ok(&[
        "label",
        "--prompts",
        &arg(&dir.path().join("prompts.jsonl")),
        "--config",
        &arg(&config),
        "--models",
        "cheap,strong",
        "--grader",
        &arg(&judge_grader(dir.path())),
        "--out",
        &arg(&labels),
        "--concurrency",
        "16",
    ]);
    eprintln!(
        "labelled 400 prompts × 2 models (+ 800 judge calls) in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let labelled = read_lines(&labels);
    assert_eq!(labelled.len(), 400);
    let strong_right = labelled
        .iter()
        .filter(|l| l["scores"]["strong"] == 1.0)
        .count();
    assert!(
        (340..=380).contains(&strong_right),
        "strong is right on {strong_right} of 400"
    );

    let text: Vec<String> = labelled.iter().map(Value::to_string).collect();
    let train_file = common::write_jsonl(dir.path(), "train.jsonl", &text[..300]);
    let heldout = common::write_jsonl(dir.path(), "heldout.jsonl", &text[300..]);
    let first = common::write_jsonl(dir.path(), "first.jsonl", &text[..60]);
    let v2 = dir.path().join("v2");
    train(&train_file, &v2, "2026-12-01");
    let report = ok(&[
        "eval",
        "--data",
        &arg(&heldout),
        "--format",
        "jsonl",
        "--model",
        &arg(&v2),
        "--json",
    ])
    .json();
    let strong = &report["best_single"];
    assert_eq!(strong["model"], "strong", "{report}");
    let balanced = &report["modes"]["balanced"];
    let (quality, cost) = (
        balanced["quality"].as_f64().unwrap(),
        balanced["cost"].as_f64().unwrap(),
    );
    let (strong_quality, strong_cost) = (
        strong["quality"].as_f64().unwrap(),
        strong["cost"].as_f64().unwrap(),
    );
    eprintln!("held-out: router quality {quality:.3} at ${cost:.6}/prompt; strong {strong_quality:.3} at ${strong_cost:.6}");
    assert!(
        quality >= strong_quality,
        "router quality {quality} < strong's {strong_quality}"
    );
    assert!(
        cost <= 0.6 * strong_cost,
        "router cost {cost} > 60 % of strong's {strong_cost}"
    );

    let v1 = dir.path().join("v1");
    train(&first, &v1, "2026-11-01");
    serve_and_reload(dir.path(), backend.addr, &candidates[..2], &v1, &v2);
}

/// Serves `v1` (from a `current` directory) in front of the `candidates` on `backend`, then swaps
/// `v2` in and reloads while clients keep sending routed requests.
fn serve_and_reload(
    dir: &Path,
    backend: std::net::SocketAddr,
    candidates: &[Candidate<'_>],
    v1: &Path,
    v2: &Path,
) {
    let current = dir.join("current");
    copy_dir(v1, &current);
    let config = candidates_config(backend, candidates)
        .router(|r| r.bundle = current.clone())
        .listen("127.0.0.1:0".parse().unwrap())
        .access_log(false)
        .admin_key_env("ADMIN")
        .env(|v| (v == "ADMIN").then(|| ADMIN_KEY.to_string()))
        .named("loop.toml")
        .build()
        .expect("a valid config");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let server = router_server::start(config).await.expect("the server starts");
        let base = format!("http://{}", server.local_addr());
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        assert_eq!(health(&http, &base).await["version"], "2026-11-01");
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..4).map(|c| tokio::spawn(client(http.clone(), base.clone(), stop.clone(), c))).collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The new bundle takes the place of the old one, then the server is told to load it.
        std::fs::rename(&current, dir.join("retired")).unwrap();
        copy_dir(v2, &current);
        let reload = http.post(format!("{base}/admin/reload")).bearer_auth(ADMIN_KEY).send().await.unwrap();
        assert_eq!(reload.status(), 200, "{}", reload.text().await.unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::SeqCst);
        let mut sent = 0;
        for c in clients {
            sent += c.await.expect("a client task");
        }
        assert!(sent > 8, "only {sent} requests during the reload");
        assert_eq!(health(&http, &base).await["version"], "2026-12-01");
        let routed = http
            .post(format!("{base}/v1/chat/completions"))
            .json(&json!({"model": "model-router", "messages": [{"role": "user", "content": "What is 40 + 2?"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(routed.headers()["x-router-model"], "cheap", "the new router sends arithmetic to the cheap model");
        server.shutdown(Duration::from_secs(2)).await;
    });
}

/// Sends routed requests until `stop`; every one must succeed. Returns how many were sent.
async fn client(http: reqwest::Client, base: String, stop: Arc<AtomicBool>, c: usize) -> usize {
    let mut sent = 0;
    while !stop.load(Ordering::SeqCst) && sent < 2000 {
        let prompt = prompt((c + 2 * sent) % 400);
        let r = http
            .post(format!("{base}/v1/chat/completions"))
            .json(&json!({"model": "model-router", "messages": [{"role": "user", "content": prompt}]}))
            .send()
            .await
            .expect("the request completes");
        assert_eq!(r.status(), 200, "a request failed during the reload");
        sent += 1;
    }
    sent
}

async fn health(http: &reqwest::Client, base: &str) -> Value {
    http.get(format!("{base}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The config text with `router.bundle` pointing at `bundle`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}
