//! The scorer on both tiers: the BERT tier batches concurrent prompts on its thread (each gets
//! within 1e-5 of what `Router::predict` gives it alone: a padded batch takes the masked
//! attention path), the static tier scores on the request's task (exactly what `predict` gives);
//! a long prompt, tokenised on the blocking pool, too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../router-core/tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use router_core::candle_core::Device;
use router_core::Router;
use router_server::{Scorer, INLINE_TOKENIZE_BYTES};
use support::{bert_bundle, max_abs_diff, TinyBert};

const LIMIT: Duration = Duration::from_secs(30);

fn prompts() -> Vec<String> {
    let mut prompts: Vec<String> = (0..24)
        .map(|i| {
            format!(
                "what is the sum of {i} and {}? write a python function that is {}",
                i + 3,
                "the ".repeat(i)
            )
        })
        .collect();
    // Past the inline limit: tokenised on the blocking pool.
    prompts.push("hello world, ".repeat(INLINE_TOKENIZE_BYTES / 8));
    assert!(prompts
        .last()
        .is_some_and(|p| p.len() > INLINE_TOKENIZE_BYTES));
    prompts
}

/// Scores all `prompts` at once through `scorer` and compares each with `router.predict` alone:
/// the largest difference of a score must be at most `tolerance`.
async fn assert_concurrent_scores_match(router: &Router, scorer: &Scorer, tolerance: f32) {
    let prompts = prompts();
    let handles: Vec<_> = prompts
        .iter()
        .map(|p| {
            let (scorer, p) = (scorer.clone(), p.clone());
            tokio::spawn(async move { scorer.score(p).await })
        })
        .collect();
    for (handle, prompt) in handles.into_iter().zip(&prompts) {
        let got = tokio::time::timeout(LIMIT, handle)
            .await
            .expect("in time")
            .expect("task")
            .expect("scored");
        let alone = router.predict(prompt).expect("predict alone");
        assert!(
            max_abs_diff(&got.scores, &alone.scores) <= tolerance,
            "{prompt:.40?}: {got:?} vs {alone:?}"
        );
        assert_eq!(got.output_tokens.is_some(), alone.output_tokens.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bert_tier_batches_on_its_thread_with_the_scores_of_each_prompt_alone() {
    let bert = TinyBert::new(23);
    let bundle = bert_bundle(&bert);
    let router = Router::load_on(bundle.path(), &Device::Cpu).expect("load");
    let skipped = Arc::new(AtomicU64::new(0));
    let scorer = Scorer::spawn(router.clone(), 8, 4096, 64, skipped.clone()).expect("spawn");
    assert!(
        scorer.batches(),
        "a BERT encoder is batched on the scorer thread"
    );
    assert_concurrent_scores_match(&router, &scorer, 1e-5).await;
    assert_eq!(
        skipped.load(Ordering::Relaxed),
        0,
        "every caller waited for its answer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_tier_scores_on_the_request_task_with_the_scores_of_each_prompt_alone() {
    let bundle = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/zeroeval");
    let router = Router::load_on(&bundle, &Device::Cpu).expect("load");
    let scorer = Scorer::spawn(router.clone(), 8, 4096, 64, Arc::default()).expect("spawn");
    assert!(
        !scorer.batches(),
        "the static tier on the CPU needs no scorer thread"
    );
    assert_concurrent_scores_match(&router, &scorer, 0.0).await;
}
