//! Exact tests of each rule and filter, with hand-computed numbers.

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use router_policy::{
    estimate_tokens, estimated_cost, Capabilities, Capability, Catalog, Decision, Exclusion, Mode,
    ModelSpec, Policy, PolicyDefaults, PolicyError, RouteRequest,
};

fn cols(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn policy(models: Vec<ModelSpec>, columns: &[&str], defaults: PolicyDefaults) -> Policy {
    Policy::new(Catalog::new(models), cols(columns), defaults).expect("valid policy")
}

/// The README's worked example: three models, 300 expected output tokens each.
fn three() -> Policy {
    policy(
        vec![
            ModelSpec::new("large", 10.0, 30.0, 128_000).expected_output_tokens(300),
            ModelSpec::new("medium", 0.5, 1.5, 16_000).expected_output_tokens(300),
            ModelSpec::new("small", 0.15, 0.6, 4096).expected_output_tokens(300),
        ],
        &["large", "medium", "small"],
        PolicyDefaults::default(),
    )
}

const THREE_Q: [f32; 3] = [0.90, 0.89, 0.85];

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn costs_are_input_plus_expected_output_per_million() {
    let d = three().decide(&THREE_Q, &RouteRequest::new(1000)).unwrap();
    // large: 1000 × 10 / 1M + 300 × 30 / 1M = 0.01 + 0.009
    assert!(close(d.eligible["large"].estimated_cost, 0.019));
    // medium: 0.0005 + 0.00045
    assert!(close(d.eligible["medium"].estimated_cost, 0.000_95));
    // small: 0.00015 + 0.00018
    assert!(close(d.eligible["small"].estimated_cost, 0.000_33));
    assert_eq!(d.eligible["small"].output_tokens, 300);
    assert_eq!(d.input_tokens, 1000);
}

#[test]
fn quality_mode_takes_q_star() {
    let d = three()
        .decide(&THREE_Q, &RouteRequest::new(1000).mode(Mode::Quality))
        .unwrap();
    assert_eq!(d.model, "large");
    assert_eq!(d.mode, Mode::Quality);
    assert_eq!(d.band, 0.0);
    assert_eq!(d.q_star, 0.90);
    assert_eq!(d.threshold, f64::from(0.90f32));
    assert!(close(d.estimated_cost, 0.019));
    assert!(!d.eligible["medium"].within_band);
}

#[test]
fn balanced_mode_is_the_default_and_takes_the_cheapest_within_2_percent() {
    let d = three().decide(&THREE_Q, &RouteRequest::new(1000)).unwrap();
    assert_eq!(d.mode, Mode::Balanced);
    assert_eq!(d.band, 0.02);
    assert!(!d.custom_band);
    // 0.9 × 0.98 = 0.882: large and medium are in, small (0.85) is out.
    assert_eq!(d.threshold, f64::from(0.90f32) * 0.98);
    assert!(d.eligible["large"].within_band);
    assert!(d.eligible["medium"].within_band);
    assert!(!d.eligible["small"].within_band);
    assert_eq!(d.model, "medium");
    assert!(close(d.estimated_cost, 0.000_95));
}

#[test]
fn cost_mode_takes_the_cheapest_within_6_percent() {
    let d = three()
        .decide(&THREE_Q, &RouteRequest::new(1000).mode(Mode::Cost))
        .unwrap();
    // 0.9 × 0.94 = 0.846: small (0.85) is in.
    assert_eq!(d.threshold, f64::from(0.90f32) * 0.94);
    assert_eq!(d.model, "small");
    assert!(close(d.estimated_cost, 0.000_33));
}

#[test]
fn custom_band_per_request() {
    let p = three();
    // 0.9 × 0.95 = 0.855 leaves small (0.85) just out.
    let d = p
        .decide(&THREE_Q, &RouteRequest::new(1000).band(0.05))
        .unwrap();
    assert_eq!(
        (d.model.as_str(), d.band, d.custom_band),
        ("medium", 0.05, true)
    );
    // 0.9 × 0.9 = 0.81 lets it in.
    let d = p
        .decide(&THREE_Q, &RouteRequest::new(1000).band(0.1))
        .unwrap();
    assert_eq!(d.model, "small");
    // A request band beats the request's mode.
    let d = p
        .decide(
            &THREE_Q,
            &RouteRequest::new(1000).mode(Mode::Cost).band(0.0),
        )
        .unwrap();
    assert_eq!(
        (d.model.as_str(), d.mode, d.band),
        ("large", Mode::Cost, 0.0)
    );
    // Band 1: threshold 0, every eligible model is a candidate.
    let d = p
        .decide(&[0.9, 0.1, 0.0], &RouteRequest::new(1000).band(1.0))
        .unwrap();
    assert_eq!((d.model.as_str(), d.threshold), ("small", 0.0));
}

#[test]
fn custom_band_per_deployment_and_request_mode_override() {
    let models = three().catalog().models.clone();
    let p = policy(
        models,
        &["large", "medium", "small"],
        PolicyDefaults::new(Mode::Quality).band(0.1),
    );
    let d = p.decide(&THREE_Q, &RouteRequest::new(1000)).unwrap();
    assert_eq!(
        (d.model.as_str(), d.mode, d.band, d.custom_band),
        ("small", Mode::Quality, 0.1, true)
    );
    // An explicit request mode is more specific than the deployment's custom band.
    let d = p
        .decide(&THREE_Q, &RouteRequest::new(1000).mode(Mode::Balanced))
        .unwrap();
    assert_eq!(
        (d.model.as_str(), d.band, d.custom_band),
        ("medium", 0.02, false)
    );
    // Deployment default mode without a band.
    let p = policy(
        three().catalog().models.clone(),
        &["large", "medium", "small"],
        PolicyDefaults::new(Mode::Cost),
    );
    assert_eq!(
        p.decide(&THREE_Q, &RouteRequest::new(1000)).unwrap().model,
        "small"
    );
}

#[test]
fn threshold_is_inclusive() {
    let p = policy(
        vec![
            ModelSpec::new("a", 2.0, 2.0, 1000),
            ModelSpec::new("b", 1.0, 1.0, 1000),
        ],
        &["a", "b"],
        PolicyDefaults::default(),
    );
    // Exact binary fractions: 1.0 × (1 − 0.5) = 0.5 exactly.
    let d = p
        .decide(&[1.0, 0.5], &RouteRequest::new(10).band(0.5))
        .unwrap();
    assert_eq!(d.threshold, 0.5);
    assert_eq!(d.model, "b");
    let d = p
        .decide(&[1.0, 0.499], &RouteRequest::new(10).band(0.5))
        .unwrap();
    assert_eq!(d.model, "a");
}

#[test]
fn ties_break_by_higher_quality_then_name() {
    // Same prices: equal costs.
    let same = |n: &str| ModelSpec::new(n, 1.0, 1.0, 10_000);
    let p = policy(
        vec![same("beta"), same("alpha"), same("gamma")],
        &["gamma", "beta", "alpha"],
        PolicyDefaults::new(Mode::Cost),
    );
    // Equal cost: higher quality wins.
    let d = p
        .decide(&[0.90, 0.95, 0.93], &RouteRequest::new(100))
        .unwrap();
    assert_eq!(d.model, "beta");
    // Equal cost and quality: the first name wins.
    let d = p
        .decide(&[0.95, 0.95, 0.95], &RouteRequest::new(100))
        .unwrap();
    assert_eq!(d.model, "alpha");
    let d = p
        .decide(&[0.95, 0.95, 0.5], &RouteRequest::new(100))
        .unwrap();
    assert_eq!(d.model, "beta");
}

#[test]
fn quality_mode_takes_the_cheapest_of_the_models_at_q_star() {
    let p = policy(
        vec![
            ModelSpec::new("b-cheap", 1.0, 1.0, 10_000),
            ModelSpec::new("a-dear", 5.0, 5.0, 10_000),
            ModelSpec::new("a-cheap", 1.0, 1.0, 10_000),
            ModelSpec::new("c", 0.1, 0.1, 10_000),
        ],
        &["a-dear", "b-cheap", "a-cheap", "c"],
        PolicyDefaults::new(Mode::Quality),
    );
    let d = p
        .decide(&[0.8, 0.8, 0.7, 0.79], &RouteRequest::new(100))
        .unwrap();
    assert_eq!(d.model, "b-cheap");
    let d = p
        .decide(&[0.8, 0.8, 0.8, 0.79], &RouteRequest::new(100))
        .unwrap();
    assert_eq!(d.model, "a-cheap");
}

#[test]
fn subset_is_narrowed_by_the_request() {
    let m = |n: &str| ModelSpec::new(n, 1.0, 1.0, 10_000);
    let p = policy(
        vec![m("a"), m("b"), m("c"), m("d")],
        &["a", "b", "c", "d"],
        PolicyDefaults::default().subset(["a", "b"]),
    );
    let q = [0.5, 0.6, 0.9, 0.9];
    let d = p.decide(&q, &RouteRequest::new(10)).unwrap();
    assert_eq!(d.model, "b");
    assert_eq!(d.excluded["c"], Exclusion::NotInSubset);
    assert_eq!(d.excluded["d"], Exclusion::NotInSubset);

    let d = p
        .decide(&q, &RouteRequest::new(10).subset(["a", "c"]))
        .unwrap();
    assert_eq!(d.model, "a");
    assert_eq!(d.eligible.keys().collect::<Vec<_>>(), ["a"]);
    assert_eq!(d.excluded["b"], Exclusion::NotInRequestSubset);
    assert_eq!(d.excluded["c"], Exclusion::RequestedOutsideSubset);
    assert_eq!(d.excluded["d"], Exclusion::NotInSubset);
    assert!(d.excluded["c"]
        .to_string()
        .contains("outside the deployment's model subset"));

    // Without a deployment subset the request's subset alone applies.
    let p = policy(vec![m("a"), m("b")], &["a", "b"], PolicyDefaults::default());
    let d = p
        .decide(&[0.1, 0.9], &RouteRequest::new(10).subset(["a"]))
        .unwrap();
    assert_eq!(d.model, "a");
    assert_eq!(d.excluded["b"], Exclusion::NotInRequestSubset);
}

#[test]
fn context_window_uses_expected_output_when_max_tokens_is_absent() {
    let p = policy(
        vec![
            ModelSpec::new("fits", 1.0, 1.0, 1300).expected_output_tokens(300),
            ModelSpec::new("short", 0.1, 0.1, 1299).expected_output_tokens(300),
        ],
        &["fits", "short"],
        PolicyDefaults::new(Mode::Cost),
    );
    let d = p.decide(&[0.9, 0.9], &RouteRequest::new(1000)).unwrap();
    // 1000 + 300 = 1300: exactly fills the window, which is allowed.
    assert_eq!(d.model, "fits");
    assert_eq!(
        d.excluded["short"],
        Exclusion::ContextWindow {
            needed: 1300,
            window: 1299
        }
    );
    assert_eq!(
        d.excluded["short"].to_string(),
        "needs 1300 tokens (prompt + output) but its context window is 1299"
    );
}

#[test]
fn context_window_reserves_max_tokens_and_cost_bills_the_smaller() {
    let p = policy(
        vec![
            ModelSpec::new("big", 2.0, 4.0, 2000).expected_output_tokens(300),
            ModelSpec::new("small", 0.1, 0.1, 1200).expected_output_tokens(300),
        ],
        &["big", "small"],
        PolicyDefaults::new(Mode::Quality),
    );
    // max_tokens 100 < expected 300: reserve 100 (1100 fits small), bill 100.
    let d = p
        .decide(&[0.9, 0.5], &RouteRequest::new(1000).max_tokens(100))
        .unwrap();
    assert_eq!(d.model, "big");
    assert!(d.eligible.contains_key("small"));
    assert_eq!(d.eligible["big"].output_tokens, 100);
    // 1000 × 2 / 1M + 100 × 4 / 1M
    assert!(close(d.estimated_cost, 0.0024));
    // max_tokens 500 > expected 300: reserve 500 (1500 overflows small), bill 300.
    let d = p
        .decide(&[0.9, 0.5], &RouteRequest::new(1000).max_tokens(500))
        .unwrap();
    assert_eq!(
        d.excluded["small"],
        Exclusion::ContextWindow {
            needed: 1500,
            window: 1200
        }
    );
    assert_eq!(d.eligible["big"].output_tokens, 300);
    assert!(close(d.estimated_cost, 0.0032));
    // A huge max_tokens excludes even big.
    let err = p
        .decide(&[0.9, 0.5], &RouteRequest::new(1000).max_tokens(u32::MAX))
        .unwrap_err();
    assert!(matches!(err, PolicyError::NoEligibleModel { .. }));
}

#[test]
fn each_capability_filters() {
    for cap in Capability::ALL {
        let p = policy(
            vec![
                ModelSpec::new("has", 5.0, 5.0, 10_000)
                    .capabilities(Capabilities::default().with(cap)),
                ModelSpec::new("lacks", 0.1, 0.1, 10_000),
            ],
            &["has", "lacks"],
            PolicyDefaults::new(Mode::Cost),
        );
        let plain = p.decide(&[0.9, 0.9], &RouteRequest::new(10)).unwrap();
        assert_eq!(plain.model, "lacks", "{cap}");
        let d = p
            .decide(&[0.9, 0.9], &RouteRequest::new(10).need(cap))
            .unwrap();
        assert_eq!(d.model, "has", "{cap}");
        assert_eq!(
            d.excluded["lacks"],
            Exclusion::MissingCapabilities { missing: vec![cap] }
        );
        assert_eq!(d.excluded["lacks"].to_string(), format!("lacks {cap}"));
    }
}

#[test]
fn missing_capabilities_are_all_listed() {
    let p = policy(
        vec![
            ModelSpec::new("a", 1.0, 1.0, 10_000).capabilities(Capabilities {
                vision: true,
                ..Capabilities::default()
            }),
            ModelSpec::new("b", 1.0, 1.0, 10_000).capabilities(Capabilities {
                tools: true,
                vision: true,
                json_schema: true,
                reasoning: true,
            }),
        ],
        &["a", "b"],
        PolicyDefaults::default(),
    );
    let needs = Capabilities {
        tools: true,
        vision: true,
        json_schema: false,
        reasoning: true,
    };
    let d = p
        .decide(&[0.9, 0.1], &RouteRequest::new(10).needs(needs))
        .unwrap();
    assert_eq!(d.model, "b");
    assert_eq!(
        d.excluded["a"],
        Exclusion::MissingCapabilities {
            missing: vec![Capability::Tools, Capability::Reasoning]
        }
    );
    assert_eq!(d.excluded["a"].to_string(), "lacks tools, reasoning");
}

#[test]
fn nan_and_infinite_predictions_are_ineligible() {
    let p = three();
    let d = p
        .decide(&[f32::NAN, 0.89, f32::INFINITY], &RouteRequest::new(1000))
        .unwrap();
    assert_eq!(d.model, "medium");
    assert_eq!(d.q_star, 0.89);
    assert_eq!(d.excluded["large"], Exclusion::InvalidPrediction);
    assert_eq!(d.excluded["small"], Exclusion::InvalidPrediction);
    assert_eq!(d.predictions["large"], None);
    assert_eq!(d.predictions["medium"], Some(0.89));
    // The explanation still serialises, and round-trips.
    let json = serde_json::to_string(&d).unwrap();
    assert!(json.contains(r#""large":null"#), "{json}");
    let back: Decision = serde_json::from_str(&json).unwrap();
    assert_eq!(back, d);

    let err = p
        .decide(
            &[f32::NAN, f32::NAN, f32::NEG_INFINITY],
            &RouteRequest::new(1000),
        )
        .unwrap_err();
    match err {
        PolicyError::NoEligibleModel { excluded } => {
            assert!(excluded
                .values()
                .all(|e| *e == Exclusion::InvalidPrediction))
        }
        other => panic!("{other}"),
    }
}

#[test]
fn negative_predictions_still_choose_the_best() {
    let p = three();
    let d = p
        .decide(
            &[-0.1, -0.5, -0.102],
            &RouteRequest::new(1000).mode(Mode::Balanced),
        )
        .unwrap();
    // −0.1 × 1.02 = −0.102: small is in band, and cheapest.
    assert_eq!(d.model, "small");
    let d = p
        .decide(&[-0.1, -0.5, -0.2], &RouteRequest::new(1000))
        .unwrap();
    assert_eq!(d.model, "large");
}

#[test]
fn wrong_prediction_length_is_an_error() {
    let err = three()
        .decide(&[0.5, 0.5], &RouteRequest::new(10))
        .unwrap_err();
    assert_eq!(
        err,
        PolicyError::PredictionLength {
            expected: 3,
            got: 2
        }
    );
    assert_eq!(
        err.to_string(),
        "got 2 predictions but the router bundle has 3 columns"
    );
}

#[test]
fn a_column_without_catalog_entry_is_never_eligible() {
    let p = policy(
        vec![ModelSpec::new("priced", 1.0, 1.0, 10_000)],
        &["unpriced", "priced"],
        PolicyDefaults::default(),
    );
    let d = p.decide(&[1.0, 0.1], &RouteRequest::new(10)).unwrap();
    assert_eq!(d.model, "priced");
    assert_eq!(d.q_star, 0.1);
    assert_eq!(d.excluded["unpriced"], Exclusion::NoCatalogEntry);
    assert_eq!(d.predictions["unpriced"], Some(1.0));
    assert!(d.to_string().contains("no catalog entry"));
}

#[test]
fn exclude_list_marks_saturated() {
    let d = three()
        .decide(&THREE_Q, &RouteRequest::new(1000).exclude(["medium"]))
        .unwrap();
    assert_eq!(d.model, "large");
    assert_eq!(d.excluded["medium"], Exclusion::Saturated);
}

#[test]
fn empty_eligible_set_carries_every_reason() {
    let p = policy(
        vec![
            ModelSpec::new("a", 1.0, 1.0, 100),
            ModelSpec::new("b", 1.0, 1.0, 100_000),
            ModelSpec::new("c", 1.0, 1.0, 100_000),
        ],
        &["a", "b", "c", "d"],
        PolicyDefaults::default().subset(["a", "b", "d"]),
    );
    let err = p
        .decide(
            &[0.9, 0.9, 0.9, 0.9],
            &RouteRequest::new(1000).need(Capability::Vision),
        )
        .unwrap_err();
    let expected: BTreeMap<String, Exclusion> = [
        (
            "a",
            Exclusion::ContextWindow {
                needed: 1512,
                window: 100,
            },
        ),
        (
            "b",
            Exclusion::MissingCapabilities {
                missing: vec![Capability::Vision],
            },
        ),
        ("c", Exclusion::NotInSubset),
        ("d", Exclusion::NoCatalogEntry),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(err, PolicyError::NoEligibleModel { excluded: expected });
    assert_eq!(
        err.to_string(),
        "no eligible model for this request: \
         `a`: needs 1512 tokens (prompt + output) but its context window is 100; \
         `b`: lacks vision; \
         `c`: not in the deployment's model subset; \
         `d`: no catalog entry (no price or context window known)"
    );
}

#[test]
fn invalid_requests_are_errors() {
    let p = three();
    let e = p
        .decide(&THREE_Q, &RouteRequest::new(1).subset(["huge"]))
        .unwrap_err();
    assert!(
        e.to_string().contains("the request subset names `huge`"),
        "{e}"
    );
    assert!(e.to_string().contains("large, medium, small"), "{e}");
    let e = p
        .decide(&THREE_Q, &RouteRequest::new(1).subset(Vec::<String>::new()))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "the request subset is empty: it would exclude every model"
    );
    let e = p
        .decide(&THREE_Q, &RouteRequest::new(1).exclude(["x"]))
        .unwrap_err();
    assert!(e.to_string().contains("exclude list names `x`"), "{e}");
    for band in [-0.1, 1.5, f64::NAN] {
        let e = p
            .decide(&THREE_Q, &RouteRequest::new(1).band(band))
            .unwrap_err();
        assert!(matches!(e, PolicyError::InvalidBand { .. }), "{e}");
        assert!(
            e.to_string()
                .starts_with("band must be a fraction in [0, 1]"),
            "{e}"
        );
    }
}

#[test]
fn display_is_a_table_with_the_choice_marked() {
    let mut policy_models = three().catalog().models.clone();
    policy_models.pop();
    let p = policy(
        policy_models,
        &["large", "medium", "small"],
        PolicyDefaults::default(),
    );
    let text = p
        .decide(&THREE_Q, &RouteRequest::new(1000))
        .unwrap()
        .to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("route: medium (mode balanced, band 0.02;"),
        "{text}"
    );
    assert!(
        lines[1].contains("model") && lines[1].contains("est. cost"),
        "{text}"
    );
    assert!(lines[2].starts_with("  large"), "{text}");
    assert!(lines[2].contains("eligible, within band"), "{text}");
    assert!(lines[3].starts_with("* medium"), "{text}");
    assert!(
        lines[3].contains("$0.000950") && lines[3].ends_with("chosen"),
        "{text}"
    );
    assert!(lines[4].starts_with("  small") && lines[4].contains("excluded: no catalog entry"));
    assert_eq!(lines.len(), 5);
}

#[test]
fn mode_parses_and_serialises_lowercase() {
    assert_eq!("Quality".parse::<Mode>().unwrap(), Mode::Quality);
    assert_eq!(" balanced ".parse::<Mode>().unwrap(), Mode::Balanced);
    let e = "fast".parse::<Mode>().unwrap_err();
    assert_eq!(
        e.to_string(),
        "unknown routing mode `fast`: expected `quality`, `balanced` or `cost`"
    );
    assert_eq!(serde_json::to_string(&Mode::Cost).unwrap(), r#""cost""#);
    assert_eq!(Mode::default(), Mode::Balanced);
    assert_eq!(Mode::ALL.map(Mode::band), [0.0, 0.02, 0.06]);
}

#[test]
fn exclusion_json_is_tagged() {
    let e = Exclusion::MissingCapabilities {
        missing: vec![Capability::JsonSchema],
    };
    assert_eq!(
        serde_json::to_string(&e).unwrap(),
        r#"{"reason":"missing_capabilities","missing":["json_schema"]}"#
    );
    assert_eq!(
        serde_json::to_string(&Exclusion::NotInSubset).unwrap(),
        r#"{"reason":"not_in_subset"}"#
    );
}

#[test]
fn request_and_defaults_deserialise_with_defaults() {
    let r: RouteRequest =
        serde_json::from_str(r#"{"prompt_tokens": 10, "mode": "cost", "needs": {"tools": true}}"#)
            .unwrap();
    assert_eq!(
        r,
        RouteRequest::new(10)
            .mode(Mode::Cost)
            .need(Capability::Tools)
    );
    let d: PolicyDefaults = toml::from_str("mode = \"quality\"\nsubset = [\"a\"]").unwrap();
    assert_eq!(d, PolicyDefaults::new(Mode::Quality).subset(["a"]));
    assert!(toml::from_str::<PolicyDefaults>("mood = \"cost\"").is_err());
}

#[test]
fn token_estimate_errs_high() {
    assert_eq!(estimate_tokens(""), 0);
    assert_eq!(estimate_tokens("a"), 2); // one word: 4/3 rounded up
                                         // 12 ASCII chars / 3 = 4; 1 word → 2.
    assert_eq!(estimate_tokens("abcdefghijkl"), 4);
    // Short words: 5 words × 4/3 = 6.67 → 7, more than 9 chars / 3 = 3.
    assert_eq!(estimate_tokens("a b c d e"), 7);
    // Accented letters are 2 bytes: "café" = 3 ASCII + 2 bytes → (6 + 6) / 6 = 2.
    assert_eq!(estimate_tokens("café"), 2);
    // A realistic sentence: cl100k gives 10 tokens; the estimate must not be lower.
    assert!(estimate_tokens("The quick brown fox jumps over the lazy dog.") >= 10);
    assert_eq!(
        estimated_cost(&ModelSpec::new("x", 0.0, 0.0, 1), 1_000_000, 1_000_000),
        0.0
    );
}

/// The table shown in the README's worked example.
#[test]
fn display_matches_the_readme_example() {
    let d = three().decide(&THREE_Q, &RouteRequest::new(1000)).unwrap();
    let expected = "\
route: medium (mode balanced, band 0.02; q* 0.9000, threshold 0.8820; 1000 input tokens; output tokens from the catalog; est. $0.000950)
  model   quality  out tok.  est. cost  status
  large    0.9000       300  $0.019000  eligible, within band
* medium   0.8900       300  $0.000950  chosen
  small    0.8500       300  $0.000330  eligible, below threshold
";
    assert_eq!(d.to_string(), expected);
    // The README's max_tokens = 4000 case.
    let d = three()
        .decide(
            &THREE_Q,
            &RouteRequest::new(1000).mode(Mode::Cost).max_tokens(4000),
        )
        .unwrap();
    assert_eq!(d.model, "medium");
    assert_eq!(
        d.excluded["small"],
        Exclusion::ContextWindow {
            needed: 5000,
            window: 4096
        }
    );
    assert_eq!(d.eligible["medium"].output_tokens, 300);
}
