//! The SQLite store: schema, writes with the size cap, queries, export.

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::{Metadata, StoreError};

/// The default cap on stored bytes: 1 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;
/// Page size of a list when the query gives none (OpenAI's default).
pub const DEFAULT_LIMIT: usize = 20;
/// Largest page of a list.
pub const MAX_LIMIT: usize = 100;
/// The owner of records stored by a server without API keys.
pub const ANONYMOUS_OWNER: &str = "anonymous";
/// Bytes every record counts for beyond its text columns (numbers, row and index overhead).
pub const RECORD_OVERHEAD_BYTES: u64 = 64;
/// The owner of the records a server keeps for itself, not for a client: the answers of shadow
/// models and the exchanges they shadow when the client did not ask to store them. No API key
/// maps to it ([`owner_of_key`] starts with `sha256:`), so no client reads or deletes them.
pub const ROUTER_OWNER: &str = "model-router";

const SCHEMA_VERSION: i64 = 2;
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const COLUMNS: &str = "c.id, c.owner, c.created_at, c.model, c.deployment, c.messages, c.request, \
     c.response, c.decision, c.prompt_tokens, c.completion_tokens, c.total_tokens, c.cost_usd, \
     c.latency_ms, c.bytes, \
     (SELECT json_group_object(m.key, m.value) FROM metadata m WHERE m.seq = c.seq), c.shadow_of";

/// The owner identity of an API key: `sha256:` and the key's SHA-256 in hex. The raw key is
/// never stored.
///
/// ```
/// let owner = router_store::owner_of_key("sk-secret");
/// assert!(owner.starts_with("sha256:") && !owner.contains("secret"));
/// assert_eq!(owner.len(), 7 + 64);
/// ```
pub fn owner_of_key(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut owner = String::with_capacity(7 + 64);
    owner.push_str("sha256:");
    for byte in digest {
        let _ = write!(owner, "{byte:02x}");
    }
    owner
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `as_str` and `FromStr` for a settings enum, from one table of variants and their names (the
/// names the server's config file uses).
macro_rules! named_variants {
    ($type:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $type {
            #[doc = concat!("The setting's name: ", $("`", $name, "` "),+)]
            pub fn as_str(self) -> &'static str {
                match self {
                    $($type::$variant => $name),+
                }
            }
        }

        impl FromStr for $type {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($name => Ok($type::$variant),)+
                    other => Err(format!("`{other}` is not one of {}", [$(concat!("`", $name, "`")),+].join(", "))),
                }
            }
        }
    };
}

/// What a full store does with a new record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFull {
    /// Refuse it ([`StoreError::Full`]); the stored records stay.
    #[default]
    Refuse,
    /// Delete the oldest records (of any owner) until it fits.
    EvictOldest,
}

named_variants!(OnFull { Refuse => "refuse", EvictOldest => "evict_oldest" });

/// SQLite's `synchronous` setting in WAL mode: when a commit reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// `FULL`: every commit is fsynced before it returns. A stored record survives a process
    /// kill and a power loss or OS crash.
    #[default]
    Full,
    /// `NORMAL`: a commit is written to the WAL file (the OS's page cache) before it returns and
    /// fsynced at checkpoints. A stored record survives a process kill; a power loss or OS crash
    /// may lose the last commits (never corrupts the database).
    Normal,
}

named_variants!(Synchronous { Full => "full", Normal => "normal" });

/// How a store is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Cap on the stored bytes (see the crate docs for what counts).
    pub max_bytes: u64,
    /// What to do when a record does not fit under the cap.
    pub on_full: OnFull,
    /// When commits reach the disk.
    pub synchronous: Synchronous,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_bytes: DEFAULT_MAX_BYTES,
            on_full: OnFull::Refuse,
            synchronous: Synchronous::Full,
        }
    }
}

/// Token usage of a completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Total tokens.
    pub total_tokens: u64,
}

impl Usage {
    /// The `usage` object of a chat-completion response, when it has `prompt_tokens`.
    pub fn from_response(response: &Value) -> Option<Usage> {
        let usage = response.get("usage")?.as_object()?;
        let prompt_tokens = usage.get("prompt_tokens")?.as_u64()?;
        let completion_tokens = usage
            .get("completion_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let total_tokens = usage
            .get("total_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(prompt_tokens.saturating_add(completion_tokens));
        Some(Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens,
        })
    }
}

/// A record to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewCompletion {
    /// The id to store it under (the backend response's id); a fresh `chatcmpl-...` id when
    /// `None`, empty, longer than 256 bytes or already taken.
    pub id: Option<String>,
    /// Who stored it: [`owner_of_key`] of the API key, or [`ANONYMOUS_OWNER`].
    pub owner: String,
    /// When, in milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// The request body; its `messages` array is required.
    pub request: Map<String, Value>,
    /// The response body (for a stream, the assembled `chat.completion`).
    pub response: Value,
    /// Validated metadata.
    pub metadata: Metadata,
    /// The routing decision; `None` when the request named a model.
    pub decision: Option<Value>,
    /// The model that answered.
    pub model: String,
    /// The deployment that answered.
    pub deployment: String,
    /// Token usage, when the backend reported it.
    pub usage: Option<Usage>,
    /// Estimated cost in USD.
    pub cost_usd: f64,
    /// Time to answer, in milliseconds.
    pub latency_ms: u64,
    /// The id of the stored completion this one shadows: the same request, sent by the server
    /// to another model after the client had its answer. `None` for a client's exchange.
    pub shadow_of: Option<String>,
}

impl NewCompletion {
    /// A record of `request` and `response` by `owner`, created now: the id, the model and the
    /// usage are taken from the response; no metadata, decision or deployment; cost 0.
    pub fn new(owner: impl Into<String>, request: Map<String, Value>, response: Value) -> Self {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
        NewCompletion {
            id: text(response.get("id")),
            owner: owner.into(),
            created_at_ms: now_ms(),
            model: text(response.get("model"))
                .or_else(|| text(request.get("model")))
                .unwrap_or_default(),
            usage: Usage::from_response(&response),
            request,
            response,
            metadata: Metadata::default(),
            decision: None,
            deployment: String::new(),
            cost_usd: 0.0,
            latency_ms: 0,
            shadow_of: None,
        }
    }
}

/// What [`Store::insert`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inserted {
    /// The id the record is stored under.
    pub id: String,
    /// The bytes it counts for.
    pub bytes: u64,
    /// How many older records were evicted to make room.
    pub evicted: u64,
}

/// A stored completion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Completion {
    /// Its id.
    pub id: String,
    /// Who stored it.
    pub owner: String,
    /// When, in milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// The model that answered.
    pub model: String,
    /// The deployment that answered.
    pub deployment: String,
    /// The request's messages.
    pub messages: Vec<Value>,
    /// The rest of the request body (without `messages`).
    pub request: Map<String, Value>,
    /// The response body (`id` set to the stored id).
    pub response: Value,
    /// Metadata.
    pub metadata: Metadata,
    /// The routing decision; `None` for a request that named its model.
    pub decision: Option<Value>,
    /// Token usage.
    pub usage: Option<Usage>,
    /// Estimated cost in USD.
    pub cost_usd: f64,
    /// Time to answer, in milliseconds.
    pub latency_ms: u64,
    /// The bytes it counts for in the cap.
    pub bytes: u64,
    /// The id of the completion this one shadows (see [`NewCompletion::shadow_of`]).
    pub shadow_of: Option<String>,
}

impl Completion {
    /// The OpenAI `chat.completion` object as the stored-completions API returns it: the
    /// response with the stored `id` and `metadata`, plus a `router` object (model, deployment,
    /// decision, estimated cost, latency).
    pub fn to_openai(&self) -> Value {
        let mut value = self.response.clone();
        if let Value::Object(object) = &mut value {
            object.insert("id".into(), Value::String(self.id.clone()));
            object.insert("metadata".into(), self.metadata.to_json());
            object.insert(
                "router".into(),
                json!({
                    "model": self.model,
                    "deployment": self.deployment,
                    "decision": self.decision,
                    "estimated_cost_usd": self.cost_usd,
                    "latency_ms": self.latency_ms,
                    "usage": self.usage,
                }),
            );
        }
        value
    }

    /// The request's messages as OpenAI's `GET /v1/chat/completions/{id}/messages` returns
    /// them: each with an `id` (`{completion id}-{index}`), `name` and `content_parts` (the
    /// content array when the content was one, its text joined in `content`; else `null`).
    pub fn openai_messages(&self) -> Vec<Value> {
        self.messages
            .iter()
            .enumerate()
            .map(|(i, message)| {
                let mut object = message.as_object().cloned().unwrap_or_default();
                object.insert("id".into(), Value::String(format!("{}-{i}", self.id)));
                if let Some(Value::Array(parts)) = object.get("content").cloned() {
                    let text: Vec<&str> = parts
                        .iter()
                        .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
                        .filter_map(|p| p.get("text").and_then(Value::as_str))
                        .collect();
                    let content = if text.is_empty() {
                        Value::Null
                    } else {
                        Value::String(text.join("\n"))
                    };
                    object.insert("content".into(), content);
                    object.insert("content_parts".into(), Value::Array(parts));
                } else {
                    object.entry("content_parts").or_insert(Value::Null);
                }
                object.entry("name").or_insert(Value::Null);
                Value::Object(object)
            })
            .collect()
    }

    /// The answer as a fine-tuning assistant message, `{"role": "assistant", "content": ...}`
    /// (with `tool_calls` when the answer called tools), from the response's first choice;
    /// `None` when it has neither content nor tool calls.
    pub fn answer(&self) -> Option<Value> {
        let message = self
            .response
            .get("choices")?
            .as_array()?
            .first()?
            .get("message")?
            .as_object()?;
        let content = message.get("content").filter(|v| !v.is_null());
        let tool_calls = message
            .get("tool_calls")
            .filter(|v| v.as_array().is_some_and(|a| !a.is_empty()));
        if content.is_none() && tool_calls.is_none() {
            return None;
        }
        let mut answer = Map::new();
        answer.insert("role".into(), Value::String("assistant".into()));
        answer.insert("content".into(), content.cloned().unwrap_or(Value::Null));
        if let Some(calls) = tool_calls {
            answer.insert("tool_calls".into(), calls.clone());
        }
        Some(Value::Object(answer))
    }

    /// The chat fine-tuning line: `{"messages": [...request messages..., answer]}`.
    pub fn fine_tuning_line(&self) -> Option<Value> {
        let mut messages = self.messages.clone();
        messages.push(self.answer()?);
        Some(json!({ "messages": messages }))
    }
}

/// Sort order of a list: by creation time, then insertion order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// Oldest first (OpenAI's default).
    #[default]
    Asc,
    /// Newest first.
    Desc,
}

impl FromStr for Order {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, StoreError> {
        match s {
            "asc" => Ok(Order::Asc),
            "desc" => Ok(Order::Desc),
            other => Err(StoreError::InvalidQuery {
                param: "order",
                reason: format!("`{other}` is not `asc` or `desc`"),
            }),
        }
    }
}

/// Which completions [`Store::list`] returns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListQuery {
    /// Only this owner's (`None`: every owner's).
    pub owner: Option<String>,
    /// Only those answered by this model.
    pub model: Option<String>,
    /// Only those whose metadata has every one of these pairs.
    pub metadata: Vec<(String, String)>,
    /// Those after this id in the order (the previous page's last id).
    pub after: Option<String>,
    /// Page size, 1 to [`MAX_LIMIT`]; [`DEFAULT_LIMIT`] when `None`.
    pub limit: Option<usize>,
    /// The order.
    pub order: Order,
    /// Whether shadow answers (records with a [`Completion::shadow_of`]) are listed too; by
    /// default they are not, so a list means what it meant before shadows existed. Read a
    /// record's shadows with [`Store::shadows_of`].
    pub include_shadows: bool,
}

/// Which messages [`Store::messages`] returns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MessageQuery {
    /// Those after this message id.
    pub after: Option<String>,
    /// Page size, 1 to [`MAX_LIMIT`]; [`DEFAULT_LIMIT`] when `None`.
    pub limit: Option<usize>,
    /// The order (the conversation's order, or reversed).
    pub order: Order,
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The items.
    pub data: Vec<T>,
    /// Whether more items follow the last one.
    pub has_more: bool,
}

/// OpenAI's list object for a page of JSON items that have an `id`:
/// `{"object": "list", "data", "first_id", "last_id", "has_more"}`.
pub fn openai_list(data: Vec<Value>, has_more: bool) -> Value {
    let id = |v: Option<&Value>| v.and_then(|v| v.get("id")).cloned().unwrap_or(Value::Null);
    json!({
        "object": "list",
        "first_id": id(data.first()),
        "last_id": id(data.last()),
        "has_more": has_more,
        "data": data,
    })
}

/// Which records [`Store::export`] writes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExportFilter {
    /// Only this owner's (`None`: every owner's).
    pub owner: Option<String>,
    /// Only those answered by this model.
    pub model: Option<String>,
    /// Only those whose metadata has every one of these pairs.
    pub metadata: Vec<(String, String)>,
    /// Only those whose grade ([`Metadata::grade`]) is at least this; records without a grade
    /// are then skipped and counted.
    pub min_grade: Option<f64>,
}

/// What [`Store::export`] wrote and skipped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportSummary {
    /// Lines written.
    pub written: u64,
    /// Records skipped because a minimum grade was asked and they have no valid grade.
    pub no_grade: u64,
    /// Records skipped because their grade is below the minimum.
    pub below_grade: u64,
    /// Records skipped because the response has no assistant answer (no content, no tool calls).
    pub no_answer: u64,
}

/// Sizes of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    /// Stored records.
    pub records: u64,
    /// Bytes counted against the cap.
    pub used_bytes: u64,
    /// The cap.
    pub max_bytes: u64,
    /// The database's size in SQLite pages (`page_count × page_size`, WAL content included).
    pub file_bytes: u64,
}

/// Stored chat completions in one SQLite database (WAL mode). Share it behind an `Arc`; its
/// methods block (a server calls them from `spawn_blocking`).
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
    options: StoreOptions,
    path: PathBuf,
}

fn sql_u64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn check_limit(limit: Option<usize>) -> Result<usize, StoreError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(StoreError::InvalidQuery {
            param: "limit",
            reason: format!("must be between 1 and {MAX_LIMIT}, got {n}"),
        }),
    }
}

/// Appends the filters shared by list and export.
fn push_filters(
    sql: &mut String,
    args: &mut Vec<SqlValue>,
    owner: Option<&str>,
    model: Option<&str>,
    metadata: &[(String, String)],
) {
    if let Some(owner) = owner {
        sql.push_str(" AND c.owner = ?");
        args.push(SqlValue::Text(owner.to_string()));
    }
    if let Some(model) = model {
        sql.push_str(" AND c.model = ?");
        args.push(SqlValue::Text(model.to_string()));
    }
    for (key, value) in metadata {
        sql.push_str(
            " AND EXISTS (SELECT 1 FROM metadata m WHERE m.seq = c.seq AND m.key = ? AND m.value = ?)",
        );
        args.push(SqlValue::Text(key.clone()));
        args.push(SqlValue::Text(value.clone()));
    }
}

/// A row as SQLite gives it, before its JSON is parsed.
struct RawRow {
    id: String,
    owner: String,
    created_at: i64,
    model: String,
    deployment: String,
    messages: String,
    request: String,
    response: String,
    decision: Option<String>,
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
    total_tokens: Option<i64>,
    cost_usd: f64,
    latency_ms: i64,
    bytes: i64,
    metadata: Option<String>,
    shadow_of: Option<String>,
}

impl RawRow {
    fn read(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
        Ok(RawRow {
            id: row.get(0)?,
            owner: row.get(1)?,
            created_at: row.get(2)?,
            model: row.get(3)?,
            deployment: row.get(4)?,
            messages: row.get(5)?,
            request: row.get(6)?,
            response: row.get(7)?,
            decision: row.get(8)?,
            prompt_tokens: row.get(9)?,
            completion_tokens: row.get(10)?,
            total_tokens: row.get(11)?,
            cost_usd: row.get(12)?,
            latency_ms: row.get(13)?,
            bytes: row.get(14)?,
            metadata: row.get(15)?,
            shadow_of: row.get(16)?,
        })
    }

    fn parse<T: serde::de::DeserializeOwned>(
        id: &str,
        column: &'static str,
        text: &str,
    ) -> Result<T, StoreError> {
        serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
            id: id.to_string(),
            column,
            reason: e.to_string(),
        })
    }

    fn into_completion(self) -> Result<Completion, StoreError> {
        let id = self.id;
        let messages: Vec<Value> = Self::parse(&id, "messages", &self.messages)?;
        let request: Map<String, Value> = Self::parse(&id, "request", &self.request)?;
        let response: Value = Self::parse(&id, "response", &self.response)?;
        let decision: Option<Value> = match &self.decision {
            Some(text) => Some(Self::parse(&id, "decision", text)?),
            None => None,
        };
        let metadata = match &self.metadata {
            Some(text) => {
                let value: Value = Self::parse(&id, "metadata", text)?;
                Metadata::from_json(&value).map_err(|e| StoreError::Corrupt {
                    id: id.clone(),
                    column: "metadata",
                    reason: e.to_string(),
                })?
            }
            None => Metadata::default(),
        };
        let usage = self.prompt_tokens.map(|p| Usage {
            prompt_tokens: to_u64(p),
            completion_tokens: to_u64(self.completion_tokens.unwrap_or(0)),
            total_tokens: to_u64(self.total_tokens.unwrap_or(0)),
        });
        Ok(Completion {
            id,
            owner: self.owner,
            created_at_ms: self.created_at,
            model: self.model,
            deployment: self.deployment,
            messages,
            request,
            response,
            metadata,
            decision,
            usage,
            cost_usd: self.cost_usd,
            latency_ms: to_u64(self.latency_ms),
            bytes: to_u64(self.bytes),
            shadow_of: self.shadow_of,
        })
    }
}

fn json_text(value: &impl Serialize, what: &str) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::InvalidRecord(format!("{what} cannot be serialised: {e}")))
}

fn get_in(
    conn: &Connection,
    owner: Option<&str>,
    id: &str,
) -> Result<Option<Completion>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM completions c WHERE c.id = ?1 AND (?2 IS NULL OR c.owner = ?2)"
    );
    let raw = conn
        .query_row(&sql, params![id, owner], RawRow::read)
        .optional()?;
    raw.map(RawRow::into_completion).transpose()
}

fn id_taken(conn: &Connection, id: &str) -> Result<bool, StoreError> {
    Ok(conn
        .query_row("SELECT 1 FROM completions WHERE id = ?1", [id], |_| Ok(()))
        .optional()?
        .is_some())
}

fn fresh_id(conn: &Connection) -> Result<String, StoreError> {
    for _ in 0..16 {
        let id: String = conn.query_row(
            "SELECT 'chatcmpl-' || lower(hex(randomblob(12)))",
            [],
            |row| row.get(0),
        )?;
        if !id_taken(conn, &id)? {
            return Ok(id);
        }
    }
    Err(StoreError::InvalidRecord(
        "could not generate a free id".into(),
    ))
}

fn used_bytes(conn: &Connection) -> Result<u64, StoreError> {
    let used: i64 = conn.query_row("SELECT bytes FROM stats WHERE id = 1", [], |r| r.get(0))?;
    Ok(to_u64(used))
}

fn add_used(conn: &Connection, delta: i64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE stats SET bytes = max(bytes + ?1, 0) WHERE id = 1",
        [delta],
    )?;
    Ok(())
}

fn insert_metadata(conn: &Connection, seq: i64, metadata: &Metadata) -> Result<(), StoreError> {
    let mut stmt =
        conn.prepare_cached("INSERT INTO metadata (seq, key, value) VALUES (?1, ?2, ?3)")?;
    for (key, value) in metadata.iter() {
        stmt.execute(params![seq, key, value])?;
    }
    Ok(())
}

impl Store {
    /// Opens (creating if needed, with its parent directories) the database at `path` in WAL
    /// mode with `options.synchronous`, and creates or checks the schema.
    pub fn open(path: impl AsRef<Path>, options: StoreOptions) -> Result<Store, StoreError> {
        let path = path.as_ref().to_path_buf();
        if options.max_bytes == 0 {
            return Err(StoreError::InvalidOption {
                option: "max_bytes",
                reason: "must be at least 1".into(),
            });
        }
        let open_err = |source: rusqlite::Error| StoreError::Open {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let conn = Connection::open(&path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NotWal { path, mode });
        }
        let sync = match options.synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync)
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(open_err)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(open_err)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Schema {
                path,
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        if version < 1 {
            conn.execute_batch(
                "BEGIN IMMEDIATE;
                 CREATE TABLE IF NOT EXISTS completions (
                     seq INTEGER PRIMARY KEY AUTOINCREMENT,
                     id TEXT NOT NULL UNIQUE,
                     owner TEXT NOT NULL,
                     created_at INTEGER NOT NULL,
                     model TEXT NOT NULL,
                     deployment TEXT NOT NULL,
                     messages TEXT NOT NULL,
                     request TEXT NOT NULL,
                     response TEXT NOT NULL,
                     decision TEXT,
                     prompt_tokens INTEGER,
                     completion_tokens INTEGER,
                     total_tokens INTEGER,
                     cost_usd REAL NOT NULL,
                     latency_ms INTEGER NOT NULL,
                     bytes INTEGER NOT NULL
                 );
                 CREATE INDEX IF NOT EXISTS completions_created ON completions (created_at, seq);
                 CREATE INDEX IF NOT EXISTS completions_owner ON completions (owner, created_at, seq);
                 CREATE TABLE IF NOT EXISTS metadata (
                     seq INTEGER NOT NULL REFERENCES completions (seq) ON DELETE CASCADE,
                     key TEXT NOT NULL,
                     value TEXT NOT NULL,
                     PRIMARY KEY (seq, key)
                 ) WITHOUT ROWID;
                 CREATE INDEX IF NOT EXISTS metadata_pair ON metadata (key, value);
                 CREATE TABLE IF NOT EXISTS stats (
                     id INTEGER PRIMARY KEY CHECK (id = 1),
                     bytes INTEGER NOT NULL
                 );
                 INSERT OR IGNORE INTO stats (id, bytes) VALUES (1, 0);
                 PRAGMA user_version = 1;
                 COMMIT;",
            )
            .map_err(open_err)?;
        }
        if version < 2 {
            // Version 2: shadow answers point at the completion they shadow.
            conn.execute_batch(
                "BEGIN IMMEDIATE;
                 ALTER TABLE completions ADD COLUMN shadow_of TEXT;
                 CREATE INDEX IF NOT EXISTS completions_shadow_of ON completions (shadow_of);
                 PRAGMA user_version = 2;
                 COMMIT;",
            )
            .map_err(open_err)?;
        }
        Ok(Store {
            conn: Mutex::new(conn),
            options,
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The options it was opened with.
    pub fn options(&self) -> StoreOptions {
        self.options
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while the lock was held rolled its transaction back (the Transaction's drop):
        // the connection is usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes room for `needed` bytes, counting the record `replacing` (seq, its current bytes)
    /// as gone: refuses, or evicts the oldest other records. Returns how many were evicted.
    fn make_room(
        &self,
        conn: &Connection,
        needed: u64,
        replacing: Option<(i64, u64)>,
    ) -> Result<u64, StoreError> {
        let max = self.options.max_bytes;
        if needed > max {
            return Err(StoreError::TooLarge { needed, max });
        }
        let (skip_seq, skip_bytes) = replacing.unwrap_or((-1, 0));
        let mut used = used_bytes(conn)?.saturating_sub(skip_bytes);
        if used + needed <= max {
            return Ok(0);
        }
        if self.options.on_full == OnFull::Refuse {
            return Err(StoreError::Full { needed, used, max });
        }
        let mut evicted = 0u64;
        let mut oldest = conn.prepare_cached(
            "SELECT seq, bytes FROM completions WHERE seq != ?1 ORDER BY created_at, seq LIMIT 1",
        )?;
        let mut delete = conn.prepare_cached("DELETE FROM completions WHERE seq = ?1")?;
        while used + needed > max {
            let Some((seq, bytes)) = oldest
                .query_row([skip_seq], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                })
                .optional()?
            else {
                break;
            };
            delete.execute([seq])?;
            add_used(conn, -bytes)?;
            used = used.saturating_sub(to_u64(bytes));
            evicted += 1;
        }
        if used + needed > max {
            // Only the accounting of a damaged database can get here.
            return Err(StoreError::Full { needed, used, max });
        }
        Ok(evicted)
    }

    /// Stores a record in one transaction, committed (per [`Synchronous`]) before it returns.
    /// The response's `id` is set to the stored id.
    pub fn insert(&self, new: NewCompletion) -> Result<Inserted, StoreError> {
        let NewCompletion {
            id,
            owner,
            created_at_ms,
            mut request,
            mut response,
            metadata,
            decision,
            model,
            deployment,
            usage,
            cost_usd,
            latency_ms,
            shadow_of,
        } = new;
        let messages = match request.remove("messages") {
            Some(Value::Array(messages)) => messages,
            _ => {
                return Err(StoreError::InvalidRecord(
                    "the request has no `messages` array".into(),
                ))
            }
        };
        let messages = json_text(&messages, "messages")?;
        let request = json_text(&request, "the request")?;
        let decision = decision
            .map(|d| json_text(&d, "the decision"))
            .transpose()?;
        let mut response_text = json_text(&response, "the response")?;
        let candidate = id.filter(|id| !id.is_empty() && id.len() <= 256);
        let fixed = RECORD_OVERHEAD_BYTES
            + (owner.len()
                + model.len()
                + deployment.len()
                + messages.len()
                + request.len()
                + decision.as_ref().map_or(0, String::len)
                + shadow_of.as_ref().map_or(0, String::len)) as u64
            + metadata.byte_len();
        let cost = if cost_usd.is_finite() { cost_usd } else { 0.0 };

        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let id = match candidate {
            Some(id) if !id_taken(&tx, &id)? => id,
            _ => fresh_id(&tx)?,
        };
        if let Value::Object(object) = &mut response {
            if object.get("id").and_then(Value::as_str) != Some(id.as_str()) {
                object.insert("id".into(), Value::String(id.clone()));
                response_text = json_text(&response, "the response")?;
            }
        }
        let bytes = fixed + (id.len() + response_text.len()) as u64;
        let evicted = self.make_room(&tx, bytes, None)?;
        tx.execute(
            "INSERT INTO completions (id, owner, created_at, model, deployment, messages, request,
                 response, decision, prompt_tokens, completion_tokens, total_tokens, cost_usd,
                 latency_ms, bytes, shadow_of)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            params![
                id,
                owner,
                created_at_ms,
                model,
                deployment,
                messages,
                request,
                response_text,
                decision,
                usage.map(|u| sql_u64(u.prompt_tokens)),
                usage.map(|u| sql_u64(u.completion_tokens)),
                usage.map(|u| sql_u64(u.total_tokens)),
                cost,
                sql_u64(latency_ms),
                sql_u64(bytes),
                shadow_of,
            ],
        )?;
        let seq = tx.last_insert_rowid();
        insert_metadata(&tx, seq, &metadata)?;
        add_used(&tx, sql_u64(bytes))?;
        tx.commit()?;
        Ok(Inserted { id, bytes, evicted })
    }

    /// The record `id`, if it exists and (when `owner` is given) belongs to `owner`.
    pub fn get(&self, owner: Option<&str>, id: &str) -> Result<Option<Completion>, StoreError> {
        get_in(&self.lock(), owner, id)
    }

    /// A page of records matching `query`, in its order.
    pub fn list(&self, query: &ListQuery) -> Result<Page<Completion>, StoreError> {
        let limit = check_limit(query.limit)?;
        let conn = self.lock();
        let mut sql = format!("SELECT {COLUMNS} FROM completions c WHERE 1 = 1");
        let mut args = Vec::new();
        push_filters(
            &mut sql,
            &mut args,
            query.owner.as_deref(),
            query.model.as_deref(),
            &query.metadata,
        );
        if !query.include_shadows {
            sql.push_str(" AND c.shadow_of IS NULL");
        }
        let (cmp, dir) = match query.order {
            Order::Asc => (">", "ASC"),
            Order::Desc => ("<", "DESC"),
        };
        if let Some(after) = &query.after {
            let cursor = conn
                .query_row(
                    "SELECT created_at, seq FROM completions WHERE id = ?1 AND (?2 IS NULL OR owner = ?2)",
                    params![after, query.owner],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
                )
                .optional()?
                .ok_or_else(|| StoreError::InvalidQuery {
                    param: "after",
                    reason: format!("no stored completion `{after}`"),
                })?;
            let _ = write!(sql, " AND (c.created_at, c.seq) {cmp} (?, ?)");
            args.push(SqlValue::Integer(cursor.0));
            args.push(SqlValue::Integer(cursor.1));
        }
        let _ = write!(
            sql,
            " ORDER BY c.created_at {dir}, c.seq {dir} LIMIT {}",
            limit + 1
        );
        let mut stmt = conn.prepare(&sql)?;
        let raws = stmt
            .query_map(params_from_iter(args.iter()), RawRow::read)?
            .collect::<Result<Vec<_>, _>>()?;
        drop(stmt);
        drop(conn);
        let has_more = raws.len() > limit;
        let data = raws
            .into_iter()
            .take(limit)
            .map(RawRow::into_completion)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page { data, has_more })
    }

    /// A page of the request messages of record `id` (OpenAI's shape, see
    /// [`Completion::openai_messages`]); `None` when there is no such record for `owner`.
    pub fn messages(
        &self,
        owner: Option<&str>,
        id: &str,
        query: &MessageQuery,
    ) -> Result<Option<Page<Value>>, StoreError> {
        let limit = check_limit(query.limit)?;
        let Some(record) = self.get(owner, id)? else {
            return Ok(None);
        };
        let mut messages = record.openai_messages();
        if query.order == Order::Desc {
            messages.reverse();
        }
        let start = match &query.after {
            None => 0,
            Some(after) => {
                messages
                    .iter()
                    .position(|m| m.get("id").and_then(Value::as_str) == Some(after.as_str()))
                    .ok_or_else(|| StoreError::InvalidQuery {
                        param: "after",
                        reason: format!("no message `{after}` in completion `{id}`"),
                    })?
                    + 1
            }
        };
        let rest: Vec<Value> = messages.into_iter().skip(start).collect();
        let has_more = rest.len() > limit;
        Ok(Some(Page {
            data: rest.into_iter().take(limit).collect(),
            has_more,
        }))
    }

    /// Replaces the metadata of record `id` (of `owner`, when given) and returns the updated
    /// record; `None` when there is no such record. The cap applies as to an insert.
    pub fn update_metadata(
        &self,
        owner: Option<&str>,
        id: &str,
        metadata: &Metadata,
    ) -> Result<Option<Completion>, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let row = tx
            .query_row(
                "SELECT c.seq, c.bytes,
                     (SELECT coalesce(sum(length(CAST(m.key AS BLOB)) + length(CAST(m.value AS BLOB))), 0)
                      FROM metadata m WHERE m.seq = c.seq)
                 FROM completions c WHERE c.id = ?1 AND (?2 IS NULL OR c.owner = ?2)",
                params![id, owner],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)),
            )
            .optional()?;
        let Some((seq, bytes, old_meta)) = row else {
            return Ok(None);
        };
        let new_bytes = to_u64(bytes)
            .saturating_sub(to_u64(old_meta))
            .saturating_add(metadata.byte_len());
        self.make_room(&tx, new_bytes, Some((seq, to_u64(bytes))))?;
        tx.execute("DELETE FROM metadata WHERE seq = ?1", [seq])?;
        insert_metadata(&tx, seq, metadata)?;
        tx.execute(
            "UPDATE completions SET bytes = ?1 WHERE seq = ?2",
            params![sql_u64(new_bytes), seq],
        )?;
        add_used(&tx, sql_u64(new_bytes) - bytes)?;
        let updated = get_in(&tx, owner, id)?;
        tx.commit()?;
        Ok(updated)
    }

    /// Deletes record `id` (of `owner`, when given) and its shadow answers (whoever owns
    /// them: they hold the same prompt); whether the record existed.
    pub fn delete(&self, owner: Option<&str>, id: &str) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let row = tx
            .query_row(
                "SELECT seq, bytes FROM completions WHERE id = ?1 AND (?2 IS NULL OR owner = ?2)",
                params![id, owner],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
            )
            .optional()?;
        let Some((seq, bytes)) = row else {
            return Ok(false);
        };
        let shadow_bytes: i64 = tx.query_row(
            "SELECT coalesce(sum(bytes), 0) FROM completions WHERE shadow_of = ?1",
            [id],
            |r| r.get(0),
        )?;
        tx.execute("DELETE FROM completions WHERE shadow_of = ?1", [id])?;
        tx.execute("DELETE FROM completions WHERE seq = ?1", [seq])?;
        add_used(&tx, -(bytes + shadow_bytes))?;
        tx.commit()?;
        Ok(true)
    }

    /// The shadow answers of record `id` (records whose [`Completion::shadow_of`] is `id`), of
    /// any owner, oldest first: other models' answers to the same request.
    pub fn shadows_of(&self, id: &str) -> Result<Vec<Completion>, StoreError> {
        let conn = self.lock();
        let sql = format!(
            "SELECT {COLUMNS} FROM completions c WHERE c.shadow_of = ?1 ORDER BY c.created_at, c.seq"
        );
        let mut stmt = conn.prepare(&sql)?;
        let raws = stmt
            .query_map([id], RawRow::read)?
            .collect::<Result<Vec<_>, _>>()?;
        drop(stmt);
        drop(conn);
        raws.into_iter().map(RawRow::into_completion).collect()
    }

    /// Writes the chat fine-tuning line ([`Completion::fine_tuning_line`]) of every record
    /// matching `filter`, oldest first, one JSON object per line, and says what it skipped.
    pub fn export(
        &self,
        filter: &ExportFilter,
        out: &mut dyn Write,
    ) -> Result<ExportSummary, StoreError> {
        if let Some(g) = filter.min_grade {
            if !(0.0..=1.0).contains(&g) {
                return Err(StoreError::InvalidQuery {
                    param: "min_grade",
                    reason: format!("must be a number in [0, 1], got {g}"),
                });
            }
        }
        let conn = self.lock();
        let mut sql = format!("SELECT {COLUMNS} FROM completions c WHERE 1 = 1");
        let mut args = Vec::new();
        push_filters(
            &mut sql,
            &mut args,
            filter.owner.as_deref(),
            filter.model.as_deref(),
            &filter.metadata,
        );
        sql.push_str(" ORDER BY c.created_at, c.seq");
        let mut stmt = conn.prepare(&sql)?;
        let mut rows = stmt.query(params_from_iter(args.iter()))?;
        let mut summary = ExportSummary::default();
        while let Some(row) = rows.next()? {
            let record = RawRow::read(row)?.into_completion()?;
            if let Some(min) = filter.min_grade {
                match record.metadata.grade() {
                    None => {
                        summary.no_grade += 1;
                        continue;
                    }
                    Some(g) if g < min => {
                        summary.below_grade += 1;
                        continue;
                    }
                    Some(_) => {}
                }
            }
            let Some(line) = record.fine_tuning_line() else {
                summary.no_answer += 1;
                continue;
            };
            let text = json_text(&line, "the line")?;
            out.write_all(text.as_bytes()).map_err(StoreError::Write)?;
            out.write_all(b"\n").map_err(StoreError::Write)?;
            summary.written += 1;
        }
        out.flush().map_err(StoreError::Write)?;
        Ok(summary)
    }

    /// Record count, bytes used against the cap, the cap, and the database size.
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let conn = self.lock();
        let records: i64 = conn.query_row("SELECT count(*) FROM completions", [], |r| r.get(0))?;
        let used = used_bytes(&conn)?;
        let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        Ok(StoreStats {
            records: to_u64(records),
            used_bytes: used,
            max_bytes: self.options.max_bytes,
            file_bytes: to_u64(pages.saturating_mul(page_size)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_names_round_trip_and_unknown_names_list_the_known_ones() {
        for on_full in [OnFull::Refuse, OnFull::EvictOldest] {
            assert_eq!(on_full.as_str().parse::<OnFull>(), Ok(on_full));
        }
        for synchronous in [Synchronous::Full, Synchronous::Normal] {
            assert_eq!(synchronous.as_str().parse::<Synchronous>(), Ok(synchronous));
        }
        assert_eq!(OnFull::EvictOldest.as_str(), "evict_oldest");
        assert_eq!("drop".parse::<OnFull>(), Err("`drop` is not one of `refuse`, `evict_oldest`".to_string()));
        assert_eq!("FULL".parse::<Synchronous>(), Err("`FULL` is not one of `full`, `normal`".to_string()));
    }
}
