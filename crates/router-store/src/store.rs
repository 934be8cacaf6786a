//! The store's types and its API over either backend (SQLite or PostgreSQL).

use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::record::{check_limit, json_text, PreparedInsert, RawRow};
use crate::{Location, Metadata, StoreError};

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

/// When a commit reaches the disk: SQLite's `synchronous` in WAL mode; on PostgreSQL the
/// session's `synchronous_commit` (`on` or `off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// `FULL` (PostgreSQL: `synchronous_commit = on`): every commit is fsynced before it
    /// returns. A stored record survives a process kill and a power loss or OS crash.
    #[default]
    Full,
    /// `NORMAL` (PostgreSQL: `synchronous_commit = off`): a commit is written to the WAL (the
    /// OS's page cache; PostgreSQL's WAL buffers) before it returns and flushed shortly after.
    /// A stored record survives a kill of the router; a power loss or OS crash (PostgreSQL: a
    /// crash of the database server) may lose the last commits (never corrupts the database).
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
    /// The database's size: for SQLite its pages (`page_count × page_size`, WAL content
    /// included); for PostgreSQL the store's tables with their indexes and TOAST
    /// (`pg_total_relation_size`).
    pub file_bytes: u64,
}

/// One database behind [`Store`]'s API. Every write is one transaction committed before the
/// method returns; rows come back unparsed ([`RawRow`]) so both backends share the parsing.
pub(crate) trait Backend: Send + Sync + std::fmt::Debug {
    /// Stores `record`, making room per `options`.
    fn insert(
        &self,
        record: PreparedInsert,
        options: &StoreOptions,
    ) -> Result<Inserted, StoreError>;
    /// The record `id` of `owner` (any owner when `None`).
    fn get(&self, owner: Option<&str>, id: &str) -> Result<Option<RawRow>, StoreError>;
    /// Up to `limit + 1` rows of the page `query` asks for, in its order.
    fn list(&self, query: &ListQuery, limit: usize) -> Result<Vec<RawRow>, StoreError>;
    /// Replaces a record's metadata (the cap applies per `options`); the updated row.
    fn update_metadata(
        &self,
        owner: Option<&str>,
        id: &str,
        metadata: &Metadata,
        options: &StoreOptions,
    ) -> Result<Option<RawRow>, StoreError>;
    /// Deletes a record and its shadows; whether it existed.
    fn delete(&self, owner: Option<&str>, id: &str) -> Result<bool, StoreError>;
    /// The shadows of record `id`, oldest first.
    fn shadows_of(&self, id: &str) -> Result<Vec<RawRow>, StoreError>;
    /// Calls `visit` on every row matching `filter`'s owner, model and metadata, oldest first.
    fn each_exported(
        &self,
        filter: &ExportFilter,
        visit: &mut dyn FnMut(RawRow) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
    /// (records, bytes used against the cap, the database's size).
    fn sizes(&self) -> Result<(u64, u64, u64), StoreError>;
    /// Upserts usage rows, summing into existing ones (one transaction).
    fn add_usage(&self, rows: &[crate::UsageRow]) -> Result<(), StoreError>;
    /// The usage rows from minute `since` on, in key order.
    fn usage(&self, since: i64) -> Result<Vec<crate::UsageRow>, StoreError>;
    /// Deletes the usage rows before minute `before`; how many.
    fn prune_usage(&self, before: i64) -> Result<u64, StoreError>;
}

/// Stored chat completions in one database: an SQLite file (WAL mode, the embedded default) or
/// a PostgreSQL database (shared by several server processes; crate feature `postgres`). Share
/// it behind an `Arc`; its methods block (an async server calls them from `spawn_blocking`).
#[derive(Debug)]
pub struct Store {
    pub(crate) backend: Box<dyn Backend>,
    options: StoreOptions,
    location: Location,
}

impl Store {
    /// Opens (creating if needed, with its parent directories) the SQLite database at `path` in
    /// WAL mode with `options.synchronous`, and creates, migrates or checks the schema.
    pub fn open(path: impl AsRef<Path>, options: StoreOptions) -> Result<Store, StoreError> {
        Store::open_location(&Location::Sqlite(path.as_ref().to_path_buf()), options)
    }

    /// Opens the store at `location`: an SQLite file as [`Store::open`], or a PostgreSQL
    /// database (connects, then creates or migrates the schema in one transaction that
    /// concurrent openers wait for; a schema newer than this build is [`StoreError::Schema`]).
    pub fn open_location(location: &Location, options: StoreOptions) -> Result<Store, StoreError> {
        if options.max_bytes == 0 {
            return Err(StoreError::InvalidOption {
                option: "max_bytes",
                reason: "must be at least 1".into(),
            });
        }
        let backend: Box<dyn Backend> = match location {
            Location::Sqlite(path) => Box::new(crate::sqlite::SqliteBackend::open(path, options)?),
            #[cfg(feature = "postgres")]
            Location::Postgres(url) => Box::new(crate::pg::PgBackend::open(url, options)?),
            #[cfg(not(feature = "postgres"))]
            Location::Postgres(url) => {
                return Err(StoreError::NoPostgres {
                    database: url.to_string(),
                })
            }
        };
        Ok(Store {
            backend,
            options,
            location: location.clone(),
        })
    }

    /// Where the store lives (its `Display` never shows a password).
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The options it was opened with.
    pub fn options(&self) -> StoreOptions {
        self.options
    }

    /// Stores a record in one transaction, committed (per [`Synchronous`]) before it returns.
    /// The response's `id` is set to the stored id.
    pub fn insert(&self, new: NewCompletion) -> Result<Inserted, StoreError> {
        self.backend
            .insert(PreparedInsert::new(new)?, &self.options)
    }

    /// The record `id`, if it exists and (when `owner` is given) belongs to `owner`.
    pub fn get(&self, owner: Option<&str>, id: &str) -> Result<Option<Completion>, StoreError> {
        self.backend
            .get(owner, id)?
            .map(RawRow::into_completion)
            .transpose()
    }

    /// A page of records matching `query`, in its order.
    pub fn list(&self, query: &ListQuery) -> Result<Page<Completion>, StoreError> {
        let limit = check_limit(query.limit)?;
        let rows = self.backend.list(query, limit)?;
        let has_more = rows.len() > limit;
        let data = rows
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
        self.backend
            .update_metadata(owner, id, metadata, &self.options)?
            .map(RawRow::into_completion)
            .transpose()
    }

    /// Deletes record `id` (of `owner`, when given) and its shadow answers (whoever owns
    /// them: they hold the same prompt); whether the record existed.
    pub fn delete(&self, owner: Option<&str>, id: &str) -> Result<bool, StoreError> {
        self.backend.delete(owner, id)
    }

    /// The shadow answers of record `id` (records whose [`Completion::shadow_of`] is `id`), of
    /// any owner, oldest first: other models' answers to the same request.
    pub fn shadows_of(&self, id: &str) -> Result<Vec<Completion>, StoreError> {
        self.backend
            .shadows_of(id)?
            .into_iter()
            .map(RawRow::into_completion)
            .collect()
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
        let mut summary = ExportSummary::default();
        self.backend.each_exported(filter, &mut |row| {
            let record = row.into_completion()?;
            if let Some(min) = filter.min_grade {
                match record.metadata.grade() {
                    None => {
                        summary.no_grade += 1;
                        return Ok(());
                    }
                    Some(g) if g < min => {
                        summary.below_grade += 1;
                        return Ok(());
                    }
                    Some(_) => {}
                }
            }
            let Some(line) = record.fine_tuning_line() else {
                summary.no_answer += 1;
                return Ok(());
            };
            let text = json_text(&line, "the line")?;
            out.write_all(text.as_bytes()).map_err(StoreError::Write)?;
            out.write_all(b"\n").map_err(StoreError::Write)?;
            summary.written += 1;
            Ok(())
        })?;
        out.flush().map_err(StoreError::Write)?;
        Ok(summary)
    }

    /// Record count, bytes used against the cap, the cap, and the database size.
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let (records, used_bytes, file_bytes) = self.backend.sizes()?;
        Ok(StoreStats {
            records,
            used_bytes,
            max_bytes: self.options.max_bytes,
            file_bytes,
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
        assert_eq!(
            "drop".parse::<OnFull>(),
            Err("`drop` is not one of `refuse`, `evict_oldest`".to_string())
        );
        assert_eq!(
            "FULL".parse::<Synchronous>(),
            Err("`FULL` is not one of `full`, `normal`".to_string())
        );
    }
}
