//! Where `label` reads its prompts: a JSON-lines file or a completions store. Both become
//! [`LabelPrompt`]s: the messages sent to the candidates, the text the router scores, the item the
//! graders read, and (from a store) answers that models already gave.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{Context, Result};
use router_store::{Completion, ListQuery, Store, Usage};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// An answer a model already gave to a prompt (a stored completion): it is graded, not asked again.
#[derive(Debug, Clone, PartialEq)]
pub struct KnownAnswer {
    /// The answer text.
    pub text: String,
    /// Usage as the backend reported it.
    pub usage: Option<Usage>,
    /// The stored cost (USD), used when the usage is missing.
    pub cost_usd: f64,
    /// The stored latency.
    pub latency_ms: u64,
}

/// One prompt to label.
#[derive(Debug, Clone)]
pub struct LabelPrompt {
    /// Hex SHA-256 of the normalised messages and grading fields: the same prompt gets the same key
    /// on every run, whatever the order or the other lines of the input.
    pub key: String,
    /// Where it came from (`line 12`, `record chatcmpl-...`), for messages.
    pub origin: String,
    /// The chat messages sent to every candidate.
    pub messages: Vec<Value>,
    /// The task of the canonical record (the item's `task`, else empty).
    pub task: String,
    /// What graders read as `{{item.*}}`.
    pub item: Map<String, Value>,
    /// Answers already given, by catalog model name.
    pub known: BTreeMap<String, KnownAnswer>,
}

/// The prompts of a source, deduplicated by key, in input order, and the lines that were skipped.
#[derive(Debug, Default)]
pub struct PromptSet {
    /// The prompts.
    pub prompts: Vec<LabelPrompt>,
    /// `(line number, why)` of every input line that does not parse.
    pub skipped: Vec<(usize, String)>,
    /// Lines or records whose prompt appeared earlier (labelled once).
    pub duplicates: usize,
}

impl PromptSet {
    fn push(&mut self, prompt: LabelPrompt, seen: &mut HashMap<String, usize>) {
        if let Some(&index) = seen.get(&prompt.key) {
            self.duplicates += 1;
            // A repeated store record may carry another model's answer to the same prompt.
            for (model, answer) in prompt.known {
                self.prompts[index].known.entry(model).or_insert(answer);
            }
            return;
        }
        seen.insert(prompt.key.clone(), self.prompts.len());
        self.prompts.push(prompt);
    }
}

/// Reads a JSON-lines prompt file: each line an object with a string `prompt` or a `messages`
/// array, optional `task`, any other fields. Blank lines are ignored; a line that does not parse
/// is skipped with its number and reason.
pub fn read_prompt_file(path: &Path) -> Result<PromptSet> {
    let file = std::fs::File::open(path).with_context(|| path.display().to_string())?;
    let mut set = PromptSet::default();
    let mut seen = HashMap::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let number = index + 1;
        let line = line.with_context(|| format!("{}: line {number}", path.display()))?;
        let line = if number == 1 {
            line.trim_start_matches('\u{feff}')
        } else {
            line.as_str()
        };
        if line.trim().is_empty() {
            continue;
        }
        match prompt_of_line(line, number) {
            Ok(prompt) => set.push(prompt, &mut seen),
            Err(reason) => set.skipped.push((number, reason)),
        }
    }
    Ok(set)
}

fn prompt_of_line(line: &str, number: usize) -> Result<LabelPrompt, String> {
    let item = match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(item)) => item,
        Ok(_) => return Err("not a JSON object".into()),
        Err(e) => return Err(format!("not JSON ({e})")),
    };
    let messages = match (item.get("prompt"), item.get("messages")) {
        (Some(Value::String(prompt)), None) => {
            vec![serde_json::json!({"role": "user", "content": prompt})]
        }
        (None, Some(Value::Array(messages))) => messages.clone(),
        (Some(_), Some(_)) => return Err("has both \"prompt\" and \"messages\"".into()),
        (Some(_), None) => return Err("\"prompt\" is not a string".into()),
        (None, Some(_)) => return Err("\"messages\" is not an array".into()),
        (None, None) => return Err("needs a string \"prompt\" or a \"messages\" array".into()),
    };
    let task = match item.get("task") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(task)) => task.clone(),
        Some(_) => return Err("\"task\" is not a string".into()),
    };
    check_messages(&messages)?;
    Ok(LabelPrompt {
        key: prompt_key(&messages, &item),
        origin: format!("line {number}"),
        messages,
        task,
        item,
        known: BTreeMap::new(),
    })
}

/// Each message an object with a string `role`, and a non-empty list.
fn check_messages(messages: &[Value]) -> Result<(), String> {
    if messages.is_empty() {
        return Err("\"messages\" is empty".into());
    }
    for (i, message) in messages.iter().enumerate() {
        if message.get("role").and_then(Value::as_str).is_none() {
            return Err(format!("messages[{i}] needs a string \"role\""));
        }
    }
    Ok(())
}

/// Reads the records of a completions store that match every `metadata` pair, oldest first. A
/// record and its shadows (the same request, sent by the server to other models: linked by
/// `shadow_of`) form one prompt, and so do records with the same messages; each answer is the
/// answer of the model that gave it (the first one, when a model answered a prompt twice).
pub fn read_store(store: &Store, metadata: Vec<(String, String)>) -> Result<PromptSet> {
    let mut set = PromptSet::default();
    let mut seen = HashMap::new();
    let mut query = ListQuery {
        metadata,
        limit: Some(router_store::MAX_LIMIT),
        ..ListQuery::default()
    };
    loop {
        let page = store.list(&query)?;
        for record in &page.data {
            let shadows = store.shadows_of(&record.id)?;
            match prompt_of_record(record, &shadows) {
                Ok(prompt) => set.push(prompt, &mut seen),
                Err(reason) => set.skipped.push((
                    set.skipped.len() + 1,
                    format!("record {}: {reason}", record.id),
                )),
            }
        }
        match page.data.last() {
            Some(last) if page.has_more => query.after = Some(last.id.clone()),
            _ => break,
        }
    }
    Ok(set)
}

fn prompt_of_record(record: &Completion, shadows: &[Completion]) -> Result<LabelPrompt, String> {
    check_messages(&record.messages)?;
    let item: Map<String, Value> = record
        .metadata
        .to_json()
        .as_object()
        .cloned()
        .unwrap_or_default();
    let task = item
        .get("task")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut known = BTreeMap::new();
    for answered in std::iter::once(record).chain(shadows) {
        if let Some(text) = answered
            .answer()
            .as_ref()
            .and_then(|a| a.get("content"))
            .and_then(Value::as_str)
        {
            let answer = KnownAnswer {
                text: text.to_string(),
                usage: answered.usage,
                cost_usd: answered.cost_usd,
                latency_ms: answered.latency_ms,
            };
            known.entry(answered.model.clone()).or_insert(answer);
        }
    }
    Ok(LabelPrompt {
        // Only the messages: repeated records of one prompt may carry different metadata.
        key: prompt_key(&record.messages, &Map::new()),
        origin: format!("record {}", record.id),
        messages: record.messages.clone(),
        task,
        item,
        known,
    })
}

/// The prompt's key: SHA-256 of the canonical JSON (keys sorted, string contents trimmed) of the
/// messages and of the grading fields (the item without `prompt` and `messages`, which the messages
/// already say). `{"prompt": "x"}` and `{"messages": [{"role": "user", "content": "x"}]}` match.
pub fn prompt_key(messages: &[Value], item: &Map<String, Value>) -> String {
    let fields: Map<String, Value> = item
        .iter()
        .filter(|(k, _)| *k != "prompt" && *k != "messages")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    json_digest(&serde_json::json!([messages, fields]))
}

/// Hex SHA-256 of the canonical JSON of `value`: equal for equal JSON, however it was written.
pub fn json_digest(value: &Value) -> String {
    let mut text = String::new();
    canonical(value, &mut text);
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// JSON with object keys sorted and strings trimmed, whatever map order serde_json was built with.
fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::String(s) => out.push_str(&Value::String(s.trim().to_string()).to_string()),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(object) => {
            let mut keys: Vec<&String> = object.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                canonical(&object[key], out);
            }
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_prompt_and_its_messages_share_a_key() {
        let from_prompt = prompt_of_line(
            r#"{"prompt": " 2+2? ", "reference": "4", "task": "math"}"#,
            1,
        )
        .unwrap();
        let from_messages =
            prompt_of_line(r#"{"task": "math", "reference": "4", "messages": [{"content": "2+2?", "role": "user"}]}"#, 2).unwrap();
        assert_eq!(from_prompt.key, from_messages.key);
        assert_eq!(from_prompt.task, "math");
        let other_reference =
            prompt_of_line(r#"{"prompt": "2+2?", "reference": "5", "task": "math"}"#, 3).unwrap();
        assert_ne!(from_prompt.key, other_reference.key);
    }

    #[test]
    fn bad_lines_say_why() {
        for (line, why) in [
            ("[1]", "not a JSON object"),
            ("{", "not JSON"),
            (r#"{"prompt": 3}"#, "not a string"),
            (r#"{"messages": []}"#, "empty"),
            (r#"{"messages": [{"content": "x"}]}"#, "role"),
            (r#"{"reference": "x"}"#, "needs a string"),
            (r#"{"prompt": "x", "task": 1}"#, "task"),
        ] {
            let reason = prompt_of_line(line, 1).unwrap_err();
            assert!(reason.contains(why), "{line}: {reason}");
        }
    }

    #[test]
    fn canonical_json_sorts_keys() {
        let mut a = String::new();
        canonical(
            &json!({"b": [1, {"d": " x", "c": null}], "a": true}),
            &mut a,
        );
        assert_eq!(a, r#"{"a":true,"b":[1,{"c":null,"d":"x"}]}"#);
    }
}
