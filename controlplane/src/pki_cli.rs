//! `steward-controlplane ca ...`: create the control plane's CA and issue
//! server and agent certificates from it. Private keys are written 0600.
//!
//! Invariant: every agent certificate issued here is recorded in the store
//! (`agent_certs`) before its files are written; the gateway refuses a
//! certificate whose serial is not recorded.
use std::path::{Path, PathBuf};
use std::time::Duration;

use steward_shared::pki::{self, Ca, PkiError};

use crate::audit::{AuditEntry, Outcome, actor};
use crate::store::identity::IssuedCert;
use crate::store::{Store, StoreError};

/// Errors of the CA commands.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("{0} already exists: refusing to overwrite a CA (move it away first)")]
    Exists(String),
    #[error("no CA in {dir}: run `steward-controlplane ca init` first ({source})")]
    NoCa { dir: String, source: PkiError },
    #[error("{0} was not signed by this control plane's CA")]
    NotOurs(String),
    #[error("the certificate could not be recorded in the database: {0}")]
    Store(#[from] StoreError),
}

pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
pub const SERVER_LIFETIME: Duration = Duration::from_secs(365 * 86_400);
pub const AGENT_LIFETIME: Duration = Duration::from_secs(90 * 86_400);

/// Creates `ca.pem` and `ca.key` (0600) in `data_dir`. Returns the CA fingerprint.
pub fn init(data_dir: &Path) -> Result<String, CaError> {
    let cert = data_dir.join("ca.pem");
    if cert.exists() {
        return Err(CaError::Exists(cert.display().to_string()));
    }
    let ca = Ca::create("Steward CA", CA_LIFETIME)?;
    pki::write_private_file(&data_dir.join("ca.key"), &ca.key_pem())?;
    pki::write_file_mode(&cert, ca.cert_pem(), 0o644)?;
    Ok(ca.fingerprint()?)
}

/// Loads the CA from `data_dir`.
pub fn load(data_dir: &Path) -> Result<Ca, CaError> {
    Ca::load_dir(data_dir).map_err(|source| CaError::NoCa {
        dir: data_dir.display().to_string(),
        source,
    })
}

/// Issues the gateway's server certificate for `names` (DNS names or IPs).
pub fn issue_server(
    data_dir: &Path,
    names: &[String],
    cert: &Path,
    key: &Path,
    lifetime: Duration,
) -> Result<(), CaError> {
    let ca = load(data_dir)?;
    let issued = ca.issue_server(names, lifetime)?;
    pki::write_private_file(key, &issued.key_pem)?;
    pki::write_file_mode(cert, &issued.cert_pem, 0o644)?;
    Ok(())
}

/// An agent certificate signed by the CA and recorded in the store.
pub struct RecordedAgentCert {
    pub host_id: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub serial: String,
}

/// Signs a certificate (and key) for each of `hosts` and records them in
/// `store` in one transaction (audited once as `certs.issue`). For a revoked
/// host this is a re-enrollment: its earlier certificates stay refused.
pub async fn issue_agents_recorded(
    ca: &Ca,
    store: &Store,
    hosts: &[String],
    lifetime: Duration,
    source: &str,
) -> Result<Vec<RecordedAgentCert>, CaError> {
    let mut issued = Vec::with_capacity(hosts.len());
    let mut not_after = Vec::with_capacity(hosts.len());
    for host_id in hosts {
        let cert = ca.issue_agent(host_id, lifetime)?;
        let der = pki::certs_from_pem(&cert.cert_pem)?.remove(0);
        let identity = pki::identity_from_cert(&der)?;
        not_after.push(identity.not_after.saturating_mul(1000));
        issued.push(RecordedAgentCert {
            host_id: host_id.clone(),
            cert_pem: cert.cert_pem,
            key_pem: cert.key_pem,
            serial: identity.serial,
        });
    }
    let records: Vec<IssuedCert<'_>> = issued
        .iter()
        .zip(&not_after)
        .map(|(c, n)| IssuedCert {
            host_id: &c.host_id,
            serial: &c.serial,
            not_after_ms: *n,
            source,
        })
        .collect();
    let details = match issued.as_slice() {
        [one] => serde_json::json!({ "serial": &one.serial, "not_after_ms": not_after[0] }),
        many => serde_json::json!({ "certificates": many.len() }),
    };
    let target = match hosts {
        [one] => format!("host:{one}"),
        _ => "hosts".to_string(),
    };
    store
        .record_issued_certs(
            &records,
            &AuditEntry::new(actor::local(), "certs.issue", Outcome::Success)
                .target(target)
                .details(details),
            steward_shared::now_ms(),
        )
        .await?;
    Ok(issued)
}

/// Records agent certificates signed by this CA before every certificate
/// was recorded (an upgrade from a version that did not record `ca
/// issue-agent` certificates). A certificate of another CA is refused; one of
/// a revoked host stays refused (the host's revocation is not cleared).
pub async fn record_agent_certs(
    data_dir: &Path,
    files: &[PathBuf],
    store: &Store,
) -> Result<Vec<(String, String)>, CaError> {
    let ca = load(data_dir)?;
    let ca_der = pki::certs_from_pem(ca.cert_pem())?.remove(0);
    let mut found = Vec::new();
    for file in files {
        let pem = pki::read_file(file)?;
        let der = pki::certs_from_pem(&pem)?.remove(0);
        if !pki::issued_by(&der, &ca_der) {
            return Err(CaError::NotOurs(file.display().to_string()));
        }
        let identity = pki::identity_from_cert(&der)?;
        found.push((
            identity.host_id,
            identity.serial,
            identity.not_after.saturating_mul(1000),
        ));
    }
    let now = steward_shared::now_ms();
    for (host_id, serial, not_after_ms) in &found {
        if !store.is_cert_revoked(host_id, serial).await? {
            continue; // recorded already
        }
        store
            .record_existing_cert(
                &IssuedCert {
                    host_id,
                    serial,
                    not_after_ms: *not_after_ms,
                    source: "cli-record",
                },
                &AuditEntry::new(actor::local(), "certs.record", Outcome::Success)
                    .target(format!("host:{host_id}"))
                    .details(serde_json::json!({ "serial": serial })),
                now,
            )
            .await?;
    }
    Ok(found.into_iter().map(|(h, s, _)| (h, s)).collect())
}

/// Issues an agent certificate for `host_id` into `out_dir` as `agent.pem`,
/// `agent.key` (0600) and `ca.pem`: the files `agent.toml` expects by
/// default. The certificate is recorded in `store` first.
pub async fn issue_agent(
    data_dir: &Path,
    host_id: &str,
    out_dir: &Path,
    lifetime: Duration,
    store: &Store,
) -> Result<Vec<PathBuf>, CaError> {
    let ca = load(data_dir)?;
    pki::validate_host_id(host_id)?;
    let issued = issue_agents_recorded(&ca, store, &[host_id.to_string()], lifetime, "cli")
        .await?
        .remove(0);
    let (cert, key, ca_path) = (
        out_dir.join("agent.pem"),
        out_dir.join("agent.key"),
        out_dir.join("ca.pem"),
    );
    pki::write_private_file(&key, &issued.key_pem)?;
    pki::write_file_mode(&cert, &issued.cert_pem, 0o644)?;
    pki::write_file_mode(&ca_path, ca.cert_pem(), 0o644)?;
    Ok(vec![cert, key, ca_path])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn init_issue_and_refuse_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite://{}", dir.path().join("s.db").display()))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let fp = init(dir.path()).unwrap();
        assert_eq!(fp.len(), 64);
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(init(dir.path()), Err(CaError::Exists(_))));
        let out = dir.path().join("agent-web");
        issue_agent(dir.path(), "web", &out, AGENT_LIFETIME, &store)
            .await
            .unwrap();
        let pem = std::fs::read_to_string(out.join("agent.pem")).unwrap();
        let der = pki::certs_from_pem(&pem).unwrap().remove(0);
        let identity = pki::identity_from_cert(&der).unwrap();
        assert_eq!(identity.host_id, "web");
        // Recorded: the gateway accepts it (an unrecorded serial is refused).
        assert!(!store.is_cert_revoked("web", &identity.serial).await.unwrap());
        assert!(store.is_cert_revoked("web", "0badc0ffee").await.unwrap());
        assert!(matches!(
            issue_agent(dir.path(), "Bad Name", &out, AGENT_LIFETIME, &store).await,
            Err(CaError::Pki(_))
        ));
        // A certificate of this CA issued before recording: refused until `ca record-agent`.
        let ca = load(dir.path()).unwrap();
        let old = ca.issue_agent("legacy", AGENT_LIFETIME).unwrap();
        let old_file = dir.path().join("legacy.pem");
        std::fs::write(&old_file, &old.cert_pem).unwrap();
        let old_serial = pki::identity_from_cert(&pki::certs_from_pem(&old.cert_pem).unwrap()[0])
            .unwrap()
            .serial;
        assert!(store.is_cert_revoked("legacy", &old_serial).await.unwrap());
        let recorded = record_agent_certs(dir.path(), std::slice::from_ref(&old_file), &store)
            .await
            .unwrap();
        assert_eq!(recorded, vec![("legacy".to_string(), old_serial.clone())]);
        assert!(!store.is_cert_revoked("legacy", &old_serial).await.unwrap());
        // Another CA's certificate is refused.
        let other = Ca::create("Other", CA_LIFETIME).unwrap();
        std::fs::write(&old_file, other.issue_agent("legacy", AGENT_LIFETIME).unwrap().cert_pem).unwrap();
        assert!(matches!(
            record_agent_certs(dir.path(), &[old_file], &store).await,
            Err(CaError::NotOurs(_))
        ));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            issue_agent(empty.path(), "web", &out, AGENT_LIFETIME, &store).await,
            Err(CaError::NoCa { .. })
        ));
    }
}
