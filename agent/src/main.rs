//! `steward-agent`: argument parsing, logging and exit codes; the work is in the library.
use std::path::PathBuf;
use std::process::ExitCode;
use steward_daemon::logging::LogFormat;

use clap::{Parser, Subcommand};
use steward_agent::config::{AgentConfig, DEFAULT_CONFIG_PATH};

#[derive(Parser)]
#[command(
    name = "steward-agent",
    version,
    about = "Steward agent: health checks streamed to the control plane over mTLS"
)]
struct Cli {
    /// Path of the agent's config file.
    #[arg(long, global = true, default_value = DEFAULT_CONFIG_PATH, env = "STEWARD_AGENT_CONFIG")]
    config: PathBuf,
    /// Log style on stderr: `auto` (journal lines under systemd, text elsewhere; colour only on a terminal), `text` or `json` (one object per line).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto, env = "STEWARD_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (the default).
    Run,
    /// Validate the config file and exit 0 (valid) or 1 (invalid).
    CheckConfig,
    /// Run every check once and print the results as JSON; no server needed.
    Collect {
        /// Run one round and exit (the only mode for now).
        #[arg(long)]
        once: bool,
    },
    /// Enroll with the control plane using a one-time token: generates this
    /// host's key, gets a certificate, writes key (0600), certificate and CA.
    Enroll {
        /// The control plane's gRPC URL (default: `server.url` from the config).
        #[arg(long)]
        server: Option<String>,
        /// The enrollment token from `stewardctl enroll-tokens create`.
        #[arg(long, env = "STEWARD_ENROLL_TOKEN", hide_env_values = true)]
        token: String,
        /// Host ID to enroll as (default: `server.host_id`, else derived from the hostname).
        #[arg(long)]
        host_id: Option<String>,
        /// Enroll again even though a valid certificate exists.
        #[arg(long)]
        force: bool,
    },
    /// Print the version and the git commit it was built from.
    Version,
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("steward-agent: {message}");
    ExitCode::from(1)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One crypto provider for the whole process: ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command.unwrap_or(Command::Run) {
        Command::Version => {
            println!(
                "steward-agent {} (commit {})",
                steward_agent::VERSION,
                steward_shared::GIT_COMMIT
            );
            ExitCode::SUCCESS
        }
        Command::Enroll {
            server,
            token,
            host_id,
            force,
        } => {
            let cfg = match AgentConfig::load(&cli.config) {
                Ok(cfg) => cfg,
                Err(e) => return fail(e),
            };
            let Some(section) = cfg.server.clone().or_else(|| {
                server
                    .clone()
                    .map(|url| steward_agent::config::ServerSection::for_url(&url))
            }) else {
                return fail(
                    "no server to enroll with: pass --server https://HOST:PORT or set [server] url in the config",
                );
            };
            let url = server.unwrap_or_else(|| section.url.clone());
            let host_id = host_id
                .or(section.host_id.clone())
                .unwrap_or_else(steward_agent::enroll::default_host_id);
            let paths = section.identity_paths(&cfg.agent.data_dir);
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return fail(format!("cannot start the runtime: {e}")),
            };
            let enrolled = rt.block_on(steward_agent::enroll::enroll(
                &url,
                &token,
                &host_id,
                &paths,
                section.server_name.as_deref(),
                force,
            ));
            match enrolled {
                Ok(id) => {
                    println!("enrolled as {id}; certificate in {}", paths.cert.display());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::CheckConfig => match AgentConfig::load(&cli.config) {
            Ok(cfg) => {
                println!("{}: ok ({} checks)", cli.config.display(), cfg.checks.len());
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::Collect { once } => {
            if !once {
                eprintln!("steward-agent: collect needs --once");
                return ExitCode::from(2);
            }
            let cfg = match AgentConfig::load(&cli.config) {
                Ok(cfg) => cfg,
                Err(e) => return fail(e),
            };
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return fail(format!("cannot start the runtime: {e}")),
            };
            let results = rt.block_on(steward_agent::checks::collect_once(&cfg));
            match serde_json::to_string_pretty(&results) {
                Ok(json) => {
                    println!("{json}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Run => {
            steward_daemon::logging::init(cli.log_format);
            // A current-thread runtime keeps the agent's footprint small; the
            // spool's disk writes run on the blocking pool.
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return fail(format!("cannot start the runtime: {e}")),
            };
            rt.block_on(async {
                let signals = match steward_daemon::signals::install() {
                    Ok(s) => s,
                    Err(e) => return fail(format!("cannot install signal handlers: {e}")),
                };
                let control = steward_agent::runtime::Control {
                    stop: signals.stop,
                    reload: signals.reload,
                };
                match steward_agent::runtime::run(cli.config.clone(), control).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(e),
                }
            })
        }
    }
}
