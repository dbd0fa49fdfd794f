//! Job routes: `POST /api/v1/jobs` (one host, or a selector fanned out to
//! one job per matching host; idempotent on `idempotency_key`),
//! `GET /api/v1/jobs`, `GET /api/v1/jobs/{id}`, `GET /api/v1/jobs/{id}/output`,
//! `POST /api/v1/jobs/{id}/cancel`, and `GET /api/v1/backups`.
//!
//! Invariants:
//! - Actions and parameters are checked against the contract before anything
//!   is stored; a bad one is a 400 naming the field (`action`, `params.NAME`).
//! - Every job created or cancelled is audited in the same transaction.
//! - Access (see [`super::routes::TABLE`]): a job is created only on hosts
//!   where the caller holds `jobs:create` (a selector fans out to those
//!   alone); lists show only jobs and backups of hosts where it holds
//!   `jobs:read` / `backups:read`; a job of a host it may not see is a 404,
//!   whether read or cancelled; an idempotency key never returns jobs the
//!   caller may not see.
use std::collections::BTreeMap;

use http::StatusCode;
use serde::{Deserialize, Serialize};
use steward_shared::selector::Selector;
use steward_shared::units::Duration;
use warp::reply::Response;

use super::ApiState;
use super::auth::Principal;
use super::handlers::json;
use super::identity::parse_body;
use super::params::{Params, truncate};
use super::problem::Problem;
use super::rbac::{authorize, record_forbidden, resolve_host_for, resolve_host_id_for};
use super::views::ListView;
use crate::audit::Outcome;
use crate::jobs::{self, Job, JobFilter, JobState, NewJob};
use crate::store::jobs::{BackupStatus, CancelResult, Enqueued};
use steward_shared::timestamp::rfc3339;

/// Default and longest job timeout.
const DEFAULT_TIMEOUT_SECS: u64 = 3600;
const MAX_TIMEOUT_SECS: u64 = 7 * 86_400;
/// Most attempts a job may ask for.
const MAX_ATTEMPTS: u32 = 25;
/// Most hosts one selector may fan out to.
const MAX_FANOUT: usize = 10_000;
/// Tag of job-list cursors.
const JOBS_CURSOR: &str = "j1";

/// `POST /api/v1/jobs` body. Unknown fields are refused.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    /// One of the contract's actions (`backup.run`, `exec`, ...).
    pub action: String,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// One host, by ID; or else `selector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// A label selector: one job per matching host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The same key returns the same job(s) instead of creating new ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Longest an attempt may run, e.g. `10m` (default 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "10m")]
    pub timeout: Option<Duration>,
    /// Attempts before the job is discarded (default 1: no retry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
}

/// A job as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobView {
    pub id: String,
    pub action: String,
    pub params: BTreeMap<String, String>,
    pub host_id: String,
    #[schema(value_type = super::openapi::JobStateSchema)]
    pub state: JobState,
    pub attempt: u32,
    pub max_attempts: u32,
    pub attempt_id: Option<String>,
    pub timeout_secs: u64,
    pub created_ms: i64,
    /// `created_ms` as RFC 3339 (UTC).
    pub created: String,
    pub updated_ms: i64,
    pub next_run_ms: i64,
    pub dispatched_ms: Option<i64>,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    /// The agent's outcome word of the last attempt (`rolled_back` for a deploy switched back).
    pub outcome: Option<String>,
    pub reason: Option<String>,
    /// The agent's result of the last attempt.
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// The last progress report: `stage`, `percent`, `message`.
    #[schema(value_type = Option<Object>)]
    pub progress: Option<serde_json::Value>,
    pub output_bytes: u64,
    pub output_truncated: bool,
    pub cancel_requested: bool,
    pub idempotency_key: Option<String>,
    pub rollout_id: Option<String>,
    /// `api`, or `local` for a run the agent started on its own schedule.
    pub source: String,
    pub created_by: String,
}

impl From<Job> for JobView {
    fn from(j: Job) -> Self {
        let parse = |s: Option<String>| s.map(|t| serde_json::from_str(&t).unwrap_or(serde_json::Value::String(t)));
        JobView {
            created: rfc3339(j.created_ms),
            result: parse(j.result),
            progress: parse(j.progress),
            id: j.id,
            action: j.action,
            params: j.params,
            host_id: j.host_id,
            state: j.state,
            attempt: j.attempt,
            max_attempts: j.max_attempts,
            attempt_id: j.attempt_id,
            timeout_secs: j.timeout_secs,
            created_ms: j.created_ms,
            updated_ms: j.updated_ms,
            next_run_ms: j.next_run_ms,
            dispatched_ms: j.dispatched_ms,
            started_ms: j.started_ms,
            finished_ms: j.finished_ms,
            outcome: j.outcome,
            reason: j.reason,
            output_bytes: j.output_bytes,
            output_truncated: j.output_truncated,
            cancel_requested: j.cancel_requested,
            idempotency_key: j.idempotency_key,
            rollout_id: j.rollout_id,
            source: j.source,
            created_by: j.created_by,
        }
    }
}

/// Answer of `POST /api/v1/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedJobs {
    pub items: Vec<JobView>,
    /// False when the idempotency key had been used: `items` are that request's jobs.
    pub created: bool,
}

/// `GET /api/v1/jobs/{id}/output`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OutputView {
    pub job_id: String,
    pub attempt: u32,
    #[schema(value_type = super::openapi::JobStateSchema)]
    pub state: JobState,
    pub bytes: u64,
    pub truncated: bool,
    /// The output as text (invalid UTF-8 replaced by U+FFFD).
    pub output: String,
}

/// An item of `GET /api/v1/backups`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BackupView {
    pub host_id: String,
    pub name: String,
    pub last_snapshot: Option<String>,
    pub last_snapshot_ms: Option<i64>,
    /// Seconds since the last good snapshot.
    pub age_secs: Option<i64>,
    /// The backup's RPO as the agent reported it.
    pub rpo_secs: Option<i64>,
    /// No good snapshot, or the last one is older than the RPO (null: RPO unknown).
    pub stale: Option<bool>,
    pub last_files: Option<i64>,
    pub last_bytes: Option<i64>,
    pub last_run_ms: Option<i64>,
    pub last_run_outcome: Option<String>,
    pub last_run_reason: Option<String>,
    pub last_verify_ms: Option<i64>,
    pub last_verify_ok: Option<bool>,
    pub last_verify_snapshot: Option<String>,
    pub last_verify_reason: Option<String>,
}

impl BackupView {
    pub fn new(b: BackupStatus, now_ms: i64) -> Self {
        let age_secs = b.last_snapshot_ms.map(|t| (now_ms - t).max(0) / 1000);
        let stale = match (age_secs, b.rpo_secs) {
            (_, None) if b.last_snapshot_ms.is_some() => None,
            (None, _) => Some(true),
            (Some(age), Some(rpo)) => Some(age > rpo),
            (Some(_), None) => None,
        };
        BackupView {
            host_id: b.host_id,
            name: b.name,
            last_snapshot: b.last_snapshot,
            last_snapshot_ms: b.last_snapshot_ms,
            age_secs,
            rpo_secs: b.rpo_secs,
            stale,
            last_files: b.last_files,
            last_bytes: b.last_bytes,
            last_run_ms: b.last_run_ms,
            last_run_outcome: b.last_run_outcome,
            last_run_reason: b.last_run_reason,
            last_verify_ms: b.last_verify_ms,
            last_verify_ok: b.last_verify_ok,
            last_verify_snapshot: b.last_verify_snapshot,
            last_verify_reason: b.last_verify_reason,
        }
    }
}

fn valid_key(k: &str) -> bool {
    (1..=128).contains(&k.len())
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// `POST /api/v1/jobs`
pub async fn create(state: ApiState, who: Principal, query: String, body: bytes::Bytes) -> Result<Response, Problem> {
    Params::parse(&query, &[])?;
    let req: CreateJob = parse_body(&body)?;
    if req.action.is_empty() {
        return Err(Problem::invalid("action", "action is required"));
    }
    jobs::validate(&req.action, &req.params).map_err(|e| Problem::invalid(&e.field, e.message))?;
    if let Some(key) = &req.idempotency_key
        && !valid_key(key)
    {
        return Err(Problem::invalid(
            "idempotency_key",
            "must be 1-128 characters of A-Z a-z 0-9 . _ : -",
        ));
    }
    let timeout_secs = req
        .timeout
        .map(|d| d.as_std().as_secs())
        .unwrap_or(DEFAULT_TIMEOUT_SECS);
    if !(1..=MAX_TIMEOUT_SECS).contains(&timeout_secs) {
        return Err(Problem::invalid("timeout", "must be at least 1s and at most 7d"));
    }
    let max_attempts = req.max_attempts.unwrap_or(1);
    if !(1..=MAX_ATTEMPTS).contains(&max_attempts) {
        return Err(Problem::invalid(
            "max_attempts",
            format!("must be between 1 and {MAX_ATTEMPTS}"),
        ));
    }
    let host_ids: Vec<String> = match (&req.host, &req.selector) {
        (Some(_), Some(_)) => return Err(Problem::invalid("selector", "give either host or selector, not both")),
        (None, None) => return Err(Problem::invalid("host", "give a host or a selector")),
        (Some(host), None) => vec![resolve_host_id_for(&state, &who, host, "jobs:create", "host").await?.id],
        (None, Some(sel)) => {
            let selector = Selector::parse(sel).map_err(|e| Problem::invalid("selector", e.to_string()))?;
            let ids = matching_hosts(&state, &who, &selector, "jobs:create", MAX_FANOUT).await?;
            if ids.is_empty() {
                // Hosts it may see but not act on: an audited 403; else, as
                // for a selector matching nothing, a 400.
                let seen = state
                    .store
                    .list_hosts_visible(&selector, &who.host_filter("hosts:read"), None, 1)
                    .await
                    .map_err(Problem::from_store)?;
                if !seen.items.is_empty() {
                    let reason = "the token may not jobs:create on any host the selector matches";
                    let target = format!("selector:{}", truncate(sel, 128));
                    record_forbidden(&state, &who, "jobs:create", &target, reason).await;
                    return Err(Problem::forbidden(reason));
                }
                return Err(Problem::invalid("selector", "the selector matches no host"));
            }
            ids
        }
    };
    let now = steward_shared::now_ms();
    let new: Vec<NewJob> = host_ids
        .iter()
        .map(|h| NewJob {
            id: jobs::new_job_id(now),
            action: req.action.clone(),
            params: req.params.clone(),
            host_id: h.clone(),
            max_attempts,
            timeout_secs,
            idempotency_key: req.idempotency_key.clone(),
            rollout_id: None,
            created_by: format!("token:{}", who.token_id),
        })
        .collect();
    let audit: Vec<_> = new
        .iter()
        .map(|j| {
            who.audit("jobs.create", Outcome::Success)
                .target(format!("job:{}", j.id))
                .details(serde_json::json!({
                    "host": j.host_id, "action": j.action, "params": j.params,
                    "idempotency_key": j.idempotency_key, "max_attempts": j.max_attempts,
                    "timeout_secs": j.timeout_secs, "selector": req.selector,
                }))
        })
        .collect();
    let (items, created) = match state
        .store
        .enqueue_jobs(&new, &audit, now)
        .await
        .map_err(Problem::from_store)?
    {
        Enqueued::Created(jobs) => (jobs, true),
        Enqueued::Existing(jobs) => {
            // Never another scope's jobs: a key used for hosts the caller
            // may not see is a conflict that says nothing about them.
            let n = jobs.len();
            let seen = state
                .store
                .visible_jobs(jobs, &who.host_filter("jobs:read"))
                .await
                .map_err(Problem::from_store)?;
            if seen.len() != n {
                return Err(Problem::conflict(
                    "idempotency_key",
                    "this idempotency key was already used by another request; choose another",
                ));
            }
            (seen, false)
        }
    };
    if created {
        tracing::info!(action = %req.action, jobs = items.len(), by = %who.token_id, "jobs created");
        state.jobs.kick();
    }
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(json(
        status,
        &CreatedJobs {
            items: items.into_iter().map(JobView::from).collect(),
            created,
        },
    ))
}

/// The hosts `selector` matches on which `who` holds `permission` (each one
/// checked again against its labels), at most `max` of them (else a 400
/// naming `selector`). Used by job fan-out and rollout creation.
pub(super) async fn matching_hosts(
    state: &ApiState,
    who: &Principal,
    selector: &Selector,
    permission: &str,
    max: usize,
) -> Result<Vec<String>, Problem> {
    let access = who.host_filter(permission);
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = state
            .store
            .list_hosts_visible(selector, &access, after.as_deref(), 1000)
            .await
            .map_err(Problem::from_store)?;
        after = page.items.last().map(|h| h.id.clone());
        ids.extend(
            page.items
                .into_iter()
                .filter(|h| who.allows(permission, Some(&h.labels)))
                .map(|h| h.id),
        );
        if ids.len() > max {
            return Err(Problem::invalid(
                "selector",
                format!("the selector matches more than {max} hosts"),
            ));
        }
        if !page.has_more {
            return Ok(ids);
        }
    }
}

/// `GET /api/v1/jobs?state=&host=&action=&limit=&cursor=`
pub async fn list(state: ApiState, who: Principal, query: String) -> Result<Response, Problem> {
    let p = Params::parse(&query, &["state", "host", "action", "limit", "cursor"])?;
    let limit = p.limit()?;
    let job_state = p
        .typed("state")
        .map(|s| {
            JobState::parse(s).ok_or_else(|| {
                let names: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
                Problem::invalid(
                    "state",
                    format!("state must be one of {}, got {:?}", names.join(", "), truncate(s, 32)),
                )
            })
        })
        .transpose()?;
    if let Some(a) = p.get("action")
        && !jobs::ACTIONS.iter().any(|(n, _, _)| *n == a)
    {
        let names: Vec<&str> = jobs::ACTIONS.iter().map(|(n, _, _)| *n).collect();
        return Err(Problem::invalid(
            "action",
            format!("action must be one of {}, got {:?}", names.join(", "), truncate(a, 32)),
        ));
    }
    let host_id = match p.get("host") {
        Some(ident) => Some(resolve_host_for(&state, &who, ident, "jobs:read", "host").await?.id),
        None => None,
    };
    let before = p
        .get("cursor")
        .map(|raw| super::params::parse_opaque_cursor(raw, JOBS_CURSOR))
        .transpose()?;
    let filter = JobFilter {
        state: job_state,
        host_id,
        action: p.get("action").map(str::to_string),
    };
    let page = state
        .store
        .list_jobs_visible(&filter, &who.host_filter("jobs:read"), before.as_deref(), limit)
        .await
        .map_err(Problem::from_store)?;
    let next_cursor = page
        .has_more
        .then(|| {
            page.items
                .last()
                .map(|j| super::params::opaque_cursor(JOBS_CURSOR, &j.id))
        })
        .flatten();
    let items: Vec<JobView> = page.items.into_iter().map(JobView::from).collect();
    Ok(json(StatusCode::OK, &ListView { items, next_cursor }))
}

/// The job `id` for an action needing `permission` on its host: 404 when
/// there is no such job *that the caller may see* (`jobs:read` or
/// `permission` on its host), 403 (audited) when it may see it but not do this.
async fn find(state: &ApiState, who: &Principal, id: &str, permission: &str) -> Result<Job, Problem> {
    if id.is_empty() || id.len() > 128 {
        return Err(not_found(id));
    }
    let job = state
        .store
        .get_job(id)
        .await
        .map_err(Problem::from_store)?
        .ok_or_else(|| not_found(id))?;
    let labels = state
        .store
        .host_labels(std::slice::from_ref(&job.host_id))
        .await
        .map_err(Problem::from_store)?
        .remove(&job.host_id);
    let may = |p: &str| match &labels {
        Some(l) => who.allows(p, Some(l)),
        // The host is gone: only for callers limited by nothing.
        None => who.host_filter(p).is_all() && who.allows(p, None),
    };
    if !may("jobs:read") && !may(permission) {
        return Err(not_found(id));
    }
    if !may(permission) {
        authorize(
            state,
            who,
            permission,
            Some(&labels.unwrap_or_default()),
            &format!("job:{}", job.id),
        )
        .await?;
    }
    Ok(job)
}

fn not_found(id: &str) -> Problem {
    let mut p = Problem::not_found(format!("job {:?} not found", truncate(id, 128)));
    p.field = Some("id".into());
    p
}

/// `GET /api/v1/jobs/{id}`
pub async fn get(state: ApiState, who: Principal, id: String, query: String) -> Result<Response, Problem> {
    Params::parse(&query, &[])?;
    let job = find(&state, &who, &id, "jobs:read").await?;
    Ok(json(StatusCode::OK, &JobView::from(job)))
}

/// `GET /api/v1/jobs/{id}/output`
pub async fn output(state: ApiState, who: Principal, id: String, query: String) -> Result<Response, Problem> {
    Params::parse(&query, &[])?;
    find(&state, &who, &id, "jobs:read").await?;
    let Some((job, data)) = state.store.job_output(&id).await.map_err(Problem::from_store)? else {
        return Err(not_found(&id));
    };
    Ok(json(
        StatusCode::OK,
        &OutputView {
            job_id: job.id,
            attempt: job.attempt,
            state: job.state,
            bytes: data.len() as u64,
            truncated: job.output_truncated,
            output: String::from_utf8_lossy(&data).into_owned(),
        },
    ))
}

/// `POST /api/v1/jobs/{id}/cancel`: a queued job is cancelled at once (200);
/// one with an agent is asked to stop (202); an ended one is a 409.
pub async fn cancel(state: ApiState, who: Principal, id: String, query: String) -> Result<Response, Problem> {
    Params::parse(&query, &[])?;
    find(&state, &who, &id, "jobs:cancel").await?;
    let entry = who.audit("jobs.cancel", Outcome::Success);
    match state
        .store
        .cancel_job(&id, entry, steward_shared::now_ms())
        .await
        .map_err(Problem::from_store)?
    {
        CancelResult::NotFound => Err(not_found(&id)),
        CancelResult::Cancelled(job) => {
            tracing::info!(job = %job.id, by = %who.token_id, "queued job cancelled");
            Ok(json(StatusCode::OK, &JobView::from(job)))
        }
        CancelResult::Requested(job) => {
            tracing::info!(job = %job.id, by = %who.token_id, "cancellation requested");
            state.jobs.cancel_requested();
            Ok(json(StatusCode::ACCEPTED, &JobView::from(job)))
        }
        CancelResult::AlreadyEnded(job) => Err(Problem {
            type_: "urn:steward:problem:job-ended".into(),
            title: "Job already ended".into(),
            status: StatusCode::CONFLICT.as_u16(),
            detail: format!("job {} already ended ({})", job.id, job.state),
            field: Some("id".into()),
        }),
    }
}

/// `GET /api/v1/backups?host=`
pub async fn backups(state: ApiState, who: Principal, query: String) -> Result<Response, Problem> {
    let p = Params::parse(&query, &["host"])?;
    let host_id = match p.get("host") {
        Some(ident) => Some(resolve_host_for(&state, &who, ident, "backups:read", "host").await?.id),
        None => None,
    };
    let rows = state
        .store
        .list_backups_visible(host_id.as_deref(), &who.host_filter("backups:read"))
        .await
        .map_err(Problem::from_store)?;
    let now = steward_shared::now_ms();
    let items: Vec<BackupView> = rows.into_iter().map(|b| BackupView::new(b, now)).collect();
    Ok(json(
        StatusCode::OK,
        &ListView {
            items,
            next_cursor: None,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_name_the_offending_field() {
        let e = parse_body::<CreateJob>(br#"{"action": "exec", "hots": "x"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("hots"));
        let e = parse_body::<CreateJob>(br#"{"action": "exec", "timeout": "soon"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("timeout"));
        let e = parse_body::<CreateJob>(br#"{"action": "exec", "params": {"command": 1}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("params.command"));
    }

    #[test]
    fn backups_are_stale_past_their_rpo() {
        let b = |snap: Option<i64>, rpo: Option<i64>| BackupStatus {
            host_id: "h".into(),
            name: "n".into(),
            last_snapshot: snap.map(|_| "s".into()),
            last_snapshot_ms: snap,
            last_snapshot_job: None,
            last_files: None,
            last_bytes: None,
            last_run_ms: None,
            last_run_outcome: None,
            last_run_reason: None,
            rpo_secs: rpo,
            last_verify_ms: None,
            last_verify_ok: None,
            last_verify_snapshot: None,
            last_verify_reason: None,
        };
        let now = 10_000_000;
        assert_eq!(BackupView::new(b(Some(now - 5_000), Some(10)), now).stale, Some(false));
        assert_eq!(BackupView::new(b(Some(now - 20_000), Some(10)), now).stale, Some(true));
        assert_eq!(BackupView::new(b(None, Some(10)), now).stale, Some(true));
        assert_eq!(BackupView::new(b(Some(now), None), now).stale, None);
    }
}
