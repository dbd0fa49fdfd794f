//! SLO arithmetic over one-minute buckets: SLI, error budget, burn rates and
//! the multi-window multi-burn-rate tiers. Pure (the clock is an argument),
//! O(buckets in the longest window).
//!
//! Definitions (REFERENCE.md, SLOs):
//! - budget fraction `b = 1 − target`; burn rate over `w` = error ratio(w) / b.
//! - Occurrences: error ratio = bad events / events; budget remaining =
//!   1 − bad / (b × events) over the SLO window.
//! - Timeslices (slice of `s` minutes, good when its good share ≥ the slice
//!   target): error ratio over `w` = bad slices × s / w (time-based, so a
//!   silent minute is not bad); budget remaining = 1 − bad slices × s / (b × period).
//! - A window of `w` minutes evaluated during minute `m` holds the buckets
//!   `m − w + 1 ..= m`: the current minute counts, nothing older than the
//!   window is read.
//! - A tier fires when both its windows burn faster than its factor and its
//!   long window holds at least `alerting.minEvents` events.
use serde::Serialize;

use super::spec::{SloSpec, Window};

/// Events of one minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Bucket {
    /// Epoch minute (`ms / 60_000`).
    pub minute: i64,
    pub total: u64,
    pub good: u64,
}

/// The burn-rate windows shown in a status, in minutes.
pub const BURN_WINDOWS: [(&str, i64); 7] = [
    ("5m", 5),
    ("30m", 30),
    ("1h", 60),
    ("2h", 120),
    ("6h", 360),
    ("1d", 1440),
    ("3d", 4320),
];

/// A 30-day SLO's tiers: (name, severity, factor, long minutes, short minutes).
pub const TIERS_30D: [(&str, &str, f64, i64, i64); 4] = [
    ("page-1h", "critical", 14.4, 60, 5),
    ("page-6h", "critical", 6.0, 360, 30),
    ("ticket-1d", "warning", 3.0, 1440, 120),
    ("ticket-3d", "warning", 1.0, 4320, 360),
];

const MONTH_30D_MINUTES: i64 = 30 * 1440;
/// Points in a budget history.
pub const HISTORY_POINTS: i64 = 48;

/// One tier's windows after scaling to the SLO's window.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TierState {
    pub name: &'static str,
    pub severity: &'static str,
    pub enabled: bool,
    pub factor: f64,
    pub long_window_minutes: i64,
    pub short_window_minutes: i64,
    pub long_burn: f64,
    pub short_burn: f64,
    /// Events (timeslices with data) in the long window.
    pub long_events: u64,
    pub firing: bool,
}

/// The burn rate over one window.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct BurnRate {
    pub window: &'static str,
    pub burn_rate: f64,
}

/// Everything a status shows for one budget (the whole SLO or one group).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Evaluation {
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    /// Good share over the window (`None` without events).
    pub sli: Option<f64>,
    pub events: u64,
    pub good_events: u64,
    /// 1 = untouched, 0 = spent, below 0 = overspent.
    pub budget_remaining: f64,
    /// The remaining budget as time of total outage.
    pub budget_remaining_seconds: f64,
    /// Burn rate per window (`5m` .. `3d`).
    pub burn_rates: Vec<BurnRate>,
    pub tiers: Vec<TierState>,
}

/// Window bounds in epoch minutes (inclusive) and the period in minutes.
pub fn window_bounds(window: Window, now_ms: i64) -> (i64, i64, i64) {
    let now_min = now_ms.div_euclid(60_000);
    match window {
        Window::Rolling { minutes } => (now_min - minutes + 1, now_min, minutes),
        Window::CalendarMonth => {
            let (start, next) = steward_shared::timestamp::month_bounds_ms(now_ms);
            (start / 60_000, now_min, (next - start) / 60_000)
        }
    }
}

/// The tiers scaled to the SLO's window: windows in proportion to a 30-day
/// window (at least one minute), factors unchanged (so each tier still
/// stands for the same share of the budget).
pub fn scaled_tiers(window: Window) -> Vec<(&'static str, &'static str, f64, i64, i64)> {
    let period = match window {
        Window::Rolling { minutes } => minutes,
        Window::CalendarMonth => MONTH_30D_MINUTES,
    };
    TIERS_30D
        .iter()
        .map(|&(name, sev, factor, long, short)| {
            let scale = |m: i64| ((m as f64 * period as f64 / MONTH_30D_MINUTES as f64).round() as i64).max(1);
            (name, sev, factor, scale(long), scale(short))
        })
        .collect()
}

/// Buckets in `from..=to` of a series sorted by minute.
fn range(series: &[Bucket], from: i64, to: i64) -> &[Bucket] {
    let a = series.partition_point(|b| b.minute < from);
    let z = series.partition_point(|b| b.minute <= to);
    &series[a..z.max(a)]
}

/// Counts of a window: (events, bad events) — for timeslices, slices with data and bad slices.
fn counts(series: &[Bucket], from: i64, to: i64, slice: Option<(i64, f64)>) -> (u64, u64) {
    let buckets = range(series, from, to);
    match slice {
        None => buckets.iter().fold((0, 0), |(t, bad), b| {
            (t + b.total, bad + b.total.saturating_sub(b.good))
        }),
        Some((len, target)) => {
            let (mut slices, mut bad) = (0u64, 0u64);
            let mut i = 0;
            while i < buckets.len() {
                let id = buckets[i].minute.div_euclid(len);
                let (mut t, mut g) = (0u64, 0u64);
                while i < buckets.len() && buckets[i].minute.div_euclid(len) == id {
                    t += buckets[i].total;
                    g += buckets[i].good;
                    i += 1;
                }
                if t > 0 {
                    slices += 1;
                    if (g as f64) < target * t as f64 {
                        bad += 1;
                    }
                }
            }
            (slices, bad)
        }
    }
}

/// Burn rate over the `w` minutes ending at `end` (0 without events).
fn burn(series: &[Bucket], end: i64, w: i64, spec_budget: f64, slice: Option<(i64, f64)>) -> (f64, u64) {
    let (events, bad) = counts(series, end - w + 1, end, slice);
    let ratio = match slice {
        None if events == 0 => 0.0,
        None => bad as f64 / events as f64,
        Some((len, _)) => (bad as f64 * len as f64) / w as f64,
    };
    (ratio / spec_budget, events)
}

/// Evaluates one budget at `now_ms`. `series` must be sorted by minute.
pub fn evaluate(spec: &SloSpec, series: &[Bucket], now_ms: i64) -> Evaluation {
    let window = spec.window().unwrap_or(Window::Rolling { minutes: 43_200 });
    let (from, to, period) = window_bounds(window, now_ms);
    let budget = 1.0 - spec.target();
    let slice = spec.timeslice();
    let (events, bad) = counts(series, from, to, slice);
    let good_events = events - bad;
    let (sli, remaining) = match slice {
        None if events == 0 => (None, 1.0),
        None => (
            Some(good_events as f64 / events as f64),
            1.0 - bad as f64 / (budget * events as f64),
        ),
        Some((len, _)) => (
            (events > 0).then(|| good_events as f64 / events as f64),
            1.0 - (bad as f64 * len as f64) / (budget * period as f64),
        ),
    };
    let burn_rates = BURN_WINDOWS
        .iter()
        .map(|&(window, w)| BurnRate {
            window,
            burn_rate: burn(series, to, w, budget, slice).0,
        })
        .collect();
    let tiers = scaled_tiers(window)
        .into_iter()
        .map(|(name, severity, factor, long, short)| {
            let (long_burn, long_events) = burn(series, to, long, budget, slice);
            let (short_burn, _) = burn(series, to, short, budget, slice);
            let enabled = spec.tier_enabled(name);
            TierState {
                name,
                severity,
                enabled,
                factor,
                long_window_minutes: long,
                short_window_minutes: short,
                long_burn,
                short_burn,
                long_events,
                firing: enabled && long_events >= spec.alerting.min_events && long_burn > factor && short_burn > factor,
            }
        })
        .collect();
    Evaluation {
        window_start_ms: from * 60_000,
        window_end_ms: (to + 1) * 60_000,
        sli,
        events,
        good_events,
        budget_remaining: remaining,
        budget_remaining_seconds: remaining * budget * period as f64 * 60.0,
        burn_rates,
        tiers,
    }
}

/// The last minutes of the budget history's points for a window `from..=to`,
/// ascending: `to`, then `to − step`, `to − 2·step`, … (at most
/// [`HISTORY_POINTS`], none before `from`). With a step of an hour or more
/// (windows of two days and longer) each earlier point is moved back to the
/// end of its hour: the points fall on whole hours, which a status reads as
/// hourly sums only (no minutes at their edges, see
/// [`crate::slo::status::ReadPlan`]), and they stay distinct and in the window.
pub fn history_ends(from: i64, to: i64) -> Vec<i64> {
    let step = ((to - from + 1) / HISTORY_POINTS).max(1);
    let snap = |at: i64| {
        if step >= 60 && at != to {
            (at + 1).div_euclid(60) * 60 - 1
        } else {
            at
        }
    };
    let mut ends = Vec::new();
    let mut at = to;
    while snap(at) >= from && ends.len() < HISTORY_POINTS as usize {
        ends.push(snap(at));
        at -= step;
    }
    ends.reverse();
    ends
}

/// Budget remaining from the window's start to each of [`HISTORY_POINTS`]
/// instants up to now (for drawing the budget over time); reads only the window.
pub fn budget_history(spec: &SloSpec, series: &[Bucket], now_ms: i64) -> Vec<(i64, f64)> {
    let window = spec.window().unwrap_or(Window::Rolling { minutes: 43_200 });
    let (from, to, period) = window_bounds(window, now_ms);
    let budget = 1.0 - spec.target();
    let slice = spec.timeslice();
    let mut points = Vec::new();
    for end in history_ends(from, to) {
        let (events, bad) = counts(series, from, end, slice);
        let remaining = match slice {
            None if events == 0 => 1.0,
            None => 1.0 - bad as f64 / (budget * events as f64),
            Some((len, _)) => 1.0 - (bad as f64 * len as f64) / (budget * period as f64),
        };
        points.push(((end + 1) * 60_000, remaining));
    }
    points
}
