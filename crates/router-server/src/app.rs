//! The HTTP application: state, routes, handlers, start and shutdown.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Extension, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use futures_util::StreamExt;
use router_core::Prediction;
use router_dispatch::{DispatchError, DispatchRequest, Dispatched, Dispatcher};
use router_policy::{estimated_cost, Decision, PolicyError, RouteRequest};
use router_store::{owner_of_key, Store, ANONYMOUS_OWNER};
use serde_json::{json, Map, Value};
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;

use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::access::{AccessLine, AccessLog};
use crate::chat::{ChatRequest, Conversation, Overrides};
use crate::error::ErrorCode;
use crate::listen::{self, Limits};
use crate::record::Outcome;
use crate::request_id::{self, RequestId};
use crate::shadow::{self, ShadowJob, Shadows};
use crate::sse;
use crate::stored::{self, StoreJob};
use crate::streamed;
use crate::upstream::Failure;
use crate::usage::UsageLog;
use crate::{ApiError, Metrics, Routing, ScoreError, ServerConfig, ServerError};

/// Everything the handlers share.
pub struct AppState {
    config: ServerConfig,
    /// The router in use; a request clones the `Arc` and keeps it to its end.
    routing: RwLock<Arc<Routing>>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    dispatcher: Dispatcher,
    metrics: Metrics,
    store: Option<Arc<Store>>,
    shadows: Option<Shadows>,
    /// Usage per deployment and minute, when recorded (`[store]` or `[usage]`).
    usage: Option<Arc<UsageLog>>,
    access_log: AccessLog,
}

/// What a reload swapped: `name@version` of the bundle before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// The bundle that served before.
    pub old: String,
    /// The bundle that serves now.
    pub new: String,
}

impl AppState {
    /// Builds the dispatcher, loads and probes the bundle ([`Routing::load`]), starts its
    /// scorer thread, opens the store. Blocking (it reads the bundle). Shadow workers start
    /// with [`start`].
    pub fn new(config: ServerConfig) -> Result<Self, ServerError> {
        let bad = |key: &str, reason: String| ServerError::Config {
            file: config.file.clone(),
            key: key.into(),
            reason,
        };
        let dispatcher = Dispatcher::new(config.deployments.clone(), config.dispatch.clone())
            .map_err(|e| bad("deployments", e.to_string()))?;
        let metrics = Metrics::default();
        let routing = Routing::load(&config, &dispatcher, &metrics)?;
        let store = match &config.store {
            Some(s) => Some(Arc::new(
                Store::open_location(&s.location, s.options).map_err(|e| {
                    let key = match s.location {
                        router_store::Location::Sqlite(_) => "store.path",
                        router_store::Location::Postgres(_) => "store.url",
                    };
                    bad(key, e.to_string())
                })?,
            )),
            None => None,
        };
        let shadows = config.shadow.clone().map(Shadows::new);
        let usage = UsageLog::open(config.usage.as_ref(), store.as_ref())
            .map_err(|e| bad("usage.path", e.to_string()))?;
        let access_log = AccessLog::open(
            config.access_log,
            config.access_log_path.as_deref(),
            config.log_format,
        )
            .map_err(|e| bad("server.access_log_path", e.to_string()))?;
        Ok(AppState {
            access_log,
            config,
            routing: RwLock::new(Arc::new(routing)),
            reloading: tokio::sync::Mutex::new(()),
            dispatcher,
            metrics,
            store,
            shadows,
            usage,
        })
    }

    /// The config.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The router in use now (a request keeps the one it started with).
    pub fn routing(&self) -> Arc<Routing> {
        self.routing
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Loads the configured bundle again and, when it loads, matches the catalog and
    /// deployments and passes the probe ([`Routing::load`]), makes it the router in use;
    /// requests in flight finish on the old one. With a config from [`ServerConfig::load`],
    /// the file is read again (with the process environment) for `[router]` and the catalog
    /// (the bundle's `catalog.toml` when it has no `[[models]]`); the server's other sections
    /// stay as they started. A refused bundle leaves the old one serving.
    pub async fn reload(self: &Arc<Self>) -> Result<Reloaded, ServerError> {
        let _one_at_a_time = self.reloading.lock().await;
        let state = self.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let config = match &state.config.source {
                Some(path) => ServerConfig::load(path)?,
                None => state.config.clone(),
            };
            Routing::load(&config, &state.dispatcher, &state.metrics)
        })
        .await
        .map_err(|e| ServerError::Io(std::io::Error::other(e.to_string())))
        .and_then(|loaded| loaded);
        let new = match loaded {
            Ok(routing) => Arc::new(routing),
            Err(e) => {
                self.metrics.reload("refused");
                eprintln!("model-router: reload refused, the old bundle keeps serving: {e}");
                return Err(e);
            }
        };
        let old = std::mem::replace(
            &mut *self.routing.write().unwrap_or_else(|p| p.into_inner()),
            new.clone(),
        );
        self.metrics.reload("ok");
        let reloaded = Reloaded {
            old: old.label(),
            new: new.label(),
        };
        eprintln!(
            "model-router: reloaded {} -> {}",
            reloaded.old, reloaded.new
        );
        Ok(reloaded)
    }

    /// The `[shadow]` queue, when configured.
    pub(crate) fn shadows(&self) -> Option<&Shadows> {
        self.shadows.as_ref()
    }

    /// The dispatcher.
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The completions store (`[store]`), when configured.
    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }
}

/// The axum application over a shared state.
pub fn build_app(state: Arc<AppState>) -> axum::Router {
    let api = axum::Router::new()
        .route(
            "/v1/chat/completions",
            post(chat_completions).get(stored::list),
        )
        .route(
            "/v1/chat/completions/{id}",
            get(stored::get_one)
                .post(stored::update)
                .delete(stored::delete),
        )
        .route("/v1/chat/completions/{id}/messages", get(stored::messages))
        .route(
            "/openai/deployments/{deployment}/chat/completions",
            post(azure_chat_completions),
        )
        .route("/v1/route", post(route))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    axum::Router::new()
        .route("/health", get(health))
        .route("/admin/reload", post(admin_reload))
        .merge(api)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), read_body))
        .layer(middleware::from_fn(request_id::assign))
        .with_state(state)
}

/// What a connection beyond `server.max_connections` is served: `GET /health`, else 503.
fn overflow_app(state: Arc<AppState>) -> axum::Router {
    axum::Router::new()
        .route("/health", get(health))
        .fallback(|| async { ApiError::TooManyConnections })
        .with_state(state)
}

/// Reads the whole request body before any handler: at most `server.max_body_bytes` (413
/// beyond), within `server.body_timeout_ms` (408 after), so a client that sends half a body
/// cannot hold its connection.
async fn read_body(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let limit = state.config.max_body_bytes;
    let read = Limited::new(body, limit).collect();
    let failed = match tokio::time::timeout(state.config.body_timeout, read).await {
        Ok(Ok(collected)) => {
            let request = Request::from_parts(parts, Body::from(collected.to_bytes()));
            return next.run(request).await;
        }
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            ApiError::RequestTooLarge(format!("the request body is larger than {limit} bytes"))
        }
        Ok(Err(_)) => ApiError::invalid("the request body broke off", None),
        Err(_) => ApiError::BodyTimeout(state.config.body_timeout),
    };
    failed.into_response()
}

/// A server running on a tokio runtime.
pub struct RunningServer {
    addr: SocketAddr,
    state: Arc<AppState>,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared state (metrics, dispatcher, ...).
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Stops accepting, lets requests in flight finish for up to `grace`, then stops.
    pub async fn shutdown(mut self, grace: Duration) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if tokio::time::timeout(grace, &mut self.task).await.is_err() {
            self.task.abort();
        }
        if let Some(usage) = &self.state.usage {
            usage.close().await;
        }
    }
}

/// Loads everything and starts serving on `config.listen` (port 0 picks a free port).
pub async fn start(config: ServerConfig) -> Result<RunningServer, ServerError> {
    let listen = config.listen;
    let state = tokio::task::spawn_blocking(move || AppState::new(config))
        .await
        .map_err(|e| ServerError::Io(std::io::Error::other(e.to_string())))??;
    let state = Arc::new(state);
    if let Some(shadows) = state.shadows() {
        shadows.start_workers(Arc::downgrade(&state));
    }
    if let Some(usage) = &state.usage {
        usage.start_flusher();
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr()?;
    let limits = Limits {
        max_connections: state.config.max_connections,
        header_timeout: state.config.header_timeout,
    };
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(listen::serve(
        listener,
        build_app(state.clone()),
        overflow_app(state.clone()),
        limits,
        rx,
    ));
    Ok(RunningServer {
        addr,
        state,
        shutdown: Some(tx),
        task,
    })
}

/// Serves until Ctrl-C or SIGTERM; SIGHUP reloads the bundle ([`AppState::reload`]).
pub async fn run(config: ServerConfig) -> Result<(), ServerError> {
    let server = start(config).await?;
    let state = server.state().clone();
    #[cfg(unix)]
    let reloader = reload_on_sighup(state.clone())?;
    let routing = state.routing();
    eprintln!(
        "model-router: serving bundle {} ({}) with {} models on http://{}{}",
        routing.name(),
        routing.version(),
        routing
            .policy()
            .defaults()
            .subset
            .as_ref()
            .map_or(0, Vec::len),
        server.local_addr(),
        if state.config.api_keys.is_empty() {
            " (no auth: loopback only)"
        } else {
            ""
        }
    );
    drop(routing);
    shutdown_signal().await?;
    #[cfg(unix)]
    reloader.abort();
    eprintln!("model-router: shutting down");
    server.shutdown(Duration::from_secs(10)).await;
    Ok(())
}

/// Reloads the bundle of `state` on every SIGHUP, until the task is aborted; a refused
/// bundle is logged and the old one keeps serving.
#[cfg(unix)]
pub fn reload_on_sighup(state: Arc<AppState>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            // The outcome is logged by reload.
            let _ = state.reload().await;
        }
    }))
}

/// Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}

/// [`run`] on a new multi-threaded tokio runtime (for callers without one).
pub fn run_blocking(config: ServerConfig) -> Result<(), ServerError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(config))
}

// ---------------------------------------------------------------------------------------------
// Auth

fn key_matches(keys: &[String], given: &[u8]) -> bool {
    let mut ok = subtle::Choice::from(0u8);
    for key in keys {
        ok |= key.as_bytes().ct_eq(given);
    }
    ok.into()
}

/// Who is calling: the owner identity of the API key ([`owner_of_key`]), or
/// [`ANONYMOUS_OWNER`] on a server without keys. Set by the auth middleware.
#[derive(Debug, Clone)]
pub(crate) struct Caller(pub(crate) String);

async fn auth(State(state): State<Arc<AppState>>, mut request: Request, next: Next) -> Response {
    let start = Instant::now();
    if state.config.api_keys.is_empty() {
        request
            .extensions_mut()
            .insert(Caller(ANONYMOUS_OWNER.to_string()));
        return next.run(request).await;
    }
    match presented_key(request.headers()) {
        Some(key) if key_matches(&state.config.api_keys, key.as_bytes()) => {
            let caller = Caller(owner_of_key(key));
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        given => {
            let response = ApiError::Unauthorized {
                key_given: given.is_some(),
            }
            .into_response();
            let id = request.extensions().get::<RequestId>().cloned();
            let ctx = Ctx::new(&id.unwrap_or(RequestId("-".into())));
            record(
                &state,
                request.uri().path(),
                &response,
                &ctx,
                start.elapsed(),
            );
            response
        }
    }
}

/// The key in `Authorization: Bearer KEY` or `api-key: KEY`.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .or_else(|| {
            headers
                .get("api-key")
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        })
}

/// `POST /admin/reload`: [`AppState::reload`], authorised by `server.admin_key_env`'s key
/// (not a proxy key). Without an admin key the endpoint does not exist (404). Answers
/// `{"status": "reloaded", "old", "new"}`, or 422 `bundle_refused` with the reason.
async fn admin_reload(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let Some(admin_key) = &state.config.admin_key else {
        return not_found().await.into_response();
    };
    match presented_key(&headers) {
        Some(key) if key_matches(std::slice::from_ref(admin_key), key.as_bytes()) => {}
        given => {
            let key_given = given.is_some();
            return ApiError::Unauthorized { key_given }.into_response();
        }
    }
    match state.reload().await {
        Ok(reloaded) => Json(json!({
            "status": "reloaded",
            "old": reloaded.old,
            "new": reloaded.new,
        }))
        .into_response(),
        Err(e) => ApiError::BundleRefused(e.to_string()).into_response(),
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers

async fn health(State(state): State<Arc<AppState>>) -> Json<Value> {
    let routing = state.routing();
    Json(json!({"status": "ok", "bundle": routing.name(), "version": routing.version()}))
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::UnknownPath
}

async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    let routing = state.routing();
    let mut data = vec![json!({
        "id": state.config.router_name, "object": "model", "created": 0, "owned_by": "model-router",
        "bundle": routing.name(), "version": routing.version(),
    })];
    let routed = routing
        .policy()
        .defaults()
        .subset
        .clone()
        .unwrap_or_default();
    // Then the deployed models the bundle does not predict: served when named, never routed to.
    let named_only = routing
        .catalog()
        .models
        .iter()
        .filter(|m| !m.deployments.is_empty() && !routed.contains(&m.name))
        .map(|m| m.name.clone());
    for name in routed.iter().cloned().chain(named_only) {
        data.push(json!({"id": name, "object": "model", "created": 0, "owned_by": "model-router"}));
    }
    Json(json!({"object": "list", "data": data}))
}

pub(crate) fn parse_body(
    body: Result<Bytes, BytesRejection>,
) -> Result<Map<String, Value>, ApiError> {
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

fn route_request(conv: &Conversation, o: &Overrides) -> RouteRequest {
    let mut r = RouteRequest::new(conv.prompt_tokens).needs(conv.needs);
    r.max_tokens = conv.max_tokens;
    r.mode = o.mode;
    r.band = o.band;
    r.subset = o.subset.clone();
    r
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

fn dispatch_error(e: DispatchError) -> ApiError {
    match e {
        DispatchError::UnknownDeployment(name) => ApiError::DeploymentNotFound(name),
        DispatchError::Saturated { retry_after, .. } => ApiError::RateLimited { retry_after },
        DispatchError::Timeout { .. } => ApiError::GatewayTimeout(e.to_string()),
        other => ApiError::Upstream(other.to_string()),
    }
}

/// A dispatch that found no answer: timeouts and connection failures are counted as upstream
/// failures of the last deployment tried.
fn dispatch_failed(state: &AppState, e: DispatchError) -> ApiError {
    match &e {
        DispatchError::Timeout { deployment, .. } => {
            state.metrics.upstream_failure(deployment, "timeout")
        }
        DispatchError::Upstream { deployment, .. } => {
            state.metrics.upstream_failure(deployment, "connection")
        }
        _ => {}
    }
    dispatch_error(e)
}

/// What the access log and the request metric say about a request.
struct Ctx {
    request_id: String,
    model: String,
    mode: String,
    spillover: bool,
    /// The router's estimate of the prompt's tokens (usage when the backend reports none).
    prompt_tokens: u64,
}

impl Ctx {
    /// A request with no model chosen yet.
    fn new(request_id: &RequestId) -> Self {
        Ctx {
            request_id: request_id.0.clone(),
            model: "none".into(),
            mode: "none".into(),
            spillover: false,
            prompt_tokens: 0,
        }
    }
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Extension(id): Extension<RequestId>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle_chat(state, caller, id, headers, body, None).await
}

async fn azure_chat_completions(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Extension(id): Extension<RequestId>,
    Path(deployment): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle_chat(state, caller, id, headers, body, Some(deployment)).await
}

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
    let response = match chat_inner(&state, caller, &headers, body, deployment, &mut ctx).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    record(&state, &path, &response, &ctx, start.elapsed());
    response
}

/// Counts a request in `model_router_requests_total` and writes its access line (before the
/// response goes out, so every answered request has its line).
fn record(state: &AppState, path: &str, response: &Response, ctx: &Ctx, elapsed: Duration) {
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
    let request = route_request(conv, o);
    let decision = routing
        .policy()
        .decide_with_output_tokens(
            &prediction.scores,
            prediction.output_tokens.as_deref(),
            &request,
        )
        .map_err(policy_error)?;
    state.metrics.routing(start.elapsed());
    Ok((prediction, request, decision))
}

/// A parsed chat request, ready to send: the body to forward (without `router`, `store` and
/// `metadata`), what routing reads, and what the answer needs.
struct Prepared<'a> {
    body: Value,
    conv: Conversation,
    overrides: Overrides,
    explain: bool,
    spillover: Option<&'a str>,
    job: Option<StoreJob>,
}

/// The chat pipeline: parse, then route and dispatch (or dispatch to the named model), then
/// respond or stream (storing on the way); the caller logs and counts.
async fn chat_inner(
    state: &Arc<AppState>,
    caller: Caller,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    deployment: Option<String>,
    ctx: &mut Ctx,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let request = ChatRequest::from_slice(&body?)?;
    let requested = match deployment.or_else(|| request.model.clone()) {
        Some(name) => name,
        None => {
            let missing = "missing required parameter: `model`";
            return Err(ApiError::invalid(missing, Some("model")));
        }
    };
    let routing = state.routing();
    let overrides = request.overrides(headers)?;
    let asked = stored::asked_to_store(&request, state.store.is_some())?;
    let conv = request.conversation(state.config.recent_turns);
    ctx.prompt_tokens = conv.prompt_tokens as u64;
    let body = request.forwarded();
    let spillover = header_str(headers, "x-ms-spillover-deployment");
    if let Some(name) = spillover {
        if state.dispatcher.deployment(name).is_none() {
            return Err(dispatch_error(DispatchError::UnknownDeployment(
                name.to_string(),
            )));
        }
    }
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
    let prepared = Prepared {
        body: Value::Object(body),
        conv,
        overrides,
        explain: wants_explain(headers),
        spillover,
        job,
    };
    if routed {
        send_routed(state, &routing, prepared, ctx).await
    } else {
        send_named(state, &routing, &requested, prepared, ctx).await
    }
}

/// A routed request: decide, dispatch to the chosen model; when all its deployments are
/// saturated, decide again without it, until a model answers or none is left (429).
async fn send_routed(
    state: &Arc<AppState>,
    routing: &Routing,
    mut p: Prepared<'_>,
    ctx: &mut Ctx,
) -> Result<Response, ApiError> {
    let (prediction, mut request, mut decision) =
        decide(state, routing, &p.conv, &p.overrides).await?;
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
        let sent = state
            .dispatcher
            .dispatch_with_id(
                DispatchRequest {
                    deployments: &deployments,
                    body: &p.body,
                    spillover: p.spillover,
                },
                &ctx.request_id,
            )
            .await;
        match sent {
            Ok(d) => {
                let cost = decision.estimated_cost;
                let model = decision.model.clone();
                let job = p.job.take().map(|mut j| {
                    j.decision = serde_json::to_value(&decision).ok();
                    j
                });
                let explained = p.explain.then_some(&decision);
                let stream = p.conv.stream;
                return respond(state, d, &model, explained, stream, cost, job, ctx).await;
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
        match routing.policy().decide_with_output_tokens(
            &prediction.scores,
            prediction.output_tokens.as_deref(),
            &request,
        ) {
            Ok(next) => decision = next,
            Err(PolicyError::NoEligibleModel { .. }) => {
                ctx.model = "none".into();
                return Err(dispatch_error(DispatchError::Saturated {
                    deployments: vec![],
                    retry_after,
                }));
            }
            Err(e) => return Err(policy_error(e)),
        }
    }
}

/// A request that names a catalog model: its deployments, no routing.
async fn send_named(
    state: &Arc<AppState>,
    routing: &Routing,
    requested: &str,
    p: Prepared<'_>,
    ctx: &mut Ctx,
) -> Result<Response, ApiError> {
    let Some(spec) = routing.catalog().get(requested) else {
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
    let cost = estimated_cost(
        spec,
        p.conv.prompt_tokens as u64,
        spec.billed_output_tokens(p.conv.max_tokens),
    );
    let d = state
        .dispatcher
        .dispatch_with_id(
            DispatchRequest {
                deployments: &spec.deployments,
                body: &p.body,
                spillover: p.spillover,
            },
            &ctx.request_id,
        )
        .await
        .map_err(|e| dispatch_failed(state, e))?;
    respond(state, d, requested, None, p.conv.stream, cost, p.job, ctx).await
}

/// The shorter of two waits, either of which may be unknown.
fn shortest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
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

#[allow(clippy::too_many_arguments)]
async fn respond(
    state: &Arc<AppState>,
    d: Dispatched,
    model: &str,
    decision: Option<&Decision>,
    stream: bool,
    cost: f64,
    mut job: Option<StoreJob>,
    ctx: &mut Ctx,
) -> Result<Response, ApiError> {
    ctx.spillover = d.spillover_from.is_some();
    let usage = state.usage.as_ref().map(|u| u.dispatched(&d, model, ctx.prompt_tokens));
    state.metrics.upstream(&d.deployment, d.latency);
    let status = d.response.status();
    let mut headers = HeaderMap::new();
    set_header(&mut headers, "x-router-model", model);
    set_header(&mut headers, "x-router-deployment", &d.deployment);
    if let Some(from) = &d.spillover_from {
        set_header(&mut headers, "x-ms-spillover-from-deployment", from);
    }
    if let Some(failure) = Failure::of_status(status.as_u16()) {
        return Ok(upstream_failed(state, job, &d.deployment, failure, headers));
    }
    // (`x-request-id` is the router's: the request_id middleware sets it.)
    for name in [header::CONTENT_TYPE, header::RETRY_AFTER] {
        if let Some(v) = d.response.headers().get(&name) {
            headers.insert(name, v.clone());
        }
    }
    if let Some(decision) = decision {
        set_header(&mut headers, "x-router-decision", &ascii_json(decision));
    }
    let status = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let body = if stream && status.is_success() {
        state.metrics.cost(model, cost);
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        let mut events = d.response.bytes_stream().boxed();
        if let Some(usage) = usage {
            events = usage.stream(events);
        }
        match job.take() {
            None => Body::from_stream(sse::with_model(events, model.to_string())),
            Some(job) => {
                if job.asked {
                    // Stored at the end of the stream, before the held `data: [DONE]`.
                    set_header(&mut headers, "x-router-store", "pending");
                }
                Body::from_stream(streamed::tap(
                    state.clone(),
                    sse::lines(events, model.to_string()),
                    job,
                    model.to_string(),
                    d.deployment.clone(),
                    cost,
                ))
            }
        }
    } else {
        let deployment = d.deployment.clone();
        let bytes = match read_answer(state, d).await {
            Ok(bytes) => bytes,
            Err(failure) => {
                return Ok(upstream_failed(state, job, &deployment, failure, headers));
            }
        };
        if status.is_success() {
            let object = match Failure::completion(&bytes) {
                Ok(object) => object,
                Err(failure) => {
                    return Ok(upstream_failed(state, job, &deployment, failure, headers));
                }
            };
            state.metrics.cost(model, cost);
            if let Some(usage) = usage {
                usage.json(&object);
            }
            let answer = Answer {
                model,
                deployment: &deployment,
                decision,
                cost,
            };
            json_answer(state, object, &answer, job, &mut headers).await
        } else {
            // The backend's own 4xx (a context too long, a bad parameter): the client's to read.
            if job.take().is_some_and(|job| job.asked) {
                let why = format!("the backend answered {}", status.as_u16());
                let outcome = stored::skipped(state, why);
                set_header(&mut headers, "x-router-store", &outcome.header_value());
            }
            Body::from(bytes)
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
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
        set_header(
            response.headers_mut(),
            "x-router-store",
            &outcome.header_value(),
        );
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

/// Who answered a request, and what the router decided and estimated.
struct Answer<'a> {
    model: &'a str,
    deployment: &'a str,
    decision: Option<&'a Decision>,
    cost: f64,
}

/// A successful JSON answer: the model's catalog name in it, stored first when asked
/// (`x-router-store`), the decision in its `router` field when asked, and a shadow queued
/// once the body has gone out.
async fn json_answer(
    state: &Arc<AppState>,
    mut object: Map<String, Value>,
    answer: &Answer<'_>,
    job: Option<StoreJob>,
    headers: &mut HeaderMap,
) -> Body {
    object.insert("model".into(), Value::String(answer.model.to_string()));
    let mut shadow: Option<ShadowJob> = None;
    if let Some(job) = job {
        // Committed before the answer goes out.
        let response = Value::Object(object.clone());
        let (outcome, shadow_job) = stored::finish(
            state,
            job,
            response,
            answer.model,
            answer.deployment,
            answer.cost,
        )
        .await;
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
    if let Some(decision) = answer.decision {
        // Through text, so that f32 predictions keep their shortest form, as in the header
        // (to_value would widen 0.8431423 to 0.8431422710418701).
        let text = serde_json::to_string(decision).unwrap_or_default();
        if let Ok(explanation) = serde_json::from_str::<Value>(&text) {
            object.insert("router".into(), explanation);
        }
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let bytes = Bytes::from(serde_json::to_vec(&object).unwrap_or_default());
    match shadow {
        None => Body::from(bytes),
        Some(job) => Body::from_stream(shadow::then_shadow(
            futures_util::stream::iter([Ok::<_, std::convert::Infallible>(bytes)]),
            state.clone(),
            Some(job),
        )),
    }
}

async fn route(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_keys() {
        let keys = vec!["alpha".to_string(), "beta".to_string()];
        assert!(key_matches(&keys, b"beta"));
        assert!(!key_matches(&keys, b"bet"));
        assert!(!key_matches(&keys, b""));
        assert!(!key_matches(&[], b"beta"));
    }

    #[test]
    fn header_json_is_ascii() {
        assert_eq!(ascii_json(&json!({"m": "é"})), r#"{"m":"\u00e9"}"#);
    }
}
