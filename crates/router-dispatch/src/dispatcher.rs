//! The dispatcher: deployments, cooldowns, retries and spillover.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::StatusCode;

use crate::{Deployment, DeploymentKind, DispatchError};

/// Timeouts, retries and cooldowns.
#[derive(Debug, Clone)]
pub struct DispatchOptions {
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Time allowed, per attempt, until the response headers arrive. The server allows a
    /// non-streamed body the same time again to arrive in full; a streamed body is limited
    /// only by [`DispatchOptions::read_timeout`] between its chunks.
    pub timeout: Duration,
    /// Longest silence allowed between two chunks of a response body.
    pub read_timeout: Duration,
    /// Retries after a connection error, a timeout or a 5xx (so `max_retries + 1` attempts).
    pub max_retries: u32,
    /// Base of the exponential backoff between retries (jittered to 50–100 %).
    pub backoff: Duration,
    /// Cap of one backoff, including one taken from a 5xx's `Retry-After`.
    pub max_backoff: Duration,
    /// Cooldown after a second 429 in a row without a usable `Retry-After` (doubled for each
    /// further one). A single 429 does not cool the deployment.
    pub default_cooldown: Duration,
    /// Cap of one cooldown.
    pub max_cooldown: Duration,
    /// While a deployment cools down, one request per `probe_interval` is still let through
    /// (a probe); an answer other than 429 ends the cooldown at once.
    pub probe_interval: Duration,
}

impl Default for DispatchOptions {
    fn default() -> Self {
        DispatchOptions {
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(120),
            read_timeout: Duration::from_secs(120),
            max_retries: 2,
            backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            default_cooldown: Duration::from_secs(10),
            max_cooldown: Duration::from_secs(300),
            probe_interval: Duration::from_secs(1),
        }
    }
}

/// One request to dispatch.
#[derive(Debug, Clone, Copy)]
pub struct DispatchRequest<'a> {
    /// The chosen model's deployments, in order of preference.
    pub deployments: &'a [String],
    /// The chat-completions body; its `model` is replaced per deployment.
    pub body: &'a serde_json::Value,
    /// A spillover deployment named by the caller (`x-ms-spillover-deployment`), replacing the
    /// configured one.
    pub spillover: Option<&'a str>,
}

/// A response from a deployment, headers received, body not yet read.
#[derive(Debug)]
pub struct Dispatched {
    /// The upstream response: read it or stream it.
    pub response: reqwest::Response,
    /// The deployment that answered.
    pub deployment: String,
    /// The provisioned deployment this request spilled over from.
    pub spillover_from: Option<String>,
    /// Attempts made in all (including 429s and retries).
    pub attempts: u32,
    /// Time from the last attempt's start to its response headers.
    pub latency: Duration,
}

/// Sends requests to deployments; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Dispatcher {
    client: reqwest::Client,
    deployments: HashMap<String, Deployment>,
    cooldowns: Mutex<HashMap<String, Cooling>>,
    options: DispatchOptions,
}

/// A deployment's rate-limit state, from the 429s it answered in a row.
#[derive(Debug, Clone, Copy)]
struct Cooling {
    /// 429s in a row (an answer other than 429 forgets the deployment's state).
    strikes: u32,
    /// No request goes there before this, except a probe.
    until: Instant,
    /// When the next probe may go.
    next_probe: Instant,
}

enum Outcome {
    Response(reqwest::Response, Duration),
    TooMany(Option<Duration>),
    Failed(DispatchError),
}

impl Dispatcher {
    /// Validates the deployments (names unique, URLs, spillover targets) and builds the client.
    pub fn new(
        deployments: Vec<Deployment>,
        options: DispatchOptions,
    ) -> Result<Self, DispatchError> {
        let mut table = HashMap::new();
        for deployment in deployments {
            deployment.validate()?;
            let name = deployment.name.clone();
            if table.insert(name.clone(), deployment).is_some() {
                return Err(DispatchError::DuplicateDeployment(name));
            }
        }
        for deployment in table.values() {
            if let Some(spill) = &deployment.spillover {
                if !table.contains_key(spill) {
                    return Err(DispatchError::InvalidDeployment {
                        deployment: deployment.name.clone(),
                        reason: format!("spillover names unknown deployment `{spill}`"),
                    });
                }
                if spill == &deployment.name {
                    return Err(DispatchError::InvalidDeployment {
                        deployment: deployment.name.clone(),
                        reason: "spillover names the deployment itself".into(),
                    });
                }
            }
        }
        let client = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .read_timeout(options.read_timeout)
            .build()
            .map_err(|e| DispatchError::Client(e.to_string()))?;
        Ok(Dispatcher {
            client,
            deployments: table,
            cooldowns: Mutex::new(HashMap::new()),
            options,
        })
    }

    /// A deployment by name.
    pub fn deployment(&self, name: &str) -> Option<&Deployment> {
        self.deployments.get(name)
    }

    /// The options.
    pub fn options(&self) -> &DispatchOptions {
        &self.options
    }

    /// How long `name` stays cooled down, if it is.
    pub fn cooldown_left(&self, name: &str) -> Option<Duration> {
        let now = Instant::now();
        let map = self.cooldowns.lock().unwrap_or_else(|p| p.into_inner());
        map.get(name)
            .filter(|c| c.until > now)
            .map(|c| c.until - now)
    }

    /// Whether a request may go to `name` now: it is not cooling down, or this request is the
    /// cooling deployment's probe.
    fn admits(&self, name: &str) -> bool {
        let now = Instant::now();
        let mut map = self.cooldowns.lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(name) {
            Some(c) if c.until > now => {
                if now < c.next_probe {
                    return false;
                }
                c.next_probe = now + self.options.probe_interval;
                true
            }
            _ => true,
        }
    }

    /// A 429 from `name`. One 429 is one request too many, not a saturated deployment: only
    /// from the second in a row on is it cooled, for its `Retry-After`, else for
    /// `default_cooldown` doubled for each further 429, capped by `max_cooldown`.
    fn too_many(&self, name: &str, retry_after: Option<Duration>) {
        let now = Instant::now();
        let mut map = self.cooldowns.lock().unwrap_or_else(|p| p.into_inner());
        let strikes = map.get(name).map_or(0, |c| c.strikes).saturating_add(1);
        let wait = match retry_after {
            _ if strikes < 2 => Duration::ZERO,
            Some(wait) => wait,
            None => self
                .options
                .default_cooldown
                .saturating_mul(1u32 << (strikes - 2).min(16)),
        }
        .min(self.options.max_cooldown);
        map.insert(
            name.to_string(),
            Cooling {
                strikes,
                until: now + wait,
                next_probe: now + self.options.probe_interval.min(wait),
            },
        );
    }

    /// An answer other than 429 from `name`: it is not rate-limited any more.
    fn answered(&self, name: &str) {
        let mut map = self.cooldowns.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(name);
    }

    /// Sends the request to the first deployment that takes it; see the crate docs.
    pub async fn dispatch(
        &self,
        request: DispatchRequest<'_>,
    ) -> Result<Dispatched, DispatchError> {
        self.dispatch_traced(request, None).await
    }

    /// [`Dispatcher::dispatch`], with `request_id` sent upstream as `x-request-id` on every
    /// attempt, so a backend's logs can be matched with the router's.
    pub async fn dispatch_with_id(
        &self,
        request: DispatchRequest<'_>,
        request_id: &str,
    ) -> Result<Dispatched, DispatchError> {
        self.dispatch_traced(request, Some(request_id)).await
    }

    async fn dispatch_traced(
        &self,
        request: DispatchRequest<'_>,
        request_id: Option<&str>,
    ) -> Result<Dispatched, DispatchError> {
        if request.deployments.is_empty() {
            return Err(DispatchError::NoDeployments);
        }
        if let Some(spill) = request.spillover {
            if !self.deployments.contains_key(spill) {
                return Err(DispatchError::UnknownDeployment(spill.to_string()));
            }
        }
        let mut attempts = 0u32;
        let mut saturated: Vec<String> = Vec::new();
        // The shortest wait a 429 asked for, in this request.
        let mut asked_wait: Option<Duration> = None;
        let mut note_wait = |wait: Option<Duration>| {
            asked_wait = match (asked_wait, wait) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        };
        let mut failure: Option<DispatchError> = None;
        let mut tried: HashSet<&str> = HashSet::new();
        for name in request.deployments {
            let primary = self
                .deployments
                .get(name)
                .ok_or_else(|| DispatchError::UnknownDeployment(name.clone()))?;
            if !tried.insert(primary.name.as_str()) {
                continue;
            }
            if self.admits(&primary.name) {
                match self
                    .send_with_retries(primary, request.body, request_id, &mut attempts)
                    .await
                {
                    Outcome::Response(response, latency) => {
                        return Ok(Dispatched {
                            response,
                            deployment: primary.name.clone(),
                            spillover_from: None,
                            attempts,
                            latency,
                        })
                    }
                    Outcome::TooMany(retry_after) => {
                        note_wait(retry_after);
                        self.too_many(&primary.name, retry_after);
                        saturated.push(primary.name.clone());
                    }
                    Outcome::Failed(error) => {
                        failure = Some(error);
                        continue;
                    }
                }
            } else {
                saturated.push(primary.name.clone());
            }
            // The primary answered 429 or is cooling down.
            if !primary.provisioned {
                continue;
            }
            let Some(spill_name) = request.spillover.or(primary.spillover.as_deref()) else {
                continue;
            };
            let Some(spill) = self.deployments.get(spill_name) else {
                continue;
            };
            if !tried.insert(spill.name.as_str()) {
                continue;
            }
            if !self.admits(&spill.name) {
                saturated.push(spill.name.clone());
                continue;
            }
            match self
                .send_with_retries(spill, request.body, request_id, &mut attempts)
                .await
            {
                Outcome::Response(response, latency) => {
                    return Ok(Dispatched {
                        response,
                        deployment: spill.name.clone(),
                        spillover_from: Some(primary.name.clone()),
                        attempts,
                        latency,
                    })
                }
                Outcome::TooMany(retry_after) => {
                    note_wait(retry_after);
                    self.too_many(&spill.name, retry_after);
                    saturated.push(spill.name.clone());
                }
                Outcome::Failed(error) => failure = Some(error),
            }
        }
        if let Some(error) = failure {
            return Err(error);
        }
        let cooling = saturated.iter().filter_map(|n| self.cooldown_left(n)).min();
        note_wait(cooling);
        let retry_after = asked_wait;
        Err(DispatchError::Saturated {
            deployments: saturated,
            retry_after,
        })
    }

    async fn send_with_retries(
        &self,
        deployment: &Deployment,
        body: &serde_json::Value,
        request_id: Option<&str>,
        attempts: &mut u32,
    ) -> Outcome {
        let url = match deployment.chat_completions_url() {
            Ok(url) => url,
            Err(e) => return Outcome::Failed(e),
        };
        let mut body = body.clone();
        if let Some(object) = body.as_object_mut() {
            object.insert(
                "model".into(),
                serde_json::Value::String(deployment.model.clone()),
            );
        }
        let bytes = match serde_json::to_vec(&body) {
            Ok(b) => b,
            Err(e) => {
                return Outcome::Failed(DispatchError::Upstream {
                    deployment: deployment.name.clone(),
                    message: e.to_string(),
                    attempts: *attempts,
                })
            }
        };
        let mut local = 0u32;
        loop {
            *attempts += 1;
            local += 1;
            let last = local > self.options.max_retries;
            let mut builder = self
                .client
                .post(url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes.clone());
            if let Some(id) = request_id {
                builder = builder.header("x-request-id", id);
            }
            if let Some(key) = &deployment.api_key {
                let (header, value) = match deployment.kind {
                    DeploymentKind::OpenAi => ("authorization", format!("Bearer {}", key.expose())),
                    DeploymentKind::Azure => ("api-key", key.expose().to_string()),
                };
                match HeaderValue::from_str(&value) {
                    Ok(mut value) => {
                        value.set_sensitive(true);
                        builder = builder.header(header, value);
                    }
                    Err(_) => {
                        return Outcome::Failed(DispatchError::InvalidDeployment {
                            deployment: deployment.name.clone(),
                            reason: "the API key is not a valid header value".into(),
                        })
                    }
                }
            }
            let start = Instant::now();
            let result = tokio::time::timeout(self.options.timeout, builder.send()).await;
            let latency = start.elapsed();
            let error = match result {
                Ok(Ok(response)) => {
                    let status = response.status();
                    if status == StatusCode::TOO_MANY_REQUESTS {
                        return Outcome::TooMany(retry_after(response.headers()));
                    }
                    self.answered(&deployment.name);
                    if status.is_server_error() && !last {
                        let wait = retry_after(response.headers())
                            .map(|d| d.min(self.options.max_backoff))
                            .unwrap_or_else(|| self.backoff(local));
                        drop(response);
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    return Outcome::Response(response, latency);
                }
                // reqwest's own read timeout: the headers did not come in time either.
                Ok(Err(e)) if e.is_timeout() => DispatchError::Timeout {
                    deployment: deployment.name.clone(),
                    timeout: self.options.timeout.min(self.options.read_timeout),
                    attempts: local,
                },
                Ok(Err(e)) => DispatchError::Upstream {
                    deployment: deployment.name.clone(),
                    message: describe(&e),
                    attempts: local,
                },
                Err(_) => DispatchError::Timeout {
                    deployment: deployment.name.clone(),
                    timeout: self.options.timeout,
                    attempts: local,
                },
            };
            if last {
                return Outcome::Failed(error);
            }
            tokio::time::sleep(self.backoff(local)).await;
        }
    }

    /// Jittered exponential backoff before retry number `attempt` (1-based).
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .options
            .backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let capped = exp.min(self.options.max_backoff);
        capped.mul_f64(0.5 + 0.5 * rand::random::<f64>())
    }
}

/// A reqwest error without its URL's query (no secrets are there, but keep messages short).
fn describe(error: &reqwest::Error) -> String {
    let mut message = if error.is_connect() {
        "connection failed".to_string()
    } else if error.is_timeout() {
        "timed out".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// `retry-after-ms` (Azure) or `Retry-After` in seconds.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
    {
        if ms.is_finite() && ms >= 0.0 {
            return Some(Duration::from_secs_f64(ms / 1000.0));
        }
    }
    let secs = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()?;
    (0.0..1e9)
        .contains(&secs)
        .then(|| Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_retry_after() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn rejects_bad_spillover() {
        let url = reqwest::Url::parse("http://127.0.0.1:1/v1").unwrap();
        let mut d = Deployment::new("a", DeploymentKind::OpenAi, url, "m");
        d.spillover = Some("nope".into());
        let err = Dispatcher::new(vec![d], DispatchOptions::default()).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
