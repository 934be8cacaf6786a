//! Upstream answers that are not answers: what the client gets instead.
//!
//! A backend's 5xx (even with an empty body), its 401/403 (whose body some providers fill with
//! part of the key), a 200 whose body is not a chat completion, a body that breaks off or
//! does not arrive in time: none of these reaches the client as it came. Each becomes an
//! OpenAI-shaped error of the router's own (502, or 504 for time), is counted in
//! `model_router_upstream_failures_total{deployment,kind}` and is never stored.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::ApiError;

/// Why an upstream answer is not passed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// 401 or 403: the backend refused the router's own key.
    Credentials(u16),
    /// A 5xx after the dispatcher's retries.
    ServerError(u16),
    /// A 2xx whose body is not a chat completion (why).
    NotACompletion(&'static str),
    /// The body broke off.
    Broken,
    /// The body did not arrive within the timeout.
    TimedOut(Duration),
}

impl Failure {
    /// The failure an upstream status is, if it is one (other 4xx are the client's and pass).
    pub(crate) fn of_status(status: u16) -> Option<Failure> {
        match status {
            401 | 403 => Some(Failure::Credentials(status)),
            500..=599 => Some(Failure::ServerError(status)),
            _ => None,
        }
    }

    /// The body of a successful non-streamed answer as a chat completion: a JSON object with
    /// a `choices` array.
    pub(crate) fn completion(bytes: &[u8]) -> Result<Map<String, Value>, Failure> {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(object)) => match object.get("choices") {
                Some(Value::Array(_)) => Ok(object),
                _ => Err(Failure::NotACompletion(
                    "a JSON object without a `choices` array",
                )),
            },
            Ok(_) => Err(Failure::NotACompletion("JSON that is not an object")),
            Err(_) => Err(Failure::NotACompletion("a body that is not JSON")),
        }
    }

    /// The `kind` label of `model_router_upstream_failures_total`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Failure::Credentials(_) => "credentials",
            Failure::ServerError(_) => "server_error",
            Failure::NotACompletion(_) => "not_a_completion",
            Failure::Broken => "broken",
            Failure::TimedOut(_) => "timeout",
        }
    }

    /// What the client gets: the router's own message, never the backend's body.
    pub(crate) fn error(&self, deployment: &str) -> ApiError {
        let deployment = deployment.to_string();
        match self {
            Failure::Credentials(status) => ApiError::UpstreamAuthFailed {
                deployment,
                status: *status,
            },
            Failure::ServerError(status) => ApiError::Upstream(format!(
                "deployment `{deployment}` failed with HTTP {status}"
            )),
            Failure::NotACompletion(why) => ApiError::InvalidUpstreamAnswer { deployment, why },
            Failure::Broken => {
                ApiError::Upstream(format!("deployment `{deployment}` broke off its response"))
            }
            Failure::TimedOut(limit) => ApiError::GatewayTimeout(format!(
                "deployment `{deployment}` did not finish its response within {} ms",
                limit.as_millis()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn only_chat_completions_pass() {
        assert!(Failure::completion(br#"{"choices": []}"#).is_ok());
        for bad in [
            &b"<html>"[..],
            b"[1]",
            br#"{"id": "x"}"#,
            br#"{"choices": 1}"#,
            b"",
        ] {
            let failure = Failure::completion(bad).unwrap_err();
            assert_eq!(failure.error("d").status(), StatusCode::BAD_GATEWAY);
        }
    }

    #[test]
    fn statuses() {
        assert_eq!(Failure::of_status(200), None);
        assert_eq!(Failure::of_status(400), None);
        assert_eq!(Failure::of_status(403), Some(Failure::Credentials(403)));
        assert_eq!(
            Failure::of_status(503).map(|f| f.error("d").code()),
            Some(Some("upstream_error"))
        );
    }
}
