//! SLOs on `/metrics`, from the alert evaluator's periodic round (which
//! evaluates every SLO anyway; a scrape never evaluates anything):
//!
//! - `steward_slo_sli{slo}`: the good share over the SLO's window (absent
//!   without events);
//! - `steward_slo_error_budget_remaining{slo}`: 1 untouched, 0 spent, < 0 overspent;
//! - `steward_slo_burn_rate{slo,window}`: `window` one of 5m 30m 1h 2h 6h 1d 3d;
//! - `steward_slo_alert_firing{slo,tier}`: 1 while the tier fires, else 0
//!   (enabled tiers only);
//! - `steward_slo_metrics_dropped`: SLOs of the last round left out by the cap.
//!
//! Invariants: label values are SLO names (bounded by the configuration,
//! and at most [`MAX_EXPORTED`] of them, the first by name) and fixed enums,
//! never a host or a group's value. A grouped SLO is exported as a whole
//! (all groups summed, as `GET /api/v1/slos/{name}` shows it); its tier is
//! firing when it fires for the whole SLO or for any group (whose name is
//! not exported). Each round replaces the previous one: an SLO that is gone
//! disappears from `/metrics`.
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::eval::{BURN_WINDOWS, TIERS_30D};
use super::status::SloStatus;
use crate::metrics::Metrics;

/// Most SLOs exported.
pub const MAX_EXPORTED: usize = 1000;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SloLabels {
    slo: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WindowLabels {
    slo: String,
    window: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierLabels {
    slo: String,
    tier: &'static str,
}

type F64Gauge = Gauge<f64, AtomicU64>;

pub(crate) struct SloMetrics {
    sli: Family<SloLabels, F64Gauge>,
    budget: Family<SloLabels, F64Gauge>,
    burn: Family<WindowLabels, F64Gauge>,
    firing: Family<TierLabels, Gauge>,
    dropped: Gauge,
    /// The SLO names of the last round.
    exported: Mutex<BTreeSet<String>>,
}

impl SloMetrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let m = SloMetrics {
            sli: Family::default(),
            budget: Family::default(),
            burn: Family::default(),
            firing: Family::default(),
            dropped: Gauge::default(),
            exported: Mutex::default(),
        };
        registry.register(
            "slo_sli",
            "SLI of each SLO over its window (good share, 0..1; absent without events), all groups summed",
            m.sli.clone(),
        );
        registry.register(
            "slo_error_budget_remaining",
            "Error budget remaining of each SLO (1 untouched, 0 spent, below 0 overspent), all groups summed",
            m.budget.clone(),
        );
        registry.register(
            "slo_burn_rate",
            "Burn rate of each SLO over the window 5m, 30m, 1h, 2h, 6h, 1d or 3d, all groups summed",
            m.burn.clone(),
        );
        registry.register(
            "slo_alert_firing",
            "1 while the SLO's burn-rate alert tier fires (for the whole SLO or any group), else 0",
            m.firing.clone(),
        );
        registry.register(
            "slo_metrics_dropped",
            "SLOs of the last evaluation round not exported because of the cap of 1000",
            m.dropped.clone(),
        );
        m
    }

    fn forget(&self, slo: &str) {
        let s = || slo.to_string();
        self.sli.remove(&SloLabels { slo: s() });
        self.budget.remove(&SloLabels { slo: s() });
        for (window, _) in BURN_WINDOWS {
            self.burn.remove(&WindowLabels { slo: s(), window });
        }
        for (tier, ..) in TIERS_30D {
            self.firing.remove(&TierLabels { slo: s(), tier });
        }
    }
}

impl Metrics {
    /// The SLO values of one evaluation round (replacing the previous round's).
    pub fn set_slos(&self, statuses: &[SloStatus]) {
        let m = &self.slo;
        let mut sorted: Vec<&SloStatus> = statuses.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        sorted.dedup_by(|a, b| a.name == b.name);
        let dropped = sorted.len().saturating_sub(MAX_EXPORTED);
        sorted.truncate(MAX_EXPORTED);
        let names: BTreeSet<String> = sorted.iter().map(|s| s.name.clone()).collect();
        let Ok(mut exported) = m.exported.lock() else { return };
        for gone in exported.difference(&names) {
            m.forget(gone);
        }
        for s in sorted {
            let slo = || s.name.clone();
            let e = &s.overall;
            match e.sli.filter(|v| v.is_finite()) {
                Some(v) => {
                    m.sli.get_or_create(&SloLabels { slo: slo() }).set(v);
                }
                None => {
                    m.sli.remove(&SloLabels { slo: slo() });
                }
            }
            if e.budget_remaining.is_finite() {
                m.budget
                    .get_or_create(&SloLabels { slo: slo() })
                    .set(e.budget_remaining);
            } else {
                m.budget.remove(&SloLabels { slo: slo() });
            }
            for (window, _) in BURN_WINDOWS {
                let labels = WindowLabels { slo: slo(), window };
                match e.burn_rates.iter().find(|b| b.window == window).map(|b| b.burn_rate) {
                    Some(v) if v.is_finite() => {
                        m.burn.get_or_create(&labels).set(v);
                    }
                    _ => {
                        m.burn.remove(&labels);
                    }
                }
            }
            for (tier, ..) in TIERS_30D {
                let labels = TierLabels { slo: slo(), tier };
                let states = e
                    .tiers
                    .iter()
                    .chain(s.groups.iter().flat_map(|g| g.evaluation.tiers.iter()))
                    .filter(|t| t.name == tier && t.enabled);
                let mut enabled = false;
                let mut firing = false;
                for t in states {
                    enabled = true;
                    firing |= t.firing;
                }
                if enabled {
                    m.firing.get_or_create(&labels).set(i64::from(firing));
                } else {
                    m.firing.remove(&labels);
                }
            }
        }
        m.dropped.set(i64::try_from(dropped).unwrap_or(i64::MAX));
        *exported = names;
    }
}
