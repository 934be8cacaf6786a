//! Stored completions in the server: the `store` and `metadata` request fields, persisting an
//! answer (a JSON body, or one assembled from a stream), and the stored-completions API.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::Json;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use router_store::{
    openai_list, Completion, ListQuery, MessageQuery, Metadata, NewCompletion, Order, Store,
    StoreError, Usage, ROUTER_OWNER,
};
use serde_json::{json, Map, Value};

use crate::app::{parse_body, AppState, Caller};
use crate::chat::ChatRequest;
use crate::record::{cost_of, insert, Outcome};
use crate::shadow::{Original, ShadowJob};
use crate::ApiError;

/// What becomes of an exchange once its answer is complete: stored (`"store": true`),
/// shadowed (`[shadow]` sampled it), or both. Carried until the answer is complete.
pub(crate) struct StoreJob {
    pub owner: String,
    pub metadata: Metadata,
    /// The request body as forwarded (without `store`, `metadata` and `router`).
    pub request: Map<String, Value>,
    /// The routing decision (JSON); `None` for a request that named its model.
    pub decision: Option<Value>,
    pub started: Instant,
    /// The client asked to store it (`"store": true`).
    pub asked: bool,
    /// Shadowed: the request's estimated prompt tokens.
    pub shadow: Option<usize>,
}

/// Whether the client asked to store the exchange (`store: true`); a 400 on a server without
/// `[store]`. (`store` and `metadata` are the router's: [`ChatRequest`] never forwards them.)
pub(crate) fn asked_to_store(request: &ChatRequest, configured: bool) -> Result<bool, ApiError> {
    let asked = request.store.unwrap_or(false);
    if asked && !configured {
        return Err(ApiError::StoreNotConfigured {
            param: Some("store"),
        });
    }
    Ok(asked)
}

/// The record of an exchange, by `job.owner`.
fn new_record(
    state: &AppState,
    job: &StoreJob,
    response: Value,
    model: &str,
    deployment: &str,
    fallback_cost: f64,
) -> NewCompletion {
    let usage = Usage::from_response(&response);
    let cost = match state.routing().catalog().get(model) {
        Some(spec) => cost_of(spec, usage, fallback_cost),
        None => fallback_cost,
    };
    NewCompletion {
        id: response
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_string),
        owner: job.owner.clone(),
        // When the answer was complete (OpenAI's `created`); lists sort by it.
        created_at_ms: router_store::now_ms(),
        request: job.request.clone(),
        response,
        metadata: job.metadata.clone(),
        decision: job.decision.clone(),
        model: model.to_string(),
        deployment: deployment.to_string(),
        usage,
        cost_usd: cost,
        latency_ms: u64::try_from(job.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        shadow_of: None,
    }
}

/// The complete answer of `job`'s exchange: stored when the client asked (committed before
/// it returns, outcome counted), and the shadow job when it is shadowed.
pub(crate) async fn finish(
    state: &AppState,
    job: StoreJob,
    response: Value,
    model: &str,
    deployment: &str,
    fallback_cost: f64,
) -> (Option<Outcome>, Option<ShadowJob>) {
    let record = new_record(state, &job, response, model, deployment, fallback_cost);
    let (outcome, unstored) = match (job.asked, job.shadow.is_some()) {
        (true, true) => (Some(record.clone()), Some(record)),
        (true, false) => (Some(record), None),
        (false, _) => (None, Some(record)),
    };
    let outcome = match outcome {
        Some(record) => {
            let outcome = insert(state.store(), state.metrics(), record)
                .await
                .map_or_else(|e| e, Outcome::Stored);
            state.metrics().store(outcome.metric());
            Some(outcome)
        }
        None => None,
    };
    let shadow = job.shadow.zip(unstored).map(|(prompt_tokens, record)| {
        let original = match &outcome {
            Some(Outcome::Stored(inserted)) => Original::Stored(inserted.id.clone()),
            // Kept for the shadows only: the router's, not the client's.
            _ => Original::Unstored(Box::new(NewCompletion {
                owner: ROUTER_OWNER.to_string(),
                ..record
            })),
        };
        ShadowJob {
            original,
            request: job.request,
            metadata: job.metadata,
            answered_by: model.to_string(),
            prompt_tokens,
        }
    });
    (outcome, shadow)
}

/// Counts a `"store": true` request that had nothing to store.
pub(crate) fn skipped(state: &AppState, why: String) -> Outcome {
    state.metrics().store("skipped");
    Outcome::Skipped(why)
}

// ---------------------------------------------------------------------------------------------
// Streams

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

/// Reads an OpenAI chat-completions SSE stream as it passes: assembles the final message and
/// holds back the `data: [DONE]` line (and whatever follows it) until the record is stored.
#[derive(Default)]
pub(crate) struct SseAssembler {
    line: Vec<u8>,
    data: String,
    holding: bool,
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

impl SseAssembler {
    /// Reads `chunk` and returns the part to forward now: all of it, except from the start of
    /// a `data: [DONE]` line on (held until [`SseAssembler::finish`]).
    pub fn feed(&mut self, chunk: Bytes) -> Bytes {
        if self.holding {
            self.held.extend_from_slice(&chunk);
            return Bytes::new();
        }
        let mut line_start = 0;
        for (i, &b) in chunk.iter().enumerate() {
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if self.on_line(&line) {
                    self.holding = true;
                    self.held.extend_from_slice(&chunk[line_start..]);
                    return chunk.slice(..line_start);
                }
                line_start = i + 1;
            } else {
                self.line.push(b);
            }
        }
        chunk
    }

    /// The end of the stream: reads what is left and returns the held bytes.
    pub fn finish(&mut self) -> Bytes {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            // A last `data: [DONE]` without its newline still ends the stream properly.
            self.holding |= self.on_line(&line);
        }
        self.dispatch();
        Bytes::from(std::mem::take(&mut self.held))
    }

    /// One line; true for `data: [DONE]`.
    fn on_line(&mut self, line: &[u8]) -> bool {
        if line.is_empty() {
            self.dispatch();
            return false;
        }
        let Ok(text) = std::str::from_utf8(line) else {
            return false;
        };
        if let Some(rest) = text.strip_prefix("data:") {
            let rest = rest.strip_prefix(' ').unwrap_or(rest);
            if rest.trim() == "[DONE]" {
                self.dispatch();
                return true;
            }
            if !self.data.is_empty() {
                self.data.push('\n');
            }
            self.data.push_str(rest);
        }
        false
    }

    fn dispatch(&mut self) {
        if self.data.is_empty() {
            return;
        }
        let data = std::mem::take(&mut self.data);
        if let Ok(value) = serde_json::from_str::<Value>(&data) {
            self.absorb(&value);
        }
    }

    fn absorb(&mut self, chunk: &Value) {
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
            self.system_fingerprint = chunk
                .get("system_fingerprint")
                .filter(|v| !v.is_null())
                .cloned();
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(usage.clone());
        }
        for choice in chunk
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
            let acc = self.choices.entry(index).or_default();
            if let Some(delta) = choice.get("delta") {
                if let Some(role) = delta.get("role").and_then(Value::as_str) {
                    acc.role = Some(role.to_string());
                }
                push_str(
                    &mut acc.content,
                    delta.get("content").and_then(Value::as_str),
                );
                push_str(
                    &mut acc.refusal,
                    delta.get("refusal").and_then(Value::as_str),
                );
                for call in delta
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let i = call.get("index").and_then(Value::as_u64).unwrap_or(0);
                    let t = acc.tool_calls.entry(i).or_default();
                    if let Some(id) = call.get("id").and_then(Value::as_str) {
                        t.id = Some(id.to_string());
                    }
                    if let Some(kind) = call.get("type").and_then(Value::as_str) {
                        t.kind = Some(kind.to_string());
                    }
                    if let Some(f) = call.get("function") {
                        t.name
                            .push_str(f.get("name").and_then(Value::as_str).unwrap_or(""));
                        t.arguments
                            .push_str(f.get("arguments").and_then(Value::as_str).unwrap_or(""));
                    }
                }
            }
            if let Some(reason) = choice.get("finish_reason").filter(|r| !r.is_null()) {
                acc.finish_reason = Some(reason.clone());
            }
        }
    }

    /// The assembled `chat.completion`, or why there is none.
    pub fn assemble(&self, model: &str) -> Result<Value, String> {
        if let Some(error) = &self.error {
            return Err(format!("the stream carried an error: {error}"));
        }
        if self.chunks == 0 {
            return Err("the stream had no chunks".into());
        }
        if !self.holding {
            // The backend ended the stream early: a half answer is not an answer.
            return Err("the stream ended before `data: [DONE]`".into());
        }
        let choices: Vec<Value> = self
            .choices
            .iter()
            .map(|(index, c)| {
                let mut message = Map::new();
                message.insert(
                    "role".into(),
                    Value::String(c.role.clone().unwrap_or_else(|| "assistant".into())),
                );
                message.insert(
                    "content".into(),
                    c.content.clone().map_or(Value::Null, Value::String),
                );
                if let Some(refusal) = &c.refusal {
                    message.insert("refusal".into(), Value::String(refusal.clone()));
                }
                if !c.tool_calls.is_empty() {
                    let calls: Vec<Value> = c
                        .tool_calls
                        .values()
                        .map(|t| {
                            json!({"id": t.id, "type": t.kind.clone().unwrap_or_else(|| "function".into()),
                                "function": {"name": t.name, "arguments": t.arguments}})
                        })
                        .collect();
                    message.insert("tool_calls".into(), Value::Array(calls));
                }
                json!({"index": index, "message": message,
                    "finish_reason": c.finish_reason.clone().unwrap_or(Value::Null)})
            })
            .collect();
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

struct Tap {
    state: Arc<AppState>,
    upstream: BoxStream<'static, Result<Bytes, reqwest::Error>>,
    sse: SseAssembler,
    job: StoreJob,
    model: String,
    deployment: String,
    cost: f64,
}

/// Where a tapped stream is: passing chunks, or sent its last bytes with a shadow to queue.
enum TapState {
    Passing(Box<Tap>),
    Ended(Arc<AppState>, Option<Box<ShadowJob>>),
}

/// Forwards a stream chunk by chunk while assembling it; at its end stores the record (when
/// the client asked), then sends the held `data: [DONE]` and an SSE comment
/// `: x-router-store: <outcome>` (only when the client asked: a shadowed stream reaches the
/// client unchanged), and last, once those bytes are out, queues the shadow. A stream that
/// breaks off, or a client that goes away, stores and shadows nothing.
pub(crate) fn tap(
    state: Arc<AppState>,
    upstream: BoxStream<'static, Result<Bytes, reqwest::Error>>,
    job: StoreJob,
    model: String,
    deployment: String,
    cost: f64,
) -> impl Stream<Item = Result<Bytes, reqwest::Error>> + Send + 'static {
    let tap = Tap {
        state,
        upstream,
        sse: SseAssembler::default(),
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
                    shadows.submit(&state, *job);
                }
                return None;
            }
        };
        loop {
            match tap.upstream.next().await {
                Some(Ok(chunk)) => {
                    let now = tap.sse.feed(chunk);
                    if !now.is_empty() {
                        return Some((Ok(now), Some(TapState::Passing(tap))));
                    }
                }
                Some(Err(e)) => {
                    if tap.job.asked {
                        skipped(&tap.state, "the stream broke off".into());
                    }
                    return Some((Err(e), None));
                }
                None => {
                    let held = tap.sse.finish();
                    let Tap {
                        state,
                        sse,
                        job,
                        model,
                        deployment,
                        cost,
                        ..
                    } = *tap;
                    let asked = job.asked;
                    let (outcome, shadow) = match sse.assemble(&model) {
                        Ok(response) => {
                            finish(&state, job, response, &model, &deployment, cost).await
                        }
                        Err(why) => (asked.then(|| skipped(&state, why)), None),
                    };
                    let mut out = held.to_vec();
                    if let Some(outcome) = outcome {
                        out.extend_from_slice(
                            format!(": x-router-store: {}\n\n", outcome.header_value()).as_bytes(),
                        );
                    }
                    return Some((
                        Ok(Bytes::from(out)),
                        Some(TapState::Ended(state, shadow.map(Box::new))),
                    ));
                }
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// The stored-completions API

/// Maps a store error to the API error.
pub(crate) fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::InvalidQuery { param, .. } => ApiError::invalid(e.to_string(), Some(param)),
        StoreError::Metadata(_) => ApiError::InvalidMetadata(e.to_string()),
        StoreError::Full { .. } | StoreError::TooLarge { .. } => ApiError::StoreFull(e.to_string()),
        other => ApiError::StoreFailed(other.to_string()),
    }
}

/// Runs `f` on the store off the async runtime.
async fn blocking<T, F>(state: &AppState, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
{
    let store = state
        .store()
        .cloned()
        .ok_or(ApiError::StoreNotConfigured { param: None })?;
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| ApiError::Internal(format!("the store task failed: {e}")))?
        .map_err(store_error)
}

#[derive(Default)]
struct Query {
    model: Option<String>,
    metadata: Vec<(String, String)>,
    after: Option<String>,
    limit: Option<usize>,
    order: Order,
}

/// Reads `after`, `limit`, `order`, and with `filters` also `model` and `metadata[KEY]=VALUE`.
fn parse_query(raw: Option<&str>, filters: bool) -> Result<Query, ApiError> {
    let mut q = Query::default();
    for (key, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "after" => q.after = Some(value.into_owned()),
            "limit" => {
                q.limit = Some(value.parse::<usize>().map_err(|_| {
                    ApiError::invalid(
                        format!("`limit` must be an integer between 1 and 100, got `{value}`"),
                        Some("limit"),
                    )
                })?)
            }
            "order" => q.order = value.parse().map_err(store_error)?,
            "model" if filters => q.model = Some(value.into_owned()),
            k if filters && k.starts_with("metadata[") && k.ends_with(']') && k.len() > 10 => {
                let name = &k["metadata[".len()..k.len() - 1];
                if q.metadata.iter().any(|(n, _)| n == name) {
                    return Err(ApiError::invalid(
                        format!("`metadata[{name}]` is given twice"),
                        Some("metadata"),
                    ));
                }
                q.metadata.push((name.to_string(), value.into_owned()));
            }
            other => {
                let expected = if filters {
                    "model, metadata[KEY], after, limit, order"
                } else {
                    "after, limit, order"
                };
                return Err(ApiError::invalid(
                    format!("unknown query parameter `{other}` (expected {expected})"),
                    Some(other),
                ));
            }
        }
    }
    Ok(q)
}

/// `GET /v1/chat/completions`: the caller's stored completions.
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let q = parse_query(raw.as_deref(), true)?;
    let query = ListQuery {
        owner: Some(caller.0),
        model: q.model,
        metadata: q.metadata,
        after: q.after,
        limit: q.limit,
        order: q.order,
        // A client's list means what it meant before shadows: shadow answers stay out.
        include_shadows: false,
    };
    let page = blocking(&state, move |s| s.list(&query)).await?;
    let data = page.data.iter().map(Completion::to_openai).collect();
    Ok(Json(openai_list(data, page.has_more)))
}

/// `GET /v1/chat/completions/{id}`.
pub(crate) async fn get_one(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let key = id.clone();
    let found = blocking(&state, move |s| s.get(Some(&caller.0), &key)).await?;
    found
        .map(|c| Json(c.to_openai()))
        .ok_or(ApiError::CompletionNotFound(id))
}

/// `GET /v1/chat/completions/{id}/messages`: the request messages, paged.
pub(crate) async fn messages(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let q = parse_query(raw.as_deref(), false)?;
    let query = MessageQuery {
        after: q.after,
        limit: q.limit,
        order: q.order,
    };
    let key = id.clone();
    let page = blocking(&state, move |s| s.messages(Some(&caller.0), &key, &query)).await?;
    let page = page.ok_or(ApiError::CompletionNotFound(id))?;
    Ok(Json(openai_list(page.data, page.has_more)))
}

/// `POST /v1/chat/completions/{id}` with `{"metadata": {...}}`: replaces the metadata.
pub(crate) async fn update(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = parse_body(body)?;
    if let Some(other) = body.keys().find(|k| k.as_str() != "metadata") {
        return Err(ApiError::invalid(
            format!("unknown parameter `{other}`: only `metadata` can be modified"),
            Some(other),
        ));
    }
    let Some(value) = body.get("metadata") else {
        return Err(ApiError::invalid(
            "missing required parameter: `metadata`",
            Some("metadata"),
        ));
    };
    let metadata =
        Metadata::from_json(value).map_err(|e| ApiError::InvalidMetadata(e.to_string()))?;
    let key = id.clone();
    let updated = blocking(&state, move |s| {
        s.update_metadata(Some(&caller.0), &key, &metadata)
    })
    .await?;
    updated
        .map(|c| Json(c.to_openai()))
        .ok_or(ApiError::CompletionNotFound(id))
}

/// `DELETE /v1/chat/completions/{id}`.
pub(crate) async fn delete(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let key = id.clone();
    if blocking(&state, move |s| s.delete(Some(&caller.0), &key)).await? {
        Ok(Json(
            json!({"object": "chat.completion.deleted", "id": id, "deleted": true}),
        ))
    } else {
        Err(ApiError::CompletionNotFound(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(sse: &mut SseAssembler, chunks: &[&str]) -> String {
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&sse.feed(Bytes::from(c.to_string())));
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn assembles_content_tools_and_usage_and_holds_done() {
        let mut sse = SseAssembler::default();
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
        let forwarded = feed_all(&mut sse, &refs);
        // Everything went through except the end of the [DONE] line, which completes it.
        assert!(forwarded.ends_with("\n\ndata: [DO"), "{forwarded:?}");
        assert!(forwarded.contains("prompt_tokens"));
        let held = sse.finish();
        assert_eq!(&held[..], b"NE]\n\n");
        // A [DONE] line that arrives whole is held whole.
        let mut whole = SseAssembler::default();
        let out = feed_all(
            &mut whole,
            &[&format!(
                "{}\n\ndata: [DONE]\n\n",
                c(r#"{"content":"x"}"#, "null")
            )],
        );
        assert!(out.ends_with("}\n\n") && !out.contains("DONE"), "{out:?}");
        assert_eq!(&whole.finish()[..], b"data: [DONE]\n\n");
        let v = sse.assemble("chosen").unwrap();
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

    #[test]
    fn done_split_mid_line_holds_the_rest() {
        let mut sse = SseAssembler::default();
        let out = feed_all(
            &mut sse,
            &["data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\ndata: [DONE]", "\n\n"],
        );
        // The [DONE] line was complete only with the second chunk, so the whole line is held
        // from its start in the first chunk... which was already forwarded up to "data: [DONE]".
        assert!(out.ends_with("data: [DONE]"), "{out:?}");
        assert_eq!(&sse.finish()[..], b"\n\n");
        assert!(sse.assemble("m").is_ok());
    }

    #[test]
    fn errors_and_empty_streams_are_not_stored() {
        let mut sse = SseAssembler::default();
        feed_all(&mut sse, &["data: {\"error\":{\"message\":\"boom\"}}\n\n"]);
        sse.finish();
        assert!(sse.assemble("m").unwrap_err().contains("boom"));
        let mut sse = SseAssembler::default();
        sse.finish();
        assert!(sse.assemble("m").is_err());
        let mut sse = SseAssembler::default();
        feed_all(&mut sse, &["data: {\"id\":\"x\",\"choices\":[]}\n\n"]);
        sse.finish();
        assert!(sse.assemble("m").unwrap_err().contains("[DONE]"));
    }

    #[test]
    fn store_true_needs_a_store() {
        let parse = |v: Value| ChatRequest::from_slice(v.to_string().as_bytes()).unwrap();
        let asked = parse(json!({"messages": [{"role": "user"}], "store": true}));
        assert_eq!(asked_to_store(&asked, true), Ok(true));
        let e = asked_to_store(&asked, false).unwrap_err();
        assert_eq!(
            (e.status().as_u16(), e.code(), e.param()),
            (400, Some("store_not_configured"), Some("store"))
        );
        let not_asked = parse(json!({"messages": [{"role": "user"}], "metadata": {"a": "b"}}));
        assert_eq!(asked_to_store(&not_asked, false), Ok(false));
        assert!(not_asked.forwarded().get("metadata").is_none());
    }

    #[test]
    fn query_parsing() {
        let q = parse_query(
            Some("model=m&metadata%5Btask%5D=a%20b&metadata[u]=1&after=x&limit=5&order=desc"),
            true,
        )
        .unwrap();
        assert_eq!(q.model.as_deref(), Some("m"));
        assert_eq!(
            q.metadata,
            vec![
                ("task".to_string(), "a b".to_string()),
                ("u".into(), "1".into())
            ]
        );
        assert_eq!(
            (q.after.as_deref(), q.limit, q.order),
            (Some("x"), Some(5), Order::Desc)
        );
        assert_eq!(
            parse_query(Some("metadata[a]=1&metadata[a]=2"), true)
                .err()
                .and_then(|e| e.param().map(str::to_string)),
            Some("metadata".into())
        );
        assert_eq!(
            parse_query(Some("limit=ten"), true)
                .err()
                .and_then(|e| e.param().map(str::to_string)),
            Some("limit".into())
        );
        assert_eq!(
            parse_query(Some("order=up"), true)
                .err()
                .and_then(|e| e.param().map(str::to_string)),
            Some("order".into())
        );
        assert_eq!(
            parse_query(Some("model=m"), false)
                .err()
                .and_then(|e| e.param().map(str::to_string)),
            Some("model".into())
        );
        assert_eq!(
            parse_query(Some("colour=red"), true)
                .err()
                .and_then(|e| e.param().map(str::to_string)),
            Some("colour".into())
        );
    }
}
