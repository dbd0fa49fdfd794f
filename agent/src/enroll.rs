//! Enrollment and certificate lifecycle on the agent: exchanges a one-time
//! token and a certificate signing request for a certificate, over TLS whose
//! server is verified against the CA fingerprint in the token; renews over the
//! stream once two thirds of the certificate's lifetime have passed.
//!
//! Invariants: the private key is generated here, written 0600, and never
//! sent; the CA is trusted only if its SHA-256 fingerprint equals the pinned
//! one; a renewal changes only the certificate file, atomically (same key).
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use steward_shared::pki;
use steward_shared::proto::{EnrollRequest, agent_gateway_client::AgentGatewayClient};
use tonic::transport::{ClientTlsConfig, Endpoint};

/// Enrollment failures, each with what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollError {
    #[error("the enrollment token is malformed: expected stwe_<id>_<secret>_<ca-fingerprint>")]
    BadToken,
    #[error("invalid server URL {0:?}: expected https://HOST:PORT")]
    Url(String),
    #[error("{0}")]
    Pki(#[from] pki::PkiError),
    #[error("cannot reach the control plane: {0}")]
    Connect(String),
    #[error("the control plane refused the enrollment: {0}")]
    Refused(String),
    #[error("the control plane's CA does not match the fingerprint in the token")]
    CaMismatch,
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{0} already holds a valid certificate: this agent is enrolled (use --force to enroll again)")]
    AlreadyEnrolled(String),
    #[error("renewed certificate refused, the current one is kept: {0}")]
    RenewalRefused(String),
}

/// Where the identity files live.
#[derive(Debug, Clone)]
pub struct IdentityPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The CA fingerprint inside an enrollment token (`stwe_<id>_<secret>_<fp>`).
pub fn token_fingerprint(token: &str) -> Option<String> {
    let rest = token.trim().strip_prefix("stwe_")?;
    let fp = rest.rsplit('_').next()?;
    (fp.len() == 64 && fp.bytes().all(|b| b.is_ascii_hexdigit())).then(|| fp.to_ascii_lowercase())
}

/// A host id derived from the machine's hostname (lower case, invalid characters replaced).
pub fn default_host_id() -> String {
    let raw = hostname::get()
        .map(|h| h.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let id: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .skip_while(|c| !c.is_ascii_alphanumeric())
        .take(63)
        .collect();
    if pki::validate_host_id(&id).is_ok() {
        id
    } else {
        "localhost".to_string()
    }
}

/// Verifies the server against a CA that is accepted only if its SHA-256
/// fingerprint is the pinned one; the CA itself comes from the server's chain.
#[derive(Debug)]
struct PinnedCa {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| pki::fingerprint_sha256(c) == self.fingerprint)
        else {
            return Err(rustls::Error::General(
                "the server did not present the pinned CA".into(),
            ));
        };
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Seconds since the epoch at which the certificate at `path` expires, and its lifetime start.
pub fn cert_validity(path: &Path) -> Option<(i64, i64)> {
    let pem = std::fs::read_to_string(path).ok()?;
    let der = pki::certs_from_pem(&pem).ok()?.into_iter().next()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    Some((
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    ))
}

/// Whether the certificate has passed two thirds of its lifetime (time to renew).
pub fn due_for_renewal(path: &Path, now_secs: i64) -> bool {
    match cert_validity(path) {
        Some((from, to)) if to > from => now_secs >= from + (to - from) * 2 / 3,
        _ => false,
    }
}

fn write(path: &Path, contents: &str, mode: u32) -> Result<(), EnrollError> {
    pki::write_file_mode(path, contents, mode).map_err(|e| EnrollError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Enrolls this agent: new key, CSR for `host_id`, `Enroll` call with the
/// pinned CA, then the key (0600), certificate and CA are written. Returns the
/// host id the control plane issued the certificate for.
pub async fn enroll(
    url: &str,
    token: &str,
    host_id: &str,
    paths: &IdentityPaths,
    server_name: Option<&str>,
    force: bool,
) -> Result<String, EnrollError> {
    let fingerprint = token_fingerprint(token).ok_or(EnrollError::BadToken)?;
    if !force
        && let Some((_, not_after)) = cert_validity(&paths.cert)
        && not_after > steward_shared::now_ms() / 1000
    {
        return Err(EnrollError::AlreadyEnrolled(paths.cert.display().to_string()));
    }
    let key_pem = pki::new_private_key_pem()?;
    let csr = pki::agent_csr(&key_pem, host_id)?;

    let uri: http::Uri = url.parse().map_err(|_| EnrollError::Url(url.to_string()))?;
    if uri.scheme_str() != Some("https") {
        return Err(EnrollError::Url(url.to_string()));
    }
    let domain = match server_name {
        Some(n) => n.to_string(),
        None => uri
            .host()
            .ok_or_else(|| EnrollError::Url(url.to_string()))?
            .trim_matches(['[', ']'])
            .to_string(),
    };
    let verifier = Arc::new(PinnedCa {
        fingerprint: fingerprint.clone(),
        provider: Arc::new(rustls::crypto::ring::default_provider()),
    });
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|_| EnrollError::Url(url.to_string()))?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .tls_config_with_verifier(ClientTlsConfig::new().domain_name(domain), verifier)
        .map_err(|e| EnrollError::Connect(e.to_string()))?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| EnrollError::Connect(error_chain(&e)))?;
    let resp = AgentGatewayClient::new(channel)
        .enroll(EnrollRequest {
            token: token.trim().to_string(),
            csr_der: csr,
        })
        .await
        .map_err(|s| EnrollError::Refused(s.message().to_string()))?
        .into_inner();

    // Trust only the CA we pinned, and only a certificate for our own key.
    let ca_der = pki::certs_from_pem(&resp.ca_pem)?.remove(0);
    if pki::fingerprint_sha256(&ca_der) != fingerprint {
        return Err(EnrollError::CaMismatch);
    }
    let certs = pki::certs_from_pem(&resp.cert_pem)?;
    let key = pki::key_from_pem(&key_pem)?;
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .and_then(|b| {
            b.with_root_certificates(rustls::RootCertStore::empty())
                .with_client_auth_cert(certs, key)
        })
        .map_err(|e| EnrollError::Refused(format!("the issued certificate does not fit our key: {e}")))?;

    write(&paths.key, &key_pem, 0o600)?;
    write(&paths.ca, &resp.ca_pem, 0o644)?;
    write(&paths.cert, &resp.cert_pem, 0o644)?;
    Ok(resp.host_id)
}

/// A CSR for renewal: same key, same identity.
pub fn renewal_csr(paths: &IdentityPaths) -> Result<Vec<u8>, EnrollError> {
    let key = std::fs::read_to_string(&paths.key).map_err(|e| EnrollError::File {
        path: paths.key.display().to_string(),
        message: e.to_string(),
    })?;
    let pem = std::fs::read_to_string(&paths.cert).map_err(|e| EnrollError::File {
        path: paths.cert.display().to_string(),
        message: e.to_string(),
    })?;
    let der = pki::certs_from_pem(&pem)?.remove(0);
    let id = pki::identity_from_cert(&der)?;
    Ok(pki::agent_csr(&key, &id.host_id)?)
}

/// Installs a renewed certificate (atomic rename over the old one), but only
/// one that chains to the pinned CA (`paths.ca`) as a client certificate, is
/// for this agent's own key (`paths.key`) and names the same host as the
/// current certificate; anything else is refused and the old file kept.
pub fn install_renewed(paths: &IdentityPaths, cert_pem: &str) -> Result<(), EnrollError> {
    check_renewed(paths, cert_pem).map_err(EnrollError::RenewalRefused)?;
    write(&paths.cert, cert_pem, 0o644)
}

fn check_renewed(paths: &IdentityPaths, cert_pem: &str) -> Result<(), String> {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
    let chain = pki::certs_from_pem(cert_pem).map_err(|e| e.to_string())?;
    let (leaf, intermediates) = chain.split_first().ok_or("no certificate")?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in pki::certs_from_pem(&read(&paths.ca)?).map_err(|e| format!("{}: {e}", paths.ca.display()))? {
        roots.add(ca).map_err(|e| format!("{}: {e}", paths.ca.display()))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| e.to_string())?;
    verifier
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .map_err(|e| {
            format!(
                "it is not an agent certificate of the pinned CA {}: {e}",
                paths.ca.display()
            )
        })?;

    let key = pki::key_from_pem(&read(&paths.key)?).map_err(|e| e.to_string())?;
    let certified = rustls::sign::CertifiedKey::from_der(chain.clone(), key, &provider);
    if !certified.is_ok_and(|c| c.keys_match().is_ok()) {
        return Err(format!("it is not for this agent's key ({})", paths.key.display()));
    }

    let new_id = pki::identity_from_cert(leaf).map_err(|e| e.to_string())?;
    let current = pki::certs_from_pem(&read(&paths.cert)?).map_err(|e| e.to_string())?;
    let current_id = pki::identity_from_cert(&current[0]).map_err(|e| e.to_string())?;
    if new_id.host_id != current_id.host_id {
        return Err(format!(
            "it names host {:?}, this agent is {:?}",
            new_id.host_id, current_id.host_id
        ));
    }
    Ok(())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An enrolled agent's files: CA, key, and a certificate for `host`.
    fn enrolled(dir: &Path, ca: &pki::Ca, host: &str) -> (IdentityPaths, String) {
        let paths = IdentityPaths {
            ca: dir.join("ca.pem"),
            cert: dir.join("agent.pem"),
            key: dir.join("agent.key"),
        };
        let key = pki::new_private_key_pem().unwrap();
        let cert = renewed(ca, &key, host);
        std::fs::write(&paths.ca, ca.cert_pem()).unwrap();
        std::fs::write(&paths.key, &key).unwrap();
        std::fs::write(&paths.cert, &cert).unwrap();
        (paths, key)
    }

    /// What the control plane sends back for a CSR of `key` naming `host`.
    fn renewed(ca: &pki::Ca, key: &str, host: &str) -> String {
        let csr = pki::agent_csr(key, host).unwrap();
        ca.sign_agent_csr(&csr, None, Duration::from_secs(600)).unwrap().1
    }

    #[test]
    fn only_a_renewal_from_the_pinned_ca_for_our_key_and_host_is_installed() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let ca = pki::Ca::create("pinned", Duration::from_secs(3600)).unwrap();
        let (paths, key) = enrolled(dir.path(), &ca, "web-01");
        let before = std::fs::read_to_string(&paths.cert).unwrap();
        let other_ca = pki::Ca::create("pinned", Duration::from_secs(3600)).unwrap();
        let other_key = pki::new_private_key_pem().unwrap();
        for (what, pem, expect) in [
            ("another CA", renewed(&other_ca, &key, "web-01"), "pinned CA"),
            ("another key", renewed(&ca, &other_key, "web-01"), "this agent's key"),
            ("another host", renewed(&ca, &key, "web-02"), "names host \"web-02\""),
            (
                "a server certificate",
                {
                    let s = ca.issue_server(&["web-01".into()], Duration::from_secs(600)).unwrap();
                    s.cert_pem
                },
                "pinned CA",
            ),
        ] {
            let err = install_renewed(&paths, &pem).unwrap_err();
            assert!(matches!(err, EnrollError::RenewalRefused(_)), "{what}: {err}");
            assert!(err.to_string().contains(expect), "{what}: {err}");
            assert_eq!(std::fs::read_to_string(&paths.cert).unwrap(), before, "{what}");
            assert_eq!(std::fs::read_to_string(&paths.key).unwrap(), key, "{what}");
        }
        let good = renewed(&ca, &key, "web-01");
        install_renewed(&paths, &good).unwrap();
        assert_eq!(std::fs::read_to_string(&paths.cert).unwrap(), good);
        assert_eq!(std::fs::read_to_string(&paths.key).unwrap(), key);
    }

    #[test]
    fn the_fingerprint_comes_from_the_token() {
        let fp = "0a".repeat(32);
        assert_eq!(
            token_fingerprint(&format!("stwe_abc_secretsecretsecret_{fp}")),
            Some(fp.clone())
        );
        assert_eq!(token_fingerprint("stwe_abc_secret_short"), None);
        assert_eq!(token_fingerprint(&format!("stw_abc_secret_{fp}")), None);
    }

    #[test]
    fn renewal_is_due_after_two_thirds_of_the_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let ca = pki::Ca::create("t", Duration::from_secs(3600)).unwrap();
        let cert = ca.issue_agent("h", Duration::from_secs(3000)).unwrap();
        let path = dir.path().join("agent.pem");
        std::fs::write(&path, cert.cert_pem).unwrap();
        let (from, to) = cert_validity(&path).unwrap();
        assert!(!due_for_renewal(&path, from + (to - from) / 2));
        assert!(due_for_renewal(&path, from + (to - from) * 2 / 3 + 1));
        assert!(!due_for_renewal(&dir.path().join("missing.pem"), 0));
        assert!(
            default_host_id()
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-._".contains(c))
        );
    }
}
