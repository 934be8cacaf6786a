//! The HTTP application: routes, auth, start and shutdown. The state is [`AppState`]; the chat
//! handler is [`crate::pipeline`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use router_store::{owner_of_key, ANONYMOUS_OWNER};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;

use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::listen::{self, Limits};
use crate::pipeline::{azure_chat_completions, chat_completions, route};
use crate::request_id::{self, RequestId};
use crate::request_log::{record, Ctx};
use crate::shadow_worker;
use crate::state::{AppState, Caller};
use crate::stored;
use crate::{ApiError, ServerConfig, ServerError};

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
    shadow_worker::start(&state);
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
    state.metrics.refresh_load(state.dispatcher()).await;
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
}
