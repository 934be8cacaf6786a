//! Usage recorded for every request, per deployment and UTC minute (issue #15): requests,
//! input and output tokens, how many had their tokens estimated, 429s met, spills.
//!
//! A request adds to an in-memory table under a mutex (one lookup, no I/O); a task adds the
//! table to the database once a flush interval (a minute by default) and at shutdown, in one
//! transaction off the async workers, then deletes what is older than the retention. The
//! database is the store's when `[store]` is set, else the usage file of `[usage] path` (an
//! SQLite database with the store's schema, so that `capacity --db` reads either). A flush
//! that fails keeps its rows for the next one.
//!
//! What is counted, and on which row (see `router_store::UsageRow`):
//! - a successful answer (2xx) counts one request on the row of the deployment that answered,
//!   the model it served and the provisioned deployment it spilled over from (empty if none);
//! - its tokens are the backend's `usage` (a streamed answer reports it in a chunk when the
//!   client asked `stream_options.include_usage`); without it, the estimate: the router's
//!   estimate of the prompt's tokens and `router_policy::estimate_tokens` of the answer's text
//!   (content, refusal and tool-call arguments), and the row's `estimated` counts the request;
//! - every 429 a deployment answered on the way counts on that deployment's row (requests 0);
//! - an answer that failed (5xx, garbage, a broken stream before its end) counts nothing but
//!   its 429s; a stream whose client went away counts what passed until then, estimated.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::stream::{BoxStream, StreamExt};
use router_dispatch::Dispatched;
use router_store::{minute_of_ms, now_ms, Store, StoreError, StoreOptions, Usage, UsageRow};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::UsageConfig;
use crate::sse::{Event, Line};

/// The key of a row: (minute, deployment, model, spillover source).
type Key = (i64, String, String, String);

/// The usage not yet written, and where it goes.
pub(crate) struct UsageLog {
    pending: Mutex<HashMap<Key, UsageRow>>,
    store: Arc<Store>,
    config: UsageConfig,
    /// The task that flushes every interval, once started.
    flusher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The tokens of one answer, and whether they were estimated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tokens {
    pub input: u64,
    pub output: u64,
    pub estimated: bool,
}

impl Tokens {
    /// The backend's usage when it reported one, else the estimate: `prompt_tokens` in, the
    /// estimated tokens of `answer_text` out.
    fn of(usage: Option<Usage>, prompt_tokens: u64, answer_text: &str) -> Tokens {
        match usage {
            Some(u) => Tokens {
                input: u.prompt_tokens,
                output: u.completion_tokens,
                estimated: false,
            },
            None => Tokens {
                input: prompt_tokens,
                output: router_policy::estimate_tokens(answer_text) as u64,
                estimated: true,
            },
        }
    }
}

impl UsageLog {
    /// Usage written into `store` as `config` says.
    pub(crate) fn new(store: Arc<Store>, config: UsageConfig) -> Self {
        UsageLog {
            pending: Mutex::new(HashMap::new()),
            store,
            config,
            flusher: Mutex::new(None),
        }
    }

    /// The usage log `config` asks for (`None`: usage is not recorded): into its own file,
    /// opened (created) here, or into `store`. Blocking.
    pub(crate) fn open(
        config: Option<&UsageConfig>,
        store: Option<&Arc<Store>>,
    ) -> Result<Option<Arc<Self>>, StoreError> {
        let Some(config) = config else {
            return Ok(None);
        };
        let store = match (&config.location, store) {
            (Some(location), _) => {
                Arc::new(Store::open_location(location, StoreOptions::default())?)
            }
            (None, Some(store)) => store.clone(),
            (None, None) => return Ok(None),
        };
        Ok(Some(Arc::new(UsageLog::new(store, config.clone()))))
    }

    fn add(
        &self,
        minute: i64,
        deployment: &str,
        model: &str,
        from: &str,
        edit: impl FnOnce(&mut UsageRow),
    ) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let key = (
            minute,
            deployment.to_string(),
            model.to_string(),
            from.to_string(),
        );
        let row = pending.entry(key).or_insert_with(|| UsageRow {
            spillover_from: from.to_string(),
            ..UsageRow::new(minute, deployment, model)
        });
        edit(row);
    }

    /// Counts the 429s met by a dispatched request and returns the handle that counts its
    /// answer ([`Answering::json`] or [`Answering::stream`]); dropped unused, the answer
    /// failed and counts nothing.
    pub(crate) fn dispatched(
        self: &Arc<Self>,
        d: &Dispatched,
        model: &str,
        prompt_tokens: u64,
    ) -> Answering {
        let minute = minute_of_ms(now_ms());
        for deployment in &d.throttled {
            self.add(minute, deployment, model, "", |row| row.throttled += 1);
        }
        Answering {
            log: self.clone(),
            deployment: d.deployment.clone(),
            model: model.to_string(),
            spillover_from: d.spillover_from.clone().unwrap_or_default(),
            prompt_tokens,
        }
    }

    /// Writes the pending rows (one transaction, on the blocking pool) and prunes what is
    /// older than the retention; on failure the rows stay pending for the next flush.
    pub(crate) async fn flush(self: &Arc<Self>) {
        let rows: Vec<UsageRow> = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut *pending).into_values().collect()
        };
        let log = self.clone();
        let result = tokio::task::spawn_blocking(move || {
            let written = log
                .store
                .add_usage(&rows)
                .map_err(|e| (e.to_string(), rows));
            let horizon = minute_of_ms(now_ms()) - i64::from(log.config.retention_days) * 24 * 60;
            if let Err(e) = log.store.prune_usage(horizon) {
                eprintln!("model-router: usage: pruning failed: {e}");
            }
            written
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err((why, rows))) => {
                eprintln!(
                    "model-router: usage: writing {} rows failed, kept for the next flush: {why}",
                    rows.len()
                );
                for row in rows {
                    self.add(
                        row.minute,
                        &row.deployment,
                        &row.model,
                        &row.spillover_from,
                        |r| r.add(&row),
                    );
                }
            }
            Err(e) => eprintln!("model-router: usage: the flush task failed: {e}"),
        }
    }

    /// Starts flushing every flush interval, until [`UsageLog::close`].
    pub(crate) fn start_flusher(self: &Arc<Self>) {
        let log = self.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(log.config.flush_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await; // the first tick is immediate
            loop {
                tick.tick().await;
                log.flush().await;
            }
        });
        let mut flusher = self.flusher.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = flusher.replace(task) {
            old.abort();
        }
    }

    /// Stops the flusher and writes what is pending (at shutdown).
    pub(crate) async fn close(self: &Arc<Self>) {
        let task = self
            .flusher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task {
            task.abort();
        }
        self.flush().await;
    }

    /// The rows not yet written, by minute and deployment.
    #[cfg(test)]
    fn pending_rows(&self) -> Vec<UsageRow> {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let mut rows: Vec<UsageRow> = pending.values().cloned().collect();
        rows.sort_by(|a, b| (a.minute, &a.deployment).cmp(&(b.minute, &b.deployment)));
        rows
    }
}

/// A dispatched request whose answer is still to be counted.
pub(crate) struct Answering {
    log: Arc<UsageLog>,
    deployment: String,
    model: String,
    spillover_from: String,
    prompt_tokens: u64,
}

impl Answering {
    fn count(&self, tokens: Tokens) {
        let minute = minute_of_ms(now_ms());
        self.log.add(
            minute,
            &self.deployment,
            &self.model,
            &self.spillover_from,
            |row| {
                row.requests += 1;
                row.input_tokens = row.input_tokens.saturating_add(tokens.input);
                row.output_tokens = row.output_tokens.saturating_add(tokens.output);
                row.estimated += u64::from(tokens.estimated);
            },
        );
    }

    /// A successful JSON answer: its `usage`, else the estimate of its text.
    pub(crate) fn json(self, completion: &Map<String, Value>) {
        let usage = completion.get("usage").and_then(usage_of);
        let text = match (usage, completion.get("choices")) {
            (None, Some(choices)) => Vec::<AnswerChoice>::deserialize(choices)
                .map(|choices| answer_text(&choices))
                .unwrap_or_default(),
            _ => String::new(),
        };
        self.count(Tokens::of(usage, self.prompt_tokens, &text));
    }

    /// A successful stream, read through the one SSE reader ([`crate::sse::lines`]) and passed
    /// on unchanged; counted when it ends or is dropped (the client went away), from the last
    /// `usage` a chunk reported, else estimated from the text that passed.
    pub(crate) fn stream(
        self,
        lines: BoxStream<'static, reqwest::Result<Vec<Line>>>,
    ) -> BoxStream<'static, reqwest::Result<Vec<Line>>> {
        let mut tally = StreamTally {
            answering: Some(self),
            usage: None,
            text: String::new(),
        };
        lines
            .map(move |batch| {
                match &batch {
                    Ok(lines) => tally.read(lines),
                    Err(_) => tally.broken(),
                }
                batch
            })
            .boxed()
    }
}

/// What a stream has shown so far; counts itself when dropped.
struct StreamTally {
    answering: Option<Answering>,
    usage: Option<Usage>,
    text: String,
}

impl StreamTally {
    /// The events of `lines`: each chunk's `usage` (the last one wins) and its deltas' text.
    fn read(&mut self, lines: &[Line]) {
        for line in lines {
            let Event::Data(chunk) = &line.event else {
                continue;
            };
            if let Some(usage) = chunk.get("usage").and_then(usage_of) {
                self.usage = Some(usage);
            }
            let choices = chunk.get("choices").map(Vec::<ChunkChoice>::deserialize);
            for choice in choices.into_iter().flatten().flatten() {
                choice.delta.push_text(&mut self.text);
            }
        }
    }

    /// A stream that broke off counts nothing (as a failed answer).
    fn broken(&mut self) {
        self.answering = None;
    }
}

impl Drop for StreamTally {
    fn drop(&mut self) {
        if let Some(answering) = self.answering.take() {
            answering.count(Tokens::of(self.usage, answering.prompt_tokens, &self.text));
        }
    }
}

/// A `usage` object with `prompt_tokens` (OpenAI's shape).
fn usage_of(value: &Value) -> Option<Usage> {
    let mut wrapper = Map::new();
    wrapper.insert("usage".into(), value.clone());
    Usage::from_response(&Value::Object(wrapper))
}

/// The parts of a message (or a streamed delta) whose text is answer tokens.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Message {
    content: Option<String>,
    refusal: Option<String>,
    tool_calls: Vec<ToolCall>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ToolCall {
    function: Function,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Function {
    arguments: Option<String>,
}

impl Message {
    fn push_text(&self, text: &mut String) {
        let calls = self
            .tool_calls
            .iter()
            .map(|c| c.function.arguments.as_deref());
        for part in [self.content.as_deref(), self.refusal.as_deref()]
            .into_iter()
            .chain(calls)
            .flatten()
        {
            text.push_str(part);
        }
    }
}

/// A JSON answer's choice.
#[derive(Deserialize, Default)]
#[serde(default)]
struct AnswerChoice {
    message: Message,
}

/// The answer text of every choice.
fn answer_text(choices: &[AnswerChoice]) -> String {
    let mut text = String::new();
    for choice in choices {
        choice.message.push_text(&mut text);
    }
    text
}

/// A streamed chunk's choice.
#[derive(Deserialize, Default)]
#[serde(default)]
struct ChunkChoice {
    delta: Message,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_USAGE_FLUSH;
    use bytes::Bytes;
    use futures_util::stream;

    fn log() -> (tempfile::TempDir, Arc<UsageLog>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("u.db"), StoreOptions::default()).unwrap();
        let config = UsageConfig {
            location: None,
            retention_days: 1,
            flush_interval: DEFAULT_USAGE_FLUSH,
        };
        (dir, Arc::new(UsageLog::new(Arc::new(store), config)))
    }

    fn answering(log: &Arc<UsageLog>, from: &str) -> Answering {
        Answering {
            log: log.clone(),
            deployment: "paygo".into(),
            model: "m".into(),
            spillover_from: from.into(),
            prompt_tokens: 7,
        }
    }

    #[test]
    fn json_answers_count_reported_usage_else_the_estimate() {
        let (_dir, log) = log();
        let reported = serde_json::json!({"choices": [{"message": {"content": "hi"}}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}});
        answering(&log, "").json(reported.as_object().unwrap());
        let unreported = serde_json::json!({"choices": [{"message": {"content": "hello world"}}]});
        answering(&log, "").json(unreported.as_object().unwrap());
        answering(&log, "ptu").json(unreported.as_object().unwrap());
        let rows = log.pending_rows();
        let plain = rows.iter().find(|r| r.spillover_from.is_empty()).unwrap();
        // 11 + 7 in; 5 + estimate_tokens("hello world") = 4 out; one estimated.
        assert_eq!(
            (
                plain.requests,
                plain.input_tokens,
                plain.output_tokens,
                plain.estimated
            ),
            (2, 18, 9, 1)
        );
        let spilled = rows.iter().find(|r| r.spillover_from == "ptu").unwrap();
        assert_eq!(
            (spilled.requests, spilled.deployment.as_str()),
            (1, "paygo")
        );
    }

    #[tokio::test]
    async fn streams_count_the_last_usage_chunk_or_the_text_that_passed() {
        let (_dir, log) = log();
        let with_usage = [
            "data: {\"choices\":[{\"delta\":{\"content\":\"hel\"}}],\"usage\":null}\n\ndata: {\"choi",
            "ces\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\ndata: [DONE]\n\n",
        ];
        let without = [
            "data: {\"choices\":[{\"delta\":{\"content\":\"hello world\"}}]}\n\n",
            "data: [DONE]\n\n",
        ];
        for chunks in [&with_usage[..], &without[..]] {
            let upstream: Vec<reqwest::Result<Bytes>> =
                chunks.iter().map(|c| Ok(Bytes::from(*c))).collect();
            let lines = crate::sse::lines(stream::iter(upstream).boxed(), "m".into());
            let out: Vec<_> = answering(&log, "").stream(lines).collect().await;
            assert_eq!(out.len(), chunks.len(), "passed through unchanged");
        }
        let rows = log.pending_rows();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (
                rows[0].requests,
                rows[0].input_tokens,
                rows[0].output_tokens,
                rows[0].estimated
            ),
            (2, 10, 6, 1)
        );
    }

    #[tokio::test]
    async fn a_flush_writes_sums_and_empties_the_table() {
        let (_dir, log) = log();
        let answer = serde_json::json!({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 1}});
        answering(&log, "").json(answer.as_object().unwrap());
        log.flush().await;
        answering(&log, "").json(answer.as_object().unwrap());
        log.flush().await;
        assert!(log.pending_rows().is_empty());
        let rows = log.store.usage(None).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (
                rows[0].requests,
                rows[0].input_tokens,
                rows[0].output_tokens
            ),
            (2, 8, 2)
        );
    }
}
