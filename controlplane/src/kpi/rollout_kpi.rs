//! `rollout_success_rate`: rollouts (migration `0007_rollouts`) that ended in
//! the window, by how they ended.
//!
//! - Counted: `succeeded`, `rolled_back` and `failed`; the rate is
//!   succeeded / (succeeded + rolled_back + failed).
//! - Operator aborts (`aborted`) are left out, like cancelled jobs: an abort
//!   is a decision, not an outcome (details: `aborted`).
//! - Hosts: a rollout belongs to a set of hosts (a scope, a selector, a
//!   group) when every one of its target hosts is in the set; a rollout
//!   that also touched hosts outside it counts only fleet-wide.
use std::collections::HashSet;

use super::{Ctx, KpiData, Reading};

/// A rollout that ended, as far as the KPI needs it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RolloutRow {
    pub id: String,
    /// `succeeded`, `rolled_back`, `failed` or `aborted`.
    pub state: String,
    pub finished_ms: i64,
    /// Its target hosts.
    pub hosts: Vec<String>,
}

/// The rollouts whose every target host is among `ids`.
pub(super) fn restrict(rollouts: &[RolloutRow], ids: &HashSet<&str>) -> Vec<RolloutRow> {
    rollouts
        .iter()
        .filter(|r| !r.hosts.is_empty() && r.hosts.iter().all(|h| ids.contains(h.as_str())))
        .cloned()
        .collect()
}

pub(super) fn rollout_success_rate(d: &KpiData, ctx: &Ctx) -> Reading {
    let ended: Vec<&RolloutRow> = d
        .rollouts
        .iter()
        .filter(|r| ctx.in_window(Some(r.finished_ms)))
        .collect();
    let counted = |s: &str| ended.iter().filter(|r| r.state == s).count();
    let (ok, rolled_back, failed) = (counted("succeeded"), counted("rolled_back"), counted("failed"));
    Reading::ratio(ok, ok + rolled_back + failed)
        .with("rolled_back", rolled_back as f64)
        .with("failed", failed as f64)
        .with("aborted", counted("aborted") as f64)
}
