//! The dispatcher's per-deployment load in `/metrics`: utilisation of the declared capacity,
//! in-flight requests, the window, the headroom learnt from rate-limit headers, and the requests
//! that moved on from each deployment by reason. Read from [`Dispatcher::load_snapshot`] at
//! every scrape.

use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};
use router_dispatch::{DeploymentLoad, Dispatcher, SpillReason};

const REASONS: [SpillReason; 3] = [
    SpillReason::TooMany,
    SpillReason::Cooling,
    SpillReason::PredictedFull,
];

/// The gauges and counters, registered in the server's registry.
#[derive(Debug)]
pub(crate) struct LoadMetrics {
    utilisation: GaugeVec,
    in_flight: IntGaugeVec,
    window_tokens: IntGaugeVec,
    headroom_tokens: IntGaugeVec,
    spills: IntCounterVec,
    limits_errors: IntCounter,
}

impl LoadMetrics {
    pub(crate) fn register(registry: &Registry) -> prometheus::Result<Self> {
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), &["deployment"])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let utilisation = GaugeVec::new(
            Opts::new(
                "model_router_deployment_utilisation",
                "Share of the declared capacity_tpm/capacity_rpm used in the sliding window (1 is full).",
            ),
            &["deployment"],
        )?;
        registry.register(Box::new(utilisation.clone()))?;
        let spills = IntCounterVec::new(
            Opts::new(
                "model_router_deployment_spills_total",
                "Requests that moved on from a deployment, by reason (429, cooling, predicted_full).",
            ),
            &["deployment", "reason"],
        )?;
        registry.register(Box::new(spills.clone()))?;
        let limits_errors = IntCounter::new(
            "model_router_shared_limits_errors_total",
            "Calls to the shared capacity windows and cooldowns that failed (the request was admitted).",
        )?;
        registry.register(Box::new(limits_errors.clone()))?;
        Ok(LoadMetrics {
            utilisation,
            in_flight: gauge(
                "model_router_deployment_in_flight",
                "Requests sent to a deployment and waiting for its response headers.",
            )?,
            window_tokens: gauge(
                "model_router_deployment_window_tokens",
                "Tokens charged to a deployment with a declared capacity in the sliding window.",
            )?,
            headroom_tokens: gauge(
                "model_router_deployment_headroom_tokens",
                "Tokens left by the deployment's last x-ratelimit headers, until their reset.",
            )?,
            spills,
            limits_errors,
        })
    }

    /// Reads the dispatcher's load into the metrics.
    pub(crate) async fn refresh(&self, dispatcher: &Dispatcher) {
        for load in dispatcher.load_snapshot().await {
            self.set(&load);
        }
        let errors = dispatcher.limits_errors();
        self.limits_errors
            .inc_by(errors.saturating_sub(self.limits_errors.get()));
    }

    fn set(&self, load: &DeploymentLoad) {
        let name = load.deployment.as_str();
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.in_flight
            .with_label_values(&[name])
            .set(clamp(load.in_flight));
        if let Some(share) = load.utilisation {
            self.utilisation.with_label_values(&[name]).set(share);
            self.window_tokens
                .with_label_values(&[name])
                .set(clamp(load.window_tokens));
        }
        match load.headroom_tokens {
            Some(left) => self
                .headroom_tokens
                .with_label_values(&[name])
                .set(clamp(left)),
            None => {
                let _ = self.headroom_tokens.remove_label_values(&[name]);
            }
        }
        for reason in REASONS {
            let counter = self.spills.with_label_values(&[name, reason.as_str()]);
            counter.inc_by(load.spills.get(reason).saturating_sub(counter.get()));
        }
    }
}
