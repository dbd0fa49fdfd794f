//! The audit log in the store: entries appended in the same transaction as
//! the change they record, serialised so the chain never forks; the list and
//! export reads; signed checkpoints. Each statement is written once per
//! backend, side by side. The encoding and hashing are
//! [`crate::audit::chain`]'s; this module only stores what it produces.
//!
//! How a mutation records itself ([`Store::begin`] → [`StoreTx`]):
//!
//! ```text
//! let mut tx = store.begin().await?;           // BEGIN IMMEDIATE on SQLite
//! tx.insert_api_token(&token).await?;          // the change (marks the transaction as changing)
//! tx.audit(who.audit("tokens.create", Outcome::Success).target(format!("token:{}", token.id)));
//! tx.commit().await?;                          // appends the entries, then COMMIT: both or neither
//! ```
//!
//! Store code that runs its own backend transaction (as `identity.rs` does)
//! calls [`append_sqlite`] / [`append_postgres`] on it just before its commit,
//! or takes the connection of a [`StoreTx`] with [`StoreTx::conn`].
//!
//! Invariants:
//! - Sequence numbers are assigned inside the appending transaction, after the
//!   writer lock is held: SQLite's `BEGIN IMMEDIATE` (one writer per file),
//!   PostgreSQL's `pg_advisory_xact_lock` (one writer across all replicas,
//!   held until commit). The primary key on `seq` refuses a fork regardless.
//! - Entries are appended last in their transaction, so the lock is held only
//!   for the append and the commit, and is always taken after any row lock
//!   of the change (no lock-order deadlock).
//! - An entry's time is never earlier than its predecessor's.
//! - A transaction that changed something cannot commit without an entry.
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::{Column, Postgres, QueryBuilder, Row, Sqlite, Transaction};

use super::postgres::PgStore;
use super::sqlite::SqliteStore;
use super::{Backend, Store, StoreError};
use crate::audit::chain::{self, EntryFields, Hash, ZERO_HASH};
use crate::audit::{AuditEntry, AuditFilter, AuditSnapshot, StoredCheckpoint, StoredEntry};
use crate::model::{ApiToken, Page};

/// Key of the PostgreSQL advisory lock that serialises audit appends and
/// checkpoints across every control plane sharing the database ("STEWAUDT").
const CHAIN_LOCK: i64 = 0x5354_4557_4155_4454;
/// `pg_advisory_xact_lock(CHAIN_LOCK)`, then the newest entry (see [`append_postgres`]).
const LOCK_AND_HEAD_PG: &str = "SELECT pg_advisory_xact_lock(6004500444252292180); \
                                SELECT seq, time_ms, hash FROM audit_log ORDER BY seq DESC LIMIT 1";

/// Entries per multi-row INSERT on SQLite.
const SQLITE_ROWS_PER_INSERT: usize = 500;

const ENTRY_COLUMNS: &str = "seq, time_ms, actor, action, target, outcome, request_id, details, entry, prev_hash, hash";
const CHECKPOINT_COLUMNS: &str = "cp_seq, created_ms, kind, last_seq, last_hash, prev_hash, max_interval_ms, \
     max_entries, public_key, body, signature, hash";

/// A write transaction whose changes commit together with their audit
/// entries. Dropped without [`StoreTx::commit`], it rolls back. On SQLite it
/// holds the one writer connection: do not call other writing [`Store`]
/// methods while it is open (they would wait for it).
pub struct StoreTx {
    tx: Tx,
    entries: Vec<AuditEntry>,
    changed: bool,
}

enum Tx {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

/// The connection of a [`StoreTx`], for store code with its own SQL.
pub enum TxConn<'a> {
    Sqlite(&'a mut SqliteConnection),
    Postgres(&'a mut PgConnection),
}

impl std::fmt::Debug for StoreTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreTx")
            .field("entries", &self.entries.len())
            .field("changed", &self.changed)
            .finish()
    }
}

impl StoreTx {
    /// Records `entry`; it is appended when the transaction commits.
    pub fn audit(&mut self, entry: AuditEntry) {
        self.entries.push(entry);
    }

    /// The connection, for a change written in another store module. Marks
    /// the transaction as changing data (so it needs an audit entry).
    pub fn conn(&mut self) -> TxConn<'_> {
        self.changed = true;
        match &mut self.tx {
            Tx::Sqlite(tx) => TxConn::Sqlite(tx),
            Tx::Postgres(tx) => TxConn::Postgres(tx),
        }
    }

    /// Stores a new API token (its secret already hashed).
    pub async fn insert_api_token(&mut self, token: &ApiToken) -> Result<(), StoreError> {
        match self.conn() {
            TxConn::Sqlite(c) => SqliteStore::insert_api_token(c, token).await,
            TxConn::Postgres(c) => PgStore::insert_api_token(c, token).await,
        }
    }

    /// Revokes a token; false when there is no such token or it was already revoked.
    pub async fn revoke_api_token(&mut self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        match self.conn() {
            TxConn::Sqlite(c) => SqliteStore::revoke_api_token(c, id, now_ms).await,
            TxConn::Postgres(c) => PgStore::revoke_api_token(c, id, now_ms).await,
        }
    }

    /// Appends the recorded entries and commits; returns their sequence
    /// numbers. Refused (and rolled back) when the transaction changed
    /// something but recorded no entry.
    pub async fn commit(mut self) -> Result<Vec<u64>, StoreError> {
        if self.changed && self.entries.is_empty() {
            return Err(StoreError::Invalid(
                "a change without an audit entry was refused (every change is audited)".into(),
            ));
        }
        let now_ms = steward_shared::now_ms();
        let seqs = match &mut self.tx {
            Tx::Sqlite(tx) => append_sqlite(tx, &self.entries, now_ms).await?,
            Tx::Postgres(tx) => append_postgres(tx, &self.entries, now_ms).await?,
        };
        match self.tx {
            Tx::Sqlite(tx) => tx.commit().await?,
            Tx::Postgres(tx) => tx.commit().await?,
        }
        Ok(seqs)
    }
}

/// The newest entry and checkpoint, read under the chain lock by
/// [`Store::append_checkpoint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainState {
    pub head_seq: u64,
    pub head_hash: Hash,
    pub last_checkpoint: Option<StoredCheckpoint>,
}

impl Store {
    /// Starts a write transaction for a change and its audit entries.
    pub async fn begin(&self) -> Result<StoreTx, StoreError> {
        let tx = match &self.backend {
            Backend::Sqlite(b) => Tx::Sqlite(b.write.begin_with("BEGIN IMMEDIATE").await?),
            Backend::Postgres(b) => Tx::Postgres(b.pool.begin().await?),
        };
        Ok(StoreTx {
            tx,
            entries: Vec::new(),
            changed: false,
        })
    }

    /// Appends one entry that records no change of its own (a denial, a
    /// failure) in its own transaction; returns its sequence number.
    pub async fn append_audit(&self, entry: AuditEntry) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        tx.audit(entry);
        let seqs = tx.commit().await?;
        Ok(seqs.first().copied().unwrap_or(0))
    }

    /// Entries matching `filter`, by sequence, after the sequence `after`.
    pub async fn list_audit(
        &self,
        filter: &AuditFilter,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Page<StoredEntry>, StoreError> {
        let limit = limit.max(1);
        let after = i64::try_from(after.unwrap_or(0)).unwrap_or(i64::MAX);
        let fetch = i64::try_from(limit + 1).unwrap_or(i64::MAX);
        let mut items = match &self.backend {
            Backend::Sqlite(b) => {
                let mut q = QueryBuilder::<Sqlite>::new(format!("SELECT {ENTRY_COLUMNS} FROM audit_log WHERE seq > "));
                q.push_bind(after);
                if let Some(actor) = &filter.actor {
                    q.push(" AND actor = ").push_bind(actor);
                }
                if let Some(action) = &filter.action {
                    q.push(" AND action = ").push_bind(action);
                }
                if let Some(since) = filter.since_ms {
                    q.push(" AND time_ms >= ").push_bind(since);
                }
                q.push(" ORDER BY seq LIMIT ").push_bind(fetch);
                let rows = q.build().fetch_all(&b.read).await?;
                rows.iter().map(entry_from_row).collect::<Result<Vec<_>, _>>()?
            }
            Backend::Postgres(b) => {
                let mut q =
                    QueryBuilder::<Postgres>::new(format!("SELECT {ENTRY_COLUMNS} FROM audit_log WHERE seq > "));
                q.push_bind(after);
                if let Some(actor) = &filter.actor {
                    q.push(" AND actor = ").push_bind(actor);
                }
                if let Some(action) = &filter.action {
                    q.push(" AND action = ").push_bind(action);
                }
                if let Some(since) = filter.since_ms {
                    q.push(" AND time_ms >= ").push_bind(since);
                }
                q.push(" ORDER BY seq LIMIT ").push_bind(fetch);
                let rows = q.build().fetch_all(&b.pool).await?;
                rows.iter().map(entry_from_row).collect::<Result<Vec<_>, _>>()?
            }
        };
        let has_more = items.len() > limit;
        items.truncate(limit);
        Ok(Page { items, has_more })
    }

    /// Every entry and checkpoint, read in one snapshot (one read transaction).
    pub async fn audit_snapshot(&self) -> Result<AuditSnapshot, StoreError> {
        let cp_sql = format!("SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY cp_seq");
        let entry_sql = format!("SELECT {ENTRY_COLUMNS} FROM audit_log ORDER BY seq");
        match &self.backend {
            Backend::Sqlite(b) => {
                let mut tx = b.read.begin().await?;
                let cps = sqlx::query(sqlx::AssertSqlSafe(cp_sql)).fetch_all(&mut *tx).await?;
                let entries = sqlx::query(sqlx::AssertSqlSafe(entry_sql)).fetch_all(&mut *tx).await?;
                tx.commit().await?;
                Ok(AuditSnapshot {
                    entries: entries.iter().map(entry_from_row).collect::<Result<_, _>>()?,
                    checkpoints: cps.iter().map(checkpoint_from_row).collect::<Result<_, _>>()?,
                })
            }
            Backend::Postgres(b) => {
                let mut tx = b
                    .pool
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .await?;
                let cps = sqlx::query(sqlx::AssertSqlSafe(cp_sql)).fetch_all(&mut *tx).await?;
                let entries = sqlx::query(sqlx::AssertSqlSafe(entry_sql)).fetch_all(&mut *tx).await?;
                tx.commit().await?;
                Ok(AuditSnapshot {
                    entries: entries.iter().map(entry_from_row).collect::<Result<_, _>>()?,
                    checkpoints: cps.iter().map(checkpoint_from_row).collect::<Result<_, _>>()?,
                })
            }
        }
    }

    /// Writes the checkpoint `make` builds from the current chain state, if
    /// it builds one, under the chain lock (so checkpoints are gapless and
    /// chained also with several replicas). Returns what was written.
    pub async fn append_checkpoint<F>(&self, make: F) -> Result<Option<StoredCheckpoint>, StoreError>
    where
        F: FnOnce(&ChainState) -> Option<StoredCheckpoint>,
    {
        let head_sql = "SELECT seq, time_ms, hash FROM audit_log ORDER BY seq DESC LIMIT 1";
        let last_sql = format!("SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY cp_seq DESC LIMIT 1");
        match &self.backend {
            Backend::Sqlite(b) => {
                let mut tx = b.write.begin_with("BEGIN IMMEDIATE").await?;
                let head = head_from(sqlx::query(head_sql).fetch_optional(&mut *tx).await?.as_ref())?;
                let last = sqlx::query(sqlx::AssertSqlSafe(last_sql))
                    .fetch_optional(&mut *tx)
                    .await?;
                let state = ChainState {
                    head_seq: head.seq,
                    head_hash: head.hash,
                    last_checkpoint: last.as_ref().map(checkpoint_from_row).transpose()?,
                };
                let Some(cp) = make(&state) else { return Ok(None) };
                let r = CheckpointRow::of(&cp)?;
                sqlx::query(
                    "INSERT INTO audit_checkpoints (cp_seq, created_ms, kind, last_seq, last_hash, prev_hash, \
                         max_interval_ms, max_entries, public_key, body, signature, hash)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                )
                .bind(r.cp_seq)
                .bind(cp.created_ms)
                .bind(&cp.kind)
                .bind(r.last_seq)
                .bind(&cp.last_hash)
                .bind(&cp.prev_hash)
                .bind(cp.max_interval_ms)
                .bind(r.max_entries)
                .bind(&cp.public_key)
                .bind(&cp.body)
                .bind(&cp.signature)
                .bind(&cp.hash)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(Some(cp))
            }
            Backend::Postgres(b) => {
                let mut tx = b.pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(CHAIN_LOCK)
                    .execute(&mut *tx)
                    .await?;
                let head = head_from(sqlx::query(head_sql).fetch_optional(&mut *tx).await?.as_ref())?;
                let last = sqlx::query(sqlx::AssertSqlSafe(last_sql))
                    .fetch_optional(&mut *tx)
                    .await?;
                let state = ChainState {
                    head_seq: head.seq,
                    head_hash: head.hash,
                    last_checkpoint: last.as_ref().map(checkpoint_from_row).transpose()?,
                };
                let Some(cp) = make(&state) else { return Ok(None) };
                let r = CheckpointRow::of(&cp)?;
                sqlx::query(
                    "INSERT INTO audit_checkpoints (cp_seq, created_ms, kind, last_seq, last_hash, prev_hash, \
                         max_interval_ms, max_entries, public_key, body, signature, hash)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                )
                .bind(r.cp_seq)
                .bind(cp.created_ms)
                .bind(&cp.kind)
                .bind(r.last_seq)
                .bind(&cp.last_hash)
                .bind(&cp.prev_hash)
                .bind(cp.max_interval_ms)
                .bind(r.max_entries)
                .bind(&cp.public_key)
                .bind(&cp.body)
                .bind(&cp.signature)
                .bind(&cp.hash)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(Some(cp))
            }
        }
    }
}

/// Appends `entries` (in order) in the caller's SQLite transaction, which
/// must have been started with `BEGIN IMMEDIATE`. Returns their sequence numbers.
pub async fn append_sqlite(
    conn: &mut SqliteConnection,
    entries: &[AuditEntry],
    now_ms: i64,
) -> Result<Vec<u64>, StoreError> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let head = sqlx::query("SELECT seq, time_ms, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await?;
    let rows = chain_rows(head_from(head.as_ref())?, entries, now_ms)?;
    // Multi-row INSERTs (11 bound values a row, well under SQLite's limit).
    for chunk in rows.chunks(SQLITE_ROWS_PER_INSERT) {
        let mut q = QueryBuilder::<Sqlite>::new(format!("INSERT INTO audit_log ({ENTRY_COLUMNS}) "));
        q.push_values(chunk, |mut b, r| {
            b.push_bind(r.seq)
                .push_bind(r.time_ms)
                .push_bind(&r.entry.actor)
                .push_bind(&r.entry.action)
                .push_bind(&r.entry.target)
                .push_bind(r.entry.outcome.as_str())
                .push_bind(&r.entry.request_id)
                .push_bind(&r.entry.details)
                .push_bind(&r.bytes)
                .push_bind(&r.prev_hash)
                .push_bind(&r.hash);
        });
        q.build().execute(&mut *conn).await?;
    }
    Ok(rows.iter().map(|r| r.seq as u64).collect())
}

/// Appends `entries` (in order) in the caller's PostgreSQL transaction,
/// taking the chain lock (held until that transaction ends). Returns their
/// sequence numbers.
pub async fn append_postgres(
    conn: &mut PgConnection,
    entries: &[AuditEntry],
    now_ms: i64,
) -> Result<Vec<u64>, StoreError> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    // The chain lock and the head in one round trip: a simple query runs
    // its statements in order and, under READ COMMITTED, the head read takes
    // its snapshot once the lock is held, so it sees every committed entry.
    let rows = sqlx::raw_sql(LOCK_AND_HEAD_PG).fetch_all(&mut *conn).await?;
    let head = rows.iter().find(|r| r.columns().iter().any(|c| c.name() == "hash"));
    let rows = chain_rows(head_from(head)?, entries, now_ms)?;
    // One statement for the whole batch: each entry is still its own row.
    sqlx::query(
        "INSERT INTO audit_log (seq, time_ms, actor, action, target, outcome, request_id, details, entry, \
                                prev_hash, hash)
         SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], \
                              $7::text[], $8::text[], $9::bytea[], $10::text[], $11::text[])",
    )
    .bind(rows.iter().map(|r| r.seq).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.time_ms).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.entry.actor.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.entry.action.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.entry.target.as_deref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.entry.outcome.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.entry.request_id.as_deref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.entry.details.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.bytes.as_slice()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.prev_hash.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.hash.as_str()).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    Ok(rows.iter().map(|r| r.seq as u64).collect())
}

// ---------------------------------------------------------------- shared helpers

/// The newest entry (seq 0 and the zero hash when the log is empty).
struct Head {
    seq: u64,
    time_ms: i64,
    hash: Hash,
}

fn head_from(row: Option<&impl AuditRow>) -> Result<Head, StoreError> {
    let Some(row) = row else {
        return Ok(Head {
            seq: 0,
            time_ms: i64::MIN,
            hash: ZERO_HASH,
        });
    };
    let seq = row.int("seq")?;
    let hash = chain::parse_hash(&row.text("hash")?).ok_or_else(|| {
        StoreError::Invalid(format!(
            "the newest audit entry ({seq}) has an unreadable hash: the audit log was tampered with \
             (run stewardctl audit verify); nothing more can be appended"
        ))
    })?;
    Ok(Head {
        seq: u64::try_from(seq).unwrap_or(0),
        time_ms: row.int("time_ms")?,
        hash,
    })
}

/// One entry ready to insert.
struct NewRow<'a> {
    seq: i64,
    time_ms: i64,
    entry: &'a AuditEntry,
    bytes: Vec<u8>,
    prev_hash: String,
    hash: String,
}

/// Numbers, timestamps, encodes and chains `entries` after `head`.
fn chain_rows(mut head: Head, entries: &[AuditEntry], now_ms: i64) -> Result<Vec<NewRow<'_>>, StoreError> {
    let mut rows = Vec::with_capacity(entries.len());
    let mut prev_hex = chain::hex_hash(&head.hash);
    for entry in entries {
        entry.validate().map_err(|e| StoreError::Invalid(e.to_string()))?;
        let seq = head.seq + 1;
        let time_ms = now_ms.max(head.time_ms);
        let bytes = chain::encode_entry(&EntryFields {
            seq,
            time_ms,
            actor: &entry.actor,
            action: &entry.action,
            target: entry.target.as_deref(),
            outcome: entry.outcome.as_str(),
            request_id: entry.request_id.as_deref(),
            details: &entry.details,
        });
        let hash = chain::entry_hash(seq, &head.hash, &bytes);
        let hash_hex = chain::hex_hash(&hash);
        rows.push(NewRow {
            seq: i64::try_from(seq).map_err(|_| StoreError::Invalid("audit sequence out of range".into()))?,
            time_ms,
            entry,
            bytes,
            prev_hash: std::mem::replace(&mut prev_hex, hash_hex.clone()),
            hash: hash_hex,
        });
        head = Head { seq, time_ms, hash };
    }
    Ok(rows)
}

/// The integer columns of a checkpoint, as stored.
struct CheckpointRow {
    cp_seq: i64,
    last_seq: i64,
    max_entries: i64,
}

impl CheckpointRow {
    fn of(cp: &StoredCheckpoint) -> Result<Self, StoreError> {
        let int = |v: u64| i64::try_from(v).map_err(|_| StoreError::Invalid("checkpoint field out of range".into()));
        Ok(CheckpointRow {
            cp_seq: int(cp.cp_seq)?,
            last_seq: int(cp.last_seq)?,
            max_entries: int(cp.max_entries)?,
        })
    }
}

/// Column access for both backends' rows.
trait AuditRow {
    fn int(&self, col: &str) -> Result<i64, sqlx::Error>;
    fn text(&self, col: &str) -> Result<String, sqlx::Error>;
    fn opt_text(&self, col: &str) -> Result<Option<String>, sqlx::Error>;
    fn blob(&self, col: &str) -> Result<Vec<u8>, sqlx::Error>;
}

macro_rules! audit_row {
    ($row:ty) => {
        impl AuditRow for $row {
            fn int(&self, col: &str) -> Result<i64, sqlx::Error> {
                self.try_get(col)
            }
            fn text(&self, col: &str) -> Result<String, sqlx::Error> {
                self.try_get(col)
            }
            fn opt_text(&self, col: &str) -> Result<Option<String>, sqlx::Error> {
                self.try_get(col)
            }
            fn blob(&self, col: &str) -> Result<Vec<u8>, sqlx::Error> {
                self.try_get(col)
            }
        }
    };
}
audit_row!(SqliteRow);
audit_row!(PgRow);

/// Negative values (only possible by tampering) read as 0; verification reports them.
fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn entry_from_row(row: &impl AuditRow) -> Result<StoredEntry, StoreError> {
    Ok(StoredEntry {
        seq: unsigned(row.int("seq")?),
        time_ms: row.int("time_ms")?,
        actor: row.text("actor")?,
        action: row.text("action")?,
        target: row.opt_text("target")?,
        outcome: row.text("outcome")?,
        request_id: row.opt_text("request_id")?,
        details: row.text("details")?,
        entry: row.blob("entry")?,
        prev_hash: row.text("prev_hash")?,
        hash: row.text("hash")?,
    })
}

fn checkpoint_from_row(row: &impl AuditRow) -> Result<StoredCheckpoint, StoreError> {
    Ok(StoredCheckpoint {
        cp_seq: unsigned(row.int("cp_seq")?),
        created_ms: row.int("created_ms")?,
        kind: row.text("kind")?,
        last_seq: unsigned(row.int("last_seq")?),
        last_hash: row.text("last_hash")?,
        prev_hash: row.text("prev_hash")?,
        max_interval_ms: row.int("max_interval_ms")?,
        max_entries: unsigned(row.int("max_entries")?),
        public_key: row.text("public_key")?,
        body: row.blob("body")?,
        signature: row.blob("signature")?,
        hash: row.text("hash")?,
    })
}

#[cfg(test)]
mod lock_tests {
    #[test]
    fn the_combined_statement_takes_the_chain_lock() {
        let lock = super::LOCK_AND_HEAD_PG.split(';').next().unwrap_or_default();
        assert_eq!(lock, format!("SELECT pg_advisory_xact_lock({})", super::CHAIN_LOCK));
    }
}
