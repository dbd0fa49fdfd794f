//! The route table: every REST route, its method, path template, the one
//! permission it requires and how it relates to hosts. It is the single
//! place where a route's permission is declared: the warp filters
//! ([`super::authorized`]) look their row up here, the metrics label routes
//! with it ([`super::route_template`]), and the tests check every row
//! against every built-in role and against the OpenAPI document.
//!
//! Adding a route: one row here, then its filter in `api/mod.rs` with
//! `.and(authorized(state.clone(), "METHOD", "/api/v1/..."))`, and its
//! `#[utoipa::path]` in [`super::openapi`]'s list (ARCHITECTURE.md).

/// How a route relates to hosts, i.e. what a token's scope does to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hosts {
    /// Not about hosts (roles, SLOs, the token list): the token's scope
    /// does not restrict the route, but its role must grant the permission
    /// on every host (a rule limited to some hosts does not open it).
    Global,
    /// Creates or removes something whose reach over hosts the handler
    /// checks against the caller's (tokens and roles: no escalation;
    /// enrollment tokens: their labels): a host-limited rule opens the
    /// route, the handler decides host by host.
    Grant,
    /// The path names one host, or one thing of one host (a job): the
    /// handler resolves the host with [`super::rbac::resolve_host_for`] (or
    /// checks the job's host with [`super::auth::Principal::allows`]); a host
    /// the caller may not read is a 404, one it may read but not act on a 403.
    One,
    /// A list over hosts: filtered with [`super::auth::Principal::host_filter`]
    /// before paging, so nothing outside the scope is shown or counted. Also
    /// a change on hosts chosen in the body (`POST /api/v1/jobs`: one host,
    /// or every host of a selector *that the caller may act on*).
    Filtered,
    /// Shows or changes fleet-wide data that cannot be filtered by host
    /// (the audit log, silences): unscoped tokens whose rules grant the
    /// permission on every host only.
    Fleet,
}

/// One route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    /// `GET`, `POST`, `PUT` or `DELETE`.
    pub method: &'static str,
    /// Path template, segments in braces: `/api/v1/hosts/{host}`.
    pub path: &'static str,
    /// `resource:action`; `None`: no token needed.
    pub permission: Option<&'static str>,
    pub hosts: Hosts,
}

const fn public(method: &'static str, path: &'static str) -> RouteSpec {
    RouteSpec {
        method,
        path,
        permission: None,
        hosts: Hosts::Global,
    }
}

const fn route(method: &'static str, path: &'static str, permission: &'static str, hosts: Hosts) -> RouteSpec {
    RouteSpec {
        method,
        path,
        permission: Some(permission),
        hosts,
    }
}

/// Every route of the REST API.
pub const TABLE: &[RouteSpec] = &[
    public("GET", "/healthz"),
    public("GET", "/readyz"),
    public("GET", "/metrics"),
    public("GET", "/api/v1/openapi.json"),
    route("GET", "/api/v1/hosts", "hosts:read", Hosts::Filtered),
    route("GET", "/api/v1/hosts/{host}", "hosts:read", Hosts::One),
    route("GET", "/api/v1/hosts/{host}/checks", "checks:read", Hosts::One),
    route("POST", "/api/v1/hosts/{host}/revoke", "hosts:revoke", Hosts::One),
    route("PUT", "/api/v1/hosts/{host}/labels", "hosts:label", Hosts::One),
    route("GET", "/api/v1/checks", "checks:read", Hosts::Filtered),
    route(
        "POST",
        "/api/v1/enrollment-tokens",
        "enrollment-tokens:create",
        Hosts::Grant,
    ),
    route(
        "GET",
        "/api/v1/enrollment-tokens",
        "enrollment-tokens:read",
        Hosts::Grant,
    ),
    route(
        "DELETE",
        "/api/v1/enrollment-tokens/{id}",
        "enrollment-tokens:revoke",
        Hosts::Grant,
    ),
    route("GET", "/api/v1/audit", "audit:read", Hosts::Fleet),
    route("GET", "/api/v1/audit/export", "audit:read", Hosts::Fleet),
    route("POST", "/api/v1/tokens", "tokens:create", Hosts::Grant),
    route("GET", "/api/v1/tokens", "tokens:read", Hosts::Global),
    route("DELETE", "/api/v1/tokens/{id}", "tokens:revoke", Hosts::Grant),
    route("GET", "/api/v1/roles", "roles:read", Hosts::Global),
    route("GET", "/api/v1/roles/{name}", "roles:read", Hosts::Global),
    route("PUT", "/api/v1/roles/{name}", "roles:write", Hosts::Grant),
    route("DELETE", "/api/v1/roles/{name}", "roles:delete", Hosts::Grant),
    route("POST", "/api/v1/jobs", "jobs:create", Hosts::Filtered),
    route("GET", "/api/v1/jobs", "jobs:read", Hosts::Filtered),
    route("GET", "/api/v1/jobs/{id}", "jobs:read", Hosts::One),
    route("GET", "/api/v1/jobs/{id}/output", "jobs:read", Hosts::One),
    route("POST", "/api/v1/jobs/{id}/cancel", "jobs:cancel", Hosts::One),
    route("GET", "/api/v1/backups", "backups:read", Hosts::Filtered),
    route("PUT", "/api/v1/slos/{name}", "slos:write", Hosts::Global),
    route("GET", "/api/v1/slos", "slos:read", Hosts::Global),
    route("GET", "/api/v1/slos/{name}", "slos:read", Hosts::Global),
    route("POST", "/api/v1/rollouts", "rollouts:write", Hosts::Filtered),
    route("GET", "/api/v1/rollouts", "rollouts:read", Hosts::Filtered),
    route("GET", "/api/v1/rollouts/{id}", "rollouts:read", Hosts::One),
    route("POST", "/api/v1/rollouts/{id}/pause", "rollouts:write", Hosts::One),
    route("POST", "/api/v1/rollouts/{id}/resume", "rollouts:write", Hosts::One),
    route("POST", "/api/v1/rollouts/{id}/abort", "rollouts:write", Hosts::One),
    route("GET", "/api/v1/alerts", "alerts:read", Hosts::Filtered),
    route("GET", "/api/v1/alerts/{id}", "alerts:read", Hosts::One),
    route("POST", "/api/v1/alerts/{id}/ack", "alerts:write", Hosts::One),
    route("GET", "/api/v1/silences", "alerts:read", Hosts::Fleet),
    route("POST", "/api/v1/silences", "alerts:write", Hosts::Fleet),
    route("DELETE", "/api/v1/silences/{id}", "alerts:write", Hosts::Fleet),
    route("GET", "/api/v1/kpis", "kpis:read", Hosts::Filtered),
    route("GET", "/api/v1/kpis/{name}", "kpis:read", Hosts::Filtered),
];

/// The row of `method` `path` (a template, exactly as in [`TABLE`]).
///
/// # Panics
/// When there is none: a filter names a route missing from the table (a
/// programming error every API test catches, since they all build the filters).
pub fn spec(method: &str, path: &str) -> &'static RouteSpec {
    TABLE
        .iter()
        .find(|r| r.method == method && r.path == path)
        .unwrap_or_else(|| panic!("route {method} {path} is missing from api::routes::TABLE"))
}

/// The methods of the route template `path` (for `Allow` on a 405).
pub fn methods_of(path: &str) -> Vec<&'static str> {
    TABLE.iter().filter(|r| r.path == path).map(|r| r.method).collect()
}

/// The template of a concrete request path (any method), if it is a route.
pub fn template_of(path: &str) -> Option<&'static str> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let is_param = |t: &str| t.starts_with('{') && t.ends_with('}');
    // The most literal template wins (`/audit/export` over a `{param}`).
    TABLE
        .iter()
        .map(|r| r.path)
        .filter(|template| {
            let t: Vec<&str> = template.split('/').filter(|s| !s.is_empty()).collect();
            t.len() == segments.len() && t.iter().zip(&segments).all(|(t, s)| is_param(t) || t == s)
        })
        .min_by_key(|template| template.split('/').filter(|t| is_param(t)).count())
}
