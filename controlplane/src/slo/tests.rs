//! SLO arithmetic against event streams whose budget and burn rates are known
//! in closed form; the clock is an argument (minute-exact).
use super::eval::{self, Bucket, evaluate, scaled_tiers};
use super::spec::{SloSpec, Window};

fn spec(target: f64, window: &str, rolling: bool) -> SloSpec {
    serde_json::from_value(serde_json::json!({
        "indicator": {"type": "checkAvailability", "check": "http"},
        "objectives": [{"target": target}],
        "timeWindow": [{"duration": window, "isRolling": rolling}],
    }))
    .unwrap()
}

/// `total` events per minute over `from..=to`, `bad(minute)` of them bad.
fn stream(from: i64, to: i64, total: u64, bad: impl Fn(i64) -> u64) -> Vec<Bucket> {
    (from..=to)
        .map(|minute| Bucket {
            minute,
            total,
            good: total - bad(minute).min(total),
        })
        .collect()
}

fn at(minute: i64) -> i64 {
    minute * 60_000 + 30_000
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9 * b.abs().max(1.0)
}

const NOW: i64 = 29_000_000; // an epoch minute in 2025

#[test]
fn constant_error_ratio_gives_the_closed_form_budget_and_burn() {
    // 1000 events a minute, 5 bad (0.5 %), target 99 %: burn 0.5 on every window, half the budget left.
    let s = spec(0.99, "30d", true);
    let series = stream(NOW - 50_000, NOW, 1000, |_| 5);
    let e = evaluate(&s, &series, at(NOW));
    assert_eq!(e.events, 43_200 * 1000);
    assert!(close(e.sli.unwrap(), 0.995));
    assert!(close(e.budget_remaining, 0.5));
    // Half of (1 % of 30 days) as time: 12,960 s.
    assert!(close(e.budget_remaining_seconds, 12_960.0));
    for b in &e.burn_rates {
        assert!(close(b.burn_rate, 0.5), "{}: {}", b.window, b.burn_rate);
    }
    assert!(e.tiers.iter().all(|t| !t.firing));
    assert_eq!(e.window_start_ms, (NOW - 43_199) * 60_000);
}

#[test]
fn each_tier_fires_and_resolves_at_the_right_minute() {
    // Baseline: 1000 good events a minute. Incident: every event bad (burn 100)
    // during minutes T0..T1-1 (two hours). Closed form, for a tier with factor f,
    // long window L and short window S: it fires once k incident minutes satisfy
    // k/L * 100 > f and min(k,S)/S * 100 > f, and resolves j minutes after the end
    // once (S-1-j)/S * 100 <= f.
    let t0 = NOW;
    let t1 = t0 + 120;
    let s = spec(0.99, "30d", true);
    let series = stream(
        t0 - 6_000,
        t1 + 400,
        1000,
        |m| if (t0..t1).contains(&m) { 1000 } else { 0 },
    );
    let expected = [
        ("page-1h", t0 + 8, t1 + 4),
        ("page-6h", t0 + 21, t1 + 28),
        ("ticket-1d", t0 + 43, t1 + 116),
        ("ticket-3d", t0 + 43, t1 + 356),
    ];
    for (tier, fires, resolves) in expected {
        let firing = |m: i64| {
            evaluate(&s, &series, at(m))
                .tiers
                .iter()
                .find(|t| t.name == tier)
                .unwrap()
                .firing
        };
        let first = (t0 - 5..t1 + 400).find(|&m| firing(m)).unwrap();
        assert_eq!(first, fires, "{tier} fires");
        let last = (first..t1 + 400).find(|&m| !firing(m)).unwrap();
        assert_eq!(last, resolves, "{tier} resolves");
    }
}

#[test]
fn a_disabled_tier_never_fires() {
    let mut s = spec(0.99, "30d", true);
    s.alerting
        .tiers
        .insert("page-1h".into(), super::spec::TierSetting { enabled: false });
    let series = stream(NOW - 100, NOW, 1000, |m| if m > NOW - 30 { 1000 } else { 0 });
    let e = evaluate(&s, &series, at(NOW));
    let page = e.tiers.iter().find(|t| t.name == "page-1h").unwrap();
    assert!(!page.enabled && !page.firing && page.long_burn > page.factor);
    assert!(e.tiers.iter().find(|t| t.name == "page-6h").unwrap().firing);
}

#[test]
fn a_sparse_sli_stays_quiet() {
    // One event every 10 minutes; the newest one bad. The 5m burn is 100, and
    // page-1h's burn is 1/6/0.01 = 16.7 > 14.4, but its hour holds 6 events < 10.
    let mut s = spec(0.99, "30d", true);
    let series: Vec<Bucket> = (0..2_000)
        .map(|i| Bucket {
            minute: NOW - i * 10,
            total: 1,
            good: u64::from(i != 0),
        })
        .rev()
        .collect();
    let e = evaluate(&s, &series, at(NOW));
    assert!(close(e.burn_rates[0].burn_rate, 100.0));
    let page = e.tiers.iter().find(|t| t.name == "page-1h").unwrap();
    assert_eq!(page.long_events, 6);
    assert!(page.long_burn > 14.4 && page.short_burn > 14.4);
    assert!(e.tiers.iter().all(|t| !t.firing));
    // The same stream with minEvents 1 would page.
    s.alerting.min_events = 1;
    assert!(evaluate(&s, &series, at(NOW)).tiers[0].firing);
}

#[test]
fn tiers_scale_with_the_window() {
    let w = |days: i64| Window::Rolling { minutes: days * 1440 };
    let windows = |w| scaled_tiers(w).iter().map(|t| (t.3, t.4)).collect::<Vec<_>>();
    assert_eq!(windows(w(30)), vec![(60, 5), (360, 30), (1440, 120), (4320, 360)]);
    assert_eq!(windows(w(28)), vec![(56, 5), (336, 28), (1344, 112), (4032, 336)]);
    assert_eq!(windows(w(7)), vec![(14, 1), (84, 7), (336, 28), (1008, 84)]);
    assert_eq!(windows(Window::CalendarMonth), windows(w(30)));
    // Factors do not change: each tier still stands for the same share of the budget.
    assert_eq!(
        scaled_tiers(w(7)).iter().map(|t| t.2).collect::<Vec<_>>(),
        vec![14.4, 6.0, 3.0, 1.0]
    );
}

#[test]
fn rolling_windows_of_7_28_and_30_days_read_only_their_own_minutes() {
    for days in [7i64, 28, 30] {
        let s = spec(0.98, &format!("{days}d"), true);
        let w = days * 1440;
        // Inside the window: 100 events a minute, 1 bad (1 %); before it, everything bad.
        let series = stream(NOW - w - 5_000, NOW, 100, |m| if m > NOW - w { 1 } else { 100 });
        let e = evaluate(&s, &series, at(NOW));
        assert_eq!(e.events, w as u64 * 100, "{days}d");
        assert!(close(e.budget_remaining, 0.5), "{days}d: {}", e.budget_remaining);
        assert!(close(e.budget_remaining_seconds, 0.5 * 0.02 * (w * 60) as f64));
        // A minute later the oldest in-window minute leaves the window, nothing enters from before.
        let later = evaluate(&s, &series, at(NOW + 1));
        assert_eq!(later.events, (w as u64 - 1) * 100);
        // The history ends at now with the current value and starts untouched-ish.
        let h = eval::budget_history(&s, &series, at(NOW));
        assert_eq!(h.len(), eval::HISTORY_POINTS as usize);
        assert!(close(h.last().unwrap().1, 0.5));
    }
}

#[test]
fn a_calendar_month_starts_on_the_first_and_budgets_by_its_length() {
    // 2026-02-10 12:00 UTC: February has 28 days.
    let feb1 = steward_shared::timestamp::parse_rfc3339("2026-02-01T00:00:00Z").unwrap() / 60_000;
    let now = feb1 + 9 * 1440 + 720;
    let mut s = spec(0.99, "1M", false);
    assert_eq!(s.window().unwrap(), Window::CalendarMonth);
    // January all bad; February 1000 a minute with 2 bad.
    let series = stream(feb1 - 3_000, now, 1000, |m| if m < feb1 { 1000 } else { 2 });
    let e = evaluate(&s, &series, at(now));
    assert_eq!(e.window_start_ms, feb1 * 60_000);
    assert_eq!(e.events, (now - feb1 + 1) as u64 * 1000);
    assert!(close(e.budget_remaining, 0.8));
    assert!(close(e.budget_remaining_seconds, 0.8 * 0.01 * 28.0 * 86_400.0));
    // Timeslices: a minute is good when >= 99.9 % of it is good: 10 bad minutes in February so far.
    s.budgeting_method = super::spec::BudgetingMethod::Timeslices;
    s.objectives[0].time_slice_target = Some(0.999);
    let series = stream(feb1 - 3_000, now, 1000, |m| {
        if m < feb1 || (feb1 + 100..feb1 + 110).contains(&m) {
            1000
        } else {
            0
        }
    });
    let e = evaluate(&s, &series, at(now));
    assert!(close(e.budget_remaining, 1.0 - 10.0 / (0.01 * 28.0 * 1440.0)));
    assert_eq!(e.events - e.good_events, 10);
    // 31-day month: budget as time scales with it.
    let mar1 = steward_shared::timestamp::parse_rfc3339("2026-03-01T00:00:00Z").unwrap() / 60_000;
    let e = evaluate(&spec(0.99, "1M", false), &[], at(mar1 + 5));
    assert!(close(e.budget_remaining_seconds, 0.01 * 31.0 * 86_400.0));
    assert_eq!(e.sli, None);
}

#[test]
fn timeslice_burn_is_time_based() {
    // 5-minute slices, slice target 0.95; one bad slice in the last hour: 5 bad minutes of 60.
    let mut s = spec(0.99, "30d", true);
    s.budgeting_method = super::spec::BudgetingMethod::Timeslices;
    s.objectives[0].time_slice_target = Some(0.95);
    s.objectives[0].time_slice_window = Some("5m".parse().unwrap());
    s.validate().unwrap();
    let end = (NOW / 5) * 5 + 4; // end of a slice
    let series = stream(end - 2_000, end, 100, |m| {
        if (end - 9..=end - 5).contains(&m) { 10 } else { 0 }
    });
    let e = evaluate(&s, &series, at(end));
    let hour = e.burn_rates.iter().find(|b| b.window == "1h").unwrap();
    assert!(close(hour.burn_rate, (5.0 / 60.0) / 0.01));
}

#[test]
fn budget_history_points_fall_on_whole_hours_and_reach_back_to_the_window_start() {
    // Rolling windows from 2 to 30 days, at a minute in the middle of an hour.
    for minutes in [2 * 1440, 3 * 1440 + 7, 7 * 1440, 28 * 1440, 30 * 1440, 31 * 1440] {
        let to = 29_000_000 + 37;
        let from = to - minutes + 1;
        let ends = eval::history_ends(from, to);
        assert_eq!(ends.len(), eval::HISTORY_POINTS as usize, "{minutes}");
        assert_eq!(*ends.last().unwrap(), to, "the last point is now");
        assert!(
            ends.windows(2).all(|w| w[0] < w[1]),
            "ascending and distinct: {minutes}"
        );
        assert!(ends[0] >= from, "in the window: {minutes}");
        // The first point is within two steps of the window's start.
        assert!(
            ends[0] - from < 2 * (minutes / eval::HISTORY_POINTS),
            "{minutes}: {}",
            ends[0] - from
        );
        for e in &ends[..ends.len() - 1] {
            assert_eq!(e.rem_euclid(60), 59, "{minutes}: {e} ends an hour");
        }
    }
    // Shorter windows keep minute points (a step under an hour).
    let ends = eval::history_ends(1_000, 1_000 + 1439);
    assert_eq!(ends.len(), eval::HISTORY_POINTS as usize);
    assert!(ends.iter().all(|e| (e - 1_000 + 1) % 30 == 0), "{ends:?}");
}
