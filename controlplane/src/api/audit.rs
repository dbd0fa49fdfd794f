//! Audit routes: `GET /api/v1/audit?actor=&action=&since=&limit=&cursor=`
//! (oldest first, paginated like the other lists) and
//! `GET /api/v1/audit/export` (the document `stewardctl audit verify` checks
//! offline); and the audit record of refused requests.
use std::sync::Arc;

use http::StatusCode;
use warp::reply::Response;

use super::ApiState;
use super::auth::{Principal, Refusal};
use super::handlers::json;
use super::params::{self, Params};
use super::problem::Problem;
use super::views::ListView;
use crate::audit::denials::{Admission, DenialLimiter};
use crate::audit::export::{self, AuditEntryView};
use crate::audit::signing::Signer;
use crate::audit::{AuditEntry, AuditFilter, Outcome, actor};

/// Action name of a refused authentication in the audit log.
pub const API_AUTHENTICATE: &str = "api.authenticate";

/// What the audit routes and the denial audit need.
#[derive(Clone, Debug)]
pub struct AuditApi {
    /// Signs export heads; without it, exports are refused with 503.
    pub signer: Option<Arc<Signer>>,
    /// Bounds how many refused requests are recorded one by one.
    pub denials: Arc<DenialLimiter>,
}

impl Default for AuditApi {
    fn default() -> Self {
        AuditApi {
            signer: None,
            denials: Arc::new(DenialLimiter::per_minute(60)),
        }
    }
}

/// `GET /api/v1/audit?actor=&action=&since=&limit=&cursor=`
pub async fn list(state: ApiState, _who: Principal, query: String) -> Result<Response, Problem> {
    let p = Params::parse(&query, &["actor", "action", "since", "limit", "cursor"])?;
    let limit = p.limit()?;
    let since_ms = p
        .typed("since")
        .map(|raw| params::parse_time("since", raw))
        .transpose()?;
    let after = params::parse_audit_cursor(p.get("cursor"))?;
    let filter = AuditFilter {
        actor: p.get("actor").map(str::to_string),
        action: p.get("action").map(str::to_string),
        since_ms,
    };
    let page = state
        .store
        .list_audit(&filter, after, limit)
        .await
        .map_err(Problem::from_store)?;
    let next_cursor = page
        .has_more
        .then(|| page.items.last().map(|e| params::audit_cursor(e.seq)))
        .flatten();
    let items: Vec<AuditEntryView> = page.items.iter().map(AuditEntryView::from).collect();
    Ok(json(StatusCode::OK, &ListView { items, next_cursor }))
}

/// `GET /api/v1/audit/export`: every entry and checkpoint, the public key,
/// and a head signed now.
pub async fn export(state: ApiState, _who: Principal, query: String) -> Result<Response, Problem> {
    Params::parse(&query, &[])?;
    let Some(signer) = state.audit.signer.as_deref() else {
        return Err(Problem::unavailable(
            "this control plane has no audit signing key, so it cannot sign an export",
        ));
    };
    let snapshot = state.store.audit_snapshot().await.map_err(Problem::from_store)?;
    let doc = export::build(&snapshot, signer, steward_shared::now_ms());
    Ok(json(StatusCode::OK, &doc))
}

/// Records a refused authentication (`api.authenticate`, `denied`), within
/// the [`DenialLimiter`]'s budget. A storage failure is logged: the client
/// gets its 401 either way.
pub(super) async fn record_denial(
    state: &ApiState,
    request_id: &str,
    refusal: &Refusal,
    method: &http::Method,
    route: &str,
) {
    let suppressed_before = match state.audit.denials.admit() {
        Admission::Record { suppressed_before } => suppressed_before,
        Admission::Suppress { first } => {
            state.metrics.denial_unaudited();
            if first {
                tracing::warn!(
                    "refused requests arrive faster than audit.denials_per_minute: counting them into the next \
                     recorded one instead of recording each"
                );
            }
            return;
        }
    };
    let mut details = serde_json::json!({ "reason": refusal.reason, "method": method.as_str() });
    if let Some(token_id) = &refusal.token_id {
        details["token_id"] = token_id.as_str().into();
    }
    if suppressed_before > 0 {
        details["suppressed_before"] = suppressed_before.into();
    }
    let entry = AuditEntry::new(actor::ANONYMOUS, API_AUTHENTICATE, Outcome::Denied)
        .target(route)
        .request_id(Some(request_id))
        .details(details);
    if let Err(error) = state.store.append_audit(entry).await {
        tracing::warn!(%error, "could not audit a refused request");
    }
}
