//! The BERT tier against the independently computed all-MiniLM-L6-v2 reference embeddings in
//! `../shared/fixtures/minilm-reference.json`. Needs that file and PyPI (first run only).

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod support;

use std::path::PathBuf;

use router_core::candle_core::Device;
use router_core::config::files;
use router_core::{BertEncoder, EncoderConfig, Pooling, Router, Truncation};

fn fixture() -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/minilm-reference.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("this test needs {}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture JSON")
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn encoder() -> BertEncoder {
    let snapshot = common::minilm_snapshot();
    BertEncoder::load(
        &snapshot,
        &snapshot.join("tokenizer.json"),
        256,
        Truncation::Right,
        Pooling::Mean,
        &Device::Cpu,
    )
    .expect("load MiniLM")
}

#[test]
fn matches_reference_embeddings_alone_and_in_a_batch() {
    let fixture = fixture();
    let cases = fixture["cases"].as_array().expect("cases");
    let encoder = encoder();
    let texts: Vec<&str> = cases
        .iter()
        .map(|c| c["text"].as_str().expect("text"))
        .collect();
    let batch = encoder.embed_batch(&texts).expect("batch");
    for (case, batched) in cases.iter().zip(&batch) {
        let text = case["text"].as_str().expect("text");
        let expected: Vec<f32> = case["embedding"]
            .as_array()
            .expect("embedding")
            .iter()
            .map(|v| v.as_f64().expect("number") as f32)
            .collect();
        let n_tokens: usize = case["n_tokens"]
            .as_str()
            .map(|s| s.parse().expect("n_tokens"))
            .or(case["n_tokens"].as_u64().map(|n| n as usize))
            .expect("n_tokens");
        assert_eq!(
            encoder.tokenizer().encode(text).expect("encode").len(),
            n_tokens,
            "token count of {text:?}"
        );
        let alone = encoder.embed_batch(&[text]).expect("alone").remove(0);
        let similarity = cosine(&alone, &expected);
        assert!(similarity >= 0.9999, "cosine {similarity} for {text:?}");
        let drift = alone
            .iter()
            .zip(batched)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            drift < 1e-5,
            "alone vs batch differ by {drift} for {text:?}"
        );
    }
}

#[test]
fn loads_offline_from_the_filled_hub_cache() {
    common::minilm_snapshot();
    // Resolving through refs/main and through the pinned commit both work with no network.
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let by_branch =
        router_core::bert_dir_from_hub(common::MINILM_REPO, "main").expect("cached by branch");
    let by_commit = router_core::bert_dir_from_hub(
        common::MINILM_REPO,
        "c9745ed1d9f207416be6d2e6f8de32d1f16199bf",
    )
    .expect("cached by commit");
    assert_eq!(by_branch, by_commit);
    let missing = router_core::hub::hub_file(common::MINILM_REPO, "main", "no-such-file.bin")
        .expect_err("not cached");
    assert!(missing.to_string().contains("HF_HUB_OFFLINE"), "{missing}");
}

#[test]
fn bert_bundle_loads_minilm_from_the_hub_cache() {
    let snapshot = common::minilm_snapshot();
    std::env::set_var("HF_HUB_OFFLINE", "1");
    // The bundle holds no encoder weights: it names the repo, which resolves through the cache.
    let bundle = tempfile::TempDir::new().expect("tempdir");
    let encoder = EncoderConfig::Bert {
        repo: Some(common::MINILM_REPO.into()),
        revision: Some("main".into()),
        path: None,
        dim: 384,
    };
    let mut config = support::manifest(encoder, &support::MODELS);
    config.max_seq_length = 256;
    support::write_bundle(bundle.path(), &config, &snapshot.join(files::TOKENIZER));
    let router =
        Router::load_on(bundle.path(), &Device::Cpu).expect("load the MiniLM bundle offline");
    let scores = router
        .score("Write a Python function that reverses a linked list.")
        .expect("score");
    assert_eq!(scores.len(), support::MODELS.len());
    assert!(scores.iter().all(|q| (0.0..=1.0).contains(q)), "{scores:?}");
}
