//! The crate's one error type.

use router_core::CoreError;
use router_policy::PolicyError;

use crate::CatalogError;

/// Everything that can go wrong loading a [`Routing`](crate::Routing) or routing with it. The
/// message is the underlying crate's, which names the file, model or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    /// The bundle could not be loaded, or the router failed on a prompt.
    #[error(transparent)]
    Router(#[from] CoreError),
    /// The catalog could not be read.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The catalog or the defaults do not fit the bundle, or the request cannot be routed (an
    /// unknown model in its subset, a band outside `[0, 1]`, no eligible model, …).
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A chat input without any message.
    #[error("a chat to route needs at least one message")]
    EmptyChat,
}
