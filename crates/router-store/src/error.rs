//! The store's error type.

use std::path::PathBuf;

use crate::MetadataError;

/// What can go wrong storing or querying completions.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file cannot be opened, created or used.
    #[error("{path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The database's directory cannot be created.
    #[error("{path}: cannot create the directory: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The database cannot be put in WAL mode (e.g. it lies on a network file system).
    #[error("{path}: cannot use write-ahead logging (journal_mode is `{mode}`)")]
    NotWal {
        /// The database file.
        path: PathBuf,
        /// The journal mode SQLite kept.
        mode: String,
    },
    /// The database was written by a newer version of this crate: this build refuses to use it
    /// rather than misread it.
    #[error("{database}: the store's schema is version {found}, written by a newer model-router; this build reads versions up to {supported}: upgrade it, or use another database")]
    Schema {
        /// The database (a file, or a PostgreSQL URL without its password).
        database: String,
        /// The database's schema version (SQLite's `user_version`; PostgreSQL's
        /// `model_router.schema_version`).
        found: i64,
        /// The newest this build knows.
        supported: i64,
    },
    /// An SQLite error during a query or a write.
    #[error("store database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The PostgreSQL database cannot be reached, or refused the connection or the schema setup.
    #[cfg(feature = "postgres")]
    #[error("{database}: {}", postgres_message(.source))]
    Connect {
        /// The URL (without its password).
        database: String,
        /// The client's error.
        #[source]
        source: postgres::Error,
    },
    /// A PostgreSQL error during a query or a write.
    #[cfg(feature = "postgres")]
    #[error("store database (PostgreSQL): {}", postgres_message(.0))]
    Postgres(#[from] postgres::Error),
    /// A PostgreSQL URL given to a build without the `postgres` feature.
    #[error(
        "{database}: this build has no PostgreSQL support (router-store's feature `postgres`)"
    )]
    NoPostgres {
        /// The URL (without its password).
        database: String,
    },
    /// A stored JSON column cannot be read back.
    #[error("stored completion `{id}`: column `{column}` is not valid JSON: {reason}")]
    Corrupt {
        /// The record.
        id: String,
        /// The column.
        column: &'static str,
        /// The parser's message.
        reason: String,
    },
    /// Invalid metadata.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// Storing the record would take the store over `max_bytes` and `on_full` is `refuse`.
    #[error("store full: {used} of {max} bytes used and the record needs {needed} (on_full = \"refuse\")")]
    Full {
        /// Bytes the record needs.
        needed: u64,
        /// Bytes in use.
        used: u64,
        /// The cap.
        max: u64,
    },
    /// The record alone is larger than `max_bytes`: no eviction can make room for it.
    #[error("the record needs {needed} bytes, more than the whole store (max_bytes = {max})")]
    TooLarge {
        /// Bytes the record needs.
        needed: u64,
        /// The cap.
        max: u64,
    },
    /// A query parameter is invalid (a limit out of range, an unknown `after` cursor, ...).
    #[error("`{param}`: {reason}")]
    InvalidQuery {
        /// The parameter, e.g. `limit` or `after`.
        param: &'static str,
        /// Why.
        reason: String,
    },
    /// An option is invalid (e.g. `max_bytes = 0`).
    #[error("`{option}`: {reason}")]
    InvalidOption {
        /// The option.
        option: &'static str,
        /// Why.
        reason: String,
    },
    /// The record to store is malformed (e.g. the request has no `messages` array).
    #[error("cannot store: {0}")]
    InvalidRecord(String),
    /// Writing an export failed.
    #[error("writing the export: {0}")]
    Write(#[source] std::io::Error),
    /// A usage file could not be read.
    #[error("reading usage: {0}")]
    Read(#[source] std::io::Error),
}

/// The client's message with its cause (`db error` or `error connecting to server` alone say
/// nothing): the server's message and SQLSTATE, or the I/O error.
#[cfg(feature = "postgres")]
fn postgres_message(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    let outer = e.to_string();
    match std::error::Error::source(e).map(ToString::to_string) {
        // Some causes repeat the outer message.
        Some(inner) if inner.starts_with(&outer) => inner,
        Some(inner) => format!("{outer}: {inner}"),
        None => outer,
    }
}

impl StoreError {
    /// Whether this is the store refusing for lack of room ([`StoreError::Full`] or
    /// [`StoreError::TooLarge`]) rather than a failure.
    pub fn is_full(&self) -> bool {
        matches!(self, StoreError::Full { .. } | StoreError::TooLarge { .. })
    }
}
