//! Control-plane ingest throughput: N simulated agents, each with its own
//! certificate and a real mTLS stream, send batches of check results as fast as
//! acknowledgements allow; prints acknowledged (= committed) results per second.
//!
//! `cargo run --release -p steward-bench --bin bench-ingest -- --agents 100 --seconds 20`
//! `STEWARD_TEST_PG_URL=postgres://postgres@127.0.0.1:5432/postgres ... -- --postgres` (a fresh database is created there)
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use steward_controlplane::config::ControlPlaneConfig;
use steward_shared::pki::Ca;
use steward_shared::proto::{
    self, AgentMessage, agent_gateway_client::AgentGatewayClient, agent_message, control_message, report,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

#[derive(Parser)]
struct Args {
    /// Simulated agents, each with its own identity and stream.
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Measured seconds (after a 3 s warm-up).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Results per batch.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Unacknowledged batches in flight per agent.
    #[arg(long, default_value_t = 4)]
    window: usize,
    /// Use a fresh PostgreSQL database on the server named by `STEWARD_TEST_PG_URL`
    /// (default `postgres://postgres@127.0.0.1:5432/postgres`) instead of SQLite.
    #[arg(long)]
    postgres: bool,
}

fn result(seq: u64, i: usize) -> proto::Report {
    proto::Report {
        seq,
        body: Some(report::Body::Check(proto::CheckResult {
            name: format!("check-{}", i % 20),
            kind: "disk".into(),
            status: proto::CheckStatus::Ok as i32,
            values: vec![proto::Value {
                name: "used_percent:/".into(),
                value: 42.0,
                unit: "percent".into(),
            }],
            message: "42.0% used".into(),
            observed_at_ms: steward_shared::now_ms(),
            duration_us: 120,
        })),
    }
}

async fn agent(
    url: String,
    ca_pem: String,
    cert: String,
    key: String,
    args: Arc<Args>,
    acked: Arc<AtomicU64>,
    stop: CancellationToken,
) -> Result<()> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .identity(Identity::from_pem(cert, key))
        .domain_name("localhost");
    let ch = Endpoint::from_shared(url)?.tls_config(tls)?.connect().await?;
    let (tx, rx) = mpsc::channel(args.window + 2);
    let hello = proto::Hello {
        agent_version: "bench".into(),
        protocol: 1,
        ..Default::default()
    };
    tx.send(AgentMessage {
        msg: Some(agent_message::Msg::Hello(hello)),
    })
    .await?;
    let mut inbound = AgentGatewayClient::new(ch)
        .max_encoding_message_size(16 << 20)
        .session(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let first = inbound.message().await?;
    let Some(proto::ControlMessage {
        msg: Some(control_message::Msg::Welcome(w)),
    }) = first
    else {
        anyhow::bail!("no welcome");
    };
    let batch = args.batch.min(w.max_batch as usize);
    let mut next_seq = w.acked_seq + 1;
    let mut last_acked = w.acked_seq;
    let mut in_flight = 0usize;
    loop {
        while in_flight < args.window && !stop.is_cancelled() {
            let reports: Vec<_> = (0..batch).map(|i| result(next_seq + i as u64, i)).collect();
            next_seq += batch as u64;
            tx.send(AgentMessage {
                msg: Some(agent_message::Msg::Reports(proto::ReportBatch {
                    reports,
                    spool_dropped_total: 0,
                })),
            })
            .await?;
            in_flight += 1;
        }
        if in_flight == 0 {
            return Ok(());
        }
        match inbound.message().await? {
            Some(proto::ControlMessage {
                msg: Some(control_message::Msg::Ack(a)),
            }) => {
                acked.fetch_add(a.acked_seq - last_acked, Ordering::Relaxed);
                last_acked = a.acked_seq;
                in_flight -= 1;
            }
            Some(_) => {}
            None => anyhow::bail!("stream closed"),
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Arc::new(Args::parse());
    let dir = tempfile::tempdir()?;
    let data = dir.path().to_path_buf();
    steward_controlplane::pki_cli::init(&data)?;
    steward_controlplane::pki_cli::issue_server(
        &data,
        &["localhost".into(), "127.0.0.1".into()],
        &data.join("server.pem"),
        &data.join("server.key"),
        Duration::from_secs(3600),
    )?;
    let database_url = if args.postgres {
        steward_controlplane::store::testdb::fresh_database_url(
            steward_controlplane::store::testdb::TestBackend::Postgres,
        )
        .await
    } else {
        format!("sqlite://{}", data.join("steward.db").display())
    };
    let mut cfg = ControlPlaneConfig::parse(
        "<bench>",
        "[grpc]\nlisten = \"127.0.0.1:0\"\n[rest]\nlisten = \"127.0.0.1:0\"\n",
    )?;
    cfg.data_dir = data.clone();
    cfg.database_url = Some(database_url.clone());
    let shutdown = CancellationToken::new();
    let running = steward_controlplane::server::start(&cfg, shutdown.clone()).await?;
    let url = format!("https://localhost:{}", running.endpoints.grpc_addr.port());

    let ca = Ca::load_dir(&data)?;
    let ca_pem = ca.cert_pem().to_string();
    let acked = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for i in 0..args.agents {
        let id = ca.issue_agent(&format!("bench-{i:05}"), Duration::from_secs(3600))?;
        tasks.push(tokio::spawn(agent(
            url.clone(),
            ca_pem.clone(),
            id.cert_pem,
            id.key_pem,
            args.clone(),
            acked.clone(),
            stop.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (start_n, start_t, start_cpu) = (
        acked.load(Ordering::Relaxed),
        Instant::now(),
        steward_bench::process_cpu_secs(),
    );
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let (n, secs, cpu) = (
        acked.load(Ordering::Relaxed) - start_n,
        start_t.elapsed().as_secs_f64(),
        steward_bench::process_cpu_secs() - start_cpu,
    );
    stop.cancel();
    for t in tasks {
        if let Ok(Err(e)) = t.await {
            eprintln!("agent: {e:#}");
        }
    }
    let backend = if database_url.starts_with("sqlite:") {
        "sqlite"
    } else {
        "postgres"
    };
    println!(
        "{}",
        serde_json::json!({
            "backend": backend,
            "agents": args.agents,
            "batch": args.batch,
            "window": args.window,
            "seconds": secs,
            "results_committed": n,
            "results_per_second": (n as f64 / secs).round(),
            "cpu_seconds_per_second": (cpu / secs * 100.0).round() / 100.0,
        })
    );
    shutdown.cancel();
    let _ = running.wait().await;
    Ok(())
}
