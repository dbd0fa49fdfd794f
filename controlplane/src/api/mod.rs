//! The REST API (warp), laid out as warp's `todos` example: filters here,
//! [`handlers`], [`views`] (the JSON models), and one [`problem::recover`]
//! that turns every rejection into `application/problem+json`.
//!
//! Routes: every route, its method and its one permission are in
//! [`routes::TABLE`]; `GET /healthz`, `/readyz`, `/metrics` and
//! `/api/v1/openapi.json` need no token, every other `/api/v1` route a bearer
//! token whose role and scope allow it ([`rbac`]); the job and backup routes
//! are in [`jobs`]. ARCHITECTURE.md, "Adding a route", says how to add one.
//!
//! Invariants:
//! - Paths are matched before methods and before authentication, so an
//!   unknown path is a 404, a known path with another method a 405, and a
//!   known `/api/v1` path without a valid token a 401.
//! - Every response (errors included) carries `X-Request-Id`: a sane incoming
//!   one (1-128 of `A-Za-z0-9._:-`) or a new random one. The request's
//!   tracing span carries it too, and so does every audit entry the request
//!   appends ([`auth::Principal::request_id`]). The server
//!   ([`crate::rest_serve`]) assigns one before routing when the client sent
//!   none, so every filter that reads it sees the same ID.
//! - A request refused for its token (401) appends an `api.authenticate`
//!   audit entry, within the `audit.denials_per_minute` budget.
//! - Unknown query parameters are refused with 400 (see [`params`]).
//! - Metrics use the route template, never the raw path.
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderMap;
use http::header::{AUTHORIZATION, HeaderValue};
use rand::Rng;
use warp::filters::path::FullPath;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::metrics::Metrics;
use crate::store::Store;

pub mod alerts;
#[cfg(test)]
mod alerts_tests;
pub mod audit;
#[cfg(test)]
mod audit_tests;
pub mod auth;
pub mod handlers;
pub mod identity;
#[cfg(test)]
mod identity_tests;
pub mod jobs;
pub mod kpis;
pub mod openapi;
pub mod params;
pub mod problem;
pub mod rbac;
#[cfg(test)]
mod rbac_tests;
pub mod rollouts;
pub mod routes;
pub mod slo;
#[cfg(test)]
mod slo_tests;
#[cfg(test)]
mod tests;
pub mod views;

pub use auth::{create_admin_token, create_token, token_is_valid};
pub use problem::Problem;

/// Everything the handlers need. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ApiState {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// A host is `online` when it was seen within this long.
    pub offline_after: Duration,
    /// SHA-256 of the CA certificate, for enrollment tokens (`None`: no CA here).
    pub ca_fingerprint: Option<String>,
    /// Default lifetime of enrollment tokens.
    pub enrollment_token_ttl: Duration,
    /// Export signing and the budget of recorded denials.
    pub audit: audit::AuditApi,
    /// Counts `/api/v1` requests for the API availability and latency SLIs.
    pub api_sli: Arc<crate::slo::sli::ApiRecorder>,
    /// Roles from the config file and per-token rate limits.
    pub rbac: rbac::RbacApi,
    /// Wakes the job dispatcher (jobs created or cancelled) and its settings.
    pub jobs: crate::jobs::dispatcher::JobsHandle,
}

impl ApiState {
    pub fn new(store: Store, metrics: Arc<Metrics>, offline_after: Duration) -> Self {
        ApiState {
            metrics,
            offline_after,
            ca_fingerprint: None,
            enrollment_token_ttl: Duration::from_secs(3600),
            audit: audit::AuditApi::default(),
            rbac: rbac::RbacApi::default(),
            jobs: crate::jobs::dispatcher::JobsHandle::default(),
            api_sli: Arc::new(crate::slo::sli::ApiRecorder::new(store.sli_handle())),
            store,
        }
    }

    /// Roles from the config file and per-token rate limits.
    pub fn with_rbac(mut self, rbac: rbac::RbacApi) -> Self {
        self.rbac = rbac;
        self
    }

    /// Uses this process's job dispatcher.
    pub fn with_jobs(mut self, jobs: crate::jobs::dispatcher::JobsHandle) -> Self {
        self.jobs = jobs;
        self
    }

    /// Signs audit exports with `signer`; records at most
    /// `denials_per_minute` refused requests one by one.
    pub fn with_audit(self, signer: Arc<crate::audit::signing::Signer>, denials_per_minute: u32) -> Self {
        self.with_audit_budget(
            signer,
            Arc::new(crate::audit::denials::DenialLimiter::per_minute(denials_per_minute)),
        )
    }

    /// Like [`ApiState::with_audit`], with a denial budget shared with others
    /// (the gateway's refused enrollments draw from the same one).
    pub fn with_audit_budget(
        mut self,
        signer: Arc<crate::audit::signing::Signer>,
        denials: Arc<crate::audit::denials::DenialLimiter>,
    ) -> Self {
        self.audit = audit::AuditApi {
            signer: Some(signer),
            denials,
        };
        self
    }

    /// Enables enrollment-token creation for the CA with this fingerprint.
    pub fn with_enrollment(mut self, ca_fingerprint: Option<String>, token_ttl: Duration) -> Self {
        self.ca_fingerprint = ca_fingerprint;
        self.enrollment_token_ttl = token_ttl;
        self
    }

    fn offline_after_ms(&self) -> i64 {
        i64::try_from(self.offline_after.as_millis()).unwrap_or(i64::MAX)
    }
}

/// The whole REST API. Never rejects: every outcome is a response.
pub fn routes(
    state: ApiState,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone + Send + Sync + 'static {
    let metrics = state.metrics.clone();
    let api_sli = state.api_sli.clone();

    let healthz = warp::path!("healthz").and(warp::get()).then(handlers::healthz);
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with_state(state.clone()))
        .then(handlers::readyz);
    let metrics_route = warp::path!("metrics")
        .and(warp::get())
        .and(with_state(state.clone()))
        .then(handlers::metrics);

    let list_hosts = warp::path!("api" / "v1" / "hosts")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "GET", "/api/v1/hosts"))
        .and(raw_query())
        .then(handlers::list_hosts);
    let get_host = warp::path!("api" / "v1" / "hosts" / String)
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "GET", "/api/v1/hosts/{host}"))
        .and_then(|host: String, state: ApiState, who| async move { decoded_segment(host).map(|h| (state, who, h)) })
        .untuple_one()
        .and(raw_query())
        .then(handlers::get_host);
    let host_checks = warp::path!("api" / "v1" / "hosts" / String / "checks")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "GET", "/api/v1/hosts/{host}/checks"))
        .and_then(|host: String, state: ApiState, who| async move { decoded_segment(host).map(|h| (state, who, h)) })
        .untuple_one()
        .and(raw_query())
        .then(handlers::host_checks);
    let list_checks = warp::path!("api" / "v1" / "checks")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "GET", "/api/v1/checks"))
        .and(raw_query())
        .then(handlers::list_checks);
    let audit_list = warp::path!("api" / "v1" / "audit")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "GET", "/api/v1/audit"))
        .and(raw_query())
        .then(audit::list);
    let audit_export = warp::path!("api" / "v1" / "audit" / "export")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "GET", "/api/v1/audit/export"))
        .and(raw_query())
        .then(audit::export);
    let create_enrollment_token = warp::path!("api" / "v1" / "enrollment-tokens")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "POST", "/api/v1/enrollment-tokens"))
        .and(raw_query())
        .and(warp::body::content_length_limit(identity::MAX_BODY))
        .and(warp::body::bytes())
        .then(identity::create_enrollment_token);
    let list_enrollment_tokens = warp::path!("api" / "v1" / "enrollment-tokens")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "GET", "/api/v1/enrollment-tokens"))
        .and(raw_query())
        .then(identity::list_enrollment_tokens);
    let revoke_enrollment_token = warp::path!("api" / "v1" / "enrollment-tokens" / String)
        .and(warp::delete())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "DELETE", "/api/v1/enrollment-tokens/{id}"))
        .and_then(|id: String, state: ApiState, who| async move { decoded_segment(id).map(|i| (state, who, i)) })
        .untuple_one()
        .and(raw_query())
        .then(identity::revoke_enrollment_token);
    let job_routes = jobs_routes(state.clone());
    let rollout_routes = rollouts::routes(state.clone());
    let kpi_routes = kpis_routes(state.clone());
    let revoke_host = warp::path!("api" / "v1" / "hosts" / String / "revoke")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "POST", "/api/v1/hosts/{host}/revoke"))
        .and_then(|host: String, state: ApiState, who| async move { decoded_segment(host).map(|h| (state, who, h)) })
        .untuple_one()
        .and(raw_query())
        .then(identity::revoke_host);
    let rbac_routes = rbac_routes(state.clone());
    let openapi_doc = warp::path!("api" / "v1" / "openapi.json")
        .and(warp::get())
        .and(raw_query())
        .then(openapi::serve);
    let slo_routes = slo::routes(state.clone());
    let alert_routes = alerts::routes(state.clone());

    let api = list_hosts
        .or(get_host)
        .unify()
        .or(host_checks)
        .unify()
        .or(list_checks)
        .unify()
        .or(create_enrollment_token)
        .unify()
        .or(list_enrollment_tokens)
        .unify()
        .or(revoke_enrollment_token)
        .unify()
        .or(revoke_host)
        .unify()
        .or(audit_list)
        .unify()
        .or(audit_export)
        .unify()
        // Boxed halfway: a long chain of `or` types makes type checking very slow.
        .boxed()
        .or(rbac_routes)
        .unify()
        .or(openapi_doc)
        .unify()
        .or(job_routes)
        .unify()
        .or(slo_routes)
        .unify()
        .or(rollout_routes)
        .unify()
        .or(alert_routes)
        .unify()
        // Boxed again before the next groups, for the same reason.
        .boxed()
        .or(kpi_routes)
        .unify()
        .map(|r: Result<Response, Problem>| r.unwrap_or_else(Problem::into_response));

    let app = healthz
        .or(readyz)
        .unify()
        .or(metrics_route)
        .unify()
        .or(api)
        .unify()
        .recover(problem::recover)
        .unify();

    warp::any()
        .map(Instant::now)
        .and(warp::method())
        .and(warp::path::full())
        .and(request_id())
        .and(app)
        .map(move |start: Instant, method: http::Method, path: FullPath, id: HeaderValue, mut resp: Response| {
            resp.headers_mut().insert("x-request-id", id);
            let route = route_template(path.as_str());
            if route.starts_with("/api/v1/") {
                let took = start.elapsed().as_micros() as u64;
                api_sli.record(resp.status().as_u16(), took, steward_shared::now_ms());
            }
            if resp.status() == http::StatusCode::METHOD_NOT_ALLOWED
                && let Ok(allow) = HeaderValue::from_str(&routes::methods_of(route).join(", "))
            {
                resp.headers_mut().insert(http::header::ALLOW, allow);
            }
            metrics.http_request(&method, route, resp.status().as_u16(), start.elapsed().as_secs_f64());
            tracing::debug!(%method, route, status = resp.status().as_u16(), "request served");
            resp
        })
        .with(warp::trace(|info| {
            tracing::info_span!("http", method = %info.method(), path = %info.path(), request_id = tracing::field::Empty, token_id = tracing::field::Empty)
        }))
}

/// The job and backup routes ([`jobs`]), boxed to keep the route type small.
fn jobs_routes(state: ApiState) -> warp::filters::BoxedFilter<(Result<Response, Problem>,)> {
    let create_jobs = warp::path!("api" / "v1" / "jobs")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "POST", "/api/v1/jobs"))
        .and(raw_query())
        .and(warp::body::content_length_limit(identity::MAX_BODY))
        .and(warp::body::bytes())
        .then(jobs::create);
    let list_jobs = warp::path!("api" / "v1" / "jobs")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "GET", "/api/v1/jobs"))
        .and(raw_query())
        .then(jobs::list);
    let get_job = warp::path!("api" / "v1" / "jobs" / String)
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "GET", "/api/v1/jobs/{id}"))
        .and_then(|id: String, state: ApiState, who| async move { decoded(id, "id").map(|id| (state, who, id)) })
        .untuple_one()
        .and(raw_query())
        .then(jobs::get);
    let job_output = warp::path!("api" / "v1" / "jobs" / String / "output")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "GET", "/api/v1/jobs/{id}/output"))
        .and_then(|id: String, state: ApiState, who| async move { decoded(id, "id").map(|id| (state, who, id)) })
        .untuple_one()
        .and(raw_query())
        .then(jobs::output);
    let cancel_job = warp::path!("api" / "v1" / "jobs" / String / "cancel")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "POST", "/api/v1/jobs/{id}/cancel"))
        .and_then(|id: String, state: ApiState, who| async move { decoded(id, "id").map(|id| (state, who, id)) })
        .untuple_one()
        .and(raw_query())
        .then(jobs::cancel);
    let backups = warp::path!("api" / "v1" / "backups")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "GET", "/api/v1/backups"))
        .and(raw_query())
        .then(jobs::backups);
    create_jobs
        .or(list_jobs)
        .unify()
        .or(get_job)
        .unify()
        .or(job_output)
        .unify()
        .or(cancel_job)
        .unify()
        .or(backups)
        .unify()
        .boxed()
}

/// The KPI routes ([`kpis`]), boxed to keep the route type small.
fn kpis_routes(state: ApiState) -> warp::filters::BoxedFilter<(Result<Response, Problem>,)> {
    let list = warp::path!("api" / "v1" / "kpis")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "GET", "/api/v1/kpis"))
        .and(raw_query())
        .then(kpis::list);
    let get = warp::path!("api" / "v1" / "kpis" / String)
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "GET", "/api/v1/kpis/{name}"))
        .and_then(|name: String, state: ApiState, who| async move { decoded(name, "name").map(|n| (state, who, n)) })
        .untuple_one()
        .and(raw_query())
        .then(kpis::get);
    list.or(get).unify().boxed()
}

fn with_state(state: ApiState) -> impl Filter<Extract = (ApiState,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// The raw query string ("" when there is none).
fn raw_query() -> impl Filter<Extract = (String,), Error = Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

/// The verified caller (with the request's ID), or a 401 rejection (500 if
/// the store fails). A refusal is audited.
fn authenticated(state: ApiState) -> impl Filter<Extract = (auth::Principal,), Error = Rejection> + Clone {
    warp::header::headers_cloned()
        .and(warp::method())
        .and(warp::path::full())
        .and(with_state(state))
        .and_then(
            |headers: HeaderMap, method: http::Method, path: FullPath, state: ApiState| async move {
                let request_id = request_id_of(&headers);
                let value = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
                match auth::authenticate_detailed(&state.store, value, steward_shared::now_ms()).await {
                    Ok(mut principal) => {
                        tracing::Span::current().record("token_id", principal.token_id.as_str());
                        principal.request_id = Some(request_id);
                        Ok(principal)
                    }
                    Err(auth::AuthFailure::Refused(refusal)) => {
                        let route = route_template(path.as_str());
                        audit::record_denial(&state, &request_id, &refusal, &method, route).await;
                        Err(warp::reject::custom(Problem::unauthorized()))
                    }
                    Err(auth::AuthFailure::Store(error)) => Err(warp::reject::custom(Problem::from_store(error))),
                }
            },
        )
}

/// [`authenticated`], then the route's row of [`routes::TABLE`]: the token's
/// rate limit, its role's rules and scope against the route's permission
/// (403, audited, when refused). The row is looked up when the filter is
/// built, so a route missing from the table fails every API test.
fn authorized(
    state: ApiState,
    method: &'static str,
    path: &'static str,
) -> impl Filter<Extract = (auth::Principal,), Error = Rejection> + Clone {
    let spec = routes::spec(method, path);
    authenticated(state.clone()).and(with_state(state)).and_then(
        move |mut who: auth::Principal, state: ApiState| async move {
            rbac::admit(&state, &mut who, spec, spec.path).await?;
            Ok::<_, Rejection>(who)
        },
    )
}

/// `tokens`, `roles` and `hosts/{host}/labels` ([`rbac`]), boxed to keep the
/// route type (and its future, on the stack) small.
fn rbac_routes(state: ApiState) -> warp::filters::BoxedFilter<(Result<Response, Problem>,)> {
    let body = || warp::body::content_length_limit(identity::MAX_BODY).and(warp::body::bytes());
    let create_token = warp::path!("api" / "v1" / "tokens")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "POST", "/api/v1/tokens"))
        .and(raw_query())
        .and(body())
        .then(rbac::create_token);
    let list_tokens = warp::path!("api" / "v1" / "tokens")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "GET", "/api/v1/tokens"))
        .and(raw_query())
        .then(rbac::list_tokens);
    let revoke_token = warp::path!("api" / "v1" / "tokens" / String)
        .and(warp::delete())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "DELETE", "/api/v1/tokens/{id}"))
        .and_then(|id: String, state: ApiState, who| async move { decoded(id, "id").map(|id| (state, who, id)) })
        .untuple_one()
        .and(raw_query())
        .then(rbac::revoke_token);
    let list_roles = warp::path!("api" / "v1" / "roles")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "GET", "/api/v1/roles"))
        .and(raw_query())
        .then(rbac::list_roles);
    let get_role = warp::path!("api" / "v1" / "roles" / String)
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "GET", "/api/v1/roles/{name}"))
        .and_then(|n: String, state: ApiState, who| async move { decoded(n, "name").map(|n| (state, who, n)) })
        .untuple_one()
        .and(raw_query())
        .then(rbac::get_role);
    let put_role = warp::path!("api" / "v1" / "roles" / String)
        .and(warp::put())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "PUT", "/api/v1/roles/{name}"))
        .and_then(|n: String, state: ApiState, who| async move { decoded(n, "name").map(|n| (state, who, n)) })
        .untuple_one()
        .and(raw_query())
        .and(body())
        .then(rbac::put_role);
    let delete_role = warp::path!("api" / "v1" / "roles" / String)
        .and(warp::delete())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "DELETE", "/api/v1/roles/{name}"))
        .and_then(|n: String, state: ApiState, who| async move { decoded(n, "name").map(|n| (state, who, n)) })
        .untuple_one()
        .and(raw_query())
        .then(rbac::delete_role);
    let put_labels = warp::path!("api" / "v1" / "hosts" / String / "labels")
        .and(warp::put())
        .and(with_state(state.clone()))
        .and(authorized(state, "PUT", "/api/v1/hosts/{host}/labels"))
        .and_then(|host: String, state: ApiState, who| async move { decoded_segment(host).map(|h| (state, who, h)) })
        .untuple_one()
        .and(raw_query())
        .and(body())
        .then(rbac::put_host_labels);
    create_token
        .or(list_tokens)
        .unify()
        .or(revoke_token)
        .unify()
        .or(list_roles)
        .unify()
        .or(get_role)
        .unify()
        .or(put_role)
        .unify()
        .or(delete_role)
        .unify()
        .or(put_labels)
        .unify()
        .boxed()
}

/// A percent-decoded path segment, or a 400 naming `field`.
fn decoded(raw: String, field: &'static str) -> Result<String, Rejection> {
    params::decode_path_segment(&raw).ok_or_else(|| {
        warp::reject::custom(Problem::invalid(
            field,
            format!("the {field} in the path is not valid UTF-8 text"),
        ))
    })
}

/// A percent-decoded path segment, or a 400 naming `host`.
fn decoded_segment(raw: String) -> Result<String, Rejection> {
    params::decode_path_segment(&raw)
        .ok_or_else(|| warp::reject::custom(Problem::invalid("host", "the host in the path is not valid UTF-8 text")))
}

/// The request's ID ([`request_id_of`]), recorded on the current (request) span.
fn request_id() -> impl Filter<Extract = (HeaderValue,), Error = Infallible> + Clone {
    warp::header::headers_cloned().map(|headers: HeaderMap| {
        let id = request_id_of(&headers);
        tracing::Span::current().record("request_id", id.as_str());
        HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
    })
}

/// A sane incoming `X-Request-Id`, else a new random one (16 hex digits).
pub fn request_id_of(headers: &HeaderMap) -> String {
    let incoming = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| is_sane_request_id(s));
    match incoming {
        Some(s) => s.to_string(),
        None => {
            let mut rng = rand::rng();
            (0..16)
                .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap_or('0'))
                .collect()
        }
    }
}

/// Gives a request without a sane `X-Request-Id` a new one, before routing
/// (so the response, the logs and the audit log all carry the same ID).
pub fn assign_request_id(headers: &mut HeaderMap) {
    let sane = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_sane_request_id);
    if !sane && let Ok(value) = HeaderValue::from_str(&request_id_of(&HeaderMap::new())) {
        headers.insert("x-request-id", value);
    }
}

fn is_sane_request_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The route template of `path`, for metric labels (bounded set): a path
/// of [`routes::TABLE`], or `unmatched`.
pub fn route_template(path: &str) -> &'static str {
    routes::template_of(path).unwrap_or("unmatched")
}
