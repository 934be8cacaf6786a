//! `router_embed::Routing` and the command line make one decision: the same JSON for the same
//! prompt and options, and the README's Embedding example is `examples/embed.rs`.

mod common;

use common::{ok, repo_root, routerbench_bundle};
use model_router::router_policy::Mode;
use model_router::{RouteInput, Routing};

#[test]
fn routing_gives_the_decision_route_json_prints() {
    let bundle = routerbench_bundle();
    let routing = Routing::load(bundle.to_string_lossy()).expect("the shipped bundle loads");
    let cases = [
        (
            "What is the capital of Australia?",
            RouteInput::prompt("What is the capital of Australia?"),
            vec![],
        ),
        (
            "Prove that there are infinitely many primes.",
            RouteInput::prompt("Prove that there are infinitely many primes.")
                .mode(Mode::Quality)
                .max_tokens(300),
            vec!["--mode", "quality", "--max-tokens", "300"],
        ),
        (
            "Write a haiku about Rust.",
            RouteInput::prompt("Write a haiku about Rust.")
                .band(0.2)
                .subset(["claude-v2", "gpt-3.5-turbo-1106"]),
            vec!["--band", "0.2", "--subset", "claude-v2,gpt-3.5-turbo-1106"],
        ),
    ];
    for (prompt, input, flags) in cases {
        let decision = routing.route(&input).expect("routes");
        let bundle_arg = bundle.to_string_lossy().into_owned();
        let mut args = vec!["route", "--json", "--model", bundle_arg.as_str()];
        args.extend(flags);
        args.push(prompt);
        // The text itself: a Value would print the f32 scores through f64 and hide a difference.
        assert_eq!(
            serde_json::to_string(&decision).expect("serialises"),
            ok(&args).stdout.trim_end(),
            "{prompt}"
        );
    }
}

#[test]
fn the_readme_rust_example_is_examples_embed_rs() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let section = readme
        .split("\n## Embedding\n")
        .nth(1)
        .expect("an Embedding section");
    let block = section
        .split("```rust\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a rust block");
    let example =
        std::fs::read_to_string(repo_root().join("examples/embed.rs")).expect("examples/embed.rs");
    assert!(
        example.contains(block),
        "README.md's Embedding example differs from examples/embed.rs"
    );
}
