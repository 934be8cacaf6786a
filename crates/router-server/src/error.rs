//! Errors: the crate's start-up error type and the OpenAI-style API error.

use std::path::PathBuf;
use std::time::Duration;

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
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable message.
    pub message: String,
    /// OpenAI's `type`, e.g. `invalid_request_error`.
    pub kind: &'static str,
    /// The request parameter at fault.
    pub param: Option<String>,
    /// A machine-readable code.
    pub code: Option<&'static str>,
    /// A `Retry-After` to send.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    /// A 400 `invalid_request_error`.
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
            retry_after: None,
        }
    }

    /// Any status and type.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// Sets the code.
    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

/// The `Retry-After` of a 429 or 503 whose wait is not known.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The code of an error response, kept in its extensions for the access log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ErrorCode(pub(crate) &'static str);

impl IntoResponse for ApiError {
    /// The JSON body; a 429 or 503 always carries `Retry-After` (whole seconds, at least 1;
    /// [`DEFAULT_RETRY_AFTER`] when the wait is not known).
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        response
            .extensions_mut()
            .insert(ErrorCode(self.code.unwrap_or(self.kind)));
        let busy = matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        );
        let retry_after = self.retry_after.or(busy.then_some(DEFAULT_RETRY_AFTER));
        if let Some(wait) = retry_after {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            if let Ok(value) = HeaderValue::from_str(&secs.max(1).to_string()) {
                response.headers_mut().insert("retry-after", value);
            }
        }
        response
    }
}
