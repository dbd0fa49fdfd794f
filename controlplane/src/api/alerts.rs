//! Alert and silence routes: `GET /api/v1/alerts` (`state`, `severity`
//! filters, pages), `GET /api/v1/alerts/{id}`, `POST /api/v1/alerts/{id}/ack`,
//! `GET/POST /api/v1/silences`, `DELETE /api/v1/silences/{id}` (expire now).
//! Permissions: `alerts:read` for the GETs, `alerts:write` for ack and
//! silences.
//!
//! Invariants:
//! - An alert about a host (label `host`, the host's ID) is visible only to
//!   callers that hold `alerts:read` on that host; an alert about no host
//!   (an SLO, a rollout) only to callers whose `alerts:read` is not limited
//!   to some hosts. Lists are filtered before paging; an invisible alert is
//!   a 404, as if it did not exist.
//! - Silences act fleet-wide (their matchers may name any label), so only
//!   unscoped tokens see or manage them (route rows `Hosts::Fleet`).
//! - Every ack, silence creation and expiry is audited in its transaction.
use std::collections::{BTreeMap, HashMap};

use http::StatusCode;
use serde::{Deserialize, Serialize};
use warp::reply::Response;

use super::ApiState;
use super::auth::Principal;
use super::handlers::json;
use super::identity::parse_body;
use super::params::{Params, opaque_cursor, parse_opaque_cursor, truncate};
use super::problem::Problem;
use super::views::ListView;
use crate::alert::{Alert, Matcher, Severity, Silence};
use crate::audit::Outcome;
use crate::rbac::Labels;
use steward_shared::timestamp::rfc3339;

const CURSOR: &str = "al1";
/// Longest silence accepted.
const MAX_SILENCE_SECS: u64 = 366 * 24 * 3600;
const MAX_MATCHERS: usize = 32;
const MAX_COMMENT: usize = 1024;

/// An alert as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlertView {
    pub id: String,
    pub fingerprint: String,
    /// What raised it: `slo`, `host_silent`, `check_critical`, `backup_rpo`,
    /// `certificate`, `rollout`.
    pub source: String,
    pub severity: Severity,
    /// `firing` or `resolved`.
    pub state: String,
    pub summary: String,
    /// `alertname` and the source's labels (`host` is a host ID).
    pub labels: BTreeMap<String, String>,
    pub started_ms: i64,
    /// `started_ms` as RFC 3339 (UTC).
    pub started: String,
    pub resolved_ms: Option<i64>,
    pub acked_by: Option<String>,
    pub acked_ms: Option<i64>,
    /// A silence matched when it fired: no notification was sent.
    pub silenced: bool,
}

impl From<Alert> for AlertView {
    fn from(a: Alert) -> Self {
        AlertView {
            started: rfc3339(a.started_ms),
            id: a.id,
            fingerprint: a.fingerprint,
            source: a.source,
            severity: a.severity,
            state: a.state,
            summary: a.summary,
            labels: a.labels,
            started_ms: a.started_ms,
            resolved_ms: a.resolved_ms,
            acked_by: a.acked_by,
            acked_ms: a.acked_ms,
            silenced: a.silenced,
        }
    }
}

/// `POST /api/v1/silences` body. Unknown fields are refused.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSilence {
    /// Alerts whose labels match every matcher are silenced (at least one).
    #[serde(default)]
    pub matchers: Vec<Matcher>,
    /// How long from now, e.g. `2h`, `30m`, `1d` (at most 366 days).
    #[serde(default)]
    pub duration: String,
    /// Why (required: the next operator reads it).
    #[serde(default)]
    pub comment: String,
}

/// A silence as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SilenceView {
    pub id: String,
    pub matchers: Vec<Matcher>,
    pub comment: String,
    pub created_by: String,
    pub starts_ms: i64,
    pub ends_ms: i64,
    /// `ends_ms` as RFC 3339 (UTC).
    pub ends: String,
    /// In effect now.
    pub active: bool,
}

impl SilenceView {
    fn new(s: Silence, now_ms: i64) -> Self {
        SilenceView {
            active: s.active(now_ms),
            ends: rfc3339(s.ends_ms),
            id: s.id,
            matchers: s.matchers,
            comment: s.comment,
            created_by: s.created_by,
            starts_ms: s.starts_ms,
            ends_ms: s.ends_ms,
        }
    }
}

fn not_found(id: &str) -> Problem {
    let mut p = Problem::not_found(format!("alert {:?} not found", truncate(id, 128)));
    p.field = Some("id".into());
    p
}

/// Which alerts `who` may see or act on with `permission`.
struct Visibility {
    /// None: every alert (the permission is not limited to some hosts).
    hosts: Option<HashMap<String, Labels>>,
}

impl Visibility {
    async fn load(state: &ApiState, who: &Principal, permission: &str, alerts: &[Alert]) -> Result<Self, Problem> {
        if who.host_filter(permission).is_all() {
            return Ok(Visibility { hosts: None });
        }
        let mut ids: Vec<String> = alerts.iter().filter_map(|a| a.labels.get("host").cloned()).collect();
        ids.sort();
        ids.dedup();
        let labels = state.store.host_labels(&ids).await.map_err(Problem::from_store)?;
        Ok(Visibility { hosts: Some(labels) })
    }

    fn allows(&self, who: &Principal, permission: &str, alert: &Alert) -> bool {
        match &self.hosts {
            None => true,
            Some(labels) => alert
                .labels
                .get("host")
                .and_then(|h| labels.get(h))
                .is_some_and(|l| who.allows(permission, Some(l))),
        }
    }
}

/// The alert `id` if `who` may see it; a 403 if it may see it but not
/// hold `permission` on it.
async fn find(state: &ApiState, who: &Principal, id: &str, permission: &str) -> Result<Alert, Problem> {
    if id.is_empty() || id.len() > 128 {
        return Err(not_found(id));
    }
    let alert = state
        .store
        .get_alert(id)
        .await
        .map_err(Problem::from_store)?
        .ok_or_else(|| not_found(id))?;
    let one = std::slice::from_ref(&alert);
    if !Visibility::load(state, who, "alerts:read", one)
        .await?
        .allows(who, "alerts:read", &alert)
    {
        return Err(not_found(id));
    }
    if permission != "alerts:read"
        && !Visibility::load(state, who, permission, one)
            .await?
            .allows(who, permission, &alert)
    {
        return Err(Problem::forbidden(format!(
            "the token may not {permission} on this alert's host"
        )));
    }
    Ok(alert)
}

fn parse_cursor(raw: &str) -> Result<(i64, String), Problem> {
    let value = parse_opaque_cursor(raw, CURSOR)?;
    value
        .split_once(':')
        .and_then(|(ms, id)| Some((ms.parse::<i64>().ok()?, id.to_string())))
        .ok_or_else(|| Problem::invalid("cursor", "cursor is not one this list handed out"))
}

/// `GET /api/v1/alerts?state=&severity=&limit=&cursor=`, newest first.
pub async fn list(state: ApiState, who: Principal, query: String) -> Result<Response, Problem> {
    let p = Params::parse(&query, &["state", "severity", "limit", "cursor"])?;
    let limit = p.limit()?;
    let st = match p.typed("state") {
        None => None,
        Some(s @ ("firing" | "resolved")) => Some(s),
        Some(other) => {
            return Err(Problem::invalid(
                "state",
                format!("state must be firing or resolved, got {:?}", truncate(other, 32)),
            ));
        }
    };
    let severity = p
        .typed("severity")
        .map(|s| s.parse::<Severity>().map_err(|e| Problem::invalid("severity", e)))
        .transpose()?;
    let mut before = p.get("cursor").map(parse_cursor).transpose()?;
    // Filtered before paging: only alerts the caller may see.
    let mut items: Vec<AlertView> = Vec::new();
    let mut has_more;
    loop {
        let page = state
            .store
            .list_alerts_page(st, severity, before.as_ref().map(|(ms, id)| (*ms, id.as_str())), limit)
            .await
            .map_err(Problem::from_store)?;
        has_more = page.len() == limit;
        let vis = Visibility::load(&state, &who, "alerts:read", &page).await?;
        let n = page.len();
        for (i, a) in page.into_iter().enumerate() {
            before = Some((a.started_ms, a.id.clone()));
            if vis.allows(&who, "alerts:read", &a) {
                items.push(a.into());
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
        .then(|| {
            items
                .last()
                .map(|a| opaque_cursor(CURSOR, &format!("{}:{}", a.started_ms, a.id)))
        })
        .flatten();
    Ok(json(StatusCode::OK, &ListView { items, next_cursor }))
}

/// `GET /api/v1/alerts/{id}`
pub async fn get(state: ApiState, who: Principal, id: String, query: String) -> Result<Response, Problem> {
    Params::parse(&query, &[])?;
    let alert = find(&state, &who, &id, "alerts:read").await?;
    Ok(json(StatusCode::OK, &AlertView::from(alert)))
}

/// `POST /api/v1/alerts/{id}/ack`: acknowledged by the token (audited);
/// acknowledging again keeps the first acknowledgement.
pub async fn ack(state: ApiState, who: Principal, id: String, query: String) -> Result<Response, Problem> {
    Params::parse(&query, &[])?;
    find(&state, &who, &id, "alerts:write").await?;
    let by = crate::audit::actor::token(&who.token_id);
    let audit = who.audit("alerts.ack", Outcome::Success).target(format!("alert:{id}"));
    let alert = state
        .store
        .ack_alert(&id, &by, audit, steward_shared::now_ms())
        .await
        .map_err(Problem::from_store)?
        .ok_or_else(|| not_found(&id))?;
    tracing::info!(alert = %id, by = %who.token_id, "alert acknowledged");
    Ok(json(StatusCode::OK, &AlertView::from(alert)))
}

/// `GET /api/v1/silences?state=active|expired`, newest first.
pub async fn list_silences(state: ApiState, _who: Principal, query: String) -> Result<Response, Problem> {
    let p = Params::parse(&query, &["state"])?;
    let want_active = match p.typed("state") {
        None => None,
        Some("active") => Some(true),
        Some("expired") => Some(false),
        Some(other) => {
            return Err(Problem::invalid(
                "state",
                format!("state must be active or expired, got {:?}", truncate(other, 32)),
            ));
        }
    };
    let now = steward_shared::now_ms();
    let items: Vec<SilenceView> = state
        .store
        .list_silences()
        .await
        .map_err(Problem::from_store)?
        .into_iter()
        .map(|s| SilenceView::new(s, now))
        .filter(|s| want_active.is_none_or(|a| a == s.active))
        .collect();
    Ok(json(
        StatusCode::OK,
        &ListView {
            items,
            next_cursor: None,
        },
    ))
}

/// Checks a silence request; the end time in ms from `now`.
pub fn validate_silence(req: &CreateSilence, now_ms: i64) -> Result<i64, Problem> {
    if req.matchers.is_empty() {
        return Err(Problem::invalid(
            "matchers",
            "at least one matcher is required (e.g. {\"name\": \"host\", \"value\": \"web-1\"})",
        ));
    }
    if req.matchers.len() > MAX_MATCHERS {
        return Err(Problem::invalid("matchers", format!("at most {MAX_MATCHERS} matchers")));
    }
    for (i, m) in req.matchers.iter().enumerate() {
        let ok = !m.name.is_empty()
            && m.name.len() <= 128
            && m.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'));
        if !ok {
            return Err(Problem::invalid(
                &format!("matchers[{i}].name"),
                "a label name: 1-128 of A-Z a-z 0-9 _ - . /",
            ));
        }
        if m.value.len() > 1024 {
            return Err(Problem::invalid(&format!("matchers[{i}].value"), "at most 1024 bytes"));
        }
    }
    if req.comment.trim().is_empty() {
        return Err(Problem::invalid("comment", "a comment is required: say why"));
    }
    if req.comment.len() > MAX_COMMENT {
        return Err(Problem::invalid("comment", format!("at most {MAX_COMMENT} bytes")));
    }
    let d: steward_shared::units::Duration = req
        .duration
        .parse()
        .map_err(|e: steward_shared::units::UnitError| Problem::invalid("duration", e.0))?;
    let secs = d.as_std().as_secs();
    if secs == 0 || secs > MAX_SILENCE_SECS {
        return Err(Problem::invalid(
            "duration",
            "duration must be from 1s to 366d (e.g. 2h)",
        ));
    }
    Ok(now_ms.saturating_add(i64::try_from(d.as_std().as_millis()).unwrap_or(i64::MAX)))
}

/// `POST /api/v1/silences` (audited): 201 with the silence.
pub async fn create_silence(
    state: ApiState,
    who: Principal,
    query: String,
    body: bytes::Bytes,
) -> Result<Response, Problem> {
    Params::parse(&query, &[])?;
    let req: CreateSilence = parse_body(&body)?;
    let now = steward_shared::now_ms();
    let ends_ms = validate_silence(&req, now)?;
    let silence = Silence {
        id: format!("sil-{}", crate::store::alert::new_id()),
        matchers: req.matchers,
        comment: req.comment.trim().to_string(),
        created_by: crate::audit::actor::token(&who.token_id),
        starts_ms: now,
        ends_ms,
    };
    let audit = who
        .audit("silences.create", Outcome::Success)
        .target(format!("silence:{}", silence.id))
        .details(serde_json::json!({
            "matchers": silence.matchers, "comment": silence.comment, "ends_ms": silence.ends_ms,
        }));
    state
        .store
        .create_silence(&silence, audit)
        .await
        .map_err(Problem::from_store)?;
    tracing::info!(silence = %silence.id, by = %who.token_id, "silence created");
    Ok(json(StatusCode::CREATED, &SilenceView::new(silence, now)))
}

/// `DELETE /api/v1/silences/{id}`: ends the silence now (audited).
pub async fn expire_silence(state: ApiState, who: Principal, id: String, query: String) -> Result<Response, Problem> {
    Params::parse(&query, &[])?;
    let now = steward_shared::now_ms();
    let audit = who
        .audit("silences.expire", Outcome::Success)
        .target(format!("silence:{id}"));
    let expired = state
        .store
        .expire_silence(&id, audit, now)
        .await
        .map_err(Problem::from_store)?;
    let found = state
        .store
        .list_silences()
        .await
        .map_err(Problem::from_store)?
        .into_iter()
        .find(|s| s.id == id);
    match found {
        Some(s) => {
            if expired {
                tracing::info!(silence = %id, by = %who.token_id, "silence expired");
            }
            Ok(json(StatusCode::OK, &SilenceView::new(s, now)))
        }
        None => {
            let mut p = Problem::not_found(format!("silence {:?} not found", truncate(&id, 128)));
            p.field = Some("id".into());
            Err(p)
        }
    }
}

/// The alert and silence routes, boxed to keep the route type small.
pub(super) fn routes(state: ApiState) -> warp::filters::BoxedFilter<(Result<Response, Problem>,)> {
    use super::{authorized, decoded, raw_query, with_state};
    use warp::Filter;
    let list_alerts = warp::path!("api" / "v1" / "alerts")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "GET", "/api/v1/alerts"))
        .and(raw_query())
        .then(list);
    let get_alert = warp::path!("api" / "v1" / "alerts" / String)
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "GET", "/api/v1/alerts/{id}"))
        .and_then(|id: String, state: ApiState, who| async move { decoded(id, "id").map(|id| (state, who, id)) })
        .untuple_one()
        .and(raw_query())
        .then(get);
    let ack_alert = warp::path!("api" / "v1" / "alerts" / String / "ack")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "POST", "/api/v1/alerts/{id}/ack"))
        .and_then(|id: String, state: ApiState, who| async move { decoded(id, "id").map(|id| (state, who, id)) })
        .untuple_one()
        .and(raw_query())
        .then(ack);
    let silences = warp::path!("api" / "v1" / "silences")
        .and(warp::get())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "GET", "/api/v1/silences"))
        .and(raw_query())
        .then(list_silences);
    let add_silence = warp::path!("api" / "v1" / "silences")
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(authorized(state.clone(), "POST", "/api/v1/silences"))
        .and(raw_query())
        .and(warp::body::content_length_limit(super::identity::MAX_BODY))
        .and(warp::body::bytes())
        .then(create_silence);
    let expire = warp::path!("api" / "v1" / "silences" / String)
        .and(warp::delete())
        .and(with_state(state.clone()))
        .and(authorized(state, "DELETE", "/api/v1/silences/{id}"))
        .and_then(|id: String, state: ApiState, who| async move { decoded(id, "id").map(|id| (state, who, id)) })
        .untuple_one()
        .and(raw_query())
        .then(expire_silence);
    list_alerts
        .or(get_alert)
        .unify()
        .or(ack_alert)
        .unify()
        .or(silences)
        .unify()
        .or(add_silence)
        .unify()
        .or(expire)
        .unify()
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_bodies_name_the_offending_field() {
        let e = parse_body::<CreateSilence>(br#"{"matchers": [{"name": "a", "valu": "b"}], "duration": "1h"}"#)
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("matchers[0].valu"));
        let req: CreateSilence =
            parse_body(br#"{"matchers": [{"name": "a b", "value": "x"}], "duration": "1h", "comment": "c"}"#).unwrap();
        assert_eq!(
            validate_silence(&req, 0).unwrap_err().field.as_deref(),
            Some("matchers[0].name")
        );
        let req: CreateSilence =
            parse_body(br#"{"matchers": [{"name": "host", "value": "x"}], "duration": "soon", "comment": "c"}"#)
                .unwrap();
        assert_eq!(
            validate_silence(&req, 0).unwrap_err().field.as_deref(),
            Some("duration")
        );
        let req: CreateSilence =
            parse_body(br#"{"matchers": [{"name": "host", "value": "x"}], "duration": "2h"}"#).unwrap();
        assert_eq!(validate_silence(&req, 0).unwrap_err().field.as_deref(), Some("comment"));
        let req: CreateSilence = parse_body(br#"{"matchers": [], "duration": "2h", "comment": "c"}"#).unwrap();
        assert_eq!(
            validate_silence(&req, 0).unwrap_err().field.as_deref(),
            Some("matchers")
        );
        let req: CreateSilence =
            parse_body(br#"{"matchers": [{"name": "host", "value": "x"}], "duration": "2h", "comment": "c"}"#).unwrap();
        assert_eq!(validate_silence(&req, 1_000).unwrap(), 1_000 + 7_200_000);
    }
}
