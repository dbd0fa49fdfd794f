//! JSON views of the REST API (the models of the warp `todos` layout). They are
//! the API's contract; `stewardctl` reads the same types. Domain types are
//! converted here, at the edge.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use steward_shared::status::CheckStatus;

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

/// Epoch milliseconds as RFC 3339 UTC with milliseconds, e.g.
/// `2023-11-14T22:13:20.000Z`. Out-of-range values are clamped to years 0..=9999.
pub fn rfc3339(ms: i64) -> String {
    const MIN_MS: i64 = -62_167_219_200_000; // 0000-01-01T00:00:00Z
    const MAX_MS: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    let ms = ms.clamp(MIN_MS, MAX_MS);
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day)
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(i64::MIN), "0000-01-01T00:00:00.000Z");
    }
}
