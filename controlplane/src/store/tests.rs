//! Store tests. Every test runs the same body on each selected backend
//! ([`TestBackend::selected`]): SQLite always, PostgreSQL when asked for.
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use steward_shared::selector::Selector;
use steward_shared::status::{CheckResult, CheckStatus, Value};

use super::testdb::{TestBackend, TestDatabase};
use super::*;
use crate::api::auth;
use crate::model::{AgentHello, IngestBatch, Role};

/// Runs `body` against a fresh, migrated database of every selected backend.
async fn on_each_backend<F, Fut>(body: F)
where
    F: Fn(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    for backend in TestBackend::selected() {
        eprintln!("--- backend: {}", backend.name());
        let db = TestDatabase::create(backend).await;
        let store = db.store().await;
        assert_eq!(store.backend_name(), backend.name());
        body(store.clone()).await;
        store.close().await;
    }
}

fn result(name: &str, status: CheckStatus, observed_at_ms: i64) -> CheckResult {
    CheckResult {
        name: name.to_string(),
        kind: "disk".to_string(),
        status,
        values: vec![Value::new("used", 42.5, "percent")],
        message: format!("{name} is {status}"),
        observed_at_ms,
        duration_us: 120,
    }
}

fn batch(host: &str, seqs: impl IntoIterator<Item = u64>, check: &str, status: CheckStatus) -> IngestBatch {
    IngestBatch {
        host_id: host.to_string(),
        results: seqs
            .into_iter()
            .map(|s| (s, result(check, status, 1_000 + s as i64)))
            .collect(),
        spool_dropped_total: 0,
    }
}

fn hello(hostname: &str) -> AgentHello {
    AgentHello {
        agent_version: "0.1.0".into(),
        facts: BTreeMap::from([
            ("hostname".to_string(), hostname.to_string()),
            ("os".to_string(), "linux".to_string()),
        ]),
        spool_dropped_total: 0,
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

async fn host(store: &Store, id: &str) -> Host {
    match store.find_host(id).await.unwrap() {
        HostLookup::Found(h) => *h,
        other => panic!("host {id}: {other:?}"),
    }
}

async fn all_checks(store: &Store, filter: &CheckFilter) -> Vec<LatestCheck> {
    store.list_checks(filter, None, 1000).await.unwrap().items
}

#[tokio::test]
async fn ingest_is_idempotent_on_host_and_seq() {
    on_each_backend(|store| async move {
        store.agent_connected("h1", &hello("web-1"), 1_000).await.unwrap();
        let b = batch("h1", 1..=3, "root", CheckStatus::Ok);
        store.ingest(std::slice::from_ref(&b), 2_000).await.unwrap();
        store.ingest(std::slice::from_ref(&b), 3_000).await.unwrap();
        // Overlapping resend plus new ones, and a duplicate inside one call.
        store
            .ingest(
                &[
                    batch("h1", 2..=5, "root", CheckStatus::Ok),
                    batch("h1", 5..=6, "root", CheckStatus::Ok),
                ],
                4_000,
            )
            .await
            .unwrap();
        assert_eq!(store.result_seqs("h1").await.unwrap(), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(host(&store, "h1").await.last_seq, 6);
    })
    .await;
}

#[tokio::test]
async fn check_latest_only_moves_forward() {
    on_each_backend(|store| async move {
        store
            .ingest(&[batch("h1", [5], "root", CheckStatus::Critical)], 1_000)
            .await
            .unwrap();
        store
            .ingest(&[batch("h1", [3], "root", CheckStatus::Ok)], 2_000)
            .await
            .unwrap();
        let checks = all_checks(&store, &CheckFilter::default()).await;
        assert_eq!(checks.len(), 1);
        assert_eq!((checks[0].seq, checks[0].result.status), (5, CheckStatus::Critical));
        // Within one call the newest wins too, whatever the batch order.
        store
            .ingest(
                &[
                    batch("h1", [9], "root", CheckStatus::Warning),
                    batch("h1", [7], "root", CheckStatus::Ok),
                ],
                3_000,
            )
            .await
            .unwrap();
        let checks = all_checks(&store, &CheckFilter::default()).await;
        assert_eq!((checks[0].seq, checks[0].result.status), (9, CheckStatus::Warning));
        assert_eq!(checks[0].result.message, "root is warning");
        assert_eq!(checks[0].result.values, vec![Value::new("used", 42.5, "percent")]);
        assert_eq!(store.result_seqs("h1").await.unwrap(), vec![3, 5, 7, 9]);
    })
    .await;
}

#[tokio::test]
async fn last_seq_is_the_highest_stored_and_returned_on_connect() {
    on_each_backend(|store| async move {
        assert_eq!(store.agent_connected("h1", &hello("web-1"), 1_000).await.unwrap(), 0);
        store
            .ingest(&[batch("h1", 1..=10, "root", CheckStatus::Ok)], 2_000)
            .await
            .unwrap();
        store
            .ingest(&[batch("h1", [4], "root", CheckStatus::Ok)], 3_000)
            .await
            .unwrap();
        store.agent_disconnected("h1", 4_000).await.unwrap();
        assert_eq!(store.agent_connected("h1", &hello("web-1"), 5_000).await.unwrap(), 10);
        let h = host(&store, "h1").await;
        assert_eq!(h.last_seq, 10);
        assert!(h.connected);
        assert_eq!(
            (h.first_seen_ms, h.last_seen_ms, h.last_disconnected_ms),
            (1_000, 5_000, Some(4_000))
        );
    })
    .await;
}

#[tokio::test]
async fn ingest_creates_unknown_hosts_and_records_spool_drops() {
    on_each_backend(|store| async move {
        let mut b = batch("new-host", [1, 2], "root", CheckStatus::Ok);
        b.spool_dropped_total = 17;
        store.ingest(&[b], 1_500).await.unwrap();
        let h = host(&store, "new-host").await;
        assert_eq!(
            (h.last_seq, h.spool_dropped_total, h.first_seen_ms, h.last_seen_ms),
            (2, 17, 1_500, 1_500)
        );
        assert!(!h.connected);
        assert_eq!(h.hostname, "");
        store.agent_heartbeat("new-host", 20, 2_500).await.unwrap();
        let h = host(&store, "new-host").await;
        assert_eq!((h.spool_dropped_total, h.last_seen_ms), (20, 2_500));
        // A late heartbeat timestamp never moves last_seen backwards.
        store.agent_heartbeat("new-host", 20, 2_000).await.unwrap();
        assert_eq!(host(&store, "new-host").await.last_seen_ms, 2_500);
        let stats = store.fleet_stats(2_400).await.unwrap();
        assert_eq!(
            stats,
            FleetStats {
                hosts: 1,
                hosts_online: 1,
                spool_dropped_total: 20
            }
        );
    })
    .await;
}

#[tokio::test]
async fn large_ingest_spans_several_statement_chunks() {
    on_each_backend(|store| async move {
        let batches: Vec<IngestBatch> = (0..3)
            .map(|h| IngestBatch {
                host_id: format!("h{h}"),
                results: (1..=1_200u64)
                    .map(|s| (s, result(&format!("c{}", s % 40), CheckStatus::Ok, s as i64)))
                    .collect(),
                spool_dropped_total: 0,
            })
            .collect();
        store.ingest(&batches, 1_000).await.unwrap();
        for h in 0..3 {
            let seqs = store.result_seqs(&format!("h{h}")).await.unwrap();
            assert_eq!(seqs.len(), 1_200);
            assert_eq!(seqs, (1..=1_200).collect::<Vec<u64>>());
        }
        let f = CheckFilter {
            host_id: Some("h1".into()),
            ..CheckFilter::default()
        };
        let checks = all_checks(&store, &f).await;
        assert_eq!(checks.len(), 40);
        assert!(
            checks.iter().all(|c| c.seq > 1_200 - 40),
            "latest per check is its newest"
        );
    })
    .await;
}

#[tokio::test]
async fn non_finite_values_are_stored_as_missing() {
    on_each_backend(|store| async move {
        let mut r = result("load", CheckStatus::Unknown, 1);
        r.values = vec![
            Value::new("load1", f64::NAN, ""),
            Value::new("load5", f64::INFINITY, ""),
            Value::new("x", 1.5, ""),
        ];
        store
            .ingest(
                &[IngestBatch {
                    host_id: "h".into(),
                    results: vec![(1, r)],
                    spool_dropped_total: 0,
                }],
                1,
            )
            .await
            .unwrap();
        let c = &all_checks(&store, &CheckFilter::default()).await[0];
        assert!(c.result.values[0].value.is_nan() && c.result.values[1].value.is_nan());
        assert_eq!(c.result.values[2].value, 1.5);
    })
    .await;
}

#[tokio::test]
async fn nul_characters_from_agents_do_not_poison_ingest() {
    on_each_backend(|store| async move {
        let mut h = hello("we\0b");
        h.agent_version = "1\0".into();
        store.agent_connected("h", &h, 1).await.unwrap();
        let mut r = result("na\0me", CheckStatus::Ok, 1);
        r.message = "bad \0 byte".into();
        r.values[0].name = "v\0".into();
        store
            .ingest(
                &[IngestBatch {
                    host_id: "h".into(),
                    results: vec![(1, r)],
                    spool_dropped_total: 0,
                }],
                1,
            )
            .await
            .unwrap();
        let c = &all_checks(&store, &CheckFilter::default()).await[0];
        assert_eq!(
            (c.result.name.as_str(), c.result.message.as_str()),
            ("na\u{FFFD}me", "bad \u{FFFD} byte")
        );
        assert_eq!(c.result.values[0].name, "v\0", "JSON escapes NUL itself");
        assert_eq!(host(&store, "h").await.hostname, "we\u{FFFD}b");
        let bad_id = batch("bad\0id", [1], "c", CheckStatus::Ok);
        let bad_seq = batch("h", [u64::MAX], "c", CheckStatus::Ok);
        for bad in [bad_id, bad_seq] {
            assert!(validate_batch(&bad).is_err());
            assert!(
                store
                    .ingest(&[batch("h", [2], "c", CheckStatus::Ok), bad], 1)
                    .await
                    .is_err()
            );
        }
        assert_eq!(
            store.result_seqs("h").await.unwrap(),
            vec![1],
            "a refused call stores nothing"
        );
        assert!(validate_batch(&batch("h", [2], "c", CheckStatus::Ok)).is_ok());
    })
    .await;
}

#[tokio::test]
async fn selector_filtering_paginates_without_duplicates_or_gaps() {
    on_each_backend(|store| async move {
        for i in 0..30 {
            let id = format!("host-{i:02}");
            store.agent_connected(&id, &hello(&id), 1_000).await.unwrap();
            let env = if i % 3 == 0 { "prod" } else { "staging" };
            assert!(
                store
                    .set_host_labels(&id, &labels(&[("env", env), ("n", &i.to_string())]))
                    .await
                    .unwrap()
            );
        }
        assert!(!store.set_host_labels("nope", &labels(&[])).await.unwrap());
        let prod: BTreeSet<String> = (0..30).filter(|i| i % 3 == 0).map(|i| format!("host-{i:02}")).collect();

        for (selector, expected) in [
            ("env=prod", prod.clone()),
            ("", (0..30).map(|i| format!("host-{i:02}")).collect()),
            ("env=nowhere", BTreeSet::new()),
        ] {
            let selector = Selector::parse(selector).unwrap();
            for limit in [1, 3, 4, 10, 100] {
                let mut seen = Vec::new();
                let mut cursor: Option<String> = None;
                let mut pages = 0;
                loop {
                    let page = store.list_hosts(&selector, cursor.as_deref(), limit).await.unwrap();
                    pages += 1;
                    assert!(page.items.len() <= limit);
                    seen.extend(page.items.iter().map(|h| h.id.clone()));
                    if !page.has_more {
                        break;
                    }
                    assert_eq!(page.items.len(), limit, "a page with more after it is full");
                    cursor = page.items.last().map(|h| h.id.clone());
                }
                let unique: BTreeSet<String> = seen.iter().cloned().collect();
                assert_eq!(unique.len(), seen.len(), "duplicates with {selector} limit {limit}");
                assert_eq!(unique, expected, "{selector} limit {limit}");
                assert_eq!(
                    pages,
                    expected.len().div_ceil(limit).max(1),
                    "no empty trailing page ({selector}, {limit})"
                );
            }
        }
    })
    .await;
}

#[tokio::test]
async fn checks_filter_by_status_host_and_selector_with_pagination() {
    on_each_backend(|store| async move {
        for h in ["a", "b", "c"] {
            let mut results = Vec::new();
            for (i, name) in ["cpu", "disk", "mem", "tls"].iter().enumerate() {
                let status = if i % 2 == 0 {
                    CheckStatus::Ok
                } else {
                    CheckStatus::Critical
                };
                results.push(((i + 1) as u64, result(name, status, 1)));
            }
            store
                .ingest(
                    &[IngestBatch {
                        host_id: h.into(),
                        results,
                        spool_dropped_total: 0,
                    }],
                    1,
                )
                .await
                .unwrap();
        }
        store.set_host_labels("b", &labels(&[("role", "db")])).await.unwrap();

        let crit = CheckFilter {
            status: Some(CheckStatus::Critical),
            ..CheckFilter::default()
        };
        let names: Vec<(String, String)> = all_checks(&store, &crit)
            .await
            .into_iter()
            .map(|c| (c.host_id, c.result.name))
            .collect();
        assert_eq!(names.len(), 6);
        assert!(names.windows(2).all(|w| w[0] < w[1]), "ordered by (host, name)");

        let only_b = CheckFilter {
            host_id: Some("b".into()),
            ..CheckFilter::default()
        };
        assert_eq!(all_checks(&store, &only_b).await.len(), 4);
        let db = CheckFilter {
            selector: Selector::parse("role=db").unwrap(),
            ..CheckFilter::default()
        };
        assert!(all_checks(&store, &db).await.iter().all(|c| c.host_id == "b"));
        let not_db = CheckFilter {
            selector: Selector::parse("role!=db").unwrap(),
            status: Some(CheckStatus::Ok),
            host_id: None,
            ..CheckFilter::default()
        };
        assert_eq!(all_checks(&store, &not_db).await.len(), 4);

        // Pages of 5 over 12 checks: 5 + 5 + 2, cursor resumes exactly after.
        let mut seen = Vec::new();
        let mut after: Option<(String, String)> = None;
        loop {
            let a = after.as_ref().map(|(h, n)| (h.as_str(), n.as_str()));
            let page = store.list_checks(&CheckFilter::default(), a, 5).await.unwrap();
            seen.extend(page.items.iter().map(|c| (c.host_id.clone(), c.result.name.clone())));
            if !page.has_more {
                break;
            }
            after = page.items.last().map(|c| (c.host_id.clone(), c.result.name.clone()));
        }
        assert_eq!(seen.len(), 12);
        assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), 12);

        let counts = store.status_counts(&["a", "c", "zzz"]).await.unwrap();
        assert_eq!(
            counts["a"],
            StatusCounts {
                ok: 2,
                critical: 2,
                ..StatusCounts::default()
            }
        );
        assert_eq!(counts["zzz"], StatusCounts::default());
        assert!(!counts.contains_key("b"));
    })
    .await;
}

#[tokio::test]
async fn hosts_are_found_by_id_or_unique_hostname() {
    on_each_backend(|store| async move {
        store.agent_connected("id-1", &hello("web-1"), 1).await.unwrap();
        store.agent_connected("id-2", &hello("dup"), 1).await.unwrap();
        store.agent_connected("id-3", &hello("dup"), 1).await.unwrap();
        assert_eq!(host(&store, "id-1").await.hostname, "web-1");
        assert_eq!(host(&store, "web-1").await.id, "id-1");
        assert_eq!(host(&store, "web-1").await.facts["os"], "linux");
        assert_eq!(
            store.find_host("dup").await.unwrap(),
            HostLookup::Ambiguous(vec!["id-2".into(), "id-3".into()])
        );
        assert_eq!(store.find_host("nope").await.unwrap(), HostLookup::NotFound);
        assert_eq!(store.find_host("").await.unwrap(), HostLookup::NotFound);
        // A hostname that is also another host's ID resolves to the ID.
        store.agent_connected("id-4", &hello("id-1"), 1).await.unwrap();
        assert_eq!(host(&store, "id-1").await.id, "id-1");
    })
    .await;
}

#[tokio::test]
async fn prune_removes_only_old_history_in_chunks() {
    on_each_backend(|store| async move {
        let old: Vec<IngestBatch> = vec![IngestBatch {
            host_id: "h".into(),
            results: (1..=(PRUNE_CHUNK_ROWS as u64 + 10))
                .map(|s| (s, result("c", CheckStatus::Ok, 1)))
                .collect(),
            spool_dropped_total: 0,
        }];
        store.ingest(&old, 1_000).await.unwrap();
        store
            .ingest(&[batch("h", [100_000], "c", CheckStatus::Ok)], 9_000)
            .await
            .unwrap();
        assert_eq!(store.prune_results(5_000).await.unwrap(), PRUNE_CHUNK_ROWS as u64 + 10);
        assert_eq!(store.result_seqs("h").await.unwrap(), vec![100_000]);
        assert_eq!(store.prune_results(5_000).await.unwrap(), 0);
        // The latest state is not history: it stays.
        assert_eq!(all_checks(&store, &CheckFilter::default()).await.len(), 1);
    })
    .await;
}

#[tokio::test]
async fn api_tokens_are_stored_hashed_and_can_expire_or_be_revoked() {
    on_each_backend(|store| async move {
        let token = auth::create_admin_token(&store, "ops", None).await.unwrap();
        let (id, secret) = auth::parse_token(&token).unwrap();
        let stored = store.find_api_token(id).await.unwrap().unwrap();
        assert_eq!((stored.name.as_str(), stored.role.as_str()), ("ops", "admin"));
        assert_eq!(stored.secret_hash, auth::hash_secret(secret));
        assert!(!stored.secret_hash.contains(secret));
        assert!(auth::token_is_valid(&store, &token).await);

        let now = steward_shared::now_ms();
        let who = auth::authenticate(&store, Some(&format!("Bearer {token}")), now)
            .await
            .unwrap();
        assert_eq!(who.token_id, id);
        assert!(store.find_api_token(id).await.unwrap().unwrap().last_used_ms.is_some());
        assert!(
            auth::authenticate(&store, Some(&format!("bearer {token}x")), now)
                .await
                .is_err()
        );
        assert!(
            auth::authenticate(&store, Some(&format!("Basic {token}")), now)
                .await
                .is_err()
        );
        assert!(auth::authenticate(&store, None, now).await.is_err());

        let short = auth::create_token(&store, "ci", Role::Viewer, Some(Duration::from_secs(60)))
            .await
            .unwrap();
        assert!(auth::token_is_valid(&store, &short).await);
        let later = now + 61_000;
        assert!(matches!(
            auth::authenticate(&store, Some(&format!("Bearer {short}")), later).await,
            Err(auth::AuthError::Unauthorized)
        ));

        let revoke = || crate::audit::AuditEntry::new("system", auth::TOKENS_REVOKE, crate::audit::Outcome::Success);
        assert!(store.revoke_api_token(id, now, revoke()).await.unwrap());
        assert!(
            !store.revoke_api_token(id, now, revoke()).await.unwrap(),
            "second revoke is a no-op"
        );
        assert!(!auth::token_is_valid(&store, &token).await);
        let list = store.list_api_tokens().await.unwrap();
        assert_eq!(list.len(), 2);
        assert!(list.iter().any(|t| t.role == "viewer" && t.expires_ms.is_some()));
        assert!(auth::create_admin_token(&store, "  ", None).await.is_err());
    })
    .await;
}

#[tokio::test]
async fn connect_refuses_unknown_schemes_and_memory_databases() {
    let err = Store::connect("mysql://localhost/x").await.unwrap_err().to_string();
    assert!(err.contains("\"mysql\"") && err.contains("sqlite://"), "{err}");
    let err = Store::connect("sqlite::memory:").await.unwrap_err().to_string();
    assert!(err.contains("in-memory"), "{err}");
    assert!(Store::connect("not a url").await.is_err());
}

#[tokio::test]
async fn sqlite_creates_missing_directories_and_migrates_twice() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("a/b/steward.db").display());
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    store.ping().await.unwrap();
    store.close().await;
}

#[test]
fn every_migration_file_is_embedded_for_both_backends() {
    for (backend, embedded) in [("sqlite", sqlite::MIGRATIONS), ("postgres", postgres::MIGRATIONS)] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(backend);
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let names: Vec<String> = embedded.iter().map(|(v, d, _)| format!("{v:04}_{d}.sql")).collect();
        assert_eq!(files, names, "{backend}: migrations on disk and embedded differ");
    }
    assert_eq!(
        sqlite::MIGRATIONS.len(),
        postgres::MIGRATIONS.len(),
        "backends' migrations are kept in step"
    );
}

#[tokio::test]
async fn connection_errors_name_the_cause_once_and_the_quickstart_creates_its_database() {
    // Nothing listens on port 1: why, once, on one line.
    let err = Store::connect("postgres://steward@127.0.0.1:1/steward")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("cannot reach PostgreSQL on 127.0.0.1:1: "), "{err}");
    assert_eq!(err.lines().count(), 1);
    // SQLite files are created by connect itself.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("q.db").display());
    assert!(!Store::create_database_if_missing(&url).await.unwrap());

    if !TestBackend::selected().contains(&TestBackend::Postgres) {
        return;
    }
    let admin = super::testdb::pg_admin_url();
    let name = format!("steward_test_missing_{}", super::testdb::random_suffix());
    let url = super::testdb::database_url(&admin, &name);
    let err = Store::connect(&url).await.unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("database \"{name}\" does not exist on ")),
        "{err}"
    );
    assert!(
        err.contains("createdb -h ") && err.ends_with("or point the database URL at an existing one"),
        "{err}"
    );
    assert!(
        !err.contains("at line") && !err.contains("error returned from database"),
        "{err}"
    );
    assert_eq!(err.matches("does not exist").count(), 1, "{err}");

    assert!(Store::create_database_if_missing(&url).await.unwrap(), "created");
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    store.close().await;
    assert!(!Store::create_database_if_missing(&url).await.unwrap(), "exists now");

    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let _ = conn.close().await;
}
