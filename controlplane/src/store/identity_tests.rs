//! Store tests of the identity lifecycle, on every selected backend: the
//! revocation decision table, enrollment redemption (races, use counts,
//! refusals that consume nothing), host-bound tokens and renewal refusals.
use std::collections::BTreeMap;

use super::Store;
use super::identity::{EnrollRefusal, IssuedCert, NewEnrollmentToken, RenewRefusal};
use super::testdb::{TestBackend, TestDatabase};
use crate::audit::{AuditEntry, Outcome};

async fn on_each_backend<F, Fut>(body: F)
where
    F: Fn(Store) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for backend in TestBackend::selected() {
        eprintln!("--- backend: {}", backend.name());
        let db = TestDatabase::create(backend).await;
        let store = db.store().await;
        body(store.clone()).await;
        store.close().await;
    }
}

fn audit(action: &str) -> AuditEntry {
    AuditEntry::new("test", action, Outcome::Success)
}

const NOW: i64 = 1_800_000_000_000;
const HOUR: i64 = 3_600_000;

async fn token(store: &Store, id: &str, uses: i64, hosts: Option<&[&str]>) {
    store
        .create_enrollment_token(
            &NewEnrollmentToken {
                id: id.into(),
                secret_hash: format!("hash-{id}"),
                labels: BTreeMap::from([("team".to_string(), "web".to_string())]),
                uses,
                expires_ms: NOW + HOUR,
                created_by: "test".into(),
                hosts: hosts.map(|h| h.iter().map(|s| s.to_string()).collect()),
            },
            &audit("enrollment_tokens.create"),
            NOW,
        )
        .await
        .unwrap();
}

fn cert<'a>(host: &'a str, serial: &'a str) -> IssuedCert<'a> {
    IssuedCert {
        host_id: host,
        serial,
        not_after_ms: NOW + 24 * HOUR,
        source: "enroll",
    }
}

async fn redeem(
    store: &Store,
    token: &str,
    host: &str,
    serial: &str,
) -> Result<BTreeMap<String, String>, EnrollRefusal> {
    store
        .redeem_enrollment(
            token,
            &format!("hash-{token}"),
            &cert(host, serial),
            &audit("hosts.enroll"),
            NOW + 1,
        )
        .await
        .unwrap()
}

async fn uses_left(store: &Store, id: &str) -> i64 {
    store.get_enrollment_token(id).await.unwrap().unwrap().uses_left
}

async fn refused(store: &Store, host: &str, serial: &str) -> bool {
    store.is_cert_revoked(host, serial).await.unwrap()
}

#[tokio::test]
async fn the_revocation_decision_table() {
    on_each_backend(|store| async move {
        token(&store, "t1", 1, None).await;
        // Enrolled: its certificate is valid; an unrecorded serial is not.
        redeem(&store, "t1", "web-01", "aa01").await.unwrap();
        assert!(!refused(&store, "web-01", "aa01").await, "the enrolled certificate");
        assert!(
            refused(&store, "web-01", "ffff").await,
            "a serial never recorded (e.g. `ca issue-agent` before)"
        );
        assert!(
            refused(&store, "web-02", "aa01").await,
            "a recorded serial presented for another host"
        );
        // A renewal on the stream of aa01 is recorded and valid.
        let renewed = IssuedCert {
            source: "renew",
            ..cert("web-01", "aa02")
        };
        assert_eq!(
            store
                .renew_agent_cert(&renewed, "aa01", &audit("certs.renew"), NOW + 2)
                .await
                .unwrap(),
            Ok(())
        );
        assert!(!refused(&store, "web-01", "aa02").await, "the renewed certificate");
        // Revoked host: the old, the renewed and any unrecorded certificate are refused.
        assert!(
            store
                .revoke_host("web-01", &audit("hosts.revoke"), NOW + 3)
                .await
                .unwrap()
        );
        for serial in ["aa01", "aa02", "ffff"] {
            assert!(refused(&store, "web-01", serial).await, "{serial} after the revocation");
        }
        // A certificate issued after the revocation (a renewal that raced it)
        // is refused too: the host is revoked.
        let late = IssuedCert {
            source: "renew",
            ..cert("web-01", "aa03")
        };
        assert_eq!(
            store
                .renew_agent_cert(&late, "aa02", &audit("certs.renew"), NOW + 4)
                .await
                .unwrap(),
            Err(RenewRefusal::HostRevoked),
            "renewal refused for a revoked host"
        );
        assert!(
            refused(&store, "web-01", "aa03").await,
            "the refused renewal was not recorded"
        );
        // Re-enrolled with a token that names it: only the new certificate is valid, ever.
        token(&store, "t2", 1, Some(&["web-01"])).await;
        redeem(&store, "t2", "web-01", "bb01").await.unwrap();
        assert!(!refused(&store, "web-01", "bb01").await, "the re-enrolled certificate");
        for serial in ["aa01", "aa02", "aa03", "ffff"] {
            assert!(
                refused(&store, "web-01", serial).await,
                "{serial} after the re-enrollment"
            );
        }
        // The sweep sees the earlier certificates as revoked.
        let revoked = store.revoked_certs(NOW + 5).await.unwrap();
        for serial in ["aa01", "aa02"] {
            assert!(
                revoked.contains(&("web-01".to_string(), serial.to_string())),
                "{revoked:?}"
            );
        }
        assert!(!revoked.iter().any(|(_, s)| s == "bb01"));
        // A stream still holding an earlier certificate cannot renew.
        let again = IssuedCert {
            source: "renew",
            ..cert("web-01", "aa04")
        };
        assert_eq!(
            store
                .renew_agent_cert(&again, "aa02", &audit("certs.renew"), NOW + 6)
                .await
                .unwrap(),
            Err(RenewRefusal::CertRevoked)
        );
        assert_eq!(
            store
                .renew_agent_cert(&again, "ffff", &audit("certs.renew"), NOW + 6)
                .await
                .unwrap(),
            Err(RenewRefusal::CertRevoked),
            "nor a stream with an unrecorded certificate"
        );
    })
    .await;
}

#[tokio::test]
async fn certificates_issued_by_the_cli_are_recorded_and_reenroll_a_revoked_host() {
    on_each_backend(|store| async move {
        let cli = |serial: &'static str| IssuedCert {
            source: "cli",
            ..cert("db-01", serial)
        };
        store
            .record_issued_certs(&[cli("cc01")], &audit("certs.issue"), NOW)
            .await
            .unwrap();
        assert!(!refused(&store, "db-01", "cc01").await);
        // The host appears when its agent connects; then it is revoked.
        store
            .agent_connected("db-01", &crate::model::AgentHello::default(), NOW + 1)
            .await
            .unwrap();
        assert!(
            store
                .revoke_host("db-01", &audit("hosts.revoke"), NOW + 2)
                .await
                .unwrap()
        );
        assert!(refused(&store, "db-01", "cc01").await);
        // Re-enrolling with a token that names the host does not revive the CLI certificate.
        token(&store, "t3", 1, Some(&["db-01"])).await;
        redeem(&store, "t3", "db-01", "dd01").await.unwrap();
        assert!(
            refused(&store, "db-01", "cc01").await,
            "the hand-issued certificate stays revoked"
        );
        assert!(!refused(&store, "db-01", "dd01").await);
        // A new CLI certificate for a revoked host re-enrolls it the same way.
        assert!(
            store
                .revoke_host("db-01", &audit("hosts.revoke"), NOW + 3)
                .await
                .unwrap()
        );
        store
            .record_issued_certs(&[cli("cc02")], &audit("certs.issue"), NOW + 4)
            .await
            .unwrap();
        assert!(!refused(&store, "db-01", "cc02").await);
        assert!(refused(&store, "db-01", "dd01").await);
        assert!(refused(&store, "db-01", "cc01").await);
    })
    .await;
}

#[tokio::test]
async fn redemption_counts_uses_and_refusals_consume_nothing() {
    on_each_backend(|store| async move {
        token(&store, "t3", 3, None).await;
        // A wrong secret, an unknown token: refused, nothing consumed, nothing created.
        let wrong = store
            .redeem_enrollment("t3", "hash-other", &cert("h-x", "e0"), &audit("hosts.enroll"), NOW)
            .await
            .unwrap();
        assert_eq!(wrong, Err(EnrollRefusal::Invalid));
        assert_eq!(redeem(&store, "nope", "h-x", "e0").await, Err(EnrollRefusal::Invalid));
        assert_eq!(uses_left(&store, "t3").await, 3);
        assert!(
            refused(&store, "h-x", "e0").await,
            "no certificate recorded by a refusal"
        );
        // --uses 3 allows exactly 3.
        for (i, host) in ["h-1", "h-2", "h-3"].iter().enumerate() {
            let labels = redeem(&store, "t3", host, &format!("e{}", i + 1)).await.unwrap();
            assert_eq!(labels.get("team").map(String::as_str), Some("web"));
        }
        assert_eq!(uses_left(&store, "t3").await, 0);
        assert_eq!(redeem(&store, "t3", "h-4", "e4").await, Err(EnrollRefusal::UsedUp));
        // An enrolled host cannot be taken over: refused, nothing consumed.
        token(&store, "t4", 1, None).await;
        assert_eq!(
            redeem(&store, "t4", "h-1", "e5").await,
            Err(EnrollRefusal::HostExists("h-1".into()))
        );
        assert_eq!(uses_left(&store, "t4").await, 1);
        // A revoked host is not taken over with a token that does not name it.
        assert!(store.revoke_host("h-1", &audit("hosts.revoke"), NOW).await.unwrap());
        assert_eq!(
            redeem(&store, "t4", "h-1", "e5").await,
            Err(EnrollRefusal::ReenrollNotNamed("h-1".into()))
        );
        assert_eq!(uses_left(&store, "t4").await, 1);
        // A pattern does not name a host either.
        token(&store, "t5", 1, Some(&["h-*"])).await;
        assert_eq!(
            redeem(&store, "t5", "h-1", "e5").await,
            Err(EnrollRefusal::ReenrollNotNamed("h-1".into()))
        );
        // Expired and revoked tokens.
        assert_eq!(
            store
                .redeem_enrollment(
                    "t4",
                    "hash-t4",
                    &cert("h-9", "e9"),
                    &audit("hosts.enroll"),
                    NOW + 2 * HOUR
                )
                .await
                .unwrap(),
            Err(EnrollRefusal::Expired)
        );
        assert!(
            store
                .revoke_enrollment_token("t4", &audit("enrollment_tokens.revoke"), NOW)
                .await
                .unwrap()
        );
        assert!(
            !store
                .revoke_enrollment_token("t4", &audit("enrollment_tokens.revoke"), NOW)
                .await
                .unwrap()
        );
        assert_eq!(redeem(&store, "t4", "h-9", "e9").await, Err(EnrollRefusal::Invalid));
        let listed = store.list_enrollment_tokens().await.unwrap();
        assert_eq!(listed.len(), 3);
        let t4 = listed.iter().find(|t| t.id == "t4").unwrap();
        assert_eq!((t4.max_uses, t4.uses_left, t4.revoked_ms), (1, 1, Some(NOW)));
        assert_eq!(
            listed.iter().find(|t| t.id == "t5").unwrap().hosts,
            Some(vec!["h-*".to_string()])
        );
    })
    .await;
}

#[tokio::test]
async fn tokens_limited_to_hosts_enroll_only_those() {
    on_each_backend(|store| async move {
        token(&store, "t6", 5, Some(&["web-*", "db-01"])).await;
        assert_eq!(
            redeem(&store, "t6", "mail-01", "f1").await,
            Err(EnrollRefusal::HostNotAllowed("mail-01".into()))
        );
        assert_eq!(uses_left(&store, "t6").await, 5);
        redeem(&store, "t6", "web-07", "f2").await.unwrap();
        redeem(&store, "t6", "db-01", "f3").await.unwrap();
        assert_eq!(uses_left(&store, "t6").await, 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_agents_racing_for_a_one_use_token_one_wins() {
    on_each_backend(|store| async move {
        for round in 0..5 {
            let id = format!("race{round}");
            token(&store, &id, 1, None).await;
            let (a, b) = (store.clone(), store.clone());
            let (ia, ib) = (id.clone(), id.clone());
            let ha = format!("racer-a{round}");
            let hb = format!("racer-b{round}");
            let (ra, rb) = tokio::join!(
                tokio::spawn(async move { redeem(&a, &ia, &ha, &format!("ra{round}")).await }),
                tokio::spawn(async move { redeem(&b, &ib, &hb, &format!("rb{round}")).await })
            );
            let (ra, rb) = (ra.unwrap(), rb.unwrap());
            assert_eq!(
                [ra.is_ok(), rb.is_ok()].iter().filter(|ok| **ok).count(),
                1,
                "round {round}: {ra:?} {rb:?}"
            );
            let loser = if ra.is_ok() { rb } else { ra };
            assert_eq!(loser, Err(EnrollRefusal::UsedUp));
            assert_eq!(uses_left(&store, &id).await, 0);
        }
    })
    .await;
}
