//! `agent.toml`: the agent's whole configuration. Unknown keys are refused and
//! every error names the file, the line and the key (see
//! [`steward_shared::config`]). `steward-agent check-config` runs [`AgentConfig::load`].
use serde::Deserialize;
use std::path::{Path, PathBuf};
use steward_shared::config::{ConfigError, load_toml};
use steward_shared::units::{ByteSize, Duration};

use crate::checks::CheckConfig;
use crate::jobs::backup::BackupConfig;
use crate::jobs::deploy::AppConfig;
use crate::jobs::policy::ActionsSection;

/// Default location of the agent's config file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/steward/agent.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    #[serde(default)]
    pub agent: AgentSection,
    /// Where to stream results. Optional: without it the agent only collects
    /// (`collect --once` never needs it).
    pub server: Option<ServerSection>,
    #[serde(default)]
    pub spool: SpoolSection,
    /// The checks to run (`[[checks]]` tables).
    #[serde(default)]
    pub checks: Vec<CheckConfig>,
    /// Which job actions this agent runs (`[actions]`); default none.
    #[serde(default)]
    pub actions: ActionsSection,
    /// Configured backups (`[[backups]]` tables).
    #[serde(default)]
    pub backups: Vec<BackupConfig>,
    /// Apps deployed through `deploy.apply` (`[[apps]]` tables).
    #[serde(default)]
    pub apps: Vec<AppConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// State directory: spool, key and certificate. Default `/var/lib/steward-agent`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// How often to send a heartbeat when there is nothing else to send.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval: Duration,
    /// On SIGTERM, how long to keep trying to deliver the spool before exiting.
    #[serde(default = "default_grace")]
    pub shutdown_grace: Duration,
    /// Interval for checks that set neither `interval` nor `cron`.
    #[serde(default = "default_interval")]
    pub default_interval: Duration,
    /// Timeout for checks that do not set `timeout`.
    #[serde(default = "default_timeout")]
    pub default_timeout: Duration,
    /// How `service.restart` and deploys restart units: `"systemctl"` (default)
    /// or `"command"` (run `restart_command` with the unit appended: for hosts
    /// without systemd, and the stand-in for systemd in tests).
    #[serde(default)]
    pub service_manager: ServiceManagerKind,
    /// With `service_manager = "command"`: argv (absolute program, no shell)
    /// run as `ARGV... UNIT`; exit 0 means restarted.
    pub restart_command: Option<Vec<String>>,
    /// Most jobs (assigned or scheduled) running at once; more wait their turn. Default 2.
    #[serde(default = "default_max_jobs")]
    pub max_jobs: usize,
    /// Timeout of an assigned job whose assignment sets none. Default `1h`.
    #[serde(default = "default_job_timeout")]
    pub job_timeout: Duration,
    /// On SIGTERM, how long running jobs may go on before they are cancelled
    /// (reported `cancelled`, reason `agent is shutting down`). Default `30s`.
    #[serde(default = "default_job_grace")]
    pub job_grace: Duration,
}

/// `[agent] service_manager`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceManagerKind {
    /// `systemctl restart -- UNIT`.
    #[default]
    Systemctl,
    /// `restart_command... UNIT`.
    Command,
}

impl Default for AgentSection {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            heartbeat_interval: default_heartbeat(),
            shutdown_grace: default_grace(),
            default_interval: default_interval(),
            default_timeout: default_timeout(),
            service_manager: ServiceManagerKind::default(),
            restart_command: None,
            max_jobs: default_max_jobs(),
            job_timeout: default_job_timeout(),
            job_grace: default_job_grace(),
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/steward-agent")
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(15)
}
fn default_grace() -> Duration {
    Duration::from_secs(5)
}
fn default_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_jobs() -> usize {
    2
}
fn default_job_timeout() -> Duration {
    Duration::from_secs(3600)
}
fn default_job_grace() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// The control plane's gRPC endpoint, `https://HOST:PORT`.
    pub url: String,
    /// The Steward CA certificate (PEM). Default `DATA_DIR/ca.pem`.
    pub ca_cert: Option<PathBuf>,
    /// This agent's certificate (PEM). Default `DATA_DIR/agent.pem`.
    pub cert: Option<PathBuf>,
    /// This agent's private key (PEM). Default `DATA_DIR/agent.key`.
    pub key: Option<PathBuf>,
    /// TLS server name to verify, when it differs from the URL's host.
    pub server_name: Option<String>,
    /// A one-time enrollment token (`stwe_...`): used at start when this agent
    /// has no certificate yet. Prefer `steward-agent enroll`, which leaves no
    /// token in the config.
    pub enrollment_token: Option<String>,
    /// The host ID to enroll as (default: derived from the hostname).
    pub host_id: Option<String>,
    /// Longest wait between reconnection attempts (full jitter below it).
    #[serde(default = "default_backoff_max")]
    pub reconnect_max: Duration,
    /// Time allowed for connecting and the TLS handshake.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
}

fn default_backoff_max() -> Duration {
    Duration::from_secs(60)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolSection {
    /// Upper bound of the spool's contents; when full, the oldest reports are dropped and counted.
    #[serde(default = "default_spool_max")]
    pub max_size: ByteSize,
    /// Most reports sent in one batch.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
}

impl Default for SpoolSection {
    fn default() -> Self {
        Self {
            max_size: default_spool_max(),
            max_batch: default_max_batch(),
        }
    }
}

fn default_spool_max() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_max_batch() -> usize {
    500
}

impl ServerSection {
    /// A section with defaults for everything but the URL (for `enroll --server`
    /// when the config has no `[server]` yet).
    pub fn for_url(url: &str) -> Self {
        ServerSection {
            url: url.to_string(),
            ca_cert: None,
            cert: None,
            key: None,
            server_name: None,
            enrollment_token: None,
            host_id: None,
            reconnect_max: default_backoff_max(),
            connect_timeout: default_connect_timeout(),
        }
    }

    pub fn ca_cert_path(&self, data_dir: &Path) -> PathBuf {
        self.ca_cert.clone().unwrap_or_else(|| data_dir.join("ca.pem"))
    }
    pub fn cert_path(&self, data_dir: &Path) -> PathBuf {
        self.cert.clone().unwrap_or_else(|| data_dir.join("agent.pem"))
    }
    pub fn key_path(&self, data_dir: &Path) -> PathBuf {
        self.key.clone().unwrap_or_else(|| data_dir.join("agent.key"))
    }
    /// The three identity files.
    pub fn identity_paths(&self, data_dir: &Path) -> crate::enroll::IdentityPaths {
        crate::enroll::IdentityPaths {
            ca: self.ca_cert_path(data_dir),
            cert: self.cert_path(data_dir),
            key: self.key_path(data_dir),
        }
    }
}

impl AgentConfig {
    /// Reads, parses and validates a config file.
    /// A file holding `server.enrollment_token` must be readable by its
    /// owner only (a token lets anyone enrol a host).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let (cfg, src): (AgentConfig, String) = load_toml(path)?;
        let file = path.display().to_string();
        cfg.validate(&file, &src)?;
        if cfg.server.as_ref().is_some_and(|s| s.enrollment_token.is_some()) {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(|e| ConfigError::file(&file, format!("cannot read: {e}")))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(ConfigError::at(
                    &file,
                    &src,
                    "server.enrollment_token",
                    format!(
                        "this file is readable by group or others (mode {:o}) and holds an enrollment \
                         token: run chmod 600 {file}, or remove the token and use `steward-agent enroll` \
                         (token from STEWARD_ENROLL_TOKEN)",
                        mode & 0o777
                    ),
                ));
            }
        }
        Ok(cfg)
    }

    /// Parses and validates config source (`file` names it in errors).
    pub fn parse(file: &str, src: &str) -> Result<Self, ConfigError> {
        let cfg: AgentConfig = steward_shared::config::parse_toml(file, src)?;
        cfg.validate(file, src)?;
        Ok(cfg)
    }

    /// Semantic validation beyond what serde checks.
    pub fn validate(&self, file: &str, src: &str) -> Result<(), ConfigError> {
        let at = |key: &str, msg: String| ConfigError::at(file, src, key, msg);
        if self.agent.heartbeat_interval.as_std() < std::time::Duration::from_secs(1) {
            return Err(at("agent.heartbeat_interval", "must be at least 1s".into()));
        }
        if self.agent.default_interval.as_std() < std::time::Duration::from_secs(1) {
            return Err(at("agent.default_interval", "must be at least 1s".into()));
        }
        if self.agent.default_timeout.as_std().is_zero() {
            return Err(at("agent.default_timeout", "must be more than 0s".into()));
        }
        if self.agent.max_jobs == 0 || self.agent.max_jobs > 64 {
            return Err(at("agent.max_jobs", "must be between 1 and 64".into()));
        }
        if self.agent.job_timeout.as_std().is_zero() {
            return Err(at("agent.job_timeout", "must be more than 0s".into()));
        }
        match (&self.agent.service_manager, &self.agent.restart_command) {
            (ServiceManagerKind::Command, None) => {
                return Err(at(
                    "agent.service_manager",
                    "\"command\" needs `restart_command = [\"/absolute/program\", ...]`".into(),
                ));
            }
            (ServiceManagerKind::Systemctl, Some(_)) => {
                return Err(at(
                    "agent.restart_command",
                    "is used only with service_manager = \"command\"".into(),
                ));
            }
            (_, Some(argv)) if !argv.first().is_some_and(|p| p.starts_with('/')) => {
                return Err(at(
                    "agent.restart_command",
                    "must be a non-empty argv whose program is an absolute path".into(),
                ));
            }
            _ => {}
        }
        if self.spool.max_size.0 < 4 * 1024 {
            return Err(at("spool.max_size", "must be at least 4KiB".into()));
        }
        if self.spool.max_batch == 0 || self.spool.max_batch > 10_000 {
            return Err(at("spool.max_batch", "must be between 1 and 10000".into()));
        }
        if let Some(server) = &self.server
            && !server.url.starts_with("https://")
        {
            return Err(at(
                "server.url",
                format!("{:?} must start with https:// (the stream is always mTLS)", server.url),
            ));
        }
        if let Some(server) = &self.server {
            if let Some(token) = &server.enrollment_token
                && crate::enroll::token_fingerprint(token).is_none()
            {
                return Err(at(
                    "server.enrollment_token",
                    "malformed: expected stwe_<id>_<secret>_<ca-fingerprint>".into(),
                ));
            }
            if let Some(id) = &server.host_id
                && let Err(e) = steward_shared::pki::validate_host_id(id)
            {
                return Err(at("server.host_id", e.to_string()));
            }
        }
        crate::checks::validate(&self.checks, self, file, src)?;
        crate::jobs::validate(self, file, src)
    }
}
