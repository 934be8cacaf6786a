//! The crate's error type.

use std::time::Duration;

/// What can go wrong when building a [`Dispatcher`](crate::Dispatcher) or dispatching a request.
/// Messages name deployments and URLs, never keys.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// A deployment name that is not configured (in a model's list, a `spillover`, or the
    /// `x-ms-spillover-deployment` header).
    #[error("unknown deployment `{0}`")]
    UnknownDeployment(String),

    /// A deployment's definition is unusable (bad base URL, missing `api_version`, ...).
    #[error("deployment `{deployment}`: {reason}")]
    InvalidDeployment {
        /// The deployment.
        deployment: String,
        /// Why.
        reason: String,
    },

    /// Two deployments share a name.
    #[error("duplicate deployment name `{0}`")]
    DuplicateDeployment(String),

    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),

    /// The model has no deployment to send to.
    #[error("no deployments to dispatch to")]
    NoDeployments,

    /// Every deployment (and spillover) answered 429 or is cooling down.
    #[error("all deployments are saturated ({})", deployments.join(", "))]
    Saturated {
        /// The deployments that were saturated.
        deployments: Vec<String>,
        /// How long until the first of them is free again, when known.
        retry_after: Option<Duration>,
    },

    /// No response headers within the timeout, after the retries.
    #[error("deployment `{deployment}` did not answer within {timeout:?} ({attempts} attempts)")]
    Timeout {
        /// The last deployment tried.
        deployment: String,
        /// The per-attempt timeout.
        timeout: Duration,
        /// Attempts made.
        attempts: u32,
    },

    /// A connection or protocol error, after the retries.
    #[error("deployment `{deployment}` failed after {attempts} attempts: {message}")]
    Upstream {
        /// The last deployment tried.
        deployment: String,
        /// The last error (no keys: they are never part of a URL).
        message: String,
        /// Attempts made.
        attempts: u32,
    },

    /// The shared capacity windows and cooldowns could not be read or written (a database
    /// error); the dispatcher admits the request then.
    #[error("shared limits: {0}")]
    Limits(String),
}
