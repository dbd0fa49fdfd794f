//! `steward-controlplane`: argument parsing, logging and exit codes; the work
//! is in the library.
use std::path::PathBuf;
use std::process::ExitCode;
use steward_daemon::logging::LogFormat;

use anyhow::Context;
use clap::{Parser, Subcommand};
use steward_controlplane::config::{ControlPlaneConfig, DEFAULT_CONFIG_PATH};
use steward_controlplane::{pki_cli, quickstart, server};
use steward_shared::units::Duration;

#[derive(Parser)]
#[command(
    name = "steward-controlplane",
    version,
    about = "Steward control plane: mTLS gRPC gateway, REST API and storage"
)]
struct Cli {
    /// Path of the control plane's config file (a missing default file means all defaults).
    #[arg(long, global = true, env = "STEWARD_CONFIG")]
    config: Option<PathBuf>,
    /// Override the config's data_dir.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Log style on stderr: `auto` (journal lines under systemd, text elsewhere; colour only on a terminal), `text` or `json` (one object per line).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto, env = "STEWARD_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane (the default).
    Serve,
    /// Validate the config file and exit 0 (valid) or 1 (invalid).
    CheckConfig,
    /// Apply database migrations and exit.
    Migrate,
    /// Write an online, consistent copy of the SQLite database to FILE (for
    /// PostgreSQL use pg_dump).
    Backup {
        /// The backup file (created 0600); an existing file is never overwritten.
        #[arg(long = "to", value_name = "FILE")]
        to: PathBuf,
    },
    /// Control plane on embedded SQLite, its CA and one local agent, in one command.
    Quickstart(quickstart::QuickstartArgs),
    /// Certificate authority commands.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Administrative commands.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Print the version and the git commit it was built from.
    Version,
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create the CA (DATA_DIR/ca.pem and ca.key, mode 0600).
    Init,
    /// Issue the gateway's server certificate.
    IssueServer {
        /// DNS names and IP addresses the certificate is valid for (repeatable).
        #[arg(long = "name", default_values = ["localhost", "127.0.0.1"])]
        names: Vec<String>,
        /// Certificate output (default DATA_DIR/server.pem).
        #[arg(long)]
        cert: Option<PathBuf>,
        /// Key output (default DATA_DIR/server.key).
        #[arg(long)]
        key: Option<PathBuf>,
        /// Lifetime, e.g. 365d.
        #[arg(long, default_value = "365d")]
        validity: Duration,
    },
    /// Record agent certificates this CA issued before certificates were
    /// recorded (upgrades): the gateway refuses unrecorded certificates.
    RecordAgent {
        /// The agent certificate files (PEM), e.g. a copy of /var/lib/steward-agent/agent.pem.
        #[arg(long = "cert", value_name = "FILE", required = true)]
        certs: Vec<PathBuf>,
    },
    /// Issue an agent certificate whose identity is HOST (recorded in the
    /// database; for a revoked host this re-enrolls it).
    IssueAgent {
        /// The host's identity (a-z, 0-9, '-', '_', '.').
        #[arg(long)]
        host: String,
        /// Directory for agent.pem, agent.key and ca.pem (default ./agent-HOST).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Lifetime, e.g. 90d.
        #[arg(long, default_value = "90d")]
        validity: Duration,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create an admin API token; the secret is printed once and stored hashed.
    CreateToken {
        /// A name to recognise the token by.
        #[arg(long, default_value = "admin")]
        name: String,
        /// Expiry, e.g. 30d (default: never).
        #[arg(long)]
        ttl: Option<Duration>,
    },
}

fn load_config(cli: &Cli) -> anyhow::Result<ControlPlaneConfig> {
    let mut cfg = match &cli.config {
        Some(path) => ControlPlaneConfig::load(path)?,
        None if std::path::Path::new(DEFAULT_CONFIG_PATH).exists() => {
            ControlPlaneConfig::load(std::path::Path::new(DEFAULT_CONFIG_PATH))?
        }
        None => ControlPlaneConfig::with_data_dir(PathBuf::from("/var/lib/steward-controlplane")),
    };
    if let Some(dir) = &cli.data_dir {
        cfg.data_dir = dir.clone();
    }
    Ok(cfg)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")
}

/// Opens the configured store (creating the SQLite directory) and migrates it.
async fn open_store(cfg: &ControlPlaneConfig) -> anyhow::Result<steward_controlplane::store::Store> {
    let url = cfg.database_url_with_password().map_err(anyhow::Error::msg)?;
    if url.starts_with("sqlite:") {
        std::fs::create_dir_all(&cfg.data_dir).with_context(|| format!("cannot create {}", cfg.data_dir.display()))?;
    }
    let store = steward_controlplane::store::Store::connect(&url)
        .await
        .with_context(|| format!("database {}", steward_daemon::redact::url(&url)))?;
    store.migrate().await.context("migrations")?;
    Ok(store)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One crypto provider for the whole process: ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("steward-controlplane: {}", steward_daemon::report::one_line(e.as_ref()));
            ExitCode::from(1)
        }
    }
}

fn dispatch(mut cli: Cli) -> anyhow::Result<()> {
    let command = cli.command.take().unwrap_or(Command::Serve);
    match command {
        Command::Version => {
            println!(
                "steward-controlplane {} (commit {})",
                steward_controlplane::VERSION,
                steward_shared::GIT_COMMIT
            );
            Ok(())
        }
        Command::CheckConfig => {
            let path = cli.config.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
            ControlPlaneConfig::load(&path)?;
            println!("{}: ok", path.display());
            Ok(())
        }
        Command::Migrate => {
            let cfg = load_config(&cli)?;
            runtime()?.block_on(async {
                let store = open_store(&cfg).await?;
                println!("migrations applied ({})", store.backend_name());
                anyhow::Ok(())
            })
        }
        Command::Backup { to } => {
            let cfg = load_config(&cli)?;
            let url = cfg.database_url_with_password().map_err(anyhow::Error::msg)?;
            runtime()?.block_on(async {
                let store = steward_controlplane::store::Store::connect_for_backup(&url)
                    .await
                    .with_context(|| format!("database {}", steward_daemon::redact::url(&url)))?;
                let written = store.backup_to(&to).await;
                store.close().await;
                let bytes = written.context("backup")?;
                println!(
                    "backup of {} written to {} ({bytes} bytes)",
                    steward_daemon::redact::url(&url),
                    to.display()
                );
                anyhow::Ok(())
            })
        }
        Command::Serve => {
            let cfg = load_config(&cli)?;
            steward_daemon::logging::init(cli.log_format);
            runtime()?.block_on(async {
                let signals = steward_daemon::signals::install().context("cannot install signal handlers")?;
                let mut reload = signals.reload;
                tokio::spawn(async move {
                    while reload.recv().await.is_some() {
                        tracing::info!("SIGHUP: the control plane reads its config at start; restart to apply changes");
                    }
                });
                server::serve(&cfg, signals.stop).await?;
                anyhow::Ok(())
            })
        }
        Command::Quickstart(args) => {
            steward_daemon::logging::init(cli.log_format);
            runtime()?.block_on(quickstart::run(args))?;
            Ok(())
        }
        Command::Ca(ca) => {
            let cfg = load_config(&cli)?;
            let dir = &cfg.data_dir;
            match ca {
                CaCommand::Init => {
                    let fp = pki_cli::init(dir)?;
                    println!("CA created in {} (SHA-256 fingerprint {fp})", dir.display());
                }
                CaCommand::IssueServer {
                    names,
                    cert,
                    key,
                    validity,
                } => {
                    let cert = cert.unwrap_or_else(|| dir.join("server.pem"));
                    let key = key.unwrap_or_else(|| dir.join("server.key"));
                    pki_cli::issue_server(dir, &names, &cert, &key, validity.as_std())?;
                    println!(
                        "server certificate for {} written to {} and {}",
                        names.join(", "),
                        cert.display(),
                        key.display()
                    );
                }
                CaCommand::RecordAgent { certs } => {
                    let recorded = runtime()?.block_on(async {
                        let store = open_store(&cfg).await?;
                        anyhow::Ok(pki_cli::record_agent_certs(dir, &certs, &store).await?)
                    })?;
                    for (host, serial) in recorded {
                        println!("recorded the certificate {serial} of {host}");
                    }
                }
                CaCommand::IssueAgent { host, out, validity } => {
                    let out = out.unwrap_or_else(|| PathBuf::from(format!("agent-{host}")));
                    // Recorded in the database first: the gateway refuses unrecorded certificates.
                    let files = runtime()?.block_on(async {
                        let store = open_store(&cfg).await?;
                        anyhow::Ok(pki_cli::issue_agent(dir, &host, &out, validity.as_std(), &store).await?)
                    })?;
                    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
                    println!("agent certificate for {host} written to {}", names.join(", "));
                }
            }
            Ok(())
        }
        Command::Admin(AdminCommand::CreateToken { name, ttl }) => {
            let cfg = load_config(&cli)?;
            runtime()?.block_on(async {
                let store = open_store(&cfg).await?;
                let token =
                    steward_controlplane::api::create_admin_token(&store, &name, ttl.map(|d| d.as_std())).await?;
                println!("{token}");
                eprintln!("store this token now: it is shown only once");
                anyhow::Ok(())
            })
        }
    }
}
