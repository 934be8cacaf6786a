//! The `python` grader: the user's `grade(sample, item) -> float` run in a separate `python3`
//! process, kept warm between answers, each answer under a time limit.
//!
//! The sandbox is modest and this says exactly what it is: the interpreter runs in isolated mode
//! (`-I`: no `PYTHON*` variables, no user site directory, not the current directory on the
//! path), with an environment emptied of everything but `PATH`, `HOME`, `LANG` and pyenv's
//! variables (so no proxy settings and no API keys), and inside a new user + network namespace
//! (`unshare -rn`) when the machine allows one, where only a down loopback interface exists.
//! Where `unshare -rn` fails, the grader still runs, without the network namespace
//! ([`network_isolated`] says which). It is not a security boundary against hostile code: the
//! code can read and write the files the user can.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use serde_json::{json, Map, Value};

/// The interpreter: `$MODEL_ROUTER_PYTHON`, else `python3` on the `PATH`.
fn interpreter() -> String {
    std::env::var("MODEL_ROUTER_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Variables kept in the grader's environment: enough to find and start the interpreter.
const KEPT_VARIABLES: [&str; 6] = [
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "PYENV_ROOT",
    "PYENV_VERSION",
];

/// The most of the process's stderr kept for an error message.
const STDERR_TAIL: usize = 2000;

/// Reads tasks (one JSON line each) and answers `{"score": x}` or `{"error": "..."}` per line.
/// The user's prints go to stderr so they cannot corrupt the answers; its stdin is empty.
const DRIVER: &str = r#"
import json, math, os, sys
answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
tasks = os.fdopen(os.dup(0), "r", encoding="utf-8")
sys.stdout = sys.stderr
sys.stdin = open(os.devnull)
source = json.loads(tasks.readline())
namespace = {"__name__": "grader"}
try:
    exec(compile(source, "<grader source>", "exec"), namespace)
    grade = namespace["grade"]
    failure = None
except BaseException as e:
    failure = "the source failed to load: %s: %s" % (type(e).__name__, e)
for line in tasks:
    if failure is not None:
        answer = {"error": failure}
    else:
        try:
            task = json.loads(line)
            score = grade(task["sample"], task["item"])
            if isinstance(score, bool) or not isinstance(score, (int, float)):
                raise TypeError("grade() returned %r, not a number" % (score,))
            score = float(score)
            if not math.isfinite(score):
                raise ValueError("grade() returned %r" % score)
            answer = {"score": score}
        except BaseException as e:
            answer = {"error": "%s: %s" % (type(e).__name__, e)}
    answers.write(json.dumps(answer) + "\n")
    answers.flush()
"#;

/// Whether `unshare -rn` works here (checked once): python graders then run without network.
pub fn network_isolated() -> bool {
    static ISOLATED: OnceLock<bool> = OnceLock::new();
    *ISOLATED.get_or_init(|| {
        Command::new("unshare")
            .args(["-rn", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

fn spawn() -> Result<Child, String> {
    let python = interpreter();
    let mut command = if network_isolated() {
        let mut command = Command::new("unshare");
        command.args(["-rn", &python]);
        command
    } else {
        Command::new(&python)
    };
    command.args(["-I", "-c", DRIVER]).env_clear();
    for name in KEPT_VARIABLES {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not start {python}: {e}"))
}

/// One running driver: its answers arrive on a channel, so waiting for one has a deadline.
struct Driver {
    child: Child,
    tasks: ChildStdin,
    answers: mpsc::Receiver<String>,
    stderr: Option<thread::JoinHandle<String>>,
}

/// Why a driver could not answer: the row fails and the driver is not used again.
struct Broken(String);

impl Driver {
    /// Starts the driver and sends it `source`.
    fn start(source: &str) -> Result<Driver, String> {
        let mut child = spawn()?;
        let (mut tasks, stdout, stderr) =
            match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
                (Some(stdin), Some(stdout), Some(stderr)) => (stdin, stdout, stderr),
                _ => return Err("the python process has no pipes".into()),
            };
        let first = Value::String(source.to_owned()).to_string() + "\n";
        tasks
            .write_all(first.as_bytes())
            .map_err(|e| format!("could not send the source to python: {e}"))?;
        let (sender, answers) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = thread::spawn(move || keep_tail(stderr));
        Ok(Driver {
            child,
            tasks,
            answers,
            stderr: Some(stderr),
        })
    }

    /// Grades one task (a JSON line) within `limit`.
    fn grade(&mut self, task: &str, limit: Duration) -> Result<Result<f64, String>, Broken> {
        let sent = self
            .tasks
            .write_all(task.as_bytes())
            .and_then(|_| self.tasks.write_all(b"\n"))
            .and_then(|_| self.tasks.flush());
        if sent.is_err() {
            return Err(Broken("python grader: the process ended".to_owned()));
        }
        match self.answers.recv_timeout(limit) {
            Ok(line) => Ok(answer_of(&line)),
            Err(RecvTimeoutError::Timeout) => Err(Broken(format!(
                "python grader: timed out after {:.1} s",
                limit.as_secs_f64()
            ))),
            Err(RecvTimeoutError::Disconnected) => {
                Err(Broken("python grader: the process ended".to_owned()))
            }
        }
    }

    /// Ends the process and returns the tail of what it wrote to stderr.
    fn stop(mut self) -> String {
        self.kill();
        let text = self
            .stderr
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        let text = text.trim();
        let start = text.len().saturating_sub(STDERR_TAIL);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        text[start..].to_owned()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Driver {
    /// A warm driver ends with the grader that holds it.
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads a pipe to its end, keeping about the last [`STDERR_TAIL`] bytes.
fn keep_tail(mut pipe: impl Read) -> String {
    let mut text = String::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n @ 1..) = pipe.read(&mut chunk) {
        text.push_str(&String::from_utf8_lossy(&chunk[..n]));
        if text.len() > 2 * STDERR_TAIL {
            let cut = text.len() - STDERR_TAIL;
            let cut = (cut..text.len())
                .find(|i| text.is_char_boundary(*i))
                .unwrap_or(text.len());
            text.drain(..cut);
        }
    }
    text
}

fn answer_of(line: &str) -> Result<f64, String> {
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(answer)) => match (
            answer.get("score").and_then(Value::as_f64),
            answer.get("error"),
        ) {
            (Some(score), None) => Ok(score),
            (_, Some(Value::String(error))) => Err(format!("python grader: {error}")),
            _ => Err(format!("python grader: unexpected answer {line:?}")),
        },
        _ => Err(format!("python grader: unexpected answer {line:?}")),
    }
}

/// A `python` grader's code with warm processes: a call takes an idle process (or starts one),
/// grades its rows one after another and puts the process back, so concurrent callers each have
/// their own and the interpreter starts once per caller, not once per answer. Clones share the
/// processes; they end when the last clone is dropped.
#[derive(Clone)]
pub(crate) struct PythonGrader {
    source: String,
    limit: Duration,
    idle: Arc<Mutex<Vec<Driver>>>,
}

impl std::fmt::Debug for PythonGrader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PythonGrader")
            .field("source", &self.source)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl PythonGrader {
    /// The grader of `source`, each answer limited to `limit`.
    pub(crate) fn new(source: String, limit: Duration) -> Self {
        PythonGrader {
            source,
            limit,
            idle: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn take_idle(&self) -> Option<Driver> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Grades `rows` ((output text, item) pairs) with the source's `grade(sample, item)`: one
    /// score or error per row, in order. A row that raises or returns something other than a
    /// finite number is an error for that row; a row still running after the limit is an
    /// error, its process is killed and a new one grades the rows after it.
    pub(crate) fn grade_batch(
        &self,
        rows: &[(&str, &Map<String, Value>)],
    ) -> Vec<Result<f64, String>> {
        let mut results = Vec::with_capacity(rows.len());
        let mut driver: Option<Driver> = None;
        for (output, item) in rows {
            let current = match driver
                .take()
                .or_else(|| self.take_idle())
                .map(Ok)
                .unwrap_or_else(|| Driver::start(&self.source))
            {
                Ok(current) => driver.insert(current),
                Err(error) => {
                    results.push(Err(error));
                    continue;
                }
            };
            let task = json!({"sample": {"output_text": output}, "item": item}).to_string();
            match current.grade(&task, self.limit) {
                Ok(result) => results.push(result),
                Err(Broken(mut error)) => {
                    let stderr = driver.take().map(Driver::stop).unwrap_or_default();
                    if !stderr.is_empty() {
                        error.push_str(&format!("; its stderr ends: {stderr}"));
                    }
                    results.push(Err(error));
                }
            }
        }
        if let Some(driver) = driver {
            self.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(driver);
        }
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(items: &[(&str, Value)]) -> Vec<(String, Map<String, Value>)> {
        items
            .iter()
            .map(|(o, i)| (o.to_string(), i.as_object().cloned().unwrap_or_default()))
            .collect()
    }

    fn run(source: &str, items: &[(&str, Value)], limit: Duration) -> Vec<Result<f64, String>> {
        let owned = rows(items);
        let borrowed: Vec<(&str, &Map<String, Value>)> =
            owned.iter().map(|(o, i)| (o.as_str(), i)).collect();
        PythonGrader::new(source.to_owned(), limit).grade_batch(&borrowed)
    }

    #[test]
    fn scores_exceptions_and_timeouts_per_row() {
        let source = "import time\n\
def grade(sample, item):\n    print('noise on stdout')\n    if item['kind'] == 'raise':\n        raise ValueError('bad row')\n    if item['kind'] == 'sleep':\n        time.sleep(30)\n    if item['kind'] == 'text':\n        return 'high'\n    return 1.0 if sample['output_text'] == item['reference'] else 0.25\n";
        let items = [
            ("4", json!({"kind": "ok", "reference": "4"})),
            ("5", json!({"kind": "raise", "reference": "4"})),
            ("5", json!({"kind": "ok", "reference": "4"})),
            ("x", json!({"kind": "sleep"})),
            ("4", json!({"kind": "ok", "reference": "4"})),
            ("x", json!({"kind": "text"})),
        ];
        let results = run(source, &items, Duration::from_millis(1500));
        assert_eq!(results[0], Ok(1.0));
        assert!(
            results[1]
                .as_ref()
                .unwrap_err()
                .contains("ValueError: bad row"),
            "{results:?}"
        );
        assert_eq!(results[2], Ok(0.25));
        assert!(
            results[3]
                .as_ref()
                .unwrap_err()
                .contains("timed out after 1.5 s"),
            "{results:?}"
        );
        assert_eq!(
            results[4],
            Ok(1.0),
            "a new process grades the rows after a timeout"
        );
        assert!(
            results[5].as_ref().unwrap_err().contains("not a number"),
            "{results:?}"
        );
    }

    #[test]
    fn processes_stay_warm_between_calls_and_state_persists_in_them() {
        let source = "calls = 0\ndef grade(sample, item):\n    global calls\n    calls += 1\n    return calls\n";
        let grader = PythonGrader::new(source.to_owned(), Duration::from_secs(10));
        let item = Map::new();
        let one = [("a", &item)];
        let first = grader.grade_batch(&one);
        let second = grader.clone().grade_batch(&[("b", &item), ("c", &item)]);
        assert_eq!(first, [Ok(1.0)]);
        assert_eq!(
            second,
            [Ok(2.0), Ok(3.0)],
            "the same process graded the second call"
        );
        assert_eq!(grader.idle.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_source_that_does_not_load_fails_every_row() {
        let results = run(
            "def grade(sample, item) return 1",
            &[("a", json!({})), ("b", json!({}))],
            Duration::from_secs(10),
        );
        assert_eq!(results.len(), 2);
        assert!(
            results
                .iter()
                .all(|r| r.as_ref().is_err_and(|e| e.contains("SyntaxError"))),
            "{results:?}"
        );
        let results = run("x = 1", &[("a", json!({}))], Duration::from_secs(10));
        assert!(
            results[0].as_ref().unwrap_err().contains("KeyError"),
            "{results:?}"
        );
    }

    #[test]
    fn no_network_and_no_proxies_inside() {
        let source = "import os, socket\n\
def grade(sample, item):\n    assert not any('proxy' in k.lower() for k in os.environ), os.environ\n    try:\n        socket.create_connection(('10.255.255.1', 9), timeout=0.5)\n    except OSError:\n        return 1.0\n    return 0.0\n";
        let results = run(source, &[("a", json!({}))], Duration::from_secs(10));
        if network_isolated() {
            assert_eq!(results, [Ok(1.0)], "no route out of the namespace");
        } else {
            assert!(results[0].is_ok(), "{results:?}");
        }
    }
}
