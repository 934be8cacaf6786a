//! The chat-completions request, typed: parsed once from the body into [`ChatRequest`], whose
//! known fields the router reads and whose every other field (`rest`) goes upstream untouched.
//! What routing needs from it is a [`Conversation`] and the [`Overrides`].

use router_policy::{estimate_chat_tokens, estimate_tokens, Capabilities, Capability, Mode};
use router_store::Metadata;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::ApiError;

/// Tokens charged per image in the prompt estimate (a high-detail 1024×1024 image at OpenAI).
pub const IMAGE_TOKENS: usize = 765;

/// A chat-completions request body.
///
/// `store`, `metadata` and `router` are the router's and are not serialised (so not forwarded);
/// every field the router does not read stays in `rest` and is serialised back as it came.
///
/// ```
/// use router_server::{ChatRequest, Message};
///
/// let body = br#"{"model": "model-router", "temperature": 0.2, "store": true,
///     "messages": [{"role": "user", "content": "Hi", "name": "ann"}]}"#;
/// let request = ChatRequest::from_slice(body).unwrap();
/// assert!(matches!(request.messages[0], Message::User(_)));
/// let forwarded = serde_json::to_value(&request).unwrap();
/// assert_eq!(forwarded["temperature"], 0.2);
/// assert_eq!(forwarded["messages"][0]["name"], "ann");
/// assert!(forwarded.get("store").is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(expecting = "a JSON object: a chat-completions request")]
pub struct ChatRequest {
    /// The router's name or a catalog model (the Azure path names it instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The conversation; never empty.
    #[serde(deserialize_with = "non_empty")]
    pub messages: Vec<Message>,
    /// Tool definitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    /// Legacy function definitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub functions: Option<Vec<FunctionDef>>,
    /// The answer's format (`json_schema` needs the capability).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    /// The answer's token limit (older name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// The answer's token limit; wins over `max_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    /// A reasoning model's effort (needs the capability).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<String>,
    /// Server-sent events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Keep the exchange in the router's store (not forwarded).
    #[serde(default, skip_serializing)]
    pub store: Option<bool>,
    /// The stored record's metadata (not forwarded).
    #[serde(default, skip_serializing, deserialize_with = "metadata")]
    pub metadata: Metadata,
    /// Routing overrides (not forwarded); they win over the `x-router-*` headers.
    #[serde(default, skip_serializing)]
    pub router: Option<Overrides>,
    /// Every other field, forwarded untouched.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// One message, tagged by its `role`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "lowercase", from = "RoleAndTurn")]
pub enum Message {
    /// Instructions.
    System(Turn),
    /// Instructions (newer name).
    Developer(Turn),
    /// The user.
    User(Turn),
    /// The model.
    Assistant(Turn),
    /// A tool's result.
    Tool(Turn),
    /// A legacy function's result.
    Function(Turn),
}

/// What a message says, whatever its role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    /// Text, parts or null; absent is kept absent.
    #[serde(default, skip_serializing_if = "Content::is_absent")]
    pub content: Content,
    /// The model's tool calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// Every other field (`name`, `tool_call_id`, ...), forwarded untouched.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// A message as it comes: its role beside its other fields (deserialised through this, so that
/// an error names its path, e.g. `messages[2].content`).
#[derive(Deserialize)]
struct RoleAndTurn {
    role: Role,
    #[serde(default)]
    content: Content,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCall>>,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Function,
}

impl From<RoleAndTurn> for Message {
    fn from(m: RoleAndTurn) -> Self {
        let turn = Turn {
            content: m.content,
            tool_calls: m.tool_calls,
            rest: m.rest,
        };
        match m.role {
            Role::System => Message::System(turn),
            Role::Developer => Message::Developer(turn),
            Role::User => Message::User(turn),
            Role::Assistant => Message::Assistant(turn),
            Role::Tool => Message::Tool(turn),
            Role::Function => Message::Function(turn),
        }
    }
}

impl Message {
    /// The role, as written.
    pub fn role(&self) -> &'static str {
        match self {
            Message::System(_) => "system",
            Message::Developer(_) => "developer",
            Message::User(_) => "user",
            Message::Assistant(_) => "assistant",
            Message::Tool(_) => "tool",
            Message::Function(_) => "function",
        }
    }

    /// What the message says.
    pub fn turn(&self) -> &Turn {
        match self {
            Message::System(t)
            | Message::Developer(t)
            | Message::User(t)
            | Message::Assistant(t)
            | Message::Tool(t)
            | Message::Function(t) => t,
        }
    }
}

/// A message's `content`.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Content {
    /// No `content` field.
    #[default]
    Absent,
    /// `null`.
    Null,
    /// A string.
    Text(String),
    /// An array of parts.
    Parts(Vec<Part>),
}

impl Content {
    fn is_absent(&self) -> bool {
        matches!(self, Content::Absent)
    }
}

impl Serialize for Content {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Content::Absent | Content::Null => s.serialize_unit(),
            Content::Text(text) => s.serialize_str(text),
            Content::Parts(parts) => parts.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ContentVisitor;
        impl<'de> Visitor<'de> for ContentVisitor {
            type Value = Content;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string, an array of parts or null")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Content, E> {
                Ok(Content::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Content, E> {
                Ok(Content::Null)
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Content, E> {
                Ok(Content::Text(text.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Content, A::Error> {
                let mut parts = Vec::new();
                while let Some(part) = seq.next_element()? {
                    parts.push(part);
                }
                Ok(Content::Parts(parts))
            }
        }
        d.deserialize_any(ContentVisitor)
    }
}

/// A content part: text, an image, or any other kind (kept as it came).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Part {
    /// `text`, `input_text`, `image_url`, `input_image`, `image`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// A text part's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Every other field.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

impl Part {
    /// The text of a text part.
    fn text(&self) -> Option<&str> {
        matches!(self.kind.as_str(), "text" | "input_text")
            .then_some(self.text.as_deref())
            .flatten()
    }

    fn is_image(&self) -> bool {
        matches!(self.kind.as_str(), "image_url" | "input_image" | "image")
    }
}

/// A tool call of an assistant message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The called function (`name`, `arguments`); read only as text for routing, so kept as
    /// JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<Value>,
    /// Every other field (`id`, `type`, ...).
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// A tool definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    /// A function tool's definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionDef>,
    /// Every other field (`type`, ...).
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// A function definition (in a tool, or a legacy `functions` entry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionDef {
    /// Its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Every other field (`parameters`, ...).
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// `response_format`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseFormat {
    /// `text`, `json_object` or `json_schema`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Every other field (`json_schema`, ...).
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// Routing overrides of one request: the body's `router` object, or the `x-router-*` headers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// Mode.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Custom band.
    #[serde(default)]
    pub band: Option<f64>,
    /// Subset.
    #[serde(default)]
    pub subset: Option<Vec<String>>,
}

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

fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Message>, D::Error> {
    let messages = Vec::<Message>::deserialize(d)?;
    if messages.is_empty() {
        return Err(de::Error::custom("`messages` must not be empty"));
    }
    Ok(messages)
}

fn metadata<'de, D: Deserializer<'de>>(d: D) -> Result<Metadata, D::Error> {
    Metadata::from_json(&Value::deserialize(d)?).map_err(de::Error::custom)
}

impl ChatRequest {
    /// Parses a request body; an error is a 400 naming the parameter at fault.
    pub fn from_slice(body: &[u8]) -> Result<Self, ApiError> {
        let mut json = serde_json::Deserializer::from_slice(body);
        let request = serde_path_to_error::deserialize(&mut json).map_err(rejected)?;
        json.end().map_err(|e| not_json(&e))?;
        Ok(request)
    }

    /// Reads a request body already parsed as JSON.
    pub fn from_value(body: Value) -> Result<Self, ApiError> {
        serde_path_to_error::deserialize(body).map_err(rejected)
    }

    /// What routing reads. `recent_turns` is how many non-system messages, from the end, the
    /// router reads (all system/developer messages always count).
    pub fn conversation(&self, recent_turns: usize) -> Conversation {
        let mut needs = Capabilities::default();
        let mut images = 0usize;
        let turns: Vec<(&str, String)> = self
            .messages
            .iter()
            .map(|m| (m.role(), text_of(m, &mut images, &mut needs)))
            .collect();
        let defs: Vec<&FunctionDef> = self.function_defs().collect();
        let tools_summary = (!defs.is_empty()).then(|| tools_summary(&defs));
        let routing_text = router_embed::routing_text(
            turns.iter().map(|(r, t)| (*r, t.as_str())),
            tools_summary.as_deref(),
            recent_turns,
        );
        let prompt_tokens = estimate_chat_tokens(turns.iter().map(|(r, t)| (*r, t.as_str())))
            .saturating_add(self.tool_tokens())
            .saturating_add(images.saturating_mul(IMAGE_TOKENS));
        Conversation {
            routing_text,
            prompt_tokens,
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            needs: self.needs(needs, images > 0, !defs.is_empty()),
            stream: self.stream.unwrap_or(false),
        }
    }

    /// The overrides: the `x-router-mode`, `x-router-band` and `x-router-subset`
    /// (comma-separated) headers, then the body's `router` fields over them.
    pub fn overrides(&self, headers: &axum::http::HeaderMap) -> Result<Overrides, ApiError> {
        let mut o = header_overrides(headers)?;
        if let Some(body) = &self.router {
            o.mode = body.mode.or(o.mode);
            o.band = body.band.or(o.band);
            o.subset = body.subset.clone().or(o.subset);
        }
        Ok(o)
    }

    /// The request as forwarded upstream (without `store`, `metadata` and `router`).
    pub fn forwarded(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(body)) => body,
            // A struct of JSON values always serialises to an object.
            _ => Map::new(),
        }
    }

    /// Every function definition: the tools' and the legacy `functions`.
    fn function_defs(&self) -> impl Iterator<Item = &FunctionDef> {
        let tools = self
            .tools
            .iter()
            .flatten()
            .filter_map(|t| t.function.as_ref());
        tools.chain(self.functions.iter().flatten())
    }

    /// The estimated tokens of the tool definitions, as sent.
    fn tool_tokens(&self) -> usize {
        [
            self.tools
                .as_ref()
                .and_then(|t| serde_json::to_string(t).ok()),
            self.functions
                .as_ref()
                .and_then(|f| serde_json::to_string(f).ok()),
        ]
        .iter()
        .flatten()
        .map(|json| estimate_tokens(json))
        .sum()
    }

    /// The capabilities needed: those the messages showed, plus images, tools, a JSON schema
    /// and a reasoning effort.
    fn needs(&self, mut needs: Capabilities, images: bool, tools: bool) -> Capabilities {
        let json_schema = self
            .response_format
            .as_ref()
            .is_some_and(|f| f.kind == "json_schema");
        for (needed, capability) in [
            (images, Capability::Vision),
            (
                tools || self.tools.as_ref().is_some_and(|t| !t.is_empty()),
                Capability::Tools,
            ),
            (json_schema, Capability::JsonSchema),
            (self.reasoning_effort.is_some(), Capability::Reasoning),
        ] {
            if needed {
                needs = needs.with(capability);
            }
        }
        needs
    }
}

/// A message's text for routing (its parts' texts, then its tool calls' functions as JSON);
/// counts its images, and notes a tool conversation.
fn text_of(message: &Message, images: &mut usize, needs: &mut Capabilities) -> String {
    let turn = message.turn();
    let mut text = match &turn.content {
        Content::Absent | Content::Null => String::new(),
        Content::Text(text) => text.clone(),
        Content::Parts(parts) => {
            *images += parts.iter().filter(|p| p.is_image()).count();
            let texts: Vec<&str> = parts.iter().filter_map(Part::text).collect();
            texts.join("\n")
        }
    };
    if matches!(message, Message::Tool(_) | Message::Function(_)) || turn.tool_calls.is_some() {
        *needs = needs.with(Capability::Tools);
    }
    for function in turn
        .tool_calls
        .iter()
        .flatten()
        .filter_map(|c| c.function.as_ref())
    {
        text.push_str(&function.to_string());
    }
    text
}

/// `Tools:` and a line `- name: description` for each definition.
fn tools_summary(defs: &[&FunctionDef]) -> String {
    let mut summary = String::from("Tools:");
    for def in defs {
        let name = def.name.as_deref().unwrap_or("");
        let description = def.description.as_deref().unwrap_or("");
        summary.push_str(&format!("\n- {name}: {description}"));
    }
    summary
}

fn header_overrides(headers: &axum::http::HeaderMap) -> Result<Overrides, ApiError> {
    let header = |name: &str| -> Result<Option<String>, ApiError> {
        match headers.get(name) {
            None => Ok(None),
            Some(v) => v.to_str().map(|s| Some(s.trim().to_string())).map_err(|_| {
                ApiError::invalid(format!("header `{name}` is not visible ASCII"), Some(name))
            }),
        }
    };
    let mut o = Overrides::default();
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
        let names = s.split(',').map(str::trim).filter(|x| !x.is_empty());
        o.subset = Some(names.map(str::to_string).collect());
    }
    Ok(o)
}

/// A body that is not JSON.
fn not_json(e: &serde_json::Error) -> ApiError {
    ApiError::invalid(format!("the request body is not valid JSON: {e}"), None)
}

/// A body that does not have a chat request's shape: a 400 naming the parameter at fault (for
/// a missing, unknown or repeated field, the field itself), `invalid_metadata` for `metadata`.
fn rejected(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    if !inner.is_data() {
        return not_json(&inner);
    }
    let message = inner.to_string();
    let field = ["missing field `", "unknown field `", "duplicate field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next());
    let param = match (path.as_str(), field) {
        (".", None) => None,
        (".", Some(field)) => Some(field.to_string()),
        // (An unknown or repeated field is already the last segment of its path.)
        (path, Some(field)) if !path.ends_with(&format!(".{field}")) => {
            Some(format!("{path}.{field}"))
        }
        (path, _) => Some(path.to_string()),
    };
    match param {
        Some(p) if p == "metadata" => ApiError::InvalidMetadata(message),
        Some(p) if message.starts_with("missing field") => {
            ApiError::invalid(format!("missing required parameter: `{p}`"), Some(&p))
        }
        param => ApiError::invalid(message, param.as_deref()),
    }
}

/// Reads the conversation of a chat-completions body (see [`ChatRequest::conversation`]).
///
/// ```
/// let body = serde_json::json!({"messages": [{"role": "user", "content": "Hi"}]});
/// let conversation = router_server::analyse(body.as_object().unwrap(), 6).unwrap();
/// assert_eq!(conversation.routing_text, "Hi");
/// ```
pub fn analyse(body: &Map<String, Value>, recent_turns: usize) -> Result<Conversation, ApiError> {
    let request = ChatRequest::from_value(Value::Object(body.clone()))?;
    Ok(request.conversation(recent_turns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ChatRequest, ApiError> {
        ChatRequest::from_slice(v.to_string().as_bytes())
    }

    #[test]
    fn routes_on_the_conversation() {
        let request = parse(json!({
            "messages": [
                {"role": "system", "content": "You are a SQL expert."},
                {"role": "user", "content": "old question"},
                {"role": "assistant", "content": "old answer"},
                {"role": "user", "content": [{"type": "text", "text": "What is in this picture?"}, {"type": "image_url", "image_url": {"url": "data:"}}]}
            ],
            "tools": [{"type": "function", "function": {"name": "run_sql", "description": "Run a query"}}],
            "max_tokens": 100
        }))
        .unwrap();
        let c = request.conversation(2);
        assert!(c.routing_text.starts_with("You are a SQL expert."));
        assert!(c.routing_text.contains("run_sql: Run a query"));
        assert!(c.routing_text.ends_with("What is in this picture?"));
        assert!(c.routing_text.contains("old answer") && !c.routing_text.contains("old question"));
        assert!(c.needs.tools && c.needs.vision && !c.needs.json_schema && !c.needs.reasoning);
        assert_eq!(c.max_tokens, Some(100));
        assert!(c.prompt_tokens > IMAGE_TOKENS);
        assert!(!c.stream);
    }

    #[test]
    fn messages_are_tagged_by_role() {
        let request = parse(json!({"messages": [
            {"role": "developer", "content": "d"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "t1", "content": "42"},
        ], "response_format": {"type": "json_schema", "json_schema": {}}, "reasoning_effort": "low"}))
        .unwrap();
        let roles: Vec<&str> = request.messages.iter().map(Message::role).collect();
        assert_eq!(roles, ["developer", "assistant", "tool"]);
        assert!(
            matches!(&request.messages[1], Message::Assistant(t) if t.content == Content::Null)
        );
        assert!(matches!(&request.messages[2], Message::Tool(t) if t.rest["tool_call_id"] == "t1"));
        let c = request.conversation(6);
        assert!(c.needs.tools && c.needs.json_schema && c.needs.reasoning && !c.needs.vision);
        assert!(
            c.routing_text.contains(r#"{"arguments":"{}","name":"f"}"#),
            "{}",
            c.routing_text
        );
    }

    #[test]
    fn unknown_fields_round_trip_untouched() {
        let body = json!({
            "model": "model-router", "temperature": 0.7, "seed": 18446744073709551615u64,
            "stream_options": {"include_usage": true}, "logit_bias": {"50256": -100},
            "messages": [
                {"role": "user", "name": "ann", "content": [{"type": "input_audio", "input_audio": {"data": "x"}}, {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}], "refusal": null},
                {"role": "tool", "tool_call_id": "c"},
            ],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": true}}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "s"}},
            "max_completion_tokens": 9, "stream": true,
            "store": true, "metadata": {"k": "v"}, "router": {"mode": "cost"},
        });
        let request = parse(body.clone()).unwrap();
        let mut expected = body.as_object().cloned().unwrap();
        for router_own in ["store", "metadata", "router"] {
            expected.remove(router_own);
        }
        assert_eq!(request.forwarded(), expected);
        assert_eq!(request.store, Some(true));
        assert_eq!(request.metadata.get("k"), Some("v"));
        assert_eq!(
            request.router.as_ref().and_then(|r| r.mode),
            Some(Mode::Cost)
        );
    }

    #[test]
    fn bad_shapes_are_400s_naming_the_param() {
        for (bad, param) in [
            (json!({}), Some("messages")),
            (json!({"messages": []}), Some("messages")),
            (json!({"messages": "hi"}), Some("messages")),
            (json!({"messages": [7]}), Some("messages[0]")),
            (
                json!({"messages": [{"content": "x"}]}),
                Some("messages[0].role"),
            ),
            (
                json!({"messages": [{"role": "robot", "content": "x"}]}),
                Some("messages[0].role"),
            ),
            (
                json!({"messages": [{"role": "user", "content": 5}]}),
                Some("messages[0].content"),
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"text": "x"}]}]}),
                Some("messages[0].content[0].type"),
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}),
                Some("stream"),
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}),
                Some("max_tokens"),
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "model": 7}),
                Some("model"),
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "tools": {}}),
                Some("tools"),
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "store": "yes"}),
                Some("store"),
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "router": {"mood": "x"}}),
                Some("router.mood"),
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "router": {"mode": "fast"}}),
                Some("router.mode"),
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "router": 1}),
                Some("router"),
            ),
            (json!([1, 2]), None),
        ] {
            let e = parse(bad.clone()).unwrap_err();
            assert_eq!((e.status().as_u16(), e.param()), (400, param), "{bad}: {e}");
            assert!(!e.to_string().is_empty());
        }
        let e = parse(json!({"messages": [{"role": "user"}], "metadata": {"k": 1}})).unwrap_err();
        assert_eq!(
            (e.code(), e.param()),
            (Some("invalid_metadata"), Some("metadata"))
        );
        for not_json in [
            &b"{not json"[..],
            b"",
            b"{\"messages\": [{\"role\": \"user\"}]} trailing",
        ] {
            let e = ChatRequest::from_slice(not_json).unwrap_err();
            assert_eq!((e.status().as_u16(), e.param()), (400, None));
            assert!(
                e.to_string()
                    .starts_with("the request body is not valid JSON"),
                "{e}"
            );
        }
        let twice = br#"{"messages": [{"role": "user", "role": "user"}]}"#;
        let e = ChatRequest::from_slice(twice).unwrap_err();
        assert_eq!(e.param(), Some("messages[0].role"), "{e}");
        let e = parse(json!({"model": "m"})).unwrap_err();
        assert_eq!(e.to_string(), "missing required parameter: `messages`");
    }

    #[test]
    fn overrides_body_beats_headers() {
        let mut h = axum::http::HeaderMap::new();
        h.insert("x-router-mode", "cost".parse().unwrap());
        h.insert("x-router-subset", "a, b".parse().unwrap());
        let request = parse(
            json!({"messages": [{"role": "user"}], "router": {"mode": "quality", "band": 0.1}}),
        );
        let o = request.unwrap().overrides(&h).unwrap();
        assert_eq!(o.mode, Some(Mode::Quality));
        assert_eq!(o.band, Some(0.1));
        assert_eq!(o.subset, Some(vec!["a".to_string(), "b".to_string()]));
        h.insert("x-router-band", "wide".parse().unwrap());
        let request = parse(json!({"messages": [{"role": "user"}]})).unwrap();
        assert_eq!(
            request.overrides(&h).unwrap_err().param(),
            Some("x-router-band")
        );
    }
}
