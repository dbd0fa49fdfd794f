//! Request handlers: validate parameters, call the store, convert to views.
//! They never see SQL and never show a storage error (see [`Problem::from_store`]).
use http::StatusCode;
use http::header::CONTENT_TYPE;
use serde::Serialize;
use warp::Reply;
use warp::reply::Response;

use super::ApiState;
use super::auth::Principal;
use super::params::{self, Params};
use super::problem::Problem;
use super::rbac::resolve_host_for;
use super::views::{CheckView, HostView, ListView};
use crate::model::{Host, StatusCounts};
use crate::store::CheckFilter;

pub async fn healthz() -> Response {
    json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
}

pub async fn readyz(state: ApiState) -> Response {
    match state.store.ping().await {
        Ok(()) => json(
            StatusCode::OK,
            &serde_json::json!({ "status": "ok", "database": state.store.backend_name() }),
        ),
        Err(error) => {
            tracing::warn!(%error, "readiness check: database unreachable");
            Problem::unavailable("the database is not reachable").into_response()
        }
    }
}

pub async fn metrics(state: ApiState) -> Response {
    let online_since = steward_shared::now_ms().saturating_sub(state.offline_after_ms());
    match state.store.fleet_stats(online_since).await {
        Ok(stats) => state.metrics.set_fleet_stats(stats),
        Err(error) => tracing::warn!(%error, "metrics: fleet figures unavailable; serving the last ones"),
    }
    http::Response::builder()
        .header(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)
        .body(state.metrics.encode())
        .map(Reply::into_response)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// `GET /api/v1/hosts?selector=&limit=&cursor=`
pub async fn list_hosts(state: ApiState, who: Principal, query: String) -> Result<Response, Problem> {
    let p = Params::parse(&query, &["selector", "limit", "cursor"])?;
    let (selector, limit) = (p.selector()?, p.limit()?);
    let after = params::parse_host_cursor(p.get("cursor"))?;
    let page = state
        .store
        .list_hosts_visible(&selector, &who.host_filter("hosts:read"), after.as_deref(), limit)
        .await
        .map_err(Problem::from_store)?;
    let next_cursor = page
        .has_more
        .then(|| page.items.last().map(|h| params::host_cursor(&h.id)))
        .flatten();
    let items = host_views(&state, page.items).await?;
    Ok(json(StatusCode::OK, &ListView { items, next_cursor }))
}

/// `GET /api/v1/hosts/{host}` (ID or unique hostname).
pub async fn get_host(state: ApiState, who: Principal, host: String, query: String) -> Result<Response, Problem> {
    Params::parse(&query, &[])?;
    let host = resolve_host_for(&state, &who, &host, "hosts:read", "host").await?;
    let mut views = host_views(&state, vec![host]).await?;
    let view = views.pop().ok_or_else(Problem::internal)?;
    Ok(json(StatusCode::OK, &view))
}

/// `GET /api/v1/hosts/{host}/checks?status=&limit=&cursor=`
pub async fn host_checks(state: ApiState, who: Principal, host: String, query: String) -> Result<Response, Problem> {
    let p = Params::parse(&query, &["status", "limit", "cursor"])?;
    let (status, limit) = (p.status()?, p.limit()?);
    let after = params::parse_check_cursor(p.get("cursor"))?;
    let host = resolve_host_for(&state, &who, &host, "checks:read", "host").await?;
    let filter = CheckFilter {
        host_id: Some(host.id),
        status,
        access: who.host_filter("checks:read"),
        ..CheckFilter::default()
    };
    checks_page(&state, &filter, after, limit).await
}

/// `GET /api/v1/checks?status=&host=&selector=&limit=&cursor=`
pub async fn list_checks(state: ApiState, who: Principal, query: String) -> Result<Response, Problem> {
    let p = Params::parse(&query, &["status", "host", "selector", "limit", "cursor"])?;
    let (status, selector, limit) = (p.status()?, p.selector()?, p.limit()?);
    let after = params::parse_check_cursor(p.get("cursor"))?;
    let host_id = match p.get("host") {
        Some(ident) => Some(resolve_host_for(&state, &who, ident, "checks:read", "host").await?.id),
        None => None,
    };
    let filter = CheckFilter {
        host_id,
        status,
        selector,
        access: who.host_filter("checks:read"),
    };
    checks_page(&state, &filter, after, limit).await
}

async fn checks_page(
    state: &ApiState,
    filter: &CheckFilter,
    after: Option<(String, String)>,
    limit: usize,
) -> Result<Response, Problem> {
    let after_ref = after.as_ref().map(|(h, n)| (h.as_str(), n.as_str()));
    let page = state
        .store
        .list_checks(filter, after_ref, limit)
        .await
        .map_err(Problem::from_store)?;
    let next_cursor = page
        .has_more
        .then(|| {
            page.items
                .last()
                .map(|c| params::check_cursor(&c.host_id, &c.result.name))
        })
        .flatten();
    let items: Vec<CheckView> = page.items.into_iter().map(CheckView::from).collect();
    Ok(json(StatusCode::OK, &ListView { items, next_cursor }))
}

async fn host_views(state: &ApiState, hosts: Vec<Host>) -> Result<Vec<HostView>, Problem> {
    let ids: Vec<&str> = hosts.iter().map(|h| h.id.as_str()).collect();
    let mut counts = state.store.status_counts(&ids).await.map_err(Problem::from_store)?;
    let now = steward_shared::now_ms();
    let offline_after = state.offline_after_ms();
    Ok(hosts
        .into_iter()
        .map(|h| {
            let c = counts.remove(&h.id).unwrap_or_else(StatusCounts::default);
            HostView::new(h, c, now, offline_after)
        })
        .collect())
}

/// A JSON response (`application/json`).
pub fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_string(body) {
        Ok(body) => http::Response::builder()
            .status(status)
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .map(Reply::into_response)
            .unwrap_or_else(|_| Problem::internal().into_response()),
        Err(error) => {
            tracing::error!(%error, "serialising a response failed");
            Problem::internal().into_response()
        }
    }
}
