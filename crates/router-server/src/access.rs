//! The access log: one line per API request, written through `tracing`.
//!
//! Each request runs in a `request` span that carries its `request_id` (see `request_id.rs`),
//! and ends with one event of target [`ACCESS_TARGET`] whose fields are the line. With
//! `server.access_log = true` (the default) the server writes those events itself, through an
//! [`AccessLayer`] of its own, to stderr or `server.access_log_path`, as logfmt or JSON
//! (`server.log_format`). With `access_log = false` it writes nothing and the events go to the
//! subscriber the process installed: an embedder brings its own (and may format them with an
//! [`AccessLayer`] in its own stack).
//!
//! Every value comes from the request or a backend (a path, a model name, a deployment), so
//! every value is escaped: in logfmt a value with a space, a quote, `=`, a backslash or any
//! control character is quoted with those escaped ([`value`]); in JSON every control character
//! is a `\u` escape. No client can end a line or forge a field.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Dispatch, Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

use crate::config::LogFormat;

/// The target of the access events.
pub const ACCESS_TARGET: &str = "model_router::access";

/// A `tracing` layer that writes each access event ([`ACCESS_TARGET`]) as one line and ignores
/// every other event.
///
/// ```
/// use router_server::{AccessLayer, LogFormat};
/// use tracing_subscriber::layer::SubscriberExt;
///
/// // An embedder's own subscriber, with the router's access lines as JSON on stderr.
/// let subscriber = tracing_subscriber::registry().with(AccessLayer::stderr(LogFormat::Json));
/// let _guard = tracing::subscriber::set_default(subscriber);
/// ```
pub struct AccessLayer {
    format: LogFormat,
    out: Mutex<Box<dyn std::io::Write + Send>>,
}

impl std::fmt::Debug for AccessLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLayer")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl AccessLayer {
    /// Lines in `format` written to `out`.
    pub fn new(format: LogFormat, out: impl std::io::Write + Send + 'static) -> Self {
        AccessLayer {
            format,
            out: Mutex::new(Box::new(out)),
        }
    }

    /// Lines in `format` on standard error.
    pub fn stderr(format: LogFormat) -> Self {
        AccessLayer::new(format, std::io::stderr())
    }

    /// Lines in `format` appended to the file `path` (created when missing).
    pub fn append_to(path: &Path, format: LogFormat) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(AccessLayer::new(format, file))
    }

    /// The line of an access event's fields, without its newline.
    fn render(&self, fields: &Fields) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let millis = now.as_millis();
        match self.format {
            LogFormat::Logfmt => fields.logfmt(millis),
            LogFormat::Json => fields.json(millis),
        }
    }
}

impl<S: Subscriber> Layer<S> for AccessLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != ACCESS_TARGET {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let line = self.render(&fields);
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        // A failing write is reported on stderr, never to the client.
        if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
            eprintln!("model-router: cannot write the access log: {e}");
        }
    }
}

/// One field's value, as recorded.
enum FieldValue {
    Text(String),
    Number(serde_json::Number),
    Bool(bool),
}

/// An event's fields in the order they were recorded.
#[derive(Default)]
struct Fields(Vec<(&'static str, FieldValue)>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .push((field.name(), FieldValue::Text(format!("{value:?}"))));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .push((field.name(), FieldValue::Text(value.to_string())));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0
            .push((field.name(), FieldValue::Number(value.into())));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0
            .push((field.name(), FieldValue::Number(value.into())));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        let value = serde_json::Number::from_f64(value)
            .map_or_else(|| FieldValue::Text(value.to_string()), FieldValue::Number);
        self.0.push((field.name(), value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.push((field.name(), FieldValue::Bool(value)));
    }
}

impl Fields {
    /// `access ts=SECONDS.MILLIS key=value ...`.
    fn logfmt(&self, millis: u128) -> String {
        let mut line = format!("access ts={}.{:03}", millis / 1000, millis % 1000);
        for (key, field) in &self.0 {
            let _ = match field {
                FieldValue::Text(text) => write!(line, " {key}={}", value(text)),
                FieldValue::Number(n) => write!(line, " {key}={n}"),
                FieldValue::Bool(b) => write!(line, " {key}={b}"),
            };
        }
        line
    }

    /// `{"ts": SECONDS.MILLIS, "event": "access", key: value, ...}`, with every control
    /// character escaped.
    fn json(&self, millis: u128) -> String {
        let mut object = serde_json::Map::new();
        let ts = serde_json::Number::from_f64(millis as f64 / 1000.0)
            .map_or(serde_json::Value::Null, serde_json::Value::Number);
        object.insert("ts".into(), ts);
        object.insert("event".into(), "access".into());
        for (key, field) in &self.0 {
            let field = match field {
                FieldValue::Text(text) => serde_json::Value::String(text.clone()),
                FieldValue::Number(n) => serde_json::Value::Number(n.clone()),
                FieldValue::Bool(b) => serde_json::Value::Bool(*b),
            };
            object.insert((*key).to_string(), field);
        }
        // serde_json escapes U+0000..U+001F; the other control characters (DEL, C1 such as
        // NEL) can only be inside strings, where a `\u` escape is the same text.
        let mut line = String::new();
        for c in serde_json::Value::Object(object).to_string().chars() {
            if c.is_control() {
                let _ = write!(line, "\\u{:04x}", u32::from(c));
            } else {
                line.push(c);
            }
        }
        line
    }
}

/// Where a server's access events go: its own layer (`server.access_log = true`) or the
/// process's subscriber.
pub(crate) struct AccessLog {
    /// `None`: the process's default subscriber.
    own: Option<Dispatch>,
}

impl AccessLog {
    /// The log of the config's `access_log`, `access_log_path` and `log_format`.
    pub(crate) fn open(
        enabled: bool,
        path: Option<&Path>,
        format: LogFormat,
    ) -> std::io::Result<AccessLog> {
        let layer = match (enabled, path) {
            (false, _) => return Ok(AccessLog { own: None }),
            (true, None) => AccessLayer::stderr(format),
            (true, Some(path)) => AccessLayer::append_to(path, format)?,
        };
        let subscriber = tracing_subscriber::registry().with(layer);
        Ok(AccessLog {
            own: Some(Dispatch::new(subscriber)),
        })
    }

    /// Emits `line`'s event: to the server's own layer, else to the process's subscriber.
    pub(crate) fn write(&self, line: &AccessLine<'_>) {
        match &self.own {
            Some(dispatch) => tracing::dispatcher::with_default(dispatch, || line.emit()),
            None => line.emit(),
        }
    }
}

/// One request's line.
pub(crate) struct AccessLine<'a> {
    /// The request's id (`x-request-id`).
    pub(crate) request_id: &'a str,
    /// The request path (as the client sent it).
    pub(crate) path: &'a str,
    /// The response status.
    pub(crate) status: u16,
    /// The model that answered (`none` when none).
    pub(crate) model: &'a str,
    /// The routing mode, `bypass`, or `none`.
    pub(crate) mode: &'a str,
    /// The deployment that answered (`-` when none).
    pub(crate) deployment: &'a str,
    /// Whether the request spilled over.
    pub(crate) spillover: bool,
    /// Time to the response head.
    pub(crate) elapsed: Duration,
    /// The store outcome's first word (`-` when none).
    pub(crate) store: &'a str,
    /// The router's error code (`-` when the request succeeded).
    pub(crate) error: &'a str,
}

impl AccessLine<'_> {
    /// The access event, to the current subscriber.
    fn emit(&self) {
        // Milliseconds to the microsecond.
        let ms = (self.elapsed.as_secs_f64() * 1e6).round() / 1e3;
        tracing::info!(
            target: ACCESS_TARGET,
            status = self.status,
            request_id = self.request_id,
            path = self.path,
            model = self.model,
            mode = self.mode,
            deployment = self.deployment,
            store = self.store,
            error = self.error,
            spillover = self.spillover,
            ms,
        );
    }
}

/// A logfmt value: as is when it is plain, else quoted with `"`, `\` and every control
/// character escaped (`\n`, `\r`, `\t`, `\u{..}`).
pub(crate) fn value(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| !c.is_control() && !matches!(c, ' ' | '"' | '=' | '\\'));
    if plain {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A writer whose bytes the test reads back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    const HOSTILE: &str = "/openai/deployments/a\r\nforged \"x\"=1\u{85}\u{7f}/chat/completions";

    /// The text `format` writes for one hostile line.
    fn written(format: LogFormat) -> String {
        let out = Shared::default();
        let log = AccessLog {
            own: Some(Dispatch::new(
                tracing_subscriber::registry().with(AccessLayer::new(format, out.clone())),
            )),
        };
        log.write(&AccessLine {
            request_id: "req_1",
            path: HOSTILE,
            status: 404,
            model: "m\"",
            mode: "none",
            deployment: "-",
            spillover: false,
            elapsed: Duration::from_micros(1500),
            store: "-",
            error: "model_not_found",
        });
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn values_cannot_break_the_line() {
        assert_eq!(value("gpt-4"), "gpt-4");
        assert_eq!(value(""), "\"\"");
        assert_eq!(
            value("x\r\naccess status=200 model=\"y\""),
            r#""x\r\naccess status=200 model=\"y\"""#
        );
        assert_eq!(value("a\u{7}b\u{85}"), r#""a\u{7}b\u{85}""#);
        let text = written(LogFormat::Logfmt);
        assert_eq!(text.lines().count(), 1, "{text}");
        let line = text.trim_end();
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.starts_with("access ts="), "{line}");
        assert!(
            line.ends_with(r#" status=404 request_id=req_1 path="/openai/deployments/a\r\nforged \"x\"=1\u{85}\u{7f}/chat/completions" model="m\"" mode=none deployment=- store=- error=model_not_found spillover=false ms=1.5"#),
            "{line}"
        );
    }

    #[test]
    fn json_lines_are_one_object_with_every_field() {
        let text = written(LogFormat::Json);
        assert_eq!(text.lines().count(), 1, "{text}");
        let line = text.trim_end();
        assert!(!line.chars().any(char::is_control), "{line:?}");
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["event"], "access");
        assert_eq!(v["path"], HOSTILE, "escaped, not changed");
        assert_eq!(v["status"], 404);
        assert_eq!(v["model"], "m\"");
        assert_eq!(v["spillover"], false);
        assert_eq!(v["ms"], 1.5);
        assert!(v["ts"].as_f64().is_some_and(|ts| ts > 1e9), "{v}");
    }

    #[test]
    fn other_events_are_not_access_lines() {
        let out = Shared::default();
        let subscriber =
            tracing_subscriber::registry().with(AccessLayer::new(LogFormat::Logfmt, out.clone()));
        tracing::subscriber::with_default(subscriber, || tracing::info!(status = 200, "hello"));
        assert!(out.0.lock().unwrap().is_empty());
    }
}
