//! Prometheus metrics through the `prometheus` crate: lock-free counters and histograms in one
//! registry per server (several servers in one process keep their own counts), rendered in the
//! text exposition format. Label values are escaped by the crate's encoder.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::core::{Collector, Desc};

use crate::load_metrics::LoadMetrics;
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{
    Counter, CounterVec, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, Opts, Registry, TextEncoder,
};

const ROUTING_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
const UPSTREAM_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];
/// The reasons of `model_router_shadow_dropped_total`, each shown from the start (at 0).
const SHADOW_DROP_REASONS: [&str; 3] = ["queue_full", "budget", "error"];
const SCORER_SKIPPED: &str = "model_router_scorer_skipped_total";
const SCORER_SKIPPED_HELP: &str = "Prompts not scored because their client had gone.";

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    cost: CounterVec,
    routing: Histogram,
    upstream: HistogramVec,
    reroutes: IntCounter,
    upstream_failures: IntCounterVec,
    store: IntCounterVec,
    evicted: IntCounter,
    shadow_sent: IntCounter,
    shadow_dropped: IntCounterVec,
    shadow_cost: Counter,
    reloads: IntCounterVec,
    /// Prompts the scorer did not score because their caller had gone; shared with each
    /// bundle's scorer (see [`Metrics::scorer_skipped`]), so it survives reloads.
    scorer_skipped: Arc<AtomicU64>,
    /// The dispatcher's per-deployment load, read at each scrape.
    load: LoadMetrics,
}

/// Every metric of [`Metrics`], created and registered; an error only for a name or label
/// the crate refuses, which the unit test would show.
fn registered(registry: Registry) -> prometheus::Result<Metrics> {
    let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
        register(&registry, IntCounter::new(name, help)?)
    };
    let counters = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
        register(
            &registry,
            IntCounterVec::new(Opts::new(name, help), labels)?,
        )
    };
    let cost = Opts::new(
        "model_router_estimated_cost_usd_total",
        "Estimated cost of the dispatched requests, USD.",
    );
    let cost = register(&registry, CounterVec::new(cost, &["model"])?)?;
    let shadow_cost = Counter::new(
        "model_router_shadow_cost_usd_total",
        "Cost of the shadow answers (reported usage x catalog prices), USD.",
    )?;
    let shadow_cost = register(&registry, shadow_cost)?;
    let (routing, upstream) = timings(&registry)?;
    let scorer_skipped = Arc::new(AtomicU64::new(0));
    registry.register(Box::new(AtomicCounter::new(
        SCORER_SKIPPED,
        SCORER_SKIPPED_HELP,
        scorer_skipped.clone(),
    )?))?;
    let shadow_dropped = counters(
        "model_router_shadow_dropped_total",
        "Shadow calls not made or failed, by reason (queue_full, budget, error).",
        &["reason"],
    )?;
    for reason in SHADOW_DROP_REASONS {
        shadow_dropped.with_label_values(&[reason]);
    }
    Ok(Metrics {
        requests: counters(
            "model_router_requests_total",
            "Chat requests by chosen model, mode, status and spillover.",
            &["model", "mode", "status", "spillover"],
        )?,
        cost,
        routing,
        upstream,
        reroutes: counter(
            "model_router_reroutes_total",
            "Decisions re-run because the chosen model was saturated.",
        )?,
        upstream_failures: counters(
            "model_router_upstream_failures_total",
            "Upstream answers that were not answers, by deployment and kind.",
            &["deployment", "kind"],
        )?,
        store: counters(
            "model_router_store_total",
            "Requests with store: true by result (stored, refused, failed, skipped).",
            &["result"],
        )?,
        evicted: counter(
            "model_router_store_evicted_total",
            "Stored completions evicted to make room.",
        )?,
        shadow_sent: counter(
            "model_router_shadow_sent_total",
            "Shadow answers received and stored.",
        )?,
        shadow_dropped,
        shadow_cost,
        reloads: counters(
            "model_router_reloads_total",
            "Bundle reloads by result (ok, refused).",
            &["result"],
        )?,
        scorer_skipped,
        load: LoadMetrics::register(&registry)?,
        registry,
    })
}

/// Registers `collector` in `registry` and hands it back.
fn register<C: Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> prometheus::Result<C> {
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}

/// `model_router_routing_seconds` and `model_router_upstream_seconds{deployment}`, registered.
fn timings(registry: &Registry) -> prometheus::Result<(Histogram, HistogramVec)> {
    let routing = HistogramOpts::new(
        "model_router_routing_seconds",
        "Time to decide (scoring and policy).",
    )
    .buckets(ROUTING_BUCKETS.to_vec());
    let upstream = HistogramOpts::new(
        "model_router_upstream_seconds",
        "Time to the deployment's response headers.",
    )
    .buckets(UPSTREAM_BUCKETS.to_vec());
    Ok((
        register(registry, Histogram::with_opts(routing)?)?,
        register(registry, HistogramVec::new(upstream, &["deployment"])?)?,
    ))
}

impl Default for Metrics {
    #[allow(
        clippy::expect_used,
        reason = "the names, help texts and labels are the constants above, registered once in a \
                  fresh registry; the unit test `renders` creates them"
    )]
    fn default() -> Self {
        registered(Registry::new()).expect("valid metric definitions")
    }
}

impl Metrics {
    /// Counts one chat request by chosen model (`none` when none), mode (`bypass` when the
    /// request named a model), HTTP status and whether it spilled over.
    pub fn request(&self, model: &str, mode: &str, status: u16, spillover: bool) {
        let status = status.to_string();
        let spillover = if spillover { "true" } else { "false" };
        self.requests
            .with_label_values(&[model, mode, &status, spillover])
            .inc();
    }

    /// Adds a request's estimated cost (USD) to its model's total.
    pub fn cost(&self, model: &str, usd: f64) {
        if usd.is_finite() && usd >= 0.0 {
            self.cost.with_label_values(&[model]).inc_by(usd);
        }
    }

    /// Observes the time spent deciding (scoring + policy).
    pub fn routing(&self, d: Duration) {
        self.routing.observe(d.as_secs_f64());
    }

    /// Observes a deployment's time to response headers.
    pub fn upstream(&self, deployment: &str, d: Duration) {
        self.upstream
            .with_label_values(&[deployment])
            .observe(d.as_secs_f64());
    }

    /// Counts one re-routing after a saturated model.
    pub fn reroute(&self) {
        self.reroutes.inc();
    }

    /// Counts an upstream answer that was not one, by deployment and kind: `credentials`
    /// (401/403), `server_error` (5xx), `not_a_completion`, `broken`, `timeout`, `connection`.
    pub fn upstream_failure(&self, deployment: &str, kind: &'static str) {
        self.upstream_failures
            .with_label_values(&[deployment, kind])
            .inc();
    }

    /// Counts one `"store": true` request by result: `stored`, `refused` (the store is full),
    /// `failed` (a storage error) or `skipped` (no answer to store: an upstream error status or
    /// a broken stream).
    pub fn store(&self, result: &'static str) {
        self.store.with_label_values(&[result]).inc();
    }

    /// Counts records evicted to make room (`on_full = "evict_oldest"`).
    pub fn store_evicted(&self, n: u64) {
        self.evicted.inc_by(n);
    }

    /// A shadow answer received and stored.
    pub fn shadow_sent(&self) {
        self.shadow_sent.inc();
    }

    /// `n` shadow calls dropped: `queue_full`, `budget` or `error`.
    pub fn shadow_dropped(&self, reason: &'static str, n: u64) {
        self.shadow_dropped.with_label_values(&[reason]).inc_by(n);
    }

    /// The cost of a shadow answer (USD).
    pub fn shadow_cost(&self, usd: f64) {
        if usd.is_finite() && usd >= 0.0 {
            self.shadow_cost.inc_by(usd);
        }
    }

    /// A bundle reload: `ok` or `refused`.
    pub fn reload(&self, result: &'static str) {
        self.reloads.with_label_values(&[result]).inc();
    }

    /// The counter of prompts not scored because their caller had gone, for the scorer to add to.
    pub fn scorer_skipped(&self) -> Arc<AtomicU64> {
        self.scorer_skipped.clone()
    }

    /// Reads the dispatcher's per-deployment load (utilisation, in flight, window, headroom,
    /// spills by reason) into the metrics; the `/metrics` handler calls it before rendering.
    pub async fn refresh_load(&self, dispatcher: &router_dispatch::Dispatcher) {
        self.load.refresh(dispatcher).await;
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            // Only a family the encoder cannot write; the page says so instead of lying.
            return format!("# model-router: cannot encode the metrics: {e}\n");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// A counter whose value lives in an [`AtomicU64`] that other code adds to (the scorer
/// threads), read when the metrics are gathered.
struct AtomicCounter {
    desc: Desc,
    value: Arc<AtomicU64>,
}

impl AtomicCounter {
    fn new(name: &str, help: &str, value: Arc<AtomicU64>) -> prometheus::Result<Self> {
        let desc = Desc::new(name.into(), help.into(), Vec::new(), Default::default())?;
        Ok(AtomicCounter { desc, value })
    }
}

impl Collector for AtomicCounter {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut counter = proto::Counter::default();
        counter.set_value(self.value.load(Ordering::Relaxed) as f64);
        let mut metric = proto::Metric::default();
        metric.set_counter(counter);
        let mut family = MetricFamily::default();
        family.set_name(self.desc.fq_name.clone());
        family.set_help(self.desc.help.clone());
        family.set_field_type(MetricType::COUNTER);
        family.set_metric(vec![metric]);
        vec![family]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders() {
        let m = Metrics::default();
        m.request("a\"b", "balanced", 200, false);
        m.request("a\"b", "balanced", 200, false);
        m.routing(Duration::from_millis(2));
        m.upstream("d", Duration::from_millis(70));
        m.cost("a", 0.5);
        m.store("refused");
        m.store("stored");
        m.store("stored");
        m.store_evicted(3);
        m.scorer_skipped().fetch_add(4, Ordering::Relaxed);
        let t = m.render();
        for expected in [
            "model_router_store_total{result=\"stored\"} 2",
            "model_router_store_total{result=\"refused\"} 1",
            "model_router_store_evicted_total 3",
            // The crate writes labels in name order.
            "model_router_requests_total{mode=\"balanced\",model=\"a\\\"b\",spillover=\"false\",status=\"200\"} 2",
            "model_router_routing_seconds_bucket{le=\"0.0025\"} 1",
            "model_router_routing_seconds_bucket{le=\"0.001\"} 0",
            "model_router_upstream_seconds_count{deployment=\"d\"} 1",
            "model_router_estimated_cost_usd_total{model=\"a\"} 0.5",
            "model_router_shadow_dropped_total{reason=\"budget\"} 0",
            "model_router_reroutes_total 0",
            "# TYPE model_router_scorer_skipped_total counter",
            "model_router_scorer_skipped_total 4",
        ] {
            assert!(t.contains(expected), "{expected}\n{t}");
        }
    }
}
