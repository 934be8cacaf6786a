//! # router-embed
//!
//! Route a prompt or a chat to the cheapest good-enough model with one call, from any Rust
//! service. [`Routing`] holds a router bundle (router-core), its catalog and a deployment's
//! policy defaults (router-policy); [`Routing::route`] takes a [`RouteInput`] (a prompt or chat
//! messages plus the request's optional mode, band, subset, `max_tokens` and needed
//! capabilities) and returns the explained [`Decision`].
//!
//! This crate depends on router-core and router-policy only: no server, store, training code,
//! async runtime or HTTP stack. It is what the `model-router` command line and the Python
//! package route with.
//!
//! ```
//! use router_embed::{ChatMessage, RouteInput, Routing};
//! use router_policy::Mode;
//!
//! let routing = Routing::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/routerbench"))?;
//! let decision = routing.route(&RouteInput::prompt("Prove that sqrt(2) is irrational.").mode(Mode::Quality))?;
//! println!("{} (est. ${:.6})", decision.model, decision.estimated_cost);
//!
//! let chat = RouteInput::chat([
//!     ChatMessage::new("system", "You answer in one word."),
//!     ChatMessage::new("user", "What is the capital of Australia?"),
//! ]);
//! assert!(routing.route(&chat)?.eligible.contains_key(&routing.route(&chat)?.model));
//! # Ok::<(), router_embed::RoutingError>(())
//! ```
#![deny(missing_docs)]

mod error;
mod input;
mod load;
mod routing;

pub use error::RoutingError;
pub use input::{routing_text, ChatMessage, Prompt, RouteInput, DEFAULT_RECENT_TURNS};
pub use load::{load_catalog, load_router, CatalogError, CATALOG_FILE};
pub use routing::{decide_on_prediction, Routing};

pub use router_core::{Prediction, Router};
pub use router_policy::{Capabilities, Capability, Catalog, Decision, Mode, PolicyDefaults};
