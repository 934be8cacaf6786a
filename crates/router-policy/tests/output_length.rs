//! Predicted output lengths in the cost estimate: exact cases with hand-computed numbers.

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use router_policy::{Catalog, Mode, ModelSpec, Policy, PolicyDefaults, PolicyError, RouteRequest};

/// Two models with the same catalog length (300 tokens); `verbose` is cheaper per output token
/// ($2 against $4 per 1M) and predicted slightly better (0.90 against 0.88).
fn pair() -> Policy {
    let catalog = Catalog::new(vec![
        ModelSpec::new("verbose", 1.0, 2.0, 128_000).expected_output_tokens(300),
        ModelSpec::new("terse", 1.0, 4.0, 128_000).expected_output_tokens(300),
    ]);
    Policy::new(
        catalog,
        vec!["verbose".into(), "terse".into()],
        PolicyDefaults::new(Mode::Cost),
    )
    .unwrap()
}

const QUALITY: [f32; 2] = [0.90, 0.88];

#[test]
fn a_model_that_writes_three_times_more_loses_in_cost_mode() {
    let request = RouteRequest::new(1000);
    // The catalog's lengths: verbose (1000 + 300 × 2) / 1e6 = $0.0016 < terse (1000 + 300 × 4) / 1e6.
    let by_catalog = pair().decide(&QUALITY, &request).unwrap();
    assert_eq!(by_catalog.model, "verbose");
    assert_eq!(by_catalog.estimated_cost, 0.0016);
    assert!(by_catalog.predicted_output_tokens.is_empty());
    // Predicted: verbose writes 900 tokens, terse 300. Verbose (1000 + 900 × 2) / 1e6 = $0.0028
    // now costs more than terse's $0.0022.
    let predicted = pair()
        .decide_with_output_tokens(&QUALITY, Some(&[900.0, 300.0]), &request)
        .unwrap();
    assert_eq!(predicted.model, "terse");
    assert_eq!(predicted.estimated_cost, 0.0022);
    assert_eq!(predicted.eligible["verbose"].output_tokens, 900);
    assert_eq!(predicted.eligible["verbose"].estimated_cost, 0.0028);
    assert_eq!(predicted.predicted_output_tokens["verbose"], 900);
    assert_eq!(predicted.predicted_output_tokens["terse"], 300);
    // Quality mode does not look at costs between different qualities: verbose either way.
    let quality = request.clone().mode(Mode::Quality);
    assert_eq!(
        pair()
            .decide_with_output_tokens(&QUALITY, Some(&[900.0, 300.0]), &quality)
            .unwrap()
            .model,
        "verbose"
    );
}

#[test]
fn max_tokens_caps_a_predicted_length_and_a_broken_one_falls_back_to_the_catalog() {
    let capped = RouteRequest::new(1000).max_tokens(400);
    let d = pair()
        .decide_with_output_tokens(&QUALITY, Some(&[900.0, 300.0]), &capped)
        .unwrap();
    // verbose: min(900, 400) = 400 tokens, (1000 + 800) / 1e6; terse: 300, (1000 + 1200) / 1e6.
    assert_eq!(d.eligible["verbose"].output_tokens, 400);
    assert_eq!(d.model, "verbose");
    let d = pair()
        .decide_with_output_tokens(&QUALITY, Some(&[f32::NAN, 300.0]), &RouteRequest::new(1000))
        .unwrap();
    assert_eq!(d.eligible["verbose"].output_tokens, 300);
    assert!(!d.predicted_output_tokens.contains_key("verbose"));
}

#[test]
fn lengths_must_have_one_value_per_column() {
    let error = pair()
        .decide_with_output_tokens(&QUALITY, Some(&[900.0]), &RouteRequest::new(10))
        .unwrap_err();
    assert_eq!(
        error,
        PolicyError::OutputTokensLength {
            expected: 2,
            got: 1
        }
    );
}

#[test]
fn the_explanation_shows_the_predicted_lengths() {
    let d = pair()
        .decide_with_output_tokens(&QUALITY, Some(&[900.0, 300.0]), &RouteRequest::new(1000))
        .unwrap();
    let expected = "\
route: terse (mode cost, band 0.06; q* 0.9000, threshold 0.8460; 1000 input tokens; output tokens predicted per model; est. $0.002200)
  model    quality  out tok.  est. cost  status
  verbose   0.9000       900  $0.002800  eligible, within band
* terse     0.8800       300  $0.002200  chosen
";
    assert_eq!(d.to_string(), expected);
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(json["predicted_output_tokens"]["verbose"], 900);
    let back: router_policy::Decision = serde_json::from_value(json).unwrap();
    assert_eq!(back, d);
}
