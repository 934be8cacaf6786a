//! Shadow traffic: a sampled share of routed requests goes, after the client has its complete
//! answer, to the `[shadow]` models as well, and each of their answers is stored linked to the
//! original exchange, so that labelling finds several real answers to one real prompt.
//!
//! Nothing here touches the client's request: a sampled request only carries a ticket; when
//! its response body has ended, a job goes into a bounded queue (`try_send`: a full queue drops
//! it and counts it), and worker tasks send it through the same dispatcher (retries, spillover,
//! cooldown), never streamed. A daily budget (the reported usage × catalog prices, reset at UTC
//! midnight) is checked before each shadow call; a spent budget drops the call and counts it.

use std::sync::Mutex;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use router_store::{now_ms, NewCompletion};
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::config::ShadowConfig;
use crate::Metrics;

/// The exchange a shadow answer is linked to.
pub(crate) enum Original {
    /// Stored at the client's request, under this id.
    Stored(String),
    /// Not stored by the client: the worker stores it (under [`router_store::ROUTER_OWNER`])
    /// first.
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
    pub(crate) fn shadow_body(&self) -> Value {
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
    /// The queue (workers start with [`crate::shadow_worker::start`]).
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

    /// The queue's receiving end, for the workers ([`crate::shadow_worker::start`]): once;
    /// later calls get nothing.
    pub(crate) fn take_receiver(&self) -> Option<mpsc::Receiver<ShadowJob>> {
        lock(&self.waiting).take()
    }

    /// How many worker tasks to start.
    pub(crate) fn workers(&self) -> usize {
        self.config.workers
    }

    /// Whether this routed request is shadowed.
    pub fn sample(&self) -> bool {
        let rate = self.config.rate;
        rate >= 1.0 || (rate > 0.0 && lock(&self.sampler).random::<f64>() < rate)
    }

    /// The shadow models for an answer by `answered_by`.
    pub(crate) fn targets<'a>(
        &'a self,
        answered_by: &'a str,
    ) -> impl Iterator<Item = &'a String> + 'a {
        self.config.models.iter().filter(move |m| *m != answered_by)
    }

    /// Queues `job` without waiting; a full queue drops it (counted).
    pub fn submit(&self, metrics: &Metrics, job: ShadowJob) {
        let shadows = self.targets(&job.answered_by).count() as u64;
        if shadows == 0 {
            return;
        }
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics.shadow_dropped("queue_full", shadows)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => metrics.shadow_dropped("error", shadows),
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
    pub(crate) fn budget_left(&self) -> bool {
        self.today().spent < self.config.max_cost_per_day
    }

    /// Counts `usd` against today's budget and in the metrics.
    pub(crate) fn spend(&self, metrics: &Metrics, usd: f64) {
        self.today().spent += usd;
        metrics.shadow_cost(usd);
    }
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
