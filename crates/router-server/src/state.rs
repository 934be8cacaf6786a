//! The state the handlers share: the config, the router in use (reloadable), the dispatcher,
//! the metrics, the store, the shadows, the usage log and the access log.

use std::sync::{Arc, RwLock};

use router_dispatch::Dispatcher;
use router_store::Store;

use crate::access::AccessLog;
use crate::shadow::Shadows;
use crate::shared_limits;
use crate::usage::UsageLog;
use crate::{Metrics, Routing, ServerConfig, ServerError};

/// Everything the handlers share.
pub struct AppState {
    pub(crate) config: ServerConfig,
    /// The router in use; a request clones the `Arc` and keeps it to its end.
    pub(crate) routing: RwLock<Arc<Routing>>,
    /// One reload at a time.
    pub(crate) reloading: tokio::sync::Mutex<()>,
    pub(crate) dispatcher: Dispatcher,
    pub(crate) metrics: Metrics,
    pub(crate) store: Option<Arc<Store>>,
    pub(crate) shadows: Option<Shadows>,
    /// Usage per deployment and minute, when recorded (`[store]` or `[usage]`).
    pub(crate) usage: Option<Arc<UsageLog>>,
    pub(crate) access_log: AccessLog,
}

/// What a reload swapped: `name@version` of the bundle before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// The bundle that served before.
    pub old: String,
    /// The bundle that serves now.
    pub new: String,
}

impl AppState {
    /// Builds the dispatcher, loads and probes the bundle ([`Routing::load`]), starts its
    /// scorer thread, opens the store. Blocking (it reads the bundle). Shadow workers start
    /// with [`crate::start`].
    pub fn new(config: ServerConfig) -> Result<Self, ServerError> {
        let bad = |key: &str, reason: String| ServerError::Config {
            file: config.file.clone(),
            key: key.into(),
            reason,
        };
        let dispatcher = Dispatcher::new(config.deployments.clone(), config.dispatch.clone())
            .map_err(|e| bad("deployments", e.to_string()))?;
        let dispatcher =
            shared_limits::attach(dispatcher, config.store.as_ref().map(|s| &s.location))
                .map_err(|e| bad("store.url", e.to_string()))?;
        let metrics = Metrics::default();
        let routing = Routing::load(&config, &dispatcher, &metrics)?;
        let store = match &config.store {
            Some(s) => Some(Arc::new(
                Store::open_location(&s.location, s.options).map_err(|e| {
                    let key = match s.location {
                        router_store::Location::Sqlite(_) => "store.path",
                        router_store::Location::Postgres(_) => "store.url",
                    };
                    bad(key, e.to_string())
                })?,
            )),
            None => None,
        };
        let shadows = config.shadow.clone().map(Shadows::new);
        let usage = UsageLog::open(config.usage.as_ref(), store.as_ref())
            .map_err(|e| bad("usage.path", e.to_string()))?;
        let access_log = AccessLog::open(
            config.access_log,
            config.access_log_path.as_deref(),
            config.log_format,
        )
        .map_err(|e| bad("server.access_log_path", e.to_string()))?;
        Ok(AppState {
            access_log,
            config,
            routing: RwLock::new(Arc::new(routing)),
            reloading: tokio::sync::Mutex::new(()),
            dispatcher,
            metrics,
            store,
            shadows,
            usage,
        })
    }

    /// The config.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The router in use now (a request keeps the one it started with).
    pub fn routing(&self) -> Arc<Routing> {
        self.routing
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Loads the configured bundle again and, when it loads, matches the catalog and
    /// deployments and passes the probe ([`Routing::load`]), makes it the router in use;
    /// requests in flight finish on the old one. With a config from [`ServerConfig::load`],
    /// the file is read again (with the process environment) for `[router]` and the catalog
    /// (the bundle's `catalog.toml` when it has no `[[models]]`); the server's other sections
    /// stay as they started. A refused bundle leaves the old one serving.
    pub async fn reload(self: &Arc<Self>) -> Result<Reloaded, ServerError> {
        let _one_at_a_time = self.reloading.lock().await;
        let state = self.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let config = match &state.config.source {
                Some(path) => ServerConfig::load(path)?,
                None => state.config.clone(),
            };
            Routing::load(&config, &state.dispatcher, &state.metrics)
        })
        .await
        .map_err(|e| ServerError::Io(std::io::Error::other(e.to_string())))
        .and_then(|loaded| loaded);
        let new = match loaded {
            Ok(routing) => Arc::new(routing),
            Err(e) => {
                self.metrics.reload("refused");
                eprintln!("model-router: reload refused, the old bundle keeps serving: {e}");
                return Err(e);
            }
        };
        let old = std::mem::replace(
            &mut *self.routing.write().unwrap_or_else(|p| p.into_inner()),
            new.clone(),
        );
        self.metrics.reload("ok");
        let reloaded = Reloaded {
            old: old.label(),
            new: new.label(),
        };
        eprintln!(
            "model-router: reloaded {} -> {}",
            reloaded.old, reloaded.new
        );
        Ok(reloaded)
    }

    /// The `[shadow]` queue, when configured.
    pub(crate) fn shadows(&self) -> Option<&Shadows> {
        self.shadows.as_ref()
    }

    /// The dispatcher.
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The completions store (`[store]`), when configured.
    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }
}

/// Who is calling: the owner identity of the API key ([`router_store::owner_of_key`]), or
/// [`router_store::ANONYMOUS_OWNER`] on a server without keys. Set by the auth middleware.
#[derive(Debug, Clone)]
pub(crate) struct Caller(pub(crate) String);
