//! Online backup of the store (`steward-controlplane backup --to FILE`).
//!
//! The backend writes a consistent copy into a hidden, 0600, initially empty
//! file beside the target ([`super::sqlite`]: `VACUUM INTO`); it is synced
//! and then hard-linked to the target name, so the target appears complete or
//! not at all, and an existing file is never overwritten (the link fails).
//! PostgreSQL is backed up with `pg_dump`; its backend says so.
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::postgres::PgStore;
use super::sqlite::SqliteStore;
use super::{Backend, Store, StoreError};

impl Store {
    /// Opens an existing database for [`Store::backup_to`] without creating,
    /// migrating or changing anything. On PostgreSQL it refuses at once,
    /// pointing to `pg_dump`.
    pub async fn connect_for_backup(url: &str) -> Result<Store, StoreError> {
        let backend = match url.split_once(':').map(|(scheme, _)| scheme) {
            Some("sqlite") => Backend::Sqlite(SqliteStore::connect_existing(url).await?),
            Some("postgres" | "postgresql") => Backend::Postgres(PgStore::connect_existing(url).await?),
            _ => return Store::connect(url).await, // names the unsupported scheme
        };
        Ok(Store {
            backend,
            sli: Default::default(),
        })
    }

    /// Writes a consistent copy of the live database to `path`, which must not
    /// exist, while the control plane keeps running; returns its size in bytes.
    /// The file is created 0600 (it holds token hashes and fleet data).
    pub async fn backup_to(&self, path: &Path) -> Result<u64, StoreError> {
        if path.symlink_metadata().is_ok() {
            return Err(exists(path));
        }
        let name = path
            .file_name()
            .ok_or_else(|| StoreError::Invalid(format!("backup path {} names no file", path.display())))?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let partial = dir.join(format!(".{}.partial-{}", name.to_string_lossy(), std::process::id()));
        // Empty and 0600 from the start: the copy is never readable by others.
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)
            .map_err(|e| io_error("cannot create", &partial, e))?;
        let written = match &self.backend {
            Backend::Sqlite(b) => b.backup_into(&partial).await,
            Backend::Postgres(b) => b.backup_into(&partial).await,
        };
        let published = written.and_then(|()| publish(&partial, path, &dir));
        let _ = std::fs::remove_file(&partial);
        published
    }
}

/// Syncs `partial`, links it to `path` (failing if `path` exists) and syncs
/// the directory entry.
fn publish(partial: &Path, path: &Path, dir: &Path) -> Result<u64, StoreError> {
    let file = File::open(partial).map_err(|e| io_error("cannot open", partial, e))?;
    file.sync_all().map_err(|e| io_error("cannot sync", partial, e))?;
    let size = file.metadata().map_err(|e| io_error("cannot stat", partial, e))?.len();
    match std::fs::hard_link(partial, path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Err(exists(path)),
        Err(e) => return Err(io_error("cannot create", path, e)),
    }
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(size)
}

fn exists(path: &Path) -> StoreError {
    StoreError::Invalid(format!(
        "{} already exists: refusing to overwrite it (choose a new file name)",
        path.display()
    ))
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Invalid(format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;

    use steward_shared::status::{CheckResult, CheckStatus};

    use super::*;
    use crate::model::IngestBatch;
    use crate::store::testdb::{TestBackend, TestDatabase};

    fn batch(host: &str, seqs: std::ops::RangeInclusive<u64>) -> IngestBatch {
        IngestBatch {
            host_id: host.to_string(),
            results: seqs
                .map(|s| {
                    let result = CheckResult {
                        name: format!("check-{}", s % 3),
                        kind: "memory".into(),
                        status: CheckStatus::Ok,
                        values: vec![],
                        message: String::new(),
                        observed_at_ms: 1_000 + s as i64,
                        duration_us: 1,
                    };
                    (s, result)
                })
                .collect(),
            spool_dropped_total: 0,
        }
    }

    #[tokio::test]
    async fn a_sqlite_backup_is_a_consistent_copy_that_opens_as_a_store() {
        let db = TestDatabase::create(TestBackend::Sqlite).await;
        let store = db.store().await;
        store.ingest(&[batch("web-01", 1..=50)], 5_000).await.unwrap();
        store
            .set_host_labels("web-01", &BTreeMap::from([("env".to_string(), "prod".to_string())]))
            .await
            .unwrap();

        let out = tempfile::tempdir().unwrap();
        let target = out.path().join("steward-backup.db");
        let size = store.backup_to(&target).await.unwrap();
        assert!(size > 0);
        assert_eq!(std::fs::metadata(&target).unwrap().len(), size);
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "a backup holds token hashes: owner-only");
        let leftovers: Vec<_> = std::fs::read_dir(out.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name() != "steward-backup.db")
            .map(|e| e.file_name())
            .collect();
        assert!(leftovers.is_empty(), "no partial files left: {leftovers:?}");

        // Writes after the backup are not in it; what was committed before is.
        store.ingest(&[batch("web-02", 1..=5)], 6_000).await.unwrap();
        let copy = Store::connect_for_backup(&format!("sqlite://{}", target.display()))
            .await
            .unwrap();
        assert_eq!(copy.result_seqs("web-01").await.unwrap(), (1..=50).collect::<Vec<_>>());
        assert!(copy.result_seqs("web-02").await.unwrap().is_empty());
        let Ok(super::super::HostLookup::Found(host)) = copy.find_host("web-01").await else {
            panic!("web-01 is in the backup");
        };
        assert_eq!(host.labels.get("env").map(String::as_str), Some("prod"));
        copy.close().await;
        store.close().await;
    }

    #[tokio::test]
    async fn a_backup_never_overwrites_an_existing_file() {
        let db = TestDatabase::create(TestBackend::Sqlite).await;
        let store = db.store().await;
        let out = tempfile::tempdir().unwrap();
        let target = out.path().join("taken.db");
        std::fs::write(&target, "precious").unwrap();
        let err = store.backup_to(&target).await.unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        assert_eq!(
            std::fs::read_dir(out.path()).unwrap().count(),
            1,
            "no partial file left"
        );

        let err = store
            .backup_to(&out.path().join("missing-dir/x.db"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot create"), "{err}");
        store.close().await;
    }

    #[tokio::test]
    async fn backing_up_a_missing_or_empty_sqlite_database_is_refused_without_creating_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nothing.db");
        let err = Store::connect_for_backup(&format!("sqlite://{}", missing.display()))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("no SQLite database at"), "{err}");
        assert!(!missing.exists(), "a backup never creates the database");

        let db = TestDatabase::create(TestBackend::Sqlite).await;
        let fresh = Store::connect(db.url()).await.unwrap(); // created, not migrated
        let err = fresh.backup_to(&dir.path().join("b.db")).await.unwrap_err().to_string();
        assert!(err.contains("no Steward schema"), "{err}");
        assert!(!dir.path().join("b.db").exists());
        fresh.close().await;
    }

    #[tokio::test]
    async fn postgresql_backups_point_to_pg_dump() {
        // Refused before connecting: no server is needed for this answer.
        let err = Store::connect_for_backup("postgres://steward@127.0.0.1:1/steward")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("pg_dump"), "{err}");
        assert_eq!(err.lines().count(), 1);
        if TestBackend::selected().contains(&TestBackend::Postgres) {
            let db = TestDatabase::create(TestBackend::Postgres).await;
            let store = db.store().await;
            let dir = tempfile::tempdir().unwrap();
            let err = store
                .backup_to(&dir.path().join("pg.db"))
                .await
                .unwrap_err()
                .to_string();
            assert!(err.contains("pg_dump"), "{err}");
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing written");
            store.close().await;
        }
    }
}
