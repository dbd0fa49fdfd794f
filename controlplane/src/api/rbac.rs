//! Access control in the REST API: resolving a token's role, the route
//! check behind [`super::authorized`], per-token rate limits, the audited
//! 403, and the routes `tokens`, `roles` and `hosts/{host}/labels`.
//!
//! Invariants:
//! - Every route's permission comes from [`super::routes::TABLE`]; a handler
//!   about one host resolves it with [`resolve_host_for`] (a host the caller
//!   may not see is a 404, exactly like a missing one).
//! - A refusal (403) appends an `api.authorize` entry (within
//!   `audit.denials_per_minute`), naming the permission.
//! - No escalation: a token or role is created only when the caller holds
//!   everything it grants, with a scope no wider than the caller's
//!   ([`crate::rbac::Authority::covers`]); a token is revoked only by its
//!   holder or by someone who holds everything it grants.
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use steward_shared::selector::{Selector, validate_label};
use steward_shared::units::Duration;
use utoipa::ToSchema;
use warp::reply::Response;

use super::ApiState;
use super::auth::{self, NewToken, Principal};
use super::handlers::json;
use super::identity::parse_body;
use super::params::{Params, truncate};
use super::problem::Problem;
use super::routes::{Hosts, RouteSpec};
use super::views::{HostView, ListView};
use crate::audit::Outcome;
use crate::audit::denials::Admission;
use crate::model::{ApiToken, Host, StatusCounts};
use crate::rbac::{self, Authority, Budget, EscalationError, Labels, RoleDef, RoleSource, RuleSpec};
use crate::store::{HostLookup, StoreError};

/// Action of a refused authorisation in the audit log.
pub const API_AUTHORIZE: &str = "api.authorize";
/// Action of a relabelling in the audit log.
pub const SET_HOST_LABELS: &str = "set_host_labels";
/// Most rules in one role.
const MAX_RULES: usize = 200;
/// Longest token lifetime.
const MAX_TOKEN_TTL_SECS: u64 = 366 * 86_400;

type Limiter = RateLimiter<String, governor::state::keyed::DefaultKeyedStateStore<String>, DefaultClock>;

/// Roles from the config file, and the per-token rate limiter.
#[derive(Clone, Default)]
pub struct RbacApi {
    /// `[[rbac.roles]]`, by name.
    pub config_roles: Arc<BTreeMap<String, RoleDef>>,
    limiter: Option<Arc<Limiter>>,
}

impl std::fmt::Debug for RbacApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RbacApi")
            .field("config_roles", &self.config_roles.keys().collect::<Vec<_>>())
            .field("rate_limited", &self.limiter.is_some())
            .finish()
    }
}

impl RbacApi {
    /// Roles from the config file, and a limit of `per_second` requests a
    /// second per token bursting to `burst` (0: no limit).
    pub fn new(config_roles: Vec<RoleDef>, per_second: u32, burst: u32) -> Self {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
            Arc::new(RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)))
        });
        RbacApi {
            config_roles: Arc::new(config_roles.into_iter().map(|r| (r.name.clone(), r)).collect()),
            limiter,
        }
    }
}

/// A 429 rejection: the token's rate limit is used up for this long.
#[derive(Debug)]
pub struct RateLimited {
    pub retry_after_secs: u64,
}

impl warp::reject::Reject for RateLimited {}

/// The role `name`: built-in, from the config file, or stored.
pub async fn find_role(state: &ApiState, name: &str) -> Result<Option<RoleDef>, StoreError> {
    find_role_in(&state.store, &state.rbac.config_roles, name).await
}

/// [`find_role`] with the config file's roles given (the rollout driver).
pub async fn find_role_in(
    store: &crate::store::Store,
    config_roles: &BTreeMap<String, RoleDef>,
    name: &str,
) -> Result<Option<RoleDef>, StoreError> {
    if let Some(role) = rbac::builtin(name) {
        return Ok(Some(role));
    }
    if let Some(role) = config_roles.get(name) {
        return Ok(Some(role.clone()));
    }
    let Some(stored) = store.find_role(name).await? else {
        return Ok(None);
    };
    match rbac::parse_rules(&stored.rules) {
        Ok(rules) => Ok(Some(RoleDef {
            name: stored.name,
            description: stored.description,
            rules,
            source: RoleSource::Api,
        })),
        Err((field, message)) => {
            tracing::warn!(
                role = name,
                field,
                message,
                "stored role has an invalid rule; it grants nothing"
            );
            Ok(None)
        }
    }
}

/// What a token with `role` and `scope` may do (nothing for an unknown role).
async fn authority_of(state: &ApiState, role: &str, scope: Selector) -> Result<Authority, StoreError> {
    let rules = find_role(state, role).await?.map(|r| r.rules).unwrap_or_default();
    Ok(Authority::new(rules, scope))
}

/// Runs for every authenticated route, after authentication: the rate
/// limit, the role's rules, and the route's permission from the table.
pub(super) async fn admit(
    state: &ApiState,
    principal: &mut Principal,
    spec: &RouteSpec,
    route: &str,
) -> Result<(), warp::Rejection> {
    if let Some(limiter) = &state.rbac.limiter
        && let Err(not_until) = limiter.check_key(&principal.token_id)
    {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        let retry_after_secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        return Err(warp::reject::custom(RateLimited {
            retry_after_secs: retry_after_secs.max(1),
        }));
    }
    if rbac::builtin(&principal.role).is_none() {
        let authority = authority_of(state, &principal.role, principal.scope.clone())
            .await
            .map_err(|e| warp::reject::custom(Problem::from_store(e)))?;
        principal.authority = Arc::new(authority);
    }
    let Some(permission) = spec.permission else {
        return Ok(());
    };
    let reason = if !principal.allows(permission, None) {
        format!("the token's role ({}) does not grant {permission}", principal.role)
    } else if spec.hosts == Hosts::Fleet && principal.is_scoped() {
        format!("{route} is about the whole fleet; a token scoped to some hosts may not use it")
    } else if spec.hosts == Hosts::Fleet && !principal.authority.allows_fleet(permission) {
        format!(
            "{route} is about the whole fleet; the token's role ({}) grants {permission} on some hosts only",
            principal.role
        )
    } else if spec.hosts == Hosts::Global && !principal.authority.rules_unlimited(permission) {
        format!(
            "{route} is not about particular hosts; the token's role ({}) grants {permission} on some hosts only",
            principal.role
        )
    } else {
        return Ok(());
    };
    record_forbidden(state, principal, permission, route, &reason).await;
    Err(warp::reject::custom(Problem::forbidden(reason)))
}

/// Records a refused authorisation (`api.authorize`, `denied`), within the
/// denial budget. A storage failure is logged: the client gets its 403 either way.
pub async fn record_forbidden(state: &ApiState, who: &Principal, permission: &str, target: &str, reason: &str) {
    tracing::info!(token_id = %who.token_id, permission, target, "request refused: {reason}");
    let suppressed_before = match state.audit.denials.admit() {
        Admission::Record { suppressed_before } => suppressed_before,
        Admission::Suppress { .. } => {
            state.metrics.denial_unaudited();
            return;
        }
    };
    let mut details = serde_json::json!({ "permission": permission, "reason": reason });
    if suppressed_before > 0 {
        details["suppressed_before"] = suppressed_before.into();
    }
    let entry = who
        .audit(API_AUTHORIZE, Outcome::Denied)
        .target(target)
        .details(details);
    if let Err(error) = state.store.append_audit(entry).await {
        tracing::warn!(%error, "could not audit a refused request");
    }
}

/// Ok when `who` holds `permission` on the host with `labels` (or on no
/// particular host); else the refusal is audited and a 403 returned.
pub async fn authorize(
    state: &ApiState,
    who: &Principal,
    permission: &str,
    labels: Option<&Labels>,
    target: &str,
) -> Result<(), Problem> {
    if who.allows(permission, labels) {
        return Ok(());
    }
    let reason = match labels {
        Some(_) => format!("the token may not {permission} on {target}"),
        None => format!("the token's role ({}) does not grant {permission}", who.role),
    };
    record_forbidden(state, who, permission, target, &reason).await;
    Err(Problem::forbidden(reason))
}

/// Finds the host `ident` (ID or unique hostname) for a read needing
/// `permission`: 404 when there is no such host *that the caller may see*
/// (`hosts:read` or `permission` on it), 409 when the hostname names several
/// visible hosts, 403 (audited) when it may see the host but not do this.
/// Changes use [`resolve_host_id_for`]: a hostname is the agent's own claim.
pub async fn resolve_host_for(
    state: &ApiState,
    who: &Principal,
    ident: &str,
    permission: &str,
    field: &str,
) -> Result<Host, Problem> {
    resolve(state, who, ident, permission, field, true).await
}

/// [`resolve_host_for`] for a change (revoke, relabel, a job): by host ID
/// only, never by the hostname an agent reports about itself.
pub async fn resolve_host_id_for(
    state: &ApiState,
    who: &Principal,
    id: &str,
    permission: &str,
    field: &str,
) -> Result<Host, Problem> {
    resolve(state, who, id, permission, field, false).await
}

async fn resolve(
    state: &ApiState,
    who: &Principal,
    ident: &str,
    permission: &str,
    field: &str,
    by_hostname: bool,
) -> Result<Host, Problem> {
    let visible = |h: &Host| who.allows("hosts:read", Some(&h.labels)) || who.allows(permission, Some(&h.labels));
    let not_found = || {
        let mut p = Problem::not_found(format!("host {:?} not found", truncate(ident, 128)));
        p.field = Some(field.to_string());
        p
    };
    let host = match state.store.find_host(ident).await.map_err(Problem::from_store)? {
        HostLookup::Found(host) if !by_hostname && host.id != ident => return Err(not_found()),
        HostLookup::Ambiguous(_) if !by_hostname => return Err(not_found()),
        HostLookup::Found(host) if visible(&host) => *host,
        HostLookup::Found(_) | HostLookup::NotFound => return Err(not_found()),
        HostLookup::Ambiguous(ids) => {
            let mut seen = Vec::new();
            for id in ids {
                if let HostLookup::Found(h) = state.store.find_host(&id).await.map_err(Problem::from_store)?
                    && h.hostname == ident
                    && visible(&h)
                {
                    seen.push(*h);
                }
            }
            match seen.len() {
                0 => return Err(not_found()),
                1 => seen.remove(0),
                _ => {
                    let ids: Vec<&str> = seen.iter().map(|h| h.id.as_str()).collect();
                    return Err(Problem::conflict(
                        field,
                        format!(
                            "hostname {:?} belongs to several hosts ({}); use the host ID",
                            truncate(ident, 128),
                            ids.join(", ")
                        ),
                    ));
                }
            }
        }
    };
    authorize(state, who, permission, Some(&host.labels), &format!("host:{}", host.id)).await?;
    Ok(host)
}

// ---------------------------------------------------------------- tokens

/// `POST /api/v1/tokens` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// A name for people (1 to 128 printable characters).
    pub name: String,
    /// `viewer`, `operator`, `deployer`, `admin` or a custom role.
    pub role: String,
    /// Label selector: the token sees and acts on matching hosts only.
    #[serde(default)]
    pub scope: Option<String>,
    /// Lifetime, e.g. `30d` (default: no expiry).
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "30d")]
    pub ttl: Option<Duration>,
}

/// An API token (never its secret, except `token` once at creation).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub role: String,
    /// Label selector; empty: unscoped.
    pub scope: String,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
    pub last_used_at_ms: Option<i64>,
    /// Neither revoked nor expired.
    pub active: bool,
    /// The full token: present only in the answer to its creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl TokenView {
    fn new(t: ApiToken, now_ms: i64) -> Self {
        TokenView {
            active: t.is_active(now_ms),
            id: t.id,
            name: t.name,
            role: t.role,
            scope: t.scope,
            created_at_ms: t.created_ms,
            expires_at_ms: t.expires_ms,
            revoked_at_ms: t.revoked_ms,
            last_used_at_ms: t.last_used_ms,
            token: None,
        }
    }
}

fn parse_scope(raw: Option<&str>) -> Result<Selector, Problem> {
    match raw.map(str::trim) {
        None | Some("") => Ok(Selector::everything()),
        Some(s) => Selector::parse(s).map_err(|e| Problem::invalid("scope", e.to_string())),
    }
}

/// Audits an escalation attempt and returns its 403.
async fn refuse_escalation(state: &ApiState, who: &Principal, action: &str, target: &str, why: String) -> Problem {
    let detail = format!("refused: {why}");
    if let Admission::Record { .. } = state.audit.denials.admit() {
        let entry = who
            .audit(action, Outcome::Denied)
            .target(target)
            .details(serde_json::json!({ "reason": detail }));
        if let Err(error) = state.store.append_audit(entry).await {
            tracing::warn!(%error, "could not audit a refused request");
        }
    } else {
        state.metrics.denial_unaudited();
    }
    Problem::forbidden(detail)
}

/// Longest an escalation check may compute before it is refused as too complex.
const COVERS_DEADLINE: std::time::Duration = std::time::Duration::from_secs(1);

/// [`Authority::covers`] off the async workers (`spawn_blocking`), within
/// the default work budget and [`COVERS_DEADLINE`].
pub(super) async fn covers_off_thread(caller: &Arc<Authority>, new: Authority) -> Result<(), EscalationError> {
    let caller = caller.clone();
    let budget = Budget {
        deadline: Some(std::time::Instant::now() + COVERS_DEADLINE),
        ..Budget::default()
    };
    tokio::task::spawn_blocking(move || caller.covers_within(&new, &budget).result)
        .await
        .unwrap_or(Err(EscalationError::TooComplex))
}

/// The answer to a failed escalation check: 403 (audited) for a grant the
/// caller lacks, 422 naming `field` for a policy too complex to verify.
async fn escalation_problem(
    state: &ApiState,
    who: &Principal,
    action: &str,
    target: &str,
    why: EscalationError,
    field: &str,
    context: &str,
) -> Problem {
    match why {
        EscalationError::TooComplex => Problem::unprocessable(field, format!("{context}{why}")),
        EscalationError::NotHeld { .. } => {
            refuse_escalation(state, who, action, target, format!("{context}{why}")).await
        }
    }
}

pub async fn create_token(
    state: ApiState,
    who: Principal,
    query: String,
    body: bytes::Bytes,
) -> Result<Response, Problem> {
    Params::parse(&query, &[])?;
    let req: CreateToken = parse_body(&body)?;
    let scope = parse_scope(req.scope.as_deref())?;
    let role = find_role(&state, req.role.trim())
        .await
        .map_err(Problem::from_store)?
        .ok_or_else(|| {
            Problem::invalid(
                "role",
                format!(
                    "no role {:?}; see GET /api/v1/roles (built in: viewer, operator, deployer, admin)",
                    truncate(&req.role, 64)
                ),
            )
        })?;
    let ttl = req.ttl.map(|d| d.as_std());
    if ttl.is_some_and(|t| t.is_zero() || t.as_secs() > MAX_TOKEN_TTL_SECS) {
        return Err(Problem::invalid("ttl", "must be more than 0s and at most 366d"));
    }
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err(Problem::invalid("name", "must be 1 to 128 printable characters"));
    }
    let new = Authority::new(role.rules.clone(), scope.clone());
    if let Err(why) = covers_off_thread(&who.authority, new).await {
        return Err(escalation_problem(&state, &who, auth::TOKENS_CREATE, "tokens", why, "role", "").await);
    }
    // A token expires no later than the token that made it, and is revoked with it.
    let maker = state
        .store
        .find_api_token(&who.token_id)
        .await
        .map_err(Problem::from_store)?;
    let (token, stored) = auth::create_token_by(
        &state.store,
        who.audit(auth::TOKENS_CREATE, Outcome::Success),
        NewToken {
            name,
            role: &role.name,
            scope: &scope,
            ttl,
            parent: maker.as_ref().map(|m| m.id.as_str()),
            expires_by_ms: maker.as_ref().and_then(|m| m.expires_ms),
        },
    )
    .await
    .map_err(|e| match e {
        StoreError::Invalid(m) => Problem::invalid("name", m),
        e => Problem::from_store(e),
    })?;
    tracing::info!(token_id = %stored.id, role = %stored.role, scope = %stored.scope, by = %who.token_id, "API token created");
    let mut view = TokenView::new(stored, steward_shared::now_ms());
    view.token = Some(token);
    Ok(json(StatusCode::CREATED, &view))
}

/// `GET /api/v1/tokens?limit=&cursor=` (by ID).
pub async fn list_tokens(state: ApiState, _who: Principal, query: String) -> Result<Response, Problem> {
    let p = Params::parse(&query, &["limit", "cursor"])?;
    let limit = p.limit()?;
    let after = parse_name_cursor(p.get("cursor"))?;
    let mut tokens = state.store.list_api_tokens().await.map_err(Problem::from_store)?;
    tokens.sort_by(|a, b| a.id.cmp(&b.id));
    let now = steward_shared::now_ms();
    let views: Vec<TokenView> = tokens
        .into_iter()
        .filter(|t| after.as_deref().is_none_or(|a| t.id.as_str() > a))
        .map(|t| TokenView::new(t, now))
        .collect();
    Ok(json(StatusCode::OK, &page(views, limit, |t| t.id.clone())))
}

/// `DELETE /api/v1/tokens/{id}`: revokes; the holder may revoke its own
/// token, others only one that grants nothing they lack.
pub async fn revoke_token(state: ApiState, who: Principal, id: String, query: String) -> Result<Response, Problem> {
    Params::parse(&query, &[])?;
    let not_found = || {
        let mut p = Problem::not_found(format!("no active token {:?}", truncate(&id, 64)));
        p.field = Some("id".into());
        p
    };
    let Some(token) = state.store.find_api_token(&id).await.map_err(Problem::from_store)? else {
        return Err(not_found());
    };
    if token.id != who.token_id {
        let scope = Selector::parse(&token.scope).unwrap_or_default();
        let theirs = authority_of(&state, &token.role, scope)
            .await
            .map_err(Problem::from_store)?;
        if let Err(why) = covers_off_thread(&who.authority, theirs).await {
            let target = format!("token:{id}");
            let context = "that token has more rights than yours: ";
            return Err(escalation_problem(&state, &who, auth::TOKENS_REVOKE, &target, why, "id", context).await);
        }
    }
    if !auth::revoke_token_by(&state.store, who.audit(auth::TOKENS_REVOKE, Outcome::Success), &id)
        .await
        .map_err(Problem::from_store)?
    {
        return Err(not_found());
    }
    tracing::warn!(token_id = %id, by = %who.token_id, "API token revoked");
    let token = state
        .store
        .find_api_token(&id)
        .await
        .map_err(Problem::from_store)?
        .ok_or_else(not_found)?;
    Ok(json(StatusCode::OK, &TokenView::new(token, steward_shared::now_ms())))
}

// ---------------------------------------------------------------- roles

/// A role: built in, from the config file, or defined through the API.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RoleView {
    pub name: String,
    pub description: String,
    pub source: RoleSource,
    pub rules: Vec<RuleSpec>,
}

impl From<&RoleDef> for RoleView {
    fn from(r: &RoleDef) -> Self {
        RoleView {
            name: r.name.clone(),
            description: r.description.clone(),
            source: r.source,
            rules: r.rules.iter().map(rbac::Rule::to_spec).collect(),
        }
    }
}

/// `PUT /api/v1/roles/{name}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutRole {
    #[serde(default)]
    pub description: Option<String>,
    /// Allow and deny rules; a matching deny wins; default deny.
    pub rules: Vec<RuleSpec>,
}

async fn all_roles(state: &ApiState) -> Result<Vec<RoleDef>, Problem> {
    let mut roles = rbac::builtins();
    roles.extend(state.rbac.config_roles.values().cloned());
    for stored in state.store.list_roles().await.map_err(Problem::from_store)? {
        if roles.iter().any(|r| r.name == stored.name) {
            continue; // a config role shadows a stored one of the same name
        }
        let rules = rbac::parse_rules(&stored.rules).unwrap_or_default();
        roles.push(RoleDef {
            name: stored.name,
            description: stored.description,
            rules,
            source: RoleSource::Api,
        });
    }
    roles.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(roles)
}

/// `GET /api/v1/roles?limit=&cursor=` (by name).
pub async fn list_roles(state: ApiState, _who: Principal, query: String) -> Result<Response, Problem> {
    let p = Params::parse(&query, &["limit", "cursor"])?;
    let limit = p.limit()?;
    let after = parse_name_cursor(p.get("cursor"))?;
    let views: Vec<RoleView> = all_roles(&state)
        .await?
        .iter()
        .filter(|r| after.as_deref().is_none_or(|a| r.name.as_str() > a))
        .map(RoleView::from)
        .collect();
    Ok(json(StatusCode::OK, &page(views, limit, |r| r.name.clone())))
}

fn role_not_found(name: &str) -> Problem {
    let mut p = Problem::not_found(format!("no role {:?}", truncate(name, 64)));
    p.field = Some("name".into());
    p
}

/// `GET /api/v1/roles/{name}`.
pub async fn get_role(state: ApiState, _who: Principal, name: String, query: String) -> Result<Response, Problem> {
    Params::parse(&query, &[])?;
    let role = find_role(&state, &name)
        .await
        .map_err(Problem::from_store)?
        .ok_or_else(|| role_not_found(&name))?;
    Ok(json(StatusCode::OK, &RoleView::from(&role)))
}

/// Refuses names of built-in and config roles (409) and malformed names (400).
fn check_writable(state: &ApiState, name: &str) -> Result<(), Problem> {
    if !rbac::valid_role_name(name) {
        return Err(Problem::invalid(
            "name",
            "a role name is 1 to 64 lowercase letters, digits, `-` and `_`, starting with a letter",
        ));
    }
    if rbac::builtin(name).is_some() {
        return Err(Problem::conflict(
            "name",
            format!("{name} is a built-in role and cannot be changed"),
        ));
    }
    if state.rbac.config_roles.contains_key(name) {
        return Err(Problem::conflict(
            "name",
            format!("{name} is defined in the control plane's config file; change it there"),
        ));
    }
    Ok(())
}

/// `PUT /api/v1/roles/{name}`: creates or replaces a custom role.
pub async fn put_role(
    state: ApiState,
    who: Principal,
    name: String,
    query: String,
    body: bytes::Bytes,
) -> Result<Response, Problem> {
    Params::parse(&query, &[])?;
    check_writable(&state, &name)?;
    let req: PutRole = parse_body(&body)?;
    if req.rules.len() > MAX_RULES {
        return Err(Problem::invalid("rules", format!("at most {MAX_RULES} rules")));
    }
    let description = req.description.unwrap_or_default();
    if description.chars().count() > 1024 || description.chars().any(|c| c.is_control() && c != '\n') {
        return Err(Problem::invalid("description", "at most 1024 printable characters"));
    }
    let rules = rbac::parse_rules(&req.rules).map_err(|(field, message)| Problem::invalid(&field, message))?;
    let target = format!("role:{name}");
    // The role as it is (tokens hold it now) and as it would be: the caller holds both.
    if let Some(old) = find_role(&state, &name).await.map_err(Problem::from_store)? {
        let old = Authority::new(old.rules, Selector::everything());
        if let Err(why) = covers_off_thread(&who.authority, old).await {
            let context = "the role as it is now grants more than you hold: ";
            return Err(escalation_problem(&state, &who, "roles.put", &target, why, "name", context).await);
        }
    }
    if let Err(why) = covers_off_thread(&who.authority, Authority::new(rules.clone(), Selector::everything())).await {
        return Err(escalation_problem(&state, &who, "roles.put", &target, why, "rules", "").await);
    }
    let specs: Vec<RuleSpec> = rules.iter().map(rbac::Rule::to_spec).collect();
    let audit = who
        .audit("roles.put", Outcome::Success)
        .target(format!("role:{name}"))
        .details(serde_json::json!({ "description": description, "rules": specs }));
    let created = state
        .store
        .put_role(&name, &description, &specs, audit, steward_shared::now_ms())
        .await
        .map_err(Problem::from_store)?;
    tracing::info!(role = %name, by = %who.token_id, created, "role written");
    let view = RoleView {
        name,
        description,
        source: RoleSource::Api,
        rules: specs,
    };
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(json(status, &view))
}

/// `DELETE /api/v1/roles/{name}`: refused (409) while active tokens use it.
pub async fn delete_role(state: ApiState, who: Principal, name: String, query: String) -> Result<Response, Problem> {
    Params::parse(&query, &[])?;
    check_writable(&state, &name)?;
    let now = steward_shared::now_ms();
    let users = state
        .store
        .list_api_tokens()
        .await
        .map_err(Problem::from_store)?
        .into_iter()
        .filter(|t| t.role == name && t.is_active(now))
        .count();
    if users > 0 {
        return Err(Problem::conflict(
            "name",
            format!("{users} active token(s) have role {name}; revoke them first"),
        ));
    }
    let Some(role) = find_role(&state, &name).await.map_err(Problem::from_store)? else {
        return Err(role_not_found(&name));
    };
    if let Err(why) = covers_off_thread(&who.authority, Authority::new(role.rules, Selector::everything())).await {
        let (target, context) = (format!("role:{name}"), "the role grants more than you hold: ");
        return Err(escalation_problem(&state, &who, "roles.delete", &target, why, "name", context).await);
    }
    let audit = who
        .audit("roles.delete", Outcome::Success)
        .target(format!("role:{name}"));
    if !state
        .store
        .delete_role(&name, audit)
        .await
        .map_err(Problem::from_store)?
    {
        return Err(role_not_found(&name));
    }
    tracing::info!(role = %name, by = %who.token_id, "role deleted");
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "name": name, "deleted": true }),
    ))
}

// ---------------------------------------------------------------- labels

/// `PUT /api/v1/hosts/{host}/labels` body: the host's new labels (all of them).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutLabels {
    pub labels: BTreeMap<String, String>,
}

/// `PUT /api/v1/hosts/{host}/labels`: replaces the host's control-plane
/// labels (what selectors, scopes and host-limited rules match). The new
/// labels must still be ones the caller may label (no pushing a host into
/// someone else's scope).
pub async fn put_host_labels(
    state: ApiState,
    who: Principal,
    host: String,
    query: String,
    body: bytes::Bytes,
) -> Result<Response, Problem> {
    Params::parse(&query, &[])?;
    let req: PutLabels = parse_body(&body)?;
    if req.labels.len() > 64 {
        return Err(Problem::invalid("labels", "at most 64 labels"));
    }
    for (k, v) in &req.labels {
        validate_label(k, "key").map_err(|e| Problem::invalid("labels", e))?;
        validate_label(v, "value").map_err(|e| Problem::invalid("labels", e))?;
    }
    let host = resolve_host_id_for(&state, &who, &host, "hosts:label", "host").await?;
    let target = format!("host:{}", host.id);
    authorize(&state, &who, "hosts:label", Some(&req.labels), &target).await?;
    check_label_reach(&state, &who, "hosts:label", Some(&host.labels), &req.labels, &target).await?;
    let audit = who
        .audit(SET_HOST_LABELS, Outcome::Success)
        .target(target.as_str())
        .details(serde_json::json!({ "before": host.labels, "after": req.labels }));
    if !state
        .store
        .set_host_labels_audited(&host.id, &req.labels, audit)
        .await
        .map_err(Problem::from_store)?
    {
        return Err(Problem::not_found(format!("host {:?} not found", host.id)));
    }
    tracing::info!(host = %host.id, by = %who.token_id, labels = ?req.labels, "host relabelled");
    let counts = state
        .store
        .status_counts(&[host.id.as_str()])
        .await
        .map_err(Problem::from_store)?
        .remove(&host.id)
        .unwrap_or_else(StatusCounts::default);
    let mut host = host;
    host.labels = req.labels;
    let view = HostView::new(
        host,
        counts,
        steward_shared::now_ms(),
        i64::try_from(state.offline_after.as_millis()).unwrap_or(i64::MAX),
    );
    Ok(json(StatusCode::OK, &view))
}

/// Every selector that decides who may act on a host: the scopes of
/// active tokens and the host limits of every role's rules (built-in,
/// config, stored). A label key none of them mentions changes no one's reach.
async fn reach_selectors(state: &ApiState) -> Result<Vec<Selector>, Problem> {
    let now = steward_shared::now_ms();
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    let mut add = |sel: Selector| {
        if !sel.is_empty() && seen.insert(sel.to_string()) {
            out.push(sel);
        }
    };
    for t in state.store.list_api_tokens().await.map_err(Problem::from_store)? {
        if t.is_active(now) {
            match Selector::parse(&t.scope) {
                Ok(sel) => add(sel),
                // Unreadable: such a token is refused anyway (auth), nothing to protect.
                Err(_) => continue,
            }
        }
    }
    for role in all_roles(state).await? {
        for rule in role.rules {
            if let Some(sel) = rule.hosts {
                add(sel);
            }
        }
    }
    Ok(out)
}

/// Refuses a change of a host's labels (from `old`; `None`: a host yet to
/// enroll, judged as a host without labels that gets `new`) to `new` that
/// moves the host into or out of a token scope or a role rule's hosts, unless the caller holds `permission` on every host
/// that selector matches. So a `team=web` operator cannot add `env=prod`
/// while some token or rule selects `env=prod` hosts: keys used by scopes
/// and rules are protected; other keys are free.
pub(super) async fn check_label_reach(
    state: &ApiState,
    who: &Principal,
    permission: &str,
    old: Option<&Labels>,
    new: &Labels,
    target: &str,
) -> Result<(), Problem> {
    if who.authority.allows_fleet(permission) {
        return Ok(()); // holds it on every host: any selector is within its reach
    }
    let moved: Vec<Selector> = reach_selectors(state)
        .await?
        .into_iter()
        .filter(|sel| match old {
            Some(o) => sel.matches(o) != sel.matches(new),
            // A new host: what its labels add to a host with none (it leaves nothing).
            None => sel.matches(new) && !sel.matches(&Labels::new()),
        })
        .collect();
    if moved.is_empty() {
        return Ok(());
    }
    let (caller, permission_owned) = (who.authority.clone(), permission.to_string());
    let deadline = std::time::Instant::now() + COVERS_DEADLINE;
    let verdict = tokio::task::spawn_blocking(move || {
        let Ok(pattern) = rbac::Pattern::parse(&permission_owned) else {
            return Err((String::new(), EscalationError::TooComplex));
        };
        for sel in moved {
            let everywhere = Authority::new(
                vec![rbac::Rule {
                    effect: rbac::Effect::Allow,
                    pattern: pattern.clone(),
                    hosts: None,
                }],
                sel.clone(),
            );
            let budget = Budget {
                deadline: Some(deadline),
                ..Budget::default()
            };
            if let Err(e) = caller.covers_within(&everywhere, &budget).result {
                return Err((sel.to_string(), e));
            }
        }
        Ok(())
    })
    .await
    .unwrap_or(Err((String::new(), EscalationError::TooComplex)));
    match verdict {
        Ok(()) => Ok(()),
        Err((_, EscalationError::TooComplex)) => Err(Problem::unprocessable(
            "labels",
            "the label change cannot be verified against the scopes and roles in use; ask an administrator",
        )),
        Err((sel, EscalationError::NotHeld { .. })) => {
            let reason = format!(
                "the labels would move the host into or out of the hosts selected by `{sel}` (a token scope or role rule), where the token does not hold {permission} on every host"
            );
            record_forbidden(state, who, permission, target, &reason).await;
            Err(Problem::forbidden(reason))
        }
    }
}

// ---------------------------------------------------------------- paging

fn parse_name_cursor(raw: Option<&str>) -> Result<Option<String>, Problem> {
    raw.map(|c| {
        URL_SAFE_NO_PAD
            .decode(c)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| Problem::invalid("cursor", "not a cursor returned by this list"))
    })
    .transpose()
}

fn page<T>(items: Vec<T>, limit: usize, key: impl Fn(&T) -> String) -> ListView<T> {
    let mut items = items;
    let has_more = items.len() > limit;
    items.truncate(limit);
    let next_cursor = has_more
        .then(|| items.last().map(|last| URL_SAFE_NO_PAD.encode(key(last))))
        .flatten();
    ListView { items, next_cursor }
}
