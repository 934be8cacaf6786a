//! The access log: one logfmt line per API request, on stderr or appended to a file.
//!
//! Every value comes from the request or a backend (a path, a model name, a deployment), so
//! every value is written through [`value`]: a value with a space, a quote, `=`, a backslash or
//! any control character is quoted with those escaped, so no client can end a line or forge
//! a field.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where access lines go.
pub(crate) enum Sink {
    /// `server.access_log = false`.
    Off,
    /// Standard error.
    Stderr,
    /// `server.access_log_path`, opened for appending.
    File(Mutex<File>),
}

impl Sink {
    /// The sink of the config's `access_log` and `access_log_path`.
    pub(crate) fn open(enabled: bool, path: Option<&Path>) -> std::io::Result<Sink> {
        Ok(match (enabled, path) {
            (false, _) => Sink::Off,
            (true, None) => Sink::Stderr,
            (true, Some(path)) => Sink::File(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )),
        })
    }

    /// Writes one line; a failing write is reported on stderr, never to the client.
    pub(crate) fn write(&self, line: &AccessLine<'_>) {
        match self {
            Sink::Off => {}
            Sink::Stderr => eprintln!("{}", line.render()),
            Sink::File(file) => {
                let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(e) = writeln!(file, "{}", line.render()) {
                    eprintln!("model-router: cannot write the access log: {e}");
                }
            }
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
    /// The line, without its newline.
    pub(crate) fn render(&self) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut line = format!(
            "access ts={}.{:03} status={}",
            now.as_secs(),
            now.subsec_millis(),
            self.status
        );
        for (key, text) in [
            ("request_id", self.request_id),
            ("path", self.path),
            ("model", self.model),
            ("mode", self.mode),
            ("deployment", self.deployment),
            ("store", self.store),
            ("error", self.error),
        ] {
            let _ = write!(line, " {key}={}", value(text));
        }
        let _ = write!(
            line,
            " spillover={} ms={:.3}",
            self.spillover,
            self.elapsed.as_secs_f64() * 1e3
        );
        line
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
    use super::*;

    #[test]
    fn values_cannot_break_the_line() {
        assert_eq!(value("gpt-4"), "gpt-4");
        assert_eq!(value(""), "\"\"");
        assert_eq!(
            value("x\r\naccess status=200 model=\"y\""),
            r#""x\r\naccess status=200 model=\"y\"""#
        );
        assert_eq!(value("a\u{7}b\u{85}"), r#""a\u{7}b\u{85}""#);
        let line = AccessLine {
            request_id: "req_1",
            path: "/openai/deployments/a\nforged/chat/completions",
            status: 404,
            model: "m\"",
            mode: "none",
            deployment: "-",
            spillover: false,
            elapsed: Duration::from_millis(1),
            store: "-",
            error: "model_not_found",
        }
        .render();
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains(r#"path="/openai/deployments/a\nforged/chat/completions""#));
    }
}
