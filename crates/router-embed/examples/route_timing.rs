//! Times `Routing::route` on one prompt, for comparison with the Python bindings
//! (python/bench_overhead.py runs both): `route_timing BUNDLE CALLS PROMPT` prints one JSON object.

use std::time::Instant;

use router_embed::{RouteInput, Routing, RoutingError};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: route_timing BUNDLE CALLS PROMPT";
    let bundle = args.next().ok_or(usage)?;
    let calls: u32 = args.next().ok_or(usage)?.parse()?;
    let prompt = args.next().ok_or(usage)?;
    let routing = Routing::load(&bundle)?;
    let input = RouteInput::prompt(prompt);
    let route = || routing.route(&input).map(|decision| decision.model);
    route()?; // warm-up
    let start = Instant::now();
    let models = (0..calls)
        .map(|_| route())
        .collect::<Result<Vec<_>, RoutingError>>()?;
    let per_call_us = start.elapsed().as_secs_f64() * 1e6 / f64::from(calls.max(1));
    println!(
        "{{\"calls\": {calls}, \"per_call_us\": {per_call_us:.3}, \"model\": {:?}}}",
        models.last().map(String::as_str).unwrap_or("")
    );
    Ok(())
}
