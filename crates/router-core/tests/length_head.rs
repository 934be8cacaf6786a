//! The output-length head: a bundle with `length.safetensors` predicts each model's output
//! tokens as `exp(w · embedding + b)`, one without it predicts none, and a manifest that promises
//! the head without the file fails naming the file.

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;

use router_core::candle_core::{Device, Tensor};
use router_core::config::files;
use router_core::Router;
use support::{edit_manifest, static_bundle, TinyBert, MODELS};

const SEED: u64 = 5;

/// Writes a linear length head: `weights[m]` over the embedding and `biases[m]`, per model.
fn write_length_head(dir: &std::path::Path, weights: &[Vec<f32>], biases: &[f32]) {
    let dim = weights[0].len();
    let flat: Vec<f32> = weights.iter().flatten().copied().collect();
    let tensors = HashMap::from([
        (
            "layers.0.weight".to_string(),
            Tensor::from_vec(flat, (weights.len(), dim), &Device::Cpu).unwrap(),
        ),
        (
            "layers.0.bias".to_string(),
            Tensor::from_vec(biases.to_vec(), biases.len(), &Device::Cpu).unwrap(),
        ),
    ]);
    router_core::candle_core::safetensors::save(&tensors, dir.join(files::LENGTH_HEAD)).unwrap();
    edit_manifest(dir, |json| {
        json["output_length"] = serde_json::json!({ "hidden": [] })
    });
}

#[test]
fn a_bundle_without_a_length_head_predicts_no_lengths() {
    let bert = TinyBert::new(SEED);
    let bundle = static_bundle(&bert);
    let router = Router::load_on(bundle.path(), &Device::Cpu).unwrap();
    assert!(router.length_head().is_none() && router.config().output_length.is_none());
    let prediction = router.predict("write a python function").unwrap();
    assert_eq!(
        prediction.scores,
        router.score("write a python function").unwrap()
    );
    assert_eq!(prediction.output_tokens, None);
}

#[test]
fn a_length_head_round_trips_through_the_bundle() {
    let bert = TinyBert::new(SEED);
    let bundle = static_bundle(&bert);
    let dim = Router::load_on(bundle.path(), &Device::Cpu)
        .unwrap()
        .encoder()
        .dim();
    let weights: Vec<Vec<f32>> = (0..MODELS.len())
        .map(|m| (0..dim).map(|i| (i + m) as f32 * 0.25 - 0.5).collect())
        .collect();
    let biases = [100f32.ln(), 300f32.ln()];
    write_length_head(bundle.path(), &weights, &biases);

    let router = Router::load_on(bundle.path(), &Device::Cpu).unwrap();
    assert!(router.length_head().is_some());
    let prompt = "what is the sum of a list";
    let embedding = router.embed(prompt).unwrap();
    let expected: Vec<f32> = weights
        .iter()
        .zip(biases)
        .map(|(w, b)| (w.iter().zip(&embedding).map(|(w, x)| w * x).sum::<f32>() + b).exp())
        .collect();
    let lengths = router
        .predict(prompt)
        .unwrap()
        .output_tokens
        .expect("a length head predicts lengths");
    assert_eq!(lengths.len(), MODELS.len());
    for (got, want) in lengths.iter().zip(&expected) {
        assert!((got - want).abs() <= want * 1e-5, "{got} vs {want}");
    }
    // The same prompt in a batch gets the same lengths.
    let batch = router.predict_batch(&["hello world", prompt]).unwrap();
    assert_eq!(batch[1].output_tokens.as_deref(), Some(lengths.as_slice()));
    // All-zero weights predict the biases: 100 and 300 tokens for any prompt.
    write_length_head(bundle.path(), &vec![vec![0.0; dim]; MODELS.len()], &biases);
    let router = Router::load_on(bundle.path(), &Device::Cpu).unwrap();
    let lengths = router.predict("hello").unwrap().output_tokens.unwrap();
    assert!(
        (lengths[0] - 100.0).abs() < 1e-3 && (lengths[1] - 300.0).abs() < 1e-3,
        "{lengths:?}"
    );
}

#[test]
fn a_promised_length_head_that_is_missing_names_the_file() {
    let bert = TinyBert::new(SEED);
    let bundle = static_bundle(&bert);
    edit_manifest(bundle.path(), |json| {
        json["output_length"] = serde_json::json!({ "hidden": [] })
    });
    let error = Router::load_on(bundle.path(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(error.contains(files::LENGTH_HEAD), "{error}");
}
