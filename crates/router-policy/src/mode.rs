//! Routing modes and their quality bands.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::PolicyError;

/// How much predicted quality a request may give up to save cost.
///
/// Each mode is a *band*: with `q*` the highest predicted quality among the eligible models, the
/// candidates are those with `q >= q* * (1 - band)`, and the cheapest candidate wins.
/// A custom band (any fraction in `[0, 1]`) can replace the mode's band per deployment
/// ([`PolicyDefaults::band`](crate::PolicyDefaults::band)) or per request
/// ([`RouteRequest::band`](crate::RouteRequest::band)).
///
/// Serialised in lowercase (`"quality"`, `"balanced"`, `"cost"`); parsed from the same names,
/// ignoring ASCII case.
///
/// ```
/// use router_policy::Mode;
/// assert_eq!("cost".parse::<Mode>().unwrap(), Mode::Cost);
/// assert_eq!(Mode::Balanced.band(), 0.02);
/// assert!("cheap".parse::<Mode>().unwrap_err().to_string().contains("expected `quality`"));
/// ```
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Band 0: the model with the highest predicted quality (the cheapest of them on a tie).
    Quality,
    /// Band 0.02 (the default): the cheapest model within 2 % of `q*`.
    #[default]
    Balanced,
    /// Band 0.06: the cheapest model within 6 % of `q*`.
    Cost,
}

impl Mode {
    /// All modes, from the most to the least quality-minded.
    pub const ALL: [Mode; 3] = [Mode::Quality, Mode::Balanced, Mode::Cost];

    /// The mode's band: 0.0, 0.02 or 0.06.
    pub fn band(self) -> f64 {
        match self {
            Mode::Quality => 0.0,
            Mode::Balanced => 0.02,
            Mode::Cost => 0.06,
        }
    }

    /// The lowercase name, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Quality => "quality",
            Mode::Balanced => "balanced",
            Mode::Cost => "cost",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        Mode::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(t))
            .ok_or_else(|| PolicyError::UnknownMode(s.to_string()))
    }
}

/// Checks that a band is a fraction in `[0, 1]` (NaN is rejected).
pub(crate) fn check_band(band: f64) -> Result<f64, PolicyError> {
    if (0.0..=1.0).contains(&band) {
        Ok(band)
    } else {
        Err(PolicyError::InvalidBand { band })
    }
}
