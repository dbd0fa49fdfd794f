//! SLO storage on every selected backend: counting at ingest (exactly once),
//! grouping, job outcomes, definition changes, and the migration gap.
use std::borrow::Cow;
use std::collections::BTreeMap;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use steward_shared::status::{CheckResult, CheckStatus};

use super::testdb::{TestBackend, TestDatabase};
use super::*;
use crate::audit::{AuditEntry, Outcome};
use crate::model::IngestBatch;
use crate::slo::spec::SloSpec;

fn spec(json: serde_json::Value) -> SloSpec {
    let s: SloSpec = serde_json::from_value(json).unwrap();
    s.validate().unwrap();
    s
}

fn entry() -> AuditEntry {
    AuditEntry::new("test", "slos.update", Outcome::Success)
}

fn result(name: &str, status: CheckStatus, at_ms: i64, duration_us: u64) -> CheckResult {
    CheckResult {
        name: name.into(),
        kind: "http".into(),
        status,
        values: vec![],
        message: String::new(),
        observed_at_ms: at_ms,
        duration_us,
    }
}

async fn with_labels(store: &Store, host: &str, labels: &[(&str, &str)]) {
    store
        .ingest(
            &[IngestBatch {
                host_id: host.into(),
                results: vec![],
                spool_dropped_total: 0,
            }],
            1,
        )
        .await
        .unwrap();
    let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    assert!(store.set_host_labels(host, &labels).await.unwrap());
}

const MIN: i64 = 29_000_000;

#[tokio::test]
async fn results_are_counted_once_per_slo_group_and_minute_on_every_backend() {
    for backend in TestBackend::selected() {
        eprintln!("--- backend: {}", backend.name());
        let db = TestDatabase::create(backend).await;
        let store = db.store().await;
        with_labels(&store, "web-1", &[("env", "prod")]).await;
        with_labels(&store, "web-2", &[("env", "prod")]).await;
        with_labels(&store, "dev-1", &[("env", "dev")]).await;
        let avail = spec(serde_json::json!({
            "indicator": {"type": "checkAvailability", "check": "http", "selector": "env=prod"},
            "objectives": [{"target": 0.99}], "timeWindow": [{"duration": "7d"}], "groupBy": "host"}));
        let latency = spec(serde_json::json!({
            "indicator": {"type": "checkLatency", "check": "http", "threshold": "200ms"},
            "objectives": [{"target": 0.9}], "timeWindow": [{"duration": "28d"}]}));
        assert_eq!(
            store.put_slo("avail", &avail, entry(), 5).await.unwrap(),
            slo::PutOutcome::Created
        );
        assert_eq!(
            store.put_slo("lat", &latency, entry(), 5).await.unwrap(),
            slo::PutOutcome::Created
        );
        assert_eq!(
            store.put_slo("lat", &latency, entry(), 6).await.unwrap(),
            slo::PutOutcome::Unchanged
        );

        let t = MIN * 60_000;
        let web1 = IngestBatch {
            host_id: "web-1".into(),
            results: vec![
                (1, result("http", CheckStatus::Ok, t, 100_000)),
                (2, result("http", CheckStatus::Critical, t + 1_000, 50_000)),
                (3, result("http", CheckStatus::Ok, t + 61_000, 300_000)),
                (4, result("disk", CheckStatus::Critical, t + 61_000, 1)),
            ],
            spool_dropped_total: 0,
        };
        let others = vec![
            IngestBatch {
                host_id: "web-2".into(),
                results: vec![(1, result("http", CheckStatus::Ok, t + 2_000, 1_000))],
                spool_dropped_total: 0,
            },
            IngestBatch {
                host_id: "dev-1".into(),
                results: vec![(1, result("http", CheckStatus::Warning, t + 3_000, 1_000))],
                spool_dropped_total: 0,
            },
        ];
        let now = t + 120_000;
        store.ingest(std::slice::from_ref(&web1), now).await.unwrap();
        store.ingest(&others, now).await.unwrap();
        // A resend (the agent missed the ack) changes nothing.
        store.ingest(std::slice::from_ref(&web1), now).await.unwrap();

        let b = store.slo_buckets("avail", MIN - 10, MIN + 10).await.unwrap();
        let counts = |g: &str| {
            b[g].iter()
                .map(|x| (x.minute - MIN, x.total, x.good))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            b.keys().collect::<Vec<_>>(),
            ["web-1", "web-2"],
            "dev-1 is not selected"
        );
        assert_eq!(counts("web-1"), vec![(0, 2, 1), (1, 1, 1)]);
        assert_eq!(counts("web-2"), vec![(0, 1, 1)]);
        let b = store.slo_buckets("lat", MIN - 10, MIN + 10).await.unwrap();
        // Good: ok and at most 200 ms. Ungrouped: one series.
        let lat: Vec<_> = b[""].iter().map(|x| (x.minute - MIN, x.total, x.good)).collect();
        assert_eq!(lat, vec![(0, 4, 2), (1, 1, 0)]);

        // The status of a grouped SLO shows each host.
        let stored = store.get_slo("avail").await.unwrap().unwrap();
        let st = crate::slo::status::status(&store, stored, now).await.unwrap();
        assert_eq!(st.overall.events, 4);
        assert_eq!(st.groups.len(), 2);
        assert_eq!(st.groups[0].group, "web-1");
        assert!((st.groups[0].evaluation.sli.unwrap() - 2.0 / 3.0).abs() < 1e-12);

        // Job outcomes: the interface the job queue calls.
        let jobs = spec(serde_json::json!({
            "indicator": {"type": "jobSuccess", "action": "deploy.apply", "selector": "env=prod"},
            "objectives": [{"target": 0.95}], "timeWindow": [{"duration": "30d"}]}));
        store.put_slo("deploys", &jobs, entry(), 7).await.unwrap();
        store
            .record_job_outcome("web-1", "deploy.apply", true, t, now)
            .await
            .unwrap();
        store
            .record_job_outcome("web-2", "deploy.apply", false, t, now)
            .await
            .unwrap();
        store
            .record_job_outcome("dev-1", "deploy.apply", false, t, now)
            .await
            .unwrap();
        store
            .record_job_outcome("web-1", "backup.run", false, t, now)
            .await
            .unwrap();
        let b = store.slo_buckets("deploys", MIN, MIN).await.unwrap();
        assert_eq!((b[""][0].total, b[""][0].good), (2, 1));
        assert_eq!(
            store.slo_hours_drift().await.unwrap(),
            vec![],
            "hourly sums after counting"
        );

        // Changing what is counted resets the buckets; changing the objective does not.
        let mut tighter = avail.clone();
        tighter.objectives[0].target = 0.999;
        assert_eq!(
            store.put_slo("avail", &tighter, entry(), 8).await.unwrap(),
            slo::PutOutcome::Updated { reset: false }
        );
        assert_eq!(store.slo_buckets("avail", MIN - 10, MIN + 10).await.unwrap().len(), 2);
        let mut regrouped = tighter.clone();
        regrouped.group_by = Some("label:env".into());
        assert_eq!(
            store.put_slo("avail", &regrouped, entry(), 9).await.unwrap(),
            slo::PutOutcome::Updated { reset: true }
        );
        assert!(store.slo_buckets("avail", MIN - 10, MIN + 10).await.unwrap().is_empty());
        assert_eq!(
            store.slo_hours_drift().await.unwrap(),
            vec![],
            "hourly sums after a reset"
        );
        assert_eq!(store.list_slos().await.unwrap().len(), 3);
        // Every definition change was audited.
        let actions: Vec<String> = store
            .list_audit(&Default::default(), None, 100)
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|e| e.action)
            .collect();
        assert_eq!(
            actions.iter().filter(|a| a.starts_with("slos.")).count(),
            5,
            "{actions:?}"
        );

        assert_eq!(store.prune_slo_buckets(MIN + 1).await.unwrap(), 2);
        assert_eq!(
            store.slo_hours_drift().await.unwrap(),
            vec![],
            "hourly sums after pruning"
        );
        store.close().await;
    }
}

#[tokio::test]
async fn migrations_missing_below_the_newest_are_applied_later() {
    // Features developed in parallel can add a migration numbered below one that
    // is already applied: a database migrated without it gets it on the next run.
    // Synthetic versions far above the real ones: 9003 is applied first, then
    // 9001 and 9002 appear.
    for backend in TestBackend::selected() {
        let db = TestDatabase::create(backend).await;
        let store = db.store().await;
        let extra = |v: i64| {
            Migration::new(
                v,
                Cow::Owned(format!("late{v}")),
                MigrationType::Simple,
                match v {
                    9001 => "CREATE TABLE late_4 (x BIGINT)",
                    9002 => "CREATE TABLE late_5 (x BIGINT)",
                    _ => "CREATE TABLE newest_9003 (x BIGINT)",
                }
                .into_sql_str(),
                false,
            )
        };
        let list = |with_late: bool| {
            let backend_list = match &store.backend {
                Backend::Sqlite(_) => sqlite::MIGRATIONS,
                Backend::Postgres(_) => postgres::MIGRATIONS,
            };
            let mut v: Vec<Migration> = backend_list
                .iter()
                .map(|(version, d, sql)| {
                    Migration::new(
                        *version,
                        Cow::Borrowed(*d),
                        MigrationType::Simple,
                        sql.into_sql_str(),
                        false,
                    )
                })
                .collect();
            v.push(extra(9003));
            if with_late {
                v.push(extra(9001));
                v.push(extra(9002));
            }
            v.sort_by_key(|m| m.version);
            v
        };
        let run = |with_late: bool| {
            let m = Migrator::with_migrations(list(with_late));
            let store = store.clone();
            async move {
                match &store.backend {
                    Backend::Sqlite(b) => m.run(&b.write).await,
                    Backend::Postgres(b) => m.run(&b.pool).await,
                }
            }
        };
        run(false).await.unwrap();
        run(true).await.unwrap();
        store.ingest(&[], 1).await.unwrap();
        let n: i64 = match &store.backend {
            Backend::Sqlite(b) => sqlx::query_scalar("SELECT COUNT(*) FROM late_4")
                .fetch_one(&b.read)
                .await
                .unwrap(),
            Backend::Postgres(b) => sqlx::query_scalar("SELECT COUNT(*) FROM late_5")
                .fetch_one(&b.pool)
                .await
                .unwrap(),
        };
        assert_eq!(n, 0);
        store.close().await;
    }
}

#[tokio::test]
async fn the_rollout_slo_gate_closes_on_fast_burn_and_opens_when_it_stops() {
    use crate::rollouts::{SloGate, SloVerdict};
    use crate::slo::gate::StoreSloGate;
    for backend in TestBackend::selected() {
        eprintln!("--- backend: {}", backend.name());
        let db = TestDatabase::create(backend).await;
        let store = db.store().await;
        for h in ["web-1", "web-2", "web-3", "web-4"] {
            with_labels(&store, h, &[("app", "shop")]).await;
        }
        // 30-day window: the gate tier is page-1h unscaled (60 min and 5 min, 14.4x).
        let checkout = spec(serde_json::json!({
            "indicator": {"type": "checkAvailability", "check": "http", "selector": "app=shop"},
            "objectives": [{"target": 0.99}], "timeWindow": [{"duration": "30d"}], "groupBy": "host"}));
        store.put_slo("checkout", &checkout, entry(), 5).await.unwrap();
        store.reload_sli_index().await.unwrap();
        let gate = StoreSloGate { store: store.clone() };
        let names = vec!["checkout".to_string()];
        let minute = |m: i64| (MIN + m) * 60_000;
        // One result per host and minute; `bad` hosts fail.
        let report = |m: i64, bad: &'static [&'static str]| {
            let store = store.clone();
            async move {
                let batches: Vec<IngestBatch> = ["web-1", "web-2", "web-3", "web-4"]
                    .iter()
                    .map(|h| IngestBatch {
                        host_id: h.to_string(),
                        results: vec![(
                            m as u64 + 1,
                            result(
                                "http",
                                if bad.contains(h) {
                                    CheckStatus::Critical
                                } else {
                                    CheckStatus::Ok
                                },
                                minute(m) + 1_000,
                                1_000,
                            ),
                        )],
                        spool_dropped_total: 0,
                    })
                    .collect();
                store.ingest(&batches, minute(m) + 2_000).await.unwrap();
            }
        };
        // No events at all: sparse data never closes the gate.
        assert_eq!(gate.evaluate(&names, minute(0)).await, SloVerdict::Holds);
        // Every host healthy for an hour: holds.
        for m in 0..60 {
            report(m, &[]).await;
        }
        assert_eq!(gate.evaluate(&names, minute(59) + 30_000).await, SloVerdict::Holds);
        // web-2 fails for 10 minutes: its group burns at 100x over 5 min and
        // 10/60 / 0.01 = 16.7x over the hour, above 14.4x; the whole SLO
        // (a quarter of that) does not, so the group closes the gate.
        for m in 60..70 {
            report(m, &["web-2"]).await;
        }
        match gate.evaluate(&names, minute(69) + 30_000).await {
            SloVerdict::Burning { slo, detail } => {
                assert_eq!(slo, "checkout");
                assert!(detail.contains("group web-2") && detail.contains("14.4x"), "{detail}");
            }
            other => panic!("expected the gate closed, got {other:?}"),
        }
        // web-2 recovers: after 5 clean minutes the short window is clean and the gate opens.
        for m in 70..75 {
            report(m, &[]).await;
        }
        assert_eq!(gate.evaluate(&names, minute(74) + 30_000).await, SloVerdict::Holds);
        // A gate naming an SLO that does not exist stays closed.
        match gate.evaluate(&["nope".to_string()], minute(74)).await {
            SloVerdict::Burning { slo, detail } => assert_eq!((slo.as_str(), detail.as_str()), ("nope", "no such SLO")),
            other => panic!("expected the gate closed, got {other:?}"),
        }
        store.close().await;
    }
}

/// A status read through its [`ReadPlan`] (segment sums: whole hours from
/// `slo_hours`, the edges from `slo_buckets`) shows exactly what the same
/// buckets read minute by minute show: every window kind, grouped and not,
/// with minutes before the window, timeslices of 5, 7 and 60 minutes, at
/// instants whose segment edges fall inside hours and on them, before and
/// after pruning cuts an hour; the hourly table stays the minutes' sums.
#[tokio::test]
async fn statuses_read_through_the_plan_equal_those_read_minute_by_minute_on_every_backend() {
    use crate::slo::sli::{BucketKey, Increments};
    use crate::slo::status::{ReadPlan, first_minute, status, status_of};
    // 2026-11-23 12:37:12.345 UTC: mid-month, not on an hour; then the last
    // and the first minute of an hour.
    let nows: [i64; 3] = [1_763_901_432_345, 1_763_902_799_000, 1_763_902_800_500];
    let defs = [
        ("r30", "30d", true, None),
        ("r28", "28d", false, None),
        ("r7", "7d", true, None),
        ("r90", "90d", false, None),
        ("month", "1M", false, None),
        ("h12", "12h", true, None),
        ("slices", "30d", false, Some("5m")),
        ("slices7", "7d", true, Some("7m")),
        ("slices60", "28d", false, Some("1h")),
    ];
    for backend in TestBackend::selected() {
        eprintln!("--- backend: {}", backend.name());
        let db = TestDatabase::create(backend).await;
        let store = db.store().await;
        let mut specs = Vec::new();
        for (k, &now) in nows.iter().enumerate() {
            let to = now.div_euclid(60_000);
            for (i, &(base, duration, grouped, slice)) in defs.iter().enumerate() {
                let name = format!("{base}-{k}");
                let mut json = serde_json::json!({
                    "indicator": {"type": "checkAvailability", "check": "http"},
                    "objectives": [{"target": 0.99}],
                    "timeWindow": [{"duration": duration, "isRolling": duration != "1M"}]});
                if grouped {
                    json["groupBy"] = "host".into();
                }
                if let Some(w) = slice {
                    json["budgetingMethod"] = "Timeslices".into();
                    json["objectives"] =
                        serde_json::json!([{"target": 0.9, "timeSliceTarget": 0.95, "timeSliceWindow": w}]);
                }
                let s = spec(json);
                assert!(ReadPlan::of(&s, now).starts.is_some(), "{name}");
                store.put_slo(&name, &s, entry(), 1).await.unwrap();
                let from = first_minute(&s, now);
                let mut incs = Increments::new();
                let groups: &[&str] = if grouped { &["a", "b"] } else { &[""] };
                for m in (from - 50..=to + 2).filter(|m| m % 7 == 0 || *m > to - 30) {
                    for (g, grp) in groups.iter().enumerate() {
                        let total = 1 + (m as u64 * 31 + (i + g) as u64) % 11;
                        let bad = if m % 13 == 0 { total / 2 + 1 } else { 0 };
                        let key = BucketKey {
                            slo: name.clone(),
                            grp: grp.to_string(),
                            minute: m,
                        };
                        incs.insert(key, (total, total - bad.min(total)));
                    }
                }
                store.add_slo_events(&incs, now).await.unwrap();
                specs.push((name, now));
            }
        }
        assert_eq!(store.slo_hours_drift().await.unwrap(), vec![], "hourly sums");
        let check = |store: Store, specs: Vec<(String, i64)>| async move {
            for (name, now) in specs {
                let stored = store.get_slo(&name).await.unwrap().unwrap();
                let plan = ReadPlan::per_minute(&stored.spec, now);
                let minutes = store.slo_buckets(&name, plan.from, plan.to).await.unwrap();
                let expected = status_of(stored.clone(), &minutes, now);
                let got = status(&store, stored, now).await.unwrap();
                assert!(expected.overall.events > 0, "{name}");
                assert_eq!(got.overall, expected.overall, "{name}");
                assert_eq!(got.budget_history, expected.budget_history, "{name}");
                assert_eq!(got.groups.len(), expected.groups.len(), "{name}");
                for (a, b) in got.groups.iter().zip(&expected.groups) {
                    assert_eq!((&a.group, &a.evaluation), (&b.group, &b.evaluation), "{name}");
                }
            }
        };
        check(store.clone(), specs.clone()).await;
        // Pruning inside an hour that the shortest windows still read.
        let cut = nows[0].div_euclid(60_000) - 4000 - 17;
        assert!(store.prune_slo_buckets(cut).await.unwrap() > 0);
        assert_eq!(
            store.slo_hours_drift().await.unwrap(),
            vec![],
            "hourly sums after pruning"
        );
        check(store.clone(), specs).await;
        store.close().await;
    }
}
