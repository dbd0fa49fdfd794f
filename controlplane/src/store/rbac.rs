//! Access control in the store: custom roles defined through the API, and
//! host labels set by the control plane (`PUT /api/v1/hosts/{host}/labels`).
//! Each statement is written once per backend, side by side; every change
//! commits with its audit entry ([`super::audit::StoreTx`]).
use sqlx::Row;

use super::audit::TxConn;
use super::{Backend, Store, StoreError};
use crate::audit::AuditEntry;
use crate::rbac::{Labels, RuleSpec};

/// A custom role as stored (rules as written, validated before storing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRole {
    pub name: String,
    pub description: String,
    pub rules: Vec<RuleSpec>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

fn role_from(
    name: String,
    description: String,
    rules: String,
    created_ms: i64,
    updated_ms: i64,
) -> Result<StoredRole, StoreError> {
    let rules = serde_json::from_str(&rules)
        .map_err(|e| StoreError::Invalid(format!("unreadable rules of role {name:?}: {e}")))?;
    Ok(StoredRole {
        name,
        description,
        rules,
        created_ms,
        updated_ms,
    })
}

impl Store {
    /// The custom role `name`, if stored.
    pub async fn find_role(&self, name: &str) -> Result<Option<StoredRole>, StoreError> {
        let row = match &self.backend {
            Backend::Sqlite(b) => {
                sqlx::query("SELECT name, description, rules, created_ms, updated_ms FROM roles WHERE name = ?1")
                    .bind(name)
                    .fetch_optional(&b.read)
                    .await?
                    .map(|r| -> Result<_, sqlx::Error> {
                        Ok((
                            r.try_get(0)?,
                            r.try_get(1)?,
                            r.try_get(2)?,
                            r.try_get(3)?,
                            r.try_get(4)?,
                        ))
                    })
            }
            Backend::Postgres(b) => {
                sqlx::query("SELECT name, description, rules, created_ms, updated_ms FROM roles WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&b.pool)
                    .await?
                    .map(|r| -> Result<_, sqlx::Error> {
                        Ok((
                            r.try_get(0)?,
                            r.try_get(1)?,
                            r.try_get(2)?,
                            r.try_get(3)?,
                            r.try_get(4)?,
                        ))
                    })
            }
        };
        match row {
            None => Ok(None),
            Some(r) => {
                let (n, d, rules, c, u) = r?;
                role_from(n, d, rules, c, u).map(Some)
            }
        }
    }

    /// Every custom role, by name.
    pub async fn list_roles(&self) -> Result<Vec<StoredRole>, StoreError> {
        let sql = "SELECT name, description, rules, created_ms, updated_ms FROM roles ORDER BY name";
        let rows: Vec<(String, String, String, i64, i64)> = match &self.backend {
            Backend::Sqlite(b) => sqlx::query_as(sql).fetch_all(&b.read).await?,
            Backend::Postgres(b) => sqlx::query_as(sql).fetch_all(&b.pool).await?,
        };
        rows.into_iter()
            .map(|(n, d, r, c, u)| role_from(n, d, r, c, u))
            .collect()
    }

    /// Creates or replaces the custom role `name`, with `audit`, in one
    /// transaction; true when it was created.
    pub async fn put_role(
        &self,
        name: &str,
        description: &str,
        rules: &[RuleSpec],
        audit: AuditEntry,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let rules = serde_json::to_string(rules).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let mut tx = self.begin().await?;
        let updated = match tx.conn() {
            TxConn::Sqlite(c) => {
                sqlx::query("UPDATE roles SET description = ?2, rules = ?3, updated_ms = ?4 WHERE name = ?1")
                    .bind(name)
                    .bind(description)
                    .bind(&rules)
                    .bind(now_ms)
                    .execute(&mut *c)
                    .await?
                    .rows_affected()
            }
            TxConn::Postgres(c) => {
                sqlx::query("UPDATE roles SET description = $2, rules = $3, updated_ms = $4 WHERE name = $1")
                    .bind(name)
                    .bind(description)
                    .bind(&rules)
                    .bind(now_ms)
                    .execute(&mut *c)
                    .await?
                    .rows_affected()
            }
        };
        if updated == 0 {
            match tx.conn() {
                TxConn::Sqlite(c) => {
                    sqlx::query(
                        "INSERT INTO roles (name, description, rules, created_ms, updated_ms) VALUES (?1, ?2, ?3, ?4, ?4)",
                    )
                    .bind(name)
                    .bind(description)
                    .bind(&rules)
                    .bind(now_ms)
                    .execute(&mut *c)
                    .await?;
                }
                TxConn::Postgres(c) => {
                    sqlx::query(
                        "INSERT INTO roles (name, description, rules, created_ms, updated_ms) VALUES ($1, $2, $3, $4, $4)",
                    )
                    .bind(name)
                    .bind(description)
                    .bind(&rules)
                    .bind(now_ms)
                    .execute(&mut *c)
                    .await?;
                }
            }
        }
        tx.audit(audit);
        tx.commit().await?;
        Ok(updated == 0)
    }

    /// Deletes the custom role `name` with `audit`, in one transaction;
    /// false (nothing recorded) when there is no such role.
    pub async fn delete_role(&self, name: &str, audit: AuditEntry) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let n = match tx.conn() {
            TxConn::Sqlite(c) => sqlx::query("DELETE FROM roles WHERE name = ?1")
                .bind(name)
                .execute(&mut *c)
                .await?
                .rows_affected(),
            TxConn::Postgres(c) => sqlx::query("DELETE FROM roles WHERE name = $1")
                .bind(name)
                .execute(&mut *c)
                .await?
                .rows_affected(),
        };
        if n == 0 {
            return Ok(false);
        }
        tx.audit(audit);
        tx.commit().await?;
        Ok(true)
    }

    /// Replaces the control-plane labels of a host with `audit`, in one
    /// transaction; false (nothing recorded) when there is no such host.
    pub async fn set_host_labels_audited(
        &self,
        host_id: &str,
        labels: &Labels,
        audit: AuditEntry,
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_string(labels).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let mut tx = self.begin().await?;
        let n = match tx.conn() {
            TxConn::Sqlite(c) => sqlx::query("UPDATE hosts SET labels = ?2 WHERE id = ?1")
                .bind(host_id)
                .bind(&json)
                .execute(&mut *c)
                .await?
                .rows_affected(),
            TxConn::Postgres(c) => sqlx::query("UPDATE hosts SET labels = $2 WHERE id = $1")
                .bind(host_id)
                .bind(&json)
                .execute(&mut *c)
                .await?
                .rows_affected(),
        };
        if n == 0 {
            return Ok(false);
        }
        tx.audit(audit);
        tx.commit().await?;
        Ok(true)
    }
}
