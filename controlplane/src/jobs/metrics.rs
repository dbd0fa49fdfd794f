//! The job queue's metrics: queue depth by state, dispatch latency (from a
//! job becoming due to its assignment being sent), and attempt outcomes by
//! state and action. Labels are bounded: states and the contract's actions.
use std::collections::BTreeMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::{ACTIONS, JobState};
use crate::metrics::Metrics;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    state: &'static str,
    action: &'static str,
}

pub(crate) struct JobMetrics {
    jobs: Family<StateLabels, Gauge>,
    dispatched: Counter,
    dispatch_seconds: Histogram,
    finished: Family<OutcomeLabels, Counter>,
}

impl JobMetrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let jobs = Family::<StateLabels, Gauge>::default();
        registry.register(
            "jobs",
            "Jobs in the database by state (queue depth: queued)",
            jobs.clone(),
        );
        let dispatched = Counter::default();
        registry.register(
            "jobs_dispatched",
            "Job attempts sent to agents by this process",
            dispatched.clone(),
        );
        let dispatch_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register_with_unit(
            "job_dispatch",
            "Time from a job becoming due to its assignment being sent",
            Unit::Seconds,
            dispatch_seconds.clone(),
        );
        let finished = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "job_attempts_finished",
            "Job attempts that ended, by resulting job state and action",
            finished.clone(),
        );
        JobMetrics {
            jobs,
            dispatched,
            dispatch_seconds,
            finished,
        }
    }
}

impl Metrics {
    /// An attempt was sent `latency_secs` after it became due.
    pub fn job_dispatched(&self, latency_secs: f64) {
        self.jobs.dispatched.inc();
        self.jobs.dispatch_seconds.observe(latency_secs);
    }

    /// An attempt ended leaving its job in `state`.
    pub fn job_finished(&self, state: &str, action: &str) {
        let state = JobState::parse(state).map(JobState::as_str).unwrap_or("other");
        let action = ACTIONS
            .iter()
            .map(|(a, _, _)| *a)
            .find(|a| *a == action)
            .unwrap_or("other");
        self.jobs.finished.get_or_create(&OutcomeLabels { state, action }).inc();
    }

    /// Jobs per state, as counted in the database.
    pub fn set_job_counts(&self, counts: &BTreeMap<JobState, u64>) {
        for s in JobState::ALL {
            let n = counts.get(&s).copied().unwrap_or(0);
            self.jobs
                .jobs
                .get_or_create(&StateLabels { state: s.as_str() })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}
