//! The `[[checks]]` tables of `agent.toml`: their keys, their validation, and
//! their resolution into runnable probes.
//!
//! Every check is one flat table with `deny_unknown_fields`, so that `toml`
//! places unknown keys, bad kinds and wrong types on their own line. Which keys
//! a kind accepts, which it requires and how thresholds are ordered is checked
//! afterwards by [`resolve`], whose errors name the key so that
//! [`ConfigError::at`] can find its line.
use serde::{Deserialize, Deserializer};
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration as StdDuration;
use steward_shared::config::ConfigError;
use steward_shared::units::Duration;

use super::thresholds::{Direction, Thresholds, trim_float};
use super::{Probe, Schedule, certs, cpu, disk, http, memory, process, systemd, tcp};
use crate::config::{AgentConfig, AgentSection};

/// The kind of a check: what it measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    Disk,
    Memory,
    Cpu,
    Systemd,
    Process,
    Tcp,
    Http,
    Tls,
    CertificateFile,
}

impl CheckKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disk => "disk",
            Self::Memory => "memory",
            Self::Cpu => "cpu",
            Self::Systemd => "systemd",
            Self::Process => "process",
            Self::Tcp => "tcp",
            Self::Http => "http",
            Self::Tls => "tls",
            Self::CertificateFile => "certificate_file",
        }
    }

    /// Network probes report a timeout as `critical` (the service did not
    /// answer in time); local checks as `unknown` (the agent could not measure).
    pub fn is_network(self) -> bool {
        matches!(self, Self::Tcp | Self::Http | Self::Tls)
    }
}

impl fmt::Display for CheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A threshold as written: a number (percent, load, days) or a duration
/// (latency: `"250ms"`; certificate kinds also accept `"30d"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    Number(f64),
    Duration(Duration),
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Limit;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number, or a duration such as \"500ms\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Limit, E> {
                Ok(Limit::Number(v as f64))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Limit, E> {
                Ok(Limit::Number(v as f64))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Limit, E> {
                Ok(Limit::Number(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Limit, E> {
                v.parse().map(Limit::Duration).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// One `[[checks]]` table of `agent.toml`.
///
/// The common keys are `name`, `kind`, `interval` or `cron`, and `timeout`;
/// the others apply to the kinds named in their documentation, and setting
/// one on another kind is an error.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    /// Unique name of the check on this agent (1–128 characters). Results carry it.
    pub name: String,
    /// What to check: `disk`, `memory`, `cpu`, `systemd`, `process`, `tcp`,
    /// `http`, `tls` or `certificate_file`.
    pub kind: CheckKind,
    /// Run every so often (`"30s"`, at least `1s`). Default `agent.default_interval`.
    /// The first run starts right away, with a small random delay.
    pub interval: Option<Duration>,
    /// Run on a cron schedule instead of an interval, in UTC: five fields
    /// (`"*/5 * * * *"`, minute first) or six with seconds first (`"0 */5 * * * *"`).
    /// When both day-of-month and day-of-week are restricted, both must match.
    pub cron: Option<String>,
    /// Longest a run may take (`"5s"`). Default `agent.default_timeout`. A run
    /// that times out is `critical` for `tcp`, `http` and `tls`, `unknown` for the rest.
    pub timeout: Option<Duration>,
    /// Warning threshold of the kind's main metric: used % (`disk`, `memory`,
    /// defaults 80 and 90 for disk, 90 for memory), 1-minute load per core
    /// (`cpu`, default 2), connect or response latency as a duration (`tcp`,
    /// `http`, e.g. `"500ms"`, default none), days until expiry (`tls`,
    /// `certificate_file`, default 30; a number of days or a duration like `"30d"`).
    pub warning: Option<Limit>,
    /// Critical threshold of the same metric (defaults: disk 90, memory 95,
    /// cpu 4, tcp/http none, tls/certificate_file 7 days).
    pub critical: Option<Limit>,
    /// `disk`: warning threshold of inodes used %, default none.
    pub inodes_warning: Option<f64>,
    /// `disk`: critical threshold of inodes used %, default none.
    pub inodes_critical: Option<f64>,
    /// `memory`: warning threshold of swap used %, default none.
    pub swap_warning: Option<f64>,
    /// `memory`: critical threshold of swap used %, default none.
    pub swap_critical: Option<f64>,
    /// `cpu`: warning threshold of CPU busy % since the previous run, default none.
    pub busy_warning: Option<f64>,
    /// `cpu`: critical threshold of CPU busy % since the previous run, default none.
    pub busy_critical: Option<f64>,
    /// `disk`: the one path to measure (the filesystem holding it). Default:
    /// every real filesystem (pseudo filesystems such as tmpfs, proc, overlay
    /// and squashfs are skipped).
    pub mount: Option<PathBuf>,
    /// `systemd`: the unit, e.g. `"nginx.service"`. Required.
    pub unit: Option<String>,
    /// `systemd`: the ActiveState that is `ok`: `"active"` (default) or `"inactive"`.
    pub expected_state: Option<String>,
    /// `process`: a process name, matched against `/proc/PID/comm` or the
    /// basename of the command. One of `process_name` and `pidfile` is required.
    pub process_name: Option<String>,
    /// `process`: a pid file; the process it names must be alive.
    pub pidfile: Option<PathBuf>,
    /// `process`: fewest matching processes that is `ok` (default 1).
    pub min: Option<u32>,
    /// `process`: most matching processes that is `ok` (default unlimited).
    pub max: Option<u32>,
    /// `tcp`, `tls`: `host:port` to connect to (`[v6addr]:port` for IPv6). Required.
    pub address: Option<String>,
    /// `tls`: the name to send as SNI and to verify. Default: the host of `address`.
    pub server_name: Option<String>,
    /// `http`: extra CA certificates (PEM) trusted besides the system roots.
    /// `tls`: the CA certificates (PEM) to verify against instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// `http`: the URL to GET (`http://` or `https://`). Required.
    pub url: Option<String>,
    /// `http`: status codes that are `ok`, e.g. `[200, 204]`. Default: any of 200–399.
    pub expect_status: Option<Vec<u16>>,
    /// `http`: text the body must contain (only the first 1 MiB is read).
    pub body_contains: Option<String>,
    /// `http`: verify the server's certificate (default `true`).
    pub tls_verify: Option<bool>,
    /// `http`: follow up to 5 redirects to the same host and port (default
    /// `true`); a redirect elsewhere is not followed and its 3xx status is judged.
    pub follow_redirects: Option<bool>,
    /// `certificate_file`: the PEM file (a certificate or a chain). Required.
    pub path: Option<PathBuf>,
}

impl CheckConfig {
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A config mistake in one check: the key (relative to the check) and why.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Invalid {
    pub key: &'static str,
    pub message: String,
}

impl Invalid {
    fn new(key: &'static str, message: impl Into<String>) -> Self {
        Self {
            key,
            message: message.into(),
        }
    }

    fn into_config_error(self, file: &str, src: &str, index: usize) -> ConfigError {
        let path = if self.key.is_empty() {
            format!("checks[{index}]")
        } else {
            format!("checks[{index}].{}", self.key)
        };
        ConfigError::at(file, src, &path, self.message)
    }
}

/// A check resolved from its config, ready to run.
pub(crate) struct Resolved {
    pub schedule: Schedule,
    pub timeout: StdDuration,
    pub probe: Probe,
}

/// Validates every check: names unique, keys that apply to the kind, required
/// keys present, schedules and thresholds well formed and ordered.
pub fn validate(checks: &[CheckConfig], cfg: &AgentConfig, file: &str, src: &str) -> Result<(), ConfigError> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, check) in checks.iter().enumerate() {
        if let Some(first) = seen.get(check.name.as_str()) {
            return Err(ConfigError::at(
                file,
                src,
                &format!("checks[{i}].name"),
                format!(
                    "duplicate check name {:?} (already used by checks[{first}])",
                    check.name
                ),
            ));
        }
        seen.insert(&check.name, i);
        resolve(check, &cfg.agent).map_err(|e| e.into_config_error(file, src, i))?;
    }
    Ok(())
}

/// Turns one check's config into its schedule, timeout and probe.
pub(crate) fn resolve(c: &CheckConfig, agent: &AgentSection) -> Result<Resolved, Invalid> {
    check_name(&c.name)?;
    check_applicable(c)?;
    let schedule = match (&c.interval, &c.cron) {
        (Some(_), Some(_)) => {
            return Err(Invalid::new("cron", "set either `interval` or `cron`, not both"));
        }
        (Some(every), None) => {
            if every.as_std() < StdDuration::from_secs(1) {
                return Err(Invalid::new("interval", "must be at least 1s"));
            }
            Schedule::Every(every.as_std())
        }
        (None, Some(expr)) => Schedule::Cron(normalize_cron(expr).map_err(|m| Invalid::new("cron", m))?),
        (None, None) => Schedule::Every(agent.default_interval.as_std()),
    };
    let timeout = match c.timeout {
        Some(t) if t.as_std().is_zero() => {
            return Err(Invalid::new("timeout", "must be greater than 0s"));
        }
        Some(t) => t.as_std(),
        None if agent.default_timeout.as_std().is_zero() => {
            return Err(Invalid::new(
                "timeout",
                "agent.default_timeout is 0s: set a timeout here or there",
            ));
        }
        None => agent.default_timeout.as_std(),
    };
    let probe = match c.kind {
        CheckKind::Disk => Probe::Disk(disk::DiskProbe::new(
            match &c.mount {
                Some(m) if !m.is_absolute() => {
                    return Err(Invalid::new("mount", "must be an absolute path"));
                }
                m => m.clone(),
            },
            thresholds(c, Metric::PERCENT, Some(80.0), Some(90.0))?,
            pair(
                c.inodes_warning,
                c.inodes_critical,
                ("inodes_warning", "inodes_critical"),
                Metric::PERCENT,
            )?,
        )),
        CheckKind::Memory => Probe::Memory(memory::MemoryProbe {
            used: thresholds(c, Metric::PERCENT, Some(90.0), Some(95.0))?,
            swap: pair(
                c.swap_warning,
                c.swap_critical,
                ("swap_warning", "swap_critical"),
                Metric::PERCENT,
            )?,
        }),
        CheckKind::Cpu => Probe::Cpu(cpu::CpuProbe::new(
            thresholds(c, Metric::LOAD, Some(2.0), Some(4.0))?,
            pair(
                c.busy_warning,
                c.busy_critical,
                ("busy_warning", "busy_critical"),
                Metric::PERCENT,
            )?,
        )),
        CheckKind::Systemd => {
            let unit = required(&c.unit, "unit")?;
            systemd::validate_unit_name(unit).map_err(|m| Invalid::new("unit", m))?;
            let expected = c.expected_state.clone().unwrap_or_else(|| "active".into());
            if !matches!(expected.as_str(), "active" | "inactive") {
                return Err(Invalid::new(
                    "expected_state",
                    format!("{expected:?} must be \"active\" or \"inactive\""),
                ));
            }
            Probe::Systemd(systemd::SystemdProbe::new(unit.clone(), expected))
        }
        CheckKind::Process => {
            let target = match (&c.process_name, &c.pidfile) {
                (Some(_), Some(_)) => {
                    return Err(Invalid::new(
                        "pidfile",
                        "set either `process_name` or `pidfile`, not both",
                    ));
                }
                (None, None) => {
                    return Err(Invalid::new("process_name", "missing: set `process_name` or `pidfile`"));
                }
                (Some(name), None) => {
                    if name.is_empty() || name.contains('/') || name.contains('\0') {
                        return Err(Invalid::new("process_name", "must be a non-empty name without '/'"));
                    }
                    process::Target::Name(name.clone())
                }
                (None, Some(path)) => process::Target::Pidfile(path.clone()),
            };
            let min = c.min.unwrap_or(1);
            if let Some(max) = c.max
                && max < min
            {
                let key = if c.min.is_some() { "min" } else { "max" };
                return Err(Invalid::new(key, format!("min ({min}) must not be above max ({max})")));
            }
            Probe::Process(process::ProcessProbe {
                target,
                min,
                max: c.max,
            })
        }
        CheckKind::Tcp => {
            let address = required(&c.address, "address")?;
            split_host_port(address).map_err(|m| Invalid::new("address", m))?;
            Probe::Tcp(tcp::TcpProbe {
                address: address.clone(),
                latency: thresholds(c, Metric::LATENCY, None, None)?,
            })
        }
        CheckKind::Http => {
            let url = required(&c.url, "url")?;
            let parsed =
                reqwest::Url::parse(url).map_err(|e| Invalid::new("url", format!("{url:?} is not a URL: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none_or(str::is_empty) {
                return Err(Invalid::new(
                    "url",
                    format!("{url:?} must be an http:// or https:// URL with a host"),
                ));
            }
            if let Some(codes) = &c.expect_status {
                if codes.is_empty() {
                    return Err(Invalid::new("expect_status", "must list at least one status code"));
                }
                if let Some(bad) = codes.iter().find(|c| !(100..=599).contains(*c)) {
                    return Err(Invalid::new(
                        "expect_status",
                        format!("{bad} is not an HTTP status code (100-599)"),
                    ));
                }
            }
            if c.body_contains.as_deref() == Some("") {
                return Err(Invalid::new("body_contains", "must not be empty"));
            }
            let tls_verify = c.tls_verify.unwrap_or(true);
            if !tls_verify && c.ca_file.is_some() {
                return Err(Invalid::new("ca_file", "has no effect with tls_verify = false"));
            }
            Probe::Http(http::HttpProbe::new(http::HttpSpec {
                url: parsed,
                expect_status: c.expect_status.clone(),
                body_contains: c.body_contains.clone(),
                tls_verify,
                ca_file: c.ca_file.clone(),
                follow_redirects: c.follow_redirects.unwrap_or(true),
                latency: thresholds(c, Metric::LATENCY, None, None)?,
            }))
        }
        CheckKind::Tls => {
            let address = required(&c.address, "address")?;
            let (host, _) = split_host_port(address).map_err(|m| Invalid::new("address", m))?;
            let (key, name) = match &c.server_name {
                Some(n) => ("server_name", n.clone()),
                None => ("address", host),
            };
            let server_name = rustls_pki_types::ServerName::try_from(name.clone())
                .map_err(|_| Invalid::new(key, format!("{name:?} is not a valid TLS server name")))?;
            Probe::Tls(certs::TlsProbe::new(
                address.clone(),
                server_name,
                c.ca_file.clone(),
                thresholds(c, Metric::DAYS, Some(30.0), Some(7.0))?,
            ))
        }
        CheckKind::CertificateFile => Probe::CertificateFile(certs::CertFileProbe {
            path: required(&c.path, "path")?.clone(),
            days: thresholds(c, Metric::DAYS, Some(30.0), Some(7.0))?,
        }),
    };
    Ok(Resolved {
        schedule,
        timeout,
        probe,
    })
}

fn required<'a, T>(value: &'a Option<T>, key: &'static str) -> Result<&'a T, Invalid> {
    value
        .as_ref()
        .ok_or_else(|| Invalid::new(key, format!("missing: `{key}` is required")))
}

fn check_name(name: &str) -> Result<(), Invalid> {
    if name.trim().is_empty() {
        return Err(Invalid::new("name", "must not be empty"));
    }
    if name.chars().count() > 128 || name.chars().any(char::is_control) {
        return Err(Invalid::new(
            "name",
            "must be at most 128 characters, without control characters",
        ));
    }
    Ok(())
}

/// Refuses keys that the check's kind does not use.
fn check_applicable(c: &CheckConfig) -> Result<(), Invalid> {
    use CheckKind::*;
    let thresholded: &[CheckKind] = &[Disk, Memory, Cpu, Tcp, Http, Tls, CertificateFile];
    let keys: [(&'static str, bool, &[CheckKind]); 24] = [
        ("warning", c.warning.is_some(), thresholded),
        ("critical", c.critical.is_some(), thresholded),
        ("inodes_warning", c.inodes_warning.is_some(), &[Disk]),
        ("inodes_critical", c.inodes_critical.is_some(), &[Disk]),
        ("swap_warning", c.swap_warning.is_some(), &[Memory]),
        ("swap_critical", c.swap_critical.is_some(), &[Memory]),
        ("busy_warning", c.busy_warning.is_some(), &[Cpu]),
        ("busy_critical", c.busy_critical.is_some(), &[Cpu]),
        ("mount", c.mount.is_some(), &[Disk]),
        ("unit", c.unit.is_some(), &[Systemd]),
        ("expected_state", c.expected_state.is_some(), &[Systemd]),
        ("process_name", c.process_name.is_some(), &[Process]),
        ("pidfile", c.pidfile.is_some(), &[Process]),
        ("min", c.min.is_some(), &[Process]),
        ("max", c.max.is_some(), &[Process]),
        ("address", c.address.is_some(), &[Tcp, Tls]),
        ("server_name", c.server_name.is_some(), &[Tls]),
        ("ca_file", c.ca_file.is_some(), &[Http, Tls]),
        ("url", c.url.is_some(), &[Http]),
        ("expect_status", c.expect_status.is_some(), &[Http]),
        ("body_contains", c.body_contains.is_some(), &[Http]),
        ("tls_verify", c.tls_verify.is_some(), &[Http]),
        ("follow_redirects", c.follow_redirects.is_some(), &[Http]),
        ("path", c.path.is_some(), &[CertificateFile]),
    ];
    for (key, set, kinds) in keys {
        if set && !kinds.contains(&c.kind) {
            let users: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
            return Err(Invalid::new(
                key,
                format!(
                    "`{key}` does not apply to kind `{}` (it is used by: {})",
                    c.kind,
                    users.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// How a metric's thresholds are written and bounded.
#[derive(Clone, Copy)]
struct Metric {
    form: Form,
    direction: Direction,
    max: Option<f64>,
}

#[derive(Clone, Copy, PartialEq)]
enum Form {
    /// A plain number.
    Number,
    /// A duration, compared in milliseconds.
    Latency,
    /// A number of days, or a duration converted to days.
    Days,
}

impl Metric {
    const PERCENT: Metric = Metric {
        form: Form::Number,
        direction: Direction::HigherIsWorse,
        max: Some(100.0),
    };
    const LOAD: Metric = Metric {
        form: Form::Number,
        direction: Direction::HigherIsWorse,
        max: None,
    };
    const LATENCY: Metric = Metric {
        form: Form::Latency,
        direction: Direction::HigherIsWorse,
        max: None,
    };
    const DAYS: Metric = Metric {
        form: Form::Days,
        direction: Direction::LowerIsWorse,
        max: None,
    };
}

/// The kind's main `warning`/`critical` pair.
fn thresholds(c: &CheckConfig, m: Metric, dw: Option<f64>, dc: Option<f64>) -> Result<Thresholds, Invalid> {
    let w = limit(c.warning, "warning", m.form)?;
    let cr = limit(c.critical, "critical", m.form)?;
    ordered(("warning", w, dw), ("critical", cr, dc), m)
}

/// A secondary pair of plain-number thresholds without defaults.
fn pair(w: Option<f64>, c: Option<f64>, keys: (&'static str, &'static str), m: Metric) -> Result<Thresholds, Invalid> {
    ordered((keys.0, w, None), (keys.1, c, None), m)
}

fn limit(value: Option<Limit>, key: &'static str, form: Form) -> Result<Option<f64>, Invalid> {
    match (value, form) {
        (None, _) => Ok(None),
        (Some(Limit::Number(n)), Form::Number | Form::Days) => Ok(Some(n)),
        (Some(Limit::Duration(d)), Form::Latency) => Ok(Some(d.as_std().as_secs_f64() * 1000.0)),
        (Some(Limit::Duration(d)), Form::Days) => Ok(Some(d.as_std().as_secs_f64() / 86_400.0)),
        (Some(Limit::Duration(d)), Form::Number) => Err(Invalid::new(
            key,
            format!("expects a number for this kind, not the duration \"{d}\""),
        )),
        (Some(Limit::Number(n)), Form::Latency) => Err(Invalid::new(
            key,
            format!(
                "expects a duration for this kind, e.g. \"{}ms\", not a bare number",
                trim_float(n)
            ),
        )),
    }
}

/// Checks range and order of a threshold pair; `default` fills in a level
/// the user did not set.
fn ordered(
    warning: (&'static str, Option<f64>, Option<f64>),
    critical: (&'static str, Option<f64>, Option<f64>),
    m: Metric,
) -> Result<Thresholds, Invalid> {
    for (key, value, _) in [warning, critical] {
        let Some(v) = value else { continue };
        if !v.is_finite() || v < 0.0 {
            return Err(Invalid::new(
                key,
                format!("{} must be a finite number, not negative", trim_float(v)),
            ));
        }
        if let Some(max) = m.max
            && v > max
        {
            let message = format!("{} must be between 0 and {}", trim_float(v), trim_float(max));
            return Err(Invalid::new(key, message));
        }
    }
    let (wk, wv, wd) = warning;
    let (ck, cv, cd) = critical;
    let w = wv.or(wd);
    let c = cv.or(cd);
    if let (Some(w), Some(c)) = (w, c) {
        let (bad, relation) = match m.direction {
            Direction::HigherIsWorse => (w > c, "above"),
            Direction::LowerIsWorse => (w < c, "below"),
        };
        if bad {
            let default = |set: Option<f64>| if set.is_some() { "" } else { ", the default" };
            let key = if wv.is_some() { wk } else { ck };
            let why = match m.direction {
                Direction::HigherIsWorse => "higher is worse",
                Direction::LowerIsWorse => "lower is worse",
            };
            return Err(Invalid::new(
                key,
                format!(
                    "{wk} ({}{}) must not be {relation} {ck} ({}{}) for this metric ({why})",
                    trim_float(w),
                    default(wv),
                    trim_float(c),
                    default(cv)
                ),
            ));
        }
    }
    Ok(Thresholds {
        warning: w,
        critical: c,
        direction: m.direction,
    })
}

/// Normalises a five-field cron expression (minute first) or a six-field one
/// (seconds first) to tokio-cron-scheduler's six-field form, and checks that
/// it parses there.
pub(crate) fn normalize_cron(expr: &str) -> Result<String, String> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let six = match fields.len() {
        5 => format!("0 {}", fields.join(" ")),
        6 => fields.join(" "),
        n => {
            return Err(format!(
                "{expr:?} has {n} fields: expected 5 (minute hour day-of-month month day-of-week) \
                 or 6 (seconds first)"
            ));
        }
    };
    let mut job = tokio_cron_scheduler::Job::new_async(six.as_str(), |_, _| Box::pin(async {}))
        .map_err(|_| format!("{expr:?} is not a valid cron expression"))?;
    match job.job_data() {
        Ok(data) if data.next_tick != 0 => Ok(six),
        _ => Err(format!("{expr:?} never fires")),
    }
}

/// Splits `host:port` or `[v6]:port`.
pub(crate) fn split_host_port(address: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        rest.split_once("]:")
            .ok_or_else(|| format!("{address:?} must be [IPv6]:PORT"))?
    } else {
        let (h, p) = address
            .rsplit_once(':')
            .ok_or_else(|| format!("{address:?} must be HOST:PORT"))?;
        if h.contains(':') {
            return Err(format!("{address:?}: write IPv6 addresses in brackets, e.g. [::1]:443"));
        }
        (h, p)
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{address:?} has no valid host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok((host.to_string(), p)),
        _ => Err(format!("{address:?} has no valid port (1-65535)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse("agent.toml", src)
    }

    fn err(src: &str) -> ConfigError {
        match parse(src) {
            Ok(_) => panic!("expected an error for:\n{src}"),
            Err(e) => e,
        }
    }

    const GOOD: &str = r#"
[agent]
default_interval = "20s"

[[checks]]
name = "root"
kind = "disk"
mount = "/"
warning = 85
inodes_critical = 95

[[checks]]
name = "all-disks"
kind = "disk"
cron = "*/5 * * * *"

[[checks]]
name = "mem"
kind = "memory"
swap_warning = 50
timeout = "2s"

[[checks]]
name = "load"
kind = "cpu"
busy_critical = 99.5

[[checks]]
name = "nginx"
kind = "systemd"
unit = "nginx.service"

[[checks]]
name = "sshd"
kind = "process"
process_name = "sshd"
max = 50

[[checks]]
name = "db-port"
kind = "tcp"
address = "127.0.0.1:5432"
warning = "100ms"
critical = "1s"

[[checks]]
name = "site"
kind = "http"
url = "https://example.invalid/health"
expect_status = [200, 204]
body_contains = "ok"
interval = "1m"

[[checks]]
name = "site-cert"
kind = "tls"
address = "[::1]:443"
server_name = "example.invalid"
warning = "21d"
critical = 3

[[checks]]
name = "cert"
kind = "certificate_file"
path = "/etc/ssl/site.pem"
"#;

    #[test]
    fn every_kind_parses_with_defaults_applied() {
        let cfg = parse(GOOD).unwrap();
        assert_eq!(cfg.checks.len(), 10);
        let resolved: Vec<Resolved> = cfg.checks.iter().map(|c| resolve(c, &cfg.agent).unwrap()).collect();
        assert_eq!(resolved[0].schedule, Schedule::Every(StdDuration::from_secs(20)));
        assert_eq!(resolved[1].schedule, Schedule::Cron("0 */5 * * * *".into()));
        assert_eq!(resolved[2].timeout, StdDuration::from_secs(2));
        assert_eq!(resolved[0].timeout, StdDuration::from_secs(10));
        assert_eq!(resolved[7].schedule, Schedule::Every(StdDuration::from_secs(60)));
        match &resolved[0].probe {
            Probe::Disk(d) => {
                assert_eq!(d.used.warning, Some(85.0));
                assert_eq!(d.used.critical, Some(90.0), "default critical kept");
                assert_eq!(d.inodes.critical, Some(95.0));
            }
            _ => panic!("not a disk probe"),
        }
        match &resolved[6].probe {
            Probe::Tcp(t) => {
                assert_eq!(t.latency.warning, Some(100.0));
                assert_eq!(t.latency.critical, Some(1000.0));
            }
            _ => panic!("not a tcp probe"),
        }
        match &resolved[8].probe {
            Probe::Tls(t) => {
                assert_eq!(t.days.warning, Some(21.0));
                assert_eq!(t.days.critical, Some(3.0));
            }
            _ => panic!("not a tls probe"),
        }
    }

    #[test]
    fn unknown_key_inside_a_check_names_line_and_key() {
        let src = "[[checks]]\nname = \"root\"\nkind = \"disk\"\nmountpoint = \"/\"\n";
        let e = err(src);
        assert_eq!(e.line, Some(4), "{e}");
        assert!(e.key.as_deref().unwrap_or("").starts_with("checks[0]"), "{e}");
        assert!(e.message.contains("mountpoint"), "{e}");
    }

    #[test]
    fn key_of_another_kind_names_line_and_key() {
        let src =
            "[[checks]]\nname = \"a\"\nkind = \"disk\"\n\n[[checks]]\nname = \"m\"\nkind = \"memory\"\nmount = \"/\"\n";
        let e = err(src);
        assert_eq!(e.line, Some(8), "{e}");
        assert_eq!(e.key.as_deref(), Some("checks[1].mount"), "{e}");
        assert!(e.message.contains("does not apply to kind `memory`"), "{e}");
    }

    #[test]
    fn bad_kind_names_line_and_key() {
        let src = "[[checks]]\nname = \"root\"\nkind = \"dsk\"\n";
        let e = err(src);
        assert_eq!(e.line, Some(3), "{e}");
        assert_eq!(e.key.as_deref(), Some("checks[0].kind"), "{e}");
        assert!(e.message.contains("dsk"), "{e}");
    }

    #[test]
    fn missing_required_fields_name_line_and_key() {
        // `kind` missing: serde reports it on the table.
        let e = err("[agent]\n\n[[checks]]\nname = \"x\"\n");
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("kind"), "{e}");
        assert!(e.key.as_deref().unwrap_or("").starts_with("checks[0]"), "{e}");

        // A kind's required key missing: placed on the check's table.
        let src = "[[checks]]\nname = \"a\"\nkind = \"disk\"\n\n[[checks]]\nname = \"web\"\nkind = \"http\"\n";
        let e = err(src);
        assert_eq!(e.line, Some(5), "{e}");
        assert_eq!(e.key.as_deref(), Some("checks[1].url"), "{e}");
        assert!(e.message.contains("required"), "{e}");
    }

    #[test]
    fn bad_threshold_order_names_line_and_key() {
        let src = "[[checks]]\nname = \"root\"\nkind = \"disk\"\nwarning = 95\ncritical = 90\n";
        let e = err(src);
        assert_eq!(e.line, Some(4), "{e}");
        assert_eq!(e.key.as_deref(), Some("checks[0].warning"), "{e}");
        assert!(e.message.contains("must not be above"), "{e}");

        // Lower is worse: the warning level must be at or above the critical one.
        let src =
            "[[checks]]\nname = \"c\"\nkind = \"certificate_file\"\npath = \"/x.pem\"\nwarning = 5\ncritical = 10\n";
        let e = err(src);
        assert_eq!(e.line, Some(5), "{e}");
        assert_eq!(e.key.as_deref(), Some("checks[0].warning"), "{e}");
        assert!(e.message.contains("must not be below"), "{e}");

        // Only critical set, below the default warning: blamed on critical.
        let src = "[[checks]]\nname = \"root\"\nkind = \"disk\"\ncritical = 70\n";
        let e = err(src);
        assert_eq!(e.line, Some(4), "{e}");
        assert_eq!(e.key.as_deref(), Some("checks[0].critical"), "{e}");
        assert!(e.message.contains("the default"), "{e}");
    }

    #[test]
    fn threshold_ranges_and_forms_are_checked() {
        let cases = [
            (
                "kind = \"disk\"\nwarning = 101",
                "checks[0].warning",
                "between 0 and 100",
                4,
            ),
            (
                "kind = \"memory\"\nswap_critical = -1",
                "checks[0].swap_critical",
                "not negative",
                4,
            ),
            (
                "kind = \"disk\"\nwarning = \"5s\"",
                "checks[0].warning",
                "expects a number",
                4,
            ),
            (
                "kind = \"tcp\"\naddress = \"h:1\"\nwarning = 100",
                "checks[0].warning",
                "expects a duration",
                5,
            ),
            (
                "kind = \"tcp\"\naddress = \"h:1\"\ncritical = \"1s\"\nwarning = \"2s\"",
                "checks[0].warning",
                "above",
                6,
            ),
        ];
        for (body, key, msg, line) in cases {
            let src = format!("[[checks]]\nname = \"x\"\n{body}\n");
            let e = err(&src);
            assert_eq!(e.key.as_deref(), Some(key), "{src}: {e}");
            assert!(e.message.contains(msg), "{src}: {e}");
            assert_eq!(e.line, Some(line), "{src}: {e}");
        }
    }

    #[test]
    fn schedule_mistakes_are_refused() {
        let e = err("[[checks]]\nname = \"x\"\nkind = \"cpu\"\ninterval = \"10s\"\ncron = \"* * * * *\"\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(5), Some("checks[0].cron")), "{e}");
        let e = err("[[checks]]\nname = \"x\"\nkind = \"cpu\"\ncron = \"* * *\"\n");
        assert_eq!(e.line, Some(4), "{e}");
        assert!(e.message.contains("3 fields"), "{e}");
        let e = err("[[checks]]\nname = \"x\"\nkind = \"cpu\"\ncron = \"61 * * * *\"\n");
        assert!(e.message.contains("not a valid cron"), "{e}");
        let e = err("[[checks]]\nname = \"x\"\nkind = \"cpu\"\ninterval = \"500ms\"\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(4), Some("checks[0].interval")), "{e}");
        let e = err("[[checks]]\nname = \"x\"\nkind = \"cpu\"\ntimeout = \"soon\"\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(4), Some("checks[0].timeout")), "{e}");
    }

    #[test]
    fn cron_is_normalised_to_six_fields() {
        assert_eq!(normalize_cron("*/5 * * * *").unwrap(), "0 */5 * * * *");
        assert_eq!(normalize_cron("  */1  * * * * * ").unwrap(), "*/1 * * * * *");
        assert_eq!(normalize_cron("0 3 * * 1").unwrap(), "0 0 3 * * 1");
        assert!(normalize_cron("* * * * * * *").is_err());
        assert!(normalize_cron("").is_err());
        assert!(normalize_cron("a b c d e").is_err());
    }

    #[test]
    fn duplicate_names_are_refused_on_the_second() {
        let src = "[[checks]]\nname = \"x\"\nkind = \"cpu\"\n\n[[checks]]\nname = \"x\"\nkind = \"memory\"\n";
        let e = err(src);
        assert_eq!((e.line, e.key.as_deref()), (Some(6), Some("checks[1].name")), "{e}");
        assert!(e.message.contains("duplicate"), "{e}");
    }

    #[test]
    fn per_kind_values_are_checked() {
        let cases = [
            ("kind = \"systemd\"\nunit = \"-bad\"", "checks[0].unit"),
            (
                "kind = \"systemd\"\nunit = \"a.service\"\nexpected_state = \"running\"",
                "checks[0].expected_state",
            ),
            (
                "kind = \"process\"\nprocess_name = \"a\"\npidfile = \"/run/a.pid\"",
                "checks[0].pidfile",
            ),
            ("kind = \"process\"", "checks[0].process_name"),
            (
                "kind = \"process\"\nprocess_name = \"a\"\nmin = 3\nmax = 2",
                "checks[0].min",
            ),
            ("kind = \"tcp\"\naddress = \"localhost\"", "checks[0].address"),
            ("kind = \"tcp\"\naddress = \"::1:80\"", "checks[0].address"),
            ("kind = \"http\"\nurl = \"ftp://x/\"", "checks[0].url"),
            (
                "kind = \"http\"\nurl = \"http://x/\"\nexpect_status = [99]",
                "checks[0].expect_status",
            ),
            (
                "kind = \"http\"\nurl = \"http://x/\"\ntls_verify = false\nca_file = \"/ca.pem\"",
                "checks[0].ca_file",
            ),
            (
                "kind = \"tls\"\naddress = \"h:443\"\nserver_name = \"bad name\"",
                "checks[0].server_name",
            ),
            ("kind = \"disk\"\nmount = \"relative\"", "checks[0].mount"),
            ("kind = \"certificate_file\"", "checks[0].path"),
        ];
        for (body, key) in cases {
            let src = format!("[[checks]]\nname = \"x\"\n{body}\n");
            let e = err(&src);
            assert_eq!(e.key.as_deref(), Some(key), "{src}: {e}");
            assert!(e.line.is_some(), "{e}");
        }
    }

    #[test]
    fn host_port_splitting() {
        assert_eq!(split_host_port("example.com:443").unwrap(), ("example.com".into(), 443));
        assert_eq!(split_host_port("[::1]:8443").unwrap(), ("::1".into(), 8443));
        for bad in ["example.com", ":80", "h:0", "h:70000", "[::1]", "::1:80", "a b:1"] {
            assert!(split_host_port(bad).is_err(), "{bad:?}");
        }
    }
}
