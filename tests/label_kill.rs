//! `label` killed with SIGKILL mid-run and run again: no pair committed before the kill is asked
//! again, only the pairs in flight at the kill are, and the output equals that of an uninterrupted
//! run (latency aside: it is measured, so it differs from run to run). And Ctrl-C (SIGINT): the
//! pairs in flight finish, the outputs are written, and the run says it was interrupted.

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod label_common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{arg, command};
use label_common::{read_lines, write_config, write_exact_grader, Candidate, MockBackend, Reply};
use serde_json::{json, Value};
use tempfile::TempDir;

const PROMPTS: u64 = 24;
const CONCURRENCY: usize = 3;
const DELAY: Duration = Duration::from_millis(150);

fn slow_backend() -> MockBackend {
    MockBackend::start(
        Arc::new(|model: &str, prompt: &str| {
            let n: u64 = prompt
                .split_whitespace()
                .filter_map(|w| w.trim_end_matches('?').parse().ok())
                .next()
                .unwrap_or(0);
            let right = model == "large" || n.is_multiple_of(3);
            Reply::Answer {
                text: if right {
                    (n * 2).to_string()
                } else {
                    "no idea".into()
                },
                prompt_tokens: 7 + n,
                completion_tokens: n % 5 + 1,
            }
        }),
        DELAY,
    )
}

fn prepare(dir: &Path, backend: &MockBackend) -> Vec<String> {
    let lines: Vec<String> = (1..=PROMPTS)
        .map(|n| {
            json!({"prompt": format!("Double {n}?"), "reference": (2 * n).to_string()}).to_string()
        })
        .collect();
    std::fs::write(dir.join("prompts.jsonl"), lines.join("\n") + "\n").unwrap();
    write_config(
        dir,
        backend.addr,
        &[
            Candidate {
                name: "small",
                input_price: 0.5,
                output_price: 1.5,
            },
            Candidate {
                name: "large",
                input_price: 5.0,
                output_price: 15.0,
            },
        ],
    );
    let concurrency = CONCURRENCY.to_string();
    [
        "label",
        "--prompts",
        &arg(&dir.join("prompts.jsonl")),
        "--config",
        &arg(&dir.join("model-router.toml")),
        "--models",
        "small,large",
        "--grader",
        &arg(&write_exact_grader(dir)),
        "--out",
        &arg(&dir.join("labels.jsonl")),
        "--concurrency",
        &concurrency,
    ]
    .map(str::to_string)
    .to_vec()
}

fn run_to_end(args: &[String]) {
    let output = command().args(args).output().expect("run label");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The pairs committed in the progress file: (prompt key, model); none while its table is not made.
fn committed(progress: &Path) -> HashSet<(String, String)> {
    let connection = rusqlite::Connection::open(progress).expect("open the progress file");
    let Ok(mut statement) = connection.prepare("SELECT prompt_key, model FROM pairs") else {
        return HashSet::new();
    };
    let rows = statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("rows");
    rows.collect::<Result<_, _>>().expect("read rows")
}

/// The lines with every `latency_ms` value set to 0.
fn without_latency(path: &Path) -> Vec<Value> {
    read_lines(path)
        .into_iter()
        .map(|mut line| {
            match line.get_mut("latency_ms") {
                Some(Value::Object(map)) => map.values_mut().for_each(|v| *v = json!(0)),
                Some(value @ Value::Number(_)) => *value = json!(0),
                _ => {}
            }
            line
        })
        .collect()
}

#[test]
fn a_killed_run_resumes_without_asking_finished_pairs_again() {
    let reference_dir = TempDir::new().unwrap();
    let reference_backend = slow_backend();
    run_to_end(&prepare(reference_dir.path(), &reference_backend));

    let dir = TempDir::new().unwrap();
    let backend = slow_backend();
    let args = prepare(dir.path(), &backend);
    let progress = dir.path().join("labels.jsonl.progress.db");
    let mut child = command()
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start label");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(progress.exists() && committed(&progress).len() >= 10) {
        assert!(Instant::now() < deadline, "no progress within 60 s");
        assert!(
            child.try_wait().unwrap().is_none(),
            "label finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    let before_kill = committed(&progress);
    let total = (PROMPTS * 2) as usize;
    assert!(
        before_kill.len() < total,
        "killed mid-run: {} of {total} pairs",
        before_kill.len()
    );
    assert!(
        !dir.path().join("labels.jsonl").exists(),
        "no output before the run ends"
    );

    run_to_end(&args);
    let labels = read_lines(&dir.path().join("labels.jsonl"));
    assert_eq!(labels.len(), PROMPTS as usize);
    // Pairs committed before the kill were not asked again; only those in flight were.
    let keys: Vec<(String, String)> = read_lines(&dir.path().join("labels.jsonl.answers.jsonl"))
        .iter()
        .map(|a| {
            (
                a["prompt_key"].as_str().unwrap().to_string(),
                a["model"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let counts = backend.counts();
    let mut asked_twice = 0;
    for (n, pair) in (1..=PROMPTS)
        .flat_map(|n| [(n, "small"), (n, "large")])
        .zip(&keys)
    {
        let asked = counts[&(format!("Double {}?", n.0), n.1.to_string())];
        if before_kill.contains(pair) {
            assert_eq!(asked, 1, "{pair:?} was committed before the kill");
        } else {
            assert!((1..=2).contains(&asked), "{pair:?} asked {asked} times");
            asked_twice += usize::from(asked == 2);
        }
    }
    assert!(
        asked_twice <= CONCURRENCY,
        "{asked_twice} pairs asked twice"
    );
    assert_eq!(counts.values().sum::<usize>(), total + asked_twice);

    for file in ["labels.jsonl", "labels.jsonl.answers.jsonl"] {
        assert_eq!(
            without_latency(&dir.path().join(file)),
            without_latency(&reference_dir.path().join(file)),
            "{file}"
        );
    }
}

#[test]
fn ctrl_c_finishes_the_pairs_in_flight_and_writes_the_outputs() {
    let dir = TempDir::new().unwrap();
    let backend = slow_backend();
    let args = prepare(dir.path(), &backend);
    let progress = dir.path().join("labels.jsonl.progress.db");
    let child = command()
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start label");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(progress.exists() && committed(&progress).len() >= 6) {
        assert!(Instant::now() < deadline, "no progress within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success());
    let output = child.wait_with_output().expect("label ends");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("interrupted: finishing the pairs in flight")
            && stderr.contains("Rerun the same command"),
        "{stderr}"
    );
    let finished = committed(&progress).len();
    assert!(finished < (PROMPTS * 2) as usize, "interrupted mid-run");
    let answers = read_lines(&dir.path().join("labels.jsonl.answers.jsonl"));
    assert_eq!(
        answers.len(),
        finished,
        "every finished pair is written, the ones in flight included"
    );
    assert!(
        backend.counts().values().sum::<usize>() == finished,
        "no pair was left unfinished in flight"
    );
    run_to_end(&args);
    assert_eq!(
        read_lines(&dir.path().join("labels.jsonl")).len(),
        PROMPTS as usize
    );
    assert!(
        backend.counts().values().all(|&n| n == 1),
        "nothing asked twice"
    );
}
