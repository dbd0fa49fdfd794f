//! The REST client behind `stewardctl`: command-line definition, requests
//! (following pagination to the end), and JSON output; tables are in [`table`].
//!
//! Every failure is one [`ClientError`] whose `Display` is the one line the
//! binary prints after `stewardctl: `, and whose [`ClientError::exit_code`]
//! is the binary's exit code; the token is never printed. The `audit`
//! commands are in [`audit`].
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use http::StatusCode;
use reqwest::Url;
use serde_json::Value as Json;

use crate::api::Problem;
use crate::api::views::{CheckView, HostView};

mod alerts;
mod audit;
mod jobs;
mod kpis;
mod rbac;
mod rollouts;
mod slo;
mod table;
pub use alerts::{AlertsCommand, SilencesCommand};
pub use audit::AuditCommand;
pub use jobs::{BackupsCommand, JobsCommand};
pub use kpis::KpisCommand;
pub use rbac::{RolesCommand, TokensCommand};
pub use rollouts::RolloutsCommand;
pub use slo::SlosCommand;
pub use table::{ago, audit_table, checks_table, host_detail, hosts_table};

/// Default `--server`.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";
/// Page size used when following pagination (the API's maximum).
const PAGE_LIMIT: &str = "1000";

/// `stewardctl`: look at the fleet through the control plane's REST API.
#[derive(Debug, Parser)]
#[command(name = "stewardctl", version, about, propagate_version = true)]
pub struct Cli {
    /// Control plane REST URL.
    #[arg(long, global = true, env = "STEWARD_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// API token (`stw_...`).
    #[arg(long, global = true, env = "STEWARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file with the CA that signed the control plane's HTTPS certificate
    /// (in addition to the system's trusted roots).
    #[arg(long, global = true, env = "STEWARD_CA_CERT", value_name = "PATH")]
    pub ca_cert: Option<PathBuf>,
    /// Send the token over plain `http://` to a host that is not loopback
    /// (anyone on the path can read it). Without it such a server is refused.
    #[arg(long, global = true, env = "STEWARD_INSECURE")]
    pub insecure: bool,
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable tables.
    Table,
    /// Exactly the API's JSON (lists: all pages merged into one `items`).
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Hosts known to the control plane.
    Hosts {
        #[command(subcommand)]
        command: HostsCommand,
    },
    /// Latest check results.
    Checks {
        #[command(subcommand)]
        command: ChecksCommand,
    },
    /// One-time tokens that let new agents enroll.
    #[command(name = "enroll-tokens")]
    EnrollTokens {
        #[command(subcommand)]
        command: EnrollTokensCommand,
    },
    /// The tamper-evident audit log: list, export, verify.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Service level objectives: apply definitions, list, show status.
    Slos {
        #[command(subcommand)]
        command: SlosCommand,
    },
    /// API tokens: create (shown once), list, revoke.
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// Roles: built in, from the config file, or defined through the API.
    Roles {
        #[command(subcommand)]
        command: RolesCommand,
    },
    /// Jobs: typed actions run by agents.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Backups as the agents report them.
    Backups {
        #[command(subcommand)]
        command: BackupsCommand,
    },
    /// Fleet-wide rollouts: canary and waves with an error budget, gates and rollback.
    Rollouts {
        #[command(subcommand)]
        command: RolloutsCommand,
    },
    /// Alerts: list, show, acknowledge.
    Alerts {
        #[command(subcommand)]
        command: AlertsCommand,
    },
    /// Silences: alerts matching them fire without notifications.
    Silences {
        #[command(subcommand)]
        command: SilencesCommand,
    },
    /// Fleet KPIs: values, groups and trends.
    Kpis {
        #[command(subcommand)]
        command: KpisCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum EnrollTokensCommand {
    /// Create a token; it is shown once. Give it to `steward-agent enroll --token`.
    Create {
        /// Labels for the hosts that enroll with it, e.g. `env=prod,role=web`.
        #[arg(long)]
        labels: Option<String>,
        /// Validity, e.g. `1h` (default: the control plane's setting).
        #[arg(long)]
        ttl: Option<String>,
        /// How many hosts may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: i64,
        /// The host IDs it may enroll, exact or `*` patterns, e.g.
        /// `web-01,web-*` (default: any new host). Re-enrolling an existing,
        /// revoked host needs a token that names it exactly.
        #[arg(long, value_delimiter = ',', value_name = "ID,...")]
        hosts: Vec<String>,
    },
    /// List enrollment tokens (never their secrets) and what is left of them.
    List,
    /// Revoke an enrollment token by ID: no host can enroll with it any more.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum HostsCommand {
    /// List hosts, optionally only those whose labels match a selector.
    List {
        /// Label selector, e.g. `env=prod,role in (web,api)`.
        #[arg(long, short = 'l')]
        selector: Option<String>,
    },
    /// Show one host (by ID or unique hostname) and its checks.
    Show {
        /// Host ID or unique hostname.
        host: String,
    },
    /// Revoke a host: its certificates are refused from now on and its live
    /// stream is closed; its data is kept.
    Revoke {
        /// Host ID (a change: never by hostname).
        host: String,
    },
    /// Replace a host's control-plane labels (what selectors, token scopes
    /// and role rules match): `hosts labels HOST env=prod,team=web`; "" clears them.
    Labels {
        /// Host ID (a change: never by hostname).
        host: String,
        /// All of the host's labels, `k=v,...`.
        labels: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ChecksCommand {
    /// List the latest check results across hosts.
    List {
        /// Only this host (ID or unique hostname).
        #[arg(long)]
        host: Option<String>,
        /// Only checks in this status.
        #[arg(long, value_enum)]
        status: Option<StatusArg>,
        /// Only hosts whose labels match this selector.
        #[arg(long, short = 'l')]
        selector: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusArg {
    Ok,
    Warning,
    Critical,
    Unknown,
}

impl StatusArg {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warning => "warning",
            Self::Critical => "critical",
            Self::Unknown => "unknown",
        }
    }
}

/// One failure of a `stewardctl` command, displayed as one line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("invalid --server URL {url:?}: {reason}")]
    InvalidServer { url: String, reason: String },
    #[error("cannot read --ca-cert {path}: {reason}")]
    CaCert { path: String, reason: String },
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    #[error(
        "refusing to send the token over plain http:// to {host}: use https://, or --insecure if the network is trusted"
    )]
    PlaintextToken { host: String },
    #[error("the token contains characters that cannot be sent in an HTTP header")]
    InvalidToken,
    #[error("cannot reach the control plane at {server}: {reason}")]
    Unreachable { server: String, reason: String },
    #[error("unauthorized: check --token or STEWARD_TOKEN")]
    Unauthorized,
    #[error("host {0:?} not found")]
    HostNotFound(String),
    #[error("invalid {field}: {detail}")]
    Invalid { field: String, detail: String },
    #[error("{title}: {detail} (HTTP {status})")]
    Api { status: u16, title: String, detail: String },
    #[error("unexpected response from the control plane: {0}")]
    Protocol(String),
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    #[error("cannot write {path}: {reason}")]
    WriteFile { path: String, reason: String },
    /// `audit verify` found proof of tampering.
    #[error("audit log tampered: {0}")]
    Tampered(String),
    /// `audit verify` had nothing usable to verify.
    #[error("{0}")]
    Unusable(String),
    /// `jobs run --wait`: a job did not succeed.
    #[error("job {id} {state}{}", if reason.is_empty() { String::new() } else { format!(": {reason}") })]
    JobEnded { id: String, state: String, reason: String },
    /// `rollouts watch`: the rollout did not succeed (exit code by its end state).
    #[error("rollout {id} {state}{}", if reason.is_empty() { String::new() } else { format!(": {reason}") })]
    RolloutEnded { id: String, state: String, reason: String },
}

impl ClientError {
    /// The exit code for this failure: 2 when `audit verify` had no usable
    /// input, else 1 (usage errors exit 2 from clap before this).
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Unusable(_) => 2,
            ClientError::RolloutEnded { state, .. } => match state.as_str() {
                "rolled_back" => 3,
                "aborted" => 4,
                _ => 5,
            },
            _ => 1,
        }
    }

    /// Whether this is a closed stdout (`stewardctl ... | head`): not worth a message.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, ClientError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// Whether `url` names this machine: `localhost`, 127.0.0.0/8 or `::1`.
fn loopback(url: &Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host == "localhost" || host.ends_with(".localhost"),
    }
}

/// An HTTP failure before it is given its meaning by the caller.
struct Failure {
    status: StatusCode,
    problem: Option<Problem>,
}

/// A client of one control plane.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    /// `base` as shown in messages (without any password).
    shown: String,
    token: Option<String>,
}

impl Client {
    /// The client `cli` asks for: [`Client::new`] after refusing to send a
    /// token over plain `http://` to a host that is not loopback, unless
    /// `--insecure` is given.
    pub fn from_cli(cli: &Cli) -> Result<Client, ClientError> {
        let client = Client::new(&cli.server, cli.token.clone(), cli.ca_cert.as_deref())?;
        if client.token.is_some() && client.base.scheme() == "http" && !cli.insecure && !loopback(&client.base) {
            return Err(ClientError::PlaintextToken {
                host: client.base.host_str().unwrap_or_default().to_string(),
            });
        }
        Ok(client)
    }

    /// A client for `server` (`http://` or `https://`).
    pub fn new(server: &str, token: Option<String>, ca_cert: Option<&std::path::Path>) -> Result<Client, ClientError> {
        let invalid = |reason: &str| ClientError::InvalidServer {
            url: server.to_string(),
            reason: reason.to_string(),
        };
        let base = Url::parse(server.trim()).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(invalid("expected http:// or https://"));
        }
        if base.host_str().is_none() {
            return Err(invalid("no host"));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(invalid("a query or fragment is not allowed"));
        }
        let mut shown = base.clone();
        if shown.password().is_some() {
            let _ = shown.set_password(Some("***"));
        }
        let shown = shown.as_str().trim_end_matches('/').to_string();
        let tls = tls_config(base.scheme() == "https", ca_cert)?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("stewardctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Tls(error_chain(&e)))?;
        let token = token.map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
        Ok(Client {
            http,
            base,
            shown,
            token,
        })
    }

    /// `/api/v1/<segments...>` under the server URL, each segment percent-encoded.
    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        {
            // `base` is http(s) with a host, so it can be a base.
            if let Ok(mut path) = url.path_segments_mut() {
                path.pop_if_empty().extend(["api", "v1"]).extend(segments);
            }
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    async fn get(&self, url: Url) -> Result<Result<Json, Failure>, ClientError> {
        self.send(http::Method::GET, url, None).await
    }

    async fn send(
        &self,
        method: http::Method,
        url: Url,
        body: Option<&Json>,
    ) -> Result<Result<Json, Failure>, ClientError> {
        let mut req = self
            .http
            .request(method, url)
            .header(http::header::ACCEPT, "application/json");
        if let Some(body) = body {
            req = req.json(body);
        }
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.transport_error(&e))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map(Ok).map_err(|e| {
                ClientError::Protocol(format!("HTTP {} with a body that is not JSON: {e}", status.as_u16()))
            });
        }
        Ok(Err(Failure {
            status,
            problem: serde_json::from_slice::<Problem>(&bytes).ok(),
        }))
    }

    fn transport_error(&self, e: &reqwest::Error) -> ClientError {
        if e.is_builder() {
            return ClientError::InvalidToken;
        }
        let reason = if e.is_timeout() {
            "timed out".to_string()
        } else {
            error_chain(e)
        };
        ClientError::Unreachable {
            server: self.shown.clone(),
            reason,
        }
    }

    /// Every page of a list, merged: `{"items": [...], "next_cursor": null}`.
    async fn list_all(&self, path: &[&str], query: &[(&str, &str)], host: Option<&str>) -> Result<Json, ClientError> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut q: Vec<(&str, &str)> = query.to_vec();
            q.push(("limit", PAGE_LIMIT));
            if let Some(c) = &cursor {
                q.push(("cursor", c));
            }
            let page = self.get(self.url(path, &q)).await?.map_err(|f| meaning(f, host))?;
            let (Some(page_items), Some(next)) = (page.get("items").and_then(Json::as_array), page.get("next_cursor"))
            else {
                return Err(ClientError::Protocol("a list without items or next_cursor".into()));
            };
            items.extend(page_items.iter().cloned());
            match next.as_str() {
                None => break,
                Some(next) if cursor.as_deref() == Some(next) => {
                    return Err(ClientError::Protocol(
                        "the server returned the same cursor twice".into(),
                    ));
                }
                Some(next) => cursor = Some(next.to_string()),
            }
        }
        Ok(serde_json::json!({ "items": items, "next_cursor": null }))
    }

    /// `GET /api/v1/hosts`, all pages.
    /// `POST /api/v1/enrollment-tokens`.
    pub async fn create_enrollment_token(&self, body: &Json) -> Result<Json, ClientError> {
        let url = self.url(&["enrollment-tokens"], &[]);
        self.send(http::Method::POST, url, Some(body))
            .await?
            .map_err(|f| meaning(f, None))
    }

    /// `POST /api/v1/hosts/{host}/revoke`.
    pub async fn revoke_host(&self, host: &str) -> Result<Json, ClientError> {
        let url = self.url(&["hosts", host, "revoke"], &[]);
        self.send(http::Method::POST, url, None)
            .await?
            .map_err(|f| meaning(f, Some(host)))
    }

    pub async fn list_hosts(&self, selector: Option<&str>) -> Result<Json, ClientError> {
        let query: Vec<(&str, &str)> = selector.map(|s| ("selector", s)).into_iter().collect();
        self.list_all(&["hosts"], &query, None).await
    }

    /// `GET /api/v1/hosts/{host}`.
    pub async fn get_host(&self, host: &str) -> Result<Json, ClientError> {
        self.get(self.url(&["hosts", host], &[]))
            .await?
            .map_err(|f| meaning(f, Some(host)))
    }

    /// `GET /api/v1/hosts/{host}/checks`, all pages.
    pub async fn host_checks(&self, host: &str) -> Result<Json, ClientError> {
        self.list_all(&["hosts", host, "checks"], &[], Some(host)).await
    }

    /// `GET /api/v1/checks`, all pages.
    pub async fn list_checks(
        &self,
        host: Option<&str>,
        status: Option<&str>,
        selector: Option<&str>,
    ) -> Result<Json, ClientError> {
        let mut query = Vec::new();
        query.extend(host.map(|h| ("host", h)));
        query.extend(status.map(|s| ("status", s)));
        query.extend(selector.map(|s| ("selector", s)));
        self.list_all(&["checks"], &query, host).await
    }
}

/// What an HTTP failure means to the user; `host` is the host the request named.
fn meaning(f: Failure, host: Option<&str>) -> ClientError {
    let detail = f.problem.as_ref().map(|p| p.detail.clone()).unwrap_or_default();
    match f.status {
        StatusCode::UNAUTHORIZED => ClientError::Unauthorized,
        StatusCode::NOT_FOUND
            if host.is_some() && f.problem.as_ref().is_some_and(|p| p.field.as_deref() == Some("host")) =>
        {
            ClientError::HostNotFound(host.unwrap_or_default().to_string())
        }
        StatusCode::BAD_REQUEST | StatusCode::CONFLICT if f.problem.as_ref().is_some_and(|p| p.field.is_some()) => {
            let field = f.problem.as_ref().and_then(|p| p.field.clone()).unwrap_or_default();
            ClientError::Invalid { field, detail }
        }
        status => ClientError::Api {
            status: status.as_u16(),
            title: f
                .problem
                .as_ref()
                .map(|p| p.title.clone())
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string()),
            detail: if detail.is_empty() { "no details".into() } else { detail },
        },
    }
}

/// The innermost useful message of an error chain ("connection refused", ...).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost: &(dyn std::error::Error + 'static) = e;
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return "connection refused".into(),
                std::io::ErrorKind::TimedOut => return "timed out".into(),
                std::io::ErrorKind::ConnectionReset => return "connection reset".into(),
                _ => {}
            }
        }
        innermost = err;
        current = err.source();
    }
    let text = innermost.to_string();
    // Strip the OS error suffix: "Connection refused (os error 111)".
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// rustls with the workspace's one crypto provider (ring). Plain `http://`
/// needs no roots; `https://` trusts the system roots plus `--ca-cert`.
fn tls_config(https: bool, ca_cert: Option<&std::path::Path>) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    if https {
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
    }
    if let Some(path) = ca_cert {
        use rustls_pki_types::pem::PemObject;
        let ca_error = |reason: String| ClientError::CaCert {
            path: path.display().to_string(),
            reason,
        };
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| ca_error(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ca_error(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_error("no PEM certificate in the file".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

// ---------------------------------------------------------------- commands

/// Runs one parsed command line, writing results to `out`.
pub async fn run(cli: Cli, out: &mut impl Write) -> Result<(), ClientError> {
    if let Command::Audit { command } = &cli.command {
        // `audit verify -f FILE` works without a (valid) server.
        audit::run(command, &cli, out).await?;
        out.flush()?;
        return Ok(());
    }
    if rbac::handles(&cli.command) {
        rbac::run(&cli, out).await?;
        out.flush()?;
        return Ok(());
    }
    match &cli.command {
        Command::Jobs { command } => {
            jobs::run_jobs(command, &cli, out).await?;
            out.flush()?;
            return Ok(());
        }
        Command::Backups { command } => {
            jobs::run_backups(command, &cli, out).await?;
            out.flush()?;
            return Ok(());
        }
        Command::Slos { command } => {
            slo::run(command, &cli, out).await?;
            out.flush()?;
            return Ok(());
        }
        Command::Rollouts { command } => {
            rollouts::run(command, &cli, out).await?;
            out.flush()?;
            return Ok(());
        }
        Command::Alerts { command } => {
            alerts::run(command, &cli, out).await?;
            out.flush()?;
            return Ok(());
        }
        Command::Silences { command } => {
            alerts::run_silences(command, &cli, out).await?;
            out.flush()?;
            return Ok(());
        }
        Command::Kpis { command } => {
            kpis::run(command, &cli, out).await?;
            out.flush()?;
            return Ok(());
        }
        _ => {}
    }
    let client = Client::from_cli(&cli)?;
    let now = steward_shared::now_ms();
    match cli.command {
        Command::Hosts {
            command: HostsCommand::List { selector },
        } => {
            let list = client.list_hosts(selector.as_deref()).await?;
            match cli.output {
                Output::Json => write_json(out, &list)?,
                Output::Table => out.write_all(hosts_table(&items::<HostView>(&list)?, now).as_bytes())?,
            }
        }
        Command::Hosts {
            command: HostsCommand::Show { host },
        } => {
            let view = client.get_host(&host).await?;
            match cli.output {
                Output::Json => write_json(out, &view)?,
                Output::Table => {
                    let host_view: HostView = serde_json::from_value(view)
                        .map_err(|e| ClientError::Protocol(format!("unexpected host JSON: {e}")))?;
                    let checks = client.host_checks(&host_view.id).await?;
                    out.write_all(host_detail(&host_view, &items::<CheckView>(&checks)?, now).as_bytes())?;
                }
            }
        }
        Command::EnrollTokens {
            command: EnrollTokensCommand::List,
        } => {
            let list = client.list_all(&["enrollment-tokens"], &[], None).await?;
            match cli.output {
                Output::Json => write_json(out, &list)?,
                Output::Table => {
                    let text = |t: &Json, k: &str| t.get(k).and_then(Json::as_str).unwrap_or("").to_string();
                    let num = |t: &Json, k: &str| t.get(k).and_then(Json::as_i64).unwrap_or(0);
                    let rows: Vec<Vec<String>> = list
                        .get("items")
                        .and_then(Json::as_array)
                        .into_iter()
                        .flatten()
                        .map(|t| {
                            let labels = t
                                .get("labels")
                                .and_then(Json::as_object)
                                .map(|m| {
                                    m.iter()
                                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                                        .collect::<Vec<_>>()
                                        .join(",")
                                })
                                .unwrap_or_default();
                            let hosts = t
                                .get("hosts")
                                .and_then(Json::as_array)
                                .map(|h| h.iter().filter_map(Json::as_str).collect::<Vec<_>>().join(","))
                                .unwrap_or_else(|| "any new".into());
                            vec![
                                text(t, "id"),
                                text(t, "state"),
                                format!("{}/{}", num(t, "uses_left"), num(t, "max_uses")),
                                if labels.is_empty() { "-".into() } else { labels },
                                hosts,
                                human_duration_ms(num(t, "expires_at_ms").saturating_sub(now)),
                                text(t, "created_by"),
                            ]
                        })
                        .collect();
                    out.write_all(
                        table::table(
                            &[
                                "ID",
                                "STATE",
                                "USES LEFT",
                                "LABELS",
                                "HOSTS",
                                "EXPIRES IN",
                                "CREATED BY",
                            ],
                            &rows,
                        )
                        .as_bytes(),
                    )?;
                }
            }
        }
        Command::EnrollTokens {
            command: EnrollTokensCommand::Revoke { id },
        } => {
            let url = client.url(&["enrollment-tokens", &id], &[]);
            let revoked = client
                .send(http::Method::DELETE, url, None)
                .await?
                .map_err(|f| meaning(f, None))?;
            match cli.output {
                Output::Json => write_json(out, &revoked)?,
                Output::Table => writeln!(
                    out,
                    "enrollment token {id} revoked: no host can enroll with it any more"
                )?,
            }
        }
        Command::EnrollTokens {
            command:
                EnrollTokensCommand::Create {
                    labels,
                    ttl,
                    uses,
                    hosts,
                },
        } => {
            let labels = parse_labels(labels.as_deref().unwrap_or(""))?;
            let mut body = serde_json::json!({ "labels": labels, "uses": uses });
            if let Some(ttl) = ttl {
                body["ttl"] = Json::String(ttl);
            }
            if !hosts.is_empty() {
                body["hosts"] = serde_json::json!(hosts);
            }
            let created = client.create_enrollment_token(&body).await?;
            match cli.output {
                Output::Json => write_json(out, &created)?,
                Output::Table => {
                    let field = |k: &str| created.get(k).and_then(Json::as_str).unwrap_or("").to_string();
                    writeln!(out, "{}", field("token"))?;
                    let expires = created.get("expires_at_ms").and_then(Json::as_i64).unwrap_or(0);
                    writeln!(
                        out,
                        "# id {}, {} use(s), expires in {}; CA fingerprint {}",
                        field("id"),
                        uses,
                        human_duration_ms(expires.saturating_sub(now)),
                        field("ca_fingerprint")
                    )?;
                    writeln!(
                        out,
                        "# on the new host: steward-agent enroll --server https://CONTROL-PLANE:7443 --token <the token above>"
                    )?;
                }
            }
        }
        Command::Hosts {
            command: HostsCommand::Revoke { host },
        } => {
            let revoked = client.revoke_host(&host).await?;
            match cli.output {
                Output::Json => write_json(out, &revoked)?,
                Output::Table => writeln!(
                    out,
                    "host {} revoked: its certificates are refused and its stream is closed",
                    revoked.get("host_id").and_then(Json::as_str).unwrap_or(&host)
                )?,
            }
        }
        Command::Checks {
            command: ChecksCommand::List { host, status, selector },
        } => {
            let list = client
                .list_checks(host.as_deref(), status.map(StatusArg::as_str), selector.as_deref())
                .await?;
            match cli.output {
                Output::Json => write_json(out, &list)?,
                Output::Table => out.write_all(checks_table(&items::<CheckView>(&list)?, now, true).as_bytes())?,
            }
        }
        Command::Audit { .. }
        | Command::Slos { .. }
        | Command::Rollouts { .. }
        | Command::Alerts { .. }
        | Command::Silences { .. }
        | Command::Tokens { .. }
        | Command::Roles { .. }
        | Command::Jobs { .. }
        | Command::Backups { .. }
        | Command::Kpis { .. }
        | Command::Hosts {
            command: HostsCommand::Labels { .. },
        } => {} // handled above
    }
    out.flush()?;
    Ok(())
}

/// `k=v,k2=v2` into a map; a malformed pair is a one-line error.
fn parse_labels(s: &str) -> Result<std::collections::BTreeMap<String, String>, ClientError> {
    let mut labels = std::collections::BTreeMap::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(ClientError::Invalid {
                field: "labels".into(),
                detail: format!("{pair:?} is not key=value"),
            });
        };
        labels.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(labels)
}

fn human_duration_ms(ms: i64) -> String {
    let secs = ms.max(0) / 1000;
    match secs {
        s if s >= 86_400 => format!("{}d", s / 86_400),
        s if s >= 3600 => format!("{}h", s / 3600),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn write_json(out: &mut impl Write, value: &Json) -> Result<(), ClientError> {
    serde_json::to_writer_pretty(&mut *out, value).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

fn items<T: serde::de::DeserializeOwned>(list: &Json) -> Result<Vec<T>, ClientError> {
    let items = list.get("items").cloned().unwrap_or(Json::Array(Vec::new()));
    serde_json::from_value(items).map_err(|e| ClientError::Protocol(format!("unexpected list item: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_segments_and_keep_a_base_path() {
        let c = Client::new("http://cp.example:8080/steward/", None, None).unwrap();
        let u = c.url(&["hosts", "a b/c", "checks"], &[("selector", "env=prod,x in (a)")]);
        assert_eq!(
            u.as_str(),
            "http://cp.example:8080/steward/api/v1/hosts/a%20b%2Fc/checks?selector=env%3Dprod%2Cx+in+%28a%29"
        );
        let c = Client::new("https://cp.example", None, None).unwrap();
        assert_eq!(c.url(&["hosts"], &[]).as_str(), "https://cp.example/api/v1/hosts");
    }

    #[test]
    fn bad_server_urls_are_one_line_errors() {
        for bad in ["", "cp:8080", "ftp://x", "http://", "http://x/?q=1"] {
            let e = Client::new(bad, None, None).unwrap_err();
            assert!(matches!(e, ClientError::InvalidServer { .. }), "{bad:?}: {e}");
            assert!(!e.to_string().contains('\n'));
        }
        let e = Client::new("http://x", None, Some(std::path::Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(
            e.to_string().starts_with("cannot read --ca-cert /nonexistent/ca.pem"),
            "{e}"
        );
    }

    #[test]
    fn failures_get_their_meaning() {
        let problem = |status: u16, field: Option<&str>| Failure {
            status: StatusCode::from_u16(status).unwrap(),
            problem: Some(Problem {
                type_: "t".into(),
                title: "Title".into(),
                status,
                detail: "the detail".into(),
                field: field.map(String::from),
            }),
        };
        assert_eq!(
            meaning(problem(401, None), None).to_string(),
            "unauthorized: check --token or STEWARD_TOKEN"
        );
        assert_eq!(
            meaning(problem(404, Some("host")), Some("x")).to_string(),
            "host \"x\" not found"
        );
        assert_eq!(
            meaning(problem(400, Some("selector")), None).to_string(),
            "invalid selector: the detail"
        );
        assert_eq!(
            meaning(problem(404, None), Some("x")).to_string(),
            "Title: the detail (HTTP 404)"
        );
        let bare = Failure {
            status: StatusCode::BAD_GATEWAY,
            problem: None,
        };
        assert_eq!(meaning(bare, None).to_string(), "Bad Gateway: no details (HTTP 502)");
    }

    #[test]
    fn cli_parses_the_contract_commands() {
        let cli = Cli::try_parse_from([
            "stewardctl",
            "-o",
            "json",
            "checks",
            "list",
            "--status",
            "critical",
            "--host",
            "h",
        ])
        .unwrap();
        assert_eq!(cli.output, Output::Json);
        assert!(matches!(
            cli.command,
            Command::Checks {
                command: ChecksCommand::List {
                    status: Some(StatusArg::Critical),
                    ..
                }
            }
        ));
        let cli = Cli::try_parse_from([
            "stewardctl",
            "hosts",
            "list",
            "--selector",
            "env=prod",
            "--server",
            "http://x:1",
        ])
        .unwrap();
        assert_eq!(cli.server, "http://x:1");
        assert!(Cli::try_parse_from(["stewardctl", "checks", "list", "--status", "bad"]).is_err());
        assert!(Cli::try_parse_from(["stewardctl", "hosts", "show"]).is_err());
    }

    #[test]
    fn a_token_is_not_sent_over_plain_http_to_another_host_without_insecure() {
        let cli = |server: &str, token: bool, insecure: bool| {
            let mut args = vec!["stewardctl", "--server", server, "hosts", "list"];
            if token {
                args.extend(["--token", "stw_secret"]);
            }
            if insecure {
                args.push("--insecure");
            }
            Cli::try_parse_from(args).unwrap()
        };
        for server in [
            "http://cp.example:8080",
            "http://10.0.0.5:8080",
            "http://[2001:db8::1]:8080",
        ] {
            let e = Client::from_cli(&cli(server, true, false)).unwrap_err();
            assert!(matches!(e, ClientError::PlaintextToken { .. }), "{server}: {e}");
            let shown = e.to_string();
            assert!(
                shown.contains("--insecure") && !shown.contains('\n') && !shown.contains("stw_secret"),
                "{shown}"
            );
            assert_eq!(e.exit_code(), 1);
            Client::from_cli(&cli(server, true, true)).unwrap();
            Client::from_cli(&cli(server, false, false)).unwrap();
        }
        for server in [
            "http://127.0.0.1:8080",
            "http://127.1.2.3:8080",
            "http://localhost:8080",
            "http://[::1]:8080",
            "https://cp.example",
        ] {
            Client::from_cli(&cli(server, true, false)).unwrap();
        }
    }
}
