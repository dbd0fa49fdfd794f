//! `steward-controlplane quickstart`: on one machine with nothing else set up,
//! a control plane on embedded SQLite (or `--database-url postgres://...`),
//! its CA, and one local agent connected over mTLS. Writes real config files
//! into DIR, so what runs is what an operator would run, and
//! `DIR/quickstart.json` for scripts. Running it again with the same DIR reuses
//! the CA, the database, the admin token and the agent's identity and spool.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::ControlPlaneConfig;
use crate::{pki_cli, server};

#[derive(Debug, Clone, clap::Args)]
pub struct QuickstartArgs {
    /// Directory for everything the quickstart creates (reused when run again).
    #[arg(long, default_value = "steward-quickstart")]
    pub dir: PathBuf,
    /// Database URL (default: SQLite in DIR; a previous run's choice is reused).
    #[arg(long)]
    pub database_url: Option<String>,
    /// REST listen address (default 127.0.0.1:8080, or any free port if that is taken).
    #[arg(long)]
    pub rest_listen: Option<SocketAddr>,
    /// gRPC listen address (default 127.0.0.1:7443, or any free port if that is taken).
    #[arg(long)]
    pub grpc_listen: Option<SocketAddr>,
}

/// `DIR/quickstart.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuickstartInfo {
    pub rest_url: String,
    pub grpc_addr: String,
    pub admin_token: String,
    pub ca_cert: String,
    pub data_dir: String,
    pub agent_config: String,
    pub database_url: String,
}

/// Quickstart failures; each names what could not be done.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuickstartError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(transparent)]
    Ca(#[from] pki_cli::CaError),
    #[error(transparent)]
    Config(#[from] steward_shared::config::ConfigError),
    #[error(transparent)]
    Serve(#[from] server::ServeError),
    #[error("admin token: {0}")]
    Token(String),
    #[error("agent: {0}")]
    Agent(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> QuickstartError + '_ {
    move |source| QuickstartError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A host id derived from the machine's hostname.
fn local_host_id() -> String {
    let raw = hostname::get()
        .map(|h| h.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let mut id: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    id = id
        .trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
        .chars()
        .take(63)
        .collect();
    if steward_shared::pki::validate_host_id(&id).is_ok() {
        id
    } else {
        "local".to_string()
    }
}

async fn pick_addr(wanted: Option<SocketAddr>, default_port: u16) -> SocketAddr {
    if let Some(addr) = wanted {
        return addr;
    }
    let preferred = SocketAddr::from(([127, 0, 0, 1], default_port));
    match tokio::net::TcpListener::bind(preferred).await {
        Ok(_) => preferred,
        Err(_) => SocketAddr::from(([127, 0, 0, 1], 0)),
    }
}

/// A TOML basic string (JSON string escapes are valid TOML escapes).
fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// Runs the quickstart until Ctrl-C.
pub async fn run(args: QuickstartArgs) -> Result<(), QuickstartError> {
    let dir = std::path::absolute(&args.dir).map_err(io_err(&args.dir))?;
    let cp_dir = dir.join("controlplane");
    let agent_dir = dir.join("agent");
    for d in [&dir, &cp_dir, &agent_dir] {
        std::fs::create_dir_all(d).map_err(io_err(d))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).map_err(io_err(d))?;
    }
    let info_path = dir.join("quickstart.json");
    let previous: Option<QuickstartInfo> = std::fs::read_to_string(&info_path)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok());

    // PKI: reuse what is there.
    if !cp_dir.join("ca.pem").exists() {
        pki_cli::init(&cp_dir)?;
    }
    if !cp_dir.join("server.pem").exists() {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        pki_cli::issue_server(
            &cp_dir,
            &names,
            &cp_dir.join("server.pem"),
            &cp_dir.join("server.key"),
            pki_cli::SERVER_LIFETIME,
        )?;
    }

    let database_url = args
        .database_url
        .clone()
        .or_else(|| previous.as_ref().map(|p| p.database_url.clone()))
        .unwrap_or_else(|| format!("sqlite://{}", cp_dir.join("steward.db").display()));
    let grpc_listen = pick_addr(args.grpc_listen, 7443).await;
    let rest_listen = pick_addr(args.rest_listen, 8080).await;

    // A real config file, loaded through the same path as `serve --config`.
    let cp_config_path = dir.join("controlplane.toml");
    let cp_toml = format!(
        "# Written by `steward-controlplane quickstart`.\n\
         data_dir = {}\n\
         database_url = {}\n\n\
         [grpc]\nlisten = \"{grpc_listen}\"\nheartbeat_interval = \"10s\"\n\n\
         [rest]\nlisten = \"{rest_listen}\"\noffline_after = \"45s\"\n",
        toml_str(&cp_dir.display().to_string()),
        toml_str(&database_url),
    );
    std::fs::write(&cp_config_path, cp_toml).map_err(io_err(&cp_config_path))?;
    let cfg = ControlPlaneConfig::load(&cp_config_path)?;

    // A PostgreSQL database that does not exist yet is created when the
    // server lets this user (the quickstart's promise: one command).
    let created = crate::store::Store::create_database_if_missing(&database_url)
        .await
        .map_err(|source| server::ServeError::Store {
            url: steward_daemon::redact::url(&database_url),
            source,
        })?;
    if created {
        tracing::info!(database = %steward_daemon::redact::url(&database_url), "created the database");
    }

    let shutdown = CancellationToken::new();
    let running = server::start(&cfg, shutdown.clone()).await?;
    server::write_endpoints(&cfg.data_dir, &running.endpoints)?;
    let grpc_addr = running.endpoints.grpc_addr;

    let token_path = dir.join("admin.token");
    let admin_token = reuse_or_create_token(&running.store, &token_path).await?;

    // The local agent enrolls like any other: a one-time token, a key made
    // here, a certificate from the CA it pinned by fingerprint.
    if !agent_dir.join("agent.pem").exists() {
        enroll_local_agent(&running.store, &cp_dir, &agent_dir, grpc_addr).await?;
    }

    let agent_config_path = dir.join("agent.toml");
    std::fs::write(&agent_config_path, agent_toml(&agent_dir, &cp_dir, grpc_addr))
        .map_err(io_err(&agent_config_path))?;
    // Validate before starting, for a clear error instead of a dead agent task.
    steward_agent::config::AgentConfig::load(&agent_config_path)?;

    let agent_stop = CancellationToken::new();
    let (_reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
    let control = steward_agent::runtime::Control {
        stop: agent_stop.clone(),
        reload: reload_rx,
    };
    let agent = tokio::spawn(steward_agent::runtime::run(agent_config_path.clone(), control));

    let info = QuickstartInfo {
        rest_url: running.endpoints.rest_url.clone(),
        grpc_addr: grpc_addr.to_string(),
        admin_token: admin_token.clone(),
        ca_cert: cp_dir.join("ca.pem").display().to_string(),
        data_dir: cp_dir.display().to_string(),
        agent_config: agent_config_path.display().to_string(),
        database_url: database_url.clone(),
    };
    let json = serde_json::to_string_pretty(&info).unwrap_or_default();
    steward_shared::pki::write_private_file(&info_path, &json).map_err(|e| QuickstartError::Token(e.to_string()))?;

    println!();
    println!("Steward quickstart is running (Ctrl-C stops the control plane and the agent).");
    println!("  REST API:   {}", info.rest_url);
    println!("  gRPC (mTLS): {}", info.grpc_addr);
    println!("  database:   {}", steward_daemon::redact::url(&database_url));
    println!("  admin token: {}", info.admin_token);
    println!("  details:    {}", info_path.display());
    println!();
    println!("Try:");
    println!(
        "  export STEWARD_SERVER={} STEWARD_TOKEN={}",
        info.rest_url, info.admin_token
    );
    println!("  cargo run -q -p steward-controlplane --bin stewardctl -- hosts list");
    println!();

    let signals = steward_daemon::signals::install().map_err(|e| QuickstartError::Agent(e.to_string()))?;
    tokio::select! {
        _ = signals.stop.cancelled() => {}
        result = agent_finished(agent) => {
            shutdown.cancel();
            let _ = running.wait().await;
            return result;
        }
    }
    agent_stop.cancel();
    shutdown.cancel();
    let _ = running.wait().await;
    Ok(())
}

async fn enroll_local_agent(
    store: &crate::store::Store,
    cp_dir: &Path,
    agent_dir: &Path,
    grpc: SocketAddr,
) -> Result<(), QuickstartError> {
    let fingerprint = pki_cli::load(cp_dir)?
        .fingerprint()
        .map_err(|e| QuickstartError::Agent(e.to_string()))?;
    let token = crate::enrollment::EnrollmentToken::generate(&fingerprint);
    let now = steward_shared::now_ms();
    let stored = crate::store::identity::NewEnrollmentToken {
        id: token.id.clone(),
        secret_hash: token.secret_hash(),
        labels: [("source".to_string(), "quickstart".to_string())].into(),
        uses: 1,
        expires_ms: now + 600_000,
        created_by: "quickstart".into(),
        hosts: None,
    };
    store
        .create_enrollment_token(
            &stored,
            &crate::audit::AuditEntry::new(
                crate::audit::actor::local(),
                "enrollment_tokens.create",
                crate::audit::Outcome::Success,
            )
            .target(format!("enrollment_token:{}", token.id)),
            now,
        )
        .await
        .map_err(|e| QuickstartError::Token(e.to_string()))?;
    let paths = steward_agent::enroll::IdentityPaths {
        ca: agent_dir.join("ca.pem"),
        cert: agent_dir.join("agent.pem"),
        key: agent_dir.join("agent.key"),
    };
    let url = format!("https://localhost:{}", grpc.port());
    steward_agent::enroll::enroll(&url, &token.to_string(), &local_host_id(), &paths, None, false)
        .await
        .map_err(|e| QuickstartError::Agent(format!("enrollment failed: {e}")))?;
    Ok(())
}

async fn agent_finished(
    agent: tokio::task::JoinHandle<Result<(), steward_agent::runtime::RunError>>,
) -> Result<(), QuickstartError> {
    match agent.await {
        Ok(Ok(())) => Err(QuickstartError::Agent("the agent stopped".into())),
        Ok(Err(e)) => Err(QuickstartError::Agent(e.to_string())),
        Err(e) => Err(QuickstartError::Agent(e.to_string())),
    }
}

async fn reuse_or_create_token(store: &crate::store::Store, path: &Path) -> Result<String, QuickstartError> {
    if let Ok(existing) = std::fs::read_to_string(path) {
        let existing = existing.trim().to_string();
        if crate::api::token_is_valid(store, &existing).await {
            return Ok(existing);
        }
    }
    let token = crate::api::create_admin_token(store, "quickstart", None)
        .await
        .map_err(|e| QuickstartError::Token(e.to_string()))?;
    steward_shared::pki::write_private_file(path, &token).map_err(|e| QuickstartError::Token(e.to_string()))?;
    Ok(token)
}

/// The quickstart agent's config: disk, memory, load, and a TLS check of the
/// control plane's own gRPC endpoint.
fn agent_toml(agent_dir: &Path, cp_dir: &Path, grpc: SocketAddr) -> String {
    format!(
        r#"# Written by `steward-controlplane quickstart`.
[agent]
data_dir = {data_dir}
heartbeat_interval = "10s"

[server]
url = "https://localhost:{port}"

[[checks]]
name = "disk"
kind = "disk"
interval = "30s"
warning = 85.0
critical = 95.0

[[checks]]
name = "memory"
kind = "memory"
interval = "30s"
warning = 90.0
critical = 97.0

[[checks]]
name = "load"
kind = "cpu"
interval = "30s"

[[checks]]
name = "controlplane-tls"
kind = "tls"
address = "127.0.0.1:{port}"
server_name = "localhost"
ca_file = {ca}
interval = "5m"
"#,
        data_dir = toml_str(&agent_dir.display().to_string()),
        port = grpc.port(),
        ca = toml_str(&cp_dir.join("ca.pem").display().to_string()),
    )
}
