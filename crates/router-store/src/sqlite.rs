//! The SQLite backend: one connection behind a mutex, WAL mode, `IMMEDIATE` write transactions.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, params_from_iter, Connection, OptionalExtension, TransactionBehavior};

use crate::record::{
    export_filter_sql, list_filter_sql, make_room, select_columns, sql_u64, to_u64, Ledger,
    PreparedInsert, RawRow,
};
use crate::store::Backend;
use crate::usage::{USAGE_COLUMNS, USAGE_SUMS};
use crate::{
    ExportFilter, Inserted, ListQuery, Metadata, Order, StoreError, StoreOptions, Synchronous,
    UsageRow,
};

const SCHEMA_VERSION: i64 = 3;
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const METADATA_OBJECT: &str =
    "SELECT json_group_object(m.key, m.value) FROM metadata m WHERE m.seq = c.seq";

/// Version 1: completions, their metadata, the byte total.
const SCHEMA_V1: &str = "BEGIN IMMEDIATE;
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
     COMMIT;";

/// Version 2: shadow answers point at the completion they shadow.
const SCHEMA_V2: &str = "BEGIN IMMEDIATE;
     ALTER TABLE completions ADD COLUMN shadow_of TEXT;
     CREATE INDEX IF NOT EXISTS completions_shadow_of ON completions (shadow_of);
     PRAGMA user_version = 2;
     COMMIT;";

/// Version 3: usage per deployment and minute (see `crate::usage`).
const SCHEMA_V3: &str = "BEGIN IMMEDIATE;
     CREATE TABLE IF NOT EXISTS usage_minutes (
         minute INTEGER NOT NULL,
         deployment TEXT NOT NULL,
         model TEXT NOT NULL,
         spillover_from TEXT NOT NULL,
         requests INTEGER NOT NULL,
         input_tokens INTEGER NOT NULL,
         output_tokens INTEGER NOT NULL,
         estimated INTEGER NOT NULL,
         throttled INTEGER NOT NULL,
         PRIMARY KEY (minute, deployment, model, spillover_from)
     ) WITHOUT ROWID;
     PRAGMA user_version = 3;
     COMMIT;";

/// Stored completions in one SQLite file.
#[derive(Debug)]
pub(crate) struct SqliteBackend {
    conn: Mutex<Connection>,
}

fn read_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
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

fn get_in(conn: &Connection, owner: Option<&str>, id: &str) -> Result<Option<RawRow>, StoreError> {
    let sql = format!(
        "SELECT {} FROM completions c WHERE c.id = ?1 AND (?2 IS NULL OR c.owner = ?2)",
        select_columns(METADATA_OBJECT)
    );
    Ok(conn
        .query_row(&sql, params![id, owner], read_row)
        .optional()?)
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

fn insert_metadata(conn: &Connection, seq: i64, metadata: &Metadata) -> Result<(), StoreError> {
    let mut stmt =
        conn.prepare_cached("INSERT INTO metadata (seq, key, value) VALUES (?1, ?2, ?3)")?;
    for (key, value) in metadata.iter() {
        stmt.execute(params![seq, key, value])?;
    }
    Ok(())
}

/// The cap's bookkeeping on a connection inside an `IMMEDIATE` transaction.
struct SqliteLedger<'a>(&'a Connection);

impl Ledger for SqliteLedger<'_> {
    fn used_bytes(&mut self) -> Result<u64, StoreError> {
        let used: i64 = self
            .0
            .query_row("SELECT bytes FROM stats WHERE id = 1", [], |r| r.get(0))?;
        Ok(to_u64(used))
    }

    fn oldest_except(&mut self, skip_seq: i64) -> Result<Option<(i64, i64)>, StoreError> {
        Ok(self
            .0
            .prepare_cached(
                "SELECT seq, bytes FROM completions WHERE seq != ?1 ORDER BY created_at, seq LIMIT 1",
            )?
            .query_row([skip_seq], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    fn delete_seq(&mut self, seq: i64) -> Result<(), StoreError> {
        self.0
            .prepare_cached("DELETE FROM completions WHERE seq = ?1")?
            .execute([seq])?;
        Ok(())
    }

    fn add_used(&mut self, delta: i64) -> Result<(), StoreError> {
        self.0.execute(
            "UPDATE stats SET bytes = max(bytes + ?1, 0) WHERE id = 1",
            [delta],
        )?;
        Ok(())
    }
}

impl SqliteBackend {
    /// Opens (creating if needed, with its parent directories) the database at `path` in WAL
    /// mode with `options.synchronous`, and creates, migrates or checks the schema.
    pub(crate) fn open(path: &Path, options: StoreOptions) -> Result<SqliteBackend, StoreError> {
        let open_err = |source: rusqlite::Error| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NotWal {
                path: PathBuf::from(path),
                mode,
            });
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
                database: path.display().to_string(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        for (target, sql) in [(1, SCHEMA_V1), (2, SCHEMA_V2), (3, SCHEMA_V3)] {
            if version < target {
                conn.execute_batch(sql).map_err(open_err)?;
            }
        }
        Ok(SqliteBackend {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while the lock was held rolled its transaction back (the Transaction's drop):
        // the connection is usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn select(&self, sql: &str, args: &[String]) -> Result<Vec<RawRow>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt
            .query_map(params_from_iter(args.iter()), read_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

impl Backend for SqliteBackend {
    fn insert(
        &self,
        mut record: PreparedInsert,
        options: &StoreOptions,
    ) -> Result<Inserted, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let id = match record.candidate_id.take() {
            Some(id) if !id_taken(&tx, &id)? => id,
            _ => fresh_id(&tx)?,
        };
        let (response, bytes) = record.response_and_bytes(&id)?;
        let evicted = make_room(&mut SqliteLedger(&tx), options, bytes, None)?;
        tx.execute(
            "INSERT INTO completions (id, owner, created_at, model, deployment, messages, request,
                 response, decision, prompt_tokens, completion_tokens, total_tokens, cost_usd,
                 latency_ms, bytes, shadow_of)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            params![
                id,
                record.owner,
                record.created_at_ms,
                record.model,
                record.deployment,
                record.messages,
                record.request,
                response,
                record.decision,
                record.prompt_tokens,
                record.completion_tokens,
                record.total_tokens,
                record.cost_usd,
                record.latency_ms,
                sql_u64(bytes),
                record.shadow_of,
            ],
        )?;
        let seq = tx.last_insert_rowid();
        insert_metadata(&tx, seq, &record.metadata)?;
        SqliteLedger(&tx).add_used(sql_u64(bytes))?;
        tx.commit()?;
        Ok(Inserted { id, bytes, evicted })
    }

    fn get(&self, owner: Option<&str>, id: &str) -> Result<Option<RawRow>, StoreError> {
        get_in(&self.lock(), owner, id)
    }

    fn list(&self, query: &ListQuery, limit: usize) -> Result<Vec<RawRow>, StoreError> {
        let mut args = Vec::new();
        let mut sql = format!(
            "SELECT {} FROM completions c WHERE 1 = 1{}",
            select_columns(METADATA_OBJECT),
            list_filter_sql(query, '?', &mut args)
        );
        let (cmp, dir) = match query.order {
            Order::Asc => (">", "ASC"),
            Order::Desc => ("<", "DESC"),
        };
        if let Some(after) = &query.after {
            let cursor: Option<(i64, i64)> = self
                .lock()
                .query_row(
                    "SELECT created_at, seq FROM completions WHERE id = ?1 AND (?2 IS NULL OR owner = ?2)",
                    params![after, query.owner],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let (created_at, seq) = cursor.ok_or_else(|| StoreError::InvalidQuery {
                param: "after",
                reason: format!("no stored completion `{after}`"),
            })?;
            // Integers inline: they come from the database, not from the caller.
            let _ = write!(
                sql,
                " AND (c.created_at, c.seq) {cmp} ({created_at}, {seq})"
            );
        }
        let _ = write!(
            sql,
            " ORDER BY c.created_at {dir}, c.seq {dir} LIMIT {}",
            limit + 1
        );
        self.select(&sql, &args)
    }

    fn update_metadata(
        &self,
        owner: Option<&str>,
        id: &str,
        metadata: &Metadata,
        options: &StoreOptions,
    ) -> Result<Option<RawRow>, StoreError> {
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
        make_room(
            &mut SqliteLedger(&tx),
            options,
            new_bytes,
            Some((seq, to_u64(bytes))),
        )?;
        tx.execute("DELETE FROM metadata WHERE seq = ?1", [seq])?;
        insert_metadata(&tx, seq, metadata)?;
        tx.execute(
            "UPDATE completions SET bytes = ?1 WHERE seq = ?2",
            params![sql_u64(new_bytes), seq],
        )?;
        SqliteLedger(&tx).add_used(sql_u64(new_bytes) - bytes)?;
        let updated = get_in(&tx, owner, id)?;
        tx.commit()?;
        Ok(updated)
    }

    fn delete(&self, owner: Option<&str>, id: &str) -> Result<bool, StoreError> {
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
        SqliteLedger(&tx).add_used(-(bytes + shadow_bytes))?;
        tx.commit()?;
        Ok(true)
    }

    fn shadows_of(&self, id: &str) -> Result<Vec<RawRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM completions c WHERE c.shadow_of = ?1 ORDER BY c.created_at, c.seq",
            select_columns(METADATA_OBJECT)
        );
        self.select(&sql, &[id.to_string()])
    }

    fn each_exported(
        &self,
        filter: &ExportFilter,
        visit: &mut dyn FnMut(RawRow) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut args = Vec::new();
        let sql = format!(
            "SELECT {} FROM completions c WHERE 1 = 1{} ORDER BY c.created_at, c.seq",
            select_columns(METADATA_OBJECT),
            export_filter_sql(filter, '?', &mut args)
        );
        let conn = self.lock();
        let mut stmt = conn.prepare(&sql)?;
        let mut rows = stmt.query(params_from_iter(args.iter()))?;
        while let Some(row) = rows.next()? {
            visit(read_row(row)?)?;
        }
        Ok(())
    }

    fn sizes(&self) -> Result<(u64, u64, u64), StoreError> {
        let conn = self.lock();
        let records: i64 = conn.query_row("SELECT count(*) FROM completions", [], |r| r.get(0))?;
        let used = SqliteLedger(&conn).used_bytes()?;
        let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        Ok((
            to_u64(records),
            used,
            to_u64(pages.saturating_mul(page_size)),
        ))
    }
    fn add_usage(&self, rows: &[UsageRow]) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut stmt = tx.prepare_cached(&format!(
                "INSERT INTO usage_minutes ({USAGE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (minute, deployment, model, spillover_from) DO UPDATE SET {USAGE_SUMS}"
            ))?;
            for row in rows {
                stmt.execute(params![
                    row.minute,
                    row.deployment,
                    row.model,
                    row.spillover_from,
                    sql_u64(row.requests),
                    sql_u64(row.input_tokens),
                    sql_u64(row.output_tokens),
                    sql_u64(row.estimated),
                    sql_u64(row.throttled),
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn usage(&self, since: i64) -> Result<Vec<UsageRow>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {USAGE_COLUMNS} FROM usage_minutes WHERE minute >= ?1
             ORDER BY minute, deployment, model, spillover_from"
        ))?;
        let rows = stmt
            .query_map([since], |r| {
                Ok(UsageRow {
                    minute: r.get(0)?,
                    deployment: r.get(1)?,
                    model: r.get(2)?,
                    spillover_from: r.get(3)?,
                    requests: to_u64(r.get(4)?),
                    input_tokens: to_u64(r.get(5)?),
                    output_tokens: to_u64(r.get(6)?),
                    estimated: to_u64(r.get(7)?),
                    throttled: to_u64(r.get(8)?),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    fn prune_usage(&self, before: i64) -> Result<u64, StoreError> {
        let deleted = self
            .lock()
            .execute("DELETE FROM usage_minutes WHERE minute < ?1", [before])?;
        Ok(deleted as u64)
    }
}
