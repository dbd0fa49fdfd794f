//! The job queue in the store: enqueue (idempotent on a key), claim (SQLite
//! through the one writer; PostgreSQL with `FOR UPDATE SKIP LOCKED`, so
//! several control planes on one database never claim a job twice), accept,
//! the agent's reports (applied inside the ingest transaction), lease sweeps,
//! cancellation, and the backup status derived from backup results.
//! Statements are written once for both backends with the idioms of
//! [`super::sql`]; every state change appends its audit entry in the same
//! transaction.
//!
//! Invariants:
//! - A job is claimed only for a host connected to the claiming process, and
//!   at most `max_running_per_host` jobs of a host are dispatched or running.
//! - Writes that end an attempt are fenced: the agent's result on
//!   `id`, `attempt` and `attempt_id` (the lease token the agent journals),
//!   sweeps additionally on the `lease_owner` and lease expiry they saw.
//! - Output is kept up to the configured cap, deduplicated by offset.
use std::collections::{BTreeMap, HashMap, HashSet};

use sqlx::{Postgres, Sqlite, Transaction};

use super::audit::{append_postgres, append_sqlite};
use super::sql::{AnyRow, B, Col, Conn};
use super::{Backend, IngestRows, Store, StoreError};
use crate::audit::{AuditEntry, Outcome, actor};
use crate::jobs::{
    Applied, CancelOrder, Claimed, Job, JobEventKind, JobFilter, JobReport, JobSettings, JobState, NewJob,
    state_of_outcome,
};
use crate::model::{IngestBatch, Page};

pub(super) const JOB_COLUMNS: &str = "id, action, params, host_id, state, attempt, max_attempts, attempt_id, \
     lease_owner, lease_expires_ms, timeout_secs, next_run_ms, created_ms, updated_ms, dispatched_ms, started_ms, \
     finished_ms, outcome, reason, result, progress, output_bytes, output_truncated, cancel_requested, \
     idempotency_key, rollout_id, source, created_by";

/// Result of [`Store::enqueue_jobs`].
#[derive(Debug, Clone, PartialEq)]
pub enum Enqueued {
    /// New jobs were created.
    Created(Vec<Job>),
    /// The idempotency key was used before: its jobs, unchanged.
    Existing(Vec<Job>),
}

/// An agent's acceptance of an attempt ([`Store::accept_jobs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acceptance {
    pub host_id: String,
    pub job_id: String,
    pub attempt_id: String,
}

/// Result of [`Store::cancel_job`].
#[derive(Debug, Clone, PartialEq)]
pub enum CancelResult {
    NotFound,
    /// It had not been dispatched: cancelled at once.
    Cancelled(Job),
    /// It is with an agent: the agent is told to stop it.
    Requested(Job),
    /// It had already ended.
    AlreadyEnded(Job),
}

/// Per host and backup: the last good snapshot and the last verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupStatus {
    pub host_id: String,
    pub name: String,
    pub last_snapshot: Option<String>,
    pub last_snapshot_ms: Option<i64>,
    pub last_snapshot_job: Option<String>,
    pub last_files: Option<i64>,
    pub last_bytes: Option<i64>,
    pub last_run_ms: Option<i64>,
    pub last_run_outcome: Option<String>,
    pub last_run_reason: Option<String>,
    pub rpo_secs: Option<i64>,
    pub last_verify_ms: Option<i64>,
    pub last_verify_ok: Option<bool>,
    pub last_verify_snapshot: Option<String>,
    pub last_verify_reason: Option<String>,
}

/// A write transaction of either backend.
pub(super) enum JTx {
    Lite(Transaction<'static, Sqlite>),
    Pg(Transaction<'static, Postgres>),
}

impl JTx {
    pub(super) async fn begin(store: &Store) -> Result<JTx, StoreError> {
        Ok(match &store.backend {
            Backend::Sqlite(b) => JTx::Lite(b.write.begin_with("BEGIN IMMEDIATE").await?),
            Backend::Postgres(b) => JTx::Pg(b.pool.begin().await?),
        })
    }

    pub(super) fn conn(&mut self) -> Conn<'_> {
        match self {
            JTx::Lite(tx) => Conn::Lite(tx),
            JTx::Pg(tx) => Conn::Pg(tx),
        }
    }

    /// Appends `entries` to the audit log, then commits.
    pub(super) async fn commit(mut self, entries: &[AuditEntry], now_ms: i64) -> Result<(), StoreError> {
        match &mut self {
            JTx::Lite(tx) => {
                append_sqlite(tx, entries, now_ms).await?;
            }
            JTx::Pg(tx) => {
                append_postgres(tx, entries, now_ms).await?;
            }
        }
        match self {
            JTx::Lite(tx) => tx.commit().await?,
            JTx::Pg(tx) => tx.commit().await?,
        }
        Ok(())
    }
}

/// A read connection of either backend.
pub(super) enum JRead {
    Lite(sqlx::pool::PoolConnection<Sqlite>),
    Pg(sqlx::pool::PoolConnection<Postgres>),
}

impl JRead {
    pub(super) async fn acquire(store: &Store) -> Result<JRead, StoreError> {
        Ok(match &store.backend {
            Backend::Sqlite(b) => JRead::Lite(b.read.acquire().await?),
            Backend::Postgres(b) => JRead::Pg(b.pool.acquire().await?),
        })
    }

    pub(super) fn conn(&mut self) -> Conn<'_> {
        match self {
            JRead::Lite(c) => Conn::Lite(c),
            JRead::Pg(c) => Conn::Pg(c),
        }
    }
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn params_json(params: &BTreeMap<String, String>) -> String {
    serde_json::to_string(params).unwrap_or_else(|_| "{}".into())
}

fn params_from(json: &str) -> BTreeMap<String, String> {
    serde_json::from_str(json).unwrap_or_default()
}

pub(super) fn job_from(row: &AnyRow) -> Result<Job, StoreError> {
    let state = row.text("state")?;
    Ok(Job {
        id: row.text("id")?,
        action: row.text("action")?,
        params: params_from(&row.text("params")?),
        host_id: row.text("host_id")?,
        state: JobState::parse(&state).ok_or_else(|| StoreError::Invalid(format!("unknown job state {state:?}")))?,
        attempt: u32::try_from(row.int("attempt")?).unwrap_or(0),
        max_attempts: u32::try_from(row.int("max_attempts")?).unwrap_or(1),
        attempt_id: row.opt_text("attempt_id")?,
        lease_owner: row.opt_text("lease_owner")?,
        lease_expires_ms: row.opt_int("lease_expires_ms")?,
        timeout_secs: u(row.int("timeout_secs")?),
        next_run_ms: row.int("next_run_ms")?,
        created_ms: row.int("created_ms")?,
        updated_ms: row.int("updated_ms")?,
        dispatched_ms: row.opt_int("dispatched_ms")?,
        started_ms: row.opt_int("started_ms")?,
        finished_ms: row.opt_int("finished_ms")?,
        outcome: row.opt_text("outcome")?,
        reason: row.opt_text("reason")?,
        result: row.opt_text("result")?,
        progress: row.opt_text("progress")?,
        output_bytes: u(row.int("output_bytes")?),
        output_truncated: row.int("output_truncated")? != 0,
        cancel_requested: row.int("cancel_requested")? != 0,
        idempotency_key: row.opt_text("idempotency_key")?,
        rollout_id: row.opt_text("rollout_id")?,
        source: row.text("source")?,
        created_by: row.text("created_by")?,
    })
}

fn sel(where_: &str) -> String {
    format!("SELECT {JOB_COLUMNS} FROM jobs {where_}")
}

fn system(action: &str, job: &str) -> AuditEntry {
    AuditEntry::new(actor::SYSTEM, action, Outcome::Success).target(format!("job:{job}"))
}

fn by_host(host: &str, action: &str, job: &str) -> AuditEntry {
    AuditEntry::new(actor::host(host), action, Outcome::Success).target(format!("job:{job}"))
}

fn is_unique_violation(e: &StoreError) -> bool {
    match e {
        StoreError::Database(sqlx::Error::Database(d)) => d.is_unique_violation(),
        _ => false,
    }
}

impl Store {
    /// Creates `jobs` with their audit entries (`audit[i]` for `jobs[i]`) in
    /// one transaction. With an idempotency key already used, nothing is
    /// created and the key's jobs are returned.
    pub async fn enqueue_jobs(
        &self,
        jobs: &[NewJob],
        audit: &[AuditEntry],
        now_ms: i64,
    ) -> Result<Enqueued, StoreError> {
        let key = jobs.first().and_then(|j| j.idempotency_key.clone());
        for _ in 0..3 {
            let mut tx = JTx::begin(self).await?;
            if let Some(key) = &key {
                let rows = tx
                    .conn()
                    .fetch(&sel("WHERE idempotency_key = $1 ORDER BY id"), &[B::T(key)])
                    .await?;
                if !rows.is_empty() {
                    return Ok(Enqueued::Existing(rows.iter().map(job_from).collect::<Result<_, _>>()?));
                }
            }
            // One statement for the whole batch.
            let rows: Vec<serde_json::Value> = jobs
                .iter()
                .map(|j| {
                    serde_json::json!({
                        "v_id": j.id, "v_action": j.action, "v_params": params_json(&j.params),
                        "v_host": j.host_id, "v_max": j.max_attempts,
                        "v_timeout": i64::try_from(j.timeout_secs).unwrap_or(i64::MAX),
                        "v_key": j.idempotency_key, "v_rollout": j.rollout_id, "v_by": j.created_by,
                    })
                })
                .collect();
            let rows = serde_json::Value::Array(rows).to_string();
            let inserted = tx
                .conn()
                .fetch(
                    &format!(
                        "INSERT INTO jobs (id, action, params, host_id, state, attempt, max_attempts, timeout_secs, \
                             next_run_ms, created_ms, updated_ms, idempotency_key, rollout_id, source, created_by)
                         SELECT v.v_id, v.v_action, v.v_params, v.v_host, 'queued', 0, v.v_max, v.v_timeout, \
                             $2, $2, $2, v.v_key, v.v_rollout, 'api', v.v_by
                         FROM JSON_ROWS($1 AS v(v_id text, v_action text, v_params text, v_host text, v_max bigint, \
                             v_timeout bigint, v_key text, v_rollout text, v_by text)) \
                         RETURNING {JOB_COLUMNS}"
                    ),
                    &[B::T(&rows), B::I(now_ms)],
                )
                .await;
            let rows = match inserted {
                Ok(rows) => rows,
                // Another request with the same key won the race: read its jobs.
                Err(e) if key.is_some() && is_unique_violation(&e) => continue,
                Err(e) => return Err(e),
            };
            let mut created: Vec<Job> = rows.iter().map(job_from).collect::<Result<_, _>>()?;
            // In the order asked for.
            let order: HashMap<&str, usize> = jobs.iter().enumerate().map(|(i, j)| (j.id.as_str(), i)).collect();
            created.sort_by_key(|j| order.get(j.id.as_str()).copied().unwrap_or(usize::MAX));
            tx.commit(audit, now_ms).await?;
            return Ok(Enqueued::Created(created));
        }
        Err(StoreError::Invalid("idempotency key contention: try again".into()))
    }

    /// One job by ID.
    pub async fn get_job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let mut c = JRead::acquire(self).await?;
        let row = c.conn().fetch_one(&sel("WHERE id = $1"), &[B::T(id)]).await?;
        row.as_ref().map(job_from).transpose()
    }

    /// Jobs matching `filter`, newest first, after (older than) the ID `before`.
    pub async fn list_jobs(
        &self,
        filter: &JobFilter,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Page<Job>, StoreError> {
        let limit = limit.max(1);
        let state = filter.state.map(JobState::as_str);
        let mut c = JRead::acquire(self).await?;
        let rows = c
            .conn()
            .fetch(
                &sel(
                    "WHERE ($1 = '' OR id < $1) AND ($2 = '' OR state = $2) AND ($3 = '' OR host_id = $3) \
                      AND ($4 = '' OR action = $4) ORDER BY id DESC LIMIT $5",
                ),
                &[
                    B::T(before.unwrap_or("")),
                    B::T(state.unwrap_or("")),
                    B::T(filter.host_id.as_deref().unwrap_or("")),
                    B::T(filter.action.as_deref().unwrap_or("")),
                    B::I(i64::try_from(limit + 1).unwrap_or(i64::MAX)),
                ],
            )
            .await?;
        let mut items: Vec<Job> = rows.iter().map(job_from).collect::<Result<_, _>>()?;
        let has_more = items.len() > limit;
        items.truncate(limit);
        Ok(Page { items, has_more })
    }

    /// The stored output of a job's current attempt (None: no such job).
    pub async fn job_output(&self, id: &str) -> Result<Option<(Job, Vec<u8>)>, StoreError> {
        let Some(job) = self.get_job(id).await? else {
            return Ok(None);
        };
        let mut c = JRead::acquire(self).await?;
        let rows = c
            .conn()
            .fetch(
                "SELECT pos, data FROM job_output WHERE job_id = $1 AND attempt = $2 ORDER BY pos",
                &[B::T(id), B::I(i64::from(job.attempt))],
            )
            .await?;
        let mut out = Vec::new();
        for r in rows {
            let pos = u(r.int("pos")?) as usize;
            let data = r.bytes("data")?;
            if pos > out.len() {
                out.resize(pos, b'?');
            }
            if pos + data.len() > out.len() {
                let skip = out.len() - pos;
                out.extend_from_slice(&data[skip.min(data.len())..]);
            }
        }
        Ok(Some((job, out)))
    }

    /// Cancels a job: a queued one at once, one with an agent by asking the
    /// agent (the dispatcher delivers `JobCancel`); audited with `audit`.
    pub async fn cancel_job(&self, id: &str, audit: AuditEntry, now_ms: i64) -> Result<CancelResult, StoreError> {
        let mut tx = JTx::begin(self).await?;
        let Some(row) = tx.conn().fetch_one(&sel("WHERE id = $1"), &[B::T(id)]).await? else {
            return Ok(CancelResult::NotFound);
        };
        let job = job_from(&row)?;
        let (sql, immediate) = match job.state {
            JobState::Queued => (
                "UPDATE jobs SET state = 'cancelled', reason = 'cancelled before it was dispatched', \
                     finished_ms = $2, updated_ms = $2, cancel_requested = 1 WHERE id = $1 AND state = 'queued'",
                true,
            ),
            JobState::Dispatched | JobState::Running if !job.cancel_requested => (
                "UPDATE jobs SET cancel_requested = 1, updated_ms = $2 \
                 WHERE id = $1 AND state IN ('dispatched', 'running')",
                false,
            ),
            JobState::Dispatched | JobState::Running => return Ok(CancelResult::Requested(job)),
            _ => return Ok(CancelResult::AlreadyEnded(job)),
        };
        if tx.conn().exec(sql, &[B::T(id), B::I(now_ms)]).await? != 1 {
            return Ok(CancelResult::AlreadyEnded(job));
        }
        let row = tx.conn().fetch_one(&sel("WHERE id = $1"), &[B::T(id)]).await?;
        let job = row
            .as_ref()
            .map(job_from)
            .transpose()?
            .ok_or_else(|| StoreError::Invalid("the job vanished while being cancelled".into()))?;
        let entry = audit.target(format!("job:{id}")).details(serde_json::json!({
            "state": job.state.as_str(),
            "attempt": job.attempt,
            "immediate": immediate,
        }));
        tx.commit(std::slice::from_ref(&entry), now_ms).await?;
        Ok(if immediate {
            CancelResult::Cancelled(job)
        } else {
            CancelResult::Requested(job)
        })
    }

    /// Claims up to `limit` attempts for `hosts` (the hosts connected to the
    /// claiming process `owner`): new attempts of queued jobs that are due,
    /// and the same attempt again for dispatched jobs whose lease expired
    /// before the agent accepted. Audited (`jobs.dispatch`).
    pub async fn claim_jobs(
        &self,
        owner: &str,
        hosts: &[String],
        now_ms: i64,
        limit: usize,
        settings: &JobSettings,
    ) -> Result<Vec<Claimed>, StoreError> {
        if hosts.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let lease = now_ms.saturating_add(settings.dispatch_lease_ms);
        let lim = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut tx = JTx::begin(self).await?;
        let mut c = tx.conn();
        let mut out = Vec::new();
        let mut audit = Vec::new();

        // Attempts sent before whose lease expired unaccepted: the same
        // attempt again. One statement picks (skipping rows another control
        // plane holds), locks and renews them.
        {
            let rows = c
                .fetch(
                    &format!(
                        "UPDATE jobs SET lease_owner = $1, lease_expires_ms = $2, updated_ms = $3 \
                         WHERE id IN (SELECT id FROM jobs WHERE state = 'dispatched' AND lease_expires_ms < $3 \
                             AND cancel_requested = 0 AND host_id IN_LIST($4) ORDER BY id LIMIT $5 SKIP_LOCKED) \
                         RETURNING {JOB_COLUMNS}"
                    ),
                    &[B::T(owner), B::I(lease), B::I(now_ms), B::List(hosts), B::I(lim)],
                )
                .await?;
            let mut jobs: Vec<Job> = rows.iter().map(job_from).collect::<Result<_, _>>()?;
            jobs.sort_by(|a, b| a.id.cmp(&b.id));
            for job in jobs {
                audit.push(system("jobs.dispatch", &job.id).details(serde_json::json!({
                    "host": job.host_id, "attempt": job.attempt, "attempt_id": job.attempt_id,
                    "owner": owner, "resend": true,
                })));
                out.push(resent(job));
            }
        }

        // New attempts. When no host can reach its cap with `room` more
        // (a cap of 10, at most 3 with an agent, room 5), the claim is the
        // plain queue one: the first `room` due jobs, locked (skipping rows
        // another control plane holds) and claimed, in one statement whose
        // guard counts the busiest host's attempts. When the guard fails (or
        // nothing was due, or the room alone is above the cap, as with the
        // default cap of 1 and more than one free slot), one statement reads
        // the due candidates of hosts with a free slot (at most 4 × room, hosts at their cap left out so
        // their backlog cannot crowd the others out), ranks them per host
        // and keeps them within each host's free slots, then locks and claims
        // the first `room` of them.
        let room = limit.saturating_sub(out.len());
        if room > 0 {
            let cap = i64::from(settings.max_running_per_host);
            let room = i64::try_from(room).unwrap_or(i64::MAX);
            // A room above the cap fails the guard whatever runs: not tried.
            let plain = if room > cap {
                Vec::new()
            } else {
                c.fetch(
                    &format!(
                        "UPDATE jobs SET {CLAIM_SET} \
                         WHERE id IN (SELECT id FROM jobs \
                             WHERE state = 'queued' AND next_run_ms <= $3 AND host_id IN_LIST($4) \
                               AND (SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM jobs \
                                       WHERE state IN ('dispatched', 'running') AND host_id IN_LIST($4) \
                                       GROUP BY host_id) b) + $5 <= $6 \
                             ORDER BY next_run_ms, id LIMIT $5 SKIP_LOCKED) \
                         RETURNING {CLAIM_COLUMNS}"
                    ),
                    &[
                        B::T(owner),
                        B::I(lease),
                        B::I(now_ms),
                        B::List(hosts),
                        B::I(room),
                        B::I(cap),
                    ],
                )
                .await?
            };
            let rows = if !plain.is_empty() {
                plain
            } else {
                c.fetch(
                    &format!(
                        "UPDATE jobs SET {CLAIM_SET} \
                         WHERE id IN (SELECT id FROM jobs WHERE id IN ( \
                             WITH busy AS (SELECT host_id, count(*) AS n FROM jobs \
                                     WHERE state IN ('dispatched', 'running') AND host_id IN_LIST($4) \
                                     GROUP BY host_id), \
                                 due AS (SELECT id, host_id, next_run_ms FROM jobs \
                                     WHERE state = 'queued' AND next_run_ms <= $3 AND host_id IN_LIST($4) \
                                       AND host_id NOT IN (SELECT host_id FROM busy WHERE n >= $5) \
                                     ORDER BY next_run_ms, id LIMIT $6), \
                                 ranked AS (SELECT id, host_id, next_run_ms, \
                                     row_number() OVER (PARTITION BY host_id ORDER BY next_run_ms, id) AS rn FROM due) \
                             SELECT ranked.id FROM ranked LEFT JOIN busy ON busy.host_id = ranked.host_id \
                             WHERE ranked.rn + coalesce(busy.n, 0) <= $5 \
                             ORDER BY ranked.next_run_ms, ranked.id LIMIT $7) \
                           AND state = 'queued' ORDER BY id SKIP_LOCKED) \
                         RETURNING {CLAIM_COLUMNS}"
                    ),
                    &[
                        B::T(owner),
                        B::I(lease),
                        B::I(now_ms),
                        B::List(hosts),
                        B::I(cap),
                        B::I(room.saturating_mul(4)),
                        B::I(room),
                    ],
                )
                .await?
            };
            let mut fresh: Vec<(Claimed, i64, i64)> = rows.iter().map(claim_from).collect::<Result<_, _>>()?;
            // In claim order (due first; the claim leaves next_run_ms alone).
            fresh.sort_by(|(a, _, a_due), (b, _, b_due)| (a_due, &a.job_id).cmp(&(b_due, &b.job_id)));
            for (job, attempt, _) in fresh {
                audit.push(system("jobs.dispatch", &job.job_id).details(serde_json::json!({
                    "host": job.host_id, "attempt": attempt, "attempt_id": job.attempt_id, "owner": owner,
                })));
                out.push(job);
            }
        }
        if out.is_empty() {
            return Ok(out);
        }
        tx.commit(&audit, now_ms).await?;
        Ok(out)
    }

    /// The agent of `host_id` accepted `attempt_id`: the job is running, with
    /// a lease of its timeout plus the grace. False when nothing changed
    /// (unknown, stale or repeated acceptance).
    pub async fn accept_job(
        &self,
        host_id: &str,
        job_id: &str,
        attempt_id: &str,
        now_ms: i64,
        settings: &JobSettings,
    ) -> Result<bool, StoreError> {
        let one = Acceptance {
            host_id: host_id.into(),
            job_id: job_id.into(),
            attempt_id: attempt_id.into(),
        };
        Ok(self
            .accept_jobs(std::slice::from_ref(&one), now_ms, settings)
            .await?
            .first()
            .copied()
            .unwrap_or(false))
    }

    /// [`Store::accept_job`] for many acceptances (of any hosts) in one
    /// transaction: one fenced UPDATE (job ID, attempt ID, host, still
    /// `dispatched`), one audit append. Returns, per acceptance, whether it
    /// changed the job (a repeat in the same call does not).
    pub async fn accept_jobs(
        &self,
        items: &[Acceptance],
        now_ms: i64,
        settings: &JobSettings,
    ) -> Result<Vec<bool>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<serde_json::Value> = items
            .iter()
            .map(|a| serde_json::json!({ "v_id": a.job_id, "v_attempt_id": a.attempt_id, "v_host": a.host_id }))
            .collect();
        let rows = serde_json::Value::Array(rows).to_string();
        let mut tx = JTx::begin(self).await?;
        let done = tx
            .conn()
            .fetch(
                "UPDATE jobs SET state = 'running', started_ms = $1, updated_ms = $1, \
                     lease_expires_ms = $1 + timeout_secs * 1000 + $2 \
                 FROM JSON_ROWS($3 AS v(v_id text, v_attempt_id text, v_host text)) \
                 WHERE id = v.v_id AND attempt_id = v.v_attempt_id AND host_id = v.v_host AND NOIDX(state) = 'dispatched' \
                 RETURNING id, attempt, attempt_id, host_id",
                &[B::I(now_ms), B::I(settings.timeout_grace_ms), B::T(&rows)],
            )
            .await?;
        let mut attempts: HashMap<(String, String, String), i64> = HashMap::with_capacity(done.len());
        for r in &done {
            let key = (r.text("id")?, r.text("attempt_id")?, r.text("host_id")?);
            attempts.insert(key, r.int("attempt")?);
        }
        let mut out = Vec::with_capacity(items.len());
        let mut audit = Vec::new();
        for a in items {
            // `remove`: a repeat of the same acceptance in this call changed nothing.
            match attempts.remove(&(a.job_id.clone(), a.attempt_id.clone(), a.host_id.clone())) {
                Some(attempt) => {
                    audit.push(
                        by_host(&a.host_id, "jobs.start", &a.job_id)
                            .details(serde_json::json!({ "attempt": attempt, "attempt_id": a.attempt_id })),
                    );
                    out.push(true);
                }
                None => out.push(false),
            }
        }
        if audit.is_empty() {
            return Ok(out);
        }
        tx.commit(&audit, now_ms).await?;
        Ok(out)
    }

    /// Ends what the agents no longer will: running jobs past their lease
    /// (timeout plus grace) time out; dispatched jobs cancelled before the
    /// agent accepted them are cancelled. Fenced on the lease each saw.
    pub async fn sweep_jobs(&self, now_ms: i64, settings: &JobSettings) -> Result<Applied, StoreError> {
        let mut tx = JTx::begin(self).await?;
        let mut c = tx.conn();
        let rows = c
            .fetch(
                &sel("WHERE state IN ('dispatched', 'running') AND lease_expires_ms < $1 \
                      AND (state = 'running' OR cancel_requested = 1) ORDER BY id LIMIT 500"),
                &[B::I(now_ms)],
            )
            .await?;
        let jobs: Vec<Job> = rows.iter().map(job_from).collect::<Result<_, _>>()?;
        let endings: Vec<Ending> = jobs
            .iter()
            .map(|job| {
                let (outcome, reason) = if job.state == JobState::Running {
                    ("timed_out", "no result from the agent within the job's timeout")
                } else {
                    ("cancelled", "cancelled before the agent accepted it")
                };
                Ending {
                    job_id: &job.id,
                    host_id: &job.host_id,
                    attempt: job.attempt,
                    attempt_id: job.attempt_id.as_deref().unwrap_or_default(),
                    lease: Some((job.lease_owner.as_deref(), job.lease_expires_ms)),
                    outcome,
                    reason,
                    result: None,
                    finished_ms: now_ms,
                    started_ms: job.started_ms.unwrap_or(now_ms),
                    who: actor::SYSTEM.to_string(),
                }
            })
            .collect();
        let mut applied = Applied::default();
        let mut audit = Vec::new();
        for (e, ended) in endings.iter().zip(finish_many(&mut c, &endings, settings).await?) {
            if let Some(ended) = ended {
                applied.finished.push((ended.state, ended.action.clone()));
                applied.ended(e.host_id, &ended.action, e.outcome, now_ms);
                audit.extend(ended.audit);
            }
        }
        if audit.is_empty() {
            return Ok(applied);
        }
        // Timeouts count towards job-success SLOs, in this transaction.
        super::slo::count_jobs(&mut c, &applied.outcomes, &self.sli_index(), now_ms).await?;
        tx.commit(&audit, now_ms).await?;
        Ok(applied)
    }

    /// Cancellations to deliver to `hosts` (connected here).
    pub async fn pending_cancels(&self, hosts: &[String]) -> Result<Vec<CancelOrder>, StoreError> {
        if hosts.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = JRead::acquire(self).await?;
        let rows = c
            .conn()
            .fetch(
                "SELECT id, attempt_id, host_id FROM jobs WHERE cancel_requested = 1 \
                 AND state IN ('dispatched', 'running') AND host_id IN_LIST($1) LIMIT 1000",
                &[B::List(hosts)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(CancelOrder {
                    job_id: r.text("id")?,
                    attempt_id: r.opt_text("attempt_id")?.unwrap_or_default(),
                    host_id: r.text("host_id")?,
                })
            })
            .collect()
    }

    /// Jobs per state (for the queue-depth gauge).
    pub async fn job_counts(&self) -> Result<BTreeMap<JobState, u64>, StoreError> {
        let mut c = JRead::acquire(self).await?;
        let rows = c
            .conn()
            .fetch("SELECT state, count(*) AS n FROM jobs GROUP BY state", &[])
            .await?;
        let mut out = BTreeMap::new();
        for r in rows {
            if let Some(s) = JobState::parse(&r.text("state")?) {
                out.insert(s, u(r.int("n")?));
            }
        }
        Ok(out)
    }

    /// Backup status per host and backup, by host then name.
    pub async fn list_backups(&self, host_id: Option<&str>) -> Result<Vec<BackupStatus>, StoreError> {
        let mut c = JRead::acquire(self).await?;
        let rows = c
            .conn()
            .fetch(
                "SELECT * FROM backup_status WHERE ($1 = '' OR host_id = $1) ORDER BY host_id, name",
                &[B::T(host_id.unwrap_or(""))],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(BackupStatus {
                    host_id: r.text("host_id")?,
                    name: r.text("name")?,
                    last_snapshot: r.opt_text("last_snapshot")?,
                    last_snapshot_ms: r.opt_int("last_snapshot_ms")?,
                    last_snapshot_job: r.opt_text("last_snapshot_job")?,
                    last_files: r.opt_int("last_files")?,
                    last_bytes: r.opt_int("last_bytes")?,
                    last_run_ms: r.opt_int("last_run_ms")?,
                    last_run_outcome: r.opt_text("last_run_outcome")?,
                    last_run_reason: r.opt_text("last_run_reason")?,
                    rpo_secs: r.opt_int("rpo_secs")?,
                    last_verify_ms: r.opt_int("last_verify_ms")?,
                    last_verify_ok: r.opt_int("last_verify_ok")?.map(|v| v != 0),
                    last_verify_snapshot: r.opt_text("last_verify_snapshot")?,
                    last_verify_reason: r.opt_text("last_verify_reason")?,
                })
            })
            .collect()
    }
}

/// One host's job reports, ingested with its check results.
#[derive(Debug, Clone, PartialEq)]
pub struct JobBatch {
    pub host_id: String,
    pub reports: Vec<JobReport>,
}

/// The job part of an ingest call.
#[derive(Debug, Clone, Default)]
pub struct JobIngest<'a> {
    pub batches: &'a [JobBatch],
    pub settings: JobSettings,
}

impl Store {
    /// [`Store::ingest`] plus job reports, in the same transaction (so one
    /// `Ack` covers both); returns what the reports changed.
    pub async fn ingest_with_jobs(
        &self,
        batches: &[IngestBatch],
        jobs: &JobIngest<'_>,
        now_ms: i64,
    ) -> Result<Applied, StoreError> {
        if batches.is_empty() && jobs.batches.is_empty() {
            return Ok(Applied::default());
        }
        let mut rows = IngestRows::prepare(batches)?;
        // Job reports carry sequence numbers too: the host's stored maximum covers them.
        for jb in jobs.batches {
            let top = jb.reports.iter().map(|r| r.seq).max().unwrap_or(0);
            let top = i64::try_from(top).map_err(|_| StoreError::Invalid(format!("sequence {top} is out of range")))?;
            if let Some(h) = rows.hosts.iter_mut().find(|h| h.id == jb.host_id) {
                h.max_seq = h.max_seq.max(top);
            }
        }
        let sli = self.sli_index();
        match &self.backend {
            Backend::Sqlite(b) => b.ingest(&rows, jobs, now_ms, &sli).await,
            Backend::Postgres(b) => b.ingest(&rows, jobs, now_ms, &sli).await,
        }
    }
}

/// Called by both backends' ingest just before their commit.
pub(super) async fn apply_in_ingest(
    mut c: Conn<'_>,
    jobs: &JobIngest<'_>,
    now_ms: i64,
    sli: &crate::slo::sli::SliIndex,
) -> Result<Applied, StoreError> {
    let mut applied = Applied::default();
    let audit = apply_all_reports(&mut c, jobs.batches, now_ms, &jobs.settings, &mut applied).await?;
    // Ended attempts count towards job-success SLOs in this same transaction.
    super::slo::count_jobs(&mut c, &applied.outcomes, sli, now_ms).await?;
    if !audit.is_empty() {
        match &mut c {
            Conn::Lite(conn) => append_sqlite(conn, &audit, now_ms).await?,
            Conn::Pg(conn) => append_postgres(conn, &audit, now_ms).await?,
        };
    }
    Ok(applied)
}

/// What a claim of new attempts writes.
const CLAIM_SET: &str = "state = 'dispatched', attempt = attempt + 1, attempt_id = id || '-a' || (attempt + 1), \
     lease_owner = $1, lease_expires_ms = $2, dispatched_ms = $3, started_ms = NULL, finished_ms = NULL, \
     updated_ms = $3, output_bytes = 0, output_truncated = 0, progress = NULL";

/// What a claim of new attempts reads back ([`claim_from`]).
const CLAIM_COLUMNS: &str = "id, host_id, action, params, attempt, attempt_id, timeout_secs, next_run_ms, created_ms";

/// A new attempt from a row of [`CLAIM_COLUMNS`], with its attempt number
/// and the job's due time (the claim order).
fn claim_from(row: &AnyRow) -> Result<(Claimed, i64, i64), StoreError> {
    let next_run_ms = row.int("next_run_ms")?;
    let claimed = Claimed {
        job_id: row.text("id")?,
        attempt_id: row.opt_text("attempt_id")?.unwrap_or_default(),
        host_id: row.text("host_id")?,
        action: row.text("action")?,
        params: params_from(&row.text("params")?),
        timeout_secs: u(row.int("timeout_secs")?),
        ready_ms: next_run_ms.max(row.int("created_ms")?),
        resend: false,
    };
    Ok((claimed, row.int("attempt")?, next_run_ms))
}

/// An unaccepted attempt sent again (the same attempt ID).
fn resent(job: Job) -> Claimed {
    Claimed {
        attempt_id: job.attempt_id.unwrap_or_default(),
        ready_ms: job.updated_ms,
        job_id: job.id,
        host_id: job.host_id,
        action: job.action,
        params: job.params,
        timeout_secs: job.timeout_secs,
        resend: true,
    }
}

/// One attempt to end: what the write is fenced on and how the attempt ended.
struct Ending<'a> {
    job_id: &'a str,
    host_id: &'a str,
    /// The attempt number (from the attempt ID, `<job>-a<n>`).
    attempt: u32,
    /// The lease token the agent journals (fenced on, with id, host and attempt).
    attempt_id: &'a str,
    /// For sweeps: the lease owner and expiry seen (also fenced on).
    lease: Option<(Option<&'a str>, Option<i64>)>,
    outcome: &'a str,
    reason: &'a str,
    result: Option<&'a str>,
    finished_ms: i64,
    /// The attempt's start, kept only where the job has none yet.
    started_ms: i64,
    /// The audit actor.
    who: String,
}

/// An attempt [`finish_many`] ended.
struct Ended {
    /// The job's new state (`queued` again when it is retried).
    state: JobState,
    action: String,
    params: BTreeMap<String, String>,
    audit: Vec<AuditEntry>,
}

/// Ends the attempts of `endings` in one statement, without reading the
/// jobs first: each row is fenced on its job ID, host, attempt and attempt
/// ID (and, for sweeps, the lease seen), and the statement itself decides,
/// from the row's `cancel_requested`, `attempt` and `max_attempts` and the
/// reported outcome, whether the job ends (terminal), is queued again with
/// a backoff (computed here per row, with its jitter, and used only for a
/// retry) while attempts remain, or ends `discarded` once retries are spent.
/// At most one ending per (job, host, attempt ID). Returns, per ending, what
/// it changed, or None where the fence refused the write.
async fn finish_many(
    c: &mut Conn<'_>,
    endings: &[Ending<'_>],
    settings: &JobSettings,
) -> Result<Vec<Option<Ended>>, StoreError> {
    if endings.is_empty() {
        return Ok(Vec::new());
    }
    // The endings as columns (one array each on PostgreSQL); per ending its
    // state, whether it may be retried, and when a retry would run.
    let decided: Vec<(JobState, bool, i64)> = endings
        .iter()
        .map(|e| {
            let (state, retryable) = state_of_outcome(e.outcome, e.reason);
            let retry_at = if retryable {
                e.finished_ms.saturating_add(settings.retry_delay_ms(e.attempt))
            } else {
                e.finished_ms
            };
            (state, retryable, retry_at)
        })
        .collect();
    let rows = [
        ("v_id", Col::Text(endings.iter().map(|e| Some(e.job_id)).collect())),
        ("v_host", Col::Text(endings.iter().map(|e| Some(e.host_id)).collect())),
        (
            "v_attempt",
            Col::Int(endings.iter().map(|e| Some(i64::from(e.attempt))).collect()),
        ),
        (
            "v_attempt_id",
            Col::Text(endings.iter().map(|e| Some(e.attempt_id)).collect()),
        ),
        (
            "v_fenced",
            Col::Int(endings.iter().map(|e| Some(i64::from(e.lease.is_some()))).collect()),
        ),
        (
            "v_owner",
            Col::Text(endings.iter().map(|e| e.lease.and_then(|(owner, _)| owner)).collect()),
        ),
        (
            "v_expires",
            Col::Int(
                endings
                    .iter()
                    .map(|e| e.lease.and_then(|(_, expires)| expires))
                    .collect(),
            ),
        ),
        (
            "v_state",
            Col::Text(decided.iter().map(|d| Some(d.0.as_str())).collect()),
        ),
        (
            "v_retryable",
            Col::Int(decided.iter().map(|d| Some(i64::from(d.1))).collect()),
        ),
        (
            "v_outcome",
            Col::Text(endings.iter().map(|e| Some(e.outcome)).collect()),
        ),
        (
            "v_reason",
            Col::Text(
                endings
                    .iter()
                    .map(|e| Some(e.reason).filter(|r| !r.is_empty()))
                    .collect(),
            ),
        ),
        ("v_result", Col::Text(endings.iter().map(|e| e.result).collect())),
        (
            "v_finished",
            Col::Int(endings.iter().map(|e| Some(e.finished_ms)).collect()),
        ),
        (
            "v_started",
            Col::Int(endings.iter().map(|e| Some(e.started_ms)).collect()),
        ),
        ("v_retry_at", Col::Int(decided.iter().map(|d| Some(d.2)).collect())),
    ];
    // Retried: a retryable outcome, not cancelled, attempts left. Discarded:
    // the same once attempts are spent, when retries were asked for.
    const RETRY: &str = "v.v_retryable = 1 AND cancel_requested = 0 AND attempt < max_attempts";
    let done = c
        .fetch(
            &format!(
                "UPDATE jobs SET \
                     state = CASE WHEN {RETRY} THEN 'queued' \
                         WHEN v.v_retryable = 1 AND cancel_requested = 0 AND max_attempts > 1 THEN 'discarded' \
                         ELSE v.v_state END, \
                     outcome = v.v_outcome, reason = v.v_reason, result = v.v_result, \
                     finished_ms = CASE WHEN {RETRY} THEN NULL ELSE v.v_finished END, \
                     started_ms = coalesce(started_ms, v.v_started), \
                     next_run_ms = CASE WHEN {RETRY} THEN v.v_retry_at ELSE next_run_ms END, \
                     lease_owner = NULL, lease_expires_ms = NULL, updated_ms = v.v_finished \
                 FROM ROWS($1 AS v(v_id text, v_host text, v_attempt bigint, v_attempt_id text, \
                     v_fenced bigint, v_owner text, v_expires bigint, v_state text, v_retryable bigint, \
                     v_outcome text, v_reason text, v_result text, v_finished bigint, v_started bigint, \
                     v_retry_at bigint)) \
                 WHERE id = v.v_id AND host_id = v.v_host AND attempt = v.v_attempt \
                   AND attempt_id = v.v_attempt_id AND NOIDX(state) IN ('dispatched', 'running') \
                   AND (v.v_fenced = 0 OR (lease_owner IS NOT DISTINCT FROM v.v_owner \
                                           AND lease_expires_ms IS NOT DISTINCT FROM v.v_expires)) \
                 RETURNING id, host_id, attempt_id, action, params, state, attempt, max_attempts, next_run_ms"
            ),
            &[B::Rows(&rows)],
        )
        .await?;
    // Each written row, by the fence it matched.
    let mut written: HashMap<(String, String, String), &AnyRow> = HashMap::with_capacity(done.len());
    for r in &done {
        written.insert((r.text("id")?, r.text("host_id")?, r.text("attempt_id")?), r);
    }
    let mut out = Vec::with_capacity(endings.len());
    for e in endings {
        let key = (e.job_id.to_string(), e.host_id.to_string(), e.attempt_id.to_string());
        let Some(row) = written.remove(&key) else {
            out.push(None);
            continue;
        };
        let state = row.text("state")?;
        let state =
            JobState::parse(&state).ok_or_else(|| StoreError::Invalid(format!("unknown job state {state:?}")))?;
        let (outcome_state, _) = state_of_outcome(e.outcome, e.reason);
        // What the attempt's end recorded: the outcome's state, or `discarded`.
        let shown = if state == JobState::Discarded {
            state
        } else {
            outcome_state
        };
        let (attempt, max_attempts) = (row.int("attempt")?, row.int("max_attempts")?);
        let mut audit = vec![
            AuditEntry::new(e.who.as_str(), "jobs.finish", Outcome::Success)
                .target(format!("job:{}", e.job_id))
                .details(serde_json::json!({
                    "host": e.host_id, "attempt": attempt, "attempt_id": e.attempt_id,
                    "outcome": e.outcome, "reason": e.reason, "state": shown.as_str(),
                })),
        ];
        if state == JobState::Queued {
            audit.push(system("jobs.retry", e.job_id).details(serde_json::json!({
                "attempt": attempt, "max_attempts": max_attempts, "next_run_ms": row.int("next_run_ms")?,
            })));
        } else if state == JobState::Discarded {
            audit.push(system("jobs.discard", e.job_id).details(serde_json::json!({
                "attempts": attempt, "reason": e.reason,
            })));
        }
        out.push(Some(Ended {
            state,
            action: row.text("action")?,
            params: params_from(&row.text("params")?),
            audit,
        }));
    }
    Ok(out)
}

/// Applies the agents' job reports inside the ingest transaction `c`, in
/// order; consecutive `finished` reports (of any hosts) are ended together
/// by [`finish_reports`]. Returns the audit entries to append before its commit.
async fn apply_all_reports(
    c: &mut Conn<'_>,
    batches: &[JobBatch],
    now_ms: i64,
    settings: &JobSettings,
    applied: &mut Applied,
) -> Result<Vec<AuditEntry>, StoreError> {
    let mut audit = Vec::new();
    let mut pending: Vec<(&str, &JobReport)> = Vec::new();
    for jb in batches {
        for r in &jb.reports {
            if matches!(r.event, JobEventKind::Finished { .. }) && !r.job_id.is_empty() {
                pending.push((&jb.host_id, r));
                continue;
            }
            // The finishes before this report apply first.
            finish_reports(c, &pending, now_ms, settings, &mut audit, applied).await?;
            pending.clear();
            apply_report(c, &jb.host_id, r, now_ms, settings, &mut audit, applied).await?;
        }
    }
    finish_reports(c, &pending, now_ms, settings, &mut audit, applied).await?;
    Ok(audit)
}

/// Ends the attempts that `finished` reports (host, report) end, in one
/// fenced write ([`finish_many`]) without reading the jobs first.
async fn finish_reports(
    c: &mut Conn<'_>,
    pending: &[(&str, &JobReport)],
    now_ms: i64,
    settings: &JobSettings,
    audit: &mut Vec<AuditEntry>,
    applied: &mut Applied,
) -> Result<(), StoreError> {
    if pending.is_empty() {
        return Ok(());
    }
    let mut endings = Vec::with_capacity(pending.len());
    let mut seen: HashSet<(&str, &str, &str)> = HashSet::with_capacity(pending.len());
    for (host_id, r) in pending {
        let JobEventKind::Finished {
            outcome,
            reason,
            result_json,
            finished_at_ms,
            started_at_ms,
            ..
        } = &r.event
        else {
            continue;
        };
        let Some(attempt) = crate::jobs::attempt_of(&r.job_id, &r.attempt_id) else {
            tracing::info!(job = %r.job_id, attempt = %r.attempt_id, "result for an unknown attempt ignored");
            continue;
        };
        // A repeated result in the same round would meet the state the first one left.
        if !seen.insert((host_id, &r.job_id, &r.attempt_id)) {
            tracing::info!(job = %r.job_id, attempt = %r.attempt_id, "repeated result ignored");
            continue;
        }
        let finished_ms = if *finished_at_ms > 0 { *finished_at_ms } else { now_ms };
        endings.push(Ending {
            job_id: &r.job_id,
            host_id,
            attempt,
            attempt_id: &r.attempt_id,
            lease: None,
            outcome,
            reason,
            result: Some(result_json.as_str()).filter(|s| !s.is_empty()),
            finished_ms,
            started_ms: if *started_at_ms > 0 {
                *started_at_ms
            } else {
                finished_ms
            },
            who: actor::host(host_id),
        });
    }
    let results = finish_many(c, &endings, settings).await?;
    for (e, ended) in endings.iter().zip(results) {
        let Some(ended) = ended else {
            tracing::info!(job = %e.job_id, attempt = %e.attempt_id, "result of an unknown or ended attempt ignored");
            continue;
        };
        applied.finished.push((ended.state, ended.action.clone()));
        applied.ended(e.host_id, &ended.action, e.outcome, e.finished_ms);
        audit.extend(ended.audit);
        update_backup_status(
            c,
            e.host_id,
            e.job_id,
            &ended.action,
            &ended.params,
            e.outcome,
            e.reason,
            e.result,
            e.finished_ms,
        )
        .await?;
    }
    Ok(())
}

/// Applies one report other than an attempt's `finished`: progress, output,
/// or a run the agent started itself.
async fn apply_report(
    c: &mut Conn<'_>,
    host_id: &str,
    r: &JobReport,
    now_ms: i64,
    settings: &JobSettings,
    audit: &mut Vec<AuditEntry>,
    applied: &mut Applied,
) -> Result<(), StoreError> {
    match &r.event {
        JobEventKind::Progress {
            stage,
            percent,
            message,
        } => {
            let progress = serde_json::json!({ "stage": stage, "percent": percent, "message": message }).to_string();
            c.exec(
                "UPDATE jobs SET progress = $1, updated_ms = $2 \
                 WHERE id = $3 AND host_id = $4 AND attempt_id = $5 AND state IN ('dispatched', 'running')",
                &[
                    B::T(&progress),
                    B::I(now_ms),
                    B::T(&r.job_id),
                    B::T(host_id),
                    B::T(&r.attempt_id),
                ],
            )
            .await?;
        }
        JobEventKind::Output {
            offset,
            data,
            truncated,
        } => {
            apply_output(c, host_id, r, *offset, data, *truncated, settings).await?;
        }
        JobEventKind::Finished {
            outcome,
            reason,
            result_json,
            finished_at_ms,
            action,
            params,
            started_at_ms,
        } => {
            let result = Some(result_json.as_str()).filter(|s| !s.is_empty());
            record_local_run(
                c,
                host_id,
                r,
                outcome,
                reason,
                result,
                *finished_at_ms,
                action,
                params,
                *started_at_ms,
                now_ms,
                audit,
                applied,
            )
            .await?;
        }
    }
    Ok(())
}

async fn apply_output(
    c: &mut Conn<'_>,
    host_id: &str,
    r: &JobReport,
    offset: u64,
    data: &[u8],
    truncated: bool,
    settings: &JobSettings,
) -> Result<(), StoreError> {
    let Some(row) = c
        .fetch_one(
            "SELECT attempt, output_bytes FROM jobs WHERE id = $1 AND host_id = $2 AND attempt_id = $3",
            &[B::T(&r.job_id), B::T(host_id), B::T(&r.attempt_id)],
        )
        .await?
    else {
        return Ok(());
    };
    let (attempt, stored) = (row.int("attempt")?, u(row.int("output_bytes")?));
    let end = offset.saturating_add(data.len() as u64);
    if end <= stored && !truncated {
        return Ok(()); // a resend of output already kept
    }
    let start = offset.max(stored);
    let skip = (start - offset) as usize;
    let room = settings.output_cap.saturating_sub(start);
    let keep = (data.len().saturating_sub(skip) as u64).min(room) as usize;
    let cut = truncated || keep < data.len().saturating_sub(skip);
    if keep > 0 {
        c.exec(
            "INSERT INTO job_output (job_id, attempt, pos, data) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (job_id, attempt, pos) DO NOTHING",
            &[
                B::T(&r.job_id),
                B::I(attempt),
                B::I(i64::try_from(start).unwrap_or(i64::MAX)),
                B::Bytes(&data[skip..skip + keep]),
            ],
        )
        .await?;
    }
    let new_len = if keep > 0 { start + keep as u64 } else { stored };
    c.exec(
        "UPDATE jobs SET output_bytes = $1, output_truncated = CASE WHEN $2 = 1 THEN 1 ELSE output_truncated END \
         WHERE id = $3 AND attempt = $4",
        &[
            B::I(i64::try_from(new_len).unwrap_or(i64::MAX)),
            B::I(i64::from(cut)),
            B::T(&r.job_id),
            B::I(attempt),
        ],
    )
    .await?;
    Ok(())
}

/// A run the agent started itself (a scheduled backup or verification):
/// recorded once as a finished job of source `local`.
#[allow(clippy::too_many_arguments)]
async fn record_local_run(
    c: &mut Conn<'_>,
    host_id: &str,
    r: &JobReport,
    outcome: &str,
    reason: &str,
    result: Option<&str>,
    finished_at_ms: i64,
    action: &str,
    params: &BTreeMap<String, String>,
    started_at_ms: i64,
    now_ms: i64,
    audit: &mut Vec<AuditEntry>,
    applied: &mut Applied,
) -> Result<(), StoreError> {
    if r.attempt_id.is_empty() || action.is_empty() {
        return Ok(());
    }
    let (state, _) = state_of_outcome(outcome, reason);
    let finished = if finished_at_ms > 0 { finished_at_ms } else { now_ms };
    let started = if started_at_ms > 0 { started_at_ms } else { finished };
    let params_text = params_json(params);
    let n = c
        .exec(
            "INSERT INTO jobs (id, action, params, host_id, state, attempt, max_attempts, attempt_id, timeout_secs, \
                 next_run_ms, created_ms, updated_ms, dispatched_ms, started_ms, finished_ms, outcome, reason, result, \
                 source, created_by)
             VALUES ($1, $2, $3, $4, $5, 1, 1, $1, 0, $6, $6, $7, $6, $6, $8, $9, $10, $11, 'local', $12)
             ON CONFLICT (id) DO NOTHING",
            &[
                B::T(&r.attempt_id),
                B::T(action),
                B::T(&params_text),
                B::T(host_id),
                B::T(state.as_str()),
                B::I(started),
                B::I(now_ms),
                B::I(finished),
                B::T(outcome),
                B::OT(Some(reason).filter(|s| !s.is_empty())),
                B::OT(result),
                B::T(&actor::host(host_id)),
            ],
        )
        .await?;
    if n == 1 {
        applied.finished.push((state, action.to_string()));
        applied.ended(host_id, action, outcome, finished);
        audit.push(
            by_host(host_id, "jobs.local_run", &r.attempt_id)
                .details(serde_json::json!({ "action": action, "outcome": outcome, "reason": reason })),
        );
        update_backup_status(
            c,
            host_id,
            &r.attempt_id,
            action,
            params,
            outcome,
            reason,
            result,
            finished,
        )
        .await?;
    }
    Ok(())
}

/// Updates `backup_status` from a finished `backup.run` / `backup.verify`.
#[allow(clippy::too_many_arguments)]
async fn update_backup_status(
    c: &mut Conn<'_>,
    host_id: &str,
    job_id: &str,
    action: &str,
    params: &BTreeMap<String, String>,
    outcome: &str,
    reason: &str,
    result: Option<&str>,
    finished_ms: i64,
) -> Result<(), StoreError> {
    if action != "backup.run" && action != "backup.verify" {
        return Ok(());
    }
    let json: serde_json::Value = result.and_then(|r| serde_json::from_str(r).ok()).unwrap_or_default();
    let name = json
        .get("backup")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .or_else(|| params.get("name").cloned());
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return Ok(());
    };
    let snapshot = json.get("snapshot").and_then(|v| v.as_str());
    let rpo = json.get("rpo_secs").and_then(|v| v.as_i64());
    let reason = Some(reason).filter(|r| !r.is_empty());
    c.exec(
        "INSERT INTO backup_status (host_id, name) VALUES ($1, $2) ON CONFLICT (host_id, name) DO NOTHING",
        &[B::T(host_id), B::T(&name)],
    )
    .await?;
    if rpo.is_some() {
        c.exec(
            "UPDATE backup_status SET rpo_secs = $1 WHERE host_id = $2 AND name = $3",
            &[B::OI(rpo), B::T(host_id), B::T(&name)],
        )
        .await?;
    }
    let ok = outcome == "succeeded";
    if action == "backup.run" {
        c.exec(
            "UPDATE backup_status SET last_run_ms = $1, last_run_outcome = $2, last_run_reason = $3 \
             WHERE host_id = $4 AND name = $5 AND (last_run_ms IS NULL OR last_run_ms <= $1)",
            &[
                B::I(finished_ms),
                B::T(outcome),
                B::OT(reason),
                B::T(host_id),
                B::T(&name),
            ],
        )
        .await?;
        if ok && let Some(snapshot) = snapshot {
            let files = json.get("files").and_then(|v| v.as_i64());
            let bytes = json.get("bytes").and_then(|v| v.as_i64());
            c.exec(
                "UPDATE backup_status SET last_snapshot = $1, last_snapshot_ms = $2, last_snapshot_job = $3, \
                     last_files = $4, last_bytes = $5 \
                 WHERE host_id = $6 AND name = $7 AND (last_snapshot_ms IS NULL OR last_snapshot_ms <= $2)",
                &[
                    B::T(snapshot),
                    B::I(finished_ms),
                    B::T(job_id),
                    B::OI(files),
                    B::OI(bytes),
                    B::T(host_id),
                    B::T(&name),
                ],
            )
            .await?;
        }
        // A backup verified right after writing counts as a verification too.
        if let Some(verified) = json.get("verified").and_then(|v| v.as_bool()) {
            verify_update(c, host_id, &name, finished_ms, verified, snapshot, reason).await?;
        }
    } else {
        let verified = ok && json.get("verified").and_then(|v| v.as_bool()).unwrap_or(true);
        verify_update(c, host_id, &name, finished_ms, verified, snapshot, reason).await?;
    }
    Ok(())
}

async fn verify_update(
    c: &mut Conn<'_>,
    host_id: &str,
    name: &str,
    at_ms: i64,
    ok: bool,
    snapshot: Option<&str>,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    c.exec(
        "UPDATE backup_status SET last_verify_ms = $1, last_verify_ok = $2, last_verify_snapshot = $3, \
             last_verify_reason = $4 \
         WHERE host_id = $5 AND name = $6 AND (last_verify_ms IS NULL OR last_verify_ms <= $1)",
        &[
            B::I(at_ms),
            B::I(i64::from(ok)),
            B::OT(snapshot),
            B::OT(reason),
            B::T(host_id),
            B::T(name),
        ],
    )
    .await?;
    Ok(())
}

mod visible;

#[cfg(test)]
mod tests;
