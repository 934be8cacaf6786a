//! What one routing call is given: a prompt or a chat, and the request's options.

use router_policy::{
    estimate_chat_tokens, estimate_tokens, Capabilities, Capability, Mode, RouteRequest,
};

use crate::RoutingError;

/// How many non-system chat messages, counted from the end, the router reads by default (the
/// server's `router.recent_turns` default too).
pub const DEFAULT_RECENT_TURNS: usize = 6;

/// One chat message: its role (`system`, `developer`, `user`, `assistant`, `tool`, …) and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// The role.
    pub role: String,
    /// The text content (the text parts of a multi-part message, joined by newlines).
    pub content: String,
}

impl ChatMessage {
    /// A message of `role` with `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The text a request is routed on.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// A single prompt: the router reads all of it; its tokens are [`estimate_tokens`] of it.
    Text(String),
    /// A conversation: the router reads [`routing_text`] of it; its tokens are
    /// [`estimate_chat_tokens`] of every message.
    Chat(Vec<ChatMessage>),
}

/// One request to route: the prompt or chat, plus the options a request may set. Every option
/// left unset takes the deployment's default ([`router_policy::PolicyDefaults`]).
///
/// ```
/// use router_embed::{ChatMessage, RouteInput};
/// use router_policy::{Capability, Mode};
///
/// let one = RouteInput::prompt("Summarise this paragraph.").mode(Mode::Cost).max_tokens(200);
/// let chat = RouteInput::chat([
///     ChatMessage::new("system", "You are a SQL expert."),
///     ChatMessage::new("user", "Which index speeds up this query?"),
/// ])
/// .need(Capability::Tools)
/// .subset(["gpt-4-1106-preview", "mistral-7b-chat"]);
/// assert_eq!(one.max_tokens, Some(200));
/// assert!(chat.needs.tools);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RouteInput {
    /// What the router reads.
    pub prompt: Prompt,
    /// Overrides the deployment's mode.
    pub mode: Option<Mode>,
    /// A custom band in `[0, 1]`, overriding every mode.
    pub band: Option<f64>,
    /// Narrows the deployment's subset to these models.
    pub subset: Option<Vec<String>>,
    /// The request's `max_tokens` (for the context-window check and the cost estimate).
    pub max_tokens: Option<u32>,
    /// The capabilities the request needs.
    pub needs: Capabilities,
    /// Models to skip, e.g. those whose deployments are all saturated.
    pub exclude: Vec<String>,
    /// Prompt tokens the text does not show (images, tool definitions), added to the estimate.
    pub extra_tokens: usize,
}

impl RouteInput {
    /// A single prompt with every option unset.
    pub fn prompt(text: impl Into<String>) -> Self {
        Self::with(Prompt::Text(text.into()))
    }

    /// A conversation with every option unset.
    pub fn chat(messages: impl IntoIterator<Item = ChatMessage>) -> Self {
        Self::with(Prompt::Chat(messages.into_iter().collect()))
    }

    fn with(prompt: Prompt) -> Self {
        RouteInput {
            prompt,
            mode: None,
            band: None,
            subset: None,
            max_tokens: None,
            needs: Capabilities::default(),
            exclude: Vec::new(),
            extra_tokens: 0,
        }
    }

    /// Sets the mode.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = Some(mode);
        self
    }

    /// Sets a custom band.
    pub fn band(mut self, band: f64) -> Self {
        self.band = Some(band);
        self
    }

    /// Narrows the subset.
    pub fn subset<I, S>(mut self, models: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.subset = Some(models.into_iter().map(Into::into).collect());
        self
    }

    /// Sets `max_tokens`.
    pub fn max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }

    /// Adds one needed capability.
    pub fn need(mut self, capability: Capability) -> Self {
        self.needs = self.needs.with(capability);
        self
    }

    /// Skips these models.
    pub fn exclude<I, S>(mut self, models: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.exclude = models.into_iter().map(Into::into).collect();
        self
    }

    /// Adds prompt tokens the text does not show (images, tool definitions).
    pub fn extra_tokens(mut self, tokens: usize) -> Self {
        self.extra_tokens = tokens;
        self
    }

    /// The text the router scores (see [`Prompt`]); a chat without messages is an error.
    pub(crate) fn routing_text(&self, recent_turns: usize) -> Result<String, RoutingError> {
        match &self.prompt {
            Prompt::Text(text) => Ok(text.clone()),
            Prompt::Chat(messages) if messages.is_empty() => Err(RoutingError::EmptyChat),
            Prompt::Chat(messages) => Ok(routing_text(
                messages
                    .iter()
                    .map(|m| (m.role.as_str(), m.content.as_str())),
                None,
                recent_turns,
            )),
        }
    }

    /// The policy's view of the request.
    pub(crate) fn request(&self) -> RouteRequest {
        let prompt_tokens = match &self.prompt {
            Prompt::Text(text) => estimate_tokens(text),
            Prompt::Chat(messages) => estimate_chat_tokens(
                messages
                    .iter()
                    .map(|m| (m.role.as_str(), m.content.as_str())),
            ),
        };
        let mut request =
            RouteRequest::new(prompt_tokens.saturating_add(self.extra_tokens)).needs(self.needs);
        request.mode = self.mode;
        request.band = self.band;
        request.subset = self.subset.clone();
        request.max_tokens = self.max_tokens;
        request.exclude = self.exclude.clone();
        request
    }
}

/// The text the router reads from a conversation of `(role, text)` messages: every non-empty
/// `system` or `developer` message, then `tools` (a summary of the request's tool definitions)
/// when given, then the non-empty texts among the last `recent_turns` (at least 1) other
/// messages, joined by blank lines.
///
/// Why not the whole conversation: the quality a model reaches depends on what is asked now and
/// on the standing instructions, not on turns long past; and the encoder truncates long input,
/// which would cut the newest turn first.
///
/// ```
/// use router_embed::routing_text;
/// let chat = [("system", "Be brief."), ("user", "old question"), ("assistant", "old answer"), ("user", "new question")];
/// assert_eq!(routing_text(chat, None, 2), "Be brief.\n\nold answer\n\nnew question");
/// assert_eq!(routing_text(chat, Some("Tools:\n- search: web search"), 1), "Be brief.\n\nTools:\n- search: web search\n\nnew question");
/// ```
pub fn routing_text<'a, I>(messages: I, tools: Option<&str>, recent_turns: usize) -> String
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let is_system = |role: &str| role == "system" || role == "developer";
    let messages: Vec<(&str, &str)> = messages.into_iter().collect();
    let others: Vec<&str> = messages
        .iter()
        .filter(|(role, _)| !is_system(role))
        .map(|(_, text)| *text)
        .collect();
    let recent = &others[others.len().saturating_sub(recent_turns.max(1))..];
    let system = messages
        .iter()
        .filter(|(role, text)| is_system(role) && !text.is_empty())
        .map(|(_, text)| *text);
    let parts: Vec<&str> = system
        .chain(tools)
        .chain(recent.iter().copied().filter(|text| !text.is_empty()))
        .collect();
    parts.join("\n\n")
}
