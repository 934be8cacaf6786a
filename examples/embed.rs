//! Routes one prompt with the shipped default bundle: `cargo run -p router-embed --example embed -- "PROMPT"`.
//! Also runs, with a fixed prompt, under `cargo test -p router-embed`.

use router_embed::{RouteInput, Routing};

fn main() -> Result<(), router_embed::RoutingError> {
    let bundle = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/routerbench");
    let routing = Routing::load(bundle)?;
    let prompt = std::env::args().nth(1).unwrap_or_else(|| "What is the capital of Australia?".to_string());
    let decision = routing.route(&RouteInput::prompt(prompt).max_tokens(256))?;
    println!("{} (est. ${:.6}, q* {:.3})", decision.model, decision.estimated_cost, decision.q_star);
    Ok(())
}
