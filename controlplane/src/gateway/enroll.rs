//! Enrollment and renewal: signs agent certificates with the control plane's
//! CA. Enrollment exchanges a one-time token and a CSR (over TLS that the agent
//! verified against the CA fingerprint in its token); renewal happens on an
//! established, authenticated stream for the identity of that stream only.
//!
//! Invariants: the agent's private key never reaches the control plane; a
//! refused enrollment stores nothing; the token's secret is never logged.
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::DefaultClock;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use steward_shared::pki::{self, Ca};
use tonic::Status;

use crate::audit::denials::{Admission, DenialLimiter};
use crate::audit::{AuditEntry, Outcome, actor};
use crate::enrollment::EnrollmentToken;
use crate::metrics::{EnrollOutcome, Metrics};
use crate::store::Store;
use crate::store::identity::{EnrollRefusal, IssuedCert};

type PeerLimiter = RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock>;

/// Rates of `Enroll` calls (from `[grpc]`).
#[derive(Debug, Clone, Copy)]
pub struct EnrollLimits {
    /// Per client address, a minute (bursting up to as many).
    pub per_address_per_minute: NonZeroU32,
    /// From all clients together, a second (bursting up to as many).
    pub per_second: NonZeroU32,
}

/// Signs agent certificates.
pub struct Enroller {
    ca: Ca,
    lifetime: Duration,
    store: Store,
    metrics: Arc<Metrics>,
    /// The audit budget of refusals, shared with the REST API.
    denials: Arc<DenialLimiter>,
    per_address: PeerLimiter,
    overall: DefaultDirectRateLimiter,
}

/// Addresses the per-address limiter remembers before it forgets the idle ones.
const PEER_LIMITER_KEYS: usize = 10_000;

impl Enroller {
    pub fn new(
        ca: Ca,
        lifetime: Duration,
        store: Store,
        metrics: Arc<Metrics>,
        denials: Arc<DenialLimiter>,
        limits: EnrollLimits,
    ) -> Arc<Self> {
        Arc::new(Enroller {
            ca,
            lifetime,
            store,
            metrics,
            denials,
            per_address: RateLimiter::keyed(
                Quota::per_minute(limits.per_address_per_minute).allow_burst(limits.per_address_per_minute),
            ),
            overall: RateLimiter::direct(Quota::per_second(limits.per_second).allow_burst(limits.per_second)),
        })
    }

    /// Whether another `Enroll` from `peer` may be served now.
    fn admit(&self, peer: IpAddr) -> Result<(), Status> {
        if self.per_address.len() > PEER_LIMITER_KEYS {
            self.per_address.retain_recent();
        }
        let limited = if self.per_address.check_key(&peer).is_err() {
            Some("this address")
        } else if self.overall.check().is_err() {
            Some("all clients")
        } else {
            None
        };
        match limited {
            None => Ok(()),
            Some(who) => {
                self.metrics.enrollment(EnrollOutcome::rate_limited);
                tracing::info!(%peer, "enrollment refused: over the rate for {who}");
                Err(Status::resource_exhausted(format!(
                    "too many enrollments from {who}: try again in a minute"
                )))
            }
        }
    }

    /// Audits a refused enrollment within the denial budget (beyond it, counted in /metrics).
    async fn audit_refusal(&self, host_id: &str, token_id: &str, refusal: &EnrollRefusal) {
        self.metrics.enrollment(EnrollOutcome::refused);
        let suppressed_before = match self.denials.admit() {
            Admission::Record { suppressed_before } => suppressed_before,
            Admission::Suppress { .. } => {
                self.metrics.denial_unaudited();
                return;
            }
        };
        let mut details = serde_json::json!({ "enrollment_token": token_id, "reason": refusal.to_string() });
        if suppressed_before > 0 {
            details["suppressed_before"] = suppressed_before.into();
        }
        // The host the CSR claims: not authenticated, only what was asked for.
        let denied = AuditEntry::new(actor::host(host_id), "hosts.enroll", Outcome::Denied)
            .target(format!("host:{host_id}"))
            .details(details);
        if let Err(error) = self.store.append_audit(denied).await {
            tracing::error!(%error, "the refused enrollment could not be audited");
        }
    }

    fn refusal_status(refusal: &EnrollRefusal) -> Status {
        match refusal {
            EnrollRefusal::HostExists(_) => Status::already_exists(refusal.to_string()),
            _ => Status::permission_denied(refusal.to_string()),
        }
    }

    /// SHA-256 fingerprint of the CA certificate (hex).
    pub fn ca_fingerprint(&self) -> Option<String> {
        self.ca.fingerprint().ok()
    }

    fn parse_csr(csr_der: &[u8]) -> Result<pki::AgentCsr, Status> {
        pki::AgentCsr::from_der(csr_der)
            .map_err(|e| Status::invalid_argument(format!("certificate signing request refused: {e}")))
    }

    fn sign(&self, csr: &pki::AgentCsr, host_id: Option<&str>) -> Result<(String, String, String, i64), Status> {
        let (id, cert_pem) = self
            .ca
            .sign_agent_request(csr, host_id, self.lifetime)
            .map_err(|e| Status::invalid_argument(format!("certificate signing request refused: {e}")))?;
        let der = pki::certs_from_pem(&cert_pem)
            .map_err(|e| Status::internal(e.to_string()))?
            .remove(0);
        let identity = pki::identity_from_cert(&der).map_err(|e| Status::internal(e.to_string()))?;
        Ok((id, cert_pem, identity.serial, identity.not_after * 1000))
    }

    /// `Enroll` from `peer`: rate-limited, the CSR parsed (for the host it
    /// claims) and the token checked before anything is signed, then
    /// redeemed; returns (host id, certificate, CA).
    pub async fn enroll(&self, token: &str, csr_der: &[u8], peer: IpAddr) -> Result<(String, String, String), Status> {
        self.admit(peer)?;
        let Some(token) = EnrollmentToken::parse(token) else {
            self.metrics.enrollment(EnrollOutcome::refused);
            return Err(Status::unauthenticated("unknown or invalid enrollment token"));
        };
        let csr = Self::parse_csr(csr_der).inspect_err(|_| self.metrics.enrollment(EnrollOutcome::refused))?;
        let claimed = match csr.proposed_host() {
            Ok(id) => id.to_string(),
            Err(e) => {
                self.metrics.enrollment(EnrollOutcome::refused);
                return Err(Status::invalid_argument(format!(
                    "certificate signing request refused: {e}"
                )));
            }
        };
        let now = steward_shared::now_ms();
        let secret_hash = token.secret_hash();
        match self.store.check_enrollment_token(&token.id, &secret_hash, now).await {
            Ok(Ok(())) => {}
            Ok(Err(refusal)) => {
                tracing::warn!(token_id = %token.id, %peer, %refusal, "enrollment refused");
                self.audit_refusal(&claimed, &token.id, &refusal).await;
                return Err(Self::refusal_status(&refusal));
            }
            Err(error) => {
                tracing::error!(%error, "enrollment token not readable");
                return Err(Status::unavailable("the control plane cannot read its data right now"));
            }
        }
        let (host_id, cert_pem, serial, not_after_ms) = self.sign(&csr, Some(&claimed))?;
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
                &secret_hash,
                &issued,
                &AuditEntry::new(actor::host(&host_id), "hosts.enroll", Outcome::Success)
                    .target(format!("host:{host_id}"))
                    .details(serde_json::json!({ "enrollment_token": &token.id, "serial": &serial })),
                steward_shared::now_ms(),
            )
            .await
        {
            Ok(Ok(labels)) => {
                self.metrics.enrollment(EnrollOutcome::enrolled);
                tracing::info!(host = %host_id, token_id = %token.id, ?labels, "agent enrolled");
                Ok((host_id, cert_pem, self.ca.cert_pem().to_string()))
            }
            Ok(Err(refusal)) => {
                tracing::warn!(host = %host_id, token_id = %token.id, %peer, %refusal, "enrollment refused");
                self.audit_refusal(&host_id, &token.id, &refusal).await;
                Err(Self::refusal_status(&refusal))
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
        let (_, cert_pem, serial, not_after_ms) = self.sign(&Self::parse_csr(csr_der)?, Some(host_id))?;
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
