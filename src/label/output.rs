//! The output files of `label`, (re)written whole from the progress file: the canonical JSON lines
//! `train` reads, and the answers beside them. Each is written to a temporary file in the same
//! directory, synced and renamed over the old one, so a killed run leaves the old file or the new
//! one, never a half line.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use router_training::data::Record;
use serde::Serialize;
use serde_json::json;

use super::progress::PairResult;
use super::prompts::LabelPrompt;

/// One line of the labels file: the canonical record (with each graded model's output length)
/// plus each model's latency.
#[derive(Serialize)]
struct LabelLine<'a> {
    #[serde(flatten)]
    record: Record,
    latency_ms: BTreeMap<&'a str, u64>,
}

/// What was written.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Lines of the labels file.
    pub lines: usize,
    /// Prompts not written yet: some model has no finished pair.
    pub unfinished: usize,
    /// Prompts whose every model failed (nothing to learn from).
    pub all_failed: usize,
}

/// Writes the labels (`out`) and answers (`answers`) of the prompts for `models`, in input order,
/// from the finished `pairs`; each prompt comes with its routing text (the record's `prompt`).
pub fn write_outputs(
    prompts: &[(&LabelPrompt, &str)],
    models: &[String],
    pairs: &HashMap<(String, String), PairResult>,
    out: &Path,
    answers: &Path,
) -> Result<Written> {
    let mut written = Written::default();
    let mut label_lines = Vec::new();
    let mut answer_lines = Vec::new();
    for &(prompt, text) in prompts {
        let results: Vec<(&String, &PairResult)> = models
            .iter()
            .filter_map(|model| {
                pairs
                    .get(&(prompt.key.clone(), model.clone()))
                    .map(|r| (model, r))
            })
            .collect();
        for (model, result) in &results {
            answer_lines.push(answer_line(prompt, model, result).to_string());
        }
        if results.len() < models.len() {
            written.unfinished += 1;
            continue;
        }
        match label_line(prompt, text, &results) {
            Some(line) => label_lines.push(serde_json::to_string(&line)?),
            None => written.all_failed += 1,
        }
    }
    written.lines = label_lines.len();
    replace_file(out, &label_lines)?;
    replace_file(answers, &answer_lines)?;
    Ok(written)
}

fn label_line<'a>(
    prompt: &LabelPrompt,
    text: &str,
    results: &[(&'a String, &PairResult)],
) -> Option<LabelLine<'a>> {
    let mut line = LabelLine {
        record: Record {
            prompt: text.to_string(),
            task: prompt.task.clone(),
            scores: BTreeMap::new(),
            costs: BTreeMap::new(),
            output_tokens: BTreeMap::new(),
        },
        latency_ms: BTreeMap::new(),
    };
    for (model, result) in results {
        if let (Some(score), Some(answer)) = (result.score, &result.answer) {
            line.record.scores.insert(model.to_string(), score);
            line.record.costs.insert(model.to_string(), answer.cost_usd);
            line.record
                .output_tokens
                .insert(model.to_string(), answer.output_tokens);
            line.latency_ms.insert(model.as_str(), answer.latency_ms);
        }
    }
    (!line.record.scores.is_empty()).then_some(line)
}

fn answer_line(prompt: &LabelPrompt, model: &str, result: &PairResult) -> serde_json::Value {
    let answer = result.answer.as_ref();
    json!({
        "prompt_key": prompt.key,
        "origin": prompt.origin,
        "model": model,
        "answer": answer.map(|a| a.text.as_str()),
        "usage": answer.map(|a| json!({
            "prompt_tokens": a.prompt_tokens, "completion_tokens": a.output_tokens, "reported": a.usage_reported,
        })),
        "cost_usd": answer.map(|a| a.cost_usd),
        "latency_ms": answer.map(|a| a.latency_ms),
        "source": answer.map(|a| a.source.as_str()),
        "score": result.score,
        "passed": result.passed,
        "error": result.error,
    })
}

/// Writes `lines` to a temporary file beside `path`, syncs it and renames it over `path`.
fn replace_file(path: &Path, lines: &[String]) -> Result<()> {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    let temporary: PathBuf = path.with_file_name(name);
    let file = std::fs::File::create(&temporary)
        .with_context(|| format!("creating {}", temporary.display()))?;
    let mut writer = BufWriter::new(file);
    for line in lines {
        writer
            .write_all(line.as_bytes())
            .and_then(|()| writer.write_all(b"\n"))
            .with_context(|| temporary.display().to_string())?;
    }
    let file = writer
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| temporary.display().to_string())?;
    file.sync_all()
        .with_context(|| temporary.display().to_string())?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("renaming {} to {}", temporary.display(), path.display()))
}
