//! Job dispatch latency: a real control plane in this process, N simulated
//! agents on real mTLS streams (the fleet simulator), jobs created one at a
//! time through the real REST API (`POST /api/v1/jobs`, each for one random
//! host); measures the time from sending the POST to the agent reading the
//! `JobAssignment` off its stream (both timestamps in this process). Prints
//! p50/p99/max per fleet size (JSON, one line each).
//!
//! `cargo run --release -p steward-bench --bin bench-dispatch -- --agents 100,1000 --jobs 500`
//! `... -- --postgres` (a fresh database on `STEWARD_TEST_PG_URL`, default 127.0.0.1:5432)
use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use rand::Rng;
use steward_bench::sim::{self, Fleet, SimConfig, local::LocalControlPlane};
use steward_controlplane::store::testdb::TestBackend;
use tokio::sync::mpsc;

#[derive(Parser)]
struct Args {
    /// Fleet sizes to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    agents: Vec<usize>,
    /// Jobs created (one at a time) per fleet size, after 20 warm-up jobs.
    #[arg(long, default_value_t = 500)]
    jobs: usize,
    /// Use a fresh PostgreSQL database instead of SQLite.
    #[arg(long)]
    postgres: bool,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    (sorted[i] * 100.0).round() / 100.0
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    sim::raise_nofile_limit();
    let backend = if args.postgres {
        TestBackend::Postgres
    } else {
        TestBackend::Sqlite
    };
    for &n in &args.agents {
        let cp = LocalControlPlane::start(backend).await?;
        let cfg = SimConfig {
            agents: n,
            prefix: "bench".into(),
            report_interval: Some(Duration::from_secs(30)),
            job_latency: Duration::from_millis(5),
            ..SimConfig::default()
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let fleet = Fleet::start(cfg, cp.identities(), cp.target(), Some(tx)).await?;
        fleet.wait_connected(n, Duration::from_secs(120)).await?;
        let http = reqwest::Client::new();
        let url = format!("{}/api/v1/jobs", cp.rest_url);
        let mut lat_ms = Vec::with_capacity(args.jobs);
        let mut pending: HashMap<String, Instant> = HashMap::new();
        for i in 0..args.jobs + 20 {
            let host = fleet.hosts[rand::rng().random_range(0..n)].clone();
            let sent = Instant::now();
            let resp = http
                .post(&url)
                .bearer_auth(&cp.token)
                .json(&serde_json::json!({"action": "checks.run", "host": host, "timeout": "60s"}))
                .send()
                .await?;
            let status = resp.status();
            let body: serde_json::Value = resp.json().await.context("POST /api/v1/jobs answer")?;
            if !status.is_success() {
                bail!("POST /api/v1/jobs: {status} {body}");
            }
            let id = body["items"][0]["id"].as_str().context("no job id")?.to_string();
            // The assignment may arrive before the POST's answer.
            let got = loop {
                if let Some(at) = pending.remove(&id) {
                    break at;
                }
                let r = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                    .await
                    .with_context(|| format!("job {id} not received within 30s"))?
                    .context("fleet ended")?;
                if !r.redelivery {
                    pending.insert(r.job_id, r.at);
                }
            };
            if i >= 20 {
                lat_ms.push(got.duration_since(sent).as_secs_f64() * 1000.0);
            }
        }
        lat_ms.sort_by(f64::total_cmp);
        println!(
            "{}",
            serde_json::json!({
                "backend": backend.name(),
                "agents": n,
                "jobs": lat_ms.len(),
                "dispatch_ms_p50": pct(&lat_ms, 0.50),
                "dispatch_ms_p99": pct(&lat_ms, 0.99),
                "dispatch_ms_max": pct(&lat_ms, 1.0),
            })
        );
        let stats = fleet.stop().await;
        if stats.disconnects.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            eprintln!("bench-dispatch: warning: {}", stats.to_json());
        }
        cp.stop().await;
    }
    Ok(())
}
