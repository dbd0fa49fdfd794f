//! JSON views of the REST API (the models of the warp `todos` layout). They are
//! the API's contract; `stewardctl` reads the same types. Domain types are
//! converted here, at the edge.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use steward_shared::status::CheckStatus;
use steward_shared::timestamp::rfc3339;

use crate::model::{Host, LatestCheck, StatusCounts};

/// A page of a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ListView<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /api/v1/hosts/{host}` and the items of `GET /api/v1/hosts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostView {
    pub id: String,
    pub hostname: String,
    /// Assigned by the control plane; what selectors match.
    pub labels: BTreeMap<String, String>,
    /// Self-reported by the agent; informational.
    pub facts: BTreeMap<String, String>,
    pub agent_version: String,
    /// Seen within the control plane's offline threshold.
    pub online: bool,
    /// A stream was open when last recorded.
    pub connected: bool,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// `last_seen_ms` as RFC 3339 (UTC).
    pub last_seen: String,
    pub last_seq: u64,
    pub spool_dropped_total: u64,
    /// The host's latest checks, counted by status.
    pub checks: StatusCounts,
}

impl HostView {
    pub fn new(host: Host, checks: StatusCounts, now_ms: i64, offline_after_ms: i64) -> Self {
        let online = now_ms.saturating_sub(host.last_seen_ms) <= offline_after_ms;
        HostView {
            online,
            last_seen: rfc3339(host.last_seen_ms),
            id: host.id,
            hostname: host.hostname,
            labels: host.labels,
            facts: host.facts,
            agent_version: host.agent_version,
            // The stored flag can outlive a control plane killed with SIGKILL;
            // a stream only counts as open while the host is also heard from.
            connected: host.connected && online,
            first_seen_ms: host.first_seen_ms,
            last_seen_ms: host.last_seen_ms,
            last_seq: host.last_seq,
            spool_dropped_total: host.spool_dropped_total,
            checks,
        }
    }
}

/// One measured value; `value` is null when it was not a finite number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ValueView {
    pub name: String,
    pub value: Option<f64>,
    pub unit: String,
}

/// The latest result of one check on one host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckView {
    pub host_id: String,
    pub hostname: String,
    pub name: String,
    pub kind: String,
    #[schema(value_type = crate::api::openapi::CheckStatusSchema)]
    pub status: CheckStatus,
    pub values: Vec<ValueView>,
    pub message: String,
    pub observed_at_ms: i64,
    /// `observed_at_ms` as RFC 3339 (UTC).
    pub observed_at: String,
    pub duration_us: u64,
    pub seq: u64,
}

impl From<LatestCheck> for CheckView {
    fn from(c: LatestCheck) -> Self {
        let r = c.result;
        CheckView {
            host_id: c.host_id,
            hostname: c.hostname,
            name: r.name,
            kind: r.kind,
            status: r.status,
            values: r
                .values
                .into_iter()
                .map(|v| ValueView {
                    name: v.name,
                    value: v.value.is_finite().then_some(v.value),
                    unit: v.unit,
                })
                .collect(),
            message: r.message,
            observed_at: rfc3339(r.observed_at_ms),
            observed_at_ms: r.observed_at_ms,
            duration_us: r.duration_us,
            seq: c.seq,
        }
    }
}
