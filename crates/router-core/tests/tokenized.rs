//! The tokenise / predict split a server uses (`Router::tokenize`, then
//! `Router::predict_tokenized` on a batch): alone, a prompt gets exactly the prediction that
//! `Router::predict` gives it; in a batch, exactly the same on the static tier and within 1e-5
//! on the BERT tier (a padded batch takes the masked attention path, whose sums can differ from
//! the unpadded prompt's in the last bit), whatever else shares the batch, with an
//! output-length head too.

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;

use router_core::candle_core::Device;
use router_core::Prediction;
use router_core::{Router, TokenizedPrompt};
use support::{bert_bundle, edit_manifest, max_abs_diff, static_bundle, TinyBert};

const SEED: u64 = 17;

/// Prompts of different lengths, so that a BERT batch pads all but the longest; one is empty and
/// one is truncated at the bundle's length.
const PROMPTS: [&str; 5] = [
    "hello",
    "What is the sum of a list? How is it written in Python, and how is it proved?",
    "",
    "Write a Python function that reverses a list.",
    "the the the the the the the the the the the the the the the the the the the the the the the the the the \
     the the the the the the the the the the the the",
];

fn load(dir: &Path) -> Router {
    Router::load_on(dir, &Device::Cpu).expect("load the bundle")
}

fn tokenize_all(router: &Router) -> Vec<TokenizedPrompt> {
    PROMPTS
        .iter()
        .map(|p| router.tokenize(p).expect("tokenize"))
        .collect()
}

/// How far a prediction in a batch may be from the prompt's prediction alone.
#[derive(Debug, Clone, Copy)]
enum InBatch {
    BitIdentical,
    Within(f32),
}

fn assert_close(got: &Prediction, alone: &Prediction, in_batch: InBatch, what: &str) {
    match in_batch {
        InBatch::BitIdentical => assert_eq!(got, alone, "{what}"),
        InBatch::Within(tolerance) => {
            let drift = max_abs_diff(&got.scores, &alone.scores);
            assert!(drift <= tolerance, "{what}: {got:?} vs {alone:?}");
            assert_eq!(
                got.output_tokens.is_some(),
                alone.output_tokens.is_some(),
                "{what}"
            );
        }
    }
}

/// Alone: bit-identical to `predict`; in the whole batch and in the batch reversed: as close as
/// `in_batch` says.
fn assert_tokenized_matches_predict(router: &Router, in_batch: InBatch) {
    let tokenized = tokenize_all(router);
    let batch = router
        .predict_tokenized(&tokenized)
        .expect("predict a batch");
    let mut reversed = tokenized.clone();
    reversed.reverse();
    let mut batch_reversed = router
        .predict_tokenized(&reversed)
        .expect("predict a reversed batch");
    batch_reversed.reverse();
    assert_eq!(batch.len(), PROMPTS.len());
    for (i, prompt) in PROMPTS.iter().enumerate() {
        let alone = router.predict(prompt).expect("predict alone");
        let tokenized_alone = router
            .predict_tokenized(std::slice::from_ref(&tokenized[i]))
            .expect("predict one");
        assert_eq!(
            tokenized_alone,
            vec![alone.clone()],
            "{prompt:?}: tokenized alone"
        );
        assert_close(
            &batch[i],
            &alone,
            in_batch,
            &format!("{prompt:?} in a batch"),
        );
        assert_close(
            &batch_reversed[i],
            &alone,
            in_batch,
            &format!("{prompt:?} in a reversed batch"),
        );
        assert_eq!(alone.scores.len(), router.models().len());
    }
    assert!(router
        .predict_tokenized(&[])
        .expect("an empty batch")
        .is_empty());
}

#[test]
fn static_tier_predicts_the_same_from_tokens_alone_and_in_a_batch() {
    let router = load(static_bundle(&TinyBert::new(SEED)).path());
    assert_tokenized_matches_predict(&router, InBatch::BitIdentical);
    // A static encoder reads word pieces only: an empty prompt has no tokens.
    assert!(router.tokenize("").expect("tokenize").is_empty());
}

#[test]
fn bert_tier_predicts_the_same_from_tokens_alone_and_nearly_in_a_padded_batch() {
    let bert = TinyBert::new(SEED);
    let bundle = bert_bundle(&bert);
    let router = load(bundle.path());
    let tokenized = tokenize_all(&router);
    // [CLS] and [SEP] are part of what BERT reads, and the long prompt is cut at the bundle's length.
    assert!(tokenized.iter().all(|t| t.len() >= 2));
    assert!(tokenized[4].len() <= router.config().max_seq_length);
    assert!(
        tokenized.iter().any(|t| t.len() != tokenized[4].len()),
        "the batch must need padding"
    );
    assert_tokenized_matches_predict(&router, InBatch::Within(1e-5));
    edit_manifest(bundle.path(), |json| json["pooling"] = "cls".into());
    assert_tokenized_matches_predict(&load(bundle.path()), InBatch::Within(1e-5));
}

#[test]
fn shipped_bundle_with_a_length_head_predicts_lengths_from_tokens() {
    let router = load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/zeroeval"));
    assert!(
        router.length_head().is_some(),
        "models/zeroeval ships an output-length head"
    );
    assert_tokenized_matches_predict(&router, InBatch::BitIdentical);
    let prediction = router
        .predict_tokenized(&tokenize_all(&router))
        .expect("predict");
    assert!(prediction.iter().all(|p| p
        .output_tokens
        .as_ref()
        .is_some_and(|t| t.len() == router.models().len())));
}

#[test]
fn output_lengths_on_the_cpu_match_the_candle_length_head() {
    let router = load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/zeroeval"));
    let embeddings: Vec<Vec<f32>> = PROMPTS
        .iter()
        .map(|p| router.embed(p).expect("embed"))
        .collect();
    let packed = router
        .output_tokens_embeddings(&embeddings)
        .expect("predict")
        .expect("a length head");
    let length_head = router
        .length_head()
        .expect("models/zeroeval ships an output-length head");
    let candle = length_head
        .predict(&embeddings, &Device::Cpu)
        .expect("candle");
    for (row, expected) in packed.iter().zip(&candle) {
        for (got, want) in row.iter().zip(expected) {
            assert!((got - want).abs() <= 1e-5 * want.abs(), "{got} vs {want}");
        }
    }
}
