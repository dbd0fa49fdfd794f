//! The evaluator: every `alerts.interval`, each source reports the
//! conditions that hold now and [`Store::reconcile_alerts`] fires and
//! resolves (deduplicated by fingerprint, audited, notifications queued for
//! the receivers the routes name). Runs in every `serve` process: the
//! partial unique index on firing fingerprints and the row locks of the
//! reconciliation make two replicas fire (and notify) an alert once.
//!
//! Sources (labels always carry `alertname`; `host` is a host ID):
//! - `slo`: the SLO burn tiers (`SLOBurnRate`, `slo`, `tier`, `group`);
//! - `host_silent`: a host not heard from for `after` (`HostSilent`);
//! - `check_critical`: a check critical without a break for `for` (`CheckCritical`, `check`);
//! - `backup_rpo`: a backup whose last good snapshot is older than its RPO (`BackupRPO`, `backup`);
//! - `certificate`: a check reporting `days_left` under `warning_days` or
//!   `critical_days` (`CertificateExpiry`, `check`, `threshold`);
//! - `rollout`: a rollout that ended `rolled_back` within `window` (`RolloutRolledBack`, `rollout`);
//! - `kpi`: a `[[alerts.kpi]]` rule whose fleet-wide KPI value breaks its
//!   threshold (`KpiThreshold`, `kpi`, `condition`).
//!
//! Invariant: a source that fails to read is not reconciled in that round,
//! so a database hiccup never resolves its alerts.
//!
//! With [`Evaluator::with_metrics`], the `slo` source's evaluation of every
//! SLO also feeds the SLO gauges of `/metrics` ([`crate::slo::metrics`]),
//! also when SLO alerts are switched off.
use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::config::{AlertsConfig, Router};
use super::{Alert, Candidate, Severity};
use crate::rollouts::RolloutState;
use crate::store::alert::Reconciled;
use crate::store::{Store, StoreError};

/// Every source, in evaluation order.
pub const SOURCES: [&str; 7] = [
    "slo",
    "host_silent",
    "check_critical",
    "backup_rpo",
    "certificate",
    "rollout",
    "kpi",
];

/// Evaluates the sources of one control plane.
#[derive(Clone)]
pub struct Evaluator {
    pub store: Store,
    pub cfg: Arc<AlertsConfig>,
    pub router: Arc<Router>,
    /// Where the SLO values of each round go (`/metrics`), if anywhere.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn minutes(ms: i64) -> String {
    let m = ms.max(0) / 60_000;
    if m >= 120 {
        format!("{}h{}m", m / 60, m % 60)
    } else {
        format!("{m}m")
    }
}

fn host_name(id: &str, hostname: &str) -> String {
    if hostname.is_empty() || hostname == id {
        id.to_string()
    } else {
        format!("{hostname} ({id})")
    }
}

impl Evaluator {
    pub fn new(store: Store, cfg: AlertsConfig) -> Self {
        Evaluator {
            router: Arc::new(Router::new(&cfg)),
            cfg: Arc::new(cfg),
            store,
            metrics: None,
        }
    }

    /// Publishes the SLO values of each round on `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Every SLO's status at `now_ms` (published on `/metrics` when set up).
    async fn slo_statuses(&self, now_ms: i64) -> Result<Vec<crate::slo::status::SloStatus>, StoreError> {
        let slos = self.store.list_slos().await?;
        let statuses = crate::slo::status::statuses(&self.store, slos, now_ms).await?;
        if let Some(m) = &self.metrics {
            m.set_slos(&statuses);
        }
        Ok(statuses)
    }

    /// Whether `source` is switched on.
    fn enabled(&self, source: &str) -> bool {
        let c = &self.cfg;
        match source {
            "slo" => c.slo.enabled,
            "host_silent" => c.host_silent.enabled,
            "check_critical" => c.check_critical.enabled,
            "backup_rpo" => c.backup_rpo.enabled,
            "certificate" => c.certificate.enabled,
            "rollout" => c.rollout.enabled,
            "kpi" => !c.kpi.is_empty(),
            _ => false,
        }
    }

    /// The conditions of `source` that hold at `now_ms` (none when disabled).
    pub async fn candidates(&self, source: &str, now_ms: i64) -> Result<Vec<Candidate>, StoreError> {
        if !self.enabled(source) {
            if source == "slo" && self.metrics.is_some() {
                self.slo_statuses(now_ms).await?;
            }
            return Ok(Vec::new());
        }
        let c = &self.cfg;
        let mut out = Vec::new();
        match source {
            "slo" => {
                let statuses = self.slo_statuses(now_ms).await?;
                for mut cand in super::slo_candidates(&statuses) {
                    cand.severity = if cand.severity == Severity::Critical {
                        c.slo.page_severity
                    } else {
                        c.slo.ticket_severity
                    };
                    out.push(cand);
                }
            }
            "host_silent" => {
                let after = ms(c.host_silent.after.as_std());
                for h in self.store.silent_hosts(now_ms.saturating_sub(after)).await? {
                    out.push(Candidate {
                        severity: c.host_silent.severity,
                        summary: format!(
                            "host {} silent for {} (last heard from {})",
                            host_name(&h.id, &h.hostname),
                            minutes(now_ms - h.last_seen_ms),
                            steward_shared::timestamp::rfc3339(h.last_seen_ms)
                        ),
                        labels: labels(&[("alertname", "HostSilent"), ("host", &h.id)]),
                    });
                }
            }
            "check_critical" => {
                let for_ms = ms(c.check_critical.for_.as_std());
                for chk in self.store.critical_checks().await? {
                    if now_ms - chk.since_ms < for_ms {
                        continue;
                    }
                    out.push(Candidate {
                        severity: c.check_critical.severity,
                        summary: format!(
                            "check {} on {} critical for {}: {}",
                            chk.name,
                            chk.host_id,
                            minutes(now_ms - chk.since_ms),
                            chk.message
                        ),
                        labels: labels(&[
                            ("alertname", "CheckCritical"),
                            ("host", &chk.host_id),
                            ("check", &chk.name),
                        ]),
                    });
                }
            }
            "backup_rpo" => {
                for b in self.store.list_backups(None).await? {
                    let Some(rpo) = b.rpo_secs.filter(|r| *r > 0) else {
                        continue;
                    };
                    let age = b.last_snapshot_ms.map(|t| now_ms - t);
                    if age.is_some_and(|a| a <= rpo.saturating_mul(1000)) {
                        continue;
                    }
                    out.push(Candidate {
                        severity: c.backup_rpo.severity,
                        summary: match age {
                            Some(a) => format!(
                                "backup {} on {}: last good snapshot {} old, RPO {}",
                                b.name,
                                b.host_id,
                                minutes(a),
                                minutes(rpo * 1000)
                            ),
                            None => format!(
                                "backup {} on {}: no good snapshot yet, RPO {}",
                                b.name,
                                b.host_id,
                                minutes(rpo * 1000)
                            ),
                        },
                        labels: labels(&[("alertname", "BackupRPO"), ("host", &b.host_id), ("backup", &b.name)]),
                    });
                }
            }
            "certificate" => {
                let cert = &c.certificate;
                for chk in self.store.certificate_checks().await? {
                    let (threshold, severity, days) = if chk.days_left < cert.critical_days {
                        ("critical", cert.critical_severity, cert.critical_days)
                    } else if chk.days_left < cert.warning_days {
                        ("warning", cert.warning_severity, cert.warning_days)
                    } else {
                        continue;
                    };
                    out.push(Candidate {
                        severity,
                        summary: format!(
                            "certificate of check {} on {} expires in {:.1} days (under {days})",
                            chk.name, chk.host_id, chk.days_left
                        ),
                        labels: labels(&[
                            ("alertname", "CertificateExpiry"),
                            ("host", &chk.host_id),
                            ("check", &chk.name),
                            ("threshold", threshold),
                        ]),
                    });
                }
            }
            "rollout" => {
                let since = now_ms.saturating_sub(ms(c.rollout.window.as_std()));
                let page = self
                    .store
                    .list_rollouts(Some(RolloutState::RolledBack), None, 500)
                    .await?;
                for r in page.items {
                    if r.finished_ms.unwrap_or(r.updated_ms) < since {
                        continue;
                    }
                    out.push(Candidate {
                        severity: c.rollout.severity,
                        summary: format!(
                            "rollout {} ({}) rolled back{}",
                            r.id,
                            r.action,
                            r.reason.as_deref().map(|x| format!(": {x}")).unwrap_or_default()
                        ),
                        labels: labels(&[("alertname", "RolloutRolledBack"), ("rollout", &r.id)]),
                    });
                }
            }
            "kpi" => {
                let current_version = crate::kpi::sampler::current_version();
                for rule in &c.kpi {
                    let Some(def) = crate::kpi::find(&rule.kpi) else {
                        continue;
                    };
                    let window_ms = ms(rule.window.as_std()).max(1);
                    let data = self.store.kpi_data(now_ms, window_ms).await?;
                    let ctx = crate::kpi::Ctx {
                        now_ms,
                        window_ms,
                        current_version: current_version.clone(),
                    };
                    let Some(value) = (def.compute)(&data, &ctx).value else {
                        continue;
                    };
                    if !rule.breached(value) {
                        continue;
                    }
                    let condition = rule.condition();
                    out.push(Candidate {
                        severity: rule.severity,
                        summary: format!("KPI {} is {value} ({condition})", rule.kpi),
                        labels: labels(&[
                            ("alertname", "KpiThreshold"),
                            ("kpi", &rule.kpi),
                            ("condition", &condition),
                        ]),
                    });
                }
            }
            _ => {}
        }
        Ok(out)
    }

    /// One round: every source read and reconciled. A source that cannot be
    /// read keeps its alerts as they are.
    pub async fn tick(&self, now_ms: i64) -> Vec<(&'static str, Result<Reconciled, StoreError>)> {
        let router = self.router.clone();
        let route = move |a: &Alert| router.receivers(a);
        let mut out = Vec::new();
        for source in SOURCES {
            let result = match self.candidates(source, now_ms).await {
                Ok(c) => self.store.reconcile_alerts(source, &c, &route, now_ms).await,
                Err(e) => Err(e),
            };
            match &result {
                Ok(r) => {
                    for a in &r.fired {
                        tracing::info!(alert = %a.id, source, severity = a.severity.as_str(), silenced = a.silenced, summary = %a.summary, "alert firing");
                    }
                    for a in &r.resolved {
                        tracing::info!(alert = %a.id, source, "alert resolved");
                    }
                }
                Err(error) => tracing::warn!(source, %error, "alert source not evaluated this round"),
            }
            out.push((source, result));
        }
        out
    }
}

fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Starts the evaluator loop and the delivery worker
/// ([`super::receivers::Deliverer`]) of this process.
pub fn start(
    store: Store,
    cfg: AlertsConfig,
    metrics: Arc<crate::metrics::Metrics>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let interval = cfg.interval.as_std();
    let evaluator = Evaluator::new(store.clone(), cfg.clone()).with_metrics(metrics);
    let wake = Arc::new(Notify::new());
    let deliverer = super::receivers::Deliverer::new(store, &cfg);
    let delivery = tokio::spawn(deliverer.run(wake.clone(), shutdown.clone()));
    tokio::spawn(async move {
        loop {
            let results = evaluator.tick(steward_shared::now_ms()).await;
            if results
                .iter()
                .any(|(_, r)| r.as_ref().is_ok_and(|r| !r.fired.is_empty() || !r.resolved.is_empty()))
            {
                wake.notify_one();
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(interval) => {}
            }
        }
        let _ = delivery.await;
    })
}
