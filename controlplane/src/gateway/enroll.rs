//! Enrollment and renewal: signs agent certificates with the control plane's
//! CA. Enrollment exchanges a one-time token and a CSR (over TLS that the agent
//! verified against the CA fingerprint in its token); renewal happens on an
//! established, authenticated stream for the identity of that stream only.
//!
//! Invariants: the agent's private key never reaches the control plane; a
//! refused enrollment stores nothing; the token's secret is never logged.
use std::sync::Arc;
use std::time::Duration;

use steward_shared::pki::{self, Ca};
use tonic::Status;

use crate::audit::{AuditEntry, Outcome, actor};
use crate::enrollment::EnrollmentToken;
use crate::store::Store;
use crate::store::identity::IssuedCert;

/// Signs agent certificates.
pub struct Enroller {
    ca: Ca,
    lifetime: Duration,
    store: Store,
}

impl Enroller {
    pub fn new(ca: Ca, lifetime: Duration, store: Store) -> Arc<Self> {
        Arc::new(Enroller { ca, lifetime, store })
    }

    /// SHA-256 fingerprint of the CA certificate (hex).
    pub fn ca_fingerprint(&self) -> Option<String> {
        self.ca.fingerprint().ok()
    }

    fn sign(&self, csr_der: &[u8], host_id: Option<&str>) -> Result<(String, String, String, i64), Status> {
        let (id, cert_pem) = self
            .ca
            .sign_agent_csr(csr_der, host_id, self.lifetime)
            .map_err(|e| Status::invalid_argument(format!("certificate signing request refused: {e}")))?;
        let der = pki::certs_from_pem(&cert_pem)
            .map_err(|e| Status::internal(e.to_string()))?
            .remove(0);
        let identity = pki::identity_from_cert(&der).map_err(|e| Status::internal(e.to_string()))?;
        Ok((id, cert_pem, identity.serial, identity.not_after * 1000))
    }

    /// `Enroll`: redeems the token and returns (host id, certificate, CA).
    pub async fn enroll(&self, token: &str, csr_der: &[u8]) -> Result<(String, String, String), Status> {
        let Some(token) = EnrollmentToken::parse(token) else {
            return Err(Status::unauthenticated("unknown or invalid enrollment token"));
        };
        let (host_id, cert_pem, serial, not_after_ms) = self.sign(csr_der, None)?;
        let issued = IssuedCert {
            host_id: &host_id,
            serial: &serial,
            not_after_ms,
            source: "enroll",
        };
        match self
            .store
            .redeem_enrollment(
                &token.id,
                &token.secret_hash(),
                &issued,
                &AuditEntry::new(actor::host(&host_id), "hosts.enroll", Outcome::Success)
                    .target(format!("host:{host_id}"))
                    .details(serde_json::json!({ "enrollment_token": &token.id, "serial": &serial })),
                steward_shared::now_ms(),
            )
            .await
        {
            Ok(Ok(labels)) => {
                tracing::info!(host = %host_id, token_id = %token.id, ?labels, "agent enrolled");
                Ok((host_id, cert_pem, self.ca.cert_pem().to_string()))
            }
            Ok(Err(refusal)) => {
                tracing::warn!(host = %host_id, token_id = %token.id, %refusal, "enrollment refused");
                let denied = AuditEntry::new(actor::host(&host_id), "hosts.enroll", Outcome::Denied)
                    .target(format!("host:{host_id}"))
                    .details(serde_json::json!({ "enrollment_token": &token.id, "reason": refusal.to_string() }));
                if let Err(error) = self.store.append_audit(denied).await {
                    tracing::error!(%error, "the refused enrollment could not be audited");
                }
                let status = match refusal {
                    crate::store::identity::EnrollRefusal::HostExists(_) => Status::already_exists(refusal.to_string()),
                    _ => Status::permission_denied(refusal.to_string()),
                };
                Err(status)
            }
            Err(error) => {
                tracing::error!(%error, "enrollment not stored");
                Err(Status::unavailable("the control plane cannot store data right now"))
            }
        }
    }

    /// Renewal for the stream's own identity (`presented_serial` is the
    /// certificate the stream connected with); returns (certificate, CA).
    /// Refused, inside the recording transaction, when the host or the
    /// presented certificate has been revoked since the stream began.
    pub async fn renew(
        &self,
        host_id: &str,
        presented_serial: &str,
        csr_der: &[u8],
    ) -> Result<(String, String), Status> {
        let (_, cert_pem, serial, not_after_ms) = self.sign(csr_der, Some(host_id))?;
        let issued = IssuedCert {
            host_id,
            serial: &serial,
            not_after_ms,
            source: "renew",
        };
        let recorded = self
            .store
            .renew_agent_cert(
                &issued,
                presented_serial,
                &AuditEntry::new(actor::host(host_id), "certs.renew", Outcome::Success)
                    .target(format!("host:{host_id}"))
                    .details(serde_json::json!({ "serial": &serial, "not_after_ms": not_after_ms })),
                steward_shared::now_ms(),
            )
            .await
            .map_err(|error| {
                tracing::error!(%error, "renewed certificate not recorded");
                Status::unavailable("the control plane cannot store data right now")
            })?;
        if let Err(refusal) = recorded {
            // The signed certificate is dropped unrecorded: it could never connect.
            tracing::warn!(host = %host_id, %refusal, "renewal refused");
            return Err(Status::permission_denied(refusal.to_string()));
        }
        tracing::info!(host = %host_id, serial = %serial, "agent certificate renewed");
        Ok((cert_pem, self.ca.cert_pem().to_string()))
    }
}
