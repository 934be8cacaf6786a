//! An OpenAI-compatible HTTP endpoint that routes each chat request and dispatches it.
//!
//! Existing OpenAI and Azure OpenAI clients call it unchanged. A request whose `model` is the
//! router's name (`model-router` by default) is *routed*: the scorer predicts every model's
//! quality on the conversation, `router-policy` picks a model, and `router-dispatch` sends the
//! request to one of that model's deployments. A request that names a catalog model *bypasses*
//! routing and goes to that model's deployments. Either way the response's `model` is the
//! model that answered.
//!
//! # Endpoints
//!
//! | method and path | what |
//! |---|---|
//! | `POST /v1/chat/completions` | routed or bypassed chat completion, JSON or `stream: true` SSE |
//! | `POST /openai/deployments/{deployment}/chat/completions` | the same, Azure-style; `{deployment}` is the router's name or a model |
//! | `POST /v1/route` | the decision only (JSON), nothing sent upstream |
//! | `GET /v1/models` | the router's name and the deployed catalog models |
//! | `GET /health` | liveness, without auth |
//! | `GET /metrics` | Prometheus text |
//!
//! Request headers: `x-router-mode`, `x-router-band`, `x-router-subset` (comma-separated)
//! override the routing (a body field `router: {mode, band, subset}` wins over them);
//! `x-router-explain: true` returns the decision as compact JSON in the response header
//! `x-router-decision`; `x-ms-spillover-deployment` names the spillover deployment. Response
//! headers: `x-router-model`, `x-router-deployment`, `x-ms-spillover-from-deployment`.
//!
//! # Design
//!
//! - Inference runs on a dedicated thread ([`Scorer`]) that batches concurrent prompts; the
//!   async runtime only parses, decides and forwards.
//! - A stream is forwarded chunk by chunk as it arrives (reqwest's byte stream becomes the axum
//!   body): nothing is buffered, so time to first token is the backend's.
//! - When every deployment of the chosen model is saturated (429 or cooling down), the policy
//!   runs again on the same scores with that model excluded.
//! - Errors have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`.
#![deny(missing_docs)]

mod app;
mod chat;
mod config;
mod error;
mod metrics;
mod worker;

pub use app::{build_app, run, run_blocking, start, AppState, RunningServer};
pub use chat::{analyse, overrides, Conversation, Overrides};
pub use config::{ServerConfig, DEFAULT_MAX_BODY_BYTES, DEFAULT_ROUTER_NAME};
pub use error::{ApiError, ServerError};
pub use metrics::Metrics;
pub use worker::{ScoreError, Scorer};
