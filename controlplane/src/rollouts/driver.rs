//! The rollout driver: one task per control-plane process. Every [`TICK`] it
//! lists unfinished rollouts, takes or renews each one's lease (so with
//! several control planes on one database exactly one drives a rollout, and
//! another takes over when the holder's lease lapses), reads the rollout,
//! its hosts, their jobs and latest checks, and applies one step computed
//! by [`plan`] from that state alone. A step commits only under a valid
//! lease and the rollout version it read.
//!
//! Per wave, the creator's authority is read again (its token must still be
//! active and its role grant `rollouts:write` and `jobs:create`; else the
//! rollout pauses, with the reason; an unreadable scope pauses it too, fail
//! closed). Then: dispatch the wave's pending hosts (each checked against the
//! creator's scope and authority, and still existing), wait for their jobs, then the gates:
//! error budget (failures counted across waves), health (no critical check,
//! or the named checks ok after the step) held for `min_healthy`, and the
//! SLO gate; then `pause`, then the next wave. Budget, a deadline or a
//! failed health gate stops the rollout: nothing new is dispatched, running
//! jobs finish, then changed hosts are rolled back newest first (when a
//! rollback is configured and `auto_rollback` is on).
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use steward_shared::selector::Selector;
use tokio_util::sync::CancellationToken;

use super::{HostState, Rollout, RolloutHost, RolloutState, SloGate, SloVerdict};
use crate::audit::{AuditEntry, Outcome, actor};
use crate::jobs::dispatcher::JobsHandle;
use crate::jobs::{Job, JobState, NewJob, new_job_id};
use crate::rbac::{Authority, Labels, RoleDef};
use crate::store::rollouts::RolloutStep;
use crate::store::{Store, StoreError};

/// How often the driver looks at its rollouts.
pub const TICK: Duration = Duration::from_millis(500);
/// How long a lease lasts without renewal.
pub const LEASE_MS: i64 = 10_000;

/// What [`plan`] needs, read from the database.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub rollout: Rollout,
    pub hosts: Vec<RolloutHost>,
    pub jobs: HashMap<String, Job>,
    /// Labels of the rollout's hosts that still exist.
    pub labels: HashMap<String, Labels>,
    /// Latest checks per host: (name, status, observed_ms).
    pub checks: HashMap<String, Vec<(String, String, i64)>>,
    pub slo: Option<SloVerdict>,
    /// What the rollout's creator may do now, read before a dispatch
    /// (`Err`: why it may do nothing; `None`: not read this step).
    pub creator: Option<Result<Authority, String>>,
}

/// The permissions a rollout's creator must hold on a host for the
/// driver to run a step (or a rollback) there.
pub const DISPATCH_PERMISSIONS: [&str; 2] = ["rollouts:write", "jobs:create"];

/// One driver (one per process; tests make several to play several processes).
#[derive(Debug, Clone)]
pub struct Driver {
    pub store: Store,
    pub owner: String,
    pub slo: Arc<dyn SloGate>,
    pub jobs: Option<JobsHandle>,
    /// `[[rbac.roles]]` of the config file (to resolve a creator's role).
    pub roles: Arc<std::collections::BTreeMap<String, RoleDef>>,
}

impl Driver {
    pub fn new(store: Store, owner: impl Into<String>, slo: Arc<dyn SloGate>) -> Self {
        Driver {
            store,
            owner: owner.into(),
            slo,
            jobs: None,
            roles: Arc::default(),
        }
    }

    /// What the creator of `r` (`token:ID`) may do at `now_ms`: its token's
    /// role narrowed by its scope, or why it may do nothing (revoked,
    /// expired, unknown, an unknown role, an unreadable scope).
    pub async fn creator_authority(&self, r: &Rollout, now_ms: i64) -> Result<Result<Authority, String>, StoreError> {
        let Some(id) = r.actor.strip_prefix("token:") else {
            return Ok(Err(format!("its creator {:?} is not an API token", r.actor)));
        };
        let Some(token) = self.store.find_api_token(id).await? else {
            return Ok(Err(format!("its creator's token {id} no longer exists")));
        };
        if token.revoked_ms.is_some() {
            return Ok(Err(format!("its creator's token {id} was revoked")));
        }
        if !token.is_active(now_ms) {
            return Ok(Err(format!("its creator's token {id} expired")));
        }
        let Ok(scope) = Selector::parse(&token.scope) else {
            return Ok(Err(format!("its creator's token {id} has an unreadable scope")));
        };
        let Some(role) = crate::api::rbac::find_role_in(&self.store, &self.roles, &token.role).await? else {
            return Ok(Err(format!("its creator's role {:?} no longer exists", token.role)));
        };
        let authority = Authority::new(role.rules, scope);
        if let Some(p) = DISPATCH_PERMISSIONS.iter().find(|p| !authority.allows(p, None)) {
            return Ok(Err(format!("its creator's role {:?} no longer grants {p}", token.role)));
        }
        Ok(Ok(authority))
    }

    /// One round over every unfinished rollout at `now_ms`. Returns how many
    /// rollouts this driver holds the lease of.
    pub async fn tick(&self, now_ms: i64) -> Result<usize, StoreError> {
        let mut held = 0;
        for id in self.store.active_rollouts().await? {
            if !self
                .store
                .acquire_rollout_lease(&id, &self.owner, now_ms, LEASE_MS)
                .await?
            {
                continue;
            }
            held += 1;
            // A few steps at once: e.g. jobs ended → wave passed → next wave dispatched.
            for _ in 0..4 {
                if !self.step(&id, now_ms).await? {
                    break;
                }
            }
        }
        Ok(held)
    }

    /// Reads the rollout and applies one planned step; true when something changed.
    pub async fn step(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let Some(rollout) = self.store.get_rollout(id).await? else {
            return Ok(false);
        };
        if rollout.state.is_terminal() {
            return Ok(false);
        }
        let hosts = self.store.rollout_hosts(id).await?;
        let jobs = self.store.rollout_jobs(id).await?;
        let ids: Vec<String> = hosts.iter().map(|h| h.host_id.clone()).collect();
        let wave: Vec<String> = hosts
            .iter()
            .filter(|h| h.wave == rollout.current_wave && h.state == HostState::Succeeded)
            .map(|h| h.host_id.clone())
            .collect();
        let labels = self.store.host_labels(&ids).await?;
        let checks = self.store.latest_checks_of(&wave).await?;
        let slo = if rollout.state == RolloutState::Running && !rollout.strategy.slo.is_empty() {
            Some(self.slo.evaluate(&rollout.strategy.slo, now_ms).await)
        } else {
            None
        };
        let version = rollout.version;
        let dispatching = (rollout.state == RolloutState::Running && rollout.wave_started_ms.is_none())
            || rollout.state == RolloutState::RollingBack;
        let creator = if dispatching {
            Some(self.creator_authority(&rollout, now_ms).await?)
        } else {
            None
        };
        let snap = Snapshot {
            rollout,
            hosts,
            jobs,
            labels,
            checks,
            slo,
            creator,
        };
        let step = plan(&snap, now_ms);
        if step.is_empty() {
            return Ok(false);
        }
        let dispatched = !step.jobs.is_empty();
        let applied = self
            .store
            .apply_rollout_step(id, version, &self.owner, &step, now_ms)
            .await?;
        if applied
            && dispatched
            && let Some(j) = &self.jobs
        {
            j.kick();
        }
        Ok(applied)
    }
}

/// Starts the driver task of this process.
pub fn start(
    store: Store,
    jobs: JobsHandle,
    roles: Arc<std::collections::BTreeMap<String, RoleDef>>,
    slo: Arc<dyn SloGate>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let mut driver = Driver::new(store, format!("rollouts:{}", jobs.owner), slo);
    driver.jobs = Some(jobs);
    driver.roles = roles;
    tokio::spawn(async move {
        loop {
            if let Err(error) = driver.tick(steward_shared::now_ms()).await {
                tracing::warn!(%error, "rollout driver round failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(TICK) => {}
            }
        }
        // Hand the leases over at once instead of letting them lapse.
        if let Ok(ids) = driver.store.active_rollouts().await {
            for id in ids {
                let _ = driver
                    .store
                    .release_rollout_lease(&id, &driver.owner, steward_shared::now_ms())
                    .await;
            }
        }
    })
}

fn system(r: &Rollout, action: &str) -> AuditEntry {
    AuditEntry::new(actor::SYSTEM, action, Outcome::Success).target(format!("rollout:{}", r.id))
}

/// Whether a host's latest checks pass the health gate after its step
/// finished at `since_ms`: `Ok(true)` healthy, `Ok(false)` not yet known,
/// `Err(why)` unhealthy. With no names, no check may be critical; with
/// names, exactly those checks must be ok (others are not the gate's).
fn health_of(names: &[String], checks: &[(String, String, i64)], since_ms: i64) -> Result<bool, String> {
    if names.is_empty() {
        if let Some((n, _, _)) = checks.iter().find(|(_, s, _)| s == "critical") {
            return Err(format!("check {n} is critical"));
        }
        return Ok(true);
    }
    for name in names {
        match checks.iter().find(|(n, _, _)| n == name) {
            Some((_, s, at)) if *at >= since_ms => {
                if s != "ok" {
                    return Err(format!("check {name} is {s}"));
                }
            }
            _ => return Ok(false),
        }
    }
    Ok(true)
}

/// A job of rollout `r` on `host`: one attempt, the wave deadline as its
/// timeout, created on behalf of the rollout's creator.
fn rollout_job(
    r: &Rollout,
    host: &str,
    action: &str,
    params: &std::collections::BTreeMap<String, String>,
    now_ms: i64,
) -> NewJob {
    NewJob {
        id: new_job_id(now_ms),
        action: action.to_string(),
        params: params.clone(),
        host_id: host.to_string(),
        max_attempts: 1,
        timeout_secs: r.strategy.wave_deadline_ms.div_ceil(1000).max(1),
        idempotency_key: None,
        rollout_id: Some(r.id.clone()),
        created_by: r.actor.clone(),
    }
}

/// The next step of a rollout, from its state alone (deterministic in
/// `snap` and `now_ms`; no I/O).
pub fn plan(snap: &Snapshot, now_ms: i64) -> RolloutStep {
    let before = snap.rollout.clone();
    let mut r = snap.rollout.clone();
    let mut hosts = snap.hosts.clone();
    let mut changed: Vec<usize> = Vec::new();
    let mut audit = Vec::new();
    let mut jobs_out = Vec::new();

    // 1. Jobs that ended move their hosts on.
    let mut synced = Vec::new();
    for (idx, h) in hosts.iter_mut().enumerate() {
        let (job_id, ok_state, bad_state) = match h.state {
            HostState::Dispatched => (&h.job_id, HostState::Succeeded, HostState::Failed),
            HostState::RollingBack => (&h.rollback_job_id, HostState::RolledBack, HostState::RollbackFailed),
            _ => continue,
        };
        let Some(job) = job_id.as_ref().and_then(|id| snap.jobs.get(id)) else {
            continue;
        };
        if !job.state.is_terminal() {
            continue;
        }
        h.state = if job.state == JobState::Succeeded {
            ok_state
        } else {
            bad_state
        };
        h.reason = (job.state != JobState::Succeeded).then(|| {
            let why = job.reason.clone().unwrap_or_default();
            format!(
                "job {} {}{}",
                job.id,
                job.state.as_str(),
                if why.is_empty() {
                    String::new()
                } else {
                    format!(": {why}")
                }
            )
        });
        h.finished_ms = Some(job.finished_ms.unwrap_or(now_ms));
        r.last_progress_ms = now_ms;
        synced.push(serde_json::json!({ "host": h.host_id, "state": h.state.as_str(), "job": job.id }));
        changed.push(idx);
    }
    if !synced.is_empty() {
        audit.push(system(&r, "rollouts.hosts").details(serde_json::json!({ "hosts": synced })));
    }

    let total = r.total_hosts;
    let failures = hosts.iter().filter(|h| h.state == HostState::Failed).count() as u64;
    let budget = r.strategy.budget(total);
    let in_flight = hosts
        .iter()
        .filter(|h| matches!(h.state, HostState::Dispatched | HostState::RollingBack))
        .count();
    // The wait starts when the gate (the text before its first ": ", e.g.
    // `slo web`) changes, not when its detail (the burn figures) does.
    let set_gate = |r: &mut Rollout, gate: &str| {
        let kind = |g: &str| g.split(": ").next().unwrap_or(g).to_string();
        if r.gate.as_deref().map(kind) != Some(kind(gate)) {
            r.gate_since_ms = Some(now_ms);
        }
        if r.gate.as_deref() != Some(gate) {
            r.gate = Some(gate.to_string());
        }
    };
    let stop = |r: &mut Rollout, reason: String| {
        r.state = RolloutState::Stopping;
        r.stop_kind = Some("failure".into());
        r.stop_rollback = r.strategy.auto_rollback && r.strategy.rollback.is_some();
        r.reason = Some(reason);
    };

    match r.state {
        RolloutState::Running | RolloutState::Paused => {
            let wave_started = r.wave_started_ms;
            let progress_late = now_ms.saturating_sub(r.last_progress_ms) > ms(r.strategy.progress_deadline_ms)
                && r.state == RolloutState::Running
                && wave_started.is_some();
            let wave_late = r.state == RolloutState::Running
                && wave_started.is_some_and(|t| now_ms.saturating_sub(t) > ms(r.strategy.wave_deadline_ms));
            if failures > budget {
                stop(
                    &mut r,
                    format!("error budget exceeded: {failures} failed host(s), budget {budget}"),
                );
            } else if wave_late {
                let why = format!(
                    "wave {} missed its deadline ({}s) waiting on {}",
                    r.current_wave,
                    r.strategy.wave_deadline_ms / 1000,
                    r.gate.clone().unwrap_or_else(|| "jobs".into())
                );
                stop(&mut r, why);
            } else if progress_late {
                let why = format!(
                    "no progress for {}s (progress deadline)",
                    r.strategy.progress_deadline_ms / 1000
                );
                stop(&mut r, why);
            } else if r.state == RolloutState::Paused {
                set_gate(&mut r, "paused");
            } else {
                let wave = r.current_wave;
                if r.wave_started_ms.is_none() {
                    let pause_until = r.wave_passed_ms.map(|t| t.saturating_add(ms(r.strategy.pause_ms)));
                    if wave > 0 && pause_until.is_some_and(|t| now_ms < t) {
                        set_gate(&mut r, "pause");
                    } else if let Err(why) = dispatch_authority(snap) {
                        // Fail closed: nothing is dispatched until an operator resumes it.
                        r.state = RolloutState::Paused;
                        r.reason = Some(format!("paused before wave {wave}: {why}"));
                        set_gate(&mut r, "paused");
                    } else {
                        // Dispatch the wave.
                        let (scope, authority) = dispatch_authority(snap).unwrap_or_default();
                        let mut sent = Vec::new();
                        for (idx, h) in hosts.iter_mut().enumerate() {
                            if h.wave != wave || h.state != HostState::Pending {
                                continue;
                            }
                            match snap.labels.get(&h.host_id) {
                                None => {
                                    h.state = HostState::Skipped;
                                    h.reason = Some("the host no longer exists".into());
                                }
                                Some(l) if !scope.matches(l) => {
                                    h.state = HostState::Skipped;
                                    h.reason = Some("outside the creator's scope at dispatch".into());
                                }
                                Some(l) if !DISPATCH_PERMISSIONS.iter().all(|p| authority.allows(p, Some(l))) => {
                                    h.state = HostState::Skipped;
                                    h.reason = Some(format!(
                                        "the creator no longer holds {} on this host at dispatch",
                                        DISPATCH_PERMISSIONS.join(" and ")
                                    ));
                                }
                                Some(_) => {
                                    let job = rollout_job(&r, &h.host_id, &r.action, &r.params, now_ms);
                                    let id = job.id.clone();
                                    jobs_out.push(job);
                                    h.state = HostState::Dispatched;
                                    h.job_id = Some(id.clone());
                                    h.dispatched_ms = Some(now_ms);
                                    sent.push(serde_json::json!({ "host": h.host_id, "job": id }));
                                }
                            }
                            changed.push(idx);
                        }
                        r.wave_started_ms = Some(now_ms);
                        r.wave_done_ms = None;
                        r.last_progress_ms = now_ms;
                        set_gate(&mut r, "jobs");
                        audit.push(system(&r, "rollouts.dispatch").details(serde_json::json!({
                            "wave": wave, "jobs": sent,
                        })));
                    }
                } else if hosts
                    .iter()
                    .any(|h| h.wave == wave && matches!(h.state, HostState::Dispatched | HostState::Pending))
                {
                    set_gate(&mut r, "jobs");
                } else {
                    // Every job of the wave ended within the budget: health, then SLO.
                    let done = *r.wave_done_ms.get_or_insert(now_ms);
                    let mut unhealthy = None;
                    let mut unknown = false;
                    for h in hosts
                        .iter()
                        .filter(|h| h.wave == wave && h.state == HostState::Succeeded)
                    {
                        let checks = snap.checks.get(&h.host_id).map(Vec::as_slice).unwrap_or(&[]);
                        match health_of(&r.strategy.health, checks, h.finished_ms.unwrap_or(done)) {
                            Err(why) => {
                                unhealthy = Some(format!("host {} is unhealthy: {why}", h.host_id));
                                break;
                            }
                            Ok(false) => unknown = true,
                            Ok(true) => {}
                        }
                    }
                    if let Some(why) = unhealthy {
                        stop(&mut r, format!("health gate of wave {wave}: {why}"));
                    } else if unknown {
                        set_gate(&mut r, "health");
                    } else if now_ms < done.saturating_add(ms(r.strategy.min_healthy_ms)) {
                        set_gate(&mut r, "min_healthy");
                    } else {
                        let slo_ok = match &snap.slo {
                            None | Some(SloVerdict::Holds) => true,
                            Some(SloVerdict::NotConfigured) => {
                                let note = "slo gate not evaluated: no SLO engine in this build (not configured)";
                                if !r.notes.iter().any(|n| n == note) {
                                    r.notes.push(note.to_string());
                                }
                                true
                            }
                            Some(SloVerdict::Burning { slo, detail }) => {
                                set_gate(&mut r, &format!("slo {slo}: {detail}"));
                                false
                            }
                        };
                        if slo_ok {
                            r.wave_passed_ms = Some(now_ms);
                            r.last_progress_ms = now_ms;
                            audit.push(system(&r, "rollouts.wave_passed").details(serde_json::json!({
                                "wave": wave, "failures": failures, "budget": budget,
                            })));
                            if wave + 1 >= r.waves {
                                r.state = RolloutState::Succeeded;
                                r.finished_ms = Some(now_ms);
                                r.gate = None;
                                r.reason = Some("every wave passed".into());
                            } else {
                                r.current_wave = wave + 1;
                                r.wave_started_ms = None;
                                r.wave_done_ms = None;
                                set_gate(&mut r, "pause");
                            }
                        }
                    }
                }
            }
        }
        RolloutState::Stopping => {
            if in_flight > 0 {
                set_gate(&mut r, "running jobs to finish");
            } else {
                let changed_hosts = hosts.iter().any(|h| h.state == HostState::Succeeded);
                if r.stop_rollback && r.strategy.rollback.is_some() && changed_hosts {
                    r.state = RolloutState::RollingBack;
                    set_gate(&mut r, "rollback jobs");
                } else {
                    finish_stopped(&mut r, &hosts, now_ms);
                }
            }
        }
        RolloutState::RollingBack => {
            let spec = r.strategy.rollback.clone();
            let mut candidates: Vec<usize> = hosts
                .iter()
                .enumerate()
                .filter(|(_, h)| h.state == HostState::Succeeded)
                .map(|(i, _)| i)
                .collect();
            if !r.stop_rollback || spec.is_none() {
                candidates.clear();
            }
            if candidates.is_empty() && in_flight == 0 {
                finish_stopped(&mut r, &hosts, now_ms);
            } else if let Some(spec) = spec {
                // Newest first: latest finished step, then latest position.
                candidates.sort_by_key(|&i| std::cmp::Reverse((hosts[i].finished_ms, hosts[i].position)));
                let width = usize::try_from(r.strategy.batch.ceil_of(total).max(1)).unwrap_or(1);
                let free = width.saturating_sub(in_flight);
                let allowed = dispatch_authority(snap);
                let mut sent = Vec::new();
                for &idx in candidates.iter().take(free) {
                    let h = &mut hosts[idx];
                    let may = |l: &Labels| match &allowed {
                        Ok((scope, authority)) => {
                            scope.matches(l) && DISPATCH_PERMISSIONS.iter().all(|p| authority.allows(p, Some(l)))
                        }
                        Err(_) => false,
                    };
                    match snap.labels.get(&h.host_id) {
                        Some(l) if may(l) => {
                            let job = rollout_job(&r, &h.host_id, &spec.action, &spec.params, now_ms);
                            let id = job.id.clone();
                            jobs_out.push(job);
                            h.state = HostState::RollingBack;
                            h.rollback_job_id = Some(id.clone());
                            sent.push(serde_json::json!({ "host": h.host_id, "job": id }));
                        }
                        _ => {
                            h.state = HostState::RollbackFailed;
                            h.reason = Some(match &allowed {
                                Err(why) => format!("cannot roll back: {why}"),
                                Ok(_) => {
                                    "cannot roll back: the host is gone or outside the creator's scope or authority"
                                        .into()
                                }
                            });
                        }
                    }
                    changed.push(idx);
                }
                if !sent.is_empty() {
                    audit.push(system(&r, "rollouts.rollback_dispatch").details(serde_json::json!({ "jobs": sent })));
                }
                set_gate(&mut r, "rollback jobs");
            }
        }
        _ => {}
    }

    if r.state != before.state {
        audit.push(system(&r, "rollouts.transition").details(serde_json::json!({
            "from": before.state.as_str(), "to": r.state.as_str(), "reason": r.reason,
            "wave": r.current_wave,
        })));
    }
    changed.sort_unstable();
    changed.dedup();
    let host_changes: Vec<(HostState, RolloutHost)> = changed
        .into_iter()
        .map(|i| (snap.hosts[i].state, hosts[i].clone()))
        .collect();
    let rollout_changed = r != before;
    RolloutStep {
        rollout: rollout_changed.then_some(r),
        hosts: host_changes,
        jobs: jobs_out,
        audit,
    }
}

/// The stored scope of the rollout and its creator's authority, or why
/// nothing may be dispatched (fail closed: an unreadable scope, a creator
/// not read or no longer authorised).
fn dispatch_authority(snap: &Snapshot) -> Result<(Selector, Authority), String> {
    let Ok(scope) = Selector::parse(&snap.rollout.scope) else {
        return Err("the rollout's stored scope is unreadable".into());
    };
    match &snap.creator {
        None => Err("its creator's authority was not read".into()),
        Some(Err(why)) => Err(why.clone()),
        Some(Ok(authority)) => Ok((scope, authority.clone())),
    }
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Ends a stopped rollout: `aborted` for an abort; after a failure
/// `rolled_back` when hosts were undone and every rollback succeeded, else `failed`.
fn finish_stopped(r: &mut Rollout, hosts: &[RolloutHost], now_ms: i64) {
    let count = |s: HostState| hosts.iter().filter(|h| h.state == s).count();
    let (rolled, rb_failed, changed) = (
        count(HostState::RolledBack),
        count(HostState::RollbackFailed),
        count(HostState::Succeeded),
    );
    let summary = format!(
        "{rolled} rolled back, {rb_failed} rollback failed, {changed} still changed, {} failed, {} never run",
        count(HostState::Failed),
        count(HostState::Pending) + count(HostState::Skipped)
    );
    r.state = if r.stop_kind.as_deref() == Some("abort") {
        RolloutState::Aborted
    } else if rolled > 0 && rb_failed == 0 && changed == 0 {
        RolloutState::RolledBack
    } else {
        RolloutState::Failed
    };
    let why = r.reason.clone().unwrap_or_default();
    r.reason = Some(format!("{why}; {summary}"));
    r.gate = None;
    r.finished_ms = Some(now_ms);
}

#[cfg(test)]
mod health_tests {
    use super::health_of;

    fn c(name: &str, status: &str, at: i64) -> (String, String, i64) {
        (name.to_string(), status.to_string(), at)
    }

    #[test]
    fn named_checks_are_the_whole_health_gate() {
        let checks = vec![c("upstream", "critical", 10), c("mem", "ok", 10)];
        // No names: any critical check fails the gate.
        assert_eq!(health_of(&[], &checks, 5), Err("check upstream is critical".into()));
        // Named: only those; a critical check that is not named does not count.
        assert_eq!(health_of(&["mem".into()], &checks, 5), Ok(true));
        // A named check not reported since the step is not known yet.
        assert_eq!(health_of(&["mem".into()], &checks, 20), Ok(false));
        assert_eq!(
            health_of(&["upstream".into()], &checks, 5),
            Err("check upstream is critical".into())
        );
        assert_eq!(health_of(&[], &[c("mem", "warning", 1)], 5), Ok(true));
    }
}
