//! Alerts on every selected backend: deduplication by fingerprint, resolve,
//! silence, acknowledgement (audited) and the notification outbox.
use std::collections::BTreeMap;

use super::testdb::{TestBackend, TestDatabase};
use crate::alert::{Candidate, Matcher, Severity, Silence};
use crate::audit::{AuditEntry, Outcome};

fn candidate(slo: &str, tier: &str) -> Candidate {
    Candidate {
        severity: Severity::Critical,
        summary: format!("{slo} burning"),
        labels: BTreeMap::from([
            ("alertname".to_string(), "SLOBurnRate".to_string()),
            ("slo".to_string(), slo.to_string()),
            ("tier".to_string(), tier.to_string()),
        ]),
    }
}

#[tokio::test]
async fn alerts_deduplicate_resolve_silence_ack_and_queue_notifications() {
    for backend in TestBackend::selected() {
        eprintln!("--- backend: {}", backend.name());
        let db = TestDatabase::create(backend).await;
        let store = db.store().await;
        let route = |_: &crate::alert::Alert| vec!["hook".to_string(), "file".to_string()];

        let a = candidate("web", "page-1h");
        let r = store
            .reconcile_alerts("slo", std::slice::from_ref(&a), &route, 1_000)
            .await
            .unwrap();
        assert_eq!(r.fired.len(), 1);
        // The same condition again: deduplicated by fingerprint.
        let r = store
            .reconcile_alerts("slo", std::slice::from_ref(&a), &route, 2_000)
            .await
            .unwrap();
        assert!(r.fired.is_empty() && r.resolved.is_empty());
        let firing = store.list_alerts(Some("firing"), 100).await.unwrap();
        assert_eq!(firing.len(), 1);
        assert_eq!(firing[0].fingerprint, a.fingerprint("slo"));
        assert_eq!(
            store.undelivered_notifications().await.unwrap(),
            BTreeMap::from([("file".into(), 1), ("hook".into(), 1)])
        );

        // A silence matching slo=api: its alert fires silenced, without notifications.
        let silence = Silence {
            id: "s1".into(),
            matchers: vec![Matcher {
                name: "slo".into(),
                value: "api".into(),
                negate: false,
            }],
            comment: "maintenance".into(),
            created_by: "token:t".into(),
            starts_ms: 0,
            ends_ms: 10_000,
        };
        store
            .create_silence(
                &silence,
                AuditEntry::new("token:t", "silences.create", Outcome::Success),
            )
            .await
            .unwrap();
        let b = candidate("api", "page-6h");
        let r = store
            .reconcile_alerts("slo", &[a.clone(), b.clone()], &route, 3_000)
            .await
            .unwrap();
        assert_eq!(r.fired.len(), 1);
        assert!(r.fired[0].silenced);
        assert_eq!(store.undelivered_notifications().await.unwrap()["hook"], 1);

        // Ack is audited once; a second ack keeps the first.
        let id = firing[0].id.clone();
        let acked = store
            .ack_alert(
                &id,
                "token:t",
                AuditEntry::new("token:t", "alerts.ack", Outcome::Success),
                4_000,
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (acked.acked_by.as_deref(), acked.acked_ms),
            (Some("token:t"), Some(4_000))
        );
        let again = store
            .ack_alert(
                &id,
                "token:u",
                AuditEntry::new("token:u", "alerts.ack", Outcome::Success),
                5_000,
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again.acked_by.as_deref(), Some("token:t"));
        assert!(
            store
                .ack_alert("nope", "x", AuditEntry::new("x", "alerts.ack", Outcome::Success), 1)
                .await
                .unwrap()
                .is_none()
        );

        // The condition ends: resolved, and a resolved notification queued per receiver.
        let r = store
            .reconcile_alerts("slo", std::slice::from_ref(&b), &route, 6_000)
            .await
            .unwrap();
        assert_eq!(r.resolved.len(), 1);
        assert_eq!(
            store.list_alerts(Some("resolved"), 100).await.unwrap()[0].resolved_ms,
            Some(6_000)
        );
        assert_eq!(store.undelivered_notifications().await.unwrap()["hook"], 2);
        // It fires again later as a new episode.
        let r = store
            .reconcile_alerts("slo", &[a.clone(), b.clone()], &route, 7_000)
            .await
            .unwrap();
        assert_eq!(r.fired.len(), 1);
        assert_ne!(r.fired[0].id, id);

        // Outbox: claimed once per lease; a failure is retried later, a success is final.
        let claimed = store.claim_notifications(7_000, 60_000, 100).await.unwrap();
        assert_eq!(claimed.len(), 6);
        assert!(store.claim_notifications(7_000, 60_000, 100).await.unwrap().is_empty());
        for n in &claimed {
            let result = if n.receiver == "hook" { Err("HTTP 500") } else { Ok(()) };
            store.notification_attempted(&n.id, result, 8_000, 7_500).await.unwrap();
        }
        assert_eq!(
            store.undelivered_notifications().await.unwrap(),
            BTreeMap::from([("hook".into(), 3)])
        );
        let retry = store.claim_notifications(8_000, 60_000, 100).await.unwrap();
        assert_eq!(retry.len(), 3);
        assert!(retry.iter().all(|n| n.attempts == 1 && n.receiver == "hook"));
        let payload: serde_json::Value = serde_json::from_str(&retry[0].payload).unwrap();
        assert!(payload["alert"]["fingerprint"].is_string());

        assert!(
            store
                .expire_silence(
                    "s1",
                    AuditEntry::new("token:t", "silences.expire", Outcome::Success),
                    9_000
                )
                .await
                .unwrap()
        );
        assert!(
            !store
                .expire_silence(
                    "s1",
                    AuditEntry::new("token:t", "silences.expire", Outcome::Success),
                    9_500
                )
                .await
                .unwrap()
        );
        let actions: Vec<String> = store
            .list_audit(&Default::default(), None, 100)
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|e| e.action)
            .filter(|a| a.starts_with("alerts.") || a.starts_with("silences."))
            .collect();
        assert_eq!(
            actions,
            [
                "alerts.fire",
                "silences.create",
                "alerts.fire",
                "alerts.ack",
                "alerts.resolve",
                "alerts.fire",
                "silences.expire"
            ]
        );
        store.close().await;
    }
}
