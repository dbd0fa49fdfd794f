//! Certificate checks: `tls` (a served chain) and `certificate_file` (a PEM
//! on disk), plus the trust roots and the chain-recording verifier they and
//! `http` share.
//!
//! The `tls` probe completes the handshake with a verifier that records the
//! served chain (handshake signatures are still checked), then judges the
//! chain against the trust roots and the certificate against the server name
//! *separately* with rustls' webpki functions, so that an untrusted chain, a
//! wrong name and near expiry are all reported at once.
//!
//! Days left are counted over the certificates on the path from the leaf up
//! to the first trust anchor, not over every certificate the server sends: an
//! expired cross-signed certificate that the path does not use must not
//! raise an alarm (the blackbox_exporter #340 mistake).
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use steward_shared::status::{CheckStatus, Value};
use tokio::net::TcpStream;

use super::thresholds::{Thresholds, trim_float};
use super::{Outcome, error_chain, verdict};

/// The one crypto provider of the workspace, passed explicitly.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Trust anchors, with the subjects (DER, as x509-parser sees them) used to
/// find where a served chain reaches an anchor.
pub(crate) struct Trust {
    pub store: Arc<RootCertStore>,
    subjects: Vec<Vec<u8>>,
    /// Certificates kept for building combined stores (`http` with `ca_file`).
    ders: Vec<CertificateDer<'static>>,
}

impl Trust {
    pub fn from_ders(ders: Vec<CertificateDer<'static>>) -> Self {
        let mut store = RootCertStore::empty();
        store.add_parsable_certificates(ders.iter().cloned());
        let subjects = ders
            .iter()
            .filter_map(|d| {
                x509_parser::parse_x509_certificate(d)
                    .ok()
                    .map(|(_, c)| c.subject().as_raw().to_vec())
            })
            .collect();
        Self {
            store: Arc::new(store),
            subjects,
            ders,
        }
    }

    /// The system's roots (rustls-native-certs), read once per process.
    pub fn system() -> Arc<Trust> {
        static SYSTEM: OnceLock<Arc<Trust>> = OnceLock::new();
        Arc::clone(SYSTEM.get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            if !found.errors.is_empty() {
                tracing::debug!(
                    errors = found.errors.len(),
                    "some system CA certificates could not be read"
                );
            }
            Arc::new(Trust::from_ders(found.certs))
        }))
    }

    /// The certificates of a PEM file.
    pub fn from_pem_file(path: &std::path::Path) -> Result<Self, String> {
        let pem = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let ders = steward_shared::pki::certs_from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self::from_ders(ders))
    }

    /// These roots plus `extra`'s.
    pub fn with(&self, extra: &Trust) -> Trust {
        Trust::from_ders(self.ders.iter().chain(&extra.ders).cloned().collect())
    }
}

/// A verifier that accepts any chain but records it; handshake signatures
/// are still verified, so the peer does hold the leaf's key.
#[derive(Debug)]
pub(crate) struct Recorder {
    provider: Arc<CryptoProvider>,
    chain: Mutex<Vec<CertificateDer<'static>>>,
}

impl Recorder {
    pub fn new(provider: Arc<CryptoProvider>) -> Self {
        Self {
            provider,
            chain: Mutex::new(Vec::new()),
        }
    }

    pub fn take(&self) -> Vec<CertificateDer<'static>> {
        std::mem::take(&mut *self.chain.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.clone().into_owned());
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        *self.chain.lock().unwrap_or_else(|e| e.into_inner()) = chain;
        Ok(ServerCertVerified::assertion())
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

/// One parsed certificate of a chain.
struct Cert {
    subject_raw: Vec<u8>,
    issuer_raw: Vec<u8>,
    subject: String,
    not_after: i64,
}

fn parse_chain(chain: &[CertificateDer<'_>]) -> Result<Vec<Cert>, String> {
    chain
        .iter()
        .enumerate()
        .map(|(i, der)| {
            let (_, c) = x509_parser::parse_x509_certificate(der)
                .map_err(|e| format!("certificate {i} of the chain does not parse: {e}"))?;
            Ok(Cert {
                subject_raw: c.subject().as_raw().to_vec(),
                issuer_raw: c.issuer().as_raw().to_vec(),
                subject: c.subject().to_string(),
                not_after: c.validity().not_after.timestamp(),
            })
        })
        .collect()
}

/// Indices of the certificates from the leaf (index 0) up to, not including,
/// the first trust anchor; following issuer names and preferring, among
/// several candidates, the one that expires last (as a path builder that
/// succeeds would).
fn expiry_path(certs: &[Cert], anchors: &[Vec<u8>]) -> Vec<usize> {
    let mut path = vec![0];
    let mut current = 0;
    while path.len() < certs.len() {
        let issuer = &certs[current].issuer_raw;
        if anchors.contains(issuer) || certs[current].subject_raw == *issuer {
            break;
        }
        let next = (0..certs.len())
            .filter(|i| !path.contains(i) && certs[*i].subject_raw == *issuer)
            .max_by_key(|i| certs[*i].not_after);
        match next {
            Some(i) => {
                path.push(i);
                current = i;
            }
            None => break,
        }
    }
    path
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `2026-03-01` from seconds since the epoch (UTC).
pub(crate) fn date(ts: i64) -> String {
    steward_shared::timestamp::date(steward_shared::timestamp::utc_secs(ts).date())
}

/// "expires in 12.5 days (2026-03-01)" or "expired 3 days ago (…)".
fn expiry_text(days_left: f64, not_after: i64) -> String {
    if days_left >= 0.0 {
        format!("expires in {} days ({})", trim_float(days_left), date(not_after))
    } else {
        format!("expired {} days ago ({})", trim_float(-days_left), date(not_after))
    }
}

/// Judges a served chain: trust, name and days left on the path.
pub(crate) fn judge_chain(
    chain: &[CertificateDer<'static>],
    trust: &Trust,
    server_name: &ServerName<'_>,
    days: &Thresholds,
    now: i64,
) -> Outcome {
    let Some(leaf_der) = chain.first() else {
        return Outcome::critical("the server sent no certificate");
    };
    let certs = match parse_chain(chain) {
        Ok(c) => c,
        Err(e) => return Outcome::critical(e),
    };
    let leaf = match ParsedCertificate::try_from(leaf_der) {
        Ok(l) => l,
        Err(e) => return Outcome::critical(format!("the server certificate is not usable: {e}")),
    };
    let unix_now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.max(0) as u64));
    let algorithms = provider().signature_verification_algorithms.all;
    let chain_result = if trust.store.is_empty() {
        Err("no trusted root certificates (set ca_file)".to_string())
    } else {
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &leaf,
            &trust.store,
            &chain[1..],
            unix_now,
            algorithms,
        )
        .map_err(|e| e.to_string())
    };
    let name_result = rustls::client::verify_server_name(&leaf, server_name).map_err(|e| e.to_string());

    let path = expiry_path(&certs, &trust.subjects);
    let first = path
        .iter()
        .map(|i| &certs[*i])
        .min_by_key(|c| c.not_after)
        .unwrap_or(&certs[0]);
    let days_left = (first.not_after - now) as f64 / 86_400.0;
    let values = vec![
        Value::new("days_left", days_left, "days"),
        Value::new("chain_valid", if chain_result.is_ok() { 1.0 } else { 0.0 }, ""),
        Value::new("hostname_valid", if name_result.is_ok() { 1.0 } else { 0.0 }, ""),
    ];
    let day_status = days.status(days_left);
    let who = if std::ptr::eq(first, &certs[0]) {
        "certificate".to_string()
    } else {
        format!("chain certificate {}", first.subject)
    };
    let mut message = format!(
        "{who} {}{}",
        expiry_text(days_left, first.not_after),
        verdict(day_status, days)
    );
    let mut status = day_status;
    if let Err(e) = &chain_result {
        status = CheckStatus::Critical;
        message = format!("chain not trusted: {e}; {message}");
    }
    if let Err(e) = &name_result {
        status = CheckStatus::Critical;
        message = format!("certificate not valid for {}: {e}; {message}", server_name.to_str());
    }
    Outcome::new(status, values, message)
}

pub(crate) struct TlsProbe {
    address: String,
    server_name: ServerName<'static>,
    ca_file: Option<PathBuf>,
    /// On days left (lower is worse).
    pub days: Thresholds,
}

impl TlsProbe {
    pub fn new(address: String, server_name: ServerName<'static>, ca_file: Option<PathBuf>, days: Thresholds) -> Self {
        Self {
            address,
            server_name,
            ca_file,
            days,
        }
    }

    pub async fn run(&self) -> Outcome {
        // The CA file is read on every run so that a rotated CA is picked up.
        let trust = match &self.ca_file {
            Some(path) => match Trust::from_pem_file(path) {
                Ok(t) => Arc::new(t),
                Err(e) => return Outcome::unknown(e),
            },
            None => Trust::system(),
        };
        let provider = provider();
        let recorder = Arc::new(Recorder::new(Arc::clone(&provider)));
        let config = match rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions() {
            Ok(b) => b
                .dangerous()
                .with_custom_certificate_verifier(recorder.clone())
                .with_no_client_auth(),
            Err(e) => return Outcome::unknown(format!("TLS setup failed: {e}")),
        };
        let tcp = match TcpStream::connect(&self.address).await {
            Ok(s) => s,
            Err(e) => return Outcome::critical(format!("cannot connect to {}: {e}", self.address)),
        };
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let handshake = connector.connect(self.server_name.clone(), tcp).await;
        let chain = recorder.take();
        // A server that requires client certificates (such as the Steward
        // gateway) may end the handshake after serving its chain: the chain is
        // what this check judges, so only a handshake without one is a failure.
        if let Err(e) = handshake
            && (chain.is_empty() || !ended_by_server_alert(&e))
        {
            return Outcome::critical(format!(
                "TLS handshake with {} failed: {}",
                self.address,
                error_chain(&e)
            ));
        }
        judge_chain(&chain, &trust, &self.server_name, &self.days, now_secs())
    }
}

/// Whether a failed handshake was ended by the server's alert (for example
/// "certificate required"), after our side had verified its signatures.
fn ended_by_server_alert(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|err| matches!(err, rustls::Error::AlertReceived(_)))
}

pub(crate) struct CertFileProbe {
    pub path: PathBuf,
    /// On days left (lower is worse).
    pub days: Thresholds,
}

impl CertFileProbe {
    /// A missing file or one that holds no valid certificate is `critical`
    /// (what is configured is not there); one the agent may not read is
    /// `unknown` (it cannot tell).
    pub fn run(&self) -> Outcome {
        let pem = match std::fs::read_to_string(&self.path) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Outcome::critical(format!("{} does not exist", self.path.display()));
            }
            Err(e) => return Outcome::unknown(format!("cannot read {}: {e}", self.path.display())),
        };
        self.evaluate(&pem, now_secs())
    }

    pub fn evaluate(&self, pem: &str, now: i64) -> Outcome {
        let chain = match steward_shared::pki::not_after_of_pem_chain(pem) {
            Ok(c) => c,
            Err(e) => return Outcome::critical(format!("{}: {e}", self.path.display())),
        };
        let Some((subject, not_after)) = chain.iter().min_by_key(|(_, t)| *t) else {
            return Outcome::critical(format!("{}: no certificate", self.path.display()));
        };
        let days_left = (not_after - now) as f64 / 86_400.0;
        let status = self.days.status(days_left);
        let which = if chain.len() > 1 {
            format!(" ({subject}, earliest of {})", chain.len())
        } else {
            String::new()
        };
        let message = format!(
            "{}{which} {}{}",
            self.path.display(),
            expiry_text(days_left, *not_after),
            verdict(status, &self.days)
        );
        Outcome::new(status, vec![Value::new("days_left", days_left, "days")], message)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::thresholds::Direction;
    use super::*;
    use std::time::Duration;
    use steward_shared::pki::{Ca, IssuedCert};
    use tokio::io::AsyncWriteExt;

    pub fn days() -> Thresholds {
        Thresholds {
            warning: Some(30.0),
            critical: Some(7.0),
            direction: Direction::LowerIsWorse,
        }
    }

    /// A CA and a server certificate for `localhost` and 127.0.0.1, valid `lifetime_days`.
    pub fn pki(lifetime_days: u64) -> (Ca, IssuedCert) {
        let ca = Ca::create("Steward Test CA", Duration::from_secs(3650 * 86_400)).unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let cert = ca
            .issue_server(&names, Duration::from_secs(lifetime_days * 86_400))
            .unwrap();
        (ca, cert)
    }

    pub fn server_config(cert: &IssuedCert) -> Arc<rustls::ServerConfig> {
        let chain = steward_shared::pki::certs_from_pem(&cert.cert_pem).unwrap();
        let key = steward_shared::pki::key_from_pem(&cert.key_pem).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        Arc::new(config)
    }

    /// A TLS server on 127.0.0.1 that completes handshakes and closes.
    async fn tls_server(cert: &IssuedCert) -> std::net::SocketAddr {
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config(cert));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        addr
    }

    fn value(out: &Outcome, name: &str) -> f64 {
        out.values
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("no {name} in {out:?}"))
            .value
    }

    fn probe(addr: std::net::SocketAddr, name: &str, ca_file: Option<PathBuf>) -> TlsProbe {
        TlsProbe::new(
            addr.to_string(),
            ServerName::try_from(name.to_string()).unwrap(),
            ca_file,
            days(),
        )
    }

    #[tokio::test]
    async fn tls_valid_chain_with_ca_file_is_ok_with_days_left() {
        let (ca, cert) = pki(90);
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();
        let addr = tls_server(&cert).await;

        let out = probe(addr, "localhost", Some(ca_file.clone())).run().await;
        assert_eq!(out.status, CheckStatus::Ok, "{out:?}");
        assert!((value(&out, "days_left") - 90.0).abs() < 0.1, "{out:?}");
        assert_eq!(value(&out, "chain_valid"), 1.0);
        assert_eq!(value(&out, "hostname_valid"), 1.0);
        assert!(out.message.starts_with("certificate expires in 90"), "{}", out.message);

        // The default server name is the host of the address: an IP SAN.
        let out = probe(addr, "127.0.0.1", Some(ca_file)).run().await;
        assert_eq!(out.status, CheckStatus::Ok, "{out:?}");
    }

    #[tokio::test]
    async fn tls_wrong_server_name_is_critical_but_chain_valid() {
        let (ca, cert) = pki(90);
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();
        let addr = tls_server(&cert).await;
        let out = probe(addr, "wrong.example", Some(ca_file)).run().await;
        assert_eq!(out.status, CheckStatus::Critical, "{out:?}");
        assert_eq!(value(&out, "hostname_valid"), 0.0);
        assert_eq!(value(&out, "chain_valid"), 1.0);
        assert!(out.message.contains("not valid for wrong.example"), "{}", out.message);
        assert!((value(&out, "days_left") - 90.0).abs() < 0.1, "days are still reported");
    }

    #[tokio::test]
    async fn tls_without_ca_file_does_not_trust_a_private_ca() {
        let (_ca, cert) = pki(90);
        let addr = tls_server(&cert).await;
        let out = probe(addr, "localhost", None).run().await;
        assert_eq!(out.status, CheckStatus::Critical, "{out:?}");
        assert_eq!(value(&out, "chain_valid"), 0.0);
        assert_eq!(value(&out, "hostname_valid"), 1.0);
        assert!(out.message.contains("chain not trusted"), "{}", out.message);
    }

    #[tokio::test]
    async fn tls_near_expiry_warns_and_unreachable_is_critical() {
        let (ca, cert) = pki(10);
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();
        let addr = tls_server(&cert).await;
        let out = probe(addr, "localhost", Some(ca_file.clone())).run().await;
        assert_eq!(out.status, CheckStatus::Warning, "{out:?}");
        assert!(out.message.contains("(warning: <= 30)"), "{}", out.message);

        // Bound but not listening: refuses connections, and the port stays ours.
        let closed = tokio::net::TcpSocket::new_v4().unwrap();
        closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let out = probe(closed.local_addr().unwrap(), "localhost", Some(ca_file))
            .run()
            .await;
        assert_eq!(out.status, CheckStatus::Critical, "{out:?}");
        let out = probe(addr, "localhost", Some(dir.path().join("nope.pem"))).run().await;
        assert_eq!(out.status, CheckStatus::Unknown, "unreadable CA file: {out:?}");
    }

    #[test]
    fn expiry_follows_the_path_to_the_anchor_not_every_served_cert() {
        let cert = |s: &str, i: &str, t: i64| Cert {
            subject_raw: s.as_bytes().to_vec(),
            issuer_raw: i.as_bytes().to_vec(),
            subject: s.into(),
            not_after: t,
        };
        // leaf <- R3 <- X1 (anchor); the server also sends X1 cross-signed by an expired DST root.
        let certs = [cert("leaf", "R3", 500), cert("R3", "X1", 900), cert("X1", "DST", 100)];
        assert_eq!(expiry_path(&certs, &[b"X1".to_vec()]), [0, 1]);
        // A client that only trusts DST needs the cross-sign, and its expiry counts.
        assert_eq!(expiry_path(&certs, &[b"DST".to_vec()]), [0, 1, 2]);
        // No anchor at all: follow what is there, no loops.
        let looped = [cert("a", "b", 1), cert("b", "a", 2)];
        assert_eq!(expiry_path(&looped, &[]), [0, 1]);
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(951_782_400), "2000-02-29");
        assert_eq!(date(1_767_225_599), "2025-12-31");
        assert_eq!(date(-86_400), "1969-12-31");
    }

    #[test]
    fn certificate_file_reports_days_to_the_earliest_expiry() {
        let (ca, cert) = pki(20);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chain.pem");
        std::fs::write(&path, format!("{}{}", cert.cert_pem, ca.cert_pem())).unwrap();
        let probe = CertFileProbe {
            path: path.clone(),
            days: days(),
        };
        let out = probe.run();
        assert_eq!(out.status, CheckStatus::Warning, "{out:?}");
        assert!((value(&out, "days_left") - 20.0).abs() < 0.1, "{out:?}");
        assert!(out.message.contains("earliest of 2"), "{}", out.message);

        // Seen 25 days later, it has expired.
        let later = now_secs() + 25 * 86_400;
        let out = probe.evaluate(&std::fs::read_to_string(&path).unwrap(), later);
        assert_eq!(out.status, CheckStatus::Critical);
        assert!(out.message.contains("expired 5 days ago"), "{}", out.message);

        std::fs::write(&path, "not a certificate").unwrap();
        assert_eq!(probe.run().status, CheckStatus::Critical);
        let gone = CertFileProbe {
            path: dir.path().join("gone.pem"),
            days: days(),
        };
        assert!(gone.run().message.contains("does not exist"));
    }
}
