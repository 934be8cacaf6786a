//! A streamed answer kept as it passes: the lines of [`crate::sse::lines`] go to the client
//! while the answer is assembled from their events, and the `data: [DONE]` line waits until the
//! record is stored.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use serde_json::{json, Map, Value};

use crate::shadow::ShadowJob;
use crate::sse::{Event, Line};
use crate::state::AppState;
use crate::stored::{finish, skipped, StoreJob};

#[derive(Default)]
struct ToolCall {
    id: Option<String>,
    kind: Option<String>,
    name: String,
    arguments: String,
}

#[derive(Default)]
struct Choice {
    role: Option<String>,
    content: Option<String>,
    refusal: Option<String>,
    tool_calls: BTreeMap<u64, ToolCall>,
    finish_reason: Option<Value>,
}

/// An OpenAI chat-completions stream read as it passes: the final message assembled from its
/// events, and the `data: [DONE]` line (and whatever follows it) held back.
#[derive(Default)]
pub(crate) struct StreamedAnswer {
    done: bool,
    held: Vec<u8>,
    chunks: usize,
    id: Option<String>,
    created: Option<Value>,
    system_fingerprint: Option<Value>,
    choices: BTreeMap<u64, Choice>,
    usage: Option<Value>,
    error: Option<String>,
}

fn push_str(slot: &mut Option<String>, text: Option<&str>) {
    if let Some(text) = text {
        slot.get_or_insert_with(String::new).push_str(text);
    }
}

fn str_of<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object.get(key).and_then(Value::as_str)
}

fn items<'a>(object: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    object
        .get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

impl StreamedAnswer {
    /// Reads one line and puts the bytes to forward now in `out`: all of them, except from
    /// the `data: [DONE]` line on (held for [`StreamedAnswer::held`]).
    pub(crate) fn pass(&mut self, line: Line, out: &mut Vec<u8>) {
        if !self.done {
            match &line.event {
                Event::Done => self.done = true,
                Event::Data(chunk) => self.absorb(chunk),
                Event::Other => {}
            }
        }
        let to = if self.done { &mut self.held } else { out };
        to.extend_from_slice(&line.bytes);
    }

    /// The held bytes: `data: [DONE]` and whatever followed it.
    pub(crate) fn held(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }

    fn absorb(&mut self, chunk: &Map<String, Value>) {
        if let Some(error) = chunk.get("error").filter(|e| !e.is_null()) {
            self.error = Some(error.to_string());
            return;
        }
        self.chunks += 1;
        if self.id.is_none() {
            self.id = chunk.get("id").and_then(Value::as_str).map(str::to_string);
        }
        if self.created.is_none() {
            self.created = chunk.get("created").cloned();
        }
        if self.system_fingerprint.is_none() {
            let fingerprint = chunk.get("system_fingerprint").filter(|v| !v.is_null());
            self.system_fingerprint = fingerprint.cloned();
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(usage.clone());
        }
        let choices = chunk.get("choices").and_then(Value::as_array);
        for choice in choices.into_iter().flatten() {
            let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
            let acc = self.choices.entry(index).or_default();
            if let Some(delta) = choice.get("delta") {
                acc.absorb(delta);
            }
            if let Some(reason) = choice.get("finish_reason").filter(|r| !r.is_null()) {
                acc.finish_reason = Some(reason.clone());
            }
        }
    }

    /// The assembled `chat.completion`, or why there is none.
    pub(crate) fn assemble(&self, model: &str) -> Result<Value, String> {
        if let Some(error) = &self.error {
            return Err(format!("the stream carried an error: {error}"));
        }
        if self.chunks == 0 {
            return Err("the stream had no chunks".into());
        }
        if !self.done {
            // The backend ended the stream early: a half answer is not an answer.
            return Err("the stream ended before `data: [DONE]`".into());
        }
        let choices: Vec<Value> = self.choices.iter().map(|(i, c)| c.assemble(*i)).collect();
        let mut object = json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created.clone().unwrap_or(Value::Null),
            "model": model,
            "choices": choices,
            "usage": self.usage.clone().unwrap_or(Value::Null),
        });
        if let (Some(fp), Value::Object(o)) = (&self.system_fingerprint, &mut object) {
            o.insert("system_fingerprint".into(), fp.clone());
        }
        Ok(object)
    }
}

impl Choice {
    /// One `delta`: role, content, refusal and tool-call pieces.
    fn absorb(&mut self, delta: &Value) {
        if let Some(role) = str_of(delta, "role") {
            self.role = Some(role.to_string());
        }
        push_str(&mut self.content, str_of(delta, "content"));
        push_str(&mut self.refusal, str_of(delta, "refusal"));
        for call in items(delta, "tool_calls") {
            let i = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            let t = self.tool_calls.entry(i).or_default();
            if let Some(id) = str_of(call, "id") {
                t.id = Some(id.to_string());
            }
            if let Some(kind) = str_of(call, "type") {
                t.kind = Some(kind.to_string());
            }
            if let Some(f) = call.get("function") {
                t.name.push_str(str_of(f, "name").unwrap_or(""));
                t.arguments.push_str(str_of(f, "arguments").unwrap_or(""));
            }
        }
    }

    /// The choice of a `chat.completion`.
    fn assemble(&self, index: u64) -> Value {
        let mut message = Map::new();
        let role = self.role.clone().unwrap_or_else(|| "assistant".into());
        message.insert("role".into(), Value::String(role));
        let content = self.content.clone().map_or(Value::Null, Value::String);
        message.insert("content".into(), content);
        if let Some(refusal) = &self.refusal {
            message.insert("refusal".into(), Value::String(refusal.clone()));
        }
        if !self.tool_calls.is_empty() {
            let calls = self.tool_calls.values().map(|t| {
                let kind = t.kind.clone().unwrap_or_else(|| "function".into());
                json!({"id": t.id, "type": kind,
                    "function": {"name": t.name, "arguments": t.arguments}})
            });
            message.insert("tool_calls".into(), Value::Array(calls.collect()));
        }
        let finish_reason = self.finish_reason.clone().unwrap_or(Value::Null);
        json!({"index": index, "message": message, "finish_reason": finish_reason})
    }
}

/// A stream being tapped, with what its record needs.
struct Tap {
    state: Arc<AppState>,
    lines: BoxStream<'static, reqwest::Result<Vec<Line>>>,
    answer: StreamedAnswer,
    job: StoreJob,
    model: String,
    deployment: String,
    cost: f64,
}

/// Where a tapped stream is: passing lines, or sent its last bytes with a shadow to queue.
enum TapState {
    Passing(Box<Tap>),
    Ended(Arc<AppState>, Option<Box<ShadowJob>>),
}

/// Forwards `lines` (from [`crate::sse::lines`]) as they come while assembling the answer; at
/// the end stores the record (when the client asked), then sends the held `data: [DONE]` and
/// an SSE comment `: x-router-store: <outcome>` (only when the client asked: a shadowed stream
/// reaches the client unchanged), and last, once those bytes are out, queues the shadow. A
/// stream that breaks off, or a client that goes away, stores and shadows nothing.
pub(crate) fn tap(
    state: Arc<AppState>,
    lines: BoxStream<'static, reqwest::Result<Vec<Line>>>,
    job: StoreJob,
    model: String,
    deployment: String,
    cost: f64,
) -> impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static {
    let tap = Tap {
        state,
        lines,
        answer: StreamedAnswer::default(),
        job,
        model,
        deployment,
        cost,
    };
    futures_util::stream::unfold(Some(TapState::Passing(Box::new(tap))), |tap| async move {
        let mut tap = match tap? {
            TapState::Passing(tap) => tap,
            TapState::Ended(state, shadow) => {
                if let (Some(shadows), Some(job)) = (state.shadows(), shadow) {
                    shadows.submit(&state.metrics, *job);
                }
                return None;
            }
        };
        loop {
            match tap.lines.next().await {
                Some(Ok(lines)) => {
                    let mut out = Vec::new();
                    for line in lines {
                        tap.answer.pass(line, &mut out);
                    }
                    if !out.is_empty() {
                        return Some((Ok(Bytes::from(out)), Some(TapState::Passing(tap))));
                    }
                }
                Some(Err(e)) => {
                    if tap.job.asked {
                        skipped(&tap.state, "the stream broke off".into());
                    }
                    return Some((Err(e), None));
                }
                None => return Some(tap.end().await),
            }
        }
    })
}

impl Tap {
    /// The backend ended the stream: the record stored (when asked), then the held bytes and
    /// the store's comment; the shadow is queued once they are out.
    async fn end(self: Box<Self>) -> (reqwest::Result<Bytes>, Option<TapState>) {
        let Tap {
            state,
            mut answer,
            job,
            model,
            deployment,
            cost,
            ..
        } = *self;
        let asked = job.asked;
        let (outcome, shadow) = match answer.assemble(&model) {
            Ok(response) => finish(&state, job, response, &model, &deployment, cost).await,
            Err(why) => (asked.then(|| skipped(&state, why)), None),
        };
        let mut out = answer.held();
        if let Some(outcome) = outcome {
            let comment = format!(": x-router-store: {}\n\n", outcome.header_value());
            out.extend_from_slice(comment.as_bytes());
        }
        let ended = TapState::Ended(state, shadow.map(Box::new));
        (Ok(Bytes::from(out)), Some(ended))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;

    /// Passes `chunks` through the SSE reader and `answer`; what went out at once.
    async fn pass_all(answer: &mut StreamedAnswer, chunks: &[&str]) -> String {
        let upstream: Vec<reqwest::Result<Bytes>> = chunks
            .iter()
            .map(|c| Ok(Bytes::from(c.to_string())))
            .collect();
        let mut lines = crate::sse::lines(stream::iter(upstream).boxed(), "chosen".into());
        let mut out = Vec::new();
        while let Some(batch) = lines.next().await {
            for line in batch.expect("no upstream error") {
                answer.pass(line, &mut out);
            }
        }
        String::from_utf8(out).expect("utf-8")
    }

    #[tokio::test]
    async fn assembles_content_tools_and_usage_and_holds_done() {
        let mut answer = StreamedAnswer::default();
        let c = |delta: &str, extra: &str| {
            format!(
                r#"data: {{"id":"c9","created":7,"model":"up","choices":[{{"index":0,"delta":{delta},"finish_reason":{extra}}}]}}"#
            )
        };
        let chunks = [
            format!("{}\n\n", c(r#"{"role":"assistant","content":"Hel"}"#, "null")),
            format!("{}\n", c(r#"{"content":"lo"}"#, "null")),
            "\n".to_string(),
            format!("{}\n\n", c(r#"{"tool_calls":[{"index":0,"id":"t1","type":"function","function":{"name":"f","arguments":"{\"a\""}}]}"#, "null")),
            format!("{}\n\n", c(r#"{"tool_calls":[{"index":0,"function":{"arguments":":1}"}}]}"#, r#""tool_calls""#)),
            r#"data: {"id":"c9","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#.to_string() + "\n\ndata: [DO",
            "NE]\n\n".to_string(),
        ];
        let refs: Vec<&str> = chunks.iter().map(String::as_str).collect();
        let forwarded = pass_all(&mut answer, &refs).await;
        // Everything went through (with the answering model's name) except the [DONE] line,
        // held whole although it came in two chunks.
        assert!(
            forwarded.ends_with("\"total_tokens\":5}}\n\n"),
            "{forwarded:?}"
        );
        assert!(forwarded.contains("\"model\":\"chosen\"") && !forwarded.contains("\"up\""));
        assert_eq!(answer.held(), b"data: [DONE]\n\n");
        let v = answer.assemble("chosen").unwrap();
        assert_eq!(v["id"], "c9");
        assert_eq!(v["model"], "chosen");
        assert_eq!(v["created"], 7);
        assert_eq!(v["choices"][0]["message"]["content"], "Hello");
        assert_eq!(
            v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(v["usage"]["total_tokens"], 5);
    }

    #[tokio::test]
    async fn a_last_done_without_its_newline_still_ends_the_stream() {
        let mut answer = StreamedAnswer::default();
        let event =
            "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n";
        let out = pass_all(&mut answer, &[event, "data: [DONE]"]).await;
        assert_eq!(out, event);
        assert_eq!(answer.held(), b"data: [DONE]");
        assert!(answer.assemble("m").is_ok());
    }

    #[tokio::test]
    async fn errors_and_empty_streams_are_not_stored() {
        let mut answer = StreamedAnswer::default();
        pass_all(
            &mut answer,
            &["data: {\"error\":{\"message\":\"boom\"}}\n\n"],
        )
        .await;
        assert!(answer.assemble("m").unwrap_err().contains("boom"));
        let answer = StreamedAnswer::default();
        assert!(answer.assemble("m").is_err());
        let mut answer = StreamedAnswer::default();
        pass_all(&mut answer, &["data: {\"id\":\"x\",\"choices\":[]}\n\n"]).await;
        assert!(answer.assemble("m").unwrap_err().contains("[DONE]"));
    }
}
