//! Prometheus metrics, hand-written: counters and histograms in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ROUTING_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
const UPSTREAM_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

#[derive(Debug, Clone)]
struct Histogram {
    buckets: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(buckets: &'static [f64]) -> Self {
        Histogram {
            buckets,
            counts: vec![0; buckets.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (i, b) in self.buckets.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.buckets.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Debug)]
struct Inner {
    requests: BTreeMap<(String, String, String, String), u64>,
    cost: BTreeMap<String, f64>,
    routing: Histogram,
    upstream: BTreeMap<String, Histogram>,
    reroutes: u64,
    upstream_failures: BTreeMap<(String, &'static str), u64>,
    store: BTreeMap<&'static str, u64>,
    evicted: u64,
    shadow_sent: u64,
    shadow_dropped: BTreeMap<&'static str, u64>,
    shadow_cost: f64,
    reloads: BTreeMap<&'static str, u64>,
}

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    inner: Mutex<Inner>,
    /// Prompts the scorer did not score because their caller had gone; shared with each
    /// bundle's scorer (see [`Metrics::scorer_skipped`]), so it survives reloads.
    scorer_skipped: Arc<AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            inner: Mutex::new(Inner {
                requests: BTreeMap::new(),
                cost: BTreeMap::new(),
                routing: Histogram::new(ROUTING_BUCKETS),
                upstream: BTreeMap::new(),
                reroutes: 0,
                upstream_failures: BTreeMap::new(),
                store: BTreeMap::new(),
                evicted: 0,
                shadow_sent: 0,
                shadow_dropped: BTreeMap::new(),
                shadow_cost: 0.0,
                reloads: BTreeMap::new(),
            }),
            scorer_skipped: Arc::default(),
        }
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one chat request by chosen model (`none` when none), mode (`bypass` when the
    /// request named a model), HTTP status and whether it spilled over.
    pub fn request(&self, model: &str, mode: &str, status: u16, spillover: bool) {
        let key = (
            model.to_string(),
            mode.to_string(),
            status.to_string(),
            spillover.to_string(),
        );
        *self.lock().requests.entry(key).or_insert(0) += 1;
    }

    /// Adds a request's estimated cost (USD) to its model's total.
    pub fn cost(&self, model: &str, usd: f64) {
        if usd.is_finite() {
            *self.lock().cost.entry(model.to_string()).or_insert(0.0) += usd;
        }
    }

    /// Observes the time spent deciding (scoring + policy).
    pub fn routing(&self, d: Duration) {
        self.lock().routing.observe(d.as_secs_f64());
    }

    /// Observes a deployment's time to response headers.
    pub fn upstream(&self, deployment: &str, d: Duration) {
        self.lock()
            .upstream
            .entry(deployment.to_string())
            .or_insert_with(|| Histogram::new(UPSTREAM_BUCKETS))
            .observe(d.as_secs_f64());
    }

    /// Counts one re-routing after a saturated model.
    pub fn reroute(&self) {
        self.lock().reroutes += 1;
    }

    /// Counts an upstream answer that was not one, by deployment and kind: `credentials`
    /// (401/403), `server_error` (5xx), `not_a_completion`, `broken`, `timeout`, `connection`.
    pub fn upstream_failure(&self, deployment: &str, kind: &'static str) {
        *self
            .lock()
            .upstream_failures
            .entry((deployment.to_string(), kind))
            .or_insert(0) += 1;
    }

    /// Counts one `"store": true` request by result: `stored`, `refused` (the store is full),
    /// `failed` (a storage error) or `skipped` (no answer to store: an upstream error status or
    /// a broken stream).
    pub fn store(&self, result: &'static str) {
        *self.lock().store.entry(result).or_insert(0) += 1;
    }

    /// Counts records evicted to make room (`on_full = "evict_oldest"`).
    pub fn store_evicted(&self, n: u64) {
        self.lock().evicted += n;
    }

    /// A shadow answer received and stored.
    pub fn shadow_sent(&self) {
        self.lock().shadow_sent += 1;
    }

    /// `n` shadow calls dropped: `queue_full`, `budget` or `error`.
    pub fn shadow_dropped(&self, reason: &'static str, n: u64) {
        *self.lock().shadow_dropped.entry(reason).or_insert(0) += n;
    }

    /// The cost of a shadow answer (USD).
    pub fn shadow_cost(&self, usd: f64) {
        if usd.is_finite() {
            self.lock().shadow_cost += usd;
        }
    }

    /// A bundle reload: `ok` or `refused`.
    pub fn reload(&self, result: &'static str) {
        *self.lock().reloads.entry(result).or_insert(0) += 1;
    }

    /// The counter of prompts not scored because their caller had gone, for the scorer to add to.
    pub fn scorer_skipped(&self) -> Arc<AtomicU64> {
        self.scorer_skipped.clone()
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let inner = self.lock();
        let mut out = String::new();
        out.push_str("# HELP model_router_requests_total Chat requests by chosen model, mode, status and spillover.\n");
        out.push_str("# TYPE model_router_requests_total counter\n");
        for ((model, mode, status, spill), n) in &inner.requests {
            let _ = writeln!(
                out,
                "model_router_requests_total{{model=\"{}\",mode=\"{}\",status=\"{}\",spillover=\"{}\"}} {n}",
                escape(model),
                escape(mode),
                status,
                spill
            );
        }
        out.push_str("# HELP model_router_estimated_cost_usd_total Estimated cost of the dispatched requests, USD.\n");
        out.push_str("# TYPE model_router_estimated_cost_usd_total counter\n");
        for (model, usd) in &inner.cost {
            let _ = writeln!(
                out,
                "model_router_estimated_cost_usd_total{{model=\"{}\"}} {usd}",
                escape(model)
            );
        }
        out.push_str("# HELP model_router_reroutes_total Decisions re-run because the chosen model was saturated.\n");
        out.push_str("# TYPE model_router_reroutes_total counter\n");
        let _ = writeln!(out, "model_router_reroutes_total {}", inner.reroutes);
        out.push_str("# HELP model_router_upstream_failures_total Upstream answers that were not answers, by deployment and kind.\n");
        out.push_str("# TYPE model_router_upstream_failures_total counter\n");
        for ((deployment, kind), n) in &inner.upstream_failures {
            let _ = writeln!(
                out,
                "model_router_upstream_failures_total{{deployment=\"{}\",kind=\"{kind}\"}} {n}",
                escape(deployment)
            );
        }
        out.push_str("# HELP model_router_store_total Requests with store: true by result (stored, refused, failed, skipped).\n");
        out.push_str("# TYPE model_router_store_total counter\n");
        for (result, n) in &inner.store {
            let _ = writeln!(out, "model_router_store_total{{result=\"{result}\"}} {n}");
        }
        out.push_str(
            "# HELP model_router_store_evicted_total Stored completions evicted to make room.\n",
        );
        out.push_str("# TYPE model_router_store_evicted_total counter\n");
        let _ = writeln!(out, "model_router_store_evicted_total {}", inner.evicted);
        out.push_str("# HELP model_router_shadow_sent_total Shadow answers received and stored.\n");
        out.push_str("# TYPE model_router_shadow_sent_total counter\n");
        let _ = writeln!(out, "model_router_shadow_sent_total {}", inner.shadow_sent);
        out.push_str("# HELP model_router_shadow_dropped_total Shadow calls not made or failed, by reason (queue_full, budget, error).\n");
        out.push_str("# TYPE model_router_shadow_dropped_total counter\n");
        for reason in ["queue_full", "budget", "error"] {
            let n = inner.shadow_dropped.get(reason).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "model_router_shadow_dropped_total{{reason=\"{reason}\"}} {n}"
            );
        }
        out.push_str("# HELP model_router_shadow_cost_usd_total Cost of the shadow answers (reported usage x catalog prices), USD.\n");
        out.push_str("# TYPE model_router_shadow_cost_usd_total counter\n");
        let _ = writeln!(
            out,
            "model_router_shadow_cost_usd_total {}",
            inner.shadow_cost
        );
        out.push_str("# HELP model_router_reloads_total Bundle reloads by result (ok, refused).\n");
        out.push_str("# TYPE model_router_reloads_total counter\n");
        for (result, n) in &inner.reloads {
            let _ = writeln!(out, "model_router_reloads_total{{result=\"{result}\"}} {n}");
        }
        out.push_str("# HELP model_router_scorer_skipped_total Prompts not scored because their client had gone.\n");
        out.push_str("# TYPE model_router_scorer_skipped_total counter\n");
        let skipped = self.scorer_skipped.load(Ordering::Relaxed);
        let _ = writeln!(out, "model_router_scorer_skipped_total {skipped}");
        out.push_str("# HELP model_router_routing_seconds Time to decide (scoring and policy).\n");
        out.push_str("# TYPE model_router_routing_seconds histogram\n");
        inner
            .routing
            .render(&mut out, "model_router_routing_seconds", "");
        out.push_str(
            "# HELP model_router_upstream_seconds Time to the deployment's response headers.\n",
        );
        out.push_str("# TYPE model_router_upstream_seconds histogram\n");
        for (deployment, h) in &inner.upstream {
            h.render(
                &mut out,
                "model_router_upstream_seconds",
                &format!("deployment=\"{}\"", escape(deployment)),
            );
        }
        out
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
        let t = m.render();
        assert!(
            t.contains("model_router_store_total{result=\"stored\"} 2"),
            "{t}"
        );
        assert!(
            t.contains("model_router_store_total{result=\"refused\"} 1"),
            "{t}"
        );
        assert!(t.contains("model_router_store_evicted_total 3"), "{t}");
        assert!(t.contains("model_router_requests_total{model=\"a\\\"b\",mode=\"balanced\",status=\"200\",spillover=\"false\"} 2"), "{t}");
        assert!(
            t.contains("model_router_routing_seconds_bucket{le=\"0.0025\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("model_router_routing_seconds_bucket{le=\"0.001\"} 0"),
            "{t}"
        );
        assert!(
            t.contains("model_router_upstream_seconds_count{deployment=\"d\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("model_router_estimated_cost_usd_total{model=\"a\"} 0.5"),
            "{t}"
        );
    }
}
