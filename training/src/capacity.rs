//! Sizing provisioned throughput from observed demand (`model-router capacity`, issue #15).
//!
//! The input is one deployment's demand per minute over an observed window: every minute of
//! the window, the minutes without traffic as zeros. A provisioned size is a whole number of
//! units, each serving [`Unit::tpm`] tokens (input + output) per minute for
//! [`Unit::monthly_price`].
//!
//! The rules, stated exactly:
//! - **Percentiles** are nearest-rank over the window's minutes: the p-th percentile of n
//!   sorted values is the value at rank ⌈p/100 · n⌉ (1-based). By hour of day, over the
//!   window's minutes of that UTC hour.
//! - **Spill**: with capacity C = units × tpm, a minute of demand d serves min(d, C) tokens on
//!   the provisioned deployment and spills max(0, d − C) to pay-as-you-go. The spilled share
//!   of the minute's input and output tokens is the same (each is scaled by (d − C)/d), so
//!   spilled tokens cost that share of the minute's pay-as-you-go cost. This is the fluid
//!   approximation: a real spillover moves whole requests (the one that meets the 429), so
//!   within a minute it spills at most one request's tokens more or less.
//! - **Month**: the window's totals are scaled by [`MONTH_MINUTES`] / (minutes in the
//!   window): a month is 730 hours, as Azure bills provisioned throughput, and the window is
//!   taken as representative (a window shorter than a week misses the weekly cycle).
//! - **Costs per month**: provisioned = units × monthly price; spilled = the scaled
//!   pay-as-you-go cost of the spilled tokens; all pay-as-you-go = the scaled cost of every
//!   token; peak = the size that covers the busiest minute.
//! - **Recommendation**: the size with the lowest monthly cost (the fewest units on a tie). The
//!   cost is convex in the size (each further unit saves less spill than the one before), so
//!   the minimum found on a coarse grid is refined exactly around it.
//!
//! ```
//! use router_training::capacity::{size, MinuteDemand, Prices, Unit};
//!
//! // 4 minutes: 1000, 1000, 2000 and 4000 input tokens.
//! let minutes: Vec<MinuteDemand> = [1000, 1000, 2000, 4000]
//!     .iter()
//!     .map(|&t| MinuteDemand { input_tokens: t, output_tokens: 0 })
//!     .collect();
//! let prices = Prices { input_per_million: 10.0, output_per_million: 30.0 };
//! let unit = Unit { tpm: 1000, monthly_price: 100.0 };
//! let sizing = size(0, &minutes, prices, unit).unwrap();
//! assert_eq!((sizing.tpm.p50, sizing.tpm.max), (1000, 4000));
//! // A unit saves 43800 / 4 minutes × (4, 2, 1, 1 minutes at or above it) × 1000 tokens × $10/M:
//! // $438, $219, $109.5, $109.5 against $100: four units.
//! assert_eq!(sizing.recommended.units, 4);
//! ```

use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::error::{Result, TrainingError};
use crate::plot::{labelled_point, Canvas, LabelSide, Stroke};

/// Minutes in a month: 730 hours, the month Azure bills provisioned throughput by.
pub const MONTH_MINUTES: f64 = 43_800.0;
/// Minutes in a day, for the hour of day of a minute.
const DAY_MINUTES: i64 = 24 * 60;
/// Most sizes the cost curve evaluates before refining around its minimum.
const CURVE_POINTS: u64 = 400;

/// One minute's demand on a deployment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MinuteDemand {
    /// Input (prompt) tokens.
    pub input_tokens: u64,
    /// Output (completion) tokens.
    pub output_tokens: u64,
}

impl MinuteDemand {
    /// Input plus output tokens.
    pub fn tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

/// Pay-as-you-go prices, USD per million tokens (the catalog's).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prices {
    /// Per million input tokens.
    pub input_per_million: f64,
    /// Per million output tokens.
    pub output_per_million: f64,
}

impl Prices {
    fn cost(&self, m: &MinuteDemand) -> f64 {
        (m.input_tokens as f64 * self.input_per_million
            + m.output_tokens as f64 * self.output_per_million)
            / 1e6
    }
}

/// One provisioned unit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Unit {
    /// Tokens (input + output) per minute it serves.
    pub tpm: u64,
    /// USD per month.
    pub monthly_price: f64,
}

/// Nearest-rank percentiles of tokens per minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: u64,
    /// 80th percentile.
    pub p80: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// The busiest minute.
    pub max: u64,
}

impl Percentiles {
    /// Of `values` (any order); all zero when empty.
    pub fn of(values: &[u64]) -> Percentiles {
        let mut sorted = values.to_vec();
        sorted.sort_unstable();
        Percentiles {
            p50: nearest_rank(&sorted, 50.0),
            p80: nearest_rank(&sorted, 80.0),
            p90: nearest_rank(&sorted, 90.0),
            p99: nearest_rank(&sorted, 99.0),
            max: sorted.last().copied().unwrap_or(0),
        }
    }

    /// (name, value) from p50 to max.
    pub fn named(&self) -> [(&'static str, u64); 5] {
        [
            ("p50", self.p50),
            ("p80", self.p80),
            ("p90", self.p90),
            ("p99", self.p99),
            ("max", self.max),
        ]
    }
}

/// The nearest-rank `p`-th percentile of ascending `sorted`: the value at rank ⌈p/100 · n⌉;
/// 0 when empty.
///
/// ```
/// use router_training::capacity::nearest_rank;
/// assert_eq!(nearest_rank(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90.0), 9);
/// assert_eq!(nearest_rank(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 91.0), 10);
/// assert_eq!(nearest_rank(&[7], 50.0), 7);
/// ```
pub fn nearest_rank(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Tokens-per-minute percentiles of one UTC hour of the day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HourPercentiles {
    /// The hour, 0 to 23 (UTC).
    pub hour: u8,
    /// Minutes of the window in that hour.
    pub minutes: usize,
    /// Their percentiles.
    pub tpm: Percentiles,
}

/// The monthly cost of one provisioned size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SizeCost {
    /// Provisioned units.
    pub units: u64,
    /// Their tokens per minute.
    pub capacity_tpm: u64,
    /// The highest percentile of demand (p50 … max) the capacity covers, if any.
    pub covers: Option<&'static str>,
    /// Share of the window's tokens that would spill.
    pub spilled_token_share: f64,
    /// Share of the window's minutes with some spill.
    pub spill_minute_share: f64,
    /// Units × monthly price.
    pub provisioned_usd: f64,
    /// Pay-as-you-go cost of the spilled tokens, per month.
    pub spilled_usd: f64,
    /// Both.
    pub monthly_usd: f64,
}

/// The sizing of one deployment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sizing {
    /// Minutes in the observed window.
    pub window_minutes: usize,
    /// [`MONTH_MINUTES`] / window minutes: what the window's totals are multiplied by.
    pub month_scale: f64,
    /// Tokens per minute over the window.
    pub tpm: Percentiles,
    /// By UTC hour of day (hours the window does not include are left out).
    pub by_hour: Vec<HourPercentiles>,
    /// Every token on pay-as-you-go, per month.
    pub all_paygo_usd: f64,
    /// The sizes that cover p50, p80, p90, p99 and the peak, with none and the recommended
    /// one, by units.
    pub sizes: Vec<SizeCost>,
    /// The size that covers the busiest minute.
    pub peak: SizeCost,
    /// The cheapest size.
    pub recommended: SizeCost,
    /// The cost curve: sizes from 0 to the peak's (at most a few hundred, evenly spaced),
    /// with the recommended one ([`plot_svg`] draws it; not in the JSON).
    #[serde(skip)]
    pub curve: Vec<SizeCost>,
}

/// What sizing needs besides the demand.
#[derive(Debug, Clone, Copy)]
struct Model<'a> {
    minutes: &'a [MinuteDemand],
    total_tokens: u64,
    prices: Prices,
    unit: Unit,
    scale: f64,
    tpm: Percentiles,
}

impl Model<'_> {
    fn cost(&self, units: u64) -> SizeCost {
        let capacity = units.saturating_mul(self.unit.tpm);
        let (mut spilled_tokens, mut spilled_cost, mut spill_minutes) = (0u64, 0.0, 0usize);
        for m in self.minutes {
            let demand = m.tokens();
            if demand > capacity {
                let spilled = demand - capacity;
                spilled_tokens += spilled;
                spilled_cost += self.prices.cost(m) * spilled as f64 / demand as f64;
                spill_minutes += 1;
            }
        }
        let provisioned_usd = units as f64 * self.unit.monthly_price;
        let spilled_usd = spilled_cost * self.scale;
        SizeCost {
            units,
            capacity_tpm: capacity,
            covers: self
                .tpm
                .named()
                .iter()
                .rev()
                .find(|(_, v)| *v <= capacity)
                .map(|(name, _)| *name),
            spilled_token_share: share(spilled_tokens as f64, self.total_tokens as f64),
            spill_minute_share: share(spill_minutes as f64, self.minutes.len() as f64),
            provisioned_usd,
            spilled_usd,
            monthly_usd: provisioned_usd + spilled_usd,
        }
    }

    /// The cost curve from 0 to `peak_units` units, and its exact minimum.
    fn curve_and_minimum(&self, peak_units: u64) -> (Vec<SizeCost>, SizeCost) {
        let step = peak_units.div_ceil(CURVE_POINTS).max(1);
        let mut grid: Vec<u64> = (0..=peak_units).step_by(step as usize).collect();
        if grid.last() != Some(&peak_units) {
            grid.push(peak_units);
        }
        let mut curve: Vec<SizeCost> = grid.iter().map(|&u| self.cost(u)).collect();
        let coarse = cheapest(&curve).units;
        // Convex: the true minimum is within one grid step of the grid's.
        let around = coarse.saturating_sub(step)..=(coarse + step).min(peak_units);
        let fine: Vec<SizeCost> = around.map(|u| self.cost(u)).collect();
        let best = cheapest(&fine);
        if !curve.iter().any(|c| c.units == best.units) {
            curve.push(best);
            curve.sort_by_key(|c| c.units);
        }
        (curve, best)
    }
}

fn share(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        part / whole
    } else {
        0.0
    }
}

/// The lowest monthly cost, the fewest units on a tie (`costs` is not empty).
fn cheapest(costs: &[SizeCost]) -> SizeCost {
    let mut best = costs[0];
    for c in &costs[1..] {
        if c.monthly_usd < best.monthly_usd - 1e-9 {
            best = *c;
        }
    }
    best
}

/// Units needed for `tpm` tokens per minute.
fn units_for(tpm: u64, unit_tpm: u64) -> u64 {
    tpm.div_ceil(unit_tpm)
}

/// A minute (minutes since the Unix epoch) as `YYYY-MM-DD HH:MM` UTC.
///
/// ```
/// assert_eq!(router_training::capacity::utc_label(29_412_345), "2025-12-03 05:45");
/// ```
pub fn utc_label(minute: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(minute.saturating_mul(60)) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute()
        ),
        Err(_) => format!("minute {minute}"),
    }
}

/// Percentiles per UTC hour of day; `first_minute` is the window's first minute (minutes since
/// the Unix epoch).
pub fn by_hour(first_minute: i64, minutes: &[MinuteDemand]) -> Vec<HourPercentiles> {
    let mut hours: Vec<Vec<u64>> = vec![Vec::new(); 24];
    for (offset, m) in minutes.iter().enumerate() {
        let minute = first_minute + offset as i64;
        let hour = minute.rem_euclid(DAY_MINUTES) / 60;
        hours[hour as usize].push(m.tokens());
    }
    hours
        .into_iter()
        .enumerate()
        .filter(|(_, values)| !values.is_empty())
        .map(|(hour, values)| HourPercentiles {
            hour: hour as u8,
            minutes: values.len(),
            tpm: Percentiles::of(&values),
        })
        .collect()
}

/// Sizes provisioned throughput for the demand of `minutes` (every minute of the window, in
/// order, starting at `first_minute`); see the module docs for the rules. The window must not
/// be empty and a unit must serve at least one token per minute.
pub fn size(
    first_minute: i64,
    minutes: &[MinuteDemand],
    prices: Prices,
    unit: Unit,
) -> Result<Sizing> {
    if minutes.is_empty() {
        return Err(TrainingError::Invalid(
            "capacity: the usage window has no minutes".into(),
        ));
    }
    if unit.tpm == 0 || unit.monthly_price.is_nan() || unit.monthly_price < 0.0 {
        return Err(TrainingError::Invalid(
            "capacity: a unit serves at least 1 token per minute and costs 0 or more".into(),
        ));
    }
    let demand: Vec<u64> = minutes.iter().map(MinuteDemand::tokens).collect();
    let model = Model {
        minutes,
        total_tokens: demand.iter().sum(),
        prices,
        unit,
        scale: MONTH_MINUTES / minutes.len() as f64,
        tpm: Percentiles::of(&demand),
    };
    let all_paygo_usd = minutes.iter().map(|m| prices.cost(m)).sum::<f64>() * model.scale;
    let peak_units = units_for(model.tpm.max, unit.tpm);
    let (curve, recommended) = model.curve_and_minimum(peak_units);
    let mut units: Vec<u64> = model
        .tpm
        .named()
        .iter()
        .map(|(_, v)| units_for(*v, unit.tpm))
        .collect();
    units.extend([0, recommended.units]);
    units.sort_unstable();
    units.dedup();
    Ok(Sizing {
        window_minutes: minutes.len(),
        month_scale: model.scale,
        tpm: model.tpm,
        by_hour: by_hour(first_minute, minutes),
        all_paygo_usd,
        sizes: units.iter().map(|&u| model.cost(u)).collect(),
        peak: model.cost(peak_units),
        recommended,
        curve,
    })
}

/// Draws the monthly cost against the provisioned size to an SVG file: the cost curve, the
/// all-pay-as-you-go cost as a dashed line, the sizes covering p50 … max as labelled points
/// and the recommended size marked.
pub fn plot_svg(title: &str, sizing: &Sizing, path: &Path) -> Result<()> {
    let max_units = sizing.curve.last().map_or(1, |c| c.units).max(1) as f64;
    let max_cost = sizing
        .curve
        .iter()
        .map(|c| c.monthly_usd)
        .fold(sizing.all_paygo_usd, f64::max);
    let canvas = Canvas::new(path)?;
    let mut chart = canvas.chart(
        title,
        70,
        -0.02 * max_units..max_units * 1.05,
        0.0..max_cost * 1.1 + 1e-9,
    )?;
    chart
        .configure_mesh()
        .x_desc("provisioned units")
        // Whole units: about one label per unit up to ten, else ten.
        .x_labels((max_units as usize + 1).min(10))
        .x_label_formatter(&|units| format!("{units:.0}"))
        .y_desc("USD per month (provisioned + spilled pay-as-you-go)")
        .light_line_style(RGBColor(238, 238, 238))
        .draw()
        .map_err(|e| canvas.error(e))?;
    canvas.line(
        &mut chart,
        sizing
            .curve
            .iter()
            .map(|c| (c.units as f64, c.monthly_usd))
            .collect(),
        BLUE,
        Stroke::Solid,
        "monthly cost by provisioned size".into(),
    )?;
    canvas.line(
        &mut chart,
        vec![
            (0.0, sizing.all_paygo_usd),
            (max_units, sizing.all_paygo_usd),
        ],
        RGBColor(230, 120, 0),
        Stroke::Dashed,
        format!("all pay-as-you-go (${:.0})", sizing.all_paygo_usd),
    )?;
    let marker = |c: &SizeCost, label: String, colour: RGBColor, radius: i32| {
        let side = LabelSide {
            left: c.units as f64 > max_units / 2.0,
            above: true,
        };
        labelled_point((c.units as f64, c.monthly_usd), label, colour, radius, side)
    };
    let labelled = sizing
        .sizes
        .iter()
        .filter(|c| c.units != sizing.recommended.units)
        .map(|c| {
            let covers = c.covers.map_or("none".to_string(), |p| p.to_string());
            marker(c, format!("{} units ({covers})", c.units), BLACK, 3)
        });
    chart.draw_series(labelled).map_err(|e| canvas.error(e))?;
    let best = sizing.recommended;
    let label = format!(
        "recommended: {} units, ${:.0}/month",
        best.units, best.monthly_usd
    );
    chart
        .draw_series(std::iter::once(marker(&best, label, RED, 6)))
        .map_err(|e| canvas.error(e))?;
    canvas.finish(&mut chart, SeriesLabelPosition::UpperRight)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input_only(tokens: &[u64]) -> Vec<MinuteDemand> {
        tokens
            .iter()
            .map(|&t| MinuteDemand {
                input_tokens: t,
                output_tokens: 0,
            })
            .collect()
    }

    const PRICES: Prices = Prices {
        input_per_million: 10.0,
        output_per_million: 30.0,
    };

    #[test]
    fn nearest_rank_percentiles_exactly() {
        let values: Vec<u64> = (1..=200).rev().collect();
        let p = Percentiles::of(&values);
        assert_eq!(
            (p.p50, p.p80, p.p90, p.p99, p.max),
            (100, 160, 180, 198, 200)
        );
        assert_eq!(Percentiles::of(&[]), Percentiles::default());
        assert_eq!(nearest_rank(&[5, 9], 0.0), 5, "rank is at least 1");
    }

    #[test]
    fn hours_of_day_split_the_window() {
        // The window starts at 23:58 UTC: two minutes of hour 23, then three of hour 0.
        let first = 24 * 60 * 100 + 23 * 60 + 58;
        let hours = by_hour(first, &input_only(&[1, 2, 10, 20, 30]));
        assert_eq!(hours.len(), 2);
        assert_eq!(
            (hours[0].hour, hours[0].minutes, hours[0].tpm.max),
            (0, 3, 30)
        );
        assert_eq!(
            (hours[1].hour, hours[1].minutes, hours[1].tpm.p50),
            (23, 2, 1)
        );
    }

    #[test]
    fn spill_and_costs_of_one_size_exactly() {
        // Two minutes: 3000 tokens (1000 in, 2000 out) and 500 in; one unit of 1000 tpm.
        let minutes = vec![
            MinuteDemand {
                input_tokens: 1000,
                output_tokens: 2000,
            },
            MinuteDemand {
                input_tokens: 500,
                output_tokens: 0,
            },
        ];
        let sizing = size(
            0,
            &minutes,
            PRICES,
            Unit {
                tpm: 1000,
                monthly_price: 50.0,
            },
        )
        .unwrap();
        let one = sizing.sizes.iter().find(|c| c.units == 1).unwrap();
        // Minute 1 spills 2000 of 3000 tokens: 2/3 of its $0.07 cost; scaled by 43800 / 2.
        assert_eq!(one.spilled_token_share, 2000.0 / 3500.0);
        assert_eq!(one.spill_minute_share, 0.5);
        assert!(
            (one.spilled_usd - 0.07 * 2.0 / 3.0 * 21_900.0).abs() < 1e-6,
            "{one:?}"
        );
        assert!((one.monthly_usd - (50.0 + one.spilled_usd)).abs() < 1e-9);
        assert_eq!(one.covers, Some("p50"));
        assert!((sizing.all_paygo_usd - 0.075 * 21_900.0).abs() < 1e-6);
        assert_eq!(sizing.peak.units, 3);
        assert_eq!(sizing.peak.spilled_usd, 0.0);
        assert_eq!(sizing.peak.covers, Some("max"));
    }

    #[test]
    fn recommends_the_size_where_a_unit_stops_paying_for_itself() {
        // 50 % of minutes at 1000 tokens, 30 % at 2000, 15 % at 3000, 5 % at 4000; a unit of
        // 1000 tpm saves $438 × (share of minutes at or above it): 438, 219, 87.6, 21.9.
        let mut demand = Vec::new();
        for (tokens, count) in [(1000, 50), (2000, 30), (3000, 15), (4000, 5)] {
            demand.extend(std::iter::repeat_n(tokens, count));
        }
        let sizing = size(
            0,
            &input_only(&demand),
            PRICES,
            Unit {
                tpm: 1000,
                monthly_price: 100.0,
            },
        )
        .unwrap();
        assert_eq!(sizing.recommended.units, 2);
        assert!(
            (sizing.recommended.monthly_usd - 309.5).abs() < 1e-6,
            "{:?}",
            sizing.recommended
        );
        assert!((sizing.all_paygo_usd - 766.5).abs() < 1e-6);
        assert!((sizing.peak.monthly_usd - 400.0).abs() < 1e-9);
        let units: Vec<u64> = sizing.sizes.iter().map(|c| c.units).collect();
        assert_eq!(
            units,
            [0, 1, 2, 3, 4],
            "none, p50, p80 (= recommended), p90, p99 (= max)"
        );
        // Cheaper units: every unit pays for itself up to the peak.
        let cheap = size(
            0,
            &input_only(&demand),
            PRICES,
            Unit {
                tpm: 1000,
                monthly_price: 20.0,
            },
        )
        .unwrap();
        assert_eq!(cheap.recommended.units, 4);
    }

    #[test]
    fn a_fine_grid_finds_the_exact_minimum() {
        // 10 tokens per unit, a peak of 100000: the coarse grid steps by 25 units.
        let mut demand = vec![1010u64; 900];
        demand.extend(std::iter::repeat_n(100_000, 100));
        let unit = Unit {
            tpm: 10,
            monthly_price: 1.0,
        };
        let sizing = size(0, &input_only(&demand), PRICES, unit).unwrap();
        // Unit k saves 43.8 (month scale) × 10 tokens × $10/M × (minutes with demand ≥ 10k):
        // $4.38 for every k up to 101 (all 1000 minutes), $0.438 above: exactly 101 units,
        // which is not on the coarse grid.
        assert_eq!(sizing.recommended.units, 101);
        assert!(sizing.curve.len() <= CURVE_POINTS as usize + 3);
    }

    #[test]
    fn no_traffic_needs_no_units_and_empty_windows_are_refused() {
        let sizing = size(
            0,
            &input_only(&[0, 0, 0]),
            PRICES,
            Unit {
                tpm: 1000,
                monthly_price: 1.0,
            },
        )
        .unwrap();
        assert_eq!(
            (
                sizing.recommended.units,
                sizing.peak.units,
                sizing.all_paygo_usd
            ),
            (0, 0, 0.0)
        );
        assert!(size(
            0,
            &[],
            PRICES,
            Unit {
                tpm: 1,
                monthly_price: 1.0
            }
        )
        .is_err());
        assert!(size(
            0,
            &input_only(&[1]),
            PRICES,
            Unit {
                tpm: 0,
                monthly_price: 1.0
            }
        )
        .is_err());
    }

    #[test]
    fn the_plot_marks_the_recommended_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.svg");
        let sizing = size(
            0,
            &input_only(&[1000, 2000, 3000, 4000]),
            PRICES,
            Unit {
                tpm: 1000,
                monthly_price: 100.0,
            },
        )
        .unwrap();
        plot_svg("gpt4-ptu", &sizing, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(
            svg.contains("recommended: ") && svg.contains("all pay-as-you-go"),
            "{svg}"
        );
    }
}
