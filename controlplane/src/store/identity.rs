//! Agent identity lifecycle in the store: one-time enrollment tokens, the
//! certificates issued to each host, and revocation. Each statement is
//! written once per backend, side by side.
//!
//! Invariants:
//! - Redeeming a token, creating (or re-enrolling) the host with the token's
//!   labels and recording the issued certificate happen in one transaction:
//!   a refused enrollment changes nothing.
//! - A token's secret is stored only as its SHA-256 and compared in constant time.
//! - A revoked host's certificates issued before the revocation are refused;
//!   re-enrollment clears the host's revocation, never the old certificates'.
use std::collections::BTreeMap;

use sqlx::Row;
use subtle::ConstantTimeEq;

use super::audit::{append_postgres, append_sqlite};
use super::{Backend, Store, StoreError};
use crate::audit::AuditEntry;

/// A new enrollment token, as stored.
#[derive(Debug, Clone)]
pub struct NewEnrollmentToken {
    pub id: String,
    pub secret_hash: String,
    pub labels: BTreeMap<String, String>,
    pub uses: i64,
    pub expires_ms: i64,
    pub created_by: String,
}

/// Why an enrollment was refused (shown to the agent; never which secret was wrong).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrollRefusal {
    #[error("unknown or invalid enrollment token")]
    Invalid,
    #[error("the enrollment token has expired")]
    Expired,
    #[error("the enrollment token has been used up")]
    UsedUp,
    #[error("host {0:?} is already enrolled: revoke it first, or enroll under another --host-id")]
    HostExists(String),
}

/// The certificate being issued, recorded with the enrollment.
#[derive(Debug, Clone)]
pub struct IssuedCert<'a> {
    pub host_id: &'a str,
    pub serial: &'a str,
    pub not_after_ms: i64,
    /// `enroll` or `renew`.
    pub source: &'a str,
}

fn labels_json(labels: &BTreeMap<String, String>) -> String {
    serde_json::to_string(labels).unwrap_or_else(|_| "{}".into())
}

struct TokenRow {
    secret_hash: String,
    labels: String,
    uses_left: i64,
    expires_ms: i64,
    revoked: bool,
}

fn judge(row: Option<TokenRow>, secret_hash: &str, now_ms: i64) -> Result<String, EnrollRefusal> {
    let Some(row) = row else {
        // Same work as a real comparison, so timing does not reveal unknown ids.
        let _ = secret_hash.as_bytes().ct_eq(secret_hash.as_bytes());
        return Err(EnrollRefusal::Invalid);
    };
    let matches: bool = row.secret_hash.as_bytes().ct_eq(secret_hash.as_bytes()).into();
    if !matches || row.revoked {
        return Err(EnrollRefusal::Invalid);
    }
    if row.expires_ms <= now_ms {
        return Err(EnrollRefusal::Expired);
    }
    if row.uses_left <= 0 {
        return Err(EnrollRefusal::UsedUp);
    }
    Ok(row.labels)
}

impl Store {
    /// Stores a new enrollment token.
    pub async fn create_enrollment_token(
        &self,
        t: &NewEnrollmentToken,
        audit: &AuditEntry,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let labels = labels_json(&t.labels);
        let audit = std::slice::from_ref(audit);
        match &self.backend {
            Backend::Sqlite(b) => {
                let mut tx = b.write.begin_with("BEGIN IMMEDIATE").await?;
                sqlx::query(
                    "INSERT INTO enrollment_tokens (id, secret_hash, labels, max_uses, uses_left, expires_ms, created_ms, created_by)
                     VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6, ?7)",
                )
                .bind(&t.id)
                .bind(&t.secret_hash)
                .bind(&labels)
                .bind(t.uses)
                .bind(t.expires_ms)
                .bind(now_ms)
                .bind(&t.created_by)
                .execute(&mut *tx)
                .await?;
                append_sqlite(&mut tx, audit, now_ms).await?;
                tx.commit().await?;
            }
            Backend::Postgres(b) => {
                let mut tx = b.pool.begin().await?;
                sqlx::query(
                    "INSERT INTO enrollment_tokens (id, secret_hash, labels, max_uses, uses_left, expires_ms, created_ms, created_by)
                     VALUES ($1, $2, $3, $4, $4, $5, $6, $7)",
                )
                .bind(&t.id)
                .bind(&t.secret_hash)
                .bind(&labels)
                .bind(t.uses)
                .bind(t.expires_ms)
                .bind(now_ms)
                .bind(&t.created_by)
                .execute(&mut *tx)
                .await?;
                append_postgres(&mut tx, audit, now_ms).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Redeems one use of an enrollment token for `cert.host_id` and records
    /// the certificate, in one transaction. The outer error is a storage
    /// failure; the inner one a refusal (nothing was changed).
    pub async fn redeem_enrollment(
        &self,
        token_id: &str,
        secret_hash: &str,
        cert: &IssuedCert<'_>,
        audit: &AuditEntry,
        now_ms: i64,
    ) -> Result<Result<BTreeMap<String, String>, EnrollRefusal>, StoreError> {
        let audit = std::slice::from_ref(audit);
        super::check_host_id(cert.host_id)?;
        let labels = match &self.backend {
            Backend::Sqlite(b) => {
                let mut tx = b.write.begin_with("BEGIN IMMEDIATE").await?;
                let row = sqlx::query(
                    "SELECT secret_hash, labels, uses_left, expires_ms, revoked_ms FROM enrollment_tokens WHERE id = ?1",
                )
                .bind(token_id)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| TokenRow {
                    secret_hash: r.get(0),
                    labels: r.get(1),
                    uses_left: r.get(2),
                    expires_ms: r.get(3),
                    revoked: r.get::<Option<i64>, _>(4).is_some(),
                });
                let labels = match judge(row, secret_hash, now_ms) {
                    Ok(l) => l,
                    Err(refusal) => return Ok(Err(refusal)),
                };
                let existing: Option<(Option<i64>,)> = sqlx::query_as("SELECT revoked_ms FROM hosts WHERE id = ?1")
                    .bind(cert.host_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                if matches!(existing, Some((None,))) {
                    return Ok(Err(EnrollRefusal::HostExists(cert.host_id.to_string())));
                }
                sqlx::query("UPDATE enrollment_tokens SET uses_left = uses_left - 1 WHERE id = ?1")
                    .bind(token_id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO hosts (id, labels, first_seen_ms, last_seen_ms) VALUES (?1, ?2, ?3, 0)
                     ON CONFLICT (id) DO UPDATE SET labels = excluded.labels, revoked_ms = NULL",
                )
                .bind(cert.host_id)
                .bind(&labels)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO agent_certs (serial, host_id, not_after_ms, issued_ms, source) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .bind(cert.serial)
                .bind(cert.host_id)
                .bind(cert.not_after_ms)
                .bind(now_ms)
                .bind(cert.source)
                .execute(&mut *tx)
                .await?;
                append_sqlite(&mut tx, audit, now_ms).await?;
                tx.commit().await?;
                labels
            }
            Backend::Postgres(b) => {
                let mut tx = b.pool.begin().await?;
                let row = sqlx::query(
                    "SELECT secret_hash, labels, uses_left, expires_ms, revoked_ms FROM enrollment_tokens
                     WHERE id = $1 FOR UPDATE",
                )
                .bind(token_id)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| TokenRow {
                    secret_hash: r.get(0),
                    labels: r.get(1),
                    uses_left: r.get(2),
                    expires_ms: r.get(3),
                    revoked: r.get::<Option<i64>, _>(4).is_some(),
                });
                let labels = match judge(row, secret_hash, now_ms) {
                    Ok(l) => l,
                    Err(refusal) => return Ok(Err(refusal)),
                };
                let existing: Option<(Option<i64>,)> =
                    sqlx::query_as("SELECT revoked_ms FROM hosts WHERE id = $1 FOR UPDATE")
                        .bind(cert.host_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                if matches!(existing, Some((None,))) {
                    return Ok(Err(EnrollRefusal::HostExists(cert.host_id.to_string())));
                }
                sqlx::query("UPDATE enrollment_tokens SET uses_left = uses_left - 1 WHERE id = $1")
                    .bind(token_id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO hosts (id, labels, first_seen_ms, last_seen_ms) VALUES ($1, $2, $3, 0)
                     ON CONFLICT (id) DO UPDATE SET labels = excluded.labels, revoked_ms = NULL",
                )
                .bind(cert.host_id)
                .bind(&labels)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO agent_certs (serial, host_id, not_after_ms, issued_ms, source) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(cert.serial)
                .bind(cert.host_id)
                .bind(cert.not_after_ms)
                .bind(now_ms)
                .bind(cert.source)
                .execute(&mut *tx)
                .await?;
                append_postgres(&mut tx, audit, now_ms).await?;
                tx.commit().await?;
                labels
            }
        };
        Ok(Ok(serde_json::from_str(&labels).unwrap_or_default()))
    }

    /// Records a certificate issued outside enrollment (renewal over the stream).
    pub async fn record_agent_cert(
        &self,
        cert: &IssuedCert<'_>,
        audit: &AuditEntry,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let audit = std::slice::from_ref(audit);
        match &self.backend {
            Backend::Sqlite(b) => {
                let mut tx = b.write.begin_with("BEGIN IMMEDIATE").await?;
                sqlx::query(
                    "INSERT INTO agent_certs (serial, host_id, not_after_ms, issued_ms, source) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (serial) DO NOTHING",
                )
                .bind(cert.serial)
                .bind(cert.host_id)
                .bind(cert.not_after_ms)
                .bind(now_ms)
                .bind(cert.source)
                .execute(&mut *tx)
                .await?;
                append_sqlite(&mut tx, audit, now_ms).await?;
                tx.commit().await?;
            }
            Backend::Postgres(b) => {
                let mut tx = b.pool.begin().await?;
                sqlx::query(
                    "INSERT INTO agent_certs (serial, host_id, not_after_ms, issued_ms, source) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (serial) DO NOTHING",
                )
                .bind(cert.serial)
                .bind(cert.host_id)
                .bind(cert.not_after_ms)
                .bind(now_ms)
                .bind(cert.source)
                .execute(&mut *tx)
                .await?;
                append_postgres(&mut tx, audit, now_ms).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Revokes a host: every certificate issued to it so far is refused from
    /// now on. Returns false when the host does not exist. Spooled data is kept.
    pub async fn revoke_host(&self, host_id: &str, audit: &AuditEntry, now_ms: i64) -> Result<bool, StoreError> {
        let audit = std::slice::from_ref(audit);
        let changed = match &self.backend {
            Backend::Sqlite(b) => {
                let mut tx = b.write.begin_with("BEGIN IMMEDIATE").await?;
                let n = sqlx::query("UPDATE hosts SET revoked_ms = ?2, connected = 0 WHERE id = ?1")
                    .bind(host_id)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                sqlx::query("UPDATE agent_certs SET revoked_ms = ?2 WHERE host_id = ?1 AND revoked_ms IS NULL")
                    .bind(host_id)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?;
                if n > 0 {
                    append_sqlite(&mut tx, audit, now_ms).await?;
                }
                tx.commit().await?;
                n
            }
            Backend::Postgres(b) => {
                let mut tx = b.pool.begin().await?;
                let n = sqlx::query("UPDATE hosts SET revoked_ms = $2, connected = FALSE WHERE id = $1")
                    .bind(host_id)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                sqlx::query("UPDATE agent_certs SET revoked_ms = $2 WHERE host_id = $1 AND revoked_ms IS NULL")
                    .bind(host_id)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?;
                if n > 0 {
                    append_postgres(&mut tx, audit, now_ms).await?;
                }
                tx.commit().await?;
                n
            }
        };
        Ok(changed > 0)
    }

    /// Whether a certificate (by serial) of `host_id` may no longer connect:
    /// the certificate itself is revoked, or the host is revoked and the
    /// certificate is not one issued after that (re-enrollment).
    pub async fn is_cert_revoked(&self, host_id: &str, serial: &str) -> Result<bool, StoreError> {
        let (host_revoked, cert): (Option<i64>, Option<(i64, Option<i64>)>) = match &self.backend {
            Backend::Sqlite(b) => {
                let host: Option<(Option<i64>,)> = sqlx::query_as("SELECT revoked_ms FROM hosts WHERE id = ?1")
                    .bind(host_id)
                    .fetch_optional(&b.read)
                    .await?;
                let cert: Option<(i64, Option<i64>)> =
                    sqlx::query_as("SELECT issued_ms, revoked_ms FROM agent_certs WHERE serial = ?1 AND host_id = ?2")
                        .bind(serial)
                        .bind(host_id)
                        .fetch_optional(&b.read)
                        .await?;
                (host.and_then(|h| h.0), cert)
            }
            Backend::Postgres(b) => {
                let host: Option<(Option<i64>,)> = sqlx::query_as("SELECT revoked_ms FROM hosts WHERE id = $1")
                    .bind(host_id)
                    .fetch_optional(&b.pool)
                    .await?;
                let cert: Option<(i64, Option<i64>)> =
                    sqlx::query_as("SELECT issued_ms, revoked_ms FROM agent_certs WHERE serial = $1 AND host_id = $2")
                        .bind(serial)
                        .bind(host_id)
                        .fetch_optional(&b.pool)
                        .await?;
                (host.and_then(|h| h.0), cert)
            }
        };
        Ok(match (host_revoked, cert) {
            (_, Some((_, Some(_)))) => true,
            (Some(revoked_at), Some((issued, None))) => issued <= revoked_at,
            (Some(_), None) => true,
            (None, _) => false,
        })
    }

    /// Hosts currently revoked (for closing live streams on every replica).
    pub async fn revoked_hosts(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = match &self.backend {
            Backend::Sqlite(b) => {
                sqlx::query_as("SELECT id FROM hosts WHERE revoked_ms IS NOT NULL")
                    .fetch_all(&b.read)
                    .await?
            }
            Backend::Postgres(b) => {
                sqlx::query_as("SELECT id FROM hosts WHERE revoked_ms IS NOT NULL")
                    .fetch_all(&b.pool)
                    .await?
            }
        };
        Ok(rows.into_iter().map(|r| r.0).collect())
    }
}
