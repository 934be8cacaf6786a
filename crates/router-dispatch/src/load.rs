//! Per-deployment load as the dispatcher sees it: in flight, the window, learned headroom,
//! and the requests that moved on from each deployment, by reason.

use std::time::{Duration, Instant};

use crate::capacity::{Capacity, Headroom};

/// Why a request moved on from a deployment (to its spillover, the next deployment, or back to
/// the caller as saturated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpillReason {
    /// The deployment answered 429.
    TooMany,
    /// The deployment was cooling down after 429s: skipped without a round trip.
    Cooling,
    /// The deployment's declared capacity or its last rate-limit headers leave no room for the
    /// request: skipped without a round trip.
    PredictedFull,
}

impl SpillReason {
    /// The label used in metrics: `429`, `cooling`, `predicted_full`.
    pub fn as_str(self) -> &'static str {
        match self {
            SpillReason::TooMany => "429",
            SpillReason::Cooling => "cooling",
            SpillReason::PredictedFull => "predicted_full",
        }
    }
}

/// Requests that moved on from one deployment, by reason, since the dispatcher started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpillCounts {
    /// After a 429.
    pub too_many: u64,
    /// Skipped while cooling down.
    pub cooling: u64,
    /// Skipped as predicted full.
    pub predicted_full: u64,
}

impl SpillCounts {
    pub(crate) fn add(&mut self, reason: SpillReason) {
        match reason {
            SpillReason::TooMany => self.too_many += 1,
            SpillReason::Cooling => self.cooling += 1,
            SpillReason::PredictedFull => self.predicted_full += 1,
        }
    }

    /// The count for `reason`.
    pub fn get(&self, reason: SpillReason) -> u64 {
        match reason {
            SpillReason::TooMany => self.too_many,
            SpillReason::Cooling => self.cooling,
            SpillReason::PredictedFull => self.predicted_full,
        }
    }
}

/// One deployment's load, from [`crate::Dispatcher::load_snapshot`].
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentLoad {
    /// The deployment.
    pub deployment: String,
    /// Its declared capacity.
    pub capacity: Capacity,
    /// Tokens charged in the last minute (all replicas, with shared limits); 0 without a
    /// declared capacity (nothing is counted then).
    pub window_tokens: u64,
    /// Requests in the last minute, counted like `window_tokens`.
    pub window_requests: u64,
    /// Requests of this process sent and waiting for their response headers.
    pub in_flight: u64,
    /// The window's share of the declared capacity ([`crate::Limit::utilisation`]).
    pub utilisation: Option<f64>,
    /// Tokens left by the last rate-limit headers, less what was sent since, until their reset.
    pub headroom_tokens: Option<u64>,
    /// Requests left, likewise.
    pub headroom_requests: Option<u64>,
    /// Time left in its cooldown.
    pub cooling: Option<Duration>,
    /// Requests that moved on from it, by reason.
    pub spills: SpillCounts,
}

/// This process's own state of one deployment.
#[derive(Debug, Default)]
pub(crate) struct LocalState {
    /// 429s in a row (an answer other than 429 resets it).
    pub(crate) strikes: u32,
    /// When the next probe of a cooling deployment may go.
    pub(crate) next_probe: Option<Instant>,
    pub(crate) in_flight: u64,
    pub(crate) headroom: Option<Headroom>,
    pub(crate) spills: SpillCounts,
}
