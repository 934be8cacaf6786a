//! The band rule over candidates that passed the filters: the one implementation that
//! [`Policy::decide`](crate::Policy::decide) applies and that offline evaluation replays, so what
//! an evaluation measures is what a deployment does.

use std::cmp::Ordering;

/// A model the band rule may choose: one that passed every filter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BandCandidate<'a> {
    /// The model's name (the last tie-break, in byte order).
    pub name: &'a str,
    /// Its predicted quality. A NaN or infinite value is never chosen and does not set `q*`.
    pub predicted_quality: f32,
    /// Its estimated cost for the request (USD).
    pub estimated_cost: f64,
}

/// What [`choose_in_band`] chose, and the numbers it chose by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BandChoice {
    /// The index of the chosen model in the candidates.
    pub chosen: usize,
    /// The highest predicted quality among the candidates.
    pub q_star: f32,
    /// The bar a candidate's predicted quality must reach to be in the band.
    pub threshold: f64,
}

/// The band rule: with `q*` the highest (finite) predicted quality among `candidates`, those with
/// `q >= threshold(q*, band)` are in the band, and the cheapest of them wins; ties go to the
/// higher predicted quality, then to the name in byte order. `None` when no candidate has a finite
/// predicted quality. `band` is a fraction in `[0, 1]` (checked by the policy, not here).
///
/// ```
/// use router_policy::{choose_in_band, BandCandidate};
/// let candidates = [
///     BandCandidate { name: "large", predicted_quality: 0.90, estimated_cost: 3.0 },
///     BandCandidate { name: "medium", predicted_quality: 0.89, estimated_cost: 2.0 },
///     BandCandidate { name: "small", predicted_quality: 0.80, estimated_cost: 1.0 },
/// ];
/// assert_eq!(choose_in_band(&candidates, 0.0).map(|c| c.chosen), Some(0));
/// assert_eq!(choose_in_band(&candidates, 0.02).map(|c| c.chosen), Some(1));
/// let wide = choose_in_band(&candidates, 0.2).unwrap();
/// assert_eq!((wide.chosen, wide.q_star), (2, 0.90));
/// assert!((wide.threshold - 0.72).abs() < 1e-6);
/// assert_eq!(choose_in_band(&[], 0.02), None);
/// ```
pub fn choose_in_band(candidates: &[BandCandidate<'_>], band: f64) -> Option<BandChoice> {
    let q_star = candidates
        .iter()
        .map(|c| c.predicted_quality)
        .filter(|q| q.is_finite())
        .max_by(f32::total_cmp)?;
    let threshold = threshold(q_star, band);
    let chosen = candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| in_band(c.predicted_quality, threshold))
        .min_by(|(_, a), (_, b)| cheaper_first(a, b))
        .map(|(index, _)| index)?;
    Some(BandChoice {
        chosen,
        q_star,
        threshold,
    })
}

/// `q* × (1 − band)`, the design's formula. For a negative `q*` (a head is not forced into
/// [0, 1]) that formula would put the bar above `q*` itself, so there it is `q* × (1 + band)`:
/// the bar never exceeds `q*`, and the best model is always a candidate.
pub(crate) fn threshold(q_star: f32, band: f64) -> f64 {
    let q = f64::from(q_star);
    if q >= 0.0 {
        q * (1.0 - band)
    } else {
        q * (1.0 + band)
    }
}

/// Whether a finite predicted quality reaches the band's `threshold`.
pub(crate) fn in_band(predicted_quality: f32, threshold: f64) -> bool {
    predicted_quality.is_finite() && f64::from(predicted_quality) >= threshold
}

/// The candidates' order: cheaper first, then higher quality, then name.
fn cheaper_first(a: &BandCandidate<'_>, b: &BandCandidate<'_>) -> Ordering {
    a.estimated_cost
        .total_cmp(&b.estimated_cost)
        .then_with(|| b.predicted_quality.total_cmp(&a.predicted_quality))
        .then_with(|| a.name.cmp(b.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(name: &str, predicted_quality: f32, estimated_cost: f64) -> BandCandidate<'_> {
        BandCandidate {
            name,
            predicted_quality,
            estimated_cost,
        }
    }

    #[test]
    fn ties_go_to_the_cheaper_then_the_better_then_the_name() {
        let same_cost = [
            candidate("b", 0.8, 1.0),
            candidate("a", 0.8, 1.0),
            candidate("c", 0.9, 1.0),
        ];
        assert_eq!(
            choose_in_band(&same_cost, 0.5).map(|c| c.chosen),
            Some(2),
            "higher quality first"
        );
        let same_both = [candidate("b", 0.8, 1.0), candidate("a", 0.8, 1.0)];
        assert_eq!(
            choose_in_band(&same_both, 0.0).map(|c| c.chosen),
            Some(1),
            "then the name"
        );
    }

    #[test]
    fn non_finite_predictions_are_never_chosen_and_do_not_set_the_bar() {
        let candidates = [
            candidate("nan", f32::NAN, 0.0),
            candidate("inf", f32::INFINITY, 0.0),
            candidate("ok", 0.5, 9.0),
        ];
        let choice = choose_in_band(&candidates, 0.0).unwrap();
        assert_eq!((choice.chosen, choice.q_star), (2, 0.5));
        assert_eq!(choose_in_band(&candidates[..2], 0.0), None);
    }

    #[test]
    fn a_negative_q_star_keeps_the_best_model_in_the_band() {
        let candidates = [
            candidate("best", -0.5, 2.0),
            candidate("worse", -0.52, 1.0),
            candidate("far", -0.6, 0.5),
        ];
        let choice = choose_in_band(&candidates, 0.1).unwrap();
        assert!((choice.threshold - -0.55).abs() < 1e-6);
        assert_eq!(choice.chosen, 1);
        assert_eq!(choose_in_band(&candidates, 0.0).map(|c| c.chosen), Some(0));
    }
}
