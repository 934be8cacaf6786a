//! A tokenizer-free token estimate that errs high.
//!
//! The policy needs the prompt's length before any backend has tokenised it, for every model at
//! once, and different models use different tokenizers. So it uses a cheap bound instead of a
//! tokenizer. Over-estimating only excludes a model whose window was nearly full anyway;
//! under-estimating sends a request that the backend then rejects, which is worse.

/// Tokens added per chat message for the role and the message framing. OpenAI's own
/// accounting uses 3 (plus 1 for a `name`); 4 covers both.
pub const MESSAGE_OVERHEAD_TOKENS: usize = 4;

/// Tokens added once per chat request for priming the assistant's reply (OpenAI counts 3).
pub const REPLY_OVERHEAD_TOKENS: usize = 3;

/// Estimates the number of tokens of `text`, erring high.
///
/// The estimate is the larger of two bounds, each rounded up:
/// - by characters: one token per 3 ASCII characters (English prose averages about 4, code
///   about 3), plus one token per 2 UTF-8 bytes of non-ASCII characters (a CJK character, 3 bytes,
///   counts 1.5 tokens: byte-level BPE tokenizers often spend 1 to 2 on it);
/// - by words: 4 tokens per 3 whitespace-separated words (English averages about 1.3).
///
/// Images are not text: a caller routing a vision request adds their tokens itself.
///
/// ```
/// use router_policy::estimate_tokens;
/// assert_eq!(estimate_tokens(""), 0);
/// assert_eq!(estimate_tokens("hello world"), 4); // 11 chars / 3 = 3.7 -> 4; 2 words * 4/3 -> 3
/// assert_eq!(estimate_tokens("a b c d e f"), 8); // 11 chars -> 4; 6 words * 4/3 = 8
/// assert_eq!(estimate_tokens("你好"), 3);         // 6 bytes / 2
/// ```
pub fn estimate_tokens(text: &str) -> usize {
    let mut ascii: usize = 0;
    let mut other_bytes: usize = 0;
    for c in text.chars() {
        if c.is_ascii() {
            ascii += 1;
        } else {
            other_bytes += c.len_utf8();
        }
    }
    // ascii/3 + other_bytes/2, rounded up once, in integers: (2 ascii + 3 other) / 6.
    let by_chars = ascii
        .saturating_mul(2)
        .saturating_add(other_bytes.saturating_mul(3))
        .div_ceil(6);
    let words = text.split_whitespace().count();
    let by_words = words.saturating_mul(4).div_ceil(3);
    by_chars.max(by_words)
}

/// Estimates one chat message: its role, its content and [`MESSAGE_OVERHEAD_TOKENS`].
///
/// ```
/// use router_policy::{estimate_message_tokens, estimate_tokens, MESSAGE_OVERHEAD_TOKENS};
/// assert_eq!(
///     estimate_message_tokens("user", "hello world"),
///     estimate_tokens("user") + estimate_tokens("hello world") + MESSAGE_OVERHEAD_TOKENS,
/// );
/// ```
pub fn estimate_message_tokens(role: &str, content: &str) -> usize {
    estimate_tokens(role)
        .saturating_add(estimate_tokens(content))
        .saturating_add(MESSAGE_OVERHEAD_TOKENS)
}

/// Estimates a whole chat prompt given as `(role, content)` pairs: the sum of
/// [`estimate_message_tokens`] plus [`REPLY_OVERHEAD_TOKENS`] once.
///
/// ```
/// use router_policy::estimate_chat_tokens;
/// let n = estimate_chat_tokens([("system", "Be brief."), ("user", "What is 2 + 2?")]);
/// // system: 2 + 3 + 4; user: 2 + 7 (5 words) + 4; reply: 3
/// assert_eq!(n, 25);
/// ```
pub fn estimate_chat_tokens<'a, I>(messages: I) -> usize
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    messages
        .into_iter()
        .fold(REPLY_OVERHEAD_TOKENS, |sum, (role, content)| {
            sum.saturating_add(estimate_message_tokens(role, content))
        })
}
