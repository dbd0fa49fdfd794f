//! Prometheus metrics of the control plane, shared by the gateway and the
//! REST API, served at `/metrics` in the Prometheus text format 0.0.4 (what
//! every scraper and `promtool check metrics` accept; prometheus-client's
//! OpenMetrics output is converted, see [`to_prometheus_text`]).
//!
//! Every label has a fixed, small set of values (route templates, status
//! classes, method names, stream outcomes): never a host, token or job ID.
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::model::FleetStats;

/// `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How an agent stream ended up at the gateway (the `outcome` label).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum StreamOutcome {
    /// The TLS handshake and `Hello` succeeded.
    accepted,
    /// Refused during the TLS handshake (no, unknown or revoked certificate).
    rejected_tls,
    /// Refused after TLS: bad first message, wrong protocol, oversized message.
    rejected_protocol,
    /// Refused because the verified certificate carries no usable identity.
    rejected_identity,
    /// Refused because the gateway is at its connection cap.
    rejected_over_capacity,
    /// Refused because the certificate (or its host) is revoked, or was never recorded.
    rejected_revoked,
    /// A client without a certificate asked for a stream (only `Enroll` is open to it).
    rejected_unauthenticated,
    /// Any other refusal reason.
    rejected_other,
}

impl StreamOutcome {
    /// The outcome for a rejection `reason`: `tls`, `protocol`, `identity`,
    /// `over_capacity`, `revoked`, `unauthenticated`; anything else is
    /// counted as `rejected_other`.
    pub fn rejected(reason: &str) -> Self {
        match reason {
            "tls" | "rejected_tls" => Self::rejected_tls,
            "protocol" | "rejected_protocol" => Self::rejected_protocol,
            "identity" | "rejected_identity" => Self::rejected_identity,
            "over_capacity" | "rejected_over_capacity" => Self::rejected_over_capacity,
            "revoked" | "rejected_revoked" => Self::rejected_revoked,
            "unauthenticated" | "rejected_unauthenticated" => Self::rejected_unauthenticated,
            _ => Self::rejected_other,
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    outcome: StreamOutcome,
}

/// How an `Enroll` call ended (the `outcome` label).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum EnrollOutcome {
    enrolled,
    /// The token or the request was refused.
    refused,
    /// Over the per-address or the overall `Enroll` rate.
    rate_limited,
    /// A connection without a certificate beyond `grpc.max_enrollment_connections`.
    over_capacity,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnrollLabels {
    outcome: EnrollOutcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: &'static str,
    route: &'static str,
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

/// The registry and every metric in it. Cheap to share behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    results_ingested: Counter,
    ingest_batches: Counter,
    ingest_batch_seconds: Histogram,
    ingest_batch_size: Histogram,
    agents_connected: Gauge,
    agent_streams: Family<StreamLabels, Counter>,
    spool_dropped_reported: Gauge,
    hosts: Gauge,
    hosts_online: Gauge,
    http_requests: Family<HttpLabels, Counter>,
    http_request_seconds: Family<RouteLabels, Histogram>,
    enrollments: Family<EnrollLabels, Counter>,
    denials_unaudited: Counter,
    /// The job queue's metrics ([`crate::jobs::metrics`]).
    pub(crate) jobs: crate::jobs::metrics::JobMetrics,
    /// The fleet KPIs ([`crate::kpi::metrics`]).
    pub(crate) kpi: crate::kpi::metrics::KpiMetrics,
    /// The SLOs ([`crate::slo::metrics`]).
    pub(crate) slo: crate::slo::metrics::SloMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("steward");
        let results_ingested = Counter::default();
        registry.register(
            "results_ingested",
            "Check results stored by ingest (after commit)",
            results_ingested.clone(),
        );
        let ingest_batches = Counter::default();
        registry.register(
            "ingest_batches",
            "Ingest transactions committed",
            ingest_batches.clone(),
        );
        let ingest_batch_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register_with_unit(
            "ingest_batch",
            "Duration of one ingest transaction",
            Unit::Seconds,
            ingest_batch_seconds.clone(),
        );
        let ingest_batch_size = Histogram::new(exponential_buckets(1.0, 4.0, 9));
        registry.register(
            "ingest_batch_size",
            "Check results per ingest transaction",
            ingest_batch_size.clone(),
        );
        let agents_connected = Gauge::default();
        registry.register(
            "agents_connected",
            "Agent streams open on this replica",
            agents_connected.clone(),
        );
        let agent_streams = Family::<StreamLabels, Counter>::default();
        registry.register("agent_streams", "Agent streams by outcome", agent_streams.clone());
        let spool_dropped_reported = Gauge::default();
        registry.register(
            "spool_dropped_reported",
            "Sum over hosts of the spool drop counters agents reported (read from the store at scrape)",
            spool_dropped_reported.clone(),
        );
        let hosts = Gauge::default();
        registry.register("hosts", "Hosts known to the control plane (at scrape)", hosts.clone());
        let hosts_online = Gauge::default();
        registry.register(
            "hosts_online",
            "Hosts seen within the offline threshold (at scrape)",
            hosts_online.clone(),
        );
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "REST requests by method, route template and status class",
            http_requests.clone(),
        );
        let http_request_seconds = Family::<RouteLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.0005, 2.0, 14))) as fn() -> Histogram,
        );
        registry.register_with_unit(
            "http_request",
            "REST request duration by route template",
            Unit::Seconds,
            http_request_seconds.clone(),
        );
        let enrollments = Family::<EnrollLabels, Counter>::default();
        registry.register(
            "enrollments",
            "Enroll calls at the gateway by outcome",
            enrollments.clone(),
        );
        let denials_unaudited = Counter::default();
        registry.register(
            "audit_denials_unaudited",
            "Refused requests and enrollments beyond audit.denials_per_minute (counted, not each recorded)",
            denials_unaudited.clone(),
        );
        let jobs = crate::jobs::metrics::JobMetrics::register(&mut registry);
        let kpi = crate::kpi::metrics::KpiMetrics::register(&mut registry);
        let slo = crate::slo::metrics::SloMetrics::register(&mut registry);
        Metrics {
            registry,
            results_ingested,
            ingest_batches,
            ingest_batch_seconds,
            ingest_batch_size,
            agents_connected,
            agent_streams,
            spool_dropped_reported,
            hosts,
            hosts_online,
            http_requests,
            http_request_seconds,
            enrollments,
            denials_unaudited,
            jobs,
            kpi,
            slo,
        }
    }

    /// One committed ingest transaction of `results` check results that took `secs`.
    pub fn ingest_batch(&self, results: u64, secs: f64) {
        self.results_ingested.inc_by(results);
        self.ingest_batches.inc();
        self.ingest_batch_seconds.observe(secs);
        self.ingest_batch_size.observe(results as f64);
    }

    /// An agent stream was accepted (counts it and raises `agents_connected`).
    pub fn agent_connected(&self) {
        self.agent_streams
            .get_or_create(&StreamLabels {
                outcome: StreamOutcome::accepted,
            })
            .inc();
        self.agents_connected.inc();
    }

    /// An accepted agent stream ended.
    pub fn agent_disconnected(&self) {
        self.agents_connected.dec();
    }

    /// A stream was refused. `reason`: `tls`, `protocol`, `identity` or
    /// `over_capacity` (anything else counts as `rejected_other`; the label
    /// set stays bounded whatever is passed).
    pub fn stream_rejected(&self, reason: &str) {
        self.agent_streams
            .get_or_create(&StreamLabels {
                outcome: StreamOutcome::rejected(reason),
            })
            .inc();
    }

    /// One `Enroll` call ended with `outcome`.
    pub fn enrollment(&self, outcome: EnrollOutcome) {
        self.enrollments.get_or_create(&EnrollLabels { outcome }).inc();
    }

    /// A refusal beyond the audit budget: counted here instead of recorded.
    pub fn denial_unaudited(&self) {
        self.denials_unaudited.inc();
    }

    /// Fleet-wide figures read from the store (called at scrape time).
    pub fn set_fleet_stats(&self, stats: FleetStats) {
        self.hosts.set(clamp(stats.hosts));
        self.hosts_online.set(clamp(stats.hosts_online));
        self.spool_dropped_reported.set(clamp(stats.spool_dropped_total));
    }

    /// One REST request. `route` must be a route template (bounded), `status` the HTTP status.
    pub fn http_request(&self, method: &http::Method, route: &'static str, status: u16, secs: f64) {
        let method = match *method {
            http::Method::GET => "GET",
            http::Method::HEAD => "HEAD",
            http::Method::POST => "POST",
            http::Method::PUT => "PUT",
            http::Method::PATCH => "PATCH",
            http::Method::DELETE => "DELETE",
            http::Method::OPTIONS => "OPTIONS",
            _ => "other",
        };
        let status = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.http_requests
            .get_or_create(&HttpLabels { method, route, status })
            .inc();
        self.http_request_seconds
            .get_or_create(&RouteLabels { route })
            .observe(secs);
    }

    /// The registry in the Prometheus text format 0.0.4 (see [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(%error, "encoding metrics failed");
        }
        to_prometheus_text(&out)
    }
}

/// Converts prometheus-client's OpenMetrics text to the Prometheus text
/// format 0.0.4. The two differ, for what we emit, only in that OpenMetrics
/// names a counter family without its `_total` suffix, has `# UNIT` lines and
/// ends with `# EOF`.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_every_metric_with_bounded_labels() {
        let m = Metrics::new();
        m.ingest_batch(250, 0.004);
        m.agent_connected();
        m.agent_connected();
        m.agent_disconnected();
        m.stream_rejected("tls");
        m.stream_rejected("something new");
        m.set_fleet_stats(FleetStats {
            hosts: 3,
            hosts_online: 2,
            spool_dropped_total: 7,
        });
        m.http_request(&http::Method::GET, "/api/v1/hosts", 200, 0.01);
        m.http_request(&http::Method::from_bytes(b"BREW").unwrap(), "unmatched", 404, 0.001);
        let text = m.encode();
        for needle in [
            "steward_results_ingested_total 250",
            "steward_ingest_batches_total 1",
            "steward_ingest_batch_seconds_count 1",
            "steward_ingest_batch_size_sum 250",
            "steward_agents_connected 1",
            "steward_agent_streams_total{outcome=\"accepted\"} 2",
            "steward_agent_streams_total{outcome=\"rejected_tls\"} 1",
            "steward_agent_streams_total{outcome=\"rejected_other\"} 1",
            "steward_spool_dropped_reported 7",
            "steward_hosts_online 2",
            "steward_http_requests_total{method=\"GET\",route=\"/api/v1/hosts\",status=\"2xx\"} 1",
            "steward_http_requests_total{method=\"other\",route=\"unmatched\",status=\"4xx\"} 1",
            "steward_http_request_seconds_count{route=\"/api/v1/hosts\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        assert!(
            text.contains("# TYPE steward_results_ingested_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP steward_results_ingested_total Check results"),
            "{text}"
        );
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "{text}");
    }

    #[test]
    fn openmetrics_counters_get_their_total_suffix() {
        let om = "# HELP a_seconds A.\n# TYPE a_seconds histogram\n# UNIT a_seconds seconds\na_seconds_count 1\n\
                  # HELP b B b.\n# TYPE b counter\nb_total{x=\"y\"} 2\n# HELP c C.\n# TYPE c gauge\nc 3\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP a_seconds A.\n# TYPE a_seconds histogram\na_seconds_count 1\n\
             # HELP b_total B b.\n# TYPE b_total counter\nb_total{x=\"y\"} 2\n# HELP c C.\n# TYPE c gauge\nc 3\n"
        );
    }
}
