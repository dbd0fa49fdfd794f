//! Health checks: their config (`[[checks]]` tables), the probes of each kind,
//! and thresholds that turn measurements into ok / warning / critical / unknown.
//!
//! Layout:
//! - `config`: the `[[checks]]` keys ([`CheckConfig`]), validation with file/line/key errors.
//! - `thresholds`: warning/critical levels ([`Thresholds`]), higher- or lower-is-worse.
//! - `disk`, `memory`, `cpu`: local metrics read from `/proc` and `statvfs`.
//! - `systemd`, `process`: unit state through `systemctl`, processes through `/proc`.
//! - `tcp`, `http`, `certs` (`tls` and `certificate_file`): network probes and
//!   certificate expiry; TLS always uses the ring provider explicitly, never a
//!   process-wide default.
//!
//! Invariants: [`Check::run`] never panics and always returns within the
//! check's timeout (plus scheduling noise); local checks that may block
//! (`statvfs` on a hung network mount, `/proc` scans) run on the blocking pool.
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};
use steward_shared::status::{CheckResult, CheckStatus, Value};
use steward_shared::units::Duration;

use crate::config::AgentConfig;

mod certs;
mod config;
mod cpu;
mod disk;
mod http;
mod memory;
mod process;
mod systemd;
mod tcp;
mod thresholds;

pub(crate) use config::normalize_cron;
pub use config::{CheckConfig, CheckKind, Limit, validate};
pub use thresholds::{Direction, Thresholds};

/// When a check runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    Every(std::time::Duration),
    /// Six-field cron expression (seconds first), normalised from the user's five or six fields.
    Cron(String),
}

/// A ready-to-run check built from its config.
pub struct Check {
    pub name: String,
    pub kind: &'static str,
    pub schedule: Schedule,
    pub timeout: std::time::Duration,
    /// A timeout is `critical` for network probes, `unknown` for local checks.
    network: bool,
    probe: Probe,
}

/// What a probe found, before it is stamped with name, time and duration.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outcome {
    pub status: CheckStatus,
    pub values: Vec<Value>,
    pub message: String,
}

impl Outcome {
    pub fn new(status: CheckStatus, values: Vec<Value>, message: impl Into<String>) -> Self {
        Self {
            status,
            values,
            message: message.into(),
        }
    }
    pub fn unknown(message: impl Into<String>) -> Self {
        Self::new(CheckStatus::Unknown, Vec::new(), message)
    }
    pub fn critical(message: impl Into<String>) -> Self {
        Self::new(CheckStatus::Critical, Vec::new(), message)
    }
}

/// The probe of each kind, with the state it keeps between runs.
pub(crate) enum Probe {
    Disk(disk::DiskProbe),
    Memory(memory::MemoryProbe),
    Cpu(cpu::CpuProbe),
    Systemd(systemd::SystemdProbe),
    Process(process::ProcessProbe),
    Tcp(tcp::TcpProbe),
    Http(http::HttpProbe),
    Tls(certs::TlsProbe),
    CertificateFile(certs::CertFileProbe),
    /// A check whose config did not resolve (only reachable when `build` is
    /// given an unvalidated config): always `unknown` with the reason.
    Invalid(String),
    #[cfg(test)]
    Test(test_probe::TestProbe),
}

impl Probe {
    async fn run(&self) -> Outcome {
        match self {
            Probe::Disk(p) => p.run().await,
            Probe::Memory(p) => p.run(),
            Probe::Cpu(p) => p.run(),
            Probe::Systemd(p) => p.run().await,
            Probe::Process(p) => p.run().await,
            Probe::Tcp(p) => p.run().await,
            Probe::Http(p) => p.run().await,
            Probe::Tls(p) => p.run().await,
            Probe::CertificateFile(p) => p.run(),
            Probe::Invalid(reason) => Outcome::unknown(reason.clone()),
            #[cfg(test)]
            Probe::Test(p) => p.run().await,
        }
    }
}

impl Check {
    /// Runs the check once, within its timeout. Never panics: failures become
    /// `unknown` or `critical` results with a message.
    pub async fn run(&self) -> CheckResult {
        let observed_at_ms = steward_shared::now_ms();
        let started = Instant::now();
        let outcome = match tokio::time::timeout(self.timeout, self.probe.run()).await {
            Ok(outcome) => outcome,
            Err(_) => {
                let status = if self.network {
                    CheckStatus::Critical
                } else {
                    CheckStatus::Unknown
                };
                Outcome::new(
                    status,
                    Vec::new(),
                    format!("timed out after {}", Duration(self.timeout)),
                )
            }
        };
        self.result(outcome, observed_at_ms, started)
    }

    fn result(&self, outcome: Outcome, observed_at_ms: i64, started: Instant) -> CheckResult {
        CheckResult {
            name: self.name.clone(),
            kind: self.kind.to_string(),
            status: outcome.status,
            values: outcome.values,
            message: outcome.message,
            observed_at_ms,
            duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        }
    }

    /// An `unknown` result for a run that could not happen at all.
    pub(crate) fn failed(&self, message: impl Into<String>) -> CheckResult {
        self.result(Outcome::unknown(message), steward_shared::now_ms(), Instant::now())
    }

    #[cfg(test)]
    pub(crate) fn for_test(name: &str, schedule: Schedule, timeout: StdDuration, probe: test_probe::TestProbe) -> Self {
        Check {
            name: name.into(),
            kind: "test",
            schedule,
            timeout,
            network: false,
            probe: Probe::Test(probe),
        }
    }
}

/// Builds the runnable checks from a validated config, in config order.
pub fn build(cfg: &AgentConfig) -> Vec<Arc<Check>> {
    cfg.checks
        .iter()
        .map(|c| {
            let check = match config::resolve(c, &cfg.agent) {
                Ok(r) => Check {
                    name: c.name.clone(),
                    kind: c.kind.as_str(),
                    schedule: r.schedule,
                    timeout: r.timeout,
                    network: c.kind.is_network(),
                    probe: r.probe,
                },
                Err(e) => {
                    tracing::error!(check = %c.name, key = e.key, error = %e.message, "invalid check config");
                    Check {
                        name: c.name.clone(),
                        kind: c.kind.as_str(),
                        schedule: Schedule::Every(cfg.agent.default_interval.as_std().max(StdDuration::from_secs(1))),
                        timeout: StdDuration::from_secs(1),
                        network: false,
                        probe: Probe::Invalid(format!("invalid config: `{}`: {}", e.key, e.message)),
                    }
                }
            };
            Arc::new(check)
        })
        .collect()
}

/// Runs every configured check once, concurrently, each within its timeout;
/// the results come back in config order (`steward-agent collect --once`).
pub async fn collect_once(cfg: &AgentConfig) -> Vec<CheckResult> {
    let checks = build(cfg);
    let tasks: Vec<_> = checks
        .iter()
        .map(|check| {
            let check = Arc::clone(check);
            tokio::spawn(async move { check.run().await })
        })
        .collect();
    let mut results = Vec::with_capacity(checks.len());
    for (check, task) in checks.iter().zip(tasks) {
        results.push(match task.await {
            Ok(result) => result,
            Err(e) => check.failed(format!("check task failed: {e}")),
        });
    }
    results
}

/// `1.5 GiB`, `512 MiB`, `12 KiB`, `100 B`.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    if unit == "B" {
        format!("{n} B")
    } else {
        format!("{v:.1} {unit}")
    }
}

/// A status word and the threshold it reached, for messages: ` (critical: >= 90)`.
pub(crate) fn verdict(status: CheckStatus, t: &Thresholds) -> String {
    match t.describe(status) {
        Some(limit) => format!(" ({status}: {limit})"),
        None => String::new(),
    }
}

/// The error and its sources, `outer: inner: innermost`.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
pub(crate) mod test_probe {
    //! A probe for scheduler tests: sleeps, counts runs and overlapping runs.
    use super::Outcome;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use steward_shared::status::CheckStatus;

    #[derive(Default, Clone)]
    pub struct Counters {
        pub runs: Arc<AtomicUsize>,
        pub active: Arc<AtomicUsize>,
        pub max_active: Arc<AtomicUsize>,
        /// Notified at the start of every run.
        pub started: Arc<tokio::sync::Notify>,
    }

    pub struct TestProbe {
        pub delay: Duration,
        pub counters: Counters,
    }

    impl TestProbe {
        pub async fn run(&self) -> Outcome {
            let c = &self.counters;
            let now_active = c.active.fetch_add(1, Ordering::SeqCst) + 1;
            c.max_active.fetch_max(now_active, Ordering::SeqCst);
            let n = c.runs.fetch_add(1, Ordering::SeqCst) + 1;
            c.started.notify_one();
            tokio::time::sleep(self.delay).await;
            c.active.fetch_sub(1, Ordering::SeqCst);
            Outcome::new(CheckStatus::Ok, Vec::new(), format!("run {n}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(100), "100 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(64 << 20), "64.0 MiB");
    }

    #[tokio::test]
    async fn collect_once_keeps_config_order_and_enforces_timeouts() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let src = format!(
            "[[checks]]\nname = \"mem\"\nkind = \"memory\"\n\n\
             [[checks]]\nname = \"load\"\nkind = \"cpu\"\n\n\
             [[checks]]\nname = \"cert\"\nkind = \"certificate_file\"\npath = {missing:?}\n"
        );
        let cfg = AgentConfig::parse("agent.toml", &src).unwrap();
        let results = collect_once(&cfg).await;
        let names: Vec<&str> = results.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["mem", "load", "cert"]);
        assert_eq!(results[0].kind, "memory");
        assert!(
            results[0].values.iter().any(|v| v.name == "used_percent"),
            "{:?}",
            results[0]
        );
        assert_eq!(results[2].status, CheckStatus::Critical, "{:?}", results[2]);
        assert!(results.iter().all(|r| r.observed_at_ms > 0));
    }

    #[tokio::test]
    async fn a_slow_local_check_times_out_as_unknown() {
        let probe = test_probe::TestProbe {
            delay: StdDuration::from_secs(60),
            counters: Default::default(),
        };
        let check = Check::for_test(
            "slow",
            Schedule::Every(StdDuration::from_secs(1)),
            StdDuration::from_millis(20),
            probe,
        );
        let r = check.run().await;
        assert_eq!(r.status, CheckStatus::Unknown);
        assert_eq!(r.message, "timed out after 20ms");
    }
}
