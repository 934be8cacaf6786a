//! With a PostgreSQL store, the dispatcher's capacity windows and cooldowns live in that
//! database ([`router_store::SharedWindows`]), so replicas behind one load balancer together
//! respect a deployment's declared capacity and all skip a deployment one of them saw cooling.
//! With SQLite or no store they stay in the process.

use std::sync::Arc;
use std::time::Duration;

use router_dispatch::{Admission, DispatchError, Dispatcher, Limit, SharedLimits, WindowUsage};
use router_store::{LimitVerdict, Location, SharedWindows, StoreError};

/// `dispatcher`, with its limits in the store's database when `store` is PostgreSQL.
/// Blocking (it connects and migrates).
pub(crate) fn attach(
    dispatcher: Dispatcher,
    store: Option<&Location>,
) -> Result<Dispatcher, StoreError> {
    match store {
        Some(Location::Postgres(url)) => {
            let windows = SharedWindows::open(url)?;
            Ok(dispatcher.with_shared_limits(Arc::new(PgLimits(windows))))
        }
        _ => Ok(dispatcher),
    }
}

/// [`SharedWindows`] as the dispatcher's [`SharedLimits`].
#[derive(Debug)]
struct PgLimits(SharedWindows);

fn failed(error: StoreError) -> DispatchError {
    DispatchError::Limits(error.to_string())
}

impl SharedLimits for PgLimits {
    fn admit(
        &self,
        deployment: &str,
        limit: Limit,
        tokens: u64,
    ) -> Result<Admission, DispatchError> {
        let verdict = self
            .0
            .admit(
                deployment,
                limit.tokens,
                limit.requests,
                limit.length,
                tokens,
            )
            .map_err(failed)?;
        Ok(match verdict {
            LimitVerdict::Admitted => Admission::Admitted,
            LimitVerdict::Cooling(left) => Admission::Cooling { left },
            LimitVerdict::Full(retry_after) => Admission::Full { retry_after },
        })
    }

    fn cool(&self, deployment: &str, wait: Duration) -> Result<(), DispatchError> {
        self.0.cool(deployment, wait).map_err(failed)
    }

    fn clear_cooldown(&self, deployment: &str) -> Result<(), DispatchError> {
        self.0.clear_cooldown(deployment).map_err(failed)
    }

    fn cooldown_left(&self, deployment: &str) -> Result<Option<Duration>, DispatchError> {
        self.0.cooldown_left(deployment).map_err(failed)
    }

    fn usage(&self, deployment: &str, length: Duration) -> Result<WindowUsage, DispatchError> {
        let (tokens, requests) = self.0.usage(deployment, length).map_err(failed)?;
        Ok(WindowUsage { tokens, requests })
    }

    /// Each call is a database round trip: the dispatcher makes it on the blocking pool.
    fn blocks(&self) -> bool {
        true
    }
}
