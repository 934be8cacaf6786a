//! Capacity windows and cooldowns that several router replicas share through one PostgreSQL
//! database, so that together they respect one deployment's declared capacity and all skip a
//! deployment that one of them saw cooling down.
//!
//! The types are this crate's own (it does not depend on the dispatcher); router-server adapts
//! [`SharedWindows`] to `router_dispatch::SharedLimits`. Every call is one statement, so one
//! round trip. Time is the database's clock (`clock_timestamp()`), so replicas whose clocks
//! differ still agree on what a window holds.
//!
//! Admission is atomic per deployment: `model_router.admit` takes a transaction-scoped advisory
//! lock on the deployment's name before it reads and extends the window, so two replicas never
//! both take its last room. The rule is the dispatcher's (`router_dispatch::Window::reserve`):
//! a request fits when what the window holds plus its own tokens and one request stay within
//! the limits, and an empty window admits any request.

use std::time::Duration;

use crate::pg::PgBackend;
use crate::{PostgresUrl, StoreError, StoreOptions};

/// Schema version 3: the window entries, the cooldown ends and the admission function.
pub(crate) const MIGRATION: &str = "
CREATE TABLE model_router.limit_window (
    deployment TEXT NOT NULL,
    at_us BIGINT NOT NULL,
    tokens BIGINT NOT NULL
);
CREATE INDEX limit_window_deployment ON model_router.limit_window (deployment, at_us);
CREATE TABLE model_router.cooldowns (
    deployment TEXT PRIMARY KEY,
    until_us BIGINT NOT NULL
);
CREATE FUNCTION model_router.now_us() RETURNS BIGINT LANGUAGE sql VOLATILE AS
    $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::BIGINT $$;
CREATE FUNCTION model_router.admit(
    dep TEXT, max_tokens BIGINT, max_requests BIGINT, window_us BIGINT, charge BIGINT,
    OUT verdict TEXT, OUT wait_us BIGINT
) LANGUAGE plpgsql AS $$
DECLARE
    now_us BIGINT := model_router.now_us();
    used_tokens BIGINT;
    used_requests BIGINT;
    entry RECORD;
BEGIN
    SELECT c.until_us - now_us INTO wait_us FROM model_router.cooldowns c
        WHERE c.deployment = dep AND c.until_us > now_us;
    IF FOUND THEN
        verdict := 'cooling';
        RETURN;
    END IF;
    verdict := 'admitted';
    wait_us := 0;
    IF max_tokens IS NULL AND max_requests IS NULL THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('model_router.limit_window'), hashtext(dep));
    now_us := model_router.now_us();
    DELETE FROM model_router.limit_window w WHERE w.deployment = dep AND w.at_us <= now_us - window_us;
    SELECT coalesce(sum(w.tokens), 0), count(*) INTO used_tokens, used_requests
        FROM model_router.limit_window w WHERE w.deployment = dep;
    IF used_requests = 0
        OR ((max_tokens IS NULL OR used_tokens + charge <= max_tokens)
            AND (max_requests IS NULL OR used_requests < max_requests)) THEN
        INSERT INTO model_router.limit_window (deployment, at_us, tokens) VALUES (dep, now_us, charge);
        RETURN;
    END IF;
    verdict := 'full';
    wait_us := window_us;
    FOR entry IN SELECT w.at_us, w.tokens FROM model_router.limit_window w
            WHERE w.deployment = dep ORDER BY w.at_us LOOP
        used_tokens := used_tokens - entry.tokens;
        used_requests := used_requests - 1;
        IF used_requests = 0
            OR ((max_tokens IS NULL OR used_tokens + charge <= max_tokens)
                AND (max_requests IS NULL OR used_requests < max_requests)) THEN
            wait_us := entry.at_us + window_us - now_us;
            RETURN;
        END IF;
    END LOOP;
END $$;";

const ADMIT: &str = "SELECT verdict, wait_us FROM model_router.admit($1, $2, $3, $4, $5)";
const COOL: &str = "INSERT INTO model_router.cooldowns (deployment, until_us)
     VALUES ($1, model_router.now_us() + $2)
     ON CONFLICT (deployment) DO UPDATE SET until_us = EXCLUDED.until_us";
const CLEAR: &str = "DELETE FROM model_router.cooldowns WHERE deployment = $1";
const COOLDOWN_LEFT: &str = "SELECT until_us - model_router.now_us() FROM model_router.cooldowns
     WHERE deployment = $1 AND until_us > model_router.now_us()";
const USAGE: &str =
    "SELECT coalesce(sum(tokens), 0)::BIGINT, count(*) FROM model_router.limit_window
     WHERE deployment = $1 AND at_us > model_router.now_us() - $2";

/// What [`SharedWindows::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitVerdict {
    /// Counted in the window (or no limit was given); the request may go.
    Admitted,
    /// The deployment cools down for this long more; nothing was counted.
    Cooling(Duration),
    /// The window has no room; it would after this long. Nothing was counted.
    Full(Duration),
}

/// Sliding capacity windows and cooldown ends in a PostgreSQL database (schema `model_router`,
/// migrated to version 3 on open), over a small pool of connections of its own.
#[derive(Debug)]
pub struct SharedWindows {
    backend: PgBackend,
}

/// Microseconds as PostgreSQL's BIGINT.
fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn duration(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

/// A count as BIGINT (limits beyond `i64::MAX` are as good as none).
fn bigint(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl SharedWindows {
    /// Connects to `url` and brings the schema to this build's version.
    pub fn open(url: &PostgresUrl) -> Result<Self, StoreError> {
        Ok(SharedWindows {
            backend: PgBackend::open(url, StoreOptions::default())?,
        })
    }

    /// If `deployment` cools down, says so; else, when a limit is given, counts `tokens` and one
    /// request in its window of `window` if they fit.
    pub fn admit(
        &self,
        deployment: &str,
        max_tokens: Option<u64>,
        max_requests: Option<u64>,
        window: Duration,
        tokens: u64,
    ) -> Result<LimitVerdict, StoreError> {
        let (max_tokens, max_requests) = (max_tokens.map(bigint), max_requests.map(bigint));
        let (window, tokens) = (micros(window), bigint(tokens));
        let row = self.backend.with_conn(|conn| {
            conn.query_one(
                ADMIT,
                &[&deployment, &max_tokens, &max_requests, &window, &tokens],
            )
        })?;
        let verdict: String = row.try_get(0)?;
        let wait = duration(row.try_get(1)?);
        Ok(match verdict.as_str() {
            "cooling" => LimitVerdict::Cooling(wait),
            "full" => LimitVerdict::Full(wait),
            _ => LimitVerdict::Admitted,
        })
    }

    /// Cools `deployment` for `wait` from now (the database's now).
    pub fn cool(&self, deployment: &str, wait: Duration) -> Result<(), StoreError> {
        let wait = micros(wait);
        self.backend
            .with_conn(|conn| conn.query(COOL, &[&deployment, &wait]))?;
        Ok(())
    }

    /// Ends `deployment`'s cooldown.
    pub fn clear_cooldown(&self, deployment: &str) -> Result<(), StoreError> {
        self.backend
            .with_conn(|conn| conn.query(CLEAR, &[&deployment]))?;
        Ok(())
    }

    /// How long `deployment` still cools down, if it does.
    pub fn cooldown_left(&self, deployment: &str) -> Result<Option<Duration>, StoreError> {
        let rows = self
            .backend
            .with_conn(|conn| conn.query(COOLDOWN_LEFT, &[&deployment]))?;
        match rows.first() {
            Some(row) => Ok(Some(duration(row.try_get(0)?))),
            None => Ok(None),
        }
    }

    /// The tokens and requests in `deployment`'s window of `window` now.
    pub fn usage(&self, deployment: &str, window: Duration) -> Result<(u64, u64), StoreError> {
        let window = micros(window);
        let row = self
            .backend
            .with_conn(|conn| conn.query_one(USAGE, &[&deployment, &window]))?;
        let (tokens, requests): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        Ok((
            u64::try_from(tokens).unwrap_or(0),
            u64::try_from(requests).unwrap_or(0),
        ))
    }
}
