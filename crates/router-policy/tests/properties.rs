//! Properties over random predictions, catalogs and requests.

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use router_policy::{
    estimate_tokens, Capabilities, Catalog, Decision, Mode, ModelSpec, Policy, PolicyDefaults,
    PolicyError, RouteRequest,
};

/// One random routing problem.
#[derive(Debug, Clone)]
struct Case {
    columns: Vec<String>,
    models: Vec<ModelSpec>,
    defaults: PolicyDefaults,
    predictions: Vec<f32>,
    request: RouteRequest,
}

impl Case {
    fn policy(&self) -> Policy {
        Policy::new(
            Catalog::new(self.models.clone()),
            self.columns.clone(),
            self.defaults.clone(),
        )
        .expect("generated catalogs are valid")
    }
}

fn price() -> impl Strategy<Value = f64> {
    // Few distinct values so that equal costs, and so the tie-breaks, actually occur.
    prop_oneof![
        3 => prop::sample::select(vec![0.0, 0.15, 0.5, 1.0, 10.0, 30.0]),
        2 => 0.0..60.0f64,
    ]
}

fn prediction() -> impl Strategy<Value = f32> {
    prop_oneof![
        // Clustered near the top, so that bands of 2 % and 6 % admit different models.
        4 => 0.86..=0.92f32,
        3 => 0.0..=1.0f32,
        2 => prop::sample::select(vec![0.5f32, 0.85, 0.9, 1.0]),
        1 => prop::sample::select(vec![f32::NAN, f32::INFINITY, -0.2]),
    ]
}

fn capabilities(p: f64) -> impl Strategy<Value = Capabilities> {
    (
        prop::bool::weighted(p),
        prop::bool::weighted(p),
        prop::bool::weighted(p),
        prop::bool::weighted(p),
    )
        .prop_map(|(tools, vision, json_schema, reasoning)| Capabilities {
            tools,
            vision,
            json_schema,
            reasoning,
        })
}

fn spec(name: String) -> impl Strategy<Value = ModelSpec> {
    (
        price(),
        price(),
        prop::sample::select(vec![2048u64, 4096, 8192, 16_000, 128_000]),
        1u32..2000,
        capabilities(0.7),
    )
        .prop_map(move |(i, o, w, e, c)| {
            ModelSpec::new(name.clone(), i, o, w)
                .expected_output_tokens(e)
                .capabilities(c)
        })
}

/// A non-empty random subset of `names`, or `None`.
fn maybe_subset(names: Vec<String>) -> impl Strategy<Value = Option<Vec<String>>> {
    let n = names.len();
    prop::option::weighted(0.3, prop::sample::subsequence(names, 1..=n))
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..=6)
        .prop_flat_map(|n| {
            let columns: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
            let specs: Vec<_> = columns
                .iter()
                .map(|c| prop::option::weighted(0.85, spec(c.clone())))
                .collect();
            (
                Just(columns.clone()),
                specs,
                prop::collection::vec(prediction(), n),
                maybe_subset(columns.clone()),
                maybe_subset(columns.clone()),
                prop::sample::subsequence(columns.clone(), 0..=1),
                (
                    prop_oneof![4 => 0usize..2000, 1 => 0usize..140_000],
                    prop::option::of(1u32..8000),
                    capabilities(0.08),
                ),
                prop::sample::select(Mode::ALL.to_vec()),
            )
        })
        .prop_map(
            |(columns, specs, predictions, dsub, rsub, exclude, (tokens, max, needs), mode)| {
                let mut models: Vec<ModelSpec> = specs.into_iter().flatten().collect();
                if models.is_empty() {
                    models.push(ModelSpec::new(columns[0].clone(), 1.0, 1.0, 128_000));
                }
                Case {
                    columns,
                    models,
                    defaults: PolicyDefaults {
                        mode,
                        band: None,
                        subset: dsub,
                    },
                    predictions,
                    request: RouteRequest {
                        prompt_tokens: tokens,
                        max_tokens: max,
                        needs,
                        mode: None,
                        band: None,
                        subset: rsub,
                        exclude,
                    },
                }
            },
        )
}

fn check_consistent(case: &Case, d: &Decision) {
    // Every column is explained exactly once.
    assert_eq!(d.predictions.len(), case.columns.len());
    for c in &case.columns {
        assert!(
            d.eligible.contains_key(c) != d.excluded.contains_key(c),
            "{c}"
        );
    }
    // The choice is eligible and within the band, and its cost is the reported one.
    let chosen = d.chosen().expect("the choice is eligible");
    assert!(chosen.within_band);
    assert!(!d.excluded.contains_key(&d.model));
    assert_eq!(chosen.estimated_cost, d.estimated_cost);
    assert!(d.threshold <= f64::from(d.q_star));
    for (name, e) in &d.eligible {
        assert!(e.predicted_quality.is_finite());
        assert!(e.predicted_quality <= d.q_star);
        assert_eq!(
            e.within_band,
            f64::from(e.predicted_quality) >= d.threshold,
            "{name}"
        );
        // No candidate beats the choice on (cost, −quality, name).
        if e.within_band && *name != d.model {
            let key = |c: f64, q: f32, n: &String| (c, -q, n.clone());
            assert!(
                key(e.estimated_cost, e.predicted_quality, name)
                    > key(d.estimated_cost, chosen.predicted_quality, &d.model),
                "{name} should have won over {}",
                d.model
            );
        }
    }
}

fn cost(p: &Policy, case: &Case, request: &RouteRequest) -> Option<f64> {
    match p.decide(&case.predictions, request) {
        Ok(d) => {
            check_consistent(case, &d);
            Some(d.estimated_cost)
        }
        Err(PolicyError::NoEligibleModel { excluded }) => {
            assert_eq!(excluded.len(), case.columns.len());
            None
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn the_choice_is_always_eligible(case in case()) {
        let p = case.policy();
        for mode in Mode::ALL {
            cost(&p, &case, &case.request.clone().mode(mode));
        }
        cost(&p, &case, &case.request);
    }

    #[test]
    fn quality_picks_a_maximum(case in case()) {
        let p = case.policy();
        if let Ok(d) = p.decide(&case.predictions, &case.request.clone().mode(Mode::Quality)) {
            let best = d.eligible.values().map(|e| e.predicted_quality).fold(f32::MIN, f32::max);
            prop_assert_eq!(d.eligible[&d.model].predicted_quality, best);
            prop_assert_eq!(d.q_star, best);
        }
    }

    #[test]
    fn cost_mode_costs_at_most_balanced_at_most_quality(case in case()) {
        let p = case.policy();
        let [q, b, c] = Mode::ALL.map(|m| cost(&p, &case, &case.request.clone().mode(m)));
        // The filters do not depend on the mode: all succeed or all fail.
        prop_assert_eq!(q.is_some(), b.is_some());
        prop_assert_eq!(b.is_some(), c.is_some());
        if let (Some(q), Some(b), Some(c)) = (q, b, c) {
            prop_assert!(c <= b && b <= q, "cost {c} balanced {b} quality {q}");
        }
    }

    #[test]
    fn widening_the_band_never_raises_the_cost(case in case(), a in 0.0..=1.0f64, b in 0.0..=1.0f64) {
        let (narrow, wide) = if a <= b { (a, b) } else { (b, a) };
        let p = case.policy();
        let n = cost(&p, &case, &case.request.clone().band(narrow));
        let w = cost(&p, &case, &case.request.clone().band(wide));
        if let (Some(n), Some(w)) = (n, w) {
            prop_assert!(w <= n, "band {wide}: {w} > band {narrow}: {n}");
        }
    }

    #[test]
    fn the_same_input_gives_the_same_decision(case in case(), seed in any::<u64>()) {
        let p = case.policy();
        let first = p.decide(&case.predictions, &case.request);
        let again = p.decide(&case.predictions, &case.request);
        prop_assert_eq!(&first, &again);
        // Nor does the catalog's order matter.
        let mut shuffled = case.clone();
        let n = shuffled.models.len();
        shuffled.models.rotate_left((seed as usize) % n);
        if seed % 2 == 1 {
            shuffled.models.reverse();
        }
        let other = shuffled.policy().decide(&case.predictions, &case.request);
        prop_assert_eq!(&first, &other);
        if let (Ok(a), Ok(b)) = (&first, &other) {
            prop_assert_eq!(serde_json::to_string(a).unwrap(), serde_json::to_string(b).unwrap());
            prop_assert_eq!(a.to_string(), b.to_string());
        }
    }

    #[test]
    fn decisions_round_trip_through_json(case in case()) {
        if let Ok(d) = case.policy().decide(&case.predictions, &case.request) {
            let back: Decision = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
            // serde_json (without its `float_roundtrip` feature) may parse an f64 one ulp off.
            let near = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(b.abs());
            prop_assert!(near(back.estimated_cost, d.estimated_cost) && near(back.threshold, d.threshold));
            prop_assert_eq!(back.eligible.len(), d.eligible.len());
            for (name, e) in &d.eligible {
                let b = &back.eligible[name];
                prop_assert!(near(b.estimated_cost, e.estimated_cost));
                prop_assert_eq!(
                    (b.predicted_quality, b.output_tokens, b.within_band),
                    (e.predicted_quality, e.output_tokens, e.within_band)
                );
            }
            prop_assert_eq!(
                (&back.model, back.mode, back.band, back.custom_band, back.q_star, back.input_tokens),
                (&d.model, d.mode, d.band, d.custom_band, d.q_star, d.input_tokens)
            );
            prop_assert_eq!(&back.predictions, &d.predictions);
            prop_assert_eq!(&back.excluded, &d.excluded);
        }
    }

    #[test]
    fn token_estimate_is_at_least_a_quarter_of_the_bytes(text in any::<String>()) {
        // Real tokenizers average about 4 bytes per token on prose; the estimate never goes below.
        prop_assert!(estimate_tokens(&text) * 4 >= text.len());
    }
}
