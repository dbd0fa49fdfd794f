//! The SQLite backend: one database file in WAL mode. Its twin is
//! [`super::postgres`]; every function here has a same-named one there.
//!
//! Durability: `synchronous=FULL`. The gateway acknowledges a report only
//! after [`SqliteStore::ingest`] commits, and the agent then deletes it from
//! its spool, so a commit must survive a power loss, not just a process crash
//! (which is all `NORMAL` guarantees in WAL mode). Batching keeps the cost at
//! one WAL fsync per ingest transaction.
//!
//! Concurrency: SQLite has one writer. Writes go through a one-connection pool
//! (so this process never contends with itself), and every multi-statement
//! write transaction starts with `BEGIN IMMEDIATE`, so another process (for
//! example `steward-controlplane admin create-token` beside a running server)
//! waits on `busy_timeout` instead of failing with `SQLITE_BUSY` on a lock
//! upgrade. Reads use a separate pool and run concurrently with the writer.
use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, SqlSafeStr, Sqlite};

use super::{
    CHECK_COLUMNS, CheckScan, HOST_COLUMNS, HelloRow, IngestRows, RowExt, StoreError, TOKEN_COLUMNS, check_from_row,
    fleet_stats_from, host_from_row, token_from_row,
};
use crate::model::{ApiToken, FleetStats, Host, LatestCheck};

/// Migrations embedded at build time: (version, description, SQL). Versions,
/// descriptions and checksums are what `sqlx::migrate!` would derive from the
/// file names, so `sqlx-cli` sees the same history.
pub(super) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../migrations/sqlite/0001_init.sql")),
    (2, "audit", include_str!("../../migrations/sqlite/0002_audit.sql")),
    (3, "identity", include_str!("../../migrations/sqlite/0003_identity.sql")),
    (4, "rbac", include_str!("../../migrations/sqlite/0004_rbac.sql")),
    (5, "jobs", include_str!("../../migrations/sqlite/0005_jobs.sql")),
    (6, "slo", include_str!("../../migrations/sqlite/0006_slo.sql")),
    (7, "rollouts", include_str!("../../migrations/sqlite/0007_rollouts.sql")),
    (8, "kpi", include_str!("../../migrations/sqlite/0008_kpi.sql")),
    (
        9,
        "api_stats",
        include_str!("../../migrations/sqlite/0009_api_stats.sql"),
    ),
    (
        10,
        "slo_hours",
        include_str!("../../migrations/sqlite/0010_slo_hours.sql"),
    ),
    (
        11,
        "kpi_daily",
        include_str!("../../migrations/sqlite/0011_kpi_daily.sql"),
    ),
    (
        12,
        "audit_time_brin",
        include_str!("../../migrations/sqlite/0012_audit_time_brin.sql"),
    ),
    (
        13,
        "identity_binding",
        include_str!("../../migrations/sqlite/0013_identity_binding.sql"),
    ),
    (
        14,
        "token_parent",
        include_str!("../../migrations/sqlite/0014_token_parent.sql"),
    ),
];

/// How long a statement waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Reader connections (WAL readers do not block the writer or each other).
const READ_CONNECTIONS: u32 = 4;
/// Rows per multi-row INSERT (at most 10 binds a row: far below SQLite's 32766).
const CHUNK_ROWS: usize = 1_000;

#[derive(Clone)]
pub(super) struct SqliteStore {
    pub(super) write: SqlitePool,
    pub(super) read: SqlitePool,
}

impl SqliteStore {
    pub(super) async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::open(url, true).await
    }

    /// Opens a database file that must already exist (for `backup`: a wrong
    /// path is an error, not a new empty database owned by whoever ran it).
    pub(super) async fn connect_existing(url: &str) -> Result<Self, StoreError> {
        Self::open(url, false).await
    }

    async fn open(url: &str, create: bool) -> Result<Self, StoreError> {
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Err(StoreError::Invalid(
                "in-memory SQLite is not supported: use sqlite://PATH to a file".into(),
            ));
        }
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let path = options.get_filename().to_path_buf();
        if path.as_os_str().is_empty() {
            return Err(StoreError::Invalid(
                "SQLite URL has no file path: use sqlite://PATH".into(),
            ));
        }
        if !create && !path.is_file() {
            return Err(StoreError::Invalid(format!(
                "no SQLite database at {} (check database_url and data_dir)",
                path.display()
            )));
        }
        if let Some(dir) = path.parent().filter(|d| create && !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Invalid(format!(
                    "cannot create directory {} for the SQLite database: {e}",
                    dir.display()
                ))
            })?;
        }
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await?;
        let read = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        Ok(Self { write, read })
    }

    pub(super) async fn migrate(&self) -> Result<(), StoreError> {
        let migrations = MIGRATIONS
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect();
        Migrator::with_migrations(migrations).run(&self.write).await?;
        Ok(())
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(())
    }

    pub(super) async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }

    /// Writes a consistent copy of the live database to `path` (which must not
    /// exist) with `VACUUM INTO`: one read transaction, so it sees one
    /// committed state while the gateway keeps writing through the WAL, and
    /// the copy is compacted and self-contained (no `-wal` file to carry).
    pub(super) async fn backup_into(&self, path: &Path) -> Result<(), StoreError> {
        let migrated: i64 =
            sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'")
                .fetch_one(&self.read)
                .await?;
        if migrated == 0 {
            return Err(StoreError::Invalid(
                "the database has no Steward schema yet: nothing to back up".into(),
            ));
        }
        let target = path
            .to_str()
            .ok_or_else(|| StoreError::Invalid(format!("backup path {} is not UTF-8", path.display())))?;
        sqlx::query("VACUUM INTO ?1").bind(target).execute(&self.read).await?;
        Ok(())
    }

    // ------------------------------------------------------------ gateway

    pub(super) async fn agent_connected(&self, h: &HelloRow<'_>, now_ms: i64) -> Result<i64, StoreError> {
        let last_seq: i64 = sqlx::query_scalar(
            "INSERT INTO hosts (id, hostname, facts, agent_version, first_seen_ms, last_seen_ms, connected, \
                                last_connected_ms, spool_dropped_total)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5, 1, ?5, ?6)
             ON CONFLICT (id) DO UPDATE SET
                hostname = excluded.hostname,
                facts = excluded.facts,
                agent_version = excluded.agent_version,
                last_seen_ms = max(hosts.last_seen_ms, excluded.last_seen_ms),
                connected = 1,
                last_connected_ms = excluded.last_connected_ms,
                spool_dropped_total = excluded.spool_dropped_total
             RETURNING last_seq",
        )
        .bind(h.host_id)
        .bind(h.hostname)
        .bind(h.facts)
        .bind(h.agent_version)
        .bind(now_ms)
        .bind(h.spool_dropped_total)
        .fetch_one(&self.write)
        .await?;
        Ok(last_seq)
    }

    pub(super) async fn agent_heartbeat(&self, host_id: &str, dropped: i64, now_ms: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO hosts (id, first_seen_ms, last_seen_ms, spool_dropped_total) VALUES (?1, ?2, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET
                last_seen_ms = max(hosts.last_seen_ms, excluded.last_seen_ms),
                spool_dropped_total = excluded.spool_dropped_total",
        )
        .bind(host_id)
        .bind(now_ms)
        .bind(dropped)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    pub(super) async fn agent_disconnected(&self, host_id: &str, now_ms: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE hosts SET connected = 0, last_disconnected_ms = ?2,
                              last_seen_ms = max(last_seen_ms, ?2)
             WHERE id = ?1",
        )
        .bind(host_id)
        .bind(now_ms)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    pub(super) async fn ingest(
        &self,
        rows: &IngestRows<'_>,
        jobs: &super::jobs::JobIngest<'_>,
        now_ms: i64,
        sli: &crate::slo::sli::SliIndex,
    ) -> Result<crate::jobs::Applied, StoreError> {
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        let count = sli.counts_checks();
        let mut inserted = std::collections::HashSet::new();
        for chunk in rows.hosts.chunks(CHUNK_ROWS) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO hosts (id, first_seen_ms, last_seen_ms, last_seq, spool_dropped_total) ",
            );
            q.push_values(chunk, |mut b, h| {
                b.push_bind(h.id)
                    .push_bind(now_ms)
                    .push_bind(now_ms)
                    .push_bind(h.max_seq)
                    .push_bind(h.spool_dropped_total);
            });
            q.push(
                " ON CONFLICT (id) DO UPDATE SET
                    last_seen_ms = max(hosts.last_seen_ms, excluded.last_seen_ms),
                    last_seq = max(hosts.last_seq, excluded.last_seq),
                    spool_dropped_total = excluded.spool_dropped_total",
            );
            q.build().execute(&mut *tx).await?;
        }
        for chunk in rows.results.chunks(CHUNK_ROWS) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO check_results (host_id, seq, name, kind, status, values_json, message, observed_ms, \
                                            duration_us, ingested_ms) ",
            );
            q.push_values(chunk, |mut b, r| {
                b.push_bind(r.host_id)
                    .push_bind(r.seq)
                    .push_bind(r.name.as_ref())
                    .push_bind(r.kind.as_ref())
                    .push_bind(r.status)
                    .push_bind(r.values_json.as_str())
                    .push_bind(r.message.as_ref())
                    .push_bind(r.observed_ms)
                    .push_bind(r.duration_us)
                    .push_bind(now_ms);
            });
            // Only what this transaction inserted counts towards SLOs and the KPI counts (resends do not).
            q.push(" ON CONFLICT (host_id, seq) DO NOTHING RETURNING host_id, seq");
            for row in q.build().fetch_all(&mut *tx).await? {
                inserted.insert((row.try_get::<String, _>(0)?, row.try_get::<i64, _>(1)?));
            }
        }
        for chunk in rows.latest.chunks(CHUNK_ROWS) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO check_latest (host_id, name, kind, status, values_json, message, observed_ms, \
                                           duration_us, seq) ",
            );
            q.push_values(chunk, |mut b, &i| {
                let r = &rows.results[i];
                b.push_bind(r.host_id)
                    .push_bind(r.name.as_ref())
                    .push_bind(r.kind.as_ref())
                    .push_bind(r.status)
                    .push_bind(r.values_json.as_str())
                    .push_bind(r.message.as_ref())
                    .push_bind(r.observed_ms)
                    .push_bind(r.duration_us)
                    .push_bind(r.seq);
            });
            q.push(
                " ON CONFLICT (host_id, name) DO UPDATE SET
                    kind = excluded.kind, status = excluded.status, values_json = excluded.values_json,
                    message = excluded.message, observed_ms = excluded.observed_ms,
                    duration_us = excluded.duration_us, seq = excluded.seq
                  WHERE excluded.seq > check_latest.seq",
            );
            q.build().execute(&mut *tx).await?;
        }
        if count && !inserted.is_empty() {
            super::slo::count_ingest_sqlite(&mut tx, rows, &inserted, sli, now_ms).await?;
        }
        super::kpi_counts::count_ingest(super::sql::Conn::Lite(&mut tx), rows, &inserted).await?;
        // Job reports of the same batches, and their audit entries (jobs issue).
        let applied = super::jobs::apply_in_ingest(super::sql::Conn::Lite(&mut tx), jobs, now_ms, sli).await?;
        tx.commit().await?;
        Ok(applied)
    }

    pub(super) async fn prune_results_chunk(&self, older_than_ms: i64, chunk: i64) -> Result<u64, StoreError> {
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        let deleted: Vec<(String, String, i64)> = sqlx::query_as(
            "DELETE FROM check_results WHERE rowid IN
                (SELECT rowid FROM check_results WHERE ingested_ms < ?1 LIMIT ?2)
             RETURNING host_id, status, observed_ms",
        )
        .bind(older_than_ms)
        .bind(chunk)
        .fetch_all(&mut *tx)
        .await?;
        // The KPI counts lose the same rows in the same transaction.
        super::kpi_counts::count_pruned(super::sql::Conn::Lite(&mut tx), &deleted).await?;
        tx.commit().await?;
        Ok(deleted.len() as u64)
    }

    pub(super) async fn result_seqs(&self, host_id: &str) -> Result<Vec<i64>, StoreError> {
        let seqs = sqlx::query_scalar("SELECT seq FROM check_results WHERE host_id = ?1 ORDER BY seq")
            .bind(host_id)
            .fetch_all(&self.read)
            .await?;
        Ok(seqs)
    }

    // ------------------------------------------------------------ hosts

    pub(super) async fn scan_hosts(&self, after: &str, limit: i64) -> Result<Vec<Host>, StoreError> {
        let sql = format!("SELECT {HOST_COLUMNS} FROM hosts WHERE id > ?1 ORDER BY id LIMIT ?2");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(after)
            .bind(limit)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(host_from_row).collect()
    }

    pub(super) async fn host_by_id(&self, id: &str) -> Result<Option<Host>, StoreError> {
        let sql = format!("SELECT {HOST_COLUMNS} FROM hosts WHERE id = ?1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(host_from_row).transpose()
    }

    pub(super) async fn hosts_by_hostname(&self, hostname: &str, limit: i64) -> Result<Vec<Host>, StoreError> {
        let sql = format!("SELECT {HOST_COLUMNS} FROM hosts WHERE hostname = ?1 ORDER BY id LIMIT ?2");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(hostname)
            .bind(limit)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(host_from_row).collect()
    }

    pub(super) async fn set_host_labels(&self, host_id: &str, labels_json: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE hosts SET labels = ?2 WHERE id = ?1")
            .bind(host_id)
            .bind(labels_json)
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub(super) async fn status_counts(&self, host_ids: &[&str]) -> Result<Vec<(String, String, i64)>, StoreError> {
        let mut q =
            QueryBuilder::<Sqlite>::new("SELECT host_id, status, COUNT(*) AS n FROM check_latest WHERE host_id IN (");
        let mut ids = q.separated(", ");
        for id in host_ids {
            ids.push_bind(*id);
        }
        q.push(") GROUP BY host_id, status");
        let rows = q.build().fetch_all(&self.read).await?;
        rows.iter()
            .map(|r| Ok((r.text("host_id")?, r.text("status")?, r.int("n")?)))
            .collect()
    }

    pub(super) async fn fleet_stats(&self, online_since_ms: i64) -> Result<FleetStats, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS hosts,
                    COALESCE(SUM(CASE WHEN last_seen_ms >= ?1 THEN 1 ELSE 0 END), 0) AS online,
                    COALESCE(SUM(spool_dropped_total), 0) AS dropped
             FROM hosts",
        )
        .bind(online_since_ms)
        .fetch_one(&self.read)
        .await?;
        Ok(fleet_stats_from(
            row.int("hosts")?,
            row.int("online")?,
            row.int("dropped")?,
        ))
    }

    // ------------------------------------------------------------ checks

    pub(super) async fn scan_checks(
        &self,
        s: &CheckScan<'_>,
    ) -> Result<Vec<(LatestCheck, std::collections::BTreeMap<String, String>)>, StoreError> {
        let mut q = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {CHECK_COLUMNS} FROM check_latest c JOIN hosts h ON h.id = c.host_id WHERE (c.host_id, c.name) > ("
        ));
        q.push_bind(s.after_host).push(", ").push_bind(s.after_name).push(")");
        if let Some(host_id) = s.host_id {
            q.push(" AND c.host_id = ").push_bind(host_id);
        }
        if let Some(status) = s.status {
            q.push(" AND c.status = ").push_bind(status);
        }
        q.push(" ORDER BY c.host_id, c.name LIMIT ").push_bind(s.limit);
        let rows = q.build().fetch_all(&self.read).await?;
        rows.iter().map(check_from_row).collect()
    }

    // ------------------------------------------------------------ API tokens

    /// In the caller's transaction (a [`super::audit::StoreTx`]), beside its audit entry.
    pub(super) async fn insert_api_token(conn: &mut SqliteConnection, t: &ApiToken) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_tokens (id, name, role, secret_hash, created_ms, expires_ms, revoked_ms, last_used_ms, scope, parent_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .bind(&t.id)
        .bind(&t.name)
        .bind(&t.role)
        .bind(&t.secret_hash)
        .bind(t.created_ms)
        .bind(t.expires_ms)
        .bind(t.revoked_ms)
        .bind(t.last_used_ms)
        .bind(&t.scope)
        .bind(&t.parent_id)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    pub(super) async fn find_api_token(&self, id: &str) -> Result<Option<ApiToken>, StoreError> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = ?1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    /// In the caller's transaction (a [`super::audit::StoreTx`]), beside its audit entry.
    pub(super) async fn revoke_api_token(
        conn: &mut SqliteConnection,
        id: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE api_tokens SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL")
            .bind(id)
            .bind(now_ms)
            .execute(&mut *conn)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        // And every token it created, transitively.
        sqlx::query(
            "WITH RECURSIVE minted(id) AS (
                 SELECT id FROM api_tokens WHERE parent_id = ?1
                 UNION SELECT t.id FROM api_tokens t JOIN minted m ON t.parent_id = m.id
             )
             UPDATE api_tokens SET revoked_ms = ?2 WHERE id IN (SELECT id FROM minted) AND revoked_ms IS NULL",
        )
        .bind(id)
        .bind(now_ms)
        .execute(&mut *conn)
        .await?;
        Ok(true)
    }

    pub(super) async fn list_api_tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_ms, id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&self.read).await?;
        rows.iter().map(token_from_row).collect()
    }

    pub(super) async fn touch_api_token(&self, id: &str, now_ms: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE api_tokens SET last_used_ms = ?2 WHERE id = ?1 AND (last_used_ms IS NULL OR last_used_ms < ?2)",
        )
        .bind(id)
        .bind(now_ms)
        .execute(&self.write)
        .await?;
        Ok(())
    }
}

impl RowExt for SqliteRow {
    fn text(&self, col: &str) -> Result<String, sqlx::Error> {
        self.try_get(col)
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>, sqlx::Error> {
        self.try_get(col)
    }
    fn int(&self, col: &str) -> Result<i64, sqlx::Error> {
        self.try_get(col)
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>, sqlx::Error> {
        self.try_get(col)
    }
    fn flag(&self, col: &str) -> Result<bool, sqlx::Error> {
        self.try_get(col)
    }
}
