//! SLO routes: `PUT /api/v1/slos/{name}` (create or replace, audited),
//! `GET /api/v1/slos` (every SLO with its SLI, budget and firing tiers) and
//! `GET /api/v1/slos/{name}` (the full status). Permissions (for RBAC):
//! `slos:write` for the PUT, `slos:read` for the GETs.
use http::StatusCode;
use warp::Filter;
use warp::reply::Response;

use super::auth::Principal;
use super::handlers::json;
use super::identity::parse_body;
use super::params::Params;
use super::problem::Problem;
use super::views::ListView;
use super::{ApiState, authorized, decoded, raw_query, with_state};
use crate::audit::Outcome;
use crate::slo::spec::{SloSpec, validate_name};
use crate::slo::status;
use crate::store::slo::PutOutcome;

/// Largest SLO definition accepted.
pub const MAX_BODY: u64 = 64 * 1024;

/// The SLO routes, boxed (a small route type compiles fast and keeps the
/// request future off a deep stack).
pub fn routes(state: ApiState) -> warp::filters::BoxedFilter<(Result<Response, Problem>,)> {
    let put_slo = warp::path!("api" / "v1" / "slos" / String)
        .and(warp::put())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "PUT", "/api/v1/slos/{name}"))
        .and_then(|name: String, state: ApiState, who| async move { decoded(name, "name").map(|n| (state, who, n)) })
        .untuple_one()
        .and(raw_query())
        .and(warp::body::content_length_limit(MAX_BODY))
        .and(warp::body::bytes())
        .then(put);
    let get_slo = warp::path!("api" / "v1" / "slos" / String)
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "GET", "/api/v1/slos/{name}"))
        .and_then(|name: String, state: ApiState, who| async move { decoded(name, "name").map(|n| (state, who, n)) })
        .untuple_one()
        .and(raw_query())
        .then(get);
    let list_slos = warp::path!("api" / "v1" / "slos")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(authorized(state, "GET", "/api/v1/slos"))
        .and(raw_query())
        .then(list);
    put_slo.or(get_slo).unify().or(list_slos).unify().boxed()
}

fn check_name(name: &str) -> Result<(), Problem> {
    validate_name(name).map_err(|e| Problem::invalid("name", e.message))
}

/// `PUT /api/v1/slos/{name}`: 201 when created, 200 when replaced or unchanged.
pub async fn put(
    state: ApiState,
    who: Principal,
    name: String,
    query: String,
    body: bytes::Bytes,
) -> Result<Response, Problem> {
    Params::parse(&query, &[])?;
    check_name(&name)?;
    let spec: SloSpec = parse_body(&body)?;
    spec.validate().map_err(|e| Problem::invalid(&e.field, e.message))?;
    let now = steward_shared::now_ms();
    let details = serde_json::to_value(&spec).unwrap_or_default();
    let outcome = state
        .store
        .put_slo(
            &name,
            &spec,
            who.audit("slos.update", Outcome::Success)
                .target(format!("slo:{name}"))
                .details(details),
            now,
        )
        .await
        .map_err(Problem::from_store)?;
    tracing::info!(slo = %name, ?outcome, by = %who.token_id, "SLO defined");
    let stored = state
        .store
        .get_slo(&name)
        .await
        .map_err(Problem::from_store)?
        .ok_or_else(Problem::internal)?;
    let view = status::status(&state.store, stored, now)
        .await
        .map_err(Problem::from_store)?;
    let code = if outcome == PutOutcome::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json(code, &view))
}

/// `GET /api/v1/slos/{name}`.
pub async fn get(state: ApiState, _who: Principal, name: String, query: String) -> Result<Response, Problem> {
    Params::parse(&query, &[])?;
    check_name(&name)?;
    let Some(stored) = state.store.get_slo(&name).await.map_err(Problem::from_store)? else {
        return Err(Problem::not_found(format!("no SLO named {name:?}")));
    };
    let view = status::status(&state.store, stored, steward_shared::now_ms())
        .await
        .map_err(Problem::from_store)?;
    Ok(json(StatusCode::OK, &view))
}

/// Tag of the SLO list's cursors.
const SLOS_CURSOR: &str = "s1";

/// `GET /api/v1/slos?limit=&cursor=` (cursor: `next_cursor` of the previous page).
pub async fn list(state: ApiState, _who: Principal, query: String) -> Result<Response, Problem> {
    let p = Params::parse(&query, &["limit", "cursor"])?;
    let limit = p.limit()?;
    let after = p
        .get("cursor")
        .map(|raw| super::params::parse_opaque_cursor(raw, SLOS_CURSOR))
        .transpose()?
        .unwrap_or_default();
    let now = steward_shared::now_ms();
    let slos = state.store.list_slos().await.map_err(Problem::from_store)?;
    let mut rest = slos.into_iter().filter(|s| s.name.as_str() > after.as_str()).peekable();
    let page: Vec<_> = rest.by_ref().take(limit).collect();
    let items: Vec<_> = status::statuses(&state.store, page, now)
        .await
        .map_err(Problem::from_store)?
        .iter()
        .map(|st| st.summary())
        .collect();
    let next_cursor = rest
        .peek()
        .and(items.last().map(|s| super::params::opaque_cursor(SLOS_CURSOR, &s.name)));
    Ok(json(StatusCode::OK, &ListView { items, next_cursor }))
}
