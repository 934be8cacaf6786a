//! Stored completions in the server: `store: true`, persisting an answer (a JSON body, or one
//! assembled from a stream by [`crate::streamed`]), and the stored-completions API.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::Json;
use router_store::{
    openai_list, Completion, ListQuery, MessageQuery, Metadata, NewCompletion, Order, Store,
    StoreError, Usage, ROUTER_OWNER,
};
use serde_json::{json, Map, Value};

use crate::chat::ChatRequest;
use crate::record::{cost_of, insert, Outcome};
use crate::shadow::{Original, ShadowJob};
use crate::state::{AppState, Caller};
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

/// A JSON object body.
fn parse_body(body: Result<Bytes, BytesRejection>) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(&body?) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::invalid(
            "the request body must be a JSON object",
            None,
        )),
        Err(e) => Err(ApiError::invalid(
            format!("the request body is not valid JSON: {e}"),
            None,
        )),
    }
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
        for (query, filters, param) in [
            ("metadata[a]=1&metadata[a]=2", true, "metadata"),
            ("limit=ten", true, "limit"),
            ("order=up", true, "order"),
            ("model=m", false, "model"),
            ("colour=red", true, "colour"),
        ] {
            let e = parse_query(Some(query), filters).err();
            assert_eq!(e.as_ref().and_then(ApiError::param), Some(param), "{query}");
        }
    }
}
