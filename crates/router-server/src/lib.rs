//! An OpenAI-compatible HTTP endpoint that routes each chat request and dispatches it.
//!
//! Existing OpenAI and Azure OpenAI clients call it unchanged. A request whose `model` is the
//! router's name (`model-router` by default) is *routed*: the scorer predicts every model's
//! quality on the conversation, `router-policy` picks a model, and `router-dispatch` sends the
//! request to one of that model's deployments. A request that names a catalog model *bypasses*
//! routing and goes to that model's deployments. Either way the response's `model` is the
//! model that answered, in a JSON body and in every streamed event.
//!
//! # Endpoints
//!
//! | method and path | what |
//! |---|---|
//! | `POST /v1/chat/completions` | routed or bypassed chat completion, JSON or `stream: true` SSE; `store: true` keeps it |
//! | `GET /v1/chat/completions` | the caller's stored completions; query `model`, `metadata[KEY]=VALUE` (repeatable), `after`, `limit` (1–100, default 20), `order` (`asc`, default, or `desc`) |
//! | `GET /v1/chat/completions/{id}` | one stored completion: the response with `metadata` and a `router` object (model, deployment, decision, usage, estimated cost, latency) |
//! | `GET /v1/chat/completions/{id}/messages` | its request messages (ids `{id}-{index}`); query `after`, `limit`, `order` |
//! | `POST /v1/chat/completions/{id}` | `{"metadata": {...}}` replaces its metadata; returns the updated completion |
//! | `DELETE /v1/chat/completions/{id}` | deletes it: `{"object": "chat.completion.deleted", "id", "deleted": true}` |
//! | `POST /openai/deployments/{deployment}/chat/completions` | the same, Azure-style; `{deployment}` is the router's name or a model |
//! | `POST /v1/route` | the decision only (JSON), nothing sent upstream |
//! | `GET /v1/models` | the router's name (with the bundle name and version in use) and the deployed catalog models |
//! | `GET /health` | liveness, without auth: `{"status", "bundle", "version"}` of the bundle in use |
//! | `POST /admin/reload` | loads the configured bundle again (the admin key of `server.admin_key_env`; 404 without one) |
//! | `GET /metrics` | Prometheus text |
//!
//! Request headers: `x-router-mode`, `x-router-band`, `x-router-subset` (comma-separated)
//! override the routing (a body field `router: {mode, band, subset}` wins over them);
//! `x-router-explain: true` returns the decision as compact JSON in the response header
//! `x-router-decision` (and, in a JSON response, in the body's `router` field); `x-ms-spillover-deployment` names the spillover deployment. Response
//! headers: `x-router-model`, `x-router-deployment`, `x-ms-spillover-from-deployment`,
//! `x-router-store`.
//!
//! # Stored completions
//!
//! With a `[store]` section (`path`, `max_bytes`, `on_full`, `synchronous`; see
//! [`StoreConfig`] and the `router-store` crate), a chat request with `"store": true` and
//! optional `"metadata"` (OpenAI's limits: 16 keys, keys ≤ 64 characters, values ≤ 512) is
//! kept with its response, the decision (`null` when the request named a model), the model and
//! deployment that answered, the usage, the cost (the catalog's prices × the reported usage,
//! else the decision's estimate) and the latency (request to answer, ms).
//!
//! - **Acknowledged means stored.** A JSON answer is sent only after the record is committed;
//!   the response header `x-router-store` then says `stored <id>` (the body's `id` is the
//!   stored id). A stream is forwarded chunk by chunk, assembled as it passes (content,
//!   refusal, tool calls, usage when `stream_options.include_usage`), and stored when the
//!   backend ends it: the `data: [DONE]` line is held back until the commit, followed by an SSE
//!   comment `: x-router-store: <outcome>` (clients ignore comments). The stream's header says
//!   `x-router-store: pending`. A stream that breaks off, or whose client goes away, is not
//!   stored.
//! - **A full or failing store never fails the request**: the answer is sent with
//!   `x-router-store: refused: <reason>` (the store is full and `on_full = "refuse"`) or
//!   `failed: <reason>`, and `model_router_store_total{result}` counts stored, refused, failed
//!   and skipped (an upstream error status: nothing to store). Invalid metadata, a non-boolean
//!   `store`, or `store: true` on a server without `[store]` is a 400 before anything is sent
//!   upstream.
//! - **`store` and `metadata` are not forwarded.** The router is the store the client asked
//!   for: if `store: true` went through, OpenAI (and Azure OpenAI) would keep a second copy
//!   of the conversation on their side, and strict OpenAI-compatible backends reject fields
//!   they do not know (Mistral's API answers 422 `extra_forbidden`).
//! - **Records belong to the API key that stored them** (a SHA-256 of it is stored, never the
//!   key); another key gets 404 for them, and lists only its own. Without proxy keys every
//!   record belongs to one anonymous owner.
//! - Store calls run on tokio's blocking pool (`spawn_blocking`), never on the async workers.
//!
//! # Shadow traffic
//!
//! With a `[shadow]` section ([`ShadowConfig`]; it needs `[store]`), a sampled share of
//! *routed* requests (addressed to the router, not to a model) is sent again, once the client's
//! response body has ended, to each `shadow.models` model other than the one that answered:
//! through the same dispatcher, never streamed, without `store`. The original exchange and each
//! shadow answer are stored; a shadow's `shadow_of` is the original's id. The original is the
//! client's record when it said `store: true`, else the router's
//! ([`router_store::ROUTER_OWNER`]), so a client's list never changes meaning. A full queue, a
//! spent daily budget or a failed call drops shadows, counted in
//! `model_router_shadow_dropped_total{reason}`; nothing a shadow does reaches the client or the
//! router's own request metrics.
//!
//! # Usage
//!
//! Every answered request's usage is recorded per deployment and UTC minute (requests, input
//! and output tokens, how many were estimated, 429s met, the deployment it spilled from), for
//! `model-router capacity`: aggregated in memory, written once a flush interval (a minute) and
//! at shutdown into the store's database (`router_store::UsageRow`), or without `[store]` into
//! the SQLite file of `[usage] path` ([`UsageConfig`]); rows older than `retention_days` are
//! deleted. Neither `[store]` nor `[usage]`: nothing is recorded.
//!
//! # Reload
//!
//! `POST /admin/reload` and SIGHUP ([`AppState::reload`]) load the configured bundle again.
//! Each request holds the [`Routing`] it started with, so requests in flight finish on the old
//! bundle, whose scorer thread stops when the last of them is done. A bundle that does not
//! load, does not match the catalog and deployments, or scores [`PROBE_PROMPTS`] with a number
//! that is not finite is refused (422 `bundle_refused`, logged) and the old one keeps serving;
//! the same probe runs at start.
//!
//! # Design
//!
//! - Prompts are tokenised on their request's task, so that work spreads over the runtime's
//!   threads. The static tier on the CPU then scores right there (microseconds); the BERT tier's
//!   inference runs on a dedicated thread ([`Scorer`]) that batches concurrent prompts and skips
//!   those whose client has gone (`model_router_scorer_skipped_total`).
//! - A stream is forwarded chunk by chunk as it arrives (reqwest's byte stream becomes the axum
//!   body): nothing is buffered, so time to first token is the backend's.
//! - When every deployment of the chosen model is saturated (429 or cooling down), the policy
//!   runs again on the same scores with that model excluded.
//! - Errors have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`.
#![deny(missing_docs)]

mod access;
mod app;
mod chat;
mod config;
mod error;
mod listen;
mod load_metrics;
mod metrics;
mod pipeline;
mod record;
mod request_id;
mod request_log;
mod respond;
mod routing;
mod shadow;
mod shadow_worker;
mod shared_limits;
mod sse;
mod state;
mod stored;
mod streamed;
mod upstream;
mod usage;
mod worker;

pub use access::{AccessLayer, ACCESS_TARGET};
#[cfg(unix)]
pub use app::reload_on_sighup;
pub use app::{build_app, run, run_blocking, start, RunningServer};
pub use chat::{
    analyse, ChatRequest, Content, Conversation, FunctionDef, Message, Overrides, Part,
    ResponseFormat, Tool, ToolCall, Turn, IMAGE_TOKENS,
};
pub use config::{
    ConfigFile, DeploymentSection, DispatchSection, LogFormat, RouterSection, ServerConfig,
    ServerConfigBuilder, ServerSection, ShadowConfig, ShadowSection, StoreConfig, StoreSection,
    DEFAULT_LISTEN, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONNECTIONS, DEFAULT_ROUTER_NAME,
};
pub use config::{UsageConfig, UsageSection, DEFAULT_USAGE_FLUSH, DEFAULT_USAGE_RETENTION_DAYS};
pub use error::{ApiError, ServerError, DEFAULT_RETRY_AFTER};
pub use metrics::Metrics;
pub use router_store;
pub use routing::{Routing, PROBE_PROMPTS};
pub use state::{AppState, Reloaded};
pub use worker::{ScoreError, Scorer, INLINE_TOKENIZE_BYTES};
