//! Every KPI against fixtures whose answer is computed by hand: pure cases
//! for the arithmetic, and one fleet written through the store (both
//! backends, fixed clock) for the SQL and the computations together.
use std::collections::BTreeMap;

use steward_shared::status::{CheckResult, CheckStatus, Value};

use super::*;
use crate::model::{AgentHello, IngestBatch};
use crate::store::Store;
use crate::store::testdb::{TestBackend, TestDatabase};

const NOW: i64 = 1_800_000_000_000;
const SEC: i64 = 1000;
const MIN: i64 = 60 * SEC;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;
const WINDOW: i64 = 7 * DAY;

fn ctx() -> Ctx {
    Ctx {
        now_ms: NOW,
        window_ms: WINDOW,
        current_version: "1.2.0".into(),
    }
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-9)
}

#[track_caller]
fn assert_close(name: &str, got: Option<f64>, want: f64) {
    assert!(close(got, want), "{name}: got {got:?}, want {want}");
}

#[test]
fn median_and_percentile_by_hand() {
    assert_eq!(median(vec![]), None);
    assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
    assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
    let v: Vec<f64> = (1..=20).map(f64::from).collect();
    // nearest rank: ceil(0.95 * 20) = 19th value
    assert_eq!(percentile(v, 95.0), Some(19.0));
    assert_eq!(percentile(vec![7.0], 95.0), Some(7.0));
}

#[test]
fn least_squares_recovers_a_known_line() {
    // y = 5 - 2x, exactly
    let pts: Vec<(f64, f64)> = (0..5).map(|x| (f64::from(x), 5.0 - 2.0 * f64::from(x))).collect();
    let (a, b) = least_squares(&pts).unwrap();
    assert!((a - 5.0).abs() < 1e-12 && (b + 2.0).abs() < 1e-12);
    // symmetric noise around y = 10 + x leaves the fit unchanged
    let noisy = [(0.0, 11.0), (0.0, 9.0), (2.0, 13.0), (2.0, 11.0)];
    let (a, b) = least_squares(&noisy).unwrap();
    assert!((a - 10.0).abs() < 1e-12 && (b - 1.0).abs() < 1e-12);
    assert_eq!(least_squares(&[(1.0, 1.0)]), None);
    assert_eq!(least_squares(&[(1.0, 1.0), (1.0, 2.0)]), None);
}

#[test]
fn disk_forecast_of_a_linear_series() {
    // 100 GB/h shrinking, 300 GB left now: full in exactly 3 h.
    let gb = 1e9;
    let samples: Vec<(i64, f64)> = [5, 4, 3, 2, 1]
        .iter()
        .map(|h| (NOW - h * HOUR, (300 + 100 * h) as f64 * gb))
        .collect();
    let secs = seconds_to_full(&samples, NOW).unwrap();
    assert!((secs - 3.0 * 3600.0).abs() < 1e-6, "{secs}");
    // growing free space: never full; one sample: no forecast; already at 0: now
    assert_eq!(seconds_to_full(&[(NOW - HOUR, 1.0), (NOW, 2.0)], NOW), None);
    assert_eq!(seconds_to_full(&[(NOW, 2.0)], NOW), None);
    assert_eq!(seconds_to_full(&[(NOW - HOUR, 10.0), (NOW, 0.0)], NOW), Some(0.0));
    let disk = |host: &str, h: i64, free: f64| DiskSample {
        host_id: host.into(),
        mount: "/".into(),
        at_ms: NOW - h * HOUR,
        free_bytes: free,
    };
    let data = KpiData {
        disks: vec![
            // full in 3 h
            disk("a", 2, 500.0),
            disk("a", 1, 400.0),
            // full in 20 h
            disk("b", 2, 220.0),
            disk("b", 1, 210.0),
            // full in 30 h
            disk("c", 2, 320.0),
            disk("c", 1, 310.0),
            // a sample older than 6 h is ignored: one sample left, no forecast
            disk("d", 7, 900.0),
            disk("d", 1, 10.0),
        ],
        ..KpiData::default()
    };
    let r = (find("disk_full_forecast").unwrap().compute)(&data, &ctx());
    assert_eq!(r.value, Some(2.0));
    assert_eq!(r.details["within_4h"], 1.0);
    assert_eq!(r.details["hosts_with_samples"], 4.0);
}

#[test]
fn commit_times_parse_in_three_forms() {
    assert_eq!(parse_commit_time("1800000000"), Some(1_800_000_000_000));
    assert_eq!(parse_commit_time("1800000000000"), Some(1_800_000_000_000));
    assert_eq!(parse_commit_time("2027-01-15T08:00:00Z"), Some(1_800_000_000_000));
    assert_eq!(parse_commit_time("yesterday"), None);
}

#[test]
fn no_data_is_none_not_zero() {
    let d = KpiData::default();
    for k in CATALOG {
        let r = (k.compute)(&d, &ctx());
        match k.unit {
            Unit::Ratio | Unit::Seconds => assert_eq!(r.value, None, "{}", k.name),
            Unit::Hosts | Unit::PerDay => assert_eq!(r.value, Some(0.0), "{}", k.name),
        }
    }
}

#[test]
fn catalog_names_are_unique_and_defined() {
    let mut names: Vec<&str> = CATALOG.iter().map(|k| k.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), CATALOG.len());
    for k in CATALOG {
        assert!(!k.definition.is_empty() && !k.title.is_empty(), "{}", k.name);
    }
    assert!(MISSING.is_empty(), "{MISSING:?}");
    for name in ["rollout_success_rate", "api_availability", "api_latency_p95"] {
        assert!(find(name).is_some(), "{name}");
    }
}

// ------------------------------------------------------------ the fixture fleet

fn result(name: &str, kind: &str, status: CheckStatus, at: i64, values: Vec<Value>) -> CheckResult {
    CheckResult {
        name: name.into(),
        kind: kind.into(),
        status,
        values,
        message: String::new(),
        observed_at_ms: at,
        duration_us: 1,
    }
}

fn free(mount: &str, bytes: f64) -> Value {
    Value::new(format!("free_bytes:{mount}"), bytes, "bytes")
}

fn days_left(d: f64) -> Vec<Value> {
    vec![Value::new("days_left", d, "days")]
}

#[allow(clippy::too_many_arguments)]
fn job(
    id: &str,
    host: &str,
    action: &str,
    state: &str,
    outcome: Option<&str>,
    created: i64,
    started: Option<i64>,
    finished: Option<i64>,
    params: &[(&str, String)],
) -> JobRow {
    JobRow {
        id: id.into(),
        host_id: host.into(),
        action: action.into(),
        state: state.into(),
        outcome: outcome.map(str::to_string),
        params: params.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        source: "api".into(),
        created_ms: created,
        updated_ms: finished.or(started).unwrap_or(created),
        started_ms: started,
        finished_ms: finished,
    }
}

/// Four hosts (team a: h1, h2; team b: h3, h4) with results, jobs and
/// backups; the expected values are worked out beside each assertion.
async fn fixture_fleet(store: &Store) {
    for (id, team, version) in [
        ("h1", "a", "1.2.0"),
        ("h2", "a", "1.3.0"),
        ("h3", "b", "1.1.9"),
        ("h4", "b", "1.2.0"),
    ] {
        let hello = AgentHello {
            agent_version: version.into(),
            facts: BTreeMap::new(),
            spool_dropped_total: 0,
        };
        store.agent_connected(id, &hello, NOW - HOUR).await.unwrap();
        let labels = BTreeMap::from([("team".to_string(), team.to_string())]);
        assert!(store.set_host_labels(id, &labels).await.unwrap());
    }
    store.agent_disconnected("h3", NOW - MIN).await.unwrap();

    use CheckStatus::*;
    let t = |h: i64| NOW - h * HOUR;
    let results: Vec<(&str, Vec<CheckResult>)> = vec![
        (
            "h1",
            vec![
                result("svc", "http", Ok, t(30), vec![]),
                result("svc", "http", Ok, t(20), vec![]),
                result("svc", "http", Ok, t(10), vec![]),
                result("svc", "http", Critical, t(5), vec![]),
                result("web-cert", "tls", Warning, t(2), days_left(20.0)),
            ],
        ),
        (
            "h2",
            vec![
                result("svc", "http", Ok, t(30), vec![]),
                result("svc", "http", Ok, t(20), vec![]),
                result("svc", "http", Warning, t(10), vec![]),
                result("svc", "http", Unknown, t(9), vec![]),
                result("file-cert", "certificate_file", Critical, t(8), days_left(5.0)),
                result("web-cert", "tls", Ok, t(7), days_left(40.0)),
                // 50/h shrinking, 300 left now: full in 6 h
                result("disk", "disk", Ok, t(4), vec![free("/", 500.0)]),
                result("disk", "disk", Ok, t(2), vec![free("/", 400.0)]),
            ],
        ),
        (
            "h3",
            vec![
                result("svc", "http", Critical, t(3), vec![]),
                result("svc", "http", Ok, t(2), vec![]),
            ],
        ),
        (
            "h4",
            vec![
                // outside the 7-day window
                result("svc", "http", Ok, NOW - 8 * DAY, vec![]),
                // "/": 100/h shrinking, 300 left now: full in 3 h; "/data": full in 98 h
                result("disk", "disk", Ok, t(5), vec![free("/", 800.0)]),
                result("disk", "disk", Ok, t(3), vec![free("/", 600.0)]),
                result("disk", "disk", Ok, t(2), vec![free("/data", 1000.0)]),
                result("disk", "disk", Ok, t(1), vec![free("/", 400.0), free("/data", 990.0)]),
            ],
        ),
    ];
    let batches: Vec<IngestBatch> = results
        .into_iter()
        .map(|(host, rs)| IngestBatch {
            host_id: host.into(),
            results: rs.into_iter().enumerate().map(|(i, r)| (i as u64 + 1, r)).collect(),
            spool_dropped_total: 0,
        })
        .collect();
    store.ingest(&batches, NOW - MIN).await.unwrap();

    let web = |extra: &[(&'static str, String)]| -> Vec<(&'static str, String)> {
        let mut p = vec![("app", "web".to_string())];
        p.extend(extra.iter().cloned());
        p
    };
    let d = |n: i64| NOW - n * DAY;
    let mut local = job(
        "j3",
        "h2",
        "backup.run",
        "succeeded",
        Some("succeeded"),
        d(3),
        Some(d(3)),
        Some(d(3) + MIN),
        &[],
    );
    local.source = "local".into();
    let jobs = vec![
        // backups: j1 ok, j2 failed, j3 (local) ok, j4 cancelled (left out); j5 outside the window
        job(
            "j1",
            "h1",
            "backup.run",
            "succeeded",
            Some("succeeded"),
            d(1) - 4 * SEC,
            Some(d(1)),
            Some(d(1) + MIN),
            &[],
        ),
        job(
            "j2",
            "h1",
            "backup.run",
            "failed",
            Some("failed"),
            d(2) - 2 * SEC,
            Some(d(2)),
            Some(d(2) + MIN),
            &[],
        ),
        local,
        job(
            "j4",
            "h3",
            "backup.run",
            "cancelled",
            Some("cancelled"),
            d(1),
            None,
            Some(d(1) + MIN),
            &[],
        ),
        job(
            "j5",
            "h2",
            "backup.run",
            "succeeded",
            Some("succeeded"),
            d(10),
            Some(d(10)),
            Some(d(10) + MIN),
            &[],
        ),
        // deployments of app web
        job(
            "d1",
            "h1",
            "deploy.apply",
            "succeeded",
            Some("succeeded"),
            d(6),
            Some(d(6)),
            Some(d(6) + 10 * MIN),
            &web(&[("commit_time", ((d(6) - 2 * HOUR) / 1000).to_string())]),
        ),
        job(
            "d2",
            "h1",
            "deploy.apply",
            "succeeded",
            Some("succeeded"),
            d(5) - SEC,
            Some(d(5)),
            Some(d(5) + 5 * MIN),
            &web(&[]),
        ),
        job(
            "r1",
            "h1",
            "deploy.rollback",
            "succeeded",
            Some("succeeded"),
            d(5) + HOUR - 6 * SEC,
            Some(d(5) + HOUR),
            Some(d(5) + HOUR + 2 * MIN),
            &web(&[]),
        ),
        job(
            "d3",
            "h2",
            "deploy.apply",
            "failed",
            Some("rolled_back"),
            d(4) - 10 * SEC,
            Some(d(4)),
            Some(d(4) + 3 * MIN),
            &web(&[]),
        ),
        job(
            "d4",
            "h2",
            "deploy.apply",
            "failed",
            Some("failed"),
            d(3) - 3 * SEC - 10 * MIN,
            Some(d(3) - 10 * MIN),
            Some(d(3)),
            &web(&[]),
        ),
        job(
            "d5",
            "h2",
            "deploy.apply",
            "succeeded",
            Some("succeeded"),
            d(3) + 30 * MIN,
            Some(d(3) + 30 * MIN + 5 * SEC),
            Some(d(3) + HOUR),
            &web(&[("commit_time", (d(3)).to_string())]),
        ),
        job(
            "d6",
            "h3",
            "deploy.apply",
            "timed_out",
            Some("timed_out"),
            d(2) - 7 * SEC,
            Some(d(2)),
            Some(d(2) + HOUR),
            &web(&[]),
        ),
        job(
            "d7",
            "h4",
            "deploy.apply",
            "cancelled",
            Some("cancelled"),
            d(1),
            None,
            Some(d(1)),
            &web(&[]),
        ),
        job(
            "d8",
            "h4",
            "deploy.apply",
            "succeeded",
            Some("succeeded"),
            d(9),
            Some(d(9)),
            Some(d(9) + MIN),
            &web(&[]),
        ),
        // dead letters: q1, q2 in the window, q3 before it
        job("q1", "h1", "exec", "discarded", None, d(2), None, None, &[]),
        job("q2", "h2", "exec", "discarded", None, d(1), None, None, &[]),
        job("q3", "h3", "exec", "discarded", None, d(8), None, None, &[]),
    ];
    let backups = vec![
        BackupRow {
            host_id: "h1".into(),
            name: "etc".into(),
            last_snapshot_ms: Some(d(1) + MIN),
            rpo_secs: Some(86_400),
            last_verify_ms: Some(d(30)),
            last_verify_ok: Some(true),
        },
        BackupRow {
            host_id: "h1".into(),
            name: "db".into(),
            last_snapshot_ms: Some(NOW - 2 * HOUR),
            rpo_secs: Some(3600),
            last_verify_ms: Some(d(10)),
            last_verify_ok: Some(true),
        },
        BackupRow {
            host_id: "h2".into(),
            name: "etc".into(),
            last_snapshot_ms: Some(NOW - HOUR),
            rpo_secs: None,
            last_verify_ms: Some(d(100)),
            last_verify_ok: Some(true),
        },
        BackupRow {
            host_id: "h3".into(),
            name: "etc".into(),
            rpo_secs: Some(86_400),
            ..BackupRow::default()
        },
    ];
    store.insert_kpi_fixtures(&jobs, &backups).await.unwrap();

    // Rollouts (ended at NOW - hours): ro1, ro7 succeeded; ro2 rolled back;
    // ro3 failed; ro4 aborted (left out); ro5 outside the window; ro6 still running.
    let rollout = |id: &str, state: &str, hours: i64, hosts: &[&str]| RolloutRow {
        id: id.into(),
        state: state.into(),
        finished_ms: NOW - hours * HOUR,
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
    };
    store
        .insert_rollout_fixtures(&[
            rollout("ro1", "succeeded", 24, &["h1", "h2"]),
            rollout("ro2", "rolled_back", 48, &["h1"]),
            rollout("ro3", "failed", 72, &["h3", "h4"]),
            rollout("ro4", "aborted", 1, &["h2"]),
            rollout("ro5", "succeeded", 8 * 24, &["h1"]),
            rollout("ro6", "running", 2, &["h1"]),
            rollout("ro7", "succeeded", 96, &["h2", "h3"]),
        ])
        .await
        .unwrap();

    // API requests of two replicas, through the real flush: in the window
    // 70 + 10 (replica a, 1.5 ms: bucket (1, 2] ms), 10 (replica b, 3 ms, the
    // same minute as a's 70: (2, 4] ms) and 10 (b, 6 ms: (4, 8] ms; 4 × 500,
    // 1 × 503, 5 × 404); outside it, 50 slow 500s (a, 8 days ago).
    let a = api_stats::ApiStats::with_replica("replica-a");
    let b = api_stats::ApiStats::with_replica("replica-b");
    for i in 0..70 {
        a.record(200, 1500, NOW - HOUR + i);
    }
    for _ in 0..10 {
        a.record(200, 1500, NOW - 2 * DAY);
        b.record(200, 3000, NOW - HOUR);
    }
    for i in 0..10 {
        b.record(
            [500, 500, 500, 500, 503, 404, 404, 404, 404, 404][i],
            6000,
            NOW - 30 * MIN,
        );
    }
    for _ in 0..50 {
        a.record(500, 100_000, NOW - 8 * DAY);
    }
    a.flush(store).await;
    b.flush(store).await;
    // a second flush of the same minute adds to the row
    a.record(200, 1500, NOW - HOUR);
    a.flush(store).await;
}

fn value(data: &KpiData, name: &str) -> Reading {
    (find(name).unwrap_or_else(|| panic!("{name}")).compute)(data, &ctx())
}

/// The expected value of every KPI for the whole fixture fleet.
fn assert_fleet(data: &KpiData) {
    assert_eq!(data.hosts.len(), 4);
    // h1, h2, h4 connected; h3 not
    assert_close("agent_connectivity", value(data, "agent_connectivity").value, 3.0 / 4.0);
    // per host non-critical shares 4/5, 7/8, 1/2, 4/4 (h4's old result is outside the window)
    assert_close(
        "host_availability",
        value(data, "host_availability").value,
        (0.8 + 0.875 + 0.5 + 1.0) / 4.0,
    );
    // ok: 3 + 5 + 1 + 4 of 5 + 8 + 2 + 4 results
    assert_close("check_pass_ratio", value(data, "check_pass_ratio").value, 13.0 / 19.0);
    // j1, j3 succeeded, j2 failed (j4 cancelled, j5 outside)
    assert_close(
        "backup_success_rate",
        value(data, "backup_success_rate").value,
        2.0 / 3.0,
    );
    // h1/etc within its RPO; h1/db 2 h old for a 1 h RPO; h3/etc never; h2/etc unknown
    let rpo = value(data, "rpo_compliance");
    assert_close("rpo_compliance", rpo.value, 1.0 / 3.0);
    assert_eq!(rpo.details["rpo_unknown"], 1.0);
    // h1 verified both within 90 days; h2 100 days ago; h3 never
    assert_close(
        "restore_test_coverage",
        value(data, "restore_test_coverage").value,
        1.0 / 3.0,
    );
    // h1 20 days, h2 5 days (and 40)
    let certs = value(data, "cert_expiry_risk");
    assert_eq!(certs.value, Some(2.0));
    assert_eq!(certs.details["under_7"], 1.0);
    // h4 in 3 h, h2 in 6 h
    let disk = value(data, "disk_full_forecast");
    assert_eq!(disk.value, Some(2.0));
    assert_eq!(disk.details["within_4h"], 1.0);
    // d1..d6 in 7 days
    assert_close(
        "deployment_frequency",
        value(data, "deployment_frequency").value,
        6.0 / 7.0,
    );
    // d2 (rolled back by r1), d3 (agent rollback), d4 (failed), d6 (timed out)
    assert_close(
        "change_failure_rate",
        value(data, "change_failure_rate").value,
        4.0 / 6.0,
    );
    // d2: 57 min, d3: 3 min, d4: 1 h (d5); d6 never recovered
    let rec = value(data, "failed_deployment_recovery_time");
    assert_close("failed_deployment_recovery_time", rec.value, 3420.0);
    assert_eq!(rec.details["unrecovered"], 1.0);
    // d1: 2 h 10 min, d5: 1 h
    assert_close("lead_time", value(data, "lead_time").value, (7800.0 + 3600.0) / 2.0);
    // succeeded j1 j3 d1 d2 d5 r1 of j1 j2 j3 d1-d6 r1 q1 q2
    assert_close("job_success_rate", value(data, "job_success_rate").value, 6.0 / 12.0);
    // delays of j1 j2 d1 d2 r1 d3 d4 d5 d6: 4 2 0 1 6 10 3 5 7 s (j3 is local): rank ceil(0.95 * 9) = 9th
    let q = value(data, "queue_start_delay_p95");
    assert_close("queue_start_delay_p95", q.value, 10.0);
    assert_eq!(q.details["jobs_started"], 9.0);
    assert_close(
        "dead_letters_per_day",
        value(data, "dead_letters_per_day").value,
        2.0 / 7.0,
    );
    // 1.2.0, 1.3.0, 1.2.0 are at least 1.2.0; 1.1.9 is not
    assert_close(
        "agent_version_currency",
        value(data, "agent_version_currency").value,
        3.0 / 4.0,
    );
    // ro1, ro7 of ro1, ro2, ro3, ro7 (ro4 aborted, ro5 too old, ro6 running)
    let ro = value(data, "rollout_success_rate");
    assert_close("rollout_success_rate", ro.value, 2.0 / 4.0);
    assert_eq!(
        (ro.details["rolled_back"], ro.details["failed"], ro.details["aborted"]),
        (1.0, 1.0, 1.0)
    );
    // 101 requests in the window (70 + 1 + 10 + 10 + 10), 5 answered with a 5xx
    let avail = value(data, "api_availability");
    assert_close("api_availability", avail.value, 96.0 / 101.0);
    assert_eq!(avail.details["errors_5xx"], 5.0);
    // rank 0.95 × 101 = 95.95: buckets hold 81, 10, 10 → 4.95th of 10 in (4, 8] ms
    assert_close(
        "api_latency_p95",
        value(data, "api_latency_p95").value,
        (4000.0 + 4000.0 * 4.95 / 10.0) / 1e6,
    );
}

#[tokio::test]
async fn every_kpi_by_hand_on_each_backend() {
    for backend in TestBackend::selected() {
        eprintln!("--- backend: {}", backend.name());
        let db = TestDatabase::create(backend).await;
        let store = db.store().await;
        fixture_fleet(&store).await;
        let data = store.kpi_data(NOW, WINDOW).await.unwrap();
        assert_fleet(&data);

        // team a only (what a token scoped to team=a, or selector team=a, sees)
        let a = data.restrict(|h| h.labels.get("team").map(String::as_str) == Some("a"));
        assert_close("a connectivity", value(&a, "agent_connectivity").value, 1.0);
        assert_close("a pass ratio", value(&a, "check_pass_ratio").value, 8.0 / 13.0);
        assert_eq!(value(&a, "disk_full_forecast").value, Some(1.0));
        assert_close("a change failure", value(&a, "change_failure_rate").value, 3.0 / 5.0);
        assert!(a.jobs.iter().all(|j| j.host_id == "h1" || j.host_id == "h2"));
        assert!(a.backups.iter().all(|b| b.host_id != "h3"));
        // team a: ro1 (succeeded), ro2 (rolled back); ro7 also touched h3: fleet-wide only
        assert_close("a rollouts", value(&a, "rollout_success_rate").value, 1.0 / 2.0);
        let b = data.restrict(|h| h.labels.get("team").map(String::as_str) == Some("b"));
        assert_close("b rollouts", value(&b, "rollout_success_rate").value, 0.0);
        // control-plane-wide: not about any host, so a restriction drops it
        assert_eq!(value(&a, "api_availability").value, None);
        assert_eq!(value(&a, "api_latency_p95").value, None);

        // grouped by team: b is h3 (disconnected) and h4
        let groups = grouped(find("agent_connectivity").unwrap(), &data, &ctx(), "team", 100);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].0.as_deref(), Some("a"));
        assert_close("group a", groups[0].1.value, 1.0);
        assert_close("group b", groups[1].1.value, 0.5);

        // the sampler stores a round; the trend reads it back; old samples go
        let settings = sampler::SamplerSettings {
            interval: std::time::Duration::from_secs(300),
            window_ms: WINDOW,
            keep_ms: DAY,
        };
        store
            .record_kpi_samples(NOW - 2 * DAY, &[("check_pass_ratio", Some(0.5))], 0)
            .await
            .unwrap();
        sampler::sample_once(&store, &settings, NOW - 5 * MIN).await.unwrap();
        store
            .record_kpi_samples(NOW, &[("check_pass_ratio", Some(0.25)), ("lead_time", None)], NOW - DAY)
            .await
            .unwrap();
        let trend = store.kpi_trend("check_pass_ratio", 0).await.unwrap();
        assert_eq!(trend.len(), 2, "{trend:?}");
        assert_eq!(trend[0].0, NOW - 5 * MIN);
        // samples are stored in millionths
        assert!(trend[0].1.is_some_and(|v| (v - 13.0 / 19.0).abs() < 1e-6), "{trend:?}");
        assert_eq!(trend[1], (NOW, Some(0.25)));
        assert_eq!(store.kpi_trend("lead_time", NOW).await.unwrap(), vec![(NOW, None)]);
        // the round at NOW - 5 min with keep = 1 day pruned the API minutes of 2 and 8 days ago
        let api = store.kpi_data(NOW, WINDOW).await.unwrap().api;
        assert_eq!((api.requests, api.errors), (91, 5));
        let all = store.kpi_data(NOW, 30 * DAY).await.unwrap().api;
        assert_eq!(all.requests, 91);
        store.close().await;
    }
}

fn alerts_config(src: &str) -> Result<crate::alert::config::AlertsConfig, (String, String)> {
    #[derive(serde::Deserialize)]
    struct F {
        alerts: crate::alert::config::AlertsConfig,
    }
    let f: F = steward_shared::config::parse_toml("test.toml", src).unwrap();
    f.alerts.check().map(|()| f.alerts)
}

#[test]
fn kpi_alert_rules_are_checked_naming_the_key() {
    let bad = |src: &str| alerts_config(src).unwrap_err().0;
    assert_eq!(
        bad("[alerts]\n[[alerts.kpi]]\nkpi = \"no_such\"\nbelow = 1.0\n"),
        "alerts.kpi[0].kpi"
    );
    assert_eq!(
        bad("[alerts]\n[[alerts.kpi]]\nkpi = \"lead_time\"\nabove = 1.0\nbelow = 2.0\n"),
        "alerts.kpi[0].above"
    );
    assert_eq!(
        bad("[alerts]\n[[alerts.kpi]]\nkpi = \"lead_time\"\n"),
        "alerts.kpi[0].above"
    );
    assert_eq!(
        bad("[alerts]\n[[alerts.kpi]]\nkpi = \"lead_time\"\nabove = 1.0\nwindow = \"1s\"\n"),
        "alerts.kpi[0].window"
    );
}

#[tokio::test]
async fn kpi_threshold_alerts_fire_on_the_fixture_fleet() {
    use crate::alert::evaluator::Evaluator;
    for backend in TestBackend::selected() {
        eprintln!("--- backend: {}", backend.name());
        let db = TestDatabase::create(backend).await;
        let store = db.store().await;
        fixture_fleet(&store).await;
        // fleet values by hand (see assert_fleet): connectivity 3/4, pass ratio 13/19, lead time 5700 s
        let cfg = alerts_config(
            "[alerts]\n\
             [[alerts.kpi]]\nkpi = \"agent_connectivity\"\nbelow = 0.9\nseverity = \"critical\"\n\
             [[alerts.kpi]]\nkpi = \"agent_connectivity\"\nbelow = 0.5\n\
             [[alerts.kpi]]\nkpi = \"check_pass_ratio\"\nabove = 0.6\nwindow = \"7d\"\n\
             [[alerts.kpi]]\nkpi = \"check_pass_ratio\"\nabove = 0.7\nwindow = \"7d\"\n\
             [[alerts.kpi]]\nkpi = \"lead_time\"\nabove = 0.0\nwindow = \"1m\"\n",
        )
        .unwrap();
        let ev = Evaluator::new(store.clone(), cfg);
        let c = ev.candidates("kpi", NOW).await.unwrap();
        let got: Vec<(String, String, crate::alert::Severity)> = c
            .iter()
            .map(|c| (c.labels["kpi"].clone(), c.labels["condition"].clone(), c.severity))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "agent_connectivity".into(),
                    "below 0.9".into(),
                    crate::alert::Severity::Critical
                ),
                (
                    "check_pass_ratio".into(),
                    "above 0.6".into(),
                    crate::alert::Severity::Warning
                ),
            ],
            "lead time has no deploy in the last minute: no value, no alert"
        );
        assert!(c.iter().all(|c| c.labels["alertname"] == "KpiThreshold"));
        // no rule: the source reports nothing
        let off = Evaluator::new(store.clone(), crate::alert::config::AlertsConfig::default());
        assert!(off.candidates("kpi", NOW).await.unwrap().is_empty());
        store.close().await;
    }
}

/// The check-based KPIs read per-day and per-hour counts kept by ingest and
/// pruning (`store/kpi_counts.rs`): for windows that start and end anywhere
/// (whole days, whole hours, edge minutes, on a result's exact time), the
/// counts equal those of the results themselves, resends are not counted
/// twice, and pruning takes its rows out of the counts.
#[tokio::test]
async fn check_counts_stay_exact_through_ingest_resends_and_prune_on_each_backend() {
    use CheckStatus::*;
    const STEP: i64 = 7 * MIN + 13 * SEC;
    const FIRST: i64 = 480;
    const ALL: i64 = 960;
    let statuses = [Ok, Ok, Warning, Ok, Critical, Unknown, Ok, Ok];
    let at = |k: i64| NOW - 3 * DAY - 17 * SEC + k * STEP;
    let hosts = ["h1", "h2", "h3"];
    let batch = |seqs: std::ops::Range<i64>| -> Vec<IngestBatch> {
        hosts
            .iter()
            .enumerate()
            .map(|(hi, host)| IngestBatch {
                host_id: (*host).into(),
                results: seqs
                    .clone()
                    .map(|k| {
                        let status = statuses[((k + hi as i64 * 3) % statuses.len() as i64) as usize];
                        (k as u64 + 1, result("svc", "http", status, at(k), vec![]))
                    })
                    .collect(),
                spool_dropped_total: 0,
            })
            .collect()
    };
    // What the results say, for the results k in `live`.
    let expected = |live: std::ops::Range<i64>, from: i64, to: i64| -> Vec<CheckCount> {
        let mut m: BTreeMap<(String, String), i64> = BTreeMap::new();
        for (hi, host) in hosts.iter().enumerate() {
            for k in live.clone().filter(|k| at(*k) >= from && at(*k) <= to) {
                let status = statuses[((k + hi as i64 * 3) % statuses.len() as i64) as usize];
                *m.entry((host.to_string(), status.as_str().to_string())).or_default() += 1;
            }
        }
        m.into_iter()
            .map(|((host_id, status), count)| CheckCount { host_id, status, count })
            .collect()
    };
    // (to, window): whole days with hour and minute edges, on exact result
    // times (both ends inclusive), inside one hour, one whole day, before any result.
    let windows = [
        (NOW, 7 * DAY),
        (NOW - 17 * MIN - 3 * SEC, 2 * DAY + 5 * HOUR + 11 * MIN),
        (at(700), at(700) - at(100)),
        (at(601), at(601) - at(600)),
        (NOW - 30 * HOUR - 1, 25 * HOUR),
        (at(305), 20 * MIN),
        (NOW - DAY, DAY),
        (at(0) - 1, DAY),
    ];
    for backend in TestBackend::selected() {
        eprintln!("--- backend: {}", backend.name());
        let db = TestDatabase::create(backend).await;
        let store = db.store().await;
        store.ingest(&batch(0..FIRST), NOW - 2 * DAY).await.unwrap();
        // the second ingest resends the last 40 results of the first
        store.ingest(&batch(FIRST - 40..ALL), NOW - 2 * MIN).await.unwrap();
        assert_eq!(store.kpi_count_mismatches().await.unwrap(), Vec::<String>::new());
        for (to, window) in windows {
            let got = store.kpi_data(to, window).await.unwrap().checks;
            assert_eq!(got, expected(0..ALL, to - window, to), "window ({to}, {window})");
        }
        // the KPI values follow: pass ratio and availability over 3 days
        let data = store.kpi_data(NOW, 3 * DAY).await.unwrap();
        let by_hand = KpiData {
            checks: expected(0..ALL, NOW - 3 * DAY, NOW),
            ..KpiData::default()
        };
        for name in ["check_pass_ratio", "host_availability"] {
            let want = value(&by_hand, name).value.expect(name);
            assert_close(name, value(&data, name).value, want);
        }

        // pruning what was ingested 2 days ago takes it out of the counts too
        assert_eq!(store.prune_results(NOW - DAY).await.unwrap(), FIRST as u64 * 3);
        assert_eq!(store.kpi_count_mismatches().await.unwrap(), Vec::<String>::new());
        for (to, window) in windows {
            let got = store.kpi_data(to, window).await.unwrap().checks;
            assert_eq!(
                got,
                expected(FIRST..ALL, to - window, to),
                "after prune: ({to}, {window})"
            );
        }
        store.close().await;
    }
}
