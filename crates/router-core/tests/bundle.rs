//! Router bundles on disk: a valid one loads and scores, a broken one fails with an error that
//! names the file and the problem, and a prompt scores the same alone and inside a batch.

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;

use router_core::candle_core::Device;
use router_core::config::files;
use router_core::{HeadConfig, Router};
use support::{
    bert_bundle, edit_manifest, max_abs_diff, static_bundle, write_random_head, TinyBert, MODELS,
};
use tempfile::TempDir;

const SEED: u64 = 11;

fn load(dir: &Path) -> Router {
    Router::load_on(dir, &Device::Cpu).expect("load the bundle")
}

/// The message of the error that loading `dir` must fail with.
fn load_error(dir: &Path) -> String {
    match Router::load_on(dir, &Device::Cpu) {
        Ok(_) => panic!("{} is broken and must not load", dir.display()),
        Err(error) => error.to_string(),
    }
}

fn assert_mentions(message: &str, expected: &[&str]) {
    for part in expected {
        assert!(
            message.contains(part),
            "{message:?} should mention {part:?}"
        );
    }
}

#[test]
fn valid_static_bundle_loads_and_scores() {
    let bert = TinyBert::new(SEED);
    let bundle = static_bundle(&bert);
    for file in [
        files::MANIFEST,
        files::TOKENIZER,
        files::STATIC_ENCODER,
        files::HEAD,
        files::MODEL_CARD,
    ] {
        assert!(bundle.path().join(file).is_file(), "the bundle has {file}");
    }
    let router = load(bundle.path());
    assert_eq!(router.models(), MODELS);
    assert!(!router.config().is_trained());
    for prompt in ["Write a Python function that reverses a list.", "", "zebra"] {
        let scores = router.score(prompt).expect("score");
        assert_eq!(scores.len(), MODELS.len());
        assert!(
            scores.iter().all(|q| (0.0..=1.0).contains(q)),
            "{prompt:?}: {scores:?}"
        );
    }
}

#[test]
fn valid_bert_bundle_loads_and_scores() {
    let bert = TinyBert::new(SEED);
    let router = load(bert_bundle(&bert).path());
    let scores = router.score("What is the sum of a list?").expect("score");
    assert_eq!(scores.len(), MODELS.len());
    assert!(scores.iter().all(|q| (0.0..=1.0).contains(q)), "{scores:?}");
}

#[test]
fn missing_manifest_is_named() {
    let bundle = static_bundle(&TinyBert::new(SEED));
    std::fs::remove_file(bundle.path().join(files::MANIFEST)).expect("remove");
    assert_mentions(&load_error(bundle.path()), &["router.json", "No such file"]);
}

#[test]
fn missing_head_is_named() {
    let bundle = static_bundle(&TinyBert::new(SEED));
    std::fs::remove_file(bundle.path().join(files::HEAD)).expect("remove");
    assert_mentions(
        &load_error(bundle.path()),
        &["head.safetensors", "not found"],
    );
}

#[test]
fn missing_tokenizer_is_named() {
    let bundle = static_bundle(&TinyBert::new(SEED));
    std::fs::remove_file(bundle.path().join(files::TOKENIZER)).expect("remove");
    assert_mentions(
        &load_error(bundle.path()),
        &["tokenizer.json", "No such file"],
    );
}

#[test]
fn missing_static_table_is_named() {
    let bundle = static_bundle(&TinyBert::new(SEED));
    std::fs::remove_file(bundle.path().join(files::STATIC_ENCODER)).expect("remove");
    assert_mentions(
        &load_error(bundle.path()),
        &["encoder.safetensors", "No such file"],
    );
}

#[test]
fn head_for_another_number_of_models_is_a_shape_error() {
    let bundle = static_bundle(&TinyBert::new(SEED));
    // router.json lists 2 models; the head was written for 3.
    let config = router_core::RouterConfig::load(bundle.path()).expect("manifest");
    write_random_head(
        &bundle.path().join(files::HEAD),
        &config.head,
        config.encoder.dim(),
        3,
    );
    assert_mentions(&load_error(bundle.path()), &["head.safetensors", "shape"]);
}

#[test]
fn head_with_other_hidden_layers_is_a_shape_error() {
    let bundle = static_bundle(&TinyBert::new(SEED));
    let config = router_core::RouterConfig::load(bundle.path()).expect("manifest");
    write_random_head(
        &bundle.path().join(files::HEAD),
        &HeadConfig { hidden: vec![5] },
        config.encoder.dim(),
        2,
    );
    assert_mentions(&load_error(bundle.path()), &["head.safetensors", "shape"]);
}

#[test]
fn static_table_of_another_dimension_is_named() {
    let bundle = static_bundle(&TinyBert::new(SEED));
    // The table is 4-wide; router.json claims 6 (the head is rewritten to match, so only the
    // encoder is wrong).
    edit_manifest(bundle.path(), |json| json["encoder"]["dim"] = 6.into());
    write_random_head(
        &bundle.path().join(files::HEAD),
        &HeadConfig { hidden: vec![6] },
        6,
        2,
    );
    assert_mentions(
        &load_error(bundle.path()),
        &["encoder.safetensors", "dimension 4", "router.json says 6"],
    );
}

#[test]
fn bert_of_another_dimension_is_named() {
    let bert = TinyBert::new(SEED);
    let bundle = bert_bundle(&bert);
    edit_manifest(bundle.path(), |json| json["encoder"]["dim"] = 16.into());
    assert_mentions(
        &load_error(bundle.path()),
        &["router.json", "encoder.dim is 16", "hidden_size 8"],
    );
}

#[test]
fn unknown_format_version_is_named() {
    let bundle = static_bundle(&TinyBert::new(SEED));
    edit_manifest(bundle.path(), |json| json["format_version"] = 99.into());
    assert_mentions(
        &load_error(bundle.path()),
        &["router.json", "unsupported format_version 99"],
    );
}

#[test]
fn malformed_manifest_is_named() {
    let bundle = static_bundle(&TinyBert::new(SEED));
    std::fs::write(
        bundle.path().join(files::MANIFEST),
        "{ \"format_version\": 1, ",
    )
    .expect("write");
    assert_mentions(&load_error(bundle.path()), &["router.json", "invalid JSON"]);
}

#[test]
fn unknown_manifest_field_is_named() {
    // A typo must not be silently ignored.
    let bundle = static_bundle(&TinyBert::new(SEED));
    edit_manifest(bundle.path(), |json| json["max_seq_lenght"] = 64.into());
    assert_mentions(
        &load_error(bundle.path()),
        &["router.json", "max_seq_lenght"],
    );
}

#[test]
fn duplicate_model_names_are_named() {
    let bundle = static_bundle(&TinyBert::new(SEED));
    edit_manifest(bundle.path(), |json| {
        json["models"] = serde_json::json!(["small-model", "small-model"])
    });
    assert_mentions(
        &load_error(bundle.path()),
        &["router.json", "duplicate model name \"small-model\""],
    );
}

#[test]
fn bert_path_without_config_is_named() {
    let bert = TinyBert::new(SEED);
    let bundle = bert_bundle(&bert);
    let empty = TempDir::new().expect("tempdir");
    edit_manifest(bundle.path(), |json| {
        json["encoder"]["path"] = empty.path().to_string_lossy().as_ref().into()
    });
    assert_mentions(&load_error(bundle.path()), &["config.json", "No such file"]);
}

#[test]
fn tokenizer_larger_than_the_bert_vocabulary_is_named() {
    // Ids past the embedding matrix would fail on every prompt that uses them; say so at load.
    let bert = TinyBert::new(SEED);
    let bundle = bert_bundle(&bert);
    let config_path = bert.dir().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).expect("read")).expect("parse");
    config["vocab_size"] = 20.into();
    std::fs::write(&config_path, config.to_string()).expect("write");
    // The weights must agree with config.json, so shrink the word embeddings too.
    let weights_path = bert.dir().join("model.safetensors");
    let mut tensors = router_core::candle_core::safetensors::load(&weights_path, &Device::Cpu)
        .expect("load weights");
    let words = tensors["embeddings.word_embeddings.weight"]
        .narrow(0, 0, 20)
        .expect("narrow");
    tensors.insert("embeddings.word_embeddings.weight".into(), words);
    router_core::candle_core::safetensors::save(&tensors, &weights_path).expect("save weights");
    assert_mentions(
        &load_error(bundle.path()),
        &["tokenizer.json", "30 tokens", "vocab_size 20"],
    );
}

#[test]
fn bert_path_is_taken_from_the_bundle_directory() {
    // A relative path resolves against the bundle, not the working directory.
    let bert = TinyBert::new(SEED);
    let bundle = bert_bundle(&bert);
    let local = bundle.path().join("encoder");
    std::fs::create_dir(&local).expect("mkdir");
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(bert.dir().join(file), local.join(file)).expect("copy");
    }
    edit_manifest(bundle.path(), |json| {
        json["encoder"]["path"] = "encoder".into()
    });
    load(bundle.path()).score("hello").expect("score");
}

/// Prompts of different lengths, including an empty one and one longer than the tiny BERT's 32
/// positions (truncated).
const PROMPTS: [&str; 5] = [
    "hello",
    "Write a Python function that reverses a list.",
    "",
    "What is the sum of a list? How is it written in Python, and how is it proved?",
    "the the the the the the the the the the the the the the the the the the the the the the the the the the \
     the the the the the the the the the the",
];

fn assert_batch_matches_single(router: &Router) {
    let batch = router.score_batch(&PROMPTS).expect("score a batch");
    assert_eq!(batch.len(), PROMPTS.len());
    for (prompt, batched) in PROMPTS.iter().zip(&batch) {
        let alone = router.score(prompt).expect("score alone");
        let drift = max_abs_diff(&alone, batched);
        assert!(
            drift < 1e-5,
            "{prompt:?}: alone {alone:?}, in a batch {batched:?}"
        );
    }
    assert!(router.score_batch(&[]).expect("an empty batch").is_empty());
}

#[test]
fn static_router_scores_the_same_alone_and_in_a_batch() {
    assert_batch_matches_single(&load(static_bundle(&TinyBert::new(SEED)).path()));
}

#[test]
fn bert_router_scores_the_same_alone_and_in_a_batch() {
    let bert = TinyBert::new(SEED);
    let router = load(bert_bundle(&bert).path());
    // The embeddings too, where padding would show first.
    let batch = router
        .encoder()
        .embed_batch(&PROMPTS)
        .expect("embed a batch");
    for (prompt, batched) in PROMPTS.iter().zip(&batch) {
        let alone = router.embed(prompt).expect("embed alone");
        assert!(
            max_abs_diff(&alone, batched) < 1e-5,
            "{prompt:?}: alone {alone:?}, in a batch {batched:?}"
        );
    }
    assert_batch_matches_single(&router);

    // Dataset embedding sorts prompts by length into batches; the rows must come back in order.
    let mut done = 0;
    let all = router
        .encoder()
        .embed_all(&PROMPTS, &mut |n| done += n)
        .expect("embed all");
    assert_eq!(done, PROMPTS.len());
    for (prompt, row) in PROMPTS.iter().zip(&all) {
        let alone = router.embed(prompt).expect("embed alone");
        assert!(
            max_abs_diff(&alone, row) < 1e-5,
            "{prompt:?}: alone {alone:?}, from embed_all {row:?}"
        );
    }
}

#[test]
fn bert_router_with_cls_pooling_scores_the_same_alone_and_in_a_batch() {
    // [CLS] sits at position 0 of every row, but padded keys must still get no attention.
    let bert = TinyBert::new(SEED);
    let bundle = bert_bundle(&bert);
    edit_manifest(bundle.path(), |json| json["pooling"] = "cls".into());
    assert_batch_matches_single(&load(bundle.path()));
}
