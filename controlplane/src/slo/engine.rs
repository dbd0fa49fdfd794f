//! The SLO engine's background loop: keeps the counting index in step with
//! the stored SLOs (also those changed on another replica), flushes the
//! control plane's own API requests into the buckets (and every request into
//! the API KPIs' statistics, [`crate::kpi::api_stats`]), and prunes buckets no
//! window needs any more.
//!
//! Invariant: a failed flush puts its increments back; nothing counted is lost
//! while the database is away (only delayed).
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::eval::window_bounds;
use super::sli::ApiRecorder;
use crate::store::Store;

/// How often the index is refreshed and API requests flushed.
pub const TICK: Duration = Duration::from_secs(5);
/// Buckets are kept this long beyond the longest window (burn rates look 3 days back).
const KEEP_EXTRA_MINUTES: i64 = 4 * 1440;
/// At least this much is kept (a calendar month plus margin).
const KEEP_MIN_MINUTES: i64 = 35 * 1440;

/// Runs until `shutdown`; flushes once more on the way out.
pub async fn run(store: Store, api: Arc<ApiRecorder>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_prune = 0i64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => {
                flush(&store, &api).await;
                return;
            }
        }
        let slos = match store.reload_sli_index().await {
            Ok(slos) => slos,
            Err(error) => {
                tracing::warn!(%error, "cannot reload SLO definitions; counting with the previous ones");
                continue;
            }
        };
        flush(&store, &api).await;
        let now = steward_shared::now_ms();
        if now - last_prune >= 3_600_000 {
            last_prune = now;
            let longest = slos
                .iter()
                .filter_map(|s| s.spec.window().ok())
                .map(|w| window_bounds(w, now).2)
                .max()
                .unwrap_or(0);
            let keep = (longest + KEEP_EXTRA_MINUTES).max(KEEP_MIN_MINUTES);
            match store.prune_slo_buckets(now.div_euclid(60_000) - keep).await {
                Ok(n) if n > 0 => tracing::info!(deleted = n, "pruned old SLO buckets"),
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "pruning SLO buckets failed"),
            }
        }
    }
}

/// Writes the API requests counted since the last flush.
pub async fn flush(store: &Store, api: &ApiRecorder) {
    api.stats.flush(store).await;
    let incs = api.take();
    if incs.is_empty() {
        return;
    }
    if let Err(error) = store.add_slo_events(&incs, steward_shared::now_ms()).await {
        tracing::warn!(%error, "cannot store API SLO events; keeping them for the next flush");
        api.restore(incs);
    }
}
