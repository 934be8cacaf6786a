//! Reading a judge model's reply: the number of a `score_model` grader, the label of a
//! `label_model` grader. A reply that does not say one clearly is an error, never a 0.

use std::sync::OnceLock;

use regex::Regex;
use serde_json::Value;

/// Keys of a JSON reply that hold a score.
const SCORE_KEYS: [&str; 4] = ["score", "result", "rating", "grade"];
/// Keys of a JSON reply that hold a label.
const LABEL_KEYS: [&str; 4] = ["label", "result", "answer", "classification"];

fn compile(pattern: &str) -> Regex {
    // The patterns are constants: they compile or the crate's tests fail.
    Regex::new(pattern).unwrap_or_else(|e| panic!("pattern {pattern:?}: {e}"))
}

/// A number not glued to a word or another number (`GPT-4` has none), with an optional `/ N`.
fn number_pattern() -> &'static Regex {
    static PATTERN: OnceLock<Regex> = OnceLock::new();
    PATTERN.get_or_init(|| {
        compile(r"(?:^|[^\w.\-])([-+]?\d+(?:\.\d+)?|[-+]?\.\d+)(?:\s*/\s*(\d+(?:\.\d+)?))?")
    })
}

/// "Score: 7/10", "rating of 4", "**Grade**: 0.8".
fn keyword_pattern() -> &'static Regex {
    static PATTERN: OnceLock<Regex> = OnceLock::new();
    PATTERN.get_or_init(|| {
        compile(r"(?i)\b(?:score|rating|grade|result)\b[^0-9+\-\n]{0,12}?([-+]?\d+(?:\.\d+)?)(?:\s*/\s*(\d+(?:\.\d+)?))?")
    })
}

/// The reply without a reasoning model's `<think>…</think>` preamble and without a Markdown code
/// fence around it, trimmed.
fn unfenced(reply: &str) -> &str {
    let text = match reply.find("</think>") {
        Some(end) if reply.trim_start().starts_with("<think>") => &reply[end + "</think>".len()..],
        _ => reply,
    };
    let text = text.trim();
    match text.strip_prefix("```").and_then(|t| t.strip_suffix("```")) {
        // Drop the fence's language tag (```json).
        Some(inner) => inner
            .trim_start_matches(|c: char| c.is_ascii_alphanumeric())
            .trim(),
        None => text,
    }
}

/// The whole text as JSON, else the first `{...}` object inside it.
fn json_in(text: &str) -> Option<Value> {
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        return Some(value);
    }
    let (start, end) = (text.find('{')?, text.rfind('}')?);
    (start < end)
        .then(|| serde_json::from_str::<Value>(&text[start..=end]).ok())
        .flatten()
}

fn field<'v>(object: &'v serde_json::Map<String, Value>, keys: &[&str]) -> Option<&'v Value> {
    object
        .iter()
        .find(|(key, _)| keys.iter().any(|k| key.eq_ignore_ascii_case(k)))
        .map(|(_, v)| v)
}

fn in_range(value: f64, (low, high): (f64, f64)) -> bool {
    value.is_finite() && (low..=high).contains(&value)
}

/// A number with an optional denominator: `x / N` means x on a scale to N, taken as is when N is
/// the range's maximum and scaled to it when the range starts at 0.
fn fraction(numerator: f64, denominator: Option<f64>, range: (f64, f64)) -> Result<f64, String> {
    match denominator {
        None => Ok(numerator),
        Some(d) if d == range.1 => Ok(numerator),
        Some(d) if d > 0.0 && range.0 == 0.0 => Ok(numerator / d * range.1),
        Some(d) => Err(format!(
            "the reply scores {numerator}/{d}, which does not fit the range [{}, {}]",
            range.0, range.1
        )),
    }
}

fn captured(captures: &regex::Captures<'_>, range: (f64, f64)) -> Result<f64, String> {
    let number = |i: usize| captures.get(i).and_then(|m| m.as_str().parse::<f64>().ok());
    fraction(number(1).ok_or("unparsable number")?, number(2), range)
}

fn checked(value: f64, range: (f64, f64), how: &str) -> Result<f64, String> {
    if in_range(value, range) {
        Ok(value)
    } else {
        Err(format!(
            "the reply's {how} {value} is outside the range [{}, {}]",
            range.0, range.1
        ))
    }
}

/// The score in a `score_model` judge's reply, in the units of `range` (checked to lie in it).
/// In order: the reply as JSON (a number, or an object with `score` / `result` / `rating` /
/// `grade`, also inside a code fence or surrounded by text); a number after the word "score",
/// "rating", "grade" or "result" ("Score: 7/10"); the first number in the text that lies in the
/// range. A fraction `x/N` is x when N is the range's maximum. No number, or an explicit one
/// outside the range, is an error.
pub(crate) fn parse_score(reply: &str, range: (f64, f64)) -> Result<f64, String> {
    let text = unfenced(reply);
    match json_in(text) {
        Some(Value::Number(number)) => {
            return checked(number.as_f64().unwrap_or(f64::NAN), range, "score")
        }
        Some(Value::Object(object)) => match field(&object, &SCORE_KEYS) {
            Some(Value::Number(n)) => {
                return checked(n.as_f64().unwrap_or(f64::NAN), range, "score")
            }
            Some(Value::String(s)) => return parse_score(s, range),
            _ => {}
        },
        _ => {}
    }
    if let Some(captures) = keyword_pattern().captures(text) {
        return checked(captured(&captures, range)?, range, "score");
    }
    let mut found = Vec::new();
    for captures in number_pattern().captures_iter(text) {
        match captured(&captures, range) {
            Ok(value) if in_range(value, range) => return Ok(value),
            Ok(value) => found.push(value.to_string()),
            Err(_) => found.push(captures[0].trim().to_owned()),
        }
    }
    if found.is_empty() {
        Err(format!(
            "no score in the judge's reply {:?}",
            shorten(reply)
        ))
    } else {
        Err(format!(
            "no number in the range [{}, {}] in the judge's reply (found {}): {:?}",
            range.0,
            range.1,
            found.join(", "),
            shorten(reply)
        ))
    }
}

/// The one label of `labels` that a `label_model` judge's reply names: the reply as JSON (a
/// string, or an object with `label` / `result` / `answer` / `classification`), else the reply
/// itself trimmed of quotes, `*` and a final period, compared ignoring case; else the labels
/// that occur in the text as whole words. None or several is an error.
pub(crate) fn match_label<'l>(reply: &str, labels: &'l [String]) -> Result<&'l str, String> {
    let text = unfenced(reply);
    let named = match json_in(text) {
        Some(Value::String(s)) => s,
        Some(Value::Object(object)) => match field(&object, &LABEL_KEYS) {
            Some(Value::String(s)) => s.clone(),
            _ => text.to_owned(),
        },
        _ => text.to_owned(),
    };
    let bare = named
        .trim()
        .trim_matches(|c: char| matches!(c, '"' | '\'' | '*' | '`' | '.') || c.is_whitespace());
    if let Some(label) = labels
        .iter()
        .find(|l| l.trim().eq_ignore_ascii_case(bare) || l.to_lowercase() == bare.to_lowercase())
    {
        return Ok(label);
    }
    let lower = named.to_lowercase();
    let mentioned: Vec<&String> = labels
        .iter()
        .filter(|l| mentions_word(&lower, &l.to_lowercase()))
        .collect();
    match mentioned.as_slice() {
        [label] => Ok(label),
        [] => Err(format!(
            "the judge's reply names none of the labels {labels:?}: {:?}",
            shorten(reply)
        )),
        several => Err(format!(
            "the judge's reply is ambiguous: it names {several:?}: {:?}",
            shorten(reply)
        )),
    }
}

/// Whether `word` occurs in `text` with no letter, digit or `_` right before or after it.
fn mentions_word(text: &str, word: &str) -> bool {
    if word.is_empty() {
        return false;
    }
    let glued = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    text.match_indices(word).any(|(at, _)| {
        !glued(text[..at].chars().next_back()) && !glued(text[at + word.len()..].chars().next())
    })
}

/// At most 200 characters of a reply, for messages.
fn shorten(reply: &str) -> String {
    match reply.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &reply[..cut]),
        None => reply.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_read_from_numbers_json_and_phrases() {
        let ten = (0.0, 10.0);
        let cases = [
            ("7", ten, 7.0),
            (" 7.5\n", ten, 7.5),
            ("{\"score\": 8}", ten, 8.0),
            ("{\"result\": \"6\"}", ten, 6.0),
            ("```json\n{\"Score\": 3}\n```", ten, 3.0),
            (
                "Here is my verdict: {\"score\": 9, \"reason\": \"good\"}",
                ten,
                9.0,
            ),
            ("Score: 7/10", ten, 7.0),
            ("**Rating**: 4", ten, 4.0),
            (
                "The answer mentions GPT-4 and 2024 facts; I give it 8.",
                ten,
                8.0,
            ),
            ("Score: 7/10", (0.0, 1.0), 0.7),
            ("3/5", (1.0, 5.0), 3.0),
            ("0.25", (0.0, 1.0), 0.25),
            (
                "<think>Score 3? No, 1 error in 2 steps.</think>\nScore: 8",
                ten,
                8.0,
            ),
        ];
        for (reply, range, expected) in cases {
            assert_eq!(
                parse_score(reply, range),
                Ok(expected),
                "{reply:?} in {range:?}"
            );
        }
    }

    #[test]
    fn unparsable_or_out_of_range_scores_are_errors() {
        let ten = (0.0, 10.0);
        assert!(parse_score("I cannot grade this.", ten)
            .unwrap_err()
            .contains("no score"));
        assert!(parse_score("{\"score\": 11}", ten)
            .unwrap_err()
            .contains("outside the range"));
        assert!(parse_score("Score: 12", ten)
            .unwrap_err()
            .contains("outside the range"));
        assert!(parse_score("There were 40 apples and 300 pears", ten)
            .unwrap_err()
            .contains("found 40, 300"));
        assert!(parse_score("3/4", (1.0, 5.0))
            .unwrap_err()
            .contains("found 3/4"));
        assert!(parse_score("Score: 3/4", (1.0, 5.0))
            .unwrap_err()
            .contains("does not fit"));
        assert!(parse_score("{\"verdict\": \"good\"}", ten).is_err());
    }

    #[test]
    fn labels_match_exactly_one() {
        let labels: Vec<String> = ["correct", "incorrect", "partially correct"]
            .map(String::from)
            .to_vec();
        let cases = [
            ("correct", "correct"),
            ("  Incorrect.\n", "incorrect"),
            ("\"CORRECT\"", "correct"),
            ("{\"label\": \"incorrect\"}", "incorrect"),
            (
                "```json\n{\"label\": \"partially correct\"}\n```",
                "partially correct",
            ),
            ("**Partially correct**", "partially correct"),
            ("The answer is incorrect because 2+2=4.", "incorrect"),
            ("<think>correct? incorrect?</think> correct", "correct"),
        ];
        for (reply, expected) in cases {
            assert_eq!(match_label(reply, &labels), Ok(expected), "{reply:?}");
        }
        assert!(match_label("I am not sure", &labels)
            .unwrap_err()
            .contains("names none"));
        let ambiguous =
            match_label("It is partially correct, and not incorrect", &labels).unwrap_err();
        assert!(ambiguous.contains("ambiguous"), "{ambiguous}");
    }
}
