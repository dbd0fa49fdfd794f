//! Check results counted per UTC day and per UTC hour, host and status
//! (`kpi_check_days`, `kpi_check_hours`, migration `0011_kpi_daily`), for
//! the check-based KPIs (`check_pass_ratio`, `host_availability`): a 30-day
//! window over 1,000 hosts reads about 100,000 counts instead of 17 million
//! `check_results` rows. Statements are written once for both backends
//! through [`super::sql`].
//!
//! Invariants:
//! - Both tables equal `GROUP BY bucket, host_id, status` over
//!   `check_results`: ingest adds the rows its transaction inserted (a resent
//!   result is not counted twice), pruning subtracts the rows it deletes in
//!   the same transaction and drops buckets that reach 0, and the migration
//!   backfills what was there before.
//! - A window `[from, to]` is counted exactly: the whole days inside it from
//!   the days, the whole hours left at each end from the hours, and the
//!   minutes left (under an hour at each end) from `check_results` through
//!   the index `check_results_observed`. No bucket reaching outside
//!   the window is read.
use std::collections::{BTreeMap, HashSet};

use super::sql::{B, Conn};
use super::{IngestRows, StoreError};
use crate::kpi::CheckCount;

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;
/// The count tables, coarsest first, with the width of their buckets.
const SPANS: [(&str, i64); 2] = [("kpi_check_days", DAY_MS), ("kpi_check_hours", HOUR_MS)];

/// Where one part of a window is counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Part {
    /// Buckets `[first, end)` of a count table.
    Buckets(&'static str, i64, i64),
    /// `check_results` observed in `[from_ms, end_ms)`.
    Raw(i64, i64),
}

fn ceil_div(a: i64, b: i64) -> i64 {
    a.div_euclid(b) + i64::from(a.rem_euclid(b) != 0)
}

/// The parts of the half-open window `[lo, hi)`: the widest buckets that fit,
/// then narrower ones at the edges, then raw rows.
pub(super) fn plan(lo: i64, hi: i64) -> Vec<Part> {
    fn go(lo: i64, hi: i64, spans: &[(&'static str, i64)], out: &mut Vec<Part>) {
        if lo >= hi {
            return;
        }
        let Some((&(table, width), narrower)) = spans.split_first() else {
            out.push(Part::Raw(lo, hi));
            return;
        };
        let first = ceil_div(lo, width);
        let end = hi.div_euclid(width);
        if first >= end {
            return go(lo, hi, narrower, out);
        }
        out.push(Part::Buckets(table, first, end));
        go(lo, first.saturating_mul(width), narrower, out);
        go(end.saturating_mul(width), hi, narrower, out);
    }
    let mut out = Vec::new();
    go(lo, hi, &SPANS, &mut out);
    out
}

/// Check results observed in `[from_ms, to_ms]`, counted by host and status
/// (sorted; no zero counts).
pub(super) async fn check_counts(conn: &mut Conn<'_>, from_ms: i64, to_ms: i64) -> Result<Vec<CheckCount>, StoreError> {
    let mut sums: BTreeMap<(String, String), i64> = BTreeMap::new();
    for part in plan(from_ms, to_ms.saturating_add(1)) {
        let rows = match part {
            Part::Buckets(table, first, end) => {
                conn.fetch(
                    &format!(
                        "SELECT host_id, status, CAST(SUM(n) AS BIGINT) AS n FROM {table} \
                         WHERE bucket >= $1 AND bucket < $2 GROUP BY host_id, status"
                    ),
                    &[B::I(first), B::I(end)],
                )
                .await?
            }
            Part::Raw(from, end) => {
                conn.fetch(
                    "SELECT host_id, status, COUNT(*) AS n FROM check_results \
                     WHERE observed_ms >= $1 AND observed_ms < $2 GROUP BY host_id, status",
                    &[B::I(from), B::I(end)],
                )
                .await?
            }
        };
        for r in rows {
            *sums.entry((r.text("host_id")?, r.text("status")?)).or_default() += r.int("n")?;
        }
    }
    Ok(sums
        .into_iter()
        .filter(|(_, n)| *n != 0)
        .map(|((host_id, status), count)| CheckCount { host_id, status, count })
        .collect())
}

/// Changes of counts: (bucket, host, status) → rows added (negative: removed).
type Deltas<'a> = BTreeMap<(i64, &'a str, &'a str), i64>;

fn add<'a>(per: &mut [Deltas<'a>; 2], host: &'a str, status: &'a str, observed_ms: i64, n: i64) {
    for (deltas, (_, width)) in per.iter_mut().zip(SPANS) {
        *deltas.entry((observed_ms.div_euclid(width), host, status)).or_default() += n;
    }
}

/// Adds `deltas` to `table` (in key order, so concurrent ingests lock rows in
/// the same order), then drops the buckets they brought to 0.
async fn apply(conn: &mut Conn<'_>, table: &str, deltas: &Deltas<'_>) -> Result<(), StoreError> {
    if deltas.is_empty() {
        return Ok(());
    }
    let rows: Vec<serde_json::Value> = deltas
        .iter()
        .map(|((bucket, host, status), n)| serde_json::json!({"v_bucket": bucket, "v_host": host, "v_status": status, "v_n": n}))
        .collect();
    let rows = serde_json::Value::Array(rows).to_string();
    // `WHERE true`: SQLite's parser needs it between a SELECT and ON CONFLICT.
    conn.exec(
        &format!(
            "INSERT INTO {table} (bucket, host_id, status, n) \
             SELECT v.v_bucket, v.v_host, v.v_status, v.v_n \
             FROM JSON_ROWS($1 AS v(v_bucket bigint, v_host text, v_status text, v_n bigint)) WHERE true \
             ON CONFLICT (bucket, host_id, status) DO UPDATE SET n = {table}.n + EXCLUDED.n"
        ),
        &[B::T(&rows)],
    )
    .await?;
    if deltas.values().any(|n| *n < 0) {
        let first = deltas.keys().map(|k| k.0).min().unwrap_or(0);
        let last = deltas.keys().map(|k| k.0).max().unwrap_or(0);
        conn.exec(
            &format!("DELETE FROM {table} WHERE bucket >= $1 AND bucket <= $2 AND n <= 0"),
            &[B::I(first), B::I(last)],
        )
        .await?;
    }
    Ok(())
}

async fn apply_all(conn: &mut Conn<'_>, per: &[Deltas<'_>; 2]) -> Result<(), StoreError> {
    for (deltas, (table, _)) in per.iter().zip(SPANS) {
        apply(conn, table, deltas).await?;
    }
    Ok(())
}

/// Counts the results an ingest transaction inserted (`inserted`: their
/// (host, seq); resends are not in it), inside that transaction.
pub(super) async fn count_ingest(
    mut conn: Conn<'_>,
    rows: &IngestRows<'_>,
    inserted: &HashSet<(String, i64)>,
) -> Result<(), StoreError> {
    let mut per: [Deltas<'_>; 2] = Default::default();
    if inserted.len() == rows.results.len() {
        for r in &rows.results {
            add(&mut per, r.host_id, r.status, r.observed_ms, 1);
        }
    } else {
        // `results` is sorted by (host, seq) without duplicates.
        for (host, seq) in inserted {
            if let Ok(i) = rows
                .results
                .binary_search_by(|r| (r.host_id, r.seq).cmp(&(host.as_str(), *seq)))
            {
                let r = &rows.results[i];
                add(&mut per, r.host_id, r.status, r.observed_ms, 1);
            }
        }
    }
    apply_all(&mut conn, &per).await
}

/// Subtracts the results a prune deleted (host, status, observed_ms), inside
/// the deleting transaction.
pub(super) async fn count_pruned(mut conn: Conn<'_>, deleted: &[(String, String, i64)]) -> Result<(), StoreError> {
    let mut per: [Deltas<'_>; 2] = Default::default();
    for (host, status, observed_ms) in deleted {
        add(&mut per, host, status, *observed_ms, -1);
    }
    apply_all(&mut conn, &per).await
}

/// Recounts both tables from `check_results` (what the migration's backfill
/// does; for data written around the ingest path, as the KPI benchmark does).
pub(super) async fn recount(conn: &mut Conn<'_>) -> Result<(), StoreError> {
    for (table, width) in SPANS {
        conn.exec(&format!("DELETE FROM {table}"), &[]).await?;
        conn.exec(
            &format!(
                "INSERT INTO {table} (bucket, host_id, status, n) \
                 SELECT (observed_ms - ((observed_ms % {width}) + {width}) % {width}) / {width} AS b, host_id, \
                 status, COUNT(*) FROM check_results GROUP BY b, host_id, status"
            ),
            &[],
        )
        .await?;
    }
    Ok(())
}

/// Test check: every difference between the count tables and
/// `GROUP BY` over `check_results` (empty when they agree).
#[cfg(test)]
pub(super) async fn mismatches(conn: &mut Conn<'_>) -> Result<Vec<String>, StoreError> {
    type Counts = Vec<(i64, String, String, i64)>;
    let mut out = Vec::new();
    for (table, width) in SPANS {
        let mut got: Counts = Vec::new();
        for r in conn
            .fetch(&format!("SELECT bucket, host_id, status, n FROM {table}"), &[])
            .await?
        {
            got.push((r.int("bucket")?, r.text("host_id")?, r.text("status")?, r.int("n")?));
        }
        let mut want: Counts = Vec::new();
        for r in conn
            .fetch("SELECT host_id, status, observed_ms FROM check_results", &[])
            .await?
        {
            want.push((
                r.int("observed_ms")?.div_euclid(width),
                r.text("host_id")?,
                r.text("status")?,
                1,
            ));
        }
        want.sort();
        want.dedup_by(|b, a| {
            let same = (a.0, &a.1, &a.2) == (b.0, &b.1, &b.2);
            if same {
                a.3 += b.3;
            }
            same
        });
        got.sort();
        if got != want {
            out.push(format!("{table}: stored {got:?}, check_results {want:?}"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_splits_a_window_into_days_hours_and_edges() {
        let d = DAY_MS;
        let h = HOUR_MS;
        // 10 days, starting at 05:30 on day 100.
        let lo = 100 * d + 5 * h + 30 * 60_000;
        let hi = lo + 10 * d;
        assert_eq!(
            plan(lo, hi),
            vec![
                Part::Buckets("kpi_check_days", 101, 110),
                Part::Buckets("kpi_check_hours", 100 * 24 + 6, 101 * 24),
                Part::Raw(lo, 100 * d + 6 * h),
                Part::Buckets("kpi_check_hours", 110 * 24, 110 * 24 + 5),
                Part::Raw(110 * d + 5 * h, hi),
            ]
        );
        // Aligned to days: days only.
        assert_eq!(plan(3 * d, 5 * d), vec![Part::Buckets("kpi_check_days", 3, 5)]);
        // Inside one hour: raw only; empty and reversed windows: nothing.
        assert_eq!(plan(h + 5, h + 9), vec![Part::Raw(h + 5, h + 9)]);
        assert_eq!(plan(7, 7), vec![]);
        assert_eq!(plan(9, 7), vec![]);
        // Before the epoch: floor division.
        assert_eq!(
            plan(-d - h, 0),
            vec![
                Part::Buckets("kpi_check_days", -1, 0),
                Part::Buckets("kpi_check_hours", -25, -24),
            ]
        );
    }
}
