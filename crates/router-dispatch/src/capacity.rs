//! Capacity: what a deployment may take in a minute, what it has taken (a sliding window), what
//! a request is charged, and what the backend's rate-limit headers say is left.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use router_policy::{estimate_chat_tokens, DEFAULT_EXPECTED_OUTPUT_TOKENS};

/// The minute that `capacity_tpm` and `capacity_rpm` are declared per, and the default length
/// of the sliding window they are enforced over ([`crate::DispatchOptions::capacity_window`]).
pub const WINDOW: Duration = Duration::from_secs(60);

/// How long a `x-ratelimit-remaining-*` figure is trusted when its reset header is missing.
const HEADROOM_TRUST: Duration = Duration::from_secs(1);

/// A deployment's declared capacity per sliding minute; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capacity {
    /// Tokens per minute (input estimate + output allowance of each request, see
    /// [`tokens_to_charge`]).
    pub tpm: Option<u64>,
    /// Requests per minute.
    pub rpm: Option<u64>,
}

impl Capacity {
    /// What a sliding window of `length` may hold: the per-minute figures scaled to its length,
    /// rounded up, at least 1 (a 10-second window holds a sixth of the minute's tokens, as Azure
    /// enforces them).
    ///
    /// ```
    /// use std::time::Duration;
    /// use router_dispatch::Capacity;
    /// let capacity = Capacity { tpm: Some(30_000), rpm: Some(180) };
    /// let limit = capacity.over(Duration::from_secs(10));
    /// assert_eq!((limit.tokens, limit.requests), (Some(5_000), Some(30)));
    /// ```
    pub fn over(&self, length: Duration) -> Limit {
        let scale = |per_minute: u64| {
            let scaled = u128::from(per_minute) * length.as_millis() / WINDOW.as_millis();
            u64::try_from(scaled).unwrap_or(u64::MAX).max(1)
        };
        Limit {
            tokens: self.tpm.map(scale),
            requests: self.rpm.map(scale),
            length,
        }
    }
}

/// What one deployment's sliding window may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Tokens in the window; `None` is unlimited.
    pub tokens: Option<u64>,
    /// Requests in the window; `None` is unlimited.
    pub requests: Option<u64>,
    /// The window's length.
    pub length: Duration,
}

impl Limit {
    /// Whether either limit is set.
    pub fn is_set(&self) -> bool {
        self.tokens.is_some() || self.requests.is_some()
    }

    /// The larger of the token and request shares of the limit that `usage` uses, if a limit
    /// is set: 1.0 is full.
    ///
    /// ```
    /// use router_dispatch::{Capacity, WindowUsage, WINDOW};
    /// let limit = Capacity { tpm: Some(1000), rpm: Some(10) }.over(WINDOW);
    /// let usage = WindowUsage { tokens: 250, requests: 5 };
    /// assert_eq!(limit.utilisation(usage), Some(0.5));
    /// assert_eq!(Capacity::default().over(WINDOW).utilisation(usage), None);
    /// ```
    pub fn utilisation(&self, usage: WindowUsage) -> Option<f64> {
        let share = |used: u64, limit: Option<u64>| limit.map(|l| used as f64 / l.max(1) as f64);
        match (
            share(usage.tokens, self.tokens),
            share(usage.requests, self.requests),
        ) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Tokens and requests counted in a deployment's window now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowUsage {
    /// Tokens charged in the last [`WINDOW`].
    pub tokens: u64,
    /// Requests in the last [`WINDOW`].
    pub requests: u64,
}

/// What a reservation in a window answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// The request fits and is now counted.
    Admitted,
    /// The request does not fit; the window has room again after `retry_after`.
    Full {
        /// When enough of the window will have slid out for this request to fit.
        retry_after: Duration,
    },
}

/// A sliding window of one deployment's charged requests (its length is the [`Limit`]'s).
///
/// A request fits when the tokens and requests already in the window plus its own stay within
/// the capacity. An empty window admits any request, so one request larger than the whole
/// capacity is sent (the backend decides) rather than refused forever.
#[derive(Debug, Default)]
pub struct Window {
    entries: VecDeque<(Instant, u64)>,
    tokens: u64,
}

impl Window {
    /// Drops what is older than `length` at `now`.
    fn slide(&mut self, now: Instant, length: Duration) {
        while let Some(&(at, tokens)) = self.entries.front() {
            if now.saturating_duration_since(at) < length {
                break;
            }
            self.entries.pop_front();
            self.tokens -= tokens;
        }
    }

    /// What the window of `length` holds at `now`.
    pub fn usage(&mut self, now: Instant, length: Duration) -> WindowUsage {
        self.slide(now, length);
        WindowUsage {
            tokens: self.tokens,
            requests: self.entries.len() as u64,
        }
    }

    /// Counts a request of `tokens` at `now` if it fits `limit`.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use router_dispatch::{Capacity, Reservation, Window, WINDOW};
    /// let capacity = Capacity { tpm: Some(100), rpm: None }.over(WINDOW);
    /// let mut window = Window::default();
    /// let t0 = Instant::now();
    /// assert_eq!(window.reserve(t0, capacity, 60), Reservation::Admitted);
    /// let later = t0 + Duration::from_secs(20);
    /// assert_eq!(
    ///     window.reserve(later, capacity, 60),
    ///     Reservation::Full { retry_after: Duration::from_secs(40) }
    /// );
    /// // The first request slides out of the window after a minute.
    /// assert_eq!(window.reserve(t0 + Duration::from_secs(60), capacity, 60), Reservation::Admitted);
    /// ```
    pub fn reserve(&mut self, now: Instant, limit: Limit, tokens: u64) -> Reservation {
        self.slide(now, limit.length);
        let fits = |used_tokens: u64, used_requests: u64| {
            limit
                .tokens
                .is_none_or(|l| used_tokens.saturating_add(tokens) <= l)
                && limit.requests.is_none_or(|l| used_requests < l)
        };
        if self.entries.is_empty() || fits(self.tokens, self.entries.len() as u64) {
            self.entries.push_back((now, tokens));
            self.tokens += tokens;
            return Reservation::Admitted;
        }
        // The oldest entries leave first: find the first one whose leaving makes room.
        let (mut tokens_left, mut requests_left) = (self.tokens, self.entries.len() as u64);
        for &(at, charged) in &self.entries {
            tokens_left -= charged;
            requests_left -= 1;
            if requests_left == 0 || fits(tokens_left, requests_left) {
                return Reservation::Full {
                    retry_after: (at + limit.length).saturating_duration_since(now),
                };
            }
        }
        Reservation::Full {
            retry_after: limit.length,
        }
    }
}

/// The tokens a request is charged against a deployment's `capacity_tpm` before it is sent:
/// the prompt's estimate ([`router_policy::estimate_chat_tokens`] over the messages' text,
/// which errs high) plus its output allowance — `max_completion_tokens`, else `max_tokens`, else
/// [`DEFAULT_EXPECTED_OUTPUT_TOKENS`]. That is how OpenAI and Azure themselves count a request
/// against a tokens-per-minute limit when they admit it (prompt + `max_tokens`); the tokens a
/// response really used are not read back (the caller reads the body after dispatch).
///
/// ```
/// use serde_json::json;
/// let body = json!({"messages": [{"role": "user", "content": "What is 2 + 2?"}], "max_tokens": 100});
/// // user: 2 + 7 + 4, reply: 3, output allowance: 100
/// assert_eq!(router_dispatch::tokens_to_charge(&body), 116);
/// ```
pub fn tokens_to_charge(body: &serde_json::Value) -> u64 {
    let messages = body["messages"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let texts: Vec<(&str, String)> = messages
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap_or(""),
                message_text(&m["content"]),
            )
        })
        .collect();
    let input = estimate_chat_tokens(texts.iter().map(|(r, t)| (*r, t.as_str())));
    let output = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|key| body[key].as_u64())
        .unwrap_or(u64::from(DEFAULT_EXPECTED_OUTPUT_TOKENS));
    (input as u64).saturating_add(output)
}

/// A message's text: a string, or the `text` of its content parts.
fn message_text(content: &serde_json::Value) -> String {
    match content {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The rate-limit headers of one OpenAI or Azure OpenAI response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimitHeaders {
    /// `x-ratelimit-remaining-tokens`.
    pub remaining_tokens: Option<u64>,
    /// `x-ratelimit-remaining-requests`.
    pub remaining_requests: Option<u64>,
    /// `x-ratelimit-reset-tokens`: until the token budget is whole again.
    pub reset_tokens: Option<Duration>,
    /// `x-ratelimit-reset-requests`.
    pub reset_requests: Option<Duration>,
    /// `x-ratelimit-limit-tokens`: the whole token budget (OpenAI).
    pub limit_tokens: Option<u64>,
    /// `x-ratelimit-limit-requests`.
    pub limit_requests: Option<u64>,
}

impl RateLimitHeaders {
    /// Reads the headers; an absent or unreadable one is `None`.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let count = |name: &str| text(name).and_then(|s| s.trim().parse::<u64>().ok());
        let reset = |name: &str| text(name).and_then(parse_reset);
        RateLimitHeaders {
            remaining_tokens: count("x-ratelimit-remaining-tokens"),
            remaining_requests: count("x-ratelimit-remaining-requests"),
            reset_tokens: reset("x-ratelimit-reset-tokens"),
            reset_requests: reset("x-ratelimit-reset-requests"),
            limit_tokens: count("x-ratelimit-limit-tokens"),
            limit_requests: count("x-ratelimit-limit-requests"),
        }
    }

    /// Whether any remaining count was given.
    pub fn is_present(&self) -> bool {
        self.remaining_tokens.is_some() || self.remaining_requests.is_some()
    }
}

/// A reset time: OpenAI writes a Go duration (`6m0s`, `1.5s`, `20ms`, `1h2m3s`), Azure a
/// number of seconds (`12`, `0.5`).
///
/// ```
/// use std::time::Duration;
/// use router_dispatch::parse_reset;
/// assert_eq!(parse_reset("6m0s"), Some(Duration::from_secs(360)));
/// assert_eq!(parse_reset("20ms"), Some(Duration::from_millis(20)));
/// assert_eq!(parse_reset("1h2m3.5s"), Some(Duration::from_millis(3_723_500)));
/// assert_eq!(parse_reset("12"), Some(Duration::from_secs(12)));
/// assert_eq!(parse_reset("soon"), None);
/// ```
pub fn parse_reset(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if let Ok(seconds) = text.parse::<f64>() {
        return seconds_to_duration(seconds);
    }
    let mut total = 0.0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&i| i > 0)?;
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    seconds_to_duration(total)
}

fn seconds_to_duration(seconds: f64) -> Option<Duration> {
    (seconds.is_finite() && (0.0..1e9).contains(&seconds)).then(|| Duration::from_secs_f64(seconds))
}

/// One remaining count from the headers, less what this process sent since.
#[derive(Debug, Clone, Copy)]
struct Figure {
    /// Remaining at `seen`, less what was sent since.
    left: u64,
    /// What refills between `seen` and `seen + reset` (the limit less the remaining count), when
    /// the limit is known: the budget then refills linearly, as OpenAI's does.
    refill: u64,
    seen: Instant,
    /// When the budget is whole again; the figure says nothing after it.
    reset: Duration,
}

impl Figure {
    fn new(
        left: Option<u64>,
        limit: Option<u64>,
        reset: Option<Duration>,
        now: Instant,
    ) -> Option<Self> {
        let left = left?;
        Some(Figure {
            left,
            refill: limit.map_or(0, |l| l.saturating_sub(left)),
            seen: now,
            reset: reset.unwrap_or(HEADROOM_TRUST),
        })
    }

    /// What is available at `now`; `None` once the reset has passed.
    fn available(&self, now: Instant) -> Option<u64> {
        let elapsed = now.saturating_duration_since(self.seen);
        if elapsed >= self.reset {
            return None;
        }
        let refilled = u128::from(self.refill) * elapsed.as_nanos() / self.reset.as_nanos().max(1);
        Some(
            self.left
                .saturating_add(u64::try_from(refilled).unwrap_or(u64::MAX)),
        )
    }

    /// `None` if `need` is available at `now`, else how long until it is (the figure's
    /// reset, or sooner by the linear refill).
    fn refuses(&self, now: Instant, need: u64) -> Option<Duration> {
        let available = self.available(now)?;
        if available >= need {
            return None;
        }
        let until_reset = (self.seen + self.reset).saturating_duration_since(now);
        if self.refill == 0 {
            return Some(until_reset);
        }
        let missing = u128::from(need - available);
        let nanos = missing * self.reset.as_nanos() / u128::from(self.refill);
        let by_refill = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        Some(by_refill.min(until_reset))
    }
}

/// What the last rate-limit headers of a deployment said is left, less what this process has
/// sent there since. With the limit headers (`x-ratelimit-limit-*`) a figure refills linearly
/// until its reset; without them it stays as it was until its reset (or for 1 s without a reset
/// header). After the reset it no longer refuses anything.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Headroom {
    tokens: Option<Figure>,
    requests: Option<Figure>,
}

impl Headroom {
    /// The headroom `headers` announce at `now`; `None` when they announce nothing.
    pub(crate) fn learn(headers: RateLimitHeaders, now: Instant) -> Option<Self> {
        headers.is_present().then(|| Headroom {
            tokens: Figure::new(
                headers.remaining_tokens,
                headers.limit_tokens,
                headers.reset_tokens,
                now,
            ),
            requests: Figure::new(
                headers.remaining_requests,
                headers.limit_requests,
                headers.reset_requests,
                now,
            ),
        })
    }

    /// `None` if a request of `tokens` fits at `now`, else how long until it would.
    pub(crate) fn refuses(&self, now: Instant, tokens: u64) -> Option<Duration> {
        let tokens = self.tokens.and_then(|f| f.refuses(now, tokens));
        let requests = self.requests.and_then(|f| f.refuses(now, 1));
        match (tokens, requests) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Counts a request of `tokens` sent after the headers were read.
    pub(crate) fn spend(&mut self, tokens: u64) {
        if let Some(f) = &mut self.tokens {
            f.left = f.left.saturating_sub(tokens);
        }
        if let Some(f) = &mut self.requests {
            f.left = f.left.saturating_sub(1);
        }
    }

    /// The figures available at `now`: (tokens, requests).
    pub(crate) fn current(&self, now: Instant) -> (Option<u64>, Option<u64>) {
        let available = |f: Option<Figure>| f.and_then(|f| f.available(now));
        (available(self.tokens), available(self.requests))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn window_counts_requests_and_slides() {
        let capacity = Capacity {
            tpm: None,
            rpm: Some(2),
        }
        .over(WINDOW);
        let mut window = Window::default();
        let t0 = Instant::now();
        assert_eq!(window.reserve(t0, capacity, 1), Reservation::Admitted);
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(window.reserve(t1, capacity, 1), Reservation::Admitted);
        assert_eq!(
            window.reserve(t1, capacity, 1),
            Reservation::Full {
                retry_after: Duration::from_secs(50)
            }
        );
        assert_eq!(
            window.usage(t1, WINDOW),
            WindowUsage {
                tokens: 2,
                requests: 2
            }
        );
        let t2 = t0 + WINDOW;
        assert_eq!(window.usage(t2, WINDOW).requests, 1);
        assert_eq!(window.reserve(t2, capacity, 1), Reservation::Admitted);
    }

    #[test]
    fn empty_window_admits_an_oversized_request() {
        let capacity = Capacity {
            tpm: Some(60),
            rpm: None,
        }
        .over(Duration::from_secs(10));
        let mut window = Window::default();
        let t0 = Instant::now();
        assert_eq!(window.reserve(t0, capacity, 50), Reservation::Admitted);
        assert_eq!(
            window.reserve(t0, capacity, 1),
            Reservation::Full {
                retry_after: Duration::from_secs(10)
            }
        );
    }

    #[test]
    fn reads_openai_and_azure_headers() {
        let mut h = HeaderMap::new();
        assert!(!RateLimitHeaders::from_headers(&h).is_present());
        h.insert(
            "x-ratelimit-remaining-tokens",
            HeaderValue::from_static("1200"),
        );
        h.insert(
            "x-ratelimit-remaining-requests",
            HeaderValue::from_static("3"),
        );
        h.insert("x-ratelimit-reset-tokens", HeaderValue::from_static("6m0s"));
        h.insert(
            "x-ratelimit-reset-requests",
            HeaderValue::from_static("20ms"),
        );
        let read = RateLimitHeaders::from_headers(&h);
        assert_eq!(
            read,
            RateLimitHeaders {
                remaining_tokens: Some(1200),
                remaining_requests: Some(3),
                reset_tokens: Some(Duration::from_secs(360)),
                reset_requests: Some(Duration::from_millis(20)),
                limit_tokens: None,
                limit_requests: None,
            }
        );
        h.insert("x-ratelimit-reset-tokens", HeaderValue::from_static("7"));
        h.insert(
            "x-ratelimit-remaining-requests",
            HeaderValue::from_static("-1"),
        );
        let azure = RateLimitHeaders::from_headers(&h);
        assert_eq!(azure.reset_tokens, Some(Duration::from_secs(7)));
        assert_eq!(azure.remaining_requests, None);
        assert_eq!(parse_reset("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_reset(""), None);
        assert_eq!(parse_reset("5x"), None);
        assert_eq!(parse_reset("ms"), None);
    }

    #[test]
    fn headroom_refuses_until_reset() {
        let t0 = Instant::now();
        let headers = RateLimitHeaders {
            remaining_tokens: Some(500),
            reset_tokens: Some(Duration::from_secs(2)),
            ..RateLimitHeaders::default()
        };
        let mut room = Headroom::learn(headers, t0).unwrap();
        assert_eq!(room.refuses(t0, 400), None);
        room.spend(400);
        assert_eq!(room.refuses(t0, 200), Some(Duration::from_secs(2)));
        assert_eq!(room.current(t0), (Some(100), None));
        let after_reset = t0 + Duration::from_secs(2);
        assert_eq!(room.refuses(after_reset, 200), None);
        assert_eq!(room.current(after_reset), (None, None));
        assert!(Headroom::learn(RateLimitHeaders::default(), t0).is_none());
    }

    #[test]
    fn headroom_refills_linearly_with_a_known_limit() {
        let t0 = Instant::now();
        let headers = RateLimitHeaders {
            remaining_tokens: Some(0),
            limit_tokens: Some(1000),
            reset_tokens: Some(Duration::from_secs(10)),
            ..RateLimitHeaders::default()
        };
        let room = Headroom::learn(headers, t0).unwrap();
        // 100 tokens refill per second: 300 are there after 3 s.
        assert_eq!(room.refuses(t0, 300), Some(Duration::from_secs(3)));
        let t3 = t0 + Duration::from_secs(3);
        assert_eq!(room.current(t3), (Some(300), None));
        assert_eq!(room.refuses(t3, 300), None);
    }

    #[test]
    fn charges_prompt_and_output_allowance() {
        let parts = serde_json::json!({
            "messages": [{"role": "user", "content": [{"type": "text", "text": "What is 2 + 2?"}]}],
            "max_completion_tokens": 10
        });
        assert_eq!(tokens_to_charge(&parts), 26);
        let bare = serde_json::json!({"messages": []});
        assert_eq!(
            tokens_to_charge(&bare),
            3 + u64::from(DEFAULT_EXPECTED_OUTPUT_TOKENS)
        );
    }
}
