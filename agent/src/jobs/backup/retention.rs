//! Snapshot retention with restic's meaning (`restic forget --keep-*`, as in
//! restic's `internal/restic/snapshot_policy.go`), on UTC calendar dates:
//!
//! - snapshots are walked newest first;
//! - `keep_last N` keeps the N newest;
//! - `keep_daily N` keeps the newest snapshot of each of the last N days that
//!   have snapshots; `keep_weekly` the same per ISO week (Monday first),
//!   `keep_monthly` per calendar month;
//! - a rule with count left when the walk reaches the oldest snapshot also
//!   keeps that one (restic ≥ 0.16: this maximises the history kept);
//! - a snapshot kept by any rule is kept; with no rule set, everything is kept.
use serde::Deserialize;
use steward_shared::timestamp::utc_secs;

/// Retention keys of a `[[backups]]` table (all optional; none set keeps everything).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Retention {
    pub keep_last: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
}

impl Retention {
    fn is_empty(&self) -> bool {
        self.keep_last.is_none()
            && self.keep_daily.is_none()
            && self.keep_weekly.is_none()
            && self.keep_monthly.is_none()
    }
}

/// ISO 8601 week of the instant `secs` (unix seconds), as `year * 100 + week`.
pub fn iso_week(secs: i64) -> i64 {
    let (year, week, _) = utc_secs(secs).date().to_iso_week_date();
    i64::from(year) * 100 + i64::from(week)
}

/// UTC month of the instant `secs` (unix seconds), as `year * 100 + month`.
pub fn month(secs: i64) -> i64 {
    let d = utc_secs(secs).date();
    i64::from(d.year()) * 100 + i64::from(u8::from(d.month()))
}

/// Indices into `times` (unix seconds) of the snapshots to keep, per restic's
/// rules. Ties in time keep their input order (restic sorts stably).
pub fn keep(times: &[i64], policy: &Retention) -> Vec<usize> {
    let mut order: Vec<usize> = (0..times.len()).collect();
    order.sort_by(|a, b| times[*b].cmp(&times[*a]));
    if policy.is_empty() {
        return order;
    }
    type Bucker = fn(i64, usize) -> i64;
    let mut buckets: [(u32, Bucker, Option<i64>); 4] = [
        (policy.keep_last.unwrap_or(0), |_, nr| nr as i64, None),
        (policy.keep_daily.unwrap_or(0), |t, _| t.div_euclid(86_400), None),
        (policy.keep_weekly.unwrap_or(0), |t, _| iso_week(t), None),
        (policy.keep_monthly.unwrap_or(0), |t, _| month(t), None),
    ];
    let mut kept = Vec::new();
    let n = order.len();
    for (nr, &i) in order.iter().enumerate() {
        let mut keep_it = false;
        for (count, bucker, last) in buckets.iter_mut() {
            if *count == 0 {
                continue;
            }
            let val = bucker(times[i], nr);
            if Some(val) != *last || nr == n - 1 {
                keep_it = true;
                *last = Some(val);
                *count -= 1;
            }
        }
        if keep_it {
            kept.push(i);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn days(year: i32, month: u8, day: u8) -> i64 {
        steward_shared::timestamp::epoch_days(year, month, day).unwrap()
    }

    fn at(year: i32, month: u8, day: u8, hour: i64) -> i64 {
        days(year, month, day) * 86_400 + hour * 3600
    }

    #[test]
    fn buckets_know_iso_weeks_and_months() {
        // 2021-01-03 (Sunday) belongs to 2020-W53; 2021-01-04 starts 2021-W01.
        assert_eq!(iso_week(at(2021, 1, 3, 23)), 202_053);
        assert_eq!(iso_week(at(2021, 1, 4, 0)), 202_101);
        // 2024-12-30 (Monday) is 2025-W01.
        assert_eq!(iso_week(at(2024, 12, 30, 12)), 202_501);
        assert_eq!(iso_week(at(2026, 11, 23, 0)), 202_648);
        assert_eq!(month(at(2024, 2, 29, 23)), 202_402);
        assert_eq!(month(at(2024, 3, 1, 0)), 202_403);
        assert_eq!(month(-1), 196_912);
    }

    /// Two snapshots a day (03:00 and 15:00) from 2026-01-01 to 2026-03-15.
    fn series() -> Vec<i64> {
        let start = days(2026, 1, 1);
        let end = days(2026, 3, 15);
        (start..=end)
            .flat_map(|d| [d * 86_400 + 3 * 3600, d * 86_400 + 15 * 3600])
            .collect()
    }

    fn kept_times(policy: Retention) -> Vec<i64> {
        let times = series();
        let mut kept: Vec<i64> = keep(&times, &policy).into_iter().map(|i| times[i]).collect();
        kept.sort_unstable_by(|a, b| b.cmp(a));
        kept
    }

    #[test]
    fn keep_last_keeps_the_newest_n() {
        let kept = kept_times(Retention {
            keep_last: Some(3),
            ..Default::default()
        });
        assert_eq!(kept, vec![at(2026, 3, 15, 15), at(2026, 3, 15, 3), at(2026, 3, 14, 15)]);
    }

    #[test]
    fn keeps_exactly_restics_set_for_a_fixed_series() {
        let kept = kept_times(Retention {
            keep_last: Some(2),
            keep_daily: Some(3),
            keep_weekly: Some(2),
            keep_monthly: Some(2),
        });
        // keep-last 2: both of 03-15. keep-daily 3: newest of 03-15, 03-14, 03-13.
        // keep-weekly 2: newest of W11 (03-15 is a Sunday) and of W10 (Sunday 03-08).
        // keep-monthly 2: newest of March (03-15) and of February (02-28).
        let expected = vec![
            at(2026, 3, 15, 15),
            at(2026, 3, 15, 3),
            at(2026, 3, 14, 15),
            at(2026, 3, 13, 15),
            at(2026, 3, 8, 15),
            at(2026, 2, 28, 15),
        ];
        assert_eq!(kept, expected);
    }

    #[test]
    fn a_rule_with_counts_left_keeps_the_oldest_snapshot() {
        // Only 3 months of history: keep-monthly 6 keeps March, February, January's
        // newest and, having counts left, the oldest snapshot too.
        let kept = kept_times(Retention {
            keep_monthly: Some(6),
            ..Default::default()
        });
        assert_eq!(
            kept,
            vec![
                at(2026, 3, 15, 15),
                at(2026, 2, 28, 15),
                at(2026, 1, 31, 15),
                at(2026, 1, 1, 3)
            ]
        );
    }

    #[test]
    fn days_without_snapshots_do_not_count() {
        // Snapshots on 1, 2 and 10 January only: keep-daily 2 keeps 10 and 2 January.
        let times = [
            at(2026, 1, 1, 1),
            at(2026, 1, 2, 1),
            at(2026, 1, 10, 1),
            at(2026, 1, 10, 0),
        ];
        let policy = Retention {
            keep_daily: Some(2),
            ..Default::default()
        };
        let mut kept = keep(&times, &policy);
        kept.sort_unstable();
        assert_eq!(kept, vec![1, 2]);
    }

    #[test]
    fn an_empty_policy_keeps_everything() {
        assert_eq!(keep(&[5, 9, 1], &Retention::default()), vec![1, 0, 2]);
        assert!(
            keep(
                &[],
                &Retention {
                    keep_last: Some(1),
                    ..Default::default()
                }
            )
            .is_empty()
        );
    }
}
