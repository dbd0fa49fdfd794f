//! Audit log tests against real databases, the same bodies on every selected
//! backend ([`TestBackend::selected`]): appends in the change's transaction,
//! triggers, tampering with the triggers dropped (every single-entry edit,
//! deletion, insertion and reordering is caught, naming the entry), signed
//! checkpoints and gaps, exports, and concurrent appends from several
//! "replicas" (separate pools on one database).
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteConnection;
use tokio_util::sync::CancellationToken;

use super::chain::{self, CheckpointKind, EntryFields, PinnedCheckpoint, Tampered, Verified, VerifyInput};
use super::checkpointer::{CheckpointPolicy, Checkpointer};
use super::export;
use super::signing::Signer;
use super::{AuditEntry, AuditFilter, Outcome, StoredEntry, actor};
use crate::api::auth;
use crate::model::{ApiToken, Role};
use crate::store::Store;
use crate::store::testdb::{TestBackend, TestDatabase};

/// Where a test database is (it lives until the test body is done).
#[derive(Debug, Clone)]
struct Db {
    url: String,
    backend: TestBackend,
}

impl Db {
    /// Another store (its own pools) on the same database: a replica.
    async fn store(&self) -> Store {
        Store::connect(&self.url).await.unwrap()
    }
}

/// Runs `body` against a fresh, migrated database of every selected backend.
async fn on_each_backend<F, Fut>(body: F)
where
    F: Fn(Db, Store) -> Fut,
    Fut: Future<Output = ()>,
{
    for backend in TestBackend::selected() {
        eprintln!("--- backend: {}", backend.name());
        let db = TestDatabase::create(backend).await;
        let store = db.store().await;
        let info = Db {
            url: db.url().to_string(),
            backend,
        };
        body(info, store.clone()).await;
        store.close().await;
        drop(db);
    }
}

fn entry(i: usize) -> AuditEntry {
    AuditEntry::new(actor::token("t1"), "hosts.labels.set", Outcome::Success)
        .target(format!("host:web-{i}"))
        .request_id(Some(&format!("req-{i}")))
        .details(serde_json::json!({ "labels": { "env": "prod" }, "i": i }))
}

fn token(id: &str) -> ApiToken {
    ApiToken {
        id: id.into(),
        name: format!("token {id}"),
        role: Role::Viewer.to_string(),
        scope: String::new(),
        secret_hash: "00".repeat(32),
        created_ms: 1,
        expires_ms: None,
        revoked_ms: None,
        last_used_ms: None,
        parent_id: None,
    }
}

fn policy() -> CheckpointPolicy {
    CheckpointPolicy {
        every: 1000,
        interval: Duration::from_secs(3600),
    }
}

/// Verifies the database's own tables (no export head).
async fn verify_store(store: &Store, signer: &Signer) -> Result<Verified, Tampered> {
    verify_store_pinned(store, signer, &[]).await
}

/// [`verify_store`] with checkpoints pinned.
async fn verify_store_pinned(
    store: &Store,
    signer: &Signer,
    pinned: &[PinnedCheckpoint],
) -> Result<Verified, Tampered> {
    let snap = store.audit_snapshot().await.unwrap();
    chain::verify(&VerifyInput {
        entries: &snap.entries,
        checkpoints: &snap.checkpoints,
        trusted_keys: &[signer.public_key()],
        head: None,
        pinned,
    })
}

/// The `start` checkpoint a control plane signs when it starts.
async fn start_checkpoint(store: &Store, signer: &Arc<Signer>) {
    Checkpointer::new(store.clone(), signer.clone(), policy())
        .checkpoint(CheckpointKind::Start, true, steward_shared::now_ms())
        .await
        .unwrap();
}

async fn all_entries(store: &Store) -> Vec<StoredEntry> {
    store.audit_snapshot().await.unwrap().entries
}

/// A connection of its own, beside the store: what an attacker with database
/// access has.
enum Raw {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

impl Raw {
    async fn open(db: &Db) -> Raw {
        match db.backend {
            TestBackend::Sqlite => Raw::Sqlite(SqliteConnection::connect(&db.url).await.unwrap()),
            TestBackend::Postgres => Raw::Postgres(PgConnection::connect(&db.url).await.unwrap()),
        }
    }

    async fn exec(&mut self, sql: &str) -> Result<u64, sqlx::Error> {
        let sql = sqlx::AssertSqlSafe(sql.to_string());
        match self {
            Raw::Sqlite(c) => sqlx::query(sql).execute(c).await.map(|r| r.rows_affected()),
            Raw::Postgres(c) => sqlx::query(sql).execute(c).await.map(|r| r.rows_affected()),
        }
    }

    async fn drop_triggers(&mut self) {
        let statements: &[&str] = match self {
            Raw::Sqlite(_) => &[
                "DROP TRIGGER audit_log_no_update",
                "DROP TRIGGER audit_log_no_delete",
                "DROP TRIGGER audit_checkpoints_no_update",
                "DROP TRIGGER audit_checkpoints_no_delete",
            ],
            Raw::Postgres(_) => &[
                "DROP TRIGGER audit_log_no_update_delete ON audit_log",
                "DROP TRIGGER audit_log_no_truncate ON audit_log",
                "DROP TRIGGER audit_checkpoints_no_update_delete ON audit_checkpoints",
                "DROP TRIGGER audit_checkpoints_no_truncate ON audit_checkpoints",
            ],
        };
        for sql in statements {
            self.exec(sql).await.unwrap();
        }
    }

    /// Inserts `e` as a row, exactly.
    async fn insert(&mut self, e: &StoredEntry) {
        let (sqlite, pg) = (
            "INSERT INTO audit_log (seq, time_ms, actor, action, target, outcome, request_id, details, entry, \
             prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            "INSERT INTO audit_log (seq, time_ms, actor, action, target, outcome, request_id, details, entry, \
             prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        );
        macro_rules! bind_all {
            ($q:expr) => {
                $q.bind(e.seq as i64)
                    .bind(e.time_ms)
                    .bind(&e.actor)
                    .bind(&e.action)
                    .bind(&e.target)
                    .bind(&e.outcome)
                    .bind(&e.request_id)
                    .bind(&e.details)
                    .bind(&e.entry)
                    .bind(&e.prev_hash)
                    .bind(&e.hash)
            };
        }
        match self {
            Raw::Sqlite(c) => {
                bind_all!(sqlx::query(sqlite)).execute(c).await.unwrap();
            }
            Raw::Postgres(c) => {
                bind_all!(sqlx::query(pg)).execute(c).await.unwrap();
            }
        }
    }

    /// Replaces the whole log by `rows`.
    async fn replace_log(&mut self, rows: &[StoredEntry]) {
        self.exec("DELETE FROM audit_log").await.unwrap();
        for r in rows {
            self.insert(r).await;
        }
    }
}

/// `e` with its bytes and hash recomputed for `seq` after `prev` (what a
/// careful forger does).
fn reforge(mut e: StoredEntry, seq: u64, prev: &str) -> StoredEntry {
    e.seq = seq;
    e.entry = chain::encode_entry(&EntryFields {
        seq,
        time_ms: e.time_ms,
        actor: &e.actor,
        action: &e.action,
        target: e.target.as_deref(),
        outcome: &e.outcome,
        request_id: e.request_id.as_deref(),
        details: &e.details,
    });
    e.prev_hash = prev.to_string();
    e.hash = chain::hex_hash(&chain::entry_hash(seq, &chain::parse_hash(prev).unwrap(), &e.entry));
    e
}

#[tokio::test]
async fn entries_are_chained_and_verify_and_list_by_filter() {
    on_each_backend(|_db, store| async move {
        let signer = Signer::generate().unwrap();
        for i in 0..3 {
            assert_eq!(store.append_audit(entry(i)).await.unwrap(), i as u64 + 1);
        }
        // A change through the audited store API: the token and its entry.
        auth::create_token(&store, "ci", Role::Viewer, None).await.unwrap();
        store
            .append_audit(AuditEntry::new(actor::ANONYMOUS, "api.authenticate", Outcome::Denied))
            .await
            .unwrap();
        let rows = all_entries(&store).await;
        assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        assert_eq!(rows[0].prev_hash, chain::hex_hash(&chain::ZERO_HASH));
        for pair in rows.windows(2) {
            assert_eq!(pair[1].prev_hash, pair[0].hash);
            assert!(pair[1].time_ms >= pair[0].time_ms);
        }
        let created = &rows[3];
        assert_eq!(
            (created.action.as_str(), created.outcome.as_str()),
            (auth::TOKENS_CREATE, "success")
        );
        assert!(created.actor.starts_with("local:"), "{}", created.actor);
        assert!(created.target.as_deref().unwrap().starts_with("token:"));
        assert_eq!(rows[1].request_id.as_deref(), Some("req-1"));
        assert_eq!(rows[4].target, None);

        let signer = Arc::new(signer);
        start_checkpoint(&store, &signer).await;
        let verified = verify_store(&store, &signer).await.unwrap();
        assert_eq!((verified.entries, verified.checkpoints), (5, 1));

        let by_actor = AuditFilter {
            actor: Some(actor::token("t1")),
            ..AuditFilter::default()
        };
        let page = store.list_audit(&by_actor, None, 2).await.unwrap();
        assert_eq!((page.items.len(), page.has_more), (2, true));
        let page = store.list_audit(&by_actor, Some(page.items[1].seq), 2).await.unwrap();
        assert_eq!((page.items.len(), page.has_more), (1, false));
        let denied = AuditFilter {
            action: Some("api.authenticate".into()),
            since_ms: Some(rows[0].time_ms),
            ..AuditFilter::default()
        };
        assert_eq!(store.list_audit(&denied, None, 10).await.unwrap().items.len(), 1);
        let future = AuditFilter {
            since_ms: Some(rows[4].time_ms + 1),
            ..AuditFilter::default()
        };
        assert!(store.list_audit(&future, None, 10).await.unwrap().items.is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_change_and_its_entry_commit_together_or_not_at_all() {
    on_each_backend(|_db, store| async move {
        let count = |store: Store| async move { all_entries(&store).await.len() };

        let mut tx = store.begin().await.unwrap();
        tx.insert_api_token(&token("a")).await.unwrap();
        tx.audit(entry(1));
        assert_eq!(tx.commit().await.unwrap(), vec![1]);
        assert!(store.find_api_token("a").await.unwrap().is_some());

        // A change without an entry is refused and rolled back.
        let mut tx = store.begin().await.unwrap();
        tx.insert_api_token(&token("b")).await.unwrap();
        let e = tx.commit().await.unwrap_err().to_string();
        assert!(e.contains("without an audit entry"), "{e}");
        assert!(store.find_api_token("b").await.unwrap().is_none());

        // Dropped before commit: neither the change nor the entry.
        let mut tx = store.begin().await.unwrap();
        tx.insert_api_token(&token("c")).await.unwrap();
        tx.audit(entry(2));
        drop(tx);
        assert!(store.find_api_token("c").await.unwrap().is_none());

        // The change fails: no entry either.
        let mut tx = store.begin().await.unwrap();
        assert!(tx.insert_api_token(&token("a")).await.is_err());
        drop(tx);

        // An entry the code should not build fails the commit: no change.
        let mut tx = store.begin().await.unwrap();
        tx.insert_api_token(&token("d")).await.unwrap();
        tx.audit(AuditEntry::new("system", "Bad Action!", Outcome::Success));
        assert!(tx.commit().await.is_err());
        assert!(store.find_api_token("d").await.unwrap().is_none());
        assert_eq!(count(store.clone()).await, 1);

        // Revoking: the change and its entry; a second revoke changes nothing and is recorded as failed.
        let revoke = AuditEntry::new("system", auth::TOKENS_REVOKE, Outcome::Success);
        assert!(auth::revoke_token_by(&store, revoke.clone(), "a").await.unwrap());
        assert!(!auth::revoke_token_by(&store, revoke, "a").await.unwrap());
        let rows = all_entries(&store).await;
        let outcomes: Vec<(&str, &str)> = rows[1..]
            .iter()
            .map(|r| (r.action.as_str(), r.outcome.as_str()))
            .collect();
        assert_eq!(
            outcomes,
            [(auth::TOKENS_REVOKE, "success"), (auth::TOKENS_REVOKE, "failed")]
        );
        assert_eq!(rows[2].target.as_deref(), Some("token:a"));
        let signer = Arc::new(Signer::generate().unwrap());
        start_checkpoint(&store, &signer).await;
        verify_store(&store, &signer).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn triggers_refuse_update_delete_and_truncate() {
    on_each_backend(|db, store| async move {
        let signer = Arc::new(Signer::generate().unwrap());
        store.append_audit(entry(1)).await.unwrap();
        Checkpointer::new(store.clone(), signer, policy())
            .checkpoint(CheckpointKind::Start, true, 1_000)
            .await
            .unwrap();
        let mut raw = Raw::open(&db).await;
        let mut refused = vec![
            "UPDATE audit_log SET actor = 'x'",
            "DELETE FROM audit_log",
            "UPDATE audit_checkpoints SET kind = 'x'",
            "DELETE FROM audit_checkpoints",
        ];
        if db.backend == TestBackend::Postgres {
            refused.extend(["TRUNCATE audit_log", "TRUNCATE audit_checkpoints"]);
        }
        for sql in refused {
            let e = raw.exec(sql).await.unwrap_err().to_string();
            assert!(e.contains("append-only"), "{sql}: {e}");
        }
        assert_eq!(all_entries(&store).await.len(), 1);
        // Appending is what the tables are for.
        store.append_audit(entry(2)).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn tampering_with_any_single_entry_is_caught_naming_it() {
    on_each_backend(|db, store| async move {
        const N: u64 = 6;
        let signer = Arc::new(Signer::generate().unwrap());
        for i in 0..N as usize {
            store.append_audit(entry(i)).await.unwrap();
        }
        // A checkpoint covers the tail, so even the last entry cannot go unnoticed.
        Checkpointer::new(store.clone(), signer.clone(), policy())
            .checkpoint(CheckpointKind::Start, true, steward_shared::now_ms())
            .await
            .unwrap();
        let original = all_entries(&store).await;
        verify_store(&store, &signer).await.unwrap();
        let mut raw = Raw::open(&db).await;
        raw.drop_triggers().await;

        let row = |seq: u64| original[seq as usize - 1].clone();
        let mut cases = 0;
        let mut check = |found: Result<Verified, Tampered>, seq: u64, why: &str, case: &str| {
            let t = found.expect_err(case);
            assert_eq!(t.seq, Some(seq), "{case}: {t}");
            assert!(t.to_string().contains(why), "{case}: {t}");
            cases += 1;
        };
        for k in 1..=N {
            // Edit one column; the hashed bytes disagree.
            for (column, edit) in [
                ("actor", "actor = 'token:evil'"),
                ("outcome", "outcome = 'denied'"),
                ("time_ms", "time_ms = time_ms - 3600000"),
                ("details", "details = '{\"labels\":{}}'"),
                ("target", "target = NULL"),
            ] {
                raw.exec(&format!("UPDATE audit_log SET {edit} WHERE seq = {k}"))
                    .await
                    .unwrap();
                check(
                    verify_store(&store, &signer).await,
                    k,
                    column,
                    &format!("edit {column} of {k}"),
                );
                raw.replace_log(&original).await;
            }
            // Edit the hashed bytes (and the column, to match), keeping the old hash.
            let mut forged = reforge(
                StoredEntry {
                    actor: "token:evil".into(),
                    ..row(k)
                },
                k,
                &row(k).prev_hash,
            );
            forged.hash = row(k).hash;
            raw.exec(&format!("DELETE FROM audit_log WHERE seq = {k}"))
                .await
                .unwrap();
            raw.insert(&forged).await;
            check(
                verify_store(&store, &signer).await,
                k,
                "do not match its stored hash",
                &format!("bytes of {k}"),
            );
            raw.replace_log(&original).await;

            // Rewrite the entry completely, with a correct hash of its own.
            let rewritten = reforge(
                StoredEntry {
                    actor: "token:evil".into(),
                    ..row(k)
                },
                k,
                &row(k).prev_hash,
            );
            raw.exec(&format!("DELETE FROM audit_log WHERE seq = {k}"))
                .await
                .unwrap();
            raw.insert(&rewritten).await;
            let why = if k < N { "rewritten" } else { "signed by checkpoint" };
            check(verify_store(&store, &signer).await, k, why, &format!("rewrite {k}"));
            raw.replace_log(&original).await;

            // Replace the stored hash or prev_hash.
            for (column, why) in [("hash", "do not match"), ("prev_hash", "prev_hash")] {
                raw.exec(&format!(
                    "UPDATE audit_log SET {column} = '{}' WHERE seq = {k}",
                    "ab".repeat(32)
                ))
                .await
                .unwrap();
                check(verify_store(&store, &signer).await, k, why, &format!("{column} of {k}"));
                raw.replace_log(&original).await;
            }

            // Delete it.
            raw.exec(&format!("DELETE FROM audit_log WHERE seq = {k}"))
                .await
                .unwrap();
            check(
                verify_store(&store, &signer).await,
                k,
                "missing",
                &format!("delete {k}"),
            );
            raw.replace_log(&original).await;

            // Insert a well-formed forgery at k, moving the originals up by one.
            let prev = if k == 1 {
                chain::hex_hash(&chain::ZERO_HASH)
            } else {
                row(k - 1).hash
            };
            let forgery = reforge(
                StoredEntry {
                    actor: "token:evil".into(),
                    ..row(k)
                },
                k,
                &prev,
            );
            let mut rows: Vec<StoredEntry> = original.clone();
            for r in rows.iter_mut().filter(|r| r.seq >= k) {
                r.seq += 1;
            }
            rows.insert(k as usize - 1, forgery);
            raw.replace_log(&rows).await;
            let why = if k < N { "inserted" } else { "signed by checkpoint" };
            check(verify_store(&store, &signer).await, k, why, &format!("insert at {k}"));
            raw.replace_log(&original).await;

            // Swap it with the next one.
            if k < N {
                let mut rows = original.clone();
                rows.swap(k as usize - 1, k as usize);
                rows[k as usize - 1].seq = k;
                rows[k as usize].seq = k + 1;
                raw.replace_log(&rows).await;
                check(
                    verify_store(&store, &signer).await,
                    k,
                    "reordered",
                    &format!("swap {k} and {}", k + 1),
                );
                raw.replace_log(&original).await;
            }
        }
        assert_eq!(cases, 12 * N as usize - 1);
        verify_store(&store, &signer).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn checkpoints_are_signed_chained_and_their_gaps_are_visible() {
    on_each_backend(|db, store| async move {
        let signer = Arc::new(Signer::generate().unwrap());
        let cp = Checkpointer::new(store.clone(), signer.clone(), policy());
        let hour = 3_600_000;
        let t0 = 1_700_000_000_000;
        cp.checkpoint(CheckpointKind::Start, true, t0).await.unwrap();
        store.append_audit(entry(1)).await.unwrap();
        // Not due: neither enough entries nor enough time.
        assert!(
            cp.checkpoint(CheckpointKind::Scheduled, false, t0 + 1)
                .await
                .unwrap()
                .is_none()
        );
        // Due after the interval, also with nothing new.
        let second = cp
            .checkpoint(CheckpointKind::Scheduled, false, t0 + hour)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((second.cp_seq, second.last_seq), (2, 1));
        assert!(
            cp.checkpoint(CheckpointKind::Scheduled, false, t0 + 2 * hour)
                .await
                .unwrap()
                .is_some()
        );
        // A restart after a long silence: explained, recorded as a note.
        cp.checkpoint(CheckpointKind::Start, true, t0 + 10 * hour)
            .await
            .unwrap();
        let verified = verify_store(&store, &signer).await.unwrap();
        assert_eq!(
            (verified.checkpoints, verified.entries, verified.unsigned_entries),
            (4, 1, 0)
        );
        assert_eq!(verified.notes.len(), 1, "{:?}", verified.notes);
        assert!(verified.notes[0].contains("start"), "{:?}", verified.notes);

        // A silence that nothing explains is a gap.
        cp.checkpoint(CheckpointKind::Scheduled, true, t0 + 20 * hour)
            .await
            .unwrap();
        let t = verify_store(&store, &signer).await.unwrap_err();
        assert_eq!(t.checkpoint, Some(5), "{t}");
        assert!(t.reason.contains("silent gap"), "{t}");

        // Only trusted keys count.
        let other = Signer::generate().unwrap();
        let t = verify_store(&store, &other).await.unwrap_err();
        assert_eq!(t.checkpoint, Some(1), "{t}");
        assert!(t.reason.contains("not trusted"), "{t}");

        let snap = store.audit_snapshot().await.unwrap();
        let mut raw = Raw::open(&db).await;
        raw.drop_triggers().await;
        let verify_cps = |checkpoints: Vec<super::StoredCheckpoint>| {
            let entries = snap.entries.clone();
            let key = signer.public_key();
            async move {
                chain::verify(&VerifyInput {
                    entries: &entries,
                    checkpoints: &checkpoints[..4],
                    trusted_keys: &[key],
                    head: None,
                    pinned: &[],
                })
            }
        };
        let mut bad_sig = snap.checkpoints.clone();
        bad_sig[1].signature[0] ^= 1;
        let t = verify_cps(bad_sig).await.unwrap_err();
        assert_eq!(
            (t.checkpoint, t.reason.as_str()),
            (Some(2), "the signature does not verify")
        );
        let mut bad_column = snap.checkpoints.clone();
        bad_column[2].last_seq = 0;
        let t = verify_cps(bad_column).await.unwrap_err();
        assert!(t.reason.contains("column last_seq"), "{t}");
        let mut removed = snap.checkpoints.clone();
        removed.remove(1);
        removed.push(snap.checkpoints[4].clone());
        let t = verify_cps(removed).await.unwrap_err();
        assert_eq!(t.checkpoint, Some(2), "{t}");
        assert!(t.reason.contains("missing"), "{t}");

        // The same through the database: a deleted checkpoint breaks the chain of checkpoints.
        raw.exec("DELETE FROM audit_checkpoints WHERE cp_seq = 3")
            .await
            .unwrap();
        let t = verify_store(&store, &signer).await.unwrap_err();
        assert_eq!(t.checkpoint, Some(3), "{t}");
    })
    .await;
}

#[tokio::test]
async fn an_export_round_trips_and_catches_a_gap_or_a_cut_after_the_newest_checkpoint() {
    on_each_backend(|_db, store| async move {
        let signer = Arc::new(Signer::generate().unwrap());
        let cp = Checkpointer::new(store.clone(), signer.clone(), policy());
        let now = steward_shared::now_ms();
        store.append_audit(entry(1)).await.unwrap();
        cp.checkpoint(CheckpointKind::Start, true, now).await.unwrap();
        for i in 2..=4 {
            store.append_audit(entry(i)).await.unwrap();
        }
        let snap = store.audit_snapshot().await.unwrap();

        let doc = export::build(&snap, &signer, now + 1_000);
        let text = serde_json::to_string_pretty(&doc).unwrap();
        let parsed = export::parse(text.as_bytes()).unwrap();
        assert_eq!(parsed, doc);
        let verified = export::verify(&parsed, &[], &[]).unwrap();
        assert_eq!(
            (verified.entries, verified.checkpoints, verified.unsigned_entries),
            (4, 1, 3)
        );
        assert!(
            verified.to_string().starts_with("audit log intact: 4 entries"),
            "{verified}"
        );
        export::verify(&parsed, &[signer.public_key()], &[]).unwrap();

        // Entries newer than the checkpoint are covered by the signed head: cutting them is caught.
        let mut cut = doc.clone();
        cut.entries.pop();
        match export::verify(&cut, &[], &[]) {
            Err(export::VerifyError::Tampered(t)) => {
                assert_eq!(t.seq, Some(4), "{t}");
                assert!(t.reason.contains("truncated"), "{t}");
            }
            other => panic!("{other:?}"),
        }
        // Editing a readable field of the file is caught like editing the column.
        let mut edited = doc.clone();
        edited.entries[1].view.actor = "token:evil".into();
        let e = export::verify(&edited, &[], &[]).unwrap_err().to_string();
        assert_eq!(e, "entry 2: column actor differs from the hashed entry");
        // A re-signed file is consistent, but not signed by the pinned key.
        let forger = Signer::generate().unwrap();
        let reforged = export::build(&snap, &forger, now + 1_000);
        export::verify(&reforged, &[], &[]).unwrap_err(); // its checkpoint is still the real key's
        let e = export::verify(&reforged, &[signer.public_key()], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not trusted"), "{e}");

        // No checkpoint for three intervals before the export: a silent gap after the newest one.
        let late = export::build(&snap, &signer, now + 3 * 3_600_000);
        let e = export::verify(&late, &[], &[]).unwrap_err().to_string();
        assert!(e.starts_with("checkpoint #1: silent gap"), "{e}");

        for (bad, why) in [
            (&b"{}"[..], "not a Steward audit export"),
            (&b"nope"[..], "not JSON"),
            (&br#"{"format":"steward-audit-export","version":9}"#[..], "version 9"),
        ] {
            match export::parse(bad) {
                Err(export::VerifyError::Unusable(m)) => assert!(m.contains(why), "{m}"),
                other => panic!("{other:?}"),
            }
        }
    })
    .await;
}

#[tokio::test]
async fn concurrent_appends_from_several_replicas_never_fork_the_chain() {
    on_each_backend(|db, store| async move {
        // Two more pools on the same database: replicas of the control plane.
        let replicas = [store.clone(), db.store().await, db.store().await];
        let signer = Arc::new(Signer::generate().unwrap());
        start_checkpoint(&store, &signer).await;
        let mut tasks = Vec::new();
        for t in 0..6 {
            let store = replicas[t % replicas.len()].clone();
            let signer = signer.clone();
            tasks.push(tokio::spawn(async move {
                let checkpointer = Checkpointer::new(store.clone(), signer, policy());
                for i in 0..20 {
                    if i % 5 == 0 {
                        let mut tx = store.begin().await.unwrap();
                        tx.insert_api_token(&token(&format!("t{t}x{i}"))).await.unwrap();
                        tx.audit(entry(i));
                        tx.commit().await.unwrap();
                    } else {
                        store.append_audit(entry(i)).await.unwrap();
                    }
                    if i % 10 == 0 {
                        checkpointer
                            .checkpoint(CheckpointKind::Scheduled, true, steward_shared::now_ms())
                            .await
                            .unwrap();
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let rows = all_entries(&store).await;
        assert_eq!(
            rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (1..=120).collect::<Vec<u64>>()
        );
        let verified = verify_store(&store, &signer).await.unwrap();
        assert_eq!((verified.entries, verified.checkpoints), (120, 13));
        for r in &replicas[1..] {
            r.close().await;
        }
    })
    .await;
}

#[tokio::test]
async fn the_checkpointer_signs_also_when_nothing_happens_and_at_stop() {
    on_each_backend(|_db, store| async move {
        let signer = Arc::new(Signer::generate().unwrap());
        let policy = CheckpointPolicy {
            every: 1000,
            interval: Duration::from_millis(100),
        };
        let checkpointer = Checkpointer::new(store.clone(), signer.clone(), policy);
        checkpointer
            .checkpoint(CheckpointKind::Start, true, steward_shared::now_ms())
            .await
            .unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(checkpointer.run(shutdown.clone()));
        // No entry is appended: checkpoints keep coming anyway.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while store.audit_snapshot().await.unwrap().checkpoints.len() < 3 {
            assert!(tokio::time::Instant::now() < deadline, "no scheduled checkpoints");
            tokio::time::sleep(policy.poll_period()).await;
        }
        shutdown.cancel();
        task.await.unwrap();
        let snap = store.audit_snapshot().await.unwrap();
        assert_eq!(snap.checkpoints.last().unwrap().kind, "stop");
        assert!(
            snap.checkpoints[1..snap.checkpoints.len() - 1]
                .iter()
                .all(|c| c.kind == "scheduled")
        );
        verify_store(&store, &signer).await.unwrap();
    })
    .await;
}

/// `rows` with the actor of entry `seq` replaced and the chain re-hashed from
/// there on: history rewritten by someone without the signing key.
fn rewrite_history(rows: &[StoredEntry], seq: u64) -> Vec<StoredEntry> {
    let mut prev = chain::hex_hash(&chain::ZERO_HASH);
    let mut out = Vec::new();
    for r in rows {
        let mut r = r.clone();
        if r.seq == seq {
            r.actor = "token:evil".into();
        }
        let forged = reforge(r.clone(), r.seq, &prev);
        prev = forged.hash.clone();
        out.push(forged);
    }
    out
}

/// The first inconsistency an export of the database, signed now by
/// `signer` (what the real control plane does), shows.
async fn verify_export_now(
    store: &Store,
    signer: &Signer,
    pinned: &[PinnedCheckpoint],
) -> Result<Verified, export::VerifyError> {
    let doc = export::build(&store.audit_snapshot().await.unwrap(), signer, steward_shared::now_ms());
    export::verify(&doc, &[signer.public_key()], pinned)
}

fn tampered(found: Result<Verified, export::VerifyError>) -> Tampered {
    match found {
        Err(export::VerifyError::Tampered(t)) => t,
        other => panic!("expected proof of tampering, got {other:?}"),
    }
}

#[tokio::test]
async fn deleted_checkpoints_are_caught_also_when_the_control_plane_signs_again() {
    on_each_backend(|db, store| async move {
        let signer = Arc::new(Signer::generate().unwrap());
        let cp = Checkpointer::new(store.clone(), signer.clone(), policy());
        let now = steward_shared::now_ms();
        for i in 0..3 {
            store.append_audit(entry(i)).await.unwrap();
        }
        cp.checkpoint(CheckpointKind::Start, true, now).await.unwrap();
        store.append_audit(entry(3)).await.unwrap();
        cp.checkpoint(CheckpointKind::Scheduled, true, now).await.unwrap();
        verify_store(&store, &signer).await.unwrap();
        verify_export_now(&store, &signer, &[]).await.unwrap();
        let original = all_entries(&store).await;
        let mut raw = Raw::open(&db).await;
        raw.drop_triggers().await;

        // The start checkpoint deleted: the chain of checkpoints starts at #2.
        raw.exec("DELETE FROM audit_checkpoints WHERE cp_seq = 1")
            .await
            .unwrap();
        let t = verify_store(&store, &signer).await.unwrap_err();
        assert_eq!(t.checkpoint, Some(1), "{t}");
        assert!(t.reason.contains("missing"), "{t}");

        // Every checkpoint deleted and history rewritten: nothing is tied to a
        // signature any more, in the database or in an export signed now.
        raw.exec("DELETE FROM audit_checkpoints").await.unwrap();
        raw.replace_log(&rewrite_history(&original, 2)).await;
        for t in [
            verify_store(&store, &signer).await.unwrap_err(),
            tampered(verify_export_now(&store, &signer, &[]).await),
        ] {
            assert_eq!(t.checkpoint, Some(1), "{t}");
            assert!(t.reason.contains("no signed checkpoint"), "{t}");
            assert!(t.reason.contains("4 entries"), "{t}");
        }

        // The running control plane signs its next checkpoint over the
        // rewritten log: numbered 1 again, but not a `start` checkpoint.
        let written = cp
            .checkpoint(CheckpointKind::Scheduled, false, now + 1)
            .await
            .unwrap()
            .expect("due: there is no checkpoint");
        assert_eq!((written.cp_seq, written.kind.as_str()), (1, "scheduled"));
        for t in [
            verify_store(&store, &signer).await.unwrap_err(),
            tampered(verify_export_now(&store, &signer, &[]).await),
        ] {
            assert_eq!(t.checkpoint, Some(1), "{t}");
            assert!(
                t.reason
                    .contains("is a `scheduled` checkpoint, but the first one is always a `start`"),
                "{t}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn a_pinned_checkpoint_catches_a_log_rewritten_and_signed_anew_at_a_restart() {
    on_each_backend(|db, store| async move {
        let signer = Arc::new(Signer::generate().unwrap());
        let cp = Checkpointer::new(store.clone(), signer.clone(), policy());
        let now = steward_shared::now_ms();
        for i in 0..3 {
            store.append_audit(entry(i)).await.unwrap();
        }
        cp.checkpoint(CheckpointKind::Start, true, now).await.unwrap();
        store.append_audit(entry(3)).await.unwrap();
        cp.checkpoint(CheckpointKind::Scheduled, true, now).await.unwrap();

        // What the auditor keeps from this verification: the newest checkpoint.
        let verified = verify_store(&store, &signer).await.unwrap();
        let snap = store.audit_snapshot().await.unwrap();
        let pin = verified.newest_pin.expect("a checkpoint to pin");
        assert_eq!(pin.to_string(), format!("2:{}", snap.checkpoints[1].hash));
        assert_eq!(pin.to_string().parse::<PinnedCheckpoint>(), Ok(pin));
        let first: PinnedCheckpoint = format!("1:{}", snap.checkpoints[0].hash).parse().unwrap();
        verify_store_pinned(&store, &signer, &[first, pin]).await.unwrap();
        verify_export_now(&store, &signer, &[pin]).await.unwrap();

        // A wrong pin, and a pin beyond the log.
        let wrong = PinnedCheckpoint { hash: [7; 32], ..pin };
        let t = verify_store_pinned(&store, &signer, &[wrong]).await.unwrap_err();
        assert_eq!(t.checkpoint, Some(2), "{t}");
        assert!(t.reason.starts_with("differs from the pinned one"), "{t}");
        let beyond = PinnedCheckpoint { cp_seq: 5, ..pin };
        let t = tampered(verify_export_now(&store, &signer, &[beyond]).await);
        assert_eq!(t.checkpoint, Some(5), "{t}");
        assert!(
            t.reason.contains("missing") && t.reason.contains("2 checkpoints"),
            "{t}"
        );

        // The database owner deletes every checkpoint, rewrites history and
        // restarts the control plane, which signs a `start` checkpoint over
        // it: consistent, except for the pin.
        let original = all_entries(&store).await;
        let mut raw = Raw::open(&db).await;
        raw.drop_triggers().await;
        raw.exec("DELETE FROM audit_checkpoints").await.unwrap();
        raw.replace_log(&rewrite_history(&original, 1)).await;
        cp.checkpoint(CheckpointKind::Start, true, now + 1).await.unwrap();
        verify_store(&store, &signer).await.unwrap();
        let t = tampered(verify_export_now(&store, &signer, &[pin]).await);
        assert_eq!(t.checkpoint, Some(2), "{t}");
        assert!(t.reason.contains("missing"), "{t}");
        // Once it has signed as many checkpoints again, the pinned one differs.
        cp.checkpoint(CheckpointKind::Scheduled, true, now + 2).await.unwrap();
        for t in [
            verify_store_pinned(&store, &signer, &[pin]).await.unwrap_err(),
            tampered(verify_export_now(&store, &signer, &[pin]).await),
        ] {
            assert_eq!(t.checkpoint, Some(2), "{t}");
            assert!(t.reason.starts_with("differs from the pinned one"), "{t}");
        }
    })
    .await;
}

#[tokio::test]
async fn an_export_whose_entries_past_the_newest_checkpoint_are_older_than_the_interval_fails() {
    on_each_backend(|db, store| async move {
        let signer = Arc::new(Signer::generate().unwrap());
        let cp = Checkpointer::new(store.clone(), signer.clone(), policy());
        let hour = 3_600_000;
        let now = steward_shared::now_ms();
        store.append_audit(entry(1)).await.unwrap();
        // A replica whose clock is ten hours ahead signs the start checkpoint
        // (later checkpoints never go back in time): the newest checkpoint's
        // time no longer shows a silence before the export.
        cp.checkpoint(CheckpointKind::Start, true, now + 10 * hour)
            .await
            .unwrap();
        for i in 2..=3 {
            store.append_audit(entry(i)).await.unwrap();
        }
        let snap = store.audit_snapshot().await.unwrap();
        let verify_at = |at: i64| export::verify(&export::build(&snap, &signer, at), &[signer.public_key()], &[]);
        let verified = verify_at(now + hour).unwrap();
        assert_eq!((verified.entries, verified.unsigned_entries), (3, 2));
        // Entries 2 and 3 are two hours old at the export, and no checkpoint
        // covers them: one would have been due.
        let t = tampered(verify_at(now + 2 * hour));
        assert_eq!(t.seq, Some(2), "{t}");
        assert!(t.reason.starts_with("covered by no checkpoint"), "{t}");

        // The same for an entry the database owner appends, backdated by two
        // days, after the newest checkpoint: the export signed now covers it,
        // but it is older than any uncovered entry can be.
        cp.checkpoint(CheckpointKind::Scheduled, true, now).await.unwrap();
        let rows = all_entries(&store).await;
        let last = rows.last().unwrap().clone();
        let backdated = reforge(
            StoredEntry {
                actor: "token:evil".into(),
                time_ms: now - 48 * hour,
                ..last.clone()
            },
            last.seq + 1,
            &last.hash,
        );
        Raw::open(&db).await.insert(&backdated).await;
        let t = tampered(verify_export_now(&store, &signer, &[]).await);
        assert_eq!(t.seq, Some(4), "{t}");
        assert!(
            t.reason
                .starts_with("covered by no checkpoint, although it is 2d older"),
            "{t}"
        );
    })
    .await;
}

#[test]
fn checkpoints_are_due_after_n_entries_or_m_minutes() {
    use crate::store::audit::ChainState;
    let signer = Signer::generate().unwrap();
    let policy = CheckpointPolicy {
        every: 10,
        interval: Duration::from_secs(60),
    };
    let empty = ChainState {
        head_seq: 0,
        head_hash: chain::ZERO_HASH,
        last_checkpoint: None,
    };
    assert!(policy.due(0, &empty), "the first one is always due");
    let first = super::checkpointer::next_checkpoint(&signer, &policy, CheckpointKind::Start, 1_000, &empty);
    let state = |head_seq: u64| ChainState {
        head_seq,
        head_hash: [1; 32],
        last_checkpoint: Some(first.clone()),
    };
    assert!(!policy.due(1_000 + 59_999, &state(9)));
    assert!(policy.due(1_000 + 59_999, &state(10)));
    assert!(policy.due(1_000 + 60_000, &state(0)));
    let next = super::checkpointer::next_checkpoint(&signer, &policy, CheckpointKind::Scheduled, 500, &state(3));
    assert_eq!((next.cp_seq, next.last_seq), (2, 3));
    assert_eq!(next.created_ms, 1_000, "time never goes backwards");
    assert_eq!(next.prev_hash, first.hash);
    assert_eq!(policy.poll_period(), Duration::from_secs(6));
}
