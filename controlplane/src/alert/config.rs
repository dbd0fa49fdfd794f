//! `[alerts]` of `controlplane.toml`: the sources and their severities, the
//! receivers, and the routing rules (severity at least X and label matchers
//! → receiver names). Validation names the key (`alerts.receivers[1].url`);
//! [`crate::config::ControlPlaneConfig::validate`] places it on its line.
use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use steward_shared::units::Duration;

use super::{Alert, Severity};

/// `[alerts]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// How often every source is evaluated. Default 30s.
    #[serde(default = "d_interval")]
    pub interval: Duration,
    /// First retry of a failed delivery; doubled per attempt up to `retry_max`. Default 5s.
    #[serde(default = "d_retry_initial")]
    pub retry_initial: Duration,
    /// Longest wait between two attempts of one delivery. Default 10m.
    #[serde(default = "d_retry_max")]
    pub retry_max: Duration,
    /// Time allowed to one delivery (HTTP request, SMTP session). Default 10s.
    #[serde(default = "d_delivery_timeout")]
    pub delivery_timeout: Duration,
    #[serde(default)]
    pub slo: SloSource,
    #[serde(default)]
    pub host_silent: HostSilentSource,
    #[serde(default)]
    pub check_critical: CheckCriticalSource,
    #[serde(default)]
    pub backup_rpo: SimpleSource,
    #[serde(default)]
    pub certificate: CertificateSource,
    #[serde(default)]
    pub rollout: RolloutSource,
    /// `[[alerts.kpi]]`: KPI thresholds over the whole fleet.
    #[serde(default)]
    pub kpi: Vec<KpiRule>,
    /// Where notifications go.
    #[serde(default)]
    pub receivers: Vec<ReceiverConfig>,
    /// Every route whose conditions hold adds its receivers.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

fn d_interval() -> Duration {
    Duration::from_secs(30)
}
fn d_retry_initial() -> Duration {
    Duration::from_secs(5)
}
fn d_retry_max() -> Duration {
    Duration::from_secs(600)
}
fn d_delivery_timeout() -> Duration {
    Duration::from_secs(10)
}
fn yes() -> bool {
    true
}

/// `[alerts.slo]`: the SLO burn tiers (page tiers and ticket tiers).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SloSource {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "sev_critical")]
    pub page_severity: Severity,
    #[serde(default = "sev_warning")]
    pub ticket_severity: Severity,
}

/// `[alerts.host_silent]`: a host not heard from for `after`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSilentSource {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Default 5m.
    #[serde(default = "d_silent_after")]
    pub after: Duration,
    #[serde(default = "sev_critical")]
    pub severity: Severity,
}

/// `[alerts.check_critical]`: a check critical without a break for `for`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckCriticalSource {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Default 5m.
    #[serde(default = "d_critical_for", rename = "for")]
    pub for_: Duration,
    #[serde(default = "sev_error")]
    pub severity: Severity,
}

/// A source with only a switch and a severity (`[alerts.backup_rpo]`: a
/// backup whose last good snapshot is older than its RPO).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimpleSource {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "sev_error")]
    pub severity: Severity,
}

/// `[alerts.certificate]`: a check reporting `days_left` under a threshold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateSource {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Default 30.
    #[serde(default = "d_warning_days")]
    pub warning_days: f64,
    /// Default 7.
    #[serde(default = "d_critical_days")]
    pub critical_days: f64,
    #[serde(default = "sev_warning")]
    pub warning_severity: Severity,
    #[serde(default = "sev_critical")]
    pub critical_severity: Severity,
}

/// `[alerts.rollout]`: a rollout that ended `rolled_back` within `window`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSource {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "sev_error")]
    pub severity: Severity,
    /// How long the alert stays firing after the rollout ended. Default 24h.
    #[serde(default = "d_rollout_window")]
    pub window: Duration,
}

/// `[[alerts.kpi]]`: fires while the fleet-wide value of `kpi` (computed
/// over `window`) is above `above` or below `below` (exactly one is set).
/// A KPI without data (no value) never fires.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KpiRule {
    /// A KPI name from the catalog (`GET /api/v1/kpis`).
    pub kpi: String,
    #[serde(default)]
    pub above: Option<f64>,
    #[serde(default)]
    pub below: Option<f64>,
    /// Window of windowed KPIs. Default 30d.
    #[serde(default = "d_kpi_window")]
    pub window: Duration,
    #[serde(default = "sev_warning")]
    pub severity: Severity,
}

fn d_kpi_window() -> Duration {
    Duration::from_secs(30 * 86_400)
}

impl KpiRule {
    /// The condition as shown in labels: `above 0.5` or `below 0.9`.
    pub fn condition(&self) -> String {
        match (self.above, self.below) {
            (Some(a), _) => format!("above {a}"),
            (_, Some(b)) => format!("below {b}"),
            _ => String::new(),
        }
    }

    /// Whether `value` breaks the threshold.
    pub fn breached(&self, value: f64) -> bool {
        match (self.above, self.below) {
            (Some(a), _) => value > a,
            (_, Some(b)) => value < b,
            _ => false,
        }
    }
}

fn sev_critical() -> Severity {
    Severity::Critical
}
fn sev_error() -> Severity {
    Severity::Error
}
fn sev_warning() -> Severity {
    Severity::Warning
}
fn d_silent_after() -> Duration {
    Duration::from_secs(300)
}
fn d_critical_for() -> Duration {
    Duration::from_secs(300)
}
fn d_warning_days() -> f64 {
    30.0
}
fn d_critical_days() -> f64 {
    7.0
}
fn d_rollout_window() -> Duration {
    Duration::from_secs(86_400)
}

macro_rules! defaults_from_empty {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                steward_shared::config::parse_toml("<defaults>", "").expect("an empty section has defaults")
            }
        }
    )*};
}
defaults_from_empty!(
    AlertsConfig,
    SloSource,
    HostSilentSource,
    CheckCriticalSource,
    SimpleSource,
    CertificateSource,
    RolloutSource
);

/// `[[alerts.receivers]]`. `kind` decides which other keys apply.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    /// Unique; what routes name.
    pub name: String,
    /// `webhook`, `slack`, `email` or `file`.
    pub kind: String,
    /// webhook, slack: `http://` or `https://` URL.
    pub url: Option<String>,
    /// webhook: HMAC-SHA256 key; the body's MAC is sent as
    /// `X-Steward-Signature: sha256=<hex>`. Never logged. A string, or
    /// `{ credential = "NAME" }`, `{ file = "PATH" }`, `{ env = "NAME" }`
    /// ([`crate::secret`]).
    pub secret: Option<crate::secret::Secret>,
    /// webhook: read the key from this file instead (trailing newline ignored).
    pub secret_file: Option<PathBuf>,
    /// email: SMTP server `host:port`.
    pub smtp: Option<String>,
    /// email: `starttls` (the default: plain connection upgraded with
    /// STARTTLS, refused if the server does not offer it), `tls` (TLS from
    /// the first byte, usually port 465) or `none` (plain SMTP: local relays only).
    pub tls: Option<String>,
    /// email: SMTP user name (with `password`).
    pub username: Option<String>,
    /// email: SMTP password, like `secret` ([`crate::secret`]).
    pub password: Option<crate::secret::Secret>,
    /// email: sender address.
    pub from: Option<String>,
    /// email: recipients.
    #[serde(default)]
    pub to: Vec<String>,
    /// file: JSON-lines file, appended to (created 0600).
    pub path: Option<PathBuf>,
}

/// `[[alerts.routes]]`: alerts of at least `min_severity` whose labels
/// match every matcher (`k=v`, `k!=v`) go to `receivers`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub receivers: Vec<String>,
    #[serde(default = "sev_info")]
    pub min_severity: Severity,
    #[serde(default)]
    pub matchers: Vec<String>,
}

fn sev_info() -> Severity {
    Severity::Info
}

/// A parsed route matcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelMatch {
    pub name: String,
    pub value: String,
    pub negate: bool,
}

impl LabelMatch {
    pub fn parse(raw: &str) -> Option<LabelMatch> {
        let (name, value, negate) = match raw.split_once("!=") {
            Some((n, v)) => (n, v, true),
            None => {
                let (n, v) = raw.split_once('=')?;
                (n, v, false)
            }
        };
        let name = name.trim();
        (!name.is_empty()).then(|| LabelMatch {
            name: name.to_string(),
            value: value.trim().to_string(),
            negate,
        })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        (labels.get(&self.name).map(String::as_str).unwrap_or("") == self.value) != self.negate
    }
}

/// The routing rules, parsed: which receivers an alert goes to.
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<(Severity, Vec<LabelMatch>, Vec<String>)>,
}

impl Router {
    pub fn new(cfg: &AlertsConfig) -> Router {
        Router {
            routes: cfg
                .routes
                .iter()
                .map(|r| {
                    (
                        r.min_severity,
                        r.matchers.iter().filter_map(|m| LabelMatch::parse(m)).collect(),
                        r.receivers.clone(),
                    )
                })
                .collect(),
        }
    }

    /// The receivers of `alert`, each once, in the order routes name them.
    pub fn receivers(&self, alert: &Alert) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (min, matchers, receivers) in &self.routes {
            if alert.severity >= *min && matchers.iter().all(|m| m.matches(&alert.labels)) {
                for r in receivers {
                    if !out.contains(r) {
                        out.push(r.clone());
                    }
                }
            }
        }
        out
    }
}

impl AlertsConfig {
    /// Checks the section; `Err((key, message))` names the key at fault.
    pub fn check(&self) -> Result<(), (String, String)> {
        let err = |k: String, m: &str| Err((k, m.to_string()));
        if self.interval.as_std() < std::time::Duration::from_secs(1) {
            return err("alerts.interval".into(), "must be at least 1s");
        }
        if self.retry_initial.as_std() < std::time::Duration::from_millis(100) {
            return err("alerts.retry_initial".into(), "must be at least 100ms");
        }
        if self.retry_max.as_std() < self.retry_initial.as_std() {
            return err("alerts.retry_max".into(), "must be at least retry_initial");
        }
        if self.delivery_timeout.as_std() < std::time::Duration::from_secs(1) {
            return err("alerts.delivery_timeout".into(), "must be at least 1s");
        }
        let c = &self.certificate;
        if !(c.critical_days >= 0.0 && c.warning_days >= c.critical_days) {
            return err(
                "alerts.certificate.warning_days".into(),
                "must be at least critical_days, and both at least 0",
            );
        }
        for (i, rule) in self.kpi.iter().enumerate() {
            let at = |key: &str| format!("alerts.kpi[{i}].{key}");
            if crate::kpi::find(&rule.kpi).is_none() {
                return Err((at("kpi"), format!("no KPI named {:?} in the catalog", rule.kpi)));
            }
            match (rule.above, rule.below) {
                (Some(_), Some(_)) | (None, None) => return err(at("above"), "set exactly one of above and below"),
                (Some(v), None) if !v.is_finite() => return err(at("above"), "must be a finite number"),
                (None, Some(v)) if !v.is_finite() => return err(at("below"), "must be a finite number"),
                _ => {}
            }
            if rule.window.as_std() < std::time::Duration::from_secs(60) {
                return err(at("window"), "must be at least 1m");
            }
        }
        let mut names = Vec::new();
        for (i, r) in self.receivers.iter().enumerate() {
            let at = |key: &str| format!("alerts.receivers[{i}].{key}");
            if r.name.trim().is_empty() {
                return err(at("name"), "must not be empty");
            }
            if names.contains(&r.name.as_str()) {
                return err(at("name"), "another receiver has this name");
            }
            names.push(r.name.as_str());
            let has = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.trim().is_empty());
            let url_ok = |u: &Option<String>| {
                u.as_deref()
                    .and_then(|u| reqwest::Url::parse(u).ok())
                    .is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            };
            let unused = |key: &str, set: bool| -> Result<(), (String, String)> {
                if set {
                    Err((at(key), format!("does not apply to a {} receiver", r.kind)))
                } else {
                    Ok(())
                }
            };
            match r.kind.as_str() {
                "webhook" | "slack" => {
                    if !url_ok(&r.url) {
                        return err(at("url"), "an http:// or https:// URL is required");
                    }
                    if r.kind == "slack" {
                        unused("secret", r.secret.is_some())?;
                        unused("secret_file", r.secret_file.is_some())?;
                    } else if r.secret.is_some() && r.secret_file.is_some() {
                        return err(at("secret_file"), "set secret or secret_file, not both");
                    } else if let Some(path) = &r.secret_file
                        && let Err(e) = std::fs::metadata(path)
                    {
                        return Err((at("secret_file"), format!("cannot read {}: {e}", path.display())));
                    }
                    unused("smtp", r.smtp.is_some())?;
                    unused("tls", r.tls.is_some())?;
                    unused("username", r.username.is_some())?;
                    unused("password", r.password.is_some())?;
                    unused("path", r.path.is_some())?;
                }
                "email" => {
                    let hostport = r.smtp.as_deref().and_then(|s| s.rsplit_once(':'));
                    if !hostport.is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) {
                        return err(at("smtp"), "host:port of an SMTP server is required");
                    }
                    if !has(&r.from) || !r.from.as_deref().is_some_and(|f| f.contains('@')) {
                        return err(at("from"), "a sender address is required");
                    }
                    if r.to.is_empty() {
                        return err(at("to"), "at least one recipient is required");
                    }
                    if let Some(j) = r.to.iter().position(|t| !t.contains('@')) {
                        return err(format!("alerts.receivers[{i}].to[{j}]"), "not an email address");
                    }
                    if !matches!(r.tls.as_deref(), None | Some("starttls" | "tls" | "none")) {
                        return err(at("tls"), "must be starttls, tls or none");
                    }
                    if r.username.is_some() != r.password.is_some() {
                        return err(at("password"), "username and password must be set together");
                    }
                    if r.password.is_some() && r.tls.as_deref() == Some("none") {
                        return err(at("password"), "a password is not sent over tls = \"none\"");
                    }
                    unused("url", r.url.is_some())?;
                    unused("secret", r.secret.is_some())?;
                }
                "file" => {
                    if r.path.is_none() {
                        return err(at("path"), "the path of the JSON-lines file is required");
                    }
                    unused("url", r.url.is_some())?;
                }
                _ => return err(at("kind"), "must be webhook, slack, email or file"),
            }
        }
        for (i, route) in self.routes.iter().enumerate() {
            if route.receivers.is_empty() {
                return err(format!("alerts.routes[{i}].receivers"), "name at least one receiver");
            }
            for (j, name) in route.receivers.iter().enumerate() {
                if !names.contains(&name.as_str()) {
                    return err(
                        format!("alerts.routes[{i}].receivers[{j}]"),
                        "no receiver has this name",
                    );
                }
            }
            for (j, m) in route.matchers.iter().enumerate() {
                if LabelMatch::parse(m).is_none() {
                    return err(
                        format!("alerts.routes[{i}].matchers[{j}]"),
                        "expected NAME=VALUE or NAME!=VALUE",
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<AlertsConfig, (String, String)> {
        #[derive(Deserialize)]
        struct F {
            alerts: AlertsConfig,
        }
        let f: F = steward_shared::config::parse_toml("t.toml", src).map_err(|e| ("parse".into(), e.to_string()))?;
        f.alerts.check()?;
        Ok(f.alerts)
    }

    #[test]
    fn config_defaults_validation_and_routing() {
        let d = AlertsConfig::default();
        assert_eq!(d.host_silent.after.as_std().as_secs(), 300);
        assert_eq!(d.certificate.critical_days, 7.0);
        assert!(d.check().is_ok());

        let cfg = parse(
            r#"
[alerts]
[alerts.host_silent]
after = "2m"
severity = "warning"
[[alerts.receivers]]
name = "hook"
kind = "webhook"
url = "http://127.0.0.1:9/x"
secret = "s"
[[alerts.receivers]]
name = "log"
kind = "file"
path = "/tmp/a.jsonl"
[[alerts.routes]]
receivers = ["log"]
[[alerts.routes]]
receivers = ["hook", "log"]
min_severity = "error"
matchers = ["env=prod"]
"#,
        )
        .unwrap();
        assert_eq!(cfg.host_silent.severity, Severity::Warning);
        let router = Router::new(&cfg);
        let mut alert = Alert {
            id: "a".into(),
            fingerprint: "f".into(),
            source: "s".into(),
            severity: Severity::Critical,
            state: "firing".into(),
            summary: String::new(),
            labels: BTreeMap::from([("env".to_string(), "prod".to_string())]),
            started_ms: 0,
            resolved_ms: None,
            acked_by: None,
            acked_ms: None,
            silenced: false,
        };
        assert_eq!(router.receivers(&alert), ["log", "hook"]);
        alert.severity = Severity::Warning;
        assert_eq!(router.receivers(&alert), ["log"]);
        alert.severity = Severity::Error;
        alert.labels.insert("env".into(), "dev".into());
        assert_eq!(router.receivers(&alert), ["log"]);

        for (src, key) in [
            (
                "[[alerts.receivers]]\nname = \"x\"\nkind = \"pager\"\n",
                "alerts.receivers[0].kind",
            ),
            (
                "[[alerts.receivers]]\nname = \"x\"\nkind = \"webhook\"\nurl = \"ftp://x\"\n",
                "alerts.receivers[0].url",
            ),
            (
                "[[alerts.receivers]]\nname = \"x\"\nkind = \"email\"\nsmtp = \"h:25\"\nfrom = \"a@b\"\n",
                "alerts.receivers[0].to",
            ),
            (
                "[[alerts.receivers]]\nname = \"x\"\nkind = \"file\"\npath = \"/x\"\n[[alerts.routes]]\nreceivers = [\"y\"]\n",
                "alerts.routes[0].receivers[0]",
            ),
            (
                "[[alerts.receivers]]\nname = \"x\"\nkind = \"file\"\npath = \"/x\"\n[[alerts.routes]]\nreceivers = [\"x\"]\nmatchers = [\"nope\"]\n",
                "alerts.routes[0].matchers[0]",
            ),
            (
                "[alerts.certificate]\nwarning_days = 3\n",
                "alerts.certificate.warning_days",
            ),
        ] {
            let src = format!("[alerts]\n{src}");
            assert_eq!(parse(&src).unwrap_err().0, key, "{src}");
        }
    }
}
