//! Server-sent events passed through with the answering model's name.
//!
//! A JSON response gets the catalog name of the model that answered in its `model` field; a stream
//! gets the same in every `data:` event, so that streamed and unstreamed answers say the same thing
//! (a backend reports its own name, e.g. an Azure deployment's model or a provider's model id).
//! Events are rewritten line by line as they arrive: a complete line goes out with the chunk that
//! completed it, so nothing waits for the stream to end.

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use serde_json::Value;

/// `events` with each `data: {...}` line's `model` set to `model`; every other byte as it came.
pub(crate) fn with_model(
    events: BoxStream<'static, reqwest::Result<Bytes>>,
    model: String,
) -> BoxStream<'static, reqwest::Result<Bytes>> {
    // The state: the upstream, the unfinished last line, and whether the upstream has ended.
    stream::unfold((events, Vec::new(), false), move |(mut events, mut partial, ended)| {
        let model = model.clone();
        async move {
            if ended {
                return None;
            }
            loop {
                match events.next().await {
                    Some(Ok(chunk)) => {
                        partial.extend_from_slice(&chunk);
                        let Some(end) = partial.iter().rposition(|&b| b == b'\n') else { continue };
                        let rest = partial.split_off(end + 1);
                        let lines = std::mem::replace(&mut partial, rest);
                        return Some((Ok(rewrite_lines(&lines, &model)), (events, partial, false)));
                    }
                    Some(Err(error)) => return Some((Err(error), (events, partial, false))),
                    None if partial.is_empty() => return None,
                    None => {
                        let tail = rewrite_lines(&partial, &model);
                        return Some((Ok(tail), (events, Vec::new(), true)));
                    }
                }
            }
        }
    })
    .boxed()
}

/// Rewrites complete lines (each keeps its own line ending).
fn rewrite_lines(lines: &[u8], model: &str) -> Bytes {
    let mut out = Vec::with_capacity(lines.len() + 32);
    for line in lines.split_inclusive(|&b| b == b'\n') {
        match rewritten(line, model) {
            Some(new) => out.extend_from_slice(&new),
            None => out.extend_from_slice(line),
        }
    }
    Bytes::from(out)
}

/// The line with its event's `model` replaced, if it is a `data:` line holding a JSON object with
/// a `model` field.
fn rewritten(line: &[u8], model: &str) -> Option<Vec<u8>> {
    let body_end = line.len() - line.iter().rev().take_while(|&&b| b == b'\n' || b == b'\r').count();
    let payload = line[..body_end].strip_prefix(b"data:")?;
    let mut event: Value = serde_json::from_slice(payload.trim_ascii_start()).ok()?;
    let slot = event.as_object_mut()?.get_mut("model")?;
    *slot = Value::String(model.to_string());
    let mut new = b"data: ".to_vec();
    new.extend_from_slice(serde_json::to_string(&event).ok()?.as_bytes());
    new.extend_from_slice(&line[body_end..]);
    Some(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(chunks: &[&str]) -> (Vec<String>, String) {
        let upstream: Vec<reqwest::Result<Bytes>> =
            chunks.iter().map(|c| Ok(Bytes::from(c.to_string()))).collect();
        let out: Vec<String> = with_model(stream::iter(upstream).boxed(), "catalog-name".into())
            .map(|chunk| String::from_utf8(chunk.expect("ok").to_vec()).expect("utf-8"))
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
        assert_eq!(out.len(), 3, "one output chunk per complete input chunk: {out:?}");
        assert_eq!(
            all,
            "data: {\"choices\":[],\"id\":\"a\",\"model\":\"catalog-name\"}\n\n\
             : a comment\r\nevent: x\r\ndata: {\"model\":\"catalog-name\"}\r\n\r\n\
             data: [DONE]\n\n"
        );
    }

    #[tokio::test]
    async fn lines_split_across_chunks_are_joined_first() {
        let (out, all) = run(&["data: {\"mod", "el\":\"up\"}\n", "\ndata: {\"x\":1}\n\ntrailing"]).await;
        assert_eq!(all, "data: {\"model\":\"catalog-name\"}\n\ndata: {\"x\":1}\n\ntrailing");
        assert_eq!(out.last().map(String::as_str), Some("trailing"), "the unfinished tail goes out at the end");
    }

    #[test]
    fn leaves_non_json_and_modelless_events_alone() {
        for line in ["data: [DONE]\n", "data: not json\n", "data: {\"no_model\":1}\n", "id: 3\n", "\n"] {
            assert_eq!(rewrite_lines(line.as_bytes(), "m"), Bytes::from(line.to_string()), "{line:?}");
        }
    }
}
