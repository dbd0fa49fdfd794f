//! The control plane's own `/api/v1` requests, for the `api_availability`
//! and `api_latency_p95` KPIs: counted in memory per minute ([`ApiStats`],
//! no database write per request), added to `api_stats` (migration
//! `0009_api_stats`, one row per minute and replica) by the SLO engine's
//! flush loop every few seconds, pruned by the KPI sampler after
//! `[kpi] keep`.
//!
//! Latency goes into a fixed histogram: bucket `k < 16` holds requests that
//! took at most `500 µs × 2^k` (0.5 ms .. 16.384 s, log-spaced), bucket 16
//! the slower ones. The p95 is interpolated linearly inside the bucket that
//! holds the 95th percentile rank (as Prometheus' `histogram_quantile`
//! does), so it is exact only to within that bucket; a rank in the overflow
//! bucket reads as its lower bound (16.384 s).
//!
//! Invariants:
//! - A failed flush puts its counts back ([`ApiStats::restore`]): nothing
//!   counted is lost while the database is away (only delayed).
//! - These KPIs are control-plane-wide, not about any host: restricting
//!   [`super::KpiData`] to hosts drops them; only callers limited by no
//!   scope are shown them (see `api/kpis.rs`).
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use rand::Rng;

use super::{Ctx, KpiData, Reading};

/// Histogram buckets: 16 bounded ones and the overflow.
pub const BUCKETS: usize = 17;
const FIRST_BOUND_US: u64 = 500;

/// Upper bound of bucket `k` in µs (`None` for the overflow bucket).
pub fn bound_us(k: usize) -> Option<u64> {
    (k + 1 < BUCKETS).then(|| FIRST_BOUND_US << k)
}

/// The bucket of a request that took `us` µs.
pub fn bucket_of(us: u64) -> usize {
    (0..BUCKETS - 1)
        .find(|k| us <= FIRST_BOUND_US << k)
        .unwrap_or(BUCKETS - 1)
}

/// Requests, 5xx answers and the latency histogram (of one minute, or summed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ApiCounts {
    pub requests: u64,
    pub errors: u64,
    pub buckets: [u64; BUCKETS],
}

impl ApiCounts {
    pub fn add(&mut self, other: &ApiCounts) {
        self.requests += other.requests;
        self.errors += other.errors;
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
    }

    /// The `p`-th percentile (0 < p ≤ 100) in seconds, interpolated inside
    /// its bucket; `None` without requests.
    pub fn percentile_secs(&self, p: f64) -> Option<f64> {
        let n: u64 = self.buckets.iter().sum();
        if n == 0 {
            return None;
        }
        let rank = (p / 100.0 * n as f64).max(f64::MIN_POSITIVE);
        let mut below = 0u64;
        for (k, &count) in self.buckets.iter().enumerate() {
            if count > 0 && (below + count) as f64 >= rank {
                let lo = if k == 0 { 0 } else { FIRST_BOUND_US << (k - 1) } as f64;
                let Some(hi) = bound_us(k) else {
                    return Some(lo / 1e6);
                };
                let us = lo + (hi as f64 - lo) * ((rank - below as f64) / count as f64);
                return Some(us / 1e6);
            }
            below += count;
        }
        None
    }
}

/// This replica's requests not yet flushed, by epoch minute.
#[derive(Debug)]
pub struct ApiStats {
    replica: String,
    pending: Mutex<HashMap<i64, ApiCounts>>,
}

impl Default for ApiStats {
    fn default() -> Self {
        let host = hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "cp".into());
        ApiStats::with_replica(format!(
            "{host}:{}:{:08x}",
            std::process::id(),
            rand::rng().random::<u32>()
        ))
    }
}

impl ApiStats {
    /// Counts under the replica name `replica` (default: host, pid and a random tag).
    pub fn with_replica(replica: impl Into<String>) -> Self {
        ApiStats {
            replica: replica.into(),
            pending: Mutex::default(),
        }
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// One `/api/v1` request that got `status` after `duration_us`, at `at_ms`.
    pub fn record(&self, status: u16, duration_us: u64, at_ms: i64) {
        if let Ok(mut p) = self.pending.lock() {
            let c = p.entry(at_ms.div_euclid(60_000)).or_default();
            c.requests += 1;
            c.errors += u64::from(status >= 500);
            c.buckets[bucket_of(duration_us)] += 1;
        }
    }

    /// Takes what was recorded since the last call.
    pub fn take(&self) -> HashMap<i64, ApiCounts> {
        self.pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }

    /// Puts counts back after a failed flush.
    pub fn restore(&self, counts: HashMap<i64, ApiCounts>) {
        if let Ok(mut p) = self.pending.lock() {
            for (minute, c) in counts {
                p.entry(minute).or_default().add(&c);
            }
        }
    }

    /// Adds the pending counts to the store (they are put back on failure).
    pub async fn flush(&self, store: &crate::store::Store) {
        let counts = self.take();
        if counts.is_empty() {
            return;
        }
        if let Err(error) = store.add_api_stats(&self.replica, &counts).await {
            tracing::warn!(%error, "cannot store API request statistics; keeping them for the next flush");
            self.restore(counts);
        }
    }
}

pub(super) fn api_availability(d: &KpiData, _: &Ctx) -> Reading {
    let a = &d.api;
    let mut r = Reading::ratio((a.requests - a.errors.min(a.requests)) as usize, a.requests as usize);
    r.details.insert("errors_5xx", a.errors as f64);
    r
}

pub(super) fn api_latency_p95(d: &KpiData, _: &Ctx) -> Reading {
    Reading {
        value: d.api.percentile_secs(95.0),
        details: BTreeMap::new(),
    }
    .with("requests", d.api.requests as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_log_spaced_and_percentiles_interpolate() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(500), 0);
        assert_eq!(bucket_of(501), 1);
        assert_eq!(bucket_of(16_384_000), 15);
        assert_eq!(bucket_of(16_384_001), 16);
        assert_eq!(bound_us(15), Some(16_384_000));
        assert_eq!(bound_us(16), None);
        let mut c = ApiCounts::default();
        assert_eq!(c.percentile_secs(95.0), None);
        // 90 in (1, 2] ms, 10 in (4, 8] ms: rank 95 is the 5th of 10 in (4, 8] ms → 6 ms
        c.buckets[2] = 90;
        c.buckets[4] = 10;
        assert!((c.percentile_secs(95.0).unwrap() - 0.006).abs() < 1e-12);
        // rank 50 is the 50th of 90 in (1, 2] ms → 1 + 50/90 ms
        assert!((c.percentile_secs(50.0).unwrap() - (1.0 + 50.0 / 90.0) / 1000.0).abs() < 1e-12);
        // everything in the overflow: its lower bound
        let mut slow = ApiCounts::default();
        slow.buckets[16] = 3;
        assert_eq!(slow.percentile_secs(95.0), Some(16.384));
    }

    #[test]
    fn restored_counts_add_up() {
        let s = ApiStats::with_replica("r");
        s.record(200, 700, 120_000);
        s.record(503, 700, 120_500);
        let taken = s.take();
        assert!(s.take().is_empty());
        s.record(200, 100, 120_000);
        s.restore(taken);
        let c = s.take()[&2];
        assert_eq!((c.requests, c.errors, c.buckets[1], c.buckets[0]), (3, 1, 2, 1));
    }
}
