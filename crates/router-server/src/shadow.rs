//! Shadow traffic: a sampled share of routed requests goes, after the client has its complete
//! answer, to the `[shadow]` models as well, and each of their answers is stored linked to the
//! original exchange, so that labelling finds several real answers to one real prompt.
//!
//! Nothing here touches the client's request: a sampled request only carries a ticket; when
//! its response body has ended, a job goes into a bounded queue (`try_send`: a full queue drops
//! it and counts it), and worker tasks send it through the same dispatcher (retries, spillover,
//! cooldown), never streamed. A daily budget (the reported usage × catalog prices, reset at UTC
//! midnight) is checked before each shadow call; a spent budget drops the call and counts it.

use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use axum::body::Bytes;
use futures_util::stream::{self, Stream, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use router_dispatch::DispatchRequest;
use router_store::{now_ms, NewCompletion, Usage, ROUTER_OWNER};
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::state::AppState;
use crate::config::ShadowConfig;
use crate::record::{cost_of, insert};

/// The exchange a shadow answer is linked to.
pub(crate) enum Original {
    /// Stored at the client's request, under this id.
    Stored(String),
    /// Not stored by the client: the worker stores it (under [`ROUTER_OWNER`]) first.
    Unstored(Box<NewCompletion>),
}

/// One shadowed request, queued once the client's answer has ended.
pub(crate) struct ShadowJob {
    /// The exchange the answers shadow.
    pub original: Original,
    /// The request as forwarded to the model that answered.
    pub request: Map<String, Value>,
    /// The metadata the client sent with it (copied to the shadow answers).
    pub metadata: router_store::Metadata,
    /// The model that answered the client (not asked again).
    pub answered_by: String,
    /// The estimated prompt tokens (the cost of an answer that reports no usage).
    pub prompt_tokens: usize,
}

impl ShadowJob {
    /// The request as a shadow sends it: never streamed, no stream options.
    fn shadow_body(&self) -> Value {
        let mut body = self.request.clone();
        body.remove("stream");
        body.remove("stream_options");
        Value::Object(body)
    }
}

/// USD spent by shadows on one UTC day.
#[derive(Default)]
struct Budget {
    day: u64,
    spent: f64,
}

/// The days since the Unix epoch, UTC.
fn utc_day() -> u64 {
    u64::try_from(now_ms()).unwrap_or(0) / 86_400_000
}

/// The `[shadow]` state of a server: sampling, the queue and the budget.
pub(crate) struct Shadows {
    config: ShadowConfig,
    queue: mpsc::Sender<ShadowJob>,
    waiting: Mutex<Option<mpsc::Receiver<ShadowJob>>>,
    sampler: Mutex<StdRng>,
    budget: Mutex<Budget>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shadows {
    /// The queue (workers start with [`Shadows::start_workers`]).
    pub fn new(config: ShadowConfig) -> Shadows {
        let (queue, waiting) = mpsc::channel(config.queue);
        let seed = config.seed.unwrap_or_else(rand::random);
        Shadows {
            config,
            queue,
            waiting: Mutex::new(Some(waiting)),
            sampler: Mutex::new(StdRng::seed_from_u64(seed)),
            budget: Mutex::new(Budget::default()),
        }
    }

    /// Starts `shadow.workers` tasks on the current tokio runtime (once; later calls do
    /// nothing). They hold the state weakly and stop when the server's state is gone.
    pub fn start_workers(&self, state: Weak<AppState>) {
        let Some(receiver) = lock(&self.waiting).take() else {
            return;
        };
        let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
        for _ in 0..self.config.workers {
            tokio::spawn(work(state.clone(), receiver.clone()));
        }
    }

    /// Whether this routed request is shadowed.
    pub fn sample(&self) -> bool {
        let rate = self.config.rate;
        rate >= 1.0 || (rate > 0.0 && lock(&self.sampler).random::<f64>() < rate)
    }

    /// The shadow models for an answer by `answered_by`.
    fn targets<'a>(&'a self, answered_by: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        self.config.models.iter().filter(move |m| *m != answered_by)
    }

    /// Queues `job` without waiting; a full queue drops it (counted).
    pub fn submit(&self, state: &AppState, job: ShadowJob) {
        let shadows = self.targets(&job.answered_by).count() as u64;
        if shadows == 0 {
            return;
        }
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                state.metrics().shadow_dropped("queue_full", shadows)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                state.metrics().shadow_dropped("error", shadows)
            }
        }
    }

    /// Today's budget (a new UTC day starts from zero).
    fn today(&self) -> std::sync::MutexGuard<'_, Budget> {
        self.budget_of(utc_day())
    }

    /// The budget of `day` (days since the epoch, UTC): reset when the day changed.
    fn budget_of(&self, day: u64) -> std::sync::MutexGuard<'_, Budget> {
        let mut budget = lock(&self.budget);
        if budget.day != day {
            *budget = Budget { day, spent: 0.0 };
        }
        budget
    }

    /// Whether today's budget has room left.
    fn budget_left(&self) -> bool {
        self.today().spent < self.config.max_cost_per_day
    }

    /// Counts `usd` against today's budget and in the metrics.
    fn spend(&self, state: &AppState, usd: f64) {
        self.today().spent += usd;
        state.metrics().shadow_cost(usd);
    }
}

/// `body`, then — once it has ended, not if it is dropped before — `job` queued: the shadow
/// leaves after the client has its complete answer.
pub(crate) fn then_shadow<S, E>(
    body: S,
    state: Arc<AppState>,
    job: Option<ShadowJob>,
) -> impl Stream<Item = Result<Bytes, E>> + Send + 'static
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Send + 'static,
{
    let mut pending = Some((state, job));
    body.chain(stream::poll_fn(move |_| {
        if let Some((state, Some(job))) = pending.take() {
            if let Some(shadows) = state.shadows() {
                shadows.submit(&state, job);
            }
        }
        std::task::Poll::Ready(None)
    }))
}

async fn work(state: Weak<AppState>, receiver: Arc<tokio::sync::Mutex<mpsc::Receiver<ShadowJob>>>) {
    loop {
        let job = receiver.lock().await.recv().await;
        let (Some(job), Some(state)) = (job, state.upgrade()) else {
            return;
        };
        run(&state, job).await;
    }
}

/// Stores the original if needed, then asks each shadow model in turn.
async fn run(state: &AppState, job: ShadowJob) {
    let Some(shadows) = state.shadows() else {
        return;
    };
    let targets: Vec<String> = shadows.targets(&job.answered_by).cloned().collect();
    if !shadows.budget_left() {
        state
            .metrics()
            .shadow_dropped("budget", targets.len() as u64);
        return;
    }
    let original = match job.original {
        Original::Stored(ref id) => id.clone(),
        Original::Unstored(ref record) => {
            match insert(state.store(), state.metrics(), (**record).clone()).await {
                Ok(inserted) => inserted.id,
                Err(why) => {
                    let why = why.header_value();
                    eprintln!("model-router: shadow: storing the original failed: {why}");
                    state
                        .metrics()
                        .shadow_dropped("error", targets.len() as u64);
                    return;
                }
            }
        }
    };
    let body = job.shadow_body();
    for model in &targets {
        if !shadows.budget_left() {
            state.metrics().shadow_dropped("budget", 1);
            continue;
        }
        match ask(state, shadows, &job, &body, model, &original).await {
            Ok(()) => state.metrics().shadow_sent(),
            Err(why) => {
                eprintln!("model-router: shadow to `{model}` failed: {why}");
                state.metrics().shadow_dropped("error", 1);
            }
        }
    }
}

/// A successful chat completion read within the dispatch timeout, or why there is none.
async fn read_completion(
    state: &AppState,
    dispatched: router_dispatch::Dispatched,
) -> Result<Map<String, Value>, String> {
    let deployment = dispatched.deployment;
    let status = dispatched.response.status();
    if !status.is_success() {
        return Err(format!("`{deployment}` answered {status}"));
    }
    let read = dispatched.response.bytes();
    let bytes = tokio::time::timeout(state.dispatcher().options().timeout, read)
        .await
        .map_err(|_| format!("`{deployment}` did not finish its answer in time"))?
        .map_err(|e| format!("`{deployment}` broke off its answer: {e}"))?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(o)) if o.get("choices").is_some_and(Value::is_array) => Ok(o),
        _ => Err(format!("`{deployment}` answered no chat completion")),
    }
}

/// One shadow answer: paid for (the budget), then stored.
async fn ask(
    state: &AppState,
    shadows: &Shadows,
    job: &ShadowJob,
    body: &Value,
    model: &str,
    original: &str,
) -> Result<(), String> {
    let started = Instant::now();
    let spec = state
        .routing()
        .catalog()
        .get(model)
        .cloned()
        .ok_or_else(|| format!("`{model}` is not in the catalog"))?;
    let dispatched = state
        .dispatcher()
        .dispatch(DispatchRequest {
            deployments: &spec.deployments,
            body,
            spillover: None,
        })
        .await
        .map_err(|e| e.to_string())?;
    let deployment = dispatched.deployment.clone();
    let mut response = read_completion(state, dispatched).await?;
    response.insert("model".into(), Value::String(model.to_string()));
    let response = Value::Object(response);
    let usage = Usage::from_response(&response);
    let estimate = router_policy::estimated_cost(
        &spec,
        job.prompt_tokens as u64,
        spec.billed_output_tokens(None),
    );
    let cost = cost_of(&spec, usage, estimate);
    shadows.spend(state, cost);
    let record = NewCompletion {
        id: response
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_string),
        owner: ROUTER_OWNER.to_string(),
        created_at_ms: now_ms(),
        request: job.request.clone(),
        response,
        metadata: job.metadata.clone(),
        decision: None,
        model: model.to_string(),
        deployment,
        usage,
        cost_usd: cost,
        latency_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        shadow_of: Some(original.to_string()),
    };
    insert(state.store(), state.metrics(), record)
        .await
        .map(drop)
        .map_err(|outcome| outcome.header_value())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shadows(rate: f64, seed: u64) -> Shadows {
        Shadows::new(ShadowConfig {
            rate,
            models: vec!["a".into()],
            max_cost_per_day: 1.0,
            queue: 1,
            workers: 1,
            seed: Some(seed),
        })
    }

    #[test]
    fn the_budget_starts_again_on_a_new_utc_day() {
        let s = shadows(1.0, 1);
        s.budget_of(100).spent += 1.5;
        assert!(s.budget_of(100).spent >= s.config.max_cost_per_day);
        assert_eq!(s.budget_of(101).spent, 0.0);
        assert_eq!(s.budget_of(101).day, 101);
    }

    #[test]
    fn sampling_follows_the_rate_and_the_seed() {
        let draws = |s: &Shadows| (0..2000).filter(|_| s.sample()).count();
        assert_eq!(draws(&shadows(1.0, 1)), 2000);
        assert_eq!(draws(&shadows(0.0, 1)), 0);
        let quarter = draws(&shadows(0.25, 7));
        assert!((400..600).contains(&quarter), "{quarter}");
        assert_eq!(
            quarter,
            draws(&shadows(0.25, 7)),
            "the same seed, the same draws"
        );
    }
}
