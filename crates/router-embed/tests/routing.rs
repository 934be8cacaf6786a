//! `Routing` on the shipped default bundle (models/routerbench): one call per prompt or chat,
//! batches, the chat rule, errors.

// A test's unwrap is its assertion (the workspace lints forbid it in library code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use router_embed::{
    routing_text, ChatMessage, Mode, PolicyDefaults, RouteInput, Routing, RoutingError,
};
use router_policy::{Capability, Catalog, PolicyError};

const BUNDLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/routerbench");

fn routing() -> Routing {
    Routing::load(BUNDLE).expect("the shipped bundle loads")
}

#[test]
fn routing_is_send_and_sync() {
    fn shared<T: Send + Sync>() {}
    shared::<Routing>();
    shared::<RouteInput>();
}

#[test]
fn one_call_routes_with_the_options() {
    let routing = routing();
    let prompt = "Write a Python function that returns the n-th Fibonacci number.";
    let balanced = routing.route(&RouteInput::prompt(prompt)).expect("routes");
    assert_eq!(balanced.mode, Mode::Balanced);
    assert!(balanced.eligible.contains_key(&balanced.model));
    // The scores are the bundle's, in its model order, and the decision's predictions.
    let scores = routing.scores(&RouteInput::prompt(prompt)).expect("scores");
    for (model, q) in routing.models().iter().zip(&scores) {
        assert_eq!(balanced.predictions[model], Some(*q), "{model}");
    }
    let quality = routing
        .route(&RouteInput::prompt(prompt).mode(Mode::Quality))
        .expect("routes");
    let cost = routing
        .route(&RouteInput::prompt(prompt).mode(Mode::Cost))
        .expect("routes");
    assert!(
        cost.estimated_cost <= balanced.estimated_cost
            && balanced.estimated_cost <= quality.estimated_cost
    );
    let only = routing.models()[1].clone();
    let narrowed = routing
        .route(&RouteInput::prompt(prompt).subset([only.as_str()]).band(0.5))
        .expect("routes");
    assert_eq!(
        (narrowed.model.as_str(), narrowed.band, narrowed.custom_band),
        (only.as_str(), 0.5, true)
    );
}

#[test]
fn max_tokens_and_needs_reach_the_policy() {
    let routing = routing();
    let huge = routing.route(&RouteInput::prompt("Hi").max_tokens(u32::MAX));
    match huge {
        Err(RoutingError::Policy(PolicyError::NoEligibleModel { excluded })) => {
            assert_eq!(excluded.len(), routing.models().len())
        }
        other => panic!("expected no eligible model, got {other:?}"),
    }
    // A cap below every model's expected output is what the cost estimate charges.
    let decision = routing
        .route(&RouteInput::prompt("Hi").max_tokens(5))
        .expect("routes");
    assert_eq!(decision.chosen().map(|c| c.output_tokens), Some(5));
    // Whatever the shipped catalog says about tools, the decision honours it.
    match routing.route(&RouteInput::prompt("Call the weather tool.").need(Capability::Tools)) {
        Ok(decision) => assert!(routing
            .policy()
            .catalog()
            .models
            .iter()
            .any(|m| m.name == decision.model && m.capabilities.tools)),
        Err(error) => assert!(error.to_string().contains("lacks tools"), "{error}"),
    }
}

#[test]
fn a_chat_routes_on_the_system_prompt_and_the_recent_turns() {
    let routing = routing().with_recent_turns(1);
    let chat = RouteInput::chat([
        ChatMessage::new("system", "You are a careful mathematician."),
        ChatMessage::new("user", "Tell me a joke."),
        ChatMessage::new("assistant", "Why did the chicken cross the road?"),
        ChatMessage::new("user", "Prove that there are infinitely many primes."),
    ]);
    let expected =
        "You are a careful mathematician.\n\nProve that there are infinitely many primes.";
    assert_eq!(
        routing.scores(&chat).expect("scores"),
        routing
            .scores(&RouteInput::prompt(expected))
            .expect("scores")
    );
    // The token estimate covers every message, not only what the router reads.
    let decision = routing.route(&chat).expect("routes");
    let alone = routing
        .route(&RouteInput::prompt(expected))
        .expect("routes");
    assert!(
        decision.input_tokens > alone.input_tokens,
        "{} vs {}",
        decision.input_tokens,
        alone.input_tokens
    );
}

#[test]
fn the_chat_rule_keeps_system_prompts_tools_and_recent_turns() {
    let chat = [
        ("developer", "Rules."),
        ("user", "a"),
        ("system", ""),
        ("assistant", ""),
        ("user", "b"),
    ];
    assert_eq!(routing_text(chat, None, 6), "Rules.\n\na\n\nb");
    assert_eq!(
        routing_text(chat, Some("Tools:"), 2),
        "Rules.\n\nTools:\n\nb"
    );
    assert_eq!(
        routing_text(chat, None, 0),
        "Rules.\n\nb",
        "at least one turn is read"
    );
}

#[test]
fn a_batch_gives_each_input_its_single_decision() {
    let routing = routing();
    let inputs = vec![
        RouteInput::prompt("What is the capital of Australia?"),
        RouteInput::chat([]),
        RouteInput::prompt("Translate 'good morning' into French.").mode(Mode::Cost),
        RouteInput::prompt("Hi").subset(["no-such-model"]),
        RouteInput::chat([ChatMessage::new("user", "Explain quicksort.")]).max_tokens(300),
    ];
    let batch = routing.route_batch(&inputs).expect("the encoder runs");
    assert_eq!(batch.len(), inputs.len());
    for (input, in_batch) in inputs.iter().zip(&batch) {
        match (routing.route(input), in_batch) {
            (Ok(alone), Ok(batched)) => {
                assert_eq!(alone.model, batched.model);
                for (model, q) in &alone.predictions {
                    let (a, b) = (
                        q.unwrap_or(f32::NAN),
                        batched.predictions[model].unwrap_or(f32::NAN),
                    );
                    assert!((a - b).abs() < 1e-5, "{model}: {a} vs {b}");
                }
            }
            (Err(alone), Err(batched)) => assert_eq!(alone.to_string(), batched.to_string()),
            (alone, batched) => panic!("alone {alone:?}, in a batch {batched:?}"),
        }
    }
    assert!(matches!(batch[1], Err(RoutingError::EmptyChat)));
    assert!(routing.route_batch(&[]).expect("an empty batch").is_empty());
}

#[test]
fn one_routing_serves_many_threads() {
    let routing = Arc::new(routing());
    let alone = routing
        .route(&RouteInput::prompt("Sort a list in Rust."))
        .expect("routes");
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let routing = Arc::clone(&routing);
            std::thread::spawn(move || {
                routing
                    .route(&RouteInput::prompt("Sort a list in Rust."))
                    .map(|d| d.model)
            })
        })
        .collect();
    for thread in threads {
        assert_eq!(
            thread.join().expect("no panic").expect("routes"),
            alone.model
        );
    }
}

#[test]
fn errors_name_what_is_wrong() {
    let missing = Routing::load("/no/such/bundle-dir/../x").expect_err("no such bundle");
    assert!(matches!(missing, RoutingError::Router(_)), "{missing:?}");
    let routing = routing();
    let unknown = routing
        .route(&RouteInput::prompt("Hi").subset(["gpt-9"]))
        .expect_err("unknown model");
    assert!(unknown.to_string().contains("`gpt-9`"), "{unknown}");
    let band = routing
        .route(&RouteInput::prompt("Hi").band(1.5))
        .expect_err("band");
    assert!(
        band.to_string()
            .contains("band must be a fraction in [0, 1], got 1.5"),
        "{band}"
    );
    assert_eq!(
        routing
            .route(&RouteInput::chat([]))
            .expect_err("empty")
            .to_string(),
        "a chat to route needs at least one message"
    );
    // A catalog that names a model the bundle does not predict is refused at construction.
    let router = router_embed::load_router(BUNDLE).expect("loads");
    let catalog = Catalog::from_toml_str("[[models]]\nname = \"gpt-9\"\ninput_price = 1.0\noutput_price = 1.0\ncontext_window = 1000\n").expect("parses");
    let refused = Routing::from_parts(router, catalog, PolicyDefaults::default())
        .expect_err("gpt-9 is no column");
    assert!(refused.to_string().contains("gpt-9"), "{refused}");
}

#[test]
fn decide_again_on_the_same_scores_without_a_saturated_model() {
    let routing = routing();
    let input =
        RouteInput::prompt("Write a Python function that returns the n-th Fibonacci number.");
    let scores = routing.scores(&input).expect("scores");
    let first = routing.decide(&scores, &input).expect("decides");
    assert_eq!(first, routing.route(&input).expect("routes"));
    let again = routing
        .decide(&scores, &input.clone().exclude([first.model.as_str()]))
        .expect("decides");
    assert_ne!(again.model, first.model);
    assert_eq!(
        again.excluded[&first.model],
        router_policy::Exclusion::Saturated
    );
    // Tokens the text does not show (an image, say) count towards the windows and the cost.
    let with_image = routing
        .route(&input.clone().extra_tokens(765))
        .expect("routes");
    assert_eq!(with_image.input_tokens, first.input_tokens + 765);
}

/// models/zeroeval has an output-length head: a route charges each model its predicted output
/// tokens, and deciding again on the same prediction gives the same decision.
#[test]
fn a_bundle_with_a_length_head_charges_predicted_lengths() {
    let zeroeval = Routing::load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/zeroeval"
    ))
    .expect("loads");
    let input = RouteInput::prompt("What is the capital of France?").mode(Mode::Cost);
    let decision = zeroeval.route(&input).expect("routes");
    let prediction = zeroeval.predict(&input).expect("predicts");
    let lengths = prediction
        .output_tokens
        .as_ref()
        .expect("the bundle predicts lengths");
    assert_eq!(
        decision.predicted_output_tokens.len(),
        zeroeval.models().len()
    );
    for (model, length) in zeroeval.models().iter().zip(lengths) {
        assert_eq!(
            decision.predicted_output_tokens[model],
            length.round() as u64,
            "{model}"
        );
    }
    assert_eq!(
        zeroeval
            .decide_prediction(&prediction, &input)
            .expect("decides"),
        decision
    );
    // The routerbench bundle has no length head: the catalog's lengths, none listed as predicted.
    assert!(routing()
        .route(&input)
        .expect("routes")
        .predicted_output_tokens
        .is_empty());
}
