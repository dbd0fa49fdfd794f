//! `controlplane.toml`: listen addresses, data directory, database, TLS files,
//! limits and retention. Unknown keys are refused; errors name file, line and
//! key. `steward-controlplane check-config` runs [`ControlPlaneConfig::load`].
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use steward_shared::config::{ConfigError, load_toml, parse_toml};
use steward_shared::units::{ByteSize, Duration};

/// Default location of the control plane's config file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/steward/controlplane.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneConfig {
    /// State directory: SQLite file, CA key, server certificate. Default `/var/lib/steward-controlplane`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Database URL: `sqlite://PATH` or `postgres://...`. Default `sqlite://DATA_DIR/steward.db`.
    pub database_url: Option<String>,
    #[serde(default)]
    pub database: DatabaseSection,
    #[serde(default)]
    pub grpc: GrpcSection,
    #[serde(default)]
    pub rest: RestSection,
    #[serde(default)]
    pub retention: RetentionSection,
    #[serde(default)]
    pub pki: PkiSection,
    #[serde(default)]
    pub audit: AuditSection,
    #[serde(default)]
    pub rbac: RbacSection,
    #[serde(default)]
    pub jobs: JobsSection,
    /// `[alerts]`: sources, receivers, routes ([`crate::alert::config`]).
    #[serde(default)]
    pub alerts: crate::alert::config::AlertsConfig,
    #[serde(default)]
    pub kpi: KpiSection,
}

/// `[database]`: how `database_url` is reached.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSection {
    /// The PostgreSQL password, kept out of `database_url` and this file:
    /// `{ credential = "db-password" }`, `{ file = "..." }` or `{ env = "..." }`
    /// ([`crate::secret`]).
    pub password: Option<crate::secret::Secret>,
    /// Allow a PostgreSQL server that is not local without
    /// `sslmode=verify-full` (or `verify-ca`). Default false.
    #[serde(default)]
    pub allow_insecure_tls: bool,
}

/// `[kpi]`: the KPI sampler that stores the trend.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KpiSection {
    /// How often the fleet-wide KPI values are sampled. Default `5m`.
    #[serde(default = "default_kpi_sample_interval")]
    pub sample_interval: Duration,
    /// Window of the sampled windowed KPIs. Default `30d`.
    #[serde(default = "default_kpi_window")]
    pub window: Duration,
    /// How long samples are kept. Default `90d`.
    #[serde(default = "default_kpi_keep")]
    pub keep: Duration,
}

impl KpiSection {
    /// The sampler settings these keys describe.
    pub fn settings(&self) -> crate::kpi::sampler::SamplerSettings {
        let ms = |d: &Duration| i64::try_from(d.as_std().as_millis()).unwrap_or(i64::MAX);
        crate::kpi::sampler::SamplerSettings {
            interval: self.sample_interval.as_std().max(std::time::Duration::from_secs(1)),
            window_ms: ms(&self.window).max(1),
            keep_ms: ms(&self.keep).max(1),
        }
    }
}

fn default_kpi_sample_interval() -> Duration {
    Duration::from_secs(300)
}
fn default_kpi_window() -> Duration {
    Duration::from_secs(30 * 86_400)
}
fn default_kpi_keep() -> Duration {
    Duration::from_secs(90 * 86_400)
}

impl Default for KpiSection {
    fn default() -> Self {
        parse_toml("<defaults>", "").expect("empty kpi section has defaults")
    }
}

/// `[rbac]`: custom roles defined in the file (`[[rbac.roles]]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RbacSection {
    #[serde(default)]
    pub roles: Vec<RoleConfig>,
}

/// One `[[rbac.roles]]`: `allow`/`deny` lists of permissions for every host,
/// and `rules` for rules limited to hosts by a selector.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Permissions allowed on every host, e.g. `["*:read", "jobs:*"]`.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Permissions denied on every host (a deny always wins).
    #[serde(default)]
    pub deny: Vec<String>,
    /// Rules with a host selector: `{ effect = "allow", permission = "jobs:*", hosts = "env=staging" }`.
    #[serde(default)]
    pub rules: Vec<crate::rbac::RuleSpec>,
}

impl RbacSection {
    /// The roles as evaluated; an error names `rbac.roles[i].KEY`.
    pub fn role_defs(&self) -> Result<Vec<crate::rbac::RoleDef>, (String, String)> {
        use crate::rbac::{Effect, RoleDef, RoleSource, Rule, RuleSpec};
        let mut out: Vec<RoleDef> = Vec::new();
        for (i, role) in self.roles.iter().enumerate() {
            let at = |key: &str| format!("rbac.roles[{i}].{key}");
            if !crate::rbac::valid_role_name(&role.name) {
                return Err((
                    at("name"),
                    "a role name is 1 to 64 lowercase letters, digits, `-` and `_`, starting with a letter".into(),
                ));
            }
            if crate::rbac::builtin(&role.name).is_some() {
                return Err((at("name"), format!("{} is a built-in role", role.name)));
            }
            if out.iter().any(|r| r.name == role.name) {
                return Err((at("name"), format!("role {} is defined twice", role.name)));
            }
            let mut rules = Vec::new();
            for (list, effect, key) in [
                (&role.allow, Effect::Allow, "allow"),
                (&role.deny, Effect::Deny, "deny"),
            ] {
                for (j, permission) in list.iter().enumerate() {
                    let spec = RuleSpec {
                        effect,
                        permission: permission.clone(),
                        hosts: None,
                    };
                    rules.push(Rule::from_spec(&spec).map_err(|(_, m)| (at(&format!("{key}[{j}]")), m))?);
                }
            }
            for (j, spec) in role.rules.iter().enumerate() {
                rules.push(Rule::from_spec(spec).map_err(|(field, m)| (at(&format!("rules[{j}].{field}")), m))?);
            }
            out.push(RoleDef {
                name: role.name.clone(),
                description: role.description.clone(),
                rules,
                source: RoleSource::Config,
            });
        }
        Ok(out)
    }
}

/// `[jobs]`: the job queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsSection {
    /// Output kept per job (the rest is dropped and the job marked truncated). Default `1MiB`.
    #[serde(default = "default_job_output_cap")]
    pub output_cap: ByteSize,
    /// How long a sent attempt waits for the agent's acceptance before it is sent again. Default `30s`.
    #[serde(default = "default_dispatch_lease")]
    pub dispatch_lease: Duration,
    /// Added to a job's timeout before the control plane itself times it out. Default `30s`.
    #[serde(default = "default_timeout_grace")]
    pub timeout_grace: Duration,
    /// Jobs dispatched or running at once on one host. Default 1.
    #[serde(default = "default_max_running_per_host")]
    pub max_running_per_host: u32,
    /// First retry delay (doubled per attempt, ±10 % jitter). Default `5s`.
    #[serde(default = "default_retry_base")]
    pub retry_base: Duration,
    /// Longest retry delay. Default `1h`.
    #[serde(default = "default_retry_max")]
    pub retry_max: Duration,
}

impl JobsSection {
    /// The queue settings these keys describe.
    pub fn settings(&self) -> crate::jobs::JobSettings {
        let ms = |d: &Duration| i64::try_from(d.as_std().as_millis()).unwrap_or(i64::MAX);
        crate::jobs::JobSettings {
            output_cap: self.output_cap.0,
            dispatch_lease_ms: ms(&self.dispatch_lease).max(1000),
            timeout_grace_ms: ms(&self.timeout_grace),
            max_running_per_host: self.max_running_per_host.max(1),
            retry_base_ms: ms(&self.retry_base).max(1),
            retry_max_ms: ms(&self.retry_max).max(1),
        }
    }
}

fn default_job_output_cap() -> ByteSize {
    ByteSize(1 << 20)
}
fn default_dispatch_lease() -> Duration {
    Duration::from_secs(30)
}
fn default_timeout_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_max_running_per_host() -> u32 {
    1
}
fn default_retry_base() -> Duration {
    Duration::from_secs(5)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(3600)
}

impl Default for JobsSection {
    fn default() -> Self {
        parse_toml("<defaults>", "").expect("empty jobs section has defaults")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// Sign a checkpoint of the audit log after this many new entries.
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// ...and at least this often, also when nothing happened (so a silent gap is provable).
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: Duration,
    /// Ed25519 key (PKCS#8 PEM, mode 0600) that signs checkpoints; created
    /// when missing. Default `DATA_DIR/audit-signing.key`. Replicas share one.
    pub signing_key: Option<PathBuf>,
    /// Refused requests recorded one by one per minute (bursting to as many);
    /// beyond that they are counted into the next recorded one.
    #[serde(default = "default_denials_per_minute")]
    pub denials_per_minute: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PkiSection {
    /// Lifetime of agent certificates issued at enrollment and renewal
    /// (agents renew after two thirds of it).
    #[serde(default = "default_agent_cert_lifetime")]
    pub agent_cert_lifetime: Duration,
    /// Default lifetime of enrollment tokens.
    #[serde(default = "default_enrollment_ttl")]
    pub enrollment_token_ttl: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcSection {
    /// Address the agent gateway listens on (mTLS only). Default `0.0.0.0:7443`.
    #[serde(default = "default_grpc_listen")]
    pub listen: SocketAddr,
    /// Server certificate presented to agents (PEM). Default `DATA_DIR/server.pem`.
    pub cert: Option<PathBuf>,
    /// Its private key (PEM). Default `DATA_DIR/server.key`.
    pub key: Option<PathBuf>,
    /// CA that agent certificates must chain to (PEM). Default `DATA_DIR/ca.pem`.
    pub client_ca: Option<PathBuf>,
    /// Most agent connections at once; further connections are refused.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Largest gRPC message accepted from an agent.
    #[serde(default = "default_max_message")]
    pub max_message_size: ByteSize,
    /// Most reports in one batch from an agent (told to agents in `Welcome`).
    #[serde(default = "default_max_batch")]
    pub max_batch: u32,
    /// Heartbeat interval asked of agents.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval: Duration,
    /// Time allowed for the TLS handshake and the agent's `Hello`.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: Duration,
    /// Parallel ingest writers (each commits its own batched transactions).
    /// Default 1 on SQLite (one writer anyway), 2 on PostgreSQL.
    pub ingest_workers: Option<usize>,
    /// Most reports committed in one ingest transaction.
    #[serde(default = "default_ingest_max_rows")]
    pub ingest_max_rows: usize,
    /// Most connections without a client certificate at once (enrolling
    /// agents), apart from `max_connections`; further ones are closed.
    #[serde(default = "default_max_enrollment_connections")]
    pub max_enrollment_connections: usize,
    /// Most connections without a client certificate at once from one address.
    #[serde(default = "default_max_enrollment_connections_per_address")]
    pub max_enrollment_connections_per_address: usize,
    /// A connection without a client certificate is closed this long after
    /// its handshake (it may make one `Enroll` call).
    #[serde(default = "default_enrollment_connection_lifetime")]
    pub enrollment_connection_lifetime: Duration,
    /// `Enroll` calls a minute from one client address (bursting to as many).
    #[serde(default = "default_enroll_per_address_per_minute")]
    pub enroll_per_address_per_minute: u32,
    /// `Enroll` calls a second from all clients together.
    #[serde(default = "default_enroll_per_second")]
    pub enroll_per_second: u32,
}

impl GrpcSection {
    /// The `Enroll` rates (validated to be at least 1 when the config loads).
    pub fn enroll_limits(&self) -> crate::gateway::enroll::EnrollLimits {
        let at_least_one = |n: u32| std::num::NonZeroU32::new(n).unwrap_or(std::num::NonZeroU32::MIN);
        crate::gateway::enroll::EnrollLimits {
            per_address_per_minute: at_least_one(self.enroll_per_address_per_minute),
            per_second: at_least_one(self.enroll_per_second),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestSection {
    /// Address of the REST API. Default `127.0.0.1:8080`.
    #[serde(default = "default_rest_listen")]
    pub listen: SocketAddr,
    /// Serve HTTPS with this certificate (PEM) instead of plain HTTP.
    pub tls_cert: Option<PathBuf>,
    /// Private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// A host whose last message is older than this is shown offline.
    #[serde(default = "default_offline_after")]
    pub offline_after: Duration,
    /// Requests a second each API token may make (sustained); 0 disables
    /// the limit. Beyond it: 429 with `Retry-After`.
    #[serde(default = "default_rate_limit_per_second")]
    pub rate_limit_per_second: u32,
    /// Requests a token may make in a burst above the sustained rate.
    #[serde(default = "default_rate_limit_burst")]
    pub rate_limit_burst: u32,
    /// Serve plain HTTP on an address that is not loopback (tokens cross the
    /// network in clear). Default false: such a `listen` needs `tls_cert`.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Most REST connections at once; further connections are closed at once.
    #[serde(default = "default_rest_max_connections")]
    pub max_connections: usize,
    /// Time allowed for a client's request head (and the TLS handshake)
    /// before the connection is closed.
    #[serde(default = "default_rest_header_read_timeout")]
    pub header_read_timeout: Duration,
}

impl RestSection {
    /// The connection limits these keys describe.
    pub fn limits(&self) -> crate::rest_serve::Limits {
        crate::rest_serve::Limits {
            max_connections: self.max_connections.max(1),
            header_read_timeout: self
                .header_read_timeout
                .as_std()
                .max(std::time::Duration::from_millis(100)),
        }
    }
}

fn default_rest_max_connections() -> usize {
    1024
}
fn default_rest_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSection {
    /// How long check-result history is kept (latest state per check is always kept).
    #[serde(default = "default_results_retention")]
    pub results: Duration,
    /// How often the retention job runs.
    #[serde(default = "default_retention_interval")]
    pub interval: Duration,
}

fn default_rate_limit_per_second() -> u32 {
    50
}
fn default_rate_limit_burst() -> u32 {
    200
}
fn default_agent_cert_lifetime() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_enrollment_ttl() -> Duration {
    Duration::from_secs(3600)
}
fn default_checkpoint_every() -> u64 {
    1000
}
fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(3600)
}
fn default_denials_per_minute() -> u32 {
    60
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/steward-controlplane")
}
fn default_grpc_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7443))
}
fn default_rest_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_max_connections() -> usize {
    20_000
}
fn default_max_message() -> ByteSize {
    ByteSize(4 << 20)
}
fn default_max_batch() -> u32 {
    1000
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(15)
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_enrollment_connections() -> usize {
    256
}
fn default_max_enrollment_connections_per_address() -> usize {
    8
}
fn default_enrollment_connection_lifetime() -> Duration {
    Duration::from_secs(10)
}
fn default_enroll_per_address_per_minute() -> u32 {
    60
}
fn default_enroll_per_second() -> u32 {
    50
}
fn default_ingest_max_rows() -> usize {
    5000
}
fn default_offline_after() -> Duration {
    Duration::from_secs(60)
}
fn default_results_retention() -> Duration {
    Duration::from_secs(7 * 86_400)
}
fn default_retention_interval() -> Duration {
    Duration::from_secs(600)
}

impl Default for GrpcSection {
    fn default() -> Self {
        parse_toml("<defaults>", "").expect("empty grpc section has defaults")
    }
}
impl Default for RestSection {
    fn default() -> Self {
        parse_toml("<defaults>", "").expect("empty rest section has defaults")
    }
}
impl Default for AuditSection {
    fn default() -> Self {
        parse_toml("<defaults>", "").expect("empty audit section has defaults")
    }
}
impl Default for PkiSection {
    fn default() -> Self {
        parse_toml("<defaults>", "").expect("empty pki section has defaults")
    }
}
impl Default for RetentionSection {
    fn default() -> Self {
        parse_toml("<defaults>", "").expect("empty retention section has defaults")
    }
}

impl ControlPlaneConfig {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let (cfg, src): (ControlPlaneConfig, String) = load_toml(path)?;
        cfg.validate(&path.display().to_string(), &src)?;
        Ok(cfg)
    }

    /// Parses and validates config source (`file` names it in errors).
    pub fn parse(file: &str, src: &str) -> Result<Self, ConfigError> {
        let cfg: ControlPlaneConfig = parse_toml(file, src)?;
        cfg.validate(file, src)?;
        Ok(cfg)
    }

    /// Defaults for everything; used by the quickstart before it writes its file.
    pub fn with_data_dir(data_dir: PathBuf) -> Self {
        let mut cfg: ControlPlaneConfig = parse_toml("<defaults>", "").expect("defaults parse");
        cfg.data_dir = data_dir;
        cfg
    }

    pub fn validate(&self, file: &str, src: &str) -> Result<(), ConfigError> {
        let at = |key: &str, msg: &str| ConfigError::at(file, src, key, msg);
        if let Some(url) = &self.database_url
            && !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return Err(at("database_url", "must start with sqlite:// or postgres://"));
        }
        if let Err(message) = self.check_database_tls() {
            return Err(at("database_url", &message));
        }
        if self.database.password.is_some() && !self.database_url().starts_with("postgres") {
            return Err(at("database.password", "applies to a postgres:// database_url only"));
        }
        if let Err(message) = self.check_rest_plaintext() {
            return Err(at("rest.listen", &message));
        }
        if self.rest.max_connections == 0 {
            return Err(at("rest.max_connections", "must be at least 1"));
        }
        if self.rest.header_read_timeout.as_std() < std::time::Duration::from_secs(1) {
            return Err(at("rest.header_read_timeout", "must be at least 1s"));
        }
        if self.rest.tls_cert.is_some() != self.rest.tls_key.is_some() {
            return Err(at("rest.tls_cert", "tls_cert and tls_key must be set together"));
        }
        if self.grpc.max_connections == 0 {
            return Err(at("grpc.max_connections", "must be at least 1"));
        }
        if self.grpc.max_enrollment_connections == 0 {
            return Err(at("grpc.max_enrollment_connections", "must be at least 1"));
        }
        if self.grpc.max_enrollment_connections_per_address == 0 {
            return Err(at("grpc.max_enrollment_connections_per_address", "must be at least 1"));
        }
        if self.grpc.enrollment_connection_lifetime.as_std().is_zero() {
            return Err(at("grpc.enrollment_connection_lifetime", "must be more than 0s"));
        }
        if self.grpc.enroll_per_address_per_minute == 0 {
            return Err(at("grpc.enroll_per_address_per_minute", "must be at least 1"));
        }
        if self.grpc.enroll_per_second == 0 {
            return Err(at("grpc.enroll_per_second", "must be at least 1"));
        }
        if self.grpc.max_batch == 0 || self.grpc.max_batch > 10_000 {
            return Err(at("grpc.max_batch", "must be between 1 and 10000"));
        }
        if self.grpc.max_message_size.0 < 64 * 1024 {
            return Err(at("grpc.max_message_size", "must be at least 64KiB"));
        }
        if self.grpc.ingest_workers == Some(0) || self.grpc.ingest_workers.is_some_and(|w| w > 64) {
            return Err(at("grpc.ingest_workers", "must be between 1 and 64"));
        }
        if self.grpc.ingest_max_rows == 0 {
            return Err(at("grpc.ingest_max_rows", "must be at least 1"));
        }
        if self.grpc.heartbeat_interval.as_std() < std::time::Duration::from_secs(1) {
            return Err(at("grpc.heartbeat_interval", "must be at least 1s"));
        }
        if self.pki.agent_cert_lifetime.as_std() < std::time::Duration::from_secs(60) {
            return Err(at("pki.agent_cert_lifetime", "must be at least 1m"));
        }
        if self.pki.enrollment_token_ttl.as_std() < std::time::Duration::from_secs(1) {
            return Err(at("pki.enrollment_token_ttl", "must be at least 1s"));
        }
        if self.retention.interval.as_std() < std::time::Duration::from_secs(1) {
            return Err(at("retention.interval", "must be at least 1s"));
        }
        if self.audit.checkpoint_every == 0 || self.audit.checkpoint_every > 1_000_000_000 {
            return Err(at("audit.checkpoint_every", "must be between 1 and 1000000000"));
        }
        let interval = self.audit.checkpoint_interval.as_std();
        if interval < std::time::Duration::from_secs(1) || interval > std::time::Duration::from_secs(7 * 86_400) {
            return Err(at("audit.checkpoint_interval", "must be between 1s and 7d"));
        }
        if self.audit.denials_per_minute == 0 {
            return Err(at("audit.denials_per_minute", "must be at least 1"));
        }
        if self.rest.rate_limit_per_second > 0 && self.rest.rate_limit_burst < self.rest.rate_limit_per_second {
            return Err(at("rest.rate_limit_burst", "must be at least rate_limit_per_second"));
        }
        if let Err((key, message)) = self.rbac.role_defs() {
            return Err(at(&key, &message));
        }
        if let Err((key, message)) = self.alerts.check() {
            return Err(at(&key, &message));
        }
        Ok(())
    }

    /// Refuses a PostgreSQL server that is not local unless the URL verifies
    /// its certificate (`sslmode=verify-full` or `verify-ca`) or
    /// `database.allow_insecure_tls` is set. Local: no host (the default
    /// socket), a socket path, `localhost`, 127.0.0.0/8, `::1`.
    pub fn check_database_tls(&self) -> Result<(), String> {
        let url = self.database_url();
        if !url.starts_with("postgres") || self.database.allow_insecure_tls {
            return Ok(());
        }
        let parsed = reqwest::Url::parse(&url).map_err(|e| format!("not a valid URL: {e}"))?;
        let param = |names: &[&str]| {
            parsed
                .query_pairs()
                .filter(|(k, _)| names.contains(&k.as_ref()))
                .map(|(_, v)| v.into_owned())
                .last()
        };
        let host = param(&["host"]).unwrap_or_else(|| parsed.host_str().unwrap_or_default().to_string());
        let bare = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        let local = bare.is_empty()
            || bare.starts_with('/')
            || bare == "localhost"
            || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        let mode = param(&["sslmode", "ssl-mode"]).unwrap_or_default().to_ascii_lowercase();
        if local || matches!(mode.as_str(), "verify-full" | "verify-ca") {
            return Ok(());
        }
        Err(format!(
            "PostgreSQL at {host} is not local and the URL does not verify its certificate: add \
             ?sslmode=verify-full (and &sslrootcert=PATH for a private CA), or set database.allow_insecure_tls = true"
        ))
    }

    /// Refuses plain HTTP on an address that is not loopback unless
    /// `rest.allow_plaintext` is set.
    pub fn check_rest_plaintext(&self) -> Result<(), String> {
        if self.rest.tls_cert.is_some() || self.rest.allow_plaintext || self.rest.listen.ip().is_loopback() {
            return Ok(());
        }
        Err(format!(
            "{} is not a loopback address: serve HTTPS (rest.tls_cert and rest.tls_key) or set rest.allow_plaintext = true",
            self.rest.listen
        ))
    }

    /// [`ControlPlaneConfig::database_url`] with `database.password` put in;
    /// an error names the key and the secret's source, never the value.
    pub fn database_url_with_password(&self) -> Result<String, String> {
        let url = self.database_url();
        let Some(secret) = &self.database.password else {
            return Ok(url);
        };
        let password = secret.resolve().map_err(|e| format!("key `database.password`: {e}"))?;
        let mut parsed = reqwest::Url::parse(&url).map_err(|e| format!("key `database_url`: not a valid URL: {e}"))?;
        if parsed.password().is_some() {
            return Err("key `database.password`: database_url has a password too; keep it in one place".into());
        }
        parsed.set_password(Some(&password)).map_err(|()| {
            "key `database.password`: database_url needs a host (postgres://USER@HOST/DB) to carry a password"
                .to_string()
        })?;
        Ok(parsed.into())
    }

    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("steward.db").display()))
    }
    pub fn server_cert_path(&self) -> PathBuf {
        self.grpc
            .cert
            .clone()
            .unwrap_or_else(|| self.data_dir.join("server.pem"))
    }
    pub fn server_key_path(&self) -> PathBuf {
        self.grpc
            .key
            .clone()
            .unwrap_or_else(|| self.data_dir.join("server.key"))
    }
    pub fn client_ca_path(&self) -> PathBuf {
        self.grpc
            .client_ca
            .clone()
            .unwrap_or_else(|| self.data_dir.join("ca.pem"))
    }
    pub fn ingest_workers(&self) -> usize {
        self.grpc
            .ingest_workers
            .unwrap_or(if self.database_url().starts_with("sqlite:") {
                1
            } else {
                2
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_has_sane_defaults() {
        let cfg = ControlPlaneConfig::parse("cp.toml", "").unwrap();
        assert_eq!(cfg.grpc.listen.port(), 7443);
        assert_eq!(cfg.rest.listen.to_string(), "127.0.0.1:8080");
        assert!(cfg.database_url().starts_with("sqlite://"));
        assert_eq!(cfg.ingest_workers(), 1);
    }

    #[test]
    fn audit_section_has_defaults_and_names_bad_keys() {
        let cfg = ControlPlaneConfig::parse("cp.toml", "").unwrap();
        assert_eq!(cfg.audit.checkpoint_every, 1000);
        assert_eq!(cfg.audit.checkpoint_interval.as_std().as_secs(), 3600);
        assert_eq!(cfg.audit.denials_per_minute, 60);
        assert!(cfg.audit.signing_key.is_none());
        let cfg = ControlPlaneConfig::parse(
            "cp.toml",
            "[audit]\ncheckpoint_every = 10\ncheckpoint_interval = \"5m\"\nsigning_key = \"/k\"\n",
        )
        .unwrap();
        assert_eq!(cfg.audit.checkpoint_interval.as_std().as_secs(), 300);
        for (src, key) in [
            ("[audit]\ncheckpoint_every = 0\n", "audit.checkpoint_every"),
            (
                "[audit]\ncheckpoint_interval = \"500ms\"\n",
                "audit.checkpoint_interval",
            ),
            ("[audit]\ndenials_per_minute = 0\n", "audit.denials_per_minute"),
        ] {
            let e = ControlPlaneConfig::parse("cp.toml", src).unwrap_err();
            assert_eq!((e.line, e.key.as_deref()), (Some(2), Some(key)), "{e}");
        }
    }

    #[test]
    fn rbac_roles_load_and_errors_name_the_key() {
        let src = "[rest]\nrate_limit_per_second = 5\nrate_limit_burst = 10\n\n[[rbac.roles]]\nname = \"oncall\"\nallow = [\"*:read\", \"jobs:*\"]\ndeny = [\"jobs:cancel\"]\nrules = [{ effect = \"allow\", permission = \"backups:*\", hosts = \"env=staging\" }]\n";
        let cfg = ControlPlaneConfig::parse("cp.toml", src).unwrap();
        assert_eq!((cfg.rest.rate_limit_per_second, cfg.rest.rate_limit_burst), (5, 10));
        let roles = cfg.rbac.role_defs().unwrap();
        assert_eq!(roles.len(), 1);
        assert_eq!(roles[0].rules.len(), 4);
        for (src, line, key) in [
            (
                "[[rbac.roles]]\nname = \"x\"\nallow = [\"jobs\"]\n",
                3,
                "rbac.roles[0].allow[0]",
            ),
            (
                "[[rbac.roles]]\nname = \"x\"\ndeny = [\"a:b\", \"jo*:read\"]\n",
                3,
                "rbac.roles[0].deny[1]",
            ),
            ("[[rbac.roles]]\nname = \"admin\"\n", 2, "rbac.roles[0].name"),
            (
                "[[rbac.roles]]\nname = \"a\"\n[[rbac.roles]]\nname = \"b\"\nrules = [{ effect = \"deny\", permission = \"x:y\", hosts = \"env in (\" }]\n",
                5,
                "rbac.roles[1].rules[0].hosts",
            ),
        ] {
            let e = ControlPlaneConfig::parse("cp.toml", src).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{e}");
            assert_eq!(e.line, Some(line), "{e}");
        }
        let e = ControlPlaneConfig::parse(
            "cp.toml",
            "[[rbac.roles]]\nname = \"x\"\nrules = [{ effect = \"maybe\", permission = \"a:b\" }]\n",
        )
        .unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = ControlPlaneConfig::parse("cp.toml", "data_dir = \"/x\"\n[grpc]\nlisten = \"nope\"\n").unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(3), Some("grpc.listen")), "{e}");
        let e = ControlPlaneConfig::parse("cp.toml", "[rest]\nlisten = \"127.0.0.1:1\"\ncolour = 1\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("colour"), "{e}");
        let e = ControlPlaneConfig::parse("cp.toml", "\ndatabase_url = \"mysql://x\"\n").unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(2), Some("database_url")), "{e}");
        let e = ControlPlaneConfig::parse("cp.toml", "[grpc]\nmax_batch = 0\n").unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(2), Some("grpc.max_batch")), "{e}");
        assert!(e.to_string().starts_with("cp.toml:2: key `grpc.max_batch`: "), "{e}");
    }

    #[test]
    fn a_remote_postgres_url_must_verify_the_server_certificate() {
        for url in [
            "postgres://steward@db.example.com/steward",
            "postgres://steward@db.example.com/steward?sslmode=require",
            "postgresql://steward@10.0.0.5:5432/steward?sslmode=prefer",
            "postgres://steward@localhost/steward?host=db.example.com",
        ] {
            let src = format!("database_url = {url:?}\n");
            let e = ControlPlaneConfig::parse("cp.toml", &src).unwrap_err();
            assert_eq!(
                (e.line, e.key.as_deref()),
                (Some(1), Some("database_url")),
                "{url}: {e}"
            );
            assert!(
                e.message.contains("sslmode=verify-full") && e.message.contains("allow_insecure_tls"),
                "{e}"
            );
            let allowed = format!("{src}[database]\nallow_insecure_tls = true\n");
            ControlPlaneConfig::parse("cp.toml", &allowed).unwrap();
        }
        for url in [
            "postgres://steward@db.example.com/steward?sslmode=verify-full",
            "postgres://steward@db.example.com/steward?sslmode=verify-ca&sslrootcert=/etc/steward/db-ca.pem",
            "postgres://postgres@127.0.0.1:55432/postgres",
            "postgres://steward@localhost/steward",
            "postgres://steward@[::1]/steward",
            "postgres:///steward?host=/run/postgresql",
            "sqlite:///var/lib/steward/steward.db",
        ] {
            ControlPlaneConfig::parse("cp.toml", &format!("database_url = {url:?}\n")).unwrap();
        }
    }

    #[test]
    fn rest_beyond_loopback_needs_tls_or_allow_plaintext_and_has_connection_limits() {
        let e = ControlPlaneConfig::parse("cp.toml", "[rest]\nlisten = \"0.0.0.0:8080\"\n").unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (Some(2), Some("rest.listen")), "{e}");
        assert!(e.message.contains("rest.allow_plaintext"), "{e}");
        ControlPlaneConfig::parse("cp.toml", "[rest]\nlisten = \"0.0.0.0:8080\"\nallow_plaintext = true\n").unwrap();
        ControlPlaneConfig::parse(
            "cp.toml",
            "[rest]\nlisten = \"10.0.0.1:8443\"\ntls_cert = \"/c.pem\"\ntls_key = \"/c.key\"\n",
        )
        .unwrap();
        ControlPlaneConfig::parse("cp.toml", "[rest]\nlisten = \"[::1]:8080\"\n").unwrap();
        let cfg = ControlPlaneConfig::parse("cp.toml", "").unwrap();
        let limits = cfg.rest.limits();
        assert_eq!(
            (limits.max_connections, limits.header_read_timeout.as_secs()),
            (1024, 10)
        );
        for (src, key) in [
            ("[rest]\nmax_connections = 0\n", "rest.max_connections"),
            ("[rest]\nheader_read_timeout = \"10ms\"\n", "rest.header_read_timeout"),
        ] {
            let e = ControlPlaneConfig::parse("cp.toml", src).unwrap_err();
            assert_eq!((e.line, e.key.as_deref()), (Some(2), Some(key)), "{e}");
        }
    }

    #[test]
    fn the_database_password_comes_from_a_secret_source_and_is_not_shown() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("db-password");
        std::fs::write(&pw, "p@ss/word\n").unwrap();
        let src = format!(
            "database_url = \"postgres://steward@127.0.0.1:5432/steward\"\n[database]\npassword = {{ file = {:?} }}\n",
            pw.display().to_string()
        );
        let cfg = ControlPlaneConfig::parse("cp.toml", &src).unwrap();
        assert!(!format!("{cfg:?}").contains("p@ss"));
        let url = cfg.database_url_with_password().unwrap();
        assert_eq!(url, "postgres://steward:p%40ss%2Fword@127.0.0.1:5432/steward");
        assert!(!steward_daemon::redact::url(&url).contains("p%40ss"));
        let missing = src.replace("db-password", "missing");
        let e = ControlPlaneConfig::parse("cp.toml", &missing)
            .unwrap()
            .database_url_with_password()
            .unwrap_err();
        assert!(
            e.starts_with("key `database.password`: cannot read ") && e.contains("missing"),
            "{e}"
        );
        let twice = src.replace("steward@", "steward:inline@");
        let e = ControlPlaneConfig::parse("cp.toml", &twice)
            .unwrap()
            .database_url_with_password()
            .unwrap_err();
        assert!(e.contains("one place") && !e.contains("inline"), "{e}");
        let e = ControlPlaneConfig::parse("cp.toml", "[database]\npassword = { env = \"PW\" }\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("database.password"), "{e}");
    }
}
