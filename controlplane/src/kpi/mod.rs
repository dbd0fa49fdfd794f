//! The fleet KPI catalog: each KPI's name, title, unit, written definition
//! and its computation, a pure function over rows the store fetched
//! ([`KpiData`], `store/kpi.rs`) and a fixed clock ([`Ctx`]), so every KPI
//! has a closed-form test. [`sampler`] stores the fleet-wide values
//! periodically for the trend.
//!
//! Invariants:
//! - A computation reads only the rows it is given: restricting the rows to a
//!   caller's hosts ([`KpiData::restrict`]) is how scopes and selectors apply,
//!   so nothing outside them can reach a value.
//! - A KPI without data (an empty denominator) is `None`, never 0 or 1.
//! - KPIs that need data the control plane does not store yet are listed in
//!   [`MISSING`] with the reason, never computed from something else.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::Serialize;

use crate::rbac::Labels;

pub mod api_stats;
pub mod metrics;
mod rollout_kpi;
pub mod sampler;

pub use api_stats::ApiCounts;
pub use rollout_kpi::RolloutRow;

const MS_PER_DAY: f64 = 86_400_000.0;
/// Samples of the disk-full forecast: the last 6 hours (node-mixin).
pub const DISK_LOOKBACK_MS: i64 = 6 * 3_600_000;
/// Restore tests count for 90 days.
pub const RESTORE_TEST_MS: i64 = 90 * 86_400_000;

/// A host as the KPIs see it (revoked hosts are not part of the fleet).
#[derive(Debug, Clone, PartialEq)]
pub struct HostRow {
    pub id: String,
    pub labels: Labels,
    pub agent_version: String,
    pub connected: bool,
    pub last_seen_ms: i64,
}

/// Check results of one host with one status in the window.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckCount {
    pub host_id: String,
    /// `ok`, `warning`, `critical` or `unknown`.
    pub status: String,
    pub count: i64,
}

/// The latest `days_left` of a certificate check (`tls`, `certificate_file`).
#[derive(Debug, Clone, PartialEq)]
pub struct CertRow {
    pub host_id: String,
    pub check: String,
    pub days_left: f64,
}

/// One free-space sample of a disk check (`free_bytes:MOUNT`).
#[derive(Debug, Clone, PartialEq)]
pub struct DiskSample {
    pub host_id: String,
    pub mount: String,
    pub at_ms: i64,
    pub free_bytes: f64,
}

/// A job, as far as the KPIs need it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JobRow {
    pub id: String,
    pub host_id: String,
    pub action: String,
    pub state: String,
    pub outcome: Option<String>,
    pub params: BTreeMap<String, String>,
    pub source: String,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
}

/// A configured backup of a host (`backup_status`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BackupRow {
    pub host_id: String,
    pub name: String,
    pub last_snapshot_ms: Option<i64>,
    pub rpo_secs: Option<i64>,
    pub last_verify_ms: Option<i64>,
    pub last_verify_ok: Option<bool>,
}

/// Everything the KPIs are computed from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KpiData {
    pub hosts: Vec<HostRow>,
    /// Results in the window, counted by host and status.
    pub checks: Vec<CheckCount>,
    pub certs: Vec<CertRow>,
    /// Disk samples of the last [`DISK_LOOKBACK_MS`].
    pub disks: Vec<DiskSample>,
    /// Jobs created, started, updated or finished in the window.
    pub jobs: Vec<JobRow>,
    pub backups: Vec<BackupRow>,
    /// Rollouts that ended in the window, with their target hosts.
    pub rollouts: Vec<RolloutRow>,
    /// The control plane's own `/api/v1` requests in the window, all
    /// replicas summed (not about any host: [`KpiData::restrict`] drops it).
    pub api: ApiCounts,
}

impl KpiData {
    /// The rows of the hosts `keep` accepts (by labels) only.
    pub fn restrict(&self, keep: impl Fn(&HostRow) -> bool) -> KpiData {
        let hosts: Vec<HostRow> = self.hosts.iter().filter(|h| keep(h)).cloned().collect();
        let ids: HashSet<&str> = hosts.iter().map(|h| h.id.as_str()).collect();
        KpiData {
            checks: self
                .checks
                .iter()
                .filter(|r| ids.contains(r.host_id.as_str()))
                .cloned()
                .collect(),
            certs: self
                .certs
                .iter()
                .filter(|r| ids.contains(r.host_id.as_str()))
                .cloned()
                .collect(),
            disks: self
                .disks
                .iter()
                .filter(|r| ids.contains(r.host_id.as_str()))
                .cloned()
                .collect(),
            jobs: self
                .jobs
                .iter()
                .filter(|r| ids.contains(r.host_id.as_str()))
                .cloned()
                .collect(),
            backups: self
                .backups
                .iter()
                .filter(|r| ids.contains(r.host_id.as_str()))
                .cloned()
                .collect(),
            rollouts: rollout_kpi::restrict(&self.rollouts, &ids),
            api: ApiCounts::default(),
            hosts,
        }
    }
}

/// The clock and window of one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Ctx {
    pub now_ms: i64,
    pub window_ms: i64,
    /// The agent version counted as current (the control plane's own).
    pub current_version: String,
}

impl Ctx {
    pub fn from_ms(&self) -> i64 {
        self.now_ms - self.window_ms
    }
    pub(crate) fn in_window(&self, t: Option<i64>) -> bool {
        t.is_some_and(|t| t >= self.from_ms() && t <= self.now_ms)
    }
    fn days(&self) -> f64 {
        self.window_ms.max(1) as f64 / MS_PER_DAY
    }
}

/// A KPI's unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// A share between 0 and 1.
    Ratio,
    /// A number of hosts.
    Hosts,
    /// Events per day.
    PerDay,
    Seconds,
}

impl Unit {
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Ratio => "ratio",
            Unit::Hosts => "hosts",
            Unit::PerDay => "per_day",
            Unit::Seconds => "seconds",
        }
    }
}

/// The value of a KPI and the figures it came from.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Reading {
    /// `None` when there is nothing to measure (no hosts, no jobs, ...).
    pub value: Option<f64>,
    /// Numerators, denominators and secondary figures (`within_4h`, ...).
    pub details: BTreeMap<&'static str, f64>,
}

impl Reading {
    pub(crate) fn ratio(num: usize, den: usize) -> Reading {
        let mut r = Reading {
            value: (den > 0).then(|| num as f64 / den as f64),
            details: BTreeMap::new(),
        };
        r.details.insert("numerator", num as f64);
        r.details.insert("denominator", den as f64);
        r
    }
    pub(crate) fn with(mut self, key: &'static str, v: f64) -> Reading {
        self.details.insert(key, v);
        self
    }
}

/// One KPI of the catalog.
pub struct KpiDef {
    pub name: &'static str,
    pub title: &'static str,
    pub unit: Unit,
    /// The written definition (also in the README).
    pub definition: &'static str,
    /// Whether the `window` parameter changes it (else it is a "now" figure).
    pub windowed: bool,
    pub compute: fn(&KpiData, &Ctx) -> Reading,
}

impl std::fmt::Debug for KpiDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KpiDef").field("name", &self.name).finish()
    }
}

/// The catalog.
pub const CATALOG: &[KpiDef] = &[
    KpiDef {
        name: "agent_connectivity",
        title: "Agent connectivity",
        unit: Unit::Ratio,
        definition: "Share of enrolled, non-revoked hosts whose agent holds an open stream to the control plane now.",
        windowed: false,
        compute: agent_connectivity,
    },
    KpiDef {
        name: "host_availability",
        title: "Host availability",
        unit: Unit::Ratio,
        definition: "Mean over hosts (each host weighs the same) of the share of the host's check results in the \
                     window that are not critical; hosts without results in the window are left out.",
        windowed: true,
        compute: host_availability,
    },
    KpiDef {
        name: "check_pass_ratio",
        title: "Check pass ratio",
        unit: Unit::Ratio,
        definition: "Check results with status ok divided by all check results in the window (warning, critical \
                     and unknown count as not passing).",
        windowed: true,
        compute: check_pass_ratio,
    },
    KpiDef {
        name: "backup_success_rate",
        title: "Backup success rate",
        unit: Unit::Ratio,
        definition: "backup.run jobs (API and locally scheduled) that finished in the window with success, divided \
                     by those that finished (cancelled runs left out).",
        windowed: true,
        compute: backup_success_rate,
    },
    KpiDef {
        name: "rpo_compliance",
        title: "RPO compliance",
        unit: Unit::Ratio,
        definition: "Share of configured backups (host, backup) with a known RPO whose last good snapshot is not \
                     older than the RPO now; a backup without any good snapshot is not compliant.",
        windowed: false,
        compute: rpo_compliance,
    },
    KpiDef {
        name: "restore_test_coverage",
        title: "Restore-test coverage",
        unit: Unit::Ratio,
        definition: "Share of hosts with at least one backup whose every backup's last verification (a restore \
                     test) passed within the last 90 days.",
        windowed: false,
        compute: restore_test_coverage,
    },
    KpiDef {
        name: "cert_expiry_risk",
        title: "Certificate expiry risk",
        unit: Unit::Hosts,
        definition: "Hosts with a certificate check (tls, certificate_file) whose latest days_left is under 30 \
                     (details: under_7 for the critical band).",
        windowed: false,
        compute: cert_expiry_risk,
    },
    KpiDef {
        name: "disk_full_forecast",
        title: "Disk-full forecast",
        unit: Unit::Hosts,
        definition: "Hosts with a mount predicted full within 24 h by a least-squares line through its free_bytes \
                     samples of the last 6 h (at least 2 samples; details: within_4h).",
        windowed: false,
        compute: disk_full_forecast,
    },
    KpiDef {
        name: "deployment_frequency",
        title: "Deployment frequency",
        unit: Unit::PerDay,
        definition: "deploy.apply jobs that finished in the window (any outcome but cancelled) per day of the window.",
        windowed: true,
        compute: deployment_frequency,
    },
    KpiDef {
        name: "change_failure_rate",
        title: "Change failure rate",
        unit: Unit::Ratio,
        definition: "Of the deploy.apply jobs that finished in the window (cancelled left out), the share that \
                     failed (failed, timed out, discarded, rolled back by the agent) or were followed on the same \
                     host and app by a deploy.rollback before the next deploy.apply.",
        windowed: true,
        compute: change_failure_rate,
    },
    KpiDef {
        name: "failed_deployment_recovery_time",
        title: "Failed-deployment recovery time",
        unit: Unit::Seconds,
        definition: "Median, over the failed deployments of the window that recovered, of the time to recovery: \
                     for an agent rollback, the job's duration; otherwise from the failure to the end of the next \
                     successful deploy.apply or deploy.rollback on the same host and app.",
        windowed: true,
        compute: failed_deployment_recovery_time,
    },
    KpiDef {
        name: "lead_time",
        title: "Lead time for changes",
        unit: Unit::Seconds,
        definition: "Median, over successful deploy.apply jobs finished in the window whose params carry \
                     commit_time (epoch seconds or RFC 3339), of finish time minus commit time.",
        windowed: true,
        compute: lead_time,
    },
    KpiDef {
        name: "job_success_rate",
        title: "Job success rate",
        unit: Unit::Ratio,
        definition: "Jobs (every action) that finished in the window with success, divided by those that finished \
                     as succeeded, failed, timed out or discarded (cancelled left out).",
        windowed: true,
        compute: job_success_rate,
    },
    KpiDef {
        name: "queue_start_delay_p95",
        title: "Queue health: p95 enqueue-to-start",
        unit: Unit::Seconds,
        definition: "95th percentile (nearest rank) of started minus created, over jobs created through the API \
                     that started in the window.",
        windowed: true,
        compute: queue_start_delay_p95,
    },
    KpiDef {
        name: "dead_letters_per_day",
        title: "Queue health: dead letters per day",
        unit: Unit::PerDay,
        definition: "Jobs discarded (out of attempts) in the window, per day of the window.",
        windowed: true,
        compute: dead_letters_per_day,
    },
    KpiDef {
        name: "agent_version_currency",
        title: "Agent version currency",
        unit: Unit::Ratio,
        definition: "Share of non-revoked hosts whose agent version is at least the control plane's own version.",
        windowed: false,
        compute: agent_version_currency,
    },
    KpiDef {
        name: "rollout_success_rate",
        title: "Rollout success rate",
        unit: Unit::Ratio,
        definition: "Rollouts that ended in the window as succeeded, divided by those that ended as succeeded, \
                     rolled back or failed (operator aborts left out). A rollout counts for a scope, selector or \
                     group only when all of its target hosts are in it.",
        windowed: true,
        compute: rollout_kpi::rollout_success_rate,
    },
    KpiDef {
        name: "api_availability",
        title: "Control-plane API availability",
        unit: Unit::Ratio,
        definition: "Share of the control plane's /api/v1 requests in the window (all replicas) answered without \
                     a 5xx status. Control-plane-wide: shown only to tokens without a scope, the same whatever \
                     the selector, null per group.",
        windowed: true,
        compute: api_stats::api_availability,
    },
    KpiDef {
        name: "api_latency_p95",
        title: "Control-plane API p95 latency",
        unit: Unit::Seconds,
        definition: "95th percentile of the control plane's /api/v1 request latency in the window (all replicas), \
                     interpolated linearly within a fixed log-spaced histogram bucket (bounds 0.5 ms x 2^k up to \
                     16.384 s). Control-plane-wide like api_availability.",
        windowed: true,
        compute: api_stats::api_latency_p95,
    },
];

/// KPIs of the issue that are not computed yet, with the reason.
pub const MISSING: &[(&str, &str)] = &[];

/// The catalog entry named `name`.
pub fn find(name: &str) -> Option<&'static KpiDef> {
    CATALOG.iter().find(|k| k.name == name)
}

// ------------------------------------------------------------------ helpers

/// Median (mean of the two middle values for an even count).
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Nearest-rank percentile `p` (0 < p ≤ 100).
pub fn percentile(mut v: Vec<f64>, p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// Least-squares line through `(x, y)` points: `(intercept, slope)`;
/// `None` with fewer than 2 distinct x values.
pub fn least_squares(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let slope = sxy / sxx;
    Some((my - slope * mx, slope))
}

/// Seconds from now until the fitted free space reaches 0 (`Some(0)` if the
/// fit says it is already full; `None` if it is not shrinking).
pub fn seconds_to_full(samples: &[(i64, f64)], now_ms: i64) -> Option<f64> {
    let points: Vec<(f64, f64)> = samples
        .iter()
        .map(|(t, free)| ((*t - now_ms) as f64 / 1000.0, *free))
        .collect();
    let (free_now, slope) = least_squares(&points)?;
    if free_now <= 0.0 {
        return Some(0.0);
    }
    (slope < 0.0).then(|| -free_now / slope)
}

fn is_terminal_counted(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "timed_out" | "discarded")
}

fn finished_in(j: &JobRow, ctx: &Ctx) -> bool {
    ctx.in_window(j.finished_ms.or(if j.state == "discarded" {
        Some(j.updated_ms)
    } else {
        None
    }))
}

fn version_key(v: &str) -> Vec<u64> {
    v.trim_start_matches('v')
        .split(['.', '-', '+'])
        .map_while(|p| p.parse::<u64>().ok())
        .collect()
}

/// Parses a commit time: epoch seconds, epoch milliseconds (13+ digits) or RFC 3339.
pub fn parse_commit_time(s: &str) -> Option<i64> {
    if let Ok(n) = s.trim().parse::<i64>() {
        return Some(if n.abs() >= 100_000_000_000 {
            n
        } else {
            n.saturating_mul(1000)
        });
    }
    steward_shared::timestamp::parse_rfc3339(s.trim())
}

// ------------------------------------------------------------------ KPIs

fn agent_connectivity(d: &KpiData, _: &Ctx) -> Reading {
    Reading::ratio(d.hosts.iter().filter(|h| h.connected).count(), d.hosts.len())
}

fn host_availability(d: &KpiData, _: &Ctx) -> Reading {
    let mut per: HashMap<&str, (i64, i64)> = HashMap::new();
    for c in &d.checks {
        let e = per.entry(c.host_id.as_str()).or_default();
        e.1 += c.count;
        if c.status != "critical" {
            e.0 += c.count;
        }
    }
    let shares: Vec<f64> = per
        .values()
        .filter(|(_, all)| *all > 0)
        .map(|(ok, all)| *ok as f64 / *all as f64)
        .collect();
    let n = shares.len();
    Reading {
        value: (n > 0).then(|| shares.iter().sum::<f64>() / n as f64),
        details: BTreeMap::new(),
    }
    .with("hosts_measured", n as f64)
}

fn check_pass_ratio(d: &KpiData, _: &Ctx) -> Reading {
    let all: i64 = d.checks.iter().map(|c| c.count).sum();
    let ok: i64 = d.checks.iter().filter(|c| c.status == "ok").map(|c| c.count).sum();
    Reading::ratio(ok as usize, all as usize)
}

fn action_success(d: &KpiData, ctx: &Ctx, action: Option<&str>) -> Reading {
    let done: Vec<&JobRow> = d
        .jobs
        .iter()
        .filter(|j| action.is_none_or(|a| j.action == a) && is_terminal_counted(&j.state) && finished_in(j, ctx))
        .collect();
    Reading::ratio(done.iter().filter(|j| j.state == "succeeded").count(), done.len())
}

fn backup_success_rate(d: &KpiData, ctx: &Ctx) -> Reading {
    action_success(d, ctx, Some("backup.run"))
}

fn job_success_rate(d: &KpiData, ctx: &Ctx) -> Reading {
    action_success(d, ctx, None)
}

fn rpo_compliance(d: &KpiData, ctx: &Ctx) -> Reading {
    let known: Vec<&BackupRow> = d.backups.iter().filter(|b| b.rpo_secs.is_some()).collect();
    let ok = known
        .iter()
        .filter(|b| {
            let rpo_ms = b.rpo_secs.unwrap_or(0).saturating_mul(1000);
            b.last_snapshot_ms.is_some_and(|t| ctx.now_ms - t <= rpo_ms)
        })
        .count();
    Reading::ratio(ok, known.len()).with("rpo_unknown", (d.backups.len() - known.len()) as f64)
}

fn restore_test_coverage(d: &KpiData, ctx: &Ctx) -> Reading {
    let mut per: BTreeMap<&str, bool> = BTreeMap::new();
    for b in &d.backups {
        let passed = b.last_verify_ok == Some(true)
            && b.last_verify_ms
                .is_some_and(|t| t >= ctx.now_ms - RESTORE_TEST_MS && t <= ctx.now_ms);
        let e = per.entry(b.host_id.as_str()).or_insert(true);
        *e = *e && passed;
    }
    Reading::ratio(per.values().filter(|ok| **ok).count(), per.len())
}

fn cert_expiry_risk(d: &KpiData, _: &Ctx) -> Reading {
    let mut min: BTreeMap<&str, f64> = BTreeMap::new();
    for c in &d.certs {
        let e = min.entry(c.host_id.as_str()).or_insert(f64::INFINITY);
        *e = e.min(c.days_left);
    }
    let under = |days: f64| min.values().filter(|d| **d < days).count() as f64;
    Reading {
        value: Some(under(30.0)),
        details: BTreeMap::new(),
    }
    .with("under_30", under(30.0))
    .with("under_7", under(7.0))
    .with("hosts_with_certificates", min.len() as f64)
}

fn disk_full_forecast(d: &KpiData, ctx: &Ctx) -> Reading {
    let mut series: BTreeMap<(&str, &str), Vec<(i64, f64)>> = BTreeMap::new();
    for s in &d.disks {
        if s.at_ms >= ctx.now_ms - DISK_LOOKBACK_MS && s.at_ms <= ctx.now_ms {
            series
                .entry((s.host_id.as_str(), s.mount.as_str()))
                .or_default()
                .push((s.at_ms, s.free_bytes));
        }
    }
    let mut soonest: BTreeMap<&str, f64> = BTreeMap::new();
    let mut measured: BTreeSet<&str> = BTreeSet::new();
    for (&(host, _), samples) in &series {
        measured.insert(host);
        if let Some(secs) = seconds_to_full(samples, ctx.now_ms) {
            let e = soonest.entry(host).or_insert(f64::INFINITY);
            *e = e.min(secs);
        }
    }
    let within = |h: f64| soonest.values().filter(|s| **s <= h * 3600.0).count() as f64;
    Reading {
        value: Some(within(24.0)),
        details: BTreeMap::new(),
    }
    .with("within_24h", within(24.0))
    .with("within_4h", within(4.0))
    .with("hosts_with_samples", measured.len() as f64)
}

fn deployments<'a>(d: &'a KpiData, ctx: &Ctx) -> Vec<&'a JobRow> {
    d.jobs
        .iter()
        .filter(|j| j.action == "deploy.apply" && is_terminal_counted(&j.state) && finished_in(j, ctx))
        .collect()
}

fn deployment_frequency(d: &KpiData, ctx: &Ctx) -> Reading {
    let n = deployments(d, ctx).len();
    Reading {
        value: Some(n as f64 / ctx.days()),
        details: BTreeMap::new(),
    }
    .with("deployments", n as f64)
}

fn app(j: &JobRow) -> &str {
    j.params.get("app").map(String::as_str).unwrap_or("")
}

/// The deploy.apply and deploy.rollback jobs per (host, app), so that
/// judging a deployment reads its own host and app only (not every job).
type DeployJobs<'a> = HashMap<(&'a str, &'a str), Vec<&'a JobRow>>;

fn deploy_jobs(d: &KpiData) -> DeployJobs<'_> {
    let mut by: DeployJobs<'_> = HashMap::new();
    for j in d
        .jobs
        .iter()
        .filter(|j| matches!(j.action.as_str(), "deploy.apply" | "deploy.rollback"))
    {
        by.entry((j.host_id.as_str(), app(j))).or_default().push(j);
    }
    by
}

/// For a deployment, the failure verdict and when it recovered (ms), if it did.
fn deployment_failure(by: &DeployJobs<'_>, dep: &JobRow) -> Option<Option<i64>> {
    let end = dep.finished_ms.unwrap_or(dep.updated_ms);
    let jobs = by
        .get(&(dep.host_id.as_str(), app(dep)))
        .map(Vec::as_slice)
        .unwrap_or_default();
    // Another job than `dep` (by address: `jobs` holds references into the same rows).
    let same = |j: &&&JobRow| !std::ptr::eq(**j, dep);
    // The next deploy.apply on this host and app (its creation bounds a later rollback).
    let next_apply = jobs
        .iter()
        .filter(same)
        .filter(|j| j.action == "deploy.apply" && j.created_ms > dep.created_ms)
        .map(|j| j.created_ms)
        .min()
        .unwrap_or(i64::MAX);
    let recovered_after = |from: i64| {
        jobs.iter()
            .filter(same)
            .filter(|j| matches!(j.action.as_str(), "deploy.apply" | "deploy.rollback") && j.state == "succeeded")
            .filter_map(|j| j.finished_ms)
            .filter(|t| *t >= from)
            .min()
    };
    if dep.outcome.as_deref() == Some("rolled_back") {
        return Some(Some(end));
    }
    if dep.state != "succeeded" {
        return Some(recovered_after(end));
    }
    let rollback = jobs
        .iter()
        .filter(same)
        .filter(|j| j.action == "deploy.rollback" && j.created_ms >= end && j.created_ms < next_apply)
        .min_by_key(|j| j.created_ms)?;
    Some(if rollback.state == "succeeded" {
        rollback.finished_ms
    } else {
        recovered_after(end)
    })
}

fn change_failure_rate(d: &KpiData, ctx: &Ctx) -> Reading {
    let deps = deployments(d, ctx);
    let by = deploy_jobs(d);
    let failed = deps.iter().filter(|j| deployment_failure(&by, j).is_some()).count();
    Reading::ratio(failed, deps.len())
}

fn failed_deployment_recovery_time(d: &KpiData, ctx: &Ctx) -> Reading {
    let mut times = Vec::new();
    let mut unrecovered = 0usize;
    let by = deploy_jobs(d);
    for dep in deployments(d, ctx) {
        match deployment_failure(&by, dep) {
            None => {}
            Some(None) => unrecovered += 1,
            Some(Some(at)) => {
                let failed_at = if dep.outcome.as_deref() == Some("rolled_back") {
                    dep.started_ms.unwrap_or(dep.created_ms)
                } else {
                    dep.finished_ms.unwrap_or(dep.updated_ms)
                };
                times.push((at - failed_at).max(0) as f64 / 1000.0);
            }
        }
    }
    let n = times.len();
    Reading {
        value: median(times),
        details: BTreeMap::new(),
    }
    .with("recovered", n as f64)
    .with("unrecovered", unrecovered as f64)
}

fn lead_time(d: &KpiData, ctx: &Ctx) -> Reading {
    let times: Vec<f64> = deployments(d, ctx)
        .into_iter()
        .filter(|j| j.state == "succeeded")
        .filter_map(|j| {
            let commit = parse_commit_time(j.params.get("commit_time")?)?;
            Some((j.finished_ms? - commit).max(0) as f64 / 1000.0)
        })
        .collect();
    let n = times.len();
    Reading {
        value: median(times),
        details: BTreeMap::new(),
    }
    .with("deployments_with_commit_time", n as f64)
}

fn queue_start_delay_p95(d: &KpiData, ctx: &Ctx) -> Reading {
    let delays: Vec<f64> = d
        .jobs
        .iter()
        .filter(|j| j.source != "local" && ctx.in_window(j.started_ms))
        .filter_map(|j| Some((j.started_ms? - j.created_ms).max(0) as f64 / 1000.0))
        .collect();
    let n = delays.len();
    Reading {
        value: percentile(delays, 95.0),
        details: BTreeMap::new(),
    }
    .with("jobs_started", n as f64)
}

fn dead_letters_per_day(d: &KpiData, ctx: &Ctx) -> Reading {
    let n = d
        .jobs
        .iter()
        .filter(|j| j.state == "discarded" && finished_in(j, ctx))
        .count();
    Reading {
        value: Some(n as f64 / ctx.days()),
        details: BTreeMap::new(),
    }
    .with("discarded", n as f64)
}

fn agent_version_currency(d: &KpiData, ctx: &Ctx) -> Reading {
    let want = version_key(&ctx.current_version);
    let current = d
        .hosts
        .iter()
        .filter(|h| !h.agent_version.is_empty() && version_key(&h.agent_version) >= want)
        .count();
    Reading::ratio(current, d.hosts.len())
}

/// A KPI's value per group of hosts sharing a label's value (`None`: hosts without the label).
pub fn grouped(
    def: &KpiDef,
    data: &KpiData,
    ctx: &Ctx,
    label: &str,
    max_groups: usize,
) -> Vec<(Option<String>, Reading)> {
    let values: BTreeSet<Option<&String>> = data.hosts.iter().map(|h| h.labels.get(label)).collect();
    values
        .into_iter()
        .take(max_groups)
        .map(|v| {
            let part = data.restrict(|h| h.labels.get(label) == v);
            (v.cloned(), (def.compute)(&part, ctx))
        })
        .collect()
}

#[cfg(test)]
mod tests;
