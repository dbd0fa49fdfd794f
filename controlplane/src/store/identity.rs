//! Agent identity lifecycle in the store: one-time enrollment tokens, the
//! certificates issued to each host, and revocation. Each statement is
//! written once per backend, side by side.
//!
//! Invariants:
//! - Redeeming a token, creating (or re-enrolling) the host with the token's
//!   labels and recording the issued certificate happen in one transaction:
//!   a refused enrollment changes nothing.
//! - A token's secret is stored only as its SHA-256 and compared in constant time.
//! - Every agent certificate the CA signs is recorded here (enrollment,
//!   renewal, `ca issue-agent`); a certificate whose serial is not recorded
//!   is refused.
//! - Every certificate of a revoked host is refused. Re-enrollment (only with
//!   a token that names the host exactly) clears the host's revocation and
//!   revokes every earlier certificate of the host: only the new one is valid.
//! - A renewal is refused, inside its transaction, when the host is revoked
//!   or the certificate of the stream asking for it is no longer valid.
use std::collections::BTreeMap;

use subtle::ConstantTimeEq;

use steward_shared::hostpattern;

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
    /// Host IDs (exact or `*` patterns) it may enroll; `None`: any new host.
    pub hosts: Option<Vec<String>>,
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
    #[error("this enrollment token does not allow host ID {0:?}")]
    HostNotAllowed(String),
    #[error("host {0:?} was enrolled before: re-enrolling it needs a token that names it (--hosts {0})")]
    ReenrollNotNamed(String),
}

/// Why a renewal was refused (nothing was recorded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenewRefusal {
    #[error("this host has been revoked: re-enroll it")]
    HostRevoked,
    #[error("the certificate of this stream is no longer valid: re-enroll the host")]
    CertRevoked,
}

/// The host an enrollment is for, as the store has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostStanding {
    /// No host of that ID yet.
    New,
    /// Enrolled and not revoked.
    Active,
    /// Enrolled before and revoked since.
    Revoked,
}

impl HostStanding {
    fn from_row(row: Option<Option<i64>>) -> HostStanding {
        match row {
            None => HostStanding::New,
            Some(None) => HostStanding::Active,
            Some(Some(_)) => HostStanding::Revoked,
        }
    }
}

/// A recorded certificate, as the revocation decision sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertStanding {
    /// The serial was never recorded for this host.
    Unknown,
    Valid,
    Revoked,
}

/// The revocation decision: a certificate may connect only when it is
/// recorded for its host, not revoked itself, and its host is not revoked.
pub fn cert_refused(host_revoked: bool, cert: CertStanding) -> bool {
    host_revoked || cert != CertStanding::Valid
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

/// Whether the token in `row` may be used now at all (pure): known, the
/// secret matches (constant time), not revoked, not expired, uses left.
pub fn judge_token(row: Option<&TokenRow>, secret_hash: &str, now_ms: i64) -> Result<(), EnrollRefusal> {
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
    Ok(())
}

/// Decides an enrollment of `host_id` with the token in `row` (pure; the
/// caller holds the token and host rows locked). Returns the token's labels.
pub fn judge(
    row: Option<TokenRow>,
    secret_hash: &str,
    now_ms: i64,
    host_id: &str,
    host: HostStanding,
) -> Result<String, EnrollRefusal> {
    judge_token(row.as_ref(), secret_hash, now_ms)?;
    let Some(row) = row else {
        return Err(EnrollRefusal::Invalid);
    };
    let hosts = row.hosts();
    if let Some(allowed) = &hosts
        && !allowed.iter().any(|p| hostpattern::matches(p, host_id))
    {
        return Err(EnrollRefusal::HostNotAllowed(host_id.to_string()));
    }
    match host {
        HostStanding::New => {}
        HostStanding::Active => return Err(EnrollRefusal::HostExists(host_id.to_string())),
        HostStanding::Revoked => {
            // Taking over an existing host ID needs a token minted for it.
            let named = hosts.iter().flatten().any(|p| hostpattern::is_exact(p) && p == host_id);
            if !named {
                return Err(EnrollRefusal::ReenrollNotNamed(host_id.to_string()));
            }
        }
    }
    Ok(row.labels)
}

/// An enrollment token as stored (the secret only as its hash).
#[derive(Debug, Clone)]
pub struct TokenRow {
    pub secret_hash: String,
    pub labels: String,
    pub uses_left: i64,
    pub expires_ms: i64,
    pub revoked: bool,
    /// JSON array of host patterns, or `None`.
    pub hosts_json: Option<String>,
}

type TokenTuple = (String, String, i64, i64, Option<i64>, Option<String>);

impl TokenRow {
    fn from_tuple(r: TokenTuple) -> TokenRow {
        TokenRow {
            secret_hash: r.0,
            labels: r.1,
            uses_left: r.2,
            expires_ms: r.3,
            revoked: r.4.is_some(),
            hosts_json: r.5,
        }
    }

    fn hosts(&self) -> Option<Vec<String>> {
        // An unreadable list allows nothing (fail closed).
        self.hosts_json
            .as_deref()
            .map(|j| serde_json::from_str(j).unwrap_or_default())
    }
}

/// An enrollment token as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentTokenInfo {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub hosts: Option<Vec<String>>,
    pub max_uses: i64,
    pub uses_left: i64,
    pub expires_ms: i64,
    pub created_ms: i64,
    pub created_by: String,
    pub revoked_ms: Option<i64>,
}

type TokenInfoRow = (String, String, Option<String>, i64, i64, i64, i64, String, Option<i64>);

fn token_info(r: TokenInfoRow) -> EnrollmentTokenInfo {
    EnrollmentTokenInfo {
        id: r.0,
        labels: serde_json::from_str(&r.1).unwrap_or_default(),
        hosts: r.2.map(|j| serde_json::from_str(&j).unwrap_or_default()),
        max_uses: r.3,
        uses_left: r.4,
        expires_ms: r.5,
        created_ms: r.6,
        created_by: r.7,
        revoked_ms: r.8,
    }
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
        let hosts = t
            .hosts
            .as_ref()
            .map(|h| serde_json::to_string(h).unwrap_or_else(|_| "[]".into()));
        let audit = std::slice::from_ref(audit);
        match &self.backend {
            Backend::Sqlite(b) => {
                let mut tx = b.write.begin_with("BEGIN IMMEDIATE").await?;
                sqlx::query(
                    "INSERT INTO enrollment_tokens (id, secret_hash, labels, max_uses, uses_left, expires_ms, created_ms, created_by, hosts)
                     VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6, ?7, ?8)",
                )
                .bind(&t.id)
                .bind(&t.secret_hash)
                .bind(&labels)
                .bind(t.uses)
                .bind(t.expires_ms)
                .bind(now_ms)
                .bind(&t.created_by)
                .bind(&hosts)
                .execute(&mut *tx)
                .await?;
                append_sqlite(&mut tx, audit, now_ms).await?;
                tx.commit().await?;
            }
            Backend::Postgres(b) => {
                let mut tx = b.pool.begin().await?;
                sqlx::query(
                    "INSERT INTO enrollment_tokens (id, secret_hash, labels, max_uses, uses_left, expires_ms, created_ms, created_by, hosts)
                     VALUES ($1, $2, $3, $4, $4, $5, $6, $7, $8)",
                )
                .bind(&t.id)
                .bind(&t.secret_hash)
                .bind(&labels)
                .bind(t.uses)
                .bind(t.expires_ms)
                .bind(now_ms)
                .bind(&t.created_by)
                .bind(&hosts)
                .execute(&mut *tx)
                .await?;
                append_postgres(&mut tx, audit, now_ms).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Every enrollment token, newest first (never a secret).
    pub async fn list_enrollment_tokens(&self) -> Result<Vec<EnrollmentTokenInfo>, StoreError> {
        const SQL: &str = "SELECT id, labels, hosts, max_uses, uses_left, expires_ms, created_ms, created_by, revoked_ms FROM enrollment_tokens ORDER BY created_ms DESC, id";
        let rows: Vec<TokenInfoRow> = match &self.backend {
            Backend::Sqlite(b) => sqlx::query_as(SQL).fetch_all(&b.read).await?,
            Backend::Postgres(b) => sqlx::query_as(SQL).fetch_all(&b.pool).await?,
        };
        Ok(rows.into_iter().map(token_info).collect())
    }

    /// One enrollment token (never its secret).
    pub async fn get_enrollment_token(&self, id: &str) -> Result<Option<EnrollmentTokenInfo>, StoreError> {
        let row: Option<TokenInfoRow> = match &self.backend {
            Backend::Sqlite(b) => {
                sqlx::query_as("SELECT id, labels, hosts, max_uses, uses_left, expires_ms, created_ms, created_by, revoked_ms FROM enrollment_tokens WHERE id = ?1")
                    .bind(id)
                    .fetch_optional(&b.read)
                    .await?
            }
            Backend::Postgres(b) => {
                sqlx::query_as("SELECT id, labels, hosts, max_uses, uses_left, expires_ms, created_ms, created_by, revoked_ms FROM enrollment_tokens WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&b.pool)
                    .await?
            }
        };
        Ok(row.map(token_info))
    }

    /// Revokes an enrollment token: no host can enroll with it from now on.
    /// Returns false when there is no such token or it was revoked already.
    pub async fn revoke_enrollment_token(&self, id: &str, audit: &AuditEntry, now_ms: i64) -> Result<bool, StoreError> {
        let audit = std::slice::from_ref(audit);
        let n = match &self.backend {
            Backend::Sqlite(b) => {
                let mut tx = b.write.begin_with("BEGIN IMMEDIATE").await?;
                let n =
                    sqlx::query("UPDATE enrollment_tokens SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL")
                        .bind(id)
                        .bind(now_ms)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                if n > 0 {
                    append_sqlite(&mut tx, audit, now_ms).await?;
                }
                tx.commit().await?;
                n
            }
            Backend::Postgres(b) => {
                let mut tx = b.pool.begin().await?;
                let n =
                    sqlx::query("UPDATE enrollment_tokens SET revoked_ms = $2 WHERE id = $1 AND revoked_ms IS NULL")
                        .bind(id)
                        .bind(now_ms)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                if n > 0 {
                    append_postgres(&mut tx, audit, now_ms).await?;
                }
                tx.commit().await?;
                n
            }
        };
        Ok(n > 0)
    }

    /// Checks an enrollment token before anything is signed (read only; the
    /// redemption transaction decides again): the early refusal of a flood
    /// of bad tokens costs one read, no signature and no write.
    pub async fn check_enrollment_token(
        &self,
        token_id: &str,
        secret_hash: &str,
        now_ms: i64,
    ) -> Result<Result<(), EnrollRefusal>, StoreError> {
        let row: Option<TokenTuple> = match &self.backend {
            Backend::Sqlite(b) => {
                sqlx::query_as(
                    "SELECT secret_hash, labels, uses_left, expires_ms, revoked_ms, hosts FROM enrollment_tokens WHERE id = ?1",
                )
                .bind(token_id)
                .fetch_optional(&b.read)
                .await?
            }
            Backend::Postgres(b) => {
                sqlx::query_as(
                    "SELECT secret_hash, labels, uses_left, expires_ms, revoked_ms, hosts FROM enrollment_tokens WHERE id = $1",
                )
                .bind(token_id)
                .fetch_optional(&b.pool)
                .await?
            }
        };
        Ok(judge_token(row.map(TokenRow::from_tuple).as_ref(), secret_hash, now_ms))
    }

    /// Redeems one use of an enrollment token for `cert.host_id` and records
    /// the certificate, in one transaction. A re-enrollment (a revoked host,
    /// with a token naming it) revokes every earlier certificate of the host.
    /// The outer error is a storage failure; the inner one a refusal (nothing
    /// was changed).
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
                let row: Option<TokenTuple> =
                    sqlx::query_as("SELECT secret_hash, labels, uses_left, expires_ms, revoked_ms, hosts FROM enrollment_tokens WHERE id = ?1")
                        .bind(token_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                let host: Option<(Option<i64>,)> = sqlx::query_as("SELECT revoked_ms FROM hosts WHERE id = ?1")
                    .bind(cert.host_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let standing = HostStanding::from_row(host.map(|h| h.0));
                let labels = match judge(
                    row.map(TokenRow::from_tuple),
                    secret_hash,
                    now_ms,
                    cert.host_id,
                    standing,
                ) {
                    Ok(l) => l,
                    Err(refusal) => return Ok(Err(refusal)),
                };
                sqlx::query("UPDATE enrollment_tokens SET uses_left = uses_left - 1 WHERE id = ?1")
                    .bind(token_id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("UPDATE agent_certs SET revoked_ms = ?2 WHERE host_id = ?1 AND revoked_ms IS NULL")
                    .bind(cert.host_id)
                    .bind(now_ms)
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
                let row: Option<TokenTuple> = sqlx::query_as("SELECT secret_hash, labels, uses_left, expires_ms, revoked_ms, hosts FROM enrollment_tokens WHERE id = $1 FOR UPDATE",
                )
                .bind(token_id)
                .fetch_optional(&mut *tx)
                .await?;
                let host: Option<(Option<i64>,)> =
                    sqlx::query_as("SELECT revoked_ms FROM hosts WHERE id = $1 FOR UPDATE")
                        .bind(cert.host_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                let standing = HostStanding::from_row(host.map(|h| h.0));
                let labels = match judge(
                    row.map(TokenRow::from_tuple),
                    secret_hash,
                    now_ms,
                    cert.host_id,
                    standing,
                ) {
                    Ok(l) => l,
                    Err(refusal) => return Ok(Err(refusal)),
                };
                sqlx::query("UPDATE enrollment_tokens SET uses_left = uses_left - 1 WHERE id = $1")
                    .bind(token_id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("UPDATE agent_certs SET revoked_ms = $2 WHERE host_id = $1 AND revoked_ms IS NULL")
                    .bind(cert.host_id)
                    .bind(now_ms)
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

    /// Records a renewal for the stream whose certificate is `presented_serial`,
    /// in one transaction that first checks, with the host row locked, that
    /// neither the host nor that certificate is revoked. A refused renewal
    /// records nothing (and its certificate, unrecorded, is refused anyway).
    pub async fn renew_agent_cert(
        &self,
        cert: &IssuedCert<'_>,
        presented_serial: &str,
        audit: &AuditEntry,
        now_ms: i64,
    ) -> Result<Result<(), RenewRefusal>, StoreError> {
        let audit = std::slice::from_ref(audit);
        match &self.backend {
            Backend::Sqlite(b) => {
                let mut tx = b.write.begin_with("BEGIN IMMEDIATE").await?;
                let host: Option<(Option<i64>,)> = sqlx::query_as("SELECT revoked_ms FROM hosts WHERE id = ?1")
                    .bind(cert.host_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let presented: Option<(Option<i64>,)> =
                    sqlx::query_as("SELECT revoked_ms FROM agent_certs WHERE serial = ?1 AND host_id = ?2")
                        .bind(presented_serial)
                        .bind(cert.host_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                if let Err(refusal) = renewal_allowed(host.map(|h| h.0), presented.map(|c| c.0)) {
                    return Ok(Err(refusal));
                }
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
            }
            Backend::Postgres(b) => {
                let mut tx = b.pool.begin().await?;
                // Locks the host row: a revocation waits for this renewal, or
                // this renewal sees the revocation.
                let host: Option<(Option<i64>,)> =
                    sqlx::query_as("SELECT revoked_ms FROM hosts WHERE id = $1 FOR UPDATE")
                        .bind(cert.host_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                let presented: Option<(Option<i64>,)> =
                    sqlx::query_as("SELECT revoked_ms FROM agent_certs WHERE serial = $1 AND host_id = $2")
                        .bind(presented_serial)
                        .bind(cert.host_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                if let Err(refusal) = renewal_allowed(host.map(|h| h.0), presented.map(|c| c.0)) {
                    return Ok(Err(refusal));
                }
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
            }
        }
        Ok(Ok(()))
    }

    /// Records certificates signed outside the stream (`ca issue-agent`, the
    /// fleet simulator), in one transaction with one audit entry. For a
    /// revoked host this is a re-enrollment by the CA's operator: the host's
    /// revocation is cleared and every earlier certificate of it is revoked,
    /// so only the new one is valid.
    pub async fn record_issued_certs(
        &self,
        certs: &[IssuedCert<'_>],
        audit: &AuditEntry,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let audit = std::slice::from_ref(audit);
        for cert in certs {
            super::check_host_id(cert.host_id)?;
        }
        match &self.backend {
            Backend::Sqlite(b) => {
                let mut tx = b.write.begin_with("BEGIN IMMEDIATE").await?;
                for cert in certs {
                    let host: Option<(Option<i64>,)> = sqlx::query_as("SELECT revoked_ms FROM hosts WHERE id = ?1")
                        .bind(cert.host_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                    if HostStanding::from_row(host.map(|h| h.0)) == HostStanding::Revoked {
                        sqlx::query("UPDATE agent_certs SET revoked_ms = ?2 WHERE host_id = ?1 AND revoked_ms IS NULL")
                            .bind(cert.host_id)
                            .bind(now_ms)
                            .execute(&mut *tx)
                            .await?;
                        sqlx::query("UPDATE hosts SET revoked_ms = NULL WHERE id = ?1")
                            .bind(cert.host_id)
                            .execute(&mut *tx)
                            .await?;
                    }
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
                }
                append_sqlite(&mut tx, audit, now_ms).await?;
                tx.commit().await?;
            }
            Backend::Postgres(b) => {
                let mut tx = b.pool.begin().await?;
                for cert in certs {
                    let host: Option<(Option<i64>,)> =
                        sqlx::query_as("SELECT revoked_ms FROM hosts WHERE id = $1 FOR UPDATE")
                            .bind(cert.host_id)
                            .fetch_optional(&mut *tx)
                            .await?;
                    if HostStanding::from_row(host.map(|h| h.0)) == HostStanding::Revoked {
                        sqlx::query("UPDATE agent_certs SET revoked_ms = $2 WHERE host_id = $1 AND revoked_ms IS NULL")
                            .bind(cert.host_id)
                            .bind(now_ms)
                            .execute(&mut *tx)
                            .await?;
                        sqlx::query("UPDATE hosts SET revoked_ms = NULL WHERE id = $1")
                            .bind(cert.host_id)
                            .execute(&mut *tx)
                            .await?;
                    }
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
                }
                append_postgres(&mut tx, audit, now_ms).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Records a certificate issued before certificates were recorded
    /// (`ca record-agent`, upgrades). Nothing changes for a serial recorded
    /// already; one of a revoked host is recorded as revoked.
    pub async fn record_existing_cert(
        &self,
        cert: &IssuedCert<'_>,
        audit: &AuditEntry,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let audit = std::slice::from_ref(audit);
        super::check_host_id(cert.host_id)?;
        match &self.backend {
            Backend::Sqlite(b) => {
                let mut tx = b.write.begin_with("BEGIN IMMEDIATE").await?;
                sqlx::query(
                    "INSERT INTO agent_certs (serial, host_id, not_after_ms, issued_ms, source, revoked_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, (SELECT revoked_ms FROM hosts WHERE id = ?2))
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
                    "INSERT INTO agent_certs (serial, host_id, not_after_ms, issued_ms, source, revoked_ms)
                     VALUES ($1, $2, $3, $4, $5, (SELECT revoked_ms FROM hosts WHERE id = $2))
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

    /// Revokes a host: every certificate issued to it is refused from now on
    /// (until a re-enrollment issues a new one). Returns false when the host
    /// does not exist. Spooled data is kept.
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

    /// Whether a certificate (by serial) of `host_id` may no longer connect
    /// (see [`cert_refused`]): refused unless recorded for the host, not
    /// revoked, and the host not revoked.
    pub async fn is_cert_revoked(&self, host_id: &str, serial: &str) -> Result<bool, StoreError> {
        type Revoked = Option<(Option<i64>,)>;
        let (host, cert): (Revoked, Revoked) = match &self.backend {
            Backend::Sqlite(b) => {
                let host = sqlx::query_as("SELECT revoked_ms FROM hosts WHERE id = ?1")
                    .bind(host_id)
                    .fetch_optional(&b.read)
                    .await?;
                let cert = sqlx::query_as("SELECT revoked_ms FROM agent_certs WHERE serial = ?1 AND host_id = ?2")
                    .bind(serial)
                    .bind(host_id)
                    .fetch_optional(&b.read)
                    .await?;
                (host, cert)
            }
            Backend::Postgres(b) => {
                let host = sqlx::query_as("SELECT revoked_ms FROM hosts WHERE id = $1")
                    .bind(host_id)
                    .fetch_optional(&b.pool)
                    .await?;
                let cert = sqlx::query_as("SELECT revoked_ms FROM agent_certs WHERE serial = $1 AND host_id = $2")
                    .bind(serial)
                    .bind(host_id)
                    .fetch_optional(&b.pool)
                    .await?;
                (host, cert)
            }
        };
        let host_revoked = matches!(host, Some((Some(_),)));
        let cert = match cert {
            None => CertStanding::Unknown,
            Some((None,)) => CertStanding::Valid,
            Some((Some(_),)) => CertStanding::Revoked,
        };
        Ok(cert_refused(host_revoked, cert))
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

    /// Serials revoked and not yet expired, by host (a re-enrolled host's
    /// earlier certificates among them): live streams that present one are
    /// closed by the revocation sweep.
    pub async fn revoked_certs(&self, now_ms: i64) -> Result<Vec<(String, String)>, StoreError> {
        let rows: Vec<(String, String)> = match &self.backend {
            Backend::Sqlite(b) => {
                sqlx::query_as(
                    "SELECT host_id, serial FROM agent_certs WHERE revoked_ms IS NOT NULL AND not_after_ms > ?1",
                )
                .bind(now_ms)
                .fetch_all(&b.read)
                .await?
            }
            Backend::Postgres(b) => {
                sqlx::query_as(
                    "SELECT host_id, serial FROM agent_certs WHERE revoked_ms IS NOT NULL AND not_after_ms > $1",
                )
                .bind(now_ms)
                .fetch_all(&b.pool)
                .await?
            }
        };
        Ok(rows)
    }
}

/// Whether a stream may renew (pure): its host is known and not revoked, and
/// the certificate it presented is recorded and not revoked.
pub fn renewal_allowed(host: Option<Option<i64>>, presented: Option<Option<i64>>) -> Result<(), RenewRefusal> {
    match (host, presented) {
        (Some(Some(_)), _) => Err(RenewRefusal::HostRevoked),
        (_, None) | (_, Some(Some(_))) => Err(RenewRefusal::CertRevoked),
        (_, Some(None)) => Ok(()),
    }
}
