//! The rows of the rollout and API KPIs ([`crate::kpi::rollout_kpi`],
//! [`crate::kpi::api_stats`]): rollouts that ended in a window with their
//! target hosts, and the per-minute, per-replica `/api/v1` statistics
//! (`api_stats`, migration `0009_api_stats`). Statements are written once
//! for both backends through [`super::sql`].
//!
//! Invariants:
//! - Flushing adds (an upsert summing every column), so a replica flushing
//!   the same minute twice, or several replicas the same minute, lose
//!   nothing.
//! - Reading sums over replicas in SQL (one row back, whatever the window).
use std::collections::{BTreeMap, HashMap};

use super::kpi::Write;
use super::sql::{B, Conn};
use super::{Store, StoreError};
use crate::kpi::api_stats::BUCKETS;
use crate::kpi::{ApiCounts, RolloutRow};

fn bucket_cols() -> Vec<String> {
    (0..BUCKETS).map(|k| format!("b{k}")).collect()
}

impl Store {
    /// Adds `counts` (by epoch minute) to this replica's rows.
    pub async fn add_api_stats(&self, replica: &str, counts: &HashMap<i64, ApiCounts>) -> Result<(), StoreError> {
        let cols = bucket_cols();
        let placeholders: Vec<String> = (0..BUCKETS).map(|k| format!("${}", k + 5)).collect();
        let updates: Vec<String> = cols
            .iter()
            .map(|c| format!("{c} = api_stats.{c} + EXCLUDED.{c}"))
            .collect();
        let sql = format!(
            "INSERT INTO api_stats (minute, replica, requests, errors, {}) VALUES ($1, $2, $3, $4, {}) \
             ON CONFLICT (minute, replica) DO UPDATE SET requests = api_stats.requests + EXCLUDED.requests, \
             errors = api_stats.errors + EXCLUDED.errors, {}",
            cols.join(", "),
            placeholders.join(", "),
            updates.join(", ")
        );
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let mut tx = Write::begin(self).await?;
        for (minute, c) in counts {
            let mut binds = vec![
                B::I(*minute),
                B::T(replica),
                B::I(clamp(c.requests)),
                B::I(clamp(c.errors)),
            ];
            binds.extend(c.buckets.iter().map(|b| B::I(clamp(*b))));
            tx.conn().exec(&sql, &binds).await?;
        }
        tx.commit().await
    }

    /// Deletes the API statistics of minutes starting before `before_ms`.
    pub async fn prune_api_stats(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut tx = Write::begin(self).await?;
        let n = tx
            .conn()
            .exec(
                "DELETE FROM api_stats WHERE minute < $1",
                &[B::I(before_ms.div_euclid(60_000))],
            )
            .await?;
        tx.commit().await?;
        Ok(n)
    }
}

/// The API statistics of the minutes of `[from_ms, to_ms]`, all replicas summed.
pub(super) async fn api_counts(conn: &mut Conn<'_>, from_ms: i64, to_ms: i64) -> Result<ApiCounts, StoreError> {
    let sums: Vec<String> = ["requests".to_string(), "errors".to_string()]
        .into_iter()
        .chain(bucket_cols())
        .map(|c| format!("CAST(COALESCE(SUM({c}), 0) AS BIGINT) AS {c}"))
        .collect();
    let sql = format!(
        "SELECT {} FROM api_stats WHERE minute >= $1 AND minute <= $2",
        sums.join(", ")
    );
    let rows = conn
        .fetch(
            &sql,
            &[B::I(from_ms.div_euclid(60_000)), B::I(to_ms.div_euclid(60_000))],
        )
        .await?;
    let mut out = ApiCounts::default();
    if let Some(r) = rows.first() {
        let u = |c: &str| r.int(c).map(|v| u64::try_from(v).unwrap_or(0));
        out.requests = u("requests")?;
        out.errors = u("errors")?;
        for (k, b) in out.buckets.iter_mut().enumerate() {
            *b = u(&format!("b{k}"))?;
        }
    }
    Ok(out)
}

/// Rollouts in a final state that ended in `[from_ms, to_ms]`, with their target hosts.
pub(super) async fn rollouts_ended(
    conn: &mut Conn<'_>,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<RolloutRow>, StoreError> {
    const FINAL: &str = "state IN ('succeeded', 'rolled_back', 'failed', 'aborted') \
                         AND finished_ms >= $1 AND finished_ms <= $2";
    let mut out: BTreeMap<String, RolloutRow> = BTreeMap::new();
    for r in conn
        .fetch(
            &format!("SELECT id, state, finished_ms FROM rollouts WHERE {FINAL}"),
            &[B::I(from_ms), B::I(to_ms)],
        )
        .await?
    {
        let id = r.text("id")?;
        out.insert(
            id.clone(),
            RolloutRow {
                id,
                state: r.text("state")?,
                finished_ms: r.int("finished_ms")?,
                hosts: Vec::new(),
            },
        );
    }
    if out.is_empty() {
        return Ok(Vec::new());
    }
    for r in conn
        .fetch(
            &format!(
                "SELECT rollout_id, host_id FROM rollout_hosts WHERE rollout_id IN \
                 (SELECT id FROM rollouts WHERE {FINAL}) ORDER BY rollout_id, position"
            ),
            &[B::I(from_ms), B::I(to_ms)],
        )
        .await?
    {
        if let Some(row) = out.get_mut(&r.text("rollout_id")?) {
            row.hosts.push(r.text("host_id")?);
        }
    }
    Ok(out.into_values().collect())
}

impl Store {
    /// Test fixtures: rollouts exactly as given (ended, with their targets).
    #[cfg(test)]
    pub(crate) async fn insert_rollout_fixtures(&self, rollouts: &[RolloutRow]) -> Result<(), StoreError> {
        let mut tx = Write::begin(self).await?;
        for r in rollouts {
            tx.conn()
                .exec(
                    "INSERT INTO rollouts (id, action, selector, strategy, state, waves, total_hosts, \
                     last_progress_ms, actor, created_ms, updated_ms, finished_ms) \
                     VALUES ($1, 'deploy.apply', '', '{}', $2, 1, $3, $4, 'test', $4, $4, $4)",
                    &[
                        B::T(&r.id),
                        B::T(&r.state),
                        B::I(r.hosts.len() as i64),
                        B::I(r.finished_ms),
                    ],
                )
                .await?;
            for (i, h) in r.hosts.iter().enumerate() {
                tx.conn()
                    .exec(
                        "INSERT INTO rollout_hosts (rollout_id, host_id, position, wave, state) \
                         VALUES ($1, $2, $3, 0, 'succeeded')",
                        &[B::T(&r.id), B::T(h), B::I(i as i64)],
                    )
                    .await?;
            }
        }
        tx.commit().await
    }
}

impl Store {
    /// Test fixture: removes an SLO's definition (there is no delete route yet).
    #[cfg(test)]
    pub(crate) async fn delete_slo_row(&self, name: &str) -> Result<(), StoreError> {
        let mut tx = Write::begin(self).await?;
        tx.conn()
            .exec("DELETE FROM slos WHERE name = $1", &[B::T(name)])
            .await?;
        tx.commit().await
    }
}
