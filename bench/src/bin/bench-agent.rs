//! Agent footprint: CPU time per full collection round of the default checks
//! (in-process, no network waits), and the resident memory of a real
//! `steward-agent` process streaming to a control plane after an idle period.
//!
//! `cargo build --release -p steward-agent -p steward-bench`
//! `target/release/bench-agent --rounds 2000 --idle 600`
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use steward_agent::config::AgentConfig;
use steward_controlplane::config::ControlPlaneConfig;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Args {
    /// Collection rounds for the CPU measurement.
    #[arg(long, default_value_t = 2000)]
    rounds: u32,
    /// Seconds the agent runs before its memory is read (the design target is stated after 600).
    #[arg(long, default_value_t = 600)]
    idle: u64,
    /// The agent binary (default: next to this one).
    #[arg(long)]
    agent_bin: Option<PathBuf>,
}

const LOCAL_CHECKS: &str = r#"
[[checks]]
name = "disk"
kind = "disk"
[[checks]]
name = "memory"
kind = "memory"
[[checks]]
name = "load"
kind = "cpu"
"#;

async fn cpu_per_round(src: &str, rounds: u32) -> Result<f64> {
    let cfg = AgentConfig::parse("<bench>", src)?;
    let checks = steward_agent::checks::build(&cfg);
    for c in &checks {
        c.run().await; // warm up (first cpu run has no delta yet)
    }
    let start = steward_bench::process_cpu_secs();
    for _ in 0..rounds {
        for c in &checks {
            std::hint::black_box(c.run().await);
        }
    }
    Ok((steward_bench::process_cpu_secs() - start) / rounds as f64 * 1000.0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let cp_dir = dir.path().join("cp");
    let agent_dir = dir.path().join("agent");
    steward_controlplane::pki_cli::init(&cp_dir)?;
    steward_controlplane::pki_cli::issue_server(
        &cp_dir,
        &["localhost".into(), "127.0.0.1".into()],
        &cp_dir.join("server.pem"),
        &cp_dir.join("server.key"),
        Duration::from_secs(86_400),
    )?;
    let mut cfg = ControlPlaneConfig::parse(
        "<bench>",
        "[grpc]\nlisten = \"127.0.0.1:0\"\n[rest]\nlisten = \"127.0.0.1:0\"\n",
    )?;
    cfg.data_dir = cp_dir.clone();
    let store = steward_controlplane::store::Store::connect(&cfg.database_url()).await?;
    store.migrate().await?;
    steward_controlplane::pki_cli::issue_agent(&cp_dir, "bench-agent", &agent_dir, Duration::from_secs(86_400), &store)
        .await?;
    store.close().await;
    let shutdown = CancellationToken::new();
    let running = steward_controlplane::server::start(&cfg, shutdown.clone()).await?;
    let port = running.endpoints.grpc_addr.port();

    let local_ms = cpu_per_round(LOCAL_CHECKS, args.rounds).await?;
    let tls_check = format!(
        "[[checks]]\nname = \"tls\"\nkind = \"tls\"\naddress = \"127.0.0.1:{port}\"\nserver_name = \"localhost\"\nca_file = {:?}\n",
        cp_dir.join("ca.pem").display().to_string()
    );
    let tls_ms = cpu_per_round(&tls_check, (args.rounds / 10).max(10)).await?;

    // A real agent process with the quickstart's default checks, streaming to the control plane.
    let config = agent_dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\ndata_dir = {:?}\n[server]\nurl = \"https://localhost:{port}\"\n{LOCAL_CHECKS}\n{}",
            agent_dir.display().to_string(),
            tls_check.replace("name = \"tls\"", "name = \"tls\"\ninterval = \"5m\"")
        ),
    )?;
    let bin = args.agent_bin.clone().unwrap_or_else(|| {
        let exe = std::env::current_exe().unwrap_or_default();
        exe.with_file_name("steward-agent")
    });
    let mut child = Command::new(&bin)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("STEWARD_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let pid = child.id();
    let started = Instant::now();
    let mut peak = 0;
    while started.elapsed() < Duration::from_secs(args.idle) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        peak = peak.max(steward_bench::rss_kib(pid).unwrap_or(0));
    }
    let rss = steward_bench::rss_kib(pid).unwrap_or(0);
    let agent_cpu = steward_bench::proc_cpu_secs(pid).unwrap_or(0.0);
    let _ = child.kill();
    let _ = child.wait();
    shutdown.cancel();
    let _ = running.wait().await;

    println!(
        "{}",
        serde_json::json!({
            "cpu_ms_per_round_local_checks": (local_ms * 1000.0).round() / 1000.0,
            "cpu_ms_per_tls_check": (tls_ms * 1000.0).round() / 1000.0,
            "rounds": args.rounds,
            "idle_seconds": args.idle,
            "agent_rss_mib": (rss as f64 / 1024.0 * 10.0).round() / 10.0,
            "agent_peak_rss_mib": (peak as f64 / 1024.0 * 10.0).round() / 10.0,
            "agent_cpu_seconds_total": agent_cpu,
        })
    );
    Ok(())
}
