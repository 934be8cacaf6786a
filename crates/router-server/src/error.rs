//! Errors: the crate's start-up error type and the OpenAI-style API error.

use std::path::PathBuf;
use std::time::Duration;

use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// What can stop the server from starting (or running).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The config file cannot be read.
    #[error("{file}: cannot read: {source}")]
    ReadConfig {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or does not have the expected shape.
    #[error("{file}: {reason}")]
    ConfigSyntax {
        /// The file.
        file: String,
        /// The parser's message (it names the key, line and column).
        reason: String,
    },
    /// A config value is invalid.
    #[error("{file}: `{key}`: {reason}")]
    Config {
        /// The file.
        file: String,
        /// The key, e.g. `deployments[1].base_url` or `server.listen`.
        key: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The router bundle cannot be loaded.
    #[error("{file}: `router.bundle`: {source}")]
    Bundle {
        /// The config file.
        file: String,
        /// The loader's error (it names the bundle file at fault).
        source: router_core::CoreError,
    },
    /// The bundle loaded but its predictions on the probe prompts are unusable.
    #[error("router bundle `{}`: refused: {reason}", bundle.display())]
    Probe {
        /// The bundle directory.
        bundle: PathBuf,
        /// What the probe found.
        reason: String,
    },
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The I/O error (e.g. address already in use).
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// An error answered to an API client, with OpenAI's body shape:
/// `{"error": {"message", "type", "param", "code"}}`.
///
/// Each variant owns its HTTP status, OpenAI `type` and `code` ([`ApiError::status`],
/// [`ApiError::kind`], [`ApiError::code`], all read from one table); the message is the
/// variant's `Display`.
///
/// ```
/// use router_server::ApiError;
///
/// let e = ApiError::RateLimited { retry_after: None };
/// assert_eq!(e.status().as_u16(), 429);
/// assert_eq!((e.kind(), e.code()), ("rate_limit_error", Some("rate_limit_exceeded")));
/// let e = ApiError::invalid("`stream` must be a boolean", Some("stream"));
/// assert_eq!(e.body()["error"]["param"], "stream");
/// ```
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// A request the router cannot read (400), naming the parameter at fault.
    #[error("{message}")]
    InvalidRequest {
        /// What is wrong.
        message: String,
        /// The parameter at fault, e.g. `messages[0].role`.
        param: Option<String>,
    },
    /// Invalid `metadata` (400, param `metadata`).
    #[error("{0}")]
    InvalidMetadata(String),
    /// `store: true` or the stored-completions API on a server without `[store]` (400).
    #[error("stored completions are off: this server's config has no [store] section")]
    StoreNotConfigured {
        /// `store` when the chat request asked to store.
        param: Option<&'static str>,
    },
    /// The request named a model that has no deployments (400, param `model`).
    #[error("model `{0}` has no deployments")]
    ModelNotDeployed(String),
    /// `x-ms-spillover-deployment` names no deployment (400).
    #[error("unknown deployment `{0}`")]
    DeploymentNotFound(String),
    /// The policy's filters left no model (400; the message says which filter removed which).
    #[error("{0}")]
    NoEligibleModel(String),
    /// No valid API key (401).
    #[error("{}", if *key_given { "Incorrect API key provided." } else { "Missing API key: send `Authorization: Bearer KEY` or `api-key: KEY`." })]
    Unauthorized {
        /// A key was presented (and is wrong).
        key_given: bool,
    },
    /// No such path (404).
    #[error("Unknown path.")]
    UnknownPath,
    /// No stored completion with this id for this caller (404).
    #[error("No stored chat completion found with id `{0}`.")]
    CompletionNotFound(String),
    /// The request named neither the router nor a catalog model (404, param `model`).
    #[error("The model `{model}` does not exist: use `{router}` or a model of GET /v1/models.")]
    ModelNotFound {
        /// The name the request gave.
        model: String,
        /// The router's name.
        router: String,
    },
    /// The body did not arrive within `server.body_timeout_ms` (408).
    #[error("the request body did not arrive within {} ms", .0.as_millis())]
    BodyTimeout(Duration),
    /// The body is larger than `server.max_body_bytes` (413).
    #[error("{0}")]
    RequestTooLarge(String),
    /// A reloaded bundle was refused; the old one keeps serving (422).
    #[error("the bundle was refused and the old one keeps serving: {0}")]
    BundleRefused(String),
    /// Every deployment that could answer is rate-limited (429, with `Retry-After`).
    #[error("Every deployment of the model is rate-limited; retry later.")]
    RateLimited {
        /// The shortest wait known, if any ([`DEFAULT_RETRY_AFTER`] otherwise).
        retry_after: Option<Duration>,
    },
    /// Something inside the router failed (500).
    #[error("{0}")]
    Internal(String),
    /// The store failed (500).
    #[error("{0}")]
    StoreFailed(String),
    /// An upstream failure: a 5xx, a connection error, a body that broke off (502).
    #[error("{0}")]
    Upstream(String),
    /// The backend refused the router's own credentials (502; its body is dropped).
    #[error("deployment `{deployment}` refused the router's credentials (HTTP {status}); the router's operator must check its key")]
    UpstreamAuthFailed {
        /// The deployment.
        deployment: String,
        /// Its status, 401 or 403.
        status: u16,
    },
    /// A 2xx whose body is not a chat completion (502).
    #[error("deployment `{deployment}` answered success with {why}")]
    InvalidUpstreamAnswer {
        /// The deployment.
        deployment: String,
        /// What the body was.
        why: &'static str,
    },
    /// The scorer's queue is full (503, with `Retry-After`).
    #[error("{0}")]
    Overloaded(String),
    /// The connection cap is reached (503, with `Retry-After`).
    #[error("The router is serving as many connections as it may; retry shortly.")]
    TooManyConnections,
    /// A backend did not answer in time (504).
    #[error("{0}")]
    GatewayTimeout(String),
    /// The store is full and refuses the write (507).
    #[error("{0}")]
    StoreFull(String),
}

/// What a variant answers with: status, OpenAI `type`, `code`.
struct Class(StatusCode, &'static str, Option<&'static str>);

const INVALID: &str = "invalid_request_error";
const SERVER: &str = "server_error";

impl ApiError {
    /// A 400 [`ApiError::InvalidRequest`].
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: param.map(str::to_string),
        }
    }

    /// The one table of statuses, types and codes.
    fn class(&self) -> Class {
        use ApiError::*;
        match self {
            InvalidRequest { .. } => Class(StatusCode::BAD_REQUEST, INVALID, None),
            InvalidMetadata(_) => Class(StatusCode::BAD_REQUEST, INVALID, Some("invalid_metadata")),
            StoreNotConfigured { .. } => Class(
                StatusCode::BAD_REQUEST,
                INVALID,
                Some("store_not_configured"),
            ),
            ModelNotDeployed(_) => {
                Class(StatusCode::BAD_REQUEST, INVALID, Some("model_not_deployed"))
            }
            DeploymentNotFound(_) => Class(
                StatusCode::BAD_REQUEST,
                INVALID,
                Some("deployment_not_found"),
            ),
            NoEligibleModel(_) => {
                Class(StatusCode::BAD_REQUEST, INVALID, Some("no_eligible_model"))
            }
            Unauthorized { .. } => {
                Class(StatusCode::UNAUTHORIZED, INVALID, Some("invalid_api_key"))
            }
            UnknownPath | CompletionNotFound(_) => {
                Class(StatusCode::NOT_FOUND, INVALID, Some("not_found"))
            }
            ModelNotFound { .. } => Class(StatusCode::NOT_FOUND, INVALID, Some("model_not_found")),
            BodyTimeout(_) => Class(
                StatusCode::REQUEST_TIMEOUT,
                INVALID,
                Some("request_timeout"),
            ),
            RequestTooLarge(_) => Class(
                StatusCode::PAYLOAD_TOO_LARGE,
                INVALID,
                Some("request_too_large"),
            ),
            BundleRefused(_) => Class(
                StatusCode::UNPROCESSABLE_ENTITY,
                INVALID,
                Some("bundle_refused"),
            ),
            RateLimited { .. } => Class(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                Some("rate_limit_exceeded"),
            ),
            Internal(_) => Class(StatusCode::INTERNAL_SERVER_ERROR, SERVER, None),
            StoreFailed(_) => Class(
                StatusCode::INTERNAL_SERVER_ERROR,
                SERVER,
                Some("store_error"),
            ),
            Upstream(_) => Class(StatusCode::BAD_GATEWAY, SERVER, Some("upstream_error")),
            UpstreamAuthFailed { .. } => Class(
                StatusCode::BAD_GATEWAY,
                SERVER,
                Some("upstream_auth_failed"),
            ),
            InvalidUpstreamAnswer { .. } => Class(
                StatusCode::BAD_GATEWAY,
                SERVER,
                Some("invalid_upstream_answer"),
            ),
            Overloaded(_) => Class(StatusCode::SERVICE_UNAVAILABLE, SERVER, Some("overloaded")),
            TooManyConnections => Class(
                StatusCode::SERVICE_UNAVAILABLE,
                SERVER,
                Some("too_many_connections"),
            ),
            GatewayTimeout(_) => {
                Class(StatusCode::GATEWAY_TIMEOUT, SERVER, Some("gateway_timeout"))
            }
            StoreFull(_) => Class(StatusCode::INSUFFICIENT_STORAGE, SERVER, Some("store_full")),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.class().0
    }

    /// OpenAI's `type`, e.g. `invalid_request_error`.
    pub fn kind(&self) -> &'static str {
        self.class().1
    }

    /// The machine-readable `code`, e.g. `model_not_found`.
    pub fn code(&self) -> Option<&'static str> {
        self.class().2
    }

    /// The request parameter at fault.
    pub fn param(&self) -> Option<&str> {
        match self {
            ApiError::InvalidRequest { param, .. } => param.as_deref(),
            ApiError::StoreNotConfigured { param } => *param,
            ApiError::InvalidMetadata(_) => Some("metadata"),
            ApiError::ModelNotDeployed(_) | ApiError::ModelNotFound { .. } => Some("model"),
            ApiError::DeploymentNotFound(_) => Some("x-ms-spillover-deployment"),
            _ => None,
        }
    }

    /// The `Retry-After` sent: a 429 or 503 always has one (whole seconds, at least 1;
    /// [`DEFAULT_RETRY_AFTER`] when the wait is not known), other errors none.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::RateLimited {
                retry_after: Some(wait),
            } => Some(*wait),
            ApiError::RateLimited { retry_after: None }
            | ApiError::Overloaded(_)
            | ApiError::TooManyConnections => Some(DEFAULT_RETRY_AFTER),
            _ => None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.to_string(),
                "type": self.kind(),
                "param": self.param(),
                "code": self.code(),
            }
        })
    }
}

impl From<BytesRejection> for ApiError {
    /// A body that could not be read: too large (413), else a 400.
    fn from(rejection: BytesRejection) -> Self {
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::RequestTooLarge(rejection.body_text()),
            _ => ApiError::invalid(rejection.body_text(), None),
        }
    }
}

/// The `Retry-After` of a 429 or 503 whose wait is not known.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The code of an error response, kept in its extensions for the access log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ErrorCode(pub(crate) &'static str);

impl IntoResponse for ApiError {
    /// The JSON body, with `Retry-After` from [`ApiError::retry_after`].
    fn into_response(self) -> Response {
        let mut response = (self.status(), axum::Json(self.body())).into_response();
        response
            .extensions_mut()
            .insert(ErrorCode(self.code().unwrap_or(self.kind())));
        if let Some(wait) = self.retry_after() {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            if let Ok(value) = HeaderValue::from_str(&secs.max(1).to_string()) {
                response.headers_mut().insert("retry-after", value);
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d() -> String {
        "d".to_string()
    }

    #[test]
    fn each_variant_owns_its_status_type_and_code() {
        let cases: Vec<(ApiError, u16, &str, Option<&str>)> = vec![
            (ApiError::invalid("x", None), 400, INVALID, None),
            (
                ApiError::InvalidMetadata(d()),
                400,
                INVALID,
                Some("invalid_metadata"),
            ),
            (
                ApiError::StoreNotConfigured { param: None },
                400,
                INVALID,
                Some("store_not_configured"),
            ),
            (
                ApiError::ModelNotDeployed(d()),
                400,
                INVALID,
                Some("model_not_deployed"),
            ),
            (
                ApiError::DeploymentNotFound(d()),
                400,
                INVALID,
                Some("deployment_not_found"),
            ),
            (
                ApiError::NoEligibleModel(d()),
                400,
                INVALID,
                Some("no_eligible_model"),
            ),
            (
                ApiError::Unauthorized { key_given: true },
                401,
                INVALID,
                Some("invalid_api_key"),
            ),
            (ApiError::UnknownPath, 404, INVALID, Some("not_found")),
            (
                ApiError::CompletionNotFound(d()),
                404,
                INVALID,
                Some("not_found"),
            ),
            (
                ApiError::ModelNotFound {
                    model: d(),
                    router: d(),
                },
                404,
                INVALID,
                Some("model_not_found"),
            ),
            (
                ApiError::BodyTimeout(Duration::from_millis(5)),
                408,
                INVALID,
                Some("request_timeout"),
            ),
            (
                ApiError::RequestTooLarge(d()),
                413,
                INVALID,
                Some("request_too_large"),
            ),
            (
                ApiError::BundleRefused(d()),
                422,
                INVALID,
                Some("bundle_refused"),
            ),
            (
                ApiError::RateLimited { retry_after: None },
                429,
                "rate_limit_error",
                Some("rate_limit_exceeded"),
            ),
            (ApiError::Internal(d()), 500, SERVER, None),
            (ApiError::StoreFailed(d()), 500, SERVER, Some("store_error")),
            (ApiError::Upstream(d()), 502, SERVER, Some("upstream_error")),
            (
                ApiError::UpstreamAuthFailed {
                    deployment: d(),
                    status: 401,
                },
                502,
                SERVER,
                Some("upstream_auth_failed"),
            ),
            (
                ApiError::InvalidUpstreamAnswer {
                    deployment: d(),
                    why: "x",
                },
                502,
                SERVER,
                Some("invalid_upstream_answer"),
            ),
            (ApiError::Overloaded(d()), 503, SERVER, Some("overloaded")),
            (
                ApiError::TooManyConnections,
                503,
                SERVER,
                Some("too_many_connections"),
            ),
            (
                ApiError::GatewayTimeout(d()),
                504,
                SERVER,
                Some("gateway_timeout"),
            ),
            (ApiError::StoreFull(d()), 507, SERVER, Some("store_full")),
        ];
        for (error, status, kind, code) in cases {
            assert_eq!(
                (error.status().as_u16(), error.kind(), error.code()),
                (status, kind, code),
                "{error:?}"
            );
            let body = error.body();
            assert_eq!(body["error"]["type"], kind);
            assert_eq!(body["error"]["message"], error.to_string());
            assert!(!error.to_string().is_empty());
        }
    }

    #[test]
    fn every_429_and_503_carries_retry_after() {
        let header = |e: ApiError| {
            let response = e.into_response();
            let value = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().map(str::to_string));
            (response.status().as_u16(), value.and_then(Result::ok))
        };
        assert_eq!(
            header(ApiError::TooManyConnections),
            (503, Some("1".into()))
        );
        assert_eq!(header(ApiError::Overloaded(d())), (503, Some("1".into())));
        assert_eq!(
            header(ApiError::RateLimited { retry_after: None }),
            (429, Some("1".into()))
        );
        let wait = Some(Duration::from_millis(2500));
        assert_eq!(
            header(ApiError::RateLimited { retry_after: wait }),
            (429, Some("3".into()))
        );
        assert_eq!(header(ApiError::Upstream(d())), (502, None));
    }

    #[test]
    fn params_name_the_field_at_fault() {
        assert_eq!(
            ApiError::invalid("x", Some("stream")).param(),
            Some("stream")
        );
        assert_eq!(ApiError::InvalidMetadata(d()).param(), Some("metadata"));
        assert_eq!(
            ApiError::StoreNotConfigured {
                param: Some("store")
            }
            .body()["error"]["param"],
            "store"
        );
        assert_eq!(
            ApiError::ModelNotFound {
                model: d(),
                router: d()
            }
            .param(),
            Some("model")
        );
        assert_eq!(
            ApiError::Upstream(d()).body()["error"]["param"],
            serde_json::Value::Null
        );
    }
}
