//! Server-sent events from a backend, read once: line by line, each `data:` line parsed once,
//! for the model-name rewrite, the usage count (`crate::usage`) and the store's assembly of a
//! streamed answer (`crate::streamed`).
//!
//! A JSON response gets the catalog name of the model that answered in its `model` field; a stream
//! gets the same in every `data:` event, so that streamed and unstreamed answers say the same thing
//! (a backend reports its own name, e.g. an Azure deployment's model or a provider's model id).
//! Lines go out as they complete: a complete line goes out with the chunk that completed it, so
//! nothing waits for the stream to end. Each `data:` line is one event's JSON, as OpenAI and the
//! compatible backends send it.

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use serde_json::{Map, Value};

/// One complete line of an upstream event stream.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Line {
    /// The bytes that go to the client, line ending included (a JSON event with the answering
    /// model's name; every other line as it came).
    pub(crate) bytes: Vec<u8>,
    /// What the line says.
    pub(crate) event: Event,
}

/// What a line of the stream says.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Event {
    /// A `data:` line holding a JSON object (a chunk, or an error).
    Data(Map<String, Value>),
    /// `data: [DONE]`.
    Done,
    /// Anything else: a comment, an `event:` or `id:` field, a blank line, data that is not a
    /// JSON object.
    Other,
}

/// Splits a byte stream into lines.
struct Reader {
    /// The unfinished last line.
    partial: Vec<u8>,
    /// The answering model's catalog name.
    model: String,
}

impl Reader {
    /// The lines that `chunk` completes.
    fn read(&mut self, chunk: &[u8]) -> Vec<Line> {
        self.partial.extend_from_slice(chunk);
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Vec::new();
        };
        let rest = self.partial.split_off(end + 1);
        let complete = std::mem::replace(&mut self.partial, rest);
        complete
            .split_inclusive(|&b| b == b'\n')
            .map(|raw| line(raw, &self.model))
            .collect()
    }

    /// The unfinished last line, at the end of the stream.
    fn rest(&mut self) -> Option<Line> {
        let raw = std::mem::take(&mut self.partial);
        (!raw.is_empty()).then(|| line(&raw, &self.model))
    }
}

/// Reads one raw line (with its line ending, if any).
fn line(raw: &[u8], model: &str) -> Line {
    let body_end = raw.len()
        - raw
            .iter()
            .rev()
            .take_while(|&&b| b == b'\n' || b == b'\r')
            .count();
    let as_it_came = |event| Line {
        bytes: raw.to_vec(),
        event,
    };
    let Some(payload) = raw[..body_end].strip_prefix(b"data:") else {
        return as_it_came(Event::Other);
    };
    let payload = payload.trim_ascii();
    if payload == b"[DONE]" {
        return as_it_came(Event::Done);
    }
    let Ok(Value::Object(mut event)) = serde_json::from_slice::<Value>(payload) else {
        return as_it_came(Event::Other);
    };
    let Some(slot) = event.get_mut("model") else {
        return as_it_came(Event::Data(event));
    };
    *slot = Value::String(model.to_string());
    let mut bytes = b"data: ".to_vec();
    bytes.extend_from_slice(Value::Object(event.clone()).to_string().as_bytes());
    bytes.extend_from_slice(&raw[body_end..]);
    Line {
        bytes,
        event: Event::Data(event),
    }
}

/// The upstream read line by line, with `model` in each JSON event: an item for each upstream
/// chunk that completes lines (and, at the end, the unfinished last line); errors as they come.
pub(crate) fn lines(
    upstream: BoxStream<'static, reqwest::Result<Bytes>>,
    model: String,
) -> BoxStream<'static, reqwest::Result<Vec<Line>>> {
    let reader = Reader {
        partial: Vec::new(),
        model,
    };
    stream::unfold(Some((upstream, reader)), |state| async move {
        let (mut upstream, mut reader) = state?;
        loop {
            match upstream.next().await {
                Some(Ok(chunk)) => {
                    let lines = reader.read(&chunk);
                    if !lines.is_empty() {
                        return Some((Ok(lines), Some((upstream, reader))));
                    }
                }
                Some(Err(error)) => return Some((Err(error), Some((upstream, reader)))),
                None => return reader.rest().map(|tail| (Ok(vec![tail]), None)),
            }
        }
    })
    .boxed()
}

/// The lines' bytes, one after the other.
pub(crate) fn join(lines: Vec<Line>) -> Bytes {
    Bytes::from(lines.into_iter().flat_map(|l| l.bytes).collect::<Vec<u8>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(chunks: &[&str]) -> BoxStream<'static, reqwest::Result<Bytes>> {
        let chunks: Vec<reqwest::Result<Bytes>> = chunks
            .iter()
            .map(|c| Ok(Bytes::from(c.to_string())))
            .collect();
        stream::iter(chunks).boxed()
    }

    async fn run(chunks: &[&str]) -> (Vec<String>, String) {
        let out: Vec<String> = lines(upstream(chunks), "catalog-name".into())
            .map(|lines| String::from_utf8(join(lines.expect("ok")).to_vec()).expect("utf-8"))
            .collect()
            .await;
        let all = out.concat();
        (out, all)
    }

    #[tokio::test]
    async fn sets_the_model_of_each_event_and_keeps_the_rest() {
        let (out, all) = run(&[
            // (Keys in serde_json's order: a rewritten event is re-serialised.)
            "data: {\"choices\":[],\"id\":\"a\",\"model\":\"upstream\"}\n\n",
            ": a comment\r\nevent: x\r\ndata: {\"model\":\"upstream\"}\r\n\r\n",
            "data: [DONE]\n\n",
        ])
        .await;
        assert_eq!(
            out.len(),
            3,
            "one output chunk per complete input chunk: {out:?}"
        );
        assert_eq!(
            all,
            "data: {\"choices\":[],\"id\":\"a\",\"model\":\"catalog-name\"}\n\n\
             : a comment\r\nevent: x\r\ndata: {\"model\":\"catalog-name\"}\r\n\r\n\
             data: [DONE]\n\n"
        );
    }

    #[tokio::test]
    async fn lines_split_across_chunks_are_joined_first() {
        let (out, all) = run(&[
            "data: {\"mod",
            "el\":\"up\"}\n",
            "\ndata: {\"x\":1}\n\ntrailing",
        ])
        .await;
        assert_eq!(
            all,
            "data: {\"model\":\"catalog-name\"}\n\ndata: {\"x\":1}\n\ntrailing"
        );
        assert_eq!(
            out.last().map(String::as_str),
            Some("trailing"),
            "the unfinished tail goes out at the end"
        );
    }

    #[test]
    fn each_line_is_read_once_for_what_it_says() {
        let mut reader = Reader {
            partial: Vec::new(),
            model: "m".into(),
        };
        let lines = reader
            .read(b"data: {\"id\":\"x\"}\n: c\ndata: [DONE]\r\ndata: not json\n\ndata: {\"mo");
        let events: Vec<&Event> = lines.iter().map(|l| &l.event).collect();
        let chunk: Map<String, Value> = serde_json::from_str("{\"id\":\"x\"}").expect("json");
        assert_eq!(
            events,
            [
                &Event::Data(chunk),
                &Event::Other,
                &Event::Done,
                &Event::Other,
                &Event::Other
            ]
        );
        assert_eq!(
            lines[0].bytes, b"data: {\"id\":\"x\"}\n",
            "an event without `model` goes out as it came"
        );
        let tail = reader
            .read(b"del\":\"up\"}")
            .into_iter()
            .chain(reader.rest())
            .collect::<Vec<_>>();
        assert_eq!(tail.len(), 1);
        assert_eq!(
            tail[0].bytes, b"data: {\"model\":\"m\"}",
            "a last line without its newline"
        );
        assert!(matches!(&tail[0].event, Event::Data(e) if e["model"] == "m"));
        assert_eq!(reader.rest(), None);
    }
}
