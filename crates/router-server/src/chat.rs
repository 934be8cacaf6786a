//! Reading a chat-completions request: what the router scores and what the policy checks.

use router_policy::{estimate_chat_tokens, estimate_tokens, Capabilities, Capability, Mode};
use serde_json::{Map, Value};

use crate::ApiError;

/// Tokens charged per image in the prompt estimate (a high-detail 1024×1024 image at OpenAI).
pub const IMAGE_TOKENS: usize = 765;

/// What routing needs to know about a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    /// The text the router scores: system prompts, tool definitions, then the most recent turns.
    pub routing_text: String,
    /// The estimated prompt tokens of the whole request.
    pub prompt_tokens: usize,
    /// `max_completion_tokens` or `max_tokens`.
    pub max_tokens: Option<u32>,
    /// Capabilities the request needs (tools, vision, JSON schema, reasoning).
    pub needs: Capabilities,
    /// `stream: true`.
    pub stream: bool,
}

/// Routing overrides of one request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// Mode.
    pub mode: Option<Mode>,
    /// Custom band.
    pub band: Option<f64>,
    /// Subset.
    pub subset: Option<Vec<String>>,
}

fn text_of(content: &Value, images: &mut usize, param: &str) -> Result<String, ApiError> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                let Some(part) = part.as_object() else {
                    return Err(ApiError::invalid(
                        "a content part must be an object",
                        Some(&format!("{param}[{j}]")),
                    ));
                };
                match part.get("type").and_then(Value::as_str) {
                    Some("text") | Some("input_text") => {
                        if let Some(t) = part.get("text").and_then(Value::as_str) {
                            if !text.is_empty() {
                                text.push('\n');
                            }
                            text.push_str(t);
                        }
                    }
                    Some("image_url") | Some("input_image") | Some("image") => *images += 1,
                    Some(_) => {}
                    None => {
                        return Err(ApiError::invalid(
                            "a content part needs a string `type`",
                            Some(&format!("{param}[{j}].type")),
                        ))
                    }
                }
            }
            Ok(text)
        }
        _ => Err(ApiError::invalid(
            "`content` must be a string, an array of parts or null",
            Some(param),
        )),
    }
}

/// Reads the conversation of a chat-completions body. `recent_turns` is how many non-system
/// messages, from the end, the router reads (all system/developer messages always count).
pub fn analyse(body: &Map<String, Value>, recent_turns: usize) -> Result<Conversation, ApiError> {
    let messages = match body.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid(
                "`messages` must not be empty",
                Some("messages"),
            ))
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "`messages` must be an array",
                Some("messages"),
            ))
        }
        None => {
            return Err(ApiError::invalid(
                "missing required parameter: `messages`",
                Some("messages"),
            ))
        }
    };
    let mut needs = Capabilities::default();
    let mut images = 0usize;
    let mut turns: Vec<(String, String)> = Vec::with_capacity(messages.len());
    for (i, message) in messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        let Some(message) = message.as_object() else {
            return Err(ApiError::invalid(
                "each message must be an object",
                Some(&param),
            ));
        };
        let Some(role) = message.get("role").and_then(Value::as_str) else {
            return Err(ApiError::invalid(
                "each message needs a string `role`",
                Some(&format!("{param}.role")),
            ));
        };
        let mut text = text_of(
            message.get("content").unwrap_or(&Value::Null),
            &mut images,
            &format!("{param}.content"),
        )?;
        if role == "tool"
            || role == "function"
            || message.get("tool_calls").is_some_and(|v| !v.is_null())
        {
            needs = needs.with(Capability::Tools);
        }
        if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
            for call in calls {
                if let Some(f) = call.get("function") {
                    text.push_str(&f.to_string());
                }
            }
        }
        turns.push((role.to_string(), text));
    }
    if images > 0 {
        needs = needs.with(Capability::Vision);
    }
    let tools = ["tools", "functions"]
        .iter()
        .filter_map(|k| body.get(*k))
        .filter_map(Value::as_array)
        .flatten()
        .collect::<Vec<_>>();
    if !tools.is_empty() {
        needs = needs.with(Capability::Tools);
    }
    if body
        .get("response_format")
        .and_then(|r| r.get("type"))
        .and_then(Value::as_str)
        .is_some_and(|t| t == "json_schema")
    {
        needs = needs.with(Capability::JsonSchema);
    }
    if body.get("reasoning_effort").is_some_and(|v| !v.is_null()) {
        needs = needs.with(Capability::Reasoning);
    }

    let max_tokens = match body
        .get("max_completion_tokens")
        .filter(|v| !v.is_null())
        .or(body.get("max_tokens").filter(|v| !v.is_null()))
    {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    ApiError::invalid(
                        "`max_tokens` must be a non-negative integer",
                        Some("max_tokens"),
                    )
                })?,
        ),
    };
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::invalid(
                "`stream` must be a boolean",
                Some("stream"),
            ))
        }
    };

    // The routing text: every system prompt, the tools, then the last `recent_turns` turns.
    let tools_summary = (!tools.is_empty()).then(|| {
        let mut t = String::from("Tools:");
        for tool in &tools {
            let f = tool.get("function").unwrap_or(tool);
            let name = f.get("name").and_then(Value::as_str).unwrap_or("");
            let description = f.get("description").and_then(Value::as_str).unwrap_or("");
            t.push_str(&format!("\n- {name}: {description}"));
        }
        t
    });
    let routing_text = router_embed::routing_text(
        turns.iter().map(|(r, t)| (r.as_str(), t.as_str())),
        tools_summary.as_deref(),
        recent_turns,
    );

    let mut prompt_tokens =
        estimate_chat_tokens(turns.iter().map(|(r, t)| (r.as_str(), t.as_str())));
    if !tools.is_empty() {
        let json = serde_json::to_string(&tools).unwrap_or_default();
        prompt_tokens = prompt_tokens.saturating_add(estimate_tokens(&json));
    }
    prompt_tokens = prompt_tokens.saturating_add(images.saturating_mul(IMAGE_TOKENS));

    Ok(Conversation {
        routing_text,
        prompt_tokens,
        max_tokens,
        needs,
        stream,
    })
}

/// Reads overrides from the body's `router` object (removed from the body) and the headers
/// `x-router-mode`, `x-router-band`, `x-router-subset` (comma-separated). The body wins.
pub fn overrides(
    body: &mut Map<String, Value>,
    headers: &axum::http::HeaderMap,
) -> Result<Overrides, ApiError> {
    let mut o = Overrides::default();
    let header = |name: &str| -> Result<Option<String>, ApiError> {
        match headers.get(name) {
            None => Ok(None),
            Some(v) => v.to_str().map(|s| Some(s.trim().to_string())).map_err(|_| {
                ApiError::invalid(format!("header `{name}` is not visible ASCII"), Some(name))
            }),
        }
    };
    if let Some(m) = header("x-router-mode")? {
        o.mode = Some(m.parse().map_err(|e: router_policy::PolicyError| {
            ApiError::invalid(e.to_string(), Some("x-router-mode"))
        })?);
    }
    if let Some(b) = header("x-router-band")? {
        o.band = Some(b.parse::<f64>().map_err(|_| {
            ApiError::invalid(format!("`{b}` is not a number"), Some("x-router-band"))
        })?);
    }
    if let Some(s) = header("x-router-subset")? {
        o.subset = Some(
            s.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect(),
        );
    }
    match body.remove("router") {
        None | Some(Value::Null) => {}
        Some(Value::Object(r)) => {
            for (k, v) in &r {
                match k.as_str() {
                    "mode" => {
                        let m = v.as_str().ok_or_else(|| {
                            ApiError::invalid("`router.mode` must be a string", Some("router.mode"))
                        })?;
                        o.mode = Some(m.parse().map_err(|e: router_policy::PolicyError| {
                            ApiError::invalid(e.to_string(), Some("router.mode"))
                        })?);
                    }
                    "band" => {
                        o.band = Some(v.as_f64().ok_or_else(|| {
                            ApiError::invalid("`router.band` must be a number", Some("router.band"))
                        })?);
                    }
                    "subset" => {
                        let list = v
                            .as_array()
                            .and_then(|a| {
                                a.iter()
                                    .map(|x| x.as_str().map(str::to_string))
                                    .collect::<Option<Vec<_>>>()
                            })
                            .ok_or_else(|| {
                                ApiError::invalid(
                                    "`router.subset` must be an array of model names",
                                    Some("router.subset"),
                                )
                            })?;
                        o.subset = Some(list);
                    }
                    other => {
                        return Err(ApiError::invalid(
                            format!(
                                "unknown key `{other}` in `router` (expected mode, band, subset)"
                            ),
                            Some(&format!("router.{other}")),
                        ))
                    }
                }
            }
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "`router` must be an object",
                Some("router"),
            ))
        }
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn routes_on_the_conversation() {
        let body = obj(json!({
            "messages": [
                {"role": "system", "content": "You are a SQL expert."},
                {"role": "user", "content": "old question"},
                {"role": "assistant", "content": "old answer"},
                {"role": "user", "content": [{"type": "text", "text": "What is in this picture?"}, {"type": "image_url", "image_url": {"url": "data:"}}]}
            ],
            "tools": [{"type": "function", "function": {"name": "run_sql", "description": "Run a query"}}],
            "max_tokens": 100
        }));
        let c = analyse(&body, 2).unwrap();
        assert!(c.routing_text.starts_with("You are a SQL expert."));
        assert!(c.routing_text.contains("run_sql: Run a query"));
        assert!(c.routing_text.ends_with("What is in this picture?"));
        assert!(c.routing_text.contains("old answer") && !c.routing_text.contains("old question"));
        assert!(c.needs.tools && c.needs.vision && !c.needs.json_schema);
        assert_eq!(c.max_tokens, Some(100));
        assert!(c.prompt_tokens > IMAGE_TOKENS);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            json!({}),
            json!({"messages": []}),
            json!({"messages": "hi"}),
            json!({"messages": [{"content": "x"}]}),
            json!({"messages": [{"role": "user", "content": 5}]}),
            json!({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}),
        ] {
            assert_eq!(analyse(&obj(bad), 6).unwrap_err().status(), 400);
        }
    }

    #[test]
    fn overrides_body_beats_headers() {
        let mut h = axum::http::HeaderMap::new();
        h.insert("x-router-mode", "cost".parse().unwrap());
        h.insert("x-router-subset", "a, b".parse().unwrap());
        let mut body = obj(json!({"router": {"mode": "quality", "band": 0.1}}));
        let o = overrides(&mut body, &h).unwrap();
        assert_eq!(o.mode, Some(Mode::Quality));
        assert_eq!(o.band, Some(0.1));
        assert_eq!(o.subset, Some(vec!["a".to_string(), "b".to_string()]));
        assert!(!body.contains_key("router"));
        let mut body = obj(json!({"router": {"mood": "x"}}));
        assert_eq!(
            overrides(&mut body, &axum::http::HeaderMap::new())
                .unwrap_err()
                .param(),
            Some("router.mood")
        );
    }
}
