//! `model-router store ...`: operator commands on a completions database (`[store]` of a server).

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use router_store::{ExportFilter, Location, Store, StoreOptions};

#[derive(Subcommand)]
pub enum StoreCommand {
    /// Write the chat fine-tuning JSONL ({"messages": [...]}) of the stored completions matching
    /// the filters, every owner's, oldest first.
    Export(ExportArgs),
}

#[derive(Args)]
pub struct ExportArgs {
    /// The store: an SQLite file (`[store] path` of the server config) or a PostgreSQL URL
    /// (`[store] url`, postgres://user@host:port/database).
    #[arg(long, value_name = "PATH|URL")]
    db: String,
    /// The environment variable holding the PostgreSQL password (`[store] password_env`).
    #[arg(long, value_name = "VAR")]
    password_env: Option<String>,
    /// Keep records whose metadata has KEY=VALUE (`metadata.KEY=VALUE`; repeatable, all must match).
    #[arg(long = "filter", value_name = "metadata.KEY=VALUE")]
    filters: Vec<String>,
    /// Keep records answered by this model.
    #[arg(long)]
    model: Option<String>,
    /// Keep records whose metadata `grade` is a number in [0, 1] at least this; records without
    /// a valid grade are skipped.
    #[arg(long)]
    min_grade: Option<f64>,
    /// The JSONL file to write.
    #[arg(long)]
    out: PathBuf,
}

pub(crate) fn parse_filter(text: &str) -> Result<(String, String)> {
    let Some(pair) = text.strip_prefix("metadata.") else {
        bail!("--filter takes metadata.KEY=VALUE, got {text:?}");
    };
    match pair.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => bail!("--filter takes metadata.KEY=VALUE, got {text:?}"),
    }
}

/// Opens an existing store to read it: `db` is an SQLite file (which must exist: reading never
/// creates one) or a `postgres://` URL, whose password is read from the environment variable
/// `password_env` when given. The commands that read a server's store (`store export`,
/// `label --db`) open it here.
pub(crate) fn open_for_reading(db: &str, password_env: Option<&str>) -> Result<Store> {
    let password = match password_env {
        None => None,
        Some(var) => Some(
            std::env::var(var)
                .ok()
                .filter(|p| !p.is_empty())
                .with_context(|| {
                    format!("--password-env: environment variable `{var}` is unset or empty")
                })?,
        ),
    };
    let location = Location::parse(db, password)?;
    if let Location::Sqlite(path) = &location {
        if !path.is_file() {
            bail!("{}: no such database file", path.display());
        }
    }
    // The cap only matters for writes; these commands only read.
    Ok(Store::open_location(
        &location,
        StoreOptions {
            max_bytes: u64::MAX,
            ..StoreOptions::default()
        },
    )?)
}

pub fn run(command: StoreCommand) -> Result<()> {
    match command {
        StoreCommand::Export(args) => export(args),
    }
}

fn export(args: ExportArgs) -> Result<()> {
    let metadata = args
        .filters
        .iter()
        .map(|f| parse_filter(f))
        .collect::<Result<Vec<_>>>()?;
    if let Some(g) = args.min_grade {
        if !(0.0..=1.0).contains(&g) {
            bail!("--min-grade must be a number in [0, 1], got {g}");
        }
    }
    let store = open_for_reading(&args.db, args.password_env.as_deref())?;
    let file = std::fs::File::create(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut out = BufWriter::new(file);
    let filter = ExportFilter {
        owner: None,
        model: args.model,
        metadata,
        min_grade: args.min_grade,
    };
    let summary = store.export(&filter, &mut out)?;
    out.flush()
        .with_context(|| format!("writing {}", args.out.display()))?;
    let skipped = summary.no_grade + summary.below_grade + summary.no_answer;
    eprintln!(
        "wrote {} lines to {}; skipped {skipped}",
        summary.written,
        args.out.display()
    );
    if summary.no_grade > 0 {
        eprintln!(
            "  {} without a valid grade (metadata `grade`, a number in [0, 1])",
            summary.no_grade
        );
    }
    if summary.below_grade > 0 {
        eprintln!(
            "  {} with a grade below {}",
            summary.below_grade,
            args.min_grade.unwrap_or(0.0)
        );
    }
    if summary.no_answer > 0 {
        eprintln!(
            "  {} whose response has no assistant answer",
            summary.no_answer
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse() {
        assert_eq!(
            parse_filter("metadata.task=a=b").unwrap(),
            ("task".to_string(), "a=b".to_string())
        );
        assert_eq!(
            parse_filter("metadata.k=").unwrap(),
            ("k".to_string(), String::new())
        );
        for bad in ["task=a", "metadata.=x", "metadata.task"] {
            assert!(parse_filter(bad).is_err(), "{bad}");
        }
    }
}
