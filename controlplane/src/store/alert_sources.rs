//! The reads behind the alert sources ([`crate::alert::evaluator`]): silent
//! hosts, checks critical since when, checks reporting `days_left`. The SQL
//! of both backends side by side (the statements take the same text). Revoked
//! hosts are left out everywhere: they are meant to be silent.
use super::{Backend, Store, StoreError, values_from_json};

/// A host not heard from since `last_seen_ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct SilentHost {
    pub id: String,
    pub hostname: String,
    pub last_seen_ms: i64,
}

/// A check whose latest result is critical, and since when without a break
/// (the first critical result after the last other one still kept).
#[derive(Debug, Clone, PartialEq)]
pub struct CriticalCheck {
    pub host_id: String,
    pub name: String,
    pub message: String,
    pub since_ms: i64,
}

/// A check whose latest result carries the value `days_left`.
#[derive(Debug, Clone, PartialEq)]
pub struct CertificateCheck {
    pub host_id: String,
    pub name: String,
    pub days_left: f64,
    pub message: String,
}

const CRITICAL: &str = "SELECT l.host_id, l.name, l.message, COALESCE(
       (SELECT MIN(r.observed_ms) FROM check_results r
         WHERE r.host_id = l.host_id AND r.name = l.name AND r.status = 'critical'
           AND r.observed_ms > COALESCE((SELECT MAX(n.observed_ms) FROM check_results n
                                          WHERE n.host_id = l.host_id AND n.name = l.name
                                            AND n.status <> 'critical'), -1)),
       l.observed_ms) AS since
     FROM check_latest l JOIN hosts h ON h.id = l.host_id
     WHERE l.status = 'critical' AND h.revoked_ms IS NULL
     ORDER BY l.host_id, l.name";

const DAYS_LEFT: &str = "SELECT l.host_id, l.name, l.values_json, l.message
     FROM check_latest l JOIN hosts h ON h.id = l.host_id
     WHERE l.values_json LIKE '%\"days_left\"%' AND h.revoked_ms IS NULL
     ORDER BY l.host_id, l.name";

impl Store {
    /// Hosts (not revoked) last seen before `before_ms`.
    pub async fn silent_hosts(&self, before_ms: i64) -> Result<Vec<SilentHost>, StoreError> {
        let rows: Vec<(String, String, i64)> = match &self.backend {
            Backend::Sqlite(b) => {
                sqlx::query_as(
                    "SELECT id, hostname, last_seen_ms FROM hosts
                     WHERE revoked_ms IS NULL AND last_seen_ms < ?1 ORDER BY id",
                )
                .bind(before_ms)
                .fetch_all(&b.read)
                .await?
            }
            Backend::Postgres(b) => {
                sqlx::query_as(
                    "SELECT id, hostname, last_seen_ms FROM hosts
                     WHERE revoked_ms IS NULL AND last_seen_ms < $1 ORDER BY id",
                )
                .bind(before_ms)
                .fetch_all(&b.pool)
                .await?
            }
        };
        Ok(rows
            .into_iter()
            .map(|(id, hostname, last_seen_ms)| SilentHost {
                id,
                hostname,
                last_seen_ms,
            })
            .collect())
    }

    /// Checks (of hosts not revoked) whose latest result is critical.
    pub async fn critical_checks(&self) -> Result<Vec<CriticalCheck>, StoreError> {
        let rows: Vec<(String, String, String, i64)> = match &self.backend {
            Backend::Sqlite(b) => sqlx::query_as(CRITICAL).fetch_all(&b.read).await?,
            Backend::Postgres(b) => sqlx::query_as(CRITICAL).fetch_all(&b.pool).await?,
        };
        Ok(rows
            .into_iter()
            .map(|(host_id, name, message, since_ms)| CriticalCheck {
                host_id,
                name,
                message,
                since_ms,
            })
            .collect())
    }

    /// Checks (of hosts not revoked) whose latest result reports `days_left`.
    pub async fn certificate_checks(&self) -> Result<Vec<CertificateCheck>, StoreError> {
        let rows: Vec<(String, String, String, String)> = match &self.backend {
            Backend::Sqlite(b) => sqlx::query_as(DAYS_LEFT).fetch_all(&b.read).await?,
            Backend::Postgres(b) => sqlx::query_as(DAYS_LEFT).fetch_all(&b.pool).await?,
        };
        Ok(rows
            .into_iter()
            .filter_map(|(host_id, name, values, message)| {
                let days_left = values_from_json(&values)
                    .into_iter()
                    .find(|v| v.name == "days_left" && v.value.is_finite())?
                    .value;
                Some(CertificateCheck {
                    host_id,
                    name,
                    days_left,
                    message,
                })
            })
            .collect())
    }
}
