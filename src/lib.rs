//! # model-router
//!
//! The facade of the model-router workspace: one dependency that brings the router core (prompt →
//! predicted quality per model), the policy (predictions → an explained choice) and the training
//! and evaluation tools, plus [`load_router`], which resolves a `--model` argument the way the
//! command line does.
//!
//! ```
//! use model_router::{load_router, load_catalog, router_policy::{Policy, PolicyDefaults, RouteRequest, Mode, estimate_tokens}};
//!
//! let router = load_router(None)?; // the shipped default bundle
//! let catalog = load_catalog(&router, None)?;
//! let policy = Policy::new(catalog, router.models().to_vec(), PolicyDefaults::new(Mode::Balanced))?;
//! let prompt = "What is the capital of Australia?";
//! let decision = policy.decide(&router.score(prompt)?, &RouteRequest::new(estimate_tokens(prompt)))?;
//! assert!(decision.eligible.contains_key(&decision.model));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

use std::path::{Path, PathBuf};

pub use router_core;
pub use router_policy;
pub use router_training;

use router_core::{CoreError, Router};
use router_policy::{Catalog, PolicyError};

/// The name of the catalog file a bundle ships with.
pub const CATALOG_FILE: &str = "catalog.toml";

/// The shipped default bundle: `$MODEL_ROUTER_MODEL` if set, else `models/routerbench` of this
/// source tree.
pub fn default_model_dir() -> PathBuf {
    std::env::var_os("MODEL_ROUTER_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join("routerbench"))
}

/// Loads a router from `--model`: a bundle directory, or else a hub repo id (`ID` or `ID@REVISION`)
/// loaded through the hub cache; `None` is the default bundle.
pub fn load_router(model: Option<&str>) -> Result<Router, CoreError> {
    match model {
        None => Router::load(default_model_dir()),
        Some(arg) if Path::new(arg).exists() => Router::load(arg),
        Some(arg) => {
            let (repo, revision) = match arg.split_once('@') {
                Some((repo, revision)) => (repo, Some(revision)),
                None => (arg, None),
            };
            Router::from_hub(repo, revision)
        }
    }
}

/// Errors reading a catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid catalog.
    #[error("{path}: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        source: PolicyError,
    },
}

/// Reads `path`, or else the catalog shipped in the router's bundle directory.
pub fn load_catalog(router: &Router, path: Option<&Path>) -> Result<Catalog, CatalogError> {
    let path = path.map(Path::to_path_buf).unwrap_or_else(|| router.dir().join(CATALOG_FILE));
    let text = std::fs::read_to_string(&path).map_err(|source| CatalogError::Io { path: path.clone(), source })?;
    Catalog::from_toml_str(&text).map_err(|source| CatalogError::Invalid { path, source })
}
