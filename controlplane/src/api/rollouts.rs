//! Rollout routes: `POST /api/v1/rollouts` (start), `GET /api/v1/rollouts`,
//! `GET /api/v1/rollouts/{id}`, `POST /api/v1/rollouts/{id}/pause|resume|abort`.
//!
//! Invariants:
//! - The target set is resolved once, here: the hosts the selector matches
//!   on which the caller holds `rollouts:write` (each checked against its
//!   labels), in host-ID order; the caller must also hold `jobs:create` on
//!   every one of them (403 otherwise). The caller's scope is stored with the
//!   rollout; the driver checks it and the creator's current authority again
//!   at each wave.
//! - A rollout is visible to a caller only when every one of its hosts is
//!   (`rollouts:read`), and controllable only when it holds `rollouts:write`
//!   on every one of them; otherwise it is a 404, as if it did not exist.
//! - Every creation and control is audited in the same transaction.
use std::collections::BTreeMap;

use http::StatusCode;
use serde::{Deserialize, Serialize};
use steward_shared::selector::Selector;
use warp::reply::Response;

use super::ApiState;
use super::auth::Principal;
use super::handlers::json;
use super::identity::parse_body;
use super::params::{Params, truncate};
use super::problem::Problem;
use super::views::ListView;
use crate::audit::Outcome;
use crate::rollouts::{self, HostState, Rollout, RolloutHost, RolloutState, Strategy, StrategySpec};
use crate::store::rollouts::{Control, ControlResult, NewRollout};
use steward_shared::timestamp::rfc3339;

/// Most hosts one rollout may target.
const MAX_HOSTS: usize = 20_000;
const CURSOR: &str = "r1";

/// `POST /api/v1/rollouts` body. Unknown fields are refused.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRollout {
    /// One of the contract's actions (`deploy.apply`, `exec`, ...).
    pub action: String,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// A label selector: the target set, resolved once at start.
    pub selector: String,
    #[serde(default)]
    pub strategy: StrategySpec,
}

/// `POST /api/v1/rollouts/{id}/abort` body.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AbortRollout {
    /// Roll changed hosts back (default true; needs the strategy's rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<bool>,
}

/// Host counts by state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Counts {
    pub pending: u64,
    pub dispatched: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub skipped: u64,
    pub rolling_back: u64,
    pub rolled_back: u64,
    pub rollback_failed: u64,
}

impl Counts {
    fn add(&mut self, s: HostState) {
        match s {
            HostState::Pending => self.pending += 1,
            HostState::Dispatched => self.dispatched += 1,
            HostState::Succeeded => self.succeeded += 1,
            HostState::Failed => self.failed += 1,
            HostState::Skipped => self.skipped += 1,
            HostState::RollingBack => self.rolling_back += 1,
            HostState::RolledBack => self.rolled_back += 1,
            HostState::RollbackFailed => self.rollback_failed += 1,
        }
    }
}

/// One wave of a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WaveView {
    pub wave: u32,
    pub hosts: u64,
    pub counts: Counts,
}

/// One host of a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RolloutHostView {
    pub host_id: String,
    pub wave: u32,
    /// pending | dispatched | succeeded | failed | skipped | rolling_back | rolled_back | rollback_failed
    pub state: String,
    pub job_id: Option<String>,
    pub rollback_job_id: Option<String>,
    pub reason: Option<String>,
    pub finished_ms: Option<i64>,
}

/// A rollout as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RolloutView {
    pub id: String,
    pub action: String,
    pub params: BTreeMap<String, String>,
    pub selector: String,
    pub strategy: Strategy,
    /// running | paused | stopping | rolling_back | succeeded | rolled_back | failed | aborted
    pub state: String,
    pub reason: Option<String>,
    /// What the rollout waits on (jobs, health, min_healthy, slo ..., pause, paused, ...).
    pub gate: Option<String>,
    pub gate_since_ms: Option<i64>,
    pub current_wave: u32,
    pub waves: u32,
    pub total_hosts: u64,
    /// Failed hosts tolerated over the whole rollout.
    pub budget: u64,
    pub counts: Counts,
    pub wave_counts: Vec<WaveView>,
    /// Present on `GET /api/v1/rollouts/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<RolloutHostView>>,
    /// Things an operator should know (e.g. an SLO gate that could not be evaluated).
    pub notes: Vec<String>,
    pub actor: String,
    pub lease_owner: Option<String>,
    pub created: String,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub finished_ms: Option<i64>,
}

impl RolloutView {
    pub fn new(r: Rollout, hosts: &[RolloutHost], with_hosts: bool) -> Self {
        let mut counts = Counts::default();
        let mut waves: Vec<WaveView> = (0..r.waves)
            .map(|w| WaveView {
                wave: w,
                hosts: 0,
                counts: Counts::default(),
            })
            .collect();
        for h in hosts {
            counts.add(h.state);
            if let Some(w) = waves.get_mut(h.wave as usize) {
                w.hosts += 1;
                w.counts.add(h.state);
            }
        }
        RolloutView {
            budget: r.strategy.budget(r.total_hosts),
            hosts: with_hosts.then(|| {
                hosts
                    .iter()
                    .map(|h| RolloutHostView {
                        host_id: h.host_id.clone(),
                        wave: h.wave,
                        state: h.state.as_str().into(),
                        job_id: h.job_id.clone(),
                        rollback_job_id: h.rollback_job_id.clone(),
                        reason: h.reason.clone(),
                        finished_ms: h.finished_ms,
                    })
                    .collect()
            }),
            counts,
            wave_counts: waves,
            created: rfc3339(r.created_ms),
            id: r.id,
            action: r.action,
            params: r.params,
            selector: r.selector,
            strategy: r.strategy,
            state: r.state.as_str().into(),
            reason: r.reason,
            gate: r.gate,
            gate_since_ms: r.gate_since_ms,
            current_wave: r.current_wave,
            waves: r.waves,
            total_hosts: r.total_hosts,
            notes: r.notes,
            actor: r.actor,
            lease_owner: r.lease_owner,
            created_ms: r.created_ms,
            updated_ms: r.updated_ms,
            finished_ms: r.finished_ms,
        }
    }
}

fn not_found(id: &str) -> Problem {
    let mut p = Problem::not_found(format!("rollout {:?} not found", truncate(id, 128)));
    p.field = Some("id".into());
    p
}

/// Whether `who` holds `permission` on every host of the rollout.
async fn covers_all(
    state: &ApiState,
    who: &Principal,
    hosts: &[RolloutHost],
    permission: &str,
) -> Result<bool, Problem> {
    let filter = who.host_filter(permission);
    if filter.is_all() {
        // Decided by the route's permission alone (checked before the handler).
        return Ok(true);
    }
    let ids: Vec<String> = hosts.iter().map(|h| h.host_id.clone()).collect();
    let labels = state.store.host_labels(&ids).await.map_err(Problem::from_store)?;
    Ok(ids
        .iter()
        .all(|id| labels.get(id).is_some_and(|l| who.allows(permission, Some(l)))))
}

/// The rollout `id` and its hosts, if `who` may see it with `permission`.
async fn find(
    state: &ApiState,
    who: &Principal,
    id: &str,
    permission: &str,
) -> Result<(Rollout, Vec<RolloutHost>), Problem> {
    if id.is_empty() || id.len() > 128 {
        return Err(not_found(id));
    }
    let r = state
        .store
        .get_rollout(id)
        .await
        .map_err(Problem::from_store)?
        .ok_or_else(|| not_found(id))?;
    let hosts = state.store.rollout_hosts(id).await.map_err(Problem::from_store)?;
    if !covers_all(state, who, &hosts, "rollouts:read").await? {
        return Err(not_found(id));
    }
    if permission != "rollouts:read" && !covers_all(state, who, &hosts, permission).await? {
        return Err(Problem::forbidden(format!(
            "the token may not {permission} on every host of this rollout"
        )));
    }
    Ok((r, hosts))
}

/// `POST /api/v1/rollouts`
pub async fn create(state: ApiState, who: Principal, query: String, body: bytes::Bytes) -> Result<Response, Problem> {
    Params::parse(&query, &[])?;
    let req: CreateRollout = parse_body(&body)?;
    if req.action.is_empty() {
        return Err(Problem::invalid("action", "action is required"));
    }
    crate::jobs::validate(&req.action, &req.params).map_err(|e| Problem::invalid(&e.field, e.message))?;
    let strategy = req
        .strategy
        .validate()
        .map_err(|e| Problem::invalid(&e.field, e.message))?;
    for (i, name) in strategy.slo.iter().enumerate() {
        if state.store.get_slo(name).await.map_err(Problem::from_store)?.is_none() {
            return Err(Problem::invalid(
                &format!("strategy.slo[{i}]"),
                format!("no SLO named {name:?} (define it first: stewardctl slos apply)"),
            ));
        }
    }
    if req.selector.trim().is_empty() {
        return Err(Problem::invalid("selector", "a selector is required (e.g. app=web)"));
    }
    let selector = Selector::parse(&req.selector).map_err(|e| Problem::invalid("selector", e.to_string()))?;
    let mut ids = super::jobs::matching_hosts(&state, &who, &selector, "rollouts:write", MAX_HOSTS).await?;
    if ids.is_empty() {
        return Err(Problem::invalid(
            "selector",
            "the selector matches no host this token may roll out to",
        ));
    }
    ids.sort();
    // The rollout runs jobs (its action, and its rollback) on each target
    // host on the caller's behalf: the caller must be allowed to create them.
    let labels = state.store.host_labels(&ids).await.map_err(Problem::from_store)?;
    let lacking = ids
        .iter()
        .filter(|id| !labels.get(*id).is_some_and(|l| who.allows("jobs:create", Some(l))))
        .count();
    if lacking > 0 {
        let reason = format!(
            "the token may not jobs:create on {lacking} of the {} target host(s); a rollout runs {} there",
            ids.len(),
            truncate(&req.action, 64)
        );
        super::rbac::record_forbidden(&state, &who, "jobs:create", "rollouts", &reason).await;
        return Err(Problem::forbidden(reason));
    }
    let now = steward_shared::now_ms();
    let new = NewRollout {
        id: rollouts::new_rollout_id(now),
        action: req.action.clone(),
        params: req.params.clone(),
        selector: req.selector.clone(),
        strategy,
        hosts: ids,
        actor: format!("token:{}", who.token_id),
        scope: who.scope.to_string(),
    };
    let audit = who
        .audit("rollouts.create", Outcome::Success)
        .details(serde_json::json!({
            "action": new.action, "params": new.params, "selector": new.selector,
            "strategy": new.strategy, "hosts": new.hosts.len(),
        }));
    let r = state
        .store
        .create_rollout(&new, audit, now)
        .await
        .map_err(Problem::from_store)?;
    tracing::info!(rollout = %r.id, hosts = r.total_hosts, by = %who.token_id, "rollout started");
    let hosts = state.store.rollout_hosts(&r.id).await.map_err(Problem::from_store)?;
    Ok(json(StatusCode::CREATED, &RolloutView::new(r, &hosts, false)))
}

/// `GET /api/v1/rollouts?state=&limit=&cursor=`
pub async fn list(state: ApiState, who: Principal, query: String) -> Result<Response, Problem> {
    let p = Params::parse(&query, &["state", "limit", "cursor"])?;
    let limit = p.limit()?;
    let st = p
        .typed("state")
        .map(|s| {
            RolloutState::parse(s).ok_or_else(|| {
                let names: Vec<&str> = RolloutState::ALL.iter().map(|s| s.as_str()).collect();
                Problem::invalid(
                    "state",
                    format!("state must be one of {}, got {:?}", names.join(", "), truncate(s, 32)),
                )
            })
        })
        .transpose()?;
    let mut before = p
        .get("cursor")
        .map(|raw| super::params::parse_opaque_cursor(raw, CURSOR))
        .transpose()?;
    // Filtered before paging: only rollouts whose every host the caller may see.
    let mut items = Vec::new();
    let mut has_more;
    loop {
        let page = state
            .store
            .list_rollouts(st, before.as_deref(), limit)
            .await
            .map_err(Problem::from_store)?;
        has_more = page.has_more;
        let n = page.items.len();
        for (i, r) in page.items.into_iter().enumerate() {
            before = Some(r.id.clone());
            let hosts = state.store.rollout_hosts(&r.id).await.map_err(Problem::from_store)?;
            if covers_all(&state, &who, &hosts, "rollouts:read").await? {
                items.push(RolloutView::new(r, &hosts, false));
                if items.len() == limit {
                    has_more = has_more || i + 1 < n;
                    break;
                }
            }
        }
        if items.len() == limit || !has_more {
            break;
        }
    }
    let next_cursor = has_more
        .then(|| items.last().map(|r| super::params::opaque_cursor(CURSOR, &r.id)))
        .flatten();
    Ok(json(StatusCode::OK, &ListView { items, next_cursor }))
}

/// `GET /api/v1/rollouts/{id}`
pub async fn get(state: ApiState, who: Principal, id: String, query: String) -> Result<Response, Problem> {
    Params::parse(&query, &[])?;
    let (r, hosts) = find(&state, &who, &id, "rollouts:read").await?;
    Ok(json(StatusCode::OK, &RolloutView::new(r, &hosts, true)))
}

async fn control(state: ApiState, who: Principal, id: String, c: Control, action: &str) -> Result<Response, Problem> {
    let (r, _) = find(&state, &who, &id, "rollouts:write").await?;
    let _ = r;
    let entry = who.audit(action, Outcome::Success);
    match state
        .store
        .control_rollout(&id, c, entry, steward_shared::now_ms())
        .await
        .map_err(Problem::from_store)?
    {
        ControlResult::NotFound => Err(not_found(&id)),
        ControlResult::Done(r) => {
            tracing::info!(rollout = %r.id, state = r.state.as_str(), by = %who.token_id, "{action}");
            let hosts = state.store.rollout_hosts(&id).await.map_err(Problem::from_store)?;
            Ok(json(StatusCode::OK, &RolloutView::new(r, &hosts, false)))
        }
        ControlResult::Refused(_, why) => Err(Problem {
            type_: "urn:steward:problem:rollout-state".into(),
            title: "Not possible in the rollout's state".into(),
            status: StatusCode::CONFLICT.as_u16(),
            detail: why,
            field: Some("id".into()),
        }),
    }
}

/// `POST /api/v1/rollouts/{id}/pause`
pub async fn pause(state: ApiState, who: Principal, id: String, query: String) -> Result<Response, Problem> {
    Params::parse(&query, &[])?;
    control(state, who, id, Control::Pause, "rollouts.pause").await
}

/// `POST /api/v1/rollouts/{id}/resume`
pub async fn resume(state: ApiState, who: Principal, id: String, query: String) -> Result<Response, Problem> {
    Params::parse(&query, &[])?;
    control(state, who, id, Control::Resume, "rollouts.resume").await
}

/// `POST /api/v1/rollouts/{id}/abort` with `{"rollback": false}` to leave changed hosts as they are.
pub async fn abort(
    state: ApiState,
    who: Principal,
    id: String,
    query: String,
    body: bytes::Bytes,
) -> Result<Response, Problem> {
    Params::parse(&query, &[])?;
    let req: AbortRollout = parse_body(&body)?;
    control(
        state,
        who,
        id,
        Control::Abort {
            rollback: req.rollback.unwrap_or(true),
        },
        "rollouts.abort",
    )
    .await
}

/// The rollout routes, boxed to keep the route type small.
pub(super) fn routes(state: ApiState) -> warp::filters::BoxedFilter<(Result<Response, Problem>,)> {
    use super::{authorized, decoded, raw_query, with_state};
    use warp::Filter;
    let create_rollout = warp::path!("api" / "v1" / "rollouts")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "POST", "/api/v1/rollouts"))
        .and(raw_query())
        .and(warp::body::content_length_limit(super::identity::MAX_BODY))
        .and(warp::body::bytes())
        .then(create);
    let list_rollouts = warp::path!("api" / "v1" / "rollouts")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "GET", "/api/v1/rollouts"))
        .and(raw_query())
        .then(list);
    let get_rollout = warp::path!("api" / "v1" / "rollouts" / String)
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "GET", "/api/v1/rollouts/{id}"))
        .and_then(|id: String, state: ApiState, who| async move { decoded(id, "id").map(|id| (state, who, id)) })
        .untuple_one()
        .and(raw_query())
        .then(get);
    let pause_rollout = warp::path!("api" / "v1" / "rollouts" / String / "pause")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "POST", "/api/v1/rollouts/{id}/pause"))
        .and_then(|id: String, state: ApiState, who| async move { decoded(id, "id").map(|id| (state, who, id)) })
        .untuple_one()
        .and(raw_query())
        .then(pause);
    let resume_rollout = warp::path!("api" / "v1" / "rollouts" / String / "resume")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "POST", "/api/v1/rollouts/{id}/resume"))
        .and_then(|id: String, state: ApiState, who| async move { decoded(id, "id").map(|id| (state, who, id)) })
        .untuple_one()
        .and(raw_query())
        .then(resume);
    let abort_rollout = warp::path!("api" / "v1" / "rollouts" / String / "abort")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "POST", "/api/v1/rollouts/{id}/abort"))
        .and_then(|id: String, state: ApiState, who| async move { decoded(id, "id").map(|id| (state, who, id)) })
        .untuple_one()
        .and(raw_query())
        .and(warp::body::content_length_limit(super::identity::MAX_BODY))
        .and(warp::body::bytes())
        .then(abort);
    create_rollout
        .or(list_rollouts)
        .unify()
        .or(get_rollout)
        .unify()
        .or(pause_rollout)
        .unify()
        .or(resume_rollout)
        .unify()
        .or(abort_rollout)
        .unify()
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_name_the_offending_field() {
        let e = parse_body::<CreateRollout>(br#"{"action": "exec", "selector": "a=b", "strategy": {"bacth": 1}}"#)
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("strategy.bacth"));
        let e = parse_body::<CreateRollout>(br#"{"action": "exec", "selector": "a=b", "strategy": {"canary": "x"}}"#)
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("strategy.canary"));
        let e = parse_body::<AbortRollout>(br#"{"rollback": "no"}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("rollback"));
    }
}
