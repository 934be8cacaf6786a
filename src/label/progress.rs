//! The progress file of `label`: one SQLite row per finished (prompt, model) pair, committed before
//! the pair counts, and the settings of the run that made it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context, Result};
use rusqlite::{params, Connection, OptionalExtension};

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerSource {
    /// Asked through the dispatcher by this command.
    Backend,
    /// A stored completion (`--db`): not asked again, its cost not spent by this command.
    Store,
}

impl AnswerSource {
    pub fn as_str(self) -> &'static str {
        match self {
            AnswerSource::Backend => "backend",
            AnswerSource::Store => "store",
        }
    }

    fn parse(text: &str) -> Result<Self> {
        match text {
            "backend" => Ok(AnswerSource::Backend),
            "store" => Ok(AnswerSource::Store),
            other => bail!("unknown answer source {other:?} in the progress file"),
        }
    }
}

/// A model's answer with what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The text.
    pub text: String,
    /// Prompt tokens (reported, else estimated).
    pub prompt_tokens: u64,
    /// Output tokens (reported, else estimated).
    pub output_tokens: u64,
    /// Whether the backend reported the usage (else it is estimated from the text).
    pub usage_reported: bool,
    /// USD: usage × catalog prices.
    pub cost_usd: f64,
    /// Milliseconds from sending the request to reading the whole answer.
    pub latency_ms: u64,
    /// Where it came from.
    pub source: AnswerSource,
}

/// A finished pair: an answer and its grade, or an error (from the backend: no answer; from the
/// grader: the answer kept).
#[derive(Debug, Clone, PartialEq)]
pub struct PairResult {
    /// The answer, when there is one.
    pub answer: Option<Answer>,
    /// The grade, when the answer was graded.
    pub score: Option<f64>,
    /// Pass / fail, when the grader has a threshold.
    pub passed: Option<bool>,
    /// Why the pair has no grade.
    pub error: Option<String>,
}

/// The open progress file.
pub struct Progress {
    connection: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pairs (
    prompt_key TEXT NOT NULL,
    model TEXT NOT NULL,
    answer TEXT,
    prompt_tokens INTEGER,
    output_tokens INTEGER,
    usage_reported INTEGER,
    cost_usd REAL NOT NULL,
    latency_ms INTEGER,
    source TEXT,
    score REAL,
    passed INTEGER,
    error TEXT,
    PRIMARY KEY (prompt_key, model)
);";

impl Progress {
    /// Opens (or creates) the file in WAL mode with `synchronous = FULL`: a committed pair survives
    /// a killed process and a power loss.
    pub fn open(path: &Path) -> Result<Progress> {
        let connection = Connection::open(path)
            .with_context(|| format!("opening the progress file {}", path.display()))?;
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .and_then(|()| connection.pragma_update(None, "synchronous", "FULL"))
            .and_then(|()| connection.busy_timeout(std::time::Duration::from_secs(10)))
            .and_then(|()| connection.execute_batch(SCHEMA))
            .with_context(|| format!("{}: not a usable progress file", path.display()))?;
        Ok(Progress { connection })
    }

    /// Records `settings` on first use; on a later run, errors naming every setting that changed
    /// (but `may_change`): the pairs already graded were graded under the old ones.
    pub fn check_settings(
        &self,
        path: &Path,
        settings: &BTreeMap<&str, String>,
        may_change: Option<&str>,
    ) -> Result<()> {
        let mut changed = Vec::new();
        for (key, value) in settings.iter().filter(|(key, _)| Some(**key) != may_change) {
            let stored: Option<String> = self
                .connection
                .query_row("SELECT value FROM settings WHERE key = ?1", [key], |row| {
                    row.get(0)
                })
                .optional()?;
            match stored {
                Some(stored) if &stored != value => {
                    changed.push(format!("{key} was {stored} and is now {value}"))
                }
                Some(_) => {}
                None => {
                    self.connection.execute(
                        "INSERT INTO settings (key, value) VALUES (?1, ?2)",
                        params![key, value],
                    )?;
                }
            }
        }
        if !changed.is_empty() {
            bail!(
                "{} was made with other settings ({}): its pairs would not be comparable. Rerun with the \
                 same settings, pass another --progress file (and --out) to start afresh, or, for a new \
                 grader, --regrade to grade the stored answers again without asking the models",
                path.display(),
                changed.join("; ")
            );
        }
        Ok(())
    }

    /// Sets one setting (a `--regrade` in progress, then its new grader).
    pub fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        self.connection.execute(
            "INSERT OR REPLACE INTO settings (key, value) VALUES (?1, ?2)",
            params![key, value],
        )?;
        Ok(())
    }

    /// Commits one finished pair (replacing an earlier error for it); durable when it returns.
    pub fn commit(&self, prompt_key: &str, model: &str, result: &PairResult) -> Result<()> {
        let answer = result.answer.as_ref();
        self.connection.execute(
            "INSERT OR REPLACE INTO pairs (prompt_key, model, answer, prompt_tokens, output_tokens, usage_reported, \
             cost_usd, latency_ms, source, score, passed, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                prompt_key,
                model,
                answer.map(|a| a.text.as_str()),
                answer.map(|a| a.prompt_tokens as i64),
                answer.map(|a| a.output_tokens as i64),
                answer.map(|a| a.usage_reported),
                answer.map_or(0.0, |a| a.cost_usd),
                answer.map(|a| a.latency_ms as i64),
                answer.map(|a| a.source.as_str()),
                result.score,
                result.passed,
                result.error,
            ],
        )?;
        Ok(())
    }

    /// Every finished pair, by (prompt key, model).
    pub fn pairs(&self) -> Result<HashMap<(String, String), PairResult>> {
        let mut statement = self.connection.prepare(
            "SELECT prompt_key, model, answer, prompt_tokens, output_tokens, usage_reported, cost_usd, latency_ms, \
             source, score, passed, error FROM pairs",
        )?;
        let mut rows = statement.query([])?;
        let mut pairs = HashMap::new();
        while let Some(row) = rows.next()? {
            let answer = match (
                row.get::<_, Option<String>>(2)?,
                row.get::<_, Option<String>>(8)?,
            ) {
                (Some(text), Some(source)) => Some(Answer {
                    text,
                    prompt_tokens: row.get::<_, Option<i64>>(3)?.unwrap_or(0).max(0) as u64,
                    output_tokens: row.get::<_, Option<i64>>(4)?.unwrap_or(0).max(0) as u64,
                    usage_reported: row.get::<_, Option<bool>>(5)?.unwrap_or(false),
                    cost_usd: row.get(6)?,
                    latency_ms: row.get::<_, Option<i64>>(7)?.unwrap_or(0).max(0) as u64,
                    source: AnswerSource::parse(&source)?,
                }),
                _ => None,
            };
            let result = PairResult {
                answer,
                score: row.get(9)?,
                passed: row.get(10)?,
                error: row.get(11)?,
            };
            pairs.insert((row.get(0)?, row.get(1)?), result);
        }
        Ok(pairs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer() -> Answer {
        Answer {
            text: "4".into(),
            prompt_tokens: 9,
            output_tokens: 1,
            usage_reported: true,
            cost_usd: 0.5,
            latency_ms: 12,
            source: AnswerSource::Backend,
        }
    }

    #[test]
    fn pairs_round_trip_and_errors_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        let progress = Progress::open(&path).unwrap();
        let failed = PairResult {
            answer: None,
            score: None,
            passed: None,
            error: Some("HTTP 500".into()),
        };
        progress.commit("k", "a", &failed).unwrap();
        let graded = PairResult {
            answer: Some(answer()),
            score: Some(1.0),
            passed: Some(true),
            error: None,
        };
        progress.commit("k", "b", &graded).unwrap();
        drop(progress);
        let progress = Progress::open(&path).unwrap();
        let pairs = progress.pairs().unwrap();
        assert_eq!(pairs[&("k".to_string(), "a".to_string())], failed);
        assert_eq!(pairs[&("k".to_string(), "b".to_string())], graded);
        progress.commit("k", "a", &graded).unwrap();
        assert_eq!(
            progress.pairs().unwrap()[&("k".to_string(), "a".to_string())],
            graded
        );
    }

    #[test]
    fn changed_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        let progress = Progress::open(&path).unwrap();
        let settings =
            BTreeMap::from([("models", "a,b".to_string()), ("grader", "g1".to_string())]);
        progress.check_settings(&path, &settings, None).unwrap();
        progress.check_settings(&path, &settings, None).unwrap();
        let other = BTreeMap::from([("models", "a,c".to_string()), ("grader", "g1".to_string())]);
        let error = progress
            .check_settings(&path, &other, None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("models was a,b and is now a,c"), "{error}");
        progress
            .check_settings(&path, &other, Some("models"))
            .unwrap();
    }
}
