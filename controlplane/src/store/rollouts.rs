//! Rollouts in the store: creation with the resolved target set, reads,
//! the driver's lease, the driver's atomic steps (rollout row, host rows and
//! new jobs in one transaction, fenced on the lease and the row version) and
//! the operators' pause/resume/abort. Statements are written once for both
//! backends with the idioms of [`super::sql`]; every change appends its audit
//! entries in the same transaction.
//!
//! Invariants:
//! - A host's step job (and rollback job) is created in the same transaction
//!   that records its ID on the host row, fenced on the host's previous state:
//!   a host never gets a second step job.
//! - A driver's step commits only while its lease is valid and the rollout's
//!   version is the one it read; anything else changes nothing.
use std::collections::{BTreeMap, HashMap};

use super::jobs::{JRead, JTx, job_from};
use super::sql::{AnyRow, B};
use super::{Store, StoreError};
use crate::audit::{AuditEntry, Outcome, actor};
use crate::jobs::{Job, NewJob};
use crate::model::Page;
use crate::rollouts::{HostState, Rollout, RolloutHost, RolloutState, Strategy};

const ROLLOUT_COLUMNS: &str = "id, action, params, selector, strategy, state, stop_kind, stop_rollback, current_wave, \
     waves, total_hosts, wave_started_ms, wave_done_ms, wave_passed_ms, gate, gate_since_ms, last_progress_ms, \
     lease_owner, lease_expires_ms, actor, scope, reason, notes, version, created_ms, updated_ms, finished_ms";

const HOST_COLUMNS: &str =
    "host_id, position, wave, state, job_id, rollback_job_id, reason, dispatched_ms, finished_ms";

/// A new rollout, its target set already resolved and ordered.
#[derive(Debug, Clone)]
pub struct NewRollout {
    pub id: String,
    pub action: String,
    pub params: BTreeMap<String, String>,
    pub selector: String,
    pub strategy: Strategy,
    /// Host IDs in dispatch order.
    pub hosts: Vec<String>,
    pub actor: String,
    pub scope: String,
}

/// What the driver changes in one step (see [`Store::apply_rollout_step`]).
#[derive(Debug, Clone, Default)]
pub struct RolloutStep {
    /// The rollout row as it should be (its `version` is the one read).
    pub rollout: Option<Rollout>,
    /// Host rows as they should be, each with the state it had when read.
    pub hosts: Vec<(HostState, RolloutHost)>,
    /// Jobs to create (their IDs are on the host rows above).
    pub jobs: Vec<NewJob>,
    pub audit: Vec<AuditEntry>,
}

impl RolloutStep {
    pub fn is_empty(&self) -> bool {
        self.rollout.is_none() && self.hosts.is_empty() && self.jobs.is_empty()
    }
}

/// Answer of [`Store::control_rollout`].
#[derive(Debug, Clone, PartialEq)]
pub enum ControlResult {
    NotFound,
    Done(Rollout),
    /// Not possible in the rollout's state (e.g. resume of a running one).
    Refused(Rollout, String),
}

/// What an operator asks of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Pause,
    Resume,
    Abort { rollback: bool },
}

fn params_from(json: &str) -> BTreeMap<String, String> {
    serde_json::from_str(json).unwrap_or_default()
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn w(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

fn rollout_from(row: &AnyRow) -> Result<Rollout, StoreError> {
    let state = row.text("state")?;
    let strategy: Strategy = serde_json::from_str(&row.text("strategy")?)
        .map_err(|e| StoreError::Invalid(format!("stored rollout strategy: {e}")))?;
    Ok(Rollout {
        id: row.text("id")?,
        action: row.text("action")?,
        params: params_from(&row.text("params")?),
        selector: row.text("selector")?,
        strategy,
        state: RolloutState::parse(&state)
            .ok_or_else(|| StoreError::Invalid(format!("unknown rollout state {state:?}")))?,
        stop_kind: row.opt_text("stop_kind")?,
        stop_rollback: row.int("stop_rollback")? != 0,
        current_wave: w(row.int("current_wave")?),
        waves: w(row.int("waves")?),
        total_hosts: u(row.int("total_hosts")?),
        wave_started_ms: row.opt_int("wave_started_ms")?,
        wave_done_ms: row.opt_int("wave_done_ms")?,
        wave_passed_ms: row.opt_int("wave_passed_ms")?,
        gate: row.opt_text("gate")?,
        gate_since_ms: row.opt_int("gate_since_ms")?,
        last_progress_ms: row.int("last_progress_ms")?,
        lease_owner: row.opt_text("lease_owner")?,
        lease_expires_ms: row.opt_int("lease_expires_ms")?,
        actor: row.text("actor")?,
        scope: row.text("scope")?,
        reason: row.opt_text("reason")?,
        notes: serde_json::from_str(&row.text("notes")?).unwrap_or_default(),
        version: row.int("version")?,
        created_ms: row.int("created_ms")?,
        updated_ms: row.int("updated_ms")?,
        finished_ms: row.opt_int("finished_ms")?,
    })
}

fn host_from(row: &AnyRow) -> Result<RolloutHost, StoreError> {
    let state = row.text("state")?;
    Ok(RolloutHost {
        host_id: row.text("host_id")?,
        position: u(row.int("position")?),
        wave: w(row.int("wave")?),
        state: HostState::parse(&state).ok_or_else(|| StoreError::Invalid(format!("unknown host state {state:?}")))?,
        job_id: row.opt_text("job_id")?,
        rollback_job_id: row.opt_text("rollback_job_id")?,
        reason: row.opt_text("reason")?,
        dispatched_ms: row.opt_int("dispatched_ms")?,
        finished_ms: row.opt_int("finished_ms")?,
    })
}

fn sel(where_: &str) -> String {
    format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts {where_}")
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    /// Creates a rollout and its target set (audited with `audit`) in one transaction.
    pub async fn create_rollout(&self, r: &NewRollout, audit: AuditEntry, now_ms: i64) -> Result<Rollout, StoreError> {
        let waves = r.strategy.waves_of(r.hosts.len() as u64);
        let wave_count = waves.last().map(|w| w + 1).unwrap_or(0);
        let strategy = serde_json::to_string(&r.strategy).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let params = serde_json::to_string(&r.params).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let mut tx = JTx::begin(self).await?;
        tx.conn()
            .exec(
                "INSERT INTO rollouts (id, action, params, selector, strategy, state, current_wave, waves, \
                     total_hosts, last_progress_ms, actor, scope, created_ms, updated_ms)
                 VALUES ($1, $2, $3, $4, $5, 'running', 0, $6, $7, $8, $9, $10, $8, $8)",
                &[
                    B::T(&r.id),
                    B::T(&r.action),
                    B::T(&params),
                    B::T(&r.selector),
                    B::T(&strategy),
                    B::I(i64::from(wave_count)),
                    B::I(i(r.hosts.len() as u64)),
                    B::I(now_ms),
                    B::T(&r.actor),
                    B::T(&r.scope),
                ],
            )
            .await?;
        for (pos, (host, wave)) in r.hosts.iter().zip(&waves).enumerate() {
            tx.conn()
                .exec(
                    "INSERT INTO rollout_hosts (rollout_id, host_id, position, wave, state)
                     VALUES ($1, $2, $3, $4, 'pending')",
                    &[B::T(&r.id), B::T(host), B::I(i(pos as u64)), B::I(i64::from(*wave))],
                )
                .await?;
        }
        let row = tx
            .conn()
            .fetch_one(&sel("WHERE id = $1"), &[B::T(&r.id)])
            .await?
            .ok_or_else(|| StoreError::Invalid("the rollout vanished while being created".into()))?;
        let rollout = rollout_from(&row)?;
        tx.commit(&[audit.target(format!("rollout:{}", r.id))], now_ms).await?;
        Ok(rollout)
    }

    pub async fn get_rollout(&self, id: &str) -> Result<Option<Rollout>, StoreError> {
        let mut c = JRead::acquire(self).await?;
        let row = c.conn().fetch_one(&sel("WHERE id = $1"), &[B::T(id)]).await?;
        row.as_ref().map(rollout_from).transpose()
    }

    /// The rollout's hosts in dispatch order.
    pub async fn rollout_hosts(&self, id: &str) -> Result<Vec<RolloutHost>, StoreError> {
        let mut c = JRead::acquire(self).await?;
        let rows = c
            .conn()
            .fetch(
                &format!("SELECT {HOST_COLUMNS} FROM rollout_hosts WHERE rollout_id = $1 ORDER BY position"),
                &[B::T(id)],
            )
            .await?;
        rows.iter().map(host_from).collect()
    }

    /// The jobs of a rollout (step and rollback jobs), by ID.
    pub async fn rollout_jobs(&self, id: &str) -> Result<HashMap<String, Job>, StoreError> {
        let mut c = JRead::acquire(self).await?;
        let rows = c
            .conn()
            .fetch(
                &format!("SELECT {} FROM jobs WHERE rollout_id = $1", super::jobs::JOB_COLUMNS),
                &[B::T(id)],
            )
            .await?;
        let mut out = HashMap::new();
        for r in &rows {
            let j = job_from(r)?;
            out.insert(j.id.clone(), j);
        }
        Ok(out)
    }

    /// Rollouts, newest first, older than the ID `before`; `state` filters.
    pub async fn list_rollouts(
        &self,
        state: Option<RolloutState>,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Page<Rollout>, StoreError> {
        let limit = limit.max(1);
        let mut c = JRead::acquire(self).await?;
        let rows = c
            .conn()
            .fetch(
                &sel("WHERE ($1 = '' OR id < $1) AND ($2 = '' OR state = $2) ORDER BY id DESC LIMIT $3"),
                &[
                    B::T(before.unwrap_or("")),
                    B::T(state.map(RolloutState::as_str).unwrap_or("")),
                    B::I(i(limit as u64 + 1)),
                ],
            )
            .await?;
        let mut items: Vec<Rollout> = rows.iter().map(rollout_from).collect::<Result<_, _>>()?;
        let has_more = items.len() > limit;
        items.truncate(limit);
        Ok(Page { items, has_more })
    }

    /// IDs of rollouts that are not finished.
    pub async fn active_rollouts(&self) -> Result<Vec<String>, StoreError> {
        let mut c = JRead::acquire(self).await?;
        let rows = c
            .conn()
            .fetch(
                "SELECT id FROM rollouts WHERE state IN ('running', 'paused', 'stopping', 'rolling_back') ORDER BY id",
                &[],
            )
            .await?;
        rows.iter().map(|r| r.text("id").map_err(StoreError::from)).collect()
    }

    /// The latest check results of `hosts`: host → (check, status, observed_ms).
    pub async fn latest_checks_of(
        &self,
        hosts: &[String],
    ) -> Result<HashMap<String, Vec<(String, String, i64)>>, StoreError> {
        let mut out: HashMap<String, Vec<(String, String, i64)>> = HashMap::new();
        if hosts.is_empty() {
            return Ok(out);
        }
        let mut c = JRead::acquire(self).await?;
        for chunk in hosts.chunks(500) {
            let rows = c
                .conn()
                .fetch(
                    "SELECT host_id, name, status, observed_ms FROM check_latest WHERE host_id IN_LIST($1)",
                    &[B::List(chunk)],
                )
                .await?;
            for r in rows {
                out.entry(r.text("host_id")?).or_default().push((
                    r.text("name")?,
                    r.text("status")?,
                    r.int("observed_ms")?,
                ));
            }
        }
        Ok(out)
    }

    /// Takes or renews the driving lease of an unfinished rollout for
    /// `owner` until `now_ms + lease_ms`: free, already ours, or expired.
    /// Taking over from another owner is audited.
    pub async fn acquire_rollout_lease(
        &self,
        id: &str,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = JTx::begin(self).await?;
        let Some(row) = tx
            .conn()
            .fetch_one(
                "SELECT lease_owner, lease_expires_ms FROM rollouts WHERE id = $1 \
                 AND state IN ('running', 'paused', 'stopping', 'rolling_back')",
                &[B::T(id)],
            )
            .await?
        else {
            return Ok(false);
        };
        let previous = row.opt_text("lease_owner")?;
        let n = tx
            .conn()
            .exec(
                "UPDATE rollouts SET lease_owner = $1, lease_expires_ms = $2 WHERE id = $3 \
                 AND state IN ('running', 'paused', 'stopping', 'rolling_back') \
                 AND (lease_owner IS NULL OR lease_owner = $1 OR lease_expires_ms < $4)",
                &[
                    B::T(owner),
                    B::I(now_ms.saturating_add(lease_ms)),
                    B::T(id),
                    B::I(now_ms),
                ],
            )
            .await?;
        if n != 1 {
            return Ok(false);
        }
        let audit = match previous.as_deref() {
            Some(p) if p == owner => Vec::new(),
            _ => vec![
                AuditEntry::new(actor::SYSTEM, "rollouts.lease", Outcome::Success)
                    .target(format!("rollout:{id}"))
                    .details(serde_json::json!({ "owner": owner, "previous": previous })),
            ],
        };
        tx.commit(&audit, now_ms).await?;
        Ok(true)
    }

    /// Gives the lease up (at shutdown), so another control plane takes over at once.
    pub async fn release_rollout_lease(&self, id: &str, owner: &str, now_ms: i64) -> Result<(), StoreError> {
        let mut tx = JTx::begin(self).await?;
        tx.conn()
            .exec(
                "UPDATE rollouts SET lease_owner = NULL, lease_expires_ms = NULL WHERE id = $1 AND lease_owner = $2",
                &[B::T(id), B::T(owner)],
            )
            .await?;
        tx.commit(&[], now_ms).await
    }

    /// Applies one driver step atomically: fenced on `owner`'s valid lease and
    /// the version read; host rows fenced on the state they had. Returns
    /// false (nothing changed) when a fence did not hold.
    pub async fn apply_rollout_step(
        &self,
        id: &str,
        version: i64,
        owner: &str,
        step: &RolloutStep,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        if step.is_empty() {
            return Ok(true);
        }
        let mut tx = JTx::begin(self).await?;
        let n = match &step.rollout {
            Some(r) => {
                let notes = serde_json::to_string(&r.notes).unwrap_or_else(|_| "[]".into());
                tx.conn()
                    .exec(
                        "UPDATE rollouts SET state = $1, stop_kind = $2, stop_rollback = $3, current_wave = $4, \
                             wave_started_ms = $5, wave_done_ms = $6, wave_passed_ms = $7, gate = $8, \
                             gate_since_ms = $9, last_progress_ms = $10, reason = $11, notes = $12, \
                             finished_ms = $13, updated_ms = $14, version = version + 1 \
                         WHERE id = $15 AND version = $16 AND lease_owner = $17 AND lease_expires_ms >= $14",
                        &[
                            B::T(r.state.as_str()),
                            B::OT(r.stop_kind.as_deref()),
                            B::I(i64::from(r.stop_rollback)),
                            B::I(i64::from(r.current_wave)),
                            B::OI(r.wave_started_ms),
                            B::OI(r.wave_done_ms),
                            B::OI(r.wave_passed_ms),
                            B::OT(r.gate.as_deref()),
                            B::OI(r.gate_since_ms),
                            B::I(r.last_progress_ms),
                            B::OT(r.reason.as_deref()),
                            B::T(&notes),
                            B::OI(r.finished_ms),
                            B::I(now_ms),
                            B::T(id),
                            B::I(version),
                            B::T(owner),
                        ],
                    )
                    .await?
            }
            None => {
                tx.conn()
                    .exec(
                        "UPDATE rollouts SET version = version + 1, updated_ms = $1 \
                         WHERE id = $2 AND version = $3 AND lease_owner = $4 AND lease_expires_ms >= $1",
                        &[B::I(now_ms), B::T(id), B::I(version), B::T(owner)],
                    )
                    .await?
            }
        };
        if n != 1 {
            return Ok(false);
        }
        for j in &step.jobs {
            let params = serde_json::to_string(&j.params).unwrap_or_else(|_| "{}".into());
            // The same statement as `enqueue_jobs`, inside this transaction.
            tx.conn()
                .exec(
                    "INSERT INTO jobs (id, action, params, host_id, state, attempt, max_attempts, timeout_secs, \
                         next_run_ms, created_ms, updated_ms, idempotency_key, rollout_id, source, created_by)
                     VALUES ($1, $2, $3, $4, 'queued', 0, $5, $6, $7, $7, $7, NULL, $8, 'api', $9)",
                    &[
                        B::T(&j.id),
                        B::T(&j.action),
                        B::T(&params),
                        B::T(&j.host_id),
                        B::I(i64::from(j.max_attempts)),
                        B::I(i(j.timeout_secs)),
                        B::I(now_ms),
                        B::OT(j.rollout_id.as_deref()),
                        B::T(&j.created_by),
                    ],
                )
                .await?;
        }
        for (from, h) in &step.hosts {
            let n = tx
                .conn()
                .exec(
                    "UPDATE rollout_hosts SET state = $1, job_id = $2, rollback_job_id = $3, reason = $4, \
                         dispatched_ms = $5, finished_ms = $6 \
                     WHERE rollout_id = $7 AND host_id = $8 AND state = $9",
                    &[
                        B::T(h.state.as_str()),
                        B::OT(h.job_id.as_deref()),
                        B::OT(h.rollback_job_id.as_deref()),
                        B::OT(h.reason.as_deref()),
                        B::OI(h.dispatched_ms),
                        B::OI(h.finished_ms),
                        B::T(id),
                        B::T(&h.host_id),
                        B::T(from.as_str()),
                    ],
                )
                .await?;
            if n != 1 {
                // Dropped: rolls back, jobs included.
                return Ok(false);
            }
        }
        tx.commit(&step.audit, now_ms).await?;
        Ok(true)
    }

    /// Pause, resume or abort, by an operator (audited with `audit`).
    pub async fn control_rollout(
        &self,
        id: &str,
        control: Control,
        audit: AuditEntry,
        now_ms: i64,
    ) -> Result<ControlResult, StoreError> {
        let mut tx = JTx::begin(self).await?;
        let Some(row) = tx.conn().fetch_one(&sel("WHERE id = $1"), &[B::T(id)]).await? else {
            return Ok(ControlResult::NotFound);
        };
        let r = rollout_from(&row)?;
        use RolloutState as S;
        let (sql, binds_rollback, reason): (&str, bool, String) = match (control, r.state) {
            (Control::Pause, S::Running) => (
                "UPDATE rollouts SET state = 'paused', gate = 'paused', gate_since_ms = $1, updated_ms = $1, \
                 version = version + 1 WHERE id = $2 AND version = $3",
                false,
                "paused by an operator".into(),
            ),
            (Control::Resume, S::Paused) => (
                "UPDATE rollouts SET state = 'running', gate = NULL, gate_since_ms = $1, updated_ms = $1, \
                 last_progress_ms = $1, wave_started_ms = CASE WHEN wave_started_ms IS NULL THEN NULL ELSE $1 END, \
                 version = version + 1 WHERE id = $2 AND version = $3",
                false,
                "resumed by an operator".into(),
            ),
            (Control::Abort { rollback }, S::Running | S::Paused) => (
                "UPDATE rollouts SET state = 'stopping', stop_kind = 'abort', stop_rollback = $4, \
                 reason = 'aborted by an operator', gate = 'running jobs to finish', gate_since_ms = $1, \
                 updated_ms = $1, version = version + 1 WHERE id = $2 AND version = $3",
                rollback,
                "aborted by an operator".into(),
            ),
            (Control::Abort { rollback: false }, S::Stopping | S::RollingBack) if r.stop_kind.is_some() => (
                // Abort without rollback while stopping or rolling back: stop undoing.
                "UPDATE rollouts SET state = 'stopping', stop_kind = 'abort', stop_rollback = $4, \
                 reason = 'aborted by an operator', updated_ms = $1, version = version + 1 \
                 WHERE id = $2 AND version = $3",
                false,
                "aborted by an operator (no further rollback)".into(),
            ),
            (c, s) => {
                let what = match c {
                    Control::Pause => "pause",
                    Control::Resume => "resume",
                    Control::Abort { .. } => "abort",
                };
                return Ok(ControlResult::Refused(
                    r,
                    format!("cannot {what} a rollout that is {}", s.as_str()),
                ));
            }
        };
        let mut binds = vec![B::I(now_ms), B::T(id), B::I(r.version)];
        if sql.contains("$4") {
            binds.push(B::I(i64::from(binds_rollback)));
        }
        if tx.conn().exec(sql, &binds).await? != 1 {
            return Err(StoreError::Invalid("the rollout changed meanwhile: try again".into()));
        }
        let row = tx
            .conn()
            .fetch_one(&sel("WHERE id = $1"), &[B::T(id)])
            .await?
            .ok_or_else(|| StoreError::Invalid("the rollout vanished".into()))?;
        let after = rollout_from(&row)?;
        let entry = audit.target(format!("rollout:{id}")).details(serde_json::json!({
            "from": r.state.as_str(), "to": after.state.as_str(), "reason": reason,
            "rollback": after.stop_rollback,
        }));
        tx.commit(std::slice::from_ref(&entry), now_ms).await?;
        Ok(ControlResult::Done(after))
    }
}

#[cfg(test)]
#[path = "rollouts_tests.rs"]
mod tests;
