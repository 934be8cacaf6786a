//! The chat pipeline's answer: what a deployment sent back becomes the client's response, a
//! stream passed on as it comes or a JSON body, stored on the way when asked.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use router_dispatch::Dispatched;
use router_policy::Decision;
use serde_json::{Map, Value};

use crate::record::Outcome;
use crate::request_log::Ctx;
use crate::shadow::ShadowJob;
use crate::shadow_worker;
use crate::sse;
use crate::state::AppState;
use crate::stored::{self, StoreJob};
use crate::streamed;
use crate::upstream::Failure;
use crate::usage::Answering;

/// What the pipeline knows of the answer it waits for.
pub(crate) struct Reply<'a> {
    /// The catalog name of the model asked.
    pub(crate) model: &'a str,
    /// The decision, when the client asked to have it explained.
    pub(crate) explained: Option<&'a Decision>,
    /// `stream: true`.
    pub(crate) stream: bool,
    /// The estimated cost.
    pub(crate) cost: f64,
    /// The record to store or shadow once the answer is complete.
    pub(crate) job: Option<StoreJob>,
}

/// The client's response to a dispatched request: an upstream failure as the router's own
/// error, else the backend's status with its stream or body (the model's catalog name in it).
pub(crate) async fn respond(
    state: &Arc<AppState>,
    d: Dispatched,
    mut reply: Reply<'_>,
    ctx: &mut Ctx,
) -> Response {
    ctx.spillover = d.spillover_from.is_some();
    let usage = state
        .usage
        .as_ref()
        .map(|u| u.dispatched(&d, reply.model, ctx.prompt_tokens));
    state.metrics.upstream(&d.deployment, d.latency);
    let mut headers = HeaderMap::new();
    set_header(&mut headers, "x-router-model", reply.model);
    set_header(&mut headers, "x-router-deployment", &d.deployment);
    if let Some(from) = &d.spillover_from {
        set_header(&mut headers, "x-ms-spillover-from-deployment", from);
    }
    let status = d.response.status().as_u16();
    if let Some(failure) = Failure::of_status(status) {
        return upstream_failed(state, reply.job, &d.deployment, failure, headers);
    }
    // (`x-request-id` is the router's: the request_id middleware sets it.)
    for name in [header::CONTENT_TYPE, header::RETRY_AFTER] {
        if let Some(v) = d.response.headers().get(&name) {
            headers.insert(name, v.clone());
        }
    }
    if let Some(decision) = reply.explained {
        set_header(&mut headers, "x-router-decision", &ascii_json(decision));
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let body = if reply.stream && status.is_success() {
        stream_body(state, d, &mut reply, usage, &mut headers)
    } else {
        match whole_body(state, d, status, reply, usage, &mut headers).await {
            Ok(body) => body,
            Err(failed) => return failed,
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// A successful stream, passed on line by line through the one SSE reader; tapped for the
/// store (or a shadow) when there is a job.
fn stream_body(
    state: &Arc<AppState>,
    d: Dispatched,
    reply: &mut Reply<'_>,
    usage: Option<Answering>,
    headers: &mut HeaderMap,
) -> Body {
    state.metrics.cost(reply.model, reply.cost);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    let events = d.response.bytes_stream().boxed();
    let mut lines = sse::lines(events, reply.model.to_string());
    if let Some(usage) = usage {
        lines = usage.stream(lines);
    }
    let Some(job) = reply.job.take() else {
        return Body::from_stream(lines.map(|lines| lines.map(sse::join)));
    };
    if job.asked {
        // Stored at the end of the stream, before the held `data: [DONE]`.
        set_header(headers, "x-router-store", "pending");
    }
    let (model, deployment) = (reply.model.to_string(), d.deployment);
    Body::from_stream(streamed::tap(
        state.clone(),
        lines,
        job,
        model,
        deployment,
        reply.cost,
    ))
}

/// A whole body: a chat completion (else a failure), or the backend's own 4xx as it came.
async fn whole_body(
    state: &Arc<AppState>,
    d: Dispatched,
    status: StatusCode,
    mut reply: Reply<'_>,
    usage: Option<Answering>,
    headers: &mut HeaderMap,
) -> Result<Body, Response> {
    let deployment = d.deployment.clone();
    let completion = match read_answer(state, d).await {
        Ok(bytes) if !status.is_success() => {
            // The backend's own 4xx (a context too long, a bad parameter): the client's to read.
            if reply.job.take().is_some_and(|job| job.asked) {
                let why = format!("the backend answered {}", status.as_u16());
                let outcome = stored::skipped(state, why);
                set_header(headers, "x-router-store", &outcome.header_value());
            }
            return Ok(Body::from(bytes));
        }
        Ok(bytes) => Failure::completion(&bytes),
        Err(failure) => Err(failure),
    };
    let object = match completion {
        Ok(object) => object,
        Err(failure) => {
            let headers = std::mem::take(headers);
            return Err(upstream_failed(
                state,
                reply.job,
                &deployment,
                failure,
                headers,
            ));
        }
    };
    state.metrics.cost(reply.model, reply.cost);
    if let Some(usage) = usage {
        usage.json(&object);
    }
    Ok(json_answer(state, object, reply, &deployment, headers).await)
}

/// An upstream answer that is not one ([`Failure`]): counted, not stored, and answered with
/// the router's own OpenAI-shaped error (with `headers`: the model and deployment).
fn upstream_failed(
    state: &AppState,
    job: Option<StoreJob>,
    deployment: &str,
    failure: Failure,
    headers: HeaderMap,
) -> Response {
    state.metrics.upstream_failure(deployment, failure.kind());
    let outcome = job
        .filter(|job| job.asked)
        .map(|_| stored::skipped(state, format!("the backend failed: {}", failure.kind())));
    let mut response = failure.error(deployment).into_response();
    response.headers_mut().extend(headers);
    if let Some(outcome) = outcome {
        let value = outcome.header_value();
        set_header(response.headers_mut(), "x-router-store", &value);
    }
    response
}

/// The whole body of a non-streamed answer, within the dispatch timeout (a second one, after
/// the headers' own) and with no silence longer than the read timeout.
async fn read_answer(state: &AppState, d: Dispatched) -> Result<Bytes, Failure> {
    let options = state.dispatcher.options();
    match tokio::time::timeout(options.timeout, d.response.bytes()).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) if e.is_timeout() => Err(Failure::TimedOut(options.read_timeout)),
        Ok(Err(_)) => Err(Failure::Broken),
        Err(_) => Err(Failure::TimedOut(options.timeout)),
    }
}

/// A successful JSON answer: the model's catalog name in it, stored first when asked
/// (`x-router-store`), the decision in its `router` field when asked, and a shadow queued
/// once the body has gone out.
async fn json_answer(
    state: &Arc<AppState>,
    mut object: Map<String, Value>,
    reply: Reply<'_>,
    deployment: &str,
    headers: &mut HeaderMap,
) -> Body {
    object.insert("model".into(), Value::String(reply.model.to_string()));
    let mut shadow: Option<ShadowJob> = None;
    if let Some(job) = reply.job {
        // Committed before the answer goes out.
        let response = Value::Object(object.clone());
        let (outcome, shadow_job) =
            stored::finish(state, job, response, reply.model, deployment, reply.cost).await;
        if let Some(outcome) = outcome {
            if let Outcome::Stored(inserted) = &outcome {
                object.insert("id".into(), Value::String(inserted.id.clone()));
            }
            set_header(headers, "x-router-store", &outcome.header_value());
        }
        shadow = shadow_job;
    }
    // Asked to explain: the decision also rides in the body, for clients that cannot read
    // response headers (after storing: the record keeps the backend's answer and the decision
    // separately).
    if let Some(decision) = reply.explained {
        // Through text, so that f32 predictions keep their shortest form, as in the header
        // (to_value would widen 0.8431423 to 0.8431422710418701).
        let text = serde_json::to_string(decision).unwrap_or_default();
        if let Ok(explanation) = serde_json::from_str::<Value>(&text) {
            object.insert("router".into(), explanation);
        }
    }
    let json = HeaderValue::from_static("application/json");
    headers.insert(header::CONTENT_TYPE, json);
    let bytes = Bytes::from(serde_json::to_vec(&object).unwrap_or_default());
    match shadow {
        None => Body::from(bytes),
        Some(job) => Body::from_stream(shadow_worker::then_shadow(
            futures_util::stream::iter([Ok::<_, std::convert::Infallible>(bytes)]),
            state.clone(),
            Some(job),
        )),
    }
}

/// Compact JSON with every non-ASCII character escaped, so it fits in a header value.
fn ascii_json(value: &impl serde::Serialize) -> String {
    let text = serde_json::to_string(value).unwrap_or_else(|_| "null".into());
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

fn set_header(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_json_is_ascii() {
        let value = serde_json::json!({"m": "é"});
        assert_eq!(ascii_json(&value), r#"{"m":"\u00e9"}"#);
    }
}
