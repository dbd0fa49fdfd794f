//! The PostgreSQL backend, for large fleets and several control-plane
//! replicas sharing one database. Its twin is [`super::sqlite`]; every
//! function here has a same-named one there.
//!
//! Ingest binds whole columns as arrays and inserts with `UNNEST`: one
//! statement per table per transaction whatever the batch size, no
//! bind-parameter limit to chunk around, and one cached prepared statement.
//! Rows are sorted by key before they are sent, so concurrent ingest
//! transactions (several gateway tasks or replicas) lock rows in the same
//! order and cannot deadlock.
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Postgres, QueryBuilder, Row, SqlSafeStr};

use super::{
    CHECK_COLUMNS, CheckScan, HOST_COLUMNS, HelloRow, IngestRows, RowExt, StoreError, TOKEN_COLUMNS, check_from_row,
    fleet_stats_from, host_from_row, token_from_row,
};
use crate::model::{ApiToken, FleetStats, Host, LatestCheck};

/// Migrations embedded at build time: (version, description, SQL); see the
/// SQLite twin.
pub(super) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../migrations/postgres/0001_init.sql")),
    (2, "audit", include_str!("../../migrations/postgres/0002_audit.sql")),
    (
        3,
        "identity",
        include_str!("../../migrations/postgres/0003_identity.sql"),
    ),
    (4, "rbac", include_str!("../../migrations/postgres/0004_rbac.sql")),
    (5, "jobs", include_str!("../../migrations/postgres/0005_jobs.sql")),
    (6, "slo", include_str!("../../migrations/postgres/0006_slo.sql")),
    (
        7,
        "rollouts",
        include_str!("../../migrations/postgres/0007_rollouts.sql"),
    ),
    (8, "kpi", include_str!("../../migrations/postgres/0008_kpi.sql")),
    (
        9,
        "api_stats",
        include_str!("../../migrations/postgres/0009_api_stats.sql"),
    ),
    (
        10,
        "slo_hours",
        include_str!("../../migrations/postgres/0010_slo_hours.sql"),
    ),
    (
        11,
        "kpi_daily",
        include_str!("../../migrations/postgres/0011_kpi_daily.sql"),
    ),
    (
        12,
        "audit_time_brin",
        include_str!("../../migrations/postgres/0012_audit_time_brin.sql"),
    ),
    (
        13,
        "identity_binding",
        include_str!("../../migrations/postgres/0013_identity_binding.sql"),
    ),
    (
        14,
        "token_parent",
        include_str!("../../migrations/postgres/0014_token_parent.sql"),
    ),
];

/// `HOST:PORT` of the server `options` connect to.
fn server(options: &PgConnectOptions) -> String {
    format!("{}:{}", options.get_host(), options.get_port())
}

/// The database `options` name (PostgreSQL's default: the user's name).
fn database_name(options: &PgConnectOptions) -> String {
    options.get_database().unwrap_or(options.get_username()).to_string()
}

/// PostgreSQL's `invalid_catalog_name`: the database does not exist.
fn is_missing_database(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("3D000"))
}

/// One line naming what failed, where, and what to do: no repeated causes,
/// no line numbers of PostgreSQL's own source.
fn connect_error(options: &PgConnectOptions, e: sqlx::Error) -> StoreError {
    let at = server(options);
    let name = database_name(options);
    let user = options.get_username();
    let message = match &e {
        _ if is_missing_database(&e) => format!(
            "database {name:?} does not exist on {at}: create it (createdb -h {} -p {} {name}) or point the database URL at an existing one",
            options.get_host(),
            options.get_port()
        ),
        sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("28P01" | "28000")) => {
            format!("PostgreSQL on {at} refused user {user:?}: {}", d.message())
        }
        sqlx::Error::Database(d) => format!("PostgreSQL on {at}: {}", d.message()),
        sqlx::Error::Io(io) => format!("cannot reach PostgreSQL on {at}: {io}"),
        sqlx::Error::Tls(tls) => format!("TLS to PostgreSQL on {at} failed: {tls}"),
        other => format!("PostgreSQL on {at}: {other}"),
    };
    StoreError::Connect(message)
}

/// The answer to `backup` on PostgreSQL.
fn pg_dump_instead() -> StoreError {
    StoreError::Invalid(
        "backup --to is for SQLite; back up PostgreSQL with pg_dump (pg_dump --format=custom --file FILE DATABASE_URL)"
            .into(),
    )
}

const MAX_CONNECTIONS: u32 = 16;
/// How long a caller waits for a pooled connection (also bounds `/readyz`).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub(super) struct PgStore {
    pub(super) pool: PgPool,
}

impl PgStore {
    pub(super) async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?;
        // One direct connection first: a pool would report an unreachable
        // server only as "timed out", this reports why.
        PgConnection::connect_with(&options)
            .await
            .map_err(|e| connect_error(&options, e))?
            .close()
            .await?;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options);
        Ok(Self { pool })
    }

    /// Creates the database `url` names when the server says it does not
    /// exist (connecting as the same user to the server's `postgres`
    /// database); `Ok(true)` when it was created.
    pub(super) async fn create_if_missing(url: &str) -> Result<bool, StoreError> {
        let options = PgConnectOptions::from_str(url)?;
        match PgConnection::connect_with(&options).await {
            Ok(conn) => {
                conn.close().await?;
                return Ok(false);
            }
            Err(e) if is_missing_database(&e) => {}
            Err(e) => return Err(connect_error(&options, e)),
        }
        let name = database_name(&options);
        let admin = options.clone().database("postgres");
        let mut conn = PgConnection::connect_with(&admin)
            .await
            .map_err(|e| connect_error(&admin, e))?;
        let statement = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        let created = sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut conn).await;
        let _ = conn.close().await;
        match created {
            Ok(_) => Ok(true),
            Err(sqlx::Error::Database(d)) => Err(StoreError::Connect(format!(
                "database {name:?} does not exist on {} and user {:?} cannot create it ({}): create it (createdb -h {} -p {} {name}) or point the database URL at an existing one",
                server(&options),
                options.get_username(),
                d.message(),
                options.get_host(),
                options.get_port(),
            ))),
            Err(e) => Err(connect_error(&options, e)),
        }
    }

    /// For `backup`: refused before connecting, whatever the server's state.
    pub(super) async fn connect_existing(_url: &str) -> Result<Self, StoreError> {
        Err(pg_dump_instead())
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
        Migrator::with_migrations(migrations).run(&self.pool).await?;
        Ok(())
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub(super) async fn close(&self) {
        self.pool.close().await;
    }

    /// PostgreSQL has its own consistent online backup, which also covers
    /// what several replicas share: `pg_dump`. Steward does not wrap it.
    pub(super) async fn backup_into(&self, _path: &Path) -> Result<(), StoreError> {
        Err(pg_dump_instead())
    }

    // ------------------------------------------------------------ gateway

    pub(super) async fn agent_connected(&self, h: &HelloRow<'_>, now_ms: i64) -> Result<i64, StoreError> {
        let last_seq: i64 = sqlx::query_scalar(
            "INSERT INTO hosts (id, hostname, facts, agent_version, first_seen_ms, last_seen_ms, connected, \
                                last_connected_ms, spool_dropped_total)
             VALUES ($1, $2, $3, $4, $5, $5, TRUE, $5, $6)
             ON CONFLICT (id) DO UPDATE SET
                hostname = excluded.hostname,
                facts = excluded.facts,
                agent_version = excluded.agent_version,
                last_seen_ms = GREATEST(hosts.last_seen_ms, excluded.last_seen_ms),
                connected = TRUE,
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
        .fetch_one(&self.pool)
        .await?;
        Ok(last_seq)
    }

    pub(super) async fn agent_heartbeat(&self, host_id: &str, dropped: i64, now_ms: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO hosts (id, first_seen_ms, last_seen_ms, spool_dropped_total) VALUES ($1, $2, $2, $3)
             ON CONFLICT (id) DO UPDATE SET
                last_seen_ms = GREATEST(hosts.last_seen_ms, excluded.last_seen_ms),
                spool_dropped_total = excluded.spool_dropped_total",
        )
        .bind(host_id)
        .bind(now_ms)
        .bind(dropped)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn agent_disconnected(&self, host_id: &str, now_ms: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE hosts SET connected = FALSE, last_disconnected_ms = $2,
                              last_seen_ms = GREATEST(last_seen_ms, $2)
             WHERE id = $1",
        )
        .bind(host_id)
        .bind(now_ms)
        .execute(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        let count = sli.counts_checks();
        let mut inserted = std::collections::HashSet::new();

        let ids: Vec<&str> = rows.hosts.iter().map(|h| h.id).collect();
        let seqs: Vec<i64> = rows.hosts.iter().map(|h| h.max_seq).collect();
        let dropped: Vec<i64> = rows.hosts.iter().map(|h| h.spool_dropped_total).collect();
        sqlx::query(
            "INSERT INTO hosts (id, first_seen_ms, last_seen_ms, last_seq, spool_dropped_total)
             SELECT u.id, $4, $4, u.last_seq, u.dropped
             FROM UNNEST($1::text[], $2::bigint[], $3::bigint[]) AS u (id, last_seq, dropped)
             ON CONFLICT (id) DO UPDATE SET
                last_seen_ms = GREATEST(hosts.last_seen_ms, excluded.last_seen_ms),
                last_seq = GREATEST(hosts.last_seq, excluded.last_seq),
                spool_dropped_total = excluded.spool_dropped_total",
        )
        .bind(ids)
        .bind(seqs)
        .bind(dropped)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;

        if !rows.results.is_empty() {
            let cols = Columns::of(rows, (0..rows.results.len()).collect());
            let q = sqlx::query(
                "INSERT INTO check_results (host_id, seq, name, kind, status, values_json, message, observed_ms, \
                                            duration_us, ingested_ms)
                 SELECT u.*, $10 FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
                                             $6::text[], $7::text[], $8::bigint[], $9::bigint[])
                     AS u (host_id, seq, name, kind, status, values_json, message, observed_ms, duration_us)
                 ON CONFLICT (host_id, seq) DO NOTHING
                 RETURNING host_id, seq",
            )
            .bind(cols.host_id)
            .bind(cols.seq)
            .bind(cols.name)
            .bind(cols.kind)
            .bind(cols.status)
            .bind(cols.values_json)
            .bind(cols.message)
            .bind(cols.observed_ms)
            .bind(cols.duration_us)
            .bind(now_ms);
            // Only what this transaction inserted counts towards SLOs and the KPI counts (resends do not).
            for row in q.fetch_all(&mut *tx).await? {
                inserted.insert((row.try_get::<String, _>(0)?, row.try_get::<i64, _>(1)?));
            }

            let cols = Columns::of(rows, rows.latest.clone());
            sqlx::query(
                "INSERT INTO check_latest (host_id, seq, name, kind, status, values_json, message, observed_ms, \
                                           duration_us)
                 SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
                                      $6::text[], $7::text[], $8::bigint[], $9::bigint[])
                 ON CONFLICT (host_id, name) DO UPDATE SET
                    kind = excluded.kind, status = excluded.status, values_json = excluded.values_json,
                    message = excluded.message, observed_ms = excluded.observed_ms,
                    duration_us = excluded.duration_us, seq = excluded.seq
                 WHERE excluded.seq > check_latest.seq",
            )
            .bind(cols.host_id)
            .bind(cols.seq)
            .bind(cols.name)
            .bind(cols.kind)
            .bind(cols.status)
            .bind(cols.values_json)
            .bind(cols.message)
            .bind(cols.observed_ms)
            .bind(cols.duration_us)
            .execute(&mut *tx)
            .await?;
        }
        if count && !inserted.is_empty() {
            super::slo::count_ingest_postgres(&mut tx, rows, &inserted, sli, now_ms).await?;
        }
        super::kpi_counts::count_ingest(super::sql::Conn::Pg(&mut tx), rows, &inserted).await?;
        // Job reports of the same batches, and their audit entries (jobs issue).
        let applied = super::jobs::apply_in_ingest(super::sql::Conn::Pg(&mut tx), jobs, now_ms, sli).await?;
        tx.commit().await?;
        Ok(applied)
    }

    pub(super) async fn prune_results_chunk(&self, older_than_ms: i64, chunk: i64) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let deleted: Vec<(String, String, i64)> = sqlx::query_as(
            "DELETE FROM check_results WHERE (host_id, seq) IN
                (SELECT host_id, seq FROM check_results WHERE ingested_ms < $1 LIMIT $2)
             RETURNING host_id, status, observed_ms",
        )
        .bind(older_than_ms)
        .bind(chunk)
        .fetch_all(&mut *tx)
        .await?;
        // The KPI counts lose the same rows in the same transaction.
        super::kpi_counts::count_pruned(super::sql::Conn::Pg(&mut tx), &deleted).await?;
        tx.commit().await?;
        Ok(deleted.len() as u64)
    }

    pub(super) async fn result_seqs(&self, host_id: &str) -> Result<Vec<i64>, StoreError> {
        let seqs = sqlx::query_scalar("SELECT seq FROM check_results WHERE host_id = $1 ORDER BY seq")
            .bind(host_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(seqs)
    }

    // ------------------------------------------------------------ hosts

    pub(super) async fn scan_hosts(&self, after: &str, limit: i64) -> Result<Vec<Host>, StoreError> {
        let sql = format!("SELECT {HOST_COLUMNS} FROM hosts WHERE id > $1 ORDER BY id LIMIT $2");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(host_from_row).collect()
    }

    pub(super) async fn host_by_id(&self, id: &str) -> Result<Option<Host>, StoreError> {
        let sql = format!("SELECT {HOST_COLUMNS} FROM hosts WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(host_from_row).transpose()
    }

    pub(super) async fn hosts_by_hostname(&self, hostname: &str, limit: i64) -> Result<Vec<Host>, StoreError> {
        let sql = format!("SELECT {HOST_COLUMNS} FROM hosts WHERE hostname = $1 ORDER BY id LIMIT $2");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(hostname)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(host_from_row).collect()
    }

    pub(super) async fn set_host_labels(&self, host_id: &str, labels_json: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE hosts SET labels = $2 WHERE id = $1")
            .bind(host_id)
            .bind(labels_json)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub(super) async fn status_counts(&self, host_ids: &[&str]) -> Result<Vec<(String, String, i64)>, StoreError> {
        let mut q =
            QueryBuilder::<Postgres>::new("SELECT host_id, status, COUNT(*) AS n FROM check_latest WHERE host_id IN (");
        let mut ids = q.separated(", ");
        for id in host_ids {
            ids.push_bind(*id);
        }
        q.push(") GROUP BY host_id, status");
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| Ok((r.text("host_id")?, r.text("status")?, r.int("n")?)))
            .collect()
    }

    pub(super) async fn fleet_stats(&self, online_since_ms: i64) -> Result<FleetStats, StoreError> {
        // SUM(bigint) is numeric on PostgreSQL: cast back to bigint.
        let row = sqlx::query(
            "SELECT COUNT(*) AS hosts,
                    COUNT(*) FILTER (WHERE last_seen_ms >= $1) AS online,
                    COALESCE(SUM(spool_dropped_total), 0)::BIGINT AS dropped
             FROM hosts",
        )
        .bind(online_since_ms)
        .fetch_one(&self.pool)
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
    ) -> Result<Vec<(LatestCheck, BTreeMap<String, String>)>, StoreError> {
        let mut q = QueryBuilder::<Postgres>::new(format!(
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
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(check_from_row).collect()
    }

    // ------------------------------------------------------------ API tokens

    /// In the caller's transaction (a [`super::audit::StoreTx`]), beside its audit entry.
    pub(super) async fn insert_api_token(conn: &mut PgConnection, t: &ApiToken) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_tokens (id, name, role, secret_hash, created_ms, expires_ms, revoked_ms, last_used_ms, scope, parent_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
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
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    /// In the caller's transaction (a [`super::audit::StoreTx`]), beside its audit entry.
    pub(super) async fn revoke_api_token(conn: &mut PgConnection, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE api_tokens SET revoked_ms = $2 WHERE id = $1 AND revoked_ms IS NULL")
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
                 SELECT id FROM api_tokens WHERE parent_id = $1
                 UNION SELECT t.id FROM api_tokens t JOIN minted m ON t.parent_id = m.id
             )
             UPDATE api_tokens SET revoked_ms = $2 WHERE id IN (SELECT id FROM minted) AND revoked_ms IS NULL",
        )
        .bind(id)
        .bind(now_ms)
        .execute(&mut *conn)
        .await?;
        Ok(true)
    }

    pub(super) async fn list_api_tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_ms, id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&self.pool).await?;
        rows.iter().map(token_from_row).collect()
    }

    pub(super) async fn touch_api_token(&self, id: &str, now_ms: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE api_tokens SET last_used_ms = $2 WHERE id = $1 AND (last_used_ms IS NULL OR last_used_ms < $2)",
        )
        .bind(id)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// Result rows turned into one array per column, for `UNNEST`.
struct Columns<'a> {
    host_id: Vec<&'a str>,
    seq: Vec<i64>,
    name: Vec<&'a str>,
    kind: Vec<&'a str>,
    status: Vec<&'a str>,
    values_json: Vec<&'a str>,
    message: Vec<&'a str>,
    observed_ms: Vec<i64>,
    duration_us: Vec<i64>,
}

impl<'a> Columns<'a> {
    fn of(rows: &'a IngestRows<'a>, indexes: Vec<usize>) -> Self {
        let pick = indexes.iter().map(|&i| &rows.results[i]);
        Columns {
            host_id: pick.clone().map(|r| r.host_id).collect(),
            seq: pick.clone().map(|r| r.seq).collect(),
            name: pick.clone().map(|r| r.name.as_ref()).collect(),
            kind: pick.clone().map(|r| r.kind.as_ref()).collect(),
            status: pick.clone().map(|r| r.status).collect(),
            values_json: pick.clone().map(|r| r.values_json.as_str()).collect(),
            message: pick.clone().map(|r| r.message.as_ref()).collect(),
            observed_ms: pick.clone().map(|r| r.observed_ms).collect(),
            duration_us: pick.map(|r| r.duration_us).collect(),
        }
    }
}

impl RowExt for PgRow {
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
