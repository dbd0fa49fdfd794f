//! Alerting: alerts with a fingerprint (source + labels), four severities,
//! the firing → resolved lifecycle, acknowledgement and silences
//! ([`crate::store::alert`] keeps them, every transition audited, with an
//! outbox of notifications per receiver that is retried until delivered).
//! [`config`] is `[alerts]` of the config file (sources, receivers, routes),
//! [`evaluator`] the loop that reconciles every source each round,
//! [`receivers`] the receivers and the worker that drains the outbox. REST:
//! `api/alerts.rs`; CLI: `client/alerts.rs`.
//!
//! Sources report the full set of conditions that hold now
//! ([`crate::store::Store::reconcile_alerts`]): a new fingerprint fires, one
//! no longer reported resolves ([`evaluator::SOURCES`]; the SLO burn tiers
//! through [`slo_candidates`]).
//!
//! Invariants:
//! - At most one firing alert per fingerprint (a partial unique index), so two
//!   replicas evaluating the same source cannot fire it twice.
//! - A transition and the notifications it causes commit together; a
//!   notification is retried until its receiver takes it.
use std::collections::BTreeMap;

pub mod config;
pub mod evaluator;
pub mod receivers;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Alert severity, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        }
    }
}

impl std::str::FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "info" => Ok(Severity::Info),
            "warning" => Ok(Severity::Warning),
            "error" => Ok(Severity::Error),
            "critical" => Ok(Severity::Critical),
            other => Err(format!(
                "unknown severity {other:?}: expected info, warning, error or critical"
            )),
        }
    }
}

/// A condition a source reports as holding now.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub severity: Severity,
    pub summary: String,
    /// Identify the alert (with the source); `alertname` by convention.
    pub labels: BTreeMap<String, String>,
}

impl Candidate {
    /// SHA-256 over the source and the sorted labels (first 16 bytes, hex).
    pub fn fingerprint(&self, source: &str) -> String {
        let mut h = Sha256::new();
        h.update(source.as_bytes());
        for (k, v) in &self.labels {
            h.update([0u8]);
            h.update(k.as_bytes());
            h.update([1u8]);
            h.update(v.as_bytes());
        }
        hex::encode(&h.finalize()[..16])
    }
}

/// An alert as stored and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Alert {
    pub id: String,
    pub fingerprint: String,
    pub source: String,
    pub severity: Severity,
    /// `firing` or `resolved`.
    pub state: String,
    pub summary: String,
    pub labels: BTreeMap<String, String>,
    pub started_ms: i64,
    pub resolved_ms: Option<i64>,
    pub acked_by: Option<String>,
    pub acked_ms: Option<i64>,
    /// A silence matched when it fired: no notification was sent.
    pub silenced: bool,
}

/// One label matcher of a silence (`name=value` or `name!=value`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Matcher {
    pub name: String,
    pub value: String,
    #[serde(default)]
    pub negate: bool,
}

/// A silence: alerts matching every matcher are not notified while it lasts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Silence {
    pub id: String,
    pub matchers: Vec<Matcher>,
    pub comment: String,
    pub created_by: String,
    pub starts_ms: i64,
    pub ends_ms: i64,
}

impl Silence {
    pub fn active(&self, now_ms: i64) -> bool {
        self.starts_ms <= now_ms && now_ms < self.ends_ms
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.matchers.is_empty()
            && self.matchers.iter().all(|m| {
                let equal = labels.get(&m.name).map(String::as_str).unwrap_or("") == m.value;
                equal != m.negate
            })
    }
}

/// The firing burn tiers of the evaluated SLOs, as alert candidates
/// (`alertname=SLOBurnRate`, `slo`, `tier`, and `group` when grouped).
pub fn slo_candidates(statuses: &[crate::slo::status::SloStatus]) -> Vec<Candidate> {
    let mut out = Vec::new();
    for st in statuses {
        let mut push = |group: Option<&str>, tiers: &[crate::slo::eval::TierState]| {
            for t in tiers.iter().filter(|t| t.firing) {
                let mut labels = BTreeMap::from([
                    ("alertname".to_string(), "SLOBurnRate".to_string()),
                    ("slo".to_string(), st.name.clone()),
                    ("tier".to_string(), t.name.to_string()),
                ]);
                if let Some(g) = group {
                    labels.insert("group".into(), g.to_string());
                }
                out.push(Candidate {
                    severity: if t.severity == "critical" {
                        Severity::Critical
                    } else {
                        Severity::Warning
                    },
                    summary: format!(
                        "SLO {}{}: error budget burning {:.1}x over {}m and {:.1}x over {}m (tier {}, threshold {}x)",
                        st.name,
                        group.map(|g| format!(" [{g}]")).unwrap_or_default(),
                        t.long_burn,
                        t.long_window_minutes,
                        t.short_burn,
                        t.short_window_minutes,
                        t.name,
                        t.factor
                    ),
                    labels,
                });
            }
        };
        if st.groups.is_empty() {
            push(None, &st.overall.tiers);
        } else {
            for g in &st.groups {
                push(Some(&g.group), &g.evaluation.tiers);
            }
        }
    }
    out
}
