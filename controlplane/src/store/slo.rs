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
                    sqlx::query("DELETE FROM slo_hours WHERE slo = ?1")
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
                    sqlx::query("DELETE FROM slo_hours WHERE slo = $1")
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
    /// minute without segments, else one bucket per segment of the plan (its
    /// sum, dated at its last minute; see [`crate::slo::status::ReadPlan`]):
    /// the hours it touches from `slo_hours`, plus or minus the minutes of
    /// its partial edge hours from `slo_buckets` ([`crate::slo::status::Piece`]),
    /// summed in SQL per group and segment.
    pub async fn slo_series(
        &self,
        name: &str,
        plan: &crate::slo::status::ReadPlan,
    ) -> Result<BTreeMap<String, Vec<Bucket>>, StoreError> {
        if plan.starts.is_none() {
            return self.slo_buckets(name, plan.from, plan.to).await;
        }
        // The groups come from the hours (every minute row has its hour row);
        // each (group, piece) is then one range of a primary key (SQLite's
        // CROSS JOIN fixes the loop order; PostgreSQL gets a LATERAL
        // subquery per pair, the only plan that fits).
        // The pieces are decoded from their JSON once (MATERIALIZED), not
        // once per group: unmaterialized, SQLite flattens `json_each` into
        // the loop and re-extracts every piece for every group.
        const LITE: &str =
            "WITH g AS (SELECT DISTINCT grp FROM slo_hours WHERE slo = $1 AND hour >= $2 AND hour <= $3),
                  p AS MATERIALIZED (SELECT * FROM JSON_ROWS($4 AS p(lo bigint, hi bigint, d bigint, s bigint))),
                  q AS MATERIALIZED (SELECT * FROM JSON_ROWS($5 AS q(lo bigint, hi bigint, d bigint)))
             SELECT b.grp AS grp, p.d AS d, SUM(p.s * b.total) AS t, SUM(p.s * b.good) AS gd
             FROM g CROSS JOIN p CROSS JOIN slo_buckets b
             WHERE b.slo = $1 AND b.grp = g.grp AND b.minute >= p.lo AND b.minute <= p.hi GROUP BY b.grp, p.d
             UNION ALL
             SELECT h.grp AS grp, q.d AS d, SUM(h.total) AS t, SUM(h.good) AS gd
             FROM g CROSS JOIN q CROSS JOIN slo_hours h
             WHERE h.slo = $1 AND h.grp = g.grp AND h.hour >= q.lo AND h.hour <= q.hi GROUP BY h.grp, q.d";
        const PG: &str = "WITH g AS (SELECT DISTINCT grp FROM slo_hours WHERE slo = $1 AND hour >= $2 AND hour <= $3)
             SELECT g.grp AS grp, p.d AS d, CAST(SUM(p.s * s.t) AS BIGINT) AS t, CAST(SUM(p.s * s.gd) AS BIGINT) AS gd
             FROM g CROSS JOIN unnest($4::bigint[], $5::bigint[], $6::bigint[], $10::bigint[]) AS p (lo, hi, d, s)
             CROSS JOIN LATERAL (SELECT SUM(b.total) AS t, SUM(b.good) AS gd FROM slo_buckets b
                 WHERE b.slo = $1 AND b.grp = g.grp AND b.minute >= p.lo AND b.minute <= p.hi) s
             WHERE s.t IS NOT NULL GROUP BY g.grp, p.d
             UNION ALL
             SELECT g.grp AS grp, q.d AS d, CAST(SUM(s.t) AS BIGINT) AS t, CAST(SUM(s.gd) AS BIGINT) AS gd
             FROM g CROSS JOIN unnest($7::bigint[], $8::bigint[], $9::bigint[]) AS q (lo, hi, d)
             CROSS JOIN LATERAL (SELECT SUM(h.total) AS t, SUM(h.good) AS gd FROM slo_hours h
                 WHERE h.slo = $1 AND h.grp = g.grp AND h.hour >= q.lo AND h.hour <= q.hi) s
             WHERE s.t IS NOT NULL GROUP BY g.grp, q.d";
        let pieces = plan.pieces();
        let (first_hour, last_hour) = (plan.from.div_euclid(60), plan.to.div_euclid(60));
        let rows: Vec<(String, i64, i64, i64)> = match &self.backend {
            Backend::Sqlite(b) => {
                let json = |hourly: bool| {
                    let rows: Vec<serde_json::Value> = pieces
                        .iter()
                        .filter(|p| p.hourly == hourly)
                        .map(|p| serde_json::json!({"lo": p.lo, "hi": p.hi, "d": p.end, "s": p.sign}))
                        .collect();
                    serde_json::Value::from(rows).to_string()
                };
                let (minutes, hours) = (json(false), json(true));
                let binds = [
                    B::T(name),
                    B::I(first_hour),
                    B::I(last_hour),
                    B::T(&minutes),
                    B::T(&hours),
                ];
                let mut c = b.read.acquire().await?;
                let mut out = Vec::new();
                for r in Conn::Lite(&mut c).fetch(LITE, &binds).await? {
                    out.push((r.text("grp")?, r.int("d")?, r.int("t")?, r.int("gd")?));
                }
                out
            }
            Backend::Postgres(b) => {
                let col = |hourly: bool, f: fn(&crate::slo::status::Piece) -> i64| -> Vec<i64> {
                    pieces.iter().filter(|p| p.hourly == hourly).map(f).collect()
                };
                // A status is a few hundred index lookups: compiling it
                // (JIT, chosen from the row estimates) costs more than running it.
                let mut tx = b.pool.begin().await?;
                sqlx::query("SET LOCAL jit = off").execute(&mut *tx).await?;
                let rows = sqlx::query_as(PG)
                    .bind(name)
                    .bind(first_hour)
                    .bind(last_hour)
                    .bind(col(false, |p| p.lo))
                    .bind(col(false, |p| p.hi))
                    .bind(col(false, |p| p.end))
                    .bind(col(true, |p| p.lo))
                    .bind(col(true, |p| p.hi))
                    .bind(col(true, |p| p.end))
                    .bind(col(false, |p| p.sign))
                    .fetch_all(&mut *tx)
                    .await?;
                tx.commit().await?;
                rows
            }
        };
        let mut sums: BTreeMap<(String, i64), (i64, i64)> = BTreeMap::new();
        for (grp, d, t, gd) in rows {
            let e = sums.entry((grp, d)).or_default();
            e.0 += t;
            e.1 += gd;
        }
        let sums = sums
            .into_iter()
            .map(|(k, (t, g))| (k, (super::to_u64(t), super::to_u64(g))));
        let mut out: BTreeMap<String, Vec<Bucket>> = BTreeMap::new();
        for ((grp, minute), (total, good)) in sums {
            // Nothing counted in the segment (an edge hour's minutes all
            // outside it): no bucket, as minute by minute (a stored bucket
            // always holds at least one event).
            if total > 0 {
                out.entry(grp).or_default().push(Bucket { minute, total, good });
            }
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

    /// Deletes buckets older than `before_minute`; returns how many. The
    /// hours go with them in the same transaction: those wholly before it are
    /// deleted, the one it cuts is summed again from the minutes left.
    pub async fn prune_slo_buckets(&self, before_minute: i64) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Sqlite(b) => {
                let mut tx = b.write.begin_with("BEGIN IMMEDIATE").await?;
                let n = prune(Conn::Lite(&mut tx), before_minute).await?;
                tx.commit().await?;
                Ok(n)
            }
            Backend::Postgres(b) => {
                let mut tx = b.pool.begin().await?;
                let n = prune(Conn::Pg(&mut tx), before_minute).await?;
                tx.commit().await?;
                Ok(n)
            }
        }
    }

    /// Rows of `slo_hours` that differ from the sums of `slo_buckets` per
    /// hour (both sides listed; empty when they agree).
    #[cfg(test)]
    pub(crate) async fn slo_hours_drift(&self) -> Result<Vec<(String, String, i64, i64, i64)>, StoreError> {
        const Q: &str = "SELECT slo, grp, hour, total, good FROM slo_hours ORDER BY slo, grp, hour";
        const M: &str = "SELECT slo, grp, minute, total, good FROM slo_buckets";
        type R = (String, String, i64, i64, i64);
        let (hours, minutes): (Vec<R>, Vec<R>) = match &self.backend {
            Backend::Sqlite(b) => (
                sqlx::query_as(Q).fetch_all(&b.read).await?,
                sqlx::query_as(M).fetch_all(&b.read).await?,
            ),
            Backend::Postgres(b) => (
                sqlx::query_as(Q).fetch_all(&b.pool).await?,
                sqlx::query_as(M).fetch_all(&b.pool).await?,
            ),
        };
        let mut sums: BTreeMap<(String, String, i64), (i64, i64)> = BTreeMap::new();
        for (slo, grp, minute, t, g) in minutes {
            let e = sums.entry((slo, grp, minute.div_euclid(60))).or_default();
            e.0 += t;
            e.1 += g;
        }
        let expected: Vec<R> = sums.into_iter().map(|((s, g, h), (t, gd))| (s, g, h, t, gd)).collect();
        let mut drift: Vec<R> = hours.iter().filter(|r| !expected.contains(r)).cloned().collect();
        drift.extend(expected.iter().filter(|r| !hours.contains(r)).cloned());
        Ok(drift)
    }
}

async fn prune(mut c: Conn<'_>, before_minute: i64) -> Result<u64, StoreError> {
    let hour = before_minute.div_euclid(60);
    let cut = before_minute.rem_euclid(60) != 0;
    let last = if cut { hour } else { hour - 1 };
    // The (slo, group) pairs with minutes to delete come from the hours, so
    // each delete is a range of the primary key (no index on minute).
    let n = c
        .exec(
            "DELETE FROM slo_buckets WHERE (slo, grp) IN (SELECT DISTINCT slo, grp FROM slo_hours WHERE hour <= $2)
             AND minute < $1",
            &[B::I(before_minute), B::I(last)],
        )
        .await?;
    if cut {
        const LEFT: &str = "FROM slo_buckets b WHERE b.slo = slo_hours.slo AND b.grp = slo_hours.grp
             AND b.minute >= $2 AND b.minute < $3";
        let bounds = [B::I(hour), B::I(hour * 60), B::I(hour * 60 + 60)];
        c.exec(
            &format!("DELETE FROM slo_hours WHERE hour = $1 AND NOT EXISTS (SELECT 1 {LEFT})"),
            &bounds,
        )
        .await?;
        c.exec(
            &format!(
                "UPDATE slo_hours SET total = (SELECT SUM(b.total) {LEFT}), good = (SELECT SUM(b.good) {LEFT})
                 WHERE hour = $1"
            ),
            &bounds,
        )
        .await?;
    }
    c.exec("DELETE FROM slo_hours WHERE hour < $1", &[B::I(hour)]).await?;
    Ok(n)
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
    let hours = hourly(incs);
    for chunk in hours.chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new("INSERT INTO slo_hours (slo, grp, hour, total, good) ");
        q.push_values(chunk, |mut b, ((slo, grp, hour), (t, g))| {
            b.push_bind(*slo)
                .push_bind(*grp)
                .push_bind(*hour)
                .push_bind(*t)
                .push_bind(*g);
        });
        q.push(
            " ON CONFLICT (slo, grp, hour) DO UPDATE SET total = slo_hours.total + excluded.total,
                good = slo_hours.good + excluded.good",
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
    let hours = hourly(incs);
    for chunk in hours.chunks(CHUNK * 10) {
        let slo: Vec<&str> = chunk.iter().map(|(k, _)| k.0).collect();
        let grp: Vec<&str> = chunk.iter().map(|(k, _)| k.1).collect();
        let hour: Vec<i64> = chunk.iter().map(|(k, _)| k.2).collect();
        let total: Vec<i64> = chunk.iter().map(|(_, (t, _))| *t).collect();
        let good: Vec<i64> = chunk.iter().map(|(_, (_, g))| *g).collect();
        sqlx::query(
            "INSERT INTO slo_hours (slo, grp, hour, total, good)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[])
             ON CONFLICT (slo, grp, hour) DO UPDATE SET total = slo_hours.total + excluded.total,
                good = slo_hours.good + excluded.good",
        )
        .bind(slo)
        .bind(grp)
        .bind(hour)
        .bind(total)
        .bind(good)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The increments summed per (slo, group, hour), in key order (the hourly
/// rows are upserted after the minute rows, in the same transaction).
/// (slo, group, hour) and (total, good).
type HourRow<'a> = ((&'a str, &'a str, i64), (i64, i64));

fn hourly(incs: &Increments) -> Vec<HourRow<'_>> {
    let mut sums: BTreeMap<(&str, &str, i64), (u64, u64)> = BTreeMap::new();
    for (k, &(t, g)) in incs {
        let e = sums
            .entry((k.slo.as_str(), k.grp.as_str(), k.minute.div_euclid(60)))
            .or_default();
        e.0 = e.0.saturating_add(t);
        e.1 = e.1.saturating_add(g);
    }
    sums.into_iter()
        .map(|(k, (t, g))| (k, (super::clamp_i64(t), super::clamp_i64(g))))
        .collect()
}
