//! The KPIs on `/metrics`: one gauge family `steward_kpi{kpi="NAME"}` with
//! the fleet-wide value of the sampler's last round. The label's values are
//! the catalog's names (bounded); a KPI without data is left out.
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::CATALOG;
use crate::metrics::Metrics;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KpiLabels {
    kpi: &'static str,
}

pub(crate) struct KpiMetrics {
    values: Family<KpiLabels, Gauge<f64, AtomicU64>>,
}

impl KpiMetrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let values = Family::<KpiLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "kpi",
            "Fleet KPI values of the last sampling round, by KPI name (see GET /api/v1/kpis for units)",
            values.clone(),
        );
        KpiMetrics { values }
    }
}

impl Metrics {
    /// The fleet-wide value of KPI `name` (names outside the catalog are ignored).
    pub fn set_kpi(&self, name: &str, value: Option<f64>) {
        let Some(kpi) = CATALOG.iter().map(|k| k.name).find(|k| *k == name) else {
            return;
        };
        let labels = KpiLabels { kpi };
        match value.filter(|v| v.is_finite()) {
            Some(v) => {
                self.kpi.values.get_or_create(&labels).set(v);
            }
            None => {
                self.kpi.values.remove(&labels);
            }
        }
    }
}
