//! `model-router capacity`: sizes provisioned throughput per deployment from the usage a server
//! recorded (issue #15), and `model-router usage export`: that usage as JSON lines.
//!
//! The usage comes from a store database or usage file (`--db PATH|URL`) or a JSON-lines export
//! (`--usage FILE`). The window is every minute from the first to the last recorded one (of all
//! deployments; `--days` keeps the last N days); a minute without a row had no demand. A
//! deployment's demand in a minute is the tokens it served plus the tokens of the requests that
//! spilled over from it to another deployment (what it would have served had it been large
//! enough). The sizing rules are `router_training::capacity`'s.

use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use router_policy::Catalog;
use router_store::{read_usage_jsonl, write_usage_jsonl, SkippedLine, UsageRow};
use router_training::capacity::{self, MinuteDemand, Prices, Sizing, Unit};
use serde::Serialize;

use crate::store_cli::open_for_reading;

/// The longest window sized at once (a year of minutes is 525,600 demand values).
const MAX_WINDOW_DAYS: usize = 400;

#[derive(Args)]
pub struct CapacityArgs {
    /// The recorded usage: a store database or usage file (`[store] path`, `[usage] path`) or a
    /// PostgreSQL URL (`[store] url`).
    #[arg(
        long,
        value_name = "PATH|URL",
        required_unless_present = "usage",
        conflicts_with = "usage"
    )]
    db: Option<String>,
    /// The environment variable holding the PostgreSQL password (`[store] password_env`).
    #[arg(long, value_name = "VAR")]
    password_env: Option<String>,
    /// A usage JSON-lines export (`model-router usage export`); broken lines are skipped and counted.
    #[arg(long, value_name = "FILE")]
    usage: Option<PathBuf>,
    /// Tokens (input + output) per minute one provisioned unit serves.
    #[arg(long)]
    unit_tpm: u64,
    /// USD per month of one provisioned unit.
    #[arg(long)]
    unit_price: f64,
    /// The catalog with the pay-as-you-go prices (default: the default bundle's catalog.toml).
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// Only this deployment.
    #[arg(long)]
    deployment: Option<String>,
    /// Only the last N days of the usage (counted back from its last minute).
    #[arg(long)]
    days: Option<u32>,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Draw the monthly cost against the provisioned size to this SVG file (one per deployment:
    /// with several, each file name gets `-DEPLOYMENT` before `.svg`).
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum UsageCommand {
    /// Write the recorded usage (per deployment and minute) as JSON lines, what `capacity --usage` reads.
    Export(UsageExportArgs),
}

#[derive(Args)]
pub struct UsageExportArgs {
    /// The store database or usage file, or a PostgreSQL URL.
    #[arg(long, value_name = "PATH|URL")]
    db: String,
    /// The environment variable holding the PostgreSQL password.
    #[arg(long, value_name = "VAR")]
    password_env: Option<String>,
    /// The JSON-lines file to write.
    #[arg(long)]
    out: PathBuf,
}

pub fn run_usage(command: UsageCommand) -> Result<()> {
    let UsageCommand::Export(args) = command;
    let rows = open_for_reading(&args.db, args.password_env.as_deref())?.usage(None)?;
    let file = std::fs::File::create(&args.out)
        .with_context(|| format!("{}: cannot create it", args.out.display()))?;
    let mut out = BufWriter::new(file);
    write_usage_jsonl(&rows, &mut out)
        .with_context(|| format!("{}: writing", args.out.display()))?;
    eprintln!("wrote {} usage rows to {}", rows.len(), args.out.display());
    Ok(())
}

/// One deployment's usage over the window, and its sizing.
#[derive(Serialize)]
struct DeploymentReport {
    deployment: String,
    model: String,
    prices: Prices,
    /// Requests it answered.
    requests: u64,
    input_tokens: u64,
    output_tokens: u64,
    /// Of `requests`, those whose tokens were estimated.
    estimated_requests: u64,
    /// 429s it answered.
    throttled: u64,
    /// Requests that spilled over from it to another deployment.
    spilled_requests: u64,
    sizing: Sizing,
}

#[derive(Serialize)]
struct Window {
    first_minute: i64,
    last_minute: i64,
    first_utc: String,
    last_utc: String,
    minutes: usize,
    month_minutes: f64,
}

#[derive(Serialize)]
struct SkippedJson {
    line: usize,
    reason: String,
}

#[derive(Serialize)]
struct Report {
    window: Window,
    unit: Unit,
    skipped_lines: Vec<SkippedJson>,
    deployments: Vec<DeploymentReport>,
}

pub fn run(args: CapacityArgs) -> Result<()> {
    let (rows, skipped) = read_rows(&args)?;
    let rows = last_days(rows, args.days);
    let Some(window) = window_of(&rows) else {
        bail!("no usage recorded: nothing to size (is `[store]` or `[usage]` set in the server config?)");
    };
    if window.minutes > MAX_WINDOW_DAYS * 24 * 60 {
        bail!(
            "the usage spans {} to {} UTC, more than {MAX_WINDOW_DAYS} days: keep the last days with --days",
            window.first_utc,
            window.last_utc
        );
    }
    let catalog = read_catalog(args.catalog.as_deref())?;
    let unit = Unit {
        tpm: args.unit_tpm,
        monthly_price: args.unit_price,
    };
    let mut deployments = deployments_in(&rows);
    if let Some(name) = &args.deployment {
        if !deployments.contains_key(name) {
            bail!(
                "no usage recorded for deployment `{name}` (deployments with usage: {})",
                names(&deployments)
            );
        }
        deployments.retain(|d, _| d == name);
    }
    let reports = deployments
        .iter()
        .map(|(name, model)| report(name, model, &rows, &window, &catalog, unit))
        .collect::<Result<Vec<_>>>()?;
    if let Some(plot) = &args.plot {
        plot_each(plot, &reports)?;
    }
    let report = Report {
        window,
        unit,
        skipped_lines: skipped
            .into_iter()
            .map(|s| SkippedJson {
                line: s.line,
                reason: s.reason,
            })
            .collect(),
        deployments: reports,
    };
    let mut stdout = std::io::stdout().lock();
    if args.json {
        writeln!(stdout, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        write_table(&mut stdout, &report)?;
    }
    stdout.flush()?;
    Ok(())
}

/// The usage rows of `--db` or `--usage`, and the lines `--usage` skipped (reported on stderr).
fn read_rows(args: &CapacityArgs) -> Result<(Vec<UsageRow>, Vec<SkippedLine>)> {
    if let Some(db) = &args.db {
        return Ok((
            open_for_reading(db, args.password_env.as_deref())?.usage(None)?,
            Vec::new(),
        ));
    }
    let Some(path) = &args.usage else {
        bail!("give --db or --usage")
    };
    let file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open it", path.display()))?;
    let read =
        read_usage_jsonl(BufReader::new(file)).with_context(|| path.display().to_string())?;
    if !read.skipped.is_empty() {
        eprintln!(
            "{}: skipped {} lines that are not usage rows:",
            path.display(),
            read.skipped.len()
        );
        for s in read.skipped.iter().take(10) {
            eprintln!("  line {}: {}", s.line, s.reason);
        }
    }
    Ok((read.rows, read.skipped))
}

/// The rows of the last `days` days before the last recorded minute (all when `None`).
fn last_days(rows: Vec<UsageRow>, days: Option<u32>) -> Vec<UsageRow> {
    let (Some(days), Some(last)) = (days, rows.iter().map(|r| r.minute).max()) else {
        return rows;
    };
    let first = last - i64::from(days) * 24 * 60 + 1;
    rows.into_iter().filter(|r| r.minute >= first).collect()
}

fn window_of(rows: &[UsageRow]) -> Option<Window> {
    let first = rows.iter().map(|r| r.minute).min()?;
    let last = rows.iter().map(|r| r.minute).max()?;
    Some(Window {
        first_minute: first,
        last_minute: last,
        first_utc: capacity::utc_label(first),
        last_utc: capacity::utc_label(last),
        minutes: usize::try_from(last - first + 1).unwrap_or(usize::MAX),
        month_minutes: capacity::MONTH_MINUTES,
    })
}

/// Every deployment that answered or was spilled from, with the model it serves (its first row's).
fn deployments_in(rows: &[UsageRow]) -> BTreeMap<String, String> {
    let mut deployments = BTreeMap::new();
    for row in rows {
        deployments
            .entry(row.deployment.clone())
            .or_insert_with(|| row.model.clone());
        if !row.spillover_from.is_empty() {
            deployments
                .entry(row.spillover_from.clone())
                .or_insert_with(|| row.model.clone());
        }
    }
    deployments
}

fn names(deployments: &BTreeMap<String, String>) -> String {
    deployments
        .keys()
        .map(|d| format!("`{d}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn read_catalog(path: Option<&Path>) -> Result<Catalog> {
    let path = path
        .map(Path::to_path_buf)
        .unwrap_or_else(|| model_router::default_model_dir().join(model_router::CATALOG_FILE));
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read the catalog", path.display()))?;
    Catalog::from_toml_str(&text)
        .with_context(|| format!("{}: not a valid catalog", path.display()))
}

/// The demand on `deployment` per minute of the window, its counts, and its sizing.
fn report(
    deployment: &str,
    model: &str,
    rows: &[UsageRow],
    window: &Window,
    catalog: &Catalog,
    unit: Unit,
) -> Result<DeploymentReport> {
    let Some(spec) = catalog.get(model) else {
        bail!(
            "no pay-as-you-go price for model `{model}` (deployment `{deployment}`): the catalog has no such model; \
             give one that has it with --catalog"
        );
    };
    let prices = Prices {
        input_per_million: spec.input_price,
        output_per_million: spec.output_price,
    };
    let mut minutes = vec![MinuteDemand::default(); window.minutes];
    let mut totals = UsageRow::new(0, deployment, model);
    let mut spilled_requests = 0;
    for row in rows {
        let served = row.deployment == deployment;
        let spilled_from_it = row.spillover_from == deployment;
        if served {
            totals.add(row);
        }
        if spilled_from_it {
            spilled_requests += row.requests;
        }
        if served || spilled_from_it {
            let m = &mut minutes[(row.minute - window.first_minute) as usize];
            m.input_tokens += row.input_tokens;
            m.output_tokens += row.output_tokens;
        }
    }
    let sizing = capacity::size(window.first_minute, &minutes, prices, unit)?;
    Ok(DeploymentReport {
        deployment: deployment.to_string(),
        model: model.to_string(),
        prices,
        requests: totals.requests,
        input_tokens: totals.input_tokens,
        output_tokens: totals.output_tokens,
        estimated_requests: totals.estimated,
        throttled: totals.throttled,
        spilled_requests,
        sizing,
    })
}

fn plot_each(path: &Path, reports: &[DeploymentReport]) -> Result<()> {
    for r in reports {
        let file = if reports.len() == 1 {
            path.to_path_buf()
        } else {
            let stem = path
                .file_stem()
                .map_or("capacity".into(), |s| s.to_string_lossy().into_owned());
            path.with_file_name(format!(
                "{stem}-{}.svg",
                r.deployment.replace(['/', '\\'], "_")
            ))
        };
        let title = format!(
            "{} ({}): monthly cost by provisioned size",
            r.deployment, r.model
        );
        capacity::plot_svg(&title, &r.sizing, &file)?;
        eprintln!("wrote {}", file.display());
    }
    Ok(())
}

fn percent(share: f64) -> String {
    format!("{:.1} %", share * 100.0)
}

fn write_table(out: &mut dyn Write, report: &Report) -> Result<()> {
    let w = &report.window;
    writeln!(
        out,
        "usage: {} minutes, {} to {} UTC; a month is {} minutes (x{:.1}); unit: {} tokens/min at ${:.2}/month",
        w.minutes,
        w.first_utc,
        w.last_utc,
        w.month_minutes,
        w.month_minutes / w.minutes as f64,
        report.unit.tpm,
        report.unit.monthly_price
    )?;
    if !report.skipped_lines.is_empty() {
        writeln!(
            out,
            "skipped {} lines of the usage file that are not usage rows",
            report.skipped_lines.len()
        )?;
    }
    for d in &report.deployments {
        write_deployment(out, d)?;
    }
    Ok(())
}

fn write_deployment(out: &mut dyn Write, d: &DeploymentReport) -> Result<()> {
    let s = &d.sizing;
    writeln!(
        out,
        "\n{} ({}): {} requests, {} input + {} output tokens ({} requests estimated), {} 429s, {} spilled",
        d.deployment, d.model, d.requests, d.input_tokens, d.output_tokens, d.estimated_requests, d.throttled, d.spilled_requests
    )?;
    let tpm = s
        .tpm
        .named()
        .map(|(name, v)| format!("{name} {v}"))
        .join("  ");
    writeln!(out, "  tokens per minute: {tpm}")?;
    if s.tpm.max == 0 {
        writeln!(out, "  no traffic in the window: nothing to provision")?;
        return Ok(());
    }
    writeln!(out, "  units  tokens/min  covers  spilled tokens  minutes spilling  provisioned $/mo  spilled $/mo  total $/mo")?;
    for c in &s.sizes {
        let mark = if c.units == s.recommended.units {
            "  <- recommended"
        } else {
            ""
        };
        writeln!(
            out,
            "  {:>5}  {:>10}  {:>6}  {:>14}  {:>16}  {:>16.2}  {:>12.2}  {:>10.2}{mark}",
            c.units,
            c.capacity_tpm,
            c.covers.unwrap_or("-"),
            percent(c.spilled_token_share),
            percent(c.spill_minute_share),
            c.provisioned_usd,
            c.spilled_usd,
            c.monthly_usd
        )?;
    }
    let best = s.recommended;
    writeln!(
        out,
        "  recommended: {} units (${:.2}/month); all pay-as-you-go ${:.2}/month; provisioned for the peak ({} units) ${:.2}/month",
        best.units, best.monthly_usd, s.all_paygo_usd, s.peak.units, s.peak.monthly_usd
    )?;
    writeln!(
        out,
        "  by hour of day (UTC): hour minutes p50 p80 p90 p99 max"
    )?;
    for h in &s.by_hour {
        let t = h.tpm;
        writeln!(
            out,
            "    {:02} {:>5} {} {} {} {} {}",
            h.hour, h.minutes, t.p50, t.p80, t.p90, t.p99, t.max
        )?;
    }
    Ok(())
}
