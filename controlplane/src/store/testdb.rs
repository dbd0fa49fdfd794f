//! Fresh, throwaway databases for tests (unit tests here, end-to-end tests in
//! the `tests/` crate): a new SQLite file, or a new PostgreSQL database made
//! with `CREATE DATABASE steward_test_<random>` and dropped afterwards.
//!
//! Backend selection, from the environment:
//! - `STEWARD_TEST_BACKEND` = `sqlite` (default) or `postgres`;
//! - `STEWARD_TEST_PG_URL` = the server to create databases on (default
//!   `postgres://postgres@127.0.0.1:5432/postgres`).
//!
//! When PostgreSQL is selected and unreachable, the helpers panic: the test
//! fails, it is never skipped.
use std::path::PathBuf;

use rand::Rng;
use sqlx::Connection;
use sqlx::postgres::PgConnection;

use super::Store;
use steward_daemon::redact::url as redact;

/// Server the PostgreSQL test databases are created on, when
/// `STEWARD_TEST_PG_URL` is not set.
pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A storage backend to test against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestBackend {
    Sqlite,
    Postgres,
}

impl TestBackend {
    /// The backend named by `STEWARD_TEST_BACKEND` (default `sqlite`).
    ///
    /// # Panics
    /// On any other value than `sqlite` or `postgres`.
    pub fn from_env() -> TestBackend {
        match std::env::var("STEWARD_TEST_BACKEND").ok().as_deref().map(str::trim) {
            None | Some("") | Some("sqlite") => TestBackend::Sqlite,
            Some("postgres") | Some("postgresql") => TestBackend::Postgres,
            Some(other) => panic!("STEWARD_TEST_BACKEND={other:?}: expected sqlite or postgres"),
        }
    }

    /// Backends a storage-level test runs on: always SQLite; PostgreSQL too when
    /// `STEWARD_TEST_BACKEND=postgres` or `STEWARD_TEST_PG_URL` is set. Once
    /// selected, PostgreSQL is never skipped (also not under `CI=true`): an
    /// unreachable server fails the test.
    pub fn selected() -> Vec<TestBackend> {
        let pg_url_set = std::env::var("STEWARD_TEST_PG_URL").is_ok_and(|v| !v.trim().is_empty());
        let mut out = vec![TestBackend::Sqlite];
        if Self::from_env() == TestBackend::Postgres || pg_url_set {
            out.push(TestBackend::Postgres);
        }
        out
    }

    pub fn name(self) -> &'static str {
        match self {
            TestBackend::Sqlite => "sqlite",
            TestBackend::Postgres => "postgres",
        }
    }
}

/// The PostgreSQL server URL for test databases.
pub fn pg_admin_url() -> String {
    std::env::var("STEWARD_TEST_PG_URL")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_PG_URL.to_string())
}

/// A fresh database, removed (file deleted / database dropped) on drop.
#[derive(Debug)]
pub struct TestDatabase {
    backend: TestBackend,
    url: String,
    cleanup: Option<Cleanup>,
}

#[derive(Debug)]
enum Cleanup {
    Dir(PathBuf),
    Database { admin_url: String, name: String },
}

impl TestDatabase {
    /// Creates a fresh, empty database (not migrated).
    ///
    /// # Panics
    /// When PostgreSQL is selected but cannot be reached or refuses `CREATE DATABASE`.
    pub async fn create(backend: TestBackend) -> TestDatabase {
        let suffix = random_suffix();
        match backend {
            TestBackend::Sqlite => {
                let dir = std::env::temp_dir().join(format!("steward-test-{suffix}"));
                std::fs::create_dir_all(&dir)
                    .unwrap_or_else(|e| panic!("cannot create test directory {}: {e}", dir.display()));
                let url = format!("sqlite://{}", dir.join("steward.db").display());
                TestDatabase {
                    backend,
                    url,
                    cleanup: Some(Cleanup::Dir(dir)),
                }
            }
            TestBackend::Postgres => {
                let admin_url = pg_admin_url();
                let name = format!("steward_test_{suffix}");
                let mut admin = PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
                    panic!(
                        "PostgreSQL tests selected but the server at {} is unreachable: {e} \
                             (set STEWARD_TEST_PG_URL, or STEWARD_TEST_BACKEND=sqlite)",
                        redact(&admin_url)
                    )
                });
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut admin)
                    .await
                    .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on {} failed: {e}", redact(&admin_url)));
                let _ = admin.close().await;
                let url = database_url(&admin_url, &name);
                TestDatabase {
                    backend,
                    url,
                    cleanup: Some(Cleanup::Database { admin_url, name }),
                }
            }
        }
    }

    pub fn backend(&self) -> TestBackend {
        self.backend
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Connects to the database and runs the migrations.
    ///
    /// # Panics
    /// When connecting or migrating fails.
    pub async fn store(&self) -> Store {
        let store = Store::connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("connect to test database {}: {e}", redact(&self.url)));
        store
            .migrate()
            .await
            .unwrap_or_else(|e| panic!("migrate test database: {e}"));
        store
    }

    /// Gives up cleaning up and returns the URL (the database outlives the test).
    pub fn into_url(mut self) -> String {
        self.cleanup = None;
        std::mem::take(&mut self.url)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        match self.cleanup.take() {
            None => {}
            Some(Cleanup::Dir(dir)) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Some(Cleanup::Database { admin_url, name }) => {
                // Drop may run inside a runtime: do the async work on a thread
                // with its own. FORCE ends sessions still open on the database.
                let _ = std::thread::spawn(move || {
                    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                        return;
                    };
                    rt.block_on(async {
                        if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                            let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                            let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await;
                            let _ = admin.close().await;
                        }
                    });
                })
                .join();
            }
        }
    }
}

/// A fresh database URL for `backend` that outlives the caller (for tests that
/// hand the URL to a separate process). SQLite files live under the system temp
/// directory; PostgreSQL databases are named `steward_test_*`. Prefer
/// [`TestDatabase`], which cleans up.
///
/// # Panics
/// As [`TestDatabase::create`].
pub async fn fresh_database_url(backend: TestBackend) -> String {
    TestDatabase::create(backend).await.into_url()
}

pub fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..12)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// `admin_url` with its database (path) replaced by `name`.
pub fn database_url(admin_url: &str, name: &str) -> String {
    match reqwest::Url::parse(admin_url) {
        Ok(mut url) => {
            url.set_path(&format!("/{name}"));
            url.to_string()
        }
        Err(_) => panic!("STEWARD_TEST_PG_URL is not a URL: {}", redact(admin_url)),
    }
}
