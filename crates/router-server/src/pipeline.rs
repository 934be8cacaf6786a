//! The chat handler, as the pipeline it is: parse → route → dispatch → respond or stream
//! (storing on the way) → log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use router_core::Prediction;
use router_dispatch::{DispatchError, DispatchRequest, Dispatched};
use router_embed::decide_on_prediction;
use router_policy::{estimated_cost, Decision, PolicyError, RouteRequest};
use serde_json::Value;

use crate::chat::{ChatRequest, Conversation, Overrides};
use crate::request_id::RequestId;
use crate::request_log::{record, Ctx};
use crate::respond::{respond, Reply};
use crate::shadow::Shadows;
use crate::state::{AppState, Caller};
use crate::stored::{self, StoreJob};
use crate::{ApiError, Routing, ScoreError};

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Extension(id): Extension<RequestId>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle_chat(state, caller, id, headers, body, None).await
}

/// `POST /openai/deployments/{deployment}/chat/completions`: the deployment names the model.
pub(crate) async fn azure_chat_completions(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Extension(id): Extension<RequestId>,
    Path(deployment): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle_chat(state, caller, id, headers, body, Some(deployment)).await
}

/// `POST /v1/route`: the decision only, nothing sent upstream.
pub(crate) async fn route(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Decision>, ApiError> {
    let request = ChatRequest::from_slice(&body?)?;
    let overrides = request.overrides(&headers)?;
    let conv = request.conversation(state.config.recent_turns);
    let (_, _, decision) = decide(&state, &state.routing(), &conv, &overrides).await?;
    Ok(Json(decision))
}

/// The whole pipeline; the last step logs and counts whatever the others answered.
async fn handle_chat(
    state: Arc<AppState>,
    caller: Caller,
    id: RequestId,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    deployment: Option<String>,
) -> Response {
    let start = Instant::now();
    let mut ctx = Ctx::new(&id);
    let path = match &deployment {
        Some(name) => format!("/openai/deployments/{name}/chat/completions"),
        None => "/v1/chat/completions".to_string(),
    };
    let answered = match parse(&state, caller, &headers, body, deployment, &mut ctx) {
        Ok(prepared) => send(&state, prepared, &mut ctx).await,
        Err(e) => Err(e),
    };
    let response = answered.unwrap_or_else(IntoResponse::into_response);
    record(&state, &path, &response, &ctx, start.elapsed());
    response
}

/// A parsed chat request, ready to send: the body to forward (without `router`, `store` and
/// `metadata`), what routing reads, and what the answer needs.
struct Prepared<'a> {
    /// The model asked for: the router's name or a catalog model.
    requested: String,
    /// The router in use when the request came (kept to its end).
    routing: Arc<Routing>,
    body: Value,
    conv: Conversation,
    overrides: Overrides,
    explain: bool,
    spillover: Option<&'a str>,
    job: Option<StoreJob>,
}

/// Parse: the body into the typed request (once), the headers, and the job of the record to
/// store or shadow.
fn parse<'a>(
    state: &AppState,
    caller: Caller,
    headers: &'a HeaderMap,
    body: Result<Bytes, BytesRejection>,
    deployment: Option<String>,
    ctx: &mut Ctx,
) -> Result<Prepared<'a>, ApiError> {
    let started = Instant::now();
    let request = ChatRequest::from_slice(&body?)?;
    let Some(requested) = deployment.or_else(|| request.model.clone()) else {
        let missing = "missing required parameter: `model`";
        return Err(ApiError::invalid(missing, Some("model")));
    };
    let overrides = request.overrides(headers)?;
    let asked = stored::asked_to_store(&request, state.store.is_some())?;
    let conv = request.conversation(state.config.recent_turns);
    ctx.prompt_tokens = conv.prompt_tokens as u64;
    let spillover = header_str(headers, "x-ms-spillover-deployment");
    if let Some(name) = spillover.filter(|name| state.dispatcher.deployment(name).is_none()) {
        return Err(ApiError::DeploymentNotFound(name.to_string()));
    }
    let body = request.forwarded();
    let routed = requested == state.config.router_name;
    // Only routed requests are shadowed: a pinned model is the client's choice, not the router's.
    let shadowed = routed && state.shadows().is_some_and(Shadows::sample);
    let job = (asked || shadowed).then(|| StoreJob {
        owner: caller.0,
        metadata: request.metadata,
        request: body.clone(),
        decision: None,
        started,
        asked,
        shadow: shadowed.then_some(conv.prompt_tokens),
    });
    Ok(Prepared {
        requested,
        routing: state.routing(),
        body: Value::Object(body),
        conv,
        overrides,
        explain: wants_explain(headers),
        spillover,
        job,
    })
}

/// Route and dispatch (a routed request), or dispatch (a named model); then respond.
async fn send(state: &Arc<AppState>, p: Prepared<'_>, ctx: &mut Ctx) -> Result<Response, ApiError> {
    if p.requested == state.config.router_name {
        send_routed(state, p, ctx).await
    } else {
        send_named(state, p, ctx).await
    }
}

/// A routed request: decide, dispatch to the chosen model; when all its deployments are
/// saturated, decide again without it, until a model answers or none is left (429).
async fn send_routed(
    state: &Arc<AppState>,
    mut p: Prepared<'_>,
    ctx: &mut Ctx,
) -> Result<Response, ApiError> {
    let routing = p.routing.clone();
    let (prediction, mut request, mut decision) =
        decide(state, &routing, &p.conv, &p.overrides).await?;
    let mut retry_after: Option<Duration> = None;
    loop {
        ctx.model = decision.model.clone();
        ctx.mode = decision.mode.as_str().to_string();
        let deployments = routing
            .policy()
            .catalog()
            .get(&decision.model)
            .map(|m| m.deployments.clone())
            .unwrap_or_default();
        match dispatch(state, &deployments, &p, ctx).await {
            Ok(d) => {
                let job = p.job.take().map(|mut job| {
                    job.decision = serde_json::to_value(&decision).ok();
                    job
                });
                let reply = Reply {
                    model: &decision.model,
                    explained: p.explain.then_some(&decision),
                    stream: p.conv.stream,
                    cost: decision.estimated_cost,
                    job,
                };
                return Ok(respond(state, d, reply, ctx).await);
            }
            Err(DispatchError::Saturated {
                retry_after: wait, ..
            }) => {
                retry_after = shortest(retry_after, wait);
            }
            Err(DispatchError::NoDeployments) => {}
            Err(e) => return Err(dispatch_failed(state, e)),
        }
        request.exclude.push(decision.model.clone());
        state.metrics.reroute();
        match decide_on_prediction(routing.policy(), &prediction, &request) {
            Ok(next) => decision = next,
            Err(PolicyError::NoEligibleModel { .. }) => {
                ctx.model = "none".into();
                return Err(ApiError::RateLimited { retry_after });
            }
            Err(e) => return Err(policy_error(e)),
        }
    }
}

/// A request that names a catalog model: its deployments, no routing.
async fn send_named(
    state: &Arc<AppState>,
    p: Prepared<'_>,
    ctx: &mut Ctx,
) -> Result<Response, ApiError> {
    let requested = p.requested.as_str();
    let Some(spec) = p.routing.catalog().get(requested) else {
        return Err(ApiError::ModelNotFound {
            model: requested.to_string(),
            router: state.config.router_name.clone(),
        });
    };
    ctx.model = requested.to_string();
    ctx.mode = "bypass".into();
    if spec.deployments.is_empty() {
        return Err(ApiError::ModelNotDeployed(requested.to_string()));
    }
    let output_tokens = spec.billed_output_tokens(p.conv.max_tokens);
    let cost = estimated_cost(spec, p.conv.prompt_tokens as u64, output_tokens);
    let d = dispatch(state, &spec.deployments, &p, ctx)
        .await
        .map_err(|e| dispatch_failed(state, e))?;
    let reply = Reply {
        model: requested,
        explained: None,
        stream: p.conv.stream,
        cost,
        job: p.job,
    };
    Ok(respond(state, d, reply, ctx).await)
}

/// Dispatch: the prepared body to `deployments` (the spillover as asked), with the request's id.
async fn dispatch(
    state: &AppState,
    deployments: &[String],
    p: &Prepared<'_>,
    ctx: &Ctx,
) -> Result<Dispatched, DispatchError> {
    let request = DispatchRequest {
        deployments,
        body: &p.body,
        spillover: p.spillover,
    };
    state
        .dispatcher
        .dispatch_with_id(request, &ctx.request_id)
        .await
}

/// Route: score the conversation and let the policy decide.
async fn decide(
    state: &AppState,
    routing: &Routing,
    conv: &Conversation,
    o: &Overrides,
) -> Result<(Prediction, RouteRequest, Decision), ApiError> {
    let start = Instant::now();
    let prediction = routing
        .scorer()
        .score(conv.routing_text.clone())
        .await
        .map_err(score_error)?;
    let mut request = RouteRequest::new(conv.prompt_tokens).needs(conv.needs);
    request.max_tokens = conv.max_tokens;
    request.mode = o.mode;
    request.band = o.band;
    request.subset = o.subset.clone();
    let decision =
        decide_on_prediction(routing.policy(), &prediction, &request).map_err(policy_error)?;
    state.metrics.routing(start.elapsed());
    Ok((prediction, request, decision))
}

/// The shorter of two waits, either of which may be unknown.
fn shortest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn wants_explain(headers: &HeaderMap) -> bool {
    header_str(headers, "x-router-explain")
        .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

fn policy_error(e: PolicyError) -> ApiError {
    match e {
        PolicyError::NoEligibleModel { .. } => ApiError::NoEligibleModel(e.to_string()),
        other => ApiError::invalid(other.to_string(), Some("router")),
    }
}

fn score_error(e: ScoreError) -> ApiError {
    match e {
        ScoreError::Busy => ApiError::Overloaded(e.to_string()),
        other => ApiError::Internal(other.to_string()),
    }
}

/// A dispatch that found no answer: timeouts and connection failures are counted as upstream
/// failures of the last deployment tried.
fn dispatch_failed(state: &AppState, e: DispatchError) -> ApiError {
    match e {
        DispatchError::UnknownDeployment(name) => ApiError::DeploymentNotFound(name),
        DispatchError::Saturated { retry_after, .. } => ApiError::RateLimited { retry_after },
        DispatchError::Timeout { ref deployment, .. } => {
            state.metrics.upstream_failure(deployment, "timeout");
            ApiError::GatewayTimeout(e.to_string())
        }
        DispatchError::Upstream { ref deployment, .. } => {
            state.metrics.upstream_failure(deployment, "connection");
            ApiError::Upstream(e.to_string())
        }
        other => ApiError::Upstream(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shortest_known_wait() {
        let s = |ms| Some(Duration::from_millis(ms));
        assert_eq!(shortest(s(5), s(3)), s(3));
        assert_eq!(shortest(None, s(3)), s(3));
        assert_eq!(shortest(s(5), None), s(5));
        assert_eq!(shortest(None, None), None);
    }
}
