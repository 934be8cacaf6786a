//! Routes a prompt and a chat with the shipped default bundle:
//! `cargo run -p router-embed --example embed -- "PROMPT"`. `cargo test -p router-embed` runs it
//! too, with its default prompt, and README.md's Embedding section shows its body.

use router_embed::{ChatMessage, Mode, RouteInput, Routing};

fn main() -> Result<(), router_embed::RoutingError> {
    // Load once (a bundle directory or a hub repo id `ID[@REVISION]`); share it across threads.
    let routing = Routing::load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/routerbench"
    ))?;

    let prompt = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "What is the capital of Australia?".into());
    let decision = routing.route(&RouteInput::prompt(prompt).mode(Mode::Cost).max_tokens(256))?;
    println!(
        "{} (est. ${:.6}, q* {:.3})",
        decision.model, decision.estimated_cost, decision.q_star
    );

    let chat = RouteInput::chat([
        ChatMessage::new("system", "You are a terse SQL expert."),
        ChatMessage::new(
            "user",
            "Which index speeds up a query that filters on two columns?",
        ),
    ]);
    println!("chat: {}", routing.route(&chat)?.model);
    Ok(())
}
