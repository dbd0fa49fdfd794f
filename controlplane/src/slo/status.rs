//! The status of one SLO as `GET /api/v1/slos/{name}` shows it: the whole
//! SLO (all groups summed), each group, and the budget over time.
use std::collections::BTreeMap;

use serde::Serialize;

use super::eval::{self, Bucket, Evaluation};
use super::spec::SloSpec;
use crate::store::{Store, StoreError, slo::StoredSlo};

/// Longest burn-rate window a status shows (3 days), in minutes.
const LONGEST_BURN_MINUTES: i64 = 3 * 1440;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SloStatus {
    pub name: String,
    pub spec: SloSpec,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub evaluated_at_ms: i64,
    /// The whole SLO (every group summed).
    #[serde(flatten)]
    pub overall: Evaluation,
    /// `[end_ms, budget_remaining]`, from the window's start to now.
    #[schema(value_type = Vec<Vec<f64>>)]
    pub budget_history: Vec<(i64, f64)>,
    /// One entry per group when the SLO is grouped.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupStatus>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GroupStatus {
    pub group: String,
    #[serde(flatten)]
    pub evaluation: Evaluation,
}

/// A short line per SLO for `GET /api/v1/slos`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SloSummary {
    pub name: String,
    pub description: String,
    pub target: f64,
    pub window: String,
    pub sli: Option<f64>,
    pub budget_remaining: f64,
    /// Names of the tiers firing for the whole SLO or any group.
    pub firing: Vec<String>,
    pub groups: usize,
}

/// The first minute a status needs: the window's start or 3 days back, whichever is earlier.
pub fn first_minute(spec: &SloSpec, now_ms: i64) -> i64 {
    let window = spec
        .window()
        .unwrap_or(super::spec::Window::Rolling { minutes: 43_200 });
    let (from, to, _) = eval::window_bounds(window, now_ms);
    from.min(to - LONGEST_BURN_MINUTES + 1)
}

/// How a status reads an SLO's buckets without changing any figure it
/// shows: the minutes in `collapse_from..detail_from` are summed per step of
/// the budget history (each sum dated at the last minute of its step), the
/// others are read minute by minute.
///
/// Why it is exact (occurrences; timeslices are always read minute by
/// minute, a slice is not a sum): every figure of [`eval::evaluate`] and
/// [`eval::budget_history`] is a sum over the window, over the last `w`
/// minutes (burn rates and tiers: all within `detail_from..=to`, which
/// spans whole steps) or from the window's start to a history point
/// (`to − j × step`, the boundaries of the summed steps). A sum dated at its
/// step's last minute falls in exactly the ranges that hold the whole step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPlan {
    /// First minute read ([`first_minute`]).
    pub from: i64,
    /// Last minute read (the current one).
    pub to: i64,
    pub collapse_from: i64,
    pub detail_from: i64,
    /// The history step, in minutes.
    pub step: i64,
}

impl ReadPlan {
    /// Everything minute by minute.
    pub fn per_minute(spec: &SloSpec, now_ms: i64) -> ReadPlan {
        let to = now_ms.div_euclid(60_000);
        ReadPlan {
            from: first_minute(spec, now_ms),
            to,
            collapse_from: to + 1,
            detail_from: to + 1,
            step: 1,
        }
    }

    /// The plan of `spec` at `now_ms`.
    pub fn of(spec: &SloSpec, now_ms: i64) -> ReadPlan {
        let plain = ReadPlan::per_minute(spec, now_ms);
        if spec.timeslice().is_some() {
            return plain;
        }
        let window = spec
            .window()
            .unwrap_or(super::spec::Window::Rolling { minutes: 43_200 });
        let (wfrom, to, _) = eval::window_bounds(window, now_ms);
        let step = ((to - wfrom + 1) / eval::HISTORY_POINTS).max(1);
        let longest = eval::BURN_WINDOWS
            .iter()
            .map(|w| w.1)
            .chain(eval::scaled_tiers(window).iter().flat_map(|t| [t.3, t.4]))
            .max()
            .unwrap_or(LONGEST_BURN_MINUTES);
        let detail_from = to - ((longest + step - 1) / step) * step + 1;
        let collapse_from = wfrom.max(to - eval::HISTORY_POINTS * step + 1);
        if collapse_from >= detail_from {
            return plain;
        }
        ReadPlan {
            collapse_from,
            detail_from,
            step,
            ..plain
        }
    }
}

/// Sums the groups' buckets per minute.
pub fn merge(groups: &BTreeMap<String, Vec<Bucket>>) -> Vec<Bucket> {
    let mut by_minute: BTreeMap<i64, (u64, u64)> = BTreeMap::new();
    for b in groups.values().flatten() {
        let e = by_minute.entry(b.minute).or_default();
        e.0 += b.total;
        e.1 += b.good;
    }
    by_minute
        .into_iter()
        .map(|(minute, (total, good))| Bucket { minute, total, good })
        .collect()
}

/// Evaluates one stored SLO at `now_ms`.
pub async fn status(store: &Store, slo: StoredSlo, now_ms: i64) -> Result<SloStatus, StoreError> {
    let buckets = store.slo_series(&slo.name, &ReadPlan::of(&slo.spec, now_ms)).await?;
    Ok(status_of(slo, &buckets, now_ms))
}

/// Evaluates an SLO over already loaded buckets (per group).
pub fn status_of(slo: StoredSlo, buckets: &BTreeMap<String, Vec<Bucket>>, now_ms: i64) -> SloStatus {
    let all = merge(buckets);
    let grouped = slo
        .spec
        .group_by()
        .map(|g| g != super::spec::GroupBy::None)
        .unwrap_or(false);
    let groups = if grouped {
        buckets
            .iter()
            .map(|(group, series)| GroupStatus {
                group: group.clone(),
                evaluation: eval::evaluate(&slo.spec, series, now_ms),
            })
            .collect()
    } else {
        Vec::new()
    };
    SloStatus {
        overall: eval::evaluate(&slo.spec, &all, now_ms),
        budget_history: eval::budget_history(&slo.spec, &all, now_ms),
        groups,
        name: slo.name,
        spec: slo.spec,
        created_at_ms: slo.created_ms,
        updated_at_ms: slo.updated_ms,
        evaluated_at_ms: now_ms,
    }
}

impl SloStatus {
    pub fn summary(&self) -> SloSummary {
        let mut firing: Vec<String> = self
            .overall
            .tiers
            .iter()
            .chain(self.groups.iter().flat_map(|g| g.evaluation.tiers.iter()))
            .filter(|t| t.firing)
            .map(|t| t.name.to_string())
            .collect();
        firing.sort();
        firing.dedup();
        let window = self
            .spec
            .time_window
            .first()
            .map(|w| {
                if w.is_rolling {
                    w.duration.clone()
                } else {
                    "calendar month".into()
                }
            })
            .unwrap_or_default();
        SloSummary {
            name: self.name.clone(),
            description: self.spec.description.clone(),
            target: self.spec.target(),
            window,
            sli: self.overall.sli,
            budget_remaining: self.overall.budget_remaining,
            firing,
            groups: self.groups.len(),
        }
    }
}
