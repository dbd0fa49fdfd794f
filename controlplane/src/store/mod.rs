//! The store: one storage interface, two explicit sqlx backends (SQLite and
//! PostgreSQL, not the `Any` driver). Callers (gateway, REST API, engines) see
//! only [`Store`] and domain types; the SQL lives in [`sqlite`] and
//! [`postgres`], one function beside its twin, each backend with its own
//! migrations under `controlplane/migrations/<backend>/`.
//!
//! Invariants:
//! - Timestamps are epoch milliseconds in `BIGINT` columns on both backends.
//! - Ingest is one transaction per call, idempotent on `(host_id, seq)`;
//!   `check_latest` only moves forward; `hosts.last_seq` is the highest stored.
//! - Labels (assigned by the control plane) and facts (self-reported) are
//!   separate columns; only labels are ever matched by selectors.
//! - Keyset pagination: a page says `has_more` only when another matching row
//!   exists, also when filtering happens in Rust after the scan.
//! - A [`StoreError`] is for logs; the REST layer never shows it to a client.
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use steward_shared::selector::Selector;
use steward_shared::status::{CheckResult, CheckStatus, Value};

use crate::audit::AuditEntry;
use crate::model::{AgentHello, ApiToken, FleetStats, Host, IngestBatch, LatestCheck, Page, StatusCounts};
use crate::rbac::HostFilter;

pub mod alert;
pub mod alert_sources;
#[cfg(test)]
mod alert_tests;
pub mod audit;
mod backup;
pub mod identity;
#[cfg(test)]
mod identity_tests;
pub mod jobs;
pub mod kpi;
mod kpi_counts;
mod kpi_extra;
mod postgres;
pub mod rbac;
pub mod rollouts;
pub mod slo;
#[cfg(test)]
mod slo_tests;
mod sql;
mod sqlite;
pub mod testdb;
#[cfg(test)]
mod tests;

/// Page size used when a list is filtered in Rust (selector) after a scan.
const FILTERED_SCAN_ROWS: usize = 500;
/// Rows deleted per statement by [`Store::prune_results`].
const PRUNE_CHUNK_ROWS: i64 = 5_000;

/// Errors of the storage layer. Logged, never shown to API clients.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Invalid(String),
    /// The database cannot be reached or opened: one line with the cause and the fix.
    #[error("{0}")]
    Connect(String),
}

/// The control plane's storage, cheap to clone (it wraps connection pools).
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    /// What ingested events count towards (SLOs); see [`slo`].
    sli: crate::slo::sli::SharedIndex,
}

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("backend", &self.backend_name()).finish()
    }
}

/// Calls the same-named backend function on whichever backend is active.
macro_rules! dispatch {
    ($self:ident, $b:ident => $call:expr) => {
        match &$self.backend {
            Backend::Sqlite($b) => $call,
            Backend::Postgres($b) => $call,
        }
    };
}

/// Result of looking a host up by ID or hostname.
#[derive(Debug, Clone, PartialEq)]
pub enum HostLookup {
    Found(Box<Host>),
    NotFound,
    /// The hostname belongs to several hosts; their IDs (at most a few).
    Ambiguous(Vec<String>),
}

/// Filter for [`Store::list_checks`].
#[derive(Debug, Clone, Default)]
pub struct CheckFilter {
    /// Only this host (an ID, already resolved).
    pub host_id: Option<String>,
    pub status: Option<CheckStatus>,
    /// Only hosts whose control-plane labels match.
    pub selector: Selector,
    /// Only hosts the caller may see (its role and scope, [`crate::rbac`]).
    pub access: HostFilter,
}

impl Store {
    /// Connects to `sqlite://PATH` (file created if missing, WAL,
    /// `synchronous=FULL`, foreign keys on) or `postgres://...`.
    /// Does not migrate: call [`Store::migrate`].
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or("");
        let backend = match scheme {
            "sqlite" => Backend::Sqlite(sqlite::SqliteStore::connect(url).await?),
            "postgres" | "postgresql" => Backend::Postgres(postgres::PgStore::connect(url).await?),
            _ => {
                return Err(StoreError::Invalid(format!(
                    "unsupported database URL scheme {scheme:?}: expected sqlite://PATH or postgres://USER@HOST/DB"
                )));
            }
        };
        Ok(Store {
            backend,
            sli: Default::default(),
        })
    }

    /// Creates the PostgreSQL database `url` names when it does not exist
    /// and the user may create it (the quickstart); `Ok(true)` when created.
    /// SQLite files are created by [`Store::connect`] itself: `Ok(false)`.
    pub async fn create_database_if_missing(url: &str) -> Result<bool, StoreError> {
        match url.split_once(':').map(|(s, _)| s) {
            Some("postgres" | "postgresql") => postgres::PgStore::create_if_missing(url).await,
            _ => Ok(false),
        }
    }

    /// Runs the embedded migrations of the active backend.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        dispatch!(self, b => b.migrate().await)
    }

    /// Checks that the database answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, b => b.ping().await)
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Closes the pools, waiting for connections in use to be returned.
    pub async fn close(&self) {
        dispatch!(self, b => b.close().await)
    }

    // ------------------------------------------------------------ gateway

    /// Records that `host_id` connected (creating the host on first sight) and
    /// returns the highest sequence stored for it (0 if none).
    pub async fn agent_connected(&self, host_id: &str, hello: &AgentHello, now_ms: i64) -> Result<u64, StoreError> {
        check_host_id(host_id)?;
        let facts = serde_json::to_string(&hello.facts).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let hostname = no_nul(hello.facts.get("hostname").map(String::as_str).unwrap_or(""));
        let agent_version = no_nul(&hello.agent_version);
        let row = HelloRow {
            host_id,
            hostname: &hostname,
            facts: &facts,
            agent_version: &agent_version,
            spool_dropped_total: clamp_i64(hello.spool_dropped_total),
        };
        let last_seq = dispatch!(self, b => b.agent_connected(&row, now_ms).await)?;
        Ok(u64::try_from(last_seq).unwrap_or(0))
    }

    /// Marks the host seen now (heartbeat), with the spool drop counter it reported.
    pub async fn agent_heartbeat(
        &self,
        host_id: &str,
        spool_dropped_total: u64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        check_host_id(host_id)?;
        dispatch!(self, b => b.agent_heartbeat(host_id, clamp_i64(spool_dropped_total), now_ms).await)
    }

    /// Records that the stream of `host_id` ended.
    pub async fn agent_disconnected(&self, host_id: &str, now_ms: i64) -> Result<(), StoreError> {
        dispatch!(self, b => b.agent_disconnected(host_id, now_ms).await)
    }

    /// Stores several hosts' batches in ONE transaction, idempotently on
    /// (host, seq); returns only after commit. Hosts not seen before are created.
    /// If any batch fails [`validate_batch`], nothing is stored: callers that
    /// mix hosts in one call should validate each batch first, so one
    /// misbehaving agent cannot fail the others' transaction.
    pub async fn ingest(&self, batches: &[IngestBatch], now_ms: i64) -> Result<(), StoreError> {
        if batches.is_empty() {
            return Ok(());
        }
        self.ingest_with_jobs(batches, &jobs::JobIngest::default(), now_ms)
            .await
            .map(|_| ())
    }

    /// Deletes result history ingested before `older_than_ms`, in bounded
    /// chunks (each its own short transaction); returns the number deleted.
    pub async fn prune_results(&self, older_than_ms: i64) -> Result<u64, StoreError> {
        let mut total = 0u64;
        loop {
            let n = dispatch!(self, b => b.prune_results_chunk(older_than_ms, PRUNE_CHUNK_ROWS).await)?;
            total += n;
            if n < PRUNE_CHUNK_ROWS as u64 {
                return Ok(total);
            }
        }
    }

    /// Sequence numbers stored in the result history of `host_id`, ascending
    /// (for tests that prove "exactly once, no gap").
    pub async fn result_seqs(&self, host_id: &str) -> Result<Vec<u64>, StoreError> {
        let seqs = dispatch!(self, b => b.result_seqs(host_id).await)?;
        Ok(seqs.into_iter().map(to_u64).collect())
    }

    // ------------------------------------------------------------ hosts

    /// Hosts whose labels match `selector`, ordered by ID, after the ID `after`.
    pub async fn list_hosts(
        &self,
        selector: &Selector,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Host>, StoreError> {
        self.list_hosts_visible(selector, &HostFilter::all(), after, limit)
            .await
    }

    /// [`Store::list_hosts`], keeping only hosts `access` lets the caller see
    /// (filtered before paging, so pages and `has_more` never count others).
    pub async fn list_hosts_visible(
        &self,
        selector: &Selector,
        access: &HostFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Host>, StoreError> {
        let limit = limit.max(1);
        let scan = if selector.is_empty() && access.is_all() {
            limit + 1
        } else {
            FILTERED_SCAN_ROWS.max(limit + 1)
        };
        let mut cursor = after.unwrap_or("").to_string();
        let mut items = Vec::new();
        loop {
            let rows = dispatch!(self, b => b.scan_hosts(&cursor, scan as i64).await)?;
            let exhausted = rows.len() < scan;
            for host in rows {
                cursor.clone_from(&host.id);
                if selector.matches(&host.labels) && access.matches(&host.labels) {
                    if items.len() == limit {
                        return Ok(Page { items, has_more: true });
                    }
                    items.push(host);
                }
            }
            if exhausted {
                return Ok(Page { items, has_more: false });
            }
        }
    }

    /// Looks a host up by ID, or else by its (unique) self-reported hostname.
    /// The host with this ID (never looked up by hostname).
    pub async fn get_host(&self, id: &str) -> Result<Option<Host>, StoreError> {
        if id.is_empty() {
            return Ok(None);
        }
        dispatch!(self, b => b.host_by_id(id).await)
    }

    pub async fn find_host(&self, ident: &str) -> Result<HostLookup, StoreError> {
        if ident.is_empty() {
            return Ok(HostLookup::NotFound);
        }
        if let Some(host) = dispatch!(self, b => b.host_by_id(ident).await)? {
            return Ok(HostLookup::Found(Box::new(host)));
        }
        let mut hosts = dispatch!(self, b => b.hosts_by_hostname(ident, 5).await)?;
        Ok(match hosts.len() {
            0 => HostLookup::NotFound,
            1 => HostLookup::Found(Box::new(hosts.remove(0))),
            _ => HostLookup::Ambiguous(hosts.into_iter().map(|h| h.id).collect()),
        })
    }

    /// Replaces the control-plane labels of a host; false if no such host.
    pub async fn set_host_labels(&self, host_id: &str, labels: &BTreeMap<String, String>) -> Result<bool, StoreError> {
        let json = serde_json::to_string(labels).map_err(|e| StoreError::Invalid(e.to_string()))?;
        dispatch!(self, b => b.set_host_labels(host_id, &json).await)
    }

    /// Check counts by status for each of `host_ids`.
    pub async fn status_counts(&self, host_ids: &[&str]) -> Result<HashMap<String, StatusCounts>, StoreError> {
        let mut out: HashMap<String, StatusCounts> = host_ids
            .iter()
            .map(|id| (id.to_string(), StatusCounts::default()))
            .collect();
        let mut ids: Vec<&str> = host_ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        // Chunks far below both backends' bind-parameter limits.
        for chunk in ids.chunks(1_000) {
            let rows = dispatch!(self, b => b.status_counts(chunk).await)?;
            for (host_id, status, n) in rows {
                if let Some(c) = out.get_mut(&host_id) {
                    c.add(parse_status(&status), to_u64(n));
                }
            }
        }
        Ok(out)
    }

    /// Host count, hosts seen since `online_since_ms`, and the sum of reported spool drops.
    pub async fn fleet_stats(&self, online_since_ms: i64) -> Result<FleetStats, StoreError> {
        dispatch!(self, b => b.fleet_stats(online_since_ms).await)
    }

    // ------------------------------------------------------------ checks

    /// Latest check results ordered by (host ID, check name), after `after`.
    pub async fn list_checks(
        &self,
        filter: &CheckFilter,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Page<LatestCheck>, StoreError> {
        let limit = limit.max(1);
        let scan = if filter.selector.is_empty() && filter.access.is_all() {
            limit + 1
        } else {
            FILTERED_SCAN_ROWS.max(limit + 1)
        };
        let (mut after_host, mut after_name) = after.map(|(h, n)| (h.to_string(), n.to_string())).unwrap_or_default();
        let mut items = Vec::new();
        loop {
            let scan_args = CheckScan {
                host_id: filter.host_id.as_deref(),
                status: filter.status.map(CheckStatus::as_str),
                after_host: &after_host,
                after_name: &after_name,
                limit: scan as i64,
            };
            let rows = dispatch!(self, b => b.scan_checks(&scan_args).await)?;
            let exhausted = rows.len() < scan;
            for (check, labels) in rows {
                after_host.clone_from(&check.host_id);
                after_name.clone_from(&check.result.name);
                if filter.selector.matches(&labels) && filter.access.matches(&labels) {
                    if items.len() == limit {
                        return Ok(Page { items, has_more: true });
                    }
                    items.push(check);
                }
            }
            if exhausted {
                return Ok(Page { items, has_more: false });
            }
        }
    }

    // ------------------------------------------------------------ API tokens

    /// Stores a new API token (its secret already hashed) and its audit
    /// entry, in one transaction.
    pub async fn create_api_token(&self, token: &ApiToken, audit: AuditEntry) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        tx.insert_api_token(token).await?;
        tx.audit(audit);
        tx.commit().await?;
        Ok(())
    }

    pub async fn find_api_token(&self, id: &str) -> Result<Option<ApiToken>, StoreError> {
        dispatch!(self, b => b.find_api_token(id).await)
    }

    /// Revokes a token, and every token it created (transitively), and
    /// records `audit`, in one transaction; false (and nothing recorded)
    /// when no such token exists or it was already revoked.
    pub async fn revoke_api_token(&self, id: &str, now_ms: i64, audit: AuditEntry) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        if !tx.revoke_api_token(id, now_ms).await? {
            return Ok(false);
        }
        tx.audit(audit);
        tx.commit().await?;
        Ok(true)
    }

    /// All tokens, oldest first.
    pub async fn list_api_tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        dispatch!(self, b => b.list_api_tokens().await)
    }

    /// Records that a token was used at `now_ms`.
    pub async fn touch_api_token(&self, id: &str, now_ms: i64) -> Result<(), StoreError> {
        dispatch!(self, b => b.touch_api_token(id, now_ms).await)
    }
}

// ---------------------------------------------------------------- shared helpers

/// Values of `Hello` as stored, for the backends.
struct HelloRow<'a> {
    host_id: &'a str,
    hostname: &'a str,
    facts: &'a str,
    agent_version: &'a str,
    spool_dropped_total: i64,
}

/// Arguments of one keyset scan of `check_latest`.
struct CheckScan<'a> {
    host_id: Option<&'a str>,
    status: Option<&'static str>,
    after_host: &'a str,
    after_name: &'a str,
    limit: i64,
}

/// One `hosts` update derived from an ingest call.
struct HostUpdate<'a> {
    id: &'a str,
    max_seq: i64,
    spool_dropped_total: i64,
}

/// One result row, for `check_results` and `check_latest`.
struct ResultRow<'a> {
    host_id: &'a str,
    seq: i64,
    name: Cow<'a, str>,
    kind: Cow<'a, str>,
    status: &'static str,
    values_json: String,
    message: Cow<'a, str>,
    observed_ms: i64,
    duration_us: i64,
}

/// An ingest call flattened into rows, sorted so that concurrent
/// transactions take row locks in the same order (no deadlocks on PostgreSQL).
struct IngestRows<'a> {
    /// One per host, sorted by ID.
    hosts: Vec<HostUpdate<'a>>,
    /// Sorted by (host, seq), without duplicate keys.
    results: Vec<ResultRow<'a>>,
    /// Indexes into `results` of the newest result per (host, check), sorted by (host, name).
    latest: Vec<usize>,
}

impl<'a> IngestRows<'a> {
    fn prepare(batches: &'a [IngestBatch]) -> Result<Self, StoreError> {
        let mut hosts: BTreeMap<&str, HostUpdate<'a>> = BTreeMap::new();
        let mut results = Vec::new();
        for batch in batches {
            check_host_id(&batch.host_id)?;
            let mut max_seq = 0i64;
            for (seq, r) in &batch.results {
                let seq = i64::try_from(*seq).map_err(|_| {
                    StoreError::Invalid(format!("sequence {seq} of host {:?} is out of range", batch.host_id))
                })?;
                max_seq = max_seq.max(seq);
                results.push(ResultRow {
                    host_id: &batch.host_id,
                    seq,
                    name: no_nul(&r.name),
                    kind: no_nul(&r.kind),
                    status: r.status.as_str(),
                    values_json: values_to_json(&r.values),
                    message: no_nul(&r.message),
                    observed_ms: r.observed_at_ms,
                    duration_us: clamp_i64(r.duration_us),
                });
            }
            let h = hosts.entry(&batch.host_id).or_insert(HostUpdate {
                id: &batch.host_id,
                max_seq: 0,
                spool_dropped_total: 0,
            });
            h.max_seq = h.max_seq.max(max_seq);
            // Batches arrive in stream order: the last one carries the newest counter.
            h.spool_dropped_total = clamp_i64(batch.spool_dropped_total);
        }
        results.sort_by(|a, b| (a.host_id, a.seq).cmp(&(b.host_id, b.seq)));
        results.dedup_by(|a, b| a.host_id == b.host_id && a.seq == b.seq);
        let mut newest: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for (i, r) in results.iter().enumerate() {
            // `results` is sorted by seq within a host, so the last one wins.
            newest.insert((r.host_id, &r.name), i);
        }
        let latest = newest.into_values().collect();
        Ok(IngestRows {
            hosts: hosts.into_values().collect(),
            results,
            latest,
        })
    }
}

/// A value as stored in `values_json`: non-finite numbers become `null`.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredValue {
    name: String,
    value: Option<f64>,
    unit: String,
}

fn values_to_json(values: &[Value]) -> String {
    let stored: Vec<StoredValue> = values
        .iter()
        .map(|v| StoredValue {
            name: v.name.clone(),
            value: v.value.is_finite().then_some(v.value),
            unit: v.unit.clone(),
        })
        .collect();
    serde_json::to_string(&stored).unwrap_or_else(|_| "[]".to_string())
}

fn values_from_json(json: &str) -> Vec<Value> {
    match serde_json::from_str::<Vec<StoredValue>>(json) {
        Ok(values) => values
            .into_iter()
            .map(|v| Value {
                name: v.name,
                value: v.value.unwrap_or(f64::NAN),
                unit: v.unit,
            })
            .collect(),
        Err(error) => {
            tracing::warn!(%error, "unreadable values_json in check row; showing no values");
            Vec::new()
        }
    }
}

fn map_from_json(json: &str, column: &'static str) -> BTreeMap<String, String> {
    serde_json::from_str(json).unwrap_or_else(|error| {
        tracing::warn!(%error, column, "unreadable JSON map in hosts row; treating it as empty");
        BTreeMap::new()
    })
}

/// Checks what [`Store::ingest`] refuses: an empty host ID or one with NUL,
/// and sequence numbers above `i64::MAX` (the storage type).
pub fn validate_batch(batch: &IngestBatch) -> Result<(), StoreError> {
    check_host_id(&batch.host_id)?;
    match batch.results.iter().find(|(seq, _)| i64::try_from(*seq).is_err()) {
        Some((seq, _)) => Err(StoreError::Invalid(format!(
            "sequence {seq} of host {:?} is out of range",
            batch.host_id
        ))),
        None => Ok(()),
    }
}

/// PostgreSQL refuses NUL in text, so a NUL in an agent's report would fail
/// the whole ingest transaction again on every resend. Replaced, on both
/// backends alike, by U+FFFD.
fn no_nul(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// Host IDs come from verified certificates; one with NUL is refused outright.
fn check_host_id(id: &str) -> Result<(), StoreError> {
    if id.is_empty() || id.contains('\0') {
        return Err(StoreError::Invalid(format!("invalid host ID {id:?}")));
    }
    Ok(())
}

fn parse_status(s: &str) -> CheckStatus {
    s.parse().unwrap_or(CheckStatus::Unknown)
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Typed column access shared by both backends' row types.
trait RowExt {
    fn text(&self, col: &str) -> Result<String, sqlx::Error>;
    fn int(&self, col: &str) -> Result<i64, sqlx::Error>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>, sqlx::Error>;
    fn opt_text(&self, col: &str) -> Result<Option<String>, sqlx::Error>;
    fn flag(&self, col: &str) -> Result<bool, sqlx::Error>;
}

/// Columns selected by every host query, in this order.
const HOST_COLUMNS: &str = "id, hostname, labels, facts, agent_version, first_seen_ms, last_seen_ms, connected, \
     last_connected_ms, last_disconnected_ms, last_seq, spool_dropped_total";

fn host_from_row(row: &impl RowExt) -> Result<Host, StoreError> {
    Ok(Host {
        id: row.text("id")?,
        hostname: row.text("hostname")?,
        labels: map_from_json(&row.text("labels")?, "labels"),
        facts: map_from_json(&row.text("facts")?, "facts"),
        agent_version: row.text("agent_version")?,
        first_seen_ms: row.int("first_seen_ms")?,
        last_seen_ms: row.int("last_seen_ms")?,
        connected: row.flag("connected")?,
        last_connected_ms: row.opt_int("last_connected_ms")?,
        last_disconnected_ms: row.opt_int("last_disconnected_ms")?,
        last_seq: to_u64(row.int("last_seq")?),
        spool_dropped_total: to_u64(row.int("spool_dropped_total")?),
    })
}

/// Columns selected by every check query (`c` = check_latest, `h` = hosts).
const CHECK_COLUMNS: &str = "c.host_id, h.hostname, h.labels, c.name, c.kind, c.status, c.values_json, c.message, \
     c.observed_ms, c.duration_us, c.seq";

fn check_from_row(row: &impl RowExt) -> Result<(LatestCheck, BTreeMap<String, String>), StoreError> {
    let check = LatestCheck {
        host_id: row.text("host_id")?,
        hostname: row.text("hostname")?,
        seq: to_u64(row.int("seq")?),
        result: CheckResult {
            name: row.text("name")?,
            kind: row.text("kind")?,
            status: parse_status(&row.text("status")?),
            values: values_from_json(&row.text("values_json")?),
            message: row.text("message")?,
            observed_at_ms: row.int("observed_ms")?,
            duration_us: to_u64(row.int("duration_us")?),
        },
    };
    Ok((check, map_from_json(&row.text("labels")?, "labels")))
}

const TOKEN_COLUMNS: &str =
    "id, name, role, scope, secret_hash, created_ms, expires_ms, revoked_ms, last_used_ms, parent_id";

fn token_from_row(row: &impl RowExt) -> Result<ApiToken, StoreError> {
    Ok(ApiToken {
        id: row.text("id")?,
        name: row.text("name")?,
        role: row.text("role")?,
        scope: row.text("scope")?,
        secret_hash: row.text("secret_hash")?,
        created_ms: row.int("created_ms")?,
        expires_ms: row.opt_int("expires_ms")?,
        revoked_ms: row.opt_int("revoked_ms")?,
        last_used_ms: row.opt_int("last_used_ms")?,
        parent_id: row.opt_text("parent_id")?,
    })
}

fn fleet_stats_from(hosts: i64, online: i64, dropped: i64) -> FleetStats {
    FleetStats {
        hosts: to_u64(hosts),
        hosts_online: to_u64(online),
        spool_dropped_total: to_u64(dropped),
    }
}
