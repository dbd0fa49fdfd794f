//! What each event counts towards: the [`SliIndex`] maps a check result, a
//! job outcome or an API request to `(slo, group, minute) += (total, good)`.
//! The store consults it inside the ingest transaction, for the reports that
//! transaction really inserted (so a resent report is never counted twice).
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use steward_shared::selector::Selector;

use super::spec::{GroupBy, Indicator, SloSpec};

/// Where one event is counted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BucketKey {
    pub slo: String,
    pub grp: String,
    pub minute: i64,
}

/// Increments per bucket: (total, good).
pub type Increments = HashMap<BucketKey, (u64, u64)>;

#[derive(Debug, Clone)]
struct Rule {
    slo: String,
    selector: Selector,
    group: GroupBy,
    /// Latency indicators: the most an event may take to be good, in µs.
    max_us: Option<u64>,
}

impl Rule {
    fn group_of(&self, host_id: &str, labels: &BTreeMap<String, String>) -> String {
        match &self.group {
            GroupBy::None => String::new(),
            GroupBy::Host => host_id.to_string(),
            GroupBy::Label(key) => labels.get(key).cloned().unwrap_or_default(),
        }
    }
}

/// The counting rules of every defined SLO, by source.
#[derive(Debug, Default)]
pub struct SliIndex {
    checks: HashMap<String, Vec<Rule>>,
    jobs: HashMap<String, Vec<Rule>>,
    api: Vec<Rule>,
}

/// The index the store counts with, swapped whenever SLOs change.
pub type SharedIndex = Arc<RwLock<Arc<SliIndex>>>;

/// An event time as a bucket minute: results dated in the future count now.
pub fn minute_of(at_ms: i64, now_ms: i64) -> i64 {
    at_ms.min(now_ms).div_euclid(60_000)
}

impl SliIndex {
    /// Builds the index from valid definitions (invalid ones are skipped).
    pub fn build<'a>(slos: impl IntoIterator<Item = (&'a str, &'a SloSpec)>) -> SliIndex {
        let mut index = SliIndex::default();
        for (name, spec) in slos {
            let Ok(group) = spec.group_by() else { continue };
            let rule = |selector: &str, max_us: Option<u64>| {
                Selector::parse(selector).ok().map(|selector| Rule {
                    slo: name.to_string(),
                    selector,
                    group: group.clone(),
                    max_us,
                })
            };
            match &spec.indicator {
                Indicator::CheckAvailability { check, selector } => {
                    if let Some(r) = rule(selector, None) {
                        index.checks.entry(check.clone()).or_default().push(r);
                    }
                }
                Indicator::CheckLatency {
                    check,
                    threshold,
                    selector,
                } => {
                    if let Some(r) = rule(selector, Some(threshold.as_std().as_micros() as u64)) {
                        index.checks.entry(check.clone()).or_default().push(r);
                    }
                }
                Indicator::JobSuccess { action, selector } => {
                    if let Some(r) = rule(selector, None) {
                        index.jobs.entry(action.clone()).or_default().push(r);
                    }
                }
                Indicator::ApiAvailability {} => index.api.extend(rule("", None)),
                Indicator::ApiLatency { threshold } => {
                    index.api.extend(rule("", Some(threshold.as_std().as_micros() as u64)))
                }
            }
        }
        index
    }

    /// Whether any SLO counts check results.
    pub fn counts_checks(&self) -> bool {
        !self.checks.is_empty()
    }

    /// Whether any SLO counts outcomes of the job action `action`.
    pub fn counts_job(&self, action: &str) -> bool {
        self.jobs.contains_key(action)
    }

    /// Whether any SLO counts results of the check `name`.
    pub fn counts_check(&self, name: &str) -> bool {
        self.checks.contains_key(name)
    }

    /// Counts one check result.
    #[allow(clippy::too_many_arguments)]
    pub fn count_check(
        &self,
        out: &mut Increments,
        host_id: &str,
        labels: &BTreeMap<String, String>,
        check: &str,
        ok: bool,
        duration_us: u64,
        at_ms: i64,
        now_ms: i64,
    ) {
        let Some(rules) = self.checks.get(check) else { return };
        for rule in rules.iter().filter(|r| r.selector.matches(labels)) {
            let good = ok && rule.max_us.is_none_or(|max| duration_us <= max);
            add(
                out,
                rule,
                rule.group_of(host_id, labels),
                minute_of(at_ms, now_ms),
                good,
            );
        }
    }

    /// Counts one job outcome (see [`crate::store::Store::record_job_outcome`]).
    #[allow(clippy::too_many_arguments)]
    pub fn count_job(
        &self,
        out: &mut Increments,
        host_id: &str,
        labels: &BTreeMap<String, String>,
        action: &str,
        ok: bool,
        at_ms: i64,
        now_ms: i64,
    ) {
        let Some(rules) = self.jobs.get(action) else { return };
        for rule in rules.iter().filter(|r| r.selector.matches(labels)) {
            add(out, rule, rule.group_of(host_id, labels), minute_of(at_ms, now_ms), ok);
        }
    }

    /// Counts one `/api/v1` request of this control plane.
    pub fn count_api(&self, out: &mut Increments, status: u16, duration_us: u64, at_ms: i64) {
        for rule in &self.api {
            let good = status < 500 && rule.max_us.is_none_or(|max| duration_us <= max);
            add(out, rule, String::new(), at_ms.div_euclid(60_000), good);
        }
    }
}

fn add(out: &mut Increments, rule: &Rule, grp: String, minute: i64, good: bool) {
    let e = out
        .entry(BucketKey {
            slo: rule.slo.clone(),
            grp,
            minute,
        })
        .or_default();
    e.0 += 1;
    e.1 += u64::from(good);
}

/// Counts the control plane's own API requests in memory; the SLO engine
/// flushes them into the buckets every few seconds.
#[derive(Debug, Default)]
pub struct ApiRecorder {
    index: SharedIndex,
    pending: Mutex<Increments>,
    /// Every request, for the API KPIs (flushed with the SLO increments).
    pub stats: Arc<crate::kpi::api_stats::ApiStats>,
}

impl ApiRecorder {
    pub fn new(index: SharedIndex) -> Self {
        ApiRecorder {
            index,
            pending: Mutex::default(),
            stats: Arc::default(),
        }
    }

    /// Records one request (route under `/api/v1`).
    pub fn record(&self, status: u16, duration_us: u64, at_ms: i64) {
        self.stats.record(status, duration_us, at_ms);
        let index = match self.index.read() {
            Ok(i) => i.clone(),
            Err(_) => return,
        };
        if index.api.is_empty() {
            return;
        }
        if let Ok(mut pending) = self.pending.lock() {
            index.count_api(&mut pending, status, duration_us, at_ms);
        }
    }

    /// Takes what was recorded since the last call.
    pub fn take(&self) -> Increments {
        self.pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }

    /// Puts increments back after a failed flush (they are not lost).
    pub fn restore(&self, incs: Increments) {
        if let Ok(mut pending) = self.pending.lock() {
            for (k, (t, g)) in incs {
                let e = pending.entry(k).or_default();
                e.0 += t;
                e.1 += g;
            }
        }
    }
}
