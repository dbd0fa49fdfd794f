//! KPI routes: `GET /api/v1/kpis` (the catalog with current values) and
//! `GET /api/v1/kpis/{name}` (one KPI, per group with `group_by`, and its
//! trend): `?window=&selector=` on both, `group_by=` on the second.
//!
//! Invariants:
//! - Values are computed only from the rows of hosts the caller may see
//!   (`kpis:read`, [`super::auth::Principal::host_filter`]) and the selector
//!   matches: aggregates never include other hosts.
//! - The control plane's own API statistics are about no host: only callers
//!   whose `kpis:read` is limited by no scope see them (whatever the
//!   selector); groups never do.
//! - The trend is made of fleet-wide samples: it is shown only to callers
//!   limited by nothing (no scope, no selector, no grouping); others get an
//!   empty trend and `trend_note` saying why.
use std::collections::BTreeMap;

use http::StatusCode;
use serde::Serialize;
use steward_shared::units::Duration;
use warp::reply::Response;

use super::ApiState;
use super::auth::Principal;
use super::handlers::json;
use super::params::{Params, truncate};
use super::problem::Problem;
use crate::kpi::{self, CATALOG, Ctx, KpiData, KpiDef, MISSING, Reading};

const DEFAULT_WINDOW_MS: i64 = 30 * 86_400_000;
const MAX_WINDOW_MS: i64 = 400 * 86_400_000;
/// Most groups of a `group_by` answer.
const MAX_GROUPS: usize = 100;
/// Most trend points returned.
const MAX_TREND_POINTS: usize = 2000;

/// A KPI's value.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct KpiView {
    pub name: String,
    pub title: String,
    /// `ratio` (0..1), `hosts`, `per_day` or `seconds`.
    pub unit: String,
    pub definition: String,
    /// Whether `window` applies (else the value is about now).
    pub windowed: bool,
    /// Null when there is nothing to measure.
    pub value: Option<f64>,
    /// Numerators, denominators and secondary figures.
    pub details: BTreeMap<String, f64>,
}

/// One group of a grouped KPI.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct KpiGroupView {
    /// The label's value (null: hosts without the label).
    pub value_of_label: Option<String>,
    pub value: Option<f64>,
    pub details: BTreeMap<String, f64>,
}

/// A sample of the trend.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TrendPoint {
    pub at_ms: i64,
    pub value: Option<f64>,
}

/// A KPI of the issue not computed yet.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct MissingKpi {
    pub name: String,
    pub reason: String,
}

/// `GET /api/v1/kpis`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct KpiList {
    pub window_ms: i64,
    /// Hosts the values are computed over.
    pub hosts: usize,
    pub items: Vec<KpiView>,
    pub missing: Vec<MissingKpi>,
}

/// `GET /api/v1/kpis/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct KpiDetail {
    #[serde(flatten)]
    pub kpi: KpiView,
    pub window_ms: i64,
    pub hosts: usize,
    pub group_by: Option<String>,
    pub groups: Vec<KpiGroupView>,
    /// Fleet-wide samples over the window, oldest first.
    pub trend: Vec<TrendPoint>,
    pub trend_note: Option<String>,
}

fn view(def: &KpiDef, r: Reading) -> KpiView {
    KpiView {
        name: def.name.into(),
        title: def.title.into(),
        unit: def.unit.as_str().into(),
        definition: def.definition.into(),
        windowed: def.windowed,
        value: r.value,
        details: r.details.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    }
}

struct Query {
    window_ms: i64,
    group_by: Option<String>,
    filtered: bool,
    data: KpiData,
    ctx: Ctx,
}

/// Parses `window`, `selector`, `group_by`, fetches the rows and keeps the
/// caller's hosts that the selector matches.
async fn query(state: &ApiState, who: &Principal, raw: &str, allowed: &[&str]) -> Result<Query, Problem> {
    let p = Params::parse(raw, allowed)?;
    let window_ms = match p.typed("window") {
        None => DEFAULT_WINDOW_MS,
        Some(w) => {
            let d: Duration = w.parse().map_err(|_| {
                Problem::invalid(
                    "window",
                    format!(
                        "window must be a duration such as 30d or 12h, got {:?}",
                        truncate(w, 32)
                    ),
                )
            })?;
            let ms = i64::try_from(d.as_std().as_millis()).unwrap_or(i64::MAX);
            if !(60_000..=MAX_WINDOW_MS).contains(&ms) {
                return Err(Problem::invalid(
                    "window",
                    "window must be at least 1m and at most 400d",
                ));
            }
            ms
        }
    };
    let selector = p.selector()?;
    let group_by = p.typed("group_by").map(str::to_string);
    if let Some(g) = &group_by
        && let Err(e) = steward_shared::selector::validate_label(g, "group_by")
    {
        return Err(Problem::invalid("group_by", e));
    }
    let access = who.host_filter("kpis:read");
    let now = steward_shared::now_ms();
    let all = state
        .store
        .kpi_data(now, window_ms)
        .await
        .map_err(Problem::from_store)?;
    let filtered = !selector.is_empty() || !access.is_all();
    let mut data = all.restrict(|h| selector.matches(&h.labels) && access.matches(&h.labels));
    if access.is_all() {
        // Control-plane-wide (api_availability, api_latency_p95): for unscoped callers only.
        data.api = all.api;
    }
    Ok(Query {
        window_ms,
        group_by,
        filtered,
        data,
        ctx: Ctx {
            now_ms: now,
            window_ms,
            current_version: kpi::sampler::current_version(),
        },
    })
}

/// `GET /api/v1/kpis?window=&selector=&group_by=`
pub async fn list(state: ApiState, who: Principal, raw: String) -> Result<Response, Problem> {
    let q = query(&state, &who, &raw, &["window", "selector"]).await?;
    let items = CATALOG.iter().map(|k| view(k, (k.compute)(&q.data, &q.ctx))).collect();
    Ok(json(
        StatusCode::OK,
        &KpiList {
            window_ms: q.window_ms,
            hosts: q.data.hosts.len(),
            items,
            missing: MISSING
                .iter()
                .map(|(n, r)| MissingKpi {
                    name: n.to_string(),
                    reason: r.to_string(),
                })
                .collect(),
        },
    ))
}

/// `GET /api/v1/kpis/{name}?window=&selector=&group_by=`
pub async fn get(state: ApiState, who: Principal, name: String, raw: String) -> Result<Response, Problem> {
    let Some(def) = kpi::find(&name) else {
        if let Some((_, reason)) = MISSING.iter().find(|(n, _)| *n == name) {
            return Err(Problem::not_found(format!(
                "KPI {name:?} is not computed yet: {reason}"
            )));
        }
        let names: Vec<&str> = CATALOG.iter().map(|k| k.name).collect();
        return Err(Problem::not_found(format!(
            "no KPI {:?}; the catalog has: {}",
            truncate(&name, 64),
            names.join(", ")
        )));
    };
    let q = query(&state, &who, &raw, &["window", "selector", "group_by"]).await?;
    let groups = match &q.group_by {
        None => Vec::new(),
        Some(label) => kpi::grouped(def, &q.data, &q.ctx, label, MAX_GROUPS)
            .into_iter()
            .map(|(v, r)| KpiGroupView {
                value_of_label: v,
                value: r.value,
                details: r.details.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            })
            .collect(),
    };
    let (trend, trend_note) = if q.filtered || q.group_by.is_some() {
        (
            Vec::new(),
            Some(
                "the trend is kept for the whole fleet only; it is not shown for a scope, selector or grouping".into(),
            ),
        )
    } else {
        let mut points = state
            .store
            .kpi_trend(def.name, q.ctx.now_ms - q.window_ms)
            .await
            .map_err(Problem::from_store)?;
        if points.len() > MAX_TREND_POINTS {
            // keep every n-th sample, always the newest
            let step = points.len().div_ceil(MAX_TREND_POINTS);
            let last = points.len() - 1;
            points = points
                .into_iter()
                .enumerate()
                .filter(|(i, _)| (last - i) % step == 0)
                .map(|(_, p)| p)
                .collect();
        }
        (
            points
                .into_iter()
                .map(|(at_ms, value)| TrendPoint { at_ms, value })
                .collect(),
            None,
        )
    };
    let reading = (def.compute)(&q.data, &q.ctx);
    Ok(json(
        StatusCode::OK,
        &KpiDetail {
            kpi: view(def, reading),
            window_ms: q.window_ms,
            hosts: q.data.hosts.len(),
            group_by: q.group_by,
            groups,
            trend,
            trend_note,
        },
    ))
}
