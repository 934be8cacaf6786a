//! Stored chat completions in SQLite (embedded, the default) or PostgreSQL (shared by several
//! server processes), with OpenAI's stored-completions queries and the chat fine-tuning export.
//!
//! A server stores a chat request that says `"store": true` together with its response, the
//! routing decision, the model and deployment that answered, the usage, the estimated cost and
//! the latency. Clients list, read, re-tag and delete their records through an API that mirrors
//! OpenAI's stored completions; an operator exports the records matching a filter as the chat
//! fine-tuning JSONL (`{"messages": [...]}`), the dataset for distilling a cheaper model.
//!
//! This crate is synchronous: an async server calls it from `spawn_blocking`. Without features it
//! is runtime-free (rusqlite over a bundled SQLite). The feature `postgres` adds the PostgreSQL
//! backend ([`Location::Postgres`]) through the synchronous `postgres` client, which runs a
//! private current-thread tokio runtime inside each connection: the API stays blocking, but the
//! feature brings tokio, so it is off by default (the server turns it on). Writing the backend on
//! `tokio-postgres` would make the crate async and every embedder carry a runtime; the sync client
//! costs one runtime per connection (a few threads' worth of memory, no extra threads).
//!
//! ```
//! use router_store::{ExportFilter, ListQuery, Metadata, NewCompletion, Store, StoreOptions};
//! use serde_json::json;
//!
//! let dir = tempfile::tempdir()?;
//! let store = Store::open(dir.path().join("completions.db"), StoreOptions::default())?;
//!
//! let request = json!({"model": "model-router", "messages": [{"role": "user", "content": "2+2?"}]});
//! let response = json!({"id": "chatcmpl-1", "object": "chat.completion", "model": "small",
//!     "choices": [{"index": 0, "message": {"role": "assistant", "content": "4"}, "finish_reason": "stop"}],
//!     "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}});
//! let mut record = NewCompletion::new("anonymous", request.as_object().cloned().unwrap_or_default(), response);
//! record.metadata = Metadata::from_json(&json!({"task": "math", "grade": "1"}))?;
//! let stored = store.insert(record)?; // committed when it returns
//! assert_eq!(stored.id, "chatcmpl-1");
//!
//! let page = store.list(&ListQuery {
//!     owner: Some("anonymous".into()),
//!     metadata: vec![("task".into(), "math".into())],
//!     ..ListQuery::default()
//! })?;
//! assert_eq!(page.data.len(), 1);
//! assert_eq!(page.data[0].usage.map(|u| u.total_tokens), Some(10));
//!
//! let mut jsonl = Vec::new();
//! let summary = store.export(&ExportFilter { min_grade: Some(0.5), ..ExportFilter::default() }, &mut jsonl)?;
//! assert_eq!(summary.written, 1);
//! assert_eq!(
//!     String::from_utf8(jsonl)?,
//!     "{\"messages\":[{\"content\":\"2+2?\",\"role\":\"user\"},{\"content\":\"4\",\"role\":\"assistant\"}]}\n"
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Design
//!
//! - **Backends.** [`Store::open`] opens an SQLite file; [`Store::open_location`] opens a
//!   [`Location`]: a file, or a `postgres://` URL whose password ([`PostgresUrl`]) is kept apart
//!   from the URL so that messages never show it. Both hold the same records with the same
//!   rules (cap, eviction, owners, filters, order, ids, shadows) and pass the same test suite.
//! - **Durability.** The database runs in WAL mode and every insert is one `IMMEDIATE`
//!   transaction that is committed before [`Store::insert`] returns, so a server that answers
//!   only after `insert` returned never acknowledges a record it could lose. The default
//!   [`Synchronous::Full`] fsyncs the WAL on every commit: an acknowledged record survives a
//!   process kill *and* a power loss or OS crash. [`Synchronous::Normal`] skips that fsync
//!   (faster on slow disks): a record still survives a killed process, since the commit is in
//!   the WAL file in the OS page cache, but a power loss may drop the last commits.
//! - **Size cap.** `max_bytes` bounds the bytes of the stored data, counted per record as the
//!   UTF-8 length of its text columns (id, owner, model, deployment, messages, request,
//!   response, decision JSON, metadata keys and values) plus [`RECORD_OVERHEAD_BYTES`]. Each
//!   record keeps its count and a one-row table keeps the total, both updated in the
//!   transaction that changes the records, so the check is O(1) and exact for that measure.
//!   SQLite's page count would also be cheap, but it does not shrink when records are deleted
//!   (free pages are reused, not returned) and so cannot tell whether evicting made room. The
//!   file is larger than the counted bytes by its indexes and page slack (typically 10–50 %)
//!   and the WAL (checkpointed at about 4 MiB). When a record does not fit, [`OnFull::Refuse`]
//!   (the default) fails the insert with [`StoreError::Full`] and [`OnFull::EvictOldest`]
//!   deletes the oldest records, of any owner, in the same transaction; a record larger than
//!   the whole cap is [`StoreError::TooLarge`] either way.
//! - **Owners.** A record belongs to the API key that stored it, kept as [`owner_of_key`] (a
//!   SHA-256, never the key); a server without keys stores under [`ANONYMOUS_OWNER`]. Queries
//!   take an optional owner: a server always passes the caller's, the export of an operator
//!   none (every owner).
//! - **Ids.** A record is stored under its response's id (`chatcmpl-...`); when the response
//!   has none, or the id is already taken (backends that reuse ids), under a fresh
//!   `chatcmpl-` + 24 hex digits, and the stored response's `id` is set to it.
//! - **Order and pages.** Lists sort by creation time (milliseconds), then insertion order;
//!   `after` is the last id of the previous page; `limit` is 1 to [`MAX_LIMIT`], default
//!   [`DEFAULT_LIMIT`]; `order` `asc` (default, as OpenAI) or `desc`.
//! - **Messages.** As OpenAI's `GET /v1/chat/completions/{id}/messages`, [`Store::messages`]
//!   returns the *request* messages (the answer is the completion's `choices`), each with an id
//!   `{completion id}-{index}`, paged like a list.
//! - **Shadows.** A server with `[shadow]` sends some requests, after the client has its answer,
//!   to other models too, and stores each of their answers as a record whose
//!   [`Completion::shadow_of`] is the id of the original exchange. The original is stored as
//!   well: under the client's owner when the client asked (`store: true`), else under
//!   [`ROUTER_OWNER`], which no API key maps to. [`Store::list`] leaves shadow answers out
//!   unless [`ListQuery::include_shadows`]; [`Store::shadows_of`] reads one record's shadows,
//!   whoever owns them; deleting a record deletes its shadows (they hold the same prompt);
//!   eviction does not (an evicted original leaves its shadows with a dangling `shadow_of`).
//! - **Metadata** follows OpenAI's limits ([`Metadata`]): at most 16 keys, keys of at most 64
//!   characters, values of at most 512. Filters match every given pair exactly.
//! - **Export and grades.** A record's grade is its metadata value `grade` parsed as a number
//!   in [0, 1] ([`Metadata::grade`]). [`Store::export`] writes, oldest first, one
//!   `{"messages": [...request messages..., {"role": "assistant", "content": ...}]}` line per
//!   matching record and counts what it skipped: no grade, grade below the minimum, no answer.
//! - **Schema.** (Both backends.) Tables `completions` (one row per record, JSON in text columns), `metadata`
//!   (one row per key, indexed by key and value for the filters, deleted with its record) and
//!   `stats` (the byte total), and `usage_minutes` (usage per deployment and minute, see
//!   [`UsageRow`]); SQLite's `PRAGMA user_version` is its schema version.
//! - **Concurrency.** SQLite: one connection behind a mutex: SQLite serialises writers anyway,
//!   and a query takes milliseconds. Other processes (the `store export` command) may open the
//!   same file at the same time; WAL lets them read while the server writes.
//! - **PostgreSQL.** Up to 8 connections per [`Store`] (opened on first use, reopened after one
//!   breaks), tables in the schema `model_router`. Every write transaction first locks the
//!   byte-total row (`SELECT ... FOR UPDATE`), so the writes of every process sharing the
//!   database run one at a time, as SQLite's `IMMEDIATE` transactions do: the cap is exact
//!   across processes and eviction never races. Reads do not wait for writes. A commit returns
//!   after PostgreSQL flushed it (`synchronous_commit = on`, [`Synchronous::Full`]); `Normal`
//!   sets it `off`. The schema version is the row `model_router.schema_version`; migrations run
//!   at open in one transaction under an advisory lock, so replicas starting together migrate
//!   once; a newer version is [`StoreError::Schema`]. Connections are plain TCP (no TLS): keep
//!   the database on loopback or a private network.
#![deny(missing_docs)]

mod error;
#[cfg(feature = "postgres")]
mod limits;
mod location;
mod metadata;
#[cfg(feature = "postgres")]
mod pg;
mod record;
mod sqlite;
mod store;
mod usage;

pub use error::StoreError;
#[cfg(feature = "postgres")]
pub use limits::{LimitVerdict, SharedWindows};
pub use location::{Location, PostgresUrl};
pub use metadata::{
    Metadata, MetadataError, GRADE_KEY, MAX_METADATA_KEYS, MAX_METADATA_KEY_CHARS,
    MAX_METADATA_VALUE_CHARS,
};
pub use store::{
    now_ms, openai_list, owner_of_key, Completion, ExportFilter, ExportSummary, Inserted,
    ListQuery, MessageQuery, NewCompletion, OnFull, Order, Page, Store, StoreOptions, StoreStats,
    Synchronous, Usage, ANONYMOUS_OWNER, DEFAULT_LIMIT, DEFAULT_MAX_BYTES, MAX_LIMIT,
    RECORD_OVERHEAD_BYTES, ROUTER_OWNER,
};
pub use usage::{
    minute_of_ms, read_usage_jsonl, write_usage_jsonl, SkippedLine, UsageLines, UsageRow,
};
