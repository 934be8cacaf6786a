//! The ASCII WordPiece fast path gives exactly the ids of the `tokenizers` pipeline.
//!
//! Reads the shipped all-MiniLM-L6-v2 `tokenizer.json` (models/routerbench) and, for real text,
//! the questions of `../shared/data/llmrouter/train.json` and `../shared/data/routerdc/*.json`.

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use proptest::prelude::*;
use router_core::{PromptTokenizer, Truncation};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn minilm_tokenizer_json() -> PathBuf {
    repo().join("models/routerbench/tokenizer.json")
}

/// Every combination of special tokens and truncation end, at a length that cuts long texts.
fn variants(path: &Path) -> Vec<PromptTokenizer> {
    let mut all = Vec::new();
    for truncation in [Truncation::Left, Truncation::Right] {
        for special in [false, true] {
            let tokenizer =
                PromptTokenizer::load(path, 64, truncation, special).expect("load tokenizer.json");
            assert!(
                tokenizer.has_fast_path(),
                "{} should take the fast path",
                path.display()
            );
            all.push(tokenizer);
        }
    }
    all
}

/// The MiniLM variants, loaded once for all proptest cases.
fn minilm_variants() -> &'static [PromptTokenizer] {
    static VARIANTS: OnceLock<Vec<PromptTokenizer>> = OnceLock::new();
    VARIANTS.get_or_init(|| variants(&minilm_tokenizer_json()))
}

fn assert_same(tokenizers: &[PromptTokenizer], text: &str) {
    for tokenizer in tokenizers {
        let fast = tokenizer.encode(text).expect("encode");
        let reference = tokenizer
            .encode_with_tokenizers(text)
            .expect("encode with tokenizers");
        assert_eq!(fast, reference, "text {text:?} ({tokenizer:?})");
    }
}

fn questions(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("this test reads {}: {e}", file.display()));
    let rows: Vec<serde_json::Value> = serde_json::from_str(&text).expect("a JSON array");
    rows.iter()
        .filter_map(|row| row.get("question")?.as_str().map(str::to_string))
        .collect()
}

#[test]
fn same_ids_as_tokenizers_on_real_prompts() {
    let tokenizers = minilm_variants();
    let data = repo().join("../shared/data");
    let mut files = vec![data.join("llmrouter/train.json")];
    let mut routerdc: Vec<PathBuf> = std::fs::read_dir(data.join("routerdc"))
        .expect("this test reads ../shared/data/routerdc")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    routerdc.sort();
    files.extend(routerdc);
    let mut checked = 0;
    for file in &files {
        // Every third question keeps the test quick; all of them pass too.
        for question in questions(file).iter().step_by(3) {
            assert_same(tokenizers, question);
            checked += 1;
        }
    }
    assert!(checked > 3000, "only {checked} questions read");
}

#[test]
fn edge_cases_match() {
    let tokenizers = minilm_variants();
    let long_word = "a".repeat(150);
    let cases = [
        "",
        " ",
        "\t\n\r",
        "[CLS] already has a special token [SEP]",
        "[MASK]",
        "brackets [not special] and [PAD",
        "control\u{1}bytes\u{7f}inside\u{0}words",
        "vertical\u{b}tab and form\u{c}feed",
        "UPPER lower MiXeD",
        "don't won't y'all",
        "x=1;y=2;print(x+y)#comment",
        "???!!!...,,,",
        "qzxjv wkpfh unfindablewordpiecesqqq",
        long_word.as_str(),
        "naïve café résumé",
        "日本語のテキスト and English",
        "emoji 🙂 inside",
    ];
    for text in cases {
        assert_same(tokenizers, text);
    }
}

#[test]
fn a_cased_tokenizer_matches_too() {
    let text = std::fs::read_to_string(minilm_tokenizer_json()).expect("read tokenizer.json");
    let mut json: serde_json::Value = serde_json::from_str(&text).expect("tokenizer.json is JSON");
    json["normalizer"]["lowercase"] = serde_json::Value::Bool(false);
    json["normalizer"]["strip_accents"] = serde_json::Value::Bool(false);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, json.to_string()).expect("write tokenizer.json");
    let tokenizers = variants(&path);
    for text in [
        "Hello World, THIS is Cased.",
        "Paris is in France; BERLIN in Germany",
    ] {
        assert_same(&tokenizers, text);
    }
}

#[test]
fn other_pipelines_take_the_tokenizers_path() {
    let text = std::fs::read_to_string(minilm_tokenizer_json()).expect("read tokenizer.json");
    let mut json: serde_json::Value = serde_json::from_str(&text).expect("tokenizer.json is JSON");
    json["pre_tokenizer"] = serde_json::json!({"type": "Whitespace"});
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, json.to_string()).expect("write tokenizer.json");
    let tokenizer = PromptTokenizer::load(&path, 64, Truncation::Right, false).expect("load");
    assert!(!tokenizer.has_fast_path());
    assert_eq!(
        tokenizer.encode("hello, world").expect("encode"),
        tokenizer
            .encode_with_tokenizers("hello, world")
            .expect("encode")
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn same_ids_on_random_ascii(text in "[ -~\t\n\r\u{0}-\u{1f}]{0,200}") {
        for tokenizer in minilm_variants() {
            prop_assert_eq!(tokenizer.encode(&text).expect("encode"), tokenizer.encode_with_tokenizers(&text).expect("encode"));
        }
    }

    #[test]
    fn same_ids_on_random_words(words in prop::collection::vec("[a-zA-Z]{1,14}|[0-9]{1,6}|[.,;:!?'\"()-]", 0..80)) {
        let text = words.join(" ");
        for tokenizer in minilm_variants() {
            prop_assert_eq!(tokenizer.encode(&text).expect("encode"), tokenizer.encode_with_tokenizers(&text).expect("encode"));
        }
    }
}
