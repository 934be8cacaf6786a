//! The pipeline's last step: every answered request is counted and leaves one access line.

use std::time::Duration;

use axum::response::Response;

use crate::access::AccessLine;
use crate::error::ErrorCode;
use crate::request_id::RequestId;
use crate::state::AppState;

/// What the access log and the request metric say about a request.
pub(crate) struct Ctx {
    pub(crate) request_id: String,
    pub(crate) model: String,
    pub(crate) mode: String,
    pub(crate) spillover: bool,
    /// The router's estimate of the prompt's tokens (usage when the backend reports none).
    pub(crate) prompt_tokens: u64,
}

impl Ctx {
    /// A request with no model chosen yet.
    pub(crate) fn new(request_id: &RequestId) -> Self {
        Ctx {
            request_id: request_id.0.clone(),
            model: "none".into(),
            mode: "none".into(),
            spillover: false,
            prompt_tokens: 0,
        }
    }
}

/// Counts a request in `model_router_requests_total` and writes its access line (before the
/// response goes out, so every answered request has its line).
pub(crate) fn record(
    state: &AppState,
    path: &str,
    response: &Response,
    ctx: &Ctx,
    elapsed: Duration,
) {
    let status = response.status().as_u16();
    state
        .metrics
        .request(&ctx.model, &ctx.mode, status, ctx.spillover);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
    };
    let store = header("x-router-store");
    let line = AccessLine {
        request_id: &ctx.request_id,
        path,
        status,
        model: &ctx.model,
        mode: &ctx.mode,
        deployment: header("x-router-deployment"),
        spillover: ctx.spillover,
        elapsed,
        store: store
            .split_whitespace()
            .next()
            .unwrap_or("-")
            .trim_end_matches(':'),
        error: response
            .extensions()
            .get::<ErrorCode>()
            .map_or("-", |code| code.0),
    };
    state.access_log.write(&line);
}
