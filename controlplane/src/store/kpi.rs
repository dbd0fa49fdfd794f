//! The rows the KPI catalog ([`crate::kpi`]) is computed from, and the KPI
//! samples of the trend (`kpi_samples`, migration `0008_kpi`). Statements are
//! written once for both backends through [`super::sql`].
//!
//! Invariants:
//! - Reads only: the KPIs never change what they measure.
//! - Revoked hosts are not part of the fleet; rows of hosts that no longer
//!   exist are dropped by [`crate::kpi::KpiData::restrict`] by the caller.
//! - Samples are fleet-wide values (no scope, no selector): only callers
//!   limited by nothing may be shown them.
use sqlx::{Postgres, Sqlite, Transaction};

use super::sql::{B, Conn};
use super::{Backend, Store, StoreError, map_from_json, values_from_json};
use crate::kpi::{BackupRow, CertRow, DiskSample, HostRow, JobRow, KpiData};

enum Read {
    Lite(sqlx::pool::PoolConnection<Sqlite>),
    Pg(sqlx::pool::PoolConnection<Postgres>),
}

impl Read {
    async fn acquire(store: &Store) -> Result<Read, StoreError> {
        Ok(match &store.backend {
            Backend::Sqlite(b) => Read::Lite(b.read.acquire().await?),
            Backend::Postgres(b) => Read::Pg(b.pool.acquire().await?),
        })
    }
    fn conn(&mut self) -> Conn<'_> {
        match self {
            Read::Lite(c) => Conn::Lite(c),
            Read::Pg(c) => Conn::Pg(c),
        }
    }
}

pub(super) enum Write {
    Lite(Transaction<'static, Sqlite>),
    Pg(Transaction<'static, Postgres>),
}

impl Write {
    pub(super) async fn begin(store: &Store) -> Result<Write, StoreError> {
        Ok(match &store.backend {
            Backend::Sqlite(b) => Write::Lite(b.write.begin_with("BEGIN IMMEDIATE").await?),
            Backend::Postgres(b) => Write::Pg(b.pool.begin().await?),
        })
    }
    pub(super) fn conn(&mut self) -> Conn<'_> {
        match self {
            Write::Lite(tx) => Conn::Lite(tx),
            Write::Pg(tx) => Conn::Pg(tx),
        }
    }
    pub(super) async fn commit(self) -> Result<(), StoreError> {
        match self {
            Write::Lite(tx) => tx.commit().await?,
            Write::Pg(tx) => tx.commit().await?,
        }
        Ok(())
    }
}

const HOSTS: &str = "SELECT id, labels, agent_version, CAST(CASE WHEN connected THEN 1 ELSE 0 END AS BIGINT) AS conn, \
                     last_seen_ms FROM hosts WHERE revoked_ms IS NULL ORDER BY id";
const CERTS: &str = "SELECT host_id, name, values_json FROM check_latest WHERE kind IN ('tls', 'certificate_file')";
const DISKS: &str = "SELECT host_id, values_json, observed_ms FROM check_results \
                     WHERE kind = 'disk' AND observed_ms >= $1 AND observed_ms <= $2";
/// The jobs of the window as one JSON array of
/// `[id, host, action, state, outcome, params, source, created, updated, started, finished]`
/// arrays: tens of thousands of jobs arrive as one value, not row by row
/// (per row, the drivers' decoding cost several times the query; SQLite's
/// driver also hands every row to another thread).
const JOBS_LITE: &str = "SELECT json_group_array(json_array(id, host_id, action, state, outcome, params, source, \
                         created_ms, updated_ms, started_ms, finished_ms)) AS rows \
                         FROM jobs WHERE updated_ms >= $1 OR created_ms >= $1 OR finished_ms >= $1";
const JOBS_PG: &str = "SELECT COALESCE(json_agg(json_build_array(id, host_id, action, state, outcome, params, source, \
                       created_ms, updated_ms, started_ms, finished_ms))::text, '[]') AS rows \
                       FROM jobs WHERE updated_ms >= $1 OR created_ms >= $1 OR finished_ms >= $1";
const BACKUPS: &str =
    "SELECT host_id, name, last_snapshot_ms, rpo_secs, last_verify_ms, last_verify_ok FROM backup_status";

/// One job of [`JOBS_LITE`] / [`JOBS_PG`].
type JobTuple = (
    String,
    String,
    String,
    String,
    Option<String>,
    String,
    String,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
);

fn job_row(t: JobTuple) -> JobRow {
    let (id, host_id, action, state, outcome, params, source, created_ms, updated_ms, started_ms, finished_ms) = t;
    JobRow {
        id,
        host_id,
        action,
        state,
        outcome,
        params: serde_json::from_str(&params).unwrap_or_default(),
        source,
        created_ms,
        updated_ms,
        started_ms,
        finished_ms,
    }
}

impl Store {
    /// The rows of every KPI for the window `[now - window, now]` (disk
    /// samples: the last [`crate::kpi::DISK_LOOKBACK_MS`]), for all hosts:
    /// the caller restricts them to what its caller may see.
    ///
    /// Read in three parts at once, each on a read connection of its own (the
    /// jobs; the check counts and disk samples; the rest), so the database
    /// and the row decoding use every core. As before, the statements are
    /// not one snapshot: each sees what was committed when it ran.
    pub async fn kpi_data(&self, now_ms: i64, window_ms: i64) -> Result<KpiData, StoreError> {
        let from = now_ms.saturating_sub(window_ms);
        let (jobs, (checks, disks), mut data) = tokio::try_join!(
            self.kpi_jobs(from),
            self.kpi_checks_and_disks(from, now_ms),
            self.kpi_fleet(from, now_ms),
        )?;
        data.jobs = jobs;
        data.checks = checks;
        data.disks = disks;
        Ok(data)
    }

    async fn kpi_jobs(&self, from: i64) -> Result<Vec<JobRow>, StoreError> {
        let mut c = Read::acquire(self).await?;
        let sql = match c {
            Read::Lite(_) => JOBS_LITE,
            Read::Pg(_) => JOBS_PG,
        };
        let rows = c.conn().fetch(sql, &[B::I(from)]).await?;
        let Some(row) = rows.first() else {
            return Ok(Vec::new());
        };
        let jobs: Vec<JobTuple> = serde_json::from_str(&row.text("rows")?)
            .map_err(|e| StoreError::Invalid(format!("the jobs of the KPI window do not decode: {e}")))?;
        Ok(jobs.into_iter().map(job_row).collect())
    }

    async fn kpi_checks_and_disks(
        &self,
        from: i64,
        now_ms: i64,
    ) -> Result<(Vec<crate::kpi::CheckCount>, Vec<DiskSample>), StoreError> {
        let mut c = Read::acquire(self).await?;
        let mut conn = c.conn();
        let checks = super::kpi_counts::check_counts(&mut conn, from, now_ms).await?;
        let disk_from = now_ms.saturating_sub(crate::kpi::DISK_LOOKBACK_MS);
        let mut disks = Vec::new();
        for r in conn.fetch(DISKS, &[B::I(disk_from), B::I(now_ms)]).await? {
            let host_id = r.text("host_id")?;
            let at_ms = r.int("observed_ms")?;
            for v in values_from_json(&r.text("values_json")?) {
                if let Some(mount) = v.name.strip_prefix("free_bytes:")
                    && v.value.is_finite()
                {
                    disks.push(DiskSample {
                        host_id: host_id.clone(),
                        mount: mount.to_string(),
                        at_ms,
                        free_bytes: v.value,
                    });
                }
            }
        }
        Ok((checks, disks))
    }

    /// Hosts, certificates, backups, rollouts and the API counts.
    async fn kpi_fleet(&self, from: i64, now_ms: i64) -> Result<KpiData, StoreError> {
        let mut c = Read::acquire(self).await?;
        let mut conn = c.conn();
        let mut data = KpiData::default();
        for r in conn.fetch(HOSTS, &[]).await? {
            data.hosts.push(HostRow {
                id: r.text("id")?,
                labels: map_from_json(&r.text("labels")?, "labels"),
                agent_version: r.text("agent_version")?,
                connected: r.int("conn")? != 0,
                last_seen_ms: r.int("last_seen_ms")?,
            });
        }
        for r in conn.fetch(CERTS, &[]).await? {
            let values = values_from_json(&r.text("values_json")?);
            if let Some(v) = values.iter().find(|v| v.name == "days_left" && v.value.is_finite()) {
                data.certs.push(CertRow {
                    host_id: r.text("host_id")?,
                    check: r.text("name")?,
                    days_left: v.value,
                });
            }
        }
        for r in conn.fetch(BACKUPS, &[]).await? {
            data.backups.push(BackupRow {
                host_id: r.text("host_id")?,
                name: r.text("name")?,
                last_snapshot_ms: r.opt_int("last_snapshot_ms")?,
                rpo_secs: r.opt_int("rpo_secs")?,
                last_verify_ms: r.opt_int("last_verify_ms")?,
                last_verify_ok: r.opt_int("last_verify_ok")?.map(|v| v != 0),
            });
        }
        data.rollouts = super::kpi_extra::rollouts_ended(&mut conn, from, now_ms).await?;
        data.api = super::kpi_extra::api_counts(&mut conn, from, now_ms).await?;
        Ok(data)
    }

    /// Recounts the check results per day and hour ([`super::kpi_counts`])
    /// from `check_results`, as the migration's backfill does: for data
    /// written around the ingest path (the KPI benchmark's bulk fill).
    pub async fn recount_kpi_checks(&self) -> Result<(), StoreError> {
        let mut tx = Write::begin(self).await?;
        super::kpi_counts::recount(&mut tx.conn()).await?;
        tx.commit().await
    }

    /// Stores one sampling round (fleet-wide values at `at_ms`) and deletes
    /// samples taken before `keep_after_ms`.
    pub async fn record_kpi_samples(
        &self,
        at_ms: i64,
        values: &[(&str, Option<f64>)],
        keep_after_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = Write::begin(self).await?;
        for (name, value) in values {
            let micros = value.filter(|v| v.is_finite()).map(|v| (v * 1e6).round() as i64);
            tx.conn()
                .exec(
                    "INSERT INTO kpi_samples (name, sampled_ms, value_micros) VALUES ($1, $2, $3) \
                     ON CONFLICT (name, sampled_ms) DO UPDATE SET value_micros = EXCLUDED.value_micros",
                    &[B::T(name), B::I(at_ms), B::OI(micros)],
                )
                .await?;
        }
        tx.conn()
            .exec("DELETE FROM kpi_samples WHERE sampled_ms < $1", &[B::I(keep_after_ms)])
            .await?;
        tx.commit().await
    }

    /// The samples of KPI `name` taken at or after `since_ms`, oldest first.
    pub async fn kpi_trend(&self, name: &str, since_ms: i64) -> Result<Vec<(i64, Option<f64>)>, StoreError> {
        let mut c = Read::acquire(self).await?;
        let rows = c
            .conn()
            .fetch(
                "SELECT sampled_ms, value_micros FROM kpi_samples WHERE name = $1 AND sampled_ms >= $2 \
                 ORDER BY sampled_ms",
                &[B::T(name), B::I(since_ms)],
            )
            .await?;
        rows.iter()
            .map(|r| Ok((r.int("sampled_ms")?, r.opt_int("value_micros")?.map(|v| v as f64 / 1e6))))
            .collect()
    }

    /// Test check: the differences between the per-day and per-hour check
    /// counts and `check_results` (empty when they agree).
    #[cfg(test)]
    pub(crate) async fn kpi_count_mismatches(&self) -> Result<Vec<String>, StoreError> {
        let mut c = Read::acquire(self).await?;
        super::kpi_counts::mismatches(&mut c.conn()).await
    }

    /// Test fixtures: a job row exactly as given (no queue logic), and a
    /// `backup_status` row.
    #[cfg(test)]
    pub(crate) async fn insert_kpi_fixtures(&self, jobs: &[JobRow], backups: &[BackupRow]) -> Result<(), StoreError> {
        let mut tx = Write::begin(self).await?;
        for j in jobs {
            let params = serde_json::to_string(&j.params).unwrap_or_else(|_| "{}".into());
            let source = if j.source.is_empty() { "api" } else { j.source.as_str() };
            tx.conn()
                .exec(
                    "INSERT INTO jobs (id, action, params, host_id, state, timeout_secs, next_run_ms, created_ms, \
                     updated_ms, started_ms, finished_ms, outcome, source, created_by) \
                     VALUES ($1, $2, $3, $4, $5, 60, $6, $6, $7, $8, $9, $10, $11, 'test')",
                    &[
                        B::T(&j.id),
                        B::T(&j.action),
                        B::T(&params),
                        B::T(&j.host_id),
                        B::T(&j.state),
                        B::I(j.created_ms),
                        B::I(j.updated_ms),
                        B::OI(j.started_ms),
                        B::OI(j.finished_ms),
                        B::OT(j.outcome.as_deref()),
                        B::T(source),
                    ],
                )
                .await?;
        }
        for b in backups {
            tx.conn()
                .exec(
                    "INSERT INTO backup_status (host_id, name, last_snapshot_ms, rpo_secs, last_verify_ms, \
                     last_verify_ok) VALUES ($1, $2, $3, $4, $5, $6)",
                    &[
                        B::T(&b.host_id),
                        B::T(&b.name),
                        B::OI(b.last_snapshot_ms),
                        B::OI(b.rpo_secs),
                        B::OI(b.last_verify_ms),
                        B::OI(b.last_verify_ok.map(i64::from)),
                    ],
                )
                .await?;
        }
        tx.commit().await
    }
}
