//! The PostgreSQL backend: a few connections of the synchronous `postgres` client, the tables in
//! their own schema (`model_router`), and every write serialised on the byte-total row so that
//! several processes share one exact size cap.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use postgres::types::ToSql;
use postgres::{Client, Config, GenericClient, NoTls, Row, Statement, Transaction};

use crate::record::{
    export_filter_sql, list_filter_sql, make_room, select_columns, sql_u64, to_u64, Ledger,
    PreparedInsert, RawRow,
};
use crate::store::Backend;
use crate::usage::{USAGE_COLUMNS, USAGE_SUMS};
use crate::{
    ExportFilter, Inserted, ListQuery, Metadata, Order, PostgresUrl, StoreError, StoreOptions,
    Synchronous, UsageRow,
};

/// The newest schema this build knows (`model_router.schema_version`).
const SCHEMA_VERSION: i64 = 3;
/// Connections per store: a request holds one for one short transaction.
const POOL_SIZE: usize = 8;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The advisory lock that makes processes opening the store at once migrate one at a time.
const MIGRATION_LOCK: i64 = 0x6d6f_6465_6c5f_7274;
const METADATA_OBJECT: &str =
    "SELECT json_object_agg(m.key, m.value)::text FROM metadata m WHERE m.seq = c.seq";

/// Migrations, each taking the schema from the version before to its own; they run in the one
/// transaction that holds [`MIGRATION_LOCK`].
const MIGRATIONS: [(i64, &str); 3] = [
    (
        1,
        "CREATE TABLE model_router.completions (
         seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
         id TEXT NOT NULL UNIQUE,
         owner TEXT NOT NULL,
         created_at BIGINT NOT NULL,
         model TEXT NOT NULL,
         deployment TEXT NOT NULL,
         messages TEXT NOT NULL,
         request TEXT NOT NULL,
         response TEXT NOT NULL,
         decision TEXT,
         prompt_tokens BIGINT,
         completion_tokens BIGINT,
         total_tokens BIGINT,
         cost_usd DOUBLE PRECISION NOT NULL,
         latency_ms BIGINT NOT NULL,
         bytes BIGINT NOT NULL,
         shadow_of TEXT
     );
     CREATE INDEX completions_created ON model_router.completions (created_at, seq);
     CREATE INDEX completions_owner ON model_router.completions (owner, created_at, seq);
     CREATE INDEX completions_shadow_of ON model_router.completions (shadow_of);
     CREATE TABLE model_router.metadata (
         seq BIGINT NOT NULL REFERENCES model_router.completions (seq) ON DELETE CASCADE,
         key TEXT NOT NULL,
         value TEXT NOT NULL,
         PRIMARY KEY (seq, key)
     );
     CREATE INDEX metadata_pair ON model_router.metadata (key, value);
     CREATE TABLE model_router.stats (
         id INTEGER PRIMARY KEY CHECK (id = 1),
         bytes BIGINT NOT NULL
     );
     INSERT INTO model_router.stats (id, bytes) VALUES (1, 0);",
    ),
    (
        // Usage per deployment and minute (see `crate::usage`).
        2,
        "CREATE TABLE model_router.usage_minutes (
         minute BIGINT NOT NULL,
         deployment TEXT NOT NULL,
         model TEXT NOT NULL,
         spillover_from TEXT NOT NULL,
         requests BIGINT NOT NULL,
         input_tokens BIGINT NOT NULL,
         output_tokens BIGINT NOT NULL,
         estimated BIGINT NOT NULL,
         throttled BIGINT NOT NULL,
         PRIMARY KEY (minute, deployment, model, spillover_from)
     );",
    ),
    (
        // Capacity windows and cooldowns shared by replicas (see `crate::limits`).
        3,
        crate::limits::MIGRATION,
    ),
];

/// Stored completions in one PostgreSQL database.
pub(crate) struct PgBackend {
    /// The URL without its password, for messages.
    database: String,
    config: Config,
    synchronous: Synchronous,
    /// Connections, opened on first use and again after one breaks.
    slots: Vec<Mutex<Option<Conn>>>,
    next: AtomicUsize,
}

impl std::fmt::Debug for PgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBackend")
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

impl Drop for PgBackend {
    fn drop(&mut self) {
        // Each client owns a private tokio runtime, which must not be dropped on an async
        // worker (a server may drop its last `Arc<Store>` there): close them on a plain thread.
        let slots = std::mem::take(&mut self.slots);
        let _ = std::thread::spawn(move || drop(slots)).join();
    }
}

/// A connection and the statements prepared on it, by SQL text: a statement is parsed once per
/// connection rather than on every call (the client's `query(&str)` prepares each time, a round
/// trip). Only fixed SQL texts go through the cache, so it stays as small as the code's set.
pub(crate) struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
}

impl Conn {
    /// Runs `sql` (a fixed text, prepared once per connection) on its own, outside a transaction.
    pub(crate) fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let statement = prepared(&mut self.client, &mut self.statements, sql)?;
        Ok(self.client.query(&statement, params)?)
    }

    /// [`Conn::query`] for a statement that returns exactly one row (else an error).
    pub(crate) fn query_one(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, StoreError> {
        let statement = prepared(&mut self.client, &mut self.statements, sql)?;
        Ok(self.client.query_one(&statement, params)?)
    }

    fn transaction(&mut self) -> Result<Tx<'_>, StoreError> {
        Ok(Tx {
            tx: self.client.transaction()?,
            statements: &mut self.statements,
        })
    }
}

/// The statement for `sql`, prepared on `client` once.
fn prepared(
    client: &mut impl GenericClient,
    statements: &mut HashMap<String, Statement>,
    sql: &str,
) -> Result<Statement, StoreError> {
    if let Some(statement) = statements.get(sql) {
        return Ok(statement.clone());
    }
    let statement = client.prepare(sql)?;
    statements.insert(sql.to_string(), statement.clone());
    Ok(statement)
}

/// A transaction with its connection's prepared statements.
struct Tx<'c> {
    tx: Transaction<'c>,
    statements: &'c mut HashMap<String, Statement>,
}

impl Tx<'_> {
    fn query_opt(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, StoreError> {
        let statement = prepared(&mut self.tx, self.statements, sql)?;
        Ok(self.tx.query_opt(&statement, params)?)
    }

    fn query_one(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, StoreError> {
        let statement = prepared(&mut self.tx, self.statements, sql)?;
        Ok(self.tx.query_one(&statement, params)?)
    }

    fn execute(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        let statement = prepared(&mut self.tx, self.statements, sql)?;
        Ok(self.tx.execute(&statement, params)?)
    }

    fn commit(self) -> Result<(), StoreError> {
        Ok(self.tx.commit()?)
    }
}

fn read_row(row: &Row) -> Result<RawRow, StoreError> {
    Ok(RawRow {
        id: row.try_get(0)?,
        owner: row.try_get(1)?,
        created_at: row.try_get(2)?,
        model: row.try_get(3)?,
        deployment: row.try_get(4)?,
        messages: row.try_get(5)?,
        request: row.try_get(6)?,
        response: row.try_get(7)?,
        decision: row.try_get(8)?,
        prompt_tokens: row.try_get(9)?,
        completion_tokens: row.try_get(10)?,
        total_tokens: row.try_get(11)?,
        cost_usd: row.try_get(12)?,
        latency_ms: row.try_get(13)?,
        bytes: row.try_get(14)?,
        metadata: row.try_get(15)?,
        shadow_of: row.try_get(16)?,
    })
}

fn params(args: &[String]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter().map(|a| a as &(dyn ToSql + Sync)).collect()
}

fn get_in(
    client: &mut impl GenericClient,
    statements: &mut HashMap<String, Statement>,
    owner: Option<&str>,
    id: &str,
) -> Result<Option<RawRow>, StoreError> {
    let sql = format!(
        "SELECT {} FROM completions c WHERE c.id = $1 AND ($2::text IS NULL OR c.owner = $2)",
        select_columns(METADATA_OBJECT)
    );
    let statement = prepared(client, statements, &sql)?;
    client
        .query_opt(&statement, &[&id, &owner])?
        .as_ref()
        .map(read_row)
        .transpose()
}

/// Takes the store's write lock (the byte-total row) until the transaction ends: writes of
/// every process run one at a time, as SQLite's `IMMEDIATE` transactions do.
fn lock_writes(tx: &mut Tx<'_>) -> Result<(), StoreError> {
    tx.execute("SELECT bytes FROM stats WHERE id = 1 FOR UPDATE", &[])?;
    Ok(())
}

fn id_taken(tx: &mut Tx<'_>, id: &str) -> Result<bool, StoreError> {
    Ok(tx
        .query_opt("SELECT 1 FROM completions WHERE id = $1", &[&id])?
        .is_some())
}

fn fresh_id(tx: &mut Tx<'_>) -> Result<String, StoreError> {
    for _ in 0..16 {
        let id: String = tx
            .query_one(
                "SELECT 'chatcmpl-' || substr(md5(gen_random_uuid()::text), 1, 24)",
                &[],
            )?
            .try_get(0)?;
        if !id_taken(tx, &id)? {
            return Ok(id);
        }
    }
    Err(StoreError::InvalidRecord(
        "could not generate a free id".into(),
    ))
}

fn insert_metadata(tx: &mut Tx<'_>, seq: i64, metadata: &Metadata) -> Result<(), StoreError> {
    if metadata.is_empty() {
        return Ok(());
    }
    let (keys, values): (Vec<&str>, Vec<&str>) = metadata.iter().unzip();
    tx.execute(
        "INSERT INTO metadata (seq, key, value) SELECT $1, k, v FROM unnest($2::text[], $3::text[]) AS t (k, v)",
        &[&seq, &keys, &values],
    )?;
    Ok(())
}

/// The cap's bookkeeping inside a transaction that holds [`lock_writes`].
struct PgLedger<'t, 'c>(&'t mut Tx<'c>);

impl Ledger for PgLedger<'_, '_> {
    fn used_bytes(&mut self) -> Result<u64, StoreError> {
        let used: i64 = self
            .0
            .query_one("SELECT bytes FROM stats WHERE id = 1", &[])?
            .try_get(0)?;
        Ok(to_u64(used))
    }

    fn oldest_except(&mut self, skip_seq: i64) -> Result<Option<(i64, i64)>, StoreError> {
        let row = self.0.query_opt(
            "SELECT seq, bytes FROM completions WHERE seq != $1 ORDER BY created_at, seq LIMIT 1",
            &[&skip_seq],
        )?;
        Ok(match row {
            Some(row) => Some((row.try_get(0)?, row.try_get(1)?)),
            None => None,
        })
    }

    fn delete_seq(&mut self, seq: i64) -> Result<(), StoreError> {
        self.0
            .execute("DELETE FROM completions WHERE seq = $1", &[&seq])?;
        Ok(())
    }

    fn add_used(&mut self, delta: i64) -> Result<(), StoreError> {
        self.0.execute(
            "UPDATE stats SET bytes = greatest(bytes + $1, 0) WHERE id = 1",
            &[&delta],
        )?;
        Ok(())
    }
}

/// Brings the schema to [`SCHEMA_VERSION`], or refuses a newer one, in one transaction under
/// [`MIGRATION_LOCK`] (replicas starting together wait for the first).
fn migrate(client: &mut Client, database: &str) -> Result<(), StoreError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS model_router;
         CREATE TABLE IF NOT EXISTS model_router.schema_version (
             id INTEGER PRIMARY KEY CHECK (id = 1),
             version BIGINT NOT NULL
         );
         INSERT INTO model_router.schema_version (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;",
    )?;
    let found: i64 = tx
        .query_one(
            "SELECT version FROM model_router.schema_version WHERE id = 1",
            &[],
        )?
        .try_get(0)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::Schema {
            database: database.to_string(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (version, sql) in MIGRATIONS {
        if found < version {
            tx.batch_execute(sql)?;
        }
    }
    tx.execute(
        "UPDATE model_router.schema_version SET version = $1 WHERE id = 1",
        &[&SCHEMA_VERSION],
    )?;
    tx.commit()?;
    Ok(())
}

impl PgBackend {
    /// Connects to `url` and creates, migrates or checks the schema.
    pub(crate) fn open(url: &PostgresUrl, options: StoreOptions) -> Result<PgBackend, StoreError> {
        let database = url.to_string();
        let mut config: Config = url.url().parse().map_err(|source| StoreError::Connect {
            database: database.clone(),
            source,
        })?;
        if let Some(password) = url.password() {
            config.password(password);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("model-router");
        }
        let backend = PgBackend {
            database,
            config,
            synchronous: options.synchronous,
            slots: (0..POOL_SIZE).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        };
        backend.with_conn(|conn| migrate(&mut conn.client, &backend.database))?;
        Ok(backend)
    }

    fn connect(&self) -> Result<Conn, StoreError> {
        let connect_err = |source| StoreError::Connect {
            database: self.database.clone(),
            source,
        };
        let mut client = self.config.connect(NoTls).map_err(connect_err)?;
        let commit = match self.synchronous {
            Synchronous::Full => "on",
            Synchronous::Normal => "off",
        };
        client
            .batch_execute(&format!(
                "SET search_path TO model_router; SET synchronous_commit TO {commit}"
            ))
            .map_err(connect_err)?;
        Ok(Conn {
            client,
            statements: HashMap::new(),
        })
    }

    /// A free connection if there is one, else waits for one; (re)connects it when needed.
    fn slot(&self) -> MutexGuard<'_, Option<Conn>> {
        let start = self.next.fetch_add(1, AtomicOrdering::Relaxed);
        let n = self.slots.len();
        (0..n)
            .find_map(|k| match self.slots[(start + k) % n].try_lock() {
                Ok(guard) => Some(guard),
                // A panic mid-transaction dropped the transaction, which rolled it back.
                Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            })
            .unwrap_or_else(|| {
                self.slots[start % n]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
            })
    }

    pub(crate) fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut slot = self.slot();
        let conn = match slot.take() {
            Some(conn) if !conn.client.is_closed() => slot.insert(conn),
            _ => slot.insert(self.connect()?),
        };
        let result = f(conn);
        if conn.client.is_closed() {
            *slot = None;
        }
        result
    }

    fn select(&self, sql: &str, args: &[String]) -> Result<Vec<RawRow>, StoreError> {
        self.with_conn(|conn| {
            conn.client
                .query(sql, &params(args))?
                .iter()
                .map(read_row)
                .collect()
        })
    }
}

impl Backend for PgBackend {
    fn insert(
        &self,
        mut record: PreparedInsert,
        options: &StoreOptions,
    ) -> Result<Inserted, StoreError> {
        self.with_conn(|conn| {
            let mut tx = conn.transaction()?;
            lock_writes(&mut tx)?;
            let id = match record.candidate_id.take() {
                Some(id) if !id_taken(&mut tx, &id)? => id,
                _ => fresh_id(&mut tx)?,
            };
            let (response, bytes) = record.response_and_bytes(&id)?;
            let evicted = make_room(&mut PgLedger(&mut tx), options, bytes, None)?;
            let seq: i64 = tx
                .query_one(
                    "INSERT INTO completions (id, owner, created_at, model, deployment, messages,
                         request, response, decision, prompt_tokens, completion_tokens,
                         total_tokens, cost_usd, latency_ms, bytes, shadow_of)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
                     RETURNING seq",
                    &[
                        &id,
                        &record.owner,
                        &record.created_at_ms,
                        &record.model,
                        &record.deployment,
                        &record.messages,
                        &record.request,
                        &response,
                        &record.decision,
                        &record.prompt_tokens,
                        &record.completion_tokens,
                        &record.total_tokens,
                        &record.cost_usd,
                        &record.latency_ms,
                        &sql_u64(bytes),
                        &record.shadow_of,
                    ],
                )?
                .try_get(0)?;
            insert_metadata(&mut tx, seq, &record.metadata)?;
            PgLedger(&mut tx).add_used(sql_u64(bytes))?;
            tx.commit()?;
            Ok(Inserted { id, bytes, evicted })
        })
    }

    fn get(&self, owner: Option<&str>, id: &str) -> Result<Option<RawRow>, StoreError> {
        self.with_conn(|conn| get_in(&mut conn.client, &mut conn.statements, owner, id))
    }

    fn list(&self, query: &ListQuery, limit: usize) -> Result<Vec<RawRow>, StoreError> {
        let mut args = Vec::new();
        let mut sql = format!(
            "SELECT {} FROM completions c WHERE TRUE{}",
            select_columns(METADATA_OBJECT),
            list_filter_sql(query, '$', &mut args)
        );
        let (cmp, dir) = match query.order {
            Order::Asc => (">", "ASC"),
            Order::Desc => ("<", "DESC"),
        };
        self.with_conn(|conn| {
            let client = &mut conn.client;
            if let Some(after) = &query.after {
                let cursor = client.query_opt(
                    "SELECT created_at, seq FROM completions WHERE id = $1 AND ($2::text IS NULL OR owner = $2)",
                    &[after, &query.owner],
                )?;
                let cursor = cursor.ok_or_else(|| StoreError::InvalidQuery {
                    param: "after",
                    reason: format!("no stored completion `{after}`"),
                })?;
                let (created_at, seq): (i64, i64) = (cursor.try_get(0)?, cursor.try_get(1)?);
                // Integers inline: they come from the database, not from the caller.
                let _ = write!(sql, " AND (c.created_at, c.seq) {cmp} ({created_at}, {seq})");
            }
            let _ = write!(
                sql,
                " ORDER BY c.created_at {dir}, c.seq {dir} LIMIT {}",
                limit + 1
            );
            client
                .query(&sql, &params(&args))?
                .iter()
                .map(read_row)
                .collect()
        })
    }

    fn update_metadata(
        &self,
        owner: Option<&str>,
        id: &str,
        metadata: &Metadata,
        options: &StoreOptions,
    ) -> Result<Option<RawRow>, StoreError> {
        self.with_conn(|conn| {
            let mut tx = conn.transaction()?;
            lock_writes(&mut tx)?;
            let row = tx.query_opt(
                "SELECT c.seq, c.bytes,
                     (SELECT coalesce(sum(octet_length(m.key) + octet_length(m.value)), 0)::bigint
                      FROM metadata m WHERE m.seq = c.seq)
                 FROM completions c WHERE c.id = $1 AND ($2::text IS NULL OR c.owner = $2)",
                &[&id, &owner],
            )?;
            let Some(row) = row else {
                return Ok(None);
            };
            let (seq, bytes, old_meta): (i64, i64, i64) =
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            let new_bytes = to_u64(bytes)
                .saturating_sub(to_u64(old_meta))
                .saturating_add(metadata.byte_len());
            make_room(
                &mut PgLedger(&mut tx),
                options,
                new_bytes,
                Some((seq, to_u64(bytes))),
            )?;
            tx.execute("DELETE FROM metadata WHERE seq = $1", &[&seq])?;
            insert_metadata(&mut tx, seq, metadata)?;
            tx.execute(
                "UPDATE completions SET bytes = $1 WHERE seq = $2",
                &[&sql_u64(new_bytes), &seq],
            )?;
            PgLedger(&mut tx).add_used(sql_u64(new_bytes) - bytes)?;
            let updated = get_in(&mut tx.tx, tx.statements, owner, id)?;
            tx.commit()?;
            Ok(updated)
        })
    }

    fn delete(&self, owner: Option<&str>, id: &str) -> Result<bool, StoreError> {
        self.with_conn(|conn| {
            let mut tx = conn.transaction()?;
            lock_writes(&mut tx)?;
            let row = tx.query_opt(
                "DELETE FROM completions WHERE id = $1 AND ($2::text IS NULL OR owner = $2) RETURNING bytes",
                &[&id, &owner],
            )?;
            let Some(row) = row else {
                return Ok(false);
            };
            let bytes: i64 = row.try_get(0)?;
            let shadow_bytes: i64 = tx
                .query_one(
                    "WITH gone AS (DELETE FROM completions WHERE shadow_of = $1 RETURNING bytes)
                     SELECT coalesce(sum(bytes), 0)::bigint FROM gone",
                    &[&id],
                )?
                .try_get(0)?;
            PgLedger(&mut tx).add_used(-(bytes + shadow_bytes))?;
            tx.commit()?;
            Ok(true)
        })
    }

    fn shadows_of(&self, id: &str) -> Result<Vec<RawRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM completions c WHERE c.shadow_of = $1 ORDER BY c.created_at, c.seq",
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
            "SELECT {} FROM completions c WHERE TRUE{} ORDER BY c.created_at, c.seq",
            select_columns(METADATA_OBJECT),
            export_filter_sql(filter, '$', &mut args)
        );
        self.with_conn(|conn| {
            // Streamed: the rows are not all held in memory.
            let mut rows = conn.client.query_raw(&sql, args.iter())?;
            while let Some(row) = rows.next()? {
                visit(read_row(&row)?)?;
            }
            Ok(())
        })
    }

    fn sizes(&self) -> Result<(u64, u64, u64), StoreError> {
        self.with_conn(|conn| {
            let row = conn.client.query_one(
                "SELECT (SELECT count(*) FROM completions),
                        (SELECT bytes FROM stats WHERE id = 1),
                        pg_total_relation_size('completions') + pg_total_relation_size('metadata')
                            + pg_total_relation_size('stats')",
                &[],
            )?;
            let (records, used, size): (i64, i64, i64) =
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            Ok((to_u64(records), to_u64(used), to_u64(size)))
        })
    }
    fn add_usage(&self, rows: &[UsageRow]) -> Result<(), StoreError> {
        // No write lock: usage is outside the byte cap, and an upsert on the key is atomic, so
        // replicas adding the same minute at once sum correctly.
        let sql = format!(
            "INSERT INTO usage_minutes ({USAGE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (minute, deployment, model, spillover_from) DO UPDATE SET {USAGE_SUMS}"
        );
        self.with_conn(|conn| {
            let mut tx = conn.transaction()?;
            for row in rows {
                tx.execute(
                    &sql,
                    &[
                        &row.minute,
                        &row.deployment,
                        &row.model,
                        &row.spillover_from,
                        &sql_u64(row.requests),
                        &sql_u64(row.input_tokens),
                        &sql_u64(row.output_tokens),
                        &sql_u64(row.estimated),
                        &sql_u64(row.throttled),
                    ],
                )?;
            }
            tx.commit()
        })
    }

    fn usage(&self, since: i64) -> Result<Vec<UsageRow>, StoreError> {
        let sql = format!(
            "SELECT {USAGE_COLUMNS} FROM usage_minutes WHERE minute >= $1
             ORDER BY minute, deployment, model, spillover_from"
        );
        self.with_conn(|conn| {
            conn.client
                .query(&sql, &[&since])?
                .iter()
                .map(|r| {
                    Ok(UsageRow {
                        minute: r.try_get(0)?,
                        deployment: r.try_get(1)?,
                        model: r.try_get(2)?,
                        spillover_from: r.try_get(3)?,
                        requests: to_u64(r.try_get(4)?),
                        input_tokens: to_u64(r.try_get(5)?),
                        output_tokens: to_u64(r.try_get(6)?),
                        estimated: to_u64(r.try_get(7)?),
                        throttled: to_u64(r.try_get(8)?),
                    })
                })
                .collect()
        })
    }

    fn prune_usage(&self, before: i64) -> Result<u64, StoreError> {
        self.with_conn(|conn| {
            Ok(conn
                .client
                .execute("DELETE FROM usage_minutes WHERE minute < $1", &[&before])?)
        })
    }
}
