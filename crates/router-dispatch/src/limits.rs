//! Where capacity windows and cooldowns live: in this process ([`LocalLimits`], the default), or
//! in a store that several router replicas share (router-store implements [`SharedLimits`] on
//! PostgreSQL), so that together they respect one deployment's capacity and all skip a cooling
//! deployment.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::capacity::{Limit, Reservation, Window, WindowUsage};
use crate::DispatchError;

/// What [`SharedLimits::admit`] decides for one request on one deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The request may go; its tokens are now counted in the deployment's window.
    Admitted,
    /// The deployment cools down for `left` more (nothing was counted).
    Cooling {
        /// Time left.
        left: Duration,
    },
    /// The deployment's window is full for this request (nothing was counted).
    Full {
        /// When it would fit.
        retry_after: Duration,
    },
}

/// The state deployments' limits share: a sliding one-minute window of charged tokens and
/// requests per deployment, and each deployment's cooldown end.
///
/// Implementations must make [`SharedLimits::admit`] atomic: two callers never both fit in the
/// last room of a window. Calls may block on I/O when [`SharedLimits::blocks`] says so; the
/// dispatcher then makes them on tokio's blocking pool, never on the async runtime.
pub trait SharedLimits: Send + Sync + fmt::Debug {
    /// If `deployment` cools down, says so; else, when `limit` is set, counts `tokens` and one
    /// request in its window if they fit ([`crate::Window::reserve`]'s rule).
    fn admit(
        &self,
        deployment: &str,
        limit: Limit,
        tokens: u64,
    ) -> Result<Admission, DispatchError>;

    /// Cools `deployment` for `wait` from now (replacing a shorter or longer cooldown).
    fn cool(&self, deployment: &str, wait: Duration) -> Result<(), DispatchError>;

    /// Ends `deployment`'s cooldown.
    fn clear_cooldown(&self, deployment: &str) -> Result<(), DispatchError>;

    /// How long `deployment` still cools down, if it does.
    fn cooldown_left(&self, deployment: &str) -> Result<Option<Duration>, DispatchError>;

    /// What `deployment`'s window of `length` holds now.
    fn usage(&self, deployment: &str, length: Duration) -> Result<WindowUsage, DispatchError>;

    /// Whether the calls do I/O (a database) and must leave the async runtime.
    fn blocks(&self) -> bool {
        false
    }
}

/// The in-process [`SharedLimits`]: one process's own windows and cooldowns.
#[derive(Debug, Default)]
pub struct LocalLimits {
    state: Mutex<HashMap<String, LocalState>>,
}

#[derive(Debug, Default)]
struct LocalState {
    window: Window,
    cooling_until: Option<Instant>,
}

impl LocalLimits {
    fn with<T>(&self, deployment: &str, f: impl FnOnce(&mut LocalState) -> T) -> T {
        let mut map = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry(deployment.to_string()).or_default())
    }
}

impl SharedLimits for LocalLimits {
    fn admit(
        &self,
        deployment: &str,
        limit: Limit,
        tokens: u64,
    ) -> Result<Admission, DispatchError> {
        let now = Instant::now();
        Ok(self.with(deployment, |state| {
            if let Some(until) = state.cooling_until.filter(|&u| u > now) {
                return Admission::Cooling { left: until - now };
            }
            if !limit.is_set() {
                return Admission::Admitted;
            }
            match state.window.reserve(now, limit, tokens) {
                Reservation::Admitted => Admission::Admitted,
                Reservation::Full { retry_after } => Admission::Full { retry_after },
            }
        }))
    }

    fn cool(&self, deployment: &str, wait: Duration) -> Result<(), DispatchError> {
        let until = Instant::now() + wait;
        self.with(deployment, |state| state.cooling_until = Some(until));
        Ok(())
    }

    fn clear_cooldown(&self, deployment: &str) -> Result<(), DispatchError> {
        self.with(deployment, |state| state.cooling_until = None);
        Ok(())
    }

    fn cooldown_left(&self, deployment: &str) -> Result<Option<Duration>, DispatchError> {
        let now = Instant::now();
        Ok(self.with(deployment, |state| {
            state
                .cooling_until
                .filter(|&u| u > now)
                .map(|until| until - now)
        }))
    }

    fn usage(&self, deployment: &str, length: Duration) -> Result<WindowUsage, DispatchError> {
        let now = Instant::now();
        Ok(self.with(deployment, |state| state.window.usage(now, length)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capacity::{Capacity, WINDOW};

    #[test]
    fn cooling_comes_before_the_window() {
        let limits = LocalLimits::default();
        let capacity = Capacity {
            tpm: Some(100),
            rpm: None,
        }
        .over(WINDOW);
        assert_eq!(
            limits.admit("a", capacity, 80).unwrap(),
            Admission::Admitted
        );
        assert!(matches!(
            limits.admit("a", capacity, 80).unwrap(),
            Admission::Full { .. }
        ));
        limits.cool("a", Duration::from_secs(30)).unwrap();
        assert!(matches!(
            limits
                .admit("a", Capacity::default().over(WINDOW), 1)
                .unwrap(),
            Admission::Cooling { .. }
        ));
        assert!(limits.cooldown_left("a").unwrap().is_some());
        limits.clear_cooldown("a").unwrap();
        assert_eq!(limits.cooldown_left("a").unwrap(), None);
        assert_eq!(
            limits.usage("a", WINDOW).unwrap(),
            WindowUsage {
                tokens: 80,
                requests: 1
            }
        );
        // A deployment without declared capacity is not counted.
        limits
            .admit("b", Capacity::default().over(WINDOW), 5)
            .unwrap();
        assert_eq!(limits.usage("b", WINDOW).unwrap(), WindowUsage::default());
    }
}
