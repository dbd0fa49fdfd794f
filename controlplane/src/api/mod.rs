//! The REST API (warp), laid out as warp's `todos` example: filters here,
//! [`handlers`], [`views`] (the JSON models), and one [`problem::recover`]
//! that turns every rejection into `application/problem+json`.
//!
//! Routes: `GET /healthz`, `/readyz`, `/metrics` (no token), and under
//! `/api/v1` (bearer token required): `hosts`, `hosts/{host}`,
//! `hosts/{host}/checks`, `checks`.
//!
//! Invariants:
//! - Paths are matched before methods and before authentication, so an
//!   unknown path is a 404, a known path with another method a 405, and a
//!   known `/api/v1` path without a valid token a 401.
//! - Every response (errors included) carries `X-Request-Id`: a sane incoming
//!   one (1-128 of `A-Za-z0-9._:-`) or a new random one. The request's
//!   tracing span carries it too.
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

pub mod auth;
pub mod handlers;
pub mod identity;
pub mod params;
pub mod problem;
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
}

impl ApiState {
    pub fn new(store: Store, metrics: Arc<Metrics>, offline_after: Duration) -> Self {
        ApiState {
            store,
            metrics,
            offline_after,
            ca_fingerprint: None,
            enrollment_token_ttl: Duration::from_secs(3600),
        }
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
        .and(authenticated(state.clone()))
        .and(raw_query())
        .then(handlers::list_hosts);
    let get_host = warp::path!("api" / "v1" / "hosts" / String)
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(authenticated(state.clone()))
        .and_then(|host: String, state: ApiState, who| async move { decoded_segment(host).map(|h| (state, who, h)) })
        .untuple_one()
        .and(raw_query())
        .then(handlers::get_host);
    let host_checks = warp::path!("api" / "v1" / "hosts" / String / "checks")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(authenticated(state.clone()))
        .and_then(|host: String, state: ApiState, who| async move { decoded_segment(host).map(|h| (state, who, h)) })
        .untuple_one()
        .and(raw_query())
        .then(handlers::host_checks);
    let list_checks = warp::path!("api" / "v1" / "checks")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(authenticated(state.clone()))
        .and(raw_query())
        .then(handlers::list_checks);
    let create_enrollment_token = warp::path!("api" / "v1" / "enrollment-tokens")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(authenticated(state.clone()))
        .and(raw_query())
        .and(warp::body::content_length_limit(identity::MAX_BODY))
        .and(warp::body::bytes())
        .then(identity::create_enrollment_token);
    let revoke_host = warp::path!("api" / "v1" / "hosts" / String / "revoke")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(authenticated(state))
        .and_then(|host: String, state: ApiState, who| async move { decoded_segment(host).map(|h| (state, who, h)) })
        .untuple_one()
        .and(raw_query())
        .then(identity::revoke_host);

    let api = list_hosts
        .or(get_host)
        .unify()
        .or(host_checks)
        .unify()
        .or(list_checks)
        .unify()
        .or(create_enrollment_token)
        .unify()
        .or(revoke_host)
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
            metrics.http_request(&method, route, resp.status().as_u16(), start.elapsed().as_secs_f64());
            tracing::debug!(%method, route, status = resp.status().as_u16(), "request served");
            resp
        })
        .with(warp::trace(|info| {
            tracing::info_span!("http", method = %info.method(), path = %info.path(), request_id = tracing::field::Empty, token_id = tracing::field::Empty)
        }))
}

fn with_state(state: ApiState) -> impl Filter<Extract = (ApiState,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// The raw query string ("" when there is none).
fn raw_query() -> impl Filter<Extract = (String,), Error = Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

/// The verified caller, or a 401 rejection (500 if the store fails).
fn authenticated(state: ApiState) -> impl Filter<Extract = (auth::Principal,), Error = Rejection> + Clone {
    warp::header::headers_cloned()
        .and(with_state(state))
        .and_then(|headers: HeaderMap, state: ApiState| async move {
            let value = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
            match auth::authenticate(&state.store, value, steward_shared::now_ms()).await {
                Ok(principal) => {
                    tracing::Span::current().record("token_id", principal.token_id.as_str());
                    Ok(principal)
                }
                Err(auth::AuthError::Unauthorized) => Err(warp::reject::custom(Problem::unauthorized())),
                Err(auth::AuthError::Store(error)) => Err(warp::reject::custom(Problem::from_store(error))),
            }
        })
}

/// A percent-decoded path segment, or a 400 naming `host`.
fn decoded_segment(raw: String) -> Result<String, Rejection> {
    params::decode_path_segment(&raw)
        .ok_or_else(|| warp::reject::custom(Problem::invalid("host", "the host in the path is not valid UTF-8 text")))
}

/// The request's ID: a sane incoming `X-Request-Id`, else a new random one.
/// Recorded on the current (request) span.
fn request_id() -> impl Filter<Extract = (HeaderValue,), Error = Infallible> + Clone {
    warp::header::headers_cloned().map(|headers: HeaderMap| {
        let incoming = headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|s| is_sane_request_id(s));
        let id = match incoming {
            Some(s) => s.to_string(),
            None => {
                let mut rng = rand::rng();
                (0..16)
                    .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap_or('0'))
                    .collect()
            }
        };
        tracing::Span::current().record("request_id", id.as_str());
        HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
    })
}

fn is_sane_request_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The route template of `path`, for metric labels (bounded set).
pub fn route_template(path: &str) -> &'static str {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["healthz"] => "/healthz",
        ["readyz"] => "/readyz",
        ["metrics"] => "/metrics",
        ["api", "v1", "hosts"] => "/api/v1/hosts",
        ["api", "v1", "hosts", _] => "/api/v1/hosts/{host}",
        ["api", "v1", "hosts", _, "checks"] => "/api/v1/hosts/{host}/checks",
        ["api", "v1", "checks"] => "/api/v1/checks",
        ["api", "v1", "enrollment-tokens"] => "/api/v1/enrollment-tokens",
        ["api", "v1", "hosts", _, "revoke"] => "/api/v1/hosts/{host}/revoke",
        _ => "unmatched",
    }
}
