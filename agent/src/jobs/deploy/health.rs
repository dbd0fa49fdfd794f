//! The deploy health gate: an HTTP GET expecting a status, a TCP connect, or
//! a command from the local config (healthy when it exits 0),
//! retried at an interval until it passes, `retries` run out, or the deadline passes.
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration as StdDuration;
use steward_shared::units::Duration;
use tokio::time::Instant;

/// `[apps.health]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// `http://` or `https://` URL to GET. Set this or `tcp`.
    pub http: Option<String>,
    /// Expected HTTP status. Default 200.
    #[serde(default = "default_status")]
    pub status: u16,
    /// `host:port` to connect to. Set this or `http`.
    pub tcp: Option<String>,
    /// A command (argv, absolute program, no shell) that exits 0 when healthy.
    /// Set this, `http` or `tcp`.
    pub command: Option<Vec<String>>,
    /// Most probes. Default 10.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Wait between probes. Default `1s`.
    #[serde(default = "default_interval")]
    pub interval: Duration,
    /// Longest the whole gate may take. Default `30s`.
    #[serde(default = "default_deadline")]
    pub deadline: Duration,
    /// Longest one probe may take. Default `5s`.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
}

fn default_status() -> u16 {
    200
}
fn default_retries() -> u32 {
    10
}
fn default_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_deadline() -> Duration {
    Duration::from_secs(30)
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

impl HealthConfig {
    /// Checks the keys (the caller adds the key path).
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        let set = [self.http.is_some(), self.tcp.is_some(), self.command.is_some()];
        if set.iter().filter(|x| **x).count() != 1 {
            return Err(("http", "set exactly one of `http`, `tcp` and `command`".into()));
        }
        if let Some(url) = &self.http {
            let parsed = reqwest::Url::parse(url).map_err(|e| ("http", format!("{url:?}: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                return Err(("http", format!("{url:?} must be an http:// or https:// URL")));
            }
        }
        if let Some(addr) = &self.tcp
            && addr
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(("tcp", format!("{addr:?} must be host:port")));
        }
        if let Some(argv) = &self.command
            && !argv.first().is_some_and(|p| p.starts_with('/'))
        {
            return Err((
                "command",
                "must be a non-empty argv whose program is an absolute path".into(),
            ));
        }
        if !(100..=599).contains(&self.status) {
            return Err(("status", "must be an HTTP status (100-599)".into()));
        }
        if self.retries == 0 {
            return Err(("retries", "must be at least 1".into()));
        }
        if self.deadline.as_std().is_zero() || self.timeout.as_std().is_zero() {
            return Err(("deadline", "deadline and timeout must be more than 0s".into()));
        }
        Ok(())
    }
}

/// A rustls-backed HTTP client (ring provider, system roots), no proxy, no redirects.
pub(crate) fn http_client(timeout: StdDuration) -> Result<reqwest::Client, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(timeout)
        .user_agent(concat!("steward-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

async fn probe(cfg: &HealthConfig, client: Option<&reqwest::Client>, timeout: StdDuration) -> Result<(), String> {
    if let (Some(url), Some(client)) = (&cfg.http, client) {
        let resp = client
            .get(url)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = resp.status().as_u16();
        if status == cfg.status {
            Ok(())
        } else {
            Err(format!("GET {url}: status {status}, expected {}", cfg.status))
        }
    } else if let Some(addr) = &cfg.tcp {
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr.as_str())).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("connect {addr}: {e}")),
            Err(_) => Err(format!("connect {addr}: timed out after {timeout:?}")),
        }
    } else {
        match &cfg.command {
            Some(argv) => probe_command(argv, timeout).await,
            None => Err("no health check configured".into()),
        }
    }
}

async fn probe_command(argv: &[String], timeout: StdDuration) -> Result<(), String> {
    let program = argv.first().cloned().unwrap_or_default();
    let child = tokio::process::Command::new(&program)
        .args(&argv[1.min(argv.len())..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(timeout, child).await {
        Err(_) => Err(format!("{program}: timed out after {timeout:?}")),
        Ok(Err(e)) => Err(format!("{program}: cannot start: {e}")),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(format!(
            "{program}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .chars()
                .take(300)
                .collect::<String>()
        )),
    }
}

/// Runs the gate; `Ok(probes)` when one probe passed, else the last failure.
pub async fn check(cfg: &HealthConfig) -> Result<u32, String> {
    let deadline = Instant::now() + cfg.deadline.as_std();
    let client = match &cfg.http {
        Some(_) => Some(http_client(cfg.timeout.as_std())?),
        None => None,
    };
    let mut last = String::from("no probe ran before the deadline");
    for attempt in 1..=cfg.retries {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match probe(cfg, client.as_ref(), cfg.timeout.as_std().min(left)).await {
            Ok(()) => return Ok(attempt),
            Err(e) => last = e,
        }
        if attempt < cfg.retries {
            let wait = cfg
                .interval
                .as_std()
                .min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(wait).await;
        }
    }
    Err(format!("health check failed: {last}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(addr: String) -> HealthConfig {
        HealthConfig {
            http: None,
            status: 200,
            tcp: Some(addr),
            command: None,
            retries: 3,
            interval: Duration(StdDuration::from_millis(20)),
            deadline: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn tcp_gate_passes_on_a_listener_and_fails_without_one() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        assert_eq!(check(&tcp(addr)).await, Ok(1));
        // A port bound but not listening refuses connections, and stays ours
        // (a dropped listener's port could be taken by a parallel test).
        let closed = tokio::net::TcpSocket::new_v4().unwrap();
        closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let err = check(&tcp(closed.local_addr().unwrap().to_string())).await.unwrap_err();
        assert!(err.starts_with("health check failed: connect"), "{err}");
    }

    #[tokio::test]
    async fn command_gate_passes_on_exit_zero() {
        let mut c = tcp(String::new());
        c.tcp = None;
        c.command = Some(vec!["/bin/true".into()]);
        assert_eq!(check(&c).await, Ok(1));
        c.command = Some(vec!["/bin/sh".into(), "-c".into(), "echo sick >&2; exit 1".into()]);
        let err = check(&c).await.unwrap_err();
        assert!(err.contains("sick"), "{err}");
    }

    #[test]
    fn config_needs_exactly_one_probe() {
        let mut c = tcp("127.0.0.1:80".into());
        assert!(c.validate().is_ok());
        c.http = Some("http://127.0.0.1/health".into());
        assert!(c.validate().is_err());
        c.tcp = None;
        assert!(c.validate().is_ok());
        c.http = Some("ftp://x/".into());
        assert!(c.validate().is_err());
        let c = tcp("no-port".into());
        assert_eq!(c.validate().unwrap_err().0, "tcp");
        let mut c = tcp("127.0.0.1:80".into());
        c.tcp = None;
        c.command = Some(vec!["check.sh".into()]);
        assert_eq!(c.validate().unwrap_err().0, "command");
    }
}
