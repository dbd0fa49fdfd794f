//! KPI evaluation: one full sampling round of the KPI catalog, exactly what
//! the KPI sampler does every `[kpi] sample_interval`
//! (`kpi::sampler::sample_once`: `Store::kpi_data` over the `[kpi] window`,
//! every `kpi::CATALOG` entry computed, the values stored in `kpi_samples`).
//!
//! Setup, inserted with batched SQL (generated server-side) into the real
//! tables, for `--hosts` hosts over `--days` days:
//! - `hosts`: labels, agent versions (10 % behind), 2 % disconnected;
//! - `check_results`: `--checks` checks per host every `--check-interval`
//!   (the first a `disk` check with a falling `free_bytes:/`), 0.3 %
//!   critical and 0.7 % warning; `check_latest` to match, plus a `tls`
//!   check with `days_left` per host;
//! - `jobs`: per host and day a `deploy.apply` (params `app`,
//!   `commit_time`; 2 % failed, each followed by a `deploy.rollback`), a
//!   locally scheduled `backup.run` (1 % failed) and an API `checks.run`;
//! - `backup_status`: two backups per host with an RPO, verified;
//! - the per-day and per-hour check counts (`kpi_check_days`,
//!   `kpi_check_hours`) recounted from `check_results` as the migration's
//!   backfill does (`recount_s`), since the fill bypasses the ingest path
//!   that keeps them.
//!
//! Measured, over `--rounds` rounds: wall time per round (min, median, max)
//! and the peak resident memory growth of this process during a round
//! (`VmHWM` reset through `/proc/self/clear_refs`, minus `VmRSS` at the
//! start); rows and database size. Printed as JSON, never asserted.
//!
//! `cargo run --release -p steward-bench --bin bench-kpi -- [--postgres] [--keep] [--reuse URL]`
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use serde_json::json;
use sqlx::Connection;
use steward_controlplane::kpi::sampler::{SamplerSettings, current_version, sample_once};
use steward_controlplane::store::testdb::{TestBackend, TestDatabase};

#[derive(Parser)]
struct Args {
    /// Hosts in the fleet.
    #[arg(long, default_value_t = 1_000)]
    hosts: i64,
    /// Days of data (also the KPI window).
    #[arg(long, default_value_t = 30)]
    days: i64,
    /// Checks per host.
    #[arg(long, default_value_t = 4)]
    checks: i64,
    /// Interval between two results of one check.
    #[arg(long, default_value = "10m")]
    check_interval: steward_shared::units::Duration,
    /// Evaluation rounds measured.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Use a fresh PostgreSQL database (`STEWARD_TEST_PG_URL`) instead of SQLite.
    #[arg(long)]
    postgres: bool,
    /// Keep the database afterwards (its URL is printed as `kept`), to profile the queries by hand.
    #[arg(long)]
    keep: bool,
    /// Measure on a database kept by an earlier `--keep` run (no fill, no migration).
    #[arg(long)]
    reuse: Option<String>,
}

const DAY_MS: i64 = 86_400_000;

/// Ids `0..$1` as a recursive CTE both backends run (BIGINT: products with
/// milliseconds overflow PostgreSQL's 32-bit integer).
const SERIES: &str = "WITH RECURSIVE s(i) AS (SELECT CAST(0 AS BIGINT) UNION ALL SELECT i + 1 FROM s WHERE i + 1 < $1)";

const HOSTS: &str = "INSERT INTO hosts (id, hostname, labels, facts, agent_version, first_seen_ms, last_seen_ms, \
                     connected) \
     SELECT 'h' || (100000 + i), 'h' || (100000 + i), '{\"role\":\"r' || (i % 10) || '\",\"dc\":\"dc' || (i % 5) || '\"}', \
            '{}', CASE WHEN i % 10 = 0 THEN '0.0.1' ELSE $3 END, $2, $2, (i % 50 <> 0) FROM s";

/// One host's results: `$1` rows, `$3` checks, the host `$4`, `$5` its number,
/// from `$2` every `$6` ms.
const RESULTS: &str = "INSERT INTO check_results (host_id, seq, name, kind, status, values_json, message, \
                       observed_ms, duration_us, ingested_ms) \
     SELECT $4, i + 1, 'check' || (i % $3), CASE WHEN i % $3 = 0 THEN 'disk' ELSE 'http' END, \
            CASE WHEN (i * 7919 + $5 * 31) % 1000 < 3 THEN 'critical' \
                 WHEN (i * 7919 + $5 * 31) % 1000 < 10 THEN 'warning' ELSE 'ok' END, \
            CASE WHEN i % $3 = 0 \
                 THEN '[{\"name\":\"free_bytes:/\",\"value\":' || (500000000000 - (i / $3) * (1000 + $5 * 100)) || \
                      ',\"unit\":\"bytes\"}]' \
                 ELSE '[]' END, \
            '', $2 + (i / $3) * $6, 1000 + (i * 13) % 50000, $2 + (i / $3) * $6 + 500 FROM s";

const LATEST: &str = "INSERT INTO check_latest (host_id, name, kind, status, values_json, message, observed_ms, \
                      duration_us, seq) \
     SELECT 'h' || (100000 + i / ($3 + 1)), \
            CASE WHEN i % ($3 + 1) = $3 THEN 'cert' ELSE 'check' || (i % ($3 + 1)) END, \
            CASE WHEN i % ($3 + 1) = $3 THEN 'tls' WHEN i % ($3 + 1) = 0 THEN 'disk' ELSE 'http' END, 'ok', \
            CASE WHEN i % ($3 + 1) = $3 \
                 THEN '[{\"name\":\"days_left\",\"value\":' || ((i / ($3 + 1)) % 90) || ',\"unit\":\"days\"}]' \
                 ELSE '[]' END, '', $2, 1000, 1 FROM s";

/// Per host (`i % hosts`) and day (`i / hosts`): a deploy, a rollback after
/// a failed deploy, a local backup run and an API `checks.run`.
const JOBS: &str = "INSERT INTO jobs (id, action, params, host_id, state, timeout_secs, next_run_ms, created_ms, \
                    updated_ms, started_ms, finished_ms, outcome, source, created_by) \
     SELECT id, action, params, host, state, 600, created, created, created + 65000, created + 5000, \
            created + 65000, state, source, 'token:bench' FROM ( \
       SELECT 'dep-' || i AS id, 'deploy.apply' AS action, \
              '{\"app\":\"web\",\"commit_time\":\"' || (($2 + (i / $3) * 86400000 + (i % $3) * 60000) / 1000 - 3600) \
                  || '\"}' AS params, \
              'h' || (100000 + i % $3) AS host, \
              CASE WHEN (i * 7) % 50 = 0 THEN 'failed' ELSE 'succeeded' END AS state, \
              $2 + (i / $3) * 86400000 + (i % $3) * 60000 AS created, 'api' AS source FROM s \
       UNION ALL \
       SELECT 'rb-' || i, 'deploy.rollback', '{\"app\":\"web\"}', 'h' || (100000 + i % $3), 'succeeded', \
              $2 + (i / $3) * 86400000 + (i % $3) * 60000 + 120000, 'api' FROM s WHERE (i * 7) % 50 = 0 \
       UNION ALL \
       SELECT 'bk-' || i, 'backup.run', '{\"name\":\"daily\"}', 'h' || (100000 + i % $3), \
              CASE WHEN (i * 13) % 100 = 0 THEN 'failed' ELSE 'succeeded' END, \
              $2 + (i / $3) * 86400000 + 7200000 + (i % $3) * 1000, 'local' FROM s \
       UNION ALL \
       SELECT 'cr-' || i, 'checks.run', '{}', 'h' || (100000 + i % $3), 'succeeded', \
              $2 + (i / $3) * 86400000 + 36000000 + (i % $3) * 1000, 'api' FROM s \
     ) AS j";

const BACKUPS: &str = "INSERT INTO backup_status (host_id, name, last_snapshot_ms, rpo_secs, last_verify_ms, \
                       last_verify_ok) \
     SELECT 'h' || (100000 + i / 2), CASE WHEN i % 2 = 0 THEN 'daily' ELSE 'db' END, \
            $2 - (i % 30) * 3600000, 86400, $2 - (i % 120) * 86400000, CASE WHEN i % 17 = 0 THEN 0 ELSE 1 END \
     FROM s";

/// Runs `sql` (with [`SERIES`] in front) with integer parameters, on either backend.
async fn run(c: &mut Conn, sql: &str, params: &[P<'_>]) -> Result<u64> {
    let sql = format!("{SERIES} {sql}");
    Ok(match c {
        Conn::Pg(c) => {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for p in params {
                q = match p {
                    P::I(v) => q.bind(*v),
                    P::T(v) => q.bind(*v),
                };
            }
            q.execute(&mut *c).await?.rows_affected()
        }
        Conn::Lite(c) => {
            let sql = sql.replace('$', "?");
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for p in params {
                q = match p {
                    P::I(v) => q.bind(*v),
                    P::T(v) => q.bind(*v),
                };
            }
            q.execute(&mut *c).await?.rows_affected()
        }
    })
}

enum P<'a> {
    I(i64),
    T(&'a str),
}

enum Conn {
    Pg(sqlx::PgConnection),
    Lite(sqlx::SqliteConnection),
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let backend = if args.postgres {
        TestBackend::Postgres
    } else {
        TestBackend::Sqlite
    };
    let settings = SamplerSettings {
        interval: Duration::from_secs(60),
        window_ms: args.days * DAY_MS,
        keep_ms: 90 * DAY_MS,
    };
    if let Some(url) = &args.reuse {
        // Not migrated: the database is as the run that kept it left it.
        let store = steward_controlplane::store::Store::connect(url).await?;
        let (rounds, values) = measure(&store, &settings, args.rounds).await?;
        println!(
            "{}",
            json!({"bench": "kpi", "backend": store.backend_name(), "reused": true, "rounds": rounds, "values": values})
        );
        store.close().await;
        return Ok(());
    }
    let db = TestDatabase::create(backend).await;
    let store = db.store().await;
    let now_ms = steward_shared::now_ms();
    let start = now_ms - args.days * DAY_MS;
    let interval_ms = (args.check_interval.as_std().as_millis() as i64).max(1000);

    let started = Instant::now();
    let mut c = if args.postgres {
        Conn::Pg(sqlx::PgConnection::connect(db.url()).await?)
    } else {
        Conn::Lite(sqlx::SqliteConnection::connect(db.url()).await?)
    };
    let version = current_version();
    let hosts = run(&mut c, HOSTS, &[P::I(args.hosts), P::I(now_ms), P::T(&version)]).await?;
    let per_host = (args.days * DAY_MS / interval_ms) * args.checks;
    let mut results = 0;
    for h in 0..args.hosts {
        let id = format!("h{}", 100_000 + h);
        results += run(
            &mut c,
            RESULTS,
            &[
                P::I(per_host),
                P::I(start),
                P::I(args.checks),
                P::T(&id),
                P::I(h),
                P::I(interval_ms),
            ],
        )
        .await?;
    }
    let latest = run(
        &mut c,
        LATEST,
        &[P::I(args.hosts * (args.checks + 1)), P::I(now_ms), P::I(args.checks)],
    )
    .await?;
    let jobs = run(
        &mut c,
        JOBS,
        &[P::I(args.hosts * args.days), P::I(start), P::I(args.hosts)],
    )
    .await?;
    let backups = run(&mut c, BACKUPS, &[P::I(args.hosts * 2), P::I(now_ms)]).await?;
    // The per-day and per-hour check counts the ingest path keeps, filled
    // as the migration's backfill fills them.
    let recount = Instant::now();
    store.recount_kpi_checks().await?;
    let recount_secs = recount.elapsed().as_secs_f64();
    let size = match &mut c {
        Conn::Pg(c) => {
            // Planner statistics as autovacuum keeps them on a running server.
            sqlx::query("VACUUM ANALYZE").execute(&mut *c).await?;
            let (n,): (i64,) = sqlx::query_as("SELECT pg_database_size(current_database())")
                .fetch_one(&mut *c)
                .await?;
            n as u64
        }
        Conn::Lite(c) => {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut *c).await?;
            let path = db.url().trim_start_matches("sqlite://").to_string();
            std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
        }
    };
    match c {
        Conn::Pg(c) => c.close().await?,
        Conn::Lite(c) => c.close().await?,
    }
    let fill_secs = started.elapsed().as_secs_f64();

    let (rounds, values) = measure(&store, &settings, args.rounds).await?;
    println!(
        "{}",
        json!({
            "bench": "kpi",
            "backend": store.backend_name(),
            "kpis": values.len(),
            "hosts": hosts,
            "days": args.days,
            "check_results": results,
            "check_latest": latest,
            "jobs": jobs,
            "backups": backups,
            "db_mib": (size as f64 / 1048576.0).round(),
            "fill_s": (fill_secs * 10.0).round() / 10.0,
            "recount_s": (recount_secs * 10.0).round() / 10.0,
            "rounds": rounds,
            "values": values,
        })
    );
    store.close().await;
    if args.keep {
        eprintln!("kept: {}", db.into_url());
    }
    Ok(())
}

/// `rounds` sampling rounds (time, memory), then where one round's time goes:
/// `Store::kpi_data` over the window, the same over an empty window (what
/// does not depend on the window), and the catalog's computations.
async fn measure(
    store: &steward_controlplane::store::Store,
    settings: &SamplerSettings,
    rounds: usize,
) -> Result<(serde_json::Value, serde_json::Map<String, serde_json::Value>)> {
    let mut secs = Vec::new();
    let mut growth_kib = Vec::new();
    let mut values = Vec::new();
    for _ in 0..rounds.max(1) {
        steward_bench::reset_peak_rss();
        let rss0 = steward_bench::self_status_kib("VmRSS:");
        let t = Instant::now();
        values = sample_once(store, settings, steward_shared::now_ms()).await?;
        secs.push(t.elapsed().as_secs_f64());
        growth_kib.push(steward_bench::self_status_kib("VmHWM:").saturating_sub(rss0));
    }
    let mut sorted = secs.clone();
    sorted.sort_by(f64::total_cmp);
    let ms = |s: f64| (s * 1e4).round() / 10.0;
    let now = steward_shared::now_ms();
    let t = Instant::now();
    let data = store.kpi_data(now, settings.window_ms).await?;
    let data_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    store.kpi_data(now, 0).await?;
    let fixed_secs = t.elapsed().as_secs_f64();
    let ctx = steward_controlplane::kpi::Ctx {
        now_ms: now,
        window_ms: settings.window_ms,
        current_version: current_version(),
    };
    let t = Instant::now();
    let mut per_kpi = Vec::new();
    for k in steward_controlplane::kpi::CATALOG {
        let tk = Instant::now();
        let _ = (k.compute)(&data, &ctx);
        per_kpi.push((tk.elapsed().as_secs_f64(), k.name));
    }
    let compute_secs = t.elapsed().as_secs_f64();
    per_kpi.sort_by(|a, b| b.0.total_cmp(&a.0));
    let slowest: serde_json::Map<String, serde_json::Value> = per_kpi
        .iter()
        .take(5)
        .map(|(s, n)| (n.to_string(), json!(ms(*s))))
        .collect();
    let values: serde_json::Map<String, serde_json::Value> = values
        .into_iter()
        .map(|(k, v)| (k.to_string(), json!(v.map(|v| (v * 1000.0).round() / 1000.0))))
        .collect();
    let rounds = json!({
        "rounds": secs.len(),
        "round_ms_min": ms(sorted[0]),
        "round_ms_median": ms(sorted[sorted.len() / 2]),
        "round_ms_max": ms(sorted[sorted.len() - 1]),
        "round_peak_rss_growth_mib_max": (*growth_kib.iter().max().unwrap_or(&0) as f64 / 1024.0 * 10.0).round() / 10.0,
        "rss_mib": (steward_bench::self_status_kib("VmRSS:") as f64 / 1024.0).round(),
        "kpi_data_ms": ms(data_secs),
        "kpi_data_empty_window_ms": ms(fixed_secs),
        "compute_ms": ms(compute_secs),
        "compute_ms_slowest": slowest,
    });
    Ok((rounds, values))
}
