//! Alerts, silences and the notification outbox, the SQL of both backends
//! side by side. Every transition (fire, resolve, ack, silence) is audited in
//! the transaction that makes it, together with the notifications it causes.
use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;
use sqlx::Row;

use super::audit::TxConn;
use super::{Backend, Store, StoreError, map_from_json};
use crate::alert::{Alert, Candidate, Matcher, Severity, Silence};
use crate::audit::{AuditEntry, Outcome};

const ALERT_COLUMNS: &str =
    "id, fingerprint, source, severity, state, summary, labels, started_ms, resolved_ms, acked_by, acked_ms, silenced";

/// A notification waiting for (or being retried against) its receiver.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub id: String,
    pub alert_id: String,
    pub receiver: String,
    /// `firing` or `resolved`.
    pub event: String,
    /// The JSON document receivers get.
    pub payload: String,
    pub attempts: i64,
}

/// What one reconciliation changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reconciled {
    pub fired: Vec<Alert>,
    pub resolved: Vec<Alert>,
}

/// A random 12-character ID (base 36).
pub fn new_id() -> String {
    let mut rng = rand::rng();
    (0..12)
        .map(|_| char::from_digit(rng.random_range(0..36), 36).unwrap_or('0'))
        .collect()
}

fn alert_from(row: &impl AlertRow) -> Result<Alert, StoreError> {
    Ok(Alert {
        id: row.s("id")?,
        fingerprint: row.s("fingerprint")?,
        source: row.s("source")?,
        severity: row.s("severity")?.parse().unwrap_or(Severity::Error),
        state: row.s("state")?,
        summary: row.s("summary")?,
        labels: map_from_json(&row.s("labels")?, "labels"),
        started_ms: row.i("started_ms")?,
        resolved_ms: row.oi("resolved_ms")?,
        acked_by: row.os("acked_by")?,
        acked_ms: row.oi("acked_ms")?,
        silenced: row.b("silenced")?,
    })
}

trait AlertRow {
    fn s(&self, c: &str) -> Result<String, sqlx::Error>;
    fn os(&self, c: &str) -> Result<Option<String>, sqlx::Error>;
    fn i(&self, c: &str) -> Result<i64, sqlx::Error>;
    fn oi(&self, c: &str) -> Result<Option<i64>, sqlx::Error>;
    fn b(&self, c: &str) -> Result<bool, sqlx::Error>;
}

macro_rules! alert_row {
    ($t:ty) => {
        impl AlertRow for $t {
            fn s(&self, c: &str) -> Result<String, sqlx::Error> {
                self.try_get(c)
            }
            fn os(&self, c: &str) -> Result<Option<String>, sqlx::Error> {
                self.try_get(c)
            }
            fn i(&self, c: &str) -> Result<i64, sqlx::Error> {
                self.try_get(c)
            }
            fn oi(&self, c: &str) -> Result<Option<i64>, sqlx::Error> {
                self.try_get(c)
            }
            fn b(&self, c: &str) -> Result<bool, sqlx::Error> {
                self.try_get(c)
            }
        }
    };
}
alert_row!(sqlx::sqlite::SqliteRow);
alert_row!(sqlx::postgres::PgRow);

/// The document a receiver gets for one transition.
pub fn payload(alert: &Alert, event: &str) -> String {
    serde_json::json!({ "version": 1, "event": event, "alert": alert }).to_string()
}

fn silence_from(
    (id, matchers, comment, created_by, starts_ms, ends_ms): (String, String, String, String, i64, i64),
) -> Silence {
    Silence {
        id,
        matchers: serde_json::from_str::<Vec<Matcher>>(&matchers).unwrap_or_default(),
        comment,
        created_by,
        starts_ms,
        ends_ms,
    }
}

impl Store {
    /// Makes the firing alerts of `source` equal to `candidates`: new
    /// fingerprints fire, firing ones not reported any more resolve. Each
    /// transition is audited (actor `system`) and queued for the receivers
    /// `route` names (none while a silence matches), in one transaction.
    pub async fn reconcile_alerts(
        &self,
        source: &str,
        candidates: &[Candidate],
        route: &(dyn Fn(&Alert) -> Vec<String> + Sync),
        now_ms: i64,
    ) -> Result<Reconciled, StoreError> {
        let wanted: BTreeMap<String, &Candidate> = candidates.iter().map(|c| (c.fingerprint(source), c)).collect();
        let silences = self.list_silences().await?;
        let mut tx = self.begin().await?;
        let firing: Vec<Alert> = {
            let sql = format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE state = 'firing' AND source = ");
            match tx.conn() {
                TxConn::Sqlite(c) => sqlx::query(sqlx::AssertSqlSafe(format!("{sql}?1")))
                    .bind(source)
                    .fetch_all(&mut *c)
                    .await?
                    .iter()
                    .map(alert_from)
                    .collect::<Result<_, _>>()?,
                TxConn::Postgres(c) => sqlx::query(sqlx::AssertSqlSafe(format!("{sql}$1 FOR UPDATE")))
                    .bind(source)
                    .fetch_all(&mut *c)
                    .await?
                    .iter()
                    .map(alert_from)
                    .collect::<Result<_, _>>()?,
            }
        };
        let have: BTreeSet<&str> = firing.iter().map(|a| a.fingerprint.as_str()).collect();
        let mut out = Reconciled::default();
        for (fp, c) in &wanted {
            if have.contains(fp.as_str()) {
                continue;
            }
            let silenced = silences.iter().any(|s| s.active(now_ms) && s.matches(&c.labels));
            let alert = Alert {
                id: new_id(),
                fingerprint: fp.clone(),
                source: source.to_string(),
                severity: c.severity,
                state: "firing".into(),
                summary: c.summary.clone(),
                labels: c.labels.clone(),
                started_ms: now_ms,
                resolved_ms: None,
                acked_by: None,
                acked_ms: None,
                silenced,
            };
            let labels = serde_json::to_string(&alert.labels).unwrap_or_else(|_| "{}".into());
            let inserted = match tx.conn() {
                TxConn::Sqlite(c) => sqlx::query(
                    "INSERT INTO alerts (id, fingerprint, source, severity, state, summary, labels, started_ms, silenced)
                     VALUES (?1, ?2, ?3, ?4, 'firing', ?5, ?6, ?7, ?8)
                     ON CONFLICT (fingerprint) WHERE state = 'firing' DO NOTHING",
                )
                .bind(&alert.id)
                .bind(&alert.fingerprint)
                .bind(source)
                .bind(alert.severity.as_str())
                .bind(&alert.summary)
                .bind(&labels)
                .bind(now_ms)
                .bind(silenced)
                .execute(&mut *c)
                .await?
                .rows_affected(),
                TxConn::Postgres(c) => sqlx::query(
                    "INSERT INTO alerts (id, fingerprint, source, severity, state, summary, labels, started_ms, silenced)
                     VALUES ($1, $2, $3, $4, 'firing', $5, $6, $7, $8)
                     ON CONFLICT (fingerprint) WHERE state = 'firing' DO NOTHING",
                )
                .bind(&alert.id)
                .bind(&alert.fingerprint)
                .bind(source)
                .bind(alert.severity.as_str())
                .bind(&alert.summary)
                .bind(&labels)
                .bind(now_ms)
                .bind(silenced)
                .execute(&mut *c)
                .await?
                .rows_affected(),
            };
            if inserted == 0 {
                continue; // another replica fired it first
            }
            if !silenced {
                queue(&mut tx, &alert, "firing", &route(&alert), now_ms).await?;
            }
            tx.audit(
                AuditEntry::new("system", "alerts.fire", Outcome::Success)
                    .target(format!("alert:{}", alert.id))
                    .details(serde_json::json!({
                        "fingerprint": alert.fingerprint, "severity": alert.severity,
                        "labels": alert.labels, "silenced": silenced,
                    })),
            );
            out.fired.push(alert);
        }
        for mut alert in firing.into_iter().filter(|a| !wanted.contains_key(&a.fingerprint)) {
            match tx.conn() {
                TxConn::Sqlite(c) => {
                    sqlx::query("UPDATE alerts SET state = 'resolved', resolved_ms = ?2 WHERE id = ?1")
                        .bind(&alert.id)
                        .bind(now_ms)
                        .execute(&mut *c)
                        .await?
                        .rows_affected()
                }
                TxConn::Postgres(c) => {
                    sqlx::query("UPDATE alerts SET state = 'resolved', resolved_ms = $2 WHERE id = $1")
                        .bind(&alert.id)
                        .bind(now_ms)
                        .execute(&mut *c)
                        .await?
                        .rows_affected()
                }
            };
            alert.state = "resolved".into();
            alert.resolved_ms = Some(now_ms);
            let silenced = silences.iter().any(|s| s.active(now_ms) && s.matches(&alert.labels));
            if !silenced && !alert.silenced {
                queue(&mut tx, &alert, "resolved", &route(&alert), now_ms).await?;
            }
            tx.audit(
                AuditEntry::new("system", "alerts.resolve", Outcome::Success)
                    .target(format!("alert:{}", alert.id))
                    .details(serde_json::json!({ "fingerprint": alert.fingerprint })),
            );
            out.resolved.push(alert);
        }
        if out.fired.is_empty() && out.resolved.is_empty() {
            return Ok(out); // nothing changed: the transaction rolls back
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Alerts, newest first; `state` = `firing` | `resolved` | None (all).
    pub async fn list_alerts(&self, state: Option<&str>, limit: i64) -> Result<Vec<Alert>, StoreError> {
        let state = state.unwrap_or("");
        let rows = match &self.backend {
            Backend::Sqlite(b) => {
                let sql = format!(
                    "SELECT {ALERT_COLUMNS} FROM alerts WHERE (?1 = '' OR state = ?1) ORDER BY started_ms DESC, id LIMIT ?2"
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(state)
                    .bind(limit)
                    .fetch_all(&b.read)
                    .await?
                    .iter()
                    .map(alert_from)
                    .collect::<Result<Vec<_>, _>>()?
            }
            Backend::Postgres(b) => {
                let sql = format!(
                    "SELECT {ALERT_COLUMNS} FROM alerts WHERE ($1 = '' OR state = $1) ORDER BY started_ms DESC, id LIMIT $2"
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(state)
                    .bind(limit)
                    .fetch_all(&b.pool)
                    .await?
                    .iter()
                    .map(alert_from)
                    .collect::<Result<Vec<_>, _>>()?
            }
        };
        Ok(rows)
    }

    /// One page of alerts, newest first (`started_ms` descending, then ID),
    /// after the `(started_ms, id)` of the previous page's last item.
    pub async fn list_alerts_page(
        &self,
        state: Option<&str>,
        severity: Option<Severity>,
        before: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<Alert>, StoreError> {
        let state = state.unwrap_or("");
        let severity = severity.map(Severity::as_str).unwrap_or("");
        let (before_ms, before_id) = before.unwrap_or((i64::MAX, ""));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let filter = "WHERE ($1 = '' OR state = $1) AND ($2 = '' OR severity = $2)
               AND (started_ms < $3 OR (started_ms = $3 AND id > $4))
             ORDER BY started_ms DESC, id LIMIT $5";
        let rows = match &self.backend {
            Backend::Sqlite(b) => {
                let sql = format!("SELECT {ALERT_COLUMNS} FROM alerts {}", filter.replace('$', "?"));
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(state)
                    .bind(severity)
                    .bind(before_ms)
                    .bind(before_id)
                    .bind(limit)
                    .fetch_all(&b.read)
                    .await?
                    .iter()
                    .map(alert_from)
                    .collect::<Result<Vec<_>, _>>()?
            }
            Backend::Postgres(b) => {
                let sql = format!("SELECT {ALERT_COLUMNS} FROM alerts {filter}");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(state)
                    .bind(severity)
                    .bind(before_ms)
                    .bind(before_id)
                    .bind(limit)
                    .fetch_all(&b.pool)
                    .await?
                    .iter()
                    .map(alert_from)
                    .collect::<Result<Vec<_>, _>>()?
            }
        };
        Ok(rows)
    }

    /// Acknowledges an alert (audited); None when there is no such alert.
    /// Acknowledging twice keeps the first acknowledgement.
    pub async fn ack_alert(
        &self,
        id: &str,
        by: &str,
        audit: AuditEntry,
        now_ms: i64,
    ) -> Result<Option<Alert>, StoreError> {
        let mut tx = self.begin().await?;
        let n = match tx.conn() {
            TxConn::Sqlite(c) => {
                sqlx::query("UPDATE alerts SET acked_by = ?2, acked_ms = ?3 WHERE id = ?1 AND acked_ms IS NULL")
                    .bind(id)
                    .bind(by)
                    .bind(now_ms)
                    .execute(&mut *c)
                    .await?
                    .rows_affected()
            }
            TxConn::Postgres(c) => {
                sqlx::query("UPDATE alerts SET acked_by = $2, acked_ms = $3 WHERE id = $1 AND acked_ms IS NULL")
                    .bind(id)
                    .bind(by)
                    .bind(now_ms)
                    .execute(&mut *c)
                    .await?
                    .rows_affected()
            }
        };
        if n > 0 {
            tx.audit(audit);
            tx.commit().await?;
        } else {
            drop(tx);
        }
        self.get_alert(id).await
    }

    pub async fn get_alert(&self, id: &str) -> Result<Option<Alert>, StoreError> {
        let row = match &self.backend {
            Backend::Sqlite(b) => sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {ALERT_COLUMNS} FROM alerts WHERE id = ?1"
            )))
            .bind(id)
            .fetch_optional(&b.read)
            .await?
            .map(|r| alert_from(&r))
            .transpose()?,
            Backend::Postgres(b) => sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {ALERT_COLUMNS} FROM alerts WHERE id = $1"
            )))
            .bind(id)
            .fetch_optional(&b.pool)
            .await?
            .map(|r| alert_from(&r))
            .transpose()?,
        };
        Ok(row)
    }

    /// Creates a silence (audited).
    pub async fn create_silence(&self, s: &Silence, audit: AuditEntry) -> Result<(), StoreError> {
        let matchers = serde_json::to_string(&s.matchers).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let mut tx = self.begin().await?;
        match tx.conn() {
            TxConn::Sqlite(c) => {
                sqlx::query(
                    "INSERT INTO silences (id, matchers, comment, created_by, starts_ms, ends_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .bind(&s.id)
                .bind(&matchers)
                .bind(&s.comment)
                .bind(&s.created_by)
                .bind(s.starts_ms)
                .bind(s.ends_ms)
                .execute(&mut *c)
                .await?;
            }
            TxConn::Postgres(c) => {
                sqlx::query(
                    "INSERT INTO silences (id, matchers, comment, created_by, starts_ms, ends_ms) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&s.id)
                .bind(&matchers)
                .bind(&s.comment)
                .bind(&s.created_by)
                .bind(s.starts_ms)
                .bind(s.ends_ms)
                .execute(&mut *c)
                .await?;
            }
        }
        tx.audit(audit);
        tx.commit().await?;
        Ok(())
    }

    /// Ends a silence now (audited); false when there is no such silence.
    pub async fn expire_silence(&self, id: &str, audit: AuditEntry, now_ms: i64) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let n = match tx.conn() {
            TxConn::Sqlite(c) => sqlx::query("UPDATE silences SET ends_ms = ?2 WHERE id = ?1 AND ends_ms > ?2")
                .bind(id)
                .bind(now_ms)
                .execute(&mut *c)
                .await?
                .rows_affected(),
            TxConn::Postgres(c) => sqlx::query("UPDATE silences SET ends_ms = $2 WHERE id = $1 AND ends_ms > $2")
                .bind(id)
                .bind(now_ms)
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

    /// Every silence, newest first.
    pub async fn list_silences(&self) -> Result<Vec<Silence>, StoreError> {
        let sql =
            "SELECT id, matchers, comment, created_by, starts_ms, ends_ms FROM silences ORDER BY starts_ms DESC, id";
        let rows: Vec<(String, String, String, String, i64, i64)> = match &self.backend {
            Backend::Sqlite(b) => sqlx::query_as(sql).fetch_all(&b.read).await?,
            Backend::Postgres(b) => sqlx::query_as(sql).fetch_all(&b.pool).await?,
        };
        Ok(rows.into_iter().map(silence_from).collect())
    }

    /// Claims up to `limit` notifications due at `now_ms`, leasing them for
    /// `lease_ms` (a replica that dies mid-delivery leaves them to be retried).
    pub async fn claim_notifications(
        &self,
        now_ms: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<Notification>, StoreError> {
        let rows = match &self.backend {
            Backend::Sqlite(b) => sqlx::query(
                "UPDATE alert_notifications SET next_attempt_ms = ?2
                 WHERE id IN (SELECT id FROM alert_notifications
                              WHERE delivered_ms IS NULL AND next_attempt_ms <= ?1
                              ORDER BY next_attempt_ms LIMIT ?3)
                 RETURNING id, alert_id, receiver, event, payload, attempts",
            )
            .bind(now_ms)
            .bind(now_ms + lease_ms)
            .bind(limit)
            .fetch_all(&b.write)
            .await?
            .iter()
            .map(|r| {
                notification(
                    r.try_get(0)?,
                    r.try_get(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                    r.try_get(4)?,
                    r.try_get(5)?,
                )
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?,
            Backend::Postgres(b) => sqlx::query(
                "UPDATE alert_notifications SET next_attempt_ms = $2
                 WHERE id IN (SELECT id FROM alert_notifications
                              WHERE delivered_ms IS NULL AND next_attempt_ms <= $1
                              ORDER BY next_attempt_ms LIMIT $3 FOR UPDATE SKIP LOCKED)
                 RETURNING id, alert_id, receiver, event, payload, attempts",
            )
            .bind(now_ms)
            .bind(now_ms + lease_ms)
            .bind(limit)
            .fetch_all(&b.pool)
            .await?
            .iter()
            .map(|r| {
                notification(
                    r.try_get(0)?,
                    r.try_get(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                    r.try_get(4)?,
                    r.try_get(5)?,
                )
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?,
        };
        Ok(rows)
    }

    /// Records the outcome of one delivery attempt.
    pub async fn notification_attempted(
        &self,
        id: &str,
        result: Result<(), &str>,
        retry_at_ms: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let (delivered, next, error) = match result {
            Ok(()) => (Some(now_ms), now_ms, ""),
            Err(e) => (None, retry_at_ms, e),
        };
        match &self.backend {
            Backend::Sqlite(b) => {
                sqlx::query(
                    "UPDATE alert_notifications SET attempts = attempts + 1, delivered_ms = ?2, next_attempt_ms = ?3,
                        last_error = ?4 WHERE id = ?1",
                )
                .bind(id)
                .bind(delivered)
                .bind(next)
                .bind(error)
                .execute(&b.write)
                .await?;
            }
            Backend::Postgres(b) => {
                sqlx::query(
                    "UPDATE alert_notifications SET attempts = attempts + 1, delivered_ms = $2, next_attempt_ms = $3,
                        last_error = $4 WHERE id = $1",
                )
                .bind(id)
                .bind(delivered)
                .bind(next)
                .bind(error)
                .execute(&b.pool)
                .await?;
            }
        }
        Ok(())
    }

    /// Notifications not yet delivered, per receiver (for metrics and tests).
    pub async fn undelivered_notifications(&self) -> Result<BTreeMap<String, i64>, StoreError> {
        let sql = "SELECT receiver, COUNT(*) FROM alert_notifications WHERE delivered_ms IS NULL GROUP BY receiver";
        let rows: Vec<(String, i64)> = match &self.backend {
            Backend::Sqlite(b) => sqlx::query_as(sql).fetch_all(&b.read).await?,
            Backend::Postgres(b) => sqlx::query_as(sql).fetch_all(&b.pool).await?,
        };
        Ok(rows.into_iter().collect())
    }
}

fn notification(
    id: String,
    alert_id: String,
    receiver: String,
    event: String,
    payload: String,
    attempts: i64,
) -> Result<Notification, sqlx::Error> {
    Ok(Notification {
        id,
        alert_id,
        receiver,
        event,
        payload,
        attempts,
    })
}

async fn queue(
    tx: &mut super::audit::StoreTx,
    alert: &Alert,
    event: &str,
    receivers: &[String],
    now_ms: i64,
) -> Result<(), StoreError> {
    let body = payload(alert, event);
    for receiver in receivers {
        let id = new_id();
        match tx.conn() {
            TxConn::Sqlite(c) => {
                sqlx::query(
                    "INSERT INTO alert_notifications (id, alert_id, receiver, event, payload, attempts, next_attempt_ms,
                                                      last_error, created_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, '', ?6)",
                )
                .bind(&id)
                .bind(&alert.id)
                .bind(receiver)
                .bind(event)
                .bind(&body)
                .bind(now_ms)
                .execute(&mut *c)
                .await?;
            }
            TxConn::Postgres(c) => {
                sqlx::query(
                    "INSERT INTO alert_notifications (id, alert_id, receiver, event, payload, attempts, next_attempt_ms,
                                                      last_error, created_ms)
                     VALUES ($1, $2, $3, $4, $5, 0, $6, '', $6)",
                )
                .bind(&id)
                .bind(&alert.id)
                .bind(receiver)
                .bind(event)
                .bind(&body)
                .bind(now_ms)
                .execute(&mut *c)
                .await?;
            }
        }
    }
    Ok(())
}
