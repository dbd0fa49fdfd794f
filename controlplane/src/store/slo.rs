//! SLO definitions and their one-minute event buckets, the SQL of both
//! backends side by side.
//!
//! Invariants:
//! - Check results are counted inside the ingest transaction that stores
//!   them, and only those it really inserted: a resent report (same host and
//!   sequence) is never counted twice, and a failed ingest counts nothing.
//! - A bucket row holds absolute counts for (slo, group, minute); increments
//!   are added with one upsert per row, in key order (no deadlocks).
//! - Changing what an SLO counts (indicator or grouping) deletes its buckets in
//!   the same transaction as the change; other edits keep them.
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use sqlx::{PgConnection, QueryBuilder, Row, Sqlite, SqliteConnection};

use super::audit::TxConn;
use super::sql::{B, Conn};
use super::{Backend, IngestRows, Store, StoreError, map_from_json};
use crate::audit::AuditEntry;
use crate::slo::eval::Bucket;
use crate::slo::sli::{BucketKey, Increments, SliIndex};
use crate::slo::spec::SloSpec;

/// An SLO as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSlo {
    pub name: String,
    pub spec: SloSpec,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// What `put_slo` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    /// `reset`: what is counted changed, so the buckets were deleted.
    Updated {
        reset: bool,
    },
    /// The same definition was already stored; nothing was written.
    Unchanged,
}

/// Rows per multi-row statement.
const CHUNK: usize = 1_000;

impl Store {
    /// The index ingest counts with.
    pub fn sli_index(&self) -> Arc<SliIndex> {
        self.sli.read().map(|i| i.clone()).unwrap_or_default()
    }

    /// The shared handle of the index (for the API request recorder).
    pub fn sli_handle(&self) -> crate::slo::sli::SharedIndex {
        self.sli.clone()
    }

    /// Rebuilds the index from the stored SLOs (at start, after a change,
    /// and periodically so that changes made on another replica apply here).
    pub async fn reload_sli_index(&self) -> Result<Vec<StoredSlo>, StoreError> {
        let slos = self.list_slos().await?;
        let index = SliIndex::build(slos.iter().map(|s| (s.name.as_str(), &s.spec)));
        if let Ok(mut slot) = self.sli.write() {
            *slot = Arc::new(index);
        }
        Ok(slos)
    }

    /// Creates or replaces an SLO, with its audit entry, in one transaction.
    pub async fn put_slo(
        &self,
        name: &str,
        spec: &SloSpec,
        audit: AuditEntry,
        now_ms: i64,
    ) -> Result<PutOutcome, StoreError> {
        let json = serde_json::to_string(spec).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let key = spec.sli_key();
        let mut tx = self.begin().await?;
        let outcome = match tx.conn() {
            TxConn::Sqlite(c) => {
                let old: Option<(String, String)> = sqlx::query_as("SELECT spec, sli_key FROM slos WHERE name = ?1")
                    .bind(name)
                    .fetch_optional(&mut *c)
                    .await?;
                let outcome = outcome_of(old.as_ref(), &json, &key);
                if outcome != PutOutcome::Unchanged {
                    sqlx::query(
                        "INSERT INTO slos (name, spec, sli_key, created_ms, updated_ms) VALUES (?1, ?2, ?3, ?4, ?4)
                         ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, sli_key = excluded.sli_key,
                            updated_ms = excluded.updated_ms",
                    )
                    .bind(name)
                    .bind(&json)
                    .bind(&key)
                    .bind(now_ms)
                    .execute(&mut *c)
                    .await?;
                }
                if outcome == (PutOutcome::Updated { reset: true }) {
                    sqlx::query("DELETE FROM slo_buckets WHERE slo = ?1")
                        .bind(name)
                        .execute(&mut *c)
                        .await?;
                }
                outcome
            }
            TxConn::Postgres(c) => {
                let old: Option<(String, String)> =
                    sqlx::query_as("SELECT spec, sli_key FROM slos WHERE name = $1 FOR UPDATE")
                        .bind(name)
                        .fetch_optional(&mut *c)
                        .await?;
                let outcome = outcome_of(old.as_ref(), &json, &key);
                if outcome != PutOutcome::Unchanged {
                    sqlx::query(
                        "INSERT INTO slos (name, spec, sli_key, created_ms, updated_ms) VALUES ($1, $2, $3, $4, $4)
                         ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, sli_key = excluded.sli_key,
                            updated_ms = excluded.updated_ms",
                    )
                    .bind(name)
                    .bind(&json)
                    .bind(&key)
                    .bind(now_ms)
                    .execute(&mut *c)
                    .await?;
                }
                if outcome == (PutOutcome::Updated { reset: true }) {
                    sqlx::query("DELETE FROM slo_buckets WHERE slo = $1")
                        .bind(name)
                        .execute(&mut *c)
                        .await?;
                }
                outcome
            }
        };
        if outcome == PutOutcome::Unchanged {
            return Ok(outcome); // dropped: rolls back, nothing was written
        }
        let action = if outcome == PutOutcome::Created {
            "slos.create"
        } else {
            "slos.update"
        };
        let mut entry = audit;
        entry.action = action.to_string();
        tx.audit(entry);
        tx.commit().await?;
        self.reload_sli_index().await?;
        Ok(outcome)
    }

    /// Every SLO, by name.
    pub async fn list_slos(&self) -> Result<Vec<StoredSlo>, StoreError> {
        let rows: Vec<(String, String, i64, i64)> = match &self.backend {
            Backend::Sqlite(b) => {
                sqlx::query_as("SELECT name, spec, created_ms, updated_ms FROM slos ORDER BY name")
                    .fetch_all(&b.read)
                    .await?
            }
            Backend::Postgres(b) => {
                sqlx::query_as("SELECT name, spec, created_ms, updated_ms FROM slos ORDER BY name")
                    .fetch_all(&b.pool)
                    .await?
            }
        };
        Ok(rows.into_iter().filter_map(stored).collect())
    }

    pub async fn get_slo(&self, name: &str) -> Result<Option<StoredSlo>, StoreError> {
        let row: Option<(String, String, i64, i64)> = match &self.backend {
            Backend::Sqlite(b) => {
                sqlx::query_as("SELECT name, spec, created_ms, updated_ms FROM slos WHERE name = ?1")
                    .bind(name)
                    .fetch_optional(&b.read)
                    .await?
            }
            Backend::Postgres(b) => {
                sqlx::query_as("SELECT name, spec, created_ms, updated_ms FROM slos WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&b.pool)
                    .await?
            }
        };
        Ok(row.and_then(stored))
    }

    /// The buckets of an SLO in `from..=to` (epoch minutes), per group, sorted by minute.
    pub async fn slo_buckets(
        &self,
        name: &str,
        from: i64,
        to: i64,
    ) -> Result<BTreeMap<String, Vec<Bucket>>, StoreError> {
        let rows: Vec<(String, i64, i64, i64)> = match &self.backend {
            Backend::Sqlite(b) => {
                sqlx::query_as(
                    "SELECT grp, minute, total, good FROM slo_buckets
                     WHERE slo = ?1 AND minute >= ?2 AND minute <= ?3 ORDER BY grp, minute",
                )
                .bind(name)
                .bind(from)
                .bind(to)
                .fetch_all(&b.read)
                .await?
            }
            Backend::Postgres(b) => {
                sqlx::query_as(
                    "SELECT grp, minute, total, good FROM slo_buckets
                     WHERE slo = $1 AND minute >= $2 AND minute <= $3 ORDER BY grp, minute",
                )
                .bind(name)
                .bind(from)
                .bind(to)
                .fetch_all(&b.pool)
                .await?
            }
        };
        let mut out: BTreeMap<String, Vec<Bucket>> = BTreeMap::new();
        for (grp, minute, total, good) in rows {
            out.entry(grp).or_default().push(Bucket {
                minute,
                total: super::to_u64(total),
                good: super::to_u64(good),
            });
        }
        Ok(out)
    }

    /// The buckets a status reads, per group, sorted by minute: minute by
    /// minute outside `plan.collapse_from..plan.detail_from`, summed per
    /// `plan.step` inside it (in SQL, each sum dated at its step's last minute;
    /// see [`crate::slo::status::ReadPlan`]).
    pub async fn slo_series(
        &self,
        name: &str,
        plan: &crate::slo::status::ReadPlan,
    ) -> Result<BTreeMap<String, Vec<Bucket>>, StoreError> {
        const MINUTES: &str = "SELECT grp, minute, total, good FROM slo_buckets \
             WHERE slo = $1 AND minute >= $2 AND minute <= $3 AND (minute < $4 OR minute >= $5)";
        const STEPS: &str = "SELECT grp, $3 - (($3 - minute) / $6) * $6 AS m, CAST(SUM(total) AS BIGINT) AS t, \
             CAST(SUM(good) AS BIGINT) AS g FROM slo_buckets \
             WHERE slo = $1 AND minute >= $4 AND minute < $5 AND minute >= $2 AND minute <= $3 GROUP BY grp, m";
        let p = plan;
        let collapsed = p.collapse_from < p.detail_from;
        let mut rows: Vec<(String, i64, i64, i64)> = match &self.backend {
            Backend::Sqlite(b) => {
                let mut c = b.read.acquire().await?;
                let mut rows: Vec<(String, i64, i64, i64)> =
                    sqlx::query_as(sqlx::AssertSqlSafe(MINUTES.replace('$', "?")))
                        .bind(name)
                        .bind(p.from)
                        .bind(p.to)
                        .bind(p.collapse_from)
                        .bind(p.detail_from)
                        .fetch_all(&mut *c)
                        .await?;
                if collapsed {
                    rows.extend(
                        sqlx::query_as::<_, (String, i64, i64, i64)>(sqlx::AssertSqlSafe(STEPS.replace('$', "?")))
                            .bind(name)
                            .bind(p.from)
                            .bind(p.to)
                            .bind(p.collapse_from)
                            .bind(p.detail_from)
                            .bind(p.step)
                            .fetch_all(&mut *c)
                            .await?,
                    );
                }
                rows
            }
            Backend::Postgres(b) => {
                let mut c = b.pool.acquire().await?;
                let mut rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(MINUTES)
                    .bind(name)
                    .bind(p.from)
                    .bind(p.to)
                    .bind(p.collapse_from)
                    .bind(p.detail_from)
                    .fetch_all(&mut *c)
                    .await?;
                if collapsed {
                    rows.extend(
                        sqlx::query_as::<_, (String, i64, i64, i64)>(STEPS)
                            .bind(name)
                            .bind(p.from)
                            .bind(p.to)
                            .bind(p.collapse_from)
                            .bind(p.detail_from)
                            .bind(p.step)
                            .fetch_all(&mut *c)
                            .await?,
                    );
                }
                rows
            }
        };
        rows.sort_unstable_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        let mut out: BTreeMap<String, Vec<Bucket>> = BTreeMap::new();
        for (grp, minute, total, good) in rows {
            out.entry(grp).or_default().push(Bucket {
                minute,
                total: super::to_u64(total),
                good: super::to_u64(good),
            });
        }
        Ok(out)
    }

    /// Adds counted events (API requests, job outcomes) in their own transaction.
    pub async fn add_slo_events(&self, incs: &Increments, now_ms: i64) -> Result<(), StoreError> {
        if incs.is_empty() {
            return Ok(());
        }
        match &self.backend {
            Backend::Sqlite(b) => {
                let mut tx = b.write.begin_with("BEGIN IMMEDIATE").await?;
                upsert_sqlite(&mut tx, incs, now_ms).await?;
                tx.commit().await?;
            }
            Backend::Postgres(b) => {
                let mut tx = b.pool.begin().await?;
                upsert_postgres(&mut tx, incs, now_ms).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Counts the outcome of a job action on a host towards the SLOs with a
    /// `jobSuccess` indicator for that action. Called by the job queue when an
    /// attempt ends (exactly once per attempt); `at_ms` is when it ended.
    pub async fn record_job_outcome(
        &self,
        host_id: &str,
        action: &str,
        ok: bool,
        at_ms: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let index = self.sli_index();
        let labels = match self.find_host(host_id).await? {
            super::HostLookup::Found(h) if h.id == host_id => h.labels,
            _ => BTreeMap::new(),
        };
        let mut incs = Increments::new();
        index.count_job(&mut incs, host_id, &labels, action, ok, at_ms, now_ms);
        self.add_slo_events(&incs, now_ms).await
    }

    /// Deletes buckets older than `before_minute`; returns how many.
    pub async fn prune_slo_buckets(&self, before_minute: i64) -> Result<u64, StoreError> {
        let n = match &self.backend {
            Backend::Sqlite(b) => sqlx::query("DELETE FROM slo_buckets WHERE minute < ?1")
                .bind(before_minute)
                .execute(&b.write)
                .await?
                .rows_affected(),
            Backend::Postgres(b) => sqlx::query("DELETE FROM slo_buckets WHERE minute < $1")
                .bind(before_minute)
                .execute(&b.pool)
                .await?
                .rows_affected(),
        };
        Ok(n)
    }
}

fn outcome_of(old: Option<&(String, String)>, json: &str, key: &str) -> PutOutcome {
    match old {
        None => PutOutcome::Created,
        Some((spec, _)) if spec == json => PutOutcome::Unchanged,
        Some((_, old_key)) => PutOutcome::Updated { reset: old_key != key },
    }
}

fn stored((name, spec, created_ms, updated_ms): (String, String, i64, i64)) -> Option<StoredSlo> {
    match serde_json::from_str(&spec) {
        Ok(spec) => Some(StoredSlo {
            name,
            spec,
            created_ms,
            updated_ms,
        }),
        Err(error) => {
            tracing::warn!(%error, slo = %name, "unreadable SLO definition in the database; skipped");
            None
        }
    }
}

/// Increments for the results of `rows` that were inserted.
fn increments(
    rows: &IngestRows<'_>,
    inserted: &HashSet<(String, i64)>,
    labels: &BTreeMap<String, BTreeMap<String, String>>,
    sli: &SliIndex,
    now_ms: i64,
) -> Increments {
    let empty = BTreeMap::new();
    let mut incs = Increments::new();
    for r in &rows.results {
        if !sli.counts_check(&r.name) || !inserted.contains(&(r.host_id.to_string(), r.seq)) {
            continue;
        }
        let host_labels = labels.get(r.host_id).unwrap_or(&empty);
        sli.count_check(
            &mut incs,
            r.host_id,
            host_labels,
            &r.name,
            r.status == "ok",
            super::to_u64(r.duration_us),
            r.observed_ms,
            now_ms,
        );
    }
    incs
}

/// Counts inserted check results, inside the SQLite ingest transaction.
pub(super) async fn count_ingest_sqlite(
    conn: &mut SqliteConnection,
    rows: &IngestRows<'_>,
    inserted: &HashSet<(String, i64)>,
    sli: &SliIndex,
    now_ms: i64,
) -> Result<(), StoreError> {
    let mut labels = BTreeMap::new();
    for chunk in rows.hosts.chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new("SELECT id, labels FROM hosts WHERE id IN (");
        let mut ids = q.separated(", ");
        for h in chunk {
            ids.push_bind(h.id);
        }
        q.push(")");
        for row in q.build().fetch_all(&mut *conn).await? {
            let id: String = row.try_get(0)?;
            labels.insert(id, map_from_json(&row.try_get::<String, _>(1)?, "labels"));
        }
    }
    let incs = increments(rows, inserted, &labels, sli, now_ms);
    upsert_sqlite(conn, &incs, now_ms).await
}

/// Counts inserted check results, inside the PostgreSQL ingest transaction.
pub(super) async fn count_ingest_postgres(
    conn: &mut PgConnection,
    rows: &IngestRows<'_>,
    inserted: &HashSet<(String, i64)>,
    sli: &SliIndex,
    now_ms: i64,
) -> Result<(), StoreError> {
    let ids: Vec<&str> = rows.hosts.iter().map(|h| h.id).collect();
    let mut labels = BTreeMap::new();
    for row in sqlx::query("SELECT id, labels FROM hosts WHERE id = ANY($1)")
        .bind(ids)
        .fetch_all(&mut *conn)
        .await?
    {
        let id: String = row.try_get(0)?;
        labels.insert(id, map_from_json(&row.try_get::<String, _>(1)?, "labels"));
    }
    let incs = increments(rows, inserted, &labels, sli, now_ms);
    upsert_postgres(conn, &incs, now_ms).await
}

/// Counts ended job attempts towards job-success SLOs, inside the
/// transaction that ends them (ingest of the agent's report, or the sweep
/// that times them out), so each attempt counts exactly once.
pub(super) async fn count_jobs(
    c: &mut Conn<'_>,
    outcomes: &[crate::jobs::AttemptOutcome],
    sli: &SliIndex,
    now_ms: i64,
) -> Result<(), StoreError> {
    let counted: Vec<_> = outcomes.iter().filter(|o| sli.counts_job(&o.action)).collect();
    if counted.is_empty() {
        return Ok(());
    }
    let mut labels: BTreeMap<&str, BTreeMap<String, String>> = BTreeMap::new();
    for o in &counted {
        if labels.contains_key(o.host_id.as_str()) {
            continue;
        }
        let row = c
            .fetch_one("SELECT labels FROM hosts WHERE id = $1", &[B::T(&o.host_id)])
            .await?;
        let l = match row {
            Some(r) => map_from_json(&r.text("labels")?, "labels"),
            None => BTreeMap::new(),
        };
        labels.insert(&o.host_id, l);
    }
    let empty = BTreeMap::new();
    let mut incs = Increments::new();
    for o in counted {
        let l = labels.get(o.host_id.as_str()).unwrap_or(&empty);
        sli.count_job(&mut incs, &o.host_id, l, &o.action, o.ok, o.at_ms, now_ms);
    }
    match c {
        Conn::Lite(conn) => upsert_sqlite(conn, &incs, now_ms).await,
        Conn::Pg(conn) => upsert_postgres(conn, &incs, now_ms).await,
    }
}

fn sorted(incs: &Increments) -> Vec<(&BucketKey, (i64, i64))> {
    let mut v: Vec<_> = incs
        .iter()
        .map(|(k, &(t, g))| (k, (super::clamp_i64(t), super::clamp_i64(g))))
        .collect();
    v.sort_by(|a, b| a.0.cmp(b.0));
    v
}

async fn upsert_sqlite(conn: &mut SqliteConnection, incs: &Increments, now_ms: i64) -> Result<(), StoreError> {
    let rows = sorted(incs);
    for chunk in rows.chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new("INSERT INTO slo_buckets (slo, grp, minute, total, good, updated_ms) ");
        q.push_values(chunk, |mut b, (k, (t, g))| {
            b.push_bind(k.slo.as_str())
                .push_bind(k.grp.as_str())
                .push_bind(k.minute)
                .push_bind(*t)
                .push_bind(*g)
                .push_bind(now_ms);
        });
        q.push(
            " ON CONFLICT (slo, grp, minute) DO UPDATE SET total = slo_buckets.total + excluded.total,
                good = slo_buckets.good + excluded.good, updated_ms = excluded.updated_ms",
        );
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

async fn upsert_postgres(conn: &mut PgConnection, incs: &Increments, now_ms: i64) -> Result<(), StoreError> {
    let rows = sorted(incs);
    for chunk in rows.chunks(CHUNK * 10) {
        let slo: Vec<&str> = chunk.iter().map(|(k, _)| k.slo.as_str()).collect();
        let grp: Vec<&str> = chunk.iter().map(|(k, _)| k.grp.as_str()).collect();
        let minute: Vec<i64> = chunk.iter().map(|(k, _)| k.minute).collect();
        let total: Vec<i64> = chunk.iter().map(|(_, (t, _))| *t).collect();
        let good: Vec<i64> = chunk.iter().map(|(_, (_, g))| *g).collect();
        sqlx::query(
            "INSERT INTO slo_buckets (slo, grp, minute, total, good, updated_ms)
             SELECT u.*, $6 FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[])
                 AS u (slo, grp, minute, total, good)
             ON CONFLICT (slo, grp, minute) DO UPDATE SET total = slo_buckets.total + excluded.total,
                good = slo_buckets.good + excluded.good, updated_ms = excluded.updated_ms",
        )
        .bind(slo)
        .bind(grp)
        .bind(minute)
        .bind(total)
        .bind(good)
        .bind(now_ms)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
