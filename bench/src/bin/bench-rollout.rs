//! Rollout orchestration overhead and the control plane's memory per
//! connected agent, with the fleet simulator.
//!
//! A real `steward-controlplane serve` process (the release binary next to
//! this one; fresh CA, server certificate and database) and N simulated
//! agents in this process, each with its own certificate and mTLS stream,
//! reporting check results every `--report-interval`. Measured:
//! - the control plane's resident memory (`/proc/PID/status`) ready and idle,
//!   then with every agent connected (after `--settle`), per agent;
//! - for each `--hosts` size, a rollout of `checks.run` (the trivial step:
//!   the simulated agents answer after `--job-latency`) over that many hosts,
//!   canary 1 % then batches of 25 %, no pause, `min_healthy` 0: wall time
//!   from `POST /api/v1/rollouts` until the REST API shows it succeeded, and
//!   the orchestration overhead, that time minus the waves' step time
//!   (waves x job latency).
//!
//! Figures are printed as JSON lines, never asserted.
//!
//! `cargo build --release -p steward-controlplane -p steward-bench`
//! `target/release/bench-rollout --agents 10000 --hosts 1000,10000 [--postgres]`
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::{Value, json};
use steward_bench::sim::{self, Fleet, IdentitySource, SimConfig, Target};
use steward_controlplane::store::Store;
use steward_controlplane::store::testdb::{TestBackend, TestDatabase};
use steward_shared::pki::Ca;

#[derive(Parser)]
struct Args {
    /// Simulated agents connected.
    #[arg(long, default_value_t = 10_000)]
    agents: usize,
    /// Rollout sizes (hosts), comma-separated; each at most --agents.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    hosts: Vec<usize>,
    /// Time between an assignment and the simulated agent's result.
    #[arg(long, default_value = "10ms")]
    job_latency: steward_shared::units::Duration,
    /// Interval between two check-result batches per agent (5 results each).
    #[arg(long, default_value = "30s")]
    report_interval: steward_shared::units::Duration,
    /// How long the fleet runs connected before memory is read.
    #[arg(long, default_value = "20s")]
    settle: steward_shared::units::Duration,
    /// Use a fresh PostgreSQL database (`STEWARD_TEST_PG_URL`) instead of SQLite.
    #[arg(long)]
    postgres: bool,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The control-plane process; killed when dropped.
struct Server {
    child: Child,
    rest_url: String,
    grpc_url: String,
    token: String,
    ca: std::sync::Arc<Ca>,
    log: PathBuf,
    _db: TestDatabase,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    async fn start(backend: TestBackend) -> Result<Server> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let exe = std::env::current_exe()?;
        let bin = exe
            .parent()
            .map(|d| d.join("steward-controlplane"))
            .filter(|p| p.exists())
            .context(
                "steward-controlplane is not next to bench-rollout: cargo build --release -p steward-controlplane",
            )?;
        let dir = tempfile::tempdir()?;
        let data = dir.path().to_path_buf();
        steward_controlplane::pki_cli::init(&data)?;
        steward_controlplane::pki_cli::issue_server(
            &data,
            &["localhost".into(), "127.0.0.1".into()],
            &data.join("server.pem"),
            &data.join("server.key"),
            Duration::from_secs(86400),
        )?;
        let db = TestDatabase::create(backend).await;
        // The admin token, written before the server opens the database.
        let token = {
            let store = Store::connect(db.url()).await?;
            store.migrate().await?;
            let token = steward_controlplane::api::auth::create_admin_token(&store, "bench", None).await?;
            store.close().await;
            token
        };
        let (grpc, rest) = (free_port()?, free_port()?);
        let config = data.join("controlplane.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\ndatabase_url = {:?}\n\n[grpc]\nlisten = \"127.0.0.1:{grpc}\"\n\n\
                 [rest]\nlisten = \"127.0.0.1:{rest}\"\nrate_limit_per_second = 0\n",
                data.display().to_string(),
                db.url()
            ),
        )?;
        let log = data.join("controlplane.log");
        let child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(data.join("controlplane.err"))?)
            .spawn()
            .context("starting steward-controlplane serve")?;
        let server = Server {
            child,
            rest_url: format!("http://127.0.0.1:{rest}"),
            grpc_url: format!("https://localhost:{grpc}"),
            token,
            ca: std::sync::Arc::new(Ca::load_dir(&data)?),
            log,
            _db: db,
            _dir: dir,
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http.get(format!("{}/readyz", server.rest_url)).send().await
                && r.status().is_success()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("the control plane did not become ready; see {}", server.log.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Starts a rollout of `checks.run` over the hosts labelled `SET=yes`
/// and waits until it ends: (wall seconds, final view).
async fn rollout(server: &Server, set: &str, hosts: usize) -> Result<(f64, Value)> {
    let http = reqwest::Client::new();
    let canary = (hosts / 100).max(1);
    let body = json!({
        "action": "checks.run",
        "selector": format!("{set}=yes"),
        "strategy": { "canary": canary, "batch": "25%", "min_healthy": "0s", "wave_deadline": "10m" },
    });
    let started = Instant::now();
    let resp = http
        .post(format!("{}/api/v1/rollouts", server.rest_url))
        .bearer_auth(&server.token)
        .json(&body)
        .send()
        .await?;
    if resp.status().as_u16() != 201 {
        bail!("POST /api/v1/rollouts: {} {}", resp.status(), resp.text().await?);
    }
    let id = resp.json::<Value>().await?["id"]
        .as_str()
        .context("no rollout id")?
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        // The list's entries leave the hosts out (a view of 10,000 hosts is a megabyte).
        let list: Value = http
            .get(format!("{}/api/v1/rollouts?limit=10", server.rest_url))
            .bearer_auth(&server.token)
            .send()
            .await?
            .json()
            .await?;
        let v = list["items"]
            .as_array()
            .and_then(|items| items.iter().find(|r| r["id"] == id.as_str()))
            .cloned()
            .with_context(|| format!("rollout {id} is not listed: {list}"))?;
        match v["state"].as_str() {
            Some("running" | "paused" | "stopping" | "rolling_back") => {}
            Some(_) => return Ok((started.elapsed().as_secs_f64(), v)),
            None => bail!("unexpected rollout view: {v}"),
        }
        if Instant::now() > deadline {
            bail!("rollout {id} did not end within 15 minutes: {v}");
        }
        // Each listing reads every host row of the rollout (for its counts):
        // polled four times a second, as a watching operator would.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(&n) = args.hosts.iter().find(|&&n| n > args.agents) {
        bail!("--hosts {n} is more than --agents {}", args.agents);
    }
    let nofile = sim::raise_nofile_limit();
    if nofile > 0 && (nofile as usize) < args.agents + 256 {
        bail!(
            "the open-file limit is {nofile}: raise it (ulimit -n) for {} agents",
            args.agents
        );
    }
    let backend = if args.postgres {
        TestBackend::Postgres
    } else {
        TestBackend::Sqlite
    };
    let server = Server::start(backend).await?;
    let pid = server.pid();
    let rss_idle = status_kib(pid, "VmRSS:").unwrap_or(0);

    let cfg = SimConfig {
        agents: args.agents,
        prefix: "bench".into(),
        report_interval: Some(args.report_interval.as_std()).filter(|d| !d.is_zero()),
        checks_per_report: 5,
        job_latency: args.job_latency.as_std(),
        connect_concurrency: 128,
        ..SimConfig::default()
    };
    let target = Target {
        url: server.grpc_url.clone(),
        server_name: Some("localhost".into()),
    };
    let started = Instant::now();
    // The simulated agents' certificates are recorded in the server's database.
    let store = Store::connect(server._db.url()).await?;
    let identities = IdentitySource::Ca {
        ca: server.ca.clone(),
        store: store.clone(),
    };
    let fleet = Fleet::start(cfg, identities, target, None).await?;
    fleet
        .wait_connected(args.agents, Duration::from_secs(120 + args.agents as u64 / 20))
        .await
        .with_context(|| format!("see {}", server.log.display()))?;
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(args.settle.as_std()).await;
    let rss_connected = status_kib(pid, "VmRSS:").unwrap_or(0);
    let hwm = status_kib(pid, "VmHWM:").unwrap_or(0);
    println!(
        "{}",
        json!({
            "bench": "controlplane-memory",
            "backend": if args.postgres { "postgres" } else { "sqlite" },
            "agents": args.agents,
            "connect_seconds": round(connect_secs, 1),
            "rss_idle_kib": rss_idle,
            "rss_connected_kib": rss_connected,
            "rss_peak_kib": hwm,
            "kib_per_agent": round((rss_connected.saturating_sub(rss_idle)) as f64 / args.agents.max(1) as f64, 1),
        })
    );

    // One label per rollout size on the first N hosts (`bench-nN=yes`), set at once.
    let labels: Vec<(String, BTreeMap<String, String>)> = fleet
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let set = args
                .hosts
                .iter()
                .filter(|&&n| i < n)
                .map(|n| (format!("bench-n{n}"), "yes".to_string()));
            (h.clone(), set.collect())
        })
        .collect();
    sim::apply_labels(&server.rest_url, &server.token, &labels).await?;
    for &n in &args.hosts {
        let (wall, view) = rollout(&server, &format!("bench-n{n}"), n).await?;
        let waves = view["waves"].as_u64().unwrap_or(0);
        let step = waves as f64 * args.job_latency.as_std().as_secs_f64();
        println!(
            "{}",
            json!({
                "bench": "rollout-overhead",
                "backend": if args.postgres { "postgres" } else { "sqlite" },
                "hosts": n,
                "state": view["state"],
                "waves": waves,
                "succeeded": view["counts"]["succeeded"],
                "wall_seconds": round(wall, 2),
                "step_seconds": round(step, 2),
                "overhead_seconds": round(wall - step, 2),
                "rss_kib": status_kib(pid, "VmRSS:"),
            })
        );
        if view["state"] != "succeeded" {
            bail!("rollout over {n} hosts ended {}: {view}", view["state"]);
        }
    }
    drop(fleet.stop().await);
    Ok(())
}
