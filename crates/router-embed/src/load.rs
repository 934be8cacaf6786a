//! Finding a bundle and its catalog: the rules the command line, the server and [`Routing::load`]
//! share.
//!
//! [`Routing::load`]: crate::Routing::load

use std::path::{Path, PathBuf};

use router_core::{CoreError, Router};
use router_policy::{Catalog, PolicyError};

/// The name of the catalog file a bundle ships with.
pub const CATALOG_FILE: &str = "catalog.toml";

/// Loads a router from a bundle directory or, when no such path exists, a Hugging Face hub repo id
/// (`ID` or `ID@REVISION`) through the hub cache, which works offline once filled.
///
/// ```
/// let bundle = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/routerbench");
/// let router = router_embed::load_router(bundle)?;
/// assert!(!router.models().is_empty());
/// # Ok::<(), router_core::CoreError>(())
/// ```
pub fn load_router(dir_or_hub_id: &str) -> Result<Router, CoreError> {
    if Path::new(dir_or_hub_id).exists() {
        return Router::load(dir_or_hub_id);
    }
    let (repo, revision) = match dir_or_hub_id.split_once('@') {
        Some((repo, revision)) => (repo, Some(revision)),
        None => (dir_or_hub_id, None),
    };
    Router::from_hub(repo, revision)
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

/// Reads `path`, or else the catalog shipped in the router's bundle directory ([`CATALOG_FILE`]).
///
/// ```
/// let bundle = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/routerbench");
/// let router = router_embed::load_router(bundle)?;
/// let catalog = router_embed::load_catalog(&router, None)?;
/// assert!(!catalog.models.is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn load_catalog(router: &Router, path: Option<&Path>) -> Result<Catalog, CatalogError> {
    let path = path
        .map(Path::to_path_buf)
        .unwrap_or_else(|| router.dir().join(CATALOG_FILE));
    let text = std::fs::read_to_string(&path).map_err(|source| CatalogError::Io {
        path: path.clone(),
        source,
    })?;
    Catalog::from_toml_str(&text).map_err(|source| CatalogError::Invalid { path, source })
}
