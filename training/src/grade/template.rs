//! OpenAI's grader templates: `{{item.FIELD}}` (nested: `{{item.a.b}}`) and
//! `{{sample.output_text}}` inside a string, parsed once.

use serde_json::{Map, Value};

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    /// `item.` followed by this path of field names.
    Item(Vec<String>),
    /// `sample.output_text`.
    OutputText,
}

/// A string with `{{...}}` references, parsed once; rendering fills them in.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses `text`; an unclosed `{{` or a reference other than `item.FIELD…` or
    /// `sample.output_text` is an error (the message says which).
    pub(crate) fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| format!("unclosed \"{{{{\" in {text:?}"))?;
            parts.push(Self::reference(after[..end].trim())?);
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template { parts })
    }

    fn reference(name: &str) -> Result<Part, String> {
        if name == "sample.output_text" {
            return Ok(Part::OutputText);
        }
        match name.strip_prefix("item.") {
            Some(path) if path.split('.').all(|field| !field.is_empty()) => {
                Ok(Part::Item(path.split('.').map(str::to_owned).collect()))
            }
            _ => Err(format!("unknown template reference {{{{{name}}}}}; expected {{{{item.FIELD}}}} or {{{{sample.output_text}}}}")),
        }
    }

    /// The text with references filled in: strings as they are, other JSON values as JSON text.
    /// A missing field is an error naming it.
    pub(crate) fn render(
        &self,
        output_text: &str,
        item: &Map<String, Value>,
    ) -> Result<String, String> {
        let mut text = String::new();
        for part in &self.parts {
            match part {
                Part::Text(literal) => text.push_str(literal),
                Part::OutputText => text.push_str(output_text),
                Part::Item(path) => match lookup(item, path) {
                    Some(Value::String(value)) => text.push_str(value),
                    Some(value) => text.push_str(&value.to_string()),
                    None => {
                        return Err(format!(
                            "the row has no field item.{} (used by the template)",
                            path.join(".")
                        ))
                    }
                },
            }
        }
        Ok(text)
    }
}

fn lookup<'v>(item: &'v Map<String, Value>, path: &[String]) -> Option<&'v Value> {
    let (first, rest) = path.split_first()?;
    rest.iter().try_fold(item.get(first)?, |value, field| {
        value.as_object()?.get(field)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn renders_items_nested_fields_and_the_output() {
        let row = item(
            json!({"question": "2+2?", "meta": {"level": {"name": "easy"}, "n": 3}, "tags": ["a"]}),
        );
        let template = Template::parse("Q: {{item.question}} ({{ item.meta.level.name }}, {{item.meta.n}}, {{item.tags}}) A: {{sample.output_text}}").unwrap();
        assert_eq!(
            template.render("4", &row).unwrap(),
            "Q: 2+2? (easy, 3, [\"a\"]) A: 4"
        );
        assert_eq!(
            Template::parse("no references")
                .unwrap()
                .render("x", &row)
                .unwrap(),
            "no references"
        );
    }

    #[test]
    fn missing_fields_and_bad_references_are_errors() {
        let row = item(json!({"meta": {"n": 3}}));
        let missing = Template::parse("{{item.meta.level}}")
            .unwrap()
            .render("", &row)
            .unwrap_err();
        assert!(missing.contains("item.meta.level"), "{missing}");
        let not_object = Template::parse("{{item.meta.n.x}}")
            .unwrap()
            .render("", &row)
            .unwrap_err();
        assert!(not_object.contains("item.meta.n.x"), "{not_object}");
        assert!(Template::parse("{{sample.output_json}}")
            .unwrap_err()
            .contains("sample.output_json"));
        assert!(Template::parse("{{item.}}").is_err());
        assert!(Template::parse("{{item.a")
            .unwrap_err()
            .contains("unclosed"));
    }
}
