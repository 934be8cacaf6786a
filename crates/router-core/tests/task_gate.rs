//! The task gate: a bundle with `gate.safetensors` blends the head's scores towards the
//! recognised task's means by that task's blend, says so in the prediction, and scores the same
//! alone and in a batch; a bundle without one (every bundle before the gate) is unchanged; a
//! manifest that promises the gate without the file, or a file of the wrong shape, fails naming it.

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use router_core::candle_core::Device;
use router_core::config::files;
use router_core::{Router, TaskGate, TaskGateConfig, TaskGateParts};
use support::{edit_manifest, static_bundle, TinyBert, MODELS};

const SEED: u64 = 7;

fn unit(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter().map(|x| x / norm).collect()
}

/// A gate over `dim`-dimensional embeddings with two tasks whose recogniser weights are `w0`
/// and `w1` (and whose centroids point the same ways): task `a` blends fully towards [0.9, 0.1],
/// task `b` not at all.
fn gate(
    dim: usize,
    w0: Vec<f32>,
    w1: Vec<f32>,
    min_confidence: f32,
    min_similarity: f32,
) -> TaskGate {
    let parts = TaskGateParts {
        config: TaskGateConfig {
            tasks: vec!["a".into(), "b".into()],
            min_confidence,
        },
        bias: vec![0.0, 0.0],
        task_means: vec![vec![0.9, 0.1], vec![0.2, 0.8]],
        blend: vec![1.0, 0.0],
        centroids: vec![unit(&w0), unit(&w1)],
        min_similarity: vec![min_similarity, min_similarity],
        weight: vec![w0, w1],
    };
    TaskGate::new(parts, dim, MODELS.len()).unwrap()
}

fn write_gate(dir: &std::path::Path, gate: &TaskGate) {
    gate.save(&dir.join(files::TASK_GATE)).unwrap();
    let config = serde_json::to_value(gate.config()).unwrap();
    edit_manifest(dir, |json| json["task_gate"] = config);
}

#[test]
fn a_bundle_without_a_gate_scores_with_its_head() {
    let bert = TinyBert::new(SEED);
    let bundle = static_bundle(&bert);
    let router = Router::load_on(bundle.path(), &Device::Cpu).unwrap();
    assert!(router.task_gate().is_none() && router.config().task_gate.is_none());
    let embedding = router.embed("sort a list").unwrap();
    let prediction = router.predict("sort a list").unwrap();
    assert_eq!(prediction.task_gate, None);
    assert_eq!(
        prediction.scores,
        router.head_scores(&[embedding]).unwrap()[0]
    );
    // The shipped bundles predate the gate and still load.
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/routerbench");
    assert!(Router::load_on(shipped, &Device::Cpu)
        .unwrap()
        .task_gate()
        .is_none());
}

#[test]
fn a_gate_blends_recognised_prompts_towards_their_task_means() {
    let bert = TinyBert::new(SEED);
    let bundle = static_bundle(&bert);
    let router = Router::load_on(bundle.path(), &Device::Cpu).unwrap();
    let dim = router.encoder().dim();
    let (math, chat) = ("sort a list of numbers", "hello world");
    let (math_x, chat_x) = (router.embed(math).unwrap(), router.embed(chat).unwrap());
    // Task a's weights point at the first prompt's embedding, task b's at the second's.
    let scale = |v: &[f32]| v.iter().map(|x| 50.0 * x).collect::<Vec<f32>>();
    write_gate(
        bundle.path(),
        &gate(dim, scale(&math_x), scale(&chat_x), 0.5, 0.99),
    );

    let gated = Router::load_on(bundle.path(), &Device::Cpu).unwrap();
    assert_eq!(
        gated.config().task_gate.as_ref().map(|g| g.tasks.len()),
        Some(2)
    );
    let recognised = gated
        .task_gate()
        .unwrap()
        .recognise(&math_x)
        .map(|(t, _)| t);
    assert_eq!(recognised, Some(0), "the first prompt is task a");
    let prediction = gated.predict(math).unwrap();
    let choice = prediction
        .task_gate
        .clone()
        .expect("the gate blended task a");
    assert_eq!((choice.task.as_str(), choice.blend), ("a", 1.0));
    assert!(choice.confidence >= 0.5);
    assert_eq!(prediction.scores, vec![0.9, 0.1]);
    assert_eq!(gated.score(math).unwrap(), vec![0.9, 0.1]);
    // Task b's blend is 0: the head's own scores, and no gate choice.
    let chat_prediction = gated.predict(chat).unwrap();
    assert_eq!(chat_prediction.task_gate, None);
    assert_eq!(chat_prediction.scores, router.score(chat).unwrap());
    // Alone or in a batch, the same.
    let batch = gated.predict_batch(&[chat, math]).unwrap();
    assert_eq!((&batch[0], &batch[1]), (&chat_prediction, &prediction));
    // A prompt unlike both tasks' prompts is recognised as neither, however sure the softmax is.
    let other = "zzz qqq";
    let other_x = router.embed(other).unwrap();
    assert!(
        unit(&math_x)
            .iter()
            .zip(&other_x)
            .map(|(a, b)| a * b)
            .sum::<f32>()
            < 0.99
    );
    assert_eq!(gated.predict(other).unwrap().task_gate, None);
    assert_eq!(gated.score(other).unwrap(), router.score(other).unwrap());
}

#[test]
fn an_unsure_recogniser_leaves_the_head_alone() {
    let bert = TinyBert::new(SEED);
    let bundle = static_bundle(&bert);
    let router = Router::load_on(bundle.path(), &Device::Cpu).unwrap();
    let dim = router.encoder().dim();
    // Equal weights: each task has probability 0.5, below a threshold of 0.6.
    write_gate(
        bundle.path(),
        &gate(dim, vec![1.0; dim], vec![1.0; dim], 0.6, -1.0),
    );
    let gated = Router::load_on(bundle.path(), &Device::Cpu).unwrap();
    let prediction = gated.predict("anything at all").unwrap();
    assert_eq!(prediction.task_gate, None);
    assert_eq!(prediction.scores, router.score("anything at all").unwrap());
}

#[test]
fn a_promised_gate_that_is_missing_or_misshapen_names_the_file() {
    let bert = TinyBert::new(SEED);
    let bundle = static_bundle(&bert);
    let dim = Router::load_on(bundle.path(), &Device::Cpu)
        .unwrap()
        .encoder()
        .dim();
    edit_manifest(bundle.path(), |json| {
        json["task_gate"] = serde_json::json!({ "tasks": ["a", "b"], "min_confidence": 0.5 })
    });
    let error = Router::load_on(bundle.path(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(files::TASK_GATE) && error.contains("not found"),
        "{error}"
    );
    // A gate written for embeddings of another size.
    let other = gate(dim + 1, vec![1.0; dim + 1], vec![1.0; dim + 1], 0.5, 0.0);
    other.save(&bundle.path().join(files::TASK_GATE)).unwrap();
    let error = Router::load_on(bundle.path(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(files::TASK_GATE) && error.contains("recogniser"),
        "{error}"
    );
    // Blends outside [0, 1] are refused when building one.
    let parts = TaskGateParts {
        config: TaskGateConfig {
            tasks: vec!["a".into()],
            min_confidence: 0.5,
        },
        weight: vec![vec![0.0; dim]],
        bias: vec![0.0],
        task_means: vec![vec![0.5, 0.5]],
        blend: vec![1.5],
        centroids: vec![vec![0.0; dim]],
        min_similarity: vec![0.0],
    };
    assert!(TaskGate::new(parts, dim, MODELS.len()).is_err());
}
