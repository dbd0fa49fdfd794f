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
/// shows: `from..=to` is cut into segments at every edge of a range some
/// figure sums over, and each segment is read as one bucket (its sum, dated at
/// its last minute; [`Store::slo_series`] sums whole hours from the hourly
/// table and the partial hours at a segment's edges from the minute table).
///
/// Why it is exact: every figure of [`eval::evaluate`] and
/// [`eval::budget_history`] is a sum over a range `a..=b` — the window
/// (`window start..=to`), a burn or tier window (`to − w + 1..=to`) or the
/// budget up to a history point (`window start..=end`) — and every such `a`
/// and `b + 1` is a segment start, so a segment (dated at its last minute)
/// falls in a range exactly when all its minutes do. Timeslices: the slice
/// boundaries are cuts too, so a segment lies in one slice and each slice's
/// part of a range sums to the same (total, good) as its minutes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPlan {
    /// First minute read ([`first_minute`]).
    pub from: i64,
    /// Last minute read (the current one).
    pub to: i64,
    /// Segment starts, ascending, the first one `from`; a segment runs to the
    /// next start − 1 (the last one to `to`). `None`: minute by minute.
    pub starts: Option<Vec<i64>>,
}

/// One range a segment read sums: minutes (or, `hourly`, hours) `lo..=hi`,
/// counted in the segment ending at minute `end`, added (`sign` 1) or
/// subtracted (−1: the minutes of a partial hour outside the segment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub lo: i64,
    pub hi: i64,
    pub end: i64,
    pub hourly: bool,
    pub sign: i64,
}

impl ReadPlan {
    /// Everything minute by minute.
    pub fn per_minute(spec: &SloSpec, now_ms: i64) -> ReadPlan {
        ReadPlan {
            from: first_minute(spec, now_ms),
            to: now_ms.div_euclid(60_000),
            starts: None,
        }
    }

    /// The plan of `spec` at `now_ms`.
    pub fn of(spec: &SloSpec, now_ms: i64) -> ReadPlan {
        let plain = ReadPlan::per_minute(spec, now_ms);
        let (from, to) = (plain.from, plain.to);
        let window = spec
            .window()
            .unwrap_or(super::spec::Window::Rolling { minutes: 43_200 });
        let (wfrom, _, _) = eval::window_bounds(window, now_ms);
        let mut cuts = std::collections::BTreeSet::from([from, wfrom]);
        for w in eval::BURN_WINDOWS
            .iter()
            .map(|w| w.1)
            .chain(eval::scaled_tiers(window).iter().flat_map(|t| [t.3, t.4]))
        {
            cuts.insert(to - w + 1);
        }
        cuts.extend(eval::history_ends(wfrom, to).into_iter().map(|e| e + 1));
        if let Some((len, _)) = spec.timeslice() {
            if len <= 1 {
                return plain; // every minute is a slice
            }
            let first = from.div_euclid(len) + 1;
            cuts.extend((first..=to.div_euclid(len)).map(|k| k * len));
        }
        let starts: Vec<i64> = cuts.into_iter().filter(|c| (from..=to).contains(c)).collect();
        if starts.len() as i64 > to - from {
            return plain;
        }
        ReadPlan {
            starts: Some(starts),
            ..plain
        }
    }

    /// The segments as `(first, last)` minutes (`None` when minute by minute).
    pub fn segments(&self) -> Option<Vec<(i64, i64)>> {
        let starts = self.starts.as_ref()?;
        Some(
            starts
                .iter()
                .enumerate()
                .map(|(i, &s)| (s, starts.get(i + 1).map_or(self.to, |n| n - 1)))
                .collect(),
        )
    }

    /// What to read for the segments: per segment, the hours it touches
    /// from the hourly table and, for each partial hour at its edges, the
    /// fewer minutes: those inside the segment (added, the hour left out) or
    /// those outside it (the hour added, they subtracted), at most 30 per edge.
    pub fn pieces(&self) -> Vec<Piece> {
        let mut out = Vec::new();
        let minutes = |lo: i64, hi: i64, end: i64, sign: i64| Piece {
            lo,
            hi,
            end,
            hourly: false,
            sign,
        };
        for (s, e) in self.segments().unwrap_or_default() {
            let (hs, he) = (s.div_euclid(60), e.div_euclid(60));
            let before = s - hs * 60; // minutes of hour `hs` before the segment
            let after = he * 60 + 59 - e; // minutes of hour `he` after it
            if hs == he {
                if e - s < before + after {
                    out.push(minutes(s, e, e, 1));
                    continue;
                }
                if before > 0 {
                    out.push(minutes(hs * 60, s - 1, e, -1));
                }
                if after > 0 {
                    out.push(minutes(e + 1, he * 60 + 59, e, -1));
                }
                out.push(Piece {
                    lo: hs,
                    hi: hs,
                    end: e,
                    hourly: true,
                    sign: 1,
                });
                continue;
            }
            let mut first = hs;
            if before > 0 {
                if 60 - before <= before {
                    out.push(minutes(s, hs * 60 + 59, e, 1));
                    first = hs + 1;
                } else {
                    out.push(minutes(hs * 60, s - 1, e, -1));
                }
            }
            let mut last = he;
            if after > 0 {
                if 60 - after <= after {
                    out.push(minutes(he * 60, e, e, 1));
                    last = he - 1;
                } else {
                    out.push(minutes(e + 1, he * 60 + 59, e, -1));
                }
            }
            if first <= last {
                out.push(Piece {
                    lo: first,
                    hi: last,
                    end: e,
                    hourly: true,
                    sign: 1,
                });
            }
        }
        out
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

/// How many SLOs [`statuses`] evaluates at once: each status is a read of
/// its own (a connection of the read pool), so the database and the
/// evaluation use every core; bounded well below the pools' sizes so the
/// API, ingest and dispatch still find connections.
pub const PARALLEL_STATUSES: usize = 4;

/// The statuses of `slos` at `now_ms`, in their order, at most
/// [`PARALLEL_STATUSES`] evaluated at once; the first error ends it.
pub async fn statuses(store: &Store, slos: Vec<StoredSlo>, now_ms: i64) -> Result<Vec<SloStatus>, StoreError> {
    use futures_util::{StreamExt, TryStreamExt};
    futures_util::stream::iter(slos)
        .map(|slo| status(store, slo, now_ms))
        .buffered(PARALLEL_STATUSES)
        .try_collect()
        .await
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
