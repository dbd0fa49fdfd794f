//! The KPI sampler: every `[kpi] sample_interval` it computes the whole
//! catalog fleet-wide (no scope, no selector, the `[kpi] trend_window`) and
//! stores the values in `kpi_samples`, which the trend of
//! `GET /api/v1/kpis/{name}` reads. Samples older than `[kpi] keep` are
//! deleted in the same round, and so are the API statistics
//! ([`super::api_stats`]) of minutes before `keep`. The last round's values also feed `/metrics`.
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{CATALOG, Ctx};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// What the sampler does and how often.
#[derive(Debug, Clone)]
pub struct SamplerSettings {
    pub interval: Duration,
    /// Window of the sampled (windowed) KPIs.
    pub window_ms: i64,
    /// How long samples are kept.
    pub keep_ms: i64,
}

/// The control plane's own version: agents at or above it are current.
pub fn current_version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// One sampling round at `now_ms`: computes the catalog and stores it.
pub async fn sample_once(
    store: &Store,
    settings: &SamplerSettings,
    now_ms: i64,
) -> Result<Vec<(&'static str, Option<f64>)>, StoreError> {
    let data = store.kpi_data(now_ms, settings.window_ms).await?;
    let ctx = Ctx {
        now_ms,
        window_ms: settings.window_ms,
        current_version: current_version(),
    };
    let values: Vec<(&'static str, Option<f64>)> = CATALOG
        .iter()
        .map(|k| (k.name, (k.compute)(&data, &ctx).value))
        .collect();
    store
        .record_kpi_samples(now_ms, &values, now_ms.saturating_sub(settings.keep_ms))
        .await?;
    store.prune_api_stats(now_ms.saturating_sub(settings.keep_ms)).await?;
    Ok(values)
}

/// Samples until `shutdown` (the first round right away).
pub async fn run(
    store: Store,
    settings: SamplerSettings,
    metrics: std::sync::Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(settings.interval.max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match sample_once(&store, &settings, steward_shared::now_ms()).await {
            Ok(values) => {
                for (name, value) in &values {
                    metrics.set_kpi(name, *value);
                }
                tracing::debug!(kpis = values.len(), "kpi: sampled");
            }
            Err(error) => tracing::warn!(%error, "kpi: sampling failed"),
        }
    }
}
