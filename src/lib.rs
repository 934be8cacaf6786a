//! # model-router
//!
//! The facade of the model-router workspace: one dependency that brings the router core (prompt →
//! predicted quality per model), the policy (predictions → an explained choice), [`Routing`]
//! (both in one call, from [`router_embed`]) and the training and evaluation tools, plus
//! [`load_router`], which resolves a `--model` argument the way the command line does.
//!
//! A service that only routes depends on `router-embed` instead: it brings no server, store or
//! training code.
//!
//! ```
//! use model_router::{default_model_dir, RouteInput, Routing};
//!
//! let routing = Routing::load(default_model_dir().to_string_lossy())?; // the shipped default bundle
//! let decision = routing.route(&RouteInput::prompt("What is the capital of Australia?"))?;
//! assert!(decision.eligible.contains_key(&decision.model));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

use std::path::{Path, PathBuf};

pub use router_core;
pub use router_embed;
pub use router_embed::{load_catalog, CatalogError, RouteInput, Routing, CATALOG_FILE};
pub use router_policy;
#[cfg(feature = "training")]
pub use router_training;

use router_core::{CoreError, Router};

/// The shipped default bundle: `$MODEL_ROUTER_MODEL` if set, else `models/zeroeval` of this
/// source tree (11 models of 2024 from gpt-4o to Llama-3-8B; README, "Shipped routers", says why
/// it is the default).
pub fn default_model_dir() -> PathBuf {
    std::env::var_os("MODEL_ROUTER_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("models")
                .join("zeroeval")
        })
}

/// Loads a router from `--model`: a bundle directory, or else a hub repo id (`ID` or `ID@REVISION`)
/// loaded through the hub cache ([`router_embed::load_router`]); `None` is the default bundle.
pub fn load_router(model: Option<&str>) -> Result<Router, CoreError> {
    match model {
        None => Router::load(default_model_dir()),
        Some(arg) => router_embed::load_router(arg),
    }
}
