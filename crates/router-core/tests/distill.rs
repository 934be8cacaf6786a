//! The tiny random BERT of `support` and the static encoder distilled from it.

mod support;

use router_core::distill::{distill_static, pca};
use router_core::{StaticEncoder, Truncation};
use support::{max_abs_diff, norm, TinyBert, TINY_HIDDEN, TINY_POSITIONS, TINY_VOCAB};
use tempfile::TempDir;

const SEED: u64 = 7;
const STATIC_DIM: usize = 4;

#[test]
fn tiny_tokenizer_splits_words_pieces_and_punctuation() {
    let bert = TinyBert::new(SEED);
    let encoder = bert.encoder();
    let tokenizer = encoder.tokenizer();
    assert_eq!(tokenizer.vocab_size(), TINY_VOCAB.len());
    let id = |token: &str| {
        TINY_VOCAB
            .iter()
            .position(|t| *t == token)
            .expect("token in the vocabulary") as u32
    };
    // Lowercased, split at punctuation, "lists" as "list ##s", an unknown word as [UNK], in [CLS] … [SEP].
    let expected: Vec<u32> = ["[CLS]", "hello", ",", "list", "##s", "[UNK]", "?", "[SEP]"]
        .iter()
        .map(|t| id(t))
        .collect();
    assert_eq!(
        tokenizer.encode("Hello, LISTS zebra?").expect("encode"),
        expected
    );
    assert_eq!(tokenizer.pad_id(), 0);
}

#[test]
fn tiny_bert_gives_unit_embeddings_of_its_hidden_size() {
    let encoder = TinyBert::new(SEED).encoder();
    assert_eq!(encoder.dim(), TINY_HIDDEN);
    assert_eq!(encoder.model().max_positions(), TINY_POSITIONS);
    for row in encoder
        .embed_batch(&["hello world", "", "write a python function"])
        .expect("embed")
    {
        assert_eq!(row.len(), TINY_HIDDEN);
        assert!((norm(&row) - 1.0).abs() < 1e-5, "norm {}", norm(&row));
    }
}

#[test]
fn distils_one_unit_row_per_token_deterministically() {
    let bert = TinyBert::new(SEED).encoder();
    let mut calls = Vec::new();
    let encoder = distill_static(&bert, STATIC_DIM, &mut |done, total| {
        calls.push((done, total))
    })
    .expect("distil");
    assert_eq!(
        calls.last(),
        Some(&(TINY_VOCAB.len(), TINY_VOCAB.len())),
        "progress reaches the vocabulary: {calls:?}"
    );
    assert_eq!(encoder.dim(), STATIC_DIM);
    assert_eq!(encoder.table().len(), TINY_VOCAB.len() * STATIC_DIM);

    for prompt in [
        "hello world",
        "Write a Python function that reverses lists.",
        "zebra",
    ] {
        let embedding = encoder.embed(prompt).expect("embed");
        assert!(
            (norm(&embedding) - 1.0).abs() < 1e-5,
            "{prompt:?} has norm {}",
            norm(&embedding)
        );
    }
    assert_eq!(
        encoder.embed("").expect("embed"),
        vec![0.0; STATIC_DIM],
        "an empty prompt is the zero vector"
    );

    let again = distill_static(&bert, STATIC_DIM, &mut |_, _| {}).expect("distil again");
    assert_eq!(
        encoder.table(),
        again.table(),
        "distillation is deterministic"
    );
}

#[test]
fn distilled_rows_are_frequency_weighted_principal_components() {
    let bert = TinyBert::new(SEED).encoder();
    let table = distill_static(&bert, STATIC_DIM, &mut |_, _| {})
        .expect("distil")
        .table()
        .to_vec();

    // The same vectors distillation starts from: each token alone, as [CLS] t [SEP].
    let tokenizer = bert.tokenizer();
    let (cls, sep) = (
        tokenizer.token_to_id("[CLS]").expect("[CLS]"),
        tokenizer.token_to_id("[SEP]").expect("[SEP]"),
    );
    let singles: Vec<Vec<u32>> = (0..TINY_VOCAB.len() as u32)
        .map(|id| vec![cls, id, sep])
        .collect();
    let vectors: Vec<f32> = bert.embed_ids(&singles).expect("embed tokens").concat();
    let projected = pca(&vectors, TINY_HIDDEN, STATIC_DIM).expect("pca");

    // Principal components: centred, uncorrelated, by non-increasing variance.
    let covariance = column_covariance(&projected, STATIC_DIM);
    for i in 0..STATIC_DIM {
        let mean =
            projected.iter().skip(i).step_by(STATIC_DIM).sum::<f32>() / TINY_VOCAB.len() as f32;
        assert!(mean.abs() < 1e-4, "column {i} has mean {mean}");
        for (j, value) in covariance[i].iter().enumerate() {
            if i != j {
                assert!(value.abs() < 1e-4, "columns {i} and {j} covary: {value}");
            }
        }
        if i > 0 {
            assert!(
                covariance[i][i] <= covariance[i - 1][i - 1] * (1.0 + 1e-4),
                "variances {covariance:?}"
            );
        }
    }
    assert!(
        covariance[STATIC_DIM - 1][STATIC_DIM - 1] > 0.0,
        "the random BERT spreads its tokens"
    );

    // Each distilled row is its projection scaled by a SIF weight in (0, 1] that grows with the id
    // (ids are frequency ranks: rarer tokens weigh more).
    let mut last_weight = 0.0;
    for (id, (row, projection)) in table
        .chunks(STATIC_DIM)
        .zip(projected.chunks(STATIC_DIM))
        .enumerate()
    {
        let weight = dot(row, projection) / dot(projection, projection);
        assert!(weight > 0.0 && weight <= 1.0, "token {id}: weight {weight}");
        assert!(
            weight >= last_weight,
            "token {id}: weight {weight} after {last_weight}"
        );
        let scaled: Vec<f32> = projection.iter().map(|v| v * weight).collect();
        assert!(
            max_abs_diff(row, &scaled) < 1e-5,
            "token {id}: {row:?} is not a multiple of {projection:?}"
        );
        last_weight = weight;
    }
}

#[test]
fn saved_table_loads_back_at_half_precision() {
    let bert = TinyBert::new(SEED);
    let encoder = bert.distilled();
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("encoder.safetensors");
    encoder.save_table(&path).expect("save");
    let load = |path: &std::path::Path| {
        StaticEncoder::load(
            path,
            &bert.tokenizer_path(),
            TINY_POSITIONS,
            Truncation::Right,
            STATIC_DIM,
        )
        .expect("load")
    };
    let loaded = load(&path);
    // Tables are stored as f16: every value comes back within f16's relative rounding (2^-11)...
    for (stored, original) in loaded.table().iter().zip(encoder.table()) {
        assert!(
            (stored - original).abs() <= original.abs() * 2f32.powi(-11) + 1e-7,
            "{stored} vs {original}"
        );
    }
    let prompt = "How is the sum of a list written in Python?";
    assert!(
        max_abs_diff(
            &loaded.embed(prompt).expect("embed"),
            &encoder.embed(prompt).expect("embed")
        ) < 1e-3
    );
    // ...and a table already at f16 precision round-trips exactly.
    let again = dir.path().join("again.safetensors");
    loaded.save_table(&again).expect("save again");
    assert_eq!(load(&again).table(), loaded.table());
}

#[test]
fn pca_rejects_degenerate_input_without_panicking() {
    assert!(pca(&[1.0; 8], 0, 0).is_err(), "width 0");
    assert!(
        pca(&[1.0; 4], 4, 2).is_err(),
        "a single row has no variance"
    );
    assert!(
        pca(&[1.0; 8], 2, 3).is_err(),
        "more components than columns"
    );
    assert!(pca(&[1.0; 7], 2, 1).is_err(), "a ragged last row");
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The sample covariance of the columns of a row-major `n × width` matrix.
fn column_covariance(data: &[f32], width: usize) -> Vec<Vec<f32>> {
    let rows = data.len() / width;
    let column = |c: usize| -> Vec<f32> { data.iter().skip(c).step_by(width).copied().collect() };
    let means: Vec<f32> = (0..width)
        .map(|c| column(c).iter().sum::<f32>() / rows as f32)
        .collect();
    (0..width)
        .map(|i| {
            (0..width)
                .map(|j| {
                    let (ci, cj) = (column(i), column(j));
                    ci.iter()
                        .zip(&cj)
                        .map(|(a, b)| (a - means[i]) * (b - means[j]))
                        .sum::<f32>()
                        / (rows as f32 - 1.0)
                })
                .collect()
        })
        .collect()
}
