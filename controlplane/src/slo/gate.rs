//! The rollouts' SLO gate on top of the SLO engine: a rollout naming SLOs in
//! its strategy waits before each next wave while any of them burns fast.
//!
//! "Burns fast" is the fastest page tier (`page-1h`, 14.4x scaled to the SLO's
//! window): its long and short windows both above the factor, with at least
//! the SLO's minimum event count, for the whole SLO or any of its groups. The
//! tier's alert switch does not matter here (a team may route that alert
//! nowhere and still gate on it). An SLO that does not exist, or whose buckets
//! cannot be read, holds the gate shut: the rollout waits rather than passes
//! blind, and the wave deadline bounds the wait.
use std::future::Future;
use std::pin::Pin;

use super::eval::TierState;
use super::status;
use crate::rollouts::{SloGate, SloVerdict};
use crate::store::Store;

/// The tier the gate reads.
pub const GATE_TIER: &str = "page-1h";

/// The SLO gate backed by the stored SLOs and their buckets.
#[derive(Debug, Clone)]
pub struct StoreSloGate {
    pub store: Store,
}

fn burning(t: &TierState, min_events: u64) -> bool {
    t.name == GATE_TIER && t.long_events >= min_events && t.long_burn > t.factor && t.short_burn > t.factor
}

impl StoreSloGate {
    async fn check(&self, name: &str, now_ms: i64) -> Option<String> {
        let slo = match self.store.get_slo(name).await {
            Ok(Some(slo)) => slo,
            Ok(None) => return Some("no such SLO".into()),
            Err(error) => return Some(format!("cannot read the SLO: {error}")),
        };
        let min_events = slo.spec.alerting.min_events;
        let st = match status::status(&self.store, slo, now_ms).await {
            Ok(st) => st,
            Err(error) => return Some(format!("cannot evaluate the SLO: {error}")),
        };
        let overall = st.overall.tiers.iter().map(|t| ("", t));
        let groups = st
            .groups
            .iter()
            .flat_map(|g| g.evaluation.tiers.iter().map(move |t| (g.group.as_str(), t)));
        overall
            .chain(groups)
            .find(|(_, t)| burning(t, min_events))
            .map(|(group, t)| {
                let whose = if group.is_empty() {
                    String::new()
                } else {
                    format!(" (group {group})")
                };
                format!(
                    "fast burn{whose}: {:.1}x over {} min and {:.1}x over {} min, page threshold {}x",
                    t.long_burn, t.long_window_minutes, t.short_burn, t.short_window_minutes, t.factor
                )
            })
    }
}

impl SloGate for StoreSloGate {
    fn evaluate<'a>(
        &'a self,
        slos: &'a [String],
        now_ms: i64,
    ) -> Pin<Box<dyn Future<Output = SloVerdict> + Send + 'a>> {
        Box::pin(async move {
            for name in slos {
                if let Some(detail) = self.check(name, now_ms).await {
                    return SloVerdict::Burning {
                        slo: name.clone(),
                        detail,
                    };
                }
            }
            SloVerdict::Holds
        })
    }
}
