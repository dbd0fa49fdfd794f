//! Alerting on every selected backend: the sources against fixtures, two
//! evaluators (replicas) firing and notifying once, and delivery to real
//! receivers on 127.0.0.1 — an HTTP server that checks the HMAC and fails
//! once before it recovers, a receiver that stays down, a line-based SMTP
//! server, a JSON-lines file — with silences and resolution.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use steward_shared::status::{CheckResult, CheckStatus, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use super::config::AlertsConfig;
use super::evaluator::Evaluator;
use super::receivers::{Deliverer, verify_signature};
use super::{Matcher, Severity, Silence};
use crate::audit::{AuditEntry, Outcome};
use crate::model::{AgentHello, IngestBatch};
use crate::store::Store;
use crate::store::testdb::{TestBackend, TestDatabase};

const MIN: i64 = 60_000;

fn hello(id: &str) -> AgentHello {
    AgentHello {
        agent_version: "1".into(),
        facts: BTreeMap::from([("hostname".to_string(), format!("{id}.example"))]),
        spool_dropped_total: 0,
    }
}

fn result(name: &str, status: CheckStatus, at: i64, values: Vec<Value>) -> CheckResult {
    CheckResult {
        name: name.into(),
        kind: name.into(),
        status,
        values,
        message: format!("{name} is {}", status.as_str()),
        observed_at_ms: at,
        duration_us: 1,
    }
}

async fn ingest(store: &Store, host: &str, results: Vec<(u64, CheckResult)>, now: i64) {
    let batch = IngestBatch {
        host_id: host.into(),
        results,
        spool_dropped_total: 0,
    };
    store.ingest(&[batch], now).await.unwrap();
}

async fn backup_ran(store: &Store, host: &str, seq: u64, at: i64) {
    use crate::jobs::{JobEventKind, JobReport};
    use crate::store::jobs::{JobBatch, JobIngest};
    let result = r#"{"backup":"pg","snapshot":"s1","files":1,"bytes":10,"duration_ms":1,"deleted":[],"verified":null,"rpo_secs":3600}"#;
    let report = JobReport {
        seq,
        job_id: String::new(),
        attempt_id: format!("local-{host}-{seq}"),
        event: JobEventKind::Finished {
            outcome: "succeeded".into(),
            reason: String::new(),
            result_json: result.into(),
            finished_at_ms: at,
            action: "backup.run".into(),
            params: [("name".to_string(), "pg".to_string())].into(),
            started_at_ms: at - 1,
        },
    };
    let batch = IngestBatch {
        host_id: host.into(),
        results: vec![],
        spool_dropped_total: 0,
    };
    let jobs = [JobBatch {
        host_id: host.into(),
        reports: vec![report],
    }];
    let ingest = JobIngest {
        batches: &jobs,
        settings: Default::default(),
    };
    store.ingest_with_jobs(&[batch], &ingest, at).await.unwrap();
}

fn config(src: &str) -> AlertsConfig {
    #[derive(serde::Deserialize)]
    struct F {
        alerts: AlertsConfig,
    }
    let f: F = steward_shared::config::parse_toml("test.toml", src).unwrap();
    f.alerts.check().unwrap();
    f.alerts
}

fn names(c: &[super::Candidate]) -> Vec<String> {
    let mut v: Vec<String> = c
        .iter()
        .map(|c| {
            let l: Vec<String> = c
                .labels
                .iter()
                .filter(|(k, _)| k.as_str() != "alertname")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            format!("{} {} {}", c.labels["alertname"], c.severity.as_str(), l.join(","))
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn sources_report_what_holds_and_two_replicas_fire_and_notify_once() {
    for backend in TestBackend::selected() {
        eprintln!("--- backend: {}", backend.name());
        let db = TestDatabase::create(backend).await;
        let store = db.store().await;
        let t0 = steward_shared::now_ms() - 60 * MIN;
        for h in ["h1", "h2", "h3"] {
            store.agent_connected(h, &hello(h), t0).await.unwrap();
        }
        // h1: disk ok, then critical since t0+1m; load critical since t0+8m only.
        ingest(
            &store,
            "h1",
            vec![
                (1, result("disk", CheckStatus::Ok, t0, vec![])),
                (2, result("disk", CheckStatus::Critical, t0 + MIN, vec![])),
                (3, result("load", CheckStatus::Ok, t0 + MIN, vec![])),
                (4, result("disk", CheckStatus::Critical, t0 + 7 * MIN, vec![])),
                (5, result("load", CheckStatus::Critical, t0 + 8 * MIN, vec![])),
            ],
            t0 + 8 * MIN,
        )
        .await;
        // h2: certificates with 5, 20 and 90 days left.
        let days = |d: f64| vec![Value::new("days_left", d, "days")];
        ingest(
            &store,
            "h2",
            vec![
                (1, result("tls-a", CheckStatus::Warning, t0, days(5.0))),
                (2, result("tls-b", CheckStatus::Warning, t0, days(20.0))),
                (3, result("tls-c", CheckStatus::Ok, t0, days(90.0))),
            ],
            t0 + 9 * MIN,
        )
        .await;
        // h3: a backup with a 1h RPO, last good at t0+2m.
        backup_ran(&store, "h3", 1, t0 + 2 * MIN).await;

        let cfg = config("[alerts]\n[alerts.check_critical]\nfor = \"5m\"\n[alerts.host_silent]\nafter = \"10m\"\n");
        let ev = Evaluator::new(store.clone(), cfg);
        let at = t0 + 10 * MIN;
        assert_eq!(
            names(&ev.candidates("check_critical", at).await.unwrap()),
            ["CheckCritical error check=disk,host=h1"],
            "disk critical for 9m; load for 2m only"
        );
        assert_eq!(
            names(&ev.candidates("check_critical", t0 + 13 * MIN).await.unwrap()).len(),
            2,
            "load past 5m too"
        );
        assert_eq!(
            names(&ev.candidates("certificate", at).await.unwrap()),
            [
                "CertificateExpiry critical check=tls-a,host=h2,threshold=critical",
                "CertificateExpiry warning check=tls-b,host=h2,threshold=warning"
            ]
        );
        assert!(ev.candidates("backup_rpo", t0 + 62 * MIN).await.unwrap().is_empty());
        assert_eq!(
            names(&ev.candidates("backup_rpo", t0 + 63 * MIN).await.unwrap()),
            ["BackupRPO error backup=pg,host=h3"]
        );
        // h1 was last seen at t0+8m, h2 at t0+9m, h3 at t0+2m (its backup report).
        assert_eq!(
            names(&ev.candidates("host_silent", t0 + 18 * MIN + 30_000).await.unwrap()),
            ["HostSilent critical host=h1", "HostSilent critical host=h3"]
        );
        assert!(ev.candidates("slo", at).await.unwrap().is_empty());
        assert!(ev.candidates("rollout", at).await.unwrap().is_empty());

        // A disabled source reports nothing.
        let off = Evaluator::new(
            store.clone(),
            config("[alerts]\n[alerts.certificate]\nenabled = false\n"),
        );
        assert!(off.candidates("certificate", at).await.unwrap().is_empty());

        // Two replicas evaluating the same round: each alert fires once, with one notification.
        let route_cfg = "[alerts]\n[alerts.check_critical]\nfor = \"5m\"\n\
             [[alerts.receivers]]\nname = \"log\"\nkind = \"file\"\npath = \"/nonexistent/x.jsonl\"\n\
             [[alerts.routes]]\nreceivers = [\"log\"]\nmin_severity = \"error\"\n";
        let a = Evaluator::new(store.clone(), config(route_cfg));
        let b = Evaluator::new(store.clone(), config(route_cfg));
        let (ra, rb) = tokio::join!(a.tick(at), b.tick(at));
        let fired: usize = ra
            .iter()
            .chain(rb.iter())
            .map(|(_, r)| r.as_ref().unwrap().fired.len())
            .sum();
        let firing = store.list_alerts(Some("firing"), 100).await.unwrap();
        assert_eq!(fired, firing.len());
        let mut got: Vec<String> = firing
            .iter()
            .map(|a| format!("{} {}", a.source, a.severity.as_str()))
            .collect();
        got.sort();
        // host_silent after the default 5m: only h3 (last heard from at t0+2m).
        assert_eq!(
            got,
            [
                "certificate critical",
                "certificate warning",
                "check_critical error",
                "host_silent critical",
            ]
        );
        // Routed: error and above to "log" (the warning certificate is not).
        assert_eq!(
            store.undelivered_notifications().await.unwrap(),
            BTreeMap::from([("log".to_string(), 3)])
        );
        // Again: nothing changes.
        for (_, r) in a.tick(at + 1).await {
            let r = r.unwrap();
            assert!(r.fired.is_empty() && r.resolved.is_empty());
        }
        // h2 renews its certificates: those alerts resolve.
        ingest(
            &store,
            "h2",
            vec![
                (4, result("tls-a", CheckStatus::Ok, at, days(300.0))),
                (5, result("tls-b", CheckStatus::Ok, at, days(300.0))),
            ],
            at,
        )
        .await;
        let resolved: Vec<String> = a
            .tick(at + 2)
            .await
            .into_iter()
            .flat_map(|(s, r)| {
                r.unwrap()
                    .resolved
                    .into_iter()
                    .map(move |x| format!("{s} {}", x.labels.get("host").unwrap()))
            })
            .collect();
        assert_eq!(resolved, ["certificate h2", "certificate h2"]);
        store.close().await;
    }
}

/// What the test HTTP server received: (path, headers, body).
type Requests = Arc<Mutex<Vec<(String, BTreeMap<String, String>, String)>>>;

/// A one-request-per-connection HTTP/1.1 server that records requests and
/// answers 500 to the first `fail_first` requests on `/hook`, then 200.
async fn http_server(fail_first: usize) -> (String, Requests) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests: Requests = Arc::default();
    let seen = requests.clone();
    tokio::spawn(async move {
        let mut hook_calls = 0;
        while let Ok((stream, _)) = listener.accept().await {
            let mut r = BufReader::new(stream);
            let mut line = String::new();
            if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut headers = BTreeMap::new();
            loop {
                let mut h = String::new();
                r.read_line(&mut h).await.unwrap();
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                }
            }
            let len: usize = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
            let mut body = vec![0; len];
            r.read_exact(&mut body).await.unwrap();
            let status = if path == "/hook" {
                hook_calls += 1;
                if hook_calls <= fail_first {
                    "500 Internal Server Error"
                } else {
                    "200 OK"
                }
            } else {
                "200 OK"
            };
            seen.lock()
                .unwrap()
                .push((path, headers, String::from_utf8(body).unwrap()));
            let mut stream = r.into_inner();
            let _ = stream
                .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes())
                .await;
        }
    });
    (format!("http://{addr}"), requests)
}

/// A line-based SMTP server that records each message's DATA.
async fn smtp_server() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mails: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = mails.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(stream);
                r.get_mut().write_all(b"220 test ESMTP\r\n").await.unwrap();
                let mut envelope = String::new();
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let cmd = line.to_ascii_uppercase();
                    let reply: &[u8] = if cmd.starts_with("EHLO") || cmd.starts_with("HELO") {
                        b"250 test\r\n"
                    } else if cmd.starts_with("MAIL") || cmd.starts_with("RCPT") {
                        envelope.push_str(&line);
                        b"250 ok\r\n"
                    } else if cmd.starts_with("DATA") {
                        r.get_mut().write_all(b"354 go on\r\n").await.unwrap();
                        let mut data = envelope.clone();
                        loop {
                            let mut l = String::new();
                            r.read_line(&mut l).await.unwrap();
                            if l == ".\r\n" {
                                break;
                            }
                            data.push_str(&l);
                        }
                        seen.lock().unwrap().push(data);
                        b"250 queued\r\n"
                    } else if cmd.starts_with("QUIT") {
                        let _ = r.get_mut().write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"250 ok\r\n"
                    };
                    r.get_mut().write_all(reply).await.unwrap();
                }
            });
        }
    });
    (addr.to_string(), mails)
}

#[tokio::test]
async fn receivers_get_signed_webhooks_slack_text_email_and_json_lines_and_a_down_one_blocks_nobody() {
    for backend in TestBackend::selected() {
        eprintln!("--- backend: {}", backend.name());
        let db = TestDatabase::create(backend).await;
        let store = db.store().await;
        let (http, requests) = http_server(1).await;
        let (smtp, mails) = smtp_server().await;
        // A port nothing listens on: the receiver that stays down.
        let down = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("alerts.jsonl");
        let cfg = config(&format!(
            r#"[alerts]
retry_initial = "5s"
[alerts.host_silent]
after = "1m"
[[alerts.receivers]]
name = "hook"
kind = "webhook"
url = "{http}/hook"
secret = "s3cret"
[[alerts.receivers]]
name = "chat"
kind = "slack"
url = "{http}/slack"
[[alerts.receivers]]
name = "mail"
kind = "email"
smtp = "{smtp}"
tls = "none"
from = "steward@example.com"
to = ["ops@example.com"]
[[alerts.receivers]]
name = "log"
kind = "file"
path = {file:?}
[[alerts.receivers]]
name = "down"
kind = "webhook"
url = "http://{down}/"
[[alerts.routes]]
receivers = ["hook", "chat", "log", "down"]
[[alerts.routes]]
receivers = ["mail"]
min_severity = "critical"
matchers = ["alertname=HostSilent"]
"#
        ));
        let now = steward_shared::now_ms();
        store
            .agent_connected("web-1", &hello("web-1"), now - 5 * MIN)
            .await
            .unwrap();
        store
            .agent_connected("web-2", &hello("web-2"), now - 5 * MIN)
            .await
            .unwrap();
        // web-2 is in maintenance: silenced, so never notified.
        store
            .create_silence(
                &Silence {
                    id: "s1".into(),
                    matchers: vec![Matcher {
                        name: "host".into(),
                        value: "web-2".into(),
                        negate: false,
                    }],
                    comment: "maintenance".into(),
                    created_by: "token:t".into(),
                    starts_ms: now - MIN,
                    ends_ms: now + 60 * MIN,
                },
                AuditEntry::new("token:t", "silences.create", Outcome::Success),
            )
            .await
            .unwrap();
        let ev = Evaluator::new(store.clone(), cfg.clone());
        let deliverer = Deliverer::new(store.clone(), &cfg);
        ev.tick(now).await;
        let firing = store.list_alerts(Some("firing"), 10).await.unwrap();
        assert_eq!(firing.len(), 2);
        let silenced: Vec<bool> = {
            let mut f = firing.clone();
            f.sort_by(|a, b| a.labels["host"].cmp(&b.labels["host"]));
            f.iter().map(|a| a.silenced).collect()
        };
        assert_eq!(silenced, [false, true]);
        assert_eq!(
            store.undelivered_notifications().await.unwrap(),
            BTreeMap::from([
                ("chat".to_string(), 1),
                ("down".to_string(), 1),
                ("hook".to_string(), 1),
                ("log".to_string(), 1),
                ("mail".to_string(), 1),
            ])
        );

        // Round 1: the hook answers 500, "down" refuses; the others get theirs.
        assert_eq!(deliverer.drain(steward_shared::now_ms()).await.unwrap(), 5);
        assert_eq!(
            store.undelivered_notifications().await.unwrap(),
            BTreeMap::from([("down".to_string(), 1), ("hook".to_string(), 1)])
        );
        // Not due before the backoff.
        assert_eq!(deliverer.drain(steward_shared::now_ms()).await.unwrap(), 0);
        // Round 2 (after the backoff): the hook recovered; "down" is still down and keeps its notification.
        assert_eq!(deliverer.drain(steward_shared::now_ms() + MIN).await.unwrap(), 2);
        assert_eq!(
            store.undelivered_notifications().await.unwrap(),
            BTreeMap::from([("down".to_string(), 1)])
        );
        {
            let reqs = requests.lock().unwrap();
            let hooks: Vec<_> = reqs.iter().filter(|r| r.0 == "/hook").collect();
            assert_eq!(hooks.len(), 2, "failed once, then delivered");
            for (_, headers, body) in &hooks {
                assert!(
                    verify_signature(b"s3cret", body.as_bytes(), &headers["x-steward-signature"]),
                    "{headers:?}"
                );
                assert!(!verify_signature(
                    b"other",
                    body.as_bytes(),
                    &headers["x-steward-signature"]
                ));
                assert_eq!(headers["x-steward-event"], "firing");
                assert_eq!(headers["content-type"], "application/json");
                let doc: serde_json::Value = serde_json::from_str(body).unwrap();
                assert_eq!(doc["alert"]["labels"]["host"], "web-1");
                assert_eq!(doc["event"], "firing");
            }
            assert_eq!(
                hooks[0].1["x-steward-delivery"], hooks[1].1["x-steward-delivery"],
                "a retry carries the same delivery ID"
            );
            let slack: Vec<_> = reqs.iter().filter(|r| r.0 == "/slack").collect();
            assert_eq!(slack.len(), 1);
            let text: serde_json::Value = serde_json::from_str(&slack[0].2).unwrap();
            let text = text["text"].as_str().unwrap();
            assert!(
                text.starts_with("[FIRING] critical HostSilent: host web-1.example (web-1) silent"),
                "{text}"
            );
            assert!(!slack[0].1.contains_key("x-steward-signature"));
        }
        {
            let mails = mails.lock().unwrap();
            assert_eq!(mails.len(), 1);
            let m = &mails[0];
            assert!(
                m.contains("<steward@example.com>") && m.contains("<ops@example.com>"),
                "{m}"
            );
            assert!(m.contains("Subject: [Steward] [FIRING] critical HostSilent"), "{m}");
            assert!(m.contains("host: web-1"), "{m}");
        }
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["event"], "firing");
        assert_eq!(lines[0]["alert"]["severity"], "critical");

        // web-1 comes back: resolved, notified to every receiver again; web-2 (silenced) is not.
        store
            .agent_connected("web-1", &hello("web-1"), steward_shared::now_ms())
            .await
            .unwrap();
        let now2 = steward_shared::now_ms();
        let r = ev.tick(now2).await;
        assert_eq!(
            r.iter().map(|(_, r)| r.as_ref().unwrap().resolved.len()).sum::<usize>(),
            1
        );
        assert_eq!(
            deliverer.drain(now2 + 2 * MIN).await.unwrap(),
            6,
            "5 resolved + the old one for down"
        );
        assert_eq!(
            store.undelivered_notifications().await.unwrap(),
            BTreeMap::from([("down".to_string(), 2)])
        );
        let text = std::fs::read_to_string(&file).unwrap();
        let events: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["event"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(events, ["firing", "resolved"]);
        assert_eq!(mails.lock().unwrap().len(), 2);
        {
            let reqs = requests.lock().unwrap();
            assert!(
                reqs.iter().all(|r| r.2.contains("web-1")),
                "nothing about the silenced web-2"
            );
        }
        // The file is private.
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(
            store
                .list_alerts(Some("firing"), 10)
                .await
                .unwrap()
                .iter()
                .all(|a| a.severity == Severity::Critical && a.silenced)
        );
        store.close().await;
    }
}

#[tokio::test]
async fn slo_burn_tiers_are_alerts_with_the_configured_severities() {
    for backend in TestBackend::selected() {
        eprintln!("--- backend: {}", backend.name());
        let db = TestDatabase::create(backend).await;
        let store = db.store().await;
        let spec: crate::slo::spec::SloSpec = serde_json::from_value(serde_json::json!({
            "indicator": {"type": "checkAvailability", "check": "http", "selector": "env=prod"},
            "objectives": [{"target": 0.9}],
            "timeWindow": [{"duration": "7d"}],
            "alerting": {"minEvents": 1}
        }))
        .unwrap();
        let now = steward_shared::now_ms();
        store
            .put_slo(
                "web",
                &spec,
                AuditEntry::new("test", "slos.update", Outcome::Success),
                now,
            )
            .await
            .unwrap();
        store.reload_sli_index().await.unwrap();
        store.agent_connected("h1", &hello("h1"), now).await.unwrap();
        store
            .set_host_labels("h1", &BTreeMap::from([("env".to_string(), "prod".to_string())]))
            .await
            .unwrap();
        // 30 % bad against a 10 % budget: burn 3, so the 1x ticket tier fires, no page tier.
        let results = (1..=10)
            .map(|i| {
                let status = if i <= 7 { CheckStatus::Ok } else { CheckStatus::Critical };
                (i, result("http", status, now, vec![]))
            })
            .collect();
        ingest(&store, "h1", results, now).await;
        let ev = Evaluator::new(store.clone(), AlertsConfig::default());
        let c = ev.candidates("slo", now).await.unwrap();
        assert!(
            names(&c).contains(&"SLOBurnRate warning slo=web,tier=ticket-3d".to_string()),
            "{:?}",
            names(&c)
        );
        assert!(
            c.iter()
                .all(|c| c.severity == Severity::Warning && !c.labels["tier"].starts_with("page"))
        );
        let ev = Evaluator::new(
            store.clone(),
            config("[alerts]\n[alerts.slo]\nticket_severity = \"info\"\n"),
        );
        let c = ev.candidates("slo", now).await.unwrap();
        assert!(!c.is_empty() && c.iter().all(|c| c.severity == Severity::Info));
        store.close().await;
    }
}

/// The value of the series `series` (name and labels, exactly as encoded) in a `/metrics` text.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn slo_values_reach_metrics_from_the_evaluator_round() {
    for backend in TestBackend::selected() {
        eprintln!("--- backend: {}", backend.name());
        let db = TestDatabase::create(backend).await;
        let store = db.store().await;
        let now = steward_shared::now_ms();
        let put = |name: &'static str, spec: serde_json::Value| {
            let store = store.clone();
            async move {
                let spec: crate::slo::spec::SloSpec = serde_json::from_value(spec).unwrap();
                store
                    .put_slo(
                        name,
                        &spec,
                        AuditEntry::new("test", "slos.update", Outcome::Success),
                        now,
                    )
                    .await
                    .unwrap();
            }
        };
        put(
            "web",
            serde_json::json!({
                "indicator": {"type": "checkAvailability", "check": "http", "selector": "env=prod"},
                "objectives": [{"target": 0.9}],
                "timeWindow": [{"duration": "7d"}],
                "groupBy": "host",
                "alerting": {"minEvents": 1}
            }),
        )
        .await;
        put(
            "idle",
            serde_json::json!({
                "indicator": {"type": "checkAvailability", "check": "nothing", "selector": ""},
                "objectives": [{"target": 0.99}],
                "timeWindow": [{"duration": "28d"}],
                "alerting": {"tiers": {"page-1h": {"enabled": false}}}
            }),
        )
        .await;
        store.reload_sli_index().await.unwrap();
        for h in ["h1", "h2"] {
            store.agent_connected(h, &hello(h), now).await.unwrap();
            store
                .set_host_labels(h, &BTreeMap::from([("env".to_string(), "prod".to_string())]))
                .await
                .unwrap();
        }
        // h1: 7 of 10 ok (burn 3 in its group); h2: 10 of 10. Whole SLO: 17 of 20,
        // SLI 0.85, error ratio 0.15 = burn 1.5 on every window, budget 1 − 3 / (0.1 × 20) = −0.5.
        let results = |bad: u64| {
            (1..=10)
                .map(|i| {
                    let status = if i > 10 - bad {
                        CheckStatus::Critical
                    } else {
                        CheckStatus::Ok
                    };
                    (i, result("http", status, now, vec![]))
                })
                .collect()
        };
        ingest(&store, "h1", results(3), now).await;
        ingest(&store, "h2", results(0), now).await;

        // SLO alerts switched off: the round still feeds /metrics.
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let ev = Evaluator::new(store.clone(), config("[alerts]\n[alerts.slo]\nenabled = false\n"))
            .with_metrics(metrics.clone());
        assert!(ev.candidates("slo", now).await.unwrap().is_empty());
        let text = metrics.encode();
        let close = |series: &str, want: f64| {
            let got = metric(&text, series);
            assert!(
                got.is_some_and(|g| (g - want).abs() < 1e-9),
                "{series}: {got:?}, want {want}\n{text}"
            );
        };
        close("steward_slo_sli{slo=\"web\"}", 0.85);
        close("steward_slo_error_budget_remaining{slo=\"web\"}", -0.5);
        for w in ["5m", "30m", "1h", "2h", "6h", "1d", "3d"] {
            close(&format!("steward_slo_burn_rate{{slo=\"web\",window=\"{w}\"}}"), 1.5);
            close(&format!("steward_slo_burn_rate{{slo=\"idle\",window=\"{w}\"}}"), 0.0);
        }
        // h1's group burns 3: the 1x tier fires (for a group, so for the SLO); no page tier does
        close("steward_slo_alert_firing{slo=\"web\",tier=\"ticket-3d\"}", 1.0);
        close("steward_slo_alert_firing{slo=\"web\",tier=\"page-1h\"}", 0.0);
        // no events: no SLI, an untouched budget; a disabled tier is not exported
        assert_eq!(metric(&text, "steward_slo_sli{slo=\"idle\"}"), None);
        close("steward_slo_error_budget_remaining{slo=\"idle\"}", 1.0);
        close("steward_slo_alert_firing{slo=\"idle\",tier=\"page-6h\"}", 0.0);
        assert_eq!(
            metric(&text, "steward_slo_alert_firing{slo=\"idle\",tier=\"page-1h\"}"),
            None
        );
        close("steward_slo_metrics_dropped", 0.0);
        // never a host or a group's value in a label
        assert!(
            text.lines()
                .filter(|l| l.starts_with("steward_slo"))
                .all(|l| !l.contains("h1") && !l.contains("h2")),
            "{text}"
        );

        // a deleted SLO disappears with the next round
        store.delete_slo_row("idle").await.unwrap();
        let ev = Evaluator::new(store.clone(), AlertsConfig::default()).with_metrics(metrics.clone());
        assert!(!ev.candidates("slo", now).await.unwrap().is_empty());
        let text = metrics.encode();
        assert!(!text.contains("slo=\"idle\""), "{text}");
        assert!(text.contains("steward_slo_sli{slo=\"web\"}"), "{text}");
        store.close().await;
    }
}

#[test]
fn slo_metrics_are_capped_and_count_what_they_drop() {
    let spec: crate::slo::spec::SloSpec = serde_json::from_value(serde_json::json!({
        "indicator": {"type": "apiAvailability"},
        "objectives": [{"target": 0.99}],
        "timeWindow": [{"duration": "30d"}]
    }))
    .unwrap();
    let status = |i: usize| {
        let slo = crate::store::slo::StoredSlo {
            name: format!("slo-{i:04}"),
            spec: spec.clone(),
            created_ms: 0,
            updated_ms: 0,
        };
        crate::slo::status::status_of(slo, &BTreeMap::new(), 1_800_000_000_000)
    };
    let m = crate::metrics::Metrics::new();
    let many: Vec<_> = (0..crate::slo::metrics::MAX_EXPORTED + 5).map(status).collect();
    m.set_slos(&many);
    let text = m.encode();
    let budgets = text
        .lines()
        .filter(|l| l.starts_with("steward_slo_error_budget_remaining{"))
        .count();
    assert_eq!(budgets, crate::slo::metrics::MAX_EXPORTED);
    assert_eq!(metric(&text, "steward_slo_metrics_dropped"), Some(5.0));
    // the first by name are kept
    assert!(text.contains("slo=\"slo-0000\"") && !text.contains("slo=\"slo-1004\""));
    m.set_slos(&many[..2]);
    let text = m.encode();
    assert_eq!(metric(&text, "steward_slo_metrics_dropped"), Some(0.0));
    assert!(!text.contains("slo=\"slo-0002\""), "older series are gone");
}

#[tokio::test]
async fn email_requires_starttls_by_default_and_secrets_come_from_files() {
    for backend in TestBackend::selected() {
        eprintln!("--- backend: {}", backend.name());
        let db = TestDatabase::create(backend).await;
        let store = db.store().await;
        // The test server offers no STARTTLS: a receiver left at the default
        // sends nothing (no MAIL, no DATA), one with tls = "none" delivers.
        let (smtp, mails) = smtp_server().await;
        let (http, requests) = http_server(0).await;
        let dir = tempfile::tempdir().unwrap();
        let secret_file = dir.path().join("hook-secret");
        std::fs::write(&secret_file, "from-a-file\n").unwrap();
        let cfg = config(&format!(
            r#"[alerts.host_silent]
after = "1m"
[[alerts.receivers]]
name = "secure"
kind = "email"
smtp = "{smtp}"
from = "steward@example.com"
to = ["ops@example.com"]
[[alerts.receivers]]
name = "relay"
kind = "email"
smtp = "{smtp}"
tls = "none"
from = "relay@example.com"
to = ["ops@example.com"]
[[alerts.receivers]]
name = "hook"
kind = "webhook"
url = "{http}/hook"
secret = {{ file = {:?} }}
[[alerts.routes]]
receivers = ["secure", "relay", "hook"]
"#,
            secret_file.display().to_string()
        ));
        let now = steward_shared::now_ms();
        store
            .agent_connected("web-1", &hello("web-1"), now - 5 * MIN)
            .await
            .unwrap();
        let ev = Evaluator::new(store.clone(), cfg.clone());
        let deliverer = Deliverer::new(store.clone(), &cfg);
        ev.tick(now).await;
        assert_eq!(deliverer.drain(steward_shared::now_ms()).await.unwrap(), 3);
        assert_eq!(
            store.undelivered_notifications().await.unwrap(),
            BTreeMap::from([("secure".to_string(), 1)])
        );
        let mails = mails.lock().unwrap().clone();
        assert_eq!(mails.len(), 1, "{mails:?}");
        assert!(mails[0].contains("relay@example.com") && !mails[0].contains("steward@example.com"));
        let reqs = requests.lock().unwrap();
        assert_eq!(reqs.len(), 1);
        assert!(verify_signature(
            b"from-a-file",
            reqs[0].2.as_bytes(),
            &reqs[0].1["x-steward-signature"]
        ));
    }
}

#[test]
fn email_tls_and_password_keys_are_checked() {
    let base =
        "[[alerts.receivers]]\nname = \"m\"\nkind = \"email\"\nsmtp = \"h:25\"\nfrom = \"a@b\"\nto = [\"c@d\"]\n";
    for (extra, key) in [
        ("tls = \"maybe\"\n", "alerts.receivers[0].tls"),
        ("password = { env = \"P\" }\n", "alerts.receivers[0].password"),
        (
            "tls = \"none\"\nusername = \"u\"\npassword = { credential = \"smtp\" }\n",
            "alerts.receivers[0].password",
        ),
    ] {
        let cfg: AlertsConfig = steward_shared::config::parse_toml::<crate::config::ControlPlaneConfig>(
            "cp.toml",
            &format!("{base}{extra}"),
        )
        .unwrap()
        .alerts;
        assert_eq!(cfg.check().unwrap_err().0, key, "{extra}");
    }
    let ok = format!("{base}tls = \"tls\"\nusername = \"u\"\npassword = {{ credential = \"smtp\" }}\n");
    let cfg = steward_shared::config::parse_toml::<crate::config::ControlPlaneConfig>("cp.toml", &ok)
        .unwrap()
        .alerts;
    cfg.check().unwrap();
}
