//! PKI helpers: the control plane's own CA, server and agent certificates,
//! and reading an agent's identity from a verified peer certificate.
//!
//! Invariant: an agent's identity is the Common Name of a certificate issued by
//! the Steward CA with the `clientAuth` extended key usage. It is never taken
//! from a protocol message.
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Duration;
use time::OffsetDateTime;

/// Errors of the PKI helpers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
    #[error(
        "invalid host id {0:?}: use 1-63 characters of a-z, 0-9, '-', '_' and '.', starting with a letter or digit"
    )]
    InvalidHostId(String),
}

/// A PEM certificate and its PEM private key.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The control plane's certificate authority.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// Checks a host identity: it becomes a certificate Common Name and a URL path
/// segment, so it is restricted to a DNS-label-like alphabet.
pub fn validate_host_id(id: &str) -> Result<(), PkiError> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(PkiError::InvalidHostId(id.to_string()))
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // no leading zero byte
    SerialNumber::from_slice(&bytes)
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = OffsetDateTime::now_utc();
    // Allow for clock skew between the control plane and agents: five minutes,
    // or a tenth of a short lifetime (so "two thirds of the lifetime", when
    // renewal is due, stays close to two thirds of the time actually granted).
    let skew = lifetime.min(Duration::from_secs(3000)) / 10;
    params.not_before = now - time::Duration::seconds(skew.as_secs() as i64);
    params.not_after = now + time::Duration::seconds(lifetime.as_secs() as i64);
}

impl Ca {
    /// Creates a new CA (ECDSA P-256, valid for `lifetime`).
    pub fn create(common_name: &str, lifetime: Duration) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "Steward");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        validity(&mut params, lifetime);
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its PEM certificate and PEM private key.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            issuer,
        })
    }

    /// Loads a CA from `ca.pem` and `ca.key` in `dir`.
    pub fn load_dir(dir: &Path) -> Result<Self, PkiError> {
        let cert = read_file(&dir.join("ca.pem"))?;
        let key = read_file(&dir.join("ca.key"))?;
        Self::load(&cert, &key)
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The private key in PEM; write it only with [`write_private_file`].
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// SHA-256 fingerprint of the CA certificate (hex), used to pin the CA.
    pub fn fingerprint(&self) -> Result<String, PkiError> {
        let der = first_cert_der(&self.cert_pem)?;
        Ok(fingerprint_sha256(&der))
    }

    /// Issues a server certificate for the given DNS names and IP addresses.
    pub fn issue_server(&self, names: &[String], lifetime: Duration) -> Result<IssuedCert, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().map(String::as_str).unwrap_or("steward-controlplane"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, lifetime);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues an agent (client) certificate whose Common Name is `host_id`.
    pub fn issue_agent(&self, host_id: &str, lifetime: Duration) -> Result<IssuedCert, PkiError> {
        validate_host_id(host_id)?;
        let key = KeyPair::generate()?;
        let cert_pem = self.sign_agent_key(&key, host_id, lifetime)?;
        Ok(IssuedCert {
            cert_pem,
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs an agent certificate for a public key the agent generated itself
    /// (the key never leaves the host). Returns the certificate PEM.
    pub fn sign_agent_key(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        host_id: &str,
        lifetime: Duration,
    ) -> Result<String, PkiError> {
        validate_host_id(host_id)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host_id);
        dn.push(DnType::OrganizationalUnitName, "steward-agent");
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(format!("urn:steward:host:{host_id}").try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, lifetime);
        Ok(params.signed_by(public_key, &self.issuer)?.pem())
    }
}

/// A new agent private key (ECDSA P-256), PEM. Generated on the host; never sent.
pub fn new_private_key_pem() -> Result<String, PkiError> {
    Ok(KeyPair::generate()?.serialize_pem())
}

/// A certificate signing request (DER) for `key_pem`, proposing `host_id` as
/// the certificate's Common Name.
pub fn agent_csr(key_pem: &str, host_id: &str) -> Result<Vec<u8>, PkiError> {
    validate_host_id(host_id)?;
    let key = KeyPair::from_pem(key_pem)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, host_id);
    params.distinguished_name = dn;
    Ok(params.serialize_request(&key)?.der().to_vec())
}

/// A parsed certificate signing request whose signature has been verified:
/// what an agent proposes before anything is signed.
pub struct AgentCsr {
    params: rcgen::CertificateSigningRequestParams,
    proposed: Option<String>,
}

impl AgentCsr {
    /// Parses a CSR (DER) and verifies its signature.
    pub fn from_der(csr_der: &[u8]) -> Result<Self, PkiError> {
        let der = rustls_pki_types::CertificateSigningRequestDer::from(csr_der.to_vec());
        let params = rcgen::CertificateSigningRequestParams::from_der(&der)?;
        let proposed = match params.params.distinguished_name.get(&DnType::CommonName) {
            Some(rcgen::DnValue::Utf8String(s)) => Some(s.clone()),
            Some(rcgen::DnValue::PrintableString(s)) => Some(s.as_str().to_string()),
            Some(rcgen::DnValue::Ia5String(s)) => Some(s.as_str().to_string()),
            _ => None,
        };
        Ok(Self { params, proposed })
    }

    /// The host ID the CSR proposes (its Common Name), when it is a valid one.
    pub fn proposed_host(&self) -> Result<&str, PkiError> {
        let id = self
            .proposed
            .as_deref()
            .ok_or_else(|| PkiError::InvalidCertificate("the CSR names no host (Common Name)".into()))?;
        validate_host_id(id)?;
        Ok(id)
    }
}

impl Ca {
    /// Signs an agent certificate for the public key in a CSR (whose signature
    /// is verified). The identity is `host_id` when given, else the CSR's
    /// Common Name. Returns (host id, certificate PEM).
    pub fn sign_agent_csr(
        &self,
        csr_der: &[u8],
        host_id: Option<&str>,
        lifetime: Duration,
    ) -> Result<(String, String), PkiError> {
        self.sign_agent_request(&AgentCsr::from_der(csr_der)?, host_id, lifetime)
    }

    /// [`Ca::sign_agent_csr`] for a CSR already parsed.
    pub fn sign_agent_request(
        &self,
        csr: &AgentCsr,
        host_id: Option<&str>,
        lifetime: Duration,
    ) -> Result<(String, String), PkiError> {
        let id = match host_id {
            Some(id) => id.to_string(),
            None => csr.proposed_host()?.to_string(),
        };
        let cert = self.sign_agent_key(&csr.params.public_key, &id, lifetime)?;
        Ok((id, cert))
    }
}

/// What the gateway learns from a verified agent certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub host_id: String,
    /// Certificate serial number, hex.
    pub serial: String,
    /// Expiry, seconds since the Unix epoch.
    pub not_after: i64,
}

/// Reads the agent identity from a DER certificate that rustls has already
/// verified against the Steward CA.
pub fn identity_from_cert(der: &[u8]) -> Result<PeerIdentity, PkiError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::InvalidCertificate(e.to_string()))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| PkiError::InvalidCertificate("certificate has no Common Name".into()))?
        .to_string();
    validate_host_id(&cn)?;
    Ok(PeerIdentity {
        host_id: cn,
        serial: hex::encode(cert.raw_serial()),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// Whether `cert` (DER) was signed by the key of `issuer` (DER) and names it
/// as its issuer. Validity dates are not checked here.
pub fn issued_by(cert: &[u8], issuer: &[u8]) -> bool {
    let (Ok((_, cert)), Ok((_, issuer))) = (
        x509_parser::parse_x509_certificate(cert),
        x509_parser::parse_x509_certificate(issuer),
    ) else {
        return false;
    };
    cert.issuer() == issuer.subject() && cert.verify_signature(Some(issuer.public_key())).is_ok()
}

/// Expiry (seconds since the epoch) of every certificate in a PEM bundle, in order.
pub fn not_after_of_pem_chain(pem: &str) -> Result<Vec<(String, i64)>, PkiError> {
    let ders = certs_from_pem(pem)?;
    let mut out = Vec::with_capacity(ders.len());
    for der in ders {
        let (_, cert) =
            x509_parser::parse_x509_certificate(&der).map_err(|e| PkiError::InvalidCertificate(e.to_string()))?;
        out.push((cert.subject().to_string(), cert.validity().not_after.timestamp()));
    }
    Ok(out)
}

/// SHA-256 over DER bytes, lower-case hex.
pub fn fingerprint_sha256(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// All certificates in a PEM bundle.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| PkiError::InvalidCertificate(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(PkiError::InvalidCertificate("no CERTIFICATE block in PEM".into()));
    }
    Ok(certs)
}

fn first_cert_der(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    Ok(certs_from_pem(pem)?.remove(0))
}

/// The private key in a PEM file (PKCS#8, SEC1 or PKCS#1).
pub fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| PkiError::InvalidCertificate(format!("no usable private key in PEM: {e}")))
}

/// Reads a whole file, naming it in the error.
pub fn read_file(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|e| PkiError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Writes a file that only its owner may read (mode 0600), atomically (see
/// [`write_file_mode`]).
pub fn write_private_file(path: &Path, contents: &str) -> Result<(), PkiError> {
    write_file_mode(path, contents, 0o600)
}

/// Writes a file with the given mode, atomically: the content goes to a new
/// file with a random name in the same directory, created by
/// [`create_temp_file`] (so it has its mode before the first byte and no
/// planted symlink is followed), synced, then renamed over the target (a
/// rename replaces a symlink at the target; it never writes through it).
pub fn write_file_mode(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    let tmp = write_temp(path, contents, mode)?;
    tmp.persist(path).map_err(|e| file_error(path, e.error))?;
    sync_parent(path);
    Ok(())
}

/// Like [`write_private_file`], but never replaces an existing file: fails
/// with [`std::io::ErrorKind::AlreadyExists`] in the message when `path`
/// exists (or appears meanwhile, from another process).
pub fn create_private_file(path: &Path, contents: &str) -> Result<(), PkiError> {
    let tmp = write_temp(path, contents, 0o600)?;
    tmp.persist_noclobber(path).map_err(|e| file_error(path, e.error))?;
    sync_parent(path);
    Ok(())
}

fn file_error(path: &Path, e: std::io::Error) -> PkiError {
    PkiError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
}

fn write_temp(path: &Path, contents: &str, mode: u32) -> Result<tempfile::NamedTempFile, PkiError> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let mut tmp = create_temp_file(path, mode)?;
    let err = |e| file_error(path, e);
    // The umask may have narrowed the mode at creation; never widen past it.
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode & 0o777))
        .map_err(err)?;
    tmp.as_file_mut().write_all(contents.as_bytes()).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    Ok(tmp)
}

/// A new, empty file beside `path` (creating its directory), with a random
/// name (`.NAME.XXXXXXXXXXXX.tmp`), opened `O_CREAT | O_EXCL | O_NOFOLLOW`
/// with `mode` (less the umask) from creation. Removed when dropped unless
/// persisted.
pub fn create_temp_file(path: &Path, mode: u32) -> Result<tempfile::NamedTempFile, PkiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e| file_error(path, e);
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let prefix = format!(".{name}.");
    tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .rand_bytes(12)
        .make_in(dir, |p| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode & 0o777)
                .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
                .open(p)
        })
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_identity_comes_from_the_common_name() {
        let ca = Ca::create("Test CA", Duration::from_secs(3600)).unwrap();
        let agent = ca.issue_agent("web-01", Duration::from_secs(600)).unwrap();
        let der = first_cert_der(&agent.cert_pem).unwrap();
        let id = identity_from_cert(&der).unwrap();
        assert_eq!(id.host_id, "web-01");
        assert!(!id.serial.is_empty());
        let reloaded = Ca::load(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(reloaded.fingerprint().unwrap(), ca.fingerprint().unwrap());
        let other = reloaded.issue_agent("web-02", Duration::from_secs(600)).unwrap();
        assert_ne!(
            identity_from_cert(&first_cert_der(&other.cert_pem).unwrap())
                .unwrap()
                .serial,
            id.serial
        );
    }

    #[test]
    fn a_csr_is_signed_for_the_key_the_agent_kept() {
        let ca = Ca::create("Test CA", Duration::from_secs(3600)).unwrap();
        let key = new_private_key_pem().unwrap();
        let csr = agent_csr(&key, "db-7").unwrap();
        let (id, cert) = ca.sign_agent_csr(&csr, None, Duration::from_secs(600)).unwrap();
        assert_eq!(id, "db-7");
        let der = first_cert_der(&cert).unwrap();
        assert_eq!(identity_from_cert(&der).unwrap().host_id, "db-7");
        // The certificate carries the agent's public key: key and cert form a usable pair.
        let certs = certs_from_pem(&cert).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_client_auth_cert(certs, key_from_pem(&key).unwrap())
            .unwrap();
        // The control plane may override the proposed name; garbage is refused.
        assert_eq!(
            ca.sign_agent_csr(&csr, Some("other"), Duration::from_secs(60))
                .unwrap()
                .0,
            "other"
        );
        assert!(ca.sign_agent_csr(b"not a csr", None, Duration::from_secs(60)).is_err());
        let ca_der = certs_from_pem(ca.cert_pem()).unwrap().remove(0);
        let ours = certs_from_pem(&cert).unwrap().remove(0);
        assert!(issued_by(&ours, &ca_der));
        let other = Ca::create("Other CA", Duration::from_secs(600)).unwrap();
        let theirs = certs_from_pem(&other.issue_agent("db-7", Duration::from_secs(60)).unwrap().cert_pem)
            .unwrap()
            .remove(0);
        assert!(!issued_by(&theirs, &ca_der), "another CA's certificate");
        assert!(!issued_by(b"junk", &ca_der));
        assert!(
            ca.sign_agent_csr(&csr, Some("Bad Id"), Duration::from_secs(60))
                .is_err()
        );
    }

    #[test]
    fn host_ids_are_restricted() {
        for ok in ["web-01", "a", "db.eu_1"] {
            assert!(validate_host_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", "Web", "a b", "a/b", &"x".repeat(64)] {
            assert!(validate_host_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn private_files_are_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/k.pem");
        write_private_file(&p, "secret").unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "secret");
        // Replaced atomically; no temporary file is left behind.
        write_private_file(&p, "newer").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "newer");
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn a_temporary_file_has_its_mode_before_the_first_byte() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tmp = create_temp_file(&dir.path().join("agent.key"), 0o600).unwrap();
        let meta = std::fs::symlink_metadata(tmp.path()).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!((meta.len(), meta.permissions().mode() & 0o077), (0, 0));
        let name = tmp.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(".agent.key.") && name.len() > ".agent.key..tmp".len() + 8,
            "{name}"
        );
        // Random: two in a row differ.
        let other = create_temp_file(&dir.path().join("agent.key"), 0o600).unwrap();
        assert_ne!(tmp.path(), other.path());
    }

    #[test]
    fn planted_symlinks_are_never_written_through() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        let key = dir.path().join("k.pem");
        // At the temporary name the writer used to pick (predictable), and at the target.
        let old_tmp = key.with_extension(format!("tmp{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &old_tmp).unwrap();
        std::os::unix::fs::symlink(&victim, &key).unwrap();
        write_private_file(&key, "secret").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        let meta = std::fs::symlink_metadata(&key).unwrap();
        assert!(meta.file_type().is_file(), "the link was replaced, not followed");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&key).unwrap(), "secret");
        // create_private_file never replaces anything, not even a link.
        let new = dir.path().join("new.key");
        std::os::unix::fs::symlink(&victim, &new).unwrap();
        assert!(create_private_file(&new, "secret").is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        create_private_file(&dir.path().join("fresh.key"), "secret").unwrap();
        assert!(create_private_file(&dir.path().join("fresh.key"), "again").is_err());
        assert_eq!(std::fs::read_to_string(dir.path().join("fresh.key")).unwrap(), "secret");
    }
}
