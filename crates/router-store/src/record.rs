//! What both backends share: a record prepared for insertion, a row read back, the filters'
//! SQL, and the size cap's rule (refuse or evict the oldest).

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::{
    Completion, ExportFilter, ListQuery, Metadata, NewCompletion, OnFull, StoreError, StoreOptions,
    Usage, DEFAULT_LIMIT, MAX_LIMIT, RECORD_OVERHEAD_BYTES,
};

/// The selected columns, in [`RawRow`]'s order; `metadata_object` is the backend's expression
/// for the record's metadata as a JSON object text (`NULL` when it has none).
pub(crate) fn select_columns(metadata_object: &str) -> String {
    format!(
        "c.id, c.owner, c.created_at, c.model, c.deployment, c.messages, c.request, c.response, \
         c.decision, c.prompt_tokens, c.completion_tokens, c.total_tokens, c.cost_usd, \
         c.latency_ms, c.bytes, ({metadata_object}), c.shadow_of"
    )
}

pub(crate) fn sql_u64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(crate) fn check_limit(limit: Option<usize>) -> Result<usize, StoreError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(StoreError::InvalidQuery {
            param: "limit",
            reason: format!("must be between 1 and {MAX_LIMIT}, got {n}"),
        }),
    }
}

pub(crate) fn json_text(value: &impl Serialize, what: &str) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::InvalidRecord(format!("{what} cannot be serialised: {e}")))
}

/// The filters list and export share, as SQL over `completions c`. Parameters are numbered
/// (`?N` for SQLite, `$N` for PostgreSQL: `mark`) after those already in `args`, to which their
/// values are appended.
pub(crate) fn filter_sql(
    owner: Option<&str>,
    model: Option<&str>,
    metadata: &[(String, String)],
    mark: char,
    args: &mut Vec<String>,
) -> String {
    let mut sql = String::new();
    let param = |args: &mut Vec<String>, value: &str| {
        args.push(value.to_string());
        format!("{mark}{}", args.len())
    };
    if let Some(owner) = owner {
        let p = param(args, owner);
        let _ = write!(sql, " AND c.owner = {p}");
    }
    if let Some(model) = model {
        let p = param(args, model);
        let _ = write!(sql, " AND c.model = {p}");
    }
    for (key, value) in metadata {
        let k = param(args, key);
        let v = param(args, value);
        let _ = write!(
            sql,
            " AND EXISTS (SELECT 1 FROM metadata m WHERE m.seq = c.seq AND m.key = {k} AND m.value = {v})"
        );
    }
    sql
}

/// The filters of a list query (owner, model, metadata, shadows), see [`filter_sql`].
pub(crate) fn list_filter_sql(query: &ListQuery, mark: char, args: &mut Vec<String>) -> String {
    let mut sql = filter_sql(
        query.owner.as_deref(),
        query.model.as_deref(),
        &query.metadata,
        mark,
        args,
    );
    if !query.include_shadows {
        sql.push_str(" AND c.shadow_of IS NULL");
    }
    sql
}

/// The filters of an export, see [`filter_sql`].
pub(crate) fn export_filter_sql(
    filter: &ExportFilter,
    mark: char,
    args: &mut Vec<String>,
) -> String {
    filter_sql(
        filter.owner.as_deref(),
        filter.model.as_deref(),
        &filter.metadata,
        mark,
        args,
    )
}

/// A record ready to insert: its JSON serialised, its bytes counted but for the id (known only
/// inside the transaction).
pub(crate) struct PreparedInsert {
    /// The id asked for, when usable.
    pub candidate_id: Option<String>,
    pub owner: String,
    pub created_at_ms: i64,
    pub model: String,
    pub deployment: String,
    pub messages: String,
    pub request: String,
    pub decision: Option<String>,
    pub response: Value,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub total_tokens: Option<i64>,
    pub cost_usd: f64,
    pub latency_ms: i64,
    pub metadata: Metadata,
    pub shadow_of: Option<String>,
    /// Bytes of everything but the id and the response.
    fixed_bytes: u64,
}

impl PreparedInsert {
    pub(crate) fn new(new: NewCompletion) -> Result<Self, StoreError> {
        let NewCompletion {
            id,
            owner,
            created_at_ms,
            mut request,
            response,
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
        let fixed_bytes = RECORD_OVERHEAD_BYTES
            + (owner.len()
                + model.len()
                + deployment.len()
                + messages.len()
                + request.len()
                + decision.as_ref().map_or(0, String::len)
                + shadow_of.as_ref().map_or(0, String::len)) as u64
            + metadata.byte_len();
        Ok(PreparedInsert {
            candidate_id: id.filter(|id| !id.is_empty() && id.len() <= 256),
            owner,
            created_at_ms,
            model,
            deployment,
            messages,
            request,
            decision,
            response,
            prompt_tokens: usage.map(|u| sql_u64(u.prompt_tokens)),
            completion_tokens: usage.map(|u| sql_u64(u.completion_tokens)),
            total_tokens: usage.map(|u| sql_u64(u.total_tokens)),
            cost_usd: if cost_usd.is_finite() { cost_usd } else { 0.0 },
            latency_ms: sql_u64(latency_ms),
            metadata,
            shadow_of,
            fixed_bytes,
        })
    }

    /// The response text with its `id` set to `id`, and the bytes the record counts for.
    pub(crate) fn response_and_bytes(&mut self, id: &str) -> Result<(String, u64), StoreError> {
        if let Value::Object(object) = &mut self.response {
            if object.get("id").and_then(Value::as_str) != Some(id) {
                object.insert("id".into(), Value::String(id.to_string()));
            }
        }
        let text = json_text(&self.response, "the response")?;
        let bytes = self.fixed_bytes + (id.len() + text.len()) as u64;
        Ok((text, bytes))
    }
}

/// A row as a backend gives it, before its JSON is parsed.
pub(crate) struct RawRow {
    pub id: String,
    pub owner: String,
    pub created_at: i64,
    pub model: String,
    pub deployment: String,
    pub messages: String,
    pub request: String,
    pub response: String,
    pub decision: Option<String>,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub total_tokens: Option<i64>,
    pub cost_usd: f64,
    pub latency_ms: i64,
    pub bytes: i64,
    pub metadata: Option<String>,
    pub shadow_of: Option<String>,
}

impl RawRow {
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

    pub(crate) fn into_completion(self) -> Result<Completion, StoreError> {
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

/// The writes the size cap needs, inside a backend's write transaction (which holds the
/// store's write lock, so the byte total cannot change under it).
pub(crate) trait Ledger {
    /// Bytes counted against the cap.
    fn used_bytes(&mut self) -> Result<u64, StoreError>;
    /// The oldest record other than `skip_seq`: (seq, its bytes).
    fn oldest_except(&mut self, skip_seq: i64) -> Result<Option<(i64, i64)>, StoreError>;
    /// Deletes one record (its metadata goes with it).
    fn delete_seq(&mut self, seq: i64) -> Result<(), StoreError>;
    /// Adds `delta` (possibly negative) to the byte total.
    fn add_used(&mut self, delta: i64) -> Result<(), StoreError>;
}

/// Makes room for `needed` bytes, counting the record `replacing` (seq, its current bytes) as
/// gone: refuses, or evicts the oldest other records. Returns how many were evicted.
pub(crate) fn make_room(
    ledger: &mut dyn Ledger,
    options: &StoreOptions,
    needed: u64,
    replacing: Option<(i64, u64)>,
) -> Result<u64, StoreError> {
    let max = options.max_bytes;
    if needed > max {
        return Err(StoreError::TooLarge { needed, max });
    }
    let (skip_seq, skip_bytes) = replacing.unwrap_or((-1, 0));
    let mut used = ledger.used_bytes()?.saturating_sub(skip_bytes);
    if used + needed <= max {
        return Ok(0);
    }
    if options.on_full == OnFull::Refuse {
        return Err(StoreError::Full { needed, used, max });
    }
    let mut evicted = 0u64;
    while used + needed > max {
        let Some((seq, bytes)) = ledger.oldest_except(skip_seq)? else {
            break;
        };
        ledger.delete_seq(seq)?;
        ledger.add_used(-bytes)?;
        used = used.saturating_sub(to_u64(bytes));
        evicted += 1;
    }
    if used + needed > max {
        // Only the accounting of a damaged database can get here.
        return Err(StoreError::Full { needed, used, max });
    }
    Ok(evicted)
}
