//! The dispatcher: deployments, cooldowns, retries and spillover.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::StatusCode;

use crate::capacity::{tokens_to_charge, Headroom, RateLimitHeaders};
use crate::limits::{Admission, LocalLimits, SharedLimits};
use crate::load::{DeploymentLoad, LocalState, SpillReason};
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
    /// Capacity-aware dispatch (default on): a deployment whose declared capacity or last
    /// rate-limit headers leave no room for a request is skipped before sending. Off, only
    /// 429s and cooldowns decide (the behaviour before capacity awareness).
    pub capacity_aware: bool,
    /// The sliding window declared capacities are enforced over, the per-minute figures scaled
    /// to it ([`crate::Capacity::over`]); a minute by default. A shorter one also smooths
    /// bursts inside the minute, as backends that enforce limits per 10 seconds do.
    pub capacity_window: Duration,
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
            capacity_aware: true,
            capacity_window: crate::WINDOW,
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
    /// Why it spilled over, with `spillover_from`.
    pub spill_reason: Option<SpillReason>,
    /// Attempts made in all (including 429s and retries).
    pub attempts: u32,
    /// The deployments that answered this request 429 before one answered it, one entry per
    /// 429 (a cooling deployment skipped without a round trip is not among them).
    pub throttled: Vec<String>,
    /// Time from the last attempt's start to its response headers.
    pub latency: Duration,
}

/// Sends requests to deployments; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Dispatcher {
    client: reqwest::Client,
    deployments: HashMap<String, Deployment>,
    /// This process's strikes, probes, in-flight counts, learned headroom and spill counts.
    local: Mutex<HashMap<String, LocalState>>,
    /// Capacity windows and cooldown ends: this process's own, or shared by replicas.
    limits: Arc<dyn SharedLimits>,
    /// Calls to `limits` that failed (the dispatcher then admits: a broken shared store must
    /// not stop traffic).
    limits_errors: AtomicU64,
    options: DispatchOptions,
}

enum Outcome {
    Response(reqwest::Response, Duration),
    TooMany(Option<Duration>),
    Failed(DispatchError),
}

/// Whether a request may go to a deployment now.
enum Gate {
    /// Send it; `probe` when the deployment cools down and this is its probe.
    Send { probe: bool },
    /// Move on, for this reason; the deployment may take it again after the wait, when known.
    Skip(SpillReason, Option<Duration>),
}

/// What trying one deployment came to.
enum Step {
    Answered(reqwest::Response, Duration),
    MovedOn(SpillReason),
    Failed,
}

/// One request's progress through its deployments.
#[derive(Default)]
struct Run<'r> {
    attempts: u32,
    /// The deployments that answered 429, one entry per 429.
    throttled: Vec<String>,
    saturated: Vec<String>,
    /// The shortest wait a refusal named.
    wait: Option<Duration>,
    failure: Option<DispatchError>,
    tried: HashSet<&'r str>,
}

impl Run<'_> {
    fn refused(&mut self, deployment: &str, wait: Option<Duration>) {
        self.saturated.push(deployment.to_string());
        self.wait = match (self.wait, wait) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    fn answered(
        self,
        response: reqwest::Response,
        deployment: &Deployment,
        spilled: Option<(&Deployment, SpillReason)>,
        latency: Duration,
    ) -> Dispatched {
        Dispatched {
            response,
            deployment: deployment.name.clone(),
            spillover_from: spilled.map(|(from, _)| from.name.clone()),
            spill_reason: spilled.map(|(_, reason)| reason),
            attempts: self.attempts,
            throttled: self.throttled,
            latency,
        }
    }

    fn exhausted(self) -> DispatchError {
        match self.failure {
            Some(error) => error,
            None => DispatchError::Saturated {
                deployments: self.saturated,
                retry_after: self.wait,
            },
        }
    }
}

/// Counts one request in flight to a deployment while it lives (also when the request's future
/// is dropped mid-way).
struct InFlight<'d> {
    dispatcher: &'d Dispatcher,
    deployment: &'d str,
}

impl<'d> InFlight<'d> {
    fn start(dispatcher: &'d Dispatcher, deployment: &'d str) -> Self {
        dispatcher.with_local(deployment, |s| s.in_flight += 1);
        InFlight {
            dispatcher,
            deployment,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.dispatcher.with_local(self.deployment, |s| {
            s.in_flight = s.in_flight.saturating_sub(1)
        });
    }
}

impl Dispatcher {
    /// Validates the deployments (names unique, URLs, spillover targets) and builds the client.
    /// Capacity windows and cooldowns are this process's own ([`LocalLimits`]); see
    /// [`Dispatcher::with_shared_limits`].
    pub fn new(
        deployments: Vec<Deployment>,
        options: DispatchOptions,
    ) -> Result<Self, DispatchError> {
        let table = deployment_table(deployments)?;
        let client = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .read_timeout(options.read_timeout)
            .build()
            .map_err(|e| DispatchError::Client(e.to_string()))?;
        Ok(Dispatcher {
            client,
            deployments: table,
            local: Mutex::new(HashMap::new()),
            limits: Arc::new(LocalLimits::default()),
            limits_errors: AtomicU64::new(0),
            options,
        })
    }

    /// Keeps capacity windows and cooldowns in `limits` (e.g. a database that other replicas
    /// share) instead of in this process.
    pub fn with_shared_limits(mut self, limits: Arc<dyn SharedLimits>) -> Self {
        self.limits = limits;
        self
    }

    /// A deployment by name.
    pub fn deployment(&self, name: &str) -> Option<&Deployment> {
        self.deployments.get(name)
    }

    /// The options.
    pub fn options(&self) -> &DispatchOptions {
        &self.options
    }

    /// How long `name` stays cooled down, if it does. With shared limits that block, this
    /// blocks on their store: call it off the async runtime.
    pub fn cooldown_left(&self, name: &str) -> Option<Duration> {
        self.limits.cooldown_left(name).unwrap_or_else(|_| {
            self.limits_errors.fetch_add(1, Ordering::Relaxed);
            None
        })
    }

    /// Calls to the shared limits that failed (each one admitted the request).
    pub fn limits_errors(&self) -> u64 {
        self.limits_errors.load(Ordering::Relaxed)
    }

    /// Every deployment's load, sorted by name.
    pub async fn load_snapshot(&self) -> Vec<DeploymentLoad> {
        let mut names: Vec<String> = self.deployments.keys().cloned().collect();
        names.sort();
        let queried = names.clone();
        let length = self.options.capacity_window;
        let shared = self
            .call_limits(move |limits| {
                queried
                    .iter()
                    .map(|n| Ok((limits.usage(n, length)?, limits.cooldown_left(n)?)))
                    .collect::<Result<Vec<_>, DispatchError>>()
            })
            .await
            .unwrap_or_else(|_| vec![Default::default(); names.len()]);
        let now = Instant::now();
        let map = self.local.lock().unwrap_or_else(|p| p.into_inner());
        names
            .into_iter()
            .zip(shared)
            .map(|(name, (usage, cooling))| {
                let capacity = self
                    .deployments
                    .get(&name)
                    .map(Deployment::capacity)
                    .unwrap_or_default();
                let state = map.get(&name);
                let (headroom_tokens, headroom_requests) = state
                    .and_then(|s| s.headroom)
                    .map_or((None, None), |h| h.current(now));
                DeploymentLoad {
                    capacity,
                    window_tokens: usage.tokens,
                    window_requests: usage.requests,
                    in_flight: state.map_or(0, |s| s.in_flight),
                    utilisation: capacity.over(length).utilisation(usage),
                    headroom_tokens,
                    headroom_requests,
                    cooling,
                    spills: state.map(|s| s.spills).unwrap_or_default(),
                    deployment: name,
                }
            })
            .collect()
    }

    fn with_local<T>(&self, name: &str, f: impl FnOnce(&mut LocalState) -> T) -> T {
        let mut map = self.local.lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(name) {
            Some(state) => f(state),
            None => f(map.entry(name.to_string()).or_default()),
        }
    }

    /// Runs `f` on the limits: inline, or on the blocking pool when they do I/O. A failure is
    /// counted in [`Dispatcher::limits_errors`].
    async fn call_limits<T, F>(&self, f: F) -> Result<T, DispatchError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn SharedLimits) -> Result<T, DispatchError> + Send + 'static,
    {
        let result = if self.limits.blocks() {
            let limits = Arc::clone(&self.limits);
            tokio::task::spawn_blocking(move || f(limits.as_ref()))
                .await
                .unwrap_or_else(|e| Err(DispatchError::Limits(e.to_string())))
        } else {
            f(self.limits.as_ref())
        };
        if result.is_err() {
            self.limits_errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Whether a request charged `charge` tokens (`None`: capacity-unaware) may go to
    /// `deployment` now: the learned headroom, then the cooldown and the window (see the crate
    /// docs).
    async fn gate(&self, deployment: &Deployment, charge: Option<u64>) -> Gate {
        let now = Instant::now();
        let name = deployment.name.as_str();
        if let Some(tokens) = charge {
            let refused =
                self.with_local(name, |s| s.headroom.and_then(|h| h.refuses(now, tokens)));
            if let Some(wait) = refused {
                return Gate::Skip(SpillReason::PredictedFull, Some(wait));
            }
        }
        let limit = charge
            .map(|_| deployment.capacity())
            .unwrap_or_default()
            .over(self.options.capacity_window);
        let tokens = charge.unwrap_or(0);
        let owned = name.to_string();
        let admission = self
            .call_limits(move |limits| limits.admit(&owned, limit, tokens))
            .await
            .unwrap_or(Admission::Admitted);
        match admission {
            Admission::Admitted => {
                self.with_local(name, |s| s.headroom.as_mut().map(|h| h.spend(tokens)));
                Gate::Send { probe: false }
            }
            Admission::Full { retry_after } => {
                Gate::Skip(SpillReason::PredictedFull, Some(retry_after))
            }
            Admission::Cooling { .. } if self.takes_probe(name, now) => Gate::Send { probe: true },
            Admission::Cooling { left } => Gate::Skip(SpillReason::Cooling, Some(left)),
        }
    }

    /// Whether this request is the probe of cooling deployment `name` (one per
    /// `probe_interval`). A cooldown this process learnt from shared limits counts as a strike,
    /// so a 429 to its probe cools the deployment again.
    fn takes_probe(&self, name: &str, now: Instant) -> bool {
        self.with_local(name, |s| {
            if s.next_probe.is_some_and(|next| now < next) {
                return false;
            }
            s.next_probe = Some(now + self.options.probe_interval);
            s.strikes = s.strikes.max(1);
            true
        })
    }

    /// A 429 from `name`. One 429 is one request too many, not a saturated deployment: only
    /// from the second in a row on is it cooled, for its `Retry-After`, else for
    /// `default_cooldown` doubled for each further 429, capped by `max_cooldown`. Returns the
    /// cooldown set (zero for none).
    async fn too_many(&self, name: &str, retry_after: Option<Duration>) -> Duration {
        let now = Instant::now();
        let wait = self.with_local(name, |s| {
            s.strikes = s.strikes.saturating_add(1);
            let wait = match retry_after {
                _ if s.strikes < 2 => Duration::ZERO,
                Some(wait) => wait,
                None => self
                    .options
                    .default_cooldown
                    .saturating_mul(1u32 << (s.strikes - 2).min(16)),
            }
            .min(self.options.max_cooldown);
            s.next_probe = Some(now + self.options.probe_interval.min(wait));
            wait
        });
        if !wait.is_zero() {
            let owned = name.to_string();
            let _ = self.call_limits(move |l| l.cool(&owned, wait)).await;
        }
        wait
    }

    /// An answer other than 429 from `name`: it is not rate-limited any more. The shared
    /// cooldown is cleared when this process knew of one (a strike, or this was a probe).
    async fn answered(&self, name: &str, probe: bool) {
        let had_strikes = self.with_local(name, |s| std::mem::take(&mut s.strikes) > 0);
        if had_strikes || probe {
            let owned = name.to_string();
            let _ = self.call_limits(move |l| l.clear_cooldown(&owned)).await;
        }
    }

    /// Reads the rate-limit headers of an answer from `name`, when capacity-aware.
    fn learn(&self, name: &str, headers: &HeaderMap) {
        if !self.options.capacity_aware {
            return;
        }
        let learned = Headroom::learn(RateLimitHeaders::from_headers(headers), Instant::now());
        if learned.is_some() {
            self.with_local(name, |s| s.headroom = learned);
        }
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
        let charge = self
            .options
            .capacity_aware
            .then(|| tokens_to_charge(request.body));
        let send = Outgoing {
            body: request.body,
            request_id,
            charge,
        };
        let mut run = Run::default();
        for name in request.deployments {
            let primary = self
                .deployments
                .get(name)
                .ok_or_else(|| DispatchError::UnknownDeployment(name.clone()))?;
            if !run.tried.insert(primary.name.as_str()) {
                continue;
            }
            let reason = match self.try_deployment(primary, &send, &mut run).await {
                Step::Answered(response, latency) => {
                    return Ok(run.answered(response, primary, None, latency))
                }
                Step::Failed => continue,
                Step::MovedOn(reason) => reason,
            };
            let Some(spill) = self.spillover_of(primary, request.spillover) else {
                continue;
            };
            if !run.tried.insert(spill.name.as_str()) {
                continue;
            }
            if let Step::Answered(response, latency) =
                self.try_deployment(spill, &send, &mut run).await
            {
                return Ok(run.answered(response, spill, Some((primary, reason)), latency));
            }
        }
        Err(run.exhausted())
    }

    /// Where a request that `primary` did not take spills over to: only from a provisioned
    /// deployment, to the caller's choice or else its configured `spillover`.
    fn spillover_of(&self, primary: &Deployment, named: Option<&str>) -> Option<&Deployment> {
        if !primary.provisioned {
            return None;
        }
        self.deployments
            .get(named.or(primary.spillover.as_deref())?)
    }

    /// Gates, sends and classifies one request on one deployment.
    async fn try_deployment(
        &self,
        deployment: &Deployment,
        send: &Outgoing<'_>,
        run: &mut Run<'_>,
    ) -> Step {
        let name = deployment.name.as_str();
        let (step, wait) = match self.gate(deployment, send.charge).await {
            Gate::Skip(reason, wait) => (Step::MovedOn(reason), wait),
            Gate::Send { probe } => {
                let outcome = {
                    let _in_flight = InFlight::start(self, name);
                    self.send_with_retries(deployment, send, &mut run.attempts)
                        .await
                };
                match outcome {
                    Outcome::Response(response, latency) => {
                        self.answered(name, probe).await;
                        return Step::Answered(response, latency);
                    }
                    Outcome::Failed(error) => {
                        run.failure = Some(error);
                        return Step::Failed;
                    }
                    Outcome::TooMany(retry_after) => {
                        run.throttled.push(name.to_string());
                        let cooled = self.too_many(name, retry_after).await;
                        let wait = retry_after.or((!cooled.is_zero()).then_some(cooled));
                        (Step::MovedOn(SpillReason::TooMany), wait)
                    }
                }
            }
        };
        if let Step::MovedOn(reason) = step {
            self.with_local(name, |s| s.spills.add(reason));
        }
        run.refused(name, wait);
        step
    }

    /// Sends to one deployment, retrying connection errors, timeouts and 5xx.
    async fn send_with_retries(
        &self,
        deployment: &Deployment,
        send: &Outgoing<'_>,
        attempts: &mut u32,
    ) -> Outcome {
        let (url, bytes) = match upstream_body(deployment, send.body, *attempts) {
            Ok(prepared) => prepared,
            Err(e) => return Outcome::Failed(e),
        };
        let mut local = 0u32;
        loop {
            *attempts += 1;
            local += 1;
            let last = local > self.options.max_retries;
            let builder = match self.request(deployment, &url, &bytes, send.request_id) {
                Ok(builder) => builder,
                Err(e) => return Outcome::Failed(e),
            };
            let start = Instant::now();
            let result = tokio::time::timeout(self.options.timeout, builder.send()).await;
            let latency = start.elapsed();
            let error = match result {
                Ok(Ok(response)) => {
                    self.learn(&deployment.name, response.headers());
                    let status = response.status();
                    if status == StatusCode::TOO_MANY_REQUESTS {
                        return Outcome::TooMany(retry_after(response.headers()));
                    }
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
                Ok(Err(e)) => self.request_error(deployment, &e, local),
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

    /// One attempt's HTTP request: body, request id, the deployment's key header.
    fn request(
        &self,
        deployment: &Deployment,
        url: &reqwest::Url,
        bytes: &[u8],
        request_id: Option<&str>,
    ) -> Result<reqwest::RequestBuilder, DispatchError> {
        let mut builder = self
            .client
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(bytes.to_vec());
        if let Some(id) = request_id {
            builder = builder.header("x-request-id", id);
        }
        let Some(key) = &deployment.api_key else {
            return Ok(builder);
        };
        let (header, value) = match deployment.kind {
            DeploymentKind::OpenAi => ("authorization", format!("Bearer {}", key.expose())),
            DeploymentKind::Azure => ("api-key", key.expose().to_string()),
        };
        let mut value =
            HeaderValue::from_str(&value).map_err(|_| DispatchError::InvalidDeployment {
                deployment: deployment.name.clone(),
                reason: "the API key is not a valid header value".into(),
            })?;
        value.set_sensitive(true);
        Ok(builder.header(header, value))
    }

    /// A reqwest failure of one attempt as the crate's error.
    fn request_error(
        &self,
        deployment: &Deployment,
        error: &reqwest::Error,
        attempts: u32,
    ) -> DispatchError {
        if error.is_timeout() {
            // reqwest's own read timeout: the headers did not come in time either.
            return DispatchError::Timeout {
                deployment: deployment.name.clone(),
                timeout: self.options.timeout.min(self.options.read_timeout),
                attempts,
            };
        }
        DispatchError::Upstream {
            deployment: deployment.name.clone(),
            message: describe(error),
            attempts,
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

/// What every attempt of one request shares.
struct Outgoing<'a> {
    body: &'a serde_json::Value,
    request_id: Option<&'a str>,
    /// Tokens charged against capacity; `None` when capacity-unaware.
    charge: Option<u64>,
}

/// Checks the deployments (names unique, valid, spillover targets known and not themselves)
/// into a table by name.
fn deployment_table(
    deployments: Vec<Deployment>,
) -> Result<HashMap<String, Deployment>, DispatchError> {
    let mut table = HashMap::new();
    for deployment in deployments {
        deployment.validate()?;
        let name = deployment.name.clone();
        if table.insert(name.clone(), deployment).is_some() {
            return Err(DispatchError::DuplicateDeployment(name));
        }
    }
    for deployment in table.values() {
        let Some(spill) = &deployment.spillover else {
            continue;
        };
        let reason = if !table.contains_key(spill) {
            format!("spillover names unknown deployment `{spill}`")
        } else if spill == &deployment.name {
            "spillover names the deployment itself".into()
        } else {
            continue;
        };
        return Err(DispatchError::InvalidDeployment {
            deployment: deployment.name.clone(),
            reason,
        });
    }
    Ok(table)
}

/// The URL and the body of a request to `deployment`: `body` with `model` replaced by the
/// deployment's upstream model.
fn upstream_body(
    deployment: &Deployment,
    body: &serde_json::Value,
    attempts: u32,
) -> Result<(reqwest::Url, Vec<u8>), DispatchError> {
    let url = deployment.chat_completions_url()?;
    let mut body = body.clone();
    if let Some(object) = body.as_object_mut() {
        object.insert(
            "model".into(),
            serde_json::Value::String(deployment.model.clone()),
        );
    }
    let bytes = serde_json::to_vec(&body).map_err(|e| DispatchError::Upstream {
        deployment: deployment.name.clone(),
        message: e.to_string(),
        attempts,
    })?;
    Ok((url, bytes))
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
