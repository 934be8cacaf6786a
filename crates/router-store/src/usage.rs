//! Usage per deployment and minute: what a server records for every request (not only the
//! stored ones), and what `model-router capacity` reads to size provisioned throughput.
//!
//! A row counts, for one UTC minute, one deployment, the model it served and the provisioned
//! deployment the requests spilled over from (empty when they did not spill), the requests it
//! answered, their input and output tokens, how many of those requests had their tokens
//! estimated (the backend reported no `usage`), and the 429s the deployment answered. A server
//! aggregates in memory and adds its rows once a minute ([`Store::add_usage`]): adding is an
//! upsert that sums, so replicas sharing a PostgreSQL store and restarts of one server add up.
//! Usage rows do not count against the store's `max_bytes`: there is at most one per
//! (minute, deployment, model, spillover source), and retention ([`Store::prune_usage`])
//! bounds them.
//!
//! ```
//! use router_store::{Store, StoreOptions, UsageRow};
//!
//! let dir = tempfile::tempdir()?;
//! let store = Store::open(dir.path().join("usage.db"), StoreOptions::default())?;
//! let mut row = UsageRow::new(29_000_000, "gpt4-ptu", "gpt-4");
//! row.requests = 2;
//! row.input_tokens = 300;
//! row.output_tokens = 120;
//! store.add_usage(&[row.clone()])?;
//! store.add_usage(&[row])?; // the same minute again: summed
//! let rows = store.usage(None)?;
//! assert_eq!((rows[0].requests, rows[0].input_tokens), (4, 600));
//!
//! let mut jsonl = Vec::new();
//! router_store::write_usage_jsonl(&rows, &mut jsonl)?;
//! let read = router_store::read_usage_jsonl(&jsonl[..])?;
//! assert_eq!(read.rows, rows);
//! assert!(read.skipped.is_empty());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

use crate::{Store, StoreError};

/// Milliseconds in a minute.
const MINUTE_MS: i64 = 60_000;

/// One deployment's usage in one UTC minute (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageRow {
    /// The minute: whole minutes since the Unix epoch (UTC), [`minute_of_ms`].
    pub minute: i64,
    /// The deployment that answered (or answered 429).
    pub deployment: String,
    /// The catalog model it served.
    pub model: String,
    /// The provisioned deployment these requests spilled over from; empty when they did not.
    #[serde(default)]
    pub spillover_from: String,
    /// Requests it answered (any status other than 429).
    pub requests: u64,
    /// Their input (prompt) tokens.
    pub input_tokens: u64,
    /// Their output (completion) tokens.
    pub output_tokens: u64,
    /// How many of `requests` had their tokens estimated (no `usage` from the backend).
    #[serde(default)]
    pub estimated: u64,
    /// 429s the deployment answered.
    #[serde(default)]
    pub throttled: u64,
}

impl UsageRow {
    /// An empty row for `minute`, `deployment` and `model`, not spilled.
    pub fn new(minute: i64, deployment: impl Into<String>, model: impl Into<String>) -> Self {
        UsageRow {
            minute,
            deployment: deployment.into(),
            model: model.into(),
            spillover_from: String::new(),
            requests: 0,
            input_tokens: 0,
            output_tokens: 0,
            estimated: 0,
            throttled: 0,
        }
    }

    /// Input plus output tokens.
    pub fn tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    /// Adds `other`'s counts (same key) to this row's.
    pub fn add(&mut self, other: &UsageRow) {
        self.requests = self.requests.saturating_add(other.requests);
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.estimated = self.estimated.saturating_add(other.estimated);
        self.throttled = self.throttled.saturating_add(other.throttled);
    }
}

/// The UTC minute (minutes since the Unix epoch) of a time in milliseconds since the epoch.
///
/// ```
/// assert_eq!(router_store::minute_of_ms(119_999), 1);
/// assert_eq!(router_store::minute_of_ms(-1), -1);
/// ```
pub fn minute_of_ms(ms: i64) -> i64 {
    ms.div_euclid(MINUTE_MS)
}

/// A line of a usage JSON-lines file that was not a usage row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedLine {
    /// Its number, from 1.
    pub line: usize,
    /// Why it was skipped.
    pub reason: String,
}

/// What [`read_usage_jsonl`] read: the rows, and the lines it skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageLines {
    /// The usage rows, in file order.
    pub rows: Vec<UsageRow>,
    /// Lines that were not usage rows (blank lines are neither).
    pub skipped: Vec<SkippedLine>,
}

/// Reads usage rows, one JSON object per line (what [`write_usage_jsonl`] writes). A line that
/// is not a valid row is skipped and reported with its number; only a read error fails.
pub fn read_usage_jsonl(reader: impl BufRead) -> Result<UsageLines, StoreError> {
    let mut read = UsageLines::default();
    for (index, line) in reader.lines().enumerate() {
        let line = line.map_err(StoreError::Read)?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<UsageRow>(&line) {
            Ok(row) => read.rows.push(row),
            Err(e) => read.skipped.push(SkippedLine {
                line: index + 1,
                reason: e.to_string(),
            }),
        }
    }
    Ok(read)
}

/// Writes `rows` as JSON lines, one row per line.
pub fn write_usage_jsonl(rows: &[UsageRow], out: &mut dyn Write) -> Result<(), StoreError> {
    for row in rows {
        let text = serde_json::to_string(row)
            .map_err(|e| StoreError::InvalidRecord(format!("usage row: {e}")))?;
        out.write_all(text.as_bytes()).map_err(StoreError::Write)?;
        out.write_all(b"\n").map_err(StoreError::Write)?;
    }
    out.flush().map_err(StoreError::Write)
}

impl Store {
    /// Adds `rows` to the usage table in one transaction: a row whose (minute, deployment,
    /// model, spillover source) is already there has its counts summed into it.
    pub fn add_usage(&self, rows: &[UsageRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        self.backend.add_usage(rows)
    }

    /// The usage rows from minute `since` on (all when `None`), ordered by minute, deployment,
    /// model and spillover source.
    pub fn usage(&self, since: Option<i64>) -> Result<Vec<UsageRow>, StoreError> {
        self.backend.usage(since.unwrap_or(i64::MIN))
    }

    /// Deletes the usage rows of minutes before `before`; how many.
    pub fn prune_usage(&self, before: i64) -> Result<u64, StoreError> {
        self.backend.prune_usage(before)
    }
}

/// The columns of the usage table, in the order both backends read and write them.
pub(crate) const USAGE_COLUMNS: &str =
    "minute, deployment, model, spillover_from, requests, input_tokens, output_tokens, estimated, throttled";

/// The sums an upsert applies to a row that exists (`excluded` is the new row in both SQLite
/// and PostgreSQL).
pub(crate) const USAGE_SUMS: &str = "requests = usage_minutes.requests + excluded.requests,
     input_tokens = usage_minutes.input_tokens + excluded.input_tokens,
     output_tokens = usage_minutes.output_tokens + excluded.output_tokens,
     estimated = usage_minutes.estimated + excluded.estimated,
     throttled = usage_minutes.throttled + excluded.throttled";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_lines_are_skipped_with_their_numbers() {
        let text = "{\"minute\":5,\"deployment\":\"d\",\"model\":\"m\",\"requests\":1,\"input_tokens\":2,\"output_tokens\":3}\n\
                    not json\n\
                    \n\
                    {\"minute\":6,\"deployment\":\"d\"}\n\
                    {\"minute\":7,\"deployment\":\"d\",\"model\":\"m\",\"requests\":1,\"input_tokens\":2,\"output_tokens\":3,\"extra\":1}\n";
        let read = read_usage_jsonl(text.as_bytes()).unwrap();
        assert_eq!(read.rows.len(), 1);
        assert_eq!(read.rows[0].tokens(), 5);
        let lines: Vec<usize> = read.skipped.iter().map(|s| s.line).collect();
        assert_eq!(lines, [2, 4, 5]);
        assert!(
            read.skipped[1].reason.contains("model"),
            "{:?}",
            read.skipped[1]
        );
    }

    #[test]
    fn add_sums_every_count() {
        let mut a = UsageRow::new(1, "d", "m");
        a.requests = 1;
        a.throttled = 2;
        let mut b = a.clone();
        b.input_tokens = 10;
        b.output_tokens = 4;
        b.estimated = 1;
        a.add(&b);
        assert_eq!(
            (
                a.requests,
                a.input_tokens,
                a.output_tokens,
                a.estimated,
                a.throttled
            ),
            (2, 10, 4, 1, 4)
        );
    }
}
