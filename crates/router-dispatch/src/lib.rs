//! Send a routed chat request to an OpenAI-compatible or Azure OpenAI deployment.
//!
//! `router-policy` chooses a *model*; this crate chooses a *deployment* of that model and sends
//! the request there. A [`Dispatcher`] owns one HTTP client (reqwest over rustls), the table of
//! [`Deployment`]s and their cooldowns, and is shared by all requests of a server.
//!
//! # What [`Dispatcher::dispatch`] does
//!
//! For the chosen model's deployments, in the order the catalog lists them:
//!
//! 1. A deployment that is **cooling down** (see 4) is skipped without a round trip, except for
//!    one *probe* request per [`DispatchOptions::probe_interval`]: an answer other than 429
//!    ends the cooldown at once.
//! 2. Otherwise the request is sent, with the body's `model` replaced by the deployment's
//!    upstream model name. `openai` deployments get `Authorization: Bearer KEY` and
//!    `POST {base_url}/chat/completions`; `azure` deployments get the `api-key` header and
//!    `POST {base_url}/openai/deployments/{model}/chat/completions?api-version=V`.
//! 3. **Retries**: a connection error, a timeout (no response headers within
//!    [`DispatchOptions::timeout`], or a silence longer than [`DispatchOptions::read_timeout`]
//!    before them) or a 5xx is retried up to [`DispatchOptions::max_retries`]
//!    times with jittered exponential backoff; a `Retry-After` on a 5xx replaces the backoff
//!    (capped by [`DispatchOptions::max_backoff`]).
//! 4. **429**: the request moves on at once (no retry on the same deployment). One 429 does
//!    not cool the deployment (2 % of calls answering 429 must not turn away every request
//!    of the next seconds); a second in a row cools it for its `Retry-After` (or
//!    `retry-after-ms`), else for [`DispatchOptions::default_cooldown`], doubled for each
//!    further one (all capped by [`DispatchOptions::max_cooldown`]). If it is
//!    *provisioned*, the same request goes to its spillover deployment: the one the caller
//!    names ([`DispatchRequest::spillover`], from the `x-ms-spillover-deployment` header) or
//!    else the deployment's configured `spillover`; then to the model's next deployment.
//!    A provisioned deployment that is already cooling down spills over directly.
//!    The result says which deployment it spilled from ([`Dispatched::spillover_from`]).
//! 5. Any other answer (2xx, 4xx) is returned as is: the caller streams or reads its body.
//!
//! # Capacity-aware dispatch
//!
//! With [`DispatchOptions::capacity_aware`] (the default), a deployment known to be full is
//! skipped *before* sending, exactly where a cooling one is (step 1): a provisioned one spills
//! over directly, any other moves on, and [`Dispatched::spill_reason`] says
//! [`SpillReason::PredictedFull`]. It is known to be full when
//!
//! - its last rate-limit headers (`x-ratelimit-remaining-tokens`/`-requests`, with
//!   `x-ratelimit-reset-*` as an OpenAI duration such as `6m0s` or `20ms`, or Azure's seconds)
//!   leave less than the request's charge, less what this process sent there since; with
//!   `x-ratelimit-limit-*` the figure refills linearly until its reset, without it stays until
//!   the reset (1 s without a reset header); or
//! - it declares `capacity_tpm`/`capacity_rpm` ([`Deployment::capacity_tpm`]) and the sliding
//!   window ([`DispatchOptions::capacity_window`], a minute by default, the per-minute figures
//!   scaled to it) holds too much to add this request ([`Window::reserve`]: an empty window
//!   admits any request).
//!
//! A request is charged [`tokens_to_charge`]: its prompt's estimate plus `max_tokens` (or the
//! default expected output), which is what OpenAI and Azure count when they admit a request;
//! the tokens the answer really used are not read back. Only requests sent count in the window.
//! 429s, cooldowns and probes keep the rules above: capacity awareness is an earlier check.
//!
//! Windows and cooldown ends live behind [`SharedLimits`]: in the process by default
//! ([`LocalLimits`]), or in a database replicas share (router-server uses router-store's
//! PostgreSQL one when the store is PostgreSQL), so that N replicas respect one capacity
//! together and all skip a cooling deployment. A failing shared store admits the request
//! ([`Dispatcher::limits_errors`] counts it). [`Dispatcher::load_snapshot`] reports each
//! deployment's in-flight requests, window, utilisation, headroom and spills by reason.
//!
//! When every deployment is saturated the result is [`DispatchError::Saturated`], with the time
//! until the first one is free again: the server then runs the policy again with the model in
//! its `exclude` list. Other failures after the retries are [`DispatchError::Upstream`] or
//! [`DispatchError::Timeout`].
//!
//! # Secrets
//!
//! Backend keys live in [`ApiKey`], whose `Debug` prints `***`; they travel only in request
//! headers marked sensitive, never in URLs, so no error or log line of this crate can show one.
#![deny(missing_docs)]

mod capacity;
mod deployment;
mod dispatcher;
mod error;
mod limits;
mod load;

pub use capacity::{
    parse_reset, tokens_to_charge, Capacity, Limit, RateLimitHeaders, Reservation, Window,
    WindowUsage, WINDOW,
};
pub use deployment::{ApiKey, Deployment, DeploymentKind};
pub use dispatcher::{DispatchOptions, DispatchRequest, Dispatched, Dispatcher};
pub use error::DispatchError;
pub use limits::{Admission, LocalLimits, SharedLimits};
pub use load::{DeploymentLoad, SpillCounts, SpillReason};
