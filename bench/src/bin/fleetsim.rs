//! `steward-fleetsim`: runs N simulated agents against a control plane for a
//! while, then prints a summary (JSON, one line). See the README's "Fleet
//! simulator" section.
//!
//! `steward-fleetsim --agents 1000 --control-plane https://cp.example:7443 --ca-dir /var/lib/steward --duration 10m`
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use steward_bench::sim::{self, Fleet, IdentitySource, LabelRule, SimConfig, Target};
use steward_shared::units::Duration as Dur;

#[derive(Parser)]
#[command(
    name = "steward-fleetsim",
    about = "Run N simulated Steward agents (own identity, own mTLS stream each)"
)]
struct Args {
    /// Number of simulated agents.
    #[arg(long, default_value_t = 10)]
    agents: usize,
    /// The control plane's gRPC endpoint, e.g. https://cp.example:7443.
    #[arg(long = "control-plane", value_name = "URL")]
    control_plane: String,
    /// Name the server certificate is checked against (default: the URL's host).
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
    /// Directory holding the control plane's CA (ca.pem, ca.key): certificates are issued in-process
    /// and recorded in the control plane's database (see --database-url).
    #[arg(long, value_name = "DIR", conflicts_with = "enroll_token")]
    ca_dir: Option<PathBuf>,
    /// The control plane's database, where --ca-dir certificates are recorded
    /// (default: the SQLite file DIR/steward.db of --ca-dir).
    #[arg(long, env = "STEWARD_DATABASE_URL", value_name = "URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Enroll every agent with this enrollment token (it needs at least --agents uses).
    #[arg(long, env = "STEWARD_ENROLL_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    enroll_token: Option<String>,
    /// CA certificate that signed the control plane's server certificate (with --enroll-token).
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Host IDs are PREFIX-00000, PREFIX-00001, ...
    #[arg(long, default_value = "sim")]
    prefix: String,
    /// Interval between two check-result batches per agent (0 = none).
    #[arg(long, default_value = "10s")]
    report_interval: Dur,
    /// Check results per batch.
    #[arg(long, default_value_t = 5)]
    checks: usize,
    /// Time an assigned job "runs" before its result is reported.
    #[arg(long, default_value = "100ms")]
    job_latency: Dur,
    /// Probability (0..1) that a job fails.
    #[arg(long, default_value_t = 0.0)]
    failure_rate: f64,
    /// deploy.apply jobs for these versions always fail (outcome rolled_back), comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "VERSION,...")]
    fail_versions: Vec<String>,
    /// Labels: k=v[,k=v] for every agent or PATTERN:k=v[,k=v] for matching host IDs (`*` wildcard).
    /// Set through the REST API (needs --rest-url and STEWARD_TOKEN). Repeatable.
    #[arg(long = "labels", value_name = "[PATTERN:]K=V,...")]
    labels: Vec<LabelRule>,
    /// REST base URL of the control plane (for --labels).
    #[arg(long, value_name = "URL")]
    rest_url: Option<String>,
    /// API token for --labels.
    #[arg(long, env = "STEWARD_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// How long to run once started (Ctrl-C stops earlier).
    #[arg(long, default_value = "60s")]
    duration: Dur,
    /// Streams opened at the same time while starting.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("steward-fleetsim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if !(0.0..=1.0).contains(&args.failure_rate) {
        anyhow::bail!("--failure-rate must be between 0 and 1, got {}", args.failure_rate);
    }
    if !args.labels.is_empty() && (args.rest_url.is_none() || args.token.is_none()) {
        anyhow::bail!("--labels needs --rest-url and an API token (STEWARD_TOKEN)");
    }
    let identities = match (&args.ca_dir, &args.enroll_token, &args.ca_cert) {
        (Some(dir), _, _) => {
            let ca =
                steward_shared::pki::Ca::load_dir(dir).map_err(|e| anyhow::anyhow!("CA in {}: {e}", dir.display()))?;
            let url = args
                .database_url
                .clone()
                .unwrap_or_else(|| format!("sqlite://{}", dir.join("steward.db").display()));
            let store = steward_controlplane::store::Store::connect(&url)
                .await
                .map_err(|e| anyhow::anyhow!("the control plane's database: {e}"))?;
            IdentitySource::Ca {
                ca: std::sync::Arc::new(ca),
                store,
            }
        }
        (None, Some(token), Some(ca)) => IdentitySource::Enroll {
            token: token.clone(),
            ca_pem: std::fs::read_to_string(ca).map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?,
        },
        _ => anyhow::bail!("give --ca-dir DIR, or --enroll-token TOKEN with --ca-cert FILE"),
    };
    let nofile = sim::raise_nofile_limit();
    if nofile > 0 && (nofile as usize) < args.agents + 64 {
        eprintln!(
            "steward-fleetsim: warning: the open-file limit is {nofile}; raise it (ulimit -n) for {} agents",
            args.agents
        );
    }
    let cfg = SimConfig {
        agents: args.agents,
        prefix: args.prefix.clone(),
        report_interval: Some(args.report_interval.as_std()).filter(|d| !d.is_zero()),
        checks_per_report: args.checks,
        job_latency: args.job_latency.as_std(),
        failure_rate: args.failure_rate,
        fail_versions: args.fail_versions.clone(),
        connect_concurrency: args.connect_concurrency,
    };
    let target = Target {
        url: args.control_plane.clone(),
        server_name: args.server_name.clone(),
    };
    let started = Instant::now();
    let fleet = Fleet::start(cfg, identities, target, None).await?;
    let connect_timeout = Duration::from_secs(60 + args.agents as u64 / 50);
    let connected = fleet.wait_connected(args.agents, connect_timeout).await;
    let connect_secs = started.elapsed().as_secs_f64();
    if let Err(e) = &connected {
        eprintln!("steward-fleetsim: {e}");
    } else if let (Some(url), Some(token)) = (&args.rest_url, &args.token) {
        sim::apply_labels(url, token, &sim::labels_for(&args.labels, &fleet.hosts)).await?;
    }
    eprintln!(
        "steward-fleetsim: {} agents connected in {connect_secs:.1}s; running for {}",
        fleet.stats.connected.load(std::sync::atomic::Ordering::Relaxed),
        args.duration
    );
    tokio::select! {
        _ = tokio::time::sleep(args.duration.as_std()) => {}
        _ = tokio::signal::ctrl_c() => eprintln!("steward-fleetsim: interrupted"),
    }
    let ran = started.elapsed().as_secs_f64();
    let stats = fleet.stop().await;
    let mut summary = stats.to_json();
    summary["agents"] = args.agents.into();
    summary["connect_seconds"] = ((connect_secs * 100.0).round() / 100.0).into();
    summary["seconds"] = ((ran * 10.0).round() / 10.0).into();
    summary["cpu_seconds"] = ((steward_bench::process_cpu_secs() * 100.0).round() / 100.0).into();
    summary["rss_kib"] = steward_bench::rss_kib(std::process::id()).into();
    println!("{summary}");
    connected
}
