//! Job queue throughput through the store, as the control plane runs it:
//! enqueue (audited, one fan-out request per 100 jobs) → claim (the
//! dispatcher's `claim_jobs`, 256 per round, audited, SKIP LOCKED on
//! PostgreSQL) → accept (with `--accept`: the agents' acceptances as the
//! ingest acceptor records them, `accept_jobs`, audited) → complete (the agents' `finished` reports applied by the
//! ingest writer's `ingest_with_jobs`, fenced, audited), in jobs per second;
//! and, on PostgreSQL, a bare `FOR UPDATE SKIP LOCKED` loop on the same
//! server for comparison: a table of the same shape as `jobs` (`LIKE jobs
//! INCLUDING ALL`), rows sent from the client 100 per statement, claims of
//! 256 and one fenced completion per round, no audit. Figures are printed
//! as JSON, never asserted. With `--repeat N` the pair runs N times (a fresh
//! database each time, dropped afterwards) and a last line gives every ratio
//! and their median: one run of 5,000 jobs takes under a second, and the
//! two loops' figures move by ±15 % from run to run on a 2-core machine.
//!
//! The per-host cap (`--cap`, `max_running_per_host`) is unlimited by default,
//! as in a fleet that lets its hosts run jobs side by side: the claim is then
//! the plain `SKIP LOCKED` one. With a cap that can bind (`--cap 4`: 100 hosts
//! × 4 slots, 256 per claim) every claim ranks the due jobs per host.
//!
//! `cargo run --release -p steward-bench --bin bench-queue -- --jobs 5000`
//! `... -- --postgres --repeat 5` (fresh databases on `STEWARD_TEST_PG_URL`)
use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use steward_controlplane::audit::{AuditEntry, Outcome};
use steward_controlplane::jobs::{JobEventKind, JobReport, JobSettings, NewJob, new_job_id};
use steward_controlplane::model::IngestBatch;
use steward_controlplane::store::Store;
use steward_controlplane::store::jobs::{Acceptance, JobBatch, JobIngest};
use steward_controlplane::store::testdb::{TestBackend, TestDatabase};

#[derive(Parser)]
struct Args {
    /// Jobs to push through.
    #[arg(long, default_value_t = 5000)]
    jobs: usize,
    /// Hosts the jobs are spread over.
    #[arg(long, default_value_t = 100)]
    hosts: usize,
    /// Use PostgreSQL (`STEWARD_TEST_PG_URL`) instead of SQLite.
    #[arg(long)]
    postgres: bool,
    /// Also record the attempts' acceptances (`accept_jobs`, as the ingest
    /// acceptor does with the sessions' `JobAccepted`) between claim and completion.
    #[arg(long)]
    accept: bool,
    /// At most this many attempts with an agent per host (unlimited when absent).
    #[arg(long)]
    cap: Option<u32>,
    /// Runs (each on a fresh database).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut ratios = Vec::new();
    for _ in 0..args.repeat.max(1) {
        if let Some(ratio) = run(&args).await? {
            ratios.push(ratio);
        }
    }
    if ratios.len() > 1 {
        let mut sorted = ratios.clone();
        sorted.sort_by(f64::total_cmp);
        println!(
            "{}",
            serde_json::json!({
                "bench": "queue_vs_bare_skip_locked_runs",
                "backend": "postgres",
                "cap": args.cap,
                "claim_complete_ratios": ratios,
                "median": sorted[sorted.len() / 2],
            })
        );
    }
    Ok(())
}

/// One run on a fresh database: the queue, then on PostgreSQL the bare loop;
/// returns the queue / bare ratio on PostgreSQL.
async fn run(args: &Args) -> Result<Option<f64>> {
    let backend = if args.postgres {
        TestBackend::Postgres
    } else {
        TestBackend::Sqlite
    };
    let db = TestDatabase::create(backend).await;
    let url = db.url().to_string();
    let store = Store::connect(&url).await?;
    store.migrate().await?;
    let hosts: Vec<String> = (0..args.hosts).map(|i| format!("h{i:04}")).collect();
    let settings = JobSettings {
        max_running_per_host: args.cap.unwrap_or(u32::MAX / 2),
        ..JobSettings::default()
    };

    let started = Instant::now();
    for chunk in (0..args.jobs).collect::<Vec<_>>().chunks(100) {
        let now = steward_shared::now_ms();
        let jobs: Vec<NewJob> = chunk
            .iter()
            .map(|i| NewJob {
                id: new_job_id(now),
                action: "checks.run".into(),
                params: Default::default(),
                host_id: hosts[i % hosts.len()].clone(),
                max_attempts: 1,
                timeout_secs: 60,
                idempotency_key: None,
                rollout_id: None,
                created_by: "token:bench".into(),
            })
            .collect();
        let audit: Vec<AuditEntry> = jobs
            .iter()
            .map(|j| AuditEntry::new("token:bench", "jobs.create", Outcome::Success).target(format!("job:{}", j.id)))
            .collect();
        store.enqueue_jobs(&jobs, &audit, now).await?;
    }
    let enqueue_secs = started.elapsed().as_secs_f64();
    if args.postgres {
        // Planner statistics as autovacuum keeps them on a running server (a
        // table filled a moment ago has none, and its plans would be those of
        // an empty table).
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await?;
        sqlx::query("ANALYZE jobs").execute(&pool).await?;
        pool.close().await;
    }

    let started = Instant::now();
    let mut done = 0usize;
    let mut seq = 0u64;
    let (mut claim_secs, mut complete_secs) = (0f64, 0f64);
    while done < args.jobs {
        let now = steward_shared::now_ms();
        let t = Instant::now();
        let claimed = store.claim_jobs("bench", &hosts, now, 256, &settings).await?;
        claim_secs += t.elapsed().as_secs_f64();
        if claimed.is_empty() {
            break;
        }
        if args.accept {
            // What the ingest acceptor does with the acceptances of many sessions.
            let acceptances: Vec<Acceptance> = claimed
                .iter()
                .map(|c| Acceptance {
                    host_id: c.host_id.clone(),
                    job_id: c.job_id.clone(),
                    attempt_id: c.attempt_id.clone(),
                })
                .collect();
            store
                .accept_jobs(&acceptances, steward_shared::now_ms(), &settings)
                .await?;
        }
        let mut by_host: std::collections::BTreeMap<String, Vec<JobReport>> = Default::default();
        for c in &claimed {
            seq += 1;
            by_host.entry(c.host_id.clone()).or_default().push(JobReport {
                seq,
                job_id: c.job_id.clone(),
                attempt_id: c.attempt_id.clone(),
                event: JobEventKind::Finished {
                    outcome: "succeeded".into(),
                    reason: String::new(),
                    result_json: "{}".into(),
                    finished_at_ms: now,
                    action: String::new(),
                    params: Default::default(),
                    started_at_ms: now,
                },
            });
        }
        let batches: Vec<IngestBatch> = by_host
            .keys()
            .map(|h| IngestBatch {
                host_id: h.clone(),
                results: Vec::new(),
                spool_dropped_total: 0,
            })
            .collect();
        let job_batches: Vec<JobBatch> = by_host
            .into_iter()
            .map(|(host_id, reports)| JobBatch { host_id, reports })
            .collect();
        let jobs = JobIngest {
            batches: &job_batches,
            settings: settings.clone(),
        };
        let t = Instant::now();
        store
            .ingest_with_jobs(&batches, &jobs, steward_shared::now_ms())
            .await?;
        complete_secs += t.elapsed().as_secs_f64();
        done += claimed.len();
    }
    let run_secs = started.elapsed().as_secs_f64();
    let queue_rate = done as f64 / run_secs;
    println!(
        "{}",
        serde_json::json!({
            "bench": "queue",
            "backend": store.backend_name(),
            "accept": args.accept,
            "cap": args.cap,
            "jobs": done,
            "enqueue_jobs_per_s": (args.jobs as f64 / enqueue_secs).round(),
            "claim_complete_jobs_per_s": queue_rate.round(),
            "claim_jobs_per_s": (done as f64 / claim_secs).round(),
            "complete_jobs_per_s": (done as f64 / complete_secs).round(),
            "end_to_end_jobs_per_s": (done as f64 / (enqueue_secs + run_secs)).round(),
        })
    );
    store.close().await;

    if !args.postgres {
        return Ok(None);
    }
    let bare_rate = bare_skip_locked(&url, args.jobs).await?;
    // The design target: the queue at least half the bare loop.
    let ratio = (queue_rate / bare_rate * 100.0).round() / 100.0;
    println!(
        "{}",
        serde_json::json!({
            "bench": "queue_vs_bare_skip_locked",
            "backend": "postgres",
            "claim_complete_ratio": ratio,
        })
    );
    drop(db);
    Ok(Some(ratio))
}

/// The same enqueue → claim → complete cycle with nothing but a table of
/// the same shape as `jobs` and `FOR UPDATE SKIP LOCKED` (no audit, no
/// per-host slots), 256 per claim, on a pool of the store's size. Returns
/// its claim + complete rate (jobs/s).
async fn bare_skip_locked(url: &str, n: usize) -> Result<f64> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .connect(url)
        .await?;
    sqlx::query("CREATE TABLE bare_jobs (LIKE jobs INCLUDING ALL)")
        .execute(&pool)
        .await?;
    let started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let now = steward_shared::now_ms();
        let ids: Vec<String> = chunk.iter().map(|i| format!("bare-{now}-{i:08}")).collect();
        let hosts: Vec<String> = chunk.iter().map(|i| format!("h{:04}", i % 100)).collect();
        sqlx::query(
            "INSERT INTO bare_jobs (id, action, params, host_id, state, attempt, max_attempts, timeout_secs, \
                 next_run_ms, created_ms, updated_ms, source, created_by)
             SELECT u.id, 'checks.run', '{}', u.host, 'queued', 0, 1, 60, $3, $3, $3, 'api', 'token:bench'
             FROM UNNEST($1::text[], $2::text[]) AS u (id, host)",
        )
        .bind(&ids)
        .bind(&hosts)
        .bind(now)
        .execute(&pool)
        .await?;
    }
    let enqueue_secs = started.elapsed().as_secs_f64();
    sqlx::query("ANALYZE bare_jobs").execute(&pool).await?;
    let started = Instant::now();
    let mut done = 0usize;
    let (mut claim_secs, mut complete_secs) = (0f64, 0f64);
    loop {
        let now = steward_shared::now_ms();
        let t = Instant::now();
        let mut tx = pool.begin().await?;
        let ids: Vec<(String,)> = sqlx::query_as(
            "WITH c AS (SELECT id FROM bare_jobs WHERE state = 'queued' AND next_run_ms <= $1 \
                        ORDER BY next_run_ms, id LIMIT 256 FOR UPDATE SKIP LOCKED)
             UPDATE bare_jobs SET state = 'dispatched', attempt = attempt + 1, \
                 attempt_id = bare_jobs.id || '-a' || (attempt + 1), lease_owner = 'bench', \
                 lease_expires_ms = $1 + 30000, dispatched_ms = $1, updated_ms = $1 \
             FROM c WHERE bare_jobs.id = c.id RETURNING bare_jobs.id",
        )
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        claim_secs += t.elapsed().as_secs_f64();
        if ids.is_empty() {
            break;
        }
        let ids: Vec<String> = ids.into_iter().map(|r| r.0).collect();
        let t = Instant::now();
        sqlx::query(
            "UPDATE bare_jobs SET state = 'succeeded', outcome = 'succeeded', result = '{}', finished_ms = $2, \
                 lease_owner = NULL, lease_expires_ms = NULL, updated_ms = $2 \
             WHERE id = ANY($1) AND attempt = 1 AND lease_owner = 'bench' AND state IN ('dispatched', 'running')",
        )
        .bind(&ids)
        .bind(steward_shared::now_ms())
        .execute(&pool)
        .await?;
        complete_secs += t.elapsed().as_secs_f64();
        done += ids.len();
    }
    let run_secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "bench": "queue_bare_skip_locked",
            "backend": "postgres",
            "jobs": done,
            "enqueue_jobs_per_s": (n as f64 / enqueue_secs).round(),
            "claim_complete_jobs_per_s": (done as f64 / run_secs).round(),
            "claim_jobs_per_s": (done as f64 / claim_secs).round(),
            "complete_jobs_per_s": (done as f64 / complete_secs).round(),
            "end_to_end_jobs_per_s": (done as f64 / (enqueue_secs + run_secs)).round(),
        })
    );
    pool.close().await;
    Ok(done as f64 / run_secs)
}
