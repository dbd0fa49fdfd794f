//! SLO evaluation: one full round over every SLO, as the alert evaluator's
//! `slo` source runs it every `[alerts] interval` (`list_slos`, the status of
//! each SLO from its one-minute buckets, the firing tiers as alert
//! candidates) — the same status the REST API and the rollout SLO gate read.
//!
//! Setup: `--slos` SLOs created through `Store::put_slo` (what
//! `PUT /api/v1/slos/{name}` calls): check availability over label
//! selectors, check latency, job success, a few grouped per host (over the
//! `--grouped-hosts` hosts their selector matches) and a few grouped per
//! label (10 data centres); windows 7d, 28d, 30d and the calendar month. Then
//! the buckets ingest would have written for `--hosts` hosts reporting
//! every 30 s, over everything a status reads (the window, at least 3 days),
//! written in batches through `Store::add_slo_events` (the counting path of
//! ingest and job outcomes: `slo_buckets` and `slo_hours` upserted in one
//! transaction; check results themselves are not stored, only the buckets
//! matter to the evaluation).
//!
//! Measured, over `--rounds` rounds: wall time per round (min, median, max)
//! and the peak resident memory growth of this process during a round
//! (`VmHWM` reset through `/proc/self/clear_refs` before each round, minus
//! `VmRSS` at its start); bucket rows and database size. Printed as JSON,
//! never asserted.
//!
//! `cargo run --release -p steward-bench --bin bench-slo -- [--postgres]`
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::json;
use sqlx::Connection;
use steward_controlplane::alert::config::AlertsConfig;
use steward_controlplane::alert::evaluator::Evaluator;
use steward_controlplane::audit::{AuditEntry, Outcome};
use steward_controlplane::slo::sli::{BucketKey, Increments};
use steward_controlplane::slo::spec::SloSpec;
use steward_controlplane::slo::status::{first_minute, status_of};
use steward_controlplane::store::testdb::{TestBackend, TestDatabase};

#[derive(Parser)]
struct Args {
    /// SLOs defined.
    #[arg(long, default_value_t = 100)]
    slos: usize,
    /// Hosts whose results the SLOs count.
    #[arg(long, default_value_t = 10_000)]
    hosts: usize,
    /// Hosts matched by the selector of each SLO grouped per host.
    #[arg(long, default_value_t = 100)]
    grouped_hosts: usize,
    /// Evaluation rounds measured.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Use a fresh PostgreSQL database (`STEWARD_TEST_PG_URL`) instead of SQLite.
    #[arg(long)]
    postgres: bool,
    /// Also time rounds that read every bucket minute by minute (as statuses
    /// did before `ReadPlan`: `Store::slo_buckets` + `status_of`), for comparison.
    #[arg(long)]
    per_minute: bool,
}

/// What one SLO counts, for the bucket fill.
#[derive(Clone, Copy)]
enum Shape {
    /// One bucket row per minute; `hosts` hosts report twice a minute.
    Minute { hosts: u64 },
    /// Job outcomes: a row every 10 minutes.
    Sparse,
    /// One row per minute per group, `groups` groups of `per_group` hosts.
    Grouped {
        groups: usize,
        per_group: u64,
        per_host: bool,
    },
}

fn definition(i: usize, args: &Args) -> (String, serde_json::Value, Shape) {
    let window = match i % 4 {
        0 => json!([{"duration": "30d"}]),
        1 => json!([{"duration": "28d"}]),
        2 => json!([{"duration": "7d"}]),
        _ => json!([{"duration": "1M", "isRolling": false}]),
    };
    let hosts = args.hosts as u64;
    let role = |k: usize| format!("role=r{}", k % 10);
    // The last six: three grouped per host, three per data centre.
    let grouped = args.slos.saturating_sub(6);
    if i >= grouped {
        let per_host = i < grouped + 3;
        let (group_by, selector, shape) = if per_host {
            (
                "host",
                "tier=db".to_string(),
                Shape::Grouped {
                    groups: args.grouped_hosts,
                    per_group: 1,
                    per_host: true,
                },
            )
        } else {
            (
                "label:dc",
                String::new(),
                Shape::Grouped {
                    groups: 10,
                    per_group: hosts / 10,
                    per_host: false,
                },
            )
        };
        let window = if per_host { json!([{"duration": "7d"}]) } else { window };
        let spec = json!({
            "description": format!("grouped {i}"),
            "indicator": {"type": "checkAvailability", "check": "http", "selector": selector},
            "objectives": [{"target": 0.99}], "timeWindow": window, "groupBy": group_by});
        return (format!("grouped-{i:03}"), spec, shape);
    }
    match i % 20 {
        0..=11 => (
            format!("avail-{i:03}"),
            json!({"indicator": {"type": "checkAvailability", "check": format!("check{}", i % 5), "selector": role(i)},
                   "objectives": [{"target": 0.999}], "timeWindow": window}),
            Shape::Minute { hosts: hosts / 10 },
        ),
        12..=17 => (
            format!("latency-{i:03}"),
            json!({"indicator": {"type": "checkLatency", "check": "http", "threshold": "250ms", "selector": ""},
                   "objectives": [{"target": 0.99}], "timeWindow": window}),
            Shape::Minute { hosts },
        ),
        _ => (
            format!("jobs-{i:03}"),
            json!({"indicator": {"type": "jobSuccess", "action": if i.is_multiple_of(2) { "deploy.apply" } else { "backup.run" }},
                   "objectives": [{"target": 0.95}], "timeWindow": window}),
            Shape::Sparse,
        ),
    }
}

/// A cheap deterministic hash (no RNG state to carry around).
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// (total, good) of one bucket: a bad minute now and then.
fn counts(seed: u64, total: u64) -> (i64, i64) {
    let h = mix(seed);
    let bad = if h.is_multiple_of(500) {
        (h >> 20) % total.max(1)
    } else {
        0
    };
    (total as i64, (total - bad) as i64)
}

type Row = (String, String, i64, i64, i64);

/// Bucket rows per `Store::add_slo_events` call during the fill.
const FILL_BATCH: usize = 20_000;

/// Every bucket row of one SLO from `from` to `to` (epoch minutes).
fn rows_of(idx: usize, name: &str, shape: Shape, from: i64, to: i64, out: &mut Vec<Row>) {
    let seed = (idx as u64) << 40;
    match shape {
        Shape::Minute { hosts } => {
            for m in from..=to {
                let (t, g) = counts(seed ^ m as u64, hosts * 2);
                out.push((name.to_string(), String::new(), m, t, g));
            }
        }
        Shape::Sparse => {
            for m in (from..=to).filter(|m| m % 10 == 0) {
                let (t, g) = counts(seed ^ m as u64, 20);
                out.push((name.to_string(), String::new(), m, t, g));
            }
        }
        Shape::Grouped {
            groups,
            per_group,
            per_host,
        } => {
            for g in 0..groups {
                let grp = if per_host {
                    format!("db-{g:05}")
                } else {
                    format!("dc{g}")
                };
                for m in from..=to {
                    let (t, gd) = counts(seed ^ ((g as u64) << 24) ^ m as u64, per_group * 2);
                    out.push((name.to_string(), grp.clone(), m, t, gd));
                }
            }
        }
    }
}

/// A connection of its own for what a running server's background work does
/// after the fill (statistics, checkpoints).
enum Filler {
    Pg(sqlx::PgConnection),
    Lite(sqlx::SqliteConnection),
}

impl Filler {
    async fn open(url: &str, postgres: bool) -> Result<Filler> {
        Ok(if postgres {
            Filler::Pg(sqlx::PgConnection::connect(url).await?)
        } else {
            Filler::Lite(sqlx::SqliteConnection::connect(url).await?)
        })
    }

    async fn finish(self) -> Result<()> {
        match self {
            Filler::Pg(mut c) => {
                // Planner statistics as autovacuum keeps them on a running server.
                sqlx::query("VACUUM ANALYZE slo_buckets, slo_hours")
                    .execute(&mut c)
                    .await?;
                c.close().await?;
            }
            Filler::Lite(mut c) => {
                // What the server's automatic checkpoints do.
                sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut c).await?;
                c.close().await?;
            }
        }
        Ok(())
    }
}

async fn db_size(db: &TestDatabase, store_url: &str, postgres: bool) -> Result<u64> {
    if postgres {
        let mut c = sqlx::PgConnection::connect(store_url).await?;
        let (n,): (i64,) = sqlx::query_as("SELECT pg_database_size(current_database())")
            .fetch_one(&mut c)
            .await?;
        c.close().await?;
        Ok(n as u64)
    } else {
        let path = db.url().trim_start_matches("sqlite://").to_string();
        let size = |p: &str| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        Ok(size(&path) + size(&format!("{path}-wal")))
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let backend = if args.postgres {
        TestBackend::Postgres
    } else {
        TestBackend::Sqlite
    };
    let db = TestDatabase::create(backend).await;
    let store = db.store().await;
    let now_ms = steward_shared::now_ms();
    let now_min = now_ms.div_euclid(60_000);

    let started = Instant::now();
    let mut bucket_rows = 0;
    for i in 0..args.slos {
        let (name, spec, shape) = definition(i, &args);
        let spec: SloSpec = serde_json::from_value(spec).context("SLO definition")?;
        spec.validate()
            .map_err(|e| anyhow::anyhow!("{}: {}", e.field, e.message))?;
        let audit = AuditEntry::new("token:bench", "slos.update", Outcome::Success).target(format!("slo:{name}"));
        store.put_slo(&name, &spec, audit, now_ms).await?;
        let mut rows = Vec::new();
        rows_of(i, &name, shape, first_minute(&spec, now_ms), now_min, &mut rows);
        bucket_rows += rows.len();
        // Through the store's counting path (minute and hour rows upserted
        // in one transaction per batch), as ingest writes them.
        for chunk in rows.chunks(FILL_BATCH) {
            let incs: Increments = chunk
                .iter()
                .map(|(slo, grp, minute, total, good)| {
                    let key = BucketKey {
                        slo: slo.clone(),
                        grp: grp.clone(),
                        minute: *minute,
                    };
                    (key, (*total as u64, *good as u64))
                })
                .collect();
            store.add_slo_events(&incs, now_ms).await?;
        }
    }
    let fill = Filler::open(db.url(), args.postgres).await?;
    fill.finish().await?;
    let fill_secs = started.elapsed().as_secs_f64();
    let size = db_size(&db, db.url(), args.postgres).await?;

    let cfg: AlertsConfig = serde_json::from_value(json!({}))?;
    let evaluator = Evaluator::new(store.clone(), cfg);
    let mut secs = Vec::new();
    let mut growth_kib = Vec::new();
    let mut candidates = 0;
    for _ in 0..args.rounds.max(1) {
        // Reset the peak (VmHWM) to the current resident size.
        steward_bench::reset_peak_rss();
        let rss0 = steward_bench::self_status_kib("VmRSS:");
        let t = Instant::now();
        let now = steward_shared::now_ms();
        candidates = evaluator.candidates("slo", now).await?.len();
        secs.push(t.elapsed().as_secs_f64());
        growth_kib.push(steward_bench::self_status_kib("VmHWM:").saturating_sub(rss0));
    }
    let mut sorted = secs.clone();
    sorted.sort_by(f64::total_cmp);
    let ms = |s: f64| (s * 1e4).round() / 10.0;
    let mut per_minute = serde_json::Value::Null;
    if args.per_minute {
        let (mut t_all, mut g_all) = (Vec::new(), Vec::new());
        let mut pm_candidates = 0;
        for _ in 0..args.rounds.max(1) {
            steward_bench::reset_peak_rss();
            let rss0 = steward_bench::self_status_kib("VmRSS:");
            let t = Instant::now();
            let now = steward_shared::now_ms();
            let mut statuses = Vec::new();
            for slo in store.list_slos().await? {
                let from = first_minute(&slo.spec, now);
                let buckets = store.slo_buckets(&slo.name, from, now.div_euclid(60_000)).await?;
                statuses.push(status_of(slo, &buckets, now));
            }
            let n = steward_controlplane::alert::slo_candidates(&statuses).len();
            t_all.push(t.elapsed().as_secs_f64());
            g_all.push(steward_bench::self_status_kib("VmHWM:").saturating_sub(rss0));
            pm_candidates = n;
        }
        t_all.sort_by(f64::total_cmp);
        per_minute = json!({
            "round_ms_min": ms(t_all[0]),
            "round_ms_median": ms(t_all[t_all.len() / 2]),
            "round_ms_max": ms(t_all[t_all.len() - 1]),
            "round_peak_rss_growth_mib_max": (*g_all.iter().max().unwrap_or(&0) as f64 / 1024.0 * 10.0).round() / 10.0,
            "alert_candidates": pm_candidates,
        });
    }
    println!(
        "{}",
        json!({
            "bench": "slo",
            "backend": store.backend_name(),
            "slos": args.slos,
            "hosts": args.hosts,
            "grouped_hosts": args.grouped_hosts,
            "bucket_rows": bucket_rows,
            "db_mib": (size as f64 / 1048576.0).round(),
            "fill_s": (fill_secs * 10.0).round() / 10.0,
            "rounds": secs.len(),
            "round_ms_min": ms(sorted[0]),
            "round_ms_median": ms(sorted[sorted.len() / 2]),
            "round_ms_max": ms(sorted[sorted.len() - 1]),
            "round_peak_rss_growth_mib_max": (*growth_kib.iter().max().unwrap_or(&0) as f64 / 1024.0 * 10.0).round() / 10.0,
            "rss_mib": (steward_bench::self_status_kib("VmRSS:") as f64 / 1024.0).round(),
            "alert_candidates": candidates,
            "per_minute": per_minute,
        })
    );
    store.close().await;
    drop(db);
    Ok(())
}
